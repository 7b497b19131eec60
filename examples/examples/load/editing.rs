//! What every client of the load tool does, whatever its protocol: the
//! simulated user typing (closed loop, or open loop at `--rate`), what it
//! measures in the window, and the catching up to the document's final
//! revision after the load. The protocol side is behind [`Editor`]: our
//! protocol's client in the main module, the other servers' in [`crate::peer`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use ot_core::client::{Client, OutgoingOp};
use ot_core::Operation;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::{micros, workload, ws_config, ClientReport, Frame, PhaseConfig, Socket, StartSignal};

/// The simulated user of one client: where it types, what waits for an ack,
/// and what it measured.
pub struct Typist {
    /// The phase's settings.
    pub config: Arc<PhaseConfig>,
    /// The user's randomness (edits, and the phase of the open loop's ticks).
    pub rng: StdRng,
    /// Where this client "types" (a char position in its local text).
    pub cursor: usize,
    /// The op in flight: when it was sent, and when its oldest edit was made.
    pub inflight: Option<(Instant, Instant)>,
    /// When the oldest edit in the buffer was made.
    pub buffer_since: Option<Instant>,
    /// Measurement window.
    pub window: (Instant, Instant),
    /// What this client measured.
    pub report: ClientReport,
}

impl Typist {
    /// A user who has not typed yet (the window is set by [`start`]).
    pub fn new(config: Arc<PhaseConfig>, rng: StdRng) -> Typist {
        Typist {
            config,
            rng,
            cursor: 0,
            inflight: None,
            buffer_since: None,
            window: (Instant::now(), Instant::now()),
            report: ClientReport::default(),
        }
    }

    /// Whether `t` is in the measurement window.
    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.window.0 && t <= self.window.1
    }

    /// One local edit of the workload (see [`workload`]) on `client`: the op
    /// to send now, with when its oldest edit was made, if nothing was in flight.
    pub fn edit(&mut self, client: &mut Client) -> Result<Option<(OutgoingOp, Instant)>> {
        let op = workload::next_edit(
            self.config.workload,
            &mut self.rng,
            &mut self.cursor,
            client.text().len_chars(),
            self.config.max_len,
        )?;
        let now = Instant::now();
        if self.in_window(now) {
            self.report.edits += 1;
        }
        match client.local_edit(&op)? {
            Some(out) => Ok(Some((out, now))),
            None => {
                self.buffer_since.get_or_insert(now);
                Ok(None)
            }
        }
    }

    /// An op goes out now, its oldest edit made at `oldest_edit`: the time it was sent.
    pub fn sending(&mut self, oldest_edit: Instant) -> Instant {
        let sent = Instant::now();
        self.inflight = Some((sent, oldest_edit));
        sent
    }

    /// The op in flight was acknowledged at `now`: measure it. The next op
    /// to send (the buffer's edits, if any), with when its oldest edit was made.
    pub fn acknowledged(
        &mut self,
        next: Option<OutgoingOp>,
        now: Instant,
    ) -> Option<(OutgoingOp, Instant)> {
        if let Some((sent, oldest)) = self.inflight.take() {
            if self.in_window(now) {
                self.report.acked += 1;
                self.report.ack_us.push(micros(now - sent));
                self.report.edit_us.push(micros(now - oldest));
            }
        }
        match next {
            Some(out) => Some((out, self.buffer_since.take().unwrap_or(now))),
            None => {
                self.buffer_since = None;
                None
            }
        }
    }

    /// Another client's op was applied to the local text (transformed): count
    /// it, and keep the cursor where the user was typing.
    pub fn remote_applied(&mut self, op: &Operation) {
        self.report.remote_ops += 1;
        self.cursor = op.transform_position(self.cursor);
    }
}

/// One client's protocol side, for [`load`] and [`catch_up`].
pub trait Editor {
    /// What the protocol calls a document's revision (in error messages).
    const REVISION: &'static str;
    /// What the server does to a client's op (in error messages).
    const ACKED: &'static str;

    /// The user and the OT client state.
    fn parts(&mut self) -> (&mut Typist, &mut Client);

    /// The open connection.
    fn socket(&mut self) -> Result<&mut Socket>;

    /// Send `out`, whose oldest edit was made at `oldest_edit`.
    async fn send_op(&mut self, out: &OutgoingOp, oldest_edit: Instant) -> Result<()>;

    /// Act on one frame from the server.
    async fn handle_frame(&mut self, frame: Frame) -> Result<()>;
}

/// Tell the run whether the client could connect (the error's text if not);
/// `connected` back.
pub async fn ready<T>(
    ready_tx: mpsc::Sender<Result<(), String>>,
    connected: Result<T>,
) -> Result<T> {
    let _ = ready_tx
        .send(connected.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")))
        .await;
    connected
}

/// Wait for the start signal (every client is connected) and set the
/// measurement window: when to stop editing, and the hard deadline.
pub async fn start(typist: &mut Typist, start_rx: &mut StartSignal) -> Result<(Instant, Instant)> {
    let t0 = loop {
        if let Some(t0) = *start_rx.borrow_and_update() {
            break t0;
        }
        start_rx
            .changed()
            .await
            .map_err(|_| anyhow!("the run was abandoned"))?;
    };
    let measure_from = t0 + typist.config.warmup;
    let stop_editing = measure_from + typist.config.duration;
    typist.window = (measure_from, stop_editing);
    Ok((stop_editing, stop_editing + typist.config.settle))
}

/// Run the load until `stop_editing`, then wait until everything is acknowledged.
pub async fn load<E: Editor>(
    e: &mut E,
    stop_editing: Instant,
    hard_deadline: Instant,
) -> Result<()> {
    let (typist, _) = e.parts();
    let config = typist.config.clone();
    let period = config.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_tick = period.map(|p| {
        // A random phase, so the clients don't all type in the same instant.
        Instant::now() + p.mul_f64(typist.rng.random::<f64>())
    });
    loop {
        let now = Instant::now();
        let editing = now < stop_editing;
        let (_, client) = e.parts();
        if !editing && client.all_saved() {
            return Ok(());
        }
        if now >= hard_deadline {
            bail!(
                "ops still un{} {:?} after the load stopped",
                E::ACKED,
                config.settle
            );
        }
        // Closed loop: nothing in flight, so edit and send.
        if editing && period.is_none() && client.outstanding().is_none() {
            edit(e).await?;
            continue;
        }
        let wake = match (editing, next_tick) {
            (true, Some(t)) => t.min(stop_editing),
            (true, None) => stop_editing,
            (false, _) => hard_deadline,
        };
        let socket = e.socket()?;
        tokio::select! {
            biased;
            frame = socket.next() => {
                let Some(frame) = Frame::from_read(frame) else {
                    continue;
                };
                e.handle_frame(frame).await?;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if let (Some(p), Some(t)) = (period, next_tick) {
                    if editing && Instant::now() >= t {
                        next_tick = Some(t + p);
                        edit(e).await?;
                    }
                }
            }
        }
    }
}

/// One local edit, sent if nothing is in flight.
async fn edit<E: Editor>(e: &mut E) -> Result<()> {
    let (typist, client) = e.parts();
    if let Some((out, oldest)) = typist.edit(client)? {
        e.send_op(&out, oldest).await?;
    }
    Ok(())
}

/// After the load: wait for the documents' final revisions (reading
/// meanwhile), read until document `doc` reaches its own, and keep the
/// client's final state in its report.
pub async fn catch_up<E: Editor>(
    e: &mut E,
    targets_rx: &mut watch::Receiver<Option<Arc<Vec<u64>>>>,
    doc: usize,
    hard_deadline: Instant,
) -> Result<()> {
    let targets = loop {
        if let Some(t) = targets_rx.borrow_and_update().clone() {
            break t;
        }
        let left = hard_deadline.saturating_duration_since(Instant::now());
        let socket = e.socket()?;
        tokio::select! {
            changed = targets_rx.changed() => {
                changed.map_err(|_| anyhow!("the run was abandoned"))?;
            }
            frame = next_frame(socket, left) => {
                e.handle_frame(frame?).await?;
            }
        }
    };
    let target = targets
        .get(doc)
        .copied()
        .ok_or_else(|| anyhow!("no final {} (the run failed)", E::REVISION))?;
    loop {
        let at = e.parts().1.revision();
        if at >= target {
            break;
        }
        let left = hard_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("did not reach {} {target} in time (at {at})", E::REVISION);
        }
        let frame = next_frame(e.socket()?, left).await?;
        e.handle_frame(frame).await?;
    }
    let (typist, client) = e.parts();
    typist.report.final_state = Some((client.revision(), client.text().to_string()));
    Ok(())
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
