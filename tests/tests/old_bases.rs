//! Ops based on revisions older than the in-memory window are rebased off
//! the document's task (reading the ops they missed from storage in
//! chunks), so nobody else's acks wait for them; only a base more than
//! `--max-rebase-revs` behind is refused (`revision_too_old`). Each test
//! runs a server process with the limits it states and a bystander that
//! edits the same document and bounds its acks; the attack rows also bound
//! the server's RSS (docs/attacks.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e_tests::attack::{attack_server, RssBound};
use e2e_tests::doc_work::{fill_history, Bystander};
use e2e_tests::{doc_state, WsClient};
use ot_core::Operation;
use ot_protocol::{ClientMessage, ErrorCode, ServerMessage};

/// A bystander's ack while old-base ops are processed (baseline: a few ms;
/// before the rebase moved off the task it stalled for seconds). Generous:
/// the machine is small and shared.
const ACK_BOUND: Duration = Duration::from_millis(500);

/// Fast fills: one connection sends thousands of ops at once.
const FAST: [&str; 4] = ["--ops-per-sec", "1000000", "--ops-burst", "1000000"];

/// FAST and `more` flags.
fn fast_and(more: &[&'static str]) -> Vec<&'static str> {
    FAST.iter().chain(more).copied().collect()
}

fn assert_fast(latencies: &[Duration], what: &str) {
    assert!(
        latencies.len() >= 3,
        "{what}: only {} acks measured",
        latencies.len()
    );
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{what}: {} bystander acks, worst {worst:?}",
        latencies.len()
    );
    assert!(
        worst < ACK_BOUND,
        "{what}: a bystander's ack took {worst:?}: {latencies:?}"
    );
}

/// Send `count` ops inserting "x" at the start, seqs 1 to `count`, all
/// based on revision 0, without waiting for answers.
async fn send_x_at_revision_0(client: &mut WsClient, count: u64) {
    for seq in 1..=count {
        client
            .send(&ClientMessage::Op {
                rev: 0,
                seq,
                op: Operation::insert_at(0, 0, "x").unwrap(),
                ranges: None,
                origin: None,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_5000_revisions_behind_merges_while_a_bystander_stays_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = attack_server(dir.path(), &FAST).await.unwrap();
    let addr = server.addr;
    // The offline writer saw the empty document at revision 0, then went away.
    let mut offline = WsClient::join(addr, "doc", "offline").await.unwrap();
    offline.cut();
    let head = fill_history(addr, "doc", "filler", 5000, 'f')
        .await
        .unwrap();
    assert_eq!(head, 5000);
    // Edits made offline: one outstanding op at revision 0, the rest buffered.
    for (at, text) in [(0, "OLD"), (3, "-1"), (5, "-2")] {
        let len = offline.client().text().len_chars();
        offline
            .edit(&Operation::insert_at(len, at, text).unwrap())
            .await
            .unwrap();
    }
    let bystander = Bystander::start(addr, "doc", "bystander", 'b')
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let memory = RssBound::start(server.child.id()).unwrap();
    let started = Instant::now();
    offline.reconnect().await.unwrap();
    offline
        .settle_to(5000, Duration::from_secs(120))
        .await
        .unwrap();
    eprintln!("the offline writer merged in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    memory.check().await.unwrap();
    let (mut bystander, latencies) = bystander.stop().await.unwrap();
    assert_fast(&latencies, "5,000 behind");
    assert!(
        offline.conflict_copies.is_empty(),
        "{:?}",
        offline.conflict_copies
    );
    assert!(offline.errors.is_empty(), "{:?}", offline.errors);

    let (rev, text) = doc_state(addr, "doc").await.unwrap();
    offline
        .settle_to(rev, Duration::from_secs(30))
        .await
        .unwrap();
    bystander
        .settle_to(rev, Duration::from_secs(30))
        .await
        .unwrap();
    let expected = format!("OLD-1-2{}{}", "f".repeat(5000), "b".repeat(latencies.len()));
    assert_eq!(text, expected);
    assert_eq!(offline.text(), expected);
    assert_eq!(bystander.text(), expected);
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_revision_0_ops_on_20000_ops_of_history_leave_a_bystander_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = attack_server(dir.path(), &FAST).await.unwrap();
    let addr = server.addr;
    fill_history(addr, "doc", "filler", 20_000, 'f')
        .await
        .unwrap();
    let bystander = Bystander::start(addr, "doc", "bystander", 'b')
        .await
        .unwrap();
    let mut attacker = WsClient::join(addr, "doc", "attacker").await.unwrap();
    let memory = RssBound::start(server.child.id()).unwrap();
    let started = Instant::now();
    send_x_at_revision_0(&mut attacker, 40).await;
    // Each is accepted (20,000 revisions is within --max-rebase-revs), in order.
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked.len() < 40 && Instant::now() < deadline {
        match attacker
            .recv_message(Duration::from_secs(120))
            .await
            .unwrap()
        {
            ServerMessage::Ack { seq, .. } => acked.push(seq),
            ServerMessage::Error { code, message, .. } => panic!("refused: {code:?} {message}"),
            _ => {}
        }
    }
    eprintln!(
        "40 rev-0 ops on 20,000 revisions took {:?}",
        started.elapsed()
    );
    assert_eq!(acked, (1..=40).collect::<Vec<u64>>());
    memory.check().await.unwrap();
    let (mut bystander, latencies) = bystander.stop().await.unwrap();
    assert_fast(&latencies, "40 rev-0 ops");
    let (rev, text) = doc_state(addr, "doc").await.unwrap();
    bystander
        .settle_to(rev, Duration::from_secs(30))
        .await
        .unwrap();
    let expected = format!(
        "{}{}{}",
        "x".repeat(40),
        "f".repeat(20_000),
        "b".repeat(latencies.len())
    );
    assert_eq!(text, expected);
    assert_eq!(bystander.text(), expected);
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_base_beyond_max_rebase_revs_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let flags = fast_and(&["--history-window", "10", "--max-rebase-revs", "100"]);
    let server = attack_server(dir.path(), &flags).await.unwrap();
    let addr = server.addr;
    fill_history(addr, "doc", "filler", 300, 'f').await.unwrap();
    let before = doc_state(addr, "doc").await.unwrap();
    let mut old = WsClient::join(addr, "doc", "old").await.unwrap();
    let memory = RssBound::start(server.child.id()).unwrap();
    // 300 behind: refused, nothing applied.
    old.send(&ClientMessage::Op {
        rev: 0,
        seq: 1,
        op: Operation::insert_at(0, 0, "x").unwrap(),
        ranges: None,
        origin: None,
    })
    .await
    .unwrap();
    match old.recv_message(Duration::from_secs(10)).await.unwrap() {
        ServerMessage::Error { code, seq, .. } => {
            assert_eq!(code, ErrorCode::RevisionTooOld);
            assert_eq!(seq, Some(1));
        }
        other => panic!("expected revision_too_old, got {other:?}"),
    }
    assert_eq!(doc_state(addr, "doc").await.unwrap(), before);
    // 50 behind (before the 10-op window, within the limit): rebased from
    // storage and applied; its ranges are mapped too.
    old.send(&ClientMessage::Op {
        rev: 250,
        seq: 1,
        op: Operation::insert_at(250, 250, "y").unwrap(),
        ranges: Some(vec![ot_core::Range::cursor(251)]),
        origin: None,
    })
    .await
    .unwrap();
    loop {
        match old.recv_message(Duration::from_secs(10)).await.unwrap() {
            ServerMessage::Ack { rev, seq } => {
                assert_eq!((rev, seq), (301, 1));
                break;
            }
            ServerMessage::Error { code, message, .. } => panic!("refused: {code:?} {message}"),
            _ => {}
        }
    }
    memory.check().await.unwrap();
    let (rev, text) = doc_state(addr, "doc").await.unwrap();
    assert_eq!(rev, 301);
    assert_eq!(text, format!("{}y{}", "f".repeat(250), "f".repeat(50)));
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_ops_behind_one_being_rebased_is_closed_as_abusive() {
    let dir = tempfile::tempdir().unwrap();
    let server = attack_server(dir.path(), &fast_and(&["--history-window", "10"]))
        .await
        .unwrap();
    let addr = server.addr;
    fill_history(addr, "doc", "filler", 5000, 'f')
        .await
        .unwrap();
    let mut attacker = WsClient::join(addr, "doc", "attacker").await.unwrap();
    let memory = RssBound::start(server.child.id()).unwrap();
    // 200 ops at once, all based at revision 0: the first is rebased off the
    // task while the rest queue behind it, in order, up to 64.
    send_x_at_revision_0(&mut attacker, 200).await;
    let closed = attacker
        .expect_close(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(closed.map(|(code, _)| code), Some(1008));
    memory.check().await.unwrap();
    // Whatever was applied before the close was applied once, in order.
    let (_, text) = doc_state(addr, "doc").await.unwrap();
    let applied = text.chars().take_while(|c| *c == 'x').count();
    assert!(applied < 200, "{applied}");
    assert_eq!(text, format!("{}{}", "x".repeat(applied), "f".repeat(5000)));
    server.stop().unwrap();
}
