// Saved client state in localStorage: one slot per writer, claimed with the
// Web Locks API so that a reloaded tab takes over the slot of a tab that is
// gone, never of one still open. Without Web Locks (not a secure context) a
// slot whose heartbeat is older than STALE_MS is free.

/** How often an open tab saves its state (its heartbeat). */
export const HEARTBEAT_MS = 2000;
const STALE_MS = 10000;
const NAME_KEY = "ot:v1:name";

/** 128 random bits as 32 hex digits. */
export function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A new writer key: 128 random bits as 32 lowercase hex digits. */
export function randomKey() {
  return randomId();
}

/**
 * The writer key of a claimed slot: the saved one, or a new one for a slot
 * saved before keys (or a new slot). The caller saves it before connecting,
 * so the key the server binds is never lost.
 */
export function slotKey(saved) {
  const key = saved && saved.key;
  return typeof key === "string" && /^[0-9a-f]{32}$/.test(key) ? key : randomKey();
}

/** The display name saved for every document, or null. */
export function savedName() {
  return localStorage.getItem(NAME_KEY);
}

export function saveName(name) {
  localStorage.setItem(NAME_KEY, name);
}

// Hold the lock named `name` for the lifetime of this tab if it is free.
function tryLock(name) {
  return new Promise((resolve) => {
    navigator.locks
      .request(name, { ifAvailable: true }, (lock) => {
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

/** The saved slots of one document. */
export class Slots {
  constructor(docId) {
    this.prefix = `ot:v1:${docId}:`;
  }

  key(slot) {
    return this.prefix + "slot:" + slot;
  }

  saved() {
    const ids = [];
    const start = this.prefix + "slot:";
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (key && key.startsWith(start)) ids.push(key.slice(start.length));
    }
    return ids.sort();
  }

  /** Claim a saved slot this tab can take over, or a new one: `{slot, saved}` (`saved` null if new). */
  async claim() {
    const haveLocks = typeof navigator.locks?.request === "function";
    for (const slot of this.saved()) {
      let saved;
      try {
        saved = JSON.parse(localStorage.getItem(this.key(slot)));
      } catch {
        continue;
      }
      if (!saved || !saved.state) continue;
      if (haveLocks) {
        if (await tryLock(this.prefix + slot)) return { slot, saved };
      } else if (Date.now() - (saved.alive || 0) > STALE_MS) {
        // No Web Locks (not a secure context): a slot whose tab stopped
        // beating its heart long ago is free.
        return { slot, saved };
      }
    }
    const slot = randomId();
    if (haveLocks) await tryLock(this.prefix + slot);
    return { slot, saved: null };
  }

  /** Save `record` (`{state, key, synced, epoch, alive, conflicts}`) in `slot`. */
  save(slot, record) {
    try {
      localStorage.setItem(this.key(slot), JSON.stringify(record));
    } catch (e) {
      console.warn("could not save the editor state", e);
    }
  }
}
