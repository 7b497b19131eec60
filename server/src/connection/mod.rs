//! One WebSocket connection per (client, document): [`upgrade`] checks the
//! request (its credentials are read by [`crate::auth::Credentials`]),
//! upgrades and joins the document; [`reader`] reads frames (size
//! check, rate limit, parse) and forwards them to the document's actor;
//! [`writer`] drains the connection's bounded outbound queue onto the socket;
//! [`names`] cleans the display names it broadcasts; [`peer`] tells which
//! address a connection comes from and counts connections per address.
//! What is queued, and every frame and close frame, is built in
//! [`crate::outbound`].

mod batching;
mod liveness;
mod names;
mod peer;
mod reader;
mod upgrade;
mod writer;

#[cfg(test)]
mod dead_actor_tests;
#[cfg(test)]
mod join_deadline_tests;
#[cfg(test)]
mod test_socket;

pub(crate) use peer::{AddrCounts, PeerAddr};
pub use peer::{TrustedProxy, TrustedProxyError};
pub(crate) use upgrade::ws_handler;
