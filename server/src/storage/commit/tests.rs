//! Tests of the [`CommitQueue`]: grouping, ordering, per-document failures,
//! shutdown, ingests, and commits in place (never past a queued request).

use super::*;
use crate::storage::{DocSummary, Durability, LoadedDoc, SqliteStorage, StoredOp, WriteItem};
use ot_core::history::{DocumentHistory, KeyHash, OpHash, Receipt};
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
    /// Acts as storage other nodes write too, where every document whose
    /// id starts with "lost" has had its head moved by another node.
    shared: AtomicBool,
}

impl Probe {
    fn new(dir: &TempDir, delay: Duration) -> Arc<Probe> {
        Arc::new(Probe {
            inner: SqliteStorage::open(dir.path(), Durability::Relaxed).unwrap(),
            commits: AtomicUsize::new(0),
            fail_next: AtomicBool::new(false),
            shared: AtomicBool::new(false),
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

    /// On "shared" storage: the race a commit of a "lost…" document loses.
    fn lost_race(&self, items: &[WriteItem]) -> Option<StorageError> {
        let mut lost: Vec<(String, u64, u64)> = items
            .iter()
            .filter(|i| i.doc().starts_with("lost"))
            .map(|i| (i.doc().to_owned(), 2, 1))
            .collect();
        lost.dedup();
        if !self.shared.load(Ordering::SeqCst) || lost.is_empty() {
            return None;
        }
        Some(if lost.len() == 1 {
            let (doc, expected, found) = lost.remove(0);
            StorageError::Gap {
                doc,
                expected,
                found,
            }
        } else {
            StorageError::LostRaces { docs: lost }
        })
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
        if let Some(lost) = self.lost_race(items) {
            return Err(lost);
        }
        self.inner.commit(items)
    }
    fn is_shared(&self) -> bool {
        self.shared.load(Ordering::SeqCst)
    }
    fn commits_in_place(&self) -> bool {
        true
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
    fn ops(&self, doc: &str, after_rev: u64, limit: usize) -> Result<Vec<StoredOp>, StorageError> {
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
    let lane = queue.lane("d");
    lane.submit(
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
    lane.submit(vec![old.next()], record(&outcomes, 1));
    probe.fail_next();
    probe.release();
    failed_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // The reloaded actor: revision 1 is free again, and its next op
    // takes it (nothing of this generation is on its way to storage).
    // Storage is free, yet it must not be committed in place: it would
    // overtake the stale request.
    // The same document's lane, asked for again (as by a new actor): the
    // queued request still counts in it.
    drop(lane);
    let lane = queue.lane("d");
    let mut new = Doc::new("d");
    new.text = "y";
    match lane.commit(vec![new.next()], record(&outcomes, 2)) {
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
        lane.commit(vec![new.next()], record(&outcomes, 3)),
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
    let lane = queue.lane("d");
    let outcomes: Outcomes = Arc::default();
    // The commit thread sees no request meanwhile and may ask for an idle
    // ingest: hold it off so that the backlog only grows.
    let paused = sqlite.pause_ingests();
    for i in 0..DEFAULT_INGEST_EVERY {
        assert!(matches!(
            lane.commit(vec![doc.next()], record(&outcomes, i)),
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
        lane.commit(vec![doc.next()], record(&outcomes, 0)),
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
    match lane.commit(vec![doc.next()], record(&outcomes, 1)) {
        Committed::Now(Err(e)) => assert!(matches!(*e, StorageError::Gap { .. }), "{e}"),
        other => panic!("expected a gap, got {other:?}"),
    }
    // After shutdown nothing is committed in place either.
    queue.shutdown();
    assert!(matches!(
        lane.commit(vec![doc.next()], record(&outcomes, 2)),
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
    let (lane_a, lane_b) = (queue.lane("a"), queue.lane("b"));
    let entered = probe.hold();
    lane_a.submit(vec![a.next()], record(&outcomes, 0));
    entered.recv().unwrap();
    lane_a.submit(vec![a.next()], record(&outcomes, 1));
    // The storage is busy: nothing is committed in place.
    assert!(matches!(
        lane_b.commit(vec![b.next()], record(&outcomes, 2)),
        Committed::Queued
    ));
    probe.release();
    queue.flush_blocking();
    // Free again, and nothing of "b" in flight: in place.
    assert!(matches!(
        lane_b.commit(vec![b.next()], record(&outcomes, 3)),
        Committed::Now(Ok(()))
    ));
    // A request of "a" behind a held one is queued even when the storage
    // could take it (try_commit is not held by `hold` once released).
    let entered = probe.hold();
    lane_a.submit(vec![a.next()], record(&outcomes, 4));
    entered.recv().unwrap();
    *lock(&probe.held) = false; // try_commit would go ahead now
    assert!(matches!(
        lane_a.commit(vec![a.next()], record(&outcomes, 5)),
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

#[test]
fn a_failed_request_refuses_the_later_ones_of_its_generation_even_if_they_continue_storage() {
    let dir = TempDir::new().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), Durability::Fsync).unwrap());
    let queue = CommitQueue::start(Arc::clone(&storage));
    let lane = queue.lane("d");
    let outcomes: Outcomes = Arc::default();
    // Another writer (another node on shared storage) takes revision 1.
    let mut other = Doc::new("d");
    other.text = "o";
    storage.commit(&[other.next()]).unwrap();
    // This writer's revisions 1 and 2 of one generation: 1 loses, and 2,
    // which would continue storage's head by its number, continues an op
    // that is not stored: it must not be committed.
    let mut mine = Doc::new("d");
    mine.text = "m";
    let generation = next_generation();
    let (first, second) = (mine.next(), mine.next());
    let _ = lane.commit_as(generation, vec![first], record(&outcomes, 1));
    let _ = lane.commit_as(generation, vec![second], record(&outcomes, 2));
    queue.flush_blocking();
    // Started again from storage, in a new generation, it commits.
    other.text = "n";
    let _ = lane.commit_as(next_generation(), vec![other.next()], record(&outcomes, 3));
    queue.flush_blocking();
    let got = lock(&outcomes).clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        matches!(&got[0], (1, Err(e)) if e.contains("expected revision 2")),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], (2, Err(e)) if e.contains("earlier commit")),
        "{got:?}"
    );
    assert_eq!(got[2], (3, Ok(())));
    assert_eq!(storage.text_at("d", 2).unwrap().as_deref(), Some("on"));
}

/// SQLite whose first commit of document "d" lets another writer commit
/// revision 1 of it first (between the queue's continuity check and the
/// commit): a lost race the check cannot see.
struct Racing {
    inner: SqliteStorage,
    other: Mutex<Option<WriteItem>>,
}

impl Storage for Racing {
    fn commit(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        if items.iter().any(|item| item.doc() == "d") {
            if let Some(first) = lock(&self.other).take() {
                self.inner.commit(&[first])?;
            }
        }
        self.inner.commit(items)
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
    fn ops(&self, doc: &str, after_rev: u64, limit: usize) -> Result<Vec<StoredOp>, StorageError> {
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
    fn close_clean(&self) -> Result<(), StorageError> {
        self.inner.close_clean()
    }
}

#[test]
fn a_race_lost_at_the_commit_itself_refuses_the_rest_of_the_generation() {
    let dir = TempDir::new().unwrap();
    let mut other = Doc::new("d");
    other.text = "o";
    let storage = Arc::new(Racing {
        inner: SqliteStorage::open(dir.path(), Durability::Fsync).unwrap(),
        other: Mutex::new(Some(other.next())),
    });
    let queue = CommitQueue::start(Arc::clone(&storage) as Arc<dyn Storage>);
    let lane = queue.lane("d");
    let outcomes: Outcomes = Arc::default();
    let mut mine = Doc::new("d");
    mine.text = "m";
    let generation = next_generation();
    let (first, second) = (mine.next(), mine.next());
    let _ = lane.commit_as(generation, vec![first], record(&outcomes, 1));
    let _ = lane.commit_as(generation, vec![second], record(&outcomes, 2));
    queue.flush_blocking();
    let got = lock(&outcomes).clone();
    assert!(matches!(&got[0], (1, Err(_))), "{got:?}");
    assert!(
        matches!(&got[1], (2, Err(e)) if e.contains("earlier commit")),
        "{got:?}"
    );
    assert_eq!(storage.text_at("d", 1).unwrap().as_deref(), Some("o"));
    assert_eq!(
        storage.last_rev("d").unwrap(),
        1,
        "nothing of the lost generation"
    );
}

/// On storage other nodes write, one document's lost race fails only its
/// own requests, and the rest of the batch is committed again together (one
/// more transaction, not one per request).
#[test]
fn a_lost_race_commits_the_rest_of_the_batch_in_one_more_transaction() {
    let dir = TempDir::new().unwrap();
    let probe = Probe::new(&dir, Duration::ZERO);
    probe.shared.store(true, Ordering::SeqCst);
    let queue = CommitQueue::start(probe.clone());
    let outcomes: Outcomes = Arc::default();
    let (mut a, mut b, mut lost) = (Doc::new("a"), Doc::new("b"), Doc::new("lost"));
    let mut lost2 = Doc::new("lost2");
    let entered = probe.hold();
    queue.submit(vec![a.next()], record(&outcomes, 0));
    entered.recv().unwrap();
    let generation = next_generation();
    let lost_lane = queue.lane("lost");
    let _ = queue
        .lane("a")
        .commit_as(generation, vec![a.next()], record(&outcomes, 1));
    let _ = lost_lane.commit_as(generation, vec![lost.next()], record(&outcomes, 2));
    let _ = queue
        .lane("b")
        .commit_as(generation, vec![b.next(), b.next()], record(&outcomes, 3));
    let _ = lost_lane.commit_as(generation, vec![lost.next()], record(&outcomes, 4));
    queue.submit(vec![a.next()], record(&outcomes, 5));
    let _ = queue
        .lane("lost2")
        .commit_as(generation, vec![lost2.next()], record(&outcomes, 6));
    probe.release();
    queue.flush_blocking();

    let got = lock(&outcomes).clone();
    let tags: Vec<usize> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, (0..7).collect::<Vec<_>>());
    for (tag, outcome) in &got {
        match tag {
            2 | 4 | 6 => assert!(
                outcome
                    .as_ref()
                    .unwrap_err()
                    .contains("other writers moved their heads first"),
                "request {tag}: {outcome:?}"
            ),
            _ => assert_eq!(outcome, &Ok(()), "request {tag}"),
        }
    }
    assert_eq!(probe.last_rev("a").unwrap(), 3);
    assert_eq!(probe.last_rev("b").unwrap(), 2);
    assert!(!probe.exists("lost").unwrap());
    assert!(!probe.exists("lost2").unwrap());
    // The held one, the batch that lost (two documents), the batch again
    // without them.
    assert_eq!(probe.commits.load(Ordering::SeqCst), 3);
}

#[test]
fn on_shared_storage_an_item_without_ops_does_not_pretend_to_know_the_head() {
    // A key binding (no op) and then ops continuing the stored head, in one
    // batch: both commit. The binding once made the batch take the head as
    // 0, and the ops failed as a lost race that never was.
    let dir = TempDir::new().unwrap();
    let probe = Probe::new(&dir, Duration::ZERO);
    let queue = CommitQueue::start(probe.clone());
    let outcomes: Outcomes = Arc::default();
    let mut d = Doc::new("d");
    queue.submit(vec![d.next(), d.next()], record(&outcomes, 0));
    queue.flush_blocking();
    probe.shared.store(true, Ordering::SeqCst);
    let entered = probe.hold();
    let mut other = Doc::new("other");
    queue.submit(vec![other.next()], record(&outcomes, 1));
    entered.recv().unwrap();
    let generation = next_generation();
    let lane = queue.lane("d");
    let key = WriteItem::ClientKey {
        doc: "d".into(),
        client_id: "w2".into(),
        key_hash: KeyHash([1; 32]),
    };
    let _ = lane.commit_as(generation, vec![key], record(&outcomes, 2));
    let _ = lane.commit_as(generation, vec![d.next()], record(&outcomes, 3));
    probe.release();
    queue.flush_blocking();
    let got = lock(&outcomes).clone();
    assert_eq!(got.len(), 4);
    for (tag, outcome) in &got {
        assert_eq!(outcome, &Ok(()), "request {tag}");
    }
    assert_eq!(probe.last_rev("d").unwrap(), 3);
}
