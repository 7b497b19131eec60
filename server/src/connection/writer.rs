//! A connection's writer: drains the bounded outbound queue onto the socket,
//! one flush per batch, holding broadcasts briefly for an awaited reply;
//! serves catch-ups from storage; sends the close frame.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt};
use ot_protocol::{CloseCode, DocId};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;

use super::batching::{Batcher, Framing};
use crate::app::Shared;
use crate::outbound::{close_frame, stored_op_frame, Outbound};
use crate::outbound_queue::OutboundRx;
use crate::pages::read_page;

/// How long the writer may hold other clients' ops and cursors: while this
/// client awaits the reply to its own op, so that they go out in the same
/// write as the reply; and after a write, so that a busy document costs each
/// connection one write per hold rather than one per op (the send path, the
/// client's wake-up and its frame parsing are paid per write). Bounded, so a
/// reply that is slow or never comes costs a collaborator at most this much
/// delay; a connection that has not been written to for this long gets its
/// first broadcast at once.
pub(crate) const BROADCAST_HOLD: Duration = Duration::from_millis(2);

/// Frames written per flush at most.
const MAX_BATCH: usize = 256;

/// The slowest link the write deadline allows for a large frame: a write of
/// `n` bytes may take `--write-timeout-secs` plus `n` / this rate, so a big
/// snapshot to a slow but working client is not taken for a stalled one.
const MIN_WRITE_RATE: f64 = 64.0 * 1024.0;

/// The deadline of a write of `bytes` bytes.
fn write_deadline(write_timeout: Duration, bytes: usize) -> Duration {
    write_timeout + Duration::from_secs_f64(bytes as f64 / MIN_WRITE_RATE)
}

/// How many of this client's ops the document has not answered yet: the
/// reader counts ops it forwards, the writer counts the replies it writes.
#[derive(Debug, Default)]
pub(super) struct AwaitingReplies(AtomicUsize);

impl AwaitingReplies {
    /// The reader forwarded an op to the document.
    pub(super) fn op_sent(&self) {
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

/// When the writer may write broadcasts (see [`BROADCAST_HOLD`]).
pub(super) struct Pacing<'a> {
    awaiting: &'a AwaitingReplies,
    /// When the last write ended.
    last_flush: Option<tokio::time::Instant>,
}

impl<'a> Pacing<'a> {
    pub(super) fn new(awaiting: &'a AwaitingReplies) -> Pacing<'a> {
        Pacing {
            awaiting,
            last_flush: None,
        }
    }

    /// Until when a batch of only broadcasts may wait for more, from `now`:
    /// the hold while a reply is awaited (it will carry them), else until the
    /// hold has passed since the last write; `None`: write now.
    fn hold_until(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if self.awaiting.any() {
            return Some(now + BROADCAST_HOLD);
        }
        let until = self.last_flush? + BROADCAST_HOLD;
        (until > now).then_some(until)
    }
}

/// What the writer reads: the outbound queue and the two ways to be closed.
pub(super) struct Queues {
    pub(super) out_rx: OutboundRx,
    /// Fired by the document.
    pub(super) kick_rx: oneshot::Receiver<CloseCode>,
    /// Fired by the reader.
    pub(super) local_close_rx: oneshot::Receiver<CloseCode>,
}

/// Write until the queue closes or the connection is closed, then send the
/// close frame. Pings the peer every `--ping-secs` (the reader closes a peer
/// that stays silent); a write that takes longer than `--write-timeout-secs`
/// ends the connection with 4008, so a client that stops reading its socket
/// holds neither the queue's memory nor a document for longer than that.
pub(super) async fn run(
    shared: Arc<Shared>,
    doc: DocId,
    mut sink: SplitSink<WebSocket, Message>,
    queues: Queues,
    awaiting: Arc<AwaitingReplies>,
    framing: Framing,
) {
    let Queues {
        mut out_rx,
        mut kick_rx,
        mut local_close_rx,
    } = queues;
    let write_timeout = shared.config.write_timeout();
    let ping_every = shared.config.ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kick_open = true;
    let mut local_open = true;
    let mut pacing = Pacing::new(&awaiting);
    let close = loop {
        let wrote: Result<(), Stuck> = tokio::select! {
            biased;
            reason = &mut kick_rx, if kick_open => match reason {
                Ok(reason) => break Some(reason),
                Err(_) => { kick_open = false; Ok(()) } // removed without a kick: drain, then close
            },
            reason = &mut local_close_rx, if local_open => match reason {
                Ok(reason) => {
                    // Flush what is queued (e.g. the error that explains the close) first.
                    let flushed = within(write_timeout, async {
                        while let Ok(Ok(text)) = out_rx.try_recv().map(Outbound::into_text) {
                            sink.send(Message::Text(text)).await.map_err(|_| ())?;
                        }
                        Ok::<(), ()>(())
                    }).await;
                    match flushed {
                        Ok(()) => break Some(reason),
                        Err(stuck) => Err(stuck),
                    }
                }
                Err(_) => { local_open = false; Ok(()) }
            },
            _ = ping.tick() => {
                within(write_timeout, sink.send(Message::Ping(Default::default()))).await
            }
            message = out_rx.recv() => match message {
                Some(first) => {
                    // A catch-up is served on its own, or after the batch it ended.
                    let catch_up_request = match first {
                        request @ Outbound::CatchUp { .. } => Ok(Some(request)),
                        frame => write_batch(&mut sink, &mut out_rx, &mut pacing, frame, write_timeout, framing).await,
                    };
                    match catch_up_request {
                        Ok(Some(Outbound::CatchUp { after, upto })) => {
                            match catch_up(&shared, &doc, &mut sink, after, upto, write_timeout).await {
                                Ok(()) => Ok(()),
                                Err(CatchUpFailed::Stuck) => Err(Stuck::TimedOut),
                                Err(CatchUpFailed::Storage) => break Some(CloseCode::Unavailable),
                            }
                        }
                        Ok(_) => Ok(()),
                        Err(stuck) => Err(stuck),
                    }
                }
                None => break if shared.shutdown.is_cancelled() { Some(CloseCode::GoingAway) } else { None },
            },
        };
        match wrote {
            Ok(()) => {}
            Err(Stuck::Broken) => return,
            Err(Stuck::TimedOut) => {
                tracing::info!(%doc, "closing a connection whose writes stalled");
                shared
                    .metrics
                    .refused
                    .with_label_values(&["write_timeout"])
                    .inc();
                break Some(CloseCode::TooSlow);
            }
        }
    };
    // The close frame may not fit a stalled socket either: bounded, then dropped.
    let _ = tokio::time::timeout(write_timeout, async {
        let _ = sink.send(Message::Close(close.map(close_frame))).await;
        let _ = sink.close().await;
    })
    .await;
}

/// Why the socket took no more frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stuck {
    /// The write failed (the connection broke).
    Broken,
    /// The write did not finish within the write deadline.
    TimedOut,
}

/// `write`, bounded by `deadline`.
async fn within<E>(
    deadline: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), Stuck> {
    within_until(tokio::time::Instant::now() + deadline, write).await
}

/// `write`, bounded by the instant `deadline` (no clock read: a batch reads
/// the clock once, not once per frame).
async fn within_until<E>(
    deadline: tokio::time::Instant,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), Stuck> {
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stuck::Broken),
        Err(_) => Err(Stuck::TimedOut),
    }
}

/// Why a catch-up stopped.
enum CatchUpFailed {
    /// Reading storage failed: close with 1011.
    Storage,
    /// The socket failed or stalled.
    Stuck,
}

/// Write `first` and whatever else is already queued in one flush: under load
/// this turns many small writes into one syscall (and, with
/// [`Framing::Batches`], many messages into few frames). If the batch holds
/// only broadcasts, it may wait for more as [`Pacing`] says, up to
/// [`BROADCAST_HOLD`]. Returns a non-frame item that ended the batch (a
/// catch-up, to run after the flush); `Err` if the socket failed or a write
/// missed its deadline ([`write_deadline`]).
async fn write_batch<S: Sink<Message> + Unpin>(
    sink: &mut S,
    out_rx: &mut OutboundRx,
    pacing: &mut Pacing<'_>,
    first: Outbound,
    write_timeout: Duration,
    framing: Framing,
) -> Result<Option<Outbound>, Stuck> {
    let mut batcher = Batcher::default();
    // The whole batch's deadline counts from here: `--write-timeout-secs`
    // plus its bytes at the slowest allowed rate.
    let started = tokio::time::Instant::now();
    let mut batch_bytes = 0usize;
    let mut batched = 0;
    let mut only_broadcasts = true;
    let mut next = Some(first);
    let mut hold_until = None;
    let mut held_enough = false;
    let mut stopped_by = None;
    while batched < MAX_BATCH {
        let outbound = match next.take() {
            Some(outbound) => outbound,
            None => match out_rx.try_recv() {
                Ok(outbound) => outbound,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    if !only_broadcasts || held_enough {
                        break;
                    }
                    let deadline = match hold_until {
                        Some(deadline) => deadline,
                        None => match pacing.hold_until(tokio::time::Instant::now()) {
                            Some(deadline) => *hold_until.insert(deadline),
                            None => break,
                        },
                    };
                    // Woken by a reply (or the queue closing), or at the
                    // deadline: take what is queued then, and at the
                    // deadline write it.
                    held_enough = !out_rx.hold_broadcasts_until(deadline).await;
                    continue;
                }
            },
        };
        match &outbound {
            Outbound::Reply(_) => {
                pacing.awaiting.reply_written();
                only_broadcasts = false;
            }
            Outbound::Text(_) => only_broadcasts = false,
            Outbound::Broadcast(_) | Outbound::CatchUp { .. } => {}
        }
        match outbound.into_text() {
            Ok(text) => {
                // Feeding may write out the frames fed before it: by then
                // the batch so far and this frame may have taken their deadline.
                let len = text.len();
                let ready = match framing {
                    Framing::OnePerMessage => Some(text),
                    Framing::Batches => batcher.push(text),
                };
                if let Some(frame) = ready {
                    within_until(
                        started + write_deadline(write_timeout, batch_bytes + len),
                        sink.feed(Message::Text(frame)),
                    )
                    .await?;
                }
                batch_bytes += len;
                batched += 1;
            }
            Err(other) => {
                stopped_by = Some(other);
                break;
            }
        }
    }
    let deadline = started + write_deadline(write_timeout, batch_bytes);
    if let Some(frame) = batcher.take() {
        within_until(deadline, sink.feed(Message::Text(frame))).await?;
    }
    within_until(deadline, sink.flush()).await?;
    pacing.last_flush = Some(tokio::time::Instant::now());
    Ok(stopped_by)
}

/// Send ops `after+1 ..= upto` from storage, each frame within `write_timeout`.
async fn catch_up(
    shared: &Arc<Shared>,
    doc: &DocId,
    sink: &mut SplitSink<WebSocket, Message>,
    after: u64,
    upto: u64,
    write_timeout: Duration,
) -> Result<(), CatchUpFailed> {
    let mut next = after;
    while next < upto {
        let storage = shared.storage.clone();
        let doc_id = doc.to_string();
        let limit = (upto - next).min(512) as usize;
        let from = next;
        // A page bounded in bytes too: catch-up over large ops holds a few
        // MiB at a time, not 512 ops of any size.
        let ops = tokio::task::spawn_blocking(move || {
            read_page(
                storage.as_ref(),
                &doc_id,
                from,
                limit,
                |s, doc, after, limit| s.ops(doc, after, limit),
            )
        })
        .await
        .map_err(|_| CatchUpFailed::Storage)?
        .map_err(|e| {
            tracing::error!(%doc, error = %e, "catch-up read failed");
            CatchUpFailed::Storage
        })?;
        if ops.is_empty() {
            tracing::error!(%doc, after = next, upto, "catch-up found no ops");
            return Err(CatchUpFailed::Storage);
        }
        for op in ops {
            if op.rev != next + 1 || op.rev > upto {
                return Err(CatchUpFailed::Storage);
            }
            let frame = stored_op_frame(&op);
            let deadline = write_deadline(write_timeout, frame.len());
            within(deadline, sink.send(Message::Text(frame)))
                .await
                .map_err(|_| CatchUpFailed::Stuck)?;
            next = op.rev;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;
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

    /// A write deadline the tests never reach.
    const LONG: Duration = Duration::from_secs(15);

    /// Today's framing: one message per frame.
    const ONE: Framing = Framing::OnePerMessage;

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

    /// [`write_batch`] on a connection not written to before, one message per frame.
    async fn write_fresh(
        sink: &mut Recorder,
        rx: &mut OutboundRx,
        awaiting: &AwaitingReplies,
        first: Outbound,
    ) -> Result<Option<Outbound>, Stuck> {
        write_batch(sink, rx, &mut Pacing::new(awaiting), first, LONG, ONE).await
    }

    #[tokio::test(start_paused = true)]
    async fn broadcasts_to_a_client_awaiting_nothing_go_out_at_once() {
        let (tx, mut rx) = crate::outbound_queue::outbound_queue(8, 1 << 20);
        tx.try_send(broadcast("b2")).unwrap();
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        let next = write_fresh(&mut sink, &mut rx, &awaiting(0), broadcast("b1")).await;
        assert!(matches!(next, Ok(None)));
        assert_eq!(sink.flushes, vec![vec!["b1".to_owned(), "b2".to_owned()]]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn broadcasts_wait_for_the_reply_they_can_share_a_write_with() {
        let (tx, mut rx) = crate::outbound_queue::outbound_queue(8, 1 << 20);
        let awaiting = awaiting(1);
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        let reply = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.try_send(broadcast("b2")).unwrap();
            tx.try_send(Outbound::Reply(Utf8Bytes::from_static("ack")))
                .unwrap();
            tx
        });
        let next = write_fresh(&mut sink, &mut rx, &awaiting, broadcast("b1")).await;
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
        let (_tx, mut rx) = crate::outbound_queue::outbound_queue(8, 1 << 20);
        let awaiting = awaiting(1);
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        let next = write_fresh(&mut sink, &mut rx, &awaiting, broadcast("b1")).await;
        assert!(matches!(next, Ok(None)));
        assert_eq!(sink.flushes, vec![vec!["b1".to_owned()]]);
        assert_eq!(started.elapsed(), BROADCAST_HOLD);
        assert!(awaiting.any(), "still awaiting its reply");
    }

    #[tokio::test(start_paused = true)]
    async fn broadcasts_right_after_a_write_wait_until_the_hold_has_passed_since_it() {
        let (tx, mut rx) = crate::outbound_queue::outbound_queue(8, 1 << 20);
        let awaiting = awaiting(0);
        let mut pacing = Pacing::new(&awaiting);
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        write_batch(&mut sink, &mut rx, &mut pacing, broadcast("b1"), LONG, ONE)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "the first goes at once");
        // 1 ms later the next broadcast waits for the rest of the hold, and
        // what arrives meanwhile shares its write (the timer's grain is 1 ms).
        tokio::time::sleep(Duration::from_millis(1)).await;
        let more = tokio::spawn(async move {
            tx.try_send(broadcast("b3")).unwrap();
            tx
        });
        write_batch(&mut sink, &mut rx, &mut pacing, broadcast("b2"), LONG, ONE)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), BROADCAST_HOLD);
        assert_eq!(
            sink.flushes,
            vec![
                vec!["b1".to_owned()],
                vec!["b2".to_owned(), "b3".to_owned()]
            ]
        );
        // After a quiet hold, at once again.
        let tx = more.await.unwrap();
        tokio::time::sleep(BROADCAST_HOLD).await;
        let quiet = tokio::time::Instant::now();
        write_batch(&mut sink, &mut rx, &mut pacing, broadcast("b4"), LONG, ONE)
            .await
            .unwrap();
        assert_eq!(quiet.elapsed(), Duration::ZERO);
        // Within the hold again: a reply ends the wait at once, carrying what was held.
        let reply = tokio::spawn(async move {
            tx.try_send(Outbound::Reply(Utf8Bytes::from_static("ack")))
                .unwrap();
            tx
        });
        let held = tokio::time::Instant::now();
        write_batch(&mut sink, &mut rx, &mut pacing, broadcast("b5"), LONG, ONE)
            .await
            .unwrap();
        assert_eq!(held.elapsed(), Duration::ZERO);
        assert_eq!(sink.flushes[3], vec!["b5".to_owned(), "ack".to_owned()]);
        drop(reply.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn replies_and_other_frames_are_not_held_and_a_catch_up_ends_the_batch() {
        let (tx, mut rx) = crate::outbound_queue::outbound_queue(8, 1 << 20);
        let awaiting = awaiting(2);
        let mut sink = Recorder::default();
        let started = tokio::time::Instant::now();
        // A snapshot-like frame is written at once even while replies are awaited.
        let next = write_fresh(
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
        let next = write_fresh(
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

    #[tokio::test(start_paused = true)]
    async fn with_batches_one_flush_is_one_frame_in_queue_order_and_a_catch_up_ends_it() {
        let (tx, mut rx) = crate::outbound_queue::outbound_queue(8, 1 << 20);
        tx.try_send(Outbound::Reply(Utf8Bytes::from_static(
            r#"{"type":"ack","rev":2,"seq":1}"#,
        )))
        .unwrap();
        tx.try_send(Outbound::CatchUp { after: 2, upto: 3 })
            .unwrap();
        tx.try_send(broadcast(r#"{"type":"pong"}"#)).unwrap();
        let mut sink = Recorder::default();
        let first = broadcast(r#"{"type":"leave","client":"b"}"#);
        let next = write_batch(
            &mut sink,
            &mut rx,
            &mut Pacing::new(&awaiting(1)),
            first,
            LONG,
            Framing::Batches,
        )
        .await;
        assert!(matches!(
            next,
            Ok(Some(Outbound::CatchUp { after: 2, upto: 3 }))
        ));
        assert_eq!(
            sink.flushes,
            vec![vec![
                r#"{"type":"batch","messages":[{"type":"leave","client":"b"},{"type":"ack","rev":2,"seq":1}]}"#
                    .to_owned()
            ]]
        );
        // What follows the catch-up: alone, so plain.
        let next = rx.recv().await.unwrap();
        let again = write_batch(
            &mut sink,
            &mut rx,
            &mut Pacing::new(&awaiting(0)),
            next,
            LONG,
            Framing::Batches,
        )
        .await;
        assert!(matches!(again, Ok(None)));
        assert_eq!(sink.flushes[1], vec![r#"{"type":"pong"}"#.to_owned()]);
    }
}
