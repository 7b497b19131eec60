//! The editing traces and the three replay paths, shared by the `traces`
//! bench (criterion, wall clock) and the `instructions` bench (one replay
//! per run, for `scripts/ot-core-instructions` to count under callgrind).
#![allow(dead_code)] // each bench uses part of it

use std::io::Read;
use std::path::{Path, PathBuf};

use ot_core::history::DocumentHistory;
use ot_core::{Operation, Text};
use ropey::Rope;
use serde::Deserialize;

/// Keep this many ops in the history when trimming.
pub const KEEP_OPS: usize = 1000;
/// Trim the history every this many ops.
pub const TRIM_EVERY: u64 = 1000;

/// The on-disk form of a sequential trace.
#[derive(Deserialize)]
struct RawTrace {
    #[serde(rename = "startContent")]
    start_content: String,
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<RawTxn>,
}

#[derive(Deserialize)]
struct RawTxn {
    /// `[pos, delCount, inserted]`, positions in Unicode scalar values.
    patches: Vec<(usize, usize, String)>,
}

/// One edit: delete `del` chars at `pos`, then insert `ins` there.
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub ins: String,
}

/// A trace flattened to its patches, ready to replay.
pub struct Trace {
    pub name: String,
    pub start: String,
    pub end: String,
    pub patches: Vec<Patch>,
}

fn traces_dir() -> PathBuf {
    match std::env::var_os("OT_TRACES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/editing-traces/sequential_traces"),
    }
}

fn load_trace(path: &Path) -> Trace {
    let file = std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("cannot open trace {}: {e}", path.display()));
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .unwrap_or_else(|e| panic!("cannot decompress trace {}: {e}", path.display()));
    let raw: RawTrace = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("cannot parse trace {}: {e}", path.display()));
    let name = path.file_name().and_then(|n| n.to_str()).map_or_else(
        || path.display().to_string(),
        |n| n.trim_end_matches(".json.gz").to_owned(),
    );
    let patches = raw
        .txns
        .into_iter()
        .flat_map(|txn| txn.patches)
        .map(|(pos, del, ins)| Patch { pos, del, ins })
        .collect();
    Trace {
        name,
        start: raw.start_content,
        end: raw.end_content,
        patches,
    }
}

/// All `*.json.gz` traces in the folder, sorted by name; `None` if the folder is missing.
pub fn load_traces() -> Option<Vec<Trace>> {
    load_traces_named(None)
}

/// [`load_traces`], only the trace called `only` if given (the others are
/// not even decompressed).
pub fn load_traces_named(only: Option<&str>) -> Option<Vec<Trace>> {
    let dir = traces_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!(
                "traces bench: editing traces not found at {} ({e}); set OT_TRACES_DIR to the \
                 sequential_traces folder. Skipping.",
                dir.display()
            );
            return None;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(".json.gz"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        eprintln!(
            "traces bench: no *.json.gz traces in {}. Skipping.",
            dir.display()
        );
        return None;
    }
    let wanted = |p: &PathBuf| {
        only.is_none_or(|name| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.trim_end_matches(".json.gz") == name)
        })
    };
    Some(
        paths
            .iter()
            .filter(|p| wanted(p))
            .map(|p| load_trace(p))
            .collect(),
    )
}

/// Path (a): the patches applied straight to a rope.
#[inline(never)]
pub fn replay_floor(start: &str, patches: &[Patch]) -> Rope {
    let mut rope = Rope::from_str(start);
    for p in patches {
        if p.del > 0 {
            rope.remove(p.pos..p.pos + p.del);
        }
        if !p.ins.is_empty() {
            rope.insert(p.pos, &p.ins);
        }
    }
    rope
}

/// Path (b): one operation per patch, applied to a rope.
///
/// Like an editor, the replay keeps the document's length beside the rope
/// ([`Text`]) instead of asking the rope for it (`Rope::len_chars` is not
/// free in ropey 1.x: it sums the root's children, or scans a root leaf);
/// [`Text::apply`] still checks every op against it.
#[inline(never)]
pub fn replay_operation(start: &str, patches: &[Patch]) -> Rope {
    let mut text = Text::from(start);
    for p in patches {
        let op = Operation::replace_range(text.len_chars(), p.pos, p.del, &p.ins)
            .expect("patch out of range");
        text.apply(&op).expect("op does not fit");
    }
    text.into_rope()
}

/// Path (c): one operation per patch, received by a document history from one client.
#[inline(never)]
pub fn replay_history(start: &str, patches: &[Patch]) -> DocumentHistory {
    let mut history = DocumentHistory::new();
    let mut seq = 0;
    let mut len = 0;
    if !start.is_empty() {
        seq += 1;
        let op = Operation::insert_at(0, 0, start).expect("start content");
        len = op.target_len();
        history
            .receive("bench", seq, 0, op)
            .expect("start rejected");
    }
    for p in patches {
        let op = Operation::replace_range(len, p.pos, p.del, &p.ins).expect("patch out of range");
        len = op.target_len();
        seq += 1;
        let base_rev = history.revision();
        history
            .receive("bench", seq, base_rev, op)
            .expect("op rejected");
        if seq.is_multiple_of(TRIM_EVERY) {
            history.trim_to(KEEP_OPS);
        }
    }
    history
}

/// Check that every path reproduces `endContent`; panic with the trace and path otherwise.
pub fn verify(trace: &Trace) {
    let check = |path: &str, got: String| {
        if got != trace.end {
            let at = got
                .chars()
                .zip(trace.end.chars())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| got.chars().count().min(trace.end.chars().count()));
            panic!(
                "trace {}: the {path} path does not reproduce endContent \
                 (got {} chars, expected {}; first difference at char {at})",
                trace.name,
                got.chars().count(),
                trace.end.chars().count()
            );
        }
    };
    check(
        "floor",
        replay_floor(&trace.start, &trace.patches).to_string(),
    );
    check(
        "operation",
        replay_operation(&trace.start, &trace.patches).to_string(),
    );
    let history = replay_history(&trace.start, &trace.patches);
    assert!(
        history.retained_ops().len() <= KEEP_OPS + TRIM_EVERY as usize,
        "trace {}: history not trimmed",
        trace.name
    );
    check("history", history.text().to_string());
}
