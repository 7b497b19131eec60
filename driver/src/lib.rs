//! The one client driver every Rust client uses (the terminal client, the
//! end-to-end tests, and later a regional server's upstream link).
//!
//! - [`SessionCore`] (sans-I/O): the connect path with `rev`/`epoch`, the
//!   first message (resume or snapshot), op/ack/error/close → typed
//!   [`Event`]s, and PROTOCOL.md's error and close rules. It never releases an
//!   op until the caller has confirmed that the state which produced it is
//!   durable.
//! - [`Driver`]: a thin tokio shell (connect, timeouts, frame limits from the
//!   server's announced limits, backoff with full jitter).
//! - [`http::get`]: one GET against the server's HTTP API, with timeouts.
//! - [`ConnectOptions`]: how every connection of a client connects (TLS roots).

pub mod core;
pub mod http;
pub mod options;
pub mod shell;
pub mod tls;
pub mod url;

pub use crate::core::{Event, RemoteCursor, SessionCore, SessionError, SessionState};
pub use crate::http::HttpError;
pub use crate::options::{ConnectOptions, TokenFileError, TokenSource};
pub use crate::shell::{
    next_incoming, open_socket, open_socket_with, send_text, socket_config, Backoff, BoxError,
    Dialed, Driver, DriverError, Incoming, Saver, Socket, WaitError, CONNECT_TIMEOUT,
};
pub use crate::tls::TlsError;
pub use crate::url::{ServerUrl, UrlError};
pub use ot_protocol::{CloseAction, Code, ErrorCode};
