//! A JSON-lines conformance runner: one test case per line in, one result per
//! line out, so that other implementations of the same algebra (a browser
//! client, a port in another language) can be checked against the same
//! vectors (`tests/vectors/conformance.jsonl`).
//!
//! This module is the pure logic; `examples/conformance.rs` is the stdin to
//! stdout wrapper (`cargo run -p ot-core --example conformance < cases.jsonl`).
//! The format is specified in full in the crate's `README.md`; in short:
//!
//! | `fn` | fields (checked in this order) | `ok` value |
//! |---|---|---|
//! | `apply` | `doc` (string), `op` | the new text |
//! | `compose` | `a`, `b` | the composed operation |
//! | `invert` | `doc` (string), `op` | the inverse operation |
//! | `transform` | `a`, `b` | `[a', b']` |
//! | `transform_position` | `pos` (integer), `op` | the new position |
//! | `parse` | `json` (string: the operation's JSON *text*) | the canonical operation |
//! | `replace_range` | `doc_len`, `pos`, `len` (integers), `text` (string) | the operation |
//!
//! A result is `{"ok": value}` or `{"error": code}`. The codes are those of
//! [`OtError::code`](crate::OtError::code) and
//! [`OpJsonError::code`](crate::OpJsonError::code), plus two case-level codes:
//! [`INVALID_CASE`] and [`UNKNOWN_FN`].

use serde_json::{Map, Value};

use crate::{Operation, MAX_SAFE_INTEGER};

/// Case-level error: the line is not a JSON object, `fn` is missing or not a
/// string, or a required non-operation field is missing or of the wrong type.
pub const INVALID_CASE: &str = "invalid_case";

/// Case-level error: `fn` is a string but not one of [`FNS`].
pub const UNKNOWN_FN: &str = "unknown_fn";

/// The functions the runner understands.
pub const FNS: &[&str] = &[
    "apply",
    "compose",
    "invert",
    "transform",
    "transform_position",
    "parse",
    "replace_range",
];

/// Run one case (an already parsed JSON value) and return `{"ok": …}` or
/// `{"error": "<code>"}`.
pub fn run_case(case: &Value) -> Value {
    let mut out = Map::new();
    match eval(case) {
        Ok(value) => out.insert("ok".to_owned(), value),
        Err(code) => out.insert("error".to_owned(), Value::from(code)),
    };
    Value::Object(out)
}

/// Run one line of a JSON-lines file and return the result line (without a
/// trailing newline). A blank (whitespace-only) line gives an empty string,
/// so output lines stay aligned with input lines; a line that is not JSON
/// gives `{"error":"invalid_case"}`.
pub fn run_line(line: &str) -> String {
    if line.trim().is_empty() {
        return String::new();
    }
    let result = match serde_json::from_str::<Value>(line) {
        Ok(case) => run_case(&case),
        Err(_) => run_case(&Value::Null),
    };
    result.to_string()
}

type Outcome<T> = Result<T, &'static str>;

fn eval(case: &Value) -> Outcome<Value> {
    let fields = case.as_object().ok_or(INVALID_CASE)?;
    let name = fields
        .get("fn")
        .and_then(Value::as_str)
        .ok_or(INVALID_CASE)?;
    match name {
        "apply" => {
            let doc = string_field(fields, "doc")?;
            let op = op_field(fields, "op")?;
            let text = op.apply(doc).map_err(|e| e.code())?;
            Ok(Value::String(text))
        }
        "compose" => {
            let a = op_field(fields, "a")?;
            let b = op_field(fields, "b")?;
            let ab = a.compose(&b).map_err(|e| e.code())?;
            Ok(ab.to_json_value())
        }
        "invert" => {
            let doc = string_field(fields, "doc")?;
            let op = op_field(fields, "op")?;
            let inverse = op.invert(doc).map_err(|e| e.code())?;
            Ok(inverse.to_json_value())
        }
        "transform" => {
            let a = op_field(fields, "a")?;
            let b = op_field(fields, "b")?;
            let (a2, b2) = a.transform(&b).map_err(|e| e.code())?;
            Ok(Value::Array(vec![a2.to_json_value(), b2.to_json_value()]))
        }
        "transform_position" => {
            let pos = integer_field(fields, "pos")?;
            let op = op_field(fields, "op")?;
            Ok(Value::from(op.transform_position(pos) as u64))
        }
        "parse" => {
            let text = string_field(fields, "json")?;
            let op = Operation::from_json(text).map_err(|e| e.code())?;
            Ok(op.to_json_value())
        }
        "replace_range" => {
            let doc_len = integer_field(fields, "doc_len")?;
            let pos = integer_field(fields, "pos")?;
            let len = integer_field(fields, "len")?;
            let text = string_field(fields, "text")?;
            let op = Operation::replace_range(doc_len, pos, len, text).map_err(|e| e.code())?;
            Ok(op.to_json_value())
        }
        _ => Err(UNKNOWN_FN),
    }
}

/// A required string field.
fn string_field<'a>(fields: &'a Map<String, Value>, name: &str) -> Outcome<&'a str> {
    fields.get(name).and_then(Value::as_str).ok_or(INVALID_CASE)
}

/// A required integer field in `0..=2^53-1` (written without fraction or exponent).
fn integer_field(fields: &Map<String, Value>, name: &str) -> Outcome<usize> {
    fields
        .get(name)
        .and_then(Value::as_u64)
        .filter(|&n| n <= MAX_SAFE_INTEGER)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(INVALID_CASE)
}

/// A required operation field: missing is a case error; any present value is
/// read as an operation, so its problems get the operation's own error codes.
fn op_field(fields: &Map<String, Value>, name: &str) -> Outcome<Operation> {
    let value = fields.get(name).ok_or(INVALID_CASE)?;
    Operation::from_json_value(value).map_err(|e| e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke() {
        assert_eq!(
            run_line(r#"{"fn":"apply","doc":"abc","op":[1,"X",-1,1]}"#),
            r#"{"ok":"aXc"}"#
        );
        assert_eq!(run_line("nope"), r#"{"error":"invalid_case"}"#);
        assert_eq!(run_line(r#"{"fn":"nope"}"#), r#"{"error":"unknown_fn"}"#);
        assert_eq!(run_line("  "), "");
    }
}
