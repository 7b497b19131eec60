//! One server process per data directory: an exclusive lock on
//! `<dir>/server.lock`, held for the storage's life.
//!
//! Two processes on one data directory would both append to the same commit
//! logs and acknowledge ops for the same revisions, and the database would
//! then refuse to open. The lock is an OS file lock (`flock` on Unix,
//! `LockFileEx` on Windows), so it is released by the kernel when the process
//! dies however it dies (kill -9 included): a stale lock file never keeps a
//! server from starting. The file holds the holder's process id, for the
//! message the second process prints.
//!
//! The lock file is created once and never replaced, so its identity (inode
//! number and creation time) also tells whether the directory was recreated
//! from a copy (see [`DirLock::identity`] and the storage's epoch rules).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StorageError;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "server.lock";

/// The held lock of a data directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    dir: PathBuf,
}

impl DirLock {
    /// Take the lock of `dir` (which must exist), or fail at once with
    /// [`StorageError::Locked`] if another process (or another open storage
    /// of this process) holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, "cannot open", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // Best effort: the holder wrote its pid after taking the lock.
                let _ = file.read_to_string(&mut holder);
                return Err(StorageError::Locked {
                    dir: dir.to_owned(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_error(&path, "cannot lock", e)),
        }
        // Not fatal if it fails (a full disk): the pid is only for messages.
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "pid {}", std::process::id()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the pid into the lock file");
        }
        Ok(DirLock {
            file,
            dir: dir.to_owned(),
        })
    }

    /// The identity of this directory's lock file: its inode number and
    /// creation time (where the file system keeps one). The file is never
    /// replaced while the directory is used, so another identity means the
    /// directory's files were recreated (restored from a backup, copied from
    /// elsewhere) or the lock file was deleted.
    pub fn identity(&self) -> Result<String, StorageError> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| io_error(&self.dir.join(LOCK_FILE), "cannot stat", e))?;
        #[cfg(unix)]
        let ino = {
            use std::os::unix::fs::MetadataExt;
            meta.ino()
        };
        #[cfg(not(unix))]
        let ino = 0u64;
        let created = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(format!("{ino}:{created}"))
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_until_the_first_is_dropped() {
        let dir = TempDir::new().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire(dir.path()) {
            Err(StorageError::Locked {
                dir: locked,
                holder,
            }) => {
                assert_eq!(locked, dir.path());
                assert_eq!(holder, format!("pid {}", std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        let identity = first.identity().unwrap();
        drop(first);
        let again = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(
            again.identity().unwrap(),
            identity,
            "same file, same identity"
        );
    }

    #[test]
    fn a_recreated_lock_file_has_another_identity() {
        let dir = TempDir::new().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let identity = first.identity().unwrap();
        drop(first);
        // Kept open so the inode number cannot be reused at once.
        let _old = File::open(dir.path().join(LOCK_FILE)).unwrap();
        std::fs::rename(dir.path().join(LOCK_FILE), dir.path().join("old.lock")).unwrap();
        let second = DirLock::acquire(dir.path()).unwrap();
        assert_ne!(second.identity().unwrap(), identity);
    }
}
