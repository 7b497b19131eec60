//! Error codes, close codes, and what a client does with each (PROTOCOL.md,
//! "Error codes" and "Close codes").

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// The error codes this version of the protocol defines. Later versions
        /// may add codes: a client reads an `error` frame's code as [`Code`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum ErrorCode {
            $($(#[$doc])* #[serde(rename = $text)] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in PROTOCOL.md's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The snake_case code as sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The code named `text`, if this version knows it.
            pub fn from_name(text: &str) -> Option<ErrorCode> {
                match text {
                    $($text => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// The frame is not valid JSON (syntax, lone surrogate escape, nesting too deep).
    InvalidJson = "invalid_json",
    /// A binary frame: only text frames are accepted.
    BinaryFrame = "binary_frame",
    /// The `type` field is missing or unknown.
    UnknownType = "unknown_type",
    /// A required field is missing or has the wrong type or range.
    InvalidMessage = "invalid_message",
    /// The `op` field is not a valid ot.js operation.
    InvalidOp = "invalid_op",
    /// The message is larger than the server's limit.
    MessageTooLarge = "message_too_large",
    /// The op inserts plus deletes more characters than allowed.
    OpTooLong = "op_too_long",
    /// The op has more components than `limits.max_op_components`.
    TooManyComponents = "too_many_components",
    /// The op would make the document longer than allowed.
    DocTooLong = "doc_too_long",
    /// The op does not fit the document at its base revision.
    OpDoesNotFit = "op_does_not_fit",
    /// The base revision is newer than the document.
    FutureRevision = "future_revision",
    /// The base revision cannot be served.
    RevisionTooOld = "revision_too_old",
    /// The seq skips ahead of the last applied seq + 1 (or is 0).
    BadSeq = "bad_seq",
    /// The (client, seq) was applied with a different op.
    SeqReused = "seq_reused",
    /// The op could not be stored; it was not applied. Reconnect and resend it.
    StorageError = "storage_error",
    /// The document has too many clients.
    TooManyClients = "too_many_clients",
    /// The server is shutting down.
    ShuttingDown = "shutting_down",
    /// The connection's access does not allow this (an op on a read-only connection).
    Forbidden = "forbidden",
    /// The server no longer remembers this client id (its dedup record was
    /// evicted after `--client-expiry` of inactivity) and the op is based on a
    /// revision before the eviction: it may be a resend of an op already
    /// applied, so it is never applied. Resync; pending edits are rebased or
    /// kept as a conflict copy.
    ClientExpired = "client_expired",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ErrorCode {
    /// Map a [`ot_core::history::ReceiveError`] to its wire code.
    pub fn from_receive(error: &ot_core::history::ReceiveError) -> ErrorCode {
        use ot_core::history::ReceiveError as E;
        match error {
            E::SeqReused { .. } => ErrorCode::SeqReused,
            E::BadSeq { .. } => ErrorCode::BadSeq,
            E::FutureRevision { .. } => ErrorCode::FutureRevision,
            E::RevisionTooOld { .. } => ErrorCode::RevisionTooOld,
            E::DoesNotFit { .. } => ErrorCode::OpDoesNotFit,
            E::ClientExpired { .. } => ErrorCode::ClientExpired,
        }
    }
}

/// An error frame's code as a client reads it: one it knows, or one a later
/// server version added (kept as sent, for display).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Code {
    /// A code of this version.
    Known(ErrorCode),
    /// A code this version does not know.
    Unknown(String),
}

impl Code {
    /// The code as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Known(code) => code.as_str(),
            Code::Unknown(text) => text,
        }
    }
}

impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Self {
        Code::Known(code)
    }
}

impl PartialEq<ErrorCode> for Code {
    fn eq(&self, other: &ErrorCode) -> bool {
        *self == Code::Known(*other)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match ErrorCode::from_name(&text) {
            Some(code) => Code::Known(code),
            None => Code::Unknown(text),
        })
    }
}

/// What a client does about an `error` frame (the one error rule, PROTOCOL.md
/// "What a client does with an error").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorAction {
    /// The error names the outstanding op and it was not applied for a
    /// passing reason (`storage_error`): reconnect with `rev` after backoff
    /// and resend the op byte-for-byte (the server's dedup answers it with
    /// the original ack if it was applied after all).
    Resend,
    /// The error names the outstanding op, which the server will never take
    /// (every other code, unknown ones included): keep the local text as a
    /// conflict copy and resync from a snapshot.
    ConflictCopy,
    /// The error names no op, or another seq (a stale resend): show it, change nothing.
    Ignore,
}

impl ErrorAction {
    /// The rule: what to do about `code`, given whether the error's `seq` is
    /// the seq of the op the client has outstanding.
    pub fn for_error(code: &Code, names_outstanding_op: bool) -> ErrorAction {
        match (names_outstanding_op, code) {
            (false, _) => ErrorAction::Ignore,
            (true, Code::Known(ErrorCode::StorageError)) => ErrorAction::Resend,
            (true, _) => ErrorAction::ConflictCopy,
        }
    }
}

/// What a client does when the server closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseAction {
    /// Reconnect after backoff (with `rev`, resuming).
    Reconnect,
    /// Do not reconnect: another instance of this writer runs, or the client
    /// itself is broken; tell the user.
    Stop,
    /// The connection's token expired or was revoked: keep every unsent edit,
    /// tell the user, and reconnect with `rev` once there is a new token.
    Reauthenticate,
    /// The document was deleted: reconnect without `rev`; an unsent op of the
    /// old document is kept as a conflict copy, never sent to the new one.
    Resync,
}

macro_rules! close_codes {
    ($($(#[$doc:meta])* $variant:ident = ($code:literal, $action:ident, $reason:literal),)*) => {
        /// The close codes the server sends.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CloseCode {
            $($(#[$doc])* $variant,)*
        }

        impl CloseCode {
            /// Every close code the server sends, in PROTOCOL.md's order.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$variant,)*];

            /// The numeric code.
            pub fn code(self) -> u16 {
                match self {
                    $(CloseCode::$variant => $code,)*
                }
            }

            /// The close reason text the server sends with it.
            pub fn reason(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => $reason,)*
                }
            }

            /// What a client does when closed with it.
            pub fn action(self) -> CloseAction {
                match self {
                    $(CloseCode::$variant => CloseAction::$action,)*
                }
            }

            /// The close code numbered `code`, if this version knows it.
            pub fn from_code(code: u16) -> Option<CloseCode> {
                match code {
                    $($code => Some(CloseCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

close_codes! {
    /// A normal close.
    Normal = (1000, Reconnect, "normal close"),
    /// The server is shutting down (after acking every op it accepted).
    GoingAway = (1001, Reconnect, "server shutting down"),
    /// A text frame that is not valid UTF-8.
    InvalidUtf8 = (1007, Stop, "a text frame was not valid UTF-8"),
    /// Too many invalid messages in a row.
    Abusive = (1008, Stop, "too many invalid messages"),
    /// A message beyond the hard size limit.
    TooBig = (1009, Stop, "message too large"),
    /// The document could not be opened; retry later.
    Unavailable = (1011, Reconnect, "the document is unavailable; retry later"),
    /// The document has too many clients; retry later.
    Full = (1013, Reconnect, "too many clients on this document; retry later"),
    /// The connection's token expired or was revoked (PROTOCOL.md "Access").
    TokenExpired = (4001, Reauthenticate, "access expired or revoked: get a new token, then reconnect with rev"),
    /// The document was deleted by an admin.
    DocumentDeleted = (4004, Resync, "the document was deleted: reconnect without rev"),
    /// The client's outbound queue overflowed; reconnect with `rev`.
    TooSlow = (4008, Reconnect, "too slow: outbound queue overflowed; reconnect with rev"),
    /// A newer connection with the same client id replaced this one.
    Replaced = (4009, Stop, "replaced by a newer connection with the same client id"),
}

/// What a client does when closed with `code` (or with no close frame:
/// `None`, a lost connection). Unknown codes in 4000–4999 are handled like
/// 1011 (reconnect with backoff); other unknown codes too, except 1002 and
/// 1003 (the client broke the protocol) which stop.
pub fn close_action(code: Option<u16>) -> CloseAction {
    match code {
        None => CloseAction::Reconnect,
        Some(code) => match CloseCode::from_code(code) {
            Some(known) => known.action(),
            None if matches!(code, 1002 | 1003) => CloseAction::Stop,
            None => CloseAction::Reconnect,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_by_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(*code));
            let json = serde_json::to_string(code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: Code = serde_json::from_str(&json).unwrap_or(Code::Unknown(String::new()));
            assert_eq!(back, Code::Known(*code));
        }
        let later: Code = serde_json::from_str(r#""quota_exceeded""#)
            .unwrap_or(Code::Known(ErrorCode::InvalidJson));
        assert_eq!(later, Code::Unknown("quota_exceeded".into()));
    }

    #[test]
    fn the_error_rule() {
        let storage = Code::Known(ErrorCode::StorageError);
        assert_eq!(ErrorAction::for_error(&storage, true), ErrorAction::Resend);
        assert_eq!(ErrorAction::for_error(&storage, false), ErrorAction::Ignore);
        for code in ErrorCode::ALL
            .iter()
            .filter(|c| **c != ErrorCode::StorageError)
        {
            let code = Code::Known(*code);
            assert_eq!(
                ErrorAction::for_error(&code, true),
                ErrorAction::ConflictCopy
            );
            assert_eq!(ErrorAction::for_error(&code, false), ErrorAction::Ignore);
        }
        let unknown = Code::Unknown("later".into());
        assert_eq!(
            ErrorAction::for_error(&unknown, true),
            ErrorAction::ConflictCopy
        );
        assert_eq!(ErrorAction::for_error(&unknown, false), ErrorAction::Ignore);
    }

    #[test]
    fn close_rules() {
        assert_eq!(close_action(Some(4009)), CloseAction::Stop);
        assert_eq!(close_action(Some(4008)), CloseAction::Reconnect);
        assert_eq!(close_action(Some(4321)), close_action(Some(1011)));
        assert_eq!(close_action(Some(1011)), CloseAction::Reconnect);
        assert_eq!(close_action(None), CloseAction::Reconnect);
        assert_eq!(close_action(Some(1007)), CloseAction::Stop);
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(*code));
        }
    }
}
