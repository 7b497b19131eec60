//! Access control against a real server on loopback: every kind of bad token
//! is refused (401) before the upgrade and on the HTTP reads, a token that
//! does not cover the document gets 403, read-only connections cannot write,
//! expiry and revocation close open connections with 4001, and the document
//! list shows only what the token can read, in pages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use e2e_tests::{next_event, recv_message, send_message, start_server_with, Event, Socket};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ot_core::{Operation, Range};
use ot_driver::{ConnectOptions, TokenSource};
use ot_protocol::{Access, ClientMessage, ErrorCode, ServerMessage};
use serde_json::{json, Value};
use server::auth::{mint_hs256, Claims};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"an-e2e-test-secret-of-more-than-32-bytes";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Server {
    server: server::RunningServer,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A server with authentication on (HS256 with [`SECRET`]) and `leeway` seconds of leeway.
async fn start(leeway: u64) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let secret: PathBuf = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let data = dir.path().join("data");
    let server = start_server_with(&data, |c| {
        c.auth_secret_file = Some(secret);
        c.auth_leeway = leeway;
    })
    .await
    .unwrap();
    Server {
        addr: server.addr,
        server,
        _dir: dir,
    }
}

fn claims(docs: &[&str], access: Access, jti: &str) -> Claims {
    Claims {
        sub: format!("user-{jti}"),
        name: None,
        docs: docs.iter().map(|d| d.to_string()).collect(),
        access,
        exp: now() + 3600,
        jti: jti.to_owned(),
        nbf: None,
        iat: Some(now()),
    }
}

fn token(docs: &[&str], access: Access, jti: &str) -> String {
    mint_hs256(&claims(docs, access, jti), SECRET).unwrap()
}

/// Options that send `token` (if any) as `Authorization: Bearer`.
fn with_token(token: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        token: token.map(|t| TokenSource::Value(t.to_owned())),
        ..ConnectOptions::default()
    }
}

fn json_or_text(body: String) -> Value {
    serde_json::from_str(&body).unwrap_or(Value::String(body))
}

/// `GET path` with an optional bearer token: (status, JSON body).
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, body) = ot_driver::http::get_with(&addr.into(), path, &with_token(token))
        .await
        .unwrap();
    (status, json_or_text(body))
}

async fn revoke(addr: SocketAddr, admin: &str, jti: &str) -> (u16, Value) {
    let (status, body) = ot_driver::http::post_json_with(
        &addr.into(),
        "/api/admin/revoke",
        &json!({ "jti": jti }),
        &with_token(Some(admin)),
    )
    .await
    .unwrap();
    (status, json_or_text(body))
}

/// How a token travels on an upgrade.
#[derive(Clone, Copy)]
enum Carry {
    /// `Authorization: Bearer` (programs).
    Header,
    /// The `ot.bearer.` subprotocol beside `ot.v1` (browsers).
    Subprotocol,
}

/// Open `/ws/{path}` with `token`: the socket, or the refusal's status and body.
async fn ws(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    carry: Carry,
) -> Result<Socket, (u16, Value)> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    let headers = request.headers_mut();
    match (token, carry) {
        (Some(t), Carry::Header) => {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        (Some(t), Carry::Subprotocol) => {
            headers.insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("ot.v1, ot.bearer.{t}")).unwrap(),
            );
        }
        (None, _) => {}
    }
    let result = tokio::time::timeout(T, tokio_tungstenite::connect_async(request))
        .await
        .unwrap();
    match result {
        Ok((socket, response)) => {
            if matches!(carry, Carry::Subprotocol) && token.is_some() {
                // Only `ot.v1` comes back, never the token.
                assert_eq!(
                    response
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().unwrap()),
                    Some("ot.v1")
                );
            }
            Ok(socket)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            Err((
                response.status().as_u16(),
                serde_json::from_str(&body).unwrap_or(Value::String(body)),
            ))
        }
        Err(e) => panic!("{path}: {e}"),
    }
}

/// A JWT with `header` and `payload` as given, signed with HS256 and `key`
/// (or not signed at all for `alg: none`).
fn raw_token(header: Value, payload: Value, key: &[u8]) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let signing_input = format!("{}.{}", b64(&header), b64(&payload));
    if header["alg"] == "none" {
        return format!("{signing_input}.");
    }
    let full = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &payload,
        &EncodingKey::from_secret(key).unwrap(),
    )
    .unwrap();
    // Keep the library's signature only when the header is the library's.
    if header == json!({"typ":"JWT","alg":"HS256"}) {
        return full;
    }
    panic!("raw_token signs only HS256 or alg none");
}

fn payload(extra: Value) -> Value {
    let mut p = json!({
        "sub": "mallory",
        "docs": ["*"],
        "access": "admin",
        "exp": now() + 3600,
        "jti": "raw",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v.clone();
        }
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_before_the_upgrade_and_on_the_reads() {
    let s = start(60).await;
    let addr = s.addr;
    let admin = token(&["*"], Access::Admin, "admin-1");
    // The document exists (so a 404 cannot hide a refusal).
    let mut w = ws(addr, "/ws/notes?client=w1", Some(&admin), Carry::Header)
        .await
        .unwrap();
    assert!(matches!(
        recv_message(&mut w, T).await.unwrap(),
        ServerMessage::Snapshot {
            access: Access::Admin,
            ..
        }
    ));

    let mut expired = claims(&["notes"], Access::Read, "expired");
    expired.exp = now() - 3600;
    let mut not_yet = claims(&["notes"], Access::Read, "not-yet");
    not_yet.nbf = Some(now() + 3600);
    let mut future_iat = claims(&["notes"], Access::Read, "future-iat");
    future_iat.iat = Some(now() + 3600);
    let wrong_key = mint_hs256(
        &claims(&["notes"], Access::Read, "wrong-key"),
        b"another-secret-that-is-long-enough-too",
    )
    .unwrap();
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims(&["notes"], Access::Read, "hs384"),
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    let alg_none = raw_token(
        json!({"alg":"none","typ":"JWT"}),
        payload(json!({})),
        SECRET,
    );
    let no_jti = raw_token(
        json!({"typ":"JWT","alg":"HS256"}),
        payload(json!({"jti": null})),
        SECRET,
    );
    let no_exp = raw_token(
        json!({"typ":"JWT","alg":"HS256"}),
        payload(json!({"exp": null})),
        SECRET,
    );
    let bad_access = raw_token(
        json!({"typ":"JWT","alg":"HS256"}),
        payload(json!({"access": "root"})),
        SECRET,
    );
    let revoked = token(&["notes"], Access::Read, "to-revoke");
    assert_eq!(revoke(addr, &admin, "to-revoke").await.0, 200);

    let unauthorized: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("not.a.token".into())),
        ("expired", Some(mint_hs256(&expired, SECRET).unwrap())),
        ("not yet valid", Some(mint_hs256(&not_yet, SECRET).unwrap())),
        (
            "issued in the future",
            Some(mint_hs256(&future_iat, SECRET).unwrap()),
        ),
        ("wrong signature", Some(wrong_key)),
        ("wrong algorithm", Some(hs384)),
        ("alg none", Some(alg_none)),
        ("no jti", Some(no_jti)),
        ("no exp", Some(no_exp)),
        ("unknown access level", Some(bad_access)),
        ("revoked", Some(revoked)),
    ];
    for (case, bad) in &unauthorized {
        for carry in [Carry::Header, Carry::Subprotocol] {
            let refused = ws(addr, "/ws/notes?client=x1", bad.as_deref(), carry)
                .await
                .err()
                .unwrap_or_else(|| panic!("{case}: the upgrade was accepted"));
            assert_eq!(refused.0, 401, "{case}: {refused:?}");
            assert_eq!(refused.1["code"], "unauthorized", "{case}");
        }
        for path in ["/api/docs", "/api/docs/notes", "/api/docs/notes/ops"] {
            let (status, body) = get(addr, path, bad.as_deref()).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some("unauthorized")),
                "{case} {path}"
            );
        }
    }
    // A token in the query string is never read.
    let good = token(&["notes"], Access::Read, "reader");
    let (status, _) = get(addr, &format!("/api/docs/notes?token={good}"), None).await;
    assert_eq!(status, 401);
    assert_eq!(
        ws(
            addr,
            &format!("/ws/notes?client=q1&token={good}"),
            None,
            Carry::Header
        )
        .await
        .err()
        .map(|e| e.0),
        Some(401)
    );

    // A good token that does not cover the document: 403.
    let other = token(&["other-*"], Access::Admin, "other");
    let refused = ws(addr, "/ws/notes?client=x2", Some(&other), Carry::Header)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (refused.0, refused.1["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body) = get(addr, "/api/docs/notes", Some(&other)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

    // Admin calls need admin on `*`.
    let writer_everywhere = token(&["*"], Access::Write, "writer");
    let admin_of_some = token(&["notes"], Access::Admin, "admin-notes");
    for t in [&good, &writer_everywhere, &admin_of_some] {
        assert_eq!(revoke(addr, t, "anything").await.0, 403);
        assert_eq!(get(addr, "/metrics", Some(t)).await.0, 403);
    }
    let (status, page) = get(addr, "/metrics", Some(&admin)).await;
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("ot_ops_applied_total"));
    // The public pages and the health check stay open.
    assert_eq!(get(addr, "/healthz", None).await.0, 200);
    assert_eq!(get(addr, "/d/notes", None).await.0, 200);

    // The good token reads.
    let (status, body) = get(addr, "/api/docs/notes", Some(&good)).await;
    assert_eq!((status, body["rev"].as_u64()), (200, Some(0)));
    drop(w);
    s.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_connection_sees_everything_and_changes_nothing() {
    let s = start(60).await;
    let addr = s.addr;
    let mut writer_claims = claims(&["shared"], Access::Write, "w");
    writer_claims.name = Some("Ann \u{202E}evil".into());
    let writer = mint_hs256(&writer_claims, SECRET).unwrap();
    let reader = token(&["shared", "x-*"], Access::Read, "r");
    let mut w = ws(
        addr,
        "/ws/shared?client=writer1",
        Some(&writer),
        Carry::Header,
    )
    .await
    .unwrap();
    assert!(matches!(
        recv_message(&mut w, T).await.unwrap(),
        ServerMessage::Snapshot {
            access: Access::Write,
            ..
        }
    ));
    send_message(
        &mut w,
        &ClientMessage::Op {
            rev: 0,
            seq: 1,
            op: Operation::insert_at(0, 0, "hello").unwrap(),
            ranges: None,
            origin: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        recv_message(&mut w, T).await.unwrap(),
        ServerMessage::Ack { rev: 1, seq: 1 }
    );
    // The browser's way: the token as a subprotocol.
    let mut r = ws(
        addr,
        "/ws/shared?client=reader1",
        Some(&reader),
        Carry::Subprotocol,
    )
    .await
    .unwrap();
    match recv_message(&mut r, T).await.unwrap() {
        ServerMessage::Snapshot {
            access, text, rev, ..
        } => assert_eq!((access, text.as_ref(), rev), (Access::Read, "hello", 1)),
        other => panic!("{other:?}"),
    }
    // Its op is refused with its seq; nothing changes.
    send_message(
        &mut r,
        &ClientMessage::Op {
            rev: 1,
            seq: 1,
            op: Operation::insert_at(5, 5, " pwned").unwrap(),
            ranges: None,
            origin: None,
        },
    )
    .await
    .unwrap();
    match recv_message(&mut r, T).await.unwrap() {
        ServerMessage::Error { code, seq, .. } => {
            assert_eq!((code, seq), (ErrorCode::Forbidden.into(), Some(1)))
        }
        other => panic!("{other:?}"),
    }
    let (_, doc) = get(addr, "/api/docs/shared", Some(&reader)).await;
    assert_eq!(doc, json!({"rev": 1, "text": "hello"}));
    // It may send its cursor: the others see it under its token's name
    // (the subject here), whatever name it claims.
    send_message(
        &mut r,
        &ClientMessage::Cursor {
            rev: 1,
            ranges: vec![Range::from((2, 2))],
            name: Some("The Admin".into()),
        },
    )
    .await
    .unwrap();
    match recv_message(&mut w, T).await.unwrap() {
        ServerMessage::Cursor { client, name, .. } => {
            assert_eq!(client, "reader1");
            assert_eq!(name.as_deref(), Some("user-r"));
        }
        other => panic!("{other:?}"),
    }
    // The writer's cursor carries its token's name without the bidi override.
    send_message(
        &mut w,
        &ClientMessage::Cursor {
            rev: 1,
            ranges: vec![Range::from((0, 0))],
            name: None,
        },
    )
    .await
    .unwrap();
    match recv_message(&mut r, T).await.unwrap() {
        ServerMessage::Cursor { name, .. } => assert_eq!(name.as_deref(), Some("Ann evil")),
        other => panic!("{other:?}"),
    }
    // It still receives ops.
    send_message(
        &mut w,
        &ClientMessage::Op {
            rev: 1,
            seq: 2,
            op: Operation::insert_at(5, 5, "!").unwrap(),
            ranges: None,
            origin: None,
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        recv_message(&mut r, T).await.unwrap(),
        ServerMessage::Op { rev: 2, .. }
    ));
    s.server.stop().await.unwrap();
}

/// The next close code on `socket`, skipping other messages.
async fn close_code(socket: &mut Socket) -> Option<u16> {
    loop {
        match next_event(socket, T).await.unwrap() {
            Event::Closed(frame) => return frame.map(|f| f.0),
            Event::Ended(_) => return None,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_revocation_close_open_connections_with_4001() {
    let s = start(0).await;
    let addr = s.addr;
    let admin = token(&["*"], Access::Admin, "admin");
    // Expires in 2 s (no leeway on this server).
    let mut short = claims(&["doc"], Access::Write, "short");
    short.exp = now() + 2;
    let short = mint_hs256(&short, SECRET).unwrap();
    let started = Instant::now();
    let mut a = ws(addr, "/ws/doc?client=a1", Some(&short), Carry::Header)
        .await
        .unwrap();
    assert!(matches!(
        recv_message(&mut a, T).await.unwrap(),
        ServerMessage::Snapshot { .. }
    ));
    assert_eq!(close_code(&mut a).await, Some(4001));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "closed after {took:?}, not when the token expired"
    );
    // A new connection with it is refused.
    assert_eq!(
        ws(addr, "/ws/doc?client=a1", Some(&short), Carry::Header)
            .await
            .err()
            .map(|e| e.0),
        Some(401)
    );

    // Revoked while open: closed at once; the other token's connection stays.
    let doomed = token(&["doc"], Access::Write, "doomed");
    let kept = token(&["doc"], Access::Write, "kept");
    let mut b = ws(addr, "/ws/doc?client=b1", Some(&doomed), Carry::Header)
        .await
        .unwrap();
    let mut c = ws(addr, "/ws/doc?client=c1", Some(&kept), Carry::Header)
        .await
        .unwrap();
    recv_message(&mut b, T).await.unwrap();
    recv_message(&mut c, T).await.unwrap();
    let revoked_at = Instant::now();
    assert_eq!(revoke(addr, &admin, "doomed").await.0, 200);
    assert_eq!(close_code(&mut b).await, Some(4001));
    assert!(revoked_at.elapsed() < Duration::from_secs(2));
    send_message(
        &mut c,
        &ClientMessage::Op {
            rev: 0,
            seq: 1,
            op: Operation::insert_at(0, 0, "still here").unwrap(),
            ranges: None,
            origin: None,
        },
    )
    .await
    .unwrap();
    loop {
        match recv_message(&mut c, T).await.unwrap() {
            ServerMessage::Ack { rev: 1, seq: 1 } => break,
            ServerMessage::Leave { .. } | ServerMessage::Cursor { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    // The revocation survives a restart.
    let dir = s._dir;
    s.server.stop().await.unwrap();
    let secret = dir.path().join("secret");
    let restarted = start_server_with(&dir.path().join("data"), |cfg| {
        cfg.auth_secret_file = Some(secret);
    })
    .await
    .unwrap();
    assert_eq!(
        ws(
            restarted.addr,
            "/ws/doc?client=b1",
            Some(&doomed),
            Carry::Header
        )
        .await
        .err()
        .map(|e| e.0),
        Some(401)
    );
    assert!(ws(
        restarted.addr,
        "/ws/doc?client=c1",
        Some(&kept),
        Carry::Header
    )
    .await
    .is_ok());
    restarted.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_list_shows_only_readable_documents_in_pages() {
    let s = start(60).await;
    let addr = s.addr;
    let admin = token(&["*"], Access::Admin, "admin");
    for doc in ["a1", "a2", "a3", "b1"] {
        let mut socket = ws(
            addr,
            &format!("/ws/{doc}?client=maker"),
            Some(&admin),
            Carry::Header,
        )
        .await
        .unwrap();
        recv_message(&mut socket, T).await.unwrap();
    }
    let ids = |v: &Value| -> Vec<String> {
        v["docs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Documents appear once their creation is committed.
    let deadline = Instant::now() + T;
    loop {
        let (_, all) = get(addr, "/api/docs", Some(&admin)).await;
        if ids(&all).len() == 4 || Instant::now() > deadline {
            assert_eq!(ids(&all), ["a1", "a2", "a3", "b1"]);
            assert_eq!(all["next"], Value::Null);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_reader = token(&["a*"], Access::Read, "a-reader");
    let (_, page1) = get(addr, "/api/docs?limit=2", Some(&a_reader)).await;
    assert_eq!(ids(&page1), ["a1", "a2"]);
    assert_eq!(page1["next"], "a2");
    let (_, page2) = get(addr, "/api/docs?limit=2&after=a2", Some(&a_reader)).await;
    assert_eq!(ids(&page2), ["a3"]);
    assert_eq!(page2["next"], Value::Null);
    let nobody = token(&["zzz"], Access::Admin, "nobody");
    let (_, none) = get(addr, "/api/docs", Some(&nobody)).await;
    assert_eq!(ids(&none), Vec::<String>::new());
    s.server.stop().await.unwrap();
}

/// The Rust driver with a token file: the token expires while an edit is
/// unsent (closed with 4001, the edit kept); with the expired token a new
/// connection is refused (401, `Unauthorized`); once the file holds a new
/// token the next connection delivers the edit exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_keeps_unsent_edits_and_a_new_token_lands_them_once() {
    use ot_driver::{CloseAction, Driver, DriverError, Event as DriverEvent, SessionCore};
    let s = start(0).await;
    let addr = s.addr;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let mut short = claims(&["kept"], Access::Write, "short-lived");
    short.exp = now() + 2;
    std::fs::write(&token_file, mint_hs256(&short, SECRET).unwrap()).unwrap();
    let core = SessionCore::new(ot_protocol::DocId::parse("kept").unwrap(), "writer-k");
    let mut driver = Driver::new(addr.into(), core)
        .with_connect_options(ConnectOptions {
            token: Some(TokenSource::File(token_file.clone())),
            ..ConnectOptions::default()
        })
        .with_external_durability();
    // The new state (with its key) counts as saved.
    let version = driver.core().version();
    driver.confirm_durable(version).await.unwrap();
    driver.connect().await.unwrap();
    assert!(driver.is_connected());
    // An edit that waits for its state to be confirmed durable: not sent.
    driver
        .local_edit(&Operation::insert_at(0, 0, "kept").unwrap(), None)
        .await
        .unwrap();
    let closed = tokio::time::timeout(T, async {
        loop {
            for event in driver.next_events().await.unwrap() {
                if let DriverEvent::Disconnected { action, .. } = event {
                    return action;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, CloseAction::Reauthenticate);
    assert!(!driver.core().client().all_saved(), "the edit is kept");
    // The expired token is refused before the upgrade.
    match driver.connect().await {
        Err(DriverError::Unauthorized(why)) => assert!(why.contains("expired"), "{why}"),
        other => panic!("expected 401, got {other:?}"),
    }
    // A new token for the same user in the file: the next connection delivers the edit.
    let mut renewed = claims(&["kept"], Access::Write, "renewed");
    renewed.sub = short.sub.clone();
    std::fs::write(&token_file, mint_hs256(&renewed, SECRET).unwrap()).unwrap();
    driver.connect().await.unwrap();
    let version = driver.core().version();
    driver.confirm_durable(version).await.unwrap();
    let deadline = Instant::now() + T;
    while !driver.core().client().all_saved() {
        assert!(Instant::now() < deadline, "the edit was not acknowledged");
        let _ = tokio::time::timeout(Duration::from_millis(200), driver.next_events()).await;
    }
    let admin = token(&["*"], Access::Admin, "admin");
    let (_, doc) = get(addr, "/api/docs/kept", Some(&admin)).await;
    assert_eq!(doc, json!({"rev": 1, "text": "kept"}));
    let (_, ops) = get(addr, "/api/docs/kept/ops", Some(&admin)).await;
    assert_eq!(ops["ops"].as_array().unwrap().len(), 1, "exactly once");
    s.server.stop().await.unwrap();
}

/// With authentication on, a writer id is bound to its key and its token's
/// subject: another user holding a copy of the key cannot speak for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_id_is_bound_to_its_key_and_its_tokens_subject() {
    let s = start(60).await;
    let addr = s.addr;
    let key = "0123456789abcdef0123456789abcdef";
    let open = |token: String| async move {
        let mut request = format!("ws://{addr}/ws/bound?client=writer-a")
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers.insert("x-ot-client-key", HeaderValue::from_static(key));
        match tokio::time::timeout(T, tokio_tungstenite::connect_async(request))
            .await
            .unwrap()
        {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("{e}"),
        }
    };
    let ann = token(&["bound"], Access::Write, "ann");
    let bob = token(&["bound"], Access::Write, "bob");
    let mut first = open(ann.clone()).await.unwrap();
    recv_message(&mut first, T).await.unwrap();
    // Bob has the key but not Ann's subject: refused before the upgrade.
    assert_eq!(open(bob).await.err(), Some(403));
    // Ann with the same key is still herself (and replaces her older connection).
    let mut again = open(ann).await.unwrap();
    recv_message(&mut again, T).await.unwrap();
    assert_eq!(close_code(&mut first).await, Some(4009));
    s.server.stop().await.unwrap();
}

/// Tokens minted elsewhere: the server checks them with a public key, whose
/// type fixes the one accepted algorithm (Ed25519 → EdDSA, P-256 → ES256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_fix_the_algorithm() {
    for (alg, rcgen_alg) in [
        (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
    ] {
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public.pem");
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let server = start_server_with(&dir.path().join("data"), |c| {
            c.auth_public_key_file = Some(public.clone());
        })
        .await
        .unwrap();
        let private = pair.serialize_pem();
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        };
        let good = jsonwebtoken::encode(
            &Header::new(alg),
            &claims(&["pk"], Access::Read, "pk"),
            &key,
        )
        .unwrap();
        let (status, _) = get(server.addr, "/api/docs", Some(&good)).await;
        assert_eq!(status, 200, "{alg:?}");
        // An HS256 token "signed" with the public key as a secret (the
        // classic confusion attack) is refused, as is `alg: none`.
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(&["pk"], Access::Admin, "confused"),
            &EncodingKey::from_secret(pair.public_key_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        let none = raw_token(
            json!({"alg":"none","typ":"JWT"}),
            payload(json!({})),
            SECRET,
        );
        for bad in [confused, none] {
            let (status, body) = get(server.addr, "/api/docs", Some(&bad)).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some("unauthorized")),
                "{alg:?}"
            );
        }
        server.stop().await.unwrap();
    }
}
