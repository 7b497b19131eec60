//! What a token says: the claims, and what they grant.

use ot_protocol::Access;
use serde::{Deserialize, Serialize};

use super::pattern;

/// The claims of a token (a JWT's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The display name (default: `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Patterns of the documents the token covers (`*` matches any run of id characters).
    pub docs: Vec<String>,
    /// What the token allows on those documents.
    pub access: Access,
    /// Expiry, Unix seconds (required).
    pub exp: u64,
    /// The token's id, for revocation (required).
    pub jti: String,
    /// Not valid before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// A checked token: who, and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) claims: Claims,
}

impl Grant {
    /// The token's level on `doc`, if it covers it.
    pub(crate) fn access_to(&self, doc: &str) -> Option<Access> {
        self.claims
            .docs
            .iter()
            .any(|p| pattern::matches(p, doc))
            .then_some(self.claims.access)
    }

    /// Whether the token allows the server-wide admin calls (`admin` on `*`).
    pub(crate) fn is_server_admin(&self) -> bool {
        self.claims.access == Access::Admin && self.claims.docs.iter().any(|p| p == "*")
    }

    /// The display name: `name`, else `sub`.
    pub(crate) fn name(&self) -> &str {
        self.claims.name.as_deref().unwrap_or(&self.claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(docs: &[&str], access: Access) -> Grant {
        Grant {
            claims: Claims {
                sub: "ann".into(),
                name: None,
                docs: docs.iter().map(|d| d.to_string()).collect(),
                access,
                exp: 1,
                jti: "j".into(),
                nbf: None,
                iat: None,
            },
        }
    }

    #[test]
    fn a_grant_covers_its_patterns_only() {
        let g = grant(&["team-*", "notes"], Access::Write);
        assert_eq!(g.access_to("team-a"), Some(Access::Write));
        assert_eq!(g.access_to("notes"), Some(Access::Write));
        assert_eq!(g.access_to("secret"), None);
        assert!(!g.is_server_admin());
        assert_eq!(g.name(), "ann");
        assert!(grant(&["*"], Access::Admin).is_server_admin());
        assert!(!grant(&["a*"], Access::Admin).is_server_admin());
        assert!(!grant(&["*"], Access::Write).is_server_admin());
    }
}
