//! What a document's home grants a regional server's link (a client id
//! `r-…` with `region` access), against real servers on loopback: the id
//! needs the access level; its op merges however far behind it is based
//! (a writer's gets `revision_too_old`); its dedup record outlives
//! `--client-expiry` (a writer's resend after it is refused, the link's is
//! answered with the original ack); with a token's grant its connections do
//! not count toward `--max-connections-per-addr` (without authentication
//! they do); its first message names the hash of its
//! last op, so that a region can tell its data is older than the home's view.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use e2e_tests::attack::attack_server;
use e2e_tests::doc_work::fill_history;
use e2e_tests::{doc_state, start_server_with, ws_refused, ws_refused_with, WsClient};
use ot_core::history::OpHash;
use ot_core::Operation;
use ot_protocol::{Access, ClientMessage, ErrorCode, ServerMessage};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const T: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"a-region-links-test-secret-of-more-than-32-bytes";

fn op_at(rev: u64, seq: u64, len: usize, pos: usize, text: &str) -> ClientMessage {
    ClientMessage::Op {
        rev,
        seq,
        op: Operation::insert_at(len, pos, text).unwrap(),
        ranges: None,
        origin: None,
    }
}

/// The next ack or error, skipping others' ops.
async fn answer(c: &mut WsClient) -> ServerMessage<'static> {
    loop {
        match c.recv_message(T).await.unwrap() {
            message @ (ServerMessage::Ack { .. } | ServerMessage::Error { .. }) => return message,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_merges_however_far_behind_and_its_dedup_record_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--history-window",
        "10",
        "--max-rebase-revs",
        "100",
        "--client-expiry",
        "40",
        "--ops-per-sec",
        "1000000",
        "--ops-burst",
        "1000000",
    ];
    let server = attack_server(dir.path(), &flags).await.unwrap();
    let addr = server.addr;
    // A writer and a link each send one op at revision 0, then go away.
    for id in ["w", "r-eu"] {
        let mut c = WsClient::join(addr, "doc", id).await.unwrap();
        let rev = c.client().revision();
        let len = c.client().text().chars().count();
        c.send(&op_at(rev, 1, len, 0, &id[..1])).await.unwrap();
        assert!(matches!(
            answer(&mut c).await,
            ServerMessage::Ack { seq: 1, .. }
        ));
        c.close().await.unwrap();
    }
    // 300 revisions by someone else: both records are idle past the expiry.
    fill_history(addr, "doc", "filler", 300, 'f').await.unwrap();
    let (head, _) = doc_state(addr, "doc").await.unwrap();

    // The writer's resend of seq 1 can no longer be told from a new op.
    let mut w = WsClient::join(addr, "doc", "w").await.unwrap();
    w.send(&op_at(0, 1, 0, 0, "w")).await.unwrap();
    match answer(&mut w).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::ClientExpired),
        other => panic!("expected client_expired, got {other:?}"),
    }
    // A link's first message names the hash of its last op as received;
    // a writer's never does.
    let key = e2e_tests::test_key("r-eu");
    let mut raw = e2e_tests::ws_connect_with_key(addr, "/ws/doc?client=r-eu", Some(&key))
        .await
        .unwrap();
    match e2e_tests::recv_message(&mut raw, T).await.unwrap() {
        ServerMessage::Snapshot { seq, last_hash, .. } => {
            let sent = Operation::insert_at(1, 0, "r").unwrap();
            assert_eq!(seq, 1);
            assert_eq!(
                last_hash.as_deref(),
                Some(OpHash::of(&sent).to_hex().as_str())
            );
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    drop(raw);
    let key = e2e_tests::test_key("filler");
    let mut raw = e2e_tests::ws_connect_with_key(addr, "/ws/doc?client=filler", Some(&key))
        .await
        .unwrap();
    match e2e_tests::recv_message(&mut raw, T).await.unwrap() {
        ServerMessage::Snapshot { seq, last_hash, .. } => {
            assert!(seq > 0);
            assert_eq!(last_hash, None);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    drop(raw);
    // The link's is the op it was: answered with its original ack.
    let mut link = WsClient::join(addr, "doc", "r-eu").await.unwrap();
    link.send(&op_at(1, 1, 1, 0, "r")).await.unwrap();
    match answer(&mut link).await {
        ServerMessage::Ack { seq, rev } => assert_eq!((seq, rev), (1, 2)),
        other => panic!("expected the original ack, got {other:?}"),
    }
    // A new op based 300 revisions back (beyond --max-rebase-revs): merged.
    link.send(&op_at(2, 2, 2, 2, "L")).await.unwrap();
    match answer(&mut link).await {
        ServerMessage::Ack { seq, rev } => assert_eq!((seq, rev), (2, head + 1)),
        other => panic!("expected an ack, got {other:?}"),
    }
    let (_, text) = doc_state(addr, "doc").await.unwrap();
    assert_eq!(text.matches('L').count(), 1, "{text}");
    // A link that never sent an op, based below the eviction horizon:
    // merged (its record could not have been evicted); a new writer there
    // could be resending an evicted op, and is refused.
    let mut fresh_link = WsClient::join(addr, "doc", "r-new").await.unwrap();
    fresh_link.send(&op_at(0, 1, 0, 0, "N")).await.unwrap();
    assert!(matches!(
        answer(&mut fresh_link).await,
        ServerMessage::Ack { seq: 1, .. }
    ));
    let mut fresh_writer = WsClient::join(addr, "doc", "w3").await.unwrap();
    fresh_writer.send(&op_at(0, 1, 0, 0, "X")).await.unwrap();
    match answer(&mut fresh_writer).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::ClientExpired),
        other => panic!("expected client_expired, got {other:?}"),
    }
    // The writer's op based as far back: refused, nothing applied.
    let mut w2 = WsClient::join(addr, "doc", "w2").await.unwrap();
    w2.send(&op_at(head - 150, 1, 2, 2, "W")).await.unwrap();
    match answer(&mut w2).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::RevisionTooOld),
        other => panic!("expected revision_too_old, got {other:?}"),
    }
    assert!(!doc_state(addr, "doc").await.unwrap().1.contains('W'));
    server.stop().unwrap();
}

/// Open a WebSocket to `path` with a bearer token.
async fn connect_with_token(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> e2e_tests::Socket {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    request.headers_mut().insert("authorization", bearer);
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_with_a_region_token_do_not_count_toward_the_per_address_limit() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let data = dir.path().join("data");
    let secret_flag = secret.to_str().unwrap();
    let flags = [
        "--max-connections-per-addr",
        "1",
        "--auth-secret-file",
        secret_flag,
    ];
    let server = attack_server(&data, &flags).await.unwrap();
    let addr = server.addr;
    let token = |access| e2e_tests::mint_test_token(SECRET, "node-eu", &["*"], access, 3600);
    let writer = token(Access::Write);
    let _first = connect_with_token(addr, "/ws/a?client=w", &writer).await;
    let bearer = format!("Bearer {writer}");
    let (status, _) = ws_refused_with(addr, "/ws/b?client=w2", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(status, 429);
    let region = token(Access::Region);
    let mut links = Vec::new();
    for doc in ["a", "b", "c"] {
        let mut socket = connect_with_token(addr, &format!("/ws/{doc}?client=r-eu"), &region).await;
        assert!(matches!(
            e2e_tests::recv_message(&mut socket, T).await.unwrap(),
            ServerMessage::Snapshot { .. }
        ));
        links.push(socket);
    }
    // Without authentication an `r-` id counts like any other connection
    // (anyone could otherwise pick one to escape the limit).
    server.stop().unwrap();
    let open = tempfile::tempdir().unwrap();
    let server = attack_server(open.path(), &["--max-connections-per-addr", "1"])
        .await
        .unwrap();
    let _writer = WsClient::join(server.addr, "a", "w").await.unwrap();
    let (status, _) = ws_refused(server.addr, "/ws/b?client=r-eu").await.unwrap();
    assert_eq!(status, 429, "without authentication a link id is counted");
    server.stop().unwrap();
}

#[tokio::test]
async fn a_link_id_needs_region_access() {
    let dir = tempfile::tempdir().unwrap();
    let secret: PathBuf = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let server = start_server_with(&dir.path().join("data"), |c| {
        c.auth_secret_file = Some(secret)
    })
    .await
    .unwrap();
    let addr = server.addr;
    let token = |access| e2e_tests::mint_test_token(SECRET, "region-eu", &["*"], access, 3600);
    for access in [Access::Read, Access::Write] {
        let bearer = format!("Bearer {}", token(access));
        let (status, body) =
            ws_refused_with(addr, "/ws/doc?client=r-eu", &[("authorization", &bearer)])
                .await
                .unwrap();
        assert_eq!(status, 403, "{access}: {body}");
        assert!(body.contains("region"), "{body}");
        // Another id with the same token is fine.
        let mut request = format!("ws://{addr}/ws/doc?client=eu")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", HeaderValue::from_str(&bearer).unwrap());
        tokio_tungstenite::connect_async(request).await.unwrap();
    }
    for access in [Access::Region, Access::Admin] {
        let bearer = format!("Bearer {}", token(access));
        let mut request = format!("ws://{addr}/ws/doc?client=r-eu")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", HeaderValue::from_str(&bearer).unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        match e2e_tests::recv_message(&mut socket, T).await.unwrap() {
            ServerMessage::Snapshot { access: got, .. }
            | ServerMessage::Resume { access: got, .. } => {
                assert_eq!(got, access)
            }
            other => panic!("expected a first message, got {other:?}"),
        }
    }
    // Region access is not admin.
    let bearer = format!("Bearer {}", token(Access::Region));
    let (status, _) = ot_driver::http::send(
        &addr.into(),
        ot_driver::http::Method::DELETE,
        "/api/admin/docs/doc",
        None,
        &ot_driver::ConnectOptions {
            token: Some(ot_driver::TokenSource::Value(token(Access::Region))),
            ..ot_driver::ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{bearer}");
}
