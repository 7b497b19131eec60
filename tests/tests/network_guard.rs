//! The network guard and TLS, end to end: a foreign `Host` (DNS rebinding)
//! gets 400 `invalid_host` on every route, the WebSocket upgrade included; a
//! foreign `Origin` on the upgrade gets 403 `forbidden` and touches nothing;
//! `--allowed-host`, `--public-url` and `--allowed-origin` admit what they
//! name; the binary refuses a public bind without authentication unless told
//! `--insecure-no-auth` (and then warns); `--metrics-addr` serves `/metrics`
//! only; with `--tls-cert`/`--tls-key` the real `ot-client` edits and reads a
//! document over wss/https with `--ca-file`, and fails with a certificate
//! error without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use e2e_tests::{
    free_port, http_get, http_get_json, ot_client_binary, recv_json, server_binary,
    start_server_with,
};
use ot_driver::{ConnectOptions, ServerUrl};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Generous bound for one wait.
const WAIT: Duration = Duration::from_secs(20);

/// The `server` binary, built once per test process.
async fn server_bin() -> Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    let bin = tokio::task::spawn_blocking(server_binary).await??;
    Ok(BIN.get_or_init(|| bin).clone())
}

/// The `ot-client` binary, built once per test process.
async fn ot_client_bin() -> Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    let bin = tokio::task::spawn_blocking(ot_client_binary).await??;
    Ok(BIN.get_or_init(|| bin).clone())
}

/// Send `request` (a whole HTTP/1.1 request head) on a fresh connection and
/// read the answer's status and body (Content-Length bodies; a 101 has none).
async fn raw_request(addr: SocketAddr, request: &str) -> Result<(u16, String)> {
    tokio::time::timeout(WAIT, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the answer's head");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .context("no status")?
            .parse()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse())
            .transpose()?
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok((
            status,
            String::from_utf8_lossy(&buf[head_end..]).into_owned(),
        ))
    })
    .await
    .context("no answer in time")?
}

/// `GET path` with this `Host`.
async fn get_with_host(addr: SocketAddr, path: &str, host: &str) -> Result<(u16, String)> {
    raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A WebSocket upgrade of `path` with this `Host` and optional `Origin`.
async fn upgrade_with(
    addr: SocketAddr,
    path: &str,
    host: &str,
    origin: Option<&str>,
) -> Result<(u16, String)> {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    raw_request(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
        ),
    )
    .await
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<not an error body: {body}>"))
}

/// The documents the server lists.
async fn doc_count(addr: SocketAddr) -> Result<usize> {
    let (status, v) = http_get_json(addr, "/api/docs").await?;
    assert_eq!(status, 200, "{v}");
    Ok(v["docs"].as_array().map(Vec::len).unwrap_or(0))
}

#[tokio::test]
async fn a_foreign_origin_cannot_open_a_websocket() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server_with(dir.path(), |_| {}).await?;
    let addr = server.addr;
    let host = format!("127.0.0.1:{}", addr.port());

    let (status, body) = upgrade_with(
        addr,
        "/ws/secret?client=evilclient",
        &host,
        Some("http://evil.example"),
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(code_of(&body), "forbidden");
    let (status, body) = upgrade_with(addr, "/ws/secret", &host, Some("null")).await?;
    assert_eq!((status, code_of(&body).as_str()), (403, "forbidden"));
    // Nothing was opened, read or written.
    assert_eq!(doc_count(addr).await?, 0);
    let (status, _) = e2e_tests::http_get_status(addr, "/api/docs/secret").await?;
    assert_eq!(status, 404);

    // The server's own origin (the page it serves) works, and so does no Origin.
    let mut request = format!("ws://{addr}/ws/secret?client=goodclient").into_client_request()?;
    request
        .headers_mut()
        .insert("Origin", format!("http://{host}").parse()?);
    let (mut socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .context("connect timeout")??;
    let first = recv_json(&mut socket, WAIT).await?;
    assert_eq!(first["type"], "snapshot", "{first}");
    let (status, _) = upgrade_with(
        addr,
        "/ws/other",
        &format!("localhost:{}", addr.port()),
        None,
    )
    .await?;
    assert_eq!(status, 101);
    drop(socket);
    server.stop().await
}

#[tokio::test]
async fn a_foreign_host_is_refused_on_every_route() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server_with(dir.path(), |_| {}).await?;
    let addr = server.addr;
    let port = addr.port();

    for path in [
        "/api/docs",
        "/api/docs/a",
        "/healthz",
        "/metrics",
        "/",
        "/nowhere",
    ] {
        let (status, body) = get_with_host(addr, path, "evil.example").await?;
        assert_eq!(
            (status, code_of(&body).as_str()),
            (400, "invalid_host"),
            "{path}"
        );
        // A rebinding page keeps the port: still refused.
        let (status, _) = get_with_host(addr, path, &format!("evil.example:{port}")).await?;
        assert_eq!(status, 400, "{path}");
    }
    let (status, body) =
        upgrade_with(addr, "/ws/doc", &format!("evil.example:{port}"), None).await?;
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid_host"));
    assert_eq!(doc_count(addr).await?, 0);

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = get_with_host(addr, "/api/docs", &host).await?;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // The loopback names on another port are someone else.
    let (status, _) = get_with_host(addr, "/api/docs", &format!("localhost:{}", port ^ 1)).await?;
    assert_eq!(status, 400);
    server.stop().await
}

#[tokio::test]
async fn allowed_hosts_public_url_and_allowed_origins_are_admitted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server_with(dir.path(), |c| {
        c.allowed_host = vec![
            "docs.internal:8443".to_owned(),
            "any-port.internal".to_owned(),
        ];
        c.public_url = Some("https://docs.example.com/".to_owned());
        c.allowed_origin = vec!["https://app.example.org".to_owned()];
    })
    .await?;
    let addr = server.addr;

    for host in [
        "docs.internal:8443",
        "any-port.internal",
        "any-port.internal:1234",
        "docs.example.com",
        "DOCS.example.com:443",
    ] {
        let (status, body) = get_with_host(addr, "/api/docs", host).await?;
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in ["docs.internal:8444", "docs.internal", "example.com"] {
        let (status, _) = get_with_host(addr, "/api/docs", host).await?;
        assert_eq!(status, 400, "{host}");
    }
    for origin in ["https://docs.example.com", "https://app.example.org"] {
        let (status, body) = upgrade_with(addr, "/ws/d", "docs.example.com", Some(origin)).await?;
        assert_eq!(status, 101, "{origin}: {body}");
    }
    for origin in ["http://app.example.org", "https://evil.example"] {
        let (status, body) = upgrade_with(addr, "/ws/d", "docs.example.com", Some(origin)).await?;
        assert_eq!(
            (status, code_of(&body).as_str()),
            (403, "forbidden"),
            "{origin}"
        );
    }
    server.stop().await
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let metrics_port = free_port();
    let server = start_server_with(dir.path(), |c| {
        c.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], metrics_port)));
    })
    .await?;
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let deadline = Instant::now() + WAIT;
    let page = loop {
        match http_get(metrics, "/metrics").await {
            Ok(page) => break page,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(page.contains("ot_"), "{page}");
    let (status, _) = e2e_tests::http_get_status(metrics, "/api/docs").await?;
    assert_eq!(status, 404);
    let (status, body) = get_with_host(metrics, "/metrics", "evil.example").await?;
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid_host"));
    server.stop().await
}

/// Run the server binary with `args` until it exits (bounded); (exit code, output).
async fn server_exit(args: &[&str]) -> Result<(Option<i32>, String)> {
    let binary = server_bin().await?;
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the server did not exit")??;
    let text = e2e_tests::output_text(&output);
    Ok((output.status.code(), text))
}

#[tokio::test]
async fn a_public_bind_needs_auth_or_insecure_no_auth() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().context("utf-8 path")?;
    let (code, output) = server_exit(&["--addr", "0.0.0.0:0", "--data-dir", data]).await?;
    assert_ne!(code, Some(0), "{output}");
    assert!(code.is_some(), "killed by a signal: {output}");
    assert!(
        output.contains("without authentication") && output.contains("--insecure-no-auth"),
        "{output}"
    );
    assert!(
        !Path::new(data).exists(),
        "the storage was opened: {output}"
    );
    // A flag the guard cannot use is refused before the storage is opened too.
    let (code, output) = server_exit(&[
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--allowed-host",
        "not a host",
    ])
    .await?;
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("--allowed-host"), "{output}");
    assert!(
        !Path::new(data).exists(),
        "the storage was opened: {output}"
    );

    // With --insecure-no-auth it starts on every interface, and warns.
    let port = free_port();
    let log = dir.path().join("server.log");
    let binary = server_bin().await?;
    let log_file = std::fs::File::create(&log)?;
    let mut child = tokio::process::Command::new(binary)
        .args(["--addr", &format!("0.0.0.0:{port}"), "--data-dir", data])
        .arg("--insecure-no-auth")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + WAIT;
    while http_get(addr, "/healthz").await.is_err() {
        if Instant::now() > deadline {
            bail!(
                "the server did not come up: {}",
                std::fs::read_to_string(&log)?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await?;
    let output = std::fs::read_to_string(&log)?;
    assert!(output.contains("WARN"), "{output}");
    assert!(output.contains("WITHOUT AUTHENTICATION"), "{output}");
    assert!(
        output.contains("read and rewrite every document"),
        "{output}"
    );
    Ok(())
}

/// A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// Run `ot-client` with `args` (bounded); (success, stdout, stderr).
async fn ot_client(data: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let binary = ot_client_bin().await?;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary)
            .env("OT_CLIENT_DATA_DIR", data)
            .env_remove("OT_SERVER")
            .env_remove("OT_CA_FILE")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("ot-client did not finish in time")??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn ot_client_edits_over_tls_with_its_ca_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed(dir.path())?;
    let port = free_port();
    let binary = server_bin().await?;
    let log = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log)?;
    let mut child = tokio::process::Command::new(binary)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()?;
    let https = ServerUrl::parse(&format!("https://localhost:{port}"))?;
    let trusting = ConnectOptions {
        ca_file: Some(cert.clone()),
        ..ConnectOptions::default()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        match ot_driver::http::get_with(&https, "/healthz", &trusting).await {
            Ok((200, _)) => break,
            _ if Instant::now() > deadline => bail!(
                "the TLS server did not come up: {}",
                std::fs::read_to_string(&log)?
            ),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(std::fs::read_to_string(&log)?.contains("https"));
    // Plain HTTP on the TLS port gets no answer (the handshake fails).
    let plain: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(http_get(plain, "/healthz").await.is_err());

    let client_data = dir.path().join("client");
    let cert_arg = cert.to_str().context("utf-8 path")?;
    let wss = format!("wss://localhost:{port}");
    let (ok, out, err) = ot_client(
        &client_data,
        &[
            "--server",
            &wss,
            "--ca-file",
            cert_arg,
            "insert",
            "tls-doc",
            "0",
            "hello over tls",
        ],
    )
    .await?;
    assert!(ok, "insert failed: {out}{err}");
    let ip = format!("https://127.0.0.1:{port}");
    let (ok, out, err) = ot_client(
        &client_data,
        &["--server", &ip, "--ca-file", cert_arg, "cat", "tls-doc"],
    )
    .await?;
    assert!(ok, "cat failed: {err}");
    assert_eq!(out.trim_end(), "hello over tls");

    // Without the CA file the certificate is not trusted: a clear failure, no hang.
    for args in [
        vec!["--server", wss.as_str(), "append", "tls-doc", "!"],
        vec!["--server", ip.as_str(), "cat", "tls-doc"],
    ] {
        let (ok, out, err) = ot_client(&dir.path().join("other"), &args).await?;
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            err.to_lowercase().contains("certificate"),
            "{args:?}: {err}"
        );
    }
    let (_, text) = ot_driver::http::get_with(&https, "/api/docs/tls-doc", &trusting).await?;
    let text: Value = serde_json::from_str(&text)?;
    assert_eq!(text["text"], "hello over tls");
    child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn the_tls_handshake_is_bounded_by_the_handshake_timeout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed(dir.path())?;
    let server = start_server_with(dir.path(), |c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
        c.handshake_timeout_secs = 1;
    })
    .await?;
    let addr = server.addr;

    // One byte of a ClientHello, then nothing: dropped after the timeout.
    let mut stalled = tokio::net::TcpStream::connect(addr).await?;
    stalled.write_all(&[0x16]).await?;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stalled.read(&mut buf))
        .await
        .context("a stalled TLS handshake was not dropped")?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A driver connection over wss works, with the CA file.
    let url = format!("wss://localhost:{}/ws/d?client=tlsclient", addr.port());
    let options = ConnectOptions {
        ca_file: Some(cert.clone()),
        ..ConnectOptions::default()
    };
    let mut socket =
        ot_driver::open_socket_with(&url, &ot_protocol::Limits::default(), &options, None).await?;
    let first = recv_json(&mut socket, WAIT).await?;
    assert_eq!(first["type"], "snapshot", "{first}");
    // And fails on the certificate without it.
    let refused = ot_driver::open_socket_with(
        &url,
        &ot_protocol::Limits::default(),
        &ConnectOptions::default(),
        None,
    )
    .await;
    let error = refused
        .err()
        .context("an untrusted certificate was accepted")?;
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    drop(socket);
    server.stop().await
}
