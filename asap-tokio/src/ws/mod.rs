//! The WebSocket binding on tokio: `/asap/ws` in the server's [`Router`](axum::Router)
//! and [`WsClient`], both driving the core's machines (`asap_proto::ws`).

mod client;
mod server;

pub use client::{Pooled, Pushes, WsClient, WsClientConfig, WsPool};
pub(crate) use server::{upgrade, wait_closed, Reports};
