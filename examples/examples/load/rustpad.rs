//! The load tool's clients speaking Rustpad's protocol (commit 54e4a93), for
//! side-by-side figures against a Rustpad server.
//!
//! The protocol: a WebSocket at `/api/socket/{id}`; the server first sends
//! `{"Identity":n}`, then `{"History":{"start":s,"operations":[{"id":n,"operation":[…]}]}}`
//! batches (entry `i` creates revision `s + i + 1`) holding every op applied,
//! the client's own included: the first entry carrying the client's own id
//! confirms its op in flight. The client sends
//! `{"Edit":{"revision":r,"operation":[…]}}`, the operation in ot.js JSON
//! based on revision `r`. Other messages (`Language`, `UserInfo`,
//! `UserCursor`) are read and ignored. The final text is `GET /api/text/{id}`
//! (a plain-text body, without a revision).
//!
//! The client side is ot-core's [`Client`]: one op in flight, later edits
//! buffered, incoming ops transformed against both, exactly as in our
//! protocol. Rustpad has no resume: a lost connection ends the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use ot_core::client::{AckOutcome, Client, OutgoingOp, RemoteOutcome};
use ot_core::Operation;
use rand::rngs::StdRng;
use rand::Rng;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    http_get, micros, workload, ws_config, ClientReport, Frame, PhaseConfig, Socket, StartSignal,
};

/// A message from a Rustpad server.
#[derive(Debug, Deserialize)]
// The ignored messages' contents are skipped, never read.
#[allow(dead_code)]
enum ServerMsg {
    /// This connection's user id.
    Identity(u64),
    /// Ops `start + 1 ..= start + operations.len()` of the document's history.
    History {
        start: u64,
        operations: Vec<UserOperation>,
    },
    /// The editor language (ignored).
    Language(IgnoredAny),
    /// A user's name and colour, or their leaving (ignored).
    UserInfo(IgnoredAny),
    /// A user's cursors (ignored).
    UserCursor(IgnoredAny),
}

/// One entry of a History batch: who made the op, and the op as applied.
#[derive(Debug, Deserialize)]
struct UserOperation {
    id: u64,
    operation: Operation,
}

/// A message to a Rustpad server (only edits: the tool sends no metadata).
#[derive(Debug, Serialize)]
enum ClientMsg<'a> {
    /// `operation` based on `revision` (ot.js JSON).
    Edit {
        revision: u64,
        operation: &'a Operation,
    },
}

/// The `Edit` message text for an op leaving the client.
fn edit_message(out: &OutgoingOp) -> Result<String> {
    serde_json::to_string(&ClientMsg::Edit {
        revision: out.base_rev,
        operation: &out.op,
    })
    .context("serialising an Edit")
}

/// What one server message did.
#[derive(Debug, Default, PartialEq)]
struct Received {
    /// `Some` if the op in flight was confirmed, holding the next op to send
    /// (if edits were buffered meanwhile).
    ack: Option<Option<OutgoingOp>>,
    /// Others' ops as applied to the local text (transformed), in order.
    applied: Vec<Operation>,
}

/// One Rustpad client's protocol state, without I/O.
#[derive(Debug)]
struct Session {
    /// The server's id for this connection.
    identity: u64,
    client: Client,
}

impl Session {
    /// A session on an empty document, for the connection the server called `identity`.
    fn new(identity: u64) -> Session {
        Session {
            identity,
            client: Client::new(identity.to_string(), 0, "", 0),
        }
    }

    /// Read the connection's first message, which must be its `Identity`.
    fn from_first_message(text: &str) -> Result<Session> {
        match parse(text)? {
            ServerMsg::Identity(id) => Ok(Session::new(id)),
            other => bail!("expected Identity first, got {other:?}"),
        }
    }

    /// Apply a local edit; the `Edit` message to send now, if nothing was in flight.
    fn local_edit(&mut self, op: &Operation) -> Result<Option<OutgoingOp>> {
        Ok(self.client.local_edit(op)?)
    }

    /// Handle one server message.
    fn receive(&mut self, text: &str) -> Result<Received> {
        let mut received = Received::default();
        let ServerMsg::History { start, operations } = parse(text)? else {
            return Ok(received);
        };
        for (i, entry) in operations.into_iter().enumerate() {
            let rev = start + i as u64 + 1;
            if rev <= self.client.revision() {
                continue; // already integrated
            }
            if entry.id == self.identity {
                let seq =
                    self.client.outstanding().map(|o| o.seq).ok_or_else(|| {
                        anyhow!("revision {rev} is ours, but nothing is in flight")
                    })?;
                if received.ack.is_some() {
                    bail!("two of our ops in one History batch (revision {rev})");
                }
                match self.client.ack(rev, seq)? {
                    AckOutcome::Acknowledged { next } => received.ack = Some(next),
                    AckOutcome::Ignored => {
                        bail!("our op at revision {rev} was not taken as its ack")
                    }
                }
            } else {
                // Never this client's id (that case is above), so never taken as an ack.
                match self.client.remote_op(rev, &entry.operation, "", 0)? {
                    RemoteOutcome::Applied(op) => received.applied.push(op),
                    RemoteOutcome::Ignored | RemoteOutcome::Acknowledged { .. } => {}
                }
            }
        }
        Ok(received)
    }
}

/// Parse a server message.
fn parse(text: &str) -> Result<ServerMsg> {
    serde_json::from_str(text).with_context(|| format!("not a Rustpad server message: {text}"))
}

/// `GET /api/text/{doc}`: the document's text.
pub async fn final_text(addr: SocketAddr, doc: &str) -> Result<String> {
    http_get(addr, &format!("/api/text/{doc}")).await
}

/// One client's connection and measurements.
struct RustpadClient {
    config: Arc<PhaseConfig>,
    socket: Socket,
    session: Session,
    rng: StdRng,
    /// Where this client "types" (cursor workload).
    cursor: usize,
    /// The op in flight: when it was sent, and when its oldest edit was made.
    inflight: Option<(Instant, Instant)>,
    /// When the oldest edit in the buffer was made.
    buffer_since: Option<Instant>,
    /// Measurement window.
    window: (Instant, Instant),
    /// This client's ops confirmed over the whole run.
    own_acked: u64,
    report: ClientReport,
}

/// Run one Rustpad client through a phase (the counterpart of the main
/// module's `client_task`): connect, edit until the window ends, wait for the
/// confirmations, then catch up to the document's final revision.
pub async fn client_task(
    config: Arc<PhaseConfig>,
    doc: usize,
    rng: StdRng,
    mut start_rx: StartSignal,
    ready_tx: mpsc::Sender<Result<(), String>>,
    saved_tx: mpsc::Sender<(usize, u64)>,
    mut targets_rx: watch::Receiver<Option<Arc<Vec<u64>>>>,
) -> Result<ClientReport> {
    let mut c = match connect(&config, doc, rng).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready_tx.send(Err(format!("{e:#}"))).await;
            return Err(e);
        }
    };
    let _ = ready_tx.send(Ok(())).await;
    drop(ready_tx);
    let t0 = loop {
        if let Some(t0) = *start_rx.borrow_and_update() {
            break t0;
        }
        start_rx
            .changed()
            .await
            .map_err(|_| anyhow!("the run was abandoned"))?;
    };
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
        .ok_or_else(|| anyhow!("no final revision (the run failed)"))?;
    while c.session.client.revision() < target {
        let left = hard_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "did not reach revision {target} in time (at {})",
                c.session.client.revision()
            );
        }
        let frame = next_frame(&mut c.socket, left).await?;
        c.handle_frame(frame).await?;
    }
    c.report.final_state = Some((
        c.session.client.revision(),
        c.session.client.text().to_string(),
    ));
    // Rustpad drops a connection that misses more than 16 notices of others
    // leaving: keep every connection open until all clients have their text.
    let left = hard_deadline.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(left, config.all_final.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), c.socket.close(None)).await;
    Ok(c.report)
}

/// Connect to document `doc` and read the `Identity` message.
async fn connect(config: &Arc<PhaseConfig>, doc: usize, rng: StdRng) -> Result<RustpadClient> {
    let url = format!(
        "ws://{}/api/socket/{}",
        config.target.addr(),
        config.doc_ids[doc]
    );
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(
            url.as_str(),
            Some(ws_config(config.read_buffer)),
            true,
        ),
    )
    .await
    .context("connect timeout")?
    .with_context(|| format!("connecting to {url}"))?;
    let session = match next_frame(&mut socket, Duration::from_secs(10)).await? {
        Frame::Text(text) => Session::from_first_message(&text)?,
        Frame::Lost(why) => bail!("connection lost before the first message: {why}"),
    };
    Ok(RustpadClient {
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
    })
}

/// The next text frame (pings skipped), or why the connection ended; an error on timeout.
async fn next_frame(socket: &mut Socket, within: Duration) -> Result<Frame> {
    loop {
        let frame = tokio::time::timeout(within, socket.next())
            .await
            .map_err(|_| anyhow!("no message within {within:?}"))?;
        if let Some(frame) = Frame::from_read(frame) {
            return Ok(frame);
        }
    }
}

impl RustpadClient {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window.0 && t <= self.window.1
    }

    /// Run the load until `stop_editing`, then wait until everything is confirmed.
    async fn load(&mut self, stop_editing: Instant, hard_deadline: Instant) -> Result<()> {
        let period = self.config.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut next_tick = period.map(|p| {
            // A random phase, so the clients don't all type in the same instant.
            Instant::now() + p.mul_f64(self.rng.random::<f64>())
        });
        loop {
            let now = Instant::now();
            let editing = now < stop_editing;
            if !editing && self.session.client.all_saved() {
                return Ok(());
            }
            if now >= hard_deadline {
                bail!(
                    "ops still unconfirmed {:?} after the load stopped",
                    self.config.settle
                );
            }
            // Closed loop: nothing in flight, so edit and send.
            if editing && period.is_none() && self.session.client.outstanding().is_none() {
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
            self.session.client.text().len_chars(),
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
        let text = edit_message(out)?;
        self.inflight = Some((Instant::now(), oldest_edit));
        self.socket
            .send(Message::text(text))
            .await
            .context("sending an Edit (Rustpad has no resume)")
    }

    async fn handle_frame(&mut self, frame: Frame) -> Result<()> {
        let now = Instant::now();
        let text = match frame {
            Frame::Text(text) => text,
            Frame::Lost(why) => {
                self.report.errors += 1;
                bail!("connection lost (Rustpad has no resume): {why}");
            }
        };
        let received = self.session.receive(&text)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn op_json(json: &str) -> Operation {
        Operation::from_json(json).unwrap()
    }

    #[test]
    fn the_first_message_gives_the_identity() -> Result<()> {
        let session = Session::from_first_message(r#"{"Identity":7}"#)?;
        assert_eq!(session.identity, 7);
        assert_eq!(session.client.revision(), 0);
        assert!(Session::from_first_message(r#"{"History":{"start":0,"operations":[]}}"#).is_err());
        assert!(Session::from_first_message("not json").is_err());
        Ok(())
    }

    #[test]
    fn an_edit_serialises_as_ot_js_json() -> Result<()> {
        let out = OutgoingOp {
            seq: 1,
            base_rev: 3,
            op: op_json(r#"[2,"hé",-1,4]"#),
        };
        assert_eq!(
            edit_message(&out)?,
            r#"{"Edit":{"revision":3,"operation":[2,"hé",-1,4]}}"#
        );
        Ok(())
    }

    /// A History batch with the client's own id acknowledges its op in flight;
    /// others' ops before it are transformed past it, and the buffered edit
    /// goes next, based on the revision of the ack.
    #[test]
    fn a_history_entry_with_our_id_acks_our_op() -> Result<()> {
        let mut s = Session::new(2);
        let first = s.local_edit(&op_json(r#"["ab"]"#))?.expect("sent at once");
        assert_eq!(first.base_rev, 0);
        // Buffered while "ab" is in flight.
        assert_eq!(s.local_edit(&op_json(r#"[2,"c"]"#))?, None);
        // User 5's "X" came first; ours was transformed past it (ours first, as Rustpad's server does).
        let received = s.receive(
            r#"{"History":{"start":0,"operations":[{"id":5,"operation":["X"]},{"id":2,"operation":["ab",1]}]}}"#,
        )?;
        assert_eq!(received.applied, vec![op_json(r#"[3,"X"]"#)]);
        let next = received.ack.expect("acked").expect("the buffer goes next");
        assert_eq!(next.base_rev, 2);
        assert_eq!(
            edit_message(&next)?,
            r#"{"Edit":{"revision":2,"operation":[2,"c",1]}}"#
        );
        assert_eq!(s.client.text().to_string(), "abcX");
        assert_eq!(s.client.revision(), 2);
        // Entries already integrated are skipped; metadata is ignored.
        let again =
            s.receive(r#"{"History":{"start":1,"operations":[{"id":2,"operation":["ab",1]}]}}"#)?;
        assert_eq!(again, Received::default());
        assert_eq!(
            s.receive(r#"{"UserInfo":{"id":5,"info":null}}"#)?,
            Received::default()
        );
        assert_eq!(s.receive(r#"{"Language":"rust"}"#)?, Received::default());
        Ok(())
    }

    #[test]
    fn an_entry_with_our_id_and_nothing_in_flight_is_an_error() {
        let mut s = Session::new(1);
        assert!(s
            .receive(r#"{"History":{"start":0,"operations":[{"id":1,"operation":["a"]}]}}"#)
            .is_err());
    }

    #[test]
    fn a_gap_in_the_history_is_an_error() {
        let mut s = Session::new(1);
        assert!(s
            .receive(r#"{"History":{"start":3,"operations":[{"id":4,"operation":["a"]}]}}"#)
            .is_err());
    }
}
