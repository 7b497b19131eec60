//! Load generator for the server: real WebSocket clients, each running
//! ot-core's client state machine, over a few documents.
//!
//! ```text
//! cargo run --release -p examples --example load -- --clients 16 --docs 1 --server ws://127.0.0.1:8080
//! ```
//!
//! Modes:
//! - **closed loop** (default): every client has at most one op in flight: it
//!   edits, waits for the ack, edits again, applying remote ops as they come.
//! - **open loop** (`--rate N`): every client makes N local edits per second
//!   (typing); edits made while an op is in flight are composed into the
//!   client's buffer and sent after the ack, as the state machine does.
//! - **echo baseline** (`--echo`): the same closed loop against a bare WebSocket
//!   echo server started in this process, measuring the round trip of messages
//!   of the same size; `--compare-echo` runs the echo baseline and then the
//!   server with the same settings, and prints the ratio of the two.
//!
//! Protocols (`--protocol`): `ours` (the default); `rustpad`, which speaks
//! Rustpad's protocol (commit 54e4a93) to a Rustpad server, for side-by-side
//! figures (see `rustpad.rs`); `sharedb`, which speaks ShareDB's to the
//! ShareDB server script in `examples/sharedb/` (see `sharedb.rs`). Workloads (`--workload`): `cursor` (the
//! default: edits at each client's cursor, documents held short) or `random`
//! (random positions, growing documents); see `workload.rs`.
//!
//! `--clients` is the total number of clients; client `i` edits document
//! `i % docs`. Statistics cover `--duration-secs` after `--warmup-secs`. At the
//! end every client's text is compared with `GET /api/docs/{doc}` (Rustpad:
//! `GET /api/text/{doc}`; ShareDB: `GET /text/docs/{doc}`): the tool prints
//! `CONVERGED`, or exits non-zero.
//! Only loopback addresses are accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cpu;
mod editing;
mod peer;
mod rustpad;
mod sharedb;
mod workload;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use editing::{Editor, Typist};
use futures_util::{SinkExt, StreamExt};
use ot_core::client::{AckOutcome, Client, OutgoingOp, RemoteOutcome};
use ot_protocol::{op_message_text, ClientMessage, ErrorAction, ServerMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use workload::Workload;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Command-line arguments.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "load",
    about = "Load generator for the collaborative editing server"
)]
struct Args {
    /// The server's base WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// Total number of clients; client i edits document i % docs.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Number of documents.
    #[arg(long, default_value_t = 1)]
    docs: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Open loop: local edits per second per client (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Echo baseline: run the closed loop against a bare WebSocket echo server
    /// started in this process instead of the server.
    #[arg(long, conflicts_with = "compare_echo")]
    echo: bool,
    /// Run the echo baseline, then the server with the same settings, and
    /// print the ratio of their round trips.
    #[arg(long)]
    compare_echo: bool,
    /// Pin the echo server's thread to this CPU (e.g. 0 while the tool runs
    /// under `taskset -c 1`, to mirror a server pinned to core 0).
    #[arg(long)]
    echo_cpu: Option<usize>,
    /// Documents are kept at most about this many characters long (deletes
    /// win above it); default 2000 for the cursor workload, 200000 for random.
    #[arg(long)]
    max_len: Option<usize>,
    /// The protocol spoken: ours, Rustpad's (to a Rustpad server) or
    /// ShareDB's (to the ShareDB server script, `scripts/sharedb-server`).
    #[arg(long, value_enum, default_value_t = Protocol::Ours)]
    protocol: Protocol,
    /// What the clients type: at their cursors (short documents), or at random
    /// positions (growing documents).
    #[arg(long, value_enum, default_value_t = Workload::Cursor)]
    workload: Workload,
    /// Ask our server for one message per frame instead of batches
    /// (`batch=1`, several messages per frame: the default, as every client
    /// of ours does), to measure what batching changes.
    #[arg(long)]
    no_batch: bool,
    /// The server's process id (on this machine): also report its CPU time per
    /// acked op over the measured window, read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A PostgreSQL postmaster's process id (on this machine): also report the
    /// CPU time of it and its children (the backends) per acked op over the
    /// measured window, read from /proc.
    #[arg(long)]
    pg_pid: Option<u32>,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Prefix of the document ids (default: `load-` and a random suffix, so each run starts fresh).
    #[arg(long)]
    doc_prefix: Option<String>,
    /// Seconds allowed, after the load stops, for outstanding acks and the convergence check.
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
    /// WebSocket read buffer of the tool's clients and of the echo server, in
    /// bytes. tungstenite zero-fills the free part of this buffer before every
    /// read, so its 128 KiB default costs a 128 KiB memset per read.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Also measure how long others' edits take to arrive: from an op's first
    /// send to its arrival at each other client of the document (the tool's
    /// clients share one clock). Costs the tool a shared map lookup per op received.
    #[arg(long)]
    remote_latency: bool,
}

/// The protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// This project's protocol (PROTOCOL.md).
    Ours,
    /// Rustpad's (commit 54e4a93): `/api/socket/{id}`, `Identity`, `History`, `Edit`.
    Rustpad,
    /// ShareDB's (sharedb 5.2, `ot-text-unicode` ops), to `examples/sharedb/server.js`.
    Sharedb,
}

/// What the phase talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The real server.
    Server(SocketAddr),
    /// The in-process echo server.
    Echo(SocketAddr),
}

impl Target {
    fn addr(self) -> SocketAddr {
        match self {
            Target::Server(a) | Target::Echo(a) => a,
        }
    }
}

/// Shared settings of one phase.
struct PhaseConfig {
    target: Target,
    protocol: Protocol,
    doc_ids: Vec<String>,
    rate: Option<f64>,
    workload: Workload,
    /// Ask for batches (`batch=1`).
    batch: bool,
    max_len: usize,
    warmup: Duration,
    duration: Duration,
    settle: Duration,
    read_buffer: usize,
    /// With `--remote-latency`: when each (client id, seq) was first sent.
    first_sent: Option<std::sync::Mutex<HashMap<(String, u64), Instant>>>,
    /// Rustpad: every client waits here, with its final text, before closing.
    all_final: tokio::sync::Barrier,
}

/// The start signal: `Some(t0)` once every client is connected.
type StartSignal = watch::Receiver<Option<Instant>>;

/// Per-client results.
#[derive(Debug, Default)]
struct ClientReport {
    /// Ack latencies (send → ack) in the window, microseconds.
    ack_us: Vec<u32>,
    /// Open loop: latency from the oldest edit in an op to its ack, microseconds.
    edit_us: Vec<u32>,
    /// With `--remote-latency`: others' ops, first send → arrival here, microseconds.
    remote_us: Vec<u32>,
    /// Acks received in the window.
    acked: u64,
    /// Local edits made in the window.
    edits: u64,
    /// Error messages, protocol failures and lost connections.
    errors: u64,
    /// Reconnections.
    reconnects: u64,
    /// Remote ops applied (whole run).
    remote_ops: u64,
    /// Final text and revision (server mode).
    final_state: Option<(u64, String)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.docs == 0 {
        bail!("--clients and --docs must be at least 1");
    }
    if args.protocol != Protocol::Ours && (args.echo || args.compare_echo) {
        bail!("the echo baseline speaks our protocol only: drop --echo/--compare-echo with --protocol rustpad or sharedb");
    }
    if args.protocol != Protocol::Ours && args.remote_latency {
        bail!("--remote-latency needs our protocol's client ids and seqs: not with --protocol rustpad or sharedb");
    }
    if args.docs > args.clients {
        bail!(
            "--docs ({}) exceeds --clients ({}): some documents would have no client",
            args.docs,
            args.clients
        );
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate <= 10_000.0) {
            bail!("--rate must be in (0, 10000]");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(run(args))?;
    // Client and echo tasks are all finished or bounded; don't wait on idle ones.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> Result<bool> {
    let server = loopback_addr(&args.server)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut mode = match (args.echo, args.rate) {
        (true, _) => "echo".to_owned(),
        (false, Some(rate)) => format!("open loop at {rate} edits/s per client"),
        (false, None) => "closed loop".to_owned(),
    };
    // Named only when not the defaults, so default runs print what they always did.
    match args.protocol {
        Protocol::Ours => {}
        Protocol::Rustpad => mode.push_str(", Rustpad protocol"),
        Protocol::Sharedb => mode.push_str(", ShareDB protocol"),
    }
    if args.workload == Workload::Random {
        mode.push_str(", random workload");
    }
    println!(
        "load: {mode}; {} clients over {} docs; {:.1} s warm-up + {:.1} s measured; seed {seed}; {} worker threads",
        args.clients,
        args.docs,
        args.warmup_secs,
        args.duration_secs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let mut ok = true;
    let echo_report = if args.echo || args.compare_echo {
        let addr = start_echo_server(args.echo_cpu, args.read_buffer.max(64))?;
        println!("echo server on {addr}");
        let mut echo_args = args.clone();
        echo_args.rate = None;
        let summary = run_phase(&echo_args, Target::Echo(addr), seed).await?;
        summary.print("echo");
        ok &= summary.errors == 0;
        Some(summary)
    } else {
        None
    };
    if args.echo {
        return Ok(ok);
    }
    let summary = run_phase(&args, Target::Server(server), seed ^ 0x9e37_79b9).await?;
    summary.print("server");
    ok &= summary.errors == 0 && summary.converged;
    if let Some(echo) = echo_report {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        println!(
            "ack round trip vs echo: p50 {:.2}x ({:.1} µs vs {:.1} µs), mean {:.2}x ({:.1} µs vs {:.1} µs), p99 {:.2}x",
            ratio(summary.ack.p50, echo.ack.p50),
            summary.ack.p50,
            echo.ack.p50,
            ratio(summary.ack.mean, echo.ack.mean),
            summary.ack.mean,
            echo.ack.mean,
            ratio(summary.ack.p99, echo.ack.p99),
        );
        println!(
            "RESULT ratio p50={:.3} mean={:.3} p99={:.3}",
            ratio(summary.ack.p50, echo.ack.p50),
            ratio(summary.ack.mean, echo.ack.mean),
            ratio(summary.ack.p99, echo.ack.p99)
        );
    }
    Ok(ok)
}

/// `ws://host:port[/...]` → a loopback socket address (anything else is refused).
fn loopback_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("--server must be a ws:// URL, got {url}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .collect();
    let addr = addrs
        .iter()
        .copied()
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| {
            anyhow!("{authority} is not a loopback address: this tool only loads 127.0.0.1")
        })?;
    if addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("{authority} resolves to a non-loopback address: this tool only loads 127.0.0.1");
    }
    Ok(addr)
}

// ---------------------------------------------------------------- phase

/// Latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Copy)]
struct Percentiles {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<u32>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64) * q).ceil() as usize;
            f64::from(samples[i.clamp(1, samples.len()) - 1])
        };
        Percentiles {
            count: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: f64::from(samples[samples.len() - 1]),
            mean: samples.iter().map(|&s| f64::from(s)).sum::<f64>() / samples.len() as f64,
        }
    }

    fn ms(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, mean {:.3} ms ({} samples)",
            self.p50 / 1e3,
            self.p90 / 1e3,
            self.p99 / 1e3,
            self.p999 / 1e3,
            self.max / 1e3,
            self.mean / 1e3,
            self.count
        )
    }
}

/// What one phase measured.
struct Summary {
    clients: usize,
    docs: usize,
    rate: Option<f64>,
    seconds: f64,
    acked: u64,
    edits: u64,
    errors: u64,
    reconnects: u64,
    remote_ops: u64,
    ack: Percentiles,
    edit: Percentiles,
    /// `None` unless `--remote-latency`.
    remote: Option<Percentiles>,
    converged: bool,
    server_metrics: Option<String>,
    /// CPU used over the measured window (`None` where /proc cannot be read).
    cpu: cpu::WindowCpu,
}

impl Summary {
    fn print(&self, label: &str) {
        println!("--- {label}: {} clients, {} docs", self.clients, self.docs);
        println!(
            "acked ops: {} in {:.2} s = {:.0} ops/s",
            self.acked,
            self.seconds,
            self.acked as f64 / self.seconds
        );
        if let Some(rate) = self.rate {
            println!(
                "local edits: {:.1} edits/s per client (target {rate}), {:.0} in all",
                self.edits as f64 / self.seconds / self.clients as f64,
                self.edits as f64 / self.seconds
            );
        }
        println!("ack latency (send → ack): {}", self.ack.ms());
        if self.rate.is_some() {
            println!(
                "edit → ack latency (oldest edit in the op): {}",
                self.edit.ms()
            );
        }
        if let Some(remote) = &self.remote {
            println!(
                "remote op latency (first send → arrival at another client): {}",
                remote.ms()
            );
        }
        println!(
            "errors: {}; reconnects: {}; remote ops applied: {}",
            self.errors, self.reconnects, self.remote_ops
        );
        if let Some(m) = &self.server_metrics {
            println!("server metrics over the run: {m}");
        }
        self.cpu.print(label, self.acked, self.seconds);
        println!(
            "RESULT {label} clients={} docs={} rate={} ops_per_s={:.0} edits_per_s_per_client={:.2} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} edit_p50_ms={:.3} edit_p99_ms={:.3} edit_max_ms={:.3} errors={}",
            self.clients,
            self.docs,
            self.rate.map(|r| r.to_string()).unwrap_or_else(|| "closed".into()),
            self.acked as f64 / self.seconds,
            self.edits as f64 / self.seconds / self.clients as f64,
            self.ack.p50 / 1e3,
            self.ack.p99 / 1e3,
            self.ack.max / 1e3,
            self.edit.p50 / 1e3,
            self.edit.p99 / 1e3,
            self.edit.max / 1e3,
            self.errors
        );
        if let Some(remote) = &self.remote {
            println!(
                "RESULT {label} remote_p50_ms={:.3} remote_p99_ms={:.3} remote_max_ms={:.3}",
                remote.p50 / 1e3,
                remote.p99 / 1e3,
                remote.max / 1e3
            );
        }
    }
}

async fn run_phase(args: &Args, target: Target, seed: u64) -> Result<Summary> {
    let prefix = args.doc_prefix.clone().unwrap_or_else(|| {
        let mut rng = StdRng::seed_from_u64(seed);
        format!("load-{:08x}", rng.random::<u32>())
    });
    let doc_ids: Vec<String> = (0..args.docs).map(|d| format!("{prefix}-{d}")).collect();
    let config = Arc::new(PhaseConfig {
        target,
        protocol: args.protocol,
        doc_ids,
        rate: args.rate,
        workload: args.workload,
        batch: !args.no_batch,
        max_len: args
            .max_len
            .unwrap_or(args.workload.default_max_len())
            .max(16),
        warmup: Duration::from_secs_f64(args.warmup_secs.max(0.0)),
        duration: Duration::from_secs_f64(args.duration_secs.max(0.1)),
        settle: Duration::from_secs(args.settle_secs.max(1)),
        read_buffer: args.read_buffer.max(64),
        first_sent: args.remote_latency.then(Default::default),
        all_final: tokio::sync::Barrier::new(args.clients),
    });
    let metrics_before = match (target, args.protocol) {
        (Target::Server(addr), Protocol::Ours) => http_get(addr, "/metrics").await.ok(),
        (Target::Server(addr), Protocol::Sharedb) => http_get(addr, "/stats").await.ok(),
        _ => None,
    };
    if let (Target::Server(addr), Protocol::Sharedb) = (target, args.protocol) {
        sharedb::create_docs(addr, &config.doc_ids, config.read_buffer)
            .await
            .context("creating the ShareDB documents")?;
    }

    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(args.clients);
    // (document, own ops acknowledged over the whole run) once a client's ops are all acked.
    let (saved_tx, mut saved_rx) = mpsc::channel::<(usize, u64)>(args.clients);
    let (targets_tx, targets_rx) = watch::channel::<Option<Arc<Vec<u64>>>>(None);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let doc = i % args.docs;
        let config = config.clone();
        let start_rx = start_rx.clone();
        let ready_tx = ready_tx.clone();
        let saved_tx = saved_tx.clone();
        let targets_rx = targets_rx.clone();
        let rng = StdRng::seed_from_u64(
            seed.wrapping_add(i as u64)
                .wrapping_mul(0x2545_f491_4f6c_dd1d),
        );
        tasks.push(tokio::spawn(async move {
            match config.protocol {
                Protocol::Ours => {
                    client_task(config, doc, rng, start_rx, ready_tx, saved_tx, targets_rx).await
                }
                Protocol::Rustpad => {
                    peer::client_task::<rustpad::Session>(
                        config, doc, rng, start_rx, ready_tx, saved_tx, targets_rx,
                    )
                    .await
                }
                Protocol::Sharedb => {
                    peer::client_task::<sharedb::Session>(
                        config, doc, rng, start_rx, ready_tx, saved_tx, targets_rx,
                    )
                    .await
                }
            }
        }));
    }
    drop(ready_tx);
    drop(saved_tx);

    // Wait until every client is connected (bounded), then start everyone together.
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    let mut connected = 0;
    while connected < args.clients {
        let left = connect_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => bail!("a client could not connect: {e}"),
            Ok(None) => bail!("clients ended before connecting"),
            Err(_) => bail!(
                "only {connected} of {} clients connected within 60 s",
                args.clients
            ),
        }
    }
    let t0 = Instant::now();
    start_tx.send(Some(t0)).ok();
    let cpu_sampler = tokio::spawn(cpu::sample_window(
        t0 + config.warmup,
        t0 + config.warmup + config.duration,
        args.server_pid,
        args.pg_pid,
    ));

    let mut converged = true;
    if let Target::Server(addr) = target {
        // Every client stops editing at the end of the window and waits for its acks;
        // then the documents' final revisions are read and every client catches up to them.
        let end = t0 + config.warmup + config.duration + config.settle;
        let mut saved = 0;
        // Rustpad: a document's history holds exactly its clients' acked ops.
        let mut acked_per_doc = vec![0u64; args.docs];
        while saved < args.clients {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, saved_rx.recv()).await {
                Ok(Some((doc, acked))) => {
                    saved += 1;
                    acked_per_doc[doc] += acked;
                }
                Ok(None) => break, // some client failed: its task reports why
                Err(_) => break,
            }
        }
        if saved == args.clients {
            let revs = match config.protocol {
                Protocol::Ours => {
                    let mut revs = Vec::with_capacity(args.docs);
                    for doc in &config.doc_ids {
                        let (rev, _) = doc_state(addr, doc).await?;
                        revs.push(rev);
                    }
                    revs
                }
                Protocol::Rustpad => acked_per_doc,
                Protocol::Sharedb => {
                    let mut revs = Vec::with_capacity(args.docs);
                    for doc in &config.doc_ids {
                        let (v, _) = sharedb::final_state(addr, doc).await?;
                        revs.push(v);
                    }
                    revs
                }
            };
            targets_tx.send(Some(Arc::new(revs))).ok();
        } else {
            converged = false;
            eprintln!(
                "only {saved} of {} clients had all their ops acknowledged in time",
                args.clients
            );
            targets_tx.send(Some(Arc::new(Vec::new()))).ok();
        }
    }

    let mut reports = Vec::with_capacity(args.clients);
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(report)) => reports.push((i, report)),
            Ok(Err(e)) => {
                eprintln!("client {i}: {e:#}");
                converged = false;
                reports.push((
                    i,
                    ClientReport {
                        errors: 1,
                        ..ClientReport::default()
                    },
                ));
            }
            Err(e) => bail!("client {i} panicked: {e}"),
        }
    }

    if let Target::Server(addr) = target {
        let mut finals: HashMap<usize, (u64, String)> = HashMap::new();
        let mut rustpad_revs = targets_rx.borrow().clone().unwrap_or_default().to_vec();
        rustpad_revs.resize(args.docs, 0);
        for (d, doc) in config.doc_ids.iter().enumerate() {
            let state = match config.protocol {
                Protocol::Ours => doc_state(addr, doc).await?,
                // Rustpad's text endpoint has no revision: the count of acked ops stands for it.
                Protocol::Rustpad => (rustpad_revs[d], rustpad::final_text(addr, doc).await?),
                Protocol::Sharedb => sharedb::final_state(addr, doc).await?,
            };
            finals.insert(d, state);
        }
        for (i, report) in &reports {
            let d = i % args.docs;
            let (rev, text) = &finals[&d];
            match &report.final_state {
                Some((crev, ctext)) if crev == rev && ctext == text => {}
                Some((crev, ctext)) => {
                    converged = false;
                    eprintln!(
                        "DIVERGED: client {i} on {} is at rev {crev} with {} chars; the server has rev {rev} with {} chars",
                        config.doc_ids[d],
                        ctext.chars().count(),
                        text.chars().count()
                    );
                }
                None => converged = false,
            }
        }
        if converged {
            let total: u64 = finals.values().map(|(rev, _)| *rev).sum();
            let endpoint = match config.protocol {
                Protocol::Ours => "GET /api/docs/{doc}",
                Protocol::Rustpad => "GET /api/text/{doc}",
                Protocol::Sharedb => "GET /text/docs/{doc}",
            };
            println!(
                "CONVERGED: {} clients on {} docs equal {endpoint} ({total} revisions in all)",
                args.clients, args.docs
            );
        } else {
            println!("NOT CONVERGED");
        }
    }

    let server_metrics = match (target, metrics_before, config.protocol) {
        (Target::Server(addr), Some(before), Protocol::Sharedb) => {
            match http_get(addr, "/stats").await {
                Ok(after) => sharedb::stats_deltas(&before, &after),
                Err(_) => None,
            }
        }
        (Target::Server(addr), Some(before), _) => match http_get(addr, "/metrics").await {
            Ok(after) => Some(metric_deltas(&before, &after)),
            Err(_) => None,
        },
        _ => None,
    };

    let mut ack = Vec::new();
    let mut edit = Vec::new();
    let mut remote = Vec::new();
    let mut summary = Summary {
        clients: args.clients,
        docs: args.docs,
        rate: args.rate,
        seconds: config.duration.as_secs_f64(),
        acked: 0,
        edits: 0,
        errors: 0,
        reconnects: 0,
        remote_ops: 0,
        ack: Percentiles::default(),
        edit: Percentiles::default(),
        remote: None,
        converged,
        server_metrics,
        cpu: cpu_sampler.await.unwrap_or_default(),
    };
    for (_, r) in reports {
        summary.acked += r.acked;
        summary.edits += r.edits;
        summary.errors += r.errors;
        summary.reconnects += r.reconnects;
        summary.remote_ops += r.remote_ops;
        ack.extend(r.ack_us);
        edit.extend(r.edit_us);
        remote.extend(r.remote_us);
    }
    summary.ack = Percentiles::of(ack);
    summary.edit = Percentiles::of(edit);
    if config.first_sent.is_some() {
        summary.remote = Some(Percentiles::of(remote));
    }
    Ok(summary)
}

/// Means of the server's histograms between two `/metrics` pages.
fn metric_deltas(before: &str, after: &str) -> String {
    let delta =
        |name: &str| metric(after, name).unwrap_or(0.0) - metric(before, name).unwrap_or(0.0);
    let mean = |name: &str| {
        let count = delta(&format!("{name}_count"));
        if count > 0.0 {
            (delta(&format!("{name}_sum")) / count, count)
        } else {
            (0.0, 0.0)
        }
    };
    let (batch, commits) = mean("ot_commit_batch_items");
    let (commit_s, _) = mean("ot_commit_latency_seconds");
    let (ack_s, acks) = mean("ot_ack_latency_seconds");
    format!(
        "{commits:.0} commits, {batch:.1} items per commit, commit mean {:.3} ms; {acks:.0} acks, server-side ack latency mean {:.3} ms; ops applied {:.0}, conflicts {:.0}",
        commit_s * 1e3,
        ack_s * 1e3,
        delta("ot_ops_applied_total"),
        delta("ot_conflicts_total"),
    )
}

/// The value of sample `name` (no labels) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------- one client

/// One client's connection and state.
struct LoadClient {
    doc: usize,
    client: Client,
    socket: Option<Socket>,
    /// Connections opened so far (a batch's rest is dropped when one of
    /// its messages opens another).
    connections: u64,
    epoch: Option<u64>,
    /// Whether a first snapshot was received.
    synced: bool,
    /// The user: typing, and what it measured.
    typist: Typist,
}

async fn client_task(
    config: Arc<PhaseConfig>,
    doc: usize,
    mut rng: StdRng,
    mut start_rx: StartSignal,
    ready_tx: mpsc::Sender<Result<(), String>>,
    saved_tx: mpsc::Sender<(usize, u64)>,
    mut targets_rx: watch::Receiver<Option<Arc<Vec<u64>>>>,
) -> Result<ClientReport> {
    let client_id = format!("{:032x}", rng.random::<u128>());
    let mut c = LoadClient {
        doc,
        client: Client::new(client_id, 0, "", 0),
        socket: None,
        connections: 0,
        epoch: None,
        synced: false,
        typist: Typist::new(config.clone(), rng),
    };
    let connected = c.connect(false).await;
    editing::ready(ready_tx, connected).await?;
    let (stop_editing, hard_deadline) = editing::start(&mut c.typist, &mut start_rx).await?;
    editing::load(&mut c, stop_editing, hard_deadline).await?;

    if let Target::Server(_) = config.target {
        let _ = saved_tx.send((doc, 0)).await;
        drop(saved_tx);
        editing::catch_up(&mut c, &mut targets_rx, doc, hard_deadline).await?;
        if let Some(socket) = c.socket.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
        }
    } else if let Some(socket) = c.socket.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    }
    Ok(c.typist.report)
}

/// A frame from the socket, or the end of it.
enum Frame {
    Text(String),
    Lost(String),
}

impl Frame {
    /// What one read from the socket means; `None` for frames to skip (pings, pongs).
    fn from_read(
        read: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Frame> {
        Some(match read {
            Some(Ok(Message::Text(t))) => Frame::Text(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => Frame::Lost(format!("closed: {frame:?}")),
            Some(Ok(Message::Binary(_))) => Frame::Lost("binary frame".into()),
            Some(Ok(_)) => return None,
            Some(Err(e)) => Frame::Lost(e.to_string()),
            None => Frame::Lost("end of stream".into()),
        })
    }
}

impl LoadClient {
    fn url(&self, resume: bool) -> String {
        let addr = self.typist.config.target.addr();
        match self.typist.config.target {
            Target::Echo(_) => format!("ws://{addr}/echo"),
            Target::Server(_) => {
                let mut url = format!(
                    "ws://{addr}/ws/{}?client={}",
                    self.typist.config.doc_ids[self.doc],
                    self.client.client_id()
                );
                if self.typist.config.batch {
                    url.push_str("&batch=1");
                }
                if resume {
                    url.push_str(&format!("&rev={}", self.client.revision()));
                    if let Some(epoch) = self.epoch {
                        url.push_str(&format!("&epoch={epoch}"));
                    }
                }
                url
            }
        }
    }

    /// Connect (resuming from the client's revision if `resume`) and handle the first message.
    async fn connect(&mut self, resume: bool) -> Result<()> {
        self.socket = None;
        self.connections += 1;
        let url = self.url(resume);
        self.socket = Some(editing::open(&url, self.typist.config.read_buffer).await?);
        if let Target::Server(_) = self.typist.config.target {
            match self.next_frame(Duration::from_secs(10)).await? {
                Frame::Text(text) => self.handle_frame(Frame::Text(text)).await?,
                Frame::Lost(why) => bail!("connection lost before the first message: {why}"),
            }
        }
        Ok(())
    }

    /// The next text frame (pings skipped), or why the connection ended; an error on timeout.
    async fn next_frame(&mut self, within: Duration) -> Result<Frame> {
        let socket = self
            .socket
            .as_mut()
            .ok_or_else(|| anyhow!("not connected"))?;
        editing::next_frame(socket, within).await
    }
}

impl Editor for LoadClient {
    const REVISION: &'static str = "revision";
    const ACKED: &'static str = "acknowledged";

    fn parts(&mut self) -> (&mut Typist, &mut Client) {
        (&mut self.typist, &mut self.client)
    }

    fn socket(&mut self) -> Result<&mut Socket> {
        self.socket.as_mut().ok_or_else(|| anyhow!("not connected"))
    }

    async fn send_op(&mut self, out: &OutgoingOp, oldest_edit: Instant) -> Result<()> {
        let text = op_message_text(out.base_rev, out.seq, &out.op, None, None);
        let sent = self.typist.sending(oldest_edit);
        if let Some(first_sent) = &self.typist.config.first_sent {
            // A resend keeps the first send's time.
            lock(first_sent)
                .entry((self.client.client_id().to_owned(), out.seq))
                .or_insert(sent);
        }
        let socket = self
            .socket
            .as_mut()
            .ok_or_else(|| anyhow!("not connected"))?;
        if let Err(e) = socket.send(Message::text(text)).await {
            // The read side notices the loss and reconnects; the op is resent then.
            eprintln!("client {}: send failed: {e}", self.client.client_id());
        }
        Ok(())
    }

    async fn handle_frame(&mut self, frame: Frame) -> Result<()> {
        let now = Instant::now();
        let text = match frame {
            Frame::Text(text) => text,
            Frame::Lost(why) => {
                self.typist.report.errors += 1;
                if let Target::Echo(_) = self.typist.config.target {
                    bail!("echo connection lost: {why}");
                }
                self.typist.report.reconnects += 1;
                if self.typist.report.reconnects > 5 {
                    bail!("connection lost too often (last: {why})");
                }
                eprintln!(
                    "client {}: connection lost ({why}); reconnecting",
                    self.client.client_id()
                );
                return self.reconnect().await;
            }
        };
        if let Target::Echo(_) = self.typist.config.target {
            // The echo server sends the op message back: its seq is the ack.
            let ClientMessage::Op { seq, .. } = ClientMessage::parse(&text)
                .map_err(|e| anyhow!("not an echoed op ({}): {text}", e.message))?
            else {
                bail!("not an echoed op: {text}");
            };
            let rev = self.client.revision() + 1;
            if let AckOutcome::Acknowledged { next } = self.client.ack(rev, seq)? {
                self.acknowledged(next, now).await?;
            }
            return Ok(());
        }
        let frame =
            ServerMessage::parse(&text).with_context(|| format!("not a server message: {text}"))?;
        // A batch's messages in order; a message that reconnects returns, and
        // the rest belonged to the connection it dropped.
        let connection = self.connections;
        for message in frame.into_messages() {
            self.handle_message(message, now).await?;
            if self.connections != connection || self.socket.is_none() {
                break;
            }
        }
        Ok(())
    }
}

impl LoadClient {
    /// The outstanding op was acknowledged at `now`; send the buffer if it had edits.
    async fn acknowledged(&mut self, next: Option<OutgoingOp>, now: Instant) -> Result<()> {
        if let Some((out, oldest)) = self.typist.acknowledged(next, now) {
            self.send_op(&out, oldest).await?;
        }
        Ok(())
    }

    /// Act on one server message (not a batch) that arrived at `now`.
    async fn handle_message(&mut self, message: ServerMessage<'_>, now: Instant) -> Result<()> {
        match message {
            ServerMessage::Snapshot {
                rev,
                text: snapshot_text,
                seq,
                epoch,
                ..
            } => {
                self.epoch = Some(epoch);
                if !self.synced {
                    self.synced = true;
                    let id = self.client.client_id().to_owned();
                    self.client = Client::new(id, rev, &snapshot_text, seq);
                    self.typist.cursor = self.typist.rng.random_range(0..=self.client.text().len_chars());
                } else {
                    // A resync: pending edits that cannot be rebased become a conflict copy.
                    let outcome = self.client.snapshot(rev, &snapshot_text, seq);
                    if outcome.conflict_copy.is_some() {
                        self.typist.report.errors += 1;
                        eprintln!(
                            "client {}: resynced with a conflict copy",
                            self.client.client_id()
                        );
                        self.typist.inflight = None;
                        self.typist.buffer_since = None;
                    }
                    if let Some(out) = outcome.send {
                        self.send_op(&out, now).await?;
                    }
                }
            }
            ServerMessage::Resume {
                rev, seq, epoch, ..
            } => {
                self.epoch = Some(epoch);
                if let Some(out) = self.client.resumed(rev, seq)? {
                    let (sent, oldest) = self.typist.inflight.unwrap_or((now, now));
                    self.send_op(&out, oldest).await?;
                    // Keep measuring from the first send.
                    self.typist.inflight = Some((sent, oldest));
                }
            }
            ServerMessage::Op {
                rev,
                op,
                client,
                seq,
            } => match self.client.remote_op(rev, &op, &client, seq)? {
                RemoteOutcome::Applied(applied) => {
                    self.typist.remote_applied(&applied);
                    if let Some(first_sent) = &self.typist.config.first_sent {
                        let sent = lock(first_sent).get(&(client.into_owned(), seq)).copied();
                        if let Some(sent) = sent.filter(|_| self.typist.in_window(now)) {
                            self.typist.report.remote_us.push(micros(now - sent));
                        }
                    }
                }
                RemoteOutcome::Acknowledged { next } => self.acknowledged(next, now).await?,
                RemoteOutcome::Ignored => {}
            },
            ServerMessage::Ack { rev, seq } => {
                if let AckOutcome::Acknowledged { next } = self.client.ack(rev, seq)? {
                    self.acknowledged(next, now).await?;
                }
            }
            ServerMessage::Error { code, message, seq } => {
                self.typist.report.errors += 1;
                if self.typist.report.errors <= 3 {
                    eprintln!(
                        "client {}: error {code}: {message}",
                        self.client.client_id()
                    );
                }
                let ours = seq.is_some() && seq == self.client.outstanding().map(|o| o.seq);
                // PROTOCOL.md's error rule.
                match ErrorAction::for_error(&code, ours) {
                    ErrorAction::Resend => return self.reconnect().await,
                    ErrorAction::ConflictCopy => return self.reconnect_fresh().await,
                    ErrorAction::Ignore => {}
                }
            }
            ServerMessage::Cursor { .. }
            | ServerMessage::Leave { .. }
            | ServerMessage::Pong
            // From a regional server: nothing to measure.
            | ServerMessage::Replicated { .. }
            // `handle_frame` opens batches.
            | ServerMessage::Batch { .. }
            | ServerMessage::Unknown => {}
        }
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.socket = None;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Box::pin(self.connect(true)).await
    }

    async fn reconnect_fresh(&mut self) -> Result<()> {
        self.socket = None;
        Box::pin(self.connect(false)).await
    }
}

/// The WebSocket configuration of the tool's clients and of the echo server.
fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(read_buffer)
}

/// Lock a mutex, also if a panicking client poisoned it (the map stays usable).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------- echo server

/// Start a bare WebSocket echo server on a loopback port, on its own thread
/// (pinned to `cpu` if given); returns its address. It lives until the process exits.
fn start_echo_server(cpu: Option<usize>, read_buffer: usize) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            if let Some(id) = cpu {
                if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                    eprintln!("echo: could not pin to CPU {id}");
                }
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("echo runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("echo listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let config = ws_config(read_buffer);
                        let Ok(ws) =
                            tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                        else {
                            return;
                        };
                        let (mut sink, mut stream) = ws.split();
                        while let Some(Ok(message)) = stream.next().await {
                            let sent = match message {
                                Message::Text(text) => sink.send(Message::Text(text)).await,
                                Message::Close(_) => return,
                                _ => Ok(()),
                            };
                            if sent.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        })?;
    Ok(addr)
}

// ---------------------------------------------------------------- HTTP

/// A GET on loopback; returns the body of a 200 answer.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let (status, body) = ot_driver::http::get(&addr.into(), path)
        .await
        .with_context(|| format!("GET {path}"))?;
    if status != 200 {
        bail!("GET {path}: status {status}: {body}");
    }
    Ok(body)
}

/// `GET /api/docs/{doc}` → (rev, text).
async fn doc_state(addr: SocketAddr, doc: &str) -> Result<(u64, String)> {
    #[derive(Deserialize)]
    struct Doc {
        rev: u64,
        text: String,
    }
    let body = http_get(addr, &format!("/api/docs/{doc}")).await?;
    let d: Doc = serde_json::from_str(&body).with_context(|| format!("GET /api/docs/{doc}"))?;
    Ok((d.rev, d.text))
}
