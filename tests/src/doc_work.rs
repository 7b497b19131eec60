//! Helpers of the document-work tests (old bases, dedup eviction, slow
//! readers): fill a document's history fast, flood it until a client is
//! closed, and a bystander that edits and measures how long each of its
//! acks takes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ot_core::Operation;
use ot_protocol::{ClientMessage, ServerMessage};

use crate::WsClient;

/// Bound on one flood op's ack.
const FLOOD_WAIT: Duration = Duration::from_secs(30);

/// The characters of a flood op unless a test says otherwise.
pub const FLOOD_CHUNK: usize = 5000;

/// Flood op number `n` as `writer`: append a `chunk_len`-character chunk
/// (even `n`) or delete it again (odd `n`), and wait for the ack. Every op
/// is `chunk_len` characters for the others to receive, and the document
/// stays as small as it was.
async fn flood_op(writer: &mut WsClient, n: u64, chunk_len: usize) -> Result<()> {
    let chunk: String = "0123456789".chars().cycle().take(chunk_len).collect();
    let len = writer.client().text().len_chars();
    let op = if n.is_multiple_of(2) {
        Operation::insert_at(len, len, &chunk)?
    } else {
        Operation::delete_range(len, len - chunk.len(), chunk.len())?
    };
    writer.edit(&op).await?;
    writer
        .pump_until(FLOOD_WAIT, |c| c.client().all_saved())
        .await
}

/// `count` flood ops of `chunk_len` characters as `writer` (see
/// [`flood_until_left`]): the load a writer alone puts on the server, for
/// a baseline.
pub async fn flood(writer: &mut WsClient, count: u64, chunk_len: usize) -> Result<()> {
    for n in 0..count {
        flood_op(writer, n, chunk_len).await?;
    }
    Ok(())
}

/// Flood ops (a `chunk_len`-character chunk appended, then deleted) as
/// `writer`, one per ack, until it sees `client` leave (the server closed
/// it); returns the ops sent. A `reader` keeps up after each op. Bounded:
/// fails after 4,000 ops or 120 s.
pub async fn flood_until_left(
    writer: &mut WsClient,
    client: &str,
    mut reader: Option<&mut WsClient>,
    chunk_len: usize,
) -> Result<u64> {
    let leave = ServerMessage::Leave {
        client: client.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ops = 0u64;
    while !writer.other.contains(&leave) {
        if ops >= 4000 || Instant::now() >= deadline {
            bail!("{client} was never closed ({ops} ops)");
        }
        flood_op(writer, ops, chunk_len).await?;
        ops += 1;
        if let Some(reader) = reader.as_deref_mut() {
            reader
                .settle_to(writer.client().revision(), FLOOD_WAIT)
                .await?;
        }
    }
    Ok(ops)
}

/// Ops a filler sends before reading their acks.
const FILL_BATCH: u64 = 500;

/// Join `doc` as `client_id` and append `count` characters `ch`, one op
/// each, pipelined (the server must allow that rate: raise `ops_per_sec`
/// and `ops_burst`). The filler must be the only writer meanwhile. Returns
/// the document's revision after the last op.
pub async fn fill_history(
    addr: SocketAddr,
    doc: &str,
    client_id: &str,
    count: u64,
    ch: char,
) -> Result<u64> {
    let mut filler = WsClient::join(addr, doc, client_id).await?;
    let mut rev = filler.client().revision();
    let mut len = filler.client().text().len_chars();
    let mut seq = filler.core().client().next_seq();
    let mut sent = 0;
    while sent < count {
        let batch = FILL_BATCH.min(count - sent);
        for i in 0..batch {
            let op = Operation::insert_at(len, len, &ch.to_string())?;
            filler
                .send(&ClientMessage::Op {
                    rev: rev + i,
                    seq,
                    op,
                    ranges: None,
                    origin: None,
                })
                .await?;
            seq += 1;
            len += 1;
        }
        let mut acked = 0;
        while acked < batch {
            match filler.recv_message(Duration::from_secs(60)).await? {
                ServerMessage::Ack { rev: acked_rev, .. } => {
                    acked += 1;
                    rev = acked_rev;
                }
                ServerMessage::Error { code, message, .. } => {
                    bail!("the filler's op was refused: {code:?} {message}")
                }
                _ => {}
            }
        }
        sent += batch;
    }
    filler.close().await?;
    Ok(rev)
}

/// A writer that appends `ch` at the end of the document every few
/// milliseconds and records how long each op took to be acknowledged,
/// until [`stop`](Bystander::stop).
pub struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(WsClient, Vec<Duration>)>>,
}

impl Bystander {
    /// Join `doc` as `client_id` and start editing.
    pub async fn start(
        addr: SocketAddr,
        doc: &str,
        client_id: &str,
        ch: char,
    ) -> Result<Bystander> {
        let mut client = WsClient::join(addr, doc, client_id).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Bounded: stops when told, or after 10 minutes whatever happens.
            let give_up = Instant::now() + Duration::from_secs(600);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < give_up {
                let len = client.client().text().len_chars();
                let started = Instant::now();
                client
                    .edit(&Operation::insert_at(len, len, &ch.to_string())?)
                    .await?;
                client
                    .pump_until(Duration::from_secs(60), |c| c.client().all_saved())
                    .await
                    .context("the bystander's ack")?;
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok((client, latencies))
        });
        Ok(Bystander { stop, task })
    }

    /// Stop editing; the client (everything acknowledged) and each ack's latency.
    pub async fn stop(self) -> Result<(WsClient, Vec<Duration>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}
