//! The real `ot-client edit` binary in a pseudo-terminal (80×24, TERM=xterm),
//! its screen read back through a terminal emulator (vt100), against a real
//! server running in this process:
//!
//! - one editor and two scripted clients (`append`/`insert`) editing one
//!   document at once all end with the server's text, shown on the screen;
//! - two editors on one machine (same data directory) on one document both get
//!   their edits in, under different client ids;
//! - offline: the editor starts without a server, keeps the edits, sends them
//!   when the server appears; quitting with unacknowledged edits says so, and
//!   `sync` sends them later, exactly once.
//!
//! Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};
use serde_json::Value;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_ot-client");
const COLS: u16 = 80;
const ROWS: u16 = 24;
const WAIT: Duration = Duration::from_secs(30);

/// Ctrl-Q.
const QUIT: &[u8] = b"\x11";

/// `ot-client edit` running in a pseudo-terminal.
struct Editor {
    name: &'static str,
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn Child + Send + Sync>,
    _master: Box<dyn MasterPty + Send>,
}

impl Editor {
    fn spawn(name: &'static str, server: &str, data_dir: &Path, doc: &str) -> Result<Editor> {
        Editor::spawn_with(name, server, data_dir, doc, &[])
    }

    /// [`spawn`](Self::spawn) with more environment variables.
    fn spawn_with(
        name: &'static str,
        server: &str,
        data_dir: &Path,
        doc: &str,
        env: &[(&str, &Path)],
    ) -> Result<Editor> {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| anyhow!("openpty: {e}"))?;
        let mut cmd = CommandBuilder::new(BIN);
        cmd.args(["--server", server, "--name", name, "edit", doc]);
        cmd.env("TERM", "xterm");
        cmd.env("OT_CLIENT_DATA_DIR", data_dir);
        cmd.env_remove("OT_SERVER");
        cmd.env_remove("OT_NAME");
        // A secured server in `OT_TEST_AUTH=1` runs: a token with this
        // editor's name (the others see the token's name), unless the test
        // brings its own.
        if let Some(token) = e2e_tests::test_token(Some(name)) {
            if !env.iter().any(|(key, _)| key.starts_with("OT_TOKEN")) {
                cmd.env("OT_TOKEN", token);
            }
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd.cwd(data_dir);
        let child = pair
            .slave
            .spawn_command(cmd)
            .map_err(|e| anyhow!("spawning the editor: {e}"))?;
        drop(pair.slave);
        let mut reader = pair
            .master
            .try_clone_reader()
            .map_err(|e| anyhow!("pty reader: {e}"))?;
        let writer = pair
            .master
            .take_writer()
            .map_err(|e| anyhow!("pty writer: {e}"))?;
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let feed = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        Ok(Editor {
            name,
            screen,
            writer,
            child,
            _master: pair.master,
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
    }

    fn type_text(&mut self, text: &str) {
        // Enter is a carriage return from a terminal.
        self.send(text.replace('\n', "\r").as_bytes());
    }

    /// The screen's rows (trailing spaces trimmed).
    fn rows(&self) -> Vec<String> {
        let parser = self.screen.lock().unwrap();
        parser
            .screen()
            .rows(0, COLS)
            .map(|r| r.trim_end().to_owned())
            .collect()
    }

    fn status(&self) -> String {
        self.rows().last().cloned().unwrap_or_default()
    }

    /// The text area as text: the rows above the status line (and the message line).
    fn shown_text(&self) -> String {
        let rows = self.rows();
        let mut text_rows = &rows[..rows.len() - 1];
        // A message line may sit above the status line (cut at the screen's
        // width, so a long one may not show its end).
        if let Some(last) = text_rows.last() {
            if ["retrying", "reconnecting", "access expired"]
                .iter()
                .any(|message| last.contains(message))
            {
                text_rows = &text_rows[..text_rows.len() - 1];
            }
        }
        let mut end = text_rows.len();
        while end > 0 && text_rows[end - 1].is_empty() {
            end -= 1;
        }
        text_rows[..end].join("\n")
    }

    fn dump(&self) -> String {
        format!("{} screen:\n{}", self.name, self.rows().join("\n"))
    }

    async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&Editor) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if ok(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: timed out waiting for {what}\n{}",
                    self.name,
                    self.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_status(&self, needle: &str) -> Result<()> {
        self.wait_for(&format!("{needle:?} in the status line"), WAIT, |e| {
            e.status().contains(needle)
        })
        .await
    }

    /// Ctrl-Q, then wait for the process to end; returns whether it succeeded.
    async fn quit(&mut self) -> Result<bool> {
        self.send(QUIT);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader thread take the last output in.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                bail!("{} did not quit\n{}", self.name, self.dump());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After the editor exited: the terminal is back to normal.
    fn assert_terminal_restored(&self) {
        let parser = self.screen.lock().unwrap();
        let screen = parser.screen();
        assert!(
            !screen.alternate_screen(),
            "{} left the alternate screen on",
            self.name
        );
        assert!(
            !screen.bracketed_paste(),
            "{} left bracketed paste on",
            self.name
        );
        assert!(
            !screen.hide_cursor(),
            "{} left the cursor hidden",
            self.name
        );
    }
}

impl Drop for Editor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stop a server (bounded).
async fn stop(server: server::RunningServer) -> Result<()> {
    tokio::time::timeout(WAIT, server.stop())
        .await
        .map_err(|_| anyhow!("the server did not stop"))?
}

/// Run a scripted `ot-client` command; fails on a non-zero exit.
async fn script(server: &str, data_dir: &Path, args: &[&str]) -> Result<String> {
    let mut command = tokio::process::Command::new(BIN);
    command
        .arg("--server")
        .arg(server)
        .args(args)
        .env("OT_CLIENT_DATA_DIR", data_dir)
        .env_remove("OT_SERVER")
        .env_remove("OT_NAME")
        .kill_on_drop(true);
    if let Some(token) = e2e_tests::test_token(None) {
        command.env("OT_TOKEN", token);
    }
    let run = command.output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .map_err(|_| anyhow!("ot-client {args:?} timed out"))??;
    if !out.status.success() {
        bail!(
            "ot-client {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The server's text, once it stops changing and equals what `editors` show
/// with everything saved.
async fn settled(addr: SocketAddr, doc: &str, editors: &[&Editor]) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = e2e_tests::doc_state(addr, doc).await?;
        let agreed = editors
            .iter()
            .all(|e| e.status().contains("all saved") && e.shown_text() == as_shown(&text));
        if agreed {
            return Ok(text);
        }
        if Instant::now() > deadline {
            let screens: Vec<String> = editors.iter().map(|e| e.dump()).collect();
            bail!(
                "the editors do not show the server's text {text:?}\n{}",
                screens.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a text looks on the screen (when it fits): no trailing spaces or empty lines.
fn as_shown(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').map(str::trim_end).collect();
    lines.join("\n").trim_end_matches('\n').to_owned()
}

fn sorted_chars(s: &str) -> Vec<char> {
    let mut v: Vec<char> = s.chars().collect();
    v.sort_unstable();
    v
}

/// The client ids of the ops of `doc`.
async fn writers(addr: SocketAddr, doc: &str) -> Result<BTreeSet<String>> {
    let body = e2e_tests::http_get(addr, &format!("/api/docs/{doc}/ops?from=0&limit=1000")).await?;
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["ops"]
        .as_array()
        .context("ops")?
        .iter()
        .filter_map(|op| op["client"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_and_two_scripted_clients_converge() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = e2e_tests::start_server(&dir.path().join("server")).await?;
    let url = format!("ws://{}", server.addr);
    let data = dir.path().join("clients");
    std::fs::create_dir_all(&data)?;
    // Something to start from, so the editor opens an existing document.
    script(&url, &data, &["append", "shared", "start\n"]).await?;

    let mut editor = Editor::spawn("editor", &url, &data, "shared")?;
    editor.wait_status("connected").await?;
    editor
        .wait_for("the text", WAIT, |e| e.shown_text() == "start")
        .await?;

    let (a_url, a_data) = (url.clone(), data.clone());
    let appender = tokio::spawn(async move {
        for i in 0..4 {
            script(&a_url, &a_data, &["append", "shared", &format!("A{i}\n")]).await?;
        }
        anyhow::Ok(())
    });
    let (b_url, b_data) = (url.clone(), data.clone());
    let inserter = tokio::spawn(async move {
        for i in 0..4 {
            script(
                &b_url,
                &b_data,
                &["insert", "shared", "0", &format!("B{i}\n")],
            )
            .await?;
        }
        anyhow::Ok(())
    });
    // The editor types at its cursor (the end) meanwhile, keystroke by keystroke.
    let mut typed = String::new();
    for i in 0..4 {
        let line = format!("E{i}\n");
        for c in line.chars() {
            editor.type_text(&c.to_string());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        typed.push_str(&line);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A bracketed paste is one edit.
    editor.send(b"\x1b[200~P1\rP2\r\x1b[201~");
    typed.push_str("P1\nP2\n");
    editor
        .wait_for("the paste", WAIT, |e| e.shown_text().contains("P1\nP2"))
        .await?;
    tokio::time::timeout(WAIT, appender).await???;
    tokio::time::timeout(WAIT, inserter).await???;

    let text = settled(server.addr, "shared", &[&editor]).await?;
    // Every character typed or sent is there exactly once, and each scripted
    // edit is in one piece.
    let mut expected = String::from("start\n");
    for i in 0..4 {
        expected.push_str(&format!("A{i}\nB{i}\n"));
    }
    expected.push_str(&typed);
    assert_eq!(sorted_chars(&text), sorted_chars(&expected), "{text:?}");
    for i in 0..4 {
        assert!(text.contains(&format!("A{i}\n")), "{text:?}");
        assert!(text.contains(&format!("B{i}\n")), "{text:?}");
    }
    // The inserts at 0 stack up in front, newest first.
    assert!(text.starts_with("B3\nB2\nB1\nB0\n"), "{text:?}");
    // Replaying the stored ops gives the same text.
    assert_eq!(e2e_tests::replay_ops(server.addr, "shared").await?.1, text);

    assert!(editor.quit().await?, "{}", editor.dump());
    editor.assert_terminal_restored();
    let after = editor.rows().join("\n");
    assert!(!after.contains("not acknowledged"), "{after}");
    stop(server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_editors_on_one_machine_both_get_their_edits_in() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = e2e_tests::start_server(&dir.path().join("server")).await?;
    let url = format!("ws://{}", server.addr);
    // One data directory for both: the slot lock gives them different client ids.
    let data = dir.path().join("clients");
    std::fs::create_dir_all(&data)?;
    let mut ann = Editor::spawn("ann", &url, &data, "pair")?;
    ann.wait_status("connected").await?;
    let mut bob = Editor::spawn("bob", &url, &data, "pair")?;
    bob.wait_status("connected").await?;
    // Each sees the other (after the first cursor message).
    ann.type_text("ann was here\n");
    bob.wait_for("ann's text", WAIT, |e| {
        e.shown_text().contains("ann was here")
    })
    .await?;
    bob.type_text("bob too\n");
    for i in 0..3 {
        ann.type_text(&format!("a{i} "));
        bob.type_text(&format!("b{i} "));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = settled(server.addr, "pair", &[&ann, &bob]).await?;
    assert!(text.contains("ann was here\n"), "{text:?}");
    for i in 0..3 {
        assert!(text.contains(&format!("a{i} ")), "{text:?}");
        assert!(text.contains(&format!("b{i} ")), "{text:?}");
    }
    assert_eq!(
        sorted_chars(&text),
        sorted_chars("ann was here\nbob too\na0 a1 a2 b0 b1 b2 "),
        "{text:?}"
    );
    let ids = writers(server.addr, "pair").await?;
    assert_eq!(ids.len(), 2, "two writers: {ids:?}");
    // Both show two users, the other one by name.
    ann.wait_for("bob in the status line", WAIT, |e| {
        e.status().contains("2 here") && e.status().contains("bob")
    })
    .await?;
    bob.wait_for("ann in the status line", WAIT, |e| {
        e.status().contains("2 here") && e.status().contains("ann")
    })
    .await?;
    assert!(ann.quit().await?, "{}", ann.dump());
    // Ann is gone: Bob sees only himself.
    bob.wait_status("1 here").await?;
    assert!(bob.quit().await?, "{}", bob.dump());
    ann.assert_terminal_restored();
    bob.assert_terminal_restored();
    stop(server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_works_offline_and_sends_later_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server_dir = dir.path().join("server");
    let data = dir.path().join("clients");
    std::fs::create_dir_all(&data)?;
    let port = e2e_tests::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let url = format!("ws://{addr}");
    let start = || e2e_tests::start_server_with(&server_dir, |config| config.addr = addr);

    // No server yet: the editor starts anyway, on an empty document.
    let mut editor = Editor::spawn("editor", &url, &data, "memo")?;
    editor.wait_status("offline").await?;
    editor.type_text("written offline\n");
    editor
        .wait_for("the typed text", WAIT, |e| {
            e.shown_text() == "written offline"
        })
        .await?;
    assert!(editor.status().contains("unsaved"), "{}", editor.dump());

    // The server comes up: the editor connects by itself and sends.
    let server = start().await?;
    editor.wait_status("connected").await?;
    let text = settled(addr, "memo", &[&editor]).await?;
    assert_eq!(text, "written offline\n");

    // The server goes away again; more edits; quit with them unacknowledged.
    stop(server).await?;
    editor
        .wait_for("the disconnection", WAIT, |e| {
            !e.status().contains("● connected")
        })
        .await?;
    editor.type_text("and more");
    editor
        .wait_for("the typed text", WAIT, |e| {
            e.shown_text().ends_with("and more")
        })
        .await?;
    assert!(editor.quit().await?, "{}", editor.dump());
    editor.assert_terminal_restored();
    let after = editor.rows().join("\n");
    assert!(after.contains("not acknowledged"), "{after}");
    assert!(after.contains("ot-client sync memo"), "{after}");

    // Later: `sync` sends them, once; a second sync has nothing left to send.
    let server = start().await?;
    let out = script(&url, &data, &["sync", "memo"]).await?;
    assert!(out.contains("sent"), "{out}");
    let (rev, text) = e2e_tests::doc_state(addr, "memo").await?;
    assert_eq!(text, "written offline\nand more");
    script(&url, &data, &["sync", "memo"]).await?;
    assert_eq!(
        e2e_tests::doc_state(addr, "memo").await?,
        (rev, text.clone())
    );
    assert_eq!(e2e_tests::replay_ops(addr, "memo").await?.1, text);

    // The next editor opens the saved text and sees everything.
    let mut again = Editor::spawn("again", &url, &data, "memo")?;
    again.wait_status("connected").await?;
    settled(addr, "memo", &[&again]).await?;
    assert!(again.quit().await?);
    stop(server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_not_blocked_by_a_server_that_does_not_answer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Accepts connections (the kernel's backlog) but never answers the upgrade.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("ws://{}", silent.local_addr()?);
    let mut editor = Editor::spawn("editor", &url, dir.path(), "quiet")?;
    editor.wait_status("offline").await?;
    let started = Instant::now();
    editor.type_text("still typing");
    editor
        .wait_for("the typed text", Duration::from_secs(5), |e| {
            e.shown_text() == "still typing"
        })
        .await?;
    // Well within the 10 s the connection attempt may hang.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(editor.status().contains("unsaved"), "{}", editor.dump());
    assert!(editor.quit().await?, "{}", editor.dump());
    editor.assert_terminal_restored();
    assert!(editor.rows().join("\n").contains("not acknowledged"));
    drop(silent);
    Ok(())
}

/// A token for user "ann" on `memo`, valid for `ttl` seconds.
fn ann_token(secret: &[u8], ttl: i64) -> String {
    e2e_tests::mint_test_token(secret, "ann", &["memo"], ot_protocol::Access::Admin, ttl)
}

/// With authentication on: the editor's token expires (4001) while it runs;
/// it says so, keeps what is typed next, and as soon as the token file holds
/// a new token it reconnects and sends it, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_keeps_edits_past_an_expired_token_and_sends_them_with_a_new_one() -> Result<()> {
    const SECRET: &[u8] = b"the-editor-pty-test-secret-of-32-bytes-or-more";
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET)?;
    let data = dir.path().join("clients");
    std::fs::create_dir_all(&data)?;
    let server = e2e_tests::start_server_with(&dir.path().join("server"), |c| {
        c.auth_secret_file = Some(secret.clone());
        c.auth_leeway = 0;
    })
    .await?;
    let addr = server.addr;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ann_token(SECRET, 3))?;
    let reader = ot_driver::ConnectOptions {
        token: Some(ot_driver::TokenSource::Value(ann_token(SECRET, 3600))),
        ..ot_driver::ConnectOptions::default()
    };
    let server_text = || async {
        let (status, body) =
            ot_driver::http::get_with(&addr.into(), "/api/docs/memo", &reader).await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok::<_, anyhow::Error>(v["text"].as_str().unwrap_or_default().to_owned())
    };

    let mut editor = Editor::spawn_with(
        "ann",
        &format!("ws://{addr}"),
        &data,
        "memo",
        &[("OT_TOKEN_FILE", token_file.as_path())],
    )?;
    editor.wait_status("connected").await?;
    editor.type_text("first");
    let deadline = Instant::now() + WAIT;
    while server_text().await? != "first" {
        anyhow::ensure!(Instant::now() < deadline, "not sent: {}", editor.dump());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    editor
        .wait_for("the expiry notice", WAIT, |e| {
            e.rows().join("\n").contains("access expired")
        })
        .await?;
    editor.type_text(" kept");
    editor
        .wait_for("the typed text", WAIT, |e| e.shown_text() == "first kept")
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server_text().await?, "first", "sent without a token?");

    std::fs::write(&token_file, ann_token(SECRET, 3600))?;
    let renewed = Instant::now();
    let deadline = renewed + WAIT;
    while server_text().await? != "first kept" {
        anyhow::ensure!(Instant::now() < deadline, "not sent: {}", editor.dump());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "sent {:?} after the token file was renewed",
        renewed.elapsed()
    );
    let (_, ops) = ot_driver::http::get_with(&addr.into(), "/api/docs/memo/ops", &reader).await?;
    let ops: serde_json::Value = serde_json::from_str(&ops)?;
    // Exactly once: every (client, seq) once, in order, and nothing else.
    let seqs: Vec<u64> = ops["ops"]
        .as_array()
        .map(|ops| ops.iter().filter_map(|op| op["seq"].as_u64()).collect())
        .unwrap_or_default();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{ops}");
    assert!(editor.quit().await?, "{}", editor.dump());
    stop(server).await?;
    Ok(())
}

/// The terminal editor on a regional server: "all saved" once the home has
/// its edits, "saved in region, not yet replicated" while the home cannot be
/// reached (the edits are acknowledged by the region all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_on_a_regional_server_says_what_is_not_yet_at_the_home() -> Result<()> {
    use e2e_tests::proxy::Direction;
    let dir = tempfile::tempdir()?;
    let servers = e2e_tests::HomeAndRegion::start(dir.path()).await?;
    let (home, proxy, region) = (&servers.home, &servers.proxy, &servers.region);
    let data = dir.path().join("clients");
    std::fs::create_dir_all(&data)?;
    let url = format!("ws://{}", region.addr);

    let mut editor = Editor::spawn("editor", &url, &data, "regional")?;
    editor.wait_status("connected").await?;
    let shows = |text: &'static str, status: &'static str| {
        move |e: &Editor| e.shown_text() == text && e.status().contains(status)
    };
    editor.type_text("near");
    editor
        .wait_for("near, all saved", WAIT, shows("near", "all saved"))
        .await?;
    let (_, at_home) = e2e_tests::doc_state(home.addr, "regional").await?;
    assert_eq!(at_home, "near");
    proxy.stall(Direction::Both);
    editor.type_text(" cut off");
    editor
        .wait_for(
            "saved in the region only",
            WAIT,
            shows("near cut off", "saved in region, not yet replicated"),
        )
        .await?;
    let (_, at_home) = e2e_tests::doc_state(home.addr, "regional").await?;
    assert_eq!(at_home, "near");
    proxy.resume(Direction::Both);
    editor
        .wait_for("replicated", WAIT, shows("near cut off", "all saved"))
        .await?;
    let (_, at_home) = e2e_tests::doc_state(home.addr, "regional").await?;
    assert_eq!(at_home, "near cut off");

    // Cut off again, the region takes an edit; the document is deleted at
    // the home meanwhile: the region starts over from the home and keeps its
    // text on the server, and the editor says so after its resync.
    proxy.stall(Direction::Both);
    editor.type_text(" aside");
    editor
        .wait_for(
            "saved in the region only",
            WAIT,
            shows("near cut off aside", "saved in region, not yet replicated"),
        )
        .await?;
    let (status, body) = ot_driver::http::send(
        &home.addr.into(),
        ot_driver::http::Method::DELETE,
        "/api/admin/docs/regional",
        None,
        &e2e_tests::test_connect_options(),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    proxy.resume(Direction::Both);
    editor
        .wait_for("the server's copy", WAIT, |e: &Editor| {
            e.rows()
                .iter()
                .any(|row| row.contains("1 copy of this document kept on the server"))
        })
        .await?;
    assert!(editor.quit().await?, "{}", editor.dump());
    // `ot-client copies` prints it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ot-client"))
        .args(["--server", &url, "copies", "regional"])
        .env("OT_CLIENT_DATA_DIR", &data)
        .envs(e2e_tests::test_token(None).map(|t| ("OT_TOKEN", t)))
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("near cut off aside"), "{printed}");
    servers.stop().await
}
