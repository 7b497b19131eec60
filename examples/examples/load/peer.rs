//! The load tool's clients for other servers' protocols (`--protocol rustpad`,
//! `--protocol sharedb`): the connection, the edit and send loop and the
//! measurements are the same for both, and live here; each protocol's
//! messages (connecting, encoding an op, decoding a server message) live in
//! its own module, behind [`Peer`].
//!
//! The client side is ot-core's [`Client`]: one op in flight, later edits
//! buffered, incoming ops transformed against both, exactly as in our
//! protocol. Neither protocol is resumed here: a lost connection ends the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use ot_core::client::{Client, OutgoingOp};
use ot_core::Operation;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::{micros, workload, ws_config, ClientReport, Frame, PhaseConfig, Socket, StartSignal};

/// What one server message did.
#[derive(Debug, Default, PartialEq)]
pub struct Received {
    /// `Some` if the op in flight was acknowledged, holding the next op to
    /// send (if edits were buffered meanwhile).
    pub ack: Option<Option<OutgoingOp>>,
    /// Others' ops as applied to the local text (transformed), in order.
    pub applied: Vec<Operation>,
}

/// One protocol's client state on one document, without I/O but connecting.
pub trait Peer: Sized {
    /// What the protocol calls a document's revision (in error messages).
    const REVISION: &'static str;
    /// What the server does to a client's op (in error messages).
    const ACKED: &'static str;
    /// What an op leaving the client is called (in error messages).
    const OP_MESSAGE: &'static str;
    /// Why a lost connection ends the client (in error messages).
    const NO_RESUME: &'static str;
    /// Whether every client keeps its connection open until all clients have
    /// their final text (a server may drop a client that lags behind others
    /// leaving).
    const WAIT_FOR_ALL_FINAL: bool;

    /// Connect to document `doc` and get ready to edit: the socket, the
    /// state, and the messages that came before it was ready (handled first).
    async fn connect(config: &PhaseConfig, doc: usize) -> Result<(Socket, Self, Vec<String>)>;

    /// The OT client state.
    fn client(&self) -> &Client;

    /// The OT client state, to edit.
    fn client_mut(&mut self) -> &mut Client;

    /// Apply a local edit; the op to send now, if nothing was in flight.
    fn local_edit(&mut self, op: &Operation) -> Result<Option<OutgoingOp>> {
        Ok(self.client_mut().local_edit(op)?)
    }

    /// Handle one server message (after [`Peer::connect`]).
    fn receive(&mut self, text: &str) -> Result<Received>;

    /// The message text for an op leaving the client.
    fn op_message(&self, out: &OutgoingOp) -> Result<String>;
}

/// Open a WebSocket to `url` (within 10 s).
pub async fn open(url: &str, read_buffer: usize) -> Result<Socket> {
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config(read_buffer)), true),
    )
    .await
    .context("connect timeout")?
    .with_context(|| format!("connecting to {url}"))?;
    Ok(socket)
}

/// The next text frame (pings skipped), or why the connection ended; an error on timeout.
pub async fn next_frame(socket: &mut Socket, within: Duration) -> Result<Frame> {
    loop {
        let frame = tokio::time::timeout(within, socket.next())
            .await
            .map_err(|_| anyhow!("no message within {within:?}"))?;
        if let Some(frame) = Frame::from_read(frame) {
            return Ok(frame);
        }
    }
}

/// Wait for the start signal: the time every client was connected.
pub async fn wait_for_start(start_rx: &mut StartSignal) -> Result<Instant> {
    loop {
        if let Some(t0) = *start_rx.borrow_and_update() {
            return Ok(t0);
        }
        start_rx
            .changed()
            .await
            .map_err(|_| anyhow!("the run was abandoned"))?;
    }
}

/// Run one client of protocol `P` through a phase (the counterpart of the
/// main module's `client_task`): connect, edit until the window ends, wait
/// for the acks, then catch up to the document's final revision.
pub async fn client_task<P: Peer>(
    config: Arc<PhaseConfig>,
    doc: usize,
    rng: StdRng,
    mut start_rx: StartSignal,
    ready_tx: mpsc::Sender<Result<(), String>>,
    saved_tx: mpsc::Sender<(usize, u64)>,
    mut targets_rx: watch::Receiver<Option<Arc<Vec<u64>>>>,
) -> Result<ClientReport> {
    let mut c = match PeerClient::<P>::connect(&config, doc, rng).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready_tx.send(Err(format!("{e:#}"))).await;
            return Err(e);
        }
    };
    let _ = ready_tx.send(Ok(())).await;
    drop(ready_tx);
    let t0 = wait_for_start(&mut start_rx).await?;
    let measure_from = t0 + config.warmup;
    let stop_editing = measure_from + config.duration;
    c.window = (measure_from, stop_editing);
    let hard_deadline = stop_editing + config.settle;

    c.load(stop_editing, hard_deadline).await?;
    let _ = saved_tx.send((doc, c.own_acked)).await;
    drop(saved_tx);

    // Wait for the documents' final revisions, reading meanwhile.
    let targets = loop {
        if let Some(t) = targets_rx.borrow_and_update().clone() {
            break t;
        }
        let left = hard_deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            changed = targets_rx.changed() => {
                changed.map_err(|_| anyhow!("the run was abandoned"))?;
            }
            frame = next_frame(&mut c.socket, left) => {
                c.handle_frame(frame?).await?;
            }
        }
    };
    let target = targets
        .get(doc)
        .copied()
        .ok_or_else(|| anyhow!("no final {} (the run failed)", P::REVISION))?;
    while c.session.client().revision() < target {
        let left = hard_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "did not reach {} {target} in time (at {})",
                P::REVISION,
                c.session.client().revision()
            );
        }
        let frame = next_frame(&mut c.socket, left).await?;
        c.handle_frame(frame).await?;
    }
    let client = c.session.client();
    c.report.final_state = Some((client.revision(), client.text().to_string()));
    if P::WAIT_FOR_ALL_FINAL {
        let left = hard_deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, config.all_final.wait()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), c.socket.close(None)).await;
    Ok(c.report)
}

/// One client's connection and measurements.
struct PeerClient<P> {
    config: Arc<PhaseConfig>,
    socket: Socket,
    session: P,
    rng: StdRng,
    /// Where this client "types" (cursor workload).
    cursor: usize,
    /// The op in flight: when it was sent, and when its oldest edit was made.
    inflight: Option<(Instant, Instant)>,
    /// When the oldest edit in the buffer was made.
    buffer_since: Option<Instant>,
    /// Measurement window.
    window: (Instant, Instant),
    /// This client's ops acknowledged over the whole run.
    own_acked: u64,
    report: ClientReport,
}

impl<P: Peer> PeerClient<P> {
    /// Connect to document `doc` and handle the messages that came before the client was ready.
    async fn connect(config: &Arc<PhaseConfig>, doc: usize, rng: StdRng) -> Result<Self> {
        let (socket, session, early) = P::connect(config, doc).await?;
        let mut c = PeerClient {
            config: config.clone(),
            socket,
            session,
            rng,
            cursor: 0,
            inflight: None,
            buffer_since: None,
            window: (Instant::now(), Instant::now()),
            own_acked: 0,
            report: ClientReport::default(),
        };
        for text in early {
            c.handle_frame(Frame::Text(text)).await?;
        }
        Ok(c)
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.window.0 && t <= self.window.1
    }

    /// Run the load until `stop_editing`, then wait until everything is acknowledged.
    async fn load(&mut self, stop_editing: Instant, hard_deadline: Instant) -> Result<()> {
        let period = self.config.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut next_tick = period.map(|p| {
            // A random phase, so the clients don't all type in the same instant.
            Instant::now() + p.mul_f64(self.rng.random::<f64>())
        });
        loop {
            let now = Instant::now();
            let editing = now < stop_editing;
            if !editing && self.session.client().all_saved() {
                return Ok(());
            }
            if now >= hard_deadline {
                bail!(
                    "ops still un{} {:?} after the load stopped",
                    P::ACKED,
                    self.config.settle
                );
            }
            // Closed loop: nothing in flight, so edit and send.
            if editing && period.is_none() && self.session.client().outstanding().is_none() {
                self.edit().await?;
                continue;
            }
            let wake = match (editing, next_tick) {
                (true, Some(t)) => t.min(stop_editing),
                (true, None) => stop_editing,
                (false, _) => hard_deadline,
            };
            tokio::select! {
                biased;
                frame = self.socket.next() => {
                    let Some(frame) = Frame::from_read(frame) else {
                        continue;
                    };
                    self.handle_frame(frame).await?;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if let (Some(p), Some(t)) = (period, next_tick) {
                        if editing && Instant::now() >= t {
                            next_tick = Some(t + p);
                            self.edit().await?;
                        }
                    }
                }
            }
        }
    }

    /// One local edit of the workload, sent if nothing is in flight.
    async fn edit(&mut self) -> Result<()> {
        let op = workload::next_edit(
            self.config.workload,
            &mut self.rng,
            &mut self.cursor,
            self.session.client().text().len_chars(),
            self.config.max_len,
        )?;
        let now = Instant::now();
        if self.in_window(now) {
            self.report.edits += 1;
        }
        match self.session.local_edit(&op)? {
            Some(out) => self.send_op(&out, now).await?,
            None => {
                self.buffer_since.get_or_insert(now);
            }
        }
        Ok(())
    }

    async fn send_op(&mut self, out: &OutgoingOp, oldest_edit: Instant) -> Result<()> {
        let text = self.session.op_message(out)?;
        self.inflight = Some((Instant::now(), oldest_edit));
        self.socket
            .send(Message::text(text))
            .await
            .with_context(|| format!("sending {} ({})", P::OP_MESSAGE, P::NO_RESUME))
    }

    async fn handle_frame(&mut self, frame: Frame) -> Result<()> {
        let now = Instant::now();
        let text = match frame {
            Frame::Text(text) => text,
            Frame::Lost(why) => {
                self.report.errors += 1;
                bail!("connection lost ({}): {why}", P::NO_RESUME);
            }
        };
        let received = match self.session.receive(&text) {
            Ok(received) => received,
            Err(e) => {
                self.report.errors += 1;
                return Err(e);
            }
        };
        for op in &received.applied {
            self.report.remote_ops += 1;
            self.cursor = op.transform_position(self.cursor);
        }
        if let Some(next) = received.ack {
            self.own_acked += 1;
            if let Some((sent, oldest)) = self.inflight.take() {
                if self.in_window(now) {
                    self.report.acked += 1;
                    self.report.ack_us.push(micros(now - sent));
                    self.report.edit_us.push(micros(now - oldest));
                }
            }
            match next {
                Some(out) => {
                    let oldest = self.buffer_since.take().unwrap_or(now);
                    self.send_op(&out, oldest).await?;
                }
                None => self.buffer_since = None,
            }
        }
        Ok(())
    }
}
