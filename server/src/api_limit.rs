//! `--max-api-requests`: the `/api` routes share a fixed number of permits; a
//! request that finds none is answered at once with 503 `too_many_requests`
//! rather than queued, so a burst of expensive reads cannot pile up without
//! bound (memory, storage reads) behind the ones being served.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ot_protocol::ApiErrorCode;

use crate::api_error::ApiError;
use crate::app::Shared;

/// Serve `request` holding a permit, or refuse it when none is free.
pub(crate) async fn limit(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = shared.api_permits.clone().try_acquire_owned() else {
        shared
            .metrics
            .refused
            .with_label_values(&["api_busy"])
            .inc();
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiErrorCode::TooManyRequests,
            "the server is serving too many API requests; retry shortly",
        )
        .into_response();
    };
    // Held until the handler has built its response (a streamed body, like
    // the export's, is then bounded by its own pages).
    next.run(request).await
}
