//! Server-wide shared state and the registry of open documents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::document::{self, DocCommand, DocHandle};
use crate::metrics::Metrics;
use crate::storage::{CommitQueue, Storage};

/// Everything the request handlers and document actors share.
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// Durable storage.
    pub storage: Arc<dyn Storage>,
    /// The group-commit queue in front of `storage`.
    pub queue: CommitQueue,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Open documents.
    pub registry: Registry,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection and document task, to wait for on shutdown.
    pub tasks: TaskTracker,
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    next_conn: AtomicU64,
}

impl Shared {
    /// Bundle the shared state.
    pub fn new(
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
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

struct Entry {
    actor_id: u64,
    handle: DocHandle,
}

/// The open documents, by id. A document's actor removes itself when idle,
/// under this lock, so a join never reaches an actor that is going away
/// without being told to retry.
#[derive(Default)]
pub struct Registry {
    docs: Mutex<HashMap<String, Entry>>,
    next_actor: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single insert/remove), so recover from poisoning.
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The actor of `doc`, started (and loaded from storage) if needed.
    pub fn open(&self, shared: &Arc<Shared>, doc: &str) -> DocHandle {
        let mut docs = self.lock();
        if let Some(entry) = docs.get(doc) {
            return entry.handle.clone();
        }
        let actor_id = self.next_actor.fetch_add(1, Ordering::Relaxed);
        let handle = document::spawn(shared.clone(), doc.to_owned(), actor_id);
        docs.insert(
            doc.to_owned(),
            Entry {
                actor_id,
                handle: handle.clone(),
            },
        );
        handle
    }

    /// The actor of `doc` if it is loaded.
    pub fn get(&self, doc: &str) -> Option<DocHandle> {
        self.lock().get(doc).map(|e| e.handle.clone())
    }

    /// Remove `doc`'s entry if it belongs to `actor_id` and `idle()` holds (checked under the lock).
    pub fn remove_if(&self, doc: &str, actor_id: u64, idle: impl FnOnce() -> bool) -> bool {
        let mut docs = self.lock();
        match docs.get(doc) {
            Some(entry) if entry.actor_id == actor_id && idle() => {
                docs.remove(doc);
                true
            }
            _ => false,
        }
    }

    /// Remove `doc`'s entry if it belongs to `actor_id`.
    pub fn remove(&self, doc: &str, actor_id: u64) {
        self.remove_if(doc, actor_id, || true);
    }

    /// Tell every open document to commit, ack and close; wait until they have.
    pub async fn shutdown_all(&self) {
        let handles: Vec<DocHandle> = self.lock().values().map(|e| e.handle.clone()).collect();
        let mut waits = Vec::new();
        for handle in handles {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            if handle.tx.send(DocCommand::Shutdown(done_tx)).await.is_ok() {
                waits.push(done_rx);
            }
        }
        for wait in waits {
            let _ = wait.await;
        }
    }
}
