//! A document whose snapshot is larger than tungstenite's 16 MiB default
//! frame limit opens in the Rust client driver: it sizes its frame limit by
//! the limits the server announces (6 × `max_doc_len` + 1 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ot_core::Operation;
use ot_driver::{Driver, Event, ServerUrl, SessionCore};
use ot_protocol::DocId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_16_mib_opens() {
    let dir = tempfile::tempdir().unwrap();
    let server = e2e_tests::start_server_with(dir.path(), |c| {
        c.max_doc_len = 10_000_000;
        c.max_op_len = 10_000_000;
        c.max_message_bytes = 64 << 20;
    })
    .await
    .unwrap();
    let url = ServerUrl::parse(&server.addr.to_string()).unwrap();
    let doc = DocId::parse("big").unwrap();
    // 9 M two-byte characters: an 18 MB text.
    let text = "é".repeat(9_000_000);
    let mut writer = Driver::new(url.clone(), SessionCore::new(doc.clone(), "writer"));
    writer.connect().await.unwrap();
    writer
        .local_edit(&Operation::replace_range(0, 0, 0, &text).unwrap(), None)
        .await
        .unwrap();
    writer.wait_saved(Duration::from_secs(60)).await.unwrap();
    let mut reader = Driver::new(url, SessionCore::new(doc, "reader"));
    let events = reader.connect().await.unwrap();
    assert!(events.contains(&Event::Resynced), "{events:?}");
    assert!(reader.is_connected());
    let got = reader.core().client().text();
    assert_eq!(got.len_chars(), 9_000_000);
    assert!(got.len_bytes() > 16 << 20);
    assert_eq!(got.to_string(), text);
}
