//! `GET /ws/{doc}`: check the request and its credentials (the document's
//! actor says whether the connection may speak for its client id: 403 before
//! the upgrade if not), upgrade, join the document (or refuse with an error
//! and a close code), then hand the socket to the reader.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use ot_core::history::KeyHash;
use ot_protocol::{
    is_link_id, Access, ApiErrorCode, ClientId, CloseCode, DocId, ErrorCode, LINK_ID_PREFIX,
    SUBPROTOCOL,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::batching::Framing;
use super::peer::{client_addr, AddrSlot, PeerAddr};
use super::reader;
use crate::api_error::ApiError;
use crate::app::Shared;
use crate::auth::{key_hash, subject_key_hash, Caller, Credentials};
use crate::document::{
    self, DocCommand, DocError, DocHandle, JoinError, JoinRequest, JOIN_TIMEOUT,
};
use crate::outbound::{close_frame, error_frame};
use crate::outbound_queue::{outbound_queue, OutboundTx};

/// What the client asked for in the upgrade request.
struct Request {
    doc: DocId,
    client_id: ClientId,
    /// The hash of the key the connection presented.
    key_hash: Option<KeyHash>,
    /// With a token: the hash of the key alone, which an id bound before
    /// authentication was turned on still answers to.
    key_only_hash: Option<KeyHash>,
    /// The key itself (hashed with the token's subject when there is one).
    client_key: Option<ot_protocol::ClientKey>,
    /// The revision to resume from.
    rev: Option<u64>,
    /// The epoch the client last saw.
    epoch: Option<u64>,
    /// One message per frame, or batches (`batch=1`).
    framing: Framing,
}

/// What the caller may do on the connection.
struct Permit {
    /// The caller's level on the document.
    access: Access,
    /// Who (with the token, if authentication is on).
    caller: Caller,
}

impl Request {
    fn parse(
        doc: &str,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Request, ApiError> {
        let doc = DocId::parse(doc).map_err(ApiError::invalid_id)?;
        let client_id = match params.get("client") {
            Some(id) => ClientId::parse(id).map_err(ApiError::invalid_id)?,
            None => ClientId::random(),
        };
        let number = |key: &str| -> Result<Option<u64>, ApiError> {
            params
                .get(key)
                .map(|v| {
                    v.parse::<u64>()
                        .ok()
                        .filter(|n| *n <= ot_core::MAX_SAFE_INTEGER)
                        .ok_or_else(|| ApiError::invalid_query(key))
                })
                .transpose()
        };
        // Never from the query string (see `credentials`).
        let credentials = Credentials::from_headers(headers).map_err(|e| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                ApiErrorCode::Protocol(ErrorCode::Forbidden),
                e.to_string(),
            )
        })?;
        Ok(Request {
            doc,
            client_id,
            key_hash: credentials.key_hash(),
            key_only_hash: None,
            client_key: credentials.client_key,
            rev: number("rev")?,
            epoch: number("epoch")?,
            // Any other value (or none) keeps today's one message per frame.
            framing: match params.get("batch").map(String::as_str) {
                Some("1") => Framing::Batches,
                _ => Framing::OnePerMessage,
            },
        })
    }
}

/// `GET /ws/{doc}?client=ID&rev=R&epoch=E&batch=1` (a token, if needed, in the
/// `Authorization` header or the `ot.bearer.` subprotocol: see [`Caller`]).
pub(crate) async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    peer: Option<Extension<PeerAddr>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let mut request = match Request::parse(&doc, &params, &headers) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let permit = match caller.require(&request.doc, Access::Read) {
        Ok(access) => Permit { access, caller },
        Err(e) => return e.into_response(),
    };
    // A link id is a regional server's: the limits it is exempt from are
    // only for a token that says so.
    let link = is_link_id(request.client_id.as_str());
    if link && permit.access < Access::Region {
        return ApiError::forbidden(format!(
            "client ids starting with `{LINK_ID_PREFIX}` are regional servers' links and need `region` access"
        ))
        .into_response();
    }
    // With a token, a new binding is to the key and the token's subject.
    if let (Some(grant), Some(key)) = (permit.caller.grant(), &request.client_key) {
        request.key_only_hash = Some(key_hash(key));
        request.key_hash = Some(subject_key_hash(key, &grant.claims.sub));
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if shared.shutdown.is_cancelled() {
        return ApiError::shutting_down().into_response();
    }
    if shared.connections.load(Ordering::Relaxed) >= shared.config.max_connections {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiErrorCode::TooManyConnections,
            "the server has too many connections",
        )
        .into_response();
    }
    // Counted before the document is asked anything: a flood from one
    // address costs no actor work. Held for the connection's life.
    // A regional server carries many documents' links from one address; only
    // a token's grant exempts them (without authentication anyone could pick
    // an `r-` id to escape the per-address limit).
    let link_uncounted = link && permit.caller.grant().is_some();
    let addr_slot = match peer {
        Some(_) if link_uncounted => None,
        Some(Extension(PeerAddr(peer))) => {
            let addr = client_addr(peer.ip(), &headers, &shared.config.trusted_proxy);
            match shared
                .addr_counts
                .take(addr, shared.config.max_connections_per_addr)
            {
                Some(slot) => Some(slot),
                None => {
                    tracing::info!(%addr, "refused a connection: too many from its address");
                    shared
                        .metrics
                        .refused
                        .with_label_values(&["per_addr"])
                        .inc();
                    return ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        ApiErrorCode::TooManyConnections,
                        "too many connections from this address",
                    )
                    .into_response();
                }
            }
        }
        // Only a router used without the accept loop has no peer.
        None => None,
    };
    let mut authorized = authorize_in_time(&shared, &request).await;
    if matches!(authorized, Err(JoinError::Forbidden)) && request.key_only_hash.is_some() {
        // Bound before authentication was on: the key alone still counts.
        request.key_hash = request.key_only_hash.take();
        authorized = authorize_in_time(&shared, &request).await;
    }
    // A region that cannot open a document because its home cannot be
    // reached says so after the upgrade (an error frame, then 1011), where
    // every client (a browser too) can read why.
    let mut refused = None;
    match authorized {
        Ok(()) => {}
        Err(JoinError::Unavailable(e)) if matches!(*e, DocError::Upstream(_)) => {
            refused = Some(JoinError::Unavailable(e));
        }
        Err(JoinError::Forbidden) => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                ApiErrorCode::Protocol(ErrorCode::Forbidden),
                JoinError::Forbidden.to_string(),
            )
            .into_response()
        }
        Err(JoinError::ShuttingDown) => return ApiError::shutting_down().into_response(),
        Err(e) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ApiErrorCode::Protocol(ErrorCode::StorageError),
                e.to_string(),
            )
            .into_response()
        }
    }
    let config = &shared.config;
    // Frames larger than our own message limit are still read (up to 4×) so the
    // client gets a typed error and keeps its connection; beyond that the socket closes.
    let hard_limit = config.max_message_bytes.saturating_mul(4);
    let largest_outgoing = config.max_doc_len.saturating_mul(4).saturating_add(1 << 20);
    upgrade
        // Only `ot.v1` is ever selected and echoed: a browser offers its key
        // as a second entry (`ot.key.…`), which must not come back.
        .protocols([SUBPROTOCOL])
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        // tungstenite zero-fills its whole read buffer before each socket read: a
        // small buffer keeps that cheap (it was 17% of CPU at 64 docs × 4 clients).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(largest_outgoing.max(64 << 20))
        .on_upgrade(move |socket| {
            let tasks = shared.tasks.clone();
            tasks.track_future(connection(
                shared, socket, request, permit, addr_slot, refused,
            ))
        })
}

/// [`authorize`] within the join deadline: a document that does not answer
/// in time (loading, busy, stuck) gets the upgrade refused with 503 (retry
/// later) instead of holding the request.
async fn authorize_in_time(shared: &Arc<Shared>, request: &Request) -> Result<(), JoinError> {
    within_join_deadline(shared, request, authorize(shared, request)).await
}

/// `step` (a wait on the document for this request) within the join
/// deadline (`--join-timeout-secs`); past it, the document counts as
/// unavailable, and `ot_connection_limits_total{reason="join_timeout"}`
/// counts it.
async fn within_join_deadline<T>(
    shared: &Shared,
    request: &Request,
    step: impl Future<Output = Result<T, JoinError>>,
) -> Result<T, JoinError> {
    tokio::time::timeout(shared.config.join_timeout(), step)
        .await
        .unwrap_or_else(|_| {
            tracing::info!(doc = %request.doc, client = %request.client_id, "the document did not answer in time");
            shared
                .metrics
                .refused
                .with_label_values(&["join_timeout"])
                .inc();
            Err(unavailable_unless_stopping(shared, DocError::NoAnswer))
        })
}

/// A document that did not answer: a failure (1011), unless the server is
/// shutting down, when documents stop on purpose and are not reopened; the
/// client is then told the server is going away (1001).
fn unavailable_unless_stopping(shared: &Shared, error: DocError) -> JoinError {
    if shared.shutdown.is_cancelled() {
        JoinError::ShuttingDown
    } else {
        JoinError::Unavailable(Arc::new(error))
    }
}

/// Ask the document's actor whether the request may speak for its client id
/// (binding an unbound id to its key, durably), retrying if the actor was
/// just unloading.
async fn authorize(shared: &Arc<Shared>, request: &Request) -> Result<(), JoinError> {
    for _ in 0..8 {
        if shared.shutdown.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        let handle = document::open(shared.services(), &shared.registry, &request.doc);
        let (reply_tx, reply_rx) = oneshot::channel();
        let command = DocCommand::Authorize {
            client_id: request.client_id.clone(),
            key_hash: request.key_hash,
            epoch: request.epoch,
            reply: reply_tx,
        };
        if handle.tx.send(command).await.is_err() {
            continue; // the actor stopped: open again
        }
        match tokio::time::timeout(JOIN_TIMEOUT, reply_rx).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(JoinError::Retry))) | Ok(Err(_)) => continue,
            Ok(Ok(Err(e))) => return Err(e),
            Err(_) => return Err(unavailable_unless_stopping(shared, DocError::NoAnswer)),
        }
    }
    Err(unavailable_unless_stopping(shared, DocError::KeptUnloading))
}

/// Join the document, retrying if its actor was just unloading.
async fn join(
    shared: &Arc<Shared>,
    request: &Request,
    access: Access,
    conn_id: u64,
    out: &OutboundTx,
) -> Result<(DocHandle, oneshot::Receiver<CloseCode>), JoinError> {
    for _ in 0..8 {
        if shared.shutdown.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        let handle = document::open(shared.services(), &shared.registry, &request.doc);
        let (kick_tx, kick_rx) = oneshot::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let join = JoinRequest {
            conn_id,
            client_id: request.client_id.clone(),
            key_hash: request.key_hash,
            rev: request.rev,
            epoch: request.epoch,
            access,
            out: out.clone(),
            kick: kick_tx,
        };
        if handle
            .tx
            .send(DocCommand::Join(join, reply_tx))
            .await
            .is_err()
        {
            continue; // the actor stopped: open again
        }
        match tokio::time::timeout(JOIN_TIMEOUT, reply_rx).await {
            Ok(Ok(Ok(()))) => return Ok((handle, kick_rx)),
            Ok(Ok(Err(JoinError::Retry))) | Ok(Err(_)) => continue,
            Ok(Ok(Err(e))) => return Err(e),
            Err(_) => return Err(unavailable_unless_stopping(shared, DocError::NoAnswer)),
        }
    }
    Err(unavailable_unless_stopping(shared, DocError::KeptUnloading))
}

async fn connection(
    shared: Arc<Shared>,
    mut socket: WebSocket,
    request: Request,
    permit: Permit,
    // Uncounts the address when the connection ends.
    _addr_slot: Option<AddrSlot>,
    // Refused already (told after the upgrade).
    refused: Option<JoinError>,
) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections.inc();
    let conn_id = shared.next_conn_id();
    let (out_tx, out_rx) = outbound_queue(
        shared.config.outbound_queue.max(16),
        shared.config.outbound_queue_bytes,
    );
    // The join deadline: a document that does not answer in time (busy,
    // loading, stuck) gets the client told to retry instead of holding the
    // socket. A late answer finds the queue gone and does not register it.
    let joined = match refused {
        Some(refused) => Err(refused),
        None => {
            within_join_deadline(
                &shared,
                &request,
                join(&shared, &request, permit.access, conn_id, &out_tx),
            )
            .await
        }
    };
    match joined {
        Ok((handle, kick_rx)) => {
            tracing::debug!(doc = %request.doc, client = %request.client_id, conn_id, "joined");
            // Cancelled when the token expires or is revoked.
            let ends = CancellationToken::new();
            let _watch = permit.caller.grant().and_then(|grant| {
                let auth = shared.auth.as_ref()?;
                let end_in = crate::auth::time_until_past(auth.ends_at(grant));
                let timer = ends.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(end_in) => timer.cancel(),
                        _ = timer.cancelled() => {}
                    }
                });
                Some(
                    auth.revocations
                        .watch(&grant.claims.jti, conn_id, ends.clone()),
                )
            });
            let conn = reader::Conn {
                doc: &request.doc,
                conn_id,
                access: permit.access,
                name: permit.caller.grant().map(|g| g.name().to_owned()),
                ends: ends.clone(),
                framing: request.framing,
                link: is_link_id(request.client_id.as_str()),
            };
            reader::run(&shared, socket, conn, handle, (out_tx, out_rx), kick_rx).await;
            // Stops the expiry timer.
            ends.cancel();
        }
        Err(JoinError::Deleted) => {
            // Nothing before the close: the client must not take this
            // generation for the one it saw (it keeps its edits as a
            // conflict copy and connects afresh).
            tracing::info!(doc = %request.doc, client = %request.client_id, "closed a client of a deleted document with 4004");
            let _ = tokio::time::timeout(
                shared.config.write_timeout(),
                socket.send(Message::Close(Some(close_frame(
                    CloseCode::DocumentDeleted,
                )))),
            )
            .await;
        }
        Err(e) => {
            let (code, close) = match &e {
                JoinError::TooManyClients => (ErrorCode::TooManyClients, CloseCode::Full),
                JoinError::ShuttingDown => (ErrorCode::ShuttingDown, CloseCode::GoingAway),
                // The id was bound to another key between the check and the
                // join (a race): stop, like any policy violation.
                JoinError::Forbidden => (ErrorCode::Forbidden, CloseCode::Abusive),
                JoinError::Unavailable(_) | JoinError::Retry | JoinError::Deleted => {
                    (ErrorCode::StorageError, CloseCode::Unavailable)
                }
            };
            let frame = error_frame(&shared.metrics, code, &e.to_string(), None);
            let _ = tokio::time::timeout(shared.config.write_timeout(), async {
                let _ = socket.send(Message::Text(frame)).await;
                let _ = socket.send(Message::Close(Some(close_frame(close)))).await;
            })
            .await;
        }
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.connections.dec();
}
