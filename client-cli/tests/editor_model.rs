//! The editor model and its drawing, without a terminal or a network: keys
//! produce the right ops and text, remote ops move the cursor, other users'
//! cursors are drawn in their colours, wide characters align, long lines wrap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use client_cli::editor::model::{Action, Editor};
use client_cli::editor::view::{self, color_for, RemoteView, Severity, StatusView};
use client_cli::session::ConnState;
use ot_core::{Operation, Range};
use ratatui::backend::TestBackend;
use ratatui::buffer::CellWidth;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::{Color, Modifier};
use ratatui::Terminal;
use ropey::Rope;

const NONE: KeyModifiers = KeyModifiers::NONE;
const CTRL: KeyModifiers = KeyModifiers::CONTROL;
const SHIFT: KeyModifiers = KeyModifiers::SHIFT;

/// A document as the editor sees it: the text, the model, the ops it made.
struct Doc {
    text: Rope,
    ed: Editor,
    ops: Vec<Operation>,
    width: u16,
    height: u16,
}

impl Doc {
    fn new(text: &str, cursor: usize) -> Doc {
        Doc::sized(text, cursor, 40, 10)
    }

    /// A document in a terminal of `width` × `height` (one row is the status line).
    fn sized(text: &str, cursor: usize, width: u16, height: u16) -> Doc {
        let mut ed = Editor::new();
        ed.set_cursor(cursor);
        let mut doc = Doc {
            text: Rope::from_str(text),
            ed,
            ops: Vec::new(),
            width,
            height,
        };
        doc.prepare();
        doc
    }

    fn prepare(&mut self) {
        self.ed.prepare(
            &self.text,
            usize::from(self.width),
            usize::from(self.height - 1),
        );
    }

    fn event(&mut self, event: Event) -> Action {
        let action = self.ed.handle_event(&self.text, &event);
        if let Action::Edit(op) = &action {
            op.apply_to_rope(&mut self.text).unwrap();
            self.ops.push(op.clone());
        }
        self.prepare();
        action
    }

    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> Action {
        self.event(Event::Key(KeyEvent::new(code, modifiers)))
    }

    fn type_str(&mut self, s: &str) {
        for c in s.chars() {
            self.key(KeyCode::Char(c), NONE);
        }
    }

    /// A remote op, applied to the text the way the session does it.
    fn remote(&mut self, op: &Operation) {
        op.apply_to_rope(&mut self.text).unwrap();
        self.ed.remote_edit(op);
        self.prepare();
    }

    fn text(&self) -> String {
        self.text.to_string()
    }

    fn cursor(&self) -> usize {
        self.ed.cursor()
    }

    fn last_op(&self) -> String {
        serde_json::to_string(self.ops.last().unwrap()).unwrap()
    }

    fn render(&mut self, remotes: &[RemoteView]) -> Terminal<TestBackend> {
        self.render_with(remotes, &status(ConnState::Connected, 0))
    }

    fn render_with(
        &mut self,
        remotes: &[RemoteView],
        status: &StatusView,
    ) -> Terminal<TestBackend> {
        let mut terminal = Terminal::new(TestBackend::new(self.width, self.height)).unwrap();
        terminal
            .draw(|frame| view::render(frame, &mut self.ed, &self.text, remotes, status))
            .unwrap();
        terminal
    }
}

fn status(conn: ConnState, unacked: usize) -> StatusView {
    StatusView {
        doc: "notes".to_owned(),
        conn,
        rev: 7,
        unacked,
        unreplicated: false,
        message: None,
    }
}

/// The symbols of row `y` (wide chars take their first cell; the cell after is blank).
fn row_text(terminal: &Terminal<TestBackend>, y: u16) -> String {
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    let mut x = 0;
    while x < buf.area.width {
        let symbol = buf[(x, y)].symbol();
        out.push_str(symbol);
        x += symbol.cell_width().max(1);
    }
    out.trim_end().to_owned()
}

fn cursor_at(terminal: &mut Terminal<TestBackend>) -> (u16, u16) {
    let p = terminal.get_cursor_position().unwrap();
    (p.x, p.y)
}

#[test]
fn typing_makes_one_insert_op_per_key() {
    let mut doc = Doc::new("", 0);
    doc.type_str("hé🙂");
    assert_eq!(doc.text(), "hé🙂");
    assert_eq!(doc.ops.len(), 3);
    assert_eq!(doc.last_op(), r#"[2,"🙂"]"#);
    assert_eq!(doc.cursor(), 3);
    doc.key(KeyCode::Enter, NONE);
    assert_eq!(doc.last_op(), r#"[3,"\n"]"#);
    doc.key(KeyCode::Tab, NONE);
    assert_eq!(doc.text(), "hé🙂\n\t");
    // Shifted characters are typed; control chords are not.
    doc.key(KeyCode::Char('A'), SHIFT);
    assert_eq!(doc.key(KeyCode::Char('x'), CTRL), Action::None);
    assert_eq!(doc.text(), "hé🙂\n\tA");
    assert_eq!(doc.key(KeyCode::Char('q'), CTRL), Action::Quit);
}

#[test]
fn backspace_and_delete_remove_whole_grapheme_clusters() {
    // "e" + combining acute is one cluster of two chars; the emoji one of one char.
    let mut doc = Doc::new("ae\u{301}🙂b", 4);
    doc.key(KeyCode::Backspace, NONE);
    assert_eq!(doc.text(), "ae\u{301}b");
    assert_eq!(doc.last_op(), r#"[3,-1,1]"#);
    doc.key(KeyCode::Backspace, NONE);
    assert_eq!(doc.text(), "ab");
    assert_eq!(doc.last_op(), r#"[1,-2,1]"#);
    assert_eq!(doc.cursor(), 1);
    // Forward delete, over a family emoji (a ZWJ sequence of five chars).
    let mut doc = Doc::new("x👨\u{200d}👩\u{200d}👧e\u{301}", 1);
    doc.key(KeyCode::Delete, NONE);
    assert_eq!(doc.text(), "xe\u{301}");
    assert_eq!(doc.last_op(), r#"[1,-5,2]"#);
    doc.key(KeyCode::Delete, NONE);
    assert_eq!(doc.text(), "x");
    // Nothing to delete: no op at all.
    assert_eq!(doc.key(KeyCode::Delete, NONE), Action::None);
    doc.key(KeyCode::Home, NONE);
    assert_eq!(doc.key(KeyCode::Backspace, NONE), Action::None);
    assert_eq!(doc.ops.len(), 2);
}

#[test]
fn arrows_step_over_grapheme_clusters() {
    let mut doc = Doc::new("e\u{301}🙂中\r\nx", 0);
    let mut seen = vec![doc.cursor()];
    for _ in 0..5 {
        doc.key(KeyCode::Right, NONE);
        seen.push(doc.cursor());
    }
    // "\r\n" is one step too; the end stops.
    assert_eq!(seen, vec![0, 2, 3, 4, 6, 7]);
    doc.key(KeyCode::Right, NONE);
    assert_eq!(doc.cursor(), 7);
    let mut back = vec![];
    for _ in 0..5 {
        doc.key(KeyCode::Left, NONE);
        back.push(doc.cursor());
    }
    assert_eq!(back, vec![6, 4, 3, 2, 0]);
}

#[test]
fn word_jumps_home_end() {
    let mut doc = Doc::new("let foo_bar = baz(1);\nnext line", 0);
    let mut stops = vec![];
    for _ in 0..6 {
        doc.key(KeyCode::Right, CTRL);
        stops.push(doc.cursor());
    }
    assert_eq!(stops, vec![3, 11, 13, 17, 18, 19]);
    doc.key(KeyCode::End, NONE);
    assert_eq!(doc.cursor(), 21);
    doc.key(KeyCode::Left, CTRL);
    assert_eq!(doc.cursor(), 19);
    doc.key(KeyCode::Left, CTRL);
    assert_eq!(doc.cursor(), 18);
    doc.key(KeyCode::Left, CTRL);
    assert_eq!(doc.cursor(), 17);
    doc.key(KeyCode::Left, CTRL);
    assert_eq!(doc.cursor(), 14);
    doc.key(KeyCode::Home, NONE);
    assert_eq!(doc.cursor(), 0);
    doc.key(KeyCode::End, CTRL);
    assert_eq!(doc.cursor(), 31);
    doc.key(KeyCode::Home, NONE);
    assert_eq!(doc.cursor(), 22);
    doc.key(KeyCode::Left, CTRL);
    assert_eq!(doc.cursor(), 19, "word jumps cross lines");
    // Ctrl+W deletes the word before the cursor.
    doc.key(KeyCode::End, CTRL);
    doc.key(KeyCode::Char('w'), CTRL);
    assert_eq!(doc.text(), "let foo_bar = baz(1);\nnext ");
    doc.key(KeyCode::Home, CTRL);
    assert_eq!(doc.cursor(), 0);
}

#[test]
fn paste_is_one_edit_with_normalised_newlines() {
    let mut doc = Doc::new("ab", 1);
    doc.event(Event::Paste("x\r\ny\rz\u{1b}[31m\tw".to_owned()));
    assert_eq!(doc.text(), "ax\ny\nz[31m\twb");
    assert_eq!(doc.ops.len(), 1);
    assert_eq!(doc.cursor(), 12);
    // Bigger than a document may be: refused with a notice, nothing changes.
    let huge = "x".repeat(client_cli::editor::model::MAX_PASTE_CHARS + 1);
    assert!(matches!(doc.event(Event::Paste(huge)), Action::Notice(_)));
    assert_eq!(doc.ops.len(), 1);
}

#[test]
fn selection_is_replaced_by_typing_and_deleted_by_backspace() {
    let mut doc = Doc::new("hello world", 11);
    doc.key(KeyCode::Left, KeyModifiers::CONTROL | KeyModifiers::SHIFT);
    assert_eq!(doc.ed.selection(), Some((6, 11)));
    assert_eq!(
        doc.ed.range(),
        Range {
            anchor: 11,
            head: 6
        }
    );
    doc.type_str("there");
    assert_eq!(doc.text(), "hello there");
    assert_eq!(doc.ops[0], Operation::replace_range(11, 6, 5, "t").unwrap());
    doc.key(KeyCode::Home, SHIFT);
    doc.key(KeyCode::Backspace, NONE);
    assert_eq!(doc.text(), "");
    let mut doc = Doc::new("abc", 0);
    doc.key(KeyCode::Char('a'), CTRL);
    doc.key(KeyCode::Char('z'), NONE);
    assert_eq!(doc.text(), "z");
    // Left/Right without Shift collapse a selection to its ends.
    let mut doc = Doc::new("abcdef", 2);
    doc.key(KeyCode::Right, SHIFT);
    doc.key(KeyCode::Right, SHIFT);
    doc.key(KeyCode::Left, NONE);
    assert_eq!((doc.cursor(), doc.ed.selection()), (2, None));
}

#[test]
fn remote_ops_move_the_local_cursor() {
    let mut doc = Doc::new("hello world", 6);
    // An insert before the cursor pushes it right.
    doc.remote(&Operation::insert_at(11, 0, ">> ").unwrap());
    assert_eq!(doc.cursor(), 9);
    assert_eq!(doc.text(), ">> hello world");
    // After the cursor: it stays.
    doc.remote(&Operation::insert_at(14, 14, "!").unwrap());
    assert_eq!(doc.cursor(), 9);
    // Exactly at the cursor: the cursor goes after the inserted text (ot.js rule).
    doc.remote(&Operation::insert_at(15, 9, "big ").unwrap());
    assert_eq!(doc.cursor(), 13);
    // A delete before the cursor pulls it left; a delete around it puts it at the start.
    doc.remote(&Operation::delete_range(19, 0, 3).unwrap());
    assert_eq!(doc.cursor(), 10);
    assert_eq!(doc.text(), "hello big world!");
    doc.remote(&Operation::delete_range(16, 6, 7).unwrap());
    assert_eq!(doc.cursor(), 6);
    assert_eq!(doc.text(), "hello ld!");
    // Typing goes on from there, on the current text.
    doc.type_str("wor");
    assert_eq!(doc.text(), "hello world!");
    // A selection is mapped at both ends.
    let mut doc = Doc::new("abcdef", 4);
    doc.key(KeyCode::Left, SHIFT);
    doc.key(KeyCode::Left, SHIFT);
    doc.remote(&Operation::insert_at(6, 0, "xy").unwrap());
    assert_eq!(doc.ed.selection(), Some((4, 6)));
}

#[test]
fn remote_cursors_are_drawn_in_their_colours() {
    let mut doc = Doc::sized("hello world\nsecond", 0, 80, 6);
    let ann = RemoteView::new("client-ann", Some("Ann"), vec![Range::cursor(6)]);
    let bob = RemoteView::new(
        "client-bob",
        None,
        vec![Range {
            anchor: 12,
            head: 15,
        }],
    );
    let carl = RemoteView::new("client-carl", Some("Carl"), vec![Range::cursor(11)]);
    let remotes = vec![ann.clone(), bob.clone(), carl.clone()];
    let terminal = doc.render(&remotes);
    let buf = terminal.backend().buffer();
    assert_eq!(row_text(&terminal, 0), "hello world");
    // Ann's cursor: the cell of "w" in her colour.
    assert_eq!(buf[(6, 0)].symbol(), "w");
    assert_eq!(buf[(6, 0)].bg, color_for("client-ann"));
    assert_eq!(buf[(5, 0)].bg, Color::Reset);
    // Carl's cursor is at the end of the line: the cell after the text.
    assert_eq!(buf[(11, 0)].bg, color_for("client-carl"));
    // Bob's selection (12..15, "sec") is underlined in his colour, his cursor at 15 ("o").
    for x in 0..3 {
        assert_eq!(buf[(x, 1)].fg, color_for("client-bob"), "cell {x}");
        assert!(buf[(x, 1)].modifier.contains(Modifier::UNDERLINED));
    }
    assert_eq!(buf[(3, 1)].bg, color_for("client-bob"));
    assert_eq!(buf[(4, 1)].bg, Color::Reset);
    // The status line names everybody, each on their colour.
    let status = row_text(&terminal, 5);
    assert!(status.contains("connected"), "{status}");
    assert!(status.contains("4 here"), "{status}");
    for remote in &remotes {
        let at = status
            .find(&format!(" {}", remote.name))
            .unwrap_or_else(|| panic!("{} not in {status:?}", remote.name));
        let x = status[..at].chars().count() as u16;
        assert_eq!(buf[(x + 1, 5)].bg, remote.color, "{}", remote.name);
    }
    // Bob has no name: the start of his id stands in.
    assert_eq!(bob.name, "client-b");
    // Colours are stable per client id.
    assert_eq!(color_for("client-ann"), ann.color);
    assert_eq!(
        RemoteView::new("client-ann", Some("Ann"), vec![]).color,
        color_for("client-ann")
    );
}

#[test]
fn wide_characters_take_two_cells_and_the_cursor_follows() {
    let mut doc = Doc::sized("中文x\nab", 1, 20, 4);
    let mut terminal = doc.render(&[]);
    let buf = terminal.backend().buffer().clone();
    assert_eq!(buf[(0, 0)].symbol(), "中");
    assert_eq!(buf[(2, 0)].symbol(), "文");
    assert_eq!(buf[(4, 0)].symbol(), "x");
    assert_eq!(cursor_at(&mut terminal), (2, 0));
    doc.key(KeyCode::Right, NONE);
    let mut terminal = doc.render(&[]);
    assert_eq!(cursor_at(&mut terminal), (4, 0));
    // Down keeps the display column: col 4 is past "ab", so the end of line 2.
    doc.key(KeyCode::Down, NONE);
    assert_eq!(doc.cursor(), 6);
    // Up again returns to col 4 ("x"), not col 2.
    doc.key(KeyCode::Up, NONE);
    assert_eq!(doc.cursor(), 2);
    let mut terminal = doc.render(&[]);
    assert_eq!(cursor_at(&mut terminal), (4, 0));
    // Emoji and combining characters.
    let mut doc = Doc::sized("🙂e\u{301}z", 3, 20, 4);
    let mut terminal = doc.render(&[]);
    let buf = terminal.backend().buffer().clone();
    assert_eq!(buf[(0, 0)].symbol(), "🙂");
    assert_eq!(buf[(2, 0)].symbol(), "e\u{301}");
    assert_eq!(buf[(3, 0)].symbol(), "z");
    assert_eq!(cursor_at(&mut terminal), (3, 0));
}

#[test]
fn long_lines_wrap_by_display_width() {
    // 10 cells wide: "abcdefghi" leaves one cell, too narrow for 中: it goes down whole.
    let mut doc = Doc::sized("abcdefghi中jk\nnext", 0, 10, 5);
    let terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 0), "abcdefghi");
    assert_eq!(row_text(&terminal, 1), "中jk");
    assert_eq!(row_text(&terminal, 2), "next");
    // Down moves by screen row, keeping the column.
    doc.key(KeyCode::Right, NONE);
    doc.key(KeyCode::Right, NONE);
    doc.key(KeyCode::Right, NONE);
    doc.key(KeyCode::Down, NONE);
    // col 3 on row 1 is "j" (中 takes 0-1, j is col 2, k col 3).
    assert_eq!(doc.cursor(), 11);
    let mut terminal = doc.render(&[]);
    assert_eq!(cursor_at(&mut terminal), (3, 1));
    doc.key(KeyCode::Down, NONE);
    assert_eq!(doc.cursor(), 16);
    doc.key(KeyCode::Up, NONE);
    doc.key(KeyCode::Up, NONE);
    assert_eq!(doc.cursor(), 3);
    // A line that fills its row exactly keeps a cell for the cursor on the next row.
    let mut doc = Doc::sized("0123456789", 10, 10, 5);
    let mut terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 0), "0123456789");
    assert_eq!(cursor_at(&mut terminal), (0, 1));
    // Typing at the end of a full row goes on on the next one.
    doc.type_str("ab");
    let terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 1), "ab");
}

#[test]
fn scrolling_keeps_the_cursor_visible() {
    let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
    // 6 rows: 5 of text and the status line.
    let mut doc = Doc::sized(&text, 0, 20, 6);
    doc.key(KeyCode::End, CTRL);
    let mut terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 3), "line 99");
    assert_eq!(row_text(&terminal, 4), "");
    assert_eq!(cursor_at(&mut terminal), (0, 4));
    doc.key(KeyCode::PageUp, NONE);
    let mut terminal = doc.render(&[]);
    let (_, y) = cursor_at(&mut terminal);
    assert!(
        row_text(&terminal, y).starts_with("line 96"),
        "{}",
        row_text(&terminal, y)
    );
    assert_eq!(row_text(&terminal, 0), "line 92");
    doc.key(KeyCode::Home, CTRL);
    let terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 0), "line 0");
    doc.key(KeyCode::PageDown, NONE);
    doc.key(KeyCode::PageDown, NONE);
    let mut terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 0), "line 8");
    assert_eq!(cursor_at(&mut terminal), (0, 0));
    // Remote inserts above the view keep the same lines in view.
    doc.remote(&Operation::insert_at(doc.text.len_chars(), 0, "new\nlines\n").unwrap());
    let terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 0), "line 8");
}

#[test]
fn status_line_shows_connection_revision_and_saving() {
    let mut doc = Doc::sized("x", 0, 70, 3);
    let terminal = doc.render_with(&[], &status(ConnState::Connected, 0));
    let line = row_text(&terminal, 2);
    assert!(line.contains("notes"), "{line}");
    assert!(line.contains("connected"), "{line}");
    assert!(line.contains("rev 7"), "{line}");
    assert!(line.contains("all saved"), "{line}");
    assert!(line.contains("1 here"), "{line}");
    // A regional server with work not yet at the home.
    let mut regional = status(ConnState::Connected, 0);
    regional.unreplicated = true;
    let terminal = doc.render_with(&[], &regional);
    let line = row_text(&terminal, 2);
    assert!(
        line.contains("saved in region, not yet replicated"),
        "{line}"
    );
    let terminal = doc.render_with(&[], &status(ConnState::Reconnecting, 3));
    let line = row_text(&terminal, 2);
    assert!(
        line.contains("reconnecting") && line.contains("3 unsaved"),
        "{line}"
    );
    let mut offline = status(ConnState::Offline, 1);
    offline.message = Some((
        "edits that could not be merged were saved to /tmp/x".to_owned(),
        Severity::Warning,
    ));
    let terminal = doc.render_with(&[], &offline);
    assert!(row_text(&terminal, 2).contains("offline"));
    assert!(row_text(&terminal, 1).contains("/tmp/x"));
    assert_eq!(row_text(&terminal, 0), "x");
}

#[test]
fn control_characters_never_reach_the_terminal() {
    let mut doc = Doc::sized("a\u{1b}[2Jb\u{7}", 0, 20, 3);
    let terminal = doc.render(&[]);
    assert_eq!(row_text(&terminal, 0), "a^[[2Jb^G");
}

#[test]
fn tiny_terminals_do_not_panic() {
    for (w, h) in [(1, 1), (1, 2), (2, 1), (1, 5), (3, 3), (2, 4)] {
        let mut doc = Doc::sized("中文🙂e\u{301}\tx\nab\u{1}", 3, w, h.max(2));
        doc.height = h;
        let remotes = vec![RemoteView::new("r", Some("R"), vec![Range::cursor(2)])];
        doc.render(&remotes);
        for code in [KeyCode::Down, KeyCode::PageDown, KeyCode::End, KeyCode::Up] {
            doc.key(code, NONE);
            doc.render(&remotes);
        }
    }
}
