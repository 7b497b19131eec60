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
//! The client loop and measurements are [`peer`]'s; this module is the
//! protocol's messages. Rustpad has no resume: a lost connection ends the client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ot_core::client::{AckOutcome, Client, OutgoingOp, RemoteOutcome};
use ot_core::Operation;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::editing;
use crate::peer::{Peer, Received};
use crate::{http_get, Frame, PhaseConfig, Socket};

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

/// One Rustpad client's protocol state, without I/O.
#[derive(Debug)]
pub struct Session {
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
}

/// Parse a server message.
fn parse(text: &str) -> Result<ServerMsg> {
    serde_json::from_str(text).with_context(|| format!("not a Rustpad server message: {text}"))
}

/// `GET /api/text/{doc}`: the document's text.
pub async fn final_text(addr: SocketAddr, doc: &str) -> Result<String> {
    http_get(addr, &format!("/api/text/{doc}")).await
}

impl Peer for Session {
    const REVISION: &'static str = "revision";
    const ACKED: &'static str = "confirmed";
    const OP_MESSAGE: &'static str = "an Edit";
    const NO_RESUME: &'static str = "Rustpad has no resume";
    // Rustpad drops a connection that misses more than 16 notices of others
    // leaving: keep every connection open until all clients have their text.
    const WAIT_FOR_ALL_FINAL: bool = true;

    /// Connect to document `doc` and read the `Identity` message.
    async fn connect(config: &PhaseConfig, doc: usize) -> Result<(Socket, Session, Vec<String>)> {
        let url = format!(
            "ws://{}/api/socket/{}",
            config.target.addr(),
            config.doc_ids[doc]
        );
        let mut socket = editing::open(&url, config.read_buffer).await?;
        let session = match editing::next_frame(&mut socket, Duration::from_secs(10)).await? {
            Frame::Text(text) => Session::from_first_message(&text)?,
            Frame::Lost(why) => bail!("connection lost before the first message: {why}"),
        };
        Ok((socket, session, Vec::new()))
    }

    fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

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

    fn op_message(&self, out: &OutgoingOp) -> Result<String> {
        edit_message(out)
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
        let first = s
            .client
            .local_edit(&op_json(r#"["ab"]"#))?
            .expect("sent at once");
        assert_eq!(first.base_rev, 0);
        // Buffered while "ab" is in flight.
        assert_eq!(s.client.local_edit(&op_json(r#"[2,"c"]"#))?, None);
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
