// The page cannot drift from the protocol silently: every example message of
// protocol/fixtures/protocol.json (written by the ot-protocol crate) goes
// through the page's own message handler (server/web/session.js, which has no
// DOM) in a state where it makes sense, and the page's error-code and
// close-code tables must equal the fixture's; the page's client messages must
// be the fixture's examples, written by the same code that sends them.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { Client, apply, baseLen, cpLen, replaceRange } from "../../server/web/ot.js";
import {
  CLOSE_CODES,
  ERROR_CODES,
  Session,
  closeAction,
  cursorMessage,
  pingMessage,
  errorAction,
  opMessage,
} from "../../server/web/session.js";

const fixture = JSON.parse(readFileSync(new URL("../../protocol/fixtures/protocol.json", import.meta.url), "utf8"));

/** A fake WebSocket that records what the page sends and whether it closed it. */
class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closedWith = null;
  }
  send(text) {
    this.sent.push(text);
  }
  close(code, reason) {
    this.closedWith = { code, reason };
  }
}

/**
 * A connected session around `client`, with recording hooks and timers that
 * only run when the test says so.
 */
function harness(client, { synced = true, epoch = 1, ranges = [[0, 0]], name = "anonymous" } = {}) {
  const h = { sockets: [], timers: [], conflicts: [], texts: [], applied: [], logs: [] };
  h.session = new Session({
    client,
    docId: "notes",
    wsBase: "ws://test",
    synced,
    epoch,
    random: () => 0.5,
    schedule: (fn, ms) => {
      h.timers.push({ fn, ms });
      return h.timers.length;
    },
    hooks: {
      setText: (text) => h.texts.push(text),
      applyRemote: (op) => h.applied.push(op),
      conflict: (text) => h.conflicts.push(text),
      localRanges: () => ranges,
      name: () => name,
      openSocket: (url) => {
        const s = new FakeSocket(url);
        h.sockets.push(s);
        return s;
      },
      log: (...args) => h.logs.push(args),
    },
  });
  h.connect = () => {
    h.session.connect();
    const s = h.sockets.at(-1);
    s.onopen();
    return s;
  };
  h.socket = h.connect();
  /** Deliver a server message as the text of a frame (the page's reader and handler). */
  h.receive = (message) => {
    h.lastResult = h.session.receive(typeof message === "string" ? message : JSON.stringify(message));
    return h.lastResult;
  };
  /** Run the pending reconnect timer, and open the new socket. */
  h.reconnect = () => {
    const t = h.timers.shift();
    assert.ok(t, "a reconnect is scheduled");
    t.fn();
    const s = h.sockets.at(-1);
    s.onopen();
    h.socket = s;
    return s;
  };
  h.snapshotOf = () => ({
    state: JSON.stringify(client.state()),
    synced: h.session.synced,
    epoch: h.session.epoch,
    remote: JSON.stringify([...h.session.remote]),
    sent: h.sockets.map((s) => s.sent.length),
    closed: h.sockets.map((s) => s.closedWith),
    timers: h.timers.length,
    conflicts: h.conflicts.length,
    wantSnapshot: h.session.wantSnapshot,
    stopped: h.session.stopped,
  });
  return h;
}

/** A client at `rev` with an outstanding op numbered `seq`. */
function outstandingClient(rev, seq, text = "abc") {
  const client = new Client("c0ffee", rev, text, seq - 1);
  const out = client.localEdit(replaceRange(cpLen(text), cpLen(text), 0, "!"));
  assert.equal(out.seq, seq);
  return client;
}

/** A session in a state where `m` makes sense, and what handling it must do. */
function setUp(m) {
  switch (m.type) {
    case "snapshot": {
      const h = harness(new Client("c0ffee", 0, "", 0), { synced: false, epoch: null });
      return {
        h,
        expect: "synced",
        check: () => {
          assert.equal(h.session.client.text, m.text);
          assert.equal(h.session.client.revision, m.rev);
          assert.equal(h.session.client.nextSeq, m.seq + 1);
          assert.equal(h.session.epoch, m.epoch);
          assert.deepEqual(h.texts, [m.text]);
          assert.ok(h.session.synced);
        },
      };
    }
    case "resume": {
      const h = harness(new Client(m.client, m.rev, "abc", m.seq));
      return {
        h,
        expect: "resumed",
        check: () => {
          assert.equal(h.session.client.revision, m.rev);
          assert.equal(h.session.epoch, m.epoch);
        },
      };
    }
    case "op": {
      const text = "x".repeat(baseLen(m.op));
      const h = harness(new Client("c0ffee", m.rev - 1, text, 0));
      return {
        h,
        expect: "applied",
        check: () => {
          assert.deepEqual(h.applied, [m.op]);
          assert.equal(h.session.client.text, apply(text, m.op));
          assert.equal(h.session.client.revision, m.rev);
        },
      };
    }
    case "ack": {
      const h = harness(outstandingClient(m.rev - 1, m.seq));
      return {
        h,
        expect: "acknowledged",
        check: () => {
          assert.ok(h.session.client.allSaved());
          assert.equal(h.session.client.revision, m.rev);
        },
      };
    }
    case "cursor": {
      const text = "x".repeat(Math.max(...m.ranges.flat()));
      const h = harness(new Client("c0ffee", m.rev, text, 0));
      return {
        h,
        expect: "shown",
        check: () => {
          assert.deepEqual(h.session.remote.get(m.client), { name: m.name ?? "anonymous", ranges: m.ranges });
        },
      };
    }
    case "leave": {
      const h = harness(new Client("c0ffee", 1, "abc", 0));
      assert.equal(h.receive({ type: "cursor", client: m.client, rev: 1, ranges: [[1, 1]] }).action, "shown");
      return {
        h,
        expect: "removed",
        check: () => assert.ok(!h.session.remote.has(m.client)),
      };
    }
    case "error": {
      assert.notEqual(m.seq, undefined, "the fixture's error names an op");
      const h = harness(outstandingClient(8, m.seq));
      const localText = h.session.client.text;
      const expect = ERROR_CODES.get(m.code);
      return {
        h,
        expect,
        check: () => {
          assert.equal(h.socket.closedWith?.code, 4000, "the page drops the connection");
          assert.equal(h.timers.length, 1, "and reconnects after backoff");
          if (expect === "conflict_copy") {
            assert.deepEqual(h.conflicts, [localText]);
            assert.ok(!h.reconnect().url.includes("rev="), "resync from a snapshot");
          } else {
            assert.deepEqual(h.conflicts, []);
            assert.match(h.reconnect().url, /[?&]rev=8(&|$)/);
          }
        },
      };
    }
    case "pong": {
      const h = harness(outstandingClient(8, 3));
      const before = h.socket.sent.length;
      return {
        h,
        expect: "alive",
        check: () => assert.equal(h.socket.sent.length, before, "a pong changes nothing"),
      };
    }
    case "replicated": {
      const h = harness(outstandingClient(8, 3));
      return {
        h,
        expect: "noted",
        check: () => {
          assert.equal(h.session.replicatedRev, m.rev);
          assert.equal(h.session.awaitingReplication(), m.rev < h.session.client.revision);
        },
      };
    }
    case "batch": {
      // The fixture's batch: another client's op, this client's ack, that client leaving.
      const [op, ack] = m.messages;
      const h = harness(outstandingClient(ack.rev - 2, ack.seq, "x".repeat(baseLen(op.op))));
      assert.equal(h.receive({ type: "cursor", client: "beef", rev: ack.rev - 2, ranges: [[1, 1]] }).action, "shown");
      return {
        h,
        expect: "handled",
        check: () => {
          assert.deepEqual(
            h.lastResult.results.map((r) => `${r.kind}:${r.action}`),
            ["op:applied", "ack:acknowledged", "leave:removed"],
          );
          assert.ok(h.session.client.allSaved());
          assert.equal(h.session.client.revision, ack.rev);
          assert.ok(!h.session.remote.has("beef"));
        },
      };
    }
    default:
      throw new Error(`the page's test does not know the fixture's message type ${JSON.stringify(m.type)}`);
  }
}

test("every server message of the fixture is understood by the page's handler", () => {
  const types = new Set();
  for (const m of fixture.server_to_client) {
    const { h, expect, check } = setUp(m);
    const result = h.receive(m);
    assert.deepEqual(
      { kind: result.kind, action: result.action },
      { kind: m.type, action: expect },
      `handling ${JSON.stringify(m)}: ${result.error ?? ""}`,
    );
    check();
    types.add(m.type);
  }
  assert.deepEqual([...types].sort(), [
    "ack",
    "batch",
    "cursor",
    "error",
    "leave",
    "op",
    "pong",
    "replicated",
    "resume",
    "snapshot",
  ]);
});

test("forward compatibility: unknown fields, types, error codes and close codes", () => {
  const fc = fixture.forward_compatible;

  const ack = fc.unknown_field;
  let h = harness(outstandingClient(ack.rev - 1, ack.seq));
  assert.deepEqual(h.receive(ack), { kind: "ack", action: "acknowledged" });
  assert.ok(h.session.client.allSaved());

  h = harness(outstandingClient(4, 2));
  h.receive({ type: "cursor", client: "beef", rev: 4, ranges: [[1, 2]], name: "Ann" });
  const before = h.snapshotOf();
  assert.deepEqual(h.receive(fc.unknown_type), { kind: "skipped", action: "ignored" });
  assert.deepEqual(h.snapshotOf(), before, "an unknown type changes nothing");

  const err = fc.unknown_error_code;
  assert.ok(!ERROR_CODES.has(err.code), "the fixture's unknown code is unknown to the page");
  h = harness(outstandingClient(8, err.seq));
  const localText = h.session.client.text;
  assert.deepEqual(h.receive(err), { kind: "error", action: fc.unknown_error_code_action });
  assert.equal(fc.unknown_error_code_action, "conflict_copy");
  assert.deepEqual(h.conflicts, [localText]);
  assert.ok(!h.reconnect().url.includes("rev="), "resync from a snapshot");

  assert.equal(closeAction(fc.unknown_close_code), fc.unknown_close_code_action);
  h = harness(new Client("c0ffee", 3, "abc", 0));
  assert.equal(h.socket.onclose({ code: fc.unknown_close_code }), undefined);
  assert.equal(h.session.stopped, null);
  assert.equal(h.timers.length, fc.unknown_close_code_action === "reconnect" ? 1 : 0);
});

test("the page's error-code table is the fixture's", () => {
  const fromFixture = Object.fromEntries(fixture.error_codes.map((e) => [e.code, e.on_outstanding_op]));
  assert.equal(Object.keys(fromFixture).length, fixture.error_codes.length, "no code twice in the fixture");
  assert.deepEqual(Object.fromEntries(ERROR_CODES), fromFixture);
  for (const { code, on_outstanding_op: action } of fixture.error_codes) {
    assert.equal(errorAction(code, 3, 3), action);
    assert.equal(errorAction(code, 2, 3), "ignore");
    assert.equal(errorAction(code, undefined, 3), "ignore");
    assert.equal(errorAction(code, 3, null), "ignore");
  }
});

test("the page's close-code table is the fixture's", () => {
  const fromFixture = new Map(fixture.close_codes.map((c) => [c.code, c.action]));
  assert.equal(fromFixture.size, fixture.close_codes.length, "no code twice in the fixture");
  assert.deepEqual(
    [...CLOSE_CODES].sort((a, b) => a[0] - b[0]),
    [...fromFixture].sort((a, b) => a[0] - b[0]),
  );
  for (const { code, action } of fixture.close_codes) {
    assert.equal(closeAction(code), action);
    // And the session does it.
    const h = harness(new Client("c0ffee", 3, "abc", 0));
    h.socket.onclose({ code });
    // Until a new token comes, an expired one stops the page like "stop" (unsent edits are kept).
    const stops = action === "stop" || action === "reauthenticate";
    assert.equal(h.session.stopped !== null, stops, `close code ${code}`);
    assert.equal(h.timers.length, stops ? 0 : 1, `close code ${code}`);
  }
  assert.equal(closeAction(undefined), "reconnect", "no close frame");
  assert.equal(closeAction(1006), "reconnect", "the browser's code for no close frame");
  assert.equal(closeAction(1002), "stop");
  assert.equal(closeAction(1003), "stop");
  assert.equal(closeAction(4999), "reconnect");
});

test("the page writes the fixture's client messages", () => {
  const types = new Set();
  for (const m of fixture.client_to_server) {
    types.add(m.type);
    if (m.type === "op" && m.origin) {
      // Only a regional server's link sends an origin; the page never does.
      continue;
    }
    if (m.type === "op") {
      assert.deepEqual(opMessage({ seq: m.seq, base_rev: m.rev, op: m.op }, m.ranges), m);
      // As the session sends it after a local edit.
      const client = new Client("c0ffee", m.rev, "x".repeat(baseLen(m.op)), m.seq - 1);
      const h = harness(client, { ranges: m.ranges });
      const out = h.session.localEdit(m.op);
      h.session.edited(out);
      assert.deepEqual(h.socket.sent.map((t) => JSON.parse(t)), [m]);
    } else if (m.type === "cursor") {
      assert.deepEqual(cursorMessage(m.rev, m.ranges, m.name), m);
      const h = harness(new Client("c0ffee", m.rev, "x".repeat(Math.max(...m.ranges.flat())), 0), {
        ranges: m.ranges,
        name: m.name,
      });
      h.session.nameChanged();
      assert.deepEqual(h.socket.sent.map((t) => JSON.parse(t)), [m]);
    } else if (m.type === "ping") {
      assert.deepEqual(pingMessage(), m);
    } else {
      assert.fail(`the page does not write client messages of type ${m.type}`);
    }
  }
  assert.deepEqual([...types].sort(), ["cursor", "op", "ping"]);
});

test("storage_error on the outstanding op: reconnect with rev and resend it byte for byte", () => {
  const h = harness(outstandingClient(8, 3));
  h.session.client.localEdit(replaceRange(4, 0, 0, ">")); // buffered behind it
  const first = h.socket.sent.length;
  // The op as the page sent it: send it the way the session does.
  h.session.sendOp(h.session.client.pendingResend());
  const sent = h.socket.sent[first];
  assert.deepEqual(h.receive({ type: "error", code: "storage_error", message: "disk full", seq: 3 }), {
    kind: "error",
    action: "resend",
  });
  assert.deepEqual(h.conflicts, []);
  assert.equal(h.socket.closedWith?.code, 4000);
  const s = h.reconnect();
  assert.match(s.url, /[?&]rev=8&epoch=1$/);
  assert.deepEqual(h.receive({ type: "resume", rev: 8, head: 8, client: "c0ffee", seq: 2, epoch: 1 }), {
    kind: "resume",
    action: "resend",
    sent: { seq: 3, base_rev: 8, op: JSON.parse(sent).op },
  });
  assert.equal(s.sent[0], sent, "resent byte for byte");
  // The backoff keeps growing while the same op keeps failing, and resets on its ack.
  assert.equal(h.session.attempt, 1);
  h.receive({ type: "error", code: "storage_error", message: "disk full", seq: 3 });
  assert.equal(h.session.attempt, 2);
  h.reconnect();
  h.receive({ type: "resume", rev: 8, head: 9, client: "c0ffee", seq: 3, epoch: 1 });
  // The server had applied it after all: its own op in the stream is the ack.
  assert.deepEqual(h.receive({ type: "op", rev: 9, op: [3, "!"], client: "c0ffee", seq: 3 }), {
    kind: "op",
    action: "acknowledged",
  });
  assert.equal(h.session.attempt, 0);
  assert.equal(JSON.parse(h.socket.sent.at(-1)).seq, 4, "the buffer goes next");
});

test("errors naming another seq or none are ignored", () => {
  const h = harness(outstandingClient(8, 3));
  const before = h.snapshotOf();
  for (const m of [
    { type: "error", code: "op_does_not_fit", message: "late", seq: 2 },
    { type: "error", code: "invalid_message", message: "no seq" },
    { type: "error", code: "added_later", message: "no seq", seq: null },
  ]) {
    assert.deepEqual(h.receive(m), { kind: "error", action: "ignore" });
  }
  assert.deepEqual(h.snapshotOf(), before);
});

test("integers above 2^53-1 and malformed frames are unreadable: not rounded, reconnect", () => {
  for (const text of [
    '{"type":"ack","rev":9007199254740992,"seq":3}',
    '{"type":"ack","rev":9,"seq":9007199254740993}',
    '{"type":"resume","rev":8,"head":18446744073709551615,"client":"c0ffee","seq":2,"epoch":1}',
    '{"type":"snapshot","rev":1,"text":"","client":"c0ffee","seq":0,"epoch":9007199254740992}',
    '{"type":"op","rev":9,"op":[4,"x"],"client":"beef","seq":-1}',
    '{"type":"op","rev":9,"op":[4,0],"client":"beef","seq":1}',
    '{"type":"op","rev":9,"op":[9007199254740993,"x"],"client":"beef","seq":1}',
    '{"type":"op","rev":9,"op":[9007199254740991,-4],"client":"beef","seq":1}',
    '{"type":"cursor","client":"beef","rev":9,"ranges":[[1]]}',
    '{"type":"ack","rev":9,"seq":3',
    '{"rev":9,"seq":3}',
    "[1,2]",
  ]) {
    const h = harness(outstandingClient(8, 3));
    const before = h.snapshotOf();
    const r = h.receive(text);
    assert.deepEqual({ kind: r.kind, action: r.action }, { kind: "unreadable", action: "reconnect" }, text);
    assert.equal(h.socket.closedWith?.code, 4000, text);
    assert.equal(h.session.client.state().revision, 8, text);
    assert.equal(JSON.stringify(h.session.client.state()), before.state, text);
    assert.match(h.reconnect().url, /[?&]rev=8&epoch=1$/, "reconnect with rev");
  }
  // 2^53 - 1 itself is fine.
  const h = harness(outstandingClient(8, 3));
  assert.equal(h.receive('{"type":"ack","rev":9007199254740991,"seq":3}').kind, "ack");
});

test("a batch is handled in order until one of its messages drops the connection", () => {
  const h = harness(outstandingClient(8, 3));
  const batch = {
    type: "batch",
    messages: [
      { type: "error", code: "op_does_not_fit", message: "no", seq: 3 },
      { type: "op", rev: 9, op: [4, "late"], client: "beef", seq: 1 },
    ],
  };
  const result = h.receive(batch);
  assert.equal(result.kind, "batch");
  assert.deepEqual(
    result.results.map((r) => `${r.kind}:${r.action}`),
    ["error:conflict_copy"],
    "the op after the resync belongs to the dropped connection",
  );
  assert.deepEqual(h.applied, []);
  // An element that breaks the reading rules makes the whole frame unreadable.
  const h2 = harness(outstandingClient(8, 3));
  const bad = h2.receive({ type: "batch", messages: [{ type: "ack", rev: -1, seq: 3 }] });
  assert.equal(bad.action, "reconnect");
  assert.ok(!h2.session.client.allSaved(), "nothing of it was handled");
});
