//! Dedup records are evicted after `--client-expiry` revisions of
//! inactivity (never a connected writer's), and stay exactly-once: an op
//! from a client id with no record, based below the document's eviction
//! horizon, gets `client_expired` and is never applied. The horizon
//! survives a restart (it is stored with the dedup table in snapshots).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e_tests::attack::{attack_server, RssBound};
use e2e_tests::doc_work::fill_history;
use e2e_tests::{doc_state, WsClient};
use ot_core::Operation;
use ot_protocol::{ClientMessage, ErrorCode, ServerMessage};

/// Fast fills, records evicted after 40 revisions, a snapshot every 50.
const FLAGS: [&str; 8] = [
    "--ops-per-sec",
    "1000000",
    "--ops-burst",
    "1000000",
    "--client-expiry",
    "40",
    "--snapshot-every",
    "50",
];

fn op(rev: u64, seq: u64, len: usize, at: usize, text: &str) -> ClientMessage {
    ClientMessage::Op {
        rev,
        seq,
        op: Operation::insert_at(len, at, text).unwrap(),
        ranges: None,
        origin: None,
    }
}

/// Send `message` and return the answer to it: `Ok(rev)` for an ack, `Err(code)` for an error.
async fn answer(client: &mut WsClient, message: &ClientMessage) -> Result<u64, ErrorCode> {
    client.send(message).await.unwrap();
    loop {
        match client.recv_message(Duration::from_secs(10)).await.unwrap() {
            ServerMessage::Ack { rev, .. } => return Ok(rev),
            ServerMessage::Error { code, .. } => match code {
                ot_protocol::Code::Known(code) => return Err(code),
                other => panic!("unknown code {other:?}"),
            },
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_writers_resends_are_client_expired_and_a_live_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = attack_server(dir.path(), &FLAGS).await.unwrap();
    let addr = server.addr;

    // w1: one op (seq 1, revision 1). w2: seqs 1..=3 (revisions 2..=4).
    let mut w1 = WsClient::join(addr, "doc", "w1").await.unwrap();
    let w1_seq1 = op(0, 1, 0, 0, "a");
    assert_eq!(answer(&mut w1, &w1_seq1).await, Ok(1));
    let mut w2 = WsClient::join(addr, "doc", "w2").await.unwrap();
    let w2_ops = [
        op(1, 1, 1, 1, "b"),
        op(2, 2, 2, 2, "c"),
        op(3, 3, 3, 3, "d"),
    ];
    for (i, message) in w2_ops.iter().enumerate() {
        assert_eq!(answer(&mut w2, message).await, Ok(2 + i as u64));
    }
    // live: one op (revision 5), and it stays connected.
    let mut live = WsClient::join(addr, "doc", "live").await.unwrap();
    let live_seq1 = op(4, 1, 4, 4, "e");
    assert_eq!(answer(&mut live, &live_seq1).await, Ok(5));
    w1.close().await.unwrap();
    w2.close().await.unwrap();

    // 100 revisions later w1 and w2 are idle for more than 40.
    let head = fill_history(addr, "doc", "filler", 100, 'f').await.unwrap();
    assert_eq!(head, 105);
    let before = doc_state(addr, "doc").await.unwrap();
    let memory = RssBound::start(server.child.id()).unwrap();

    // Their resends (byte for byte): seq 1 would look new without the horizon.
    let mut w1 = WsClient::join(addr, "doc", "w1").await.unwrap();
    assert_eq!(
        answer(&mut w1, &w1_seq1).await,
        Err(ErrorCode::ClientExpired)
    );
    let mut w2 = WsClient::join(addr, "doc", "w2").await.unwrap();
    assert_eq!(
        answer(&mut w2, &w2_ops[2]).await,
        Err(ErrorCode::ClientExpired)
    );
    assert_eq!(
        answer(&mut w2, &w2_ops[0]).await,
        Err(ErrorCode::ClientExpired)
    );
    assert_eq!(doc_state(addr, "doc").await.unwrap(), before);
    memory.check().await.unwrap();

    // The live writer kept its record: its resend is acked as before, its next op applies.
    assert_eq!(answer(&mut live, &live_seq1).await, Ok(5));
    assert_eq!(answer(&mut live, &op(105, 2, 105, 0, "L")).await, Ok(106));
    // An evicted writer that resyncs (a snapshot at the head) writes again from seq 1.
    let len = w1.client().text().len_chars();
    let rev = w1.client().revision();
    assert!(rev >= 105, "{rev}");
    assert!(answer(&mut w1, &op(rev, 1, len, len, "z")).await.is_ok());
    let after = doc_state(addr, "doc").await.unwrap();
    assert_eq!(after.1, format!("Labcde{}z", "f".repeat(100)));

    // The horizon is stored with the dedup table (snapshot every 50): it
    // survives a restart.
    w1.close().await.unwrap();
    w2.close().await.unwrap();
    live.close().await.unwrap();
    server.stop().unwrap();
    let server = attack_server(dir.path(), &FLAGS).await.unwrap();
    let mut w2 = WsClient::join(server.addr, "doc", "w2").await.unwrap();
    assert_eq!(
        answer(&mut w2, &w2_ops[1]).await,
        Err(ErrorCode::ClientExpired)
    );
    assert_eq!(doc_state(server.addr, "doc").await.unwrap(), after);
    server.stop().unwrap();
}
