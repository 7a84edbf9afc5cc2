//! Server policy and its defaults (each defined once, here).

use super::replay::{NonceMode, ReplayWindow};
use crate::reliability::rate_limit::{RateLimitSpec, DEFAULT_MAX_KEYS};

/// Reference default maximum request size (before and after decompression).
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 10 * 1024 * 1024;
/// Default bound on JSON nesting of a request body. A `payload.input` nested
/// 100 levels deep fits (the envelope adds 5); the decoder's own recursion
/// limit (128) is never reached, so deeper input gets our error naming this limit.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 120;
/// Default cap on remembered nonces: a nonce is kept for the 300 s an envelope
/// stays inside the replay window (330 s when sent 30 s early), so this
/// sustains about 3,000 nonce-carrying envelopes per second; past that new
/// envelopes are refused (503), never old nonces forgotten. About 75 MB when full (73 MiB measured).
pub const DEFAULT_MAX_NONCES: usize = 1_000_000;
pub use crate::reliability::rate_limit::DEFAULT_RATE_LIMIT;

/// Server policy. `Default` matches the reference, except where a field says otherwise.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted body, bytes, checked on `Content-Length`, raw and decompressed.
    pub max_request_size: usize,
    /// Deepest accepted JSON nesting.
    pub max_json_depth: usize,
    /// Reject envelopes without `timestamp` (the reference fills "now", which
    /// bypasses the replay window). Default on.
    pub require_timestamp: bool,
    /// Replay window.
    pub replay_window: ReplayWindow,
    /// How `extensions.nonce` is checked (off by default, as in the reference;
    /// [`NonceMode::WhenPresent`] is the reference's `require_nonce=True`).
    pub nonce: NonceMode,
    /// Most nonces remembered at once; when full, new envelopes with a nonce
    /// are refused (503) until the oldest leaves the replay window.
    pub max_nonces: usize,
    /// HTTP rate limit (`None` = off), per client IP.
    pub rate_limit: Option<RateLimitSpec>,
    /// Also rate-limit per envelope sender (after decoding), with the same spec.
    pub rate_limit_by_sender: bool,
    /// Rate limiter key cap.
    pub max_rate_limit_keys: usize,
    /// Reject a `Content-Type` other than JSON with 415 (a missing one is accepted).
    pub require_json_content_type: bool,
    /// Accept envelopes addressed to any agent (gateways, relays). Off by default:
    /// a `recipient` other than this agent's manifest id is -32602 (the reference
    /// runs it anyway).
    pub accept_any_recipient: bool,
    /// Put handler error details in -32603 responses (never in production).
    pub debug: bool,
    /// Give replies `extensions.trace_id`/`span_id` (and `trace_id` when empty) of the
    /// request's server-side span, as the reference's tracing does, unless the request
    /// carried its own W3C context (32-hex `trace_id` + 16-hex `extensions.span_id`).
    pub trace_extensions: bool,
    /// Receiver dedup (sender + envelope id): a copy of an envelope already
    /// processed gets the first answer and runs nothing, on HTTP and
    /// WebSocket alike. `None` runs every copy, as the reference does.
    pub dedup: Option<crate::reliability::DedupConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            require_timestamp: true,
            replay_window: ReplayWindow::default(),
            nonce: NonceMode::Off,
            max_nonces: DEFAULT_MAX_NONCES,
            rate_limit: Some(RateLimitSpec::default()),
            rate_limit_by_sender: false,
            max_rate_limit_keys: DEFAULT_MAX_KEYS,
            require_json_content_type: true,
            accept_any_recipient: false,
            debug: false,
            trace_extensions: true,
            dedup: Some(crate::reliability::DedupConfig::default()),
        }
    }
}
