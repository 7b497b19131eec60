//! The wire protocol: JSON text frames. PROTOCOL.md is the user-facing description;
//! this module is its single source of truth in code.

use ot_core::{Operation, Range};
use serde::Serialize;
use serde_json::Value;

/// Limits announced to clients in the snapshot.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Limits {
    /// Most characters a document may hold.
    pub max_doc_len: usize,
    /// Most characters one op may insert plus delete.
    pub max_op_len: usize,
}

/// A message from the server.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// First message when the server cannot (or was not asked to) resume.
    Snapshot {
        /// Durable revision.
        rev: u64,
        /// Text at that revision.
        text: &'a str,
        /// The connection's client id.
        client: &'a str,
        /// Last seq applied from this client id on this document (0 if none).
        seq: u64,
        /// Storage epoch: a change means the server may have lost recent ops.
        epoch: u64,
        /// Limits.
        limits: Limits,
    },
    /// First message when resuming at the client's revision; the ops after it follow.
    Resume {
        /// The revision the client asked for.
        rev: u64,
        /// The durable head revision.
        head: u64,
        /// The connection's client id.
        client: &'a str,
        /// Last seq applied from this client id on this document.
        seq: u64,
        /// Storage epoch.
        epoch: u64,
        /// Limits.
        limits: Limits,
    },
    /// An op of another client (or of this client, applied through another connection).
    Op {
        /// The revision it created.
        rev: u64,
        /// The op as applied.
        op: &'a Operation,
        /// Its client id.
        client: &'a str,
        /// Its seq.
        seq: u64,
    },
    /// The sender's op is durable as revision `rev`.
    Ack {
        /// The revision it created.
        rev: u64,
        /// Its seq.
        seq: u64,
    },
    /// Another client's cursors and selections, at revision `rev`.
    Cursor {
        /// Its client id.
        client: &'a str,
        /// The revision the ranges refer to.
        rev: u64,
        /// `[anchor, head]` pairs.
        ranges: &'a [Range],
        /// Display name, if given.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
    },
    /// A client went away.
    Leave {
        /// Its client id.
        client: &'a str,
    },
    /// A request was rejected; nothing changed.
    Error {
        /// Machine-readable code (see [`ErrorCode`]).
        code: ErrorCode,
        /// Human-readable text.
        message: &'a str,
        /// The seq of the op concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

impl ServerMessage<'_> {
    /// The JSON text of the message.
    pub fn to_text(&self) -> String {
        // Serialising these plain structures cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The fixed set of error codes (see PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON (syntax, lone surrogate escape, nesting too deep).
    InvalidJson,
    /// A binary frame: only text frames are accepted.
    BinaryFrame,
    /// The `type` field is missing or unknown.
    UnknownType,
    /// A required field is missing or has the wrong type or range.
    InvalidMessage,
    /// The `op` field is not a valid ot.js operation.
    InvalidOp,
    /// The message is larger than the server's limit.
    MessageTooLarge,
    /// The op inserts plus deletes more characters than allowed.
    OpTooLong,
    /// The op would make the document longer than allowed.
    DocTooLong,
    /// The op does not fit the document at its base revision.
    OpDoesNotFit,
    /// The base revision is newer than the document.
    FutureRevision,
    /// The base revision cannot be served.
    RevisionTooOld,
    /// The seq skips ahead of the last applied seq + 1 (or is 0).
    BadSeq,
    /// The (client, seq) was applied with a different op.
    SeqReused,
    /// The op could not be stored; it was not applied. Resync.
    StorageError,
    /// The document has too many clients.
    TooManyClients,
    /// The server is shutting down.
    ShuttingDown,
}

impl ErrorCode {
    /// The snake_case code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::InvalidOp => "invalid_op",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::OpTooLong => "op_too_long",
            ErrorCode::DocTooLong => "doc_too_long",
            ErrorCode::OpDoesNotFit => "op_does_not_fit",
            ErrorCode::FutureRevision => "future_revision",
            ErrorCode::RevisionTooOld => "revision_too_old",
            ErrorCode::BadSeq => "bad_seq",
            ErrorCode::SeqReused => "seq_reused",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::TooManyClients => "too_many_clients",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }

    /// Map a [`ot_core::history::ReceiveError`] to its wire code.
    pub fn from_receive(error: &ot_core::history::ReceiveError) -> ErrorCode {
        use ot_core::history::ReceiveError as E;
        match error {
            E::SeqReused { .. } => ErrorCode::SeqReused,
            E::BadSeq { .. } => ErrorCode::BadSeq,
            E::FutureRevision { .. } => ErrorCode::FutureRevision,
            E::RevisionTooOld { .. } => ErrorCode::RevisionTooOld,
            E::DoesNotFit { .. } => ErrorCode::OpDoesNotFit,
        }
    }
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `{"type":"op","rev":R,"seq":K,"op":[…],"ranges"?:[[a,h],…]}`
    Op {
        /// Base revision.
        rev: u64,
        /// Sequence number.
        seq: u64,
        /// The operation.
        op: Operation,
        /// The sender's selection after the op, if attached.
        ranges: Option<Vec<Range>>,
    },
    /// `{"type":"cursor","rev":R,"ranges":[[a,h],…],"name"?:"…"}`
    Cursor {
        /// The revision the ranges refer to.
        rev: u64,
        /// `[anchor, head]` pairs.
        ranges: Vec<Range>,
        /// Display name.
        name: Option<String>,
    },
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
    fn new(code: ErrorCode, message: impl Into<String>, seq: Option<u64>) -> Self {
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
pub fn parse_client_message(text: &str) -> Result<ClientMessage, Rejection> {
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
            // Read the seq first so that later errors can name it.
            let seq_hint = obj.get("seq").and_then(Value::as_u64);
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
            Ok(ClientMessage::Op {
                rev,
                seq,
                op,
                ranges,
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

/// Whether `id` is a valid document id: 1–128 characters of `[A-Za-z0-9._-]`.
pub fn valid_doc_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `id` is a valid client id: 1–64 URL-safe characters `[A-Za-z0-9_-]`.
pub fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// A new random client id: 128 random bits as 32 lowercase hex digits.
pub fn new_client_id() -> String {
    format!("{:032x}", rand::random::<u128>())
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
                ranges: Some(vec![Range::cursor(2)])
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
        assert_eq!(
            code(r#"{"type":"cursor","rev":1,"ranges":[[1]]}"#),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn ids() {
        assert!(valid_doc_id("notes.v2_final-1"));
        assert!(!valid_doc_id(""));
        assert!(!valid_doc_id("a/b"));
        assert!(!valid_doc_id(&"x".repeat(129)));
        let id = new_client_id();
        assert!(valid_client_id(&id));
        assert_ne!(id, new_client_id());
    }
}
