//! What a connection or token may do: `read` < `write` < `region` < `admin`.

use serde::{Deserialize, Serialize};

/// An access level; each includes the ones before it.
///
/// The first message of every connection carries the connection's level
/// (`"access"`), so that an editor can show read-only mode before the user
/// types. A server without authentication grants `admin` (everything is
/// allowed on a trusted loopback); a server written before access levels sends
/// none, which reads as [`Access::Write`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Snapshots, ops, cursors and the HTTP reads; every op is refused with `forbidden`.
    Read,
    /// Also send ops.
    #[default]
    Write,
    /// Also connect as a regional server's link: a client id starting with
    /// [`LINK_ID_PREFIX`] needs this level (a server without authentication
    /// grants `admin`, which includes it). At the document's home a link's
    /// ops merge however far behind they are based (no `--max-rebase-revs`),
    /// its dedup record is never evicted, and its connections do not count
    /// toward the per-address limit.
    Region,
    /// Also the admin calls (delete, export; server-wide ones with the pattern `*`).
    Admin,
}

impl Access {
    /// Every level, lowest first.
    pub const ALL: [Access; 4] = [Access::Read, Access::Write, Access::Region, Access::Admin];

    /// The level as sent (`read`, `write`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Region => "region",
            Access::Admin => "admin",
        }
    }

    /// Whether ops are accepted.
    pub fn can_write(self) -> bool {
        self >= Access::Write
    }
}

/// A regional link's client id (`r-<node-id>`) needs `region` access.
pub use ot_core::region::{is_link_id, LINK_ID_PREFIX};

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Access {
    type Err = String;

    fn from_str(s: &str) -> Result<Access, String> {
        Access::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not an access level (read, write, region or admin)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_include_the_ones_before() {
        assert!(Access::Read < Access::Write && Access::Write < Access::Region);
        assert!(Access::Region < Access::Admin);
        assert!(Access::Region.can_write());
        assert!(is_link_id("r-eu") && !is_link_id("eu") && !is_link_id("rr-eu"));
        assert!(!Access::Read.can_write());
        assert!(Access::Write.can_write() && Access::Admin.can_write());
        for a in Access::ALL {
            assert_eq!(a.as_str().parse::<Access>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        assert!("root".parse::<Access>().is_err());
    }
}
