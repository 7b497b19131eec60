//! File descriptors: every connection holds one, and storage needs a few
//! (SQLite, its WAL, the commit logs, temporary files). The server raises its
//! soft `RLIMIT_NOFILE` to the hard limit at start and keeps
//! `--max-connections` below it, with a reserve for storage and listeners,
//! so that an `accept` storm runs into the connection limit (a typed 503)
//! rather than into `EMFILE` in the middle of a commit.

use crate::config::Config;

/// Descriptors kept back from connections: storage files, listeners, the
/// metrics listener, TLS files, logs, and the sockets of refused requests.
pub(crate) const RESERVE: u64 = 256;

/// Raise the soft descriptor limit to the hard one and clamp
/// `config.max_connections` to what it leaves after [`RESERVE`].
pub(crate) fn fit_connections(config: &mut Config) {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            return;
        }
    };
    let room = usize::try_from(soft.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
    if config.max_connections > room {
        tracing::warn!(
            open_file_limit = soft,
            reserve = RESERVE,
            requested = config.max_connections,
            max_connections = room,
            "--max-connections is above what the open-file limit allows; lowered"
        );
        config.max_connections = room;
    } else {
        tracing::debug!(open_file_limit = soft, "open-file limit");
    }
}
