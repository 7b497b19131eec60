//! Runs the hand-checked vectors in `tests/vectors/conformance.jsonl` through
//! the conformance runner, checks that they cover every function and every
//! error code, and drives the compiled `conformance` example as a subprocess.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ot_core::conformance::{run_case, run_line, FNS, INVALID_CASE, UNKNOWN_FN};
use serde_json::{json, Value};

const VECTORS: &str = include_str!("vectors/conformance.jsonl");

/// Every error code the runner can produce (from `error.rs` and the runner's
/// two case-level codes). The vectors must exercise each of them.
const ALL_CODES: &[&str] = &[
    "length_mismatch",
    "compose_mismatch",
    "transform_mismatch",
    "out_of_range",
    "invalid_json",
    "not_an_array",
    "zero_length",
    "not_an_integer",
    "too_large",
    "invalid_component",
    INVALID_CASE,
    UNKNOWN_FN,
];

struct Vector {
    line_no: usize,
    /// The input line to feed to the runner.
    input: String,
    /// The case object, when the vector gives one (not for raw `line` vectors).
    case: Option<Value>,
    expect: Value,
}

fn vectors() -> Vec<Vector> {
    VECTORS
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("vectors line {}: not JSON: {e}", i + 1));
            let expect = v
                .get("expect")
                .cloned()
                .unwrap_or_else(|| panic!("vectors line {}: no expect", i + 1));
            let (input, case) = match (v.get("case"), v.get("line")) {
                (Some(case), None) => (case.to_string(), Some(case.clone())),
                (None, Some(Value::String(line))) => (line.clone(), None),
                _ => panic!("vectors line {}: needs exactly one of case / line", i + 1),
            };
            Vector {
                line_no: i + 1,
                input,
                case,
                expect,
            }
        })
        .collect()
}

#[test]
fn vectors_pass() {
    let vectors = vectors();
    assert!(vectors.len() >= 50, "suspiciously few vectors");
    let mut failures = Vec::new();
    for v in &vectors {
        let out = run_line(&v.input);
        assert!(!out.contains('\n'), "output must be one line: {out:?}");
        let got: Value = serde_json::from_str(&out).unwrap();
        if got != v.expect {
            failures.push(format!(
                "line {}: {}\n  expected {}\n  got      {}",
                v.line_no, v.input, v.expect, got
            ));
        }
        if let Some(case) = &v.case {
            assert_eq!(run_case(case), got, "run_case and run_line differ");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn vectors_cover_every_fn_and_error_code() {
    let vectors = vectors();
    let fns: BTreeSet<&str> = vectors
        .iter()
        .filter_map(|v| v.case.as_ref()?.get("fn")?.as_str())
        .collect();
    let codes: BTreeSet<&str> = vectors
        .iter()
        .filter_map(|v| v.expect.get("error")?.as_str())
        .collect();
    for f in FNS {
        assert!(fns.contains(f), "no vector for fn {f}");
        let ok = vectors.iter().any(|v| {
            v.expect.get("ok").is_some()
                && v.case.as_ref().and_then(|c| c.get("fn")) == Some(&json!(f))
        });
        assert!(ok, "no successful vector for fn {f}");
    }
    for code in ALL_CODES {
        assert!(codes.contains(code), "no vector for error code {code}");
    }
    for code in &codes {
        assert!(
            ALL_CODES.contains(code),
            "vector expects unknown code {code}"
        );
    }
}

/// The vectors that expect an operation expect it in canonical form: parsing
/// and re-serialising it changes nothing.
#[test]
fn expected_operations_are_canonical() {
    for v in vectors() {
        let Some(case) = &v.case else { continue };
        let Some(ok) = v.expect.get("ok") else {
            continue;
        };
        let ops: Vec<&Value> = match case["fn"].as_str() {
            Some("compose" | "invert" | "parse" | "replace_range") => vec![ok],
            Some("transform") => ok.as_array().unwrap().iter().collect(),
            _ => vec![],
        };
        for op in ops {
            let parsed = ot_core::Operation::from_json_value(op).unwrap();
            assert_eq!(&parsed.to_json_value(), op, "line {}", v.line_no);
        }
    }
}

#[test]
fn blank_and_odd_lines() {
    assert_eq!(run_line(""), "");
    assert_eq!(run_line("  \t\r"), "");
    assert_eq!(run_line("{}"), r#"{"error":"invalid_case"}"#);
    assert_eq!(run_line("null"), r#"{"error":"invalid_case"}"#);
    assert_eq!(run_line("\"apply\""), r#"{"error":"invalid_case"}"#);
    // A CRLF line ending is just trailing whitespace.
    assert_eq!(
        run_line("{\"fn\":\"apply\",\"doc\":\"a\",\"op\":[1,\"b\"]}\r"),
        r#"{"ok":"ab"}"#
    );
    // Non-ASCII output is written as UTF-8, not escaped.
    assert_eq!(
        run_line(r#"{"fn":"apply","doc":"","op":["🙂"]}"#),
        r#"{"ok":"🙂"}"#
    );
}

/// `cargo test` builds the examples of the package into `target/<profile>/examples`
/// next to `target/<profile>/deps`, where this test binary lives. Cargo does not
/// pass example paths to tests (`CARGO_BIN_EXE_*` is only for binaries), so look
/// for it there.
fn example_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let path = profile_dir
        .join("examples")
        .join(format!("conformance{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

#[test]
fn example_binary_runs_vectors_line_by_line() {
    let Some(binary) = example_binary() else {
        // Only when examples were not built (e.g. `cargo test --test conformance`).
        eprintln!("SKIPPED: examples/conformance not built; run `cargo test -p ot-core`");
        return;
    };
    let vectors = vectors();
    let mut input: String = vectors.iter().map(|v| v.input.clone() + "\n").collect();
    // A blank line, a CRLF line and invalid UTF-8 at the end.
    input.push('\n');
    input.push_str("{\"fn\":\"apply\",\"doc\":\"\",\"op\":[\"x\"]}\r\n");
    let mut bytes = input.into_bytes();
    bytes.extend_from_slice(b"\xff\xfe\n");

    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        vectors.len() + 3,
        "one output line per input line"
    );
    for (v, out) in vectors.iter().zip(&lines) {
        let got: Value = serde_json::from_str(out).unwrap();
        assert_eq!(got, v.expect, "line {}: {}", v.line_no, v.input);
    }
    let tail = &lines[vectors.len()..];
    assert_eq!(
        tail,
        &["", r#"{"ok":"x"}"#, r#"{"error":"invalid_case"}"#][..]
    );
}
