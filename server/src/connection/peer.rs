//! Who a connection comes from, and how many connections each address holds:
//! the TCP peer's address, or the last hop of `X-Forwarded-For` / `Forwarded`
//! when the peer is a `--trusted-proxy` (anyone else could write any address
//! there). Counted per address for `--max-connections-per-addr`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;

/// The TCP peer of a request, put into its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// A reverse proxy the server believes about the client's address: one IP or
/// a CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(ipnet::IpNet);

/// A `--trusted-proxy` that is neither an IP nor a CIDR range.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an IP address or a CIDR range (e.g. 10.0.0.1 or 10.0.0.0/8)")]
pub struct TrustedProxyError(String);

impl FromStr for TrustedProxy {
    type Err = TrustedProxyError;

    fn from_str(s: &str) -> Result<TrustedProxy, TrustedProxyError> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(TrustedProxy(net));
        }
        s.parse::<IpAddr>()
            .map(|ip| TrustedProxy(ipnet::IpNet::from(ip)))
            .map_err(|_| TrustedProxyError(s.to_owned()))
    }
}

impl TrustedProxy {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer's, or the forwarded last hop when the peer
/// is trusted and names one (`Forwarded` first, then `X-Forwarded-For`).
pub(crate) fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[TrustedProxy]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|t| t.contains(peer)) {
        return peer;
    }
    forwarded_last_hop(headers)
        .or_else(|| x_forwarded_for_last_hop(headers))
        .map_or(peer, canonical)
}

/// The last `for=` of the last `Forwarded` header (RFC 7239): the hop the
/// trusted proxy itself added.
fn forwarded_last_hop(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("forwarded").iter().next_back()?;
    let element = value.to_str().ok()?.rsplit(',').next()?;
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_node(value.trim().trim_matches('"'))
    })
}

/// The last address of the last `X-Forwarded-For` header.
fn x_forwarded_for_last_hop(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("x-forwarded-for").iter().next_back()?;
    parse_node(value.to_str().ok()?.rsplit(',').next()?.trim())
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80` or `::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// Open connections per client address.
#[derive(Debug, Default)]
pub(crate) struct AddrCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct AddrSlot {
    counts: Arc<AddrCounts>,
    addr: IpAddr,
}

impl AddrCounts {
    /// Count a connection from `addr`, unless it already has `max`.
    pub(crate) fn take(self: &Arc<Self>, addr: IpAddr, max: usize) -> Option<AddrSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(addr).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddrSlot {
            counts: self.clone(),
            addr,
        })
    }

    #[cfg(test)]
    fn count(&self, addr: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&addr).copied().unwrap_or(0)
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.addr) {
            *count = count.saturating_sub(1);
            // Forget idle addresses so the map holds only live ones.
            if *count == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_count_only_behind_a_trusted_proxy() {
        let trusted: Vec<TrustedProxy> =
            vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4")]);
        assert_eq!(client_addr(ip("9.9.9.9"), &xff, &trusted), ip("9.9.9.9"));
        assert_eq!(client_addr(ip("10.1.2.3"), &xff, &trusted), ip("1.2.3.4"));
        assert_eq!(client_addr(ip("::1"), &xff, &trusted), ip("1.2.3.4"));
        let fwd = headers(&[
            ("forwarded", "for=6.6.6.6"),
            (
                "forwarded",
                "for=\"[2001:db8::1]:443\";proto=https, for=5.6.7.8:99",
            ),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(client_addr(ip("10.0.0.1"), &fwd, &trusted), ip("5.6.7.8"));
        let fwd6 = headers(&[("forwarded", "proto=https;for=\"[2001:db8::1]:443\"")]);
        assert_eq!(
            client_addr(ip("10.0.0.1"), &fwd6, &trusted),
            ip("2001:db8::1")
        );
        // Trusted but nothing usable forwarded: the proxy itself.
        let junk = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(client_addr(ip("10.0.0.1"), &junk, &trusted), ip("10.0.0.1"));
        assert!("10.0.0.300".parse::<TrustedProxy>().is_err());
        // A v4-mapped peer is its IPv4 address.
        assert_eq!(
            client_addr(ip("::ffff:10.0.0.1"), &xff, &trusted),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn counts_stop_at_the_limit_and_free_on_drop() {
        let counts = Arc::new(AddrCounts::default());
        let a = ip("1.2.3.4");
        let first = counts.take(a, 2).unwrap();
        let second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none());
        assert!(counts.take(ip("1.2.3.5"), 2).is_some(), "another address");
        drop(first);
        assert_eq!(counts.count(a), 1);
        let third = counts.take(a, 2);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(counts.count(a), 0);
    }
}
