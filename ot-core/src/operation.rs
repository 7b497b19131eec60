//! Text operations: the retain / insert / delete sequence, and its algebra.
//!
//! All lengths and positions count Unicode scalar values (Rust `char`s),
//! never bytes or UTF-16 code units.

use compact_str::CompactString;
use ropey::Rope;
use smallvec::SmallVec;

use crate::error::OtError;

/// Components stored inline in an [`Operation`] before it spills to the heap:
/// a single edit (`[retain, insert, delete, retain]`) needs no allocation.
const INLINE_COMPONENTS: usize = 4;

/// The component list of an [`Operation`].
type Components = SmallVec<[Component; INLINE_COMPONENTS]>;

/// One step of an [`Operation`], walking the base document from start to end.
///
/// The text of an insert is a [`CompactString`]: up to 24 bytes are stored
/// inline, without a heap allocation. It derefs to `&str`, compares equal to
/// `&str` and `String`, and converts from both
/// (`Component::Insert("hi".into())`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Component {
    /// Keep the next `n` characters unchanged.
    Retain(usize),
    /// Insert this text at the current position.
    Insert(CompactString),
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
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Operation {
    components: Components,
    base_len: usize,
    target_len: usize,
}

impl Clone for Operation {
    fn clone(&self) -> Self {
        // Clone an inline op element by element straight into its inline
        // storage, rather than through `SmallVec::clone`'s generic `extend`.
        let mut components = Components::new();
        if self.components.spilled() {
            components.reserve_exact(self.components.len());
        }
        for c in &self.components {
            components.push(c.clone());
        }
        Operation {
            components,
            base_len: self.base_len,
            target_len: self.target_len,
        }
    }
}

/// `text` as a [`CompactString`]. A one-byte text (typing) is copied with a
/// known length, which the compiler does in registers; the general path
/// copies into a buffer on the stack and reads it straight back, which
/// stalls (failed store forwarding).
#[inline]
fn compact(text: &str) -> CompactString {
    match text.as_bytes() {
        [_] => CompactString::from(&text[..1]),
        _ => CompactString::from(text),
    }
}

/// Number of `char`s in `s`.
#[inline]
pub(crate) fn char_len(s: &str) -> usize {
    // Typing inserts one character at a time, and a one-byte `str` is one
    // ASCII char: skip the (out-of-line) general count, and the read of the
    // text it needs. Other short texts (most inserts) count their
    // continuation bytes inline, up to 16 bytes two words at a time.
    let bytes = s.as_bytes();
    match bytes.len() {
        0 | 1 => bytes.len(),
        2..=7 => bytes.len() - bytes.iter().filter(|&&b| is_continuation(b)).count(),
        8..=16 => {
            let (Some(head), Some(tail)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>())
            else {
                return s.chars().count();
            };
            // `tail` overlaps `head` by `16 - len` bytes (its low bytes): drop them.
            let overlap = 16 - bytes.len();
            let tail = u64::from_le_bytes(*tail)
                .checked_shr(8 * overlap as u32)
                .unwrap_or(0);
            let continuations =
                continuation_bytes(u64::from_le_bytes(*head)) + continuation_bytes(tail);
            bytes.len() - continuations
        }
        _ => s.chars().count(),
    }
}

/// True for a UTF-8 continuation byte (`0b10xx_xxxx`).
#[inline]
fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// Number of UTF-8 continuation bytes (`0b10xx_xxxx`) among the 8 bytes of `word`.
#[inline]
fn continuation_bytes(word: u64) -> usize {
    // Bit 7 of each byte set and bit 6 clear.
    (word & !(word << 1) & 0x8080_8080_8080_8080).count_ones() as usize
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
            components: Components::with_capacity(n),
            base_len: 0,
            target_len: 0,
        }
    }

    /// An empty operation for the result of an algebra step on inputs with
    /// `max` components in all (an upper bound of the result's length). Small
    /// results start inline (and spill once if they must); large ones are
    /// sized up front.
    #[inline]
    fn with_output_room(max: usize) -> Self {
        if max <= 2 * INLINE_COMPONENTS {
            Operation::new()
        } else {
            Operation::with_capacity(max)
        }
    }

    /// This operation as a single edit, if it is one: at most one insert
    /// and/or one delete at one place (`[retain] [insert] [delete] [retain]`),
    /// or a no-op. Live typing sends nothing else.
    #[inline]
    fn single_edit(&self) -> Option<Edit<'_>> {
        let c = self.components.as_slice();
        let mut edit = Edit {
            pos: 0,
            text: None,
            chars: 0,
            del: 0,
        };
        let mut i = 0;
        if let Some(Component::Retain(n)) = c.first() {
            edit.pos = *n;
            i = 1;
        }
        if let Some(Component::Insert(s)) = c.get(i) {
            edit.text = Some(s);
            edit.chars = char_len(s);
            i += 1;
        }
        if let Some(Component::Delete(n)) = c.get(i) {
            edit.del = *n;
            i += 1;
        }
        match c.get(i..) {
            Some([]) => Some(edit),
            Some([Component::Retain(_)]) => Some(edit),
            _ => None,
        }
    }

    /// The canonical operation for one edit on a document of `base_len`
    /// chars: retain `pos`, insert `text` (`chars` chars), delete `del`.
    #[inline]
    fn from_edit(
        base_len: usize,
        pos: usize,
        text: Option<&CompactString>,
        chars: usize,
        del: usize,
    ) -> Self {
        let mut components = Components::new();
        if chars == 0 && del == 0 {
            // A no-op: the identity, wherever `pos` is.
            if base_len > 0 {
                components.push(Component::Retain(base_len));
            }
        } else {
            let after = base_len - pos - del;
            if pos > 0 {
                components.push(Component::Retain(pos));
            }
            if let Some(text) = text.filter(|_| chars > 0) {
                components.push(Component::Insert(text.clone()));
            }
            if del > 0 {
                components.push(Component::Delete(del));
            }
            if after > 0 {
                components.push(Component::Retain(after));
            }
        }
        Operation {
            components,
            base_len,
            target_len: base_len - del + chars,
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

    /// About how many bytes of heap this op holds: its components' buffer
    /// (by capacity, once it outgrew the inline storage) and the inserted
    /// text stored outside it. What the in-memory bounds (the history
    /// window, the commit backlog) count.
    pub fn heap_bytes(&self) -> usize {
        let buffer = if self.components.spilled() {
            self.components.capacity() * std::mem::size_of::<Component>()
        } else {
            0
        };
        let text: usize = self
            .components
            .iter()
            .map(|c| match c {
                Component::Insert(s) if s.is_heap_allocated() => s.capacity(),
                _ => 0,
            })
            .sum();
        buffer + text
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
                .insert(n - 1, Component::Insert(compact(text))),
            _ => self.components.push(Component::Insert(compact(text))),
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
        let mut components = Components::new();
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
                components.push(Component::Insert(compact(text)));
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
        self.apply_to_rope_unchecked(rope);
        Ok(())
    }

    /// [`Operation::apply_to_rope`] for a caller that checked the rope's
    /// length already ([`crate::Text`] knows it without asking the rope).
    pub(crate) fn apply_to_rope_unchecked(&self, rope: &mut Rope) {
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
        if self.target_len == next.base_len {
            if let (Some(a), Some(b)) = (self.single_edit(), next.single_edit()) {
                if let Some(composed) = compose_edits(self, &a, next, &b) {
                    return Ok(composed);
                }
            }
        }
        // Composing two edits at different places gives more components than
        // either (`[r, i, r]` ∘ `[r, i, r]` = `[r, i, r, i, r]`): size the result
        // for the worst case up front rather than spilling and regrowing.
        let max = self.components.len() + next.components.len();
        let mut out = if max <= INLINE_COMPONENTS {
            Operation::new()
        } else {
            Operation::with_capacity(max)
        };
        self.compose_into(next, &mut out)?;
        Ok(out)
    }

    /// [`compose`](Self::compose) into `out` (empty).
    fn compose_into(&self, next: &Operation, out: &mut Operation) -> Result<(), OtError> {
        if self.target_len != next.base_len {
            return Err(OtError::ComposeMismatch {
                first_target: self.target_len,
                second_base: next.base_len,
            });
        }
        let mut result = Builder::new(out);
        let mut x = Cursor::<true>::new(&self.components);
        // The result's length is `next`'s: the second op's inserts need no count.
        let mut y = Cursor::<false>::new(&next.components);
        loop {
            if x.kind == Kind::Delete {
                result.delete(x.len);
                x.next();
                continue;
            }
            if y.kind == Kind::Insert {
                result.insert(y.text, y.source, y.len);
                y.next();
                continue;
            }
            let n = x.len.min(y.len);
            match (x.kind, y.kind) {
                (Kind::Retain, Kind::Retain) => {
                    result.retain(n);
                    x.take(n);
                }
                (Kind::Insert, Kind::Retain) => {
                    let (text, source) = x.take_text(n);
                    result.insert(text, source, n);
                }
                (Kind::Retain, Kind::Delete) => {
                    result.delete(n);
                    x.take(n);
                }
                // Inserted by the first and deleted by the second: nothing remains.
                (Kind::Insert, Kind::Delete) => {
                    x.take_text(n);
                }
                (Kind::End, Kind::End) => break,
                // One side ended early: unreachable when the lengths match;
                // kept total so bad input can never panic.
                _ => {
                    return Err(OtError::ComposeMismatch {
                        first_target: self.target_len,
                        second_base: next.base_len,
                    })
                }
            }
            y.take(n);
        }
        result.finish();
        out.target_len = next.target_len;
        Ok(())
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
        if self.base_len == b.base_len {
            if let (Some(x), Some(y)) = (self.single_edit(), b.single_edit()) {
                if let Some(pair) = transform_edits::<true>(self.base_len, &x, &y) {
                    return Ok(pair);
                }
            }
        }
        let cap = self.components.len() + b.components.len();
        let mut out = (
            Operation::with_output_room(cap),
            Operation::with_output_room(cap),
        );
        self.transform_into::<true>(b, &mut out.0, &mut out.1)?;
        Ok(out)
    }

    /// The `a'` half of [`transform`](Self::transform) (`self` as `a`),
    /// without building `b'`: what the server needs to rebase an incoming op.
    pub fn transform_first(&self, b: &Operation) -> Result<Operation, OtError> {
        if self.base_len == b.base_len {
            if let (Some(x), Some(y)) = (self.single_edit(), b.single_edit()) {
                if let Some((a_prime, _)) = transform_edits::<false>(self.base_len, &x, &y) {
                    return Ok(a_prime);
                }
            }
        }
        let mut a_prime = Operation::with_output_room(self.components.len() + b.components.len());
        self.transform_into::<false>(b, &mut a_prime, &mut Operation::new())?;
        Ok(a_prime)
    }

    /// [`transform`](Self::transform) into `a_out` and `b_out` (empty); `b'`
    /// is not built unless `BOTH`.
    fn transform_into<const BOTH: bool>(
        &self,
        b: &Operation,
        a_out: &mut Operation,
        b_out: &mut Operation,
    ) -> Result<(), OtError> {
        if self.base_len != b.base_len {
            return Err(OtError::TransformMismatch {
                a_base: self.base_len,
                b_base: b.base_len,
            });
        }
        let mut a_prime = Builder::new(a_out);
        let mut b_prime = Builder::new(b_out);
        let mut x = Cursor::<true>::new(&self.components);
        let mut y = Cursor::<true>::new(&b.components);
        loop {
            if x.kind == Kind::Insert {
                a_prime.insert(x.text, x.source, x.len);
                if BOTH {
                    b_prime.retain(x.len);
                }
                x.next();
                continue;
            }
            if y.kind == Kind::Insert {
                a_prime.retain(y.len);
                if BOTH {
                    b_prime.insert(y.text, y.source, y.len);
                }
                y.next();
                continue;
            }
            let n = x.len.min(y.len);
            match (x.kind, y.kind) {
                (Kind::Retain, Kind::Retain) => {
                    a_prime.retain(n);
                    if BOTH {
                        b_prime.retain(n);
                    }
                }
                // Both deleted the same text: neither needs to delete it again.
                (Kind::Delete, Kind::Delete) => {}
                (Kind::Delete, Kind::Retain) => a_prime.delete(n),
                (Kind::Retain, Kind::Delete) => {
                    if BOTH {
                        b_prime.delete(n);
                    }
                }
                (Kind::End, Kind::End) => break,
                _ => {
                    return Err(OtError::TransformMismatch {
                        a_base: self.base_len,
                        b_base: b.base_len,
                    })
                }
            }
            x.take(n);
            y.take(n);
        }
        a_prime.finish();
        b_prime.finish();
        Ok(())
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

    /// Map many positions through this operation in one pass over its
    /// components: each result equals
    /// [`transform_position`](Self::transform_position) of the same
    /// position, but the cost is O(components + k log k) for k positions
    /// instead of O(components · k) (an op of many components and a cursor
    /// message of many ranges would otherwise multiply).
    pub fn transform_positions(&self, positions: &[usize]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..positions.len()).collect();
        order.sort_unstable_by_key(|&i| positions[i]);
        let mut out = vec![0; positions.len()];
        let components = self.components();
        let mut next = 0; // the first component not yet passed by every position so far
        let mut at = 0; // base chars before `components[next]`
        let mut shift: isize = 0; // target − base length of the passed components
        for i in order {
            let pos = positions[i].min(self.base_len);
            // Components passed by a position are passed by every larger one.
            let mut mapped = None;
            while let Some(component) = components.get(next) {
                match component {
                    Component::Retain(n) => {
                        if at + n > pos {
                            break;
                        }
                        at += n;
                    }
                    Component::Insert(s) => shift += char_len(s) as isize,
                    Component::Delete(n) => {
                        if at + n > pos {
                            // Inside the deleted span: the cursor moves to its start.
                            mapped = Some((at as isize + shift) as usize);
                            break;
                        }
                        at += n;
                        shift -= *n as isize;
                    }
                }
                next += 1;
            }
            out[i] = mapped.unwrap_or((pos as isize + shift) as usize);
        }
        out
    }

    /// Map many selection ranges through this operation in one pass (see
    /// [`transform_positions`](Self::transform_positions)); equal to
    /// [`transform_range`](Self::transform_range) of each.
    pub fn transform_ranges(&self, ranges: &[crate::Range]) -> Vec<crate::Range> {
        let positions: Vec<usize> = ranges.iter().flat_map(|r| [r.anchor, r.head]).collect();
        self.transform_positions(&positions)
            .chunks_exact(2)
            .map(|p| crate::Range {
                anchor: p[0],
                head: p[1],
            })
            .collect()
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

/// A single edit (see [`Operation::single_edit`]): retain `pos`, insert
/// `text` (`chars` chars; `None` or 0 for none), delete `del`.
struct Edit<'a> {
    pos: usize,
    text: Option<&'a CompactString>,
    chars: usize,
    del: usize,
}

impl Edit<'_> {
    fn is_noop(&self) -> bool {
        self.chars == 0 && self.del == 0
    }
}

/// [`Operation::transform`] of two single edits on a document of `len`
/// chars, when they touch different places (the common case of two people
/// typing): each is then only shifted by the other. `None` when they overlap
/// or meet in a way that needs the general algorithm. `b'` is only built if
/// `BOTH` (else it is empty).
#[inline]
fn transform_edits<const BOTH: bool>(
    len: usize,
    a: &Edit<'_>,
    b: &Edit<'_>,
) -> Option<(Operation, Operation)> {
    let a_len = len - a.del + a.chars; // the document after a
    let b_len = len - b.del + b.chars; // the document after b
    let (a_pos, b_pos) = if a.is_noop() || b.is_noop() {
        // A no-op leaves the other unchanged (and stays the identity).
        (a.pos, b.pos)
    } else if a.pos + a.del <= b.pos {
        // a is wholly before b (inserts at the same place: a's first).
        (a.pos, b.pos + a.chars - a.del)
    } else if b.pos + b.del <= a.pos && (b.pos < a.pos || a.chars == 0) {
        // b is wholly before a.
        (a.pos + b.chars - b.del, b.pos)
    } else {
        return None;
    };
    let a_prime = Operation::from_edit(b_len, a_pos, a.text, a.chars, a.del);
    let b_prime = if BOTH {
        Operation::from_edit(a_len, b_pos, b.text, b.chars, b.del)
    } else {
        Operation::new()
    };
    Some((a_prime, b_prime))
}

/// [`Operation::compose`] of two single edits `a` (of `first`) and `b` (of
/// `second`, on `first`'s result) when they are at different places, with
/// unchanged text between them: the result is both edits. `None` when they
/// overlap or touch (the general algorithm merges them).
#[inline]
fn compose_edits(
    first: &Operation,
    a: &Edit<'_>,
    second: &Operation,
    b: &Edit<'_>,
) -> Option<Operation> {
    if a.is_noop() {
        return Some(second.clone());
    }
    if b.is_noop() {
        return Some(first.clone());
    }
    // In `first`'s result, a's edit spans `a.pos .. a.pos + a.chars`.
    let (one, gap, two) = if b.pos > a.pos + a.chars {
        (a, b.pos - a.pos - a.chars, b)
    } else if b.pos + b.del < a.pos {
        (b, a.pos - b.pos - b.del, a)
    } else {
        return None;
    };
    let base_len = first.base_len;
    // What is left of the base document after both edits.
    let consumed = one.pos + one.del + gap + two.del;
    let count = usize::from(one.pos > 0)
        + [one, two]
            .iter()
            .map(|e| usize::from(e.chars > 0) + usize::from(e.del > 0))
            .sum::<usize>()
        + 1
        + usize::from(base_len > consumed);
    let mut components = Components::with_capacity(count);
    if one.pos > 0 {
        components.push(Component::Retain(one.pos));
    }
    for (edit, retain_after) in [(one, gap), (two, 0)] {
        if let Some(text) = edit.text.filter(|_| edit.chars > 0) {
            components.push(Component::Insert(text.clone()));
        }
        if edit.del > 0 {
            components.push(Component::Delete(edit.del));
        }
        if retain_after > 0 {
            components.push(Component::Retain(retain_after));
        }
    }
    if base_len > consumed {
        components.push(Component::Retain(base_len - consumed));
    }
    Some(Operation {
        components,
        base_len,
        target_len: second.target_len,
    })
}

/// The builder of the algebra's results: like the canonicalising
/// [`Operation`] builder methods, but it keeps the trailing retain, insert and
/// delete in fields until a component of another kind forces them out, so
/// that most steps only add to a counter. Canonical order between two retains
/// is insert then delete, whatever order they arrive in.
struct Builder<'a, 'o> {
    /// The operation being built (its lengths are set by `finish`).
    out: &'o mut Operation,
    base_len: usize,
    target_len: usize,
    /// Pending retain (before any pending insert or delete).
    retain: usize,
    /// Pending inserted text, when it is a single borrowed piece.
    insert: &'a str,
    /// The component `insert` is all of, if it is (cloning it is cheaper than
    /// building a new string).
    insert_source: Option<&'a CompactString>,
    /// True when the last pushed component is an insert that later pieces
    /// are appended to (several pieces between two retains).
    insert_open: bool,
    /// Pending delete (after the insert).
    delete: usize,
    /// True when an insert or a delete is pending (a retain must flush first).
    edit: bool,
}

impl<'a, 'o> Builder<'a, 'o> {
    /// A builder appending to `out` (empty).
    #[inline]
    fn new(out: &'o mut Operation) -> Self {
        Builder {
            out,
            base_len: 0,
            target_len: 0,
            retain: 0,
            insert: "",
            insert_source: None,
            insert_open: false,
            delete: 0,
            edit: false,
        }
    }

    #[inline]
    fn retain(&mut self, n: usize) {
        if self.edit {
            self.flush();
        }
        self.retain += n;
        self.base_len += n;
        self.target_len += n;
    }

    /// Insert `text`, `chars` chars long (not empty).
    #[inline]
    fn insert(&mut self, text: &'a str, source: Option<&'a CompactString>, chars: usize) {
        self.target_len += chars;
        self.edit = true;
        if self.insert.is_empty() && !self.insert_open {
            self.insert = text;
            self.insert_source = source;
        } else {
            self.append_insert(text);
        }
    }

    /// A second insert piece between two retains: concatenate in place.
    #[cold]
    fn append_insert(&mut self, text: &str) {
        if !self.insert_open {
            self.push_retain();
            self.push_insert();
            self.insert_open = true;
        }
        if let Some(Component::Insert(last)) = self.out.components.last_mut() {
            last.push_str(text);
        }
    }

    #[inline]
    fn delete(&mut self, n: usize) {
        self.edit = true;
        self.delete += n;
        self.base_len += n;
    }

    /// Push the pending insert (not empty).
    #[inline]
    fn push_insert(&mut self) {
        let text = match self.insert_source.take() {
            Some(source) => source.clone(),
            None => compact(self.insert),
        };
        self.out.components.push(Component::Insert(text));
        self.insert = "";
    }

    #[inline]
    fn push_retain(&mut self) {
        if self.retain > 0 {
            self.out.components.push(Component::Retain(self.retain));
            self.retain = 0;
        }
    }

    /// Push out everything pending.
    fn flush(&mut self) {
        self.push_retain();
        if !self.insert.is_empty() {
            self.push_insert();
        }
        self.insert_open = false;
        if self.delete > 0 {
            self.out.components.push(Component::Delete(self.delete));
            self.delete = 0;
        }
        self.edit = false;
    }

    /// Push out everything pending and set the lengths.
    #[inline]
    fn finish(mut self) {
        self.flush();
        self.out.base_len = self.base_len;
        self.out.target_len = self.target_len;
    }
}

/// The kind of the piece a [`Cursor`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Retain,
    Insert,
    Delete,
    /// Past the last component.
    End,
}

/// Walks an operation's components for the algebra, a piece at a time: the
/// current piece is `kind`, with `len` chars left (and, for an insert, its
/// remaining `text`).
///
/// With `COUNT` false the char length of inserts is not counted (`len` is 0
/// on an insert), for a caller that never needs it.
struct Cursor<'a, const COUNT: bool> {
    rest: std::slice::Iter<'a, Component>,
    kind: Kind,
    len: usize,
    text: &'a str,
    /// The insert component `text` is all of (`None` once it is split).
    source: Option<&'a CompactString>,
}

impl<'a, const COUNT: bool> Cursor<'a, COUNT> {
    fn new(components: &'a [Component]) -> Self {
        let mut cursor = Cursor {
            rest: components.iter(),
            kind: Kind::End,
            len: 0,
            text: "",
            source: None,
        };
        cursor.next();
        cursor
    }

    /// Move to the next component.
    #[inline]
    fn next(&mut self) {
        match self.rest.next() {
            Some(Component::Retain(n)) => {
                self.kind = Kind::Retain;
                self.len = *n;
            }
            Some(Component::Delete(n)) => {
                self.kind = Kind::Delete;
                self.len = *n;
            }
            Some(Component::Insert(s)) => {
                self.kind = Kind::Insert;
                self.text = s;
                self.source = Some(s);
                self.len = if COUNT { char_len(s) } else { 0 };
            }
            None => {
                self.kind = Kind::End;
                self.len = 0;
            }
        }
    }

    /// Consume `n` (at most `len`) chars of a retain or a delete.
    #[inline]
    fn take(&mut self, n: usize) {
        self.len -= n;
        if self.len == 0 {
            self.next();
        }
    }

    /// Consume `n` (at most `len`) chars of an insert and return their text
    /// (with the whole component, if that is what they are).
    #[inline]
    fn take_text(&mut self, n: usize) -> (&'a str, Option<&'a CompactString>) {
        if n == self.len {
            let taken = (self.text, self.source);
            self.next();
            taken
        } else {
            let (head, tail) = self.text.split_at(byte_offset(self.text, n));
            self.text = tail;
            self.source = None;
            self.len -= n;
            (head, None)
        }
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
    fn small_operations_stay_inline() {
        assert_eq!(std::mem::size_of::<Component>(), 24);
        let o = Operation::replace_range(10, 2, 3, "typed text").unwrap_or_default();
        assert!(!o.components.spilled());
    }

    /// Every single edit on a document of `len` chars.
    fn all_edits(len: usize) -> Vec<Operation> {
        let mut edits = vec![Operation::identity(len)];
        for pos in 0..=len {
            for del in 0..=len - pos {
                for text in ["", "x", "yz", "é🙂"] {
                    if let Ok(op) = Operation::replace_range(len, pos, del, text) {
                        edits.push(op);
                    }
                }
            }
        }
        edits
    }

    #[test]
    fn single_edit_fast_paths_match_the_general_algorithm() {
        for len in 0..6 {
            let edits = all_edits(len);
            for a in &edits {
                for b in &edits {
                    let mut general = (Operation::new(), Operation::new());
                    assert_eq!(
                        a.transform_into::<true>(b, &mut general.0, &mut general.1),
                        Ok(())
                    );
                    assert_eq!(a.transform(b), Ok(general.clone()), "transform {a:?} {b:?}");
                    assert_eq!(
                        a.transform_first(b),
                        Ok(general.0),
                        "transform_first {a:?} {b:?}"
                    );
                }
                for b in all_edits(a.target_len()) {
                    let mut general = Operation::new();
                    assert_eq!(a.compose_into(&b, &mut general), Ok(()));
                    assert_eq!(a.compose(&b), Ok(general), "compose {a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn char_len_counts_scalar_values() {
        let pieces = [
            "a", "é", "漢", "🙂", "e\u{301}", "\u{7f}", "\u{80}", "\u{7ff}", "\u{800}",
        ];
        let mut text = String::new();
        for round in 0..40 {
            for (i, piece) in pieces.iter().enumerate() {
                if (round + i) % 3 != 0 {
                    text.push_str(piece);
                }
                for start in 0..text.len() {
                    if let Some(s) = text.get(start..) {
                        assert_eq!(char_len(s), s.chars().count(), "{s:?}");
                    }
                }
            }
            if text.len() > 40 {
                text = text.chars().skip(round % 5 + 1).collect();
            }
        }
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
