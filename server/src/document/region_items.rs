//! How a regional commit is stored: its entries as region records, in
//! order, and the op a reset starts the new regional history with.

use ot_core::region::{RegionalCheckpoint, RegionalCommit, RegionalEntry};

use super::loading::now_ms;
use crate::storage::{RegionRecord, StoredOp, StoredOrigin, WriteItem};

/// The items storing `commit` (and `checkpoint`, the state after it) of
/// document `doc`, numbering the records from `next` on. A reset's first
/// revision is stored as an op too (no other item holds it); the ops of
/// local clients and of the home are stored by the caller, with what they
/// were received as.
pub(super) fn region_items(
    doc: &str,
    next: &mut u64,
    commit: RegionalCommit,
    checkpoint: Option<RegionalCheckpoint>,
) -> Vec<WriteItem> {
    let mut items = Vec::with_capacity(commit.entries.len() + 1);
    let mut record = |items: &mut Vec<WriteItem>, record: RegionRecord| {
        items.push(WriteItem::Region {
            doc: doc.to_owned(),
            n: *next,
            record,
        });
        *next += 1;
    };
    for entry in commit.entries {
        if let RegionalEntry::Reset {
            applied, home_rev, ..
        } = &entry
        {
            items.push(WriteItem::CreateDoc {
                doc: doc.to_owned(),
            });
            let mut op = StoredOp::from_applied(applied, applied.op.clone(), now_ms());
            op.origin = Some(StoredOrigin::Upstream {
                home_rev: *home_rev,
                author: None,
            });
            items.push(WriteItem::Op {
                doc: doc.to_owned(),
                op,
                len_after: applied.op.target_len() as u64,
            });
        }
        record(
            &mut items,
            RegionRecord::Entry {
                entry: Box::new(entry),
            },
        );
    }
    if let Some(checkpoint) = checkpoint {
        record(
            &mut items,
            RegionRecord::Checkpoint {
                checkpoint: Box::new(checkpoint),
            },
        );
    }
    items
}
