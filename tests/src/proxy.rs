//! A TCP proxy for tests of bad networks: it listens on a free loopback port
//! and forwards every connection to a target. Per direction it can add
//! latency, stall (stop forwarding but keep the sockets open, as a network
//! that silently drops everything does) and resume; [`Proxy::cut`] closes
//! every open connection at once (as a crashed middlebox does), while new
//! connections are still accepted. [`Proxy::start_spread`] forwards to
//! several targets in turn, as a load balancer without stickiness does,
//! skipping a target that refuses (a reconnect reaches a live one).
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> anyhow::Result<()> {
//! use e2e_tests::proxy::{Direction, Proxy};
//! let proxy = Proxy::start(server).await?;
//! // Clients connect to `proxy.addr()` instead of `server`.
//! proxy.stall(Direction::Both);
//! proxy.resume(Direction::Both);
//! proxy.set_latency(Direction::ToServer, std::time::Duration::from_millis(50));
//! proxy.cut();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting client to the target.
    ToServer,
    /// From the target back to the client.
    ToClient,
    /// Both ways.
    Both,
}

impl Direction {
    fn includes(self, one: Direction) -> bool {
        self == Direction::Both || self == one
    }
}

/// How one direction forwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flow {
    /// Each chunk is delivered this long after it was read.
    latency: Duration,
    /// Nothing is delivered while set; what was read waits (a little), then
    /// reading stops too, so the sender's socket buffers fill as on a dead link.
    stalled: bool,
}

/// Chunks read ahead of delivery per direction (backpressure beyond it).
const IN_FLIGHT: usize = 64;

/// A running proxy; stops accepting and closes every connection when dropped.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    to_server: watch::Sender<Flow>,
    to_client: watch::Sender<Flow>,
    /// Bumped by [`Proxy::cut`]: every connection of an older generation closes.
    cuts: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        Proxy::start_spread(&[target]).await
    }

    /// Listen on a free loopback port and forward each new connection to
    /// the next of `targets` in turn, skipping those that refuse it.
    pub async fn start_spread(targets: &[SocketAddr]) -> Result<Proxy> {
        Proxy::start_routed(targets, Route::InTurn).await
    }

    /// Like [`start_spread`](Self::start_spread), but every connection of
    /// one document goes to the same target (sticky by document, as a
    /// reverse proxy hashing the request path would route): the document
    /// is read from the request line (`/ws/DOC…`, `/api/docs/DOC…`).
    pub async fn start_by_document(targets: &[SocketAddr]) -> Result<Proxy> {
        Proxy::start_routed(targets, Route::ByDocument).await
    }

    async fn start_routed(targets: &[SocketAddr], route: Route) -> Result<Proxy> {
        let target = *targets.first().context("no target to forward to")?;
        let listener = TcpListener::bind((target.ip(), 0))
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let (to_server, _) = watch::channel(Flow::default());
        let (to_client, _) = watch::channel(Flow::default());
        let (cuts, _) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            route,
            Arc::new(targets.to_vec()),
            Channels {
                to_server: to_server.subscribe(),
                to_client: to_client.subscribe(),
                cuts: cuts.subscribe(),
            },
            open.clone(),
            accepted.clone(),
        ));
        Ok(Proxy {
            addr,
            target,
            to_server,
            to_client,
            cuts,
            open,
            accepted,
            acceptor,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to (the first, when it spreads).
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Deliver every chunk `latency` after it was read (order is kept).
    pub fn set_latency(&self, direction: Direction, latency: Duration) {
        self.update(direction, |flow| flow.latency = latency);
    }

    /// Stop forwarding in `direction`; sockets stay open and nothing is
    /// closed or reset, so neither end notices except by silence.
    pub fn stall(&self, direction: Direction) {
        self.update(direction, |flow| flow.stalled = true);
    }

    /// Forward again what a stall held back, and what follows.
    pub fn resume(&self, direction: Direction) {
        self.update(direction, |flow| flow.stalled = false);
    }

    /// Close every open connection now (both sockets of each); connections
    /// made afterwards are forwarded as usual.
    pub fn cut(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn update(&self, direction: Direction, change: impl Fn(&mut Flow)) {
        if direction.includes(Direction::ToServer) {
            self.to_server.send_modify(&change);
        }
        if direction.includes(Direction::ToClient) {
            self.to_client.send_modify(&change);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// What every connection watches.
#[derive(Clone)]
struct Channels {
    to_server: watch::Receiver<Flow>,
    to_client: watch::Receiver<Flow>,
    cuts: watch::Receiver<u64>,
}

/// How a proxy with several targets picks one for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Each in turn.
    InTurn,
    /// By the document the request line names (see [`document_slot`]).
    ByDocument,
}

/// The target slot of the document named by the request line `client`
/// sends first (peeked, not consumed; at most 4 KiB and 2 s), hashed with
/// FNV-1a; `None` if no document is named.
async fn document_slot(client: &TcpStream) -> Option<usize> {
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    let line = loop {
        let n = tokio::time::timeout_at(deadline, client.peek(&mut buffer))
            .await
            .ok()?
            .ok()?;
        if let Some(end) = buffer[..n].windows(2).position(|w| w == b"\r\n") {
            break String::from_utf8_lossy(&buffer[..end]).into_owned();
        }
        if n == buffer.len() || n == 0 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let path = line.split(' ').nth(1)?.split('?').next()?;
    let doc = path
        .strip_prefix("/ws/")
        .or_else(|| path.strip_prefix("/api/docs/"))?
        .split('/')
        .next()?;
    let hash = doc.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % 1_000_003).ok()
}

async fn accept_loop(
    listener: TcpListener,
    route: Route,
    targets: Arc<Vec<SocketAddr>>,
    channels: Channels,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors and the like: a test will notice; do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let channels = channels.clone();
        let open = open.clone();
        let in_turn = accepted.load(Ordering::Relaxed);
        let targets = targets.clone();
        tokio::spawn(async move {
            let first = match route {
                Route::InTurn => in_turn,
                Route::ByDocument => document_slot(&client).await.unwrap_or(in_turn),
            };
            let mut server = None;
            for i in 0..targets.len() {
                if let Ok(stream) = TcpStream::connect(targets[(first + i) % targets.len()]).await {
                    server = Some(stream);
                    break;
                }
            }
            let Some(server) = server else {
                return; // dropping `client` closes it, as a refused connection would
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            open.fetch_add(1, Ordering::Relaxed);
            forward(client, server, channels).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Forward both ways until both ends are done or the connection is cut.
async fn forward(client: TcpStream, server: TcpStream, channels: Channels) {
    let mut cuts = channels.cuts.clone();
    let generation = *cuts.borrow_and_update();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let both = async {
        tokio::join!(
            pump(client_read, server_write, channels.to_server.clone()),
            pump(server_read, client_write, channels.to_client.clone()),
        )
    };
    tokio::select! {
        _ = both => {}
        _ = cuts.wait_for(|now| *now != generation) => {}
    }
    // Dropping the halves closes both sockets.
}

/// One direction: read chunks, deliver each when its latency has passed and
/// the direction is not stalled; at the end, half-close the destination.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, flow: watch::Receiver<Flow>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let mut read_flow = flow.clone();
    let read = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            // While stalled, stop reading once the chunks in flight are full.
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = Instant::now() + read_flow.borrow_and_update().latency;
            if tx.send((due, buffer[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let mut write_flow = flow;
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if write_flow.wait_for(|flow| !flow.stalled).await.is_err() {
                break;
            }
            tokio::time::sleep_until(due).await;
            // A stall that began during the latency still holds this chunk.
            if write_flow.wait_for(|flow| !flow.stalled).await.is_err() {
                break;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(socket: &mut TcpStream, byte: u8, within: Duration) -> Option<u8> {
        socket.write_all(&[byte]).await.ok()?;
        let mut answer = [0u8; 1];
        match tokio::time::timeout(within, socket.read_exact(&mut answer)).await {
            Ok(Ok(_)) => Some(answer[0]),
            _ => None,
        }
    }

    /// A server on loopback that answers every connection with `id`.
    async fn named(id: u8) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = socket.write_all(&[id]).await;
            }
        });
        addr
    }

    /// Which target answers a request line for `path` through `proxy`.
    async fn target_of(proxy: &Proxy, path: &str) -> u8 {
        let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut id = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut id))
            .await
            .unwrap()
            .unwrap();
        id[0]
    }

    #[tokio::test]
    async fn by_document_sends_every_connection_of_a_document_to_one_target() {
        let targets = [named(0).await, named(1).await, named(2).await];
        let proxy = Proxy::start_by_document(&targets).await.unwrap();
        let mut used = std::collections::HashSet::new();
        for doc in [
            "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
        ] {
            let first = target_of(&proxy, &format!("/ws/{doc}?client=a")).await;
            for path in [
                format!("/ws/{doc}?client=b&rev=3"),
                format!("/api/docs/{doc}/ops"),
            ] {
                assert_eq!(target_of(&proxy, &path).await, first, "{path}");
            }
            used.insert(first);
        }
        assert!(
            used.len() > 1,
            "eight documents all on one target: {used:?}"
        );
    }

    #[tokio::test]
    async fn forwards_stalls_resumes_delays_and_cuts() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
        let long = Duration::from_secs(10);
        assert_eq!(round_trip(&mut socket, 1, long).await, Some(1));
        assert_eq!(proxy.open_connections(), 1);

        proxy.stall(Direction::ToClient);
        assert_eq!(
            round_trip(&mut socket, 2, Duration::from_millis(300)).await,
            None,
            "nothing comes back while stalled"
        );
        proxy.resume(Direction::ToClient);
        let mut held = [0u8; 1];
        tokio::time::timeout(long, socket.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held[0], 2, "what the stall held back arrives on resume");

        proxy.set_latency(Direction::ToServer, Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(round_trip(&mut socket, 3, long).await, Some(3));
        assert!(started.elapsed() >= Duration::from_millis(200));
        proxy.set_latency(Direction::Both, Duration::ZERO);

        proxy.cut();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(long, socket.read_to_end(&mut rest)).await;
        assert!(
            matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
            "the cut closes the socket"
        );
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut again, 4, long).await,
            Some(4),
            "new connections work"
        );
        assert_eq!(proxy.accepted_connections(), 2);
    }
}
