//! A rope that knows its length in chars.
//!
//! Every op is checked against the document's length before it is applied
//! (an op that does not fit must change nothing). `Rope::len_chars` is not
//! free in ropey 1.x: it sums the root's children, and while the root is a
//! single leaf (documents under about a kilobyte) it scans the whole leaf.
//! [`Text`] keeps the length beside the rope instead, so that check costs
//! one comparison.

use ropey::Rope;

use crate::{Operation, OtError};

/// A [`Rope`] and its length in Unicode scalar values, kept equal: the rope
/// is changed only through [`Text::apply`] or replaced whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text {
    rope: Rope,
    chars: usize,
}

impl Text {
    /// The text `rope` holds (its length counted once, here).
    pub fn from_rope(rope: Rope) -> Text {
        let chars = rope.len_chars();
        Text { rope, chars }
    }

    /// The rope, to read.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The rope, owned.
    pub fn into_rope(self) -> Rope {
        self.rope
    }

    /// Length in Unicode scalar values (without asking the rope).
    pub fn len_chars(&self) -> usize {
        self.chars
    }

    /// Apply `op`; on a length mismatch nothing changes.
    pub fn apply(&mut self, op: &Operation) -> Result<(), OtError> {
        if op.base_len() != self.chars {
            return Err(OtError::LengthMismatch {
                expected: op.base_len(),
                actual: self.chars,
            });
        }
        op.apply_to_rope_unchecked(&mut self.rope);
        self.chars = op.target_len();
        Ok(())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::from_rope(Rope::from_str(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_follows_every_applied_op() {
        let mut text = Text::from("héllo 🌍");
        assert_eq!(text.len_chars(), 7);
        let op = Operation::replace_range(7, 1, 4, "i🙂").unwrap();
        text.apply(&op).unwrap();
        assert_eq!(text.rope().to_string(), "hi🙂 🌍");
        assert_eq!(text.len_chars(), text.rope().len_chars());
    }

    #[test]
    fn an_op_of_another_length_changes_nothing() {
        let mut text = Text::from("abc");
        let op = Operation::replace_range(4, 0, 1, "x").unwrap();
        assert_eq!(
            text.apply(&op),
            Err(OtError::LengthMismatch {
                expected: 4,
                actual: 3
            })
        );
        assert_eq!(text.rope().to_string(), "abc");
        assert_eq!(text.len_chars(), 3);
    }
}
