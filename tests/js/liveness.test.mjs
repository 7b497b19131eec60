// The page's liveness check (node --test): a connection on which nothing
// arrives is pinged after a third of the limit and dropped (then reconnected)
// after the whole; any message, a pong included, keeps it; a replaced
// socket's checks stop. Fake clock and timers: no real waiting.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Client } from "../../server/web/ot.js";
import { LIVENESS_MS, Session } from "../../server/web/session.js";

class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
  }
  send(text) {
    this.sent.push(text);
  }
  close(code, reason) {
    this.closed = { code, reason };
  }
}

/** A session on a fake clock; `advance(ms)` runs the timers that come due, in order. */
function harness(liveness = 9000) {
  const h = { sockets: [], timers: [], clock: 0, logs: [], statuses: [] };
  h.session = new Session({
    client: new Client("c0ffee", 0, "", 0),
    docId: "notes",
    wsBase: "ws://test",
    random: () => 0.5,
    now: () => h.clock,
    liveness,
    schedule: (fn, ms) => h.timers.push({ fn, at: h.clock + ms }),
    livenessTimer: (fn, ms) => h.timers.push({ fn, at: h.clock + ms }),
    hooks: {
      openSocket: (url) => {
        const s = new FakeSocket(url);
        h.sockets.push(s);
        return s;
      },
      status: (s) => h.statuses.push(s),
      log: (...args) => h.logs.push(args.join(" ")),
    },
  });
  h.advance = (ms) => {
    const until = h.clock + ms;
    for (;;) {
      h.timers.sort((a, b) => a.at - b.at);
      const next = h.timers[0];
      if (!next || next.at > until) break;
      h.timers.shift();
      h.clock = next.at;
      next.fn();
    }
    h.clock = until;
  };
  h.pings = (socket) => socket.sent.filter((t) => JSON.parse(t).type === "ping").length;
  return h;
}

const limits = { max_message_bytes: 1 << 20, max_op_len: 100000, max_doc_len: 1000000 };
const snapshot = JSON.stringify({ type: "snapshot", rev: 0, text: "", client: "c0ffee", seq: 0, epoch: 1, limits, access: "write" });

function open(h) {
  h.session.connect();
  const socket = h.sockets.at(-1);
  socket.onopen();
  socket.onmessage({ data: snapshot });
  return socket;
}

test("the default limit is well above the server's ping interval", () => {
  assert.ok(LIVENESS_MS >= 2 * 20000);
});

test("a silent connection is pinged after a third of the limit, then dropped and reconnected", () => {
  const h = harness(9000);
  const socket = open(h);
  h.advance(2999);
  assert.equal(h.pings(socket), 0, "not before a third of the limit");
  h.advance(1500);
  assert.equal(h.pings(socket), 1, "one ping after a third of the limit");
  h.advance(3000);
  assert.equal(h.pings(socket), 1, "one ping per silence");
  assert.equal(socket.closed, null);
  h.advance(1500 + 1500);
  assert.ok(socket.closed, "dropped after the whole limit");
  assert.notEqual(h.session.ws, socket);
  assert.ok(h.logs.some((l) => l.includes("no message from the server")));
  assert.ok(h.statuses.includes("reconnecting"));
  // The reconnect timer opens a new socket.
  h.advance(20000);
  assert.equal(h.sockets.length, 2);
});

test("a pong (or any message) keeps a quiet connection", () => {
  const h = harness(9000);
  const socket = open(h);
  for (let i = 0; i < 10; i++) {
    h.advance(4500);
    assert.equal(h.pings(socket), i + 1, "pinged after each quiet third");
    socket.onmessage({ data: JSON.stringify({ type: "pong" }) });
  }
  assert.equal(socket.closed, null, "never dropped while pongs come");
  assert.equal(h.sockets.length, 1);
});

test("the checks of a replaced socket stop", () => {
  const h = harness(9000);
  const first = open(h);
  first.onclose({ code: 1001 });
  h.advance(20000);
  const second = h.sockets.at(-1);
  assert.notEqual(second, first);
  second.onopen();
  second.onmessage({ data: snapshot });
  h.advance(4000);
  assert.equal(h.pings(first), 0, "the old socket is never pinged");
  assert.equal(h.pings(second), 1);
});
