//! What the server says when it starts, in plain words for the person at the
//! terminal: where it listens, where to point a browser, where the data
//! lives and how durable an acknowledgement is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::config::Config;
use crate::storage::Durability;

/// What the start-up lines tell.
pub(crate) struct Start<'a> {
    /// The configuration in force.
    pub(crate) config: &'a Config,
    /// The address the main listener is bound to.
    pub(crate) bound: SocketAddr,
    /// Whether it speaks TLS.
    pub(crate) tls: bool,
    /// The address of the `/metrics` listener, if there is one.
    pub(crate) metrics: Option<SocketAddr>,
    /// The storage's epoch.
    pub(crate) epoch: u64,
}

/// The start-up lines, in order.
pub(crate) fn lines(start: &Start<'_>) -> Vec<String> {
    let Start {
        config,
        bound,
        tls,
        metrics,
        epoch,
    } = *start;
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let base = base_url(config.public_url.as_deref(), http, bound);
    let editor = format!("{base}/");
    // The WebSocket address has the editor's host and the matching scheme.
    let ws_base = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => format!("{ws}://{base}"),
    };
    let mut lines = vec![
        format!(
            "listening on {bound} ({http} and WebSocket); programs connect to {ws_base}/ws/DOC"
        ),
        if config.auth_enabled() {
            format!(
                "open {editor} in a browser with a link from `server token --url {base} --doc DOC …` (authentication is on)"
            )
        } else {
            format!("open {editor} in a browser")
        },
        match &config.node_id {
            Some(node) => format!(
                "data in {} (storage epoch {epoch}, node {node})",
                shown_path(&config.data_dir)
            ),
            None => format!(
                "data in {} (storage epoch {epoch})",
                shown_path(&config.data_dir)
            ),
        },
        durability_line(config.durability),
    ];
    if let Some(addr) = metrics {
        lines.push(format!("metrics also on http://{addr}/metrics"));
    }
    lines
}

/// Log the start-up lines.
pub(crate) fn log(start: &Start<'_>) {
    for line in lines(start) {
        tracing::info!(target: "server", "{line}");
    }
}

/// Where users reach the server, without a trailing `/`: `--public-url` if
/// given, else the bound address (a wildcard address shown as this
/// machine's loopback one).
fn base_url(public_url: Option<&str>, scheme: &str, bound: SocketAddr) -> String {
    if let Some(url) = public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
}

/// The data directory as an absolute path when it can be made one.
fn shown_path(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// What an acknowledgement means under `durability`.
fn durability_line(durability: Durability) -> String {
    let meaning = match durability {
        Durability::Fsync => "an acknowledged edit survives a power loss",
        Durability::Relaxed => {
            "an acknowledged edit survives a crash of the server but not a power loss"
        }
    };
    format!("durability {}: {meaning}", durability.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(data_dir: &str) -> Config {
        Config::with_defaults(SocketAddr::from(([127, 0, 0, 1], 8080)), data_dir.into())
    }

    #[test]
    fn a_default_start_says_where_to_go() {
        let config = config("/srv/ot");
        let lines = lines(&Start {
            config: &config,
            bound: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: false,
            metrics: None,
            epoch: 3,
        });
        assert_eq!(
            lines,
            [
                "listening on 127.0.0.1:8080 (http and WebSocket); programs connect to ws://127.0.0.1:8080/ws/DOC",
                "open http://127.0.0.1:8080/ in a browser",
                "data in /srv/ot (storage epoch 3)",
                "durability fsync: an acknowledged edit survives a power loss",
            ]
        );
    }

    #[test]
    fn the_node_a_data_dir_belongs_to_is_named() {
        let mut config = config("/srv/ot");
        config.node_id = Some("eu-1".to_owned());
        let lines = lines(&Start {
            config: &config,
            bound: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: false,
            metrics: None,
            epoch: 3,
        });
        assert_eq!(lines[2], "data in /srv/ot (storage epoch 3, node eu-1)");
    }

    #[test]
    fn a_wildcard_address_points_the_browser_at_loopback_and_a_public_url_wins() {
        fn start(config: &Config) -> Start<'_> {
            Start {
                config,
                bound: SocketAddr::from(([0, 0, 0, 0], 8443)),
                tls: true,
                metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
                epoch: 1,
            }
        }
        let mut cfg = config("data");
        let said = lines(&start(&cfg));
        assert!(said[1].starts_with("open https://127.0.0.1:8443/ "));
        assert_eq!(said[4], "metrics also on http://127.0.0.1:9100/metrics");
        cfg.public_url = Some("https://docs.example.com/".to_owned());
        cfg.auth_secret_file = Some("secret".into());
        cfg.durability = Durability::Relaxed;
        let said = lines(&start(&cfg));
        assert!(said[0].ends_with("programs connect to wss://docs.example.com/ws/DOC"));
        assert!(said[1].starts_with("open https://docs.example.com/ in a browser with a link from `server token --url https://docs.example.com"));
        assert!(said[2].starts_with("data in /") && said[2].ends_with("/data (storage epoch 1)"));
        assert!(said[3].starts_with("durability relaxed: "));
        assert!(said.iter().all(|l| !l.contains("Some(")));
    }
}
