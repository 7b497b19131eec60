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
    fn ids_deserialize_only_when_valid() {
        let ok: Result<DocId, _> = serde_json::from_str(r#""notes""#);
        assert_eq!(ok.unwrap().as_str(), "notes");
        assert!(serde_json::from_str::<ClientId>(r#""a.b""#).is_err());
    }
}
