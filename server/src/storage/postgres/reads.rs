//! Reads from PostgreSQL on the read pool; a load reads its snapshot, key
//! bindings and tail in one repeatable-read transaction.

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Pool};
use ot_core::history::{DocumentSnapshot, OpHash};
use ot_core::Operation;
use ropey::Rope;
use tokio_postgres::{IsolationLevel, Row};

use super::connection;
use crate::storage::rows::{
    bind_stored_key, check_contiguous, from_sql_int, limit_to_sql, to_sql_int, RawOp,
};
use crate::storage::{
    ConflictCopy, DocSummary, LoadedDoc, RegionConflict, RegionRecord, StorageError, StoredOp,
};

const OP_COLUMNS: &str =
    "rev, client_id, seq, op_hash, base_rev, received, applied, time_ms, origin";

fn raw_op(row: &Row) -> Result<RawOp, StorageError> {
    Ok(RawOp {
        rev: row.try_get(0)?,
        client_id: row.try_get(1)?,
        seq: row.try_get(2)?,
        hash: row.try_get(3)?,
        base_rev: row.try_get(4)?,
        received: row.try_get(5)?,
        applied: row.try_get(6)?,
        time_ms: row.try_get(7)?,
        origin: row.try_get(8)?,
    })
}

/// UTF-8 bytes read back as text.
fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, StorageError> {
    String::from_utf8(bytes).map_err(|_| StorageError::Corrupt(format!("{what} is not UTF-8")))
}

async fn head(client: &impl GenericClient, doc: &str) -> Result<Option<u64>, StorageError> {
    let statement = client
        .prepare_cached("SELECT rev FROM docs WHERE id = $1")
        .await?;
    match client.query_opt(&statement, &[&doc]).await? {
        Some(row) => Ok(Some(from_sql_int(row.try_get(0)?, "docs.rev")?)),
        None => Ok(None),
    }
}

/// The document's last revision, `None` if it does not exist.
pub(super) async fn doc_rev(pool: &Pool, doc: &str) -> Result<Option<u64>, StorageError> {
    head(&connection(pool).await?, doc).await
}

/// The last revision of each of `docs` (0 for one that does not exist).
pub(super) async fn heads(
    pool: &Pool,
    docs: &[String],
) -> Result<Vec<(String, u64)>, StorageError> {
    let client = connection(pool).await?;
    let statement = client
        .prepare_cached("SELECT id, rev FROM docs WHERE id = ANY($1)")
        .await?;
    let mut found = std::collections::HashMap::new();
    for row in client.query(&statement, &[&docs]).await? {
        let id: String = row.try_get(0)?;
        found.insert(id, from_sql_int(row.try_get(1)?, "docs.rev")?);
    }
    Ok(docs
        .iter()
        .map(|doc| (doc.clone(), found.get(doc).copied().unwrap_or(0)))
        .collect())
}

/// The database's clock, in milliseconds since the Unix epoch.
pub(super) async fn clock_ms(pool: &Pool) -> Result<i64, StorageError> {
    let client = connection(pool).await?;
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

async fn query_ops(
    client: &impl GenericClient,
    doc: &str,
    after_rev: u64,
    limit: usize,
    concurrent_only: bool,
) -> Result<Vec<StoredOp>, StorageError> {
    let filter = if concurrent_only {
        " AND rev > base_rev + 1"
    } else {
        ""
    };
    let statement = client
        .prepare_cached(&format!(
            "SELECT {OP_COLUMNS} FROM ops WHERE doc = $1 AND rev > $2{filter}
             ORDER BY rev LIMIT $3"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &doc,
                &to_sql_int(after_rev, "after_rev")?,
                &limit_to_sql(limit),
            ],
        )
        .await?;
    rows.iter().map(|row| raw_op(row)?.parse(doc)).collect()
}

/// Ops (or only the concurrent ones) after `after_rev`, at most `limit`.
pub(super) async fn ops(
    pool: &Pool,
    doc: &str,
    after_rev: u64,
    limit: usize,
    concurrent_only: bool,
) -> Result<Vec<StoredOp>, StorageError> {
    let client = connection(pool).await?;
    query_ops(&client, doc, after_rev, limit, concurrent_only).await
}

/// The newest snapshot, every key binding and the ops after it.
pub(super) async fn load(pool: &Pool, doc: &str) -> Result<Option<LoadedDoc>, StorageError> {
    let mut client = connection(pool).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let Some(last) = head(&tx, doc).await? else {
        return Ok(None);
    };
    let statement = tx
        .prepare_cached(
            "SELECT rev, text, clients FROM snapshots WHERE doc = $1 ORDER BY rev DESC LIMIT 1",
        )
        .await?;
    let mut snapshot = match tx.query_opt(&statement, &[&doc]).await? {
        None => DocumentSnapshot {
            rev: 0,
            text: String::new(),
            clients: HashMap::new(),
        },
        Some(row) => {
            let rev = from_sql_int(row.try_get(0)?, "snapshot rev")?;
            let text = utf8(row.try_get(1)?, "a snapshot's text")?;
            let clients: String = row.try_get(2)?;
            let clients = serde_json::from_str(&clients).map_err(|e| {
                StorageError::Corrupt(format!(
                    "document {doc:?}: bad dedup table in the snapshot at {rev}: {e}"
                ))
            })?;
            DocumentSnapshot { rev, text, clients }
        }
    };
    let keys = tx
        .prepare_cached("SELECT client_id, key_hash FROM client_keys WHERE doc = $1")
        .await?;
    for row in tx.query(&keys, &[&doc]).await? {
        let text: String = row.try_get(1)?;
        bind_stored_key(doc, &mut snapshot, row.try_get(0)?, &text)?;
    }
    let tail = query_ops(&tx, doc, snapshot.rev, usize::MAX, false).await?;
    check_contiguous(doc, snapshot.rev, &tail, last)?;
    tx.commit().await?;
    Ok(Some(LoadedDoc {
        snapshot,
        tail: tail.into_iter().map(StoredOp::into_applied).collect(),
    }))
}

/// The revision and hash of (`client_id`, `seq`)'s op, if stored.
pub(super) async fn find_seq(
    pool: &Pool,
    doc: &str,
    client_id: &str,
    seq: u64,
) -> Result<Option<(u64, OpHash)>, StorageError> {
    let client = connection(pool).await?;
    let statement = client
        .prepare_cached(
            "SELECT rev, op_hash FROM ops WHERE doc = $1 AND client_id = $2 AND seq = $3
             ORDER BY rev DESC LIMIT 1",
        )
        .await?;
    let Some(row) = client
        .query_opt(&statement, &[&doc, &client_id, &to_sql_int(seq, "seq")?])
        .await?
    else {
        return Ok(None);
    };
    let rev = from_sql_int(row.try_get(0)?, "rev")?;
    let text: String = row.try_get(1)?;
    let hash = OpHash::from_hex(&text).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "document {doc:?} revision {rev}: bad op hash {text:?}"
        ))
    })?;
    Ok(Some((rev, hash)))
}

/// The text at `rev`: the nearest snapshot at or below it plus the ops after.
pub(super) async fn text_at(
    pool: &Pool,
    doc: &str,
    rev: u64,
) -> Result<Option<String>, StorageError> {
    let mut client = connection(pool).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    match head(&tx, doc).await? {
        Some(last) if rev <= last => {}
        _ => return Ok(None),
    }
    let rev_sql = to_sql_int(rev, "rev")?;
    let statement = tx
        .prepare_cached(
            "SELECT rev, text FROM snapshots WHERE doc = $1 AND rev <= $2
             ORDER BY rev DESC LIMIT 1",
        )
        .await?;
    let (base, text) = match tx.query_opt(&statement, &[&doc, &rev_sql]).await? {
        Some(row) => (
            from_sql_int(row.try_get(0)?, "snapshot rev")?,
            utf8(row.try_get(1)?, "a snapshot's text")?,
        ),
        None => (0, String::new()),
    };
    if base == rev {
        return Ok(Some(text));
    }
    let statement = tx
        .prepare_cached(
            "SELECT rev, applied FROM ops WHERE doc = $1 AND rev > $2 AND rev <= $3 ORDER BY rev",
        )
        .await?;
    let rows = tx
        .query(&statement, &[&doc, &to_sql_int(base, "rev")?, &rev_sql])
        .await?;
    let mut rope = Rope::from_str(&text);
    let mut expected = base + 1;
    for row in rows {
        let op_rev = from_sql_int(row.try_get(0)?, "rev")?;
        let corrupt = |detail: String| {
            StorageError::Corrupt(format!("document {doc:?} revision {op_rev}: {detail}"))
        };
        if op_rev != expected {
            return Err(corrupt(format!("expected revision {expected}")));
        }
        let json: String = row.try_get(1)?;
        let op =
            Operation::from_json(&json).map_err(|e| corrupt(format!("bad applied op: {e}")))?;
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
    tx.commit().await?;
    Ok(Some(rope.to_string()))
}

/// Every document with its revision and length, by id.
pub(super) async fn list(pool: &Pool) -> Result<Vec<DocSummary>, StorageError> {
    let client = connection(pool).await?;
    let rows = client
        .query("SELECT id, rev, len FROM docs ORDER BY id", &[])
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DocSummary {
                id: row.try_get(0)?,
                rev: from_sql_int(row.try_get(1)?, "docs.rev")?,
                len: from_sql_int(row.try_get(2)?, "docs.len")?,
            })
        })
        .collect()
}

/// The epoch remembered for a deleted id, if any.
pub(super) async fn deleted_epoch(pool: &Pool, doc: &str) -> Result<Option<u64>, StorageError> {
    let client = connection(pool).await?;
    let row = client
        .query_opt("SELECT epoch FROM deleted_docs WHERE id = $1", &[&doc])
        .await?;
    row.map(|row| from_sql_int(row.try_get(0)?, "deleted_docs.epoch"))
        .transpose()
}

/// A document's region records from its newest checkpoint on.
pub(super) async fn region_records(
    pool: &Pool,
    doc: &str,
) -> Result<Vec<(u64, RegionRecord)>, StorageError> {
    let client = connection(pool).await?;
    let rows = client
        .query(
            "SELECT n, record FROM region_log WHERE doc = $1 ORDER BY n",
            &[&doc],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let n = from_sql_int(row.try_get(0)?, "region record number")?;
            let json: String = row.try_get(1)?;
            let record = serde_json::from_str(&json).map_err(|e| {
                StorageError::Corrupt(format!("document {doc:?}: bad region record {n}: {e}"))
            })?;
            Ok((n, record))
        })
        .collect()
}

/// The regional documents a restart reopens (see `Storage::region_docs`).
pub(super) async fn region_docs(pool: &Pool) -> Result<Vec<String>, StorageError> {
    let client = connection(pool).await?;
    let rows = client
        .query(
            "SELECT doc FROM region_waiting WHERE waiting
             UNION
             SELECT DISTINCT doc FROM region_log
             WHERE doc NOT IN (SELECT doc FROM region_waiting)
             ORDER BY doc",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<_, String>(0)?))
        .collect()
}

/// A document's conflict copies, oldest first.
pub(super) async fn conflict_copies(
    pool: &Pool,
    doc: &str,
) -> Result<Vec<ConflictCopy>, StorageError> {
    let client = connection(pool).await?;
    let rows = client
        .query(
            "SELECT id, time_ms, reason, text FROM conflict_copies WHERE doc = $1
             ORDER BY time_ms, id",
            &[&doc],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ConflictCopy {
                id: from_sql_int(row.try_get(0)?, "copy id")?,
                time_ms: row.try_get(1)?,
                reason: row.try_get(2)?,
                text: utf8(row.try_get(3)?, "a conflict copy")?,
            })
        })
        .collect()
}

/// The region's journal of the home's ops after `after_rev`, at most `limit`.
pub(super) async fn region_conflicts(
    pool: &Pool,
    doc: &str,
    after_rev: u64,
    limit: usize,
) -> Result<Vec<RegionConflict>, StorageError> {
    let client = connection(pool).await?;
    let rows = client
        .query(
            "SELECT conflict FROM region_conflicts WHERE doc = $1 AND rev > $2
             ORDER BY rev LIMIT $3",
            &[&doc, &to_sql_int(after_rev, "rev")?, &limit_to_sql(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let json: String = row.try_get(0)?;
            serde_json::from_str(&json).map_err(|e| {
                StorageError::Corrupt(format!("document {doc:?}: bad region conflict: {e}"))
            })
        })
        .collect()
}

/// The revoked token ids that have not expired at `now` (Unix seconds).
pub(super) async fn revoked_tokens(pool: &Pool, now: u64) -> Result<Vec<String>, StorageError> {
    let client = connection(pool).await?;
    let rows = client
        .query(
            "SELECT jti FROM revoked_tokens WHERE expires >= $1",
            &[&i64::try_from(now).unwrap_or(i64::MAX)],
        )
        .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<_, String>(0)?))
        .collect()
}
