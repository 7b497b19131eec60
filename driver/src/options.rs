//! How to connect, besides where: the options every connection (WebSocket
//! and HTTP) of one client shares.

use std::path::PathBuf;

/// Connection options shared by every connection of a client. New options
/// join this struct (so callers that build it with `..Default::default()`
/// keep compiling).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// A PEM file of extra certificate authorities trusted for `wss://` and
    /// `https://`, besides the system's (e.g. a self-signed server's certificate).
    pub ca_file: Option<PathBuf>,
    /// The access token sent as `Authorization: Bearer` (PROTOCOL.md, "Access").
    pub token: Option<TokenSource>,
}

/// Where the access token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token, read again on every connection, so that a
    /// renewed token (written by whatever renews it) is used without a restart.
    File(PathBuf),
    /// The token itself (e.g. from an environment variable).
    Value(String),
}

/// `Debug` never shows a token.
impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
            TokenSource::Value(_) => f.write_str("Value(…)"),
        }
    }
}

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the token file {path}: {source}")]
pub struct TokenFileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

impl ConnectOptions {
    /// The token to send now, if any (a token file is read now).
    pub fn bearer(&self) -> Result<Option<String>, TokenFileError> {
        match &self.token {
            None => Ok(None),
            Some(TokenSource::Value(token)) => Ok(Some(token.trim().to_owned())),
            Some(TokenSource::File(path)) => std::fs::read_to_string(path)
                .map(|text| Some(text.trim().to_owned()))
                .map_err(|source| TokenFileError {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_on_every_call_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let options = ConnectOptions {
            token: Some(TokenSource::File(path.clone())),
            ..ConnectOptions::default()
        };
        assert!(options.bearer().is_err(), "a missing file is an error");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(options.bearer().unwrap().as_deref(), Some("first"));
        std::fs::write(&path, "renewed").unwrap();
        assert_eq!(options.bearer().unwrap().as_deref(), Some("renewed"));
        let secret = TokenSource::Value("s3cret".into());
        assert!(!format!("{secret:?}").contains("s3cret"));
        assert_eq!(ConnectOptions::default().bearer().unwrap(), None);
    }
}
