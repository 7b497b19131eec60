//! The client side of the protocol, without I/O: the ot.js state machine with
//! sequence numbers for exactly-once delivery.
//!
//! A [`Client`] is in one of three states:
//! - **synchronized**: nothing outstanding;
//! - **awaiting ack**: one operation sent and not yet acknowledged;
//! - **awaiting ack with a queue**: plus the local edits made since, as a
//!   queue of operations each within the server's [`OpLimits`].
//!
//! Local edits apply to the local text at once ([`Client::local_edit`]). An
//! edit is composed into the last queued op while the result stays within the
//! limits; otherwise it starts a new queued op (an edit beyond the limits by
//! itself is split first), so no amount of offline editing ever makes an op
//! the server refuses for its size. The queued ops are sent one at a time, the
//! next on each ack. An operation gets its sequence number when it leaves the
//! queue to be sent, and from then on it is never changed: after a reconnect
//! it is resent byte-for-byte with the same seq and base revision
//! ([`Client::pending_resend`]), and the server's dedup table makes sure it is
//! applied at most once.
//!
//! The client's own operations are always `a` in transforms, like on the
//! server: for a remote op `r`, `(o', r1) = transform(outstanding, r)`, then
//! `(q1', r2) = transform(q1, r1)` through every queued op in order, and the
//! last `r` is applied locally.
//!
//! The state is serialisable ([`ClientState`]); a client persists it before
//! it sends an operation, so it can resume after a restart.

use ropey::Rope;
use serde::{Deserialize, Serialize};

use std::collections::VecDeque;

use crate::error::OtError;
use crate::operation::Operation;
use crate::split::OpLimits;
use crate::{Range, Text};

/// An operation to put on the wire: `{"type":"op","rev":base_rev,"seq":seq,"op":op}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingOp {
    /// The client's sequence number for this op (from 1, per document and client id).
    pub seq: u64,
    /// The revision the op is based on.
    pub base_rev: u64,
    /// The operation.
    pub op: Operation,
}

/// The operation sent and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outstanding {
    /// Its sequence number.
    pub seq: u64,
    /// The revision it was based on when sent.
    pub base_rev: u64,
    /// Exactly as sent: resent unchanged after a reconnect.
    pub sent: Operation,
    /// Transformed past the remote ops received since it was sent: how it
    /// applies on top of the client's known revision.
    pub current: Operation,
    /// The highest tag of the local edits it holds (see
    /// [`Client::local_edit_tagged`]); 0 for untagged edits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tag: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn all_zero(tags: &[u64]) -> bool {
    tags.iter().all(|t| *t == 0)
}

/// A queued local edit and the highest tag among the edits it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    op: Operation,
    tag: u64,
}

impl Queued {
    /// `op` cut to fit `limits`, each piece with the same tag.
    fn split(op: &Operation, tag: u64, limits: OpLimits) -> impl Iterator<Item = Queued> {
        op.split(limits)
            .into_iter()
            .map(move |op| Queued { op, tag })
    }
}

/// Everything needed to rebuild a [`Client`] after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    /// The client id (one running writer).
    pub client_id: String,
    /// The seq the next operation sent will get.
    pub next_seq: u64,
    /// The last server revision the client has integrated.
    pub revision: u64,
    /// The document's text at `revision`.
    pub synced_text: String,
    /// The op awaiting an ack, if any.
    pub outstanding: Option<Outstanding>,
    /// Local edits made since the outstanding op was sent: ops applied one
    /// after the other on top of it, each sent after the previous one's ack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<Operation>,
    /// The tag of each op in `queue`, in order (absent when all are 0).
    #[serde(default, skip_serializing_if = "all_zero")]
    pub queue_tags: Vec<u64>,
    /// States saved before the queue kept the local edits composed into one
    /// op here: read as a queue of that one op (first, before `queue`);
    /// never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<Operation>,
    /// The limits last announced (so edits made offline after a restart are
    /// queued within them); absent from older states: [`OpLimits::DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<OpLimits>,
    /// The highest tag the server has acknowledged (0: none, or untagged
    /// edits); absent from older states.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub acked_tag: u64,
}

/// Why the client could not take a message.
///
/// | code | meaning |
/// |---|---|
/// | `revision_gap` | a server op skipped a revision: reconnect with `rev` |
/// | `op_does_not_fit` | a server op does not fit the client's text at its revision: resync from a snapshot |
/// | `local_op_does_not_fit` | a local edit does not fit the local text |
/// | `resume_mismatch` | a resume did not start at the client's revision |
/// | `stale_state` | the server has applied seqs this client never sent (a stale saved state): resync from a snapshot |
/// | `corrupt_state` | a saved [`ClientState`] is inconsistent |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A server op skipped a revision.
    #[error("expected revision {expected} but received {received}")]
    RevisionGap {
        /// The revision expected next.
        expected: u64,
        /// The revision received.
        received: u64,
    },
    /// A server op does not fit the text at the client's revision.
    #[error("the server's operation does not fit the document: {0}")]
    DoesNotFit(OtError),
    /// A local edit does not fit the local text.
    #[error("the local edit does not fit the local text: {0}")]
    LocalDoesNotFit(OtError),
    /// A resume started at another revision than the client's.
    #[error("the server resumed at revision {server} but the client is at {client}")]
    ResumeMismatch {
        /// The client's revision.
        client: u64,
        /// The revision the server resumed at.
        server: u64,
    },
    /// The server has applied seqs this client never sent.
    #[error("the server has applied seq {server_seq} but this client's next seq is {next_seq}: the saved state is stale")]
    StaleState {
        /// The last seq the server applied.
        server_seq: u64,
        /// This client's next seq.
        next_seq: u64,
    },
    /// A saved state is inconsistent.
    #[error("the saved client state is inconsistent: {0}")]
    CorruptState(OtError),
}

impl ClientError {
    /// The stable machine-readable code of this error (see the table above).
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::RevisionGap { .. } => "revision_gap",
            ClientError::DoesNotFit(_) => "op_does_not_fit",
            ClientError::LocalDoesNotFit(_) => "local_op_does_not_fit",
            ClientError::ResumeMismatch { .. } => "resume_mismatch",
            ClientError::StaleState { .. } => "stale_state",
            ClientError::CorruptState(_) => "corrupt_state",
        }
    }
}

/// What a server `op` message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// Its revision was already integrated: nothing changed.
    Ignored,
    /// Another writer's op: this (transformed) operation was applied to the
    /// local text; an editor applies the same to its view and cursors.
    Applied(Operation),
    /// It was this client's own outstanding op (seen in the stream after a
    /// resume): taken as its ack. Send `next` if present.
    Acknowledged {
        /// The next op to send, if edits were queued.
        next: Option<OutgoingOp>,
    },
}

/// What an `ack` message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// It did not match the outstanding op (a repeated or stale ack): ignored.
    Ignored,
    /// The outstanding op is acknowledged. Send `next` if present.
    Acknowledged {
        /// The next op to send, if edits were queued.
        next: Option<OutgoingOp>,
    },
}

/// What a fresh snapshot (the server could not resume) did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotOutcome {
    /// The local text with pending edits that could not be rebased onto the
    /// snapshot. Keep it for the user as a conflict copy; the client now shows
    /// the snapshot's text.
    pub conflict_copy: Option<String>,
    /// An op to send now (pending edits that could be rebased).
    pub send: Option<OutgoingOp>,
}

/// The client state machine for one document.
#[derive(Debug, Clone)]
pub struct Client {
    client_id: String,
    next_seq: u64,
    revision: u64,
    /// Text at `revision`.
    synced: Text,
    /// Local text: `synced` + outstanding + every queued op.
    text: Text,
    outstanding: Option<Outstanding>,
    /// Unsent local edits, in order; never empty ops, and not empty while
    /// nothing is outstanding.
    queue: VecDeque<Queued>,
    /// What each op sent must fit.
    limits: OpLimits,
    /// The highest tag among the acknowledged edits.
    acked_tag: u64,
}

impl Client {
    /// A synchronized client at `revision` with `text`, whose next op gets seq
    /// `last_seq + 1` (`last_seq`: the last seq the server applied from this
    /// client id on this document, 0 for a new id).
    pub fn new(client_id: impl Into<String>, revision: u64, text: &str, last_seq: u64) -> Self {
        let synced = Text::from(text);
        Client {
            client_id: client_id.into(),
            next_seq: last_seq + 1,
            revision,
            text: synced.clone(),
            synced,
            outstanding: None,
            queue: VecDeque::new(),
            limits: OpLimits::DEFAULT,
            acked_tag: 0,
        }
    }

    /// Rebuild a client from a saved state.
    pub fn from_state(state: ClientState) -> Result<Self, ClientError> {
        let synced = Text::from(state.synced_text.as_str());
        let mut text = synced.clone();
        if let Some(o) = &state.outstanding {
            text.apply(&o.current).map_err(ClientError::CorruptState)?;
        }
        // An old state's buffer comes first: it is all there is in one.
        let mut tags = state.queue_tags.into_iter();
        let queue: VecDeque<Queued> = state
            .buffer
            .into_iter()
            .map(|op| Queued { op, tag: 0 })
            .chain(state.queue.into_iter().map(|op| Queued {
                op,
                tag: tags.next().unwrap_or(0),
            }))
            .filter(|q| !q.op.is_noop())
            .collect();
        if let Some(first) = queue.front() {
            if state.outstanding.is_none() {
                return Err(ClientError::CorruptState(OtError::ComposeMismatch {
                    first_target: 0,
                    second_base: first.op.base_len(),
                }));
            }
        }
        for q in &queue {
            text.apply(&q.op).map_err(ClientError::CorruptState)?;
        }
        Ok(Client {
            client_id: state.client_id,
            next_seq: state.next_seq.max(1),
            revision: state.revision,
            synced,
            text,
            outstanding: state.outstanding,
            queue,
            limits: state.limits.unwrap_or_default(),
            acked_tag: state.acked_tag,
        })
    }

    /// The state to persist (before sending an op, and after any change).
    pub fn state(&self) -> ClientState {
        ClientState {
            client_id: self.client_id.clone(),
            next_seq: self.next_seq,
            revision: self.revision,
            synced_text: self.synced.rope().to_string(),
            outstanding: self.outstanding.clone(),
            queue: self.queue.iter().map(|q| q.op.clone()).collect(),
            queue_tags: self.queue.iter().map(|q| q.tag).collect(),
            buffer: None,
            limits: Some(self.limits),
            acked_tag: self.acked_tag,
        }
    }

    /// The limits every op sent must fit (the server's announced `limits`;
    /// [`OpLimits::DEFAULT`] until set). Call it on every first message:
    /// limits may shrink on a reconnect to another server, and queued ops
    /// beyond the new ones are split again (the outstanding op already has
    /// its seq: it is resent as it is). Returns whether the queue changed.
    pub fn set_limits(&mut self, limits: OpLimits) -> bool {
        self.limits = limits;
        if self.queue.iter().all(|q| q.op.fits(limits)) {
            return false;
        }
        self.queue = std::mem::take(&mut self.queue)
            .into_iter()
            .flat_map(|q| Queued::split(&q.op, q.tag, limits))
            .collect();
        true
    }

    /// The limits ops are kept within.
    pub fn limits(&self) -> OpLimits {
        self.limits
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The local text, with all local edits.
    pub fn text(&self) -> &Rope {
        self.text.rope()
    }

    /// The text at the last integrated server revision.
    pub fn synced_text(&self) -> &Rope {
        self.synced.rope()
    }

    /// The last integrated server revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The seq the next op sent will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The op awaiting an ack, if any.
    pub fn outstanding(&self) -> Option<&Outstanding> {
        self.outstanding.as_ref()
    }

    /// The local edits waiting to be sent, in order (each within the limits
    /// it was made under; split again when it leaves if that changed).
    pub fn queue(&self) -> impl ExactSizeIterator<Item = &Operation> {
        self.queue.iter().map(|q| &q.op)
    }

    /// The lowest tag among the local edits not yet acknowledged (the
    /// outstanding op's, else the first queued op's), if any: every edit
    /// tagged below it is acknowledged. Tags never decrease along the queue.
    pub fn oldest_pending_tag(&self) -> Option<u64> {
        match &self.outstanding {
            Some(o) => Some(o.tag),
            None => self.queue.front().map(|q| q.tag),
        }
    }

    /// The highest tag among the acknowledged edits (0: none).
    pub fn acked_tag(&self) -> u64 {
        self.acked_tag
    }

    /// The tags of the edits the outstanding op carries, `(lo, hi)`: those
    /// tagged above the last acknowledged edit's, up to its own (the same
    /// tag twice for the later pieces of an edit split to fit the limits).
    /// `None` when nothing is outstanding or its edits were untagged.
    pub fn outstanding_tags(&self) -> Option<(u64, u64)> {
        let hi = self.outstanding.as_ref()?.tag;
        if hi == 0 {
            return None;
        }
        let lo = if hi > self.acked_tag {
            self.acked_tag + 1
        } else {
            hi
        };
        Some((lo, hi))
    }

    /// "All my edits are saved": nothing outstanding and nothing queued.
    pub fn all_saved(&self) -> bool {
        self.outstanding.is_none() && self.queue.is_empty()
    }

    /// Number of local operations not yet acknowledged: the outstanding op
    /// and the queued ones.
    pub fn unacknowledged(&self) -> usize {
        usize::from(self.outstanding.is_some()) + self.queue.len()
    }

    /// The outstanding op as it must be resent after a reconnect (same seq,
    /// same base revision, same operation), if any.
    pub fn pending_resend(&self) -> Option<OutgoingOp> {
        self.outstanding.as_ref().map(|o| OutgoingOp {
            seq: o.seq,
            base_rev: o.base_rev,
            op: o.sent.clone(),
        })
    }

    /// Apply a local edit (based on the current local text) at once. Returns
    /// the op to send now, if the client was synchronized; otherwise the edit is
    /// composed into the last queued op (while that stays within the limits)
    /// or queued, and sent after the acks of those before it.
    ///
    /// Persist [`state`](Self::state) before sending the returned op.
    pub fn local_edit(&mut self, op: &Operation) -> Result<Option<OutgoingOp>, ClientError> {
        self.local_edit_tagged(op, 0)
    }

    /// [`local_edit`](Self::local_edit) with a caller's tag (non-decreasing
    /// from one edit to the next, e.g. the revision at which a regional
    /// server applied it): each op keeps the highest tag of the edits it
    /// holds, so the caller learns which edits are acknowledged
    /// ([`oldest_pending_tag`](Self::oldest_pending_tag)).
    pub fn local_edit_tagged(
        &mut self,
        op: &Operation,
        tag: u64,
    ) -> Result<Option<OutgoingOp>, ClientError> {
        if op.base_len() != self.text.len_chars() {
            return Err(ClientError::LocalDoesNotFit(OtError::LengthMismatch {
                expected: op.base_len(),
                actual: self.text.len_chars(),
            }));
        }
        if op.is_noop() {
            return Ok(None);
        }
        let composed = match self.queue.back() {
            Some(last) => Some(last.op.compose(op).map_err(ClientError::LocalDoesNotFit)?),
            None => None,
        };
        self.text.apply(op).map_err(ClientError::LocalDoesNotFit)?;
        match composed {
            Some(c) if c.fits(self.limits) => {
                self.queue.pop_back();
                if !c.is_noop() {
                    self.queue.push_back(Queued { op: c, tag });
                }
            }
            _ => self.queue.extend(Queued::split(op, tag, self.limits)),
        }
        if self.outstanding.is_none() {
            return Ok(self.send_next());
        }
        Ok(None)
    }

    /// Send the first queued op (split again if it no longer fits the
    /// limits, e.g. after transforms added components): it gets a seq and
    /// becomes the outstanding op.
    fn send_next(&mut self) -> Option<OutgoingOp> {
        while let Some(Queued { op, tag }) = self.queue.pop_front() {
            if op.is_noop() {
                continue;
            }
            if op.fits(self.limits) {
                return Some(self.start_sending(op, tag));
            }
            let mut pieces = Queued::split(&op, tag, self.limits);
            let first = pieces.next()?;
            for (i, piece) in pieces.enumerate() {
                self.queue.insert(i, piece);
            }
            return Some(self.start_sending(first.op, tag));
        }
        None
    }

    /// Give `op` (not a no-op) a seq and make it the outstanding op.
    fn start_sending(&mut self, op: Operation, tag: u64) -> OutgoingOp {
        let outgoing = OutgoingOp {
            seq: self.next_seq,
            base_rev: self.revision,
            op: op.clone(),
        };
        self.next_seq += 1;
        self.outstanding = Some(Outstanding {
            seq: outgoing.seq,
            base_rev: outgoing.base_rev,
            sent: op.clone(),
            current: op,
            tag,
        });
        outgoing
    }

    /// The server acknowledged `seq` as revision `rev`.
    pub fn ack(&mut self, rev: u64, seq: u64) -> Result<AckOutcome, ClientError> {
        match &self.outstanding {
            Some(o) if o.seq == seq => {}
            _ => return Ok(AckOutcome::Ignored),
        }
        if rev <= self.revision {
            return Ok(AckOutcome::Ignored);
        }
        if rev != self.revision + 1 {
            return Err(ClientError::RevisionGap {
                expected: self.revision + 1,
                received: rev,
            });
        }
        Ok(AckOutcome::Acknowledged {
            next: self.acknowledge(rev)?,
        })
    }

    fn acknowledge(&mut self, rev: u64) -> Result<Option<OutgoingOp>, ClientError> {
        if let Some(o) = self.outstanding.take() {
            if let Err(e) = self.synced.apply(&o.current) {
                self.outstanding = Some(o);
                return Err(ClientError::CorruptState(e));
            }
            self.acked_tag = self.acked_tag.max(o.tag);
        }
        self.revision = rev;
        Ok(self.send_next())
    }

    /// A server `op` message: revision `rev` was created by `op` from
    /// (`client_id`, `seq`).
    pub fn remote_op(
        &mut self,
        rev: u64,
        op: &Operation,
        client_id: &str,
        seq: u64,
    ) -> Result<RemoteOutcome, ClientError> {
        if rev <= self.revision {
            return Ok(RemoteOutcome::Ignored);
        }
        if rev != self.revision + 1 {
            return Err(ClientError::RevisionGap {
                expected: self.revision + 1,
                received: rev,
            });
        }
        let own =
            client_id == self.client_id && self.outstanding.as_ref().is_some_and(|o| o.seq == seq);
        if own {
            return Ok(RemoteOutcome::Acknowledged {
                next: self.acknowledge(rev)?,
            });
        }
        if op.base_len() != self.synced.len_chars() {
            return Err(ClientError::DoesNotFit(OtError::LengthMismatch {
                expected: op.base_len(),
                actual: self.synced.len_chars(),
            }));
        }
        // Compute everything before changing anything, so an error leaves the state intact.
        let (outstanding, r1) = match &self.outstanding {
            Some(o) => {
                let (o2, r1) = o.current.transform(op).map_err(ClientError::DoesNotFit)?;
                (Some(o2), r1)
            }
            None => (None, op.clone()),
        };
        let mut r = r1;
        let mut queue = VecDeque::with_capacity(self.queue.len());
        for q in &self.queue {
            let (q2, r2) = q.op.transform(&r).map_err(ClientError::DoesNotFit)?;
            // An edit the remote op undid entirely (both deleted it) is gone.
            if !q2.is_noop() {
                queue.push_back(Queued { op: q2, tag: q.tag });
            }
            r = r2;
        }
        self.synced.apply(op).map_err(ClientError::DoesNotFit)?;
        self.text.apply(&r).map_err(ClientError::CorruptState)?;
        if let (Some(o), Some(current)) = (self.outstanding.as_mut(), outstanding) {
            o.current = current;
        }
        self.queue = queue;
        self.revision = rev;
        Ok(RemoteOutcome::Applied(r))
    }

    /// The server resumed the connection at `rev` (which must be the client's
    /// revision); `last_seq` is the last seq it applied from this client.
    /// The ops after `rev` follow as [`remote_op`](Self::remote_op)s.
    ///
    /// Returns the outstanding op to resend (unchanged) if the server has not
    /// applied it; if it has, it arrives in the op stream and counts as the ack.
    pub fn resumed(&mut self, rev: u64, last_seq: u64) -> Result<Option<OutgoingOp>, ClientError> {
        if rev != self.revision {
            return Err(ClientError::ResumeMismatch {
                client: self.revision,
                server: rev,
            });
        }
        if last_seq >= self.next_seq {
            return Err(ClientError::StaleState {
                server_seq: last_seq,
                next_seq: self.next_seq,
            });
        }
        match &self.outstanding {
            Some(o) if last_seq < o.seq => Ok(self.pending_resend()),
            _ => Ok(None),
        }
    }

    /// The server sent a fresh snapshot instead of resuming (it could not, or
    /// its epoch changed): revision `rev`, `text`, and `last_seq`, the last seq
    /// it applied from this client.
    ///
    /// Pending edits are rebased when that is provably safe: the outstanding op
    /// was applied and the snapshot is exactly the text it produced (the
    /// queued ops follow as they are), or it was not applied and the snapshot
    /// is exactly the text it was based on (it is queued again, first, and
    /// gets a new seq). Otherwise the local text is returned as a conflict
    /// copy (never dropped silently) and the client adopts the snapshot.
    pub fn snapshot(&mut self, rev: u64, text: &str, last_seq: u64) -> SnapshotOutcome {
        let local_text = self.text.rope().to_string();
        let old_synced = std::mem::replace(&mut self.synced, Text::from(text));
        self.text = self.synced.clone();
        self.revision = rev;
        self.next_seq = last_seq + 1;
        let outstanding = self.outstanding.take();
        let mut queue = std::mem::take(&mut self.queue);
        queue.retain(|q| !q.op.is_noop());
        let mut outcome = SnapshotOutcome::default();
        let Some(o) = outstanding else {
            return outcome;
        };

        enum Plan {
            Clean,
            Rebase(VecDeque<Queued>),
            Conflict,
        }
        let plan = if last_seq == o.seq {
            // Applied. Only the queue is pending; it is based on known text + our op.
            self.acked_tag = self.acked_tag.max(o.tag);
            if queue.is_empty() {
                Plan::Clean
            } else {
                let mut after = old_synced;
                if after.apply(&o.current).is_ok() && after == self.synced {
                    Plan::Rebase(queue)
                } else {
                    Plan::Conflict
                }
            }
        } else if last_seq < o.seq && old_synced == self.synced {
            // Not applied, and the server's text is still the one it was based on.
            if !o.current.is_noop() {
                queue.push_front(Queued {
                    op: o.current,
                    tag: o.tag,
                });
            }
            Plan::Rebase(queue)
        } else {
            Plan::Conflict
        };
        match plan {
            Plan::Clean => {}
            Plan::Rebase(ops) => {
                let mut rebased = self.text.clone();
                if ops.iter().all(|q| rebased.apply(&q.op).is_ok()) {
                    self.text = rebased;
                    self.queue = ops;
                    outcome.send = self.send_next();
                } else if local_text != text {
                    outcome.conflict_copy = Some(local_text);
                }
            }
            Plan::Conflict => {
                if local_text != text {
                    outcome.conflict_copy = Some(local_text);
                }
            }
        }
        outcome
    }

    /// Map another client's selection ranges, given at the client's known
    /// revision, into the local text (through the outstanding op and every
    /// queued op).
    pub fn transform_remote_ranges(&self, ranges: &[Range]) -> Vec<Range> {
        ranges
            .iter()
            .map(|r| {
                let mut r = *r;
                if let Some(o) = &self.outstanding {
                    r = o.current.transform_range(r);
                }
                for q in &self.queue {
                    r = q.op.transform_range(r);
                }
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(len: usize, pos: usize, text: &str) -> Operation {
        Operation::insert_at(len, pos, text).unwrap()
    }

    #[test]
    fn awaiting_ack_then_buffer_then_flush() {
        let mut c = Client::new("me", 0, "", 0);
        let first = c.local_edit(&ins(0, 0, "ab")).unwrap().unwrap();
        assert_eq!((first.seq, first.base_rev), (1, 0));
        assert_eq!(c.local_edit(&ins(2, 2, "c")).unwrap(), None);
        assert_eq!(c.local_edit(&ins(3, 0, "🙂")).unwrap(), None);
        assert_eq!(c.unacknowledged(), 2);
        // A remote op concurrent with both: our inserts are `a`, so they win the tie at 0
        // (exactly what the server will do with our ops).
        let out = c.remote_op(1, &ins(0, 0, "X"), "other", 1).unwrap();
        assert_eq!(out, RemoteOutcome::Applied(ins(4, 4, "X")));
        assert_eq!(c.text().to_string(), "🙂abcX");
        assert_eq!(c.synced_text().to_string(), "X");
        assert_eq!(c.ack(2, 7).unwrap(), AckOutcome::Ignored);
        let AckOutcome::Acknowledged { next: Some(next) } = c.ack(2, 1).unwrap() else {
            panic!("expected the buffer to be sent");
        };
        assert_eq!((next.seq, next.base_rev), (2, 2));
        assert_eq!(next.op.apply("abX").unwrap(), "🙂abcX");
        assert!(!c.all_saved());
        assert_eq!(
            c.ack(3, 2).unwrap(),
            AckOutcome::Acknowledged { next: None }
        );
        assert!(c.all_saved());
        assert_eq!(c.synced_text().to_string(), "🙂abcX");
    }

    #[test]
    fn noop_buffer_uses_no_seq() {
        let mut c = Client::new("me", 0, "x", 0);
        c.local_edit(&ins(1, 1, "a")).unwrap();
        c.local_edit(&ins(2, 0, "b")).unwrap();
        c.local_edit(&Operation::delete_range(3, 0, 1).unwrap())
            .unwrap();
        assert_eq!(
            c.ack(1, 1).unwrap(),
            AckOutcome::Acknowledged { next: None }
        );
        assert_eq!(c.next_seq(), 2);
        assert_eq!(c.local_edit(&Operation::identity(2)).unwrap(), None);
    }

    #[test]
    fn resume_resends_byte_for_byte_or_takes_own_op_as_ack() {
        let mut c = Client::new("me", 5, "hello", 3);
        let sent = c.local_edit(&ins(5, 5, "!")).unwrap().unwrap();
        assert_eq!(sent.seq, 4);
        c.local_edit(&ins(6, 0, ">")).unwrap();
        // Not applied by the server: resend the same op.
        assert_eq!(c.resumed(5, 3).unwrap(), Some(sent.clone()));
        // Applied: it shows up in the stream after a concurrent op.
        let saved = c.state();
        let mut d = Client::from_state(saved.clone()).unwrap();
        assert_eq!(d.resumed(5, 4).unwrap(), None);
        d.remote_op(6, &ins(5, 0, "A"), "other", 9).unwrap();
        let RemoteOutcome::Acknowledged { next: Some(next) } =
            d.remote_op(7, &ins(6, 6, "!"), "me", 4).unwrap()
        else {
            panic!("own op must count as the ack");
        };
        assert_eq!(next.seq, 5);
        assert_eq!(d.text().to_string(), ">Ahello!");
        assert_eq!(d.synced_text().to_string(), "Ahello!");
        // A stale saved state is detected rather than reusing seqs.
        let mut e = Client::from_state(saved).unwrap();
        assert_eq!(e.resumed(5, 9).unwrap_err().code(), "stale_state");
        assert_eq!(e.resumed(4, 3).unwrap_err().code(), "resume_mismatch");
    }

    #[test]
    fn snapshot_rebases_or_keeps_a_conflict_copy() {
        // Not applied, server text unchanged: resent with a fresh base.
        let mut c = Client::new("me", 2, "ab", 1);
        c.local_edit(&ins(2, 2, "c")).unwrap();
        let out = c.snapshot(7, "ab", 1);
        assert_eq!(out.conflict_copy, None);
        let send = out.send.unwrap();
        assert_eq!((send.seq, send.base_rev), (2, 7));
        assert_eq!(c.text().to_string(), "abc");

        // Applied, with a buffer, and the snapshot is exactly our result: buffer kept.
        let mut c = Client::new("me", 2, "ab", 1);
        c.local_edit(&ins(2, 2, "c")).unwrap();
        c.local_edit(&ins(3, 3, "d")).unwrap();
        let out = c.snapshot(3, "abc", 2);
        assert_eq!(out.conflict_copy, None);
        assert_eq!(out.send.unwrap().seq, 3);
        assert_eq!(c.text().to_string(), "abcd");

        // Server text diverged and our op was not applied: conflict copy.
        let mut c = Client::new("me", 2, "ab", 1);
        c.local_edit(&ins(2, 2, "c")).unwrap();
        let out = c.snapshot(9, "zz", 1);
        assert_eq!(out.conflict_copy.as_deref(), Some("abc"));
        assert_eq!(out.send, None);
        assert_eq!(c.text().to_string(), "zz");
        assert!(c.all_saved());
        assert_eq!(c.next_seq(), 2);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut c = Client::new("me", 0, "é", 0);
        c.local_edit(&ins(1, 1, "漢")).unwrap();
        c.local_edit(&ins(2, 0, "🙂")).unwrap();
        let json = serde_json::to_string(&c.state()).unwrap();
        let back: ClientState = serde_json::from_str(&json).unwrap();
        let d = Client::from_state(back).unwrap();
        assert_eq!(d.text().to_string(), "🙂é漢");
        assert_eq!(d.pending_resend(), c.pending_resend());
        let mut bad = c.state();
        bad.synced_text.push('x');
        assert_eq!(Client::from_state(bad).unwrap_err().code(), "corrupt_state");
    }

    fn small(len: usize, comps: usize) -> OpLimits {
        OpLimits {
            max_op_len: len,
            max_op_components: comps,
        }
    }

    /// Ack the outstanding op at the next revision; the next op sent, if any.
    fn ack_next(c: &mut Client) -> Option<OutgoingOp> {
        let seq = c.outstanding().map(|o| o.seq).unwrap();
        let AckOutcome::Acknowledged { next } = c.ack(c.revision() + 1, seq).unwrap() else {
            panic!("the ack must match");
        };
        next
    }

    #[test]
    fn tags_say_which_edits_are_acknowledged_through_composition_splits_and_restarts() {
        let limits = OpLimits {
            max_op_len: 3,
            max_op_components: 4,
        };
        let mut c = Client::new("c", 0, "", 0);
        c.set_limits(limits);
        assert_eq!(c.oldest_pending_tag(), None);
        let sent = c
            .local_edit_tagged(&Operation::insert_at(0, 0, "ab").unwrap(), 5)
            .unwrap()
            .unwrap();
        // Composed into one queued op: it holds the higher tag.
        c.local_edit_tagged(&Operation::insert_at(2, 2, "c").unwrap(), 7)
            .unwrap();
        c.local_edit_tagged(&Operation::insert_at(3, 3, "d").unwrap(), 8)
            .unwrap();
        // Beyond the limits by itself: split, every piece with its tag.
        c.local_edit_tagged(&Operation::insert_at(4, 4, "efghij").unwrap(), 9)
            .unwrap();
        assert_eq!(c.oldest_pending_tag(), Some(5));
        assert_eq!(c.outstanding_tags(), Some((1, 5)));
        let restarted = Client::from_state(
            serde_json::from_str(&serde_json::to_string(&c.state()).unwrap()).unwrap(),
        )
        .unwrap();
        let mut tags = Vec::new();
        let mut covered = Vec::new();
        let mut c = restarted;
        let mut ack = (1, sent.seq);
        loop {
            match c.ack(ack.0, ack.1).unwrap() {
                AckOutcome::Acknowledged { next: Some(next) } => {
                    tags.push(c.oldest_pending_tag().unwrap());
                    covered.push(c.outstanding_tags().unwrap());
                    ack = (ack.0 + 1, next.seq);
                }
                AckOutcome::Acknowledged { next: None } => break,
                AckOutcome::Ignored => panic!("ack ignored"),
            }
        }
        assert_eq!(c.oldest_pending_tag(), None);
        assert_eq!(tags.first(), Some(&8), "\"cd\" went as one op tagged 8");
        // What each op carries: the edits after the last acknowledged one
        // (kept across the restart), then each later piece of the split edit.
        assert_eq!(covered.first(), Some(&(6, 8)), "{covered:?}");
        assert_eq!(covered.get(1), Some(&(9, 9)), "{covered:?}");
        assert!(covered[1..].iter().all(|c| *c == (9, 9)), "{covered:?}");
        assert_eq!(c.outstanding_tags(), None);
        assert!(tags[1..].iter().all(|t| *t == 9), "{tags:?}");
        assert!(tags.len() >= 3, "the long edit was split: {tags:?}");
    }

    #[test]
    fn edits_queue_within_the_limits_and_leave_one_per_ack() {
        let mut c = Client::new("me", 0, "", 0);
        c.set_limits(small(3, 10));
        // An edit beyond the limits is split before it is sent.
        let first = c.local_edit(&ins(0, 0, "abcdefgh")).unwrap().unwrap();
        assert_eq!(first.op.to_json(), r#"["abc"]"#);
        assert_eq!(c.unacknowledged(), 3);
        // Typing composes into the last queued op while it fits ("gh" + "i"),
        // then starts a new one.
        assert_eq!(c.local_edit(&ins(8, 8, "i")).unwrap(), None);
        assert_eq!(c.local_edit(&ins(9, 9, "j")).unwrap(), None);
        let queued: Vec<String> = c.queue().map(|op| op.to_json()).collect();
        assert_eq!(queued, [r#"[3,"def"]"#, r#"[6,"ghi"]"#, r#"[9,"j"]"#]);
        let mut seqs = vec![first.seq];
        let mut synced = first.op.apply("").unwrap();
        while let Some(next) = ack_next(&mut c) {
            assert!(next.op.fits(c.limits()));
            assert_eq!(next.base_rev, c.revision());
            seqs.push(next.seq);
            synced = next.op.apply(&synced).unwrap();
        }
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(synced, "abcdefghij");
        assert!(c.all_saved());
        assert_eq!(c.synced_text().to_string(), "abcdefghij");
    }

    #[test]
    fn remote_ops_transform_through_every_queued_op() {
        let mut c = Client::new("me", 0, "xy", 0);
        c.set_limits(small(2, 10));
        let sent = c.local_edit(&ins(2, 1, "abcd")).unwrap().unwrap();
        assert_eq!(sent.op.to_json(), r#"[1,"ab",1]"#);
        c.local_edit(&ins(6, 6, "ef")).unwrap();
        assert_eq!(c.unacknowledged(), 3);
        // Another writer inserts at the start and at the end.
        let remote = Operation::from_json(r#"["<",2,">"]"#).unwrap();
        let RemoteOutcome::Applied(local) = c.remote_op(1, &remote, "other", 1).unwrap() else {
            panic!("a remote op");
        };
        assert_eq!(local.apply("xabcdyef").unwrap(), "<xabcdyef>");
        assert_eq!(c.text().to_string(), "<xabcdyef>");
        // What the server would do: each queued op, sent after the acks, lands right.
        // The outstanding op is acked as revision 2: the server has "<xaby>".
        let second = ack_next(&mut c).unwrap();
        assert_eq!(second.base_rev, 2);
        let mut server = second.op.apply("<xaby>").unwrap();
        let mut rev = 2;
        while let Some(next) = ack_next(&mut c) {
            rev += 1;
            assert_eq!(next.base_rev, rev);
            server = next.op.apply(&server).unwrap();
        }
        assert_eq!(server, "<xabcdyef>");
        assert_eq!(c.synced_text().to_string(), server);
    }

    #[test]
    fn shrinking_limits_split_the_queue_but_not_the_outstanding_op() {
        let mut c = Client::new("me", 0, "", 0);
        let sent = c.local_edit(&ins(0, 0, "abcdef")).unwrap().unwrap();
        c.local_edit(&ins(6, 6, "ghijkl")).unwrap();
        assert_eq!(c.unacknowledged(), 2);
        assert!(c.set_limits(small(4, 10)));
        assert!(!c.set_limits(small(4, 10)));
        assert_eq!(c.resumed(0, 0).unwrap(), Some(sent));
        let queued: Vec<String> = c.queue().map(|op| op.to_json()).collect();
        assert_eq!(queued, [r#"[6,"ghij"]"#, r#"[10,"kl"]"#]);
    }

    #[test]
    fn a_transformed_queued_op_beyond_the_limits_is_split_when_it_leaves() {
        let mut c = Client::new("me", 0, "abcdef", 0);
        c.set_limits(small(10, 4));
        c.local_edit(&ins(6, 0, "!")).unwrap().unwrap();
        // Queued: delete "bcde" (3 components).
        c.local_edit(&Operation::delete_range(7, 2, 4).unwrap())
            .unwrap();
        // A remote writer inserts inside the deleted range twice: the queued
        // delete now has 7 components.
        let remote = Operation::from_json(r#"[2,"X",1,"Y",3]"#).unwrap();
        c.remote_op(1, &remote, "other", 1).unwrap();
        assert_eq!(c.queue().next().unwrap().components().len(), 7);
        let mut server = "!abXcYdef".to_owned();
        let mut sent = 0;
        while let Some(next) = ack_next(&mut c) {
            assert!(next.op.fits(small(10, 4)), "{}", next.op.to_json());
            server = next.op.apply(&server).unwrap();
            sent += 1;
        }
        assert!(sent >= 2);
        assert_eq!(server, "!aXYf");
        assert_eq!(c.text().to_string(), server);
    }

    #[test]
    fn snapshot_rebases_a_queue() {
        // Not applied, server text unchanged: the outstanding op is queued
        // again first with a new seq, the queue follows.
        let mut c = Client::new("me", 2, "ab", 1);
        c.set_limits(small(1, 10));
        c.local_edit(&ins(2, 2, "cde")).unwrap();
        assert_eq!(c.unacknowledged(), 3);
        let out = c.snapshot(7, "ab", 1);
        assert_eq!(out.conflict_copy, None);
        let send = out.send.unwrap();
        assert_eq!((send.seq, send.base_rev), (2, 7));
        assert_eq!(c.text().to_string(), "abcde");
        assert_eq!(c.unacknowledged(), 3);

        // Applied, and the snapshot is exactly its result: the queue is kept.
        let mut c = Client::new("me", 2, "ab", 1);
        c.set_limits(small(1, 10));
        c.local_edit(&ins(2, 2, "cde")).unwrap();
        let out = c.snapshot(3, "abc", 2);
        assert_eq!(out.conflict_copy, None);
        assert_eq!(out.send.unwrap().op.to_json(), r#"[3,"d"]"#);
        assert_eq!(c.text().to_string(), "abcde");
        assert_eq!(c.unacknowledged(), 2);

        // Applied, but the snapshot is another text: conflict copy.
        let mut c = Client::new("me", 2, "ab", 1);
        c.set_limits(small(1, 10));
        c.local_edit(&ins(2, 2, "cde")).unwrap();
        let out = c.snapshot(5, "abcZ", 2);
        assert_eq!(out.conflict_copy.as_deref(), Some("abcde"));
        assert!(c.all_saved());
    }

    #[test]
    fn a_state_saved_with_a_single_buffer_loads() {
        // What the version before the queue wrote (field names as in ClientState).
        let old = r#"{"client_id":"me","next_seq":2,"revision":3,"synced_text":"ab",
            "outstanding":{"seq":1,"base_rev":3,"sent":[2,"c"],"current":[2,"c"]},
            "buffer":[3,"defg"]}"#;
        let state: ClientState = serde_json::from_str(old).unwrap();
        let mut c = Client::from_state(state).unwrap();
        assert_eq!(c.text().to_string(), "abcdefg");
        assert_eq!(c.unacknowledged(), 2);
        // It is written back as a queue, and split by the server's limits.
        c.set_limits(small(2, 10));
        let json = serde_json::to_value(c.state()).unwrap();
        assert_eq!(json["queue"], serde_json::json!([[3, "de"], [5, "fg"]]));
        assert!(json.get("buffer").is_none());
        let next = ack_next(&mut c).unwrap();
        assert_eq!((next.seq, next.base_rev), (2, 4));
        // A buffer without an outstanding op is inconsistent.
        let bad = r#"{"client_id":"me","next_seq":2,"revision":3,"synced_text":"ab",
            "outstanding":null,"buffer":[2,"x"]}"#;
        let state: ClientState = serde_json::from_str(bad).unwrap();
        assert_eq!(
            Client::from_state(state).unwrap_err().code(),
            "corrupt_state"
        );
    }

    #[test]
    fn remote_ranges_map_through_pending_edits() {
        let mut c = Client::new("me", 0, "abc", 0);
        c.local_edit(&ins(3, 0, "12")).unwrap();
        c.local_edit(&ins(5, 5, "z")).unwrap();
        let mapped = c.transform_remote_ranges(&[Range { anchor: 1, head: 3 }]);
        assert_eq!(mapped, vec![Range { anchor: 3, head: 6 }]);
    }
}
