//! The webhook outbox: a bounded, persistable delivery scheduler with
//! per-URL rate limits, retries with backoff, per-task ordering and dead letters.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use super::policy::UrlRejection;
use super::signature::{
    SigningKeys, ASAP_SIGNATURE_HEADER, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
};
use crate::discovery::lru::LruMap;
use crate::model::UnixTime;
use crate::reliability::{parse_http_date, retry_after_delay, Backoff, JitterSource};

/// Longest `webhook-id` accepted, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 256;

/// Outbox settings. Defaults follow the reference's `RetryPolicy` (spec 16.3):
/// 6 attempts, retries after 1, 2, 4, 8, 16 s, 10 requests a second per URL,
/// 10 s request timeout; plus bounds the reference lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    /// Events held at once: pending, in flight and dead letters together
    /// (dead letters count, so none is ever evicted). Default 10 000.
    pub capacity: usize,
    /// Largest event body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Attempts per event, including the first. Default 6 (`0` acts as `1`).
    pub max_attempts: u32,
    /// Delay before retry *k* (0-based): `min(1 s × 2^k, 16 s)` plus up to 10 %
    /// jitter (the reference has none; jitter spreads retries of many events
    /// that failed together). `jitter_ratio: 0.0` gives the reference's exact schedule.
    pub backoff: Backoff,
    /// Seed of the jitter sequence (adapters pass OS randomness; tests a constant).
    pub jitter_seed: u64,
    /// Longest `Retry-After` honoured; longer values are cut to this. Default 300 s.
    pub max_retry_after: Duration,
    /// Requests per second to one URL (token bucket, reference 10/s). `0` means unlimited.
    pub rate_per_second: u32,
    /// Requests one URL may receive in a burst (bucket size, reference 10; `0` acts as `1`).
    pub rate_burst: u32,
    /// URLs whose rate state is tracked (least recently used forgotten first). Default 10 000.
    pub max_rate_buckets: usize,
    /// Per-request timeout the adapter applies ([`Delivery::timeout`]). Default 10 s.
    pub request_timeout: Duration,
    /// How long a delivery may stay unreported before it counts as timed out
    /// (an adapter that lost it must not block the task forever). Default 30 s.
    pub lease: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_body_bytes: 1024 * 1024,
            max_attempts: 6,
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(16),
                jitter_ratio: 0.1,
            },
            jitter_seed: 0,
            max_retry_after: Duration::from_secs(300),
            rate_per_second: 10,
            rate_burst: 10,
            max_rate_buckets: 10_000,
            request_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
        }
    }
}

/// One event to deliver: the body bytes (a `task.update` or `task.response`
/// envelope's JSON), the task it belongs to, where it goes and how it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// The event id, sent as `webhook-id` on every attempt so receivers dedup
    /// retries (the envelope id is a good choice). Visible ASCII, at most
    /// [`MAX_EVENT_ID_LEN`] bytes, unique in the outbox.
    pub event_id: String,
    /// The task: one task's events reach one URL in enqueue order.
    pub task_id: String,
    /// The subscriber URL, already checked with [`UrlPolicy`](super::UrlPolicy)
    /// at subscription time (pass [`CallbackUrl::as_str`](super::CallbackUrl::as_str)).
    pub url: String,
    /// Name of the [`SigningKeys`] registered with
    /// [`WebhookOutbox::set_signing_keys`]; `None` sends unsigned.
    pub secret_ref: Option<String>,
    /// The exact body bytes (signed as they are).
    pub body: Vec<u8>,
}

impl WebhookEvent {
    /// An unsigned event.
    #[must_use]
    pub fn new(
        event_id: impl Into<String>,
        task_id: impl Into<String>,
        url: impl Into<String>,
        body: Vec<u8>,
    ) -> Self {
        Self {
            event_id: event_id.into(),
            task_id: task_id.into(),
            url: url.into(),
            secret_ref: None,
            body,
        }
    }

    /// Signs the event with the keys registered under `secret_ref`.
    #[must_use]
    pub fn signed_with(mut self, secret_ref: impl Into<String>) -> Self {
        self.secret_ref = Some(secret_ref.into());
        self
    }
}

/// Where a stored event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Waiting for its turn (its task's earlier events), its retry time or a rate token.
    Pending,
    /// Handed to the adapter; restored as `Pending` (at-least-once delivery).
    InFlight,
    /// Dead letter: kept until replayed or discarded.
    Dead,
}

/// How one failed attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Failure {
    /// The receiver answered with a non-2xx status.
    Status {
        /// The status.
        status: u16,
    },
    /// No answer within the timeout (or the adapter never reported the attempt).
    TimedOut,
    /// No connection (DNS, TCP, TLS).
    ConnectFailed,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { status } => write!(f, "HTTP {status}"),
            Self::TimedOut => f.write_str("timed out"),
            Self::ConnectFailed => f.write_str("connection failed"),
        }
    }
}

/// Why an event became a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeadReason {
    /// Every attempt failed with a retryable failure (5xx, 3xx, 408, 429, timeout, connect).
    AttemptsExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        last: Failure,
    },
    /// The receiver refused the event with a 4xx other than 408/429.
    Rejected {
        /// The status.
        status: u16,
    },
    /// The URL failed the adapter's delivery-time [`UrlPolicy`](super::UrlPolicy) check.
    UrlRefused {
        /// The rejection's message.
        reason: String,
    },
    /// The event's signing keys are no longer registered.
    SecretUnavailable {
        /// The missing name.
        secret_ref: String,
    },
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AttemptsExhausted { attempts, last } => {
                write!(f, "all {attempts} attempts failed (last: {last})")
            }
            Self::Rejected { status } => write!(f, "the receiver refused it with HTTP {status}"),
            Self::UrlRefused { reason } => {
                write!(f, "the URL was refused at delivery time: {reason}")
            }
            Self::SecretUnavailable { secret_ref } => write!(
                f,
                "no signing keys are registered under {secret_ref:?}; register them, then replay"
            ),
        }
    }
}

/// The persisted form of one outbox event (one row for the adapter's store).
///
/// Times are wall-clock Unix milliseconds because the outbox must survive
/// restarts, and monotonic `Instant`s do not. Bodies serialize as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The event id (`webhook-id`); the primary key.
    pub event_id: String,
    /// The task.
    pub task_id: String,
    /// The subscriber URL.
    pub url: String,
    /// The signing keys' name, if signed.
    pub secret_ref: Option<String>,
    /// The body bytes.
    #[serde(with = "body_base64")]
    pub body: Vec<u8>,
    /// Enqueue order (unique; a replay takes a new one). Orders a task's events.
    pub seq: u64,
    /// Pending, in flight or dead.
    pub state: RecordState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (Unix ms); for dead letters, when they died.
    pub next_attempt_at_ms: i64,
    /// When the event was enqueued (Unix ms).
    pub created_at_ms: i64,
    /// The latest failure, if any.
    pub last_failure: Option<Failure>,
    /// Why it is dead (`Some` exactly when `state` is `Dead`).
    pub dead_reason: Option<DeadReason>,
}

mod body_base64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(body))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Names one attempt handed to the adapter; report its result with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(u64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delivery-{}", self.0)
    }
}

/// One attempt for the adapter to perform.
///
/// Before connecting, the adapter resolves the request's host and checks the
/// addresses with [`UrlPolicy::approve`](super::UrlPolicy::approve), then
/// connects only to the approved addresses (reporting
/// [`DeliveryOutcome::UrlRefused`] when refused). Redirects are not followed.
#[derive(Debug)]
pub struct Delivery {
    /// Report the result under this id.
    pub id: DeliveryId,
    /// The event (also the `webhook-id` header).
    pub event_id: String,
    /// The task.
    pub task_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Give up on the request after this long and report [`DeliveryOutcome::TimedOut`].
    pub timeout: Duration,
    /// `POST <url>` with `content-type: application/json`, `webhook-id`,
    /// `webhook-timestamp`, and when signed `x-asap-signature` and `webhook-signature`.
    pub request: http::Request<Vec<u8>>,
}

/// What one attempt came to, as the adapter saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The receiver answered.
    Response {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` header's value, if any (seconds or an HTTP-date).
        retry_after: Option<String>,
    },
    /// No answer within [`Delivery::timeout`].
    TimedOut,
    /// No connection could be made (DNS failure, refused, TLS failure).
    ConnectFailed,
    /// The delivery-time URL check refused the resolved addresses; not retried.
    UrlRefused(UrlRejection),
}

impl DeliveryOutcome {
    /// A response without `Retry-After`.
    #[must_use]
    pub fn status(status: u16) -> Self {
        Self::Response {
            status,
            retry_after: None,
        }
    }

    /// The outcome of a received response (its status and `Retry-After`).
    #[must_use]
    pub fn from_response<B>(response: &http::Response<B>) -> Self {
        Self::Response {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// What happened to an event, for the adapter's store and its observers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxEvent {
    /// A 2xx: the event is done and no longer held (delete its row).
    Delivered {
        /// The event.
        event_id: String,
        /// Its task.
        task_id: String,
        /// Attempts it took.
        attempts: u32,
        /// The status.
        status: u16,
    },
    /// An attempt failed and another is scheduled (update the row from
    /// [`WebhookOutbox::record`]).
    RetryScheduled {
        /// The event.
        event_id: String,
        /// Attempts made so far.
        attempts: u32,
        /// The failure.
        failure: Failure,
        /// When the next attempt is due.
        next_attempt_at: UnixTime,
    },
    /// The event is a dead letter (update the row; list them with
    /// [`WebhookOutbox::dead_letters`], retry with [`WebhookOutbox::replay`]).
    DeadLettered {
        /// The event.
        event_id: String,
        /// Its task.
        task_id: String,
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: DeadReason,
    },
}

/// Everything the outbox may ask of its driver, in str0m style.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // handed straight to the caller; boxing would add an allocation per delivery
pub enum OutboxOutput {
    /// Persist or report this change.
    Event(OutboxEvent),
    /// Perform this attempt, then call [`WebhookOutbox::handle_result`].
    Transmit(Delivery),
    /// Nothing to do before this time: sleep, then call [`WebhookOutbox::handle_timeout`].
    Timeout(UnixTime),
}

/// An event was not accepted; the outbox is unchanged. The caller's fault,
/// except `Full`, which is back-pressure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The outbox holds `capacity` events.
    #[error("webhook outbox is full ({held} events held, {dead_letters} of them dead letters; capacity {capacity}): wait for deliveries to finish, or replay or discard dead letters")]
    Full {
        /// Events held.
        held: usize,
        /// Dead letters among them.
        dead_letters: usize,
        /// The configured capacity.
        capacity: usize,
    },
    /// An event with this id is already held.
    #[error("webhook event {event_id:?} is already in the outbox (enqueued twice); the first copy is kept")]
    Duplicate {
        /// The id.
        event_id: String,
    },
    /// The id cannot be a `webhook-id` header.
    #[error("webhook event id {event_id:?} is unusable: {reason}")]
    InvalidEventId {
        /// The id.
        event_id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The URL is not an absolute `http(s)` URL.
    #[error("subscriber URL {url:?} is not an absolute http(s) URL ({reason}); check it with UrlPolicy when the subscription is made")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The body is over [`OutboxConfig::max_body_bytes`].
    #[error("webhook body is {len} bytes, over the outbox limit of {max}")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No signing keys are registered under the event's `secret_ref`.
    #[error("no signing keys are registered under {secret_ref:?}; call set_signing_keys first")]
    UnknownSecret {
        /// The name.
        secret_ref: String,
    },
}

/// A result, replay or discard named nothing the outbox holds (local misuse,
/// or a result reported after its lease ran out, which is then ignored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The delivery is unknown, already reported, or its lease expired (then it was counted as timed out).
    #[error(
        "{0} is not in flight (already reported, or its lease expired and it counted as timed out)"
    )]
    UnknownDelivery(DeliveryId),
    /// No dead letter has this event id.
    #[error("no dead letter has event id {0:?}")]
    NotDeadLetter(String),
}

/// Stored records are inconsistent (the store's or the adapter's fault); nothing was restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Two records share an event id or a sequence number.
    #[error("stored outbox records repeat {what} {value}")]
    Duplicate {
        /// `event id` or `seq`.
        what: &'static str,
        /// The repeated value.
        value: String,
    },
    /// A record cannot be used.
    #[error("stored outbox record {event_id:?} is invalid: {reason}")]
    InvalidRecord {
        /// The record's event id.
        event_id: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    record: OutboxRecord,
    uri: http::Uri,
    id_header: HeaderValue,
    next_attempt: UnixTime,
    in_flight: Option<(DeliveryId, UnixTime)>,
}

type LineKey = (String, String);

/// The webhook delivery scheduler (sans-I/O).
///
/// Events go in with [`enqueue`](Self::enqueue); signed requests come out of
/// [`poll_transmit`](Self::poll_transmit) when due; the adapter performs them
/// and reports each with [`handle_result`](Self::handle_result). Guarantees:
///
/// * **Bounded**: at most [`OutboxConfig::capacity`] events (dead letters
///   included); a full outbox refuses new events with [`EnqueueError::Full`].
/// * **Nothing vanishes**: an event is held until it is delivered (2xx) or
///   discarded from the dead letters; every change is reported as an
///   [`OutboxEvent`], and [`records`](Self::records)/[`restore`](Self::restore)
///   carry the state across restarts (in-flight attempts are retried:
///   at-least-once; the stable `webhook-id` lets receivers drop duplicates).
/// * **Ordered per task and URL**: a task's next event to a URL is not sent
///   before the previous one is delivered or dead. Different subscribers of
///   one task do not wait for each other.
/// * **Paced**: at most `rate_per_second` requests per URL (bursts of
///   `rate_burst`), retries at the backoff schedule or the receiver's
///   `Retry-After` (capped).
/// * Retried: 5xx, 3xx (redirects are not followed), 408, 429, timeouts,
///   connect failures. Not retried: other 4xx, a delivery-time URL refusal.
///
/// **Clock**: only wall-clock [`UnixTime`], because deadlines are persisted
/// and must mean the same after a restart. A clock that steps back delays
/// deliveries by at most the step (deadlines never go before the latest `now`
/// seen); a step forward makes retries due early. Nothing panics either way.
///
/// Drain [`poll_event`](Self::poll_event) after every input
/// ([`poll_output`](Self::poll_output) does): events queue until taken.
///
/// See the [module docs](super) for the driver loop.
#[derive(Debug)]
pub struct WebhookOutbox {
    config: OutboxConfig,
    records: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
    lines: HashMap<LineKey, VecDeque<u64>>,
    ready: BTreeSet<(UnixTime, u64)>,
    leases: BTreeSet<(UnixTime, DeliveryId)>,
    in_flight: HashMap<DeliveryId, u64>,
    buckets: LruMap<UnixTime>,
    secrets: HashMap<String, SigningKeys>,
    events: VecDeque<OutboxEvent>,
    jitter: JitterSource,
    next_seq: u64,
    next_delivery: u64,
    dead_letters: usize,
    last_now: UnixTime,
}

fn to_ms_ceil(t: UnixTime) -> i64 {
    t.as_micros().div_euclid(1000) + i64::from(t.as_micros().rem_euclid(1000) != 0)
}

fn validate_event_id(id: &str) -> Result<HeaderValue, &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > MAX_EVENT_ID_LEN {
        return Err("it is longer than 256 bytes");
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only visible ASCII without spaces is allowed in a webhook-id");
    }
    HeaderValue::from_str(id).map_err(|_| "not a valid header value")
}

fn parse_uri(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        Some(other) => return Err(format!("scheme {other:?}")),
        None => return Err("no scheme".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(uri)
}

impl WebhookOutbox {
    /// An empty outbox.
    #[must_use]
    pub fn new(config: OutboxConfig) -> Self {
        Self {
            jitter: JitterSource::new(config.jitter_seed),
            buckets: LruMap::new(config.max_rate_buckets),
            config,
            records: BTreeMap::new(),
            by_id: HashMap::new(),
            lines: HashMap::new(),
            ready: BTreeSet::new(),
            leases: BTreeSet::new(),
            in_flight: HashMap::new(),
            secrets: HashMap::new(),
            events: VecDeque::new(),
            next_seq: 1,
            next_delivery: 1,
            dead_letters: 0,
            last_now: UnixTime::EPOCH,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Registers (or replaces) the signing keys an event's `secret_ref` names.
    /// Keys are never persisted in records; register them again after a restart.
    pub fn set_signing_keys(&mut self, secret_ref: impl Into<String>, keys: SigningKeys) {
        self.secrets.insert(secret_ref.into(), keys);
    }

    /// Forgets signing keys; events still naming them become dead letters when due.
    pub fn remove_signing_keys(&mut self, secret_ref: &str) -> Option<SigningKeys> {
        self.secrets.remove(secret_ref)
    }

    /// Events held (pending, in flight and dead letters).
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Attempts handed out and not yet reported.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The stored form of one event.
    #[must_use]
    pub fn record(&self, event_id: &str) -> Option<&OutboxRecord> {
        let seq = self.by_id.get(event_id)?;
        self.records.get(seq).map(|e| &e.record)
    }

    /// Every held event in enqueue order (a full snapshot for the store).
    pub fn records(&self) -> impl Iterator<Item = &OutboxRecord> + '_ {
        self.records.values().map(|e| &e.record)
    }

    /// The dead letters, oldest enqueue first.
    pub fn dead_letters(&self) -> impl Iterator<Item = &OutboxRecord> + '_ {
        self.records().filter(|r| r.state == RecordState::Dead)
    }

    fn see(&mut self, now: UnixTime) {
        self.last_now = self.last_now.max(now);
    }

    fn alloc_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        s
    }

    /// Accepts an event; its first attempt is due at once (after its task's
    /// earlier events to the same URL).
    pub fn enqueue(&mut self, event: WebhookEvent, now: UnixTime) -> Result<(), EnqueueError> {
        self.see(now);
        let id_header =
            validate_event_id(&event.event_id).map_err(|reason| EnqueueError::InvalidEventId {
                event_id: event.event_id.clone(),
                reason,
            })?;
        if self.by_id.contains_key(&event.event_id) {
            return Err(EnqueueError::Duplicate {
                event_id: event.event_id,
            });
        }
        let uri = parse_uri(&event.url).map_err(|reason| EnqueueError::InvalidUrl {
            url: event.url.clone(),
            reason,
        })?;
        if event.body.len() > self.config.max_body_bytes {
            return Err(EnqueueError::BodyTooLarge {
                len: event.body.len(),
                max: self.config.max_body_bytes,
            });
        }
        if let Some(r) = &event.secret_ref {
            if !self.secrets.contains_key(r) {
                return Err(EnqueueError::UnknownSecret {
                    secret_ref: r.clone(),
                });
            }
        }
        if self.records.len() >= self.config.capacity {
            return Err(EnqueueError::Full {
                held: self.records.len(),
                dead_letters: self.dead_letters,
                capacity: self.config.capacity,
            });
        }
        let seq = self.alloc_seq();
        let record = OutboxRecord {
            event_id: event.event_id,
            task_id: event.task_id,
            url: event.url,
            secret_ref: event.secret_ref,
            body: event.body,
            seq,
            state: RecordState::Pending,
            attempts: 0,
            next_attempt_at_ms: to_ms_ceil(now),
            created_at_ms: now.as_millis(),
            last_failure: None,
            dead_reason: None,
        };
        self.insert_pending(
            Entry {
                record,
                uri,
                id_header,
                next_attempt: now,
                in_flight: None,
            },
            true,
        );
        Ok(())
    }

    /// Puts a pending entry at the back of its line (scheduling it when it is the head).
    fn insert_pending(&mut self, entry: Entry, schedule: bool) {
        let seq = entry.record.seq;
        let key = (entry.record.url.clone(), entry.record.task_id.clone());
        self.by_id.insert(entry.record.event_id.clone(), seq);
        let due = entry.next_attempt;
        self.records.insert(seq, entry);
        let line = self.lines.entry(key).or_default();
        line.push_back(seq);
        if schedule && line.len() == 1 {
            self.ready.insert((due, seq));
        }
    }

    /// Moves a line past its head (delivered or dead) and schedules the next event.
    fn advance_line(&mut self, seq: u64, url: &str, task_id: &str) {
        let key = (url.to_owned(), task_id.to_owned());
        let Some(line) = self.lines.get_mut(&key) else {
            return;
        };
        if line.front() == Some(&seq) {
            line.pop_front();
        } else {
            line.retain(|s| *s != seq);
        }
        match line.front().copied() {
            None => {
                self.lines.remove(&key);
            }
            Some(next) => {
                if let Some(e) = self.records.get(&next) {
                    if e.in_flight.is_none() {
                        self.ready.insert((e.next_attempt, next));
                    }
                }
            }
        }
    }

    /// Makes an event a dead letter and lets its line move on.
    fn kill(&mut self, seq: u64, reason: DeadReason, now: UnixTime) {
        let Some(e) = self.records.get_mut(&seq) else {
            return;
        };
        e.record.state = RecordState::Dead;
        e.record.dead_reason = Some(reason.clone());
        e.record.next_attempt_at_ms = now.as_millis();
        e.in_flight = None;
        self.dead_letters += 1;
        let (url, task, event_id, attempts) = (
            e.record.url.clone(),
            e.record.task_id.clone(),
            e.record.event_id.clone(),
            e.record.attempts,
        );
        self.advance_line(seq, &url, &task);
        self.events.push_back(OutboxEvent::DeadLettered {
            event_id,
            task_id: task,
            attempts,
            reason,
        });
    }

    /// GCRA token bucket per URL: `Ok` takes a token, `Err(t)` says when one is free (> now).
    fn take_token(&mut self, url: &str, now: UnixTime) -> Result<(), UnixTime> {
        if self.config.rate_per_second == 0 {
            return Ok(());
        }
        let interval = 1_000_000 / i64::from(self.config.rate_per_second).max(1);
        let interval = interval.max(1);
        let tolerance = interval.saturating_mul(i64::from(self.config.rate_burst.max(1)) - 1);
        let tat = self.buckets.peek(url).copied().unwrap_or(now).max(now);
        let allowed_at = UnixTime::from_micros(tat.as_micros().saturating_sub(tolerance));
        if allowed_at > now {
            return Err(allowed_at);
        }
        let next = UnixTime::from_micros(tat.as_micros().saturating_add(interval));
        if let Some(v) = self.buckets.get_mut(url) {
            *v = next;
        } else {
            // A full bucket (tat ≤ now) carries no information: forget those first.
            if self.buckets.len() >= self.config.max_rate_buckets.max(1) {
                self.buckets.retain(|_, t| *t > now);
            }
            self.buckets.insert(url.to_owned(), next);
        }
        Ok(())
    }

    /// The next attempt to perform, when one is due at `now` (and its URL has
    /// a rate token). Call until `None`.
    #[must_use]
    pub fn poll_transmit(&mut self, now: UnixTime) -> Option<Delivery> {
        self.handle_timeout(now);
        loop {
            let &(due, seq) = self.ready.first()?;
            if due > now {
                return None;
            }
            self.ready.pop_first();
            let Some(e) = self.records.get(&seq) else {
                continue;
            };
            let keys = match &e.record.secret_ref {
                None => None,
                Some(r) => match self.secrets.get(r) {
                    Some(k) => Some(k.clone()),
                    None => {
                        let reason = DeadReason::SecretUnavailable {
                            secret_ref: r.clone(),
                        };
                        self.kill(seq, reason, now);
                        continue;
                    }
                },
            };
            let url = e.record.url.clone();
            if let Err(at) = self.take_token(&url, now) {
                self.ready.insert((at, seq));
                continue;
            }
            return Some(self.start_attempt(seq, keys.as_ref(), now));
        }
    }

    fn start_attempt(&mut self, seq: u64, keys: Option<&SigningKeys>, now: UnixTime) -> Delivery {
        let id = DeliveryId(self.next_delivery);
        self.next_delivery = self.next_delivery.saturating_add(1);
        let lease_until = now.saturating_add(self.config.lease.max(Duration::from_millis(1)));
        let timeout = self.config.request_timeout;
        let e = self
            .records
            .get_mut(&seq)
            .expect("start_attempt is called for a held record");
        e.record.attempts = e.record.attempts.saturating_add(1);
        e.record.state = RecordState::InFlight;
        e.in_flight = Some((id, lease_until));
        let ts = now.as_secs();
        let body = &e.record.body;
        let mut request = http::Request::new(body.clone());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = e.uri.clone();
        let h = request.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(WEBHOOK_ID_HEADER, e.id_header.clone());
        h.insert(WEBHOOK_TIMESTAMP_HEADER, HeaderValue::from(ts));
        if let Some(keys) = keys {
            // Hex and base64 are always valid header values.
            let asap = HeaderValue::try_from(keys.current().asap_signature(body))
                .expect("hex signature is a header value");
            let event_id = &e.record.event_id;
            let std = HeaderValue::try_from(keys.standard_signatures(event_id, ts, body))
                .expect("base64 signatures are a header value");
            h.insert(ASAP_SIGNATURE_HEADER, asap);
            h.insert(WEBHOOK_SIGNATURE_HEADER, std);
        }
        let delivery = Delivery {
            id,
            event_id: e.record.event_id.clone(),
            task_id: e.record.task_id.clone(),
            attempt: e.record.attempts,
            timeout,
            request,
        };
        self.in_flight.insert(id, seq);
        self.leases.insert((lease_until, id));
        delivery
    }

    /// Reports how an attempt ended. A late report (after the lease expired)
    /// or a repeated one returns [`OutboxError::UnknownDelivery`] and changes nothing.
    pub fn handle_result(
        &mut self,
        delivery: DeliveryId,
        outcome: DeliveryOutcome,
        now: UnixTime,
    ) -> Result<(), OutboxError> {
        self.see(now);
        let seq = self
            .in_flight
            .remove(&delivery)
            .ok_or(OutboxError::UnknownDelivery(delivery))?;
        if let Some(e) = self.records.get_mut(&seq) {
            if let Some((_, lease)) = e.in_flight.take() {
                self.leases.remove(&(lease, delivery));
            }
        }
        match outcome {
            DeliveryOutcome::Response { status, .. } if (200..300).contains(&status) => {
                self.deliver(seq, status);
            }
            DeliveryOutcome::Response { status, .. }
                if (400..500).contains(&status) && status != 408 && status != 429 =>
            {
                self.kill(seq, DeadReason::Rejected { status }, now);
            }
            DeliveryOutcome::Response {
                status,
                retry_after,
            } => {
                let wait = retry_after.as_deref().and_then(|v| retry_after_at(v, now));
                self.fail(seq, Failure::Status { status }, wait, now);
            }
            DeliveryOutcome::TimedOut => self.fail(seq, Failure::TimedOut, None, now),
            DeliveryOutcome::ConnectFailed => self.fail(seq, Failure::ConnectFailed, None, now),
            DeliveryOutcome::UrlRefused(rejection) => {
                let reason = DeadReason::UrlRefused {
                    reason: rejection.to_string(),
                };
                self.kill(seq, reason, now);
            }
        }
        Ok(())
    }

    fn deliver(&mut self, seq: u64, status: u16) {
        let Some(e) = self.records.remove(&seq) else {
            return;
        };
        self.by_id.remove(&e.record.event_id);
        self.advance_line(seq, &e.record.url, &e.record.task_id);
        self.events.push_back(OutboxEvent::Delivered {
            event_id: e.record.event_id,
            task_id: e.record.task_id,
            attempts: e.record.attempts,
            status,
        });
    }

    fn fail(&mut self, seq: u64, failure: Failure, retry_after: Option<Duration>, now: UnixTime) {
        let max_attempts = self.config.max_attempts.max(1);
        let Some(e) = self.records.get(&seq) else {
            return;
        };
        let attempts = e.record.attempts;
        if attempts >= max_attempts {
            let reason = DeadReason::AttemptsExhausted {
                attempts,
                last: failure,
            };
            if let Some(e) = self.records.get_mut(&seq) {
                e.record.last_failure = Some(failure);
            }
            self.kill(seq, reason, now);
            return;
        }
        let unit = self.jitter.next_unit();
        let delay = match retry_after {
            Some(d) => d.min(self.config.max_retry_after),
            None => self.config.backoff.delay(attempts.saturating_sub(1), unit),
        };
        // From the latest time seen, so a clock step back cannot schedule into the past;
        // at least 1 ms, so a zero backoff never reports a deadline at `now`.
        let base = self.last_now.max(now);
        let at = base.saturating_add(delay.max(Duration::from_millis(1)));
        let e = self.records.get_mut(&seq).expect("checked above");
        e.record.state = RecordState::Pending;
        e.record.last_failure = Some(failure);
        e.record.next_attempt_at_ms = to_ms_ceil(at);
        e.next_attempt = at;
        let event_id = e.record.event_id.clone();
        self.ready.insert((at, seq));
        self.events.push_back(OutboxEvent::RetryScheduled {
            event_id,
            attempts,
            failure,
            next_attempt_at: at,
        });
    }

    /// Counts attempts whose lease ran out as timed out. Harmless early or twice.
    pub fn handle_timeout(&mut self, now: UnixTime) {
        self.see(now);
        while let Some(&(until, id)) = self.leases.first() {
            if until > now {
                break;
            }
            self.leases.pop_first();
            if let Some(seq) = self.in_flight.remove(&id) {
                if let Some(e) = self.records.get_mut(&seq) {
                    e.in_flight = None;
                }
                self.fail(seq, Failure::TimedOut, None, now);
            }
        }
    }

    /// When the next attempt or lease expiry is due; always later than the
    /// latest `now` given. `None` when nothing is scheduled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        let ready = self.ready.first().map(|(t, _)| *t);
        let lease = self.leases.first().map(|(t, _)| *t);
        let at = match (ready, lease) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(if at <= self.last_now {
            UnixTime::from_micros(self.last_now.as_micros().saturating_add(1))
        } else {
            at
        })
    }

    /// The next change to persist or report.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<OutboxEvent> {
        self.events.pop_front()
    }

    /// Events first, then a due attempt, then the next deadline (see [`OutboxOutput`]).
    #[must_use]
    pub fn poll_output(&mut self, now: UnixTime) -> Option<OutboxOutput> {
        if let Some(e) = self.poll_event() {
            return Some(OutboxOutput::Event(e));
        }
        if let Some(d) = self.poll_transmit(now) {
            return Some(OutboxOutput::Transmit(d));
        }
        if let Some(e) = self.poll_event() {
            // poll_transmit can dead-letter an event whose keys are gone.
            return Some(OutboxOutput::Event(e));
        }
        self.poll_timeout().map(OutboxOutput::Timeout)
    }

    /// Sends a dead letter again: attempts reset, due at once, at the back of
    /// its task's line.
    pub fn replay(&mut self, event_id: &str, now: UnixTime) -> Result<(), OutboxError> {
        self.see(now);
        let not_dead = || OutboxError::NotDeadLetter(event_id.to_owned());
        let seq = *self.by_id.get(event_id).ok_or_else(not_dead)?;
        if self.records.get(&seq).map(|e| e.record.state) != Some(RecordState::Dead) {
            return Err(not_dead());
        }
        let mut e = self.records.remove(&seq).ok_or_else(not_dead)?;
        self.dead_letters -= 1;
        let new_seq = self.alloc_seq();
        e.record.seq = new_seq;
        e.record.state = RecordState::Pending;
        e.record.attempts = 0;
        e.record.last_failure = None;
        e.record.dead_reason = None;
        e.record.next_attempt_at_ms = to_ms_ceil(now);
        e.next_attempt = now;
        self.insert_pending(e, true);
        Ok(())
    }

    /// Removes a dead letter for good, returning it.
    pub fn discard_dead_letter(&mut self, event_id: &str) -> Result<OutboxRecord, OutboxError> {
        let not_dead = || OutboxError::NotDeadLetter(event_id.to_owned());
        let seq = *self.by_id.get(event_id).ok_or_else(not_dead)?;
        if self.records.get(&seq).map(|e| e.record.state) != Some(RecordState::Dead) {
            return Err(not_dead());
        }
        let e = self.records.remove(&seq).ok_or_else(not_dead)?;
        self.by_id.remove(event_id);
        self.dead_letters -= 1;
        Ok(e.record)
    }

    /// Rebuilds an outbox from stored records after a restart. In-flight
    /// records become pending and their interrupted attempt is made again
    /// under the same number (it may or may not have arrived: at-least-once);
    /// overdue attempts are due at once. Capacity is not
    /// enforced here (nothing stored is dropped); new events wait for room.
    /// Signing keys must be registered again before the first poll.
    pub fn restore(
        config: OutboxConfig,
        records: impl IntoIterator<Item = OutboxRecord>,
        now: UnixTime,
    ) -> Result<Self, RestoreError> {
        let mut out = Self::new(config);
        out.see(now);
        let mut sorted: Vec<OutboxRecord> = records.into_iter().collect();
        sorted.sort_by_key(|r| r.seq);
        for pair in sorted.windows(2) {
            if pair[0].seq == pair[1].seq {
                return Err(RestoreError::Duplicate {
                    what: "seq",
                    value: pair[0].seq.to_string(),
                });
            }
        }
        let mut entries = Vec::with_capacity(sorted.len());
        let mut ids = std::collections::HashSet::with_capacity(sorted.len());
        for record in sorted {
            if !ids.insert(record.event_id.clone()) {
                return Err(RestoreError::Duplicate {
                    what: "event id",
                    value: record.event_id.clone(),
                });
            }
            entries.push(Entry::restored(record)?);
        }
        for e in entries {
            out.next_seq = out.next_seq.max(e.record.seq.saturating_add(1));
            out.hold_restored(e);
        }
        Ok(out)
    }
}

impl Entry {
    /// A stored record made live again: checked, and an attempt whose outcome
    /// is unknown (in flight when its holder stopped) made pending again.
    fn restored(mut record: OutboxRecord) -> Result<Self, RestoreError> {
        let invalid = |reason: String| RestoreError::InvalidRecord {
            event_id: record.event_id.clone(),
            reason,
        };
        let id_header = validate_event_id(&record.event_id).map_err(|r| invalid(r.into()))?;
        let uri = parse_uri(&record.url).map_err(&invalid)?;
        if (record.state == RecordState::Dead) != record.dead_reason.is_some() {
            return Err(invalid(
                "dead_reason must be present exactly when state is dead".into(),
            ));
        }
        if record.state == RecordState::InFlight {
            // Its outcome is unknown: the same attempt is made again.
            record.state = RecordState::Pending;
            record.attempts = record.attempts.saturating_sub(1);
        }
        let next_attempt = UnixTime::from_millis(record.next_attempt_at_ms);
        Ok(Entry {
            record,
            uri,
            id_header,
            next_attempt,
            in_flight: None,
        })
    }
}

impl WebhookOutbox {
    /// Takes over events another holder stored and can no longer send (a
    /// replica whose lease ended, [`WebhookStore::claim_orphans`](crate::store::WebhookStore::claim_orphans)):
    /// each gets this outbox's next sequence number, an interrupted attempt
    /// is made again (at-least-once), and an event already held is skipped.
    /// Returns how many were taken; invalid records are refused, none taken.
    pub fn adopt(
        &mut self,
        records: impl IntoIterator<Item = OutboxRecord>,
        now: UnixTime,
    ) -> Result<usize, RestoreError> {
        self.see(now);
        let mut entries = Vec::new();
        for record in records {
            if self.by_id.contains_key(&record.event_id)
                || entries
                    .iter()
                    .any(|e: &Entry| e.record.event_id == record.event_id)
            {
                continue;
            }
            entries.push(Entry::restored(record)?);
        }
        let taken = entries.len();
        for mut e in entries {
            e.record.seq = self.next_seq;
            self.next_seq = self.next_seq.saturating_add(1);
            self.hold_restored(e);
        }
        Ok(taken)
    }

    fn hold_restored(&mut self, e: Entry) {
        if e.record.state == RecordState::Dead {
            self.dead_letters += 1;
            self.by_id.insert(e.record.event_id.clone(), e.record.seq);
            self.records.insert(e.record.seq, e);
        } else {
            self.insert_pending(e, true);
        }
    }
}

/// `Retry-After` as a delay from `now`: seconds, or an HTTP-date on the wall clock.
fn retry_after_at(value: &str, now: UnixTime) -> Option<Duration> {
    if let Some(d) = retry_after_delay(value, None) {
        return Some(d);
    }
    let at = parse_http_date(value.trim())?;
    let secs = at.checked_sub(now.as_secs())?;
    (secs > 0).then(|| Duration::from_secs(secs.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::signature::{StandardVerifier, WebhookSecret};
    use proptest::prelude::*;

    const URL: &str = "https://93.184.216.34/h";
    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z in ms

    fn t(ms: i64) -> UnixTime {
        UnixTime::from_millis(T0 + ms)
    }

    fn exact() -> OutboxConfig {
        OutboxConfig {
            backoff: OutboxConfig::default().backoff.without_jitter(),
            ..OutboxConfig::default()
        }
    }

    fn event(id: &str, task: &str) -> WebhookEvent {
        WebhookEvent::new(id, task, URL, br#"{"a":1}"#.to_vec())
    }

    /// Drives one event through `statuses` (0 = connect failure), sleeping
    /// until each deadline; returns the sleeps in seconds and the final event.
    fn drive(statuses: &[u16]) -> (Vec<f64>, OutboxEvent, WebhookOutbox) {
        let mut o = WebhookOutbox::new(exact());
        let mut now = t(0);
        o.enqueue(event("e1", "t1"), now).unwrap();
        let mut sleeps = Vec::new();
        let mut last = None;
        for &s in statuses {
            let d = loop {
                if let Some(d) = o.poll_transmit(now) {
                    break d;
                }
                let next = o.poll_timeout().unwrap();
                sleeps.push(next.micros_since(now) as f64 / 1e6);
                now = next;
            };
            let outcome = if s == 0 {
                DeliveryOutcome::ConnectFailed
            } else {
                DeliveryOutcome::status(s)
            };
            o.handle_result(d.id, outcome, now).unwrap();
            while let Some(e) = o.poll_event() {
                if !matches!(e, OutboxEvent::RetryScheduled { .. }) {
                    last = Some(e);
                }
            }
        }
        (sleeps, last.expect("a final event"), o)
    }

    #[test]
    fn machine_values_are_send() {
        fn send<T: Send>() {}
        send::<WebhookOutbox>();
        send::<Delivery>();
        send::<OutboxOutput>();
    }

    #[test]
    fn reference_retry_schedules() {
        let (sleeps, last, o) = drive(&[500; 6]);
        assert_eq!(sleeps, [1.0, 2.0, 4.0, 8.0, 16.0]);
        assert_eq!(
            last,
            OutboxEvent::DeadLettered {
                event_id: "e1".into(),
                task_id: "t1".into(),
                attempts: 6,
                reason: DeadReason::AttemptsExhausted {
                    attempts: 6,
                    last: Failure::Status { status: 500 }
                },
            }
        );
        assert_eq!(o.dead_letters().count(), 1);
        assert_eq!(o.poll_timeout(), None);

        for (statuses, want_sleeps) in [
            (&[503, 200][..], &[1.0][..]),
            (&[301, 200], &[1.0]),
            (&[0, 200], &[1.0]),
            (&[408, 429, 200], &[1.0, 2.0]),
        ] {
            let (sleeps, last, o) = drive(statuses);
            assert_eq!(sleeps, want_sleeps, "{statuses:?}");
            assert!(
                matches!(last, OutboxEvent::Delivered { status: 200, .. }),
                "{statuses:?}"
            );
            assert!(o.is_empty());
        }
        // A plain 4xx is final at once (dead-lettered here; the reference just returns it).
        let (sleeps, last, _) = drive(&[404]);
        assert!(sleeps.is_empty());
        assert!(matches!(
            last,
            OutboxEvent::DeadLettered {
                reason: DeadReason::Rejected { status: 404 },
                attempts: 1,
                ..
            }
        ));
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_is_reproducible() {
        let run = |seed| {
            let mut o = WebhookOutbox::new(OutboxConfig {
                jitter_seed: seed,
                ..OutboxConfig::default()
            });
            let mut now = t(0);
            o.enqueue(event("e", "t"), now).unwrap();
            let mut delays = Vec::new();
            for _ in 0..5 {
                let d = o.poll_transmit(now).unwrap();
                o.handle_result(d.id, DeliveryOutcome::TimedOut, now)
                    .unwrap();
                let next = o.poll_timeout().unwrap();
                delays.push(next.micros_since(now));
                now = next;
            }
            delays
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        for (k, d) in a.iter().enumerate() {
            let base = 1_000_000i64 << k;
            assert!(*d >= base && *d <= base + base / 10, "{k}: {d}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates_are_honoured_and_capped() {
        let mut o = WebhookOutbox::new(exact());
        let now = t(0);
        for (i, value) in ["7", "Thu, 01 Jan 2026 00:00:30 GMT", "86400", "soon"]
            .iter()
            .enumerate()
        {
            let id = format!("e{i}");
            o.enqueue(WebhookEvent::new(&id, &id, URL, Vec::new()), now)
                .unwrap();
            let d = o.poll_transmit(now).unwrap();
            let outcome = DeliveryOutcome::Response {
                status: 429,
                retry_after: Some((*value).into()),
            };
            o.handle_result(d.id, outcome, now).unwrap();
        }
        let mut waits = Vec::new();
        while let Some(OutboxEvent::RetryScheduled {
            next_attempt_at, ..
        }) = o.poll_event()
        {
            waits.push(next_attempt_at.micros_since(now) / 1_000_000);
        }
        assert_eq!(waits, [7, 30, 300, 1]);
        let resp = http::Response::builder()
            .status(503)
            .header("retry-after", "2")
            .body(())
            .unwrap();
        assert_eq!(
            DeliveryOutcome::from_response(&resp),
            DeliveryOutcome::Response {
                status: 503,
                retry_after: Some("2".into())
            }
        );
    }

    #[test]
    fn requests_are_signed_both_ways_with_a_stable_id() {
        let mut o = WebhookOutbox::new(exact());
        let secret = WebhookSecret::from_bytes(b"test-secret");
        o.set_signing_keys("sub-1", SigningKeys::new(secret.clone()));
        let body = br#"{"attempt":1,"data":{"note":"h\u00e9llo","status":"completed"},"event":"task.completed","task_id":"task_01KDXZ00000000000000000000"}"#;
        let ev = WebhookEvent::new("msg_1", "task_1", URL, body.to_vec()).signed_with("sub-1");
        o.enqueue(ev, t(0)).unwrap();
        let d = o.poll_transmit(t(0)).unwrap();
        assert_eq!(d.attempt, 1);
        assert_eq!(d.timeout, Duration::from_secs(10));
        let r = &d.request;
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(r.uri(), URL);
        assert_eq!(r.body(), body);
        let h = r.headers();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(
            h["x-asap-signature"],
            "sha256=79b01e2cf041dcb32a49df2f4b7bb9b695b2a2a9ed0098128a9ff63cc3085843"
        );
        assert_eq!(h["webhook-id"], "msg_1");
        assert_eq!(h["webhook-timestamp"], "1767225600");
        let verifier = StandardVerifier::new(vec![secret]);
        verifier.verify_headers(h, body, t(0)).unwrap();
        // The retry carries the same id, a fresh timestamp and signature.
        o.handle_result(d.id, DeliveryOutcome::status(502), t(0))
            .unwrap();
        let d2 = o.poll_transmit(t(1000)).unwrap();
        assert_eq!(d2.attempt, 2);
        let h2 = d2.request.headers();
        assert_eq!(h2["webhook-id"], "msg_1");
        assert_eq!(h2["webhook-timestamp"], "1767225601");
        assert_ne!(h2["webhook-signature"], h["webhook-signature"]);
        verifier.verify_headers(h2, body, t(1000)).unwrap();
        // Unsigned events carry the id and timestamp only.
        o.enqueue(
            WebhookEvent::new("msg_2", "task_2", URL, Vec::new()),
            t(1000),
        )
        .unwrap();
        let d3 = o.poll_transmit(t(1000)).unwrap();
        assert!(d3.request.headers().get("x-asap-signature").is_none());
        assert!(d3.request.headers().get("webhook-signature").is_none());
        assert_eq!(d3.request.headers()["webhook-id"], "msg_2");
    }

    #[test]
    fn missing_keys_dead_letter_and_replay_after_registration() {
        let mut o = WebhookOutbox::new(exact());
        assert_eq!(
            o.enqueue(event("e", "t").signed_with("k"), t(0)),
            Err(EnqueueError::UnknownSecret {
                secret_ref: "k".into()
            })
        );
        o.set_signing_keys("k", SigningKeys::new(WebhookSecret::from_bytes(b"s")));
        o.enqueue(event("e", "t").signed_with("k"), t(0)).unwrap();
        assert!(o.remove_signing_keys("k").is_some());
        assert!(matches!(
            o.poll_output(t(0)),
            Some(OutboxOutput::Event(OutboxEvent::DeadLettered {
                reason: DeadReason::SecretUnavailable { .. },
                attempts: 0,
                ..
            }))
        ));
        o.set_signing_keys("k", SigningKeys::new(WebhookSecret::from_bytes(b"s")));
        o.replay("e", t(5)).unwrap();
        assert!(o.poll_transmit(t(5)).is_some());
    }

    #[test]
    fn one_task_waits_for_its_previous_event_others_do_not() {
        let mut o = WebhookOutbox::new(exact());
        for (id, task) in [("a1", "A"), ("a2", "A"), ("b1", "B")] {
            o.enqueue(event(id, task), t(0)).unwrap();
        }
        // Another subscriber of task A has its own line.
        o.enqueue(
            WebhookEvent::new("a1-other", "A", "https://93.184.216.35/h", Vec::new()),
            t(0),
        )
        .unwrap();
        let sent: Vec<Delivery> = std::iter::from_fn(|| o.poll_transmit(t(0))).collect();
        let ids: Vec<&str> = sent.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, ["a1", "b1", "a1-other"]);
        // a2 goes only once a1 is done or dead, even though a1 is being retried.
        o.handle_result(sent[0].id, DeliveryOutcome::status(500), t(0))
            .unwrap();
        assert!(o.poll_transmit(t(500)).is_none());
        let retry = o.poll_transmit(t(1000)).unwrap();
        assert_eq!(retry.event_id, "a1");
        o.handle_result(retry.id, DeliveryOutcome::status(410), t(1000))
            .unwrap();
        assert_eq!(o.poll_transmit(t(1000)).unwrap().event_id, "a2");
    }

    #[test]
    fn per_url_rate_is_ten_a_second() {
        let mut o = WebhookOutbox::new(exact());
        for i in 0..25 {
            o.enqueue(event(&format!("e{i}"), &format!("t{i}")), t(0))
                .unwrap();
        }
        o.enqueue(
            WebhookEvent::new("other", "x", "https://93.184.216.35/", Vec::new()),
            t(0),
        )
        .unwrap();
        let mut at0 = 0;
        while let Some(d) = o.poll_transmit(t(0)) {
            at0 += 1;
            o.handle_result(d.id, DeliveryOutcome::status(200), t(0))
                .unwrap();
        }
        assert_eq!(at0, 11, "a burst of 10 to the busy URL plus the other URL");
        assert_eq!(o.poll_timeout(), Some(t(100)));
        assert!(o.poll_transmit(t(99)).is_none());
        assert!(o.poll_transmit(t(100)).is_some());
        assert!(o.poll_transmit(t(100)).is_none());
        let mut by_1s = 0;
        let mut now = t(100);
        while now <= t(1100) {
            while o.poll_transmit(now).is_some() {
                by_1s += 1;
            }
            now = o.poll_timeout().unwrap();
        }
        assert_eq!(by_1s, 10, "one every 100 ms after the burst");
    }

    #[test]
    fn bounded_with_typed_errors() {
        let mut o = WebhookOutbox::new(OutboxConfig {
            capacity: 2,
            max_body_bytes: 4,
            ..exact()
        });
        o.enqueue(event("e1", "t").signed_with("nope"), t(0))
            .unwrap_err();
        o.enqueue(WebhookEvent::new("e1", "t", URL, vec![0; 4]), t(0))
            .unwrap();
        assert_eq!(
            o.enqueue(WebhookEvent::new("e1", "t", URL, Vec::new()), t(0)),
            Err(EnqueueError::Duplicate {
                event_id: "e1".into()
            })
        );
        assert_eq!(
            o.enqueue(WebhookEvent::new("e2", "t", URL, vec![0; 5]), t(0)),
            Err(EnqueueError::BodyTooLarge { len: 5, max: 4 })
        );
        for (id, url) in [("", URL), ("a b", URL), ("é", URL)] {
            assert!(
                matches!(
                    o.enqueue(WebhookEvent::new(id, "t", url, Vec::new()), t(0)),
                    Err(EnqueueError::InvalidEventId { .. })
                ),
                "{id:?}"
            );
        }
        for url in ["/relative", "ftp://x/", "https://", "not a url"] {
            assert!(
                matches!(
                    o.enqueue(WebhookEvent::new("e3", "t", url, Vec::new()), t(0)),
                    Err(EnqueueError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
        o.enqueue(WebhookEvent::new("e2", "u", URL, Vec::new()), t(0))
            .unwrap();
        let d = o.poll_transmit(t(0)).unwrap();
        o.handle_result(d.id, DeliveryOutcome::status(400), t(0))
            .unwrap();
        let err = o
            .enqueue(WebhookEvent::new("e3", "t", URL, Vec::new()), t(0))
            .unwrap_err();
        assert_eq!(
            err,
            EnqueueError::Full {
                held: 2,
                dead_letters: 1,
                capacity: 2
            }
        );
        assert!(err.to_string().contains("replay or discard dead letters"));
        assert_eq!(
            o.discard_dead_letter(&d.event_id).unwrap().dead_reason,
            Some(DeadReason::Rejected { status: 400 })
        );
        assert_eq!(
            o.discard_dead_letter(&d.event_id),
            Err(OutboxError::NotDeadLetter(d.event_id.clone()))
        );
        o.enqueue(WebhookEvent::new("e3", "t", URL, Vec::new()), t(0))
            .unwrap();
        assert_eq!(
            o.handle_result(d.id, DeliveryOutcome::status(200), t(0)),
            Err(OutboxError::UnknownDelivery(d.id))
        );
        assert_eq!(
            o.replay("e3", t(0)),
            Err(OutboxError::NotDeadLetter("e3".into()))
        );
    }

    #[test]
    fn a_lost_attempt_times_out_at_its_lease_and_a_late_report_is_ignored() {
        let mut o = WebhookOutbox::new(exact());
        o.enqueue(event("e", "t"), t(0)).unwrap();
        let d = o.poll_transmit(t(0)).unwrap();
        assert_eq!(o.poll_timeout(), Some(t(30_000)));
        o.handle_timeout(t(29_999));
        assert_eq!(o.in_flight(), 1);
        o.handle_timeout(t(30_000));
        assert_eq!(o.in_flight(), 0);
        assert!(matches!(
            o.poll_event(),
            Some(OutboxEvent::RetryScheduled {
                failure: Failure::TimedOut,
                ..
            })
        ));
        assert_eq!(o.poll_timeout(), Some(t(31_000)));
        assert_eq!(
            o.handle_result(d.id, DeliveryOutcome::status(200), t(30_001)),
            Err(OutboxError::UnknownDelivery(d.id))
        );
        assert_eq!(o.record("e").unwrap().attempts, 1);
    }

    #[test]
    fn url_refused_at_delivery_time_is_a_dead_letter() {
        let mut o = WebhookOutbox::new(exact());
        o.enqueue(event("e", "t"), t(0)).unwrap();
        let d = o.poll_transmit(t(0)).unwrap();
        let rejection = crate::webhook::UrlPolicy::default()
            .check("https://rebind.example/", &["10.0.0.1".parse().unwrap()])
            .unwrap_err();
        o.handle_result(d.id, DeliveryOutcome::UrlRefused(rejection), t(0))
            .unwrap();
        let dead: Vec<_> = o.dead_letters().collect();
        assert!(
            matches!(&dead[0].dead_reason, Some(DeadReason::UrlRefused { reason }) if reason.contains("10.0.0.1"))
        );
    }

    #[test]
    fn adopted_events_of_a_stopped_replica_are_sent_once_with_fresh_numbers() {
        let mut dead_replica = WebhookOutbox::new(exact());
        for (id, task) in [("x1", "X"), ("x2", "X")] {
            dead_replica.enqueue(event(id, task), t(0)).unwrap();
        }
        let _ = dead_replica.poll_transmit(t(0)).unwrap(); // x1 in flight when it died
        let orphans: Vec<OutboxRecord> = dead_replica.records().cloned().collect();

        let mut o = WebhookOutbox::new(exact());
        o.enqueue(event("own", "O"), t(0)).unwrap();
        let own_seq = o.record("own").unwrap().seq;
        assert_eq!(o.adopt(orphans.clone(), t(10)).unwrap(), 2);
        assert_eq!(
            o.adopt(orphans, t(10)).unwrap(),
            0,
            "held events are skipped"
        );
        assert_eq!(o.len(), 3);
        let seqs: Vec<u64> = ["x1", "x2"].map(|id| o.record(id).unwrap().seq).to_vec();
        assert!(
            seqs.iter().all(|s| *s > own_seq),
            "{seqs:?} after {own_seq}"
        );
        let sent: Vec<String> = std::iter::from_fn(|| o.poll_transmit(t(10)))
            .map(|d| d.event_id)
            .collect();
        assert_eq!(
            sent,
            ["own", "x1"],
            "x1's attempt is made again; x2 waits for x1"
        );
        let mut bad = event_record_for_adopt();
        bad.url = "ftp://x/".into();
        assert!(matches!(
            o.adopt([bad], t(10)),
            Err(RestoreError::InvalidRecord { .. })
        ));
    }

    fn event_record_for_adopt() -> OutboxRecord {
        let mut o = WebhookOutbox::new(exact());
        o.enqueue(event("bad", "B"), t(0)).unwrap();
        o.record("bad").unwrap().clone()
    }

    #[test]
    fn restore_resumes_after_a_crash() {
        let mut o = WebhookOutbox::new(exact());
        for (id, task) in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("c1", "C")] {
            o.enqueue(event(id, task), t(0)).unwrap();
        }
        let sent: Vec<Delivery> = std::iter::from_fn(|| o.poll_transmit(t(0))).collect();
        assert_eq!(sent.len(), 3); // a1, b1, c1 in flight
        o.handle_result(sent[1].id, DeliveryOutcome::status(500), t(0))
            .unwrap(); // b1 retry at +1 s
        o.handle_result(sent[2].id, DeliveryOutcome::status(404), t(0))
            .unwrap(); // c1 dead
                       // The store round-trips records as JSON.
        let json = serde_json::to_string(&o.records().collect::<Vec<_>>()).unwrap();
        let stored: Vec<OutboxRecord> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            stored.iter().map(|r| r.state).collect::<Vec<_>>(),
            [
                RecordState::InFlight,
                RecordState::Pending,
                RecordState::Pending,
                RecordState::Dead
            ]
        );
        // Crash; restart 500 ms later.
        let mut r = WebhookOutbox::restore(exact(), stored.into_iter().rev(), t(500)).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(
            r.dead_letters()
                .map(|r| r.event_id.as_str())
                .collect::<Vec<_>>(),
            ["c1"]
        );
        let again: Vec<String> = std::iter::from_fn(|| r.poll_transmit(t(500)))
            .map(|d| d.event_id)
            .collect();
        assert_eq!(
            again,
            ["a1"],
            "a1 is re-sent (at-least-once); b1 waits for its retry time; a2 for a1"
        );
        assert_eq!(
            r.record("a1").unwrap().attempts,
            1,
            "the interrupted attempt is repeated"
        );
        assert_eq!(r.poll_transmit(t(1000)).unwrap().event_id, "b1");
        r.replay("c1", t(1000)).unwrap();
        assert_eq!(r.poll_transmit(t(1000)).unwrap().event_id, "c1");
        r.enqueue(event("d1", "D"), t(1000)).unwrap();
        assert!(r.record("d1").unwrap().seq > r.record("c1").unwrap().seq);

        let rec = r.record("a2").unwrap().clone();
        assert!(matches!(
            WebhookOutbox::restore(exact(), [rec.clone(), rec.clone()], t(0)),
            Err(RestoreError::Duplicate { what: "seq", .. })
        ));
        let bad = OutboxRecord {
            state: RecordState::Dead,
            ..rec.clone()
        };
        assert!(matches!(
            WebhookOutbox::restore(exact(), [bad], t(0)),
            Err(RestoreError::InvalidRecord { .. })
        ));
        let bad_url = OutboxRecord {
            url: "nope".into(),
            ..rec
        };
        assert!(matches!(
            WebhookOutbox::restore(exact(), [bad_url], t(0)),
            Err(RestoreError::InvalidRecord { .. })
        ));
    }

    #[test]
    fn clock_steps_back_never_panic_or_report_the_past() {
        let mut o = WebhookOutbox::new(OutboxConfig::default());
        o.enqueue(event("e", "t"), t(10_000)).unwrap();
        let d = o.poll_transmit(t(10_000)).unwrap();
        o.handle_result(d.id, DeliveryOutcome::TimedOut, t(0))
            .unwrap(); // clock went back 10 s
        let next = o.poll_timeout().unwrap();
        assert!(next > t(10_000));
        assert!(o.poll_transmit(t(5_000)).is_none());
        assert!(o.poll_transmit(next).is_some());
        let mut far = WebhookOutbox::new(OutboxConfig {
            lease: Duration::MAX,
            ..OutboxConfig::default()
        });
        far.enqueue(event("e", "t"), UnixTime::from_micros(i64::MAX))
            .unwrap();
        let d = far.poll_transmit(UnixTime::from_micros(i64::MAX)).unwrap();
        far.handle_result(
            d.id,
            DeliveryOutcome::status(503),
            UnixTime::from_micros(i64::MAX),
        )
        .unwrap();
        assert!(far.poll_timeout().is_some());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue { task: u8, url: u8 },
        Transmit,
        Result { pick: usize, status: u16 },
        TimedOut { pick: usize },
        Advance { ms: u32 },
        Replay { pick: usize },
        Discard { pick: usize },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..3, 0u8..2).prop_map(|(task, url)| Op::Enqueue { task, url }),
            4 => Just(Op::Transmit),
            4 => (any::<usize>(), prop_oneof![Just(200u16), Just(204), Just(301), Just(404), Just(408), Just(429), Just(500), Just(503)])
                .prop_map(|(pick, status)| Op::Result { pick, status }),
            1 => any::<usize>().prop_map(|pick| Op::TimedOut { pick }),
            3 => (0u32..40_000).prop_map(|ms| Op::Advance { ms }),
            1 => any::<usize>().prop_map(|pick| Op::Replay { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Discard { pick }),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn outbox_invariants(ops in proptest::collection::vec(op(), 1..120)) {
            let cfg = OutboxConfig { capacity: 8, rate_burst: 2, ..OutboxConfig::default() };
            let mut o = WebhookOutbox::new(cfg.clone());
            let mut now = t(0);
            let mut next_id = 0u32;
            let mut enqueued: BTreeSet<String> = BTreeSet::new();
            let mut delivered: BTreeSet<String> = BTreeSet::new();
            let mut discarded: BTreeSet<String> = BTreeSet::new();
            let mut flying: Vec<(DeliveryId, String, (String, String))> = Vec::new();
            let mut ok_reported: BTreeSet<String> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Enqueue { task, url } => {
                        let id = format!("ev{next_id}");
                        next_id += 1;
                        let url = format!("https://93.184.216.{}/h", 30 + url);
                        let ev = WebhookEvent::new(&id, format!("task{task}"), url, b"{}".to_vec());
                        match o.enqueue(ev, now) {
                            Ok(()) => { enqueued.insert(id); }
                            Err(EnqueueError::Full { held, .. }) => prop_assert_eq!(held, cfg.capacity),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Transmit => {
                        while let Some(d) = o.poll_transmit(now) {
                            let r = o.record(&d.event_id).unwrap();
                            let key = (r.url.clone(), r.task_id.clone());
                            // Attempts whose lease expired are no longer in flight.
                            flying.retain(|f| o.in_flight.contains_key(&f.0));
                            prop_assert!(!flying.iter().any(|f| f.2 == key), "two in flight for one task and URL");
                            prop_assert!(d.attempt <= cfg.max_attempts);
                            flying.push((d.id, d.event_id, key));
                        }
                    }
                    Op::Result { pick, status } if !flying.is_empty() => {
                        let (id, ev, _) = flying.remove(pick % flying.len());
                        if o.handle_result(id, DeliveryOutcome::status(status), now).is_ok() && (200..300).contains(&status) {
                            ok_reported.insert(ev);
                        }
                    }
                    Op::TimedOut { pick } if !flying.is_empty() => {
                        let (id, _, _) = flying.remove(pick % flying.len());
                        let _ = o.handle_result(id, DeliveryOutcome::TimedOut, now);
                    }
                    Op::Advance { ms } => {
                        now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                        o.handle_timeout(now);
                    }
                    Op::Replay { pick } => {
                        let dead: Vec<String> = o.dead_letters().map(|r| r.event_id.clone()).collect();
                        if !dead.is_empty() {
                            o.replay(&dead[pick % dead.len()], now).unwrap();
                        }
                    }
                    Op::Discard { pick } => {
                        let dead: Vec<String> = o.dead_letters().map(|r| r.event_id.clone()).collect();
                        if !dead.is_empty() {
                            let id = &dead[pick % dead.len()];
                            o.discard_dead_letter(id).unwrap();
                            discarded.insert(id.clone());
                        }
                    }
                    Op::Restart => {
                        let stored: Vec<OutboxRecord> = o.records().cloned().collect();
                        let json = serde_json::to_vec(&stored).unwrap();
                        let back: Vec<OutboxRecord> = serde_json::from_slice(&json).unwrap();
                        while let Some(e) = o.poll_event() {
                            if let OutboxEvent::Delivered { event_id, .. } = e { delivered.insert(event_id); }
                        }
                        o = WebhookOutbox::restore(cfg.clone(), back, now).unwrap();
                        flying.clear();
                    }
                    _ => {}
                }
                while let Some(e) = o.poll_event() {
                    match e {
                        OutboxEvent::Delivered { event_id, .. } => {
                            prop_assert!(ok_reported.contains(&event_id), "delivered without a 2xx");
                            prop_assert!(delivered.insert(event_id), "delivered twice");
                        }
                        OutboxEvent::RetryScheduled { next_attempt_at, .. } => prop_assert!(next_attempt_at > now),
                        OutboxEvent::DeadLettered { .. } => {}
                    }
                }
                // Nothing vanishes: every event is delivered, discarded, or held.
                for id in &enqueued {
                    let held = o.record(id).is_some();
                    let gone = delivered.contains(id) || discarded.contains(id);
                    prop_assert!(held != gone, "{} held={} gone={}", id, held, gone);
                }
                prop_assert!(o.len() <= cfg.capacity);
                prop_assert_eq!(o.dead_letters().count(), o.dead_letters);
                if let Some(d) = o.poll_timeout() {
                    prop_assert!(d > now, "deadline {:?} not after {:?}", d, now);
                }
                prop_assert!(o.in_flight() <= o.len());
            }
        }
    }
}
