//! The HTTP API: document reads, history, conflicts, health and metrics.
// Handlers return `Result<_, Response>` (the axum idiom: the error is the response to send).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::document::DocCommand;
use crate::state::Shared;
use crate::storage::{Storage, StorageError, StoredOp};
use ot_protocol::DocId;

/// Most ops one `/ops` or `/conflicts` request returns.
pub const MAX_PAGE: usize = 1000;

/// A JSON error response: `{"code":"…","message":"…"}`.
pub fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

fn storage_failure(error: &StorageError) -> Response {
    tracing::error!(%error, "storage read failed");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage_error",
        "the storage could not be read",
    )
}

fn not_found(doc: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no document `{doc}`"),
    )
}

fn check_doc(doc: &str) -> Result<(), Response> {
    if DocId::parse(doc).is_ok() {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_document_id",
            "a document id is 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

fn query_u64(query: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, Response> {
    match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            api_error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                &format!("`{key}` must be a non-negative integer"),
            )
        }),
    }
}

/// `from` (default 0) and `limit` (default and at most [`MAX_PAGE`]) of a paged request.
fn page(query: &HashMap<String, String>) -> Result<(u64, usize), Response> {
    let from = query_u64(query, "from", 0)?;
    let limit = query_u64(query, "limit", MAX_PAGE as u64)?;
    Ok((from, (limit as usize).min(MAX_PAGE)))
}

/// Run a blocking storage read off the async threads.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    read: impl FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, Response> {
    let storage = shared.storage.clone();
    match tokio::task::spawn_blocking(move || read(storage.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(storage_failure(&e)),
        Err(_) => Err(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the read task failed",
        )),
    }
}

/// The durable revision and text: from the open document, else from storage.
async fn current(shared: &Arc<Shared>, doc: &str) -> Result<Option<(u64, String)>, Response> {
    if let Some(handle) = shared.registry.get(doc) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if handle.tx.send(DocCommand::Read(tx)).await.is_ok() {
            if let Ok(state) = rx.await {
                return Ok(Some(state));
            }
        }
    }
    let id = doc.to_owned();
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
pub async fn get_doc(State(shared): State<Arc<Shared>>, Path(doc): Path<String>) -> Response {
    if let Err(r) = check_doc(&doc) {
        return r;
    }
    match current(&shared, &doc).await {
        Ok(Some((rev, text))) => Json(json!({ "rev": rev, "text": text })).into_response(),
        Ok(None) => not_found(&doc),
        Err(r) => r,
    }
}

/// `GET /api/docs/{doc}/text?rev=R` → the text as of revision R (plain text).
pub async fn get_text(
    State(shared): State<Arc<Shared>>,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_doc(&doc) {
        return r;
    }
    let rev = match query.get("rev") {
        None => None,
        Some(_) => match query_u64(&query, "rev", 0) {
            Ok(v) => Some(v),
            Err(r) => return r,
        },
    };
    let id = doc.clone();
    let result = blocking(&shared, move |s| {
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
    .await;
    match result {
        Ok(Ok((rev, text))) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (
                    header::HeaderName::from_static("x-revision"),
                    rev.to_string(),
                ),
            ],
            text,
        )
            .into_response(),
        Ok(Err(true)) => api_error(
            StatusCode::NOT_FOUND,
            "future_revision",
            "that revision does not exist yet",
        ),
        Ok(Err(false)) => not_found(&doc),
        Err(r) => r,
    }
}

fn op_json(op: &StoredOp) -> serde_json::Value {
    json!({
        "rev": op.rev,
        "client": op.client_id,
        "seq": op.seq,
        "base_rev": op.base_rev,
        "op": op.applied,
        "received": op.received,
        "hash": op.hash.to_hex(),
        "time_ms": op.time_ms,
    })
}

/// `GET /api/docs/{doc}/ops?from=R&limit=L` → the ops after revision R (default 0), at most L.
pub async fn get_ops(
    State(shared): State<Arc<Shared>>,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_doc(&doc) {
        return r;
    }
    let (from, limit) = match page(&query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let id = doc.clone();
    match blocking(&shared, move |s| {
        if !s.exists(&id)? {
            return Ok(None);
        }
        Ok(Some(s.ops(&id, from, limit)?))
    })
    .await
    {
        Ok(Some(ops)) => Json(json!({
            "ops": ops.iter().map(op_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(None) => not_found(&doc),
        Err(r) => r,
    }
}

/// `GET /api/docs/{doc}/conflicts?from=R&limit=L` → ops transformed past concurrent ops.
pub async fn get_conflicts(
    State(shared): State<Arc<Shared>>,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_doc(&doc) {
        return r;
    }
    let (from, limit) = match page(&query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let id = doc.clone();
    match blocking(&shared, move |s| {
        if !s.exists(&id)? {
            return Ok(None);
        }
        Ok(Some(s.conflicts(&id, from, limit)?))
    })
    .await
    {
        Ok(Some(ops)) => Json(json!({
            "conflicts": ops.iter().map(|op| json!({
                "rev": op.rev,
                "client": op.client_id,
                "seq": op.seq,
                "base_rev": op.base_rev,
                // The revisions this op was transformed past.
                "transformed_past": [op.base_rev + 1, op.rev - 1],
                "original": op.received,
                "applied": op.applied,
                "time_ms": op.time_ms,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(None) => not_found(&doc),
        Err(r) => r,
    }
}

/// `GET /api/docs` → every document with its revision and length.
pub async fn list_docs(State(shared): State<Arc<Shared>>) -> Response {
    match blocking(&shared, |s| s.list()).await {
        Ok(docs) => Json(json!({ "docs": docs })).into_response(),
        Err(r) => r,
    }
}

/// `GET /healthz`
pub async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutdown.is_cancelled() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
    }
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
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
