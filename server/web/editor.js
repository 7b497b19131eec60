// The browser editor: a <textarea> bound to the document through ot.js's
// client state machine over the server's WebSocket protocol (PROTOCOL.md).
//
// - Each `input` event becomes one operation: the old and new textarea values
//   are compared around the selection (only the changed region is scanned for
//   ordinary typing, deleting and pasting), and UTF-16 positions are converted
//   to code points at this boundary; lone surrogates become U+FFFD.
// - Remote operations are applied to the textarea in place with the local
//   selection mapped through them.
// - Other writers' cursors are drawn on a mirror layer behind the text and
//   listed with their names, colours and positions.
// - The client state (client id, next seq, outstanding op as sent, buffer,
//   revision, synced text) is saved to localStorage before every send and
//   after every edit, in a slot that this tab holds a Web Lock on; a reloaded
//   tab takes over the slot of a tab that is gone, never of one still open.
import {
  Client,
  OtError,
  advance,
  cpLen,
  replaceRange,
  transformPosition,
  wellFormed,
} from "./ot.js";

const docId = document.querySelector('meta[name="ot-doc"]').content;
const textarea = document.getElementById("text");
const mirror = document.getElementById("mirror");
const statusEl = document.getElementById("status");
const peopleEl = document.getElementById("people");
const nameInput = document.getElementById("name");
const conflictsEl = document.getElementById("conflicts");

const PREFIX = `ot:v1:${docId}:`;
const NAME_KEY = "ot:v1:name";

// ---------------------------------------------------------------------------
// Slots: one saved client state per writer, claimed with the Web Locks API.

function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function savedSlots() {
  const ids = [];
  for (let i = 0; i < localStorage.length; i++) {
    const key = localStorage.key(i);
    if (key && key.startsWith(PREFIX + "slot:")) ids.push(key.slice((PREFIX + "slot:").length));
  }
  return ids.sort();
}

// Hold the lock named for `slot` for the lifetime of this tab if it is free.
function tryLock(slot) {
  return new Promise((resolve) => {
    navigator.locks
      .request(`${PREFIX}${slot}`, { ifAvailable: true }, (lock) => {
        if (!lock) {
          resolve(false);
          return undefined;
        }
        resolve(true);
        return new Promise(() => {}); // held until the tab goes away
      })
      .catch(() => resolve(false));
  });
}

const HEARTBEAT_MS = 2000;
const STALE_MS = 10000;

async function claimSlot() {
  const haveLocks = typeof navigator.locks?.request === "function";
  for (const slot of savedSlots()) {
    let saved;
    try {
      saved = JSON.parse(localStorage.getItem(PREFIX + "slot:" + slot));
    } catch {
      continue;
    }
    if (!saved || !saved.state) continue;
    if (haveLocks) {
      if (await tryLock(slot)) return { slot, saved };
    } else if (Date.now() - (saved.alive || 0) > STALE_MS) {
      // No Web Locks (not a secure context): a slot whose tab stopped
      // beating its heart long ago is free.
      return { slot, saved };
    }
  }
  const slot = randomId();
  if (haveLocks) await tryLock(slot);
  return { slot, saved: null };
}

// ---------------------------------------------------------------------------
// State

let slot = null;
let client = null; // ot.js Client
let synced = false; // has had a snapshot or resume
let epoch = null;
let ws = null;
let connected = false;
let stopped = null; // a reason when the page must not reconnect
let wantSnapshot = false;
let attempt = 0;
let reconnectTimer = null;
let conflictCopies = [];
let shown = ""; // what the textarea shows (UTF-16), always == client.text
let cursorDirty = true;
const remote = new Map(); // client id → {name, ranges (code points, local text), color}

function persist() {
  if (!client) return;
  const record = {
    state: client.state(),
    synced,
    epoch,
    alive: Date.now(),
    conflicts: conflictCopies,
  };
  try {
    localStorage.setItem(PREFIX + "slot:" + slot, JSON.stringify(record));
  } catch (e) {
    console.warn("could not save the editor state", e);
  }
}

// ---------------------------------------------------------------------------
// Positions: the textarea counts UTF-16 code units, the protocol code points.

// True when the text has no astral characters, so both counts agree.
function bmpOnly() {
  return shown.length === cpLen16Cache();
}
let cpCount = 0; // code points in `shown`
function cpLen16Cache() {
  return cpCount;
}
function toCp(i) {
  return bmpOnly() ? i : cpLen(shown.slice(0, i));
}
function toUtf16(cp) {
  return bmpOnly() ? Math.min(cp, shown.length) : advance(shown, 0, cp);
}

function localRanges() {
  const a = toCp(textarea.selectionDirection === "backward" ? textarea.selectionEnd : textarea.selectionStart);
  const h = toCp(textarea.selectionDirection === "backward" ? textarea.selectionStart : textarea.selectionEnd);
  return [[a, h]];
}

// ---------------------------------------------------------------------------
// Local edits

let before = null; // selection before the pending input event

textarea.addEventListener("beforeinput", (e) => {
  before = { start: textarea.selectionStart, end: textarea.selectionEnd, type: e.inputType };
});

const SIMPLE_INPUTS = new Set([
  "insertText",
  "insertLineBreak",
  "insertParagraph",
  "insertFromPaste",
  "insertCompositionText",
  "deleteContentBackward",
  "deleteContentForward",
  "deleteByCut",
  "deleteWordBackward",
  "deleteWordForward",
]);

const isHigh = (c) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c) => c >= 0xdc00 && c <= 0xdfff;

// The changed region between `old` and `now` as [start, oldEnd, newEnd]
// (UTF-16 indices), or null if nothing changed.
function changedRegion(old, now, hint) {
  let start;
  let suffix;
  const caret = textarea.selectionEnd;
  if (hint && SIMPLE_INPUTS.has(hint.type)) {
    // The edit replaced the old selection (or the characters next to it) and
    // left the caret after the new text: only that region is compared.
    start = Math.min(hint.start, textarea.selectionStart, caret);
    suffix = Math.min(old.length - hint.end, now.length - caret);
    if (start < 0 || suffix < 0 || start + suffix > Math.min(old.length, now.length)) {
      start = null;
    }
    // A backward delete may take characters before the old selection start.
    if (start !== null && old.length - suffix < start) start = null;
  } else {
    start = null;
  }
  if (start === null) {
    // Unknown kind of edit (undo, drag and drop, spelling fix…): scan.
    start = 0;
    const max = Math.min(old.length, now.length);
    while (start < max && old.charCodeAt(start) === now.charCodeAt(start)) start++;
    suffix = 0;
    while (
      suffix < max - start &&
      old.charCodeAt(old.length - 1 - suffix) === now.charCodeAt(now.length - 1 - suffix)
    ) {
      suffix++;
    }
  } else {
    // Shrink the region inwards (O(region)).
    while (start < old.length - suffix && start < now.length - suffix && old.charCodeAt(start) === now.charCodeAt(start)) start++;
    while (
      old.length - suffix > start &&
      now.length - suffix > start &&
      old.charCodeAt(old.length - 1 - suffix) === now.charCodeAt(now.length - 1 - suffix)
    ) {
      suffix++;
    }
  }
  // Never split a surrogate pair at either edge.
  if (start > 0 && isHigh(old.charCodeAt(start - 1)) && (isLow(old.charCodeAt(start)) || isLow(now.charCodeAt(start)))) start--;
  if (suffix > 0 && isLow(old.charCodeAt(old.length - suffix)) && (isHigh(old.charCodeAt(old.length - suffix - 1)) || isHigh(now.charCodeAt(now.length - suffix - 1)))) suffix--;
  const oldEnd = old.length - suffix;
  const newEnd = now.length - suffix;
  if (start === oldEnd && start === newEnd) return null;
  return [start, oldEnd, newEnd];
}

textarea.addEventListener("input", () => {
  const hint = before;
  before = null;
  if (!client) {
    textarea.value = shown;
    return;
  }
  const now = textarea.value;
  const region = changedRegion(shown, now, hint);
  if (!region) return;
  const [start, oldEnd, newEnd] = region;
  const rawInserted = now.slice(start, newEnd);
  const inserted = wellFormed(rawInserted);
  const pos = toCp(start);
  const deleted = cpLen(shown.slice(start, oldEnd));
  const op = replaceRange(cpCount, pos, deleted, inserted);
  const out = client.localEdit(op);
  mapRemoteCursors(op);
  if (inserted !== rawInserted || client.text !== shown.slice(0, start) + inserted + shown.slice(oldEnd)) {
    // A lone surrogate became U+FFFD: show exactly the client's text.
    const sel = [textarea.selectionStart, textarea.selectionEnd];
    setShown(client.text);
    textarea.value = shown;
    textarea.setSelectionRange(Math.min(sel[0], shown.length), Math.min(sel[1], shown.length));
  } else {
    shown = now;
    cpCount = cpCount - deleted + cpLen(inserted);
  }
  cursorDirty = true;
  persist();
  if (out) sendOp(out);
  render();
});

for (const ev of ["select", "keyup", "mouseup", "focus"]) {
  textarea.addEventListener(ev, () => selectionMoved());
}
document.addEventListener("selectionchange", () => {
  if (document.activeElement === textarea) selectionMoved();
});
textarea.addEventListener("scroll", () => {
  mirror.scrollTop = textarea.scrollTop;
  mirror.scrollLeft = textarea.scrollLeft;
});

let lastSentRanges = "";
function selectionMoved() {
  const r = JSON.stringify(localRanges());
  if (r !== lastSentRanges) {
    cursorDirty = true;
    sendCursorIfIdle();
  }
}

function setShown(text) {
  shown = text;
  cpCount = cpLen(text);
}

// ---------------------------------------------------------------------------
// Remote edits

// Apply `op` (code points, based on `shown`) to the textarea, keeping the selection.
function applyToTextarea(op) {
  const selStart = toCp(textarea.selectionStart);
  const selEnd = toCp(textarea.selectionEnd);
  const dir = textarea.selectionDirection;
  const scrollTop = textarea.scrollTop;
  // Collect the edits in UTF-16 indices of the old text, then apply from the end.
  const edits = [];
  let cp = 0;
  let u = 0;
  for (const c of op) {
    if (typeof c === "string") {
      edits.push([u, u, c]);
    } else if (c > 0) {
      u = bmpOnly() ? u + c : advance(shown, u, c);
      cp += c;
    } else {
      const end = bmpOnly() ? u - c : advance(shown, u, -c);
      edits.push([u, end, ""]);
      u = end;
      cp -= c;
    }
  }
  let text = shown;
  for (let i = edits.length - 1; i >= 0; i--) {
    const [s, e, t] = edits[i];
    text = text.slice(0, s) + t + text.slice(e);
    textarea.setRangeText(t, s, e, "preserve");
  }
  setShown(text);
  if (textarea.value !== shown) textarea.value = shown;
  const a = toUtf16(transformPosition(selStart, op));
  const b = toUtf16(transformPosition(selEnd, op));
  textarea.setSelectionRange(a, b, dir);
  textarea.scrollTop = scrollTop;
}

function mapRemoteCursors(op) {
  for (const peer of remote.values()) {
    peer.ranges = peer.ranges.map(([a, h]) => [transformPosition(a, op), transformPosition(h, op)]);
  }
}

// ---------------------------------------------------------------------------
// The connection

function send(message) {
  if (ws && connected) ws.send(JSON.stringify(message));
}

function sendOp(out) {
  persist(); // saved before each send
  lastSentRanges = JSON.stringify(localRanges());
  cursorDirty = false;
  send({ type: "op", rev: out.base_rev, seq: out.seq, op: out.op, ranges: localRanges() });
  render();
}

let nameSent = false;
function sendCursorIfIdle() {
  if (!client || !connected || !client.allSaved()) return;
  if (!cursorDirty && nameSent) return;
  const ranges = localRanges();
  lastSentRanges = JSON.stringify(ranges);
  cursorDirty = false;
  nameSent = true;
  send({ type: "cursor", rev: client.revision, ranges, name: myName() });
}

function myName() {
  return (nameInput.value || "").trim().slice(0, 64) || "anonymous";
}

function url() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let u = `${scheme}//${location.host}/ws/${encodeURIComponent(docId)}?client=${encodeURIComponent(client.clientId)}`;
  if (synced && !wantSnapshot) {
    u += `&rev=${client.revision}`;
    if (epoch !== null) u += `&epoch=${epoch}`;
  }
  return u;
}

let heldOffline = false; // a test hook: behave as if the network were down

function connect() {
  reconnectTimer = null;
  if (stopped) return;
  if (heldOffline) {
    reconnectTimer = setTimeout(connect, 200);
    return;
  }
  setStatus("connecting");
  const socket = new WebSocket(url());
  ws = socket;
  socket.onopen = () => {
    if (ws !== socket) return;
    connected = true;
  };
  socket.onmessage = (event) => {
    if (ws !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    try {
      handle(message);
    } catch (e) {
      console.warn("resynchronising after", e);
      if (e instanceof OtError && e.code === "revision_gap") {
        // Reconnect with rev: the server fills the gap.
      } else {
        wantSnapshot = true;
      }
      socket.close(4000, "resync");
      dropped(socket);
    }
  };
  socket.onclose = (event) => {
    if (ws !== socket) return;
    if (event.code === 4009) stopped = "this editor was opened again elsewhere with the same identity";
    if (event.code === 1008) stopped = "the server refused this editor's messages";
    dropped(socket);
  };
}

function dropped(socket) {
  if (ws !== socket) return;
  ws = null;
  connected = false;
  remote.clear();
  if (stopped) {
    setStatus("stopped");
    render();
    return;
  }
  // Exponential backoff with full jitter, capped.
  const cap = Math.min(10000, 250 * 2 ** Math.min(attempt, 8));
  const delay = 100 + Math.random() * cap;
  attempt++;
  reconnectTimer = setTimeout(connect, delay);
  setStatus("reconnecting");
  render();
}

function handle(m) {
  switch (m.type) {
    case "snapshot": {
      epoch = m.epoch ?? null;
      const hadState = synced || !client.allSaved();
      const old = shown;
      const outcome = client.snapshot(m.rev, m.text, m.seq);
      synced = true;
      textarea.readOnly = false;
      wantSnapshot = false;
      attempt = 0;
      if (outcome.conflictCopy !== null && hadState) keepConflict(outcome.conflictCopy);
      if (client.text !== old) {
        setShown(client.text);
        textarea.value = shown;
      }
      persist();
      if (outcome.send) sendOp(outcome.send);
      break;
    }
    case "resume": {
      epoch = m.epoch ?? null;
      attempt = 0;
      const out = client.resumed(m.rev, m.seq);
      persist();
      if (out) sendOp(out);
      break;
    }
    case "op": {
      const r = client.remoteOp(m.rev, m.op, m.client, m.seq);
      if (r.applied) {
        applyToTextarea(r.applied);
        mapRemoteCursors(r.applied);
      } else if (r.acknowledged && r.next) {
        sendOp(r.next);
      }
      persist();
      break;
    }
    case "ack": {
      const r = client.ack(m.rev, m.seq);
      if (r.acknowledged) {
        persist();
        if (r.next) sendOp(r.next);
      }
      break;
    }
    case "cursor": {
      if (m.client === client.clientId) break;
      const ranges = client.transformRemoteRanges(
        m.ranges.map(([a, h]) => [Math.min(a, cpCount), Math.min(h, cpCount)]),
      );
      remote.set(m.client, { name: m.name || "anonymous", ranges, color: colorOf(m.client) });
      break;
    }
    case "leave":
      remote.delete(m.client);
      break;
    case "error":
      if (m.seq !== undefined && m.seq !== null) {
        // A refused op: keep the local text and resynchronise from a snapshot.
        wantSnapshot = true;
        keepConflict(client.text);
        ws?.close(4000, "resync");
      }
      console.warn("server error", m);
      break;
    default:
      break;
  }
  sendCursorIfIdle();
  render();
}

function keepConflict(text) {
  if (conflictCopies.includes(text)) return;
  conflictCopies.push(text);
  persist();
}

// ---------------------------------------------------------------------------
// Rendering: status, presence list, remote cursors.

function setStatus(s) {
  statusEl.dataset.state = s;
  renderStatus();
}

function renderStatus() {
  const s = statusEl.dataset.state;
  const saved = client && client.allSaved();
  let text;
  if (s === "stopped") text = `stopped: ${stopped}`;
  else if (!connected) text = s === "connecting" ? "connecting…" : "reconnecting…";
  else text = saved ? "connected · all saved" : "connected · saving…";
  if (!saved && client && !connected) text += " (unsent edits are kept)";
  statusEl.textContent = text;
  statusEl.dataset.saved = saved ? "yes" : "no";
  document.body.dataset.status = connected ? (saved ? "saved" : "saving") : s;
}

function colorOf(id) {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360} 75% 42%)`;
}

function lineCol(cp) {
  const u = toUtf16(cp);
  const before = shown.slice(0, u);
  const line = before.split("\n").length;
  const col = cpLen(before.slice(before.lastIndexOf("\n") + 1)) + 1;
  return `${line}:${col}`;
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderNow();
  });
}

function renderNow() {
  renderStatus();
  // Presence list.
  peopleEl.replaceChildren();
  const me = document.createElement("li");
  me.textContent = `${myName()} (you)`;
  me.style.setProperty("--c", client ? colorOf(client.clientId) : "#888");
  peopleEl.append(me);
  for (const [id, peer] of remote) {
    const li = document.createElement("li");
    li.className = "peer";
    li.dataset.client = id;
    li.style.setProperty("--c", peer.color);
    const [a, h] = peer.ranges[0] || [0, 0];
    li.textContent = `${peer.name} — ${lineCol(h)}${a !== h ? ` (${Math.abs(h - a)} selected)` : ""}`;
    peopleEl.append(li);
  }
  // Mirror: the same text, invisible, with markers at remote cursors.
  const marks = [];
  for (const [id, peer] of remote) {
    for (const [a, h] of peer.ranges) {
      const lo = Math.min(a, h, cpCount);
      const hi = Math.min(Math.max(a, h), cpCount);
      if (lo < hi) marks.push({ at: lo, kind: "start", id, peer }, { at: hi, kind: "end", id, peer });
      marks.push({ at: Math.min(h, cpCount), kind: "caret", id, peer });
    }
  }
  marks.sort((x, y) => x.at - y.at || (x.kind === "end" ? -1 : 1));
  const frag = document.createDocumentFragment();
  let last = 0;
  let open = 0;
  let selColor = null;
  const pushText = (from, to) => {
    if (to <= from) return;
    const t = shown.slice(toUtf16(from), toUtf16(to));
    if (open > 0) {
      const span = document.createElement("span");
      span.className = "sel";
      span.style.setProperty("--c", selColor);
      span.textContent = t;
      frag.append(span);
    } else {
      frag.append(document.createTextNode(t));
    }
  };
  for (const m of marks) {
    pushText(last, m.at);
    last = Math.max(last, m.at);
    if (m.kind === "start") {
      open++;
      selColor = m.peer.color;
    } else if (m.kind === "end") {
      open = Math.max(0, open - 1);
    } else {
      const caret = document.createElement("span");
      caret.className = "caret";
      caret.dataset.client = m.id;
      caret.style.setProperty("--c", m.peer.color);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = m.peer.name;
      caret.append(label);
      frag.append(caret);
    }
  }
  pushText(last, cpCount);
  frag.append(document.createTextNode("\u200b")); // keep a trailing newline's line
  mirror.replaceChildren(frag);
  mirror.scrollTop = textarea.scrollTop;
  mirror.scrollLeft = textarea.scrollLeft;
  // Conflict copies (never dropped silently).
  conflictsEl.hidden = conflictCopies.length === 0;
  const list = conflictsEl.querySelector("ol");
  list.replaceChildren(
    ...conflictCopies.map((t) => {
      const li = document.createElement("li");
      const area = document.createElement("textarea");
      area.readOnly = true;
      area.value = t;
      li.append(area);
      return li;
    }),
  );
}

// ---------------------------------------------------------------------------
// Start

async function start() {
  nameInput.value = localStorage.getItem(NAME_KEY) || `user-${randomId().slice(0, 4)}`;
  nameInput.addEventListener("change", () => {
    localStorage.setItem(NAME_KEY, myName());
    nameSent = false;
    sendCursorIfIdle();
    render();
  });
  const claimed = await claimSlot();
  slot = claimed.slot;
  if (claimed.saved) {
    try {
      client = Client.fromState(claimed.saved.state);
      synced = !!claimed.saved.synced;
      epoch = claimed.saved.epoch ?? null;
      conflictCopies = claimed.saved.conflicts || [];
    } catch (e) {
      console.warn("the saved state is unusable; starting fresh", e);
      client = null;
    }
  }
  if (!client) client = new Client(slot, 0, "", 0);
  setShown(client.text);
  textarea.value = shown;
  // Editing starts once the text is known: from a saved state at once
  // (offline too), otherwise after the first snapshot.
  textarea.readOnly = !synced;
  persist();
  setInterval(() => {
    if (!stopped) persist();
  }, HEARTBEAT_MS);
  window.addEventListener("pagehide", persist);
  nameInput.addEventListener("input", render);
  connect();
  render();
}

// For tests and debugging: a read-only view of the editor's state.
window.otEditor = {
  get clientId() {
    return client && client.clientId;
  },
  get text() {
    return shown;
  },
  get revision() {
    return client && client.revision;
  },
  get allSaved() {
    return !!client && client.allSaved();
  },
  get connected() {
    return connected;
  },
  get remoteCursors() {
    return Array.from(remote, ([id, p]) => ({ client: id, name: p.name, ranges: p.ranges }));
  },
  get conflictCopies() {
    return conflictCopies.slice();
  },
  /** Drop the connection as a network failure would, and stay offline while `offline`. */
  setOffline(offline) {
    heldOffline = offline;
    if (offline && ws) {
      const socket = ws;
      socket.close(4000, "offline");
      dropped(socket);
    }
  },
  get ready() {
    return !!client && synced;
  },
};

start();
