//! Micro-benchmarks of `transform` and `compose`: ot-core's [`Operation`]
//! against the `operational-transform` 0.6 crate's `OperationSeq`, on the same
//! inputs.
//!
//! Inputs are deterministic pseudo-random operation pairs (ChaCha8 seeded with
//! a fixed value) on ASCII documents, built as ot-core operations and converted
//! to `OperationSeq` before timing:
//!
//! - `typing_1k`, `typing_100k`: each op is one small edit (insert 1–3 chars,
//!   delete 1–3 chars, or both) at a random place in a 1,000- or 100,000-char
//!   document — the shape of live typing;
//! - `multi_10k_20`, `multi_100k_200`: each op has 20 (resp. 200) edits of up
//!   to 16 chars spread over a 10,000- (resp. 100,000-) char document.
//!
//! For `transform` both ops of a pair are based on the document; for `compose`
//! the second is based on the first one's result. One iteration processes every
//! pair of a set; throughput is in pairs per second. Before timing, the results
//! of both libraries are checked to be equal component by component.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use operational_transform::{Operation as TheirComponent, OperationSeq};
use ot_core::{Component, Operation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to generate one input set.
struct Shape {
    name: &'static str,
    doc_len: usize,
    edits_per_op: usize,
    max_edit: usize,
    pairs: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "typing_1k",
        doc_len: 1_000,
        edits_per_op: 1,
        max_edit: 3,
        pairs: 1_000,
    },
    Shape {
        name: "typing_100k",
        doc_len: 100_000,
        edits_per_op: 1,
        max_edit: 3,
        pairs: 1_000,
    },
    Shape {
        name: "multi_10k_20",
        doc_len: 10_000,
        edits_per_op: 20,
        max_edit: 16,
        pairs: 200,
    },
    Shape {
        name: "multi_100k_200",
        doc_len: 100_000,
        edits_per_op: 200,
        max_edit: 16,
        pairs: 50,
    },
];

fn random_text(rng: &mut ChaCha8Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// A random op on a document of `doc_len` chars with about `edits` edits of up to `max_edit` chars.
fn random_op(rng: &mut ChaCha8Rng, doc_len: usize, edits: usize, max_edit: usize) -> Operation {
    let mut positions: Vec<usize> = (0..edits).map(|_| rng.random_range(0..=doc_len)).collect();
    positions.sort_unstable();
    let mut op = Operation::new();
    let mut cursor = 0;
    for pos in positions {
        let pos = pos.max(cursor);
        op.retain(pos - cursor);
        let kind = rng.random_range(0..3);
        if kind != 1 {
            let len = rng.random_range(1..=max_edit);
            op.insert(&random_text(rng, len));
        }
        let del = if kind != 0 && pos < doc_len {
            rng.random_range(1..=max_edit.min(doc_len - pos))
        } else {
            0
        };
        op.delete(del);
        cursor = pos + del;
    }
    op.retain(doc_len - cursor);
    op
}

fn to_theirs(op: &Operation) -> OperationSeq {
    let mut seq = OperationSeq::with_capacity(op.components().len());
    for component in op.components() {
        match component {
            Component::Retain(n) => seq.retain(*n as u64),
            Component::Insert(s) => seq.insert(s),
            Component::Delete(n) => seq.delete(*n as u64),
        }
    }
    assert_eq!(seq.base_len(), op.base_len());
    assert_eq!(seq.target_len(), op.target_len());
    seq
}

fn same(ours: &Operation, theirs: &OperationSeq) -> bool {
    ours.components().len() == theirs.ops().len()
        && ours
            .components()
            .iter()
            .zip(theirs.ops())
            .all(|(a, b)| match (a, b) {
                (Component::Retain(x), TheirComponent::Retain(y))
                | (Component::Delete(x), TheirComponent::Delete(y)) => *x as u64 == *y,
                (Component::Insert(x), TheirComponent::Insert(y)) => x == y,
                _ => false,
            })
}

/// One input set in both representations.
struct Inputs {
    /// Concurrent pairs (same base) for transform.
    transform_ours: Vec<(Operation, Operation)>,
    transform_theirs: Vec<(OperationSeq, OperationSeq)>,
    /// Consecutive pairs (second based on the first's result) for compose.
    compose_ours: Vec<(Operation, Operation)>,
    compose_theirs: Vec<(OperationSeq, OperationSeq)>,
}

fn inputs(shape: &Shape, seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let doc = random_text(&mut rng, shape.doc_len);
    let (n, edits, max) = (shape.doc_len, shape.edits_per_op, shape.max_edit);
    let transform_ours: Vec<_> = (0..shape.pairs)
        .map(|_| {
            (
                random_op(&mut rng, n, edits, max),
                random_op(&mut rng, n, edits, max),
            )
        })
        .collect();
    let compose_ours: Vec<_> = (0..shape.pairs)
        .map(|_| {
            let a = random_op(&mut rng, n, edits, max);
            let b = random_op(&mut rng, a.target_len(), edits, max);
            (a, b)
        })
        .collect();
    let convert = |pairs: &[(Operation, Operation)]| -> Vec<_> {
        pairs
            .iter()
            .map(|(a, b)| (to_theirs(a), to_theirs(b)))
            .collect()
    };
    let inputs = Inputs {
        transform_theirs: convert(&transform_ours),
        compose_theirs: convert(&compose_ours),
        transform_ours,
        compose_ours,
    };
    verify(shape, &doc, &inputs);
    inputs
}

/// Both libraries must give the same results on every pair, and they must apply to the document.
fn verify(shape: &Shape, doc: &str, inputs: &Inputs) {
    for (i, ((a, b), (ta, tb))) in inputs
        .transform_ours
        .iter()
        .zip(&inputs.transform_theirs)
        .enumerate()
    {
        let (a2, b2) = a.transform(b).unwrap();
        let (ta2, tb2) = ta.transform(tb).unwrap();
        assert!(
            same(&a2, &ta2) && same(&b2, &tb2),
            "{}: transform results differ on pair {i}",
            shape.name
        );
        let left = b2.apply(&a.apply(doc).unwrap()).unwrap();
        let right = a2.apply(&b.apply(doc).unwrap()).unwrap();
        assert_eq!(
            left, right,
            "{}: transform does not converge on pair {i}",
            shape.name
        );
    }
    for (i, ((a, b), (ta, tb))) in inputs
        .compose_ours
        .iter()
        .zip(&inputs.compose_theirs)
        .enumerate()
    {
        let ab = a.compose(b).unwrap();
        let tab = ta.compose(tb).unwrap();
        assert!(
            same(&ab, &tab),
            "{}: compose results differ on pair {i}",
            shape.name
        );
        assert_eq!(
            ab.apply(doc).unwrap(),
            b.apply(&a.apply(doc).unwrap()).unwrap(),
            "{}: compose is wrong on pair {i}",
            shape.name
        );
    }
}

fn bench_algebra(c: &mut Criterion) {
    for (seed, shape) in (0u64..).zip(SHAPES) {
        let inputs = inputs(shape, 0x07_C0DE + seed);

        let mut group = c.benchmark_group(format!("transform/{}", shape.name));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(shape.pairs as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter("ot-core"),
            &inputs.transform_ours,
            |bench, pairs| {
                bench.iter(|| {
                    for (a, b) in pairs {
                        black_box(black_box(a).transform(black_box(b)).unwrap());
                    }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::from_parameter("operational-transform"),
            &inputs.transform_theirs,
            |bench, pairs| {
                bench.iter(|| {
                    for (a, b) in pairs {
                        black_box(black_box(a).transform(black_box(b)).unwrap());
                    }
                })
            },
        );
        group.finish();

        let mut group = c.benchmark_group(format!("compose/{}", shape.name));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(shape.pairs as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter("ot-core"),
            &inputs.compose_ours,
            |bench, pairs| {
                bench.iter(|| {
                    for (a, b) in pairs {
                        black_box(black_box(a).compose(black_box(b)).unwrap());
                    }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::from_parameter("operational-transform"),
            &inputs.compose_theirs,
            |bench, pairs| {
                bench.iter(|| {
                    for (a, b) in pairs {
                        black_box(black_box(a).compose(black_box(b)).unwrap());
                    }
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench_algebra);
criterion_main!(benches);
