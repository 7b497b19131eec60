//! Read a document's conflict journal over the server's HTTP API and say
//! each conflict in words:
//! `X and Y edited here at once: X meant …, Y meant …, result …`.
//!
//! ```text
//! cargo run -p examples --example conflicts -- --server http://127.0.0.1:8080 notes
//! ```
//!
//! What it shows: the journal (`GET /api/docs/{doc}/conflicts`, PROTOCOL.md's
//! "HTTP API") lists every op the server transformed past ops its sender had
//! not seen, with the op as sent (`original`, on the text at `base_rev`) and
//! as applied (`applied`, on the text at `rev - 1`). The ops it was
//! transformed past are revisions `transformed_past` of `/ops`; the text at
//! the base comes from `/text?rev=`. Replaying those ops from that text gives
//! the text each op was written against, so each one can be told as
//! "insert … at …" or "delete … at …".

use anyhow::{bail, Context, Result};
use clap::Parser;
use ot_core::{Component, Operation};
use ot_driver::ServerUrl;
use serde::Deserialize;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "conflicts", about = "Print a document's conflicts in words")]
struct Args {
    /// The server (http://HOST:PORT or ws://HOST:PORT).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The document.
    doc: String,
}

/// One entry of `/conflicts`.
#[derive(Debug, Deserialize)]
struct Conflict {
    rev: u64,
    client: String,
    base_rev: u64,
    original: Operation,
    applied: Operation,
}

/// One entry of `/ops`.
#[derive(Debug, Deserialize)]
struct StoredOp {
    rev: u64,
    client: String,
    op: Operation,
}

/// Most characters of inserted or deleted text quoted in a description.
const QUOTE_CHARS: usize = 30;
/// Characters of context shown on each side of the result.
const CONTEXT_CHARS: usize = 12;

/// `GET path` as JSON (or plain text with `T = String`).
async fn get<T: serde::de::DeserializeOwned>(server: &ServerUrl, path: &str) -> Result<T> {
    let (status, body) = ot_driver::http::get(server, path)
        .await
        .with_context(|| format!("GET {path}"))?;
    if status != 200 {
        bail!("GET {path}: status {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("reading the answer to GET {path}"))
}

/// The text of `doc` as of revision `rev`.
async fn text_at(server: &ServerUrl, doc: &str, rev: u64) -> Result<String> {
    if rev == 0 {
        return Ok(String::new());
    }
    let path = format!("/api/docs/{doc}/text?rev={rev}");
    let (status, body) = ot_driver::http::get(server, &path)
        .await
        .with_context(|| format!("GET {path}"))?;
    if status != 200 {
        bail!("GET {path}: status {status}: {body}");
    }
    Ok(body)
}

/// The stored ops with revisions `from + 1 ..= to`, paging as the API asks.
async fn ops_between(server: &ServerUrl, doc: &str, from: u64, to: u64) -> Result<Vec<StoredOp>> {
    #[derive(Deserialize)]
    struct Page {
        ops: Vec<StoredOp>,
    }
    let mut ops: Vec<StoredOp> = Vec::new();
    let mut after = from;
    while after < to {
        let limit = (to - after).min(1000);
        let page: Page = get(
            server,
            &format!("/api/docs/{doc}/ops?from={after}&limit={limit}"),
        )
        .await?;
        let Some(last) = page.ops.last() else { break };
        after = last.rev;
        ops.extend(page.ops.into_iter().filter(|op| op.rev <= to));
    }
    Ok(ops)
}

/// `s` quoted (escapes shown), cut to [`QUOTE_CHARS`].
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(QUOTE_CHARS).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// An op in words, on the text it was written against: `insert "x" at 4`,
/// `delete "abc" at 2`, joined by "and" (positions are characters from the start).
fn describe(op: &Operation, text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let mut parts = Vec::new();
    for component in op.components() {
        match component {
            Component::Retain(n) => pos += n,
            Component::Insert(s) => parts.push(format!("insert {} at {pos}", quoted(s))),
            Component::Delete(n) => {
                let end = (pos + n).min(chars.len());
                let gone: String = chars[pos.min(end)..end].iter().collect();
                parts.push(format!("delete {} at {pos}", quoted(&gone)));
                pos += n;
            }
        }
    }
    if parts.is_empty() {
        "nothing (a no-op)".to_owned()
    } else {
        parts.join(" and ")
    }
}

/// Where `op` first changes its text (characters from the start).
fn first_change(op: &Operation) -> usize {
    match op.components().first() {
        Some(Component::Retain(n)) => *n,
        _ => 0,
    }
}

/// The text around `pos` (what the op there left), quoted.
fn excerpt(text: &str, pos: usize, changed: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let start = pos.saturating_sub(CONTEXT_CHARS).min(chars.len());
    let end = (pos + changed + CONTEXT_CHARS).min(chars.len());
    let body: String = chars[start..end].iter().collect();
    let before = if start > 0 { "…" } else { "" };
    let after = if end < chars.len() { "…" } else { "" };
    format!("{before}{body:?}{after}")
}

/// One conflict in words.
async fn explain(server: &ServerUrl, doc: &str, conflict: &Conflict) -> Result<String> {
    let x = &conflict.client;
    let base_text = text_at(server, doc, conflict.base_rev).await?;
    let x_meant = describe(&conflict.original, &base_text);
    // Replay what happened between the base and the conflict's revision,
    // telling each op of someone else on the text it was written against.
    let mut text = base_text;
    let mut others: Vec<(String, Vec<String>)> = Vec::new();
    for stored in ops_between(server, doc, conflict.base_rev, conflict.rev - 1).await? {
        if stored.client != *x {
            let said = describe(&stored.op, &text);
            match others
                .iter_mut()
                .find(|(client, _)| *client == stored.client)
            {
                Some((_, meant)) => meant.push(said),
                None => others.push((stored.client.clone(), vec![said])),
            }
        }
        text = stored
            .op
            .apply(&text)
            .with_context(|| format!("replaying revision {}", stored.rev))?;
    }
    let result = conflict
        .applied
        .apply(&text)
        .with_context(|| format!("applying revision {}", conflict.rev))?;
    let changed = conflict
        .applied
        .components()
        .iter()
        .map(|c| match c {
            Component::Insert(s) => s.chars().count(),
            _ => 0,
        })
        .sum();
    let names: Vec<&str> = others.iter().map(|(client, _)| client.as_str()).collect();
    let who = if names.is_empty() {
        // Only its own earlier ops (a resent op after a reconnect).
        format!("{x} and {x}'s earlier edit")
    } else {
        format!("{x} and {}", names.join(", "))
    };
    let mut line = format!("{who} edited here at once: {x} meant {x_meant}");
    for (client, meant) in &others {
        line.push_str(&format!(", {client} meant {}", meant.join("; then ")));
    }
    line.push_str(&format!(
        ", result {} (revision {})",
        excerpt(&result, first_change(&conflict.applied), changed),
        conflict.rev
    ));
    Ok(line)
}

#[tokio::main]
async fn main() -> Result<()> {
    #[derive(Deserialize)]
    struct Page {
        conflicts: Vec<Conflict>,
    }
    let args = Args::parse();
    let server = ServerUrl::parse(&args.server).context("reading --server")?;
    let doc = &args.doc;
    let mut after = 0;
    let mut count = 0;
    loop {
        let page: Page = get(
            &server,
            &format!("/api/docs/{doc}/conflicts?from={after}&limit=100"),
        )
        .await?;
        let Some(last) = page.conflicts.last() else {
            break;
        };
        after = last.rev;
        for conflict in &page.conflicts {
            println!("{}", explain(&server, doc, conflict).await?);
            count += 1;
        }
    }
    if count == 0 {
        println!("no conflicts in {doc}");
    }
    Ok(())
}
