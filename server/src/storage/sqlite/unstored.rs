//! Loading a document while its committed items cannot be ingested (a full
//! disk): the tables plus the items still only in the commit log (held in
//! memory as sealed and pending items).
//!
//! A document reloads from storage after a failed commit; if that load
//! failed too, it would continue without its dedup table. With this, a full
//! disk fails the commits but not the reload.

use ot_core::history::{ClientRecord, DocumentSnapshot, OpHash};

use super::reads::load_from_tables;
use super::{lock, SqliteStorage};
use crate::storage::{LoadedDoc, StorageError, WriteItem};

impl SqliteStorage {
    /// [`Storage::load`](crate::storage::Storage::load) without an ingest:
    /// the tables, then the document's committed items not in them, in
    /// commit order.
    pub(super) fn load_with_unstored(&self, doc: &str) -> Result<Option<LoadedDoc>, StorageError> {
        // Both locks (ingester first) while the tables are read: no ingest
        // can move items from memory into the tables meanwhile.
        let ingester = lock(&self.ingester);
        let writer = lock(&self.writer);
        let items: Vec<WriteItem> = ingester
            .sealed
            .iter()
            .chain(writer.pending.iter())
            .filter(|item| item.doc() == doc)
            .cloned()
            .collect();
        let stored = self.read_tables(|conn| load_from_tables(conn, doc))?;
        drop(writer);
        drop(ingester);
        apply_unstored(doc, stored, items)
    }
}

fn empty() -> LoadedDoc {
    LoadedDoc {
        snapshot: DocumentSnapshot {
            rev: 0,
            text: String::new(),
            clients: Default::default(),
        },
        tail: Vec::new(),
    }
}

/// `stored` (from the tables) with `items` (committed after it) applied.
fn apply_unstored(
    doc: &str,
    mut loaded: Option<LoadedDoc>,
    items: Vec<WriteItem>,
) -> Result<Option<LoadedDoc>, StorageError> {
    for item in items {
        match item {
            WriteItem::CreateDoc { .. } => {
                loaded.get_or_insert_with(empty);
            }
            WriteItem::Op { op, .. } => {
                let l = loaded.get_or_insert_with(empty);
                let last = l.tail.last().map_or(l.snapshot.rev, |op| op.rev);
                if op.rev != last + 1 {
                    return Err(StorageError::Gap {
                        doc: doc.to_owned(),
                        expected: last + 1,
                        found: op.rev,
                    });
                }
                l.tail.push(op.into_applied());
            }
            // The tail from the older snapshot gives the same state; region
            // records are read on their own (`region_records`).
            WriteItem::Snapshot { .. }
            | WriteItem::Region { .. }
            | WriteItem::ConflictCopy { .. }
            | WriteItem::RegionConflict { .. }
            | WriteItem::RegionWaiting { .. } => {}
            WriteItem::ClientKey {
                client_id,
                key_hash,
                ..
            } => {
                let l = loaded.get_or_insert_with(empty);
                // The first binding stays, as in the tables.
                l.snapshot
                    .clients
                    .entry(client_id)
                    .or_insert(ClientRecord {
                        last_seq: 0,
                        last_rev: 0,
                        last_hash: OpHash::default(),
                        key_hash: None,
                    })
                    .key_hash
                    .get_or_insert(key_hash);
            }
            // What follows is the next generation of the id.
            WriteItem::DeleteDoc { .. } => loaded = None,
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::Durability;
    use crate::storage::{Storage, StoredOp};
    use ot_core::history::{DocumentHistory, KeyHash, Receipt};
    use ot_core::Operation;
    use tempfile::TempDir;

    fn typed(h: &mut DocumentHistory, client: &str, seq: u64, text: &str) -> WriteItem {
        let len = h.text().len_chars();
        let op = Operation::insert_at(len, len, text).unwrap();
        match h.receive(client, seq, h.revision(), op).unwrap() {
            Receipt::Applied { applied, received } => WriteItem::Op {
                doc: "d".to_owned(),
                op: StoredOp::from_applied(&applied, received, 1),
                len_after: h.text().len_chars() as u64,
            },
            other => panic!("not applied: {other:?}"),
        }
    }

    #[test]
    fn the_tables_plus_the_unstored_items_load_as_after_an_ingest() {
        let dir = TempDir::new().unwrap();
        let s = SqliteStorage::open(dir.path(), Durability::Fsync).unwrap();
        let mut h = DocumentHistory::new();
        // In the tables.
        s.commit(&[typed(&mut h, "a", 1, "x"), typed(&mut h, "b", 1, "y")])
            .unwrap();
        s.ingest().unwrap();
        // Sealed (an ingest that failed is as if it had not run yet), then pending.
        s.commit(&[typed(&mut h, "a", 2, "z")]).unwrap();
        {
            let mut ingester = lock(&s.ingester);
            let mut writer = lock(&s.writer);
            s.seal(&mut writer, &mut ingester);
        }
        let key = KeyHash([7; 32]);
        s.commit(&[
            WriteItem::ClientKey {
                doc: "d".into(),
                client_id: "c".into(),
                key_hash: key,
            },
            typed(&mut h, "c", 1, "w"),
        ])
        .unwrap();
        s.commit(&[WriteItem::CreateDoc {
            doc: "other".into(),
        }])
        .unwrap();

        let unstored = s.load_with_unstored("d").unwrap().unwrap();
        let history =
            DocumentHistory::from_snapshot(unstored.snapshot.clone(), unstored.tail).unwrap();
        assert_eq!(history.text().to_string(), "xyzw");
        assert_eq!(history.revision(), 4);
        let mut expected = h.snapshot().clients;
        if let Some(record) = expected.get_mut("c") {
            record.key_hash = Some(key);
        }
        assert_eq!(history.snapshot().clients, expected);
        assert!(s.load_with_unstored("other").unwrap().is_some());
        assert!(s.load_with_unstored("none").unwrap().is_none());
        // The same as a load after the ingest.
        let loaded = s.load("d").unwrap().unwrap();
        let after = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(after.snapshot(), history.snapshot());
    }

    #[test]
    fn a_delete_among_the_unstored_items_starts_the_next_generation() {
        let mut h = DocumentHistory::new();
        let items = vec![
            typed(&mut h, "a", 1, "old"),
            WriteItem::DeleteDoc {
                doc: "d".into(),
                epoch: 5,
            },
        ];
        assert!(apply_unstored("d", None, items).unwrap().is_none());
        let mut h = DocumentHistory::new();
        let mut next = DocumentHistory::new();
        let items = vec![
            typed(&mut h, "a", 1, "old"),
            WriteItem::DeleteDoc {
                doc: "d".into(),
                epoch: 5,
            },
            typed(&mut next, "a", 1, "new"),
        ];
        let loaded = apply_unstored("d", None, items).unwrap().unwrap();
        assert_eq!(loaded.tail.len(), 1);
        // A gap is refused, never papered over.
        let mut h = DocumentHistory::new();
        let first = typed(&mut h, "a", 1, "1");
        let _second = typed(&mut h, "a", 2, "2");
        let third = typed(&mut h, "a", 3, "3");
        assert!(matches!(
            apply_unstored("d", None, vec![first, third]),
            Err(StorageError::Gap {
                expected: 2,
                found: 3,
                ..
            })
        ));
    }
}
