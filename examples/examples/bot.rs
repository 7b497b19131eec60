//! A bot: joins a document, types one line at its end through the client
//! driver (`ot-driver`), waits until the server has acknowledged it, and
//! prints the whole document.
//!
//! ```text
//! cargo run -p examples --example bot -- --server ws://127.0.0.1:8080 --doc notes --line "hello from a bot"
//! ```
//!
//! What it shows: the smallest useful client. [`Driver`] does the protocol
//! (snapshot, acks, resends, reconnect rules); the bot only makes local
//! edits as [`Operation`]s on the text it sees, like a user typing. The bot
//! keeps nothing on disk: each run is a new writer with a new client id.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ot_core::Operation;
use ot_driver::{Driver, ServerUrl, SessionCore};
use ot_protocol::{ClientId, DocId};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "bot", about = "Type a line into a document, then print it")]
struct Args {
    /// The server (ws://HOST:PORT or http://HOST:PORT).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// The document to join.
    #[arg(long, default_value = "notes")]
    doc: String,
    /// The line to type (a newline is added).
    #[arg(long, default_value = "hello from a bot")]
    line: String,
    /// The name other users see next to the bot's cursor.
    #[arg(long, default_value = "bot")]
    name: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = ServerUrl::parse(&args.server).context("reading --server")?;
    let doc = DocId::parse(&args.doc).context("reading --doc")?;

    // A new writer: a random client id (the driver makes its key).
    let mut core = SessionCore::new(doc, ClientId::random().as_str());
    core.set_name(Some(args.name.clone()));
    let mut driver = Driver::new(server, core);
    // The first message is a snapshot: the document's text and revision.
    driver.connect().await.context("joining the document")?;

    // Type the line at the end of the text as it is now. The op covers the
    // whole document (retain everything, then insert); if someone else
    // types meanwhile, the server transforms it past their edits.
    let text = driver.core().client().text().clone();
    let end = text.len_chars();
    let mut typed = String::new();
    if end > 0 && text.char(end - 1) != '\n' {
        typed.push('\n');
    }
    typed.push_str(&args.line);
    typed.push('\n');
    let op = Operation::insert_at(end, end, &typed)?;
    driver.local_edit(&op, None).await?;

    // The edit is applied locally at once; wait until the server has it.
    driver
        .wait_saved(Duration::from_secs(10))
        .await
        .context("waiting for the server's acknowledgement")?;
    if let Some(why) = driver.stopped() {
        bail!("the server stopped the bot: {why}");
    }
    print!("{}", driver.core().client().text());
    driver.disconnect().await;
    Ok(())
}
