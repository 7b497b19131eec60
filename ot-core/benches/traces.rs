//! Replays the real editing traces of `josephg/editing-traces` (CC BY 4.0, see
//! `shared/data/editing-traces/README.md`) through three paths and compares them
//! in one run:
//!
//! - `floor`: every patch applied straight to a [`ropey::Rope`] with
//!   `remove` + `insert` (the cost of the text structure alone);
//! - `operation`: every patch built into one [`Operation`] with
//!   [`Operation::replace_range`] on the current length and applied with
//!   [`Operation::apply_to_rope`] (building and applying are both timed; the
//!   current length is tracked from each op's `target_len`, as an editor would);
//! - `history`: every patch sent through [`DocumentHistory::receive`] as if by
//!   one client with seq 1, 2, 3, … and `base_rev` = the current revision (no
//!   concurrency, so no transforms: the cost of hashing, dedup bookkeeping,
//!   cloning and storing each op). The history is trimmed with `trim_to(1000)`
//!   every 1000 ops so it holds between 1000 and 2000 ops and memory stays
//!   bounded.
//!
//! Throughput is in patches (edits) per second. Traces are read from
//! `$OT_TRACES_DIR` if set, else from
//! `$CARGO_MANIFEST_DIR/../../shared/data/editing-traces/sequential_traces/`
//! (only the top-level, Unicode `*.json.gz` files, not `ascii_only/`).
//! Loading, decompressing and parsing happen before timing; every path is
//! checked to reproduce `endContent` before it is benchmarked. If the folder
//! is missing, the benchmark prints a message and does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

#[path = "common/trace_replay.rs"]
mod trace_replay;
use trace_replay::{load_traces, replay_floor, replay_history, replay_operation, verify};

fn bench_traces(c: &mut Criterion) {
    let Some(traces) = load_traces() else {
        return;
    };
    for trace in &traces {
        verify(trace);
    }
    for trace in &traces {
        let mut group = c.benchmark_group(format!("traces/{}", trace.name));
        // One iteration replays a whole trace (milliseconds), so use flat sampling.
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(trace.patches.len() as u64));
        let (start, patches) = (trace.start.as_str(), trace.patches.as_slice());
        group.bench_function("floor", |b| {
            b.iter_with_large_drop(|| replay_floor(black_box(start), black_box(patches)))
        });
        group.bench_function("operation", |b| {
            b.iter_with_large_drop(|| replay_operation(black_box(start), black_box(patches)))
        });
        group.bench_function("history", |b| {
            b.iter_with_large_drop(|| replay_history(black_box(start), black_box(patches)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench_traces);
criterion_main!(benches);
