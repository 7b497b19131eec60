//! Many real WebSocket clients edit one document at once against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e_tests::{doc_state, replay_ops, start_server, WsClient};
use ot_core::Operation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_edit(rng: &mut ChaCha8Rng, text_len: usize, tag: usize) -> Operation {
    let pos = rng.random_range(0..=text_len);
    if text_len > 0 && rng.random_bool(0.3) {
        let len = rng.random_range(0..=(text_len - pos).min(4));
        Operation::delete_range(text_len, pos, len).unwrap()
    } else {
        let pool = ["a", "é", "漢", "🙂", "e\u{301}", " "];
        let text: String = (0..rng.random_range(1..4))
            .map(|_| pool[rng.random_range(0..pool.len())])
            .collect::<String>()
            + &tag.to_string();
        Operation::insert_at(text_len, pos, &text).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_converge() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(i);
            let mut c = WsClient::join(addr, "shared", &format!("client-{i}"))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                let op = random_edit(&mut rng, c.client().text().len_chars(), i as usize);
                c.edit(&op).await.unwrap();
                // Read whatever has arrived, without waiting long.
                let _ = c.drain(Duration::from_millis(rng.random_range(0..5))).await;
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // Let everyone finish: all acked, all at the server's head.
    let mut head = 0;
    for _ in 0..3 {
        for c in clients.iter_mut() {
            c.pump_until(Duration::from_secs(20), |c| c.client().all_saved())
                .await
                .unwrap();
        }
        head = doc_state(addr, "shared").await.unwrap().0;
        for c in clients.iter_mut() {
            c.settle_to(head, Duration::from_secs(20)).await.unwrap();
        }
    }
    let (rev, text) = doc_state(addr, "shared").await.unwrap();
    assert_eq!(rev, head);
    assert!(rev > 50, "too few edits were made: {rev}");
    for (i, c) in clients.iter().enumerate() {
        assert!(c.errors.is_empty(), "client {i} got errors: {:?}", c.errors);
        assert_eq!(c.text(), text, "client {i} diverged");
        assert_eq!(c.client().revision(), rev);
    }
    let (replayed_rev, replayed) = replay_ops(addr, "shared").await.unwrap();
    assert_eq!((replayed_rev, replayed), (rev, text));
    let conflicts = e2e_tests::http_get(addr, "/api/docs/shared/conflicts?limit=5")
        .await
        .unwrap();
    assert!(conflicts.contains("transformed_past"), "{conflicts}");
    server.stop().await.unwrap();
}
