//! The HTTP API's error codes (PROTOCOL.md, "HTTP API" and "Connecting"):
//! the `code` of an HTTP error body `{"code":"…","message":"…"}`.

use serde::{Serialize, Serializer};

use crate::codes::ErrorCode;

/// The code of an HTTP error. Where a WebSocket error code means the same
/// thing (`storage_error`, `shutting_down`, `future_revision`), it is that code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiErrorCode {
    /// The document id breaks the id rule (also a malformed `/ws/…` path).
    InvalidDocumentId,
    /// The `client` query parameter breaks the id rule.
    InvalidClientId,
    /// A numeric query parameter is not a non-negative integer.
    InvalidQuery,
    /// No such document, route or file.
    NotFound,
    /// The server has `max_connections` WebSocket connections, or the
    /// caller's address has its share of them.
    TooManyConnections,
    /// The server is answering as many HTTP API requests as it will at once:
    /// retry later (503).
    TooManyRequests,
    /// The server failed in a way that is not the request's fault.
    InternalError,
    /// A token is needed and is missing, malformed, expired or revoked (401).
    Unauthorized,
    /// The request's `Host` is not one this server answers to (400).
    InvalidHost,
    /// A code shared with the WebSocket protocol.
    Protocol(ErrorCode),
}

impl ApiErrorCode {
    /// The snake_case code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::InvalidDocumentId => "invalid_document_id",
            ApiErrorCode::InvalidClientId => "invalid_client_id",
            ApiErrorCode::InvalidQuery => "invalid_query",
            ApiErrorCode::NotFound => "not_found",
            ApiErrorCode::TooManyConnections => "too_many_connections",
            ApiErrorCode::TooManyRequests => "too_many_requests",
            ApiErrorCode::InternalError => "internal_error",
            ApiErrorCode::Unauthorized => "unauthorized",
            ApiErrorCode::InvalidHost => "invalid_host",
            ApiErrorCode::Protocol(code) => code.as_str(),
        }
    }
}

impl From<ErrorCode> for ApiErrorCode {
    fn from(code: ErrorCode) -> Self {
        ApiErrorCode::Protocol(code)
    }
}

impl std::fmt::Display for ApiErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ApiErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_strings() {
        assert_eq!(
            serde_json::to_string(&ApiErrorCode::InvalidDocumentId).unwrap_or_default(),
            r#""invalid_document_id""#
        );
        assert_eq!(
            ApiErrorCode::from(ErrorCode::ShuttingDown).as_str(),
            "shutting_down"
        );
        assert_eq!(
            ApiErrorCode::TooManyConnections.to_string(),
            "too_many_connections"
        );
    }
}
