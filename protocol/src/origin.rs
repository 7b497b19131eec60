//! The `origin` of a regional link's op: which revisions of its region (and
//! whose edits) it carries, so the home's journal names the region's.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::ClientId;

/// Most authors one origin names (the rest are counted in `more_authors`).
pub const MAX_ORIGIN_AUTHORS: usize = 32;

/// `{"revs":[lo,hi],"authors":["c1",…],"more_authors"?:n}`: the op carries
/// the edits of the sending region's revisions `lo..=hi` (those of its own
/// clients among them; the region's copies of the home's ops are not
/// resent), made by `authors` (client ids at the region, in revision order,
/// at most [`MAX_ORIGIN_AUTHORS`]; `more_authors` counts the others).
/// Only a regional link (client id `r-…`) may attach one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpOrigin {
    /// The first and last regional revision the op covers.
    pub revs: (u64, u64),
    /// The clients whose edits it carries.
    pub authors: Vec<String>,
    /// Authors beyond the first [`MAX_ORIGIN_AUTHORS`], if any.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_authors: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OpOrigin {
    /// An origin for regional revisions `lo..=hi` by `authors` (distinct
    /// client ids in order), keeping the first [`MAX_ORIGIN_AUTHORS`].
    pub fn new(lo: u64, hi: u64, mut authors: Vec<String>) -> OpOrigin {
        let more_authors = authors.len().saturating_sub(MAX_ORIGIN_AUTHORS) as u64;
        authors.truncate(MAX_ORIGIN_AUTHORS);
        OpOrigin {
            revs: (lo, hi),
            authors,
            more_authors,
        }
    }

    /// Read and check an `origin` field: revisions `1 <= lo <= hi` within
    /// JavaScript's safe integers, at most [`MAX_ORIGIN_AUTHORS`] authors,
    /// each a valid client id. The error says what is wrong.
    pub fn from_json_value(value: &Value) -> Result<OpOrigin, String> {
        let origin: OpOrigin =
            serde_json::from_value(value.clone()).map_err(|e| format!("invalid `origin`: {e}"))?;
        let (lo, hi) = origin.revs;
        if lo == 0 || lo > hi || hi > ot_core::MAX_SAFE_INTEGER {
            return Err(format!(
                "invalid `origin`: revs [{lo},{hi}] must satisfy 1 <= lo <= hi <= 2^53-1"
            ));
        }
        if origin.more_authors > ot_core::MAX_SAFE_INTEGER {
            return Err("invalid `origin`: `more_authors` is not a safe integer".to_owned());
        }
        if origin.authors.len() > MAX_ORIGIN_AUTHORS {
            return Err(format!(
                "invalid `origin`: {} authors; at most {MAX_ORIGIN_AUTHORS} (count the rest in `more_authors`)",
                origin.authors.len()
            ));
        }
        if let Some(bad) = origin.authors.iter().find(|a| ClientId::parse(a).is_err()) {
            let shown: String = bad.chars().take(40).collect();
            return Err(format!(
                "invalid `origin`: author {shown:?} is not a client id"
            ));
        }
        Ok(origin)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_origin_reads_back_as_written() {
        let origin = OpOrigin::new(3, 7, vec!["alice".into(), "bob".into()]);
        let value = serde_json::to_value(&origin).unwrap();
        assert_eq!(value, json!({"revs": [3, 7], "authors": ["alice", "bob"]}));
        assert_eq!(OpOrigin::from_json_value(&value).unwrap(), origin);
    }

    #[test]
    fn many_authors_are_counted_beyond_the_cap() {
        let authors: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let origin = OpOrigin::new(1, 1, authors);
        assert_eq!(origin.authors.len(), MAX_ORIGIN_AUTHORS);
        assert_eq!(origin.more_authors, 8);
        let value = serde_json::to_value(&origin).unwrap();
        assert_eq!(OpOrigin::from_json_value(&value).unwrap(), origin);
    }

    #[test]
    fn bad_origins_are_refused_with_what_is_wrong() {
        let too_many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
        for (bad, says) in [
            (json!({"revs": [0, 1], "authors": []}), "1 <= lo"),
            (json!({"revs": [5, 4], "authors": []}), "1 <= lo"),
            (
                json!({"revs": [1, 9007199254740992u64], "authors": []}),
                "2^53",
            ),
            (json!({"revs": [1], "authors": []}), "invalid `origin`"),
            (
                json!({"revs": [1, 2], "authors": ["no spaces"]}),
                "not a client id",
            ),
            (json!({"revs": [1, 2], "authors": too_many}), "at most 32"),
            (
                json!({"revs": [1, 2], "authors": [], "x": 1}),
                "unknown field",
            ),
            (json!("r-eu"), "invalid `origin`"),
        ] {
            let err = OpOrigin::from_json_value(&bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
