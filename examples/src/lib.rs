//! Small programs that show how to use the crates; run them with
//! `cargo run -p examples --example NAME`: `bot`, `plugin`, `mini_server`,
//! `replay_trace`, `conflicts` (each file's top comment says what it shows),
//! and the load generator `load`. `tests/tests/examples.rs` runs each one
//! against a real server.
