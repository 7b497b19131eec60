//! One HTTP GET against the server (the JSON API, `/healthz`, `/metrics`),
//! with timeouts: what the terminal client, the end-to-end tests and the load
//! tool use to read the server over HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use crate::options::ConnectOptions;
use crate::tls::{client_config, crypto_provider, TlsError};
use crate::url::ServerUrl;

/// How long connecting for a GET may take.
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole GET (connect, request, answer) may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a GET got no answer (an answer with any status is not an error).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The HTTP client could not be set up.
    #[error("cannot set up an HTTP client: {0}")]
    Setup(String),
    /// The TLS configuration (system roots, CA file) could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server did not answer within [`HTTP_TIMEOUT`].
    #[error("the server at {server} did not answer in time")]
    Timeout {
        /// `http://host:port`.
        server: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {server}: {cause}")]
    Unreachable {
        /// `http://host:port`.
        server: String,
        /// The innermost cause (e.g. "Connection refused").
        cause: String,
    },
    /// The token file could not be read.
    #[error(transparent)]
    Token(#[from] crate::options::TokenFileError),
    /// The answer's body could not be read.
    #[error("cannot read the server's answer to {path}: {cause}")]
    Body {
        /// The path asked for.
        path: String,
        /// What failed.
        cause: String,
    },
}

impl From<SocketAddr> for ServerUrl {
    fn from(addr: SocketAddr) -> ServerUrl {
        ServerUrl {
            authority: addr.to_string(),
            tls: false,
        }
    }
}

/// `GET {server}{path}` (path with its query, e.g. `/api/docs/a?x=1`):
/// the status and the body, whatever the status. Default [`ConnectOptions`].
pub async fn get(server: &ServerUrl, path: &str) -> Result<(u16, String), HttpError> {
    get_with(server, path, &ConnectOptions::default()).await
}

/// [`get`] with `options` (a CA file for `https://`, a token).
pub async fn get_with(
    server: &ServerUrl,
    path: &str,
    options: &ConnectOptions,
) -> Result<(u16, String), HttpError> {
    send(server, reqwest::Method::GET, path, None, options).await
}

/// `POST {server}{path}` with a JSON body, with `options`: the status and the
/// body, whatever the status.
pub async fn post_json_with(
    server: &ServerUrl,
    path: &str,
    body: &serde_json::Value,
    options: &ConnectOptions,
) -> Result<(u16, String), HttpError> {
    send(
        server,
        reqwest::Method::POST,
        path,
        Some(body.to_string()),
        options,
    )
    .await
}

/// The HTTP methods, for [`send`].
pub use reqwest::Method;

/// One request (with `options`' token as `Authorization: Bearer`, and a JSON
/// body if given): the status and the body, whatever the status.
pub async fn send(
    server: &ServerUrl,
    method: reqwest::Method,
    path: &str,
    json_body: Option<String>,
    options: &ConnectOptions,
) -> Result<(u16, String), HttpError> {
    let base = server.http();
    let mut request = client(server, options)?.request(method, format!("{base}{path}"));
    if let Some(token) = options.bearer()? {
        request = request.bearer_auth(token);
    }
    if let Some(body) = json_body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            HttpError::Timeout {
                server: base.clone(),
            }
        } else {
            HttpError::Unreachable {
                server: base.clone(),
                cause: innermost(&e),
            }
        }
    })?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| HttpError::Body {
        path: path.to_owned(),
        cause: innermost(&e),
    })?;
    Ok((status, body))
}

/// An HTTP client for `server` with timeouts and our TLS configuration.
pub fn client(server: &ServerUrl, options: &ConnectOptions) -> Result<reqwest::Client, HttpError> {
    // reqwest is built without a default TLS provider: it always gets ours.
    // A plain server's client never uses it, so it trusts nothing.
    let tls = if server.tls {
        (*client_config(options)?).clone()
    } else {
        rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::from)?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    reqwest::Client::builder()
        .connect_timeout(HTTP_CONNECT_TIMEOUT)
        .timeout(HTTP_TIMEOUT)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| HttpError::Setup(e.to_string()))
}

/// The last error in the source chain, as text.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
