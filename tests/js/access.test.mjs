// The page's access handling (node --test): the token from a link's fragment,
// the subprotocols it opens its socket with, read-only mode from the first
// message, and "access expired" when the server refuses the upgrade.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Client } from "../../server/web/ot.js";
import { Session } from "../../server/web/session.js";
import { authHeaders, bearerProtocols, takeToken } from "../../server/web/token.js";

function fakeStorage() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)) };
}

test("a token in the fragment is kept for the tab and removed from the address bar", () => {
  const storage = fakeStorage();
  const replaced = [];
  const history = { replaceState: (_s, _t, url) => replaced.push(url) };
  const loc = { hash: "#token=abc.DEF-_~.x9", pathname: "/d/notes", search: "" };
  assert.equal(takeToken(loc, storage, history), "abc.DEF-_~.x9");
  assert.deepEqual(replaced, ["/d/notes"]);
  // Later pages of the tab (no fragment) still have it; nothing is replaced.
  assert.equal(takeToken({ hash: "", pathname: "/d/other", search: "" }, storage, history), "abc.DEF-_~.x9");
  assert.equal(replaced.length, 1);
  // A new link replaces it.
  assert.equal(takeToken({ hash: "#token=new", pathname: "/", search: "?x=1" }, storage, history), "new");
  assert.deepEqual(replaced, ["/d/notes", "/?x=1"]);
  // No token at all.
  assert.equal(takeToken({ hash: "#other", pathname: "/", search: "" }, fakeStorage(), history), null);
});

test("the token travels as a subprotocol and a bearer header, never in the URL", () => {
  assert.deepEqual(bearerProtocols(null), []);
  assert.deepEqual(bearerProtocols("t0k"), ["ot.bearer.t0k"]);
  assert.deepEqual(authHeaders("t0k"), { Authorization: "Bearer t0k" });
  assert.deepEqual(authHeaders(null), {});
});

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

function session(checkAccess = async () => "ok") {
  const h = { sockets: [], timers: [], access: [] };
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
      accessChanged: (a) => h.access.push(a),
      checkAccess,
      log: () => {},
    },
  });
  return h;
}

const limits = { max_message_bytes: 1 << 20, max_op_len: 100000, max_doc_len: 1000000 };

test("the first message's access level makes a read-only editor", () => {
  const h = session();
  h.session.connect();
  h.sockets[0].onopen();
  h.session.receive(JSON.stringify({ type: "snapshot", rev: 0, text: "hi", client: "c0ffee", seq: 0, epoch: 1, limits, access: "read" }));
  assert.equal(h.session.access, "read");
  assert.equal(h.session.canWrite(), false);
  assert.deepEqual(h.access, ["read"]);
  // An older server sends no level: it meant write.
  const old = session();
  old.session.connect();
  old.sockets[0].onopen();
  old.session.receive(JSON.stringify({ type: "snapshot", rev: 0, text: "", client: "c0ffee", seq: 0, epoch: 1, limits }));
  assert.equal(old.session.access, "write");
  assert.equal(old.session.canWrite(), true);
});

test("a refused upgrade with an expired token stops with 'access expired' and keeps unsent edits", async () => {
  const h = session(async () => "expired");
  h.session.client.localEdit(["!"]);
  h.session.connect();
  // The browser reports a refused upgrade as 1006 without ever opening.
  h.sockets[0].onclose({ code: 1006 });
  await new Promise((r) => setImmediate(r));
  assert.equal(h.session.stopped, "access expired — open a new link");
  assert.equal(h.session.client.allSaved(), false, "the unsent edit is still there");
  // The reconnect scheduled before the answer does nothing.
  for (const t of h.timers) t.fn();
  assert.equal(h.sockets.length, 1);
});

test("a connection lost for another reason reconnects", async () => {
  const h = session(async () => "ok");
  h.session.connect();
  h.sockets[0].onclose({ code: 1006 });
  await new Promise((r) => setImmediate(r));
  assert.equal(h.session.stopped, null);
  h.timers.shift().fn();
  assert.equal(h.sockets.length, 2);
});

test("4001 while connected: access expired, unsent edits kept", () => {
  const h = session();
  h.session.connect();
  h.sockets[0].onopen();
  h.session.receive(JSON.stringify({ type: "snapshot", rev: 0, text: "", client: "c0ffee", seq: 0, epoch: 1, limits, access: "write" }));
  h.sockets[0].onclose({ code: 4001 });
  assert.equal(h.session.stopped, "access expired — open a new link");
  assert.equal(h.timers.length, 0);
});

test("a new token after 'access expired' reconnects and sends the kept edit", () => {
  const h = session();
  h.session.connect();
  h.sockets[0].onopen();
  h.session.receive(JSON.stringify({ type: "snapshot", rev: 0, text: "", client: "c0ffee", seq: 0, epoch: 1, limits, access: "write" }));
  h.session.client.localEdit(["x"]);
  h.sockets[0].onclose({ code: 4001 });
  assert.ok(h.session.stopped);
  h.session.renewAccess();
  assert.equal(h.session.stopped, null);
  assert.equal(h.sockets.length, 2, "reconnected at once");
  // A page stopped for another reason stays stopped.
  const other = session();
  other.session.connect();
  other.sockets[0].onopen();
  other.sockets[0].onclose({ code: 4009 });
  other.session.renewAccess();
  assert.ok(other.session.stopped);
  assert.equal(other.sockets.length, 1);
});
