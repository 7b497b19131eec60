//! How far a regional server's document is replicated to its home: what
//! `GET /api/docs/{doc}/replication` shows.

use serde::Serialize;

/// The replication of one document at a regional server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ReplicationStatus {
    /// Whether the link to the home is connected (resumed or resynced).
    pub(crate) connected: bool,
    /// The home's epoch of the document, as the link knows it.
    pub(crate) home_epoch: u64,
    /// The last home revision integrated here.
    pub(crate) home_rev: u64,
    /// The regional revision (this server's own numbering).
    pub(crate) rev: u64,
    /// Every local op up to this regional revision is acknowledged by the home.
    pub(crate) replicated_rev: u64,
    /// The link's ops the home has not acknowledged yet (the op in flight
    /// and the queued ones; local ops are composed into them within the
    /// home's limits).
    pub(crate) ops_waiting: usize,
    /// How long the oldest local op not yet at the home has waited, in
    /// milliseconds (`None`: none waits).
    pub(crate) oldest_waiting_ms: Option<u64>,
}
