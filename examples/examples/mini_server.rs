//! A server of your own on ot-core's sans-I/O document history: one
//! document, in memory, speaking enough of PROTOCOL.md (snapshot, resume,
//! op/ack/broadcast, the error frames, ping) for the project's own clients
//! (the driver, the `bot` and `plugin` examples, `ot-client edit` and
//! `append`; not the commands that read the HTTP API) to edit against it.
//!
//! ```text
//! cargo run -p examples --example mini_server -- --addr 127.0.0.1:8090 --doc notes
//! cargo run -p examples --example bot -- --server ws://127.0.0.1:8090 --doc notes
//! ```
//!
//! What it shows: all of the OT is `DocumentHistory::receive` (dedup, the
//! transform past every op the sender had not seen, apply); the rest is
//! moving frames. What the real server adds is left out on purpose: storage
//! (here an ack means "in memory", and a restart is a new history, so it
//! announces a new epoch and clients resync), limits on queues and
//! connections, presence, writer keys and authentication, the HTTP API.
// tungstenite's handshake callback returns its `ErrorResponse` (an HTTP
// response) by value: that signature is not ours to change.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use ot_core::history::{DocumentHistory, Receipt};
use ot_core::OpLimits;
use ot_protocol::{Access, ClientId, ClientMessage, Code, DocId, ErrorCode, Limits, ServerMessage};
use std::borrow::Cow;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "mini_server",
    about = "A one-document, in-memory OT server on ot-core"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    /// The one document this server holds.
    #[arg(long, default_value = "notes")]
    doc: String,
}

/// The document: its history and who is connected. Guarded by a plain mutex
/// that is never held across an `.await`: every frame a connection gets is
/// queued under it, so each connection sees the ops in revision order.
struct Doc {
    id: DocId,
    history: DocumentHistory,
    /// This process's epoch: a new one per start, since nothing survives it.
    epoch: u64,
    limits: Limits,
    connections: HashMap<u64, Connection>,
    next_connection: u64,
}

/// One open connection: its client id and its outbound queue.
struct Connection {
    client: String,
    /// Unbounded for brevity; the real server bounds it and closes a client
    /// that does not keep up (4008).
    outbound: mpsc::UnboundedSender<String>,
}

type Shared = Arc<Mutex<Doc>>;

fn lock(doc: &Shared) -> MutexGuard<'_, Doc> {
    // A panic while holding the lock leaves a consistent history (every
    // change is one `receive`), so a poisoned lock is still usable.
    doc.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the upgrade request asked for (`GET /ws/{doc}?client=…&rev=…&epoch=…`).
#[derive(Debug, Default)]
struct JoinRequest {
    client: Option<String>,
    rev: Option<u64>,
    epoch: Option<u64>,
}

/// Read the upgrade request's path and query; refuse anything else with an
/// HTTP error before the upgrade, as PROTOCOL.md says.
fn read_join(request: &Request, doc: &DocId) -> Result<JoinRequest, ErrorResponse> {
    let refuse = |status: StatusCode, code: &str, message: &str| {
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        let mut response = ErrorResponse::new(Some(body));
        *response.status_mut() = status;
        response
    };
    let path = request.uri().path();
    if path != format!("/ws/{doc}") {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "this server holds one document",
        ));
    }
    let mut join = JoinRequest::default();
    for pair in request.uri().query().unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "rev and epoch are numbers",
                )
            })
        };
        match key {
            "client" => {
                let id = ClientId::parse(value).map_err(|_| {
                    refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_client_id",
                        "bad client id",
                    )
                })?;
                join.client = Some(id.as_str().to_owned());
            }
            "rev" => join.rev = Some(number()?),
            "epoch" => join.epoch = Some(number()?),
            _ => {}
        }
    }
    Ok(join)
}

/// Register a connection and queue its first message: a resume (with the
/// ops it missed) when the client's revision and epoch can be served, else a
/// snapshot.
fn join(
    doc: &mut Doc,
    client: &str,
    request: &JoinRequest,
) -> (u64, mpsc::UnboundedReceiver<String>) {
    let (outbound, receiver) = mpsc::unbounded_channel();
    let seq = doc.history.last_seq(client);
    let same_epoch = request.epoch.is_none_or(|epoch| epoch == doc.epoch);
    let missed = request
        .rev
        .filter(|_| same_epoch)
        .and_then(|rev| Some((rev, doc.history.ops_since(rev)?)));
    match missed {
        Some((rev, ops)) => {
            let first = ServerMessage::Resume {
                rev,
                head: doc.history.revision(),
                client: Cow::Borrowed(client),
                seq,
                epoch: doc.epoch,
                limits: doc.limits,
                access: Access::Write,
                last_hash: None,
            };
            let _ = outbound.send(first.to_text());
            for applied in ops {
                let op = ServerMessage::Op {
                    rev: applied.rev,
                    op: Cow::Borrowed(&applied.op),
                    client: Cow::Borrowed(&applied.client_id),
                    seq: applied.seq,
                };
                let _ = outbound.send(op.to_text());
            }
        }
        None => {
            let first = ServerMessage::Snapshot {
                rev: doc.history.revision(),
                text: Cow::Owned(doc.history.text().to_string()),
                client: Cow::Borrowed(client),
                seq,
                epoch: doc.epoch,
                limits: doc.limits,
                access: Access::Write,
                last_hash: None,
            };
            let _ = outbound.send(first.to_text());
        }
    }
    let id = doc.next_connection;
    doc.next_connection += 1;
    doc.connections.insert(
        id,
        Connection {
            client: client.to_owned(),
            outbound,
        },
    );
    (id, receiver)
}

/// An error frame about an op (`seq`) or about a message (`None`).
fn error_frame(code: Code, message: &str, seq: Option<u64>) -> String {
    ServerMessage::Error {
        code,
        message: Cow::Borrowed(message),
        seq,
    }
    .to_text()
}

/// Handle one text frame of connection `id`: every answer is queued under the lock.
fn on_frame(doc: &mut Doc, id: u64, text: &str) {
    let Some(sender) = doc.connections.get(&id) else {
        return;
    };
    let client = sender.client.clone();
    let reply = sender.outbound.clone();
    let message = match ClientMessage::parse(text) {
        Ok(message) => message,
        Err(rejection) => {
            let frame = error_frame(rejection.code.into(), &rejection.message, rejection.seq);
            let _ = reply.send(frame);
            return;
        }
    };
    match message {
        ClientMessage::Op { rev, seq, op, .. } => {
            let limits = OpLimits {
                max_op_len: doc.limits.max_op_len,
                max_op_components: doc.limits.max_op_components,
            };
            if !op.fits(limits) {
                let frame = error_frame(
                    ErrorCode::OpTooLong.into(),
                    "the op is too large",
                    Some(seq),
                );
                let _ = reply.send(frame);
                return;
            }
            // The whole of OT on the server side: dedup, transform, apply.
            match doc.history.receive(&client, seq, rev, op) {
                Ok(Receipt::Applied { applied, .. }) => {
                    let ack = ServerMessage::Ack {
                        rev: applied.rev,
                        seq,
                    };
                    let _ = reply.send(ack.to_text());
                    let broadcast = ServerMessage::Op {
                        rev: applied.rev,
                        op: Cow::Borrowed(&applied.op),
                        client: Cow::Borrowed(&client),
                        seq,
                    }
                    .to_text();
                    for (other, connection) in &doc.connections {
                        if *other != id {
                            let _ = connection.outbound.send(broadcast.clone());
                        }
                    }
                }
                // A resend of an op already applied: the original's ack. The
                // revision is known since every op stays in memory here (the
                // real server looks older ones up in storage).
                Ok(Receipt::Duplicate {
                    seq,
                    rev: Some(rev),
                }) => {
                    let _ = reply.send(ServerMessage::Ack { rev, seq }.to_text());
                }
                Ok(Receipt::Duplicate { rev: None, .. }) => {
                    eprintln!("{client}: a resend older than the history (never trimmed here)");
                }
                Err(refused) => {
                    let code = ErrorCode::from_name(refused.code())
                        .map(Code::from)
                        .unwrap_or_else(|| Code::Unknown(refused.code().to_owned()));
                    let _ = reply.send(error_frame(code, &refused.to_string(), Some(seq)));
                }
            }
        }
        ClientMessage::Ping => {
            let _ = reply.send(ServerMessage::Pong.to_text());
        }
        // Presence is left out: cursors are accepted and forgotten.
        ClientMessage::Cursor { .. } => {}
    }
}

/// One connection: the upgrade, the first message, then frames both ways.
async fn serve(doc: Shared, stream: TcpStream) -> Result<()> {
    let doc_id = lock(&doc).id.clone();
    let mut asked = None;
    let socket =
        tokio_tungstenite::accept_hdr_async(stream, |request: &Request, response: Response| {
            asked = Some(read_join(request, &doc_id)?);
            Ok(response)
        })
        .await
        .context("upgrading to WebSocket")?;
    let asked = asked.unwrap_or_default();
    let client = asked
        .client
        .clone()
        .unwrap_or_else(|| ClientId::random().as_str().to_owned());
    let (id, mut outbound) = join(&mut lock(&doc), &client, &asked);

    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(text) = outbound.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => on_frame(&mut lock(&doc), id, text.as_str()),
            Ok(Message::Binary(_)) => {
                let frame = error_frame(ErrorCode::BinaryFrame.into(), "text frames only", None);
                if let Some(connection) = lock(&doc).connections.get(&id) {
                    let _ = connection.outbound.send(frame);
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Dropping the connection's sender ends its writer.
    lock(&doc).connections.remove(&id);
    let _ = writer.await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let id = DocId::parse(&args.doc).context("reading --doc")?;
    // Any number that differs between starts (at most 2^53−1, as the protocol says).
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 & ot_core::MAX_SAFE_INTEGER)
        .unwrap_or(1);
    let doc: Shared = Arc::new(Mutex::new(Doc {
        id,
        history: DocumentHistory::new(),
        epoch,
        limits: Limits::default(),
        connections: HashMap::new(),
        next_connection: 0,
    }));
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let bound = listener.local_addr()?;
    println!("listening on ws://{bound}/ws/{}", args.doc);
    loop {
        let (stream, peer) = listener.accept().await.context("accepting")?;
        let doc = doc.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(doc, stream).await {
                eprintln!("{peer}: {e:#}");
            }
        });
    }
}
