//! Connections at scale (issue 13): a reconnect storm of 1,000 clients cut at
//! once by the test proxy (all come back and converge while a bystander's
//! acks stay prompt), and 10,000 idle connections held by a server process
//! (its memory per connection is printed for BENCHMARKS.md). Both bounded in
//! time; both need file descriptors, which the test raises to its hard limit
//! (and skips, saying so, when that is too low).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::proxy::Proxy;
use e2e_tests::{doc_state, server_binary, start_server_with, ws_connect, ServerProcess, WsClient};
use futures_util::StreamExt;
use ot_core::Operation;

const T: Duration = Duration::from_secs(30);

/// Raise this process's open-file limit to the hard limit; `None` (with a
/// message) if that is below `needed`.
fn descriptors_for(needed: u64, test: &str) -> Option<u64> {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if soft < needed {
        eprintln!(
            "SKIPPED {test}: needs {needed} open files, the hard limit allows {soft} (raise `ulimit -Hn`)"
        );
        return None;
    }
    Some(soft)
}

/// Get every local edit of `client` acknowledged, reconnecting (with a little
/// jitter) whenever the connection is lost or refused; fail at `deadline`.
async fn land(client: &mut WsClient, deadline: Instant) {
    let mut attempt = 0u32;
    loop {
        assert!(Instant::now() < deadline, "{} never landed", client.doc());
        if !client.is_connected() {
            if client.reconnect().await.is_err() {
                attempt += 1;
                let wait = 20 + rand::random::<u64>() % (50 * u64::from(attempt.min(10)));
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            attempt = 0;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if client
            .pump_until(left.min(T), |c| c.client().all_saved())
            .await
            .is_ok()
        {
            return;
        }
        // Lost mid-way: `pump_until` reconnects by itself only once; start over.
        client.cut();
    }
}

/// 1,000 clients on 20 documents, each with an edit in flight, all cut at
/// once by the proxy: they all reconnect at the same moment (no backoff
/// spreading them), every edit lands exactly once and every replica
/// converges, and a bystander on its own connection keeps getting its acks
/// within a second while the storm runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_1000_clients_converges_and_the_bystander_stays_served() {
    const CLIENTS: usize = 1000;
    const DOCS: usize = 20;
    if descriptors_for(5 * CLIENTS as u64 + 512, "the reconnect storm").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| {
        c.max_connections_per_addr = 10 * CLIENTS;
        c.allowed_host = vec!["127.0.0.1".to_owned()];
        c.durability = "relaxed".parse().unwrap();
    })
    .await
    .unwrap();
    let addr = server.addr;
    let proxy = Arc::new(Proxy::start(addr).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(300);

    // Everyone joins through the proxy (a few at a time, as pages load).
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut joining = futures_util::stream::iter(0..CLIENTS)
        .map(|i| {
            let proxy = proxy.addr();
            async move {
                let doc = format!("storm-{}", i % DOCS);
                let mut client = WsClient::new(proxy, &doc, &format!("c{i}"));
                land(&mut client, Instant::now() + Duration::from_secs(120)).await;
                (i, client)
            }
        })
        .buffer_unordered(64);
    while let Some(joined) = joining.next().await {
        clients.push(joined);
    }
    // Client i is on document i % DOCS and inserts `<i>`.
    clients.sort_by_key(|(i, _)| *i);
    let mut clients: Vec<WsClient> = clients.into_iter().map(|(_, c)| c).collect();
    assert_eq!(proxy.open_connections(), CLIENTS);

    // Each sends one edit (unique text); then the proxy cuts every connection
    // while those edits are in flight.
    for (i, client) in clients.iter_mut().enumerate() {
        let len = client.client().text().len_chars();
        client
            .edit(&Operation::insert_at(len, 0, &format!("<{i}>")).unwrap())
            .await
            .unwrap();
    }
    proxy.cut();

    // The storm: all reconnect at once; meanwhile the bystander edits.
    let mut bystander = WsClient::join(addr, "bystander", "bystander")
        .await
        .unwrap();
    let storm = tokio::spawn(async move {
        let landed = futures_util::stream::iter(clients)
            .map(|mut client| async move {
                client.cut();
                land(&mut client, deadline).await;
                client
            })
            .buffer_unordered(CLIENTS)
            .collect::<Vec<_>>()
            .await;
        landed
    });
    let mut slowest = Duration::ZERO;
    let mut acks = 0;
    while !storm.is_finished() {
        let started = Instant::now();
        let len = bystander.client().text().len_chars();
        bystander
            .edit(&Operation::insert_at(len, 0, "b").unwrap())
            .await
            .unwrap();
        bystander
            .pump_until(T, |c| c.client().all_saved())
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        acks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut clients = storm.await.unwrap();
    eprintln!("storm: bystander got {acks} acks, slowest {slowest:?}");
    assert!(acks > 0);
    assert!(
        slowest < Duration::from_secs(1),
        "a bystander ack took {slowest:?} during the storm"
    );

    // Every edit exactly once; every replica equals its document.
    for d in 0..DOCS {
        let doc = format!("storm-{d}");
        let (rev, text) = doc_state(addr, &doc).await.unwrap();
        let members: Vec<usize> = (0..CLIENTS).filter(|i| i % DOCS == d).collect();
        assert_eq!(rev as usize, members.len(), "{doc}: one revision per edit");
        for i in &members {
            assert_eq!(
                text.matches(&format!("<{i}>")).count(),
                1,
                "{doc}: <{i}> in {text:?}"
            );
        }
    }
    for client in clients.iter_mut() {
        let (rev, text) = doc_state(addr, client.doc()).await.unwrap();
        if !client.is_connected() {
            land(client, deadline).await;
        }
        client.settle_to(rev, T).await.unwrap();
        assert_eq!(client.text(), text, "{} converged", client.doc());
    }
    drop(clients);
    server.stop().await.unwrap();
}

/// The resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 10,000 idle WebSocket connections on 100 documents, held by a server
/// process: all are accepted and held, the server still answers a newcomer,
/// and its RSS per connection is printed (BENCHMARKS.md records it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_held() {
    const CONNECTIONS: usize = 10_000;
    const DOCS: usize = 100;
    if descriptors_for(CONNECTIONS as u64 + 512, "10,000 idle connections").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = server_binary().unwrap();
    let port = e2e_tests::free_port();
    let args = [
        "--max-connections".to_owned(),
        "20000".to_owned(),
        "--max-connections-per-addr".to_owned(),
        "20000".to_owned(),
        "--max-clients-per-doc".to_owned(),
        "1000".to_owned(),
        "--durability".to_owned(),
        "relaxed".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // With OT_TEST_AUTH the helpers send tokens; this server has no
    // authentication and ignores them.
    let process = ServerProcess::start(&binary, dir.path(), port, &args)
        .await
        .unwrap();
    let addr = process.addr;
    let pid = process.child.id();

    // The same documents with one connection each: the baseline.
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for d in 0..DOCS {
        sockets.push(ws_connect(addr, &format!("/ws/idle-{d}")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib(pid);

    let started = Instant::now();
    let mut opening = futures_util::stream::iter(DOCS..CONNECTIONS)
        .map(|i| async move { ws_connect(addr, &format!("/ws/idle-{}", i % DOCS)).await })
        .buffer_unordered(64);
    while let Some(socket) = opening.next().await {
        sockets.push(socket.unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "opening took too long"
        );
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = rss_kib(pid);
    let per_connection =
        (held.saturating_sub(baseline)) as f64 * 1024.0 / (CONNECTIONS - DOCS) as f64;
    eprintln!(
        "idle connections: {CONNECTIONS} opened in {opened_in:?}; server RSS {baseline} KiB with {DOCS}, {held} KiB with {CONNECTIONS}: {per_connection:.0} bytes per connection"
    );
    assert_eq!(
        e2e_tests::metric_value(addr, "ot_connections")
            .await
            .unwrap() as usize,
        CONNECTIONS
    );
    // A newcomer is still served.
    let mut newcomer = WsClient::join(addr, "idle-0", "newcomer").await.unwrap();
    newcomer
        .edit(&Operation::insert_at(0, 0, "hi").unwrap())
        .await
        .unwrap();
    newcomer
        .pump_until(T, |c| c.client().all_saved())
        .await
        .unwrap();
    drop(sockets);
    drop(process);
}
