//! The services every part of the server uses: configuration, storage, the
//! commit queue, metrics, the shutdown token and the task tracker. It knows
//! nothing of documents or connections (the registry of open documents is
//! beside it in `app.rs`), so the document actors can use it
//! without a cycle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::presence::PresencePublisher;
use crate::storage::{CommitQueue, Storage};
use crate::upstream::Upstream;

/// What the request handlers and document actors share.
pub(crate) struct Services {
    pub(crate) config: Config,
    pub(crate) storage: Arc<dyn Storage>,
    /// The group-commit queue in front of `storage`.
    pub(crate) queue: CommitQueue,
    pub(crate) metrics: Arc<Metrics>,
    /// Token checking; `None` with authentication off.
    pub(crate) auth: Option<Auth>,
    /// The home, when this server is a region (`--upstream`).
    pub(crate) upstream: Option<Upstream>,
    /// Presence to the other nodes, on storage several nodes share.
    pub(crate) presence: Option<PresencePublisher>,
    /// Cancelled when the server starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Every connection and document task, to wait for on shutdown.
    pub(crate) tasks: TaskTracker,
    /// Open WebSocket connections.
    pub(crate) connections: AtomicUsize,
    next_conn: AtomicU64,
}

impl Services {
    pub(crate) fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        queue: CommitQueue,
        metrics: Arc<Metrics>,
        auth: Option<Auth>,
        upstream: Option<Upstream>,
    ) -> Services {
        let presence = storage
            .is_shared()
            .then(|| PresencePublisher::start(storage.clone()));
        Services {
            presence,
            config,
            storage,
            queue,
            metrics,
            auth,
            upstream,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        }
    }

    /// A fresh connection id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
