//! Reads: a pool of reader connections, each read in one transaction after
//! an ingest of everything committed before it; the queries behind
//! [`Storage`](crate::storage::Storage)'s read methods.

use std::collections::HashMap;

use ot_core::history::{DocumentSnapshot, OpHash};
use ot_core::Operation;
use ropey::Rope;
use rusqlite::{params, Connection, OptionalExtension};

use super::seq_revs::{seq_slot, SEQS_PER_BLOCK, SQL_SEQ_REVS};
use super::{
    from_sql_int, limit_to_sql, lock, to_sql_int, SqliteStorage, BUSY_TIMEOUT, MAX_IDLE_READERS,
    STATEMENT_CACHE,
};
use crate::storage::rows::{bind_stored_key, check_contiguous, RawOp};
use crate::storage::{
    ConflictCopy, DocSummary, LoadedDoc, RegionConflict, RegionRecord, StorageError, StoredOp,
};

/// Ops of a document after a revision (`?2`), at most `?3`: the columns [`RawOp`] reads.
pub(super) const SQL_OPS_AFTER: &str =
    "SELECT rev, client_id, seq, op_hash, base_rev, received, applied, time_ms, origin
     FROM ops WHERE doc = ?1 AND rev > ?2 ORDER BY rev LIMIT ?3";

/// Like [`SQL_OPS_AFTER`], only concurrent ops, through the partial index
/// `ops_conflicts` (named: the planner would pick the primary key). The
/// condition must be written exactly as in the index for SQLite to use it.
pub(super) const SQL_CONFLICTS_AFTER: &str =
    "SELECT rev, client_id, seq, op_hash, base_rev, received, applied, time_ms, origin
     FROM ops INDEXED BY ops_conflicts
     WHERE doc = ?1 AND rev > ?2 AND rev > base_rev + 1 ORDER BY rev LIMIT ?3";

/// Read one `ops` row (the columns of [`SQL_OPS_AFTER`]).
fn raw_op(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawOp> {
    Ok(RawOp {
        rev: row.get(0)?,
        client_id: row.get(1)?,
        seq: row.get(2)?,
        hash: row.get(3)?,
        base_rev: row.get(4)?,
        received: row.get(5)?,
        applied: row.get(6)?,
        time_ms: row.get(7)?,
        origin: row.get(8)?,
    })
}

/// Read ops of `doc` with `sql` ([`SQL_OPS_AFTER`] or [`SQL_CONFLICTS_AFTER`]) and parse them.
pub(super) fn query_ops(
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
            raw_op,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    raw.into_iter().map(|r| r.parse(doc)).collect()
}

/// The document's last revision, `None` if it does not exist.
pub(super) fn doc_rev(conn: &Connection, doc: &str) -> Result<Option<u64>, StorageError> {
    let rev: Option<i64> = conn
        .prepare_cached("SELECT rev FROM docs WHERE id = ?1")?
        .query_row([doc], |row| row.get(0))
        .optional()?;
    rev.map(|r| from_sql_int(r, "docs.rev")).transpose()
}

impl SqliteStorage {
    pub(super) fn open_reader(&self) -> Result<Connection, StorageError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
    }

    /// Run `f` on a reader connection inside one read transaction (a
    /// consistent view of the database).
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        // Everything committed before the read began.
        self.seal_and_ingest()?;
        self.read_tables(f)
    }

    /// [`read`](Self::read) without the ingest first: the tables only.
    pub(super) fn read_tables<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
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

    /// [`Storage::load`](crate::storage::Storage::load).
    ///
    /// When the ingest before it fails (a full disk), the document is
    /// loaded from the tables plus the committed items not yet in them
    /// (`unstored.rs`), so that a document can reload after a failed commit
    /// while the disk is full, keeping its dedup table.
    pub(super) fn load_doc(&self, doc: &str) -> Result<Option<LoadedDoc>, StorageError> {
        match self.seal_and_ingest() {
            Ok(_) => self.read_tables(|conn| load_from_tables(conn, doc)),
            Err(e) => {
                tracing::warn!(doc, error = %e, "ingest failed: loading the document from the tables and the commit log's items");
                self.load_with_unstored(doc)
            }
        }
    }
}

/// A document as the tables hold it.
pub(super) fn load_from_tables(
    conn: &Connection,
    doc: &str,
) -> Result<Option<LoadedDoc>, StorageError> {
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
    let mut snapshot = snapshot;
    bind_stored_keys(conn, doc, &mut snapshot)?;
    let tail = query_ops(conn, SQL_OPS_AFTER, doc, snapshot.rev, usize::MAX)?;
    check_contiguous(doc, snapshot.rev, &tail, last)?;
    Ok(Some(LoadedDoc {
        snapshot,
        tail: tail.into_iter().map(StoredOp::into_applied).collect(),
    }))
}

impl SqliteStorage {
    /// [`Storage::find_seq`](crate::storage::Storage::find_seq).
    pub(super) fn find_stored_seq(
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

    /// [`Storage::text_at`](crate::storage::Storage::text_at).
    pub(super) fn text_at_rev(&self, doc: &str, rev: u64) -> Result<Option<String>, StorageError> {
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

    /// [`Storage::list`](crate::storage::Storage::list).
    pub(super) fn list_docs(&self) -> Result<Vec<DocSummary>, StorageError> {
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
}

/// Put every stored key binding of `doc` into `snapshot`'s dedup table (the
/// table is where bindings live; a snapshot may predate one). A client with no
/// record yet gets a record with no op (`last_seq` 0).
fn bind_stored_keys(
    conn: &Connection,
    doc: &str,
    snapshot: &mut DocumentSnapshot,
) -> Result<(), StorageError> {
    let mut select =
        conn.prepare_cached("SELECT client_id, key_hash FROM client_keys WHERE doc = ?1")?;
    let mut rows = select.query([doc])?;
    while let Some(row) = rows.next()? {
        let text: String = row.get(1)?;
        bind_stored_key(doc, snapshot, row.get(0)?, &text)?;
    }
    Ok(())
}

/// A document's region records, in order ([`Storage::region_records`]).
///
/// [`Storage::region_records`]: crate::storage::Storage::region_records
pub(super) fn region_records(
    conn: &Connection,
    doc: &str,
) -> Result<Vec<(u64, RegionRecord)>, StorageError> {
    let mut select =
        conn.prepare_cached("SELECT n, record FROM region_log WHERE doc = ?1 ORDER BY n")?;
    let rows = select.query_map([doc], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut records = Vec::new();
    for row in rows {
        let (n, json) = row?;
        let n = from_sql_int(n, "region record number")?;
        let record = serde_json::from_str(&json).map_err(|e| {
            StorageError::Corrupt(format!("document {doc:?}: bad region record {n}: {e}"))
        })?;
        records.push((n, record));
    }
    Ok(records)
}

/// The regional documents a restart reopens ([`Storage::region_docs`]).
///
/// [`Storage::region_docs`]: crate::storage::Storage::region_docs
pub(super) fn region_docs(conn: &Connection) -> Result<Vec<String>, StorageError> {
    let mut select = conn.prepare_cached(
        "SELECT doc FROM region_waiting WHERE waiting > 0
         UNION
         SELECT DISTINCT doc FROM region_log
         WHERE doc NOT IN (SELECT doc FROM region_waiting)
         ORDER BY doc",
    )?;
    let docs = select
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(docs)
}

/// A document's conflict copies, oldest first ([`Storage::conflict_copies`]).
///
/// [`Storage::conflict_copies`]: crate::storage::Storage::conflict_copies
pub(super) fn conflict_copies(
    conn: &Connection,
    doc: &str,
) -> Result<Vec<ConflictCopy>, StorageError> {
    let mut select = conn.prepare_cached(
        "SELECT id, time_ms, reason, text FROM conflict_copies WHERE doc = ?1
         ORDER BY time_ms, id",
    )?;
    let rows = select.query_map([doc], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
        ))
    })?;
    let mut copies = Vec::new();
    for row in rows {
        let (id, time_ms, reason, text) = row?;
        copies.push(ConflictCopy {
            id: from_sql_int(id, "copy id")?,
            time_ms,
            reason,
            text,
        });
    }
    Ok(copies)
}

/// A regional document's conflict journal ([`Storage::region_conflicts`]).
///
/// [`Storage::region_conflicts`]: crate::storage::Storage::region_conflicts
pub(super) fn region_conflicts(
    conn: &Connection,
    doc: &str,
    after_rev: u64,
    limit: usize,
) -> Result<Vec<RegionConflict>, StorageError> {
    let mut select = conn.prepare_cached(
        "SELECT conflict FROM region_conflicts WHERE doc = ?1 AND rev > ?2
         ORDER BY rev LIMIT ?3",
    )?;
    let rows = select.query_map(
        params![doc, to_sql_int(after_rev, "rev")?, limit_to_sql(limit)],
        |row| row.get::<_, String>(0),
    )?;
    let mut conflicts = Vec::new();
    for row in rows {
        let json = row?;
        conflicts.push(serde_json::from_str(&json).map_err(|e| {
            StorageError::Corrupt(format!("document {doc:?}: bad region conflict: {e}"))
        })?);
    }
    Ok(conflicts)
}
