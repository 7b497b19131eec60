//! Text operations: the retain / insert / delete sequence, and its algebra.
//!
//! All lengths and positions count Unicode scalar values (Rust `char`s),
//! never bytes or UTF-16 code units.

use ropey::Rope;

use crate::error::OtError;

/// One step of an [`Operation`], walking the base document from start to end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Component {
    /// Keep the next `n` characters unchanged.
    Retain(usize),
    /// Insert this text at the current position.
    Insert(String),
    /// Remove the next `n` characters.
    Delete(usize),
}

/// A change to a whole document: a sequence of [`Component`]s that together
/// cover every character of the base document.
///
/// Operations are always kept canonical by the builder methods
/// ([`retain`](Self::retain), [`insert`](Self::insert), [`delete`](Self::delete)),
/// in the same form as ot.js: no empty components, adjacent components of one
/// kind merged, and between two retains at most one insert followed by at most
/// one delete. Two operations with the same effect built through the builder
/// are therefore equal (`==`) and serialise to the same JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Operation {
    components: Vec<Component>,
    base_len: usize,
    target_len: usize,
}

/// Number of `char`s in `s`.
#[inline]
pub(crate) fn char_len(s: &str) -> usize {
    // Typing inserts one character at a time, and a one-byte `str` is one
    // ASCII char: skip the (out-of-line) general count, and the read of the
    // text it needs.
    if s.len() <= 1 {
        return s.len();
    }
    s.chars().count()
}

/// Byte offset of the `n`-th char of `s` (or `s.len()` if `s` is shorter).
#[inline]
fn byte_offset(s: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    // ASCII fast path: the byte offset is the char offset.
    if n <= s.len() && s.as_bytes()[..n].is_ascii() {
        return n;
    }
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

impl Operation {
    /// An empty operation (the no-op on an empty document); extend it with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty operation with room for `n` components.
    pub fn with_capacity(n: usize) -> Self {
        Operation {
            components: Vec::with_capacity(n),
            base_len: 0,
            target_len: 0,
        }
    }

    /// The identity operation on a document of `len` characters (`[len]`, or `[]` when `len` is 0).
    pub fn identity(len: usize) -> Self {
        let mut op = Operation::new();
        op.retain(len);
        op
    }

    /// The components, in canonical form.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Length (in chars) of the document this operation applies to.
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// Length (in chars) of the document this operation produces.
    pub fn target_len(&self) -> usize {
        self.target_len
    }

    /// True when applying the operation changes nothing (it only retains).
    pub fn is_noop(&self) -> bool {
        self.components
            .iter()
            .all(|c| matches!(c, Component::Retain(_)))
    }

    /// Keep the next `n` characters.
    pub fn retain(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len += n;
        self.target_len += n;
        if let Some(Component::Retain(last)) = self.components.last_mut() {
            *last += n;
        } else {
            self.components.push(Component::Retain(n));
        }
        self
    }

    /// Insert `text` at the current position.
    pub fn insert(&mut self, text: &str) -> &mut Self {
        if text.is_empty() {
            return self;
        }
        self.insert_counted(text, char_len(text))
    }

    /// Like [`insert`](Self::insert) when the caller already knows `text`'s char count.
    fn insert_counted(&mut self, text: &str, chars: usize) -> &mut Self {
        if chars == 0 {
            return self;
        }
        self.target_len += chars;
        let n = self.components.len();
        match self.components.as_mut_slice() {
            [.., Component::Insert(last)] => last.push_str(text),
            // Canonical order puts an insert before an adjacent delete.
            [.., Component::Insert(prev), Component::Delete(_)] => prev.push_str(text),
            [.., Component::Delete(_)] => self
                .components
                .insert(n - 1, Component::Insert(text.to_owned())),
            _ => self.components.push(Component::Insert(text.to_owned())),
        }
        self
    }

    /// Remove the next `n` characters.
    pub fn delete(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len += n;
        if let Some(Component::Delete(last)) = self.components.last_mut() {
            *last += n;
        } else {
            self.components.push(Component::Delete(n));
        }
        self
    }

    /// Append one component through the canonicalising builder.
    pub fn push(&mut self, component: Component) -> &mut Self {
        match component {
            Component::Retain(n) => self.retain(n),
            Component::Insert(s) => self.insert(&s),
            Component::Delete(n) => self.delete(n),
        }
    }

    /// An operation inserting `text` at char position `pos` of a document of `doc_len` chars.
    pub fn insert_at(doc_len: usize, pos: usize, text: &str) -> Result<Operation, OtError> {
        Self::replace_range(doc_len, pos, 0, text)
    }

    /// An operation deleting `len` chars starting at `pos` of a document of `doc_len` chars.
    pub fn delete_range(doc_len: usize, pos: usize, len: usize) -> Result<Operation, OtError> {
        Self::replace_range(doc_len, pos, len, "")
    }

    /// An operation replacing `len` chars at `pos` with `text`, in a document of `doc_len` chars.
    pub fn replace_range(
        doc_len: usize,
        pos: usize,
        len: usize,
        text: &str,
    ) -> Result<Operation, OtError> {
        let end =
            pos.checked_add(len)
                .filter(|&end| end <= doc_len)
                .ok_or(OtError::OutOfRange {
                    start: pos,
                    end: pos.saturating_add(len),
                    len: doc_len,
                })?;
        // Build the canonical form directly (what `retain(pos).insert(text)
        // .delete(len).retain(doc_len - end)` gives, without the builder's
        // merging checks): this is the hot path of every local edit.
        let inserted = char_len(text);
        let after = doc_len - end;
        let mut components = Vec::with_capacity(4);
        if inserted == 0 && len == 0 {
            // A no-op: a single retain (or nothing on an empty document).
            if doc_len > 0 {
                components.push(Component::Retain(doc_len));
            }
        } else {
            if pos > 0 {
                components.push(Component::Retain(pos));
            }
            if inserted > 0 {
                components.push(Component::Insert(text.to_owned()));
            }
            if len > 0 {
                components.push(Component::Delete(len));
            }
            if after > 0 {
                components.push(Component::Retain(after));
            }
        }
        Ok(Operation {
            components,
            base_len: doc_len,
            target_len: doc_len - len + inserted,
        })
    }

    fn check_base(&self, actual: usize) -> Result<(), OtError> {
        if self.base_len == actual {
            Ok(())
        } else {
            Err(OtError::LengthMismatch {
                expected: self.base_len,
                actual,
            })
        }
    }

    /// Apply the operation to `text`, returning the new text.
    ///
    /// Fails with [`OtError::LengthMismatch`] if `text` is not `base_len` chars long.
    pub fn apply(&self, text: &str) -> Result<String, OtError> {
        self.check_base(char_len(text))?;
        let mut out = String::with_capacity(text.len() + self.inserted_bytes());
        let mut rest = text;
        for component in &self.components {
            match component {
                Component::Retain(n) => {
                    let (kept, tail) = rest.split_at(byte_offset(rest, *n));
                    out.push_str(kept);
                    rest = tail;
                }
                Component::Insert(s) => out.push_str(s),
                Component::Delete(n) => rest = &rest[byte_offset(rest, *n)..],
            }
        }
        Ok(out)
    }

    fn inserted_bytes(&self) -> usize {
        self.components
            .iter()
            .map(|c| match c {
                Component::Insert(s) => s.len(),
                _ => 0,
            })
            .sum()
    }

    /// Apply the operation to a rope in place.
    ///
    /// Costs O(components · log n): a small edit on a large document does not
    /// touch the untouched parts. On a length mismatch the rope is left unchanged.
    pub fn apply_to_rope(&self, rope: &mut Rope) -> Result<(), OtError> {
        self.check_base(rope.len_chars())?;
        let mut index = 0;
        for component in &self.components {
            match component {
                Component::Retain(n) => index += n,
                Component::Insert(s) => {
                    rope.insert(index, s);
                    index += char_len(s);
                }
                Component::Delete(n) => rope.remove(index..index + n),
            }
        }
        Ok(())
    }

    /// The operation that undoes `self`, given the text `self` was applied to.
    ///
    /// `invert(op, s)` applied to `apply(op, s)` gives back `s`.
    pub fn invert(&self, base: &str) -> Result<Operation, OtError> {
        self.check_base(char_len(base))?;
        let mut inverse = Operation::with_capacity(self.components.len());
        let mut rest = base;
        for component in &self.components {
            match component {
                Component::Retain(n) => {
                    inverse.retain(*n);
                    rest = &rest[byte_offset(rest, *n)..];
                }
                Component::Insert(s) => {
                    inverse.delete(char_len(s));
                }
                Component::Delete(n) => {
                    let (deleted, tail) = rest.split_at(byte_offset(rest, *n));
                    inverse.insert_counted(deleted, *n);
                    rest = tail;
                }
            }
        }
        Ok(inverse)
    }

    /// Like [`invert`](Self::invert), reading the base text from a rope.
    pub fn invert_rope(&self, base: &Rope) -> Result<Operation, OtError> {
        self.check_base(base.len_chars())?;
        let mut inverse = Operation::with_capacity(self.components.len());
        let mut index = 0;
        for component in &self.components {
            match component {
                Component::Retain(n) => {
                    inverse.retain(*n);
                    index += n;
                }
                Component::Insert(s) => {
                    inverse.delete(char_len(s));
                }
                Component::Delete(n) => {
                    let deleted = base.slice(index..index + n).to_string();
                    inverse.insert_counted(&deleted, *n);
                    index += n;
                }
            }
        }
        Ok(inverse)
    }

    /// The single operation with the effect of `self` followed by `next`.
    ///
    /// Fails with [`OtError::ComposeMismatch`] unless `self.target_len() == next.base_len()`.
    pub fn compose(&self, next: &Operation) -> Result<Operation, OtError> {
        if self.target_len != next.base_len {
            return Err(OtError::ComposeMismatch {
                first_target: self.target_len,
                second_base: next.base_len,
            });
        }
        let mut result = Operation::with_capacity(self.components.len() + next.components.len());
        let mut first = Pieces::new(&self.components);
        let mut second = Pieces::new(&next.components);
        let mut a = first.next();
        let mut b = second.next();
        loop {
            match (a, b) {
                (None, None) => break,
                (Some(Piece::Delete(n)), _) => {
                    result.delete(n);
                    a = first.next();
                }
                (_, Some(Piece::Insert(s, len))) => {
                    result.insert_counted(s, len);
                    b = second.next();
                }
                (Some(pa), Some(pb)) => {
                    let n = pa.len().min(pb.len());
                    match (pa, pb) {
                        (Piece::Retain(_), Piece::Retain(_)) => {
                            result.retain(n);
                        }
                        (Piece::Insert(s, _), Piece::Retain(_)) => {
                            let (head, _) = s.split_at(byte_offset(s, n));
                            result.insert_counted(head, n);
                        }
                        (Piece::Retain(_), Piece::Delete(_)) => {
                            result.delete(n);
                        }
                        // Inserted by the first and deleted by the second: nothing remains.
                        (Piece::Insert(..), Piece::Delete(_)) => {}
                        (Piece::Delete(_), _) | (_, Piece::Insert(..)) => unreachable!(),
                    }
                    a = pa.advance(n).or_else(|| first.next());
                    b = pb.advance(n).or_else(|| second.next());
                }
                // Unreachable when the lengths match; kept total so bad input can never panic.
                (None, Some(_)) | (Some(_), None) => {
                    return Err(OtError::ComposeMismatch {
                        first_target: self.target_len,
                        second_base: next.base_len,
                    })
                }
            }
        }
        Ok(result)
    }

    /// Transform two concurrent operations `a` (= `self`) and `b`, both based on
    /// the same document, into `(a', b')` such that
    /// `apply(apply(s, a), b') == apply(apply(s, b), a')`.
    ///
    /// **Tie rule:** when `a` and `b` insert at the same position, `a`'s text
    /// comes first (as in ot.js). The server always passes the incoming client
    /// operation as `a`, and a client always passes its own pending operation
    /// as `a`, so both sides order ties the same way.
    pub fn transform(&self, b: &Operation) -> Result<(Operation, Operation), OtError> {
        if self.base_len != b.base_len {
            return Err(OtError::TransformMismatch {
                a_base: self.base_len,
                b_base: b.base_len,
            });
        }
        let cap = self.components.len() + b.components.len();
        let mut a_prime = Operation::with_capacity(cap);
        let mut b_prime = Operation::with_capacity(cap);
        let mut a_pieces = Pieces::new(&self.components);
        let mut b_pieces = Pieces::new(&b.components);
        let mut pa = a_pieces.next();
        let mut pb = b_pieces.next();
        loop {
            match (pa, pb) {
                (None, None) => break,
                (Some(Piece::Insert(s, len)), _) => {
                    a_prime.insert_counted(s, len);
                    b_prime.retain(len);
                    pa = a_pieces.next();
                }
                (_, Some(Piece::Insert(s, len))) => {
                    a_prime.retain(len);
                    b_prime.insert_counted(s, len);
                    pb = b_pieces.next();
                }
                (Some(x), Some(y)) => {
                    let n = x.len().min(y.len());
                    match (x, y) {
                        (Piece::Retain(_), Piece::Retain(_)) => {
                            a_prime.retain(n);
                            b_prime.retain(n);
                        }
                        // Both deleted the same text: neither needs to delete it again.
                        (Piece::Delete(_), Piece::Delete(_)) => {}
                        (Piece::Delete(_), Piece::Retain(_)) => {
                            a_prime.delete(n);
                        }
                        (Piece::Retain(_), Piece::Delete(_)) => {
                            b_prime.delete(n);
                        }
                        (Piece::Insert(..), _) | (_, Piece::Insert(..)) => unreachable!(),
                    }
                    pa = x.advance(n).or_else(|| a_pieces.next());
                    pb = y.advance(n).or_else(|| b_pieces.next());
                }
                (None, Some(_)) | (Some(_), None) => {
                    return Err(OtError::TransformMismatch {
                        a_base: self.base_len,
                        b_base: b.base_len,
                    })
                }
            }
        }
        Ok((a_prime, b_prime))
    }

    /// Where a cursor at char position `pos` of the base document ends up after
    /// this operation.
    ///
    /// A cursor exactly at an insert point moves **after** the inserted text
    /// (the ot.js rule); a cursor inside a deleted range moves to where the
    /// range was. Positions past the end are clamped to the end first, so the
    /// result is always within `0..=target_len`; the mapping keeps order
    /// (`p <= q` implies `f(p) <= f(q)`).
    pub fn transform_position(&self, pos: usize) -> usize {
        let pos = pos.min(self.base_len);
        // `remaining`: chars of the base document still to walk before reaching the cursor.
        let mut remaining = pos;
        let mut new_pos = pos;
        for component in &self.components {
            match component {
                Component::Retain(n) => {
                    if *n > remaining {
                        break;
                    }
                    remaining -= n;
                }
                Component::Insert(s) => new_pos += char_len(s),
                Component::Delete(n) => {
                    new_pos -= remaining.min(*n);
                    if *n > remaining {
                        break;
                    }
                    remaining -= n;
                }
            }
        }
        new_pos
    }

    /// Map a selection range through this operation (both ends as by
    /// [`transform_position`](Self::transform_position)).
    pub fn transform_range(&self, range: crate::Range) -> crate::Range {
        crate::Range {
            anchor: self.transform_position(range.anchor),
            head: self.transform_position(range.head),
        }
    }

    /// Build an operation that turns `old` into `new` (for clients that only see
    /// the text before and after an edit, such as a textarea or a file).
    ///
    /// Uses a character-level Myers diff (the `similar` crate); the result is
    /// deterministic for the same inputs.
    pub fn diff(old: &str, new: &str) -> Operation {
        // Trim the common prefix and suffix first: most edits are one local change,
        // and this keeps the diff cheap on large documents.
        let prefix_bytes = common_prefix_bytes(old, new);
        let (old_mid, new_mid) = (&old[prefix_bytes..], &new[prefix_bytes..]);
        let suffix_bytes = common_suffix_bytes(old_mid, new_mid);
        let old_mid = &old_mid[..old_mid.len() - suffix_bytes];
        let new_mid = &new_mid[..new_mid.len() - suffix_bytes];

        let mut op = Operation::new();
        op.retain(char_len(&old[..prefix_bytes]));
        let diff = similar::TextDiff::configure()
            .algorithm(similar::Algorithm::Myers)
            .diff_chars(old_mid, new_mid);
        for change in diff.iter_all_changes() {
            let value = change.value();
            match change.tag() {
                similar::ChangeTag::Equal => op.retain(char_len(value)),
                similar::ChangeTag::Delete => op.delete(char_len(value)),
                similar::ChangeTag::Insert => op.insert(value),
            };
        }
        op.retain(char_len(&old[old.len() - suffix_bytes..]));
        op
    }
}

fn common_prefix_bytes(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

fn common_suffix_bytes(a: &str, b: &str) -> usize {
    let mut bytes = 0;
    for (x, y) in a.chars().rev().zip(b.chars().rev()) {
        if x != y {
            break;
        }
        bytes += x.len_utf8();
    }
    bytes
}

/// A borrowed, possibly partly consumed component, with its char length.
#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Retain(usize),
    Insert(&'a str, usize),
    Delete(usize),
}

impl<'a> Piece<'a> {
    fn len(self) -> usize {
        match self {
            Piece::Retain(n) | Piece::Delete(n) | Piece::Insert(_, n) => n,
        }
    }

    /// What is left after consuming `n` chars, or `None` if nothing is.
    fn advance(self, n: usize) -> Option<Piece<'a>> {
        if n >= self.len() {
            return None;
        }
        Some(match self {
            Piece::Retain(m) => Piece::Retain(m - n),
            Piece::Delete(m) => Piece::Delete(m - n),
            Piece::Insert(s, m) => Piece::Insert(&s[byte_offset(s, n)..], m - n),
        })
    }
}

struct Pieces<'a> {
    iter: std::slice::Iter<'a, Component>,
}

impl<'a> Pieces<'a> {
    fn new(components: &'a [Component]) -> Self {
        Pieces {
            iter: components.iter(),
        }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        self.iter.next().map(|c| match c {
            Component::Retain(n) => Piece::Retain(*n),
            Component::Delete(n) => Piece::Delete(*n),
            Component::Insert(s) => Piece::Insert(s, char_len(s)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(build: impl FnOnce(&mut Operation)) -> Operation {
        let mut o = Operation::new();
        build(&mut o);
        o
    }

    #[test]
    fn builder_is_canonical() {
        let o = op(|o| {
            o.retain(2)
                .retain(3)
                .delete(1)
                .insert("a")
                .insert("b")
                .delete(2);
        });
        assert_eq!(
            o.components(),
            &[
                Component::Retain(5),
                Component::Insert("ab".into()),
                Component::Delete(3)
            ]
        );
        assert_eq!(o.base_len(), 8);
        assert_eq!(o.target_len(), 7);
    }

    #[test]
    fn apply_counts_scalar_values() {
        let o = Operation::replace_range(5, 1, 2, "🙂").unwrap_or_default();
        assert_eq!(o.apply("é漢🙂xy").as_deref(), Ok("é🙂xy"));
        let mut rope = Rope::from_str("é漢🙂xy");
        assert_eq!(o.apply_to_rope(&mut rope), Ok(()));
        assert_eq!(rope.to_string(), "é🙂xy");
    }

    #[test]
    fn length_mismatch_leaves_rope_untouched() {
        let o = Operation::insert_at(3, 1, "x").unwrap_or_default();
        let mut rope = Rope::from_str("ab");
        assert_eq!(
            o.apply_to_rope(&mut rope),
            Err(OtError::LengthMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(rope.to_string(), "ab");
    }

    #[test]
    fn cursor_at_insert_point_moves_after() {
        let o = Operation::insert_at(4, 2, "XYZ").unwrap_or_default();
        assert_eq!(o.transform_position(2), 5);
        assert_eq!(o.transform_position(1), 1);
        assert_eq!(o.transform_position(3), 6);
        let d = Operation::delete_range(6, 1, 3).unwrap_or_default();
        assert_eq!(d.transform_position(2), 1);
        assert_eq!(d.transform_position(5), 2);
        assert_eq!(d.transform_position(99), 3);
    }

    #[test]
    fn tie_puts_a_first() {
        let a = Operation::insert_at(0, 0, "A").unwrap_or_default();
        let b = Operation::insert_at(0, 0, "B").unwrap_or_default();
        let (a2, b2) = a.transform(&b).unwrap_or_default();
        let left = b2.apply(&a.apply("").unwrap_or_default());
        let right = a2.apply(&b.apply("").unwrap_or_default());
        assert_eq!(left.as_deref(), Ok("AB"));
        assert_eq!(right.as_deref(), Ok("AB"));
    }

    #[test]
    fn diff_roundtrip() {
        let old = "héllo wörld e\u{301}";
        let new = "hello, 🙂 world e\u{301}!";
        let d = Operation::diff(old, new);
        assert_eq!(d.apply(old).as_deref(), Ok(new));
    }

    #[test]
    fn helpers_reject_out_of_range() {
        assert_eq!(
            Operation::delete_range(3, 2, 5),
            Err(OtError::OutOfRange {
                start: 2,
                end: 7,
                len: 3
            })
        );
        assert!(Operation::insert_at(3, usize::MAX, "x").is_err());
    }
}
