//! On storage several nodes write (PostgreSQL): a commit that lost the race
//! for the document's head to another node. The node takes its pending ops
//! back, takes the ops the winner committed, and receives its pending ops
//! again from their originals, in the order they arrived (each becomes a
//! journaled conflict: it is transformed past the winner's ops), after a
//! short jittered pause. The retries are bounded: after
//! [`MAX_LOST_IN_A_ROW`] lost races in a row, or [`MAX_RETRYING_FOR`], the
//! pending ops are answered `storage_error` (their senders resend).

use std::time::{Duration, Instant};

use ot_protocol::{CloseCode, ErrorCode};

use super::super::pipeline::{Accepted, Refused, TakenBack};
use super::Document;

/// Lost races in a row after which a document stops retrying.
const MAX_LOST_IN_A_ROW: u32 = 200;

/// How long a document keeps retrying since the first of a run of lost races.
const MAX_RETRYING_FOR: Duration = Duration::from_secs(30);

/// The longest pause before a retry (the pause is random, up to a bound
/// that doubles with each race lost in a row, from 1 ms).
const MAX_PAUSE: Duration = Duration::from_millis(64);

/// A run of races lost in a row by one document.
#[derive(Debug, Default)]
pub(super) struct LostRaces {
    in_a_row: u32,
    since: Option<Instant>,
}

impl LostRaces {
    /// A commit of the document succeeded: the run is over.
    pub(super) fn won(&mut self) {
        self.in_a_row = 0;
        self.since = None;
    }

    /// One more race lost; returns whether to retry, and the pause before.
    fn lost(&mut self) -> Option<Duration> {
        self.in_a_row += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.in_a_row > MAX_LOST_IN_A_ROW || since.elapsed() > MAX_RETRYING_FOR {
            self.won();
            return None;
        }
        let bound = Duration::from_millis(1u64 << (self.in_a_row - 1).min(16)).min(MAX_PAUSE);
        Some(bound.mul_f64(rand::random::<f64>()))
    }
}

impl Document {
    /// The commit of this document's pending ops lost the race to another
    /// node. Returns false when they cannot be received again (the caller
    /// fails them and reloads, as after any failed commit).
    pub(super) async fn on_lost_race(&mut self) -> bool {
        self.shared.metrics.lost_races.inc();
        let Some(pause) = self.lost_races.lost() else {
            self.shared.metrics.race_give_ups.inc();
            tracing::warn!(doc = %self.id, "lost the race for the document's head too many times in a row; answering storage_error");
            return false;
        };
        let Some(TakenBack {
            originals,
            unanswered,
        }) = self.pipeline.take_back()
        else {
            return false;
        };
        tracing::debug!(doc = %self.id, pending = originals.len(), ?pause, "lost the race for the document's head; receiving the pending ops again");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        // Whatever was announced meanwhile is read now.
        self.head_announced = None;
        self.take_the_winners_ops().await;
        for (conn_id, client, incoming) in originals {
            let seq = incoming.seq;
            // Also when its connection is gone: the node took the op, as it
            // commits an op whose sender left before the commit (a resend
            // is recognised, here or at the node that has it).
            let Ok(client_id) = ot_protocol::ClientId::parse(&client) else {
                continue;
            };
            if self.stop_with.is_some() || self.shutting_down || self.deleting.is_some() {
                self.send_storage_error(conn_id, seq);
                continue;
            }
            if self.rebasing.contains_key(&conn_id) {
                // A later op of this connection is being rebased: this one
                // cannot go before it now. Its sender resends both.
                self.send_storage_error(conn_id, seq);
                continue;
            }
            self.shared.metrics.race_retries.inc();
            let accepted = self.pipeline.receive(conn_id, &client_id, incoming).await;
            self.answer_retried(conn_id, seq, accepted);
        }
        // Resends of those ops on other connections wait for where the
        // ops were received again.
        for (conn_id, seq) in unanswered {
            let found = self
                .conns
                .client_id(conn_id)
                .and_then(|client| self.pipeline.rev_of(&client, seq));
            match found {
                Some(rev) if rev <= self.pipeline.durable_rev() => {
                    self.conns.ack(conn_id, rev, seq)
                }
                Some(rev) => self.pipeline.ack_when_durable(rev, conn_id, seq),
                None => self.send_storage_error(conn_id, seq),
            }
        }
        true
    }

    /// Take the ops the winner committed after this node's durable head;
    /// far behind, or when they cannot be read, load the document again.
    /// A document deleted at another node stops (4004).
    async fn take_the_winners_ops(&mut self) {
        match self.ops_after_durable_head().await {
            Ok(ops) if ops.is_empty() => {
                // The head moved but no op follows: deleted (or re-created) elsewhere.
                if self.deleted_elsewhere().await {
                    tracing::info!(doc = %self.id, "deleted at another node; closing its connections");
                    self.stop_with = Some(CloseCode::DocumentDeleted);
                }
            }
            Ok(ops) => self.take_committed(ops).await,
            Err(_) => self.reload().await,
        }
    }

    /// Answer an op received again after a lost race, like
    /// [`Document::on_accepted`] but never committing inline: a commit that
    /// already happened goes through the commit channel (the actor's loop
    /// takes it next).
    fn answer_retried(&mut self, conn_id: u64, seq: u64, accepted: Result<Accepted, Refused>) {
        if let Some(done) = self.answer(conn_id, seq, accepted) {
            self.pipeline.redeliver(done);
        }
    }

    pub(super) fn send_storage_error(&mut self, conn_id: u64, seq: u64) {
        self.conns.send_error(
            conn_id,
            ErrorCode::StorageError,
            "the op could not be stored and was not applied; reconnect and resend it",
            Some(seq),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_pause_within_a_doubling_bound_and_stop_after_the_limit() {
        let mut races = LostRaces::default();
        for n in 1..=MAX_LOST_IN_A_ROW {
            let pause = races.lost().unwrap_or(Duration::MAX);
            let bound = Duration::from_millis(1u64 << (n - 1).min(16)).min(MAX_PAUSE);
            assert!(
                pause <= bound,
                "race {n}: paused {pause:?}, bound {bound:?}"
            );
        }
        assert_eq!(races.lost(), None, "the run ends in an error, never a loop");
        // A new run starts from the shortest pause.
        assert!(races.lost().is_some_and(|p| p <= Duration::from_millis(1)));
        races.won();
        assert_eq!(races.in_a_row, 0);
    }
}
