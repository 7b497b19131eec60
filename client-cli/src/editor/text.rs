//! Text helpers on a [`Rope`]: grapheme cluster boundaries, lines and words.
//!
//! Positions are char indices (Unicode scalar values), as in the protocol.
//! Lines are ropey's lines: a line ends after `\n`, `\r\n`, `\r` or another
//! Unicode line break; grapheme segmentation keeps `\r\n` in one cluster, so
//! the cursor never stops between the two.

use ropey::{Rope, RopeSlice};
use unicode_segmentation::{GraphemeCursor, GraphemeIncomplete};

/// Bound on the chunk steps of one grapheme boundary search.
const MAX_ROUNDS: usize = 4096;

/// Whether `c` ends a line for ropey (with its default `unicode_lines` feature).
pub fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{000B}' | '\u{000C}' | '\u{0085}' | '\u{2028}' | '\u{2029}'
    )
}

/// Number of chars of the line break at the end of `line` (0, 1, or 2 for `\r\n`).
pub fn line_break_len(line: RopeSlice<'_>) -> usize {
    let n = line.len_chars();
    if n == 0 {
        return 0;
    }
    let last = line.char(n - 1);
    if !is_line_break(last) {
        0
    } else if last == '\n' && n >= 2 && line.char(n - 2) == '\r' {
        2
    } else {
        1
    }
}

/// The char range `[start, end)` of line `line_idx`'s content (without its break).
pub fn line_content(text: &Rope, line_idx: usize) -> (usize, usize) {
    let line_idx = line_idx.min(text.len_lines().saturating_sub(1));
    let start = text.line_to_char(line_idx);
    let line = text.line(line_idx);
    (start, start + line.len_chars() - line_break_len(line))
}

/// The line containing char position `pos` (clamped to the text).
pub fn line_of(text: &Rope, pos: usize) -> usize {
    text.char_to_line(pos.min(text.len_chars()))
}

/// The grapheme cluster boundary after `pos` (the text length at the end).
pub fn next_boundary(text: &Rope, pos: usize) -> usize {
    let len = text.len_chars();
    if pos >= len {
        return len;
    }
    let slice = text.slice(..);
    let byte = slice.char_to_byte(pos);
    let total = slice.len_bytes();
    let (mut chunk, mut chunk_byte, mut chunk_char, _) = slice.chunk_at_byte(byte);
    let mut cursor = GraphemeCursor::new(byte, total, true);
    // Each round answers or moves one chunk (a cluster spanning more is absurd).
    for _ in 0..MAX_ROUNDS {
        match cursor.next_boundary(chunk, chunk_byte) {
            Ok(None) => return len,
            Ok(Some(b)) => {
                return if b >= chunk_byte + chunk.len() {
                    slice.byte_to_char(b)
                } else {
                    chunk_char + chunk[..b - chunk_byte].chars().count()
                };
            }
            Err(GraphemeIncomplete::NextChunk) => {
                chunk_byte += chunk.len();
                if chunk_byte >= total {
                    return len;
                }
                let (c, _, ci, _) = slice.chunk_at_byte(chunk_byte);
                chunk = c;
                chunk_char = ci;
            }
            Err(GraphemeIncomplete::PreContext(n)) => {
                let (ctx, ctx_byte, _, _) = slice.chunk_at_byte(n.saturating_sub(1));
                cursor.provide_context(&ctx[..n - ctx_byte], ctx_byte);
            }
            Err(_) => break,
        }
    }
    pos + 1
}

/// The grapheme cluster boundary before `pos` (0 at the start).
pub fn prev_boundary(text: &Rope, pos: usize) -> usize {
    let pos = pos.min(text.len_chars());
    if pos == 0 {
        return 0;
    }
    let slice = text.slice(..);
    let byte = slice.char_to_byte(pos);
    let total = slice.len_bytes();
    let (mut chunk, mut chunk_byte, mut chunk_char, _) = slice.chunk_at_byte(byte);
    if byte == chunk_byte && byte > 0 {
        // At the start of a chunk: begin with the previous one.
        let (c, cb, ci, _) = slice.chunk_at_byte(byte - 1);
        chunk = c;
        chunk_byte = cb;
        chunk_char = ci;
    }
    let mut cursor = GraphemeCursor::new(byte, total, true);
    for _ in 0..MAX_ROUNDS {
        match cursor.prev_boundary(chunk, chunk_byte) {
            Ok(None) => return 0,
            Ok(Some(b)) => {
                return if b < chunk_byte {
                    slice.byte_to_char(b)
                } else {
                    chunk_char + chunk[..b - chunk_byte].chars().count()
                };
            }
            Err(GraphemeIncomplete::PrevChunk) => {
                if chunk_byte == 0 {
                    return 0;
                }
                let (c, cb, ci, _) = slice.chunk_at_byte(chunk_byte - 1);
                chunk = c;
                chunk_byte = cb;
                chunk_char = ci;
            }
            Err(GraphemeIncomplete::PreContext(n)) => {
                let (ctx, ctx_byte, _, _) = slice.chunk_at_byte(n.saturating_sub(1));
                cursor.provide_context(&ctx[..n - ctx_byte], ctx_byte);
            }
            Err(_) => break,
        }
    }
    pos - 1
}

/// `pos` if it is a grapheme boundary, else the end of the cluster it is in.
pub fn snap_to_boundary(text: &Rope, pos: usize) -> usize {
    let pos = pos.min(text.len_chars());
    if pos == 0 || pos == text.len_chars() {
        return pos;
    }
    let before = prev_boundary(text, pos);
    let after = next_boundary(text, before);
    if after <= pos {
        pos
    } else {
        after
    }
}

/// The kind of a grapheme cluster, for word jumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Space,
    Word,
    Punct,
}

fn class_at(text: &Rope, pos: usize) -> Class {
    let c = text.char(pos);
    if c.is_whitespace() {
        Class::Space
    } else if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else {
        Class::Punct
    }
}

/// Ctrl+Right: skip spaces, then one run of word characters or of punctuation.
pub fn word_end_after(text: &Rope, pos: usize) -> usize {
    let len = text.len_chars();
    let mut p = pos.min(len);
    while p < len && class_at(text, p) == Class::Space {
        p = next_boundary(text, p);
    }
    if p < len {
        let class = class_at(text, p);
        while p < len && class_at(text, p) == class {
            p = next_boundary(text, p);
        }
    }
    p
}

/// Ctrl+Left: back over spaces, then over one run of word characters or of punctuation.
pub fn word_start_before(text: &Rope, pos: usize) -> usize {
    let mut p = pos.min(text.len_chars());
    while p > 0 {
        let q = prev_boundary(text, p);
        if class_at(text, q) != Class::Space {
            break;
        }
        p = q;
    }
    if p > 0 {
        let class = class_at(text, prev_boundary(text, p));
        while p > 0 {
            let q = prev_boundary(text, p);
            if class_at(text, q) != class {
                break;
            }
            p = q;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boundaries(s: &str) -> Vec<usize> {
        let text = Rope::from_str(s);
        let mut out = vec![0];
        let mut p = 0;
        while p < text.len_chars() {
            p = next_boundary(&text, p);
            out.push(p);
        }
        let mut back = vec![text.len_chars()];
        let mut p = text.len_chars();
        while p > 0 {
            p = prev_boundary(&text, p);
            back.push(p);
        }
        back.reverse();
        assert_eq!(out, back, "forward and backward disagree on {s:?}");
        out
    }

    #[test]
    fn clusters() {
        assert_eq!(boundaries("ae\u{301}b"), vec![0, 1, 3, 4]);
        assert_eq!(boundaries("a🙂b"), vec![0, 1, 2, 3]);
        assert_eq!(boundaries("x\r\ny"), vec![0, 1, 3, 4]);
        // A family emoji (ZWJ sequence) and a flag are one step each.
        assert_eq!(boundaries("👨\u{200d}👩\u{200d}👧🇫🇷"), vec![0, 5, 7]);
        assert_eq!(boundaries(""), vec![0]);
    }

    #[test]
    fn clusters_across_rope_chunks() {
        // Long enough for several chunks, with clusters everywhere.
        let unit = "e\u{301}🙂中\r\n";
        let s = unit.repeat(2000);
        let text = Rope::from_str(&s);
        assert!(text.chunks().count() > 3);
        let mut p = 0;
        let mut steps = 0;
        while p < text.len_chars() {
            p = next_boundary(&text, p);
            steps += 1;
        }
        assert_eq!(steps, 4 * 2000);
        while p > 0 {
            p = prev_boundary(&text, p);
            steps -= 1;
        }
        assert_eq!(steps, 0);
        assert_eq!(snap_to_boundary(&text, 1), 2);
        assert_eq!(snap_to_boundary(&text, 5), 6);
    }

    #[test]
    fn lines_and_words() {
        let text = Rope::from_str("ab\r\ncd\n\nfoo_bar, baz");
        assert_eq!(line_content(&text, 0), (0, 2));
        assert_eq!(line_content(&text, 1), (4, 6));
        assert_eq!(line_content(&text, 2), (7, 7));
        assert_eq!(line_content(&text, 3), (8, 20));
        assert_eq!(word_end_after(&text, 8), 15);
        assert_eq!(word_end_after(&text, 15), 16);
        assert_eq!(word_end_after(&text, 16), 20);
        assert_eq!(word_start_before(&text, 20), 17);
        assert_eq!(word_start_before(&text, 17), 15);
        assert_eq!(word_start_before(&text, 15), 8);
        assert_eq!(word_start_before(&text, 8), 4);
    }
}
