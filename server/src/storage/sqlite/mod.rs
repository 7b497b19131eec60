//! [`Storage`] on one embedded SQLite database (`<dir>/ot.sqlite3`, WAL mode).
//!
//! This file holds [`SqliteStorage`] (opening, the commit side, the
//! [`Storage`] impl) and [`Durability`]; the rest is by concern:
//!
//! | file | concern |
//! |---|---|
//! | `schema.rs` | the tables, the migration from schema version 1, the meta rows (epoch, clean flag) |
//! | `seq_revs.rs` | the `seq_revs` codec: seq → revision slots, 64 per row |
//! | `ingest.rs` | sealing, writing committed items to the tables, recovering the commit logs on open |
//! | `unstored.rs` | loading a document from the tables plus the items not yet in them, when an ingest fails |
//! | `restore.rs` | on open: signs that acknowledged commits are missing (a restored backup, damaged or missing logs) change the epoch |
//! | `reads.rs` | reader connections and the read queries |
//! | `tests.rs` | the tests |
//!
//! # Commit log
//!
//! [`Storage::commit`] does not touch SQLite: it appends one record to the
//! active commit log (`<dir>/commit.log` or `<dir>/commit-2.log`, see
//! [`OpLog`]), with `fdatasync` under [`Durability::Fsync`], and keeps the
//! items in memory as *pending*. [`Storage::ingest`] first
//! *seals* them: the other log becomes the active one, so commits go on
//! while the sealed items are written to the tables in one transaction
//! (fsynced under [`Durability::Fsync`]); then the sealed log starts over.
//! Many commits' ops thus reach the B-trees together, each document's pages
//! written once per ingest instead of once per commit, and a commit never
//! waits for an ingest.
//!
//! Every read first ingests everything committed before it began (waiting
//! for a running ingest, while commits go on), so reads see every committed
//! item. Opening the database ingests whatever the
//! logs still hold (a crash left it there), older log first: items already
//! in the tables (an ingest whose log reset did not happen) are recognised by
//! revision and op hash and skipped.
//!
//! Locks: `ingester` (the connection that writes the tables, the sealed log
//! and its items) before `writer` (the active log and the pending items). An
//! ingest holds only `ingester` while it writes; the commit path only ever
//! tries the `ingester` lock.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use ot_core::history::OpHash;
use rusqlite::Connection;

mod ingest;
pub(in crate::storage) mod prune;
mod reads;
mod restore;
#[cfg(test)]
mod restore_tests;
mod revocations;
mod schema;
mod seq_revs;
#[cfg(test)]
mod tests;
mod unstored;

use self::reads::{doc_rev, query_ops, SQL_CONFLICTS_AFTER, SQL_OPS_AFTER};
use self::schema::{meta_set, set_synchronous};
use super::dir_lock::DirLock;
use super::oplog::OpLog;
use super::rows::{from_sql_int, limit_to_sql, now_ms, to_sql_int};
use super::{
    check_continuity, ConflictCopy, DocSummary, LoadedDoc, RegionConflict, RegionRecord, Storage,
    StorageError, StoredOp, WriteItem,
};

/// The database file name inside the data directory.
pub(crate) const DB_FILE: &str = "ot.sqlite3";

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle reader connections kept open (more are opened on demand).
const MAX_IDLE_READERS: usize = 8;

/// Above this many cached documents the writer's last-revision cache is cleared.
const MAX_CACHED_REVS: usize = 100_000;

/// The writer's page cache: `PRAGMA cache_size` (negative: KiB), 8 MiB.
const WRITER_CACHE_KIB: i64 = -8 * 1024;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 32;

/// How hard each commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is fsynced before it returns (`fdatasync` of the commit
    /// log; `PRAGMA synchronous=FULL` for the tables). An acknowledged op
    /// survives a power loss.
    Fsync,
    /// Commits are written but not fsynced (`PRAGMA synchronous=NORMAL` for
    /// the tables): they survive a process crash but the last ones may be lost
    /// on a power loss or an OS crash. The database stays consistent, and the [epoch](Storage::epoch)
    /// changes after such an unclean shutdown.
    Relaxed,
}

impl Durability {
    /// The name accepted by [`FromStr`]: `fsync` or `relaxed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Relaxed => "relaxed",
        }
    }

    fn synchronous(self) -> &'static str {
        match self {
            Durability::Fsync => "FULL",
            Durability::Relaxed => "NORMAL",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--durability` value that is neither `fsync` nor `relaxed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability {0:?}: expected \"fsync\" or \"relaxed\"")]
pub struct UnknownDurability(pub String);

impl FromStr for Durability {
    type Err = UnknownDurability;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fsync" => Ok(Durability::Fsync),
            "relaxed" => Ok(Durability::Relaxed),
            other => Err(UnknownDurability(other.to_owned())),
        }
    }
}

/// The commit side: the active commit log and what it knows about the documents.
struct Writer {
    /// For the commit side's own reads (a document's stored revision) and the
    /// clean flag.
    conn: Connection,
    /// Last committed revision per document (in the tables, sealed or
    /// pending). Every document with sealed or pending items is in it.
    last_revs: HashMap<String, u64>,
    /// `close_clean` set the clean flag: the next commit must clear it.
    marked_clean: bool,
    /// The active log: commits append here.
    log: OpLog,
    /// Items committed to the active log but not yet written to the tables.
    pending: Vec<WriteItem>,
}

/// The ingest side: writes committed items to the tables.
struct Ingester {
    conn: Connection,
    /// The log that is not active: holds the `sealed` items, or is empty
    /// (reset) and ready to become the active log.
    spare: OpLog,
    /// Items of `spare`, not yet in the tables (empty unless an ingest is
    /// running or failed).
    sealed: Vec<WriteItem>,
}

/// [`Storage`] on SQLite: a commit side, an ingest side, a pool of readers.
pub struct SqliteStorage {
    path: PathBuf,
    durability: Durability,
    epoch: u64,
    writer: Mutex<Writer>,
    ingester: Mutex<Ingester>,
    /// `writer.pending.len()`, readable without waiting for the writer.
    pending_count: AtomicUsize,
    /// `ingester.sealed.len()`, readable during an ingest.
    sealed_count: AtomicUsize,
    /// The memory `writer.pending` holds ([`WriteItem::memory_bytes`]).
    pending_bytes: AtomicUsize,
    /// The memory `ingester.sealed` holds.
    sealed_bytes: AtomicUsize,
    readers: Mutex<Vec<Connection>>,
    /// The data directory's lock, held until [`Storage::close_clean`] or
    /// the drop (one server per data directory).
    dir_lock: Mutex<Option<DirLock>>,
    /// How many signs of lost commits opening found (see `restore.rs`).
    faults_at_open: usize,
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqliteStorage {
    /// Open (creating if needed) the database `dir/ot.sqlite3`, creating `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<SqliteStorage, StorageError> {
        std::fs::create_dir_all(dir)?;
        // Before anything is read or written: another process may be using it.
        let dir_lock = DirLock::acquire(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Corrupt(format!(
                "cannot switch {} to WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
        // The meta rows below must reach the disk whatever the durability.
        set_synchronous(&conn, Durability::Fsync)?;

        let (epoch, changed) = schema::init(&mut conn, &path, durability)?;

        // Restored from a backup, damaged logs: see restore.rs.
        let instance = restore::instance(&conn)?;
        let mut lost: Vec<String> = restore::check_identity(&conn, &dir_lock.identity()?)?
            .into_iter()
            .collect();
        let ingest::Recovered {
            active,
            spare,
            lost: lost_in_logs,
        } = ingest::recover(&mut conn, dir, durability, instance)?;
        lost.extend(lost_in_logs);
        // Still synchronous=FULL: the meta rows reach the disk.
        let (epoch, changed) = restore::change_epoch_if_lost(&conn, epoch, changed, &lost)?;
        let epoch = schema::raise_past_deleted(&conn, epoch, changed)?;
        set_synchronous(&conn, durability)?;
        let ingest_conn = Self::open_ingest_connection(&path, durability)?;

        tracing::info!(path = %path.display(), %durability, epoch, "storage opened");
        Ok(SqliteStorage {
            path,
            durability,
            epoch,
            writer: Mutex::new(Writer {
                conn,
                last_revs: HashMap::new(),
                marked_clean: false,
                log: active,
                pending: Vec::new(),
            }),
            ingester: Mutex::new(Ingester {
                conn: ingest_conn,
                spare,
                sealed: Vec::new(),
            }),
            pending_count: AtomicUsize::new(0),
            sealed_count: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            sealed_bytes: AtomicUsize::new(0),
            readers: Mutex::new(Vec::new()),
            dir_lock: Mutex::new(Some(dir_lock)),
            faults_at_open: lost.len(),
        })
    }

    /// The database file.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`Storage::commit`] if the writer is free (`None`: busy, nothing
    /// was written), whatever the durability.
    fn commit_unless_busy(&self, items: &[WriteItem]) -> Option<Result<(), StorageError>> {
        let mut writer = match self.writer.try_lock() {
            Ok(writer) => writer,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(self.commit_locked(&mut writer, items))
    }

    /// [`Storage::commit`] with the writer locked.
    fn commit_locked(&self, writer: &mut Writer, items: &[WriteItem]) -> Result<(), StorageError> {
        if items.is_empty() {
            return Ok(());
        }
        if writer.last_revs.len() > MAX_CACHED_REVS {
            // Documents with sealed or pending items must stay cached: ingest
            // first, unless an ingest is running (never wait for one here:
            // that would invert the lock order; a later commit clears).
            let ingester = match self.ingester.try_lock() {
                Ok(ingester) => Some(ingester),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut ingester) = ingester {
                self.ingest_all_locked(writer, &mut ingester)?;
                writer.last_revs.clear();
            }
        }
        if writer.marked_clean {
            // Durably unclean before anything new is acknowledged.
            meta_set(&writer.conn, "clean", "0")?;
            writer.marked_clean = false;
        }
        let revs = Self::check_items(writer, items)?;
        writer.log.append(items)?;
        writer.pending.extend_from_slice(items);
        writer.last_revs.extend(revs);
        self.pending_count
            .store(writer.pending.len(), Ordering::Relaxed);
        self.pending_bytes.fetch_add(
            items.iter().map(WriteItem::memory_bytes).sum(),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Check that `items` continue the committed log; returns the new last
    /// revisions.
    fn check_items(
        writer: &Writer,
        items: &[WriteItem],
    ) -> Result<Vec<(String, u64)>, StorageError> {
        check_continuity(items, |doc| match writer.last_revs.get(doc) {
            Some(&rev) => Ok(rev),
            // Not cached, so nothing of it is pending: the table is current.
            None => Ok(doc_rev(&writer.conn, doc)?.unwrap_or(0)),
        })
    }
}

impl Storage for SqliteStorage {
    fn revoke_token(&self, jti: &str, expires: u64) -> Result<(), StorageError> {
        let guard = lock(&self.writer);
        // Durable at once whatever the durability: a revocation must not be
        // lost to a power cut.
        set_synchronous(&guard.conn, Durability::Fsync)?;
        let result = revocations::insert(&guard.conn, jti, expires);
        set_synchronous(&guard.conn, self.durability)?;
        result
    }

    fn revoked_tokens(&self, now: u64) -> Result<Vec<String>, StorageError> {
        revocations::unexpired(&lock(&self.writer).conn, now)
    }

    fn commit(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        self.commit_locked(&mut lock(&self.writer), items)
    }

    fn commits_in_place(&self) -> bool {
        self.durability == Durability::Relaxed
    }

    fn try_commit(&self, items: &[WriteItem]) -> Option<Result<(), StorageError>> {
        if self.durability == Durability::Fsync {
            return None; // an fsync is no cheaper here than on the commit thread
        }
        self.commit_unless_busy(items)
    }

    fn last_rev(&self, doc: &str) -> Result<u64, StorageError> {
        // The writer knows (committed = in the tables or pending), without
        // an ingest: a document it has no revision for has nothing pending.
        let writer = lock(&self.writer);
        match writer.last_revs.get(doc) {
            Some(&rev) => Ok(rev),
            None => Ok(doc_rev(&writer.conn, doc)?.unwrap_or(0)),
        }
    }

    fn exists(&self, doc: &str) -> Result<bool, StorageError> {
        Ok(self.read(|conn| doc_rev(conn, doc))?.is_some())
    }

    fn load(&self, doc: &str) -> Result<Option<LoadedDoc>, StorageError> {
        self.load_doc(doc)
    }

    fn ops(&self, doc: &str, after_rev: u64, limit: usize) -> Result<Vec<StoredOp>, StorageError> {
        self.read(|conn| query_ops(conn, SQL_OPS_AFTER, doc, after_rev, limit))
    }

    fn find_seq(
        &self,
        doc: &str,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<(u64, OpHash)>, StorageError> {
        self.find_stored_seq(doc, client_id, seq)
    }

    fn text_at(&self, doc: &str, rev: u64) -> Result<Option<String>, StorageError> {
        self.text_at_rev(doc, rev)
    }

    fn list(&self) -> Result<Vec<DocSummary>, StorageError> {
        self.list_docs()
    }

    fn conflicts(
        &self,
        doc: &str,
        after_rev: u64,
        limit: usize,
    ) -> Result<Vec<StoredOp>, StorageError> {
        self.read(|conn| query_ops(conn, SQL_CONFLICTS_AFTER, doc, after_rev, limit))
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn deleted_epoch(&self, doc: &str) -> Result<Option<u64>, StorageError> {
        self.read(|conn| ingest::deleted_epoch(conn, doc))
    }

    fn faults_at_open(&self) -> usize {
        self.faults_at_open
    }

    fn backlog(&self) -> usize {
        self.pending_count.load(Ordering::Relaxed) + self.sealed_count.load(Ordering::Relaxed)
    }

    fn backlog_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed) + self.sealed_bytes.load(Ordering::Relaxed)
    }

    fn ingest(&self) -> Result<usize, StorageError> {
        self.seal_and_ingest()
    }

    fn region_records(&self, doc: &str) -> Result<Vec<(u64, RegionRecord)>, StorageError> {
        self.read(|conn| reads::region_records(conn, doc))
    }

    fn conflict_copies(&self, doc: &str) -> Result<Vec<ConflictCopy>, StorageError> {
        self.read(|conn| reads::conflict_copies(conn, doc))
    }

    fn region_conflicts(
        &self,
        doc: &str,
        after_rev: u64,
        limit: usize,
    ) -> Result<Vec<RegionConflict>, StorageError> {
        self.read(|conn| reads::region_conflicts(conn, doc, after_rev, limit))
    }

    fn region_docs(&self) -> Result<Vec<String>, StorageError> {
        self.read(reads::region_docs)
    }

    fn close_clean(&self) -> Result<(), StorageError> {
        let mut ingester = lock(&self.ingester);
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        self.ingest_all_locked(writer, &mut ingester)?;
        set_synchronous(&writer.conn, Durability::Fsync)?;
        // With synchronous=FULL this commit fsyncs the WAL: every earlier
        // (relaxed) commit is durable too once it returns.
        let result = meta_set(&writer.conn, "clean", "1")
            .and_then(|()| Ok(writer.conn.execute_batch("PRAGMA optimize")?));
        set_synchronous(&writer.conn, self.durability)?;
        result?;
        writer.marked_clean = true;
        tracing::info!(path = %self.path.display(), "storage marked clean");
        // The server is done with the directory: a new one may start on it
        // even while this value lingers (a task still holding it).
        drop(lock(&self.dir_lock).take());
        Ok(())
    }
}
