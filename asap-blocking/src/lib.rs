//! Blocking adapter for asap-proto: std threads, SQLite stores, blocking HTTP client.
#![deny(missing_docs)]

pub mod client;
pub mod server;
pub mod store;
pub mod webhook;
