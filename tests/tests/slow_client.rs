//! A client that stops reading: its bounded outbound queue overflows, the
//! server closes it with 4008 (never skipping ops silently), the document and
//! the other clients carry on, and the slow client catches up by resuming.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e_tests::doc_work::{flood_until_left, FLOOD_CHUNK};
use e2e_tests::{doc_state, replay_ops, start_server_with, ws_connect_small_recv_buffer, WsClient};
use ot_core::Operation;
use ot_protocol::ServerMessage;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_closed_with_4008_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| {
        c.outbound_queue = 16;
        // Resumes from before the in-memory window come from storage.
        c.history_window = 64;
    })
    .await
    .unwrap();
    let addr = server.addr;
    let mut writer = WsClient::join(addr, "slow", "writer").await.unwrap();
    let mut reader = WsClient::join(addr, "slow", "reader").await.unwrap();
    // The slow client: joins, then reads nothing (and its socket buffers little).
    let mut slow = WsClient::new(addr, "slow", "sloth");
    let socket = ws_connect_small_recv_buffer(addr, &slow.url())
        .await
        .unwrap();
    slow.attach(socket).await.unwrap();
    assert_eq!(slow.client().revision(), 0);

    // The writer writes big ops, the reader keeps up, until the server gives up
    // on the slow client (the others see it leave). Bounded in ops and time.
    // Kernel socket buffers hold a few MB before the queue fills.
    let ops = flood_until_left(&mut writer, "sloth", Some(&mut reader), FLOOD_CHUNK)
        .await
        .unwrap();
    let leave = ServerMessage::Leave {
        client: "sloth".into(),
    };
    eprintln!("the slow client was closed after {ops} ops");
    // The reader sees the leave too (it may still be in flight when the writer saw it).
    reader
        .pump_until(T, |c| c.other.contains(&leave))
        .await
        .unwrap();

    // The document and the others keep working.
    for _ in 0..5 {
        let len = reader.client().text().len_chars();
        reader
            .edit_saved(&Operation::insert_at(len, 0, "r").unwrap(), T)
            .await
            .unwrap();
    }
    let (head, text) = doc_state(addr, "slow").await.unwrap();
    assert_eq!(head, ops + 5);
    writer.settle_to(head, T).await.unwrap();
    reader.settle_to(head, T).await.unwrap();
    assert_eq!(writer.text(), text);
    assert_eq!(reader.text(), text);
    assert!(writer.errors.is_empty() && reader.errors.is_empty());

    // The slow client reads what it was sent (in order, no gaps: the state
    // machine checks), then the close: 4008.
    let close = slow.expect_close(Duration::from_secs(60)).await.unwrap();
    assert_eq!(close.as_ref().map(|c| c.0), Some(4008), "{close:?}");
    let reached = slow.client().revision();
    assert!(
        reached < head,
        "it was closed before it had everything: {reached} of {head}"
    );
    // It resumes with rev and catches up.
    slow.reconnect().await.unwrap();
    slow.settle_to(head, Duration::from_secs(60)).await.unwrap();
    assert_eq!(slow.client().revision(), head);
    assert_eq!(slow.text(), text);
    assert!(slow.errors.is_empty(), "{:?}", slow.errors);
    assert!(slow.conflict_copies.is_empty());
    assert_eq!(replay_ops(addr, "slow").await.unwrap(), (head, text));
    server.stop().await.unwrap();
}

/// A client resuming from further behind than its outbound queue holds is not
/// closed as too slow for it: the ops it missed come from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_far_behind_with_a_small_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| c.outbound_queue = 16)
        .await
        .unwrap();
    let addr = server.addr;
    let mut behind = WsClient::join(addr, "far", "behind").await.unwrap();
    behind.cut();
    let mut writer = WsClient::join(addr, "far", "writer").await.unwrap();
    for i in 0..100 {
        writer
            .edit_saved(&Operation::insert_at(i, i, "w").unwrap(), T)
            .await
            .unwrap();
    }
    // 100 ops behind, with room for 16 messages: resumed, not closed.
    behind.reconnect().await.unwrap();
    behind.settle_to(100, T).await.unwrap();
    assert_eq!(behind.text(), "w".repeat(100));
    // And it stays connected and live.
    writer
        .edit(&Operation::insert_at(100, 0, "!").unwrap())
        .await
        .unwrap();
    behind.settle_to(101, T).await.unwrap();
    assert!(behind.errors.is_empty(), "{:?}", behind.errors);
    server.stop().await.unwrap();
}

/// A client resuming behind more bytes of ops than half its queue's byte
/// bound is not closed as too slow for it either: those ops come from
/// storage as the connection drains, not all at once from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_behind_large_ops_with_a_small_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| c.outbound_queue_bytes = 256 * 1024)
        .await
        .unwrap();
    let addr = server.addr;
    let mut behind = WsClient::join(addr, "large", "behind").await.unwrap();
    behind.cut();
    let mut writer = WsClient::join(addr, "large", "writer").await.unwrap();
    // 20 ops of 50,000 characters: 1 MB of frames, all in the history window.
    let chunk = "x".repeat(50_000);
    for i in 0..20 {
        writer
            .edit_saved(
                &Operation::insert_at(i * chunk.len(), 0, &chunk).unwrap(),
                T,
            )
            .await
            .unwrap();
    }
    behind.reconnect().await.unwrap();
    behind.settle_to(20, T).await.unwrap();
    assert_eq!(behind.text(), chunk.repeat(20));
    // It stays connected and live.
    writer
        .edit(&Operation::insert_at(chunk.len() * 20, 0, "!").unwrap())
        .await
        .unwrap();
    behind.settle_to(21, T).await.unwrap();
    assert!(behind.errors.is_empty(), "{:?}", behind.errors);
    server.stop().await.unwrap();
}
