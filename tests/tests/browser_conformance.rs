//! The browser editor's OT (`server/web/ot.js`) against ot-core, through
//! ot-core's JSON-lines conformance format: random cases (Unicode with emoji,
//! combining marks and CRLF; non-canonical and invalid operations; malformed
//! lines) run in-process through `ot_core::conformance::run_line` and in Node
//! through `tests/js/conformance.mjs`, compared line by line; plus the
//! hand-checked vectors and the JavaScript tests (`node --test tests/js/`): the
//! client state machine's own tests, and the page's message handler against
//! the protocol fixture (`protocol/fixtures/protocol.json`).
//!
//! Needs `node` (v18+); skipped with a message if it is not installed.
//! `OT_JS_SEED=<n>` picks another seed, `OT_JS_CASES=<n>` the number of cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ot_core::conformance::run_line;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `node` can run; prints why the test is skipped if not.
fn have_node() -> bool {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED: `node` is not installed, so the browser editor's JavaScript was not \
                 checked (install Node.js 18 or later, e.g. `apt-get install nodejs`)"
            );
            false
        }
    }
}

/// Run `lines` through the JavaScript runner; one output line per input line.
fn run_js(lines: &[String]) -> Vec<String> {
    let script = workspace().join("tests/js/conformance.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting node");
    let mut input = lines.join("\n");
    input.push('\n');
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("node output");
    writer
        .join()
        .expect("writer thread")
        .expect("writing cases");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let results: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(results.len(), lines.len(), "one output line per input line");
    results
}

/// Compare both implementations on `lines`; panics listing the first differences.
fn compare(lines: &[String]) -> usize {
    let js = run_js(lines);
    let mut bad = Vec::new();
    for (line, js_out) in lines.iter().zip(&js) {
        let rust_out = run_line(line);
        let same = if rust_out.is_empty() || js_out.is_empty() {
            rust_out == *js_out
        } else {
            let r: Value = serde_json::from_str(&rust_out).expect("rust output is JSON");
            let j: Result<Value, _> = serde_json::from_str(js_out);
            j.map(|j| j == r).unwrap_or(false)
        };
        if !same {
            bad.push(format!(
                "  case: {line}\n  ot-core: {rust_out}\n  ot.js:   {js_out}"
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases differ; the first:\n{}",
        bad.len(),
        lines.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    lines.len()
}

// ---------------------------------------------------------------------------
// Random cases

/// Pieces of text: ASCII, Latin-1, CJK, emoji (astral, with modifiers and
/// ZWJ), combining marks, CRLF, quotes and escapes, the last code point.
const PIECES: &[&str] = &[
    "a",
    "b",
    "c",
    " ",
    "é",
    "e\u{301}",
    "\u{301}",
    "漢",
    "字",
    "🙂",
    "👍🏽",
    "👩\u{200d}💻",
    "🇫🇷",
    "\r\n",
    "\n",
    "\t",
    "\"",
    "\\",
    "\u{0}",
    "\u{fffd}",
    "\u{10ffff}",
    "\u{feff}",
    "ab",
    "xyz",
];

fn text(rng: &mut ChaCha8Rng, max_pieces: usize) -> String {
    let n = rng.random_range(0..=max_pieces);
    (0..n)
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

/// A random operation (as a JSON value, often non-canonical) on a document of `len` chars.
fn op_value(rng: &mut ChaCha8Rng, len: usize) -> Value {
    let mut items = Vec::new();
    let mut left = len;
    while left > 0 || rng.random_bool(0.3) {
        match rng.random_range(0..10) {
            0..=3 if left > 0 => {
                let n = rng.random_range(1..=left);
                items.push(json!(n));
                left -= n;
            }
            4..=6 => items.push(json!(text(rng, 3))),
            7..=8 if left > 0 => {
                let n = rng.random_range(1..=left);
                items.push(json!(-(n as i64)));
                left -= n;
            }
            _ if left == 0 => break,
            _ => {}
        }
    }
    Value::Array(items)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn target_len(op: &Value, base: usize) -> usize {
    let op = ot_core::Operation::from_json_value(op).expect("generated op is valid");
    assert_eq!(op.base_len(), base);
    op.target_len()
}

/// Sometimes an operation for another length (a mismatch).
fn maybe_wrong_len(rng: &mut ChaCha8Rng, len: usize) -> usize {
    if rng.random_bool(0.1) {
        len + rng.random_range(1..3)
    } else if len > 0 && rng.random_bool(0.05) {
        len - 1
    } else {
        len
    }
}

/// Number literals whose meaning depends on how they are written.
const NUMBER_LITERALS: &[&str] = &[
    "0",
    "-0",
    "0.0",
    "-0.0",
    "1.5",
    "-1.5",
    "2.0",
    "1e3",
    "1E3",
    "-1e0",
    "1e300",
    "1e-5",
    "9007199254740991",
    "9007199254740992",
    "-9007199254740991",
    "-9007199254740992",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "3",
    "-3",
];

/// Raw JSON texts for an operation field, valid and invalid.
fn odd_op(rng: &mut ChaCha8Rng) -> String {
    let lit = NUMBER_LITERALS[rng.random_range(0..NUMBER_LITERALS.len())];
    let options = [
        format!("[{lit}]"),
        format!("[1,{lit}]"),
        format!("[\"x\",{lit},2]"),
        "[[1]]".to_owned(),
        "[{}]".to_owned(),
        "[true]".to_owned(),
        "[null]".to_owned(),
        "{}".to_owned(),
        "null".to_owned(),
        "\"[1]\"".to_owned(),
        "5".to_owned(),
        "[]".to_owned(),
        "[\"\"]".to_owned(),
        "[9007199254740991,9007199254740991]".to_owned(),
        "[9007199254740990,-1]".to_owned(),
        "[ 1 , \"a\" , -1 ]".to_owned(),
    ];
    options[rng.random_range(0..options.len())].clone()
}

fn line(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn s(v: impl Into<Value>) -> String {
    v.into().to_string()
}

fn random_case(rng: &mut ChaCha8Rng) -> String {
    let doc = text(rng, 6);
    let len = chars(&doc);
    match rng.random_range(0..16) {
        0 | 1 => {
            let n = maybe_wrong_len(rng, len);
            let op = op_value(rng, n);
            line(&[("fn", s("apply")), ("doc", s(doc)), ("op", s(op))])
        }
        2 | 3 => {
            let a = op_value(rng, len);
            let mid = maybe_wrong_len(rng, target_len(&a, len));
            let b = op_value(rng, mid);
            line(&[("fn", s("compose")), ("a", s(a)), ("b", s(b))])
        }
        4..=6 => {
            let a = op_value(rng, len);
            let n = maybe_wrong_len(rng, len);
            let b = op_value(rng, n);
            line(&[("fn", s("transform")), ("a", s(a)), ("b", s(b))])
        }
        7 => {
            let n = maybe_wrong_len(rng, len);
            let op = op_value(rng, n);
            line(&[("fn", s("invert")), ("doc", s(doc)), ("op", s(op))])
        }
        8 | 9 => {
            let op = op_value(rng, len);
            let pos = rng.random_range(0..=len + 2);
            line(&[
                ("fn", s("transform_position")),
                ("pos", s(pos)),
                ("op", s(op)),
            ])
        }
        10 => {
            let op = if rng.random_bool(0.5) {
                s(op_value(rng, len))
            } else {
                odd_op(rng)
            };
            line(&[("fn", s("parse")), ("json", s(op))])
        }
        11 => {
            let doc_len = rng.random_range(0..6usize);
            let pos = rng.random_range(0..7usize);
            let n = rng.random_range(0..4usize);
            line(&[
                ("fn", s("replace_range")),
                ("doc_len", s(doc_len)),
                ("pos", s(pos)),
                ("len", s(n)),
                ("text", s(text(rng, 2))),
            ])
        }
        12 => {
            // An odd operation field in any function.
            let f = [
                "apply",
                "invert",
                "compose",
                "transform",
                "transform_position",
            ][rng.random_range(0..5)];
            let odd = odd_op(rng);
            match f {
                "apply" | "invert" => line(&[("fn", s(f)), ("doc", s("abc")), ("op", odd)]),
                "transform_position" => line(&[("fn", s(f)), ("pos", s(1)), ("op", odd)]),
                _ => {
                    if rng.random_bool(0.5) {
                        line(&[("fn", s(f)), ("a", odd), ("b", s(json!([1])))])
                    } else {
                        line(&[("fn", s(f)), ("a", s(json!([3]))), ("b", odd)])
                    }
                }
            }
        }
        13 => {
            // Odd integer and string fields.
            let lit = NUMBER_LITERALS[rng.random_range(0..NUMBER_LITERALS.len())].to_owned();
            match rng.random_range(0..5) {
                0 => line(&[
                    ("fn", s("transform_position")),
                    ("pos", lit),
                    ("op", s(json!([2]))),
                ]),
                1 => line(&[
                    ("fn", s("replace_range")),
                    ("doc_len", lit),
                    ("pos", s(0)),
                    ("len", s(0)),
                    ("text", s("x")),
                ]),
                2 => line(&[("fn", s("apply")), ("doc", lit), ("op", s(json!([1])))]),
                3 => line(&[("fn", s("parse")), ("json", lit)]),
                _ => line(&[
                    ("fn", s("replace_range")),
                    ("doc_len", s(3)),
                    ("pos", s(1)),
                    ("len", s(1)),
                    ("text", lit),
                ]),
            }
        }
        14 => {
            // Missing fields, unknown or mistyped fn, not an object.
            let options = [
                line(&[("fn", s("apply")), ("doc", s("a"))]),
                line(&[("fn", s("apply")), ("op", s(json!([1])))]),
                line(&[("fn", s("compose")), ("b", s(json!([1])))]),
                line(&[("fn", s("Apply")), ("doc", s("a")), ("op", s(json!([1])))]),
                line(&[("fn", s("nope"))]),
                line(&[("fn", s(3))]),
                line(&[("doc", s("a"))]),
                "[]".to_owned(),
                "null".to_owned(),
                "\"apply\"".to_owned(),
                "not json".to_owned(),
                "{\"fn\":\"apply\",".to_owned(),
                line(&[
                    ("fn", s("apply")),
                    ("doc", s("a")),
                    ("op", s(json!([1]))),
                    ("x", s(json!({"y": [1, 2]}))),
                ]),
                "{\"fn\":\"apply\",\"doc\":\"\\ud800\",\"op\":[1]}".to_owned(),
                "{\"fn\":\"parse\",\"json\":\"[\\\"\\\\ud800\\\"]\"}".to_owned(),
                "{\"fn\":\"parse\",\"json\":\"[\\\"\\\\ud83d\\\\ude42\\\"]\"}".to_owned(),
                "{\"fn\":\"apply\",\"fn\":\"parse\",\"json\":\"[1]\"}".to_owned(),
                " {\"fn\":\"parse\",\"json\":\"[1]\"} ".to_owned(),
                "{\"fn\":\"parse\",\"json\":\"[1] x\"}".to_owned(),
                "{\"fn\":\"parse\",\"json\":\"[1,]\"}".to_owned(),
                "{\"fn\":\"parse\",\"json\":\"[01]\"}".to_owned(),
                "{\"fn\":\"parse\",\"json\":\"[+1]\"}".to_owned(),
                "{\"fn\":\"parse\",\"json\":\"[\\\"\\t\\\"]\"}".to_owned(),
            ];
            options[rng.random_range(0..options.len())].clone()
        }
        _ => {
            // Nesting around serde_json's recursion limit.
            let depth = rng.random_range(120..135);
            let json = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            line(&[("fn", s("parse")), ("json", s(json))])
        }
    }
}

#[test]
fn ot_js_agrees_with_ot_core_on_random_cases() {
    if !have_node() {
        return;
    }
    let seed: u64 = std::env::var("OT_JS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_251_121);
    let count: usize = std::env::var("OT_JS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut lines: Vec<String> = (0..count).map(|_| random_case(&mut rng)).collect();
    lines.push(String::new()); // a blank line stays a blank line
    println!("seed {seed}: {count} random cases (OT_JS_SEED / OT_JS_CASES to change)");
    // The error codes must all have been exercised.
    let mut codes: std::collections::BTreeSet<String> = Default::default();
    for l in &lines {
        let out = run_line(l);
        if let Ok(v) = serde_json::from_str::<Value>(&out) {
            if let Some(code) = v["error"].as_str() {
                codes.insert(code.to_owned());
            }
        }
    }
    for code in [
        "invalid_case",
        "unknown_fn",
        "invalid_json",
        "not_an_array",
        "zero_length",
        "not_an_integer",
        "too_large",
        "invalid_component",
        "length_mismatch",
        "compose_mismatch",
        "transform_mismatch",
        "out_of_range",
    ] {
        assert!(codes.contains(code), "no random case produced {code}");
    }
    compare(&lines);
}

#[test]
fn ot_js_passes_the_hand_checked_vectors() {
    if !have_node() {
        return;
    }
    let file = workspace().join("ot-core/tests/vectors/conformance.jsonl");
    let text = std::fs::read_to_string(file).expect("vectors");
    let mut lines = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).expect("vector JSON");
        let case_line = match v.get("line") {
            Some(raw) => raw.as_str().expect("line is a string").to_owned(),
            None => v["case"].to_string(),
        };
        assert_eq!(run_line(&case_line), v["expect"].to_string());
        lines.push(case_line);
    }
    assert!(compare(&lines) > 50);
}

#[test]
fn ot_js_client_state_machine_tests_pass_in_node() {
    node_test("tests/js/client.test.mjs");
}

/// The page's message handler (`server/web/session.js`) against every example
/// message, error code and close code of `protocol/fixtures/protocol.json`.
#[test]
fn the_page_follows_the_protocol_fixture_in_node() {
    node_test("tests/js/protocol.test.mjs");
}

fn node_test(file: &str) {
    if !have_node() {
        return;
    }
    let out = Command::new("node")
        .arg("--test")
        .arg(workspace().join(file))
        .output()
        .expect("running node --test");
    let report = e2e_tests::output_text(&out);
    assert!(out.status.success(), "node --test failed:\n{report}");
    assert!(
        report.contains("# fail 0") && !report.contains("# pass 0"),
        "node --test {file} ran no test:\n{report}"
    );
}
