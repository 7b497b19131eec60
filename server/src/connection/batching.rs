//! How a connection's frames go onto its socket: one WebSocket message per
//! server message, or, for a client that asked with `batch=1`, the messages
//! of one flush spliced into `{"type":"batch","messages":[…]}` frames.
//! Splicing reuses each message's own text: an op is serialised once
//! however many receivers it has, and never parsed again.

use axum::extract::ws::Utf8Bytes;

/// What a connection asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One message per frame (every client that did not ask for batches).
    OnePerMessage,
    /// Several messages per frame (`batch=1`).
    Batches,
}

/// Most bytes of messages spliced into one batch frame. A larger message
/// goes alone, as a plain frame.
pub(super) const MAX_BATCH_FRAME_BYTES: usize = 1 << 20;

/// The messages of the batch frame being made.
#[derive(Debug, Default)]
pub(super) struct Batcher {
    pending: Vec<Utf8Bytes>,
    bytes: usize,
}

impl Batcher {
    /// Add a message; returns the frame to write first when it does not
    /// fit the batch being made (that batch, now complete).
    pub(super) fn push(&mut self, text: Utf8Bytes) -> Option<Utf8Bytes> {
        let full = !self.pending.is_empty() && self.bytes + text.len() > MAX_BATCH_FRAME_BYTES;
        let ready = if full { self.take() } else { None };
        self.bytes += text.len();
        self.pending.push(text);
        ready
    }

    /// The frame of what was added since the last one: a single message
    /// plain, several as a batch; `None` if nothing was added.
    pub(super) fn take(&mut self) -> Option<Utf8Bytes> {
        let frame = match self.pending.len() {
            0 => None,
            1 => self.pending.pop(),
            _ => Some(splice(&self.pending)),
        };
        self.pending.clear();
        self.bytes = 0;
        frame
    }
}

/// `{"type":"batch","messages":[m1,m2,…]}` from the messages' texts.
fn splice(messages: &[Utf8Bytes]) -> Utf8Bytes {
    const HEAD: &str = r#"{"type":"batch","messages":["#;
    const TAIL: &str = "]}";
    let bytes: usize = messages.iter().map(|m| m.len() + 1).sum();
    let mut frame = String::with_capacity(HEAD.len() + bytes + TAIL.len());
    frame.push_str(HEAD);
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(message.as_str());
    }
    frame.push_str(TAIL);
    Utf8Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ot_protocol::ServerMessage;

    fn text(message: &ServerMessage<'_>) -> Utf8Bytes {
        Utf8Bytes::from(message.to_text())
    }

    #[test]
    fn a_batch_reads_back_as_its_messages_in_order_and_one_message_goes_plain() {
        let messages = [
            ServerMessage::Ack { rev: 5, seq: 2 },
            ServerMessage::Leave { client: "b".into() },
            ServerMessage::Pong,
        ];
        let mut batcher = Batcher::default();
        for message in &messages {
            assert_eq!(batcher.push(text(message)), None);
        }
        let frame = batcher.take().unwrap();
        let read = ServerMessage::parse(frame.as_str()).unwrap();
        assert_eq!(read.kind(), "batch");
        assert_eq!(read.into_messages(), messages);
        assert_eq!(batcher.take(), None, "taken once");

        assert_eq!(batcher.push(text(&messages[0])), None);
        assert_eq!(batcher.take().unwrap().as_str(), messages[0].to_text());
    }

    #[test]
    fn batches_stay_within_the_frame_bound_and_a_larger_message_goes_alone() {
        let big =
            |n: usize| Utf8Bytes::from(format!(r#"{{"type":"x","pad":"{}"}}"#, "a".repeat(n)));
        let mut batcher = Batcher::default();
        assert_eq!(batcher.push(big(600_000)), None);
        // Does not fit with the first: the first goes out alone (plain).
        let first = batcher.push(big(600_000)).unwrap();
        assert!(first.as_str().starts_with(r#"{"type":"x""#));
        assert_eq!(batcher.push(big(10)), None);
        let second = batcher.take().unwrap();
        assert!(second.as_str().starts_with(r#"{"type":"batch""#));
        assert!(second.len() < 600_100);
        // Larger than the bound: alone.
        assert_eq!(batcher.push(big(MAX_BATCH_FRAME_BYTES + 1)), None);
        assert!(batcher
            .take()
            .unwrap()
            .as_str()
            .starts_with(r#"{"type":"x""#));
    }
}
