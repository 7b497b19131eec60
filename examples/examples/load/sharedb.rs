//! The load tool's clients speaking ShareDB's protocol (sharedb 5.2), for
//! side-by-side figures against ShareDB on PostgreSQL (the server script of
//! ours in `examples/sharedb/`, started by `scripts/sharedb-server`).
//!
//! The protocol: JSON messages, one per WebSocket text frame, at any path of
//! the server. The server first sends `{"a":"init",…,"id":src}`; the client
//! answers the handshake `{"a":"hs","id":null,"protocol":1,"protocolMinor":2}`
//! and gets `{"a":"hs",…,"id":src}`, `src` being this connection's id. It
//! subscribes with `{"a":"s","c":collection,"d":id}` and gets the snapshot
//! `{"a":"s",…,"data":{"v":version,"data":text,"type":uri}}`; then it submits
//! `{"a":"op","c","d","v":version,"seq":n,"op":[…]}` (the op applies to
//! `version`; ShareDB takes `src` from the connection), which the server
//! acknowledges with `{"a":"op","c","d","src","seq","v"}` (no `op`: `v` is the
//! version the op was committed at, after transforming it past the ops the
//! client had not seen, which the server sends just before the ack). Other
//! clients' ops arrive as `{"a":"op","c","d","v","src","seq","op":[…]}`; an op
//! may come twice (once with a submit's reply, once from the subscription), so
//! ops below the client's version are skipped, and ops above it wait until
//! the ones before them have arrived. Errors carry `"error":{"code","message"}`.
//!
//! Ops are `ot-text-unicode`'s (type `http://sharejs.org/types/text-unicode`):
//! a list of components, a number skipping that many Unicode code points, a
//! string inserting itself, `{"d":n}` (or `{"d":"text"}`) deleting `n` code
//! points; the trailing skip is left out. ot-core's positions count `char`s,
//! i.e. code points too, so the two map one to one. ShareDB transforms a
//! submitted op past others with it on the `left` (its insert first at a tie),
//! and its client does the same with its own pending op: ot-core's tie rule
//! (the incoming or pending op's text first) is the same.
//!
//! Versions: a document is created at version 0 by a `create` op and is at
//! version 1 with its initial text; an op based on version `v` makes `v + 1`.
//! ot-core's revisions are ShareDB's versions (its [`Client`] is made at the
//! subscribed version).
//!
//! Documents are created by the tool before the clients connect
//! ([`create_docs`]), over one connection, each with the text `"\n"`, not
//! `""`: sharedb-postgres 5.0.1 reads an empty text back as no data at all
//! (`row.data || undefined`), after which ShareDB refuses every op on that
//! document ("Invalid document snapshot: undefined"). The final text is
//! `GET /text/{collection}/{id}` on the server script's HTTP side
//! (`{"v":version,"data":text}`, the stored snapshot).
//!
//! The client loop and measurements are [`peer`]'s; this module is the
//! protocol's messages. No reconnects: a lost connection ends the client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::SinkExt;
use ot_core::client::{AckOutcome, Client, OutgoingOp, RemoteOutcome};
use ot_core::{Component, Operation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::editing;
use crate::peer::{Peer, Received};
use crate::{http_get, Frame, PhaseConfig, Socket};

/// The collection every document of the tool is in.
pub const COLLECTION: &str = "docs";
/// `ot-text-unicode`'s type URI.
pub const TEXT_UNICODE: &str = "http://sharejs.org/types/text-unicode";
/// A document's text when the tool creates it (see the module's notes).
pub const INITIAL_TEXT: &str = "\n";
/// Ops waiting for earlier ones: more than this many is a failure.
const MAX_AHEAD: usize = 100_000;

/// One `ot-text-unicode` op component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum UniComponent {
    /// Skip this many code points.
    Skip(u64),
    /// Insert this text.
    Insert(String),
    /// Delete this many code points, or this text.
    Delete { d: DeleteLen },
}

/// The length of a delete: a count, or the deleted text (invertible ops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum DeleteLen {
    Count(u64),
    Text(String),
}

/// An ot-core op as an `ot-text-unicode` op (no trailing skip).
fn to_text_unicode(op: &Operation) -> Vec<UniComponent> {
    let mut out = Vec::with_capacity(op.components().len());
    for c in op.components() {
        out.push(match c {
            Component::Retain(n) => UniComponent::Skip(*n as u64),
            Component::Insert(text) => UniComponent::Insert(text.to_string()),
            Component::Delete(n) => UniComponent::Delete {
                d: DeleteLen::Count(*n as u64),
            },
        });
    }
    if matches!(out.last(), Some(UniComponent::Skip(_))) {
        out.pop();
    }
    out
}

/// An `ot-text-unicode` op on a text of `base_len` code points, as an ot-core op.
fn from_text_unicode(components: &[UniComponent], base_len: usize) -> Result<Operation> {
    let mut op = Operation::new();
    let mut consumed = 0usize;
    for c in components {
        match c {
            UniComponent::Skip(n) => {
                let n = usize::try_from(*n)?;
                op.retain(n);
                consumed += n;
            }
            UniComponent::Insert(text) => {
                op.insert(text);
            }
            UniComponent::Delete { d } => {
                let n = match d {
                    DeleteLen::Count(n) => usize::try_from(*n)?,
                    DeleteLen::Text(text) => text.chars().count(),
                };
                op.delete(n);
                consumed += n;
            }
        }
    }
    if consumed > base_len {
        bail!("an op over {consumed} code points on a text of {base_len}");
    }
    op.retain(base_len - consumed);
    Ok(op)
}

/// An op submitted by a client (ShareDB takes `src` from the connection).
#[derive(Debug, Serialize)]
struct OpMessage<'a> {
    a: &'static str,
    c: &'static str,
    d: &'a str,
    /// The version the op applies to.
    v: u64,
    seq: u64,
    op: Vec<UniComponent>,
}

/// The `op` message text for an op leaving the client.
fn op_message(doc: &str, out: &OutgoingOp) -> Result<String> {
    serde_json::to_string(&OpMessage {
        a: "op",
        c: COLLECTION,
        d: doc,
        v: out.base_rev,
        seq: out.seq,
        op: to_text_unicode(&out.op),
    })
    .context("serialising an op message")
}

/// A ShareDB error object.
#[derive(Debug, Deserialize)]
struct ErrorObject {
    #[serde(default)]
    code: serde_json::Value,
    #[serde(default)]
    message: String,
}

/// A snapshot in a subscribe or fetch reply.
#[derive(Debug, Deserialize)]
struct SnapshotData {
    v: u64,
    #[serde(default)]
    data: Option<String>,
    #[serde(rename = "type", default)]
    doc_type: Option<String>,
}

/// Any message from a ShareDB server, the fields this tool reads.
#[derive(Debug, Deserialize)]
struct ServerMsg {
    a: String,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    v: Option<u64>,
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    op: Option<Vec<UniComponent>>,
    /// Handshake: this connection's id.
    #[serde(default)]
    id: Option<String>,
    /// Subscribe reply: the snapshot.
    #[serde(default)]
    data: Option<SnapshotData>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

/// Parse a server message; one carrying an error is an error.
fn parse(text: &str) -> Result<ServerMsg> {
    let msg: ServerMsg = serde_json::from_str(text)
        .with_context(|| format!("not a ShareDB server message: {text}"))?;
    if let Some(e) = &msg.error {
        bail!(
            "ShareDB error {} on {:?}: {} ({text})",
            e.code,
            msg.a,
            e.message
        );
    }
    Ok(msg)
}

/// Something at one version of the document, waiting for its turn.
#[derive(Debug, PartialEq)]
enum AtVersion {
    /// The ack of our op in flight (its seq).
    Ack(u64),
    /// Another client's op.
    Remote {
        src: String,
        seq: u64,
        op: Vec<UniComponent>,
    },
}

/// One ShareDB client's protocol state on one document, without I/O.
#[derive(Debug)]
pub struct Session {
    /// The document's id.
    doc: String,
    /// This connection's id (ShareDB's `src`).
    src: String,
    client: Client,
    /// Ops and acks above the client's version, by version.
    ahead: BTreeMap<u64, AtVersion>,
}

impl Session {
    /// A session on `doc` at `version` with `text`, for the connection `src`.
    fn new(doc: &str, src: &str, version: u64, text: &str) -> Session {
        Session {
            doc: doc.to_owned(),
            src: src.to_owned(),
            client: Client::new(src.to_owned(), version, text, 0),
            ahead: BTreeMap::new(),
        }
    }
}

/// `GET /text/docs/{doc}` on the server script: (version, text).
pub async fn final_state(addr: SocketAddr, doc: &str) -> Result<(u64, String)> {
    #[derive(Deserialize)]
    struct Doc {
        v: u64,
        data: Option<String>,
    }
    let path = format!("/text/{COLLECTION}/{doc}");
    let body = http_get(addr, &path).await?;
    let d: Doc = serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))?;
    Ok((d.v, d.data.unwrap_or_default()))
}

/// The server script's `GET /stats` counters between two reads, as a line
/// (`None` if either is not such a page).
pub fn stats_deltas(before: &str, after: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Stats {
        submits: u64,
        failed: u64,
        retries: u64,
    }
    let b: Stats = serde_json::from_str(before).ok()?;
    let a: Stats = serde_json::from_str(after).ok()?;
    let submits = a.submits.saturating_sub(b.submits);
    let retries = a.retries.saturating_sub(b.retries);
    Some(format!(
        "{submits} submits committed (creates included), {} failed, {retries} commit retries after a lost version race ({:.2} per committed submit)",
        a.failed.saturating_sub(b.failed),
        if submits > 0 { retries as f64 / submits as f64 } else { 0.0 }
    ))
}

/// Open a connection and do the handshake: the socket and this connection's id.
async fn handshake(addr: SocketAddr, read_buffer: usize) -> Result<(Socket, String)> {
    let mut socket = editing::open(&format!("ws://{addr}/"), read_buffer).await?;
    socket
        .send(Message::text(
            r#"{"a":"hs","id":null,"protocol":1,"protocolMinor":2}"#,
        ))
        .await
        .context("sending the handshake")?;
    loop {
        let text = next_text(&mut socket, Duration::from_secs(10)).await?;
        let msg = parse(&text)?;
        if msg.a == "hs" {
            let id = msg
                .id
                .ok_or_else(|| anyhow!("a handshake reply without an id: {text}"))?;
            return Ok((socket, id));
        }
        // "init" (the legacy first message) comes first.
    }
}

/// Create the documents (empty but for [`INITIAL_TEXT`]) over one connection.
pub async fn create_docs(addr: SocketAddr, doc_ids: &[String], read_buffer: usize) -> Result<()> {
    let (mut socket, _) = handshake(addr, read_buffer).await?;
    for (i, doc) in doc_ids.iter().enumerate() {
        let msg = json!({
            "a": "op", "c": COLLECTION, "d": doc, "v": 0, "seq": i + 1,
            "create": {"type": TEXT_UNICODE, "data": INITIAL_TEXT},
        });
        socket
            .send(Message::text(msg.to_string()))
            .await
            .context("sending a create")?;
    }
    let mut acked = 0;
    while acked < doc_ids.len() {
        let text = next_text(&mut socket, Duration::from_secs(30))
            .await
            .with_context(|| format!("creating documents ({acked} of {} done)", doc_ids.len()))?;
        let msg = parse(&text).context("creating a document")?;
        if msg.a == "op" {
            acked += 1;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    Ok(())
}

/// The next text frame within `within` (pings skipped); an error if the connection ended.
async fn next_text(socket: &mut Socket, within: Duration) -> Result<String> {
    match editing::next_frame(socket, within).await? {
        Frame::Text(text) => Ok(text),
        Frame::Lost(why) => bail!("connection lost: {why}"),
    }
}

impl Peer for Session {
    const REVISION: &'static str = "version";
    const ACKED: &'static str = "acknowledged";
    const OP_MESSAGE: &'static str = "an op";
    const NO_RESUME: &'static str = "no reconnects in ShareDB mode";
    const WAIT_FOR_ALL_FINAL: bool = false;

    /// Connect, shake hands and subscribe to document `doc`.
    async fn connect(config: &PhaseConfig, doc: usize) -> Result<(Socket, Session, Vec<String>)> {
        let doc_id = &config.doc_ids[doc];
        let (mut socket, src) = handshake(config.target.addr(), config.read_buffer).await?;
        let subscribe = json!({"a": "s", "c": COLLECTION, "d": doc_id});
        socket
            .send(Message::text(subscribe.to_string()))
            .await
            .context("sending the subscribe")?;
        // Ops before the reply (none: nobody edits before every client is subscribed)
        // are kept and handled after it.
        let mut early = Vec::new();
        let session = loop {
            let text = next_text(&mut socket, Duration::from_secs(10)).await?;
            let msg = parse(&text)?;
            match (msg.a.as_str(), msg.data) {
                ("s", Some(snapshot)) => {
                    if snapshot.doc_type.as_deref() != Some(TEXT_UNICODE) {
                        bail!("{doc_id} is not a text-unicode document: {text}");
                    }
                    let text = snapshot.data.unwrap_or_default();
                    break Session::new(doc_id, &src, snapshot.v, &text);
                }
                ("op", _) => early.push(text),
                _ => {}
            }
        };
        Ok((socket, session, early))
    }

    fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    fn receive(&mut self, text: &str) -> Result<Received> {
        let msg = parse(text)?;
        let mut received = Received::default();
        if msg.a != "op" {
            return Ok(received); // presence, pings: nothing to do
        }
        if msg.d.as_deref() != Some(self.doc.as_str()) {
            bail!("an op for another document: {text}");
        }
        let (Some(v), Some(src), Some(seq)) = (msg.v, msg.src, msg.seq) else {
            bail!("an op message without v, src or seq: {text}");
        };
        if v < self.client.revision() {
            return Ok(received); // seen already
        }
        let event = match msg.op {
            Some(op) => AtVersion::Remote { src, seq, op },
            None if src == self.src => AtVersion::Ack(seq),
            None => bail!("an op message without an op (create or delete?): {text}"),
        };
        if let Some(other) = self.ahead.get(&v) {
            if *other != event {
                bail!("two different ops at version {v}: {other:?} and {text}");
            }
            return Ok(received);
        }
        if self.ahead.len() >= MAX_AHEAD {
            bail!(
                "{MAX_AHEAD} ops wait for version {}",
                self.client.revision()
            );
        }
        self.ahead.insert(v, event);
        while let Some(event) = self.ahead.remove(&self.client.revision()) {
            let v = self.client.revision();
            match event {
                AtVersion::Ack(seq) => match self.client.ack(v + 1, seq)? {
                    AckOutcome::Acknowledged { next } => {
                        if received.ack.is_some() {
                            bail!("two acks in one message (version {v})");
                        }
                        received.ack = Some(next);
                    }
                    AckOutcome::Ignored => {
                        bail!("an ack of seq {seq} at version {v}, but that is not in flight")
                    }
                },
                AtVersion::Remote { src, seq, op } => {
                    let op = from_text_unicode(&op, self.client.synced_text().len_chars())?;
                    match self.client.remote_op(v + 1, &op, &src, seq)? {
                        RemoteOutcome::Applied(op) => received.applied.push(op),
                        RemoteOutcome::Acknowledged { .. } => {
                            bail!("our own op came back as an op at version {v}")
                        }
                        RemoteOutcome::Ignored => {}
                    }
                }
            }
        }
        Ok(received)
    }

    fn op_message(&self, out: &OutgoingOp) -> Result<String> {
        op_message(&self.doc, out)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn op_json(json: &str) -> Operation {
        Operation::from_json(json).unwrap()
    }

    fn uni(json: &str) -> Vec<UniComponent> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ops_convert_both_ways_without_the_trailing_skip() -> Result<()> {
        let op = op_json(r#"[2,"hé😀",-1,4]"#);
        let components = to_text_unicode(&op);
        assert_eq!(serde_json::to_string(&components)?, r#"[2,"hé😀",{"d":1}]"#);
        assert_eq!(from_text_unicode(&components, 7)?, op);
        // A delete given as text counts its code points; a too short text is refused.
        assert_eq!(
            from_text_unicode(&uni(r#"[1,{"d":"ж😀"}]"#), 4)?,
            op_json("[1,-2,1]")
        );
        assert!(from_text_unicode(&uni(r#"[5,{"d":1}]"#), 5).is_err());
        assert_eq!(to_text_unicode(&Operation::identity(3)), vec![]);
        Ok(())
    }

    #[test]
    fn an_op_message_carries_the_version_and_seq() -> Result<()> {
        let out = OutgoingOp {
            seq: 4,
            base_rev: 9,
            op: op_json(r#"[1,"x",-2]"#),
        };
        assert_eq!(
            op_message("d-1", &out)?,
            r#"{"a":"op","c":"docs","d":"d-1","v":9,"seq":4,"op":[1,"x",{"d":2}]}"#
        );
        Ok(())
    }

    /// Another client's op before our ack is transformed past our op in
    /// flight (ours first at a tie, as ShareDB's server did), its duplicate
    /// is skipped, and the buffered edit goes next, based on the ack's version + 1.
    #[test]
    fn an_ack_after_a_missed_op_and_a_duplicate() -> Result<()> {
        let mut s = Session::new("d", "me", 1, "\n");
        let first = s
            .client
            .local_edit(&op_json(r#"["ab",1]"#))?
            .expect("sent at once");
        assert_eq!(first.base_rev, 1);
        assert_eq!(s.client.local_edit(&op_json(r#"[2,"c",1]"#))?, None);
        let remote = r#"{"a":"op","c":"docs","d":"d","v":1,"src":"other","seq":7,"op":["X"]}"#;
        let received = s.receive(remote)?;
        assert_eq!(received.applied, vec![op_json(r#"[3,"X",1]"#)]);
        assert_eq!(received.ack, None);
        // The same op again (from the subscription, after the submit's reply).
        assert_eq!(s.receive(remote)?, Received::default());
        let received = s.receive(r#"{"src":"me","seq":1,"v":2,"a":"op","c":"docs","d":"d"}"#)?;
        let next = received.ack.expect("acked").expect("the buffer goes next");
        assert_eq!(next.base_rev, 3);
        assert_eq!(
            op_message("d", &next)?,
            r#"{"a":"op","c":"docs","d":"d","v":3,"seq":2,"op":[2,"c"]}"#
        );
        assert_eq!(s.client.text().to_string(), "abcX\n");
        Ok(())
    }

    /// An op above the client's version waits for the ones before it.
    #[test]
    fn an_op_ahead_waits_for_the_ack_before_it() -> Result<()> {
        let mut s = Session::new("d", "me", 1, "\n");
        s.client.local_edit(&op_json(r#"["a",1]"#))?.expect("sent");
        let ahead =
            s.receive(r#"{"a":"op","c":"docs","d":"d","v":2,"src":"o","seq":1,"op":[1,"b"]}"#)?;
        assert_eq!(ahead, Received::default());
        let received = s.receive(r#"{"src":"me","seq":1,"v":1,"a":"op","c":"docs","d":"d"}"#)?;
        assert_eq!(received.ack, Some(None));
        assert_eq!(received.applied, vec![op_json(r#"[1,"b",1]"#)]);
        assert_eq!(s.client.revision(), 3);
        assert_eq!(s.client.text().to_string(), "ab\n");
        Ok(())
    }

    #[test]
    fn stats_deltas_count_retries_per_submit() {
        let line = stats_deltas(
            r#"{"submits":10,"failed":0,"retries":5}"#,
            r#"{"submits":110,"failed":1,"retries":255}"#,
        )
        .unwrap();
        assert!(line.starts_with("100 submits committed"), "{line}");
        assert!(line.contains("1 failed, 250 commit retries"), "{line}");
        assert!(line.ends_with("(2.50 per committed submit)"), "{line}");
        assert_eq!(stats_deltas("{}", "{}"), None);
    }

    #[test]
    fn errors_and_unexpected_messages_are_errors() {
        let mut s = Session::new("d", "me", 1, "");
        assert!(s
            .receive(r#"{"a":"op","c":"docs","d":"d","v":1,"seq":1,"op":["x"],"error":{"code":"ERR_OT_OP_NOT_APPLIED","message":"no"}}"#)
            .is_err());
        // An ack of nothing in flight.
        assert!(s
            .receive(r#"{"src":"me","seq":1,"v":1,"a":"op","c":"docs","d":"d"}"#)
            .is_err());
        // Another document's op.
        assert!(s
            .receive(r#"{"a":"op","c":"docs","d":"e","v":1,"src":"o","seq":1,"op":["x"]}"#)
            .is_err());
        // Presence and pings are ignored.
        assert_eq!(s.receive(r#"{"a":"pp"}"#).unwrap(), Received::default());
    }
}
