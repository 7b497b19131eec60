//! Pages of stored ops bounded in bytes as well as in count: `/ops`,
//! `/conflicts` and the admin export read a page in small chunks and stop once
//! the page holds [`PAGE_BYTES`] (always at least one op), so that one request
//! over a history of large ops never holds hundreds of megabytes. Clients page
//! on from the last revision they got until a page is empty.

use crate::storage::{Storage, StorageError, StoredOp};

/// Most bytes (estimated as [`op_bytes`]) of ops one page holds, beyond its first op.
pub(crate) const PAGE_BYTES: usize = 4 << 20;
/// Ops read from storage at a time while filling a page.
const CHUNK: usize = 32;

/// A read of a document's stored ops: (storage, doc, after, limit).
pub(crate) type OpsRead = fn(&dyn Storage, &str, u64, usize) -> Result<Vec<StoredOp>, StorageError>;

/// About how many bytes `op` holds in memory (its ops as sent and as
/// applied: their components and inserted text), which also bounds its size
/// in a page (a component is at most a dozen bytes of JSON).
pub(crate) fn op_bytes(op: &StoredOp) -> usize {
    std::mem::size_of::<StoredOp>() + op.received.heap_bytes() + op.applied.heap_bytes()
}

/// The ops `read` gives after revision `after`: at most `limit`, and no more
/// than [`PAGE_BYTES`] beyond the first.
pub(crate) fn read_page(
    storage: &dyn Storage,
    doc: &str,
    after: u64,
    limit: usize,
    read: OpsRead,
) -> Result<Vec<StoredOp>, StorageError> {
    let mut page: Vec<StoredOp> = Vec::new();
    let mut bytes = 0usize;
    let mut from = after;
    while page.len() < limit && bytes < PAGE_BYTES {
        let want = CHUNK.min(limit - page.len());
        let chunk = read(storage, doc, from, want)?;
        let complete = chunk.len() == want;
        for op in chunk {
            if bytes >= PAGE_BYTES {
                return Ok(page);
            }
            bytes += op_bytes(&op);
            from = op.rev;
            page.push(op);
        }
        if !complete {
            break;
        }
    }
    Ok(page)
}
