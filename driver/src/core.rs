//! The sans-I/O session core: one writer's session on one document, as a
//! state machine that reads server frames and says what to send and show.
//!
//! It wraps ot-core's [`Client`] with what the wire adds: the connect path
//! (`rev`/`epoch` to resume), the first message (snapshot or resume, resending
//! what is pending), presence, and the rules of PROTOCOL.md for errors and
//! closes. It does no I/O: the tokio shell ([`crate::Driver`]), the
//! deterministic tests, or any other caller moves the frames.
//!
//! **Durability before sending.** Every change to what must be saved bumps
//! [`SessionCore::version`]. An op frame is released by
//! [`SessionCore::poll_transmit`] only after the caller has confirmed, with
//! [`SessionCore::confirm_durable`], that a state at least that new is durable
//! (so a crash can never lose an op the server may have applied). The
//! confirmation may come later, and for several ops at once.

use std::collections::{BTreeMap, VecDeque};

use ot_core::client::{AckOutcome, Client, ClientError, ClientState, OutgoingOp, RemoteOutcome};
use ot_core::{OpLimits, Operation, Range};
use ot_protocol::{
    close_action, op_message_text, ClientKey, ClientMessage, CloseAction, Code, DocId, ErrorAction,
    Limits, ServerMessage,
};
use serde::{Deserialize, Serialize};

/// `given_up` after a 4004: the pending edits are given up, but their
/// conflict copy is still to come (no text hashes to this).
const DELETED_MARKER: &str = "document-deleted";

/// The op part of a server's announced limits: what the client keeps every
/// op it sends within (it splits and queues its edits by them).
pub fn op_limits(limits: &Limits) -> OpLimits {
    OpLimits {
        max_op_len: limits.max_op_len,
        max_op_components: limits.max_op_components,
    }
}

/// What a session saves between runs (the caller decides where).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The server epoch last seen.
    pub epoch: Option<u64>,
    /// Whether the client has ever been synced with the server.
    pub synced: bool,
    /// When set, pending edits were given up (kept as a conflict copy): the
    /// hash of the local text then. The next connection starts from a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<String>,
    /// The client state machine.
    pub client: ClientState,
    /// The writer's key, which proves a connection speaks for this client id
    /// (PROTOCOL.md, "Connecting"). Absent in states saved before keys: such
    /// a state gets a new key when restored, which is sent only once a state
    /// holding it has been saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<ClientKey>,
}

/// Another user's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCursor {
    /// Display name, if given.
    pub name: Option<String>,
    /// Ranges in the synced text (at the client's revision).
    pub ranges: Vec<Range>,
}

/// Something the caller may want to show or act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
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
        /// Its code (possibly one this version does not know).
        code: Code,
        /// Its text.
        message: String,
    },
    /// Pending edits that could not be rebased: keep this text for the user.
    ConflictCopy(String),
    /// The connection is over (closed by the server, lost, or dropped by the
    /// session itself to resync or resend). The caller closes its socket.
    Disconnected {
        /// Why, for people.
        reason: String,
        /// Whether to reconnect (after backoff) or stop for good.
        action: CloseAction,
    },
}

/// Why the session cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A local edit does not fit the local text.
    #[error("the local edit does not fit the text: {0}")]
    LocalEdit(#[from] ClientError),
}

/// A frame waiting to be sent, and the state version that must be durable first.
#[derive(Debug)]
struct Queued {
    needs_version: u64,
    text: String,
}

/// One writer's session on one document (see the module docs).
#[derive(Debug)]
pub struct SessionCore {
    doc: DocId,
    client: Client,
    epoch: Option<u64>,
    synced: bool,
    /// Pending edits were given up: the next connection asks for a snapshot.
    fresh_start: bool,
    /// With `fresh_start`: the hash of the local text kept as a conflict copy.
    given_up: Option<String>,
    head: u64,
    limits: Option<Limits>,
    name: Option<String>,
    own_ranges: Vec<Range>,
    cursors: BTreeMap<String, RemoteCursor>,
    connected: bool,
    outbox: VecDeque<Queued>,
    version: u64,
    durable_version: u64,
    /// From a regional server: every local op up to this revision is at
    /// the document's home (`None`: not told on this connection).
    replicated: Option<u64>,
    /// This writer's key.
    client_key: ClientKey,
    /// The state version that first held `client_key`: the key is presented
    /// only once that is durable, so a crash can never leave the server bound
    /// to a key this writer no longer has.
    key_version: u64,
}

/// The hash of a text, to recognise it later (hex).
fn text_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

impl SessionCore {
    /// A new writer that has never synced, with a new key (see
    /// [`client_key`](Self::client_key): it must be saved before it is sent).
    pub fn new(doc: DocId, client_id: &str) -> SessionCore {
        let mut core =
            SessionCore::from_parts(doc, Client::new(client_id, 0, "", 0), None, false, None);
        core.new_key();
        core
    }

    /// A writer from its saved state (which counts as durable).
    pub fn restore(doc: DocId, saved: SessionState) -> Result<SessionCore, ClientError> {
        let client = Client::from_state(saved.client)?;
        let mut core =
            SessionCore::from_parts(doc, client, saved.epoch, saved.synced, saved.resync);
        match saved.client_key {
            Some(key) => core.client_key = key,
            // Saved before keys: a new key, kept from the next save on.
            None => core.new_key(),
        }
        Ok(core)
    }

    /// Use `key` as this writer's key, one the caller already keeps durably
    /// (another instance of the same writer, a test): presented at once.
    pub fn with_client_key(mut self, key: ClientKey) -> SessionCore {
        self.client_key = key;
        self.key_version = 0;
        self
    }

    /// Take a new random key; it counts only once a state holding it is durable.
    fn new_key(&mut self) {
        self.client_key = ClientKey::random();
        self.changed();
        self.key_version = self.version;
    }

    fn from_parts(
        doc: DocId,
        client: Client,
        epoch: Option<u64>,
        synced: bool,
        resync: Option<String>,
    ) -> SessionCore {
        SessionCore {
            doc,
            client,
            epoch,
            synced,
            fresh_start: resync.is_some(),
            given_up: resync,
            head: 0,
            limits: None,
            name: None,
            own_ranges: Vec::new(),
            cursors: BTreeMap::new(),
            connected: false,
            outbox: VecDeque::new(),
            version: 0,
            durable_version: 0,
            replicated: None,
            client_key: ClientKey::random(),
            key_version: 0,
        }
    }

    /// What to save: the state as of [`version`](Self::version).
    pub fn state(&self) -> SessionState {
        SessionState {
            epoch: self.epoch,
            synced: self.synced,
            resync: self.given_up.clone().filter(|_| self.fresh_start),
            client: self.client.state(),
            client_key: Some(self.client_key.clone()),
        }
    }

    /// The key to present when connecting (header `x-ot-client-key`, or the
    /// `ot.key.` subprotocol): `None` until a state holding it is durable.
    /// Connecting without it then is safe: an id without a key stays usable
    /// keyless, and the key is bound on the first connection that presents it.
    pub fn client_key(&self) -> Option<&ClientKey> {
        (self.durable_version >= self.key_version).then_some(&self.client_key)
    }

    /// The document.
    pub fn doc(&self) -> &DocId {
        &self.doc
    }

    /// The client state machine (local text, revision, pending edits).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client id (this writer).
    pub fn client_id(&self) -> &str {
        self.client.client_id()
    }

    /// The server epoch last seen.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Whether the client has ever been synced by a snapshot or resume.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The server's head revision in the last snapshot or resume. A resume is
    /// followed by the ops up to it: the local text is current (as of the
    /// connection) once the client's revision reaches it.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The limits the server announced last (this connection or an earlier one).
    pub fn limits(&self) -> Option<Limits> {
        self.limits
    }

    /// Whether pending edits were given up: the next connection starts from a snapshot.
    pub fn resyncing(&self) -> bool {
        self.fresh_start
    }

    /// Whether a connection is open (between [`on_open`](Self::on_open) and its end).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Other users' cursors by client id, in the synced text.
    pub fn remote_cursors(&self) -> &BTreeMap<String, RemoteCursor> {
        &self.cursors
    }

    /// Other users' cursors mapped into the local text (through pending edits).
    pub fn remote_cursors_local(&self) -> Vec<(String, Option<String>, Vec<Range>)> {
        self.cursors
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

    /// The display name sent with cursors.
    pub fn set_name(&mut self, name: Option<String>) {
        self.name = name;
    }

    /// The version of the state that must be saved; bumped by every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the state changed since the last confirmed save.
    pub fn needs_save(&self) -> bool {
        self.version > self.durable_version
    }

    /// The caller has made the state as of `version` durable: ops queued up
    /// to it may now be sent.
    pub fn confirm_durable(&mut self, version: u64) {
        self.durable_version = self.durable_version.max(version.min(self.version));
    }

    /// The next frame to send, if any may be sent now.
    pub fn poll_transmit(&mut self) -> Option<String> {
        let ready = self
            .outbox
            .front()
            .is_some_and(|q| q.needs_version <= self.durable_version);
        ready.then(|| self.outbox.pop_front().map(|q| q.text))?
    }

    /// The path and query to connect to: `/ws/{doc}?client=…&batch=1`
    /// (several messages per frame welcome), with `rev` (and `epoch`) to
    /// resume once synced.
    pub fn connect_path(&self) -> String {
        let mut path = format!(
            "/ws/{}?client={}&batch=1",
            self.doc,
            self.client.client_id()
        );
        if self.synced && !self.fresh_start {
            path.push_str(&format!("&rev={}", self.client.revision()));
            if let Some(epoch) = self.epoch {
                path.push_str(&format!("&epoch={epoch}"));
            }
        }
        path
    }

    /// A connection is open: the next frame is the server's first message.
    pub fn on_open(&mut self) {
        self.connected = true;
        self.outbox.clear();
        // The server sends every other client's cursor after the first message
        // (and catch-up): forget the old ones, some may have left meanwhile.
        self.cursors.clear();
        // A regional server says it again on every connection.
        self.replicated = None;
    }

    /// Whether a regional server said that local work up to the client's
    /// revision is not at the document's home yet ("saved in the region,
    /// not yet replicated"); false for a server that is not a region.
    pub fn awaiting_replication(&self) -> bool {
        self.replicated
            .is_some_and(|rev| rev < self.client.revision())
    }

    /// The connection ended: closed by the server with `code` (`None`: lost
    /// without a close frame). Nothing queued survives it: the next
    /// connection resends what is pending.
    ///
    /// [`CloseAction::Resync`] (4004, the document was deleted): the next
    /// connection asks for a snapshot (no `rev`/`epoch`), and unsent edits
    /// are never sent to the new document: the snapshot replaces them, and
    /// the local text with them is given as a [`Event::ConflictCopy`] then
    /// (from the same path as a conflict copy after a refused op).
    pub fn on_closed(&mut self, code: Option<u16>, reason: &str) -> Event {
        self.connected = false;
        self.outbox.clear();
        let action = close_action(code);
        if action == CloseAction::Resync {
            // A marker that is no text's hash: the copy is not given yet,
            // so the next snapshot gives it (whatever the local text is by then).
            self.given_up = Some(DELETED_MARKER.to_owned());
            self.fresh_start = true;
            self.changed();
        }
        Event::Disconnected {
            reason: reason.to_owned(),
            action,
        }
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    fn drop_connection(&mut self, reason: &str, events: &mut Vec<Event>) {
        if self.connected {
            self.connected = false;
            self.outbox.clear();
            events.push(Event::Disconnected {
                reason: reason.to_owned(),
                action: CloseAction::Reconnect,
            });
        }
    }

    fn queue_op(&mut self, out: &OutgoingOp) {
        self.changed();
        if !self.connected {
            return; // offline: resent on the next connection
        }
        let ranges = (!self.own_ranges.is_empty()).then_some(self.own_ranges.as_slice());
        let text = op_message_text(out.base_rev, out.seq, &out.op, ranges, None);
        self.outbox.push_back(Queued {
            needs_version: self.version,
            text,
        });
    }

    fn queue_cursor(&mut self) {
        if !(self.client.all_saved() && self.connected) {
            return;
        }
        let text = ClientMessage::Cursor {
            rev: self.client.revision(),
            ranges: self.own_ranges.clone(),
            name: self.name.clone(),
        }
        .to_text();
        self.outbox.push_back(Queued {
            needs_version: 0,
            text,
        });
    }

    /// Apply a local edit at once (with this user's selection after it, in
    /// local text positions, if given: it rides on the op if the op is sent
    /// now); queue it if nothing is outstanding.
    pub fn local_edit(
        &mut self,
        op: &Operation,
        ranges: Option<Vec<Range>>,
    ) -> Result<(), SessionError> {
        if let Some(ranges) = ranges {
            self.own_ranges = ranges;
        }
        let outgoing = self.client.local_edit(op)?;
        self.changed();
        if let Some(out) = outgoing {
            self.queue_op(&out);
        }
        Ok(())
    }

    /// Set this user's selection (local text positions) and tell the others
    /// when nothing is outstanding (otherwise it rides on the next op).
    /// Unchanged ranges are not sent again unless `always`.
    pub fn set_cursor(&mut self, ranges: Vec<Range>, always: bool) {
        if !always && ranges == self.own_ranges {
            return;
        }
        self.own_ranges = ranges;
        self.queue_cursor();
    }

    /// Save the pending edits as a conflict copy and start clean from the
    /// next snapshot (the server rejected them, or the state is stale).
    fn give_up_pending(&mut self, events: &mut Vec<Event>) {
        let text = self.client.text().to_string();
        if !self.client.all_saved() {
            events.push(Event::ConflictCopy(text.clone()));
        }
        self.given_up = Some(text_hash(&text));
        self.fresh_start = true;
        self.changed();
        self.drop_connection("resyncing", events);
    }

    /// Read one text frame from the server and act on it.
    pub fn receive(&mut self, text: &str) -> Vec<Event> {
        match ServerMessage::parse(text) {
            Ok(message) => self.handle(message),
            Err(e) => {
                // A frame this version cannot read at all: the connection is
                // not trustworthy; reconnect (the resume fills any gap).
                tracing::warn!(error = %e, "unreadable server frame; reconnecting");
                let mut events = Vec::new();
                self.drop_connection(&e.to_string(), &mut events);
                events
            }
        }
    }

    /// Act on one server message; a batch's messages in order, exactly as
    /// if each had come alone, until one of them drops the connection (the
    /// rest belong to it).
    pub fn handle(&mut self, message: ServerMessage<'_>) -> Vec<Event> {
        let mut events = Vec::new();
        let connected = self.connected;
        for message in message.into_messages() {
            events.extend(self.handle_one(message));
            if connected && !self.connected {
                break;
            }
        }
        events
    }

    /// Act on one server message (not a batch).
    fn handle_one(&mut self, message: ServerMessage<'_>) -> Vec<Event> {
        let mut events = Vec::new();
        match message {
            ServerMessage::Snapshot {
                rev,
                text,
                seq,
                epoch,
                limits,
                ..
            } => {
                // Limits first: pending edits rebased onto the snapshot are
                // queued within them.
                self.set_limits(limits);
                self.on_snapshot(rev, &text, seq, &mut events);
                self.epoch = Some(epoch);
                self.changed();
            }
            ServerMessage::Resume {
                rev,
                head,
                seq,
                epoch,
                limits,
                ..
            } => {
                self.head = head;
                self.epoch = Some(epoch);
                self.set_limits(limits);
                self.changed();
                match self.client.resumed(rev, seq) {
                    Ok(Some(out)) => self.queue_op(&out),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot resume; resyncing");
                        self.give_up_pending(&mut events);
                    }
                }
            }
            ServerMessage::Op {
                rev,
                op,
                client,
                seq,
            } => self.on_remote_op(rev, &op, &client, seq, &mut events),
            ServerMessage::Ack { rev, seq } => match self.client.ack(rev, seq) {
                Ok(AckOutcome::Acknowledged { next }) => {
                    self.changed();
                    events.push(Event::Acked);
                    if let Some(out) = next {
                        self.queue_op(&out);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "an ack that does not fit; resyncing");
                    self.give_up_pending(&mut events);
                }
            },
            ServerMessage::Cursor {
                client,
                ranges,
                name,
                ..
            } => {
                // Cursors come at the server's durable revision, which is ours when
                // they arrive (the server sends them after the ops before them).
                self.cursors.insert(
                    client.into_owned(),
                    RemoteCursor {
                        name: name.map(|n| n.into_owned()),
                        ranges: ranges.into_owned(),
                    },
                );
                events.push(Event::Presence);
            }
            ServerMessage::Leave { client } => {
                self.cursors.remove(client.as_ref());
                events.push(Event::Presence);
            }
            ServerMessage::Error { code, message, seq } => {
                let ours = seq.is_some_and(|seq| {
                    self.client
                        .outstanding()
                        .is_some_and(|outstanding| outstanding.seq == seq)
                });
                match ErrorAction::for_error(&code, ours) {
                    // Not applied, nothing wrong with the op: reconnect and resend.
                    ErrorAction::Resend => self.drop_connection(&message, &mut events),
                    // The server will never take this op: keep the text for the user.
                    ErrorAction::ConflictCopy => self.give_up_pending(&mut events),
                    ErrorAction::Ignore => {}
                }
                events.push(Event::ServerError {
                    code,
                    message: message.into_owned(),
                });
            }
            // A pong only proves the connection alive (the shell watches that).
            // A batch never reaches here (`handle` opens it).
            ServerMessage::Replicated { rev } => self.replicated = Some(rev),
            ServerMessage::Pong | ServerMessage::Unknown | ServerMessage::Batch { .. } => {}
        }
        events
    }

    fn on_snapshot(&mut self, rev: u64, text: &str, seq: u64, events: &mut Vec<Event>) {
        self.head = rev;
        self.cursors.clear();
        if self.fresh_start || !self.synced && self.client.all_saved() {
            // Edits made after pending ones were given up are not dropped
            // silently either.
            let local = self.client.text().to_string();
            if self.fresh_start
                && !self.client.all_saved()
                && local != text
                && self.given_up.as_deref() != Some(text_hash(&local).as_str())
            {
                events.push(Event::ConflictCopy(local));
            }
            self.client = Client::new(self.client.client_id().to_owned(), rev, text, seq);
            if let Some(limits) = &self.limits {
                self.client.set_limits(op_limits(limits));
            }
            self.fresh_start = false;
            self.given_up = None;
        } else {
            let outcome = self.client.snapshot(rev, text, seq);
            if let Some(copy) = outcome.conflict_copy {
                events.push(Event::ConflictCopy(copy));
            }
            if let Some(out) = outcome.send {
                self.synced = true;
                self.queue_op(&out);
            }
        }
        self.synced = true;
        events.push(Event::Resynced);
    }

    fn on_remote_op(
        &mut self,
        rev: u64,
        op: &Operation,
        client: &str,
        seq: u64,
        events: &mut Vec<Event>,
    ) {
        match self.client.remote_op(rev, op, client, seq) {
            Ok(RemoteOutcome::Applied(local)) => {
                self.changed();
                self.map_cursors(op);
                events.push(Event::Remote(local));
            }
            Ok(RemoteOutcome::Acknowledged { next }) => {
                self.changed();
                self.map_cursors(op);
                events.push(Event::Acked);
                if let Some(out) = next {
                    self.queue_op(&out);
                }
            }
            Ok(RemoteOutcome::Ignored) => {}
            Err(ClientError::RevisionGap { .. }) => {
                // Reconnect with rev: the resume fills the gap.
                self.drop_connection("revision gap", events);
            }
            Err(e) => {
                tracing::warn!(error = %e, "server op does not fit; resyncing");
                self.give_up_pending(events);
            }
        }
    }

    /// The server announced its limits (every first message): queued edits
    /// are split again if they shrank.
    fn set_limits(&mut self, limits: Limits) {
        self.limits = Some(limits);
        self.client.set_limits(op_limits(&limits));
    }

    fn map_cursors(&mut self, op: &Operation) {
        for cursor in self.cursors.values_mut() {
            cursor.ranges = ot_core::transform_ranges(&cursor.ranges, op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_keeps_to_the_server_defaults_until_told_otherwise() {
        assert_eq!(op_limits(&Limits::default()), OpLimits::DEFAULT);
    }
}
