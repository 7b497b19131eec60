//! Group commit: one dedicated thread writes everything queued while the
//! previous commit ran in a single [`Storage::commit`].
//!
//! Requests ([`CommitQueue::submit`]) never block. The thread takes the first
//! queued request, drains whatever else is queued (up to [`MAX_BATCH_ITEMS`]
//! items), checks each request's ops against its document's last durable
//! revision, commits the accepted requests together and then calls every
//! callback in submission order.
//!
//! Continuity: the thread checks each request against its documents' last
//! durable revisions ([`Storage::last_rev`], plus the requests before it in
//! the batch). A request whose ops do not continue them (typically because an earlier
//! request of the same document failed) is refused on its own with
//! [`StorageError::Gap`], so one document's failure never spreads to another
//! document nor leaves a hole in its log. If a batch of several requests
//! fails as a whole, each request is retried in a commit of its own, so that
//! only the requests that fail by themselves get the error.
//!
//! In place: [`CommitQueue::commit`] commits on the calling thread instead
//! when the storage can do so cheaply and at once ([`Storage::try_commit`]:
//! SQLite with relaxed durability) and none of the request's documents has
//! a request queued or being committed. The queue counts those per document
//! from the submit until the callback has returned, so a commit in place
//! never overtakes an earlier request of its document (after a failed
//! commit, a queued request of the failed generation would otherwise
//! continue the new revision; in order, the continuity check refuses it).
//!
//! Ingests: once [`Storage::backlog`] reaches [`CommitOptions::ingest_every`] items after a
//! group commit, or nothing has arrived for [`IDLE_INGEST_AFTER`], the commit
//! thread wakes a second thread (`ot-ingest`) that calls [`Storage::ingest`]
//! (for SQLite: move the commit log's items into the tables). Commits go on
//! meanwhile, as far as the storage allows (SQLite's never wait for an ingest).
//! So that an ingest that falls behind (a slow disk, a busy database) cannot
//! let the backlog (memory, and the wait of the next read) grow without
//! bound, the commit thread ingests on its own thread, and commits wait, once the
//! backlog reaches [`MAX_BACKLOG_FACTOR`] × `ingest_every` items.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use super::{check_continuity, Storage, StorageError, WriteItem};

/// Called once per request with the outcome of its commit: `Ok(())` once its
/// items are durable, or the error (nothing of the request was written).
pub type CommitCallback = Box<dyn FnOnce(Result<(), Arc<StorageError>>) + Send>;

/// Called after every [`Storage::commit`] with its duration and number of items
/// (feed a latency histogram with it).
pub type CommitObserver = Arc<dyn Fn(Duration, usize) + Send + Sync>;

/// At most this many items are drained into one group commit (a single larger
/// request is still committed whole).
pub const MAX_BATCH_ITEMS: usize = 4096;

/// The default [`CommitOptions::ingest_every`]: enough that each document's
/// pages are written once for many ops, few enough that a read (which waits
/// for everything to be ingested) waits only a few milliseconds.
pub const DEFAULT_INGEST_EVERY: usize = 4096;

/// The commit thread ingests on its own thread (commits wait) once this many times
/// `ingest_every` items wait.
pub const MAX_BACKLOG_FACTOR: usize = 16;

/// How a [`CommitQueue`] runs.
#[derive(Clone)]
pub struct CommitOptions {
    /// Ingest (see [`Storage::ingest`]) once the backlog reaches this many items.
    pub ingest_every: usize,
    /// Called after every commit with its duration and number of items (feed
    /// a latency histogram with it).
    pub on_commit: Option<CommitObserver>,
    /// Called after every successful ingest with its duration and the
    /// number of items it moved.
    pub on_ingest: Option<CommitObserver>,
}

impl Default for CommitOptions {
    fn default() -> Self {
        CommitOptions {
            ingest_every: DEFAULT_INGEST_EVERY,
            on_commit: None,
            on_ingest: None,
        }
    }
}

impl CommitOptions {
    fn ingest_threshold(&self) -> usize {
        self.ingest_every.max(1)
    }

    fn max_backlog(&self) -> usize {
        self.ingest_threshold().saturating_mul(MAX_BACKLOG_FACTOR)
    }
}

/// With a backlog, ingest once no request has arrived for this long.
const IDLE_INGEST_AFTER: Duration = Duration::from_millis(50);

/// After a failed ingest, wait this long before trying again (commits
/// go on meanwhile; the backlog only makes reads slower).
const INGEST_RETRY_AFTER: Duration = Duration::from_secs(10);

enum Msg {
    Write(Request),
    Flush(mpsc::SyncSender<()>),
}

/// How a request given to [`CommitQueue::commit`] went.
#[derive(Debug)]
pub enum Committed {
    /// Committed in place on the calling thread, with this outcome; the
    /// callback was dropped without being called.
    Now(Result<(), Arc<StorageError>>),
    /// Queued as by [`CommitQueue::submit`]: the callback gets the outcome.
    Queued,
}

/// Per document, the requests submitted and not yet called back, plus the
/// commits in place running: a document's request is only committed in place
/// when it has none (it would overtake them otherwise).
#[derive(Default)]
struct InFlight(Mutex<HashMap<String, usize>>);

impl InFlight {
    fn add(&self, docs: &[String]) {
        let mut counts = lock(&self.0);
        for doc in docs {
            *counts.entry(doc.clone()).or_default() += 1;
        }
    }

    /// [`add`](Self::add) if none of `docs` has anything in flight.
    fn add_if_idle(&self, docs: &[String]) -> bool {
        let mut counts = lock(&self.0);
        if docs.iter().any(|doc| counts.contains_key(doc)) {
            return false;
        }
        for doc in docs {
            counts.insert(doc.clone(), 1);
        }
        true
    }

    fn remove(&self, docs: &[String]) {
        let mut counts = lock(&self.0);
        for doc in docs {
            if let Some(count) = counts.get_mut(doc) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(doc);
                }
            }
        }
    }
}

/// The distinct documents `items` write to.
fn docs_of(items: &[WriteItem]) -> Vec<String> {
    let mut docs: Vec<String> = Vec::new();
    for item in items {
        if !docs.iter().any(|d| d == item.doc()) {
            docs.push(item.doc().to_owned());
        }
    }
    docs
}

struct Inner {
    /// `None` once shut down.
    tx: Mutex<Option<Sender<Msg>>>,
    /// For commits in place ([`CommitQueue::commit`]).
    storage: Arc<dyn Storage>,
    in_flight: Arc<InFlight>,
    options: CommitOptions,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
}

/// A handle to the group-commit thread. Cloning it is cheap; when the last
/// handle is dropped the thread commits everything already submitted and
/// exits (the drop waits for it).
#[derive(Clone)]
pub struct CommitQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CommitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitQueue")
            .field("running", &lock(&self.inner.tx).is_some())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CommitQueue {
    /// Start the commit thread on `storage`.
    pub fn start(storage: Arc<dyn Storage>) -> CommitQueue {
        Self::start_with(storage, CommitOptions::default())
    }

    /// Start the commit thread on `storage`; `observer` is called after every
    /// commit with its duration and number of items.
    pub fn start_with_observer(storage: Arc<dyn Storage>, observer: CommitObserver) -> CommitQueue {
        Self::start_with(
            storage,
            CommitOptions {
                on_commit: Some(observer),
                ..CommitOptions::default()
            },
        )
    }

    /// Start the commit thread on `storage` with `options`.
    pub fn start_with(storage: Arc<dyn Storage>, options: CommitOptions) -> CommitQueue {
        let (tx, rx) = mpsc::channel();
        let in_flight = Arc::new(InFlight::default());
        let mut worker = Worker {
            storage: Arc::clone(&storage),
            options: options.clone(),
            in_flight: Arc::clone(&in_flight),
        };
        let thread = std::thread::Builder::new()
            .name("ot-commit".to_owned())
            .spawn(move || worker.run(rx));
        let (thread, thread_id) = match thread {
            Ok(handle) => {
                let id = handle.thread().id();
                (Some(handle), id)
            }
            Err(e) => {
                // Without a thread every request fails with `Closed`.
                tracing::error!(error = %e, "cannot start the commit thread");
                return CommitQueue {
                    inner: Arc::new(Inner {
                        tx: Mutex::new(None),
                        storage,
                        in_flight,
                        options,
                        thread: Mutex::new(None),
                        thread_id: std::thread::current().id(),
                    }),
                };
            }
        };
        CommitQueue {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                storage,
                in_flight,
                options,
                thread: Mutex::new(thread),
                thread_id,
            }),
        }
    }

    /// Queue `items` for the next group commit; `done` is called (on the
    /// commit thread) once they are durable or have failed. Never blocks.
    ///
    /// Requests are committed and their callbacks called in submission order.
    /// An empty `items` is a barrier: `done(Ok(()))` runs once everything
    /// submitted before it has been committed (or has failed). After
    /// [`shutdown`](Self::shutdown), `done` is called at once with
    /// [`StorageError::Closed`].
    pub fn submit(&self, items: Vec<WriteItem>, done: CommitCallback) {
        let docs = docs_of(&items);
        self.inner.in_flight.add(&docs);
        let request = Request { items, docs, done };
        let rejected = {
            let tx = lock(&self.inner.tx);
            match tx.as_ref() {
                Some(tx) => match tx.send(Msg::Write(request)) {
                    Ok(()) => None,
                    Err(mpsc::SendError(msg)) => Some(msg),
                },
                None => Some(Msg::Write(request)),
            }
        };
        if let Some(Msg::Write(request)) = rejected {
            self.inner.in_flight.remove(&request.docs);
            (request.done)(Err(Arc::new(StorageError::Closed)));
        }
    }

    /// Commit `items` in place on the calling thread when that is cheap and
    /// safe, else [`submit`](Self::submit) them with `done`.
    ///
    /// In place means: the storage commits without waiting and cheaply
    /// ([`Storage::try_commit`]: for SQLite, with relaxed durability, one
    /// write to the commit log when no group commit holds it), its backlog
    /// is below the ingest threshold (so that the commit thread has an ingest
    /// started soon), and none of the documents of `items` has a request
    /// still queued or being committed (these items would overtake it: after
    /// a failed commit, a queued request of the failed generation could then
    /// continue them). Saves two thread switches per commit.
    ///
    /// Callers must commit each document's requests from one thread, in order.
    pub fn commit(&self, items: Vec<WriteItem>, done: CommitCallback) -> Committed {
        match self.commit_in_place(&items) {
            Some(result) => Committed::Now(result),
            None => {
                self.submit(items, done);
                Committed::Queued
            }
        }
    }

    /// The in-place half of [`commit`](Self::commit): `None` if it cannot
    /// be done (nothing was written).
    fn commit_in_place(&self, items: &[WriteItem]) -> Option<Result<(), Arc<StorageError>>> {
        if items.is_empty()
            || lock(&self.inner.tx).is_none()
            || self.inner.storage.backlog() >= self.inner.options.ingest_threshold()
        {
            return None;
        }
        let docs = docs_of(items);
        if !self.inner.in_flight.add_if_idle(&docs) {
            return None;
        }
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.inner.storage.try_commit(items)))
            .unwrap_or_else(|_| {
                Some(Err(StorageError::Internal(
                    "the storage commit panicked".into(),
                )))
            });
        self.inner.in_flight.remove(&docs);
        let result = result?;
        if let Some(observer) = &self.inner.options.on_commit {
            observer(started.elapsed(), items.len());
        }
        Some(result.map_err(Arc::new))
    }

    /// Block until everything submitted before this call has been committed
    /// (or has failed) and its callbacks have run. Returns at once when called
    /// on the commit thread itself (from a callback) or after shutdown.
    pub fn flush_blocking(&self) {
        if std::thread::current().id() == self.inner.thread_id {
            return;
        }
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let sent = {
            let tx = lock(&self.inner.tx);
            tx.as_ref()
                .is_some_and(|tx| tx.send(Msg::Flush(reply_tx)).is_ok())
        };
        if sent {
            // An error means the thread is gone: nothing is left to wait for.
            let _ = reply_rx.recv();
        }
    }

    /// Stop accepting requests, commit everything already submitted, and wait
    /// for the commit thread to exit (unless called on the commit thread).
    /// Later submits fail with [`StorageError::Closed`]. Idempotent.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

impl Inner {
    fn stop(&self) {
        // Dropping the only sender ends the thread's loop once it has
        // drained the channel.
        drop(lock(&self.tx).take());
        if std::thread::current().id() == self.thread_id {
            return;
        }
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the commit thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs ingests: the ingest thread's state (and the commit thread's,
/// for its own ingests).
struct IngestRunner {
    storage: Arc<dyn Storage>,
    observer: Option<CommitObserver>,
    /// Set after a failed ingest: do not try again before then.
    paused_until: Option<Instant>,
}

impl IngestRunner {
    fn new(storage: Arc<dyn Storage>, observer: Option<CommitObserver>) -> IngestRunner {
        IngestRunner {
            storage,
            observer,
            paused_until: None,
        }
    }

    /// Ingest on every wake-up; once the commit thread is gone, ingest
    /// what is left (leaving the storage tidy for the next start) and return.
    fn run(mut self, wake: Receiver<()>) {
        while wake.recv().is_ok() {
            self.ingest_if_allowed();
        }
        self.ingest_if_allowed();
    }

    /// One ingest if anything waits for one, unless an earlier failure
    /// paused ingests (then the backlog only makes reads slower).
    fn ingest_if_allowed(&mut self) {
        if self.storage.backlog() == 0
            || self
                .paused_until
                .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.storage.ingest()))
            .unwrap_or_else(|_| Err(StorageError::Internal("the ingest panicked".into())));
        match result {
            Ok(moved) => {
                self.paused_until = None;
                let elapsed = started.elapsed();
                tracing::debug!(moved, ?elapsed, "ingested");
                if let Some(observer) = &self.observer {
                    observer(elapsed, moved);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storage ingest failed; retrying later");
                self.paused_until = Some(Instant::now() + INGEST_RETRY_AFTER);
            }
        }
    }
}

/// One submitted request.
struct Request {
    items: Vec<WriteItem>,
    /// The documents of `items` (counted in [`InFlight`] until called back).
    docs: Vec<String>,
    done: CommitCallback,
}

/// The commit thread's state.
struct Worker {
    storage: Arc<dyn Storage>,
    options: CommitOptions,
    in_flight: Arc<InFlight>,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Msg>) {
        let (wake_tx, wake_rx) = mpsc::sync_channel::<()>(1);
        let runner =
            || IngestRunner::new(Arc::clone(&self.storage), self.options.on_ingest.clone());
        let background = runner();
        // For the commit thread's own ingests (at the backlog cap).
        let foreground = Mutex::new(runner());
        std::thread::scope(|scope| {
            let ingest = std::thread::Builder::new()
                .name("ot-ingest".to_owned())
                .spawn_scoped(scope, move || background.run(wake_rx));
            match ingest {
                // A full channel means a wake-up is already pending.
                Ok(_) => {
                    self.commit_loop(
                        &rx,
                        &|| {
                            let _ = wake_tx.try_send(());
                        },
                        &|| lock(&foreground).ingest_if_allowed(),
                    );
                    // Closing the channel tells the ingest thread to finish.
                    drop(wake_tx);
                }
                Err(e) => {
                    // Without it, this thread ingests (commits wait).
                    tracing::error!(error = %e, "cannot start the ingest thread");
                    let ingest = || lock(&foreground).ingest_if_allowed();
                    self.commit_loop(&rx, &ingest, &ingest);
                    ingest();
                }
            }
            // The scope waits for the ingest thread to ingest what is left.
        });
    }

    /// Group commits until the queue closes; `wake` asks for an ingest,
    /// `ingest_now` ingests on this thread.
    fn commit_loop(&mut self, rx: &Receiver<Msg>, wake: &dyn Fn(), ingest_now: &dyn Fn()) {
        loop {
            let first = if self.storage.backlog() > 0 {
                match rx.recv_timeout(IDLE_INGEST_AFTER) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => {
                        wake();
                        match rx.recv() {
                            Ok(msg) => msg,
                            Err(_) => break,
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            };
            let mut requests = Vec::new();
            let mut flushes = Vec::new();
            let mut items = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Write(request) => {
                        items += request.items.len();
                        requests.push(request);
                    }
                    Msg::Flush(reply) => flushes.push(reply),
                }
                if items < MAX_BATCH_ITEMS {
                    next = rx.try_recv().ok();
                }
            }
            if !requests.is_empty() {
                self.process(requests);
            }
            for reply in flushes {
                let _ = reply.send(());
            }
            let backlog = self.storage.backlog();
            if backlog >= self.options.max_backlog() {
                tracing::debug!(
                    backlog,
                    "the ingest is behind: ingesting on the commit thread"
                );
                ingest_now();
            } else if backlog >= self.options.ingest_threshold() {
                wake();
            }
        }
    }

    /// Commit one batch of requests and call their callbacks in order.
    fn process(&mut self, mut requests: Vec<Request>) {
        let mut outcomes: Vec<Option<Result<(), Arc<StorageError>>>> =
            requests.iter().map(|_| None).collect();
        // Check continuity request by request against the durable revisions
        // plus the requests accepted before in this batch.
        let mut batch_revs: HashMap<String, u64> = HashMap::new();
        let mut accepted = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match self.check(&request.items, &batch_revs) {
                Ok(revs) => {
                    batch_revs.extend(revs);
                    accepted.push(i);
                }
                Err(e) => outcomes[i] = Some(Err(Arc::new(e))),
            }
        }
        // Move the accepted items into one slice, remembering each request's range.
        let mut all_items = Vec::new();
        let mut ranges = Vec::with_capacity(accepted.len());
        for &i in &accepted {
            let start = all_items.len();
            all_items.append(&mut requests[i].items);
            ranges.push((i, start..all_items.len()));
        }

        match self.commit(&all_items) {
            Ok(()) => {
                for &i in &accepted {
                    outcomes[i] = Some(Ok(()));
                }
            }
            Err(e) => {
                let nonempty = ranges.iter().filter(|(_, r)| !r.is_empty()).count();
                if nonempty <= 1 {
                    let e = Arc::new(e);
                    for &(i, ref range) in &ranges {
                        outcomes[i] = Some(if range.is_empty() {
                            Ok(())
                        } else {
                            Err(Arc::clone(&e))
                        });
                    }
                } else {
                    tracing::warn!(
                        error = %e,
                        requests = nonempty,
                        "group commit failed: retrying its requests one by one"
                    );
                    for (i, range) in ranges {
                        outcomes[i] = Some(self.commit_alone(&all_items[range]));
                    }
                }
            }
        }

        for (request, outcome) in requests.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or(Err(Arc::new(StorageError::Closed)));
            let done = request.done;
            if catch_unwind(AssertUnwindSafe(move || done(outcome))).is_err() {
                tracing::error!("a commit callback panicked");
            }
            self.in_flight.remove(&request.docs);
        }
    }

    /// Commit one request's items by themselves (after a failed group commit).
    fn commit_alone(&mut self, items: &[WriteItem]) -> Result<(), Arc<StorageError>> {
        if items.is_empty() {
            return Ok(());
        }
        self.check(items, &HashMap::new()).map_err(Arc::new)?;
        self.commit(items).map_err(Arc::new)
    }

    /// The new last revisions if `items` continue the known ones (`batch`
    /// first, then storage).
    fn check(
        &self,
        items: &[WriteItem],
        batch: &HashMap<String, u64>,
    ) -> Result<Vec<(String, u64)>, StorageError> {
        check_continuity(items, |doc| match batch.get(doc) {
            Some(&last) => Ok(last),
            None => self.storage.last_rev(doc),
        })
    }

    /// One storage commit, timed and observed; a panic becomes an error.
    fn commit(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        if items.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.storage.commit(items)))
            .unwrap_or_else(|_| Err(StorageError::Internal("the storage commit panicked".into())));
        if let Some(observer) = &self.options.on_commit {
            observer(started.elapsed(), items.len());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DocSummary, Durability, LoadedDoc, SqliteStorage, StoredOp, WriteItem};
    use ot_core::history::{DocumentHistory, OpHash, Receipt};
    use ot_core::Operation;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Condvar;
    use tempfile::TempDir;

    /// A storage wrapper that counts commits, can hold them until released,
    /// and fails every commit touching a "bad" document (and the next commit
    /// after [`Probe::fail_next`]).
    struct Probe {
        inner: SqliteStorage,
        commits: AtomicUsize,
        fail_next: AtomicBool,
        held: Mutex<bool>,
        released: Condvar,
        entered: Mutex<Option<mpsc::Sender<()>>>,
        delay: Duration,
    }

    impl Probe {
        fn new(dir: &TempDir, delay: Duration) -> Arc<Probe> {
            Arc::new(Probe {
                inner: SqliteStorage::open(dir.path(), Durability::Relaxed).unwrap(),
                commits: AtomicUsize::new(0),
                fail_next: AtomicBool::new(false),
                held: Mutex::new(false),
                released: Condvar::new(),
                entered: Mutex::new(None),
                delay,
            })
        }

        /// Hold the next commits; returns a receiver signalled when one starts.
        fn hold(&self) -> mpsc::Receiver<()> {
            *lock(&self.held) = true;
            let (tx, rx) = mpsc::channel();
            *lock(&self.entered) = Some(tx);
            rx
        }

        fn release(&self) {
            *lock(&self.held) = false;
            self.released.notify_all();
        }

        /// Make the next commit fail (as a full disk would).
        fn fail_next(&self) {
            self.fail_next.store(true, Ordering::SeqCst);
        }

        fn injected_failure(&self, items: &[WriteItem]) -> bool {
            self.fail_next.swap(false, Ordering::SeqCst)
                || items.iter().any(|i| i.doc().starts_with("bad"))
        }
    }

    impl Storage for Probe {
        fn commit(&self, items: &[WriteItem]) -> Result<(), StorageError> {
            if let Some(tx) = lock(&self.entered).as_ref() {
                let _ = tx.send(());
            }
            let mut held = lock(&self.held);
            while *held {
                held = self.released.wait(held).unwrap();
            }
            drop(held);
            std::thread::sleep(self.delay);
            self.commits.fetch_add(1, Ordering::SeqCst);
            if self.injected_failure(items) {
                return Err(StorageError::Internal("injected failure".into()));
            }
            self.inner.commit(items)
        }
        fn try_commit(&self, items: &[WriteItem]) -> Option<Result<(), StorageError>> {
            if *lock(&self.held) {
                return None; // as busy as a held commit
            }
            if self.injected_failure(items) {
                return Some(Err(StorageError::Internal("injected failure".into())));
            }
            let result = self.inner.try_commit(items)?;
            self.commits.fetch_add(1, Ordering::SeqCst);
            Some(result)
        }
        fn last_rev(&self, doc: &str) -> Result<u64, StorageError> {
            self.inner.last_rev(doc)
        }
        fn exists(&self, doc: &str) -> Result<bool, StorageError> {
            self.inner.exists(doc)
        }
        fn load(&self, doc: &str) -> Result<Option<LoadedDoc>, StorageError> {
            self.inner.load(doc)
        }
        fn ops(
            &self,
            doc: &str,
            after_rev: u64,
            limit: usize,
        ) -> Result<Vec<StoredOp>, StorageError> {
            self.inner.ops(doc, after_rev, limit)
        }
        fn find_seq(
            &self,
            doc: &str,
            client_id: &str,
            seq: u64,
        ) -> Result<Option<(u64, OpHash)>, StorageError> {
            self.inner.find_seq(doc, client_id, seq)
        }
        fn text_at(&self, doc: &str, rev: u64) -> Result<Option<String>, StorageError> {
            self.inner.text_at(doc, rev)
        }
        fn list(&self) -> Result<Vec<DocSummary>, StorageError> {
            self.inner.list()
        }
        fn conflicts(
            &self,
            doc: &str,
            after_rev: u64,
            limit: usize,
        ) -> Result<Vec<StoredOp>, StorageError> {
            self.inner.conflicts(doc, after_rev, limit)
        }
        fn epoch(&self) -> u64 {
            self.inner.epoch()
        }
        fn backlog(&self) -> usize {
            self.inner.backlog()
        }
        fn ingest(&self) -> Result<usize, StorageError> {
            self.inner.ingest()
        }
        fn close_clean(&self) -> Result<(), StorageError> {
            self.inner.close_clean()
        }
    }

    /// Generates consecutive append ops for one document.
    struct Doc {
        id: String,
        history: DocumentHistory,
        /// What each op appends.
        text: &'static str,
    }

    impl Doc {
        fn new(id: &str) -> Doc {
            Doc {
                id: id.to_owned(),
                history: DocumentHistory::new(),
                text: "x",
            }
        }

        fn next(&mut self) -> WriteItem {
            let h = &mut self.history;
            let len = h.text().len_chars();
            let seq = h.last_seq("w") + 1;
            let op = Operation::insert_at(len, len, self.text).unwrap();
            match h.receive("w", seq, h.revision(), op).unwrap() {
                Receipt::Applied { applied, received } => WriteItem::Op {
                    doc: self.id.clone(),
                    op: StoredOp::from_applied(&applied, received, 0),
                    len_after: h.text().len_chars() as u64,
                },
                other => panic!("{other:?}"),
            }
        }
    }

    type Outcomes = Arc<Mutex<Vec<(usize, Result<(), String>)>>>;

    /// A callback recording `(tag, outcome)`.
    fn record(outcomes: &Outcomes, tag: usize) -> CommitCallback {
        let outcomes = Arc::clone(outcomes);
        Box::new(move |r| lock(&outcomes).push((tag, r.map_err(|e| e.to_string()))))
    }

    #[test]
    fn groups_concurrent_submits_and_calls_back_in_order() {
        let dir = TempDir::new().unwrap();
        let probe = Probe::new(&dir, Duration::from_millis(2));
        let items_seen = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&items_seen);
        let queue = CommitQueue::start_with_observer(
            probe.clone(),
            Arc::new(move |_elapsed, n| {
                seen.fetch_add(n, Ordering::SeqCst);
            }),
        );
        // One submitter: callbacks come back in submission order.
        let outcomes: Outcomes = Arc::default();
        let mut doc = Doc::new("solo");
        for i in 0..300 {
            queue.submit(vec![doc.next()], record(&outcomes, i));
        }
        queue.flush_blocking();
        let got = lock(&outcomes).clone();
        assert_eq!(got, (0..300).map(|i| (i, Ok(()))).collect::<Vec<_>>());
        let solo_commits = probe.commits.load(Ordering::SeqCst);
        assert!(
            solo_commits < 300,
            "{solo_commits} commits for 300 requests"
        );

        // Eight submitters on their own documents, pipelined.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let outcomes: Outcomes = Arc::default();
                    let mut doc = Doc::new(&format!("doc{t}"));
                    for i in 0..100 {
                        let mut items = vec![doc.next()];
                        if i % 10 == 9 {
                            items.push(WriteItem::Snapshot {
                                doc: doc.id.clone(),
                                snapshot: doc.history.snapshot(),
                            });
                        }
                        queue.submit(items, record(&outcomes, i));
                    }
                    queue.flush_blocking();
                    let got = lock(&outcomes).clone();
                    assert_eq!(got, (0..100).map(|i| (i, Ok(()))).collect::<Vec<_>>());
                    doc
                })
            })
            .collect();
        let docs: Vec<Doc> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let commits = probe.commits.load(Ordering::SeqCst) - solo_commits;
        assert!(commits < 800, "{commits} commits for 800 requests");
        for doc in &docs {
            let loaded = probe.load(&doc.id).unwrap().unwrap();
            assert_eq!(loaded.snapshot.rev, 100);
            let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
            assert_eq!(rebuilt.text().to_string(), "x".repeat(100));
        }
        assert_eq!(probe.last_rev("solo").unwrap(), 300);
        assert_eq!(items_seen.load(Ordering::SeqCst), 300 + 800 + 80);
    }

    #[test]
    fn one_documents_failure_does_not_fail_another() {
        let dir = TempDir::new().unwrap();
        let probe = Probe::new(&dir, Duration::ZERO);
        let queue = CommitQueue::start(probe.clone());
        let outcomes: Outcomes = Arc::default();
        let mut a = Doc::new("a");
        let mut b = Doc::new("b");
        let mut bad = Doc::new("bad");
        let mut c = Doc::new("c");

        // Hold the first commit so that everything after it queues up into one batch.
        let entered = probe.hold();
        queue.submit(vec![a.next()], record(&outcomes, 0));
        entered.recv().unwrap();
        queue.submit(vec![a.next()], record(&outcomes, 1));
        let _skipped = b.next();
        queue.submit(vec![b.next()], record(&outcomes, 2)); // b rev 2: gap
        queue.submit(vec![bad.next()], record(&outcomes, 3)); // fails in storage
        queue.submit(vec![bad.next()], record(&outcomes, 4)); // then a gap
        queue.submit(vec![c.next(), c.next()], record(&outcomes, 5));
        queue.submit(Vec::new(), record(&outcomes, 6)); // a barrier
        queue.submit(vec![a.next()], record(&outcomes, 7));
        probe.release();
        queue.flush_blocking();

        let got = lock(&outcomes).clone();
        let tags: Vec<usize> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, (0..8).collect::<Vec<_>>());
        for (tag, outcome) in &got {
            match tag {
                2 => assert_eq!(
                    outcome.as_ref().unwrap_err(),
                    "document \"b\": expected revision 1 but got 2"
                ),
                3 => assert!(outcome.as_ref().unwrap_err().contains("injected")),
                4 => assert_eq!(
                    outcome.as_ref().unwrap_err(),
                    "document \"bad\": expected revision 1 but got 2"
                ),
                _ => assert_eq!(outcome, &Ok(()), "request {tag}"),
            }
        }
        assert_eq!(probe.last_rev("a").unwrap(), 3);
        assert_eq!(probe.last_rev("c").unwrap(), 2);
        assert!(!probe.exists("b").unwrap());
        assert!(!probe.exists("bad").unwrap());

        // Later requests of a document after its failure are refused until
        // they continue the durable log again; others carry on.
        queue.submit(vec![b.next()], record(&outcomes, 8)); // b rev 3: gap
        let mut b2 = Doc::new("b");
        queue.submit(vec![b2.next()], record(&outcomes, 9)); // b rev 1: fine
        queue.submit(vec![a.next()], record(&outcomes, 10));
        queue.flush_blocking();
        let got = lock(&outcomes).clone();
        assert!(got[8].1.is_err());
        assert_eq!(got[9..], [(9, Ok(())), (10, Ok(()))]);
        assert_eq!(probe.last_rev("b").unwrap(), 1);
    }

    /// After a failed commit the document's actor reloads from storage and
    /// commits its next op as the new revision. A request of the failed
    /// generation may still be queued behind the failure: committing the
    /// new op in place would let that stale request continue it, so that an
    /// op computed on a revision that was never stored would be stored.
    #[test]
    fn a_stale_queued_request_is_refused_after_a_failed_commit() {
        let dir = TempDir::new().unwrap();
        let probe = Probe::new(&dir, Duration::ZERO);
        let queue = CommitQueue::start(probe.clone());
        let outcomes: Outcomes = Arc::default();
        // The first generation: "x" at revision 1, "xx" at revision 2.
        let mut old = Doc::new("d");
        let entered = probe.hold();
        let (failed_tx, failed_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let recorder = record(&outcomes, 0);
        queue.submit(
            vec![old.next()],
            Box::new(move |r| {
                recorder(r);
                // The actor hears of the failure and reloads while the commit
                // thread has not taken the next request yet.
                let _ = failed_tx.send(());
                let _ = go_rx.recv_timeout(Duration::from_secs(10));
            }),
        );
        entered.recv().unwrap();
        // Pipelined: revision 2 of the first generation waits in the queue.
        queue.submit(vec![old.next()], record(&outcomes, 1));
        probe.fail_next();
        probe.release();
        failed_rx.recv_timeout(Duration::from_secs(10)).unwrap();

        // The reloaded actor: revision 1 is free again, and its next op
        // takes it (nothing of this generation is on its way to storage).
        // Storage is free, yet it must not be committed in place: it would
        // overtake the stale request.
        let mut new = Doc::new("d");
        new.text = "y";
        match queue.commit(vec![new.next()], record(&outcomes, 2)) {
            Committed::Now(r) => lock(&outcomes).push((2, r.map_err(|e| e.to_string()))),
            Committed::Queued => {}
        }
        go_tx.send(()).unwrap();
        queue.flush_blocking();

        let mut got = lock(&outcomes).clone();
        got.sort_by_key(|(tag, _)| *tag);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].1.as_ref().unwrap_err().contains("injected"));
        assert_eq!(
            got[1].1,
            Err("document \"d\": expected revision 1 but got 2".to_owned()),
            "the stale revision 2 (computed on the failed revision 1) was accepted"
        );
        assert_eq!(got[2].1, Ok(()));
        // Nothing readable holds an op of the failed generation.
        assert_eq!(probe.last_rev("d").unwrap(), 1);
        let loaded = probe.load("d").unwrap().unwrap();
        let rebuilt = DocumentHistory::from_snapshot(loaded.snapshot, loaded.tail).unwrap();
        assert_eq!(rebuilt.text().to_string(), "y");
        assert_eq!(probe.text_at("d", 1).unwrap().as_deref(), Some("y"));
        assert_eq!(probe.ops("d", 0, 10).unwrap().len(), 1);

        // Once nothing of the document is in flight, it is committed in place.
        assert!(matches!(
            queue.commit(vec![new.next()], record(&outcomes, 3)),
            Committed::Now(Ok(()))
        ));
        assert_eq!(probe.last_rev("d").unwrap(), 2);
        assert_eq!(lock(&outcomes).len(), 3, "the callback is not called");
    }

    #[test]
    fn shutdown_commits_everything_then_refuses() {
        let dir = TempDir::new().unwrap();
        let probe = Probe::new(&dir, Duration::from_millis(1));
        let queue = CommitQueue::start(probe.clone());
        let outcomes: Outcomes = Arc::default();
        let mut doc = Doc::new("d");
        for i in 0..50 {
            queue.submit(vec![doc.next()], record(&outcomes, i));
        }
        let other = queue.clone();
        queue.shutdown();
        assert_eq!(lock(&outcomes).len(), 50);
        assert_eq!(probe.last_rev("d").unwrap(), 50);
        other.submit(vec![doc.next()], record(&outcomes, 50));
        assert_eq!(
            lock(&outcomes)[50],
            (50, Err("the commit queue is shut down".to_owned()))
        );
        other.flush_blocking();
        other.shutdown();
    }

    #[test]
    fn dropping_the_last_handle_commits_everything() {
        let dir = TempDir::new().unwrap();
        let probe = Probe::new(&dir, Duration::from_millis(1));
        let outcomes: Outcomes = Arc::default();
        let mut doc = Doc::new("d");
        {
            let queue = CommitQueue::start(probe.clone());
            let clone = queue.clone();
            for i in 0..20 {
                clone.submit(vec![doc.next()], record(&outcomes, i));
            }
            drop(queue);
        }
        assert_eq!(lock(&outcomes).len(), 20);
        assert_eq!(probe.last_rev("d").unwrap(), 20);

        // The last handle may be dropped by a callback, on the commit thread:
        // no deadlock, and the thread then exits by itself.
        let queue = CommitQueue::start(probe.clone());
        let held = queue.clone();
        let (tx, rx) = mpsc::channel();
        queue.submit(
            vec![doc.next()],
            Box::new(move |r| {
                held.flush_blocking(); // returns at once on the commit thread
                drop(held);
                let _ = tx.send(r.is_ok());
            }),
        );
        drop(queue);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        assert_eq!(probe.last_rev("d").unwrap(), 21);
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_queue() {
        let dir = TempDir::new().unwrap();
        let probe = Probe::new(&dir, Duration::ZERO);
        let queue = CommitQueue::start(probe.clone());
        let outcomes: Outcomes = Arc::default();
        let mut doc = Doc::new("d");
        queue.submit(vec![doc.next()], Box::new(|_| panic!("callback bug")));
        queue.submit(vec![doc.next()], record(&outcomes, 1));
        queue.flush_blocking();
        assert_eq!(lock(&outcomes).clone(), vec![(1, Ok(()))]);
    }

    #[test]
    fn an_idle_queue_ingests_in_the_background_and_reports_it() {
        let dir = TempDir::new().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(SqliteStorage::open(dir.path(), Durability::Fsync).unwrap());
        let (ingests_tx, ingests_rx) = mpsc::channel();
        let ingests_tx = Mutex::new(ingests_tx);
        let queue = CommitQueue::start_with(
            Arc::clone(&storage),
            CommitOptions {
                on_ingest: Some(Arc::new(move |_, moved| {
                    let _ = lock(&ingests_tx).send(moved);
                })),
                ..CommitOptions::default()
            },
        );
        let mut doc = Doc::new("d");
        let outcomes: Outcomes = Arc::default();
        for i in 0..3 {
            queue.submit(vec![doc.next(), doc.next()], record(&outcomes, i));
        }
        queue.flush_blocking();
        assert_eq!(lock(&outcomes).len(), 3);
        // Nothing more arrives: after IDLE_INGEST_AFTER the ingest thread
        // moves all six items, and the observer hears of it.
        let moved = ingests_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(moved, 6);
        assert_eq!(storage.backlog(), 0);
        drop(queue);
        assert_eq!(storage.last_rev("d").unwrap(), 6);
    }

    #[test]
    fn commits_wait_for_an_ingest_that_falls_too_far_behind() {
        let dir = TempDir::new().unwrap();
        let sqlite = Arc::new(SqliteStorage::open(dir.path(), Durability::Relaxed).unwrap());
        let storage: Arc<dyn Storage> = Arc::clone(&sqlite) as Arc<dyn Storage>;
        let ingest_every = 8;
        let max_backlog = ingest_every * MAX_BACKLOG_FACTOR;
        let queue = CommitQueue::start_with(
            Arc::clone(&storage),
            CommitOptions {
                ingest_every,
                ..CommitOptions::default()
            },
        );
        let mut doc = Doc::new("d");
        let outcomes: Outcomes = Arc::default();
        // As if ingests could not keep up: they cannot run at all.
        let paused = sqlite.pause_ingests();
        let huge: Vec<WriteItem> = (0..max_backlog).map(|_| doc.next()).collect();
        queue.submit(huge, record(&outcomes, 0));
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&outcomes).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The first request is committed; now the commit thread waits for
        // the backlog to be ingested before it commits anything else.
        queue.submit(vec![doc.next()], record(&outcomes, 1));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(lock(&outcomes).clone(), vec![(0, Ok(()))]);
        assert!(storage.backlog() >= max_backlog);
        drop(paused);
        queue.flush_blocking();
        assert_eq!(lock(&outcomes).clone(), vec![(0, Ok(())), (1, Ok(()))]);
        assert!(storage.backlog() <= 1, "{}", storage.backlog());
        drop(queue);
        assert_eq!(storage.last_rev("d").unwrap(), max_backlog as u64 + 1);
    }

    #[test]
    fn commit_commits_in_place_until_an_ingest_is_due() {
        let dir = TempDir::new().unwrap();
        let sqlite = Arc::new(SqliteStorage::open(dir.path(), Durability::Relaxed).unwrap());
        let storage: Arc<dyn Storage> = Arc::clone(&sqlite) as Arc<dyn Storage>;
        let commits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&commits);
        let queue = CommitQueue::start_with_observer(
            Arc::clone(&storage),
            Arc::new(move |_, _| {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let mut doc = Doc::new("d");
        let outcomes: Outcomes = Arc::default();
        // The commit thread sees no request meanwhile and may ask for an idle
        // ingest: hold it off so that the backlog only grows.
        let paused = sqlite.pause_ingests();
        for i in 0..DEFAULT_INGEST_EVERY {
            assert!(matches!(
                queue.commit(vec![doc.next()], record(&outcomes, i)),
                Committed::Now(Ok(()))
            ));
        }
        assert!(
            lock(&outcomes).is_empty(),
            "callbacks of commits in place are not called"
        );
        assert_eq!(storage.backlog(), DEFAULT_INGEST_EVERY);
        assert_eq!(
            commits.load(Ordering::SeqCst),
            DEFAULT_INGEST_EVERY,
            "observed"
        );
        // Now the commit thread must ingest: the request is queued.
        assert!(matches!(
            queue.commit(vec![doc.next()], record(&outcomes, 0)),
            Committed::Queued
        ));
        queue.flush_blocking();
        assert_eq!(lock(&outcomes).clone(), vec![(0, Ok(()))]);
        drop(paused);
        // The ingest thread ingests right after that commit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while storage.backlog() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(storage.backlog(), 0);
        // A gap is refused like any commit.
        let _skipped = doc.next();
        match queue.commit(vec![doc.next()], record(&outcomes, 1)) {
            Committed::Now(Err(e)) => assert!(matches!(*e, StorageError::Gap { .. }), "{e}"),
            other => panic!("expected a gap, got {other:?}"),
        }
        // After shutdown nothing is committed in place either.
        queue.shutdown();
        assert!(matches!(
            queue.commit(vec![doc.next()], record(&outcomes, 2)),
            Committed::Queued
        ));
        assert_eq!(
            lock(&outcomes).last(),
            Some(&(2, Err("the commit queue is shut down".to_owned())))
        );
        assert_eq!(
            storage.last_rev("d").unwrap(),
            DEFAULT_INGEST_EVERY as u64 + 1
        );
    }

    #[test]
    fn commit_never_overtakes_a_queued_request_of_its_document() {
        let dir = TempDir::new().unwrap();
        let probe = Probe::new(&dir, Duration::ZERO);
        let queue = CommitQueue::start(probe.clone());
        let outcomes: Outcomes = Arc::default();
        let mut a = Doc::new("a");
        let mut b = Doc::new("b");
        let entered = probe.hold();
        queue.submit(vec![a.next()], record(&outcomes, 0));
        entered.recv().unwrap();
        queue.submit(vec![a.next()], record(&outcomes, 1));
        // The storage is busy: nothing is committed in place.
        assert!(matches!(
            queue.commit(vec![b.next()], record(&outcomes, 2)),
            Committed::Queued
        ));
        probe.release();
        queue.flush_blocking();
        // Free again, and nothing of "b" in flight: in place.
        assert!(matches!(
            queue.commit(vec![b.next()], record(&outcomes, 3)),
            Committed::Now(Ok(()))
        ));
        // A request of "a" behind a held one is queued even when the storage
        // could take it (try_commit is not held by `hold` once released).
        let entered = probe.hold();
        queue.submit(vec![a.next()], record(&outcomes, 4));
        entered.recv().unwrap();
        *lock(&probe.held) = false; // try_commit would go ahead now
        assert!(matches!(
            queue.commit(vec![a.next()], record(&outcomes, 5)),
            Committed::Queued
        ));
        probe.release();
        queue.flush_blocking();
        let got = lock(&outcomes).clone();
        let expected: Vec<(usize, Result<(), String>)> =
            [0, 1, 2, 4, 5].into_iter().map(|t| (t, Ok(()))).collect();
        assert_eq!(got, expected);
        assert_eq!(probe.last_rev("a").unwrap(), 4);
        assert_eq!(probe.last_rev("b").unwrap(), 2);
    }

    /// Commit throughput: `cargo test -p server --release --lib storage::commit::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        for durability in [Durability::Fsync, Durability::Relaxed] {
            for writers in [1usize, 16, 64] {
                let dir = TempDir::new().unwrap();
                let storage: Arc<dyn Storage> =
                    Arc::new(SqliteStorage::open(dir.path(), durability).unwrap());
                let commits = Arc::new(AtomicUsize::new(0));
                let counter = Arc::clone(&commits);
                let queue = CommitQueue::start_with_observer(
                    storage,
                    Arc::new(move |_, _| {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }),
                );
                let per_writer = 4000 / writers;
                let started = Instant::now();
                let threads: Vec<_> = (0..writers)
                    .map(|w| {
                        let queue = queue.clone();
                        std::thread::spawn(move || {
                            // Each writer waits for its ack before its next op,
                            // like a client with one op in flight.
                            let mut doc = Doc::new(&format!("doc{w}"));
                            for _ in 0..per_writer {
                                let (tx, rx) = mpsc::channel();
                                queue.submit(
                                    vec![doc.next()],
                                    Box::new(move |r| {
                                        let _ = tx.send(r.is_ok());
                                    }),
                                );
                                assert!(rx.recv().unwrap());
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
                let elapsed = started.elapsed();
                let ops = per_writer * writers;
                println!(
                    "{durability}: {writers} writers, {ops} ops in {elapsed:?}: {:.0} ops/s, {} commits",
                    ops as f64 / elapsed.as_secs_f64(),
                    commits.load(Ordering::Relaxed)
                );
            }
        }
    }
}
