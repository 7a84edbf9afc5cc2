//! # asap-tokio
//!
//! Tokio adapter for [`asap_proto`]: an axum [`Router`](axum::Router) you mount
//! in your own app ([`server::router`]) or run directly ([`server::serve`]), the
//! async client ([`client::Client`]), and the `asap` command-line binary.
//! Protocol decisions live in `asap-proto`; this crate moves bytes and runs
//! your async handlers.
//!
//! One dependency is enough for the common case: the types a handler uses
//! ([`Manifest`], [`Skill`], [`TaskRequest`], [`SkillResult`], [`HandlerError`],
//! ...) are re-exported here, and so are the crates they come from
//! ([`asap_proto`], [`axum`] — the version this crate is built with —, [`tokio`],
//! [`serde_json`]).
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use asap_tokio::{axum, Agent, AgentUrn, JsonObject, Manifest, Skill, SkillResult};
//!
//! # async fn run() -> std::io::Result<()> {
//! let manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo",
//!     "1.0.0", "Upper-cases text", "http://127.0.0.1:8000/asap");
//! let agent = Agent::builder(manifest)
//!     // One call declares the skill in the manifest and registers its handler.
//!     .skill_with(Skill::new("upper", "Upper-case input.text"), |_ctx, req| async move {
//!         let Some(text) = req.input.get("text").and_then(|v| v.as_str()) else {
//!             // Invalid input is a failed task, not an error (see below).
//!             return Ok(SkillResult::failed("input.text must be a string"));
//!         };
//!         let mut out = JsonObject::new();
//!         out.insert("text".into(), text.to_uppercase().into());
//!         Ok(SkillResult::completed(out))
//!     })
//!     .build();
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my app" }))
//!     .merge(asap_tokio::router(agent));
//! let listener = asap_tokio::tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! // With the connect info, rate limits count per client IP; without it every
//! // client shares one budget (as 127.0.0.1).
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # }
//! ```
//!
//! [`serve`] runs an agent on its own with the connection budget, timeouts and
//! header cap of [`ServerConfig`] (what `asap serve` uses); `axum::serve`, as
//! above, leaves those to your app.
//!
//! How a skill reports failure:
//!
//! | what happened | the skill returns | the caller gets |
//! |---|---|---|
//! | invalid input, or the work failed | `Ok(SkillResult::failed(msg))` | a `task.response` with status `failed`, `{"error": msg}`, recorded |
//! | a request it refuses outright (bad params) | `Err(HandlerError::invalid_params(reason, details))` | JSON-RPC `-32602` naming the problem |
//! | a bug, a dependency down | `Err(HandlerError::failed(msg))` or a panic | JSON-RPC `-32603` (`msg` only with `ServerConfig::debug`) |
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

/// The protocol core this adapter drives (the same version, so its types are this crate's).
pub use asap_proto;
/// The axum this crate's [`Router`](axum::Router) is built with: merge the
/// router into an app of this version.
pub use axum;
/// JSON values of skill inputs and results.
pub use serde_json;
/// The runtime the adapter runs on.
pub use tokio;

pub use asap_proto::model::{
    AgentUrn, Envelope, JsonObject, Manifest, Payload, Skill, TaskRequest,
};
pub use asap_proto::server::{HandlerError, ServerConfig, SkillResult};
pub use asap_proto::task::TaskStatus;
