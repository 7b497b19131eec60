//! A regional server (`server --upstream URL --node-id NAME`) as its users
//! see it, with real processes on loopback: a home, and a region that
//! reaches it through the suite's TCP proxy (50 ms each way). Writers type
//! at both; the region acknowledges its own writers' edits itself, also
//! while cut off from the home; after a 30-second partition heals, after a
//! kill -9 of the region and after one of the home, each with edits on their
//! way, both hold the same text and every edit appears exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::proxy::{Direction, Proxy};
use e2e_tests::{
    doc_state, free_port, http_get_json, metric_value, server_binary, ws_connect, ServerProcess,
    WsClient,
};
use ot_core::Operation;

const T: Duration = Duration::from_secs(30);

async fn start_region(bin: &Path, dir: &Path, port: u16, home: SocketAddr) -> ServerProcess {
    let upstream = format!("ws://{home}");
    ServerProcess::start(
        bin,
        dir,
        port,
        &["--upstream", &upstream, "--node-id", "eu"],
    )
    .await
    .unwrap()
}

/// A home process reached through a proxy (start the region against the
/// proxy's address): the proxy, the home's port and the home's flags (its
/// Host check admits the proxy's address; `extra` added), to restart it with.
async fn proxied_home(extra: &[&str]) -> (Proxy, u16, Vec<String>) {
    let home_port = free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{home_port}").parse().unwrap())
        .await
        .unwrap();
    let mut args = vec!["--allowed-host".to_owned(), proxy.addr().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    (proxy, home_port, args)
}

/// Start the home of [`proxied_home`].
async fn start_home(bin: &Path, dir: &Path, port: u16, args: &[String]) -> ServerProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start(bin, dir, port, &args).await.unwrap()
}

/// Type `text` at the start of `writer`'s document and wait for its ack.
async fn type_saved(writer: &mut WsClient, text: &str) {
    let len = writer.client().text().len_chars();
    let op = Operation::insert_at(len, 0, text).unwrap();
    writer.edit_saved(&op, T).await.unwrap();
}

/// Wait until the region's and the home's stored texts are equal and hold
/// every edit in `typed` exactly once; returns the text.
async fn converged(region: SocketAddr, home: SocketAddr, typed: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, at_home) = doc_state(home, "doc").await.unwrap();
        let (_, at_region) = doc_state(region, "doc").await.unwrap();
        let each_once = typed
            .iter()
            .all(|t| at_home.matches(t.as_str()).count() == 1);
        if at_home == at_region && each_once {
            return at_home;
        }
        assert!(
            Instant::now() < deadline,
            "not converged within 60 s:\n home:   {at_home:?}\n region: {at_region:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the region says every local op is at the home.
async fn fully_replicated(region: SocketAddr) {
    let deadline = Instant::now() + T;
    loop {
        let (_, replication) = http_get_json(region, "/api/docs/doc/replication")
            .await
            .unwrap();
        if replication["ops_waiting"] == 0
            && replication["connected"] == true
            && replication["replicated_rev"] == replication["rev"]
            && replication["oldest_waiting_ms"].is_null()
        {
            assert_eq!(
                metric_value(region, "ot_region_unreplicated_ops")
                    .await
                    .unwrap(),
                0.0
            );
            assert_eq!(
                metric_value(region, "ot_region_links_connected")
                    .await
                    .unwrap(),
                1.0
            );
            return;
        }
        assert!(Instant::now() < deadline, "not replicated: {replication}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_acks_while_cut_off_and_converges_after_a_partition_and_a_kill() {
    let bin = server_binary().unwrap();
    let home_dir = tempfile::tempdir().unwrap();
    let region_dir = tempfile::tempdir().unwrap();
    let (proxy, home_port, home_args) = proxied_home(&["--max-op-len", "64"]).await;
    let mut home = start_home(&bin, home_dir.path(), home_port, &home_args).await;
    proxy.set_latency(Direction::Both, Duration::from_millis(50));
    let region_port = free_port();
    let mut region = start_region(&bin, region_dir.path(), region_port, proxy.addr()).await;
    let mut typed: Vec<String> = Vec::new();

    let mut at_home = WsClient::join(home.addr, "doc", "home-writer")
        .await
        .unwrap();
    type_saved(&mut at_home, "<h0>").await;
    typed.push("<h0>".into());

    // First open: the region's writer starts from the home's text.
    let mut at_region = WsClient::join(region.addr, "doc", "region-writer")
        .await
        .unwrap();
    assert_eq!(at_region.text(), "<h0>");

    // Both type at the same place, interleaved.
    for i in 1..=8 {
        for (writer, side) in [(&mut at_region, "r"), (&mut at_home, "h")] {
            let text = format!("<{side}{i}>");
            type_saved(writer, &text).await;
            typed.push(text);
        }
    }
    converged(region.addr, home.addr, &typed).await;

    // A 30-second partition: the link goes silent (the region finds it dead
    // and its reconnects hang) while both sides type more than one op may
    // carry (`--max-op-len 64`).
    proxy.stall(Direction::Both);
    let partition = Instant::now();
    for i in 9..=20 {
        // Acknowledged by the region although the home cannot be reached.
        let text = format!("<r{i}:0123456789>");
        type_saved(&mut at_region, &text).await;
        typed.push(text);
        let text = format!("<h{i}:0123456789>");
        type_saved(&mut at_home, &text).await;
        typed.push(text);
    }
    let (_, home_text) = doc_state(home.addr, "doc").await.unwrap();
    assert!(
        !home_text.contains("<r9:"),
        "the home cannot have the region's edits during the partition"
    );
    // The region's writer is told its work is saved there, not yet at the home.
    assert!(at_region.core().awaiting_replication());
    // The region says what waits, and since when.
    let (status, replication) = http_get_json(region.addr, "/api/docs/doc/replication")
        .await
        .unwrap();
    assert_eq!(status, 200, "{replication}");
    assert!(
        replication["ops_waiting"].as_u64() > Some(0),
        "{replication}"
    );
    assert!(replication["oldest_waiting_ms"].is_u64(), "{replication}");
    assert!(
        replication["replicated_rev"].as_u64() < replication["rev"].as_u64(),
        "{replication}"
    );
    assert!(
        metric_value(region.addr, "ot_region_unreplicated_ops")
            .await
            .unwrap()
            > 0.0
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(partition.elapsed())).await;
    let (_, replication) = http_get_json(region.addr, "/api/docs/doc/replication")
        .await
        .unwrap();
    assert_eq!(
        replication["connected"], false,
        "silent for 30 s: {replication}"
    );
    proxy.resume(Direction::Both);
    converged(region.addr, home.addr, &typed).await;
    fully_replicated(region.addr).await;
    at_region
        .pump_until(T, |c| !c.core().awaiting_replication())
        .await
        .unwrap();

    // kill -9 of the region with its writer's edits acknowledged but (some)
    // not yet at the home: none is lost, none doubled.
    for i in 21..=26 {
        let text = format!("<r{i}>");
        type_saved(&mut at_region, &text).await;
        typed.push(text);
    }
    region.kill9();
    let region = start_region(&bin, region_dir.path(), region_port, proxy.addr()).await;
    // The writer reconnects (resuming) to the restarted region.
    at_region.reconnect().await.unwrap();
    at_region
        .pump_until(T, |c| c.client().all_saved())
        .await
        .unwrap();
    converged(region.addr, home.addr, &typed).await;

    // kill -9 of the home with the region's work on its way: resent once.
    for i in 27..=30 {
        let text = format!("<r{i}>");
        type_saved(&mut at_region, &text).await;
        typed.push(text);
    }
    home.kill9();
    let home = start_home(&bin, home_dir.path(), home_port, &home_args).await;
    at_home.reconnect().await.unwrap();
    let text = converged(region.addr, home.addr, &typed).await;
    fully_replicated(region.addr).await;
    let (status, _) = http_get_json(home.addr, "/api/docs/doc/replication")
        .await
        .unwrap();
    assert_eq!(status, 404, "a home replicates nowhere");

    // Conflicts are journaled at both levels: the region's ops transformed
    // past the home's writer at the home, the home writer's ops transformed
    // past the region's unsent work at the region.
    let (status, home_journal) = http_get_json(home.addr, "/api/docs/doc/conflicts")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let home_journal = home_journal["conflicts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        home_journal.iter().any(|c| c["client"] == "r-eu"),
        "{home_journal:?}"
    );
    let (status, region_journal) = http_get_json(region.addr, "/api/docs/doc/conflicts/upstream")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let region_journal = region_journal["conflicts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!region_journal.is_empty());
    for c in &region_journal {
        assert_eq!(c["author"], "home-writer", "{c}");
        assert_ne!(c["received"], c["applied"], "{c}");
        let (first, last, rev) = (
            c["transformed_past_local"][0].as_u64().unwrap(),
            c["transformed_past_local"][1].as_u64().unwrap(),
            c["rev"].as_u64().unwrap(),
        );
        assert!(first <= last && last < rev, "{c}");
    }
    let (status, _) = http_get_json(home.addr, "/api/docs/doc/conflicts/upstream")
        .await
        .unwrap();
    assert_eq!(status, 404, "a home has no upstream");
    journals_name_each_other(&home_journal, &region_journal);
    // Every op the home took from the link says which regional revisions
    // (and whose edits) it carries, without gaps or overlaps.
    let (_, home_ops) = http_get_json(home.addr, "/api/docs/doc/ops?limit=1000")
        .await
        .unwrap();
    let mut next_rev = 0;
    for op in home_ops["ops"].as_array().unwrap() {
        if op["client"] != "r-eu" {
            assert!(op.get("origin").is_none(), "{op}");
            continue;
        }
        let origin = &op["origin"];
        assert_eq!(origin["kind"], "region", "{op}");
        assert_eq!(origin["node"], "eu", "{op}");
        // Exact across the kills: the region keeps the authors of its
        // unacknowledged edits with its link.
        assert_eq!(
            origin["authors"],
            serde_json::json!(["region-writer"]),
            "{op}"
        );
        let (lo, hi) = (
            origin["revs"][0].as_u64().unwrap(),
            origin["revs"][1].as_u64().unwrap(),
        );
        assert!(lo > next_rev || (lo == hi && hi == next_rev), "{op}");
        next_rev = hi;
    }
    // At the region, each op of the home says which home revision it was.
    let (_, region_ops) = http_get_json(region.addr, "/api/docs/doc/ops?limit=1000")
        .await
        .unwrap();
    for op in region_ops["ops"].as_array().unwrap() {
        let origin = &op["origin"];
        if op["client"] == "region-writer" {
            assert!(origin.is_null(), "a local op: {op}");
        } else {
            assert_eq!(origin["kind"], "upstream", "{op}");
            assert!(origin["home_rev"].as_u64() > Some(0), "{op}");
        }
    }
    // Replaying both journals recomputes every resolution as stored.
    let (ok, out) = ot_client(home.addr, &["conflicts", "replay", "doc"]);
    assert!(ok, "{out}");
    assert!(
        out.ends_with(" 0 differ\n") && !out.starts_with("0 "),
        "{out}"
    );
    let (ok, out) = ot_client(region.addr, &["conflicts", "replay", "doc", "--upstream"]);
    assert!(ok, "{out}");
    assert!(
        out.ends_with(" 0 differ\n") && !out.starts_with("0 "),
        "{out}"
    );
    // A home has no journal of its own upstream to replay.
    let refused = std::process::Command::new(e2e_tests::ot_client_binary().unwrap())
        .args(["--server", &format!("ws://{}", home.addr)])
        .args(["conflicts", "replay", "doc", "--upstream"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("not a regional server")
            && stderr.contains("not_found"),
        "{stderr}"
    );
    // A stored resolution altered at the region is reported.
    let rev = region_journal[0]["rev"].as_u64().unwrap();
    alter_region_journal(&region_dir.path().join("ot.sqlite3"), rev);
    let (ok, out) = ot_client(region.addr, &["conflicts", "replay", "doc", "--upstream"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("regional revision {rev} (home revision"))
            && out.contains("1 differs"),
        "{out}"
    );

    // Both writers end with the same text.
    at_home.pump_until(T, |c| c.text() == text).await.unwrap();
    at_region.pump_until(T, |c| c.text() == text).await.unwrap();
}

/// Each entry of the region's journal (an op of the home transformed past
/// the region's unsent work) has its other side in the home's: the
/// region's op in flight then, sent with an origin covering some of those
/// regional revisions, transformed at the home past that home revision.
fn journals_name_each_other(
    home_journal: &[serde_json::Value],
    region_journal: &[serde_json::Value],
) {
    for c in region_journal {
        assert_eq!(c["node"], "eu", "{c}");
        assert!(!c["local"].as_array().unwrap().is_empty(), "{c}");
        let (first, last) = (
            c["transformed_past_local"][0].as_u64().unwrap(),
            c["transformed_past_local"][1].as_u64().unwrap(),
        );
        let home_rev = c["home_rev"].as_u64().unwrap();
        let other_side = home_journal.iter().find(|h| {
            let origin = &h["origin"];
            let (lo, hi) = (origin["revs"][0].as_u64(), origin["revs"][1].as_u64());
            let (past_lo, past_hi) = (
                h["transformed_past"][0].as_u64().unwrap(),
                h["transformed_past"][1].as_u64().unwrap(),
            );
            origin["node"] == "eu"
                && lo <= Some(last)
                && hi >= Some(first)
                && (past_lo..=past_hi).contains(&home_rev)
        });
        assert!(
            other_side.is_some(),
            "no entry at the home for {c}: {home_journal:?}"
        );
    }
}

/// `ot-client --server ws://ADDR ARGS…`: whether it succeeded, and its stdout.
fn ot_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(e2e_tests::ot_client_binary().unwrap())
        .args(["--server", &format!("ws://{addr}")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Change the stored result of the region's journal entry at `rev` (as
/// corruption or a changed merge rule would) while the region runs.
fn alter_region_journal(db: &Path, rev: u64) {
    let db = rusqlite::Connection::open(db).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let stored: String = db
        .query_row(
            "SELECT conflict FROM region_conflicts WHERE doc = 'doc' AND rev = ?1",
            [rev as i64],
            |row| row.get(0),
        )
        .unwrap();
    let mut conflict: serde_json::Value = serde_json::from_str(&stored).unwrap();
    // The same lengths, another effect: what the home's op inserted goes
    // in front of everything.
    let applied = Operation::from_json_value(&conflict["applied"]).unwrap();
    let inserted: String = applied
        .components()
        .iter()
        .filter_map(|c| match c {
            ot_core::Component::Insert(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let deleted = applied.base_len() - (applied.target_len() - inserted.chars().count());
    assert_eq!(deleted, 0, "the home writer only inserts");
    let mut moved = Operation::new();
    moved.insert(&inserted).retain(applied.base_len());
    if moved == applied {
        moved = Operation::new();
        moved.retain(applied.base_len()).insert(&inserted);
    }
    conflict["applied"] = serde_json::to_value(&moved).unwrap();
    db.execute(
        "UPDATE region_conflicts SET conflict = ?1 WHERE doc = 'doc' AND rev = ?2",
        rusqlite::params![conflict.to_string(), rev as i64],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_open_is_refused_with_1011_while_the_home_is_unreachable() {
    let bin = server_binary().unwrap();
    let home_dir = tempfile::tempdir().unwrap();
    let region_dir = tempfile::tempdir().unwrap();
    let home_port = free_port();
    let home_addr: SocketAddr = format!("127.0.0.1:{home_port}").parse().unwrap();
    let region = start_region(&bin, region_dir.path(), free_port(), home_addr).await;

    let mut socket = ws_connect(region.addr, "/ws/doc?client=w1").await.unwrap();
    let message = e2e_tests::recv_json(&mut socket, T).await.unwrap();
    assert_eq!(message["type"], "error", "{message}");
    let text = message["message"].as_str().unwrap_or_default();
    assert!(text.contains("home"), "{text}");
    let mut w1 = WsClient::new(region.addr, "doc", "w1");
    let _ = w1.reconnect().await;
    assert!(!w1.synced(), "never served as an empty document");

    // Once the home is up, the same join is served from its copy.
    let home = ServerProcess::start(&bin, home_dir.path(), home_port, &[])
        .await
        .unwrap();
    let mut at_home = WsClient::join(home.addr, "doc", "home-writer")
        .await
        .unwrap();
    type_saved(&mut at_home, "from the home").await;
    let w1 = WsClient::join(region.addr, "doc", "w1").await.unwrap();
    assert_eq!(w1.text(), "from the home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_region_with_the_same_node_id_is_refused_by_the_home() {
    let bin = server_binary().unwrap();
    let home_dir = tempfile::tempdir().unwrap();
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let home = ServerProcess::start(&bin, home_dir.path(), free_port(), &[])
        .await
        .unwrap();
    let first = start_region(&bin, first_dir.path(), free_port(), home.addr).await;
    let w1 = WsClient::join(first.addr, "doc", "w1").await.unwrap();
    assert_eq!(w1.text(), "");

    // Another data dir, the same node id: its link has another writer key.
    let second = start_region(&bin, second_dir.path(), free_port(), home.addr).await;
    let mut socket = ws_connect(second.addr, "/ws/doc?client=w2").await.unwrap();
    let message = e2e_tests::recv_json(&mut socket, T).await.unwrap();
    assert_eq!(message["type"], "error", "{message}");
    let text = message["message"].as_str().unwrap_or_default();
    assert!(text.contains("403"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_deleted_at_the_home_is_deleted_at_the_region_and_its_unsent_work_kept() {
    let bin = server_binary().unwrap();
    let home_dir = tempfile::tempdir().unwrap();
    let region_dir = tempfile::tempdir().unwrap();
    let (proxy, home_port, home_args) = proxied_home(&[]).await;
    let proxy_host = proxy.addr().to_string();
    let home = start_home(&bin, home_dir.path(), home_port, &home_args).await;
    let region = start_region(&bin, region_dir.path(), free_port(), proxy.addr()).await;
    let mut writer = WsClient::join(region.addr, "doc", "w").await.unwrap();
    type_saved(&mut writer, "<shared>").await;
    converged(region.addr, home.addr, &["<shared>".to_owned()]).await;

    // Cut off, the region takes an edit the home will never see.
    proxy.stall(Direction::Both);
    type_saved(&mut writer, "<unsent>").await;
    let delete = |addr: SocketAddr| async move {
        ot_driver::http::send(
            &addr.into(),
            ot_driver::http::Method::DELETE,
            "/api/admin/docs/doc",
            None,
            &ot_driver::ConnectOptions::default(),
        )
        .await
        .unwrap()
    };
    let (status, body) = delete(home.addr).await;
    assert_eq!(status, 200, "{body}");
    // Deleting is the home's.
    let (status, body) = delete(region.addr).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&home.addr.to_string()) || body.contains(&proxy_host),
        "{body}"
    );

    // Healed: the region follows the delete, its writer resyncs to the
    // home's (new, empty) document, and the work the home never had is kept.
    proxy.resume(Direction::Both);
    let closed = writer.expect_close(Duration::from_secs(60)).await.unwrap();
    assert_eq!(closed.map(|(code, _)| code), Some(4004));
    writer.reconnect().await.unwrap();
    assert_eq!(writer.text(), "");
    let (_, at_region) = doc_state(region.addr, "doc").await.unwrap();
    assert_eq!(at_region, "");
    let (status, copies) = e2e_tests::http_get_json(region.addr, "/api/docs/doc/copies")
        .await
        .unwrap();
    assert_eq!(status, 200, "{copies}");
    let copies = copies["copies"].as_array().cloned().unwrap_or_default();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let text = copies[0]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("<unsent>") && text.contains("<shared>"),
        "{text}"
    );

    // Writing goes on, replicated to the new document at the home.
    type_saved(&mut writer, "<after>").await;
    converged(region.addr, home.addr, &["<after>".to_owned()]).await;
}

/// Copy the directory `from` to `to` (a backup of a stopped server's data).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_restored_from_an_older_copy_of_its_data_starts_again_from_the_home() {
    let bin = server_binary().unwrap();
    let home_dir = tempfile::tempdir().unwrap();
    let region_dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let home = ServerProcess::start(&bin, home_dir.path(), free_port(), &[])
        .await
        .unwrap();
    let port = free_port();
    let mut region = start_region(&bin, region_dir.path(), port, home.addr).await;
    let mut writer = WsClient::join(region.addr, "doc", "w").await.unwrap();
    type_saved(&mut writer, "<a>").await;
    converged(region.addr, home.addr, &["<a>".to_owned()]).await;

    // A backup of the region's data now; then more work reaches the home.
    region.kill9();
    copy_dir(region_dir.path(), backup.path());
    let mut region = start_region(&bin, region_dir.path(), port, home.addr).await;
    writer.reconnect().await.unwrap();
    type_saved(&mut writer, "<b>").await;
    type_saved(&mut writer, "<c>").await;
    let typed = ["<a>", "<b>", "<c>"].map(str::to_owned);
    converged(region.addr, home.addr, &typed).await;

    // The region comes back from the older copy: its link's seqs are ones
    // the home has already applied. It must not send them again as new
    // ops: it starts again from the home's text and keeps its own as a copy.
    region.kill9();
    std::fs::remove_dir_all(region_dir.path()).unwrap();
    copy_dir(backup.path(), region_dir.path());
    let region = start_region(&bin, region_dir.path(), port, home.addr).await;
    // Its copy had nothing left to send, so nothing reopens it at start;
    // once opened (here by the status call), its link finds out and keeps
    // the old text as a conflict copy.
    let (status, _) = http_get_json(region.addr, "/api/docs/doc/replication")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let deadline = Instant::now() + T;
    let copies = loop {
        let (_, copies) = http_get_json(region.addr, "/api/docs/doc/copies")
            .await
            .unwrap();
        let copies = copies["copies"].as_array().cloned().unwrap_or_default();
        if !copies.is_empty() {
            break copies;
        }
        assert!(Instant::now() < deadline, "no conflict copy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0]["text"], "<a>");
    let text = converged(region.addr, home.addr, &typed).await;
    let mut fresh = WsClient::join(region.addr, "doc", "w2").await.unwrap();
    assert_eq!(fresh.text(), text);
    type_saved(&mut fresh, "<d>").await;
    let typed = ["<a>", "<b>", "<c>", "<d>"].map(str::to_owned);
    converged(region.addr, home.addr, &typed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_can_be_the_home_of_another_region() {
    let bin = server_binary().unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let home = ServerProcess::start(&bin, dirs[0].path(), free_port(), &[])
        .await
        .unwrap();
    let upstream = format!("ws://{}", home.addr);
    let middle = ServerProcess::start(
        &bin,
        dirs[1].path(),
        free_port(),
        &["--upstream", &upstream, "--node-id", "eu"],
    )
    .await
    .unwrap();
    let upstream = format!("ws://{}", middle.addr);
    let leaf = ServerProcess::start(
        &bin,
        dirs[2].path(),
        free_port(),
        &["--upstream", &upstream, "--node-id", "eu-paris"],
    )
    .await
    .unwrap();
    let mut at_home = WsClient::join(home.addr, "doc", "h").await.unwrap();
    let mut at_middle = WsClient::join(middle.addr, "doc", "m").await.unwrap();
    let mut at_leaf = WsClient::join(leaf.addr, "doc", "l").await.unwrap();
    let mut typed = Vec::new();
    for i in 0..5 {
        for (writer, side) in [
            (&mut at_home, "h"),
            (&mut at_middle, "m"),
            (&mut at_leaf, "l"),
        ] {
            let text = format!("<{side}{i}>");
            type_saved(writer, &text).await;
            typed.push(text);
        }
    }
    let text = converged(middle.addr, home.addr, &typed).await;
    converged(leaf.addr, middle.addr, &typed).await;
    for writer in [&mut at_home, &mut at_middle, &mut at_leaf] {
        writer.pump_until(T, |c| c.text() == text).await.unwrap();
    }
}

/// After a restart the region reopens, by itself, the documents whose link
/// still had ops to send (and only those): their work reaches the home
/// without any writer coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_region_resumes_the_links_with_work_left_and_only_those() {
    let bin = server_binary().unwrap();
    let home_dir = tempfile::tempdir().unwrap();
    let region_dir = tempfile::tempdir().unwrap();
    let (proxy, home_port, home_args) = proxied_home(&[]).await;
    let home = start_home(&bin, home_dir.path(), home_port, &home_args).await;
    let region_port = free_port();
    let mut region = start_region(&bin, region_dir.path(), region_port, proxy.addr()).await;

    // "done" is fully at the home; "doc" keeps an edit the home has not seen.
    let mut done = WsClient::join(region.addr, "done", "w-done").await.unwrap();
    type_saved(&mut done, "<all there>").await;
    let mut writer = WsClient::join(region.addr, "doc", "w").await.unwrap();
    type_saved(&mut writer, "<a>").await;
    converged(region.addr, home.addr, &["<a>".to_owned()]).await;
    let deadline = Instant::now() + T;
    while doc_state(home.addr, "done").await.unwrap().1 != "<all there>" {
        assert!(Instant::now() < deadline, "\"done\" never reached the home");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.stall(Direction::Both);
    type_saved(&mut writer, "<b>").await;
    writer.close().await.unwrap();
    done.close().await.unwrap();
    region.kill9();
    proxy.resume(Direction::Both);

    // No writer connects to the restarted region.
    let region = start_region(&bin, region_dir.path(), region_port, proxy.addr()).await;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (_, at_home) = doc_state(home.addr, "doc").await.unwrap();
        if at_home.contains("<b>") {
            assert_eq!(at_home.matches("<b>").count(), 1, "{at_home}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the region's unsent edit never reached the home: {at_home:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the document with work left was opened.
    assert_eq!(
        metric_value(region.addr, "ot_open_documents")
            .await
            .unwrap(),
        1.0
    );
}
