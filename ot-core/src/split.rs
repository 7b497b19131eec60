//! Bounded operations: the limits a server announces for one op, and
//! splitting an op that exceeds them into a sequence of ops that each fit.
//!
//! A client keeps every op it sends within the server's `max_op_len`
//! (characters inserted plus deleted) and `max_op_components`, so that a long
//! offline session is sent as several ops instead of one the server refuses.
//! [`Operation::split`] cuts an op into pieces `p1, p2, …` applied in order:
//! `p1 ∘ p2 ∘ … == op` (composition gives exactly the original, canonical
//! value), and each piece fits the limits.

use serde::{Deserialize, Serialize};

use crate::operation::{Component, Operation};

/// The bounds on one operation (the op part of the server's announced limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpLimits {
    /// Most characters one op may insert plus delete.
    pub max_op_len: usize,
    /// Most components (retains, inserts, deletes) one op may have.
    pub max_op_components: usize,
}

impl OpLimits {
    /// The fewest components that can express an edit in the middle of a
    /// text (`[retain, insert, retain]`): smaller limits are raised to it.
    pub const MIN_COMPONENTS: usize = 3;

    /// The server's defaults (the same as `ot_protocol::Limits::default()`,
    /// checked by the driver's tests): what a client keeps to until a server
    /// has announced its own.
    pub const DEFAULT: OpLimits = OpLimits {
        max_op_len: 100_000,
        max_op_components: 10_000,
    };

    /// The limits [`Operation::split`] actually cuts by: at least one
    /// character and [`MIN_COMPONENTS`](Self::MIN_COMPONENTS) components per
    /// op, since no edit can be smaller.
    pub fn effective(self) -> OpLimits {
        OpLimits {
            max_op_len: self.max_op_len.max(1),
            max_op_components: self.max_op_components.max(Self::MIN_COMPONENTS),
        }
    }
}

impl Default for OpLimits {
    fn default() -> Self {
        OpLimits::DEFAULT
    }
}

/// One insert or delete of at most `max_op_len` characters, with the
/// characters retained before it.
enum Atom<'a> {
    Insert(&'a str, usize),
    Delete(usize),
}

impl Atom<'_> {
    fn size(&self) -> usize {
        match self {
            Atom::Insert(_, chars) => *chars,
            Atom::Delete(n) => *n,
        }
    }
}

/// The piece being built: it starts after `lead` characters of final text.
struct Piece {
    op: Operation,
    /// Characters inserted plus deleted so far.
    size: usize,
    /// Components so far, counting merges as separate (an upper bound).
    components: usize,
    /// Base characters of the original op consumed by this piece.
    base_advance: usize,
    /// Final-text characters this piece has produced (retains and inserts).
    target_advance: usize,
}

impl Piece {
    fn new() -> Piece {
        Piece {
            op: Operation::new(),
            size: 0,
            components: 0,
            base_advance: 0,
            target_advance: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.size == 0
    }
}

impl Operation {
    /// Characters this op inserts plus deletes (what `max_op_len` bounds).
    pub fn change_size(&self) -> usize {
        self.components()
            .iter()
            .map(|c| match c {
                Component::Retain(_) => 0,
                Component::Insert(s) => s.chars().count(),
                Component::Delete(n) => *n,
            })
            .sum()
    }

    /// Whether this op is within `limits` (change size and components).
    pub fn fits(&self, limits: OpLimits) -> bool {
        self.components().len() <= limits.max_op_components
            && self.change_size() <= limits.max_op_len
    }

    /// Split this op into ops applied one after the other, each within
    /// `limits` (raised to [`OpLimits::effective`]), whose composition is
    /// exactly this op. An op that fits is returned as it is (a no-op too);
    /// an insert or delete longer than `max_op_len` is itself cut.
    ///
    /// Piece `k` retains the final text the earlier pieces produced, makes
    /// the next edits, and retains the rest of the original text.
    pub fn split(&self, limits: OpLimits) -> Vec<Operation> {
        if self.is_noop() || self.fits(limits) {
            return vec![self.clone()];
        }
        let limits = limits.effective();
        let base_len = self.base_len();
        let mut pieces = Vec::new();
        // Final text before the current piece, and original text consumed before it.
        let mut done_target = 0usize;
        let mut done_base = 0usize;
        let mut piece = Piece::new();
        let mut gap = 0usize;

        let mut add = |gap: usize, atom: Atom<'_>, piece: &mut Piece| {
            let atom_base = match atom {
                Atom::Insert(..) => 0,
                Atom::Delete(n) => n,
            };
            let lead = if piece.is_empty() { done_target } else { 0 };
            let cost = usize::from(lead + gap > 0) + 1;
            let rest = base_len - (done_base + piece.base_advance + gap + atom_base);
            let trailing = usize::from(rest > 0);
            let fits = piece.size + atom.size() <= limits.max_op_len
                && piece.components + cost + trailing <= limits.max_op_components;
            if !piece.is_empty() && !fits {
                // Close the piece: it retains the rest of the original text.
                let mut done = std::mem::replace(piece, Piece::new());
                done.op.retain(base_len - done_base - done.base_advance);
                done_target += done.target_advance;
                done_base += done.base_advance;
                pieces.push(done.op);
                return add_to(piece, done_target, gap, atom);
            }
            add_to(piece, lead, gap, atom)
        };

        for c in self.components() {
            match c {
                Component::Retain(n) => gap += n,
                Component::Insert(s) => {
                    for (chunk, chars) in chunks(s, limits.max_op_len) {
                        add(gap, Atom::Insert(chunk, chars), &mut piece);
                        gap = 0;
                    }
                }
                Component::Delete(n) => {
                    let mut left = *n;
                    while left > 0 {
                        let take = left.min(limits.max_op_len);
                        add(gap, Atom::Delete(take), &mut piece);
                        gap = 0;
                        left -= take;
                    }
                }
            }
        }
        if !piece.is_empty() {
            piece.op.retain(base_len - done_base - piece.base_advance);
            pieces.push(piece.op);
        }
        pieces
    }
}

/// Add `atom` (after `lead + gap` retained characters) to `piece`.
fn add_to(piece: &mut Piece, lead: usize, gap: usize, atom: Atom<'_>) {
    if lead + gap > 0 {
        piece.op.retain(lead + gap);
        piece.components += 1;
    }
    piece.components += 1;
    piece.size += atom.size();
    piece.base_advance += gap;
    piece.target_advance += gap;
    match atom {
        Atom::Insert(s, chars) => {
            piece.op.insert(s);
            piece.target_advance += chars;
        }
        Atom::Delete(n) => {
            piece.op.delete(n);
            piece.base_advance += n;
        }
    }
}

/// `s` cut into slices of at most `max` chars, with their char counts.
fn chunks(s: &str, max: usize) -> impl Iterator<Item = (&str, usize)> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (end, chars) = rest
            .char_indices()
            .nth(max)
            .map_or((rest.len(), rest.chars().count()), |(i, _)| (i, max));
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some((chunk, chars))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(len: usize, comps: usize) -> OpLimits {
        OpLimits {
            max_op_len: len,
            max_op_components: comps,
        }
    }

    fn compose_all(pieces: &[Operation]) -> Operation {
        let mut it = pieces.iter();
        let first = it.next().cloned().unwrap_or_default();
        it.fold(first, |acc, p| acc.compose(p).unwrap())
    }

    #[test]
    fn a_long_insert_is_cut_into_pieces() {
        let op = Operation::insert_at(2, 1, "abcdefg🙂").unwrap();
        let pieces = op.split(limits(3, 10));
        let json: Vec<String> = pieces.iter().map(|p| p.to_json()).collect();
        assert_eq!(json, [r#"[1,"abc",1]"#, r#"[4,"def",1]"#, r#"[7,"g🙂",1]"#]);
        assert_eq!(compose_all(&pieces), op);
        let mut text = "xy".to_owned();
        for p in &pieces {
            text = p.apply(&text).unwrap();
        }
        assert_eq!(text, op.apply("xy").unwrap());
    }

    #[test]
    fn many_small_edits_are_grouped_by_components() {
        // [1,"a",1,"a",1,"a",1,"a",1]: 9 components.
        let mut op = Operation::new();
        for _ in 0..4 {
            op.retain(1).insert("a");
        }
        op.retain(1);
        let pieces = op.split(limits(100, 4));
        assert!(pieces.iter().all(|p| p.fits(limits(100, 4))), "{pieces:?}");
        assert_eq!(compose_all(&pieces), op);
    }

    #[test]
    fn fitting_ops_and_noops_are_kept_whole() {
        let op = Operation::identity(5);
        assert_eq!(op.split(limits(1, 3)), vec![op.clone()]);
        let op = Operation::delete_range(5, 1, 2).unwrap();
        assert_eq!(op.split(limits(2, 3)), vec![op.clone()]);
    }

    #[test]
    fn chunks_respect_char_boundaries() {
        let got: Vec<_> = chunks("é漢🙂x", 2).collect();
        assert_eq!(got, [("é漢", 2), ("🙂x", 2)]);
        let got: Vec<_> = chunks("abc", 5).collect();
        assert_eq!(got, [("abc", 3)]);
    }
}
