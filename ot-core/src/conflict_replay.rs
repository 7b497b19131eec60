//! Recomputing how a journaled conflict was resolved, from the stored ops
//! alone: how an operator learns from the journal, not from users, that a
//! merge rule is wrong or that stored data disagrees with the algebra.
//!
//! A conflict is an op received at base revision `b` and applied at revision
//! `r > b + 1`: it was transformed past the ops applied at `b + 1 .. r - 1`
//! (the concurrent ops), in that order, with its own inserts first at a tie
//! (the server passes the incoming op as `a`).

use crate::error::OtError;
use crate::operation::Operation;

/// Which side's insert goes first when both insert at the same position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TieRule {
    /// The received op's insert goes first: the rule the server applies.
    ReceivedFirst,
    /// The concurrent op's insert goes first: the other rule, to learn which
    /// resolutions depend on the tie.
    ConcurrentFirst,
}

impl TieRule {
    /// The other rule.
    pub fn other(self) -> TieRule {
        match self {
            TieRule::ReceivedFirst => TieRule::ConcurrentFirst,
            TieRule::ConcurrentFirst => TieRule::ReceivedFirst,
        }
    }
}

/// The op `received` transformed past `concurrent` (the ops applied after
/// its base, in revision order) under `tie`: what the server applies.
pub fn resolve<'a>(
    received: &Operation,
    concurrent: impl IntoIterator<Item = &'a Operation>,
    tie: TieRule,
) -> Result<Operation, OtError> {
    let mut op = received.clone();
    for other in concurrent {
        op = match tie {
            TieRule::ReceivedFirst => op.transform(other)?.0,
            TieRule::ConcurrentFirst => other.transform(&op)?.1,
        };
    }
    Ok(op)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::history::{DocumentHistory, Receipt};

    fn ins(len: usize, pos: usize, text: &str) -> Operation {
        Operation::insert_at(len, pos, text).unwrap()
    }

    #[test]
    fn the_rule_in_force_recomputes_what_the_history_applied_and_the_other_tie_differs_at_ties() {
        let mut history = DocumentHistory::new();
        history.receive("a", 1, 0, ins(0, 0, "hello")).unwrap();
        history.receive("b", 1, 1, ins(5, 5, " world")).unwrap();
        history.receive("c", 1, 2, ins(11, 0, ">")).unwrap();
        // Based on revision 1: concurrent with revisions 2 and 3, inserting
        // where revision 2 inserted (a tie).
        let received = ins(5, 5, "!");
        let applied = match history.receive("d", 1, 1, received.clone()).unwrap() {
            Receipt::Applied { applied, .. } => applied,
            other => panic!("{other:?}"),
        };
        let concurrent: Vec<Operation> = history.retained_ops()[1..3]
            .iter()
            .map(|a| a.op.clone())
            .collect();
        let same = resolve(&received, &concurrent, TieRule::ReceivedFirst).unwrap();
        assert_eq!(same, applied.op);
        let other = resolve(&received, &concurrent, TieRule::ConcurrentFirst).unwrap();
        assert_ne!(other, applied.op, "the tie at 5 goes the other way");
        let mut text = history.text().to_string();
        assert_eq!(text, ">hello! world");
        text = concurrent
            .iter()
            .fold("hello".to_owned(), |t, op| op.apply(&t).unwrap());
        assert_eq!(other.apply(&text).unwrap(), ">hello world!");
    }

    #[test]
    fn an_op_that_does_not_fit_its_concurrent_ops_is_an_error() {
        let result = resolve(&ins(3, 0, "x"), &[ins(5, 0, "y")], TieRule::ReceivedFirst);
        assert!(result.is_err());
    }
}
