//! Connections (issue 13): server pings and the dead-peer deadline, the write
//! deadline, the per-address connection limit (forwarded addresses only from
//! a trusted proxy), the `/api` concurrency limit, and the driver's own
//! liveness check through a stalling proxy. Each test runs a real server on
//! loopback with short limits, and bounds every wait; the attack rows run a
//! server process of their own and bound its RSS (docs/attacks.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e_tests::attack::{attack_server, RssBound};
use e2e_tests::doc_work::{flood, flood_until_left, FLOOD_CHUNK};
use e2e_tests::proxy::{Direction, Proxy};
use e2e_tests::{
    doc_state, http_get_json, metric_value, start_server_with, test_connect_options, test_token,
    ws_connect_small_recv_buffer, ws_refused_with, ServerProcess, WsClient,
};
use ot_core::Operation;
use ot_driver::{Driver, Event as DriverEvent, SessionCore};
use ot_protocol::{DocId, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);

/// The value of `ot_connection_limits_total{reason="…"}` (0 before the first).
async fn limit_count(addr: std::net::SocketAddr, reason: &str) -> f64 {
    let name = format!("ot_connection_limits_total{{reason=\"{reason}\"}}");
    metric_value(addr, &name).await.unwrap_or(0.0)
}

/// Wait until `ready` holds, polling; fail after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !ready().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A peer whose network went silent (a stalled proxy: no FIN, no RST) is
/// closed once it leaves a ping unanswered, and the others see it leave; a
/// viewer that never sends anything but answers pings stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_and_a_quiet_viewer_is_not() {
    let dir = tempfile::tempdir().unwrap();
    // Through the proxy the Host names its port: --allowed-host.
    let flags = [
        "--ping-secs",
        "1",
        "--pong-timeout-secs",
        "1",
        "--allowed-host",
        "127.0.0.1",
    ];
    let server = attack_server(dir.path(), &flags).await.unwrap();
    let addr = server.addr;
    let proxy = Proxy::start(addr).await.unwrap();
    let mut writer = WsClient::join(addr, "live", "writer").await.unwrap();
    let mut viewer = WsClient::join(addr, "live", "viewer").await.unwrap();
    let mut silent = WsClient::join(proxy.addr(), "live", "silent")
        .await
        .unwrap();
    writer.drain(Duration::from_millis(300)).await.unwrap();
    let memory = RssBound::start(server.child.id()).unwrap();

    proxy.stall(Direction::Both);
    // The writer and the viewer read (so their sockets answer pings) but send
    // nothing, for well over the 2 s a silent peer gets.
    let leave = ServerMessage::Leave {
        client: "silent".into(),
    };
    let started = Instant::now();
    let (w, v) = tokio::join!(
        writer.pump_until(T, |c| c.other.contains(&leave)),
        viewer.pump_until(T, |c| c.other.contains(&leave)),
    );
    w.unwrap();
    v.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before a ping"
    );
    let (w, v) = tokio::join!(
        writer.drain(Duration::from_secs(3)),
        viewer.drain(Duration::from_secs(3))
    );
    w.unwrap();
    v.unwrap();
    assert_eq!(limit_count(addr, "dead_peer").await, 1.0);
    memory.check().await.unwrap();

    // The quiet viewer is still there and still gets edits.
    writer
        .edit(&Operation::insert_at(0, 0, "still here").unwrap())
        .await
        .unwrap();
    writer
        .pump_until(T, |c| c.client().all_saved())
        .await
        .unwrap();
    viewer.settle_to(1, T).await.unwrap();
    assert_eq!(viewer.client().text().to_string(), "still here");
    assert_eq!(
        limit_count(addr, "dead_peer").await,
        1.0,
        "only the silent one"
    );
    silent.cut();
    server.stop().unwrap();
}

/// A writer flooding a document on a server process of its own, first
/// alone (the RSS baseline: the same flood with nobody else), then with a
/// sloth that upgrades and reads nothing (its socket buffers little).
struct SlothAttack {
    server: ServerProcess,
    writer: WsClient,
    sloth: WsClient,
    doc: &'static str,
    chunk: usize,
    /// Ops before the sloth joined.
    alone: u64,
    _dir: tempfile::TempDir,
}

impl SlothAttack {
    /// `alone` flood ops of `chunk` characters on `doc`, then the sloth
    /// joins; with the memory bound, measured from just before it joined.
    async fn start(
        flags: &[&str],
        doc: &'static str,
        chunk: usize,
        alone: u64,
    ) -> (SlothAttack, RssBound) {
        let dir = tempfile::tempdir().unwrap();
        let server = attack_server(dir.path(), flags).await.unwrap();
        let addr = server.addr;
        let mut writer = WsClient::join(addr, doc, "writer").await.unwrap();
        flood(&mut writer, alone, chunk).await.unwrap();
        let memory = RssBound::start(server.child.id()).unwrap();
        let mut sloth = WsClient::new(addr, doc, "sloth");
        let socket = ws_connect_small_recv_buffer(addr, &sloth.url())
            .await
            .unwrap();
        sloth.attach(socket).await.unwrap();
        let attack = SlothAttack {
            server,
            writer,
            sloth,
            doc,
            chunk,
            alone,
            _dir: dir,
        };
        (attack, memory)
    }

    /// Flood until the writer sees the sloth leave (the server closed it);
    /// returns the ops that took.
    async fn flood_until_closed(&mut self) -> u64 {
        let ops = flood_until_left(&mut self.writer, "sloth", None, self.chunk)
            .await
            .unwrap();
        eprintln!(
            "the sloth was closed after {ops} ops of {} characters",
            self.chunk
        );
        ops
    }

    /// The writer's next edit is acked as usual, and the document holds
    /// every op once (`flooded` with the sloth, plus that edit).
    async fn writer_goes_on(mut self, flooded: u64) {
        let len = self.writer.client().text().len_chars();
        let op = Operation::insert_at(len, 0, "!").unwrap();
        self.writer.edit_saved(&op, T).await.unwrap();
        let (rev, _) = doc_state(self.server.addr, self.doc).await.unwrap();
        assert_eq!(rev, self.alone + flooded + 1);
        self.server.stop().unwrap();
    }
}

/// A client that upgrades and then never reads, while a writer floods the
/// document: its queue may grow (set huge here, so the overflow rule never
/// fires), but the first frame that cannot be written within the write
/// deadline closes it; the document goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_by_the_write_deadline() {
    // No dead-peer close here (--ping-secs 3600): the sloth's kernel still
    // answers nothing, but its socket is only full, not silent.
    let flags = [
        "--write-timeout-secs",
        "1",
        "--outbound-queue",
        "1048576",
        "--ping-secs",
        "3600",
    ];
    // The baseline's history window and commit backlog are full of
    // 5,000-character ops.
    let (mut attack, memory) = SlothAttack::start(&flags, "flood", FLOOD_CHUNK, 1000).await;
    let addr = attack.server.addr;
    let ops = attack.flood_until_closed().await;
    assert_eq!(limit_count(addr, "write_timeout").await, 1.0);
    memory.check().await.unwrap();
    assert_eq!(
        limit_count(addr, "per_addr").await + limit_count(addr, "dead_peer").await,
        0.0
    );
    attack.writer_goes_on(ops).await;
}

/// A client that upgrades and then reads nothing, while a writer floods the
/// document with large ops: the write deadline is out of reach here, and
/// the queue's message bound (4,096 of 60 KB frames: 240 MB) would come
/// far too late; the byte bound (`--outbound-queue-bytes`, 8 MiB by
/// default) closes it (4008) while the server's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_large_ops_is_closed_by_the_queue_byte_bound() {
    // The history window and the commit backlog are bounded in bytes as
    // well: small here, so that the baseline is reached quickly.
    let flags = [
        "--write-timeout-secs",
        "3600",
        "--ping-secs",
        "3600",
        "--history-window-bytes",
        "4194304",
    ];
    let (mut attack, memory) = SlothAttack::start(&flags, "big", 60_000, 200).await;
    let addr = attack.server.addr;
    let ops = attack.flood_until_closed().await;
    assert_eq!(limit_count(addr, "queue_bytes").await, 1.0);
    memory.check().await.unwrap();
    assert_eq!(
        limit_count(addr, "queue_messages").await + limit_count(addr, "write_timeout").await,
        0.0
    );
    // What it was sent arrives in order, then the close: 4008.
    let close = attack
        .sloth
        .expect_close(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(close.as_ref().map(|c| c.0), Some(4008), "{close:?}");
    attack.writer_goes_on(ops).await;
}

/// The upgrade headers a helper client sends (a token when the suite runs
/// with authentication), plus `extra`.
fn upgrade_headers(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&'static str, String)> = extra.to_vec();
    if let Some(token) = test_token(None) {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    headers
}

async fn refused(
    addr: std::net::SocketAddr,
    doc: &str,
    forwarded_for: Option<&str>,
) -> (u16, String) {
    let extra: Vec<(&'static str, String)> = forwarded_for
        .map(|f| vec![("x-forwarded-for", f.to_owned())])
        .unwrap_or_default();
    let headers = upgrade_headers(&extra);
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ws_refused_with(addr, &format!("/ws/{doc}"), &pairs)
        .await
        .unwrap()
}

/// Opens a WebSocket with extra headers; returns it once the server greeted it.
async fn connect_with(
    addr: std::net::SocketAddr,
    doc: &str,
    forwarded_for: &str,
) -> e2e_tests::Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut request = format!("ws://{addr}/ws/{doc}")
        .into_client_request()
        .unwrap();
    for (name, value) in upgrade_headers(&[("x-forwarded-for", forwarded_for.to_owned())]) {
        request
            .headers_mut()
            .append(name, HeaderValue::from_str(&value).unwrap());
    }
    let (mut socket, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .unwrap();
    e2e_tests::recv_json(&mut socket, T).await.unwrap();
    socket
}

/// `--max-connections-per-addr`: one address past the limit gets 429
/// `too_many_connections` before the upgrade; a closed connection frees its
/// slot; `X-Forwarded-For` counts only from a `--trusted-proxy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited_and_forwarded_addresses_need_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let untrusted = attack_server(dir.path(), &["--max-connections-per-addr", "2"])
        .await
        .unwrap();
    let addr = untrusted.addr;
    let mut first = WsClient::join(addr, "a", "c1").await.unwrap();
    let _second = WsClient::join(addr, "b", "c2").await.unwrap();
    let memory = RssBound::start(untrusted.child.id()).unwrap();
    let (status, body) = refused(addr, "a", None).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    // Claiming another address does not help without a trusted proxy.
    let (status, _) = refused(addr, "a", Some("203.0.113.9")).await;
    assert_eq!(status, 429);
    assert_eq!(limit_count(addr, "per_addr").await, 2.0);
    memory.check().await.unwrap();
    // A closed connection frees its slot.
    first.close().await.unwrap();
    eventually(T, "the slot is freed", || async {
        WsClient::join(addr, "a", "c3").await.is_ok()
    })
    .await;
    untrusted.stop().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--max-connections-per-addr",
        "2",
        "--trusted-proxy",
        "127.0.0.0/8",
    ];
    let behind_proxy = attack_server(dir.path(), &flags).await.unwrap();
    let addr = behind_proxy.addr;
    let _a1 = connect_with(addr, "d", "198.51.100.1").await;
    let _a2 = connect_with(addr, "d", "10.9.9.9, 198.51.100.1").await;
    let (status, body) = refused(addr, "d", Some("198.51.100.1")).await;
    assert_eq!(status, 429, "{body}");
    // The last hop counts: a client cannot pick its address by prepending one.
    let (status, _) = refused(addr, "d", Some("198.51.100.2, 198.51.100.1")).await;
    assert_eq!(status, 429);
    // Another forwarded client is not affected.
    let _b1 = connect_with(addr, "d", "198.51.100.2").await;
    behind_proxy.stop().unwrap();
}

/// `--max-api-requests`: with every permit held by a request still reading
/// its body, another `/api` request is answered at once with 503
/// `too_many_requests`; other routes are not limited; once the slow request
/// ends, `/api` answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_beyond_the_limit_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = attack_server(dir.path(), &["--max-api-requests", "1"])
        .await
        .unwrap();
    let addr = server.addr;
    let (status, _) = http_get_json(addr, "/api/docs").await.unwrap();
    assert_eq!(status, 200);
    let memory = RssBound::start(server.child.id()).unwrap();
    // A request that holds the one permit: its body never comes. Nothing
    // else asks `/api` until it holds it; it holds it once the server has
    // not answered it for a while. If it was answered (refused: the permit
    // of the request before it was not released yet), it is sent again.
    let mut head = format!(
        "POST /api/admin/revoke HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
    );
    if let Some(token) = test_token(None) {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n{");
    let mut holding = None;
    for _ in 0..20 {
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(head.as_bytes()).await.unwrap();
        let mut answer = [0u8; 64];
        let answered = tokio::time::timeout(Duration::from_millis(500), slow.read(&mut answer));
        if answered.await.is_err() {
            holding = Some(slow);
            break;
        }
    }
    let slow = holding.expect("a slow request that holds the permit");
    eventually(T, "the slow request holds the permit", || async {
        http_get_json(addr, "/api/docs").await.unwrap().0 == 503
    })
    .await;
    let started = Instant::now();
    let (status, body) = http_get_json(addr, "/api/docs/x/text").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "too_many_requests");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    let (status, _) = http_get_json(addr, "/healthz").await.unwrap();
    assert_eq!(status, 200, "not an /api route");
    assert!(limit_count(addr, "api_busy").await >= 2.0);
    memory.check().await.unwrap();
    drop(slow);
    eventually(T, "the permit is back", || async {
        http_get_json(addr, "/api/docs").await.unwrap().0 == 200
    })
    .await;
    server.stop().unwrap();
}

/// The driver's liveness: a connection stalled mid-edit (the proxy forwards
/// nothing either way, nothing is closed) is given up after the liveness
/// limit; once the network is back the driver reconnects and the edit, which
/// may also arrive late on the old connection, is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_reconnects_from_a_stalled_connection_and_the_edit_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| {
        // The server does not notice first: only the driver's check runs.
        c.ping_secs = 3600;
        c.allowed_host = vec!["127.0.0.1".to_owned()];
    })
    .await
    .unwrap();
    let proxy = Proxy::start(server.addr).await.unwrap();
    let doc = DocId::parse("stall").unwrap();
    let mut driver = Driver::new(proxy.addr().into(), SessionCore::new(doc, "stalled"))
        .with_connect_options(test_connect_options())
        .with_liveness(Duration::from_secs(3));
    driver.connect().await.unwrap();
    driver
        .local_edit(&Operation::insert_at(0, 0, "one ").unwrap(), None)
        .await
        .unwrap();
    driver.wait_saved(T).await.unwrap();

    proxy.stall(Direction::Both);
    let started = Instant::now();
    driver
        .local_edit(&Operation::insert_at(4, 4, "two").unwrap(), None)
        .await
        .unwrap();
    let lost = tokio::time::timeout(T, async {
        loop {
            let events = driver.next_events().await.unwrap();
            if events
                .iter()
                .any(|e| matches!(e, DriverEvent::Disconnected { .. }))
            {
                return;
            }
        }
    })
    .await;
    assert!(lost.is_ok(), "the stalled connection was never given up");
    assert!(!driver.is_connected());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "given up only after the silence limit"
    );
    // The network comes back: the old connection's op may arrive now too.
    proxy.resume(Direction::Both);
    driver.connect().await.unwrap();
    driver.wait_saved(T).await.unwrap();
    let (rev, text) = doc_state(server.addr, "stall").await.unwrap();
    assert_eq!(text, "one two");
    assert_eq!(rev, 2, "applied exactly once");
    server.stop().await.unwrap();
}

/// The driver answers nothing itself on a quiet live connection but pings:
/// with the server's pings off, a driver on an idle document stays connected
/// well past its liveness limit, because its `ping` draws a `pong`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_driver_stays_connected_by_pinging() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| c.ping_secs = 3600)
        .await
        .unwrap();
    let doc = DocId::parse("idle").unwrap();
    let mut driver = Driver::new(server.addr.into(), SessionCore::new(doc, "idler"))
        .with_connect_options(test_connect_options())
        .with_liveness(Duration::from_millis(900));
    driver.connect().await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            let events = driver.next_events().await.unwrap();
            if events
                .iter()
                .any(|e| matches!(e, DriverEvent::Disconnected { .. }))
            {
                return events;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "disconnected: {quiet:?}");
    assert!(driver.is_connected());
    server.stop().await.unwrap();
}

/// Presence coalescing: a client that sends 200 cursor messages as fast as it
/// can costs the others (and the document) at most one cursor per 50 ms, and
/// the last one they see is its latest selection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_coalesced_to_twenty_a_second_and_the_latest_wins() {
    use ot_core::Range;
    use ot_protocol::ClientMessage;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |_| {}).await.unwrap();
    let addr = server.addr;
    let mut mover = WsClient::join(addr, "presence", "mover").await.unwrap();
    let mut watcher = WsClient::join(addr, "presence", "watcher").await.unwrap();
    mover
        .edit(&Operation::insert_at(0, 0, "hello world").unwrap())
        .await
        .unwrap();
    mover
        .pump_until(T, |c| c.client().all_saved())
        .await
        .unwrap();
    watcher.settle_to(1, T).await.unwrap();
    watcher.drain(Duration::from_millis(300)).await.unwrap();
    watcher.other.clear();

    let cursor = |at: usize| ClientMessage::Cursor {
        rev: 1,
        ranges: vec![Range::from((at, at))],
        name: None,
    };
    let started = Instant::now();
    for i in 0..199 {
        mover.send(&cursor(i % 10)).await.unwrap();
    }
    mover.send(&cursor(11)).await.unwrap();
    let latest = |m: &ServerMessage| {
        matches!(m, ServerMessage::Cursor { client, ranges, .. }
            if client == "mover" && ranges.as_ref() == [Range::from((11, 11))])
    };
    watcher
        .pump_until(T, |c| c.other.iter().any(latest))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let seen = watcher
        .other
        .iter()
        .filter(|m| matches!(m, ServerMessage::Cursor { client, .. } if client == "mover"))
        .count();
    let allowed = 2 + (elapsed.as_millis() / 50) as usize;
    eprintln!("200 cursors sent, {seen} forwarded in {elapsed:?}");
    assert!(seen <= allowed, "{seen} cursors forwarded in {elapsed:?}");
    assert!(seen < 200);
    assert!(latest(watcher.other.last().unwrap()), "the latest is last");
    // Nothing older arrives after it.
    watcher.drain(Duration::from_millis(300)).await.unwrap();
    assert!(latest(watcher.other.last().unwrap()));
    server.stop().await.unwrap();
}
