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
//! Generations: a document's requests may carry a generation
//! ([`CommitLane::commit_as`], from [`next_generation`]). Once a request of
//! a document fails, every later request of that document with the same or
//! an older generation is refused with [`StorageError::Stale`] without being
//! committed: it continues ops that are not stored. On storage other nodes
//! write, the continuity check alone could let such a request through
//! (another node may have committed ops at the revisions it continues).
//!
//! In place: [`CommitLane::commit_as`] commits on the calling thread instead
//! when the storage can do so cheaply and at once ([`Storage::try_commit`]:
//! SQLite with relaxed durability) and the document's lane has no request
//! queued or being committed. The lane counts those from the submit until
//! the callback has returned, so a commit in place never overtakes an
//! earlier request of its document (after a failed commit, a queued request
//! of the failed generation would otherwise continue the new revision; in
//! order, the continuity check refuses it).
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
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
pub(crate) const MAX_BATCH_ITEMS: usize = 4096;

/// The default [`CommitOptions::ingest_every`]: enough that each document's
/// pages are written once for many ops, few enough that a read (which waits
/// for everything to be ingested) waits only a few milliseconds.
pub const DEFAULT_INGEST_EVERY: usize = 4096;

/// The commit thread ingests on its own thread (commits wait) once this many times
/// `ingest_every` items wait.
pub(crate) const MAX_BACKLOG_FACTOR: usize = 16;
/// Memory of committed items waiting for an ingest that wakes the ingest
/// thread whatever their number (a few large ops weigh more than thousands
/// of small ones). 8 MiB is about 40,000 typical ops, more than
/// `ingest_every`: it only matters when ops are large.
pub(crate) const INGEST_BACKLOG_BYTES: usize = 8 << 20;
/// Memory of waiting items beyond which commits wait for an ingest (as at
/// [`MAX_BACKLOG_FACTOR`] × `ingest_every` items): the backlog is bounded in
/// bytes as well as in items.
pub(crate) const MAX_BACKLOG_BYTES: usize = 64 << 20;

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
/// go on meanwhile; the backlog only makes reads slower). Short, so that
/// the tables catch up soon after the cause (a full disk) has gone; reads
/// ingest by themselves anyway.
const INGEST_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The revision of `doc`'s first op in `items`, if any.
fn first_op_rev(items: &[WriteItem], doc: &str) -> Option<u64> {
    items.iter().find_map(|item| match item {
        WriteItem::Op { doc: d, op, .. } if d == doc => Some(op.rev),
        _ => None,
    })
}

/// A new generation for a document's requests (see [`CommitLane::commit_as`]):
/// increasing across the process, so a document reopened by a new actor
/// never reuses one.
pub fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

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

/// The requests of one document submitted and not yet called back, plus
/// its commit in place running: it is only committed in place when this is 0
/// (it would overtake them otherwise).
type LaneCount = Arc<AtomicUsize>;

/// One document's way into a [`CommitQueue`] (from [`CommitQueue::lane`]).
///
/// Every request of a document that may be committed in place goes through
/// its lane: the lane counts the requests still queued or being committed,
/// so that [`commit_as`](Self::commit_as) never overtakes one (after a failed
/// commit, a queued request of the failed generation could otherwise continue
/// the new revision; in order, the continuity check refuses it). Asking the
/// queue for a document's lane again while any of its requests is in flight
/// gives the same count, so a document reopened by a new actor waits for the
/// old actor's requests too. Checking the lane costs one atomic operation:
/// no lock and no lookup per commit.
#[derive(Clone)]
pub struct CommitLane {
    queue: CommitQueue,
    /// `None` when the storage never commits in place (nothing to count).
    count: Option<LaneCount>,
}

impl std::fmt::Debug for CommitLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitLane")
            .field(
                "in_flight",
                &self.count.as_ref().map(|c| c.load(Ordering::Relaxed)),
            )
            .finish()
    }
}

impl CommitLane {
    /// [`CommitQueue::submit`], counted in this lane.
    pub fn submit(&self, items: Vec<WriteItem>, done: CommitCallback) {
        self.submit_in(None, items, done);
    }

    fn submit_in(&self, generation: Option<u64>, items: Vec<WriteItem>, done: CommitCallback) {
        if let Some(count) = &self.count {
            count.fetch_add(1, Ordering::AcqRel);
        }
        self.queue.send(items, self.count.clone(), generation, done);
    }

    /// [`commit_in`](Self::commit_in) with no generation.
    #[cfg(test)]
    pub fn commit(&self, items: Vec<WriteItem>, done: CommitCallback) -> Committed {
        self.commit_in(None, items, done)
    }

    /// [`commit_in`](Self::commit_in) as part of `generation` (from
    /// [`next_generation`]): refused with [`StorageError::Stale`], without
    /// being committed, if an earlier request of this document of the same
    /// or an older generation failed. A writer that starts again from
    /// storage after a failure takes a new generation.
    pub fn commit_as(
        &self,
        generation: u64,
        items: Vec<WriteItem>,
        done: CommitCallback,
    ) -> Committed {
        self.commit_in(Some(generation), items, done)
    }

    /// Commit `items` (all of this lane's document) in place on the calling
    /// thread when that is cheap and safe, else submit them with `done`.
    ///
    /// In place means: the storage commits without waiting and cheaply
    /// ([`Storage::try_commit`]: for SQLite, with relaxed durability, one
    /// write to the commit log when no group commit holds it), its backlog
    /// is below the ingest threshold (so that the commit thread has an ingest
    /// started soon), and nothing of this lane is still queued or being
    /// committed. Saves two thread switches per commit.
    ///
    /// Callers must commit each document's requests from one thread, in order.
    fn commit_in(
        &self,
        generation: Option<u64>,
        items: Vec<WriteItem>,
        done: CommitCallback,
    ) -> Committed {
        if let Some(count) = &self.count {
            if let Some(result) = self.queue.commit_in_place(&items, count) {
                return Committed::Now(result);
            }
        }
        self.submit_in(generation, items, done);
        Committed::Queued
    }
}

struct Inner {
    /// `None` once shut down.
    tx: Mutex<Option<Sender<Msg>>>,
    /// For commits in place ([`CommitQueue::commit`]).
    storage: Arc<dyn Storage>,
    /// Whether the storage can ever commit in place
    /// ([`Storage::commits_in_place`]); without it lanes count nothing.
    in_place: bool,
    /// Each document's lane count, for as long as a [`CommitLane`] or a
    /// request holds it.
    lanes: Mutex<HashMap<String, Weak<AtomicUsize>>>,
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
    #[cfg(test)]
    pub fn start(storage: Arc<dyn Storage>) -> CommitQueue {
        Self::start_with(storage, CommitOptions::default())
    }

    /// Start the commit thread on `storage`; `observer` is called after every
    /// commit with its duration and number of items.
    #[cfg(test)]
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
        let in_place = storage.commits_in_place();
        let mut worker = Worker {
            storage: Arc::clone(&storage),
            options: options.clone(),
            failed: HashMap::new(),
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
                        in_place,
                        lanes: Mutex::default(),
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
                in_place,
                lanes: Mutex::default(),
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
    ///
    /// Not counted in any lane: a document whose requests may be committed in
    /// place sends all of them through its [`CommitLane`] (the server does;
    /// this is for tests).
    #[cfg(test)]
    pub fn submit(&self, items: Vec<WriteItem>, done: CommitCallback) {
        self.send(items, None, None, done);
    }

    /// The lane of document `doc` (see [`CommitLane`]).
    pub fn lane(&self, doc: &str) -> CommitLane {
        let count = self.inner.in_place.then(|| {
            let mut lanes = lock(&self.inner.lanes);
            if let Some(count) = lanes.get(doc).and_then(Weak::upgrade) {
                return count;
            }
            // Forget the lanes nobody holds before the map doubles.
            if lanes.len() >= 64 && lanes.len().is_power_of_two() {
                lanes.retain(|_, count| count.strong_count() > 0);
            }
            let count = LaneCount::default();
            lanes.insert(doc.to_owned(), Arc::downgrade(&count));
            count
        });
        CommitLane {
            queue: self.clone(),
            count,
        }
    }

    /// Queue a request; `lane` (already counted) is released after `done`
    /// has run.
    fn send(
        &self,
        items: Vec<WriteItem>,
        lane: Option<LaneCount>,
        generation: Option<u64>,
        done: CommitCallback,
    ) {
        // Kept apart from the items, which a group commit moves out.
        let generation = generation
            .zip(items.first())
            .map(|(generation, item)| (item.doc().to_owned(), generation));
        let request = Request {
            items,
            lane,
            generation,
            done,
        };
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
        if let Some(Msg::Write(mut request)) = rejected {
            let done = std::mem::replace(&mut request.done, Box::new(|_| {}));
            done(Err(Arc::new(StorageError::Closed)));
        }
    }

    /// The in-place half of [`CommitLane::commit_as`]: `None` if it cannot be
    /// done (nothing was written).
    fn commit_in_place(
        &self,
        items: &[WriteItem],
        lane: &AtomicUsize,
    ) -> Option<Result<(), Arc<StorageError>>> {
        if items.is_empty()
            || lock(&self.inner.tx).is_none()
            || self.inner.storage.backlog() >= self.inner.options.ingest_threshold()
        {
            return None;
        }
        // Counted while it runs, like a queued request.
        if lane
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.inner.storage.try_commit(items)))
            .unwrap_or_else(|_| {
                Some(Err(StorageError::Internal(
                    "the storage commit panicked".into(),
                )))
            });
        lane.fetch_sub(1, Ordering::AcqRel);
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
    #[cfg(test)]
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
    /// The lane that counts this request until it has been called back.
    lane: Option<LaneCount>,
    /// Its document and generation (see [`CommitLane::commit_as`]).
    generation: Option<(String, u64)>,
    done: CommitCallback,
}

impl Request {
    /// The document and generation, for a request that has both.
    fn generation(&self) -> Option<(&str, u64)> {
        self.generation
            .as_ref()
            .map(|(doc, generation)| (doc.as_str(), *generation))
    }
}

/// A request leaves its lane when dropped (after its callback, or unanswered
/// at shutdown).
impl Drop for Request {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            lane.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The commit thread's state.
struct Worker {
    storage: Arc<dyn Storage>,
    options: CommitOptions,
    /// Per document, the newest generation a request of which failed (see
    /// [`CommitLane::commit_as`]); forgotten once a newer one commits.
    failed: HashMap<String, u64>,
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
            let backlog_bytes = self.storage.backlog_bytes();
            if backlog >= self.options.max_backlog() || backlog_bytes >= MAX_BACKLOG_BYTES {
                tracing::debug!(
                    backlog,
                    "the ingest is behind: ingesting on the commit thread"
                );
                ingest_now();
            } else if backlog >= self.options.ingest_threshold()
                || backlog_bytes >= INGEST_BACKLOG_BYTES
            {
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
            if let Some(stale) = self.stale(request) {
                outcomes[i] = Some(Err(Arc::new(stale)));
                continue;
            }
            match self.check(&request.items, &batch_revs) {
                Ok(revs) => {
                    batch_revs.extend(revs);
                    accepted.push(i);
                }
                Err(e) => {
                    // At once: a later request of its generation in this
                    // batch must see it.
                    self.note(request, false);
                    outcomes[i] = Some(Err(Arc::new(e)));
                }
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

        let mut result = self.commit(&all_items);
        // On storage other nodes write, a document whose head moved (it lost
        // the race) fails the whole transaction: commit the others again
        // together without its requests (one lost race never fails another
        // document, and does not cost a transaction per request).
        while let Some(lost) = result.as_ref().err().and_then(StorageError::lost_races) {
            if !self.storage.is_shared() {
                break;
            }
            let (out, kept): (Vec<_>, Vec<_>) = ranges.into_iter().partition(|(i, _)| {
                requests[*i]
                    .generation()
                    .is_some_and(|(doc, _)| lost.iter().any(|l| l == doc))
            });
            if out.is_empty() || kept.is_empty() {
                ranges = out.into_iter().chain(kept).collect();
                break;
            }
            tracing::debug!(docs = ?lost, requests = out.len(), "lost the race for documents' heads: committing the rest of the batch without them");
            let e = Arc::new(result.err().unwrap_or(StorageError::Closed));
            for (i, _) in out {
                self.note(&requests[i], false);
                outcomes[i] = Some(Err(Arc::clone(&e)));
            }
            let mut items = Vec::new();
            ranges = kept
                .into_iter()
                .map(|(i, range)| {
                    let start = items.len();
                    items.extend_from_slice(&all_items[range]);
                    (i, start..items.len())
                })
                .collect();
            all_items = items;
            accepted = ranges.iter().map(|(i, _)| *i).collect();
            result = self.commit(&all_items);
        }
        match result {
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
                        // One by one, so that a failure refuses the later
                        // requests of its document's generation.
                        let outcome = match self.stale(&requests[i]) {
                            Some(stale) => Err(Arc::new(stale)),
                            None => self.commit_alone(&all_items[range]),
                        };
                        self.note(&requests[i], outcome.is_ok());
                        outcomes[i] = Some(outcome);
                    }
                }
            }
        }

        for (request, outcome) in requests.iter().zip(&outcomes) {
            self.note(request, matches!(outcome, Some(Ok(()))));
        }
        for (mut request, outcome) in requests.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or(Err(Arc::new(StorageError::Closed)));
            let done = std::mem::replace(&mut request.done, Box::new(|_| {}));
            if catch_unwind(AssertUnwindSafe(move || done(outcome))).is_err() {
                tracing::error!("a commit callback panicked");
            }
            drop(request);
        }
    }

    /// [`StorageError::Stale`] if an earlier request of the document's
    /// generation (or a newer one) failed.
    fn stale(&self, request: &Request) -> Option<StorageError> {
        let (doc, generation) = request.generation()?;
        let failed = *self.failed.get(doc)?;
        (generation <= failed).then(|| StorageError::Stale {
            doc: doc.to_owned(),
        })
    }

    /// Remember how a request of a generation went: a failure refuses the
    /// later requests of its generation; a newer generation's success
    /// forgets it.
    fn note(&mut self, request: &Request, committed: bool) {
        let Some((doc, generation)) = request.generation() else {
            return;
        };
        let failed = self.failed.get(doc).copied();
        if !committed {
            if failed.is_none_or(|f| f < generation) {
                self.failed.insert(doc.to_owned(), generation);
            }
        } else if failed.is_some_and(|f| f < generation) {
            self.failed.remove(doc);
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
        let shared = self.storage.is_shared();
        let revs = check_continuity(items, |doc| match batch.get(doc) {
            Some(&last) => Ok(last),
            // Storage other nodes write checks the head itself, under its
            // lock: asking first would cost a round trip and prove nothing.
            None if shared => Ok(first_op_rev(items, doc).map_or(0, |rev| rev - 1)),
            None => self.storage.last_rev(doc),
        })?;
        if !shared {
            return Ok(revs);
        }
        // There, a document these items hold no op or delete of has no
        // known head (the 0 above is a stand-in): remembering it would make
        // a later request of the batch that continues the real head look
        // like a gap (a key binding or a region's entries-only commit
        // before ops did, and lost a race that never was).
        Ok(revs
            .into_iter()
            .filter(|(doc, _)| {
                items.iter().any(|item| {
                    item.doc() == doc
                        && matches!(item, WriteItem::Op { .. } | WriteItem::DeleteDoc { .. })
                })
            })
            .collect())
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
mod tests;
