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
    ///
    /// An entry whose actor has died (its task panicked: its mailbox is
    /// closed, which a living actor never does while registered, as it
    /// removes itself before it stops) is replaced by a new actor, which
    /// loads the document from storage again.
    pub(crate) fn open(&self, doc: &DocId, spawn: impl FnOnce(u64) -> DocHandle) -> DocHandle {
        let mut docs = self.lock();
        if let Some(entry) = docs.get(doc) {
            if !entry.handle.tx.is_closed() {
                return entry.handle.clone();
            }
            tracing::error!(doc = %doc, actor = entry.actor_id, "the document's actor died; starting a new one");
            docs.remove(doc);
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

    /// The actor of `doc` if it is loaded (and alive: a dead actor's entry
    /// is removed, see [`open`](Self::open)).
    pub(crate) fn get(&self, doc: &DocId) -> Option<DocHandle> {
        let mut docs = self.lock();
        let entry = docs.get(doc)?;
        if entry.handle.tx.is_closed() {
            tracing::error!(doc = %doc, actor = entry.actor_id, "the document's actor died; forgetting it");
            docs.remove(doc);
            return None;
        }
        Some(entry.handle.clone())
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

    /// Every open document's mailbox.
    pub(crate) fn handles(&self) -> Vec<(DocId, DocHandle)> {
        self.lock()
            .iter()
            .map(|(doc, entry)| (doc.clone(), entry.handle.clone()))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn doc() -> DocId {
        DocId::parse("doc").unwrap()
    }

    /// An actor that serves its mailbox until it panics (the test's
    /// failpoint): on `Shutdown` it panics, dropping its mailbox as a
    /// panicking actor task does.
    fn spawn_panicking(spawned: &std::sync::atomic::AtomicUsize) -> DocHandle {
        spawned.fetch_add(1, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::channel::<DocCommand>(4);
        tokio::spawn(async move {
            while let Some(command) = rx.recv().await {
                if let DocCommand::Shutdown(_) = command {
                    panic!("failpoint: the actor panics");
                }
            }
        });
        DocHandle { tx }
    }

    #[tokio::test]
    async fn a_dead_actor_is_replaced_on_the_next_open() {
        let registry = Registry::default();
        let spawned = std::sync::atomic::AtomicUsize::new(0);
        let first = registry.open(&doc(), |_| spawn_panicking(&spawned));
        // A living actor is reused.
        let again = registry.open(&doc(), |_| spawn_panicking(&spawned));
        assert!(first.tx.same_channel(&again.tx));
        assert_eq!(spawned.load(Ordering::SeqCst), 1);

        let (done, _) = tokio::sync::oneshot::channel();
        first.tx.send(DocCommand::Shutdown(done)).await.unwrap();
        // Bounded wait for the task to die and drop its mailbox.
        tokio::time::timeout(std::time::Duration::from_secs(10), first.tx.closed())
            .await
            .expect("the actor's mailbox closes when it panics");

        assert!(registry.get(&doc()).is_none(), "get forgets a dead actor");
        let reopened = registry.open(&doc(), |_| spawn_panicking(&spawned));
        assert_eq!(spawned.load(Ordering::SeqCst), 2, "a new actor was started");
        assert!(!reopened.tx.is_closed());
        assert!(registry.get(&doc()).is_some());
    }

    #[tokio::test]
    async fn a_dead_actor_is_replaced_by_open_without_a_get_first() {
        let registry = Registry::default();
        let spawned = std::sync::atomic::AtomicUsize::new(0);
        let first = registry.open(&doc(), |_| spawn_panicking(&spawned));
        let (done, _) = tokio::sync::oneshot::channel();
        first.tx.send(DocCommand::Shutdown(done)).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), first.tx.closed())
            .await
            .expect("the actor's mailbox closes when it panics");
        let reopened = registry.open(&doc(), |_| spawn_panicking(&spawned));
        assert_eq!(spawned.load(Ordering::SeqCst), 2);
        assert!(!reopened.tx.same_channel(&first.tx));
    }
}
