//! One WebSocket connection per (client, document): [`credentials`] reads what
//! the request proves (client key, bearer token); [`upgrade`] checks the
//! request, upgrades and joins the document; [`reader`] reads frames (size
//! check, rate limit, parse) and forwards them to the document's actor;
//! [`writer`] drains the connection's bounded outbound queue onto the socket.
//! What is queued, and every frame and close frame, is built in
//! [`crate::outbound`].

mod credentials;
mod reader;
mod upgrade;
mod writer;

pub(crate) use upgrade::ws_handler;
