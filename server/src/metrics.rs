//! Prometheus metrics, served as text at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// All the server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub(crate) connections: IntGauge,
    /// Documents loaded in memory.
    pub(crate) open_documents: IntGauge,
    /// Documents loaded from storage (each open after an unload counts).
    pub(crate) document_loads: IntCounter,
    /// Ops applied (new revisions).
    pub(crate) ops_applied: IntCounter,
    /// Ops transformed past concurrent ops (detected conflicts).
    pub(crate) conflicts: IntCounter,
    /// Resent ops answered as duplicates.
    pub(crate) duplicates: IntCounter,
    /// Snapshots submitted for storage with an op.
    pub(crate) snapshots: IntCounter,
    /// Error messages sent, by code.
    pub(crate) errors: IntCounterVec,
    /// Time from receiving an op to sending its ack.
    pub(crate) ack_latency: Histogram,
    /// Time of one group commit.
    pub(crate) commit_latency: Histogram,
    /// Items per group commit.
    pub(crate) commit_batch: Histogram,
    /// Committed items not yet moved to their final place (set when scraped).
    pub(crate) storage_backlog: IntGauge,
    /// Time of one ingest.
    pub(crate) ingest_latency: Histogram,
    /// Items moved per ingest.
    pub(crate) ingest_batch: Histogram,
    /// Signs of lost acknowledged commits found when the storage was opened.
    pub(crate) storage_faults: IntGauge,
    /// On a regional server: documents whose link to the home is connected.
    pub(crate) region_links_connected: IntGauge,
    /// On a regional server: local ops the home has not acknowledged yet,
    /// over the open documents.
    pub(crate) region_unreplicated_ops: IntGauge,
    /// On storage shared with other nodes: commits refused because another
    /// node had moved the document's head first.
    pub(crate) lost_races: IntCounter,
    /// On storage shared with other nodes: times a document took ops
    /// another node committed (from the change feed, a join ahead of it, a
    /// periodic check, or the reload after a lost race).
    pub(crate) catch_ups: IntCounter,
    /// On storage shared with other nodes: ops received again from their
    /// originals after their commit lost a race (each becomes a conflict).
    pub(crate) race_retries: IntCounter,
    /// On storage shared with other nodes: times a document lost so many
    /// races in a row that it stopped retrying and answered `storage_error`.
    pub(crate) race_give_ups: IntCounter,
    /// Connections and requests the connection limits ended or refused, by
    /// reason (`dead_peer`, `write_timeout`, `join_timeout`, `per_addr`,
    /// `api_busy`).
    pub(crate) refused: IntCounterVec,
}

impl Metrics {
    /// Create and register every metric.
    pub(crate) fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let connections = IntGauge::new("ot_connections", "Open WebSocket connections")?;
        let open_documents = IntGauge::new("ot_open_documents", "Documents loaded in memory")?;
        let document_loads = IntCounter::new(
            "ot_document_loads_total",
            "Documents loaded from storage into memory",
        )?;
        let ops_applied = IntCounter::new("ot_ops_applied_total", "Ops applied")?;
        let conflicts = IntCounter::new(
            "ot_conflicts_total",
            "Ops transformed past concurrent ops (detected conflicts)",
        )?;
        let duplicates =
            IntCounter::new("ot_duplicates_total", "Resent ops answered as duplicates")?;
        let snapshots = IntCounter::new(
            "ot_snapshots_total",
            "Document snapshots stored (each writes the whole text)",
        )?;
        let errors = IntCounterVec::new(
            Opts::new("ot_errors_total", "Error messages sent to clients, by code"),
            &["code"],
        )?;
        let ack_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ot_ack_latency_seconds",
                "Time from receiving an op to sending its ack",
            )
            .buckets(latency_buckets.clone()),
        )?;
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new("ot_commit_latency_seconds", "Time of one group commit")
                .buckets(latency_buckets.clone()),
        )?;
        let storage_backlog = IntGauge::new(
            "ot_storage_backlog_items",
            "Committed items waiting to be ingested into the tables",
        )?;
        let ingest_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ot_ingest_seconds",
                "Time of one ingest of committed items into the tables",
            )
            .buckets(latency_buckets),
        )?;
        let ingest_batch = Histogram::with_opts(
            HistogramOpts::new("ot_ingest_items", "Items written per ingest").buckets(vec![
                1.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
            ]),
        )?;
        let commit_batch = Histogram::with_opts(
            HistogramOpts::new("ot_commit_batch_items", "Items written per group commit").buckets(
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
            ),
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "ot_connection_limits_total",
                "Connections and requests ended or refused by a connection limit, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(open_documents.clone()))?;
        registry.register(Box::new(document_loads.clone()))?;
        registry.register(Box::new(ops_applied.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(snapshots.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(ack_latency.clone()))?;
        registry.register(Box::new(commit_latency.clone()))?;
        registry.register(Box::new(commit_batch.clone()))?;
        registry.register(Box::new(storage_backlog.clone()))?;
        registry.register(Box::new(ingest_latency.clone()))?;
        registry.register(Box::new(ingest_batch.clone()))?;
        // Storage faults (issue 13): set once, when the storage is opened.
        let storage_faults = IntGauge::new(
            "ot_storage_faults_at_open",
            "Signs of lost acknowledged commits found when the storage was opened (a restored backup, a damaged commit log); each changed the epoch",
        )?;
        registry.register(Box::new(storage_faults.clone()))?;
        let region_links_connected = IntGauge::new(
            "ot_region_links_connected",
            "On a regional server: open documents whose link to the home is connected",
        )?;
        registry.register(Box::new(region_links_connected.clone()))?;
        let region_unreplicated_ops = IntGauge::new(
            "ot_region_unreplicated_ops",
            "On a regional server: ops of the open documents' links that the home has not acknowledged yet (local ops are composed into them)",
        )?;
        registry.register(Box::new(region_unreplicated_ops.clone()))?;
        let lost_races = IntCounter::new(
            "ot_storage_lost_races_total",
            "On storage shared by several nodes: commits refused because another node had moved the document's head first (the node catches up and receives its pending ops again)",
        )?;
        registry.register(Box::new(lost_races.clone()))?;
        let catch_ups = IntCounter::new(
            "ot_storage_catch_ups_total",
            "On storage shared by several nodes: times an open document took ops another node committed",
        )?;
        registry.register(Box::new(catch_ups.clone()))?;
        let race_retries = IntCounter::new(
            "ot_storage_race_retries_total",
            "On storage shared by several nodes: pending ops received again from their originals after their commit lost a race",
        )?;
        registry.register(Box::new(race_retries.clone()))?;
        let race_give_ups = IntCounter::new(
            "ot_storage_race_give_ups_total",
            "On storage shared by several nodes: times a document lost so many races in a row that its pending ops were answered storage_error",
        )?;
        registry.register(Box::new(race_give_ups.clone()))?;
        Ok(Metrics {
            race_retries,
            race_give_ups,
            lost_races,
            catch_ups,
            region_links_connected,
            region_unreplicated_ops,
            registry,
            connections,
            open_documents,
            document_loads,
            ops_applied,
            conflicts,
            duplicates,
            snapshots,
            errors,
            ack_latency,
            commit_latency,
            commit_batch,
            storage_backlog,
            ingest_latency,
            ingest_batch,
            storage_faults,
            refused,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
