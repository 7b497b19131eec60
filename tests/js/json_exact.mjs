// A strict JSON parser with serde_json's rules, for the conformance runner
// (conformance.mjs) only: numbers are kept as written so that `2.0`, `-0`,
// `1e3` and integers beyond 2^53 are read the way ot-core reads them. The
// page itself reads server frames with JSON.parse (server/web/session.js).
import { MAX_SAFE_INTEGER, OtError, isWellFormed, opFromJSON } from "../../server/web/ot.js";

/**
 * A JSON number kept as written (`2.0`, `-0`, `1e3`), for parsers that must
 * tell how a number is written: see `parseJSONExact`.
 */
export class JsonNumber {
  constructor(text) {
    this.text = text;
  }
}

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);

/**
 * How serde_json (ot-core's parser) reads a number: an unsigned integer, a
 * negative integer, or a float (the `classify` argument of ot.js's `opFromJSON`).
 */
export function classifyExact(c) {
  if (typeof c === "number") {
    if (Number.isInteger(c)) return c < 0 || Object.is(c, -0) ? { neg: c } : { uint: c };
    return { float: c };
  }
  if (!(c instanceof JsonNumber)) return null;
  const text = c.text;
  if (/^-?(0|[1-9][0-9]*)$/.test(text)) {
    const big = BigInt(text);
    if (!text.startsWith("-")) {
      if (big <= U64_MAX) return { uint: big > BigInt(MAX_SAFE_INTEGER) ? Infinity : Number(big) };
    } else if (big !== 0n && big >= I64_MIN) {
      return { neg: big < -BigInt(MAX_SAFE_INTEGER) ? -Infinity : Number(big) };
    }
  }
  return { float: Number(text) };
}

/** The canonical operation from a value of `parseJSONExact`. */
export function opFromExactJSON(value) {
  return opFromJSON(value, classifyExact);
}

/** Parse the ot.js JSON text form (strictly, like ot-core). */
export function parseOp(text) {
  let value;
  try {
    value = parseJSONExact(text);
  } catch (e) {
    throw new OtError("invalid_json", e.message);
  }
  return opFromExactJSON(value);
}

/**
 * A strict JSON parser with serde_json's rules: numbers come back as
 * `JsonNumber`s (their text kept), lone surrogate escapes and nesting deeper
 * than 127 are syntax errors, later duplicate keys win. Throws `SyntaxError`.
 */
export function parseJSONExact(text) {
  let i = 0;
  let depth = 128;
  const fail = (what) => {
    throw new SyntaxError(`${what} at ${i}`);
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const str = () => {
    i++; // opening quote
    let out = "";
    let start = i;
    for (;;) {
      if (i >= text.length) fail("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(start, i);
        i++;
        break;
      }
      if (c < 0x20) fail("control character in string");
      if (c === 0x5c) {
        out += text.slice(start, i);
        i++;
        const e = text[i++];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e in simple) {
          out += simple[e];
        } else if (e === "u") {
          const hex = () => {
            const h = text.slice(i, i + 4);
            if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("bad \\u escape");
            i += 4;
            return parseInt(h, 16);
          };
          const u = hex();
          if (u >= 0xd800 && u <= 0xdbff) {
            if (text[i] !== "\\" || text[i + 1] !== "u") fail("lone surrogate");
            i += 2;
            const v = hex();
            if (v < 0xdc00 || v > 0xdfff) fail("lone surrogate");
            out += String.fromCharCode(u, v);
          } else if (u >= 0xdc00 && u <= 0xdfff) {
            fail("lone surrogate");
          } else {
            out += String.fromCharCode(u);
          }
        } else {
          fail("bad escape");
        }
        start = i;
      } else {
        i++;
      }
    }
    if (!isWellFormed(out)) fail("lone surrogate");
    return out;
  };
  const num = () => {
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 1100));
    if (!m || m[0] === "-") fail("bad number");
    i += m[0].length;
    if (!Number.isFinite(Number(m[0]))) fail("number out of range");
    return new JsonNumber(m[0]);
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{" || c === "[") {
      if (--depth === 0) fail("recursion limit exceeded");
      i++;
      ws();
      let result;
      if (c === "[") {
        result = [];
        if (text[i] === "]") i++;
        else {
          for (;;) {
            result.push(value());
            ws();
            if (text[i] === ",") i++;
            else if (text[i] === "]") {
              i++;
              break;
            } else fail("expected , or ]");
          }
        }
      } else {
        result = {};
        if (text[i] === "}") i++;
        else {
          for (;;) {
            ws();
            if (text[i] !== '"') fail("expected a key");
            const k = str();
            ws();
            if (text[i] !== ":") fail("expected :");
            i++;
            const v = value();
            Object.defineProperty(result, k, { value: v, enumerable: true, writable: true, configurable: true });
            ws();
            if (text[i] === ",") i++;
            else if (text[i] === "}") {
              i++;
              break;
            } else fail("expected , or }");
          }
        }
      }
      depth++;
      return result;
    }
    if (c === '"') return str();
    if (c === "-" || (c >= "0" && c <= "9")) return num();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    return fail("expected a value");
  };
  const result = value();
  ws();
  if (i !== text.length) fail("trailing characters");
  return result;
}
