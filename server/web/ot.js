// Operational transformation for plain text, in JavaScript: the browser
// editor's copy of ot-core's algebra and client state machine.
//
// An ES module with no dependencies, used by the page and by the Node
// conformance test (tests/js/). Operations use the ot.js JSON form — an array
// where a positive integer retains, a string inserts and a negative integer
// deletes (`[5, "hi", -2, 3]`) — and every length and position counts
// **Unicode scalar values** (code points), exactly like ot-core, never UTF-16
// code units. Operations are kept canonical: no empty components, adjacent
// components of one kind merged, an insert before an adjacent delete. Errors
// are thrown as `OtError`s whose `code` is ot-core's code
// (`length_mismatch`, `compose_mismatch`, `transform_mismatch`,
// `out_of_range`, `invalid_json`, `not_an_array`, `zero_length`,
// `not_an_integer`, `too_large`, `invalid_component`; the client state machine
// adds `revision_gap`, `op_does_not_fit`, `local_op_does_not_fit`,
// `resume_mismatch`, `stale_state`, `corrupt_state`).

/** 2^53 − 1: the largest length an operation may have (exact in JavaScript). */
export const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

/** An error with ot-core's machine-readable code. */
export class OtError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

// ---------------------------------------------------------------------------
// Code points

/** Number of code points (Unicode scalar values in well-formed text) in `s`. */
export function cpLen(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

/** The UTF-16 index reached by walking `n` code points from UTF-16 index `i` of `s`. */
export function advance(s, i, n) {
  while (n > 0 && i < s.length) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      i += d >= 0xdc00 && d <= 0xdfff ? 2 : 1;
    } else {
      i += 1;
    }
    n--;
  }
  return i;
}

/** Code point index of UTF-16 index `i` in `s` (an index inside a pair counts as after it). */
export function utf16ToCp(s, i) {
  return cpLen(s.slice(0, i));
}

/** UTF-16 index of code point index `cp` in `s` (clamped to the end). */
export function cpToUtf16(s, cp) {
  return advance(s, 0, cp);
}

/** `s` with every lone surrogate replaced by U+FFFD. */
export function wellFormed(s) {
  if (typeof s.toWellFormed === "function") return s.toWellFormed();
  return s.replace(
    /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g,
    "\uFFFD",
  );
}

/** True when `s` has no lone surrogate. */
export function isWellFormed(s) {
  if (typeof s.isWellFormed === "function") return s.isWellFormed();
  return wellFormed(s) === s;
}

// ---------------------------------------------------------------------------
// The canonicalising builder

const isRetain = (c) => typeof c === "number" && c > 0;
const isDelete = (c) => typeof c === "number" && c < 0;
const isInsert = (c) => typeof c === "string";

/** Builds canonical operations (the same merging rules as ot-core's builder). */
export class Builder {
  constructor() {
    this.ops = [];
  }
  retain(n) {
    if (n <= 0) return this;
    const last = this.ops.length - 1;
    if (last >= 0 && isRetain(this.ops[last])) this.ops[last] += n;
    else this.ops.push(n);
    return this;
  }
  insert(s) {
    if (s === "") return this;
    const ops = this.ops;
    const last = ops.length - 1;
    if (last >= 0 && isInsert(ops[last])) {
      ops[last] += s;
    } else if (last >= 0 && isDelete(ops[last])) {
      if (last >= 1 && isInsert(ops[last - 1])) ops[last - 1] += s;
      else ops.splice(last, 0, s);
    } else {
      ops.push(s);
    }
    return this;
  }
  delete(n) {
    if (n <= 0) return this;
    const last = this.ops.length - 1;
    if (last >= 0 && isDelete(this.ops[last])) this.ops[last] -= n;
    else this.ops.push(-n);
    return this;
  }
  done() {
    return this.ops;
  }
}

// ---------------------------------------------------------------------------
// Lengths and construction

/** Length of the document `op` applies to. */
export function baseLen(op) {
  let n = 0;
  for (const c of op) if (typeof c === "number") n += Math.abs(c);
  return n;
}

/** Length of the document `op` produces. */
export function targetLen(op) {
  let n = 0;
  for (const c of op) {
    if (isRetain(c)) n += c;
    else if (isInsert(c)) n += cpLen(c);
  }
  return n;
}

/** True when `op` changes nothing (it only retains). */
export function isNoop(op) {
  return op.every(isRetain);
}

/** The operation that keeps a document of `len` code points as it is. */
export function identity(len) {
  return len > 0 ? [len] : [];
}

/** Replace `len` code points at `pos` with `text` in a document of `docLen` code points. */
export function replaceRange(docLen, pos, len, text) {
  if (pos + len > docLen) {
    throw new OtError("out_of_range", `range ${pos}..${pos + len} is outside 0..${docLen}`);
  }
  return new Builder().retain(pos).insert(text).delete(len).retain(docLen - pos - len).done();
}

// ---------------------------------------------------------------------------
// Apply and invert

function checkBase(op, actual) {
  const expected = baseLen(op);
  if (expected !== actual) {
    throw new OtError(
      "length_mismatch",
      `the operation applies to ${expected} characters but the text has ${actual}`,
    );
  }
}

/** Apply `op` to `text`. */
export function apply(text, op) {
  checkBase(op, cpLen(text));
  const parts = [];
  let i = 0;
  for (const c of op) {
    if (isRetain(c)) {
      const j = advance(text, i, c);
      parts.push(text.slice(i, j));
      i = j;
    } else if (isInsert(c)) {
      parts.push(c);
    } else {
      i = advance(text, i, -c);
    }
  }
  return parts.join("");
}

/** The operation undoing `op` applied to `text`. */
export function invert(text, op) {
  checkBase(op, cpLen(text));
  const b = new Builder();
  let i = 0;
  for (const c of op) {
    if (isRetain(c)) {
      b.retain(c);
      i = advance(text, i, c);
    } else if (isInsert(c)) {
      b.delete(cpLen(c));
    } else {
      const j = advance(text, i, -c);
      b.insert(text.slice(i, j));
      i = j;
    }
  }
  return b.done();
}

// ---------------------------------------------------------------------------
// Compose and transform

const END = 0;
const RETAIN = 1;
const INSERT = 2;
const DELETE = 3;

class Cursor {
  constructor(ops) {
    this.ops = ops;
    this.i = -1;
    this.next();
  }
  next() {
    this.i++;
    if (this.i >= this.ops.length) {
      this.kind = END;
      this.len = 0;
      this.text = "";
      return;
    }
    const c = this.ops[this.i];
    if (isInsert(c)) {
      this.kind = INSERT;
      this.text = c;
      this.len = cpLen(c);
    } else if (c > 0) {
      this.kind = RETAIN;
      this.len = c;
    } else {
      this.kind = DELETE;
      this.len = -c;
    }
  }
  take(n) {
    this.len -= n;
    if (this.kind === INSERT) this.text = this.text.slice(advance(this.text, 0, n));
    if (this.len === 0) this.next();
  }
  takeText(n) {
    const j = advance(this.text, 0, n);
    const t = this.text.slice(0, j);
    this.text = this.text.slice(j);
    this.len -= n;
    if (this.len === 0) this.next();
    return t;
  }
}

/** The operation with the effect of `a` followed by `b`. */
export function compose(a, b) {
  const aTarget = targetLen(a);
  const bBase = baseLen(b);
  const mismatch = () =>
    new OtError("compose_mismatch", `the first produces ${aTarget} characters, the second applies to ${bBase}`);
  if (aTarget !== bBase) throw mismatch();
  const out = new Builder();
  const x = new Cursor(a);
  const y = new Cursor(b);
  for (;;) {
    if (x.kind === DELETE) {
      out.delete(x.len);
      x.next();
      continue;
    }
    if (y.kind === INSERT) {
      out.insert(y.text);
      y.next();
      continue;
    }
    if (x.kind === END && y.kind === END) break;
    if (x.kind === END || y.kind === END) throw mismatch();
    const n = Math.min(x.len, y.len);
    if (x.kind === RETAIN && y.kind === RETAIN) {
      out.retain(n);
      x.take(n);
    } else if (x.kind === INSERT && y.kind === RETAIN) {
      out.insert(x.takeText(n));
    } else if (x.kind === RETAIN && y.kind === DELETE) {
      out.delete(n);
      x.take(n);
    } else {
      // Inserted by the first and deleted by the second: nothing remains.
      x.takeText(n);
    }
    y.take(n);
  }
  return out.done();
}

/**
 * Transform concurrent `a` and `b` (same base) into `[a', b']` with
 * apply(apply(s, a), b') == apply(apply(s, b), a'). On inserts at the same
 * position `a`'s text comes first.
 */
export function transform(a, b) {
  const aBase = baseLen(a);
  const bBase = baseLen(b);
  const mismatch = () =>
    new OtError("transform_mismatch", `the operations apply to ${aBase} and ${bBase} characters`);
  if (aBase !== bBase) throw mismatch();
  const ap = new Builder();
  const bp = new Builder();
  const x = new Cursor(a);
  const y = new Cursor(b);
  for (;;) {
    if (x.kind === INSERT) {
      ap.insert(x.text);
      bp.retain(x.len);
      x.next();
      continue;
    }
    if (y.kind === INSERT) {
      ap.retain(y.len);
      bp.insert(y.text);
      y.next();
      continue;
    }
    if (x.kind === END && y.kind === END) break;
    if (x.kind === END || y.kind === END) throw mismatch();
    const n = Math.min(x.len, y.len);
    if (x.kind === RETAIN && y.kind === RETAIN) {
      ap.retain(n);
      bp.retain(n);
    } else if (x.kind === DELETE && y.kind === RETAIN) {
      ap.delete(n);
    } else if (x.kind === RETAIN && y.kind === DELETE) {
      bp.delete(n);
    } // both deleted the same text: neither deletes it again
    x.take(n);
    y.take(n);
  }
  return [ap.done(), bp.done()];
}

/**
 * Where a cursor at `pos` ends up after `op`: at an insert point it moves
 * after the inserted text; inside a deleted range it moves to where the range
 * was; past the end it is clamped to the end first.
 */
export function transformPosition(pos, op) {
  pos = Math.min(pos, baseLen(op));
  let remaining = pos;
  let newPos = pos;
  for (const c of op) {
    if (isRetain(c)) {
      if (c > remaining) break;
      remaining -= c;
    } else if (isInsert(c)) {
      newPos += cpLen(c);
    } else {
      const n = -c;
      newPos -= Math.min(remaining, n);
      if (n > remaining) break;
      remaining -= n;
    }
  }
  return newPos;
}

/** Map `[anchor, head]` ranges through `op`. */
export function transformRanges(ranges, op) {
  return ranges.map(([a, h]) => [transformPosition(a, op), transformPosition(h, op)]);
}

// ---------------------------------------------------------------------------
// JSON

// How a JSON number (a JavaScript number, as `JSON.parse` gives it) counts
// in an operation: `{uint}`, `{neg}` or `{float}`; null if `c` is not a number.
function classifyNumber(c) {
  if (typeof c !== "number") return null;
  if (Number.isInteger(c)) return c < 0 || Object.is(c, -0) ? { neg: c } : { uint: c };
  return { float: c };
}

/**
 * The canonical operation from a parsed JSON value, with ot-core's error
 * codes. `classify` reads a component that is not a string as a number
 * (`{uint}`, `{neg}`, `{float}`, or null if it is none); the default takes
 * JavaScript numbers. The conformance test passes one that reads numbers as
 * written (tests/js/json_exact.mjs).
 */
export function opFromJSON(value, classify = classifyNumber) {
  if (!Array.isArray(value)) {
    throw new OtError("not_an_array", "an operation is a JSON array");
  }
  const b = new Builder();
  let base = 0;
  value.forEach((c, index) => {
    if (typeof c === "string") {
      if (!isWellFormed(c)) throw new OtError("invalid_json", `component ${index} has a lone surrogate`);
      b.insert(c);
      return;
    }
    const n = classify(c);
    if (n) {
      const tooLarge = () => new OtError("too_large", `component ${index} is too large`);
      if ("float" in n) {
        const f = n.float;
        if (f === 0) throw new OtError("zero_length", `component ${index} is 0`);
        if (Number.isFinite(f) && Number.isInteger(f) && Math.abs(f) > MAX_SAFE_INTEGER) throw tooLarge();
        throw new OtError("not_an_integer", `component ${index} is not an integer`);
      }
      const v = "uint" in n ? n.uint : n.neg;
      if (v === 0) throw new OtError("zero_length", `component ${index} is 0`);
      const len = Math.abs(v);
      if (len > MAX_SAFE_INTEGER || base + len > MAX_SAFE_INTEGER) throw tooLarge();
      base += len;
      if (v > 0) b.retain(len);
      else b.delete(len);
      return;
    }
    throw new OtError("invalid_component", `component ${index} is not a number or a string`);
  });
  return b.done();
}

// ---------------------------------------------------------------------------
// Bounded operations (ot-core's split.rs)

/**
 * The server's default op limits (ot-core's `OpLimits::DEFAULT`): what a
 * client keeps to until a server has announced its own.
 */
export const DEFAULT_OP_LIMITS = Object.freeze({ max_op_len: 100000, max_op_components: 10000 });

/** The fewest components an edit in the middle of a text needs (`[retain, insert, retain]`). */
export const MIN_COMPONENTS = 3;

/** The op part of a first message's `limits` (defaults for fields a server does not announce). */
export function opLimits(limits) {
  const l = limits || {};
  const count = (v, d) => (Number.isSafeInteger(v) && v >= 0 ? v : d);
  return {
    max_op_len: count(l.max_op_len, DEFAULT_OP_LIMITS.max_op_len),
    max_op_components: count(l.max_op_components, DEFAULT_OP_LIMITS.max_op_components),
  };
}

/** Code points `op` inserts plus deletes (what `max_op_len` bounds). */
export function changeSize(op) {
  let n = 0;
  for (const c of op) {
    if (isInsert(c)) n += cpLen(c);
    else if (isDelete(c)) n -= c;
  }
  return n;
}

/** Whether `op` is within `limits` (change size and components). */
export function fits(op, limits) {
  return op.length <= limits.max_op_components && changeSize(op) <= limits.max_op_len;
}

/** The limits `split` cuts by: at least one code point and `MIN_COMPONENTS` components. */
export function effectiveLimits(limits) {
  return {
    max_op_len: Math.max(1, limits.max_op_len),
    max_op_components: Math.max(MIN_COMPONENTS, limits.max_op_components),
  };
}

/**
 * Split `op` into ops applied one after the other, each within `limits`
 * (raised to `effectiveLimits`), whose composition is exactly `op`. An op
 * that fits is returned as it is (a no-op too); an insert or delete longer
 * than `max_op_len` is itself cut. Piece k retains the final text the
 * earlier pieces produced, makes the next edits, and retains the rest.
 */
export function split(op, limits) {
  if (isNoop(op) || fits(op, limits)) return [op];
  const { max_op_len: maxLen, max_op_components: maxComps } = effectiveLimits(limits);
  const base = baseLen(op);
  const pieces = [];
  let doneTarget = 0; // final text before the current piece
  let doneBase = 0; // original text consumed before it
  const fresh = () => ({ b: new Builder(), size: 0, components: 0, baseAdvance: 0, targetAdvance: 0 });
  let piece = fresh();
  const addTo = (lead, gap, ins, del, chars) => {
    if (lead + gap > 0) {
      piece.b.retain(lead + gap);
      piece.components += 1;
    }
    piece.components += 1;
    piece.size += chars;
    piece.baseAdvance += gap;
    piece.targetAdvance += gap;
    if (ins !== null) {
      piece.b.insert(ins);
      piece.targetAdvance += chars;
    } else {
      piece.b.delete(del);
      piece.baseAdvance += del;
    }
  };
  // One insert (`ins`) or delete (`del`) of `chars` <= maxLen code points after `gap` retained ones.
  const add = (gap, ins, del, chars) => {
    const empty = piece.size === 0;
    const lead = empty ? doneTarget : 0;
    const cost = (lead + gap > 0 ? 1 : 0) + 1;
    const rest = base - (doneBase + piece.baseAdvance + gap + (ins === null ? del : 0));
    const trailing = rest > 0 ? 1 : 0;
    const ok = piece.size + chars <= maxLen && piece.components + cost + trailing <= maxComps;
    if (!empty && !ok) {
      piece.b.retain(base - doneBase - piece.baseAdvance);
      doneTarget += piece.targetAdvance;
      doneBase += piece.baseAdvance;
      pieces.push(piece.b.done());
      piece = fresh();
      addTo(doneTarget, gap, ins, del, chars);
      return;
    }
    addTo(lead, gap, ins, del, chars);
  };
  let gap = 0;
  for (const c of op) {
    if (isRetain(c)) {
      gap += c;
    } else if (isInsert(c)) {
      let i = 0;
      while (i < c.length) {
        const j = advance(c, i, maxLen);
        const chunk = c.slice(i, j);
        add(gap, chunk, 0, cpLen(chunk));
        gap = 0;
        i = j;
      }
    } else {
      let left = -c;
      while (left > 0) {
        const take = Math.min(left, maxLen);
        add(gap, null, take, take);
        gap = 0;
        left -= take;
      }
    }
  }
  if (piece.size > 0) {
    piece.b.retain(base - doneBase - piece.baseAdvance);
    pieces.push(piece.b.done());
  }
  return pieces;
}

// ---------------------------------------------------------------------------
// The client state machine (ot-core's client.rs)

/**
 * The client side of the protocol, without I/O: synchronized / awaiting ack /
 * awaiting ack with a queue. Unsent local edits are a queue of ops each
 * within the server's limits (`setLimits`): an edit composes into the last
 * queued op while that stays within them, otherwise it starts a new one (an
 * edit beyond them by itself is split); one op is sent per ack. An op gets
 * its seq when it leaves the queue to be sent and is never changed after
 * that: it is resent byte-for-byte (same seq, same base revision) after a
 * reconnect. The client's own ops are always `a` in transforms, like on the
 * server.
 *
 * Methods return plain objects; an op to send is `{seq, base_rev, op}`.
 */
export class Client {
  /** A synchronized client at `revision` with `text`; next seq `lastSeq + 1`. */
  constructor(clientId, revision, text, lastSeq) {
    this.clientId = clientId;
    this.nextSeq = lastSeq + 1;
    this.revision = revision;
    this.synced = text;
    this.text = text;
    this.outstanding = null; // {seq, base_rev, sent, current}
    this.queue = []; // unsent local edits, in order; never no-ops, empty while nothing is outstanding
    this.limits = DEFAULT_OP_LIMITS;
  }

  /**
   * Rebuild from a saved state (the field names of ot-core's `ClientState`).
   * A state saved before the queue has one composed `buffer`: it comes first.
   */
  static fromState(state) {
    const c = new Client(state.client_id, state.revision, state.synced_text, 0);
    c.nextSeq = Math.max(1, state.next_seq);
    const queue = [...(state.buffer ? [state.buffer] : []), ...(state.queue || [])].filter((op) => !isNoop(op));
    try {
      let text = state.synced_text;
      if (state.outstanding) text = apply(text, state.outstanding.current);
      if (queue.length > 0 && !state.outstanding) {
        throw new OtError("compose_mismatch", "queued edits without an outstanding op");
      }
      for (const op of queue) text = apply(text, op);
      c.text = text;
    } catch (e) {
      throw new OtError("corrupt_state", `the saved client state is inconsistent: ${e.message}`);
    }
    c.outstanding = state.outstanding ? { ...state.outstanding } : null;
    c.queue = queue;
    if (state.limits) c.limits = opLimits(state.limits);
    return c;
  }

  /** The state to persist (before sending an op, and after any change). */
  state() {
    const s = {
      client_id: this.clientId,
      next_seq: this.nextSeq,
      revision: this.revision,
      synced_text: this.synced,
      outstanding: this.outstanding ? { ...this.outstanding } : null,
    };
    if (this.queue.length > 0) s.queue = [...this.queue];
    s.limits = { ...this.limits };
    return s;
  }

  /**
   * The limits every op sent must fit (a first message's `limits`, through
   * `opLimits`). Call it on every first message: queued ops beyond new
   * limits are split again (the outstanding op keeps its seq and is resent
   * as it is). Returns whether the queue changed.
   */
  setLimits(limits) {
    this.limits = limits;
    if (this.queue.every((op) => fits(op, limits))) return false;
    this.queue = this.queue.flatMap((op) => split(op, limits));
    return true;
  }

  /** Nothing outstanding and nothing queued. */
  allSaved() {
    return this.outstanding === null && this.queue.length === 0;
  }

  /** Local ops not yet acknowledged: the outstanding one and the queued ones. */
  unacknowledged() {
    return (this.outstanding === null ? 0 : 1) + this.queue.length;
  }

  /** The outstanding op as it must be resent (same seq, base revision and op). */
  pendingResend() {
    const o = this.outstanding;
    return o ? { seq: o.seq, base_rev: o.base_rev, op: o.sent } : null;
  }

  /**
   * Apply a local edit; returns the op to send now, or null (queued or a
   * no-op). It composes into the last queued op while that stays within the
   * limits; otherwise it is queued (split if beyond them by itself).
   */
  localEdit(op) {
    let text;
    let composed = null;
    try {
      text = apply(this.text, op);
      if (isNoop(op)) return null;
      if (this.queue.length > 0) composed = compose(this.queue[this.queue.length - 1], op);
    } catch (e) {
      throw new OtError("local_op_does_not_fit", e.message);
    }
    this.text = text;
    if (composed !== null && fits(composed, this.limits)) {
      this.queue.pop();
      if (!isNoop(composed)) this.queue.push(composed);
    } else {
      this.queue.push(...split(op, this.limits));
    }
    return this.outstanding === null ? this.sendNext() : null;
  }

  /** Send the first queued op (split again if it no longer fits, e.g. after transforms). */
  sendNext() {
    while (this.queue.length > 0) {
      const op = this.queue.shift();
      if (isNoop(op)) continue;
      if (fits(op, this.limits)) return this.startSending(op);
      const [first, ...rest] = split(op, this.limits);
      this.queue.unshift(...rest);
      return this.startSending(first);
    }
    return null;
  }

  /** Give `op` (not a no-op) a seq and make it the outstanding op. */
  startSending(op) {
    const out = { seq: this.nextSeq, base_rev: this.revision, op };
    this.nextSeq += 1;
    this.outstanding = { seq: out.seq, base_rev: out.base_rev, sent: op, current: op };
    return out;
  }

  /** `ack` message: returns {acknowledged: bool, next: op to send or null}. */
  ack(rev, seq) {
    if (this.outstanding === null || this.outstanding.seq !== seq || rev <= this.revision) {
      return { acknowledged: false, next: null };
    }
    if (rev !== this.revision + 1) {
      throw new OtError("revision_gap", `expected revision ${this.revision + 1} but received ${rev}`);
    }
    return { acknowledged: true, next: this.acknowledge(rev) };
  }

  acknowledge(rev) {
    if (this.outstanding !== null) {
      try {
        this.synced = apply(this.synced, this.outstanding.current);
      } catch (e) {
        throw new OtError("corrupt_state", e.message);
      }
      this.outstanding = null;
    }
    this.revision = rev;
    return this.sendNext();
  }

  /**
   * A server `op` message. Returns `{ignored: true}`, `{applied: op}` (apply
   * it to the view and cursors) or `{acknowledged: true, next}` (own op).
   */
  remoteOp(rev, op, clientId, seq) {
    if (rev <= this.revision) return { ignored: true };
    if (rev !== this.revision + 1) {
      throw new OtError("revision_gap", `expected revision ${this.revision + 1} but received ${rev}`);
    }
    if (clientId === this.clientId && this.outstanding !== null && this.outstanding.seq === seq) {
      return { acknowledged: true, next: this.acknowledge(rev) };
    }
    const syncedLen = cpLen(this.synced);
    if (baseLen(op) !== syncedLen) {
      throw new OtError("op_does_not_fit", "the server's operation does not fit the document");
    }
    let current = null;
    let r = op;
    const queue = [];
    let synced;
    let text;
    try {
      if (this.outstanding !== null) [current, r] = transform(this.outstanding.current, op);
      for (const q of this.queue) {
        let q2;
        [q2, r] = transform(q, r);
        // An edit the remote op undid entirely (both deleted it) is gone.
        if (!isNoop(q2)) queue.push(q2);
      }
      synced = apply(this.synced, op);
    } catch (e) {
      throw new OtError("op_does_not_fit", e.message);
    }
    try {
      text = apply(this.text, r);
    } catch (e) {
      throw new OtError("corrupt_state", e.message);
    }
    this.synced = synced;
    this.text = text;
    if (this.outstanding !== null) this.outstanding = { ...this.outstanding, current };
    this.queue = queue;
    this.revision = rev;
    return { applied: r };
  }

  /** The server resumed at `rev` (must be ours); returns the op to resend or null. */
  resumed(rev, lastSeq) {
    if (rev !== this.revision) {
      throw new OtError("resume_mismatch", `the server resumed at revision ${rev} but the client is at ${this.revision}`);
    }
    if (lastSeq >= this.nextSeq) {
      throw new OtError("stale_state", `the server has applied seq ${lastSeq} but the next seq is ${this.nextSeq}`);
    }
    const o = this.outstanding;
    return o !== null && lastSeq < o.seq ? this.pendingResend() : null;
  }

  /**
   * A fresh snapshot: rebase pending edits when provably safe (the
   * outstanding op was applied and the snapshot is exactly its result: the
   * queue follows; or it was not applied and the snapshot is exactly its
   * base: it is queued again first, with a new seq), otherwise return the
   * local text as `conflictCopy`. Returns `{conflictCopy, send}`.
   */
  snapshot(rev, text, lastSeq) {
    const localText = this.text;
    const oldSynced = this.synced;
    this.synced = text;
    this.text = text;
    this.revision = rev;
    this.nextSeq = lastSeq + 1;
    const o = this.outstanding;
    const queue = this.queue.filter((op) => !isNoop(op));
    this.outstanding = null;
    this.queue = [];
    const outcome = { conflictCopy: null, send: null };
    if (o === null) return outcome;
    let plan; // "clean" | [ops] | "conflict"
    if (lastSeq === o.seq) {
      if (queue.length === 0) plan = "clean";
      else {
        let after = null;
        try {
          after = apply(oldSynced, o.current);
        } catch {
          after = null;
        }
        plan = after === text ? queue : "conflict";
      }
    } else if (lastSeq < o.seq && oldSynced === text) {
      plan = isNoop(o.current) ? queue : [o.current, ...queue];
    } else {
      plan = "conflict";
    }
    if (plan === "clean") return outcome;
    if (plan !== "conflict") {
      try {
        let rebased = this.text;
        for (const op of plan) rebased = apply(rebased, op);
        this.text = rebased;
        this.queue = plan;
        outcome.send = this.sendNext();
        return outcome;
      } catch {
        this.text = this.synced;
      }
    }
    if (localText !== text) outcome.conflictCopy = localText;
    return outcome;
  }

  /** Map another client's ranges (at the client's revision) into the local text. */
  transformRemoteRanges(ranges) {
    let r = ranges;
    if (this.outstanding !== null) r = transformRanges(r, this.outstanding.current);
    for (const q of this.queue) r = transformRanges(r, q);
    return r;
  }
}
