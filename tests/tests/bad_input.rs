//! Bad input, table-driven, against a real server over real WebSocket
//! connections: every rejected frame gets its exact typed error (with the seq
//! when it concerns an op), changes nothing in the document, is invisible to
//! another client of the document, and leaves the connection usable (except
//! where the protocol says it closes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_tests::{
    doc_state, http_get, http_get_json, metric, metric_value, recv_message, send_message,
    start_server_with, ws_connect, ws_refused, Event, WsClient,
};
use futures_util::{SinkExt, StreamExt};
use ot_core::Operation;
use ot_protocol::{op_message_text, ClientMessage, ErrorCode, ServerMessage};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

/// Limits of the table's server: small, so every limit is cheap to reach.
const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The server reads frames up to 4× its message limit; beyond that it closes.
const HARD_LIMIT: usize = 4 * MAX_MESSAGE_BYTES;
const MAX_OP_LEN: usize = 1000;
const MAX_DOC_LEN: usize = 2000;

/// **The only place in this file that writes frames by hand**: the bad
/// frames of the table, deliberately malformed (or valid JSON that breaks a
/// rule of the protocol), written as text so that every byte is what the
/// case says. Everything else sends typed [`ClientMessage`]s.
mod malformed {
    use serde_json::{json, Value};

    use super::{HARD_LIMIT, MAX_DOC_LEN, MAX_MESSAGE_BYTES, MAX_OP_LEN};

    /// The document as the bad frame finds it.
    pub struct Ctx {
        /// Head revision.
        pub rev: u64,
        /// Length in chars.
        pub len: usize,
        /// The offending client's last applied seq.
        pub last: u64,
        /// Its next seq.
        pub next: u64,
    }

    pub enum Frame {
        Text(String),
        Binary(Vec<u8>),
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Expect {
        /// An error with this code and seq (None: no `seq` field); the connection stays open.
        Error(&'static str, Option<u64>),
        /// The connection is closed with this code, after an error with the code given.
        Close(u16, &'static str),
    }

    pub struct Case {
        pub name: &'static str,
        /// Characters the offending client inserts (in ops of 900) before the bad frame.
        pub prefill: usize,
        pub build: fn(&Ctx) -> (Frame, Expect),
    }

    fn text(s: impl Into<String>) -> Frame {
        Frame::Text(s.into())
    }

    fn err(code: &'static str, seq: Option<u64>) -> Expect {
        Expect::Error(code, seq)
    }

    fn op_frame(rev: u64, seq: u64, op: Value) -> Frame {
        text(json!({"type":"op","rev":rev,"seq":seq,"op":op}).to_string())
    }

    /// A valid op for the context: insert "?" at the start.
    fn valid_op(c: &Ctx) -> Value {
        if c.len == 0 {
            json!(["?"])
        } else {
            json!(["?", c.len])
        }
    }

    pub fn cases() -> Vec<Case> {
        vec![
            // ---- not JSON at all ----
            Case {
                name: "plain text",
                prefill: 0,
                build: |_| (text("hello"), err("invalid_json", None)),
            },
            Case {
                name: "empty text frame",
                prefill: 0,
                build: |_| (text(""), err("invalid_json", None)),
            },
            Case {
                name: "truncated JSON",
                prefill: 0,
                build: |c| {
                    (
                        text(format!(
                            r#"{{"type":"op","rev":{},"seq":{},"op":[1"#,
                            c.rev, c.next
                        )),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "binary frame",
                prefill: 0,
                build: |_| {
                    (
                        Frame::Binary(vec![0x7b, 0x7d, 0, 255]),
                        err("binary_frame", None),
                    )
                },
            },
            Case {
                name: "binary frame holding a valid op",
                prefill: 0,
                build: |c| {
                    let valid =
                        json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c)}).to_string();
                    (Frame::Binary(valid.into_bytes()), err("binary_frame", None))
                },
            },
            // ---- JSON, but not a message ----
            Case {
                name: "JSON array",
                prefill: 0,
                build: |_| (text("[1,2]"), err("invalid_message", None)),
            },
            Case {
                name: "JSON string",
                prefill: 0,
                build: |_| (text(r#""op""#), err("invalid_message", None)),
            },
            Case {
                name: "JSON null",
                prefill: 0,
                build: |_| (text("null"), err("invalid_message", None)),
            },
            Case {
                name: "missing type",
                prefill: 0,
                build: |c| {
                    (
                        text(json!({"rev":c.rev,"seq":c.next,"op":valid_op(c)}).to_string()),
                        err("unknown_type", None),
                    )
                },
            },
            Case {
                name: "type not a string",
                prefill: 0,
                build: |_| (text(r#"{"type":1}"#), err("unknown_type", None)),
            },
            Case {
                name: "unknown type",
                prefill: 0,
                build: |_| {
                    (
                        text(r#"{"type":"delete_everything"}"#),
                        err("unknown_type", None),
                    )
                },
            },
            Case {
                name: "server-only type (ack)",
                prefill: 0,
                build: |c| {
                    (
                        text(json!({"type":"ack","rev":c.rev + 1,"seq":c.next}).to_string()),
                        err("unknown_type", None),
                    )
                },
            },
            Case {
                name: "very long unknown type",
                prefill: 0,
                build: |_| {
                    (
                        text(json!({"type":"x".repeat(10_000)}).to_string()),
                        err("unknown_type", None),
                    )
                },
            },
            // ---- missing or mistyped fields ----
            Case {
                name: "op without seq",
                prefill: 0,
                build: |c| {
                    (
                        text(json!({"type":"op","rev":c.rev,"op":valid_op(c)}).to_string()),
                        err("invalid_message", None),
                    )
                },
            },
            Case {
                name: "op without rev",
                prefill: 0,
                build: |c| {
                    (
                        text(json!({"type":"op","seq":c.next,"op":valid_op(c)}).to_string()),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op without op",
                prefill: 0,
                build: |c| {
                    (
                        text(json!({"type":"op","rev":c.rev,"seq":c.next}).to_string()),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "seq as a string",
                prefill: 0,
                build: |c| {
                    (
                    text(
                        json!({"type":"op","rev":c.rev,"seq":c.next.to_string(),"op":valid_op(c)})
                            .to_string(),
                    ),
                    err("invalid_message", None),
                )
                },
            },
            Case {
                name: "seq as a float",
                prefill: 0,
                build: |c| {
                    (
                        text(format!(
                            r#"{{"type":"op","rev":{},"seq":{}.5,"op":["?",{}]}}"#,
                            c.rev, c.next, c.len
                        )),
                        err("invalid_message", None),
                    )
                },
            },
            Case {
                name: "rev as a string",
                prefill: 0,
                build: |c| {
                    (
                    text(
                        json!({"type":"op","rev":c.rev.to_string(),"seq":c.next,"op":valid_op(c)})
                            .to_string(),
                    ),
                    err("invalid_message", Some(c.next)),
                )
                },
            },
            Case {
                name: "rev null",
                prefill: 0,
                build: |c| {
                    (
                        text(
                            json!({"type":"op","rev":null,"seq":c.next,"op":valid_op(c)})
                                .to_string(),
                        ),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "rev as a float",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw(&format!("{}.5", c.rev), c.next, &valid_op(c)),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op as a string",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!("insert ? at 0")),
                        err("invalid_op", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op null",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, Value::Null),
                        err("invalid_op", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op with a zero retain",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!([0, "?", c.len])),
                        err("invalid_op", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op with a fractional retain",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw_op(c.rev, c.next, &format!(r#"["?",{}.5]"#, c.len)),
                        err("invalid_op", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op with an object component",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!([{"insert":"?"}, c.len])),
                        err("invalid_op", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op with a nested array component",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!([["?"], c.len])),
                        err("invalid_op", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op with a retain past 2^53",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!(["?", 9_007_199_254_740_993u64])),
                        err("invalid_op", Some(c.next)),
                    )
                },
            },
            Case {
                name: "ranges not pairs",
                prefill: 0,
                build: |c| {
                    (text(json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"ranges":[[1]]}).to_string()), err("invalid_message", Some(c.next)))
                },
            },
            Case {
                name: "ranges a string",
                prefill: 0,
                build: |c| {
                    (text(json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"ranges":"0,0"}).to_string()), err("invalid_message", Some(c.next)))
                },
            },
            Case {
                name: "ranges with a negative position",
                prefill: 0,
                build: |c| {
                    (text(json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"ranges":[[-1,0]]}).to_string()), err("invalid_message", Some(c.next)))
                },
            },
            Case {
                name: "origin from a client that is not a regional link",
                prefill: 0,
                build: |c| {
                    (text(json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"origin":{"revs":[1,2],"authors":["a"]}}).to_string()), err("invalid_message", Some(c.next)))
                },
            },
            Case {
                name: "origin with revisions backwards",
                prefill: 0,
                build: |c| {
                    (text(json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"origin":{"revs":[3,1],"authors":[]}}).to_string()), err("invalid_message", Some(c.next)))
                },
            },
            Case {
                name: "origin with an author that is not a client id",
                prefill: 0,
                build: |c| {
                    (text(json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"origin":{"revs":[1,1],"authors":["x y"]}}).to_string()), err("invalid_message", Some(c.next)))
                },
            },
            Case {
                name: "origin with 33 authors",
                prefill: 0,
                build: |c| {
                    let authors: Vec<String> = (0..33).map(|i| format!("a{i}")).collect();
                    (text(json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"origin":{"revs":[1,1],"authors":authors}}).to_string()), err("invalid_message", Some(c.next)))
                },
            },
            Case {
                name: "cursor without ranges",
                prefill: 0,
                build: |c| {
                    (
                        text(json!({"type":"cursor","rev":c.rev}).to_string()),
                        err("invalid_message", None),
                    )
                },
            },
            Case {
                name: "cursor without rev",
                prefill: 0,
                build: |_| {
                    (
                        text(json!({"type":"cursor","ranges":[[0,0]]}).to_string()),
                        err("invalid_message", None),
                    )
                },
            },
            Case {
                name: "cursor with a non-string name",
                prefill: 0,
                build: |c| {
                    (
                        text(
                            json!({"type":"cursor","rev":c.rev,"ranges":[[0,0]],"name":5})
                                .to_string(),
                        ),
                        err("invalid_message", None),
                    )
                },
            },
            Case {
                name: "cursor with too many ranges",
                prefill: 0,
                build: |c| {
                    (
                        text(
                            json!({"type":"cursor","rev":c.rev,"ranges":vec![[0, 0]; 65]})
                                .to_string(),
                        ),
                        err("invalid_message", None),
                    )
                },
            },
            // ---- negative, huge and future revisions ----
            Case {
                name: "negative rev",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw("-1", c.next, &valid_op(c)),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "negative seq",
                prefill: 0,
                build: |c| {
                    (
                        text(format!(
                            r#"{{"type":"op","rev":{},"seq":-1,"op":{}}}"#,
                            c.rev,
                            valid_op(c)
                        )),
                        err("invalid_message", None),
                    )
                },
            },
            Case {
                name: "rev 2^53 (past the safe integers)",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw("9007199254740992", c.next, &valid_op(c)),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "rev u64::MAX",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw("18446744073709551615", c.next, &valid_op(c)),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "rev past u64",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw("123456789012345678901234567890", c.next, &valid_op(c)),
                        err("invalid_message", Some(c.next)),
                    )
                },
            },
            Case {
                name: "rev 1e400 (not a finite number)",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw("1e400", c.next, &valid_op(c)),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "seq past 2^53",
                prefill: 0,
                build: |c| {
                    (
                        text(format!(
                            r#"{{"type":"op","rev":{},"seq":9007199254740993,"op":{}}}"#,
                            c.rev,
                            valid_op(c)
                        )),
                        // Not echoed: the error would break the 2^53 rule itself.
                        err("invalid_message", None),
                    )
                },
            },
            Case {
                name: "future rev (head + 1)",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev + 1, c.next, valid_op(c)),
                        err("future_revision", Some(c.next)),
                    )
                },
            },
            Case {
                name: "future rev (2^53 - 1)",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(9_007_199_254_740_991, c.next, valid_op(c)),
                        err("future_revision", Some(c.next)),
                    )
                },
            },
            Case {
                name: "cursor at a future rev",
                prefill: 0,
                build: |c| {
                    (
                        text(json!({"type":"cursor","rev":c.rev + 1,"ranges":[[0,0]]}).to_string()),
                        err("future_revision", None),
                    )
                },
            },
            Case {
                name: "cursor at a negative rev",
                prefill: 0,
                build: |_| {
                    (
                        text(r#"{"type":"cursor","rev":-1,"ranges":[[0,0]]}"#),
                        err("invalid_message", None),
                    )
                },
            },
            // ---- ops that do not fit the document ----
            Case {
                name: "op longer than the document",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!(["?", c.len + 5])),
                        err("op_does_not_fit", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op shorter than the document",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!(["?", c.len - 1])),
                        err("op_does_not_fit", Some(c.next)),
                    )
                },
            },
            Case {
                name: "delete past the end",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!([-((c.len + 1) as i64)])),
                        err("op_does_not_fit", Some(c.next)),
                    )
                },
            },
            Case {
                name: "empty op on a non-empty document",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!([])),
                        err("op_does_not_fit", Some(c.next)),
                    )
                },
            },
            Case {
                name: "huge retain",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!([9_007_199_254_740_991u64])),
                        err("op_does_not_fit", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op based on an older rev that no longer fits",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev - 1, c.next, json!(["?", c.len])),
                        err("op_does_not_fit", Some(c.next)),
                    )
                },
            },
            // ---- deep nesting and lone surrogates ----
            Case {
                name: "deeply nested JSON",
                prefill: 0,
                build: |_| {
                    (
                        text(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "deeply nested op",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw_op(
                            c.rev,
                            c.next,
                            &format!("{}1{}", "[".repeat(500), "]".repeat(500)),
                        ),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "deeply nested object",
                prefill: 0,
                build: |_| {
                    (
                        text(format!(
                            r#"{{"type":"op","x":{}1{}}}"#,
                            r#"{"x":"#.repeat(1000),
                            "}".repeat(1000)
                        )),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "lone high surrogate in the op",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw_op(c.rev, c.next, &format!(r#"["\ud800",{}]"#, c.len)),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "lone low surrogate in the op",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw_op(c.rev, c.next, &format!(r#"["a\udc00b",{}]"#, c.len)),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "reversed surrogate pair in the op",
                prefill: 0,
                build: |c| {
                    (
                        op_frame_raw_op(c.rev, c.next, &format!(r#"["\ude00\ud83d",{}]"#, c.len)),
                        err("invalid_json", None),
                    )
                },
            },
            Case {
                name: "lone surrogate in a cursor name",
                prefill: 0,
                build: |c| {
                    (
                        text(format!(
                            r#"{{"type":"cursor","rev":{},"ranges":[[0,0]],"name":"\ud800"}}"#,
                            c.rev
                        )),
                        err("invalid_json", None),
                    )
                },
            },
            // ---- seqs ----
            Case {
                name: "seq 0",
                prefill: 0,
                build: |c| (op_frame(c.rev, 0, valid_op(c)), err("bad_seq", Some(0))),
            },
            Case {
                name: "seq skipping ahead by one",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next + 1, valid_op(c)),
                        err("bad_seq", Some(c.next + 1)),
                    )
                },
            },
            Case {
                name: "seq skipping far ahead",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, 1_000_000, valid_op(c)),
                        err("bad_seq", Some(1_000_000)),
                    )
                },
            },
            Case {
                name: "last seq reused with a different op",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.last, valid_op(c)),
                        err("seq_reused", Some(c.last)),
                    )
                },
            },
            Case {
                // The server keeps one op in memory here (history_window = 1): the
                // hash of seq 1 comes from storage.
                name: "old seq reused with a different op",
                prefill: 0,
                build: |c| (op_frame(c.rev, 1, valid_op(c)), err("seq_reused", Some(1))),
            },
            Case {
                // The dedup check comes before every other check of the op.
                name: "last seq reused with an op that does not fit",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev + 7, c.last, json!([3])),
                        err("seq_reused", Some(c.last)),
                    )
                },
            },
            // ---- limits ----
            Case {
                name: "op inserting more than max_op_len",
                prefill: 0,
                build: |c| {
                    (
                        op_frame(c.rev, c.next, json!(["?".repeat(MAX_OP_LEN + 1), c.len])),
                        err("op_too_long", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op inserting and deleting more than max_op_len",
                prefill: 900,
                build: |c| {
                    (
                        op_frame(
                            c.rev,
                            c.next,
                            json!(["?".repeat(MAX_OP_LEN - 100), -((c.len) as i64)]),
                        ),
                        err("op_too_long", Some(c.next)),
                    )
                },
            },
            Case {
                name: "op making the document longer than max_doc_len",
                prefill: 1800,
                build: |c| {
                    (
                        op_frame(
                            c.rev,
                            c.next,
                            json!(["?".repeat(MAX_DOC_LEN + 1 - c.len), c.len]),
                        ),
                        err("doc_too_long", Some(c.next)),
                    )
                },
            },
            Case {
                name: "message over max_message_bytes",
                prefill: 0,
                build: |c| {
                    let filler = "x".repeat(MAX_MESSAGE_BYTES);
                    (
                    text(
                        json!({"type":"op","rev":c.rev,"seq":c.next,"op":valid_op(c),"pad":filler})
                            .to_string(),
                    ),
                    err("message_too_large", None),
                )
                },
            },
            Case {
                name: "garbage over max_message_bytes",
                prefill: 0,
                build: |_| {
                    (
                        text("\u{e9}".repeat(MAX_MESSAGE_BYTES / 2 + 1)),
                        err("message_too_large", None),
                    )
                },
            },
            Case {
                name: "binary frame over max_message_bytes",
                prefill: 0,
                build: |_| {
                    (
                        Frame::Binary(vec![b'x'; MAX_MESSAGE_BYTES + 1]),
                        err("binary_frame", None),
                    )
                },
            },
            Case {
                name: "message over the hard limit",
                prefill: 0,
                build: |_| {
                    (
                        text("x".repeat(HARD_LIMIT + 1024)),
                        Expect::Close(1009, "message_too_large"),
                    )
                },
            },
        ]
    }

    /// `{"type":"op","rev":<raw>,"seq":K,"op":…}` with the rev written verbatim.
    fn op_frame_raw(rev: &str, seq: u64, op: &Value) -> Frame {
        text(format!(
            r#"{{"type":"op","rev":{rev},"seq":{seq},"op":{op}}}"#
        ))
    }

    /// `{"type":"op","rev":R,"seq":K,"op":<raw>}` with the op written verbatim.
    fn op_frame_raw_op(rev: u64, seq: u64, op: &str) -> Frame {
        text(format!(
            r#"{{"type":"op","rev":{rev},"seq":{seq},"op":{op}}}"#
        ))
    }
}

use malformed::{cases, Case, Ctx, Expect, Frame};

async fn errors_by_code(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await.unwrap()
}

fn count(page: &str, name: &str) -> f64 {
    metric(page, name).unwrap_or(0.0)
}

/// An error frame read by the protocol's rules: its code, text and seq.
/// Writing it back gives the same JSON, so the frame has no field the type
/// does not know (a `"seq":null` where no seq belongs, say).
fn read_error(frame: &Value, case: &str) -> (String, String, Option<u64>) {
    let message =
        ServerMessage::parse(&frame.to_string()).unwrap_or_else(|e| panic!("{case}: {e}: {frame}"));
    assert_eq!(
        serde_json::to_value(&message).unwrap(),
        *frame,
        "{case}: the frame is not exactly a typed message"
    );
    match message {
        ServerMessage::Error { code, message, seq } => {
            (code.as_str().to_owned(), message.into_owned(), seq)
        }
        other => panic!("{case}: expected an error, got {other:?}"),
    }
}

async fn run_case(addr: SocketAddr, index: usize, case: &Case) {
    let name = case.name;
    let doc = format!("bad-{index}");
    let mut a = WsClient::join(addr, &doc, &format!("offender-{index}"))
        .await
        .unwrap();
    // Two ops, so that seq 1 is older than the last seq.
    a.edit(&Operation::insert_at(0, 0, "hello").unwrap())
        .await
        .unwrap();
    a.settle_to(1, T).await.unwrap();
    a.edit(&Operation::insert_at(5, 5, " world").unwrap())
        .await
        .unwrap();
    a.settle_to(2, T).await.unwrap();
    let mut left = case.prefill;
    while left > 0 {
        let n = left.min(900);
        let len = a.client().text().len_chars();
        a.edit(&Operation::insert_at(len, len, &"p".repeat(n)).unwrap())
            .await
            .unwrap();
        let rev = a.client().revision() + 1;
        a.settle_to(rev, T).await.unwrap();
        left -= n;
    }
    let mut b = WsClient::join(addr, &doc, &format!("bystander-{index}"))
        .await
        .unwrap();
    let (rev0, text0) = doc_state(addr, &doc).await.unwrap();
    assert_eq!(b.text(), text0, "{name}");
    let ctx = Ctx {
        rev: rev0,
        len: text0.chars().count(),
        last: a.client().next_seq() - 1,
        next: a.client().next_seq(),
    };
    let (frame, expect) = (case.build)(&ctx);
    let before = errors_by_code(addr).await;

    let sent = match frame {
        Frame::Text(t) => a.send_text(&t).await,
        Frame::Binary(b) => a.send_binary(b).await,
    };
    let closed = match expect {
        Expect::Error(code, seq) => {
            sent.unwrap_or_else(|e| panic!("{name}: send failed: {e}"));
            let event = a.next_event(T).await.unwrap();
            let Event::Json(message) = event else {
                panic!("{name}: expected an error message, got {event:?}");
            };
            let (got_code, text, got_seq) = read_error(&message, name);
            assert_eq!(got_code, code, "{name}: {message}");
            assert!(!text.is_empty(), "{name}: {message}");
            assert_eq!(got_seq, seq, "{name}: {message}");
            false
        }
        Expect::Close(close_code, error_code) => {
            // The send may fail if the server closes while the frame is still going out.
            let _ = sent;
            let mut errors = Vec::new();
            let frame = loop {
                match a.next_event(T).await.unwrap() {
                    Event::Json(m) => errors.push(m),
                    Event::Closed(frame) => break frame,
                    other => {
                        panic!("{name}: expected a close frame, got {other:?} after {errors:?}")
                    }
                }
            };
            assert_eq!(frame.map(|f| f.0), Some(close_code), "{name}");
            // The error that explains the close comes first.
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
            assert_eq!(
                read_error(&errors[0], name).0,
                error_code,
                "{name}: {errors:?}"
            );
            a.cut();
            true
        }
    };

    // Nothing changed, the server is up, and exactly one error was counted.
    assert_eq!(
        doc_state(addr, &doc).await.unwrap(),
        (rev0, text0.clone()),
        "{name}"
    );
    assert!(
        http_get(addr, "/healthz").await.unwrap().contains("ok"),
        "{name}"
    );
    let after = errors_by_code(addr).await;
    for family in [
        "ot_ops_applied_total",
        "ot_duplicates_total",
        "ot_conflicts_total",
    ] {
        assert_eq!(
            count(&before, family),
            count(&after, family),
            "{name}: {family}"
        );
    }
    let (Expect::Error(code, _) | Expect::Close(_, code)) = expect;
    let label = format!("ot_errors_total{{code=\"{code}\"}}");
    assert_eq!(
        count(&after, &label),
        count(&before, &label) + 1.0,
        "{name}: {label}"
    );

    // The offender's connection still works (or, if it was closed, a new one does).
    if closed {
        a.reconnect().await.unwrap();
    }
    let len = a.client().text().len_chars();
    a.edit(&Operation::insert_at(len, 0, "!").unwrap())
        .await
        .unwrap();
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    assert!(
        a.errors.is_empty(),
        "{name}: further errors: {:?}",
        a.errors
    );
    assert_eq!(a.client().revision(), rev0 + 1, "{name}");

    // The bystander saw nothing of the bad frame: its next message is the
    // offender's follow-up op (after a `leave` if the offender was closed).
    let offender = format!("offender-{index}");
    if closed {
        match b.recv_message(T).await.unwrap() {
            ServerMessage::Leave { client } => assert_eq!(client, offender, "{name}"),
            other => panic!("{name}: expected a leave, got {other:?}"),
        }
    }
    let next = b.recv_message(T).await.unwrap();
    match &next {
        ServerMessage::Op {
            rev, client, seq, ..
        } => assert_eq!(
            (*rev, client.as_ref(), *seq),
            (rev0 + 1, offender.as_str(), ctx.next),
            "{name}"
        ),
        other => panic!("{name}: expected the offender's op, got {other:?}"),
    }
    b.handle_message(next).await.unwrap();
    let expected = format!("!{text0}");
    assert_eq!(b.text(), expected, "{name}");
    assert_eq!(
        doc_state(addr, &doc).await.unwrap(),
        (rev0 + 1, expected),
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| {
        c.max_message_bytes = MAX_MESSAGE_BYTES;
        c.max_op_len = MAX_OP_LEN;
        c.max_doc_len = MAX_DOC_LEN;
        // Only the last op in memory: an older seq's hash is read from storage.
        c.history_window = 1;
    })
    .await
    .unwrap();
    let addr = server.addr;
    for (index, case) in cases().iter().enumerate() {
        run_case(addr, index, case).await;
    }
    server.stop().await.unwrap();
}

/// Many consecutive rejected messages close the connection as abusive (1008);
/// a valid message in between resets the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_errors_close_only_when_abusive() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| c.max_errors = 5)
        .await
        .unwrap();
    let addr = server.addr;
    let mut a = WsClient::join(addr, "abuse", "abuser").await.unwrap();
    let mut b = WsClient::join(addr, "abuse", "bystander").await.unwrap();
    // 5 bad, 1 valid, 5 bad: never more than 5 in a row, so the connection stays.
    for _ in 0..5 {
        a.send_text("nope").await.unwrap();
    }
    a.edit(&Operation::insert_at(0, 0, "ok").unwrap())
        .await
        .unwrap();
    for _ in 0..5 {
        a.send_text("nope").await.unwrap();
    }
    a.pump_until(T, |c| c.client().all_saved() && c.errors.len() == 10)
        .await
        .unwrap();
    assert!(a.errors.iter().all(|e| e.code == ErrorCode::InvalidJson));
    a.expect_quiet(Duration::from_millis(200)).await.unwrap();
    // The 6th in a row closes it: 6 errors, then 1008.
    a.errors.clear();
    a.send_text("nope").await.unwrap();
    let close = a.expect_close(T).await.unwrap();
    assert_eq!(close.map(|c| c.0), Some(1008));
    assert_eq!(a.errors.len(), 1, "{:?}", a.errors);
    // The document and the other client are fine.
    let op = b.recv_message(T).await.unwrap();
    assert!(
        matches!(&op, ServerMessage::Op { client, .. } if client == "abuser"),
        "{op:?}"
    );
    b.handle_message(op).await.unwrap();
    assert!(
        matches!(b.recv_message(T).await.unwrap(), ServerMessage::Leave { client } if client == "abuser")
    );
    assert_eq!(
        doc_state(addr, "abuse").await.unwrap(),
        (1, "ok".to_owned())
    );
    b.edit(&Operation::insert_at(2, 2, "!").unwrap())
        .await
        .unwrap();
    b.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    // The abuser may come back.
    a.reconnect().await.unwrap();
    a.settle_to(2, T).await.unwrap();
    assert_eq!(a.text(), "ok!");
    server.stop().await.unwrap();
}

/// Document ids and client ids are checked before the upgrade: HTTP 400 with a
/// JSON code, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |_| {}).await.unwrap();
    let addr = server.addr;
    let long_doc = "d".repeat(129);
    let long_client = "c".repeat(65);
    let cases: Vec<(String, &str)> = vec![
        ("/ws/a%2Fb".to_owned(), "invalid_document_id"),
        ("/ws/a/b".to_owned(), "invalid_document_id"),
        ("/ws/".to_owned(), "invalid_document_id"),
        ("/ws".to_owned(), "invalid_document_id"),
        (format!("/ws/{long_doc}"), "invalid_document_id"),
        ("/ws/h%C3%A9llo".to_owned(), "invalid_document_id"),
        ("/ws/a%20b".to_owned(), "invalid_document_id"),
        ("/ws/a:b".to_owned(), "invalid_document_id"),
        ("/ws/a%00b".to_owned(), "invalid_document_id"),
        ("/ws/ok-doc?client=".to_owned(), "invalid_client_id"),
        (
            format!("/ws/ok-doc?client={long_client}"),
            "invalid_client_id",
        ),
        ("/ws/ok-doc?client=a.b".to_owned(), "invalid_client_id"),
        ("/ws/ok-doc?client=a%2Fb".to_owned(), "invalid_client_id"),
        ("/ws/ok-doc?client=%C3%A9".to_owned(), "invalid_client_id"),
        ("/ws/ok-doc?client=abc&rev=-1".to_owned(), "invalid_query"),
        ("/ws/ok-doc?client=abc&rev=x".to_owned(), "invalid_query"),
        (
            "/ws/ok-doc?client=abc&rev=9007199254740992".to_owned(),
            "invalid_query",
        ),
    ];
    for (path, code) in &cases {
        let (status, body) = ws_refused(addr, path).await.unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"));
        assert_eq!(v["code"], *code, "{path}: {body}");
    }
    // Nothing was created.
    let (status, v) = http_get_json(addr, "/api/docs/ok-doc").await.unwrap();
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let (_, list) = http_get_json(addr, "/api/docs").await.unwrap();
    assert_eq!(list["docs"], json!([]));
    // The longest valid ids work.
    let doc = format!("{}.-_", "D".repeat(125));
    let client = format!("{}_-", "C".repeat(62));
    let mut c = WsClient::join(addr, &doc, &client).await.unwrap();
    c.edit(&Operation::insert_at(0, 0, "fine").unwrap())
        .await
        .unwrap();
    c.settle_to(1, T).await.unwrap();
    assert_eq!(doc_state(addr, &doc).await.unwrap(), (1, "fine".to_owned()));
    server.stop().await.unwrap();
}

/// A valid no-op (`[n]`) is accepted like any op and creates a revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noop_is_accepted_and_creates_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |_| {}).await.unwrap();
    let addr = server.addr;
    let mut socket = ws_connect(addr, "/ws/noop?client=noop-writer")
        .await
        .unwrap();
    let snapshot = recv_message(&mut socket, T).await.unwrap();
    assert!(
        matches!(snapshot, ServerMessage::Snapshot { rev: 0, .. }),
        "{snapshot:?}"
    );
    let ops = [
        Operation::insert_at(0, 0, "abc").unwrap(),
        Operation::identity(3),
        Operation::identity(3),
    ];
    for (seq, op) in (1..).zip(ops) {
        let frame = ClientMessage::Op {
            rev: seq - 1,
            seq,
            op,
            ranges: None,
            origin: None,
        };
        send_message(&mut socket, &frame).await.unwrap();
        let ack = recv_message(&mut socket, T).await.unwrap();
        assert_eq!(ack, ServerMessage::Ack { rev: seq, seq });
    }
    assert_eq!(
        doc_state(addr, "noop").await.unwrap(),
        (3, "abc".to_owned())
    );
    server.stop().await.unwrap();
}

/// An op flood: 5,000 ops sent as fast as the socket takes them. Reading is
/// paced by the rate limit (so it takes at least (N − burst) / rate, and not
/// much more), nothing is rejected, every op is acked in order, and another
/// client sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_flood_is_paced_not_rejected() {
    const N: u64 = 5000;
    const RATE: u32 = 5000;
    const BURST: u32 = 200;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| {
        c.ops_per_sec = RATE;
        c.ops_burst = BURST;
    })
    .await
    .unwrap();
    let addr = server.addr;
    let mut observer = WsClient::join(addr, "flood", "observer").await.unwrap();
    let observing = tokio::spawn(async move {
        observer
            .settle_to(N, Duration::from_secs(120))
            .await
            .map(|()| observer)
    });
    let mut socket = ws_connect(addr, "/ws/flood?client=flooder").await.unwrap();
    let snapshot = recv_message(&mut socket, T).await.unwrap();
    assert!(
        matches!(snapshot, ServerMessage::Snapshot { .. }),
        "{snapshot:?}"
    );
    let (mut sink, mut stream) = socket.split();
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        for i in 0..N {
            let len = usize::try_from(i)?;
            let op = Operation::insert_at(len, len, "x")?;
            sink.send(Message::text(op_message_text(i, i + 1, &op, None, None)))
                .await?;
        }
        anyhow::Ok(sink)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 1..=N {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => ServerMessage::parse(t.as_str()).unwrap(),
            other => panic!("waiting for ack {i}: {other:?}"),
        };
        assert_eq!(message, ServerMessage::Ack { rev: i, seq: i });
    }
    let elapsed = started.elapsed();
    let _sink = sending.await.unwrap().unwrap();
    eprintln!("{N} flood ops acked in {elapsed:?}");
    // Reading is paced: unpaced, this takes about 0.15 s on this machine kind.
    let floor = f64::from(N as u32 - BURST) / f64::from(RATE);
    assert!(
        elapsed.as_secs_f64() >= floor * 0.95,
        "{N} ops were read in {elapsed:?}: faster than the rate limit allows ({floor}s)"
    );
    // ... at about the configured rate, not far below it (a bucket that drops the
    // time its timer overslept reads at ~850 ops/s here whatever the setting).
    assert!(
        elapsed < Duration::from_secs(4),
        "{N} ops took {elapsed:?} at {RATE}/s: the rate limit paces far below its setting"
    );
    let observer = observing.await.unwrap().unwrap();
    let expected = "x".repeat(N as usize);
    assert!(observer.errors.is_empty(), "{:?}", observer.errors);
    assert_eq!(observer.text(), expected);
    assert_eq!(doc_state(addr, "flood").await.unwrap(), (N, expected));
    let page = http_get(addr, "/metrics").await.unwrap();
    assert!(
        !page.contains("ot_errors_total{"),
        "errors were counted:\n{page}"
    );
    assert_eq!(
        metric_value(addr, "ot_ops_applied_total").await.unwrap(),
        N as f64
    );
    server.stop().await.unwrap();
}
