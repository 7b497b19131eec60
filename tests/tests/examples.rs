//! The examples (`examples/examples/`) run as a user runs them, against a
//! real `server` process on a free loopback port (or, for `mini_server`,
//! as the server the driver edits against), so that they cannot rot; and
//! what a newcomer reads first: the server's start-up lines and the end of
//! `server --help` and `ot-client --help`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use e2e_tests::{
    doc_state, example_binary, free_port, ot_client_binary, server_binary, ServerProcess, WsClient,
};
use ot_core::Operation;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const WITHIN: Duration = Duration::from_secs(30);

/// A server binary on a free loopback port with a fresh data directory.
async fn server() -> Result<(ServerProcess, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&server_binary()?, dir.path(), free_port(), &[]).await?;
    Ok((server, dir))
}

/// Run example `name` with `args` to the end (bounded); its output.
async fn run_example(name: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(example_binary(name)?)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WITHIN, output)
        .await
        .map_err(|_| anyhow!("{name} did not finish within {WITHIN:?}"))?
        .with_context(|| format!("running {name}"))
}

/// Its stdout, if it exited successfully.
fn succeeded(name: &str, output: &Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{name} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout.clone())?)
}

/// The next line of a child's stdout (bounded).
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Result<String> {
    tokio::time::timeout(WITHIN, lines.next_line())
        .await
        .map_err(|_| anyhow!("no line within {WITHIN:?}"))??
        .ok_or_else(|| anyhow!("the output ended"))
}

/// Wait until the server's copy of `doc` is `text` (bounded).
async fn wait_for_text(server: &ServerProcess, doc: &str, text: &str) -> Result<()> {
    let deadline = Instant::now() + WITHIN;
    loop {
        match doc_state(server.addr, doc).await {
            Ok((_, now)) if now == text => return Ok(()),
            Ok((_, now)) if Instant::now() >= deadline => {
                bail!("{doc} reads {now:?}, not {text:?}")
            }
            _ if Instant::now() >= deadline => bail!("{doc} cannot be read"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn the_bot_types_a_line_and_prints_the_document() -> Result<()> {
    let (server, _dir) = server().await?;
    let url = format!("ws://{}", server.addr);
    let first = run_example("bot", &["--server", &url, "--doc", "bots", "--line", "one"]).await?;
    assert_eq!(succeeded("bot", &first)?, "one\n");
    let second = run_example("bot", &["--server", &url, "--doc", "bots", "--line", "two"]).await?;
    assert_eq!(succeeded("bot", &second)?, "one\ntwo\n");
    assert_eq!(
        doc_state(server.addr, "bots").await?,
        (2, "one\ntwo\n".to_owned())
    );
    Ok(())
}

/// The plugin example's stdin and stdout, as an editor holds them.
struct Editor {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Editor {
    async fn start(server: &ServerProcess, doc: &str) -> Result<Editor> {
        let url = format!("ws://{}", server.addr);
        let mut child = Command::new(example_binary("plugin")?)
            .args(["--server", &url, "--doc", doc])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        Ok(Editor {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next line the plugin prints, as JSON.
    async fn next(&mut self) -> Result<Value> {
        Ok(serde_json::from_str(&next_line(&mut self.lines).await?)?)
    }

    /// Lines until one carries the buffer `text` (acks in between skipped).
    async fn until_text(&mut self, text: &str) -> Result<Value> {
        loop {
            let line = self.next().await?;
            if line["text"] == text {
                return Ok(line);
            }
        }
    }

    /// Lines until the plugin says the server has every local change.
    async fn until_saved(&mut self) -> Result<()> {
        while self.next().await?["saved"] != true {}
        Ok(())
    }

    /// The editor changed its buffer to `text`.
    async fn type_buffer(&mut self, text: &str) -> Result<()> {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("no stdin"))?;
        let line = format!("{}\n", json!({ "text": text }));
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }
}

#[tokio::test]
async fn the_plugin_keeps_a_buffer_in_sync_both_ways() -> Result<()> {
    let (server, _dir) = server().await?;
    let mut editor = Editor::start(&server, "plug").await?;
    assert_eq!(
        editor.next().await?,
        json!({"rev": 0, "remote": null, "text": ""})
    );

    // A remote edit reaches the buffer as an op and as the text.
    let mut ann = WsClient::join(server.addr, "plug", "ann").await?;
    ann.edit(&Operation::insert_at(0, 0, "hello world\n")?)
        .await?;
    let line = editor.until_text("hello world\n").await?;
    assert_eq!(line["remote"], json!(["hello world\n"]));
    assert_eq!(line["rev"], 1);

    // A local change of the buffer reaches the server as the difference.
    editor.type_buffer("hello brave world\n").await?;
    editor.until_saved().await?;
    wait_for_text(&server, "plug", "hello brave world\n").await?;
    ann.pump_until(WITHIN, |c| c.text() == "hello brave world\n")
        .await?;
    let stored = e2e_tests::http_get(server.addr, "/api/docs/plug/ops?from=1").await?;
    let stored: Value = serde_json::from_str(&stored)?;
    let sent = Operation::from_json_value(&stored["ops"][0]["op"])?;
    // Only the difference travels: six characters inserted, none deleted.
    assert_eq!((sent.base_len(), sent.target_len()), (12, 18), "{sent:?}");
    assert_eq!(sent.apply("hello world\n")?, "hello brave world\n");
    assert!(sent.components().len() <= 3, "{sent:?}");

    // Both at once: Ann edits without having seen the plugin's next change
    // (the server transforms hers past it), and the plugin applies hers.
    editor.type_buffer("hello brave new world\n").await?;
    editor.until_saved().await?;
    ann.edit(&Operation::insert_at(18, 0, "> ")?).await?;
    let merged = "> hello brave new world\n";
    wait_for_text(&server, "plug", merged).await?;
    editor.until_text(merged).await?;
    ann.pump_until(WITHIN, |c| c.text() == merged && c.client().all_saved())
        .await?;

    // The editor closes: the plugin exits cleanly.
    drop(editor.child.stdin.take());
    let status = tokio::time::timeout(WITHIN, editor.child.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn the_mini_server_serves_the_driver() -> Result<()> {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut mini = Command::new(example_binary("mini_server")?)
        .args(["--addr", &addr, "--doc", "notes"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(mini.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
    assert_eq!(
        next_line(&mut lines).await?,
        format!("listening on ws://{addr}/ws/notes")
    );

    // The bot (the driver's tokio shell) edits against it.
    let url = format!("ws://{addr}");
    let out = run_example("bot", &["--server", &url, "--doc", "notes", "--line", "hi"]).await?;
    assert_eq!(succeeded("bot", &out)?, "hi\n");

    // Two writers on the driver's session core, concurrently at one place:
    // the server transforms the later one, and everyone converges.
    let addr = addr.parse()?;
    let mut ann = WsClient::join(addr, "notes", "ann").await?;
    let mut bob = WsClient::join(addr, "notes", "bob").await?;
    assert_eq!(
        (ann.text(), bob.text()),
        ("hi\n".to_owned(), "hi\n".to_owned())
    );
    ann.edit(&Operation::insert_at(3, 2, "A")?).await?;
    bob.edit(&Operation::insert_at(3, 2, "B")?).await?;
    ann.settle_to(3, WITHIN).await?;
    bob.settle_to(3, WITHIN).await?;
    assert_eq!(ann.text(), bob.text());
    assert!(
        ann.text() == "hiAB\n" || ann.text() == "hiBA\n",
        "{}",
        ann.text()
    );

    // A reconnect resumes from the client's revision and catches up.
    ann.cut();
    bob.edit(&Operation::insert_at(5, 5, "!")?).await?;
    bob.settle_to(4, WITHIN).await?;
    ann.reconnect().await?;
    ann.settle_to(4, WITHIN).await?;
    assert_eq!(ann.text(), bob.text());

    // Another document is refused before the upgrade.
    let refused = e2e_tests::ws_refused(addr, "/ws/other?client=ann").await?;
    assert_eq!(refused.0, 404);
    mini.start_kill()?;
    Ok(())
}

/// A sequential trace in the editing-traces format, gzipped.
fn write_trace(path: &Path, end_content: &str) -> Result<()> {
    let trace = json!({
        "startContent": "",
        "endContent": end_content,
        "txns": [
            {"time": "2024-01-01T00:00:00Z", "patches": [[0, 0, "Hello"]]},
            {"time": "2024-01-01T00:00:01Z", "patches": [[5, 0, " wörld"]]},
            {"time": "2024-01-01T00:00:02Z", "patches": [[6, 1, "W"]]},
            // Several patches in one txn: positions descend.
            {"time": "2024-01-01T00:00:03Z", "patches": [[11, 0, "!"], [0, 0, "→ "]]},
            {"time": "2024-01-01T00:00:04Z", "patches": [[2, 5, "Bye"]]},
        ],
    });
    let file = std::fs::File::create(path)?;
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(trace.to_string().as_bytes())?;
    gz.finish()?;
    Ok(())
}

#[tokio::test]
async fn replaying_a_trace_reports_speed_and_checks_the_end() -> Result<()> {
    let (server, _dir) = server().await?;
    let url = format!("ws://{}", server.addr);
    let traces = tempfile::tempdir()?;
    let good = traces.path().join("small.json.gz");
    write_trace(&good, "→ Bye Wörld!")?;
    let path = good.to_string_lossy();
    let out = run_example("replay_trace", &["--server", &url, "--doc", "trace", &path]).await?;
    let said = succeeded("replay_trace", &out)?;
    assert!(said.contains("6 patches in "), "{said}");
    assert!(said.contains(" ops/s"), "{said}");
    assert!(
        said.contains("final text matches endContent (12 chars) on the client and on the server"),
        "{said}"
    );
    assert_eq!(doc_state(server.addr, "trace").await?.1, "→ Bye Wörld!");

    // Closed loop: one op per txn, each acknowledged before the next.
    let out = run_example("replay_trace", &["--server", &url, "--closed-loop", &path]).await?;
    let said = succeeded("replay_trace", &out)?;
    assert!(said.contains("the server applied 5 ops ("), "{said}");
    assert!(
        said.contains("final text matches endContent (12 chars)"),
        "{said}"
    );

    // A trace whose endContent does not match what its patches give fails.
    let bad = traces.path().join("bad.json.gz");
    write_trace(&bad, "something else")?;
    let path = bad.to_string_lossy();
    let out = run_example("replay_trace", &["--server", &url, &path]).await?;
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("differs from the trace's endContent"), "{why}");

    // A real recorded trace, when the shared data is there (never required).
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/editing-traces/sequential_traces/sveltecomponent.json.gz");
    if shared.is_file() {
        let path = shared.to_string_lossy();
        let out = run_example("replay_trace", &["--server", &url, &path]).await?;
        let said = succeeded("replay_trace", &out)?;
        assert!(
            said.contains("final text matches endContent (18451 chars)"),
            "{said}"
        );
    }
    Ok(())
}

/// The load tool's random workload (edits at random positions, documents
/// growing) against the server binary: a short closed-loop run converges
/// with no errors, and the documents grew.
#[tokio::test]
async fn the_load_tool_random_workload_converges_and_grows_documents() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Closed loop: the rate limit lifted, as scripts/bench-server does.
    let lifted = ["--ops-per-sec", "1000000", "--ops-burst", "1000000"];
    let server = ServerProcess::start(&server_binary()?, dir.path(), free_port(), &lifted).await?;
    let url = format!("ws://{}", server.addr);
    #[rustfmt::skip]
    let args = [
        "--server", &url, "--workload", "random", "--clients", "6", "--docs", "2",
        "--duration-secs", "1", "--warmup-secs", "0.2", "--seed", "16", "--doc-prefix", "grow",
    ];
    let out = run_example("load", &args).await?;
    let said = succeeded("load", &out)?;
    assert!(said.contains("closed loop, random workload"), "{said}");
    let converged = said
        .lines()
        .find_map(|l| l.strip_prefix("CONVERGED: 6 clients on 2 docs equal GET /api/docs/{doc} ("))
        .ok_or_else(|| anyhow!("not converged:\n{said}"))?;
    let revisions: u64 = converged
        .split_once(' ')
        .and_then(|(n, _)| n.parse().ok())
        .ok_or_else(|| anyhow!("no revision count in {converged:?}"))?;
    assert!(revisions >= 20, "{said}");
    assert!(said.contains(" errors=0"), "{said}");
    // Inserts (1–4 chars, 70 %) outweigh deletes (1–3, 30 %): about 1.15 chars per op.
    let mut chars = 0;
    for doc in ["grow-0", "grow-1"] {
        chars += doc_state(server.addr, doc).await?.1.chars().count() as u64;
    }
    assert!(
        chars * 2 >= revisions,
        "{chars} chars after {revisions} ops"
    );
    Ok(())
}

/// `open_time` writes a copy of a document with a given history length,
/// then times joins of documents the server has unloaded, and counts only
/// joins that really loaded the document from storage.
#[tokio::test]
async fn open_time_copies_a_document_and_times_joins_from_storage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let unload_fast = ["--idle-unload-secs", "1"];
    let server =
        ServerProcess::start(&server_binary()?, dir.path(), free_port(), &unload_fast).await?;
    let url = format!("ws://{}", server.addr);
    let mut writer = WsClient::join(server.addr, "source", "writer-1").await?;
    let text = "é🙂 open me\n".repeat(50);
    writer
        .edit_saved(&Operation::insert_at(0, 0, &text)?, WITHIN)
        .await?;
    drop(writer);

    #[rustfmt::skip]
    let copy = ["--server", &url, "--doc", "copy", "--copy-from", "source", "--history-ops", "20"];
    let said = succeeded("open_time", &run_example("open_time", &copy).await?)?;
    let chars = text.chars().count();
    // The text in one op, then an insert and a delete of one char each
    // until rev 20, and a last delete: rev 21, the same text.
    assert!(
        said.contains(&format!("copy: {chars} chars at rev 21")),
        "{said}"
    );
    assert_eq!(doc_state(server.addr, "copy").await?.1, text);

    #[rustfmt::skip]
    let time = [
        "--server", &url, "--doc", "source", "--doc", "copy", "--rounds", "2",
        "--unload-wait-secs", "2.5",
    ];
    let said = succeeded("open_time", &run_example("open_time", &time).await?)?;
    for doc in ["source", "copy"] {
        let result = said
            .lines()
            .find(|l| l.starts_with(&format!("RESULT open doc={doc} ")))
            .ok_or_else(|| anyhow!("no result for {doc}:\n{said}"))?;
        assert!(result.contains(" joins=2 "), "{said}");
    }
    assert!(said.contains(&format!("(rev 1, {chars} chars)")), "{said}");
    Ok(())
}

/// `idle_docs` holds documents open with one silent connection each, until
/// its time is up.
#[tokio::test]
async fn idle_docs_holds_documents_open_until_its_time_is_up() -> Result<()> {
    let (server, _dir) = server().await?;
    let url = format!("ws://{}", server.addr);
    let holding = tokio::spawn(async move {
        let args = ["--server", &url, "--docs", "20", "--hold-secs", "3"];
        run_example("idle_docs", &args).await
    });
    let deadline = Instant::now() + WITHIN;
    let mut open = 0.0;
    while open < 20.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = e2e_tests::metric_value(server.addr, "ot_connections").await?;
    }
    assert_eq!(open, 20.0, "connections while held");
    assert_eq!(
        e2e_tests::metric_value(server.addr, "ot_open_documents").await?,
        20.0
    );
    let said = succeeded("idle_docs", &holding.await??)?;
    assert!(said.starts_with("holding 20 idle documents"), "{said}");
    Ok(())
}

#[tokio::test]
async fn the_conflict_journal_is_told_in_words() -> Result<()> {
    let (server, _dir) = server().await?;
    let http = format!("http://{}", server.addr);
    let out = run_example("conflicts", &["--server", &http, "clash"]).await?;
    assert!(!out.status.success(), "no document yet: 404");

    let mut ann = WsClient::join(server.addr, "clash", "ann").await?;
    ann.edit(&Operation::insert_at(0, 0, "abcdef")?).await?;
    ann.settle_to(1, WITHIN).await?;
    let mut bob = WsClient::join(server.addr, "clash", "bob").await?;
    let out = run_example("conflicts", &["--server", &http, "clash"]).await?;
    assert_eq!(succeeded("conflicts", &out)?, "no conflicts in clash\n");

    // Bob is held back (reads nothing) while Ann's insert lands at his spot.
    ann.edit(&Operation::insert_at(6, 3, "X")?).await?;
    ann.settle_to(2, WITHIN).await?;
    bob.edit(&Operation::insert_at(6, 3, "Y")?).await?;
    bob.settle_to(3, WITHIN).await?;
    ann.settle_to(3, WITHIN).await?;
    assert_eq!(ann.text(), "abcYXdef");
    // Again: Ann deletes, Bob (held back) appends.
    ann.edit(&Operation::delete_range(8, 2, 3)?).await?;
    ann.settle_to(4, WITHIN).await?;
    bob.edit(&Operation::insert_at(8, 8, "Z")?).await?;
    bob.settle_to(5, WITHIN).await?;

    let out = run_example("conflicts", &["--server", &http, "clash"]).await?;
    assert_eq!(
        succeeded("conflicts", &out)?,
        "bob and ann edited here at once: bob meant insert \"Y\" at 3, ann meant insert \"X\" at 3, \
         result \"abcYXdef\" (revision 3)\n\
         bob and ann edited here at once: bob meant insert \"Z\" at 8, ann meant delete \"cYX\" at 2, \
         result \"abdefZ\" (revision 5)\n"
    );
    Ok(())
}

/// The server's stdout until its start-up lines are out (bounded).
async fn start_up_lines(data_dir: &Path, port: u16) -> Result<Vec<String>> {
    let mut child = Command::new(server_binary()?)
        .args(["--addr", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    // The durability line is the last of the start-up lines.
    while !seen
        .iter()
        .any(|l: &String| l.contains("an acknowledged edit survives"))
    {
        seen.push(next_line(&mut lines).await?);
    }
    child.start_kill()?;
    Ok(seen)
}

#[tokio::test]
async fn the_first_run_says_where_to_go_in_plain_words() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port();
    let lines = start_up_lines(&data, port).await?;
    let said = lines.join("\n");
    for expected in [
        format!("listening on 127.0.0.1:{port} (http and WebSocket); programs connect to ws://127.0.0.1:{port}/ws/DOC"),
        format!("open http://127.0.0.1:{port}/ in a browser"),
        format!("data in {} (storage epoch ", data.display()),
        "durability fsync: an acknowledged edit survives a power loss".to_owned(),
    ] {
        assert!(said.contains(&expected), "missing {expected:?} in:\n{said}");
    }
    // Nothing a user reads is debug formatting, nor colour codes in a pipe.
    for line in &lines {
        assert!(!line.contains("Some(") && !line.contains("None"), "{line}");
        assert!(!line.contains('\u{1b}'), "{line:?}");
    }
    Ok(())
}

/// The lines after `Examples:` at the end of `binary --help`.
fn help_examples(binary: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new(binary).arg("--help").output()?;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout)?;
    let (_, examples) = help
        .rsplit_once("\nExamples:\n")
        .ok_or_else(|| anyhow!("no examples at the end of:\n{help}"))?;
    Ok(examples.lines().map(str::to_owned).collect())
}

#[test]
fn each_help_ends_with_example_invocations() -> Result<()> {
    for (binary, name) in [
        (server_binary()?, "server"),
        (ot_client_binary()?, "ot-client"),
    ] {
        let examples = help_examples(&binary)?;
        assert!((2..=3).contains(&examples.len()), "{name}: {examples:?}");
        for example in &examples {
            assert!(
                example.starts_with(&format!("  {name}")),
                "{name}: {example:?}"
            );
        }
    }
    Ok(())
}
