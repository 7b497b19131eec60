//! Commits to PostgreSQL: every item of one call in one transaction, each
//! document's head moved by a compare-and-set.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::{Pool, Transaction};
use ot_core::history::ClientRecord;

use super::connection;
use crate::storage::rows::{delete_doc_statements, from_sql_int, now_ms, to_sql_int};
use crate::storage::sqlite::prune::snapshots_to_keep;
use crate::storage::{RegionRecord, StorageError, WriteItem};

/// One document's head while a commit writes it.
struct Head {
    /// The revision the database held when the commit locked the row.
    read: u64,
    /// The revision after the items written so far.
    rev: u64,
    /// `Some(len)` once an op of this commit changed the document.
    len: Option<u64>,
}

impl Head {
    /// A head just read (and locked) at `rev`, nothing written yet.
    fn read_at(rev: u64) -> Head {
        Head {
            read: rev,
            rev,
            len: None,
        }
    }
}

/// Write `items` in one transaction (see [`Storage::commit`]); returns the
/// heads it moved: each deleted document with 0, then each document with
/// ops and its new last revision.
///
/// Each document's row is locked when the commit first meets it, so a
/// concurrent commit of the same document (another node) waits and then
/// sees the head this one left; the head then moves with
/// `UPDATE … WHERE rev = <head read>`. An op that does not continue the
/// head fails the whole commit with [`StorageError::Gap`].
///
/// [`Storage::commit`]: crate::storage::Storage::commit
pub(super) async fn commit(
    pool: &Pool,
    items: &[WriteItem],
) -> Result<Vec<(String, u64)>, StorageError> {
    let mut client = connection(pool).await?;
    let tx = client.transaction().await?;
    let now = now_ms();
    let mut heads: HashMap<&str, Head> = HashMap::new();
    // Each document's newest snapshot written here: older ones are thinned.
    let mut snapshotted: BTreeMap<&str, u64> = BTreeMap::new();
    // Deleted documents are announced with head 0 (before a re-creation's head).
    let mut deleted: Vec<String> = Vec::new();
    // Ops are inserted together, in one statement per run between deletes.
    let mut rows = OpRows::default();
    for (doc, rev) in lock_heads(&tx, items, now).await? {
        heads.insert(doc, Head::read_at(rev));
    }
    refuse_lost_races(items, &heads)?;
    for item in items {
        let doc = item.doc();
        if let WriteItem::DeleteDoc { epoch, .. } = item {
            // The ops before it go first, and with it.
            rows.insert(&tx).await?;
            delete(&tx, doc, *epoch).await?;
            heads.remove(doc);
            snapshotted.remove(doc);
            deleted.push(doc.to_owned());
            continue;
        }
        if !heads.contains_key(doc) {
            let rev = lock_head(&tx, doc, now).await?;
            heads.insert(doc, Head::read_at(rev));
        }
        let Some(head) = heads.get_mut(doc) else {
            continue;
        };
        write_item(&tx, doc, item, head, &mut rows).await?;
        if let WriteItem::Snapshot { snapshot, .. } = item {
            snapshotted.insert(doc, snapshot.rev);
        }
    }
    rows.insert(&tx).await?;
    let update = tx
        .prepare_cached("UPDATE docs SET rev = $2, len = $3 WHERE id = $1 AND rev = $4")
        .await?;
    for (doc, head) in &heads {
        let Some(len) = head.len else { continue };
        let moved = tx
            .execute(
                &update,
                &[
                    doc,
                    &to_sql_int(head.rev, "rev")?,
                    &to_sql_int(len, "len")?,
                    &to_sql_int(head.read, "rev")?,
                ],
            )
            .await?;
        if moved != 1 {
            // Cannot happen while the row is locked; refuse rather than guess.
            return Err(StorageError::Gap {
                doc: (*doc).to_owned(),
                expected: head.read + 1,
                found: head.rev,
            });
        }
    }
    thin_snapshots(&tx, &snapshotted).await?;
    tx.commit().await?;
    Ok(deleted
        .into_iter()
        .map(|doc| (doc, 0))
        .chain(
            heads
                .into_iter()
                .filter(|(_, head)| head.len.is_some())
                .map(|(doc, head)| (doc.to_owned(), head.rev)),
        )
        .collect())
}

/// Op rows waiting to be inserted, column by column.
#[derive(Default)]
struct OpRows {
    doc: Vec<String>,
    rev: Vec<i64>,
    client_id: Vec<String>,
    seq: Vec<i64>,
    hash: Vec<String>,
    base_rev: Vec<i64>,
    received: Vec<String>,
    applied: Vec<String>,
    origin: Vec<Option<String>>,
}

impl OpRows {
    fn push(
        &mut self,
        doc: &str,
        op: &crate::storage::StoredOp,
        origin: Option<String>,
    ) -> Result<(), StorageError> {
        self.doc.push(doc.to_owned());
        self.rev.push(to_sql_int(op.rev, "rev")?);
        self.client_id.push(op.client_id.clone());
        self.seq.push(to_sql_int(op.seq, "seq")?);
        self.hash.push(op.hash.to_hex());
        self.base_rev.push(to_sql_int(op.base_rev, "base_rev")?);
        self.received.push(op.received.to_json());
        self.applied.push(op.applied.to_json());
        self.origin.push(origin);
        Ok(())
    }

    /// Insert the waiting rows in one statement (none: nothing). Their time
    /// is the database's (the transaction's start), the same clock for every
    /// node: `StoredOp::time_ms` is not used.
    async fn insert(&mut self, tx: &Transaction<'_>) -> Result<(), StorageError> {
        if self.rev.is_empty() {
            return Ok(());
        }
        let statement = tx
            .prepare_cached(
                "INSERT INTO ops (doc, rev, client_id, seq, op_hash, base_rev, received,
                                  applied, time_ms, origin)
                 SELECT d, r, c, s, h, b, rc, ap,
                        (floor(extract(epoch FROM now()) * 1000))::bigint, o
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                             $6::bigint[], $7::text[], $8::text[], $9::text[])
                      AS t(d, r, c, s, h, b, rc, ap, o)",
            )
            .await?;
        tx.execute(
            &statement,
            &[
                &self.doc,
                &self.rev,
                &self.client_id,
                &self.seq,
                &self.hash,
                &self.base_rev,
                &self.received,
                &self.applied,
                &self.origin,
            ],
        )
        .await?;
        *self = OpRows::default();
        Ok(())
    }
}

/// Make sure the row of every document `items` name exists, lock them until
/// the transaction ends, in one statement and in sorted order (every node
/// locks in the same order: two nodes' commits never deadlock), and return
/// each one's head.
async fn lock_heads<'a>(
    tx: &Transaction<'_>,
    items: &'a [WriteItem],
    now: i64,
) -> Result<Vec<(&'a str, u64)>, StorageError> {
    let docs: std::collections::BTreeSet<&str> = items.iter().map(WriteItem::doc).collect();
    let docs: Vec<&str> = docs.into_iter().collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO docs (id, rev, len, created_ms)
             SELECT id, 0, 0, $2 FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, n) ORDER BY n
             ON CONFLICT (id) DO UPDATE SET id = excluded.id RETURNING id, rev",
        )
        .await?;
    let mut heads = HashMap::new();
    for row in tx.query(&statement, &[&docs, &now]).await? {
        let id: String = row.try_get(0)?;
        heads.insert(id, from_sql_int(row.try_get(1)?, "docs.rev")?);
    }
    docs.into_iter()
        .map(|doc| {
            let rev = heads.get(doc).copied().ok_or_else(|| {
                StorageError::Internal(format!("no head returned for document {doc:?}"))
            })?;
            Ok((doc, rev))
        })
        .collect()
}

/// Refuse the commit, naming every document whose first op does not
/// continue the head just read (another node moved it first), before
/// anything is written; a document deleted by `items` is checked as it is
/// written.
fn refuse_lost_races(items: &[WriteItem], heads: &HashMap<&str, Head>) -> Result<(), StorageError> {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut lost = Vec::new();
    for item in items {
        let doc = item.doc();
        if matches!(item, WriteItem::DeleteDoc { .. }) {
            seen.insert(doc);
        }
        let WriteItem::Op { op, .. } = item else {
            continue;
        };
        if !seen.insert(doc) {
            continue;
        }
        if let Some(head) = heads.get(doc) {
            if op.rev != head.read + 1 {
                lost.push((doc.to_owned(), head.read + 1, op.rev));
            }
        }
    }
    match lost.len() {
        0 => Ok(()),
        1 => {
            let (doc, expected, found) = lost.remove(0);
            Err(StorageError::Gap {
                doc,
                expected,
                found,
            })
        }
        _ => Err(StorageError::LostRaces { docs: lost }),
    }
}

/// Make sure `doc`'s row exists, lock it until the transaction ends and
/// return its head.
async fn lock_head(tx: &Transaction<'_>, doc: &str, now: i64) -> Result<u64, StorageError> {
    // One statement: an existing row is locked by the (no-op) update and
    // its head returned; a concurrent committer waits here for ours.
    let statement = tx
        .prepare_cached(
            "INSERT INTO docs (id, rev, len, created_ms) VALUES ($1, 0, 0, $2)
             ON CONFLICT (id) DO UPDATE SET id = excluded.id RETURNING rev",
        )
        .await?;
    let row = tx.query_one(&statement, &[&doc, &now]).await?;
    from_sql_int(row.try_get(0)?, "docs.rev")
}

/// Write one item (not a delete) of `doc`, whose head is `head`.
async fn write_item(
    tx: &Transaction<'_>,
    doc: &str,
    item: &WriteItem,
    head: &mut Head,
    rows: &mut OpRows,
) -> Result<(), StorageError> {
    match item {
        WriteItem::CreateDoc { .. } | WriteItem::DeleteDoc { .. } => {}
        WriteItem::ClientKey {
            client_id,
            key_hash,
            ..
        } => {
            // The first binding stays.
            let insert = tx
                .prepare_cached(
                    "INSERT INTO client_keys (doc, client_id, key_hash) VALUES ($1, $2, $3)
                     ON CONFLICT (doc, client_id) DO NOTHING",
                )
                .await?;
            tx.execute(&insert, &[&doc, client_id, &key_hash.to_hex()])
                .await?;
        }
        WriteItem::ConflictCopy { copy, .. } => {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO conflict_copies (doc, id, time_ms, reason, text)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (doc, id) DO NOTHING",
                )
                .await?;
            tx.execute(
                &insert,
                &[
                    &doc,
                    &to_sql_int(copy.id, "copy id")?,
                    &copy.time_ms,
                    &copy.reason,
                    &copy.text.as_bytes(),
                ],
            )
            .await?;
        }
        WriteItem::RegionWaiting { waiting, .. } => {
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO region_waiting (doc, waiting) VALUES ($1, $2)
                     ON CONFLICT (doc) DO UPDATE SET waiting = excluded.waiting",
                )
                .await?;
            tx.execute(&upsert, &[&doc, waiting]).await?;
        }
        WriteItem::RegionConflict { conflict, .. } => {
            let json = serde_json::to_string(conflict).map_err(|e| {
                StorageError::Corrupt(format!("cannot serialise a region conflict: {e}"))
            })?;
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO region_conflicts (doc, rev, conflict) VALUES ($1, $2, $3)
                     ON CONFLICT (doc, rev) DO UPDATE SET conflict = excluded.conflict",
                )
                .await?;
            tx.execute(&upsert, &[&doc, &to_sql_int(conflict.rev, "rev")?, &json])
                .await?;
        }
        WriteItem::Region { n, record, .. } => {
            let n = to_sql_int(*n, "region record number")?;
            let json = serde_json::to_string(record).map_err(|e| {
                StorageError::Corrupt(format!("cannot serialise a region record: {e}"))
            })?;
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO region_log (doc, n, record) VALUES ($1, $2, $3)
                     ON CONFLICT (doc, n) DO UPDATE SET record = excluded.record",
                )
                .await?;
            tx.execute(&upsert, &[&doc, &n, &json]).await?;
            if matches!(record, RegionRecord::Checkpoint { .. }) {
                let prune = tx
                    .prepare_cached("DELETE FROM region_log WHERE doc = $1 AND n < $2")
                    .await?;
                tx.execute(&prune, &[&doc, &n]).await?;
            }
        }
        WriteItem::Op { op, len_after, .. } => {
            if op.rev != head.rev + 1 {
                return Err(StorageError::Gap {
                    doc: doc.to_owned(),
                    expected: head.rev + 1,
                    found: op.rev,
                });
            }
            let origin = op
                .origin
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| StorageError::Corrupt(format!("origin: {e}")))?;
            rows.push(doc, op, origin)?;
            head.rev = op.rev;
            head.len = Some(*len_after);
        }
        WriteItem::Snapshot { snapshot, .. } => {
            if snapshot.rev > head.rev {
                return Err(StorageError::SnapshotAhead {
                    doc: doc.to_owned(),
                    snapshot_rev: snapshot.rev,
                    last_rev: head.rev,
                });
            }
            let clients: BTreeMap<&String, &ClientRecord> = snapshot.clients.iter().collect();
            let clients = serde_json::to_string(&clients).map_err(|e| {
                StorageError::Corrupt(format!("cannot serialise a dedup table: {e}"))
            })?;
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO snapshots (doc, rev, text, clients) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (doc, rev)
                     DO UPDATE SET text = excluded.text, clients = excluded.clients",
                )
                .await?;
            tx.execute(
                &upsert,
                &[
                    &doc,
                    &to_sql_int(snapshot.rev, "snapshot rev")?,
                    &snapshot.text.as_bytes(),
                    &clients,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// Delete every row of `doc` (its conflict copies stay) and remember the
/// id with `epoch` (never lowered).
async fn delete(tx: &Transaction<'_>, doc: &str, epoch: u64) -> Result<(), StorageError> {
    for sql in delete_doc_statements(&[], "$1") {
        let statement = tx.prepare_cached(&sql).await?;
        tx.execute(&statement, &[&doc]).await?;
    }
    let remember = tx
        .prepare_cached(
            "INSERT INTO deleted_docs (id, epoch) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET epoch = GREATEST(deleted_docs.epoch, excluded.epoch)",
        )
        .await?;
    tx.execute(&remember, &[&doc, &to_sql_int(epoch, "epoch")?])
        .await?;
    Ok(())
}

/// Keep the snapshots [`snapshots_to_keep`] keeps of each document that got
/// a new one.
async fn thin_snapshots(
    tx: &Transaction<'_>,
    newest: &BTreeMap<&str, u64>,
) -> Result<(), StorageError> {
    if newest.is_empty() {
        return Ok(());
    }
    let list = tx
        .prepare_cached("SELECT rev FROM snapshots WHERE doc = $1")
        .await?;
    let delete = tx
        .prepare_cached("DELETE FROM snapshots WHERE doc = $1 AND rev = ANY($2)")
        .await?;
    for doc in newest.keys() {
        let revs = tx
            .query(&list, &[doc])
            .await?
            .iter()
            .map(|row| from_sql_int(row.try_get(0)?, "snapshot rev"))
            .collect::<Result<Vec<u64>, StorageError>>()?;
        if revs.len() <= 2 {
            continue;
        }
        let keep = snapshots_to_keep(&revs);
        let drop: Vec<i64> = revs
            .iter()
            .filter(|rev| !keep.contains(rev))
            .map(|&rev| to_sql_int(rev, "snapshot rev"))
            .collect::<Result<_, _>>()?;
        if !drop.is_empty() {
            tx.execute(&delete, &[doc, &drop]).await?;
        }
    }
    Ok(())
}

/// Revoke `jti` (a second revocation keeps the first), durably.
pub(super) async fn revoke_token(pool: &Pool, jti: &str, expires: u64) -> Result<(), StorageError> {
    let client = connection(pool).await?;
    client
        .execute(
            "INSERT INTO revoked_tokens (jti, expires, revoked_ms) VALUES ($1, $2, $3)
             ON CONFLICT (jti) DO NOTHING",
            &[&jti, &i64::try_from(expires).unwrap_or(i64::MAX), &now_ms()],
        )
        .await?;
    Ok(())
}
