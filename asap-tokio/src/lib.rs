//! # asap-tokio
//!
//! Tokio adapter for [`asap_proto`]: an axum [`Router`](axum::Router) you mount
//! in your own app ([`server::router`]) or run directly ([`server::serve`]), and
//! the `asap` command-line binary. Protocol decisions live in `asap-proto`;
//! this crate moves bytes and runs your async handlers.
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod connection;
/// PostgreSQL stores for several replicas of one agent (the `postgres` feature).
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod server;
pub mod store;
pub mod webhook;
pub mod ws;

pub use server::{router, serve, Agent, AgentBuilder, HandlerReply, SkillContext};
