//! Document and client ids: the only place their rules live.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not a valid document id.
    #[error("a document id is 1–128 characters of A–Z, a–z, 0–9, '.', '_' and '-'")]
    Document,
    /// Not a valid client id.
    #[error("a client id is 1–64 characters of A–Z, a–z, 0–9, '_' and '-'")]
    Client,
    /// Not a valid client key.
    #[error("a client key is 32 lowercase hex digits")]
    ClientKey,
}

/// Longest document id, in bytes (all ASCII).
pub const MAX_DOC_ID_LEN: usize = 128;
/// Longest client id, in bytes (all ASCII).
pub const MAX_CLIENT_ID_LEN: usize = 64;

fn doc_id_ok(id: &str) -> bool {
    (1..=MAX_DOC_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn client_id_ok(id: &str) -> bool {
    (1..=MAX_CLIENT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// A valid document id: 1–128 characters of `[A-Za-z0-9._-]` (safe in a URL
/// path and a file name without escaping).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocId(String);

impl DocId {
    /// Check `id` against the rule.
    pub fn parse(id: &str) -> Result<DocId, IdError> {
        doc_id_ok(id)
            .then(|| DocId(id.to_owned()))
            .ok_or(IdError::Document)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid client id: names one running writer; 1–64 URL-safe characters
/// `[A-Za-z0-9_-]` (clients generate 128 random bits, see [`ClientId::random`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

impl ClientId {
    /// Check `id` against the rule.
    pub fn parse(id: &str) -> Result<ClientId, IdError> {
        client_id_ok(id)
            .then(|| ClientId(id.to_owned()))
            .ok_or(IdError::Client)
    }

    /// A new random id: 128 random bits as 32 lowercase hex digits.
    pub fn random() -> ClientId {
        ClientId(format!("{:032x}", rand::random::<u128>()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Length of a client key in hex digits (128 bits).
pub const CLIENT_KEY_LEN: usize = 32;

/// The request header a Rust client proves its key with on the upgrade.
pub const CLIENT_KEY_HEADER: &str = "x-ot-client-key";

/// The WebSocket subprotocol of this protocol: the only one the server
/// selects and echoes in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "ot.v1";

/// A browser (which cannot set headers on a WebSocket) offers its key as the
/// subprotocol `ot.key.<key>` next to [`SUBPROTOCOL`]; the server never echoes it.
pub const KEY_SUBPROTOCOL_PREFIX: &str = "ot.key.";

/// A browser offers a bearer token as the subprotocol `ot.bearer.<token>`
/// (never echoed).
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "ot.bearer.";

fn client_key_ok(key: &str) -> bool {
    key.len() == CLIENT_KEY_LEN && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A writer's secret: 128 random bits as 32 lowercase hex digits, generated
/// with its [`ClientId`] and kept with its saved state. The id is public
/// (broadcast in every op and cursor); the key proves a connection speaks for
/// that writer. `Debug` does not print it, so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientKey(String);

impl ClientKey {
    /// Check `key` against the rule.
    pub fn parse(key: &str) -> Result<ClientKey, IdError> {
        client_key_ok(key)
            .then(|| ClientKey(key.to_owned()))
            .ok_or(IdError::ClientKey)
    }

    /// A new random key: 128 random bits as 32 lowercase hex digits.
    pub fn random() -> ClientKey {
        ClientKey(format!("{:032x}", rand::random::<u128>()))
    }

    /// The key as text (to send it; never to log it).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(…)")
    }
}

impl TryFrom<String> for ClientKey {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        ClientKey::parse(&s)
    }
}

impl From<ClientKey> for String {
    fn from(key: ClientKey) -> String {
        key.0
    }
}

impl std::str::FromStr for ClientKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        ClientKey::parse(s)
    }
}

macro_rules! text_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $ty::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $ty::parse(&s)
            }
        }
        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }
    };
}
text_impls!(DocId);
text_impls!(ClientId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids() {
        assert!(DocId::parse("notes.v2_final-1").is_ok());
        assert!(DocId::parse(&"x".repeat(128)).is_ok());
        for bad in ["", "a/b", "a b", "é", "a?b", "a%2F"] {
            assert_eq!(DocId::parse(bad), Err(IdError::Document), "{bad:?}");
        }
        assert!(DocId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn client_ids() {
        assert!(ClientId::parse("Ab-_9").is_ok());
        assert!(ClientId::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "a.b", "a b", "a/b", "é"] {
            assert_eq!(ClientId::parse(bad), Err(IdError::Client), "{bad:?}");
        }
        assert!(ClientId::parse(&"x".repeat(65)).is_err());
        let id = ClientId::random();
        assert!(ClientId::parse(id.as_str()).is_ok());
        assert_eq!(id.len(), 32);
        assert_ne!(id, ClientId::random());
    }

    #[test]
    fn client_keys() {
        let key = ClientKey::random();
        assert_eq!(key.as_str().len(), CLIENT_KEY_LEN);
        assert_eq!(ClientKey::parse(key.as_str()), Ok(key.clone()));
        assert_ne!(key, ClientKey::random());
        assert!(
            !format!("{key:?}").contains(key.as_str()),
            "Debug hides the key"
        );
        let upper = "0123456789ABCDEF0123456789abcdef";
        for bad in [
            "",
            "abc",
            upper,
            &"g".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
        ] {
            assert_eq!(ClientKey::parse(bad), Err(IdError::ClientKey), "{bad:?}");
        }
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<ClientKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<ClientKey>(r#""a""#).is_err());
    }

    #[test]
    fn ids_deserialize_only_when_valid() {
        let ok: Result<DocId, _> = serde_json::from_str(r#""notes""#);
        assert_eq!(ok.unwrap().as_str(), "notes");
        assert!(serde_json::from_str::<ClientId>(r#""a.b""#).is_err());
    }
}
