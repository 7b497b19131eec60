//! The scripting commands: non-interactive, for shells, tests and bots.
//! Each prints its result on stdout and fails with a one-line reason.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ot_core::Operation;
use ot_driver::DriverError;
use serde_json::Value;

use crate::session::{ConnectOptions, ServerUrl, Session, SessionEvent};
use crate::store::Store;

/// How long a command waits for the server to acknowledge its edit.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Options shared by every command.
#[derive(Debug, Clone)]
pub struct Common {
    /// The server.
    pub server: ServerUrl,
    /// Display name.
    pub name: Option<String>,
    /// A fixed client id (else a saved or new one).
    pub client_id: Option<String>,
    /// Where states are saved.
    pub store: Store,
    /// How to connect (e.g. a CA file for `wss://`).
    pub connect: ConnectOptions,
}

/// A GET against the server: returns (status, body).
pub async fn http_get(common: &Common, path: &str) -> Result<(u16, String)> {
    Ok(ot_driver::http::get_with(&common.server, path, &common.connect).await?)
}

async fn get_json(common: &Common, path: &str) -> Result<Value> {
    let (status, body) = http_get(common, path).await?;
    if status != 200 {
        bail!(refusal(status, &body));
    }
    serde_json::from_str(&body)
        .with_context(|| format!("the server's answer to {path} is not JSON"))
}

/// What an HTTP error answer says, for a one-line failure (`token expired` first
/// for a 401, so that scripts can tell).
fn refusal(status: u16, body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_default();
    let message = v["message"].as_str().unwrap_or("request failed");
    let code = v["code"].as_str().unwrap_or("error");
    if status == 401 {
        format!("token expired or not accepted: {message} ({code}); get a new token")
    } else {
        format!("{message} ({code})")
    }
}

/// `cat DOC [--rev R]`: print the text.
pub async fn cat(common: &Common, doc: &str, rev: Option<u64>) -> Result<()> {
    let text = match rev {
        None => get_json(common, &format!("/api/docs/{doc}")).await?["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        Some(rev) => {
            let (status, body) =
                http_get(common, &format!("/api/docs/{doc}/text?rev={rev}")).await?;
            if status != 200 {
                bail!(refusal(status, &body));
            }
            body
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Connect a session to the document, its text current: a saved state is
/// resumed, and the ops it missed are applied before anything is built on the
/// text (positions given by the user refer to the current text).
async fn connected(common: &Common, doc: &str) -> Result<Session> {
    let mut session = Session::open(
        common.store.clone(),
        common.server.clone(),
        doc,
        common.client_id.as_deref(),
        common.name.clone(),
    )?
    .with_connect_options(common.connect.clone());
    report(&session.connect().await?);
    if !session.is_connected() && session.resyncing() {
        // The saved edits could not be resumed (they were saved as a conflict
        // copy, reported above): start again from a snapshot.
        report(&session.connect().await?);
    }
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    while session.client().revision() < session.head() {
        if !session.is_connected() {
            bail!("the connection was lost while catching up with {doc}");
        }
        match tokio::time::timeout_at(deadline, session.next_events()).await {
            Ok(events) => {
                let events = events?;
                if let Some(why) = access_expired(&events) {
                    bail!("token expired: {why}");
                }
                report(&events)
            }
            Err(_) => {
                bail!("the server did not send the latest edits of {doc} within {ACK_TIMEOUT:?}")
            }
        }
    }
    Ok(session)
}

/// The reason, if `events` say the token expired or was revoked (4001).
fn access_expired(events: &[SessionEvent]) -> Option<&str> {
    events.iter().find_map(|e| match e {
        SessionEvent::AccessExpired(why) => Some(why.as_str()),
        _ => None,
    })
}

fn report(events: &[SessionEvent]) {
    for event in events {
        match event {
            SessionEvent::ConflictCopy(path) => eprintln!(
                "ot-client: edits that could not be merged were saved to {}",
                path.display()
            ),
            SessionEvent::ServerError { code, message } => {
                eprintln!("ot-client: server error {code}: {message}")
            }
            _ => {}
        }
    }
}

/// Handle messages until every local edit is acknowledged (bounded by
/// [`ACK_TIMEOUT`]). Fails with one line if the server refuses an edit (naming
/// the conflict copy that keeps it: it is not sent again) or the connection is
/// lost (the edits stay saved and are sent next time).
async fn settle(session: &mut Session) -> Result<()> {
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    while !session.client().all_saved() {
        if !session.is_connected() {
            bail!("the connection was lost before the server acknowledged every edit (they are saved and will be sent next time)");
        }
        let events = match tokio::time::timeout_at(deadline, session.next_events()).await {
            Ok(events) => events?,
            Err(_) => bail!("the server did not acknowledge the edits within {ACK_TIMEOUT:?} (they are saved and will be sent next time)"),
        };
        if let Some(why) = access_expired(&events) {
            bail!("token expired: {why} (the edits are saved and will be sent next time)");
        }
        if session.is_connected() || !session.resyncing() {
            report(&events);
            continue;
        }
        // The server will not take the pending edits: they were given up.
        let mut why = String::from("the server refused the edit");
        for event in &events {
            if let SessionEvent::ServerError { code, message } = event {
                why.push_str(&format!(": {code}: {message}"));
            }
        }
        for event in &events {
            if let SessionEvent::ConflictCopy(path) = event {
                why.push_str(&format!(
                    "; the text with it was saved to {}",
                    path.display()
                ));
            }
        }
        bail!(why);
    }
    Ok(())
}

/// Make one edit built from the current text, and wait until it is acknowledged.
async fn edit_with(
    common: &Common,
    doc: &str,
    build: impl FnOnce(&str) -> Result<Operation>,
) -> Result<()> {
    let mut session = connected(common, doc).await?;
    // Send anything saved from an earlier run first.
    settle(&mut session).await?;
    let text = session.client().text().to_string();
    let op = build(&text)?;
    session.local_edit(&op).await?;
    settle(&mut session).await?;
    session.disconnect().await;
    Ok(())
}

fn char_count(text: &str) -> usize {
    text.chars().count()
}

/// `insert DOC POS TEXT`
pub async fn insert(common: &Common, doc: &str, pos: usize, text: &str) -> Result<()> {
    edit_with(common, doc, |current| {
        Operation::insert_at(char_count(current), pos, text).map_err(|e| anyhow!("{e}"))
    })
    .await
}

/// `delete DOC POS LEN`
pub async fn delete(common: &Common, doc: &str, pos: usize, len: usize) -> Result<()> {
    edit_with(common, doc, |current| {
        Operation::delete_range(char_count(current), pos, len).map_err(|e| anyhow!("{e}"))
    })
    .await
}

/// `append DOC TEXT`
pub async fn append(common: &Common, doc: &str, text: &str) -> Result<()> {
    edit_with(common, doc, |current| {
        let len = char_count(current);
        Operation::insert_at(len, len, text).map_err(|e| anyhow!("{e}"))
    })
    .await
}

/// `replace DOC --file F`: send the diff between the current text and the file.
pub async fn replace(common: &Common, doc: &str, file: &std::path::Path) -> Result<()> {
    let wanted =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    edit_with(common, doc, |current| Ok(Operation::diff(current, &wanted))).await
}

/// `sync DOC`: send the edits saved by earlier runs (e.g. made offline) and exit.
pub async fn sync(common: &Common, doc: &str) -> Result<()> {
    let ids = common.store.saved_ids(&common.server.ws(), doc)?;
    let ids: Vec<Option<String>> = match &common.client_id {
        Some(id) => vec![Some(id.clone())],
        None if ids.is_empty() => {
            println!("nothing saved for {doc}");
            return Ok(());
        }
        None => ids.into_iter().map(Some).collect(),
    };
    let mut sent = 0;
    for id in ids {
        let mut session = match Session::open(
            common.store.clone(),
            common.server.clone(),
            doc,
            id.as_deref(),
            common.name.clone(),
        ) {
            Ok(s) => s.with_connect_options(common.connect.clone()),
            // In use by a running editor: that one sends its own edits.
            Err(e) if format!("{e:#}").contains("in use") => continue,
            Err(e) => return Err(e),
        };
        if session.client().all_saved() {
            continue;
        }
        // Edits given up earlier (kept as a conflict copy) are not sent again:
        // the connection just starts from a snapshot.
        let pending = if session.resyncing() {
            0
        } else {
            session.client().unacknowledged()
        };
        report(&session.connect().await?);
        if !session.is_connected() && session.resyncing() {
            // They could not be resumed: saved as a conflict copy (reported).
            report(&session.connect().await?);
        }
        settle(&mut session).await?;
        session.disconnect().await;
        if session.conflict_copies.is_empty() {
            sent += pending;
        }
    }
    println!("sent {sent} pending edit(s) of {doc}");
    Ok(())
}

/// `watch DOC [--text]`: print each change (or the whole text after each change).
pub async fn watch(common: &Common, doc: &str, whole_text: bool, limit: Option<u64>) -> Result<()> {
    let mut session = connected(common, doc).await?;
    let mut out = std::io::stdout();
    if whole_text {
        writeln!(out, "{}", session.client().text())?;
    }
    let mut seen = 0u64;
    loop {
        if limit.is_some_and(|l| seen >= l) {
            break;
        }
        if !session.is_connected() {
            tokio::time::sleep(session.retry_delay()).await;
            match session.connect().await {
                // A resume's first frame may carry the ops missed meanwhile.
                Ok(events) => print_remote(&mut out, &session, events, whole_text, &mut seen)?,
                // Refused (the id is bound to another key, the token does not
                // cover the document, or it expired): retrying cannot help a script.
                Err(e)
                    if e.downcast_ref::<DriverError>().is_some_and(|e| {
                        matches!(e, DriverError::Forbidden(_) | DriverError::Unauthorized(_))
                    }) =>
                {
                    return Err(e)
                }
                Err(e) => eprintln!("ot-client: {e:#}; retrying"),
            }
            continue;
        }
        let events = session.next_events().await?;
        if let Some(why) = access_expired(&events) {
            bail!("token expired: {why}");
        }
        print_remote(&mut out, &session, events, whole_text, &mut seen)?;
    }
    Ok(())
}

/// `watch`'s output for `events`: what [`report`] says, then a line per
/// remote op (the whole text, or the op as JSON), counted in `seen`.
fn print_remote(
    out: &mut impl Write,
    session: &Session,
    events: Vec<SessionEvent>,
    whole_text: bool,
    seen: &mut u64,
) -> Result<()> {
    report(&events);
    for event in events {
        if let SessionEvent::Remote(op) = event {
            *seen += 1;
            if whole_text {
                writeln!(out, "{}", session.client().text())?;
            } else {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"rev": session.client().revision(), "op": op})
                )?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// `history DOC`: revisions, clients, times and ops.
pub async fn history(common: &Common, doc: &str, from: u64, limit: Option<u64>) -> Result<()> {
    let mut after = from;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let page = get_json(
            common,
            &format!("/api/docs/{doc}/ops?from={after}&limit=1000"),
        )
        .await?;
        let ops = page["ops"].as_array().cloned().unwrap_or_default();
        if ops.is_empty() {
            break;
        }
        for op in ops {
            if limit.is_some_and(|l| printed >= l) {
                return Ok(());
            }
            after = op["rev"].as_u64().unwrap_or(after + 1);
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}",
                op["rev"],
                op["time_ms"],
                op["client"].as_str().unwrap_or(""),
                op["seq"],
                op["op"]
            )?;
            printed += 1;
        }
    }
    Ok(())
}

/// Which insert tie rule `conflicts replay` recomputes under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Tie {
    /// The rule in force: every resolution should recompute as stored.
    #[default]
    Same,
    /// The other rule: lists the resolutions that depend on it.
    Other,
}

/// `conflicts replay DOC [--tie other] [--upstream]`: the server recomputes
/// every journaled resolution (with `--upstream`, a regional server's own
/// journal); print each that differs and a count. Fails if any differs
/// under the rule in force (stored data disagrees with the algebra).
pub async fn conflicts_replay(common: &Common, doc: &str, tie: Tie, upstream: bool) -> Result<()> {
    let tie_name = match tie {
        Tie::Same => "same",
        Tie::Other => "other",
    };
    let mut from = 0u64;
    let (mut checked, mut unchecked, mut differ) = (0u64, 0u64, 0u64);
    let journal = if upstream {
        "conflicts/upstream"
    } else {
        "conflicts"
    };
    let mut out = std::io::stdout().lock();
    loop {
        let path = format!("/api/admin/docs/{doc}/{journal}/replay?from={from}&tie={tie_name}");
        let (status, body) =
            ot_driver::http::post_json_with(&common.server, &path, &Value::Null, &common.connect)
                .await?;
        if status != 200 {
            bail!(refusal(status, &body));
        }
        let page: Value = serde_json::from_str(&body)
            .with_context(|| format!("the server's answer to {path} is not JSON"))?;
        checked += page["checked"].as_u64().unwrap_or(0);
        unchecked += page["unchecked"].as_u64().unwrap_or(0);
        for d in page["differ"].as_array().into_iter().flatten() {
            differ += 1;
            let found = match d.get("error") {
                Some(error) => format!("cannot be recomputed: {}", error.as_str().unwrap_or("?")),
                None => format!("recomputed {}", d["recomputed"]),
            };
            if upstream {
                writeln!(
                    out,
                    "regional revision {} (home revision {} by {}): stored {}, {found}",
                    d["rev"],
                    d["home_rev"],
                    d["author"].as_str().unwrap_or("?"),
                    d["applied"]
                )?;
            } else {
                writeln!(
                    out,
                    "revision {} ({} seq {}, based on revision {}): stored {}, {found}",
                    d["rev"],
                    d["client"].as_str().unwrap_or("?"),
                    d["seq"],
                    d["base_rev"],
                    d["applied"]
                )?;
            }
        }
        match page["next"].as_u64() {
            Some(next) if next > from => from = next,
            _ => break,
        }
    }
    let verb = if differ == 1 { "differs" } else { "differ" };
    if unchecked > 0 {
        writeln!(
            out,
            "{unchecked} journaled without their local side (too much unsent work to keep): not checked"
        )?;
    }
    match tie {
        Tie::Same => {
            writeln!(out, "{checked} conflicts checked, {differ} {verb}")?;
            if differ > 0 {
                bail!(
                    "{differ} stored resolution(s) of {doc} differ from what the ops recompute to"
                );
            }
        }
        Tie::Other => writeln!(
            out,
            "{checked} conflicts checked, {differ} {verb} under the other tie rule"
        )?,
    }
    Ok(())
}

/// The conflict copies the server keeps of `doc` (a regional server's work
/// its home could not take), oldest first, as `GET /api/docs/{doc}/copies` gives them.
pub async fn server_copies(common: &Common, doc: &str) -> Result<Vec<Value>> {
    let page = get_json(common, &format!("/api/docs/{doc}/copies")).await?;
    Ok(page["copies"].as_array().cloned().unwrap_or_default())
}

/// `copies DOC`: each conflict copy the server keeps of the document, with
/// when and why it was made, then its text.
pub async fn copies(common: &Common, doc: &str) -> Result<()> {
    let copies = server_copies(common, doc).await?;
    let mut out = std::io::stdout().lock();
    if copies.is_empty() {
        writeln!(out, "the server keeps no copies of {doc}")?;
    }
    for copy in copies {
        writeln!(
            out,
            "--- copy {} (time_ms {}, {})",
            copy["id"].as_str().unwrap_or("?"),
            copy["time_ms"],
            copy["reason"].as_str().unwrap_or("")
        )?;
        writeln!(out, "{}", copy["text"].as_str().unwrap_or(""))?;
    }
    Ok(())
}

/// `conflicts DOC [--upstream]`: the detected conflicts (ops transformed past
/// concurrent ops; with `--upstream`, a regional server's own journal).
pub async fn conflicts(common: &Common, doc: &str, upstream: bool) -> Result<()> {
    let mut after = 0;
    let journal = if upstream {
        "conflicts/upstream"
    } else {
        "conflicts"
    };
    let mut out = std::io::stdout().lock();
    loop {
        let page = get_json(
            common,
            &format!("/api/docs/{doc}/{journal}?from={after}&limit=1000"),
        )
        .await?;
        let items = page["conflicts"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for c in items {
            after = c["rev"].as_u64().unwrap_or(after + 1);
            writeln!(out, "{c}")?;
        }
    }
    Ok(())
}
