//! The load tool's clients for other servers' protocols (`--protocol rustpad`,
//! `--protocol sharedb`). The connection's life is the same for both and is
//! here, the typing and measuring is [`crate::editing`]'s; each protocol's
//! messages (connecting, encoding an op, decoding a server message) are in
//! its own module, behind [`Peer`].
//!
//! The client side is ot-core's [`Client`]: one op in flight, later edits
//! buffered, incoming ops transformed against both, exactly as in our
//! protocol. Neither protocol is resumed here: a lost connection ends the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::SinkExt;
use ot_core::client::{Client, OutgoingOp};
use ot_core::Operation;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::editing::{self, Editor, Typist};
use crate::{ClientReport, Frame, PhaseConfig, Socket, StartSignal};

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
    fn client_mut(&mut self) -> &mut Client;

    /// Handle one server message (after [`Peer::connect`]).
    fn receive(&mut self, text: &str) -> Result<Received>;

    /// The message text for an op leaving the client.
    fn op_message(&self, out: &OutgoingOp) -> Result<String>;
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
    let connected = PeerClient::<P>::connect(&config, doc, rng).await;
    let mut c = editing::ready(ready_tx, connected).await?;
    let (stop_editing, hard_deadline) = editing::start(&mut c.typist, &mut start_rx).await?;
    editing::load(&mut c, stop_editing, hard_deadline).await?;
    let _ = saved_tx.send((doc, c.own_acked)).await;
    drop(saved_tx);
    editing::catch_up(&mut c, &mut targets_rx, doc, hard_deadline).await?;
    if P::WAIT_FOR_ALL_FINAL {
        let left = hard_deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, config.all_final.wait()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), c.socket.close(None)).await;
    Ok(c.typist.report)
}

/// One client's connection, protocol state and user.
struct PeerClient<P> {
    socket: Socket,
    session: P,
    typist: Typist,
    /// This client's ops acknowledged over the whole run.
    own_acked: u64,
}

impl<P: Peer> PeerClient<P> {
    /// Connect to document `doc` and handle the messages that came before the client was ready.
    async fn connect(config: &Arc<PhaseConfig>, doc: usize, rng: StdRng) -> Result<Self> {
        let (socket, session, early) = P::connect(config, doc).await?;
        let mut c = PeerClient {
            socket,
            session,
            typist: Typist::new(config.clone(), rng),
            own_acked: 0,
        };
        for text in early {
            c.handle_frame(Frame::Text(text)).await?;
        }
        Ok(c)
    }
}

impl<P: Peer> Editor for PeerClient<P> {
    const REVISION: &'static str = P::REVISION;
    const ACKED: &'static str = P::ACKED;

    fn parts(&mut self) -> (&mut Typist, &mut Client) {
        (&mut self.typist, self.session.client_mut())
    }

    fn socket(&mut self) -> Result<&mut Socket> {
        Ok(&mut self.socket)
    }

    async fn send_op(&mut self, out: &OutgoingOp, oldest_edit: Instant) -> Result<()> {
        let text = self.session.op_message(out)?;
        self.typist.sending(oldest_edit);
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
                self.typist.report.errors += 1;
                bail!("connection lost ({}): {why}", P::NO_RESUME);
            }
        };
        let received = match self.session.receive(&text) {
            Ok(received) => received,
            Err(e) => {
                self.typist.report.errors += 1;
                return Err(e);
            }
        };
        for op in &received.applied {
            self.typist.remote_applied(op);
        }
        if let Some(next) = received.ack {
            self.own_acked += 1;
            if let Some((out, oldest)) = self.typist.acknowledged(next, now) {
                self.send_op(&out, oldest).await?;
            }
        }
        Ok(())
    }
}
