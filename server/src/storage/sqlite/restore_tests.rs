//! Tests of `restore.rs` and of damaged commit logs, at the storage level:
//! which restores and damages change the epoch, and that normal restarts
//! (clean, or after a crash) never do.

use std::path::Path;

use super::*;
use crate::storage::oplog::LOG_FILES;
use ot_core::history::{DocumentHistory, Receipt};
use ot_core::Operation;
use tempfile::TempDir;

/// The item of op `seq` of one writer typing `text` at the end of `h`.
fn typed(h: &mut DocumentHistory, seq: u64, text: &str) -> WriteItem {
    let len = h.text().len_chars();
    let op = Operation::insert_at(len, len, text).unwrap();
    match h.receive("w", seq, h.revision(), op).unwrap() {
        Receipt::Applied { applied, received } => WriteItem::Op {
            doc: "d".to_owned(),
            op: StoredOp::from_applied(&applied, received, 1),
            len_after: h.text().len_chars() as u64,
        },
        other => panic!("not applied: {other:?}"),
    }
}

/// A document's writer: commits one op per call, one record each.
struct Typist {
    h: DocumentHistory,
    seq: u64,
}

impl Typist {
    fn new() -> Typist {
        Typist {
            h: DocumentHistory::new(),
            seq: 0,
        }
    }

    fn commit(&mut self, s: &SqliteStorage, text: &str) {
        self.seq += 1;
        let item = typed(&mut self.h, self.seq, text);
        s.commit(&[item]).unwrap();
    }
}

fn open(dir: &Path) -> SqliteStorage {
    SqliteStorage::open(dir, Durability::Fsync).unwrap()
}

fn text(s: &SqliteStorage) -> String {
    let rev = s.last_rev("d").unwrap();
    s.text_at("d", rev).unwrap().unwrap_or_default()
}

/// Copy every file of `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn clean_restarts_and_crashes_keep_the_epoch() {
    let dir = TempDir::new().unwrap();
    let mut w = Typist::new();
    let s = open(dir.path());
    let epoch = s.epoch();
    w.commit(&s, "a");
    s.close_clean().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!((s.epoch(), s.faults_at_open()), (epoch, 0));
    // A crash with commits only in the logs (fsync: no epoch change).
    w.commit(&s, "b");
    s.ingest().unwrap();
    w.commit(&s, "c");
    drop(s);
    let s = open(dir.path());
    assert_eq!((s.epoch(), s.faults_at_open()), (epoch, 0));
    assert_eq!(text(&s), "abc");
    // Twice more: the lsns go on across restarts.
    w.commit(&s, "d");
    drop(s);
    let s = open(dir.path());
    assert_eq!(
        (s.epoch(), s.faults_at_open(), text(&s).as_str()),
        (epoch, 0, "abcd")
    );
}

#[test]
fn a_database_older_than_the_logs_changes_the_epoch() {
    let dir = TempDir::new().unwrap();
    let backup = TempDir::new().unwrap();
    let mut w = Typist::new();
    let s = open(dir.path());
    let epoch = s.epoch();
    w.commit(&s, "a");
    s.close_clean().unwrap();
    drop(s);
    std::fs::copy(dir.path().join(DB_FILE), backup.path().join(DB_FILE)).unwrap();
    let s = open(dir.path());
    w.commit(&s, "b");
    s.close_clean().unwrap();
    drop(s);
    // Only the database comes back from the backup; the logs (reset after
    // the last ingest) show that later lsns were written.
    std::fs::copy(backup.path().join(DB_FILE), dir.path().join(DB_FILE)).unwrap();
    let s = open(dir.path());
    assert_eq!(text(&s), "a", "the restored database lacks b");
    assert!(s.epoch() > epoch, "the epoch changed");
    assert_eq!(s.faults_at_open(), 1);
    // Once: the next open finds nothing new.
    let changed = s.epoch();
    drop(s);
    let s = open(dir.path());
    assert_eq!((s.epoch(), s.faults_at_open()), (changed, 0));
}

#[test]
fn logs_older_than_the_database_change_nothing() {
    let dir = TempDir::new().unwrap();
    let backup = TempDir::new().unwrap();
    let mut w = Typist::new();
    let s = open(dir.path());
    let epoch = s.epoch();
    w.commit(&s, "a");
    drop(s); // a crash: "a" only in the log
    for log in LOG_FILES {
        std::fs::copy(dir.path().join(log), backup.path().join(log)).unwrap();
    }
    let s = open(dir.path());
    w.commit(&s, "b");
    s.close_clean().unwrap();
    drop(s);
    for log in LOG_FILES {
        std::fs::copy(backup.path().join(log), dir.path().join(log)).unwrap();
    }
    // The old record is stored already: nothing is lost, nothing changes.
    let s = open(dir.path());
    assert_eq!(
        (s.epoch(), s.faults_at_open(), text(&s).as_str()),
        (epoch, 0, "ab")
    );
    w.commit(&s, "c");
    drop(s);
    let s = open(dir.path());
    assert_eq!((s.epoch(), text(&s).as_str()), (epoch, "abc"));
}

#[test]
fn missing_logs_change_the_epoch() {
    let dir = TempDir::new().unwrap();
    let mut w = Typist::new();
    let s = open(dir.path());
    let epoch = s.epoch();
    w.commit(&s, "a");
    s.ingest().unwrap();
    w.commit(&s, "b");
    drop(s); // "b" only in a log, which someone then deletes
    for log in LOG_FILES {
        std::fs::remove_file(dir.path().join(log)).unwrap();
    }
    let s = open(dir.path());
    assert_eq!(text(&s), "a");
    assert!(s.epoch() > epoch);
    assert!(s.faults_at_open() >= 1);
}

#[test]
fn a_whole_directory_restored_from_a_copy_changes_the_epoch() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("data");
    let backup = parent.path().join("backup");
    let mut w = Typist::new();
    let s = open(&dir);
    let epoch = s.epoch();
    w.commit(&s, "a");
    s.close_clean().unwrap();
    drop(s);
    copy_dir(&dir, &backup);
    let s = open(&dir);
    w.commit(&s, "b");
    s.close_clean().unwrap();
    drop(s);
    // Restore: the old directory is moved away (its files stay, so no inode
    // is reused), the copy takes its place. Every file of the copy is
    // consistent with every other: only the lock file's identity tells.
    std::fs::rename(&dir, parent.path().join("old")).unwrap();
    copy_dir(&backup, &dir);
    let s = open(&dir);
    assert_eq!(text(&s), "a");
    assert!(s.epoch() > epoch, "the epoch changed");
    assert_eq!(s.faults_at_open(), 1);
}

/// Three records (one op each) left in the commit log by a crash; returns
/// the log's bytes and the offsets of the records.
fn three_records_in_the_log(dir: &Path) -> (Vec<u8>, Vec<usize>) {
    let mut w = Typist::new();
    let s = open(dir);
    for text in ["a", "b", "c"] {
        w.commit(&s, text);
    }
    drop(s);
    let data = std::fs::read(dir.join(LOG_FILES[0])).unwrap();
    // Records: header (28 bytes, len at 24..28) + payload.
    let mut offsets = Vec::new();
    let mut at = 0;
    while data.get(at..at + 4) == Some(b"OTL1".as_slice()) && offsets.len() < 3 {
        offsets.push(at);
        let len = u32::from_le_bytes(data[at + 24..at + 28].try_into().unwrap()) as usize;
        at += 28 + len;
    }
    assert_eq!(offsets.len(), 3, "three records");
    (data, offsets)
}

/// Three records in the log of `dir`, a payload byte of record `index`
/// flipped: the epoch before, and the storage opened after.
fn open_with_damaged_record(dir: &Path, index: usize) -> (u64, SqliteStorage) {
    let epoch = open(dir).epoch();
    let (mut data, offsets) = three_records_in_the_log(dir);
    data[offsets[index] + 28 + 3] ^= 0x20;
    std::fs::write(dir.join(LOG_FILES[0]), &data).unwrap();
    (epoch, open(dir))
}

#[test]
fn a_damaged_record_followed_by_valid_ones_changes_the_epoch() {
    let dir = TempDir::new().unwrap();
    // The middle record damaged.
    let (epoch, s) = open_with_damaged_record(dir.path(), 1);
    assert_eq!(text(&s), "a", "the records from the damage on are not used");
    assert!(
        s.epoch() > epoch,
        "acknowledged records were lost: new epoch"
    );
    assert_eq!(s.faults_at_open(), 1);
}

#[test]
fn a_damaged_first_record_followed_by_valid_ones_changes_the_epoch() {
    let dir = TempDir::new().unwrap();
    let (epoch, s) = open_with_damaged_record(dir.path(), 0);
    assert_eq!(text(&s), "");
    assert!(s.epoch() > epoch);
    assert!(s.faults_at_open() >= 1);
}

#[test]
fn a_torn_or_damaged_tail_changes_nothing() {
    for cut in [false, true] {
        let dir = TempDir::new().unwrap();
        let epoch = open(dir.path()).epoch();
        let (mut data, offsets) = three_records_in_the_log(dir.path());
        let end = offsets[2]
            + 28
            + u32::from_le_bytes(data[offsets[2] + 24..offsets[2] + 28].try_into().unwrap())
                as usize;
        if cut {
            // Torn: the file ends inside the last record.
            data.truncate(end - 2);
        } else {
            // Damaged last record (a torn write that reached the disk partly).
            data[offsets[2] + 28 + 3] ^= 0x20;
        }
        std::fs::write(dir.path().join(LOG_FILES[0]), &data).unwrap();
        let s = open(dir.path());
        assert_eq!(text(&s), "ab", "cut = {cut}");
        assert_eq!((s.epoch(), s.faults_at_open()), (epoch, 0), "cut = {cut}");
    }
}
