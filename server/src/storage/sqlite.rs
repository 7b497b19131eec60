//! [`Storage`] on one embedded SQLite database (`<dir>/ot.sqlite3`, WAL mode).
//!
//! # Schema
//!
//! ```sql
//! -- One row per document; rev/len follow the last stored op (for listings).
//! CREATE TABLE docs (
//!     id         TEXT PRIMARY KEY NOT NULL,
//!     rev        INTEGER NOT NULL,          -- last stored revision (0: no ops)
//!     len        INTEGER NOT NULL,          -- length in chars after that revision
//!     created_ms INTEGER NOT NULL           -- Unix time in ms of the first write
//! );
//! -- The op log: one row per revision, contiguous from 1 to docs.rev.
//! CREATE TABLE ops (
//!     doc       TEXT NOT NULL,
//!     rev       INTEGER NOT NULL,           -- the revision the op created
//!     client_id TEXT NOT NULL,
//!     seq       INTEGER NOT NULL,           -- the client's sequence number
//!     op_hash   TEXT NOT NULL,              -- OpHash of `received`, 32 hex digits
//!     base_rev  INTEGER NOT NULL,
//!     received  TEXT NOT NULL,              -- ot.js JSON, as the client sent it
//!     applied   TEXT NOT NULL,              -- ot.js JSON, as applied
//!     time_ms   INTEGER NOT NULL,
//!     PRIMARY KEY (doc, rev)
//! ) WITHOUT ROWID;
//! -- Where each client's ops are, for answering a resend of an old seq: one
//! -- row per 64 seqs, so an ingest updates one row per (document, client)
//! -- instead of inserting into a third B-tree per op (schema version 1 had an
//! -- index on ops (doc, client_id, seq), and it cost more than the table).
//! CREATE TABLE seq_revs (
//!     doc       TEXT NOT NULL,
//!     client_id TEXT NOT NULL,
//!     block     INTEGER NOT NULL,           -- seq / 64
//!     revs      BLOB NOT NULL,              -- slot seq % 64: the op's revision as
//!                                           -- 8 little-endian bytes (0: none)
//!     PRIMARY KEY (doc, client_id, block)
//! ) WITHOUT ROWID;
//! -- Partial index: the conflict journal (ops transformed past concurrent ops).
//! CREATE INDEX ops_conflicts ON ops (doc, rev) WHERE rev > base_rev + 1;
//! -- Snapshots with the dedup table (a rowid table: texts can be large).
//! CREATE TABLE snapshots (
//!     doc     TEXT NOT NULL,
//!     rev     INTEGER NOT NULL,
//!     text    TEXT NOT NULL,
//!     clients TEXT NOT NULL,                -- JSON {client_id: ClientRecord}
//!     PRIMARY KEY (doc, rev)
//! );
//! -- 'schema_version' = '2' (a version 1 database is migrated on open);
//! -- 'epoch' = decimal u64; 'clean' = '1' after a clean shutdown, '0' while
//! -- running; 'durability' = 'fsync' | 'relaxed' of the last run.
//! CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
//! ```
//!
//! Numbers are stored as SQLite integers (`i64`); a `u64` above `i64::MAX` is
//! refused with [`StorageError::OutOfRange`].
//!
//! # Commit log
//!
//! [`Storage::commit`] does not touch SQLite: it appends one record to the
//! active commit log (`<dir>/commit.log` or `<dir>/commit-2.log`, see
//! [`OpLog`]), with `fdatasync` under [`Durability::Fsync`], and keeps the
//! items in memory as *pending*. [`Storage::ingest`] first
//! *seals* them: the other log becomes the active one, so commits go on
//! while the sealed items are written to the tables above in one transaction
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
//!
//! # Epoch
//!
//! A new database starts at the current Unix time in milliseconds (so a
//! deleted and recreated database does not reuse an old epoch). On open, if
//! the previous run did not call [`Storage::close_clean`] and ran with
//! [`Durability::Relaxed`], the epoch is incremented: commits acknowledged
//! just before a power loss may be gone, so clients must resync. The meta
//! rows are always written with `synchronous=FULL`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ot_core::history::{ClientRecord, DocumentSnapshot, OpHash};
use ot_core::Operation;
use ropey::Rope;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::oplog::{OpLog, LOG_FILES};
use super::{check_continuity, DocSummary, LoadedDoc, Storage, StorageError, StoredOp, WriteItem};

/// The database file name inside the data directory.
pub const DB_FILE: &str = "ot.sqlite3";

/// The schema version this code reads and writes.
const SCHEMA_VERSION: &str = "2";

/// Seqs per `seq_revs` row.
const SEQS_PER_BLOCK: u64 = 64;

/// Bytes per slot of a `seq_revs.revs` blob (a little-endian `u64`).
const SLOT_BYTES: usize = 8;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle reader connections kept open (more are opened on demand).
const MAX_IDLE_READERS: usize = 8;

/// Above this many cached documents the writer's last-revision cache is cleared.
const MAX_CACHED_REVS: usize = 100_000;

/// The writer's page cache: `PRAGMA cache_size` (negative: KiB), 32 MiB.
const WRITER_CACHE_KIB: i64 = -32 * 1024;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 32;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    id         TEXT PRIMARY KEY NOT NULL,
    rev        INTEGER NOT NULL,
    len        INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ops (
    doc       TEXT NOT NULL,
    rev       INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    op_hash   TEXT NOT NULL,
    base_rev  INTEGER NOT NULL,
    received  TEXT NOT NULL,
    applied   TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seq_revs (
    doc       TEXT NOT NULL,
    client_id TEXT NOT NULL,
    block     INTEGER NOT NULL,
    revs      BLOB NOT NULL,
    PRIMARY KEY (doc, client_id, block)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ops_conflicts ON ops (doc, rev) WHERE rev > base_rev + 1;
CREATE TABLE IF NOT EXISTS snapshots (
    doc     TEXT NOT NULL,
    rev     INTEGER NOT NULL,
    text    TEXT NOT NULL,
    clients TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
";

/// The revisions of (doc `?1`, client `?2`)'s seqs in block `?3`.
const SQL_SEQ_REVS: &str =
    "SELECT revs FROM seq_revs WHERE doc = ?1 AND client_id = ?2 AND block = ?3";

/// Ops of a document after a revision (`?2`), at most `?3`: the columns [`RawOp`] reads.
const SQL_OPS_AFTER: &str =
    "SELECT rev, client_id, seq, op_hash, base_rev, received, applied, time_ms
     FROM ops WHERE doc = ?1 AND rev > ?2 ORDER BY rev LIMIT ?3";

/// Like [`SQL_OPS_AFTER`], only concurrent ops, through the partial index
/// `ops_conflicts` (named: the planner would pick the primary key). The
/// condition must be written exactly as in the index for SQLite to use it.
const SQL_CONFLICTS_AFTER: &str =
    "SELECT rev, client_id, seq, op_hash, base_rev, received, applied, time_ms
     FROM ops INDEXED BY ops_conflicts
     WHERE doc = ?1 AND rev > ?2 AND rev > base_rev + 1 ORDER BY rev LIMIT ?3";

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

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fsync" => Ok(Durability::Fsync),
            "relaxed" => Ok(Durability::Relaxed),
            other => Err(format!(
                "unknown durability {other:?}: expected \"fsync\" or \"relaxed\""
            )),
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
    readers: Mutex<Vec<Connection>>,
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_sql_int(value: u64, what: &str) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange(format!("{what} = {value}")))
}

fn from_sql_int(value: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| StorageError::Corrupt(format!("negative {what}: {value}")))
}

fn limit_to_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// One `ops` row as read, before parsing.
struct RawOp {
    rev: i64,
    client_id: String,
    seq: i64,
    hash: String,
    base_rev: i64,
    received: String,
    applied: String,
    time_ms: i64,
}

impl RawOp {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawOp> {
        Ok(RawOp {
            rev: row.get(0)?,
            client_id: row.get(1)?,
            seq: row.get(2)?,
            hash: row.get(3)?,
            base_rev: row.get(4)?,
            received: row.get(5)?,
            applied: row.get(6)?,
            time_ms: row.get(7)?,
        })
    }

    fn parse(self, doc: &str) -> Result<StoredOp, StorageError> {
        let rev = from_sql_int(self.rev, "rev")?;
        let corrupt = |what: &str, detail: &dyn fmt::Display| {
            StorageError::Corrupt(format!("document {doc:?} revision {rev}: {what}: {detail}"))
        };
        let hash =
            OpHash::from_hex(&self.hash).ok_or_else(|| corrupt("bad op hash", &self.hash))?;
        let received =
            Operation::from_json(&self.received).map_err(|e| corrupt("bad received op", &e))?;
        let applied =
            Operation::from_json(&self.applied).map_err(|e| corrupt("bad applied op", &e))?;
        Ok(StoredOp {
            rev,
            client_id: self.client_id,
            seq: from_sql_int(self.seq, "seq")?,
            hash,
            base_rev: from_sql_int(self.base_rev, "base_rev")?,
            received,
            applied,
            time_ms: self.time_ms,
        })
    }
}

/// Read ops of `doc` with `sql` ([`SQL_OPS_AFTER`] or [`SQL_CONFLICTS_AFTER`]) and parse them.
fn query_ops(
    conn: &Connection,
    sql: &str,
    doc: &str,
    after_rev: u64,
    limit: usize,
) -> Result<Vec<StoredOp>, StorageError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raw = stmt
        .query_map(
            params![
                doc,
                to_sql_int(after_rev, "after_rev")?,
                limit_to_sql(limit)
            ],
            RawOp::from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    raw.into_iter().map(|r| r.parse(doc)).collect()
}

/// The document's last revision, `None` if it does not exist.
fn doc_rev(conn: &Connection, doc: &str) -> Result<Option<u64>, StorageError> {
    let rev: Option<i64> = conn
        .prepare_cached("SELECT rev FROM docs WHERE id = ?1")?
        .query_row([doc], |row| row.get(0))
        .optional()?;
    rev.map(|r| from_sql_int(r, "docs.rev")).transpose()
}

/// Check that `ops` continue revision `after` without gaps, up to `last`.
fn check_contiguous(
    doc: &str,
    after: u64,
    ops: &[StoredOp],
    last: u64,
) -> Result<(), StorageError> {
    let mut expected = after + 1;
    for op in ops {
        if op.rev != expected {
            return Err(StorageError::Corrupt(format!(
                "document {doc:?}: the op log jumps from revision {} to {}",
                expected - 1,
                op.rev
            )));
        }
        expected += 1;
    }
    if expected - 1 != last {
        return Err(StorageError::Corrupt(format!(
            "document {doc:?}: the op log ends at revision {} but the document is at {last}",
            expected - 1
        )));
    }
    Ok(())
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?)
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StorageError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute([key, value])?;
    Ok(())
}

fn set_synchronous(conn: &Connection, durability: Durability) -> Result<(), StorageError> {
    conn.pragma_update(None, "synchronous", durability.synchronous())?;
    Ok(())
}

/// Schema version 1 to 2: fill `seq_revs` from the op log and drop the
/// per-op index it replaces; returns how many `seq_revs` rows were written.
/// Streams the ops in (doc, client, seq) order (the old index's order), so
/// memory stays one row's worth whatever the database's size.
fn migrate_v1_seq_index(conn: &Connection) -> Result<usize, StorageError> {
    let mut select =
        conn.prepare("SELECT doc, client_id, seq, rev FROM ops ORDER BY doc, client_id, seq")?;
    let mut rows = select.query([])?;
    let mut written = 0;
    let mut current: Option<((String, String, u64), Vec<u8>)> = None;
    while let Some(row) = rows.next()? {
        let doc: String = row.get(0)?;
        let client_id: String = row.get(1)?;
        let seq = from_sql_int(row.get(2)?, "seq")?;
        let rev = from_sql_int(row.get(3)?, "rev")?;
        let key = (doc, client_id, seq / SEQS_PER_BLOCK);
        if current.as_ref().is_some_and(|(k, _)| *k != key) {
            if let Some(((doc, client_id, block), revs)) = current.take() {
                put_seq_revs(conn, &doc, &client_id, block, &revs)?;
                written += 1;
            }
        }
        let (_, revs) = current.get_or_insert_with(|| (key, Vec::new()));
        set_seq_slot(revs, seq, rev);
    }
    if let Some(((doc, client_id, block), revs)) = current {
        put_seq_revs(conn, &doc, &client_id, block, &revs)?;
        written += 1;
    }
    conn.execute_batch("DROP INDEX IF EXISTS ops_by_seq")?;
    Ok(written)
}

/// Set `seq`'s slot of a `seq_revs` blob to `rev`, growing the blob as needed.
fn set_seq_slot(revs: &mut Vec<u8>, seq: u64, rev: u64) {
    // The remainder is below SEQS_PER_BLOCK (64): the cast cannot truncate.
    let start = (seq % SEQS_PER_BLOCK) as usize * SLOT_BYTES;
    if revs.len() < start + SLOT_BYTES {
        revs.resize(start + SLOT_BYTES, 0);
    }
    revs[start..start + SLOT_BYTES].copy_from_slice(&rev.to_le_bytes());
}

/// The revision in `seq`'s slot of a `seq_revs` blob (`None`: no such op).
fn seq_slot(revs: &[u8], seq: u64) -> Option<u64> {
    let start = (seq % SEQS_PER_BLOCK) as usize * SLOT_BYTES;
    let bytes: [u8; SLOT_BYTES] = revs.get(start..start + SLOT_BYTES)?.try_into().ok()?;
    // Revisions start at 1: a zero slot is a seq this block has not seen.
    Some(u64::from_le_bytes(bytes)).filter(|&rev| rev != 0)
}

fn put_seq_revs(
    conn: &Connection,
    doc: &str,
    client_id: &str,
    block: u64,
    revs: &[u8],
) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO seq_revs (doc, client_id, block, revs) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        doc,
        client_id,
        to_sql_int(block, "seq block")?,
        revs
    ])?;
    Ok(())
}

/// New (seq, rev) pairs by `seq_revs` row: (document, client, block).
type NewSeqs<'a> = BTreeMap<(&'a str, &'a str, u64), Vec<(u64, u64)>>;

/// Add the (seq, rev) pairs of newly stored ops to `seq_revs`, one
/// read-modify-write per (document, client, block).
fn store_seq_revs(conn: &Connection, new_seqs: &NewSeqs<'_>) -> Result<(), StorageError> {
    let mut select = conn.prepare_cached(SQL_SEQ_REVS)?;
    for (&(doc, client_id, block), seqs) in new_seqs {
        let mut revs: Vec<u8> = select
            .query_row(
                params![doc, client_id, to_sql_int(block, "seq block")?],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or_default();
        for &(seq, rev) in seqs {
            set_seq_slot(&mut revs, seq, rev);
        }
        put_seq_revs(conn, doc, client_id, block, &revs)?;
    }
    Ok(())
}

/// Per-document state accumulated while writing one commit.
struct PendingDoc {
    rev: u64,
    /// `Some(len)` once an op of this commit changed the document.
    len: Option<u64>,
}

impl SqliteStorage {
    /// Open (creating if needed) the database `dir/ot.sqlite3`, creating `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<SqliteStorage, StorageError> {
        std::fs::create_dir_all(dir)?;
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

        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        match meta_get(&tx, "schema_version")?.as_deref() {
            None | Some(SCHEMA_VERSION) => {}
            Some("1") => {
                let rows = migrate_v1_seq_index(&tx)?;
                tracing::info!(rows, "migrated the database from schema version 1 to 2");
            }
            Some(v) => {
                return Err(StorageError::Corrupt(format!(
                    "{} has schema version {v}; this server reads versions 1 and {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        let epoch = match meta_get(&tx, "epoch")? {
            None => u64::try_from(now_ms()).unwrap_or(1).max(1),
            Some(text) => {
                let epoch: u64 = text
                    .parse()
                    .map_err(|_| StorageError::Corrupt(format!("bad epoch in meta: {text:?}")))?;
                let clean = meta_get(&tx, "clean")?.as_deref() == Some("1");
                // A previous run without the key is treated as relaxed (cautious).
                let was_relaxed = meta_get(&tx, "durability")?.as_deref() != Some("fsync");
                if !clean && was_relaxed {
                    tracing::warn!(
                        old_epoch = epoch,
                        "the previous run with relaxed durability did not shut down cleanly: \
                         recent commits may be lost; changing the storage epoch"
                    );
                    epoch.wrapping_add(1).max(1)
                } else {
                    epoch
                }
            }
        };
        meta_set(&tx, "schema_version", SCHEMA_VERSION)?;
        meta_set(&tx, "epoch", &epoch.to_string())?;
        meta_set(&tx, "clean", "0")?;
        meta_set(&tx, "durability", durability.as_str())?;
        tx.commit()?;

        // Whatever the logs still hold was committed: store it (fsynced,
        // whatever the durability), older log first, before a log may start over.
        let sync = durability == Durability::Fsync;
        let (mut active, active_records) = OpLog::open(&dir.join(LOG_FILES[0]), sync)?;
        let (mut spare, spare_records) = OpLog::open(&dir.join(LOG_FILES[1]), sync)?;
        let mut logs = [(&active, active_records), (&spare, spare_records)];
        logs.sort_by_key(|(log, _)| (log.is_empty(), log.first_lsn()));
        for (log, records) in logs {
            let recovered: Vec<WriteItem> = records.into_iter().flatten().collect();
            write_items(&mut conn, &recovered, true)?;
            if !recovered.is_empty() {
                tracing::info!(items = recovered.len(), log = %log.path().display(), "recovered commits from the commit log");
            }
        }
        active.reset()?;
        spare.reset()?;
        // New records come after any old record whose reset did not reach the disk.
        active.start_after(&spare);
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
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The connection that writes ingests to the tables.
    fn open_ingest_connection(
        path: &Path,
        durability: Durability,
    ) -> Result<Connection, StorageError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        set_synchronous(&conn, durability)?;
        // Enough cache for the pages of many documents' log tails and indexes.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        Ok(conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configured durability.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn open_reader(&self) -> Result<Connection, StorageError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
    }

    /// Run `f` on a reader connection inside one read transaction (a
    /// consistent view of the database).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        // Everything committed before the read began.
        self.seal_and_ingest()?;
        let pooled = lock(&self.readers).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open_reader()?,
        };
        let result = (|| {
            let tx = conn.transaction()?;
            let value = f(&tx)?;
            tx.finish()?;
            Ok(value)
        })();
        let mut pool = lock(&self.readers);
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        result
    }

    /// Write the sealed items to the tables and start the spare log over;
    /// returns how many items were written.
    fn ingest_sealed(&self, ingester: &mut Ingester) -> Result<usize, StorageError> {
        let Ingester {
            conn,
            spare,
            sealed,
        } = ingester;
        ingest_log(conn, sealed, spare, &self.sealed_count)
    }

    /// Write the pending items to the tables without sealing them (the
    /// caller holds both locks, so no commit can run meanwhile), then start
    /// the active log over.
    fn ingest_pending_in_place(
        &self,
        writer: &mut Writer,
        ingester: &mut Ingester,
    ) -> Result<usize, StorageError> {
        ingest_log(
            &mut ingester.conn,
            &mut writer.pending,
            &mut writer.log,
            &self.pending_count,
        )
    }

    /// Write every sealed and pending item to the tables, with both locks
    /// held (commits wait).
    fn ingest_all_locked(
        &self,
        writer: &mut Writer,
        ingester: &mut Ingester,
    ) -> Result<usize, StorageError> {
        // Sealed items are older than pending ones: they go first.
        let sealed = self.ingest_sealed(ingester)?;
        Ok(sealed + self.ingest_pending_in_place(writer, ingester)?)
    }

    /// Write every item committed before this call to the tables: seal the
    /// pending items (the spare log becomes the active log) and write them
    /// while commits go on. Waits for a running ingest first. Returns how
    /// many items were written.
    fn seal_and_ingest(&self) -> Result<usize, StorageError> {
        let mut ingester = lock(&self.ingester);
        let mut writer = lock(&self.writer);
        if !ingester.sealed.is_empty() || !ingester.spare.is_empty() {
            // An earlier ingest or log reset failed: retry it, then ingest
            // the rest in place (commits wait), which needs no spare log.
            if ingester.sealed.is_empty() {
                if let Err(e) = ingester.spare.reset() {
                    tracing::warn!(error = %e, "cannot restart the commit log");
                }
            }
            return self.ingest_all_locked(&mut writer, &mut ingester);
        }
        if writer.pending.is_empty() {
            return Ok(0);
        }
        self.seal(&mut writer, &mut ingester);
        drop(writer);
        self.ingest_sealed(&mut ingester)
    }

    /// Hold off every ingest (and read) until the returned guard is dropped;
    /// commits go on.
    #[cfg(test)]
    pub(crate) fn pause_ingests(&self) -> impl Sized + '_ {
        lock(&self.ingester)
    }

    /// The pending items become sealed; the (empty) spare log becomes the
    /// active log.
    fn seal(&self, writer: &mut Writer, ingester: &mut Ingester) {
        ingester.spare.start_after(&writer.log);
        std::mem::swap(&mut writer.log, &mut ingester.spare);
        ingester.sealed = std::mem::take(&mut writer.pending);
        self.sealed_count
            .store(ingester.sealed.len(), Ordering::Relaxed);
        self.pending_count.store(0, Ordering::Relaxed);
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

/// Write `items` (everything `log` holds) to the tables, then empty both;
/// `count` follows `items.len()`. Returns how many items were written.
fn ingest_log(
    conn: &mut Connection,
    items: &mut Vec<WriteItem>,
    log: &mut OpLog,
    count: &AtomicUsize,
) -> Result<usize, StorageError> {
    if items.is_empty() {
        return Ok(0);
    }
    write_items(conn, items, false)?;
    let written = items.len();
    items.clear();
    count.store(0, Ordering::Relaxed);
    if let Err(e) = log.reset() {
        // Harmless: the log keeps records that are stored already (opening
        // skips them). An active log then grows; a spare one is not used
        // until a reset works (ingests happen in place meanwhile).
        tracing::warn!(error = %e, "cannot restart the commit log");
    }
    Ok(written)
}

/// Write `items` to the tables in one transaction.
///
/// With `recovering` (replaying the commit log on open), an op whose revision
/// is already stored is skipped if its op hash matches and refused as corrupt
/// otherwise; snapshots and document rows are simply written again (the same
/// content).
fn write_items(
    conn: &mut Connection,
    items: &[WriteItem],
    recovering: bool,
) -> Result<(), StorageError> {
    let now = now_ms();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut pending: HashMap<&str, PendingDoc> = HashMap::new();
    // Sorted, so the seq_revs rows are visited in key order.
    let mut new_seqs = NewSeqs::new();
    {
        let mut insert_op = tx.prepare_cached(
            "INSERT INTO ops (doc, rev, client_id, seq, op_hash, base_rev, received, applied, time_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut create_doc = tx.prepare_cached(
            "INSERT OR IGNORE INTO docs (id, rev, len, created_ms) VALUES (?1, 0, 0, ?2)",
        )?;
        let mut insert_snapshot = tx.prepare_cached(
            "INSERT OR REPLACE INTO snapshots (doc, rev, text, clients) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for item in items {
            let doc = item.doc();
            if !pending.contains_key(doc) {
                // First sight of this document in the transaction: make sure
                // its row exists and learn its last revision.
                create_doc.execute(params![doc, now])?;
                let rev = doc_rev(&tx, doc)?.unwrap_or(0);
                pending.insert(doc, PendingDoc { rev, len: None });
            }
            let Some(state) = pending.get_mut(doc) else {
                continue;
            };
            match item {
                WriteItem::CreateDoc { .. } => {}
                WriteItem::Op { op, .. } if recovering && op.rev <= state.rev => {
                    let stored = stored_hash(&tx, doc, op.rev)?;
                    if stored != Some(op.hash) {
                        return Err(StorageError::Corrupt(format!(
                            "document {doc:?} revision {}: the commit log and the database hold different ops",
                            op.rev
                        )));
                    }
                }
                WriteItem::Op { op, len_after, .. } => {
                    if op.rev != state.rev + 1 {
                        return Err(StorageError::Gap {
                            doc: doc.to_owned(),
                            expected: state.rev + 1,
                            found: op.rev,
                        });
                    }
                    insert_op.execute(params![
                        doc,
                        to_sql_int(op.rev, "rev")?,
                        op.client_id,
                        to_sql_int(op.seq, "seq")?,
                        op.hash.to_hex(),
                        to_sql_int(op.base_rev, "base_rev")?,
                        op.received.to_json(),
                        op.applied.to_json(),
                        op.time_ms,
                    ])?;
                    new_seqs
                        .entry((doc, &op.client_id, op.seq / SEQS_PER_BLOCK))
                        .or_default()
                        .push((op.seq, op.rev));
                    state.rev = op.rev;
                    state.len = Some(*len_after);
                }
                WriteItem::Snapshot { snapshot, .. } => {
                    if snapshot.rev > state.rev {
                        return Err(StorageError::SnapshotAhead {
                            doc: doc.to_owned(),
                            snapshot_rev: snapshot.rev,
                            last_rev: state.rev,
                        });
                    }
                    let clients: BTreeMap<&String, &ClientRecord> =
                        snapshot.clients.iter().collect();
                    let clients = serde_json::to_string(&clients).map_err(|e| {
                        StorageError::Corrupt(format!("cannot serialise a dedup table: {e}"))
                    })?;
                    insert_snapshot.execute(params![
                        doc,
                        to_sql_int(snapshot.rev, "snapshot rev")?,
                        snapshot.text,
                        clients,
                    ])?;
                }
            }
        }
        store_seq_revs(&tx, &new_seqs)?;
        let mut update_doc =
            tx.prepare_cached("UPDATE docs SET rev = ?2, len = ?3 WHERE id = ?1")?;
        for (doc, state) in &pending {
            if let Some(len) = state.len {
                update_doc.execute(params![
                    doc,
                    to_sql_int(state.rev, "rev")?,
                    to_sql_int(len, "len")?
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// The op hash stored for (`doc`, `rev`), if any.
fn stored_hash(conn: &Connection, doc: &str, rev: u64) -> Result<Option<OpHash>, StorageError> {
    let hash: Option<String> = conn
        .prepare_cached("SELECT op_hash FROM ops WHERE doc = ?1 AND rev = ?2")?
        .query_row(params![doc, to_sql_int(rev, "rev")?], |row| row.get(0))
        .optional()?;
    Ok(hash.as_deref().and_then(OpHash::from_hex))
}

impl Storage for SqliteStorage {
    fn commit(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        self.commit_locked(&mut lock(&self.writer), items)
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
        self.read(|conn| {
            let Some(last) = doc_rev(conn, doc)? else {
                return Ok(None);
            };
            let row: Option<(i64, String, String)> = conn
                .prepare_cached(
                    "SELECT rev, text, clients FROM snapshots WHERE doc = ?1
                     ORDER BY rev DESC LIMIT 1",
                )?
                .query_row([doc], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()?;
            let snapshot = match row {
                None => DocumentSnapshot {
                    rev: 0,
                    text: String::new(),
                    clients: HashMap::new(),
                },
                Some((rev, text, clients)) => {
                    let rev = from_sql_int(rev, "snapshot rev")?;
                    let clients = serde_json::from_str(&clients).map_err(|e| {
                        StorageError::Corrupt(format!(
                            "document {doc:?}: bad dedup table in the snapshot at {rev}: {e}"
                        ))
                    })?;
                    DocumentSnapshot { rev, text, clients }
                }
            };
            let tail = query_ops(conn, SQL_OPS_AFTER, doc, snapshot.rev, usize::MAX)?;
            check_contiguous(doc, snapshot.rev, &tail, last)?;
            Ok(Some(LoadedDoc {
                snapshot,
                tail: tail.into_iter().map(StoredOp::into_applied).collect(),
            }))
        })
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
        let block = to_sql_int(seq / SEQS_PER_BLOCK, "seq")?;
        let seq_sql = to_sql_int(seq, "seq")?;
        let found: Option<(u64, String)> = self.read(|conn| {
            let revs: Option<Vec<u8>> = conn
                .prepare_cached(SQL_SEQ_REVS)?
                .query_row(params![doc, client_id, block], |row| row.get(0))
                .optional()?;
            let Some(rev) = revs.as_deref().and_then(|revs| seq_slot(revs, seq)) else {
                return Ok(None);
            };
            let row: Option<(String, i64, String)> = conn
                .prepare_cached(
                    "SELECT client_id, seq, op_hash FROM ops WHERE doc = ?1 AND rev = ?2",
                )?
                .query_row(params![doc, to_sql_int(rev, "rev")?], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
            match row {
                Some((stored_client, stored_seq, hash))
                    if stored_client == client_id && stored_seq == seq_sql =>
                {
                    Ok(Some((rev, hash)))
                }
                _ => Err(StorageError::Corrupt(format!(
                    "document {doc:?}: seq_revs gives revision {rev} for client {client_id:?} \
                     seq {seq}, but the op log holds another op there"
                ))),
            }
        })?;
        let Some((rev, hash)) = found else {
            return Ok(None);
        };
        let hash = OpHash::from_hex(&hash).ok_or_else(|| {
            StorageError::Corrupt(format!(
                "document {doc:?} revision {rev}: bad op hash {hash:?}"
            ))
        })?;
        Ok(Some((rev, hash)))
    }

    fn text_at(&self, doc: &str, rev: u64) -> Result<Option<String>, StorageError> {
        self.read(|conn| {
            match doc_rev(conn, doc)? {
                Some(last) if rev <= last => {}
                _ => return Ok(None),
            }
            let row: Option<(i64, String)> = conn
                .prepare_cached(
                    "SELECT rev, text FROM snapshots WHERE doc = ?1 AND rev <= ?2
                     ORDER BY rev DESC LIMIT 1",
                )?
                .query_row(params![doc, to_sql_int(rev, "rev")?], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            let (base, text) = match row {
                Some((base, text)) => (from_sql_int(base, "snapshot rev")?, text),
                None => (0, String::new()),
            };
            if base == rev {
                return Ok(Some(text));
            }
            let mut stmt = conn.prepare_cached(
                "SELECT rev, applied FROM ops WHERE doc = ?1 AND rev > ?2 AND rev <= ?3 ORDER BY rev",
            )?;
            let mut rows = stmt.query(params![
                doc,
                to_sql_int(base, "rev")?,
                to_sql_int(rev, "rev")?
            ])?;
            let mut rope = Rope::from_str(&text);
            let mut expected = base + 1;
            while let Some(row) = rows.next()? {
                let op_rev = from_sql_int(row.get(0)?, "rev")?;
                let corrupt = |detail: String| {
                    StorageError::Corrupt(format!("document {doc:?} revision {op_rev}: {detail}"))
                };
                if op_rev != expected {
                    return Err(corrupt(format!("expected revision {expected}")));
                }
                let json: String = row.get(1)?;
                let op = Operation::from_json(&json)
                    .map_err(|e| corrupt(format!("bad applied op: {e}")))?;
                op.apply_to_rope(&mut rope)
                    .map_err(|e| corrupt(format!("stored op does not apply: {e}")))?;
                expected += 1;
            }
            if expected != rev + 1 {
                return Err(StorageError::Corrupt(format!(
                    "document {doc:?}: the op log stops at revision {} before {rev}",
                    expected - 1
                )));
            }
            Ok(Some(rope.to_string()))
        })
    }

    fn list(&self) -> Result<Vec<DocSummary>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT id, rev, len FROM docs ORDER BY id")?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, rev, len)| {
                    Ok(DocSummary {
                        rev: from_sql_int(rev, "docs.rev")?,
                        len: from_sql_int(len, "docs.len")?,
                        id,
                    })
                })
                .collect()
        })
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

    fn backlog(&self) -> usize {
        self.pending_count.load(Ordering::Relaxed) + self.sealed_count.load(Ordering::Relaxed)
    }

    fn ingest(&self) -> Result<usize, StorageError> {
        self.seal_and_ingest()
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ot_core::history::{DocumentHistory, Receipt};
    use tempfile::TempDir;

    /// Apply `op` from `client` (seq `seq`, base `base`) to `h`; the write item.
    fn apply(
        h: &mut DocumentHistory,
        doc: &str,
        client: &str,
        seq: u64,
        base: u64,
        op: Operation,
    ) -> WriteItem {
        match h.receive(client, seq, base, op).unwrap() {
            Receipt::Applied { applied, received } => WriteItem::Op {
                doc: doc.to_owned(),
                op: StoredOp::from_applied(&applied, received, 1_000 + applied.rev as i64),
                len_after: h.text().len_chars() as u64,
            },
            other => panic!("not applied: {other:?}"),
        }
    }

    fn ins(len: usize, pos: usize, text: &str) -> Operation {
        Operation::insert_at(len, pos, text).unwrap()
    }

    /// A history of `doc` with 6 ops (two of them concurrent) and its items.
    fn sample(doc: &str) -> (DocumentHistory, Vec<WriteItem>) {
        let mut h = DocumentHistory::new();
        let items = vec![
            apply(&mut h, doc, "a", 1, 0, ins(0, 0, "hello")),
            apply(&mut h, doc, "a", 2, 1, ins(5, 5, " world")),
            // b only saw revision 1: transformed past rev 2.
            apply(&mut h, doc, "b", 1, 1, ins(5, 0, "¡")),
            apply(&mut h, doc, "a", 3, 3, ins(12, 12, "!")),
            // c saw nothing: transformed past revs 1..=4.
            apply(&mut h, doc, "c", 1, 0, ins(0, 0, "🙂")),
            apply(
                &mut h,
                doc,
                "b",
                2,
                5,
                Operation::delete_range(14, 1, 1).unwrap(),
            ),
        ];
        (h, items)
    }

    fn stored(items: &[WriteItem]) -> Vec<StoredOp> {
        items
            .iter()
            .filter_map(|i| match i {
                WriteItem::Op { op, .. } => Some(op.clone()),
                _ => None,
            })
            .collect()
    }

    fn texts(items: &[WriteItem]) -> Vec<String> {
        let mut text = String::new();
        let mut out = vec![text.clone()];
        for op in stored(items) {
            text = op.applied.apply(&text).unwrap();
            out.push(text.clone());
        }
        out
    }

    fn open(dir: &TempDir, durability: Durability) -> SqliteStorage {
        SqliteStorage::open(dir.path(), durability).unwrap()
    }

    fn create(doc: &str) -> WriteItem {
        WriteItem::CreateDoc {
            doc: doc.to_owned(),
        }
    }

    #[test]
    fn round_trip_ops_snapshots_and_load() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Fsync);
        assert_eq!(s.load("d").unwrap(), None);
        assert!(!s.exists("d").unwrap());
        assert_eq!(s.last_rev("d").unwrap(), 0);

        let (mut h, items) = sample("d");
        let mut batch = vec![create("d")];
        batch.extend(items[..3].iter().cloned());
        s.commit(&batch).unwrap();
        // A document with ops and no snapshot loads from the empty snapshot.
        let loaded = s.load("d").unwrap().unwrap();
        assert_eq!(loaded.snapshot.rev, 0);
        assert_eq!(loaded.tail.len(), 3);
        assert_eq!(loaded.rev(), 3);

        // Ops and a snapshot in one commit: the snapshot after rev 4.
        let mut h4 = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        let WriteItem::Op { op: op4, .. } = &items[3] else {
            panic!()
        };
        h4.append_stored(op4.to_applied()).unwrap();
        let snap4 = h4.snapshot();
        let mut batch = vec![items[3].clone()];
        batch.push(WriteItem::Snapshot {
            doc: "d".into(),
            snapshot: snap4.clone(),
        });
        batch.extend(items[4..].iter().cloned());
        s.commit(&batch).unwrap();

        let loaded = s.load("d").unwrap().unwrap();
        assert_eq!(loaded.snapshot, snap4);
        let tail_revs: Vec<u64> = loaded.tail.iter().map(|a| a.rev).collect();
        assert_eq!(tail_revs, vec![5, 6]);
        assert_eq!(loaded.tail, h.retained_ops()[4..].to_vec());
        let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(rebuilt.text().to_string(), h.text().to_string());
        assert_eq!(rebuilt.revision(), 6);
        assert_eq!(rebuilt.snapshot(), h.snapshot());

        // Every op reads back exactly as written.
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
        assert_eq!(s.ops("d", 2, 2).unwrap(), stored(&items)[2..4].to_vec());
        assert!(s.ops("d", 6, 10).unwrap().is_empty());
        assert!(s.ops("nope", 0, 10).unwrap().is_empty());
        assert!(s.exists("d").unwrap());
        assert_eq!(s.last_rev("d").unwrap(), 6);

        // A newer snapshot wins; the DocumentHistory keeps working from it.
        h.trim_to(0);
        s.commit(&[WriteItem::Snapshot {
            doc: "d".into(),
            snapshot: h.snapshot(),
        }])
        .unwrap();
        let loaded = s.load("d").unwrap().unwrap();
        assert_eq!(loaded.snapshot.rev, 6);
        assert!(loaded.tail.is_empty());
    }

    #[test]
    fn created_document_without_ops() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Fsync);
        s.commit(&[create("empty"), create("empty")]).unwrap();
        assert!(s.exists("empty").unwrap());
        let loaded = s.load("empty").unwrap().unwrap();
        assert_eq!(loaded.snapshot.rev, 0);
        assert_eq!(loaded.snapshot.text, "");
        assert!(loaded.tail.is_empty());
        assert_eq!(s.text_at("empty", 0).unwrap().as_deref(), Some(""));
        assert_eq!(s.text_at("empty", 1).unwrap(), None);
        // An empty commit is fine and writes nothing.
        s.commit(&[]).unwrap();
    }

    #[test]
    fn find_seq_finds_each_op() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Fsync);
        let (_, items) = sample("d");
        s.commit(&items).unwrap();
        for op in stored(&items) {
            assert_eq!(
                s.find_seq("d", &op.client_id, op.seq).unwrap(),
                Some((op.rev, op.hash))
            );
            assert_eq!(op.hash, OpHash::of(&op.received));
        }
        assert_eq!(s.find_seq("d", "a", 4).unwrap(), None);
        assert_eq!(s.find_seq("d", "zz", 1).unwrap(), None);
        assert_eq!(s.find_seq("other", "a", 1).unwrap(), None);
    }

    /// `count` ops by clients "a" and "b" in turn (each op appends one
    /// char, based on the latest revision), so both clients' seqs span
    /// several `seq_revs` blocks.
    fn two_writers(doc: &str, count: u64) -> Vec<WriteItem> {
        let mut h = DocumentHistory::new();
        (0..count)
            .map(|i| {
                let client = if i % 2 == 0 { "a" } else { "b" };
                let len = h.text().len_chars();
                apply(&mut h, doc, client, i / 2 + 1, i, ins(len, len, "x"))
            })
            .collect()
    }

    fn assert_every_seq_found(s: &SqliteStorage, doc: &str, items: &[WriteItem]) {
        for op in stored(items) {
            assert_eq!(
                s.find_seq(doc, &op.client_id, op.seq).unwrap(),
                Some((op.rev, op.hash)),
                "client {} seq {}",
                op.client_id,
                op.seq
            );
        }
    }

    #[test]
    fn find_seq_across_blocks_commits_ingests_and_reopens() {
        let dir = TempDir::new().unwrap();
        let items = two_writers("d", 300); // seqs 1..=150 each: blocks 0, 1 and 2
        let s = open(&dir, Durability::Fsync);
        // Uneven commits, some ingested on their own, so one block's slots
        // arrive over several ingests.
        for chunk in items.chunks(37) {
            s.commit(chunk).unwrap();
            if chunk.len() % 2 == 1 {
                s.ingest().unwrap();
            }
        }
        assert_every_seq_found(&s, "d", &items);
        for (client, seq) in [("a", 0), ("a", 151), ("b", 64 * 5), ("c", 1)] {
            assert_eq!(
                s.find_seq("d", client, seq).unwrap(),
                None,
                "{client} {seq}"
            );
        }
        assert_eq!(s.find_seq("other", "a", 1).unwrap(), None);
        drop(s);
        let s = open(&dir, Durability::Fsync);
        assert_every_seq_found(&s, "d", &items);
    }

    #[test]
    fn a_version_1_database_is_migrated_on_open() {
        let dir = TempDir::new().unwrap();
        let items = two_writers("d", 200);
        let (_, other) = sample("e");
        let s = open(&dir, Durability::Fsync);
        s.commit(&items).unwrap();
        s.commit(&other).unwrap();
        drop(s);
        // Turn it into what version 1 left: the index, no seq_revs rows.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(
            "DELETE FROM seq_revs;
             CREATE INDEX ops_by_seq ON ops (doc, client_id, seq);
             UPDATE meta SET value = '1' WHERE key = 'schema_version';",
        )
        .unwrap();
        drop(conn);

        let s = open(&dir, Durability::Fsync);
        assert_every_seq_found(&s, "d", &items);
        assert_every_seq_found(&s, "e", &other);
        let conn = s.open_reader().unwrap();
        let version = meta_get(&conn, "schema_version").unwrap();
        assert_eq!(version.as_deref(), Some(SCHEMA_VERSION));
        let index: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE name = 'ops_by_seq'",
                [],
                |row| row.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(index, None);
        // Ops after the migration are found as well.
        drop(conn);
        let more = two_writers("f", 70);
        s.commit(&more).unwrap();
        assert_every_seq_found(&s, "f", &more);
    }

    #[test]
    fn an_unknown_schema_version_is_refused() {
        let dir = TempDir::new().unwrap();
        drop(open(&dir, Durability::Fsync));
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute(
            "UPDATE meta SET value = '3' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        let Err(err) = SqliteStorage::open(dir.path(), Durability::Fsync) else {
            panic!("version 3 must be refused");
        };
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("schema version 3"), "{err}");
    }

    #[test]
    fn a_seq_revs_row_that_disagrees_with_the_op_log_is_reported() {
        let dir = TempDir::new().unwrap();
        let (_, items) = sample("d");
        let s = open(&dir, Durability::Fsync);
        s.commit(&items).unwrap();
        s.ingest().unwrap();
        // Point a's seq 1 at revision 3 (b's op).
        let mut revs = Vec::new();
        set_seq_slot(&mut revs, 1, 3);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        put_seq_revs(&conn, "d", "a", 0, &revs).unwrap();
        drop(conn);
        let err = s.find_seq("d", "a", 1).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    }

    #[test]
    fn seq_slots_round_trip_and_grow() {
        let mut revs = Vec::new();
        assert_eq!(seq_slot(&revs, 5), None);
        set_seq_slot(&mut revs, 64 + 3, 42);
        assert_eq!(revs.len(), 4 * SLOT_BYTES);
        assert_eq!(seq_slot(&revs, 3), Some(42));
        assert_eq!(seq_slot(&revs, 2), None);
        assert_eq!(seq_slot(&revs, 4), None);
        set_seq_slot(&mut revs, 63, u64::MAX);
        assert_eq!(revs.len(), 64 * SLOT_BYTES);
        assert_eq!(seq_slot(&revs, 63), Some(u64::MAX));
        assert_eq!(seq_slot(&revs, 3), Some(42));
    }

    #[test]
    fn text_at_every_revision() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Fsync);
        let (_, items) = sample("d");
        let expected = texts(&items);
        assert_eq!(s.text_at("d", 0).unwrap(), None);
        s.commit(&items[..2]).unwrap();
        // Snapshot at 2 (the dedup table does not matter for text_at).
        s.commit(&[WriteItem::Snapshot {
            doc: "d".into(),
            snapshot: DocumentSnapshot {
                rev: 2,
                text: expected[2].clone(),
                clients: HashMap::new(),
            },
        }])
        .unwrap();
        s.commit(&items[2..]).unwrap();
        s.commit(&[WriteItem::Snapshot {
            doc: "d".into(),
            snapshot: DocumentSnapshot {
                rev: 5,
                text: expected[5].clone(),
                clients: HashMap::new(),
            },
        }])
        .unwrap();
        for (rev, text) in expected.iter().enumerate() {
            assert_eq!(
                s.text_at("d", rev as u64).unwrap().as_deref(),
                Some(text.as_str()),
                "rev {rev}"
            );
        }
        assert_eq!(expected[6], "🙂hello world!");
        assert_eq!(s.text_at("d", 7).unwrap(), None);
        assert_eq!(s.text_at("unknown", 0).unwrap(), None);
    }

    #[test]
    fn list_and_conflicts() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Fsync);
        let (hb, items_b) = sample("b");
        let mut ha = DocumentHistory::new();
        let items_a = vec![apply(&mut ha, "a", "x", 1, 0, ins(0, 0, "héllo"))];
        s.commit(&[create("c")]).unwrap();
        s.commit(&items_b).unwrap();
        s.commit(&items_a).unwrap();
        let list = s.list().unwrap();
        assert_eq!(
            list,
            vec![
                DocSummary {
                    id: "a".into(),
                    rev: 1,
                    len: 5
                },
                DocSummary {
                    id: "b".into(),
                    rev: 6,
                    len: hb.text().len_chars() as u64
                },
                DocSummary {
                    id: "c".into(),
                    rev: 0,
                    len: 0
                },
            ]
        );
        let conflicts = s.conflicts("b", 0, 10).unwrap();
        let revs: Vec<u64> = conflicts.iter().map(|o| o.rev).collect();
        assert_eq!(revs, vec![3, 5]);
        assert!(conflicts.iter().all(StoredOp::is_concurrent));
        assert_eq!(conflicts[1].received, ins(0, 0, "🙂"));
        assert_ne!(conflicts[1].received, conflicts[1].applied);
        assert_eq!(s.conflicts("b", 3, 10).unwrap()[0].rev, 5);
        assert_eq!(s.conflicts("b", 0, 1).unwrap().len(), 1);
        assert!(s.conflicts("a", 0, 10).unwrap().is_empty());
    }

    #[test]
    fn gap_rejection_writes_nothing() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Fsync);
        let (_, items) = sample("d");
        let (_, other) = sample("e");
        s.commit(&items[..2]).unwrap();
        let before = s.list().unwrap();

        // e's first op is fine, then d skips revision 3: nothing of the batch is written.
        let batch = vec![create("new"), other[0].clone(), items[3].clone()];
        match s.commit(&batch) {
            Err(StorageError::Gap {
                doc,
                expected,
                found,
            }) => assert_eq!((doc.as_str(), expected, found), ("d", 3, 4)),
            other => panic!("expected a gap, got {other:?}"),
        }
        // A repeated revision is a gap too.
        assert!(matches!(
            s.commit(&[items[1].clone()]),
            Err(StorageError::Gap {
                expected: 3,
                found: 2,
                ..
            })
        ));
        // So is a log that does not start at 1.
        assert!(matches!(
            s.commit(&[other[1].clone()]),
            Err(StorageError::Gap {
                expected: 1,
                found: 2,
                ..
            })
        ));
        // A snapshot newer than the log is refused.
        assert!(matches!(
            s.commit(&[WriteItem::Snapshot {
                doc: "d".into(),
                snapshot: DocumentSnapshot {
                    rev: 3,
                    text: String::new(),
                    clients: HashMap::new()
                }
            }]),
            Err(StorageError::SnapshotAhead {
                snapshot_rev: 3,
                last_rev: 2,
                ..
            })
        ));
        assert_eq!(s.list().unwrap(), before);
        assert!(!s.exists("new").unwrap());
        assert!(!s.exists("e").unwrap());
        assert_eq!(s.ops("d", 0, 10).unwrap(), stored(&items[..2]));
        // The log continues normally afterwards.
        s.commit(&items[2..]).unwrap();
        s.commit(&other).unwrap();
        assert_eq!(s.last_rev("d").unwrap(), 6);
        assert_eq!(s.last_rev("e").unwrap(), 6);
    }

    #[test]
    fn reopen_after_drop_keeps_everything() {
        let dir = TempDir::new().unwrap();
        let (h, items) = sample("d");
        let snapshot;
        {
            let s = open(&dir, Durability::Relaxed);
            s.commit(&items[..4]).unwrap();
            let loaded = s.load("d").unwrap().unwrap();
            snapshot = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail)
                .unwrap()
                .snapshot();
            s.commit(&[WriteItem::Snapshot {
                doc: "d".into(),
                snapshot: snapshot.clone(),
            }])
            .unwrap();
            s.commit(&items[4..]).unwrap();
            s.commit(&[create("other")]).unwrap();
        }
        let s = open(&dir, Durability::Fsync);
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
        let loaded = s.load("d").unwrap().unwrap();
        assert_eq!(loaded.snapshot, snapshot);
        let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(rebuilt.snapshot(), h.snapshot());
        assert!(s.exists("other").unwrap());
        // The reopened writer knows where the log is.
        assert!(matches!(
            s.commit(&[items[5].clone()]),
            Err(StorageError::Gap { expected: 7, .. })
        ));
    }

    #[test]
    fn epoch_changes_only_after_unclean_relaxed_runs() {
        let dir = TempDir::new().unwrap();
        let (_, items) = sample("d");
        let epoch = {
            let s = open(&dir, Durability::Relaxed);
            s.commit(&items[..1]).unwrap();
            s.epoch()
        }; // dropped without close_clean: unclean
        assert!(epoch > 0);
        let s = open(&dir, Durability::Relaxed);
        assert_eq!(s.epoch(), epoch + 1);
        s.commit(&items[1..2]).unwrap();
        s.close_clean().unwrap();
        drop(s);
        // Clean shutdown: same epoch.
        let s = open(&dir, Durability::Relaxed);
        assert_eq!(s.epoch(), epoch + 1);
        s.close_clean().unwrap();
        // A commit after close_clean makes the run unclean again.
        s.commit(&items[2..3]).unwrap();
        drop(s);
        let s = open(&dir, Durability::Relaxed);
        assert_eq!(s.epoch(), epoch + 2);
        drop(s); // unclean, relaxed
                 // Opening in fsync mode after an unclean relaxed run still changes it...
        let s = open(&dir, Durability::Fsync);
        assert_eq!(s.epoch(), epoch + 3);
        drop(s); // unclean, but fsync
                 // ...but unclean fsync runs never do.
        for _ in 0..2 {
            let s = open(&dir, Durability::Fsync);
            assert_eq!(s.epoch(), epoch + 3);
        }
        let s = open(&dir, Durability::Fsync);
        s.close_clean().unwrap();
        drop(s);
        assert_eq!(open(&dir, Durability::Relaxed).epoch(), epoch + 3);
        assert_eq!(open(&dir, Durability::Fsync).epoch(), epoch + 4);
        assert_eq!(open(&dir, Durability::Fsync).epoch(), epoch + 4);
        assert_eq!(open(&dir, Durability::Fsync).last_rev("d").unwrap(), 3);
    }

    #[test]
    fn commits_are_recovered_from_the_commit_log() {
        let (h, items) = sample("d");
        for durability in [Durability::Fsync, Durability::Relaxed] {
            let dir = TempDir::new().unwrap();
            {
                let s = open(&dir, durability);
                s.commit(&[create("empty")]).unwrap();
                s.commit(&items[..4]).unwrap();
                s.commit(&items[4..]).unwrap();
                assert_eq!(s.backlog(), 7);
            } // dropped before any read or ingest: only the log has them
            let s = open(&dir, durability);
            assert_eq!(s.backlog(), 0);
            assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
            assert!(s.exists("empty").unwrap());
            let loaded = s.load("d").unwrap().unwrap();
            let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
            assert_eq!(rebuilt.snapshot(), h.snapshot());
            // The log continues where the recovered commits ended.
            assert!(matches!(
                s.commit(&[items[5].clone()]),
                Err(StorageError::Gap { expected: 7, .. })
            ));
        }
    }

    #[test]
    fn commits_go_on_during_an_ingest_and_both_logs_are_recovered_in_order() {
        let (h, items) = sample("d");
        for durability in [Durability::Fsync, Durability::Relaxed] {
            let dir = TempDir::new().unwrap();
            {
                let s = open(&dir, durability);
                s.commit(&items[..2]).unwrap();
                s.seal(&mut lock(&s.writer), &mut lock(&s.ingester));
                assert_eq!(s.backlog(), 2);
                // An ingest holds the ingester while it writes: commits do
                // not need it.
                let ingesting = lock(&s.ingester);
                s.commit(&items[2..4]).unwrap();
                assert!(matches!(s.commit_unless_busy(&items[4..5]), Some(Ok(()))));
                drop(ingesting);
                assert_eq!(s.backlog(), 5);
                assert_eq!(s.last_rev("d").unwrap(), 5);
                // A second seal while the first sealed items are not yet
                // written must not lose or reorder them: it ingests in place.
                assert_eq!(s.seal_and_ingest().unwrap(), 5);
                s.commit(&items[5..]).unwrap();
                s.seal(&mut lock(&s.writer), &mut lock(&s.ingester));
            } // a crash between the seal and the ingest
            let s = open(&dir, durability);
            assert_eq!(s.backlog(), 0);
            assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
            let loaded = s.load("d").unwrap().unwrap();
            let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
            assert_eq!(rebuilt.snapshot(), h.snapshot());
        }

        // Sealed and pending items both unwritten at the crash: the sealed
        // (older) log is replayed first, whichever file it is.
        for seals_before in 0..3 {
            let dir = TempDir::new().unwrap();
            {
                let s = open(&dir, Durability::Fsync);
                s.commit(&[create("other")]).unwrap();
                for _ in 0..seals_before {
                    // Moves the active log to the other file and back.
                    s.seal_and_ingest().unwrap();
                    s.commit(&[create("other")]).unwrap();
                }
                s.commit(&items[..3]).unwrap();
                s.seal(&mut lock(&s.writer), &mut lock(&s.ingester));
                s.commit(&items[3..]).unwrap();
            }
            let s = open(&dir, Durability::Fsync);
            assert_eq!(
                s.ops("d", 0, 100).unwrap(),
                stored(&items),
                "{seals_before}"
            );
        }
    }

    #[test]
    fn a_read_waiting_for_an_ingest_does_not_hold_up_commits() {
        let dir = TempDir::new().unwrap();
        let s = std::sync::Arc::new(open(&dir, Durability::Fsync));
        let (_, items) = sample("d");
        s.commit(&items[..2]).unwrap();
        let ingesting = s.pause_ingests();
        let reader = {
            let s = std::sync::Arc::clone(&s);
            std::thread::spawn(move || s.ops("d", 0, 100))
        };
        // The reader is waiting for the "running ingest"; commits go on (the
        // commit side's lock is free: it would be busy otherwise).
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished());
        assert!(matches!(s.commit_unless_busy(&items[2..4]), Some(Ok(()))));
        s.commit(&items[4..]).unwrap();
        drop(ingesting);
        let read = reader.join().unwrap().unwrap();
        // It sees at least what was committed before it began.
        assert!(read.len() >= 2 && read[..] == stored(&items)[..read.len()]);
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
    }

    #[test]
    fn recovering_items_already_stored_skips_them_and_detects_a_mismatch() {
        let dir = TempDir::new().unwrap();
        let log_path = dir.path().join(LOG_FILES[0]);
        let (_, items) = sample("d");
        let s = open(&dir, Durability::Fsync);
        s.commit(&items[..3]).unwrap();
        let log_before_ingest = std::fs::read(&log_path).unwrap();
        assert_eq!(s.ingest().unwrap(), 3);
        drop(s);
        // As if a crash had come between the ingest and the log's reset: the
        // log's items are stored already and are skipped.
        std::fs::write(&log_path, &log_before_ingest).unwrap();
        let s = open(&dir, Durability::Fsync);
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items[..3]));
        s.commit(&items[3..]).unwrap();
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
        drop(s);

        // A log whose op differs from the stored op at the same revision is
        // refused rather than silently dropped.
        let (_, other) = {
            let mut h = DocumentHistory::new();
            let item = apply(&mut h, "d", "z", 1, 0, ins(0, 0, "HELLO"));
            (h, vec![item])
        };
        let other_dir = TempDir::new().unwrap();
        {
            let o = open(&other_dir, Durability::Fsync);
            o.commit(&other).unwrap();
        }
        let log = std::fs::read(other_dir.path().join(LOG_FILES[0])).unwrap();
        std::fs::write(&log_path, &log).unwrap();
        match SqliteStorage::open(dir.path(), Durability::Fsync) {
            Err(StorageError::Corrupt(message)) => {
                assert!(message.contains("different ops"), "{message}")
            }
            other => panic!("expected a corrupt error, got {other:?}"),
        }
    }

    #[test]
    fn try_commit_never_waits_for_the_writer() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Relaxed);
        let (_, items) = sample("d");
        let held = lock(&s.writer);
        assert!(s.try_commit(&items[..1]).is_none());
        drop(held);
        assert!(matches!(s.try_commit(&items[..1]), Some(Ok(()))));
        assert_eq!(s.backlog(), 1);
        // With fsync durability a commit is never cheap.
        let fsync_dir = TempDir::new().unwrap();
        let fsynced = open(&fsync_dir, Durability::Fsync);
        assert!(fsynced.try_commit(&items[..1]).is_none());
        assert_eq!(fsynced.last_rev("d").unwrap(), 0);
        // Continuity is checked as for `commit`.
        assert!(matches!(
            s.try_commit(&items[2..3]),
            Some(Err(StorageError::Gap { expected: 2, .. }))
        ));
        assert!(matches!(s.try_commit(&items[1..]), Some(Ok(()))));
        assert_eq!(s.last_rev("d").unwrap(), 6);
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
        assert_eq!(s.backlog(), 0); // the read ingested
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Fsync);
        let (_, items) = sample("d");
        s.commit(&items).unwrap();
        // Write the commit log's items to the tables, then damage them there.
        assert_eq!(s.ingest().unwrap(), items.len());
        let raw = Connection::open(s.path()).unwrap();
        raw.execute(
            "UPDATE ops SET applied = '[1,' WHERE doc = 'd' AND rev = 2",
            [],
        )
        .unwrap();
        raw.execute(
            "UPDATE ops SET op_hash = 'xyz' WHERE doc = 'd' AND rev = 3",
            [],
        )
        .unwrap();
        assert!(matches!(s.load("d"), Err(StorageError::Corrupt(_))));
        assert!(matches!(s.ops("d", 0, 10), Err(StorageError::Corrupt(_))));
        assert!(matches!(s.text_at("d", 4), Err(StorageError::Corrupt(_))));
        assert!(matches!(
            s.find_seq("d", "b", 1),
            Err(StorageError::Corrupt(_))
        ));
        // Unaffected revisions still read.
        assert_eq!(s.text_at("d", 1).unwrap().as_deref(), Some("hello"));
        raw.execute("DELETE FROM ops WHERE doc = 'd' AND rev = 5", [])
            .unwrap();
        raw.execute(
            "UPDATE ops SET applied = '[5]' WHERE doc = 'd' AND rev = 2",
            [],
        )
        .unwrap();
        let e = s.text_at("d", 6).unwrap_err();
        assert!(matches!(e, StorageError::Corrupt(_)), "{e}");
        // A bad dedup table in a snapshot.
        let (h, items) = sample("s");
        s.commit(&items).unwrap();
        s.commit(&[WriteItem::Snapshot {
            doc: "s".into(),
            snapshot: h.snapshot(),
        }])
        .unwrap();
        assert!(s.load("s").unwrap().is_some()); // a read ingests too
        raw.execute("UPDATE snapshots SET clients = 'nope' WHERE doc = 's'", [])
            .unwrap();
        assert!(matches!(s.load("s"), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn durability_parses() {
        assert_eq!("fsync".parse::<Durability>(), Ok(Durability::Fsync));
        assert_eq!(" Relaxed".parse::<Durability>(), Ok(Durability::Relaxed));
        assert!("sometimes".parse::<Durability>().is_err());
        assert_eq!(Durability::Relaxed.to_string(), "relaxed");
    }

    #[test]
    fn readers_work_alongside_the_writer() {
        let dir = TempDir::new().unwrap();
        let s = std::sync::Arc::new(open(&dir, Durability::Relaxed));
        let mut h = DocumentHistory::new();
        let items: Vec<WriteItem> = (0..200)
            .map(|i| {
                let len = h.text().len_chars();
                apply(&mut h, "d", "a", i + 1, i, ins(len, len, "x"))
            })
            .collect();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut last = 0;
                    while last < 200 {
                        let rev = s.last_rev("d").unwrap();
                        assert!(rev >= last);
                        last = rev;
                        if let Some(text) = s.text_at("d", rev).unwrap() {
                            assert_eq!(text.len() as u64, rev);
                        }
                    }
                })
            })
            .collect();
        for item in items {
            s.commit(&[item]).unwrap();
        }
        for r in readers {
            r.join().unwrap();
        }
        assert!(lock(&s.readers).len() <= MAX_IDLE_READERS);
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use tempfile::TempDir;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(params!["d", 0, 10], |row| row.get::<_, String>(3))
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn queries_use_their_indexes() {
        let dir = TempDir::new().unwrap();
        let s = SqliteStorage::open(dir.path(), Durability::Fsync).unwrap();
        let conn = s.open_reader().unwrap();
        let conflicts = plan(&conn, SQL_CONFLICTS_AFTER);
        assert!(conflicts.contains("ops_conflicts"), "{conflicts}");
        let by_seq = plan(&conn, SQL_SEQ_REVS);
        assert!(by_seq.contains("PRIMARY KEY"), "{by_seq}");
        let after = plan(&conn, SQL_OPS_AFTER);
        assert!(after.contains("PRIMARY KEY"), "{after}");
    }
}
