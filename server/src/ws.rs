//! One WebSocket connection: the upgrade, the join, a reader loop (parse,
//! rate-limit, forward to the document actor) and a writer task draining the
//! connection's bounded outbound queue.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use ot_core::Component;
use tokio::sync::{mpsc, oneshot};

use crate::document::{
    stored_op_frame, CloseReason, DocCommand, DocHandle, JoinError, JoinRequest, Outbound,
    JOIN_TIMEOUT,
};
use crate::http::api_error;
use crate::protocol::{
    new_client_id, parse_client_message, valid_client_id, valid_doc_id, ClientMessage, ErrorCode,
    ServerMessage,
};
use crate::state::Shared;

/// Close: the server is shutting down.
const CLOSE_GOING_AWAY: CloseReason = CloseReason {
    code: 1001,
    reason: "server shutting down",
};
/// Close: too many invalid messages in a row.
const CLOSE_ABUSIVE: CloseReason = CloseReason {
    code: 1008,
    reason: "too many invalid messages",
};
/// Close: a message larger than the hard frame limit.
const CLOSE_TOO_BIG: CloseReason = CloseReason {
    code: 1009,
    reason: "message too large",
};
/// Close: the document cannot be served right now.
const CLOSE_UNAVAILABLE: CloseReason = CloseReason {
    code: 1011,
    reason: "document unavailable",
};
/// Close: the document or server is full.
const CLOSE_FULL: CloseReason = CloseReason {
    code: 1013,
    reason: "too many clients on this document",
};

/// `GET /ws/{doc}?client=ID&rev=R&epoch=E`
pub async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    Path(doc): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if !valid_doc_id(&doc) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_document_id",
            "a document id is 1 to 128 characters of A-Z a-z 0-9 . _ -",
        );
    }
    let client_id = match params.get("client") {
        Some(id) if valid_client_id(id) => id.clone(),
        Some(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_id",
                "a client id is 1 to 64 characters of A-Z a-z 0-9 _ -",
            )
        }
        None => new_client_id(),
    };
    #[allow(clippy::result_large_err)] // the error is the HTTP response to send
    let parse_number = |key: &str| -> Result<Option<u64>, Response> {
        match params.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= ot_core::MAX_SAFE_INTEGER)
                .map(Some)
                .ok_or_else(|| {
                    api_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        &format!("`{key}` must be a non-negative integer"),
                    )
                }),
        }
    };
    let rev = match parse_number("rev") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let epoch = match parse_number("epoch") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if shared.shutdown.is_cancelled() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
    }
    if shared.connections.load(Ordering::Relaxed) >= shared.config.max_connections {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server has too many connections",
        );
    }
    let config = &shared.config;
    // Frames larger than our own message limit are still read (up to 4×) so the
    // client gets a typed error and keeps its connection; beyond that the socket closes.
    let hard_limit = config.max_message_bytes.saturating_mul(4);
    let largest_outgoing = config.max_doc_len.saturating_mul(4).saturating_add(1 << 20);
    upgrade
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        // tungstenite zero-fills its whole read buffer before each socket read: a
        // small buffer keeps that cheap (it was 17% of CPU at 64 docs × 4 clients).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(largest_outgoing.max(64 << 20))
        .on_upgrade(move |socket| {
            let tasks = shared.tasks.clone();
            tasks.track_future(connection(shared, socket, doc, client_id, rev, epoch))
        })
}

/// Reading pauses when a connection sends faster than its rate (backpressure).
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
    }

    async fn take(&mut self) {
        self.refill();
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            // Credit the whole time slept: timers round up to whole milliseconds,
            // and dropping the surplus would cap the rate far below the setting.
            self.refill();
            self.tokens = self.tokens.max(1.0);
        }
        self.tokens -= 1.0;
    }
}

async fn close_socket(mut socket: WebSocket, reason: CloseReason) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: reason.code,
            reason: Utf8Bytes::from_static(reason.reason),
        })))
        .await;
}

fn error_frame(shared: &Shared, code: ErrorCode, message: &str, seq: Option<u64>) -> Outbound {
    shared
        .metrics
        .errors
        .with_label_values(&[code.as_str()])
        .inc();
    Outbound::Text(Utf8Bytes::from(
        ServerMessage::Error { code, message, seq }.to_text(),
    ))
}

/// Join the document, retrying if its actor was just unloading.
async fn join(
    shared: &Arc<Shared>,
    doc: &str,
    conn_id: u64,
    client_id: &str,
    rev: Option<u64>,
    epoch: Option<u64>,
    out: &mpsc::Sender<Outbound>,
) -> Result<(DocHandle, oneshot::Receiver<CloseReason>), JoinError> {
    for _ in 0..8 {
        let handle = shared.registry.open(shared, doc);
        let (kick_tx, kick_rx) = oneshot::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = JoinRequest {
            conn_id,
            client_id: client_id.to_owned(),
            rev,
            epoch,
            out: out.clone(),
            kick: kick_tx,
        };
        if handle
            .tx
            .send(DocCommand::Join(request, reply_tx))
            .await
            .is_err()
        {
            continue; // the actor stopped: open again
        }
        match tokio::time::timeout(JOIN_TIMEOUT, reply_rx).await {
            Ok(Ok(Ok(()))) => return Ok((handle, kick_rx)),
            Ok(Ok(Err(JoinError::Retry))) | Ok(Err(_)) => continue,
            Ok(Ok(Err(e))) => return Err(e),
            Err(_) => {
                return Err(JoinError::Unavailable(
                    "the document did not answer in time".into(),
                ))
            }
        }
    }
    Err(JoinError::Unavailable(
        "the document kept unloading".to_owned(),
    ))
}

async fn connection(
    shared: Arc<Shared>,
    mut socket: WebSocket,
    doc: String,
    client_id: String,
    rev: Option<u64>,
    epoch: Option<u64>,
) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections.inc();
    let conn_id = shared.next_conn_id();
    let (out_tx, out_rx) = mpsc::channel(shared.config.outbound_queue.max(16));
    match join(&shared, &doc, conn_id, &client_id, rev, epoch, &out_tx).await {
        Ok((handle, kick_rx)) => {
            tracing::debug!(%doc, client = %client_id, conn_id, "joined");
            run_connection(
                &shared, socket, &doc, conn_id, handle, out_tx, out_rx, kick_rx,
            )
            .await;
        }
        Err(e) => {
            let (code, message, reason) = match &e {
                JoinError::TooManyClients => (
                    ErrorCode::TooManyClients,
                    "the document has too many clients".to_owned(),
                    CLOSE_FULL,
                ),
                JoinError::ShuttingDown => (
                    ErrorCode::ShuttingDown,
                    "the server is shutting down".to_owned(),
                    CLOSE_GOING_AWAY,
                ),
                JoinError::Unavailable(why) => (
                    ErrorCode::StorageError,
                    format!("the document could not be opened: {why}"),
                    CLOSE_UNAVAILABLE,
                ),
                JoinError::Retry => (
                    ErrorCode::StorageError,
                    "the document could not be opened; retry".to_owned(),
                    CLOSE_UNAVAILABLE,
                ),
            };
            if let Outbound::Text(frame) = error_frame(&shared, code, &message, None) {
                let _ = socket.send(Message::Text(frame)).await;
            }
            close_socket(socket, reason).await;
        }
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.connections.dec();
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    shared: &Arc<Shared>,
    socket: WebSocket,
    doc: &str,
    conn_id: u64,
    handle: DocHandle,
    out_tx: mpsc::Sender<Outbound>,
    out_rx: mpsc::Receiver<Outbound>,
    kick_rx: oneshot::Receiver<CloseReason>,
) {
    let (sink, mut stream) = socket.split();
    let (local_close_tx, local_close_rx) = oneshot::channel::<CloseReason>();
    let mut writer = tokio::spawn(writer(
        shared.clone(),
        doc.to_owned(),
        sink,
        out_rx,
        kick_rx,
        local_close_rx,
    ));
    let mut local_close = Some(local_close_tx);
    let mut close_with = |reason: CloseReason| {
        if let Some(tx) = local_close.take() {
            let _ = tx.send(reason);
        }
    };
    let config = &shared.config;
    let mut bucket = TokenBucket::new(config.ops_per_sec, config.ops_burst);
    let mut consecutive_errors = 0u32;
    let reply = |outbound: Outbound| {
        // An error that cannot even be queued means the client is not reading: the
        // actor's overflow handling closes it.
        let _ = out_tx.try_send(outbound);
    };
    loop {
        let frame = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = &mut writer => break,
            frame = stream.next() => frame,
        };
        let text = match frame {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                reply(error_frame(
                    shared,
                    ErrorCode::BinaryFrame,
                    "binary frames are not accepted; send JSON text frames",
                    None,
                ));
                consecutive_errors += 1;
                if consecutive_errors > config.max_errors {
                    close_with(CLOSE_ABUSIVE);
                    break;
                }
                continue;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Err(e)) => {
                tracing::debug!(doc, conn_id, error = %e, "read error");
                if is_capacity_error(&e) {
                    reply(error_frame(
                        shared,
                        ErrorCode::MessageTooLarge,
                        "the message exceeds the hard size limit; closing",
                        None,
                    ));
                    close_with(CLOSE_TOO_BIG);
                }
                break;
            }
        };
        bucket.take().await;
        if text.len() > config.max_message_bytes {
            reply(error_frame(
                shared,
                ErrorCode::MessageTooLarge,
                &format!(
                    "the message is {} bytes; the limit is {}",
                    text.len(),
                    config.max_message_bytes
                ),
                None,
            ));
            consecutive_errors += 1;
            if consecutive_errors > config.max_errors {
                close_with(CLOSE_ABUSIVE);
                break;
            }
            continue;
        }
        let command = match parse_client_message(text.as_str()) {
            Ok(ClientMessage::Op {
                rev,
                seq,
                op,
                ranges,
            }) => {
                let size = change_size(&op);
                if size > config.max_op_len {
                    Err((
                        ErrorCode::OpTooLong,
                        format!(
                            "the op inserts and deletes {size} characters; the limit is {}",
                            config.max_op_len
                        ),
                        Some(seq),
                    ))
                } else {
                    Ok(DocCommand::Op {
                        conn_id,
                        seq,
                        base_rev: rev,
                        op,
                        ranges,
                        received_at: Instant::now(),
                    })
                }
            }
            Ok(ClientMessage::Cursor { rev, ranges, name }) => Ok(DocCommand::Cursor {
                conn_id,
                rev,
                ranges,
                name,
            }),
            Err(rejection) => Err((rejection.code, rejection.message, rejection.seq)),
        };
        match command {
            Ok(command) => {
                consecutive_errors = 0;
                if handle.tx.send(command).await.is_err() {
                    break;
                }
            }
            Err((code, message, seq)) => {
                reply(error_frame(shared, code, &message, seq));
                consecutive_errors += 1;
                if consecutive_errors > config.max_errors {
                    close_with(CLOSE_ABUSIVE);
                    break;
                }
            }
        }
    }
    if !shared.shutdown.is_cancelled() {
        let _ = handle.tx.send(DocCommand::Leave { conn_id }).await;
    }
    // On shutdown the connection stays registered with its document until the
    // document has committed and acked everything in flight; then it drops the
    // connection and the writer closes the socket with 1001.
    drop(out_tx);
    if !writer.is_finished() {
        // The writer drains what is queued and closes; bounded in time.
        if tokio::time::timeout(Duration::from_secs(30), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

fn is_capacity_error(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("Capacity")
}

/// Characters an op inserts plus deletes.
fn change_size(op: &ot_core::Operation) -> usize {
    op.components()
        .iter()
        .map(|c| match c {
            Component::Retain(_) => 0,
            Component::Insert(s) => s.chars().count(),
            Component::Delete(n) => *n,
        })
        .sum()
}

async fn writer(
    shared: Arc<Shared>,
    doc: String,
    mut sink: SplitSink<WebSocket, Message>,
    mut out_rx: mpsc::Receiver<Outbound>,
    mut kick_rx: oneshot::Receiver<CloseReason>,
    mut local_close_rx: oneshot::Receiver<CloseReason>,
) {
    let mut kick_open = true;
    let mut local_open = true;
    let close = loop {
        tokio::select! {
            biased;
            reason = &mut kick_rx, if kick_open => match reason {
                Ok(reason) => break Some(reason),
                Err(_) => kick_open = false, // removed without a kick: drain, then close
            },
            reason = &mut local_close_rx, if local_open => match reason {
                Ok(reason) => {
                    // Flush what is queued (e.g. the error that explains the close) first.
                    while let Ok(Outbound::Text(text)) = out_rx.try_recv() {
                        if sink.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    break Some(reason);
                }
                Err(_) => local_open = false,
            },
            message = out_rx.recv() => match message {
                Some(Outbound::Text(text)) => {
                    // Batch whatever else is already queued into one flush: under
                    // load this turns many small writes into one syscall.
                    if sink.feed(Message::Text(text)).await.is_err() {
                        return;
                    }
                    let mut batched = 1;
                    let mut catch_up_next = None;
                    while batched < 256 {
                        match out_rx.try_recv() {
                            Ok(Outbound::Text(text)) => {
                                if sink.feed(Message::Text(text)).await.is_err() {
                                    return;
                                }
                                batched += 1;
                            }
                            Ok(other) => {
                                catch_up_next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                    if let Some(Outbound::CatchUp { after, upto }) = catch_up_next {
                        if catch_up(&shared, &doc, &mut sink, after, upto).await.is_err() {
                            break Some(CLOSE_UNAVAILABLE);
                        }
                    }
                }
                Some(Outbound::CatchUp { after, upto }) => {
                    if catch_up(&shared, &doc, &mut sink, after, upto).await.is_err() {
                        break Some(CLOSE_UNAVAILABLE);
                    }
                }
                None => break if shared.shutdown.is_cancelled() { Some(CLOSE_GOING_AWAY) } else { None },
            },
        }
    };
    let frame = close.map(|reason| CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from_static(reason.reason),
    });
    let _ = sink.send(Message::Close(frame)).await;
    let _ = sink.close().await;
}

/// Send ops `after+1 ..= upto` from storage.
async fn catch_up(
    shared: &Arc<Shared>,
    doc: &str,
    sink: &mut SplitSink<WebSocket, Message>,
    after: u64,
    upto: u64,
) -> Result<(), ()> {
    let mut next = after;
    while next < upto {
        let storage = shared.storage.clone();
        let doc_id = doc.to_owned();
        let limit = (upto - next).min(512) as usize;
        let from = next;
        let ops = tokio::task::spawn_blocking(move || storage.ops(&doc_id, from, limit))
            .await
            .map_err(|_| ())?
            .map_err(|e| tracing::error!(doc, error = %e, "catch-up read failed"))?;
        if ops.is_empty() {
            tracing::error!(doc, after = next, upto, "catch-up found no ops");
            return Err(());
        }
        for op in ops {
            if op.rev != next + 1 || op.rev > upto {
                return Err(());
            }
            sink.send(Message::Text(stored_op_frame(&op)))
                .await
                .map_err(|_| ())?;
            next = op.rev;
        }
    }
    Ok(())
}
