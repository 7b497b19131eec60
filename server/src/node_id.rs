//! `--node-id NAME`: which server node a data dir belongs to. The name is
//! stored in `<data-dir>/node-id` at the first start with the flag; a later
//! start with another name on the same data dir is refused (naming both),
//! and a start without the flag runs as the stored node. A regional server's
//! link to its home is the client id `r-<NAME>` (see `ot_protocol::is_link_id`),
//! so the name must make a valid client id with that prefix.

use std::io::Write;
use std::path::{Path, PathBuf};

use ot_protocol::{ClientId, LINK_ID_PREFIX};

/// The file, in the data dir, that holds the node id.
pub(crate) const FILE: &str = "node-id";

/// Why the node id could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    /// The data dir belongs to another node.
    #[error("the data dir {dir} belongs to node `{stored}`, but the server was started with --node-id {given}; start it with --node-id {stored}, or give node {given} its own data dir")]
    Mismatch {
        /// The data dir.
        dir: String,
        /// The node id stored in it.
        stored: String,
        /// The node id given on the command line.
        given: String,
    },
    /// The database (shared by several nodes) belongs to another node.
    #[error("the database belongs to node `{stored}`, but the server was started with --node-id {given}; start it with --node-id {stored}, or give node {given} its own database")]
    DatabaseMismatch {
        /// The node id stored in the database.
        stored: String,
        /// The node id given on the command line.
        given: String,
    },
    /// Reading or writing the database failed.
    #[error("the node id in the database: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The stored file is not a valid node id (edited by hand, damaged).
    #[error("{path} does not hold a valid node id")]
    Damaged {
        /// The file.
        path: String,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Check a `--node-id` value: 1–62 characters of `[A-Za-z0-9_-]`, so that
/// `r-<NAME>` is a valid client id.
pub fn parse(name: &str) -> Result<String, String> {
    let link_id = format!("{LINK_ID_PREFIX}{name}");
    if name.is_empty() || ClientId::parse(&link_id).is_err() {
        return Err(format!(
            "`{name}` is not a node id: 1 to {} characters of A-Z, a-z, 0-9, `_` and `-`",
            64 - LINK_ID_PREFIX.len()
        ));
    }
    Ok(name.to_owned())
}

/// Settle the node id of the (locked) data dir `dir` with the one `given`
/// on the command line, storing it at the first start: the node id in force,
/// if any.
pub(crate) fn settle(dir: &Path, given: Option<&str>) -> Result<Option<String>, NodeIdError> {
    let path = dir.join(FILE);
    let shown = path.display().to_string();
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let name = text.trim();
            Some(parse(name).map_err(|_| NodeIdError::Damaged {
                path: shown.clone(),
            })?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(NodeIdError::Io {
                path: shown,
                source,
            })
        }
    };
    match (stored, given) {
        (Some(stored), Some(given)) if stored != given => Err(NodeIdError::Mismatch {
            dir: dir.display().to_string(),
            stored,
            given: given.to_owned(),
        }),
        (Some(stored), _) => Ok(Some(stored)),
        (None, Some(given)) => {
            write_durably(dir, &path, given).map_err(|source| NodeIdError::Io {
                path: shown,
                source,
            })?;
            tracing::info!(node = given, "stored the node id in the data dir");
            Ok(Some(given.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// Settle the node id with the one `given` on the command line where the
/// storage keeps node settings (a database several server processes share:
/// they are one node): stored there at the first start with the flag; the
/// same rules as [`settle`] otherwise. `Ok(None)` from a storage that keeps
/// none, whose node id the data dir holds.
pub(crate) fn settle_in_storage(
    storage: &dyn crate::storage::Storage,
    given: Option<&str>,
) -> Result<Option<Option<String>>, NodeIdError> {
    if !storage.is_shared() {
        return Ok(None);
    }
    let stored = storage.node_setting("node_id", given)?;
    if let Some(stored) = &stored {
        parse(stored).map_err(|_| NodeIdError::Damaged {
            path: "the database's node id".into(),
        })?;
    }
    match (stored, given) {
        (Some(stored), Some(given)) if stored != given => Err(NodeIdError::DatabaseMismatch {
            stored,
            given: given.to_owned(),
        }),
        (stored, _) => Ok(Some(stored)),
    }
}

/// Write `name` to `path` so that a crash leaves either no file or the whole
/// name: a temporary file, fsynced, renamed, and the directory fsynced.
fn write_durably(dir: &Path, path: &Path, name: &str) -> std::io::Result<()> {
    let temp: PathBuf = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(format!("{name}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_node_id_is_stored_once_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(settle(dir.path(), None).unwrap(), None);
        assert_eq!(
            settle(dir.path(), Some("eu-1")).unwrap().as_deref(),
            Some("eu-1")
        );
        assert_eq!(settle(dir.path(), None).unwrap().as_deref(), Some("eu-1"));
        assert_eq!(
            settle(dir.path(), Some("eu-1")).unwrap().as_deref(),
            Some("eu-1")
        );
        let refused = settle(dir.path(), Some("us")).unwrap_err().to_string();
        assert!(
            refused.contains("`eu-1`") && refused.contains("--node-id us"),
            "{refused}"
        );
        std::fs::write(dir.path().join(FILE), "not a node id!\n").unwrap();
        assert!(matches!(
            settle(dir.path(), None),
            Err(NodeIdError::Damaged { .. })
        ));
    }

    #[test]
    fn a_node_id_makes_a_valid_link_id() {
        assert!(parse("eu").is_ok() && parse("a_b-C9").is_ok());
        assert!(parse("").is_err() && parse("eu/1").is_err() && parse("é").is_err());
        assert!(parse(&"x".repeat(62)).is_ok() && parse(&"x".repeat(63)).is_err());
    }
}
