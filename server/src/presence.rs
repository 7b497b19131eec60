//! Presence across nodes on shared storage: the cursors and departures of
//! one node's writers reach the writers of the same document at the other
//! nodes, best effort.
//!
//! A document's actor hands every local cursor and leave to the node's
//! [`PresencePublisher`]; its task keeps the latest note per (document,
//! client) for [`COALESCE`] and sends what it holds in one statement through
//! the storage's presence channel (PostgreSQL: `NOTIFY ot_presence`, never
//! inside a write transaction). Every node's change feed listens on that
//! channel too; `document::heads` hands each note from another node to the
//! document's actor if it is open there, which maps it to its own durable
//! revision and shows it to its writers. Nothing depends on a note
//! arriving: a lost one leaves a cursor where it was until the next. A node
//! that stops without saying goodbye (kill -9) leaves its writers' cursors
//! behind until they expire: every node repeats its writers' cursors every
//! [`REFRESH_EVERY`], and a remote cursor not heard of for [`EXPIRE_AFTER`]
//! is taken away (a `leave`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ot_core::Range;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::storage::Storage;

/// How long the publisher gathers notes before sending them (the latest
/// per document and client is sent).
pub(crate) const COALESCE: Duration = Duration::from_millis(50);

/// How often a node repeats its writers' cursors (documents open there).
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// A remote cursor not repeated for this long is taken away.
pub(crate) const EXPIRE_AFTER: Duration = Duration::from_secs(75);

/// Notes waiting for the publisher; more are dropped (best effort).
const QUEUE: usize = 4096;

/// A note larger than this is not sent (PostgreSQL's NOTIFY payload limit
/// is 8000 bytes).
const MAX_PAYLOAD: usize = 7900;

/// What one node says about one writer of one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PresenceNote {
    /// The sending process ([`PresencePublisher::node`]): a node skips its own notes.
    #[serde(rename = "n")]
    pub(crate) node: u64,
    #[serde(rename = "d")]
    pub(crate) doc: String,
    #[serde(rename = "c")]
    pub(crate) client: String,
    /// `None`: the writer left this node.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub(crate) cursor: Option<RemoteCursor>,
}

/// A writer's selections at a revision, and its display name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RemoteCursor {
    #[serde(rename = "r")]
    pub(crate) rev: u64,
    #[serde(rename = "g")]
    pub(crate) ranges: Vec<Range>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
}

impl PresenceNote {
    /// Read a note from the channel's payload; `None` for anything else.
    pub(crate) fn parse(payload: &str) -> Option<PresenceNote> {
        serde_json::from_str(payload).ok()
    }
}

/// The node's sender of presence notes (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct PresencePublisher {
    node: u64,
    tx: mpsc::Sender<PresenceNote>,
}

impl PresencePublisher {
    /// Start the publisher's task on the current runtime.
    pub(crate) fn start(storage: Arc<dyn Storage>) -> PresencePublisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(publish(rx, storage));
        PresencePublisher {
            node: rand::random(),
            tx,
        }
    }

    /// This process's id in its notes.
    pub(crate) fn node(&self) -> u64 {
        self.node
    }

    /// Send that `client` of `doc` has `cursor` (`None`: left), soon.
    pub(crate) fn note(&self, doc: &str, client: &str, cursor: Option<RemoteCursor>) {
        // A full queue drops the note: presence is best effort.
        let _ = self.tx.try_send(PresenceNote {
            node: self.node,
            doc: doc.to_owned(),
            client: client.to_owned(),
            cursor,
        });
    }
}

/// The publisher's task: gather for [`COALESCE`], keep the latest note per
/// document and client, send them in one call; until every sender is gone.
async fn publish(mut rx: mpsc::Receiver<PresenceNote>, storage: Arc<dyn Storage>) {
    while let Some(first) = rx.recv().await {
        let mut latest: HashMap<(String, String), PresenceNote> = HashMap::new();
        let mut add = |note: PresenceNote| {
            latest.insert((note.doc.clone(), note.client.clone()), note);
        };
        add(first);
        let deadline = tokio::time::Instant::now() + COALESCE;
        while let Ok(Some(note)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            add(note);
        }
        let payloads: Vec<String> = latest
            .into_values()
            .filter_map(|note| serde_json::to_string(&note).ok())
            .filter(|payload| payload.len() <= MAX_PAYLOAD)
            .collect();
        let storage = Arc::clone(&storage);
        match tokio::task::spawn_blocking(move || storage.publish_presence(&payloads)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot send presence to the other nodes"),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_and_other_payloads_do_not() {
        let cursor = PresenceNote {
            node: 7,
            doc: "d:1".into(),
            client: "alice".into(),
            cursor: Some(RemoteCursor {
                rev: 3,
                ranges: vec![Range::cursor(2), Range { anchor: 0, head: 1 }],
                name: Some("Alice".into()),
            }),
        };
        let leave = PresenceNote {
            cursor: None,
            ..cursor.clone()
        };
        for note in [cursor, leave] {
            let payload = serde_json::to_string(&note).unwrap();
            assert_eq!(PresenceNote::parse(&payload), Some(note));
        }
        assert_eq!(PresenceNote::parse("doc:12"), None);
    }
}
