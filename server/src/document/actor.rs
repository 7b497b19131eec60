//! One task per open document: the actor that owns its state and orders its
//! ops. It holds the commit pipeline and the connection table, and turns
//! mailbox commands and commit results into calls on them.

mod races;
mod upstream;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ot_core::history::KeyHash;
use ot_core::Range;
use ot_protocol::{ClientId, CloseCode, DocId, ErrorCode, Limits};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::connections::Connections;
use super::epoch::DocEpoch;
use super::error::DocError;
use super::loading::{self, Loaded};
use super::mailbox::{
    DeleteResult, DocCommand, DocHandle, IncomingOp, JoinError, JoinRequest, MAILBOX,
};
use super::pipeline::{Accepted, CommitDone, JoinRoom, KeyRefused, Pipeline};
use super::rebase::{self, RebaseJob, Rebased, MAX_QUEUED_BEHIND, REBASES_PER_DOC};
use super::registry::Registry;
use crate::presence::PresenceNote;
use crate::state::Services;
use crate::storage::WriteItem;

/// Ops applied but not yet durable before the actor stops taking new commands.
const MAX_PENDING: usize = 8192;

/// Cursors of other nodes' writers waiting for a revision this node has
/// not read yet, at most.
const MAX_REMOTE_PENDING: usize = 1024;

struct Document {
    id: DocId,
    shared: Arc<Services>,
    registry: Arc<Registry>,
    actor_id: u64,
    pipeline: Pipeline,
    conns: Connections,
    /// Whether storage has the document (it exists once someone joins).
    created: bool,
    last_activity: Instant,
    shutting_down: bool,
    /// An admin's delete waiting for the pending ops to be durable.
    deleting: Option<oneshot::Sender<DeleteResult>>,
    /// Key bindings whose write failed, to undo (see `on_authorize`).
    bind_failed: mpsc::UnboundedSender<(ClientId, KeyHash)>,
    /// Connections with an op being rebased off the task, each with the ops
    /// it sent since (they wait, in order, behind it).
    rebasing: HashMap<u64, VecDeque<IncomingOp>>,
    /// Where rebase jobs come back.
    rebase_tx: mpsc::UnboundedSender<Rebased>,
    /// Rebases of this document that read and transform at once.
    rebase_permits: Arc<Semaphore>,
    /// The revision of the last pass evicting idle dedup records.
    evicted_at: u64,
    /// On a region: the link to the home.
    link: Option<upstream::LinkState>,
    /// The document stops: every connection is closed with this code (a
    /// region whose log does not recover: 1011; a region that started a new
    /// generation from its home's text: 4004).
    stop_with: Option<CloseCode>,
    /// On storage other nodes write too: the races for the head this
    /// document lost in a row.
    lost_races: races::LostRaces,
    /// On storage other nodes write too: the highest head another node
    /// announced while this document had ops on their way to storage (read
    /// once they are durable: its notification may come before this node's
    /// own commit result).
    head_announced: Option<u64>,
    /// Cursors of writers at other nodes at revisions this node has not
    /// reached yet, by client id (shown once it has).
    remote_pending: HashMap<String, PresenceNote>,
}

/// The actor of `doc`, started (and loaded from storage) if it is not running.
pub(crate) fn open(shared: &Arc<Services>, registry: &Arc<Registry>, doc: &DocId) -> DocHandle {
    registry.open(doc, |actor_id| {
        spawn(shared.clone(), registry.clone(), doc.clone(), actor_id)
    })
}

/// Start the actor for `id`: it loads the document from storage, then serves its mailbox.
fn spawn(shared: Arc<Services>, registry: Arc<Registry>, id: DocId, actor_id: u64) -> DocHandle {
    let (tx, rx) = mpsc::channel(MAILBOX);
    let tracker = shared.tasks.clone();
    tracker.spawn(run(shared, registry, id, actor_id, (tx.downgrade(), rx)));
    DocHandle { tx }
}

/// The document as stored (or, on a region, first taken from its home) and
/// its epoch.
async fn load(shared: &Arc<Services>, id: &DocId) -> Result<(Loaded, DocEpoch), DocError> {
    #[cfg(test)]
    if let Some(delay) = super::test_hooks::load_delay(id.as_str()) {
        tokio::time::sleep(delay).await;
    }
    loading::load(shared, id).await
}

async fn run(
    shared: Arc<Services>,
    registry: Arc<Registry>,
    id: DocId,
    actor_id: u64,
    (mailbox, mut rx): (mpsc::WeakSender<DocCommand>, mpsc::Receiver<DocCommand>),
) {
    let (loaded, epoch) = match load(&shared, &id).await {
        Ok(loaded) => loaded,
        Err(e) => return fail_load(&registry, &id, actor_id, rx, e).await,
    };
    let created = loaded.created;
    let link = loaded
        .replica
        .region()
        .map(|_| upstream::LinkState::start(shared.clone(), mailbox, id.clone()));
    let (commit_tx, mut commit_rx) = mpsc::unbounded_channel();
    let (bind_failed, mut bind_failed_rx) = mpsc::unbounded_channel();
    let (rebase_tx, mut rebase_rx) = mpsc::unbounded_channel();
    let evicted_at = loaded.replica.history().revision();
    let mut doc = Document {
        link,
        stop_with: None,
        lost_races: races::LostRaces::default(),
        head_announced: None,
        bind_failed,
        rebasing: HashMap::new(),
        rebase_tx,
        rebase_permits: Arc::new(Semaphore::new(REBASES_PER_DOC)),
        evicted_at,
        pipeline: Pipeline::new(shared.clone(), id.to_string(), loaded, epoch, commit_tx),
        conns: Connections::new(
            id.to_string(),
            shared.metrics.clone(),
            shared.presence.clone(),
        ),
        remote_pending: HashMap::new(),
        id,
        actor_id,
        created,
        last_activity: Instant::now(),
        shutting_down: false,
        deleting: None,
        shared: shared.clone(),
        registry: registry.clone(),
    };
    let _open = OpenDocument::count(&shared.metrics.open_documents);
    shared.metrics.document_loads.inc();
    tracing::debug!(doc = %doc.id, rev = doc.pipeline.durable_rev(), "document loaded");
    let idle = shared.config.idle_unload();
    let mut shutdown_done: Option<oneshot::Sender<()>> = None;
    loop {
        // A region keeps a document with unreplicated work open (its link
        // goes on) until the home has it all.
        let idle_for = if doc.conns.is_empty()
            && doc.pipeline.pending_len() == 0
            && doc.rebasing.is_empty()
            && !doc.shutting_down
            && doc
                .pipeline
                .region()
                .is_none_or(|r| r.unreplicated_ops() == 0)
        {
            Some(doc.last_activity + idle)
        } else {
            None
        };
        tokio::select! {
            biased;
            Some(done) = commit_rx.recv() => doc.on_commit(done).await,
            Some(rebased) = rebase_rx.recv() => doc.on_rebased(rebased).await,
            Some((client_id, key)) = bind_failed_rx.recv() => doc.pipeline.unbind_key(&client_id, key),
            command = rx.recv(), if doc.pipeline.pending_len() < MAX_PENDING && !doc.shutting_down && doc.deleting.is_none() => {
                match command {
                    Some(DocCommand::Shutdown(done)) => {
                        doc.shutting_down = true;
                        shutdown_done = Some(done);
                    }
                    Some(DocCommand::Delete(reply)) if doc.created => doc.deleting = Some(reply),
                    Some(DocCommand::Delete(reply)) => {
                        let _ = reply.send(Ok(false));
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
        if let Some(code) = doc.stop_with {
            doc.conns.close_all(code);
            registry.remove(&doc.id, doc.actor_id);
            break;
        }
        if doc.pipeline.is_broken() {
            let error = crate::storage::StorageError::Internal(
                "the regional history and its link disagree".into(),
            );
            for (conn_id, seq) in doc.pipeline.fail(&error) {
                doc.conns.send_error(
                    conn_id,
                    ErrorCode::StorageError,
                    "the document is reloading; reconnect and resend the op",
                    Some(seq),
                );
            }
            doc.reload().await;
            continue;
        }
        if doc.deleting.is_some() && doc.pipeline.pending_len() == 0 {
            if doc.delete(&mut rx).await {
                break;
            }
            continue;
        }
        if doc.shutting_down && doc.pipeline.pending_len() == 0 {
            // Everything is durable and acked: close the connections (their writers
            // drain what is queued, then send a close frame) and stop.
            doc.conns.clear();
            registry.remove(&doc.id, doc.actor_id);
            if let Some(done) = shutdown_done.take() {
                let _ = done.send(());
            }
            break;
        }
    }
    tracing::debug!(doc = %doc.id, "document unloaded");
}

/// Counts a loaded document in `ot_open_documents` for as long as it lives:
/// uncounted on drop, so also when the actor's task panics.
struct OpenDocument(prometheus::IntGauge);

impl OpenDocument {
    fn count(gauge: &prometheus::IntGauge) -> OpenDocument {
        gauge.inc();
        OpenDocument(gauge.clone())
    }
}

impl Drop for OpenDocument {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The document could not be loaded: answer every join with the error, then stop.
async fn fail_load(
    registry: &Registry,
    id: &DocId,
    actor_id: u64,
    mut rx: mpsc::Receiver<DocCommand>,
    error: DocError,
) {
    tracing::error!(doc = %id, %error, "could not load document");
    let error = Arc::new(error);
    registry.remove(id, actor_id);
    rx.close();
    while let Some(command) = rx.recv().await {
        match command {
            DocCommand::Join(_, reply) | DocCommand::Authorize { reply, .. } => {
                let _ = reply.send(Err(JoinError::Unavailable(error.clone())));
            }
            DocCommand::Delete(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            DocCommand::Shutdown(done) => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
}

/// A document this far behind another node's head loads itself again
/// instead of reading the ops it missed one by one.
const MAX_CATCH_UP_OPS: usize = 1_000;

impl Document {
    fn limits(&self) -> Limits {
        self.shared.config.limits()
    }

    /// Unload if nothing is happening; under the registry lock so no join can race it.
    fn try_unload(&mut self, rx: &mut mpsc::Receiver<DocCommand>) -> bool {
        let unloaded = self
            .registry
            .remove_if(&self.id, self.actor_id, || rx.is_empty());
        if unloaded {
            rx.close();
            // Anything that slipped in before the close is answered: joins retry
            // through the registry (which now loads a fresh actor).
            while let Ok(command) = rx.try_recv() {
                match command {
                    DocCommand::Join(_, reply) | DocCommand::Authorize { reply, .. } => {
                        let _ = reply.send(Err(JoinError::Retry));
                    }
                    DocCommand::Read(reply) => {
                        let _ = reply.send(self.pipeline.read());
                    }
                    DocCommand::Shutdown(done) => {
                        let _ = done.send(());
                    }
                    DocCommand::Delete(reply) => {
                        let _ = reply.send(Err(Arc::new(DocError::KeptUnloading)));
                    }
                    _ => {}
                }
            }
        }
        unloaded
    }

    /// Everything pending is durable: commit the delete through the commit
    /// lane (after every item submitted before it), and once it is durable
    /// close every connection with 4004 and unload. Returns whether the
    /// actor stops; a failed delete changes nothing and the actor goes on.
    async fn delete(&mut self, rx: &mut mpsc::Receiver<DocCommand>) -> bool {
        let Some(reply) = self.deleting.take() else {
            return false;
        };
        let (tx, durable) = oneshot::channel();
        self.pipeline.submit(
            vec![WriteItem::DeleteDoc {
                doc: self.id.to_string(),
                epoch: self.pipeline.epoch().shown(),
            }],
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        let error = match durable.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(DocError::Commit(e)),
            Err(_) => Some(DocError::NoAnswer),
        };
        if let Some(error) = error {
            tracing::error!(doc = %self.id, %error, "could not delete the document");
            let _ = reply.send(Err(Arc::new(error)));
            return false;
        }
        tracing::info!(doc = %self.id, epoch = self.pipeline.epoch().shown(), "document deleted");
        self.conns.close_all(CloseCode::DocumentDeleted);
        // Out of the registry before the answer: the next join loads the
        // next generation (empty, with a greater epoch).
        self.registry.remove(&self.id, self.actor_id);
        rx.close();
        while let Ok(command) = rx.try_recv() {
            match command {
                DocCommand::Join(_, reply) | DocCommand::Authorize { reply, .. } => {
                    let _ = reply.send(Err(JoinError::Retry));
                }
                // Unanswered: the reader falls back to storage, which has no
                // such document now (404).
                DocCommand::Read(_) => {}
                DocCommand::Shutdown(done) => {
                    let _ = done.send(());
                }
                DocCommand::Delete(reply) => {
                    let _ = reply.send(Ok(false));
                }
                // Ops queued behind the delete are dropped unacknowledged:
                // their senders are closed with 4004 and keep them as
                // conflict copies.
                _ => {}
            }
        }
        let _ = reply.send(Ok(true));
        true
    }

    async fn handle(&mut self, command: DocCommand) {
        if let DocCommand::Head { head } = command {
            // Not activity: a document nobody uses here still unloads.
            self.follow_head(head).await;
            self.show_remote_pending();
            self.conns.refresh_presence(self.pipeline.durable_rev());
            return;
        }
        if let DocCommand::RemotePresence(note) = command {
            // Not activity either.
            self.on_remote_presence(note);
            return;
        }
        self.last_activity = Instant::now();
        match command {
            DocCommand::Head { .. } | DocCommand::RemotePresence(_) => {}
            DocCommand::Authorize {
                client_id,
                key_hash,
                epoch,
                reply,
            } => {
                if self.pipeline.epoch().saw_deleted(epoch) {
                    // Let the upgrade happen: the join closes it with 4004
                    // (the client must learn of the delete), and nothing of
                    // it is bound in, or creates, the new generation.
                    let _ = reply.send(Ok(()));
                } else {
                    self.on_authorize(&client_id, key_hash, reply);
                }
            }
            DocCommand::Join(request, reply) => {
                #[cfg(test)]
                if let Some(delay) = super::test_hooks::join_delay(self.id.as_str()) {
                    tokio::time::sleep(delay).await;
                }
                if let Some(behind) = self.behind(&request).await {
                    let _ = reply.send(Err(JoinError::Unavailable(Arc::new(behind))));
                    return;
                }
                let result = self.on_join(request);
                let _ = reply.send(result);
            }
            DocCommand::Leave { conn_id } => {
                // Its ops waiting behind a rebase were never acknowledged.
                self.rebasing.remove(&conn_id);
                self.conns.remove(conn_id)
            }
            DocCommand::Op { conn_id, op } => {
                #[cfg(test)]
                if super::test_hooks::take_op_panic(self.id.as_str()) {
                    panic!("test hook: the actor of {} fails", self.id);
                }
                self.on_op(conn_id, op).await
            }
            DocCommand::Cursor {
                conn_id,
                rev,
                ranges,
                name,
            } => self.on_cursor(conn_id, rev, ranges, name),
            DocCommand::Read(reply) => {
                let _ = reply.send(self.pipeline.read());
            }
            DocCommand::LinkPath(reply) => self.on_link_path(reply),
            DocCommand::Replication(reply) => {
                let _ = reply.send(self.replication());
            }
            DocCommand::Link(event) => self.on_link(event).await,
            DocCommand::Shutdown(done) => {
                self.shutting_down = true;
                let _ = done.send(());
            }
            // Taken by the loop (it stops the mailbox).
            DocCommand::Delete(reply) => self.deleting = Some(reply),
        }
    }

    /// Make sure storage has the document (it exists once someone joins).
    fn create(&mut self) {
        if !self.created {
            self.created = true;
            self.pipeline.submit_unobserved(vec![WriteItem::CreateDoc {
                doc: self.id.to_string(),
            }]);
        }
    }

    /// Before the upgrade: check (and bind) the connection's key; the answer
    /// comes once a new binding is durable, so an id is never shown to others
    /// (a cursor, an op) before its binding would survive a crash.
    fn on_authorize(
        &mut self,
        client_id: &ClientId,
        key_hash: Option<KeyHash>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    ) {
        if self.shutting_down {
            let _ = reply.send(Err(JoinError::ShuttingDown));
            return;
        }
        if key_hash.is_some() {
            self.create();
        }
        let (tx, rx) = oneshot::channel();
        let checked = self.pipeline.check_key(
            client_id,
            key_hash,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        if checked == Err(KeyRefused) {
            tracing::info!(doc = %self.id, client = %client_id, "refused a connection without its client id's key");
            let _ = reply.send(Err(JoinError::Forbidden));
            return;
        }
        // Answered from a task: the actor goes on while the binding commits.
        // A failed binding is undone, so that a retry binds again rather than
        // find an in-memory binding that storage does not have.
        let undo = self.bind_failed.clone();
        let bound = (client_id.clone(), key_hash);
        self.shared.tasks.spawn(async move {
            let answer = match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    if let (client_id, Some(key)) = bound {
                        let _ = undo.send((client_id, key));
                    }
                    Err(JoinError::Unavailable(Arc::new(DocError::Commit(e))))
                }
                Err(_) => Err(JoinError::Retry),
            };
            let _ = reply.send(answer);
        });
    }

    fn on_join(&mut self, request: JoinRequest) -> Result<(), JoinError> {
        if self.shutting_down {
            return Err(JoinError::ShuttingDown);
        }
        if self.pipeline.epoch().saw_deleted(request.epoch) {
            return Err(JoinError::Deleted);
        }
        // Checked again: the id may have been bound since the upgrade. Only a
        // connection that passes may replace (4009) the id's older connection.
        if request.key_hash.is_some() {
            self.create();
        }
        self.pipeline
            .check_key(&request.client_id, request.key_hash, Box::new(|_| {}))
            .map_err(|KeyRefused| JoinError::Forbidden)?;
        self.conns.replace(&request.client_id);
        if self.conns.len() >= self.shared.config.max_clients_per_doc {
            return Err(JoinError::TooManyClients);
        }
        self.create();
        // Room in the connection's queue after the first message, a catch-up
        // item and the cursors; ops from memory take at most half its bytes,
        // leaving the rest to the cursors.
        let room = JoinRoom {
            messages: request.out.capacity().saturating_sub(2 + self.conns.len()),
            bytes: request.out.room_bytes() / 2,
        };
        let mut frames = self.pipeline.first_frames(&request, room, self.limits());
        frames.extend(self.replicated_frame());
        frames.extend(self.conns.cursor_frames(self.pipeline.durable_rev()));
        self.conns.add(request, frames);
        Ok(())
    }

    async fn on_op(&mut self, conn_id: u64, incoming: IncomingOp) {
        let Some(client_id) = self.conns.client_id(conn_id) else {
            return; // the connection is gone: its op was never acknowledged
        };
        if let Some(queue) = self.rebasing.get_mut(&conn_id) {
            // Ops of one connection stay in order: this one waits behind the
            // one being rebased.
            if queue.len() >= MAX_QUEUED_BEHIND {
                tracing::info!(doc = %self.id, client = %client_id, "too many ops sent behind one being rebased; closing");
                self.rebasing.remove(&conn_id);
                self.conns.close(conn_id, CloseCode::Abusive);
                return;
            }
            queue.push_back(incoming);
            return;
        }
        self.evict_idle();
        let seq = incoming.seq;
        let accepted = self.pipeline.receive(conn_id, &client_id, incoming).await;
        self.on_accepted(conn_id, seq, accepted).await;
    }

    /// Answer (or hold, or rebase) an op the pipeline took or refused.
    async fn on_accepted(
        &mut self,
        conn_id: u64,
        seq: u64,
        accepted: Result<Accepted, super::pipeline::Refused>,
    ) {
        if let Some(done) = self.answer(conn_id, seq, accepted) {
            self.on_commit(done).await;
        }
    }

    /// Answer (or hold, or rebase) an op the pipeline took or refused;
    /// returns the outcome of a commit that already happened, for the
    /// caller to handle.
    fn answer(
        &mut self,
        conn_id: u64,
        seq: u64,
        accepted: Result<Accepted, super::pipeline::Refused>,
    ) -> Option<CommitDone> {
        match accepted {
            Ok(Accepted::Applied(done)) => return done,
            Ok(Accepted::AckLater) => {}
            // A resend: of an op stored here, or by the node that won a race.
            Ok(Accepted::AckNow(rev)) => self.conns.ack(conn_id, rev, seq),
            Ok(Accepted::Rebase(job)) => self.start_rebase(*job),
            Err(refused) => {
                self.conns
                    .send_error(conn_id, refused.code, &refused.message, Some(seq))
            }
        }
        None
    }

    /// Rebase `job` off the task; its connection's later ops wait behind it.
    fn start_rebase(&mut self, job: RebaseJob) {
        self.rebasing.entry(job.conn_id).or_default();
        rebase::spawn(
            job,
            self.shared.storage.clone(),
            self.id.to_string(),
            self.rebase_permits.clone(),
            self.rebase_tx.clone(),
            &self.shared.tasks,
        );
    }

    /// A rebase came back: apply (or refuse, or rebase further) its op, then
    /// the ops its connection sent meanwhile, in order.
    async fn on_rebased(&mut self, rebased: Rebased) {
        let conn_id = rebased.job.conn_id;
        let seq = rebased.job.seq;
        let Some(mut queue) = self.rebasing.remove(&conn_id) else {
            return; // the connection was closed meanwhile
        };
        if self.conns.client_id(conn_id).is_none() || self.shutting_down || self.deleting.is_some()
        {
            // Never acknowledged: the client resends it when it reconnects.
            return;
        }
        let accepted = self
            .pipeline
            .receive_rebased(rebased.job, rebased.result)
            .await;
        self.on_accepted(conn_id, seq, accepted).await;
        while !self.rebasing.contains_key(&conn_id) {
            let Some(next) = queue.pop_front() else {
                return;
            };
            self.on_op(conn_id, next).await;
        }
        // Another rebase started: the rest waits behind it.
        if let Some(waiting) = self.rebasing.get_mut(&conn_id) {
            waiting.extend(queue);
        }
    }

    /// Every so often (a quarter of `--client-expiry`, at most 1024
    /// revisions), evict the dedup records of idle clients that have no
    /// connection here.
    fn evict_idle(&mut self) {
        let every = (self.shared.config.client_expiry / 4).clamp(1, 1024);
        let rev = self.pipeline.revision();
        if rev < self.evicted_at + every {
            return;
        }
        self.evicted_at = rev;
        let online = self.conns.online_clients();
        // (A regional link's record is never evicted: `DocumentHistory` keeps it.)
        self.pipeline.evict_idle(|id| online.contains(id));
    }

    /// A writer's cursor or departure at another node.
    fn on_remote_presence(&mut self, note: PresenceNote) {
        let durable = self.pipeline.durable_rev();
        match &note.cursor {
            None => {
                self.remote_pending.remove(&note.client);
                self.conns.remote_leave(&note.client, note.node);
                return;
            }
            Some(cursor) if cursor.rev > durable => {
                // This node has not read that revision yet: shown once it has.
                if self.remote_pending.len() < MAX_REMOTE_PENDING
                    || self.remote_pending.contains_key(&note.client)
                {
                    self.remote_pending.insert(note.client.clone(), note);
                }
                return;
            }
            Some(_) => {}
        }
        self.remote_pending.remove(&note.client);
        let PresenceNote {
            client,
            node,
            cursor: Some(cursor),
            ..
        } = note
        else {
            return;
        };
        // Too old to map (`None`): its node sends a newer one.
        if let Ok(Some(ranges)) = self.pipeline.map_cursor(cursor.rev, cursor.ranges) {
            self.conns
                .set_remote_presence(client, node, durable, ranges, cursor.name);
        }
    }

    /// Show the waiting remote cursors whose revision this node has reached.
    fn show_remote_pending(&mut self) {
        if self.remote_pending.is_empty() {
            return;
        }
        let durable = self.pipeline.durable_rev();
        let ready: Vec<String> = self
            .remote_pending
            .iter()
            .filter(|(_, note)| note.cursor.as_ref().is_some_and(|c| c.rev <= durable))
            .map(|(client, _)| client.clone())
            .collect();
        for client in ready {
            if let Some(note) = self.remote_pending.remove(&client) {
                self.on_remote_presence(note);
            }
        }
    }

    fn on_cursor(&mut self, conn_id: u64, rev: u64, ranges: Vec<Range>, name: Option<String>) {
        match self.pipeline.map_cursor(rev, ranges) {
            Ok(Some(ranges)) => {
                let rev = self.pipeline.durable_rev();
                self.conns.set_presence(conn_id, rev, ranges, name);
            }
            Ok(None) => {}
            Err(refused) => self
                .conns
                .send_error(conn_id, refused.code, &refused.message, None),
        }
    }

    async fn on_commit(&mut self, done: CommitDone) {
        if self.pipeline.is_stale(&done) {
            return; // a result for ops dropped by an earlier failure
        }
        let rev = match self.pipeline.outcome(done) {
            Ok(rev) => {
                self.lost_races.won();
                rev
            }
            Err(error) => {
                let raced = (error.lost_races().is_some()
                    || matches!(*error, crate::storage::StorageError::Stale { .. }))
                    && self.shared.storage.is_shared();
                if raced && self.on_lost_race().await {
                    return;
                }
                for (conn_id, seq) in self.pipeline.fail(&error) {
                    self.send_storage_error(conn_id, seq);
                }
                self.reload().await;
                return;
            }
        };
        while let Some(durable) = self.pipeline.pop_durable(rev) {
            let Ok(p) = durable else {
                self.reload().await;
                return;
            };
            self.conns.op_durable(p.conn_id, &p.applied);
            if let (Some(link), true) = (&mut self.link, p.conn_id != 0) {
                link.local_durable(p.applied.rev);
            }
            self.shared
                .metrics
                .ack_latency
                .observe(p.received_at.elapsed().as_secs_f64());
            if let Some(ranges) = p.ranges {
                self.conns
                    .set_presence(p.conn_id, p.applied.rev, ranges, None);
            }
        }
        // Ops that became durable may leave the window now.
        self.pipeline.trim();
        for (rev, conn_id, seq) in self.pipeline.ready_acks() {
            self.conns.ack(conn_id, rev, seq);
        }
        self.pump_upstream();
        self.follow_announced_head().await;
        self.show_remote_pending();
    }

    /// Everything of this node is durable: read the ops of a head another
    /// node announced meanwhile, if this node does not have them (else it
    /// would learn of them only at the next announcement or check).
    async fn follow_announced_head(&mut self) {
        if self.pipeline.pending_len() > 0 {
            return;
        }
        if let Some(head) = self.head_announced.take() {
            if head > self.pipeline.durable_rev() {
                self.follow_head(Some(head)).await;
            }
        }
    }

    /// Rebuild the document from storage; a region that does not recover
    /// stops (see `stop_with`).
    /// On storage other nodes write too: a client that resumes from a
    /// revision above this node's head has seen another node's commits.
    /// Catch up first; if storage cannot be read, the join is refused
    /// (1011: retry) rather than answered with an older snapshot, which
    /// would move the client back in the history.
    async fn behind(&mut self, request: &JoinRequest) -> Option<DocError> {
        let client_rev = request.rev?;
        if !self.shared.storage.is_shared()
            || client_rev <= self.pipeline.durable_rev()
            || !self.pipeline.epoch().may_resume(request.epoch)
        {
            return None;
        }
        self.follow_head(None).await;
        let node_rev = self.pipeline.durable_rev();
        (client_rev > node_rev).then_some(DocError::Behind {
            client_rev,
            node_rev,
        })
    }

    /// On storage other nodes write too: take the ops another node
    /// committed after this document's durable head (`head`: the head it
    /// announced; `None`: ask storage), as committed, and send them to every
    /// connection. With ops of its own on their way to storage it reads
    /// nothing: their commit either continues the head or loses the race,
    /// and the reload after a lost race brings the missed ops.
    async fn follow_head(&mut self, head: Option<u64>) {
        if !self.shared.storage.is_shared() || self.pipeline.region().is_some() {
            return;
        }
        if self.pipeline.pending_len() > 0 {
            // Kept for when they are durable (see `follow_announced_head`).
            if let Some(head) = head {
                self.head_announced = self.head_announced.max(Some(head));
            }
            return;
        }
        let from = self.pipeline.durable_rev();
        match head {
            // (Head 0 may be a delete of a document that had no ops.)
            Some(head) if head == from && head > 0 => return,
            Some(head) if head > from => {}
            // A check, or a head that went back: the document may have
            // been deleted at another node.
            _ => {
                if self.deleted_elsewhere().await {
                    tracing::info!(doc = %self.id, "deleted at another node; closing its connections");
                    self.stop_with = Some(CloseCode::DocumentDeleted);
                    return;
                }
            }
        }
        match self.ops_after_durable_head().await {
            Ok(ops) if ops.is_empty() => {}
            Ok(ops) => self.take_committed(ops).await,
            Err(e) => {
                tracing::warn!(doc = %self.id, error = %e, "cannot read the ops another node committed; later");
            }
        }
    }

    /// The ops stored after this document's durable head (another node
    /// committed them), at most [`MAX_CATCH_UP_OPS`].
    async fn ops_after_durable_head(&self) -> Result<Vec<crate::storage::StoredOp>, String> {
        let storage = self.shared.storage.clone();
        let doc = self.id.to_string();
        let from = self.pipeline.durable_rev();
        match tokio::task::spawn_blocking(move || storage.ops(&doc, from, MAX_CATCH_UP_OPS)).await {
            Ok(Ok(ops)) => Ok(ops),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Take `ops`, which another node committed right after the durable
    /// head, and send them to every connection; far behind (as many as were
    /// asked for), or when they do not continue the history, load the
    /// document again instead.
    async fn take_committed(&mut self, ops: Vec<crate::storage::StoredOp>) {
        if ops.len() >= MAX_CATCH_UP_OPS {
            // Far behind: load the document again (from its newest snapshot).
            return self.reload().await;
        }
        match self.pipeline.catch_up(ops) {
            Some(applied) => {
                self.shared.metrics.catch_ups.inc();
                for op in &applied {
                    self.conns.op_durable(0, op);
                }
            }
            None => self.reload().await,
        }
    }

    /// Whether storage says another node deleted this generation of the
    /// document (its id's deleted epoch reached the epoch shown here).
    async fn deleted_elsewhere(&self) -> bool {
        let storage = self.shared.storage.clone();
        let doc = self.id.to_string();
        let shown = self.pipeline.epoch().shown();
        match tokio::task::spawn_blocking(move || storage.deleted_epoch(&doc)).await {
            Ok(Ok(Some(deleted))) => deleted >= shown,
            _ => false,
        }
    }

    async fn reload(&mut self) {
        let before = self.pipeline.durable_rev();
        if !self.pipeline.reload().await {
            self.stop_with = Some(CloseCode::Unavailable);
        }
        if self.pipeline.durable_rev() > before {
            // Another node committed meanwhile (the commit lost the race):
            // everyone here gets what it committed.
            self.shared.metrics.catch_ups.inc();
            match self.pipeline.durable_ops_after(before) {
                Some(ops) => {
                    for op in &ops {
                        self.conns.op_durable(0, op);
                    }
                }
                // Not in memory any more: the clients resume from storage.
                None => self.conns.close_all(CloseCode::Unavailable),
            }
        }
        if let Some(link) = &mut self.link {
            // The link's state came from storage: it resumes from there.
            link.reconnect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OpenDocument;

    #[tokio::test]
    async fn an_actor_that_panics_is_uncounted_from_open_documents() {
        let gauge = prometheus::IntGauge::new("open", "open").unwrap();
        let counted = gauge.clone();
        let died = tokio::spawn(async move {
            let _open = OpenDocument::count(&counted);
            assert_eq!(counted.get(), 1);
            panic!("failpoint: the actor panics");
        })
        .await;
        assert!(died.is_err());
        assert_eq!(gauge.get(), 0);
    }
}
