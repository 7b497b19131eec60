//! Replaying the conflict journal against a real server process on loopback:
//! `POST /api/admin/docs/{doc}/conflicts/replay` recomputes every journaled
//! resolution from the stored ops; under the rule in force nothing differs,
//! under the other tie rule the resolutions that depend on it are listed, a
//! resolution altered in storage (the server stopped, the row changed, the
//! server started again) is reported, paging goes through every conflict,
//! and `ot-client conflicts replay DOC` says the same in words.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{
    free_port, ot_client_binary, server_binary, test_connect_options, ServerProcess, WsClient,
};
use ot_core::Operation;
use ot_driver::http::Method;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

async fn replay(addr: SocketAddr, query: &str) -> (u16, Value) {
    let path = format!("/api/admin/docs/tie/conflicts/replay{query}");
    let (status, text) = ot_driver::http::send(
        &addr.into(),
        Method::POST,
        &path,
        None,
        &test_connect_options(),
    )
    .await
    .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Two writers insert at the start of the document at once, `rounds` times:
/// every second op is transformed past the other's, at a tie.
async fn concurrent_inserts_at_one_place(addr: SocketAddr, rounds: usize) {
    let mut a = WsClient::join(addr, "tie", "a").await.unwrap();
    let mut b = WsClient::join(addr, "tie", "b").await.unwrap();
    for i in 0..rounds {
        for (c, what) in [(&mut a, format!("a{i}")), (&mut b, format!("b{i}"))] {
            let len = c.client().text().chars().count();
            c.edit(&Operation::insert_at(len, 0, &what).unwrap())
                .await
                .unwrap();
        }
        for c in [&mut a, &mut b] {
            c.pump_until(T, |c| c.client().all_saved()).await.unwrap();
        }
    }
    let last = 2 * rounds as u64;
    for c in [&mut a, &mut b] {
        c.pump_until(T, |c| c.client().revision() == last)
            .await
            .unwrap();
    }
    let (text_a, text_b) = (a.client().text().to_string(), b.client().text().to_string());
    assert_eq!(text_a, text_b);
}

/// `ot-client conflicts replay tie` with `extra` arguments: whether it
/// succeeded, and what it printed.
fn replay_with_ot_client(addr: SocketAddr, extra: &[&str]) -> (bool, String) {
    let out = Command::new(ot_client_binary().unwrap())
        .args([
            "--server",
            &format!("ws://{addr}"),
            "conflicts",
            "replay",
            "tie",
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn alter_a_stored_resolution(data: &Path, rev: u64) {
    let db = rusqlite::Connection::open(data.join("ot.sqlite3")).unwrap();
    let applied: String = db
        .query_row(
            "SELECT applied FROM ops WHERE doc = 'tie' AND rev = ?1",
            [rev as i64],
            |row| row.get(0),
        )
        .unwrap();
    let op = Operation::from_json(&applied).unwrap();
    // The same lengths, another effect: the insert moved to the end.
    let inserted: String = op
        .components()
        .iter()
        .filter_map(|c| match c {
            ot_core::Component::Insert(s) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    let base = op.base_len();
    let mut moved = Operation::new();
    moved.retain(base).insert(&inserted);
    assert_ne!(moved, op);
    let changed = db
        .execute(
            "UPDATE ops SET applied = ?1 WHERE doc = 'tie' AND rev = ?2",
            rusqlite::params![moved.to_json(), rev as i64],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test]
async fn replaying_the_journal_checks_every_resolution_and_finds_what_differs() {
    let bin = server_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = ServerProcess::start(&bin, dir.path(), port, &[])
        .await
        .unwrap();
    let addr = server.addr;
    concurrent_inserts_at_one_place(addr, 12).await;

    let (_, journal) = e2e_tests::http_get_json(addr, "/api/docs/tie/conflicts")
        .await
        .unwrap();
    let conflicts: Vec<u64> = journal["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rev"].as_u64().unwrap())
        .collect();
    assert!(
        conflicts.len() >= 6,
        "too few conflicts to test with: {conflicts:?}"
    );

    // The rule in force: every resolution recomputes to what was stored.
    let (status, same) = replay(addr, "").await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["checked"], conflicts.len());
    assert_eq!(same["tie"], "same");
    assert_eq!(same["differ"], serde_json::json!([]));
    assert_eq!(same["next"], Value::Null);

    // The other tie rule: every one of these conflicts is a tie at 0.
    let (_, other) = replay(addr, "?tie=other").await;
    let changed: Vec<u64> = other["differ"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["rev"].as_u64().unwrap())
        .collect();
    assert_eq!(changed, conflicts);
    for d in other["differ"].as_array().unwrap() {
        assert_ne!(d["recomputed"], d["applied"]);
    }

    // Paging: two at a time, every conflict once.
    let mut seen = Vec::new();
    let mut from = 0;
    for _ in 0..conflicts.len() {
        let (_, page) = replay(addr, &format!("?tie=other&limit=2&from={from}")).await;
        seen.extend(
            page["differ"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["rev"].as_u64().unwrap()),
        );
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, conflicts);

    // Bad input: a typed error, and nothing else happens.
    let (status, bad) = replay(addr, "?tie=sideways").await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_query")));
    let (status, _) = ot_driver::http::send(
        &addr.into(),
        Method::POST,
        "/api/admin/docs/nope/conflicts/replay",
        None,
        &test_connect_options(),
    )
    .await
    .unwrap();
    assert_eq!(status, 404);

    // A resolution altered in storage is found, and only that one.
    server.terminate(T).unwrap();
    let altered = conflicts[2];
    alter_a_stored_resolution(dir.path(), altered);
    let server = ServerProcess::start(&bin, dir.path(), port, &[])
        .await
        .unwrap();
    let (_, found) = replay(addr, "").await;
    let differ = found["differ"].as_array().unwrap();
    assert_eq!(differ.len(), 1, "{found}");
    assert_eq!(differ[0]["rev"], altered);
    assert_ne!(differ[0]["recomputed"], differ[0]["applied"]);

    // The terminal client says the same.
    let (success, stdout) = replay_with_ot_client(addr, &[]);
    assert!(!success, "a differing resolution is a failure: {stdout}");
    assert!(stdout.contains(&format!("revision {altered}")), "{stdout}");
    assert!(
        stdout.contains(&format!("{} conflicts checked, 1 differs", conflicts.len())),
        "{stdout}"
    );
    let (success, stdout) = replay_with_ot_client(addr, &["--tie", "other"]);
    let (_, other_now) = replay(addr, "?tie=other").await;
    let would_change = other_now["differ"].as_array().unwrap().len();
    assert!(success, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{} conflicts checked, {would_change} differ under the other tie rule",
            conflicts.len()
        )),
        "{stdout}"
    );
    server.stop().unwrap();
}
