//! The attack table's harness: a raw writer that sends ops one at a time and
//! times their acks, a bystander that keeps editing a document while an
//! attack runs (its slowest ack is what the attack cost everyone else), and
//! the resident memory of a server process.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use ot_core::Operation;
use ot_protocol::{ClientMessage, Code, ServerMessage};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{
    free_port, recv_message, send_message, server_binary, ws_connect, ServerProcess, Socket,
};

/// A server process for an attack row: the test build of `server` with
/// `flags` (the limits the row states), on a free loopback port, storing in
/// `dir`. Rows run a process of their own so that its RSS is the server's.
pub async fn attack_server(dir: &Path, flags: &[&str]) -> Result<ServerProcess> {
    ServerProcess::start(&server_binary()?, dir, free_port(), flags).await
}

/// A writer on a raw socket: joins with a snapshot and sends ops one at a
/// time, each based on the latest revision it has heard of (its last ack or
/// another writer's op). Its ops must be inserts or no-ops (their effect on
/// the length survives transformation), which is all the attack rows need.
pub struct RawWriter {
    socket: Socket,
    /// The latest revision it knows (the snapshot's, its last ack's, or
    /// another writer's op's).
    pub rev: u64,
    /// The seq of its last op.
    pub seq: u64,
    /// The document's length at `rev`, in characters.
    pub len: usize,
}

impl RawWriter {
    /// Join `doc` as `client`, reading the snapshot.
    pub async fn join(addr: SocketAddr, doc: &str, client: &str) -> Result<RawWriter> {
        let mut socket = ws_connect(addr, &format!("/ws/{doc}?client={client}")).await?;
        match recv_message(&mut socket, Duration::from_secs(30)).await? {
            ServerMessage::Snapshot { rev, text, seq, .. } => Ok(RawWriter {
                socket,
                rev,
                seq,
                len: text.chars().count(),
            }),
            other => bail!("expected a snapshot, got {other:?}"),
        }
    }

    /// Send `op` based on the last ack and wait for its ack (other messages
    /// are skipped); the time it took. An error frame is an error.
    pub async fn send(&mut self, op: Operation) -> Result<Duration> {
        self.seq += 1;
        // An insert or a no-op changes the length by the same amount however
        // the server transforms it.
        let delta = op.target_len() as i64 - op.base_len() as i64;
        let message = ClientMessage::Op {
            rev: self.rev,
            seq: self.seq,
            op,
            ranges: None,
            origin: None,
        };
        let started = Instant::now();
        send_message(&mut self.socket, &message).await?;
        loop {
            match recv_message(&mut self.socket, Duration::from_secs(60)).await? {
                ServerMessage::Ack { rev, seq } if seq == self.seq => {
                    self.rev = rev;
                    self.len = usize::try_from(self.len as i64 + delta)?;
                    return Ok(started.elapsed());
                }
                // Others' ops come in revision order: `rev` and `len` keep
                // describing one revision, the base of the next op.
                ServerMessage::Op { rev, op, .. } if rev == self.rev + 1 => {
                    self.rev = rev;
                    self.len = op.target_len();
                }
                ServerMessage::Error { code, message, .. } => bail!("{code}: {message}"),
                _ => {}
            }
        }
    }

    /// Send `op` expecting it refused: the error's code (its seq is not
    /// used up, as the server applied nothing). An ack is an error.
    pub async fn send_refused(&mut self, op: Operation) -> Result<Code> {
        let seq = self.seq + 1;
        let message = ClientMessage::Op {
            rev: self.rev,
            seq,
            op,
            ranges: None,
            origin: None,
        };
        send_message(&mut self.socket, &message).await?;
        loop {
            match recv_message(&mut self.socket, Duration::from_secs(60)).await? {
                ServerMessage::Error {
                    code, seq: Some(s), ..
                } if s == seq => return Ok(code),
                ServerMessage::Ack { seq: s, .. } if s == seq => bail!("op {seq} was applied"),
                _ => {}
            }
        }
    }

    /// Send any other message (a cursor, say) without waiting for an answer.
    pub async fn send_message(&mut self, message: &ClientMessage) -> Result<()> {
        send_message(&mut self.socket, message).await
    }

    /// An op inserting `text` at the end of the document.
    pub fn insert_at_end(&self, text: &str) -> Operation {
        Operation::insert_at(self.len, self.len, text).unwrap_or_default()
    }

    /// A no-op on the document.
    pub fn noop(&self) -> Operation {
        let mut op = Operation::new();
        op.retain(self.len);
        op
    }
}

/// A writer that keeps editing a document (one small op at a time, a few
/// per second) until stopped, recording how long each ack took.
pub struct Bystander {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Vec<Duration>>>,
}

impl Bystander {
    /// Start editing `doc` as `client`.
    pub async fn start(addr: SocketAddr, doc: &str, client: &str) -> Result<Bystander> {
        let mut writer = RawWriter::join(addr, doc, client).await?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !*stopped.borrow() {
                let op = writer.insert_at_end("b");
                latencies.push(writer.send(op).await?);
                let _ = tokio::time::timeout(Duration::from_millis(50), stopped.changed()).await;
            }
            Ok(latencies)
        });
        Ok(Bystander { stop, task })
    }

    /// Stop; every ack latency it saw (an error if it failed or saw none).
    pub async fn finish(self) -> Result<Vec<Duration>> {
        let _ = self.stop.send(true);
        let latencies = self.task.await??;
        if latencies.is_empty() {
            bail!("the bystander got no ack");
        }
        Ok(latencies)
    }
}

/// The resident set size of process `pid`, in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// Samples a process's RSS every 50 ms until stopped; the peak.
pub struct RssPeak {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl RssPeak {
    /// Start sampling `pid`.
    pub fn start(pid: u32) -> RssPeak {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !*stopped.borrow() {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                let _ = tokio::time::timeout(Duration::from_millis(50), stopped.changed()).await;
            }
            peak.max(rss_kib(pid).unwrap_or(0))
        });
        RssPeak { stop, task }
    }

    /// Stop; the peak RSS in KiB.
    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

/// The attack table's memory rule: a server's peak RSS while an attack runs
/// stays under twice its RSS with the same documents and no attack (the
/// baseline, taken before the attack starts).
pub struct RssBound {
    baseline: u64,
    peak: RssPeak,
}

impl RssBound {
    /// Take `pid`'s RSS now as the baseline and sample its peak from now on.
    pub fn start(pid: u32) -> Result<RssBound> {
        Ok(RssBound::with_baseline(pid, rss_kib(pid)?))
    }

    /// Sample `pid`'s peak from now on against a `baseline` measured before.
    pub fn with_baseline(pid: u32, baseline: u64) -> RssBound {
        RssBound {
            baseline,
            peak: RssPeak::start(pid),
        }
    }

    /// Stop sampling: an error naming both figures unless the peak stayed
    /// under twice the baseline; otherwise (peak, baseline) in KiB.
    pub async fn check(self) -> Result<(u64, u64)> {
        let peak = self.peak.finish().await;
        if peak == 0 || peak >= 2 * self.baseline {
            bail!(
                "the server's RSS peaked at {peak} KiB during the attack, {} KiB before it",
                self.baseline
            );
        }
        eprintln!(
            "RSS: peak {peak} KiB during the attack, {} KiB before it",
            self.baseline
        );
        Ok((peak, self.baseline))
    }
}
