//! One client operation — `asap.send` with its retries, or a cached GET —
//! as a machine an adapter drives with a single loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::request::BaseUrl;
use super::send::{SendCall, SendOutput};
use super::state::{CallError, ClientState, SendTicket};
use super::{Timeouts, TransportError, TransportErrorKind};
use crate::discovery::{DiscoveryError, HealthVerdict, LiteRegistry, Lookup};
use crate::model::{Envelope, Manifest};

/// What an [`Exchange`] asks of its driver next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // handed straight to the caller; boxing would only add an allocation
pub enum ExchangeOutput<V> {
    /// Perform this HTTP request within [`Exchange::request_timeout`], then
    /// report it with [`Exchange::handle_result`].
    Transmit(http::Request<Vec<u8>>),
    /// Sleep until this instant, then poll again.
    Timeout(Instant),
    /// The operation is over (polling again yields the same result).
    Done(Result<V, CallError>),
}

/// One client operation driven against a [`ClientState`]: the state holds
/// what outlives the operation (caches, breakers, counters), the exchange
/// what it needs meanwhile. Every method takes the state, so an adapter
/// can keep it behind a lock that is never held across I/O.
///
/// The whole driver loop of an adapter (this is all an HTTP client does):
///
/// ```text
/// let mut exchange = state.lock().discover(base_url);   // or begin_send, health_check, registry
/// loop {
///     let step = exchange.poll_output(&mut state.lock(), clock.now());
///     match step {
///         ExchangeOutput::Transmit(req) => {
///             let result = http.execute(req, exchange.request_timeout()); // Ok(response) or Err(TransportError)
///             exchange.handle_result(&mut state.lock(), result, clock.now());
///         }
///         ExchangeOutput::Timeout(t) => sleep_until(t),
///         ExchangeOutput::Done(result) => return result,
///     }
/// }
/// // given up mid-way (a dropped future): exchange.abandon(&mut state.lock())
/// ```
///
/// Polling while a request is in flight counts that request as lost
/// (a transport failure of kind [`TransportErrorKind::Other`]).
pub trait Exchange {
    /// What the operation yields.
    type Value;

    /// The next thing to do, after applying `now` (a due retry becomes a `Transmit`).
    #[must_use]
    fn poll_output(&mut self, state: &mut ClientState, now: Instant)
        -> ExchangeOutput<Self::Value>;

    /// Reports the HTTP response to the last `Transmit` (ignored when none is in flight).
    fn handle_response(
        &mut self,
        state: &mut ClientState,
        response: http::Response<Vec<u8>>,
        now: Instant,
    );

    /// Reports that the last `Transmit` failed below HTTP (ignored when none is in flight).
    fn handle_transport_error(
        &mut self,
        state: &mut ClientState,
        error: TransportError,
        now: Instant,
    );

    /// Reports how the last `Transmit` went, whichever way.
    fn handle_result(
        &mut self,
        state: &mut ClientState,
        result: Result<http::Response<Vec<u8>>, TransportError>,
        now: Instant,
    ) {
        match result {
            Ok(response) => self.handle_response(state, response, now),
            Err(error) => self.handle_transport_error(state, error, now),
        }
    }

    /// How long the adapter lets each of this exchange's requests take.
    fn request_timeout(&self) -> Duration;

    /// The caller gives up mid-way (e.g. its future was dropped): gives back
    /// what the exchange holds, such as a half-open breaker probe, and ends
    /// it. Harmless after `Done` or twice, so a drop guard may always call it.
    fn abandon(&mut self, state: &mut ClientState);
}

/// The text of a request the driver never reported.
const LOST: &str = "the driver polled again before reporting the request in flight";
/// The text of an exchange its caller gave up on.
const ABANDONED: &str = "the caller abandoned the call";

/// `asap.send` to one agent: the breaker's permit, the retrying [`SendCall`],
/// and the breaker's verdict at the end. Made by [`ClientState::begin_send`].
#[derive(Debug)]
pub struct SendExchange {
    state: SendState,
    timeout: Duration,
}

#[derive(Debug)]
enum SendState {
    Running { call: SendCall, ticket: SendTicket },
    Finished(Result<Envelope, CallError>),
}

impl SendExchange {
    pub(crate) fn new(start: Result<(SendCall, SendTicket), CallError>, timeout: Duration) -> Self {
        let state = match start {
            Ok((call, ticket)) => SendState::Running { call, ticket },
            Err(e) => SendState::Finished(Err(e)),
        };
        Self { state, timeout }
    }

    /// Attempts handed out so far.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        match &self.state {
            SendState::Running { call, .. } => call.attempts(),
            SendState::Finished(_) => 0,
        }
    }
}

impl Exchange for SendExchange {
    type Value = Envelope;

    fn poll_output(&mut self, state: &mut ClientState, now: Instant) -> ExchangeOutput<Envelope> {
        let (call, ticket) = match &mut self.state {
            SendState::Finished(result) => return ExchangeOutput::Done(result.clone()),
            SendState::Running { call, ticket } => (call, ticket),
        };
        let outcome = loop {
            match call.poll_output(now) {
                Some(SendOutput::Transmit(req)) => return ExchangeOutput::Transmit(req),
                Some(SendOutput::Timeout(t)) => return ExchangeOutput::Timeout(t),
                Some(SendOutput::Done(outcome)) => break outcome,
                None => call.handle_transport_error(
                    TransportError::new(TransportErrorKind::Other, LOST),
                    now,
                ),
            }
        };
        let result = state.finish_send(ticket, outcome, now);
        self.state = SendState::Finished(result.clone());
        ExchangeOutput::Done(result)
    }

    fn handle_response(
        &mut self,
        _: &mut ClientState,
        response: http::Response<Vec<u8>>,
        now: Instant,
    ) {
        if let SendState::Running { call, .. } = &mut self.state {
            call.handle_response(response, now);
        }
    }

    fn handle_transport_error(&mut self, _: &mut ClientState, error: TransportError, now: Instant) {
        if let SendState::Running { call, .. } = &mut self.state {
            call.handle_transport_error(error, now);
        }
    }

    fn request_timeout(&self) -> Duration {
        self.timeout
    }

    fn abandon(&mut self, state: &mut ClientState) {
        if let SendState::Running { ticket, .. } = &self.state {
            state.abandon_send(ticket);
            let cut = TransportError::new(TransportErrorKind::Other, ABANDONED);
            self.state = SendState::Finished(Err(CallError::from_transport(
                ticket.agent().asap_url(),
                cut,
            )));
        }
    }
}

pub(crate) mod sealed {
    use super::*;

    /// How a [`ClientState`] looks a document up, feeds it responses and
    /// names it in errors.
    pub trait Fetch: Sized {
        /// What identifies the document: an agent, or a registry URL.
        type Key: std::fmt::Debug;
        /// Validates the caller's URL (the `http://` policy).
        fn key(state: &ClientState, url: &str) -> Result<Self::Key, CallError>;
        /// The URL requested, for errors.
        fn url(key: &Self::Key) -> String;
        /// The timeout of its GET.
        fn timeout(timeouts: &Timeouts) -> Duration;
        /// The cache lookup.
        fn lookup(
            state: &mut ClientState,
            key: &Self::Key,
            now: Instant,
        ) -> Result<Lookup<Self>, CallError>;
        /// The cache's handling of the response.
        fn handle_response(
            state: &mut ClientState,
            key: &Self::Key,
            response: &http::Response<Vec<u8>>,
            now: Instant,
        ) -> Result<Lookup<Self>, DiscoveryError>;
        /// The transport failed: forget the entry.
        fn failed(state: &mut ClientState, key: &Self::Key);
        /// Whether a value is stored (fresh or not) for a 304 to refresh.
        fn is_stored(state: &ClientState, key: &Self::Key) -> bool;
    }
}

/// A document a [`ClientState`] fetches and caches: [`Manifest`],
/// [`HealthVerdict`], [`LiteRegistry`].
pub trait Fetchable: sealed::Fetch {}

impl<T: sealed::Fetch> Fetchable for T {}

/// A cached GET of a manifest, health verdict or registry: lookup, the
/// request when stale (revalidating with the ETag), and the refetch a 304
/// for an evicted entry asks for. Made by [`ClientState::discover`],
/// [`ClientState::health_check`], [`ClientState::registry`].
#[derive(Debug)]
pub struct FetchExchange<T: Fetchable> {
    /// `Err`: the URL was refused before any I/O.
    fetch: Result<Fetching<T>, CallError>,
    timeout: Duration,
}

#[derive(Debug)]
struct Fetching<T: Fetchable> {
    key: T::Key,
    state: FetchState<T>,
    /// Responses handled: the cache asks for at most one refetch (a 304 for
    /// an entry evicted meanwhile); a second is refused even if something
    /// keeps evicting the cache's marker.
    responses: u8,
}

#[derive(Debug)]
enum FetchState<T> {
    Start,
    Ready(http::Request<Vec<u8>>),
    InFlight,
    Finished(Result<Arc<T>, CallError>),
}

impl<T: Fetchable> FetchExchange<T> {
    pub(crate) fn new(state: &ClientState, url: &str) -> Self {
        Self {
            fetch: T::key(state, url).map(|key| Fetching {
                key,
                state: FetchState::Start,
                responses: 0,
            }),
            timeout: T::timeout(&state.options().timeouts),
        }
    }
}

impl<T: Fetchable> Fetching<T> {
    fn next<E: Into<CallError>>(found: Result<Lookup<T>, E>) -> FetchState<T> {
        match found {
            Ok(Lookup::Fresh(v)) => FetchState::Finished(Ok(v)),
            Ok(Lookup::Transmit(req)) => FetchState::Ready(req),
            Err(e) => FetchState::Finished(Err(e.into())),
        }
    }

    fn failed(&mut self, state: &mut ClientState, error: TransportError) {
        T::failed(state, &self.key);
        let e = CallError::from_transport(T::url(&self.key), error);
        self.state = FetchState::Finished(Err(e));
    }
}

impl<T: Fetchable> Exchange for FetchExchange<T> {
    type Value = Arc<T>;

    fn poll_output(&mut self, state: &mut ClientState, now: Instant) -> ExchangeOutput<Arc<T>> {
        let f = match &mut self.fetch {
            Ok(f) => f,
            Err(e) => return ExchangeOutput::Done(Err(e.clone())),
        };
        loop {
            // InFlight is right for Ready (handed out now); every other arm overwrites it.
            match std::mem::replace(&mut f.state, FetchState::InFlight) {
                FetchState::Start => f.state = Fetching::next(T::lookup(state, &f.key, now)),
                FetchState::Ready(req) => return ExchangeOutput::Transmit(req),
                FetchState::InFlight => {
                    f.failed(state, TransportError::new(TransportErrorKind::Other, LOST));
                }
                FetchState::Finished(r) => {
                    f.state = FetchState::Finished(r.clone());
                    return ExchangeOutput::Done(r);
                }
            }
        }
    }

    fn handle_response(
        &mut self,
        state: &mut ClientState,
        response: http::Response<Vec<u8>>,
        now: Instant,
    ) {
        if let Ok(f) = &mut self.fetch {
            if matches!(f.state, FetchState::InFlight) {
                f.responses = f.responses.saturating_add(1);
                let refetch_again = f.responses > 1
                    && response.status() == http::StatusCode::NOT_MODIFIED
                    && !T::is_stored(state, &f.key);
                f.state = if refetch_again {
                    T::failed(state, &f.key);
                    FetchState::Finished(Err(DiscoveryError::NotModifiedWithoutCache.into()))
                } else {
                    Fetching::next(T::handle_response(state, &f.key, &response, now))
                };
            }
        }
    }

    fn handle_transport_error(
        &mut self,
        state: &mut ClientState,
        error: TransportError,
        _: Instant,
    ) {
        if let Ok(f) = &mut self.fetch {
            if matches!(f.state, FetchState::InFlight) {
                f.failed(state, error);
            }
        }
    }

    fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Nothing to give back: an abandoned GET leaves the cache as it was.
    fn abandon(&mut self, _: &mut ClientState) {
        if let Ok(f) = &mut self.fetch {
            if !matches!(f.state, FetchState::Finished(_)) {
                let cut = TransportError::new(TransportErrorKind::Other, ABANDONED);
                f.state = FetchState::Finished(Err(CallError::from_transport(T::url(&f.key), cut)));
            }
        }
    }
}

impl sealed::Fetch for Manifest {
    type Key = BaseUrl;
    fn key(state: &ClientState, url: &str) -> Result<BaseUrl, CallError> {
        Ok(state.agent(url)?)
    }
    fn url(key: &BaseUrl) -> String {
        key.manifest_url()
    }
    fn timeout(t: &Timeouts) -> Duration {
        t.discovery.min(t.request)
    }
    fn lookup(
        state: &mut ClientState,
        key: &BaseUrl,
        now: Instant,
    ) -> Result<Lookup<Self>, CallError> {
        Ok(state.manifest_lookup(key, now)?)
    }
    fn handle_response(
        state: &mut ClientState,
        key: &BaseUrl,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Lookup<Self>, DiscoveryError> {
        state.handle_manifest_response(key, response, now)
    }
    fn failed(state: &mut ClientState, key: &BaseUrl) {
        state.manifest_failed(key);
    }
    fn is_stored(state: &ClientState, key: &BaseUrl) -> bool {
        state.caches().manifests.peek(key.as_str()).is_some()
    }
}

impl sealed::Fetch for HealthVerdict {
    type Key = BaseUrl;
    fn key(state: &ClientState, url: &str) -> Result<BaseUrl, CallError> {
        Ok(state.agent(url)?)
    }
    fn url(key: &BaseUrl) -> String {
        key.health_url()
    }
    fn timeout(t: &Timeouts) -> Duration {
        t.discovery.min(t.request)
    }
    fn lookup(
        state: &mut ClientState,
        key: &BaseUrl,
        now: Instant,
    ) -> Result<Lookup<Self>, CallError> {
        Ok(state.health_lookup(key, now)?)
    }
    fn handle_response(
        state: &mut ClientState,
        key: &BaseUrl,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Lookup<Self>, DiscoveryError> {
        state.handle_health_response(key, response, now)
    }
    fn failed(state: &mut ClientState, key: &BaseUrl) {
        state.health_failed(key);
    }
    fn is_stored(state: &ClientState, key: &BaseUrl) -> bool {
        state.caches().health.peek(key.as_str()).is_some()
    }
}

impl sealed::Fetch for LiteRegistry {
    type Key = String;
    fn key(state: &ClientState, url: &str) -> Result<String, CallError> {
        state.check_url(url)?;
        Ok(url.to_owned())
    }
    fn url(key: &String) -> String {
        key.clone()
    }
    fn timeout(t: &Timeouts) -> Duration {
        t.registry
    }
    fn lookup(
        state: &mut ClientState,
        key: &String,
        now: Instant,
    ) -> Result<Lookup<Self>, CallError> {
        state.registry_lookup(key, now)
    }
    fn handle_response(
        state: &mut ClientState,
        key: &String,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Lookup<Self>, DiscoveryError> {
        state.handle_registry_response(key, response, now)
    }
    fn failed(state: &mut ClientState, key: &String) {
        state.registry_failed(key);
    }
    fn is_stored(state: &ClientState, key: &String) -> bool {
        state.caches().registries.peek(key).is_some()
    }
}
