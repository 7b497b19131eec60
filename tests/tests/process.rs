//! The real `server` binary as a subprocess, under load from real WebSocket
//! clients: `kill -9` mid-load (fsync and relaxed durability, several rounds)
//! and SIGTERM (graceful shutdown). Nothing acknowledged may be lost, every
//! (client, seq) is applied exactly once, and everyone converges after a restart.
//!
//! Every edit inserts a unique token (`«client🙂n»`) at a token boundary, so the
//! final text can be checked token by token: each typed token is in the text
//! exactly once (or, only after a relaxed-mode epoch change, in a conflict copy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use e2e_tests::{
    doc_state, free_port, http_get, parse_value, replay_ops, server_binary, ServerProcess, WsClient,
};
use ot_core::Operation;
use ot_protocol::ServerMessage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Writers per test (spread over two documents).
const CLIENTS: usize = 6;
/// Kill/restart rounds in a crash test.
const ROUNDS: usize = 3;
/// Generous bound for one wait on the server.
const WAIT: Duration = Duration::from_secs(20);
/// Every test must finish well within this.
const TEST_BUDGET: Duration = Duration::from_secs(60);

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// A close frame with this code.
    Close(Option<u16>),
    /// No close frame: an I/O error, a reset, or end of stream.
    Reset(String),
}

enum Event {
    Message(ServerMessage<'static>),
    Quiet,
    Ended(Ended),
}

/// A `WsClient` whose every message goes through [`Tracked::handle`], which logs
/// the acks and the op assigned to every seq.
struct Tracked {
    ws: WsClient,
    index: usize,
    rng: ChaCha8Rng,
    /// The op each seq carries (its current assignment; a seq the server never
    /// saw can be reassigned after a snapshot).
    sent: BTreeMap<u64, Operation>,
    /// Acks in the order seen: (seq, rev); rev is None when a snapshot showed the op applied.
    acks: Vec<(u64, Option<u64>)>,
    /// Every token this client typed.
    tokens: Vec<String>,
    /// The first message of each connection: (type, epoch).
    firsts: Vec<(String, Option<u64>)>,
    /// How each connection ended.
    ended: Vec<Ended>,
    /// The seq outstanding (sent, not acked) when the last connection ended.
    in_flight_at_end: Option<u64>,
    /// The last send error on the current connection.
    send_failed: Option<String>,
}

impl Tracked {
    async fn join(addr: SocketAddr, doc: &str, id: &str, index: usize) -> Result<Tracked> {
        let ws = WsClient::join(addr, doc, id).await?;
        let epoch = ws.epoch();
        let t = Tracked {
            ws,
            index,
            rng: ChaCha8Rng::seed_from_u64(index as u64 * 7919 + 17),
            sent: BTreeMap::new(),
            acks: Vec::new(),
            tokens: Vec::new(),
            firsts: vec![("snapshot".to_owned(), epoch)],
            ended: Vec::new(),
            in_flight_at_end: None,
            send_failed: None,
        };
        if t.ws.epoch().is_none() {
            bail!("the snapshot carries no epoch");
        }
        Ok(t)
    }

    fn id(&self) -> String {
        self.ws.client().client_id().to_owned()
    }

    fn acked(&self, seq: u64) -> bool {
        self.acks.iter().any(|(s, _)| *s == seq)
    }

    /// Record the op the outstanding seq carries, if it is new.
    fn note_outstanding(&mut self) {
        let Some(o) = self.ws.client().outstanding() else {
            return;
        };
        let (seq, op) = (o.seq, o.sent.clone());
        if self.sent.get(&seq) != Some(&op) {
            assert!(
                !self.acked(seq),
                "{}: seq {seq} reassigned after it was acknowledged",
                self.id()
            );
            self.sent.insert(seq, op);
        }
    }

    /// Feed a server message to the session, logging acks.
    async fn handle(&mut self, message: ServerMessage<'static>) -> Result<()> {
        let before = self.ws.client().outstanding().map(|o| o.seq);
        let snapshot_seq = match &message {
            ServerMessage::Snapshot { seq, .. } => Some(*seq),
            _ => None,
        };
        let acking = matches!(
            message,
            ServerMessage::Ack { .. } | ServerMessage::Op { .. }
        );
        if let Err(e) = self.ws.handle_message(message).await {
            // A failed send (the session has moved on; the op is resent
            // after a reconnect) is not a failure of the test: what is still
            // buffered (acks, a close frame) is read next.
            if e.downcast_ref::<tokio_tungstenite::tungstenite::Error>()
                .is_none()
            {
                return Err(e);
            }
            self.send_failed = Some(e.to_string());
        }
        if let Some(last) = snapshot_seq {
            if let Some(seq) = before.filter(|s| *s <= last) {
                self.acks.push((seq, None));
            }
            // Seqs after `last` were never applied: they are reassigned from here.
            self.sent.retain(|s, _| *s <= last);
        } else if acking {
            if let Some(seq) = before {
                if self.ws.client().outstanding().map(|o| o.seq) != Some(seq) {
                    self.acks.push((seq, Some(self.ws.client().revision())));
                }
            }
        }
        self.note_outstanding();
        Ok(())
    }

    /// The next event on the socket within `within`.
    async fn next_event(&mut self, within: Duration) -> Event {
        if !self.ws.is_connected() {
            return Event::Ended(Ended::Reset("not connected".to_owned()));
        }
        match self.ws.next_event(within).await {
            Err(_) => Event::Quiet,
            Ok(e2e_tests::Event::Json(value)) => {
                Event::Message(parse_value(&value).expect("a server message"))
            }
            Ok(e2e_tests::Event::Binary(_)) => {
                Event::Ended(Ended::Reset("a binary frame".to_owned()))
            }
            Ok(e2e_tests::Event::Closed(frame)) => Event::Ended(Ended::Close(frame.map(|f| f.0))),
            Ok(e2e_tests::Event::Ended(why)) => Event::Ended(Ended::Reset(why)),
        }
    }

    fn disconnected(&mut self, how: Ended) {
        self.in_flight_at_end = self.ws.client().outstanding().map(|o| o.seq);
        self.ws.cut();
        let how = match (how, self.send_failed.take()) {
            (Ended::Reset(why), Some(send)) => {
                Ended::Reset(format!("{why} (a send failed: {send})"))
            }
            (how, _) => how,
        };
        self.ended.push(how);
    }

    /// Handle what arrives until the socket is quiet for `quiet` (at most `max` in all).
    async fn read_for(&mut self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        while self.ws.is_connected() && Instant::now() < deadline {
            match self.next_event(quiet).await {
                Event::Message(m) => self.handle(m).await.expect("handling a server message"),
                Event::Quiet => break,
                Event::Ended(how) => self.disconnected(how),
            }
        }
    }

    /// Process messages until `done` holds; fails on timeout or disconnect.
    async fn pump_until(
        &mut self,
        within: Duration,
        done: impl Fn(&Tracked) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: condition not reached within {within:?}", self.id());
            }
            match self.next_event(left).await {
                Event::Message(m) => self.handle(m).await?,
                Event::Quiet => {}
                Event::Ended(how) => {
                    self.disconnected(how.clone());
                    bail!("{}: disconnected while settling: {how:?}", self.id());
                }
            }
        }
        Ok(())
    }

    /// Type one unique token at a token boundary of the local text.
    async fn type_one(&mut self) {
        let text = self.ws.client().text();
        let len = text.len_chars();
        let mut bounds = vec![0];
        bounds.extend(
            text.chars()
                .enumerate()
                .filter(|(_, c)| *c == '»')
                .map(|(i, _)| i + 1),
        );
        let pos = bounds[self.rng.random_range(0..bounds.len())];
        let token = format!("«{}🙂{}»", self.index, self.tokens.len());
        self.tokens.push(token.clone());
        let op = Operation::insert_at(len, pos, &token).expect("an insert that fits");
        if let Err(e) = self.ws.edit(&op).await {
            // Keep reading: a close frame or acks may still be buffered.
            self.send_failed = Some(e.to_string());
        }
        self.note_outstanding();
    }

    /// Reconnect to `addr` (resuming with rev and epoch once synced), like
    /// `WsClient::reconnect` but noting the first message and logging acks.
    async fn reconnect(&mut self, addr: SocketAddr) -> Result<()> {
        self.ws.addr = addr;
        self.ws.open().await?;
        self.send_failed = None;
        let first = self.ws.recv_message(Duration::from_secs(10)).await?;
        let epoch = match &first {
            ServerMessage::Snapshot { epoch, .. } | ServerMessage::Resume { epoch, .. } => {
                Some(*epoch)
            }
            _ => None,
        };
        self.firsts.push((first.kind().to_owned(), epoch));
        self.handle(first).await
    }
}

/// Clients typing concurrently, each in its own task.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tracked>>,
}

impl Load {
    /// Start the clients; with `typing` false they only read (and handle) what arrives.
    fn start(clients: Vec<Tracked>, typing: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .map(|mut t| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut offline_edits = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if t.ws.is_connected() {
                            if typing {
                                t.type_one().await;
                            }
                            let quiet = Duration::from_millis(t.rng.random_range(1..6));
                            t.read_for(quiet, Duration::from_millis(20)).await;
                        } else {
                            // Keep typing for a little while offline: these edits
                            // are buffered and sent after the reconnect.
                            if typing && offline_edits < 3 {
                                t.type_one().await;
                                offline_edits += 1;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    t
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Let the clients notice what happened for `grace`, then stop them.
    async fn finish(self, grace: Duration) -> Vec<Tracked> {
        tokio::time::sleep(grace).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut clients = Vec::new();
        for task in self.tasks {
            clients.push(task.await.expect("a client task panicked"));
        }
        clients
    }
}

/// Every stored op of `doc`, in revision order.
async fn fetch_log(addr: SocketAddr, doc: &str) -> Result<Vec<Value>> {
    let mut log: Vec<Value> = Vec::new();
    loop {
        let path = format!("/api/docs/{doc}/ops?from={}&limit=1000", log.len());
        let body: Value = serde_json::from_str(&http_get(addr, &path).await?)?;
        let ops = body["ops"]
            .as_array()
            .ok_or_else(|| anyhow!("no ops: {body}"))?;
        if ops.is_empty() {
            return Ok(log);
        }
        for op in ops {
            let rev = op["rev"].as_u64().ok_or_else(|| anyhow!("no rev"))?;
            if rev != log.len() as u64 + 1 {
                bail!("{doc}: stored op {rev} after {}", log.len());
            }
            log.push(op.clone());
        }
    }
}

fn docs_of(name: &str) -> [String; 2] {
    [format!("{name}-a"), format!("{name}-b")]
}

async fn join_all(addr: SocketAddr, name: &str) -> Vec<Tracked> {
    let docs = docs_of(name);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let id = format!("{name}-c{i}");
        clients.push(
            Tracked::join(addr, &docs[i % 2], &id, i)
                .await
                .expect("joining"),
        );
    }
    clients
}

/// The durable log after a restart: the previous log is a prefix of it (nothing
/// stored is lost or rewritten, revisions continue), it replays to the
/// document's text, and every op a client saw acknowledged is there with the
/// same (client, seq) at the same revision and the op as sent.
async fn check_durable(
    addr: SocketAddr,
    docs: &[String],
    clients: &[Tracked],
    logs: &mut HashMap<String, Vec<Value>>,
) {
    for doc in docs {
        let log = fetch_log(addr, doc).await.unwrap();
        let old = logs.get(doc).cloned().unwrap_or_default();
        assert!(
            log.len() >= old.len() && log[..old.len()] == old[..],
            "{doc}: the stored log changed across the restart"
        );
        let (rev, text) = doc_state(addr, doc).await.unwrap();
        assert_eq!(rev, log.len() as u64, "{doc}: head vs stored ops");
        assert_eq!(
            replay_ops(addr, doc).await.unwrap(),
            (rev, text),
            "{doc}: replaying the log"
        );
        for c in clients.iter().filter(|c| c.ws.doc() == doc.as_str()) {
            let id = c.id();
            for &(seq, rev) in &c.acks {
                let entry = match rev {
                    Some(rev) => {
                        let entry = log.get(rev as usize - 1).unwrap_or_else(|| {
                            panic!(
                                "{id}: acked seq {seq} at rev {rev} is lost (head {})",
                                log.len()
                            )
                        });
                        assert_eq!(
                            (entry["client"].as_str(), entry["seq"].as_u64()),
                            (Some(id.as_str()), Some(seq)),
                            "{id}: acked seq {seq} at rev {rev}, but the store has another op there"
                        );
                        entry
                    }
                    None => log
                        .iter()
                        .find(|e| {
                            e["client"].as_str() == Some(id.as_str())
                                && e["seq"].as_u64() == Some(seq)
                        })
                        .unwrap_or_else(|| {
                            panic!("{id}: seq {seq} (applied per a snapshot) is lost")
                        }),
                };
                if let Some(op) = c.sent.get(&seq) {
                    assert_eq!(
                        entry["received"],
                        serde_json::to_value(op).unwrap(),
                        "{id}: seq {seq} stored with another op than sent"
                    );
                }
            }
        }
        logs.insert(doc.clone(), log);
    }
}

/// Stop typing, let everyone get every ack and reach the head, then check
/// convergence and exactly-once application from the stored log.
async fn settle_and_check(
    addr: SocketAddr,
    docs: &[String],
    clients: &mut [Tracked],
    logs: &mut HashMap<String, Vec<Value>>,
    allow_conflict_copies: bool,
) {
    for c in clients.iter_mut() {
        c.pump_until(WAIT, |c| c.ws.client().all_saved())
            .await
            .unwrap();
    }
    for doc in docs {
        let (head, _) = doc_state(addr, doc).await.unwrap();
        for c in clients.iter_mut().filter(|c| c.ws.doc() == doc.as_str()) {
            c.pump_until(WAIT, |c| c.ws.client().revision() >= head)
                .await
                .unwrap();
        }
    }
    let restart_heads: HashMap<String, usize> =
        logs.iter().map(|(d, l)| (d.clone(), l.len())).collect();
    check_durable(addr, docs, clients, logs).await;
    for doc in docs {
        let log = &logs[doc];
        let (rev, text) = doc_state(addr, doc).await.unwrap();
        assert!(
            log.len() > restart_heads.get(doc).copied().unwrap_or(0),
            "{doc}: no new ops after the last restart"
        );
        for c in clients.iter().filter(|c| c.ws.doc() == doc.as_str()) {
            let id = c.id();
            assert!(c.ws.errors.is_empty(), "{id} got errors: {:?}", c.ws.errors);
            assert_eq!(c.ws.client().revision(), rev, "{id}: revision");
            assert_eq!(c.ws.text(), text, "{id} diverged");
            if !allow_conflict_copies {
                assert!(
                    c.ws.conflict_copies.is_empty(),
                    "{id}: unexpected conflict copies"
                );
            }
            // Exactly once: this client's seqs in the log are 1..=n, each once,
            // each with the op it sent; every ack names its op's revision.
            let mine: Vec<(u64, &Value)> = log
                .iter()
                .enumerate()
                .filter(|(_, e)| e["client"].as_str() == Some(id.as_str()))
                .map(|(i, e)| (i as u64 + 1, e))
                .collect();
            let seqs: Vec<u64> = mine
                .iter()
                .map(|(_, e)| e["seq"].as_u64().unwrap())
                .collect();
            let expected: Vec<u64> = (1..c.ws.client().next_seq()).collect();
            assert_eq!(seqs, expected, "{id}: applied seqs");
            assert_eq!(
                c.sent.keys().copied().collect::<Vec<_>>(),
                expected,
                "{id}: sent seqs"
            );
            for (rev, entry) in &mine {
                let seq = entry["seq"].as_u64().unwrap();
                assert_eq!(
                    entry["received"],
                    serde_json::to_value(&c.sent[&seq]).unwrap(),
                    "{id}: seq {seq} at rev {rev} is not the op sent"
                );
                assert!(entry["base_rev"].as_u64().unwrap() < *rev);
                let acked_at: Vec<Option<u64>> = c
                    .acks
                    .iter()
                    .filter(|(s, _)| *s == seq)
                    .map(|(_, r)| *r)
                    .collect();
                assert!(
                    acked_at == [Some(*rev)] || acked_at == [None],
                    "{id}: seq {seq} applied at {rev} but acked as {acked_at:?}"
                );
            }
            // Token by token: every edit typed is in the text exactly once, or
            // (after an epoch change only) absent and kept in a conflict copy.
            for token in &c.tokens {
                match text.matches(token.as_str()).count() {
                    1 => {}
                    0 if allow_conflict_copies
                        && c.ws.conflict_copies.iter().any(|copy| copy.contains(token)) => {}
                    n => panic!(
                        "{id}: token {token} is {n} times in the text (conflict copies: {})",
                        c.ws.conflict_copies.len()
                    ),
                }
            }
        }
    }
}

/// `kill -9` the server mid-load `ROUNDS` times, restarting it on the same data
/// dir each time, then converge.
async fn crash_rounds(name: &str, extra: &[&str], relaxed: bool) {
    let bin = server_binary().expect("building the server binary");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let docs = docs_of(name);
    let mut server = ServerProcess::start(&bin, data, free_port(), extra)
        .await
        .unwrap();
    let mut clients = join_all(server.addr, name).await;
    let mut epoch = clients[0].ws.epoch();
    let mut logs: HashMap<String, Vec<Value>> = HashMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(if relaxed { 2 } else { 1 });
    // Ops in flight at a kill: (stored, so acked through the resumed op stream) and (not stored, so resent).
    let (mut in_flight_stored, mut in_flight_resent) = (0, 0);
    let mut acked_before = 0;
    for round in 0..ROUNDS {
        let load = Load::start(clients, true);
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..900))).await;
        if round + 1 < ROUNDS {
            // At a random moment of the load.
            server.kill9();
            clients = load.finish(Duration::from_millis(500)).await;
        } else {
            // Deterministically both kinds of ops in flight: the first half of
            // the clients send an op, it is committed, and the server dies
            // before they read the ack (they cut the connection without reading:
            // the ack is lost); the other half send an op the server never reads.
            let mut settled = load.finish(Duration::ZERO).await;
            for c in settled.iter_mut() {
                c.pump_until(WAIT, |c| c.ws.client().all_saved())
                    .await
                    .unwrap();
            }
            let half = CLIENTS / 2;
            let mut expected: HashMap<String, u64> = HashMap::new();
            for doc in &docs {
                expected.insert(doc.clone(), doc_state(server.addr, doc).await.unwrap().0);
            }
            for c in settled[..half].iter_mut() {
                c.type_one().await;
                *expected.get_mut(c.ws.doc()).unwrap() += 1;
            }
            for (doc, rev) in &expected {
                let deadline = Instant::now() + WAIT;
                while doc_state(server.addr, doc).await.unwrap().0 < *rev {
                    assert!(Instant::now() < deadline, "{doc}: ops not committed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // The server is frozen first, so that these ops reach its socket
            // but are never read: with relaxed durability a commit in place
            // could otherwise store them before the kill lands.
            server.freeze();
            for c in settled[half..].iter_mut() {
                c.type_one().await;
            }
            server.kill9();
            for c in settled[..half].iter_mut() {
                assert!(c.ws.client().outstanding().is_some());
                c.disconnected(Ended::Reset("cut before reading the ack".to_owned()));
            }
            let load = Load::start(settled, false);
            clients = load.finish(Duration::from_millis(500)).await;
        }
        let acked: usize = clients.iter().map(|c| c.acks.len()).sum();
        assert!(
            acked > acked_before,
            "round {round}: nothing was acknowledged"
        );
        acked_before = acked;
        for c in &clients {
            assert!(!c.ws.is_connected(), "{}: did not notice the crash", c.id());
            assert!(
                matches!(c.ended.last(), Some(Ended::Reset(_))),
                "{}: a killed server cannot send a close frame: {:?}",
                c.id(),
                c.ended.last()
            );
        }
        server = ServerProcess::start(&bin, data, free_port(), extra)
            .await
            .unwrap();
        check_durable(server.addr, &docs, &clients, &mut logs).await;
        for c in &clients {
            if let Some(seq) = c.in_flight_at_end {
                let stored = logs[c.ws.doc()].iter().any(|e| {
                    e["client"].as_str() == Some(c.id().as_str()) && e["seq"].as_u64() == Some(seq)
                });
                if stored {
                    in_flight_stored += 1;
                } else {
                    in_flight_resent += 1;
                }
            }
        }
        for c in clients.iter_mut() {
            c.reconnect(server.addr).await.unwrap();
            let (kind, new_epoch) = c.firsts.last().cloned().unwrap();
            if relaxed {
                // An unclean start in relaxed mode changes the epoch: a snapshot, not a resume.
                assert_eq!(kind, "snapshot", "{}: after an epoch change", c.id());
                assert_ne!(new_epoch, epoch, "{}: the epoch did not change", c.id());
            } else {
                assert_eq!(kind, "resume", "{}: after a crash with fsync", c.id());
                assert_eq!(new_epoch, epoch, "{}: the epoch changed", c.id());
            }
        }
        if relaxed {
            let new_epoch = clients[0].firsts.last().unwrap().1;
            assert!(clients
                .iter()
                .all(|c| c.firsts.last().unwrap().1 == new_epoch));
            epoch = new_epoch;
        }
    }
    assert!(
        in_flight_stored >= CLIENTS / 2 && in_flight_resent > 0,
        "ops in flight at the kills: {in_flight_stored} stored, {in_flight_resent} not"
    );
    // A last round of load on the restarted server, then converge.
    let load = Load::start(clients, true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    clients = load.finish(Duration::ZERO).await;
    settle_and_check(server.addr, &docs, &mut clients, &mut logs, relaxed).await;
    let copies: usize = clients.iter().map(|c| c.ws.conflict_copies.len()).sum();
    let typed: usize = clients.iter().map(|c| c.tokens.len()).sum();
    let stored: usize = logs.values().map(Vec::len).sum();
    eprintln!(
        "{name}: {ROUNDS} kills, {typed} edits typed, {stored} ops stored, \
         ops in flight at a kill: {in_flight_stored} stored (unacked), {in_flight_resent} not stored; \
         {copies} conflict copies, {:.1?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < TEST_BUDGET,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_load_loses_no_acknowledged_op_fsync() {
    // Frequent ingests, so that kills land while one commit log is sealed
    // and the other takes commits.
    crash_rounds("crash-fsync", &["--ingest-every", "8"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_load_loses_no_acknowledged_op_relaxed() {
    crash_rounds(
        "crash-relaxed",
        &["--durability", "relaxed", "--ingest-every", "8"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_load_loses_no_acknowledged_op_postgres() {
    // The same rounds with every op stored in PostgreSQL: an ack means the
    // transaction committed with synchronous_commit on, so a restart resumes
    // in the same epoch.
    let schema = e2e_tests::postgres::PgSchema::new("crash").unwrap();
    crash_rounds(
        "crash-postgres",
        &["--database-url", &schema.url, "--snapshot-every", "50"],
        false,
    )
    .await;
}

/// Send SIGTERM to the server without waiting (`kill` runs as its own process).
fn send_sigterm(server: &ServerProcess) -> std::process::Child {
    std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .spawn()
        .expect("running kill")
}

/// After SIGTERM (`sent` when it was sent) the server must exit with code 0
/// within a few seconds, and every client (handled by `load` meanwhile) must
/// see a close frame with code 1001 (not a reset).
async fn graceful_stop(
    mut server: ServerProcess,
    mut killer: std::process::Child,
    sent: Instant,
    load: Load,
) -> (Vec<Tracked>, Duration) {
    let (status, exit_after) = tokio::task::spawn_blocking(move || {
        let _ = killer.wait();
        while sent.elapsed() < Duration::from_secs(10) {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                return (Some(status), sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill9();
        (None, sent.elapsed())
    })
    .await
    .expect("wait task");
    let clients = load.finish(Duration::from_millis(300)).await;
    let status = status.expect("the server did not exit within 10 s of SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        exit_after < Duration::from_secs(5),
        "exit took {exit_after:?}"
    );
    for c in &clients {
        assert!(
            !c.ws.is_connected() && !c.ended.is_empty(),
            "{}: still connected",
            c.id()
        );
        assert!(
            c.ended.iter().all(|e| *e == Ended::Close(Some(1001))),
            "{}: expected close frames with code 1001 (going away), got {:?}",
            c.id(),
            c.ended
        );
    }
    (clients, exit_after)
}

/// In-flight ops commit and are acked before the close frame: whatever the
/// server stored from a client, the client saw acknowledged before the close.
fn check_stored_were_acked(clients: &[Tracked], logs: &HashMap<String, Vec<Value>>) {
    for c in clients {
        let id = c.id();
        for entry in logs[c.ws.doc()]
            .iter()
            .filter(|e| e["client"].as_str() == Some(id.as_str()))
        {
            let seq = entry["seq"].as_u64().unwrap();
            assert!(
                c.acked(seq),
                "{id}: seq {seq} was stored (rev {}) but not acknowledged before the close frame",
                entry["rev"]
            );
        }
    }
}

/// Restart on the same data dir and resume every client (same epoch: a clean stop).
async fn restart_and_resume(
    bin: &Path,
    data: &Path,
    docs: &[String],
    clients: &mut [Tracked],
    logs: &mut HashMap<String, Vec<Value>>,
    epoch: Option<u64>,
) -> ServerProcess {
    let server = ServerProcess::start(bin, data, free_port(), &[])
        .await
        .unwrap();
    check_durable(server.addr, docs, clients, logs).await;
    check_stored_were_acked(clients, logs);
    for c in clients.iter_mut() {
        c.reconnect(server.addr).await.unwrap();
        let (kind, new_epoch) = c.firsts.last().cloned().unwrap();
        assert_eq!(kind, "resume", "{}: after a graceful restart", c.id());
        assert_eq!(new_epoch, epoch, "{}: the epoch changed", c.id());
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_loses_nothing() {
    let name = "graceful";
    let bin = server_binary().expect("building the server binary");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data: &Path = dir.path();
    let docs = docs_of(name);
    let mut logs = HashMap::new();
    let server = ServerProcess::start(&bin, data, free_port(), &[])
        .await
        .unwrap();
    let clients = join_all(server.addr, name).await;
    let epoch = clients[0].ws.epoch();

    // 1. SIGTERM while every client keeps typing.
    let load = Load::start(clients, true);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killer = send_sigterm(&server);
    let (mut clients, exit1) = graceful_stop(server, killer, Instant::now(), load).await;
    let unacked = clients
        .iter()
        .filter(|c| !c.ws.client().all_saved())
        .count();
    let server = restart_and_resume(&bin, data, &docs, &mut clients, &mut logs, epoch).await;
    let load = Load::start(clients, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut clients = load.finish(Duration::ZERO).await;
    settle_and_check(server.addr, &docs, &mut clients, &mut logs, false).await;

    // 2. SIGTERM lands while every client has just sent an op (`kill` starts
    //    first and takes about as long to deliver as a commit's fsync): the ops
    //    the server read must be committed and acked before the close frame.
    let sent = Instant::now();
    let killer = send_sigterm(&server);
    for c in clients.iter_mut() {
        c.type_one().await;
        assert!(c.ws.client().outstanding().is_some());
    }
    let load = Load::start(clients, false);
    let (mut clients, exit2) = graceful_stop(server, killer, sent, load).await;
    let in_flight_stored = clients
        .iter()
        .filter(|c| c.ws.client().outstanding().is_none())
        .count();
    let server = restart_and_resume(&bin, data, &docs, &mut clients, &mut logs, epoch).await;
    let load = Load::start(clients, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut clients = load.finish(Duration::ZERO).await;
    settle_and_check(server.addr, &docs, &mut clients, &mut logs, false).await;

    let typed: usize = clients.iter().map(|c| c.tokens.len()).sum();
    eprintln!(
        "graceful: exits after {exit1:.1?} and {exit2:.1?}; {typed} edits typed; \
         {unacked} clients with unacknowledged edits at the first close; \
         {in_flight_stored} of {CLIENTS} ops sent just before the second SIGTERM acked before the close; {:.1?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < TEST_BUDGET,
        "took {:?}",
        started.elapsed()
    );
}
