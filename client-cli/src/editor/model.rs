//! The editor model: cursor and selection (char positions), scrolling, and
//! what each key does (an edit as an [`Operation`], or a movement). Pure: no
//! terminal, no network; the text is the session's [`Rope`], passed in.
//!
//! The caller applies an [`Action::Edit`] to the text (through the session);
//! the cursor is already where it belongs after the edit. Before drawing, the
//! caller calls [`Editor::prepare`] with the text area's size, which clamps
//! the cursor to the text and scrolls to keep it visible.

use ot_core::{Operation, Range};
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ropey::Rope;

use super::layout::{layout_line, LineLayout};
use super::text;

/// The largest paste taken: the server's default `max_doc_len`, beyond which
/// it could never fit. (A paste longer than the server's `max_op_len` is fine:
/// the client sends it as several ops, each within the announced limits.)
pub const MAX_PASTE_CHARS: usize = 10_000_000;

/// What a key did.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing (an unbound key, or a no-op edit).
    None,
    /// The cursor or selection moved, or the view scrolled.
    Moved,
    /// An edit of the text (the cursor is already placed after it).
    Edit(Operation),
    /// A short message for the user.
    Notice(String),
    /// Ctrl-Q.
    Quit,
}

/// A line laid out, with where it starts in the text.
struct Laid {
    line: usize,
    start: usize,
    layout: LineLayout,
}

/// The editor state for one document.
#[derive(Debug, Clone)]
pub struct Editor {
    /// The cursor (char position).
    head: usize,
    /// The other end of the selection, if there is one.
    anchor: Option<usize>,
    /// The display column kept by Up/Down/PgUp/PgDn.
    goal_col: Option<usize>,
    /// The char position where the first visible row starts.
    top: usize,
    /// Text area width in cells.
    width: usize,
    /// Text area height in rows.
    height: usize,
}

impl Default for Editor {
    fn default() -> Self {
        Editor::new()
    }
}

impl Editor {
    /// An editor with the cursor at the start.
    pub fn new() -> Self {
        Editor {
            head: 0,
            anchor: None,
            goal_col: None,
            top: 0,
            width: 80,
            height: 24,
        }
    }

    /// The cursor position (chars).
    pub fn cursor(&self) -> usize {
        self.head
    }

    /// The selection as (start, end), if there is a non-empty one.
    pub fn selection(&self) -> Option<(usize, usize)> {
        let anchor = self.anchor?;
        (anchor != self.head).then(|| (anchor.min(self.head), anchor.max(self.head)))
    }

    /// The selection as a protocol range (`anchor == head` for a plain cursor).
    pub fn range(&self) -> Range {
        Range {
            anchor: self.anchor.unwrap_or(self.head),
            head: self.head,
        }
    }

    /// The char position of the first visible row.
    pub fn top(&self) -> usize {
        self.top
    }

    /// The text area size last given to [`prepare`](Self::prepare).
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Place the cursor (clamped and snapped by the next [`prepare`](Self::prepare)).
    pub fn set_cursor(&mut self, pos: usize) {
        self.head = pos;
        self.anchor = None;
        self.goal_col = None;
    }

    /// Map the cursor, selection and scroll position through a remote edit
    /// (already applied to the text): an insert before the cursor pushes it
    /// right; at the cursor, the cursor moves after the inserted text.
    pub fn remote_edit(&mut self, op: &Operation) {
        self.head = op.transform_position(self.head);
        self.anchor = self.anchor.map(|a| op.transform_position(a));
        if self.top > 0 {
            self.top = op.transform_position(self.top);
        }
    }

    /// Fit to the text (after a resync, or any change) and to a text area of
    /// `width` × `height` cells: clamp and snap the cursor to a grapheme
    /// boundary, and scroll so that the cursor is visible.
    pub fn prepare(&mut self, text: &Rope, width: usize, height: usize) {
        self.width = width.max(1);
        self.height = height.max(1);
        let len = text.len_chars();
        self.head = text::snap_to_boundary(text, self.head.min(len));
        if let Some(a) = self.anchor {
            self.anchor = Some(text::snap_to_boundary(text, a.min(len)));
        }
        self.top = self.row_start(text, self.top.min(len));
        let cursor_row = self.row_start(text, self.head);
        if cursor_row < self.top {
            self.top = cursor_row;
        } else {
            let highest = self.walk_rows(text, cursor_row, self.height - 1, false);
            if highest > self.top {
                self.top = highest;
            }
        }
    }

    fn laid(&self, text: &Rope, line: usize) -> Laid {
        let (start, end) = text::line_content(text, line);
        let content = text.slice(start..end).to_string();
        Laid {
            line,
            start,
            layout: layout_line(&content, self.width),
        }
    }

    /// The line, its layout and the row index of char position `pos`.
    fn locate(&self, text: &Rope, pos: usize) -> (Laid, usize, usize) {
        let laid = self.laid(text, text::line_of(text, pos));
        let (row, col) = laid.layout.locate(pos - laid.start);
        (laid, row, col)
    }

    /// Where the screen row containing `pos` starts.
    pub fn row_start(&self, text: &Rope, pos: usize) -> usize {
        let (laid, row, _) = self.locate(text, pos);
        laid.start + laid.layout.rows[row].start
    }

    /// The start of the row `n` rows below (or above) the row starting at `row_start`,
    /// stopping at the first or last row.
    pub fn walk_rows(&self, text: &Rope, row_start: usize, n: usize, down: bool) -> usize {
        let (mut laid, mut row, _) = self.locate(text, row_start);
        for _ in 0..n {
            match self.step_row(text, laid, row, down) {
                Ok((l, r)) => {
                    laid = l;
                    row = r;
                }
                Err(l) => {
                    laid = l;
                    break;
                }
            }
        }
        laid.start + laid.layout.rows[row].start
    }

    /// The next row down or up; `Err` (giving the layout back) at the edge.
    fn step_row(
        &self,
        text: &Rope,
        laid: Laid,
        row: usize,
        down: bool,
    ) -> Result<(Laid, usize), Laid> {
        if down {
            if row + 1 < laid.layout.rows.len() {
                Ok((laid, row + 1))
            } else if laid.line + 1 < text.len_lines() {
                Ok((self.laid(text, laid.line + 1), 0))
            } else {
                Err(laid)
            }
        } else if row > 0 {
            Ok((laid, row - 1))
        } else if laid.line > 0 {
            let above = self.laid(text, laid.line - 1);
            let last = above.layout.rows.len() - 1;
            Ok((above, last))
        } else {
            Err(laid)
        }
    }

    /// The screen position (column, row from the top row) of char position
    /// `pos`, if it is within `rows` rows of the top.
    pub fn screen_pos(&self, text: &Rope, pos: usize) -> Option<(usize, usize)> {
        let target = self.row_start(text, pos);
        if target < self.top {
            return None;
        }
        let (laid, row, col) = self.locate(text, pos);
        let mut y = 0;
        let (mut l, mut r, _) = self.locate(text, self.top);
        while (l.line, r) != (laid.line, row) {
            y += 1;
            if y >= self.height {
                return None;
            }
            (l, r) = self.step_row(text, l, r, true).ok()?;
        }
        Some((col, y))
    }

    /// Move the cursor `n` rows down or up, keeping the display column.
    fn move_rows(&mut self, text: &Rope, n: usize, down: bool) {
        let (mut laid, mut row, col) = self.locate(text, self.head);
        let goal = *self.goal_col.get_or_insert(col);
        for _ in 0..n {
            match self.step_row(text, laid, row, down) {
                Ok((l, r)) => {
                    laid = l;
                    row = r;
                }
                Err(_) => {
                    // Past the first or last row: to the start or the end.
                    self.head = if down { text.len_chars() } else { 0 };
                    return;
                }
            }
        }
        let last = row + 1 == laid.layout.rows.len();
        self.head = laid.start + laid.layout.rows[row].pos_at(goal, last);
    }

    fn begin_move(&mut self, extend: bool) {
        if extend {
            self.anchor.get_or_insert(self.head);
        } else {
            self.anchor = None;
        }
    }

    /// Replace chars `start..end` with `insert`; the cursor goes after it.
    fn replace(&mut self, text: &Rope, start: usize, end: usize, insert: &str) -> Action {
        if start == end && insert.is_empty() {
            return Action::None;
        }
        match Operation::replace_range(text.len_chars(), start, end - start, insert) {
            Ok(op) => {
                self.head = start + insert.chars().count();
                self.anchor = None;
                self.goal_col = None;
                Action::Edit(op)
            }
            Err(_) => Action::None,
        }
    }

    /// Type `s` over the selection (or at the cursor).
    pub fn insert(&mut self, text: &Rope, s: &str) -> Action {
        let (start, end) = self.selection().unwrap_or((self.head, self.head));
        self.replace(text, start, end, s)
    }

    /// Paste: line breaks normalised to `\n`, other control characters but tabs dropped.
    pub fn paste(&mut self, text: &Rope, pasted: &str) -> Action {
        let normalised = pasted.replace("\r\n", "\n").replace('\r', "\n");
        let clean: String = normalised
            .chars()
            .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
            .collect();
        if clean.is_empty() {
            return Action::None;
        }
        let chars = clean.chars().count();
        if chars > MAX_PASTE_CHARS {
            return Action::Notice(format!(
                "not pasted: {chars} characters is more than a document may hold ({MAX_PASTE_CHARS})"
            ));
        }
        self.insert(text, &clean)
    }

    /// Handle a terminal event (keys and pastes; resizes just redraw).
    pub fn handle_event(&mut self, text: &Rope, event: &Event) -> Action {
        match event {
            Event::Key(key) => self.handle_key(text, *key),
            Event::Paste(s) => self.paste(text, s),
            Event::Resize(..) => Action::Moved,
            _ => Action::None,
        }
    }

    /// Handle one key (see the key bindings in the module docs of `editor`).
    pub fn handle_key(&mut self, text: &Rope, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let shift = key.modifiers.contains(KeyModifiers::SHIFT);
        let len = text.len_chars();
        let head = self.head.min(len);
        self.head = head;
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') if ctrl => Action::Quit,
            KeyCode::Char('c') if ctrl => Action::Notice("Ctrl-Q quits".to_owned()),
            KeyCode::Char('a') if ctrl => {
                self.anchor = Some(0);
                self.head = len;
                self.goal_col = None;
                Action::Moved
            }
            KeyCode::Char('w') if ctrl => self.delete_word_before(text),
            KeyCode::Char('h') if ctrl => self.backspace(text),
            KeyCode::Char('b') if alt => self.word_move(text, false, shift),
            KeyCode::Char('f') if alt => self.word_move(text, true, shift),
            KeyCode::Char(c) if !ctrl && !alt => {
                let mut buf = [0u8; 4];
                self.insert(text, c.encode_utf8(&mut buf))
            }
            KeyCode::Enter => self.insert(text, "\n"),
            KeyCode::Tab => self.insert(text, "\t"),
            KeyCode::Backspace if ctrl || alt => self.delete_word_before(text),
            KeyCode::Backspace => self.backspace(text),
            KeyCode::Delete => match self.selection() {
                Some((s, e)) => self.replace(text, s, e, ""),
                None => {
                    let end = text::next_boundary(text, head);
                    self.replace(text, head, end, "")
                }
            },
            KeyCode::Left | KeyCode::Right if ctrl || alt => {
                self.word_move(text, key.code == KeyCode::Right, shift)
            }
            KeyCode::Left | KeyCode::Right => {
                let right = key.code == KeyCode::Right;
                self.goal_col = None;
                match self.selection() {
                    Some((s, e)) if !shift => {
                        self.anchor = None;
                        self.head = if right { e } else { s };
                    }
                    _ => {
                        self.begin_move(shift);
                        self.head = if right {
                            text::next_boundary(text, head)
                        } else {
                            text::prev_boundary(text, head)
                        };
                    }
                }
                Action::Moved
            }
            KeyCode::Up | KeyCode::Down => {
                self.begin_move(shift);
                self.move_rows(text, 1, key.code == KeyCode::Down);
                Action::Moved
            }
            KeyCode::PageUp | KeyCode::PageDown => {
                let down = key.code == KeyCode::PageDown;
                let page = self.height.saturating_sub(1).max(1);
                self.begin_move(shift);
                self.top =
                    self.walk_rows(text, self.row_start(text, self.top.min(len)), page, down);
                self.move_rows(text, page, down);
                Action::Moved
            }
            KeyCode::Home | KeyCode::End => {
                let end = key.code == KeyCode::End;
                self.begin_move(shift);
                self.goal_col = None;
                self.head = if ctrl {
                    if end {
                        len
                    } else {
                        0
                    }
                } else {
                    let (start, stop) = text::line_content(text, text::line_of(text, head));
                    if end {
                        stop
                    } else {
                        start
                    }
                };
                Action::Moved
            }
            KeyCode::Esc => {
                self.anchor = None;
                Action::Moved
            }
            _ => Action::None,
        }
    }

    fn backspace(&mut self, text: &Rope) -> Action {
        match self.selection() {
            Some((s, e)) => self.replace(text, s, e, ""),
            None => {
                let start = text::prev_boundary(text, self.head);
                self.replace(text, start, self.head, "")
            }
        }
    }

    fn delete_word_before(&mut self, text: &Rope) -> Action {
        match self.selection() {
            Some((s, e)) => self.replace(text, s, e, ""),
            None => {
                let start = text::word_start_before(text, self.head);
                self.replace(text, start, self.head, "")
            }
        }
    }

    fn word_move(&mut self, text: &Rope, right: bool, extend: bool) -> Action {
        self.begin_move(extend);
        self.goal_col = None;
        self.head = if right {
            text::word_end_after(text, self.head)
        } else {
            text::word_start_before(text, self.head)
        };
        Action::Moved
    }
}
