//! The registry of open documents. It does not start actors itself: whoever
//! opens a document passes the function that spawns its actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ot_protocol::DocId;

use super::mailbox::{DocCommand, DocHandle};

struct Entry {
    actor_id: u64,
    handle: DocHandle,
}

/// The open documents, by id. A document's actor removes itself when idle,
/// under this lock, so a join never reaches an actor that is going away
/// without being told to retry.
#[derive(Default)]
pub(crate) struct Registry {
    docs: Mutex<HashMap<DocId, Entry>>,
    next_actor: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DocId, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single insert/remove), so recover from poisoning.
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The actor of `doc`; if none is running, `spawn(actor_id)` starts one
    /// (under the lock, so there is never more than one).
    pub(crate) fn open(&self, doc: &DocId, spawn: impl FnOnce(u64) -> DocHandle) -> DocHandle {
        let mut docs = self.lock();
        if let Some(entry) = docs.get(doc) {
            return entry.handle.clone();
        }
        let actor_id = self.next_actor.fetch_add(1, Ordering::Relaxed);
        let handle = spawn(actor_id);
        docs.insert(
            doc.clone(),
            Entry {
                actor_id,
                handle: handle.clone(),
            },
        );
        handle
    }

    /// The actor of `doc` if it is loaded.
    pub(crate) fn get(&self, doc: &DocId) -> Option<DocHandle> {
        self.lock().get(doc).map(|e| e.handle.clone())
    }

    /// Remove `doc`'s entry if it belongs to `actor_id` and `idle()` holds (checked under the lock).
    pub(crate) fn remove_if(
        &self,
        doc: &DocId,
        actor_id: u64,
        idle: impl FnOnce() -> bool,
    ) -> bool {
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
    pub(crate) fn remove(&self, doc: &DocId, actor_id: u64) {
        self.remove_if(doc, actor_id, || true);
    }

    /// Tell every open document to commit, ack and close; wait until they have.
    pub(crate) async fn shutdown_all(&self) {
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
