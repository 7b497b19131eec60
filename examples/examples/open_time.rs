//! How long a document takes to open: from dialling the server to the first
//! message (the snapshot), for documents the server has unloaded, so each
//! join loads the document from storage. Issue 16's goal: a document of
//! 100,000 characters with 10^6 ops of history opens within 20 % of the same
//! text with 10^3 ops of history.
//!
//! ```text
//! # a server that unloads idle documents after 1 s:
//! cargo run --release -p server -- --addr 127.0.0.1:8080 --data-dir /tmp/open --idle-unload-secs 1
//! # doc `big`: a long history (e.g. the load tool's random workload for a minute);
//! # doc `small`: the same text as `big` written in a few ops, then 1,000 edits in all:
//! cargo run --release -p examples --example open_time -- --doc small --copy-from big --history-ops 1000
//! # then time both, alternating, each after the server has unloaded it:
//! cargo run --release -p examples --example open_time -- --doc big --doc small --rounds 10
//! ```
//!
//! Each measurement checks, through `GET /metrics`, that the server loaded the
//! document for that join (`ot_document_loads_total` went up by one); a
//! measurement of a document still in memory is reported and not counted.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ot_core::Operation;
use ot_driver::{http, Driver, ServerUrl, SessionCore};
use ot_protocol::{ClientId, DocId};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "open_time",
    about = "Time how long documents take to open from storage"
)]
struct Args {
    /// The server (ws://HOST:PORT or http://HOST:PORT).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// The documents to time (or, with --copy-from, the one to write).
    #[arg(long, required = true)]
    doc: Vec<String>,
    /// Write --doc first: the text of this document, then edits that leave
    /// the text as it is until the history holds --history-ops ops.
    #[arg(long)]
    copy_from: Option<String>,
    /// With --copy-from: the ops of history to end with.
    #[arg(long, default_value_t = 1000)]
    history_ops: u64,
    /// Timed joins per document (alternating between the documents).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Seconds to wait before each join, for the server to unload the
    /// document (more than its `--idle-unload-secs`).
    #[arg(long, default_value_t = 2.0)]
    unload_wait_secs: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = ServerUrl::parse(&args.server).context("reading --server")?;
    let docs = args
        .doc
        .iter()
        .map(|doc| DocId::parse(doc).with_context(|| format!("reading --doc {doc}")))
        .collect::<Result<Vec<_>>>()?;
    if let Some(source) = &args.copy_from {
        let source = DocId::parse(source).context("reading --copy-from")?;
        let [target] = docs.as_slice() else {
            bail!("--copy-from writes one --doc");
        };
        return copy(&server, &source, target, args.history_ops).await;
    }
    let mut timings: Vec<Vec<f64>> = vec![Vec::new(); docs.len()];
    for round in 0..args.rounds {
        for (i, doc) in docs.iter().enumerate() {
            tokio::time::sleep(Duration::from_secs_f64(args.unload_wait_secs)).await;
            let loads_before = document_loads(&server).await?;
            let (elapsed, rev, chars) = time_join(&server, doc).await?;
            let loaded = document_loads(&server).await? - loads_before;
            println!(
                "round {round} {doc}: {:.2} ms to the first message (rev {rev}, {chars} chars){}",
                elapsed * 1e3,
                if loaded == 1.0 {
                    ""
                } else {
                    " — not loaded from storage: not counted"
                }
            );
            if loaded == 1.0 {
                timings[i].push(elapsed * 1e3);
            }
        }
    }
    for (doc, times) in docs.iter().zip(&mut timings) {
        if times.is_empty() {
            println!("RESULT open doc={doc} joins=0");
            continue;
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "RESULT open doc={doc} joins={} min_ms={:.2} median_ms={median:.2} max_ms={:.2}",
            times.len(),
            times[0],
            times[times.len() - 1]
        );
    }
    Ok(())
}

/// Join `doc` as a new reader: seconds from dialling to the first message,
/// the revision and the length it showed.
async fn time_join(server: &ServerUrl, doc: &DocId) -> Result<(f64, u64, usize)> {
    let core = SessionCore::new(doc.clone(), ClientId::random().as_str());
    let mut driver = Driver::new(server.clone(), core);
    let started = Instant::now();
    driver.connect().await.context("joining")?;
    let elapsed = started.elapsed().as_secs_f64();
    let client = driver.core().client();
    let shown = (client.revision(), client.text().len_chars());
    driver.disconnect().await;
    Ok((elapsed, shown.0, shown.1))
}

/// `ot_document_loads_total` from the server's metrics.
async fn document_loads(server: &ServerUrl) -> Result<f64> {
    let (status, body) = http::get(server, "/metrics")
        .await
        .context("reading /metrics")?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    body.lines()
        .find_map(|line| line.strip_prefix("ot_document_loads_total "))
        .and_then(|value| value.trim().parse().ok())
        .context("no ot_document_loads_total in /metrics")
}

/// Write `target`: `source`'s text, then edits that insert and delete one
/// character until its history holds `history_ops` ops.
async fn copy(server: &ServerUrl, source: &DocId, target: &DocId, history_ops: u64) -> Result<()> {
    let mut reader = Driver::new(
        server.clone(),
        SessionCore::new(source.clone(), ClientId::random().as_str()),
    );
    reader.connect().await.context("joining --copy-from")?;
    let text = reader.core().client().text().to_string();
    let source_rev = reader.core().client().revision();
    reader.disconnect().await;
    if source_rev == 0 {
        bail!("{source} has no ops: give a document with a history");
    }

    let mut driver = Driver::new(
        server.clone(),
        SessionCore::new(target.clone(), ClientId::random().as_str()),
    );
    driver.connect().await.context("joining --doc")?;
    if driver.core().client().revision() != 0 {
        bail!("{target} exists already: give a new document");
    }
    // One local edit; the driver sends it as ops within the server's limits.
    driver
        .local_edit(&Operation::insert_at(0, 0, &text)?, None)
        .await?;
    driver
        .wait_saved(Duration::from_secs(60))
        .await
        .context("writing the text")?;
    let len = text.chars().count();
    let mut inserted = false;
    while driver.core().client().revision() < history_ops {
        let op = if inserted {
            Operation::delete_range(len + 1, len / 2, 1)?
        } else {
            Operation::insert_at(len, len / 2, "x")?
        };
        inserted = !inserted;
        driver.local_edit(&op, None).await?;
        driver
            .wait_saved(Duration::from_secs(10))
            .await
            .context("an edit")?;
    }
    if inserted {
        // End on the text itself (one op past history_ops).
        driver
            .local_edit(&Operation::delete_range(len + 1, len / 2, 1)?, None)
            .await?;
        driver
            .wait_saved(Duration::from_secs(10))
            .await
            .context("the last edit")?;
    }
    println!(
        "{target}: {len} chars at rev {}",
        driver.core().client().revision()
    );
    driver.disconnect().await;
    Ok(())
}
