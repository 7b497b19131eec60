//! One replay of each editing trace through one path, for counting
//! instructions under callgrind (`scripts/ot-core-instructions` runs it with
//! `--toggle-collect` on the replay function, so loading the traces is not
//! counted). Instructions are repeatable where wall-clock time on a shared
//! machine is not: they are what issue 16's ot-core goals are judged by
//! (operation path ≤ 1.3× the floor, history path ≤ 3×).
//!
//! ```text
//! instructions PATH [TRACE]   # PATH: floor | operation | history; TRACE: a name
//! ```
//!
//! Prints `patches <trace> <n>` for each trace replayed. Without valgrind it
//! simply replays (and checks the end text, so a wrong replay cannot be counted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

#[path = "common/trace_replay.rs"]
mod trace_replay;
use trace_replay::{load_traces_named, replay_floor, replay_history, replay_operation};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let path = args.next().unwrap_or_else(|| "operation".to_owned());
    let only = args.next();
    let Some(traces) = load_traces_named(only.as_deref()) else {
        return;
    };
    for trace in &traces {
        let (start, patches) = (
            black_box(trace.start.as_str()),
            black_box(&trace.patches[..]),
        );
        let text = match path.as_str() {
            "floor" => replay_floor(start, patches).to_string(),
            "operation" => replay_operation(start, patches).to_string(),
            "history" => replay_history(start, patches).text().to_string(),
            other => panic!("unknown path {other:?}: floor, operation or history"),
        };
        assert!(
            text == trace.end,
            "{}: the {path} path went wrong",
            trace.name
        );
        println!("patches {} {}", trace.name, trace.patches.len());
    }
}
