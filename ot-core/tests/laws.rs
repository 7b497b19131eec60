//! Property tests of the operation algebra: the laws every implementation of
//! ot.js-style text operations must satisfy, on texts mixing ASCII, accented,
//! CJK, astral and combining characters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ot_core::conflict_replay::{resolve, TieRule};
use ot_core::history::{DocumentHistory, Receipt};
use ot_core::{Component, OpJsonError, OpLimits, Operation, OtError, Range, Text};
use proptest::prelude::*;
use ropey::Rope;

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Building blocks of random texts: one or more scalar values each. Mixes
/// 1-, 2-, 3- and 4-byte UTF-8, a combining sequence (`e` + U+0301, two
/// scalar values that render as one glyph), a ZWJ, CRLF and a tab.
const PIECES: &[&str] = &[
    "a",
    "b",
    "z",
    "Q",
    "0",
    " ",
    "\n",
    "\r\n",
    "\t",
    "é",
    "ß",
    "Ω",
    "漢",
    "字",
    "🙂",
    "𝄞",
    "e\u{301}",
    "\u{200d}",
    "\u{10ffff}",
];

fn text_of(max_pieces: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..=max_pieces).prop_map(|v| v.concat())
}

fn text() -> impl Strategy<Value = String> {
    text_of(14)
}

/// Inserted text; may be empty (the builder must drop it).
fn insert_text() -> impl Strategy<Value = String> {
    text_of(3)
}

/// One builder call. Sizes may be 0 and may exceed what is left of the
/// document; [`Plan::build`] clamps them.
#[derive(Debug, Clone)]
enum Step {
    Retain(usize),
    Insert(String),
    Delete(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..6).prop_map(Step::Retain),
        insert_text().prop_map(Step::Insert),
        (0usize..6).prop_map(Step::Delete),
    ]
}

/// A recipe for a random operation on a document of any length: a random
/// sequence of retain / insert / delete calls, then the rest of the document
/// is retained or deleted, so the operation always covers the whole text.
#[derive(Debug, Clone)]
struct Plan {
    steps: Vec<Step>,
    delete_tail: bool,
}

impl Plan {
    fn build(&self, doc_len: usize) -> Operation {
        let mut op = Operation::new();
        let mut left = doc_len;
        for step in &self.steps {
            match step {
                Step::Retain(n) => {
                    let n = (*n).min(left);
                    op.retain(n);
                    left -= n;
                }
                Step::Delete(n) => {
                    let n = (*n).min(left);
                    op.delete(n);
                    left -= n;
                }
                Step::Insert(s) => {
                    op.insert(s);
                }
            }
        }
        if self.delete_tail {
            op.delete(left);
        } else {
            op.retain(left);
        }
        op
    }

    fn build_for(&self, text: &str) -> Operation {
        self.build(len(text))
    }
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(step(), 0..10),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(steps, delete_tail)| Plan { steps, delete_tail })
}

fn len(s: &str) -> usize {
    s.chars().count()
}

// ---------------------------------------------------------------------------
// Reference models and invariants
// ---------------------------------------------------------------------------

/// A deliberately naive `apply` over a vector of chars, independent of the
/// library's byte-offset arithmetic.
fn model_apply(components: &[Component], text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out = String::new();
    for c in components {
        match c {
            Component::Retain(n) => {
                out.extend(chars.get(i..i + n)?);
                i += n;
            }
            Component::Insert(s) => out.push_str(s),
            Component::Delete(n) => {
                chars.get(i..i + n)?;
                i += n;
            }
        }
    }
    (i == chars.len()).then_some(out)
}

/// Check the canonical-form invariants directly on the components.
fn check_canonical(op: &Operation) -> Result<(), TestCaseError> {
    let comps = op.components();
    let (mut base, mut target) = (0, 0);
    for c in comps {
        match c {
            Component::Retain(n) => {
                prop_assert!(*n > 0, "empty retain in {:?}", comps);
                base += n;
                target += n;
            }
            Component::Insert(s) => {
                prop_assert!(!s.is_empty(), "empty insert in {:?}", comps);
                target += len(s);
            }
            Component::Delete(n) => {
                prop_assert!(*n > 0, "empty delete in {:?}", comps);
                base += n;
            }
        }
    }
    prop_assert_eq!(base, op.base_len(), "base_len of {:?}", comps);
    prop_assert_eq!(target, op.target_len(), "target_len of {:?}", comps);
    for pair in comps.windows(2) {
        let both_retain = matches!(pair, [Component::Retain(_), Component::Retain(_)]);
        prop_assert!(!both_retain, "adjacent retains in {:?}", comps);
    }
    // Between two retains (and before the first / after the last): at most one
    // insert followed by at most one delete.
    for group in comps.split(|c| matches!(c, Component::Retain(_))) {
        let ok = matches!(
            group,
            [] | [Component::Insert(_)]
                | [Component::Delete(_)]
                | [Component::Insert(_), Component::Delete(_)]
        );
        prop_assert!(ok, "non-canonical group {:?} in {:?}", group, comps);
    }
    Ok(())
}

fn rope_apply(op: &Operation, text: &str) -> Result<String, OtError> {
    let mut rope = Rope::from_str(text);
    op.apply_to_rope(&mut rope)?;
    Ok(rope.to_string())
}

/// Insert position of an operation of the form `[n?, "text", ...]`.
fn first_insert_position(op: &Operation) -> Option<usize> {
    match op.components() {
        [Component::Insert(_), ..] => Some(0),
        [Component::Retain(n), Component::Insert(_), ..] => Some(*n),
        _ => None,
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The builder, lengths, apply
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn builder_output_is_canonical(s in text(), p in plan()) {
        let op = p.build_for(&s);
        check_canonical(&op)?;
        prop_assert_eq!(op.base_len(), len(&s));
        // Rebuilding from the canonical components changes nothing.
        let mut again = Operation::new();
        for c in op.components() {
            again.push(c.clone());
        }
        prop_assert_eq!(&again, &op);
    }

    #[test]
    fn lengths_agree_with_apply(s in text(), p in plan()) {
        let op = p.build_for(&s);
        let out = op.apply(&s)?;
        prop_assert_eq!(op.base_len(), len(&s));
        prop_assert_eq!(op.target_len(), len(&out));
        let all_retains = op.components().iter().all(|c| matches!(c, Component::Retain(_)));
        prop_assert_eq!(op.is_noop(), all_retains);
        if all_retains {
            prop_assert_eq!(out, s);
        }
    }

    #[test]
    fn apply_matches_naive_model(s in text(), p in plan()) {
        let op = p.build_for(&s);
        prop_assert_eq!(Some(op.apply(&s)?), model_apply(op.components(), &s));
    }

    #[test]
    fn apply_to_rope_agrees_with_apply(s in text(), p in plan()) {
        let op = p.build_for(&s);
        prop_assert_eq!(rope_apply(&op, &s)?, op.apply(&s)?);
    }

    #[test]
    fn text_keeps_its_length_and_agrees_with_apply(s in text(), p in plan(), other in text()) {
        let op = p.build_for(&s);
        let mut kept = Text::from(s.as_str());
        kept.apply(&op)?;
        prop_assert_eq!(kept.rope().to_string(), op.apply(&s)?);
        prop_assert_eq!(kept.len_chars(), kept.rope().len_chars());
        // An op for a text of another length changes nothing.
        let misfit = p.build_for(&other);
        if misfit.base_len() != kept.len_chars() {
            let before = kept.clone();
            prop_assert!(kept.apply(&misfit).is_err());
            prop_assert_eq!(kept, before);
        }
    }
}

// ---------------------------------------------------------------------------
// compose
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn apply_compose_law(s in text(), pa in plan(), pb in plan()) {
        let a = pa.build_for(&s);
        let s1 = a.apply(&s)?;
        let b = pb.build_for(&s1);
        let s2 = b.apply(&s1)?;
        let ab = a.compose(&b)?;
        check_canonical(&ab)?;
        prop_assert_eq!(ab.base_len(), a.base_len());
        prop_assert_eq!(ab.target_len(), b.target_len());
        prop_assert_eq!(&ab.apply(&s)?, &s2);

        // The same with ropes: two in-place applications equal one composed one.
        let mut rope = Rope::from_str(&s);
        a.apply_to_rope(&mut rope)?;
        b.apply_to_rope(&mut rope)?;
        prop_assert_eq!(rope.to_string(), s2.clone());
        prop_assert_eq!(rope_apply(&ab, &s)?, s2);
    }

    #[test]
    fn compose_is_associative(s in text(), pa in plan(), pb in plan(), pc in plan()) {
        let a = pa.build_for(&s);
        let s1 = a.apply(&s)?;
        let b = pb.build_for(&s1);
        let s2 = b.apply(&s1)?;
        let c = pc.build_for(&s2);
        let left = a.compose(&b)?.compose(&c)?;
        let right = a.compose(&b.compose(&c)?)?;
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(left.apply(&s)?, c.apply(&s2)?);
    }

    #[test]
    fn identity_is_neutral_for_compose(s in text(), p in plan()) {
        let op = p.build_for(&s);
        let before = Operation::identity(op.base_len());
        let after = Operation::identity(op.target_len());
        prop_assert_eq!(&before.compose(&op)?, &op);
        prop_assert_eq!(&op.compose(&after)?, &op);
    }
}

// ---------------------------------------------------------------------------
// transform
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn transform_converges_tp1(s in text(), pa in plan(), pb in plan()) {
        let a = pa.build_for(&s);
        let b = pb.build_for(&s);
        let (a2, b2) = a.transform(&b)?;
        check_canonical(&a2)?;
        check_canonical(&b2)?;
        prop_assert_eq!(a2.base_len(), b.target_len());
        prop_assert_eq!(b2.base_len(), a.target_len());

        // As texts.
        let left = b2.apply(&a.apply(&s)?)?;
        let right = a2.apply(&b.apply(&s)?)?;
        prop_assert_eq!(&left, &right);

        // As operations.
        let ab2 = a.compose(&b2)?;
        let ba2 = b.compose(&a2)?;
        prop_assert_eq!(&ab2, &ba2);
        prop_assert_eq!(ab2.apply(&s)?, left);
    }

    #[test]
    fn transform_against_identity_changes_nothing(s in text(), p in plan()) {
        let op = p.build_for(&s);
        let id = Operation::identity(len(&s));
        let (op2, id2) = op.transform(&id)?;
        prop_assert_eq!(&op2, &op);
        prop_assert_eq!(&id2, &Operation::identity(op.target_len()));
        let (id3, op3) = id.transform(&op)?;
        prop_assert_eq!(&op3, &op);
        prop_assert_eq!(&id3, &Operation::identity(op.target_len()));
    }

    /// Two inserts at the same position, each possibly deleting after it:
    /// `a`'s text comes first, whichever side applies first.
    #[test]
    fn tie_puts_a_first(
        s in text(),
        pos_seed in any::<prop::sample::Index>(),
        del_a in 0usize..4,
        del_b in 0usize..4,
        x in text_of(3).prop_filter("non-empty", |t| !t.is_empty()),
        y in text_of(3).prop_filter("non-empty", |t| !t.is_empty()),
    ) {
        let n = len(&s);
        let pos = pos_seed.index(n + 1);
        let (da, db) = (del_a.min(n - pos), del_b.min(n - pos));
        let a = Operation::replace_range(n, pos, da, &x)?;
        let b = Operation::replace_range(n, pos, db, &y)?;
        let (a2, b2) = a.transform(&b)?;
        let chars: Vec<char> = s.chars().collect();
        let expected: String = chars[..pos].iter().collect::<String>()
            + &x
            + &y
            + &chars[pos + da.max(db)..].iter().collect::<String>();
        prop_assert_eq!(b2.apply(&a.apply(&s)?)?, expected.clone());
        prop_assert_eq!(a2.apply(&b.apply(&s)?)?, expected.clone());
        // Swapping the roles swaps the order.
        let (b3, a3) = b.transform(&a)?;
        let swapped: String = chars[..pos].iter().collect::<String>()
            + &y
            + &x
            + &chars[pos + da.max(db)..].iter().collect::<String>();
        prop_assert_eq!(a3.apply(&b.apply(&s)?)?, swapped.clone());
        prop_assert_eq!(b3.apply(&a.apply(&s)?)?, swapped);
    }
}

// ---------------------------------------------------------------------------
// invert
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn invert_round_trip(s in text(), p in plan()) {
        let op = p.build_for(&s);
        let out = op.apply(&s)?;
        let inverse = op.invert(&s)?;
        check_canonical(&inverse)?;
        prop_assert_eq!(inverse.base_len(), op.target_len());
        prop_assert_eq!(inverse.target_len(), op.base_len());
        prop_assert_eq!(&inverse.apply(&out)?, &s);
        prop_assert_eq!(&op.invert_rope(&Rope::from_str(&s))?, &inverse);
        // Inverting twice gives the operation back; op ∘ op⁻¹ has no effect
        // (though not structurally a no-op: a delete-then-reinsert stays).
        prop_assert_eq!(&inverse.invert(&out)?, &op);
        prop_assert_eq!(&op.compose(&inverse)?.apply(&s)?, &s);
    }
}

// ---------------------------------------------------------------------------
// Cursor mapping
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn batch_position_mapping_equals_one_by_one(
        s in text(),
        p in plan(),
        positions in proptest::collection::vec(0usize..20, 0..24),
    ) {
        let op = p.build_for(&s);
        // Positions past the end included (they clamp like the single mapping).
        let one_by_one: Vec<usize> = positions.iter().map(|&q| op.transform_position(q)).collect();
        prop_assert_eq!(op.transform_positions(&positions), one_by_one);
        let ranges: Vec<ot_core::Range> = positions
            .chunks_exact(2)
            .map(|q| ot_core::Range { anchor: q[0], head: q[1] })
            .collect();
        let mapped: Vec<ot_core::Range> = ranges.iter().map(|r| op.transform_range(*r)).collect();
        prop_assert_eq!(op.transform_ranges(&ranges), mapped.clone());
        prop_assert_eq!(ot_core::transform_ranges(&ranges, &op), mapped);
    }

    #[test]
    fn transform_position_is_bounded_and_monotone(s in text(), p in plan()) {
        let op = p.build_for(&s);
        let mut previous = 0;
        for pos in 0..=op.base_len() + 2 {
            let mapped = op.transform_position(pos);
            prop_assert!(mapped <= op.target_len(), "{} -> {} > {}", pos, mapped, op.target_len());
            prop_assert!(mapped >= previous, "not monotone at {}: {} < {}", pos, mapped, previous);
            previous = mapped;
        }
        // Only an insert before the first retain or delete moves position 0.
        let leading_insert = match op.components().first() {
            Some(Component::Insert(t)) => len(t),
            _ => 0,
        };
        prop_assert_eq!(op.transform_position(0), leading_insert);
        prop_assert_eq!(op.transform_position(op.base_len()), op.target_len());
        prop_assert_eq!(op.transform_position(usize::MAX), op.target_len());
    }

    #[test]
    fn cursor_at_insert_point_moves_after_the_text(
        s in text(),
        pos_seed in any::<prop::sample::Index>(),
        del in 0usize..4,
        x in text_of(3),
    ) {
        let n = len(&s);
        let pos = pos_seed.index(n + 1);
        let op = Operation::replace_range(n, pos, del.min(n - pos), &x)?;
        prop_assert_eq!(op.transform_position(pos), pos + len(&x));
        if pos > 0 {
            prop_assert_eq!(op.transform_position(pos - 1), pos - 1);
        }
    }

    /// A cursor moves exactly where a concurrent one-character insert typed at
    /// the cursor ends up after transforming against the operation (whose
    /// inserts win ties, the same "after" rule).
    #[test]
    fn transform_position_agrees_with_transform(
        s in text(),
        p in plan(),
        pos_seed in any::<prop::sample::Index>(),
    ) {
        let op = p.build_for(&s);
        let pos = pos_seed.index(len(&s) + 1);
        let typed = Operation::insert_at(len(&s), pos, "\u{0}")?;
        let (_, typed2) = op.transform(&typed)?;
        prop_assert_eq!(Some(op.transform_position(pos)), first_insert_position(&typed2));
        let r = op.transform_range(Range { anchor: pos, head: len(&s) });
        prop_assert_eq!(r.anchor, op.transform_position(pos));
        prop_assert_eq!(r.head, op.target_len());
        prop_assert_eq!(ot_core::transform_ranges(&[Range::cursor(pos)], &op), vec![Range::cursor(r.anchor)]);
    }
}

// ---------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn diff_of_unrelated_texts_applies(old in text(), new in text()) {
        let d = Operation::diff(&old, &new);
        check_canonical(&d)?;
        prop_assert_eq!(d.apply(&old)?, new);
    }

    #[test]
    fn diff_of_an_edit_applies(s in text(), p in plan()) {
        let new = p.build_for(&s).apply(&s)?;
        let d = Operation::diff(&s, &new);
        check_canonical(&d)?;
        prop_assert_eq!(d.apply(&s)?, new);
        prop_assert_eq!(Operation::diff(&s, &s), Operation::identity(len(&s)));
    }
}

// ---------------------------------------------------------------------------
// Length mismatches
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn length_mismatches_give_typed_errors(s in text(), other in text(), p in plan(), q in plan()) {
        let op = p.build_for(&s);
        let (n, m) = (len(&s), len(&other));
        prop_assume!(n != m);
        let mismatch = OtError::LengthMismatch { expected: n, actual: m };
        prop_assert_eq!(op.apply(&other), Err(mismatch.clone()));
        prop_assert_eq!(op.invert(&other), Err(mismatch.clone()));
        prop_assert_eq!(op.invert_rope(&Rope::from_str(&other)), Err(mismatch.clone()));
        prop_assert_eq!(mismatch.code(), "length_mismatch");

        // The rope is left exactly as it was.
        let mut rope = Rope::from_str(&other);
        prop_assert_eq!(op.apply_to_rope(&mut rope), Err(mismatch));
        prop_assert_eq!(rope.to_string(), other.clone());

        let other_op = q.build_for(&other);
        let transform_err = op.transform(&other_op).unwrap_err();
        prop_assert_eq!(&transform_err, &OtError::TransformMismatch { a_base: n, b_base: m });
        prop_assert_eq!(transform_err.code(), "transform_mismatch");

        if op.target_len() != m {
            let compose_err = op.compose(&other_op).unwrap_err();
            prop_assert_eq!(&compose_err, &OtError::ComposeMismatch {
                first_target: op.target_len(),
                second_base: m,
            });
            prop_assert_eq!(compose_err.code(), "compose_mismatch");
        }
    }

    #[test]
    fn edit_helpers_match_the_builder_or_reject_out_of_range(
        doc_len in 0usize..20,
        pos in 0usize..30,
        del in 0usize..30,
        text in insert_text(),
    ) {
        let result = Operation::replace_range(doc_len, pos, del, &text);
        if pos + del <= doc_len {
            let op = result?;
            check_canonical(&op)?;
            let mut built = Operation::new();
            built.retain(pos).insert(&text).delete(del).retain(doc_len - pos - del);
            prop_assert_eq!(&op, &built);
            prop_assert_eq!(&Operation::insert_at(doc_len, pos, &text)?, &{
                let mut b = Operation::new();
                b.retain(pos).insert(&text).retain(doc_len - pos);
                b
            });
            prop_assert_eq!(&Operation::delete_range(doc_len, pos, del)?, &{
                let mut b = Operation::new();
                b.retain(pos).delete(del).retain(doc_len - pos - del);
                b
            });
        } else {
            prop_assert_eq!(
                result,
                Err(OtError::OutOfRange { start: pos, end: pos + del, len: doc_len })
            );
            prop_assert_eq!(Operation::delete_range(doc_len, pos, del).unwrap_err().code(), "out_of_range");
        }
        prop_assert_eq!(Operation::insert_at(doc_len, pos, &text).is_ok(), pos <= doc_len);
    }
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

/// A component of a raw, possibly non-canonical JSON array.
#[derive(Debug, Clone)]
enum Raw {
    Retain(u32),
    Insert(String),
    Delete(u32),
}

fn raw() -> impl Strategy<Value = Raw> {
    prop_oneof![
        (1u32..5).prop_map(Raw::Retain),
        // Often empty, sometimes with characters JSON must escape.
        prop_oneof![
            Just(String::new()),
            insert_text(),
            Just("\"\\\u{1}/".to_owned())
        ]
        .prop_map(Raw::Insert),
        (1u32..5).prop_map(Raw::Delete),
    ]
}

fn raw_to_json(items: &[Raw]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|r| match r {
            Raw::Retain(n) => n.to_string(),
            Raw::Delete(n) => format!("-{n}"),
            Raw::Insert(s) => serde_json::to_string(s).unwrap(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A text of `n` chars cycling through multi-byte characters.
fn filler(n: usize) -> String {
    ['x', 'é', '漢', '🙂', '\u{301}']
        .iter()
        .cycle()
        .take(n)
        .collect()
}

/// Tokens that make an otherwise valid array invalid, with the expected error.
fn bad_component() -> impl Strategy<Value = (String, &'static str)> {
    let zero = prop_oneof![Just("0"), Just("-0")].prop_map(|t| (t.to_owned(), "zero_length"));
    let float = (any::<bool>(), 1u32..1000, 0u32..1000, prop::bool::ANY).prop_map(
        |(neg, int, frac, exp)| {
            let sign = if neg { "-" } else { "" };
            let text = if exp {
                format!("{sign}{int}e{}", frac % 10)
            } else {
                format!("{sign}{int}.{frac}")
            };
            (text, "not_an_integer")
        },
    );
    let large = prop_oneof![
        ((1u64 << 53)..=u64::MAX).prop_map(|n| n.to_string()),
        ((1u64 << 53)..=(i64::MAX as u64)).prop_map(|n| format!("-{n}")),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("1e300".to_owned()),
        Just("-1e20".to_owned()),
    ]
    .prop_map(|t| (t, "too_large"));
    let invalid = prop_oneof![
        Just("[]"),
        Just("[1]"),
        Just("[\"a\"]"),
        Just("{}"),
        Just("{\"a\":1}"),
        Just("true"),
        Just("false"),
        Just("null"),
    ]
    .prop_map(|t| (t.to_owned(), "invalid_component"));
    prop_oneof![zero, float, large, invalid]
}

/// A lone surrogate escape: a high one not followed by a low one, or a low one alone.
fn lone_surrogate() -> impl Strategy<Value = String> {
    prop_oneof![
        (0xD800u32..=0xDBFF).prop_map(|u| format!("\\u{u:04x}")),
        (0xD800u32..=0xDBFF).prop_map(|u| format!("\\u{u:04X}x")),
        (0xDC00u32..=0xDFFF).prop_map(|u| format!("\\u{u:04x}")),
        ((0xDC00u32..=0xDFFF), (0xD800u32..=0xDBFF))
            .prop_map(|(lo, hi)| format!("\\u{lo:04x}\\u{hi:04x}")),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn json_round_trip(s in text(), p in plan()) {
        let op = p.build_for(&s);
        let text = op.to_json();
        prop_assert_eq!(&Operation::from_json(&text)?, &op);
        prop_assert_eq!(&serde_json::to_string(&op).unwrap(), &text);
        prop_assert_eq!(&serde_json::from_str::<Operation>(&text).unwrap(), &op);
        prop_assert_eq!(&Operation::from_json_value(&op.to_json_value())?, &op);
    }

    #[test]
    fn json_non_canonical_arrays_normalise(items in prop::collection::vec(raw(), 0..12)) {
        let json = raw_to_json(&items);
        let parsed = Operation::from_json(&json)?;
        check_canonical(&parsed)?;
        // The same components through the builder give the same operation.
        let mut built = Operation::new();
        for item in &items {
            match item {
                Raw::Retain(n) => built.retain(*n as usize),
                Raw::Insert(s) => built.insert(s),
                Raw::Delete(n) => built.delete(*n as usize),
            };
        }
        prop_assert_eq!(&parsed, &built);
        // And it has the effect of the raw array, by the naive model.
        let raw_components: Vec<Component> = items
            .iter()
            .map(|r| match r {
                Raw::Retain(n) => Component::Retain(*n as usize),
                Raw::Insert(s) => Component::Insert(s.into()),
                Raw::Delete(n) => Component::Delete(*n as usize),
            })
            .collect();
        let doc = filler(parsed.base_len());
        prop_assert_eq!(Some(parsed.apply(&doc)?), model_apply(&raw_components, &doc));
        prop_assert_eq!(Operation::from_json(&parsed.to_json())?, parsed);
    }

    #[test]
    fn json_rejects_bad_components(
        before in prop::collection::vec(raw(), 0..4),
        after in prop::collection::vec(raw(), 0..4),
        (bad, code) in bad_component(),
    ) {
        let mut parts: Vec<String> = before.iter().map(|r| raw_to_json(std::slice::from_ref(r))).collect();
        let index = parts.len();
        parts.push(format!("[{bad}]"));
        parts.extend(after.iter().map(|r| raw_to_json(std::slice::from_ref(r))));
        // Each part is `[x]`; strip the brackets and join.
        let inner: Vec<&str> = parts.iter().map(|p| &p[1..p.len() - 1]).collect();
        let json = format!("[{}]", inner.join(","));
        let err = Operation::from_json(&json).unwrap_err();
        prop_assert_eq!(err.code(), code, "{}", json);
        let reported = match &err {
            OpJsonError::ZeroLength { index }
            | OpJsonError::NotAnInteger { index, .. }
            | OpJsonError::TooLarge { index, .. }
            | OpJsonError::InvalidComponent { index, .. } => Some(*index),
            _ => None,
        };
        prop_assert_eq!(reported, Some(index), "{}", json);
        // The serde path rejects it too.
        prop_assert!(serde_json::from_str::<Operation>(&json).is_err());
    }

    #[test]
    fn json_rejects_non_arrays(
        top in prop_oneof![
            Just("{}"), Just("{\"ops\":[1]}"), Just("\"abc\""), Just("1"), Just("-3"),
            Just("true"), Just("null"), Just("  \"[1]\"  "),
        ],
    ) {
        prop_assert_eq!(Operation::from_json(top).unwrap_err().code(), "not_an_array");
    }

    #[test]
    fn json_rejects_lone_surrogates(prefix in insert_text(), surrogate in lone_surrogate()) {
        let prefix_json = serde_json::to_string(&prefix).unwrap();
        let inner = &prefix_json[1..prefix_json.len() - 1];
        let json = format!("[1,\"{inner}{surrogate}\"]");
        prop_assert_eq!(Operation::from_json(&json).unwrap_err().code(), "invalid_json", "{}", json);
        // A proper pair is fine.
        let good = format!("[\"{inner}\\ud83d\\ude42\"]");
        let op = Operation::from_json(&good)?;
        prop_assert_eq!(op.components(), &[Component::Insert(format!("{prefix}🙂").into())][..]);
    }
}

#[test]
fn json_rejects_sums_past_max_safe_integer() {
    let max = ot_core::MAX_SAFE_INTEGER;
    let ok = Operation::from_json(&format!("[{max}]")).unwrap();
    assert_eq!(ok.base_len() as u64, max);
    let err = Operation::from_json(&format!("[{}, -1]", max)).unwrap_err();
    assert_eq!(
        err,
        OpJsonError::TooLarge {
            index: 1,
            value: "-1".into()
        }
    );
    let err = Operation::from_json(&format!("[-{}, \"a\", 2]", max - 1)).unwrap_err();
    assert_eq!(err.code(), "too_large");
}

// ---------------------------------------------------------------------------
// split: ops within limits
// ---------------------------------------------------------------------------

/// Small limits, some below what any edit needs (raised by `effective`).
fn limits() -> impl Strategy<Value = OpLimits> {
    (0usize..8, 0usize..9).prop_map(|(max_op_len, max_op_components)| OpLimits {
        max_op_len,
        max_op_components,
    })
}

/// A larger op than [`Plan`] makes: several plans composed on a longer text.
fn big_op(s: &str, plans: &[Plan]) -> Result<Operation, OtError> {
    let mut op = Operation::identity(len(s));
    let mut text = s.to_owned();
    for p in plans {
        let next = p.build_for(&text);
        text = next.apply(&text)?;
        op = op.compose(&next)?;
    }
    Ok(op)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn split_pieces_compose_to_the_original_and_fit(
        s in text_of(40),
        plans in prop::collection::vec(plan(), 1..5),
        limits in limits(),
    ) {
        let op = big_op(&s, &plans)?;
        let pieces = op.split(limits);
        prop_assert!(!pieces.is_empty());
        if op.fits(limits) {
            prop_assert_eq!(&pieces, &vec![op.clone()]);
        }
        let effective = limits.effective();
        let mut text = s.clone();
        let mut rope = Rope::from_str(&s);
        let mut composed: Option<Operation> = None;
        for p in &pieces {
            check_canonical(p)?;
            prop_assert!(p.fits(effective), "piece {:?} beyond {:?}", p.to_json(), effective);
            if pieces.len() > 1 {
                prop_assert!(!p.is_noop(), "an empty piece");
            }
            text = p.apply(&text)?;
            p.apply_to_rope(&mut rope)?;
            composed = Some(match composed {
                None => p.clone(),
                Some(c) => c.compose(p)?,
            });
        }
        prop_assert_eq!(composed.as_ref(), Some(&op));
        let expected = op.apply(&s)?;
        prop_assert_eq!(&text, &expected);
        prop_assert_eq!(rope.to_string(), expected);
        // The change is never cut finer than the size limit needs (plus one
        // piece per component limit hit): no more pieces than characters changed.
        prop_assert!(pieces.len() <= op.change_size().max(1));
    }
}

// ---------------------------------------------------------------------------
// conflict replay: the journal's resolutions recomputed from stored ops
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Every op a history applied is what `resolve` computes from the op as
    /// received and the ops applied between its base and its revision, under
    /// the rule in force; the other tie rule gives an op of the same lengths.
    #[test]
    fn replaying_a_resolution_recomputes_what_the_history_applied(
        s in text(),
        steps in prop::collection::vec((plan(), 0usize..4), 1..8),
    ) {
        let mut history = DocumentHistory::new();
        let mut texts = vec![String::new()];
        let mut first = Operation::new();
        first.insert(&s);
        history.receive("seed", 1, 0, first).map_err(|e| TestCaseError::fail(e.to_string()))?;
        texts.push(s.clone());
        for (i, (p, back)) in steps.iter().enumerate() {
            let base = history.revision().saturating_sub(*back as u64).max(1);
            let received = p.build_for(&texts[base as usize]);
            let receipt = history
                .receive(&format!("c{i}"), 1, base, received.clone())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let Receipt::Applied { applied, .. } = receipt else {
                return Err(TestCaseError::fail("not applied"));
            };
            let between: Vec<Operation> = history.retained_ops()
                [base as usize..(applied.rev - 1) as usize]
                .iter()
                .map(|a| a.op.clone())
                .collect();
            prop_assert_eq!(&resolve(&received, &between, TieRule::ReceivedFirst)?, &applied.op);
            let other = resolve(&received, &between, TieRule::ConcurrentFirst)?;
            prop_assert_eq!(other.base_len(), applied.op.base_len());
            prop_assert_eq!(other.target_len(), applied.op.target_len());
            texts.push(history.text().to_string());
        }
    }
}

// ---------------------------------------------------------------------------
// roll back: ops that lost a commit race are taken back, then received again
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Taking back the ops after revision `keep` leaves the history equal to
    /// one that received only the ops up to `keep` (text, revision, retained
    /// ops, every client's next seq); receiving the taken-back ops again, as
    /// sent, gives the same state as before the roll back.
    #[test]
    fn rolling_back_equals_never_having_received_the_ops_after(
        s in text(),
        steps in prop::collection::vec((plan(), 0usize..3, 0usize..3), 1..10),
        keep_from_end in 0usize..10,
    ) {
        let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
        let mut first = Operation::new();
        first.insert(&s);
        // Each received op as sent: (client, seq, base, op).
        let mut sent = vec![("seed".to_string(), 1u64, 0u64, first)];
        let mut texts = vec![String::new()];
        let mut full = DocumentHistory::new();
        let mut seqs = std::collections::HashMap::new();
        for (i, (p, back, client)) in std::iter::once((Plan { steps: vec![], delete_tail: false }, 0, 9))
            .chain(steps.iter().cloned())
            .enumerate()
        {
            let (client, seq, base, op) = if i == 0 {
                sent[0].clone()
            } else {
                let base = full.revision().saturating_sub(back as u64).max(1);
                let client = format!("c{client}");
                let seq = *seqs.entry(client.clone()).and_modify(|s| *s += 1).or_insert(1u64);
                let op = p.build_for(&texts[base as usize]);
                sent.push((client.clone(), seq, base, op.clone()));
                (client, seq, base, op)
            };
            full.receive(&client, seq, base, op).map_err(|e| fail(&e))?;
            texts.push(full.text().to_string());
        }
        let head = full.revision();
        let keep = head.saturating_sub(keep_from_end as u64).max(1);
        let mut prefix = DocumentHistory::new();
        for (client, seq, base, op) in &sent[..keep as usize] {
            prefix.receive(client, *seq, *base, op.clone()).map_err(|e| fail(&e))?;
        }
        let mut rolled = full.clone();
        rolled.roll_back_to(keep, Rope::from_str(&texts[keep as usize])).map_err(|e| fail(&e))?;
        prop_assert_eq!(rolled.revision(), keep);
        prop_assert_eq!(rolled.text().to_string(), texts[keep as usize].clone());
        prop_assert_eq!(rolled.retained_ops(), prefix.retained_ops());
        for (client, ..) in &sent {
            prop_assert_eq!(rolled.client(client).map(|r| (r.last_seq, r.last_rev, r.last_hash)).filter(|r| r.0 > 0),
                prefix.client(client).map(|r| (r.last_seq, r.last_rev, r.last_hash)));
        }
        for (client, seq, base, op) in &sent[keep as usize..] {
            let receipt = rolled.receive(client, *seq, *base, op.clone()).map_err(|e| fail(&e))?;
            let applied = matches!(receipt, Receipt::Applied { .. });
            prop_assert!(applied, "received again: {:?}", receipt);
        }
        prop_assert_eq!(rolled.snapshot(), full.snapshot());
        prop_assert_eq!(rolled.retained_ops(), full.retained_ops());
        // A wrong text or a revision not retained changes nothing.
        let before = rolled.snapshot();
        prop_assert!(rolled.roll_back_to(head + 1, Rope::new()).is_err());
        if !texts[keep as usize].is_empty() {
            prop_assert!(rolled.roll_back_to(keep, Rope::new()).is_err());
        }
        prop_assert_eq!(rolled.snapshot(), before);
    }
}

/// Any JSON value, as text: the items an op array may (or may not) hold.
fn any_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (1u32..5).prop_map(|n| n.to_string()),
        (1u32..5).prop_map(|n| format!("-{n}")),
        Just("0".to_owned()),
        Just("-0".to_owned()),
        Just("1.5".to_owned()),
        Just("2.0".to_owned()),
        Just("-0.0".to_owned()),
        Just("1e300".to_owned()),
        Just("9007199254740991".to_owned()),
        Just("9007199254740992".to_owned()),
        Just("-9007199254740992".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("true".to_owned()),
        Just("null".to_owned()),
        insert_text().prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""\"\\\u0001\ud83d\ude00""#.to_owned()),
        Just(r#"{"a":[1]}"#.to_owned()),
        Just("[[1],[]]".to_owned()),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(|items| format!("[{}]", items.join(",")))
    })
}

proptest! {
    #![proptest_config(config(1024))]

    /// `Deserialize` reads an op straight from the text; it must accept and
    /// refuse exactly what reading a JSON tree first does, with the same error.
    #[test]
    fn reading_an_op_straight_agrees_with_reading_its_tree(
        items in prop::collection::vec(any_json(), 0..6),
        top in prop_oneof![Just(None), any_json().prop_map(Some)],
    ) {
        let text = top.unwrap_or_else(|| format!("[{}]", items.join(",")));
        let tree = Operation::from_json(&text);
        let straight = serde_json::from_str::<Operation>(&text);
        match (&tree, &straight) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(OpJsonError::InvalidJson(_)), Err(_)) => {}
            (Err(e), Err(s)) => prop_assert!(
                s.to_string().starts_with(&e.to_string()),
                "{}: tree {} / straight {}", text, e, s
            ),
            _ => prop_assert!(false, "{}: tree {:?} / straight {:?}", text, tree, straight.map_err(|e| e.to_string())),
        }
    }
}
