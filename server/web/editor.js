// The browser editor: a <textarea> bound to the document through ot.js's
// client state machine over the server's WebSocket protocol (PROTOCOL.md).
// This module wires the parts together:
//
// - session.js: the WebSocket session and the message handler (no DOM);
// - textarea.js: local edits into ops, remote ops into the textarea;
// - view.js: status, the writers here now, remote cursors, conflict copies;
// - slots.js: the saved state in localStorage, in a slot this tab holds a
//   Web Lock on (saved before every send and after every edit);
// - token.js: the access token from the link's fragment.
import { Client } from "./ot.js";
import { Session } from "./session.js";
import { HEARTBEAT_MS, Slots, randomId, saveName, savedName, slotKey } from "./slots.js";
import { TextareaBinding } from "./textarea.js";
import { authHeaders, bearerProtocols, takeToken } from "./token.js";
import { View } from "./view.js";

const docId = document.querySelector('meta[name="ot-doc"]').content;
const textarea = document.getElementById("text");
const mirror = document.getElementById("mirror");
const nameInput = document.getElementById("name");

let token = takeToken();
const slots = new Slots(docId);
const binding = new TextareaBinding(textarea);
let slot = null;
let session = null;
let conflictCopies = [];
let serverCopies = []; // [{id, time_ms, reason, text}] from GET /api/docs/{doc}/copies
let heldOffline = false; // a test hook: behave as if the network were down

function myName() {
  return (nameInput.value || "").trim().slice(0, 64) || "anonymous";
}

const view = new View(
  {
    status: document.getElementById("status"),
    people: document.getElementById("people"),
    mirror,
    textarea,
    conflicts: document.getElementById("conflicts"),
    serverCopies: document.getElementById("server-copies"),
  },
  binding,
  {
    get session() { return session; },
    name: myName,
    conflictCopies: () => conflictCopies,
    serverCopies: () => serverCopies,
  },
);

function persist() {
  if (!session) return;
  slots.save(slot, {
    state: session.client.state(),
    key: session.clientKey,
    synced: session.synced,
    epoch: session.epoch,
    alive: Date.now(),
    conflicts: conflictCopies,
  });
}

// The copies the server keeps (a regional server's work its home could not
// take): asked again at every snapshot, since a reset comes with one.
async function refreshServerCopies() {
  try {
    const r = await fetch(`/api/docs/${encodeURIComponent(docId)}/copies`, { headers: authHeaders(token) });
    if (!r.ok) return;
    const body = await r.json();
    serverCopies = Array.isArray(body.copies) ? body.copies : [];
    view.render();
  } catch {
    // offline: the list stays as it was
  }
}

function keepConflict(text) {
  if (conflictCopies.includes(text)) return;
  conflictCopies.push(text);
  persist();
}

// ---------------------------------------------------------------------------
// Local edits

let before = null; // selection before the pending input event

textarea.addEventListener("beforeinput", (e) => {
  before = { start: textarea.selectionStart, end: textarea.selectionEnd, type: e.inputType };
});

textarea.addEventListener("input", () => {
  const hint = before;
  before = null;
  if (!session) {
    textarea.value = binding.shown;
    return;
  }
  const edit = binding.readEdit(hint);
  if (!edit) return;
  const out = session.localEdit(edit.op);
  binding.accepted(edit, session.client.text);
  session.edited(out);
});

for (const ev of ["select", "keyup", "mouseup", "focus"]) {
  textarea.addEventListener(ev, () => session?.selectionMoved());
}
document.addEventListener("selectionchange", () => {
  if (document.activeElement === textarea) session?.selectionMoved();
});
textarea.addEventListener("scroll", () => {
  mirror.scrollTop = textarea.scrollTop;
  mirror.scrollLeft = textarea.scrollLeft;
});

// ---------------------------------------------------------------------------
// Start

async function start() {
  nameInput.value = savedName() || `user-${randomId().slice(0, 4)}`;
  nameInput.addEventListener("change", () => {
    saveName(myName());
    session?.nameChanged();
    view.render();
  });
  const claimed = await slots.claim();
  slot = claimed.slot;
  let client = null;
  let restored = { synced: false, epoch: null };
  if (claimed.saved) {
    try {
      client = Client.fromState(claimed.saved.state);
      restored = { synced: !!claimed.saved.synced, epoch: claimed.saved.epoch ?? null };
      conflictCopies = claimed.saved.conflicts || [];
    } catch (e) {
      console.warn("the saved state is unusable; starting fresh", e);
      client = null;
    }
  }
  if (!client) client = new Client(slot, 0, "", 0);
  session = new Session({
    client,
    docId,
    // Saved (by the persist() below) before the first connection offers it.
    clientKey: slotKey(claimed.saved),
    wsBase: `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`,
    synced: restored.synced,
    epoch: restored.epoch,
    hooks: {
      setText(text) {
        binding.show(text);
        textarea.readOnly = !session.canWrite();
        refreshServerCopies();
      },
      applyRemote: (op) => binding.applyRemote(op),
      conflict: keepConflict,
      persist,
      status: (state) => view.setStatus(state),
      changed: () => view.render(),
      localRanges: () => binding.localRanges(),
      name: myName,
      textLength: () => binding.cpCount,
      openSocket: (url, protocols) => new WebSocket(url, [...protocols, ...bearerProtocols(token)]),
      // A refused upgrade looks like a lost network to a WebSocket: ask over HTTP why.
      checkAccess: async () => {
        try {
          const r = await fetch(`/api/docs/${encodeURIComponent(docId)}`, { headers: authHeaders(token) });
          if (r.status === 401) return "expired";
          if (r.status === 403) return "forbidden";
        } catch {
          // offline: nothing to learn
        }
        return "ok";
      },
      offline: () => heldOffline,
      accessChanged: (access) => {
        textarea.readOnly = access === "read" || !session.synced;
      },
    },
  });
  binding.show(client.text);
  // Editing starts once the text is known: from a saved state at once
  // (offline too), otherwise after the first snapshot.
  textarea.readOnly = !session.synced;
  persist();
  setInterval(() => {
    if (!session.stopped) persist();
  }, HEARTBEAT_MS);
  window.addEventListener("pagehide", persist);
  // A new link opened in this tab (same page, new fragment): use its token.
  window.addEventListener("hashchange", () => {
    const renewed = takeToken();
    if (renewed && renewed !== token) {
      token = renewed;
      session.renewAccess();
    }
  });
  nameInput.addEventListener("input", () => view.render());
  session.connect();
  view.render();
}

// For tests and debugging: a read-only view of the editor's state.
window.otEditor = {
  get clientId() {
    return session && session.client.clientId;
  },
  get text() {
    return binding.shown;
  },
  get revision() {
    return session && session.client.revision;
  },
  get allSaved() {
    return !!session && session.client.allSaved();
  },
  get connected() {
    return !!session && session.connected;
  },
  get remoteCursors() {
    return session ? Array.from(session.remote, ([id, p]) => ({ client: id, name: p.name, ranges: p.ranges })) : [];
  },
  get serverCopies() {
    return serverCopies.map((c) => c.text);
  },
  get conflictCopies() {
    return conflictCopies.slice();
  },
  /** Drop the connection as a network failure would, and stay offline while `offline`. */
  setOffline(offline) {
    heldOffline = offline;
    if (offline) session?.goOffline();
  },
  get ready() {
    return !!session && session.synced;
  },
  get access() {
    return session && session.access;
  },
  get stopped() {
    return session && session.stopped;
  },
};

start();
