// What the page shows besides the text: the connection status, the list of
// writers here now, the other writers' cursors and selections (drawn on a
// mirror layer behind the transparent textarea, with the same font and
// wrapping) and the conflict copies.

/** A writer's colour, from its client id. */
export function colorOf(id) {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360} 75% 42%)`;
}

export class View {
  /**
   * `els`: {status, people, mirror, textarea, conflicts}; `binding` the
   * TextareaBinding; `page` gives {session, name(), conflictCopies(),
   * serverCopies()}.
   */
  constructor(els, binding, page) {
    this.els = els;
    this.binding = binding;
    this.page = page;
    this.queued = false;
  }

  setStatus(state) {
    this.els.status.dataset.state = state;
    this.renderStatus();
  }

  renderStatus() {
    const statusEl = this.els.status;
    const session = this.page.session;
    const s = statusEl.dataset.state;
    const connected = !!session && session.connected;
    const saved = !!session && session.client.allSaved();
    let text;
    if (s === "stopped") text = `stopped: ${session && session.stopped}`;
    else if (!connected) text = s === "connecting" ? "connecting…" : "reconnecting…";
    else if (saved && session.awaitingReplication()) text = "connected · saved in region, not yet replicated";
    else text = saved ? "connected · all saved" : "connected · saving…";
    if (!saved && session && !connected) text += " (unsent edits are kept)";
    if (session && session.access === "read") text += " · read-only";
    statusEl.textContent = text;
    statusEl.dataset.saved = saved ? "yes" : "no";
    document.body.dataset.status = connected ? (saved ? "saved" : "saving") : s;
  }

  /** Render at the next animation frame (once however often it is asked). */
  render() {
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.renderNow();
    });
  }

  renderNow() {
    this.renderStatus();
    this.renderPeople();
    this.renderMirror();
    this.renderConflicts();
    this.renderServerCopies();
  }

  renderPeople() {
    const session = this.page.session;
    const remote = session ? session.remote : new Map();
    const peopleEl = this.els.people;
    peopleEl.replaceChildren();
    const me = document.createElement("li");
    me.textContent = `${this.page.name()} (you)`;
    me.style.setProperty("--c", session ? colorOf(session.client.clientId) : "#888");
    peopleEl.append(me);
    for (const [id, peer] of remote) {
      const li = document.createElement("li");
      li.className = "peer";
      li.dataset.client = id;
      li.style.setProperty("--c", colorOf(id));
      const [a, h] = peer.ranges[0] || [0, 0];
      li.textContent = `${peer.name} — ${this.binding.lineCol(h)}${a !== h ? ` (${Math.abs(h - a)} selected)` : ""}`;
      peopleEl.append(li);
    }
  }

  // The mirror: the same text, invisible, with markers at remote cursors.
  renderMirror() {
    const session = this.page.session;
    const remote = session ? session.remote : new Map();
    const { shown, cpCount } = this.binding;
    const marks = [];
    for (const [id, peer] of remote) {
      const color = colorOf(id);
      for (const [a, h] of peer.ranges) {
        const lo = Math.min(a, h, cpCount);
        const hi = Math.min(Math.max(a, h), cpCount);
        if (lo < hi) marks.push({ at: lo, kind: "start", id, peer, color }, { at: hi, kind: "end", id, peer, color });
        marks.push({ at: Math.min(h, cpCount), kind: "caret", id, peer, color });
      }
    }
    marks.sort((x, y) => x.at - y.at || (x.kind === "end" ? -1 : 1));
    const frag = document.createDocumentFragment();
    let last = 0;
    let open = 0;
    let selColor = null;
    const pushText = (from, to) => {
      if (to <= from) return;
      const t = shown.slice(this.binding.toUtf16(from), this.binding.toUtf16(to));
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
        selColor = m.color;
      } else if (m.kind === "end") {
        open = Math.max(0, open - 1);
      } else {
        const caret = document.createElement("span");
        caret.className = "caret";
        caret.dataset.client = m.id;
        caret.style.setProperty("--c", m.color);
        const label = document.createElement("span");
        label.className = "label";
        label.textContent = m.peer.name;
        caret.append(label);
        frag.append(caret);
      }
    }
    pushText(last, cpCount);
    frag.append(document.createTextNode("\u200b")); // keep a trailing newline's line
    const { mirror, textarea } = this.els;
    mirror.replaceChildren(frag);
    mirror.scrollTop = textarea.scrollTop;
    mirror.scrollLeft = textarea.scrollLeft;
  }

  // Conflict copies (never dropped silently).
  renderConflicts() {
    renderCopies(this.els.conflicts, this.page.conflictCopies());
  }

  // The copies the server keeps of this document (GET /api/docs/{doc}/copies).
  renderServerCopies() {
    renderCopies(this.els.serverCopies, this.page.serverCopies().map((c) => c.text));
  }
}

/** Show `copies` (texts) read-only in `section`'s list; hide it when empty. */
function renderCopies(section, copies) {
  section.hidden = copies.length === 0;
  const list = section.querySelector("ol");
  list.replaceChildren(
    ...copies.map((t) => {
      const li = document.createElement("li");
      const area = document.createElement("textarea");
      area.readOnly = true;
      area.value = t;
      li.append(area);
      return li;
    }),
  );
}
