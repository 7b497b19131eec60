//! The server side of the protocol for one document, without I/O.
//!
//! A [`DocumentHistory`] is the single ordering point of a document: it numbers
//! every accepted operation with a revision (revision = number of operations
//! applied since the document was created), transforms a late operation against
//! everything it missed, applies it, and remembers per client the last applied
//! sequence number so that a resent operation is recognised and never applied
//! twice.
//!
//! The caller (the server) is responsible for durability: it persists each
//! [`AppliedOp`] and takes [`snapshot`](DocumentHistory::snapshot)s; after a
//! restart it rebuilds the history with
//! [`from_snapshot`](DocumentHistory::from_snapshot) and the ops stored after it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ropey::Rope;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::error::OtError;
use crate::operation::{Component, Operation};
use crate::text::Text;

/// A stable 128-bit hash of an operation: XXH3-128 of its canonical binary encoding.
///
/// Used to tell a true resend (same client, seq and operation) from a client
/// bug that reuses a sequence number for a different operation. It is
/// persisted (the server stores it with every op), so it is fully specified
/// here and depends only on the canonical operation: never on memory layout,
/// platform, process or hash seeds.
///
/// **Encoding.** The components in order, each as a tag byte and a 64-bit
/// little-endian length:
///
/// | component | bytes |
/// |---|---|
/// | `Retain(n)` | `0x01`, `n` as u64 LE |
/// | `Delete(n)` | `0x02`, `n` as u64 LE |
/// | `Insert(s)` | `0x03`, `s`'s length in UTF-8 bytes as u64 LE, then the UTF-8 bytes of `s` |
///
/// (the no-op on an empty document encodes to no bytes). **Hash.** XXH3-128
/// (xxHash 0.8, seed 0, default secret) of those bytes, stored in its
/// canonical big-endian form: the high 64 bits first. For example
/// `[5,"hi",-2,3]` encodes to `01 0500000000000000 03 0200000000000000 6869
/// 02 0200000000000000 01 0300000000000000`.
///
/// Since operations are canonical, two operations with the same effect have
/// the same hash. Serialised as 32 lowercase hex digits. (Earlier builds
/// hashed the JSON text with BLAKE3: hashes they stored do not match these.)
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpHash(pub [u8; 16]);

/// Tag bytes of the [`OpHash`] encoding.
const TAG_RETAIN: u8 = 0x01;
const TAG_DELETE: u8 = 0x02;
const TAG_INSERT: u8 = 0x03;

impl OpHash {
    /// The hash of `op` (see the type's documentation for the exact encoding).
    pub fn of(op: &Operation) -> OpHash {
        // Encode into a stack buffer when it fits (every typing op does).
        let mut buf = [0u8; STACK_BUF_LEN];
        let hash = match encode(op, &mut buf) {
            Some(len) => xxh3_128(&buf[..len]),
            None => {
                let len = op
                    .components()
                    .iter()
                    .map(|c| match c {
                        Component::Insert(s) => 9 + s.len(),
                        Component::Retain(_) | Component::Delete(_) => 9,
                    })
                    .sum();
                let mut buf = vec![0u8; len];
                let len = encode(op, &mut buf).unwrap_or(0);
                xxh3_128(&buf[..len])
            }
        };
        OpHash(hash.to_be_bytes())
    }

    /// The 32-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse the 32-digit hex form (either case).
    pub fn from_hex(text: &str) -> Option<OpHash> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(OpHash(bytes))
    }
}

/// Size of the stack buffer [`OpHash::of`] encodes small operations into.
const STACK_BUF_LEN: usize = 256;

/// Write `op`'s [`OpHash`] encoding into `buf`; returns its length, or `None`
/// if `buf` is too small.
#[inline]
fn encode(op: &Operation, buf: &mut [u8]) -> Option<usize> {
    let mut at = 0;
    for component in op.components() {
        let (tag, len, text) = match component {
            Component::Retain(n) => (TAG_RETAIN, *n, ""),
            Component::Delete(n) => (TAG_DELETE, *n, ""),
            Component::Insert(s) => (TAG_INSERT, s.len(), s.as_str()),
        };
        let out = buf.get_mut(at..at + 9 + text.len())?;
        let (header, bytes) = out.split_at_mut(9);
        header[0] = tag;
        header[1..].copy_from_slice(&(len as u64).to_le_bytes());
        bytes.copy_from_slice(text.as_bytes());
        at += 9 + text.len();
    }
    Some(at)
}

impl fmt::Debug for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpHash({})", self.to_hex())
    }
}

impl Serialize for OpHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for OpHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        OpHash::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("an op hash must be 32 hex digits"))
    }
}

/// The hash of a writer's secret key (the server computes it; here it is
/// opaque bytes): what a [`ClientRecord`] keeps so that only the key's holder
/// may speak for the client id. Serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// The 64-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse the 64-digit hex form (either case).
    pub fn from_hex(text: &str) -> Option<KeyHash> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(KeyHash(bytes))
    }
}

impl fmt::Debug for KeyHash {
    // Only a prefix: enough to tell two apart in a test failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        KeyHash::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a key hash must be 64 hex digits"))
    }
}

/// What the history remembers about one client (one writer) of the document:
/// the dedup table entry, and the hash of the key the client id is bound to.
///
/// A record made by [`DocumentHistory::bind_key`] before the client's first op
/// has `last_seq` 0 (and `last_rev` 0, a zero `last_hash`, never consulted:
/// the next seq is 1 whatever they hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The last sequence number applied from this client (0: none yet).
    pub last_seq: u64,
    /// The revision that op produced.
    pub last_rev: u64,
    /// The hash of that op as received.
    pub last_hash: OpHash,
    /// The hash of the client's key, once bound; absent for old clients and
    /// data written before keys (serde default, so old snapshots load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<KeyHash>,
}

/// What [`DocumentHistory::bind_key`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// The client id is bound to this key already.
    Matches,
    /// The client id had no key: it is bound to this one now (persist it).
    Bound,
    /// The client id is bound to another key: refuse the connection.
    Mismatch,
}

/// One operation in the history, as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedOp {
    /// The revision this operation created (the first op creates revision 1).
    pub rev: u64,
    /// The client that sent it (shared with the history's dedup table and the
    /// client's other ops, so keeping it costs no allocation).
    pub client_id: Arc<str>,
    /// The client's sequence number for it.
    pub seq: u64,
    /// The revision the client based it on.
    pub base_rev: u64,
    /// Hash of the operation as received (before transformation).
    pub hash: OpHash,
    /// The operation as applied (after transformation past the ops in `base_rev+1..rev`).
    pub op: Operation,
}

impl AppliedOp {
    /// True when the op was transformed past at least one concurrent op:
    /// a detected conflict.
    pub fn is_concurrent(&self) -> bool {
        self.base_rev + 1 < self.rev
    }
}

/// The state of a document at one revision, with its dedup table: enough to
/// rebuild a [`DocumentHistory`] without replaying the ops before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentSnapshot {
    /// The revision of the snapshot.
    pub rev: u64,
    /// The document's text at that revision.
    pub text: String,
    /// The dedup table at that revision, by client id.
    pub clients: HashMap<String, ClientRecord>,
}

/// The outcome of [`DocumentHistory::receive`] for an acceptable operation.
// `Applied` holds two inline operations and is the common case: boxing it
// would cost an allocation per received op.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// The op was new: it was transformed, applied and appended.
    Applied {
        /// The history entry (revision, transformed op, …). Persist it, then ack.
        applied: AppliedOp,
        /// The op exactly as received, for the conflict journal.
        received: Operation,
    },
    /// The (client, seq) was already applied: nothing changed. Answer with the
    /// ack of the original.
    Duplicate {
        /// The resent sequence number.
        seq: u64,
        /// The revision the original produced; `None` when it is older than the
        /// retained history (the caller looks it up, and checks its hash, in storage).
        rev: Option<u64>,
    },
}

/// Why [`DocumentHistory::receive`] rejected an operation. Nothing changed.
///
/// | code | meaning |
/// |---|---|
/// | `seq_reused` | this (client, seq) was applied before with a different operation |
/// | `bad_seq` | the seq is 0 or skips ahead of the client's last applied seq + 1 |
/// | `future_revision` | the base revision is newer than the document |
/// | `revision_too_old` | the base revision is older than the retained history |
/// | `op_does_not_fit` | the op's base length is not the document's length at its base revision |
/// | `client_expired` | the client has no dedup record and its base revision is below the eviction horizon |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    /// The client's dedup record may have been evicted: the op could be a
    /// resend of one already applied, so it is refused (the client resyncs).
    #[error("base revision {base_rev} is below the eviction horizon {horizon} and client {client_id:?} has no record: resync")]
    ClientExpired {
        /// The client.
        client_id: String,
        /// The base revision received.
        base_rev: u64,
        /// The document's eviction horizon.
        horizon: u64,
    },
    /// The same (client, seq) was applied with a different operation.
    #[error("sequence number {seq} was already used for a different operation")]
    SeqReused {
        /// The reused sequence number.
        seq: u64,
    },
    /// The seq is not the next one expected.
    #[error("sequence number {seq} is out of order: expected at most {expected}")]
    BadSeq {
        /// The seq received.
        seq: u64,
        /// The next seq expected from this client.
        expected: u64,
    },
    /// The base revision is in the future.
    #[error("base revision {base_rev} is newer than the document's revision {head}")]
    FutureRevision {
        /// The base revision received.
        base_rev: u64,
        /// The document's revision.
        head: u64,
    },
    /// The base revision is older than the ops kept in memory.
    #[error("base revision {base_rev} is older than the oldest retained revision {oldest}")]
    RevisionTooOld {
        /// The base revision received.
        base_rev: u64,
        /// The oldest revision an op can be based on without older ops.
        oldest: u64,
    },
    /// The op does not fit the document at its base revision.
    #[error("the operation does not fit the document at revision {base_rev}: {source}")]
    DoesNotFit {
        /// The base revision.
        base_rev: u64,
        /// The length mismatch.
        source: OtError,
    },
}

impl ReceiveError {
    /// The stable machine-readable code of this error (see the table above).
    pub fn code(&self) -> &'static str {
        match self {
            ReceiveError::SeqReused { .. } => "seq_reused",
            ReceiveError::BadSeq { .. } => "bad_seq",
            ReceiveError::FutureRevision { .. } => "future_revision",
            ReceiveError::RevisionTooOld { .. } => "revision_too_old",
            ReceiveError::DoesNotFit { .. } => "op_does_not_fit",
            ReceiveError::ClientExpired { .. } => "client_expired",
        }
    }
}

/// Why [`DocumentHistory::roll_back_to`] could not take ops back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollBackError {
    /// The revision is not between the oldest retained one and the head.
    #[error("cannot roll back to revision {rev}: memory holds revisions {oldest}..={head}")]
    NotRetained {
        /// The revision asked for.
        rev: u64,
        /// The oldest revision the retained ops start from.
        oldest: u64,
        /// The current revision.
        head: u64,
    },
    /// The text given is not as long as the document was at that revision.
    #[error("the text given has {found} characters; the document had {expected} at that revision")]
    TextLength {
        /// The length at that revision.
        expected: usize,
        /// The length of the text given.
        found: usize,
    },
}

/// A snapshot and its tail of ops do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The ops after the snapshot are not consecutive revisions.
    #[error("expected the op for revision {expected} but got revision {found}")]
    Gap {
        /// The revision expected next.
        expected: u64,
        /// The revision found.
        found: u64,
    },
    /// A stored op does not apply to the text it follows.
    #[error("stored op for revision {rev} does not apply: {source}")]
    DoesNotApply {
        /// Its revision.
        rev: u64,
        /// The length mismatch.
        source: OtError,
    },
}

/// One document's text, revision, recent operations and dedup table.
#[derive(Debug, Clone, Default)]
pub struct DocumentHistory {
    text: Text,
    revision: u64,
    /// `ops[dropped..]` holds the ops for revisions `oldest + 1 ..= revision`,
    /// in order. `ops[..dropped]` were trimmed but not yet removed: removing
    /// them shifts the whole vector, so that happens only once they are as
    /// many as the retained ops (amortised O(1) per trimmed op).
    ops: Vec<AppliedOp>,
    /// [`op_bytes`] of each of `ops`, at the same index: trimming reads
    /// these, never the old ops themselves (cold in the cache by then).
    op_sizes: Vec<usize>,
    dropped: usize,
    /// Estimated heap bytes of the retained ops (`ops[dropped..]`).
    retained_bytes: usize,
    /// Estimated heap bytes of the trimmed ops not yet removed (`ops[..dropped]`).
    dropped_bytes: usize,
    clients: ClientTable,
    /// The eviction horizon: the highest `last_rev` of any evicted dedup
    /// record (0: none evicted).
    horizon: u64,
}

/// The key under which a snapshot's dedup table carries the eviction
/// horizon (as the `last_rev` of a record). No client id can take it
/// (`#` is outside every id rule), and a snapshot without it (written before
/// eviction existed) loads with horizon 0.
pub const HORIZON_KEY: &str = "#horizon";

/// Estimated heap bytes an applied op holds in the history (its components,
/// their inserted text, and the entry itself).
pub fn op_bytes(applied: &AppliedOp) -> usize {
    std::mem::size_of::<AppliedOp>() + applied.op.heap_bytes()
}

/// A dedup table entry with the client's id, shared with the table's index
/// and with the [`AppliedOp`]s of that client.
#[derive(Debug, Clone)]
struct ClientEntry {
    id: Arc<str>,
    record: ClientRecord,
}

/// The dedup table: entries found by client id through a hash map (std's
/// keyed SipHash: the ids come from clients), and the entry found last is
/// remembered, so that a run of ops from one client (typing) skips the hashing.
#[derive(Debug, Clone, Default)]
struct ClientTable {
    entries: Vec<ClientEntry>,
    index: HashMap<Arc<str>, usize>,
    /// Position in `entries` of the entry found last.
    last: usize,
}

impl ClientTable {
    /// Position of `id`'s entry, if any.
    #[inline]
    fn find(&mut self, id: &str) -> Option<usize> {
        if let Some(entry) = self.entries.get(self.last) {
            if *entry.id == *id {
                return Some(self.last);
            }
        }
        let found = *self.index.get(id)?;
        self.last = found;
        Some(found)
    }

    fn get(&self, id: &str) -> Option<&ClientRecord> {
        match self.entries.get(self.last) {
            Some(entry) if *entry.id == *id => Some(&entry.record),
            _ => self.index.get(id).map(|&i| &self.entries[i].record),
        }
    }

    /// Add a client that has no entry yet; returns its position.
    fn insert(&mut self, id: Arc<str>, record: ClientRecord) -> usize {
        let position = self.entries.len();
        self.index.insert(Arc::clone(&id), position);
        self.entries.push(ClientEntry { id, record });
        self.last = position;
        position
    }

    /// Set the record of `id` (adding it if new).
    fn set(&mut self, id: &Arc<str>, record: ClientRecord) {
        match self.find(id) {
            Some(i) => self.entries[i].record = record,
            None => {
                self.insert(Arc::clone(id), record);
            }
        }
    }
}

impl DocumentHistory {
    /// A new, empty document at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuild a history from a snapshot and the ops stored after it (in
    /// revision order, starting at `snapshot.rev + 1`). The tail becomes the
    /// retained history.
    pub fn from_snapshot(
        snapshot: DocumentSnapshot,
        tail: impl IntoIterator<Item = AppliedOp>,
    ) -> Result<Self, RestoreError> {
        let mut history = DocumentHistory {
            text: Text::from(snapshot.text.as_str()),
            revision: snapshot.rev,
            ops: Vec::new(),
            op_sizes: Vec::new(),
            dropped: 0,
            retained_bytes: 0,
            dropped_bytes: 0,
            clients: ClientTable::default(),
            horizon: 0,
        };
        for (id, record) in snapshot.clients {
            if id == HORIZON_KEY {
                history.horizon = record.last_rev;
            } else {
                history.clients.insert(id.into(), record);
            }
        }
        for applied in tail {
            history.append_stored(applied)?;
        }
        Ok(history)
    }

    /// Append an op that was already ordered and stored (replay after a restart).
    pub fn append_stored(&mut self, applied: AppliedOp) -> Result<(), RestoreError> {
        if applied.rev != self.revision + 1 {
            return Err(RestoreError::Gap {
                expected: self.revision + 1,
                found: applied.rev,
            });
        }
        self.text
            .apply(&applied.op)
            .map_err(|source| RestoreError::DoesNotApply {
                rev: applied.rev,
                source,
            })?;
        self.revision = applied.rev;
        self.remember(&applied);
        self.push(applied);
        Ok(())
    }

    /// Append an applied op to the retained ops.
    fn push(&mut self, applied: AppliedOp) {
        let bytes = op_bytes(&applied);
        self.retained_bytes += bytes;
        self.op_sizes.push(bytes);
        self.ops.push(applied);
    }

    fn remember(&mut self, applied: &AppliedOp) {
        let key_hash = self
            .clients
            .get(&applied.client_id)
            .and_then(|r| r.key_hash);
        let record = ClientRecord {
            last_seq: applied.seq,
            last_rev: applied.rev,
            last_hash: applied.hash,
            key_hash,
        };
        self.clients.set(&applied.client_id, record);
    }

    /// Undo a binding to `key` whose write failed (so that the id is bound
    /// only as durably as storage has it); any other binding stays.
    pub fn unbind_key(&mut self, client_id: &str, key: KeyHash) {
        if let Some(i) = self.clients.find(client_id) {
            let record = &mut self.clients.entries[i].record;
            if record.key_hash == Some(key) {
                record.key_hash = None;
            }
        }
    }

    /// The key hash `client_id` is bound to, if any.
    pub fn key_of(&self, client_id: &str) -> Option<KeyHash> {
        self.clients.get(client_id).and_then(|r| r.key_hash)
    }

    /// Check `key` against the key `client_id` is bound to, binding the id to
    /// `key` if it has none yet (the first key presented wins; a binding never
    /// changes). The caller persists a [`KeyCheck::Bound`].
    pub fn bind_key(&mut self, client_id: &str, key: KeyHash) -> KeyCheck {
        match self.clients.find(client_id) {
            Some(i) => {
                let record = &mut self.clients.entries[i].record;
                match record.key_hash {
                    Some(bound) if bound == key => KeyCheck::Matches,
                    Some(_) => KeyCheck::Mismatch,
                    None => {
                        record.key_hash = Some(key);
                        KeyCheck::Bound
                    }
                }
            }
            None => {
                self.clients.insert(
                    client_id.into(),
                    ClientRecord {
                        last_seq: 0,
                        last_rev: 0,
                        last_hash: OpHash::default(),
                        key_hash: Some(key),
                    },
                );
                KeyCheck::Bound
            }
        }
    }

    /// The current revision (number of ops applied since creation).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The current text.
    pub fn text(&self) -> &Rope {
        self.text.rope()
    }

    /// The current text's length in chars (kept, not counted).
    pub fn len_chars(&self) -> usize {
        self.text.len_chars()
    }

    /// The oldest revision an op can be based on with the retained ops alone.
    pub fn oldest_revision(&self) -> u64 {
        self.revision - self.retained_ops().len() as u64
    }

    /// The retained ops, oldest first.
    pub fn retained_ops(&self) -> &[AppliedOp] {
        &self.ops[self.dropped..]
    }

    /// The ops after revision `rev` (for a resume), or `None` if some of them
    /// are no longer retained or `rev` is in the future.
    pub fn ops_since(&self, rev: u64) -> Option<&[AppliedOp]> {
        let oldest = self.oldest_revision();
        if rev < oldest || rev > self.revision {
            return None;
        }
        Some(&self.retained_ops()[(rev - oldest) as usize..])
    }

    /// The dedup entry of a client, if it ever had an op applied.
    pub fn client(&self, client_id: &str) -> Option<&ClientRecord> {
        self.clients.get(client_id)
    }

    /// The last seq applied from `client_id` (0 if none).
    pub fn last_seq(&self, client_id: &str) -> u64 {
        self.clients.get(client_id).map_or(0, |r| r.last_seq)
    }

    /// The current state with its dedup table.
    pub fn snapshot(&self) -> DocumentSnapshot {
        let mut clients: HashMap<String, ClientRecord> = self
            .clients
            .entries
            .iter()
            .map(|e| (e.id.to_string(), e.record.clone()))
            .collect();
        if self.horizon > 0 {
            clients.insert(HORIZON_KEY.to_owned(), horizon_record(self.horizon));
        }
        DocumentSnapshot {
            rev: self.revision,
            text: self.text.rope().to_string(),
            clients,
        }
    }

    /// Keep only the last `keep` ops in memory (older ones live in storage).
    /// Cheap to call after every op: trimmed ops are freed in batches.
    pub fn trim_to(&mut self, keep: usize) {
        self.trim_to_bytes(keep, usize::MAX, 0);
    }

    /// Keep at most the last `keep` ops in memory, and fewer while they hold
    /// more than `max_bytes` (estimated by [`op_bytes`]), but never fewer than
    /// `min_keep` (ops still on their way to storage). Trimmed ops are freed
    /// in batches, or at once when they hold more than `max_bytes` (their
    /// memory is what the byte bound is for).
    pub fn trim_to_bytes(&mut self, keep: usize, max_bytes: usize, min_keep: usize) {
        let retained = self.ops.len() - self.dropped;
        let extra = retained.saturating_sub(keep.max(min_keep));
        self.drop_oldest(extra);
        while self.retained_bytes > max_bytes && self.ops.len() - self.dropped > min_keep {
            self.drop_oldest(1);
        }
        if self.dropped > 0 && (self.dropped >= keep || self.dropped_bytes > max_bytes) {
            self.ops.drain(..self.dropped);
            self.op_sizes.drain(..self.dropped);
            self.dropped = 0;
            self.dropped_bytes = 0;
        }
    }

    /// Mark the `count` oldest retained ops as trimmed.
    fn drop_oldest(&mut self, count: usize) {
        for &bytes in &self.op_sizes[self.dropped..self.dropped + count] {
            self.retained_bytes -= bytes;
            self.dropped_bytes += bytes;
        }
        self.dropped += count;
    }

    /// Estimated heap bytes of the retained ops.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// The eviction horizon: the highest revision of any evicted dedup
    /// record (0: none evicted).
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Evict the dedup records of clients whose last op is at least
    /// `expiry` revisions behind the head (key bindings stay, as records
    /// with no seq), raising the horizon to the highest evicted revision.
    /// Returns the evicted client ids. A record whose op is in `keep_after`'s
    /// future (revision > `keep_after`, not durable yet) is never evicted,
    /// nor the record of a client `keep` names (one still connected), nor a
    /// regional link's ([`crate::region::is_link_id`]).
    pub fn evict_idle(
        &mut self,
        expiry: u64,
        keep_after: u64,
        keep: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let Some(limit) = self.revision.checked_sub(expiry) else {
            return Vec::new();
        };
        let limit = limit.min(keep_after);
        let mut evicted = Vec::new();
        let mut horizon = self.horizon;
        let old = std::mem::take(&mut self.clients);
        for entry in old.entries {
            let record = &entry.record;
            // A regional link's record is kept however long its region is
            // cut off: its resend after a partition must still be recognised.
            let link = crate::region::is_link_id(&entry.id);
            if record.last_seq > 0 && record.last_rev <= limit && !keep(&entry.id) && !link {
                horizon = horizon.max(record.last_rev);
                evicted.push(entry.id.to_string());
                if let Some(key_hash) = record.key_hash {
                    self.clients.insert(entry.id, key_record(key_hash));
                }
            } else {
                self.clients.insert(entry.id, entry.record);
            }
        }
        self.horizon = horizon;
        evicted
    }

    /// Take back every op after revision `rev` (ops applied in memory whose
    /// commit lost a race to another writer of the same storage), leaving the
    /// history as it was at `rev` with `text`, the text at `rev` (the caller
    /// keeps it: the ops alone cannot be inverted without the text they
    /// deleted). Each client whose ops are taken back gets the record of its
    /// previous op (seqs are contiguous: the seq before the first one taken
    /// back), with its revision and hash when that op is still retained,
    /// else revision 0 (unknown: a resend of it is looked up in storage).
    /// Key bindings and the horizon are kept. Nothing changes on an error.
    pub fn roll_back_to(&mut self, rev: u64, text: Rope) -> Result<(), RollBackError> {
        if rev > self.revision || rev < self.oldest_revision() {
            return Err(RollBackError::NotRetained {
                rev,
                oldest: self.oldest_revision(),
                head: self.revision,
            });
        }
        let keep = self.ops.len() - (self.revision - rev) as usize;
        let expected = self.ops[keep..]
            .first()
            .map_or(self.text.len_chars(), |first| first.op.base_len());
        let text = Text::from_rope(text);
        if text.len_chars() != expected {
            return Err(RollBackError::TextLength {
                expected,
                found: text.len_chars(),
            });
        }
        let taken: Vec<AppliedOp> = self.ops.drain(keep..).collect();
        for bytes in self.op_sizes.drain(keep..) {
            self.retained_bytes -= bytes;
        }
        // Latest first, so each client ends with the record before its first op taken back.
        for op in taken.iter().rev() {
            let previous = op.seq - 1;
            let known = self.ops[self.dropped..]
                .iter()
                .rev()
                .find(|a| a.client_id == op.client_id && a.seq == previous);
            let Some(i) = self.clients.find(&op.client_id) else {
                continue;
            };
            let record = &mut self.clients.entries[i].record;
            record.last_seq = previous;
            record.last_rev = known.map_or(0, |a| a.rev);
            record.last_hash = known.map_or(OpHash::default(), |a| a.hash);
        }
        self.text = text;
        self.revision = rev;
        Ok(())
    }

    /// A snapshot at the durable revision `rev` with text `text`, for a
    /// history that also holds ops after `rev` which were lost (a failed
    /// commit) and cannot be reloaded: the dedup table is kept, each
    /// record rolled back to the client's durable seq (`durable_seq`, 0 if
    /// none): from the retained ops when they show it, else with revision 0
    /// (unknown: a resend of it is looked up in storage). Key bindings and
    /// the horizon are kept.
    pub fn durable_snapshot(
        &self,
        rev: u64,
        text: String,
        durable_seq: impl Fn(&str) -> u64,
    ) -> DocumentSnapshot {
        let mut clients = HashMap::new();
        for entry in &self.clients.entries {
            let record = &entry.record;
            let rolled_back = if record.last_rev <= rev {
                record.clone()
            } else {
                let seq = durable_seq(&entry.id);
                let known = self
                    .retained_ops()
                    .iter()
                    .rev()
                    .find(|a| a.rev <= rev && a.client_id == entry.id && a.seq == seq);
                ClientRecord {
                    last_seq: seq,
                    last_rev: known.map_or(0, |a| a.rev),
                    last_hash: known.map_or(OpHash::default(), |a| a.hash),
                    key_hash: record.key_hash,
                }
            };
            if rolled_back.last_seq > 0 || rolled_back.key_hash.is_some() {
                clients.insert(entry.id.to_string(), rolled_back);
            }
        }
        if self.horizon > 0 {
            clients.insert(HORIZON_KEY.to_owned(), horizon_record(self.horizon));
        }
        DocumentSnapshot { rev, text, clients }
    }

    /// Receive `op` from `client_id` with sequence number `seq`, based on
    /// revision `base_rev`.
    ///
    /// Dedup comes first: a seq at or below the client's last applied seq is a
    /// [`Receipt::Duplicate`] (or [`ReceiveError::SeqReused`] if the op differs)
    /// whatever its base revision. Otherwise the op is transformed against every
    /// op after `base_rev` (the incoming op as `a`, so its inserts win ties),
    /// applied and appended. On any error nothing changes.
    pub fn receive(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        op: Operation,
    ) -> Result<Receipt, ReceiveError> {
        self.receive_with_older(client_id, seq, base_rev, op, &[])
    }

    /// Like [`receive`](Self::receive) for an op based on a revision older than
    /// the retained history: `older` holds the applied ops for revisions
    /// `base_rev + 1 ..= oldest_revision()`, read from storage by the caller.
    pub fn receive_with_older(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        op: Operation,
        older: &[Operation],
    ) -> Result<Receipt, ReceiveError> {
        let hash = OpHash::of(&op);
        let oldest = self.oldest_revision();
        let position = match self.check_resend(client_id, seq, hash, base_rev)? {
            Ok(position) => position,
            Err(receipt) => return Ok(receipt),
        };
        if base_rev > self.revision {
            return Err(ReceiveError::FutureRevision {
                base_rev,
                head: self.revision,
            });
        }
        if base_rev < oldest && (oldest - base_rev) as usize != older.len() {
            return Err(ReceiveError::RevisionTooOld { base_rev, oldest });
        }
        let older: &[Operation] = if base_rev < oldest { older } else { &[] };
        let transformed = self.transform_to_head(&op, base_rev, base_rev, older)?;
        Ok(self.apply(position, client_id, seq, base_rev, hash, transformed, op))
    }

    /// The dedup check every receive starts with: `Err(receipt)` for an op
    /// this client sent before (a resend: nothing to apply), otherwise the
    /// client's place in the dedup table, looked up once so that its entry
    /// is updated in place when the op is applied.
    fn check_resend(
        &mut self,
        client_id: &str,
        seq: u64,
        hash: OpHash,
        base_rev: u64,
    ) -> Result<Result<Option<usize>, Receipt>, ReceiveError> {
        let position = self.clients.find(client_id);
        let record = position.map(|i| &self.clients.entries[i].record);
        let checked = check_seq(
            self.retained_ops(),
            client_id,
            record,
            seq,
            hash,
            base_rev,
            self.horizon,
        )?;
        Ok(checked.map_or(Ok(position), Err))
    }

    /// Receive an op that was transformed elsewhere (off the caller's main
    /// task, from stored ops) from its base revision `base_rev` up to revision
    /// `rebased_rev`: `received` is the op as the client sent it (for dedup
    /// and the journal), `rebased` the op transformed past the ops in
    /// `base_rev + 1 ..= rebased_rev`.
    ///
    /// The dedup check comes first, as in [`receive`](Self::receive) (the
    /// same (client, seq) may have been applied while the op was being
    /// rebased). [`ReceiveError::RevisionTooOld`] (with `base_rev` =
    /// `rebased_rev`) means more ops than the retained window arrived
    /// meanwhile: rebase further and call again. On any error nothing changes.
    pub fn receive_rebased(
        &mut self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        received: Operation,
        rebased: Operation,
        rebased_rev: u64,
    ) -> Result<Receipt, ReceiveError> {
        let hash = OpHash::of(&received);
        let position = match self.check_resend(client_id, seq, hash, base_rev)? {
            Ok(position) => position,
            Err(receipt) => return Ok(receipt),
        };
        if rebased_rev > self.revision || base_rev > rebased_rev {
            return Err(ReceiveError::FutureRevision {
                base_rev: rebased_rev,
                head: self.revision,
            });
        }
        let oldest = self.oldest_revision();
        if rebased_rev < oldest {
            return Err(ReceiveError::RevisionTooOld {
                base_rev: rebased_rev,
                oldest,
            });
        }
        let transformed = self.transform_to_head(&rebased, base_rev, rebased_rev, &[])?;
        Ok(self.apply(
            position,
            client_id,
            seq,
            base_rev,
            hash,
            transformed,
            received,
        ))
    }

    /// `op` (based on revision `from`, `older` holding stored ops before the
    /// retained window) transformed past every op after `from`, the incoming
    /// op as `a`. `base_rev` only names the client's base in errors.
    fn transform_to_head(
        &self,
        op: &Operation,
        base_rev: u64,
        from: u64,
        older: &[Operation],
    ) -> Result<Operation, ReceiveError> {
        let oldest = self.oldest_revision();
        let retained = &self.retained_ops()[(from.max(oldest) - oldest) as usize..];
        let does_not_fit = |source| ReceiveError::DoesNotFit { base_rev, source };
        let mut concurrent_ops = older
            .iter()
            .chain(retained.iter().map(|a| &a.op))
            .peekable();
        // The document's length at `from` is the base length of the first op after it.
        let len_at_base = concurrent_ops
            .peek()
            .map_or(self.text.len_chars(), |first| first.base_len());
        if op.base_len() != len_at_base {
            return Err(does_not_fit(OtError::LengthMismatch {
                expected: op.base_len(),
                actual: len_at_base,
            }));
        }
        // Transform past every concurrent op (none in the common case, where
        // the op applies as received).
        let mut transformed: Option<Operation> = None;
        for concurrent in concurrent_ops {
            let current = transformed.as_ref().unwrap_or(op);
            transformed = Some(current.transform_first(concurrent).map_err(does_not_fit)?);
        }
        let transformed = transformed.unwrap_or_else(|| op.clone());
        // Checked before anything changes: applying to the rope cannot fail after this.
        if transformed.base_len() != self.text.len_chars() {
            return Err(does_not_fit(OtError::LengthMismatch {
                expected: transformed.base_len(),
                actual: self.text.len_chars(),
            }));
        }
        Ok(transformed)
    }

    /// Apply `transformed` (based on the current revision), record the
    /// client's seq and append the op.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        position: Option<usize>,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        hash: OpHash,
        transformed: Operation,
        received: Operation,
    ) -> Receipt {
        if let Err(e) = self.text.apply(&transformed) {
            // Unreachable: transform_to_head checked the length.
            debug_assert!(false, "a checked op did not apply: {e}");
        }
        self.revision += 1;
        let position = match position {
            Some(i) => {
                let record = &mut self.clients.entries[i].record;
                record.last_seq = seq;
                record.last_rev = self.revision;
                record.last_hash = hash;
                i
            }
            None => self.clients.insert(
                client_id.into(),
                ClientRecord {
                    last_seq: seq,
                    last_rev: self.revision,
                    last_hash: hash,
                    key_hash: None,
                },
            ),
        };
        let client_id = Arc::clone(&self.clients.entries[position].id);
        let applied = AppliedOp {
            rev: self.revision,
            client_id,
            seq,
            base_rev,
            hash,
            op: transformed,
        };
        self.push(applied.clone());
        Receipt::Applied { applied, received }
    }
}

/// The record a snapshot carries the horizon in (under [`HORIZON_KEY`]).
fn horizon_record(horizon: u64) -> ClientRecord {
    ClientRecord {
        last_seq: 0,
        last_rev: horizon,
        last_hash: OpHash::default(),
        key_hash: None,
    }
}

/// A record that only binds a key (no op applied, or its record evicted).
fn key_record(key_hash: KeyHash) -> ClientRecord {
    ClientRecord {
        last_seq: 0,
        last_rev: 0,
        last_hash: OpHash::default(),
        key_hash: Some(key_hash),
    }
}

/// Dedup check against the client's `record` and the retained `ops`:
/// `Some(receipt)` for a duplicate, `None` for the next seq.
///
/// A client with no dedup record (none, or a key binding only) whose base
/// revision is below the eviction `horizon` may be an evicted writer
/// resending an op that was applied: [`ReceiveError::ClientExpired`], before
/// the seq rules (its seq may be any).
fn check_seq(
    ops: &[AppliedOp],
    client_id: &str,
    record: Option<&ClientRecord>,
    seq: u64,
    hash: OpHash,
    base_rev: u64,
    horizon: u64,
) -> Result<Option<Receipt>, ReceiveError> {
    let last_seq = record.map_or(0, |r| r.last_seq);
    // A link's record is never evicted: without one it never sent an op.
    if last_seq == 0 && base_rev < horizon && !crate::region::is_link_id(client_id) {
        return Err(ReceiveError::ClientExpired {
            client_id: client_id.to_owned(),
            base_rev,
            horizon,
        });
    }
    if seq == 0 || seq > last_seq + 1 {
        return Err(ReceiveError::BadSeq {
            seq,
            expected: last_seq + 1,
        });
    }
    if seq == last_seq + 1 {
        return Ok(None);
    }
    let original = match record {
        // `last_rev` 0: a record rolled back to its durable seq whose
        // revision is not known here (see `durable_snapshot`): storage has it.
        Some(r) if r.last_seq == seq && r.last_rev > 0 => Some((r.last_rev, r.last_hash)),
        _ => ops
            .iter()
            .rev()
            .find(|a| a.seq == seq && &*a.client_id == client_id)
            .map(|a| (a.rev, a.hash)),
    };
    match original {
        Some((_, original_hash)) if original_hash != hash => Err(ReceiveError::SeqReused { seq }),
        Some((rev, _)) => Ok(Some(Receipt::Duplicate {
            seq,
            rev: Some(rev),
        })),
        None => Ok(Some(Receipt::Duplicate { seq, rev: None })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(len: usize, pos: usize, text: &str) -> Operation {
        Operation::insert_at(len, pos, text).unwrap()
    }

    #[test]
    fn concurrent_ops_are_transformed_and_deduplicated() {
        let mut h = DocumentHistory::new();
        let r1 = h.receive("a", 1, 0, ins(0, 0, "hello")).unwrap();
        assert!(
            matches!(r1, Receipt::Applied { ref applied, .. } if applied.rev == 1 && !applied.is_concurrent())
        );
        // b did not see "hello": its insert at 0 is transformed; as `a` it goes first.
        let r2 = h.receive("b", 1, 0, ins(0, 0, "X")).unwrap();
        match r2 {
            Receipt::Applied { applied, received } => {
                assert!(applied.is_concurrent());
                assert_eq!(applied.rev, 2);
                assert_eq!(received, ins(0, 0, "X"));
                assert_eq!(applied.op, ins(5, 0, "X"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(h.text().to_string(), "Xhello");
        // A resend is answered as a duplicate, whatever its base revision.
        assert_eq!(
            h.receive("b", 1, 0, ins(0, 0, "X")),
            Ok(Receipt::Duplicate {
                seq: 1,
                rev: Some(2)
            })
        );
        assert_eq!(
            h.receive("b", 1, 0, ins(0, 0, "Y")),
            Err(ReceiveError::SeqReused { seq: 1 })
        );
        assert_eq!(
            h.receive("b", 3, 2, ins(6, 0, "Y")),
            Err(ReceiveError::BadSeq {
                seq: 3,
                expected: 2
            })
        );
        assert_eq!(
            h.receive("b", 2, 3, ins(6, 0, "Y")).unwrap_err().code(),
            "future_revision"
        );
        assert_eq!(
            h.receive("b", 2, 2, ins(5, 0, "Y")).unwrap_err().code(),
            "op_does_not_fit"
        );
        assert_eq!(h.revision(), 2);
        assert_eq!(h.text().to_string(), "Xhello");
    }

    #[test]
    fn trimmed_history_needs_older_ops() {
        let mut h = DocumentHistory::new();
        h.receive("a", 1, 0, ins(0, 0, "ab")).unwrap();
        h.receive("a", 2, 1, ins(2, 2, "cd")).unwrap();
        let first = h.retained_ops()[0].op.clone();
        h.trim_to(1);
        assert_eq!(h.oldest_revision(), 1);
        assert_eq!(
            h.receive("b", 1, 0, ins(0, 0, "X")).unwrap_err().code(),
            "revision_too_old"
        );
        let r = h
            .receive_with_older("b", 1, 0, ins(0, 0, "X"), &[first])
            .unwrap();
        assert!(matches!(r, Receipt::Applied { .. }));
        assert_eq!(h.text().to_string(), "Xabcd");
        // An old seq outside the window is a duplicate whose revision must be looked up.
        h.trim_to(0);
        assert_eq!(
            h.receive("a", 1, 0, ins(0, 0, "ab")),
            Ok(Receipt::Duplicate { seq: 1, rev: None })
        );
    }

    #[test]
    fn trimming_after_every_op_keeps_exactly_the_window() {
        // The server trims after every op; trimmed ops are freed in batches,
        // which must not show through the API.
        for keep in [0usize, 1, 3, 10] {
            let mut h = DocumentHistory::new();
            let mut all = Vec::new();
            for seq in 1..=40u64 {
                let len = h.text().len_chars();
                match h
                    .receive("a", seq, h.revision(), ins(len, len, "x"))
                    .unwrap()
                {
                    Receipt::Applied { applied, .. } => all.push(applied),
                    other => panic!("{other:?}"),
                }
                h.trim_to(keep);
                let kept = keep.min(all.len());
                assert_eq!(
                    h.retained_ops(),
                    &all[all.len() - kept..],
                    "keep {keep}, seq {seq}"
                );
                assert_eq!(h.oldest_revision(), seq - kept as u64);
                assert_eq!(
                    h.ops_since(seq - kept as u64),
                    Some(&all[all.len() - kept..])
                );
                if kept < all.len() {
                    assert_eq!(h.ops_since(seq - kept as u64 - 1), None);
                }
            }
            // A trimmed history still takes ops based on its oldest revision.
            let base = h.oldest_revision();
            let len = all[..base as usize].last().map_or(0, |a| a.op.target_len());
            assert!(h.receive("b", 1, base, ins(len, 0, "y")).is_ok());
        }
    }

    #[test]
    fn a_rebased_op_is_deduplicated_and_transformed_past_what_arrived_meanwhile() {
        let mut h = DocumentHistory::new();
        h.receive("a", 1, 0, ins(0, 0, "ab")).unwrap();
        h.receive("a", 2, 1, ins(2, 2, "cd")).unwrap();
        let first = h.retained_ops()[0].op.clone();
        h.trim_to(1);
        // b's op at revision 0, rebased elsewhere past revision 1.
        let received = ins(0, 0, "X");
        let rebased = received.transform_first(&first).unwrap();
        // Meanwhile another op arrived (in memory).
        h.receive("a", 3, 2, ins(4, 4, "e")).unwrap();
        let r = h
            .receive_rebased("b", 1, 0, received.clone(), rebased.clone(), 1)
            .unwrap();
        match r {
            Receipt::Applied { applied, received } => {
                assert_eq!(applied.rev, 4);
                assert_eq!(applied.base_rev, 0, "the client's base, for the journal");
                assert_eq!(received, ins(0, 0, "X"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.text().to_string(), "Xabcde");
        // The same (client, seq) rebased twice (a resend on a new connection) applies once.
        assert_eq!(
            h.receive_rebased("b", 1, 0, received, rebased.clone(), 1),
            Ok(Receipt::Duplicate {
                seq: 1,
                rev: Some(4)
            })
        );
        // A window that moved past the rebased revision asks for more.
        h.trim_to(1);
        assert_eq!(
            h.receive_rebased("c", 1, 0, ins(0, 0, "Y"), rebased, 1)
                .unwrap_err()
                .code(),
            "revision_too_old"
        );
        assert_eq!(h.revision(), 4);
        assert_eq!(h.text().to_string(), "Xabcde");
    }

    #[test]
    fn a_regional_links_record_is_never_evicted_and_a_new_link_never_expires() {
        let mut h = DocumentHistory::new();
        h.receive("r-eu", 1, 0, ins(0, 0, "a")).unwrap(); // rev 1
        h.receive("w", 1, 1, ins(1, 1, "b")).unwrap(); // rev 2
        for seq in 1..=20u64 {
            let len = h.text().len_chars();
            h.receive("filler", seq, h.revision(), ins(len, len, "f"))
                .unwrap();
        }
        let evicted = h.evict_idle(10, h.revision(), &|_| false);
        assert_eq!(evicted, vec!["w".to_owned()]);
        assert_eq!(h.horizon(), 2);
        // The link's resend is still a duplicate; the writer's is refused.
        assert!(matches!(
            h.receive("r-eu", 1, 0, ins(0, 0, "a")),
            Ok(Receipt::Duplicate {
                seq: 1,
                rev: Some(1)
            })
        ));
        assert_eq!(
            h.receive("w", 1, 1, ins(1, 1, "b")).unwrap_err().code(),
            "client_expired"
        );
        // A link that never sent an op, based below the horizon: merged; a
        // writer in the same place could be a resend of an evicted op.
        assert!(matches!(
            h.receive("r-new", 1, 0, ins(0, 0, "n")),
            Ok(Receipt::Applied { .. })
        ));
        assert_eq!(
            h.receive("x", 1, 0, ins(0, 0, "x")).unwrap_err().code(),
            "client_expired"
        );
    }

    #[test]
    fn evicted_records_raise_the_horizon_and_their_writers_expire() {
        let k = KeyHash([7; 32]);
        let mut h = DocumentHistory::new();
        h.bind_key("w", k);
        h.receive("w", 1, 0, ins(0, 0, "a")).unwrap(); // rev 1
        h.receive("v", 1, 1, ins(1, 1, "b")).unwrap(); // rev 2
        h.receive("v", 2, 2, ins(2, 2, "c")).unwrap(); // rev 3
        h.receive("live", 1, 3, ins(3, 3, "d")).unwrap(); // rev 4
        for seq in 1..=10u64 {
            let len = h.text().len_chars();
            h.receive("filler", seq, h.revision(), ins(len, len, "f"))
                .unwrap();
        }
        // head 14; expiry 10: records at revision <= 4 go, except a connected client's.
        let evicted = h.evict_idle(10, 14, &|id| id == "live");
        assert_eq!(evicted.len(), 2, "{evicted:?}");
        assert_eq!(h.horizon(), 3);
        assert_eq!(h.last_seq("w"), 0);
        assert_eq!(h.key_of("w"), Some(k), "a key binding is never evicted");
        assert_eq!(h.last_seq("live"), 1);
        let text = h.text().to_string();
        // The evicted writers' resends: seq 1 (would be new without the horizon) and seq K > 1.
        for (client, seq, base) in [("w", 1, 0), ("v", 2, 2), ("v", 1, 1)] {
            let op = if base == 0 {
                ins(0, 0, "a")
            } else {
                ins(base as usize, base as usize, "c")
            };
            assert_eq!(
                h.receive(client, seq, base, op).unwrap_err().code(),
                "client_expired",
                "{client} {seq}"
            );
        }
        assert_eq!(h.text().to_string(), text);
        // A live writer goes on; a new writer based at or after the horizon too.
        assert!(matches!(
            h.receive("live", 2, 14, ins(14, 0, "L")),
            Ok(Receipt::Applied { .. })
        ));
        assert!(matches!(
            h.receive("new", 1, 3, ins(3, 0, "N")),
            Ok(Receipt::Applied { .. })
        ));
        // The horizon survives a snapshot (and a snapshot without it loads with 0).
        let snap: DocumentSnapshot =
            serde_json::from_str(&serde_json::to_string(&h.snapshot()).unwrap()).unwrap();
        let h2 = DocumentHistory::from_snapshot(snap.clone(), Vec::new()).unwrap();
        assert_eq!(h2.horizon(), 3);
        assert_eq!(h2.snapshot(), snap);
        let mut old = snap;
        old.clients.remove(HORIZON_KEY);
        assert_eq!(
            DocumentHistory::from_snapshot(old, Vec::new())
                .unwrap()
                .horizon(),
            0
        );
    }

    #[test]
    fn a_durable_snapshot_keeps_the_dedup_table_rolled_back() {
        let mut h = DocumentHistory::new();
        h.receive("a", 1, 0, ins(0, 0, "x")).unwrap(); // rev 1, durable
        h.receive("b", 1, 1, ins(1, 1, "y")).unwrap(); // rev 2, durable
        h.receive("a", 2, 2, ins(2, 2, "z")).unwrap(); // rev 3, lost
        h.receive("c", 1, 3, ins(3, 3, "w")).unwrap(); // rev 4, lost
        let durable = |id: &str| match id {
            "a" | "b" => 1,
            _ => 0,
        };
        let snap = h.durable_snapshot(2, "xy".into(), durable);
        let mut r = DocumentHistory::from_snapshot(snap, Vec::new()).unwrap();
        assert_eq!(r.revision(), 2);
        assert_eq!(r.last_seq("a"), 1);
        assert_eq!(r.last_seq("b"), 1);
        assert_eq!(r.last_seq("c"), 0, "a lost first op leaves no record");
        // Applied ops are still recognised as resends, lost ones apply again.
        assert_eq!(
            r.receive("a", 1, 0, ins(0, 0, "x")),
            Ok(Receipt::Duplicate {
                seq: 1,
                rev: Some(1)
            })
        );
        assert_eq!(
            r.receive("b", 1, 1, ins(1, 1, "y")),
            Ok(Receipt::Duplicate {
                seq: 1,
                rev: Some(2)
            })
        );
        assert!(matches!(
            r.receive("a", 2, 2, ins(2, 2, "z")),
            Ok(Receipt::Applied { .. })
        ));
        assert_eq!(r.text().to_string(), "xyz");
        // A durable seq whose op is not retained: its revision is looked up in storage.
        h.trim_to(1);
        let mut r =
            DocumentHistory::from_snapshot(h.durable_snapshot(2, "xy".into(), durable), Vec::new())
                .unwrap();
        assert_eq!(
            r.receive("a", 1, 0, ins(0, 0, "x")),
            Ok(Receipt::Duplicate { seq: 1, rev: None })
        );
    }

    #[test]
    fn the_window_is_bounded_in_bytes_but_keeps_what_is_pending() {
        let mut h = DocumentHistory::new();
        let big = "x".repeat(10_000);
        for seq in 1..=20u64 {
            let len = h.text().len_chars();
            h.receive("a", seq, h.revision(), ins(len, len, &big))
                .unwrap();
            h.trim_to_bytes(1000, 50_000, 0);
            assert!(h.retained_bytes() <= 50_000, "{}", h.retained_bytes());
        }
        let kept = h.retained_ops().len();
        assert!((3..=5).contains(&kept), "{kept}");
        // Ops still pending are kept whatever they weigh.
        h.trim_to_bytes(1000, 0, 2);
        assert_eq!(h.retained_ops().len(), 2);
        assert_eq!(h.oldest_revision(), 18);
        h.trim_to_bytes(1000, 0, 0);
        assert_eq!(h.retained_ops().len(), 0);
        assert_eq!(h.retained_bytes(), 0);
    }

    #[test]
    fn op_hash_is_pinned() {
        // XXH3-128 of no bytes, in canonical (big-endian) form: the reference value.
        assert_eq!(
            OpHash::of(&Operation::new()).to_hex(),
            "99aa06d3014798d86001c324468d497f"
        );
        // The hash is persisted: these values must never change.
        // Cross-checked against the reference C implementation of XXH3-128
        // over the documented encoding.
        let pinned = [
            (r#"[5,"hi",-2,3]"#, "cb7a2dbf49f700d3cd57bcdf432fa61a"),
            ("[1]", "4bf11acb9ef8ce739a0670b0dfa048f0"),
            (r#"["a"]"#, "933fd372094f29f71d4a6f58543227c7"),
            (
                r#"[3,"é漢🙂e\u0301",-1]"#,
                "88369ed07076ddcffacd8701b6d4204a",
            ),
            ("[-4]", "92d8b2afe7e6b6c4e88f5e36b8306a1c"),
        ];
        for (json, hex) in pinned {
            let op = Operation::from_json(json).unwrap();
            assert_eq!(OpHash::of(&op).to_hex(), hex, "{json}");
        }
        // A long op (past the stack buffer) hashes its whole encoding.
        let long = Operation::insert_at(0, 0, &"x".repeat(300)).unwrap();
        let other = Operation::insert_at(0, 0, &format!("{}y", "x".repeat(299))).unwrap();
        assert_ne!(OpHash::of(&long), OpHash::of(&other));
    }

    #[test]
    fn snapshot_round_trip() {
        let mut h = DocumentHistory::new();
        h.receive("a", 1, 0, ins(0, 0, "héllo")).unwrap();
        let snap = h.snapshot();
        h.receive("b", 1, 1, ins(5, 5, " 🙂")).unwrap();
        let tail = h.retained_ops()[1..].to_vec();
        let json = serde_json::to_string(&snap).unwrap();
        let snap2: DocumentSnapshot = serde_json::from_str(&json).unwrap();
        let h2 = DocumentHistory::from_snapshot(snap2, tail).unwrap();
        assert_eq!(h2.text().to_string(), "héllo 🙂");
        assert_eq!(h2.revision(), 2);
        assert_eq!(h2.last_seq("a"), 1);
        assert_eq!(h2.last_seq("b"), 1);
        let bad_tail = h.retained_ops()[..1].to_vec();
        assert!(matches!(
            DocumentHistory::from_snapshot(h.snapshot(), bad_tail),
            Err(RestoreError::Gap { .. })
        ));
    }

    #[test]
    fn a_key_binds_once_and_survives_ops_snapshots_and_replay() {
        let k1 = KeyHash([1; 32]);
        let k2 = KeyHash([2; 32]);
        let mut h = DocumentHistory::new();
        // Bound before any op (a join): the next seq is still 1.
        assert_eq!(h.bind_key("a", k1), KeyCheck::Bound);
        assert_eq!(h.last_seq("a"), 0);
        assert_eq!(h.bind_key("a", k1), KeyCheck::Matches);
        assert_eq!(h.bind_key("a", k2), KeyCheck::Mismatch);
        // A binding whose write failed is undone; another key's is not.
        h.unbind_key("a", k2);
        assert_eq!(h.key_of("a"), Some(k1));
        h.unbind_key("a", k1);
        assert_eq!(h.key_of("a"), None);
        assert_eq!(h.bind_key("a", k1), KeyCheck::Bound);
        assert!(matches!(
            h.receive("a", 1, 0, ins(0, 0, "x")),
            Ok(Receipt::Applied { .. })
        ));
        assert_eq!(h.key_of("a"), Some(k1), "an op keeps the binding");
        // An old client's record (no key) is bound to the first key presented.
        h.receive("b", 1, 1, ins(1, 1, "y")).unwrap();
        assert_eq!(h.key_of("b"), None);
        let before = h.snapshot();
        assert_eq!(h.bind_key("b", k2), KeyCheck::Bound);
        assert_eq!(h.bind_key("b", k1), KeyCheck::Mismatch);
        // Snapshots carry the hash; replaying ops after it keeps it.
        let snap: DocumentSnapshot =
            serde_json::from_str(&serde_json::to_string(&h.snapshot()).unwrap()).unwrap();
        let mut h2 = DocumentHistory::from_snapshot(snap, Vec::new()).unwrap();
        assert_eq!(h2.key_of("a"), Some(k1));
        assert_eq!(h2.key_of("b"), Some(k2));
        h2.receive("a", 2, 2, ins(2, 2, "z")).unwrap();
        let tail = h2.retained_ops().to_vec();
        let mut snap = h2.snapshot();
        snap.rev = 2;
        snap.text = "xy".into();
        let h3 = DocumentHistory::from_snapshot(snap, tail).unwrap();
        assert_eq!(h3.key_of("a"), Some(k1));
        assert_eq!(h3.last_seq("a"), 2);
        // A record without a key serialises as before (old readers, old data).
        let json = serde_json::to_string(&before.clients["b"]).unwrap();
        assert!(!json.contains("key_hash"), "{json}");
    }
}
