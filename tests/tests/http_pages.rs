//! Pages of `/ops` are bounded in bytes as well as in count: a history of
//! large ops comes in several short pages (never one response of hundreds of
//! megabytes), and paging on until an empty page gives every op.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e_tests::{doc_state, http_get_json, recv_message, replay_ops, ws_connect, WsClient};
use ot_core::Operation;
use ot_protocol::ServerMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_large_ops_stop_at_a_few_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    // A small window, so that a resume from revision 0 is served from storage.
    let server = e2e_tests::start_server_with(dir.path(), |c| c.history_window = 5)
        .await
        .unwrap();
    let mut writer = WsClient::join(server.addr, "large", "w").await.unwrap();
    // 60 ops of 100,000 characters: about 12 MB of ops as sent and applied.
    for n in 0..60u32 {
        let len = writer.client().text().len_chars();
        let letter = char::from(b'a' + (n % 26) as u8);
        let chunk: String = std::iter::repeat_n(letter, 100_000).collect();
        writer
            .edit(&Operation::insert_at(len, len, &chunk).unwrap())
            .await
            .unwrap();
        writer
            .pump_until(Duration::from_secs(30), |c| c.client().all_saved())
            .await
            .unwrap();
    }
    let (status, page) = http_get_json(server.addr, "/api/docs/large/ops?from=0&limit=1000")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let first = page["ops"].as_array().unwrap().len();
    // Each op is ~200 KB in the page: about 4 MiB of them.
    assert!((10..40).contains(&first), "{first} ops in the first page");
    // Paging on gives every op, in order, and replays to the text.
    let (rev, text) = replay_ops(server.addr, "large").await.unwrap();
    assert_eq!((rev, text.chars().count()), (60, 6_000_000));
    assert_eq!(doc_state(server.addr, "large").await.unwrap().1, text);
    // The export streams the same ops in bounded pages.
    let export = e2e_tests::http_get(server.addr, "/api/admin/docs/large/export")
        .await
        .unwrap();
    assert_eq!(export.lines().count(), 61);
    // A resume from revision 0 gets every op from storage, in order, read in
    // pages bounded the same way.
    let mut socket = ws_connect(server.addr, "/ws/large?client=late&rev=0")
        .await
        .unwrap();
    let first = recv_message(&mut socket, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(
            first,
            ServerMessage::Resume {
                rev: 0,
                head: 60,
                ..
            }
        ),
        "{first:?}"
    );
    let mut caught_up = String::new();
    for expected in 1..=60u64 {
        match recv_message(&mut socket, Duration::from_secs(30))
            .await
            .unwrap()
        {
            ServerMessage::Op { rev, op, .. } => {
                assert_eq!(rev, expected);
                caught_up = op.apply(&caught_up).unwrap();
            }
            other => panic!("expected op {expected}, got {other:?}"),
        }
    }
    assert_eq!(caught_up, text);
    server.stop().await.unwrap();
}
