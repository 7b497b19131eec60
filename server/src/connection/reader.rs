//! A joined connection's reader: it starts the writer, then reads frames
//! (size check, token-bucket rate limit = backpressure, parse, `max_op_len`)
//! and forwards them to the document's actor; errors go back on the
//! connection's queue, and too many in a row close it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use ot_protocol::{Access, ClientMessage, CloseCode, DocId, ErrorCode, ServerMessage};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::batching::Framing;
use super::liveness::Liveness;
use super::names::display_name;
use super::writer::{self, AwaitingReplies, Queues};
use crate::app::Shared;
use crate::document::{DocCommand, DocHandle, IncomingOp};
use crate::outbound::{error_frame, text_frame, Outbound};
use crate::outbound_queue::{OutboundRx, OutboundTx};

/// Cursor messages forwarded per connection at most once per this interval
/// (20 a second); a newer cursor replaces one still waiting, so a client
/// that sends selections as fast as it can costs the document 20 cursor
/// mappings a second, and the others see its latest selection.
pub(crate) const CURSOR_INTERVAL: Duration = Duration::from_millis(50);

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

/// How a socket read failed, as far as the client is told.
enum ReadFailure {
    /// A text frame that is not valid UTF-8: close with 1007.
    InvalidUtf8,
    /// A message beyond the hard size limit: an error, then close with 1009.
    TooBig,
    /// Anything else (the connection broke): just stop.
    Other,
}

impl ReadFailure {
    fn of(error: axum::Error) -> ReadFailure {
        // axum wraps the socket's own error (tungstenite's, of the version axum uses).
        match error.into_inner().downcast::<tungstenite::Error>() {
            Ok(e) => match *e {
                tungstenite::Error::Utf8(_) => ReadFailure::InvalidUtf8,
                tungstenite::Error::Capacity(_) => ReadFailure::TooBig,
                _ => ReadFailure::Other,
            },
            Err(_) => ReadFailure::Other,
        }
    }
}

/// Characters an op inserts plus deletes.
/// Rejected frames in a row: more than `max_errors` close the connection (1008).
struct Strikes {
    count: u32,
    max: u32,
}

impl Strikes {
    /// Count one rejected frame; true when it is one too many.
    fn strike(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count > self.max
    }

    /// An accepted frame ends the run.
    fn clear(&mut self) {
        self.count = 0;
    }
}

/// A joined connection as the reader sees it.
pub(super) struct Conn<'a> {
    pub(super) doc: &'a DocId,
    pub(super) conn_id: u64,
    /// What it may do: below `write`, every op is refused with `forbidden`.
    pub(super) access: Access,
    /// The token's display name (authentication on): it replaces any name
    /// the client puts in its cursor.
    pub(super) name: Option<String>,
    /// Cancelled when its token expires or is revoked: closed with 4001.
    pub(super) ends: CancellationToken,
    /// One message per frame, or batches.
    pub(super) framing: Framing,
    /// A regional server's link (client id `r-…`): the only kind of
    /// connection whose ops may carry an `origin`.
    pub(super) link: bool,
}

/// Serve a joined connection until it ends: start its writer, read and
/// forward frames, then leave the document and let the writer finish.
pub(super) async fn run(
    shared: &Arc<Shared>,
    socket: WebSocket,
    conn: Conn<'_>,
    handle: DocHandle,
    (out_tx, out_rx): (OutboundTx, OutboundRx),
    kick_rx: oneshot::Receiver<CloseCode>,
) {
    let Conn {
        doc,
        conn_id,
        access,
        name: token_name,
        ends,
        framing,
        link,
    } = conn;
    let (sink, mut stream) = socket.split();
    let (local_close_tx, local_close_rx) = oneshot::channel::<CloseCode>();
    let awaiting = Arc::new(AwaitingReplies::default());
    let mut writer = tokio::spawn(writer::run(
        shared.clone(),
        doc.clone(),
        sink,
        Queues {
            out_rx,
            kick_rx,
            local_close_rx,
        },
        awaiting.clone(),
        framing,
    ));
    let mut local_close = Some(local_close_tx);
    let mut close_with = |code: CloseCode| {
        if let Some(tx) = local_close.take() {
            let _ = tx.send(code);
        }
    };
    let config = &shared.config;
    let mut bucket = TokenBucket::new(config.ops_per_sec, config.ops_burst);
    let mut strikes = Strikes {
        count: 0,
        max: config.max_errors,
    };
    // Errors the reader finds itself are plain text frames: they answer no
    // forwarded op, so the writer's hold does not count them as replies.
    let reply = |code: ErrorCode, message: &str, seq: Option<u64>| {
        // An error that cannot even be queued means the client is not reading: the
        // actor's overflow handling closes it.
        let frame = error_frame(&shared.metrics, code, message, seq);
        let _ = out_tx.try_send(Outbound::Text(frame));
    };
    // Liveness: the writer pings every `ping_secs`; a peer from which nothing
    // (a pong or any frame) arrived for a ping interval plus the pong timeout
    // left a ping unanswered that long, and is closed as dead.
    let mut liveness = Liveness::new(config.liveness_limit());
    // Made once, not per frame: each registers with a shared list on its
    // first poll (the server's shutdown token is shared by every connection).
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(shutdown);
    let expired = ends.cancelled();
    tokio::pin!(expired);
    let actor_gone = handle.tx.closed();
    tokio::pin!(actor_gone);
    // Presence coalescing: the newest cursor not yet forwarded, and when the
    // next one may go.
    let mut held_cursor: Option<DocCommand> = None;
    let mut next_cursor_at = tokio::time::Instant::now();
    loop {
        let frame = tokio::select! {
            () = tokio::time::sleep_until(next_cursor_at), if held_cursor.is_some() => {
                if let Some(cursor) = held_cursor.take() {
                    next_cursor_at = tokio::time::Instant::now() + CURSOR_INTERVAL;
                    if handle.tx.send(cursor).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            () = &mut shutdown => break,
            () = &mut expired => {
                close_with(CloseCode::TokenExpired);
                break;
            }
            _ = &mut writer => break,
            // The document's actor stopped while this connection is in it:
            // it failed (a task that panicked). The client reconnects, and
            // the next join starts a new actor that loads from storage.
            // On shutdown the actor stops once everything is acked: that is
            // the server going away (1001, from the writer), not a failure.
            () = &mut actor_gone => {
                if !shared.shutdown.is_cancelled() {
                    tracing::warn!(%doc, conn_id, "the document's actor is gone; closing its connection");
                    close_with(CloseCode::Unavailable);
                }
                break;
            }
            () = liveness.silent() => {
                tracing::info!(%doc, conn_id, "closing a connection that answered no ping");
                shared.metrics.refused.with_label_values(&["dead_peer"]).inc();
                close_with(CloseCode::TooSlow);
                break;
            }
            frame = stream.next() => frame,
        };
        liveness.heard();
        let text = match frame {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                reply(
                    ErrorCode::BinaryFrame,
                    "binary frames are not accepted; send JSON text frames",
                    None,
                );
                if strikes.strike() {
                    close_with(CloseCode::Abusive);
                    break;
                }
                continue;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Err(e)) => {
                tracing::debug!(%doc, conn_id, error = %e, "read error");
                match ReadFailure::of(e) {
                    ReadFailure::InvalidUtf8 => close_with(CloseCode::InvalidUtf8),
                    ReadFailure::TooBig => {
                        reply(
                            ErrorCode::MessageTooLarge,
                            "the message exceeds the hard size limit; closing",
                            None,
                        );
                        close_with(CloseCode::TooBig);
                    }
                    ReadFailure::Other => {}
                }
                break;
            }
        };
        bucket.take().await;
        if text.len() > config.max_message_bytes {
            reply(
                ErrorCode::MessageTooLarge,
                &format!(
                    "the message is {} bytes; the limit is {}",
                    text.len(),
                    config.max_message_bytes
                ),
                None,
            );
            if strikes.strike() {
                close_with(CloseCode::Abusive);
                break;
            }
            continue;
        }
        let command = match ClientMessage::parse(text.as_str()) {
            Ok(ClientMessage::Op { seq, .. }) if !access.can_write() => Err((
                ErrorCode::Forbidden,
                "this connection is read-only: its token gives read access only".to_owned(),
                Some(seq),
            )),
            Ok(ClientMessage::Op { seq, origin, .. }) if origin.is_some() && !link => Err((
                ErrorCode::InvalidMessage,
                "only a regional server's link (client id r-…) may attach an origin".to_owned(),
                Some(seq),
            )),
            Ok(ClientMessage::Op {
                rev,
                seq,
                op,
                ranges,
                origin,
            }) => {
                let size = op.change_size();
                let components = op.components().len();
                if components > config.max_op_components {
                    Err((
                        ErrorCode::TooManyComponents,
                        format!(
                            "the op has {components} components; the limit is {}: split it into several ops",
                            config.max_op_components
                        ),
                        Some(seq),
                    ))
                } else if size > config.max_op_len {
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
                        op: IncomingOp {
                            seq,
                            base_rev: rev,
                            op,
                            ranges,
                            origin,
                            received_at: Instant::now(),
                        },
                    })
                }
            }
            Ok(ClientMessage::Cursor { rev, ranges, name }) => Ok(DocCommand::Cursor {
                conn_id,
                rev,
                ranges,
                // With a token its name is shown, whatever the client says.
                name: match &token_name {
                    Some(token_name) => Some(display_name(token_name)),
                    None => name.map(|n| display_name(&n)),
                },
            }),
            Ok(ClientMessage::Ping) => {
                strikes.clear();
                let _ = out_tx.try_send(Outbound::Text(text_frame(&ServerMessage::Pong)));
                continue;
            }
            Err(rejection) => Err((rejection.code, rejection.message, rejection.seq)),
        };
        match command {
            Ok(cursor @ DocCommand::Cursor { .. }) => {
                strikes.clear();
                let now = tokio::time::Instant::now();
                if held_cursor.is_none() && now >= next_cursor_at {
                    next_cursor_at = now + CURSOR_INTERVAL;
                    if handle.tx.send(cursor).await.is_err() {
                        break;
                    }
                } else {
                    // Replaces an older one still waiting: only the latest matters.
                    held_cursor = Some(cursor);
                }
            }
            Ok(command) => {
                strikes.clear();
                // A held cursor goes first, so the document sees this
                // connection's messages in the order they were sent.
                if let Some(cursor) = held_cursor.take() {
                    next_cursor_at = tokio::time::Instant::now() + CURSOR_INTERVAL;
                    if handle.tx.send(cursor).await.is_err() {
                        break;
                    }
                }
                if matches!(command, DocCommand::Op { .. }) {
                    awaiting.op_sent();
                }
                if handle.tx.send(command).await.is_err() {
                    break;
                }
            }
            Err((code, message, seq)) => {
                reply(code, &message, seq);
                if strikes.strike() {
                    close_with(CloseCode::Abusive);
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
