//! What a document actor is sent: its commands, the join handshake, the handle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ot_core::history::KeyHash;
use ot_core::{Operation, Range};
use ot_protocol::{Access, ClientId, CloseCode, OpOrigin};
use tokio::sync::{mpsc, oneshot};

use super::error::DocError;
use crate::outbound_queue::OutboundTx;

/// Mailbox size of a document actor: senders wait when it is full (backpressure).
pub(super) const MAILBOX: usize = 1024;

/// How long a joiner waits for an actor before giving up.
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection asking to join a document.
pub(crate) struct JoinRequest {
    /// Server-wide connection id.
    pub(crate) conn_id: u64,
    pub(crate) client_id: ClientId,
    /// The hash of the key the connection presented (checked again at join).
    pub(crate) key_hash: Option<KeyHash>,
    /// The revision the client has, to resume from.
    pub(crate) rev: Option<u64>,
    /// The epoch the client last saw (of this document).
    pub(crate) epoch: Option<u64>,
    /// What the connection may do (told in its first message).
    pub(crate) access: Access,
    /// The connection's bounded outbound queue.
    pub(crate) out: OutboundTx,
    /// Fired to close the connection with a code.
    pub(crate) kick: oneshot::Sender<CloseCode>,
}

/// Why a join failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("the document has too many clients")]
    TooManyClients,
    #[error("the document could not be opened: {0}")]
    Unavailable(Arc<DocError>),
    /// The actor was unloading; open the document again.
    #[error("the document could not be opened; retry")]
    Retry,
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The client id is bound to a key the connection did not present.
    #[error(
        "this client id belongs to another writer: connect with its key, or use a new client id"
    )]
    Forbidden,
    /// The client last saw a generation of the document that was deleted
    /// (its epoch is at most the id's deleted epoch): closed with 4004.
    #[error("the document this client last saw was deleted")]
    Deleted,
}

/// What a delete answers: whether there was a document to delete.
pub(crate) type DeleteResult = Result<bool, Arc<DocError>>;

/// An op as a connection sent it, on its way to the document (it may wait
/// behind the connection's op being rebased).
#[derive(Clone)]
pub(crate) struct IncomingOp {
    pub(crate) seq: u64,
    pub(crate) base_rev: u64,
    pub(crate) op: Operation,
    /// The sender's selection after the op.
    pub(crate) ranges: Option<Vec<Range>>,
    /// What a regional link's op covers at its region.
    pub(crate) origin: Option<Box<OpOrigin>>,
    /// When the frame was read (for the ack-latency histogram).
    pub(crate) received_at: Instant,
}

/// A command for a document actor.
pub(crate) enum DocCommand {
    /// Before the upgrade: may a connection with this key speak for
    /// `client_id`? Binds an unbound id to the key, and answers once the
    /// binding is durable.
    Authorize {
        client_id: ClientId,
        key_hash: Option<KeyHash>,
        /// The epoch the client last saw: one of a deleted generation binds
        /// and creates nothing (the join closes it with 4004).
        epoch: Option<u64>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Join(JoinRequest, oneshot::Sender<Result<(), JoinError>>),
    Leave {
        conn_id: u64,
    },
    Op {
        conn_id: u64,
        op: IncomingOp,
    },
    /// Presence from a connection with nothing outstanding.
    Cursor {
        conn_id: u64,
        /// The revision the ranges refer to.
        rev: u64,
        ranges: Vec<Range>,
        /// Display name.
        name: Option<String>,
    },
    /// A writer's cursor or departure at another node (on shared storage).
    RemotePresence(crate::presence::PresenceNote),
    /// Read the durable revision and text.
    Read(oneshot::Sender<(u64, String)>),
    /// Commit everything pending, ack it, close every connection and stop.
    Shutdown(oneshot::Sender<()>),
    /// On a region: the state of the document's replication to its home
    /// (`None` at a home).
    Replication(oneshot::Sender<Option<super::replication::ReplicationStatus>>),
    /// On a region: where the link to the home connects next (the path and
    /// query of its WebSocket URL).
    LinkPath(oneshot::Sender<String>),
    /// On a region: what happened on the link to the home.
    Link(super::link::LinkEvent),
    /// On storage other nodes write too: the document's head may have moved
    /// (to `head`, as announced; `None`: ask storage). The document takes
    /// the ops it missed and sends them to its connections.
    Head {
        head: Option<u64>,
    },
    /// Delete the document (admin): stop taking commands, wait for what is
    /// pending, commit a delete through the commit lane, then close every
    /// connection with 4004 and unload. Answered once the delete is durable.
    Delete(oneshot::Sender<DeleteResult>),
}

/// A handle to a running document actor: its mailbox.
#[derive(Clone)]
pub(crate) struct DocHandle {
    pub(crate) tx: mpsc::Sender<DocCommand>,
}
