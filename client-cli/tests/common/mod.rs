//! What the `ot-client` binary's end-to-end tests share: running the binary
//! with its own data directory and `--server`, and reading the server's ops
//! log. Each test file includes it with `mod common;` and uses a part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use e2e_tests::http_get;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ot-client");
/// Longest any one client run (or wait) may take.
pub const LIMIT: Duration = Duration::from_secs(60);

/// An `ot-client` command with its own data directory and `--server`.
pub fn cli(data: &Path, server: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("OT_CLIENT_DATA_DIR", data)
        .env_remove("OT_SERVER")
        .env_remove("OT_NAME")
        .env_remove("OT_TOKEN")
        .env_remove("OT_TOKEN_FILE")
        .arg("--server")
        .arg(server)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // A secured server in `OT_TEST_AUTH=1` runs.
    if let Some(token) = e2e_tests::test_token(None) {
        cmd.env("OT_TOKEN", token);
    }
    cmd
}

/// Held while a child process is started and while a test drops a session
/// (releasing its slot lock): a child forked in between would hold a copy of
/// the lock file's descriptor until it execs, keeping the slot locked a moment
/// longer (only in tests: the real client starts no processes).
pub static FORK: Mutex<()> = Mutex::new(());

/// Start a command (its stdout and stderr piped), never while a test drops a session.
pub fn start(mut cmd: Command) -> Child {
    let _guard = FORK.lock().unwrap_or_else(|e| e.into_inner());
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Run {
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Run to completion (bounded).
pub async fn run(cmd: Command) -> Run {
    let out = timeout(LIMIT, start(cmd).wait_with_output())
        .await
        .expect("ot-client finished in time")
        .expect("ot-client ran");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// `ot-client --server ws://ADDR ARGS…` with data directory `data`: must
/// succeed (bounded) without a word on stderr. Returns stdout.
pub async fn ok(data: &Path, addr: SocketAddr, args: &[&str]) -> String {
    let mut cmd = cli(data, &format!("ws://{addr}"));
    cmd.args(args);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "ot-client {args:?} failed: {r:?}");
    assert_eq!(r.stderr, "", "ot-client {args:?} complained: {r:?}");
    r.stdout
}

/// The server's ops log of `doc` (all of it).
pub async fn ops_log(addr: SocketAddr, doc: &str) -> Vec<Value> {
    let body = http_get(addr, &format!("/api/docs/{doc}/ops?from=0&limit=1000"))
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["ops"].as_array().unwrap().clone()
}

/// Every (client, seq) of the ops log appears once, and the revisions are
/// 1..=N. Returns the seqs per client, in log order.
pub fn exactly_once(ops: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut seen = BTreeSet::new();
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op["rev"].as_u64(), Some(i as u64 + 1), "{ops:#?}");
        let client = op["client"].as_str().unwrap().to_owned();
        let seq = op["seq"].as_u64().unwrap();
        assert!(
            seen.insert((client.clone(), seq)),
            "({client}, {seq}) applied twice: {ops:#?}"
        );
        seqs.entry(client).or_default().push(seq);
    }
    seqs
}

/// The state files (`*.json`) under a client data directory, by client id.
pub fn state_files(data: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, found: &mut BTreeMap<String, PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "json") {
                let id = path.file_stem().unwrap().to_string_lossy().into_owned();
                found.insert(id, path);
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(data, &mut found);
    found
}
