//! Offline work, crashes and stale locks, end to end: the real `ot-client`
//! binary (and the library's [`Session`]) against a real server running in
//! this process on a loopback port, each client run with its own
//! `OT_CLIENT_DATA_DIR` (a temporary folder).
//!
//! - Edits made through a session while the server is down, then the session
//!   dropped (a quit), arrive exactly once with `ot-client sync` after the
//!   server restarts (on the same address: saved states are keyed by server
//!   URL), rebased past an edit someone made meanwhile; a second `sync` sends
//!   nothing.
//! - `ot-client insert` SIGKILLed after sending its op and before the ack,
//!   through a TCP proxy that swallows the server's frames after the greeting
//!   (the op was applied, the ack lost) or the client's frames (the op never
//!   arrived): `sync` through the same proxy, forwarding again, gets the edit
//!   applied exactly once in both cases.
//! - A killed client's slot (its lock file left behind) is reused by the next
//!   run, under the same client id; a run next to a running client gets
//!   another id.
//! - An op the server refuses is kept as a conflict copy and never resent by
//!   later runs; an edit made after it (before the resync) is not dropped
//!   silently but kept as a second copy.
//! - An offline session that changes far more than the server's `max_op_len`
//!   (and makes more edits than `max_op_components` allows in one op) is
//!   sent as a queue of ops within the limits: all merged, no conflict copy.
//!
//! Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client_cli::session::{ServerUrl, Session};
use client_cli::store::Store;
use common::{cli, exactly_once, ok, ops_log, run, start, state_files, FORK, LIMIT};
use e2e_tests::{doc_state, replay_ops, start_server, start_server_with, WsClient};
use ot_core::Operation;
use ot_protocol::{ClientMessage, ServerMessage};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};

/// Every file below `dir` (relative paths), for failure messages.
fn files_below(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                files.push(rel.display().to_string());
            }
        }
    }
    files.sort();
    files
}

/// Drop a session (a quit): its slot is free when this returns.
fn quit(session: Session) {
    let _guard = FORK.lock().unwrap_or_else(|e| e.into_inner());
    drop(session);
}

/// Every (client, seq) of the ops log appears once, the revisions are 1..=N,
/// and the log replays to the server's text. Returns the seqs per client.
async fn assert_exactly_once(addr: SocketAddr, doc: &str) -> BTreeMap<String, Vec<u64>> {
    let ops = ops_log(addr, doc).await;
    let seqs = exactly_once(&ops);
    let (rev, text) = doc_state(addr, doc).await.unwrap();
    assert_eq!(rev, ops.len() as u64);
    assert_eq!(replay_ops(addr, doc).await.unwrap(), (rev, text));
    seqs
}

/// The only saved writer in a data directory: its client id and saved state.
fn only_state(data: &Path) -> (String, Value) {
    let files = state_files(data);
    assert_eq!(files.len(), 1, "{files:?}");
    let (id, path) = files.into_iter().next().unwrap();
    let state = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    (id, state)
}

/// Start a server with `dir` on exactly `addr` (the address an earlier one
/// had), retrying briefly while the port is not free yet.
async fn restart_on(dir: &Path, addr: SocketAddr) -> server::RunningServer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match start_server_with(dir, |config| config.addr = addr).await {
            Ok(server) => return server,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot restart the server on {addr}: {e:#}"),
        }
    }
}

/// Wait (bounded) until `check` holds, polling.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + LIMIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new session on `doc` that connects, types "hello world" and waits
/// until the server has it.
async fn synced_hello_world(store: &Store, url: &ServerUrl, doc: &str) -> Session {
    let mut session = Session::open(store.clone(), url.clone(), doc, None, None).unwrap();
    session.connect().await.unwrap();
    session
        .local_edit(&Operation::insert_at(0, 0, "hello world").unwrap())
        .await
        .unwrap();
    session.wait_saved(LIMIT).await.unwrap();
    session
}

/// Stop `server` while `session` is connected to it; returns once the
/// session has seen it go (bounded).
async fn stop_while_connected(server: server::RunningServer, session: &mut Session) {
    let (stopped, ()) = tokio::join!(server.stop(), async {
        let deadline = Instant::now() + LIMIT;
        while session.is_connected() {
            let left = deadline.saturating_duration_since(Instant::now());
            timeout(left, session.next_events())
                .await
                .expect("the session sees the server go")
                .unwrap();
        }
    });
    stopped.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_of_a_quit_session_arrive_once_with_sync() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let data = tempfile::tempdir().unwrap();
    let store = Store::new(data.path());
    let url = ServerUrl::parse(&format!("ws://{addr}")).unwrap();
    let doc = "notes";
    let within = Duration::from_secs(20);

    // Synced once: "hello world" at revision 1.
    let mut session = synced_hello_world(&store, &url, doc).await;
    let id = session.client_id().to_owned();

    // The server goes away: the session notices, and cannot reconnect.
    stop_while_connected(server, &mut session).await;
    let refused = timeout(within, session.connect())
        .await
        .expect("a connection attempt fails fast");
    assert!(refused.is_err(), "connected to a stopped server?");

    // Edits offline: the first becomes the outstanding op (saved before it
    // would be sent), the others are composed into the buffer.
    for op in [
        Operation::insert_at(11, 0, "«").unwrap(),
        Operation::insert_at(12, 12, "»").unwrap(),
        Operation::delete_range(13, 7, 5).unwrap(),
    ] {
        session.local_edit(&op).await.unwrap();
    }
    assert_eq!(session.client().text().to_string(), "«hello »");
    assert_eq!(session.client().unacknowledged(), 2);
    quit(session);

    // Saved: a new session (offline) sees the edits, and could go on editing.
    let session = Session::open(store.clone(), url.clone(), doc, None, None).unwrap();
    assert_eq!(
        session.client_id(),
        id,
        "the slot is reused; the store holds {:?}",
        files_below(data.path())
    );
    assert_eq!(session.client().text().to_string(), "«hello »");
    assert_eq!(session.client().revision(), 1);
    assert_eq!(session.client().outstanding().map(|o| o.seq), Some(2));
    assert_eq!(session.client().unacknowledged(), 2);
    quit(session);

    // The server comes back (same address, same storage); someone edits first.
    let server = restart_on(server_dir.path(), addr).await;
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (1, "hello world".to_owned())
    );
    let mut other = WsClient::join(addr, doc, "other-writer").await.unwrap();
    other
        .edit(&Operation::insert_at(11, 5, ",").unwrap())
        .await
        .unwrap();
    other.settle_to(2, within).await.unwrap();
    drop(other);

    // sync resumes from revision 1 and sends the two pending ops, once.
    let out = ok(data.path(), addr, &["sync", doc]).await;
    assert_eq!(out, "sent 2 pending edit(s) of notes\n");
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (4, "«hello, »".to_owned())
    );
    let seqs = assert_exactly_once(addr, doc).await;
    assert_eq!(seqs[&id], [1, 2, 3]);
    assert_eq!(seqs["other-writer"], [1]);

    // Again: nothing left to send, nothing changes.
    let out = ok(data.path(), addr, &["sync", doc]).await;
    assert_eq!(out, "sent 0 pending edit(s) of notes\n");
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (4, "«hello, »".to_owned())
    );
    assert_eq!(ok(data.path(), addr, &["cat", doc]).await, "«hello, »");
    let session = Session::open(store, url, doc, None, None).unwrap();
    assert!(session.client().all_saved());
    assert_eq!(session.client().revision(), 4);
    quit(session);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_edits_are_not_resent_and_later_ones_not_dropped() {
    let server_dir = tempfile::tempdir().unwrap();
    // A document limit: a client splits ops by the op limits, but an edit
    // that makes the text too long is refused whatever its size.
    let server = start_server_with(server_dir.path(), |config| config.max_doc_len = 10)
        .await
        .unwrap();
    let addr = server.addr;
    let data = tempfile::tempdir().unwrap();
    let store = Store::new(data.path());
    let url = ServerUrl::parse(&format!("ws://{addr}")).unwrap();
    let doc = "refused";
    let within = Duration::from_secs(20);

    let mut session = Session::open(store.clone(), url.clone(), doc, None, None).unwrap();
    let id = session.client_id().to_owned();
    session.connect().await.unwrap();
    session
        .local_edit(&Operation::insert_at(0, 0, "hello").unwrap())
        .await
        .unwrap();
    session.wait_saved(within).await.unwrap();

    // An op the server refuses (the text would be too long): kept as a conflict copy, given up.
    session
        .local_edit(&Operation::insert_at(5, 5, " far too long").unwrap())
        .await
        .unwrap();
    let mut copies = Vec::new();
    let deadline = Instant::now() + within;
    while session.is_connected() {
        let left = deadline.saturating_duration_since(Instant::now());
        for event in timeout(left, session.next_events())
            .await
            .expect("the server refuses the op")
            .unwrap()
        {
            if let client_cli::session::SessionEvent::ConflictCopy(path) = event {
                copies.push(path);
            }
        }
    }
    assert!(session.resyncing());
    assert_eq!(copies.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&copies[0]).unwrap(),
        "hello far too long"
    );
    // One more edit before the resync, then quit.
    session
        .local_edit(&Operation::insert_at(18, 18, "!").unwrap())
        .await
        .unwrap();
    quit(session);

    // The next run starts from a snapshot: the refused op is not resent, and
    // the later edit is not dropped silently (a second copy holds it).
    let mut cmd = cli(data.path(), &format!("ws://{addr}"));
    cmd.args(["sync", doc]);
    let out = run(cmd).await;
    let stderr = out.stderr;
    assert_eq!(out.code, Some(0), "{stderr}");
    assert_eq!(out.stdout, format!("sent 0 pending edit(s) of {doc}\n"));
    let second = stderr
        .trim_end()
        .strip_prefix("ot-client: edits that could not be merged were saved to ")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(
        std::fs::read_to_string(second).unwrap(),
        "hello far too long!"
    );
    assert_eq!(
        std::fs::read_dir(data.path().join("conflicts"))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(doc_state(addr, doc).await.unwrap(), (1, "hello".to_owned()));

    // Clean from now on: nothing to send, and the writer goes on (seq 2 again).
    assert_eq!(
        ok(data.path(), addr, &["sync", doc]).await,
        format!("sent 0 pending edit(s) of {doc}\n")
    );
    ok(data.path(), addr, &["append", doc, "!"]).await;
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (2, "hello!".to_owned())
    );
    let seqs = assert_exactly_once(addr, doc).await;
    assert_eq!(seqs[&id], [1, 2]);
    assert_eq!(
        std::fs::read_dir(data.path().join("conflicts"))
            .unwrap()
            .count(),
        2
    );

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_offline_session_is_sent_within_the_limits_without_a_conflict_copy() {
    let server_dir = tempfile::tempdir().unwrap();
    let small = |config: &mut server::Config| {
        config.max_op_len = 8;
        config.max_op_components = 4;
    };
    let server = start_server_with(server_dir.path(), small).await.unwrap();
    let addr = server.addr;
    let data = tempfile::tempdir().unwrap();
    let store = Store::new(data.path());
    let url = ServerUrl::parse(&format!("ws://{addr}")).unwrap();
    let doc = "long-offline";
    let within = Duration::from_secs(20);

    // Synced once, learning the limits: "hello world" (11 characters) is
    // already more than one op may insert: it leaves as two ops.
    let mut session = synced_hello_world(&store, &url, doc).await;
    let id = session.client_id().to_owned();
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (2, "hello world".to_owned())
    );

    // The server goes away.
    stop_while_connected(server, &mut session).await;
    quit(session);

    // A long offline session after a restart (from the saved state): a
    // paste far beyond max_op_len, many scattered one-character edits,
    // a long delete.
    let mut session = Session::open(store.clone(), url.clone(), doc, None, None).unwrap();
    assert_eq!(session.client_id(), id);
    let paste: String = "0123456789".repeat(5);
    let mut expected = "hello world".to_owned();
    let mut edits = vec![Operation::insert_at(11, 5, &paste).unwrap()];
    for k in 0..12 {
        edits.push(Operation::insert_at(61 + k, (k * 5) % (61 + k), "*").unwrap());
    }
    edits.push(Operation::delete_range(73, 20, 30).unwrap());
    for op in &edits {
        expected = op.apply(&expected).unwrap();
        session.local_edit(op).await.unwrap();
    }
    let pending = session.client().unacknowledged();
    assert!(pending > 8, "the edits were queued as {pending} op(s)");
    let limits = ot_core::OpLimits {
        max_op_len: 8,
        max_op_components: 4,
    };
    let outstanding = session.client().outstanding().map(|o| o.sent.clone());
    for op in outstanding.iter().chain(session.client().queue()) {
        assert!(op.fits(limits), "{} is beyond the limits", op.to_json());
    }
    assert_eq!(session.client().text().to_string(), expected);
    quit(session);

    // The server comes back with the same limits; someone edits first.
    let server = restart_on_with(server_dir.path(), addr, small).await;
    let mut other = WsClient::join(addr, doc, "other-writer").await.unwrap();
    other
        .edit(&Operation::insert_at(11, 11, "!").unwrap())
        .await
        .unwrap();
    other.settle_to(3, within).await.unwrap();
    drop(other);
    expected.push('!');

    // sync sends every queued op, one per ack: all merged, none refused.
    let mut cmd = cli(data.path(), &format!("ws://{addr}"));
    cmd.args(["sync", doc]);
    let out = run(cmd).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!("sent {pending} pending edit(s) of {doc}\n")
    );
    assert!(
        !data.path().join("conflicts").exists(),
        "a conflict copy was made: {:?}",
        files_below(data.path())
    );
    let (rev, text) = doc_state(addr, doc).await.unwrap();
    assert_eq!(text, expected);
    // One op per queued one (more if a transform made one too big to leave whole).
    let sent_ops = rev - 3;
    assert!(
        sent_ops >= pending as u64,
        "{sent_ops} ops for {pending} queued"
    );
    let seqs = assert_exactly_once(addr, doc).await;
    assert_eq!(seqs[&id], (1..=2 + sent_ops).collect::<Vec<_>>());
    assert_eq!(ok(data.path(), addr, &["cat", doc]).await, expected);

    server.stop().await.unwrap();
}

/// [`restart_on`] with a configuration change.
async fn restart_on_with(
    dir: &Path,
    addr: SocketAddr,
    change: impl Fn(&mut server::Config) + Copy,
) -> server::RunningServer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match start_server_with(dir, |config| {
            change(config);
            config.addr = addr;
        })
        .await
        {
            Ok(server) => return server,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot restart the server on {addr}: {e:#}"),
        }
    }
}

/// What the proxy does with the frames after the WebSocket greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward everything both ways.
    Forward,
    /// Forward the upgrade and the server's first message (the snapshot),
    /// then swallow everything the server sends: acks never arrive.
    SwallowDown,
    /// Forward the upgrade request, then swallow everything the client sends:
    /// its ops never arrive.
    SwallowUp,
}

/// A TCP proxy on 127.0.0.1 in front of the server. The mode applies to the
/// connections accepted after it is set.
struct Proxy {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// The client's bytes swallowed (in [`Mode::SwallowUp`]).
    swallowed_up: Arc<Mutex<Vec<u8>>>,
    /// The server's bytes swallowed (in [`Mode::SwallowDown`]).
    swallowed_down: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let swallowed_up = Arc::new(Mutex::new(Vec::new()));
        let swallowed_down = Arc::new(Mutex::new(Vec::new()));
        let (m, up, down) = (mode.clone(), swallowed_up.clone(), swallowed_down.clone());
        let task = tokio::spawn(async move {
            // Dropped (aborting every connection) when the proxy is.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let mode = *m.lock().unwrap();
                let (up, down) = (up.clone(), down.clone());
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up_frames = (mode == Mode::SwallowUp).then_some(0);
                    let down_frames = (mode == Mode::SwallowDown).then_some(1);
                    tokio::join!(
                        pump(client_read, server_write, up_frames, up),
                        pump(server_read, client_write, down_frames, down),
                    );
                });
            }
        });
        Proxy {
            addr,
            mode,
            swallowed_up,
            swallowed_down,
            task,
        }
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy `from` to `to`. With `pass: Some(n)`, forward the HTTP head and then
/// `n` WebSocket frames, and swallow the rest into `swallowed`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pass: Option<usize>,
    swallowed: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    let mut head_done = false;
    let mut frames_left = pass.unwrap_or(0);
    let mut swallowing = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if pass.is_none() {
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
            continue;
        }
        if swallowing {
            swallowed.lock().unwrap().extend_from_slice(&buf[..n]);
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut forward = Vec::new();
        if !head_done {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            forward.extend(pending.drain(..end + 4));
            head_done = true;
        }
        while frames_left > 0 {
            let Some(len) = frame_len(&pending) else {
                break;
            };
            forward.extend(pending.drain(..len));
            frames_left -= 1;
        }
        if frames_left == 0 {
            swallowing = true;
            swallowed.lock().unwrap().extend(pending.drain(..));
        }
        if to.write_all(&forward).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The length of the complete WebSocket frame at the start of `buf`, if it is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let (header, len) = frame_header(buf)?;
    (buf.len() >= header + len).then_some(header + len)
}

/// (header length including any mask key, payload length) of the frame at the start of `buf`.
fn frame_header(buf: &[u8]) -> Option<(usize, usize)> {
    let second = *buf.get(1)?;
    let (header, len) = match second & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    let masked = second & 0x80 != 0;
    Some((header + if masked { 4 } else { 0 }, len))
}

/// The payload of the complete frame at the start of `buf` (unmasked), if there is one.
fn first_frame_payload(buf: &[u8]) -> Option<Vec<u8>> {
    let (header, len) = frame_header(buf)?;
    let payload = buf.get(header..header + len)?;
    if buf[1] & 0x80 == 0 {
        return Some(payload.to_vec());
    }
    let key = &buf[header - 4..header];
    Some(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect(),
    )
}

/// The payloads of the complete frames in `buf` (unmasked).
fn frames(mut buf: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let (Some(payload), Some(len)) = (first_frame_payload(buf), frame_len(buf)) {
        out.push(payload);
        buf = &buf[len..];
    }
    out
}

/// Start `ot-client ARGS…` in the background (output piped).
fn spawn(data: &Path, server: &str, args: &[&str]) -> Child {
    let mut cmd = cli(data, server);
    cmd.args(args);
    start(cmd)
}

/// SIGKILL a client that must still be running, and reap it.
async fn kill9(child: &mut Child) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "the client exited on its own"
    );
    child.start_kill().unwrap();
    let status = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

/// `insert` through the proxy in `mode`, SIGKILLed after it sent its op and
/// before any ack; then `sync` through the proxy, forwarding again.
async fn killed_before_the_ack(mode: Mode) {
    let server_dir = tempfile::tempdir().unwrap();
    // The client names the proxy's address as its Host: admit 127.0.0.1 on any port.
    let server = start_server_with(server_dir.path(), |config| {
        config.allowed_host = vec!["127.0.0.1".to_owned()];
    })
    .await
    .unwrap();
    let addr = server.addr;
    let doc = "crash";
    let mut seed = WsClient::join(addr, doc, "seed").await.unwrap();
    seed.edit(&Operation::insert_at(0, 0, "abcdef").unwrap())
        .await
        .unwrap();
    seed.settle_to(1, LIMIT).await.unwrap();
    drop(seed);

    let proxy = Proxy::start(addr, mode).await;
    let data = tempfile::tempdir().unwrap();
    let mut child = spawn(data.path(), &proxy.url(), &["insert", doc, "3", "XY"]);
    match mode {
        Mode::SwallowDown => {
            // The op arrives and is applied; the ack is swallowed.
            wait_until("the server applied the op", || async {
                doc_state(addr, doc).await.unwrap().0 == 2
            })
            .await;
        }
        Mode::SwallowUp => {
            // The op leaves the client and goes no further.
            wait_until("the client sent its op", || async {
                first_frame_payload(&proxy.swallowed_up.lock().unwrap()).is_some()
            })
            .await;
            let frame = first_frame_payload(&proxy.swallowed_up.lock().unwrap()).unwrap();
            let message = ClientMessage::parse(std::str::from_utf8(&frame).unwrap()).unwrap();
            assert!(
                matches!(message, ClientMessage::Op { rev: 1, seq: 1, .. }),
                "{message:?}"
            );
        }
        Mode::Forward => unreachable!(),
    }
    kill9(&mut child).await;
    if mode == Mode::SwallowDown {
        // The ack did come, and went no further.
        let acked = || {
            frames(&proxy.swallowed_down.lock().unwrap())
                .iter()
                .filter_map(|f| ServerMessage::parse(std::str::from_utf8(f).ok()?).ok())
                .any(|m| m == ServerMessage::Ack { rev: 2, seq: 1 })
        };
        wait_until("the proxy swallowed the ack", || async { acked() }).await;
    }
    let applied = if mode == Mode::SwallowDown { 2 } else { 1 };
    assert_eq!(doc_state(addr, doc).await.unwrap().0, applied);

    // The state on disk knew the op before it left.
    let (id, state) = only_state(data.path());
    assert_eq!(state["client"]["outstanding"]["seq"], 1, "{state}");
    assert_eq!(state["client"]["revision"], 1, "{state}");

    // The next run, through the same proxy (the state is keyed by its URL).
    proxy.set_mode(Mode::Forward);
    let out = ok(data.path(), proxy.addr, &["sync", doc]).await;
    assert_eq!(out, format!("sent 1 pending edit(s) of {doc}\n"));
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (2, "abcXYdef".to_owned())
    );
    let seqs = assert_exactly_once(addr, doc).await;
    assert_eq!(seqs[&id], [1]);
    // Nothing left; the slot goes on with the next seq.
    let out = ok(data.path(), proxy.addr, &["sync", doc]).await;
    assert_eq!(out, format!("sent 0 pending edit(s) of {doc}\n"));
    ok(data.path(), proxy.addr, &["append", doc, "!"]).await;
    assert_eq!(
        doc_state(addr, doc).await.unwrap(),
        (3, "abcXYdef!".to_owned())
    );
    let seqs = assert_exactly_once(addr, doc).await;
    assert_eq!(seqs[&id], [1, 2]);
    assert_eq!(only_state(data.path()).0, id);

    drop(proxy);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_op_was_applied_and_before_the_ack() {
    killed_before_the_ack(Mode::SwallowDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_op_was_sent_and_never_arrived() {
    killed_before_the_ack(Mode::SwallowUp).await;
}

/// The first line a background `watch --text` prints (the text, once connected).
async fn first_line(
    child: &mut Child,
) -> (
    String,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(LIMIT, lines.next_line())
        .await
        .expect("watch --text prints the text")
        .unwrap()
        .expect("a line");
    (line, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_clients_slot_is_reused_and_a_running_ones_is_not() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let ws = format!("ws://{addr}");
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    let doc = "slots";

    ok(data, addr, &["append", doc, "a"]).await;
    let (first_id, _) = only_state(data);

    // A client holding that slot is killed: its lock file stays behind.
    let mut watcher = spawn(data, &ws, &["watch", doc, "--text"]);
    let (line, _lines) = first_line(&mut watcher).await;
    assert_eq!(line, "a");
    kill9(&mut watcher).await;
    let state_path = &state_files(data)[&first_id];
    assert!(state_path.with_extension("lock").exists());

    // The next run takes the slot over: same client id, next seq.
    ok(data, addr, &["append", doc, "b"]).await;
    let seqs = assert_exactly_once(addr, doc).await;
    assert_eq!(seqs.len(), 1);
    assert_eq!(seqs[&first_id], [1, 2]);
    assert_eq!(state_files(data).len(), 1);

    // While a client runs (holding the slot), another run gets its own id.
    let mut watcher = spawn(data, &ws, &["watch", doc, "--text", "--count", "1"]);
    let (line, mut lines) = first_line(&mut watcher).await;
    assert_eq!(line, "ab");
    ok(data, addr, &["append", doc, "c"]).await;
    let ops = ops_log(addr, doc).await;
    let second_id = ops[2]["client"].as_str().unwrap().to_owned();
    assert_ne!(second_id, first_id);
    assert_eq!(ops[2]["seq"], 1);
    // The watcher saw it and stops.
    let line = timeout(LIMIT, lines.next_line()).await.unwrap().unwrap();
    assert_eq!(line.as_deref(), Some("abc"));
    let status = timeout(LIMIT, watcher.wait()).await.unwrap().unwrap();
    assert!(status.success());

    // Both slots free now: the next run reuses one of them.
    ok(data, addr, &["append", doc, "d"]).await;
    let seqs = assert_exactly_once(addr, doc).await;
    assert_eq!(
        seqs.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([first_id.clone(), second_id.clone()])
    );
    assert!(
        seqs[&first_id] == [1, 2, 3] || seqs[&second_id] == [1, 2],
        "{seqs:?}"
    );
    assert_eq!(state_files(data).len(), 2);
    assert_eq!(doc_state(addr, doc).await.unwrap().1, "abcd");

    server.stop().await.unwrap();
}

/// A `watch` that reconnects prints the ops its resume brought: they come
/// with the connection itself, not after it (it printed nothing for them
/// before, and stayed on the old text until the next edit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_prints_the_ops_missed_while_the_server_was_away() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await.unwrap();
    let addr = server.addr;
    let data = tempfile::tempdir().unwrap();
    let writer = tempfile::tempdir().unwrap();
    let doc = "away";
    ok(writer.path(), addr, &["append", doc, "a"]).await;
    let mut watcher = spawn(
        data.path(),
        &format!("ws://{addr}"),
        &["watch", doc, "--text"],
    );
    let (line, mut lines) = first_line(&mut watcher).await;
    assert_eq!(line, "a");

    // While the server is away from the watcher's address, the document
    // takes an edit through another server on the same data (another port).
    server.stop().await.unwrap();
    let other = start_server(server_dir.path()).await.unwrap();
    ok(writer.path(), other.addr, &["append", doc, "b"]).await;
    other.stop().await.unwrap();
    let server = restart_on(server_dir.path(), addr).await;

    // The watcher resumes from "a" and prints what the resume brought.
    let line = timeout(LIMIT, lines.next_line()).await.unwrap().unwrap();
    assert_eq!(line.as_deref(), Some("ab"));
    kill9(&mut watcher).await;
    server.stop().await.unwrap();
}
