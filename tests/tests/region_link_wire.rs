//! `ot_core::region::RegionalDocument` against a real home over the real
//! wire: a server process is the home, and a small link written here (what
//! the regional server's link driver will do: first open from the home's
//! snapshot, resume with `rev`/`epoch`, `last_hash`, ops sent only once their
//! regional commit is durable) replicates a regional document to it while a
//! writer at the home types at the same place. The region's commits are
//! durable at once (an in-memory log); the region "crashes" by being
//! rebuilt from that log with `recover`. Checked: after a cut, a home
//! restart (kill -9) and a region recovery, the region's text equals the
//! home's, every character typed at either side appears exactly once, and
//! nothing the region holds is left unreplicated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_tests::{
    doc_state, free_port, recv_message, send_message, server_binary, test_key, ws_connect_with_key,
    ServerProcess, Socket, WsClient,
};
use ot_core::history::OpHash;
use ot_core::region::{HomeSnapshot, RegionalDocument, RegionalEntry};
use ot_core::{OpLimits, Operation};
use ot_protocol::{ClientMessage, ServerMessage};

const LINK: &str = "r-eu";
const T: Duration = Duration::from_secs(20);

/// A region: its document, its durable log, and the link's socket.
struct Region {
    doc: RegionalDocument,
    log: Vec<RegionalEntry>,
    socket: Option<Socket>,
    /// The next seq of the region's one local writer.
    local_seq: u64,
}

fn hash_of(last_hash: Option<std::borrow::Cow<'_, str>>) -> Option<OpHash> {
    last_hash.and_then(|h| OpHash::from_hex(&h))
}

impl Region {
    /// First open: the home's snapshot becomes revision 1 of the region.
    async fn first_open(addr: SocketAddr) -> Region {
        let key = test_key(LINK);
        let mut socket = ws_connect_with_key(addr, &format!("/ws/doc?client={LINK}"), Some(&key))
            .await
            .unwrap();
        let ServerMessage::Snapshot {
            rev,
            text,
            seq,
            epoch,
            last_hash,
            ..
        } = recv_message(&mut socket, T).await.unwrap()
        else {
            panic!("a first open gets a snapshot");
        };
        let doc =
            RegionalDocument::first_open(LINK, epoch, rev, &text, seq, OpLimits::DEFAULT).unwrap();
        let mut region = Region {
            doc,
            log: Vec::new(),
            socket: Some(socket),
            local_seq: 1,
        };
        region.commit();
        region
            .doc
            .upstream_resumed(rev, seq, hash_of(last_hash))
            .unwrap();
        region
    }

    /// Make everything taken durable (an in-memory log), then send what may go.
    fn commit(&mut self) {
        while let Some((commit, _)) = self.doc.take_commit(false) {
            self.log.extend(commit.entries.iter().cloned());
            self.doc.committed(commit.number);
        }
    }

    async fn pump(&mut self) {
        self.commit();
        if let (Some(socket), Some(op)) = (self.socket.as_mut(), self.doc.upstream_send()) {
            let message = ClientMessage::Op {
                rev: op.base_rev,
                seq: op.seq,
                op: op.op,
                ranges: None,
                origin: None,
            };
            // A send on a socket the home closed fails: the next connect resends.
            let _ = send_message(socket, &message).await;
        }
    }

    /// The region's local writer types `what` at the start.
    async fn local_edit(&mut self, what: &str) {
        let history = self.doc.history();
        let (rev, len) = (history.revision(), history.text().len_chars());
        let op = Operation::insert_at(len, 0, what).unwrap();
        self.doc
            .receive_local("local", self.local_seq, rev, op)
            .unwrap();
        self.local_seq += 1;
        self.pump().await;
    }

    /// Connect the link again: resume at its revision in the epoch it knows.
    async fn reconnect(&mut self, addr: SocketAddr) {
        self.socket = None;
        self.doc.upstream_disconnected();
        let (_, epoch, rev) = self.doc.link_resume_point();
        let key = test_key(LINK);
        let path = format!("/ws/doc?client={LINK}&rev={rev}&epoch={epoch}");
        let mut socket = ws_connect_with_key(addr, &path, Some(&key)).await.unwrap();
        match recv_message(&mut socket, T).await.unwrap() {
            ServerMessage::Resume {
                rev,
                seq,
                last_hash,
                ..
            } => {
                self.doc
                    .upstream_resumed(rev, seq, hash_of(last_hash))
                    .unwrap();
            }
            ServerMessage::Snapshot {
                rev,
                text,
                seq,
                epoch,
                last_hash,
                ..
            } => {
                self.doc
                    .upstream_snapshot(HomeSnapshot {
                        epoch,
                        rev,
                        text: &text,
                        last_seq: seq,
                        last_hash: hash_of(last_hash),
                    })
                    .unwrap();
            }
            other => panic!("expected a first message, got {other:?}"),
        }
        self.socket = Some(socket);
        self.pump().await;
    }

    /// Take the home's messages until the region holds nothing unreplicated
    /// and has integrated the home's revision `head`.
    async fn settle(&mut self, head: impl Fn() -> u64) {
        let deadline = Instant::now() + T;
        loop {
            if self.doc.unreplicated_ops() == 0 && self.doc.link().revision() >= head() {
                return;
            }
            assert!(Instant::now() < deadline, "the region did not settle");
            let Some(socket) = self.socket.as_mut() else {
                return;
            };
            let Ok(message) = recv_message(socket, Duration::from_millis(200)).await else {
                continue;
            };
            match message {
                ServerMessage::Op {
                    rev,
                    op,
                    client,
                    seq,
                } => {
                    self.doc.upstream_op(rev, &op, &client, seq).unwrap();
                }
                ServerMessage::Ack { rev, seq } => {
                    self.doc.upstream_ack(rev, seq).unwrap();
                }
                _ => {}
            }
            self.pump().await;
        }
    }
}

/// The home's durable head, read over HTTP.
async fn home_head(addr: SocketAddr) -> u64 {
    doc_state(addr, "doc").await.unwrap().0
}

async fn settle(region: &mut Region, addr: SocketAddr) {
    // The head moves while the region's own ops land: settle until it holds.
    for _ in 0..10 {
        let head = home_head(addr).await;
        region.settle(|| head).await;
        if home_head(addr).await == region.doc.link().revision()
            && region.doc.unreplicated_ops() == 0
        {
            return;
        }
    }
    panic!("the region never caught up with the home");
}

/// The home's writer types `what` at the start.
async fn home_type(writer: &mut WsClient, what: String) {
    let len = writer.client().text().chars().count();
    let op = Operation::insert_at(len, 0, &what).unwrap();
    writer.edit(&op).await.unwrap();
}

/// For each `i`, the region's writer types `<ri>` and the home's `<hi>`,
/// both at the start, at once; returns once the home's writer is acked.
async fn type_on_both_sides(
    region: &mut Region,
    writer: &mut WsClient,
    rounds: std::ops::RangeInclusive<u32>,
    typed: &mut Vec<String>,
) {
    for i in rounds {
        let (local, remote) = (format!("<r{i}>"), format!("<h{i}>"));
        region.local_edit(&local).await;
        home_type(writer, remote.clone()).await;
        typed.extend([local, remote]);
    }
    writer
        .pump_until(T, |c| c.client().all_saved())
        .await
        .unwrap();
}

fn assert_each_once(text: &str, typed: &[String]) {
    for t in typed {
        assert_eq!(text.matches(t.as_str()).count(), 1, "{t:?} in {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_document_replicates_to_a_real_home_through_cuts_and_crashes() {
    let bin = server_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut home = ServerProcess::start(&bin, dir.path(), port, &[])
        .await
        .unwrap();
    let addr = home.addr;
    let mut writer = WsClient::join(addr, "doc", "home-writer").await.unwrap();
    let mut typed = Vec::new();
    home_type(&mut writer, "<h0>".into()).await;
    writer
        .pump_until(T, |c| c.client().all_saved())
        .await
        .unwrap();
    typed.push("<h0>".to_owned());

    // First open, then both sides type at the same place at once.
    let mut region = Region::first_open(addr).await;
    assert_eq!(region.doc.history().text().to_string(), "<h0>");
    type_on_both_sides(&mut region, &mut writer, 1..=5, &mut typed).await;
    settle(&mut region, addr).await;
    let (_, text) = doc_state(addr, "doc").await.unwrap();
    assert_eq!(region.doc.history().text().to_string(), text);
    assert_each_once(&text, &typed);
    assert!(region
        .log
        .iter()
        .any(|e| matches!(e, RegionalEntry::Upstream(i) if i.is_concurrent())));

    // Cut: the region keeps accepting local edits, the home keeps typing.
    region.socket = None;
    region.doc.upstream_disconnected();
    type_on_both_sides(&mut region, &mut writer, 6..=9, &mut typed).await;
    assert!(region.doc.unreplicated_ops() > 0);
    region.reconnect(addr).await;
    settle(&mut region, addr).await;

    // kill -9 of the home with the region's op in flight: it is resent, once.
    region.local_edit("<r10>").await;
    typed.push("<r10>".to_owned());
    home.kill9();
    let _home = ServerProcess::start(&bin, dir.path(), port, &[])
        .await
        .unwrap();
    region.reconnect(addr).await;
    settle(&mut region, addr).await;

    // The region crashes: rebuilt from its durable log, it resumes and
    // resends nothing twice.
    region.local_edit("<r11>").await;
    typed.push("<r11>".to_owned());
    let recovered = RegionalDocument::recover(None, region.log.clone()).unwrap();
    assert_eq!(recovered.history().text(), region.doc.history().text());
    region.doc = recovered;
    region.reconnect(addr).await;
    settle(&mut region, addr).await;

    let mut writer = WsClient::join(addr, "doc", "home-writer-2").await.unwrap();
    writer.pump_until(T, |c| c.synced()).await.unwrap();
    let (_, text) = doc_state(addr, "doc").await.unwrap();
    assert_eq!(region.doc.history().text().to_string(), text);
    assert_eq!(writer.client().text().to_string(), text);
    assert_each_once(&text, &typed);
    assert_eq!(region.doc.replicated_rev(), region.doc.history().revision());
}
