//! Where a stored op came from, beyond its client id: at a region, an op
//! of the home (which home revision); at a home, a regional link's op
//! (which revisions of that region, and whose edits). Absent: a client of
//! this node sent it.

use ot_protocol::{OpOrigin, LINK_ID_PREFIX};
use serde::{Deserialize, Serialize};

/// The origin stored with an op (the `origin` column, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredOrigin {
    /// At a region: the home's op of revision `home_rev`, by `author`; or,
    /// without an author, the home's text at `home_rev` that a regional
    /// history starts from (its first revision).
    Upstream {
        /// The home revision it was.
        home_rev: u64,
        /// Its author at the home.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        author: Option<String>,
    },
    /// At a home: a region's op carrying that region's revisions
    /// `revs.0..=revs.1`, made by `authors` there.
    Region {
        /// The region's node id.
        node: String,
        /// The first and last regional revision it covers.
        revs: (u64, u64),
        /// The region's clients whose edits it carries.
        authors: Vec<String>,
        /// Authors beyond those listed.
        #[serde(default, skip_serializing_if = "is_zero")]
        more_authors: u64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StoredOrigin {
    /// The origin of an op that the link `link_id` (`r-<node>`) sent with
    /// `origin`.
    pub fn region(link_id: &str, origin: OpOrigin) -> StoredOrigin {
        StoredOrigin::Region {
            node: link_id
                .strip_prefix(LINK_ID_PREFIX)
                .unwrap_or(link_id)
                .to_owned(),
            revs: origin.revs,
            authors: origin.authors,
            more_authors: origin.more_authors,
        }
    }
}
