// ot-core's JSON-lines conformance runner (ot-core/README.md), in JavaScript
// on top of the browser editor's ot.js: one case per input line, one result
// line out. Usage: node tests/js/conformance.mjs < cases.jsonl > results.jsonl
import { createInterface } from "node:readline";
import {
  MAX_SAFE_INTEGER,
  OtError,
  apply,
  compose,
  invert,
  replaceRange,
  transform,
  transformPosition,
} from "../../server/web/ot.js";
import { JsonNumber, opFromExactJSON, parseJSONExact, parseOp } from "./json_exact.mjs";

class CaseError extends Error {
  constructor(code) {
    super(code);
    this.code = code;
  }
}

const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

function stringField(c, name) {
  if (!has(c, name) || typeof c[name] !== "string") throw new CaseError("invalid_case");
  return c[name];
}

function integerField(c, name) {
  const v = has(c, name) ? c[name] : undefined;
  if (!(v instanceof JsonNumber) || !/^(0|[1-9][0-9]*)$/.test(v.text)) throw new CaseError("invalid_case");
  const n = BigInt(v.text);
  if (n > BigInt(MAX_SAFE_INTEGER)) throw new CaseError("invalid_case");
  return Number(n);
}

function opField(c, name) {
  if (!has(c, name)) throw new CaseError("invalid_case");
  return opFromExactJSON(c[name]);
}

function evalCase(c) {
  if (c === null || typeof c !== "object" || Array.isArray(c) || c instanceof JsonNumber) {
    throw new CaseError("invalid_case");
  }
  if (!has(c, "fn") || typeof c.fn !== "string") throw new CaseError("invalid_case");
  switch (c.fn) {
    case "apply": {
      const doc = stringField(c, "doc");
      return apply(doc, opField(c, "op"));
    }
    case "compose": {
      const a = opField(c, "a");
      return compose(a, opField(c, "b"));
    }
    case "invert": {
      const doc = stringField(c, "doc");
      return invert(doc, opField(c, "op"));
    }
    case "transform": {
      const a = opField(c, "a");
      return transform(a, opField(c, "b"));
    }
    case "transform_position": {
      const pos = integerField(c, "pos");
      return transformPosition(pos, opField(c, "op"));
    }
    case "parse":
      return parseOp(stringField(c, "json"));
    case "replace_range": {
      const docLen = integerField(c, "doc_len");
      const pos = integerField(c, "pos");
      const len = integerField(c, "len");
      const text = stringField(c, "text");
      return replaceRange(docLen, pos, len, text);
    }
    default:
      throw new CaseError("unknown_fn");
  }
}

/** One input line → one output line (without the newline). */
export function runLine(line) {
  if (line.trim() === "") return "";
  let c;
  try {
    c = parseJSONExact(line);
  } catch {
    c = null;
  }
  try {
    return JSON.stringify({ ok: evalCase(c) });
  } catch (e) {
    if (e instanceof CaseError || e instanceof OtError) return JSON.stringify({ error: e.code });
    throw e;
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  const out = [];
  for await (const line of rl) out.push(runLine(line));
  process.stdout.write(out.map((l) => l + "\n").join(""));
}
