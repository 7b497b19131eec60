//! A server address, as both WebSocket and HTTP base URLs.

/// Why a server address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `ws(s)://HOST:PORT`, `http(s)://HOST:PORT` or `HOST:PORT`.
    #[error("the server must be given as ws://HOST:PORT or wss://HOST:PORT (got {0:?})")]
    Malformed(String),
}

/// A server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `host:port`.
    pub authority: String,
    /// Whether the server speaks TLS (`wss://`, `https://`).
    pub tls: bool,
}

impl ServerUrl {
    /// Parse `ws://host:port`, `http://host:port`, `wss://host:port`,
    /// `https://host:port` or `host:port` (plain).
    pub fn parse(text: &str) -> Result<ServerUrl, UrlError> {
        let (tls, rest) = if let Some(rest) = text
            .strip_prefix("wss://")
            .or_else(|| text.strip_prefix("https://"))
        {
            (true, rest)
        } else {
            let rest = text
                .strip_prefix("ws://")
                .or_else(|| text.strip_prefix("http://"))
                .unwrap_or(text);
            (false, rest)
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains("://") {
            return Err(UrlError::Malformed(text.to_owned()));
        }
        Ok(ServerUrl {
            authority: authority.to_owned(),
            tls,
        })
    }

    /// `ws://host:port` or `wss://host:port`
    pub fn ws(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.authority)
    }

    /// `http://host:port` or `https://host:port`
    pub fn http(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_plain_forms() {
        for text in [
            "ws://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "127.0.0.1:8080",
        ] {
            let url = ServerUrl::parse(text).unwrap();
            assert_eq!(url.ws(), "ws://127.0.0.1:8080");
            assert_eq!(url.http(), "http://127.0.0.1:8080");
        }
        assert!(ServerUrl::parse("ws://x:1/path").is_err());
        assert!(ServerUrl::parse("").is_err());
        assert!(ServerUrl::parse("ftp://x:1").is_err());
    }

    #[test]
    fn parses_the_tls_forms() {
        for text in ["wss://localhost:8443", "https://localhost:8443/"] {
            let url = ServerUrl::parse(text).unwrap();
            assert!(url.tls);
            assert_eq!(url.ws(), "wss://localhost:8443");
            assert_eq!(url.http(), "https://localhost:8443");
        }
        assert!(ServerUrl::parse("wss://").is_err());
        assert!(ServerUrl::parse("https://x:1/path").is_err());
    }
}
