//! The wire protocol of the collaborative editing server (PROTOCOL.md in
//! code): every message in both directions as serde types, the error and
//! close codes and what a client does with each, and the id rules. No I/O.
//!
//! - [`ServerMessage`]: server → client; the server writes it borrowed,
//!   clients read it with [`ServerMessage::parse`] (tolerant of later additions).
//! - [`ClientMessage`]: client → server; clients write it, the server reads
//!   it strictly with [`ClientMessage::parse`] (typed [`Rejection`]s).
//! - [`ErrorCode`], [`Code`], [`ErrorAction`]: errors and the one error rule.
//! - [`CloseCode`], [`close_action`]: close codes and what a client does.
//! - [`DocId`], [`ClientId`]: the only place the id rules live.
//! - [`fixture`]: examples of everything, for other-language clients' tests.

pub mod access;
pub mod api;
pub mod client_message;
pub mod codes;
mod fast_read;
pub mod fixture;
pub mod ids;
pub mod numbers;
pub mod origin;
pub mod server_message;

pub use access::{is_link_id, Access, LINK_ID_PREFIX};
pub use api::ApiErrorCode;
pub use client_message::{op_message_text, ClientMessage, Rejection, MAX_NAME_CHARS, MAX_RANGES};
pub use codes::{close_action, CloseAction, CloseCode, Code, ErrorAction, ErrorCode};
pub use ids::{
    ClientId, ClientKey, DocId, IdError, BEARER_SUBPROTOCOL_PREFIX, CLIENT_KEY_HEADER,
    KEY_SUBPROTOCOL_PREFIX, SUBPROTOCOL,
};
pub use origin::{OpOrigin, MAX_ORIGIN_AUTHORS};
pub use server_message::{FrameError, Limits, ServerMessage};
