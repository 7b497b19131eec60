//! A connection's outbound queue, bounded both in messages and in bytes: a
//! client that does not keep up is closed (4008) before what waits for it
//! costs more than `--outbound-queue-bytes`, however large each frame is.
//!
//! The bytes are the frames' lengths. A broadcast frame is shared by every
//! receiver (one allocation), so this bounds what one slow reader keeps
//! alive, and the sum over readers bounds the whole server.
//!
//! A queue of its own rather than a tokio channel: while the writer holds
//! broadcasts (for up to 2 ms, see `connection/writer.rs`), queueing another
//! broadcast must not wake it, or a busy document wakes every writer once per
//! op for nothing; a reply or an error still wakes it at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::FutureExt;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::Notify;

use crate::outbound::Outbound;

/// Why an item did not fit (the connection is then closed as too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Overflow {
    /// The queue holds its most messages (`--outbound-queue`).
    #[error("the outbound queue is full")]
    Messages,
    /// The item would take the queue past `--outbound-queue-bytes`.
    #[error("the outbound queue holds too many bytes")]
    Bytes,
    /// The connection is gone (its writer dropped the queue): not an overflow.
    #[error("the connection is gone")]
    Closed,
}

/// A new queue of at most `messages` items and `max_bytes` bytes of frames.
/// One item is always accepted into an empty queue, however large (a large
/// document's first message), so no frame is refused by size alone.
pub(crate) fn outbound_queue(messages: usize, max_bytes: usize) -> (OutboundTx, OutboundRx) {
    let queue = Arc::new(Queue {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            senders: 1,
            receiver_gone: false,
            quiet: false,
        }),
        wake: Notify::new(),
        max_messages: messages.max(1),
        max_bytes,
    });
    (
        OutboundTx {
            queue: queue.clone(),
        },
        OutboundRx { queue },
    )
}

/// The queue both sides share.
#[derive(Debug)]
struct Queue {
    state: Mutex<State>,
    /// Wakes the writer when an item is queued; while the writer holds
    /// broadcasts ([`OutboundRx::hold_broadcasts_until`]), only for an item that must
    /// not wait, so a busy document does not wake it once per op.
    wake: Notify,
    max_messages: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Outbound>,
    /// Bytes of the frames queued.
    bytes: usize,
    /// Live [`OutboundTx`]s: at none, the writer drains the queue and ends.
    senders: usize,
    /// The writer dropped its side: nothing more is accepted.
    receiver_gone: bool,
    /// The writer is holding broadcasts: queueing one does not wake it.
    quiet: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards no invariant a panic could break halfway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side (the document, and the connection's reader for pongs
/// and errors).
#[derive(Debug)]
pub(crate) struct OutboundTx {
    queue: Arc<Queue>,
}

impl Clone for OutboundTx {
    fn clone(&self) -> Self {
        self.queue.lock().senders += 1;
        OutboundTx {
            queue: self.queue.clone(),
        }
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        let last = {
            let mut state = self.queue.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.queue.wake.notify_one();
        }
    }
}

impl OutboundTx {
    /// Queue `item` now, or say why it does not fit.
    pub(crate) fn try_send(&self, item: Outbound) -> Result<(), Overflow> {
        let bytes = item.queued_bytes();
        let wake = {
            let mut state = self.queue.lock();
            if state.receiver_gone {
                return Err(Overflow::Closed);
            }
            if state.items.len() >= self.queue.max_messages {
                return Err(Overflow::Messages);
            }
            if state.bytes > 0 && state.bytes.saturating_add(bytes) > self.queue.max_bytes {
                return Err(Overflow::Bytes);
            }
            let wake = !state.quiet || !matches!(item, Outbound::Broadcast(_));
            state.bytes += bytes;
            state.items.push_back(item);
            wake
        };
        if wake {
            self.queue.wake.notify_one();
        }
        Ok(())
    }

    /// Messages that can be queued now.
    pub(crate) fn capacity(&self) -> usize {
        let state = self.queue.lock();
        self.queue.max_messages.saturating_sub(state.items.len())
    }

    /// Bytes of frames that can be queued now.
    pub(crate) fn room_bytes(&self) -> usize {
        self.queue.max_bytes.saturating_sub(self.queue.lock().bytes)
    }
}

/// The receiving side (the connection's writer).
#[derive(Debug)]
pub(crate) struct OutboundRx {
    queue: Arc<Queue>,
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.receiver_gone = true;
        state.items.clear();
        state.bytes = 0;
    }
}

impl OutboundRx {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                // A wake-up stored by an earlier item (already taken) only
                // costs another look.
                Err(TryRecvError::Empty) => self.queue.wake.notified().await,
            }
        }
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let mut state = self.queue.lock();
        match state.items.pop_front() {
            Some(item) => {
                state.bytes -= item.queued_bytes();
                Ok(item)
            }
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Hold broadcasts until `deadline`: wait for an item that must not wait
    /// (a reply, an error, a catch-up) or for the queue to close, without
    /// being woken by each broadcast queued meanwhile. Returns whether it
    /// woke before the deadline (the caller looks at the queue either way).
    pub(crate) async fn hold_broadcasts_until(&mut self, deadline: tokio::time::Instant) -> bool {
        {
            let mut state = self.queue.lock();
            let urgent = state
                .items
                .iter()
                .any(|item| !matches!(item, Outbound::Broadcast(_)));
            if urgent || state.senders == 0 {
                return true;
            }
            state.quiet = true;
            // Drop a wake-up left by an item taken already (the queue was just
            // looked at), so that it does not end the hold at once; one for
            // an item queued from now on comes after this.
            let _ = self.queue.wake.notified().now_or_never();
        }
        let woke = tokio::time::timeout_at(deadline, self.queue.wake.notified())
            .await
            .is_ok();
        self.queue.lock().quiet = false;
        woke
    }
}

impl Outbound {
    /// What this item counts against the byte bound: a frame's length. A
    /// catch-up counts nothing here: the writer reads it from storage page
    /// by page.
    fn queued_bytes(&self) -> usize {
        match self {
            Outbound::Text(text) | Outbound::Reply(text) | Outbound::Broadcast(text) => text.len(),
            Outbound::CatchUp { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    fn frame(len: usize) -> Outbound {
        Outbound::Broadcast(Utf8Bytes::from("x".repeat(len)))
    }

    #[tokio::test]
    async fn bytes_are_bounded_and_released_when_the_writer_takes_a_frame() {
        let (tx, mut rx) = outbound_queue(100, 1000);
        tx.try_send(frame(600)).unwrap();
        assert_eq!(tx.room_bytes(), 400);
        tx.try_send(frame(400)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(Overflow::Bytes));
        // A catch-up costs no bytes here.
        tx.try_send(Outbound::CatchUp { after: 0, upto: 9 })
            .unwrap();
        assert!(rx.recv().await.is_some());
        assert_eq!(tx.room_bytes(), 600);
        tx.try_send(frame(600)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(Overflow::Bytes));
    }

    #[tokio::test]
    async fn one_frame_larger_than_the_bound_fits_an_empty_queue_only() {
        let (tx, mut rx) = outbound_queue(100, 1000);
        tx.try_send(frame(5000)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(Overflow::Bytes));
        assert!(rx.try_recv().is_ok());
        assert_eq!(tx.room_bytes(), 1000);
        tx.try_send(frame(1)).unwrap();
        assert_eq!(tx.try_send(frame(5000)), Err(Overflow::Bytes));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_is_not_ended_by_broadcasts_but_by_a_reply_or_the_deadline() {
        let (tx, mut rx) = outbound_queue(100, 1000);
        let later = |ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
        let sender = tx.clone();
        let broadcasts = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                sender.try_send(frame(1)).unwrap();
            }
        });
        let started = tokio::time::Instant::now();
        assert!(
            !rx.hold_broadcasts_until(later(10)).await,
            "held to the deadline"
        );
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(10));
        broadcasts.await.unwrap();
        for _ in 0..3 {
            assert!(matches!(rx.try_recv(), Ok(Outbound::Broadcast(_))));
        }
        // Queueing a broadcast after the hold wakes a waiting writer again.
        tx.try_send(frame(1)).unwrap();
        assert!(rx.recv().await.is_some());

        let sender = tx.clone();
        let reply = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            sender
                .try_send(Outbound::Reply(Utf8Bytes::from_static("ack")))
                .unwrap();
        });
        let started = tokio::time::Instant::now();
        assert!(
            rx.hold_broadcasts_until(later(10)).await,
            "a reply ends the hold"
        );
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(2));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Reply(_))));
        reply.await.unwrap();

        // The last sender going ends a hold too, and the queue reads as closed.
        drop(tx);
        assert!(rx.hold_broadcasts_until(later(10)).await);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn messages_are_bounded_too_and_a_refused_frame_reserves_nothing() {
        let (tx, mut rx) = outbound_queue(2, 1000);
        tx.try_send(frame(10)).unwrap();
        tx.try_send(frame(10)).unwrap();
        assert_eq!(tx.try_send(frame(10)), Err(Overflow::Messages));
        assert_eq!(tx.room_bytes(), 980);
        drop(rx.try_recv());
        drop(rx.try_recv());
        assert_eq!(tx.room_bytes(), 1000);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        drop(rx);
        assert_eq!(tx.try_send(frame(10)), Err(Overflow::Closed));
    }
}
