//! Why a document could not be loaded or read from storage.

use ot_protocol::ClientId;

use crate::storage::StorageError;

/// Why a document could not be opened, or its older ops not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DocError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Commit(std::sync::Arc<StorageError>),
    #[error("a storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the stored history does not restore: {0}")]
    Restore(#[from] ot_core::history::RestoreError),
    #[error("storage returned {got} of {wanted} ops")]
    ShortRead { got: usize, wanted: usize },
    #[error("seq {seq} of {client} is not in storage")]
    SeqNotStored { client: ClientId, seq: u64 },
    #[error("the document did not answer in time")]
    NoAnswer,
    #[error("the document kept unloading")]
    KeptUnloading,
    /// On storage several nodes share: the client has seen revisions this
    /// node could not read yet (storage unavailable); it must not get an
    /// older snapshot, so it retries.
    #[error("the client is at revision {client_rev}, ahead of this node's {node_rev}, and storage could not be read")]
    Behind { client_rev: u64, node_rev: u64 },
    /// On a region: a document stored here before `--upstream` was given.
    #[error("this document was created on this server before it ran with --upstream; it is not a copy of the home's document")]
    NotRegional,
    /// On a region: the stored regional log does not recover.
    #[error("the regional log does not recover: {0}")]
    Region(String),
    /// On a region: the home could not give its copy of a document this
    /// region holds none of.
    #[error("{0}")]
    Upstream(String),
}
