//! Snapshots are taken by what changed, not by revision count alone: no-ops
//! and small edits on a large document write no full-text snapshots (before,
//! one connection sending no-ops made the server write a snapshot of the
//! whole text every 200 ops), while a small document still gets one every
//! `--snapshot-every` ops, and the document reloads right after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e_tests::attack::RawWriter;
use e2e_tests::{doc_state, metric_value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ops_and_small_edits_on_a_large_document_write_no_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let server = e2e_tests::start_server_with(dir.path(), |c| {
        c.snapshot_every = 10;
        c.ops_per_sec = 100_000;
        c.ops_burst = 100_000;
    })
    .await
    .unwrap();
    let snapshots = || metric_value(server.addr, "ot_snapshots_total");

    // A small document: a snapshot every 10 ops.
    let mut small = RawWriter::join(server.addr, "small", "w").await.unwrap();
    for _ in 0..30 {
        let op = small.insert_at_end("x");
        small.send(op).await.unwrap();
    }
    assert_eq!(snapshots().await.unwrap(), 3.0);

    // A document of a million characters, written in ten ops of 100,000.
    let mut big = RawWriter::join(server.addr, "big", "w").await.unwrap();
    for n in 0..10 {
        let chunk: String = std::iter::repeat_n(char::from(b'a' + n), 100_000).collect();
        let op = big.insert_at_end(&chunk);
        big.send(op).await.unwrap();
    }
    let after_load = snapshots().await.unwrap();
    assert!(after_load <= 4.0, "{after_load}");

    // 1,000 no-ops and 1,000 one-character edits: before, 200 snapshots of
    // a megabyte each; now none.
    for _ in 0..1000 {
        let op = big.noop();
        big.send(op).await.unwrap();
    }
    for _ in 0..1000 {
        let op = big.insert_at_end("y");
        big.send(op).await.unwrap();
    }
    assert_eq!(snapshots().await.unwrap(), after_load);
    assert_eq!(big.rev, 2010);

    // After a restart the document loads from its latest snapshot plus the
    // ops after it.
    server.stop().await.unwrap();
    let server = e2e_tests::start_server(dir.path()).await.unwrap();
    let (rev, text) = doc_state(server.addr, "big").await.unwrap();
    assert_eq!(rev, 2010);
    assert_eq!(text.chars().count(), 1_001_000);
    assert!(text.ends_with(&"y".repeat(1000)));
    server.stop().await.unwrap();
}
