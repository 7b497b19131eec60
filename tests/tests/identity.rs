//! Client identity: server-assigned ids are distinct; a second connection with
//! the same client id on the same document replaces the first (close 4009).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use e2e_tests::{
    doc_state, http_get_json, recv_message, send_message, start_server, test_key, ws_connect,
    ws_connect_with_key, Event, WsClient,
};
use ot_core::Operation;
use ot_protocol::{ClientMessage, ServerMessage};

const T: Duration = Duration::from_secs(20);

/// Clients connecting without `client=` get distinct 128-bit ids, and the
/// server treats them as distinct writers (both seq 1 are applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_assigned_ids_are_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut ids = HashSet::new();
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let mut socket = ws_connect(addr, "/ws/anon").await.unwrap();
        let snapshot = recv_message(&mut socket, T).await.unwrap();
        let ServerMessage::Snapshot { seq, client, .. } = &snapshot else {
            panic!("expected a snapshot, got {snapshot:?}");
        };
        assert_eq!(*seq, 0, "{snapshot:?}");
        let id = client.to_string();
        assert_eq!(id.len(), 32, "128 random bits as hex: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(ids.insert(id.clone()), "id {id} assigned twice");
        sockets.push((socket, id));
    }
    // Each is its own writer: seq 1 of each is applied.
    for (rev, (socket, _)) in sockets.iter_mut().enumerate() {
        let frame = ClientMessage::Op {
            rev: rev as u64,
            seq: 1,
            op: Operation::insert_at(rev, rev, "a").unwrap(),
            ranges: None,
            origin: None,
        };
        send_message(socket, &frame).await.unwrap();
        // Skip the ops of the earlier writers, up to this one's ack.
        loop {
            let message = recv_message(socket, T).await.unwrap();
            if matches!(message, ServerMessage::Ack { .. }) {
                assert_eq!(
                    message,
                    ServerMessage::Ack {
                        rev: rev as u64 + 1,
                        seq: 1
                    }
                );
                break;
            }
            assert!(matches!(message, ServerMessage::Op { .. }), "{message:?}");
        }
    }
    assert_eq!(doc_state(addr, "anon").await.unwrap(), (8, "a".repeat(8)));
    let (_, ops) = http_get_json(addr, "/api/docs/anon/ops").await.unwrap();
    let writers: HashSet<String> = ops["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["client"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(writers, ids);
    server.stop().await.unwrap();
}

/// The same client id on a second connection to the same document closes the
/// first with 4009; the second works; others see no `leave` (the writer is
/// still there). The same id on another document is independent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_id_replaces_the_older_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut watcher = WsClient::join(addr, "ident", "watcher").await.unwrap();
    let mut first = WsClient::join(addr, "ident", "twin").await.unwrap();
    // The same id on another document: unaffected by what follows.
    let mut elsewhere = WsClient::join(addr, "ident-other", "twin").await.unwrap();
    first
        .edit(&Operation::insert_at(0, 0, "one").unwrap())
        .await
        .unwrap();
    first.settle_to(1, T).await.unwrap();

    let mut second = WsClient::join(addr, "ident", "twin").await.unwrap();
    assert_eq!(second.client().revision(), 1);
    assert_eq!(
        second.client().next_seq(),
        2,
        "the snapshot carries the last applied seq"
    );
    let close = first.expect_close(T).await.unwrap();
    assert_eq!(close.as_ref().map(|c| c.0), Some(4009), "{close:?}");

    second
        .edit(&Operation::insert_at(3, 3, " two").unwrap())
        .await
        .unwrap();
    second.settle_to(2, T).await.unwrap();
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(
        doc_state(addr, "ident").await.unwrap(),
        (2, "one two".to_owned())
    );

    // The watcher sees the two ops and nothing else (no leave for "twin").
    for rev in 1..=2u64 {
        let op = watcher.recv_message(T).await.unwrap();
        assert!(
            matches!(&op, ServerMessage::Op { rev: r, client, .. } if *r == rev && client == "twin"),
            "{op:?}"
        );
        watcher.handle_message(op).await.unwrap();
    }
    watcher
        .expect_quiet(Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(watcher.text(), "one two");

    // The connection on the other document is still open and works.
    elsewhere
        .edit(&Operation::insert_at(0, 0, "x").unwrap())
        .await
        .unwrap();
    elsewhere.settle_to(1, T).await.unwrap();
    assert_eq!(
        doc_state(addr, "ident-other").await.unwrap(),
        (1, "x".to_owned())
    );

    // A third connection with the id replaces the second in turn.
    let mut third =
        ws_connect_with_key(addr, "/ws/ident?client=twin&rev=2", Some(&test_key("twin")))
            .await
            .unwrap();
    let resume = recv_message(&mut third, T).await.unwrap();
    assert!(
        matches!(resume, ServerMessage::Resume { seq: 2, .. }),
        "{resume:?}"
    );
    match second.next_event(T).await.unwrap() {
        Event::Closed(Some((code, _))) => assert_eq!(code, 4009),
        other => panic!("expected close 4009, got {other:?}"),
    }
    server.stop().await.unwrap();
}
