//! The attack table (docs/attacks.md): each row runs a real server process
//! on loopback with the limits it states, a bystander editing the same
//! document, and an attack; it checks the typed answer, that the document
//! holds exactly what was acknowledged, that the bystander's acks stayed
//! fast, and that the server's RSS stayed under twice its RSS with the same
//! documents and no attack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e_tests::attack::{rss_kib, Bystander, RawWriter, RssPeak};
use e2e_tests::{doc_state, free_port, metric_value, server_binary, ServerProcess};
use ot_core::Operation;
use ot_protocol::ErrorCode;

/// The slowest bystander ack allowed while an attack runs (the machine is
/// shared and noisy; an attack that stalls a document costs seconds).
const BYSTANDER_MAX: Duration = Duration::from_millis(750);

async fn server(dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
    let binary = server_binary().unwrap();
    ServerProcess::start(&binary, dir, free_port(), extra)
        .await
        .unwrap()
}

/// The baseline: the server's RSS after the bystander has edited for a
/// while with the documents in place and no attack.
async fn baseline_rss(server: &ServerProcess, doc: &str) -> u64 {
    let warmup = Bystander::start(server.addr, doc, "warmup").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    warmup.finish().await.unwrap();
    rss_kib(server.child.id()).unwrap()
}

fn assert_bystander_fast(latencies: &[Duration]) {
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < BYSTANDER_MAX,
        "the bystander's slowest ack took {slowest:?} ({} acks)",
        latencies.len()
    );
}

/// An op of `pairs` × (retain 1, insert "a") on a text of at least `pairs` characters.
fn comb(pairs: usize, len: usize) -> Operation {
    let mut op = Operation::new();
    for _ in 0..pairs {
        op.retain(1);
        op.insert("a");
    }
    op.retain(len - pairs);
    op
}

/// Row "component bomb": ops of more components than `--max-op-components`
/// (10,000) are refused with `too_many_components` and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_bomb_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &[]).await;
    let mut attacker = RawWriter::join(server.addr, "target", "attacker")
        .await
        .unwrap();
    let base: String = "x".repeat(20_000);
    let op = attacker.insert_at_end(&base);
    attacker.send(op).await.unwrap();
    let baseline = baseline_rss(&server, "target").await;
    let (rev_before, text_before) = doc_state(server.addr, "target").await.unwrap();

    let bystander = Bystander::start(server.addr, "target", "bystander")
        .await
        .unwrap();
    let peak = RssPeak::start(server.child.id());
    for _ in 0..40 {
        // 5,001 pairs: 10,003 components, 5,001 characters (within max_op_len).
        let op = comb(5_001, attacker.len);
        let code = attacker.send_refused(op).await.unwrap();
        assert_eq!(code, ErrorCode::TooManyComponents);
    }
    let peak = peak.finish().await;
    let latencies = bystander.finish().await.unwrap();

    assert_bystander_fast(&latencies);
    assert!(
        peak < 2 * baseline,
        "RSS {peak} KiB vs {baseline} KiB with no attack"
    );
    // Only the bystander's edits landed.
    let (rev, text) = doc_state(server.addr, "target").await.unwrap();
    assert_eq!(rev, rev_before + latencies.len() as u64);
    assert!(text.starts_with(&text_before));
    assert_eq!(&text[text_before.len()..], "b".repeat(latencies.len()));
}

/// Row "no-op flood": a connection sending no-ops on a large document as
/// fast as its rate allows gets them accepted (PROTOCOL.md: one revision
/// each) but makes the server write no snapshot of the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_flood_on_a_large_document_writes_no_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    // Relaxed durability: the row is about snapshots, not fsyncs (and stays quick).
    let server = server(dir.path(), &["--durability", "relaxed"]).await;
    let mut attacker = RawWriter::join(server.addr, "large", "attacker")
        .await
        .unwrap();
    for n in 0..10u8 {
        let chunk: String = std::iter::repeat_n(char::from(b'a' + n), 100_000).collect();
        let op = attacker.insert_at_end(&chunk);
        attacker.send(op).await.unwrap();
    }
    let baseline = baseline_rss(&server, "large").await;
    let (rev_before, text_before) = doc_state(server.addr, "large").await.unwrap();
    let snapshots_before = metric_value(server.addr, "ot_snapshots_total")
        .await
        .unwrap();

    let bystander = Bystander::start(server.addr, "large", "bystander")
        .await
        .unwrap();
    let peak = RssPeak::start(server.child.id());
    // Before, 1,000 no-ops wrote 5 snapshots of a megabyte each.
    for _ in 0..1_000 {
        let op = attacker.noop();
        attacker.send(op).await.unwrap();
    }
    let peak = peak.finish().await;
    let latencies = bystander.finish().await.unwrap();

    assert_bystander_fast(&latencies);
    assert!(
        peak < 2 * baseline,
        "RSS {peak} KiB vs {baseline} KiB with no attack"
    );
    assert_eq!(
        metric_value(server.addr, "ot_snapshots_total")
            .await
            .unwrap(),
        snapshots_before,
        "no snapshot written"
    );
    // Every no-op is a revision; only the bystander's edits changed the text.
    let (rev, text) = doc_state(server.addr, "large").await.unwrap();
    assert_eq!(rev, rev_before + 1_000 + latencies.len() as u64);
    assert_eq!(text.len(), text_before.len() + latencies.len());
}
