//! Server policy and its defaults (each defined once, here).

use std::time::Duration;

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
/// Default cap on a request head (request line and headers), bytes; beyond it 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default bound on request-body bytes held by all requests at once; beyond it 503.
/// Six 10 MiB bodies fit; a 33rd concurrent one waits for its turn (`Retry-After`).
pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// Default time a new connection has to deliver a complete request head, and a
/// kept-alive one to complete a head once its first byte arrived.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest silence while a request body is read.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a kept-alive connection may wait for its next request.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time from a request's head to the last byte of its body.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `Retry-After` of a 503 for a full connection or body budget, seconds.
pub const DEFAULT_BUSY_RETRY_AFTER_SECS: u64 = 1;
/// File descriptors kept out of the connection budget: the store's files and its
/// checkpoint thread, outgoing calls, the listener, refusals being written. The
/// budget is the descriptor limit minus this, minus an eighth of the limit.
pub const RESERVED_FDS: u64 = 64;
/// Connection budget when the descriptor limit is unknown (or unlimited).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How long a peer may take at each stage of a request; a slow or silent peer is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A new connection must deliver a complete head within this; so must a
    /// kept-alive one, counted from the first byte of its next head (408 when
    /// part of a head arrived, else the connection is just closed).
    pub header: Duration,
    /// Longest silence while a body is read (408).
    pub body: Duration,
    /// A kept-alive connection with no request under way is closed after this.
    pub keep_alive: Duration,
    /// The whole body must have arrived within this of the head (408), so a peer
    /// dripping one byte per `body` interval cannot hold a request open forever.
    /// Handlers are not cut: their time is the application's.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: DEFAULT_HEADER_TIMEOUT,
            body: DEFAULT_BODY_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// How many connections may be open, in all and per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most open connections; `None` derives it from the descriptor limit
    /// ([`ConnectionLimits::resolve`]). Never more than the descriptors allow.
    pub max_connections: Option<usize>,
    /// Most open connections of one client IP; `None` is half the budget.
    pub max_per_ip: Option<usize>,
    /// `Retry-After` of the 503 a refused connection or body gets, seconds.
    pub retry_after_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_per_ip: None,
            retry_after_secs: DEFAULT_BUSY_RETRY_AFTER_SECS,
        }
    }
}

impl ConnectionLimits {
    /// The connection budget for a process whose soft descriptor limit is
    /// `fd_limit` (`None`: unknown or unlimited): `(max_connections, max_per_ip)`.
    ///
    /// ```
    /// use asap_proto::server::ConnectionLimits;
    /// assert_eq!(ConnectionLimits::default().resolve(Some(1024)), (832, 416));
    /// let tight = ConnectionLimits { max_connections: Some(5000), ..Default::default() };
    /// assert_eq!(tight.resolve(Some(1024)).0, 832); // descriptors win
    /// ```
    #[must_use]
    pub fn resolve(&self, fd_limit: Option<u64>) -> (usize, usize) {
        let by_fds = fd_limit.map(|n| {
            let usable = n.saturating_sub(RESERVED_FDS).saturating_sub(n / 8).max(1);
            usize::try_from(usable).unwrap_or(usize::MAX)
        });
        let max = match (self.max_connections, by_fds) {
            (Some(m), Some(f)) => m.min(f),
            (Some(m), None) => m,
            (None, Some(f)) => f,
            (None, None) => DEFAULT_MAX_CONNECTIONS,
        }
        .max(1);
        let per_ip = self.max_per_ip.unwrap_or(max / 2).clamp(1, max);
        (max, per_ip)
    }
}

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
    /// Largest request head (request line and headers), bytes; beyond it 431.
    pub max_header_bytes: usize,
    /// Request-body bytes all requests together may hold at once; beyond it 503
    /// with `Retry-After` (see [`BodyBudget`](super::BodyBudget)).
    pub max_body_bytes_in_flight: usize,
    /// Header, body, keep-alive and whole-request timeouts.
    pub timeouts: Timeouts,
    /// The connection budget.
    pub connections: ConnectionLimits,
    /// Receiver dedup (sender + envelope id): a copy of an envelope already
    /// processed gets the first answer and runs nothing, on HTTP and
    /// WebSocket alike. `None` runs every copy, as the reference does.
    pub dedup: Option<crate::reliability::DedupConfig>,
    /// Webhook subscribers and the callback policy (none by default).
    pub webhooks: super::WebhookConfig,
    /// Replay state shared with other replicas through the store
    /// (PostgreSQL): each admitted envelope with a nonce or a dedup key is
    /// claimed there before it runs ([`Step::Claim`](super::Step::Claim)).
    /// `None` (one process): the server's own window decides alone.
    pub shared_replay: Option<SharedReplay>,
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
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes_in_flight: DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            timeouts: Timeouts::default(),
            connections: ConnectionLimits::default(),
            dedup: Some(crate::reliability::DedupConfig::default()),
            webhooks: super::WebhookConfig::default(),
            shared_replay: None,
        }
    }
}

/// How replicas sharing replay state claim envelopes ([`ServerConfig::shared_replay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedReplay {
    /// How long a claim holds an envelope for its replica: past it the
    /// replica is taken as dead and a copy may run the envelope elsewhere.
    /// Size it above the longest handler run. Default 300 s.
    pub claim_lease: Duration,
    /// How long a copy waits for the replica running its envelope before it
    /// is answered 503 with `Retry-After`. Default 10 s.
    pub claim_wait: Duration,
    /// First pause between two looks at a running claim; doubled up to 500 ms.
    /// Default 20 ms.
    pub claim_poll: Duration,
}

impl Default for SharedReplay {
    fn default() -> Self {
        Self {
            claim_lease: Duration::from_secs(300),
            claim_wait: Duration::from_secs(10),
            claim_poll: Duration::from_millis(20),
        }
    }
}
