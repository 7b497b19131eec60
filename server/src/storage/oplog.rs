//! The commit log: an append-only file (`<dir>/commit.log`) in front of SQLite.
//!
//! A group commit appends ONE record holding all its [`WriteItem`]s and, with
//! `sync`, calls `fdatasync` before it returns: that is the commit's durability
//! point. SQLite receives the items later, many commits at a time
//! ("ingest"), after which the log starts over. Writing a record costs one
//! `write` (plus the `fdatasync`), where a SQLite transaction costs B-tree
//! work, several WAL frames and locking for every commit.
//!
//! # Format
//!
//! The file is a sequence of records, the first at offset 0:
//!
//! ```text
//! magic "OTL1" | crc32 (u32) | salt (u64) | lsn (u64) | len (u32) | payload (len bytes)
//! ```
//!
//! Integers are little-endian. The payload is the JSON array of the record's
//! [`WriteItem`]s. The CRC-32 covers salt, lsn, len and payload.
//!
//! The file is reused rather than truncated (overwriting blocks that already
//! exist lets `fdatasync` skip the file-size metadata), so old records may
//! follow the current ones. [`OpLog::reset`] draws a new random salt and
//! starts again at offset 0; reading stops at the first record that is torn,
//! has another salt or does not continue the lsn sequence. A torn record was
//! never acknowledged (its commit had not returned).
//!
//! A reset writes a *reset marker* over the first header instead of zeros:
//!
//! ```text
//! magic "OTL0" | crc32 (u32) | 0 (u64) | next lsn (u64) | 0 (u32)
//! ```
//!
//! so that an empty log still tells which lsns were written before it
//! ([`OpLog::high_lsn`]): the storage compares that with the last lsn the
//! database holds, to see a database restored from an older copy.
//!
//! A record that fails its checks but is followed by a valid record of the
//! same round (same salt, a greater lsn) is not a torn tail: acknowledged
//! records were damaged. [`OpLog::damage`] reports it; the records after the
//! damage are not used (their documents' revisions would have a hole).
//!
//! The storage keeps two logs and alternates between them (one takes new
//! commits while the other's items are written to the tables). Lsns grow
//! across both ([`OpLog::start_after`]), so the first lsn of each tells which
//! log's records are older when both are read back after a crash.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{StorageError, WriteItem};

/// The log file names inside the data directory (the storage alternates
/// between the two).
pub const LOG_FILES: [&str; 2] = ["commit.log", "commit-2.log"];

const MAGIC: &[u8; 4] = b"OTL1";
const RESET_MAGIC: &[u8; 4] = b"OTL0";
const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 4;

/// A record larger than this is refused when written and treated as the end
/// of the log when read (a corrupt length).
const MAX_RECORD_LEN: usize = 1 << 30;

/// The open commit log.
#[derive(Debug)]
pub struct OpLog {
    file: File,
    path: PathBuf,
    sync: bool,
    salt: u64,
    next_lsn: u64,
    /// The lsn of the record at offset 0 (meaningful when `offset > 0`).
    first_lsn: u64,
    /// Where the next record goes.
    offset: u64,
    /// Set when a failed append may have left a record that could not be
    /// invalidated: every later append fails until the log is reopened.
    poisoned: bool,
    /// Reused between appends.
    buffer: Vec<u8>,
    /// What [`open`](Self::open) found.
    found: Found,
    /// The database's instance id, written into reset markers.
    instance: u64,
}

/// What opening a log found, beyond its valid records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    /// The file did not exist (it was created).
    pub created: bool,
    /// The highest lsn the log shows was written: its last valid record's,
    /// or the lsn before its reset marker's. `None`: it shows none.
    pub high_lsn: Option<u64>,
    /// A damaged record followed by a valid record of the same round:
    /// (the lsn the damaged record should have had, the later record's lsn).
    pub damage: Option<(u64, u64)>,
    /// The database instance named by the log's reset marker, if it has one.
    pub instance: Option<u64>,
}

fn crc(salt: u64, lsn: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(&lsn.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

/// The reset marker for a log whose next record gets `next_lsn`.
/// (The salt field of a marker holds the database's instance id.)
fn reset_marker(instance: u64, next_lsn: u64) -> [u8; HEADER_LEN] {
    let mut marker = [0; HEADER_LEN];
    marker[..4].copy_from_slice(RESET_MAGIC);
    marker[4..8].copy_from_slice(&crc(instance, next_lsn, &[]).to_le_bytes());
    marker[8..16].copy_from_slice(&instance.to_le_bytes());
    marker[16..24].copy_from_slice(&next_lsn.to_le_bytes());
    marker
}

/// The (instance, next lsn) a reset marker at the start of `data` records.
fn read_reset_marker(data: &[u8]) -> Option<(u64, u64)> {
    let header = data.get(..HEADER_LEN)?;
    if &header[..4] != RESET_MAGIC {
        return None;
    }
    let stored_crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let instance = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let next_lsn = u64::from_le_bytes(header[16..24].try_into().ok()?);
    (stored_crc == crc(instance, next_lsn, &[]) && header[24..28] == [0; 4])
        .then_some((instance, next_lsn))
}

/// Whether a valid record of round `salt` with an lsn of at least `lsn`
/// starts anywhere in `data` after `from` (a damaged record in the middle
/// rather than a torn tail): returns that record's lsn.
fn later_record(data: &[u8], from: usize, salt: u64, lsn: u64) -> Option<u64> {
    let mut at = from;
    while let Some(found) = data
        .get(at..)
        .and_then(|rest| rest.windows(4).position(|w| w == MAGIC))
    {
        let offset = at + found;
        at = offset + 1;
        let header = data.get(offset..offset + HEADER_LEN)?;
        let field = |range: std::ops::Range<usize>| &header[range];
        let stored_crc = u32::from_le_bytes(field(4..8).try_into().unwrap_or_default());
        let record_salt = u64::from_le_bytes(field(8..16).try_into().unwrap_or_default());
        let record_lsn = u64::from_le_bytes(field(16..24).try_into().unwrap_or_default());
        let len = u32::from_le_bytes(field(24..28).try_into().unwrap_or_default()) as usize;
        if record_salt != salt || record_lsn < lsn || len > MAX_RECORD_LEN {
            continue;
        }
        let start = offset + HEADER_LEN;
        if let Some(payload) = data.get(start..start + len) {
            if crc(salt, record_lsn, payload) == stored_crc {
                return Some(record_lsn);
            }
        }
    }
    None
}

/// What [`read_log`] read.
struct LogRead {
    /// The items of each valid record, in order.
    records: Vec<Vec<WriteItem>>,
    /// The offset just after the last valid record.
    end: usize,
    /// The first record's lsn.
    first_lsn: u64,
    /// See [`Found::damage`].
    damage: Option<(u64, u64)>,
}

/// The records at the start of `data` (see [`read_records`]), and whether a
/// damaged record hides later ones (see [`Found::damage`]).
fn read_log(data: &[u8]) -> LogRead {
    let (records, end, first_lsn) = read_records(data);
    let damage = if records.is_empty() {
        // The first record: its salt is only known if its header is intact.
        data.get(..HEADER_LEN)
            .filter(|header| &header[..4] == MAGIC)
            .and_then(|header| {
                let salt = u64::from_le_bytes(header[8..16].try_into().ok()?);
                let lsn = u64::from_le_bytes(header[16..24].try_into().ok()?);
                let later = later_record(data, 1, salt, lsn.saturating_add(1))?;
                Some((lsn, later))
            })
    } else {
        let salt = data
            .get(8..16)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        let next = first_lsn + records.len() as u64;
        later_record(data, end, salt, next).map(|later| (next, later))
    };
    LogRead {
        records,
        end,
        first_lsn,
        damage,
    }
}

/// Parse the records at the start of `data`: the items of each valid record
/// in order, the offset just after the last one and the first record's lsn.
fn read_records(data: &[u8]) -> (Vec<Vec<WriteItem>>, usize, u64) {
    let mut records = Vec::new();
    let mut offset = 0;
    let mut first_lsn = 0;
    let mut expected: Option<(u64, u64)> = None; // (salt, next lsn)
    while let Some(header) = data.get(offset..offset + HEADER_LEN) {
        if &header[..4] != MAGIC {
            break;
        }
        let field = |range: std::ops::Range<usize>| &header[range];
        let stored_crc = u32::from_le_bytes(field(4..8).try_into().unwrap_or_default());
        let salt = u64::from_le_bytes(field(8..16).try_into().unwrap_or_default());
        let lsn = u64::from_le_bytes(field(16..24).try_into().unwrap_or_default());
        let len = u32::from_le_bytes(field(24..28).try_into().unwrap_or_default()) as usize;
        if let Some((s, l)) = expected {
            if s != salt || l != lsn {
                break;
            }
        }
        if len > MAX_RECORD_LEN {
            break;
        }
        let start = offset + HEADER_LEN;
        let Some(payload) = data.get(start..start + len) else {
            break; // torn: the file ends inside the record
        };
        if crc(salt, lsn, payload) != stored_crc {
            break;
        }
        let Ok(items) = serde_json::from_slice::<Vec<WriteItem>>(payload) else {
            break;
        };
        if records.is_empty() {
            first_lsn = lsn;
        }
        records.push(items);
        offset = start + len;
        expected = Some((salt, lsn + 1));
    }
    (records, offset, first_lsn)
}

impl OpLog {
    /// Open (creating) the log at `path`. Returns it with the item lists of
    /// the valid records it holds, oldest first: the caller must store them
    /// elsewhere durably before calling [`reset`](Self::reset), and append
    /// nothing before that.
    pub fn open(path: &Path, sync: bool) -> Result<(OpLog, Vec<Vec<WriteItem>>), StorageError> {
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(path, "cannot open", e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| io_error(path, "cannot read", e))?;
        let LogRead {
            records,
            end,
            first_lsn,
            damage,
        } = read_log(&data);
        let marker = read_reset_marker(&data);
        let next_lsn = if records.is_empty() {
            marker.map_or(0, |(_, next)| next)
        } else {
            first_lsn + records.len() as u64
        };
        let found = Found {
            created,
            high_lsn: if records.is_empty() {
                marker.and_then(|(_, next)| next.checked_sub(1))
            } else {
                Some(next_lsn - 1)
            },
            damage,
            instance: marker.map(|(instance, _)| instance),
        };
        // Appends continue the records read (same salt) until the caller resets.
        let salt = data
            .get(8..16)
            .filter(|_| !records.is_empty())
            .and_then(|bytes| bytes.try_into().ok())
            .map_or_else(rand::random, u64::from_le_bytes);
        let log = OpLog {
            file,
            path: path.to_owned(),
            sync,
            salt,
            next_lsn,
            first_lsn,
            offset: end as u64,
            poisoned: false,
            buffer: Vec::new(),
            found,
            instance: 0,
        };
        Ok((log, records))
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the log holds no records (it is new or was reset).
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// The lsn of the oldest record held (meaningless when empty).
    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    /// Name the database instance this log belongs to (in its reset markers).
    pub fn set_instance(&mut self, instance: u64) {
        self.instance = instance;
    }

    /// What [`open`](Self::open) found besides the records.
    pub fn found(&self) -> Found {
        self.found
    }

    /// The lsn of the newest record held (`None` when empty).
    pub fn last_lsn(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.next_lsn.saturating_sub(1))
    }

    /// Make this log's next record's lsn at least `lsn`, so that lsns keep
    /// growing across restarts (the database keeps the last one ingested).
    /// Only before a [`reset`](Self::reset): the records held would not be
    /// followed by the next one otherwise.
    pub fn continue_from(&mut self, lsn: u64) {
        self.next_lsn = self.next_lsn.max(lsn);
    }

    /// Make this (empty) log's records come after every record of `other`:
    /// before it takes over from `other`.
    pub fn start_after(&mut self, other: &OpLog) {
        debug_assert!(self.is_empty(), "start_after on a log with records");
        self.next_lsn = self.next_lsn.max(other.next_lsn);
    }

    /// Append one record with `items`; with `sync`, it is on disk when this
    /// returns. On error the record is not in the log.
    pub fn append(&mut self, items: &[WriteItem]) -> Result<(), StorageError> {
        if self.poisoned {
            // The failure may have passed (space freed on a full disk): try
            // again to invalidate the failed record before appending after it.
            self.invalidate_at(self.offset);
            if self.poisoned {
                return Err(StorageError::Internal(format!(
                    "{} cannot be written since an earlier write failure",
                    self.path.display()
                )));
            }
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.extend_from_slice(&[0; HEADER_LEN]);
        let encoded = serde_json::to_writer(&mut buffer, items);
        let result = encoded
            .map_err(|e| StorageError::Internal(format!("cannot encode a log record: {e}")))
            .and_then(|()| self.write_record(&mut buffer));
        self.buffer = buffer;
        result
    }

    fn write_record(&mut self, buffer: &mut [u8]) -> Result<(), StorageError> {
        let len = buffer.len() - HEADER_LEN;
        if len > MAX_RECORD_LEN {
            return Err(StorageError::OutOfRange(format!(
                "a commit of {len} bytes (the limit is {MAX_RECORD_LEN})"
            )));
        }
        let lsn = self.next_lsn;
        let checksum = crc(self.salt, lsn, &buffer[HEADER_LEN..]);
        buffer[..4].copy_from_slice(MAGIC);
        buffer[4..8].copy_from_slice(&checksum.to_le_bytes());
        buffer[8..16].copy_from_slice(&self.salt.to_le_bytes());
        buffer[16..24].copy_from_slice(&lsn.to_le_bytes());
        buffer[24..28].copy_from_slice(&(len as u32).to_le_bytes());
        let written = self.write_at(self.offset, buffer);
        let synced = written.and_then(|()| {
            if self.sync {
                self.file
                    .sync_data()
                    .map_err(|e| io_error(&self.path, "cannot sync", e))
            } else {
                Ok(())
            }
        });
        match synced {
            Ok(()) => {
                if self.offset == 0 {
                    self.first_lsn = lsn;
                }
                self.offset += buffer.len() as u64;
                self.next_lsn += 1;
                Ok(())
            }
            Err(e) => {
                self.invalidate_at(self.offset);
                Err(e)
            }
        }
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
        #[cfg(unix)]
        let written = {
            // One pwrite: no seek.
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(bytes, offset)
        };
        #[cfg(not(unix))]
        let written = {
            use std::io::{Seek, SeekFrom, Write};
            self.file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| self.file.write_all(bytes))
        };
        written.map_err(|e| io_error(&self.path, "cannot write", e))
    }

    /// After a failed append: make sure the record at `offset` can never be
    /// read back (its commit was reported as failed, and the document will
    /// reuse its revisions). Poisons the log if that fails (every append
    /// first tries again, see [`append`](Self::append)).
    ///
    /// The file is cut at `offset`: that needs no free space, where writing
    /// zeros over a record the disk had no room for may fail again, and
    /// nothing after `offset` is valid (records of an earlier round, stored
    /// already). Zeros are the fallback.
    fn invalidate_at(&mut self, offset: u64) {
        let cut = self
            .file
            .set_len(offset)
            .map_err(|e| io_error(&self.path, "cannot truncate", e))
            .or_else(|e| {
                tracing::warn!(error = %e, "cannot cut the commit log; overwriting the failed record");
                self.write_at(offset, &[0; HEADER_LEN])
            });
        let wiped = cut.and_then(|()| {
            self.file
                .sync_data()
                .map_err(|e| io_error(&self.path, "cannot sync", e))
        });
        match wiped {
            Ok(()) => {
                if self.poisoned {
                    tracing::info!(path = %self.path.display(), "the commit log is writable again");
                }
                self.poisoned = false;
            }
            Err(e) => {
                if !self.poisoned {
                    tracing::error!(error = %e, "cannot invalidate a failed commit-log record");
                }
                self.poisoned = true;
            }
        }
    }

    /// Start over at offset 0 (lsns go on growing): everything appended so
    /// far is stored elsewhere, durably enough for the configured durability.
    pub fn reset(&mut self) -> Result<(), StorageError> {
        // Hide the old records from the next open behind a reset marker (not
        // synced: reading them back is harmless, as their items are stored
        // already; the marker only serves to detect restores), unless a
        // failed append left a record behind that could not be invalidated:
        // that one must never be read back, so the hiding is synced then.
        self.write_at(0, &reset_marker(self.instance, self.next_lsn))?;
        if self.poisoned {
            self.file
                .sync_data()
                .map_err(|e| io_error(&self.path, "cannot sync", e))?;
        }
        self.salt = rand::random();
        self.offset = 0;
        // Whatever lies after offset 0 has the old salt: never read back.
        self.poisoned = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StoredOp;
    use ot_core::history::OpHash;
    use ot_core::Operation;
    use tempfile::TempDir;

    fn op_item(doc: &str, rev: u64, text: &str) -> WriteItem {
        let received = Operation::insert_at(rev as usize - 1, 0, text).unwrap();
        WriteItem::Op {
            doc: doc.to_owned(),
            op: StoredOp {
                rev,
                client_id: "c".into(),
                seq: rev,
                hash: OpHash::of(&received),
                base_rev: rev - 1,
                applied: received.clone(),
                received,
                time_ms: 7,
                origin: None,
            },
            len_after: rev,
        }
    }

    fn reopen(path: &Path) -> (OpLog, Vec<Vec<WriteItem>>) {
        OpLog::open(path, true).unwrap()
    }

    #[test]
    fn records_survive_reopen_and_reset_hides_them() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(LOG_FILES[0]);
        let (mut log, records) = reopen(&path);
        assert!(records.is_empty() && log.is_empty());
        let first = vec![
            WriteItem::CreateDoc { doc: "d".into() },
            op_item("d", 1, "é"),
        ];
        let second = vec![op_item("d", 2, "🙂")];
        log.append(&first).unwrap();
        log.append(&second).unwrap();
        drop(log);
        let (mut log, records) = reopen(&path);
        assert_eq!(format!("{records:?}"), format!("{:?}", vec![first, second]));
        assert!(!log.is_empty());

        // After a reset, the next records overwrite the old ones; the old
        // records after them are not read back.
        log.reset().unwrap();
        let third = vec![op_item("e", 1, "x")];
        log.append(&third).unwrap();
        drop(log);
        let (_, records) = reopen(&path);
        assert_eq!(format!("{records:?}"), format!("{:?}", vec![third]));
    }

    #[test]
    fn lsns_grow_across_resets_and_logs() {
        let dir = TempDir::new().unwrap();
        let (mut a, _) = reopen(&dir.path().join(LOG_FILES[0]));
        let (mut b, _) = reopen(&dir.path().join(LOG_FILES[1]));
        a.append(&[op_item("d", 1, "a")]).unwrap();
        a.append(&[op_item("d", 2, "b")]).unwrap();
        b.start_after(&a);
        b.append(&[op_item("d", 3, "c")]).unwrap();
        a.reset().unwrap();
        assert!(a.is_empty());
        a.start_after(&b);
        a.append(&[op_item("d", 4, "d")]).unwrap();
        drop((a, b));
        let (a, a_records) = reopen(&dir.path().join(LOG_FILES[0]));
        let (b, b_records) = reopen(&dir.path().join(LOG_FILES[1]));
        assert_eq!((a.first_lsn(), a_records.len()), (3, 1));
        assert_eq!((b.first_lsn(), b_records.len()), (2, 1));
        assert!(b.first_lsn() < a.first_lsn(), "b holds the older records");
    }

    /// A log in `dir` with three records appended (revisions 1 to 3): its
    /// path and its bytes.
    fn three_record_log(dir: &TempDir) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.path().join(LOG_FILES[0]);
        let (mut log, _) = reopen(&path);
        for rev in 1..=3 {
            log.append(&[op_item("d", rev, "a")]).unwrap();
        }
        drop(log);
        let full = std::fs::read(&path).unwrap();
        (path, full)
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_log() {
        let dir = TempDir::new().unwrap();
        let (_, full) = three_record_log(&dir);
        let (records, end, first_lsn) = read_records(&full);
        assert_eq!((records.len(), end, first_lsn), (3, full.len(), 0));

        // Cut inside the last record: two remain.
        assert_eq!(read_records(&full[..full.len() - 3]).0.len(), 2);
        // Flip one payload byte of the second record: only the first remains.
        let first_len = u32::from_le_bytes(full[24..28].try_into().unwrap()) as usize;
        let second_start = HEADER_LEN + first_len;
        let mut corrupt = full.clone();
        corrupt[second_start + HEADER_LEN + 2] ^= 0x20;
        assert_eq!(read_records(&corrupt).0.len(), 1);
        // Garbage and zeros read as an empty log.
        assert!(read_records(&[0; 100]).0.is_empty());
        assert!(read_records(b"OTL1 but not a record").0.is_empty());
    }

    #[test]
    fn reopening_continues_after_the_last_valid_record() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(LOG_FILES[0]);
        let (mut log, _) = reopen(&path);
        log.append(&[op_item("d", 1, "a")]).unwrap();
        log.append(&[op_item("d", 2, "b")]).unwrap();
        drop(log);
        // Tear the second record, as a crash during its write would.
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 1).unwrap();
        drop(file);
        let (mut log, records) = reopen(&path);
        assert_eq!(records.len(), 1);
        // A new append replaces the torn record and is read back after it.
        log.append(&[op_item("d", 2, "c")]).unwrap();
        drop(log);
        let (_, records) = reopen(&path);
        assert_eq!(records.len(), 2);
        assert_eq!(
            format!("{:?}", records[1]),
            format!("{:?}", vec![op_item("d", 2, "c")])
        );
    }

    #[test]
    fn a_failed_append_is_cut_off_and_the_log_recovers_by_itself() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(LOG_FILES[0]);
        let (mut log, _) = reopen(&path);
        log.append(&[op_item("d", 1, "a")]).unwrap();
        let good_end = log.offset;
        // As if the append of revision 2 wrote its record, then failed (a
        // full disk at fdatasync) and could not invalidate it either.
        log.append(&[op_item("d", 2, "b")]).unwrap();
        log.offset = good_end;
        log.next_lsn -= 1;
        log.poisoned = true;
        // The next append first cuts the failed record off, then goes on.
        log.append(&[op_item("d", 2, "c")]).unwrap();
        assert!(!log.poisoned);
        drop(log);
        let (_, records) = reopen(&path);
        assert_eq!(
            format!("{records:?}"),
            format!(
                "{:?}",
                vec![vec![op_item("d", 1, "a")], vec![op_item("d", 2, "c")]]
            )
        );
    }

    #[test]
    fn damage_in_the_middle_is_reported_and_a_torn_tail_is_not() {
        let dir = TempDir::new().unwrap();
        let (path, full) = three_record_log(&dir);
        assert_eq!(read_log(&full).damage, None);
        let first_len = u32::from_le_bytes(full[24..28].try_into().unwrap()) as usize;
        let second = HEADER_LEN + first_len;
        // The second record's payload damaged, the third intact: reported
        // (lsn 1 should have been there, lsn 2 follows).
        let mut damaged = full.clone();
        damaged[second + HEADER_LEN + 2] ^= 0x20;
        let read = read_log(&damaged);
        assert_eq!((read.records.len(), read.damage), (1, Some((1, 2))));
        // Its header damaged instead: the same.
        let mut damaged = full.clone();
        damaged[second] = b'X';
        assert_eq!(read_log(&damaged).damage, Some((1, 2)));
        // The last record torn or damaged: a harmless tail.
        assert_eq!(read_log(&full[..full.len() - 3]).damage, None);
        let mut tail = full.clone();
        let last = full.len() - 2;
        tail[last] ^= 0x20;
        assert_eq!(read_log(&tail).damage, None);
        // Records of an earlier round (another salt) after the end: not damage.
        let (mut log, _) = reopen(&path);
        log.reset().unwrap();
        log.append(&[op_item("e", 1, "x")]).unwrap();
        drop(log);
        let read = read_log(&std::fs::read(&path).unwrap());
        assert_eq!((read.records.len(), read.damage), (1, None));
    }

    #[test]
    fn an_empty_log_remembers_its_lsns_and_instance_in_its_reset_marker() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(LOG_FILES[0]);
        let (mut log, _) = reopen(&path);
        assert!(log.found().created);
        log.set_instance(42);
        log.continue_from(10);
        log.append(&[op_item("d", 1, "a")]).unwrap();
        log.append(&[op_item("d", 2, "b")]).unwrap();
        assert_eq!(log.last_lsn(), Some(11));
        log.reset().unwrap();
        drop(log);
        let (log, records) = reopen(&path);
        assert!(records.is_empty());
        let found = log.found();
        assert_eq!(
            (found.created, found.high_lsn, found.instance, found.damage),
            (false, Some(11), Some(42), None)
        );
    }
}
