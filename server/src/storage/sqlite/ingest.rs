//! Ingests: sealing the pending items (the spare commit log becomes the
//! active one) and writing sealed items to the tables in one transaction
//! while commits go on.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ot_core::history::{ClientRecord, OpHash};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::reads::doc_rev;
use super::restore;
use super::schema::set_synchronous;
use super::seq_revs::{store_seq_revs, NewSeqs, SEQS_PER_BLOCK};
use super::{
    lock, now_ms, to_sql_int, Durability, Ingester, SqliteStorage, Writer, BUSY_TIMEOUT,
    STATEMENT_CACHE, WRITER_CACHE_KIB,
};
use crate::storage::oplog::{OpLog, LOG_FILES};
use crate::storage::{RegionRecord, StorageError, WriteItem};

/// Per-document state accumulated while writing one commit.
struct PendingDoc {
    rev: u64,
    /// `Some(len)` once an op of this commit changed the document.
    len: Option<u64>,
}

impl SqliteStorage {
    /// The connection that writes ingests to the tables.
    pub(super) fn open_ingest_connection(
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

    /// Write the sealed items to the tables and start the spare log over;
    /// returns how many items were written.
    pub(super) fn ingest_sealed(&self, ingester: &mut Ingester) -> Result<usize, StorageError> {
        let Ingester {
            conn,
            spare,
            sealed,
        } = ingester;
        ingest_log(
            conn,
            sealed,
            spare,
            (&self.sealed_count, &self.sealed_bytes),
        )
    }

    /// Write the pending items to the tables without sealing them (the
    /// caller holds both locks, so no commit can run meanwhile), then start
    /// the active log over.
    pub(super) fn ingest_pending_in_place(
        &self,
        writer: &mut Writer,
        ingester: &mut Ingester,
    ) -> Result<usize, StorageError> {
        ingest_log(
            &mut ingester.conn,
            &mut writer.pending,
            &mut writer.log,
            (&self.pending_count, &self.pending_bytes),
        )
    }

    /// Write every sealed and pending item to the tables, with both locks
    /// held (commits wait).
    pub(super) fn ingest_all_locked(
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
    pub(super) fn seal_and_ingest(&self) -> Result<usize, StorageError> {
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
    pub(super) fn seal(&self, writer: &mut Writer, ingester: &mut Ingester) {
        ingester.spare.start_after(&writer.log);
        std::mem::swap(&mut writer.log, &mut ingester.spare);
        ingester.sealed = std::mem::take(&mut writer.pending);
        self.sealed_count
            .store(ingester.sealed.len(), Ordering::Relaxed);
        self.pending_count.store(0, Ordering::Relaxed);
        self.sealed_bytes.store(
            self.pending_bytes.swap(0, Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
}

/// Write `items` (everything `log` holds) to the tables, then empty both;
/// `count` follows `items.len()` and `bytes` their memory. Returns how many
/// items were written.
pub(super) fn ingest_log(
    conn: &mut Connection,
    items: &mut Vec<WriteItem>,
    log: &mut OpLog,
    (count, bytes): (&AtomicUsize, &AtomicUsize),
) -> Result<usize, StorageError> {
    if items.is_empty() {
        return Ok(0);
    }
    write_items(conn, items, false, log.last_lsn())?;
    let written = items.len();
    items.clear();
    count.store(0, Ordering::Relaxed);
    bytes.store(0, Ordering::Relaxed);
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
/// content). A delete already stored (its id's deleted epoch is at least the
/// delete's) is skipped with every earlier item of its document: those
/// items belong to a generation that is gone, and the tables may already
/// hold the next one.
///
/// `upto_lsn`: the lsn of the last commit-log record whose items these are;
/// recorded in the same transaction (see `restore.rs`).
pub(super) fn write_items(
    conn: &mut Connection,
    items: &[WriteItem],
    recovering: bool,
    upto_lsn: Option<u64>,
) -> Result<(), StorageError> {
    let now = now_ms();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(lsn) = upto_lsn {
        restore::record_lsn(&tx, lsn)?;
    }
    let skip_upto = if recovering {
        applied_deletes(&tx, items)?
    } else {
        HashMap::new()
    };
    let mut pending: HashMap<&str, PendingDoc> = HashMap::new();
    // Sorted, so the seq_revs rows are visited in key order.
    let mut new_seqs = NewSeqs::new();
    // Each document's newest snapshot written here: older ones are pruned.
    let mut snapshotted: BTreeMap<&str, u64> = BTreeMap::new();
    {
        let mut insert_op = tx.prepare_cached(
            "INSERT INTO ops (doc, rev, client_id, seq, op_hash, base_rev, received, applied, time_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut create_doc = tx.prepare_cached(
            "INSERT OR IGNORE INTO docs (id, rev, len, created_ms) VALUES (?1, 0, 0, ?2)",
        )?;
        // OR IGNORE: the first binding stays (and a recovery replays it harmlessly).
        let mut insert_key = tx.prepare_cached(
            "INSERT OR IGNORE INTO client_keys (doc, client_id, key_hash) VALUES (?1, ?2, ?3)",
        )?;
        let mut insert_snapshot = tx.prepare_cached(
            "INSERT OR REPLACE INTO snapshots (doc, rev, text, clients) VALUES (?1, ?2, ?3, ?4)",
        )?;
        // OR REPLACE: a recovery replays records harmlessly.
        let mut insert_region = tx.prepare_cached(
            "INSERT OR REPLACE INTO region_log (doc, n, record) VALUES (?1, ?2, ?3)",
        )?;
        let mut insert_copy = tx.prepare_cached(
            "INSERT OR IGNORE INTO conflict_copies (doc, id, time_ms, reason, text)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut insert_conflict = tx.prepare_cached(
            "INSERT OR REPLACE INTO region_conflicts (doc, rev, conflict) VALUES (?1, ?2, ?3)",
        )?;
        let mut set_waiting = tx.prepare_cached(
            "INSERT OR REPLACE INTO region_waiting (doc, waiting) VALUES (?1, ?2)",
        )?;
        let mut prune_region =
            tx.prepare_cached("DELETE FROM region_log WHERE doc = ?1 AND n < ?2")?;
        let mut delete = DeleteStatements::prepare(&tx)?;
        for (index, item) in items.iter().enumerate() {
            let doc = item.doc();
            if skip_upto.get(doc).is_some_and(|&upto| index <= upto) {
                continue;
            }
            if let WriteItem::DeleteDoc { epoch, .. } = item {
                // The next item of this id (if any) starts a new generation:
                // it creates the row again and continues from revision 0.
                delete.run(doc, *epoch)?;
                pending.remove(doc);
                new_seqs.retain(|(d, _, _), _| *d != doc);
                continue;
            }
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
                WriteItem::CreateDoc { .. } | WriteItem::DeleteDoc { .. } => {}
                WriteItem::ClientKey {
                    client_id,
                    key_hash,
                    ..
                } => {
                    insert_key.execute(params![doc, client_id, key_hash.to_hex()])?;
                }
                WriteItem::ConflictCopy { copy, .. } => {
                    insert_copy.execute(params![
                        doc,
                        to_sql_int(copy.id, "copy id")?,
                        copy.time_ms,
                        copy.reason,
                        copy.text,
                    ])?;
                }
                WriteItem::RegionWaiting { waiting, .. } => {
                    set_waiting.execute(params![doc, i64::from(*waiting)])?;
                }
                WriteItem::RegionConflict { conflict, .. } => {
                    let json = serde_json::to_string(conflict).map_err(|e| {
                        StorageError::Corrupt(format!("cannot serialise a region conflict: {e}"))
                    })?;
                    insert_conflict.execute(params![
                        doc,
                        to_sql_int(conflict.rev, "rev")?,
                        json
                    ])?;
                }
                WriteItem::Region { n, record, .. } => {
                    let n = to_sql_int(*n, "region record number")?;
                    let json = serde_json::to_string(record).map_err(|e| {
                        StorageError::Corrupt(format!("cannot serialise a region record: {e}"))
                    })?;
                    insert_region.execute(params![doc, n, json])?;
                    if matches!(record, RegionRecord::Checkpoint { .. }) {
                        prune_region.execute(params![doc, n])?;
                    }
                }
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
                        op.origin
                            .as_ref()
                            .map(serde_json::to_string)
                            .transpose()
                            .map_err(|e| StorageError::Corrupt(format!("origin: {e}")))?,
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
                    snapshotted.insert(doc, snapshot.rev);
                }
            }
        }
        store_seq_revs(&tx, &new_seqs)?;
        super::prune::prune_snapshots(&tx, &snapshotted)?;
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

/// The statements of a [`WriteItem::DeleteDoc`].
struct DeleteStatements<'tx> {
    rows: Vec<rusqlite::CachedStatement<'tx>>,
    remember: rusqlite::CachedStatement<'tx>,
}

impl<'tx> DeleteStatements<'tx> {
    fn prepare(tx: &'tx Connection) -> Result<Self, StorageError> {
        // Every table that holds rows of a document, and SQLite's own
        // `(client, seq) → rev` index.
        let rows = crate::storage::rows::delete_doc_statements(&[("seq_revs", "doc")], "?1")
            .into_iter()
            .map(|sql| tx.prepare_cached(&sql))
            .collect::<Result<Vec<_>, _>>()?;
        // MAX: replaying an old delete never lowers the remembered epoch.
        let remember = tx.prepare_cached(
            "INSERT INTO deleted_docs (id, epoch) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET epoch = MAX(epoch, excluded.epoch)",
        )?;
        Ok(DeleteStatements { rows, remember })
    }

    fn run(&mut self, doc: &str, epoch: u64) -> Result<(), StorageError> {
        for statement in &mut self.rows {
            statement.execute([doc])?;
        }
        self.remember
            .execute(params![doc, to_sql_int(epoch, "epoch")?])?;
        Ok(())
    }
}

/// For a recovery: per document, the index of its last delete in `items`
/// that the tables already hold (the id's deleted epoch is at least the
/// delete's).
fn applied_deletes<'a>(
    conn: &Connection,
    items: &'a [WriteItem],
) -> Result<HashMap<&'a str, usize>, StorageError> {
    let mut upto = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        if let WriteItem::DeleteDoc { doc, epoch } = item {
            if deleted_epoch(conn, doc)?.is_some_and(|stored| stored >= *epoch) {
                upto.insert(doc.as_str(), index);
            }
        }
    }
    Ok(upto)
}

/// The epoch remembered for a deleted id, if any.
pub(super) fn deleted_epoch(conn: &Connection, doc: &str) -> Result<Option<u64>, StorageError> {
    let epoch: Option<i64> = conn
        .prepare_cached("SELECT epoch FROM deleted_docs WHERE id = ?1")?
        .query_row([doc], |row| row.get(0))
        .optional()?;
    epoch
        .map(|e| super::from_sql_int(e, "deleted_docs.epoch"))
        .transpose()
}

/// The op hash stored for (`doc`, `rev`), if any.
pub(super) fn stored_hash(
    conn: &Connection,
    doc: &str,
    rev: u64,
) -> Result<Option<OpHash>, StorageError> {
    let hash: Option<String> = conn
        .prepare_cached("SELECT op_hash FROM ops WHERE doc = ?1 AND rev = ?2")?
        .query_row(params![doc, to_sql_int(rev, "rev")?], |row| row.get(0))
        .optional()?;
    Ok(hash.as_deref().and_then(OpHash::from_hex))
}

/// What opening the commit logs gave: the active and the spare log, and
/// the reasons to believe that acknowledged commits were lost (see
/// `restore.rs`; empty when none).
pub(super) struct Recovered {
    pub(super) active: OpLog,
    pub(super) spare: OpLog,
    pub(super) lost: Vec<String>,
}

/// Store whatever the commit logs in `dir` still hold (a crash left it
/// there; fsynced, whatever the durability), older log first, then start
/// both logs over after the last lsn either the logs or the database knows.
/// Compares the logs with the database first (`restore.rs`): the reasons
/// it finds to believe commits were lost come back in [`Recovered::lost`].
pub(super) fn recover(
    conn: &mut Connection,
    dir: &Path,
    durability: Durability,
    instance: u64,
) -> Result<Recovered, StorageError> {
    // Whatever the logs still hold was committed: store it (fsynced,
    // whatever the durability), older log first, before a log may start over.
    let sync = durability == Durability::Fsync;
    let (mut active, active_records) = OpLog::open(&dir.join(LOG_FILES[0]), sync)?;
    let (mut spare, spare_records) = OpLog::open(&dir.join(LOG_FILES[1]), sync)?;
    let db_lsn = restore::stored_lsn(conn)?;
    let lost = restore::check_logs(db_lsn, instance, &[&active, &spare]);
    let mut logs = [(&active, active_records), (&spare, spare_records)];
    logs.sort_by_key(|(log, _)| (log.is_empty(), log.first_lsn()));
    // Both logs in one transaction, older first: a delete in the newer log
    // must see the older log's items of its document (to skip them when the
    // delete is stored already).
    let mut recovered: Vec<WriteItem> = Vec::new();
    let mut high = db_lsn;
    for (log, records) in logs {
        let before = recovered.len();
        recovered.extend(records.into_iter().flatten());
        if recovered.len() > before {
            tracing::info!(items = recovered.len() - before, log = %log.path().display(), "recovering commits from the commit log");
        }
        high = high.max(log.found().high_lsn);
    }
    write_items(conn, &recovered, true, high)?;
    for log in [&mut active, &mut spare] {
        log.set_instance(instance);
        // Lsns go on after everything either side knows of.
        log.continue_from(high.map_or(0, |lsn| lsn.saturating_add(1)));
    }
    active.reset()?;
    spare.reset()?;
    // New records come after any old record whose reset did not reach the disk.
    active.start_after(&spare);
    Ok(Recovered {
        active,
        spare,
        lost,
    })
}
