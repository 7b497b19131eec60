//! Three server nodes on one PostgreSQL, behind the suite's proxy, which
//! spreads connections over them with no stickiness (a reconnect reaches a
//! live node). Writers of the same documents on different nodes converge,
//! every (client, seq) is stored once and every typed token is in the text
//! once; a hot document written through all three at once shows the
//! contention in the lost-race counters; a node killed with -9 under load
//! loses nothing acknowledged: its writers reach another node and resend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use e2e_tests::postgres::PgSchema;
use e2e_tests::proxy::Proxy;
use e2e_tests::{free_port, http_get, metric_value, server_binary, ServerProcess, WsClient};
use ot_core::Operation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Every test ends well within this.
const TEST_BUDGET: Duration = Duration::from_secs(60);
/// A generous bound for one wait.
const WAIT: Duration = Duration::from_secs(20);

/// Assert the test took less than [`TEST_BUDGET`] since `started`.
fn within_budget(started: Instant) {
    let took = started.elapsed();
    assert!(took < TEST_BUDGET, "took {took:?}");
}

/// Nodes on the database at `url` (one per data dir in `dirs`, each
/// with `extra` flags) behind a proxy that spreads connections over them;
/// they know the proxy's address as their public one.
async fn nodes_behind_a_proxy(
    url: &str,
    dirs: &[tempfile::TempDir],
    extra: &[&str],
) -> (Vec<ServerProcess>, Proxy) {
    let bin = server_binary().unwrap();
    let ports: Vec<u16> = dirs.iter().map(|_| free_port()).collect();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
        .collect();
    let proxy = Proxy::start_spread(&addrs).await.unwrap();
    let public = format!("http://{}", proxy.addr());
    let mut args = vec!["--database-url", url, "--public-url", &public];
    args.extend_from_slice(extra);
    let mut nodes = Vec::new();
    for (dir, port) in dirs.iter().zip(ports) {
        nodes.push(
            ServerProcess::start(&bin, dir.path(), port, &args)
                .await
                .unwrap(),
        );
    }
    (nodes, proxy)
}

/// No rate limit on the writers (they type as fast as acks come back).
const UNLIMITED: &[&str] = &["--ops-per-sec", "100000", "--ops-burst", "100000"];

/// A writer that inserts unique tokens (`«id:n»`) at token boundaries.
struct Writer {
    ws: WsClient,
    rng: ChaCha8Rng,
    typed: Vec<String>,
}

impl Writer {
    async fn join(addr: SocketAddr, doc: &str, id: &str, seed: u64) -> Writer {
        let mut ws = WsClient::new(addr, doc, id);
        reconnect(&mut ws).await.unwrap();
        Writer {
            ws,
            rng: ChaCha8Rng::seed_from_u64(seed),
            typed: Vec::new(),
        }
    }

    /// Type one token; the session sends it when nothing is outstanding.
    async fn type_one(&mut self) {
        let text = self.ws.client().text();
        let mut bounds = vec![0];
        bounds.extend(
            text.chars()
                .enumerate()
                .filter(|(_, c)| *c == '»')
                .map(|(i, _)| i + 1),
        );
        let pos = bounds[self.rng.random_range(0..bounds.len())];
        let token = format!("«{}:{}»", self.ws.client().client_id(), self.typed.len());
        let op = Operation::insert_at(text.len_chars(), pos, &token).unwrap();
        self.typed.push(token);
        // A dead socket keeps the edit pending: it is sent after the reconnect.
        let _ = self.ws.edit(&op).await;
    }

    /// Type for `how_long`, each token once the previous one is acknowledged.
    async fn type_for(mut self, how_long: Duration) -> Writer {
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            self.type_one().await;
            self.settle(Duration::from_secs(5)).await;
        }
        self
    }

    /// Wait until everything typed is acknowledged, reconnecting (through
    /// the proxy, to whichever node answers) whenever the connection fails.
    async fn settle(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.ws.is_connected() && reconnect(&mut self.ws).await.is_err() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self
                .ws
                .pump_until(left, |c| c.client().all_saved())
                .await
                .is_ok()
            {
                return;
            }
            self.ws.cut();
        }
    }
}

/// Reconnect until a node answers (bounded).
async fn reconnect(ws: &mut WsClient) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match ws.reconnect().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The stored log of `doc` (read through `node`): (client, seq) of each op
/// and the text they make.
async fn stored(node: SocketAddr, doc: &str) -> Result<(Vec<(String, u64)>, String)> {
    let mut text = String::new();
    let mut ids = Vec::new();
    loop {
        let body = http_get(
            node,
            &format!("/api/docs/{doc}/ops?from={}&limit=1000", ids.len()),
        )
        .await?;
        let v: Value = serde_json::from_str(&body)?;
        let ops = v["ops"].as_array().cloned().unwrap_or_default();
        if ops.is_empty() {
            return Ok((ids, text));
        }
        for op in ops {
            if op["rev"].as_u64() != Some(ids.len() as u64 + 1) {
                bail!("a gap in the stored log at {}", ids.len());
            }
            text = Operation::from_json_value(&op["op"])?
                .apply(&text)
                .with_context(|| format!("the stored op at revision {}", ids.len() + 1))?;
            ids.push((
                op["client"].as_str().unwrap_or_default().to_owned(),
                op["seq"].as_u64().unwrap_or_default(),
            ));
        }
    }
}

/// Every writer of `doc` converges on the stored text; every (client, seq)
/// is stored once; every token typed is in the text exactly once.
async fn check_converged(node: SocketAddr, doc: &str, writers: &mut [Writer]) {
    let (ids, text) = stored(node, doc).await.unwrap();
    let unique: HashSet<&(String, u64)> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{doc}: an op stored twice");
    let head = ids.len() as u64;
    for w in writers.iter_mut() {
        if !w.ws.is_connected() {
            reconnect(&mut w.ws).await.unwrap();
        }
        w.ws.pump_until(WAIT, |c| {
            c.client().all_saved() && c.client().revision() >= head
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", w.ws.client().client_id()));
        if let (true, Some(trace)) = (w.ws.text() != text, &w.ws.trace) {
            // With E2E_TRACE=1: what this client saw, to tell how it diverged.
            let path = std::env::temp_dir().join(format!("trace.{}", w.ws.client().client_id()));
            let _ = std::fs::write(&path, trace.join("\n"));
            eprintln!("{}'s frames: {}", w.ws.client().client_id(), path.display());
        }
        assert_eq!(w.ws.text(), text, "{} diverged", w.ws.client().client_id());
        for token in &w.typed {
            assert_eq!(text.matches(token.as_str()).count(), 1, "{token} in {doc}");
        }
    }
}

/// Within 2 s, every node answers `GET /api/docs/{doc}` with the head
/// stored in the database.
async fn every_node_shows_the_stored_head(nodes: &[ServerProcess], doc: &str) {
    let (ids, _) = stored(nodes[0].addr, doc).await.unwrap();
    let head = ids.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(2);
    for node in nodes {
        loop {
            let (rev, _) = e2e_tests::doc_state(node.addr, doc).await.unwrap();
            if rev == head {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {doc} at revision {rev}, stored {head}",
                node.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How many conflicts `doc`'s journal holds (read through `node`).
async fn conflicts_of(node: SocketAddr, doc: &str) -> usize {
    let (mut count, mut after) = (0, 0);
    loop {
        let body = http_get(
            node,
            &format!("/api/docs/{doc}/conflicts?from={after}&limit=1000"),
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let page = v["conflicts"].as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else {
            return count;
        };
        after = last["rev"].as_u64().unwrap();
        count += page.len();
    }
}

async fn metric_sum(nodes: &[ServerProcess], name: &str) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += metric_value(node.addr, name).await.unwrap_or(0.0);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_spread_over_three_nodes_converge_and_a_hot_document_shows_the_races() {
    let started = Instant::now();
    let schema = PgSchema::new("spread").unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, proxy) = nodes_behind_a_proxy(&schema.url, &dirs, UNLIMITED).await;
    // Nine writers: six on a hot document, three on another; the proxy
    // hands their connections to the three nodes in turn.
    let mut writers = Vec::new();
    for i in 0..9u64 {
        let doc = if i < 6 { "hot" } else { "calm" };
        writers.push(Writer::join(proxy.addr(), doc, &format!("w{i}"), i).await);
    }
    for node in &nodes {
        let connections = metric_value(node.addr, "ot_connections").await.unwrap();
        assert!(
            connections >= 2.0,
            "{}: {connections} connections",
            node.addr
        );
    }
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|w| tokio::spawn(w.type_for(Duration::from_secs(4))))
        .collect();
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(task.await.unwrap());
    }
    let typed: usize = writers.iter().map(|w| w.typed.len()).sum();
    // Every node that has a document open shows its stored head soon after
    // the last commit (not only at the next periodic check, 10 s later).
    for doc in ["hot", "calm"] {
        every_node_shows_the_stored_head(&nodes, doc).await;
    }
    let (hot, calm) = writers.split_at_mut(6);
    check_converged(nodes[1].addr, "hot", hot).await;
    check_converged(nodes[2].addr, "calm", calm).await;
    let races = metric_sum(&nodes, "ot_storage_lost_races_total").await;
    let retries = metric_sum(&nodes, "ot_storage_race_retries_total").await;
    let give_ups = metric_sum(&nodes, "ot_storage_race_give_ups_total").await;
    let catch_ups = metric_sum(&nodes, "ot_storage_catch_ups_total").await;
    let conflicts = conflicts_of(nodes[0].addr, "hot").await;
    eprintln!(
        "three nodes: {typed} tokens typed, {races} lost races, {retries} ops received again, {conflicts} conflicts journaled, {catch_ups} catch-ups, {:.1?}",
        started.elapsed()
    );
    assert!(typed > 50, "only {typed} tokens typed");
    assert!(races > 0.0, "a hot document through three nodes races");
    assert!(catch_ups > 0.0, "nodes took each other's ops");
    // A node that loses a race receives its pending ops again itself: no
    // writer is told to resend, and each op received again is a conflict.
    assert!(
        retries >= races,
        "{retries} ops received again after {races} lost races"
    );
    assert_eq!(give_ups, 0.0, "no document gave up retrying");
    let errors: Vec<String> = writers
        .iter()
        .flat_map(|w| {
            w.ws.errors
                .iter()
                .map(|e| format!("{}: {e:?}", w.ws.client().client_id()))
        })
        .collect();
    assert!(errors.is_empty(), "writers were sent errors: {errors:?}");
    assert!(
        conflicts > 0,
        "the ops received again are journaled as conflicts"
    );
    within_budget(started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_acknowledged() {
    let started = Instant::now();
    let schema = PgSchema::new("kill").unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut nodes, proxy) = nodes_behind_a_proxy(&schema.url, &dirs, UNLIMITED).await;
    let mut writers = Vec::new();
    for i in 0..6u64 {
        writers.push(Writer::join(proxy.addr(), "doc", &format!("k{i}"), 100 + i).await);
    }
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|w| tokio::spawn(w.type_for(Duration::from_secs(4))))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[0].kill9();
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(task.await.unwrap());
    }
    // Everything acknowledged before, during and after the kill is stored
    // once, and every writer (some moved to another node) converges.
    check_converged(nodes[1].addr, "doc", &mut writers).await;
    let moved: HashMap<String, usize> = writers
        .iter()
        .map(|w| (w.ws.client().client_id().to_owned(), w.typed.len()))
        .collect();
    eprintln!(
        "a node killed: tokens per writer {moved:?}, {:.1?}",
        started.elapsed()
    );
    within_budget(started);
}

/// A PostgreSQL of this test's own (`scripts/private-postgres`), so that it
/// can be stopped and started again without disturbing the other tests.
struct OwnPostgres {
    dir: String,
    url: String,
}

fn private_postgres(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/private-postgres");
    let out = std::process::Command::new(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "private-postgres {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let line = private_postgres(&["start"]);
        let (dir, url) = line.split_once(' ').unwrap();
        OwnPostgres {
            dir: dir.to_owned(),
            url: url.to_owned(),
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        private_postgres(&["stop", &self.dir]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_loses_nothing_and_the_nodes_recover_by_themselves() {
    let started = Instant::now();
    let postgres = OwnPostgres::start();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, proxy) =
        nodes_behind_a_proxy(&postgres.url, &dirs, &["--storage-timeout", "1s"]).await;
    let mut writers = Vec::new();
    for i in 0..4u64 {
        writers.push(Writer::join(proxy.addr(), "doc", &format!("o{i}"), 200 + i).await);
    }
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|w| tokio::spawn(w.type_for(Duration::from_secs(7))))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Two seconds without a database, under load.
    private_postgres(&["pause", &postgres.dir]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &nodes {
        let health = http_get(node.addr, "/healthz").await.unwrap();
        assert!(health.contains("ok"), "{health}");
    }
    private_postgres(&["resume", &postgres.dir]);
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(task.await.unwrap());
    }
    let refused: usize = writers
        .iter()
        .map(|w| {
            w.ws.errors
                .iter()
                .filter(|e| e.code.as_str() == "storage_error")
                .count()
        })
        .sum();
    // The same nodes, never restarted, store everything acknowledged once.
    check_converged(nodes[0].addr, "doc", &mut writers).await;
    let typed: usize = writers.iter().map(|w| w.typed.len()).sum();
    eprintln!(
        "a database outage: {typed} tokens typed, {refused} storage_error answers, {:.1?}",
        started.elapsed()
    );
    assert!(refused > 0, "the outage was seen as typed errors");
    within_budget(started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_at_one_node_closes_the_writers_of_another_with_4004() {
    let started = Instant::now();
    let schema = PgSchema::new("delete").unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let bin = server_binary().unwrap();
    let mut nodes = Vec::new();
    for dir in &dirs {
        let args = ["--database-url", &schema.url];
        nodes.push(
            ServerProcess::start(&bin, dir.path(), free_port(), &args)
                .await
                .unwrap(),
        );
    }
    // A writer at the second node; the delete is asked at the first.
    let mut writer = WsClient::join(nodes[1].addr, "doomed", "victim")
        .await
        .unwrap();
    writer
        .edit_saved(&Operation::insert_at(0, 0, "soon gone").unwrap(), WAIT)
        .await
        .unwrap();
    let (status, body) = ot_driver::http::send(
        &nodes[0].addr.into(),
        ot_driver::http::Method::DELETE,
        "/api/admin/docs/doomed",
        None,
        &e2e_tests::test_connect_options(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let asked = Instant::now();
    let close = writer.expect_close(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        close.as_ref().map(|(code, _)| *code),
        Some(4004),
        "{close:?}"
    );
    eprintln!(
        "closed with 4004 {:?} after the delete at the other node",
        asked.elapsed()
    );
    // Told by the change feed, not by the periodic check.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // The writer comes back to an empty next generation.
    let mut again = WsClient::join(nodes[1].addr, "doomed", "victim-2")
        .await
        .unwrap();
    again.drain(Duration::from_millis(200)).await.unwrap();
    assert_eq!(again.text(), "");
    within_budget(started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_documents_on_a_commit_pool_of_two() {
    let started = Instant::now();
    let schema = PgSchema::new("pool").unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let pools = [
        "--database-commit-connections",
        "2",
        "--database-read-connections",
        "2",
    ];
    let (nodes, proxy) = nodes_behind_a_proxy(&schema.url, &dirs, &pools).await;
    // Two writers per document, 64 documents, spread over both nodes.
    let mut writers = Vec::new();
    for i in 0..128u64 {
        let doc = format!("pool-{}", i % 64);
        writers.push(Writer::join(proxy.addr(), &doc, &format!("p{i}"), 300 + i).await);
    }
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|w| tokio::spawn(w.type_for(Duration::from_secs(3))))
        .collect();
    let mut by_doc: HashMap<String, Vec<Writer>> = HashMap::new();
    for task in tasks {
        let w = task.await.unwrap();
        by_doc.entry(w.ws.doc().to_owned()).or_default().push(w);
    }
    let mut typed = 0;
    for (doc, writers) in by_doc.iter_mut() {
        typed += writers.iter().map(|w| w.typed.len()).sum::<usize>();
        check_converged(nodes[0].addr, doc, writers).await;
    }
    eprintln!(
        "64 documents, pools of 2: {typed} tokens typed, {:.1?}",
        started.elapsed()
    );
    assert!(typed > 128, "only {typed} tokens typed");
    within_budget(started);
}

/// libfaketime, which moves a process's clock (Debian: `faketime`;
/// `scripts/test` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The token secret of the clock test's nodes.
const CLOCK_SECRET: &[u8] = b"a clock test secret of 32 bytes or more";

/// A GET with `token`: its status.
async fn status_with(addr: SocketAddr, path: &str, token: &str) -> u16 {
    let options = ot_driver::ConnectOptions {
        token: Some(ot_driver::TokenSource::Value(token.to_owned())),
        ..ot_driver::ConnectOptions::default()
    };
    ot_driver::http::get_with(&addr.into(), path, &options)
        .await
        .map_or(0, |(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_is_ten_minutes_ahead_changes_nothing_but_its_log() {
    use ot_protocol::Access;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install it (as root) with apt-get install -y faketime, as scripts/test does"
    );
    let started = Instant::now();
    let schema = PgSchema::new("clock").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, CLOCK_SECRET).unwrap();
    let secret_arg = secret.to_str().unwrap();
    let args = [
        "--database-url",
        &schema.url,
        "--auth-secret-file",
        secret_arg,
    ];
    let bin = server_binary().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let b_log = dir.path().join("b.log");
    let a = ServerProcess::start(&bin, &a_dir, free_port(), &args)
        .await
        .unwrap();
    // Node b's clock (wall clock only: timers keep the real pace) is ten
    // minutes ahead.
    let ahead = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", "+10m"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let b = ServerProcess::start_with(&bin, &b_dir, free_port(), &args, &ahead, Some(&b_log))
        .await
        .unwrap();

    // Its own log says so.
    let log = std::fs::read_to_string(&b_log).unwrap();
    assert!(log.contains("clock is off"), "node b's log: {log}");
    let offset: i64 = log
        .split("offset_ms=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit() && c != '-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset in node b's log: {log}"));
    assert!(
        (-610_000..=-590_000).contains(&offset),
        "the database's clock is ten minutes behind node b's: {offset} ms"
    );

    let token =
        |claims: &server::auth::Claims| server::auth::mint_hs256(claims, CLOCK_SECRET).unwrap();
    // Valid for two more minutes by the real clock: both nodes take it (by
    // its own clock node b would see it expired eight minutes ago).
    let soon = token(&e2e_tests::test_claims("w", &["*"], Access::Admin, 120));
    // Not valid for five more minutes: both refuse it (by its own clock
    // node b would take it).
    let mut later = e2e_tests::test_claims("w", &["*"], Access::Admin, 3600);
    later.nbf = later.iat.map(|iat| iat + 300);
    let later = token(&later);
    for node in [&a, &b] {
        assert_eq!(
            status_with(node.addr, "/api/docs", &soon).await,
            200,
            "{}",
            node.addr
        );
        assert_eq!(
            status_with(node.addr, "/api/docs", &later).await,
            401,
            "{}",
            node.addr
        );
    }

    // A connection with the two-minute token stays open at node b (its end
    // is computed from the same clock) and its op is stored with the
    // database's time.
    let mut request = format!("ws://{}/ws/d?client=w1", b.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {soon}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let first = e2e_tests::recv_json(&mut socket, WAIT).await.unwrap();
    assert_eq!(first["type"], "snapshot", "{first}");
    let op = Operation::insert_at(0, 0, "tick").unwrap();
    let message = ot_protocol::ClientMessage::Op {
        rev: 0,
        seq: 1,
        op,
        ranges: None,
        origin: None,
    };
    e2e_tests::send_message(&mut socket, &message)
        .await
        .unwrap();
    let ack = e2e_tests::recv_json(&mut socket, WAIT).await.unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    match e2e_tests::next_event(&mut socket, Duration::from_secs(2)).await {
        Err(_) => {} // nothing within 2 s: still open
        Ok(event) => panic!("the connection at node b got {event:?}"),
    }
    let body = http_get_with_token(a.addr, "/api/docs/d/ops?from=0&limit=10", &soon).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let time_ms = v["ops"][0]["time_ms"].as_i64().unwrap();
    let real_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (real_ms - time_ms).abs() < 60_000,
        "the op written through node b is stored at {time_ms}, now is {real_ms}"
    );
    within_budget(started);
}

/// A GET with `token`: its body (a panic unless 200).
async fn http_get_with_token(addr: SocketAddr, path: &str, token: &str) -> String {
    let options = ot_driver::ConnectOptions {
        token: Some(ot_driver::TokenSource::Value(token.to_owned())),
        ..ot_driver::ConnectOptions::default()
    };
    let (status, body) = ot_driver::http::get_with(&addr.into(), path, &options)
        .await
        .unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let path = &rest[rest.find('/').unwrap()..];
    format!("{scheme_user}@{addr}{path}")
}

/// The host and port of a PostgreSQL URL.
fn database_addr(url: &str) -> SocketAddr {
    let rest = url.split_once('@').unwrap().1;
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

/// Two nodes on `schema`: node a reaching the database through a proxy the
/// test can stall (returned first), node b directly; and their data dirs.
async fn a_node_behind_a_stallable_link(
    schema: &PgSchema,
) -> (Proxy, ServerProcess, ServerProcess, Vec<tempfile::TempDir>) {
    let link = Proxy::start(database_addr(&schema.url)).await.unwrap();
    let bin = server_binary().unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let url_a = through(&schema.url, link.addr());
    let mut nodes = Vec::new();
    for (dir, url) in dirs.iter().zip([url_a.as_str(), schema.url.as_str()]) {
        let mut args = vec!["--database-url", url];
        args.extend_from_slice(UNLIMITED);
        nodes.push(
            ServerProcess::start(&bin, dir.path(), free_port(), &args)
                .await
                .unwrap(),
        );
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (link, a, b, dirs)
}

/// A raw connection of writer `client` to `doc` at `node`, past its snapshot.
async fn join_raw(node: SocketAddr, doc: &str, client: &str) -> e2e_tests::Socket {
    let mut socket = e2e_tests::ws_connect(node, &format!("/ws/{doc}?client={client}"))
        .await
        .unwrap();
    let first = e2e_tests::recv_json(&mut socket, WAIT).await.unwrap();
    assert_eq!(first["type"], "snapshot", "{first}");
    socket
}

/// Wait until `doc` is stored (readable through `node`).
async fn wait_stored(node: SocketAddr, doc: &str) {
    let deadline = Instant::now() + WAIT;
    while http_get(node, &format!("/api/docs/{doc}")).await.is_err() {
        assert!(Instant::now() < deadline, "{doc} was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writer's op `seq` inserting `text` into the empty document (revision 0).
fn insert_at_start(seq: u64, text: &str) -> ot_protocol::ClientMessage {
    ot_protocol::ClientMessage::Op {
        rev: 0,
        seq,
        op: Operation::insert_at(0, 0, text).unwrap(),
        ranges: None,
        origin: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_op_the_winner_committed_is_answered_with_the_winners_ack() {
    use e2e_tests::proxy::Direction;
    let started = Instant::now();
    let schema = PgSchema::new("winners_ack").unwrap();
    // Node a reaches the database through a proxy the test can stall.
    let (link, a, b, _dirs) = a_node_behind_a_stallable_link(&schema).await;

    let op = insert_at_start(1, "x");
    // Writer c sends its op to node a, whose commit cannot reach the database.
    let mut at_a = join_raw(a.addr, "d", "c").await;
    // The document's creation is stored before the link stalls.
    wait_stored(b.addr, "d").await;
    link.stall(Direction::Both);
    e2e_tests::send_message(&mut at_a, &op).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its resend through node b (as after a reconnect elsewhere) wins.
    let mut at_b = join_raw(b.addr, "d", "c").await;
    e2e_tests::send_message(&mut at_b, &op).await.unwrap();
    let ack = e2e_tests::recv_json(&mut at_b, WAIT).await.unwrap();
    assert_eq!(
        (ack["type"].as_str(), ack["rev"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    // Node a's commit then loses the race: it takes the winner's op (its
    // own op, which the client takes as the ack) and answers the pending
    // op with the winner's ack, not an error.
    link.resume(Direction::Both);
    loop {
        let message = e2e_tests::recv_json(&mut at_a, WAIT).await.unwrap();
        match message["type"].as_str() {
            Some("op") => assert_eq!(
                (
                    message["client"].as_str(),
                    message["seq"].as_u64(),
                    message["rev"].as_u64()
                ),
                (Some("c"), Some(1), Some(1)),
                "{message}"
            ),
            Some("ack") => {
                assert_eq!(
                    (message["rev"].as_u64(), message["seq"].as_u64()),
                    (Some(1), Some(1))
                );
                break;
            }
            _ => panic!("node a answered {message}"),
        }
    }
    let (ids, text) = stored(b.addr, "d").await.unwrap();
    assert_eq!((ids, text.as_str()), (vec![("c".to_owned(), 1)], "x"));
    assert!(
        metric_value(a.addr, "ot_storage_lost_races_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(metric_value(a.addr, "ot_duplicates_total").await.unwrap() >= 1.0);
    within_budget(started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_server_whose_home_is_two_nodes_on_postgresql_converges() {
    let started = Instant::now();
    let schema = PgSchema::new("region_home").unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, proxy) = nodes_behind_a_proxy(&schema.url, &dirs, UNLIMITED).await;
    // The region's link reaches the home nodes through the spreading proxy.
    let region_dir = tempfile::tempdir().unwrap();
    let upstream = format!("ws://{}", proxy.addr());
    let region = ServerProcess::start(
        &server_binary().unwrap(),
        region_dir.path(),
        free_port(),
        &["--upstream", &upstream, "--node-id", "eu"],
    )
    .await
    .unwrap();
    let mut at_home = WsClient::join(proxy.addr(), "doc", "home-writer")
        .await
        .unwrap();
    let mut at_region = WsClient::join(region.addr, "doc", "region-writer")
        .await
        .unwrap();
    let mut typed = Vec::new();
    for round in 0..3 {
        for i in 0..6 {
            for (writer, side) in [(&mut at_region, "r"), (&mut at_home, "h")] {
                let text = format!("<{side}{round}.{i}>");
                let len = writer.client().text().len_chars();
                let op = Operation::insert_at(len, 0, &text).unwrap();
                writer.edit_saved(&op, WAIT).await.unwrap();
                typed.push(text);
            }
        }
        // Every connection through the proxy is cut: the link and the home
        // writer come back, each to whichever node answers.
        proxy.cut();
        reconnect(&mut at_home).await.unwrap();
    }
    // The region's stored text and both home nodes' converge, each edit once.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, at_region_text) = e2e_tests::doc_state(region.addr, "doc").await.unwrap();
        let mut texts = vec![at_region_text];
        for node in &nodes {
            texts.push(e2e_tests::doc_state(node.addr, "doc").await.unwrap().1);
        }
        let each_once = typed
            .iter()
            .all(|t| texts[0].matches(t.as_str()).count() == 1);
        if each_once && texts.iter().all(|t| *t == texts[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "not converged: {texts:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The home's log holds the region's edits once each, with their origin.
    let body = http_get(nodes[0].addr, "/api/docs/doc/ops?from=0&limit=1000")
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let from_region = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["client"] == "r-eu")
        .inspect(|op| assert_eq!(op["origin"]["node"], "eu", "{op}"))
        .count();
    assert!(from_region > 0, "no op of the region's link at the home");
    let (ids, _) = stored(nodes[1].addr, "doc").await.unwrap();
    let unique: HashSet<&(String, u64)> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an op stored twice");
    within_budget(started);
}

/// The next message of `socket` within `within` whose type is `kind`, if any.
async fn next_of_type(
    socket: &mut e2e_tests::Socket,
    kind: &str,
    within: Duration,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match e2e_tests::next_event(socket, left).await {
            Ok(e2e_tests::Event::Json(v)) if v["type"] == kind => return Some(v),
            Ok(e2e_tests::Event::Json(_)) => continue,
            Ok(e2e_tests::Event::Closed(frame)) => {
                return Some(serde_json::json!({ "type": "closed", "frame": format!("{frame:?}") }))
            }
            Ok(_) | Err(_) => return None,
        }
    }
}

/// Wait for the next `kind` message on `socket` and assert it is about
/// `client`; returns it.
async fn expect_about(socket: &mut e2e_tests::Socket, kind: &str, client: &str) -> Value {
    let seen = next_of_type(socket, kind, WAIT).await;
    assert_eq!(
        seen.as_ref().map(|v| v["client"].clone()),
        Some(client.into()),
        "{kind}: {seen:?}"
    );
    seen.unwrap_or_default()
}

/// Presence crosses nodes (README and PROTOCOL.md): a cursor reaches the
/// writers of the document at every node, also at a revision the other node
/// reads later, and a joiner there sees it; a leave crosses too. A writer's
/// second connection is per node: at another node both stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_a_writers_second_connection_is_per_node() {
    let started = Instant::now();
    let schema = PgSchema::new("presence").unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, _proxy) = nodes_behind_a_proxy(&schema.url, &dirs, UNLIMITED).await;
    let join = |node: SocketAddr, client: &'static str| join_raw(node, "p", client);
    let mut near = join(nodes[0].addr, "near").await;
    let mut far = join(nodes[1].addr, "far").await;
    let mut mover = join(nodes[0].addr, "mover").await;
    let cursor_at = |rev: u64, pos: usize| ot_protocol::ClientMessage::Cursor {
        rev,
        ranges: vec![ot_core::Range::cursor(pos)],
        name: Some("Mover".into()),
    };
    e2e_tests::send_message(&mut mover, &cursor_at(0, 0))
        .await
        .unwrap();
    for (socket, node) in [(&mut near, "its own node"), (&mut far, "the other node")] {
        let seen = expect_about(socket, "cursor", "mover").await;
        assert_eq!(seen["name"], "Mover", "at {node}: {seen}");
    }
    // An op and a cursor after it, at node 0: node 1 shows the cursor at
    // that revision or later (it may read the op after the note arrives).
    e2e_tests::send_message(&mut mover, &insert_at_start(1, "abc"))
        .await
        .unwrap();
    let ack = next_of_type(&mut mover, "ack", WAIT).await;
    assert_eq!(
        ack.as_ref().map(|v| v["rev"].clone()),
        Some(1.into()),
        "{ack:?}"
    );
    e2e_tests::send_message(&mut mover, &cursor_at(1, 2))
        .await
        .unwrap();
    let seen = expect_about(&mut far, "cursor", "mover").await;
    assert_eq!(
        (&seen["rev"], &seen["ranges"]),
        (&1.into(), &serde_json::json!([[2, 2]])),
        "{seen}"
    );
    // A writer joining node 1 now sees the cursor of node 0's writer.
    let mut late = join(nodes[1].addr, "late").await;
    expect_about(&mut late, "cursor", "mover").await;
    // The same writer at the other node: both connections stay open.
    let again = join(nodes[1].addr, "mover").await;
    assert_eq!(
        next_of_type(&mut mover, "closed", Duration::from_secs(1)).await,
        None,
        "replaced by a connection at another node"
    );
    // It leaves node 1 (its writers are told at once).
    drop(again);
    expect_about(&mut far, "leave", "mover").await;
    // At its own node, a second connection replaces the first (4009).
    let third = join(nodes[0].addr, "mover").await;
    let closed = next_of_type(&mut mover, "closed", WAIT).await;
    assert!(
        closed
            .as_ref()
            .is_some_and(|v| v["frame"].as_str().unwrap_or_default().contains("4009")),
        "{closed:?}"
    );
    // The writer leaves node 0 too: node 1 is told by node 0.
    drop(third);
    expect_about(&mut far, "leave", "mover").await;
    within_budget(started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_waiting_on_a_new_connection_is_acked_after_a_lost_race() {
    use e2e_tests::proxy::Direction;
    let started = Instant::now();
    let schema = PgSchema::new("resend_after_race").unwrap();
    // Node a reaches the database through a proxy the test can stall.
    let (link, a, b, _dirs) = a_node_behind_a_stallable_link(&schema).await;
    let insert = insert_at_start;
    let join = |node: SocketAddr, client: &'static str| join_raw(node, "d", client);
    let mut first = join(a.addr, "c").await;
    wait_stored(b.addr, "d").await;
    // Writer c's op is pending at node a, whose commit cannot reach the database.
    link.stall(Direction::Both);
    e2e_tests::send_message(&mut first, &insert(1, "c"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // c reconnects to node a (the new connection replaces the first) and
    // resends: it waits for the pending original.
    let mut second = join(a.addr, "c").await;
    e2e_tests::send_message(&mut second, &insert(1, "c"))
        .await
        .unwrap();
    // Meanwhile writer w's op is committed through node b first.
    let mut other = join(b.addr, "w").await;
    e2e_tests::send_message(&mut other, &insert(1, "w"))
        .await
        .unwrap();
    let ack = e2e_tests::recv_json(&mut other, WAIT).await.unwrap();
    assert_eq!(
        (ack["type"].as_str(), ack["rev"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    // Node a's commit loses; it receives c's op again (its first connection
    // is gone) and acks the resend with the revision it got.
    link.resume(Direction::Both);
    loop {
        let message = e2e_tests::recv_json(&mut second, WAIT).await.unwrap();
        match message["type"].as_str() {
            // w's op, then c's own op (which a client takes as its ack).
            Some("op") => assert!(
                (message["client"] == "w" && message["rev"] == 1)
                    || (message["client"] == "c" && message["seq"] == 1 && message["rev"] == 2),
                "{message}"
            ),
            Some("ack") => {
                assert_eq!(
                    (message["rev"].as_u64(), message["seq"].as_u64()),
                    (Some(2), Some(1))
                );
                break;
            }
            _ => panic!("node a answered {message}"),
        }
    }
    let (ids, text) = stored(b.addr, "d").await.unwrap();
    assert_eq!(ids, vec![("w".to_owned(), 1), ("c".to_owned(), 1)]);
    assert_eq!(text.chars().count(), 2, "{text}");
    assert!(
        metric_value(a.addr, "ot_storage_lost_races_total")
            .await
            .unwrap()
            >= 1.0
    );
    within_budget(started);
}

/// Wait until `a` and `b` store the same text of `doc`, holding each of
/// `typed` exactly once.
async fn same_text_each_once(a: SocketAddr, b: SocketAddr, doc: &str, typed: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, at_a) = e2e_tests::doc_state(a, doc).await.unwrap();
        let (_, at_b) = e2e_tests::doc_state(b, doc).await.unwrap();
        let each_once = typed.iter().all(|t| at_a.matches(t.as_str()).count() == 1);
        if at_a == at_b && each_once {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not converged:\n {at_a:?}\n {at_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A regional server whose own storage is PostgreSQL: its node id and its
/// link's writer key are kept in the database, not the data dir, so a
/// process started on that database with an empty data dir is the same
/// region (the home takes its link), and one started with another node id
/// is refused naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_server_on_postgresql_keeps_its_identity_in_the_database() {
    let started = Instant::now();
    let schema = PgSchema::new("region_on_pg").unwrap();
    let bin = server_binary().unwrap();
    let home_dir = tempfile::tempdir().unwrap();
    let home = ServerProcess::start(&bin, home_dir.path(), free_port(), &[])
        .await
        .unwrap();
    let upstream = format!("ws://{}", home.addr);
    let region_args = |node: Option<&'static str>| {
        let mut args = vec![
            "--database-url".to_owned(),
            schema.url.clone(),
            "--upstream".to_owned(),
            upstream.clone(),
        ];
        if let Some(node) = node {
            args.extend(["--node-id".to_owned(), node.to_owned()]);
        }
        args
    };
    let start_region = |dir: &tempfile::TempDir, args: Vec<String>| {
        let bin = bin.clone();
        let dir = dir.path().to_owned();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServerProcess::start(&bin, &dir, free_port(), &args)
                .await
                .unwrap()
        }
    };
    let first_dir = tempfile::tempdir().unwrap();
    let region = start_region(&first_dir, region_args(Some("eu"))).await;
    let mut at_home = WsClient::join(home.addr, "doc", "home-writer")
        .await
        .unwrap();
    let mut typed = Vec::new();
    {
        let mut at_region = WsClient::join(region.addr, "doc", "region-writer")
            .await
            .unwrap();
        for i in 0..3 {
            for (writer, side) in [(&mut at_region, "r"), (&mut at_home, "h")] {
                let text = format!("<{side}{i}>");
                let len = writer.client().text().len_chars();
                let op = Operation::insert_at(len, 0, &text).unwrap();
                writer.edit_saved(&op, WAIT).await.unwrap();
                typed.push(text);
            }
        }
        same_text_each_once(region.addr, home.addr, "doc", &typed).await;
    }
    region.stop().unwrap();
    assert!(
        !first_dir.path().join("node-id").exists() && !first_dir.path().join("link-key").exists(),
        "the database holds the region's identity, not the data dir"
    );

    // Another process on the same database, with an empty data dir and no
    // --node-id: the same region. Its link is r-eu with the same key (the
    // home would refuse another key for r-eu), so its edits reach the home.
    let second_dir = tempfile::tempdir().unwrap();
    let region = start_region(&second_dir, region_args(None)).await;
    let mut at_region = WsClient::join(region.addr, "doc", "region-writer")
        .await
        .unwrap();
    for i in 3..5 {
        let text = format!("<r{i}>");
        let len = at_region.client().text().len_chars();
        let op = Operation::insert_at(len, 0, &text).unwrap();
        at_region.edit_saved(&op, WAIT).await.unwrap();
        typed.push(text);
    }
    same_text_each_once(region.addr, home.addr, "doc", &typed).await;
    let body = http_get(home.addr, "/api/docs/doc/ops?from=0&limit=1000")
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let links: HashSet<&str> = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|op| op["client"].as_str())
        .filter(|client| client.starts_with("r-"))
        .collect();
    assert_eq!(links, HashSet::from(["r-eu"]), "one link identity");
    // A second process of this region on the same database is refused while
    // the first runs (both would keep the link and replace each other's).
    let twin_dir = tempfile::tempdir().unwrap();
    let args = region_args(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let twin = e2e_tests::run_to_exit(twin_dir.path(), &args);
    assert!(!twin.status.success());
    let said = e2e_tests::output_text(&twin);
    assert!(said.contains("another regional server process"), "{said}");
    drop(at_region);
    region.stop().unwrap();

    // Another node id on that database is refused, naming both.
    let third_dir = tempfile::tempdir().unwrap();
    let args = region_args(Some("us"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = e2e_tests::run_to_exit(third_dir.path(), &args);
    assert!(!refused.status.success());
    let said = e2e_tests::output_text(&refused);
    assert!(
        said.contains("belongs to node `eu`") && said.contains("--node-id us"),
        "{said}"
    );
    within_budget(started);
}

/// `sslmode=require` in `--database-url`: every session (the pools' and
/// the change feed's) is TLS, the database's certificate checked against
/// `--database-ca-file`; without that CA the node refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_checks_its_certificate() {
    let started = Instant::now();
    let ca = e2e_tests::postgres::test_database_ca().unwrap();
    let ca = ca.to_str().unwrap();
    let schema = PgSchema::new("tls").unwrap();
    let url = format!("{}&sslmode=require", schema.url);
    let ssl_sessions = || {
        e2e_tests::postgres::query_count(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'ot-server' AND s.ssl",
        )
        .unwrap()
    };
    let before = ssl_sessions();
    let bin = server_binary().unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for dir in &dirs {
        let args = ["--database-url", &url, "--database-ca-file", ca];
        nodes.push(
            ServerProcess::start(&bin, dir.path(), free_port(), &args)
                .await
                .unwrap(),
        );
    }
    // Each node: its pools' sessions and its change feed's, over TLS.
    assert!(
        ssl_sessions() >= before + 4,
        "{} TLS sessions",
        ssl_sessions()
    );
    // An op at one node reaches a writer at the other within 2 s: through
    // the change feed (the periodic check comes only every 10 s).
    let mut far = WsClient::join(nodes[1].addr, "doc", "far").await.unwrap();
    let mut near = WsClient::join(nodes[0].addr, "doc", "near").await.unwrap();
    let op = Operation::insert_at(0, 0, "<over tls>").unwrap();
    near.edit_saved(&op, WAIT).await.unwrap();
    far.pump_until(Duration::from_secs(2), |c| c.text() == "<over tls>")
        .await
        .unwrap();
    drop((near, far));
    for node in nodes {
        node.stop().unwrap();
    }

    // Without the CA that signed the database's certificate: refused.
    let dir = tempfile::tempdir().unwrap();
    let refused = e2e_tests::run_to_exit(
        dir.path(),
        &["--database-url", &url, "--storage-timeout", "3s"],
    );
    assert!(!refused.status.success());
    let said = e2e_tests::output_text(&refused);
    assert!(said.contains("certificate"), "{said}");
    within_budget(started);
}
