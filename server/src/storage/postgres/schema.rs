//! The PostgreSQL schema and its migrations.
//!
//! Migrations run under `pg_advisory_lock` on a fixed key, so nodes that
//! start together migrate once. Each migration is additive for one release
//! (new tables, new nullable columns), so two consecutive server versions
//! can share a database during a rolling upgrade; a server refuses a
//! database whose schema is newer than it knows, naming both versions.

use deadpool_postgres::{GenericClient, Pool};

use super::connection;
use crate::storage::rows::from_sql_int;
use crate::storage::StorageError;

/// The advisory lock migrations hold ("otserver" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f74_7365_7276_6572;

/// The newest schema this server knows.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Version 1: the same tables as the SQLite store. Texts that may hold any
/// character (snapshots, conflict copies) are `BYTEA` holding UTF-8:
/// PostgreSQL's `TEXT` cannot hold U+0000, which a document may. Ops,
/// records and journals are JSON, where U+0000 is escaped.
const V1: &str = "
CREATE TABLE IF NOT EXISTS docs (
    id         TEXT PRIMARY KEY,
    rev        BIGINT NOT NULL,
    len        BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ops (
    doc       TEXT NOT NULL,
    rev       BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    op_hash   TEXT NOT NULL,
    base_rev  BIGINT NOT NULL,
    received  TEXT NOT NULL,
    applied   TEXT NOT NULL,
    time_ms   BIGINT NOT NULL,
    origin    TEXT,
    PRIMARY KEY (doc, rev)
);
CREATE INDEX IF NOT EXISTS ops_by_seq ON ops (doc, client_id, seq);
CREATE INDEX IF NOT EXISTS ops_conflicts ON ops (doc, rev) WHERE rev > base_rev + 1;
CREATE TABLE IF NOT EXISTS snapshots (
    doc     TEXT NOT NULL,
    rev     BIGINT NOT NULL,
    text    BYTEA NOT NULL,
    clients TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
);
CREATE TABLE IF NOT EXISTS client_keys (
    doc       TEXT NOT NULL,
    client_id TEXT NOT NULL,
    key_hash  TEXT NOT NULL,
    PRIMARY KEY (doc, client_id)
);
CREATE TABLE IF NOT EXISTS deleted_docs (
    id    TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS region_log (
    doc    TEXT NOT NULL,
    n      BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (doc, n)
);
CREATE TABLE IF NOT EXISTS conflict_copies (
    doc     TEXT NOT NULL,
    id      BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    reason  TEXT NOT NULL,
    text    BYTEA NOT NULL,
    PRIMARY KEY (doc, id)
);
CREATE TABLE IF NOT EXISTS region_conflicts (
    doc      TEXT NOT NULL,
    rev      BIGINT NOT NULL,
    conflict TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
);
CREATE TABLE IF NOT EXISTS region_waiting (
    doc     TEXT PRIMARY KEY,
    waiting BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires    BIGINT NOT NULL,
    revoked_ms BIGINT NOT NULL
);
";

/// The migrations, in order: (version reached, statements).
const MIGRATIONS: &[(i64, &str)] = &[(1, V1)];

/// How many migrations there are (a new database runs them all).
#[cfg(test)]
pub(super) const MIGRATION_COUNT: usize = MIGRATIONS.len();

/// Bring the schema up to date and return the storage epoch (made from the
/// database's clock the first time) and how many migrations this call ran.
pub(super) async fn migrate(pool: &Pool) -> Result<(u64, usize), StorageError> {
    let mut client = connection(pool).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(&mut client).await;
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
    {
        tracing::warn!(error = %e, "cannot release the migration lock (it goes with the session)");
    }
    result
}

async fn migrate_locked(
    client: &mut deadpool_postgres::Object,
) -> Result<(u64, usize), StorageError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .await?;
    let found = match meta_get(&*client, "schema_version").await? {
        None => 0,
        Some(text) => text
            .parse::<i64>()
            .map_err(|_| StorageError::Corrupt(format!("bad schema version in meta: {text:?}")))?,
    };
    if found > SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew {
            found: found.to_string(),
            known: SCHEMA_VERSION.to_string(),
        });
    }
    let mut ran = 0;
    for &(version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let tx = client.transaction().await?;
        tx.batch_execute(statements).await?;
        meta_set(&tx, "schema_version", &version.to_string()).await?;
        tx.commit().await?;
        tracing::info!(from = found, to = version, "migrated the PostgreSQL schema");
        ran += 1;
    }
    // The epoch comes from the database's clock, the same for every node.
    client
        .execute(
            "INSERT INTO meta (key, value)
             VALUES ('epoch', (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint::text)
             ON CONFLICT (key) DO NOTHING",
            &[],
        )
        .await?;
    let text = meta_get(&*client, "epoch")
        .await?
        .ok_or_else(|| StorageError::Corrupt("no epoch in meta".into()))?;
    let epoch = text
        .parse::<i64>()
        .map_err(|_| StorageError::Corrupt(format!("bad epoch in meta: {text:?}")))?;
    Ok((from_sql_int(epoch, "epoch")?, ran))
}

async fn meta_get(client: &impl GenericClient, key: &str) -> Result<Option<String>, StorageError> {
    let row = client
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

async fn meta_set(client: &impl GenericClient, key: &str, value: &str) -> Result<(), StorageError> {
    client
        .execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await?;
    Ok(())
}

/// Raise the epoch past itself, the database's clock and every deleted
/// generation's epoch (so no document shows an epoch a client saw before).
pub(super) async fn bump_epoch(pool: &Pool) -> Result<u64, StorageError> {
    let client = connection(pool).await?;
    let row = client
        .query_one(
            "UPDATE meta SET value = GREATEST(
                 value::bigint + 1,
                 (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint,
                 (SELECT COALESCE(MAX(epoch), 0) + 2 FROM deleted_docs)
             )::text
             WHERE key = 'epoch' RETURNING value",
            &[],
        )
        .await?;
    let text: String = row.try_get(0)?;
    let epoch = text
        .parse::<i64>()
        .map_err(|_| StorageError::Corrupt(format!("bad epoch in meta: {text:?}")))?;
    from_sql_int(epoch, "epoch")
}

/// The node setting `key` (kept in `meta` as `node:<key>`), storing
/// `proposed` first if there is none (see `Storage::node_setting`).
pub(super) async fn node_setting(
    pool: &Pool,
    key: &str,
    proposed: Option<&str>,
) -> Result<Option<String>, StorageError> {
    let client = connection(pool).await?;
    let key = format!("node:{key}");
    if let Some(value) = proposed {
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .await?;
    }
    meta_get(&client, &key).await
}
