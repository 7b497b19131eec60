//! HTTP errors: a status, a code and a message, sent as
//! `{"code":"…","message":"…"}` (PROTOCOL.md, "HTTP API").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ot_protocol::{ApiErrorCode, ErrorCode, IdError};
use serde::Serialize;

use crate::storage::StorageError;

/// An HTTP error response.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ApiErrorCode,
    message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: ApiErrorCode,
    message: &'a str,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ApiErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: a document or client id that breaks the id rule.
    pub(crate) fn invalid_id(error: IdError) -> Self {
        let code = match error {
            IdError::Document => ApiErrorCode::InvalidDocumentId,
            IdError::Client => ApiErrorCode::InvalidClientId,
            IdError::ClientKey => ApiErrorCode::Protocol(ErrorCode::Forbidden),
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
    }

    /// 400: query parameter `key` is not a non-negative integer.
    pub(crate) fn invalid_query(key: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::InvalidQuery,
            format!("`{key}` must be a non-negative integer"),
        )
    }

    /// 404 with `message`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, ApiErrorCode::NotFound, message)
    }

    /// 401: a token is needed and this one is not good (a `WWW-Authenticate`
    /// header says how to send one).
    pub(crate) fn unauthorized(why: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ApiErrorCode::Unauthorized,
            why.to_string(),
        )
    }

    /// 403: the token (or key) does not allow this.
    pub(crate) fn forbidden(why: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden.into(), why)
    }

    /// 503: the server is shutting down.
    pub(crate) fn shutting_down() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown.into(),
            "the server is shutting down",
        )
    }

    /// 500: a storage read failed (logged here; the client gets no details).
    pub(crate) fn storage(error: &StorageError) -> Self {
        tracing::error!(%error, "storage read failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::StorageError.into(),
            "the storage could not be read",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
