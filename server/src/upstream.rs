//! `--upstream`: this server is a region of a home server. Everything the
//! link to the home needs to identify itself, settled once at start: the
//! home's address, the token, the link's client id `r-<node-id>`, and the
//! link's writer key, kept in the data dir (in the database, on one that
//! several processes share) so that the home refuses a second server that
//! takes the same node id (PROTOCOL.md, "The writer key").

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use ot_driver::{ConnectOptions, ServerUrl, TokenSource};
use ot_protocol::{ClientId, ClientKey, LINK_ID_PREFIX};

use crate::config::Config;
use crate::storage::{Durability, Storage};

/// The file, in the data dir, that holds the link's writer key.
const KEY_FILE: &str = "link-key";

/// How this region reaches and identifies itself to its home.
pub(crate) struct Upstream {
    /// The home.
    pub(crate) server: ServerUrl,
    /// The token (and CA settings) of every connection to it.
    pub(crate) options: ConnectOptions,
    /// The link's client id at the home: `r-<node-id>`.
    pub(crate) link_id: ClientId,
    /// The link's writer key.
    pub(crate) key: ClientKey,
}

/// The upstream of a server started with `--upstream` (after the node id is
/// settled), or `None`.
pub(crate) fn from_config(
    config: &Config,
    storage: &dyn Storage,
) -> anyhow::Result<Option<Upstream>> {
    let Some(url) = &config.upstream else {
        return Ok(None);
    };
    let server = ServerUrl::parse(url).with_context(|| format!("--upstream {url}"))?;
    let Some(node_id) = &config.node_id else {
        anyhow::bail!("--upstream needs a node id: start the region with --node-id NAME (a name no other region of the home uses)");
    };
    if config.durability != Durability::Fsync {
        anyhow::bail!("--upstream needs --durability fsync: a region that lost acknowledged edits in a power loss could not tell its home which of them it had already sent");
    }
    let link_id = ClientId::parse(&format!("{LINK_ID_PREFIX}{node_id}"))
        .map_err(|e| anyhow::anyhow!("the node id does not make a link id: {e}"))?;
    let key = match storage.is_shared() {
        true => settle_key_in_storage(storage)?,
        false => settle_key(&config.data_dir)?,
    };
    if !storage
        .claim_alone()
        .context("claiming the database for this regional server")?
    {
        anyhow::bail!(
            "another regional server process already runs on this database (as node `{node_id}`): run one process per regional database"
        );
    }
    let options = ConnectOptions {
        token: config.upstream_token_file.clone().map(TokenSource::File),
        ..ConnectOptions::default()
    };
    Ok(Some(Upstream {
        server,
        options,
        link_id,
        key,
    }))
}

/// The link's writer key from a database several server processes share
/// (they are one region: one link identity), made at the first start.
fn settle_key_in_storage(storage: &dyn Storage) -> anyhow::Result<ClientKey> {
    let proposed = ClientKey::random();
    let stored = storage
        .node_setting("link_key", Some(proposed.as_str()))
        .context("reading the link's key in the database")?
        .context("the database keeps no link key")?;
    ClientKey::parse(&stored)
        .map_err(|_| anyhow::anyhow!("the database does not hold a valid link key"))
}

/// The link's writer key from `<dir>/link-key`, made (and synced) at the
/// first start.
fn settle_key(dir: &Path) -> anyhow::Result<ClientKey> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => ClientKey::parse(text.trim())
            .map_err(|_| anyhow::anyhow!("{} does not hold a valid key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ClientKey::random();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(key.as_str().as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            // The directory entry too: a key lost in a crash would lock the
            // region out of its own link.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", dir.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
