//! The browser editor: static pages and scripts embedded in the binary at
//! build time (`server/web/`), so the server needs no files beside it and the
//! page loads nothing from any other origin.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | a form to create or open a document |
//! | `GET /d?doc=…` | 303 to `/d/{doc}` (the form's target) |
//! | `GET /d/{doc}` | the editor for `doc` (400 page for an invalid id) |
//! | `GET /static/{file}` | the page's ES modules (`ot.js`, `session.js`, `textarea.js`, `view.js`, `slots.js`, `token.js`, `editor.js`) and `editor.css` |

use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use ot_protocol::DocId;

const INDEX_HTML: &str = include_str!("../web/index.html");
const EDITOR_HTML: &str = include_str!("../web/editor.html");
const EDITOR_CSS: &str = include_str!("../web/editor.css");

/// The page's ES modules, served as `/static/{name}` (editor.js imports the others).
const SCRIPTS: &[(&str, &str)] = &[
    ("ot.js", include_str!("../web/ot.js")),
    ("session.js", include_str!("../web/session.js")),
    ("textarea.js", include_str!("../web/textarea.js")),
    ("view.js", include_str!("../web/view.js")),
    ("slots.js", include_str!("../web/slots.js")),
    ("token.js", include_str!("../web/token.js")),
    ("editor.js", include_str!("../web/editor.js")),
];

/// Only this origin: scripts, styles, and the WebSocket.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// Escape `text` for HTML text and double-quoted attribute values.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn bad_id_page(doc: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Invalid document name</title><link rel=\"stylesheet\" href=\"/static/editor.css\">\
             </head><body class=\"index\"><main class=\"index\"><h1>Invalid document name</h1>\
             <p><code>{}</code> is not a document name: use 1–128 characters of A–Z a–z 0–9 . _ -.</p>\
             <p><a href=\"/\">Back</a></p></main></body></html>",
            escape_html(doc)
        ),
    )
}

/// `GET /`: create or open a document.
pub(crate) async fn index() -> Response {
    page(StatusCode::OK, INDEX_HTML.to_owned())
}

/// `GET /d?doc=…`: the form's target; redirects to the editor.
pub(crate) async fn open_form(
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let doc = query.get("doc").map(|d| d.trim()).unwrap_or_default();
    if DocId::parse(doc).is_err() {
        return bad_id_page(doc);
    }
    // A valid id is URL-safe as it is.
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/d/{doc}"))],
    )
        .into_response()
}

/// `GET /d/{doc}`: the editor page.
pub(crate) async fn editor(Path(doc): Path<String>) -> Response {
    if DocId::parse(&doc).is_err() {
        return bad_id_page(&doc);
    }
    page(
        StatusCode::OK,
        EDITOR_HTML.replace("{{DOC}}", &escape_html(&doc)),
    )
}

/// `GET /static/{file}`: the embedded scripts and style sheet.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let script = SCRIPTS.iter().find(|(name, _)| *name == file);
    let (body, kind) = match (script, file.as_str()) {
        (Some((_, body)), _) => (*body, "text/javascript; charset=utf-8"),
        (None, "editor.css") => (EDITOR_CSS, "text/css; charset=utf-8"),
        _ => return crate::api_error::ApiError::not_found("no such file").into_response(),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("notes.v2_final-1"), "notes.v2_final-1");
    }

    #[test]
    fn the_editor_page_names_its_document_and_loads_only_local_files() {
        assert!(EDITOR_HTML.contains("{{DOC}}"));
        for html in [INDEX_HTML, EDITOR_HTML] {
            assert!(!html.contains("http://") && !html.contains("https://"));
        }
    }

    /// Every module a script imports is served, and nothing is imported from elsewhere.
    #[test]
    fn every_imported_module_is_embedded() {
        for (name, body) in SCRIPTS {
            for line in body.lines().filter(|l| l.contains(" from \"")) {
                let target = line
                    .split(" from \"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default();
                let file = target.strip_prefix("./").unwrap_or_else(|| {
                    panic!("{name} imports {target}: only ./ modules are served")
                });
                assert!(
                    SCRIPTS.iter().any(|(n, _)| *n == file),
                    "{name} imports {file}, which is not embedded"
                );
            }
        }
    }
}
