//! The suite's TCP proxy as a program, for benchmarks across a slow link
//! (the kernel here has no netem): listens on a loopback port and forwards
//! every connection to a target with a delay each way.
//!
//! ```sh
//! cargo run --release -p e2e-tests --example latency_proxy -- 127.0.0.1:8080 50
//! ```
//! prints `listening on 127.0.0.1:PORT` and forwards until killed. Arguments:
//! the target (a loopback address; several, comma-separated, get the new
//! connections in turn, as a load balancer without stickiness would give
//! them to several server nodes) and the delay each way in milliseconds;
//! a third argument `by-document` sends every connection of one document
//! (`/ws/DOC`, `/api/docs/DOC`) to the same target instead, as a reverse
//! proxy sticky by document would.
//! Lines on stdin control it: `stall` (a partition: nothing is forwarded,
//! nothing is closed), `resume`, `cut` (close every connection).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use e2e_tests::proxy::{Direction, Proxy};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(delay_ms)) = (args.next(), args.next()) else {
        bail!("usage: latency_proxy TARGET_ADDR[,TARGET_ADDR…] DELAY_MS_EACH_WAY [by-document]");
    };
    let by_document = match args.next().as_deref() {
        None => false,
        Some("by-document") => true,
        Some(other) => bail!("unknown routing {other:?}: by-document or nothing (in turn)"),
    };
    let targets = target
        .split(',')
        .map(|one| one.trim().parse::<SocketAddr>().context("TARGET_ADDR"))
        .collect::<Result<Vec<_>>>()?;
    if targets.iter().any(|target| !target.ip().is_loopback()) {
        bail!("every target must be a loopback address");
    }
    let delay_ms: u64 = delay_ms.parse().context("DELAY_MS_EACH_WAY")?;
    let proxy = if by_document {
        Proxy::start_by_document(&targets).await?
    } else {
        Proxy::start_spread(&targets).await?
    };
    proxy.set_latency(Direction::Both, Duration::from_millis(delay_ms));
    println!("listening on {}", proxy.addr());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => match line.trim() {
                    "stall" => proxy.stall(Direction::Both),
                    "resume" => proxy.resume(Direction::Both),
                    "cut" => proxy.cut(),
                    other => eprintln!("unknown command {other:?}: stall, resume or cut"),
                },
                // No more commands: forward until killed.
                None => {
                    tokio::signal::ctrl_c().await?;
                    return Ok(());
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
