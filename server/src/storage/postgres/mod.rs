//! Storage on PostgreSQL (`server --database-url`), for several server
//! nodes sharing one database.
//!
//! [`PgStorage`] implements the blocking [`Storage`] trait over
//! `tokio-postgres` with two `deadpool-postgres` pools (commits and reads),
//! driven by a small runtime of its own: a blocking call enters that runtime
//! and waits for its future on the calling thread, so it works from the
//! commit thread, a blocking task or the server's start-up alike.
//!
//! Every session sets `synchronous_commit = on`: a commit returns once
//! PostgreSQL has made it durable, so an ack always means durable. A
//! commit checks each document's head under its row lock and moves it with
//! `UPDATE docs … WHERE rev = h` (a compare-and-set): two writers of one
//! document at one revision never both succeed, the loser gets
//! [`StorageError::Gap`] naming the head it lost to, and nothing of its
//! commit is written.

mod feed;
mod reads;
mod schema;
mod tls;
mod write;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use ot_core::history::OpHash;

use super::{
    ConflictCopy, DocSummary, HeadChange, LoadedDoc, RegionConflict, RegionRecord, Storage,
    StorageError, StoredOp, WriteItem,
};

/// How to reach the database and how many connections to use.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// A libpq-style URL (`postgres://user@host:port/db?options=…`) or
    /// key-value string.
    pub url: String,
    /// Connections that commit (one commit runs on one of them at a time).
    pub commit_connections: usize,
    /// Connections that read (loads, history, listings).
    pub read_connections: usize,
    /// Longest wait for a connection (or to make one): past it the call fails
    /// with [`StorageError::Unavailable`].
    pub timeout: Duration,
    /// More trusted roots (PEM) for the database's certificate, with
    /// `sslmode=require` in the URL.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Storage in a PostgreSQL database (see the module documentation).
pub struct PgStorage {
    /// The runtime that drives the connections; `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    commits: Pool,
    reads: Pool,
    epoch: u64,
    /// The URL without its password, for messages.
    display: String,
    /// The sessions' configuration (the change feed makes its own).
    config: tokio_postgres::Config,
    /// Plain or TLS sessions.
    connector: tls::Connector,
    /// Whether [`Storage::subscribe_heads`] has handed out the feed.
    feed_taken: AtomicBool,
    /// How many schema migrations this node ran when it opened the store.
    migrations_run: usize,
    /// The session holding [`SOLE_PROCESS_LOCK`], once
    /// [`Storage::claim_alone`] got it (kept out of the pool for good).
    sole: std::sync::Mutex<Option<Object>>,
}

/// The advisory lock of the one process a regional server may run on its
/// database ([`Storage::claim_alone`]), with the schema's hash as the
/// second key: the tables live in the session's schema.
const SOLE_PROCESS_LOCK: i32 = 0x6f74_7267;

impl fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStorage")
            .field("database", &self.display)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl PgStorage {
    /// Connect, bring the schema up to date (under an advisory lock, so
    /// nodes starting together migrate once) and read the storage epoch.
    /// Refuses a database whose schema is newer than this server knows.
    pub fn open(options: &PgOptions) -> Result<PgStorage, StorageError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StorageError::Unavailable(format!("bad database URL: {e}")))?;
        // Acks must be durable whatever the server's default is.
        let session = format!(
            "{} -c synchronous_commit=on -c client_min_messages=warning",
            config.get_options().unwrap_or_default()
        );
        config.options(session.trim());
        config.connect_timeout(options.timeout);
        config.keepalives(true);
        config.application_name("ot-server");
        let display = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let connector = tls::Connector::for_config(&config, options.ca_file.as_deref())?;
        let commits = pool(
            &config,
            &connector,
            options.commit_connections,
            options.timeout,
        )?;
        let reads = pool(
            &config,
            &connector,
            options.read_connections,
            options.timeout,
        )?;
        let mut storage = PgStorage {
            runtime: Some(runtime),
            handle,
            commits,
            reads,
            epoch: 0,
            display,
            config,
            connector,
            feed_taken: AtomicBool::new(false),
            migrations_run: 0,
            sole: std::sync::Mutex::new(None),
        };
        (storage.epoch, storage.migrations_run) =
            storage.block_on(schema::migrate(&storage.commits))?;
        tracing::info!(database = %storage.display, epoch = storage.epoch, "opened PostgreSQL storage");
        Ok(storage)
    }

    /// How many schema migrations this node ran when it opened the store
    /// (0 when another node had brought the schema up to date).
    #[cfg(test)]
    pub(super) fn migrations_run(&self) -> usize {
        self.migrations_run
    }

    /// Raise the storage epoch (after a failover that may have lost
    /// acknowledged commits) past the current one and every deleted
    /// generation's, and return it. Nodes read the epoch when they start.
    pub fn bump_epoch(&self) -> Result<u64, StorageError> {
        self.block_on(schema::bump_epoch(&self.commits))
    }

    /// Run `future` to completion on this thread, inside this storage's
    /// runtime (its timers and connection tasks live there).
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _entered = self.handle.enter();
        futures_executor::block_on(future)
    }
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `host:port/dbname` of a configuration, for messages (never the password).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or_default(),
        config.get_dbname().unwrap_or_default()
    )
}

fn pool(
    config: &tokio_postgres::Config,
    connector: &tls::Connector,
    size: usize,
    timeout: Duration,
) -> Result<Pool, StorageError> {
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = connector.manager(config, manager_config);
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StorageError::Unavailable(format!("cannot make a connection pool: {e}")))
}

/// A connection of `pool`, waiting at most the storage timeout.
async fn connection(pool: &Pool) -> Result<Object, StorageError> {
    pool.get().await.map_err(|e| {
        StorageError::Unavailable(format!("no PostgreSQL connection: {}", with_causes(&e)))
    })
}

/// `error` and its causes, `: `-separated (a failed TLS handshake says why
/// only in its cause).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}

impl Storage for PgStorage {
    fn commit(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        if items.is_empty() {
            return Ok(());
        }
        self.block_on(async {
            let heads = write::commit(&self.commits, items).await?;
            // After the transaction, as a statement of its own; best effort.
            if let Err(e) = feed::announce(&self.commits, &heads).await {
                tracing::warn!(error = %e, "cannot announce the new heads (other nodes find them later)");
            }
            Ok(())
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn subscribe_heads(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<HeadChange>> {
        if self.feed_taken.swap(true, Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.handle.spawn(feed::listen(
            self.config.clone(),
            self.connector.clone(),
            tx,
        ));
        Some(rx)
    }

    fn publish_presence(&self, payloads: &[String]) -> Result<(), StorageError> {
        self.block_on(feed::publish_presence(&self.reads, payloads))
    }

    fn last_rev(&self, doc: &str) -> Result<u64, StorageError> {
        Ok(self
            .block_on(reads::doc_rev(&self.reads, doc))?
            .unwrap_or(0))
    }

    fn heads(&self, docs: &[String]) -> Result<Vec<(String, u64)>, StorageError> {
        self.block_on(reads::heads(&self.reads, docs))
    }

    fn claim_alone(&self) -> Result<bool, StorageError> {
        self.block_on(async {
            let client = connection(&self.reads).await?;
            let held: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                    &[&SOLE_PROCESS_LOCK],
                )
                .await?
                .try_get(0)?;
            if held {
                *self.sole.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
            }
            Ok(held)
        })
    }

    fn node_setting(
        &self,
        key: &str,
        proposed: Option<&str>,
    ) -> Result<Option<String>, StorageError> {
        self.block_on(schema::node_setting(&self.commits, key, proposed))
    }

    fn clock_ms(&self) -> Result<Option<i64>, StorageError> {
        self.block_on(reads::clock_ms(&self.reads)).map(Some)
    }

    fn exists(&self, doc: &str) -> Result<bool, StorageError> {
        Ok(self.block_on(reads::doc_rev(&self.reads, doc))?.is_some())
    }

    fn load(&self, doc: &str) -> Result<Option<LoadedDoc>, StorageError> {
        self.block_on(reads::load(&self.reads, doc))
    }

    fn ops(&self, doc: &str, after_rev: u64, limit: usize) -> Result<Vec<StoredOp>, StorageError> {
        self.block_on(reads::ops(&self.reads, doc, after_rev, limit, false))
    }

    fn find_seq(
        &self,
        doc: &str,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<(u64, OpHash)>, StorageError> {
        self.block_on(reads::find_seq(&self.reads, doc, client_id, seq))
    }

    fn text_at(&self, doc: &str, rev: u64) -> Result<Option<String>, StorageError> {
        self.block_on(reads::text_at(&self.reads, doc, rev))
    }

    fn list(&self) -> Result<Vec<DocSummary>, StorageError> {
        self.block_on(reads::list(&self.reads))
    }

    fn conflicts(
        &self,
        doc: &str,
        after_rev: u64,
        limit: usize,
    ) -> Result<Vec<StoredOp>, StorageError> {
        self.block_on(reads::ops(&self.reads, doc, after_rev, limit, true))
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn deleted_epoch(&self, doc: &str) -> Result<Option<u64>, StorageError> {
        self.block_on(reads::deleted_epoch(&self.reads, doc))
    }

    fn region_records(&self, doc: &str) -> Result<Vec<(u64, RegionRecord)>, StorageError> {
        self.block_on(reads::region_records(&self.reads, doc))
    }

    fn conflict_copies(&self, doc: &str) -> Result<Vec<ConflictCopy>, StorageError> {
        self.block_on(reads::conflict_copies(&self.reads, doc))
    }

    fn region_conflicts(
        &self,
        doc: &str,
        after_rev: u64,
        limit: usize,
    ) -> Result<Vec<RegionConflict>, StorageError> {
        self.block_on(reads::region_conflicts(&self.reads, doc, after_rev, limit))
    }

    fn region_docs(&self) -> Result<Vec<String>, StorageError> {
        self.block_on(reads::region_docs(&self.reads))
    }

    /// Nothing to mark: every commit is durable, so a restart never needs
    /// to tell a clean shutdown from a crash.
    fn close_clean(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn revoke_token(&self, jti: &str, expires: u64) -> Result<(), StorageError> {
        self.block_on(write::revoke_token(&self.commits, jti, expires))
    }

    fn revoked_tokens(&self, now: u64) -> Result<Vec<String>, StorageError> {
        self.block_on(reads::revoked_tokens(&self.reads, now))
    }
}

#[cfg(test)]
pub(crate) mod test_db;
#[cfg(test)]
mod tests;
