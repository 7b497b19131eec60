//! Open documents: one actor per document ([`actor`]) owning its commit
//! pipeline ([`pipeline`]) and its connection table ([`connections`]); the
//! commands it is sent ([`mailbox`]); ops with old bases rebased off its
//! task ([`rebase`]); the registry of open documents
//! ([`registry`]), which the actor's [`open`] starts actors through.

mod actor;
mod connections;
pub(crate) mod epoch;
mod error;
mod heads;
mod link;
mod loading;
pub(crate) mod mailbox;
mod pipeline;
mod rebase;
mod region_items;
pub(crate) mod registry;
mod replica;
pub(crate) mod replication;
mod snapshot_policy;
#[cfg(test)]
pub(crate) mod test_hooks;

pub(crate) use actor::open;
pub(crate) use epoch::DocEpoch;
pub(crate) use error::DocError;
pub(crate) use heads::follow_heads;
pub(crate) use loading::reopen_region_copies;
pub(crate) use mailbox::{DocCommand, DocHandle, IncomingOp, JoinError, JoinRequest, JOIN_TIMEOUT};
