//! The join deadline (`--join-timeout-secs`), end to end in this process: a
//! document that does not answer in time (its load made slow by a test
//! hook) gets the upgrade refused with 503 `storage_error` (retry later)
//! instead of holding the request; once the document is loaded, joins and
//! edits work. A join that is late after the upgrade (the actor answered the
//! upgrade's check, then was slow to answer the join) is closed with 1011,
//! and its late answer registers nothing.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use super::test_socket::{metrics, next, until_close};
use crate::document::test_hooks;
use crate::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_not_answered_in_time_is_closed_with_1011_and_the_document_serves_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), dir.path().into());
    config.join_timeout_secs = 1;
    let load = Duration::from_secs(4);
    test_hooks::slow_load("slow-to-load", load);
    let server = crate::start(config).await.unwrap();
    let url = |client: &str| format!("ws://{}/ws/slow-to-load?client={client}", server.addr);

    let started = Instant::now();
    let refused = tokio_tungstenite::connect_async(url("first")).await;
    let waited = started.elapsed();
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}");
    };
    assert_eq!(response.status(), 503);
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
    assert_eq!(body["code"], "storage_error", "{body}");
    assert!(
        waited >= Duration::from_secs(1) && waited < load,
        "refused after {waited:?}: after the deadline, before the load ended"
    );
    assert!(
        metrics(server.addr)
            .await
            .contains("ot_connection_limits_total{reason=\"join_timeout\"} 1"),
        "counted once"
    );

    // Once loaded (the late join answered to nobody), a client joins and edits.
    tokio::time::sleep(load.saturating_sub(started.elapsed())).await;
    let (mut second, _) = tokio_tungstenite::connect_async(url("second"))
        .await
        .unwrap();
    let snapshot = next(&mut second).await.expect("a snapshot");
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    let op = r#"{"type":"op","rev":0,"seq":1,"op":["hi"]}"#;
    second.send(Message::text(op)).await.unwrap();
    let ack = loop {
        let message = next(&mut second).await.expect("an ack");
        if message["type"] == "ack" {
            break message;
        }
    };
    assert_eq!(ack["rev"], 1, "{ack}");
    assert!(
        metrics(server.addr)
            .await
            .contains("ot_connection_limits_total{reason=\"join_timeout\"} 1"),
        "the second join was in time"
    );
    drop(second);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_late_after_the_upgrade_is_closed_with_1011_and_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), dir.path().into());
    config.join_timeout_secs = 1;
    let server = crate::start(config).await.unwrap();
    let url = |client: &str| format!("ws://{}/ws/slow-to-join?client={client}", server.addr);
    // The document is loaded (a first client joins and leaves), then its
    // next join is answered 3 s late.
    let (mut warm, _) = tokio_tungstenite::connect_async(url("warm")).await.unwrap();
    assert_eq!(
        next(&mut warm).await.expect("a snapshot")["type"],
        "snapshot"
    );
    drop(warm);
    let late = Duration::from_secs(3);
    test_hooks::slow_join("slow-to-join", late);

    let started = Instant::now();
    let (mut first, _) = tokio_tungstenite::connect_async(url("first"))
        .await
        .expect("the upgrade's check is answered in time");
    let (messages, code) = until_close(&mut first).await;
    let waited = started.elapsed();
    assert_eq!(code, Some(1011), "{messages:?}");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["type"], "error", "{messages:?}");
    assert_eq!(messages[0]["code"], "storage_error", "{messages:?}");
    assert!(
        waited >= Duration::from_secs(1) && waited < late,
        "closed after {waited:?}: after the deadline, before the late answer"
    );

    // Once the late join was answered (to nobody), another client joins and
    // edits; the first was never registered, so nobody sees it leave.
    tokio::time::sleep(late.saturating_sub(started.elapsed())).await;
    let (mut second, _) = tokio_tungstenite::connect_async(url("second"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut second).await.expect("a snapshot")["type"],
        "snapshot"
    );
    // Two ops, one after the other: a leave caused by the first would come
    // before the second's ack.
    let mut seen = Vec::new();
    for (rev, op) in [
        (1, r#"{"type":"op","rev":0,"seq":1,"op":["hi"]}"#),
        (2, r#"{"type":"op","rev":1,"seq":2,"op":[2,"!"]}"#),
    ] {
        second.send(Message::text(op)).await.unwrap();
        loop {
            let message = next(&mut second).await.expect("an ack");
            if message["type"] == "ack" {
                assert_eq!(message["rev"], rev, "{message}");
                break;
            }
            seen.push(message);
        }
    }
    assert!(seen.iter().all(|m| m["type"] != "leave"), "{seen:?}");
    let page = metrics(server.addr).await;
    assert!(
        page.contains("ot_connection_limits_total{reason=\"join_timeout\"} 1"),
        "counted once"
    );
    assert!(
        !page.contains("reason=\"queue_messages\""),
        "no overflow counted"
    );
    drop(second);
    server.stop().await.unwrap();
}
