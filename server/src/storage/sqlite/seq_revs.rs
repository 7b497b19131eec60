//! The `seq_revs` codec: where each client's ops are, one row per
//! (document, client, 64 seqs), slot `seq % 64` holding the op's revision as
//! 8 little-endian bytes (0: none). An ingest updates one row per (document,
//! client, block) instead of inserting into a per-op index.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::to_sql_int;
use crate::storage::StorageError;

/// Seqs per `seq_revs` row.
pub(super) const SEQS_PER_BLOCK: u64 = 64;

/// Bytes per slot of a `seq_revs.revs` blob (a little-endian `u64`).
pub(super) const SLOT_BYTES: usize = 8;

/// The revisions of (doc `?1`, client `?2`)'s seqs in block `?3`.
pub(super) const SQL_SEQ_REVS: &str =
    "SELECT revs FROM seq_revs WHERE doc = ?1 AND client_id = ?2 AND block = ?3";

/// Set `seq`'s slot of a `seq_revs` blob to `rev`, growing the blob as needed.
pub(super) fn set_seq_slot(revs: &mut Vec<u8>, seq: u64, rev: u64) {
    // The remainder is below SEQS_PER_BLOCK (64): the cast cannot truncate.
    let start = (seq % SEQS_PER_BLOCK) as usize * SLOT_BYTES;
    if revs.len() < start + SLOT_BYTES {
        revs.resize(start + SLOT_BYTES, 0);
    }
    revs[start..start + SLOT_BYTES].copy_from_slice(&rev.to_le_bytes());
}

/// The revision in `seq`'s slot of a `seq_revs` blob (`None`: no such op).
pub(super) fn seq_slot(revs: &[u8], seq: u64) -> Option<u64> {
    let start = (seq % SEQS_PER_BLOCK) as usize * SLOT_BYTES;
    let bytes: [u8; SLOT_BYTES] = revs.get(start..start + SLOT_BYTES)?.try_into().ok()?;
    // Revisions start at 1: a zero slot is a seq this block has not seen.
    Some(u64::from_le_bytes(bytes)).filter(|&rev| rev != 0)
}

pub(super) fn put_seq_revs(
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
pub(super) type NewSeqs<'a> = BTreeMap<(&'a str, &'a str, u64), Vec<(u64, u64)>>;

/// Add the (seq, rev) pairs of newly stored ops to `seq_revs`, one
/// read-modify-write per (document, client, block).
pub(super) fn store_seq_revs(
    conn: &Connection,
    new_seqs: &NewSeqs<'_>,
) -> Result<(), StorageError> {
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
