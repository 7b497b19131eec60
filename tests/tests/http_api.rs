//! The HTTP API against a real server: document list, text at a revision,
//! paged ops, the conflict journal, health, metrics and JSON errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_tests::{
    doc_state, http_get, http_get_json, http_get_status, metric, start_server, WsClient,
};
use ot_core::Operation;
use ot_protocol::{ClientMessage, ServerMessage};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// Builds "alpha" with a known history (revisions 3 and 4 are conflicts):
/// 1 A: "hello"          base 0
/// 2 B: " world"         base 1
/// 3 A: "!" at 0         base 1 (concurrent with 2)
/// 4 B: "?" at the end   base 2 (concurrent with 3)
/// 5..=25 A: a..u at the end, each at the head
async fn build_alpha(addr: SocketAddr) -> (WsClient, WsClient) {
    let mut a = WsClient::join(addr, "alpha", "alice").await.unwrap();
    a.edit(&Operation::insert_at(0, 0, "hello").unwrap())
        .await
        .unwrap();
    a.settle_to(1, T).await.unwrap();
    let mut b = WsClient::join(addr, "alpha", "bob").await.unwrap();
    b.edit(&Operation::insert_at(5, 5, " world").unwrap())
        .await
        .unwrap();
    b.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    // A has not read revision 2: its op is based on revision 1.
    assert_eq!(a.client().revision(), 1);
    a.edit(&Operation::insert_at(5, 0, "!").unwrap())
        .await
        .unwrap();
    a.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    // B has not read revision 3: its op is based on revision 2.
    assert_eq!(b.client().revision(), 2);
    b.edit(&Operation::insert_at(11, 11, "?").unwrap())
        .await
        .unwrap();
    b.pump_until(T, |c| c.client().all_saved()).await.unwrap();
    a.settle_to(4, T).await.unwrap();
    for (i, ch) in ('a'..='u').enumerate() {
        let len = a.client().text().len_chars();
        a.edit(&Operation::insert_at(len, len, &ch.to_string()).unwrap())
            .await
            .unwrap();
        a.settle_to(5 + i as u64, T).await.unwrap();
    }
    (a, b)
}

const ALPHA: &str = "!hello world?abcdefghijklmnopqrstu";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    let (mut a, _b) = build_alpha(addr).await;
    assert_eq!(
        doc_state(addr, "alpha").await.unwrap(),
        (25, ALPHA.to_owned())
    );
    let mut beta = WsClient::join(addr, "beta", "carol").await.unwrap();
    beta.edit(&Operation::insert_at(0, 0, "β").unwrap())
        .await
        .unwrap();
    beta.settle_to(1, T).await.unwrap();
    // A document exists once someone opens it, even without an op.
    let _gamma = WsClient::join(addr, "gamma", "dave").await.unwrap();

    // ---- GET /api/docs ----
    let deadline = Instant::now() + T;
    let docs = loop {
        let (status, list) = http_get_json(addr, "/api/docs").await.unwrap();
        assert_eq!(status, 200);
        let mut docs = list["docs"].as_array().unwrap().clone();
        docs.sort_by_key(|d| d["id"].as_str().unwrap_or_default().to_owned());
        if docs.len() == 3 || Instant::now() > deadline {
            break docs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        docs,
        vec![
            json!({"id":"alpha","rev":25,"len":ALPHA.chars().count()}),
            json!({"id":"beta","rev":1,"len":1}),
            json!({"id":"gamma","rev":0,"len":0}),
        ]
    );
    assert_eq!(doc_state(addr, "gamma").await.unwrap(), (0, String::new()));

    // ---- GET /api/docs/{doc}/ops?from&limit: pages ----
    let mut ops: Vec<Value> = Vec::new();
    let mut pages = 0;
    loop {
        let path = format!("/api/docs/alpha/ops?from={}&limit=7", ops.len());
        let (status, page) = http_get_json(addr, &path).await.unwrap();
        assert_eq!(status, 200);
        let page = page["ops"].as_array().unwrap().clone();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        pages += 1;
        for (i, op) in page.iter().enumerate() {
            assert_eq!(op["rev"], (ops.len() + i + 1) as u64, "{op}");
        }
        ops.extend(page);
    }
    assert_eq!((ops.len(), pages), (25, 4));
    for op in &ops {
        for field in [
            "rev", "client", "seq", "base_rev", "op", "received", "hash", "time_ms",
        ] {
            assert!(op.get(field).is_some(), "{field} missing in {op}");
        }
    }
    let (_, all) = http_get_json(addr, "/api/docs/alpha/ops").await.unwrap();
    assert_eq!(all["ops"].as_array().unwrap(), &ops);
    let (_, mid) = http_get_json(addr, "/api/docs/alpha/ops?from=10&limit=3")
        .await
        .unwrap();
    assert_eq!(mid["ops"].as_array().unwrap(), &ops[10..13]);
    let (_, end) = http_get_json(addr, "/api/docs/alpha/ops?from=25")
        .await
        .unwrap();
    assert_eq!(end["ops"], json!([]));
    let (_, none) = http_get_json(addr, "/api/docs/alpha/ops?from=0&limit=0")
        .await
        .unwrap();
    assert_eq!(none["ops"], json!([]));
    assert_eq!(
        (
            ops[0]["client"].as_str(),
            ops[0]["seq"].as_u64(),
            ops[0]["base_rev"].as_u64()
        ),
        (Some("alice"), Some(1), Some(0))
    );
    // The op as received and as applied (transformed past revision 2).
    assert_eq!(
        (&ops[2]["received"], &ops[2]["op"]),
        (&json!(["!", 5]), &json!(["!", 11]))
    );

    // ---- GET /api/docs/{doc}/text?rev=R equals replaying the ops to R ----
    let mut text = String::new();
    for rev in 0..=25u64 {
        if rev > 0 {
            let op = Operation::from_json_value(&ops[rev as usize - 1]["op"]).unwrap();
            text = op.apply(&text).unwrap();
        }
        let served = http_get(addr, &format!("/api/docs/alpha/text?rev={rev}"))
            .await
            .unwrap();
        assert_eq!(served, text, "text at revision {rev}");
    }
    assert_eq!(text, ALPHA);
    assert_eq!(http_get(addr, "/api/docs/alpha/text").await.unwrap(), ALPHA);
    let (status, body) = http_get_json(addr, "/api/docs/alpha/text?rev=26")
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("future_revision"))
    );
    let (status, body) = http_get_json(addr, "/api/docs/alpha/text?rev=x")
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_query"))
    );

    // ---- GET /api/docs/{doc}/conflicts: exactly the ops with base_rev < rev - 1 ----
    let (status, conflicts) = http_get_json(addr, "/api/docs/alpha/conflicts")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let conflicts = conflicts["conflicts"].as_array().unwrap().clone();
    let expected_revs: Vec<u64> = ops
        .iter()
        .filter(|op| op["base_rev"].as_u64().unwrap() + 1 < op["rev"].as_u64().unwrap())
        .map(|op| op["rev"].as_u64().unwrap())
        .collect();
    assert_eq!(expected_revs, vec![3, 4]);
    let strip_time = |mut v: Value| {
        v.as_object_mut().unwrap().remove("time_ms");
        v
    };
    assert_eq!(
        conflicts.into_iter().map(strip_time).collect::<Vec<_>>(),
        vec![
            json!({"rev":3,"client":"alice","seq":2,"base_rev":1,"transformed_past":[2,2],
                   "original":["!",5],"applied":["!",11]}),
            json!({"rev":4,"client":"bob","seq":2,"base_rev":2,"transformed_past":[3,3],
                   "original":[11,"?"],"applied":[12,"?"]}),
        ]
    );
    let (_, later) = http_get_json(addr, "/api/docs/alpha/conflicts?from=3")
        .await
        .unwrap();
    assert_eq!(later["conflicts"].as_array().unwrap().len(), 1);
    let (_, beta_conflicts) = http_get_json(addr, "/api/docs/beta/conflicts")
        .await
        .unwrap();
    assert_eq!(beta_conflicts["conflicts"], json!([]));

    // ---- GET /healthz ----
    let (status, health) = http_get_json(addr, "/healthz").await.unwrap();
    assert_eq!((status, health), (200, json!({"status":"ok"})));

    // ---- GET /metrics ----
    // One duplicate (a resend of A's last op) and one error (bad_seq).
    let last = ops[24].clone();
    let seq = last["seq"].as_u64().unwrap();
    let resend = ClientMessage::Op {
        rev: last["base_rev"].as_u64().unwrap(),
        seq,
        op: Operation::from_json_value(&last["received"]).unwrap(),
        ranges: None,
        origin: None,
    };
    a.send(&resend).await.unwrap();
    assert_eq!(
        a.recv_message(T).await.unwrap(),
        ServerMessage::Ack { rev: 25, seq }
    );
    a.send(&ClientMessage::Op {
        rev: 25,
        seq: 1000,
        op: Operation::insert_at(34, 34, "x").unwrap(),
        ranges: None,
        origin: None,
    })
    .await
    .unwrap();
    assert_eq!(a.recv(T).await.unwrap()["code"], "bad_seq");
    let (status, page) = http_get_status(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let value =
        |name: &str| metric(&page, name).unwrap_or_else(|| panic!("{name} missing:\n{page}"));
    assert_eq!(value("ot_ops_applied_total"), 26.0);
    assert_eq!(value("ot_conflicts_total"), 2.0);
    assert_eq!(value("ot_duplicates_total"), 1.0);
    assert_eq!(value("ot_errors_total{code=\"bad_seq\"}"), 1.0);
    assert_eq!(value("ot_ack_latency_seconds_count"), 26.0);
    assert!(value("ot_ack_latency_seconds_sum") > 0.0);
    assert!(value("ot_ack_latency_seconds_bucket{le=\"+Inf\"}") == 26.0);
    assert!(value("ot_commit_latency_seconds_count") >= 1.0);
    assert!(value("ot_commit_latency_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert_eq!(value("ot_connections"), 4.0);
    assert_eq!(value("ot_open_documents"), 3.0);
    for family in [
        "ot_ops_applied_total",
        "ot_conflicts_total",
        "ot_duplicates_total",
        "ot_errors_total",
        "ot_ack_latency_seconds",
        "ot_commit_latency_seconds",
        "ot_storage_backlog_items",
        "ot_ingest_seconds",
        "ot_ingest_items",
    ] {
        assert!(
            page.contains(&format!("# TYPE {family} ")),
            "{family}:\n{page}"
        );
    }

    // ---- unknown documents, bad ids, unknown routes: JSON errors ----
    for path in [
        "/api/docs/nope",
        "/api/docs/nope/text",
        "/api/docs/nope/text?rev=0",
        "/api/docs/nope/ops",
        "/api/docs/nope/conflicts",
    ] {
        let (status, body) = http_get_json(addr, path).await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {body}"
        );
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    for path in [
        "/api/docs/a%20b",
        "/api/docs/a%20b/ops",
        "/api/docs/%2E%2E%2Fx/text",
    ] {
        let (status, body) = http_get_json(addr, path).await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_document_id")),
            "{path}: {body}"
        );
    }
    for path in ["/api/docs/alpha/ops?from=-1", "/api/docs/alpha/ops?limit=x"] {
        let (status, body) = http_get_json(addr, path).await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}: {body}"
        );
    }
    let (status, body) = http_get_json(addr, "/no/such/route").await.unwrap();
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    // Reading never creates a document.
    let (_, list) = http_get_json(addr, "/api/docs").await.unwrap();
    assert_eq!(list["docs"].as_array().unwrap().len(), 3);
    server.stop().await.unwrap();
}

/// The HTTP API reads a document that is not loaded (after a restart) from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_after_restart_reads_storage() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let (a, b) = build_alpha(server.addr).await;
    drop((a, b));
    let (_, ops_before) = http_get_json(server.addr, "/api/docs/alpha/ops")
        .await
        .unwrap();
    server.stop().await.unwrap();
    let server = start_server(dir.path()).await.unwrap();
    let addr = server.addr;
    assert_eq!(
        doc_state(addr, "alpha").await.unwrap(),
        (25, ALPHA.to_owned())
    );
    assert_eq!(
        http_get(addr, "/api/docs/alpha/text?rev=4").await.unwrap(),
        "!hello world?"
    );
    let (_, ops_after) = http_get_json(addr, "/api/docs/alpha/ops").await.unwrap();
    assert_eq!(ops_after, ops_before);
    let (_, conflicts) = http_get_json(addr, "/api/docs/alpha/conflicts")
        .await
        .unwrap();
    assert_eq!(conflicts["conflicts"].as_array().unwrap().len(), 2);
    let (_, list) = http_get_json(addr, "/api/docs").await.unwrap();
    assert_eq!(
        list["docs"],
        json!([{"id":"alpha","rev":25,"len":ALPHA.chars().count()}])
    );
    server.stop().await.unwrap();
}
