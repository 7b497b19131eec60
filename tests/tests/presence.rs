//! Presence: cursors reach the other clients, mapped through later ops;
//! ranges attached to an op follow the op; joiners get the current cursors;
//! `leave` when a client goes away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use e2e_tests::{recv_message, start_server, ws_connect, WsClient};
use ot_core::{Operation, Range};
use ot_protocol::{ClientMessage, ServerMessage};

const T: Duration = Duration::from_secs(20);

/// A cursor message: `ranges` at revision `rev`, with `name` if given.
fn cursor(rev: u64, ranges: &[(usize, usize)], name: Option<&str>) -> ClientMessage {
    ClientMessage::Cursor {
        rev,
        ranges: ranges.iter().map(|&r| Range::from(r)).collect(),
        name: name.map(str::to_owned),
    }
}

/// The cursor message the others receive: `client`'s `ranges` at revision
/// `rev`, with `name` if given.
fn cursor_of(
    client: &str,
    rev: u64,
    ranges: &[(usize, usize)],
    name: Option<&str>,
) -> ServerMessage<'static> {
    ServerMessage::Cursor {
        client: client.to_owned().into(),
        rev,
        ranges: ranges
            .iter()
            .map(|&r| Range::from(r))
            .collect::<Vec<_>>()
            .into(),
        name: name.map(|n| n.to_owned().into()),
    }
}

/// The `leave` message for `client`.
fn leave_of(client: &str) -> ServerMessage<'static> {
    ServerMessage::Leave {
        client: client.to_owned().into(),
    }
}

/// The client id of a cursor (empty for other messages), to sort by.
fn cursor_client(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Cursor { client, .. } => client.to_string(),
        _ => String::new(),
    }
}

/// A and B on `doc` holding "hello world" at revision 1 (written by B).
async fn two_clients(addr: SocketAddr, doc: &str) -> (WsClient, WsClient) {
    let mut b = WsClient::join(addr, doc, "bob").await.unwrap();
    b.edit(&Operation::insert_at(0, 0, "hello world").unwrap())
        .await
        .unwrap();
    b.settle_to(1, T).await.unwrap();
    let a = WsClient::join(addr, doc, "ann").await.unwrap();
    assert_eq!(a.text(), "hello world");
    (a, b)
}

/// Join `doc` without a state machine; returns the socket and the first message.
async fn raw_join(addr: SocketAddr, path: &str) -> (e2e_tests::Socket, ServerMessage<'static>) {
    let mut socket = ws_connect(addr, path).await.unwrap();
    let first = recv_message(&mut socket, T).await.unwrap();
    (socket, first)
}

async fn expect_quiet(socket: &mut e2e_tests::Socket) {
    if let Ok(event) = e2e_tests::next_event(socket, Duration::from_millis(300)).await {
        panic!("expected nothing, got {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_reaches_others_and_is_mapped_through_later_ops() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let (mut a, mut b) = two_clients(addr, "cursors").await;

    // A selects "world".
    a.send(&cursor(1, &[(6, 11)], Some("Ann"))).await.unwrap();
    assert_eq!(
        b.recv_message(T).await.unwrap(),
        cursor_of("ann", 1, &[(6, 11)], Some("Ann"))
    );
    a.expect_quiet(Duration::from_millis(200)).await.unwrap(); // not echoed

    // B inserts before A's selection: A's selection moves right on the server.
    b.edit(&Operation::insert_at(11, 0, ">> ").unwrap())
        .await
        .unwrap();
    b.settle_to(2, T).await.unwrap();
    let (mut c, first) = raw_join(addr, "/ws/cursors?client=carol").await;
    assert!(
        matches!(first, ServerMessage::Snapshot { rev: 2, .. }),
        "{first:?}"
    );
    assert_eq!(
        recv_message(&mut c, T).await.unwrap(),
        cursor_of("ann", 2, &[(9, 14)], Some("Ann"))
    );
    expect_quiet(&mut c).await;

    // An insert exactly at the selection's start and end: positions at an insert
    // point move after the inserted text (the ot.js rule).
    b.edit(&Operation::insert_at(14, 9, "[").unwrap())
        .await
        .unwrap();
    b.settle_to(3, T).await.unwrap();
    b.edit(&Operation::insert_at(15, 15, "]").unwrap())
        .await
        .unwrap();
    b.settle_to(4, T).await.unwrap();
    assert_eq!(b.text(), ">> hello [world]");
    let (mut d, first) = raw_join(addr, "/ws/cursors?client=dave").await;
    assert!(
        matches!(first, ServerMessage::Snapshot { rev: 4, .. }),
        "{first:?}"
    );
    assert_eq!(
        recv_message(&mut d, T).await.unwrap(),
        cursor_of("ann", 4, &[(10, 16)], Some("Ann"))
    );

    // A delete covering the selection's start collapses it onto the delete point.
    b.edit(&Operation::delete_range(16, 0, 12).unwrap())
        .await
        .unwrap();
    b.settle_to(5, T).await.unwrap();
    assert_eq!(b.text(), "rld]");
    let (mut e, _) = raw_join(addr, "/ws/cursors?client=erin").await;
    assert_eq!(
        recv_message(&mut e, T).await.unwrap(),
        cursor_of("ann", 5, &[(0, 4)], Some("Ann"))
    );
    expect_quiet(&mut e).await;
    server.stop().await.unwrap();
}

/// A cursor sent at an older revision is mapped to the current one; one past
/// the end is clamped; the name is kept (truncated to 64 chars) until changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_at_an_older_revision_is_mapped_and_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let (mut a, mut b) = two_clients(addr, "old-cursor").await;
    // B inserts at the start; A has not read it and sends a cursor at revision 1.
    b.edit(&Operation::insert_at(11, 0, "XX").unwrap())
        .await
        .unwrap();
    b.settle_to(2, T).await.unwrap();
    let long_name = "n".repeat(100);
    a.send(&cursor(1, &[(6, 6), (0, 11)], Some(&long_name)))
        .await
        .unwrap();
    assert_eq!(
        b.recv_message(T).await.unwrap(),
        cursor_of("ann", 2, &[(8, 8), (2, 13)], Some(&"n".repeat(64)))
    );
    // Past the end: clamped to the end. Without a name: the last name stays.
    a.send(&cursor(2, &[(100, 5)], None)).await.unwrap();
    assert_eq!(
        b.recv_message(T).await.unwrap(),
        cursor_of("ann", 2, &[(13, 5)], Some(&"n".repeat(64)))
    );
    // Without any name: no name field.
    b.send(&cursor(2, &[(0, 0)], None)).await.unwrap();
    let mut got = None;
    while got.is_none() {
        let message = a.recv_message(T).await.unwrap();
        if matches!(message, ServerMessage::Cursor { .. }) {
            got = Some(message);
        } else {
            a.handle_message(message).await.unwrap();
        }
    }
    assert_eq!(got.unwrap(), cursor_of("bob", 2, &[(0, 0)], None));
    server.stop().await.unwrap();
}

/// Ranges attached to an op are mapped through the concurrent ops the op was
/// transformed past, and broadcast after the op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_attached_to_an_op_follow_the_op() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let (mut a, mut b) = two_clients(addr, "op-ranges").await;
    // B's concurrent insert before A's edit is durable first (revision 2).
    b.edit(&Operation::insert_at(11, 0, "XYZ").unwrap())
        .await
        .unwrap();
    b.settle_to(2, T).await.unwrap();
    // A, still at revision 1, inserts "hi" after "hello" with its cursor after it.
    a.edit_with_ranges(
        &Operation::insert_at(11, 5, "hi").unwrap(),
        vec![Range::from((7, 7)), Range::from((0, 5))],
    )
    .await
    .unwrap();
    assert_eq!(a.client().outstanding().map(|o| o.base_rev), Some(1));
    let op = b.recv_message(T).await.unwrap();
    let mut expected_op = Operation::new();
    expected_op.retain(8).insert("hi").retain(6);
    assert_eq!(
        op,
        ServerMessage::Op {
            rev: 3,
            op: Cow::Owned(expected_op),
            client: "ann".into(),
            seq: 1
        }
    );
    b.handle_message(op).await.unwrap();
    assert_eq!(
        b.recv_message(T).await.unwrap(),
        cursor_of("ann", 3, &[(10, 10), (3, 8)], None)
    );
    assert_eq!(b.text(), "XYZhellohi world");
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    assert_eq!(a.text(), "XYZhellohi world");
    // A joiner gets the op's ranges as A's current cursor.
    let (mut c, first) = raw_join(addr, "/ws/op-ranges?client=carol").await;
    assert!(
        matches!(first, ServerMessage::Snapshot { rev: 3, .. }),
        "{first:?}"
    );
    assert_eq!(
        recv_message(&mut c, T).await.unwrap(),
        cursor_of("ann", 3, &[(10, 10), (3, 8)], None)
    );
    server.stop().await.unwrap();
}

/// A joiner gets every current cursor right after its snapshot; on a resume,
/// after the ops it missed (the cursors are at the head revision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_receives_current_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let (mut a, mut b) = two_clients(addr, "joiner").await;
    a.send(&cursor(1, &[(1, 1)], Some("Ann"))).await.unwrap();
    b.send(&cursor(1, &[(2, 3)], Some("Bob"))).await.unwrap();
    // Each sees the other's cursor, so both are registered.
    assert_eq!(cursor_client(&a.recv_message(T).await.unwrap()), "bob");
    assert_eq!(cursor_client(&b.recv_message(T).await.unwrap()), "ann");
    let expected = [
        cursor_of("ann", 1, &[(1, 1)], Some("Ann")),
        cursor_of("bob", 1, &[(2, 3)], Some("Bob")),
    ];
    let (mut c, first) = raw_join(addr, "/ws/joiner?client=carol").await;
    assert!(matches!(first, ServerMessage::Snapshot { .. }), "{first:?}");
    let mut got = vec![
        recv_message(&mut c, T).await.unwrap(),
        recv_message(&mut c, T).await.unwrap(),
    ];
    got.sort_by_key(cursor_client);
    assert_eq!(got, expected);
    expect_quiet(&mut c).await;

    // A resume from revision 0: the resume, the op, then the cursors.
    let (mut d, first) = raw_join(addr, "/ws/joiner?client=dave&rev=0").await;
    assert!(
        matches!(first, ServerMessage::Resume { head: 1, .. }),
        "{first:?}"
    );
    let op = recv_message(&mut d, T).await.unwrap();
    assert!(matches!(op, ServerMessage::Op { rev: 1, .. }), "{op:?}");
    let mut got = vec![
        recv_message(&mut d, T).await.unwrap(),
        recv_message(&mut d, T).await.unwrap(),
    ];
    got.sort_by_key(cursor_client);
    assert_eq!(got, expected);
    expect_quiet(&mut d).await;
    server.stop().await.unwrap();
}

/// `leave` goes to the others when a client closes its connection or the
/// connection is cut; a client that comes back is present again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_when_a_client_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let (mut a, mut b) = two_clients(addr, "leaving").await;
    a.send(&cursor(1, &[(0, 0)], None)).await.unwrap();
    let message = b.recv_message(T).await.unwrap();
    assert!(
        matches!(message, ServerMessage::Cursor { .. }),
        "{message:?}"
    );

    // A closes cleanly.
    a.close().await.unwrap();
    assert_eq!(b.recv_message(T).await.unwrap(), leave_of("ann"));
    // A comes back; a joiner no longer sees its old cursor.
    a.reconnect().await.unwrap();
    let (mut c, _) = raw_join(addr, "/ws/leaving?client=carol").await;
    expect_quiet(&mut c).await;
    // A's connection is cut (no close handshake).
    a.cut();
    assert_eq!(b.recv_message(T).await.unwrap(), leave_of("ann"));
    // Carol gets the same leave (her first message was the snapshot).
    assert_eq!(recv_message(&mut c, T).await.unwrap(), leave_of("ann"));
    b.expect_quiet(Duration::from_millis(200)).await.unwrap();
    server.stop().await.unwrap();
}
