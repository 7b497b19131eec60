//! Ops based on a revision older than the in-memory history window, rebased
//! off the document's task: the ops they missed are read from storage and
//! transformed past in chunks, so that nobody else's acks wait for it.
//!
//! The actor starts a [`RebaseJob`] once the op passed the dedup check; the
//! job carries the op from its base revision up to the window's oldest
//! revision at that time, and comes back on the actor's rebase channel. The
//! actor then transforms it past whatever arrived meanwhile (in memory, with
//! the dedup check again) and applies it as usual; if the window moved past
//! the job's revision meanwhile, the job runs again from there.

use std::sync::Arc;
use std::time::Instant;

use ot_core::{Operation, OtError, Range};
use ot_protocol::{ClientId, OpOrigin};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::TaskTracker;

use super::error::DocError;
use crate::storage::Storage;

/// Stored ops read (and transformed past) per step: bounds the memory of a
/// rebase to one chunk of ops.
pub(super) const CHUNK: usize = 1000;

/// Rebases of one document that read and transform at once (others wait
/// for a permit, holding only their op).
pub(super) const REBASES_PER_DOC: usize = 2;

/// Ops a connection may send while one of its ops is being rebased; they
/// wait, in order, behind it. A client keeps one op outstanding, so more
/// than this is abuse (the connection is closed with 1008).
pub(super) const MAX_QUEUED_BEHIND: usize = 64;

/// An op on its way from its base revision to the window's oldest revision.
pub(super) struct RebaseJob {
    pub(super) conn_id: u64,
    pub(super) client_id: ClientId,
    pub(super) seq: u64,
    /// The client's base revision.
    pub(super) base_rev: u64,
    /// The op as the client sent it (for dedup and the journal).
    pub(super) received: Operation,
    /// The op transformed past the ops in `base_rev + 1 ..= at`.
    pub(super) current: Operation,
    /// The revision `current` is based on.
    pub(super) at: u64,
    /// The revision to rebase `current` to (ops up to it are stored).
    pub(super) upto: u64,
    /// The sender's selection after its op, mapped like `current`.
    pub(super) ranges: Option<Vec<Range>>,
    /// What a regional link's op covers at its region.
    pub(super) origin: Option<Box<OpOrigin>>,
    pub(super) received_at: Instant,
}

/// Why a rebase failed (nothing changed).
#[derive(Debug, thiserror::Error)]
pub(super) enum RebaseError {
    /// The missing ops could not be read.
    #[error(transparent)]
    Storage(#[from] DocError),
    /// The op does not fit the document at its base revision.
    #[error("the operation does not fit the document at its base revision: {0}")]
    DoesNotFit(#[from] OtError),
}

/// A job back from its task: rebased up to `job.upto`, or failed.
pub(super) struct Rebased {
    pub(super) job: RebaseJob,
    pub(super) result: Result<(), RebaseError>,
}

/// Run `job` on its own task (holding one of the document's `permits` while
/// it reads and transforms) and send it back on `done`. Stops early if the
/// actor is gone. The task is one of the server's `tasks`, so a shutdown
/// waits for it (it stops at its next chunk once the actor has stopped).
pub(super) fn spawn(
    job: RebaseJob,
    storage: Arc<dyn Storage>,
    doc: String,
    permits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Rebased>,
    tasks: &TaskTracker,
) {
    tasks.spawn(async move {
        let permit = tokio::select! {
            permit = permits.acquire_owned() => permit,
            () = done.closed() => return, // the document stopped while this op waited
        };
        let Ok(_permit) = permit else {
            return;
        };
        let mut job = job;
        let mut result = Ok(());
        while job.at < job.upto {
            if done.is_closed() {
                return; // the document stopped: nobody waits for this op
            }
            let count = CHUNK.min((job.upto - job.at) as usize);
            let (storage, doc, at) = (storage.clone(), doc.clone(), job.at);
            let current = std::mem::take(&mut job.current);
            let ranges = job.ranges.take();
            let stepped = tokio::task::spawn_blocking(move || {
                step(&*storage, &doc, at, count, current, ranges)
            })
            .await;
            match stepped {
                Ok(Ok((current, ranges))) => {
                    job.current = current;
                    job.ranges = ranges;
                    job.at += count as u64;
                }
                Ok(Err(e)) => {
                    result = Err(e);
                    break;
                }
                Err(e) => {
                    result = Err(RebaseError::Storage(DocError::Task(e)));
                    break;
                }
            }
        }
        let _ = done.send(Rebased { job, result });
    });
}

/// Transform `op` (based on revision `after`) past the `count` stored ops
/// after it, mapping `ranges` along (through each op as transformed past `op`).
fn step(
    storage: &dyn Storage,
    doc: &str,
    after: u64,
    count: usize,
    mut op: Operation,
    mut ranges: Option<Vec<Range>>,
) -> Result<(Operation, Option<Vec<Range>>), RebaseError> {
    let ops = storage.ops(doc, after, count).map_err(DocError::from)?;
    let contiguous = ops
        .iter()
        .zip(after + 1..)
        .all(|(stored, rev)| stored.rev == rev);
    if ops.len() != count || !contiguous {
        return Err(DocError::ShortRead {
            got: ops.len(),
            wanted: count,
        }
        .into());
    }
    for stored in &ops {
        op = match ranges.as_mut() {
            Some(ranges) => {
                let (mine, other) = op.transform(&stored.applied)?;
                *ranges = ot_core::transform_ranges(ranges, &other);
                mine
            }
            None => op.transform_first(&stored.applied)?,
        };
    }
    Ok((op, ranges))
}
