//! The connection table of one document: who is connected, their presence,
//! and sending to them (a full outbound queue closes that connection, 4008).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ot_core::history::AppliedOp;
use ot_core::{Operation, Range};
use ot_protocol::{ClientId, CloseCode, ErrorCode, ServerMessage};
use tokio::sync::oneshot;

use super::mailbox::JoinRequest;
use crate::metrics::Metrics;
use crate::outbound::{ack_frame, error_frame, op_frame, text_frame, Outbound};
use crate::outbound_queue::{OutboundTx, Overflow};

struct Conn {
    client_id: ClientId,
    name: Option<String>,
    out: OutboundTx,
    kick: Option<oneshot::Sender<CloseCode>>,
    /// Presence, at the document's durable revision.
    ranges: Option<Vec<Range>>,
}

impl Conn {
    fn close(&mut self, code: CloseCode) {
        if let Some(kick) = self.kick.take() {
            let _ = kick.send(code);
        }
    }
}

pub(super) struct Connections {
    /// The document, for logs.
    doc: String,
    metrics: Arc<Metrics>,
    conns: HashMap<u64, Conn>,
}

impl Connections {
    pub(super) fn new(doc: String, metrics: Arc<Metrics>) -> Connections {
        Connections {
            doc,
            metrics,
            conns: HashMap::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    /// The client id of connection `conn_id`, if it is still connected.
    pub(super) fn client_id(&self, conn_id: u64) -> Option<ClientId> {
        self.conns.get(&conn_id).map(|c| c.client_id.clone())
    }

    /// Close every other connection of this writer (4009): a second connection
    /// of the same writer replaces the first.
    pub(super) fn replace(&mut self, client_id: &ClientId) {
        self.conns.retain(|_, c| {
            if c.client_id == *client_id {
                c.close(CloseCode::Replaced);
                false
            } else {
                true
            }
        });
    }

    /// The `cursor` frame of every connection with presence, at `rev` (for a joiner).
    pub(super) fn cursor_frames(&self, rev: u64) -> impl Iterator<Item = Outbound> + '_ {
        self.conns.values().filter_map(move |conn| {
            let ranges = conn.ranges.as_ref()?;
            Some(Outbound::Text(text_frame(&ServerMessage::Cursor {
                client: conn.client_id.as_str().into(),
                rev,
                ranges: ranges.into(),
                name: conn.name.as_deref().map(Into::into),
            })))
        })
    }

    /// Queue `frames` for a joiner and register it for live messages; if they
    /// do not fit its queue, close it (4008) instead.
    pub(super) fn add(&mut self, request: JoinRequest, frames: Vec<Outbound>) {
        for frame in frames {
            if let Err(overflow) = request.out.try_send(frame) {
                self.count_overflow(overflow);
                let _ = request.kick.send(CloseCode::TooSlow);
                return;
            }
        }
        self.conns.insert(
            request.conn_id,
            Conn {
                client_id: request.client_id,
                name: None,
                out: request.out,
                kick: Some(request.kick),
                ranges: None,
            },
        );
    }

    /// Connection `conn_id` left.
    pub(super) fn remove(&mut self, conn_id: u64) {
        if let Some(conn) = self.conns.remove(&conn_id) {
            self.broadcast_leave(&conn.client_id);
        }
    }

    /// Close connection `conn_id` with `code` (its writer drains what is queued first).
    pub(super) fn close(&mut self, conn_id: u64, code: CloseCode) {
        if let Some(mut conn) = self.conns.remove(&conn_id) {
            conn.close(code);
            self.broadcast_leave(&conn.client_id);
        }
    }

    /// The client ids with a connection here.
    pub(super) fn online_clients(&self) -> HashSet<String> {
        self.conns
            .values()
            .map(|c| c.client_id.as_str().to_owned())
            .collect()
    }

    /// Close every connection with `code` (its writer drains what is queued first).
    pub(super) fn close_all(&mut self, code: CloseCode) {
        for conn in self.conns.values_mut() {
            conn.close(code);
        }
        self.conns.clear();
    }

    /// Drop every connection: each writer drains what is queued, then closes.
    pub(super) fn clear(&mut self) {
        self.conns.clear();
    }

    /// Tell the others that `client_id` left, once its last connection is gone.
    fn broadcast_leave(&mut self, client_id: &ClientId) {
        if self.conns.values().any(|c| c.client_id == *client_id) {
            return;
        }
        let frame = text_frame(&ServerMessage::Leave {
            client: client_id.as_str().into(),
        });
        self.broadcast(None, &frame);
    }

    /// Queue `frame` as a broadcast for everyone.
    pub(super) fn broadcast_text(&mut self, frame: &axum::extract::ws::Utf8Bytes) {
        self.broadcast(None, frame);
    }

    /// Queue `frame` as a broadcast for everyone but `except`.
    fn broadcast(&mut self, except: Option<u64>, frame: &axum::extract::ws::Utf8Bytes) {
        let ids: Vec<u64> = self
            .conns
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        for id in ids {
            self.send(id, Outbound::Broadcast(frame.clone()));
        }
    }

    /// Queue a frame for a connection; a full queue (in messages or bytes)
    /// closes it (4008).
    pub(super) fn send(&mut self, conn_id: u64, frame: Outbound) {
        let overflowed = match self.conns.get(&conn_id) {
            Some(conn) => conn.out.try_send(frame).err(),
            None => None,
        };
        if let Some(overflow) = overflowed {
            self.count_overflow(overflow);
            if let Some(mut conn) = self.conns.remove(&conn_id) {
                if overflow != Overflow::Closed {
                    tracing::info!(doc = %self.doc, client = %conn.client_id, %overflow, "closing a client that does not keep up");
                }
                conn.close(CloseCode::TooSlow);
                self.broadcast_leave(&conn.client_id);
            }
        }
    }

    /// Count an overflow in `ot_connection_limits_total{reason}` (a
    /// connection that is gone is no overflow).
    fn count_overflow(&self, overflow: Overflow) {
        let reason = match overflow {
            Overflow::Messages => "queue_messages",
            Overflow::Bytes => "queue_bytes",
            Overflow::Closed => return,
        };
        self.metrics.refused.with_label_values(&[reason]).inc();
    }

    /// Send an error; one that names a seq answers that op ([`Outbound::Reply`]).
    pub(super) fn send_error(
        &mut self,
        conn_id: u64,
        code: ErrorCode,
        message: &str,
        seq: Option<u64>,
    ) {
        let frame = error_frame(&self.metrics, code, message, seq);
        let outbound = match seq {
            Some(_) => Outbound::Reply(frame),
            None => Outbound::Text(frame),
        };
        self.send(conn_id, outbound);
    }

    /// Ack the op `seq` at revision `rev` to `conn_id`.
    pub(super) fn ack(&mut self, conn_id: u64, rev: u64, seq: u64) {
        self.send(conn_id, Outbound::Reply(ack_frame(rev, seq)));
    }

    /// A durable op: move everyone's presence past it, ack it to its sender
    /// (`conn_id`) and send it to everyone else.
    pub(super) fn op_durable(&mut self, conn_id: u64, applied: &AppliedOp) {
        self.transform_presence(&applied.op);
        // Serialised once, only if someone else is connected.
        let mut op_text = None;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let frame = if id == conn_id {
                Outbound::Reply(ack_frame(applied.rev, applied.seq))
            } else {
                Outbound::Broadcast(op_text.get_or_insert_with(|| op_frame(applied)).clone())
            };
            self.send(id, frame);
        }
    }

    fn transform_presence(&mut self, op: &Operation) {
        for conn in self.conns.values_mut() {
            if let Some(ranges) = conn.ranges.as_mut() {
                *ranges = ot_core::transform_ranges(ranges, op);
            }
        }
    }

    /// Set `conn_id`'s presence (`ranges` at `rev`, the durable revision) and
    /// send it to the others.
    pub(super) fn set_presence(
        &mut self,
        conn_id: u64,
        rev: u64,
        ranges: Vec<Range>,
        name: Option<String>,
    ) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if name.is_some() {
            conn.name = name;
        }
        conn.ranges = Some(ranges);
        let frame = text_frame(&ServerMessage::Cursor {
            client: conn.client_id.as_str().into(),
            rev,
            ranges: conn.ranges.as_deref().unwrap_or(&[]).into(),
            name: conn.name.as_deref().map(Into::into),
        });
        self.broadcast(Some(conn_id), &frame);
    }
}
