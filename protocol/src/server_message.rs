//! Server → client messages: written by the server, read by every client.
//!
//! Clients read them by the rules of PROTOCOL.md ("Reading server messages"):
//! unknown fields are ignored, an unknown message type is
//! [`ServerMessage::Unknown`] (skipped), an unknown error code is kept as
//! [`Code::Unknown`], and an integer above 2^53−1 is an error.

use std::borrow::Cow;

use ot_core::{Operation, Range};
use serde::{Deserialize, Serialize};

use crate::access::Access;
use crate::codes::Code;
use crate::numbers::{safe_opt_u64, safe_u64};

/// Limits announced to clients in the first message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Most characters a document may hold.
    pub max_doc_len: usize,
    /// Most characters one op may insert plus delete.
    pub max_op_len: usize,
    /// Most bytes one client message may have (`message_too_large` beyond).
    /// Absent from servers before it was announced: then the default.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most components (retains, inserts, deletes) one op may have
    /// (`too_many_components` beyond). Absent from servers before it was
    /// announced: then the default, which clients keep to anyway.
    #[serde(default = "default_max_op_components")]
    pub max_op_components: usize,
}

fn default_max_message_bytes() -> usize {
    Limits::default().max_message_bytes
}

fn default_max_op_components() -> usize {
    Limits::default().max_op_components
}

impl Default for Limits {
    /// The server's defaults.
    fn default() -> Self {
        Limits {
            max_doc_len: 10_000_000,
            max_op_len: 100_000,
            max_message_bytes: 1 << 20,
            max_op_components: 10_000,
        }
    }
}

impl Limits {
    /// The largest frame a server with these limits sends: a snapshot of a
    /// full document, every character escaped (`\u001f`, 6 bytes), plus room
    /// for the other fields. A client sizes its frame limit by this.
    pub fn max_server_frame_bytes(&self) -> usize {
        self.max_doc_len.saturating_mul(6).saturating_add(1 << 20)
    }
}

/// A message from the server. Borrowed where the server writes it (no copies
/// of texts and ops on the hot path); owned (`ServerMessage<'static>`) where a
/// client reads it with [`ServerMessage::parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// First message when the server cannot (or was not asked to) resume.
    Snapshot {
        /// Durable revision.
        #[serde(deserialize_with = "safe_u64")]
        rev: u64,
        /// Text at that revision.
        text: Cow<'a, str>,
        /// The connection's client id.
        client: Cow<'a, str>,
        /// Last seq applied from this client id on this document (0 if none).
        #[serde(deserialize_with = "safe_u64")]
        seq: u64,
        /// Storage epoch: a change means the server may have lost recent ops.
        #[serde(deserialize_with = "safe_u64")]
        epoch: u64,
        /// Limits.
        limits: Limits,
        /// What this connection may do (absent from servers before access
        /// levels: [`Access::Write`]).
        #[serde(default)]
        access: Access,
        /// For a regional link (an `r-…` client id) only: the hash of the op
        /// `seq` names, as received (32 hex digits), when the server has it
        /// at hand; the link tells from it whether its own data is older
        /// than what the server has seen from it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_hash: Option<Cow<'a, str>>,
    },
    /// First message when resuming at the client's revision; the ops after it follow.
    Resume {
        /// The revision the client asked for.
        #[serde(deserialize_with = "safe_u64")]
        rev: u64,
        /// The durable head revision.
        #[serde(deserialize_with = "safe_u64")]
        head: u64,
        /// The connection's client id.
        client: Cow<'a, str>,
        /// Last seq applied from this client id on this document.
        #[serde(deserialize_with = "safe_u64")]
        seq: u64,
        /// Storage epoch.
        #[serde(deserialize_with = "safe_u64")]
        epoch: u64,
        /// Limits.
        limits: Limits,
        /// What this connection may do (absent from servers before access
        /// levels: [`Access::Write`]).
        #[serde(default)]
        access: Access,
        /// For a regional link (an `r-…` client id) only: the hash of the op
        /// `seq` names, as received (32 hex digits), when the server has it
        /// at hand; the link tells from it whether its own data is older
        /// than what the server has seen from it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_hash: Option<Cow<'a, str>>,
    },
    /// An op of another client (or of this client, applied through another connection).
    Op {
        /// The revision it created.
        #[serde(deserialize_with = "safe_u64")]
        rev: u64,
        /// The op as applied.
        op: Cow<'a, Operation>,
        /// Its client id.
        client: Cow<'a, str>,
        /// Its seq.
        #[serde(deserialize_with = "safe_u64")]
        seq: u64,
    },
    /// The sender's op is durable as revision `rev`.
    Ack {
        /// The revision it created.
        #[serde(deserialize_with = "safe_u64")]
        rev: u64,
        /// Its seq.
        #[serde(deserialize_with = "safe_u64")]
        seq: u64,
    },
    /// Another client's cursors and selections, at revision `rev`.
    Cursor {
        /// Its client id.
        client: Cow<'a, str>,
        /// The revision the ranges refer to.
        #[serde(deserialize_with = "safe_u64")]
        rev: u64,
        /// `[anchor, head]` pairs.
        ranges: Cow<'a, [Range]>,
        /// Display name, if given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<Cow<'a, str>>,
    },
    /// A client went away.
    Leave {
        /// Its client id.
        client: Cow<'a, str>,
    },
    /// A request was rejected; nothing changed.
    Error {
        /// Machine-readable code.
        code: Code,
        /// Human-readable text.
        message: Cow<'a, str>,
        /// The seq of the op concerned, if any.
        #[serde(
            default,
            deserialize_with = "safe_opt_u64",
            skip_serializing_if = "Option::is_none"
        )]
        seq: Option<u64>,
    },
    /// The answer to a client's `ping`: the connection is alive.
    Pong,
    /// From a regional server only: every local op up to revision `rev` is
    /// acknowledged by the document's home (below the head: some are saved
    /// at the region but not yet replicated).
    Replicated {
        /// The revision.
        #[serde(deserialize_with = "safe_u64")]
        rev: u64,
    },
    /// Several of the messages above in one frame, in the order they would
    /// have been sent one by one; sent only to a connection that asked with
    /// `batch=1`. A client handles them in order exactly as if each had come
    /// in a frame of its own ([`ServerMessage::into_messages`]).
    Batch {
        /// The messages, in order (never a batch).
        messages: Vec<ServerMessage<'a>>,
    },
    /// A message type this version does not know (a later server's): skipped.
    /// Never sent.
    #[serde(other)]
    Unknown,
}

impl<'a> ServerMessage<'a> {
    /// The messages this one stands for, in order: a batch's elements (a
    /// batch inside a batch, which no server sends, is read the same way),
    /// or the message itself.
    pub fn into_messages(self) -> Vec<ServerMessage<'a>> {
        match self {
            ServerMessage::Batch { messages } => messages
                .into_iter()
                .flat_map(ServerMessage::into_messages)
                .collect(),
            message => vec![message],
        }
    }
}

/// Why a server frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the server sent a message that cannot be read: {0}")]
pub struct FrameError(#[from] serde_json::Error);

impl ServerMessage<'_> {
    /// Every message type, as in the `type` field ([`ServerMessage::Unknown`] aside).
    pub const TYPES: &'static [&'static str] = &[
        "snapshot",
        "resume",
        "op",
        "ack",
        "cursor",
        "leave",
        "error",
        "pong",
        "replicated",
        "batch",
    ];

    /// The JSON text of the message.
    pub fn to_text(&self) -> String {
        // Serialising these plain structures cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// The `type` field (`"unknown"` for [`ServerMessage::Unknown`]).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Snapshot { .. } => "snapshot",
            ServerMessage::Resume { .. } => "resume",
            ServerMessage::Op { .. } => "op",
            ServerMessage::Ack { .. } => "ack",
            ServerMessage::Cursor { .. } => "cursor",
            ServerMessage::Leave { .. } => "leave",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Pong => "pong",
            ServerMessage::Replicated { .. } => "replicated",
            ServerMessage::Batch { .. } => "batch",
            ServerMessage::Unknown => "unknown",
        }
    }

    /// Read one text frame from the server (a client's side). The most
    /// frequent frames (`op`, `ack`, `batch`, as the server writes them) are
    /// read without serde's buffering (`fast_read.rs`), by the same rules.
    pub fn parse(text: &str) -> Result<ServerMessage<'static>, FrameError> {
        if let Some(read) = crate::fast_read::parse(text) {
            return read;
        }
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::ErrorCode;

    fn parse(text: &str) -> ServerMessage<'static> {
        match ServerMessage::parse(text) {
            Ok(message) => message,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn round_trips() {
        let op = Operation::from_json(r#"[1,"é",-1]"#).unwrap_or_default();
        let ranges = [Range::cursor(2)];
        let messages = [
            ServerMessage::Op {
                rev: 3,
                op: Cow::Borrowed(&op),
                client: "c".into(),
                seq: 2,
            },
            ServerMessage::Cursor {
                client: "c".into(),
                rev: 3,
                ranges: Cow::Borrowed(&ranges),
                name: Some("Ann".into()),
            },
            ServerMessage::Error {
                code: ErrorCode::BadSeq.into(),
                message: "no".into(),
                seq: None,
            },
        ];
        for message in messages {
            assert_eq!(parse(&message.to_text()), message);
        }
    }

    #[test]
    fn reading_rules() {
        // Unknown fields are ignored, unknown types skipped, unknown codes kept.
        assert_eq!(
            parse(r#"{"type":"ack","rev":4,"seq":2,"later":{"x":[1]}}"#),
            ServerMessage::Ack { rev: 4, seq: 2 }
        );
        assert_eq!(
            parse(r#"{"type":"presence_v2","x":1}"#),
            ServerMessage::Unknown
        );
        assert!(matches!(
            parse(r#"{"type":"error","code":"quota","message":"m","seq":3}"#),
            ServerMessage::Error { code: Code::Unknown(c), seq: Some(3), .. } if c == "quota"
        ));
        // An old server's limits (no max_message_bytes) read with the default.
        let old = parse(
            r#"{"type":"resume","rev":1,"head":2,"client":"c","seq":0,"epoch":0,"limits":{"max_doc_len":5,"max_op_len":6}}"#,
        );
        assert!(matches!(old, ServerMessage::Resume { limits, .. }
            if limits.max_message_bytes == Limits::default().max_message_bytes && limits.max_doc_len == 5));
    }

    #[test]
    fn unsafe_integers_are_refused() {
        for text in [
            r#"{"type":"ack","rev":9007199254740992,"seq":1}"#,
            r#"{"type":"ack","rev":18446744073709551616,"seq":1}"#,
            r#"{"type":"ack","rev":1,"seq":-1}"#,
            r#"{"type":"ack","rev":1.5,"seq":1}"#,
            r#"{"type":"error","code":"bad_seq","message":"","seq":9007199254740992}"#,
            r#"{"type":"op","rev":1,"seq":1,"client":"c","op":[9007199254740992]}"#,
            r#"{"rev":1}"#,
            r#"[]"#,
        ] {
            assert!(ServerMessage::parse(text).is_err(), "{text}");
        }
        assert_eq!(
            parse(r#"{"type":"ack","rev":9007199254740991,"seq":1}"#),
            ServerMessage::Ack {
                rev: (1 << 53) - 1,
                seq: 1
            }
        );
    }

    #[test]
    fn a_batch_stands_for_its_messages_in_order() {
        let text = r#"{"type":"batch","messages":[
            {"type":"op","rev":4,"op":["a"],"client":"b","seq":1},
            {"type":"ack","rev":5,"seq":2},
            {"type":"later_kind","x":1},
            {"type":"batch","messages":[{"type":"leave","client":"b"}]},
            {"type":"cursor","client":"b","rev":5,"ranges":[[1,1]]}
        ]}"#;
        let kinds: Vec<&str> = parse(text)
            .into_messages()
            .iter()
            .map(ServerMessage::kind)
            .collect();
        assert_eq!(kinds, ["op", "ack", "unknown", "leave", "cursor"]);
        // A plain message stands for itself; an element that breaks the
        // reading rules makes the whole frame unreadable.
        assert_eq!(
            parse(r#"{"type":"pong"}"#).into_messages(),
            [ServerMessage::Pong]
        );
        assert!(ServerMessage::parse(
            r#"{"type":"batch","messages":[{"type":"ack","rev":-1,"seq":1}]}"#
        )
        .is_err());
        assert!(ServerMessage::parse(r#"{"type":"batch"}"#).is_err());
        // Written by the server: the elements' own texts, spliced.
        let batch = ServerMessage::Batch {
            messages: vec![ServerMessage::Ack { rev: 5, seq: 2 }, ServerMessage::Pong],
        };
        assert_eq!(
            batch.to_text(),
            r#"{"type":"batch","messages":[{"type":"ack","rev":5,"seq":2},{"type":"pong"}]}"#
        );
    }
}
