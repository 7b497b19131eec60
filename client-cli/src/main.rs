//! The terminal client `ot-client`.
//!
//! Not built yet: the editor and scripting commands are the subject of the
//! client-cli issue. This binary says so plainly and exits with an error.

fn main() -> std::process::ExitCode {
    eprintln!(
        "ot-client: not implemented yet; only the ot-core library exists so far (see README.md)"
    );
    std::process::ExitCode::FAILURE
}
