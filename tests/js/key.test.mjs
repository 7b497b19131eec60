// The page's writer key (PROTOCOL.md, "Connecting"): kept in the saved slot
// next to the client state, offered as the WebSocket subprotocol
// `ot.key.<key>` beside `ot.v1`, never put in the URL.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Client } from "../../server/web/ot.js";
import { KEY_SUBPROTOCOL_PREFIX, SUBPROTOCOL, Session, isClientKey, socketProtocols } from "../../server/web/session.js";
import { Slots, randomKey, slotKey } from "../../server/web/slots.js";

/** A session whose sockets are recorded instead of opened. */
function session(clientKey) {
  const opened = [];
  const s = new Session({
    client: new Client("writer1", 0, "", 0),
    docId: "notes",
    clientKey,
    wsBase: "ws://test",
    schedule: () => 0,
    hooks: {
      openSocket: (url, protocols) => {
        const socket = { url, protocols, send() {}, close() {} };
        opened.push(socket);
        return socket;
      },
    },
  });
  return { s, opened };
}

test("the socket offers ot.v1 and the key as a subprotocol, never in the URL", () => {
  const key = randomKey();
  assert.ok(isClientKey(key));
  const { s, opened } = session(key);
  s.connect();
  assert.equal(opened.length, 1);
  assert.deepEqual(opened[0].protocols, [SUBPROTOCOL, KEY_SUBPROTOCOL_PREFIX + key]);
  assert.deepEqual(opened[0].protocols, ["ot.v1", "ot.key." + key]);
  assert.ok(!opened[0].url.includes(key), opened[0].url);
  assert.ok(opened[0].url.startsWith("ws://test/ws/notes?client=writer1"));
});

test("without a (valid) key only ot.v1 is offered", () => {
  assert.deepEqual(socketProtocols(null), ["ot.v1"]);
  assert.deepEqual(socketProtocols("ABCDEF"), ["ot.v1"]);
  assert.deepEqual(socketProtocols("0123456789ABCDEF0123456789ABCDEF"), ["ot.v1"]);
  const { s, opened } = session(null);
  s.connect();
  assert.deepEqual(opened[0].protocols, ["ot.v1"]);
});

/** A localStorage stand-in for Node. */
function fakeStorage() {
  const map = new Map();
  return {
    get length() {
      return map.size;
    },
    key: (i) => Array.from(map.keys())[i] ?? null,
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
    removeItem: (k) => map.delete(k),
  };
}

test("a slot keeps its key; a slot saved before keys gets a new one, saved with the state", async () => {
  globalThis.localStorage = fakeStorage();
  // Node 20 has no `navigator`; without Web Locks a stale slot is free.
  if (typeof navigator === "undefined") globalThis.navigator = {};
  const slots = new Slots("notes");
  const state = new Client("old", 3, "abc", 2).state();
  // Saved by a page before keys: no `key`, heartbeat long ago (free to claim).
  slots.save("old", { state, synced: true, epoch: 1, alive: 0, conflicts: [] });
  const claimed = await slots.claim();
  assert.equal(claimed.slot, "old");
  assert.equal(claimed.saved.key, undefined);
  const key = slotKey(claimed.saved);
  assert.ok(isClientKey(key));
  assert.notEqual(slotKey(claimed.saved), key, "nothing saved yet: each call is new");
  // What the page's persist() writes (state and key together) gives it back.
  slots.save("old", { ...claimed.saved, key, alive: 0 });
  const again = await new Slots("notes").claim();
  assert.equal(again.slot, "old");
  assert.equal(slotKey(again.saved), key);
  delete globalThis.localStorage;
});
