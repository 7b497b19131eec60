//! Tests of [`SqliteStorage`]: round trips, continuity, the commit log and
//! its recovery, ingests, the schema migration, corrupt rows, query plans.

use super::reads::*;
use super::schema::*;
use super::seq_revs::*;
use super::*;
use crate::storage::oplog::LOG_FILES;
use crate::storage::StoredOrigin;
use ot_core::history::{DocumentHistory, DocumentSnapshot};
use ot_core::Operation;
use rusqlite::{params, OptionalExtension};
use tempfile::TempDir;

use crate::storage::conformance::{apply, ins};

/// A history of `doc` with 6 ops (two of them concurrent) and its items.
fn sample(doc: &str) -> (DocumentHistory, Vec<WriteItem>) {
    let mut h = DocumentHistory::new();
    let items = vec![
        apply(&mut h, doc, "a", 1, 0, ins(0, 0, "hello")),
        apply(&mut h, doc, "a", 2, 1, ins(5, 5, " world")),
        // b only saw revision 1: transformed past rev 2.
        apply(&mut h, doc, "b", 1, 1, ins(5, 0, "¡")),
        apply(&mut h, doc, "a", 3, 3, ins(12, 12, "!")),
        // c saw nothing: transformed past revs 1..=4.
        apply(&mut h, doc, "c", 1, 0, ins(0, 0, "🙂")),
        apply(
            &mut h,
            doc,
            "b",
            2,
            5,
            Operation::delete_range(14, 1, 1).unwrap(),
        ),
    ];
    (h, items)
}

fn stored(items: &[WriteItem]) -> Vec<StoredOp> {
    items
        .iter()
        .filter_map(|i| match i {
            WriteItem::Op { op, .. } => Some(op.clone()),
            _ => None,
        })
        .collect()
}

fn texts(items: &[WriteItem]) -> Vec<String> {
    let mut text = String::new();
    let mut out = vec![text.clone()];
    for op in stored(items) {
        text = op.applied.apply(&text).unwrap();
        out.push(text.clone());
    }
    out
}

fn open(dir: &TempDir, durability: Durability) -> SqliteStorage {
    SqliteStorage::open(dir.path(), durability).unwrap()
}

fn create(doc: &str) -> WriteItem {
    WriteItem::CreateDoc {
        doc: doc.to_owned(),
    }
}

#[test]
fn round_trip_ops_snapshots_and_load() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    assert_eq!(s.load("d").unwrap(), None);
    assert!(!s.exists("d").unwrap());
    assert_eq!(s.last_rev("d").unwrap(), 0);

    let (mut h, items) = sample("d");
    let mut batch = vec![create("d")];
    batch.extend(items[..3].iter().cloned());
    s.commit(&batch).unwrap();
    // A document with ops and no snapshot loads from the empty snapshot.
    let loaded = s.load("d").unwrap().unwrap();
    assert_eq!(loaded.snapshot.rev, 0);
    assert_eq!(loaded.tail.len(), 3);
    assert_eq!(loaded.rev(), 3);

    // Ops and a snapshot in one commit: the snapshot after rev 4.
    let mut h4 = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
    let WriteItem::Op { op: op4, .. } = &items[3] else {
        panic!()
    };
    h4.append_stored(op4.to_applied()).unwrap();
    let snap4 = h4.snapshot();
    let mut batch = vec![items[3].clone()];
    batch.push(WriteItem::Snapshot {
        doc: "d".into(),
        snapshot: snap4.clone(),
    });
    batch.extend(items[4..].iter().cloned());
    s.commit(&batch).unwrap();

    let loaded = s.load("d").unwrap().unwrap();
    assert_eq!(loaded.snapshot, snap4);
    let tail_revs: Vec<u64> = loaded.tail.iter().map(|a| a.rev).collect();
    assert_eq!(tail_revs, vec![5, 6]);
    assert_eq!(loaded.tail, h.retained_ops()[4..].to_vec());
    let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
    assert_eq!(rebuilt.text().to_string(), h.text().to_string());
    assert_eq!(rebuilt.revision(), 6);
    assert_eq!(rebuilt.snapshot(), h.snapshot());

    // Every op reads back exactly as written.
    assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
    assert_eq!(s.ops("d", 2, 2).unwrap(), stored(&items)[2..4].to_vec());
    assert!(s.ops("d", 6, 10).unwrap().is_empty());
    assert!(s.ops("nope", 0, 10).unwrap().is_empty());
    assert!(s.exists("d").unwrap());
    assert_eq!(s.last_rev("d").unwrap(), 6);

    // A newer snapshot wins; the DocumentHistory keeps working from it.
    h.trim_to(0);
    s.commit(&[WriteItem::Snapshot {
        doc: "d".into(),
        snapshot: h.snapshot(),
    }])
    .unwrap();
    let loaded = s.load("d").unwrap().unwrap();
    assert_eq!(loaded.snapshot.rev, 6);
    assert!(loaded.tail.is_empty());
}

#[test]
fn created_document_without_ops() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    s.commit(&[create("empty"), create("empty")]).unwrap();
    assert!(s.exists("empty").unwrap());
    let loaded = s.load("empty").unwrap().unwrap();
    assert_eq!(loaded.snapshot.rev, 0);
    assert_eq!(loaded.snapshot.text, "");
    assert!(loaded.tail.is_empty());
    assert_eq!(s.text_at("empty", 0).unwrap().as_deref(), Some(""));
    assert_eq!(s.text_at("empty", 1).unwrap(), None);
    // An empty commit is fine and writes nothing.
    s.commit(&[]).unwrap();
}

#[test]
fn find_seq_finds_each_op() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    let (_, items) = sample("d");
    s.commit(&items).unwrap();
    for op in stored(&items) {
        assert_eq!(
            s.find_seq("d", &op.client_id, op.seq).unwrap(),
            Some((op.rev, op.hash))
        );
        assert_eq!(op.hash, OpHash::of(&op.received));
    }
    assert_eq!(s.find_seq("d", "a", 4).unwrap(), None);
    assert_eq!(s.find_seq("d", "zz", 1).unwrap(), None);
    assert_eq!(s.find_seq("other", "a", 1).unwrap(), None);
}

/// `count` ops by clients "a" and "b" in turn (each op appends one
/// char, based on the latest revision), so both clients' seqs span
/// several `seq_revs` blocks.
fn two_writers(doc: &str, count: u64) -> Vec<WriteItem> {
    let mut h = DocumentHistory::new();
    (0..count)
        .map(|i| {
            let client = if i % 2 == 0 { "a" } else { "b" };
            let len = h.text().len_chars();
            apply(&mut h, doc, client, i / 2 + 1, i, ins(len, len, "x"))
        })
        .collect()
}

fn assert_every_seq_found(s: &SqliteStorage, doc: &str, items: &[WriteItem]) {
    for op in stored(items) {
        assert_eq!(
            s.find_seq(doc, &op.client_id, op.seq).unwrap(),
            Some((op.rev, op.hash)),
            "client {} seq {}",
            op.client_id,
            op.seq
        );
    }
}

#[test]
fn find_seq_across_blocks_commits_ingests_and_reopens() {
    let dir = TempDir::new().unwrap();
    let items = two_writers("d", 300); // seqs 1..=150 each: blocks 0, 1 and 2
    let s = open(&dir, Durability::Fsync);
    // Uneven commits, some ingested on their own, so one block's slots
    // arrive over several ingests.
    for chunk in items.chunks(37) {
        s.commit(chunk).unwrap();
        if chunk.len() % 2 == 1 {
            s.ingest().unwrap();
        }
    }
    assert_every_seq_found(&s, "d", &items);
    for (client, seq) in [("a", 0), ("a", 151), ("b", 64 * 5), ("c", 1)] {
        assert_eq!(
            s.find_seq("d", client, seq).unwrap(),
            None,
            "{client} {seq}"
        );
    }
    assert_eq!(s.find_seq("other", "a", 1).unwrap(), None);
    drop(s);
    let s = open(&dir, Durability::Fsync);
    assert_every_seq_found(&s, "d", &items);
}

#[test]
fn a_version_1_database_is_migrated_on_open() {
    let dir = TempDir::new().unwrap();
    let items = two_writers("d", 200);
    let (_, other) = sample("e");
    let s = open(&dir, Durability::Fsync);
    s.commit(&items).unwrap();
    s.commit(&other).unwrap();
    drop(s);
    // Turn it into what version 1 left: the index, no seq_revs rows.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "DELETE FROM seq_revs;
         CREATE INDEX ops_by_seq ON ops (doc, client_id, seq);
         UPDATE meta SET value = '1' WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(conn);

    let s = open(&dir, Durability::Fsync);
    assert_every_seq_found(&s, "d", &items);
    assert_every_seq_found(&s, "e", &other);
    let conn = s.open_reader().unwrap();
    let version = meta_get(&conn, "schema_version").unwrap();
    assert_eq!(version.as_deref(), Some(SCHEMA_VERSION));
    let index: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE name = 'ops_by_seq'",
            [],
            |row| row.get(0),
        )
        .optional()
        .unwrap();
    assert_eq!(index, None);
    // Ops after the migration are found as well.
    drop(conn);
    let more = two_writers("f", 70);
    s.commit(&more).unwrap();
    assert_every_seq_found(&s, "f", &more);
}

#[test]
fn an_unknown_schema_version_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(open(&dir, Durability::Fsync));
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute(
        "UPDATE meta SET value = '3' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let Err(err) = SqliteStorage::open(dir.path(), Durability::Fsync) else {
        panic!("version 3 must be refused");
    };
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("schema version 3"), "{err}");
}

#[test]
fn a_seq_revs_row_that_disagrees_with_the_op_log_is_reported() {
    let dir = TempDir::new().unwrap();
    let (_, items) = sample("d");
    let s = open(&dir, Durability::Fsync);
    s.commit(&items).unwrap();
    s.ingest().unwrap();
    // Point a's seq 1 at revision 3 (b's op).
    let mut revs = Vec::new();
    set_seq_slot(&mut revs, 1, 3);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    put_seq_revs(&conn, "d", "a", 0, &revs).unwrap();
    drop(conn);
    let err = s.find_seq("d", "a", 1).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
}

#[test]
fn seq_slots_round_trip_and_grow() {
    let mut revs = Vec::new();
    assert_eq!(seq_slot(&revs, 5), None);
    set_seq_slot(&mut revs, 64 + 3, 42);
    assert_eq!(revs.len(), 4 * SLOT_BYTES);
    assert_eq!(seq_slot(&revs, 3), Some(42));
    assert_eq!(seq_slot(&revs, 2), None);
    assert_eq!(seq_slot(&revs, 4), None);
    set_seq_slot(&mut revs, 63, u64::MAX);
    assert_eq!(revs.len(), 64 * SLOT_BYTES);
    assert_eq!(seq_slot(&revs, 63), Some(u64::MAX));
    assert_eq!(seq_slot(&revs, 3), Some(42));
}

#[test]
fn text_at_every_revision() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    let (_, items) = sample("d");
    let expected = texts(&items);
    assert_eq!(s.text_at("d", 0).unwrap(), None);
    s.commit(&items[..2]).unwrap();
    // Snapshot at 2 (the dedup table does not matter for text_at).
    s.commit(&[WriteItem::Snapshot {
        doc: "d".into(),
        snapshot: DocumentSnapshot {
            rev: 2,
            text: expected[2].clone(),
            clients: HashMap::new(),
        },
    }])
    .unwrap();
    s.commit(&items[2..]).unwrap();
    s.commit(&[WriteItem::Snapshot {
        doc: "d".into(),
        snapshot: DocumentSnapshot {
            rev: 5,
            text: expected[5].clone(),
            clients: HashMap::new(),
        },
    }])
    .unwrap();
    for (rev, text) in expected.iter().enumerate() {
        assert_eq!(
            s.text_at("d", rev as u64).unwrap().as_deref(),
            Some(text.as_str()),
            "rev {rev}"
        );
    }
    assert_eq!(expected[6], "🙂hello world!");
    assert_eq!(s.text_at("d", 7).unwrap(), None);
    assert_eq!(s.text_at("unknown", 0).unwrap(), None);
}

#[test]
fn list_and_conflicts() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    let (hb, items_b) = sample("b");
    let mut ha = DocumentHistory::new();
    let items_a = vec![apply(&mut ha, "a", "x", 1, 0, ins(0, 0, "héllo"))];
    s.commit(&[create("c")]).unwrap();
    s.commit(&items_b).unwrap();
    s.commit(&items_a).unwrap();
    let list = s.list().unwrap();
    assert_eq!(
        list,
        vec![
            DocSummary {
                id: "a".into(),
                rev: 1,
                len: 5
            },
            DocSummary {
                id: "b".into(),
                rev: 6,
                len: hb.text().len_chars() as u64
            },
            DocSummary {
                id: "c".into(),
                rev: 0,
                len: 0
            },
        ]
    );
    let conflicts = s.conflicts("b", 0, 10).unwrap();
    let revs: Vec<u64> = conflicts.iter().map(|o| o.rev).collect();
    assert_eq!(revs, vec![3, 5]);
    assert!(conflicts.iter().all(StoredOp::is_concurrent));
    assert_eq!(conflicts[1].received, ins(0, 0, "🙂"));
    assert_ne!(conflicts[1].received, conflicts[1].applied);
    assert_eq!(s.conflicts("b", 3, 10).unwrap()[0].rev, 5);
    assert_eq!(s.conflicts("b", 0, 1).unwrap().len(), 1);
    assert!(s.conflicts("a", 0, 10).unwrap().is_empty());
}

#[test]
fn gap_rejection_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    let (_, items) = sample("d");
    let (_, other) = sample("e");
    s.commit(&items[..2]).unwrap();
    let before = s.list().unwrap();

    // e's first op is fine, then d skips revision 3: nothing of the batch is written.
    let batch = vec![create("new"), other[0].clone(), items[3].clone()];
    match s.commit(&batch) {
        Err(StorageError::Gap {
            doc,
            expected,
            found,
        }) => assert_eq!((doc.as_str(), expected, found), ("d", 3, 4)),
        other => panic!("expected a gap, got {other:?}"),
    }
    // A repeated revision is a gap too.
    assert!(matches!(
        s.commit(&[items[1].clone()]),
        Err(StorageError::Gap {
            expected: 3,
            found: 2,
            ..
        })
    ));
    // So is a log that does not start at 1.
    assert!(matches!(
        s.commit(&[other[1].clone()]),
        Err(StorageError::Gap {
            expected: 1,
            found: 2,
            ..
        })
    ));
    // A snapshot newer than the log is refused.
    assert!(matches!(
        s.commit(&[WriteItem::Snapshot {
            doc: "d".into(),
            snapshot: DocumentSnapshot {
                rev: 3,
                text: String::new(),
                clients: HashMap::new()
            }
        }]),
        Err(StorageError::SnapshotAhead {
            snapshot_rev: 3,
            last_rev: 2,
            ..
        })
    ));
    assert_eq!(s.list().unwrap(), before);
    assert!(!s.exists("new").unwrap());
    assert!(!s.exists("e").unwrap());
    assert_eq!(s.ops("d", 0, 10).unwrap(), stored(&items[..2]));
    // The log continues normally afterwards.
    s.commit(&items[2..]).unwrap();
    s.commit(&other).unwrap();
    assert_eq!(s.last_rev("d").unwrap(), 6);
    assert_eq!(s.last_rev("e").unwrap(), 6);
}

#[test]
fn reopen_after_drop_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let (h, items) = sample("d");
    let snapshot;
    {
        let s = open(&dir, Durability::Relaxed);
        s.commit(&items[..4]).unwrap();
        let loaded = s.load("d").unwrap().unwrap();
        snapshot = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail)
            .unwrap()
            .snapshot();
        s.commit(&[WriteItem::Snapshot {
            doc: "d".into(),
            snapshot: snapshot.clone(),
        }])
        .unwrap();
        s.commit(&items[4..]).unwrap();
        s.commit(&[create("other")]).unwrap();
    }
    let s = open(&dir, Durability::Fsync);
    assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
    let loaded = s.load("d").unwrap().unwrap();
    assert_eq!(loaded.snapshot, snapshot);
    let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
    assert_eq!(rebuilt.snapshot(), h.snapshot());
    assert!(s.exists("other").unwrap());
    // The reopened writer knows where the log is.
    assert!(matches!(
        s.commit(&[items[5].clone()]),
        Err(StorageError::Gap { expected: 7, .. })
    ));
}

#[test]
fn epoch_changes_only_after_unclean_relaxed_runs() {
    let dir = TempDir::new().unwrap();
    let (_, items) = sample("d");
    let epoch = {
        let s = open(&dir, Durability::Relaxed);
        s.commit(&items[..1]).unwrap();
        s.epoch()
    }; // dropped without close_clean: unclean
    assert!(epoch > 0);
    let s = open(&dir, Durability::Relaxed);
    assert_eq!(s.epoch(), epoch + 1);
    s.commit(&items[1..2]).unwrap();
    s.close_clean().unwrap();
    drop(s);
    // Clean shutdown: same epoch.
    let s = open(&dir, Durability::Relaxed);
    assert_eq!(s.epoch(), epoch + 1);
    s.close_clean().unwrap();
    // A commit after close_clean makes the run unclean again.
    s.commit(&items[2..3]).unwrap();
    drop(s);
    let s = open(&dir, Durability::Relaxed);
    assert_eq!(s.epoch(), epoch + 2);
    drop(s); // unclean, relaxed
             // Opening in fsync mode after an unclean relaxed run still changes it...
    let s = open(&dir, Durability::Fsync);
    assert_eq!(s.epoch(), epoch + 3);
    drop(s); // unclean, but fsync
             // ...but unclean fsync runs never do.
    for _ in 0..2 {
        let s = open(&dir, Durability::Fsync);
        assert_eq!(s.epoch(), epoch + 3);
    }
    let s = open(&dir, Durability::Fsync);
    s.close_clean().unwrap();
    drop(s);
    assert_eq!(open(&dir, Durability::Relaxed).epoch(), epoch + 3);
    assert_eq!(open(&dir, Durability::Fsync).epoch(), epoch + 4);
    assert_eq!(open(&dir, Durability::Fsync).epoch(), epoch + 4);
    assert_eq!(open(&dir, Durability::Fsync).last_rev("d").unwrap(), 3);
}

#[test]
fn commits_are_recovered_from_the_commit_log() {
    let (h, items) = sample("d");
    for durability in [Durability::Fsync, Durability::Relaxed] {
        let dir = TempDir::new().unwrap();
        {
            let s = open(&dir, durability);
            s.commit(&[create("empty")]).unwrap();
            s.commit(&items[..4]).unwrap();
            s.commit(&items[4..]).unwrap();
            assert_eq!(s.backlog(), 7);
        } // dropped before any read or ingest: only the log has them
        let s = open(&dir, durability);
        assert_eq!(s.backlog(), 0);
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
        assert!(s.exists("empty").unwrap());
        let loaded = s.load("d").unwrap().unwrap();
        let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(rebuilt.snapshot(), h.snapshot());
        // The log continues where the recovered commits ended.
        assert!(matches!(
            s.commit(&[items[5].clone()]),
            Err(StorageError::Gap { expected: 7, .. })
        ));
    }
}

#[test]
fn commits_go_on_during_an_ingest_and_both_logs_are_recovered_in_order() {
    let (h, items) = sample("d");
    for durability in [Durability::Fsync, Durability::Relaxed] {
        let dir = TempDir::new().unwrap();
        {
            let s = open(&dir, durability);
            s.commit(&items[..2]).unwrap();
            s.seal(&mut lock(&s.writer), &mut lock(&s.ingester));
            assert_eq!(s.backlog(), 2);
            // An ingest holds the ingester while it writes: commits do
            // not need it.
            let ingesting = lock(&s.ingester);
            s.commit(&items[2..4]).unwrap();
            assert!(matches!(s.commit_unless_busy(&items[4..5]), Some(Ok(()))));
            drop(ingesting);
            assert_eq!(s.backlog(), 5);
            assert_eq!(s.last_rev("d").unwrap(), 5);
            // A second seal while the first sealed items are not yet
            // written must not lose or reorder them: it ingests in place.
            assert_eq!(s.seal_and_ingest().unwrap(), 5);
            s.commit(&items[5..]).unwrap();
            s.seal(&mut lock(&s.writer), &mut lock(&s.ingester));
        } // a crash between the seal and the ingest
        let s = open(&dir, durability);
        assert_eq!(s.backlog(), 0);
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
        let loaded = s.load("d").unwrap().unwrap();
        let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(rebuilt.snapshot(), h.snapshot());
    }

    // Sealed and pending items both unwritten at the crash: the sealed
    // (older) log is replayed first, whichever file it is.
    for seals_before in 0..3 {
        let dir = TempDir::new().unwrap();
        {
            let s = open(&dir, Durability::Fsync);
            s.commit(&[create("other")]).unwrap();
            for _ in 0..seals_before {
                // Moves the active log to the other file and back.
                s.seal_and_ingest().unwrap();
                s.commit(&[create("other")]).unwrap();
            }
            s.commit(&items[..3]).unwrap();
            s.seal(&mut lock(&s.writer), &mut lock(&s.ingester));
            s.commit(&items[3..]).unwrap();
        }
        let s = open(&dir, Durability::Fsync);
        assert_eq!(
            s.ops("d", 0, 100).unwrap(),
            stored(&items),
            "{seals_before}"
        );
    }
}

#[test]
fn a_read_waiting_for_an_ingest_does_not_hold_up_commits() {
    let dir = TempDir::new().unwrap();
    let s = std::sync::Arc::new(open(&dir, Durability::Fsync));
    let (_, items) = sample("d");
    s.commit(&items[..2]).unwrap();
    let ingesting = s.pause_ingests();
    let reader = {
        let s = std::sync::Arc::clone(&s);
        std::thread::spawn(move || s.ops("d", 0, 100))
    };
    // The reader is waiting for the "running ingest"; commits go on (the
    // commit side's lock is free: it would be busy otherwise).
    std::thread::sleep(Duration::from_millis(50));
    assert!(!reader.is_finished());
    assert!(matches!(s.commit_unless_busy(&items[2..4]), Some(Ok(()))));
    s.commit(&items[4..]).unwrap();
    drop(ingesting);
    let read = reader.join().unwrap().unwrap();
    // It sees at least what was committed before it began.
    assert!(read.len() >= 2 && read[..] == stored(&items)[..read.len()]);
    assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
}

#[test]
fn recovering_items_already_stored_skips_them_and_detects_a_mismatch() {
    let dir = TempDir::new().unwrap();
    let log_path = dir.path().join(LOG_FILES[0]);
    let (_, items) = sample("d");
    let s = open(&dir, Durability::Fsync);
    s.commit(&items[..3]).unwrap();
    let log_before_ingest = std::fs::read(&log_path).unwrap();
    assert_eq!(s.ingest().unwrap(), 3);
    drop(s);
    // As if a crash had come between the ingest and the log's reset: the
    // log's items are stored already and are skipped.
    std::fs::write(&log_path, &log_before_ingest).unwrap();
    let s = open(&dir, Durability::Fsync);
    assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items[..3]));
    s.commit(&items[3..]).unwrap();
    assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
    drop(s);

    // A log whose op differs from the stored op at the same revision is
    // refused rather than silently dropped.
    let (_, other) = {
        let mut h = DocumentHistory::new();
        let item = apply(&mut h, "d", "z", 1, 0, ins(0, 0, "HELLO"));
        (h, vec![item])
    };
    let other_dir = TempDir::new().unwrap();
    {
        let o = open(&other_dir, Durability::Fsync);
        o.commit(&other).unwrap();
    }
    let log = std::fs::read(other_dir.path().join(LOG_FILES[0])).unwrap();
    std::fs::write(&log_path, &log).unwrap();
    match SqliteStorage::open(dir.path(), Durability::Fsync) {
        Err(StorageError::Corrupt(message)) => {
            assert!(message.contains("different ops"), "{message}")
        }
        other => panic!("expected a corrupt error, got {other:?}"),
    }
}

#[test]
fn try_commit_never_waits_for_the_writer() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Relaxed);
    let (_, items) = sample("d");
    let held = lock(&s.writer);
    assert!(s.try_commit(&items[..1]).is_none());
    drop(held);
    assert!(matches!(s.try_commit(&items[..1]), Some(Ok(()))));
    assert_eq!(s.backlog(), 1);
    // With fsync durability a commit is never cheap.
    let fsync_dir = TempDir::new().unwrap();
    let fsynced = open(&fsync_dir, Durability::Fsync);
    assert!(fsynced.try_commit(&items[..1]).is_none());
    assert_eq!(fsynced.last_rev("d").unwrap(), 0);
    // Continuity is checked as for `commit`.
    assert!(matches!(
        s.try_commit(&items[2..3]),
        Some(Err(StorageError::Gap { expected: 2, .. }))
    ));
    assert!(matches!(s.try_commit(&items[1..]), Some(Ok(()))));
    assert_eq!(s.last_rev("d").unwrap(), 6);
    assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&items));
    assert_eq!(s.backlog(), 0); // the read ingested
}

#[test]
fn corrupt_rows_are_errors_not_panics() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    let (_, items) = sample("d");
    s.commit(&items).unwrap();
    // Write the commit log's items to the tables, then damage them there.
    assert_eq!(s.ingest().unwrap(), items.len());
    let raw = Connection::open(s.path()).unwrap();
    raw.execute(
        "UPDATE ops SET applied = '[1,' WHERE doc = 'd' AND rev = 2",
        [],
    )
    .unwrap();
    raw.execute(
        "UPDATE ops SET op_hash = 'xyz' WHERE doc = 'd' AND rev = 3",
        [],
    )
    .unwrap();
    assert!(matches!(s.load("d"), Err(StorageError::Corrupt(_))));
    assert!(matches!(s.ops("d", 0, 10), Err(StorageError::Corrupt(_))));
    assert!(matches!(s.text_at("d", 4), Err(StorageError::Corrupt(_))));
    assert!(matches!(
        s.find_seq("d", "b", 1),
        Err(StorageError::Corrupt(_))
    ));
    // Unaffected revisions still read.
    assert_eq!(s.text_at("d", 1).unwrap().as_deref(), Some("hello"));
    raw.execute("DELETE FROM ops WHERE doc = 'd' AND rev = 5", [])
        .unwrap();
    raw.execute(
        "UPDATE ops SET applied = '[5]' WHERE doc = 'd' AND rev = 2",
        [],
    )
    .unwrap();
    let e = s.text_at("d", 6).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt(_)), "{e}");
    // A bad dedup table in a snapshot.
    let (h, items) = sample("s");
    s.commit(&items).unwrap();
    s.commit(&[WriteItem::Snapshot {
        doc: "s".into(),
        snapshot: h.snapshot(),
    }])
    .unwrap();
    assert!(s.load("s").unwrap().is_some()); // a read ingests too
    raw.execute("UPDATE snapshots SET clients = 'nope' WHERE doc = 's'", [])
        .unwrap();
    assert!(matches!(s.load("s"), Err(StorageError::Corrupt(_))));
}

#[test]
fn durability_parses() {
    assert_eq!("fsync".parse::<Durability>(), Ok(Durability::Fsync));
    assert_eq!(" Relaxed".parse::<Durability>(), Ok(Durability::Relaxed));
    let err = "sometimes".parse::<Durability>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown durability \"sometimes\": expected \"fsync\" or \"relaxed\""
    );
    assert_eq!(Durability::Relaxed.to_string(), "relaxed");
}

#[test]
fn readers_work_alongside_the_writer() {
    let dir = TempDir::new().unwrap();
    let s = std::sync::Arc::new(open(&dir, Durability::Relaxed));
    let mut h = DocumentHistory::new();
    let items: Vec<WriteItem> = (0..200)
        .map(|i| {
            let len = h.text().len_chars();
            apply(&mut h, "d", "a", i + 1, i, ins(len, len, "x"))
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let s = std::sync::Arc::clone(&s);
            std::thread::spawn(move || {
                let mut last = 0;
                while last < 200 {
                    let rev = s.last_rev("d").unwrap();
                    assert!(rev >= last);
                    last = rev;
                    if let Some(text) = s.text_at("d", rev).unwrap() {
                        assert_eq!(text.len() as u64, rev);
                    }
                }
            })
        })
        .collect();
    for item in items {
        s.commit(&[item]).unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    assert!(lock(&s.readers).len() <= MAX_IDLE_READERS);
}

mod plan_tests {
    use super::*;
    use tempfile::TempDir;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(params!["d", 0, 10], |row| row.get::<_, String>(3))
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn queries_use_their_indexes() {
        let dir = TempDir::new().unwrap();
        let s = SqliteStorage::open(dir.path(), Durability::Fsync).unwrap();
        let conn = s.open_reader().unwrap();
        let conflicts = plan(&conn, SQL_CONFLICTS_AFTER);
        assert!(conflicts.contains("ops_conflicts"), "{conflicts}");
        let by_seq = plan(&conn, SQL_SEQ_REVS);
        assert!(by_seq.contains("PRIMARY KEY"), "{by_seq}");
        let after = plan(&conn, SQL_OPS_AFTER);
        assert!(after.contains("PRIMARY KEY"), "{after}");
    }
}

#[test]
fn key_bindings_survive_a_reopen_and_the_first_one_stays() {
    use ot_core::history::KeyHash;
    let dir = TempDir::new().unwrap();
    let (_, items) = sample("d");
    let bind = |client: &str, byte: u8| WriteItem::ClientKey {
        doc: "d".into(),
        client_id: client.into(),
        key_hash: KeyHash([byte; 32]),
    };
    {
        let s = open(&dir, Durability::Relaxed);
        // Bound before its first op, and an id with no op at all.
        let mut batch = vec![bind("a", 1), bind("nobody", 3)];
        batch.extend(items[..2].iter().cloned());
        s.commit(&batch).unwrap();
        // A second binding of the same id changes nothing.
        s.commit(&[bind("a", 2)]).unwrap();
        let loaded = s.load("d").unwrap().unwrap();
        let h = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(h.key_of("a"), Some(KeyHash([1; 32])));
        // Dropped without ingesting: the reopen recovers from the commit log.
    }
    let s = open(&dir, Durability::Fsync);
    let loaded = s.load("d").unwrap().unwrap();
    let h = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
    assert_eq!(h.key_of("a"), Some(KeyHash([1; 32])));
    assert_eq!(h.key_of("nobody"), Some(KeyHash([3; 32])));
    assert_eq!(h.last_seq("nobody"), 0);
    assert_eq!(h.key_of("b"), None);
    // Nothing the HTTP API serves carries a key hash.
    let ops = serde_json::to_string(&s.ops("d", 0, 100).unwrap()).unwrap();
    assert!(!ops.contains(&KeyHash([1; 32]).to_hex()));
}

/// `doc`'s second generation: one op "new" by client "z".
fn second_generation(doc: &str) -> (DocumentHistory, Vec<WriteItem>) {
    let mut h = DocumentHistory::new();
    let items = vec![create(doc), apply(&mut h, doc, "z", 1, 0, ins(0, 0, "new"))];
    (h, items)
}

fn delete(doc: &str, epoch: u64) -> WriteItem {
    WriteItem::DeleteDoc {
        doc: doc.to_owned(),
        epoch,
    }
}

/// Every row of `doc` in the per-document tables.
fn rows_of(s: &SqliteStorage, doc: &str) -> i64 {
    let conn = rusqlite::Connection::open(s.path()).unwrap();
    [
        "SELECT COUNT(*) FROM docs WHERE id = ?1",
        "SELECT COUNT(*) FROM ops WHERE doc = ?1",
        "SELECT COUNT(*) FROM seq_revs WHERE doc = ?1",
        "SELECT COUNT(*) FROM snapshots WHERE doc = ?1",
        "SELECT COUNT(*) FROM client_keys WHERE doc = ?1",
    ]
    .iter()
    .map(|sql| {
        conn.query_row(sql, [doc], |row| row.get::<_, i64>(0))
            .unwrap()
    })
    .sum()
}

#[test]
fn a_delete_removes_the_items_before_it_and_the_items_after_it_are_the_next_generation() {
    let (h, old) = sample("d");
    let (new_h, new) = second_generation("d");
    let (_, other) = sample("other");
    // Each split: what is ingested before the delete, what is committed
    // with it (pending), and in the same commit or not.
    for split in [0, 3, old.len()] {
        let dir = TempDir::new().unwrap();
        let s = open(&dir, Durability::Relaxed);
        s.commit(&other).unwrap();
        s.commit(&[create("d")]).unwrap();
        s.commit(&old[..split]).unwrap();
        s.commit(&[WriteItem::ClientKey {
            doc: "d".into(),
            client_id: "a".into(),
            key_hash: ot_core::history::KeyHash([7; 32]),
        }])
        .unwrap();
        s.ingest().unwrap();
        let mut batch = old[split..].to_vec();
        batch.push(WriteItem::Snapshot {
            doc: "d".into(),
            snapshot: h.snapshot(),
        });
        batch.push(delete("d", 42));
        batch.extend(new.iter().cloned());
        // Continuity counts the delete: the new generation starts at 1.
        s.commit(&batch).unwrap();
        assert_eq!(s.last_rev("d").unwrap(), 1);
        assert_eq!(s.deleted_epoch("d").unwrap(), Some(42));
        let loaded = s.load("d").unwrap().unwrap();
        let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(rebuilt.snapshot(), new_h.snapshot(), "split {split}");
        assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&new));
        assert_eq!(s.find_seq("d", "a", 1).unwrap(), None);
        assert_eq!(s.conflicts("d", 0, 100).unwrap(), vec![]);
        assert_eq!(s.text_at("d", 1).unwrap().as_deref(), Some("new"));
        // The other document is untouched.
        assert_eq!(s.ops("other", 0, 100).unwrap(), stored(&other));
    }
}

#[test]
fn a_deleted_document_is_gone_and_stays_gone_after_a_crash() {
    let (_, old) = sample("d");
    let dir = TempDir::new().unwrap();
    {
        let s = open(&dir, Durability::Relaxed);
        s.commit(&[create("d")]).unwrap();
        s.commit(&old).unwrap();
        s.ingest().unwrap();
        s.commit(&[delete("d", 5)]).unwrap();
        // Rejected: the next generation starts at revision 1.
        assert!(matches!(
            s.commit(&[old[1].clone()]),
            Err(StorageError::Gap { expected: 1, .. })
        ));
    } // dropped before the delete was ingested: only the log has it
    let s = open(&dir, Durability::Relaxed);
    assert!(!s.exists("d").unwrap());
    assert_eq!(s.load("d").unwrap(), None);
    assert_eq!(rows_of(&s, "d"), 0);
    assert_eq!(s.deleted_epoch("d").unwrap(), Some(5));
    assert_eq!(s.last_rev("d").unwrap(), 0);
    assert!(s.list().unwrap().iter().all(|d| d.id != "d"));
}

#[test]
fn recovering_a_stored_delete_keeps_the_next_generation() {
    // The tables hold both generations' outcome (the ingest happened, the
    // log reset did not): replaying the log changes nothing.
    let (_, old) = sample("d");
    let (new_h, new) = second_generation("d");
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Relaxed);
    let mut items = vec![create("d")];
    items.extend(old.iter().cloned());
    items.push(delete("d", 9));
    items.extend(new.iter().cloned());
    s.commit(&items).unwrap();
    s.ingest().unwrap();
    let mut conn = rusqlite::Connection::open(s.path()).unwrap();
    super::ingest::write_items(&mut conn, &items, true, None).unwrap();
    let loaded = s.load("d").unwrap().unwrap();
    let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
    assert_eq!(rebuilt.snapshot(), new_h.snapshot());
    assert_eq!(s.ops("d", 0, 100).unwrap(), stored(&new));
}

#[test]
fn an_unclean_restart_moves_the_epoch_past_every_deleted_epoch() {
    let dir = TempDir::new().unwrap();
    let epoch = {
        let s = open(&dir, Durability::Relaxed);
        let e = s.epoch();
        s.commit(&[create("d"), delete("d", e + 10)]).unwrap();
        e
    };
    let s = open(&dir, Durability::Relaxed);
    // The re-created "d" showed deleted + 1 = e + 11: the new storage epoch
    // is above it.
    assert_eq!(s.epoch(), epoch + 12);
}

/// The backlog of committed items waiting for an ingest is measured in
/// bytes too (the commit queue bounds it): it grows with each commit by
/// about the items' size, moves with a seal, and is zero after an ingest.
#[test]
fn the_backlog_is_measured_in_bytes() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Relaxed);
    assert_eq!(s.backlog_bytes(), 0);
    let mut h = DocumentHistory::new();
    let big = "é".repeat(100_000);
    s.commit(&[create("d"), apply(&mut h, "d", "a", 1, 0, ins(0, 0, &big))])
        .unwrap();
    let one = s.backlog_bytes();
    // The op as received and as applied: 2 × 200,000 bytes, plus a little.
    assert!((400_000..410_000).contains(&one), "{one}");
    s.commit(&[apply(&mut h, "d", "a", 2, 1, ins(100_000, 0, &big))])
        .unwrap();
    assert!(s.backlog_bytes() >= 2 * 400_000);
    assert_eq!(s.seal_and_ingest().unwrap(), 3);
    assert_eq!((s.backlog(), s.backlog_bytes()), (0, 0));
}

/// A regional document's first commit, as a first open makes it.
fn regional_start(doc: &str) -> (ot_core::region::RegionalDocument, Vec<WriteItem>) {
    let mut region = ot_core::region::RegionalDocument::first_open(
        "r-eu",
        5,
        3,
        "home",
        0,
        ot_core::OpLimits::DEFAULT,
    )
    .unwrap();
    let (commit, checkpoint) = region.take_commit(false).unwrap();
    let mut items = vec![create(doc)];
    for (n, entry) in (0u64..).zip(commit.entries) {
        items.push(WriteItem::Region {
            doc: doc.to_owned(),
            n,
            record: RegionRecord::Entry {
                entry: Box::new(entry),
            },
        });
    }
    assert!(checkpoint.is_none());
    (region, items)
}

#[test]
fn region_records_read_back_from_the_newest_checkpoint_and_go_with_a_delete() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir, Durability::Fsync);
    let (region, items) = regional_start("d");
    s.commit(&items).unwrap();
    assert_eq!(s.region_records("d").unwrap().len(), 1);
    assert_eq!(s.region_docs().unwrap(), vec!["d".to_owned()]);
    // A checkpoint replaces every record numbered below it, once ingested
    // and also when read before (reads ingest first).
    let checkpoint = WriteItem::Region {
        doc: "d".into(),
        n: 1,
        record: RegionRecord::Checkpoint {
            checkpoint: Box::new(region.checkpoint()),
        },
    };
    let later = WriteItem::Region {
        doc: "d".into(),
        n: 2,
        record: RegionRecord::Entry {
            entry: Box::new(ot_core::region::RegionalEntry::Verified),
        },
    };
    s.commit(&[checkpoint, later]).unwrap();
    // Reopened at a restart only while its link has ops to send; a copy
    // with records but no count yet (an older database) is reopened too.
    let waiting = |waiting: bool| WriteItem::RegionWaiting {
        doc: "d".into(),
        waiting,
    };
    s.commit(&[waiting(false)]).unwrap();
    assert!(s.region_docs().unwrap().is_empty());
    let (_, other) = regional_start("e");
    s.commit(&other).unwrap();
    assert_eq!(s.region_docs().unwrap(), vec!["e".to_owned()]);
    s.commit(&[waiting(true)]).unwrap();
    assert_eq!(
        s.region_docs().unwrap(),
        vec!["d".to_owned(), "e".to_owned()]
    );
    let records = s.region_records("d").unwrap();
    assert_eq!(
        records.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(matches!(records[0].1, RegionRecord::Checkpoint { .. }));
    // They survive a reopen (the commit log replayed into the tables).
    drop(s);
    let s = open(&dir, Durability::Fsync);
    assert_eq!(s.region_records("d").unwrap().len(), 2);
    // A delete takes them; a conflict copy outlives it, once per id even
    // when the commit log is replayed.
    let copy = WriteItem::ConflictCopy {
        doc: "d".into(),
        copy: ConflictCopy {
            id: 7,
            time_ms: 1,
            reason: "test".into(),
            text: "kept".into(),
        },
    };
    s.commit(&[
        copy.clone(),
        WriteItem::DeleteDoc {
            doc: "d".into(),
            epoch: 9,
        },
    ])
    .unwrap();
    s.commit(&[copy]).unwrap();
    assert!(s.region_records("d").unwrap().is_empty());
    assert_eq!(s.region_docs().unwrap(), vec!["e".to_owned()]);
    let copies = s.conflict_copies("d").unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].text, "kept");
}

#[test]
fn origins_read_back_and_a_database_without_the_column_gets_it_on_open() {
    let dir = TempDir::new().unwrap();
    let (_, mut items) = sample("d");
    let region = StoredOrigin::Region {
        node: "eu".into(),
        revs: (3, 7),
        authors: vec!["ann".into()],
        more_authors: 0,
    };
    let upstream = StoredOrigin::Upstream {
        home_rev: 12,
        author: Some("bob".into()),
    };
    for (item, origin) in items.iter_mut().zip([region.clone(), upstream.clone()]) {
        if let WriteItem::Op { op, .. } = item {
            op.origin = Some(origin);
        }
    }
    let s = open(&dir, Durability::Fsync);
    s.commit(&items).unwrap();
    let ops = s.ops("d", 0, 100).unwrap();
    assert_eq!(ops, stored(&items));
    assert_eq!(ops[0].origin, Some(region));
    assert_eq!(ops[1].origin, Some(upstream));
    assert_eq!(ops[2].origin, None);
    drop(s);
    // What a database made before origins looks like: no column.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch("ALTER TABLE ops DROP COLUMN origin")
        .unwrap();
    drop(conn);

    let s = open(&dir, Durability::Fsync);
    let ops = s.ops("d", 0, 100).unwrap();
    assert_eq!(ops.len(), items.len());
    assert!(ops.iter().all(|op| op.origin.is_none()));
    let (_, more) = sample("e");
    s.commit(&more).unwrap();
    assert_eq!(s.ops("e", 0, 100).unwrap(), stored(&more));
}

/// The suite every store runs (`storage/conformance.rs`).
mod conformance_suite {
    use super::{open, Durability, TempDir};
    use crate::storage::{conformance, Storage};
    use std::sync::Arc;

    #[test]
    fn round_trip() {
        let dir = TempDir::new().unwrap();
        conformance::round_trip(&open(&dir, Durability::Fsync));
    }

    #[test]
    fn gaps_write_nothing() {
        let dir = TempDir::new().unwrap();
        conformance::gaps_write_nothing(&open(&dir, Durability::Fsync));
    }

    #[test]
    fn concurrent_commits_at_one_revision() {
        // One SQLite store has one writer: two threads stand for the racers.
        let dir = TempDir::new().unwrap();
        let s: Arc<dyn Storage> = Arc::new(open(&dir, Durability::Relaxed));
        conformance::concurrent_commits_at_one_revision(s.clone(), s);
    }

    #[test]
    fn delete_and_recreate() {
        let dir = TempDir::new().unwrap();
        conformance::delete_and_recreate(&open(&dir, Durability::Fsync));
    }

    #[test]
    fn region_records() {
        let dir = TempDir::new().unwrap();
        conformance::region_records(&open(&dir, Durability::Fsync));
    }

    #[test]
    fn revocations() {
        let dir = TempDir::new().unwrap();
        conformance::revocations(&open(&dir, Durability::Fsync));
    }

    #[test]
    fn large_document_and_snapshots() {
        let dir = TempDir::new().unwrap();
        conformance::large_document_and_snapshots(&open(&dir, Durability::Relaxed));
    }
}
