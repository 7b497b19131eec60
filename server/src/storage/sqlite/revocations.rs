//! The revoked tokens (table `revoked_tokens`): written at once by an admin,
//! read when the server starts.

use rusqlite::Connection;

use crate::storage::StorageError;

/// Revoke `jti` (a second revocation of the same id keeps the first).
pub(super) fn insert(conn: &Connection, jti: &str, expires: u64) -> Result<(), StorageError> {
    let now_ms = crate::storage::rows::now_ms();
    conn.prepare_cached(
        "INSERT OR IGNORE INTO revoked_tokens (jti, expires, revoked_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(rusqlite::params![
        jti,
        i64::try_from(expires).unwrap_or(i64::MAX),
        now_ms
    ])?;
    Ok(())
}

/// The revoked ids still worth refusing at `now` (an expired token is refused anyway).
pub(super) fn unexpired(conn: &Connection, now: u64) -> Result<Vec<String>, StorageError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let mut statement =
        conn.prepare_cached("SELECT jti FROM revoked_tokens WHERE expires >= ?1")?;
    let rows = statement.query_map([now], |row| row.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
