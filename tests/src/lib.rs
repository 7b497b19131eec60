//! Support for the end-to-end tests: start a real server (in this process or
//! as a subprocess) on a free loopback port, and drive it with real WebSocket
//! clients that run the shared session core (`ot-driver`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod postgres;
pub mod proxy;
pub mod tmpfs;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use ot_core::client::Client;
use ot_core::{Operation, Range};
use ot_driver::{Event as SessionEvent, SessionCore};
use ot_protocol::{ClientMessage, Code, DocId, ServerMessage};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod attack;
pub mod doc_work;

/// A WebSocket stream to the server.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Whether the suites run as users of a secured server (`OT_TEST_AUTH=1`,
/// which `scripts/test` sets for a second run of the browser and terminal
/// client suites): every server [`start_server_with`] starts has
/// authentication on, and every helper client here carries a token of one
/// user (admin on `*`).
pub fn test_auth() -> bool {
    std::env::var("OT_TEST_AUTH").is_ok_and(|v| v == "1")
}

/// The secret of the servers in [`test_auth`] mode.
pub const TEST_SECRET: &[u8] = b"the-e2e-suites-secret-for-OT_TEST_AUTH-runs";

/// Claims for a test token: user `sub` on `docs` with `access`, valid for
/// `ttl` seconds from now (negative: already expired), a fresh `jti`, issued now.
pub fn test_claims(
    sub: &str,
    docs: &[&str],
    access: ot_protocol::Access,
    ttl: i64,
) -> server::auth::Claims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    server::auth::Claims {
        sub: sub.to_owned(),
        name: None,
        docs: docs.iter().map(|d| d.to_string()).collect(),
        access,
        exp: now.saturating_add_signed(ttl),
        jti: format!("{sub}-{now}-{:016x}", rand::random::<u64>()),
        nbf: None,
        iat: Some(now),
    }
}

/// [`test_claims`] signed with HS256 and `secret`.
pub fn mint_test_token(
    secret: &[u8],
    sub: &str,
    docs: &[&str],
    access: ot_protocol::Access,
    ttl: i64,
) -> String {
    server::auth::mint_hs256(&test_claims(sub, docs, access, ttl), secret)
        .expect("HS256 signing of test claims")
}

/// A token (admin on `*`, user `e2e`, display name `name` if given, an
/// hour) for [`test_auth`] mode; `None` otherwise.
pub fn test_token(name: Option<&str>) -> Option<String> {
    if !test_auth() {
        return None;
    }
    let mut claims = test_claims("e2e", &["*"], ot_protocol::Access::Admin, 3600);
    claims.name = name.map(str::to_owned);
    server::auth::mint_hs256(&claims, TEST_SECRET).ok()
}

/// The secret file of [`test_auth`] mode (written once per test process).
fn test_secret_file() -> Result<PathBuf> {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = FILE.get() {
        return Ok(path.clone());
    }
    let path = std::env::temp_dir().join(format!("ot-e2e-secret-{}", std::process::id()));
    std::fs::write(&path, TEST_SECRET)?;
    Ok(FILE.get_or_init(|| path).clone())
}

/// Connection options that carry [`test_token`] (none outside [`test_auth`] mode).
pub fn test_connect_options() -> ot_driver::ConnectOptions {
    ot_driver::ConnectOptions {
        token: test_token(None).map(ot_driver::TokenSource::Value),
        ..ot_driver::ConnectOptions::default()
    }
}

/// Start an in-process server on a free loopback port with `data_dir`.
pub async fn start_server(data_dir: &Path) -> Result<server::RunningServer> {
    start_server_with(data_dir, |_| {}).await
}

/// Like [`start_server`], adjusting the configuration first.
pub async fn start_server_with(
    data_dir: &Path,
    adjust: impl FnOnce(&mut server::Config),
) -> Result<server::RunningServer> {
    let mut config = server::Config::with_defaults(
        "127.0.0.1:0".parse().expect("loopback address"),
        data_dir.to_path_buf(),
    );
    if test_auth() {
        config.auth_secret_file = Some(test_secret_file()?);
    }
    adjust(&mut config);
    server::start(config).await
}

/// What a finished process printed: its stdout, then its stderr.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Run the server binary on `data` with `extra` args, expecting it to exit
/// on its own within 20 s (a refused start): its output. Panics if it keeps
/// running.
pub fn run_to_exit(data: &Path, extra: &[&str]) -> std::process::Output {
    let port = free_port().to_string();
    let mut child = Command::new(server_binary().expect("the server binary"))
        .args(["--addr", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the server binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running with {extra:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("the server's output")
}

/// Path of the `server` binary, built if needed (for tests that kill it).
pub fn server_binary() -> Result<PathBuf> {
    workspace_binaries().map(|debug| debug.join(exe("server")))
}

/// Path of the terminal client binary `ot-client`, built if needed (for
/// tests that run it as a user would).
pub fn ot_client_binary() -> Result<PathBuf> {
    workspace_binaries().map(|debug| debug.join(exe("ot-client")))
}

/// Path of example `name` of the `examples` package (`examples/examples/`),
/// built if needed: `target/debug/examples/{name}`, where
/// `cargo test --workspace --all-targets` puts it too.
pub fn example_binary(name: &str) -> Result<PathBuf> {
    workspace_binaries().map(|debug| debug.join("examples").join(exe(name)))
}

/// `name` with the platform's executable suffix.
fn exe(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// Build every binary and example of the workspace (debug), once per test
/// process, and return the debug output directory.
///
/// The whole workspace, with examples, on purpose: cargo resolves the
/// dependencies' features from what it is asked to build, and this is the
/// selection whose features equal those of `cargo test --workspace
/// --all-targets` (dev-dependencies included, e.g. tokio's `test-util`).
/// After that test build this is a no-op but for linking; `cargo build -p
/// server` instead would build tokio and everything above it once more, with
/// other features (minutes, on a fresh clone).
fn workspace_binaries() -> Result<PathBuf> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(debug) = BUILT.get() {
        return Ok(debug.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "--quiet", "--workspace", "--bins", "--examples"]);
    // `cargo test` gives this process the variables of the crate under
    // test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, OUT_DIR, …). Build scripts
    // that watch them (ring's does) would see them change and rebuild, with
    // everything above them, here and again in the next `cargo test`.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_crate_variable) {
            build.env_remove(&key);
        }
    }
    let status = build
        .status()
        .context("running cargo build for the workspace's binaries")?;
    if !status.success() {
        bail!("building the workspace's binaries failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target"));
    Ok(BUILT.get_or_init(|| target.join("debug")).clone())
}

/// Whether `name` is one of the variables cargo sets for a crate it builds
/// or tests (not one that configures cargo itself, like CARGO_TARGET_DIR).
fn is_crate_variable(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether `error` comes from binding an address already in use.
fn address_in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// A home and a regional server of it, both in this process, the region's
/// link going through a [`proxy::Proxy`] (stall it to cut the region off).
/// In [`test_auth`] mode both check tokens and the link presents one with
/// `region` access.
pub struct HomeAndRegion {
    /// The home.
    pub home: server::RunningServer,
    /// Between the region and the home.
    pub proxy: proxy::Proxy,
    /// The region (`--upstream` through the proxy, `--node-id eu`).
    pub region: server::RunningServer,
}

impl HomeAndRegion {
    /// Start both, with data in `dir/home` and `dir/region`.
    pub async fn start(dir: &Path) -> Result<HomeAndRegion> {
        // The proxy needs the home's address first: a free port, taken
        // again if another process binds it before the home does.
        let mut attempt = 0;
        let (home, proxy) = loop {
            attempt += 1;
            let home_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let proxy = proxy::Proxy::start(home_addr).await?;
            let proxy_host = proxy.addr().to_string();
            let started = start_server_with(&dir.join("home"), |c| {
                c.addr = home_addr;
                // The region reaches the home by the proxy's address.
                c.allowed_host = vec![proxy_host.clone()];
            })
            .await;
            match started {
                Ok(home) => break (home, proxy),
                Err(e) if attempt < 5 && address_in_use(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        let proxy_host = proxy.addr().to_string();
        let region_dir = dir.join("region");
        std::fs::create_dir_all(&region_dir)?;
        let token_file = region_dir.join("upstream.token");
        if test_auth() {
            let token =
                mint_test_token(TEST_SECRET, "eu", &["*"], ot_protocol::Access::Region, 3600);
            std::fs::write(&token_file, token)?;
        }
        let region = start_server_with(&region_dir, |c| {
            c.upstream = Some(format!("ws://{proxy_host}"));
            c.node_id = Some("eu".into());
            if test_auth() {
                c.upstream_token_file = Some(token_file.clone());
            }
        })
        .await?;
        Ok(HomeAndRegion {
            home,
            proxy,
            region,
        })
    }

    /// Stop both, gracefully.
    pub async fn stop(self) -> Result<()> {
        self.region.stop().await?;
        self.home.stop().await
    }
}

/// A server binary running as a child process.
pub struct ServerProcess {
    /// The child.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Start `binary` on `port` with `data_dir` and extra args; wait until /healthz answers.
    pub async fn start(binary: &Path, data_dir: &Path, port: u16, extra: &[&str]) -> Result<Self> {
        Self::start_with(binary, data_dir, port, extra, &[], None).await
    }

    /// [`start`](Self::start) with more environment variables, and its
    /// output (the log) written to `log` if given.
    pub async fn start_with(
        binary: &Path,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut command = Command::new(binary);
        command
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("E2E_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        if let Some(log) = log {
            let file = std::fs::File::create(log).context("creating the server's log file")?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        let child = command.spawn().context("starting the server binary")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(body) = http_get(addr, "/healthz").await {
                if body.contains("ok") {
                    return Ok(ServerProcess { child, addr });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server did not come up on {addr}")
    }

    /// Stop gracefully (SIGTERM, 30 s at most): an error unless it exits with 0.
    pub fn stop(mut self) -> Result<()> {
        match self.terminate(Duration::from_secs(30))? {
            Some(0) => Ok(()),
            code => bail!("the server exited with {code:?} after SIGTERM"),
        }
    }

    /// SIGSTOP: the process stops running (it reads nothing more) until
    /// killed.
    pub fn freeze(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status();
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn terminate(&mut self, within: Duration) -> Result<Option<i32>> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        bail!("the server did not exit within {within:?} of SIGTERM")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// A GET on loopback; returns the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let (status, body) = http_get_status(addr, path).await?;
    if status != 200 {
        bail!("GET {path}: status {status}: {body}");
    }
    Ok(body)
}

/// A GET on loopback; returns (status, body).
pub async fn http_get_status(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    ot_driver::http::get_with(&addr.into(), path, &test_connect_options())
        .await
        .with_context(|| format!("GET {path}"))
}

/// `GET /api/docs/{doc}` → (rev, text).
pub async fn doc_state(addr: SocketAddr, doc: &str) -> Result<(u64, String)> {
    let body = http_get(addr, &format!("/api/docs/{doc}")).await?;
    let v: Value = serde_json::from_str(&body)?;
    Ok((
        v["rev"].as_u64().ok_or_else(|| anyhow!("no rev"))?,
        v["text"]
            .as_str()
            .ok_or_else(|| anyhow!("no text"))?
            .to_owned(),
    ))
}

/// Replay every stored op from revision 0 through the HTTP API.
pub async fn replay_ops(addr: SocketAddr, doc: &str) -> Result<(u64, String)> {
    let mut text = String::new();
    let mut rev = 0u64;
    loop {
        let body = http_get(addr, &format!("/api/docs/{doc}/ops?from={rev}&limit=1000")).await?;
        let v: Value = serde_json::from_str(&body)?;
        let ops = v["ops"].as_array().ok_or_else(|| anyhow!("no ops"))?;
        if ops.is_empty() {
            return Ok((rev, text));
        }
        for op in ops {
            let r = op["rev"].as_u64().ok_or_else(|| anyhow!("no rev"))?;
            if r != rev + 1 {
                bail!("gap in the stored ops: {r} after {rev}");
            }
            let operation = Operation::from_json_value(&op["op"])?;
            text = operation.apply(&text)?;
            rev = r;
        }
    }
}

/// What arrived on a WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame, parsed as JSON.
    Json(Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame: its code and reason, if it had them.
    Closed(Option<(u16, String)>),
    /// The stream ended or failed without a close frame.
    Ended(String),
}

/// The next event on `socket` (pings and pongs skipped); an error on timeout.
pub async fn next_event(socket: &mut Socket, within: Duration) -> Result<Event> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, socket.next())
            .await
            .map_err(|_| anyhow!("no message within {within:?}"))?;
        return Ok(match frame {
            Some(Ok(Message::Text(t))) => Event::Json(
                serde_json::from_str(t.as_str()).with_context(|| format!("not JSON: {t}"))?,
            ),
            Some(Ok(Message::Binary(b))) => Event::Binary(b.to_vec()),
            Some(Ok(Message::Close(frame))) => {
                Event::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => Event::Ended(e.to_string()),
            None => Event::Ended("end of stream".to_owned()),
        });
    }
}

/// The next text frame on `socket` as JSON; an error on timeout, close or end.
pub async fn recv_json(socket: &mut Socket, within: Duration) -> Result<Value> {
    match next_event(socket, within).await? {
        Event::Json(v) => Ok(v),
        other => bail!("expected a JSON message, got {other:?}"),
    }
}

/// Open a WebSocket to `path` (e.g. `/ws/doc?client=x`) on `addr`.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> Result<Socket> {
    ws_connect_with_key(addr, path, None).await
}

/// The key every [`WsClient`] with `client_id` presents: derived from the id,
/// so that two `WsClient`s with one id are two instances of one writer (as
/// before keys). A takeover test uses another key, or none.
pub fn test_key(client_id: &str) -> ot_protocol::ClientKey {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        (salt, client_id).hash(&mut h);
        h.finish()
    };
    let text = format!("{:016x}{:016x}", half(1), half(2));
    ot_protocol::ClientKey::parse(&text).expect("32 lowercase hex digits")
}

/// Open a WebSocket to `path`, proving `key` (if given) with the
/// `x-ot-client-key` header, as the driver does.
pub async fn ws_connect_with_key(
    addr: SocketAddr,
    path: &str,
    key: Option<&ot_protocol::ClientKey>,
) -> Result<Socket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{addr}{path}");
    let mut request = url.as_str().into_client_request()?;
    if let Some(key) = key {
        request
            .headers_mut()
            .insert(ot_protocol::CLIENT_KEY_HEADER, key.as_str().parse()?);
    }
    if let Some(token) = test_token(None) {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .context("connect timeout")??;
    Ok(socket)
}

/// Open a WebSocket to `url` over a TCP socket whose receive buffer is as
/// small as the kernel allows (so a client that does not read fills up fast).
pub async fn ws_connect_small_recv_buffer(addr: SocketAddr, url: &str) -> Result<Socket> {
    let tcp = tokio::net::TcpSocket::new_v4()?;
    tcp.set_recv_buffer_size(4096)?;
    let stream = tokio::time::timeout(Duration::from_secs(10), tcp.connect(addr))
        .await
        .context("connect timeout")??;
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await
    .context("handshake timeout")??;
    Ok(socket)
}

/// Try to open a WebSocket to `path`, expecting the server to refuse the
/// upgrade; returns the HTTP status and body of the refusal.
pub async fn ws_refused(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    ws_refused_with(addr, path, &[]).await
}

/// Like [`ws_refused`], with extra request `headers` (a key, subprotocols).
pub async fn ws_refused_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    use tokio_tungstenite::tungstenite::Error;
    let url = format!("ws://{addr}{path}");
    let mut request = url.as_str().into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .context("connect timeout")?;
    match result {
        Ok(_) => bail!("the upgrade to {path} was accepted"),
        Err(Error::Http(response)) => Ok((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => bail!("the upgrade to {path} failed without an HTTP answer: {e}"),
    }
}

/// `GET path` → (status, body as JSON).
pub async fn http_get_json(addr: SocketAddr, path: &str) -> Result<(u16, Value)> {
    let (status, body) = http_get_status(addr, path).await?;
    let value = serde_json::from_str(&body)
        .with_context(|| format!("GET {path}: status {status}, body not JSON: {body}"))?;
    Ok((status, value))
}

/// The value of the metric sample `name` (exactly as written, labels
/// included, e.g. `ot_errors_total{code="bad_seq"}`) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET /metrics`, and the value of sample `name` in it (0 if absent).
pub async fn metric_value(addr: SocketAddr, name: &str) -> Result<f64> {
    let page = http_get(addr, "/metrics").await?;
    Ok(metric(&page, name).unwrap_or(0.0))
}

/// Poll `GET /api/docs/{doc}` until its revision is at least `rev` (bounded).
pub async fn wait_for_rev(addr: SocketAddr, doc: &str, rev: u64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((r, _)) = doc_state(addr, doc).await {
            if r >= rev {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("{doc} did not reach revision {rev} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An `error` frame a [`WsClient`] received (and fed to its session).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorFrame {
    /// Its code (possibly one this version does not know).
    pub code: Code,
    /// Its text.
    pub message: String,
    /// The seq of the op it concerns, if any.
    pub seq: Option<u64>,
}

/// Send one client message on a raw socket.
pub async fn send_message(socket: &mut Socket, message: &ClientMessage) -> Result<()> {
    socket.send(Message::text(message.to_text())).await?;
    Ok(())
}

/// The next text frame on `socket`, read as a server message; an error on
/// timeout, close, end or an unreadable frame.
pub async fn recv_message(socket: &mut Socket, within: Duration) -> Result<ServerMessage<'static>> {
    let value = recv_json(socket, within).await?;
    parse_value(&value)
}

/// A received frame (as JSON) read by the protocol's rules.
pub fn parse_value(value: &Value) -> Result<ServerMessage<'static>> {
    ServerMessage::parse(&value.to_string()).with_context(|| format!("reading {value}"))
}

/// A real WebSocket client: the shared session core ([`SessionCore`], the
/// same logic as every Rust client: snapshot, resume and resend, acks, the
/// error rule) over a raw socket, with every state durable at once. The raw
/// socket is also there for what tests need: deliberately malformed frames
/// ([`send_text`](Self::send_text)), raw events, closes and cuts.
pub struct WsClient {
    core: SessionCore,
    socket: Option<Socket>,
    /// Server address (set it to reconnect to a restarted server).
    pub addr: SocketAddr,
    /// Error frames received (the session also acts on them: PROTOCOL.md's
    /// error rule).
    pub errors: Vec<ErrorFrame>,
    /// Conflict copies produced by resyncs.
    pub conflict_copies: Vec<String>,
    /// Messages of other types (cursor, leave, unknown), newest last.
    pub other: Vec<ServerMessage<'static>>,
    /// Why the session itself dropped the connection (to resend or resync),
    /// if it did and [`pump_until`](Self::pump_until) has not reconnected yet.
    dropped: Option<String>,
    /// The messages of a `batch` frame that [`recv`](Self::recv) has not
    /// returned yet (the session asks for batches; tests read messages).
    unbatched: VecDeque<Value>,
    /// With `E2E_TRACE=1`: every frame sent and message handled, and every
    /// connect, in order (to tell how a client diverged).
    pub trace: Option<Vec<String>>,
}

impl WsClient {
    /// Connect as a new writer with `client_id`, from a snapshot.
    pub async fn join(addr: SocketAddr, doc: &str, client_id: &str) -> Result<WsClient> {
        let mut c = WsClient::new(addr, doc, client_id);
        c.reconnect().await?;
        Ok(c)
    }

    /// A new writer with `client_id` that has not connected yet (see
    /// [`reconnect`](Self::reconnect) and [`attach`](Self::attach)).
    pub fn new(addr: SocketAddr, doc: &str, client_id: &str) -> WsClient {
        let doc = DocId::parse(doc).expect("a valid document id");
        let mut core = SessionCore::new(doc, client_id).with_client_key(test_key(client_id));
        // In memory: every state counts as durable.
        core.confirm_durable(core.version());
        WsClient {
            core,
            socket: None,
            addr,
            errors: Vec::new(),
            conflict_copies: Vec::new(),
            other: Vec::new(),
            dropped: None,
            unbatched: VecDeque::new(),
            trace: std::env::var("E2E_TRACE")
                .is_ok_and(|v| v == "1")
                .then(Vec::new),
        }
    }

    /// The client state machine (local text, revision, pending edits).
    pub fn client(&self) -> &Client {
        self.core.client()
    }

    /// The session core.
    pub fn core(&self) -> &SessionCore {
        &self.core
    }

    /// The document id.
    pub fn doc(&self) -> &str {
        self.core.doc().as_str()
    }

    /// The epoch from the last snapshot or resume.
    pub fn epoch(&self) -> Option<u64> {
        self.core.epoch()
    }

    /// Whether the client has ever been synced by a snapshot or resume.
    pub fn synced(&self) -> bool {
        self.core.synced()
    }

    /// Whether a socket is open.
    pub fn is_connected(&self) -> bool {
        self.socket.is_some()
    }

    /// The URL [`reconnect`](Self::reconnect) connects to: with `rev` (and
    /// `epoch`) once synced.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.core.connect_path())
    }

    /// (Re)connect: resume from the client's revision once synced, else ask for a snapshot.
    pub async fn reconnect(&mut self) -> Result<()> {
        self.open().await?;
        let first = self.recv(Duration::from_secs(10)).await?;
        self.handle(first).await
    }

    /// Open a new connection to [`url`](Self::url) without reading from it:
    /// the next frame (read it with [`recv`](Self::recv), feed it with
    /// [`handle`](Self::handle)) is the server's first message.
    pub async fn open(&mut self) -> Result<()> {
        self.cut();
        if let Some(trace) = self.trace.as_mut() {
            trace.push(format!("connect {}", self.core.connect_path()));
        }
        let socket =
            ws_connect_with_key(self.addr, &self.core.connect_path(), self.core.client_key())
                .await?;
        self.set_socket(socket);
        Ok(())
    }

    /// Use `socket` (already upgraded to [`url`](Self::url)) from now on,
    /// without reading from it.
    pub fn set_socket(&mut self, socket: Socket) {
        self.cut();
        self.socket = Some(socket);
        self.dropped = None;
        self.core.on_open();
    }

    /// Use `socket` (already upgraded to [`url`](Self::url)): read and handle
    /// its first message (a snapshot or a resume).
    pub async fn attach(&mut self, socket: Socket) -> Result<()> {
        self.set_socket(socket);
        let first = self.recv(Duration::from_secs(10)).await?;
        self.handle(first).await
    }

    /// The next thing that arrives on the socket (text frames parsed as JSON,
    /// not fed to the session); an error on timeout.
    pub async fn next_event(&mut self, within: Duration) -> Result<Event> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(message) = self.unbatched.pop_front() {
                return Ok(Event::Json(message));
            }
            let socket = self
                .socket
                .as_mut()
                .ok_or_else(|| anyhow!("not connected"))?;
            let left = deadline.saturating_duration_since(Instant::now());
            match next_event(socket, left).await? {
                Event::Json(mut frame) if frame["type"] == "batch" => {
                    match frame.get_mut("messages").map(Value::take) {
                        Some(Value::Array(messages)) => self.unbatched.extend(messages),
                        _ => return Ok(Event::Json(frame)),
                    }
                }
                event => return Ok(event),
            }
        }
    }

    /// Fail if any message (or a close) arrives within `quiet`.
    pub async fn expect_quiet(&mut self, quiet: Duration) -> Result<()> {
        match self.next_event(quiet).await {
            Err(_) => Ok(()),
            Ok(event) => bail!("expected nothing within {quiet:?}, got {event:?}"),
        }
    }

    /// Read until the server closes the connection, feeding the messages
    /// before the close to the session; returns the close code and reason.
    pub async fn expect_close(&mut self, within: Duration) -> Result<Option<(u16, String)>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no close within {within:?}");
            }
            match self.next_event(left).await? {
                Event::Json(message) => self.handle(message).await?,
                Event::Binary(_) => bail!("unexpected binary frame"),
                Event::Closed(frame) => {
                    self.socket = None;
                    let code = frame.as_ref().map(|f| f.0);
                    self.core.on_closed(code, "closed by the server");
                    return Ok(frame);
                }
                Event::Ended(why) => {
                    self.cut();
                    bail!("the connection ended without a close frame: {why}")
                }
            }
        }
    }

    /// Drop the connection without a close handshake (like a network cut).
    pub fn cut(&mut self) {
        self.socket = None;
        self.unbatched.clear();
        if self.core.is_connected() {
            self.core.on_closed(None, "cut by the test");
        }
    }

    /// Close the connection cleanly (close frame, then the server's answer).
    pub async fn close(&mut self) -> Result<()> {
        if let Some(mut socket) = self.socket.take() {
            socket.close(None).await?;
            // Read up to the server's close frame (bounded).
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(2), socket.next()).await
            {}
        }
        if self.core.is_connected() {
            self.core.on_closed(Some(1000), "closed by the client");
        }
        Ok(())
    }

    /// Send a client message as it is (not through the session).
    pub async fn send(&mut self, message: &ClientMessage) -> Result<()> {
        self.send_text(&message.to_text()).await
    }

    /// Send raw text (e.g. a deliberately malformed frame).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_frame(Message::text(text.to_owned())).await
    }

    /// Send a binary frame (the protocol accepts none).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.send_frame(Message::binary(bytes)).await
    }

    async fn send_frame(&mut self, frame: Message) -> Result<()> {
        let socket = self
            .socket
            .as_mut()
            .ok_or_else(|| anyhow!("not connected"))?;
        socket.send(frame).await?;
        Ok(())
    }

    /// Send what the session releases (every state counts as durable at
    /// once). A failed send is returned as the socket's error; the session
    /// resends after the next connection.
    async fn flush(&mut self) -> Result<()> {
        self.core.confirm_durable(self.core.version());
        while let Some(text) = self.core.poll_transmit() {
            let Some(socket) = self.socket.as_mut() else {
                break;
            };
            if let Some(trace) = self.trace.as_mut() {
                trace.push(format!("sent {text}"));
            }
            socket.send(Message::text(text)).await?;
        }
        Ok(())
    }

    /// A local edit: applied at once, sent if nothing is outstanding.
    pub async fn edit(&mut self, op: &Operation) -> Result<()> {
        self.core.local_edit(op, None)?;
        self.flush().await
    }

    /// A local edit, then wait (at most `within`) until everything this
    /// client sent is acknowledged.
    pub async fn edit_saved(&mut self, op: &Operation, within: Duration) -> Result<()> {
        self.edit(op).await?;
        self.pump_until(within, |c| c.client().all_saved()).await
    }

    /// A local edit with this user's selection after it (local positions):
    /// the ranges ride on the op (and on later ops).
    pub async fn edit_with_ranges(&mut self, op: &Operation, ranges: Vec<Range>) -> Result<()> {
        self.core.local_edit(op, Some(ranges))?;
        self.flush().await
    }

    /// Receive the next message as JSON, not fed to the session (error on
    /// timeout or close). A `batch` frame's messages come one by one.
    pub async fn recv(&mut self, within: Duration) -> Result<Value> {
        match self.next_event(within).await? {
            Event::Json(v) => Ok(v),
            other => bail!("expected a JSON message, got {other:?}"),
        }
    }

    /// Receive the next message, read by the protocol's rules, not fed to the
    /// session (error on timeout or close).
    pub async fn recv_message(&mut self, within: Duration) -> Result<ServerMessage<'static>> {
        parse_value(&self.recv(within).await?)
    }

    /// Feed one received message (as JSON) to the session (sending what it
    /// releases).
    pub async fn handle(&mut self, message: Value) -> Result<()> {
        if let Some(trace) = self.trace.as_mut() {
            trace.push(format!(
                "got {message} -> rev {}",
                self.core.client().revision()
            ));
        }
        let message = parse_value(&message)?;
        self.handle_message(message).await
    }

    /// Feed one server message to the session (sending what it releases).
    /// Errors are recorded in [`errors`](Self::errors), cursors and leaves in
    /// [`other`](Self::other), conflict copies in
    /// [`conflict_copies`](Self::conflict_copies). If the session drops the
    /// connection (to resend after a `storage_error`, to resync, or on a
    /// revision gap) the socket is closed and
    /// [`pump_until`](Self::pump_until) reconnects.
    pub async fn handle_message(&mut self, message: ServerMessage<'static>) -> Result<()> {
        // A batch's messages one by one, as the driver handles them, until
        // one drops the connection (the rest belong to it).
        for message in message.into_messages() {
            match &message {
                ServerMessage::Error { code, message, seq } => self.errors.push(ErrorFrame {
                    code: code.clone(),
                    message: message.to_string(),
                    seq: *seq,
                }),
                ServerMessage::Cursor { .. }
                | ServerMessage::Leave { .. }
                | ServerMessage::Pong
                | ServerMessage::Unknown => self.other.push(message.clone()),
                _ => {}
            }
            let mut dropped = false;
            for event in self.core.handle(message) {
                match event {
                    SessionEvent::ConflictCopy(copy) => self.conflict_copies.push(copy),
                    SessionEvent::Disconnected { reason, .. } => {
                        self.socket = None;
                        self.unbatched.clear();
                        self.dropped = Some(reason);
                        dropped = true;
                    }
                    _ => {}
                }
            }
            if dropped {
                break;
            }
        }
        self.flush().await
    }

    /// Process messages until `done` holds or `within` passes (reconnecting
    /// if the session dropped the connection).
    pub async fn pump_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&WsClient) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("condition not reached within {within:?}");
            }
            if self.socket.is_none() {
                if let Some(why) = self.dropped.take() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.reconnect()
                        .await
                        .with_context(|| format!("reconnecting after: {why}"))?;
                    continue;
                }
            }
            let message = self.recv(left).await?;
            self.handle(message).await?;
        }
        Ok(())
    }

    /// Process whatever arrives within `quiet` (returns when nothing arrives for that long).
    pub async fn drain(&mut self, quiet: Duration) -> Result<()> {
        while let Ok(message) = self.recv(quiet).await {
            self.handle(message).await?;
        }
        Ok(())
    }

    /// Wait until everything is acknowledged and the client has reached `rev`.
    pub async fn settle_to(&mut self, rev: u64, within: Duration) -> Result<()> {
        self.pump_until(within, |c| {
            c.client().all_saved() && c.client().revision() >= rev
        })
        .await
    }

    /// The local text.
    pub fn text(&self) -> String {
        self.client().text().to_string()
    }
}
