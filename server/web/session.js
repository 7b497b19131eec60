// The editor's WebSocket session (PROTOCOL.md), with no DOM: reading server
// frames, the message handler, the error and close rules, the connect URL
// (`rev` + `epoch` to resume), reconnecting with exponential backoff and full
// jitter, and resending the outstanding op byte-for-byte. The page wires it
// to the textarea, the view and localStorage through hooks (editor.js); Node
// imports it as it is (tests/js/protocol.test.mjs), so this module must not
// touch `document`, `window` or `localStorage`.
import { Client, OtError, cpLen, opFromJSON, opLimits, transformPosition } from "./ot.js";

// ---------------------------------------------------------------------------
// The protocol's tables

/**
 * Every error code the protocol defines, with what the client does when an
 * `error` names its outstanding op: `resend` (reconnect with `rev` after
 * backoff and resend the op byte-for-byte) or `conflict_copy` (keep the local
 * text as a conflict copy and resync from a snapshot). A code not in this
 * table (added by a later server) is a `conflict_copy`.
 */
export const ERROR_CODES = new Map([
  ["invalid_json", "conflict_copy"],
  ["binary_frame", "conflict_copy"],
  ["unknown_type", "conflict_copy"],
  ["invalid_message", "conflict_copy"],
  ["invalid_op", "conflict_copy"],
  ["message_too_large", "conflict_copy"],
  ["op_too_long", "conflict_copy"],
  ["too_many_components", "conflict_copy"],
  ["doc_too_long", "conflict_copy"],
  ["op_does_not_fit", "conflict_copy"],
  ["future_revision", "conflict_copy"],
  ["revision_too_old", "conflict_copy"],
  ["bad_seq", "conflict_copy"],
  ["seq_reused", "conflict_copy"],
  ["storage_error", "resend"],
  ["too_many_clients", "conflict_copy"],
  ["shutting_down", "conflict_copy"],
  ["forbidden", "conflict_copy"],
  ["client_expired", "conflict_copy"],
]);

/**
 * Every close code the server sends, with what the client does: `reconnect`,
 * `stop`, `reauthenticate` (keep unsent edits, wait for a new token) or
 * `resync` (reconnect without `rev`).
 */
export const CLOSE_CODES = new Map([
  [1000, "reconnect"],
  [1001, "reconnect"],
  [1007, "stop"],
  [1008, "stop"],
  [1009, "stop"],
  [1011, "reconnect"],
  [1013, "reconnect"],
  [4001, "reauthenticate"],
  [4004, "resync"],
  [4008, "reconnect"],
  [4009, "stop"],
]);

/** Why the page stopped, per close code that stops it. */
const STOP_REASONS = new Map([
  [1002, "the server reported a protocol error"],
  [1003, "the server reported a protocol error"],
  [1007, "the server could not read this editor's messages as UTF-8"],
  [1008, "the server refused this editor's messages"],
  [1009, "this editor sent a message larger than the server accepts"],
  [4001, "access expired — open a new link"],
  [4009, "this editor was opened again elsewhere with the same identity"],
]);

/**
 * What to do when the connection closes with `code` (null or undefined: no
 * close frame, e.g. a lost network; a browser reports that as 1006). An
 * unknown code is handled like 1011 (reconnect with backoff), except 1002 and
 * 1003 (the client broke the protocol), which stop.
 */
export function closeAction(code) {
  if (code === null || code === undefined) return "reconnect";
  if (CLOSE_CODES.has(code)) return CLOSE_CODES.get(code);
  if (code === 1002 || code === 1003) return "stop";
  return "reconnect";
}

/**
 * The one error rule: `resend`, `conflict_copy` or `ignore` for an `error`
 * with `code` and `seq` when the client's outstanding op has `outstandingSeq`
 * (null if none). An error naming no op or another seq is ignored.
 */
export function errorAction(code, seq, outstandingSeq) {
  if (seq === undefined || seq === null || outstandingSeq === null || seq !== outstandingSeq) return "ignore";
  return ERROR_CODES.get(code) === "resend" ? "resend" : "conflict_copy";
}

// ---------------------------------------------------------------------------
// Reading server messages

/** A frame the page cannot read: it is logged and the page reconnects. */
export class UnreadableMessage extends Error {}

const KNOWN_TYPES = new Set(["snapshot", "resume", "op", "ack", "cursor", "leave", "error", "pong", "replicated", "batch"]);

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

// A revision, seq, head or epoch: an integer 0 ≤ n ≤ 2^53−1. JSON.parse
// rounds a larger integer to at least 2^53, which is not a safe integer, so
// it is refused here instead of being used rounded.
function count(m, field, optional = false) {
  const v = m[field];
  if (optional && (v === undefined || v === null)) return;
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new UnreadableMessage(`${m.type}: "${field}" is not an integer in 0..2^53-1 (${JSON.stringify(v)})`);
  }
}

function string(m, field, optional = false) {
  const v = m[field];
  if (optional && (v === undefined || v === null)) return;
  if (typeof v !== "string") throw new UnreadableMessage(`${m.type}: "${field}" is not a string`);
}

/**
 * Check a parsed server message: a known `type` with its fields as
 * PROTOCOL.md says (unknown fields are ignored; an unknown `type` is passed
 * through for the handler to skip). Returns the message, with `op` made
 * canonical; throws `UnreadableMessage`.
 */
export function checkServerMessage(m) {
  if (!isObject(m)) throw new UnreadableMessage("a server message is a JSON object");
  if (typeof m.type !== "string") throw new UnreadableMessage('a server message has a string "type"');
  switch (m.type) {
    case "snapshot":
      count(m, "rev");
      string(m, "text");
      string(m, "client");
      count(m, "seq");
      count(m, "epoch", true);
      break;
    case "resume":
      count(m, "rev");
      count(m, "head");
      string(m, "client");
      count(m, "seq");
      count(m, "epoch", true);
      break;
    case "op":
      count(m, "rev");
      string(m, "client");
      count(m, "seq");
      try {
        return { ...m, op: opFromJSON(m.op) };
      } catch (e) {
        throw new UnreadableMessage(`op: "op" is not an operation (${e.code || e.message})`);
      }
    case "ack":
      count(m, "rev");
      count(m, "seq");
      break;
    case "cursor":
      string(m, "client");
      count(m, "rev");
      string(m, "name", true);
      if (
        !Array.isArray(m.ranges) ||
        !m.ranges.every((r) => Array.isArray(r) && r.length === 2 && r.every((p) => Number.isSafeInteger(p) && p >= 0))
      ) {
        throw new UnreadableMessage('cursor: "ranges" is not a list of [anchor, head] pairs');
      }
      break;
    case "leave":
      string(m, "client");
      break;
    case "error":
      string(m, "code");
      string(m, "message", true);
      count(m, "seq", true);
      break;
    case "pong":
      break;
    case "replicated":
      count(m, "rev");
      break;
    case "batch":
      // Several messages in one frame (asked for with batch=1): each is
      // checked as if it had come alone; one unreadable element makes the
      // whole frame unreadable.
      if (!Array.isArray(m.messages)) throw new UnreadableMessage('batch: "messages" is not a list');
      return { ...m, messages: m.messages.map(checkServerMessage) };
    default:
      break;
  }
  return m;
}

/** Parse and check the text of a server frame; throws `UnreadableMessage`. */
export function readServerMessage(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new UnreadableMessage(`not JSON: ${e.message}`);
  }
  return checkServerMessage(m);
}

// ---------------------------------------------------------------------------
// Writing client messages and connecting

/** The `op` message for `out` (`{seq, base_rev, op}` from ot.js's Client), with the selection after it. */
export function opMessage(out, ranges) {
  const m = { type: "op", rev: out.base_rev, seq: out.seq, op: out.op };
  if (ranges) m.ranges = ranges;
  return m;
}

/** The `cursor` message. */
export function cursorMessage(rev, ranges, name) {
  return { type: "cursor", rev, ranges, name };
}

/** The `ping` message: the server answers `pong` (a page cannot send WebSocket pings). */
export function pingMessage() {
  return { type: "ping" };
}

/** The WebSocket subprotocol of this protocol: the one the server selects and echoes. */
export const SUBPROTOCOL = "ot.v1";
/** A page offers its writer key as the subprotocol `ot.key.<key>` (browsers cannot set headers; never in the URL). */
export const KEY_SUBPROTOCOL_PREFIX = "ot.key.";

/** Whether `key` is a writer key: 32 lowercase hex digits (the protocol crate's `ClientKey` rule). */
export function isClientKey(key) {
  return typeof key === "string" && /^[0-9a-f]{32}$/.test(key);
}

/** The subprotocols to offer: `ot.v1`, and the writer's key when there is one. */
export function socketProtocols(clientKey) {
  return isClientKey(clientKey) ? [SUBPROTOCOL, KEY_SUBPROTOCOL_PREFIX + clientKey] : [SUBPROTOCOL];
}

/**
 * The WebSocket URL: `base` is `ws://host` or `wss://host`; `rev` (and
 * `epoch`, if known) ask for a resume, `rev` null for a snapshot; it asks
 * for batches.
 */
export function connectUrl(base, docId, clientId, rev = null, epoch = null) {
  // batch=1: the server may put several messages in one frame (a `batch`).
  let u = `${base}/ws/${encodeURIComponent(docId)}?client=${encodeURIComponent(clientId)}&batch=1`;
  if (rev !== null) {
    u += `&rev=${rev}`;
    if (epoch !== null) u += `&epoch=${epoch}`;
  }
  return u;
}

/** Delay before reconnect attempt `attempt` (from 0): exponential backoff with full jitter, capped. */
export function backoffDelay(attempt, random = Math.random) {
  const cap = Math.min(10000, 250 * 2 ** Math.min(attempt, 8));
  return 100 + random() * cap;
}

// ---------------------------------------------------------------------------
// The session

const noop = () => {};

/**
 * One writer's session on one document: owns the ot.js `Client`, the
 * connection and the other writers' cursors. `hooks` do what touches the page:
 *
 * - `setText(text)`: the document was replaced (a snapshot); show `text`.
 * - `applyRemote(op)`: apply `op` (code points, on the shown text) to the view.
 * - `conflict(text)`: keep `text` as a conflict copy.
 * - `persist()`: save the state (before every send).
 * - `status(state)`: `connecting`, `reconnecting` or `stopped`.
 * - `changed()`: something shown changed (render).
 * - `localRanges()`: this writer's selection (code points); `name()`; `textLength()`.
 * - `openSocket(url, protocols)`: a WebSocket (or a stand-in) offering `protocols`
 *   (`ot.v1` and `ot.key.<clientKey>`); `offline()`: behave as if offline.
 * - `accessChanged(access)`: the first message said what this connection may do.
 * - `checkAccess()`: after a connection that never opened, a promise of why:
 *   `"expired"` (401: the token is missing, expired or revoked), `"forbidden"`
 *   (403) or `"ok"` (something else: reconnect as usual).
 * - `log(...)`.
 *
 * `random` (for the jitter), `schedule(fn, ms)` (a timer), `now()` (a clock
 * in ms) and `livenessTimer(fn, ms)` (the liveness checks' timer) can be
 * replaced in tests.
 *
 * Liveness: a connection on which nothing arrived for `liveness` ms (default
 * `LIVENESS_MS`) is dropped and reconnected; after a third of that silence the
 * page sends `pingMessage()` so that a quiet but live server answers `pong`
 * (the server's own WebSocket pings are invisible to a page).
 */
/** Silence (ms) after which the page takes its connection for dead. The
 * server pings every 20 s and answers a `ping`, so a live connection is never
 * silent this long; a dropped network otherwise shows "connected" for minutes. */
export const LIVENESS_MS = 45000;

/** A timer that never keeps a Node process alive (the liveness checks of a
 * session left open by a test); a plain `setTimeout` in a browser. */
function backgroundTimer(fn, ms) {
  const timer = setTimeout(fn, ms);
  if (typeof timer === "object" && timer !== null && typeof timer.unref === "function") timer.unref();
  return timer;
}

export class Session {
  constructor({
    client,
    docId,
    clientKey = null,
    wsBase = "",
    synced = false,
    epoch = null,
    hooks = {},
    random = Math.random,
    schedule = (fn, ms) => setTimeout(fn, ms),
    now = () => Date.now(),
    liveness = LIVENESS_MS,
    livenessTimer = backgroundTimer,
  }) {
    this.client = client;
    this.docId = docId;
    // The writer's key (saved with the state before the first connection):
    // proves this page speaks for its client id. Null: an old page's state.
    this.clientKey = clientKey;
    this.wsBase = wsBase;
    this.synced = synced; // has had a snapshot or resume
    this.epoch = epoch;
    this.random = random;
    this.schedule = schedule;
    this.now = now;
    this.liveness = liveness;
    this.livenessTimer = livenessTimer;
    this.lastHeard = 0; // now() when the current socket last delivered anything
    this.pinged = false; // a ping was sent since then
    this.hooks = {
      setText: noop,
      applyRemote: noop,
      conflict: noop,
      persist: noop,
      status: noop,
      changed: noop,
      localRanges: () => [[0, 0]],
      name: () => "anonymous",
      textLength: () => cpLen(this.client.text),
      openSocket: null,
      offline: () => false,
      checkAccess: async () => "ok",
      accessChanged: noop,
      log: (...args) => console.warn(...args),
      ...hooks,
    };
    this.ws = null;
    this.connected = false;
    this.stopped = null; // a reason when the page must not reconnect
    this.access = null; // "read" | "write" | "region" | "admin", from the first message
    this.accessStopped = false; // stopped for want of a valid token: a new one restarts
    this.wantSnapshot = false;
    // Closed with 4004 (the document was deleted): the next snapshot is of a
    // new document, and unsent edits become a conflict copy, never its ops.
    this.documentDeleted = false;
    this.attempt = 0;
    this.retrying = false; // resending after storage_error: keep backing off until an ack
    this.reconnectTimer = null;
    this.remote = new Map(); // client id → {name, ranges (code points, local text)}
    this.cursorDirty = true;
    this.nameSent = false;
    this.lastSentRanges = "";
    // From a regional server: every local op up to this revision is at the
    // document's home (null: not told on this connection).
    this.replicatedRev = null;
  }

  /** Whether a regional server has work saved there but not yet at the home. */
  awaitingReplication() {
    return this.replicatedRev !== null && this.replicatedRev < this.client.revision;
  }

  // -- Connection ----------------------------------------------------------

  /** Whether local edits may be made: not on a read-only connection. */
  canWrite() {
    return this.access !== "read";
  }

  /** A new token: reconnect with it now (also after stopping for access). */
  renewAccess() {
    if (this.stopped && this.accessStopped) this.stopped = null;
    if (this.stopped) return;
    this.accessStopped = false;
    const socket = this.ws;
    this.ws = null;
    this.connected = false;
    if (socket) {
      try {
        socket.close(4000, "new token");
      } catch {
        // already closed
      }
    }
    this.attempt = 0;
    this.connect();
  }

  /** Stop for good because of access (unsent edits stay in the saved state). */
  accessLost(why) {
    this.accessStopped = true;
    this.stopped = why === "forbidden" ? "this link does not give access to this document" : "access expired — open a new link";
    this.dropped();
  }

  /** The URL to connect to now: with `rev` (and `epoch`) once synced, unless a snapshot is wanted. */
  url() {
    const resume = this.synced && !this.wantSnapshot;
    return connectUrl(this.wsBase, this.docId, this.client.clientId, resume ? this.client.revision : null, resume ? this.epoch : null);
  }

  connect() {
    this.reconnectTimer = null;
    if (this.stopped) return;
    if (this.hooks.offline()) {
      this.reconnectTimer = this.schedule(() => this.connect(), 200);
      return;
    }
    this.hooks.status("connecting");
    const socket = this.hooks.openSocket(this.url(), socketProtocols(this.clientKey));
    this.ws = socket;
    socket.onopen = () => {
      if (this.ws !== socket) return;
      this.connected = true;
      this.replicatedRev = null; // a regional server says it on every connection
      this.heard();
      this.watchLiveness(socket);
    };
    socket.onmessage = (event) => {
      if (this.ws !== socket) return;
      this.heard();
      this.receive(event.data);
    };
    socket.onclose = (event) => {
      if (this.ws !== socket) return;
      const opened = this.connected;
      const action = this.closed(event.code);
      // A refused upgrade (401/403) never opens: ask why before retrying.
      if (!opened && action === "reconnect") {
        this.hooks.checkAccess().then((why) => {
          if (why !== "ok" && !this.stopped) this.accessLost(why);
        });
      }
    };
  }

  /** Something arrived: the silence starts over. */
  heard() {
    this.lastHeard = this.now();
    this.pinged = false;
  }

  /**
   * Check `socket` every sixth of the liveness limit while it is the current
   * one: ping after a third of the limit in silence, drop it after the whole.
   * A check of a replaced socket ends its chain (timers need no cancelling).
   */
  watchLiveness(socket) {
    const every = Math.max(1, Math.floor(this.liveness / 6));
    this.livenessTimer(() => {
      if (this.ws !== socket || !this.connected) return;
      const silent = this.now() - this.lastHeard;
      if (silent >= this.liveness) {
        this.hooks.log(`no message from the server for ${Math.round(silent / 1000)} s: reconnecting`);
        this.dropped("no message from the server");
        return;
      }
      if (silent >= this.liveness / 3 && !this.pinged) {
        this.pinged = true;
        this.send(pingMessage());
      }
      this.watchLiveness(socket);
    }, every);
  }

  /** The server closed the connection with `code` (undefined: no close frame). Returns the action. */
  closed(code) {
    const action = closeAction(code);
    // Unsent edits stay in the saved state: a new link (a new token) sends them.
    if (action === "reauthenticate") this.accessStopped = true;
    if (action === "stop" || action === "reauthenticate") this.stopped = STOP_REASONS.get(code) || `the server closed the connection with code ${code}`;
    if (action === "resync") {
      this.documentDeleted = true;
      this.resync("document deleted");
      return action;
    }
    this.dropped();
    return action;
  }

  /** Close the connection (if any) and reconnect after backoff (unless stopped). */
  dropped(reason = "reconnect") {
    const socket = this.ws;
    this.ws = null;
    this.connected = false;
    this.remote.clear();
    if (socket) {
      try {
        socket.close(4000, reason);
      } catch {
        // already closed
      }
    }
    if (this.stopped) {
      this.hooks.status("stopped");
      this.hooks.changed();
      return;
    }
    if (this.reconnectTimer === null) {
      const delay = backoffDelay(this.attempt, this.random);
      this.attempt++;
      this.reconnectTimer = this.schedule(() => this.connect(), delay);
    }
    this.hooks.status("reconnecting");
    this.hooks.changed();
  }

  /** Resync from a snapshot: reconnect without `rev`. */
  resync(reason) {
    this.wantSnapshot = true;
    this.dropped(reason);
  }

  send(message) {
    if (this.ws && this.connected) this.ws.send(JSON.stringify(message));
  }

  /** Send `out` (saved first); the op keeps its seq, base revision and op for every resend. */
  sendOp(out) {
    this.hooks.persist(); // saved before each send
    const ranges = this.hooks.localRanges();
    this.lastSentRanges = JSON.stringify(ranges);
    this.cursorDirty = false;
    this.send(opMessage(out, ranges));
    this.hooks.changed();
  }

  sendCursorIfIdle() {
    if (!this.connected || !this.client.allSaved()) return;
    if (!this.cursorDirty && this.nameSent) return;
    const ranges = this.hooks.localRanges();
    this.lastSentRanges = JSON.stringify(ranges);
    this.cursorDirty = false;
    this.nameSent = true;
    this.send(cursorMessage(this.client.revision, ranges, this.hooks.name()));
  }

  // -- Local events ---------------------------------------------------------

  /** A local edit (code points): returns the op to send (after the view is updated: `edited`), or null. */
  localEdit(op) {
    const out = this.client.localEdit(op);
    this.mapRemoteCursors(op);
    return out;
  }

  /** After a local edit is shown: save, and send `out` if there is one. */
  edited(out) {
    this.cursorDirty = true;
    this.hooks.persist();
    if (out) this.sendOp(out);
    this.hooks.changed();
  }

  selectionMoved() {
    if (JSON.stringify(this.hooks.localRanges()) !== this.lastSentRanges) {
      this.cursorDirty = true;
      this.sendCursorIfIdle();
    }
  }

  nameChanged() {
    this.nameSent = false;
    this.sendCursorIfIdle();
  }

  mapRemoteCursors(op) {
    for (const peer of this.remote.values()) {
      peer.ranges = peer.ranges.map(([a, h]) => [transformPosition(a, op), transformPosition(h, op)]);
    }
  }

  // -- Server messages -----------------------------------------------------

  /** A frame's text: read it and handle it; an unreadable frame is logged and the page reconnects. */
  receive(text) {
    let m;
    try {
      m = readServerMessage(text);
    } catch (e) {
      this.hooks.log("reconnecting after an unreadable message:", e.message);
      this.dropped("unreadable message");
      return { kind: "unreadable", action: "reconnect", error: e };
    }
    return this.handleMessage(m);
  }

  /**
   * The message handler: one checked server message (`checkServerMessage`).
   * Returns what was done: `{kind, action}` where `kind` is the message type
   * handled (or `skipped` for an unknown type) and `action` one of `synced`,
   * `resumed`, `resend`, `applied`, `acknowledged`, `ignored`, `shown`,
   * `removed`, `conflict_copy`, `ignore` (an error naming no outstanding op),
   * `reconnect` or `resync` (the message did not fit the client's state).
   */
  handleMessage(m) {
    if (m.type === "batch") return this.handleBatch(m);
    let result;
    try {
      result = this.dispatch(m);
    } catch (e) {
      this.hooks.log("resynchronising after", e);
      if (e instanceof OtError && e.code === "revision_gap") {
        // Reconnect with rev: the server fills the gap.
        this.dropped("revision gap");
        return { kind: m.type, action: "reconnect", error: e };
      }
      this.resync("resync");
      return { kind: m.type, action: "resync", error: e };
    }
    if (result.kind !== "skipped") this.sendCursorIfIdle();
    this.hooks.changed();
    return result;
  }

  /**
   * A batch: its messages in order, exactly as if each had come alone,
   * until one of them drops the connection (the rest belong to it).
   * Returns `{kind: "batch", action: "handled", results}`.
   */
  handleBatch(batch) {
    const socket = this.ws;
    const results = [];
    for (const m of batch.messages) {
      results.push(this.handleMessage(m));
      if (this.ws !== socket) break;
    }
    return { kind: "batch", action: "handled", results };
  }

  dispatch(m) {
    const client = this.client;
    switch (m.type) {
      case "snapshot": {
        // The limits first: pending edits rebased onto the snapshot are queued within them.
        client.setLimits(opLimits(m.limits));
        this.epoch = m.epoch ?? null;
        this.access = m.access ?? "write";
        this.hooks.accessChanged(this.access);
        if (this.documentDeleted) {
          // A new document: the unsent edits of the deleted one are kept as
          // a conflict copy (as after a refused op) and never rebased onto it.
          this.documentDeleted = false;
          if (!client.allSaved() && client.text !== m.text) this.hooks.conflict(client.text);
          this.client = new Client(client.clientId, m.rev, m.text, m.seq);
          this.client.setLimits(client.limits);
          this.synced = true;
          this.wantSnapshot = false;
          if (!this.retrying) this.attempt = 0;
          this.hooks.setText(this.client.text);
          this.hooks.persist();
          return { kind: "snapshot", action: "synced", conflictCopy: null };
        }
        const hadState = this.synced || !client.allSaved();
        const outcome = client.snapshot(m.rev, m.text, m.seq);
        this.synced = true;
        this.wantSnapshot = false;
        if (!this.retrying) this.attempt = 0;
        if (outcome.conflictCopy !== null && hadState) this.hooks.conflict(outcome.conflictCopy);
        this.hooks.setText(client.text);
        this.hooks.persist();
        if (outcome.send) this.sendOp(outcome.send);
        return { kind: "snapshot", action: "synced", conflictCopy: hadState ? outcome.conflictCopy : null };
      }
      case "resume": {
        client.setLimits(opLimits(m.limits));
        this.epoch = m.epoch ?? null;
        this.access = m.access ?? "write";
        this.hooks.accessChanged(this.access);
        if (!this.retrying) this.attempt = 0;
        const out = client.resumed(m.rev, m.seq);
        this.hooks.persist();
        if (out) this.sendOp(out);
        return { kind: "resume", action: out ? "resend" : "resumed", sent: out };
      }
      case "op": {
        const r = client.remoteOp(m.rev, m.op, m.client, m.seq);
        let action = "ignored";
        if (r.applied) {
          this.hooks.applyRemote(r.applied);
          this.mapRemoteCursors(r.applied);
          action = "applied";
        } else if (r.acknowledged) {
          this.acknowledged();
          if (r.next) this.sendOp(r.next);
          action = "acknowledged";
        }
        this.hooks.persist();
        return { kind: "op", action };
      }
      case "ack": {
        const r = client.ack(m.rev, m.seq);
        if (!r.acknowledged) return { kind: "ack", action: "ignored" };
        this.acknowledged();
        this.hooks.persist();
        if (r.next) this.sendOp(r.next);
        return { kind: "ack", action: "acknowledged" };
      }
      case "cursor": {
        if (m.client === client.clientId) return { kind: "cursor", action: "ignored" };
        const len = this.hooks.textLength();
        const ranges = client.transformRemoteRanges(m.ranges.map(([a, h]) => [Math.min(a, len), Math.min(h, len)]));
        this.remote.set(m.client, { name: m.name || "anonymous", ranges });
        return { kind: "cursor", action: "shown" };
      }
      case "leave":
        this.remote.delete(m.client);
        return { kind: "leave", action: "removed" };
      case "error": {
        const outstanding = client.outstanding ? client.outstanding.seq : null;
        const action = errorAction(m.code, m.seq, outstanding);
        this.hooks.log("server error", m);
        if (action === "resend") {
          // Not stored: reconnect with rev after backoff; the resume resends
          // the op as it was sent (the server's dedup acks it if it was
          // applied after all).
          this.retrying = true;
          this.dropped("resend");
        } else if (action === "conflict_copy") {
          // A refused op: keep the local text and resynchronise from a snapshot.
          this.hooks.conflict(client.text);
          this.resync("resync");
        }
        return { kind: "error", action };
      }
      case "pong":
        // Only proves the connection alive: every frame does that.
        return { kind: "pong", action: "alive" };
      case "replicated":
        this.replicatedRev = m.rev;
        this.hooks.changed();
        return { kind: "replicated", action: "noted" };
      default:
        return { kind: "skipped", action: "ignored" };
    }
  }

  acknowledged() {
    this.retrying = false;
    this.attempt = 0;
  }

  /** Drop the connection as a network failure would (a test hook: the caller keeps it offline). */
  goOffline() {
    if (this.ws) this.dropped("offline");
  }
}
