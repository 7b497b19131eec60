//! A server address, as both WebSocket and HTTP base URLs.

/// Why a server address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// `wss://` or `https://`: not supported yet.
    #[error("TLS is not supported yet: use ws:// or http://")]
    Tls,
    /// Not `ws://HOST:PORT`, `http://HOST:PORT` or `HOST:PORT`.
    #[error("the server must be given as ws://HOST:PORT (got {0:?})")]
    Malformed(String),
}

/// A server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `host:port`.
    pub authority: String,
}

impl ServerUrl {
    /// Parse `ws://host:port`, `http://host:port` or `host:port`.
    pub fn parse(text: &str) -> Result<ServerUrl, UrlError> {
        if text.starts_with("wss://") || text.starts_with("https://") {
            return Err(UrlError::Tls);
        }
        let rest = text
            .strip_prefix("ws://")
            .or_else(|| text.strip_prefix("http://"))
            .unwrap_or(text);
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains("://") {
            return Err(UrlError::Malformed(text.to_owned()));
        }
        Ok(ServerUrl {
            authority: authority.to_owned(),
        })
    }

    /// `ws://host:port`
    pub fn ws(&self) -> String {
        format!("ws://{}", self.authority)
    }

    /// `http://host:port`
    pub fn http(&self) -> String {
        format!("http://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        for text in [
            "ws://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "127.0.0.1:8080",
        ] {
            let url = ServerUrl::parse(text).unwrap();
            assert_eq!(url.ws(), "ws://127.0.0.1:8080");
            assert_eq!(url.http(), "http://127.0.0.1:8080");
        }
        assert_eq!(ServerUrl::parse("wss://x:1"), Err(UrlError::Tls));
        assert!(ServerUrl::parse("ws://x:1/path").is_err());
        assert!(ServerUrl::parse("").is_err());
        assert!(ServerUrl::parse("ftp://x:1").is_err());
    }
}
