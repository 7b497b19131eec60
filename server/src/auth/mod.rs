//! Access control: signed tokens (JWT) say who a caller is and which
//! documents it may read, write or administer; revoked tokens are refused at
//! once and their connections closed.
//!
//! With authentication off (no key given) every caller is [`Caller::Trusted`]
//! and may do everything: the server then only listens on loopback (or
//! `--insecure-no-auth`).

mod claims;
mod credentials;
mod keys;
mod pattern;
mod revocation;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ot_protocol::Access;

pub use claims::Claims;
pub(crate) use claims::Grant;
pub(crate) use credentials::{key_hash, subject_key_hash, Credentials};
pub use keys::{mint_hs256, read_secret, KeyError, TokenError, Verifier};
pub(crate) use revocation::Revocations;

use crate::api_error::ApiError;
use crate::app::Shared;
use crate::config::Config;
use crate::storage::Storage;

/// Now, in Unix seconds (the shared clock: see [`crate::clock`]).
pub(crate) fn now() -> u64 {
    crate::clock::now_secs()
}

/// How long until Unix second `second` is over: a token whose `exp` (plus
/// leeway) is `second` is valid until then, and refused from the next second.
pub(crate) fn time_until_past(second: u64) -> std::time::Duration {
    crate::clock::until_past(second)
}

/// Token checking for a server with authentication on.
#[derive(Debug)]
pub(crate) struct Auth {
    verifier: Verifier,
    pub(crate) revocations: Revocations,
}

impl Auth {
    /// The server's token checking, if `config` turns authentication on
    /// (the revocation list comes from `storage`).
    pub(crate) fn from_config(
        config: &Config,
        storage: &dyn Storage,
    ) -> anyhow::Result<Option<Auth>> {
        let verifier = match (&config.auth_secret_file, &config.auth_public_key_file) {
            (Some(path), _) => Verifier::from_secret_file(path, config.auth_leeway)?,
            (None, Some(path)) => Verifier::from_public_key_file(path, config.auth_leeway)?,
            (None, None) => return Ok(None),
        };
        let revoked = storage.revoked_tokens(now())?;
        let algorithm = match verifier.algorithm() {
            jsonwebtoken::Algorithm::HS256 => "HS256",
            jsonwebtoken::Algorithm::EdDSA => "EdDSA",
            jsonwebtoken::Algorithm::ES256 => "ES256",
            _ => "another algorithm",
        };
        tracing::info!(
            "authentication on: tokens signed with {algorithm}, {} revoked",
            revoked.len()
        );
        Ok(Some(Auth {
            verifier,
            revocations: Revocations::new(revoked),
        }))
    }

    /// Check `token`: signature, times and the revocation list.
    pub(crate) fn check(&self, token: Option<&str>) -> Result<Grant, TokenError> {
        let grant = self
            .verifier
            .verify(token.ok_or(TokenError::Missing)?, now())?;
        if self.revocations.is_revoked(&grant.claims.jti) {
            return Err(TokenError::Revoked);
        }
        Ok(grant)
    }

    /// When a connection opened with `grant` must be closed (Unix seconds).
    pub(crate) fn ends_at(&self, grant: &Grant) -> u64 {
        self.verifier.ends_at(grant)
    }
}

/// Who is making a request.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// Authentication is off: everything is allowed.
    Trusted,
    /// A checked token.
    Token(Arc<Grant>),
}

impl Caller {
    /// The caller's level on `doc`, if any.
    pub(crate) fn access_to(&self, doc: &str) -> Option<Access> {
        match self {
            Caller::Trusted => Some(Access::Admin),
            Caller::Token(grant) => grant.access_to(doc),
        }
    }

    /// At least `need` on `doc`, else 403 `forbidden`.
    pub(crate) fn require(&self, doc: &str, need: Access) -> Result<Access, ApiError> {
        match self.access_to(doc) {
            Some(access) if access >= need => Ok(access),
            Some(access) => Err(ApiError::forbidden(format!(
                "the token gives {access} access to `{doc}`; this needs {need}"
            ))),
            None => Err(ApiError::forbidden(format!(
                "the token does not cover document `{doc}`"
            ))),
        }
    }

    /// The server-wide admin calls need `admin` on `*`, else 403.
    pub(crate) fn require_server_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Trusted => Ok(()),
            Caller::Token(grant) if grant.is_server_admin() => Ok(()),
            Caller::Token(_) => Err(ApiError::forbidden(
                "this needs a token with admin access to every document (`*`)",
            )),
        }
    }

    /// The token, if any.
    pub(crate) fn grant(&self) -> Option<&Arc<Grant>> {
        match self {
            Caller::Trusted => None,
            Caller::Token(grant) => Some(grant),
        }
    }
}

/// Any handler that takes a [`Caller`] refuses a request without a good
/// token (401) before it runs.
impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Caller, ApiError> {
        let Some(auth) = &shared.auth else {
            return Ok(Caller::Trusted);
        };
        let bearer = match Credentials::from_headers(&parts.headers) {
            Ok(credentials) => credentials.bearer,
            // A bad client key is the upgrade's to refuse (403).
            Err(e) if e.is_about_the_key() => return Err(ApiError::forbidden(e.to_string())),
            Err(e) => return Err(ApiError::unauthorized(e)),
        };
        match auth.check(bearer.as_deref()) {
            Ok(grant) => Ok(Caller::Token(Arc::new(grant))),
            Err(e) => {
                tracing::debug!(error = %e, path = %parts.uri.path(), "token refused");
                Err(ApiError::unauthorized(e))
            }
        }
    }
}
