//! Revoked token ids, and the open connections of each token, so that a
//! revocation refuses the token at once and closes what it opened.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The revocation list in memory (loaded from storage at start) and the live
/// connections per token id.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    revoked: Mutex<HashSet<String>>,
    /// Per token id: each open connection's id and the token that ends it.
    live: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
}

/// Unregisters a connection from [`Revocations`] when dropped.
pub(crate) struct LiveConnection<'a> {
    revocations: &'a Revocations,
    jti: String,
    conn_id: u64,
}

impl Drop for LiveConnection<'_> {
    fn drop(&mut self) {
        let mut live = lock(&self.revocations.live);
        if let Some(conns) = live.get_mut(&self.jti) {
            conns.retain(|(id, _)| *id != self.conn_id);
            if conns.is_empty() {
                live.remove(&self.jti);
            }
        }
    }
}

impl Revocations {
    /// A list holding `revoked`.
    pub(crate) fn new(revoked: impl IntoIterator<Item = String>) -> Revocations {
        Revocations {
            revoked: Mutex::new(revoked.into_iter().collect()),
            live: Mutex::default(),
        }
    }

    /// Whether `jti` is revoked.
    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        lock(&self.revoked).contains(jti)
    }

    /// Revoke `jti` (already stored) and end every connection it opened.
    pub(crate) fn revoke(&self, jti: &str) {
        lock(&self.revoked).insert(jti.to_owned());
        let ended = lock(&self.live).remove(jti).unwrap_or_default();
        for (_, end) in ended {
            end.cancel();
        }
    }

    /// Register connection `conn_id` opened with token `jti`: `end` is
    /// cancelled if the token is revoked while it is open (at once if it
    /// already is).
    pub(crate) fn watch(
        &self,
        jti: &str,
        conn_id: u64,
        end: CancellationToken,
    ) -> LiveConnection<'_> {
        lock(&self.live)
            .entry(jti.to_owned())
            .or_default()
            .push((conn_id, end.clone()));
        // A revocation between the check and the registration is not missed.
        if self.is_revoked(jti) {
            end.cancel();
        }
        LiveConnection {
            revocations: self,
            jti: jti.to_owned(),
            conn_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_ends_the_tokens_connections_only() {
        let r = Revocations::new(["old".to_owned()]);
        assert!(r.is_revoked("old") && !r.is_revoked("a"));
        let (a1, a2, b) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let _w1 = r.watch("a", 1, a1.clone());
        let w2 = r.watch("a", 2, a2.clone());
        let _w3 = r.watch("b", 3, b.clone());
        drop(w2);
        r.revoke("a");
        assert!(a1.is_cancelled());
        assert!(!a2.is_cancelled(), "a closed connection is forgotten");
        assert!(!b.is_cancelled());
        let late = CancellationToken::new();
        let _w4 = r.watch("a", 4, late.clone());
        assert!(late.is_cancelled(), "a revoked token ends at once");
    }
}
