//! A client session on one document: the shared client driver (`ot-driver`)
//! with this client's saved state (a locked slot in the [`Store`], written
//! before every send and after every change) and conflict copies as files.
//!
//! The editor and the scripting commands both drive a [`Session`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ot_core::client::Client;
use ot_core::{Operation, Range};
use ot_driver::{CloseAction, Dialed, Driver, DriverError, Event, SessionCore};
use ot_protocol::DocId;

use crate::store::{SavedState, Store};

pub use ot_driver::{ConnectOptions, ServerUrl};

/// The connection state shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Never connected in this run, or given up for now.
    Offline,
    /// Connected and synced.
    Connected,
    /// Lost the connection; retrying.
    Reconnecting,
}

/// Something the user interface may want to show.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A remote op was applied to the local text (map local cursors through it).
    Remote(Operation),
    /// The local text was replaced by a snapshot (cursors must be clamped).
    Resynced,
    /// Our op was acknowledged.
    Acked,
    /// Presence changed.
    Presence,
    /// The server reported an error.
    ServerError {
        /// Its code.
        code: String,
        /// Its text.
        message: String,
    },
    /// Pending edits that could not be rebased were saved here.
    ConflictCopy(PathBuf),
    /// The connection was lost, or dropped to resync or resend.
    Disconnected(String),
    /// The server closed the connection for good (e.g. 4009: another instance
    /// of this writer took over): do not reconnect.
    Stopped(String),
    /// The token expired or was revoked (4001): every unsent edit is kept;
    /// reconnecting works once there is a new token (a token file is read
    /// again on every attempt).
    AccessExpired(String),
}

/// A running client of one document.
pub struct Session {
    /// The document id.
    pub doc: String,
    /// Connection state.
    pub conn: ConnState,
    /// Conflict copies written in this session.
    pub conflict_copies: Vec<PathBuf>,
    driver: Driver,
    store: Store,
    state_path: PathBuf,
}

impl Session {
    /// Open a session: lock a writer slot (reusing a saved one that no running
    /// client holds) and load its state. Does not connect.
    pub fn open(
        store: Store,
        server: ServerUrl,
        doc: &str,
        client_id: Option<&str>,
        name: Option<String>,
    ) -> Result<Session> {
        let doc_id = DocId::parse(doc).with_context(|| format!("{doc:?}"))?;
        let (slot, saved) = store
            .acquire(&server.ws(), doc, client_id)
            .with_context(|| format!("opening the saved state of {doc}"))?;
        let state_path = slot.path().to_path_buf();
        let mut core = match saved {
            Some(saved) => SessionCore::restore(doc_id, saved.session)
                .with_context(|| format!("loading {}", state_path.display()))?,
            None => SessionCore::new(doc_id, &slot.client_id),
        };
        core.set_name(name);
        let (server_ws, doc_name) = (server.ws(), doc.to_owned());
        let mut driver = Driver::new(server, core).with_saver(Box::new(move |state| {
            slot.save(&SavedState {
                version: 1,
                server: server_ws.clone(),
                doc: doc_name.clone(),
                session: state.clone(),
            })
            .map_err(Into::into)
        }));
        // Save at once: a new writer's key (or the key a state saved before
        // keys just got) must be durable before a connection presents it.
        driver
            .save_now()
            .with_context(|| format!("saving {}", state_path.display()))?;
        Ok(Session {
            doc: doc.to_owned(),
            conn: ConnState::Offline,
            conflict_copies: Vec::new(),
            driver,
            store,
            state_path,
        })
    }

    /// The token the next connection would send (a token file is read now).
    pub fn current_token(&self) -> Option<String> {
        self.driver.connect_options().bearer().ok().flatten()
    }

    /// Connect with `options` (e.g. a CA file for `wss://`).
    pub fn with_connect_options(mut self, options: ConnectOptions) -> Session {
        self.driver = self.driver.with_connect_options(options);
        self
    }

    /// The server.
    pub fn server(&self) -> &ServerUrl {
        self.driver.server()
    }

    /// The client state machine (local text, revision, pending edits).
    pub fn client(&self) -> &Client {
        self.driver.core().client()
    }

    /// Whether a regional server said that work is saved there but not yet
    /// at the document's home.
    pub fn awaiting_replication(&self) -> bool {
        self.driver.core().awaiting_replication()
    }

    /// The server's head revision in the last snapshot or resume: the local
    /// text is current (as of the connection) once the revision reaches it.
    pub fn head(&self) -> u64 {
        self.driver.core().head()
    }

    /// The client id (this writer).
    pub fn client_id(&self) -> &str {
        self.driver.core().client_id()
    }

    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        self.state_path.clone()
    }

    /// Whether the pending edits were given up (saved as a conflict copy, the
    /// server would not take them): the next connection starts from a snapshot.
    pub fn resyncing(&self) -> bool {
        self.driver.core().resyncing()
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.driver.is_connected()
    }

    /// How long to wait before the next connection attempt (backoff with full jitter).
    pub fn retry_delay(&mut self) -> Duration {
        self.driver.retry_delay()
    }

    /// Start a connection attempt that does not borrow the session (see
    /// [`Driver::dial`]); hand the result to [`attach`](Self::attach).
    pub fn dial(
        &self,
    ) -> impl std::future::Future<Output = Result<Dialed, DriverError>> + Send + 'static {
        self.driver.dial()
    }

    /// Take over a connection opened by [`dial`](Self::dial).
    pub async fn attach(&mut self, dialed: Dialed) -> Result<Vec<SessionEvent>> {
        let events = self.driver.attach(dialed).await?;
        let events = self.translate(events)?;
        if self.driver.is_connected() {
            self.conn = ConnState::Connected;
        }
        Ok(events)
    }

    /// One connection attempt: connect, then handle the first message
    /// (a snapshot or a resume, resending what is pending).
    pub async fn connect(&mut self) -> Result<Vec<SessionEvent>> {
        let dialed = self.dial().await?;
        self.attach(dialed).await
    }

    /// Close the connection (the session keeps working offline).
    pub async fn disconnect(&mut self) {
        self.driver.disconnect().await;
        self.conn = ConnState::Offline;
    }

    /// Wait for the next server message and handle it. Pending forever while
    /// disconnected (so it can sit in a `select!` next to other events).
    pub async fn next_events(&mut self) -> Result<Vec<SessionEvent>> {
        let events = self.driver.next_events().await?;
        self.translate(events)
    }

    /// Apply a local edit at once; send it if nothing is outstanding. Saved before returning.
    pub async fn local_edit(&mut self, op: &Operation) -> Result<Vec<SessionEvent>> {
        let events = self.driver.local_edit(op, None).await?;
        self.translate(events)
    }

    /// Apply a local edit like [`local_edit`](Self::local_edit), with this
    /// user's selection after the edit (local text positions): it rides on the
    /// op if the op is sent now.
    pub async fn local_edit_with_cursor(
        &mut self,
        op: &Operation,
        ranges: Vec<Range>,
    ) -> Result<Vec<SessionEvent>> {
        let events = self.driver.local_edit(op, Some(ranges)).await?;
        self.translate(events)
    }

    /// Set this user's selection (local text positions) and tell the others
    /// when nothing is outstanding (otherwise it rides on the next op).
    pub async fn set_cursor(&mut self, ranges: Vec<Range>) -> Result<Vec<SessionEvent>> {
        let events = self.driver.set_cursor(ranges, false).await?;
        self.translate(events)
    }

    /// Like [`set_cursor`](Self::set_cursor), but sent even if unchanged (with
    /// the name): after connecting (the server forgets a connection's cursor),
    /// and after an ack when the cursor moved since the acknowledged op left.
    pub async fn announce_cursor(&mut self, ranges: Vec<Range>) -> Result<Vec<SessionEvent>> {
        let events = self.driver.set_cursor(ranges, true).await?;
        self.translate(events)
    }

    /// Remote cursors mapped into the local text (through pending edits).
    pub fn remote_cursors_local(&self) -> Vec<(String, Option<String>, Vec<Range>)> {
        self.driver.core().remote_cursors_local()
    }

    /// Keep handling messages until every local edit is acknowledged, or `within` passes.
    pub async fn wait_saved(&mut self, within: Duration) -> Result<Vec<SessionEvent>> {
        let events = self
            .driver
            .wait_saved(within)
            .await
            .map_err(|e| anyhow::anyhow!("{e} (they are saved and will be sent next time)"))?;
        self.translate(events)
    }

    /// The driver's events as this client shows them: conflict copies become files.
    fn translate(&mut self, events: Vec<Event>) -> Result<Vec<SessionEvent>> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            out.push(match event {
                Event::Remote(op) => SessionEvent::Remote(op),
                Event::Resynced => SessionEvent::Resynced,
                Event::Acked => SessionEvent::Acked,
                Event::Presence => SessionEvent::Presence,
                Event::ServerError { code, message } => SessionEvent::ServerError {
                    code: code.to_string(),
                    message,
                },
                Event::ConflictCopy(text) => {
                    let path = self.store.write_conflict_copy(&self.doc, &text)?;
                    self.conflict_copies.push(path.clone());
                    SessionEvent::ConflictCopy(path)
                }
                Event::Disconnected { reason, action } => match action {
                    // Resync (4004, the document was deleted): the driver's
                    // session has already given up the pending op (its
                    // conflict copy comes with the next snapshot) and the
                    // next connection asks for a snapshot, so reconnecting is
                    // right.
                    CloseAction::Reconnect | CloseAction::Resync => {
                        self.conn = ConnState::Reconnecting;
                        SessionEvent::Disconnected(reason)
                    }
                    CloseAction::Reauthenticate => {
                        self.conn = ConnState::Reconnecting;
                        SessionEvent::AccessExpired(reason)
                    }
                    CloseAction::Stop => {
                        self.conn = ConnState::Offline;
                        SessionEvent::Stopped(reason)
                    }
                },
            });
        }
        Ok(out)
    }
}
