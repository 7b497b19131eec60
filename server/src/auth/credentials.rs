//! What a connection request proves about its sender: a client key and a
//! bearer token, read from headers (Rust clients) or from WebSocket
//! subprotocol entries (browsers, which cannot set headers on a WebSocket).
//!
//! Never from the query string: URLs end up in logs, histories and `Referer`s.
//! Nothing here logs or echoes a credential; the upgrade selects only
//! `ot_protocol::SUBPROTOCOL` (`ot.v1`) for `Sec-WebSocket-Protocol`.

use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use axum::http::HeaderMap;
use ot_core::history::KeyHash;
use ot_protocol::{
    ClientKey, BEARER_SUBPROTOCOL_PREFIX, CLIENT_KEY_HEADER, KEY_SUBPROTOCOL_PREFIX,
};
use sha2::{Digest, Sha256};

/// The credentials of one request. `Debug` shows which are present, never
/// their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The writer's key: header `x-ot-client-key`, or subprotocol `ot.key.<key>`.
    pub(crate) client_key: Option<ClientKey>,
    /// A bearer token: `Authorization: Bearer <token>`, or subprotocol
    /// `ot.bearer.<token>` (only parsed here).
    pub(crate) bearer: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_key", &self.client_key.as_ref().map(|_| "…"))
            .field("bearer", &self.bearer.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Why a request's credentials cannot be read. Each is refused before the
/// upgrade; the message names the problem, never the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CredentialError {
    /// A key that breaks the key rule.
    #[error("the client key is not 32 lowercase hex digits")]
    BadKey,
    /// Two different keys (header and subprotocol, or two entries).
    #[error("the request carries two different client keys")]
    TwoKeys,
    /// A header that is not visible ASCII.
    #[error("the {0} header is not readable text")]
    Unreadable(&'static str),
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    /// Two different bearer tokens.
    #[error("the request carries two different bearer tokens")]
    TwoTokens,
}

impl CredentialError {
    /// Whether the problem is the client key (else the bearer token).
    pub(crate) fn is_about_the_key(&self) -> bool {
        match self {
            CredentialError::BadKey | CredentialError::TwoKeys => true,
            CredentialError::Unreadable(header) => *header == CLIENT_KEY_HEADER,
            CredentialError::NotBearer | CredentialError::TwoTokens => false,
        }
    }
}

impl Credentials {
    /// Read the credentials of a request from its headers.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Credentials, CredentialError> {
        let mut keys: Vec<&str> = Vec::new();
        let mut tokens: Vec<&str> = Vec::new();
        for value in headers.get_all(CLIENT_KEY_HEADER) {
            let text = value
                .to_str()
                .map_err(|_| CredentialError::Unreadable(CLIENT_KEY_HEADER))?;
            keys.push(text.trim());
        }
        for value in headers.get_all(AUTHORIZATION) {
            let text = value
                .to_str()
                .map_err(|_| CredentialError::Unreadable("Authorization"))?;
            let (scheme, token) = text
                .trim()
                .split_once(' ')
                .ok_or(CredentialError::NotBearer)?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(CredentialError::NotBearer);
            }
            tokens.push(token.trim());
        }
        for entry in subprotocols(headers)? {
            if let Some(key) = entry.strip_prefix(KEY_SUBPROTOCOL_PREFIX) {
                keys.push(key);
            } else if let Some(token) = entry.strip_prefix(BEARER_SUBPROTOCOL_PREFIX) {
                tokens.push(token);
            }
        }
        Ok(Credentials {
            client_key: one(&keys, CredentialError::TwoKeys)?
                .map(|key| ClientKey::parse(key).map_err(|_| CredentialError::BadKey))
                .transpose()?,
            bearer: one(&tokens, CredentialError::TwoTokens)?.map(str::to_owned),
        })
    }

    /// The hash the server keeps of the client key, if one was given.
    pub(crate) fn key_hash(&self) -> Option<KeyHash> {
        self.client_key.as_ref().map(key_hash)
    }
}

/// SHA-256 of a key's text: what a client id is bound to. Only the hash is
/// stored, so the database alone does not let anyone speak for a writer.
pub(crate) fn key_hash(key: &ClientKey) -> KeyHash {
    KeyHash(Sha256::digest(key.as_str().as_bytes()).into())
}

/// With authentication on, what a client id is bound to: the key *and* the
/// token's subject, so that another user holding a copy of the key still
/// cannot speak for the writer.
pub(crate) fn subject_key_hash(key: &ClientKey, subject: &str) -> KeyHash {
    let mut hash = Sha256::new();
    hash.update(b"ot key+subject\0");
    hash.update(key.as_str().as_bytes());
    hash.update(b"\0");
    hash.update(subject.as_bytes());
    KeyHash(hash.finalize().into())
}

/// The entries of every `Sec-WebSocket-Protocol` header (a comma-separated
/// list; browsers send one header).
fn subprotocols(headers: &HeaderMap) -> Result<Vec<&str>, CredentialError> {
    let mut entries = Vec::new();
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let text = value
            .to_str()
            .map_err(|_| CredentialError::Unreadable("Sec-WebSocket-Protocol"))?;
        entries.extend(text.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    Ok(entries)
}

/// The one value of `values` (the same value given twice counts once).
fn one<'a>(values: &[&'a str], two: CredentialError) -> Result<Option<&'a str>, CredentialError> {
    match values.split_first() {
        None => Ok(None),
        Some((first, rest)) if rest.iter().all(|v| v == first) => Ok(Some(first)),
        Some(_) => Err(two),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn none_at_all() {
        assert_eq!(
            Credentials::from_headers(&HeaderMap::new()),
            Ok(Credentials::default())
        );
        let only_v1 = headers(&[("sec-websocket-protocol", "ot.v1")]);
        assert_eq!(
            Credentials::from_headers(&only_v1),
            Ok(Credentials::default())
        );
    }

    #[test]
    fn a_key_from_the_header_or_a_subprotocol() {
        let from_header = Credentials::from_headers(&headers(&[("x-ot-client-key", KEY)])).unwrap();
        assert_eq!(
            from_header.client_key.as_ref().map(|k| k.as_str()),
            Some(KEY)
        );
        let offered = format!("ot.v1, ot.key.{KEY}");
        let from_protocol =
            Credentials::from_headers(&headers(&[("sec-websocket-protocol", &offered)])).unwrap();
        assert_eq!(from_protocol, from_header);
        // Both, the same key: fine.
        let both = headers(&[
            ("x-ot-client-key", KEY),
            ("sec-websocket-protocol", &offered),
        ]);
        assert_eq!(Credentials::from_headers(&both).unwrap(), from_header);
        assert_eq!(from_header.key_hash(), from_protocol.key_hash());
        assert!(from_header.key_hash().is_some());
    }

    #[test]
    fn bad_or_conflicting_keys_are_refused() {
        for bad in ["", "ABCDEF0123456789abcdef0123456789", "123", "zz"] {
            assert_eq!(
                Credentials::from_headers(&headers(&[("x-ot-client-key", bad)])),
                Err(CredentialError::BadKey),
                "{bad:?}"
            );
        }
        let other = "ffffffffffffffffffffffffffffffff";
        let two = headers(&[
            ("x-ot-client-key", KEY),
            ("sec-websocket-protocol", &format!("ot.v1, ot.key.{other}")),
        ]);
        assert_eq!(
            Credentials::from_headers(&two),
            Err(CredentialError::TwoKeys)
        );
    }

    #[test]
    fn bearer_tokens() {
        let from_header =
            Credentials::from_headers(&headers(&[("authorization", "Bearer abc.def")])).unwrap();
        assert_eq!(from_header.bearer.as_deref(), Some("abc.def"));
        let from_protocol = Credentials::from_headers(&headers(&[(
            "sec-websocket-protocol",
            "ot.v1, ot.bearer.abc.def",
        )]))
        .unwrap();
        assert_eq!(from_protocol.bearer.as_deref(), Some("abc.def"));
        assert_eq!(
            Credentials::from_headers(&headers(&[("authorization", "Basic eDp5")])),
            Err(CredentialError::NotBearer)
        );
        let two = headers(&[
            ("authorization", "Bearer a"),
            ("sec-websocket-protocol", "ot.bearer.b"),
        ]);
        assert_eq!(
            Credentials::from_headers(&two),
            Err(CredentialError::TwoTokens)
        );
    }

    #[test]
    fn errors_never_name_the_credential() {
        let bad = "0123456789ABCDEF0123456789ABCDEF";
        let error = Credentials::from_headers(&headers(&[("x-ot-client-key", bad)])).unwrap_err();
        assert!(!error.to_string().contains(bad));
        assert!(!format!("{error:?}").contains(bad));
        let good = Credentials::from_headers(&headers(&[
            ("x-ot-client-key", KEY),
            ("authorization", "Bearer secret-token"),
        ]))
        .unwrap();
        let shown = format!("{good:?}");
        assert!(
            !shown.contains(KEY) && !shown.contains("secret-token"),
            "{shown}"
        );
    }
}
