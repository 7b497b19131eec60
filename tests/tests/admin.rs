//! The admin calls on one document against a real server on loopback:
//! deleting (connections closed with 4004, every read 404, a re-created
//! document with a greater epoch and none of the old text, unsent edits kept
//! as conflict copies and never applied to the new document, a client that
//! was offline during the delete closed with 4004 too, the delete surviving
//! kill -9), who may delete (403), and the export (NDJSON that replays to
//! the document).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use e2e_tests::{
    doc_state, free_port, http_get_status, server_binary, start_server, start_server_with,
    ws_connect, Event, ServerProcess, WsClient,
};
use ot_core::Operation;
use ot_driver::http::Method;
use ot_protocol::{Access, ServerMessage};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"an-e2e-test-secret-of-more-than-32-bytes";

/// `method` `path` with an optional bearer token: (status, body as JSON or text).
async fn call(addr: SocketAddr, method: Method, path: &str, token: Option<&str>) -> (u16, Value) {
    let options = ot_driver::ConnectOptions {
        token: token.map(|t| ot_driver::TokenSource::Value(t.to_owned())),
        ..ot_driver::ConnectOptions::default()
    };
    let (status, text) = ot_driver::http::send(&addr.into(), method, path, None, &options)
        .await
        .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn delete(addr: SocketAddr, doc: &str, token: Option<&str>) -> (u16, Value) {
    call(
        addr,
        Method::DELETE,
        &format!("/api/admin/docs/{doc}"),
        token,
    )
    .await
}

fn insert(text: &str, pos: usize, what: &str) -> Operation {
    Operation::insert_at(text.chars().count(), pos, what).unwrap()
}

/// Edit through `c` and wait until the edit is acknowledged.
async fn write(c: &mut WsClient, what: &str) {
    let text = c.client().text().to_string();
    c.edit(&insert(&text, text.chars().count(), what))
        .await
        .unwrap();
    c.pump_until(T, |c| c.client().all_saved()).await.unwrap();
}

#[tokio::test]
async fn a_delete_closes_everyone_with_4004_and_the_re_created_document_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;

    let mut a = WsClient::join(addr, "d", "a").await.unwrap();
    let mut b = WsClient::join(addr, "d", "b").await.unwrap();
    let mut offline = WsClient::join(addr, "d", "c").await.unwrap();
    write(&mut a, "hello").await;
    for c in [&mut b, &mut offline] {
        c.pump_until(T, |c| *c.client().text() == "hello")
            .await
            .unwrap();
    }
    let old_epoch = a.epoch().unwrap();
    // `offline` loses its connection and edits: its op is unsent.
    offline.cut();
    let op = insert("hello", 5, " from c");
    offline.edit(&op).await.unwrap();
    assert!(!offline.client().all_saved());

    // `b` stays connected with edits in flight: one sent (outstanding), one
    // buffered behind it (unsent); it reads nothing until the close.
    b.edit(&insert("hello", 5, "X")).await.unwrap();
    b.edit(&insert("helloX", 6, "Y")).await.unwrap();
    assert!(*b.client().text() == "helloXY" && !b.client().all_saved());

    assert_eq!(delete(addr, "nope", None).await.0, 404);
    let (status, body) = delete(addr, "d", None).await;
    assert_eq!((status, &body["deleted"]), (200, &Value::from("d")));

    // Both connected clients are closed with 4004, with nothing before it.
    for c in [&mut a, &mut b] {
        let (code, _) = c.expect_close(T).await.unwrap().unwrap();
        assert_eq!(code, 4004);
        assert!(c.core().resyncing());
        assert_eq!(
            c.url(),
            format!("ws://{addr}/ws/d?client={}&batch=1", c.client().client_id())
        );
    }
    // Every read says the document is gone.
    for path in [
        "/api/docs/d",
        "/api/docs/d/ops",
        "/api/docs/d/text",
        "/api/docs/d/conflicts",
    ] {
        assert_eq!(http_get_status(addr, path).await.unwrap().0, 404, "{path}");
    }
    assert_eq!(delete(addr, "d", None).await.0, 404);

    // `b` edits before it reconnects: that edit was made on the deleted
    // document, so it goes into the conflict copy too.
    b.edit(&insert("helloXY", 0, "b: ")).await.unwrap();

    // Re-created: empty, with a greater epoch.
    a.reconnect().await.unwrap();
    assert_eq!(a.client().text().to_string(), "");
    let new_epoch = a.epoch().unwrap();
    assert!(new_epoch > old_epoch, "{new_epoch} > {old_epoch}");
    assert!(a.conflict_copies.is_empty());
    write(&mut a, "fresh").await;

    b.reconnect().await.unwrap();
    assert_eq!(b.conflict_copies, vec!["b: helloXY".to_owned()]);
    b.pump_until(T, |c| *c.client().text() == "fresh")
        .await
        .unwrap();

    // The offline client comes back with the old epoch: closed with 4004
    // before any message; it keeps its edit as a conflict copy.
    assert!(offline.url().contains(&format!("epoch={old_epoch}")));
    offline.open().await.unwrap();
    let (code, _) = offline.expect_close(T).await.unwrap().unwrap();
    assert_eq!(code, 4004);
    offline.reconnect().await.unwrap();
    assert_eq!(offline.conflict_copies, vec!["hello from c".to_owned()]);
    offline
        .pump_until(T, |c| *c.client().text() == "fresh")
        .await
        .unwrap();
    assert_eq!(offline.epoch(), Some(new_epoch));

    // No old op ever reached the new document.
    offline.drain(Duration::from_millis(300)).await.unwrap();
    assert_eq!(doc_state(addr, "d").await.unwrap(), (1, "fresh".to_owned()));

    // An old client that names no epoch: a snapshot, never a resume.
    let mut raw = ws_connect(addr, "/ws/d?client=old&rev=1").await.unwrap();
    match e2e_tests::recv_message(&mut raw, T).await.unwrap() {
        ServerMessage::Snapshot {
            rev, text, epoch, ..
        } => {
            assert_eq!((rev, text.as_ref(), epoch), (1, "fresh", new_epoch));
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    // With the new epoch: a resume.
    let mut raw = ws_connect(addr, &format!("/ws/d?client=old2&rev=1&epoch={new_epoch}"))
        .await
        .unwrap();
    assert!(matches!(
        e2e_tests::recv_message(&mut raw, T).await.unwrap(),
        ServerMessage::Resume { .. }
    ));

    // Deleted again: the next generation goes higher still.
    assert_eq!(delete(addr, "d", None).await.0, 200);
    let mut again = WsClient::join(addr, "d", "z").await.unwrap();
    assert!(again.epoch().unwrap() > new_epoch);
    again.close().await.unwrap();
}

/// A server with authentication on.
async fn start_with_auth() -> (server::RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret: PathBuf = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let data = dir.path().join("data");
    let server = start_server_with(&data, |c| c.auth_secret_file = Some(secret))
        .await
        .unwrap();
    (server, dir)
}

fn token(docs: &[&str], access: Access, jti: &str) -> String {
    e2e_tests::mint_test_token(SECRET, &format!("user-{jti}"), docs, access, 3600)
}

async fn get_status(addr: SocketAddr, path: &str, token: &str) -> u16 {
    call(addr, Method::GET, path, Some(token)).await.0
}

#[tokio::test]
async fn only_an_admin_of_the_document_may_delete_or_export_it() {
    let (server, _dir) = start_with_auth().await;
    let addr = server.addr;
    // A writer opens the document (which creates it).
    let writer = token(&["d"], Access::Write, "w");
    let mut request = format!("ws://{addr}/ws/d?client=w")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {writer}")).unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert!(matches!(
        e2e_tests::next_event(&mut socket, T).await.unwrap(),
        Event::Json(_)
    ));

    // The export reads storage: the document is there once its creation is
    // durable (just after the first message).
    let admin = token(&["d"], Access::Admin, "a");
    let deadline = std::time::Instant::now() + T;
    while get_status(addr, "/api/admin/docs/d/export", &admin).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the document never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let export = "/api/admin/docs/d/export";
    assert_eq!(delete(addr, "d", None).await.0, 401);
    assert_eq!(delete(addr, "d", Some(&writer)).await.0, 403);
    let other_admin = token(&["other"], Access::Admin, "o");
    assert_eq!(delete(addr, "d", Some(&other_admin)).await.0, 403);
    assert_eq!(call(addr, Method::GET, export, Some(&writer)).await.0, 403);
    let (status, body) = call(addr, Method::GET, export, Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(delete(addr, "d", Some(&admin)).await.0, 200);
    match e2e_tests::next_event(&mut socket, T).await.unwrap() {
        Event::Closed(Some((code, _))) => assert_eq!(code, 4004),
        other => panic!("expected a 4004 close, got {other:?}"),
    }
    assert_eq!(delete(addr, "d", Some(&admin)).await.0, 404);
}

#[tokio::test]
async fn the_export_replays_to_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut a = WsClient::join(addr, "ex", "a").await.unwrap();
    let mut b = WsClient::join(addr, "ex", "b").await.unwrap();
    for i in 0..30 {
        write(&mut a, &format!("a{i} ")).await;
        // b's edits are concurrent with a's next one: some are transformed.
        let text = b.client().text().to_string();
        b.edit(&insert(&text, 0, "b")).await.unwrap();
    }
    for c in [&mut a, &mut b] {
        c.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    }
    let (rev, text) = doc_state(addr, "ex").await.unwrap();
    let (status, body) = call(addr, Method::GET, "/api/admin/docs/ex/export", None).await;
    assert_eq!(status, 200);
    let Value::String(body) = body else {
        panic!("NDJSON is not one JSON value: {body}");
    };
    let lines: Vec<Value> = body
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({"id": "ex", "epoch": a.epoch().unwrap(), "rev": rev})
    );
    assert_eq!(lines.len() as u64, rev + 1);
    let mut replayed = String::new();
    for (i, op) in lines[1..].iter().enumerate() {
        assert_eq!(op["rev"], i as u64 + 1);
        replayed = Operation::from_json_value(&op["op"])
            .unwrap()
            .apply(&replayed)
            .unwrap();
    }
    assert_eq!(replayed, text);
    // Each line is the op as `/ops` shows it.
    let (_, ops) = call(addr, Method::GET, "/api/docs/ex/ops", None).await;
    assert_eq!(ops["ops"].as_array().unwrap()[..], lines[1..]);
    assert_eq!(
        call(addr, Method::GET, "/api/admin/docs/nope/export", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn a_delete_survives_kill_9_right_after_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let binary = server_binary().unwrap();
    let port = free_port();
    for durability in ["fsync", "relaxed"] {
        let data = dir.path().join(durability);
        let mut server = ServerProcess::start(&binary, &data, port, &["--durability", durability])
            .await
            .unwrap();
        let addr = server.addr;
        let mut a = WsClient::join(addr, "gone", "a").await.unwrap();
        write(&mut a, "secret").await;
        let old_epoch = a.epoch().unwrap();
        assert_eq!(delete(addr, "gone", None).await.0, 200);
        server.kill9();

        let server = ServerProcess::start(&binary, &data, port, &["--durability", durability])
            .await
            .unwrap();
        assert_eq!(
            http_get_status(server.addr, "/api/docs/gone")
                .await
                .unwrap()
                .0,
            404,
            "{durability}"
        );
        let (_, list) = call(server.addr, Method::GET, "/api/docs", None).await;
        assert_eq!(list["docs"], serde_json::json!([]), "{durability}");
        // The client from before comes back with the old epoch: 4004.
        a.addr = server.addr;
        a.open().await.unwrap();
        assert_eq!(a.expect_close(T).await.unwrap().unwrap().0, 4004);
        // Refusing it created nothing (the list reads storage).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, list) = call(server.addr, Method::GET, "/api/docs", None).await;
        assert_eq!(list["docs"], serde_json::json!([]), "{durability}");
        a.reconnect().await.unwrap();
        assert_eq!(a.client().text().to_string(), "");
        assert!(a.epoch().unwrap() > old_epoch);
        drop(server);
    }
}

#[tokio::test]
async fn the_export_reads_more_than_one_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut a = WsClient::join(addr, "long", "a").await.unwrap();
    // More ops than one page of storage reads (1000).
    for i in 0..1234 {
        write(&mut a, &(i % 10).to_string()).await;
    }
    let (rev, text) = doc_state(addr, "long").await.unwrap();
    assert_eq!(rev, 1234);
    let (status, body) = call(addr, Method::GET, "/api/admin/docs/long/export", None).await;
    assert_eq!(status, 200);
    let Value::String(body) = body else {
        panic!("NDJSON is not one JSON value: {body}");
    };
    let mut replayed = String::new();
    let mut lines = body.lines();
    let head: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(head["rev"], 1234);
    for (i, line) in lines.enumerate() {
        let op: Value = serde_json::from_str(line).unwrap();
        assert_eq!(op["rev"], i as u64 + 1);
        replayed = Operation::from_json_value(&op["op"])
            .unwrap()
            .apply(&replayed)
            .unwrap();
    }
    assert_eq!(replayed, text);
}
