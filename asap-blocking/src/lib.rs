//! Blocking adapter for asap-proto: std threads, SQLite stores, blocking HTTP
//! client, HTTP/1.1 and WebSocket server, WebSocket client.
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod server;
pub mod store;
pub mod webhook;
pub mod ws;
