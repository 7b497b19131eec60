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
}
