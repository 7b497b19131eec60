//! Drawing: the text (soft-wrapped), the local selection, other users'
//! cursors and selections in their colours, a message line and the status line.

use ot_core::Range;
use ratatui::buffer::{Buffer, CellWidth};
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::Frame;
use ropey::Rope;
use unicode_segmentation::UnicodeSegmentation;

use super::layout::Row;
use super::model::Editor;
use crate::session::ConnState;

/// Colours for other users, picked by a hash of the client id.
pub const PALETTE: [Color; 10] = [
    Color::Red,
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightRed,
    Color::LightGreen,
    Color::LightBlue,
    Color::LightMagenta,
];

/// The colour of a client: the same for every user and every run (FNV-1a of the id).
pub fn color_for(client_id: &str) -> Color {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

/// Another user, as drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteView {
    /// Client id.
    pub id: String,
    /// Name shown (their display name, or the start of their id).
    pub name: String,
    /// Their colour.
    pub color: Color,
    /// Their selections in the local text.
    pub ranges: Vec<Range>,
}

impl RemoteView {
    /// Build from the session's `remote_cursors_local()` entry.
    pub fn new(id: &str, name: Option<&str>, ranges: Vec<Range>) -> Self {
        let name = match name.map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => id.chars().take(8).collect(),
        };
        // Names come from the network: never let control characters reach the terminal.
        let name = name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        RemoteView {
            id: id.to_owned(),
            name,
            color: color_for(id),
            ranges,
        }
    }
}

/// How a message is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Plain information.
    Info,
    /// Something the user should know (a conflict copy).
    Warning,
    /// An error.
    Error,
}

/// What the status and message lines show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    /// Document id.
    pub doc: String,
    /// Connection state.
    pub conn: ConnState,
    /// Known server revision.
    pub rev: u64,
    /// Local edits not acknowledged yet.
    pub unacked: usize,
    /// A regional server has work not yet at the document's home.
    pub unreplicated: bool,
    /// A message above the status line.
    pub message: Option<(String, Severity)>,
}

/// The parts of the screen: (text area, message line, status line).
pub fn split(area: Rect, with_message: bool) -> (Rect, Option<Rect>, Rect) {
    let status = Rect::new(area.x, area.bottom().saturating_sub(1), area.width, 1);
    let mut text_h = area.height.saturating_sub(1);
    let message = if with_message && text_h >= 2 {
        text_h -= 1;
        Some(Rect::new(area.x, area.y + text_h, area.width, 1))
    } else {
        None
    };
    (
        Rect::new(area.x, area.y, area.width, text_h),
        message,
        status,
    )
}

/// Draw everything into `frame`; places the terminal cursor at ours.
pub fn render(
    frame: &mut Frame<'_>,
    editor: &mut Editor,
    text: &Rope,
    remotes: &[RemoteView],
    status: &StatusView,
) {
    if frame.area().is_empty() {
        return;
    }
    let (text_area, message_area, status_area) = split(frame.area(), status.message.is_some());
    editor.prepare(
        text,
        usize::from(text_area.width),
        usize::from(text_area.height),
    );
    let buf = frame.buffer_mut();
    draw_text(buf, text_area, editor, text, remotes);
    if let (Some(area), Some((message, severity))) = (message_area, &status.message) {
        let style = match severity {
            Severity::Info => Style::default(),
            Severity::Warning => Style::default().fg(Color::Yellow),
            Severity::Error => Style::default().fg(Color::Red),
        };
        let clean: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        buf.set_stringn(area.x, area.y, clean, usize::from(area.width), style);
    }
    draw_status(buf, status_area, status, remotes);
    if text_area.height > 0 {
        if let Some((x, y)) = editor.screen_pos(text, editor.cursor()) {
            if x < usize::from(text_area.width) {
                frame.set_cursor_position(Position::new(
                    text_area.x + x as u16,
                    text_area.y + y as u16,
                ));
            }
        }
    }
}

/// Style of the cell at char position `pos` (a glyph starting there).
fn glyph_style(pos: usize, editor: &Editor, remotes: &[RemoteView], stand_in: bool) -> Style {
    let mut style = Style::default();
    if stand_in {
        style = style.add_modifier(Modifier::DIM);
    }
    for remote in remotes {
        for r in &remote.ranges {
            let (s, e) = (r.anchor.min(r.head), r.anchor.max(r.head));
            if s <= pos && pos < e {
                style = style.fg(remote.color).add_modifier(Modifier::UNDERLINED);
            }
        }
    }
    for remote in remotes {
        if remote.ranges.iter().any(|r| r.head == pos) {
            style = style.bg(remote.color).fg(Color::Black);
        }
    }
    if let Some((s, e)) = editor.selection() {
        if s <= pos && pos < e {
            style = style.add_modifier(Modifier::REVERSED);
        }
    }
    style
}

/// Draw one screen row of a line into `area` (one row high).
fn draw_row(
    buf: &mut Buffer,
    area: Rect,
    row: &Row,
    line_start: usize,
    line_end_here: bool,
    editor: &Editor,
    remotes: &[RemoteView],
) {
    let width = usize::from(area.width);
    let y = area.y;
    for g in &row.glyphs {
        if g.col + g.width > width {
            break;
        }
        let style = glyph_style(line_start + g.start, editor, remotes, g.stand_in);
        let mut x = g.col;
        for part in g.symbol.graphemes(true) {
            let w = usize::from(part.cell_width()).max(1);
            if x + w > width {
                break;
            }
            let cell_x = area.x + x as u16;
            buf[(cell_x, y)].set_symbol(part).set_style(style);
            for i in 1..w {
                buf[(cell_x + i as u16, y)].reset();
            }
            x += w;
        }
    }
    // A remote cursor at the end of the line: a coloured cell after the text.
    if line_end_here && row.width < width {
        let end = line_start + row.end;
        if let Some(remote) = remotes
            .iter()
            .rev()
            .find(|r| r.ranges.iter().any(|r| r.head == end))
        {
            buf[(area.x + row.width as u16, y)]
                .set_symbol(" ")
                .set_style(Style::default().bg(remote.color));
        }
    }
}

fn draw_text(buf: &mut Buffer, area: Rect, editor: &Editor, text: &Rope, remotes: &[RemoteView]) {
    if area.height == 0 || area.width == 0 {
        return;
    }
    let mut row_start = editor.top();
    let mut prev = None;
    for y in 0..area.height {
        if let Some(p) = prev {
            let next = editor.walk_rows(text, p, 1, true);
            if next == p {
                break;
            }
            row_start = next;
        }
        prev = Some(row_start);
        let line = super::text::line_of(text, row_start);
        let (start, end) = super::text::line_content(text, line);
        let content = text.slice(start..end).to_string();
        let layout = super::layout::layout_line(&content, usize::from(area.width));
        let index = layout.row_of(row_start - start);
        let last = index + 1 == layout.rows.len();
        draw_row(
            buf,
            Rect::new(area.x, area.y + y, area.width, 1),
            &layout.rows[index],
            start,
            last,
            editor,
            remotes,
        );
    }
}

fn draw_status(buf: &mut Buffer, area: Rect, status: &StatusView, remotes: &[RemoteView]) {
    let bar = Style::default().bg(Color::DarkGray).fg(Color::White);
    buf.set_style(area, bar);
    let (conn, conn_color) = match status.conn {
        ConnState::Connected => ("● connected", Color::LightGreen),
        ConnState::Reconnecting => ("◌ reconnecting", Color::Yellow),
        ConnState::Offline => ("○ offline", Color::LightRed),
    };
    let saved = if status.unacked == 0 && status.unreplicated {
        "saved in region, not yet replicated".to_owned()
    } else if status.unacked == 0 {
        "all saved".to_owned()
    } else {
        format!("{} unsaved", status.unacked)
    };
    // Most important first: a narrow terminal cuts the end.
    let mut spans = vec![
        Span::styled(
            format!(" {} ", status.doc),
            bar.add_modifier(Modifier::BOLD),
        ),
        Span::styled("│ ", bar),
        Span::styled(conn, bar.fg(conn_color)),
        Span::styled(format!(" │ {saved} │ "), bar),
        Span::styled(format!("{} here: you", remotes.len() + 1), bar),
    ];
    for remote in remotes {
        spans.push(Span::styled(" ", bar));
        spans.push(Span::styled(
            format!(" {} ", remote.name),
            Style::default().bg(remote.color).fg(Color::Black),
        ));
    }
    spans.push(Span::styled(format!(" │ rev {}", status.rev), bar));
    let line = Line::from(spans);
    let hint = " Ctrl-Q quit ";
    let hint_w = hint.len() as u16;
    let room = if line.width() as u16 + hint_w < area.width {
        buf.set_stringn(
            area.right() - hint_w,
            area.y,
            hint,
            usize::from(hint_w),
            bar,
        );
        area.width - hint_w
    } else {
        area.width
    };
    buf.set_line(area.x, area.y, &line, room);
}
