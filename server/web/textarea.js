// The <textarea> as the protocol sees it: the textarea counts UTF-16 code
// units, the protocol code points. Finds the op a local `input` event made
// (only the changed region is compared for ordinary typing, deleting and
// pasting; region edges never split a surrogate pair; a lone surrogate
// becomes U+FFFD) and applies remote ops in place with the local selection
// mapped through them (the ot.js cursor rule).
import { advance, cpLen, replaceRange, transformPosition, wellFormed } from "./ot.js";

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

/**
 * The changed region between `old` and `now` as [start, oldEnd, newEnd]
 * (UTF-16 indices), or null if nothing changed. `hint` is the selection
 * before the edit and its input type (`beforeinput`); `selStart`/`caret` the
 * selection after it.
 */
export function changedRegion(old, now, hint, selStart, caret) {
  let start;
  let suffix;
  if (hint && SIMPLE_INPUTS.has(hint.type)) {
    // The edit replaced the old selection (or the characters next to it) and
    // left the caret after the new text: only that region is compared.
    start = Math.min(hint.start, selStart, caret);
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

/** A textarea and the text it shows (`shown`, always the client's text). */
export class TextareaBinding {
  constructor(textarea) {
    this.textarea = textarea;
    this.shown = ""; // what the textarea shows (UTF-16)
    this.cpCount = 0; // code points in `shown`
  }

  // True when the text has no astral characters, so both counts agree.
  bmpOnly() {
    return this.shown.length === this.cpCount;
  }

  toCp(i) {
    return this.bmpOnly() ? i : cpLen(this.shown.slice(0, i));
  }

  toUtf16(cp) {
    return this.bmpOnly() ? Math.min(cp, this.shown.length) : advance(this.shown, 0, cp);
  }

  setShown(text) {
    this.shown = text;
    this.cpCount = cpLen(text);
  }

  /** Show `text` (replacing what the textarea shows if it differs). */
  show(text) {
    if (text === this.shown && this.textarea.value === text) return;
    this.setShown(text);
    this.textarea.value = this.shown;
  }

  /** The local selection as [[anchor, head]] in code points. */
  localRanges() {
    const t = this.textarea;
    const backward = t.selectionDirection === "backward";
    const a = this.toCp(backward ? t.selectionEnd : t.selectionStart);
    const h = this.toCp(backward ? t.selectionStart : t.selectionEnd);
    return [[a, h]];
  }

  /**
   * The edit the textarea shows now, compared with `shown`: `{op, ...}` (code
   * points) to give to the client, then to `accepted`; null if nothing changed.
   */
  readEdit(hint) {
    const now = this.textarea.value;
    const region = changedRegion(this.shown, now, hint, this.textarea.selectionStart, this.textarea.selectionEnd);
    if (!region) return null;
    const [start, oldEnd] = region;
    const rawInserted = now.slice(start, region[2]);
    const inserted = wellFormed(rawInserted);
    const pos = this.toCp(start);
    const deleted = cpLen(this.shown.slice(start, oldEnd));
    const op = replaceRange(this.cpCount, pos, deleted, inserted);
    return { op, now, start, oldEnd, rawInserted, inserted, deleted };
  }

  /** After the client took `edit`: `shown` becomes `clientText` (correcting the textarea if a lone surrogate was replaced). */
  accepted(edit, clientText) {
    const { now, start, oldEnd, rawInserted, inserted, deleted } = edit;
    const t = this.textarea;
    if (inserted !== rawInserted || clientText !== this.shown.slice(0, start) + inserted + this.shown.slice(oldEnd)) {
      // A lone surrogate became U+FFFD: show exactly the client's text.
      const sel = [t.selectionStart, t.selectionEnd];
      this.setShown(clientText);
      t.value = this.shown;
      t.setSelectionRange(Math.min(sel[0], this.shown.length), Math.min(sel[1], this.shown.length));
    } else {
      this.shown = now;
      this.cpCount = this.cpCount - deleted + cpLen(inserted);
    }
  }

  /** Apply `op` (code points, based on `shown`) to the textarea, keeping the selection. */
  applyRemote(op) {
    const t = this.textarea;
    const selStart = this.toCp(t.selectionStart);
    const selEnd = this.toCp(t.selectionEnd);
    const dir = t.selectionDirection;
    const scrollTop = t.scrollTop;
    // Collect the edits in UTF-16 indices of the old text, then apply from the end.
    const edits = [];
    let u = 0;
    for (const c of op) {
      if (typeof c === "string") {
        edits.push([u, u, c]);
      } else if (c > 0) {
        u = this.bmpOnly() ? u + c : advance(this.shown, u, c);
      } else {
        const end = this.bmpOnly() ? u - c : advance(this.shown, u, -c);
        edits.push([u, end, ""]);
        u = end;
      }
    }
    let text = this.shown;
    for (let i = edits.length - 1; i >= 0; i--) {
      const [s, e, ins] = edits[i];
      text = text.slice(0, s) + ins + text.slice(e);
      t.setRangeText(ins, s, e, "preserve");
    }
    this.setShown(text);
    if (t.value !== this.shown) t.value = this.shown;
    const a = this.toUtf16(transformPosition(selStart, op));
    const b = this.toUtf16(transformPosition(selEnd, op));
    t.setSelectionRange(a, b, dir);
    t.scrollTop = scrollTop;
  }

  /** "line:column" (from 1, columns in code points) of code point `cp`. */
  lineCol(cp) {
    const before = this.shown.slice(0, this.toUtf16(cp));
    const line = before.split("\n").length;
    const col = cpLen(before.slice(before.lastIndexOf("\n") + 1)) + 1;
    return `${line}:${col}`;
  }
}
