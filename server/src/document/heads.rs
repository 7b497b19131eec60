//! On storage several nodes share: tell the open documents when another
//! node may have moved their heads, from the storage's change feed and from
//! a slow periodic check that finds whatever the feed missed; and hand them
//! the presence notes of other nodes' writers (`crate::presence`).

use std::sync::Arc;
use std::time::Duration;

use ot_protocol::DocId;
use tokio::sync::mpsc::UnboundedReceiver;

use super::mailbox::DocCommand;
use super::registry::Registry;
use crate::presence::PresenceNote;
use crate::storage::{HeadChange, Storage};

/// Every open document asks storage for its head this often, whatever the
/// feed said (a lost notification is found within this time).
pub(crate) const PERIODIC_CHECK: Duration = Duration::from_secs(10);

/// Forward `feed` to the open documents until it ends.
pub(crate) async fn follow_heads(
    mut feed: UnboundedReceiver<HeadChange>,
    registry: Arc<Registry>,
    storage: Arc<dyn Storage>,
    own_node: Option<u64>,
) {
    let mut check = tokio::time::interval(PERIODIC_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = feed.recv() => match change {
                Some(HeadChange::Moved { doc, head }) => {
                    let Ok(id) = DocId::parse(&doc) else { continue };
                    if let Some(handle) = registry.get(&id) {
                        // A full mailbox is busy anyway; the next check finds the head.
                        let _ = handle.tx.try_send(DocCommand::Head { head: Some(head) });
                    }
                }
                Some(HeadChange::Resync) => check_all(&registry, &storage).await,
                Some(HeadChange::Presence { payload }) => {
                    let Some(note) = PresenceNote::parse(&payload) else { continue };
                    if Some(note.node) == own_node {
                        continue;
                    }
                    let Ok(id) = DocId::parse(&note.doc) else { continue };
                    if let Some(handle) = registry.get(&id) {
                        // Best effort: a busy document skips a note.
                        let _ = handle.tx.try_send(DocCommand::RemotePresence(note));
                    }
                }
                None => return,
            },
            _ = check.tick() => check_all(&registry, &storage).await,
        }
    }
}

/// Tell every open document its stored head, read for all of them at
/// once; each reads what it missed, or finds it was deleted elsewhere.
async fn check_all(registry: &Registry, storage: &Arc<dyn Storage>) {
    let handles = registry.handles();
    if handles.is_empty() {
        return;
    }
    let docs: Vec<String> = handles.iter().map(|(doc, _)| doc.to_string()).collect();
    let storage = Arc::clone(storage);
    let heads = match tokio::task::spawn_blocking(move || storage.heads(&docs)).await {
        Ok(Ok(heads)) => heads,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the open documents' heads; next check later");
            return;
        }
        Err(_) => return,
    };
    for ((_, handle), (_, head)) in handles.iter().zip(heads) {
        let _ = handle.tx.try_send(DocCommand::Head { head: Some(head) });
    }
}
