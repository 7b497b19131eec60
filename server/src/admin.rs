//! The admin calls (`/api/admin/…`): revoking tokens.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ot_protocol::ApiErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::app::Shared;
use crate::auth::Caller;

/// Longest token id accepted for revocation.
const MAX_JTI_LEN: usize = 256;

/// The body of `POST /api/admin/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// The token id (`jti`) to refuse from now on.
    jti: String,
    /// The token's expiry (Unix seconds), if known: after it the entry can go.
    #[serde(default)]
    exp: Option<u64>,
}

/// `POST /api/admin/revoke` `{"jti":"…","exp"?:N}` → `{"revoked":"…"}`: the
/// token is refused from now on and every connection it opened is closed
/// with 4001. Needs `admin` on `*`.
pub(crate) async fn revoke(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    body: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_server_admin()?;
    let Json(request) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::InvalidQuery,
            e.body_text(),
        )
    })?;
    if request.jti.is_empty() || request.jti.len() > MAX_JTI_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::InvalidQuery,
            format!("`jti` must be 1 to {MAX_JTI_LEN} bytes"),
        ));
    }
    let Some(auth) = &shared.auth else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::InvalidQuery,
            "authentication is off: there are no tokens to revoke",
        ));
    };
    let storage = shared.storage.clone();
    let jti = request.jti.clone();
    let expires = request.exp.unwrap_or(i64::MAX as u64);
    match tokio::task::spawn_blocking(move || storage.revoke_token(&jti, expires)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ApiError::storage(&e)),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ApiErrorCode::InternalError,
                "the revocation task failed",
            ))
        }
    }
    auth.revocations.revoke(&request.jti);
    tracing::info!(jti = %request.jti, "token revoked");
    Ok(Json(json!({ "revoked": request.jti })))
}
