//! How this node's sessions reach PostgreSQL: over TLS when the URL says
//! `sslmode=require`, checking the server's certificate and name against
//! the system's roots and `--database-ca-file` (the client driver's rustls
//! set-up, the same as `wss://` links use); otherwise (`prefer`, the
//! default, and `disable`) in plain TCP, as on a private network or a
//! Unix socket.

use std::path::Path;

use deadpool_postgres::{Manager, ManagerConfig};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::storage::StorageError;

/// Plain or TLS sessions (see the module documentation).
#[derive(Clone)]
pub(super) enum Connector {
    /// Plain TCP (or a Unix socket).
    Plain,
    /// TLS with the server's certificate checked.
    Tls(MakeRustlsConnect),
}

impl Connector {
    /// The connector `config`'s `sslmode` asks for, trusting `ca_file` too.
    pub(super) fn for_config(
        config: &tokio_postgres::Config,
        ca_file: Option<&Path>,
    ) -> Result<Connector, StorageError> {
        if config.get_ssl_mode() != SslMode::Require {
            if ca_file.is_some() {
                tracing::warn!(
                    "--database-ca-file is used only with sslmode=require in --database-url"
                );
            }
            return Ok(Connector::Plain);
        }
        let options = ot_driver::ConnectOptions {
            ca_file: ca_file.map(Path::to_path_buf),
            ..ot_driver::ConnectOptions::default()
        };
        let tls = ot_driver::tls::client_config(&options)
            .map_err(|e| StorageError::Unavailable(format!("TLS to the database: {e}")))?;
        Ok(Connector::Tls(MakeRustlsConnect::new((*tls).clone())))
    }

    /// A pool manager for `config` connecting this way.
    pub(super) fn manager(
        &self,
        config: &tokio_postgres::Config,
        manager: ManagerConfig,
    ) -> Manager {
        match self {
            Connector::Plain => Manager::from_config(config.clone(), NoTls, manager),
            Connector::Tls(tls) => Manager::from_config(config.clone(), tls.clone(), manager),
        }
    }
}
