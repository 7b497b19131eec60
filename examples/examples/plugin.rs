//! What an editor plugin does: keep the editor's text buffer in sync with a
//! document. Remote ops are applied to the buffer as they arrive; a local
//! change is turned into an op by comparing the buffer before and after it
//! (`Operation::diff`, ot-core's diff).
//!
//! ```text
//! cargo run -p examples --example plugin -- --server ws://127.0.0.1:8080 --doc notes
//! ```
//!
//! The "editor" is whatever drives stdin and stdout, one JSON object per
//! line, the way editors talk to helper processes (Neovim jobs, Emacs
//! processes, VS Code child processes):
//!
//! - stdin, after each local change: `{"text":"the whole buffer now"}`;
//! - stdout, once synced and after each remote change:
//!   `{"rev":N,"remote":[ot.js op]|null,"text":"the whole buffer now"}`
//!   (an editor applies `remote` to its buffer to keep its cursor; `text` is
//!   there to check). After every local change the plugin answers
//!   `{"rev":N,"saved":true|false}` once the server has it, or not yet.
//!
//! Ordering rule for the editor: apply every `remote` line before sending the
//! next local change, since the plugin diffs against the buffer it last
//! reported. End of stdin: the plugin waits for its edits to be
//! acknowledged (bounded), then exits.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ot_core::Operation;
use ot_driver::{Driver, Event, ServerUrl, SessionCore};
use ot_protocol::{ClientId, DocId};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "plugin",
    about = "Keep a text buffer (JSON lines on stdin/stdout) in sync with a document"
)]
struct Args {
    /// The server (ws://HOST:PORT or http://HOST:PORT).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// The document to edit.
    #[arg(long, default_value = "notes")]
    doc: String,
    /// The name other users see next to this user's cursor.
    #[arg(long, default_value = "plugin")]
    name: String,
}

/// One line from the editor: its buffer after a local change.
#[derive(Debug, Deserialize)]
struct LocalChange {
    text: String,
}

/// The plugin's side of the buffer, and the session that syncs it.
struct Plugin {
    driver: Driver,
    /// The editor's buffer as the plugin last saw or reported it. It always
    /// equals the session's local text: remote ops are applied to both.
    buffer: String,
}

impl Plugin {
    /// The editor changed its buffer: send the difference.
    async fn local_change(&mut self, after: String) -> Result<()> {
        let op = Operation::diff(&self.buffer, &after);
        if !op.is_noop() {
            self.driver.local_edit(&op, None).await?;
        }
        self.buffer = after;
        Ok(())
    }

    /// Act on what the session reports; print what the editor must know.
    fn events(&mut self, events: Vec<Event>) -> Result<()> {
        for event in events {
            match event {
                Event::Remote(op) => {
                    // What the plugin would do to the editor's buffer: apply
                    // the op (the editor moves its cursor with it).
                    self.buffer = op.apply(&self.buffer)?;
                    self.report(Some(&op));
                }
                Event::Resynced => {
                    // The server's text replaced ours (a new epoch, or edits
                    // that could not be merged): the editor reloads it.
                    self.buffer = self.driver.core().client().text().to_string();
                    self.report(None);
                }
                Event::Acked => {
                    let saved = self.driver.core().client().all_saved();
                    let rev = self.driver.core().client().revision();
                    println!("{}", json!({ "rev": rev, "saved": saved }));
                }
                Event::ConflictCopy(text) => {
                    eprintln!("edits that could not be merged, kept for the user:\n{text}");
                }
                Event::ServerError { code, message } => {
                    eprintln!("the server refused an edit: {message} ({})", code.as_str());
                }
                Event::Disconnected { reason, .. } => eprintln!("disconnected: {reason}"),
                Event::Presence => {}
            }
        }
        Ok(())
    }

    /// Tell the editor the buffer's state (after a remote change, or the first sync).
    fn report(&self, remote: Option<&Operation>) {
        let rev = self.driver.core().client().revision();
        println!(
            "{}",
            json!({ "rev": rev, "remote": remote, "text": self.buffer })
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = ServerUrl::parse(&args.server).context("reading --server")?;
    let doc = DocId::parse(&args.doc).context("reading --doc")?;
    let mut core = SessionCore::new(doc, ClientId::random().as_str());
    core.set_name(Some(args.name.clone()));
    let mut plugin = Plugin {
        driver: Driver::new(server, core),
        buffer: String::new(),
    };
    let events = plugin.driver.connect().await.context("joining")?;
    plugin.buffer = plugin.driver.core().client().text().to_string();
    plugin.report(None);
    plugin.events(events)?;

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let Some(line) = line.context("reading stdin")? else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let change: LocalChange = serde_json::from_str(&line)
                    .with_context(|| format!("reading a local change: {line}"))?;
                plugin.local_change(change.text).await?;
            }
            events = plugin.driver.next_events() => plugin.events(events?)?,
            // Lost connection: reconnect after the driver's backoff (the
            // resume resends unacknowledged edits; local changes go on meanwhile).
            () = tokio::time::sleep(Duration::from_millis(100)), if !plugin.driver.is_connected() => {
                if let Some(why) = plugin.driver.stopped() {
                    anyhow::bail!("the server stopped this client: {why}");
                }
                let delay = plugin.driver.retry_delay();
                tokio::time::sleep(delay).await;
                match plugin.driver.connect().await {
                    Ok(events) => plugin.events(events)?,
                    Err(e) => eprintln!("reconnecting failed: {e}"),
                }
            }
        }
    }
    // The editor closed: hand over what is still unacknowledged.
    if plugin.driver.is_connected() {
        let events = plugin.driver.wait_saved(Duration::from_secs(10)).await?;
        plugin.events(events)?;
    }
    plugin.driver.disconnect().await;
    Ok(())
}
