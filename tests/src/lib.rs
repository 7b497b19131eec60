//! End-to-end tests against a real server and real clients.
//!
//! Empty until the server exists: the tests that start a server on a free
//! loopback port and drive it with WebSocket clients arrive with the server
//! issue. The protocol itself is already tested without I/O by ot-core's
//! deterministic simulation (`ot-core/tests/simulation.rs`).
