//! The commit pipeline of one document: the in-memory history, the ops applied
//! but not yet durable, the durable text/revision/seqs, and the deferred acks.
//!
//! Ops are applied in memory at once (so later ops can be transformed against
//! them) but nothing is readable before it is durable: acks, broadcasts,
//! snapshots, resumes and cursor revisions all stop at `durable_rev`. Ops
//! become durable in revision order through the group-commit queue; each
//! commit result comes back on the commit channel.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ot_core::history::{
    AppliedOp, DocumentHistory, KeyCheck, KeyHash, OpHash, Receipt, ReceiveError,
};
use ot_core::region::{Integration, RegionalDocument};
use ot_core::{Operation, Range, Text};
use ot_protocol::{is_link_id, ClientId, ErrorCode, Limits, OpOrigin, ServerMessage};
use tokio::sync::mpsc;

use super::epoch::DocEpoch;
use super::error::DocError;
use super::loading::{self, now_ms, Loaded};
use super::mailbox::{IncomingOp, JoinRequest};
use super::rebase::{RebaseError, RebaseJob};
use super::region_items::region_items;
use super::replica::{Replica, ReplicaError};
use super::snapshot_policy::SnapshotPolicy;
use crate::outbound::{op_frame, text_frame, Outbound};
use crate::state::Services;
use crate::storage::{
    CommitCallback, CommitLane, Committed, ConflictCopy, RegionConflict, StorageError, StoredOp,
    StoredOrigin, WriteItem,
};

/// What a joiner's queue can take of ops from memory (see
/// [`Pipeline::first_frames`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct JoinRoom {
    /// Messages.
    pub(super) messages: usize,
    /// Bytes of frames.
    pub(super) bytes: usize,
}

/// An op applied in memory and on its way to storage.
pub(super) struct Pending {
    pub(super) applied: AppliedOp,
    /// The connection that sent it.
    pub(super) conn_id: u64,
    pub(super) received_at: Instant,
    /// The sender's selection after the op, at the op's revision.
    pub(super) ranges: Option<Vec<Range>>,
    /// On storage other nodes write too: the op as its sender sent it, to
    /// receive again if its commit loses a race (see [`Pipeline::take_back`]).
    pub(super) original: Option<IncomingOp>,
}

/// What [`Pipeline::take_back`] took out of the pipeline after a lost race.
pub(super) struct TakenBack {
    /// The pending ops as their senders sent them, in the order they were
    /// applied: (connection, client id, op).
    pub(super) originals: Vec<(u64, std::sync::Arc<str>, IncomingOp)>,
    /// Resends of pending ops on other connections, waiting for their acks
    /// (deferred acks): (conn, seq), acked once their originals are received
    /// again ([`Pipeline::rev_of`]), else answered `storage_error`.
    pub(super) unanswered: Vec<(u64, u64)>,
}

/// The outcome of a commit, for the ops up to `rev`.
pub(super) struct CommitDone {
    generation: u64,
    rev: u64,
    /// On a region: the number of the regional commit it made durable.
    region_commit: Option<u64>,
    result: Result<(), Arc<StorageError>>,
}

/// What became of an op the document took.
pub(super) enum Accepted {
    /// Applied in memory; if the commit already happened, its outcome.
    Applied(Option<CommitDone>),
    /// A resend of an op that is durable as this revision: ack it now.
    AckNow(u64),
    /// A resend of an op that is not durable yet: acked when it is.
    AckLater,
    /// Based on a revision older than the window: rebase it off the
    /// document's task, then [`Pipeline::receive_rebased`].
    Rebase(Box<RebaseJob>),
}

/// A connection's key does not match its client id's binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyRefused;

/// An op the document refused, with the error to send about it.
pub(super) struct Refused {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

impl Refused {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
        }
    }
}

pub(super) struct Pipeline {
    /// The document id as storage keys it.
    id: String,
    shared: Arc<Services>,
    replica: Replica,
    /// On a region: the number of the next region record stored.
    region_next: u64,
    /// On a region: whether the last `RegionWaiting` submitted said ops
    /// were waiting (`None`: write it with the next commit).
    waiting_written: Option<bool>,
    /// The regional history and its link disagreed (a bug): the actor
    /// reloads the document.
    broken: bool,
    durable_rev: u64,
    durable_text: Text,
    durable_seq: HashMap<String, u64>,
    pending: VecDeque<Pending>,
    /// Acks of resends whose original is not durable yet: (rev, conn, seq).
    deferred_acks: Vec<(u64, u64, u64)>,
    /// A new one at each reload (see [`CommitLane::commit_as`]): commit
    /// results of an older generation are stale, and its requests still
    /// queued after a failure are not committed.
    generation: u64,
    commit_tx: mpsc::UnboundedSender<CommitDone>,
    /// This document's way into the commit queue.
    lane: CommitLane,
    /// The epoch its first messages show.
    epoch: DocEpoch,
    /// When the next op is stored with a snapshot.
    snapshots: SnapshotPolicy,
}

fn last_seqs(history: &DocumentHistory) -> HashMap<String, u64> {
    history
        .snapshot()
        .clients
        .into_iter()
        .filter(|(client, _)| client != ot_core::history::HORIZON_KEY)
        .map(|(client, record)| (client, record.last_seq))
        .collect()
}

impl Pipeline {
    /// A pipeline for a document loaded as `history`; commit results come
    /// back on `commit_tx`.
    pub(super) fn new(
        shared: Arc<Services>,
        id: String,
        loaded: Loaded,
        epoch: DocEpoch,
        commit_tx: mpsc::UnboundedSender<CommitDone>,
    ) -> Pipeline {
        let Loaded {
            replica,
            snapshots,
            region_next,
            ..
        } = loaded;
        let history = replica.history();
        let mut pipeline = Pipeline {
            epoch,
            snapshots,
            lane: shared.queue.lane(&id),
            id,
            durable_rev: history.revision(),
            durable_text: Text::from_rope(history.text().clone()),
            durable_seq: last_seqs(history),
            replica,
            region_next,
            waiting_written: None,
            broken: false,
            pending: VecDeque::new(),
            deferred_acks: Vec::new(),
            generation: crate::storage::next_generation(),
            commit_tx,
            shared,
        };
        pipeline.trim();
        pipeline
    }

    /// The history local clients read and write.
    fn history(&self) -> &DocumentHistory {
        self.replica.history()
    }

    /// Write `items` of this document after everything submitted before
    /// (the outcome is not reported).
    pub(super) fn submit_unobserved(&self, items: Vec<WriteItem>) {
        self.lane.submit(items, Box::new(|_| {}));
    }

    /// Check `key` against `client_id`'s binding; an unbound id is bound to
    /// it in memory and the binding is written through the commit lane (in
    /// order with the document's ops), `done` called when it is durable.
    /// Without a key: allowed only if the id has no key (old clients).
    pub(super) fn check_key(
        &mut self,
        client_id: &ClientId,
        key: Option<KeyHash>,
        done: CommitCallback,
    ) -> Result<(), KeyRefused> {
        let Some(key) = key else {
            done(Ok(()));
            return match self.history().key_of(client_id) {
                Some(_) => Err(KeyRefused),
                None => Ok(()),
            };
        };
        match self.replica.bind_key(client_id, key) {
            KeyCheck::Matches => {
                done(Ok(()));
                Ok(())
            }
            KeyCheck::Mismatch => {
                done(Ok(()));
                Err(KeyRefused)
            }
            KeyCheck::Bound => {
                tracing::info!(doc = %self.id, client = %client_id, "client id bound to its key");
                self.lane.submit(
                    vec![WriteItem::ClientKey {
                        doc: self.id.clone(),
                        client_id: client_id.to_string(),
                        key_hash: key,
                    }],
                    done,
                );
                Ok(())
            }
        }
    }

    /// A binding's write failed: undo it in memory (the next connection with
    /// a key binds again, durably).
    pub(super) fn unbind_key(&mut self, client_id: &ClientId, key: KeyHash) {
        tracing::warn!(doc = %self.id, client = %client_id, "a key binding could not be stored; undone");
        self.replica.unbind_key(client_id, key);
    }

    /// The document's epoch.
    pub(super) fn epoch(&self) -> DocEpoch {
        self.epoch
    }

    /// Write `items` after everything submitted before; `done` is called
    /// when they are durable (or failed).
    pub(super) fn submit(&self, items: Vec<WriteItem>, done: CommitCallback) {
        self.lane.submit(items, done);
    }

    pub(super) fn durable_rev(&self) -> u64 {
        self.durable_rev
    }

    /// The durable revision and text.
    pub(super) fn read(&self) -> (u64, String) {
        (self.durable_rev, self.durable_text.rope().to_string())
    }

    /// Ops applied but not durable yet.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    // ---------- joins and cursors ----------

    /// What a joining client gets first: a resume from `rev` (with the ops
    /// after it) if it can be served, else a snapshot. Ops come from memory
    /// only if they fit `room`; else the connection's writer reads them all
    /// from storage, page by page.
    pub(super) fn first_frames(
        &self,
        request: &JoinRequest,
        room: JoinRoom,
        limits: Limits,
    ) -> Vec<Outbound> {
        let (client_id, rev, epoch, access) = (
            &request.client_id,
            request.rev,
            request.epoch,
            request.access,
        );
        let current_epoch = self.epoch.shown();
        let seq = self
            .durable_seq
            .get(client_id.as_str())
            .copied()
            .unwrap_or(0);
        // A regional link checks its own data against this (see
        // `RegionalDocument::upstream_resumed`): only when the record in
        // memory is the durable one.
        let last_hash = is_link_id(client_id.as_str())
            .then(|| self.history().client(client_id.as_str()))
            .flatten()
            .filter(|record| seq > 0 && record.last_seq == seq)
            .map(|record| record.last_hash.to_hex());
        let resume_from =
            rev.filter(|rev| *rev <= self.durable_rev && self.epoch.may_resume(epoch));
        let mut frames: Vec<Outbound> = Vec::new();
        match resume_from {
            Some(rev) => {
                frames.push(Outbound::Text(text_frame(&ServerMessage::Resume {
                    rev,
                    head: self.durable_rev,
                    client: client_id.as_str().into(),
                    seq,
                    epoch: current_epoch,
                    limits,
                    access,
                    last_hash: last_hash.as_deref().map(Into::into),
                })));
                let oldest = self.history().oldest_revision();
                let from = rev.max(oldest);
                let in_memory = self.durable_rev.saturating_sub(from) as usize;
                // More ops than fit would overflow the connection's queue at once
                // (and close the client as too slow every time it resumes), so the
                // writer reads them all from storage instead.
                let from_memory = (in_memory <= room.messages)
                    .then(|| self.op_frames_within(from, room.bytes))
                    .flatten();
                match from_memory {
                    Some(ops) => {
                        if rev < oldest {
                            frames.push(Outbound::CatchUp {
                                after: rev,
                                upto: oldest,
                            });
                        }
                        frames.extend(ops);
                    }
                    None => frames.push(Outbound::CatchUp {
                        after: rev,
                        upto: self.durable_rev,
                    }),
                }
            }
            None => {
                let text = self.durable_text.rope().to_string();
                frames.push(Outbound::Text(text_frame(&ServerMessage::Snapshot {
                    rev: self.durable_rev,
                    text: text.as_str().into(),
                    client: client_id.as_str().into(),
                    seq,
                    epoch: current_epoch,
                    limits,
                    access,
                    last_hash: last_hash.as_deref().map(Into::into),
                })));
            }
        }
        frames
    }

    /// The `op` frames of the durable ops after `from` in memory, if they
    /// take at most `max_bytes`.
    fn op_frames_within(&self, from: u64, max_bytes: usize) -> Option<Vec<Outbound>> {
        let mut frames = Vec::new();
        let mut bytes = 0usize;
        if let Some(ops) = self.history().ops_since(from) {
            for a in ops.iter().take_while(|a| a.rev <= self.durable_rev) {
                let frame = op_frame(a);
                bytes += frame.len();
                if bytes > max_bytes {
                    return None;
                }
                frames.push(Outbound::Text(frame));
            }
        }
        Some(frames)
    }

    /// Map a client's cursor `ranges` at `rev` to the durable revision, clamped
    /// to the document. `Ok(None)`: too old to map (the client sends a fresh
    /// cursor after catching up).
    pub(super) fn map_cursor(
        &self,
        rev: u64,
        mut ranges: Vec<Range>,
    ) -> Result<Option<Vec<Range>>, Refused> {
        if rev > self.durable_rev {
            return Err(Refused::new(
                ErrorCode::FutureRevision,
                "cursor revision is newer than the document",
            ));
        }
        let Some(ops) = self.history().ops_since(rev) else {
            return Ok(None);
        };
        for a in ops.iter().take_while(|a| a.rev <= self.durable_rev) {
            ranges = ot_core::transform_ranges(&ranges, &a.op);
        }
        // Positions past the end mean the end.
        let len = self.durable_text.len_chars();
        for r in &mut ranges {
            r.anchor = r.anchor.min(len);
            r.head = r.head.min(len);
        }
        Ok(Some(ranges))
    }

    // ---------- ops ----------

    /// Take an op from `client_id` (sent on `conn_id`): apply it and send it to
    /// storage, or recognise a resend, or refuse it.
    pub(super) async fn receive(
        &mut self,
        conn_id: u64,
        client_id: &ClientId,
        incoming: IncomingOp,
    ) -> Result<Accepted, Refused> {
        let original = self.keeps_originals().then(|| incoming.clone());
        let IncomingOp {
            seq,
            base_rev,
            op,
            ranges,
            origin,
            received_at,
        } = incoming;
        if seq == self.history().last_seq(client_id) + 1 {
            self.check_doc_len(&op)?;
        }
        // Dedup first (inside `receive`): only a new op gets `RevisionTooOld`.
        let result = self.replica.receive(client_id, seq, base_rev, op.clone());
        let result = self.receive_result(result)?;
        if let Err(ReceiveError::RevisionTooOld { oldest, .. }) = result {
            let head = self.history().revision();
            let max = self.shared.config.max_rebase_revs;
            // A regional link's op merges however long its region was cut off.
            if head - base_rev > max && !is_link_id(client_id.as_str()) {
                return Err(Refused::new(
                    ErrorCode::RevisionTooOld,
                    format!("base revision {base_rev} is more than {max} revisions behind the document's revision {head}: resync"),
                ));
            }
            return Ok(Accepted::Rebase(Box::new(RebaseJob {
                conn_id,
                client_id: client_id.clone(),
                seq,
                base_rev,
                current: op.clone(),
                received: op,
                at: base_rev,
                upto: oldest,
                ranges,
                origin,
                received_at,
            })));
        }
        self.settle(
            result,
            conn_id,
            client_id,
            op,
            (base_rev, None),
            (ranges, origin),
            (received_at, original),
        )
        .await
    }

    /// Take an op back from its rebase (see [`super::rebase`]): apply it
    /// past whatever arrived meanwhile (dedup checked again), or send it
    /// back to rebase further if the window moved past it, or refuse it.
    pub(super) async fn receive_rebased(
        &mut self,
        mut job: RebaseJob,
        result: Result<(), RebaseError>,
    ) -> Result<Accepted, Refused> {
        match result {
            Ok(()) => {}
            Err(RebaseError::DoesNotFit(e)) => {
                return Err(Refused::new(
                    ErrorCode::OpDoesNotFit,
                    format!(
                        "the operation does not fit the document at revision {}: {e}",
                        job.base_rev
                    ),
                ))
            }
            Err(RebaseError::Storage(e)) => {
                tracing::error!(doc = %self.id, error = %e, "could not read older ops");
                return Err(Refused::new(
                    ErrorCode::StorageError,
                    "could not read the ops since your base revision",
                ));
            }
        }
        let (client_id, seq) = (job.client_id.clone(), job.seq);
        if seq == self.history().last_seq(&client_id) + 1 {
            self.check_doc_len(&job.current)?;
        }
        let result = self.replica.receive_rebased(
            &client_id,
            seq,
            job.base_rev,
            job.received.clone(),
            job.current.clone(),
            job.at,
        );
        let result = self.receive_result(result)?;
        if let Err(ReceiveError::RevisionTooOld { oldest, .. }) = result {
            // More ops than the window arrived while it was rebased: once more from `at`.
            job.upto = oldest;
            return Ok(Accepted::Rebase(Box::new(job)));
        }
        let original = self.keeps_originals().then(|| IncomingOp {
            seq,
            base_rev: job.base_rev,
            op: job.received.clone(),
            ranges: job.ranges.clone(),
            origin: job.origin.clone(),
            received_at: job.received_at,
        });
        let ranges = job.ranges.take();
        let origin = job.origin.take();
        self.settle(
            result,
            job.conn_id,
            &client_id,
            job.received,
            (job.at, Some(job.current)),
            (ranges, origin),
            (job.received_at, original),
        )
        .await
    }

    /// What the replica's answer means: the receipt or the sender's error;
    /// a broken region is refused (the actor reloads it).
    fn receive_result(
        &mut self,
        result: Result<Receipt, ReplicaError>,
    ) -> Result<Result<Receipt, ReceiveError>, Refused> {
        match result {
            Ok(receipt) => Ok(Ok(receipt)),
            Err(ReplicaError::Receive(e)) => Ok(Err(e)),
            Err(ReplicaError::Broken(why)) => {
                tracing::error!(doc = %self.id, %why, "the regional history and its link disagree; reloading");
                self.broken = true;
                Err(Refused::new(
                    ErrorCode::StorageError,
                    "the document is reloading; resend the op",
                ))
            }
        }
    }

    /// The regional history and its link disagree: reload (see `is_broken`).
    pub(super) fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether the document must be reloaded (see `receive_result`).
    pub(super) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Refuse an op that would make the document longer than allowed.
    fn check_doc_len(&self, op: &Operation) -> Result<(), Refused> {
        let max_doc_len = self.shared.config.max_doc_len;
        let len = self.history().len_chars() as i128;
        let after = len + op.target_len() as i128 - op.base_len() as i128;
        if after > max_doc_len as i128 {
            return Err(Refused::new(
                ErrorCode::DocTooLong,
                format!("the document would hold {after} characters; the limit is {max_doc_len}"),
            ));
        }
        Ok(())
    }

    /// What becomes of an op the history took or recognised. `received` is
    /// the op as sent (a duplicate is looked up by its hash); `from` the
    /// revision and op (`None`: `received`) the history transformed from,
    /// for mapping `ranges`; `origin` is stored with the op; `original` the
    /// op as sent, kept to receive it again after a lost race.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &mut self,
        result: Result<Receipt, ReceiveError>,
        conn_id: u64,
        client_id: &ClientId,
        received: Operation,
        from: (u64, Option<Operation>),
        (ranges, origin): (Option<Vec<Range>>, Option<Box<OpOrigin>>),
        (received_at, original): (Instant, Option<IncomingOp>),
    ) -> Result<Accepted, Refused> {
        match result {
            Ok(Receipt::Applied {
                applied,
                received: as_received,
            }) => {
                self.shared.metrics.ops_applied.inc();
                if applied.is_concurrent() {
                    self.shared.metrics.conflicts.inc();
                }
                let (from_rev, from_op) = from;
                let from_op = from_op.unwrap_or(received);
                let ranges = ranges.map(|r| self.map_op_ranges(from_rev, applied.rev, &from_op, r));
                let origin = origin.map(|o| StoredOrigin::region(client_id.as_str(), *o));
                let committed_now = self.persist(&applied, as_received, origin);
                self.pending.push_back(Pending {
                    applied,
                    conn_id,
                    received_at,
                    ranges,
                    original,
                });
                self.trim();
                Ok(Accepted::Applied(committed_now))
            }
            Ok(Receipt::Duplicate { seq, rev }) => {
                let rev = match rev {
                    Some(rev) => rev,
                    None => match self.find_original(client_id, seq, &received).await {
                        Ok(Some(rev)) => rev,
                        Ok(None) => {
                            return Err(Refused::new(
                                ErrorCode::SeqReused,
                                "this seq was already used for a different operation",
                            ))
                        }
                        Err(e) => {
                            tracing::error!(doc = %self.id, error = %e, "dedup lookup failed");
                            return Err(Refused::new(
                                ErrorCode::StorageError,
                                "could not look up the original op",
                            ));
                        }
                    },
                };
                // Counted only once it is known to be a true resend (not `seq_reused`).
                self.shared.metrics.duplicates.inc();
                if rev <= self.durable_rev {
                    Ok(Accepted::AckNow(rev))
                } else {
                    self.deferred_acks.push((rev, conn_id, seq));
                    Ok(Accepted::AckLater)
                }
            }
            Err(e) => Err(Refused::new(ErrorCode::from_receive(&e), e.to_string())),
        }
    }

    /// Trim the in-memory window to `--history-window` ops and
    /// `--history-window-bytes`; pending ops stay in memory (later ops may
    /// need to transform past them, and storage does not have them yet).
    pub(super) fn trim(&mut self) {
        let config = &self.shared.config;
        self.replica.trim_to_bytes(
            config.history_window,
            config.history_window_bytes,
            self.pending.len(),
        );
    }

    /// Evict the dedup records of clients idle for `--client-expiry`
    /// revisions, except those `online` says are connected (see
    /// `DocumentHistory::evict_idle`). Returns how many were evicted.
    pub(super) fn evict_idle(&mut self, online: impl Fn(&str) -> bool) -> usize {
        let expiry = self.shared.config.client_expiry;
        let evicted = self.replica.evict_idle(expiry, self.durable_rev, &online);
        for id in &evicted {
            self.durable_seq.remove(id);
        }
        if !evicted.is_empty() {
            tracing::info!(doc = %self.id, evicted = evicted.len(), horizon = self.history().horizon(), "evicted idle dedup records");
        }
        evicted.len()
    }

    /// The current revision (applied in memory).
    pub(super) fn revision(&self) -> u64 {
        self.history().revision()
    }

    /// Map the ranges a client attached to its op (positions after its op, at
    /// `base_rev`) to revision `rev`, through the concurrent ops it was transformed past.
    fn map_op_ranges(
        &self,
        base_rev: u64,
        rev: u64,
        received: &Operation,
        mut ranges: Vec<Range>,
    ) -> Vec<Range> {
        let Some(concurrent) = self.history().ops_since(base_rev) else {
            return ranges; // older than memory: rare; the client's next cursor corrects it
        };
        let mut mine = received.clone();
        for other in concurrent.iter().take_while(|a| a.rev < rev) {
            match mine.transform(&other.op) {
                Ok((mine_prime, other_prime)) => {
                    ranges = ot_core::transform_ranges(&ranges, &other_prime);
                    mine = mine_prime;
                }
                Err(_) => break,
            }
        }
        ranges
    }

    /// Commit the op (and a snapshot when [`SnapshotPolicy`] says so). Returns the
    /// outcome if the commit already happened here, else it arrives later on
    /// the commit channel.
    fn persist(
        &mut self,
        applied: &AppliedOp,
        received: Operation,
        origin: Option<StoredOrigin>,
    ) -> Option<CommitDone> {
        let mut op = StoredOp::from_applied(applied, received, now_ms());
        op.origin = origin;
        let mut items = vec![WriteItem::Op {
            doc: self.id.clone(),
            op,
            len_after: applied.op.target_len() as u64,
        }];
        let snapshot_due = self.push_snapshot_if_due(&applied.op, &mut items);
        let region_commit = self.region_records(&mut items, snapshot_due);
        self.commit_items(items, applied.rev, region_commit)
    }

    /// Append a snapshot to `items` when [`SnapshotPolicy`] says one is due
    /// after `op` (the op just applied); returns whether it did.
    fn push_snapshot_if_due(&mut self, op: &Operation, items: &mut Vec<WriteItem>) -> bool {
        let due = self.snapshots.snapshot_due(op, op.target_len());
        if due {
            self.shared.metrics.snapshots.inc();
            items.push(WriteItem::Snapshot {
                doc: self.id.clone(),
                snapshot: self.history().snapshot(),
            });
        }
        due
    }

    /// On a region: append the regional entries since the last commit (and
    /// a checkpoint, if asked) to `items` as region records; returns the
    /// regional commit's number, if there were entries.
    fn region_records(&mut self, items: &mut Vec<WriteItem>, checkpoint: bool) -> Option<u64> {
        let region = self.replica.region_mut()?;
        let (commit, checkpoint) = region.take_commit(checkpoint)?;
        let number = commit.number;
        // Every entry recorded so far is in this commit: whether the link
        // has work left once it is durable (stored only when that changes).
        let waiting = region.unreplicated_ops() > 0;
        items.extend(region_items(
            &self.id,
            &mut self.region_next,
            commit,
            checkpoint,
        ));
        if self.waiting_written != Some(waiting) {
            self.waiting_written = Some(waiting);
            items.push(WriteItem::RegionWaiting {
                doc: self.id.clone(),
                waiting,
            });
        }
        Some(number)
    }

    /// On a region whose home could not resume it and which started a new
    /// regional history ([`SnapshotAdoption::Reset`]): the items that
    /// replace the document with it, after everything submitted before (a
    /// delete, then the new history's first commit with a checkpoint).
    ///
    /// [`SnapshotAdoption::Reset`]: ot_core::region::SnapshotAdoption::Reset
    pub(super) fn reset_items(
        &mut self,
        conflict_copy: Option<String>,
        home_epoch: u64,
    ) -> Vec<WriteItem> {
        let mut items: Vec<WriteItem> = conflict_copy
            .map(|text| WriteItem::ConflictCopy {
                doc: self.id.clone(),
                copy: ConflictCopy {
                    id: rand::random::<u64>() >> 1,
                    time_ms: now_ms(),
                    reason: "this server's text that its home did not take when it could not resume the document (changed or deleted there)".into(),
                    text,
                },
            })
            .into_iter()
            .collect();
        // The next generation shows more than this one, and never the
        // home's epoch (see `DocEpoch::marker_against`).
        let next = self.epoch.with_deleted(self.epoch.shown());
        let deleted = match next.marker_against(home_epoch) {
            Some(marker) => marker,
            None => self.epoch.shown(),
        };
        items.push(WriteItem::DeleteDoc {
            doc: self.id.clone(),
            epoch: deleted,
        });
        // The delete takes the stored flag with it.
        self.waiting_written = None;
        self.region_records(&mut items, true);
        items
    }

    /// Commit `items`, which make the ops up to `rev` durable (and the
    /// regional commit `region_commit`).
    fn commit_items(
        &mut self,
        items: Vec<WriteItem>,
        rev: u64,
        region_commit: Option<u64>,
    ) -> Option<CommitDone> {
        let generation = self.generation;
        let tx = self.commit_tx.clone();
        // The queue commits in place when that is cheap and nothing of this
        // document is still on its way to storage.
        let committed = self.lane.commit_as(
            generation,
            items,
            Box::new(move |result| {
                let _ = tx.send(CommitDone {
                    generation,
                    rev,
                    region_commit,
                    result,
                });
            }),
        );
        match committed {
            Committed::Now(result) => Some(CommitDone {
                generation,
                rev,
                region_commit,
                result,
            }),
            Committed::Queued => None,
        }
    }

    /// The revision of an old (client, seq), if stored with the same op.
    async fn find_original(
        &self,
        client_id: &ClientId,
        seq: u64,
        op: &Operation,
    ) -> Result<Option<u64>, DocError> {
        let storage = self.shared.storage.clone();
        let doc = self.id.clone();
        let client = client_id.clone();
        let found =
            tokio::task::spawn_blocking(move || storage.find_seq(&doc, &client, seq)).await??;
        match found {
            Some((rev, hash)) if hash == OpHash::of(op) => Ok(Some(rev)),
            Some(_) => Ok(None),
            None => Err(DocError::SeqNotStored {
                client: client_id.clone(),
                seq,
            }),
        }
    }

    // ---------- commits ----------

    /// Hand a commit's outcome that came back at once to the actor's loop
    /// (through the commit channel, in order with later ones).
    pub(super) fn redeliver(&self, done: CommitDone) {
        let _ = self.commit_tx.send(done);
    }

    /// Whether `done` is for ops dropped by an earlier failure.
    pub(super) fn is_stale(&self, done: &CommitDone) -> bool {
        done.generation != self.generation
    }

    /// The commit's result, and the revision it made durable. On a region,
    /// the regional commit it held is durable now.
    pub(super) fn outcome(&mut self, done: CommitDone) -> Result<u64, Arc<StorageError>> {
        done.result?;
        if let (Some(number), Some(region)) = (done.region_commit, self.replica.region_mut()) {
            region.committed(number);
        }
        Ok(done.rev)
    }

    /// The next pending op that is durable now (revision ≤ `rev`), applied to
    /// the durable text. `Some(Err)`: the durable text is out of step; reload.
    pub(super) fn pop_durable(&mut self, rev: u64) -> Option<Result<Pending, ()>> {
        if self.pending.front().is_none_or(|p| p.applied.rev > rev) {
            return None;
        }
        let p = self.pending.pop_front()?;
        if let Err(e) = self.durable_text.apply(&p.applied.op) {
            tracing::error!(doc = %self.id, error = %e, "durable text out of step; reloading");
            return Some(Err(()));
        }
        self.durable_rev = p.applied.rev;
        self.durable_seq
            .insert(p.applied.client_id.to_string(), p.applied.seq);
        Some(Ok(p))
    }

    /// The revision of `client_id`'s op `seq` if it is the client's last
    /// op applied (its resend is then acked with that revision).
    pub(super) fn rev_of(&self, client_id: &str, seq: u64) -> Option<u64> {
        self.history()
            .client(client_id)
            .filter(|record| record.last_seq == seq && record.last_rev > 0)
            .map(|record| record.last_rev)
    }

    /// Ack `seq` on `conn_id` once revision `rev` (not durable yet) is.
    pub(super) fn ack_when_durable(&mut self, rev: u64, conn_id: u64, seq: u64) {
        self.deferred_acks.push((rev, conn_id, seq));
    }

    /// The deferred acks whose ops are durable now: (rev, conn, seq).
    pub(super) fn ready_acks(&mut self) -> Vec<(u64, u64, u64)> {
        let durable = self.durable_rev;
        let ready = self
            .deferred_acks
            .iter()
            .copied()
            .filter(|(rev, _, _)| *rev <= durable)
            .collect();
        self.deferred_acks.retain(|(rev, _, _)| *rev > durable);
        ready
    }

    /// A commit failed: drop every pending op and deferred ack; returns the
    /// (conn, seq) of each, to tell its sender. Then [`Pipeline::reload`].
    pub(super) fn fail(&mut self, error: &StorageError) -> Vec<(u64, u64)> {
        let raced = (error.lost_races().is_some() || matches!(error, StorageError::Stale { .. }))
            && self.shared.storage.is_shared();
        if raced {
            // Normal on storage several nodes share: the clients resend.
            tracing::info!(doc = %self.id, %error, pending = self.pending.len(), "another node committed first; catching up");
        } else {
            tracing::error!(doc = %self.id, %error, pending = self.pending.len(), "commit failed; reloading the document");
        }
        self.pending
            .drain(..)
            .map(|p| (p.conn_id, p.applied.seq))
            .chain(self.deferred_acks.drain(..).map(|(_, c, s)| (c, s)))
            .collect()
    }

    /// Whether pending ops keep their originals: at a home on storage other
    /// nodes write too, where a commit can lose a race (elsewhere nothing
    /// would ever read them).
    fn keeps_originals(&self) -> bool {
        self.shared.storage.is_shared() && self.replica.region().is_none()
    }

    /// A commit lost the race to another node: take back every pending op
    /// (the history goes back to the durable head, a new generation makes
    /// the failed requests' results stale) and return their originals, to
    /// receive again once the ops the winner committed are taken
    /// ([`Pipeline::catch_up`]). `None` (nothing changed): the history
    /// cannot go back (a pending op without its original, or not at a home);
    /// fail and reload instead.
    pub(super) fn take_back(&mut self) -> Option<TakenBack> {
        if self.pending.iter().any(|p| p.original.is_none()) {
            return None;
        }
        let Replica::Home(history) = &mut self.replica else {
            return None;
        };
        if let Err(e) = history.roll_back_to(self.durable_rev, self.durable_text.rope().clone()) {
            tracing::error!(doc = %self.id, error = %e, "cannot take back the ops that lost the race");
            return None;
        }
        self.generation = crate::storage::next_generation();
        let originals = self
            .pending
            .drain(..)
            .filter_map(|p| Some((p.conn_id, p.applied.client_id, p.original?)))
            .collect();
        let unanswered = self
            .deferred_acks
            .drain(..)
            .map(|(_, conn, seq)| (conn, seq))
            .collect();
        Some(TakenBack {
            originals,
            unanswered,
        })
    }

    /// Take `ops`, committed by another node right after the durable head,
    /// as durable (only with nothing of this node pending, at a home).
    /// Returns them applied, to send to the connections; `None` when they do
    /// not continue the history (the caller reloads).
    pub(super) fn catch_up(&mut self, ops: Vec<StoredOp>) -> Option<Vec<AppliedOp>> {
        if !self.pending.is_empty() {
            return None;
        }
        let Replica::Home(history) = &mut self.replica else {
            return None;
        };
        let mut applied = Vec::with_capacity(ops.len());
        for op in ops {
            let op = op.into_applied();
            history.append_stored(op.clone()).ok()?;
            self.durable_text.apply(&op.op).ok()?;
            self.durable_rev = op.rev;
            self.durable_seq.insert(op.client_id.to_string(), op.seq);
            applied.push(op);
        }
        self.trim();
        tracing::debug!(node = %self.shared.config.addr, doc = %self.id, upto = self.durable_rev, ops = applied.len(), "caught up");
        Some(applied)
    }

    /// The durable ops after `rev`, if the history still holds them all.
    pub(super) fn durable_ops_after(&self, rev: u64) -> Option<Vec<AppliedOp>> {
        let history = self.history();
        if rev < history.oldest_revision() {
            return None;
        }
        Some(
            history
                .retained_ops()
                .iter()
                .filter(|op| op.rev > rev && op.rev <= self.durable_rev)
                .cloned()
                .collect(),
        )
    }

    /// Rebuild the in-memory state from storage (after a failed commit, or
    /// a region whose link disagreed with its history). Returns false when
    /// a region could not be recovered: the actor stops.
    pub(super) async fn reload(&mut self) -> bool {
        self.generation = crate::storage::next_generation();
        self.pending.clear();
        self.deferred_acks.clear();
        self.broken = false;
        // A failed commit may have held the last flag written.
        self.waiting_written = None;
        let regional = self.replica.region().is_some();
        let loaded = loading::load_stored(&self.shared, &self.id).await;
        tracing::debug!(node = %self.shared.config.addr, doc = %self.id, ok = loaded.is_ok(), generation = self.generation, "reloading");
        match loaded {
            Ok(Some(loaded)) if regional == loaded.replica.region().is_some() => {
                self.snapshots = loaded.snapshots;
                self.region_next = loaded.region_next;
                let history = loaded.replica.history();
                self.durable_rev = history.revision();
                self.durable_text = Text::from_rope(history.text().clone());
                self.durable_seq = last_seqs(history);
                self.replica = loaded.replica;
                self.trim();
                true
            }
            Ok(None) if !regional => {
                self.snapshots = SnapshotPolicy::after_load(self.shared.config.snapshot_every, []);
                self.replica = Replica::Home(DocumentHistory::new());
                self.durable_rev = 0;
                self.durable_text = Text::default();
                self.durable_seq.clear();
                true
            }
            _ if regional => {
                tracing::error!(doc = %self.id, "the regional document could not be recovered from storage; closing it");
                false
            }
            _ => {
                // Keep the durable state we know; roll the in-memory history back to it.
                tracing::error!(doc = %self.id, loaded = ?loaded.as_ref().map(|l| l.is_some()).map_err(|e| e.to_string()), "reload failed; continuing from the last durable state");
                // The dedup table is kept, rolled back to the durable seqs
                // (the lost ops' seqs are not applied), with every key
                // binding and the eviction horizon: a resend of an applied
                // op is still recognised.
                let durable_seq = &self.durable_seq;
                let snapshot = self.history().durable_snapshot(
                    self.durable_rev,
                    self.durable_text.rope().to_string(),
                    |id| durable_seq.get(id).copied().unwrap_or(0),
                );
                if let Ok(h) = DocumentHistory::from_snapshot(snapshot, Vec::new()) {
                    self.replica = Replica::Home(h);
                }
                true
            }
        }
    }

    // ---------- the link to the home (regions) ----------

    /// The regional document, on a region.
    pub(super) fn region(&self) -> Option<&RegionalDocument> {
        self.replica.region()
    }

    /// The regional document, on a region, for an input from the home;
    /// commit what it recorded with [`flush_region`](Self::flush_region).
    pub(super) fn region_mut(&mut self) -> Option<&mut RegionalDocument> {
        self.replica.region_mut()
    }

    /// On a region: commit the regional entries recorded since the last
    /// commit, if any. Returns the outcome if the commit already happened.
    pub(super) fn flush_region(&mut self) -> Option<CommitDone> {
        let mut items = Vec::new();
        let number = self.region_records(&mut items, false)?;
        let rev = self.history().revision();
        self.commit_items(items, rev, Some(number))
    }

    /// On a region: an op of the home that the regional document integrated
    /// as a new regional revision: commit it (with its regional entries),
    /// then it is sent to the local clients like any durable op.
    pub(super) fn upstream_integrated(&mut self, integration: &Integration) -> Option<CommitDone> {
        let applied = integration.applied.clone();
        self.shared.metrics.ops_applied.inc();
        if integration.is_concurrent() {
            self.shared.metrics.conflicts.inc();
        }
        let time_ms = now_ms();
        let mut op = StoredOp::from_applied(&applied, applied.op.clone(), time_ms);
        op.origin = Some(StoredOrigin::Upstream {
            home_rev: integration.home_rev,
            author: Some(integration.author.clone()),
        });
        let mut items = vec![WriteItem::Op {
            doc: self.id.clone(),
            op,
            len_after: applied.op.target_len() as u64,
        }];
        // Transformed past local work the home did not have: journaled here.
        if let (true, Some(first)) = (integration.is_concurrent(), integration.past_local_from) {
            items.push(WriteItem::RegionConflict {
                doc: self.id.clone(),
                conflict: RegionConflict {
                    rev: applied.rev,
                    home_rev: integration.home_rev,
                    author: integration.author.clone(),
                    author_seq: integration.author_seq,
                    received: integration.received.clone(),
                    past_local: (first, applied.rev.saturating_sub(1)),
                    local: integration.local.clone(),
                    applied: applied.op.clone(),
                    time_ms,
                },
            });
        }
        let snapshot_due = self.push_snapshot_if_due(&applied.op, &mut items);
        let region_commit = self.region_records(&mut items, snapshot_due);
        let rev = applied.rev;
        self.pending.push_back(Pending {
            applied,
            // No connection has this id: every local client gets the op.
            conn_id: 0,
            received_at: Instant::now(),
            ranges: None,
            original: None,
        });
        self.trim();
        self.commit_items(items, rev, region_commit)
    }
}
