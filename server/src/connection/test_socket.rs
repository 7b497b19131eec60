//! A raw WebSocket client for the server's own end-to-end unit tests (those
//! that need the test hooks of `crate::document::test_hooks`): read frames
//! as JSON, the close code, and the metrics page; every wait bounded.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Bound on every wait.
pub(super) const WAIT: Duration = Duration::from_secs(20);

/// A client's WebSocket.
pub(super) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame as JSON, or the close code (bounded).
pub(super) async fn next(socket: &mut Socket) -> Result<serde_json::Value, Option<u16>> {
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

/// Frames until the close: the text messages as JSON, and the close code.
pub(super) async fn until_close(socket: &mut Socket) -> (Vec<serde_json::Value>, Option<u16>) {
    let mut messages = Vec::new();
    loop {
        match next(socket).await {
            Ok(message) => messages.push(message),
            Err(code) => return (messages, code),
        }
    }
}

/// The next message of type `kind`, with the messages before it.
pub(super) async fn until_type(
    socket: &mut Socket,
    kind: &str,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut before = Vec::new();
    loop {
        let message = next(socket)
            .await
            .unwrap_or_else(|code| panic!("closed ({code:?}) before a {kind}: {before:?}"));
        if message["type"] == kind {
            return (message, before);
        }
        before.push(message);
    }
}

/// The server's `/metrics` page.
pub(super) async fn metrics(addr: std::net::SocketAddr) -> String {
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
