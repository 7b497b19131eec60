//! Batched fan-out (`batch=1`, PROTOCOL.md "Batches"): a client that asks
//! gets several messages per frame, in the order they would have come one
//! by one; a client that does not ask gets exactly one message per frame.
//! A real server on loopback, raw WebSockets, a writer that pipelines ops
//! so that the server has several to send at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e_tests::doc_work::fill_history;
use e2e_tests::{doc_state, next_event, start_server, ws_connect, Event, Socket};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const OPS: u64 = 300;

/// What a reader got: every frame's message count, and the ops' revisions
/// and inserted texts in the order they came.
#[derive(Default)]
struct Received {
    frame_sizes: Vec<usize>,
    revs: Vec<u64>,
    inserted: String,
}

/// Read frames until the op with revision `upto` came (bounded).
async fn read_until(socket: &mut Socket, upto: u64) -> Received {
    let mut got = Received::default();
    let deadline = Instant::now() + T;
    while got.revs.last() != Some(&upto) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Event::Json(frame) = next_event(socket, left).await.unwrap() else {
            panic!("the connection ended after {:?}", got.revs.last());
        };
        let messages = match frame["type"].as_str() {
            Some("batch") => frame["messages"].as_array().unwrap().clone(),
            _ => vec![frame],
        };
        got.frame_sizes.push(messages.len());
        for message in messages {
            assert_ne!(message["type"], "batch", "no batch inside a batch");
            if message["type"] == "op" {
                got.revs.push(message["rev"].as_u64().unwrap());
                if let Some(Value::String(text)) = message["op"].as_array().unwrap().last() {
                    got.inserted.push_str(text);
                }
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_gets_batches_in_order_and_one_that_does_not_gets_single_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut batched = ws_connect(addr, "/ws/fan?client=batched&batch=1")
        .await
        .unwrap();
    let mut plain = ws_connect(addr, "/ws/fan?client=plain").await.unwrap();
    let mut other = ws_connect(addr, "/ws/fan?client=other&batch=0")
        .await
        .unwrap();
    for socket in [&mut batched, &mut plain, &mut other] {
        let Event::Json(first) = next_event(socket, T).await.unwrap() else {
            panic!("no snapshot");
        };
        assert_eq!(
            first["type"], "snapshot",
            "the first message comes alone: {first}"
        );
    }

    // 300 ops pipelined (500 at a time before reading acks): the server
    // commits them in groups and has several for each reader at once.
    let head = fill_history(addr, "fan", "writer", OPS, 'w').await.unwrap();
    assert_eq!(head, OPS);

    let (batched, plain, other) = tokio::join!(
        read_until(&mut batched, OPS),
        read_until(&mut plain, OPS),
        read_until(&mut other, OPS),
    );
    let every_rev: Vec<u64> = (1..=OPS).collect();
    for got in [&batched, &plain, &other] {
        assert_eq!(got.revs, every_rev, "every op once, in revision order");
        assert_eq!(got.inserted, "w".repeat(OPS as usize));
    }
    let frames_of_several = batched.frame_sizes.iter().filter(|n| **n > 1).count();
    eprintln!(
        "batched: {} ops in {} frames ({} of several messages); plain: {} frames",
        OPS,
        batched.frame_sizes.len(),
        frames_of_several,
        plain.frame_sizes.len()
    );
    assert!(frames_of_several > 0, "{:?}", batched.frame_sizes);
    assert!(batched.frame_sizes.len() < plain.frame_sizes.len());
    assert!(plain.frame_sizes.iter().all(|n| *n == 1));
    assert!(
        other.frame_sizes.iter().all(|n| *n == 1),
        "only batch=1 asks"
    );
    let (rev, text) = doc_state(addr, "fan").await.unwrap();
    assert_eq!((rev, text), (OPS, "w".repeat(OPS as usize)));
    server.stop().await.unwrap();
}
