//! A connection's outbound queue, bounded both in messages and in bytes: a
//! client that does not keep up is closed (4008) before what waits for it
//! costs more than `--outbound-queue-bytes`, however large each frame is.
//!
//! The bytes are the frames' lengths. A broadcast frame is shared by every
//! receiver (one allocation), so this bounds what one slow reader keeps
//! alive, and the sum over readers bounds the whole server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

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
    let (tx, rx) = mpsc::channel(messages.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (
        OutboundTx {
            tx,
            queued: queued.clone(),
            max_bytes,
        },
        OutboundRx { rx, queued },
    )
}

/// The sending side (the document, and the connection's reader for pongs
/// and errors).
#[derive(Debug, Clone)]
pub(crate) struct OutboundTx {
    tx: mpsc::Sender<Outbound>,
    /// Bytes queued and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl OutboundTx {
    /// Queue `item` now, or say why it does not fit.
    pub(crate) fn try_send(&self, item: Outbound) -> Result<(), Overflow> {
        let bytes = item.queued_bytes();
        // Reserved before sending, so that the writer's release (after it
        // takes the item) can never run before the reservation.
        let before = self.queued.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before.saturating_add(bytes) > self.max_bytes {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Overflow::Bytes);
        }
        if let Err(refused) = self.tx.try_send(item) {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            return Err(match refused {
                mpsc::error::TrySendError::Full(_) => Overflow::Messages,
                mpsc::error::TrySendError::Closed(_) => Overflow::Closed,
            });
        }
        Ok(())
    }

    /// Messages that can be queued now.
    pub(crate) fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Bytes of frames that can be queued now.
    pub(crate) fn room_bytes(&self) -> usize {
        self.max_bytes
            .saturating_sub(self.queued.load(Ordering::Acquire))
    }
}

/// The receiving side (the connection's writer).
#[derive(Debug)]
pub(crate) struct OutboundRx {
    rx: mpsc::Receiver<Outbound>,
    queued: Arc<AtomicUsize>,
}

impl OutboundRx {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        self.release(&item);
        Some(item)
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let item = self.rx.try_recv()?;
        self.release(&item);
        Ok(item)
    }

    fn release(&self, item: &Outbound) {
        self.queued.fetch_sub(item.queued_bytes(), Ordering::AcqRel);
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
