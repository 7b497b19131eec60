//! Telling a data directory restored from a backup (or otherwise missing
//! acknowledged commits) from a normal restart, on open.
//!
//! The database keeps three meta rows for it:
//!
//! - `instance`: a random id drawn when the database is created. Every
//!   commit log's reset marker names it (see `oplog.rs`).
//! - `log_lsn`: the lsn of the last commit-log record whose items are in the
//!   tables, written in the same transaction as those items.
//! - `dir_identity`: the identity (inode, creation time) of the data
//!   directory's lock file (see `dir_lock.rs`), which is created once and
//!   never replaced.
//!
//! On open, before the logs are replayed, [`check_logs`] compares the logs
//! with `log_lsn` and `instance`, and [`check_identity`] the lock file with
//! `dir_identity`; any reason found changes the storage epoch (clients
//! resync: PROTOCOL.md's epoch rule) and is logged as an error. What this
//! detects and what it cannot is listed in ARCHITECTURE.md ("Storage faults").

use rusqlite::Connection;

use super::schema::{meta_get, meta_set};
use crate::storage::oplog::OpLog;
use crate::storage::StorageError;

/// The database's instance id, drawn and stored when it has none.
pub(super) fn instance(conn: &Connection) -> Result<u64, StorageError> {
    if let Some(text) = meta_get(conn, "instance")? {
        return u64::from_str_radix(&text, 16)
            .map_err(|_| StorageError::Corrupt(format!("bad instance in meta: {text:?}")));
    }
    // Never 0: a marker of an older build has no instance.
    let instance = rand::random::<u64>().max(1);
    meta_set(conn, "instance", &format!("{instance:016x}"))?;
    Ok(instance)
}

/// The lsn of the last commit-log record stored in the tables (`None`:
/// a new database, or one written by a build that kept none).
pub(super) fn stored_lsn(conn: &Connection) -> Result<Option<u64>, StorageError> {
    meta_get(conn, "log_lsn")?
        .map(|text| {
            text.parse()
                .map_err(|_| StorageError::Corrupt(format!("bad log_lsn in meta: {text:?}")))
        })
        .transpose()
}

/// Record (inside the transaction that stores its items) that the records up
/// to `lsn` are in the tables; never lowers the stored lsn.
pub(super) fn record_lsn(conn: &Connection, lsn: u64) -> Result<(), StorageError> {
    if stored_lsn(conn)?.is_some_and(|stored| stored >= lsn) {
        return Ok(());
    }
    meta_set(conn, "log_lsn", &lsn.to_string())
}

/// Why the commit logs show that acknowledged commits are missing from
/// both the logs and the database; empty when they do not.
///
/// `db_lsn` is the database's `log_lsn`, `instance` its instance id, `logs`
/// both logs as just opened (before any reset).
pub(super) fn check_logs(db_lsn: Option<u64>, instance: u64, logs: &[&OpLog]) -> Vec<String> {
    let mut lost = Vec::new();
    for log in logs {
        if let Some((expected, later)) = log.found().damage {
            lost.push(format!(
                "{}: the record with lsn {expected} is damaged but records up to lsn {later} follow it: \
                 acknowledged commits were lost",
                log.path().display()
            ));
        }
        if let Some(other) = log.found().instance.filter(|&i| i != instance) {
            lost.push(format!(
                "{} belongs to database instance {other:016x}, not {instance:016x}: \
                 the database or the log was copied from elsewhere",
                log.path().display()
            ));
        }
    }
    // Without a stored lsn (a new database, or the first open after an
    // upgrade) there is nothing to compare.
    let Some(db_lsn) = db_lsn else {
        return lost;
    };
    let created: Vec<_> = logs.iter().filter(|log| log.found().created).collect();
    if !created.is_empty() {
        for log in created {
            lost.push(format!(
                "{} is missing although the database has stored commits up to lsn {db_lsn}: \
                 records it held may be lost",
                log.path().display()
            ));
        }
        return lost;
    }
    let high = logs.iter().filter_map(|log| log.found().high_lsn).max();
    let Some(high) = high.filter(|&high| high > db_lsn) else {
        // Logs no newer than the database: whatever they hold is stored.
        return lost;
    };
    // Every lsn after the database's up to the newest the logs show must be
    // a record the logs still hold.
    let mut ranges: Vec<(u64, u64)> = logs
        .iter()
        .filter_map(|log| Some((log.first_lsn(), log.last_lsn()?)))
        .collect();
    ranges.sort_unstable();
    let mut next = db_lsn + 1;
    for (first, last) in ranges {
        if first > next {
            break;
        }
        next = next.max(last.saturating_add(1));
    }
    if next <= high {
        lost.push(format!(
            "the database holds commits up to lsn {db_lsn}, the commit logs show that lsn {high} \
             was written, and lsns {next}..={high} are in neither: the database is older than \
             the logs (restored from a backup?)"
        ));
    }
    lost
}

/// Compare the lock file's identity with the one the database stored, and
/// store the current one. A reason when they differ.
pub(super) fn check_identity(
    conn: &Connection,
    identity: &str,
) -> Result<Option<String>, StorageError> {
    let stored = meta_get(conn, "dir_identity")?;
    if stored.as_deref() != Some(identity) {
        meta_set(conn, "dir_identity", identity)?;
    }
    Ok(stored.filter(|s| s != identity).map(|stored| {
        format!(
            "the data directory's lock file is not the one this database was last used with \
             (identity {identity}, was {stored}): the directory was restored or copied \
             (or the lock file was deleted)"
        )
    }))
}

/// Change the epoch (unless it changed already) when `lost` names reasons;
/// each is logged as an error. Returns the epoch and whether it changed.
pub(super) fn change_epoch_if_lost(
    conn: &Connection,
    epoch: u64,
    changed: bool,
    lost: &[String],
) -> Result<(u64, bool), StorageError> {
    for reason in lost {
        tracing::error!(reason = %reason, "storage fault: acknowledged commits may be missing; changing the storage epoch so clients resync");
    }
    if lost.is_empty() || changed {
        return Ok((epoch, changed || !lost.is_empty()));
    }
    let epoch = epoch.saturating_add(1).max(1);
    meta_set(conn, "epoch", &epoch.to_string())?;
    Ok((epoch, true))
}
