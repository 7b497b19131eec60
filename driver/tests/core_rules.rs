//! The session core's rules, frame by frame, without I/O: durability before
//! sending, resume and resend, the error rule, the close rule and the
//! reading rules for frames from later servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use ot_core::Operation;
use ot_driver::{CloseAction, Event, SessionCore};
use ot_protocol::{ClientMessage, DocId};
use serde_json::{json, Value};

fn core() -> SessionCore {
    SessionCore::new(DocId::parse("notes").unwrap(), "me")
}

fn snapshot(rev: u64, text: &str, seq: u64) -> String {
    json!({"type":"snapshot","rev":rev,"text":text,"client":"me","seq":seq,"epoch":1,
           "limits":{"max_doc_len":1000,"max_op_len":100,"max_message_bytes":4096}})
    .to_string()
}

/// A synced, connected core with one op outstanding (sent and confirmed).
fn with_outstanding() -> (SessionCore, String) {
    let mut c = core();
    c.on_open();
    c.receive(&snapshot(3, "abc", 0));
    c.local_edit(&Operation::from_json(r#"[3,"d"]"#).unwrap(), None)
        .unwrap();
    c.confirm_durable(c.version());
    let sent = c.poll_transmit().expect("the op is sent");
    assert_eq!(c.poll_transmit(), None);
    (c, sent)
}

fn sent_message(text: &str) -> ClientMessage {
    ClientMessage::parse(text).unwrap()
}

fn disconnected(events: &[Event]) -> Option<CloseAction> {
    events.iter().find_map(|e| match e {
        Event::Disconnected { action, .. } => Some(*action),
        _ => None,
    })
}

#[test]
fn an_op_leaves_only_after_its_state_is_durable() {
    let mut c = core();
    c.on_open();
    c.receive(&snapshot(0, "", 0));
    c.confirm_durable(c.version());
    c.local_edit(&Operation::from_json(r#"["x"]"#).unwrap(), None)
        .unwrap();
    assert!(c.needs_save());
    assert_eq!(c.poll_transmit(), None, "sent before it was saved");
    let v = c.version();
    c.confirm_durable(v - 1);
    assert_eq!(c.poll_transmit(), None, "an older state does not count");
    c.confirm_durable(v);
    let sent = sent_message(&c.poll_transmit().unwrap());
    assert!(matches!(sent, ClientMessage::Op { rev: 0, seq: 1, .. }));
    assert!(!c.needs_save());
}

#[test]
fn confirmations_may_come_late_and_for_several_states_at_once() {
    let mut c = core();
    c.on_open();
    c.receive(&snapshot(0, "", 0));
    c.local_edit(&Operation::from_json(r#"["a"]"#).unwrap(), None)
        .unwrap();
    c.local_edit(&Operation::from_json(r#"[1,"b"]"#).unwrap(), None)
        .unwrap();
    assert_eq!(c.poll_transmit(), None);
    c.confirm_durable(c.version());
    assert!(c.poll_transmit().is_some());
    // The second edit is buffered behind the outstanding op.
    assert_eq!(c.poll_transmit(), None);
    c.receive(r#"{"type":"ack","rev":1,"seq":1}"#);
    assert_eq!(
        c.poll_transmit(),
        None,
        "the buffer's state is not saved yet"
    );
    c.confirm_durable(c.version());
    let sent = sent_message(&c.poll_transmit().unwrap());
    assert!(matches!(sent, ClientMessage::Op { rev: 1, seq: 2, .. }));
}

#[test]
fn storage_error_on_the_outstanding_op_reconnects_and_resends_it_byte_for_byte() {
    let (mut c, sent) = with_outstanding();
    let events = c.receive(r#"{"type":"error","code":"storage_error","message":"disk","seq":1}"#);
    assert_eq!(disconnected(&events), Some(CloseAction::Reconnect));
    assert!(!events.iter().any(|e| matches!(e, Event::ConflictCopy(_))));
    assert!(!c.is_connected());
    assert_eq!(
        c.connect_path(),
        "/ws/notes?client=me&batch=1&rev=3&epoch=1"
    );
    c.on_open();
    c.receive(r#"{"type":"resume","rev":3,"head":3,"client":"me","seq":0,"epoch":1,"limits":{"max_doc_len":1000,"max_op_len":100}}"#);
    c.confirm_durable(c.version());
    assert_eq!(c.poll_transmit().as_deref(), Some(sent.as_str()));
}

#[test]
fn any_other_error_on_the_outstanding_op_keeps_a_conflict_copy_and_resyncs() {
    for code in [
        "op_does_not_fit",
        "seq_reused",
        "a_code_from_a_later_server",
    ] {
        let (mut c, _) = with_outstanding();
        let events =
            c.receive(&json!({"type":"error","code":code,"message":"no","seq":1}).to_string());
        assert!(
            events.contains(&Event::ConflictCopy("abcd".into())),
            "{code}: {events:?}"
        );
        assert_eq!(disconnected(&events), Some(CloseAction::Reconnect));
        assert!(c.resyncing());
        assert_eq!(c.connect_path(), "/ws/notes?client=me&batch=1", "{code}");
        c.on_open();
        c.receive(&snapshot(4, "abcX", 0));
        assert_eq!(c.client().text().to_string(), "abcX");
        assert!(c.client().all_saved());
        assert!(!c.resyncing());
    }
}

#[test]
fn a_deleted_document_keeps_unsent_edits_as_a_conflict_copy_and_resyncs() {
    // 4004 with an op outstanding, and another edit made while offline.
    let (mut c, _) = with_outstanding();
    let event = c.on_closed(Some(4004), "deleted");
    assert_eq!(disconnected(&[event]), Some(CloseAction::Resync));
    assert!(c.resyncing());
    c.local_edit(&Operation::from_json(r#"[4,"e"]"#).unwrap(), None)
        .unwrap();
    c.confirm_durable(c.version());
    assert_eq!(
        c.connect_path(),
        "/ws/notes?client=me&batch=1",
        "no rev, no epoch"
    );
    // A restart from the saved state still resyncs.
    let mut c = SessionCore::restore(DocId::parse("notes").unwrap(), c.state()).unwrap();
    assert_eq!(c.connect_path(), "/ws/notes?client=me&batch=1");
    c.on_open();
    assert_eq!(
        c.poll_transmit(),
        None,
        "nothing is sent before the snapshot"
    );
    let events = c.receive(&snapshot(0, "", 0));
    assert!(
        events.contains(&Event::ConflictCopy("abcde".into())),
        "{events:?}"
    );
    assert_eq!(c.client().text().to_string(), "");
    assert!(c.client().all_saved());
    assert_eq!(
        c.poll_transmit(),
        None,
        "the old op never reaches the new document"
    );
    assert!(!c.resyncing());

    // With nothing unsent: a resync without a copy.
    let mut c = core();
    c.on_open();
    c.receive(&snapshot(3, "abc", 0));
    c.on_closed(Some(4004), "deleted");
    assert_eq!(c.connect_path(), "/ws/notes?client=me&batch=1");
    c.on_open();
    let events = c.receive(&snapshot(0, "", 0));
    assert!(!events.iter().any(|e| matches!(e, Event::ConflictCopy(_))));
    assert_eq!(c.client().text().to_string(), "");
}

#[test]
fn an_error_naming_another_seq_or_none_changes_nothing() {
    for frame in [
        r#"{"type":"error","code":"bad_seq","message":"stale","seq":7}"#,
        r#"{"type":"error","code":"storage_error","message":"stale","seq":0}"#,
        r#"{"type":"error","code":"invalid_message","message":"x"}"#,
    ] {
        let (mut c, _) = with_outstanding();
        let before = c.state();
        let events = c.receive(frame);
        assert!(
            matches!(events.as_slice(), [Event::ServerError { .. }]),
            "{frame}: {events:?}"
        );
        assert!(c.is_connected());
        assert_eq!(c.state(), before);
    }
}

#[test]
fn close_codes_say_whether_to_come_back() {
    let cases = [
        (Some(4009), CloseAction::Stop),
        (Some(1007), CloseAction::Stop),
        (Some(4008), CloseAction::Reconnect),
        (Some(1001), CloseAction::Reconnect),
        (Some(4321), CloseAction::Reconnect),
        (None, CloseAction::Reconnect),
    ];
    for (code, action) in cases {
        let (mut c, _) = with_outstanding();
        let event = c.on_closed(code, "bye");
        assert_eq!(disconnected(&[event]), Some(action), "{code:?}");
        assert!(!c.is_connected());
        assert_eq!(c.poll_transmit(), None);
    }
}

#[test]
fn frames_from_later_servers_are_read_by_the_rules() {
    let (mut c, _) = with_outstanding();
    let before = c.state();
    assert!(c
        .receive(r#"{"type":"presence_v2","who":["x"]}"#)
        .is_empty());
    assert_eq!(c.state(), before);
    // An extra field does not stop the ack from counting.
    let events = c.receive(r#"{"type":"ack","rev":4,"seq":1,"node":"eu-1"}"#);
    assert_eq!(events, vec![Event::Acked]);
    assert!(c.client().all_saved());
}

#[test]
fn an_unsafe_integer_is_refused_not_rounded() {
    let (mut c, _) = with_outstanding();
    let before = c.state();
    let events = c.receive(r#"{"type":"ack","rev":9007199254740993,"seq":1}"#);
    assert_eq!(disconnected(&events), Some(CloseAction::Reconnect));
    assert_eq!(c.state(), before);
}

#[test]
fn the_announced_limits_size_the_next_connection() {
    let mut c = core();
    assert_eq!(c.limits(), None);
    c.on_open();
    c.receive(&snapshot(0, "", 0));
    let limits = c.limits().unwrap();
    assert_eq!(limits.max_message_bytes, 4096);
    let config = ot_driver::socket_config(&limits);
    assert_eq!(
        config.max_message_size,
        Some(limits.max_server_frame_bytes())
    );
    assert!(limits.max_server_frame_bytes() >= 6 * 1000);
}

#[test]
fn a_cursor_waits_for_nothing_but_follows_ops_in_order() {
    let mut c = core();
    c.set_name(Some("Ann".into()));
    c.on_open();
    c.receive(&snapshot(0, "ab", 0));
    c.set_cursor(vec![ot_core::Range::cursor(1)], false);
    let sent: Value = serde_json::from_str(&c.poll_transmit().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"type":"cursor","rev":0,"ranges":[[1,1]],"name":"Ann"})
    );
    // Unchanged: not sent again unless asked.
    c.set_cursor(vec![ot_core::Range::cursor(1)], false);
    assert_eq!(c.poll_transmit(), None);
    c.set_cursor(vec![ot_core::Range::cursor(1)], true);
    assert!(c.poll_transmit().is_some());
}

#[test]
fn a_snapshot_without_its_text_is_unreadable_not_an_empty_document() {
    let (mut c, _) = with_outstanding();
    let before = c.state();
    let events = c.receive(
        r#"{"type":"snapshot","rev":9,"client":"me","seq":0,"epoch":1,"limits":{"max_doc_len":10,"max_op_len":10}}"#,
    );
    assert_eq!(disconnected(&events), Some(CloseAction::Reconnect));
    assert_eq!(c.state(), before);
    assert_eq!(c.client().text().to_string(), "abcd");
}

#[test]
fn a_key_is_presented_only_once_a_state_holding_it_is_durable() {
    // A new writer: its key is sent only after the first save.
    let mut c = core();
    assert!(c.needs_save());
    assert_eq!(c.client_key(), None);
    c.confirm_durable(c.version());
    let key = c.client_key().cloned().expect("saved: presented");
    assert_eq!(c.state().client_key.as_ref(), Some(&key));

    // A state saved with its key keeps it, presented at once.
    let restored = SessionCore::restore(DocId::parse("notes").unwrap(), c.state()).unwrap();
    assert_eq!(restored.client_key(), Some(&key));
    assert!(!restored.needs_save());

    // A state saved before keys loads (serde default), gets a new key, and
    // presents it only after that state was saved.
    let mut json = serde_json::to_value(c.state()).unwrap();
    json.as_object_mut().unwrap().remove("client_key");
    let old: ot_driver::SessionState = serde_json::from_value(json).unwrap();
    assert_eq!(old.client_key, None);
    let mut upgraded = SessionCore::restore(DocId::parse("notes").unwrap(), old).unwrap();
    assert!(upgraded.needs_save());
    assert_eq!(upgraded.client_key(), None, "not saved yet: not sent");
    let new_key = upgraded.state().client_key.expect("a new key to save");
    assert_ne!(new_key, key);
    upgraded.confirm_durable(upgraded.version());
    assert_eq!(upgraded.client_key(), Some(&new_key));
    // The key never appears in the connect URL.
    assert!(!upgraded.connect_path().contains(new_key.as_str()));
}

#[test]
fn a_batch_is_handled_message_by_message_until_one_drops_the_connection() {
    // Another client's op, then this client's ack, in one frame.
    let (mut c, _) = with_outstanding();
    let batch = json!({"type":"batch","messages":[
        {"type":"op","rev":4,"op":["x",3],"client":"other","seq":1},
        {"type":"ack","rev":5,"seq":1},
        {"type":"cursor","client":"other","rev":5,"ranges":[[1,1]]},
    ]});
    let events = c.receive(&batch.to_string());
    assert!(
        events.iter().any(|e| matches!(e, Event::Acked)),
        "{events:?}"
    );
    assert!(c.client().all_saved());
    assert_eq!(c.client().revision(), 5);
    assert_eq!(c.client().text().to_string(), "xabcd");
    assert_eq!(disconnected(&events), None);

    // A refused op first: the session resyncs; the op after it in the same
    // frame belongs to the dropped connection and is not applied.
    let (mut c, _) = with_outstanding();
    let batch = json!({"type":"batch","messages":[
        {"type":"error","code":"op_does_not_fit","message":"no","seq":1},
        {"type":"op","rev":4,"op":["late",3],"client":"other","seq":1},
    ]});
    let events = c.receive(&batch.to_string());
    assert_eq!(disconnected(&events), Some(CloseAction::Reconnect));
    assert!(events.iter().any(|e| matches!(e, Event::ConflictCopy(_))));
    assert_eq!(
        c.client().revision(),
        3,
        "the op after the resync was not applied"
    );
}
