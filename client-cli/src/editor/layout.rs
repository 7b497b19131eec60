//! Soft-wrap layout of one line: grapheme clusters placed in rows of the
//! screen's width by their display width.
//!
//! - A cluster's width is what the terminal needs for it (unicode-width, as
//!   ratatui computes it): CJK and emoji take two cells, combining marks none
//!   of their own.
//! - A cluster that does not fit in what is left of a row starts the next row:
//!   a wide character is never split across the wrap point.
//! - A tab is shown as spaces up to the next multiple of [`TAB_WIDTH`] columns.
//! - Control characters are shown as `^X` (two cells) and never sent to the
//!   terminal; a cluster with no width of its own (a lone combining mark, a
//!   zero-width space) is shown on a dotted circle `◌` so it takes a cell.
//! - The end of a line always has a cell for the cursor: a line that fills its
//!   last row exactly gets one more, empty row.

use ratatui::buffer::CellWidth;
use unicode_segmentation::UnicodeSegmentation;

/// Columns between tab stops.
pub const TAB_WIDTH: usize = 4;

/// One grapheme cluster placed on a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glyph {
    /// Char offset of the cluster in the line.
    pub start: usize,
    /// Its length in chars.
    pub chars: usize,
    /// First column (cell) it takes on its row.
    pub col: usize,
    /// Number of cells it takes.
    pub width: usize,
    /// What to draw: the cluster itself, or a stand-in (tab, control, zero-width).
    pub symbol: String,
    /// Whether `symbol` is a stand-in rather than the text (drawn dimmed).
    pub stand_in: bool,
}

/// One screen row of a line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Row {
    /// Char offset (in the line) where the row starts.
    pub start: usize,
    /// Char offset where it ends (the next row's start, or the line's end).
    pub end: usize,
    /// The clusters on it.
    pub glyphs: Vec<Glyph>,
    /// Cells used.
    pub width: usize,
}

impl Row {
    /// The column of the cursor at char offset `pos` (in the line) on this row:
    /// the first cell of the cluster containing it, or after the last cluster.
    pub fn col_of(&self, pos: usize) -> usize {
        self.glyphs
            .iter()
            .find(|g| pos < g.start + g.chars)
            .map(|g| g.col)
            .unwrap_or(self.width)
    }

    /// The char offset (in the line) closest to column `col` on this row: the
    /// start of the cluster covering `col`, else the row's end (`last` row) or
    /// the start of its last cluster (a wrapped row: its end is the next row).
    pub fn pos_at(&self, col: usize, last: bool) -> usize {
        if let Some(g) = self.glyphs.iter().find(|g| col < g.col + g.width) {
            return g.start;
        }
        match self.glyphs.last() {
            Some(g) if !last => g.start,
            _ => self.end,
        }
    }
}

/// A laid-out line: at least one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineLayout {
    /// The rows, top to bottom.
    pub rows: Vec<Row>,
}

impl LineLayout {
    /// The row index and column of char offset `pos` (in the line). A
    /// position at a wrap point is at the start of the next row.
    pub fn locate(&self, pos: usize) -> (usize, usize) {
        let mut index = 0;
        for (i, row) in self.rows.iter().enumerate() {
            if row.start <= pos {
                index = i;
            } else {
                break;
            }
        }
        // An end-of-line position sits on the extra empty row if there is one.
        (index, self.rows[index].col_of(pos))
    }

    /// The index of the row containing char offset `pos` (see [`locate`](Self::locate)).
    pub fn row_of(&self, pos: usize) -> usize {
        self.locate(pos).0
    }
}

/// How a cluster is shown: (symbol, cells, stand-in).
fn display(cluster: &str, col: usize) -> (String, usize, bool) {
    if cluster == "\t" {
        let w = TAB_WIDTH - col % TAB_WIDTH;
        return (" ".repeat(w), w, true);
    }
    if cluster.chars().any(char::is_control) {
        // Only the first char matters: a control char is a cluster of its own
        // (except "\r\n", a line break, which is never laid out).
        let c = cluster.chars().next().unwrap_or('?');
        let shown = match c as u32 {
            0..=0x1f => format!("^{}", char::from(b'@' + c as u8)),
            0x7f => "^?".to_owned(),
            _ => "\u{fffd}".to_owned(),
        };
        let w = shown.as_str().cell_width() as usize;
        return (shown, w, true);
    }
    let w = cluster.cell_width() as usize;
    if w == 0 {
        let shown = format!("\u{25cc}{cluster}");
        let w = (shown.as_str().cell_width() as usize).max(1);
        return (shown, w, true);
    }
    (cluster.to_owned(), w, false)
}

/// Lay out a line's content (without its line break) in rows of `width` cells.
pub fn layout_line(line: &str, width: usize) -> LineLayout {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut row = Row::default();
    let mut pos = 0;
    for cluster in line.graphemes(true) {
        let chars = cluster.chars().count();
        let (mut symbol, mut w, mut stand_in) = display(cluster, row.width);
        if row.width + w > width && !row.glyphs.is_empty() {
            let next = Row {
                start: pos,
                end: pos,
                ..Row::default()
            };
            rows.push(std::mem::replace(&mut row, next));
            // A tab's width depends on its column.
            (symbol, w, stand_in) = display(cluster, 0);
        }
        if cluster == "\t" && w > width {
            w = width;
            symbol = " ".repeat(w);
        }
        row.glyphs.push(Glyph {
            start: pos,
            chars,
            col: row.width,
            width: w,
            symbol,
            stand_in,
        });
        row.width += w;
        pos += chars;
        row.end = pos;
    }
    let full = row.width >= width;
    rows.push(row);
    if full {
        rows.push(Row {
            start: pos,
            end: pos,
            ..Row::default()
        });
    }
    LineLayout { rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(line: &str, width: usize) -> Vec<String> {
        layout_line(line, width)
            .rows
            .iter()
            .map(|r| r.glyphs.iter().map(|g| g.symbol.as_str()).collect())
            .collect()
    }

    #[test]
    fn wraps_by_width_and_never_splits_wide_chars() {
        assert_eq!(rows("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(rows("abcd", 4), vec!["abcd", ""]);
        assert_eq!(rows("", 4), vec![""]);
        // 中 is two cells: "ab中" fills 4, the next 中 goes to the next row.
        assert_eq!(rows("ab中中", 4), vec!["ab中", "中"]);
        // At column 3 of 4 a wide char does not fit: it moves down whole.
        assert_eq!(rows("abc中d", 4), vec!["abc", "中d"]);
        let l = layout_line("abc中d", 4);
        assert_eq!(l.locate(3), (1, 0));
        assert_eq!(l.locate(4), (1, 2));
        assert_eq!(l.locate(5), (1, 3));
    }

    #[test]
    fn combining_emoji_tabs_controls() {
        let l = layout_line("e\u{301}🙂x", 10);
        let g = &l.rows[0].glyphs;
        assert_eq!(g.len(), 3);
        assert_eq!((g[0].start, g[0].chars, g[0].width), (0, 2, 1));
        assert_eq!((g[1].start, g[1].col, g[1].width), (2, 1, 2));
        assert_eq!((g[2].start, g[2].col), (3, 3));
        assert_eq!(rows("a\tb", 10), vec!["a   b"]);
        assert_eq!(rows("a\u{1b}[31m", 10), vec!["a^[[31m"]);
        assert_eq!(rows("\u{301}", 10), vec!["\u{25cc}\u{301}"]);
    }

    #[test]
    fn positions_on_rows() {
        let l = layout_line("abcdefgh", 4);
        // Row 0 is wrapped: past its end means before its last char.
        assert_eq!(l.rows[0].pos_at(10, false), 3);
        assert_eq!(l.rows[1].pos_at(10, false), 7);
        assert_eq!(l.rows[2].pos_at(10, true), 8);
        let l = layout_line("a中b", 10);
        assert_eq!(l.rows[0].pos_at(1, true), 1);
        assert_eq!(l.rows[0].pos_at(2, true), 1);
        assert_eq!(l.rows[0].pos_at(3, true), 2);
    }
}
