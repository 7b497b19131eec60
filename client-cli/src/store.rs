//! Saved client state on disk: one file per writer (client id) per server and
//! document, written atomically, and locked while a client runs so that two
//! running clients never share a client id.
//!
//! Layout: `<root>/<server key>/<doc>/<client id>.json` plus `<client id>.lock`,
//! and conflict copies in `<root>/conflicts/`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ot_driver::SessionState;
use serde::{Deserialize, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A state file is not valid.
    #[error("the saved state {path} is unreadable: {reason}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The requested client id is in use by another running client.
    #[error("client id {0} is in use by another running client")]
    Locked(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What is saved for one writer of one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// Format version.
    pub version: u32,
    /// The server's base URL.
    pub server: String,
    /// The document id.
    pub doc: String,
    /// The session: epoch, whether it ever synced, a resync mark (pending
    /// edits given up and kept as a conflict copy: the next connection starts
    /// from a snapshot) and the client state machine. Flattened, so the file
    /// keeps the fields it always had.
    #[serde(flatten)]
    pub session: SessionState,
}

/// The store's root folder (by default in the user's data directory).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A locked writer slot: its state file and the lock held while it lives.
#[derive(Debug)]
pub struct Slot {
    /// The client id of this slot.
    pub client_id: String,
    path: PathBuf,
    /// Held for the slot's lifetime: the OS lock goes with the open file.
    _lock: File,
}

/// A filesystem-safe key for a server URL.
fn server_key(server: &str) -> String {
    let readable: String = server
        .trim_end_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    let hash = blake3::hash(server.as_bytes()).to_hex();
    format!("{readable}-{}", &hash[..8])
}

impl Store {
    /// A store under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    /// The default store: `$OT_CLIENT_DATA_DIR`, else the user's data directory.
    pub fn default_location() -> Self {
        if let Some(dir) = std::env::var_os("OT_CLIENT_DATA_DIR") {
            return Store::new(dir);
        }
        let root = directories::ProjectDirs::from("", "", "ot-client")
            .map(|d| d.data_dir().to_path_buf())
            .unwrap_or_else(|| PathBuf::from(".ot-client"));
        Store::new(root)
    }

    /// The store's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn doc_dir(&self, server: &str, doc: &str) -> PathBuf {
        self.root.join(server_key(server)).join(doc)
    }

    /// Ids of the saved writers of a document.
    pub fn saved_ids(&self, server: &str, doc: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.doc_dir(server, doc);
        let mut ids = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if let Some(id) = name.strip_suffix(".json") {
                        ids.push(id.to_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("reading", &dir)(e)),
        }
        ids.sort();
        Ok(ids)
    }

    /// Lock a writer slot: `client_id` if given (fails if in use), else the
    /// first saved writer of this document that no running client holds, else
    /// a new id. Returns the slot and its saved state, if any.
    pub fn acquire(
        &self,
        server: &str,
        doc: &str,
        client_id: Option<&str>,
    ) -> Result<(Slot, Option<SavedState>), StoreError> {
        let dir = self.doc_dir(server, doc);
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let candidates: Vec<String> = match client_id {
            Some(id) => vec![id.to_owned()],
            None => self.saved_ids(server, doc)?,
        };
        for id in candidates {
            match self.try_lock(&dir, &id)? {
                Some(slot) => {
                    let saved = slot.load()?;
                    return Ok((slot, saved));
                }
                None if client_id.is_some() => return Err(StoreError::Locked(id)),
                None => continue,
            }
        }
        // A fresh writer: 128 random bits.
        loop {
            let id = ot_protocol::ClientId::random().to_string();
            if let Some(slot) = self.try_lock(&dir, &id)? {
                return Ok((slot, None));
            }
        }
    }

    fn try_lock(&self, dir: &Path, id: &str) -> Result<Option<Slot>, StoreError> {
        let lock_path = dir.join(format!("{id}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Slot {
                client_id: id.to_owned(),
                path: dir.join(format!("{id}.json")),
                _lock: file,
            })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io("locking", &lock_path)(e)),
        }
    }

    /// Write a conflict copy of `text` and return its path.
    pub fn write_conflict_copy(&self, doc: &str, text: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("conflicts");
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path = dir.join(format!("{doc}-{stamp}-{:04x}.txt", rand::random::<u16>()));
        write_atomically(&path, text.as_bytes())?;
        Ok(path)
    }
}

impl Slot {
    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the saved state, if there is one.
    pub fn load(&self) -> Result<Option<SavedState>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &self.path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// Save the state atomically (temp file, fsync, rename, fsync the folder).
    pub fn save(&self, state: &SavedState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(&self.path, &bytes)
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{:08x}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(bytes).map_err(io("writing", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ot_core::client::Client;

    #[test]
    fn slots_are_exclusive_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let (a, saved) = store.acquire("ws://x", "doc", None).unwrap();
        assert!(saved.is_none());
        let state = SavedState {
            version: 1,
            server: "ws://x".into(),
            doc: "doc".into(),
            session: SessionState {
                epoch: Some(3),
                synced: true,
                resync: None,
                client: Client::new(a.client_id.clone(), 4, "héllo", 2).state(),
                client_key: Some(ot_protocol::ClientKey::random()),
            },
        };
        a.save(&state).unwrap();
        // While `a` runs, a second client gets another id.
        let (b, saved_b) = store.acquire("ws://x", "doc", None).unwrap();
        assert_ne!(a.client_id, b.client_id);
        assert!(saved_b.is_none());
        assert!(matches!(
            store.acquire("ws://x", "doc", Some(&a.client_id)),
            Err(StoreError::Locked(_))
        ));
        let a_id = a.client_id.clone();
        drop(a);
        // Once `a` is gone its slot (and saved state) is taken over.
        let (c, saved_c) = store.acquire("ws://x", "doc", None).unwrap();
        assert_eq!(c.client_id, a_id);
        assert_eq!(saved_c, Some(state));
        let copy = store.write_conflict_copy("doc", "text").unwrap();
        assert_eq!(fs::read_to_string(copy).unwrap(), "text");
    }
}
