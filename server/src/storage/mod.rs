//! Durable storage of documents: the op log, snapshots and the document list.
//!
//! - [`Storage`] is the blocking interface the server talks to, so that a
//!   shared database can replace SQLite later.
//! - [`SqliteStorage`] implements it on one embedded SQLite file (WAL mode,
//!   one writer connection, a small pool of reader connections) with a commit
//!   log in front of it: a commit is one appended record (`oplog`), and the
//!   tables receive many commits' items at a time.
//! - [`CommitQueue`] batches writes from all documents into group commits on a
//!   dedicated thread: one commit (and, with [`Durability::Fsync`], one
//!   fsync) for everything queued while the previous commit was running.
//!
//! Revisions are contiguous per document: the op for revision `r` is only
//! stored after the op for `r - 1`. Both [`Storage::commit`] and the
//! [`CommitQueue`] refuse anything else with [`StorageError::Gap`], so a
//! failed commit of one document can never leave a hole in its log nor
//! affect another document.

mod commit;
#[cfg(test)]
mod conformance;
mod dir_lock;
mod oplog;
mod origin;
mod postgres;
mod rows;
mod sqlite;

use ot_core::history::{AppliedOp, DocumentSnapshot, KeyHash, OpHash};
use ot_core::Operation;

pub use commit::{
    next_generation, CommitCallback, CommitLane, CommitOptions, CommitQueue, Committed,
    DEFAULT_INGEST_EVERY,
};
pub use origin::StoredOrigin;
pub use postgres::{PgOptions, PgStorage};
pub use sqlite::{Durability, SqliteStorage};

/// One stored op: everything the server persists per op.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredOp {
    /// The revision this op created (the first op of a document creates 1).
    pub rev: u64,
    /// The client that sent it.
    pub client_id: String,
    /// The client's sequence number for it.
    pub seq: u64,
    /// Hash of the op as received (see [`OpHash::of`]).
    pub hash: OpHash,
    /// The revision the client based it on.
    pub base_rev: u64,
    /// The op exactly as the client sent it.
    pub received: Operation,
    /// The op as applied (transformed past the ops in `base_rev + 1 .. rev`).
    pub applied: Operation,
    /// When the server applied it, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Where it came from, if not from a client of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<StoredOrigin>,
}

impl StoredOp {
    /// Build the stored form of an op the history just applied.
    pub fn from_applied(applied: &AppliedOp, received: Operation, time_ms: i64) -> StoredOp {
        StoredOp {
            rev: applied.rev,
            client_id: applied.client_id.to_string(),
            seq: applied.seq,
            hash: applied.hash,
            base_rev: applied.base_rev,
            received,
            applied: applied.op.clone(),
            time_ms,
            origin: None,
        }
    }

    /// The history entry of this op (for [`DocumentHistory::from_snapshot`]).
    ///
    /// [`DocumentHistory::from_snapshot`]: ot_core::history::DocumentHistory::from_snapshot
    #[cfg(test)]
    pub fn to_applied(&self) -> AppliedOp {
        AppliedOp {
            rev: self.rev,
            client_id: self.client_id.as_str().into(),
            seq: self.seq,
            base_rev: self.base_rev,
            hash: self.hash,
            op: self.applied.clone(),
        }
    }

    /// The history entry of this op, without cloning.
    pub fn into_applied(self) -> AppliedOp {
        AppliedOp {
            rev: self.rev,
            client_id: self.client_id.into(),
            seq: self.seq,
            base_rev: self.base_rev,
            hash: self.hash,
            op: self.applied,
        }
    }

    /// True when the op was transformed past at least one concurrent op
    /// (`base_rev + 1 < rev`): a detected conflict.
    #[cfg(test)]
    pub fn is_concurrent(&self) -> bool {
        self.base_rev.saturating_add(1) < self.rev
    }
}

/// What to write in one group commit.
// `Op` is the common item and holds two inline operations (ot-core keeps small
// operations inline): boxing it would add an allocation per op.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WriteItem {
    /// Create the document row if it does not exist (a document exists once
    /// someone opens it).
    CreateDoc {
        /// The document id.
        doc: String,
    },
    /// Append one op; `len_after` is the document length in chars after it
    /// (kept in the docs table for listings). The op's revision must be the
    /// document's last stored revision + 1. Creates the document row if needed.
    Op {
        /// The document id.
        doc: String,
        /// The op.
        op: StoredOp,
        /// The document's length (in chars) after the op.
        len_after: u64,
    },
    /// Store a snapshot (with its dedup table) at `snapshot.rev`, which must
    /// not be newer than the document's last stored revision (counting the
    /// ops earlier in the same commit). Replaces a snapshot at the same revision.
    Snapshot {
        /// The document id.
        doc: String,
        /// The snapshot.
        snapshot: DocumentSnapshot,
    },
    /// Bind a client id of the document to the hash of its key. A binding
    /// never changes: an id already bound keeps its first key. Written
    /// through the document's commit lane, so it is durable in order with
    /// the document's ops (before any op the client sends after joining).
    ClientKey {
        /// The document id.
        doc: String,
        /// The client id.
        client_id: String,
        /// The hash of the client's key.
        key_hash: KeyHash,
    },
    /// Delete the document: its row, ops, snapshots, seq index and key
    /// bindings go, and the id is remembered with `epoch`, the last epoch
    /// its first messages carried (see [`Storage::deleted_epoch`]). Written
    /// through the document's commit lane, so every item submitted before it
    /// is removed with it and every item after it starts the next generation
    /// of the id (from revision 1).
    DeleteDoc {
        /// The document id.
        doc: String,
        /// The epoch the deleted generation showed last (never reused for the id).
        epoch: u64,
    },
    /// Keep a conflict copy of the document: text that could not stay in
    /// it (a regional server's work the home could not take). Copies
    /// outlive deletes of the document; a replay keeps one per id.
    ConflictCopy {
        /// The document id.
        doc: String,
        /// The copy.
        copy: ConflictCopy,
    },
    /// Journal an op of the home that a regional server transformed past
    /// its own unsent work (a detected conflict at the region). Written in
    /// the same commit as the op; goes with a delete of the document.
    RegionConflict {
        /// The document id.
        doc: String,
        /// The conflict.
        conflict: RegionConflict,
    },
    /// Whether a regional server's link still has ops to hand to the home
    /// for the document after this commit (written when that changes): a
    /// restart reopens the documents with some waiting (and those never
    /// flagged), not every copy it holds.
    RegionWaiting {
        /// The document id.
        doc: String,
        /// Link ops are waiting.
        waiting: bool,
    },
    /// One record of a regional server's log of the document (see
    /// [`RegionRecord`]), number `n` (increasing per document). A checkpoint
    /// replaces every record numbered below it.
    Region {
        /// The document id.
        doc: String,
        /// The record's number.
        n: u64,
        /// The record.
        record: RegionRecord,
    },
}

/// An op of the home transformed past a region's unsent local work
/// ([`WriteItem::RegionConflict`]): both sides and the result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionConflict {
    /// The regional revision the home's op became.
    pub rev: u64,
    /// The home revision it was.
    pub home_rev: u64,
    /// Its author at the home (a client id, or another region's link).
    pub author: String,
    /// The author's seq for it.
    pub author_seq: u64,
    /// The op as the home sent it.
    pub received: Operation,
    /// The regional revisions of the local work it was transformed past:
    /// the local ops among `first..=last` (the others are earlier ops of
    /// the home).
    pub past_local: (u64, u64),
    /// That local work as the link held it (the other side of each
    /// transform, in order; see `Integration::local`): empty when it was
    /// too long to keep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<Operation>,
    /// The op as applied at the region.
    pub applied: Operation,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// A conflict copy kept by the server ([`WriteItem::ConflictCopy`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConflictCopy {
    /// Its id (random; unique per document).
    pub id: u64,
    /// When it was made, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Why, in words.
    pub reason: String,
    /// The text.
    pub text: String,
}

/// What a regional server stores of a document besides its ops: the steps
/// of its [`RegionalDocument`](ot_core::region::RegionalDocument), in order,
/// and now and then a checkpoint to recover from without replaying older
/// steps. Written in the same commits as the regional ops they cover.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum RegionRecord {
    /// One step.
    Entry {
        /// The step.
        entry: Box<ot_core::region::RegionalEntry>,
    },
    /// The state after every record numbered below it.
    Checkpoint {
        /// The state.
        checkpoint: Box<ot_core::region::RegionalCheckpoint>,
    },
}

impl WriteItem {
    /// About how much memory the item holds while it waits for an ingest
    /// (the commit queue bounds that backlog in bytes as well as in items).
    pub fn memory_bytes(&self) -> usize {
        match self {
            WriteItem::Op { op, .. } => crate::pages::op_bytes(op),
            WriteItem::Snapshot { snapshot, .. } => {
                128 + snapshot.text.len() + 96 * snapshot.clients.len()
            }
            WriteItem::Region { record, .. } => 128 + record.memory_bytes(),
            WriteItem::ConflictCopy { copy, .. } => 128 + copy.text.len() + copy.reason.len(),
            WriteItem::RegionConflict { conflict, .. } => {
                128 + conflict.received.heap_bytes() + conflict.applied.heap_bytes()
            }
            _ => 128,
        }
    }
}

impl WriteItem {
    /// The document this item writes to.
    pub fn doc(&self) -> &str {
        match self {
            WriteItem::CreateDoc { doc }
            | WriteItem::Op { doc, .. }
            | WriteItem::Snapshot { doc, .. }
            | WriteItem::ClientKey { doc, .. }
            | WriteItem::DeleteDoc { doc, .. }
            | WriteItem::Region { doc, .. }
            | WriteItem::ConflictCopy { doc, .. }
            | WriteItem::RegionConflict { doc, .. }
            | WriteItem::RegionWaiting { doc, .. } => doc,
        }
    }
}

impl RegionRecord {
    /// About how much memory the record holds.
    fn memory_bytes(&self) -> usize {
        use ot_core::region::RegionalEntry;
        match self {
            RegionRecord::Checkpoint { checkpoint } => {
                checkpoint.history.text.len() + 96 * checkpoint.history.clients.len()
            }
            RegionRecord::Entry { entry } => match &**entry {
                RegionalEntry::Local(applied) => applied.op.heap_bytes(),
                RegionalEntry::Upstream(integration) => {
                    integration.applied.op.heap_bytes() + integration.received.heap_bytes()
                }
                RegionalEntry::Sent(sent) => sent.op.heap_bytes(),
                RegionalEntry::Reset { text, .. } | RegionalEntry::Resynced { text, .. } => {
                    2 * text.len()
                }
                _ => 64,
            },
        }
    }
}

/// A document as loaded from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedDoc {
    /// The latest snapshot (the empty snapshot at revision 0 if none was
    /// stored), with every stored key binding in its dedup table.
    pub snapshot: DocumentSnapshot,
    /// The ops after the snapshot, in revision order (starting at `snapshot.rev + 1`).
    pub tail: Vec<AppliedOp>,
}

impl LoadedDoc {
    /// The document's latest revision.
    #[cfg(test)]
    pub fn rev(&self) -> u64 {
        self.tail.last().map_or(self.snapshot.rev, |op| op.rev)
    }
}

/// What the change feed of a shared storage reports
/// ([`Storage::subscribe_heads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadChange {
    /// A commit moved `doc`'s head to `head`.
    Moved {
        /// The document.
        doc: String,
        /// Its new last revision.
        head: u64,
    },
    /// Heads may have moved unreported: check every open document.
    Resync,
    /// A presence note another node (or this one) sent with
    /// [`Storage::publish_presence`]; read by `crate::presence`.
    Presence {
        /// The note as sent.
        payload: String,
    },
}

/// One line of the document listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DocSummary {
    /// The document id.
    pub id: String,
    /// Its latest revision.
    pub rev: u64,
    /// Its length in chars.
    pub len: u64,
}

impl StorageError {
    /// The documents whose heads other writers moved first, if that is
    /// what this error says ([`StorageError::Gap`], [`StorageError::LostRaces`]).
    pub fn lost_races(&self) -> Option<Vec<String>> {
        match self {
            StorageError::Gap { doc, .. } => Some(vec![doc.clone()]),
            StorageError::LostRaces { docs } => {
                Some(docs.iter().map(|(doc, ..)| doc.clone()).collect())
            }
            _ => None,
        }
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error (or its connection broke).
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No database connection within the storage timeout: nothing was
    /// written; the call may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// The database was written by a newer server version: nothing was
    /// opened.
    #[error(
        "the database's schema is version {found}, newer than this server knows \
         ({known}): run a server of that version or newer"
    )]
    SchemaTooNew {
        /// The version the database has.
        found: String,
        /// The newest version this server knows.
        known: String,
    },
    /// Stored data could not be read back (bad JSON, bad hash, missing
    /// revisions, a number out of range).
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// An op does not continue its document's log: nothing was written.
    #[error("document {doc:?}: expected revision {expected} but got {found}")]
    Gap {
        /// The document.
        doc: String,
        /// The revision that would continue the log (last stored + 1).
        expected: u64,
        /// The revision of the op.
        found: u64,
    },
    /// Several documents' ops do not continue their logs (on storage other
    /// nodes write: those nodes moved the heads first): nothing was written.
    /// (One such document is a [`StorageError::Gap`].)
    #[error("documents {docs:?}: other writers moved their heads first")]
    LostRaces {
        /// The documents, each with the revision that would continue its
        /// log and the revision of its first op here.
        docs: Vec<(String, u64, u64)>,
    },
    /// An earlier request of the same document and generation failed, so
    /// this one (which continues it) was not committed: nothing was written
    /// (see [`CommitLane::commit_as`]).
    #[error("document {doc:?}: an earlier commit of these ops' document failed; not committed")]
    Stale {
        /// The document.
        doc: String,
    },
    /// A snapshot is newer than the document's log: nothing was written.
    #[error("document {doc:?}: snapshot at revision {snapshot_rev} is newer than the last stored revision {last_rev}")]
    SnapshotAhead {
        /// The document.
        doc: String,
        /// The snapshot's revision.
        snapshot_rev: u64,
        /// The document's last stored revision.
        last_rev: u64,
    },
    /// A value does not fit the database (a number above `i64::MAX`).
    #[error("value out of range: {0}")]
    OutOfRange(String),
    /// A file system error (creating the data directory).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A bug: the storage implementation panicked (nothing was written).
    #[error("internal storage error: {0}")]
    Internal(String),
    /// The commit queue has shut down: nothing was written.
    #[error("the commit queue is shut down")]
    Closed,
    /// Another server process (or another open storage of this process)
    /// uses the data directory: nothing was opened.
    #[error(
        "the data directory {dir} is in use by another server process ({holder}): \
         only one server may use a data directory at a time; stop the other one \
         or give this one another --data-dir",
        dir = dir.display(),
        holder = if holder.is_empty() { "process id unknown" } else { holder.as_str() }
    )]
    Locked {
        /// The data directory.
        dir: std::path::PathBuf,
        /// What the lock file says about its holder (`pid N`), or empty.
        holder: String,
    },
}

/// The continuity check of [`Storage::commit`] and the [`CommitQueue`]:
/// whether `items` continue their documents' logs, given each document's last
/// revision before them (`last_rev`, asked once per document). Returns every
/// document of `items` with its last revision after them; fails with
/// [`StorageError::Gap`] for an op that is not the last revision + 1
/// (counting the earlier items) and with [`StorageError::SnapshotAhead`] for
/// a snapshot newer than that.
pub(crate) fn check_continuity(
    items: &[WriteItem],
    mut last_rev: impl FnMut(&str) -> Result<u64, StorageError>,
) -> Result<Vec<(String, u64)>, StorageError> {
    let mut revs: Vec<(String, u64)> = Vec::new();
    for item in items {
        let doc = item.doc();
        let i = match revs.iter().position(|(d, _)| d == doc) {
            Some(i) => i,
            None => {
                revs.push((doc.to_owned(), last_rev(doc)?));
                revs.len() - 1
            }
        };
        let last = &mut revs[i].1;
        match item {
            WriteItem::CreateDoc { .. }
            | WriteItem::ClientKey { .. }
            | WriteItem::Region { .. }
            | WriteItem::ConflictCopy { .. }
            | WriteItem::RegionConflict { .. }
            | WriteItem::RegionWaiting { .. } => {}
            WriteItem::Op { op, .. } if op.rev != *last + 1 => {
                return Err(StorageError::Gap {
                    doc: doc.to_owned(),
                    expected: *last + 1,
                    found: op.rev,
                });
            }
            WriteItem::Op { op, .. } => *last = op.rev,
            WriteItem::Snapshot { snapshot, .. } if snapshot.rev > *last => {
                return Err(StorageError::SnapshotAhead {
                    doc: doc.to_owned(),
                    snapshot_rev: snapshot.rev,
                    last_rev: *last,
                });
            }
            WriteItem::Snapshot { .. } => {}
            // The next generation starts from nothing.
            WriteItem::DeleteDoc { .. } => *last = 0,
        }
    }
    Ok(revs)
}

/// Storage behind a trait so a shared database can replace SQLite later.
///
/// All methods are blocking: callers run them on a blocking thread
/// (`tokio::task::spawn_blocking`) or the commit thread.
pub trait Storage: Send + Sync + 'static {
    /// Write all items in ONE transaction, durably per the configured
    /// durability. All or nothing: on error nothing was written.
    ///
    /// Fails with [`StorageError::Gap`] when an op's revision is not its
    /// document's last stored revision + 1 (counting earlier items), and with
    /// [`StorageError::SnapshotAhead`] for a snapshot newer than the log.
    fn commit(&self, items: &[WriteItem]) -> Result<(), StorageError>;
    /// Like [`commit`](Self::commit), but only if it is cheap (no fsync)
    /// and can run without waiting for another writer (e.g. a group commit in
    /// progress): `None` means not now, and nothing was written. The
    /// [`CommitQueue`] commits in place with it. The default is never.
    fn try_commit(&self, items: &[WriteItem]) -> Option<Result<(), StorageError>> {
        let _ = items;
        None
    }
    /// Whether [`try_commit`](Self::try_commit) can ever commit. When it
    /// cannot (fsync durability), the [`CommitQueue`] skips the bookkeeping
    /// that commits in place need. The default is never.
    fn commits_in_place(&self) -> bool {
        false
    }
    /// Latest revision stored for a document (0 if none or unknown).
    fn last_rev(&self, doc: &str) -> Result<u64, StorageError>;
    /// Whether the document exists.
    fn exists(&self, doc: &str) -> Result<bool, StorageError>;
    /// Latest snapshot plus the ops after it, or `None` if the document does
    /// not exist. A document with ops but no snapshot row starts from the
    /// empty snapshot at rev 0.
    fn load(&self, doc: &str) -> Result<Option<LoadedDoc>, StorageError>;
    /// Ops with revision > `after_rev`, ascending, at most `limit`.
    fn ops(&self, doc: &str, after_rev: u64, limit: usize) -> Result<Vec<StoredOp>, StorageError>;
    /// The revision and hash of the op (`client_id`, `seq`), if stored.
    fn find_seq(
        &self,
        doc: &str,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<(u64, OpHash)>, StorageError>;
    /// The text as of revision `rev` (nearest snapshot at or below `rev`, plus
    /// replay); `None` if the doc does not exist or `rev` is past its last revision.
    fn text_at(&self, doc: &str, rev: u64) -> Result<Option<String>, StorageError>;
    /// All documents with revision and length, sorted by id.
    fn list(&self) -> Result<Vec<DocSummary>, StorageError>;
    /// Ops of `doc` that were transformed past concurrent ops
    /// (`base_rev + 1 < rev`), rev > `after_rev`, ascending, at most `limit`.
    fn conflicts(
        &self,
        doc: &str,
        after_rev: u64,
        limit: usize,
    ) -> Result<Vec<StoredOp>, StorageError>;
    /// The storage epoch: changes when data committed with relaxed durability
    /// may have been lost (an unclean shutdown), so clients must resync.
    fn epoch(&self) -> u64;
    /// The epoch the last deleted generation of `doc` showed, if the id was
    /// ever deleted ([`WriteItem::DeleteDoc`]); sees every committed item.
    /// The default keeps no deletions.
    fn deleted_epoch(&self, doc: &str) -> Result<Option<u64>, StorageError> {
        let _ = doc;
        Ok(None)
    }
    /// How many signs that acknowledged commits were lost opening found
    /// (a data directory restored from a backup, a damaged record in the
    /// middle of a commit log, a missing log); each changed the epoch and
    /// was logged. The default finds none.
    fn faults_at_open(&self) -> usize {
        0
    }
    /// Committed items waiting for [`ingest`](Self::ingest) (0: none). The
    /// commit queue has its ingest thread ingest when this grows large or
    /// when commits are idle.
    fn backlog(&self) -> usize {
        0
    }
    /// About how many bytes of memory those items hold ([`WriteItem::memory_bytes`]).
    fn backlog_bytes(&self) -> usize {
        0
    }
    /// Maintenance off the commit path, called on its own thread while
    /// commits go on: move committed items to their final place (for SQLite,
    /// from the commit log into the tables). Changes nothing that reads
    /// return. Returns how many items it moved.
    fn ingest(&self) -> Result<usize, StorageError> {
        Ok(0)
    }
    /// A regional server's records of `doc` ([`WriteItem::Region`]) from its
    /// newest checkpoint on, in order, with their numbers (empty: none).
    /// Sees every committed item. The default keeps none.
    fn region_records(&self, doc: &str) -> Result<Vec<(u64, RegionRecord)>, StorageError> {
        let _ = doc;
        Ok(Vec::new())
    }
    /// The conflict copies kept of `doc`, oldest first (sees every
    /// committed item). The default keeps none.
    fn conflict_copies(&self, doc: &str) -> Result<Vec<ConflictCopy>, StorageError> {
        let _ = doc;
        Ok(Vec::new())
    }
    /// On a regional server: the home's ops transformed past local work
    /// ([`WriteItem::RegionConflict`]) with regional revision > `after_rev`,
    /// ascending, at most `limit`. The default keeps none.
    fn region_conflicts(
        &self,
        doc: &str,
        after_rev: u64,
        limit: usize,
    ) -> Result<Vec<RegionConflict>, StorageError> {
        let _ = (doc, after_rev, limit);
        Ok(Vec::new())
    }
    /// The regional server's documents whose link may still have ops to
    /// hand to the home: those whose last commit left some waiting
    /// ([`WriteItem::RegionWaiting`]), and those with region records but no
    /// such count (written before it was kept). The default keeps none.
    fn region_docs(&self) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }
    /// Whether other processes (other server nodes) may commit to this
    /// storage too: open documents then follow heads they did not move
    /// ([`subscribe_heads`](Self::subscribe_heads)). The default is no.
    fn is_shared(&self) -> bool {
        false
    }
    /// The last revision of each of `docs` (0 for one that does not
    /// exist), in one read where the store can: the periodic check of the
    /// open documents on shared storage. The default asks one by one.
    fn heads(&self, docs: &[String]) -> Result<Vec<(String, u64)>, StorageError> {
        docs.iter()
            .map(|doc| Ok((doc.clone(), self.last_rev(doc)?)))
            .collect()
    }
    /// The change feed of a shared storage: a [`HeadChange`] after every
    /// commit of any node that moved a document's head, and
    /// [`HeadChange::Resync`] whenever the feed may have missed some (it
    /// reconnected). Best effort: correctness never depends on it, a slow
    /// periodic check finds any head it missed. The first call takes the
    /// feed; `None` for a storage nobody else writes (the default) and for
    /// a later call.
    fn subscribe_heads(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<HeadChange>> {
        None
    }
    /// Send presence notes to every node's change feed
    /// ([`HeadChange::Presence`]), best effort. The default (a storage
    /// nobody else uses) drops them.
    fn publish_presence(&self, _payloads: &[String]) -> Result<(), StorageError> {
        Ok(())
    }
    /// Claim the storage for this process alone among the processes that
    /// claim it (a regional server runs one process per database: two would
    /// each keep the link to the home and replace each other's). `Ok(false)`:
    /// another process holds it. Held while this storage is open (on
    /// PostgreSQL, while its session lasts). The default (a store in a data
    /// dir, which its lock already keeps to one process) is `Ok(true)`.
    fn claim_alone(&self) -> Result<bool, StorageError> {
        Ok(true)
    }
    /// A node setting kept in the storage itself rather than in the data
    /// dir (the node id, a regional server's link key): on a store several
    /// processes share, they are one node and the database is its identity.
    /// Returns the value stored under `key`, first storing `proposed` if
    /// there is none and one is given (atomically: of nodes starting at
    /// once, the first one's value counts for all). `None` (the default):
    /// this storage keeps no settings, the data dir does.
    fn node_setting(
        &self,
        key: &str,
        proposed: Option<&str>,
    ) -> Result<Option<String>, StorageError> {
        let _ = (key, proposed);
        Ok(None)
    }
    /// The storage's own clock (milliseconds since the Unix epoch), for a
    /// store several nodes share: every node's time rules follow it (see
    /// `crate::clock`). `None` (the default): this process's clock counts.
    fn clock_ms(&self) -> Result<Option<i64>, StorageError> {
        Ok(None)
    }
    /// Mark a clean shutdown (after the last commit). A later commit clears
    /// the mark again.
    fn close_clean(&self) -> Result<(), StorageError>;
    /// Add token id `jti` (valid until `expires`, Unix seconds) to the
    /// revoked tokens, durably before returning. The default cannot.
    fn revoke_token(&self, jti: &str, expires: u64) -> Result<(), StorageError> {
        let _ = (jti, expires);
        Err(StorageError::Internal(
            "this storage keeps no revocation list".into(),
        ))
    }
    /// The ids of the revoked tokens that have not expired at `now` (Unix seconds).
    fn revoked_tokens(&self, now: u64) -> Result<Vec<String>, StorageError> {
        let _ = now;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ot_core::history::{DocumentHistory, Receipt};

    /// Ops appending "x" to `doc`, revisions 1, 2, ...
    fn ops(doc: &str, count: usize) -> (DocumentHistory, Vec<WriteItem>) {
        let mut h = DocumentHistory::new();
        let items = (0..count)
            .map(|_| {
                let len = h.text().len_chars();
                let seq = h.last_seq("w") + 1;
                let op = Operation::insert_at(len, len, "x").unwrap();
                match h.receive("w", seq, h.revision(), op).unwrap() {
                    Receipt::Applied { applied, received } => WriteItem::Op {
                        doc: doc.to_owned(),
                        op: StoredOp::from_applied(&applied, received, 0),
                        len_after: h.text().len_chars() as u64,
                    },
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        (h, items)
    }

    #[test]
    fn continuity_is_checked_per_document_counting_earlier_items() {
        let (h, a) = ops("a", 3);
        let (_, b) = ops("b", 2);
        let mut asked = Vec::new();
        let mut last_rev = |doc: &str| {
            asked.push(doc.to_owned());
            Ok(if doc == "a" { 1 } else { 0 })
        };
        let items = vec![
            WriteItem::CreateDoc { doc: "c".into() },
            a[1].clone(),
            b[0].clone(),
            a[2].clone(),
            WriteItem::Snapshot {
                doc: "a".into(),
                snapshot: h.snapshot(),
            },
            b[1].clone(),
        ];
        let revs = check_continuity(&items, &mut last_rev).unwrap();
        assert_eq!(
            revs,
            vec![("c".into(), 0), ("a".into(), 3), ("b".into(), 2)]
        );
        assert_eq!(asked, ["c", "a", "b"], "asked once per document");

        match check_continuity(&a[2..], |_| Ok(1)) {
            Err(StorageError::Gap {
                expected: 2,
                found: 3,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let snapshot = WriteItem::Snapshot {
            doc: "a".into(),
            snapshot: h.snapshot(),
        };
        match check_continuity(&[a[1].clone(), snapshot], |_| Ok(1)) {
            Err(StorageError::SnapshotAhead {
                snapshot_rev: 3,
                last_rev: 2,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // A delete starts the next generation: its first op is revision 1.
        let delete = WriteItem::DeleteDoc {
            doc: "a".into(),
            epoch: 9,
        };
        let revs =
            check_continuity(&[a[1].clone(), delete.clone(), a[0].clone()], |_| Ok(1)).unwrap();
        assert_eq!(revs, vec![("a".into(), 1)]);
        match check_continuity(&[delete, a[2].clone()], |_| Ok(2)) {
            Err(StorageError::Gap {
                expected: 1,
                found: 3,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match check_continuity(&a[..1], |_| Err(StorageError::Closed)) {
            Err(StorageError::Closed) => {}
            other => panic!("{other:?}"),
        }
    }
}
