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

/// [`get`] with `options` (e.g. a CA file for `https://`).
pub async fn get_with(
    server: &ServerUrl,
    path: &str,
    options: &ConnectOptions,
) -> Result<(u16, String), HttpError> {
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
    let client = reqwest::Client::builder()
        .connect_timeout(HTTP_CONNECT_TIMEOUT)
        .timeout(HTTP_TIMEOUT)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| HttpError::Setup(e.to_string()))?;
    let base = server.http();
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| {
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

/// The last error in the source chain, as text.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
