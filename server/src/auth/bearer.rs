//! Where a request's token travels: `Authorization: Bearer …` (programs and
//! the page's fetch calls) or, on a WebSocket upgrade from a browser (which
//! cannot set headers there), the subprotocol `ot.bearer.<token>`. Never the
//! query string: URLs end up in logs and histories.

use axum::http::{header, HeaderMap};

/// The subprotocol every client offers; the server echoes only this one.
pub(crate) const SUBPROTOCOL: &str = "ot.v1";

/// The prefix of the subprotocol entry that carries a token.
const BEARER_SUBPROTOCOL: &str = "ot.bearer.";

/// The request's token, if it carries one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let from_header = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    from_header.or_else(|| {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|entry| {
                entry
                    .trim()
                    .strip_prefix(BEARER_SUBPROTOCOL)
                    .map(str::to_owned)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_come_from_the_header_or_the_subprotocol() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("ot.v1, ot.bearer.abc.def.ghi"),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("abc.def.ghi"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("xyz"), "the header first");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer_token(&h).as_deref(), Some("abc.def.ghi"));
    }
}
