//! A region's link to the home, one per open document: a task that holds
//! the WebSocket to the same document at the home, reconnecting with
//! backoff, and passes every message to the document's actor, which decides
//! everything (the [`RegionalDocument`](ot_core::region::RegionalDocument)
//! is the link's state). The task only asks the actor where to resume, and
//! sends what the actor gives it on the connection it was meant for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ot_core::OpLimits;
use ot_driver::{
    next_incoming, open_socket_with, send_text, Backoff, Incoming, Socket, CONNECT_TIMEOUT,
};
use ot_protocol::{ClientMessage, DocId, ServerMessage};
use tokio::sync::{mpsc, oneshot};

use super::error::DocError;
use super::mailbox::DocCommand;
use crate::state::Services;
use crate::upstream::Upstream;

/// How often the link asks the home for a `pong` (the home's own pings are
/// answered by the socket and never reach the task).
const PING_EVERY: Duration = Duration::from_secs(5);

/// How long the home may stay silent before the link takes the connection
/// for dead (a partition without FIN or RST) and reconnects.
const SILENCE: Duration = Duration::from_secs(15);

/// How long one frame may take to send.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What the link task tells the document's actor.
pub(crate) enum LinkEvent {
    /// A message of connection `conn` (a new number: its first message).
    Message {
        /// The connection.
        conn: u64,
        /// The message (never a batch).
        message: ServerMessage<'static>,
    },
    /// Connection `conn` ended.
    Closed {
        /// The connection.
        conn: u64,
        /// Its close code, if the home sent one.
        code: Option<u16>,
    },
}

/// What the actor has the link task do.
pub(super) enum LinkOut {
    /// Send `text` on connection `conn` (dropped if that one is gone).
    Send {
        /// The connection.
        conn: u64,
        /// The frame.
        text: String,
    },
    /// Close connection `conn` and connect again.
    Reconnect {
        /// The connection.
        conn: u64,
    },
}

/// The home's document as a region's first open takes it.
pub(super) struct HomeCopy {
    pub(super) epoch: u64,
    pub(super) rev: u64,
    pub(super) text: String,
    pub(super) last_seq: u64,
    pub(super) limits: OpLimits,
}

/// The home's copy of `id`, for a region that holds none: one connection
/// asking for a snapshot. Fails with a message for the joining client when
/// the home cannot be reached or refuses.
pub(super) async fn fetch_home_copy(
    shared: &Services,
    upstream: &Upstream,
    id: &DocId,
) -> Result<HomeCopy, DocError> {
    let home = upstream.server.ws();
    let failed = |why: String| {
        DocError::Upstream(format!(
            "this regional server holds no copy of the document yet and its home {home} cannot give one now ({why}); try again later"
        ))
    };
    let url = format!("{home}/ws/{id}?client={}", upstream.link_id);
    let mut socket = open_socket_with(
        &url,
        &shared.config.limits(),
        &upstream.options,
        Some(&upstream.key),
    )
    .await
    .map_err(|e| failed(e.to_string()))?;
    let first = tokio::time::timeout(CONNECT_TIMEOUT, next_incoming(&mut socket)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    let first = first.map_err(|_| failed("no answer in time".into()))?;
    let text = match first {
        Incoming::Text(text) => text,
        Incoming::Closed(_, reason) => return Err(failed(reason)),
    };
    match ServerMessage::parse(&text) {
        Ok(ServerMessage::Snapshot {
            epoch,
            rev,
            text,
            seq,
            limits,
            ..
        }) => Ok(HomeCopy {
            epoch,
            rev,
            text: text.into_owned(),
            last_seq: seq,
            limits: ot_driver::core::op_limits(&limits),
        }),
        Ok(ServerMessage::Error { message, .. }) => Err(failed(format!("refused: {message}"))),
        Ok(other) => Err(failed(format!("it answered `{}`", other.kind()))),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Start the link of document `doc`; the actor reaches it through the
/// returned sender, and the task ends when that is dropped, the actor is
/// gone, or the server shuts down.
pub(super) fn spawn(
    shared: Arc<Services>,
    mailbox: mpsc::WeakSender<DocCommand>,
    doc: DocId,
) -> mpsc::UnboundedSender<LinkOut> {
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = shared.tasks.clone();
    tasks.spawn(run(shared, mailbox, doc, rx));
    tx
}

/// Tell the actor `command`; false if it is gone.
async fn tell(mailbox: &mpsc::WeakSender<DocCommand>, command: DocCommand) -> bool {
    match mailbox.upgrade() {
        Some(tx) => tx.send(command).await.is_ok(),
        None => false,
    }
}

async fn run(
    shared: Arc<Services>,
    mailbox: mpsc::WeakSender<DocCommand>,
    doc: DocId,
    mut out: mpsc::UnboundedReceiver<LinkOut>,
) {
    let Some(upstream) = shared.upstream.as_ref() else {
        return;
    };
    let mut backoff = Backoff::default();
    let mut conn = 0u64;
    loop {
        let (tx, path) = oneshot::channel();
        if !tell(&mailbox, DocCommand::LinkPath(tx)).await {
            return;
        }
        let Ok(path) = path.await else {
            return;
        };
        conn += 1;
        let url = format!("{}{path}", upstream.server.ws());
        // A region runs with its home's limits: its frames fit these.
        let limits = shared.config.limits();
        let opened = tokio::select! {
            opened = open_socket_with(&url, &limits, &upstream.options, Some(&upstream.key)) => opened,
            () = shared.shutdown.cancelled() => return,
        };
        match opened {
            Ok(socket) => {
                let Some(ended) = serve(&shared, &mailbox, conn, socket, &mut out).await else {
                    return;
                };
                if ended.heard {
                    backoff.reset();
                }
                tracing::info!(%doc, code = ?ended.code, reason = %ended.reason, "the link to the home closed");
                let closed = LinkEvent::Closed {
                    conn,
                    code: ended.code,
                };
                if !tell(&mailbox, DocCommand::Link(closed)).await {
                    return;
                }
            }
            Err(e) => tracing::warn!(%doc, error = %e, "could not connect to the home"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.shutdown.cancelled() => return,
        }
        // What was meant for the old connection is dropped.
        loop {
            match out.try_recv() {
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// How a connection ended.
struct Ended {
    code: Option<u16>,
    reason: String,
    /// Whether the home sent anything on it.
    heard: bool,
}

/// Serve connection `conn` until it ends (`None`: the task stops).
async fn serve(
    shared: &Services,
    mailbox: &mpsc::WeakSender<DocCommand>,
    conn: u64,
    mut socket: Socket,
    out: &mut mpsc::UnboundedReceiver<LinkOut>,
) -> Option<Ended> {
    let mut heard = false;
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(PING_EVERY);
    let ended = |code, reason: &str, heard| {
        Some(Ended {
            code,
            reason: reason.to_owned(),
            heard,
        })
    };
    let result = loop {
        tokio::select! {
            incoming = next_incoming(&mut socket) => match incoming {
                Incoming::Text(text) => {
                    heard = true;
                    last_heard = Instant::now();
                    let Ok(message) = ServerMessage::parse(&text) else {
                        break ended(None, "the home sent a frame this server cannot read", heard);
                    };
                    for message in message.into_messages() {
                        let event = LinkEvent::Message { conn, message };
                        if !tell(mailbox, DocCommand::Link(event)).await {
                            return None;
                        }
                    }
                }
                Incoming::Closed(code, reason) => return ended(code, &reason, heard),
            },
            command = out.recv() => match command {
                None => break None,
                Some(LinkOut::Send { conn: c, text }) if c == conn => {
                    if !send_text(&mut socket, text, WRITE_DEADLINE).await {
                        break ended(None, "could not send to the home", heard);
                    }
                }
                Some(LinkOut::Reconnect { conn: c }) if c == conn => {
                    break ended(None, "the region reconnects", heard);
                }
                Some(_) => {}
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE {
                    break ended(None, "the home went silent", heard);
                }
                let _ = send_text(&mut socket, ClientMessage::Ping.to_text(), WRITE_DEADLINE).await;
            }
            () = shared.shutdown.cancelled() => break None,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    result
}
