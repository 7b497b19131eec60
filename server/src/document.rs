//! One task per open document: the actor that owns its state and orders its ops.
//!
//! The actor applies ops in memory at once (so later ops can be transformed
//! against them) but makes nothing readable before it is durable: acks,
//! broadcasts, snapshots, resumes and cursor revisions all stop at
//! `durable_rev`. Ops become durable in revision order through the group-commit
//! queue; each commit result comes back on a separate channel, and the actor
//! then acks the senders and rebroadcasts, in revision order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use ot_core::history::{AppliedOp, DocumentHistory, OpHash, Receipt, ReceiveError};
use ot_core::{Operation, Range};
use ropey::Rope;
use tokio::sync::{mpsc, oneshot};

use crate::state::Shared;
use crate::storage::{Committed, StorageError, StoredOp, WriteItem};
use ot_protocol::{ErrorCode, Limits, ServerMessage};

/// Mailbox size of a document actor: senders wait when it is full (backpressure).
const MAILBOX: usize = 1024;
/// Ops applied but not yet durable before the actor stops taking new commands.
const MAX_PENDING: usize = 8192;

/// What the actor puts in a connection's outbound queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A ready JSON text frame, written as soon as the writer gets to it.
    Text(Utf8Bytes),
    /// The answer to one of this client's own ops: its ack, or an error about it.
    Reply(Utf8Bytes),
    /// Another client's op, cursor or leave. While this client awaits a
    /// [`Outbound::Reply`], the writer may hold it (up to
    /// [`crate::ws::BROADCAST_HOLD`]) to write it together with the reply.
    Broadcast(Utf8Bytes),
    /// Read the ops with revisions `after+1 ..= upto` from storage and send them
    /// (a resume from before the in-memory window).
    CatchUp {
        /// Last revision the client has.
        after: u64,
        /// Last revision to send from storage.
        upto: u64,
    },
}

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason text.
    pub reason: &'static str,
}

/// Close code: the client's outbound queue overflowed; reconnect with `rev`.
pub const CLOSE_TOO_SLOW: CloseReason = CloseReason {
    code: 4008,
    reason: "too slow: outbound queue overflowed; reconnect with rev",
};
/// Close code: a newer connection with the same client id replaced this one.
pub const CLOSE_REPLACED: CloseReason = CloseReason {
    code: 4009,
    reason: "replaced by a newer connection with the same client id",
};

/// A connection asking to join a document.
pub struct JoinRequest {
    /// Server-wide connection id.
    pub conn_id: u64,
    /// The client id (one running writer).
    pub client_id: String,
    /// The revision the client has, to resume from.
    pub rev: Option<u64>,
    /// The storage epoch the client last saw.
    pub epoch: Option<u64>,
    /// The connection's bounded outbound queue.
    pub out: mpsc::Sender<Outbound>,
    /// Fired to close the connection with a code.
    pub kick: oneshot::Sender<CloseReason>,
}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The document has `max_clients_per_doc` connections.
    TooManyClients,
    /// The document could not be loaded from storage.
    Unavailable(String),
    /// The actor was unloading; open the document again.
    Retry,
    /// The server is shutting down.
    ShuttingDown,
}

/// A command for a document actor.
pub enum DocCommand {
    /// A connection joins.
    Join(JoinRequest, oneshot::Sender<Result<(), JoinError>>),
    /// A connection left.
    Leave {
        /// Its id.
        conn_id: u64,
    },
    /// An op from a connection.
    Op {
        /// The connection.
        conn_id: u64,
        /// Its seq.
        seq: u64,
        /// Its base revision.
        base_rev: u64,
        /// The op.
        op: Operation,
        /// The sender's selection after the op.
        ranges: Option<Vec<Range>>,
        /// When the frame was read (for the ack-latency histogram).
        received_at: Instant,
    },
    /// Presence from a connection with nothing outstanding.
    Cursor {
        /// The connection.
        conn_id: u64,
        /// The revision the ranges refer to.
        rev: u64,
        /// The ranges.
        ranges: Vec<Range>,
        /// Display name.
        name: Option<String>,
    },
    /// Read the durable revision and text.
    Read(oneshot::Sender<(u64, String)>),
    /// Commit everything pending, ack it, close every connection and stop.
    Shutdown(oneshot::Sender<()>),
}

/// A handle to a running document actor.
#[derive(Clone)]
pub struct DocHandle {
    /// The actor's mailbox.
    pub tx: mpsc::Sender<DocCommand>,
}

struct Conn {
    client_id: String,
    name: Option<String>,
    out: mpsc::Sender<Outbound>,
    kick: Option<oneshot::Sender<CloseReason>>,
    /// Presence, at `durable_rev`.
    ranges: Option<Vec<Range>>,
}

struct Pending {
    applied: AppliedOp,
    conn_id: u64,
    received_at: Instant,
    ranges: Option<Vec<Range>>,
}

struct CommitDone {
    generation: u64,
    rev: u64,
    result: Result<(), Arc<StorageError>>,
}

/// The state of one open document.
pub struct Document {
    id: String,
    shared: Arc<Shared>,
    actor_id: u64,
    history: DocumentHistory,
    durable_rev: u64,
    durable_text: Rope,
    durable_seq: HashMap<String, u64>,
    pending: VecDeque<Pending>,
    /// Acks of resends whose original is not durable yet: (rev, conn, seq).
    deferred_acks: Vec<(u64, u64, u64)>,
    conns: HashMap<u64, Conn>,
    created: bool,
    generation: u64,
    commit_tx: mpsc::UnboundedSender<CommitDone>,
    last_activity: Instant,
    shutting_down: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn text_frame(message: &ServerMessage<'_>) -> Utf8Bytes {
    Utf8Bytes::from(message.to_text())
}

/// Start the actor for `id`: it loads the document from storage, then serves its mailbox.
pub fn spawn(shared: Arc<Shared>, id: String, actor_id: u64) -> DocHandle {
    let (tx, rx) = mpsc::channel(MAILBOX);
    let tracker = shared.tasks.clone();
    tracker.spawn(run(shared, id, actor_id, rx));
    DocHandle { tx }
}

async fn run(shared: Arc<Shared>, id: String, actor_id: u64, mut rx: mpsc::Receiver<DocCommand>) {
    let storage = shared.storage.clone();
    let doc = id.clone();
    let loaded = tokio::task::spawn_blocking(move || storage.load(&doc)).await;
    let loaded = match loaded {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => return fail_load(&shared, &id, actor_id, rx, e.to_string()).await,
        Err(e) => return fail_load(&shared, &id, actor_id, rx, e.to_string()).await,
    };
    let (created, history) = match loaded {
        Some(l) => match DocumentHistory::from_snapshot(l.snapshot, l.tail) {
            Ok(h) => (true, h),
            Err(e) => return fail_load(&shared, &id, actor_id, rx, e.to_string()).await,
        },
        None => (false, DocumentHistory::new()),
    };
    let (commit_tx, mut commit_rx) = mpsc::unbounded_channel();
    let durable_seq = history
        .snapshot()
        .clients
        .into_iter()
        .map(|(client, record)| (client, record.last_seq))
        .collect();
    let mut doc = Document {
        id,
        actor_id,
        durable_rev: history.revision(),
        durable_text: history.text().clone(),
        durable_seq,
        history,
        pending: VecDeque::new(),
        deferred_acks: Vec::new(),
        conns: HashMap::new(),
        created,
        generation: 0,
        commit_tx,
        last_activity: Instant::now(),
        shutting_down: false,
        shared: shared.clone(),
    };
    doc.history.trim_to(shared.config.history_window);
    shared.metrics.open_documents.inc();
    shared.metrics.document_loads.inc();
    tracing::debug!(doc = %doc.id, rev = doc.durable_rev, "document loaded");
    let idle = shared.config.idle_unload();
    let mut shutdown_done: Option<oneshot::Sender<()>> = None;
    loop {
        let idle_for = if doc.conns.is_empty() && doc.pending.is_empty() && !doc.shutting_down {
            Some(doc.last_activity + idle)
        } else {
            None
        };
        tokio::select! {
            biased;
            Some(done) = commit_rx.recv() => doc.on_commit(done).await,
            command = rx.recv(), if doc.pending.len() < MAX_PENDING && !doc.shutting_down => {
                match command {
                    Some(DocCommand::Shutdown(done)) => {
                        doc.shutting_down = true;
                        shutdown_done = Some(done);
                    }
                    Some(command) => doc.handle(command).await,
                    None => break,
                }
            }
            _ = tokio::time::sleep_until(idle_for.unwrap_or_else(Instant::now).into()), if idle_for.is_some() => {
                if doc.try_unload(&mut rx) {
                    break;
                }
                doc.last_activity = Instant::now();
            }
        }
        if doc.shutting_down && doc.pending.is_empty() {
            // Everything is durable and acked: close the connections (their writers
            // drain what is queued, then send a close frame) and stop.
            doc.conns.clear();
            shared.registry.remove(&doc.id, doc.actor_id);
            if let Some(done) = shutdown_done.take() {
                let _ = done.send(());
            }
            break;
        }
    }
    shared.metrics.open_documents.dec();
    tracing::debug!(doc = %doc.id, "document unloaded");
}

async fn fail_load(
    shared: &Shared,
    id: &str,
    actor_id: u64,
    mut rx: mpsc::Receiver<DocCommand>,
    error: String,
) {
    tracing::error!(doc = %id, %error, "could not load document");
    shared.registry.remove(id, actor_id);
    rx.close();
    while let Some(command) = rx.recv().await {
        match command {
            DocCommand::Join(_, reply) => {
                let _ = reply.send(Err(JoinError::Unavailable(error.clone())));
            }
            DocCommand::Shutdown(done) => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
}

impl Document {
    fn limits(&self) -> Limits {
        Limits {
            max_doc_len: self.shared.config.max_doc_len,
            max_op_len: self.shared.config.max_op_len,
            max_message_bytes: self.shared.config.max_message_bytes,
        }
    }

    /// Unload if nothing is happening; under the registry lock so no join can race it.
    fn try_unload(&mut self, rx: &mut mpsc::Receiver<DocCommand>) -> bool {
        let unloaded = self
            .shared
            .registry
            .remove_if(&self.id, self.actor_id, || rx.is_empty());
        if unloaded {
            rx.close();
            // Anything that slipped in before the close is answered: joins retry
            // through the registry (which now loads a fresh actor).
            while let Ok(command) = rx.try_recv() {
                match command {
                    DocCommand::Join(_, reply) => {
                        let _ = reply.send(Err(JoinError::Retry));
                    }
                    DocCommand::Read(reply) => {
                        let _ = reply.send((self.durable_rev, self.durable_text.to_string()));
                    }
                    DocCommand::Shutdown(done) => {
                        let _ = done.send(());
                    }
                    _ => {}
                }
            }
        }
        unloaded
    }

    async fn handle(&mut self, command: DocCommand) {
        self.last_activity = Instant::now();
        match command {
            DocCommand::Join(request, reply) => {
                let result = self.on_join(request);
                let _ = reply.send(result);
            }
            DocCommand::Leave { conn_id } => self.on_leave(conn_id),
            DocCommand::Op {
                conn_id,
                seq,
                base_rev,
                op,
                ranges,
                received_at,
            } => {
                self.on_op(conn_id, seq, base_rev, op, ranges, received_at)
                    .await
            }
            DocCommand::Cursor {
                conn_id,
                rev,
                ranges,
                name,
            } => self.on_cursor(conn_id, rev, ranges, name),
            DocCommand::Read(reply) => {
                let _ = reply.send((self.durable_rev, self.durable_text.to_string()));
            }
            DocCommand::Shutdown(done) => {
                self.shutting_down = true;
                let _ = done.send(());
            }
        }
    }

    // ---------- connections ----------

    fn on_join(&mut self, request: JoinRequest) -> Result<(), JoinError> {
        if self.shutting_down {
            return Err(JoinError::ShuttingDown);
        }
        // A second connection of the same writer replaces the first.
        let replaced: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.client_id == request.client_id)
            .map(|(id, _)| *id)
            .collect();
        for id in replaced {
            if let Some(mut old) = self.conns.remove(&id) {
                if let Some(kick) = old.kick.take() {
                    let _ = kick.send(CLOSE_REPLACED);
                }
            }
        }
        if self.conns.len() >= self.shared.config.max_clients_per_doc {
            return Err(JoinError::TooManyClients);
        }
        if !self.created {
            self.created = true;
            self.shared.queue.submit(
                vec![WriteItem::CreateDoc {
                    doc: self.id.clone(),
                }],
                Box::new(|_| {}),
            );
        }
        let epoch = self.shared.storage.epoch();
        let seq = self
            .durable_seq
            .get(&request.client_id)
            .copied()
            .unwrap_or(0);
        let resume_from = request
            .rev
            .filter(|rev| *rev <= self.durable_rev && request.epoch.is_none_or(|e| e == epoch));
        let mut frames: Vec<Outbound> = Vec::new();
        match resume_from {
            Some(rev) => {
                frames.push(Outbound::Text(text_frame(&ServerMessage::Resume {
                    rev,
                    head: self.durable_rev,
                    client: request.client_id.as_str().into(),
                    seq,
                    epoch,
                    limits: self.limits(),
                })));
                let oldest = self.history.oldest_revision();
                let from = rev.max(oldest);
                let in_memory = self.durable_rev.saturating_sub(from) as usize;
                // Room in the connection's queue after the resume, a catch-up item
                // and the cursors: more ops than that would overflow it at once (and
                // close the client as too slow every time it resumes), so the writer
                // reads them all from storage instead.
                let room = request.out.capacity().saturating_sub(2 + self.conns.len());
                if in_memory > room {
                    frames.push(Outbound::CatchUp {
                        after: rev,
                        upto: self.durable_rev,
                    });
                } else {
                    if rev < oldest {
                        frames.push(Outbound::CatchUp {
                            after: rev,
                            upto: oldest,
                        });
                    }
                    if let Some(ops) = self.history.ops_since(from) {
                        for a in ops.iter().take_while(|a| a.rev <= self.durable_rev) {
                            frames.push(Outbound::Text(op_frame(a)));
                        }
                    }
                }
            }
            None => {
                let text = self.durable_text.to_string();
                frames.push(Outbound::Text(text_frame(&ServerMessage::Snapshot {
                    rev: self.durable_rev,
                    text: text.as_str().into(),
                    client: request.client_id.as_str().into(),
                    seq,
                    epoch,
                    limits: self.limits(),
                })));
            }
        }
        for conn in self.conns.values() {
            if let Some(ranges) = &conn.ranges {
                frames.push(Outbound::Text(text_frame(&ServerMessage::Cursor {
                    client: conn.client_id.as_str().into(),
                    rev: self.durable_rev,
                    ranges: ranges.into(),
                    name: conn.name.as_deref().map(Into::into),
                })));
            }
        }
        for frame in frames {
            if request.out.try_send(frame).is_err() {
                let _ = request.kick.send(CLOSE_TOO_SLOW);
                return Ok(());
            }
        }
        self.conns.insert(
            request.conn_id,
            Conn {
                client_id: request.client_id,
                name: None,
                out: request.out,
                kick: Some(request.kick),
                ranges: None,
            },
        );
        Ok(())
    }

    fn on_leave(&mut self, conn_id: u64) {
        if let Some(conn) = self.conns.remove(&conn_id) {
            self.broadcast_leave(&conn.client_id);
        }
    }

    fn broadcast_leave(&mut self, client_id: &str) {
        if self.conns.values().any(|c| c.client_id == client_id) {
            return;
        }
        let frame = text_frame(&ServerMessage::Leave {
            client: client_id.into(),
        });
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.send(id, Outbound::Broadcast(frame.clone()));
        }
    }

    /// Queue a frame for a connection; a full queue closes it (4008).
    fn send(&mut self, conn_id: u64, frame: Outbound) {
        let overflowed = match self.conns.get(&conn_id) {
            Some(conn) => conn.out.try_send(frame).is_err(),
            None => false,
        };
        if overflowed {
            if let Some(mut conn) = self.conns.remove(&conn_id) {
                tracing::info!(doc = %self.id, client = %conn.client_id, "closing a client that does not keep up");
                if let Some(kick) = conn.kick.take() {
                    let _ = kick.send(CLOSE_TOO_SLOW);
                }
                let client = conn.client_id.clone();
                self.broadcast_leave(&client);
            }
        }
    }

    fn send_error(&mut self, conn_id: u64, code: ErrorCode, message: &str, seq: Option<u64>) {
        self.shared
            .metrics
            .errors
            .with_label_values(&[code.as_str()])
            .inc();
        let frame = text_frame(&ServerMessage::Error {
            code: code.into(),
            message: message.into(),
            seq,
        });
        // An error about an op (it names the seq) answers that op.
        let outbound = match seq {
            Some(_) => Outbound::Reply(frame),
            None => Outbound::Text(frame),
        };
        self.send(conn_id, outbound);
    }

    // ---------- ops ----------

    async fn on_op(
        &mut self,
        conn_id: u64,
        seq: u64,
        base_rev: u64,
        op: Operation,
        ranges: Option<Vec<Range>>,
        received_at: Instant,
    ) {
        let Some(client_id) = self.conns.get(&conn_id).map(|c| c.client_id.clone()) else {
            return; // the connection is gone: its op was never acknowledged
        };
        if seq == self.history.last_seq(&client_id) + 1 {
            let len = self.history.text().len_chars() as i128;
            let after = len + op.target_len() as i128 - op.base_len() as i128;
            if after > self.shared.config.max_doc_len as i128 {
                let message = format!(
                    "the document would hold {after} characters; the limit is {}",
                    self.shared.config.max_doc_len
                );
                self.send_error(conn_id, ErrorCode::DocTooLong, &message, Some(seq));
                return;
            }
        }
        let mut result = self.history.receive(&client_id, seq, base_rev, op.clone());
        if let Err(ReceiveError::RevisionTooOld { oldest, .. }) = &result {
            let oldest = *oldest;
            match self.read_ops(base_rev, oldest).await {
                Ok(older) => {
                    result = self.history.receive_with_older(
                        &client_id,
                        seq,
                        base_rev,
                        op.clone(),
                        &older,
                    );
                }
                Err(e) => {
                    tracing::error!(doc = %self.id, error = %e, "could not read older ops");
                    self.send_error(
                        conn_id,
                        ErrorCode::StorageError,
                        "could not read the ops since your base revision",
                        Some(seq),
                    );
                    return;
                }
            }
        }
        match result {
            Ok(Receipt::Applied { applied, received }) => {
                self.shared.metrics.ops_applied.inc();
                if applied.is_concurrent() {
                    self.shared.metrics.conflicts.inc();
                }
                let ranges =
                    ranges.map(|r| self.map_op_ranges(base_rev, applied.rev, &received, r));
                let committed_now = self.persist(&applied, received);
                self.pending.push_back(Pending {
                    applied,
                    conn_id,
                    received_at,
                    ranges,
                });
                // Pending ops stay in memory: later ops may need to transform past them.
                let keep = self.shared.config.history_window.max(self.pending.len());
                self.history.trim_to(keep);
                if let Some(done) = committed_now {
                    self.on_commit(done).await;
                }
            }
            Ok(Receipt::Duplicate { seq, rev }) => {
                let rev = match rev {
                    Some(rev) => rev,
                    None => match self.find_original(&client_id, seq, &op).await {
                        Ok(Some(rev)) => rev,
                        Ok(None) => {
                            self.send_error(
                                conn_id,
                                ErrorCode::SeqReused,
                                "this seq was already used for a different operation",
                                Some(seq),
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::error!(doc = %self.id, error = %e, "dedup lookup failed");
                            self.send_error(
                                conn_id,
                                ErrorCode::StorageError,
                                "could not look up the original op",
                                Some(seq),
                            );
                            return;
                        }
                    },
                };
                // Counted only once it is known to be a true resend (not `seq_reused`).
                self.shared.metrics.duplicates.inc();
                if rev <= self.durable_rev {
                    let frame = text_frame(&ServerMessage::Ack { rev, seq });
                    self.send(conn_id, Outbound::Reply(frame));
                } else {
                    self.deferred_acks.push((rev, conn_id, seq));
                }
            }
            Err(e) => {
                let code = ErrorCode::from_receive(&e);
                self.send_error(conn_id, code, &e.to_string(), Some(seq));
            }
        }
    }

    /// Map the ranges a client attached to its op (positions after its op, at
    /// `base_rev`) to revision `rev`, through the concurrent ops it was transformed past.
    fn map_op_ranges(
        &self,
        base_rev: u64,
        rev: u64,
        received: &Operation,
        mut ranges: Vec<Range>,
    ) -> Vec<Range> {
        let Some(concurrent) = self.history.ops_since(base_rev) else {
            return ranges; // older than memory: rare; the client's next cursor corrects it
        };
        let mut mine = received.clone();
        for other in concurrent.iter().take_while(|a| a.rev < rev) {
            match mine.transform(&other.op) {
                Ok((mine_prime, other_prime)) => {
                    ranges = ot_core::transform_ranges(&ranges, &other_prime);
                    mine = mine_prime;
                }
                Err(_) => break,
            }
        }
        ranges
    }

    /// Commit the op (and a snapshot every `snapshot_every` ops). Returns the
    /// outcome if the commit already happened here, else it arrives later on
    /// the commit channel.
    fn persist(&mut self, applied: &AppliedOp, received: Operation) -> Option<CommitDone> {
        let mut items = vec![WriteItem::Op {
            doc: self.id.clone(),
            op: StoredOp::from_applied(applied, received, now_ms()),
            len_after: applied.op.target_len() as u64,
        }];
        if applied
            .rev
            .is_multiple_of(self.shared.config.snapshot_every.max(1))
        {
            items.push(WriteItem::Snapshot {
                doc: self.id.clone(),
                snapshot: self.history.snapshot(),
            });
        }
        let generation = self.generation;
        let rev = applied.rev;
        let tx = self.commit_tx.clone();
        // The queue commits in place when that is cheap and nothing of this
        // document is still on its way to storage.
        let committed = self.shared.queue.commit(
            items,
            Box::new(move |result| {
                let _ = tx.send(CommitDone {
                    generation,
                    rev,
                    result,
                });
            }),
        );
        match committed {
            Committed::Now(result) => Some(CommitDone {
                generation,
                rev,
                result,
            }),
            Committed::Queued => None,
        }
    }

    async fn read_ops(&self, after: u64, upto: u64) -> Result<Vec<Operation>, String> {
        let storage = self.shared.storage.clone();
        let doc = self.id.clone();
        let limit = (upto - after) as usize;
        let ops = tokio::task::spawn_blocking(move || storage.ops(&doc, after, limit))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if ops.len() != limit || ops.last().map(|o| o.rev) != Some(upto) {
            return Err(format!("storage returned {} of {limit} ops", ops.len()));
        }
        Ok(ops.into_iter().map(|o| o.applied).collect())
    }

    /// The revision of an old (client, seq), if stored with the same op.
    async fn find_original(
        &self,
        client_id: &str,
        seq: u64,
        op: &Operation,
    ) -> Result<Option<u64>, String> {
        let storage = self.shared.storage.clone();
        let doc = self.id.clone();
        let client = client_id.to_owned();
        let found = tokio::task::spawn_blocking(move || storage.find_seq(&doc, &client, seq))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        match found {
            Some((rev, hash)) if hash == OpHash::of(op) => Ok(Some(rev)),
            Some(_) => Ok(None),
            None => Err(format!("seq {seq} of {client_id} is not in storage")),
        }
    }

    async fn on_commit(&mut self, done: CommitDone) {
        if done.generation != self.generation {
            return; // a result for ops dropped by an earlier failure
        }
        if let Err(error) = done.result {
            self.on_commit_failed(&error).await;
            return;
        }
        while self
            .pending
            .front()
            .is_some_and(|p| p.applied.rev <= done.rev)
        {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if let Err(e) = p.applied.op.apply_to_rope(&mut self.durable_text) {
                tracing::error!(doc = %self.id, error = %e, "durable text out of step; reloading");
                self.reload().await;
                return;
            }
            self.durable_rev = p.applied.rev;
            self.durable_seq
                .insert(p.applied.client_id.to_string(), p.applied.seq);
            for conn in self.conns.values_mut() {
                if let Some(ranges) = conn.ranges.as_mut() {
                    *ranges = ot_core::transform_ranges(ranges, &p.applied.op);
                }
            }
            // Serialised once, only if someone else is connected.
            let mut op_text = None;
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                let frame = if id == p.conn_id {
                    Outbound::Reply(text_frame(&ServerMessage::Ack {
                        rev: p.applied.rev,
                        seq: p.applied.seq,
                    }))
                } else {
                    Outbound::Broadcast(op_text.get_or_insert_with(|| op_frame(&p.applied)).clone())
                };
                self.send(id, frame);
            }
            self.shared
                .metrics
                .ack_latency
                .observe(p.received_at.elapsed().as_secs_f64());
            if let Some(ranges) = p.ranges {
                self.set_presence(p.conn_id, ranges, None);
            }
        }
        let durable = self.durable_rev;
        let ready: Vec<(u64, u64, u64)> = self
            .deferred_acks
            .iter()
            .copied()
            .filter(|(rev, _, _)| *rev <= durable)
            .collect();
        self.deferred_acks.retain(|(rev, _, _)| *rev > durable);
        for (rev, conn_id, seq) in ready {
            let frame = text_frame(&ServerMessage::Ack { rev, seq });
            self.send(conn_id, Outbound::Reply(frame));
        }
    }

    async fn on_commit_failed(&mut self, error: &StorageError) {
        tracing::error!(doc = %self.id, %error, pending = self.pending.len(), "commit failed; reloading the document");
        let failed: Vec<(u64, u64)> = self
            .pending
            .drain(..)
            .map(|p| (p.conn_id, p.applied.seq))
            .chain(self.deferred_acks.drain(..).map(|(_, c, s)| (c, s)))
            .collect();
        for (conn_id, seq) in failed {
            self.send_error(
                conn_id,
                ErrorCode::StorageError,
                "the op could not be stored and was not applied; resync",
                Some(seq),
            );
        }
        self.reload().await;
    }

    /// Rebuild the in-memory state from storage (after a failed commit).
    async fn reload(&mut self) {
        self.generation += 1;
        self.pending.clear();
        self.deferred_acks.clear();
        let storage = self.shared.storage.clone();
        let doc = self.id.clone();
        let loaded = tokio::task::spawn_blocking(move || storage.load(&doc)).await;
        let history = match loaded {
            Ok(Ok(Some(l))) => DocumentHistory::from_snapshot(l.snapshot, l.tail).ok(),
            Ok(Ok(None)) => Some(DocumentHistory::new()),
            _ => None,
        };
        match history {
            Some(history) => {
                self.durable_rev = history.revision();
                self.durable_text = history.text().clone();
                self.durable_seq = history
                    .snapshot()
                    .clients
                    .into_iter()
                    .map(|(c, r)| (c, r.last_seq))
                    .collect();
                self.history = history;
                self.history.trim_to(self.shared.config.history_window);
            }
            None => {
                // Keep the durable state we know; roll the in-memory history back to it.
                tracing::error!(doc = %self.id, "reload failed; continuing from the last durable state");
                let snapshot = ot_core::history::DocumentSnapshot {
                    rev: self.durable_rev,
                    text: self.durable_text.to_string(),
                    clients: HashMap::new(),
                };
                if let Ok(h) = DocumentHistory::from_snapshot(snapshot, Vec::new()) {
                    self.history = h;
                }
            }
        }
    }

    // ---------- presence ----------

    fn on_cursor(&mut self, conn_id: u64, rev: u64, ranges: Vec<Range>, name: Option<String>) {
        if rev > self.durable_rev {
            self.send_error(
                conn_id,
                ErrorCode::FutureRevision,
                "cursor revision is newer than the document",
                None,
            );
            return;
        }
        let Some(ops) = self.history.ops_since(rev) else {
            return; // too old to map; the client sends a fresh cursor after catching up
        };
        let mut ranges = ranges;
        for a in ops.iter().take_while(|a| a.rev <= self.durable_rev) {
            ranges = ot_core::transform_ranges(&ranges, &a.op);
        }
        // Clamp to the document (positions past the end mean the end).
        let len = self.durable_text.len_chars();
        for r in &mut ranges {
            r.anchor = r.anchor.min(len);
            r.head = r.head.min(len);
        }
        self.set_presence(conn_id, ranges, name);
    }

    fn set_presence(&mut self, conn_id: u64, ranges: Vec<Range>, name: Option<String>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if name.is_some() {
            conn.name = name;
        }
        conn.ranges = Some(ranges);
        let frame = text_frame(&ServerMessage::Cursor {
            client: conn.client_id.as_str().into(),
            rev: self.durable_rev,
            ranges: conn.ranges.as_deref().unwrap_or(&[]).into(),
            name: conn.name.as_deref().map(Into::into),
        });
        let ids: Vec<u64> = self
            .conns
            .keys()
            .copied()
            .filter(|id| *id != conn_id)
            .collect();
        for id in ids {
            self.send(id, Outbound::Broadcast(frame.clone()));
        }
    }
}

/// The `op` frame for an applied op.
pub fn op_frame(applied: &AppliedOp) -> Utf8Bytes {
    text_frame(&ServerMessage::Op {
        rev: applied.rev,
        op: std::borrow::Cow::Borrowed(&applied.op),
        client: applied.client_id.as_ref().into(),
        seq: applied.seq,
    })
}

/// The `op` frame for a stored op (catch-up from storage).
pub fn stored_op_frame(stored: &StoredOp) -> Utf8Bytes {
    text_frame(&ServerMessage::Op {
        rev: stored.rev,
        op: std::borrow::Cow::Borrowed(&stored.applied),
        client: stored.client_id.as_str().into(),
        seq: stored.seq,
    })
}

/// How long a joiner waits for an actor before giving up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
