//! The HTTP API: document reads, history, conflicts, health and metrics.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ot_protocol::{Access, ApiErrorCode, DocId, ErrorCode};
use serde_json::json;

use crate::api_error::ApiError;
use crate::app::Shared;
use crate::auth::Caller;
use crate::document::DocCommand;
use crate::pages::{read_page, OpsRead};
use crate::storage::{Storage, StorageError, StoredOp};

/// Most ops one `/ops` or `/conflicts` request returns.
pub(crate) const MAX_PAGE: usize = 1000;

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

pub(crate) fn doc_id(doc: &str) -> ApiResult<DocId> {
    DocId::parse(doc).map_err(ApiError::invalid_id)
}

pub(crate) fn not_found(doc: &DocId) -> ApiError {
    ApiError::not_found(format!("no document `{doc}`"))
}

pub(crate) fn query_u64(
    query: &HashMap<String, String>,
    key: &str,
    default: u64,
) -> ApiResult<u64> {
    match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ApiError::invalid_query(key)),
    }
}

/// Run a blocking storage read off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    read: impl FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
) -> ApiResult<T> {
    let storage = shared.storage.clone();
    match tokio::task::spawn_blocking(move || read(storage.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::storage(&e)),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ApiErrorCode::InternalError,
            "the read task failed",
        )),
    }
}

/// The durable revision and text: from the open document, else from storage.
async fn current(shared: &Arc<Shared>, doc: &DocId) -> ApiResult<Option<(u64, String)>> {
    if let Some(handle) = shared.registry.get(doc) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if handle.tx.send(DocCommand::Read(tx)).await.is_ok() {
            if let Ok(state) = rx.await {
                return Ok(Some(state));
            }
        }
    }
    let id = doc.to_string();
    blocking(shared, move |s| {
        let rev = s.last_rev(&id)?;
        if !s.exists(&id)? {
            return Ok(None);
        }
        Ok(s.text_at(&id, rev)?.map(|text| (rev, text)))
    })
    .await
}

/// `GET /api/docs/{doc}` → `{"rev":N,"text":"…"}`
pub(crate) async fn get_doc(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Read)?;
    match current(&shared, &doc).await? {
        Some((rev, text)) => Ok(Json(json!({ "rev": rev, "text": text })).into_response()),
        None => Err(not_found(&doc)),
    }
}

/// `GET /api/docs/{doc}/text?rev=R` → the text as of revision R (plain text).
pub(crate) async fn get_text(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Read)?;
    let rev = match query.get("rev") {
        None => None,
        Some(_) => Some(query_u64(&query, "rev", 0)?),
    };
    let id = doc.to_string();
    let found = blocking(&shared, move |s| {
        if !s.exists(&id)? {
            return Ok(Err(false));
        }
        let last = s.last_rev(&id)?;
        let rev = rev.unwrap_or(last);
        if rev > last {
            return Ok(Err(true));
        }
        Ok(s.text_at(&id, rev)?.map(|t| (rev, t)).ok_or(false))
    })
    .await?;
    match found {
        Ok((rev, text)) => Ok((
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (
                    header::HeaderName::from_static("x-revision"),
                    rev.to_string(),
                ),
            ],
            text,
        )
            .into_response()),
        Err(true) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::FutureRevision.into(),
            "that revision does not exist yet",
        )),
        Err(false) => Err(not_found(&doc)),
    }
}

/// One page of a document's stored ops: those after `from` (default 0), at
/// most `limit` (default and at most [`MAX_PAGE`]) and about
/// [`crate::pages::PAGE_BYTES`], read by `read`, each
/// written by `to_json`, as `{key: [...]}`.
async fn paged(
    shared: &Arc<Shared>,
    caller: &Caller,
    doc: &str,
    query: &HashMap<String, String>,
    key: &str,
    read: OpsRead,
    to_json: fn(&StoredOp) -> serde_json::Value,
) -> ApiResult {
    let doc = doc_id(doc)?;
    caller.require(&doc, Access::Read)?;
    let from = query_u64(query, "from", 0)?;
    let limit = (query_u64(query, "limit", MAX_PAGE as u64)? as usize).min(MAX_PAGE);
    let id = doc.to_string();
    let ops = blocking(shared, move |s| {
        if !s.exists(&id)? {
            return Ok(None);
        }
        Ok(Some(read_page(s, &id, from, limit, read)?))
    })
    .await?
    .ok_or_else(|| not_found(&doc))?;
    let items: Vec<serde_json::Value> = ops.iter().map(to_json).collect();
    Ok(Json(json!({ key: items })).into_response())
}

/// `GET /api/docs/{doc}/ops?from=R&limit=L` → the ops after revision R (default 0), at most L.
pub(crate) async fn get_ops(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    paged(
        &shared,
        &caller,
        &doc,
        &query,
        "ops",
        |s, doc, from, limit| s.ops(doc, from, limit),
        op_json,
    )
    .await
}

/// A stored op as `/ops` (and the admin export) shows it.
pub(crate) fn op_json(op: &StoredOp) -> serde_json::Value {
    with_origin(
        json!({
            "rev": op.rev,
            "client": op.client_id,
            "seq": op.seq,
            "base_rev": op.base_rev,
            "op": op.applied,
            "received": op.received,
            "hash": op.hash.to_hex(),
            "time_ms": op.time_ms,
        }),
        op,
    )
}

/// `value` with the op's `origin` (see `StoredOrigin`), if it has one.
fn with_origin(mut value: serde_json::Value, op: &StoredOp) -> serde_json::Value {
    if let Some(origin) = &op.origin {
        value["origin"] = serde_json::to_value(origin).unwrap_or_default();
    }
    value
}

/// This server's home, for the calls of a regional server; 404 at a server
/// without `--upstream`.
pub(crate) fn regional(shared: &Shared) -> ApiResult<&crate::upstream::Upstream> {
    shared.services().upstream.as_ref().ok_or_else(|| {
        ApiError::not_found("this server is not a regional server (it runs without --upstream)")
    })
}

/// `GET /api/docs/{doc}/replication` → on a regional server, how far the
/// document is replicated to its home (see `ReplicationStatus`), with the
/// home's address; 404 at a server without `--upstream` or for a document
/// this region holds no copy of. Opens the document (resuming its link).
pub(crate) async fn get_replication(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Read)?;
    let upstream = regional(&shared)?;
    let home = upstream.server.ws();
    let id = doc.to_string();
    if shared.registry.get(&doc).is_none() && !blocking(&shared, move |s| s.exists(&id)).await? {
        return Err(ApiError::not_found(
            "this region holds no copy of the document",
        ));
    }
    let handle = crate::document::open(shared.services(), &shared.registry, &doc);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let status = match handle.tx.send(DocCommand::Replication(tx)).await {
        Ok(()) => rx.await.ok().flatten(),
        Err(_) => None,
    };
    let Some(status) = status else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiErrorCode::Protocol(ot_protocol::ErrorCode::StorageError),
            "the document could not be opened; retry",
        ));
    };
    let mut body = serde_json::to_value(&status).unwrap_or_default();
    body["home"] = json!(home);
    Ok(Json(body).into_response())
}

/// `GET /api/docs/{doc}/conflicts/upstream?from=R&limit=L` → on a regional
/// server, its conflict journal: each op of the home that it transformed
/// past its own unsent work, after regional revision R, at most L (≤ 1000).
pub(crate) async fn get_upstream_conflicts(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Read)?;
    let node = regional(&shared)?
        .link_id
        .as_str()
        .trim_start_matches(ot_protocol::LINK_ID_PREFIX)
        .to_owned();
    let from = query_u64(&query, "from", 0)?;
    let limit = query_u64(&query, "limit", MAX_PAGE as u64)?.min(MAX_PAGE as u64) as usize;
    let id = doc.to_string();
    let conflicts = blocking(&shared, move |s| s.region_conflicts(&id, from, limit)).await?;
    let conflicts: Vec<serde_json::Value> = conflicts
        .into_iter()
        .map(|c| {
            json!({
                "rev": c.rev,
                "home_rev": c.home_rev,
                "author": c.author,
                "author_seq": c.author_seq,
                "received": c.received,
                "transformed_past_local": [c.past_local.0, c.past_local.1],
                "node": node,
                "local": c.local,
                "applied": c.applied,
                "time_ms": c.time_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "conflicts": conflicts })).into_response())
}

/// `GET /api/docs/{doc}/copies` → `{"copies":[{"id","time_ms","reason","text"}]}`:
/// the conflict copies the server keeps of the document (a regional server's
/// work its home could not take), oldest first; empty if none.
pub(crate) async fn get_copies(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Read)?;
    let id = doc.to_string();
    let copies = blocking(&shared, move |s| s.conflict_copies(&id)).await?;
    let copies: Vec<serde_json::Value> = copies
        .into_iter()
        .map(|c| {
            json!({
                "id": c.id.to_string(),
                "time_ms": c.time_ms,
                "reason": c.reason,
                "text": c.text,
            })
        })
        .collect();
    Ok(Json(json!({ "copies": copies })).into_response())
}

/// `GET /api/docs/{doc}/conflicts?from=R&limit=L` → ops transformed past concurrent ops.
pub(crate) async fn get_conflicts(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    paged(
        &shared,
        &caller,
        &doc,
        &query,
        "conflicts",
        |s, doc, from, limit| s.conflicts(doc, from, limit),
        |op| {
            with_origin(
                json!({
                    "rev": op.rev,
                    "client": op.client_id,
                    "seq": op.seq,
                    "base_rev": op.base_rev,
                    // The revisions this op was transformed past.
                    "transformed_past": [op.base_rev + 1, op.rev - 1],
                    "original": op.received,
                    "applied": op.applied,
                    "time_ms": op.time_ms,
                }),
                op,
            )
        },
    )
    .await
}

/// `GET /api/docs?after=ID&limit=N` → the documents the caller can read,
/// by id, after `after`, at most `limit` (default and at most [`MAX_PAGE`]),
/// with `next` (the `after` of the next page; `null` on the last).
pub(crate) async fn list_docs(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let limit = (query_u64(&query, "limit", MAX_PAGE as u64)? as usize).clamp(1, MAX_PAGE);
    let after = query.get("after").cloned().unwrap_or_default();
    let docs = blocking(&shared, |s| s.list()).await?;
    let mut readable = docs
        .into_iter()
        .filter(|d| d.id.as_str() > after.as_str() && caller.access_to(&d.id).is_some());
    let page: Vec<_> = readable.by_ref().take(limit).collect();
    let next = match (readable.next(), page.last()) {
        (Some(_), Some(last)) => Some(last.id.clone()),
        _ => None,
    };
    Ok(Json(json!({ "docs": page, "next": next })).into_response())
}

/// `GET /healthz`
pub(crate) async fn healthz(State(shared): State<Arc<Shared>>) -> ApiResult {
    if shared.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    Ok(Json(json!({ "status": "ok" })).into_response())
}

/// `GET /metrics` in the Prometheus text format (with authentication on, for
/// server admins only).
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>, caller: Caller) -> ApiResult {
    caller.require_server_admin()?;
    Ok(render_metrics(&shared))
}

/// The metrics page.
pub(crate) fn render_metrics(shared: &Shared) -> Response {
    shared
        .metrics
        .storage_backlog
        .set(i64::try_from(shared.storage.backlog()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}
