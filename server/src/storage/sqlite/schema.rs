//! The schema, its migration and the meta rows (schema version, epoch, clean
//! flag, durability).
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
//!     origin    TEXT,                       -- StoredOrigin as JSON; NULL: a client of
//!                                           -- this node (added to older databases on open)
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
//! -- Which key each client id of a document is bound to (PROTOCOL.md,
//! -- "Connecting"): the first key presented; never changed. Added to schema
//! -- version 2 with CREATE TABLE IF NOT EXISTS (older databases get it on open).
//! CREATE TABLE client_keys (
//!     doc       TEXT NOT NULL,
//!     client_id TEXT NOT NULL,
//!     key_hash  TEXT NOT NULL,              -- SHA-256 of the key, 64 hex digits
//!     PRIMARY KEY (doc, client_id)
//! ) WITHOUT ROWID;
//! -- Ids whose documents were deleted, with the last epoch each deleted
//! -- generation showed (a re-created document shows a greater one). Added to
//! -- schema version 2 with CREATE TABLE IF NOT EXISTS.
//! CREATE TABLE deleted_docs (
//!     id    TEXT PRIMARY KEY NOT NULL,
//!     epoch INTEGER NOT NULL
//! ) WITHOUT ROWID;
//! -- 'schema_version' = '2' (a version 1 database is migrated on open);
//! -- 'epoch' = decimal u64; 'clean' = '1' after a clean shutdown, '0' while
//! -- running; 'durability' = 'fsync' | 'relaxed' of the last run.
//! -- a regional server's log of each document (`RegionRecord` as JSON), from
//! -- its newest checkpoint on; added with CREATE TABLE IF NOT EXISTS (older
//! -- databases get it on open, empty).
//! CREATE TABLE region_log (
//!     doc    TEXT NOT NULL,
//!     n      INTEGER NOT NULL,
//!     record TEXT NOT NULL,
//!     PRIMARY KEY (doc, n)
//! ) WITHOUT ROWID;
//! -- conflict copies kept by the server (a region's work its home could not
//! -- take); they outlive deletes of the document. Added the same way.
//! CREATE TABLE conflict_copies (
//!     doc     TEXT NOT NULL,
//!     id      INTEGER NOT NULL,              -- random, per document
//!     time_ms INTEGER NOT NULL,
//!     reason  TEXT NOT NULL,
//!     text    TEXT NOT NULL,
//!     PRIMARY KEY (doc, id)
//! ) WITHOUT ROWID;
//! -- a regional server's conflict journal: each op of the home it transformed
//! -- past its own unsent work (`RegionConflict` as JSON); added the same way.
//! CREATE TABLE region_conflicts (
//!     doc      TEXT NOT NULL,
//!     rev      INTEGER NOT NULL,             -- the regional revision
//!     conflict TEXT NOT NULL,
//!     PRIMARY KEY (doc, rev)
//! ) WITHOUT ROWID;
//! -- whether a regional server's document still has link ops to hand to its
//! -- home (1) or not (0), written when that changes (a restart reopens those
//! -- with some); added the same way.
//! CREATE TABLE region_waiting (
//!     doc     TEXT PRIMARY KEY NOT NULL,
//!     waiting INTEGER NOT NULL
//! ) WITHOUT ROWID;
//! CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
//! ```
//!
//! Numbers are stored as SQLite integers (`i64`); a `u64` above `i64::MAX` is
//! refused with [`StorageError::OutOfRange`].
//!
//! # Epoch
//!
//! A new database starts at the current Unix time in milliseconds (so a
//! deleted and recreated database does not reuse an old epoch). On open, if
//! the previous run did not call [`Storage::close_clean`] and ran with
//! [`Durability::Relaxed`], the epoch is incremented: commits acknowledged
//! just before a power loss may be gone, so clients must resync. A document
//! shows `max(storage epoch, its id's deleted epoch + 1)` (see
//! `deleted_docs`), so the new storage epoch is also made greater than every
//! deleted epoch + 1: after the bump every document shows a value none of
//! them showed before. The meta
//! rows are always written with `synchronous=FULL`.
//!
//! [`Storage::close_clean`]: crate::storage::Storage::close_clean

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::seq_revs::{put_seq_revs, set_seq_slot, SEQS_PER_BLOCK};
use super::{from_sql_int, now_ms, Durability};
use crate::storage::StorageError;

/// The schema version this code reads and writes.
pub(super) const SCHEMA_VERSION: &str = "2";

pub(super) const SCHEMA: &str = "
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
    origin    TEXT,
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
CREATE TABLE IF NOT EXISTS client_keys (
    doc       TEXT NOT NULL,
    client_id TEXT NOT NULL,
    key_hash  TEXT NOT NULL,
    PRIMARY KEY (doc, client_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deleted_docs (
    id    TEXT PRIMARY KEY NOT NULL,
    epoch INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS region_log (
    doc    TEXT NOT NULL,
    n      INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (doc, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflict_copies (
    doc     TEXT NOT NULL,
    id      INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    reason  TEXT NOT NULL,
    text    TEXT NOT NULL,
    PRIMARY KEY (doc, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS region_conflicts (
    doc      TEXT NOT NULL,
    rev      INTEGER NOT NULL,
    conflict TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS region_waiting (
    doc     TEXT PRIMARY KEY NOT NULL,
    waiting INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    expires    INTEGER NOT NULL,
    revoked_ms INTEGER NOT NULL
);
";

pub(super) fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?)
}

pub(super) fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StorageError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute([key, value])?;
    Ok(())
}

pub(super) fn set_synchronous(
    conn: &Connection,
    durability: Durability,
) -> Result<(), StorageError> {
    conn.pragma_update(None, "synchronous", durability.synchronous())?;
    Ok(())
}

/// Schema version 1 to 2: fill `seq_revs` from the op log and drop the
/// per-op index it replaces; returns how many `seq_revs` rows were written.
/// Streams the ops in (doc, client, seq) order (the old index's order), so
/// memory stays one row's worth whatever the database's size.
pub(super) fn migrate_v1_seq_index(conn: &Connection) -> Result<usize, StorageError> {
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

/// A database made before ops had origins gets the (nullable) column: an
/// additive change, so the schema version stays.
fn add_origin_column(conn: &Connection) -> Result<(), StorageError> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('ops') WHERE name = 'origin'",
        [],
        |row| row.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE ops ADD COLUMN origin TEXT")?;
        tracing::info!("added the origin column to the op log");
    }
    Ok(())
}

/// After recovering the commit logs: an epoch that `init` changed is raised
/// above every deleted epoch + 1, the greatest value a re-created document
/// may have shown (see "Epoch" above); returns the epoch.
pub(super) fn raise_past_deleted(
    conn: &Connection,
    epoch: u64,
    changed: bool,
) -> Result<u64, StorageError> {
    if !changed {
        return Ok(epoch);
    }
    let deleted: Option<i64> =
        conn.query_row("SELECT MAX(epoch) FROM deleted_docs", [], |row| row.get(0))?;
    let deleted = deleted.map_or(0, |e| u64::try_from(e).unwrap_or(0));
    let raised = epoch.max(deleted.saturating_add(2));
    if raised != epoch {
        meta_set(conn, "epoch", &raised.to_string())?;
    }
    Ok(raised)
}

/// Create the tables if needed, migrate a version 1 database, refuse an
/// unknown version, and write the meta rows of this run (the clean flag
/// cleared); returns the storage epoch and whether it changed. `path` names
/// the database in errors.
pub(super) fn init(
    conn: &mut Connection,
    path: &Path,
    durability: Durability,
) -> Result<(u64, bool), StorageError> {
    let mut changed = false;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    add_origin_column(&tx)?;
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
                changed = true;
                // Raised past the deleted epochs by `raise_past_deleted`
                // once the commit logs are recovered (they may hold deletes).
                epoch.saturating_add(1).max(1)
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
    Ok((epoch, changed))
}
