//! The join deadline (`--join-timeout-secs`), end to end in this process: a
//! document that does not answer in time (its load made slow by a test
//! hook) gets the upgrade refused with 503 `storage_error` (retry later)
//! instead of holding the request; once the document is loaded, joins and
//! edits work.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::document::test_hooks;
use crate::Config;

/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(20);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame as JSON, or the close code (bounded).
async fn next(socket: &mut Socket) -> Result<serde_json::Value, Option<u16>> {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                return Ok(serde_json::from_str(&text).expect("JSON"));
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut page = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut page))
        .await
        .unwrap()
        .unwrap();
    page
}

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
