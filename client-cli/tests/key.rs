//! The writer key in `ot-client`'s saved state (PROTOCOL.md, "The writer
//! key"): a state file written before keys loads, gets a key saved at once
//! (before any connection could present it), and keeps it in later runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use client_cli::session::Session;
use client_cli::store::{SavedState, Store};
use ot_core::client::Client;
use ot_driver::{ServerUrl, SessionState};

#[test]
fn a_state_saved_before_keys_gets_a_key_that_is_kept() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::new(data.path());
    // Nothing listens here: opening a session does not connect.
    let url = ServerUrl::parse("ws://127.0.0.1:9").unwrap();
    let (slot, saved) = store
        .acquire(&url.ws(), "notes", Some("old-writer"))
        .unwrap();
    assert!(saved.is_none());
    let mut old = serde_json::to_value(SavedState {
        version: 1,
        server: url.ws(),
        doc: "notes".into(),
        session: SessionState {
            epoch: Some(1),
            synced: true,
            resync: None,
            client: Client::new("old-writer", 2, "hi", 2).state(),
            client_key: None,
        },
    })
    .unwrap();
    old.as_object_mut().unwrap().remove("client_key");
    std::fs::write(slot.path(), serde_json::to_vec(&old).unwrap()).unwrap();
    drop(slot);

    let session = Session::open(store.clone(), url.clone(), "notes", None, None).unwrap();
    assert_eq!(session.client_id(), "old-writer", "the old slot is reused");
    drop(session);
    let (slot, saved) = store
        .acquire(&url.ws(), "notes", Some("old-writer"))
        .unwrap();
    let key = saved
        .unwrap()
        .session
        .client_key
        .expect("saved with a key when opened");
    drop(slot);

    let session = Session::open(store.clone(), url, "notes", None, None).unwrap();
    drop(session);
    let (_slot, saved) = store
        .acquire("ws://127.0.0.1:9", "notes", Some("old-writer"))
        .unwrap();
    assert_eq!(saved.unwrap().session.client_key, Some(key), "kept");
}
