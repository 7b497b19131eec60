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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_is_kept_below_the_open_file_limit() {
        let mut config = Config::with_defaults(
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            "unused".into(),
        );
        config.max_connections = usize::MAX;
        fit_connections(&mut config);
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
        if hard < u64::MAX {
            assert_eq!(soft, hard, "raised to the hard limit");
        }
        assert_eq!(
            config.max_connections as u64,
            soft.saturating_sub(RESERVE),
            "lowered to leave the reserve"
        );
        // A setting that fits is left alone.
        config.max_connections = 10;
        fit_connections(&mut config);
        assert_eq!(config.max_connections, 10);
    }
}
