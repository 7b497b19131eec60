//! Server-wide shared state.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::document::registry::Registry;
use crate::metrics::Metrics;
use crate::storage::{CommitQueue, Storage};

/// Everything the request handlers and document actors share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) storage: Arc<dyn Storage>,
    /// The group-commit queue in front of `storage`.
    pub(crate) queue: CommitQueue,
    pub(crate) metrics: Arc<Metrics>,
    /// Open documents.
    pub(crate) registry: Registry,
    /// Cancelled when the server starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Every connection and document task, to wait for on shutdown.
    pub(crate) tasks: TaskTracker,
    /// Open WebSocket connections.
    pub(crate) connections: AtomicUsize,
    next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        queue: CommitQueue,
        metrics: Arc<Metrics>,
    ) -> Shared {
        Shared {
            config,
            storage,
            queue,
            metrics,
            registry: Registry::default(),
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
