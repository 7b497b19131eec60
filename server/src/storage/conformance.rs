//! One conformance suite for every [`Storage`]: the SQLite store and the
//! PostgreSQL store run these same checks (see their test modules), so the
//! server can rely on the trait's promises whichever it runs on.

use std::sync::{Arc, Barrier};

use ot_core::history::{DocumentHistory, KeyHash, OpHash, Receipt};
use ot_core::Operation;

use super::{
    ConflictCopy, RegionConflict, RegionRecord, Storage, StorageError, StoredOp, StoredOrigin,
    WriteItem,
};

/// Apply `op` from `client` (seq `seq`, base `base`) to `h`; the write item.
pub(crate) fn apply(
    h: &mut DocumentHistory,
    doc: &str,
    client: &str,
    seq: u64,
    base: u64,
    op: Operation,
) -> WriteItem {
    match h.receive(client, seq, base, op).unwrap() {
        Receipt::Applied { applied, received } => WriteItem::Op {
            doc: doc.to_owned(),
            op: StoredOp::from_applied(&applied, received, 1_000 + applied.rev as i64),
            len_after: h.text().len_chars() as u64,
        },
        other => panic!("not applied: {other:?}"),
    }
}

/// An insert of `text` at `pos` into a text of `len` characters.
pub(crate) fn ins(len: usize, pos: usize, text: &str) -> Operation {
    Operation::insert_at(len, pos, text).unwrap()
}

/// Six ops of `doc`, two of them concurrent, the last with an origin.
fn sample(doc: &str) -> (DocumentHistory, Vec<WriteItem>) {
    let mut h = DocumentHistory::new();
    let mut items = vec![
        apply(&mut h, doc, "a", 1, 0, ins(0, 0, "hello")),
        apply(&mut h, doc, "a", 2, 1, ins(5, 5, " world")),
        apply(&mut h, doc, "b", 1, 1, ins(5, 0, "¡")),
        apply(&mut h, doc, "a", 3, 3, ins(12, 12, "!")),
        apply(&mut h, doc, "c", 1, 0, ins(0, 0, "🙂\u{0}")),
        apply(&mut h, doc, "b", 2, 5, ins(15, 15, "?")),
    ];
    if let Some(WriteItem::Op { op, .. }) = items.last_mut() {
        op.origin = Some(StoredOrigin::Region {
            node: "eu".into(),
            revs: (3, 7),
            authors: vec!["ann".into()],
            more_authors: 2,
        });
    }
    (h, items)
}

fn stored(items: &[WriteItem]) -> Vec<StoredOp> {
    items
        .iter()
        .filter_map(|item| match item {
            WriteItem::Op { op, .. } => Some(op.clone()),
            _ => None,
        })
        .collect()
}

/// Ops without their times: a store may stamp its own clock's (PostgreSQL
/// stamps the database's, the same for every node).
fn timeless(ops: Vec<StoredOp>) -> Vec<StoredOp> {
    ops.into_iter()
        .map(|op| StoredOp { time_ms: 0, ..op })
        .collect()
}

fn snapshot(doc: &str, h: &DocumentHistory) -> WriteItem {
    WriteItem::Snapshot {
        doc: doc.to_owned(),
        snapshot: h.snapshot(),
    }
}

/// Ops, a snapshot and key bindings round trip; every read sees them.
pub(crate) fn round_trip(s: &dyn Storage) {
    assert_eq!(s.load("d").unwrap(), None);
    assert!(!s.exists("d").unwrap());
    assert_eq!(s.last_rev("d").unwrap(), 0);
    let (h, items) = sample("d");
    let key = KeyHash([7; 32]);
    let mut batch = vec![
        WriteItem::CreateDoc { doc: "d".into() },
        WriteItem::ClientKey {
            doc: "d".into(),
            client_id: "a".into(),
            key_hash: key,
        },
    ];
    batch.extend(items[..4].iter().cloned());
    s.commit(&batch).unwrap();
    let mut at4 = DocumentHistory::new();
    for op in stored(&items[..4]) {
        at4.append_stored(op.into_applied()).unwrap();
    }
    let mut batch = vec![snapshot("d", &at4)];
    batch.extend(items[4..].iter().cloned());
    // A second binding of the same id keeps the first.
    batch.push(WriteItem::ClientKey {
        doc: "d".into(),
        client_id: "a".into(),
        key_hash: KeyHash([9; 32]),
    });
    s.commit(&batch).unwrap();

    let loaded = s.load("d").unwrap().unwrap();
    assert_eq!(loaded.snapshot.rev, 4);
    assert_eq!(loaded.snapshot.text, at4.text().to_string());
    assert_eq!(loaded.snapshot.clients["a"].key_hash, Some(key));
    assert_eq!(
        loaded.tail.iter().map(|op| op.rev).collect::<Vec<_>>(),
        [5, 6]
    );
    let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
    assert_eq!(rebuilt.text().to_string(), h.text().to_string());
    assert!(rebuilt.text().to_string().contains('\u{0}'));

    assert_eq!(
        timeless(s.ops("d", 0, 100).unwrap()),
        timeless(stored(&items))
    );
    assert_eq!(
        timeless(s.ops("d", 2, 2).unwrap()),
        timeless(stored(&items)[2..4].to_vec())
    );
    assert!(s.ops("nope", 0, 10).unwrap().is_empty());
    let conflicts: Vec<u64> = s
        .conflicts("d", 0, 10)
        .unwrap()
        .iter()
        .map(|op| op.rev)
        .collect();
    assert_eq!(conflicts, [3, 5], "the ops transformed past others");
    assert_eq!(s.conflicts("d", 3, 10).unwrap()[0].rev, 5);
    assert_eq!(s.last_rev("d").unwrap(), 6);
    assert_eq!(
        s.heads(&["nope".into(), "d".into()]).unwrap(),
        [("nope".to_owned(), 0), ("d".to_owned(), 6)]
    );
    for op in stored(&items) {
        assert_eq!(
            s.find_seq("d", &op.client_id, op.seq).unwrap(),
            Some((op.rev, op.hash))
        );
        assert_eq!(op.hash, OpHash::of(&op.received));
    }
    assert_eq!(s.find_seq("d", "a", 9).unwrap(), None);
    // The text at every revision, from the nearest snapshot or from nothing.
    let mut replay = DocumentHistory::new();
    assert_eq!(s.text_at("d", 0).unwrap().as_deref(), Some(""));
    for op in stored(&items) {
        let rev = op.rev;
        replay.append_stored(op.into_applied()).unwrap();
        assert_eq!(
            s.text_at("d", rev).unwrap(),
            Some(replay.text().to_string())
        );
    }
    assert_eq!(s.text_at("d", 7).unwrap(), None);
    let list = s.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id.as_str(), list[0].rev), ("d", 6));
    assert_eq!(list[0].len, h.text().len_chars() as u64);
}

/// An op that does not continue its document's log fails the whole commit:
/// nothing of it is written, in any document.
pub(crate) fn gaps_write_nothing(s: &dyn Storage) {
    let (_, a) = sample("a");
    let (_, b) = sample("b");
    s.commit(&a[..2]).unwrap();
    let bad = vec![b[0].clone(), a[3].clone()];
    match s.commit(&bad) {
        Err(StorageError::Gap {
            expected: 3,
            found: 4,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!s.exists("b").unwrap(), "nothing of the failed commit");
    assert_eq!(s.last_rev("a").unwrap(), 2);
    // A snapshot ahead of the log is refused too.
    let mut h = DocumentHistory::new();
    for op in stored(&a[..3]) {
        h.append_stored(op.into_applied()).unwrap();
    }
    match s.commit(&[snapshot("a", &h)]) {
        Err(StorageError::SnapshotAhead {
            snapshot_rev: 3,
            last_rev: 2,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    s.commit(&a[2..]).unwrap();
    assert_eq!(s.last_rev("a").unwrap(), 6);
}

/// Two writers (two nodes) commit the same revision of one document at
/// once: exactly one wins, the other gets a `Gap` naming the new head, and
/// the log holds the winner's op only.
pub(crate) fn concurrent_commits_at_one_revision(a: Arc<dyn Storage>, b: Arc<dyn Storage>) {
    let (_, base) = sample("hot");
    a.commit(&base[..1]).unwrap();
    for round in 0..20u64 {
        let rev = 2 + round;
        let mut mine = DocumentHistory::new();
        for op in a.ops("hot", 0, 1000).unwrap() {
            mine.append_stored(op.into_applied()).unwrap();
        }
        let theirs = mine.clone();
        let (mut mine, mut theirs) = (mine, theirs);
        let len = mine.text().len_chars();
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let one = apply(&mut mine, "hot", &x, 1, rev - 1, ins(len, 0, "x"));
        let two = apply(&mut theirs, "hot", &y, 1, rev - 1, ins(len, len, "y"));
        let barrier = Arc::new(Barrier::new(2));
        let run = |s: Arc<dyn Storage>, item: WriteItem, barrier: Arc<Barrier>| {
            std::thread::spawn(move || {
                barrier.wait();
                s.commit(&[item])
            })
        };
        let first = run(a.clone(), one.clone(), barrier.clone());
        let second = run(b.clone(), two.clone(), barrier);
        let results = [first.join().unwrap(), second.join().unwrap()];
        let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let lost = 1 - won[0];
        match &results[lost] {
            Err(StorageError::Gap {
                expected, found, ..
            }) => assert_eq!((*expected, *found), (rev + 1, rev)),
            other => panic!("round {round}: {other:?}"),
        }
        let stored_op = timeless(a.ops("hot", rev - 1, 1).unwrap());
        let winner = if won[0] == 0 { &one } else { &two };
        let WriteItem::Op { op, .. } = winner else {
            unreachable!()
        };
        assert_eq!(stored_op, timeless(vec![op.clone()]));
        assert_eq!(b.last_rev("hot").unwrap(), rev);
    }
}

/// A delete takes every row of the document and remembers its epoch; the
/// next generation starts at revision 1; conflict copies outlive it.
pub(crate) fn delete_and_recreate(s: &dyn Storage) {
    let (_, items) = sample("d");
    s.commit(&items).unwrap();
    let copy = WriteItem::ConflictCopy {
        doc: "d".into(),
        copy: ConflictCopy {
            id: 7,
            time_ms: 1,
            reason: "test".into(),
            text: "kept \u{0} 🙂".into(),
        },
    };
    assert_eq!(s.deleted_epoch("d").unwrap(), None);
    s.commit(&[
        copy.clone(),
        WriteItem::DeleteDoc {
            doc: "d".into(),
            epoch: 9,
        },
    ])
    .unwrap();
    assert!(!s.exists("d").unwrap());
    assert_eq!(s.load("d").unwrap(), None);
    assert!(s.ops("d", 0, 10).unwrap().is_empty());
    assert_eq!(s.deleted_epoch("d").unwrap(), Some(9));
    // The next generation, and a later delete that never lowers the epoch.
    s.commit(&items[..2]).unwrap();
    assert_eq!(s.last_rev("d").unwrap(), 2);
    assert_eq!(s.find_seq("d", "c", 1).unwrap(), None);
    s.commit(&[
        WriteItem::DeleteDoc {
            doc: "d".into(),
            epoch: 4,
        },
        items[0].clone(),
    ])
    .unwrap();
    assert_eq!(s.deleted_epoch("d").unwrap(), Some(9));
    assert_eq!(s.last_rev("d").unwrap(), 1);
    s.commit(&[copy]).unwrap();
    let copies = s.conflict_copies("d").unwrap();
    assert_eq!(copies.len(), 1, "one per id");
    assert_eq!(copies[0].text, "kept \u{0} 🙂");
}

/// A regional server's records, waiting flags and journal.
pub(crate) fn region_records(s: &dyn Storage) {
    let mut region = ot_core::region::RegionalDocument::first_open(
        "r-eu",
        5,
        3,
        "home",
        0,
        ot_core::OpLimits::DEFAULT,
    )
    .unwrap();
    let (commit, _) = region.take_commit(false).unwrap();
    let mut items = vec![WriteItem::CreateDoc { doc: "d".into() }];
    for (n, entry) in (0u64..).zip(commit.entries) {
        items.push(WriteItem::Region {
            doc: "d".into(),
            n,
            record: RegionRecord::Entry {
                entry: Box::new(entry),
            },
        });
    }
    s.commit(&items).unwrap();
    assert_eq!(s.region_records("d").unwrap().len(), 1);
    assert_eq!(s.region_docs().unwrap(), ["d"]);
    s.commit(&[
        WriteItem::Region {
            doc: "d".into(),
            n: 1,
            record: RegionRecord::Checkpoint {
                checkpoint: Box::new(region.checkpoint()),
            },
        },
        WriteItem::Region {
            doc: "d".into(),
            n: 2,
            record: RegionRecord::Entry {
                entry: Box::new(ot_core::region::RegionalEntry::Verified),
            },
        },
        WriteItem::RegionWaiting {
            doc: "d".into(),
            waiting: false,
        },
    ])
    .unwrap();
    let records = s.region_records("d").unwrap();
    assert_eq!(records.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
    assert!(matches!(records[0].1, RegionRecord::Checkpoint { .. }));
    assert!(s.region_docs().unwrap().is_empty());
    s.commit(&[WriteItem::RegionWaiting {
        doc: "d".into(),
        waiting: true,
    }])
    .unwrap();
    assert_eq!(s.region_docs().unwrap(), ["d"]);
    let conflict = RegionConflict {
        rev: 4,
        home_rev: 9,
        author: "ann".into(),
        author_seq: 2,
        received: ins(4, 0, "x"),
        past_local: (2, 3),
        local: vec![ins(4, 4, "y")],
        applied: ins(5, 0, "x"),
        time_ms: 5,
    };
    s.commit(&[WriteItem::RegionConflict {
        doc: "d".into(),
        conflict: conflict.clone(),
    }])
    .unwrap();
    assert_eq!(s.region_conflicts("d", 0, 10).unwrap(), [conflict]);
    assert!(s.region_conflicts("d", 4, 10).unwrap().is_empty());
    s.commit(&[WriteItem::DeleteDoc {
        doc: "d".into(),
        epoch: 1,
    }])
    .unwrap();
    assert!(s.region_records("d").unwrap().is_empty());
    assert!(s.region_conflicts("d", 0, 10).unwrap().is_empty());
    assert!(s.region_docs().unwrap().is_empty());
}

/// Revoked token ids are kept until they expire.
pub(crate) fn revocations(s: &dyn Storage) {
    s.revoke_token("t1", 100).unwrap();
    s.revoke_token("t2", 300).unwrap();
    s.revoke_token("t1", 50).unwrap();
    let mut ids = s.revoked_tokens(100).unwrap();
    ids.sort();
    assert_eq!(ids, ["t1", "t2"]);
    assert_eq!(s.revoked_tokens(101).unwrap(), ["t2"]);
}

/// A document of a million characters (emoji and U+0000 among them) and
/// the older snapshots thinned as it grows.
pub(crate) fn large_document_and_snapshots(s: &dyn Storage) {
    let mut h = DocumentHistory::new();
    let chunk = "🙂 ab\u{0}cd ".repeat(1_000);
    let mut items = Vec::new();
    for seq in 1..=125u64 {
        let len = h.text().len_chars();
        items.push(apply(
            &mut h,
            "big",
            "w",
            seq,
            seq - 1,
            ins(len, len, &chunk),
        ));
        if seq % 5 == 0 {
            items.push(snapshot("big", &h));
        }
    }
    for part in items.chunks(20) {
        s.commit(part).unwrap();
    }
    assert_eq!(h.text().len_chars(), 1_000_000);
    let loaded = s.load("big").unwrap().unwrap();
    assert_eq!(loaded.snapshot.rev, 125);
    assert_eq!(loaded.snapshot.text, h.text().to_string());
    assert_eq!(
        s.text_at("big", 125).unwrap().unwrap().chars().count(),
        1_000_000
    );
    // An old revision comes from a kept older snapshot plus ops.
    assert_eq!(
        s.text_at("big", 7).unwrap().unwrap(),
        chunk.repeat(7),
        "revision 7"
    );
}
