//! A client session on one document: ot-core's client state machine, the
//! WebSocket connection (reconnect with backoff and jitter, resume, resend),
//! persistence of the state before every send and after every change, remote
//! cursors, and conflict copies for edits that cannot be rebased.
//!
//! The editor and the scripting commands both drive a [`Session`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use ot_core::client::{AckOutcome, Client, ClientError, OutgoingOp, RemoteOutcome};
use ot_core::{Operation, Range};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::store::{SavedState, Slot, Store};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection opened by [`Session::dial`], with the server's first message,
/// ready for [`Session::attach`].
pub struct Dialed {
    socket: Socket,
    first: Value,
}

/// The next JSON message of a socket (pings and other frames skipped).
async fn recv_from(socket: &mut Socket) -> Result<Value> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).context("the server sent invalid JSON")
            }
            Some(Ok(Message::Close(frame))) => {
                let why = frame
                    .map(|f| format!("closed by the server ({} {})", u16::from(f.code), f.reason))
                    .unwrap_or_else(|| "closed by the server".to_owned());
                return Err(anyhow!(why));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(anyhow!("connection lost: {e}")),
            None => return Err(anyhow!("connection lost")),
        }
    }
}

/// The hash of a text, to recognise it later (hex).
fn text_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// A server address, as both WebSocket and HTTP base URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `host:port`.
    pub authority: String,
}

impl ServerUrl {
    /// Parse `ws://host:port`, `http://host:port` or `host:port`.
    pub fn parse(text: &str) -> Result<ServerUrl> {
        let rest = text
            .strip_prefix("ws://")
            .or_else(|| text.strip_prefix("http://"))
            .unwrap_or(text);
        if text.starts_with("wss://") || text.starts_with("https://") {
            bail!("TLS is not supported yet: use ws:// or http://");
        }
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("the server must be given as ws://HOST:PORT (got {text:?})");
        }
        Ok(ServerUrl {
            authority: authority.to_owned(),
        })
    }

    /// `ws://host:port`
    pub fn ws(&self) -> String {
        format!("ws://{}", self.authority)
    }

    /// `http://host:port`
    pub fn http(&self) -> String {
        format!("http://{}", self.authority)
    }
}

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

/// Another user's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCursor {
    /// Display name, if given.
    pub name: Option<String>,
    /// Ranges in the synced text (at the client's revision).
    pub ranges: Vec<Range>,
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
    /// The connection was lost.
    Disconnected(String),
}

/// A running client of one document.
pub struct Session {
    /// The server.
    pub server: ServerUrl,
    /// The document id.
    pub doc: String,
    /// Display name sent with cursors.
    pub name: Option<String>,
    /// The client state machine (local text, revision, pending edits).
    pub client: Client,
    /// The server epoch last seen.
    pub epoch: Option<u64>,
    /// Whether the client has ever been synced with the server.
    pub synced: bool,
    /// The server's head revision in the last snapshot or resume. A resume is
    /// followed by the ops up to it: the local text is current (as of the
    /// connection) once the client's revision reaches it.
    pub head: u64,
    /// Connection state.
    pub conn: ConnState,
    /// Other users' cursors by client id.
    pub remote_cursors: BTreeMap<String, RemoteCursor>,
    /// Conflict copies written in this session.
    pub conflict_copies: Vec<PathBuf>,
    store: Store,
    slot: Slot,
    socket: Option<Socket>,
    /// The next connect asks for a snapshot and starts clean (pending edits were
    /// saved as a conflict copy).
    fresh_start: bool,
    /// With `fresh_start`: the hash of the local text saved as the conflict
    /// copy (saved with the state, so a later run does not resend the edits).
    given_up: Option<String>,
    own_ranges: Vec<Range>,
    attempts: u32,
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
        let (slot, saved) = store
            .acquire(&server.ws(), doc, client_id)
            .with_context(|| format!("opening the saved state of {doc}"))?;
        let (client, epoch, synced, given_up) = match saved {
            Some(saved) => {
                let client = Client::from_state(saved.client)
                    .with_context(|| format!("loading {}", slot.path().display()))?;
                (client, saved.epoch, saved.synced, saved.resync)
            }
            None => (
                Client::new(slot.client_id.clone(), 0, "", 0),
                None,
                false,
                None,
            ),
        };
        Ok(Session {
            server,
            doc: doc.to_owned(),
            name,
            client,
            epoch,
            synced,
            head: 0,
            conn: ConnState::Offline,
            remote_cursors: BTreeMap::new(),
            conflict_copies: Vec::new(),
            store,
            slot,
            socket: None,
            fresh_start: given_up.is_some(),
            given_up,
            own_ranges: Vec::new(),
            attempts: 0,
        })
    }

    /// The client id (this writer).
    pub fn client_id(&self) -> &str {
        self.client.client_id()
    }

    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        self.slot.path().to_path_buf()
    }

    /// Whether the pending edits were given up (saved as a conflict copy, the
    /// server would not take them): the next connection starts from a snapshot.
    pub fn resyncing(&self) -> bool {
        self.fresh_start
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.socket.is_some()
    }

    /// Save the state now (atomically).
    pub fn persist(&self) -> Result<()> {
        self.slot
            .save(&SavedState {
                version: 1,
                server: self.server.ws(),
                doc: self.doc.clone(),
                epoch: self.epoch,
                synced: self.synced,
                resync: self.given_up.clone().filter(|_| self.fresh_start),
                client: self.client.state(),
            })
            .context("saving the client state")
    }

    /// How long to wait before the next connection attempt: exponential
    /// backoff from 200 ms to 10 s, with ±50 % jitter so that many clients do
    /// not reconnect in lockstep after a server restart.
    pub fn retry_delay(&mut self) -> Duration {
        let base = 200u64
            .saturating_mul(1u64 << self.attempts.min(6))
            .min(10_000);
        self.attempts = self.attempts.saturating_add(1);
        let jitter = 0.5 + rand::random::<f64>();
        Duration::from_millis((base as f64 * jitter) as u64)
    }

    /// The URL of the next connection attempt (with `rev`/`epoch` to resume).
    fn connect_url(&self) -> String {
        let mut url = format!(
            "{}/ws/{}?client={}",
            self.server.ws(),
            self.doc,
            self.client.client_id()
        );
        if self.synced && !self.fresh_start {
            url.push_str(&format!("&rev={}", self.client.revision()));
            if let Some(epoch) = self.epoch {
                url.push_str(&format!("&epoch={epoch}"));
            }
        }
        url
    }

    /// Start a connection attempt that does not borrow the session: open the
    /// WebSocket and read the server's first message. The editor keeps editing
    /// (offline) while this runs, then hands the result to [`attach`](Self::attach).
    /// Edits made meanwhile are fine: they do not change the revision the URL
    /// resumes from, and the resume resends whatever is pending.
    pub fn dial(&self) -> impl std::future::Future<Output = Result<Dialed>> + Send + 'static {
        let url = self.connect_url();
        let server = self.server.ws();
        async move {
            let connecting = tokio_tungstenite::connect_async(url.as_str());
            let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), connecting)
                .await
                .map_err(|_| anyhow!("connecting to {server} timed out"))?
                .with_context(|| format!("connecting to {server}"))?;
            match tokio::time::timeout(Duration::from_secs(10), recv_from(&mut socket)).await {
                Ok(Ok(first)) => Ok(Dialed { socket, first }),
                Ok(Err(e)) => Err(e),
                Err(_) => bail!("the server did not greet the connection"),
            }
        }
    }

    /// Take over a connection opened by [`dial`](Self::dial): handle its first
    /// message (a snapshot or a resume, resending what is pending).
    pub async fn attach(&mut self, dialed: Dialed) -> Result<Vec<SessionEvent>> {
        self.socket = Some(dialed.socket);
        // The server sends every other client's cursor after the first message
        // (and catch-up): forget the old ones, some may have left meanwhile.
        self.remote_cursors.clear();
        let events = self.handle(dialed.first).await?;
        if self.socket.is_some() {
            self.conn = ConnState::Connected;
            self.attempts = 0;
        }
        Ok(events)
    }

    /// One connection attempt: connect, then handle the first message
    /// (a snapshot or a resume, resending what is pending).
    pub async fn connect(&mut self) -> Result<Vec<SessionEvent>> {
        self.socket = None;
        let dialed = self.dial().await?;
        self.attach(dialed).await
    }

    /// Close the connection (the session keeps working offline).
    pub async fn disconnect(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            let _ = socket.close(None).await;
        }
        self.conn = ConnState::Offline;
    }

    async fn recv_raw(&mut self) -> Option<Result<Value>> {
        let socket = self.socket.as_mut()?;
        Some(recv_from(socket).await)
    }

    /// Wait for the next server message and handle it. Pending forever while
    /// disconnected (so it can sit in a `select!` next to other events).
    pub async fn next_events(&mut self) -> Result<Vec<SessionEvent>> {
        if self.socket.is_none() {
            std::future::pending::<()>().await;
        }
        match self.recv_raw().await {
            Some(Ok(message)) => self.handle(message).await,
            Some(Err(e)) => {
                self.socket = None;
                self.conn = ConnState::Reconnecting;
                Ok(vec![SessionEvent::Disconnected(e.to_string())])
            }
            None => Ok(vec![]),
        }
    }

    async fn send_json(&mut self, message: Value) {
        let failed = match self.socket.as_mut() {
            Some(socket) => socket
                .send(Message::text(message.to_string()))
                .await
                .is_err(),
            None => false,
        };
        if failed {
            self.socket = None;
            self.conn = ConnState::Reconnecting;
        }
    }

    /// Persist, then send (the state on disk always knows every op that left).
    async fn send_op(&mut self, out: OutgoingOp) -> Result<()> {
        self.persist()?;
        let mut message = json!({"type":"op","rev":out.base_rev,"seq":out.seq,"op":out.op});
        if !self.own_ranges.is_empty() {
            message["ranges"] = json!(self.own_ranges);
        }
        self.send_json(message).await;
        Ok(())
    }

    /// Apply a local edit at once; send it if nothing is outstanding. Saved before returning.
    pub async fn local_edit(&mut self, op: &Operation) -> Result<()> {
        let outgoing = self.client.local_edit(op)?;
        match outgoing {
            Some(out) => self.send_op(out).await,
            None => self.persist(),
        }
    }

    /// Apply a local edit like [`local_edit`](Self::local_edit), with this
    /// user's selection after the edit (local text positions): it rides on the
    /// op if the op is sent now.
    pub async fn local_edit_with_cursor(
        &mut self,
        op: &Operation,
        ranges: Vec<Range>,
    ) -> Result<()> {
        self.own_ranges = ranges;
        self.local_edit(op).await
    }

    /// Set this user's selection (local text positions) and tell the others
    /// when nothing is outstanding (otherwise it rides on the next op).
    pub async fn set_cursor(&mut self, ranges: Vec<Range>) {
        if ranges == self.own_ranges {
            return;
        }
        self.announce_cursor(ranges).await;
    }

    /// Like [`set_cursor`](Self::set_cursor), but sent even if unchanged (with
    /// the name): after connecting (the server forgets a connection's cursor),
    /// and after an ack when the cursor moved since the acknowledged op left.
    pub async fn announce_cursor(&mut self, ranges: Vec<Range>) {
        self.own_ranges = ranges;
        if self.client.all_saved() && self.socket.is_some() {
            let mut message = json!({
                "type":"cursor",
                "rev": self.client.revision(),
                "ranges": self.own_ranges,
            });
            if let Some(name) = &self.name {
                message["name"] = json!(name);
            }
            self.send_json(message).await;
        }
    }

    fn conflict_copy(&mut self, text: &str) -> Result<SessionEvent> {
        let path = self.store.write_conflict_copy(&self.doc, text)?;
        self.conflict_copies.push(path.clone());
        Ok(SessionEvent::ConflictCopy(path))
    }

    /// Save the pending edits as a conflict copy and start clean from the
    /// next snapshot (the server rejected them, or the state is stale).
    async fn give_up_pending(&mut self, events: &mut Vec<SessionEvent>) -> Result<()> {
        let text = self.client.text().to_string();
        if !self.client.all_saved() {
            events.push(self.conflict_copy(&text)?);
        }
        self.given_up = Some(text_hash(&text));
        self.fresh_start = true;
        self.socket = None;
        self.conn = ConnState::Reconnecting;
        events.push(SessionEvent::Disconnected("resyncing".to_owned()));
        Ok(())
    }

    /// Handle one server message.
    pub async fn handle(&mut self, message: Value) -> Result<Vec<SessionEvent>> {
        let mut events = Vec::new();
        let kind = message["type"].as_str().unwrap_or_default();
        let number = |key: &str| {
            message[key]
                .as_u64()
                .ok_or_else(|| anyhow!("the server's {kind} message has no `{key}`"))
        };
        match kind {
            "snapshot" => {
                let rev = number("rev")?;
                self.head = rev;
                let seq = number("seq")?;
                let text = message["text"].as_str().unwrap_or_default().to_owned();
                self.epoch = message["epoch"].as_u64();
                self.remote_cursors.clear();
                if self.fresh_start || !self.synced && self.client.all_saved() {
                    // Edits made after pending ones were given up are not
                    // dropped silently either.
                    let local = self.client.text().to_string();
                    if self.fresh_start
                        && !self.client.all_saved()
                        && local != text
                        && self.given_up.as_deref() != Some(text_hash(&local).as_str())
                    {
                        events.push(self.conflict_copy(&local)?);
                    }
                    self.client = Client::new(self.client.client_id().to_owned(), rev, &text, seq);
                    self.fresh_start = false;
                    self.given_up = None;
                } else {
                    let outcome = self.client.snapshot(rev, &text, seq);
                    if let Some(copy) = outcome.conflict_copy {
                        events.push(self.conflict_copy(&copy)?);
                    }
                    if let Some(out) = outcome.send {
                        self.synced = true;
                        self.send_op(out).await?;
                    }
                }
                self.synced = true;
                events.push(SessionEvent::Resynced);
            }
            "resume" => {
                self.head = message["head"].as_u64().unwrap_or_default();
                self.epoch = message["epoch"].as_u64();
                match self.client.resumed(number("rev")?, number("seq")?) {
                    Ok(Some(out)) => self.send_op(out).await?,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot resume; resyncing");
                        self.give_up_pending(&mut events).await?;
                    }
                }
            }
            "op" => {
                let op = Operation::from_json_value(&message["op"])
                    .map_err(|e| anyhow!("the server sent an invalid op: {e}"))?;
                let client = message["client"].as_str().unwrap_or_default().to_owned();
                match self
                    .client
                    .remote_op(number("rev")?, &op, &client, number("seq")?)
                {
                    Ok(RemoteOutcome::Applied(local)) => {
                        for cursor in self.remote_cursors.values_mut() {
                            cursor.ranges = ot_core::transform_ranges(&cursor.ranges, &op);
                        }
                        events.push(SessionEvent::Remote(local));
                    }
                    Ok(RemoteOutcome::Acknowledged { next }) => {
                        for cursor in self.remote_cursors.values_mut() {
                            cursor.ranges = ot_core::transform_ranges(&cursor.ranges, &op);
                        }
                        events.push(SessionEvent::Acked);
                        if let Some(out) = next {
                            self.send_op(out).await?;
                        }
                    }
                    Ok(RemoteOutcome::Ignored) => {}
                    Err(ClientError::RevisionGap { .. }) => {
                        // Reconnect with rev: the resume fills the gap.
                        self.socket = None;
                        self.conn = ConnState::Reconnecting;
                        events.push(SessionEvent::Disconnected("revision gap".to_owned()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "server op does not fit; resyncing");
                        self.give_up_pending(&mut events).await?;
                    }
                }
            }
            "ack" => {
                if let AckOutcome::Acknowledged { next } =
                    self.client.ack(number("rev")?, number("seq")?)?
                {
                    events.push(SessionEvent::Acked);
                    if let Some(out) = next {
                        self.send_op(out).await?;
                    }
                }
            }
            "cursor" => {
                let client = message["client"].as_str().unwrap_or_default().to_owned();
                let ranges: Vec<Range> =
                    serde_json::from_value(message["ranges"].clone()).unwrap_or_default();
                // Cursors come at the server's durable revision, which is ours when
                // they arrive (the server sends them after the ops before them).
                self.remote_cursors.insert(
                    client,
                    RemoteCursor {
                        name: message["name"].as_str().map(str::to_owned),
                        ranges,
                    },
                );
                events.push(SessionEvent::Presence);
            }
            "leave" => {
                if let Some(client) = message["client"].as_str() {
                    self.remote_cursors.remove(client);
                }
                events.push(SessionEvent::Presence);
            }
            "error" => {
                let code = message["code"].as_str().unwrap_or("unknown").to_owned();
                let text = message["message"].as_str().unwrap_or_default().to_owned();
                let ours = message["seq"]
                    .as_u64()
                    .is_some_and(|seq| self.client.outstanding().is_some_and(|o| o.seq == seq));
                if ours && code == "storage_error" {
                    // Not applied, nothing wrong with the op: reconnect and resend.
                    self.socket = None;
                    self.conn = ConnState::Reconnecting;
                    events.push(SessionEvent::Disconnected(text.clone()));
                } else if ours {
                    // The server will never take this op: keep the text for the user.
                    self.give_up_pending(&mut events).await?;
                }
                events.push(SessionEvent::ServerError {
                    code,
                    message: text,
                });
            }
            _ => {}
        }
        // Presence changes nothing that is saved: skip the write and fsync.
        if !matches!(kind, "cursor" | "leave") {
            self.persist()?;
        }
        Ok(events)
    }

    /// Remote cursors mapped into the local text (through pending edits).
    pub fn remote_cursors_local(&self) -> Vec<(String, Option<String>, Vec<Range>)> {
        self.remote_cursors
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    c.name.clone(),
                    self.client.transform_remote_ranges(&c.ranges),
                )
            })
            .collect()
    }

    /// Keep handling messages until every local edit is acknowledged, or `within` passes.
    pub async fn wait_saved(&mut self, within: Duration) -> Result<Vec<SessionEvent>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        while !self.client.all_saved() {
            if self.socket.is_none() {
                bail!("the connection was lost before the server acknowledged every edit (they are saved and will be sent next time)");
            }
            match tokio::time::timeout_at(deadline, self.next_events()).await {
                Ok(events) => all.extend(events?),
                Err(_) => bail!("the server did not acknowledge the edits within {within:?} (they are saved and will be sent next time)"),
            }
        }
        Ok(all)
    }
}
