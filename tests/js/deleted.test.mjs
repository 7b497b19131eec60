// The page when its document is deleted (close 4004): unsent edits become a
// conflict copy, the next connection asks for a snapshot (no rev, no epoch),
// and nothing of the deleted document is sent to the new one.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Client } from "../../server/web/ot.js";
import { Session, closeAction } from "../../server/web/session.js";

class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
  }
  send(text) {
    this.sent.push(text);
  }
  close() {}
}

function session() {
  const h = { sockets: [], timers: [], conflicts: [], texts: [] };
  h.session = new Session({
    client: new Client("c0ffee", 0, "", 0),
    docId: "notes",
    wsBase: "ws://test",
    random: () => 0.5,
    schedule: (fn, ms) => h.timers.push({ fn, ms }),
    hooks: {
      openSocket: (url) => {
        const s = new FakeSocket(url);
        h.sockets.push(s);
        return s;
      },
      conflict: (text) => h.conflicts.push(text),
      setText: (text) => h.texts.push(text),
      log: () => {},
    },
  });
  return h;
}

const limits = { max_message_bytes: 1 << 20, max_op_len: 100000, max_doc_len: 1000000 };
const snapshot = (rev, text, seq, epoch) =>
  JSON.stringify({ type: "snapshot", rev, text, client: "c0ffee", seq, epoch, limits, access: "write" });

function synced(text, epoch) {
  const h = session();
  h.session.connect();
  h.sockets[0].onopen();
  h.session.receive(snapshot(3, text, 0, epoch));
  return h;
}

test("4004 is a resync", () => {
  assert.equal(closeAction(4004), "resync");
});

test("4004 with an unsent edit: a conflict copy, and the edit never reaches the new document", () => {
  const h = synced("abc", 7);
  // An edit the page has not sent yet.
  h.session.client.localEdit([3, "d"]);
  h.sockets[0].onclose({ code: 4004 });
  assert.equal(h.session.stopped, null);
  assert.equal(h.timers.length, 1, "reconnects after backoff");
  h.timers.shift().fn();
  const socket = h.sockets.at(-1);
  assert.ok(!socket.url.includes("rev="), socket.url);
  assert.ok(!socket.url.includes("epoch="), socket.url);
  socket.onopen();
  // The new document happens to have the old text: no rebase all the same.
  h.session.receive(snapshot(3, "abc", 0, 8));
  assert.deepEqual(h.conflicts, ["abcd"]);
  assert.equal(h.session.client.text, "abc");
  assert.ok(h.session.client.allSaved());
  assert.deepEqual(socket.sent.filter((t) => JSON.parse(t).type === "op"), [], "no op of the old document");
  assert.equal(h.session.epoch, 8);
  assert.equal(h.texts.at(-1), "abc");
});

test("4004 with nothing unsent: the new document's text, no conflict copy", () => {
  const h = synced("abc", 7);
  h.sockets[0].onclose({ code: 4004 });
  h.timers.shift().fn();
  const socket = h.sockets.at(-1);
  assert.ok(!socket.url.includes("rev="));
  socket.onopen();
  h.session.receive(snapshot(0, "", 0, 8));
  assert.deepEqual(h.conflicts, []);
  assert.equal(h.session.client.text, "");
  // Edits go to the new document from now on.
  const out = h.session.localEdit(["x"]);
  h.session.edited(out);
  const ops = socket.sent.map((t) => JSON.parse(t)).filter((m) => m.type === "op");
  assert.deepEqual(ops.map((m) => [m.rev, m.seq, m.op]), [[0, 1, ["x"]]]);
});
