//! Blocking adapter for asap-proto: std threads, SQLite stores, blocking HTTP client.
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod server;
pub mod store;
