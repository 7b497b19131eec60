//! The collaborative editing server.
//!
//! Not built yet: the WebSocket service, storage and HTTP API are the subject
//! of the server issue. This binary says so plainly and exits with an error
//! rather than pretending to serve anything.

fn main() -> std::process::ExitCode {
    eprintln!(
        "server: not implemented yet; only the ot-core library exists so far (see README.md)"
    );
    std::process::ExitCode::FAILURE
}
