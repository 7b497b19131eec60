//! The deterministic simulation of the protocol at the frame level, with the
//! real client driver: 2–6 [`SessionCore`]s (the code every Rust client
//! runs) against a simulated server that speaks real frames
//! ([`ServerMessage`] out, [`ClientMessage::parse`] in) over a network that
//! delays messages (each link FIFO), drops connections and closes them with
//! codes. The server's storage fails commits now and then: every op of the
//! failed commit gets `storage_error` and the server reloads from storage,
//! as the real server does. Clients confirm their saved state late (the
//! driver may send nothing before), and restart from the last confirmed
//! state. Frames from a later server (an unknown type, unknown fields) are
//! mixed in. The driver asks for batches (`batch=1`), so the server often
//! delivers several queued frames as one `batch` frame, spliced from their
//! texts as the real server's writer does.
//!
//! After the network drains it checks: every replica equals the server's
//! durable text; the stored log replays to it; each (client, seq) was
//! applied at most once, with contiguous seqs; every inserted character
//! appears at most once; and **no conflict copy was ever made**: with only
//! storage errors and network faults, the error rule (resend on
//! `storage_error`) must never give up an edit.
//!
//! Some seeds announce small limits (`max_op_len` 2–6, 3–5 components), so
//! that edits are split and queued: every op that reaches the server must fit
//! them (the real server refuses it otherwise, and the edit would be lost to
//! a conflict copy).
//!
//! `SIM_SEEDS=N` runs more seeds; a failing seed prints how to replay it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use ot_core::history::{AppliedOp, DocumentHistory, Receipt};
use ot_core::{Operation, Range};
use ot_driver::{CloseAction, Event, SessionCore, SessionState};
use ot_protocol::{ClientMessage, DocId, ErrorCode, Limits, ServerMessage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EPOCH: u64 = 1;

/// A frame on its way to a client.
enum ToClient {
    Text(String),
    Close(u16),
}

struct Conn {
    client: usize,
    /// The client asked for batches (`batch=1`).
    batch: bool,
    to_server: VecDeque<String>,
    to_client: VecDeque<ToClient>,
}

struct Server {
    history: DocumentHistory,
    /// Durable ops, in revision order.
    storage: Vec<AppliedOp>,
    /// Applied in memory, not yet committed: (op, sender connection).
    uncommitted: Vec<(AppliedOp, u64)>,
    /// Acks for resends whose original is not durable yet: (rev, conn, seq).
    deferred: Vec<(u64, u64, u64)>,
    /// The limits announced in every first message.
    limits: Limits,
}

impl Server {
    fn durable_rev(&self) -> u64 {
        self.storage.len() as u64
    }

    fn durable_text(&self) -> String {
        replay(&self.storage)
    }

    fn durable_seq(&self, client: &str) -> u64 {
        self.storage
            .iter()
            .filter(|a| &*a.client_id == client)
            .map(|a| a.seq)
            .max()
            .unwrap_or(0)
    }

    /// Rebuild the in-memory state from storage (after a failed commit).
    fn reload(&mut self) {
        self.uncommitted.clear();
        self.deferred.clear();
        self.history =
            DocumentHistory::from_snapshot(DocumentHistory::new().snapshot(), self.storage.clone())
                .unwrap();
    }
}

fn replay(ops: &[AppliedOp]) -> String {
    ops.iter()
        .fold(String::new(), |text, a| a.op.apply(&text).unwrap())
}

struct Client {
    core: SessionCore,
    /// The last state the "disk" holds (confirmed durable).
    saved: SessionState,
    conn: Option<u64>,
    conflict_copies: usize,
}

struct Sim {
    rng: ChaCha8Rng,
    seed: u64,
    server: Server,
    clients: Vec<Client>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    next_char: u32,
    log: VecDeque<String>,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    applied: u64,
    storage_errors: u64,
    drops: u64,
    client_restarts: u64,
    /// Local edits after which two or more ops were queued.
    queues: u64,
    /// Frames of two or more messages delivered as one batch.
    batches: u64,
}

fn doc() -> DocId {
    DocId::parse("sim").unwrap()
}

/// A character no other edit inserts (so duplicates are visible).
fn unique_char(n: u32) -> char {
    // Skip the surrogate range; stay in the BMP's letters and beyond.
    let code = 0x4E00 + n;
    char::from_u32(if code >= 0xD800 { code + 0x800 } else { code }).unwrap()
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.random_range(2..=6);
        let limits = if rng.random_bool(0.4) {
            Limits {
                max_op_len: rng.random_range(2..=6),
                max_op_components: rng.random_range(3..=5),
                ..Limits::default()
            }
        } else {
            Limits::default()
        };
        let clients = (0..n)
            .map(|i| {
                let core = SessionCore::new(doc(), &format!("c{i}"));
                Client {
                    saved: core.state(),
                    core,
                    conn: None,
                    conflict_copies: 0,
                }
            })
            .collect();
        Sim {
            rng,
            seed,
            server: Server {
                history: DocumentHistory::new(),
                storage: Vec::new(),
                uncommitted: Vec::new(),
                deferred: Vec::new(),
                limits,
            },
            clients,
            conns: BTreeMap::new(),
            next_conn: 1,
            next_char: 0,
            log: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn note(&mut self, line: String) {
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    fn fail(&self, what: &str) -> ! {
        let log: Vec<&str> = self.log.iter().map(String::as_str).collect();
        panic!(
            "seed {}: {what}\nlast events:\n  {}\nreplay: SIM_SEED={} cargo test -p ot-driver --test simulation replay_one -- --ignored --nocapture",
            self.seed,
            log.join("\n  "),
            self.seed
        );
    }

    // ---------- clients ----------

    fn local_edit(&mut self, i: usize) {
        // A writer that has never synced edits a text it has not seen yet:
        // on its first snapshot ot-core keeps such edits as a conflict copy
        // (they cannot be placed safely), which this run would count as lost.
        if !self.clients[i].core.synced() {
            return;
        }
        let text = self.clients[i].core.client().text().to_string();
        let len = text.chars().count();
        let op = if len > 0 && self.rng.random_bool(0.3) {
            let pos = self.rng.random_range(0..len);
            let n = self.rng.random_range(1..=(len - pos).min(3));
            Operation::replace_range(len, pos, n, "")
        } else {
            let pos = self.rng.random_range(0..=len);
            let count = self.rng.random_range(1..=3);
            let inserted: String = (0..count)
                .map(|_| {
                    self.next_char += 1;
                    unique_char(self.next_char)
                })
                .collect();
            Operation::replace_range(len, pos, 0, &inserted)
        };
        let op = op.unwrap();
        let cursor = Some(vec![Range::cursor(0)]);
        self.clients[i].core.local_edit(&op, cursor).unwrap();
        if self.clients[i].core.client().unacknowledged() > 2 {
            self.stats.queues += 1;
        }
        self.note(format!("c{i} edit {}", op.to_json()));
        self.pump_out(i);
    }

    /// The client's "disk write" finished: everything so far is durable.
    fn save(&mut self, i: usize) {
        let client = &mut self.clients[i];
        client.saved = client.core.state();
        let version = client.core.version();
        client.core.confirm_durable(version);
        self.pump_out(i);
    }

    /// Move what the core lets out onto the client's connection.
    fn pump_out(&mut self, i: usize) {
        while let Some(text) = self.clients[i].core.poll_transmit() {
            let Some(id) = self.clients[i].conn else {
                self.fail("a frame to send while not connected");
            };
            let parsed = ClientMessage::parse(&text)
                .unwrap_or_else(|e| self.fail(&format!("the driver sent an invalid frame: {e:?}")));
            if let ClientMessage::Op { seq, .. } = parsed {
                let saved_seq = self.clients[i].saved.client.next_seq;
                if seq >= saved_seq {
                    self.fail(&format!(
                        "c{i} sent seq {seq} before a state that assigned it was saved"
                    ));
                }
            }
            self.conns.get_mut(&id).unwrap().to_server.push_back(text);
        }
    }

    fn restart_client(&mut self, i: usize) {
        self.stats.client_restarts += 1;
        if let Some(id) = self.clients[i].conn.take() {
            self.conns.remove(&id);
        }
        let saved = self.clients[i].saved.clone();
        self.clients[i].core = SessionCore::restore(doc(), saved).unwrap();
        self.note(format!("c{i} restart"));
    }

    fn connect(&mut self, i: usize) {
        if self.clients[i].conn.is_some() {
            return;
        }
        let path = self.clients[i].core.connect_path();
        let query: HashMap<&str, &str> = path
            .split_once('?')
            .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
            .unwrap_or_default();
        let client_id = query.get("client").copied().unwrap_or_default().to_owned();
        let rev: Option<u64> = query.get("rev").map(|r| r.parse().unwrap());
        let epoch: Option<u64> = query.get("epoch").map(|e| e.parse().unwrap());
        let id = self.next_conn;
        self.next_conn += 1;
        self.note(format!("c{i} connect #{id} {path}"));
        let durable = self.server.durable_rev();
        let seq = self.server.durable_seq(&client_id);
        let limits = self.server.limits;
        let mut to_client = VecDeque::new();
        match rev.filter(|r| *r <= durable && epoch == Some(EPOCH)) {
            Some(rev) => {
                to_client.push_back(ToClient::Text(
                    ServerMessage::Resume {
                        rev,
                        head: durable,
                        client: client_id.as_str().into(),
                        seq,
                        epoch: EPOCH,
                        limits,
                        access: ot_protocol::Access::Write,
                        last_hash: None,
                    }
                    .to_text(),
                ));
                for a in &self.server.storage[rev as usize..] {
                    to_client.push_back(ToClient::Text(op_frame(a)));
                }
            }
            None => {
                let text = self.server.durable_text();
                to_client.push_back(ToClient::Text(
                    ServerMessage::Snapshot {
                        rev: durable,
                        text: text.as_str().into(),
                        client: client_id.as_str().into(),
                        seq,
                        epoch: EPOCH,
                        limits,
                        access: ot_protocol::Access::Write,
                        last_hash: None,
                    }
                    .to_text(),
                ));
            }
        }
        self.conns.insert(
            id,
            Conn {
                client: i,
                batch: query.get("batch") == Some(&"1"),
                to_server: VecDeque::new(),
                to_client,
            },
        );
        self.clients[i].conn = Some(id);
        self.clients[i].core.on_open();
    }

    fn drop_conn(&mut self, id: u64) {
        if let Some(conn) = self.conns.remove(&id) {
            self.stats.drops += 1;
            let i = conn.client;
            self.clients[i].conn = None;
            self.clients[i].core.on_closed(None, "network cut");
            self.note(format!("drop #{id} (c{i})"));
        }
    }

    fn deliver_to_client(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(mut frame) = conn.to_client.pop_front() else {
            return;
        };
        let i = conn.client;
        if let (true, ToClient::Text(first)) = (conn.batch, &frame) {
            // Up to 5 frames already queued go as one batch.
            let mut messages = vec![first.clone()];
            let most = self.rng.random_range(1..=5);
            while messages.len() < most {
                match conn.to_client.front() {
                    Some(ToClient::Text(_)) => {
                        if let Some(ToClient::Text(next)) = conn.to_client.pop_front() {
                            messages.push(next);
                        }
                    }
                    _ => break,
                }
            }
            if messages.len() > 1 {
                self.stats.batches += 1;
                frame = ToClient::Text(format!(
                    r#"{{"type":"batch","messages":[{}]}}"#,
                    messages.join(",")
                ));
            }
        }
        let events = match frame {
            ToClient::Text(text) => {
                self.note(format!("#{id} -> c{i}: {text}"));
                self.clients[i].core.receive(&text)
            }
            ToClient::Close(code) => {
                self.note(format!("#{id} -> c{i}: close {code}"));
                vec![self.clients[i].core.on_closed(Some(code), "closed")]
            }
        };
        for event in &events {
            match event {
                Event::ConflictCopy(_) => {
                    self.clients[i].conflict_copies += 1;
                    self.fail(&format!("c{i} gave up an edit: {events:?}"));
                }
                Event::Disconnected { action, .. } => {
                    if *action == CloseAction::Stop {
                        self.fail("told to stop for good");
                    }
                    self.conns.remove(&id);
                    self.clients[i].conn = None;
                }
                _ => {}
            }
        }
        if self.clients[i].conn.is_some() {
            self.pump_out(i);
        }
    }

    fn deliver_to_server(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(text) = conn.to_server.pop_front() else {
            return;
        };
        let i = conn.client;
        let client_id = format!("c{i}");
        let message = ClientMessage::parse(&text).unwrap();
        let ClientMessage::Op { rev, seq, op, .. } = message else {
            return; // cursors: presence is not simulated here
        };
        self.note(format!("c{i} -> #{id}: {text}"));
        // What the server's reader checks before anything else.
        let size = op.change_size();
        let limits = self.server.limits;
        if size > limits.max_op_len || op.components().len() > limits.max_op_components {
            self.fail(&format!("c{i} sent an op beyond the limits {limits:?}"));
        }
        match self
            .server
            .history
            .receive(&client_id, seq, rev, op.clone())
        {
            Ok(Receipt::Applied { applied, received }) => {
                if received != op {
                    self.fail("the receipt does not carry the op as received");
                }
                self.server.uncommitted.push((applied, id));
            }
            Ok(Receipt::Duplicate { seq, rev }) => {
                let rev = rev.unwrap_or_else(|| {
                    self.server
                        .storage
                        .iter()
                        .find(|a| *a.client_id == *client_id && a.seq == seq)
                        .map(|a| a.rev)
                        .unwrap_or_else(|| self.fail("a duplicate not in storage"))
                });
                if rev <= self.server.durable_rev() {
                    let ack = ServerMessage::Ack { rev, seq }.to_text();
                    self.send_to(id, ToClient::Text(ack));
                } else {
                    self.server.deferred.push((rev, id, seq));
                }
            }
            Err(e) => self.fail(&format!("the server refused a correct client's op: {e}")),
        }
    }

    fn send_to(&mut self, id: u64, frame: ToClient) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.to_client.push_back(frame);
        }
    }

    // ---------- server ----------

    fn commit(&mut self, may_fail: bool) {
        if self.server.uncommitted.is_empty() {
            return;
        }
        if may_fail && self.rng.random_bool(0.2) {
            self.stats.storage_errors += 1;
            self.note("commit FAILS".to_owned());
            let failed: Vec<(u64, u64)> = self
                .server
                .uncommitted
                .iter()
                .map(|(a, conn)| (*conn, a.seq))
                .chain(self.server.deferred.iter().map(|(_, c, s)| (*c, *s)))
                .collect();
            for (conn, seq) in failed {
                let error = ServerMessage::Error {
                    code: ErrorCode::StorageError.into(),
                    message: "the op could not be stored and was not applied".into(),
                    seq: Some(seq),
                }
                .to_text();
                self.send_to(conn, ToClient::Text(error));
            }
            self.server.reload();
            return;
        }
        let batch = std::mem::take(&mut self.server.uncommitted);
        self.note(format!("commit {} ops", batch.len()));
        for (applied, sender) in batch {
            self.stats.applied += 1;
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                let frame = if id == sender {
                    ServerMessage::Ack {
                        rev: applied.rev,
                        seq: applied.seq,
                    }
                    .to_text()
                } else {
                    op_frame(&applied)
                };
                self.send_to(id, ToClient::Text(frame));
            }
            self.server.storage.push(applied);
        }
        let durable = self.server.durable_rev();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.server.deferred)
            .into_iter()
            .partition(|(rev, _, _)| *rev <= durable);
        self.server.deferred = waiting;
        for (rev, id, seq) in ready {
            self.send_to(
                id,
                ToClient::Text(ServerMessage::Ack { rev, seq }.to_text()),
            );
        }
    }

    /// Frames a later server version might send: every client must skip them.
    fn later_server_frame(&mut self) {
        let Some(id) = self.random_conn() else {
            return;
        };
        let frame = if self.rng.random_bool(0.5) {
            r#"{"type":"presence_v2","who":[1,2],"rev":3}"#
        } else {
            r#"{"type":"error","code":"a_later_code","message":"about nothing you sent"}"#
        };
        self.send_to(id, ToClient::Text(frame.to_owned()));
    }

    fn random_conn(&mut self) -> Option<u64> {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())])
    }

    // ---------- driving ----------

    fn step(&mut self) {
        let n = self.clients.len();
        let i = self.rng.random_range(0..n);
        match self.rng.random_range(0..100) {
            0..=21 => self.local_edit(i),
            22..=33 => self.save(i),
            34..=38 => self.connect(i),
            39..=58 => {
                if let Some(id) = self.random_conn() {
                    self.deliver_to_client(id);
                }
            }
            59..=78 => {
                if let Some(id) = self.random_conn() {
                    self.deliver_to_server(id);
                }
            }
            79..=88 => self.commit(true),
            89..=91 => {
                if let Some(id) = self.random_conn() {
                    self.drop_conn(id);
                }
            }
            92 => {
                // A close the client must come back from (1001, 4008, or a
                // later server's code).
                if let Some(id) = self.random_conn() {
                    let code = [1001, 4008, 4321][self.rng.random_range(0..3)];
                    self.send_to(id, ToClient::Close(code));
                }
            }
            93..=94 => self.restart_client(i),
            _ => self.later_server_frame(),
        }
    }

    /// No more faults: connect everyone, deliver everything, commit, save,
    /// until every edit is acknowledged and every replica is current.
    fn drain(&mut self) {
        for _round in 0..10_000 {
            for i in 0..self.clients.len() {
                self.save(i);
                self.connect(i);
            }
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            let mut moved = false;
            for id in ids {
                while self.conns.get(&id).is_some_and(|c| !c.to_server.is_empty()) {
                    self.deliver_to_server(id);
                    moved = true;
                }
                self.commit(false);
                while self.conns.get(&id).is_some_and(|c| !c.to_client.is_empty()) {
                    self.deliver_to_client(id);
                    moved = true;
                }
            }
            self.commit(false);
            let done = self.clients.iter().all(|c| {
                c.conn.is_some()
                    && c.core.client().all_saved()
                    && c.core.client().revision() == self.server.durable_rev()
            }) && self.server.uncommitted.is_empty();
            if done && !moved {
                return;
            }
        }
        self.fail("the network did not drain");
    }

    fn check(&self) {
        let text = self.server.durable_text();
        for (i, c) in self.clients.iter().enumerate() {
            if *c.core.client().text() != text {
                self.fail(&format!("c{i} diverged from the server"));
            }
            if c.conflict_copies > 0 {
                self.fail(&format!(
                    "c{i} made {} conflict copies: an edit was given up",
                    c.conflict_copies
                ));
            }
        }
        let mut seqs: HashMap<String, u64> = HashMap::new();
        for a in &self.server.storage {
            let last = seqs.entry(a.client_id.to_string()).or_insert(0);
            if a.seq != *last + 1 {
                self.fail(&format!(
                    "{} seq {} after {}: not applied exactly once in order",
                    a.client_id, a.seq, last
                ));
            }
            *last = a.seq;
        }
        let mut seen = HashSet::new();
        for ch in text.chars() {
            if !seen.insert(ch) {
                self.fail(&format!("{ch:?} appears twice: an edit was applied twice"));
            }
        }
    }
}

fn op_frame(a: &AppliedOp) -> String {
    ServerMessage::Op {
        rev: a.rev,
        op: std::borrow::Cow::Borrowed(&a.op),
        client: a.client_id.as_ref().into(),
        seq: a.seq,
    }
    .to_text()
}

fn run_seed(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    let steps = sim.rng.random_range(100..600);
    for _ in 0..steps {
        sim.step();
    }
    sim.drain();
    sim.check();
    sim.stats
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn many_seeds_converge_and_never_give_up_an_edit() {
    let count = env_u64("SIM_SEEDS", 2_000);
    let mut total = Stats::default();
    for seed in 0..count {
        let stats = run_seed(seed);
        total.applied += stats.applied;
        total.storage_errors += stats.storage_errors;
        total.drops += stats.drops;
        total.client_restarts += stats.client_restarts;
        total.queues += stats.queues;
        total.batches += stats.batches;
    }
    println!("{count} seeds: {total:?}");
    // The faults were really exercised.
    assert!(total.storage_errors > count / 2, "{total:?}");
    assert!(total.drops > count / 2, "{total:?}");
    assert!(total.client_restarts > count / 2, "{total:?}");
    assert!(total.applied > count * 5, "{total:?}");
    assert!(total.queues > count / 10, "{total:?}");
    assert!(total.batches > count, "{total:?}");
}

#[test]
#[ignore = "replays SIM_SEED"]
fn replay_one() {
    let seed = env_u64("SIM_SEED", 0);
    println!("{:?}", run_seed(seed));
}
