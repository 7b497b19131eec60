//! The admin calls on one document: deleting it and exporting its ops.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::{stream, StreamExt};
use ot_protocol::{Access, DocId, ErrorCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::api_error::ApiError;
use crate::app::Shared;
use crate::auth::Caller;
use crate::document::{self, DocCommand, DocEpoch, DocError};
use crate::http::{blocking, doc_id, not_found, op_json, ApiResult, MAX_PAGE};
use crate::pages::read_page;
use crate::storage::StorageError;

/// How many times a delete opens the document again when its actor was
/// unloading.
const DELETE_ATTEMPTS: usize = 8;

/// `DELETE /api/admin/docs/{doc}` → `{"deleted":"…"}` once the delete is
/// durable: the document's rows are gone, its connections closed with 4004,
/// and the next join opens a new, empty document with a greater epoch. 404
/// if there is no such document. Needs `admin` on the document.
pub(crate) async fn delete_doc(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
) -> ApiResult<Json<Value>> {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Admin)?;
    if let Some(upstream) = &shared.services().upstream {
        // The home orders the document: a delete there reaches this region
        // through the link (its local clients resync to the empty document).
        return Err(ApiError::forbidden(format!(
            "this is a regional server: delete the document at its home {}",
            upstream.server.http()
        )));
    }
    // The document's actor orders the delete with its ops (the commit lane):
    // open it if it is not running.
    for _ in 0..DELETE_ATTEMPTS {
        let handle = document::open(shared.services(), &shared.registry, &doc);
        let (tx, rx) = oneshot::channel();
        if handle.tx.send(DocCommand::Delete(tx)).await.is_err() {
            continue; // the actor stopped: open again
        }
        match rx.await {
            Ok(Ok(true)) => {
                tracing::info!(doc = %doc, "document deleted by an admin");
                return Ok(Json(json!({ "deleted": doc.as_str() })));
            }
            Ok(Ok(false)) => return Err(not_found(&doc)),
            Ok(Err(e)) if matches!(*e, DocError::KeptUnloading) => continue,
            Ok(Err(e)) => {
                tracing::error!(doc = %doc, error = %e, "delete failed");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StorageError.into(),
                    "the delete could not be stored; nothing was deleted",
                ));
            }
            Err(_) => continue, // the actor went away without answering
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageError.into(),
        "the document kept unloading; retry",
    ))
}

/// Where an export is: the next op to read, the last one to send.
struct ExportState {
    shared: Arc<Shared>,
    doc: DocId,
    /// The deleted epoch when the export began: if it changes, the document
    /// was deleted meanwhile and the export stops (never mixing generations).
    deleted: Option<u64>,
    after: u64,
    last: u64,
}

/// Why an export stopped part way (the body ends with an error, so the
/// client sees a broken transfer, never a short but well-formed export).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the document was deleted during the export")]
    Deleted,
    #[error("storage returned no ops after revision {0}")]
    Short(u64),
    #[error("a storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// `GET /api/admin/docs/{doc}/export` → `application/x-ndjson`: a first line
/// `{"id":…,"epoch":…,"rev":N}`, then each stored op up to revision N as
/// `/api/docs/{doc}/ops` shows it, one per line, read from storage in pages
/// and streamed (memory stays one page). Needs `admin` on the document.
pub(crate) async fn export_doc(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Admin)?;
    let id = doc.to_string();
    let (rev, deleted, storage_epoch) = blocking(&shared, move |s| {
        if !s.exists(&id)? {
            return Ok(None);
        }
        Ok(Some((s.last_rev(&id)?, s.deleted_epoch(&id)?, s.epoch())))
    })
    .await?
    .ok_or_else(|| not_found(&doc))?;
    let epoch = DocEpoch::new(storage_epoch, deleted).shown();
    let head = format!(
        "{}\n",
        json!({ "id": doc.as_str(), "epoch": epoch, "rev": rev })
    );
    let state = ExportState {
        shared: shared.clone(),
        doc,
        deleted,
        after: 0,
        last: rev,
    };
    let pages = stream::try_unfold(state, |mut state| async move {
        if state.after >= state.last {
            return Ok::<_, ExportError>(None);
        }
        let storage = state.shared.storage.clone();
        let id = state.doc.to_string();
        let (after, deleted) = (state.after, state.deleted);
        let ops = tokio::task::spawn_blocking(move || {
            if storage.deleted_epoch(&id)? != deleted {
                return Ok(None);
            }
            read_page(
                storage.as_ref(),
                &id,
                after,
                MAX_PAGE,
                |s, doc, after, limit| s.ops(doc, after, limit),
            )
            .map(Some)
        })
        .await??
        .ok_or(ExportError::Deleted)?;
        let mut page = String::new();
        for op in ops.iter().take_while(|op| op.rev <= state.last) {
            page.push_str(&op_json(op).to_string());
            page.push('\n');
            state.after = op.rev;
        }
        if page.is_empty() {
            return Err(ExportError::Short(state.after));
        }
        Ok(Some((page, state)))
    });
    let body = stream::iter([Ok::<_, ExportError>(head)]).chain(pages);
    let body = body.inspect(|item| {
        if let Err(error) = item {
            tracing::error!(%error, "export stopped");
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}
