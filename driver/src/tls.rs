//! The client's TLS configuration: rustls with the ring provider, trusting
//! the system's root certificates plus [`ConnectOptions::ca_file`].

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::options::ConnectOptions;

/// Why no TLS configuration could be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `--ca-file` could not be read, holds no certificate, or one it holds was refused.
    #[error("reading the CA file {path}: {cause}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        cause: String,
    },
    /// No trusted certificate at all: the system has none and no CA file was given.
    #[error("no trusted root certificates: the system has none (give a CA file)")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("setting up TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider of every client connection: ring.
///
/// Why ring: it builds with a C compiler alone and quickly; rustls 0.23.48
/// deprecates it only because it has no post-quantum key exchange. Moving to
/// aws-lc-rs is this function and the `ring` features in Cargo.toml.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration for `options`. Reads the system's roots and
/// the CA file on every call (only `wss://`/`https://` connections call it).
pub fn client_config(options: &ConnectOptions) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the CA file may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping a system certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &options.ca_file {
        let ca_error = |cause: String| TlsError::CaFile {
            path: path.clone(),
            cause,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ca(path: PathBuf) -> ConnectOptions {
        ConnectOptions {
            ca_file: Some(path),
            ..ConnectOptions::default()
        }
    }

    #[test]
    fn an_unusable_ca_file_is_a_typed_error() {
        let dir = std::env::temp_dir().join(format!("ot-driver-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(matches!(
            client_config(&with_ca(missing)),
            Err(TlsError::CaFile { .. })
        ));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = client_config(&with_ca(empty)).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            client_config(&with_ca(garbage)),
            Err(TlsError::CaFile { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
