//! What a document's pipeline orders ops into: on a home (the default) a
//! plain [`DocumentHistory`]; on a regional server (`--upstream`) a
//! [`RegionalDocument`], whose link to the home sees every local op.

use ot_core::history::{DocumentHistory, KeyCheck, KeyHash, Receipt, ReceiveError};
use ot_core::region::{RegionError, RegionalDocument};
use ot_core::Operation;

/// The history a pipeline orders ops into.
pub(super) enum Replica {
    /// This server is the document's home.
    Home(DocumentHistory),
    /// This server is a region: the document replicates to its home.
    Region(Box<RegionalDocument>),
}

/// Why the replica did not take an op.
pub(super) enum ReplicaError {
    /// The op was refused (the sender's error).
    Receive(ReceiveError),
    /// The regional history and its link disagree: reload from storage.
    Broken(String),
}

impl From<RegionError> for ReplicaError {
    fn from(error: RegionError) -> ReplicaError {
        match error {
            RegionError::Receive(e) => ReplicaError::Receive(e),
            other => ReplicaError::Broken(other.to_string()),
        }
    }
}

impl Replica {
    /// The history local clients read and write.
    pub(super) fn history(&self) -> &DocumentHistory {
        match self {
            Replica::Home(history) => history,
            Replica::Region(region) => region.history(),
        }
    }

    /// The regional document, on a region.
    pub(super) fn region(&self) -> Option<&RegionalDocument> {
        match self {
            Replica::Home(_) => None,
            Replica::Region(region) => Some(region),
        }
    }

    /// The regional document, on a region.
    pub(super) fn region_mut(&mut self) -> Option<&mut RegionalDocument> {
        match self {
            Replica::Home(_) => None,
            Replica::Region(region) => Some(region),
        }
    }

    /// A local client's op (see [`DocumentHistory::receive`]).
    pub(super) fn receive(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        op: Operation,
    ) -> Result<Receipt, ReplicaError> {
        match self {
            Replica::Home(history) => history
                .receive(client_id, seq, base_rev, op)
                .map_err(ReplicaError::Receive),
            Replica::Region(region) => Ok(region.receive_local(client_id, seq, base_rev, op)?),
        }
    }

    /// A local client's op, rebased off the document's task (see
    /// [`DocumentHistory::receive_rebased`]).
    pub(super) fn receive_rebased(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        received: Operation,
        rebased: Operation,
        rebased_rev: u64,
    ) -> Result<Receipt, ReplicaError> {
        match self {
            Replica::Home(history) => history
                .receive_rebased(client_id, seq, base_rev, received, rebased, rebased_rev)
                .map_err(ReplicaError::Receive),
            Replica::Region(region) => Ok(region.receive_local_rebased(
                client_id,
                seq,
                base_rev,
                received,
                rebased,
                rebased_rev,
            )?),
        }
    }

    /// See [`DocumentHistory::bind_key`].
    pub(super) fn bind_key(&mut self, client_id: &str, key: KeyHash) -> KeyCheck {
        match self {
            Replica::Home(history) => history.bind_key(client_id, key),
            Replica::Region(region) => region.bind_key(client_id, key),
        }
    }

    /// See [`DocumentHistory::unbind_key`].
    pub(super) fn unbind_key(&mut self, client_id: &str, key: KeyHash) {
        match self {
            Replica::Home(history) => history.unbind_key(client_id, key),
            Replica::Region(region) => region.unbind_key(client_id, key),
        }
    }

    /// See [`DocumentHistory::trim_to_bytes`].
    pub(super) fn trim_to_bytes(&mut self, keep: usize, max_bytes: usize, min_keep: usize) {
        match self {
            Replica::Home(history) => history.trim_to_bytes(keep, max_bytes, min_keep),
            Replica::Region(region) => region.trim_to_bytes(keep, max_bytes, min_keep),
        }
    }

    /// See [`DocumentHistory::evict_idle`].
    pub(super) fn evict_idle(
        &mut self,
        expiry: u64,
        keep_after: u64,
        keep: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        match self {
            Replica::Home(history) => history.evict_idle(expiry, keep_after, keep),
            Replica::Region(region) => region.evict_idle(expiry, keep_after, keep),
        }
    }
}
