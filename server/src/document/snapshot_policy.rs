//! When a document stores a snapshot with an op. A snapshot costs a write of
//! the whole text; the ops after the latest snapshot cost replaying them
//! when the document is loaded. So a snapshot is due once the ops since the
//! last one weigh at least half the text (each op weighs a fixed row
//! overhead plus the characters it inserts and deletes): snapshots then
//! never write more than about twice what the ops themselves did, whatever
//! the document's size. On top of that, the ops since the last snapshot must
//! number `--snapshot-every` or weigh at least [`BIG_CHANGE`], so that a
//! small document is not snapshotted on every op. No-ops count for nothing:
//! a connection sending no-ops (which PROTOCOL.md accepts, one revision
//! each) cannot make a large document write snapshots.

use ot_core::{Component, Operation};

/// What each stored op weighs besides its characters (its row's fixed part).
const OP_WEIGHT: u64 = 64;
/// Ops weighing this much make a snapshot due whatever their number.
pub(crate) const BIG_CHANGE: u64 = 4 << 20;

/// What the ops since the document's latest snapshot add up to.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotPolicy {
    every_ops: u64,
    ops: u64,
    weight: u64,
}

impl SnapshotPolicy {
    /// The policy right after a load whose ops after the latest snapshot
    /// were `tail`.
    pub(crate) fn after_load<'a>(
        every_ops: u64,
        tail: impl IntoIterator<Item = &'a Operation>,
    ) -> SnapshotPolicy {
        let mut policy = SnapshotPolicy {
            every_ops: every_ops.max(1),
            ops: 0,
            weight: 0,
        };
        for op in tail {
            policy.count(op);
        }
        policy
    }

    fn count(&mut self, op: &Operation) {
        if op.is_noop() {
            return;
        }
        self.ops += 1;
        self.weight += OP_WEIGHT + change_size(op);
    }

    /// Count `op` (as applied), after which the text has `text_len`
    /// characters; true when a snapshot should be stored with it (the
    /// counts then start over).
    pub(crate) fn snapshot_due(&mut self, op: &Operation, text_len: usize) -> bool {
        if op.is_noop() {
            return false;
        }
        self.count(op);
        let due = self.weight >= (text_len as u64) / 2
            && (self.ops >= self.every_ops || self.weight >= BIG_CHANGE);
        if due {
            self.ops = 0;
            self.weight = 0;
        }
        due
    }
}

/// Characters `op` inserts plus deletes.
fn change_size(op: &Operation) -> u64 {
    op.components()
        .iter()
        .map(|c| match c {
            Component::Retain(_) => 0,
            Component::Insert(s) => s.chars().count() as u64,
            Component::Delete(n) => *n as u64,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert_at(pos: usize, len: usize, text: &str) -> Operation {
        let mut op = Operation::new();
        op.retain(pos);
        op.insert(text);
        op.retain(len - pos);
        op
    }

    #[test]
    fn a_small_document_is_snapshotted_every_n_ops() {
        let mut policy = SnapshotPolicy::after_load(200, []);
        let mut due = Vec::new();
        for n in 0..1000usize {
            if policy.snapshot_due(&insert_at(n, n, "x"), n + 1) {
                due.push(n + 1);
            }
        }
        assert_eq!(due, vec![200, 400, 600, 800, 1000]);
    }

    #[test]
    fn no_ops_never_make_a_snapshot_due() {
        let mut policy = SnapshotPolicy::after_load(1, []);
        let mut noop = Operation::new();
        noop.retain(10);
        assert!((0..10_000).all(|_| !policy.snapshot_due(&noop, 10)));
        assert!(policy.snapshot_due(&insert_at(0, 10, "x"), 11));
    }

    #[test]
    fn a_large_document_waits_until_the_ops_weigh_half_its_text() {
        let len = 10_000_000;
        let mut policy = SnapshotPolicy::after_load(200, []);
        let one_char = insert_at(5, len, "x");
        let ops_until_due = (1..).find(|_| policy.snapshot_due(&one_char, len + 1));
        // Each op weighs 65: about 5,000,001 / 65 ops.
        assert_eq!(ops_until_due, Some(76_924));
    }

    #[test]
    fn big_ops_make_a_snapshot_due_before_n_of_them() {
        let mut policy = SnapshotPolicy::after_load(200, []);
        let big = "y".repeat(1 << 20);
        let due = (1..=10usize).find(|n| policy.snapshot_due(&insert_at(0, 0, &big), n << 20));
        assert_eq!(due, Some(4), "4 MiB changed");
    }

    #[test]
    fn a_load_counts_the_tail_since_the_latest_snapshot() {
        let tail: Vec<Operation> = (0..150).map(|n| insert_at(n, n, "x")).collect();
        let mut policy = SnapshotPolicy::after_load(200, &tail);
        let due = (150..400usize).find(|n| policy.snapshot_due(&insert_at(*n, *n, "x"), n + 1));
        assert_eq!(due, Some(199), "the 200th op since the snapshot");
    }
}
