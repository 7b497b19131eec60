//! The dead-peer check of a connection's reader: a peer from which nothing
//! (a frame or a pong) arrived for the liveness limit (a ping interval plus
//! the pong timeout) left a ping unanswered that long, and is closed.
//!
//! Checked a few times per limit against a flag that each frame sets,
//! instead of a timer reset on every frame: that cost a clock read and a
//! timer re-registration per frame on the hot path.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Checks per liveness limit: a silent peer is closed after at least the
/// limit and at most `1 + 1/CHECKS` times it.
const CHECKS: u32 = 4;

/// Whether a peer has been heard from lately.
pub(super) struct Liveness {
    check: Interval,
    heard: bool,
    silent_checks: u32,
}

impl Liveness {
    /// A check for a peer that must be heard from within `limit`.
    pub(super) fn new(limit: Duration) -> Liveness {
        let every = (limit / CHECKS).max(Duration::from_millis(1));
        let mut check = tokio::time::interval_at(Instant::now() + every, every);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Liveness {
            check,
            heard: false,
            silent_checks: 0,
        }
    }

    /// Something arrived from the peer.
    pub(super) fn heard(&mut self) {
        self.heard = true;
    }

    /// Completes once nothing arrived for at least the limit. Cancel-safe
    /// (a `select!` branch): the state lives in `self`.
    pub(super) async fn silent(&mut self) {
        loop {
            self.check.tick().await;
            if std::mem::take(&mut self.heard) {
                self.silent_checks = 0;
            } else {
                self.silent_checks += 1;
                if self.silent_checks >= CHECKS {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_found_after_the_limit_and_a_heard_one_is_not() {
        let limit = Duration::from_secs(40);
        let mut liveness = Liveness::new(limit);
        let started = Instant::now();
        liveness.silent().await;
        let waited = started.elapsed();
        assert!(
            waited >= limit && waited <= limit + limit / CHECKS,
            "{waited:?}"
        );

        // Heard every 30 s (less than the limit): never silent.
        let mut liveness = Liveness::new(limit);
        for _ in 0..10 {
            let heard_soon = tokio::time::sleep(Duration::from_secs(30));
            tokio::select! {
                () = liveness.silent() => panic!("closed a peer that was heard"),
                () = heard_soon => liveness.heard(),
            }
        }
        // Then silent: found at least a limit after the last frame.
        let last_heard = Instant::now();
        liveness.silent().await;
        let waited = last_heard.elapsed();
        assert!(
            waited >= limit && waited <= limit + limit / CHECKS,
            "{waited:?}"
        );
    }
}
