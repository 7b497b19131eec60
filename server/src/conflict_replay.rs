//! `POST /api/admin/docs/{doc}/conflicts/replay`: every journaled conflict's
//! resolution recomputed from the stored ops, and the ones that differ
//! reported. Nothing is rewritten: it is how an operator learns from the
//! journal, not from users, that stored data disagrees with the merge rule
//! (`tie=same`, the rule in force) or which resolutions depend on the insert
//! tie rule (`tie=other`).
//!
//! `POST /api/admin/docs/{doc}/conflicts/upstream/replay` does the same for
//! a regional server's own journal: each op of the home transformed past
//! the region's unsent work, recomputed from both sides as journaled (there
//! the local work is `a`: its inserts go first at a tie).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use ot_core::conflict_replay::{resolve, TieRule};
use ot_core::{Operation, OtError};
use ot_protocol::Access;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::app::Shared;
use crate::auth::Caller;
use crate::http::{blocking, doc_id, not_found, query_u64, regional, ApiResult};
use crate::pages::read_page;
use crate::storage::{Storage, StorageError, StoredOp};

/// Most conflicts one call checks (each reads the ops it was transformed past).
pub(crate) const MAX_CONFLICTS: usize = 100;
/// Most stored ops one call reads to recompute its conflicts: a call stops
/// early (with `next`) once it has read this many, after at least one conflict.
const MAX_OPS_READ: usize = 20_000;
/// Ops read from storage at a time while recomputing one conflict.
const PAGE_OPS: usize = 1_000;

/// What one call found.
struct Replayed {
    checked: usize,
    differ: Vec<Value>,
    /// The `from` of the next call, if more conflicts may follow.
    next: Option<u64>,
}

/// `POST /api/admin/docs/{doc}/conflicts/replay?from=R&limit=L&tie=same|other`
/// → `{"checked":n,"tie":…,"differ":[…],"next":R|null}`: the conflicts after
/// revision R (at most L, default and at most [`MAX_CONFLICTS`]) recomputed.
/// Needs `admin` on the document.
pub(crate) async fn replay_conflicts(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Admin)?;
    let ask = ReplayQuery::read(&query)?;
    let (from, limit, tie_name) = (ask.from, ask.limit, ask.tie_name);
    let tie = ask.tie(TieRule::ReceivedFirst);
    let id = doc.to_string();
    let replayed = blocking(&shared, move |s| {
        if !s.exists(&id)? {
            return Ok(None);
        }
        replay(s, &id, from, limit, tie).map(Some)
    })
    .await?
    .ok_or_else(|| not_found(&doc))?;
    if !replayed.differ.is_empty() {
        tracing::warn!(doc = %doc, tie = tie_name, differ = replayed.differ.len(), "conflict replay found resolutions that differ");
    }
    Ok(Json(json!({
        "checked": replayed.checked,
        "tie": tie_name,
        "differ": replayed.differ,
        "next": replayed.next,
    }))
    .into_response())
}

/// What a replay call asks: `from`, `limit` (default and at most
/// [`MAX_CONFLICTS`]) and `tie` (whether the rule in force, and its name).
struct ReplayQuery {
    from: u64,
    limit: usize,
    same: bool,
    tie_name: &'static str,
}

impl ReplayQuery {
    fn read(query: &HashMap<String, String>) -> ApiResult<ReplayQuery> {
        let (same, tie_name) = match query.get("tie").map(String::as_str) {
            None | Some("same") => (true, "same"),
            Some("other") => (false, "other"),
            Some(_) => return Err(ApiError::invalid_query("tie")),
        };
        Ok(ReplayQuery {
            from: query_u64(query, "from", 0)?,
            limit: (query_u64(query, "limit", MAX_CONFLICTS as u64)? as usize)
                .clamp(1, MAX_CONFLICTS),
            same,
            tie_name,
        })
    }

    /// The rule to recompute under, given the one in force.
    fn tie(&self, in_force: TieRule) -> TieRule {
        if self.same {
            in_force
        } else {
            in_force.other()
        }
    }
}

/// `POST /api/admin/docs/{doc}/conflicts/upstream/replay?from=R&limit=L&tie=same|other`
/// → `{"checked":n,"unchecked":u,"tie":…,"differ":[…],"next":R|null}`: on a
/// regional server, the journaled integrations of the home's ops after
/// regional revision R (at most L, default and at most [`MAX_CONFLICTS`])
/// recomputed from the home's op and the local work it was transformed
/// past; `unchecked` counts those journaled without their local side (too
/// much unsent work to keep). Needs `admin` on the document; 404 at a
/// server without `--upstream`.
pub(crate) async fn replay_upstream_conflicts(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(doc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    caller.require(&doc, Access::Admin)?;
    regional(&shared)?;
    let ask = ReplayQuery::read(&query)?;
    let (from, limit, tie_name) = (ask.from, ask.limit, ask.tie_name);
    // At a region the local work goes first at a tie: the home's op is
    // the concurrent side of the rule in force.
    let tie = ask.tie(TieRule::ConcurrentFirst);
    let id = doc.to_string();
    let conflicts = blocking(&shared, move |s| s.region_conflicts(&id, from, limit)).await?;
    let (mut checked, mut unchecked) = (0usize, 0usize);
    let mut differ = Vec::new();
    for conflict in &conflicts {
        if conflict.local.is_empty() {
            unchecked += 1;
            continue;
        }
        checked += 1;
        let found = match resolve(&conflict.received, &conflict.local, tie) {
            Ok(op) if op == conflict.applied => continue,
            Ok(op) => json!({ "recomputed": op }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let mut value = json!({
            "rev": conflict.rev,
            "home_rev": conflict.home_rev,
            "author": conflict.author,
            "received": conflict.received,
            "local": conflict.local,
            "applied": conflict.applied,
        });
        if let (Some(map), Value::Object(found)) = (value.as_object_mut(), found) {
            map.extend(found);
        }
        differ.push(value);
    }
    if !differ.is_empty() {
        tracing::warn!(doc = %doc, tie = tie_name, differ = differ.len(), "upstream conflict replay found resolutions that differ");
    }
    let next = (conflicts.len() == limit)
        .then(|| conflicts.last().map(|c| c.rev))
        .flatten();
    Ok(Json(json!({
        "checked": checked,
        "unchecked": unchecked,
        "tie": tie_name,
        "differ": differ,
        "next": next,
    }))
    .into_response())
}

fn replay(
    storage: &dyn Storage,
    doc: &str,
    from: u64,
    limit: usize,
    tie: TieRule,
) -> Result<Replayed, StorageError> {
    let conflicts = read_page(storage, doc, from, limit, |s, d, after, n| {
        s.conflicts(d, after, n)
    })?;
    let full_page = conflicts.len() == limit;
    let mut replayed = Replayed {
        checked: 0,
        differ: Vec::new(),
        next: None,
    };
    let mut ops_read = 0usize;
    for conflict in &conflicts {
        if replayed.checked > 0 && ops_read >= MAX_OPS_READ {
            replayed.next = Some(conflict.rev - 1);
            return Ok(replayed);
        }
        let (recomputed, read) = recompute(storage, doc, conflict, tie)?;
        ops_read += read;
        match recomputed {
            Ok(op) if op == conflict.applied => {}
            Ok(op) => replayed
                .differ
                .push(entry(conflict, json!({ "recomputed": op }))),
            Err(e) => replayed
                .differ
                .push(entry(conflict, json!({ "error": e.to_string() }))),
        }
        replayed.checked += 1;
    }
    if full_page {
        replayed.next = conflicts.last().map(|c| c.rev);
    }
    Ok(replayed)
}

/// `conflict`'s received op transformed under `tie` past the stored ops of
/// revisions `base_rev + 1 ..= rev - 1`, read a page at a time (a base may be
/// up to `--max-rebase-revs` behind), and how many ops that read.
fn recompute(
    storage: &dyn Storage,
    doc: &str,
    conflict: &StoredOp,
    tie: TieRule,
) -> Result<(Result<Operation, OtError>, usize), StorageError> {
    let mut op = conflict.received.clone();
    let mut read = 0usize;
    let mut after = conflict.base_rev;
    while after + 1 < conflict.rev {
        let want = ((conflict.rev - 1 - after) as usize).min(PAGE_OPS);
        let page = read_page(storage, doc, after, want, |s, d, a, n| s.ops(d, a, n))?;
        let Some(last) = page.last() else { break };
        after = last.rev;
        read += page.len();
        op = match resolve(&op, page.iter().map(|stored| &stored.applied), tie) {
            Ok(op) => op,
            Err(e) => return Ok((Err(e), read)),
        };
    }
    Ok((Ok(op), read))
}

/// One resolution that differs: the stored op and what was found instead.
fn entry(conflict: &StoredOp, found: Value) -> Value {
    let mut value = json!({
        "rev": conflict.rev,
        "client": conflict.client_id,
        "seq": conflict.seq,
        "base_rev": conflict.base_rev,
        "original": conflict.received,
        "applied": conflict.applied,
    });
    if let (Some(map), Value::Object(found)) = (value.as_object_mut(), found) {
        map.extend(found);
    }
    value
}
