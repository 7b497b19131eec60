//! The clock of every time rule: this process's clock plus an offset to the
//! clock of the storage several nodes share (PostgreSQL's), so that a node
//! whose clock is off changes nothing but its own log lines (token expiry,
//! revocations, op and conflict-copy times). On SQLite the offset stays 0.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::storage::Storage;

/// Milliseconds to add to this process's clock.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// An offset above this is reported (once per change of that size).
const REPORT_ABOVE_MS: i64 = 2_000;

/// How often a node on shared storage measures the offset again.
pub(crate) const MEASURE_EVERY: Duration = Duration::from_secs(60);

/// This process's own clock, in milliseconds since the Unix epoch.
fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now, in milliseconds since the Unix epoch, by the shared clock.
pub(crate) fn now_ms() -> i64 {
    system_ms().saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Now, in Unix seconds, by the shared clock.
pub(crate) fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// How long until Unix second `second` is over, by the shared clock.
pub(crate) fn until_past(second: u64) -> Duration {
    let end_ms = i64::try_from(second.saturating_add(1).saturating_mul(1000)).unwrap_or(i64::MAX);
    Duration::from_millis(u64::try_from(end_ms.saturating_sub(now_ms())).unwrap_or(0))
}

/// Measure the offset to `storage`'s clock, if it has one that counts (a
/// store several nodes share), and use it from now on. Blocking.
pub(crate) fn measure(storage: &dyn Storage) {
    let before = system_ms();
    let theirs = match storage.clock_ms() {
        Ok(Some(ms)) => ms,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the database's clock; keeping the last offset");
            return;
        }
    };
    let after = system_ms();
    let offset = theirs - (before + (after - before) / 2);
    let previous = OFFSET_MS.swap(offset, Ordering::Relaxed);
    if offset.abs() > REPORT_ABOVE_MS && (offset - previous).abs() > REPORT_ABOVE_MS {
        tracing::warn!(
            offset_ms = offset,
            "this node's clock is off from the database's; every time rule uses the database's clock"
        );
    }
}

/// On storage several nodes share: measure the offset now and then every
/// [`MEASURE_EVERY`], for as long as the process runs.
pub(crate) async fn follow(storage: std::sync::Arc<dyn Storage>) {
    loop {
        tokio::time::sleep(MEASURE_EVERY).await;
        let storage = storage.clone();
        let _ = tokio::task::spawn_blocking(move || measure(storage.as_ref())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_past_counts_to_the_end_of_the_second() {
        let now = now_secs();
        assert!(until_past(now) <= Duration::from_secs(1));
        assert!(until_past(now + 10) > Duration::from_secs(10));
        assert_eq!(until_past(now.saturating_sub(5)), Duration::ZERO);
    }
}
