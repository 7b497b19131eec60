//! Idle documents are unloaded and reload from storage on the next open,
//! without racing a join: with an idle delay of zero, clients that keep
//! joining, editing and leaving never lose an edit or see an inconsistent state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e_tests::{doc_state, http_get, replay_ops, start_server_with, WsClient};
use ot_core::Operation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_never_races_a_join() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(dir.path(), |c| {
        c.idle_unload_secs = 0;
        c.history_window = 3;
        c.snapshot_every = 5;
    })
    .await
    .unwrap();
    let addr = server.addr;
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut acked: u64 = 0;
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut c = WsClient::join(addr, "flappy", &format!("writer-{i}"))
                .await
                .unwrap();
            while Instant::now() < deadline {
                let len = c.client().text().len_chars();
                let op = Operation::insert_at(len, len, &format!("<{i}>")).unwrap();
                c.edit(&op).await.unwrap();
                c.pump_until(Duration::from_secs(10), |c| c.client().all_saved())
                    .await
                    .unwrap();
                acked += 1;
                // Leave (the document may unload at once) and come back resuming,
                // sometimes at once (racing the unload), sometimes a little later.
                c.cut();
                if acked.is_multiple_of(2) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c.reconnect().await.unwrap();
            }
            (c, acked)
        }));
    }
    let mut total: u64 = 0;
    let mut clients = Vec::new();
    for t in tasks {
        let (c, acked) = t.await.unwrap();
        total += acked;
        clients.push(c);
    }
    let (rev, text) = doc_state(addr, "flappy").await.unwrap();
    assert_eq!(rev, total, "every acked edit is one revision");
    for (i, client) in clients.iter().enumerate() {
        let marker = format!("<{i}>");
        let count = text.matches(&marker).count();
        let expected = client.client().next_seq() - 1;
        assert_eq!(
            count as u64, expected,
            "writer {i}'s edits appear exactly once each"
        );
    }
    for c in clients.iter_mut() {
        c.reconnect().await.unwrap();
        c.settle_to(rev, Duration::from_secs(10)).await.unwrap();
        assert_eq!(c.text(), text);
    }
    assert_eq!(replay_ops(addr, "flappy").await.unwrap(), (rev, text));
    let metrics = http_get(addr, "/metrics").await.unwrap();
    let loads: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ot_document_loads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        loads > 2,
        "the document should have been unloaded and reloaded, loads = {loads}"
    );
    drop(clients);
    // With nobody connected the document leaves memory.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_get(addr, "/metrics").await.unwrap();
        if metrics.contains("ot_open_documents 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the document never unloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}
