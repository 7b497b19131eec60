//! Which stored snapshots a document keeps: the newest two, and older ones
//! spaced further apart the older they are. Loading a document reads only
//! the newest and resumes read ops, never snapshots; the older ones serve
//! `GET /api/docs/{doc}/text?rev=R` (the nearest snapshot at or below R, plus
//! the ops after it), so the replay for an old revision stays proportional
//! to its age while a document keeps O(log revisions) snapshots instead of
//! one per `--snapshot-every` ops forever.

use std::collections::BTreeMap;

use rusqlite::{params, Transaction};

use super::{from_sql_int, to_sql_int};
use crate::storage::StorageError;

/// The revisions to keep out of `revs` (any order), given that the newest
/// is the document's latest snapshot: walking from the newest down, a
/// snapshot is kept when its distance to the previous kept one is at least
/// half the previous kept one's distance to the newest, so kept distances
/// from the newest grow at least 1.5× per step.
pub(in crate::storage) fn snapshots_to_keep(revs: &[u64]) -> Vec<u64> {
    let mut sorted = revs.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let Some(&newest) = sorted.first() else {
        return Vec::new();
    };
    let mut kept = vec![newest];
    for &rev in &sorted[1..] {
        let last = kept[kept.len() - 1];
        if (last - rev).saturating_mul(2) >= newest - last {
            kept.push(rev);
        }
    }
    kept
}

/// Delete the snapshots of each document in `newest` (document → the
/// revision of the snapshot just written) that [`snapshots_to_keep`] drops,
/// inside the ingest's transaction.
pub(super) fn prune_snapshots(
    tx: &Transaction<'_>,
    newest: &BTreeMap<&str, u64>,
) -> Result<(), StorageError> {
    let mut list = tx.prepare_cached("SELECT rev FROM snapshots WHERE doc = ?1")?;
    let mut delete = tx.prepare_cached("DELETE FROM snapshots WHERE doc = ?1 AND rev = ?2")?;
    for (doc, _) in newest.iter() {
        let revs = list
            .query_map(params![doc], |row| row.get::<_, i64>(0))?
            .map(|rev| from_sql_int(rev?, "snapshot rev"))
            .collect::<Result<Vec<u64>, StorageError>>()?;
        if revs.len() <= 2 {
            continue;
        }
        let keep = snapshots_to_keep(&revs);
        for rev in revs.iter().filter(|rev| !keep.contains(rev)) {
            delete.execute(params![doc, to_sql_int(*rev, "snapshot rev")?])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::snapshots_to_keep;

    #[test]
    fn keeps_the_newest_two_and_thins_older_ones_geometrically() {
        let revs: Vec<u64> = (1..=1000).map(|n| n * 200).collect();
        let kept = snapshots_to_keep(&revs);
        assert_eq!(&kept[..2], &[200_000, 199_800]);
        assert!(kept.len() < 30, "kept {} of 1000: {kept:?}", kept.len());
        // Every kept distance from the newest grows by at least 1.5×.
        for pair in kept[1..].windows(2) {
            let (near, far) = (200_000 - pair[0], 200_000 - pair[1]);
            assert!(far * 2 >= near * 3, "{near} then {far}");
        }
        // Pruning again as the document grows never needs a deleted one back,
        // and the count stays logarithmic.
        let mut stored = kept;
        for n in 1001..=5000u64 {
            stored.push(n * 200);
            stored = snapshots_to_keep(&stored);
        }
        assert_eq!(stored[0], 1_000_000);
        assert!(stored.len() < 40, "kept {}", stored.len());
    }

    /// Through the storage: a document snapshotted on every op keeps a few
    /// snapshots, and every old revision's text is still right.
    #[test]
    fn storage_prunes_and_old_texts_stay_right() {
        use crate::storage::sqlite::SqliteStorage;
        use crate::storage::{Durability, Storage, StoredOp, WriteItem};
        use ot_core::history::{DocumentHistory, Receipt};
        use ot_core::Operation;

        let dir = tempfile::TempDir::new().unwrap();
        let storage = SqliteStorage::open(dir.path(), Durability::Relaxed).unwrap();
        let mut history = DocumentHistory::new();
        let mut texts = vec![String::new()];
        storage
            .commit(&[WriteItem::CreateDoc { doc: "d".into() }])
            .unwrap();
        for seq in 1..=300u64 {
            let len = history.text().len_chars();
            let op = Operation::insert_at(len, len, &format!("{}", seq % 10)).unwrap();
            let Receipt::Applied { applied, received } =
                history.receive("a", seq, seq - 1, op).unwrap()
            else {
                panic!("not applied");
            };
            texts.push(history.text().to_string());
            storage
                .commit(&[
                    WriteItem::Op {
                        doc: "d".into(),
                        op: StoredOp::from_applied(&applied, received, 0),
                        len_after: history.text().len_chars() as u64,
                    },
                    WriteItem::Snapshot {
                        doc: "d".into(),
                        snapshot: history.snapshot(),
                    },
                ])
                .unwrap();
            storage.ingest().unwrap();
        }
        let conn = rusqlite::Connection::open(storage.path()).unwrap();
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM snapshots WHERE doc = 'd'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!((2..=20).contains(&count), "{count} snapshots kept of 300");
        for (rev, text) in texts.iter().enumerate() {
            assert_eq!(
                storage.text_at("d", rev as u64).unwrap().as_deref(),
                Some(text.as_str())
            );
        }
        assert_eq!(storage.load("d").unwrap().unwrap().snapshot.rev, 300);
    }

    #[test]
    fn small_sets_are_kept() {
        assert_eq!(snapshots_to_keep(&[]), Vec::<u64>::new());
        assert_eq!(snapshots_to_keep(&[5]), vec![5]);
        assert_eq!(snapshots_to_keep(&[3, 9]), vec![9, 3]);
    }
}
