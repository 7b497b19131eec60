//! `ot-client`: a terminal collaborative editor that edits locally first and
//! keeps working offline, plus scripting commands.
//!
//! - [`store`]: saved state per writer, atomic writes, locking, conflict copies.
//! - [`session`]: one document's session: ot-core's client state machine over a
//!   WebSocket, reconnecting with backoff and resending exactly once.
//! - [`commands`]: the scripting commands (`cat`, `insert`, `watch`, `sync`, …).
//! - [`editor`]: the full-screen editor (`edit`).

pub mod commands;
pub mod editor;
pub mod session;
pub mod store;
