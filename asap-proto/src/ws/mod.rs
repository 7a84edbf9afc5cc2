//! The WebSocket binding (`/asap/ws`, spec 13), sans I/O.
//!
//! One text frame carries one JSON-RPC message. On the server, a frame goes
//! through the same [`Exchange`](crate::server::Exchange) as a `POST /asap`
//! body, so its answer is byte-identical; [`ServerSession`] adds what only a
//! connection has: frame triage, the per-connection token bucket (-32001 then
//! close 1008), the heartbeat (`{"type": "ping"}` every 30 s) and the idle
//! close (90 s), server push, and the shutdown close (1001).
//!
//! MessageAcks come from the exchange itself (`Step::Notify`): `received`
//! once the envelope is validated and admitted, then `processed` or
//! `rejected` (with the reason) just before the response.
//!
//! A server adapter's connection loop (one task per connection; exchanges may
//! run concurrently and report back through a channel):
//!
//! ```text
//! loop {
//!     while let Some(out) = session.poll_output() { write(out) }   // Transmit / Close
//!     if session.is_closed() { break }
//!     select {
//!         frame = read(), if session.wants_frames() =>
//!             if session.handle_frame(frame, now()) == FrameVerdict::Exchange {
//!                 spawn: ex = server.handle_request(&RequestHead::websocket(..), now);
//!                        drive ex like POST /asap, body = the frame's text;
//!                        Step::Notify(text) → report Notify(text);
//!                        Step::Respond(reply) → report Reply(reply body)
//!             }
//!         report = reports.recv() => session.handle_notify(text) / handle_reply(body, now())
//!         push = pushes.recv()    => session.push(&envelope)
//!         _ = sleep_until(session.poll_timeout()) => session.handle_timeout(now())
//!         _ = shutdown            => session.handle_shutdown()
//!     }
//! }
//! ```

mod calls;
mod client;
pub mod frame;
mod pool;
mod server;

pub use calls::{CallOutput, ClientCalls, WsClientConfig};
pub use client::{
    decode_ack_frame, ClientEvent, ClientOutput, ClientSession, ClientSessionConfig,
    ClientSessionError, RequestHandle,
};
pub use frame::{AckTarget, CloseFrame, Incoming, TextKind, Violation};
pub use pool::{Checkout, Pool, PoolConfig};
pub use server::{FrameVerdict, Output, PushError, ServerSession, SessionConfig};

/// Reconnect delays of a WebSocket client (spec 13.7): 1, 2, 4 … 30 s, plus
/// up to 10 % jitter from the caller's randomness.
pub const RECONNECT_BACKOFF: crate::reliability::Backoff = crate::reliability::Backoff {
    base: std::time::Duration::from_secs(1),
    max: std::time::Duration::from_secs(30),
    jitter_ratio: 0.1,
};
