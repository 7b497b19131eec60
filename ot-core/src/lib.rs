//! # ot-core
//!
//! Operational transformation (OT) for plain text, with no I/O and no async.
//!
//! - [`Operation`]: retain / insert / delete over a whole document, lengths in
//!   Unicode scalar values (`char`s), kept canonical; the ot.js JSON form
//!   (`[5,"hi",-2,3]`); [`apply`](Operation::apply) to a `&str` or a
//!   [`ropey::Rope`]; [`compose`](Operation::compose),
//!   [`transform`](Operation::transform) (ties: **`a`'s insert first**),
//!   [`invert`](Operation::invert), cursor mapping
//!   ([`transform_position`](Operation::transform_position)) and
//!   [`diff`](Operation::diff).
//! - [`client::Client`]: the client state machine of the ot.js model
//!   (synchronized / awaiting ack / awaiting ack with a buffer), with sequence
//!   numbers for exactly-once resends and a serialisable state.
//! - [`history::DocumentHistory`]: the server side for one document: receive an
//!   op at a base revision, deduplicate by (client id, seq), transform, append.
//!
//! - [`region::RegionalDocument`]: a regional server's document: the regional
//!   history and the link that replicates it to the document's home.
//!
//! Everything is deterministic; the laws are property-tested in `tests/`.

pub mod client;
pub mod conflict_replay;
pub mod conformance;
mod error;
pub mod history;
mod json;
mod operation;
pub mod region;
mod split;
mod text;

/// The text type of [`Component::Insert`] (re-exported from the `compact_str` crate).
pub use compact_str::CompactString;
pub use error::{OpJsonError, OtError};
pub use json::MAX_SAFE_INTEGER;
pub use operation::{Component, Operation};
pub use split::OpLimits;
pub use text::Text;

/// A selection in a document: `anchor` is where it started, `head` where the
/// cursor is. A plain cursor has `anchor == head`. Serialised as `[anchor, head]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(from = "(usize, usize)", into = "(usize, usize)")]
pub struct Range {
    /// Fixed end of the selection (char position).
    pub anchor: usize,
    /// Moving end of the selection, where the cursor is drawn (char position).
    pub head: usize,
}

impl Range {
    /// A collapsed selection (a plain cursor) at `pos`.
    pub fn cursor(pos: usize) -> Self {
        Range {
            anchor: pos,
            head: pos,
        }
    }
}

impl From<(usize, usize)> for Range {
    fn from((anchor, head): (usize, usize)) -> Self {
        Range { anchor, head }
    }
}

impl From<Range> for (usize, usize) {
    fn from(r: Range) -> Self {
        (r.anchor, r.head)
    }
}

/// Map several selection ranges through `op` (see [`Operation::transform_position`]),
/// in one pass over its components ([`Operation::transform_ranges`]).
pub fn transform_ranges(ranges: &[Range], op: &Operation) -> Vec<Range> {
    if ranges.len() <= 1 {
        // One range: two walks that stop at the cursor beat a sort.
        return ranges.iter().map(|r| op.transform_range(*r)).collect();
    }
    op.transform_ranges(ranges)
}
