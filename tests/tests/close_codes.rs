//! Close codes the server sends for broken frames, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e_tests::{
    doc_state, http_get_status, next_event, recv_message, start_server, ws_connect, Event, WsClient,
};
use futures_util::SinkExt;
use ot_core::Operation;
use ot_protocol::{ClientMessage, ServerMessage};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

/// A text frame whose payload is not UTF-8: a cursor message whose name's
/// bytes are replaced by `FF FE` (tungstenite only builds `Message::Text`
/// from valid UTF-8, so the frame is made by hand; it is masked like any
/// client frame when written).
fn invalid_utf8_text_frame() -> Message {
    let mut payload = ClientMessage::Cursor {
        rev: 0,
        ranges: Vec::new(),
        name: Some("??".to_owned()),
    }
    .to_text()
    .into_bytes();
    let at = payload
        .windows(2)
        .position(|w| w == b"??")
        .expect("the name is in the text");
    payload[at..at + 2].copy_from_slice(b"\xff\xfe");
    Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true))
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_closed_with_1007_and_harms_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;

    let mut other = WsClient::join(addr, "utf8", "other").await.unwrap();
    other
        .edit(&Operation::insert_at(0, 0, "kept").unwrap())
        .await
        .unwrap();
    other.settle_to(1, T).await.unwrap();

    let mut bad = ws_connect(addr, "/ws/utf8?client=broken").await.unwrap();
    let first = recv_message(&mut bad, T).await.unwrap();
    assert!(matches!(first, ServerMessage::Snapshot { .. }), "{first:?}");
    bad.send(invalid_utf8_text_frame()).await.unwrap();
    let closed = loop {
        match next_event(&mut bad, T).await.unwrap() {
            // A cursor of the other client may come first.
            Event::Json(_) => continue,
            other => break other,
        }
    };
    match closed {
        Event::Closed(Some((code, reason))) => {
            assert_eq!(code, 1007, "{reason}");
        }
        other => panic!("expected a close frame with 1007, got {other:?}"),
    }

    // The other client goes on, and the document holds exactly its edits.
    other
        .edit(&Operation::insert_at(4, 4, "!").unwrap())
        .await
        .unwrap();
    other.settle_to(2, T).await.unwrap();
    assert_eq!(
        doc_state(addr, "utf8").await.unwrap(),
        (2, "kept!".to_owned())
    );

    // The server takes new connections, for this document too.
    let (status, _) = http_get_status(addr, "/healthz").await.unwrap();
    assert_eq!(status, 200);
    let mut again = WsClient::join(addr, "utf8", "broken").await.unwrap();
    again.settle_to(2, T).await.unwrap();
    assert_eq!(again.text(), "kept!");

    server.stop().await.unwrap();
}
