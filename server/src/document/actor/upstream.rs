//! A region's document actor toward the home: where the link resumes, what
//! the home's messages do to the regional document, and what goes upstream
//! once it is durable. The link task ([`super::super::link`]) only carries
//! frames; every decision is the [`RegionalDocument`]'s, driven from here.
//!
//! [`RegionalDocument`]: ot_core::region::RegionalDocument

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ot_core::history::OpHash;
use ot_core::region::{HomeSnapshot, RegionError, SnapshotAdoption, UpstreamOutcome};
use ot_protocol::{op_message_text, CloseCode, DocId, OpOrigin, ServerMessage};
use tokio::sync::{mpsc, oneshot};

use super::super::link::{self, LinkEvent, LinkOut};
use super::super::mailbox::DocCommand;
use super::super::replication::ReplicationStatus;
use super::Document;
use crate::outbound::{text_frame, Outbound};
use crate::state::Services;

/// The actor's side of the link.
pub(super) struct LinkState {
    out: mpsc::UnboundedSender<LinkOut>,
    /// The connection whose first message was taken (0: none yet).
    conn: u64,
    /// The next connection asks for a snapshot rather than a resume (the
    /// home's answer did not fit the link, or the document was deleted).
    want_snapshot: bool,
    /// The current connection was resumed (or resynced) by the home.
    connected: bool,
    /// The current connection is being dropped (its resume did not fit, or
    /// a resync was asked): what still arrives on it is not taken.
    dropping: bool,
    /// When local ops not yet known to be replicated became durable here:
    /// (regional revision, when), oldest first.
    waiting_since: VecDeque<(u64, Instant)>,
    /// What this document adds to `ot_region_unreplicated_ops` now.
    reported_waiting: i64,
    /// The `replicated` revision last told the local clients.
    announced: Option<u64>,
    shared: Arc<Services>,
}

impl LinkState {
    /// Start the link task of document `id`.
    pub(super) fn start(
        shared: Arc<Services>,
        mailbox: mpsc::WeakSender<DocCommand>,
        id: DocId,
    ) -> LinkState {
        LinkState {
            out: link::spawn(shared.clone(), mailbox, id),
            conn: 0,
            want_snapshot: false,
            connected: false,
            dropping: false,
            waiting_since: VecDeque::new(),
            reported_waiting: 0,
            announced: None,
            shared,
        }
    }

    /// Drop the current connection; the next one resumes from the state
    /// the document has then.
    pub(super) fn reconnect(&mut self) {
        let _ = self.out.send(LinkOut::Reconnect { conn: self.conn });
    }

    /// The connection is up (`true`) or gone: counted in
    /// `ot_region_links_connected`.
    fn set_connected(&mut self, connected: bool) {
        if self.connected != connected {
            self.connected = connected;
            let gauge = &self.shared.metrics.region_links_connected;
            match connected {
                true => gauge.inc(),
                false => gauge.dec(),
            }
        }
    }

    /// A local op became durable as regional revision `rev`.
    pub(super) fn local_durable(&mut self, rev: u64) {
        self.waiting_since.push_back((rev, Instant::now()));
    }

    /// Forget the local ops up to `replicated_rev`, and report how many
    /// wait (`ops_waiting`) in `ot_region_unreplicated_ops`.
    fn replicated_up_to(&mut self, replicated_rev: u64, ops_waiting: usize) {
        while self
            .waiting_since
            .front()
            .is_some_and(|(rev, _)| *rev <= replicated_rev)
        {
            self.waiting_since.pop_front();
        }
        let waiting = i64::try_from(ops_waiting).unwrap_or(i64::MAX);
        self.shared
            .metrics
            .region_unreplicated_ops
            .add(waiting - self.reported_waiting);
        self.reported_waiting = waiting;
    }
}

impl Drop for LinkState {
    /// The document unloads: it no longer counts in the gauges.
    fn drop(&mut self) {
        self.set_connected(false);
        self.shared
            .metrics
            .region_unreplicated_ops
            .sub(self.reported_waiting);
    }
}

impl Document {
    /// Where the link connects next.
    pub(super) fn on_link_path(&mut self, reply: oneshot::Sender<String>) {
        let (Some(link), Some(region)) = (&self.link, self.pipeline.region()) else {
            return;
        };
        let (client, epoch, rev) = region.link_resume_point();
        let path = match link.want_snapshot {
            true => format!("/ws/{}?client={client}", self.id),
            false => format!("/ws/{}?client={client}&rev={rev}&epoch={epoch}", self.id),
        };
        let _ = reply.send(path);
    }

    /// Something happened on the link.
    pub(super) async fn on_link(&mut self, event: LinkEvent) {
        let Some(link) = &mut self.link else {
            return;
        };
        match event {
            LinkEvent::Closed { conn, code } => {
                // The document the link knows was deleted at the home (also
                // when a resume is refused so, before any first message).
                if code == Some(CloseCode::DocumentDeleted.code()) {
                    link.want_snapshot = true;
                }
                if conn != link.conn {
                    return;
                }
                link.set_connected(false);
                if let Some(region) = self.pipeline.region_mut() {
                    region.upstream_disconnected();
                }
            }
            LinkEvent::Message { conn, message } => {
                if conn < link.conn || (conn == link.conn && link.dropping) {
                    return; // of a connection that is gone or going
                }
                let first = conn > link.conn;
                link.conn = conn;
                link.dropping = false;
                let result = match first {
                    true => self.on_home_first(message).await,
                    false => self.on_home_message(message).await,
                };
                if let Err(e) = result {
                    self.link_failed(e);
                }
            }
        }
        if let Some(done) = self.pipeline.flush_region() {
            self.on_commit(done).await;
        }
        self.pump_upstream();
    }

    /// The home's first message on a connection: it resumed the link, or
    /// sent its document because it could not.
    async fn on_home_first(&mut self, message: ServerMessage<'static>) -> Result<(), RegionError> {
        let Some(region) = self.pipeline.region_mut() else {
            return Ok(());
        };
        match message {
            ServerMessage::Resume {
                rev,
                seq,
                limits,
                last_hash,
                ..
            } => {
                region.upstream_limits(ot_driver::core::op_limits(&limits));
                region.upstream_resumed(rev, seq, parse_hash(last_hash.as_deref()))?;
                tracing::info!(doc = %self.id, home_rev = rev, "the link to the home resumed");
            }
            ServerMessage::Snapshot {
                epoch,
                rev,
                text,
                seq,
                limits,
                last_hash,
                ..
            } => {
                region.upstream_limits(ot_driver::core::op_limits(&limits));
                let adoption = region.upstream_snapshot(HomeSnapshot {
                    epoch,
                    rev,
                    text: &text,
                    last_seq: seq,
                    last_hash: parse_hash(last_hash.as_deref()),
                })?;
                match adoption {
                    SnapshotAdoption::Kept => {
                        tracing::info!(doc = %self.id, home_rev = rev, "the link to the home resynced; pending work goes on")
                    }
                    SnapshotAdoption::Reset { conflict_copy } => {
                        self.region_reset(conflict_copy, epoch).await;
                    }
                }
            }
            ServerMessage::Error { code, message, .. } => {
                tracing::warn!(doc = %self.id, code = code.as_str(), %message, "the home refused the link");
                return Ok(());
            }
            other => {
                tracing::warn!(doc = %self.id, kind = other.kind(), "the home's first message is neither a resume nor a snapshot");
                return Ok(());
            }
        }
        if let Some(link) = &mut self.link {
            link.want_snapshot = false;
            link.set_connected(true);
        }
        Ok(())
    }

    /// A later message of the home.
    async fn on_home_message(
        &mut self,
        message: ServerMessage<'static>,
    ) -> Result<(), RegionError> {
        let Some(region) = self.pipeline.region_mut() else {
            return Ok(());
        };
        match message {
            ServerMessage::Op {
                rev,
                op,
                client,
                seq,
            } => match region.upstream_op(rev, &op, &client, seq)? {
                UpstreamOutcome::Integrated(integration) => {
                    if let Some(done) = self.pipeline.upstream_integrated(&integration) {
                        self.on_commit(done).await;
                    }
                }
                UpstreamOutcome::Acknowledged | UpstreamOutcome::Ignored => {}
            },
            ServerMessage::Ack { rev, seq } => {
                region.upstream_ack(rev, seq)?;
            }
            ServerMessage::Error { code, message, seq } => {
                tracing::error!(doc = %self.id, code = code.as_str(), %message, ?seq, "the home refused the link's message");
                if seq.is_some() {
                    // Its op was refused: a snapshot tells whether the
                    // pending work can go on or becomes a conflict copy.
                    self.link_resync();
                }
            }
            // Presence is per node (PROTOCOL.md).
            _ => {}
        }
        Ok(())
    }

    /// The home's message did not fit the link: resync (a regional history
    /// that disagrees with its link is reloaded from storage first).
    fn link_failed(&mut self, error: RegionError) {
        tracing::warn!(doc = %self.id, %error, "the link to the home resyncs");
        if let RegionError::Diverged(_) = error {
            self.pipeline.mark_broken();
        }
        self.link_resync();
    }

    /// Reconnect asking for a snapshot.
    fn link_resync(&mut self) {
        if let Some(link) = &mut self.link {
            link.want_snapshot = true;
            link.dropping = true;
            link.set_connected(false);
            link.reconnect();
        }
        if let Some(region) = self.pipeline.region_mut() {
            region.upstream_disconnected();
        }
    }

    /// Hand the op in flight to the link once it may leave (its commit is
    /// durable and the connection resumed).
    pub(super) fn pump_upstream(&mut self) {
        let Some(link) = &mut self.link else {
            return;
        };
        let Some(region) = self.pipeline.region_mut() else {
            return;
        };
        link.replicated_up_to(region.replicated_rev(), region.unreplicated_ops());
        if let Some(op) = region.upstream_send() {
            // The home stores which regional revisions (and whose edits) it
            // carries, so that its journal names this region's.
            let origin = region
                .in_flight_covers()
                .map(|((lo, hi), authors)| OpOrigin::new(lo, hi, authors));
            let text = op_message_text(op.base_rev, op.seq, &op.op, None, origin.as_ref());
            let _ = link.out.send(LinkOut::Send {
                conn: link.conn,
                text,
            });
        }
        // What local clients see is durable: never tell them of more.
        let replicated = region.replicated_rev().min(self.pipeline.durable_rev());
        if link.announced != Some(replicated) {
            link.announced = Some(replicated);
            self.conns
                .broadcast_text(&text_frame(&ServerMessage::Replicated { rev: replicated }));
        }
    }

    /// On a region: the `replicated` message a joining client gets after
    /// its first message.
    pub(super) fn replicated_frame(&self) -> Option<Outbound> {
        self.link.as_ref()?;
        let region = self.pipeline.region()?;
        let replicated = region.replicated_rev().min(self.pipeline.durable_rev());
        Some(Outbound::Text(text_frame(&ServerMessage::Replicated {
            rev: replicated,
        })))
    }

    /// The state of the document's replication (`None` at a home).
    pub(super) fn replication(&self) -> Option<ReplicationStatus> {
        let (link, region) = (self.link.as_ref()?, self.pipeline.region()?);
        let (_, home_epoch, home_rev) = region.link_resume_point();
        let replicated_rev = region.replicated_rev();
        let oldest_waiting_ms = link
            .waiting_since
            .iter()
            .find(|(rev, _)| *rev > replicated_rev)
            .map(|(_, since)| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX));
        Some(ReplicationStatus {
            connected: link.connected,
            home_epoch,
            home_rev,
            rev: region.history().revision(),
            replicated_rev,
            ops_waiting: region.unreplicated_ops(),
            oldest_waiting_ms,
        })
    }

    /// The home could not resume this region's copy and it started a new
    /// regional history from the home's text: store it in place of the old
    /// one (a new generation of the document, so a new epoch), close every
    /// local connection so that it resyncs, and stop; the next join loads
    /// the new history. The regional text the home lacks is kept as a
    /// conflict copy (`GET /api/docs/{doc}/copies`).
    async fn region_reset(&mut self, conflict_copy: Option<String>, home_epoch: u64) {
        tracing::warn!(
            doc = %self.id,
            conflict_copy_chars = conflict_copy.as_ref().map(|c| c.chars().count()),
            "the home could not resume this region's copy: starting again from the home's text"
        );
        let items = self.pipeline.reset_items(conflict_copy, home_epoch);
        let (tx, durable) = oneshot::channel();
        self.pipeline.submit(
            items,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        if !matches!(durable.await, Ok(Ok(()))) {
            tracing::error!(doc = %self.id, "the reset could not be stored; the document closes");
        }
        self.stop_with = Some(CloseCode::DocumentDeleted);
    }
}

/// A `last_hash` as sent (`None` when absent or malformed).
fn parse_hash(hex: Option<&str>) -> Option<OpHash> {
    hex.and_then(OpHash::from_hex)
}
