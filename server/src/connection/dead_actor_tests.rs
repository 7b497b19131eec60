//! A document whose actor fails (its task panics, made to by a test hook)
//! while clients are in it, end to end in this process: every connection in
//! it is closed with 1011 (the viewer that sends nothing too), the clients
//! reconnect and resume, a new actor loads the document from storage, every
//! acknowledged op is there once, and the op the actor failed on (never
//! acknowledged) lands once when resent.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use super::test_socket::{metrics, next, until_close, until_type, Socket};
use crate::document::test_hooks;
use crate::Config;

async fn join(url: &str) -> (Socket, serde_json::Value) {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = next(&mut socket).await.expect("a first message");
    (socket, first)
}

async fn send(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_actor_closes_its_connections_with_1011_and_a_new_one_loads_from_storage() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), dir.path().into());
    let server = crate::start(config).await.unwrap();
    let url = |client: &str, rev: Option<u64>| {
        let resume = rev.map(|r| format!("&rev={r}")).unwrap_or_default();
        format!("ws://{}/ws/fragile?client={client}{resume}", server.addr)
    };
    let (mut writer, first) = join(&url("writer", None)).await;
    assert_eq!(first["type"], "snapshot", "{first}");
    let (mut viewer, _) = join(&url("viewer", None)).await;
    send(
        &mut writer,
        r#"{"type":"op","rev":0,"seq":1,"op":["kept"]}"#,
    )
    .await;
    let (ack, _) = until_type(&mut writer, "ack").await;
    assert_eq!(ack["rev"], 1, "{ack}");
    let (op, _) = until_type(&mut viewer, "op").await;
    assert_eq!(op["rev"], 1, "{op}");

    // The actor fails on the next op: both connections are closed with 1011,
    // and the op is not acknowledged.
    test_hooks::panic_on_next_op("fragile");
    let resent = r#"{"type":"op","rev":1,"seq":2,"op":[4," once"]}"#;
    send(&mut writer, resent).await;
    let (to_writer, writer_code) = until_close(&mut writer).await;
    let (to_viewer, viewer_code) = until_close(&mut viewer).await;
    assert_eq!(writer_code, Some(1011), "{to_writer:?}");
    assert_eq!(viewer_code, Some(1011), "{to_viewer:?}");
    assert!(
        to_writer.iter().all(|m| m["type"] != "ack"),
        "{to_writer:?}"
    );
    assert!(
        metrics(server.addr).await.contains("ot_open_documents 0"),
        "the failed actor is not counted as open"
    );

    // Both resume; a new actor loads the document; the resend lands once.
    let (mut writer, resumed) = join(&url("writer", Some(1))).await;
    assert_eq!(resumed["type"], "resume", "{resumed}");
    assert_eq!(
        resumed["head"], 1,
        "the acknowledged op survived: {resumed}"
    );
    assert_eq!(resumed["seq"], 1, "{resumed}");
    let (mut viewer, _) = join(&url("viewer", Some(1))).await;
    send(&mut writer, resent).await;
    let (ack, _) = until_type(&mut writer, "ack").await;
    assert_eq!(ack["rev"], 2, "{ack}");
    let (op, _) = until_type(&mut viewer, "op").await;
    assert_eq!(op["op"], serde_json::json!([4, " once"]), "{op}");
    // A second resend of the same seq is a duplicate: acked, not applied.
    send(&mut writer, resent).await;
    let (ack, _) = until_type(&mut writer, "ack").await;
    assert_eq!(ack["rev"], 2, "{ack}");

    drop((writer, viewer));
    server.stop().await.unwrap();
    let reopened = crate::start(Config::with_defaults(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().into(),
    ))
    .await
    .unwrap();
    let (mut reader, snapshot) =
        join(&format!("ws://{}/ws/fragile?client=reader", reopened.addr)).await;
    assert_eq!(snapshot["rev"], 2, "{snapshot}");
    assert_eq!(snapshot["text"], "kept once", "{snapshot}");
    drop(reader.close(None).await);
    reopened.stop().await.unwrap();
}
