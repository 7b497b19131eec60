//! What both stores share: the integers SQL holds, one op row before
//! parsing, and the continuity check of a loaded tail.

use std::fmt;

use ot_core::history::{ClientRecord, DocumentSnapshot, KeyHash, OpHash};
use ot_core::Operation;

use super::{StorageError, StoredOp};

/// Now, in milliseconds since the Unix epoch (the shared clock: see
/// [`crate::clock`]).
pub(in crate::storage) fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Every table both stores keep a document's rows in, with the column that
/// names the document: a delete clears them all (the conflict copies stay;
/// the conflict journal is an index of `ops`). One list, so that a table
/// added later is deleted by both stores.
pub(in crate::storage) const DOC_TABLES: [(&str, &str); 7] = [
    ("docs", "id"),
    ("ops", "doc"),
    ("snapshots", "doc"),
    ("client_keys", "doc"),
    ("region_log", "doc"),
    ("region_conflicts", "doc"),
    ("region_waiting", "doc"),
];

/// The statements deleting a document's rows from [`DOC_TABLES`] (and
/// `extra`, a store's own tables), its id bound as `param` (`$1`, `?1`).
pub(in crate::storage) fn delete_doc_statements(
    extra: &[(&str, &str)],
    param: &str,
) -> Vec<String> {
    DOC_TABLES
        .iter()
        .chain(extra)
        .map(|(table, column)| format!("DELETE FROM {table} WHERE {column} = {param}"))
        .collect()
}

/// `value` as an SQL integer (SQL has no unsigned 64-bit integers).
pub(in crate::storage) fn to_sql_int(value: u64, what: &str) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange(format!("{what} = {value}")))
}

/// A stored SQL integer as the unsigned value it was written from.
pub(in crate::storage) fn from_sql_int(value: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| StorageError::Corrupt(format!("negative {what}: {value}")))
}

/// A row limit as an SQL integer (no limit above `i64::MAX` exists anyway).
pub(in crate::storage) fn limit_to_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// One `ops` row as read, before parsing.
pub(in crate::storage) struct RawOp {
    pub(in crate::storage) rev: i64,
    pub(in crate::storage) client_id: String,
    pub(in crate::storage) seq: i64,
    pub(in crate::storage) hash: String,
    pub(in crate::storage) base_rev: i64,
    pub(in crate::storage) received: String,
    pub(in crate::storage) applied: String,
    pub(in crate::storage) time_ms: i64,
    pub(in crate::storage) origin: Option<String>,
}

impl RawOp {
    pub(in crate::storage) fn parse(self, doc: &str) -> Result<StoredOp, StorageError> {
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
        let origin = match self.origin.as_deref() {
            None => None,
            Some(text) => Some(serde_json::from_str(text).map_err(|e| corrupt("bad origin", &e))?),
        };
        Ok(StoredOp {
            rev,
            client_id: self.client_id,
            seq: from_sql_int(self.seq, "seq")?,
            hash,
            base_rev: from_sql_int(self.base_rev, "base_rev")?,
            received,
            applied,
            time_ms: self.time_ms,
            origin,
        })
    }
}

/// Check that `ops` continue revision `after` without gaps, up to `last`.
pub(in crate::storage) fn check_contiguous(
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

/// Put a stored key binding (`client_id` → the hex of its key's hash) into
/// `snapshot`'s dedup table, where bindings live (a snapshot may predate
/// one); a client with no record yet gets one with no op (`last_seq` 0).
pub(in crate::storage) fn bind_stored_key(
    doc: &str,
    snapshot: &mut DocumentSnapshot,
    client_id: String,
    key_hex: &str,
) -> Result<(), StorageError> {
    let key_hash = KeyHash::from_hex(key_hex).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "document {doc:?}: bad key hash for client {client_id:?}"
        ))
    })?;
    snapshot
        .clients
        .entry(client_id)
        .or_insert_with(|| ClientRecord {
            last_seq: 0,
            last_rev: 0,
            last_hash: OpHash::default(),
            key_hash: None,
        })
        .key_hash = Some(key_hash);
    Ok(())
}
