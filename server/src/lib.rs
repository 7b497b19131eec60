//! The collaborative editing server: one actor per open document orders its
//! ops (ot-core's `DocumentHistory`), makes them durable through a group-commit
//! queue in front of SQLite, then acks and rebroadcasts them over WebSocket.
//!
//! `run` is what the binary calls; tests call [`start`] to get a server on a
//! free loopback port.

mod admin;
mod admin_docs;
mod api_error;
mod api_limit;
mod app;
pub mod auth;
mod banner;
mod clock;
mod config;
mod conflict_replay;
mod connection;
mod document;
mod fd_limit;
mod guard;
mod http;
mod metrics;
mod node_id;
mod outbound;
mod outbound_queue;
mod pages;
mod presence;
mod state;
mod storage;
mod tls;
pub mod token_command;
mod upstream;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::{delete, get, post};
use axum::Router;
use tokio_rustls::TlsAcceptor;

use api_error::ApiError;
use app::Shared;
pub use config::{Command, Config, EpochArgs, EpochCommand};
pub use connection::{TrustedProxy, TrustedProxyError};
use metrics::Metrics;
use state::Services;
use storage::{
    CommitOptions, CommitQueue, Durability, PgOptions, PgStorage, SqliteStorage, Storage,
};

/// The HTTP and WebSocket routes.
fn router(shared: Arc<Shared>) -> Router {
    // `/api` requests share `--max-api-requests` permits (see `api_limit`).
    let api = Router::new()
        .route("/api/docs", get(http::list_docs))
        .route("/api/docs/{doc}", get(http::get_doc))
        .route("/api/docs/{doc}/text", get(http::get_text))
        .route("/api/docs/{doc}/ops", get(http::get_ops))
        .route("/api/docs/{doc}/conflicts", get(http::get_conflicts))
        .route("/api/docs/{doc}/copies", get(http::get_copies))
        .route(
            "/api/docs/{doc}/conflicts/upstream",
            get(http::get_upstream_conflicts),
        )
        .route("/api/docs/{doc}/replication", get(http::get_replication))
        .route("/api/admin/revoke", post(admin::revoke))
        .route("/api/admin/docs/{doc}", delete(admin_docs::delete_doc))
        .route("/api/admin/docs/{doc}/export", get(admin_docs::export_doc))
        .route(
            "/api/admin/docs/{doc}/conflicts/replay",
            post(conflict_replay::replay_conflicts),
        )
        .route(
            "/api/admin/docs/{doc}/conflicts/upstream/replay",
            post(conflict_replay::replay_upstream_conflicts),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api_limit::limit,
        ));
    Router::new()
        .route("/ws/{doc}", get(connection::ws_handler))
        .merge(api)
        .route("/healthz", get(http::healthz))
        .route("/metrics", get(http::metrics))
        .route("/", get(web::index))
        .route("/d", get(web::open_form))
        .route("/d/{doc}", get(web::editor))
        .route("/static/{file}", get(web::asset))
        .fallback(fallback)
        .with_state(shared)
}

/// The metrics listener's routes (`--metrics-addr`): `GET /metrics` only.
fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(http::metrics))
        .fallback(|| async { ApiError::not_found("this listener serves /metrics only") })
        .with_state(shared)
}

/// Put a listener's Host/Origin guard in front of `app`.
fn guarded(app: Router, guard: guard::Guard) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        Arc::new(guard),
        guard::check,
    ))
}

/// Unknown paths: a malformed WebSocket path is a bad document id (400), anything else 404.
async fn fallback(uri: axum::http::Uri) -> ApiError {
    if uri.path() == "/ws" || uri.path().starts_with("/ws/") {
        ApiError::invalid_id(ot_protocol::IdError::Document)
    } else {
        ApiError::not_found("no such route")
    }
}

/// Serve on `listener` until `shutdown` completes, then shut down gracefully:
/// stop accepting, commit and ack every op in flight, close every socket with a
/// close frame, mark the storage clean.
///
/// Refuses to serve a non-loopback `listener` without authentication unless
/// `--insecure-no-auth` is set, and a bad `--tls-*`, `--allowed-*` or
/// `--public-url`, before touching the storage.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let bound = listener
        .local_addr()
        .context("reading the listening address")?;
    guard::check_binding(&config, bound)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key must be given together"),
    };
    let main_guard = guard::Guard::new(&config, bound, tls.is_some())?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?;
            let bound = listener
                .local_addr()
                .context("reading the metrics address")?;
            let guard = guard::Guard::new(&config, bound, false)?;
            Some((listener, bound, guard))
        }
        None => None,
    };
    let mut config = config;
    fd_limit::fit_connections(&mut config);
    let storage = open_storage(&config)?;
    // Before anything reads the time (token checks, revocations): on shared
    // storage the database's clock counts.
    clock::measure(storage.as_ref());
    if storage.is_shared() {
        tokio::spawn(clock::follow(storage.clone()));
    }
    // The data dir is locked now: settle which node it (or the database
    // several processes share) belongs to.
    config.node_id = match node_id::settle_in_storage(storage.as_ref(), config.node_id.as_deref())?
    {
        Some(in_storage) => in_storage,
        None => node_id::settle(&config.data_dir, config.node_id.as_deref())?,
    };
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    metrics
        .storage_faults
        .set(i64::try_from(storage.faults_at_open()).unwrap_or(i64::MAX));
    let observer_metrics = metrics.clone();
    let ingest_metrics = metrics.clone();
    let queue = CommitQueue::start_with(
        storage.clone(),
        CommitOptions {
            ingest_every: config.ingest_every,
            on_commit: Some(Arc::new(move |elapsed: Duration, items: usize| {
                observer_metrics
                    .commit_latency
                    .observe(elapsed.as_secs_f64());
                observer_metrics.commit_batch.observe(items as f64);
            })),
            on_ingest: Some(Arc::new(move |elapsed: Duration, items: usize| {
                ingest_metrics.ingest_latency.observe(elapsed.as_secs_f64());
                ingest_metrics.ingest_batch.observe(items as f64);
            })),
        },
    );
    let auth =
        auth::Auth::from_config(&config, storage.as_ref()).context("setting up authentication")?;
    let upstream = upstream::from_config(&config, storage.as_ref())?;
    let shared = Arc::new(Shared::new(Services::new(
        config,
        storage.clone(),
        queue.clone(),
        metrics,
        auth,
        upstream,
    )));
    if let Some(feed) = shared.services().storage.subscribe_heads() {
        tokio::spawn(document::follow_heads(
            feed,
            shared.registry.clone(),
            shared.services().storage.clone(),
            shared.services().presence.as_ref().map(|p| p.node()),
        ));
    }
    if shared.services().upstream.is_some() {
        tokio::spawn(document::reopen_region_copies(
            shared.services().clone(),
            shared.registry.clone(),
        ));
    }
    let app = guarded(router(shared.clone()), main_guard);
    let metrics_bound = metrics_listener.as_ref().map(|(_, addr, _)| *addr);
    banner::log(&banner::Start {
        config: &shared.config,
        bound,
        tls: tls.is_some(),
        metrics: metrics_bound,
        epoch: storage.epoch(),
    });
    let token = shared.shutdown.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        token.cancel();
    });
    let main = serve_http(listener, app, tls, &shared);
    match metrics_listener {
        Some((listener, _, guard)) => {
            let metrics_app = guarded(metrics_router(shared.clone()), guard);
            tokio::join!(main, serve_http(listener, metrics_app, None, &shared));
        }
        None => main.await,
    }
    shared.shutdown.cancel();
    shared.registry.shutdown_all().await;
    shared.tasks.close();
    if tokio::time::timeout(Duration::from_secs(30), shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    let flush_queue = queue.clone();
    tokio::task::spawn_blocking(move || flush_queue.flush_blocking())
        .await
        .context("flushing commits")?;
    storage.close_clean().context("marking a clean shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Accept HTTP connections (HTTPS with `tls`) until shutdown. Each connection
/// gets the handshake timeout for its TLS handshake and again as its
/// header-read timeout, so a client that opens a socket and never completes
/// its handshake, request or upgrade is dropped.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shared: &Arc<Shared>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = shared.config.handshake_timeout();
        tokio::spawn(async move {
            // hyper's header timeout starts with the first byte: also drop
            // connections that never send one.
            let mut first = [0u8; 1];
            match tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            // The peer's address, for the per-address connection limit.
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(connection::PeerAddr(peer));
                app.clone().oneshot(request)
            });
            match tls {
                None => {
                    let io = TokioIo::new(stream);
                    let connection = builder.serve_connection_with_upgrades(io, service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let io = TokioIo::new(stream);
                    let connection = builder.serve_connection_with_upgrades(io, service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
            }
        });
    }
    // Upgraded WebSocket connections are not HTTP connections any more: they are
    // closed by their documents; plain HTTP requests get a few seconds to finish.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// A server running in this process (for tests and examples).
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Shut down gracefully and wait for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("server task")?
    }
}

/// Start a server on `config.addr` (use port 0 for a free port) in this process.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, listener, async move {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        task,
    })
}

/// The storage `config` names: PostgreSQL with `--database-url`, else the
/// embedded SQLite in the data dir.
fn open_storage(config: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    let Some(url) = &config.database_url else {
        let sqlite = SqliteStorage::open(&config.data_dir, config.durability)
            .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
        return Ok(Arc::new(sqlite));
    };
    if config.durability != Durability::Fsync {
        anyhow::bail!(
            "--database-url needs --durability fsync: acks on PostgreSQL are always durable \
             (synchronous_commit = on), and a relaxed mode would lose acknowledged commits \
             without any node knowing to change the epoch"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let postgres = PgStorage::open(&PgOptions {
        url: url.clone(),
        commit_connections: config.database_commit_connections,
        read_connections: config.database_read_connections,
        timeout: config.storage_timeout,
        ca_file: config.database_ca_file.clone(),
    })
    .context("opening the PostgreSQL database (--database-url)")?;
    Ok(Arc::new(postgres))
}

/// `server epoch bump`: raise a PostgreSQL database's storage epoch;
/// returns (old, new).
pub fn bump_epoch(url: &str, ca_file: Option<std::path::PathBuf>) -> anyhow::Result<(u64, u64)> {
    let storage = PgStorage::open(&PgOptions {
        url: url.to_owned(),
        commit_connections: 1,
        read_connections: 1,
        timeout: Duration::from_secs(10),
        ca_file,
    })
    .context("opening the PostgreSQL database")?;
    let old = storage.epoch();
    let new = storage.bump_epoch().context("raising the epoch")?;
    Ok((old, new))
}
