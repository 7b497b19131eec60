//! Reconnects: a connection cut between an op and its ack, resumed with `rev`;
//! the edit is applied exactly once, also across a server restart, and the
//! (client, seq) dedup survives restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use e2e_tests::{
    doc_state, http_get_json, metric_value, replay_ops, start_server, start_server_with,
    wait_for_rev, WsClient,
};
use ot_core::client::OutgoingOp;
use ot_core::Operation;
use ot_protocol::{ClientMessage, ErrorCode, ServerMessage};
use serde_json::Value;
use server::RunningServer;

const T: Duration = Duration::from_secs(20);

/// Every stored op of `doc`, through `/ops` pages.
async fn all_ops(addr: SocketAddr, doc: &str) -> Vec<Value> {
    let mut ops = Vec::new();
    loop {
        let path = format!("/api/docs/{doc}/ops?from={}&limit=100", ops.len());
        let (status, page) = http_get_json(addr, &path).await.unwrap();
        assert_eq!(status, 200, "{page}");
        let page = page["ops"].as_array().unwrap().clone();
        if page.is_empty() {
            return ops;
        }
        ops.extend(page);
    }
}

/// Each (client, seq) of `client` is stored exactly once, with seqs 1..=n; returns n.
async fn assert_applied_once(addr: SocketAddr, doc: &str, client: &str) -> u64 {
    let ops = all_ops(addr, doc).await;
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op["rev"], i as u64 + 1, "revisions are contiguous");
        if op["client"] == client {
            let seq = op["seq"].as_u64().unwrap();
            let rev = op["rev"].as_u64().unwrap();
            assert!(
                seen.insert(seq, rev).is_none(),
                "({client}, {seq}) applied twice: {ops:?}"
            );
        }
    }
    let n = seen.len() as u64;
    for seq in 1..=n {
        assert!(
            seen.contains_key(&seq),
            "({client}, {seq}) missing: {ops:?}"
        );
    }
    n
}

/// Reconnect `c` by hand, checking that the server's first message is of `kind`.
async fn reconnect_expecting(c: &mut WsClient, kind: &str) -> ServerMessage<'static> {
    c.open().await.unwrap();
    let first = c.recv_message(T).await.unwrap();
    assert_eq!(first.kind(), kind, "{first:?}");
    c.handle_message(first.clone()).await.unwrap();
    first
}

/// The op message `out` was sent as (a resend is byte for byte the same).
fn op_message(out: &OutgoingOp) -> ClientMessage {
    ClientMessage::Op {
        rev: out.base_rev,
        seq: out.seq,
        op: out.op.clone(),
        ranges: None,
        origin: None,
    }
}

/// A unique character per edit, so that duplicates and losses show in the text.
fn unique(i: u32) -> String {
    char::from_u32(0x4E00 + i).unwrap().to_string()
}

/// 30 rounds: A edits and its connection is cut at once (the op may or may not
/// have reached the server); B edits meanwhile; A resumes with `rev` and
/// resends if the server says it has not applied the op. Every edit is applied
/// exactly once and everyone converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_sending_then_resume_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut a = WsClient::join(addr, "cut", "cutter").await.unwrap();
    let mut b = WsClient::join(addr, "cut", "steady").await.unwrap();
    let mut resent = 0;
    for round in 0..30u32 {
        let len = a.client().text().len_chars();
        a.edit(&Operation::insert_at(len, len, &unique(round)).unwrap())
            .await
            .unwrap();
        let sent = a.client().pending_resend().unwrap();
        a.cut();
        // A concurrent edit from B, so a resent op must be transformed.
        if round.is_multiple_of(2) {
            let len = b.client().text().len_chars();
            b.edit(&Operation::insert_at(len, 0, &unique(1000 + round)).unwrap())
                .await
                .unwrap();
            b.pump_until(T, |c| c.client().all_saved()).await.unwrap();
        }
        let resume = reconnect_expecting(&mut a, "resume").await;
        let ServerMessage::Resume {
            rev, client, seq, ..
        } = &resume
        else {
            panic!("expected a resume, got {resume:?}");
        };
        assert_eq!(*rev, sent.base_rev, "{resume:?}");
        assert_eq!(client, "cutter");
        if *seq < sent.seq {
            resent += 1;
        } else {
            assert_eq!(*seq, sent.seq, "{resume:?}");
        }
        a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
        assert!(a.errors.is_empty(), "round {round}: {:?}", a.errors);
    }
    let (rev, text) = doc_state(addr, "cut").await.unwrap();
    a.settle_to(rev, T).await.unwrap();
    b.settle_to(rev, T).await.unwrap();
    assert_eq!(a.text(), text);
    assert_eq!(b.text(), text);
    assert_eq!(rev, 30 + 15);
    for i in (0..30)
        .chain(1000..1030)
        .filter(|i| *i < 1000 || (*i as u64).is_multiple_of(2))
    {
        assert_eq!(text.matches(&unique(i)).count(), 1, "edit {i} in {text:?}");
    }
    assert_eq!(assert_applied_once(addr, "cut", "cutter").await, 30);
    assert_eq!(replay_ops(addr, "cut").await.unwrap(), (rev, text));
    eprintln!("{resent} of 30 cut ops had to be resent");
    server.stop().await.unwrap();
}

/// A resend of an op the server has not seen (the client edited while
/// offline) is applied after the resume, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_while_offline_is_sent_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut a = WsClient::join(addr, "offline", "offline-writer")
        .await
        .unwrap();
    a.edit(&Operation::insert_at(0, 0, "one").unwrap())
        .await
        .unwrap();
    a.settle_to(1, T).await.unwrap();
    a.cut();
    a.edit(&Operation::insert_at(3, 3, " two").unwrap())
        .await
        .unwrap();
    a.edit(&Operation::insert_at(7, 7, " three").unwrap())
        .await
        .unwrap();
    assert_eq!(
        doc_state(addr, "offline").await.unwrap(),
        (1, "one".to_owned())
    );
    let resume = reconnect_expecting(&mut a, "resume").await;
    assert!(
        matches!(resume, ServerMessage::Resume { rev: 1, seq: 1, .. }),
        "{resume:?}"
    );
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    assert_eq!(
        doc_state(addr, "offline").await.unwrap(),
        (3, "one two three".to_owned())
    );
    assert_eq!(
        assert_applied_once(addr, "offline", "offline-writer").await,
        3
    );
    server.stop().await.unwrap();
}

/// The op was applied before the cut (the test waits until the server has
/// it), but its ack was never read: on resume the server says so (`seq`), the
/// client does not resend, and its own op in the stream counts as the ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_applied_before_the_cut_is_acked_by_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let mut b = WsClient::join(addr, "applied", "other").await.unwrap();
    b.edit(&Operation::insert_at(0, 0, "base").unwrap())
        .await
        .unwrap();
    b.settle_to(1, T).await.unwrap();
    let mut a = WsClient::join(addr, "applied", "writer").await.unwrap();
    a.edit(&Operation::insert_at(4, 4, "!").unwrap())
        .await
        .unwrap();
    wait_for_rev(addr, "applied", 2, T).await.unwrap();
    a.cut();
    let duplicates = metric_value(addr, "ot_duplicates_total").await.unwrap();
    let resume = reconnect_expecting(&mut a, "resume").await;
    let ServerMessage::Resume { epoch, limits, .. } = resume else {
        panic!("expected a resume, got {resume:?}");
    };
    assert_eq!(
        resume,
        ServerMessage::Resume {
            rev: 1,
            head: 2,
            client: "writer".into(),
            seq: 1,
            epoch,
            limits,
            // Authentication is off: everything is allowed.
            access: ot_protocol::Access::Admin,
            last_hash: None,
        }
    );
    assert!(
        a.client().outstanding().is_some(),
        "the op is still unacknowledged"
    );
    let own = a.recv_message(T).await.unwrap();
    let mut expected_op = Operation::new();
    expected_op.retain(4).insert("!");
    assert_eq!(
        own,
        ServerMessage::Op {
            rev: 2,
            op: Cow::Owned(expected_op),
            client: "writer".into(),
            seq: 1
        }
    );
    a.handle_message(own).await.unwrap();
    assert!(a.client().all_saved());
    assert_eq!((a.client().revision(), a.text()), (2, "base!".to_owned()));
    // Nothing was resent: no ack, no duplicate.
    a.expect_quiet(Duration::from_millis(300)).await.unwrap();
    assert_eq!(
        metric_value(addr, "ot_duplicates_total").await.unwrap(),
        duplicates
    );
    assert_eq!(assert_applied_once(addr, "applied", "writer").await, 1);
    // The resumed connection works.
    a.edit(&Operation::insert_at(5, 0, ">").unwrap())
        .await
        .unwrap();
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    b.settle_to(3, T).await.unwrap();
    assert_eq!(b.text(), ">base!");
    server.stop().await.unwrap();
}

async fn restart(server: RunningServer, dir: &Path) -> RunningServer {
    server.stop().await.unwrap();
    start_server_with(dir, |c| {
        // Snapshots (with the dedup table) often, and little history in memory,
        // so that old seqs are looked up in storage.
        c.snapshot_every = 2;
        c.history_window = 1;
    })
    .await
    .unwrap()
}

/// Cut before the ack, restart the server (graceful stop, new process state on
/// the same data dir, new port), resume: the edit is applied once and
/// revisions continue. Then resends of old seqs after restarts are answered
/// with their original revisions and never applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_cut_and_resend() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path()).await.unwrap();
    let mut a = WsClient::join(server.addr, "restart", "survivor")
        .await
        .unwrap();
    let mut b = WsClient::join(server.addr, "restart", "watcher")
        .await
        .unwrap();
    let mut sent: Vec<OutgoingOp> = Vec::new();
    for i in 0..3u32 {
        let len = a.client().text().len_chars();
        a.edit(&Operation::insert_at(len, len, &unique(i)).unwrap())
            .await
            .unwrap();
        sent.push(a.client().pending_resend().unwrap());
        a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    }
    // The 4th op: sent, then the connection is cut before the ack.
    a.edit(&Operation::insert_at(3, 3, &unique(3)).unwrap())
        .await
        .unwrap();
    sent.push(a.client().pending_resend().unwrap());
    a.cut();

    server = restart(server, dir.path()).await;
    let addr = server.addr;
    a.addr = addr;
    b.addr = addr;
    let (rev, _) = doc_state(addr, "restart").await.unwrap();
    assert!(
        rev == 3 || rev == 4,
        "revisions continue after a restart: {rev}"
    );
    let resume = reconnect_expecting(&mut a, "resume").await;
    assert!(
        matches!(resume, ServerMessage::Resume { rev: 3, head, .. } if head == rev),
        "{resume:?}"
    );
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    assert_eq!(a.client().revision(), 4);
    let expected: String = (0..4).map(unique).collect();
    assert_eq!(
        doc_state(addr, "restart").await.unwrap(),
        (4, expected.clone())
    );
    assert_eq!(assert_applied_once(addr, "restart", "survivor").await, 4);
    b.reconnect().await.unwrap();
    b.settle_to(4, T).await.unwrap();
    assert_eq!(b.text(), expected);

    // Revisions continue: the next op is revision 5.
    a.edit(&Operation::insert_at(4, 4, &unique(4)).unwrap())
        .await
        .unwrap();
    sent.push(a.client().pending_resend().unwrap());
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    assert_eq!(a.client().revision(), 5);
    b.settle_to(5, T).await.unwrap();

    // And an edit made offline, only sent after the next restart.
    a.cut();
    a.edit(&Operation::insert_at(5, 5, &unique(5)).unwrap())
        .await
        .unwrap();
    sent.push(a.client().pending_resend().unwrap());
    server = restart(server, dir.path()).await;
    let addr = server.addr;
    a.addr = addr;
    b.addr = addr;
    let resume = reconnect_expecting(&mut a, "resume").await;
    assert!(
        matches!(resume, ServerMessage::Resume { rev: 5, seq: 5, .. }),
        "{resume:?}"
    );
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    assert_eq!(a.client().revision(), 6);
    let expected: String = (0..6).map(unique).collect();
    assert_eq!(
        doc_state(addr, "restart").await.unwrap(),
        (6, expected.clone())
    );

    // One more restart, then resend every old seq byte for byte: each is
    // answered with its original revision, nothing is applied again.
    server = restart(server, dir.path()).await;
    let addr = server.addr;
    a.addr = addr;
    b.addr = addr;
    reconnect_expecting(&mut a, "resume").await;
    let duplicates = metric_value(addr, "ot_duplicates_total").await.unwrap();
    for out in sent.iter().rev() {
        a.send(&op_message(out)).await.unwrap();
        let ack = a.recv_message(T).await.unwrap();
        assert_eq!(
            ack,
            ServerMessage::Ack {
                rev: out.seq,
                seq: out.seq
            }
        );
    }
    assert_eq!(
        metric_value(addr, "ot_duplicates_total").await.unwrap(),
        duplicates + sent.len() as f64
    );
    // The same seq with another op is refused.
    let reused = ClientMessage::Op {
        rev: 6,
        seq: sent[0].seq,
        op: Operation::insert_at(6, 0, "x").unwrap(),
        ranges: None,
        origin: None,
    };
    a.send(&reused).await.unwrap();
    let error = a.recv_message(T).await.unwrap();
    assert!(
        matches!(&error, ServerMessage::Error { code, seq: Some(1), .. } if *code == ErrorCode::SeqReused),
        "{error:?}"
    );
    assert_eq!(
        doc_state(addr, "restart").await.unwrap(),
        (6, expected.clone())
    );
    assert_eq!(assert_applied_once(addr, "restart", "survivor").await, 6);
    assert_eq!(
        replay_ops(addr, "restart").await.unwrap(),
        (6, expected.clone())
    );
    // The watcher resumes across both restarts and converges.
    b.reconnect().await.unwrap();
    b.settle_to(6, T).await.unwrap();
    assert_eq!(b.text(), expected);
    // A keeps working: the next op is revision 7 with seq 7.
    a.edit(&Operation::insert_at(6, 6, "!").unwrap())
        .await
        .unwrap();
    assert_eq!(a.client().pending_resend().unwrap().seq, 7);
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    assert_eq!(a.client().revision(), 7);
    server.stop().await.unwrap();
}
