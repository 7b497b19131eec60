//! On storage several nodes share: tell the open documents when another
//! node may have moved their heads, from the storage's change feed and from
//! a slow periodic check that finds whatever the feed missed.

use std::sync::Arc;
use std::time::Duration;

use ot_protocol::DocId;
use tokio::sync::mpsc::UnboundedReceiver;

use super::mailbox::DocCommand;
use super::registry::Registry;
use crate::storage::HeadChange;

/// Every open document asks storage for its head this often, whatever the
/// feed said (a lost notification is found within this time).
pub(crate) const PERIODIC_CHECK: Duration = Duration::from_secs(10);

/// Forward `feed` to the open documents until it ends.
pub(crate) async fn follow_heads(mut feed: UnboundedReceiver<HeadChange>, registry: Arc<Registry>) {
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
                Some(HeadChange::Resync) => check_all(&registry),
                None => return,
            },
            _ = check.tick() => check_all(&registry),
        }
    }
}

/// Have every open document ask storage for its head.
fn check_all(registry: &Registry) {
    for (_, handle) in registry.handles() {
        let _ = handle.tx.try_send(DocCommand::Head { head: None });
    }
}
