//! The WebSocket binding on threads: `/asap/ws` in [`serve`](crate::server::serve)
//! and [`WsClient`], both driving the core's machines (`asap_proto::ws`)
//! over tungstenite.
//!
//! Each connection has one thread that owns its machine and waits on a
//! single channel for everything that can move it: bytes from the socket
//! (a reader thread forwards them, one chunk per request, so a slow
//! connection is not read ahead of itself), exchange reports and pushes
//! (server), `send` calls (client), and the machine's next deadline as the
//! wait's timeout.

mod client;
pub(crate) mod server;
mod wire;

pub use client::{WsClient, WsClientConfig};
pub(crate) use server::{Connections, Reports};
