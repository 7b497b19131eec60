//! Command-line flags and environment variables (clap), with the documented defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::storage::Durability;

/// The end of `server --help`: commands to copy (a test parses each one).
const EXAMPLES: &str = "\
Examples:
  server                                              # 127.0.0.1:8080, data in ./data: open http://127.0.0.1:8080/
  server --data-dir /var/lib/ot --durability relaxed  # faster acks; a power loss may lose the last ones
  server --auth-secret-file secret                    # tokens required: `server token --help` mints links";

/// Server configuration. Every flag can also be set by the environment variable shown.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "server",
    version,
    about = "Collaborative plain-text editing server (OT over WebSocket)",
    after_help = EXAMPLES
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "OT_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Folder for the embedded SQLite database (created if missing).
    #[arg(long, env = "OT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Store everything in this PostgreSQL database instead of the embedded
    /// SQLite (`postgres://user@host:port/dbname`); several server nodes may
    /// share one. Needs `--durability fsync` (every commit is made with
    /// `synchronous_commit = on`). The database also holds the node id (and a
    /// regional server's link key) instead of the data dir.
    #[arg(long, env = "OT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// More trusted root certificates (PEM) for the database's certificate
    /// besides the system's, e.g. a private CA. TLS to the database is used
    /// when `--database-url` has `sslmode=require` (the server's name and
    /// certificate are checked); `prefer` (the default) and `disable`
    /// connect without TLS.
    #[arg(long, env = "OT_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Connections to the database this node commits on.
    #[arg(long, env = "OT_DATABASE_COMMIT_CONNECTIONS", default_value_t = 4)]
    pub database_commit_connections: usize,
    /// Connections to the database this node reads on (loads, history).
    #[arg(long, env = "OT_DATABASE_READ_CONNECTIONS", default_value_t = 8)]
    pub database_read_connections: usize,
    /// Longest wait for a database connection (e.g. `10s`, `500ms`): past
    /// it an op gets `storage_error`, a read 503 and a join 1011.
    #[arg(long, env = "OT_STORAGE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub storage_timeout: Duration,
    /// `fsync`: an ack means the op survives a power loss. `relaxed`: no fsync;
    /// survives a process crash but not a power loss (an unclean start then
    /// gives documents a new epoch and clients resync).
    #[arg(long, env = "OT_DURABILITY", default_value = "fsync")]
    pub durability: Durability,
    /// The node this data dir (with `--database-url`, the database) belongs
    /// to: stored in it (`<data-dir>/node-id`)
    /// at the first start with the flag; a later start with another name on
    /// the same dir is refused, one without the flag runs as the stored node.
    /// A regional server's link to its home is the client id `r-<NAME>`.
    #[arg(long, env = "OT_NODE_ID", value_parser = crate::node_id::parse)]
    pub node_id: Option<String>,
    /// Run as a regional server of this home (`ws://host:port`, `wss://…`):
    /// every document opened here is replicated to the same document there,
    /// and local clients get their acks from this server, also while the home
    /// is unreachable. Needs a node id (`--node-id`) and `--durability fsync`.
    #[arg(long, env = "OT_UPSTREAM")]
    pub upstream: Option<String>,
    /// A file holding the token this region presents to its home (with
    /// `region` access to the documents it replicates); read again on every
    /// connection, so a renewed token needs no restart.
    #[arg(long, env = "OT_UPSTREAM_TOKEN_FILE", requires = "upstream")]
    pub upstream_token_file: Option<PathBuf>,
    /// Largest WebSocket message (bytes) the server reads; larger ones get `message_too_large`.
    #[arg(long, env = "OT_MAX_MESSAGE_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Most characters one op may insert plus delete.
    #[arg(long, env = "OT_MAX_OP_LEN", default_value_t = 100_000)]
    pub max_op_len: usize,
    /// Most components (retains, inserts, deletes) one op may have; announced
    /// to clients, which split longer edits into several ops.
    #[arg(long, env = "OT_MAX_OP_COMPONENTS", default_value_t = 10_000)]
    pub max_op_components: usize,
    /// Most characters a document may hold.
    #[arg(long, env = "OT_MAX_DOC_LEN", default_value_t = 10_000_000)]
    pub max_doc_len: usize,
    /// Most connections on one document at once.
    #[arg(long, env = "OT_MAX_CLIENTS_PER_DOC", default_value_t = 256)]
    pub max_clients_per_doc: usize,
    /// Most WebSocket connections on the server at once (lowered at start, with
    /// a warning, to leave 256 descriptors below the open-file limit).
    #[arg(long, env = "OT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Sustained messages per second read from one connection (reading pauses above it).
    #[arg(long, env = "OT_OPS_PER_SEC", default_value_t = 500)]
    pub ops_per_sec: u32,
    /// Burst of messages a connection may send before the rate applies.
    #[arg(long, env = "OT_OPS_BURST", default_value_t = 1000)]
    pub ops_burst: u32,
    /// Seconds a client has to complete the HTTP upgrade.
    #[arg(long, env = "OT_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Messages queued for one client before it counts as too slow (closed with 4008).
    #[arg(long, env = "OT_OUTBOUND_QUEUE", default_value_t = 4096)]
    pub outbound_queue: usize,
    /// Bytes of frames queued for one client before it counts as too slow
    /// (closed with 4008); one frame larger than this still goes out alone.
    #[arg(long, env = "OT_OUTBOUND_QUEUE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,
    /// Ops a document keeps in memory for resumes and late ops (older ones come from storage).
    #[arg(long, env = "OT_HISTORY_WINDOW", default_value_t = 1000)]
    pub history_window: usize,
    /// A snapshot (with the dedup table) is stored at most every this many
    /// ops, and only once the ops since the last one changed at least half
    /// the text's size (no-ops never count; see document/snapshot_policy.rs).
    #[arg(long, env = "OT_SNAPSHOT_EVERY", default_value_t = 200)]
    pub snapshot_every: u64,
    /// Committed items that make the server write them from the commit log
    /// into the SQLite tables (an ingest); a read waits for at most one ingest.
    #[arg(long, env = "OT_INGEST_EVERY", default_value_t = crate::storage::DEFAULT_INGEST_EVERY)]
    pub ingest_every: usize,
    /// Seconds a document with no connections stays in memory.
    #[arg(long, env = "OT_IDLE_UNLOAD_SECS", default_value_t = 60)]
    pub idle_unload_secs: u64,
    /// Consecutive rejected messages after which a connection is closed as abusive.
    #[arg(long, env = "OT_MAX_ERRORS", default_value_t = 100)]
    pub max_errors: u32,
    /// Turn authentication on with HS256 tokens signed by the secret in this
    /// file (`server token` mints them).
    #[arg(
        long,
        env = "OT_AUTH_SECRET_FILE",
        conflicts_with = "auth_public_key_file"
    )]
    pub auth_secret_file: Option<PathBuf>,
    /// Turn authentication on with tokens minted elsewhere, checked with this
    /// PEM public key (Ed25519: EdDSA; P-256: ES256).
    #[arg(long, env = "OT_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,
    /// Seconds of clock skew allowed when checking a token's `exp`, `nbf` and `iat`.
    #[arg(long, env = "OT_AUTH_LEEWAY", default_value_t = 60)]
    pub auth_leeway: u64,

    // Document work: old bases, the window's memory, dedup records (issue 13).
    /// Most revisions an op's base revision may be behind the document's
    /// head; a base further behind gets `revision_too_old` (the client
    /// resyncs, keeping its edits as a conflict copy). Ops based before the
    /// in-memory window are rebased off the document's task, reading the ops
    /// they missed from storage in chunks, so the cost is only the sender's
    /// wait. The default, 100,000, is more than a day of a busy document
    /// (one op a second is 86,400 a day): a terminal client offline for a
    /// day still merges.
    #[arg(long, env = "OT_MAX_REBASE_REVS", default_value_t = 100_000)]
    pub max_rebase_revs: u64,
    /// Most bytes (estimated) the in-memory history window of a document may
    /// hold; fewer than `--history-window` ops are kept when they are large.
    #[arg(long, env = "OT_HISTORY_WINDOW_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub history_window_bytes: usize,
    /// A writer's dedup record is evicted once its last op is this many
    /// revisions behind the head and it has no connection to the document
    /// (measured in revisions, never by a clock). An evicted writer's later
    /// op based before the eviction gets `client_expired` (it resyncs). The
    /// default equals `--max-rebase-revs`' default: a writer further behind
    /// could not merge its pending edits anyway.
    #[arg(long, env = "OT_CLIENT_EXPIRY", default_value_t = 100_000)]
    pub client_expiry: u64,

    // Network access (the guard, TLS, the metrics listener).
    /// The URL users reach the server at (e.g. `https://docs.example.com`):
    /// its host\[:port\] is an allowed `Host`, and its origin an allowed `Origin`.
    #[arg(long, env = "OT_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Another allowed `Host` (repeatable): `HOST` (any port) or `HOST:PORT`.
    /// Loopback names with the bound port are always allowed. The variable
    /// takes a comma-separated list.
    #[arg(long = "allowed-host", env = "OT_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_host: Vec<String>,
    /// Another `Origin` a browser may open WebSockets from (repeatable),
    /// e.g. `https://app.example.com`. Allowed hosts' origins always are. The
    /// variable takes a comma-separated list.
    #[arg(
        long = "allowed-origin",
        env = "OT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,
    /// Listen on a non-loopback address without authentication: anyone who can
    /// reach the server can read and rewrite every document.
    #[arg(long, env = "OT_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Speak https/wss with this PEM certificate chain (needs `--tls-key`).
    #[arg(long, env = "OT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "OT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also serve `GET /metrics` (and nothing else) on this address, over plain HTTP.
    #[arg(long, env = "OT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    // Connections: liveness, deadlines and limits per address and for `/api`.
    /// Seconds between the server's WebSocket pings on each connection.
    #[arg(long, env = "OT_PING_SECS", default_value_t = 20)]
    pub ping_secs: u64,
    /// Seconds after a ping within which something (a pong or any frame) must
    /// arrive, or the connection is closed as dead.
    #[arg(long, env = "OT_PONG_TIMEOUT_SECS", default_value_t = 20)]
    pub pong_timeout_secs: u64,
    /// Seconds a document has to answer a connection's upgrade request and
    /// then its join; beyond it the upgrade gets 503 `storage_error`, or the
    /// connection is closed with 1011 (both: retry later).
    #[arg(long, env = "OT_JOIN_TIMEOUT_SECS", default_value_t = 10)]
    pub join_timeout_secs: u64,
    /// Seconds a frame may take to be written; beyond it the connection is
    /// closed with 4008 (too slow).
    #[arg(long, env = "OT_WRITE_TIMEOUT_SECS", default_value_t = 15)]
    pub write_timeout_secs: u64,
    /// Most WebSocket connections from one address (the forwarded one behind a
    /// `--trusted-proxy`); beyond it the upgrade gets 429. 256 lets a
    /// classroom or an office behind one NAT open a few tabs each.
    #[arg(long, env = "OT_MAX_CONNECTIONS_PER_ADDR", default_value_t = 256)]
    pub max_connections_per_addr: usize,
    /// A reverse proxy (IP or CIDR, repeatable) whose `X-Forwarded-For` /
    /// `Forwarded` last hop names the client. The variable takes a
    /// comma-separated list.
    #[arg(
        long = "trusted-proxy",
        env = "OT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<crate::connection::TrustedProxy>,
    /// Most `/api` requests served at once; beyond it a request gets 503
    /// `too_many_requests` at once instead of waiting.
    #[arg(long, env = "OT_MAX_API_REQUESTS", default_value_t = 64)]
    pub max_api_requests: usize,

    /// Instead of serving: a tool (`server token --help`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a signed token for the server's secret (or revoke one: `server token revoke`).
    Token(Box<crate::token_command::TokenArgs>),
    /// The storage epoch of a PostgreSQL database (`server epoch bump`).
    Epoch(EpochArgs),
}

impl Config {
    /// A configuration with every default, storing in `data_dir` and listening on `addr`.
    pub fn with_defaults(addr: SocketAddr, data_dir: PathBuf) -> Config {
        use clap::Parser;
        let mut config = Config::parse_from(["server"]);
        config.addr = addr;
        config.data_dir = data_dir;
        config
    }

    /// The limits a connection's first message announces (and a region's
    /// link sizes its socket by).
    pub fn limits(&self) -> ot_protocol::Limits {
        ot_protocol::Limits {
            max_doc_len: self.max_doc_len,
            max_op_len: self.max_op_len,
            max_message_bytes: self.max_message_bytes,
            max_op_components: self.max_op_components,
        }
    }

    /// Whether requests must carry a token.
    pub fn auth_enabled(&self) -> bool {
        self.auth_secret_file.is_some() || self.auth_public_key_file.is_some()
    }

    /// The handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// How long a connection may stay silent (no frame, no pong) before it is
    /// closed as dead: a ping interval plus the pong timeout, so that at least
    /// one ping went unanswered for the whole pong timeout.
    pub fn liveness_limit(&self) -> Duration {
        Duration::from_secs(self.ping_secs.max(1).saturating_add(self.pong_timeout_secs))
    }

    /// The interval of the server's pings.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_secs.max(1))
    }

    /// The join deadline as a duration.
    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.join_timeout_secs)
    }

    /// The write deadline of one frame (or one batch of frames).
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }

    /// The idle-unload delay as a duration.
    pub fn idle_unload(&self) -> Duration {
        Duration::from_secs(self.idle_unload_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Every example at the end of `--help` is a command line the server accepts.
    #[test]
    fn the_help_examples_parse() {
        let commands: Vec<&str> = EXAMPLES
            .lines()
            .skip(1)
            .map(|line| line.split('#').next().unwrap_or_default().trim())
            .collect();
        assert!((2..=3).contains(&commands.len()), "{commands:?}");
        for command in commands {
            let words: Vec<&str> = command.split_whitespace().collect();
            assert_eq!(words.first(), Some(&"server"), "{command}");
            if let Err(e) = Config::try_parse_from(&words) {
                panic!("`{command}` does not parse: {e}");
            }
        }
    }
}

/// `server epoch …`.
#[derive(Debug, Clone, clap::Args)]
pub struct EpochArgs {
    /// What to do with the epoch.
    #[command(subcommand)]
    pub command: EpochCommand,
}

/// What `server epoch` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EpochCommand {
    /// Raise the storage epoch of a PostgreSQL database, after a failover to
    /// a standby that may have lost acknowledged commits: every client then
    /// resyncs from a snapshot instead of resuming (keeping its unsent
    /// edits). Stop every node first; start them again afterwards.
    Bump {
        /// The database (as `--database-url`).
        #[arg(long, env = "OT_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// As the server's `--database-ca-file`.
        #[arg(long, env = "OT_DATABASE_CA_FILE")]
        database_ca_file: Option<PathBuf>,
    },
}
