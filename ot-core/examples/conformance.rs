//! Conformance runner: reads JSON-lines test cases on stdin and writes one
//! result line per input line on stdout (see `ot-core/README.md`).
//!
//! ```text
//! cargo run -p ot-core --example conformance < cases.jsonl
//! ```
//!
//! A line that is not valid UTF-8 gives `{"error":"invalid_case"}`. Output is
//! flushed after every line, so the runner can be driven interactively.

use std::io::{self, BufRead, Write};

use ot_core::conformance::run_line;

fn main() -> io::Result<()> {
    match run() {
        // The reader went away (`… | head`): nothing left to do.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn run() -> io::Result<()> {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let result = match std::str::from_utf8(&buf) {
            Ok(line) => run_line(line),
            // Not UTF-8, so not JSON: answer as for any other non-JSON line.
            Err(_) => run_line("\u{0}"),
        };
        writeln!(output, "{result}")?;
        output.flush()?;
    }
}
