//! Taking over another writer's client id (ids are public: every op, cursor
//! and `/ops` row names them). A connection must prove the id's key
//! (PROTOCOL.md, "Connecting"): without it, or with another, it is refused
//! with 403 before the upgrade, and the key's holder is never closed for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e_tests::{
    doc_state, free_port, http_get, http_get_json, recv_message, send_message, server_binary,
    start_server, test_key, ws_connect, ws_connect_with_key, ws_refused_with, ServerProcess,
    WsClient,
};
use ot_core::client::Client;
use ot_core::Operation;
use ot_driver::{Driver, DriverError, SessionCore, SessionState};
use ot_protocol::{ClientKey, ClientMessage, DocId, ServerMessage};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(20);

fn ins(len: usize, pos: usize, text: &str) -> Operation {
    Operation::insert_at(len, pos, text).unwrap()
}

/// The 403 answer's code, from its JSON body.
fn refusal_code(status: u16, body: &str) -> String {
    assert_eq!(status, 403, "{body}");
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["code"].as_str().unwrap().to_owned()
}

/// Every way to speak for `client` without its key is refused with 403
/// `forbidden` before the upgrade: no key, another key, a malformed key,
/// another key as a subprotocol.
async fn assert_takeovers_refused(addr: std::net::SocketAddr, doc: &str, client: &str) {
    let path = format!("/ws/{doc}?client={client}");
    let other = ClientKey::random();
    let offered = format!("ot.v1, ot.key.{}", other.as_str());
    let attempts: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-ot-client-key", other.as_str())],
        vec![("x-ot-client-key", "NOT-A-KEY")],
        vec![("sec-websocket-protocol", offered.as_str())],
    ];
    for headers in attempts {
        let (status, body) = ws_refused_with(addr, &path, &headers).await.unwrap();
        assert_eq!(refusal_code(status, &body), "forbidden", "{headers:?}");
        // Not even a resume: the refusal comes before any document state.
        let (status, body) = ws_refused_with(addr, &format!("{path}&rev=0"), &headers)
            .await
            .unwrap();
        assert_eq!(refusal_code(status, &body), "forbidden", "{headers:?}");
    }
}

/// The holder of an id keeps its connection and its pending edit lands once,
/// whatever others try with its id; nothing served reveals the key or its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_id_without_its_key_is_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut holder = WsClient::join(addr, "take", "victim").await.unwrap();
    let mut watcher = WsClient::join(addr, "take", "watcher").await.unwrap();
    holder.edit(&ins(0, 0, "one")).await.unwrap();
    holder.settle_to(1, T).await.unwrap();
    // A pending edit: sent, not yet acknowledged while the takeovers run.
    holder.edit(&ins(3, 3, " two")).await.unwrap();

    assert_takeovers_refused(addr, "take", "victim").await;
    // A Rust client with another key: refused, and it stops (retrying cannot help).
    let impostor = SessionCore::new(DocId::parse("take").unwrap(), "victim")
        .with_client_key(ClientKey::random());
    let url = ot_driver::ServerUrl::parse(&format!("http://{addr}")).unwrap();
    let mut impostor = Driver::new(url, impostor);
    match impostor.connect().await {
        Err(DriverError::Forbidden(body)) => assert!(body.contains("forbidden"), "{body}"),
        other => panic!("expected 403 forbidden, got {:?}", other.map(|_| ())),
    }
    assert!(impostor.stopped().is_some());

    holder.settle_to(2, T).await.unwrap();
    assert!(holder.is_connected(), "the holder was never closed");
    assert!(holder.errors.is_empty(), "{:?}", holder.errors);
    holder
        .expect_quiet(Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        doc_state(addr, "take").await.unwrap(),
        (2, "one two".into())
    );
    let (_, ops) = http_get_json(addr, "/api/docs/take/ops").await.unwrap();
    let seqs: Vec<(String, u64)> = ops["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            (
                op["client"].as_str().unwrap().to_owned(),
                op["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seqs,
        [("victim".to_owned(), 1), ("victim".to_owned(), 2)],
        "each edit exactly once, in its writer's name"
    );
    watcher.settle_to(2, T).await.unwrap();
    assert_eq!(watcher.text(), "one two");

    // Nothing served or broadcast carries the key or its hash.
    let key = test_key("victim");
    let hash = hex_sha256(key.as_str());
    let mut seen = Vec::new();
    for path in [
        "/api/docs",
        "/api/docs/take",
        "/api/docs/take/ops",
        "/api/docs/take/conflicts",
        "/api/docs/take/text",
        "/metrics",
    ] {
        seen.push(http_get(addr, path).await.unwrap());
    }
    let mut joiner = ws_connect(addr, "/ws/take?client=joiner").await.unwrap();
    let first = recv_message(&mut joiner, T).await.unwrap();
    seen.push(format!("{first:?}"));
    for message in watcher.other.iter() {
        seen.push(format!("{message:?}"));
    }
    for text in &seen {
        assert!(!text.contains(key.as_str()), "the key leaked: {text}");
        assert!(!text.contains(&hash), "the key's hash leaked: {text}");
    }
    server.stop().await.unwrap();
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A second connection of the same writer (same key) still replaces the older
/// one with 4009, by header or by subprotocol; the server selects and echoes
/// only `ot.v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_replaces_the_older_connection_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut first = WsClient::join(addr, "twice", "writer").await.unwrap();
    first.edit(&ins(0, 0, "a")).await.unwrap();
    first.settle_to(1, T).await.unwrap();
    let mut second = WsClient::join(addr, "twice", "writer").await.unwrap();
    let close = first.expect_close(T).await.unwrap();
    assert_eq!(close.map(|c| c.0), Some(4009));
    assert_eq!(second.client().next_seq(), 2);

    // A browser: the key as a subprotocol beside ot.v1.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let key = test_key("writer");
    let mut request = format!("ws://{addr}/ws/twice?client=writer")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("ot.v1, ot.key.{}", key.as_str()).parse().unwrap(),
    );
    let (mut browser, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let echoed: Vec<_> = response
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(echoed, ["ot.v1"], "only ot.v1 is echoed, never the key");
    let snapshot = recv_message(&mut browser, T).await.unwrap();
    assert!(
        matches!(snapshot, ServerMessage::Snapshot { seq: 1, .. }),
        "{snapshot:?}"
    );
    let close = second.expect_close(T).await.unwrap();
    assert_eq!(close.map(|c| c.0), Some(4009));
    send_message(
        &mut browser,
        &ClientMessage::Op {
            rev: 1,
            seq: 2,
            op: ins(1, 1, "b"),
            ranges: None,
            origin: None,
        },
    )
    .await
    .unwrap();
    let ack = recv_message(&mut browser, T).await.unwrap();
    assert_eq!(ack, ServerMessage::Ack { rev: 2, seq: 2 });
    server.stop().await.unwrap();
}

/// A saved state from before keys, as a client of that time left it.
fn old_state(client_id: &str, rev: u64, text: &str, last_seq: u64) -> SessionState {
    let state = SessionState {
        epoch: None,
        synced: true,
        resync: None,
        client: Client::new(client_id, rev, text, last_seq).state(),
        client_key: None,
    };
    // Written by the old code: no `client_key` field at all.
    let mut json = serde_json::to_value(&state).unwrap();
    json.as_object_mut().unwrap().remove("client_key");
    serde_json::from_value(json).unwrap()
}

/// Old clients (no key) keep working; an old saved state loads, gets a key,
/// and its first keyed connection binds the id: from then on a keyless
/// connection with that id is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_state_without_a_key_keeps_working_and_gets_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    // An old client: no key at all. It works, and may replace itself (4009).
    let mut old = ws_connect(addr, "/ws/legacy?client=oldie").await.unwrap();
    recv_message(&mut old, T).await.unwrap();
    send_message(
        &mut old,
        &ClientMessage::Op {
            rev: 0,
            seq: 1,
            op: ins(0, 0, "old"),
            ranges: None,
            origin: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        recv_message(&mut old, T).await.unwrap(),
        ServerMessage::Ack { rev: 1, seq: 1 }
    );
    let mut again = ws_connect(addr, "/ws/legacy?client=oldie&rev=1")
        .await
        .unwrap();
    assert!(matches!(
        recv_message(&mut again, T).await.unwrap(),
        ServerMessage::Resume { seq: 1, .. }
    ));
    drop(again);

    // The same writer updated: its saved state has no key; the driver gives
    // it one, saves it, then connects with it.
    let saved = old_state("oldie", 1, "old", 1);
    let core = SessionCore::restore(DocId::parse("legacy").unwrap(), saved).unwrap();
    let server_url = ot_driver::ServerUrl::parse(&format!("http://{addr}")).unwrap();
    let mut saves: Vec<SessionState> = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut driver = Driver::new(server_url, core).with_saver(Box::new(move |state| {
        tx.send(state.clone()).map_err(|e| e.to_string().into())
    }));
    driver.connect().await.unwrap();
    saves.extend(rx.try_iter());
    let key = saves
        .first()
        .and_then(|s| s.client_key.clone())
        .expect("the new key was saved before connecting");
    driver.local_edit(&ins(3, 3, " new"), None).await.unwrap();
    driver.wait_saved(T).await.unwrap();
    assert_eq!(
        doc_state(addr, "legacy").await.unwrap(),
        (2, "old new".into())
    );

    // Bound now: keyless, or another key, is refused; its key is accepted.
    assert_takeovers_refused(addr, "legacy", "oldie").await;
    assert!(driver.is_connected(), "the holder was not closed");
    let mut same = ws_connect_with_key(addr, "/ws/legacy?client=oldie&rev=2", Some(&key))
        .await
        .unwrap();
    assert!(matches!(
        recv_message(&mut same, T).await.unwrap(),
        ServerMessage::Resume { seq: 2, .. }
    ));
    server.stop().await.unwrap();
}

/// A binding is durable: after kill -9 and a restart of the server binary,
/// the id still refuses connections without its key and accepts its holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binding_survives_a_server_restart() {
    let binary = server_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut process = ServerProcess::start(&binary, dir.path(), port, &[])
        .await
        .unwrap();
    let addr = process.addr;
    // Bound at join, before any op: a cursor would reveal the id.
    let mut quiet = WsClient::join(addr, "durable", "lurker").await.unwrap();
    let mut writer = WsClient::join(addr, "durable", "keeper").await.unwrap();
    writer.edit(&ins(0, 0, "kept")).await.unwrap();
    writer.settle_to(1, T).await.unwrap();
    quiet.settle_to(1, T).await.unwrap();
    process.kill9();

    let mut process = ServerProcess::start(&binary, dir.path(), port, &[])
        .await
        .unwrap();
    let addr = process.addr;
    assert_takeovers_refused(addr, "durable", "keeper").await;
    assert_takeovers_refused(addr, "durable", "lurker").await;
    // The holders come back with their keys and go on.
    writer.reconnect().await.unwrap();
    writer.edit(&ins(4, 4, "!")).await.unwrap();
    writer.settle_to(2, T).await.unwrap();
    assert!(writer.errors.is_empty(), "{:?}", writer.errors);
    quiet.reconnect().await.unwrap();
    quiet.settle_to(2, T).await.unwrap();
    assert_eq!(
        doc_state(addr, "durable").await.unwrap(),
        (2, "kept!".into())
    );
    process.terminate(T).unwrap();
}
