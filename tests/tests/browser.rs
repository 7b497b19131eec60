//! The browser editor in a real headless Chromium, driven over WebDriver
//! (`chromedriver` + the `fantoccini` crate): two browser sessions and the
//! real terminal client (the `ot-client` binary, run as processes: `append`
//! and `insert` while the pages type, a `watch --text` running throughout,
//! `cat` at the end) edit one document at once and converge on the server's
//! text; remote cursors show (Bob's caret, and a selection sent by a scripted
//! WebSocket client, since the scripting commands of `ot-client` send no
//! cursor); emoji, skin-tone and ZWJ sequences and combining marks survive
//! from the browser to the terminal client and back; unsent edits made while
//! the server is down (one of them across a page reload) arrive exactly once
//! after it comes back, and the terminal client's `watch` follows the restart.
//! Saves a screenshot (to `docs/screenshot.png` with `UPDATE_SCREENSHOT=1`).
//!
//! Needs Debian's `chromium` and `chromium-driver`: `scripts/test` installs
//! them (as root) or says what to install. This test fails, naming the
//! command, if they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use e2e_tests::{
    doc_state, free_port, http_get_status, ot_client_binary, replay_ops, start_server_with,
    WsClient,
};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use ot_core::Range;
use ot_protocol::ClientMessage;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};

const INSTALL: &str = "apt-get update && apt-get install -y chromium chromium-driver";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

fn chromium() -> PathBuf {
    find_program(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
        panic!("the browser tests need Chromium, which is not installed; install it with: {INSTALL} (scripts/test does this when run as root)")
    })
}

fn chromedriver() -> PathBuf {
    find_program(&["chromedriver"]).unwrap_or_else(|| {
        panic!("the browser tests need chromedriver, which is not installed; install it with: {INSTALL} (scripts/test does this when run as root)")
    })
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Result<Driver> {
        let port = free_port();
        let child = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // chromedriver keeps connections open: a successful connect is the sign.
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(driver);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("chromedriver did not come up on port {port}")
    }

    async fn session(&self, profile: &Path) -> Result<Browser> {
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1100,640".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".to_owned(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": chromium().display().to_string(), "args": args}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .map_err(|e| anyhow!("starting a Chromium session: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The terminal client `ot-client`, run as a user would run it: with
/// `--server ws://ADDR` and its state in its own data directory.
struct Terminal {
    bin: PathBuf,
    server: String,
    data: tempfile::TempDir,
}

impl Terminal {
    fn new(addr: SocketAddr) -> Result<Terminal> {
        Ok(Terminal {
            bin: ot_client_binary()?,
            server: format!("ws://{addr}"),
            data: tempfile::tempdir()?,
        })
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("--server")
            .arg(&self.server)
            .arg("--name")
            .arg("Terminal")
            .args(args)
            .env("OT_CLIENT_DATA_DIR", self.data.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(token) = e2e_tests::test_token(Some("Terminal")) {
            command.env("OT_TOKEN", token);
        }
        command
    }

    /// Run `ot-client ARGS` to completion; its stdout.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .map_err(|_| anyhow!("ot-client {args:?} did not finish within 60 s"))?
            .context("running ot-client")?;
        if !output.status.success() {
            bail!(
                "ot-client {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8(output.stdout).context("ot-client printed invalid UTF-8")
    }

    /// Start `ot-client watch DOC --text EXTRA`; returns once it printed the
    /// text it connected with.
    async fn watch(&self, doc: &str, extra: &[&str]) -> Result<Watch> {
        let mut args = vec!["watch", doc, "--text"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ot-client watch")?;
        let stdout = child.stdout.take().context("the watch's stdout")?;
        let mut watch = Watch {
            child,
            lines: Arc::new(Mutex::new(Vec::new())),
        };
        watch.read(BufReader::new(stdout).lines());
        let deadline = Instant::now() + Duration::from_secs(20);
        while watch.lines.lock().unwrap().is_empty() {
            watch.check_running()?;
            if Instant::now() > deadline {
                bail!("ot-client watch printed nothing within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(watch)
    }
}

/// A running `ot-client watch --text`: one line per change, the whole text
/// (the tests type no newlines). Killed on drop.
struct Watch {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn read(&mut self, mut lines: Lines<BufReader<impl AsyncRead + Unpin + Send + 'static>>) {
        let store = Arc::clone(&self.lines);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                store.lock().unwrap().push(line);
            }
        });
    }

    /// The text it printed last.
    fn last(&self) -> Option<String> {
        self.lines.lock().unwrap().last().cloned()
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("ot-client watch exited ({status})");
        }
        Ok(())
    }

    /// Wait for it to exit by itself (`--count`); every line it printed.
    async fn finish(mut self, within: Duration) -> Result<Vec<String>> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("ot-client watch did not exit within {within:?}"))??;
        if !status.success() {
            bail!("ot-client watch failed ({status})");
        }
        // The reader has seen the end of stdout soon after the exit.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines = self.lines.lock().unwrap().clone();
        Ok(lines)
    }
}

/// The page's state (`window.otEditor`), with what the textarea shows.
async fn editor(b: &Browser) -> Result<Value> {
    Ok(b.execute(
        "const e = window.otEditor; if (!e || !e.ready) return null; \
             return {text: e.text, rev: e.revision, saved: e.allSaved, connected: e.connected, \
                     client: e.clientId, cursors: e.remoteCursors, conflicts: e.conflictCopies, \
                     value: document.getElementById('text').value, \
                     status: document.getElementById('status').textContent};",
        vec![],
    )
    .await?)
}

async fn wait_for(
    b: &Browser,
    what: &str,
    within: Duration,
    mut ok: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let state = editor(b).await?;
        if !state.is_null() && ok(&state) {
            return Ok(state);
        }
        if Instant::now() > deadline {
            bail!("{what}: not reached within {within:?}; page state: {state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Type `text` at the end of the textarea as the browser's own text input
/// does (`insertText`: beforeinput + input events). ChromeDriver's key
/// events cannot carry characters outside the BMP, so emoji go this way.
async fn insert_text(b: &Browser, text: &str) -> Result<()> {
    b.execute(
        "const t = document.getElementById('text'); t.focus(); \
         t.setSelectionRange(t.value.length, t.value.length); \
         if (!document.execCommand('insertText', false, arguments[0])) throw new Error('insertText failed');",
        vec![json!(text)],
    )
    .await?;
    Ok(())
}

/// Real key presses (BMP text only), at the end of the text.
async fn send_keys(b: &Browser, text: &str) -> Result<()> {
    let area = b.find(Locator::Css("#text")).await?;
    b.execute(
        "const t = document.getElementById('text'); t.focus(); t.setSelectionRange(t.value.length, t.value.length);",
        vec![],
    )
    .await?;
    area.send_keys(text).await?;
    Ok(())
}

async fn open(b: &Browser, base: &str, doc: &str, name: &str) -> Result<()> {
    b.goto(&format!("{base}/")).await?;
    b.execute(
        "localStorage.setItem('ot:v1:name', arguments[0]);",
        vec![json!(name)],
    )
    .await?;
    // In `OT_TEST_AUTH=1` runs the page is opened through a link carrying a
    // token with this user's name, as `server token --url` mints it.
    match e2e_tests::test_token(Some(name)) {
        Some(token) => b.goto(&format!("{base}/d/{doc}#token={token}")).await?,
        None => b.goto(&format!("{base}/d/{doc}")).await?,
    }
    wait_for(b, "page connected", Duration::from_secs(20), |s| {
        s["connected"] == true
    })
    .await?;
    Ok(())
}

/// Wait until both pages (their state and their textarea) and the terminal
/// client's `watch` show the server's text, everything saved; that text.
async fn settle_all(
    addr: SocketAddr,
    doc: &str,
    pages: &[&Browser],
    watch: &mut Watch,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        watch.check_running()?;
        let (rev, text) = doc_state(addr, doc).await?;
        let mut all = watch.last().as_deref() == Some(text.as_str());
        for p in pages {
            let s = editor(p).await?;
            all &= s["saved"] == true
                && s["rev"] == rev
                && s["text"] == text.as_str()
                && s["value"] == text.as_str();
        }
        if all {
            return Ok(text);
        }
        if Instant::now() > deadline {
            let mut states = Vec::new();
            for p in pages {
                states.push(editor(p).await?);
            }
            bail!(
                "no convergence: server rev {rev} {text:?}, terminal watch {:?}, pages {states:?}",
                watch.last()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_and_a_terminal_client_edit_together() -> Result<()> {
    let chromium_path = chromium();
    let _ = chromedriver();
    eprintln!("using {}", chromium_path.display());
    let data = tempfile::tempdir()?;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = |c: &mut server::Config| c.addr = addr;
    let mut server = Some(start_server_with(data.path(), config).await?);
    let base = format!("http://{addr}");
    let doc = "browser-test";
    let term = Terminal::new(addr)?;

    // The pages are served, and a bad id is refused with the id escaped.
    let (status, body) = http_get_status(addr, "/d/%3Cscript%3E").await?;
    assert_eq!(status, 400);
    assert!(body.contains("&lt;script&gt;") && !body.contains("<script>"));
    let (status, body) = http_get_status(addr, "/").await?;
    assert_eq!(status, 200);
    assert!(body.contains("<form"));

    let driver = Driver::start().await?;
    let profile_a = tempfile::tempdir()?;
    let profile_b = tempfile::tempdir()?;
    let a = driver.session(profile_a.path()).await?;
    let b = driver.session(profile_b.path()).await?;
    let result = async {
        open(&a, &base, doc, "Ann").await?;
        open(&b, &base, doc, "Bob").await?;
        // The terminal client follows the document all along.
        let mut watch = term.watch(doc, &[]).await?;

        // All three type at once, several rounds: Ann presses keys, Bob's
        // browser inserts text with emoji and a combining mark, and the
        // terminal client appends (skin-tone emoji, combining tilde) and
        // inserts at the start (a ZWJ sequence), each a process of its own.
        let term_append = |round: u32| format!("[t{round} 👍🏽 n\u{303}]");
        let term_insert = |round: u32| format!("«i{round} 👩\u{200d}💻»");
        for round in 0..4 {
            let ta = format!("a{round} hello ");
            let tb = format!("B{round} 🙂e\u{301} ");
            let tt = term_append(round);
            let ti = term_insert(round);
            let (append, insert) = (["append", doc, &tt], ["insert", doc, "0", &ti]);
            let (ra, rb, rt, ri) = tokio::join!(
                send_keys(&a, &ta),
                insert_text(&b, &tb),
                term.run(&append),
                term.run(&insert),
            );
            ra?;
            rb?;
            rt?;
            ri?;
        }
        let text = settle_all(addr, doc, &[&a, &b], &mut watch).await?;
        // Every insert arrived exactly once: the browser's and the terminal's
        // (one op each) appear whole; removing them leaves Ann's keystrokes in order.
        let mut rest = text.clone();
        let mut ann = String::new();
        for round in 0..4 {
            for chunk in [format!("B{round} 🙂e\u{301} "), term_append(round), term_insert(round)] {
                assert_eq!(rest.matches(&chunk).count(), 1, "{chunk:?} in {text:?}");
                rest = rest.replacen(&chunk, "", 1);
            }
            ann.push_str(&format!("a{round} hello "));
        }
        assert_eq!(rest, ann, "Ann's keystrokes in {text:?}");
        // Emoji and combining marks typed in the browser reached the terminal
        // client intact (its own text, as `watch` prints it, and `cat`) ...
        let seen = watch.last().unwrap_or_default();
        for round in 0..4 {
            assert!(seen.contains(&format!("B{round} 🙂e\u{301} ")), "{seen:?}");
        }
        assert_eq!(term.run(&["cat", doc]).await?, text);
        // ... and the terminal client's reached both pages' textareas intact.
        for page in [&a, &b] {
            let shown = editor(page).await?["value"].as_str().unwrap_or_default().to_owned();
            for round in 0..4 {
                assert!(shown.contains(&term_append(round)), "{shown:?}");
                assert!(shown.contains(&term_insert(round)), "{shown:?}");
            }
        }

        // One more change typed in the browser, seen by a terminal client
        // that stops after one change (`watch --text --count 1`).
        let once = term.watch(doc, &["--count", "1"]).await?;
        insert_text(&b, " 🎈x\u{308}").await?;
        let lines = once.finish(Duration::from_secs(20)).await?;
        let text = settle_all(addr, doc, &[&a, &b], &mut watch).await?;
        assert!(text.ends_with(" 🎈x\u{308}"), "{text:?}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1], text);

        // Remote cursors: a scripted WebSocket client (the terminal client's
        // scripting commands send no cursor) selects the first 4 characters;
        // Bob puts his caret at the end. Ann sees both, drawn with names.
        let mut t = WsClient::join(addr, doc, "script-1").await?;
        // With authentication on, the others see its token's name (the user
        // `e2e` of the test token), whatever name it sends.
        let script_name = if e2e_tests::test_auth() { "e2e" } else { "Script" };
        t.send(&ClientMessage::Cursor {
            rev: t.client().revision(),
            ranges: vec![Range::from((0, 4))],
            name: Some("Script".to_owned()),
        })
        .await?;
        // (UTF-16 index 40 in the textarea; the protocol counts code points.)
        let bob_at = b
            .execute(
                "const t = document.getElementById('text'); t.focus(); t.setSelectionRange(40, 40); \
                 document.dispatchEvent(new Event('selectionchange')); \
                 return [...t.value.slice(0, 40)].length;",
                vec![],
            )
            .await?;
        assert!(bob_at.as_u64().is_some_and(|p| p < 40), "emoji count once: {bob_at}");
        let state = wait_for(&a, "remote cursors", Duration::from_secs(10), |s| {
            s["cursors"].as_array().is_some_and(|c| {
                c.iter().any(|c| c["name"] == "Bob" && c["ranges"] == json!([[bob_at, bob_at]]))
                    && c.iter().any(|c| c["name"] == script_name && c["ranges"] == json!([[0, 4]]))
            })
        })
        .await?;
        eprintln!("cursors seen by Ann: {}", state["cursors"]);
        let shown = a
            .execute(
                "await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))); \
                 return Array.from(document.querySelectorAll('#mirror .caret')).map(c => { \
                   const r = c.getBoundingClientRect(); \
                   return {name: c.textContent, h: r.height, visible: r.height > 0 && getComputedStyle(c).borderLeftStyle === 'solid'}; });",
                vec![],
            )
            .await?;
        let carets = shown.as_array().cloned().unwrap_or_default();
        assert!(
            carets.iter().any(|c| c["name"] == "Bob" && c["visible"] == true),
            "Bob's caret is not drawn: {shown}"
        );
        assert!(carets.iter().any(|c| c["name"] == script_name), "{shown}");
        let list = a.find(Locator::Css("#people")).await?.text().await?;
        assert!(list.contains("Bob") && list.contains(script_name), "{list}");
        let png = a.screenshot().await?;
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        // The README's picture is refreshed only on request, so a test run
        // leaves the work tree clean: UPDATE_SCREENSHOT=1 scripts/test.
        let target = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
        } else {
            std::env::temp_dir().join("ot-browser-test")
        };
        std::fs::create_dir_all(&target)?;
        std::fs::write(target.join("screenshot.png"), png)?;

        // The server goes away while the pages have edits to send; Bob's
        // network stays down a little longer.
        b.execute("window.otEditor.setOffline(true);", vec![]).await?;
        server.take().expect("server").stop().await?;
        drop(t);
        wait_for(&a, "Ann sees the drop", Duration::from_secs(10), |s| s["connected"] == false).await?;
        wait_for(&b, "Bob is offline", Duration::from_secs(10), |s| s["connected"] == false).await?;
        insert_text(&a, " offline-A ✓🙂").await?;
        insert_text(&b, " offline-B ✓e\u{301}").await?;
        let sa = editor(&a).await?;
        assert_eq!(sa["saved"], false);
        assert!(sa["status"].as_str().unwrap_or_default().contains("reconnecting"), "{sa}");

        // Back on the same port: Ann's page reconnects, resumes and resends;
        // the terminal client's watch reconnects, and it appends at once.
        server = Some(start_server_with(data.path(), config).await?);
        // Bob reloads his page before his edit got out: the reloaded tab
        // takes over the saved state of the tab that is gone and sends it.
        assert_eq!(editor(&b).await?["saved"], false);
        let append = ["append", doc, " back-T 🎉"];
        let (reloaded, appended) = tokio::join!(b.refresh(), term.run(&append));
        reloaded?;
        appended?;
        let sb = wait_for(&b, "Bob's page reloaded", Duration::from_secs(10), |s| {
            s["text"].as_str().is_some_and(|t| t.contains("offline-B ✓e\u{301}"))
        })
        .await?;
        eprintln!("Bob after the reload: {sb}");
        let text = settle_all(addr, doc, &[&a, &b], &mut watch).await?;
        assert_eq!(text.matches(" offline-A ✓🙂").count(), 1, "{text}");
        assert_eq!(text.matches(" offline-B ✓e\u{301}").count(), 1, "{text}");
        assert_eq!(text.matches(" back-T 🎉").count(), 1, "{text}");
        assert_eq!(term.run(&["cat", doc]).await?, text);
        // Nothing was applied twice, and the stored log replays to the text.
        let (_, replayed) = replay_ops(addr, doc).await?;
        assert_eq!(replayed, text);
        for page in [&a, &b] {
            assert_eq!(editor(page).await?["conflicts"], json!([]));
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = a.close().await;
    let _ = b.close().await;
    if let Some(server) = server {
        server.stop().await?;
    }
    result
}

/// `server token --secret-file SECRET --url BASE ARGS…`: the editor link it
/// prints and the token id it reports.
fn mint_link(secret: &Path, base: &str, args: &[&str]) -> Result<(String, String)> {
    let out = Command::new(e2e_tests::server_binary()?)
        .args(["token", "--secret-file"])
        .arg(secret)
        .args(["--url", base])
        .args(args)
        .output()
        .context("running server token")?;
    if !out.status.success() {
        bail!(
            "server token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let link = String::from_utf8(out.stdout)?.trim().to_owned();
    let stderr = String::from_utf8(out.stderr)?;
    let jti = stderr
        .split("id ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .context("no token id in server token's output")?
        .to_owned();
    Ok((link, jti))
}

/// The text of `doc` as the server has it, read with `token`.
async fn text_with(addr: SocketAddr, doc: &str, token: &str) -> Result<String> {
    let options = ot_driver::ConnectOptions {
        token: Some(ot_driver::TokenSource::Value(token.to_owned())),
        ..ot_driver::ConnectOptions::default()
    };
    let (status, body) =
        ot_driver::http::get_with(&addr.into(), &format!("/api/docs/{doc}"), &options).await?;
    if status != 200 {
        bail!("GET /api/docs/{doc}: {status} {body}");
    }
    let body: Value = serde_json::from_str(&body)?;
    Ok(body["text"].as_str().context("no text")?.to_owned())
}

/// With authentication on, pages opened through minted links: the token
/// leaves the address bar, a read-only link gives a read-only editor whose
/// cursor carries the token's name, and a revoked link stops the page with
/// "access expired" while keeping its unsent edit, which a new link delivers
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_opened_through_minted_links_follow_their_access() -> Result<()> {
    let _ = (chromium(), chromedriver());
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-browser-test-secret-longer-than-32-bytes")?;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let server = start_server_with(&dir.path().join("data"), |c| {
        c.addr = addr;
        c.auth_secret_file = Some(secret.clone());
    })
    .await?;
    let base = format!("http://{addr}");
    let doc = "secured";
    let (ann_link, ann_jti) = mint_link(&secret, &base, &["--doc", doc, "--name", "Ann"])?;
    let (bob_link, _) = mint_link(
        &secret,
        &base,
        &["--doc", doc, "--access", "read", "--name", "Bob"],
    )?;
    assert!(
        ann_link.starts_with(&format!("{base}/d/{doc}#token=")),
        "{ann_link}"
    );
    let (test_link, _) = mint_link(
        &secret,
        &base,
        &["--doc", doc, "--access", "read", "--name", "test"],
    )?;
    let reader = test_link
        .split("#token=")
        .nth(1)
        .context("no token")?
        .to_owned();
    let doc_text = || text_with(addr, doc, &reader);

    let driver = Driver::start().await?;
    let (profile_a, profile_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = driver.session(profile_a.path()).await?;
    let b = driver.session(profile_b.path()).await?;
    let result = async {
        a.goto(&ann_link).await?;
        wait_for(&a, "Ann connected", Duration::from_secs(20), |s| s["connected"] == true).await?;
        let url = a.current_url().await?;
        assert!(!url.as_str().contains("token"), "the token stays in the address bar: {url}");
        // Bob calls himself Mallory on his page; the others see his token's name.
        b.goto(&format!("{base}/")).await?;
        b.execute("localStorage.setItem('ot:v1:name', 'Mallory');", vec![]).await?;
        b.goto(&bob_link).await?;
        wait_for(&b, "Bob connected", Duration::from_secs(20), |s| s["connected"] == true).await?;
        // The status line is rendered at the next animation frame after the
        // first message, not with it: wait for it.
        wait_for(&b, "Bob's status says read-only", Duration::from_secs(20), |s| {
            s["status"].as_str().is_some_and(|t| t.contains("read-only"))
        })
        .await?;
        let bob = b
            .execute(
                "return {access: window.otEditor.access, readOnly: document.getElementById('text').readOnly, \
                         status: document.getElementById('status').textContent};",
                vec![],
            )
            .await?;
        assert_eq!(bob["access"], "read", "{bob}");
        assert_eq!(bob["readOnly"], true, "{bob}");
        assert!(bob["status"].as_str().unwrap_or_default().contains("read-only"), "{bob}");

        insert_text(&a, "hello from Ann").await?;
        wait_for(&b, "Bob sees Ann's text", Duration::from_secs(20), |s| {
            s["text"] == "hello from Ann"
        })
        .await?;
        // Bob's keys change nothing (the textarea is read-only).
        send_keys(&b, "pwned").await?;
        b.execute(
            "const t = document.getElementById('text'); t.focus(); t.setSelectionRange(3, 3); \
             document.dispatchEvent(new Event('selectionchange'));",
            vec![],
        )
        .await?;
        wait_for(&a, "Bob's cursor under his token's name", Duration::from_secs(20), |s| {
            s["cursors"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "Bob"))
        })
        .await?;
        assert_eq!(doc_text().await?, "hello from Ann");

        // Ann's edit waits offline; meanwhile her token is revoked.
        a.execute("window.otEditor.setOffline(true);", vec![]).await?;
        wait_for(&a, "Ann offline", Duration::from_secs(10), |s| s["connected"] == false).await?;
        insert_text(&a, " +kept").await?;
        let revoked = Command::new(e2e_tests::server_binary()?)
            .args(["token", "revoke", "--jti", &ann_jti, "--url", &base, "--secret-file"])
            .arg(&secret)
            .output()?;
        assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
        a.execute("window.otEditor.setOffline(false);", vec![]).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let stopped = loop {
            let s = a.execute("return window.otEditor.stopped;", vec![]).await?;
            if !s.is_null() || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(stopped, "access expired — open a new link");
        let status = a.find(Locator::Css("#status")).await?.text().await?;
        assert!(status.contains("access expired"), "{status}");
        assert_eq!(editor(&a).await?["saved"], false, "the edit is kept");
        assert_eq!(doc_text().await?, "hello from Ann");

        // A new link in the same tab delivers it, once.
        let (new_link, _) = mint_link(&secret, &base, &["--doc", doc, "--name", "Ann"])?;
        a.goto(&new_link).await?;
        wait_for(&a, "Ann's edit delivered", Duration::from_secs(20), |s| {
            s["saved"] == true && s["text"] == "hello from Ann +kept"
        })
        .await?;
        wait_for(&b, "Bob sees it", Duration::from_secs(20), |s| {
            s["text"] == "hello from Ann +kept"
        })
        .await?;
        assert_eq!(doc_text().await?, "hello from Ann +kept");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = a.close().await;
    let _ = b.close().await;
    server.stop().await?;
    result
}

/// A regional server in front of the page: the page and the terminal client
/// edit at the region, the page says "saved in region, not yet replicated"
/// while the home cannot be reached and "all saved" once the home has it,
/// and the home ends with the same text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_a_regional_server_says_what_is_not_yet_at_the_home() -> Result<()> {
    use e2e_tests::proxy::Direction;
    let _ = chromedriver();
    let dir = tempfile::tempdir()?;
    let servers = e2e_tests::HomeAndRegion::start(dir.path()).await?;
    let (home, proxy, region) = (&servers.home, &servers.proxy, &servers.region);
    let base = format!("http://{}", region.addr);
    let doc = "regional";
    let term = Terminal::new(region.addr)?;

    let driver = Driver::start().await?;
    let profile = tempfile::tempdir()?;
    let page = driver.session(profile.path()).await?;
    let result = async {
        open(&page, &base, doc, "Ann").await?;
        send_keys(&page, "hello ").await?;
        // The page's typing is saved before the terminal appends (else the
        // append may land between its keystrokes: right, but not this text).
        wait_for(&page, "hello saved", Duration::from_secs(20), |s| {
            s["saved"] == true && s["text"] == "hello "
        })
        .await?;
        term.run(&["append", doc, "from the terminal "]).await?;
        wait_for(&page, "all saved", Duration::from_secs(20), |s| {
            s["saved"] == true
                && s["text"] == "hello from the terminal "
                && s["status"]
                    .as_str()
                    .is_some_and(|t| t.contains("all saved"))
        })
        .await?;

        // The home cannot be reached: saved at the region, not yet replicated.
        proxy.stall(Direction::Both);
        send_keys(&page, "while cut off").await?;
        wait_for(&page, "not yet replicated", Duration::from_secs(20), |s| {
            s["saved"] == true
                && s["status"]
                    .as_str()
                    .is_some_and(|t| t.contains("saved in region, not yet replicated"))
        })
        .await?;
        let (_, at_home) = doc_state(home.addr, doc).await?;
        assert!(!at_home.contains("while cut off"), "{at_home:?}");

        proxy.resume(Direction::Both);
        let state = wait_for(&page, "replicated", Duration::from_secs(60), |s| {
            s["status"]
                .as_str()
                .is_some_and(|t| t.contains("all saved"))
        })
        .await?;
        let (_, at_home) = doc_state(home.addr, doc).await?;
        assert_eq!(state["text"], json!(at_home));
        assert_eq!(at_home, "hello from the terminal while cut off");
        // The terminal client reads the same text at the region.
        let cat = term.run(&["cat", doc]).await?;
        assert_eq!(cat.trim_end_matches('\n'), at_home);

        // Cut off again, the region takes an edit; the document is deleted
        // at the home meanwhile. When the link is back, the region starts
        // over from the home and keeps its text as a copy on the server,
        // which the page lists (it asks at the snapshot after the 4004).
        proxy.stall(Direction::Both);
        send_keys(&page, " kept aside").await?;
        wait_for(&page, "saved in the region", Duration::from_secs(20), |s| {
            s["status"]
                .as_str()
                .is_some_and(|t| t.contains("saved in region, not yet replicated"))
        })
        .await?;
        let (status, body) = ot_driver::http::send(
            &home.addr.into(),
            ot_driver::http::Method::DELETE,
            &format!("/api/admin/docs/{doc}"),
            None,
            &e2e_tests::test_connect_options(),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        proxy.resume(Direction::Both);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let copies = page
                .execute("return window.otEditor.serverCopies;", vec![])
                .await?;
            let shown = page
                .execute(
                    "return !document.getElementById('server-copies').hidden \
                     && document.querySelector('#server-copies textarea').value;",
                    vec![],
                )
                .await?;
            if copies == json!([format!("{at_home} kept aside")])
                && shown == json!(format!("{at_home} kept aside"))
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the page does not list the server's copy: {copies} / {shown}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = page.close().await;
    servers.stop().await?;
    result
}
