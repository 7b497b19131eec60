//! Differential tests against the `operational-transform` crate (0.6, a Rust
//! port of ot.js): on random texts and operations, our builder, `apply`,
//! `compose`, `transform` and `invert` must give component-for-component the
//! same results. Both libraries keep operations in the same canonical form and
//! count lengths in Unicode scalar values, so results are compared exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use operational_transform::{Operation as TheirComponent, OperationSeq};
use ot_core::{Component, Operation};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------

fn to_theirs(op: &Operation) -> OperationSeq {
    let mut seq = OperationSeq::default();
    for c in op.components() {
        match c {
            Component::Retain(n) => seq.retain(*n as u64),
            Component::Insert(s) => seq.insert(s),
            Component::Delete(n) => seq.delete(*n as u64),
        }
    }
    seq
}

fn their_components(seq: &OperationSeq) -> Vec<Component> {
    seq.ops()
        .iter()
        .map(|c| match c {
            TheirComponent::Retain(n) => Component::Retain(*n as usize),
            TheirComponent::Insert(s) => Component::Insert(s.into()),
            TheirComponent::Delete(n) => Component::Delete(*n as usize),
        })
        .collect()
}

/// Component-wise equality plus the cached lengths.
fn same(ours: &Operation, theirs: &OperationSeq) -> Result<(), TestCaseError> {
    prop_assert_eq!(ours.components(), &their_components(theirs)[..]);
    prop_assert_eq!(ours.base_len(), theirs.base_len());
    prop_assert_eq!(ours.target_len(), theirs.target_len());
    prop_assert_eq!(ours.is_noop(), theirs.is_noop());
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators: the same random builder calls drive both libraries.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Retain(usize),
    Insert(String),
    Delete(usize),
}

fn ascii_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(&['a', 'b', 'c', 'x', 'y', ' ', '\n', '.', '0'][..]),
        0..=max,
    )
    .prop_map(|v| v.into_iter().collect())
}

const UNICODE: &[&str] = &["a", " ", "é", "漢", "🙂", "e\u{301}", "𝄞", "\r\n"];

fn unicode_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(UNICODE), 0..=max).prop_map(|v| v.concat())
}

fn steps(insert: BoxedStrategy<String>) -> impl Strategy<Value = (Vec<Step>, bool)> {
    let step = prop_oneof![
        (0usize..6).prop_map(Step::Retain),
        insert.prop_map(Step::Insert),
        (0usize..6).prop_map(Step::Delete),
    ];
    (
        prop::collection::vec(step, 0..10),
        prop::bool::weighted(0.2),
    )
}

/// Build the operation in both libraries from the same calls, covering a
/// document of `doc_len` chars.
fn build_both(plan: &(Vec<Step>, bool), doc_len: usize) -> (Operation, OperationSeq) {
    let mut ours = Operation::new();
    let mut theirs = OperationSeq::default();
    let mut left = doc_len;
    for step in &plan.0 {
        match step {
            Step::Retain(n) => {
                let n = (*n).min(left);
                ours.retain(n);
                theirs.retain(n as u64);
                left -= n;
            }
            Step::Delete(n) => {
                let n = (*n).min(left);
                ours.delete(n);
                theirs.delete(n as u64);
                left -= n;
            }
            Step::Insert(s) => {
                ours.insert(s);
                theirs.insert(s);
            }
        }
    }
    if plan.1 {
        ours.delete(left);
        theirs.delete(left as u64);
    } else {
        ours.retain(left);
        theirs.retain(left as u64);
    }
    (ours, theirs)
}

fn len(s: &str) -> usize {
    s.chars().count()
}

/// Everything we compare for one text and three consecutive / concurrent plans.
fn compare_all(
    s: &str,
    pa: &(Vec<Step>, bool),
    pb: &(Vec<Step>, bool),
    pc: &(Vec<Step>, bool),
) -> Result<(), TestCaseError> {
    // The builders agree.
    let (a, a_theirs) = build_both(pa, len(s));
    same(&a, &a_theirs)?;
    // Converting ours is the same as building theirs.
    prop_assert_eq!(&to_theirs(&a), &a_theirs);

    // apply
    let s1 = a.apply(s)?;
    prop_assert_eq!(&a_theirs.apply(s).unwrap(), &s1);

    // compose with a follow-up operation
    let (b, b_theirs) = build_both(pb, len(&s1));
    same(&b, &b_theirs)?;
    let ab = a.compose(&b)?;
    let ab_theirs = a_theirs.compose(&b_theirs).unwrap();
    same(&ab, &ab_theirs)?;
    prop_assert_eq!(ab.apply(s)?, ab_theirs.apply(s).unwrap());

    // transform against a concurrent operation (c, on the same text as a)
    let (c, c_theirs) = build_both(pc, len(s));
    let (a2, c2) = a.transform(&c)?;
    let (a2_theirs, c2_theirs) = a_theirs.transform(&c_theirs).unwrap();
    same(&a2, &a2_theirs)?;
    same(&c2, &c2_theirs)?;
    let converged = c2.apply(&s1)?;
    prop_assert_eq!(
        &c2_theirs.apply(&a_theirs.apply(s).unwrap()).unwrap(),
        &converged
    );
    prop_assert_eq!(
        &a2_theirs.apply(&c_theirs.apply(s).unwrap()).unwrap(),
        &converged
    );

    // invert
    let inverse = a.invert(s)?;
    same(&inverse, &a_theirs.invert(s))?;

    // Both reject the same mismatches.
    if a.target_len() != c.base_len() {
        prop_assert!(a.compose(&c).is_err());
        prop_assert!(a_theirs.compose(&c_theirs).is_err());
    }
    if b.base_len() != c.base_len() {
        prop_assert!(b.transform(&c).is_err());
        prop_assert!(b_theirs.transform(&c_theirs).is_err());
        prop_assert!(b.apply(s).is_err());
        prop_assert!(b_theirs.apply(s).is_err());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_operational_transform_on_ascii(
        s in ascii_text(24),
        pa in steps(ascii_text(4).boxed()),
        pb in steps(ascii_text(4).boxed()),
        pc in steps(ascii_text(4).boxed()),
    ) {
        compare_all(&s, &pa, &pb, &pc)?;
    }

    /// Both libraries count Unicode scalar values, so they must agree on
    /// multi-byte and astral text too.
    #[test]
    fn agrees_with_operational_transform_on_unicode(
        s in unicode_text(16),
        pa in steps(unicode_text(3).boxed()),
        pb in steps(unicode_text(3).boxed()),
        pc in steps(unicode_text(3).boxed()),
    ) {
        compare_all(&s, &pa, &pb, &pc)?;
    }
}

/// The tie rule is the same: on inserts at one position, the first argument's
/// text comes first in both libraries.
#[test]
fn tie_rule_matches() {
    let a = Operation::insert_at(3, 1, "A").unwrap();
    let b = Operation::insert_at(3, 1, "B").unwrap();
    let (a2, b2) = a.transform(&b).unwrap();
    let (a2_theirs, b2_theirs) = to_theirs(&a).transform(&to_theirs(&b)).unwrap();
    assert_eq!(a2.components(), &their_components(&a2_theirs)[..]);
    assert_eq!(b2.components(), &their_components(&b2_theirs)[..]);
    assert_eq!(b2.apply(&a.apply("xyz").unwrap()).unwrap(), "xAByz");
    assert_eq!(
        b2_theirs
            .apply(&to_theirs(&a).apply("xyz").unwrap())
            .unwrap(),
        "xAByz"
    );
}
