//! The network guard: which `Host` and `Origin` a request may carry, and
//! whether the server may listen where it was told to.
//!
//! - **Host** (every request, the WebSocket upgrade included): a browser tricked
//!   by DNS rebinding sends the attacker's name as `Host`; refusing names the
//!   server was not told about (400 `invalid_host`) stops it from reading or
//!   writing documents through the victim's browser.
//! - **Origin** (the WebSocket upgrade only): browsers send it, programs
//!   usually do not. A WebSocket is not covered by the same-origin policy, so a
//!   page on another site could otherwise edit documents (403 `forbidden`).
//! - **Binding**: a non-loopback address without authentication lets anyone on
//!   the network read and rewrite every document; it needs `--insecure-no-auth`.
//!
//! The allowed hosts (PROTOCOL.md, "Connecting"): `127.0.0.1`, `localhost` and
//! `[::1]` with the bound port; for a non-loopback bind also the bound address
//! itself, or, on an unspecified address (`0.0.0.0`, `::`), any IP literal with
//! the bound port (an IP literal cannot be rebound to another server); the
//! host\[:port\] of `--public-url`; each `--allowed-host HOST[:PORT]` (without
//! a port: that host on any port). A `Host` without a port means the default
//! port of the listener's scheme (80, or 443 with TLS).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ot_protocol::{ApiErrorCode, ErrorCode};

use crate::api_error::ApiError;
use crate::config::Config;

/// A flag value the guard cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// `--allowed-host` is not `HOST` or `HOST:PORT`.
    #[error("--allowed-host {0:?} is not HOST or HOST:PORT")]
    AllowedHost(String),
    /// `--public-url` is not `http(s)://HOST[:PORT][/…]`.
    #[error("--public-url {0:?} is not http(s)://HOST[:PORT]")]
    PublicUrl(String),
    /// `--allowed-origin` is not `http(s)://HOST[:PORT]`.
    #[error("--allowed-origin {0:?} is not http(s)://HOST[:PORT]")]
    AllowedOrigin(String),
    /// A non-loopback address without authentication or `--insecure-no-auth`.
    #[error(
        "refusing to listen on {0} without authentication: anyone on the network could read \
         and rewrite every document. Turn authentication on (--auth-secret-file or \
         --auth-public-key-file), listen on loopback (127.0.0.1), or pass --insecure-no-auth"
    )]
    PublicWithoutAuth(SocketAddr),
}

/// Refuse a non-loopback bind without authentication unless `--insecure-no-auth`
/// says so; with it, warn loudly. `addr` is the address actually bound.
pub(crate) fn check_binding(config: &Config, addr: SocketAddr) -> Result<(), GuardError> {
    if addr.ip().is_loopback() || config.auth_enabled() {
        return Ok(());
    }
    if !config.insecure_no_auth {
        return Err(GuardError::PublicWithoutAuth(addr));
    }
    tracing::warn!("!!! --insecure-no-auth: listening on {addr} WITHOUT AUTHENTICATION !!!");
    tracing::warn!("!!! anyone who can reach {addr} can read and rewrite every document !!!");
    tracing::warn!(
        "!!! and every edit is sent in the clear unless --tls-cert/--tls-key is set !!!"
    );
    tracing::warn!("!!! use it only on a network you trust completely !!!");
    Ok(())
}

/// One allowed host: a lowercase name or IP literal (IPv6 in brackets), and
/// its port, `None` for any port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRule {
    host: String,
    port: Option<u16>,
}

/// A `host[:port]` as it appears in `Host`, in a URL or in `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    /// `name`, `name:port`, `1.2.3.4[:port]`, `[v6][:port]`; lowercased.
    /// No user info, path or empty host.
    fn parse(text: &str) -> Option<Authority> {
        let text = text.to_ascii_lowercase();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            inside.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (format!("[{inside}]"), port)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (text.clone(), None),
            }
        };
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || (!host.starts_with('[') && !host.chars().all(valid_char)) {
            return None;
        }
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok()?),
        };
        Some(Authority { host, port })
    }

    /// The host as an IP address, if it is one.
    fn ip(&self) -> Option<IpAddr> {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.parse().ok()
    }
}

/// `scheme://authority[/…]` → (scheme, authority), for `--public-url` and `Origin`.
fn split_url(text: &str, allow_path: bool) -> Option<(&'static str, Authority)> {
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        ("http", rest)
    } else {
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !allow_path && !path.is_empty() && path != "/" {
        return None;
    }
    Some((scheme, Authority::parse(authority)?))
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// What the guard admits on one listener.
#[derive(Debug)]
pub(crate) struct Guard {
    /// The rules for `Host`.
    hosts: Vec<HostRule>,
    /// Any IP literal with this port (an unspecified, non-loopback bind).
    any_ip_on_port: Option<u16>,
    /// `--allowed-origin`s, as (scheme, authority) with the port made explicit.
    origins: Vec<(&'static str, Authority)>,
    /// The port a `Host` without one means (80, or 443 with TLS).
    default_port: u16,
}

impl Guard {
    /// The guard for a listener bound to `bound`, speaking TLS or not.
    pub(crate) fn new(config: &Config, bound: SocketAddr, tls: bool) -> Result<Guard, GuardError> {
        let port = bound.port();
        let mut hosts: Vec<HostRule> = ["127.0.0.1", "localhost", "[::1]"]
            .into_iter()
            .map(|host| HostRule {
                host: host.to_owned(),
                port: Some(port),
            })
            .collect();
        let mut any_ip_on_port = None;
        if !bound.ip().is_loopback() {
            if bound.ip().is_unspecified() {
                any_ip_on_port = Some(port);
            } else {
                let host = match bound.ip() {
                    IpAddr::V4(ip) => ip.to_string(),
                    IpAddr::V6(ip) => format!("[{ip}]"),
                };
                hosts.push(HostRule {
                    host,
                    port: Some(port),
                });
            }
        }
        if let Some(url) = &config.public_url {
            let (_, authority) =
                split_url(url, true).ok_or_else(|| GuardError::PublicUrl(url.clone()))?;
            // No explicit port: the operator named the host, admit it on any port
            // (behind a proxy the Host may or may not carry the default port).
            hosts.push(HostRule {
                host: authority.host,
                port: authority.port,
            });
        }
        for text in &config.allowed_host {
            let authority =
                Authority::parse(text).ok_or_else(|| GuardError::AllowedHost(text.clone()))?;
            hosts.push(HostRule {
                host: authority.host,
                port: authority.port,
            });
        }
        let mut origins = Vec::new();
        for text in &config.allowed_origin {
            let (scheme, mut authority) =
                split_url(text, false).ok_or_else(|| GuardError::AllowedOrigin(text.clone()))?;
            authority.port.get_or_insert(default_port(scheme));
            origins.push((scheme, authority));
        }
        Ok(Guard {
            hosts,
            any_ip_on_port,
            origins,
            default_port: if tls { 443 } else { 80 },
        })
    }

    /// Whether `authority` names this server, a missing port meaning `default_port`.
    fn host_allowed(&self, authority: &Authority, default_port: u16) -> bool {
        let port = authority.port.unwrap_or(default_port);
        if self.any_ip_on_port == Some(port) && authority.ip().is_some() {
            return true;
        }
        self.hosts
            .iter()
            .any(|rule| rule.host == authority.host && rule.port.is_none_or(|p| p == port))
    }

    /// Whether a `Host` header value is allowed.
    fn check_host(&self, value: &str) -> bool {
        Authority::parse(value).is_some_and(|a| self.host_allowed(&a, self.default_port))
    }

    /// Whether an `Origin` header value is allowed: an allowed host over
    /// http or https, or one of `--allowed-origin`.
    fn check_origin(&self, value: &str) -> bool {
        let Some((scheme, mut authority)) = split_url(value, false) else {
            return false; // "null", garbage
        };
        if self.host_allowed(&authority, default_port(scheme)) {
            return true;
        }
        authority.port.get_or_insert(default_port(scheme));
        self.origins
            .iter()
            .any(|(s, a)| *s == scheme && *a == authority)
    }
}

/// The middleware: 400 `invalid_host` for a `Host` (or absolute request
/// target) that does not name this server; 403 `forbidden` for a WebSocket
/// upgrade from a foreign `Origin`.
pub(crate) async fn check(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let host_header = headers.get(header::HOST).map(|v| v.to_str().unwrap_or(""));
    // An absolute-form target (`GET http://name/ HTTP/1.1`) overrides `Host`.
    let target = request.uri().authority().map(|a| a.as_str());
    let hosts: Vec<&str> = target.into_iter().chain(host_header).collect();
    if hosts.is_empty() || !hosts.iter().all(|h| guard.check_host(h)) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::InvalidHost,
            "the Host header does not name this server (see --allowed-host)",
        )
        .into_response();
    }
    let path = request.uri().path();
    let websocket =
        path == "/ws" || path.starts_with("/ws/") || headers.contains_key(header::UPGRADE);
    if websocket {
        if let Some(origin) = headers.get(header::ORIGIN) {
            if !guard.check_origin(origin.to_str().unwrap_or("")) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden.into(),
                    "connections from this origin are not allowed (see --allowed-origin)",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        Config::parse_from(std::iter::once("server").chain(args.iter().copied()))
    }

    fn guard(args: &[&str], bound: &str) -> Guard {
        Guard::new(&config(args), bound.parse().unwrap(), false).unwrap()
    }

    #[test]
    fn loopback_names_with_the_bound_port() {
        let g = guard(&[], "127.0.0.1:4000");
        for ok in [
            "127.0.0.1:4000",
            "localhost:4000",
            "LOCALHOST:4000",
            "[::1]:4000",
        ] {
            assert!(g.check_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:4000",
            "localhost:4001",
            "localhost",
            "10.0.0.1:4000",
            "",
            "localhost:4000/x",
            "user@localhost:4000",
            "[::1",
        ] {
            assert!(!g.check_host(bad), "{bad}");
        }
    }

    #[test]
    fn flags_add_hosts() {
        let g = guard(
            &[
                "--public-url",
                "https://docs.example.com/",
                "--allowed-host",
                "a.example:9000",
                "--allowed-host",
                "b.example",
            ],
            "127.0.0.1:4000",
        );
        assert!(g.check_host("docs.example.com"));
        assert!(g.check_host("docs.example.com:443"));
        assert!(g.check_host("a.example:9000"));
        assert!(!g.check_host("a.example:9001"));
        assert!(g.check_host("b.example:1234"));
        assert!(g.check_host("b.example"));
        assert!(!g.check_host("c.example"));
    }

    #[test]
    fn public_binds() {
        let g = guard(&["--insecure-no-auth"], "0.0.0.0:4000");
        assert!(g.check_host("192.168.1.7:4000"));
        assert!(g.check_host("[fe80::1]:4000"));
        assert!(!g.check_host("192.168.1.7:4001"));
        assert!(!g.check_host("rebind.evil.example:4000"));
        let g = guard(&["--insecure-no-auth"], "10.1.2.3:4000");
        assert!(g.check_host("10.1.2.3:4000"));
        assert!(!g.check_host("10.1.2.4:4000"));
    }

    #[test]
    fn origins() {
        let g = guard(
            &[
                "--allowed-origin",
                "https://app.example",
                "--allowed-host",
                "docs.example",
            ],
            "127.0.0.1:4000",
        );
        assert!(g.check_origin("http://127.0.0.1:4000"));
        assert!(g.check_origin("https://localhost:4000"));
        assert!(g.check_origin("https://docs.example"));
        assert!(g.check_origin("https://app.example"));
        assert!(g.check_origin("https://app.example:443"));
        assert!(!g.check_origin("http://app.example"));
        assert!(!g.check_origin("http://evil.example"));
        assert!(!g.check_origin("http://127.0.0.1:4001"));
        assert!(!g.check_origin("null"));
    }

    #[test]
    fn bad_flags_are_refused() {
        let c = config(&["--allowed-host", "a b"]);
        assert!(Guard::new(&c, "127.0.0.1:1".parse().unwrap(), false).is_err());
        let c = config(&["--public-url", "ftp://x"]);
        assert!(Guard::new(&c, "127.0.0.1:1".parse().unwrap(), false).is_err());
        let c = config(&["--allowed-origin", "https://x/path"]);
        assert!(Guard::new(&c, "127.0.0.1:1".parse().unwrap(), false).is_err());
    }

    #[test]
    fn binding_rule() {
        let addr: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(check_binding(&config(&[]), addr).is_err());
        assert!(check_binding(&config(&["--insecure-no-auth"]), addr).is_ok());
        assert!(check_binding(&config(&["--auth-secret-file", "/x"]), addr).is_ok());
        assert!(check_binding(&config(&[]), "127.0.0.1:1".parse().unwrap()).is_ok());
        assert!(check_binding(&config(&[]), "[::1]:1".parse().unwrap()).is_ok());
    }
}
