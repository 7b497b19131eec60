//! Small programs that show how to use the crates; run them with
//! `cargo run -p examples --example NAME`.
