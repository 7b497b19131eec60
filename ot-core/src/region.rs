//! A regional server's document, without I/O: the regional history its own
//! clients write to, and the link that replicates it to the document's home.
//!
//! A region is a full server for its clients and, upstream, one durable
//! client of the home: the link is a [`Client`] (one op in flight, later local
//! ops queued within the home's limits), fed every local op in regional
//! revision order as the regional history applies it, so that an op from the
//! home is transformed past every local op the home has not acknowledged,
//! durable or not, and applies at the regional head as a new regional
//! revision. The region's own op is `a` on both sides, as for any client.
//!
//! **What goes into which commit.** Everything that changes the regional
//! history or the link is an [`RegionalEntry`], appended in the order it
//! happened; the caller takes the entries since the last commit with
//! [`RegionalDocument::take_commit`], makes them durable in that order, and
//! reports it with [`RegionalDocument::committed`]. An op goes upstream only
//! once the commit holding the entry that made it the link's op in flight is
//! durable ([`RegionalDocument::upstream_send`]), so after any crash the op
//! in flight, its seq and its base are rebuilt byte for byte by replaying
//! the durable entries ([`RegionalDocument::recover`]): nothing
//! acknowledged locally is lost, nothing is applied twice at the home. A
//! failed commit leaves memory ahead of storage: the caller drops this value
//! and recovers from storage.
//!
//! **Revisions.** The region numbers its own revisions; an op from the home
//! becomes one regional revision whatever its effect (a no-op included), with
//! the pseudo client [`UPSTREAM_CLIENT_ID`], which no real client id can be.
//! When the home cannot resume the link and the region holds work the home
//! does not have, the region starts a new regional history from the home's
//! text ([`RegionalEntry::Reset`], a new regional epoch for the caller) and
//! its unsent text is returned as a conflict copy.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::client::{AckOutcome, Client, ClientError, ClientState, OutgoingOp, RemoteOutcome};
use crate::history::{
    AppliedOp, DocumentHistory, DocumentSnapshot, KeyCheck, KeyHash, OpHash, Receipt, ReceiveError,
    RestoreError,
};
use crate::{OpLimits, Operation};

/// The prefix of every regional link's client id at the home (`r-<node-id>`).
/// A link's dedup record is never evicted (see
/// [`DocumentHistory::evict_idle`]), so a link without one has never had an op
/// applied and is never refused as possibly expired.
pub const LINK_ID_PREFIX: &str = "r-";

/// Whether `client_id` names a regional link.
pub fn is_link_id(client_id: &str) -> bool {
    client_id.starts_with(LINK_ID_PREFIX)
}

/// The client id under which the regional history records the home's ops.
/// Client ids on the wire are `[A-Za-z0-9_-]`, so no client can take it.
pub const UPSTREAM_CLIENT_ID: &str = "^upstream";

/// An op of the home, integrated into the regional history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integration {
    /// The home revision it created.
    pub home_rev: u64,
    /// Its author at the home (a client id, or another region's link).
    pub author: String,
    /// The author's seq for it.
    pub author_seq: u64,
    /// The op as the home sent it.
    pub received: Operation,
    /// The first regional revision of the local work the home had not yet
    /// acknowledged when it arrived, if any: it was transformed past every
    /// local revision from there up to `applied.rev - 1` (the other side of
    /// this conflict, read from the regional history).
    pub past_local_from: Option<u64>,
    /// That local work as the link held it, the other side of each
    /// transform (the op in flight, then each queued op, in order; each
    /// took priority at a tie): `received` transformed past these is
    /// `applied.op`. Empty when there was none, or more than
    /// [`MAX_JOURNALED_LOCAL_OPS`] ops or [`MAX_JOURNALED_LOCAL_SIZE`]
    /// (the journal then names the revisions only). Only in the
    /// [`UpstreamOutcome`], for the caller's journal: the recorded
    /// [`RegionalEntry::Upstream`] leaves it empty (replay recomputes the
    /// integration without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<Operation>,
    /// The regional revision it became (its `op` is the transformed op).
    pub applied: AppliedOp,
}

/// Most local ops an [`Integration`] keeps as the other side of its
/// conflict: the link's queue can grow without bound while the home is
/// unreachable, and each op of the home integrated then would copy it.
pub const MAX_JOURNALED_LOCAL_OPS: usize = 64;

/// Most characters inserted and deleted plus components, over all the
/// local ops an [`Integration`] keeps (see [`MAX_JOURNALED_LOCAL_OPS`]).
pub const MAX_JOURNALED_LOCAL_SIZE: usize = 64 * 1024;

impl Integration {
    /// True when it was transformed past local work: a detected conflict,
    /// journaled at the region.
    pub fn is_concurrent(&self) -> bool {
        self.past_local_from.is_some() && self.received != self.applied.op
    }
}

/// One step of the regional document, in the order it happened: what a
/// commit holds, and what recovery replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegionalEntry {
    /// A new regional history (the first open, or the home could not resume
    /// the link): revision 1 inserts the home's `text` at `home_rev`, and the
    /// link restarts there with its next seq after `last_seq`. The caller
    /// gives the document a new regional epoch (every local client resyncs)
    /// and keeps `conflict_copy`, the region's text that the home does not
    /// have, for its users.
    Reset {
        /// The home's epoch for the document (the link resumes in it).
        home_epoch: u64,
        /// The home revision of `text`.
        home_rev: u64,
        /// The home's text.
        text: String,
        /// The last seq the home applied from the link.
        last_seq: u64,
        /// The link's own client id at the home.
        link_id: String,
        /// The home's limits for the link's ops.
        limits: OpLimits,
        /// The regional text with work the home does not have, if any.
        conflict_copy: Option<String>,
        /// Revision 1 of the new history.
        applied: AppliedOp,
    },
    /// An op of one of the region's own clients, as applied.
    Local(AppliedOp),
    /// An op of the home, as integrated.
    Upstream(Integration),
    /// The home acknowledged the link's op in flight as home revision `rev`.
    Acked {
        /// The home revision.
        rev: u64,
        /// The link's seq.
        seq: u64,
    },
    /// The link made `op` its op in flight (a record: replay makes the same
    /// decision, and checks it against this).
    Sent(OutgoingOp),
    /// The home could not resume the link and sent its text at `home_rev`,
    /// and the region's pending work went on from it (the link's snapshot
    /// rule): the regional history is unchanged.
    Resynced {
        /// The home's epoch for the document.
        home_epoch: u64,
        /// The home revision of `text`.
        home_rev: u64,
        /// The home's text.
        text: String,
        /// The last seq the home applied from the link.
        last_seq: u64,
    },
    /// The home announced other limits for the link's ops.
    Limits(OpLimits),
    /// The region recovered from storage: until the home confirms that it
    /// applied no seq of the link from `next_seq` on, the data may be an
    /// older copy and the link sends nothing. Kept until [`Verified`]
    /// (across further recoveries, whose own seqs may come from the copy).
    ///
    /// [`Verified`]: RegionalEntry::Verified
    Unverified {
        /// The link's next seq as recovered.
        next_seq: u64,
    },
    /// The home resumed the link below the seq of the last `Unverified`.
    Verified,
}

/// A point to recover from without replaying everything before it: the
/// regional history and the link, as they were after a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionalCheckpoint {
    /// The home's epoch the link resumes in.
    pub home_epoch: u64,
    /// The regional history.
    pub history: DocumentSnapshot,
    /// The link.
    pub link: ClientState,
    /// The author of each local edit the home has not acknowledged, by
    /// regional revision (absent from older checkpoints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_authors: Vec<(u64, String)>,
}

/// The entries to make durable, in order, as one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionalCommit {
    /// Its number: commits are made durable in this order.
    pub number: u64,
    /// The entries.
    pub entries: Vec<RegionalEntry>,
}

/// What an op of the home did to the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// Already integrated: nothing changed.
    Ignored,
    /// Another writer's op: it is now this regional revision (send it to the
    /// local clients once its commit is durable).
    Integrated(Box<Integration>),
    /// It was the link's own op in flight: acknowledged.
    Acknowledged,
}

/// The home's answer when it cannot resume the link: its document as of
/// now, and its record of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeSnapshot<'a> {
    /// The home's epoch for the document.
    pub epoch: u64,
    /// The home's revision.
    pub rev: u64,
    /// The home's text at `rev`.
    pub text: &'a str,
    /// The last seq the home applied from the link.
    pub last_seq: u64,
    /// The hash of that op as received, when the home says.
    pub last_hash: Option<OpHash>,
}

/// What a fresh snapshot from the home (it could not resume the link) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotAdoption {
    /// The region's text already is the home's plus its pending work, which
    /// goes on upstream: nothing changed for local clients.
    Kept,
    /// A new regional history started from the home's text (a new regional
    /// epoch); the region's text that the home lacks, if any, is the
    /// conflict copy to keep for its users. The caller closes every local
    /// connection now (their ops are of the old history) and admits joins
    /// again only once the commit holding the newest reset is durable (a
    /// join served from an older durable epoch would base ops on a history
    /// that memory no longer holds).
    Reset {
        /// The regional text the home does not have.
        conflict_copy: Option<String>,
    },
}

/// Why the regional document could not take an input. Nothing changed,
/// except where a variant says the document must be recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// A local client's op was refused (its own error; the region is fine).
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The home's message does not fit the link (a gap, an op that does not
    /// apply, a resume at another revision, or seqs the link never sent: a
    /// data dir older than the home's view of it). Reconnect asking for a
    /// snapshot.
    #[error("the home's message does not fit the link: {0}")]
    Link(#[source] ClientError),
    /// The regional history and the link disagree (a bug or corrupt data):
    /// recover from storage.
    #[error("the regional history and its link disagree: {0}")]
    Diverged(String),
}

/// Why [`RegionalDocument::recover`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// Nothing to start from: no checkpoint and no `Reset` first.
    #[error("no checkpoint and the entries do not start with a reset")]
    NoStart,
    /// The stored history does not replay.
    #[error("the regional history does not replay: {0}")]
    History(#[from] RestoreError),
    /// The saved link state is inconsistent.
    #[error("the saved link state is inconsistent: {0}")]
    Link(#[source] ClientError),
    /// After replaying every entry the regional text is not the link's
    /// (the entries are not those of one document).
    #[error("after the replay the regional text is not the link's")]
    TextsDisagree,
    /// A replayed entry did not lead where it did when it was made.
    #[error("replaying entry {index} diverged: {detail}")]
    Diverged {
        /// Its position among the entries replayed.
        index: usize,
        /// What differed.
        detail: String,
    },
}

/// A regional server's document: see the [module](self) documentation.
#[derive(Debug, Clone)]
pub struct RegionalDocument {
    /// The home's epoch for the document, as of the link's last snapshot.
    home_epoch: u64,
    history: DocumentHistory,
    link: Client,
    /// Entries since the last [`take_commit`](Self::take_commit).
    uncommitted: Vec<RegionalEntry>,
    /// The number of the next commit taken.
    next_commit: u64,
    /// Every commit numbered below this is durable.
    durable_below: u64,
    /// The commit holding the entry that made the op in flight; `None` when
    /// that entry is durable.
    in_flight_commit: Option<u64>,
    /// The link is connected and resumed (or synchronised by a snapshot).
    linked: bool,
    /// The op in flight was handed to the current connection.
    sent_on_link: bool,
    /// The link's next seq when this value was recovered from storage, until
    /// the home has confirmed that it applied no seq from there on: a data
    /// dir restored from an older copy gives out seqs the home has seen, and
    /// only the home can tell (see [`upstream_resumed`](Self::upstream_resumed)).
    unverified_from: Option<u64>,
    /// The author of each local edit not yet acknowledged by the home, in
    /// regional revision order: what an op in flight names as its authors
    /// (the history's window may have dropped those ops).
    pending_authors: VecDeque<(u64, Arc<str>)>,
}

impl RegionalDocument {
    /// A document the region holds no copy of yet, from the home's snapshot:
    /// revision 1 inserts `text` (origin: home revision `home_rev`); the
    /// link, `link_id` at the home, restarts after `last_seq`. The first
    /// commit holds the [`RegionalEntry::Reset`] that says so. The link
    /// sends nothing before a connection's first message has been taken
    /// ([`upstream_resumed`](Self::upstream_resumed); on the connection that
    /// brought this snapshot, call it with `rev` and `last_seq`).
    pub fn first_open(
        link_id: &str,
        home_epoch: u64,
        home_rev: u64,
        text: &str,
        last_seq: u64,
        limits: OpLimits,
    ) -> Result<RegionalDocument, RestoreError> {
        let (history, link, entry) =
            fresh(link_id, home_epoch, home_rev, text, last_seq, limits, None)?;
        let mut doc = RegionalDocument::from_parts(home_epoch, history, link);
        doc.uncommitted.push(entry);
        Ok(doc)
    }

    fn from_parts(home_epoch: u64, history: DocumentHistory, link: Client) -> RegionalDocument {
        RegionalDocument {
            home_epoch,
            history,
            link,
            uncommitted: Vec::new(),
            next_commit: 0,
            durable_below: 0,
            in_flight_commit: None,
            linked: false,
            sent_on_link: false,
            unverified_from: None,
            pending_authors: VecDeque::new(),
        }
    }

    /// Rebuild from storage: the newest durable `checkpoint` (`None`: from
    /// the beginning, whose first entry is a `Reset`) and every durable entry
    /// after it, in order. Each entry is replayed through the same code that
    /// made it, and must lead where it led then. The link starts
    /// disconnected.
    pub fn recover(
        checkpoint: Option<RegionalCheckpoint>,
        entries: impl IntoIterator<Item = RegionalEntry>,
    ) -> Result<RegionalDocument, RecoverError> {
        let mut entries = entries.into_iter().enumerate();
        let mut doc = match checkpoint {
            Some(c) => {
                let mut doc = RegionalDocument::from_parts(
                    c.home_epoch,
                    DocumentHistory::from_snapshot(c.history, [])?,
                    Client::from_state(c.link).map_err(RecoverError::Link)?,
                );
                doc.pending_authors = c
                    .pending_authors
                    .into_iter()
                    .map(|(rev, author)| (rev, Arc::from(author)))
                    .collect();
                doc
            }
            None => match entries.next() {
                Some((index, reset @ RegionalEntry::Reset { .. })) => {
                    let mut doc = RegionalDocument::from_parts(
                        0,
                        DocumentHistory::new(),
                        Client::new("", 0, "", 0),
                    );
                    doc.replay(reset)
                        .map_err(|detail| RecoverError::Diverged { index, detail })?;
                    doc
                }
                _ => return Err(RecoverError::NoStart),
            },
        };
        for (index, entry) in entries {
            doc.replay(entry)
                .map_err(|detail| RecoverError::Diverged { index, detail })?;
        }
        // Unverified until the home confirms the link's seqs: from the seq
        // of a recovery before this one that the home never confirmed (a
        // restored copy may have given out seqs since), else from now.
        let from = doc.unverified_from.unwrap_or(doc.link.next_seq());
        doc.unverified_from = Some(from);
        doc.uncommitted = vec![RegionalEntry::Unverified { next_seq: from }];
        if doc.history.text() != doc.link.text() {
            return Err(RecoverError::TextsDisagree);
        }
        Ok(doc)
    }

    /// Replay one durable entry: the same step as when it was made, checked
    /// against what was recorded.
    fn replay(&mut self, entry: RegionalEntry) -> Result<(), String> {
        match entry {
            RegionalEntry::Reset {
                home_epoch,
                home_rev,
                text,
                last_seq,
                link_id,
                limits,
                conflict_copy,
                ..
            } => {
                let (history, link, _) = fresh(
                    &link_id,
                    home_epoch,
                    home_rev,
                    &text,
                    last_seq,
                    limits,
                    conflict_copy,
                )
                .map_err(|e| e.to_string())?;
                self.home_epoch = home_epoch;
                self.history = history;
                self.link = link;
                self.pending_authors.clear();
                self.unverified_from = None;
            }
            RegionalEntry::Local(applied) => {
                self.pending_authors
                    .push_back((applied.rev, applied.client_id.clone()));
                self.history
                    .append_stored(applied.clone())
                    .map_err(|e| e.to_string())?;
                self.link
                    .local_edit_tagged(&applied.op, applied.rev)
                    .map_err(|e| e.to_string())?;
            }
            RegionalEntry::Upstream(integration) => {
                let outcome = self
                    .link
                    .remote_op(
                        integration.home_rev,
                        &integration.received,
                        &integration.author,
                        integration.author_seq,
                    )
                    .map_err(|e| e.to_string())?;
                match outcome {
                    RemoteOutcome::Applied(op) if op == integration.applied.op => {}
                    other => {
                        return Err(format!(
                            "home revision {} replayed as {other:?}",
                            integration.home_rev
                        ))
                    }
                }
                self.history
                    .append_stored(integration.applied)
                    .map_err(|e| e.to_string())?;
            }
            RegionalEntry::Acked { rev, seq } => {
                match self.link.ack(rev, seq).map_err(|e| e.to_string())? {
                    AckOutcome::Acknowledged { .. } => self.forget_acknowledged_authors(),
                    AckOutcome::Ignored => {
                        return Err(format!("the ack of seq {seq} at {rev} did not apply"))
                    }
                }
            }
            RegionalEntry::Sent(sent) => {
                if self.link.pending_resend().as_ref() != Some(&sent) {
                    return Err(format!("the link's op in flight is not seq {}", sent.seq));
                }
            }
            RegionalEntry::Resynced {
                home_epoch,
                home_rev,
                text,
                last_seq,
            } => {
                self.home_epoch = home_epoch;
                let outcome = self.link.snapshot(home_rev, &text, last_seq);
                if outcome.conflict_copy.is_some() || self.link.text() != self.history.text() {
                    return Err(format!(
                        "the resync at home revision {home_rev} no longer keeps the regional text"
                    ));
                }
                self.unverified_from = None;
            }
            RegionalEntry::Limits(limits) => {
                self.link.set_limits(limits);
            }
            RegionalEntry::Unverified { next_seq } => self.unverified_from = Some(next_seq),
            RegionalEntry::Verified => self.unverified_from = None,
        }
        Ok(())
    }

    /// The regional history (read only: every change goes through this type).
    pub fn history(&self) -> &DocumentHistory {
        &self.history
    }

    /// The link (read only).
    pub fn link(&self) -> &Client {
        &self.link
    }

    /// The regional revision up to which every local op is acknowledged by
    /// the home (what `replicated` tells local clients).
    pub fn replicated_rev(&self) -> u64 {
        match self.link.oldest_pending_tag() {
            Some(tag) => tag.saturating_sub(1),
            None => self.history.revision(),
        }
    }

    /// Where the link resumes at the home: its own client id, the home's
    /// epoch it knows, and the last home revision it integrated.
    pub fn link_resume_point(&self) -> (&str, u64, u64) {
        (self.link.client_id(), self.home_epoch, self.link.revision())
    }

    /// Local ops the home has not acknowledged yet (the op in flight and the
    /// queued ones).
    pub fn unreplicated_ops(&self) -> usize {
        self.link.unacknowledged()
    }

    /// A local client's op: received into the regional history (dedup,
    /// transform, apply) and fed to the link. Answer the client once the
    /// commit holding it is durable.
    pub fn receive_local(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        op: Operation,
    ) -> Result<Receipt, RegionError> {
        self.receive_local_with_older(client_id, seq, base_rev, op, &[])
    }

    /// [`receive_local`](Self::receive_local) for an op based before the
    /// retained history: `older` holds the ops of revisions `base_rev + 1 ..=
    /// history().oldest_revision()`, read from storage (as
    /// [`DocumentHistory::receive_with_older`]).
    pub fn receive_local_with_older(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        op: Operation,
        older: &[Operation],
    ) -> Result<Receipt, RegionError> {
        let receipt = self
            .history
            .receive_with_older(client_id, seq, base_rev, op, older)?;
        self.link_local(&receipt)?;
        Ok(receipt)
    }

    /// [`receive_local`](Self::receive_local) for an op rebased off the
    /// caller's task up to `rebased_rev` (as
    /// [`DocumentHistory::receive_rebased`]).
    pub fn receive_local_rebased(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        received: Operation,
        rebased: Operation,
        rebased_rev: u64,
    ) -> Result<Receipt, RegionError> {
        let receipt = self.history.receive_rebased(
            client_id,
            seq,
            base_rev,
            received,
            rebased,
            rebased_rev,
        )?;
        self.link_local(&receipt)?;
        Ok(receipt)
    }

    /// Feed an op the regional history just applied to the link.
    fn link_local(&mut self, receipt: &Receipt) -> Result<(), RegionError> {
        if let Receipt::Applied { applied, .. } = receipt {
            let sent = self
                .link
                .local_edit_tagged(&applied.op, applied.rev)
                .map_err(|e| RegionError::Diverged(e.to_string()))?;
            self.pending_authors
                .push_back((applied.rev, applied.client_id.clone()));
            self.uncommitted.push(RegionalEntry::Local(applied.clone()));
            self.record_sent(sent);
        }
        Ok(())
    }

    /// Bind `client_id` to `key` in the regional history's dedup table
    /// (bookkeeping the link does not see; see [`DocumentHistory::bind_key`]).
    pub fn bind_key(&mut self, client_id: &str, key: KeyHash) -> KeyCheck {
        self.history.bind_key(client_id, key)
    }

    /// Undo a binding whose write failed ([`DocumentHistory::unbind_key`]).
    pub fn unbind_key(&mut self, client_id: &str, key: KeyHash) {
        self.history.unbind_key(client_id, key);
    }

    /// Trim the regional history's in-memory window
    /// ([`DocumentHistory::trim_to_bytes`]); the link keeps its own ops.
    pub fn trim_to_bytes(&mut self, keep: usize, max_bytes: usize, min_keep: usize) {
        self.history.trim_to_bytes(keep, max_bytes, min_keep);
    }

    /// Evict idle local clients' dedup records
    /// ([`DocumentHistory::evict_idle`]); the home's pseudo client is kept,
    /// since its seqs number the home's ops in this history.
    pub fn evict_idle(
        &mut self,
        expiry: u64,
        keep_after: u64,
        keep: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        self.history.evict_idle(expiry, keep_after, &|id: &str| {
            id == UPSTREAM_CLIENT_ID || keep(id)
        })
    }

    /// Record that the link made `sent` its op in flight: it goes upstream
    /// once the commit being filled now is durable.
    fn record_sent(&mut self, sent: Option<OutgoingOp>) {
        if let Some(sent) = sent {
            self.uncommitted.push(RegionalEntry::Sent(sent));
            self.in_flight_commit = Some(self.next_commit);
            self.sent_on_link = false;
        }
    }

    /// The link connected and the home resumed it at `rev`, having applied
    /// its seqs up to `last_seq`. An error means the link cannot resume
    /// (reconnect asking for a snapshot).
    ///
    /// After a recovery the home's `last_seq` is checked against the link's
    /// seq as stored, not as it is now: local ops taken since may have been
    /// given seqs that the home already holds from a newer copy of this
    /// region's data.
    pub fn upstream_resumed(
        &mut self,
        rev: u64,
        last_seq: u64,
        last_hash: Option<OpHash>,
    ) -> Result<(), RegionError> {
        if let Some(stale) = self.stale(last_seq, last_hash) {
            return Err(RegionError::Link(stale));
        }
        self.link
            .resumed(rev, last_seq)
            .map_err(RegionError::Link)?;
        if self.unverified_from.take().is_some() {
            self.uncommitted.push(RegionalEntry::Verified);
        }
        self.linked = true;
        self.sent_on_link = false;
        Ok(())
    }

    /// Whether the home's record of the link (its last applied seq, and the
    /// hash of that op as received, when the home says) shows that this
    /// region's data is older than what the home has seen from it: seqs the
    /// home applied that the link, as recovered, never gave out, or the op
    /// in flight under a seq the home holds another op for (given out again
    /// after a resync that the older data does not know of).
    fn stale(&self, last_seq: u64, last_hash: Option<OpHash>) -> Option<ClientError> {
        if let Some(next_seq) = self.unverified_from {
            if last_seq >= next_seq {
                return Some(ClientError::StaleState {
                    server_seq: last_seq,
                    next_seq,
                });
            }
        }
        let in_flight = self.link.pending_resend()?;
        let other_op = in_flight.seq == last_seq
            && last_hash.is_some_and(|hash| hash != OpHash::of(&in_flight.op));
        other_op.then(|| ClientError::StaleState {
            server_seq: last_seq,
            next_seq: self.link.next_seq(),
        })
    }

    /// The home announced `limits` for the link's ops.
    pub fn upstream_limits(&mut self, limits: OpLimits) {
        if self.link.limits() != limits {
            self.link.set_limits(limits);
            self.uncommitted.push(RegionalEntry::Limits(limits));
        }
    }

    /// The link's connection ended: nothing is sent until it resumes.
    pub fn upstream_disconnected(&mut self) {
        self.linked = false;
    }

    /// The link's pending work as the other side of an integration's
    /// transforms, if it is small enough to journal (see [`Integration::local`]).
    fn journaled_local_side(&self) -> Vec<Operation> {
        if self.link.unacknowledged() > MAX_JOURNALED_LOCAL_OPS {
            return Vec::new();
        }
        let outstanding = self.link.outstanding().map(|o| &o.current);
        let pending: Vec<&Operation> = outstanding.into_iter().chain(self.link.queue()).collect();
        let size: usize = pending
            .iter()
            .map(|op| op.change_size() + op.components().len())
            .sum();
        if size > MAX_JOURNALED_LOCAL_SIZE {
            return Vec::new();
        }
        pending.into_iter().cloned().collect()
    }

    /// Drop the authors of the edits the home has now acknowledged (the
    /// last one stays: the rest of an edit split to fit the limits may
    /// still be on its way).
    fn forget_acknowledged_authors(&mut self) {
        let acked = self.link.acked_tag();
        while self
            .pending_authors
            .front()
            .is_some_and(|(rev, _)| *rev < acked)
        {
            self.pending_authors.pop_front();
        }
    }

    /// The regional revisions the op in flight carries: the link's tags
    /// (see [`Client::outstanding_tags`]), never revision 1 (the home's
    /// text a regional history starts from). They may include ops of the
    /// home integrated between the local edits.
    fn in_flight_revs(&self) -> Option<(u64, u64)> {
        let (lo, hi) = self.link.outstanding_tags()?;
        Some((lo.max(2).min(hi), hi))
    }

    /// What the op in flight carries (see [`Client::outstanding_tags`]):
    /// the regional revisions `(lo, hi)` and the client ids of the local
    /// edits among them, distinct, in revision order.
    pub fn in_flight_covers(&self) -> Option<((u64, u64), Vec<String>)> {
        let (lo, hi) = self.in_flight_revs()?;
        let mut authors: Vec<String> = Vec::new();
        for (_, author) in self
            .pending_authors
            .iter()
            .skip_while(|(rev, _)| *rev < lo)
            .take_while(|(rev, _)| *rev <= hi)
        {
            if !authors.iter().any(|a| **a == **author) {
                authors.push(author.to_string());
            }
        }
        Some(((lo, hi), authors))
    }

    /// The op to send upstream now, if any: the op in flight, once the commit
    /// that made it so is durable, once per connection (a resume hands it
    /// out again, unchanged).
    pub fn upstream_send(&mut self) -> Option<OutgoingOp> {
        if !self.linked || self.sent_on_link || self.in_flight_commit.is_some() {
            return None;
        }
        let op = self.link.pending_resend()?;
        self.sent_on_link = true;
        Some(op)
    }

    /// An `op` message from the home: revision `rev` made by (`author`,
    /// `seq`).
    pub fn upstream_op(
        &mut self,
        rev: u64,
        op: &Operation,
        author: &str,
        seq: u64,
    ) -> Result<UpstreamOutcome, RegionError> {
        // The first local revision the home has not acknowledged: the
        // lowest the op in flight carries (its tag is its highest).
        let past_local_from = self
            .in_flight_revs()
            .map(|(lo, _)| lo)
            .or_else(|| self.link.oldest_pending_tag());
        let local = self.journaled_local_side();
        match self
            .link
            .remote_op(rev, op, author, seq)
            .map_err(RegionError::Link)?
        {
            RemoteOutcome::Ignored => Ok(UpstreamOutcome::Ignored),
            RemoteOutcome::Acknowledged { next } => {
                self.forget_acknowledged_authors();
                self.uncommitted.push(RegionalEntry::Acked { rev, seq });
                self.record_sent(next);
                Ok(UpstreamOutcome::Acknowledged)
            }
            RemoteOutcome::Applied(transformed) => {
                let upstream_seq = self.history.last_seq(UPSTREAM_CLIENT_ID) + 1;
                let head = self.history.revision();
                let applied =
                    match self
                        .history
                        .receive(UPSTREAM_CLIENT_ID, upstream_seq, head, transformed)
                    {
                        Ok(Receipt::Applied { applied, .. }) => applied,
                        other => {
                            return Err(RegionError::Diverged(format!(
                                "an op of the home did not apply at the regional head: {other:?}"
                            )))
                        }
                    };
                let mut integration = Integration {
                    home_rev: rev,
                    author: author.to_owned(),
                    author_seq: seq,
                    received: op.clone(),
                    past_local_from,
                    local: Vec::new(),
                    applied,
                };
                self.uncommitted
                    .push(RegionalEntry::Upstream(integration.clone()));
                integration.local = local;
                Ok(UpstreamOutcome::Integrated(Box::new(integration)))
            }
        }
    }

    /// An `ack` from the home for the link's op `seq` as revision `rev`.
    pub fn upstream_ack(&mut self, rev: u64, seq: u64) -> Result<bool, RegionError> {
        match self.link.ack(rev, seq).map_err(RegionError::Link)? {
            AckOutcome::Ignored => Ok(false),
            AckOutcome::Acknowledged { next } => {
                self.forget_acknowledged_authors();
                self.uncommitted.push(RegionalEntry::Acked { rev, seq });
                self.record_sent(next);
                Ok(true)
            }
        }
    }

    /// The home could not resume the link and sent its text at `rev`, having
    /// applied the link's seqs up to `last_seq`. Pending work is kept going
    /// when that is provably safe (the link's own rule); otherwise a new
    /// regional history starts from the home's text and the region's text is
    /// returned as a conflict copy.
    pub fn upstream_snapshot(
        &mut self,
        snapshot: HomeSnapshot<'_>,
    ) -> Result<SnapshotAdoption, RegionError> {
        let HomeSnapshot {
            epoch,
            rev,
            text,
            last_seq,
            last_hash,
        } = snapshot;
        // A stale link's seqs name other ops at the home: nothing it holds
        // can be taken as applied or rebased.
        let stale = self.stale(last_seq, last_hash).is_some();
        let mut link = self.link.clone();
        let outcome = link.snapshot(rev, text, last_seq);
        self.linked = true;
        self.sent_on_link = false;
        self.unverified_from = None;
        if !stale && outcome.conflict_copy.is_none() && link.text() == self.history.text() {
            self.link = link;
            self.home_epoch = epoch;
            self.uncommitted.push(RegionalEntry::Resynced {
                home_epoch: epoch,
                home_rev: rev,
                text: text.to_owned(),
                last_seq,
            });
            // Pending work rebased onto the snapshot leaves with a new seq.
            self.record_sent(outcome.send);
            return Ok(SnapshotAdoption::Kept);
        }
        let regional_text = self.history.text().to_string();
        let conflict_copy = (regional_text != text).then_some(regional_text);
        let (history, link, entry) = fresh(
            self.link.client_id(),
            epoch,
            rev,
            text,
            last_seq,
            self.link.limits(),
            conflict_copy.clone(),
        )
        .map_err(|e| RegionError::Diverged(e.to_string()))?;
        self.home_epoch = epoch;
        self.history = history;
        self.link = link;
        self.pending_authors.clear();
        self.in_flight_commit = None;
        self.uncommitted.push(entry);
        Ok(SnapshotAdoption::Reset { conflict_copy })
    }

    /// The entries since the last commit, as the next commit (`None` if
    /// there are none), and optionally a checkpoint of the state after them.
    pub fn take_commit(
        &mut self,
        with_checkpoint: bool,
    ) -> Option<(RegionalCommit, Option<RegionalCheckpoint>)> {
        if self.uncommitted.is_empty() {
            return None;
        }
        let commit = RegionalCommit {
            number: self.next_commit,
            entries: std::mem::take(&mut self.uncommitted),
        };
        self.next_commit += 1;
        let checkpoint = with_checkpoint.then(|| self.checkpoint());
        Some((commit, checkpoint))
    }

    /// The state now, to store with a commit taken at this point.
    pub fn checkpoint(&self) -> RegionalCheckpoint {
        RegionalCheckpoint {
            home_epoch: self.home_epoch,
            history: self.history.snapshot(),
            link: self.link.state(),
            pending_authors: self
                .pending_authors
                .iter()
                .map(|(rev, author)| (*rev, author.to_string()))
                .collect(),
        }
    }

    /// Commit `number` (and every one before it) is durable.
    pub fn committed(&mut self, number: u64) {
        self.durable_below = self.durable_below.max(number + 1);
        if self
            .in_flight_commit
            .is_some_and(|c| c < self.durable_below)
        {
            self.in_flight_commit = None;
        }
    }
}

/// A new regional history from the home's `text` at `home_rev`, its link,
/// and the entry that records both.
fn fresh(
    link_id: &str,
    home_epoch: u64,
    home_rev: u64,
    text: &str,
    last_seq: u64,
    limits: OpLimits,
    conflict_copy: Option<String>,
) -> Result<(DocumentHistory, Client, RegionalEntry), RestoreError> {
    let mut insert = Operation::new();
    insert.insert(text);
    let applied = AppliedOp {
        rev: 1,
        client_id: UPSTREAM_CLIENT_ID.into(),
        seq: 1,
        base_rev: 0,
        hash: OpHash::of(&insert),
        op: insert,
    };
    let empty = DocumentSnapshot {
        rev: 0,
        text: String::new(),
        clients: Default::default(),
    };
    let history = DocumentHistory::from_snapshot(empty, [applied.clone()])?;
    let mut link = Client::new(link_id, home_rev, text, last_seq);
    link.set_limits(limits);
    let entry = RegionalEntry::Reset {
        home_epoch,
        home_rev,
        text: text.to_owned(),
        last_seq,
        link_id: link_id.to_owned(),
        limits,
        conflict_copy,
        applied,
    };
    Ok((history, link, entry))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn insert_at(len: usize, pos: usize, text: &str) -> Operation {
        Operation::insert_at(len, pos, text).unwrap()
    }

    /// A region on an empty home document, linked, with its first commit durable.
    fn linked_region() -> RegionalDocument {
        let mut doc = RegionalDocument::first_open("r-a", 1, 0, "", 0, OpLimits::DEFAULT).unwrap();
        let (commit, _) = doc.take_commit(false).unwrap();
        doc.committed(commit.number);
        doc.upstream_resumed(0, 0, None).unwrap();
        doc
    }

    fn durable_entries(doc: &mut RegionalDocument, log: &mut Vec<RegionalEntry>) {
        while let Some((commit, _)) = doc.take_commit(false) {
            log.extend(commit.entries.iter().cloned());
            doc.committed(commit.number);
        }
    }

    #[test]
    fn an_op_goes_upstream_once_its_commit_is_durable_and_again_after_a_resume() {
        let mut doc = linked_region();
        doc.receive_local("w", 1, 1, insert_at(0, 0, "hi")).unwrap();
        assert_eq!(
            doc.upstream_send(),
            None,
            "nothing leaves before its commit is taken"
        );
        let (commit, _) = doc.take_commit(false).unwrap();
        assert_eq!(doc.upstream_send(), None, "nor before it is durable");
        doc.committed(commit.number);
        let sent = doc.upstream_send().expect("sent once durable");
        assert_eq!((sent.seq, sent.base_rev), (1, 0));
        assert_eq!(sent.op, insert_at(0, 0, "hi"));
        assert_eq!(doc.upstream_send(), None, "once per connection");
        doc.upstream_disconnected();
        assert_eq!(doc.upstream_send(), None, "nothing while disconnected");
        doc.upstream_resumed(0, 0, None).unwrap();
        assert_eq!(doc.upstream_send(), Some(sent), "resent unchanged");
    }

    #[test]
    fn an_op_of_the_home_is_transformed_past_unacknowledged_local_work_and_recorded() {
        let mut doc = linked_region();
        doc.receive_local("w", 1, 1, insert_at(0, 0, "ab")).unwrap();
        let local_rev = doc.history().revision();
        let outcome = doc
            .upstream_op(1, &insert_at(0, 0, "XY"), "other", 1)
            .unwrap();
        let UpstreamOutcome::Integrated(integration) = outcome else {
            panic!("expected an integration, got {outcome:?}");
        };
        assert!(integration.is_concurrent());
        assert_eq!(integration.past_local_from, Some(local_rev));
        assert_eq!(integration.applied.rev, local_rev + 1);
        // The region's own op is `a`: its insert stays first, as at the home.
        assert_eq!(doc.history().text().to_string(), "abXY");
        assert_eq!(doc.link().text().to_string(), "abXY");
        assert_eq!(doc.replicated_rev(), local_rev - 1);
    }

    #[test]
    fn acks_advance_what_is_replicated_and_send_the_next_op() {
        let mut doc = linked_region();
        doc.receive_local("w", 1, 1, insert_at(0, 0, "a")).unwrap();
        let first = doc.history().revision();
        doc.receive_local("w", 2, 2, insert_at(1, 1, "b")).unwrap();
        let second = doc.history().revision();
        let mut log = Vec::new();
        durable_entries(&mut doc, &mut log);
        let sent = doc.upstream_send().unwrap();
        assert_eq!(sent.op, insert_at(0, 0, "a"));
        assert_eq!(doc.replicated_rev(), first - 1);
        assert!(doc.upstream_ack(1, sent.seq).unwrap());
        assert_eq!(doc.replicated_rev(), second - 1);
        assert_eq!(
            doc.upstream_send(),
            None,
            "the next op waits for the ack's commit"
        );
        durable_entries(&mut doc, &mut log);
        let next = doc.upstream_send().unwrap();
        assert_eq!((next.seq, next.base_rev), (2, 1));
        assert!(doc.upstream_ack(2, next.seq).unwrap());
        assert_eq!(doc.replicated_rev(), doc.history().revision());
        assert_eq!(doc.unreplicated_ops(), 0);
    }

    #[test]
    fn recovery_replays_the_durable_entries_to_the_same_state_and_the_same_op_in_flight() {
        let mut doc = RegionalDocument::first_open("r-a", 1, 0, "", 0, OpLimits::DEFAULT).unwrap();
        let mut log = Vec::new();
        durable_entries(&mut doc, &mut log);
        doc.upstream_resumed(0, 0, None).unwrap();
        doc.receive_local("w", 1, 1, insert_at(0, 0, "hello"))
            .unwrap();
        doc.upstream_op(1, &insert_at(0, 0, "<"), "other", 1)
            .unwrap();
        doc.receive_local("w", 2, 3, insert_at(6, 6, "!")).unwrap();
        durable_entries(&mut doc, &mut log);
        let in_flight = doc.upstream_send().unwrap();
        // Not durable: lost by the crash.
        doc.receive_local("w", 3, 4, insert_at(7, 0, "lost"))
            .unwrap();

        let mut recovered = RegionalDocument::recover(None, log.clone()).unwrap();
        assert_eq!(recovered.history().text().to_string(), "hello<!");
        assert_eq!(recovered.history().revision(), 4);
        assert_eq!(recovered.link().pending_resend(), Some(in_flight.clone()));
        assert_eq!(recovered.history().last_seq("w"), 2);
        // From a checkpoint taken after the first commit, the same.
        let checkpoint_doc = RegionalDocument::recover(None, log[..1].to_vec()).unwrap();
        let from_checkpoint =
            RegionalDocument::recover(Some(checkpoint_doc.checkpoint()), log[1..].to_vec())
                .unwrap();
        assert_eq!(from_checkpoint.history().text(), recovered.history().text());
        assert_eq!(
            from_checkpoint.link().pending_resend(),
            Some(in_flight.clone())
        );
        // Sent again once resumed (the recovery's own entry first made durable).
        recovered.upstream_resumed(1, 0, None).unwrap();
        let mut more = Vec::new();
        durable_entries(&mut recovered, &mut more);
        assert!(more.contains(&RegionalEntry::Verified));
        assert_eq!(recovered.upstream_send(), Some(in_flight));
    }

    #[test]
    fn a_region_restored_from_an_older_copy_is_stale_even_after_giving_out_seqs() {
        let mut doc = RegionalDocument::first_open("r-a", 1, 0, "", 0, OpLimits::DEFAULT).unwrap();
        let mut log = Vec::new();
        durable_entries(&mut doc, &mut log);
        // The copy: nothing sent yet. The newer data sent seq 1 ("new").
        let home_op = insert_at(0, 0, "new");
        let mut restored = RegionalDocument::recover(None, log).unwrap();
        restored
            .receive_local("w", 1, 1, insert_at(0, 0, "old"))
            .unwrap();
        assert_eq!(
            restored.link().next_seq(),
            2,
            "the copy gave out seq 1 again"
        );
        let stale = restored.upstream_resumed(0, 1, Some(OpHash::of(&home_op)));
        assert!(
            matches!(
                stale,
                Err(RegionError::Link(ClientError::StaleState { .. }))
            ),
            "{stale:?}"
        );
        let adoption = restored
            .upstream_snapshot(HomeSnapshot {
                epoch: 1,
                rev: 1,
                text: "new",
                last_seq: 1,
                last_hash: Some(OpHash::of(&home_op)),
            })
            .unwrap();
        assert_eq!(
            adoption,
            SnapshotAdoption::Reset {
                conflict_copy: Some("old".to_owned())
            }
        );
        assert_eq!(restored.history().text().to_string(), "new");
        assert_eq!(restored.history().revision(), 1);
        assert_eq!(restored.link().next_seq(), 2);
    }

    #[test]
    fn the_op_in_flight_under_a_seq_the_home_holds_for_another_op_is_stale() {
        let mut doc = linked_region();
        doc.receive_local("w", 1, 1, insert_at(0, 0, "mine"))
            .unwrap();
        let mut log = Vec::new();
        durable_entries(&mut doc, &mut log);
        doc.upstream_disconnected();
        let other = insert_at(0, 0, "theirs");
        let stale = doc.upstream_resumed(0, 1, Some(OpHash::of(&other)));
        assert!(stale.is_err(), "{stale:?}");
        let same = doc.upstream_resumed(0, 1, Some(OpHash::of(&insert_at(0, 0, "mine"))));
        assert!(same.is_ok(), "{same:?}");
    }
}
