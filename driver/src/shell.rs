//! The tokio shell around [`SessionCore`]: open the WebSocket (with a
//! timeout and frame limits sized by the server's announced limits), move
//! frames both ways, save before sending, and say when to reconnect (backoff
//! with full jitter). Everything the session decides is in the core.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ot_core::{Operation, Range};
use ot_protocol::{ClientKey, ClientMessage, CloseAction, Limits, CLIENT_KEY_HEADER};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::core::{Event, SessionCore, SessionError, SessionState};
use crate::options::{ConnectOptions, TokenFileError};
use crate::tls::{client_config, TlsError};
use crate::url::ServerUrl;

/// A WebSocket to the server.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long opening a connection, and then the server's first message, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may stay silent (no message, no ping or pong) before
/// the driver takes it for dead and reconnects. The server pings every 20 s,
/// so a live connection is never silent that long; a dropped network (no FIN,
/// no RST) otherwise looks connected for many minutes.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(45);

/// Saves the session state durably; called before any op that the state
/// produced is sent.
pub type Saver = Box<dyn FnMut(&SessionState) -> Result<(), BoxError> + Send>;

/// Any error, from a caller's [`Saver`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Connecting or the upgrade failed.
    #[error("connecting to {server}: {source}")]
    Connect {
        /// The server.
        server: String,
        /// What failed.
        source: tokio_tungstenite::tungstenite::Error,
    },
    /// The server refused the connection with HTTP 403 `forbidden`: the
    /// client id is bound to a key this writer does not have (PROTOCOL.md,
    /// "The writer key"), or the token does not cover the document. Retrying
    /// cannot help.
    #[error("the server refused the connection (403 forbidden): {0}")]
    Forbidden(String),
    /// The server refused the connection with HTTP 401 `unauthorized`: no
    /// token, or an expired, revoked or malformed one. A new token is needed
    /// (a token file is read again on every connection).
    #[error("token expired or not accepted (401 unauthorized): {0}")]
    Unauthorized(String),
    /// The token file could not be read.
    #[error(transparent)]
    Token(#[from] TokenFileError),
    /// The TLS configuration (system roots, CA file) could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Connecting, or the server's first message, took too long.
    #[error("{0}")]
    Timeout(String),
    /// The connection ended before the server's first message.
    #[error("{0}")]
    Closed(String),
    /// Saving the state failed (nothing was sent).
    #[error("saving the client state: {0}")]
    Save(BoxError),
    /// A local edit was refused.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// What arrived on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame.
    Text(String),
    /// A close frame (its code, if it had one, and reason), or the end of the
    /// stream without one (`None`).
    Closed(Option<u16>, String),
}

/// The next text frame or end of `socket` (pings, pongs and binary frames skipped).
pub async fn next_incoming(socket: &mut Socket) -> Incoming {
    loop {
        if let Some(incoming) = incoming_of(socket.next().await) {
            return incoming;
        }
    }
}

/// What a read from the socket means; `None` for frames that are skipped.
fn incoming_of(
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<Incoming> {
    Some(match frame {
        Some(Ok(Message::Text(text))) => Incoming::Text(text.as_str().to_owned()),
        Some(Ok(Message::Close(Some(f)))) => Incoming::Closed(
            Some(u16::from(f.code)),
            format!("closed by the server ({} {})", u16::from(f.code), f.reason),
        ),
        Some(Ok(Message::Close(None))) => Incoming::Closed(None, "closed by the server".to_owned()),
        Some(Ok(_)) => return None,
        Some(Err(e)) => Incoming::Closed(None, format!("connection lost: {e}")),
        None => Incoming::Closed(None, "connection lost".to_owned()),
    })
}

/// Send one text frame on `socket`, within `deadline` (a peer that stopped
/// reading must not hold the caller): false if it could not be sent.
pub async fn send_text(socket: &mut Socket, text: String, deadline: Duration) -> bool {
    matches!(
        tokio::time::timeout(deadline, socket.send(Message::text(text))).await,
        Ok(Ok(()))
    )
}

/// The socket settings for a server with `limits`: frames up to the largest
/// the server may send (a snapshot of a full document).
pub fn socket_config(limits: &Limits) -> WebSocketConfig {
    let largest = limits.max_server_frame_bytes();
    WebSocketConfig::default()
        .max_message_size(Some(largest))
        .max_frame_size(Some(largest))
}

/// Open a WebSocket to `url` within [`CONNECT_TIMEOUT`], with default
/// [`ConnectOptions`] and no key.
pub async fn open_socket(url: &str, limits: &Limits) -> Result<Socket, DriverError> {
    open_socket_with(url, limits, &ConnectOptions::default(), None).await
}

/// Open a WebSocket to `url` (`ws://` or `wss://`) within [`CONNECT_TIMEOUT`],
/// proving `key` (if given) with the `x-ot-client-key` header: never in the
/// URL, which ends up in logs.
pub async fn open_socket_with(
    url: &str,
    limits: &Limits,
    options: &ConnectOptions,
    key: Option<&ClientKey>,
) -> Result<Socket, DriverError> {
    let connect_error = |source| DriverError::Connect {
        server: url.to_owned(),
        source,
    };
    let mut request = url.into_client_request().map_err(connect_error)?;
    if let Some(token) = options.bearer()? {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            DriverError::Unauthorized("the token holds characters a header cannot carry".into())
        })?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    if let Some(key) = key {
        // A key is 32 hex digits: always a valid header value.
        if let Ok(value) = HeaderValue::from_str(key.as_str()) {
            request.headers_mut().insert(CLIENT_KEY_HEADER, value);
        }
    }
    let connector = if url.starts_with("wss://") {
        tokio_tungstenite::Connector::Rustls(client_config(options)?)
    } else {
        tokio_tungstenite::Connector::Plain
    };
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(socket_config(limits)),
        false,
        Some(connector),
    );
    let (socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| DriverError::Timeout(format!("connecting to {url} timed out")))?
        .map_err(|source| match source {
            tokio_tungstenite::tungstenite::Error::Http(response)
                if matches!(response.status().as_u16(), 401 | 403) =>
            {
                let body = response.body().as_deref().unwrap_or_default();
                let why = refusal_message(body);
                if response.status().as_u16() == 401 {
                    DriverError::Unauthorized(why)
                } else {
                    DriverError::Forbidden(why)
                }
            }
            source => DriverError::Connect {
                server: url.to_owned(),
                source,
            },
        })?;
    Ok(socket)
}

/// An HTTP error body (`{"code":…,"message":…}`) as `message (code)`, else the body.
fn refusal_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            Some(format!(
                "{} ({})",
                v["message"].as_str()?,
                v["code"].as_str()?
            ))
        })
        .unwrap_or_else(|| text.into_owned())
}

/// A connection opened by [`Driver::dial`], with the server's first frame,
/// ready for [`Driver::attach`].
pub struct Dialed {
    socket: Socket,
    first: String,
}

/// How the state is made durable before ops leave.
enum Durability {
    /// Nothing to save (an in-memory client): every state counts as durable.
    Immediate,
    /// Saved by this function, synchronously, before sending.
    Saver(Saver),
    /// Confirmed by the caller with [`Driver::confirm_durable`], possibly later.
    External,
}

/// Exponential backoff with full jitter: attempt n waits a uniformly random
/// time up to `min(cap, base · 2^n)` (plus a small floor), so that many
/// clients cut off together do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempts: u32,
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 0,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(self.cap);
        self.attempts = self.attempts.saturating_add(1);
        let floor = Duration::from_millis(20);
        floor + ceiling.mul_f64(rand::random::<f64>())
    }

    /// A connection worked: start over.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// One writer's session over a real WebSocket: [`SessionCore`] plus a socket.
pub struct Driver {
    core: SessionCore,
    server: ServerUrl,
    options: ConnectOptions,
    socket: Option<Socket>,
    durability: Durability,
    backoff: Backoff,
    stopped: Option<String>,
    /// Silence after which the connection is dropped (see [`DEFAULT_LIVENESS`]).
    liveness: Duration,
    /// When the last frame of any kind arrived on the socket.
    last_heard: Instant,
    /// Whether a ping was sent since then.
    pinged: bool,
}

impl Driver {
    /// A driver for `core` on `server`; not connected. Every state counts as
    /// durable until [`with_saver`](Self::with_saver) or
    /// [`with_external_durability`](Self::with_external_durability).
    pub fn new(server: ServerUrl, core: SessionCore) -> Driver {
        Driver {
            core,
            server,
            options: ConnectOptions::default(),
            socket: None,
            durability: Durability::Immediate,
            backoff: Backoff::default(),
            stopped: None,
            liveness: DEFAULT_LIVENESS,
            last_heard: Instant::now(),
            pinged: false,
        }
    }

    /// Take a connection for dead after `silence` without any frame from the
    /// server (default [`DEFAULT_LIVENESS`]); after a third of it the driver
    /// sends a `ping` to draw an answer.
    pub fn with_liveness(mut self, silence: Duration) -> Driver {
        self.liveness = silence.max(Duration::from_millis(30));
        self
    }

    /// Save the state with `saver` before any op it produced is sent.
    pub fn with_saver(mut self, saver: Saver) -> Driver {
        self.durability = Durability::Saver(saver);
        self
    }

    /// Connect with `options` (e.g. a CA file for `wss://`).
    pub fn with_connect_options(mut self, options: ConnectOptions) -> Driver {
        self.options = options;
        self
    }

    /// The connection options.
    pub fn connect_options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Send ops only once the caller has confirmed their state with
    /// [`confirm_durable`](Self::confirm_durable).
    pub fn with_external_durability(mut self) -> Driver {
        self.durability = Durability::External;
        self
    }

    /// The session core.
    pub fn core(&self) -> &SessionCore {
        &self.core
    }

    /// The session core, to change it directly (call [`flush`](Self::flush) after).
    pub fn core_mut(&mut self) -> &mut SessionCore {
        &mut self.core
    }

    /// The server.
    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.socket.is_some()
    }

    /// Why the driver must not reconnect (the server said so), if it must not.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// How long to wait before the next connection attempt.
    pub fn retry_delay(&mut self) -> Duration {
        self.backoff.next_delay()
    }

    /// The URL of the next connection attempt.
    pub fn connect_url(&self) -> String {
        format!("{}{}", self.server.ws(), self.core.connect_path())
    }

    /// Start a connection attempt that does not borrow the driver: open the
    /// WebSocket and read the server's first frame. The caller keeps editing
    /// (offline) meanwhile, then hands the result to [`attach`](Self::attach).
    /// Edits made meanwhile are fine: they do not change the revision the URL
    /// resumes from, and the resume resends whatever is pending.
    pub fn dial(&self) -> impl Future<Output = Result<Dialed, DriverError>> + Send + 'static {
        let url = self.connect_url();
        let limits = self.core.limits().unwrap_or_default();
        let key = self.core.client_key().cloned();
        let options = self.options.clone();
        async move {
            let mut socket = open_socket_with(&url, &limits, &options, key.as_ref()).await?;
            match tokio::time::timeout(CONNECT_TIMEOUT, next_incoming(&mut socket)).await {
                Ok(Incoming::Text(first)) => Ok(Dialed { socket, first }),
                Ok(Incoming::Closed(_, why)) => Err(DriverError::Closed(why)),
                Err(_) => Err(DriverError::Timeout(
                    "the server did not greet the connection".to_owned(),
                )),
            }
        }
    }

    /// Take over a connection opened by [`dial`](Self::dial): handle its first
    /// message (a snapshot or a resume, resending what is pending).
    pub async fn attach(&mut self, dialed: Dialed) -> Result<Vec<Event>, DriverError> {
        self.socket = Some(dialed.socket);
        self.heard();
        self.core.on_open();
        let mut events = self.core.receive(&dialed.first);
        self.settle(&mut events).await?;
        if self.socket.is_some() {
            self.backoff.reset();
        }
        Ok(events)
    }

    /// One connection attempt: connect, then handle the first message.
    pub async fn connect(&mut self) -> Result<Vec<Event>, DriverError> {
        self.close_socket().await;
        // A new key is presented only once saved: save it now if it is not.
        self.save_now()?;
        let dialed = match self.dial().await {
            Err(DriverError::Forbidden(why)) => {
                self.stopped = Some(format!("the server refused the connection: {why}"));
                return Err(DriverError::Forbidden(why));
            }
            other => other?,
        };
        self.attach(dialed).await
    }

    /// Close the connection (the session keeps working offline).
    pub async fn disconnect(&mut self) {
        self.close_socket().await;
        if self.core.is_connected() {
            self.core.on_closed(Some(1000), "closed by the client");
        }
    }

    async fn close_socket(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            // Bounded: a peer that stopped reading must not hold us.
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        }
    }

    /// Wait for the next server frame and handle it. Pending forever while
    /// disconnected (so it can sit in a `select!` next to other events).
    pub async fn next_events(&mut self) -> Result<Vec<Event>, DriverError> {
        if self.socket.is_none() {
            return std::future::pending().await;
        }
        let mut events = match self.next_alive().await {
            Incoming::Text(text) => self.core.receive(&text),
            Incoming::Closed(code, why) => {
                self.socket = None;
                vec![self.core.on_closed(code, &why)]
            }
        };
        self.settle(&mut events).await?;
        Ok(events)
    }

    /// A frame arrived (or the connection is new): the silence starts over.
    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.pinged = false;
    }

    /// The next text frame or end of the socket, like [`next_incoming`], but
    /// every frame (pings and pongs included) counts as a sign of life: after
    /// a third of the liveness limit of silence a `ping` is sent, and after
    /// the whole limit the connection counts as lost. Cancel-safe between frames.
    async fn next_alive(&mut self) -> Incoming {
        loop {
            let Some(socket) = self.socket.as_mut() else {
                return Incoming::Closed(None, "connection lost".to_owned());
            };
            let dead_at = self.last_heard + self.liveness;
            let ping_at = self.last_heard + self.liveness / 3;
            let wake = if self.pinged { dead_at } else { ping_at };
            let frame = tokio::select! {
                frame = socket.next() => frame,
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= dead_at {
                        return Incoming::Closed(
                            None,
                            format!(
                                "no message from the server for {:.0?}: reconnecting",
                                self.liveness
                            ),
                        );
                    }
                    self.pinged = true;
                    let ping = Message::text(ClientMessage::Ping.to_text());
                    // Bounded: a socket that takes no more bytes is as dead as a silent one.
                    let sent = tokio::time::timeout(self.liveness / 3, socket.send(ping)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        return Incoming::Closed(None, "connection lost: the ping could not be sent".to_owned());
                    }
                    continue;
                }
            };
            self.heard();
            if let Some(incoming) = incoming_of(frame) {
                return incoming;
            }
        }
    }

    /// Apply a local edit at once (with this user's selection after it, if
    /// given); saved, and sent if nothing is outstanding.
    pub async fn local_edit(
        &mut self,
        op: &Operation,
        ranges: Option<Vec<Range>>,
    ) -> Result<Vec<Event>, DriverError> {
        self.core.local_edit(op, ranges)?;
        let mut events = Vec::new();
        self.settle(&mut events).await?;
        Ok(events)
    }

    /// Set this user's selection (local text positions); sent to the others
    /// when nothing is outstanding. Unchanged ranges are sent only if `always`
    /// (after connecting, since the server forgets a connection's cursor).
    pub async fn set_cursor(
        &mut self,
        ranges: Vec<Range>,
        always: bool,
    ) -> Result<Vec<Event>, DriverError> {
        self.core.set_cursor(ranges, always);
        let mut events = Vec::new();
        self.settle(&mut events).await?;
        Ok(events)
    }

    /// With external durability: the state as of `version` is durable; send
    /// what waited for it.
    pub async fn confirm_durable(&mut self, version: u64) -> Result<Vec<Event>, DriverError> {
        self.core.confirm_durable(version);
        self.flush().await
    }

    /// Save (if a saver is set) and send whatever may be sent now.
    pub async fn flush(&mut self) -> Result<Vec<Event>, DriverError> {
        let mut events = Vec::new();
        self.settle(&mut events).await?;
        Ok(events)
    }

    /// Save the state now if it needs saving (with a saver, or confirmed at
    /// once for an in-memory client). Call it before [`dial`](Self::dial)
    /// when the state may hold a key never saved (a new writer, a state
    /// saved before keys), so that the connection can present it.
    pub fn save_now(&mut self) -> Result<(), DriverError> {
        if self.core.needs_save() {
            let version = self.core.version();
            match &mut self.durability {
                Durability::Immediate => self.core.confirm_durable(version),
                Durability::Saver(save) => {
                    save(&self.core.state()).map_err(DriverError::Save)?;
                    self.core.confirm_durable(version);
                }
                Durability::External => {}
            }
        }
        Ok(())
    }

    /// Save what must be saved, then send what may be sent; close the socket
    /// if the core dropped the connection.
    async fn settle(&mut self, events: &mut Vec<Event>) -> Result<(), DriverError> {
        for event in events.iter() {
            if let Event::Disconnected {
                action: CloseAction::Stop,
                reason,
            } = event
            {
                self.stopped = Some(reason.clone());
            }
        }
        self.save_now()?;
        if !self.core.is_connected() {
            self.close_socket().await;
            return Ok(());
        }
        while let Some(text) = self.core.poll_transmit() {
            let Some(socket) = self.socket.as_mut() else {
                break;
            };
            if let Err(e) = socket.send(Message::text(text)).await {
                self.socket = None;
                events.push(self.core.on_closed(None, &format!("connection lost: {e}")));
                break;
            }
        }
        Ok(())
    }

    /// Keep handling frames until every local edit is acknowledged, or
    /// `within` passes; returns the events seen.
    pub async fn wait_saved(&mut self, within: Duration) -> Result<Vec<Event>, WaitError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        while !self.core.client().all_saved() {
            if self.socket.is_none() {
                return Err(WaitError::Disconnected);
            }
            match tokio::time::timeout_at(deadline, self.next_events()).await {
                Ok(events) => all.extend(events?),
                Err(_) => return Err(WaitError::Timeout(within)),
            }
        }
        Ok(all)
    }
}

/// Why [`Driver::wait_saved`] stopped waiting.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The connection was lost first.
    #[error("the connection was lost before the server acknowledged every edit")]
    Disconnected,
    /// Not every edit was acknowledged in time.
    #[error("the server did not acknowledge every edit within {0:?}")]
    Timeout(Duration),
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}
