//! The connection table of one document: who is connected, their presence,
//! and sending to them (a full outbound queue closes that connection, 4008).
//! On storage several nodes share, also the presence of the document's
//! writers at other nodes, and this node's writers' presence sent to them
//! (`crate::presence`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use ot_core::history::AppliedOp;
use ot_core::{Operation, Range};
use ot_protocol::{ClientId, CloseCode, ErrorCode, ServerMessage};
use tokio::sync::oneshot;

use super::mailbox::JoinRequest;
use crate::metrics::Metrics;
use crate::outbound::{ack_frame, error_frame, op_frame, text_frame, Outbound};
use crate::outbound_queue::{OutboundTx, Overflow};
use crate::presence::{PresencePublisher, RemoteCursor, EXPIRE_AFTER, REFRESH_EVERY};

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

/// A writer connected at another node, as its node last told.
struct Remote {
    node: u64,
    /// At the document's durable revision.
    ranges: Vec<Range>,
    name: Option<String>,
    heard: Instant,
}

/// At most this many writers at other nodes are shown per document.
const MAX_REMOTE: usize = 1024;

pub(super) struct Connections {
    /// The document (its id; also for logs).
    doc: String,
    metrics: Arc<Metrics>,
    conns: HashMap<u64, Conn>,
    /// Writers with a cursor at other nodes, by client id.
    remote: HashMap<String, Remote>,
    /// Where this node's writers' presence goes (on shared storage).
    publisher: Option<PresencePublisher>,
    /// When this node's writers' cursors were last repeated to the others.
    refreshed: Instant,
}

impl Connections {
    pub(super) fn new(
        doc: String,
        metrics: Arc<Metrics>,
        publisher: Option<PresencePublisher>,
    ) -> Connections {
        Connections {
            doc,
            metrics,
            conns: HashMap::new(),
            remote: HashMap::new(),
            publisher,
            refreshed: Instant::now(),
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

    /// The `cursor` frame of every connection with presence, and of every
    /// writer at another node, at `rev` (for a joiner).
    pub(super) fn cursor_frames(&self, rev: u64) -> impl Iterator<Item = Outbound> + '_ {
        let local = self.conns.values().filter_map(move |conn| {
            let ranges = conn.ranges.as_ref()?;
            Some(cursor_frame(
                conn.client_id.as_str(),
                rev,
                ranges,
                conn.name.as_deref(),
            ))
        });
        let local_clients = self.online_clients();
        let remote = self
            .remote
            .iter()
            .filter(move |(client, _)| !local_clients.contains(client.as_str()))
            .map(move |(client, r)| cursor_frame(client, rev, &r.ranges, r.name.as_deref()));
        local.chain(remote).map(Outbound::Text)
    }

    /// Whether `client` has a connection here.
    fn is_local(&self, client: &str) -> bool {
        self.conns.values().any(|c| c.client_id.as_str() == client)
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
        if self.is_local(client_id.as_str()) {
            return;
        }
        if let Some(publisher) = &self.publisher {
            publisher.note(&self.doc, client_id.as_str(), None);
        }
        self.send_leave(client_id.as_str());
    }

    /// Queue a `leave` of `client` for everyone here.
    fn send_leave(&mut self, client: &str) {
        let frame = text_frame(&ServerMessage::Leave {
            client: client.into(),
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
        for remote in self.remote.values_mut() {
            remote.ranges = ot_core::transform_ranges(&remote.ranges, op);
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
        let frame = cursor_frame(conn.client_id.as_str(), rev, &ranges, conn.name.as_deref());
        if let Some(publisher) = &self.publisher {
            publisher.note(
                &self.doc,
                conn.client_id.as_str(),
                Some(remote_cursor(conn, rev, &ranges)),
            );
        }
        conn.ranges = Some(ranges);
        self.broadcast(Some(conn_id), &frame);
    }

    /// A writer at another node (`node`) has `ranges` at `rev` (the durable
    /// revision): show it here, unless that writer is also connected here
    /// (its connection here shows its own presence).
    pub(super) fn set_remote_presence(
        &mut self,
        client: String,
        node: u64,
        rev: u64,
        ranges: Vec<Range>,
        name: Option<String>,
    ) {
        if self.is_local(&client) {
            return;
        }
        if self.remote.len() >= MAX_REMOTE && !self.remote.contains_key(&client) {
            return;
        }
        let frame = cursor_frame(&client, rev, &ranges, name.as_deref());
        self.remote.insert(
            client,
            Remote {
                node,
                ranges,
                name,
                heard: Instant::now(),
            },
        );
        self.broadcast(None, &frame);
    }

    /// A writer left another node (`node`): take its cursor away here.
    pub(super) fn remote_leave(&mut self, client: &str, node: u64) {
        if self.remote.get(client).is_some_and(|r| r.node == node) {
            self.remote.remove(client);
            self.broadcast_remote_leave(client);
        }
    }

    /// Tell the writers here that `client` (of another node) is gone,
    /// unless it is connected here too.
    fn broadcast_remote_leave(&mut self, client: &str) {
        if !self.is_local(client) {
            self.send_leave(client);
        }
    }

    /// Now and then (called on every head check): repeat this node's
    /// writers' cursors (at `rev`, the durable revision) to the other nodes,
    /// and take away the cursors of other nodes' writers not heard of for
    /// [`EXPIRE_AFTER`] (their node may have stopped without a word).
    pub(super) fn refresh_presence(&mut self, rev: u64) {
        self.refresh_presence_at(rev, Instant::now());
    }

    /// [`Connections::refresh_presence`] as if it were `now`.
    fn refresh_presence_at(&mut self, rev: u64, now: Instant) {
        if let Some(publisher) = &self.publisher {
            if now.saturating_duration_since(self.refreshed) >= REFRESH_EVERY {
                self.refreshed = now;
                for conn in self.conns.values() {
                    let Some(ranges) = &conn.ranges else { continue };
                    let cursor = remote_cursor(conn, rev, ranges);
                    publisher.note(&self.doc, conn.client_id.as_str(), Some(cursor));
                }
            }
        }
        let expired: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.heard) > EXPIRE_AFTER)
            .map(|(client, _)| client.clone())
            .collect();
        for client in expired {
            self.remote.remove(&client);
            self.broadcast_remote_leave(&client);
        }
    }
}

/// `conn`'s presence (`ranges` at `rev`) as the other nodes are told it.
fn remote_cursor(conn: &Conn, rev: u64, ranges: &[Range]) -> RemoteCursor {
    RemoteCursor {
        rev,
        ranges: ranges.to_vec(),
        name: conn.name.clone(),
    }
}

/// A `cursor` message's frame.
fn cursor_frame(
    client: &str,
    rev: u64,
    ranges: &[Range],
    name: Option<&str>,
) -> axum::extract::ws::Utf8Bytes {
    text_frame(&ServerMessage::Cursor {
        client: client.into(),
        rev,
        ranges: ranges.into(),
        name: name.map(Into::into),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ot_core::history::AppliedOp;
    use ot_protocol::Access;

    use super::*;
    use crate::outbound_queue::{outbound_queue, OutboundRx};

    /// A table with one local writer, `near`, and what it is sent.
    fn table() -> (Connections, OutboundRx) {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut conns = Connections::new("d".into(), metrics, None);
        let (out, rx) = outbound_queue(100, 1 << 20);
        let (kick, _) = oneshot::channel();
        let request = JoinRequest {
            conn_id: 1,
            client_id: ClientId::parse("near").unwrap(),
            key_hash: None,
            rev: None,
            epoch: None,
            access: Access::Write,
            out,
            kick,
        };
        conns.add(request, Vec::new());
        (conns, rx)
    }

    /// The messages queued for the writer so far.
    fn sent(rx: &mut OutboundRx) -> Vec<serde_json::Value> {
        let mut messages = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            if let Outbound::Text(t) | Outbound::Broadcast(t) | Outbound::Reply(t) = frame {
                messages.push(serde_json::from_str(t.as_str()).unwrap());
            }
        }
        messages
    }

    #[test]
    fn a_remote_cursor_is_shown_moved_by_ops_given_to_joiners_and_taken_away() {
        let (mut conns, mut rx) = table();
        conns.set_remote_presence("far".into(), 9, 0, vec![Range::cursor(1)], None);
        let got = sent(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (&got[0]["type"], &got[0]["client"]),
            (&"cursor".into(), &"far".into())
        );
        // An op inserting two characters before it moves it.
        let op = Operation::insert_at(3, 0, "ab").unwrap();
        let applied = AppliedOp {
            rev: 1,
            client_id: "near".into(),
            seq: 1,
            base_rev: 0,
            hash: Default::default(),
            op,
        };
        conns.op_durable(1, &applied);
        let joiner: Vec<Outbound> = conns.cursor_frames(1).collect();
        assert_eq!(joiner.len(), 1);
        let Outbound::Text(frame) = &joiner[0] else {
            panic!("not a text frame")
        };
        let cursor: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(cursor["ranges"], serde_json::json!([[3, 3]]), "{cursor}");
        sent(&mut rx);
        // A leave from another node than the one that showed it changes nothing.
        conns.remote_leave("far", 8);
        assert!(sent(&mut rx).is_empty());
        conns.remote_leave("far", 9);
        let got = sent(&mut rx);
        assert_eq!(
            (&got[0]["type"], &got[0]["client"]),
            (&"leave".into(), &"far".into())
        );
        assert_eq!(conns.cursor_frames(1).count(), 0);
    }

    #[test]
    fn a_remote_cursor_not_repeated_expires_and_a_local_writer_is_not_shadowed() {
        let (mut conns, mut rx) = table();
        // The local writer's own cursor is shown from its connection only.
        conns.set_remote_presence("near".into(), 9, 0, vec![Range::cursor(0)], None);
        assert!(sent(&mut rx).is_empty());
        conns.set_remote_presence("far".into(), 9, 0, vec![Range::cursor(0)], None);
        sent(&mut rx);
        conns.refresh_presence_at(0, Instant::now() + EXPIRE_AFTER / 2);
        assert!(sent(&mut rx).is_empty(), "expired too early");
        conns.refresh_presence_at(0, Instant::now() + EXPIRE_AFTER + Duration::from_secs(1));
        let got = sent(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (&got[0]["type"], &got[0]["client"]),
            (&"leave".into(), &"far".into())
        );
    }
}
