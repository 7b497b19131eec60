//! One WebSocket connection: the upgrade, the join, a reader loop (parse,
//! rate-limit, forward to the document actor) and a writer task draining the
//! connection's bounded outbound queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt, StreamExt};
use ot_core::Component;
use tokio::sync::{mpsc, oneshot};

use crate::document::{
    stored_op_frame, CloseReason, DocCommand, DocHandle, JoinError, JoinRequest, Outbound,
    JOIN_TIMEOUT,
};
use crate::http::api_error;
use crate::state::Shared;
use ot_protocol::{ClientId, ClientMessage, DocId, ErrorCode, ServerMessage};

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
    if DocId::parse(&doc).is_err() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_document_id",
            "a document id is 1 to 128 characters of A-Z a-z 0-9 . _ -",
        );
    }
    let client_id = match params.get("client") {
        Some(id) if ClientId::parse(id).is_ok() => id.clone(),
        Some(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_id",
                "a client id is 1 to 64 characters of A-Z a-z 0-9 _ -",
            )
        }
        None => ClientId::random().into(),
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
        ServerMessage::Error {
            code: code.into(),
            message: message.into(),
            seq,
        }
        .to_text(),
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
    let awaiting = Arc::new(AwaitingReplies::default());
    let mut writer = tokio::spawn(writer(
        shared.clone(),
        doc.to_owned(),
        sink,
        Queues {
            out_rx,
            kick_rx,
            local_close_rx,
        },
        awaiting.clone(),
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
        let command = match ClientMessage::parse(text.as_str()) {
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
                if matches!(command, DocCommand::Op { .. }) {
                    awaiting.op_sent();
                }
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

/// How long the writer may hold other clients' ops and cursors while this
/// client awaits the reply to its own op, so that they go out in the same
/// write as the reply: one send (and one wake-up of the client) instead of
/// several. Bounded, so a reply that is slow or never comes costs a
/// collaborator at most this much delay.
pub const BROADCAST_HOLD: Duration = Duration::from_millis(2);

/// Frames written per flush at most.
const MAX_BATCH: usize = 256;

/// How many of this client's ops the document has not answered yet: the
/// reader counts ops it forwards, the writer counts the replies it writes.
#[derive(Debug, Default)]
struct AwaitingReplies(AtomicUsize);

impl AwaitingReplies {
    /// The reader forwarded an op to the document.
    fn op_sent(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The writer wrote a reply (never below zero: a reply may answer an op the
    /// reader refused itself).
    fn reply_written(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// What the writer reads: the outbound queue and the two ways to be closed.
struct Queues {
    out_rx: mpsc::Receiver<Outbound>,
    kick_rx: oneshot::Receiver<CloseReason>,
    local_close_rx: oneshot::Receiver<CloseReason>,
}

/// A frame's text, if the outbound item is a frame.
fn frame_text(outbound: Outbound) -> Result<Utf8Bytes, Outbound> {
    match outbound {
        Outbound::Text(text) | Outbound::Reply(text) | Outbound::Broadcast(text) => Ok(text),
        other => Err(other),
    }
}

async fn writer(
    shared: Arc<Shared>,
    doc: String,
    mut sink: SplitSink<WebSocket, Message>,
    queues: Queues,
    awaiting: Arc<AwaitingReplies>,
) {
    let Queues {
        mut out_rx,
        mut kick_rx,
        mut local_close_rx,
    } = queues;
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
                    while let Ok(Ok(text)) = out_rx.try_recv().map(frame_text) {
                        if sink.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    break Some(reason);
                }
                Err(_) => local_open = false,
            },
            message = out_rx.recv() => match message {
                Some(first) => {
                    // A catch-up is served on its own, or after the batch it ended.
                    let catch_up_request = match first {
                        request @ Outbound::CatchUp { .. } => Some(request),
                        frame => match write_batch(&mut sink, &mut out_rx, &awaiting, frame).await {
                            Ok(next) => next,
                            Err(()) => return,
                        },
                    };
                    if let Some(Outbound::CatchUp { after, upto }) = catch_up_request {
                        if catch_up(&shared, &doc, &mut sink, after, upto).await.is_err() {
                            break Some(CLOSE_UNAVAILABLE);
                        }
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

/// Write `first` and whatever else is already queued in one flush: under load
/// this turns many small writes into one syscall. If the batch holds only
/// broadcasts while the client awaits a reply, wait up to [`BROADCAST_HOLD`]
/// for the reply to join them. Returns a non-frame item that ended the batch
/// (a catch-up, to run after the flush); `Err` if the socket failed.
async fn write_batch<S: Sink<Message> + Unpin>(
    sink: &mut S,
    out_rx: &mut mpsc::Receiver<Outbound>,
    awaiting: &AwaitingReplies,
    first: Outbound,
) -> Result<Option<Outbound>, ()> {
    let mut batched = 0;
    let mut only_broadcasts = true;
    let mut next = Some(first);
    let mut hold_until = None;
    let mut stopped_by = None;
    while batched < MAX_BATCH {
        let outbound = match next.take() {
            Some(outbound) => outbound,
            None => match out_rx.try_recv() {
                Ok(outbound) => outbound,
                Err(_) => {
                    if !(only_broadcasts && awaiting.any()) {
                        break;
                    }
                    let deadline = *hold_until
                        .get_or_insert_with(|| tokio::time::Instant::now() + BROADCAST_HOLD);
                    match tokio::time::timeout_at(deadline, out_rx.recv()).await {
                        Ok(Some(outbound)) => outbound,
                        // Closed or held long enough: write what there is.
                        Ok(None) | Err(_) => break,
                    }
                }
            },
        };
        match &outbound {
            Outbound::Reply(_) => {
                awaiting.reply_written();
                only_broadcasts = false;
            }
            Outbound::Text(_) => only_broadcasts = false,
            Outbound::Broadcast(_) | Outbound::CatchUp { .. } => {}
        }
        match frame_text(outbound) {
            Ok(text) => {
                sink.feed(Message::Text(text)).await.map_err(|_| ())?;
                batched += 1;
            }
            Err(other) => {
                stopped_by = Some(other);
                break;
            }
        }
    }
    sink.flush().await.map_err(|_| ())?;
    Ok(stopped_by)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A sink that records each flush's frames.
    #[derive(Default)]
    struct Recorder {
        fed: Vec<String>,
        flushes: Vec<Vec<String>>,
    }

    impl Sink<Message> for Recorder {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), ()> {
            match item {
                Message::Text(text) => self.fed.push(text.as_str().to_owned()),
                _ => return Err(()),
            }
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            let fed = std::mem::take(&mut self.fed);
            self.flushes.push(fed);
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn broadcast(text: &str) -> Outbound {
        Outbound::Broadcast(Utf8Bytes::from(text.to_owned()))
    }

    fn awaiting(n: usize) -> AwaitingReplies {
        let awaiting = AwaitingReplies::default();
        for _ in 0..n {
            awaiting.op_sent();
        }
        awaiting
    }

    #[tokio::test(start_paused = true)]
    async fn broadcasts_to_a_client_awaiting_nothing_go_out_at_once() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.try_send(broadcast("b2")).unwrap();
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        let next = write_batch(&mut sink, &mut rx, &awaiting(0), broadcast("b1")).await;
        assert!(matches!(next, Ok(None)));
        assert_eq!(sink.flushes, vec![vec!["b1".to_owned(), "b2".to_owned()]]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn broadcasts_wait_for_the_reply_they_can_share_a_write_with() {
        let (tx, mut rx) = mpsc::channel(8);
        let awaiting = awaiting(1);
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        let reply = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(broadcast("b2")).await.unwrap();
            tx.send(Outbound::Reply(Utf8Bytes::from_static("ack")))
                .await
                .unwrap();
            tx
        });
        let next = write_batch(&mut sink, &mut rx, &awaiting, broadcast("b1")).await;
        assert!(matches!(next, Ok(None)));
        assert_eq!(
            sink.flushes,
            vec![vec!["b1".to_owned(), "b2".to_owned(), "ack".to_owned()]]
        );
        // Sent when the reply came, before the hold ran out.
        assert_eq!(started.elapsed(), Duration::from_millis(1));
        assert!(Duration::from_millis(1) < BROADCAST_HOLD);
        assert!(!awaiting.any(), "the reply was counted");
        drop(reply.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_does_not_come_delays_broadcasts_by_the_hold_at_most() {
        let (_tx, mut rx) = mpsc::channel(8);
        let awaiting = awaiting(1);
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        let next = write_batch(&mut sink, &mut rx, &awaiting, broadcast("b1")).await;
        assert!(matches!(next, Ok(None)));
        assert_eq!(sink.flushes, vec![vec!["b1".to_owned()]]);
        assert_eq!(started.elapsed(), BROADCAST_HOLD);
        assert!(awaiting.any(), "still awaiting its reply");
    }

    #[tokio::test(start_paused = true)]
    async fn replies_and_other_frames_are_not_held_and_a_catch_up_ends_the_batch() {
        let (tx, mut rx) = mpsc::channel(8);
        let awaiting = awaiting(2);
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        // A snapshot-like frame is written at once even while replies are awaited.
        let next = write_batch(
            &mut sink,
            &mut rx,
            &awaiting,
            Outbound::Text(Utf8Bytes::from_static("t")),
        )
        .await;
        assert!(matches!(next, Ok(None)));
        tx.try_send(broadcast("b")).unwrap();
        tx.try_send(Outbound::CatchUp { after: 1, upto: 2 })
            .unwrap();
        tx.try_send(broadcast("later")).unwrap();
        let next = write_batch(
            &mut sink,
            &mut rx,
            &awaiting,
            Outbound::Reply(Utf8Bytes::from_static("ack")),
        )
        .await;
        assert!(matches!(
            next,
            Ok(Some(Outbound::CatchUp { after: 1, upto: 2 }))
        ));
        assert_eq!(
            sink.flushes,
            vec![vec!["t".to_owned()], vec!["ack".to_owned(), "b".to_owned()]]
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        // One reply written of two awaited; a stray extra reply never underflows.
        assert!(awaiting.any());
        awaiting.reply_written();
        awaiting.reply_written();
        assert!(!awaiting.any());
    }
}
