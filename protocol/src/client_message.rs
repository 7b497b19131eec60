//! Client → server messages: written by every client, read strictly by the
//! server (unknown types and malformed fields are typed errors; see
//! PROTOCOL.md "Error codes").

use ot_core::{Operation, Range};
use serde::Serialize;
use serde_json::Value;

use crate::codes::ErrorCode;
use crate::origin::OpOrigin;

/// A client message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// `{"type":"op","rev":R,"seq":K,"op":[…],"ranges"?:[[a,h],…],"origin"?:{…}}`
    Op {
        /// Base revision.
        rev: u64,
        /// Sequence number.
        seq: u64,
        /// The operation.
        op: Operation,
        /// The sender's selection after the op, if attached.
        #[serde(skip_serializing_if = "Option::is_none")]
        ranges: Option<Vec<Range>>,
        /// What a regional link's op covers at its region (links only).
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<Box<OpOrigin>>,
    },
    /// `{"type":"cursor","rev":R,"ranges":[[a,h],…],"name"?:"…"}`
    Cursor {
        /// The revision the ranges refer to.
        rev: u64,
        /// `[anchor, head]` pairs.
        ranges: Vec<Range>,
        /// Display name.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// `{"type":"ping"}`: asks for a `pong`, so that a client that hears
    /// nothing else (a quiet document) still knows the connection is alive.
    /// Browsers cannot send WebSocket ping frames; this is their way.
    Ping,
}

impl ClientMessage {
    /// The JSON text of the message (what a client sends). The same message
    /// always gives the same bytes, so a resend is byte-for-byte.
    pub fn to_text(&self) -> String {
        // Serialising these plain structures cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Read one text frame from a client, strictly (the server's side).
    pub fn parse(text: &str) -> Result<ClientMessage, Rejection> {
        parse_client_message(text)
    }
}

/// The JSON text of an `op` message without copying the op (what
/// [`ClientMessage::to_text`] gives for the same fields).
pub fn op_message_text(
    rev: u64,
    seq: u64,
    op: &Operation,
    ranges: Option<&[Range]>,
    origin: Option<&OpOrigin>,
) -> String {
    #[derive(Serialize)]
    struct OpMessage<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        rev: u64,
        seq: u64,
        op: &'a Operation,
        #[serde(skip_serializing_if = "Option::is_none")]
        ranges: Option<&'a [Range]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<&'a OpOrigin>,
    }
    serde_json::to_string(&OpMessage {
        kind: "op",
        rev,
        seq,
        op,
        ranges,
        origin,
    })
    .unwrap_or_else(|_| String::from("{}"))
}

/// Why a client frame was rejected: the code, the text, and the seq when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
    /// The op's seq, when it could be read.
    pub seq: Option<u64>,
}

impl Rejection {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>, seq: Option<u64>) -> Self {
        Rejection {
            code,
            message: message.into(),
            seq,
        }
    }
}

/// Most ranges a cursor message may carry.
pub const MAX_RANGES: usize = 64;
/// Longest display name, in chars.
pub const MAX_NAME_CHARS: usize = 64;

/// The most common message, an `op` without ranges, exactly as the general
/// parser would read it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainOp<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    rev: u64,
    seq: u64,
    op: Operation,
    #[serde(default)]
    ranges: Option<serde::de::IgnoredAny>,
}

/// Parse a plain `op` message straight into its fields, without building a
/// JSON tree first (a few µs per op). Anything else, including every
/// malformed message, returns `None` and goes through the general parser,
/// which words the errors.
fn parse_plain_op(text: &str) -> Option<ClientMessage> {
    let plain: PlainOp<'_> = serde_json::from_str(text).ok()?;
    let safe = |n: u64| n <= ot_core::MAX_SAFE_INTEGER;
    (plain.kind == "op" && plain.ranges.is_none() && safe(plain.rev) && safe(plain.seq)).then(
        || ClientMessage::Op {
            rev: plain.rev,
            seq: plain.seq,
            op: plain.op,
            ranges: None,
            origin: None,
        },
    )
}

fn field_u64(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    seq: Option<u64>,
) -> Result<u64, Rejection> {
    match obj.get(key) {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|v| *v <= ot_core::MAX_SAFE_INTEGER)
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::InvalidMessage,
                    format!("`{key}` must be an integer from 0 to 2^53-1, got {n}"),
                    seq,
                )
            }),
        Some(_) => Err(Rejection::new(
            ErrorCode::InvalidMessage,
            format!("`{key}` must be a number"),
            seq,
        )),
        None => Err(Rejection::new(
            ErrorCode::InvalidMessage,
            format!("missing field `{key}`"),
            seq,
        )),
    }
}

fn parse_ranges(value: &Value, seq: Option<u64>) -> Result<Vec<Range>, Rejection> {
    let bad =
        |why: &str| Rejection::new(ErrorCode::InvalidMessage, format!("`ranges`: {why}"), seq);
    let Value::Array(items) = value else {
        return Err(bad("must be an array of [anchor, head] pairs"));
    };
    if items.len() > MAX_RANGES {
        return Err(bad(&format!("at most {MAX_RANGES} ranges")));
    }
    items
        .iter()
        .map(|item| match item {
            Value::Array(pair) if pair.len() == 2 => {
                let get = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
                match (get(&pair[0]), get(&pair[1])) {
                    (Some(anchor), Some(head)) => Ok(Range { anchor, head }),
                    _ => Err(bad("positions must be non-negative integers")),
                }
            }
            _ => Err(bad("each range must be a pair [anchor, head]")),
        })
        .collect()
}

/// Parse one text frame into a client message.
fn parse_client_message(text: &str) -> Result<ClientMessage, Rejection> {
    match parse_plain_op(text) {
        Some(message) => Ok(message),
        None => parse_general(text),
    }
}

/// [`parse_client_message`] for any message, through a JSON tree.
fn parse_general(text: &str) -> Result<ClientMessage, Rejection> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Rejection::new(ErrorCode::InvalidJson, format!("not valid JSON: {e}"), None)
    })?;
    let Value::Object(obj) = value else {
        return Err(Rejection::new(
            ErrorCode::InvalidMessage,
            "a message must be a JSON object",
            None,
        ));
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(Rejection::new(
                ErrorCode::UnknownType,
                "`type` must be a string",
                None,
            ))
        }
        None => {
            return Err(Rejection::new(
                ErrorCode::UnknownType,
                "missing `type`",
                None,
            ))
        }
    };
    match kind {
        "op" => {
            // Read the seq first so that later errors can name it (only a
            // safe one: a server frame never carries an integer above 2^53-1).
            let seq_hint = obj
                .get("seq")
                .and_then(Value::as_u64)
                .filter(|seq| *seq <= ot_core::MAX_SAFE_INTEGER);
            let seq = field_u64(&obj, "seq", seq_hint)?;
            let rev = field_u64(&obj, "rev", Some(seq))?;
            let op_value = obj.get("op").ok_or_else(|| {
                Rejection::new(ErrorCode::InvalidMessage, "missing field `op`", Some(seq))
            })?;
            let op = Operation::from_json_value(op_value).map_err(|e| {
                Rejection::new(
                    ErrorCode::InvalidOp,
                    format!("invalid op ({}): {e}", e.code()),
                    Some(seq),
                )
            })?;
            let ranges = match obj.get("ranges") {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_ranges(v, Some(seq))?),
            };
            let origin = match obj.get("origin") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    Some(Box::new(OpOrigin::from_json_value(v).map_err(|e| {
                        Rejection::new(ErrorCode::InvalidMessage, e, Some(seq))
                    })?))
                }
            };
            Ok(ClientMessage::Op {
                rev,
                seq,
                op,
                ranges,
                origin,
            })
        }
        "cursor" => {
            let rev = field_u64(&obj, "rev", None)?;
            let ranges = parse_ranges(
                obj.get("ranges").ok_or_else(|| {
                    Rejection::new(ErrorCode::InvalidMessage, "missing field `ranges`", None)
                })?,
                None,
            )?;
            let name = match obj.get("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.chars().take(MAX_NAME_CHARS).collect()),
                Some(_) => {
                    return Err(Rejection::new(
                        ErrorCode::InvalidMessage,
                        "`name` must be a string",
                        None,
                    ))
                }
            };
            Ok(ClientMessage::Cursor { rev, ranges, name })
        }
        "ping" => Ok(ClientMessage::Ping),
        other => Err(Rejection::new(
            ErrorCode::UnknownType,
            format!(
                "unknown message type `{}`",
                other.chars().take(40).collect::<String>()
            ),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_op_shortcut_agrees_with_the_general_parser() {
        let cases = [
            r#"{"type":"op","rev":3,"seq":4,"op":[1,"é",-1]}"#,
            r#"{"seq":4,"op":["🙂"],"rev":0,"type":"op"}"#,
            r#"{"type":"op","rev":3,"seq":4,"op":[1],"ranges":null}"#,
            r#"{"type":"op","rev":3,"seq":4,"op":[1],"ranges":[[0,1]]}"#,
            r#"{"type":"op","rev":3,"seq":4,"op":[1],"extra":[[[[1]]]]}"#,
            r#"{"type":"op","rev":3,"rev":4,"seq":4,"op":[1]}"#,
            r#"{"type":"op","rev":9007199254740992,"seq":4,"op":[1]}"#,
            r#"{"type":"op","rev":3,"seq":-1,"op":[1]}"#,
            r#"{"type":"op","rev":3.0,"seq":4,"op":[1]}"#,
            r#"{"type":"op","rev":3,"seq":4,"op":[0]}"#,
            r#"{"type":"op","rev":3,"seq":4,"op":"abc"}"#,
            r#"{"type":"op","rev":3,"seq":4}"#,
            r#"{"type":"cursor","rev":3,"seq":4,"op":[1]}"#,
            r#"{"type":"o\u0070","rev":3,"seq":4,"op":[1]}"#,
            r#"{"type":"op","rev":3,"seq":4,"op":["\ud800"]}"#,
        ];
        for text in cases {
            let general = format!("{:?}", parse_general(text));
            assert_eq!(
                format!("{:?}", parse_client_message(text)),
                general,
                "{text}"
            );
            if let Some(plain) = parse_plain_op(text) {
                assert_eq!(
                    format!("{:?}", Ok::<_, Rejection>(plain)),
                    general,
                    "{text}"
                );
            }
        }
        assert!(parse_plain_op(cases[0]).is_some());
        assert!(parse_plain_op(cases[3]).is_none());
        assert!(parse_plain_op(cases[4]).is_none());
    }

    #[test]
    fn parses_ops_and_cursors() {
        let m =
            parse_client_message(r#"{"type":"op","rev":3,"seq":1,"op":[1,"a"],"ranges":[[2,2]]}"#)
                .unwrap();
        assert_eq!(
            m,
            ClientMessage::Op {
                rev: 3,
                seq: 1,
                op: Operation::from_json(r#"[1,"a"]"#).unwrap(),
                ranges: Some(vec![Range::cursor(2)]),
                origin: None
            }
        );
        let c = parse_client_message(r#"{"type":"cursor","rev":0,"ranges":[[0,1]],"name":"ann"}"#)
            .unwrap();
        assert!(matches!(c, ClientMessage::Cursor { .. }));
    }

    #[test]
    fn rejections_have_codes() {
        let code = |s: &str| parse_client_message(s).unwrap_err().code;
        assert_eq!(code("nope"), ErrorCode::InvalidJson);
        assert_eq!(
            code(r#"{"type":"op","rev":0,"seq":1,"op":["\ud800"]}"#),
            ErrorCode::InvalidJson
        );
        assert_eq!(code("[]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"rev":1}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"nope"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"op","rev":-1,"seq":1,"op":[]}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"op","rev":"1","seq":1,"op":[]}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"op","rev":1e400,"seq":1,"op":[]}"#),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            code(r#"{"type":"op","rev":1,"seq":1}"#),
            ErrorCode::InvalidMessage
        );
        let e = parse_client_message(r#"{"type":"op","rev":1,"seq":7,"op":[0]}"#).unwrap_err();
        assert_eq!((e.code, e.seq), (ErrorCode::InvalidOp, Some(7)));
        // An unsafe seq is not named back (the error frame would break the
        // 2^53 rule that clients enforce on server frames).
        let e = parse_client_message(r#"{"type":"op","rev":1,"seq":9007199254740992,"op":[1]}"#)
            .unwrap_err();
        assert_eq!((e.code, e.seq), (ErrorCode::InvalidMessage, None));
        assert_eq!(
            code(r#"{"type":"cursor","rev":1,"ranges":[[1]]}"#),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn what_clients_write_the_server_reads_back() {
        let op = Operation::from_json(r#"[2,"x",-1]"#).unwrap();
        let messages = [
            ClientMessage::Op {
                rev: 5,
                seq: 9,
                op: op.clone(),
                ranges: None,
                origin: None,
            },
            ClientMessage::Op {
                rev: 5,
                seq: 9,
                op: op.clone(),
                ranges: Some(vec![Range { anchor: 1, head: 3 }]),
                origin: None,
            },
            ClientMessage::Cursor {
                rev: 2,
                ranges: vec![Range::cursor(0)],
                name: Some("Ann".into()),
            },
            ClientMessage::Cursor {
                rev: 2,
                ranges: vec![],
                name: None,
            },
        ];
        for message in messages {
            assert_eq!(parse_client_message(&message.to_text()).unwrap(), message);
        }
        assert_eq!(
            op_message_text(5, 9, &op, None, None),
            ClientMessage::Op {
                rev: 5,
                seq: 9,
                op: op.clone(),
                ranges: None,
                origin: None
            }
            .to_text()
        );
        assert_eq!(
            op_message_text(5, 9, &op, None, None),
            r#"{"type":"op","rev":5,"seq":9,"op":[2,"x",-1]}"#
        );
    }
}
