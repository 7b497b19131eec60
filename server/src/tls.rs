//! TLS for the main listener: `--tls-cert` and `--tls-key` (PEM) read once
//! at start into a rustls server configuration (ring provider, HTTP/1.1 by ALPN).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("reading the certificate chain in {path}: {cause}")]
    Cert {
        /// The `--tls-cert` file.
        path: PathBuf,
        /// What failed.
        cause: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("reading the private key in {path}: {cause}")]
    Key {
        /// The `--tls-key` file.
        path: PathBuf,
        /// What failed.
        cause: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key cannot be used: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider: ring (builds with a C compiler alone; rustls 0.23.48
/// deprecates it only for lacking post-quantum key exchange, and aws-lc-rs
/// would be this function and the `ring` features in Cargo.toml).
#[allow(deprecated)]
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for `cert` (a PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 or SEC1).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |cause: String| TlsError::Cert {
        path: cert.to_owned(),
        cause,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no certificate found".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        cause: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The server speaks HTTP/1.1 only (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
