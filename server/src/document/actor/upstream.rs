//! A region's document actor toward the home: where the link resumes, what
//! the home's messages do to the regional document, and what goes upstream
//! once it is durable. The link task ([`super::super::link`]) only carries
//! frames; every decision is the [`RegionalDocument`]'s, driven from here.
//!
//! [`RegionalDocument`]: ot_core::region::RegionalDocument

use std::sync::Arc;

use ot_core::history::OpHash;
use ot_core::region::{HomeSnapshot, RegionError, SnapshotAdoption, UpstreamOutcome};
use ot_protocol::{op_message_text, CloseCode, DocId, ServerMessage};
use tokio::sync::{mpsc, oneshot};

use super::super::link::{self, LinkEvent, LinkOut};
use super::super::mailbox::DocCommand;
use super::Document;
use crate::state::Services;

/// The actor's side of the link.
pub(super) struct LinkState {
    out: mpsc::UnboundedSender<LinkOut>,
    /// The connection whose first message was taken (0: none yet).
    conn: u64,
    /// The next connection asks for a snapshot rather than a resume (the
    /// home's answer did not fit the link, or the document was deleted).
    want_snapshot: bool,
}

impl LinkState {
    /// Start the link task of document `id`.
    pub(super) fn start(
        shared: Arc<Services>,
        mailbox: mpsc::WeakSender<DocCommand>,
        id: DocId,
    ) -> LinkState {
        LinkState {
            out: link::spawn(shared, mailbox, id),
            conn: 0,
            want_snapshot: false,
        }
    }

    /// Drop the current connection; the next one resumes from the state
    /// the document has then.
    pub(super) fn reconnect(&mut self) {
        let _ = self.out.send(LinkOut::Reconnect { conn: self.conn });
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
                if let Some(region) = self.pipeline.region_mut() {
                    region.upstream_disconnected();
                }
            }
            LinkEvent::Message { conn, message } => {
                if conn < link.conn {
                    return; // of a connection that is gone
                }
                let first = conn > link.conn;
                link.conn = conn;
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
                        self.region_reset(conflict_copy).await;
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
            link.reconnect();
        }
        if let Some(region) = self.pipeline.region_mut() {
            region.upstream_disconnected();
        }
    }

    /// Hand the op in flight to the link once it may leave (its commit is
    /// durable and the connection resumed).
    pub(super) fn pump_upstream(&mut self) {
        let Some(link) = &self.link else {
            return;
        };
        let Some(region) = self.pipeline.region_mut() else {
            return;
        };
        if let Some(op) = region.upstream_send() {
            let text = op_message_text(op.base_rev, op.seq, &op.op, None);
            let _ = link.out.send(LinkOut::Send {
                conn: link.conn,
                text,
            });
        }
    }

    /// The home could not resume this region's copy and it started a new
    /// regional history from the home's text: store it in place of the old
    /// one (a new generation of the document, so a new epoch), close every
    /// local connection so that it resyncs, and stop; the next join loads
    /// the new history. The regional text the home lacks is kept as a
    /// conflict copy (`GET /api/docs/{doc}/copies`).
    async fn region_reset(&mut self, conflict_copy: Option<String>) {
        tracing::warn!(
            doc = %self.id,
            conflict_copy_chars = conflict_copy.as_ref().map(|c| c.chars().count()),
            "the home could not resume this region's copy: starting again from the home's text"
        );
        let items = self.pipeline.reset_items(conflict_copy);
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
        self.conns.close_all(CloseCode::DocumentDeleted);
        self.failed = true;
    }
}

/// A `last_hash` as sent (`None` when absent or malformed).
fn parse_hash(hex: Option<&str>) -> Option<OpHash> {
    hex.and_then(OpHash::from_hex)
}
