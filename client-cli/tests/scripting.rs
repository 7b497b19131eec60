//! The scripting commands of the real `ot-client` binary against a real server
//! running in this process on a free loopback port. Every client process gets
//! its own `OT_CLIENT_DATA_DIR` (a temporary folder) and `--server ws://ADDR`.
//!
//! - `append`, `insert`, `delete`, `replace --file` with emoji, combining marks
//!   and CJK (positions in characters), checked against the server after each;
//!   `cat`, `cat --rev R` for every revision, `history` against the ops log;
//! - `conflicts` lists a conflict provoked by two concurrent sessions;
//! - `watch --count N` and `watch --text --count N` print the changes another
//!   process makes, then exit;
//! - a saved state that resumes behind the head catches up before `append`,
//!   `insert` or `watch` use its text;
//! - an edit the server refuses: one line naming the reason and the conflict
//!   copy, and later runs do not resend it;
//! - `sync` with nothing saved; the exit codes and one-line messages of
//!   failures (unreachable server, unknown document, position out of range,
//!   invalid document id);
//! - two scripted clients appending in loops at once on one data directory:
//!   every edit arrives exactly once, under two client ids (the slot lock).
//!
//! Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use client_cli::session::{ServerUrl, Session};
use client_cli::store::Store;
use common::{cli, exactly_once, ok, ops_log, run, state_files, BIN, LIMIT};
use e2e_tests::{doc_state, replay_ops, start_server};
use ot_core::Operation;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};

/// Like [`ok`] but the run must fail with exit code 1 and exactly one line
/// `ot-client: …` on stderr (and nothing on stdout). Returns that line.
async fn fails(data: &Path, server: &str, args: &[&str]) -> String {
    let mut cmd = cli(data, server);
    cmd.args(args);
    let started = Instant::now();
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1), "ot-client {args:?} should fail: {r:?}");
    assert_eq!(r.stdout, "", "ot-client {args:?}: {r:?}");
    let line = r
        .stderr
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("stderr ends with a newline: {r:?}"));
    assert!(!line.contains('\n'), "one line on stderr: {r:?}");
    assert!(line.starts_with("ot-client: "), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failing took {:?}",
        started.elapsed()
    );
    line.to_owned()
}

/// `text` with `ins` inserted at character `pos`.
fn insert_chars(text: &str, pos: usize, ins: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    chars.splice(pos..pos, ins.chars());
    chars.into_iter().collect()
}

/// `text` without the `len` characters at `pos`.
fn delete_chars(text: &str, pos: usize, len: usize) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    chars.drain(pos..pos + len);
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_with_wide_and_combining_characters_cat_and_history() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    let doc = "uni";

    // Each step: the command, then the text the server must have.
    let mut expected = String::new();
    ok(data, addr, &["append", doc, "ab"]).await;
    expected.push_str("ab");
    assert_eq!(doc_state(addr, doc).await.unwrap(), (1, expected.clone()));

    // Emoji (one char), a flag (two chars), an emoji with a skin tone (two
    // chars), a combining acute (e + U+0301) and CJK: positions count chars.
    let inserts: [(usize, &str); 5] = [
        (1, "😀"),
        (2, "🇫🇷"),
        (4, "👋🏽"),
        (3, "e\u{301}"),
        (9, "世界"),
    ];
    for (pos, text) in inserts {
        ok(data, addr, &["insert", doc, &pos.to_string(), text]).await;
        expected = insert_chars(&expected, pos, text);
        assert_eq!(doc_state(addr, doc).await.unwrap().1, expected);
    }
    assert_eq!(expected, "a😀🇫e\u{301}🇷👋🏽b世界");
    // Delete the combining mark alone, then the flag's second half and the
    // hand (with its skin tone), then one CJK character.
    for (pos, len) in [(4, 1), (4, 3), (5, 1)] {
        ok(
            data,
            addr,
            &["delete", doc, &pos.to_string(), &len.to_string()],
        )
        .await;
        expected = delete_chars(&expected, pos, len);
        assert_eq!(doc_state(addr, doc).await.unwrap().1, expected);
    }
    assert_eq!(expected, "a😀🇫eb界");
    ok(data, addr, &["append", doc, " ✓\n"]).await;
    expected.push_str(" ✓\n");
    assert_eq!(doc_state(addr, doc).await.unwrap().1, expected);

    // replace --file: the server ends with the file's text, sent as a diff
    // (the common prefix is retained, not deleted and inserted again).
    let file = data.join("wanted.txt");
    let wanted = "a😀🇫🇷 e\u{301}b界 — 日本語\nzweite Zeile 👍🏿\n";
    std::fs::write(&file, wanted).unwrap();
    ok(
        data,
        addr,
        &["replace", doc, "--file", file.to_str().unwrap()],
    )
    .await;
    let (rev_after_replace, text) = doc_state(addr, doc).await.unwrap();
    assert_eq!(text, wanted);
    let log = ops_log(addr, doc).await;
    let last = &log.last().unwrap()["op"];
    assert_eq!(last[0].as_i64(), Some(3), "the diff retains a😀🇫: {last}");
    // The same file again: nothing to send, no new revision.
    ok(
        data,
        addr,
        &["replace", doc, "--file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(doc_state(addr, doc).await.unwrap().0, rev_after_replace);

    // cat: exactly the text (no newline added); cat --rev R: the text at R,
    // for every R, as the ops log replays it.
    assert_eq!(ok(data, addr, &["cat", doc]).await, wanted);
    let log = ops_log(addr, doc).await;
    assert_eq!(log.len() as u64, rev_after_replace);
    let mut at = String::new();
    assert_eq!(ok(data, addr, &["cat", doc, "--rev", "0"]).await, "");
    for op in &log {
        at = Operation::from_json_value(&op["op"])
            .unwrap()
            .apply(&at)
            .unwrap();
        let rev = op["rev"].to_string();
        assert_eq!(ok(data, addr, &["cat", doc, "--rev", &rev]).await, at);
    }
    assert_eq!(at, wanted);
    assert_eq!(replay_ops(addr, doc).await.unwrap().1, wanted);

    // The server address from the environment (OT_SERVER) instead of --server.
    let mut cmd = Command::new(BIN);
    cmd.env("OT_CLIENT_DATA_DIR", data)
        .env("OT_SERVER", format!("ws://{addr}"))
        .args(["cat", doc, "--rev", "1"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(token) = e2e_tests::test_token(None) {
        cmd.env("OT_TOKEN", token);
    }
    let r = run(cmd).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (Some(0), "ab", "")
    );

    // history: one line per revision, `rev TAB time TAB client TAB seq TAB op`,
    // matching the ops log. One data directory used in turn: one client id
    // (its slot reused by every run), seqs 1, 2, 3, …
    let history = ok(data, addr, &["history", doc]).await;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), log.len(), "{history}");
    let client = log[0]["client"].as_str().unwrap();
    for (line, op) in lines.iter().zip(&log) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 5, "{line}");
        assert_eq!(fields[0], op["rev"].to_string());
        assert_eq!(fields[1], op["time_ms"].to_string());
        assert!(
            fields[1].parse::<u64>().unwrap() > 1_600_000_000_000,
            "{line}"
        );
        assert_eq!(fields[2], op["client"].as_str().unwrap());
        assert_eq!(fields[2], client, "one writer: {line}");
        assert_eq!(fields[3], op["seq"].to_string());
        assert_eq!(fields[3], fields[0], "seq = rev for the only writer");
        let printed: Value = serde_json::from_str(fields[4]).unwrap();
        assert_eq!(printed, op["op"]);
    }
    assert_eq!(state_files(data).len(), 1, "one slot, reused");
    // --from and --limit.
    let page = ok(data, addr, &["history", doc, "--from", "2", "--limit", "3"]).await;
    let revs: Vec<&str> = page
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(revs, ["3", "4", "5"]);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_lists_an_op_transformed_past_a_concurrent_one() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let data = tempfile::tempdir().unwrap();
    let doc = "conf";
    let url = ServerUrl::parse(&format!("ws://{addr}")).unwrap();
    let store = Store::new(data.path());
    let within = Duration::from_secs(20);

    // Two sessions on one machine: two slots, two client ids.
    let mut a = Session::open(store.clone(), url.clone(), doc, None, None)
        .unwrap()
        .with_connect_options(e2e_tests::test_connect_options());
    let mut b = Session::open(store.clone(), url.clone(), doc, None, None)
        .unwrap()
        .with_connect_options(e2e_tests::test_connect_options());
    assert_ne!(a.client_id(), b.client_id());
    a.connect().await.unwrap();
    a.local_edit(&Operation::insert_at(0, 0, "hello").unwrap())
        .await
        .unwrap();
    a.wait_saved(within).await.unwrap();
    b.connect().await.unwrap();
    assert_eq!(b.client().text().to_string(), "hello");
    // No conflict yet.
    let data_dir = data.path();
    assert_eq!(ok(data_dir, addr, &["conflicts", doc]).await, "");

    // Both edit revision 1 at once: whichever the server takes second is
    // transformed past the other.
    a.local_edit(&Operation::insert_at(5, 0, "¡").unwrap())
        .await
        .unwrap();
    b.local_edit(&Operation::insert_at(5, 5, " 世界").unwrap())
        .await
        .unwrap();
    a.wait_saved(within).await.unwrap();
    b.wait_saved(within).await.unwrap();
    let deadline = Instant::now() + within;
    while a.client().revision() < 3 || b.client().revision() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let session = if a.client().revision() < 3 {
            &mut a
        } else {
            &mut b
        };
        timeout(left, session.next_events())
            .await
            .expect("both sessions reach revision 3")
            .unwrap();
    }
    assert_eq!(a.client().text().to_string(), "¡hello 世界");
    assert_eq!(b.client().text().to_string(), "¡hello 世界");
    let (a_id, b_id) = (a.client_id().to_owned(), b.client_id().to_owned());
    drop((a, b));

    let log = ops_log(addr, doc).await;
    assert_eq!(log.len(), 3);
    let second = &log[2];
    let out = ok(data_dir, addr, &["conflicts", doc]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let c: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(c["rev"], 3);
    assert_eq!(c["base_rev"], 1);
    assert_eq!(c["transformed_past"], serde_json::json!([2, 2]));
    assert_eq!(c["client"], second["client"]);
    assert_eq!(c["seq"], 1);
    assert_eq!(c["applied"], second["op"]);
    // The original was at revision 1; the applied op is shifted by the other insert.
    let (original, applied) = if c["client"] == a_id.as_str() {
        (serde_json::json!(["¡", 5]), serde_json::json!(["¡", 8]))
    } else {
        assert_eq!(c["client"], b_id.as_str());
        (
            serde_json::json!([5, " 世界"]),
            serde_json::json!([6, " 世界"]),
        )
    };
    assert_eq!((&c["original"], &c["applied"]), (&original, &applied));

    server.stop().await.unwrap();
}

/// Start `ot-client watch ARGS…` in the background with stdout piped.
fn spawn_watch(data: &Path, addr: SocketAddr, args: &[&str]) -> Child {
    let mut cmd = cli(data, &format!("ws://{addr}"));
    cmd.arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_changes_another_process_makes() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let doc = "watched";
    let editor_data = tempfile::tempdir().unwrap();
    let ops_data = tempfile::tempdir().unwrap();
    let text_data = tempfile::tempdir().unwrap();
    ok(editor_data.path(), addr, &["append", doc, "héllo"]).await;

    let ops_watch = spawn_watch(ops_data.path(), addr, &[doc, "--count", "3"]);
    let mut text_watch = spawn_watch(text_data.path(), addr, &[doc, "--text", "--count", "3"]);
    // --text prints the whole text at once: then it is connected.
    let mut text_lines = BufReader::new(text_watch.stdout.take().unwrap()).lines();
    let first = timeout(LIMIT, text_lines.next_line())
        .await
        .expect("watch --text prints the text")
        .unwrap();
    assert_eq!(first.as_deref(), Some("héllo"));
    // The other one prints nothing until a change: it is connected once it has
    // saved its state (that happens after the server's first message).
    let deadline = Instant::now() + LIMIT;
    while state_files(ops_data.path()).is_empty() {
        assert!(Instant::now() < deadline, "watch did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another process edits three times.
    ok(editor_data.path(), addr, &["insert", doc, "1", "👋🏽"]).await;
    ok(editor_data.path(), addr, &["delete", doc, "0", "1"]).await;
    ok(editor_data.path(), addr, &["append", doc, " 世界"]).await;

    let ops_out = timeout(LIMIT, ops_watch.wait_with_output())
        .await
        .expect("watch --count 3 exits after three changes")
        .unwrap();
    assert!(ops_out.status.success(), "{ops_out:?}");
    assert_eq!(String::from_utf8_lossy(&ops_out.stderr), "");
    let printed: Vec<Value> = String::from_utf8(ops_out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let log = ops_log(addr, doc).await;
    assert_eq!(log.len(), 4);
    assert_eq!(printed.len(), 3, "{printed:?}");
    for (p, op) in printed.iter().zip(&log[1..]) {
        assert_eq!(p["rev"], op["rev"]);
        assert_eq!(p["op"], op["op"]);
    }

    let mut rest = Vec::new();
    while let Some(line) = timeout(LIMIT, text_lines.next_line())
        .await
        .expect("watch --text prints each change")
        .unwrap()
    {
        rest.push(line);
    }
    assert_eq!(rest, ["h👋🏽éllo", "👋🏽éllo", "👋🏽éllo 世界"]);
    let status = timeout(LIMIT, text_watch.wait())
        .await
        .expect("watch --text --count 3 exits")
        .unwrap();
    assert!(status.success());
    assert_eq!(doc_state(addr, doc).await.unwrap().1, "👋🏽éllo 世界");

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_saved_state_catches_up_before_editing_or_watching() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let doc = "stale";
    let (mine, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mine, other) = (mine.path(), other.path());

    // My saved state stops at revision 1; someone else edits on.
    ok(mine, addr, &["append", doc, "a"]).await;
    for text in ["b", "c"] {
        ok(other, addr, &["append", doc, text]).await;
    }
    // My next run resumes from revision 1: `append` still appends to the
    // current text and `insert` positions refer to it, not to the saved one.
    ok(mine, addr, &["append", doc, "D"]).await;
    assert_eq!(doc_state(addr, doc).await.unwrap(), (4, "abcD".to_owned()));
    ok(other, addr, &["append", doc, "e"]).await;
    ok(mine, addr, &["insert", doc, "4", "_"]).await;
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (6, "abcD_e".to_owned())
    );

    // `watch` from a stale state prints the current text first, and only the
    // changes made while it watches (not the ones its saved state missed).
    ok(other, addr, &["append", doc, "f"]).await;
    let mut watch = spawn_watch(mine, addr, &[doc, "--text", "--count", "1"]);
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = timeout(LIMIT, lines.next_line())
        .await
        .expect("watch --text prints the text")
        .unwrap();
    assert_eq!(first.as_deref(), Some("abcD_ef"));
    ok(other, addr, &["append", doc, "g"]).await;
    let second = timeout(LIMIT, lines.next_line()).await.unwrap().unwrap();
    assert_eq!(second.as_deref(), Some("abcD_efg"));
    let status = timeout(LIMIT, watch.wait()).await.unwrap().unwrap();
    assert!(status.success());
    exactly_once(&ops_log(addr, doc).await);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_with_nothing_saved_and_failures_with_one_line_reasons() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let ws = format!("ws://{addr}");
    let data = tempfile::tempdir().unwrap();
    let data = data.path();

    // sync with nothing saved: says so, succeeds, changes nothing.
    assert_eq!(
        ok(data, addr, &["sync", "fresh"]).await,
        "nothing saved for fresh\n"
    );
    let (status, _) = e2e_tests::http_get_status(addr, "/api/docs/fresh")
        .await
        .unwrap();
    assert_eq!(
        status, 404,
        "sync with nothing saved does not create the document"
    );

    // An unreachable server (a free port nobody listens on).
    let nowhere = format!("ws://127.0.0.1:{}", e2e_tests::free_port());
    for args in [
        &["insert", "d", "0", "x"][..],
        &["append", "d", "x"],
        &["cat", "d"],
        &["history", "d"],
        &["watch", "d"],
    ] {
        let line = fails(data, &nowhere, args).await;
        assert!(
            line.contains("127.0.0.1") && line.to_lowercase().contains("refused"),
            "{args:?}: {line}"
        );
    }

    // An unknown document.
    let line = fails(data, &ws, &["cat", "nope"]).await;
    assert!(line.contains("not_found"), "{line}");
    let line = fails(data, &ws, &["cat", "nope", "--rev", "0"]).await;
    assert!(line.contains("not_found"), "{line}");
    let line = fails(data, &ws, &["history", "nope"]).await;
    assert!(line.contains("not_found"), "{line}");

    // Positions out of range: nothing changes.
    ok(data, addr, &["append", "d", "añb"]).await;
    for args in [
        &["insert", "d", "4", "x"][..],
        &["delete", "d", "2", "2"],
        &["delete", "d", "4", "0"],
    ] {
        let line = fails(data, &ws, args).await;
        assert!(
            line.contains("outside a document of 3 characters"),
            "{line}"
        );
    }
    assert_eq!(doc_state(addr, "d").await.unwrap(), (1, "añb".to_owned()));
    // A revision that does not exist yet.
    let line = fails(data, &ws, &["cat", "d", "--rev", "2"]).await;
    assert!(line.contains("future_revision"), "{line}");
    // The edge positions are fine.
    ok(data, addr, &["insert", "d", "3", "!"]).await;
    ok(data, addr, &["delete", "d", "0", "1"]).await;
    assert_eq!(doc_state(addr, "d").await.unwrap(), (3, "ñb!".to_owned()));

    // Invalid document ids, refused before contacting the server.
    let long = "x".repeat(129);
    for bad in ["a/b", "with space", "ümlaut", "", long.as_str(), "a?b=c"] {
        for args in [
            &["cat", bad][..],
            &["append", bad, "x"],
            &["sync", bad],
            &["watch", bad],
        ] {
            let line = fails(data, &nowhere, args).await;
            assert!(line.contains("invalid document id"), "{args:?}: {line}");
        }
    }
    // An invalid server address.
    let line = fails(data, "ws://host/path", &["cat", "d"]).await;
    assert!(line.contains("ws://HOST:PORT"), "{line}");

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_is_reported_kept_as_a_copy_and_not_sent_again() {
    let server_dir = tempfile::tempdir().unwrap();
    // A document limit: the client splits ops by the op limits, but an edit
    // that makes the text too long is refused whatever its size.
    let server = e2e_tests::start_server_with(server_dir.path(), |config| config.max_doc_len = 10)
        .await
        .unwrap();
    let addr = server.addr;
    let ws = format!("ws://{addr}");
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    let doc = "limits";
    ok(data, addr, &["append", doc, "hello"]).await;

    // Too long for the server: one line naming the reason and the copy.
    let line = fails(data, &ws, &["append", doc, " and far too long"]).await;
    assert!(line.contains("doc_too_long"), "{line}");
    let copy = line
        .split_once("saved to ")
        .map(|(_, path)| PathBuf::from(path))
        .unwrap_or_else(|| panic!("no conflict copy named: {line}"));
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        "hello and far too long"
    );
    assert_eq!(doc_state(addr, doc).await.unwrap(), (1, "hello".to_owned()));

    // The refused edit is not resent by later runs: they just work.
    assert_eq!(
        ok(data, addr, &["sync", doc]).await,
        format!("sent 0 pending edit(s) of {doc}\n")
    );
    ok(data, addr, &["append", doc, " ok"]).await;
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (2, "hello ok".to_owned())
    );
    let log = ops_log(addr, doc).await;
    exactly_once(&log);
    assert_eq!(
        log[1]["client"], log[0]["client"],
        "the same writer goes on"
    );
    assert_eq!(log[1]["seq"], 2, "the refused seq is used again");
    let copies = std::fs::read_dir(data.join("conflicts")).unwrap().count();
    assert_eq!(copies, 1, "no further conflict copies");

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scripted_clients_appending_at_once_get_every_edit_in_once() {
    const EACH: usize = 20;
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    // One data directory for both: two scripts in two terminals of one user.
    let data = tempfile::tempdir().unwrap();
    let data_path = data.path().to_path_buf();
    let doc = "race";

    let mut loops = Vec::new();
    for name in ["A", "B"] {
        let data = data_path.clone();
        loops.push(tokio::spawn(async move {
            for i in 0..EACH {
                let marker = format!("[{name}{i:02}]");
                ok(&data, addr, &["append", doc, &marker]).await;
            }
        }));
    }
    for l in loops {
        timeout(Duration::from_secs(300), l)
            .await
            .expect("the loops finish")
            .unwrap();
    }

    let (rev, text) = doc_state(addr, doc).await.unwrap();
    assert_eq!(rev, 2 * EACH as u64);
    for name in ["A", "B"] {
        let mut last = None;
        for i in 0..EACH {
            let marker = format!("[{name}{i:02}]");
            assert_eq!(text.matches(&marker).count(), 1, "{marker} in {text}");
            // One script's appends stay in its order.
            let at = text.find(&marker).unwrap();
            assert!(
                last.is_none_or(|l| l < at),
                "{marker} out of order in {text}"
            );
            last = Some(at);
        }
    }
    assert_eq!(text.len(), 2 * EACH * "[A00]".len());
    let log = ops_log(addr, doc).await;
    exactly_once(&log);
    assert_eq!(replay_ops(addr, doc).await.unwrap().1, text);
    // Runs that overlapped could not share a client id (the slot lock): two
    // ids were used, each with consecutive seqs 1, 2, 3, … (never reused,
    // never skipped), and no third (a free saved slot is always reused).
    let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for op in &log {
        seqs.entry(op["client"].as_str().unwrap())
            .or_default()
            .push(op["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), 2, "client ids used: {seqs:?}");
    for list in seqs.values() {
        assert_eq!(*list, (1..=list.len() as u64).collect::<Vec<_>>());
    }
    let files: BTreeSet<String> = state_files(data.path()).into_keys().collect();
    let ids: BTreeSet<String> = seqs.keys().map(|k| k.to_string()).collect();
    assert_eq!(files, ids, "one state file per client id");

    server.stop().await.unwrap();
}
