//! The HTTP client core: building `asap.send` requests exactly as the
//! reference client sends them, interpreting responses, and retrying.
//!
//! Nothing here performs I/O. An adapter (`asap-tokio`, `asap-blocking`, or
//! your own) owns the HTTP library, the clock and randomness. Most adapters
//! keep one [`ClientState`] (configured by [`ClientOptions`]: caches,
//! breakers, counters) and drive each operation's [`Exchange`] with one
//! loop — perform the `Transmit`, report the response or the classified
//! [`TransportError`], sleep until a `Timeout` — see [`Exchange`].
//!
//! Below that, the pieces stand alone. A single agent without caches: own
//! one [`CircuitBreaker`](crate::reliability::CircuitBreaker) and drive a
//! [`SendCall`]:
//!
//! ```text
//! let mut core = ClientCore::new(base_url, ClientConfig::default())?;   // once per agent
//! // per send():
//! breaker.try_acquire(now)?;                                     // open → SendError::CircuitOpen
//! let prepared = core.prepare_send(&envelope, Ulid::new(wall_now, rng.gen()));
//! let mut call = SendCall::new(prepared, RetryPolicy::default(), rng.gen());
//! let outcome = loop {
//!     match call.poll_output(clock.now()) {
//!         Some(SendOutput::Transmit(req)) => match http.execute(req) {   // add Authorization here if needed
//!             Ok(resp)  => call.handle_response(resp, clock.now()),
//!             Err(e)    => call.handle_transport_error(TransportError::new(kind_of(&e), e.to_string()), clock.now()),
//!         },
//!         Some(SendOutput::Timeout(t)) => { sleep_until(t); call.handle_timeout(clock.now()); }
//!         Some(SendOutput::Done(o)) => break o,
//!         None => unreachable!(),                                // only while a request is in flight
//!     }
//! };
//! match outcome.breaker_verdict() {
//!     BreakerVerdict::Success => breaker.record_success(clock.now()),
//!     BreakerVerdict::Failure => breaker.record_failure(clock.now()),
//!     BreakerVerdict::None => {}
//! }
//! outcome.result                                                 // Result<Envelope, SendError>
//! ```
//!
//! A runnable version with a fake network is on [`SendCall`]. Single-shot
//! users can skip `SendCall`: `prepared.http_request()` and
//! [`interpret_send_response`].
//!
//! Differences from the reference client, on purpose: no request
//! compression (the server accepts identity; `Accept-Encoding: identity`),
//! the HTTP-date form of `Retry-After` is measured against the response's
//! `Date` header, and a `Retry-After` above [`RetryPolicy::max_retry_after`](crate::reliability::RetryPolicy::max_retry_after)
//! ends the call instead of sleeping for it.

mod exchange;
mod options;
mod request;
mod response;
mod send;
mod state;

pub use exchange::{Exchange, ExchangeOutput, FetchExchange, Fetchable, SendExchange};
pub use options::{
    ClientOptions, Timeouts, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DISCOVERY_TIMEOUT,
    DEFAULT_MAX_AGENTS, DEFAULT_MAX_RESPONSE_SIZE, DEFAULT_REGISTRY_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
};
pub(crate) use request::get_request;
pub use request::{
    BaseUrl, ClientConfig, ClientCore, HttpPolicy, PreparedSend, ASAP_PATH,
    DEFAULT_ACCEPT_ENCODING, DEFAULT_USER_AGENT, HEALTH_PATH, IDEMPOTENCY_KEY_HEADER,
    MANIFEST_PATH, WEBSOCKET_PATH,
};
pub use response::{decode_send_result, interpret_send_response, SendError};
pub use send::{BreakerVerdict, SendCall, SendOutcome, SendOutput};
pub use state::{CallError, ClientHandle, ClientState, ClientStats};

pub use crate::error::Fault;

/// How an exchange failed below HTTP, as the adapter classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The connection could not be established (retried).
    #[error("connection failed")]
    Connect,
    /// The request timed out (retried).
    #[error("timed out")]
    Timeout,
    /// Anything else, e.g. the connection dropped mid-response (not retried:
    /// the agent may have processed the request).
    #[error("connection lost")]
    Other,
    /// The response body exceeded the client's limit; the adapter stopped
    /// reading (not retried: the agent would send the same again).
    #[error("response exceeds {limit} bytes")]
    ResponseTooLarge {
        /// The limit the adapter enforced.
        limit: u64,
    },
}

/// A failed exchange below HTTP, as the adapter reports it: the kind the
/// core decides on, and the HTTP library's text that the user sees.
///
/// ```
/// use asap_proto::client::{TransportError, TransportErrorKind};
/// let e = TransportError::new(TransportErrorKind::Connect, "tcp connect error: Connection refused");
/// assert_eq!(e.to_string(), "connection failed: tcp connect error: Connection refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
#[non_exhaustive]
pub struct TransportError {
    /// What failed (decides retries and whose fault it is).
    pub kind: TransportErrorKind,
    /// The HTTP library's description.
    pub detail: String,
}

impl TransportError {
    /// A transport error of `kind` described by `detail`.
    #[must_use]
    pub fn new(kind: TransportErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// Whose fault it is: the peer's for an oversized response, else the network's.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self.kind {
            TransportErrorKind::ResponseTooLarge { .. } => Fault::Peer,
            _ => Fault::Network,
        }
    }
}

/// Local misuse of the client core (always [`Fault::Local`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not usable.
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Plain `http://` to a non-loopback host without opting in.
    #[error("refusing plain http:// to a non-loopback host ({url}); use https:// or HttpPolicy::AllowInsecure")]
    InsecureUrl {
        /// The URL given.
        url: String,
    },
}
