//! Loading a document into its actor: from storage, and on a region that
//! holds no copy of it yet, from its home first (the first open).

use std::sync::Arc;

use ot_core::history::DocumentHistory;
use ot_core::region::RegionalDocument;
use ot_protocol::DocId;
use tokio::sync::oneshot;

use super::epoch::DocEpoch;
use super::error::DocError;
use super::link;
use super::region_items::region_items;
use super::registry::Registry;
use super::replica::Replica;
use super::snapshot_policy::SnapshotPolicy;
use crate::state::Services;
use crate::storage::{LoadedDoc, RegionRecord, WriteItem};
use crate::upstream::Upstream;

/// A document as loaded.
pub(super) struct Loaded {
    /// Whether storage has the document.
    pub(super) created: bool,
    /// Its history (on a region, with the link).
    pub(super) replica: Replica,
    /// When its next snapshot is due.
    pub(super) snapshots: SnapshotPolicy,
    /// On a region: the number of the next region record.
    pub(super) region_next: u64,
}

/// The document for its actor, and its epoch: as stored, or new (empty on
/// a home; on a region, the home's copy, stored before this returns).
pub(super) async fn load(
    shared: &Arc<Services>,
    id: &DocId,
) -> Result<(Loaded, DocEpoch), DocError> {
    let storage = shared.storage.clone();
    let doc = id.to_string();
    let deleted = tokio::task::spawn_blocking(move || storage.deleted_epoch(&doc)).await??;
    let epoch = DocEpoch::new(shared.storage.epoch(), deleted);
    if let Some(loaded) = load_stored(shared, id.as_str()).await? {
        return Ok((loaded, epoch));
    }
    match &shared.upstream {
        None => Ok((
            Loaded {
                created: false,
                replica: Replica::Home(DocumentHistory::new()),
                snapshots: SnapshotPolicy::after_load(shared.config.snapshot_every, []),
                region_next: 0,
            },
            epoch,
        )),
        Some(upstream) => first_open(shared, upstream, id, epoch).await,
    }
}

/// What storage holds of the document, or `None` (on a region: no region
/// records, so no copy of the home's document).
pub(super) async fn load_stored(
    shared: &Arc<Services>,
    doc: &str,
) -> Result<Option<Loaded>, DocError> {
    let storage = shared.storage.clone();
    let regional = shared.upstream.is_some();
    let id = doc.to_owned();
    let (loaded, records) = tokio::task::spawn_blocking(move || {
        let loaded = storage.load(&id)?;
        let records = match regional {
            true => storage.region_records(&id)?,
            false => Vec::new(),
        };
        Ok::<_, crate::storage::StorageError>((loaded, records))
    })
    .await??;
    let every = shared.config.snapshot_every;
    let Some(loaded) = loaded else {
        return Ok(None);
    };
    let snapshots = SnapshotPolicy::after_load(every, loaded.tail.iter().map(|op| &op.op));
    if !regional {
        return Ok(Some(Loaded {
            created: true,
            replica: Replica::Home(DocumentHistory::from_snapshot(
                loaded.snapshot,
                loaded.tail,
            )?),
            snapshots,
            region_next: 0,
        }));
    }
    if records.is_empty() {
        return match has_ops(&loaded) {
            true => Err(DocError::NotRegional),
            false => Ok(None),
        };
    }
    let region_next = records.last().map_or(0, |(n, _)| n + 1);
    let region = recover(records)?;
    Ok(Some(Loaded {
        created: true,
        replica: Replica::Region(Box::new(region)),
        snapshots,
        region_next,
    }))
}

fn has_ops(loaded: &LoadedDoc) -> bool {
    loaded.snapshot.rev > 0 || !loaded.tail.is_empty()
}

/// The regional document from its records: the newest checkpoint and every
/// entry after it.
fn recover(records: Vec<(u64, RegionRecord)>) -> Result<RegionalDocument, DocError> {
    let start = records
        .iter()
        .rposition(|(_, record)| matches!(record, RegionRecord::Checkpoint { .. }));
    let mut checkpoint = None;
    let mut entries = Vec::new();
    for (index, (_, record)) in records.into_iter().enumerate() {
        match record {
            RegionRecord::Checkpoint { checkpoint: c } if Some(index) == start => {
                checkpoint = Some(*c);
            }
            RegionRecord::Entry { entry } if start.is_none_or(|s| index > s) => {
                entries.push(*entry)
            }
            _ => {}
        }
    }
    RegionalDocument::recover(checkpoint, entries).map_err(|e| DocError::Region(e.to_string()))
}

/// A region's first open of a document: the home's copy, stored (its
/// first regional commit) before anyone is served from it.
async fn first_open(
    shared: &Arc<Services>,
    upstream: &Upstream,
    id: &DocId,
    epoch: DocEpoch,
) -> Result<(Loaded, DocEpoch), DocError> {
    let copy = link::fetch_home_copy(shared, upstream, id).await?;
    let mut region = RegionalDocument::first_open(
        upstream.link_id.as_str(),
        copy.epoch,
        copy.rev,
        &copy.text,
        copy.last_seq,
        copy.limits,
    )?;
    let Some((commit, checkpoint)) = region.take_commit(true) else {
        return Err(DocError::Region("the first open recorded nothing".into()));
    };
    let doc = id.to_string();
    let mut n = 0;
    let number = commit.number;
    let mut items = Vec::new();
    // Never the home's epoch (see `DocEpoch::marker_against`).
    let marker = epoch.marker_against(copy.epoch);
    if let Some(marker) = marker {
        items.push(WriteItem::DeleteDoc {
            doc: doc.clone(),
            epoch: marker,
        });
    }
    items.extend(region_items(&doc, &mut n, commit, checkpoint));
    let epoch = marker.map_or(epoch, |marker| epoch.with_deleted(marker));
    let (tx, durable) = oneshot::channel();
    shared.queue.lane(&doc).submit(
        items,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    match durable.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DocError::Commit(e)),
        Err(_) => return Err(DocError::NoAnswer),
    }
    region.committed(number);
    tracing::info!(doc = %id, home_rev = copy.rev, "first open: stored the home's copy");
    Ok((
        Loaded {
            created: true,
            replica: Replica::Region(Box::new(region)),
            snapshots: SnapshotPolicy::after_load(shared.config.snapshot_every, []),
            region_next: n,
        },
        epoch,
    ))
}

/// Now, in milliseconds since the Unix epoch (the shared clock: see
/// [`crate::clock`]).
pub(super) fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// On a region, at start: open every document it holds a copy of, so that
/// work not yet at the home goes on upstream without waiting for a writer
/// to open it (a document with nothing to replicate unloads again when idle).
pub(crate) async fn reopen_region_copies(shared: Arc<Services>, registry: Arc<Registry>) {
    let storage = shared.storage.clone();
    let docs = match tokio::task::spawn_blocking(move || storage.region_docs()).await {
        Ok(Ok(docs)) => docs,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not list this region's documents");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not list this region's documents");
            return;
        }
    };
    if !docs.is_empty() {
        tracing::info!(
            documents = docs.len(),
            "reopening this region's documents to resume their links"
        );
    }
    for doc in docs {
        if shared.shutdown.is_cancelled() {
            return;
        }
        if let Ok(id) = DocId::parse(&doc) {
            super::open(&shared, &registry, &id);
        }
    }
}
