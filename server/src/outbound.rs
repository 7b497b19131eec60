//! Everything the server sends a connection, built in one place: the items of
//! a connection's outbound queue, the frames (ops, acks, errors), and close frames.

use std::borrow::Cow;

use axum::extract::ws::{CloseFrame, Utf8Bytes};
use ot_core::history::AppliedOp;
use ot_protocol::{CloseCode, ErrorCode, ServerMessage};

use crate::metrics::Metrics;
use crate::storage::StoredOp;

/// An item of a connection's bounded outbound queue; the connection's writer
/// drains it.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A ready JSON text frame, written as soon as the writer gets to it.
    Text(Utf8Bytes),
    /// The answer to one of this client's own ops: its ack, or an error about it.
    Reply(Utf8Bytes),
    /// Another client's op, cursor or leave. The writer may hold it (up to
    /// its `BROADCAST_HOLD`, 2 ms) to write it together with an awaited
    /// [`Outbound::Reply`] or with what follows a recent write.
    Broadcast(Utf8Bytes),
    /// Read the ops with revisions `after+1 ..= upto` from storage and send them
    /// (a resume from before the in-memory window).
    CatchUp {
        /// Last revision the client has.
        after: u64,
        /// Last revision to send from storage.
        upto: u64,
    },
}

impl Outbound {
    /// The frame's text, or the item itself if it is not a frame.
    pub(crate) fn into_text(self) -> Result<Utf8Bytes, Outbound> {
        match self {
            Outbound::Text(text) | Outbound::Reply(text) | Outbound::Broadcast(text) => Ok(text),
            other => Err(other),
        }
    }
}

/// A server message as a text frame.
pub(crate) fn text_frame(message: &ServerMessage<'_>) -> Utf8Bytes {
    Utf8Bytes::from(message.to_text())
}

/// An `error` frame; counts it in `ot_errors_total{code}`. Every error the
/// server sends on a WebSocket is built here.
pub(crate) fn error_frame(
    metrics: &Metrics,
    code: ErrorCode,
    message: &str,
    seq: Option<u64>,
) -> Utf8Bytes {
    metrics.errors.with_label_values(&[code.as_str()]).inc();
    text_frame(&ServerMessage::Error {
        code: code.into(),
        message: message.into(),
        seq,
    })
}

/// The `ack` frame for the op `seq` that became revision `rev`.
pub(crate) fn ack_frame(rev: u64, seq: u64) -> Utf8Bytes {
    text_frame(&ServerMessage::Ack { rev, seq })
}

/// The `op` frame for an applied op.
pub(crate) fn op_frame(applied: &AppliedOp) -> Utf8Bytes {
    text_frame(&ServerMessage::Op {
        rev: applied.rev,
        op: Cow::Borrowed(&applied.op),
        client: applied.client_id.as_ref().into(),
        seq: applied.seq,
    })
}

/// The `op` frame for a stored op (catch-up from storage).
pub(crate) fn stored_op_frame(stored: &StoredOp) -> Utf8Bytes {
    text_frame(&ServerMessage::Op {
        rev: stored.rev,
        op: Cow::Borrowed(&stored.applied),
        client: stored.client_id.as_str().into(),
        seq: stored.seq,
    })
}

/// The close frame for `code`, with the protocol's reason text.
pub(crate) fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from_static(code.reason()),
    }
}
