//! Replay a recorded editing session (a sequential trace in the format of
//! github.com/josephg/editing-traces, gzipped or plain JSON) through a
//! running server as one client, print how fast it went, and check the
//! final text against the trace's `endContent`, on the client and on the
//! server.
//!
//! ```text
//! cargo run --release -p examples --example replay_trace -- \
//!     --server ws://127.0.0.1:8080 ../shared/data/editing-traces/sequential_traces/sveltecomponent.json.gz
//! ```
//!
//! A trace is `{"startContent":"","endContent":"…","txns":[{"patches":[[pos,del,"ins"],…]},…]}`,
//! positions in Unicode scalar values (the unit of ot-core's lengths). Each
//! txn becomes one local edit (its patches composed), typed as fast as the client takes it: the
//! client sends one op at a time and composes the edits made meanwhile into
//! its queue (split to the server's announced limits), as a fast typist's
//! editor would, so far fewer ops than patches reach the server. With
//! `--closed-loop` each txn is one op and waits for its ack before the next
//! (every op a round trip and a commit: the server's pace for one writer).
//! Concurrent traces (several agents) are refused: replay their `_flat` copy.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ot_core::Operation;
use ot_driver::{Driver, Event, ServerUrl, SessionCore};
use ot_protocol::{ClientId, DocId};
use serde::Deserialize;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "replay_trace",
    about = "Replay an editing trace through a server as one client"
)]
struct Args {
    /// The server (ws://HOST:PORT or http://HOST:PORT).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// The document to replay into; it must be empty (default: a new one).
    #[arg(long)]
    doc: Option<String>,
    /// Send each txn as one op and wait for its ack before the next.
    #[arg(long)]
    closed_loop: bool,
    /// The trace file (`.json.gz` or `.json`).
    trace: PathBuf,
}

/// A sequential editing trace.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trace {
    /// `"concurrent"` for traces of several agents.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    start_content: String,
    end_content: String,
    txns: Vec<Txn>,
}

/// One transaction: patches applied one after another.
#[derive(Debug, Deserialize)]
struct Txn {
    /// `[position, characters deleted, text inserted]`.
    patches: Vec<(usize, usize, String)>,
}

/// Read a trace, gunzipping it if it starts with gzip's magic bytes.
fn read_trace(path: &PathBuf) -> Result<Trace> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let json = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut text)
            .with_context(|| format!("gunzipping {}", path.display()))?;
        text
    } else {
        bytes
    };
    let trace: Trace = serde_json::from_slice(&json)
        .with_context(|| format!("reading {} as an editing trace", path.display()))?;
    if trace.kind.as_deref() == Some("concurrent") {
        bail!(
            "{} is a concurrent trace (several agents): replay its _flat copy",
            path.display()
        );
    }
    Ok(trace)
}

/// Handle whatever the server has already sent, without waiting; returns the
/// number of acknowledgements among it.
async fn take_ready(driver: &mut Driver) -> Result<u64> {
    let mut acks = 0;
    loop {
        let events = tokio::select! {
            biased;
            events = driver.next_events() => events?,
            () = std::future::ready(()) => return Ok(acks),
        };
        acks += count_acks(&events)?;
    }
}

/// The acknowledgements in `events`; an error for anything that means the
/// replay is not what the trace says.
fn count_acks(events: &[Event]) -> Result<u64> {
    let mut acks = 0;
    for event in events {
        match event {
            Event::Acked => acks += 1,
            Event::Remote(_) => bail!("someone else edited the document during the replay"),
            Event::ServerError { code, message } => {
                bail!("the server refused an edit: {message} ({})", code.as_str())
            }
            Event::ConflictCopy(_) | Event::Resynced => {
                bail!("the server's text replaced the replay's (a new epoch?)")
            }
            Event::Disconnected { reason, .. } => bail!("the connection was lost: {reason}"),
            Event::Presence => {}
        }
    }
    Ok(acks)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let trace = read_trace(&args.trace)?;
    let server = ServerUrl::parse(&args.server).context("reading --server")?;
    let doc_name = args
        .doc
        .unwrap_or_else(|| format!("trace-{}", ClientId::random().as_str()));
    let doc = DocId::parse(&doc_name).context("reading --doc")?;
    let mut driver = Driver::new(
        server.clone(),
        SessionCore::new(doc, ClientId::random().as_str()),
    );
    driver.connect().await.context("joining the document")?;
    if driver.core().client().text().len_chars() != 0 {
        bail!("document {doc_name} is not empty: replay into a new one");
    }
    let patches: usize = trace.txns.iter().map(|t| t.patches.len()).sum();
    println!(
        "replaying {} ({} txns, {patches} patches) into document {doc_name}",
        args.trace.display(),
        trace.txns.len()
    );

    let started = Instant::now();
    let mut acks = 0;
    let mut len = 0usize;
    if !trace.start_content.is_empty() {
        let op = Operation::insert_at(0, 0, &trace.start_content)?;
        driver.local_edit(&op, None).await?;
        len = trace.start_content.chars().count();
    }
    for (index, txn) in trace.txns.iter().enumerate() {
        // A txn's patches apply one after another: composed, they are one edit.
        let mut edit = Operation::identity(len);
        for (pos, deleted, inserted) in &txn.patches {
            let patch = Operation::replace_range(len, *pos, *deleted, inserted)
                .with_context(|| format!("txn {index}: a patch that does not fit the text"))?;
            len = patch.target_len();
            edit = edit.compose(&patch)?;
        }
        acks += count_acks(&driver.local_edit(&edit, None).await?)?;
        if args.closed_loop {
            let events = driver.wait_saved(Duration::from_secs(30)).await?;
            acks += count_acks(&events)?;
        } else {
            acks += take_ready(&mut driver).await?;
        }
    }
    let typed = started.elapsed();
    let events = driver
        .wait_saved(Duration::from_secs(120))
        .await
        .context("waiting for the server to acknowledge every edit")?;
    acks += count_acks(&events)?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{patches} patches in {elapsed:.3} s ({:.3} s typing): {:.0} patches/s; \
         the server applied {acks} ops ({:.0} ops/s)",
        typed.as_secs_f64(),
        patches as f64 / elapsed,
        acks as f64 / elapsed
    );

    let local = driver.core().client().text().to_string();
    if local != trace.end_content {
        bail!("the client's final text differs from the trace's endContent");
    }
    let (status, body) = ot_driver::http::get(&server, &format!("/api/docs/{doc_name}"))
        .await
        .context("reading the document back")?;
    if status != 200 {
        bail!("GET /api/docs/{doc_name}: status {status}: {body}");
    }
    let stored: serde_json::Value = serde_json::from_str(&body)?;
    if stored["text"].as_str() != Some(trace.end_content.as_str()) {
        bail!("the server's text differs from the trace's endContent");
    }
    println!(
        "final text matches endContent ({} chars) on the client and on the server",
        trace.end_content.chars().count()
    );
    driver.disconnect().await;
    Ok(())
}
