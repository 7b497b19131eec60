//! Keep many documents open on a server, idle: one connection each, joined
//! and then silent (frames read, pings answered) until the time is up. With
//! the load tool running beside it, this shows whether the server's work per
//! op depends on how many documents it has open (issue 16: it must not).
//!
//! ```text
//! cargo run --release -p examples --example idle_docs -- --server ws://127.0.0.1:8080 --docs 10000 --hold-secs 60
//! ```
//!
//! The server needs room for them: `--max-connections` and
//! `--max-connections-per-addr` above `--docs`, and enough file descriptors
//! on both sides (`ulimit -n`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "idle_docs", about = "Hold many documents open, idle")]
struct Args {
    /// The server's base WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// How many documents (one connection each).
    #[arg(long, default_value_t = 1000)]
    docs: usize,
    /// Prefix of the document ids.
    #[arg(long, default_value = "idle-")]
    prefix: String,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
}

/// Connections opened at once.
const OPENING: usize = 64;

/// Longest wait for one connection's first message.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let server = args.server.trim_end_matches('/').to_owned();
    let mut opening = futures_util::stream::iter(0..args.docs)
        .map(|i| {
            let url = format!("{server}/ws/{}{i}?client=idle{i}", args.prefix);
            async move { join(&url).await.with_context(|| format!("joining {url}")) }
        })
        .buffer_unordered(OPENING);
    let mut held = Vec::with_capacity(args.docs);
    while let Some(socket) = opening.next().await {
        held.push(tokio::spawn(stay_idle(socket?)));
    }
    println!(
        "holding {} idle documents (opened in {:.1} s)",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let closed = held.iter().filter(|task| task.is_finished()).count();
    if closed > 0 {
        bail!(
            "{closed} of {} connections were closed while held",
            held.len()
        );
    }
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connect and wait for the first message (the document is open then).
async fn join(url: &str) -> Result<Socket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    match tokio::time::timeout(JOIN_TIMEOUT, socket.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => Ok(socket),
        other => bail!("no first message: {other:?}"),
    }
}

/// Read until the server closes the connection (tungstenite answers the
/// server's pings as it reads).
async fn stay_idle(mut socket: Socket) {
    while let Some(Ok(_)) = socket.next().await {}
}
