//! The full-screen terminal editor (`ot-client edit DOC`).
//!
//! - [`model`]: the pure editor model (cursor, selection, scrolling, keys → ops).
//! - [`layout`]: soft-wrap of a line by display width (grapheme clusters).
//! - [`text`]: grapheme, line and word helpers on the rope.
//! - [`view`]: drawing with ratatui (text, cursors, message and status lines).
//! - this module: the terminal loop (crossterm events, the session, reconnects).
//!
//! Every key is one local edit, applied at once through the session (saved,
//! then sent when the protocol allows): typing never waits for the network.
//! The editor starts offline if the server cannot be reached, and reconnects
//! in the background with backoff and jitter; the session resumes and resends.
//!
//! # Keys
//!
//! | key | does |
//! |---|---|
//! | characters, Enter | insert (over the selection, if any) |
//! | Tab | insert a tab character (shown as spaces to the next multiple of 4 columns) |
//! | paste (bracketed) | insert the pasted text as one edit (`\r\n` and `\r` become `\n`) |
//! | Backspace / Delete | delete one grapheme cluster (or the selection) |
//! | Ctrl+W, Ctrl/Alt+Backspace | delete the word before the cursor |
//! | ←/→ | one grapheme cluster |
//! | Ctrl/Alt+←/→, Alt+B/F | one word |
//! | ↑/↓ | one screen row (soft-wrapped), keeping the column |
//! | PgUp/PgDn | one screen |
//! | Home/End | start/end of the line; with Ctrl, of the document |
//! | Shift + any move | extend the selection |
//! | Ctrl+A | select all |
//! | Esc | clear the selection |
//! | Ctrl+Q | quit (Ctrl+C only says so) |

pub mod layout;
pub mod model;
pub mod text;
pub mod view;

use std::future::Future;
use std::io::{IsTerminal, Stdout};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use ot_core::Range;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{DisableBracketedPaste, EnableBracketedPaste, Event, EventStream};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::Terminal;
use tokio::time::Instant;

use crate::commands::Common;
use crate::session::{ConnState, Session, SessionEvent};
use model::{Action, Editor};
use ot_driver::{Dialed, DriverError};
use view::{RemoteView, Severity, StatusView};

/// How long the editor waits for outstanding acks when quitting while connected.
const QUIT_GRACE: Duration = Duration::from_secs(2);
/// How long a server error or notice stays on screen.
const NOTICE_TIME: Duration = Duration::from_secs(6);

type Dialing = Pin<Box<dyn Future<Output = Result<Dialed, DriverError>> + Send>>;

/// Leave the alternate screen, raw mode and bracketed paste (idempotent).
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

/// Restores the terminal when dropped (every exit path, including unwinding).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Set up the terminal: raw mode, alternate screen, bracketed paste, and a
/// panic hook that restores the terminal before the panic message is printed.
fn enter_terminal() -> Result<(TerminalGuard, Terminal<CrosstermBackend<Stdout>>)> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        bail!("`ot-client edit` needs a terminal (for scripts use insert, append, replace, …)");
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
    let guard = TerminalGuard;
    enable_raw_mode().context("cannot switch the terminal to raw mode")?;
    execute!(
        std::io::stdout(),
        EnterAlternateScreen,
        EnableBracketedPaste
    )
    .context("cannot set up the terminal")?;
    let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
        .context("cannot use the terminal")?;
    Ok((guard, terminal))
}

/// Run the editor on `doc` until the user quits.
pub async fn run(common: &Common, doc: &str) -> Result<()> {
    let name = common
        .name
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.trim().is_empty());
    let session = Session::open(
        common.store.clone(),
        common.server.clone(),
        doc,
        common.client_id.as_deref(),
        name,
    )?
    .with_connect_options(common.connect.clone());
    let mut app = App::new(session, common.clone());
    let result = {
        let (guard, mut terminal) = enter_terminal()?;
        let result = app.run(&mut terminal).await;
        drop(terminal);
        drop(guard);
        result
    };
    app.session.disconnect().await;
    for path in &app.session.conflict_copies {
        eprintln!(
            "ot-client: edits that could not be merged were saved to {}",
            path.display()
        );
    }
    let pending = app.session.client().unacknowledged();
    if pending > 0 {
        eprintln!(
            "ot-client: {pending} edit(s) to {doc} are not acknowledged by the server yet; \
             they are kept ({}) and will be sent next time (`ot-client sync {doc}` or the next `ot-client edit {doc}`)",
            app.session.state_path().display()
        );
    }
    result
}

/// The editor's running state.
struct App {
    session: Session,
    editor: Editor,
    /// A transient message and when it goes away.
    notice: Option<(String, Severity, Instant)>,
    /// The last conflict copy written (shown until the editor quits).
    conflict: Option<PathBuf>,
    /// A connection attempt in flight.
    dialing: Option<Dialing>,
    /// When to try connecting again.
    retry_at: Option<Instant>,
    /// Another instance took over this writer: do not reconnect.
    stopped: bool,
    /// The selection the server is believed to know (None: unknown).
    sent_range: Option<Range>,
    /// Whether the last connection attempt failed (its error is shown once).
    failing: bool,
    /// The token refused or expired (401, 4001), and until when to wait for a
    /// new one before retrying anyway: a renewed token file is tried at once.
    expired_token: Option<(Option<String>, Instant)>,
    /// For the HTTP calls (the server's copies).
    common: Common,
    /// How many conflict copies the server keeps of the document (asked at
    /// every snapshot: a regional server's reset comes with one).
    server_copies: usize,
}

/// How long the editor waits for the server's list of copies.
const COPIES_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a refused token's file is checked for a new token.
const TOKEN_CHECK: Duration = Duration::from_millis(300);

impl App {
    fn new(session: Session, common: Common) -> Self {
        let mut editor = Editor::new();
        // Start at the end of the text: where one usually goes on.
        editor.set_cursor(session.client().text().len_chars());
        App {
            session,
            editor,
            notice: None,
            conflict: None,
            dialing: None,
            retry_at: None,
            stopped: false,
            sent_range: None,
            failing: false,
            expired_token: None,
            common,
            server_copies: 0,
        }
    }

    /// Ask the server how many copies it keeps (a failure keeps the count).
    async fn refresh_server_copies(&mut self) {
        let doc = self.session.doc.clone();
        let asked = tokio::time::timeout(
            COPIES_TIMEOUT,
            crate::commands::server_copies(&self.common, &doc),
        );
        if let Ok(Ok(copies)) = asked.await {
            self.server_copies = copies.len();
        }
    }

    /// The token was refused: wait for a new one (checked every
    /// [`TOKEN_CHECK`]), retrying with the old one only after the backoff.
    fn wait_for_new_token(&mut self) {
        if self.stopped || self.dialing.is_some() {
            return;
        }
        let backoff = Instant::now() + self.session.retry_delay();
        self.expired_token = Some((self.session.current_token(), backoff));
        self.retry_at = Some(Instant::now() + TOKEN_CHECK);
    }

    fn status(&self) -> StatusView {
        let message = match (&self.notice, &self.conflict) {
            (Some((text, severity, _)), _) => Some((text.clone(), *severity)),
            (None, Some(path)) => Some((
                format!(
                    "edits that could not be merged were saved to {}",
                    path.display()
                ),
                Severity::Warning,
            )),
            (None, None) if self.server_copies > 0 => Some((
                format!(
                    "{} cop{} of this document kept on the server: ot-client copies {}",
                    self.server_copies,
                    if self.server_copies == 1 { "y" } else { "ies" },
                    self.session.doc
                ),
                Severity::Warning,
            )),
            (None, None) => None,
        };
        StatusView {
            doc: self.session.doc.clone(),
            conn: self.session.conn,
            rev: self.session.client().revision(),
            unacked: self.session.client().unacknowledged(),
            unreplicated: self.session.awaiting_replication(),
            message,
        }
    }

    fn remotes(&self) -> Vec<RemoteView> {
        if !self.session.is_connected() {
            // Who was there before the connection dropped is not known now.
            return Vec::new();
        }
        self.session
            .remote_cursors_local()
            .into_iter()
            .map(|(id, name, ranges)| RemoteView::new(&id, name.as_deref(), ranges))
            .collect()
    }

    fn tell(&mut self, text: String, severity: Severity) {
        self.notice = Some((text, severity, Instant::now() + NOTICE_TIME));
    }

    fn schedule_retry(&mut self) {
        if !self.stopped && self.dialing.is_none() {
            self.retry_at = Some(Instant::now() + self.session.retry_delay());
        }
    }

    fn start_dialing(&mut self) {
        self.retry_at = None;
        self.dialing = Some(Box::pin(self.session.dial()));
    }

    async fn run(&mut self, terminal: &mut Terminal<CrosstermBackend<Stdout>>) -> Result<()> {
        let mut input = EventStream::new();
        let mut signals = Signals::new();
        self.start_dialing();
        loop {
            let remotes = self.remotes();
            let status = self.status();
            terminal
                .draw(|frame| {
                    view::render(
                        frame,
                        &mut self.editor,
                        self.session.client().text(),
                        &remotes,
                        &status,
                    )
                })
                .context("drawing the screen")?;
            let notice_until = self.notice.as_ref().map(|(_, _, until)| *until);
            let idle = self.dialing.is_none();
            let dialing = &mut self.dialing;
            tokio::select! {
                event = input.next() => {
                    let mut event = match event {
                        Some(Ok(event)) => event,
                        Some(Err(e)) => return Err(e).context("reading the terminal"),
                        None => return self.quit().await,
                    };
                    // Handle everything already typed (or pasted) before drawing again.
                    loop {
                        if self.on_input(event).await {
                            return self.quit().await;
                        }
                        // Polled with this task's waker: crossterm's stream registers
                        // the waker once, so a throwaway waker would lose wake-ups.
                        let ready = std::future::poll_fn(|cx| {
                            std::task::Poll::Ready(input.poll_next_unpin(cx))
                        })
                        .await;
                        match ready {
                            std::task::Poll::Ready(Some(Ok(next))) => event = next,
                            std::task::Poll::Ready(Some(Err(e))) => {
                                return Err(e).context("reading the terminal")
                            }
                            std::task::Poll::Ready(None) => return self.quit().await,
                            std::task::Poll::Pending => break,
                        }
                    }
                    self.sync_cursor().await;
                }
                events = self.session.next_events() => {
                    match events {
                        Ok(events) => self.on_session_events(events).await,
                        Err(e) => self.connection_failed(format!("{e:#}"), true).await,
                    }
                }
                dialed = async {
                    match dialing.as_mut() {
                        Some(attempt) => attempt.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.dialing = None;
                    self.on_dialed(dialed).await;
                }
                _ = sleep_until(self.retry_at), if idle => {
                    match &self.expired_token {
                        // Still the refused token, and the backoff not over: look again soon.
                        Some((refused, until))
                            if *refused == self.session.current_token() && Instant::now() < *until =>
                        {
                            self.retry_at = Some(Instant::now() + TOKEN_CHECK);
                        }
                        _ => {
                            self.expired_token = None;
                            self.start_dialing();
                        }
                    }
                }
                _ = sleep_until(notice_until) => {
                    self.notice = None;
                }
                _ = signals.next() => {
                    return self.quit().await;
                }
            }
        }
    }

    /// Handle one terminal event; true to quit.
    async fn on_input(&mut self, event: Event) -> bool {
        let action = self
            .editor
            .handle_event(self.session.client().text(), &event);
        match action {
            Action::Edit(op) => {
                let goes_now = self.session.is_connected() && self.session.client().all_saved();
                let range = self.editor.range();
                match self.session.local_edit_with_cursor(&op, vec![range]).await {
                    Ok(events) => {
                        if goes_now {
                            self.sent_range = Some(range);
                        }
                        self.on_session_events(events).await;
                    }
                    Err(e) => self.tell(format!("{e:#}"), Severity::Error),
                }
            }
            Action::Notice(text) => self.tell(text, Severity::Info),
            Action::Quit => return true,
            Action::Moved | Action::None => {}
        }
        false
    }

    /// Tell the others where our cursor is, if it moved (rides on the next op
    /// when one is outstanding; see `Acked`).
    async fn sync_cursor(&mut self) {
        let range = self.editor.range();
        let goes_now = self.session.is_connected() && self.session.client().all_saved();
        match self.session.set_cursor(vec![range]).await {
            Ok(events) => {
                if goes_now {
                    self.sent_range = Some(range);
                }
                self.on_session_events(events).await;
            }
            Err(e) => self.tell(format!("{e:#}"), Severity::Error),
        }
    }

    async fn on_dialed(&mut self, dialed: Result<Dialed, DriverError>) {
        match dialed {
            Ok(dialed) => match self.session.attach(dialed).await {
                Ok(events) => {
                    self.failing = false;
                    self.on_session_events(events).await;
                    if self.session.is_connected() {
                        self.announce().await;
                    } else {
                        self.schedule_retry();
                    }
                }
                Err(e) => self.connection_failed(format!("{e:#}"), true).await,
            },
            // A refused token: say so, keep the edits, and keep trying (the
            // token file is read again on every attempt).
            Err(e @ DriverError::Unauthorized(_)) => {
                self.tell(
                    format!(
                        "access expired — get a new token ({e}); unsent edits are kept, retrying"
                    ),
                    Severity::Error,
                );
                self.wait_for_new_token();
            }
            // The id is bound to another key: retrying cannot help.
            Err(e @ DriverError::Forbidden(_)) => {
                self.stopped = true;
                self.tell(format!("{e:#}: not reconnecting"), Severity::Error);
            }
            Err(e) => self.connection_failed(format!("{e:#}"), false).await,
        }
    }

    async fn connection_failed(&mut self, why: String, was_connected: bool) {
        if was_connected {
            self.session.disconnect().await;
            self.session.conn = ConnState::Reconnecting;
        }
        if !self.failing {
            self.tell(format!("{why}; retrying in the background"), Severity::Info);
            self.failing = true;
        }
        self.sent_range = None;
        self.schedule_retry();
    }

    async fn announce(&mut self) {
        if self.session.client().all_saved() {
            let range = self.editor.range();
            match self.session.announce_cursor(vec![range]).await {
                Ok(events) => {
                    self.sent_range = Some(range);
                    Box::pin(self.on_session_events(events)).await;
                }
                Err(e) => self.tell(format!("{e:#}"), Severity::Error),
            }
        }
    }

    async fn on_session_events(&mut self, events: Vec<SessionEvent>) {
        for event in events {
            match event {
                SessionEvent::Remote(op) => {
                    self.editor.remote_edit(&op);
                    self.sent_range = self.sent_range.map(|r| op.transform_range(r));
                }
                SessionEvent::Resynced => {
                    self.sent_range = None;
                    self.refresh_server_copies().await;
                }
                SessionEvent::Acked => {
                    if self.session.client().all_saved()
                        && self.sent_range != Some(self.editor.range())
                    {
                        self.announce().await;
                    }
                }
                SessionEvent::Presence => {}
                SessionEvent::ServerError { code, message } => {
                    self.tell(format!("server error {code}: {message}"), Severity::Error);
                }
                SessionEvent::ConflictCopy(path) => {
                    self.conflict = Some(path);
                }
                SessionEvent::Stopped(why) => {
                    self.sent_range = None;
                    self.stopped = true;
                    self.tell(format!("{why}: not reconnecting"), Severity::Error);
                }
                SessionEvent::AccessExpired(why) => {
                    self.sent_range = None;
                    self.tell(
                        format!("access expired — get a new token ({why}); unsent edits are kept, retrying"),
                        Severity::Error,
                    );
                    self.wait_for_new_token();
                }
                SessionEvent::Disconnected(why) => {
                    self.sent_range = None;
                    if why != "resyncing" && why != "revision gap" {
                        self.tell(
                            format!("{why}; reconnecting in the background"),
                            Severity::Info,
                        );
                    }
                    self.schedule_retry();
                }
            }
        }
    }

    /// Quit: give outstanding edits a moment to be acknowledged, then close.
    async fn quit(&mut self) -> Result<()> {
        if self.session.is_connected() && !self.session.client().all_saved() {
            let _ = self.session.wait_saved(QUIT_GRACE).await;
        }
        self.session.disconnect().await;
        Ok(())
    }
}

/// Sleep until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGHUP end the editor like Ctrl-Q (the terminal is restored).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let hup = async {
                match self.hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = hup => {}
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    }
}
