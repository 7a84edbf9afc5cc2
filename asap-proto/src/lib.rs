//! # asap-proto
//!
//! The sans-I/O core of ASAP v1.1 (Async Simple Agent Protocol): the wire
//! model, the JSON-RPC binding, and every protocol decision as a deterministic
//! function of inputs and `now`. No clocks, sockets, files, environment or OS
//! randomness: adapters (`asap-tokio`, `asap-blocking`, or your own runtime)
//! supply those.
//!
//! | module | what it decides |
//! |---|---|
//! | [`model`] | the wire model: [`model::Envelope`], [`model::Payload`] (13 kinds, every spelling), parts, entities, ULIDs, agent URNs, timestamps |
//! | [`jsonrpc`] | `asap.send` framing, ids echoed with their JSON type, every error code and body of the spec |
//! | [`server`] | the `POST /asap` pipeline (size, rate limit, encodings, JSON-RPC, envelope, replay window, nonces, routing), well-known manifest (ETag/304) and health, task state around skill runs, metrics |
//! | [`client`] | `asap.send` requests as the reference client sends them, response interpretation, the retrying [`client::SendCall`], one [`client::ClientOptions`], and the [`client::ClientState`] whose exchanges every HTTP adapter drives with one loop |
//! | [`discovery`] | one [`discovery::HttpCache`] (ETag, max-age, 304 / 2xx / error) behind the manifest, health and registry caches, manifest validation, Lite Registry |
//! | [`reliability`] | backoff, retry policy, circuit breaker, moving-window rate limiter |
//! | [`canonical_json`] | canonical JSON text (Python `json.dumps` bytes) for ETags, client request bodies and stored data |
//! | [`error`] | [`DecodeError`] for every decoder, and [`Fault`]: whose fault a failure is |
//! | [`store`] | snapshot and metering contracts, in-memory stores, storage configuration |
//! | [`task`] | task status and its transition table |
//! | [`webhook`] | SSRF policy for callback URLs (with the addresses to pin), `X-ASAP-Signature` and Standard Webhooks signatures, the [`webhook::WebhookOutbox`] delivery scheduler |
//!
//! Machines take inputs through `handle_*` methods and explicit `now` values and
//! report deadlines instead of sleeping; each module's docs show its driver loop.
//!
//! ```
//! use asap_proto::model::Envelope;
//! let text = br#"{"id":"01KDXZ0000ENVREQ0000000001","asap_version":"0.1",
//!   "timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:client",
//!   "recipient":"urn:asap:agent:echo-server","payload_type":"task.request",
//!   "payload":{"conversation_id":"c","skill_id":"echo","input":{}},
//!   "correlation_id":null,"trace_id":null,"requires_ack":false,"extensions":null}"#;
//! let env = Envelope::from_slice(text).unwrap();
//! assert_eq!(env.sender, "urn:asap:agent:client");
//! // Bad input gets a typed error naming the member.
//! let err = Envelope::from_slice(br#"{"asap_version":1}"#).unwrap_err();
//! assert_eq!(err.path, "asap_version");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod canonical_json;
pub mod client;
pub mod discovery;
pub mod error;
pub mod jsonrpc;
pub mod model;
pub mod reliability;
pub mod server;
pub mod store;
pub mod task;
pub mod webhook;
pub mod ws;

pub use error::{DecodeError, DecodeErrorKind, Fault};

#[cfg(test)]
#[path = "../tests/support/clock.rs"]
mod test_clock;
