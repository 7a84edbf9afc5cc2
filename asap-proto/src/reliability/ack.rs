//! Sender-side acknowledgements over WebSocket (ADR-16, spec 13.3/13.4): which
//! envelopes must be acked, when to retransmit them, and when to give up.
//!
//! [`AckTracker`] remembers every envelope sent with `requires_ack: true`
//! until a `MessageAck` names it, retransmits the **same envelope** (same id,
//! same timestamp) when no ack comes, resends everything pending after a
//! reconnect, and finally reports [`AckEvent::GaveUp`], which the adapter feeds
//! to the peer's [`CircuitBreaker`](super::CircuitBreaker).
//!
//! # Schedule
//!
//! After each transmission the tracker waits `min(ack_timeout × 2^n, max_wait)`
//! (n = retransmissions so far; plus caller-seeded jitter if configured): by
//! default **30, 60, 120, 120 s**, i.e. transmissions at 0, 30, 90 and 210 s
//! and a give-up at 330 s. The reference resends every 30 s without backoff
//! (spec 13.4 \[DOC≠CODE\]); set `max_wait = ack_timeout` for its schedule.
//!
//! # The receiver's replay window
//!
//! A retransmission carries the original timestamp, and the receiver refuses an
//! envelope more than 300 s old (spec 10.1), so the reference's retransmissions
//! are refused once the envelope is older than that. The tracker therefore
//! computes, when it starts tracking, the last moment a transmission is still
//! accepted: `timestamp + replay_window.max_age − clock_skew` on the sender's
//! wall clock (the skew margin, default 30 s, absorbs a receiver clock that is
//! ahead and the transit time). A retransmission due after that moment is
//! moved *earlier*, to that moment, if the tracker has by then waited at least
//! `ack_timeout` for an ack; otherwise no further transmission is made, the
//! tracker waits for an ack to the last one and then gives up with
//! [`AckGiveUp::ReplayWindowClosed`]. A reconnect after that moment gives up
//! at once (nothing sent on the old connection can be acked on the new one).
//! It never sends a retransmission that the receiver would refuse.
//!
//! # Reconnects
//!
//! Pending entries belong to the peer, not to a connection: they survive a
//! disconnect. [`handle_reconnect(now)`](AckTracker::handle_reconnect) resends
//! every pending envelope at once and restarts its wait; a reconnect resend
//! does not use up a retry (the connection was lost, the peer did not fail to
//! answer), and the replay window bounds how long this can go on. While the
//! connection is down the adapter may simply stop calling `handle_timeout`
//! (retransmissions pause without using up retries), or drop the
//! `Retransmit`s it cannot send.
//!
//! # Ack statuses
//!
//! Any `MessageAck` status ends the entry (`Acked { status }`), as in the
//! reference — which only ever sends `received`. With
//! [`AckConfig::await_processed`] (for peers known to send `processed`, such
//! as asap-rs with deduplication), a `received` ack stops retransmissions and
//! the entry waits up to `processed_timeout` for `processed` or `rejected`.
//!
//! # Call protocol
//!
//! 1. Before sending: [`set_requires_ack(&mut envelope)`](set_requires_ack)
//!    (sets the flag for `task.request`, `task.cancel`, `state.restore`,
//!    `message.send` in every spelling; returns whether the envelope must be
//!    acked). Send it, then [`track(&envelope, now, wall_now)`](AckTracker::track).
//! 2. Incoming `asap.ack` frames: [`handle_ack(&ack, now)`](AckTracker::handle_ack).
//! 3. Sleep until [`poll_timeout()`](AckTracker::poll_timeout), then
//!    [`handle_timeout(now)`](AckTracker::handle_timeout) with the real `now`.
//! 4. After a reconnect: [`handle_reconnect(now)`](AckTracker::handle_reconnect);
//!    when the peer is abandoned for good: [`handle_close(now)`](AckTracker::handle_close).
//! 5. After every input, drain [`poll_event()`](AckTracker::poll_event):
//!    `Retransmit` → send the envelope in a new frame (new JSON-RPC id);
//!    `Acked` → `breaker.record_success(now)` (the peer answered; the reference
//!    records nothing here, so its failures never reset over WebSocket);
//!    `GaveUp` → `breaker.record_failure(now)` when
//!    [`AckGiveUp::is_peer_failure`], and fail the request.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use asap_proto::model::{AckStatus, AgentUrn, Envelope, MessageAck, Payload, TaskCancel, Timestamp, UnixTime};
//! use asap_proto::reliability::{set_requires_ack, AckConfig, AckEvent, AckTracker, CircuitBreaker};
//!
//! let mut now = Instant::now();                       // the adapter's monotonic clock
//! let wall = UnixTime::from_secs(1_767_225_600);      // ... and its wall clock
//! let mut tracker = AckTracker::new(AckConfig::default()); // one per peer, outlives connections
//! let mut breaker = CircuitBreaker::default();
//! let mut sent: Vec<Envelope> = Vec::new();           // the "connection"
//!
//! let mut env = Envelope::new("01KDXZ0000ENVREQ0000000001".into(), Timestamp::from_unix(wall),
//!     AgentUrn::new("urn:asap:agent:client").unwrap(), AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
//!     Payload::TaskCancel(TaskCancel { task_id: "t1".into(), reason: None }));
//! breaker.try_acquire(now).expect("circuit closed");
//! if set_requires_ack(&mut env) {                     // task.cancel: yes
//!     sent.push(env.clone());                         // adapter: send the frame
//!     tracker.track(&env, now, wall).unwrap();
//! }
//!
//! let mut drain = |tracker: &mut AckTracker, breaker: &mut CircuitBreaker, sent: &mut Vec<Envelope>, now| {
//!     while let Some(event) = tracker.poll_event() {
//!         match event {
//!             AckEvent::Retransmit { envelope, .. } => sent.push(*envelope), // new frame, same envelope
//!             AckEvent::Acked { .. } => breaker.record_success(now),
//!             AckEvent::GaveUp { reason, .. } => if reason.is_peer_failure() { breaker.record_failure(now) },
//!             _ => {}
//!         }
//!     }
//! };
//!
//! // No ack within 30 s: the same envelope goes out again.
//! now = tracker.poll_timeout().unwrap();
//! tracker.handle_timeout(now);
//! drain(&mut tracker, &mut breaker, &mut sent, now);
//! assert_eq!(sent.len(), 2);
//! assert_eq!(sent[1], sent[0]);
//!
//! // The connection drops and comes back: everything pending is resent.
//! now += Duration::from_secs(5);
//! tracker.handle_reconnect(now);
//! drain(&mut tracker, &mut breaker, &mut sent, now);
//! assert_eq!(sent.len(), 3);
//!
//! // The ack arrives (adapter: decoded from an `asap.ack` frame).
//! let ack = MessageAck { original_envelope_id: env.id.clone(), status: AckStatus::Received, error: None };
//! tracker.handle_ack(&ack, now);
//! drain(&mut tracker, &mut breaker, &mut sent, now);
//! assert!(tracker.is_empty());
//! assert_eq!(tracker.poll_timeout(), None);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::backoff::{Backoff, JitterSource};
use crate::model::{AckStatus, Envelope, MessageAck, PayloadKind, UnixTime};
use crate::server::ReplayWindow;

/// Whether the reference client sets `requires_ack` for this payload type:
/// `task.request`, `task.cancel`, `state.restore` and `message.send` in every
/// spelling (PascalCase, dotted, snake). The reference lists `state_restore`
/// but not `state.restore` (spec 13.3 \[QUIRK\]); asap-rs includes every spelling.
///
/// ```
/// use asap_proto::reliability::requires_ack;
/// assert!(requires_ack("task.request") && requires_ack("StateRestore") && requires_ack("state.restore"));
/// assert!(!requires_ack("TaskUpdate") && !requires_ack("task.response") && !requires_ack("custom"));
/// ```
#[must_use]
pub fn requires_ack(payload_type: &str) -> bool {
    PayloadKind::from_payload_type(payload_type).is_some_and(PayloadKind::is_state_changing)
}

/// Sets `requires_ack: true` on an envelope about to be sent when its payload
/// type [`requires_ack`]; returns whether the envelope now requires an ack
/// (also true when the caller had set the flag itself): track it if so.
pub fn set_requires_ack(envelope: &mut Envelope) -> bool {
    if requires_ack(&envelope.payload_type) {
        envelope.requires_ack = true;
    }
    envelope.requires_ack
}

/// Settings of an [`AckTracker`]. Defaults: ack timeout 30 s, 3 retries, waits
/// doubling to 120 s, no jitter, the reference's 300 s replay window with a
/// 30 s skew margin, 1 024 pending envelopes, `received` ends an entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AckConfig {
    /// Wait for an ack after the first transmission (the reference's
    /// `ack_timeout_seconds`). Default 30 s; waits under 1 ms act as 1 ms.
    pub ack_timeout: Duration,
    /// Retransmissions after ack timeouts before giving up (reconnect resends
    /// do not count). Default 3.
    pub max_retries: u32,
    /// Cap of the doubling wait. Default 120 s; `ack_timeout` gives the
    /// reference's constant schedule.
    pub max_wait: Duration,
    /// Largest jitter as a fraction of each wait. Default 0 (exact schedule);
    /// with many clients use e.g. 0.1 and a random `jitter_seed`.
    pub jitter_ratio: f64,
    /// Seed of the jitter sequence (from the adapter's randomness).
    pub jitter_seed: u64,
    /// The receiver's replay window (its `max_age` matters). Default 300 s.
    pub replay_window: ReplayWindow,
    /// How far the receiver's clock may be ahead of ours, plus transit time:
    /// taken off the replay window. Default 30 s.
    pub clock_skew: Duration,
    /// Envelopes awaiting acks plus outcome events not yet drained. Default 1 024.
    pub max_pending: usize,
    /// Keep an entry after a `received` ack until `processed` or `rejected`.
    /// Default false (the reference: any status clears; it never sends `processed`).
    pub await_processed: bool,
    /// With `await_processed`: how long to wait for `processed` after
    /// `received`. Default 300 s.
    pub processed_timeout: Duration,
}

impl Default for AckConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(30),
            max_retries: 3,
            max_wait: Duration::from_secs(120),
            jitter_ratio: 0.0,
            jitter_seed: 0,
            replay_window: ReplayWindow::default(),
            clock_skew: Duration::from_secs(30),
            max_pending: 1_024,
            await_processed: false,
            processed_timeout: Duration::from_secs(300),
        }
    }
}

/// Why a retransmission is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetransmitCause {
    /// No ack arrived within the wait.
    AckTimeout,
    /// The connection was re-established ([`AckTracker::handle_reconnect`]).
    Reconnect,
}

/// Why the tracker stopped waiting for an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckGiveUp {
    /// Every retry was sent and the last wait passed without an ack.
    NoAck,
    /// A further transmission would be refused by the receiver's replay window
    /// (the envelope's timestamp is too old), and the last wait passed.
    ReplayWindowClosed,
    /// `received` came but `processed` did not within `processed_timeout`.
    NotProcessed,
    /// The adapter closed the tracker ([`AckTracker::handle_close`]).
    Closed,
}

impl AckGiveUp {
    /// Whether this counts against the peer (`breaker.record_failure`): all but `Closed`.
    #[must_use]
    pub fn is_peer_failure(self) -> bool {
        !matches!(self, Self::Closed)
    }
}

/// What the tracker asks of its adapter, drained with [`AckTracker::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AckEvent {
    /// Send this envelope again, unchanged (same id and timestamp,
    /// `requires_ack: true`), in a new frame with a new JSON-RPC id.
    Retransmit {
        /// The envelope as tracked.
        envelope: Box<Envelope>,
        /// Which transmission this is (2 = the first retransmission).
        transmission: u32,
        /// Why.
        cause: RetransmitCause,
    },
    /// A `MessageAck` ended the entry.
    Acked {
        /// The acknowledged envelope.
        envelope_id: String,
        /// The ack's status (`rejected` included: the peer has answered).
        status: AckStatus,
        /// The ack's `error` (set with `rejected`).
        error: Option<String>,
        /// Transmissions made.
        transmissions: u32,
    },
    /// The tracker stopped waiting; the envelope may not have been delivered.
    GaveUp {
        /// The envelope.
        envelope_id: String,
        /// Why.
        reason: AckGiveUp,
        /// Transmissions made.
        transmissions: u32,
    },
}

/// What [`AckTracker::handle_ack`] did with an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMatch {
    /// It ended a pending entry (an `Acked` event is queued).
    Cleared,
    /// `received` with `await_processed`: the entry now waits for `processed`.
    AwaitingProcessed,
    /// No pending envelope has that id (late, duplicate, or never tracked): ignored.
    Unknown,
}

/// Why [`AckTracker::track`] refused an envelope; nothing was tracked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The envelope does not ask for an ack, so the peer will never send one.
    #[error("caller bug: envelope {envelope_id:?} was sent without requires_ack; call set_requires_ack before sending it")]
    NotRequested {
        /// The envelope's id.
        envelope_id: String,
    },
    /// Receivers only ack envelopes with a non-empty id (spec 13.3).
    #[error("caller bug: an envelope with an empty id is never acknowledged; give it an id")]
    EmptyEnvelopeId,
    /// The envelope is pending already: retransmitting it is the tracker's job.
    #[error("caller bug: envelope {envelope_id:?} already awaits its ack; let the tracker retransmit it")]
    AlreadyPending {
        /// The envelope's id.
        envelope_id: String,
    },
    /// As many envelopes await acks (or undrained outcome events) as `max_pending` allows.
    #[error("local capacity: {limit} envelopes already await acks; drain poll_event or wait for acks before sending more")]
    Full {
        /// The configured cap.
        limit: usize,
    },
}

/// When a transmission of an entry would still pass the receiver's replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Up to and including this instant.
    Until(Instant),
    /// Not any more (the timestamp was already too old when tracking began).
    Closed,
}

impl Window {
    fn allows(self, now: Instant) -> bool {
        matches!(self, Self::Until(last) if now <= last)
    }
}

/// What happens at an entry's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Retransmit,
    GiveUp(AckGiveUp),
}

#[derive(Debug, Clone)]
struct Pending {
    envelope: Envelope,
    /// Transmissions handed out (the first, by the caller, included).
    transmissions: u32,
    /// Retransmissions after ack timeouts (reconnect resends excluded).
    retries: u32,
    window: Window,
    /// End of the wait for an ack to the latest transmission.
    ack_until: Instant,
    deadline: Instant,
    due: Due,
    /// `received` seen while awaiting `processed`.
    received: bool,
    /// A `Retransmit` marker for this entry is in the queue and not yet drained.
    retransmit_queued: Option<RetransmitCause>,
}

#[derive(Debug, Clone)]
enum Queued {
    /// Built when drained, so an entry acked meanwhile is not retransmitted.
    Retransmit(u64),
    Outcome(AckEvent),
}

/// The sender's ack state for one peer; see the [module docs](self) for the
/// schedule and the call protocol.
#[derive(Debug, Clone)]
pub struct AckTracker {
    config: AckConfig,
    backoff: Backoff,
    jitter: JitterSource,
    /// Pending entries by tracking order (reconnect resends keep it).
    entries: BTreeMap<u64, Pending>,
    ids: HashMap<String, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    queue: VecDeque<Queued>,
    outcomes_queued: usize,
    next_seq: u64,
    last_now: Option<Instant>,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self::new(AckConfig::default())
    }
}

/// `t + d`, saturating at the latest representable instant.
fn later(t: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(x) = t.checked_add(d) {
            return x;
        }
        d /= 2;
    }
}

const MIN_WAIT: Duration = Duration::from_millis(1);

impl AckTracker {
    /// An empty tracker.
    #[must_use]
    pub fn new(config: AckConfig) -> Self {
        let ack_timeout = config.ack_timeout.max(MIN_WAIT);
        let config = AckConfig {
            ack_timeout,
            max_wait: config.max_wait.max(MIN_WAIT),
            max_pending: config.max_pending.max(1),
            ..config
        };
        Self {
            backoff: Backoff {
                base: ack_timeout,
                max: config.max_wait,
                jitter_ratio: config.jitter_ratio,
            },
            jitter: JitterSource::new(config.jitter_seed),
            config,
            entries: BTreeMap::new(),
            ids: HashMap::new(),
            deadlines: BTreeSet::new(),
            queue: VecDeque::new(),
            outcomes_queued: 0,
            next_seq: 0,
            last_now: None,
        }
    }

    /// The configuration (waits under 1 ms and a cap of 0 already raised).
    #[must_use]
    pub fn config(&self) -> &AckConfig {
        &self.config
    }

    /// Envelopes awaiting their ack.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing awaits an ack.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the envelope with this id awaits its ack.
    #[must_use]
    pub fn is_pending(&self, envelope_id: &str) -> bool {
        self.ids.contains_key(envelope_id)
    }

    fn see(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |t| t.max(now)));
    }

    /// Starts waiting for the ack of an envelope just sent (its first
    /// transmission). `wall_now` is the adapter's wall clock, to place the
    /// envelope's timestamp in the receiver's replay window.
    pub fn track(
        &mut self,
        envelope: &Envelope,
        now: Instant,
        wall_now: UnixTime,
    ) -> Result<(), AckError> {
        self.see(now);
        if envelope.id.is_empty() {
            return Err(AckError::EmptyEnvelopeId);
        }
        if !envelope.requires_ack {
            return Err(AckError::NotRequested {
                envelope_id: envelope.id.clone(),
            });
        }
        if self.ids.contains_key(&envelope.id) {
            return Err(AckError::AlreadyPending {
                envelope_id: envelope.id.clone(),
            });
        }
        if self.entries.len() + self.outcomes_queued >= self.config.max_pending {
            return Err(AckError::Full {
                limit: self.config.max_pending,
            });
        }
        // The last wall-clock moment the receiver still accepts the timestamp,
        // mapped onto the monotonic clock.
        let last_accepted = envelope
            .timestamp
            .unix()
            .saturating_add(self.config.replay_window.max_age)
            .saturating_sub(self.config.clock_skew);
        let left = last_accepted.micros_since(wall_now);
        let window = match u64::try_from(left) {
            Ok(us) => Window::Until(later(now, Duration::from_micros(us))),
            Err(_) => Window::Closed,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Pending {
            envelope: envelope.clone(),
            transmissions: 1,
            retries: 0,
            window,
            ack_until: now,
            deadline: now,
            due: Due::Retransmit,
            received: false,
            retransmit_queued: None,
        };
        Self::schedule(
            &self.config,
            &self.backoff,
            &mut self.jitter,
            &mut entry,
            now,
        );
        self.deadlines.insert((entry.deadline, seq));
        self.ids.insert(envelope.id.clone(), seq);
        self.entries.insert(seq, entry);
        Ok(())
    }

    /// Sets the next deadline of `entry` after a transmission at `now`
    /// (always later than `now`).
    fn schedule(
        config: &AckConfig,
        backoff: &Backoff,
        jitter: &mut JitterSource,
        entry: &mut Pending,
        now: Instant,
    ) {
        let wait = backoff
            .delay(entry.retries, jitter.next_unit())
            .max(MIN_WAIT);
        entry.ack_until = later(now, wait);
        let (deadline, due) = if entry.retries >= config.max_retries {
            (entry.ack_until, Due::GiveUp(AckGiveUp::NoAck))
        } else {
            match entry.window {
                Window::Until(last) if entry.ack_until <= last => {
                    (entry.ack_until, Due::Retransmit)
                }
                // Pulled in to the last accepted moment, having waited at least the ack timeout.
                Window::Until(last) if last >= later(now, config.ack_timeout) => {
                    (last, Due::Retransmit)
                }
                _ => (entry.ack_until, Due::GiveUp(AckGiveUp::ReplayWindowClosed)),
            }
        };
        entry.deadline = deadline;
        entry.due = due;
    }

    /// Re-files `seq` from its old deadline under its current one.
    fn refile(&mut self, seq: u64, old: Instant) {
        if let Some(e) = self.entries.get(&seq) {
            self.deadlines.remove(&(old, seq));
            self.deadlines.insert((e.deadline, seq));
        }
    }

    /// Asks for one more transmission of `seq`. One marker per entry: a second
    /// cause before the first is drained merges into it (one send).
    fn queue_retransmit(&mut self, seq: u64, cause: RetransmitCause) {
        if let Some(e) = self.entries.get_mut(&seq) {
            if e.retransmit_queued.replace(cause).is_none() {
                self.queue.push_back(Queued::Retransmit(seq));
            }
        }
    }

    fn finish(&mut self, seq: u64, outcome: impl FnOnce(&Pending) -> AckEvent) {
        if let Some(e) = self.entries.remove(&seq) {
            self.deadlines.remove(&(e.deadline, seq));
            self.ids.remove(&e.envelope.id);
            self.queue.push_back(Queued::Outcome(outcome(&e)));
            self.outcomes_queued += 1;
        }
    }

    fn give_up(&mut self, seq: u64, reason: AckGiveUp) {
        self.finish(seq, |e| AckEvent::GaveUp {
            envelope_id: e.envelope.id.clone(),
            reason,
            transmissions: e.transmissions,
        });
    }

    /// An `asap.ack` arrived (its `MessageAck` payload). Unknown ids are ignored.
    pub fn handle_ack(&mut self, ack: &MessageAck, now: Instant) -> AckMatch {
        self.see(now);
        let Some(&seq) = self.ids.get(&ack.original_envelope_id) else {
            return AckMatch::Unknown;
        };
        if ack.status == AckStatus::Received && self.config.await_processed {
            let Some(e) = self.entries.get_mut(&seq) else {
                return AckMatch::Unknown;
            };
            if !e.received {
                // The peer has it: no more timed retransmissions, only the wait for `processed`.
                let old = e.deadline;
                e.received = true;
                e.deadline = later(now, self.config.processed_timeout.max(MIN_WAIT));
                e.due = Due::GiveUp(AckGiveUp::NotProcessed);
                self.refile(seq, old);
            }
            return AckMatch::AwaitingProcessed;
        }
        self.finish(seq, |e| AckEvent::Acked {
            envelope_id: e.envelope.id.clone(),
            status: ack.status,
            error: ack.error.clone(),
            transmissions: e.transmissions,
        });
        AckMatch::Cleared
    }

    /// Acts on every deadline at or before `now`: retransmissions and give-ups.
    /// Harmless when called early or twice; afterwards every deadline is later than `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.see(now);
        while let Some(&(at, seq)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let Some(e) = self.entries.get_mut(&seq) else {
                self.deadlines.pop_first();
                continue;
            };
            match e.due {
                Due::GiveUp(reason) => self.give_up(seq, reason),
                Due::Retransmit if e.window.allows(now) => {
                    e.retries = e.retries.saturating_add(1);
                    Self::schedule(&self.config, &self.backoff, &mut self.jitter, e, now);
                    self.refile(seq, at);
                    self.queue_retransmit(seq, RetransmitCause::AckTimeout);
                }
                // Woken after the last accepted moment (a late timer): no
                // transmission; wait out the ack to the last one, then give up.
                Due::Retransmit if e.ack_until > now => {
                    e.due = Due::GiveUp(AckGiveUp::ReplayWindowClosed);
                    e.deadline = e.ack_until;
                    self.refile(seq, at);
                }
                Due::Retransmit => self.give_up(seq, AckGiveUp::ReplayWindowClosed),
            }
        }
    }

    /// The connection to the peer is back: every pending envelope still inside
    /// the receiver's replay window is resent now (in tracking order) and its
    /// wait restarts; the others give up ([`AckGiveUp::ReplayWindowClosed`]).
    pub fn handle_reconnect(&mut self, now: Instant) {
        self.see(now);
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            if !e.window.allows(now) {
                self.give_up(seq, AckGiveUp::ReplayWindowClosed);
                continue;
            }
            let old = e.deadline;
            if !e.received {
                Self::schedule(&self.config, &self.backoff, &mut self.jitter, e, now);
            }
            self.refile(seq, old);
            self.queue_retransmit(seq, RetransmitCause::Reconnect);
        }
    }

    /// The peer is abandoned for good (session closed, no reconnect): every
    /// pending envelope gives up with [`AckGiveUp::Closed`].
    pub fn handle_close(&mut self, now: Instant) {
        self.see(now);
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            self.give_up(seq, AckGiveUp::Closed);
        }
    }

    /// The next deadline: sleep until then and call
    /// [`handle_timeout`](Self::handle_timeout). Always later than the latest
    /// `now` this tracker was given; `None` when nothing is pending.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let &(at, _) = self.deadlines.first()?;
        match self.last_now {
            Some(seen) if at <= seen => Some(later(seen, Duration::from_nanos(1))),
            _ => Some(at),
        }
    }

    /// The next thing to do: retransmit, or an outcome to report.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<AckEvent> {
        while let Some(q) = self.queue.pop_front() {
            match q {
                Queued::Outcome(event) => {
                    self.outcomes_queued -= 1;
                    return Some(event);
                }
                Queued::Retransmit(seq) => {
                    let Some(e) = self.entries.get_mut(&seq) else {
                        continue; // acked or given up since: nothing to send
                    };
                    if let Some(cause) = e.retransmit_queued.take() {
                        // Counted when handed out: what was actually sent.
                        e.transmissions = e.transmissions.saturating_add(1);
                        return Some(AckEvent::Retransmit {
                            envelope: Box::new(e.envelope.clone()),
                            transmission: e.transmissions,
                            cause,
                        });
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Payload, TaskRequest, Timestamp};
    use crate::reliability::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
    use proptest::prelude::*;
    use serde_json::Value;

    /// `vectors/websocket/ack_retransmission.json`, `frames_received_by_peer[0]`
    /// (the later frames differ only in the JSON-RPC id: `ws-req-2`, `ws-req-3`).
    const RETRANSMITTED_FRAME: &str = r#"{"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": {"id": "01KDXZ0000ENVREQ0000000001", "asap_version": "0.1", "timestamp": "2026-01-01T00:00:00Z", "sender": "urn:asap:agent:client", "recipient": "urn:asap:agent:echo-server", "payload_type": "TaskCancel", "payload": {"task_id": "t1", "reason": null}, "correlation_id": null, "trace_id": null, "requires_ack": true, "extensions": null}}, "id": "ws-req-1"}"#;

    /// `vectors/websocket/message_ack.json`: the payloads of `ack_received_frame_json`
    /// and `ack_rejected_frame_json`.
    const ACK_RECEIVED: &str = r#"{"original_envelope_id": "01KDXZ0000ENVREQ0000000001", "status": "received", "error": null}"#;
    const ACK_REJECTED: &str = r#"{"original_envelope_id": "01KDXZ0000ENVREQ0000000001", "status": "rejected", "error": "boom"}"#;

    /// 2026-01-01T00:00:00Z, the vectors' envelope timestamp.
    const WALL0: UnixTime = UnixTime::from_secs(1_767_225_600);

    fn base() -> Instant {
        crate::test_clock::base()
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn frame_envelope(frame: &str) -> Value {
        let v: Value = serde_json::from_str(frame).unwrap();
        v["params"]["envelope"].clone()
    }

    /// The vector's TaskCancel envelope, as an application builds it (no flag yet).
    fn cancel() -> Envelope {
        let mut e = Envelope::from_value(frame_envelope(RETRANSMITTED_FRAME)).unwrap();
        e.requires_ack = false;
        e
    }

    fn env(id: &str, stamp: UnixTime) -> Envelope {
        Envelope::new(
            id.into(),
            Timestamp::from_unix(stamp),
            crate::model::AgentUrn::new("urn:asap:agent:client").unwrap(),
            crate::model::AgentUrn::new("urn:asap:agent:server").unwrap(),
            Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
        )
        .with_requires_ack(true)
    }

    fn ack(id: &str, status: AckStatus) -> MessageAck {
        MessageAck {
            original_envelope_id: id.into(),
            status,
            error: None,
        }
    }

    fn drain(t: &mut AckTracker) -> Vec<AckEvent> {
        std::iter::from_fn(|| t.poll_event()).collect()
    }

    /// Drives `t` by its own deadlines until nothing is pending; returns
    /// `(instant, event)` pairs.
    fn run_out(t: &mut AckTracker) -> Vec<(Instant, AckEvent)> {
        let mut out = Vec::new();
        let mut steps = 0;
        while let Some(at) = t.poll_timeout() {
            // Every entry ends after a handful of deadlines: a tracker that keeps
            // asking to be woken (e.g. just after the latest `now`) is a bug, not a wait.
            steps += 1;
            assert!(steps <= 1_000, "no end in sight after {steps} deadlines");
            t.handle_timeout(at);
            assert!(t.poll_timeout().is_none_or(|next| next > at));
            out.extend(drain(t).into_iter().map(|e| (at, e)));
        }
        out
    }

    #[test]
    fn requires_ack_for_every_spelling_of_the_four_kinds() {
        // The reference's list (spec 13.3) ...
        for name in [
            "TaskRequest",
            "task.request",
            "TaskCancel",
            "task.cancel",
            "StateRestore",
            "state_restore",
            "MessageSend",
            "message.send",
            "message_send",
        ] {
            assert!(requires_ack(name), "{name}");
        }
        // ... and the spellings it forgets ([QUIRK]: state.restore).
        for name in ["state.restore", "task_request", "task_cancel"] {
            assert!(requires_ack(name), "{name}");
        }
        for kind in PayloadKind::ALL {
            let expected = matches!(
                kind,
                PayloadKind::TaskRequest
                    | PayloadKind::TaskCancel
                    | PayloadKind::StateRestore
                    | PayloadKind::MessageSend
            );
            assert_eq!(requires_ack(kind.payload_type()), expected, "{kind:?}");
            assert_eq!(requires_ack(kind.model_name()), expected, "{kind:?}");
        }
        for name in [
            "",
            "Task.Request",
            "taskrequest",
            "custom.kind",
            "MessageAck",
        ] {
            assert!(!requires_ack(name), "{name}");
        }
    }

    #[test]
    fn set_requires_ack_reproduces_the_vector_frames() {
        // vectors/websocket/message_ack.json: client_frame_TaskCancel_text has
        // the flag set automatically; client_frame_TaskUpdate_text_no_ack does not.
        let mut e = cancel();
        assert!(set_requires_ack(&mut e));
        let encoded: Value = serde_json::from_slice(&e.to_vec()).unwrap();
        assert_eq!(encoded, frame_envelope(RETRANSMITTED_FRAME));

        let mut update = cancel();
        update.payload_type = "TaskUpdate".into();
        assert!(!set_requires_ack(&mut update));
        assert!(!update.requires_ack);
        // A flag the caller set stays set, and is reported.
        update.requires_ack = true;
        assert!(set_requires_ack(&mut update));
    }

    #[test]
    fn the_reference_retransmission_vector() {
        // ack_retransmission.json: ack timeout 0.3 s, 2 retries, no backoff, a
        // peer that never acks; breaker opened by the single give-up.
        let t0 = base();
        let mut t = AckTracker::new(AckConfig {
            ack_timeout: Duration::from_millis(300),
            max_retries: 2,
            max_wait: Duration::from_millis(300),
            ..AckConfig::default()
        });
        let mut breaker = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            ..Default::default()
        });
        let mut e = cancel();
        assert!(set_requires_ack(&mut e));
        let mut frames = vec![e.clone()];
        t.track(&e, t0, WALL0).unwrap();
        let mut retransmit_times = Vec::new();
        for (at, event) in run_out(&mut t) {
            match event {
                AckEvent::Retransmit {
                    envelope,
                    transmission,
                    cause,
                } => {
                    assert_eq!(cause, RetransmitCause::AckTimeout);
                    assert_eq!(transmission as usize, frames.len() + 1);
                    retransmit_times.push(at - t0);
                    frames.push(*envelope);
                }
                AckEvent::GaveUp {
                    envelope_id,
                    reason,
                    transmissions,
                } => {
                    assert_eq!(envelope_id, "01KDXZ0000ENVREQ0000000001");
                    assert_eq!((reason, transmissions), (AckGiveUp::NoAck, 3));
                    assert_eq!(at - t0, Duration::from_millis(900));
                    assert!(reason.is_peer_failure());
                    breaker.record_failure(at);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            retransmit_times,
            [Duration::from_millis(300), Duration::from_millis(600)]
        );
        // Three frames, the same envelope each time (same id and timestamp, flag set).
        assert_eq!(frames.len(), 3);
        for f in &frames {
            let v: Value = serde_json::from_slice(&f.to_vec()).unwrap();
            assert_eq!(v, frame_envelope(RETRANSMITTED_FRAME));
        }
        assert!(t.is_empty()); // pending_acks_after: []
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(breaker.consecutive_failures(), 1);
    }

    #[test]
    fn the_default_schedule_doubles_and_stays_inside_the_replay_window() {
        let t0 = base();
        let mut t = AckTracker::default();
        let e = env("e1", WALL0);
        t.track(&e, t0, WALL0).unwrap();
        let events = run_out(&mut t);
        let at: Vec<u64> = events.iter().map(|(i, _)| (*i - t0).as_secs()).collect();
        assert_eq!(at, [30, 90, 210, 330]);
        assert!(matches!(
            events.last(),
            Some((
                _,
                AckEvent::GaveUp {
                    reason: AckGiveUp::NoAck,
                    transmissions: 4,
                    ..
                }
            ))
        ));
        // Even a receiver whose clock runs 30 s ahead accepts every transmission.
        let replay = ReplayWindow::default();
        for s in [0, 30, 90, 210] {
            let receiver_now = WALL0.saturating_add(Duration::from_secs(s + 30));
            assert!(replay.check(&e, receiver_now).is_ok(), "{s}");
        }
    }

    #[test]
    fn an_old_envelope_is_retransmitted_early_then_given_up_before_the_window_closes() {
        // Stamped 200 s before it was sent: the receiver (up to 30 s ahead) takes
        // it until 70 s after the first transmission.
        let t0 = base();
        let mut t = AckTracker::default();
        let e = env("old", WALL0.saturating_sub(Duration::from_secs(200)));
        t.track(&e, t0, WALL0).unwrap();
        let events = run_out(&mut t);
        let kinds: Vec<(u64, &'static str)> = events
            .iter()
            .map(|(i, ev)| {
                let k = match ev {
                    AckEvent::Retransmit { .. } => "retransmit",
                    AckEvent::GaveUp {
                        reason: AckGiveUp::ReplayWindowClosed,
                        ..
                    } => "window closed",
                    _ => "other",
                };
                ((*i - t0).as_secs(), k)
            })
            .collect();
        // 30 s as usual; the next (due at 90 s) pulled in to 70 s; then no more,
        // and a give-up once the 120 s wait for an ack to the last one is over.
        assert_eq!(
            kinds,
            [
                (30, "retransmit"),
                (70, "retransmit"),
                (190, "window closed")
            ]
        );
        let replay = ReplayWindow::default();
        for s in [0, 30, 70] {
            let receiver_now = WALL0.saturating_add(Duration::from_secs(s + 30));
            assert!(replay.check(&e, receiver_now).is_ok(), "{s}");
        }
        assert!(replay
            .check(&e, WALL0.saturating_add(Duration::from_secs(71 + 30)))
            .is_err());
    }

    #[test]
    fn a_stale_envelope_is_never_retransmitted() {
        let t0 = base();
        let mut t = AckTracker::default();
        let e = env("stale", WALL0.saturating_sub(Duration::from_secs(400)));
        t.track(&e, t0, WALL0).unwrap();
        let events = run_out(&mut t);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0 - t0, Duration::from_secs(30));
        assert!(matches!(
            events[0].1,
            AckEvent::GaveUp {
                reason: AckGiveUp::ReplayWindowClosed,
                transmissions: 1,
                ..
            }
        ));
        // A reconnect cannot resend it either: it gives up at once.
        t.track(
            &env("stale2", WALL0.saturating_sub(Duration::from_secs(400))),
            t0,
            WALL0,
        )
        .unwrap();
        t.handle_reconnect(secs(t0, 1));
        assert!(matches!(
            drain(&mut t)[..],
            [AckEvent::GaveUp {
                reason: AckGiveUp::ReplayWindowClosed,
                ..
            }]
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn a_late_timer_past_the_window_sends_nothing() {
        let t0 = base();
        let stamp = WALL0.saturating_sub(Duration::from_secs(200)); // accepted until 70 s
        for (late, expect_event_at_late) in [(100, true), (80, false)] {
            let mut t = AckTracker::default();
            t.track(&env("x", stamp), t0, WALL0).unwrap();
            t.handle_timeout(secs(t0, 30));
            assert!(matches!(drain(&mut t)[..], [AckEvent::Retransmit { .. }]));
            // The adapter oversleeps the 70 s retransmission.
            t.handle_timeout(secs(t0, late));
            let events = drain(&mut t);
            if expect_event_at_late {
                // The 60 s wait for an ack to the 30 s transmission is over too.
                assert!(matches!(
                    events[..],
                    [AckEvent::GaveUp {
                        reason: AckGiveUp::ReplayWindowClosed,
                        transmissions: 2,
                        ..
                    }]
                ));
            } else {
                assert!(events.is_empty());
                assert_eq!(t.poll_timeout(), Some(secs(t0, 90)));
                t.handle_timeout(secs(t0, 90));
                assert!(matches!(
                    drain(&mut t)[..],
                    [AckEvent::GaveUp {
                        reason: AckGiveUp::ReplayWindowClosed,
                        ..
                    }]
                ));
            }
        }
    }

    #[test]
    fn a_late_timer_gives_up_at_once_in_deadline_order() {
        // "x" is accepted until 70 s; its retransmission at 30 s waits until 90 s for an
        // ack, so its next deadline is pulled in to 70 s. "y", sent at 50 s, is due at 80 s.
        let t0 = base();
        let mut t = AckTracker::default();
        t.track(
            &env("x", WALL0.saturating_sub(Duration::from_secs(200))),
            t0,
            WALL0,
        )
        .unwrap();
        t.handle_timeout(secs(t0, 30));
        assert!(matches!(drain(&mut t)[..], [AckEvent::Retransmit { .. }]));
        let wall50 = WALL0.saturating_add(Duration::from_secs(50));
        t.track(&env("y", wall50), secs(t0, 50), wall50).unwrap();
        // Woken only at 90 s, exactly when the wait for an ack to "x" ends: "x" gives up
        // there and then, before "y"'s later deadline is acted on.
        t.handle_timeout(secs(t0, 90));
        let events = drain(&mut t);
        assert!(
            matches!(
                &events[..],
                [
                    AckEvent::GaveUp {
                        envelope_id: x,
                        reason: AckGiveUp::ReplayWindowClosed,
                        transmissions: 2,
                    },
                    AckEvent::Retransmit {
                        envelope,
                        transmission: 2,
                        cause: RetransmitCause::AckTimeout,
                    },
                ] if x == "x" && envelope.id == "y"
            ),
            "{events:?}"
        );
        assert!(!t.is_pending("x"));
        assert!(t.is_pending("y"));
    }

    #[test]
    fn any_status_clears_by_default() {
        let t0 = base();
        let mut t = AckTracker::default();
        let received: MessageAck = serde_json::from_str(ACK_RECEIVED).unwrap();
        let rejected: MessageAck = serde_json::from_str(ACK_REJECTED).unwrap();
        let id = received.original_envelope_id.clone();
        t.track(&env(&id, WALL0), t0, WALL0).unwrap();
        assert_eq!(t.handle_ack(&received, secs(t0, 1)), AckMatch::Cleared);
        assert_eq!(
            drain(&mut t),
            [AckEvent::Acked {
                envelope_id: id.clone(),
                status: AckStatus::Received,
                error: None,
                transmissions: 1
            }]
        );
        // A second ack for it (e.g. for a retransmission) is ignored.
        assert_eq!(t.handle_ack(&received, secs(t0, 2)), AckMatch::Unknown);
        assert!(drain(&mut t).is_empty());

        t.track(&env(&id, WALL0), t0, WALL0).unwrap();
        assert_eq!(t.handle_ack(&rejected, secs(t0, 3)), AckMatch::Cleared);
        assert_eq!(
            drain(&mut t),
            [AckEvent::Acked {
                envelope_id: id.clone(),
                status: AckStatus::Rejected,
                error: Some("boom".into()),
                transmissions: 1
            }]
        );
        t.track(&env("p", WALL0), t0, WALL0).unwrap();
        assert_eq!(
            t.handle_ack(&ack("p", AckStatus::Processed), t0),
            AckMatch::Cleared
        );
        assert_eq!(
            t.handle_ack(&ack("never", AckStatus::Processed), t0),
            AckMatch::Unknown
        );
        assert_eq!(drain(&mut t).len(), 1);
        assert!(t.is_empty() && t.poll_timeout().is_none());
    }

    #[test]
    fn awaiting_processed_a_received_ack_stops_retransmissions() {
        let t0 = base();
        let mut t = AckTracker::new(AckConfig {
            await_processed: true,
            ..AckConfig::default()
        });
        t.track(&env("a", WALL0), t0, WALL0).unwrap();
        t.track(&env("b", WALL0), t0, WALL0).unwrap();
        for id in ["a", "b"] {
            assert_eq!(
                t.handle_ack(&ack(id, AckStatus::Received), secs(t0, 1)),
                AckMatch::AwaitingProcessed
            );
        }
        assert_eq!(
            t.handle_ack(&ack("a", AckStatus::Received), secs(t0, 2)),
            AckMatch::AwaitingProcessed
        );
        assert!(drain(&mut t).is_empty());
        assert!(t.is_pending("a"));
        assert_eq!(t.poll_timeout(), Some(secs(t0, 301)));
        t.handle_timeout(secs(t0, 30));
        assert!(drain(&mut t).is_empty(), "no retransmission after received");
        // A reconnect resends (the processed ack of the old connection is lost).
        t.handle_reconnect(secs(t0, 40));
        assert_eq!(drain(&mut t).len(), 2);
        assert_eq!(t.poll_timeout(), Some(secs(t0, 301)));
        assert_eq!(
            t.handle_ack(&ack("a", AckStatus::Processed), secs(t0, 50)),
            AckMatch::Cleared
        );
        t.handle_timeout(secs(t0, 301));
        let events = drain(&mut t);
        assert!(matches!(
            &events[..],
            [
                AckEvent::Acked {
                    status: AckStatus::Processed,
                    transmissions: 2,
                    ..
                },
                AckEvent::GaveUp {
                    reason: AckGiveUp::NotProcessed,
                    ..
                }
            ]
        ));
    }

    #[test]
    fn reconnect_resends_everything_in_order_without_using_a_retry() {
        let t0 = base();
        let mut t = AckTracker::default();
        for id in ["a", "b", "c"] {
            t.track(&env(id, WALL0), t0, WALL0).unwrap();
        }
        assert_eq!(
            t.handle_ack(&ack("b", AckStatus::Received), t0),
            AckMatch::Cleared
        );
        drain(&mut t);
        t.handle_reconnect(secs(t0, 10));
        let resent: Vec<(String, u32, RetransmitCause)> = drain(&mut t)
            .into_iter()
            .map(|e| match e {
                AckEvent::Retransmit {
                    envelope,
                    transmission,
                    cause,
                } => (envelope.id, transmission, cause),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            resent,
            [
                ("a".to_owned(), 2, RetransmitCause::Reconnect),
                ("c".to_owned(), 2, RetransmitCause::Reconnect)
            ]
        );
        // The wait restarted at the reconnect: 30 s later, not at 30 s after tracking.
        assert_eq!(t.poll_timeout(), Some(secs(t0, 40)));
        t.handle_ack(&ack("c", AckStatus::Received), secs(t0, 11));
        let rest = run_out(&mut t);
        let timeouts = rest
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e,
                    AckEvent::Retransmit {
                        cause: RetransmitCause::AckTimeout,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(timeouts, 3, "the reconnect resend used up no retry");
        assert!(matches!(
            rest.last(),
            Some((
                _,
                AckEvent::GaveUp {
                    reason: AckGiveUp::NoAck,
                    transmissions: 5,
                    ..
                }
            ))
        ));
    }

    #[test]
    fn retransmissions_not_yet_drained_merge_or_vanish() {
        let t0 = base();
        let mut t = AckTracker::default();
        t.track(&env("a", WALL0), t0, WALL0).unwrap();
        t.handle_reconnect(secs(t0, 1));
        t.handle_reconnect(secs(t0, 2));
        assert!(matches!(
            drain(&mut t)[..],
            [AckEvent::Retransmit {
                transmission: 2,
                cause: RetransmitCause::Reconnect,
                ..
            }]
        ));
        // Acked before the retransmission was drained: only the ack comes out.
        t.handle_timeout(secs(t0, 32));
        t.handle_ack(&ack("a", AckStatus::Received), secs(t0, 33));
        assert!(matches!(
            drain(&mut t)[..],
            [AckEvent::Acked {
                transmissions: 2,
                ..
            }]
        ));
    }

    #[test]
    fn track_refuses_misuse_and_respects_the_cap() {
        let t0 = base();
        let mut t = AckTracker::new(AckConfig {
            max_pending: 2,
            ..AckConfig::default()
        });
        assert_eq!(
            t.track(&env("x", WALL0).with_requires_ack(false), t0, WALL0),
            Err(AckError::NotRequested {
                envelope_id: "x".into()
            })
        );
        assert_eq!(
            t.track(&env("", WALL0), t0, WALL0),
            Err(AckError::EmptyEnvelopeId)
        );
        t.track(&env("a", WALL0), t0, WALL0).unwrap();
        assert_eq!(
            t.track(&env("a", WALL0), t0, WALL0),
            Err(AckError::AlreadyPending {
                envelope_id: "a".into()
            })
        );
        t.track(&env("b", WALL0), t0, WALL0).unwrap();
        assert_eq!(
            t.track(&env("c", WALL0), t0, WALL0),
            Err(AckError::Full { limit: 2 })
        );
        // An undrained outcome still holds its place.
        t.handle_ack(&ack("a", AckStatus::Received), t0);
        assert_eq!(
            t.track(&env("c", WALL0), t0, WALL0),
            Err(AckError::Full { limit: 2 })
        );
        drain(&mut t);
        t.track(&env("c", WALL0), t0, WALL0).unwrap();
        assert!(AckError::Full { limit: 2 }
            .to_string()
            .starts_with("local capacity"));
        assert!(AckError::EmptyEnvelopeId
            .to_string()
            .starts_with("caller bug"));
    }

    #[test]
    fn counts_and_membership_follow_tracking_acks_and_close() {
        let t0 = base();
        let mut t = AckTracker::default();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert!(!t.is_pending("a"));
        t.track(&env("a", WALL0), t0, WALL0).unwrap();
        assert!(!t.is_empty());
        assert_eq!(t.len(), 1);
        assert!(t.is_pending("a"));
        assert!(!t.is_pending("b"));
        t.track(&env("b", WALL0), t0, WALL0).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.handle_ack(&ack("a", AckStatus::Received), t0),
            AckMatch::Cleared
        );
        assert!(!t.is_pending("a"));
        assert!(t.is_pending("b"));
        assert!(!t.is_empty());
        assert_eq!(t.len(), 1);
        t.handle_close(t0);
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn close_gives_everything_up_without_blaming_the_peer() {
        let t0 = base();
        let mut t = AckTracker::default();
        t.track(&env("a", WALL0), t0, WALL0).unwrap();
        t.track(&env("b", WALL0), t0, WALL0).unwrap();
        t.handle_close(secs(t0, 1));
        let reasons: Vec<AckGiveUp> = drain(&mut t)
            .into_iter()
            .map(|e| match e {
                AckEvent::GaveUp { reason, .. } => reason,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(reasons, [AckGiveUp::Closed, AckGiveUp::Closed]);
        assert!(!AckGiveUp::Closed.is_peer_failure());
        assert!(t.is_empty() && t.poll_timeout().is_none());
    }

    #[test]
    fn deadlines_are_never_at_or_before_the_latest_now() {
        let t0 = base();
        let mut t = AckTracker::default();
        t.handle_timeout(secs(t0, 100));
        // Tracked with an older `now` (a caller's stale clock reading): its
        // deadline (30 s) is already past, so the next wake-up is just after 100 s.
        t.track(&env("a", WALL0), t0, WALL0).unwrap();
        let d = t.poll_timeout().unwrap();
        assert!(d > secs(t0, 100) && d < secs(t0, 101));
        t.handle_timeout(d);
        assert!(matches!(drain(&mut t)[..], [AckEvent::Retransmit { .. }]));
        assert!(t.poll_timeout().unwrap() > d);
        // Early and repeated calls are harmless.
        t.handle_timeout(d);
        t.handle_timeout(t0);
        assert!(drain(&mut t).is_empty());
    }

    #[test]
    fn extreme_configurations_saturate() {
        let t0 = base();
        let mut huge = AckTracker::new(AckConfig {
            ack_timeout: Duration::MAX,
            max_wait: Duration::MAX,
            clock_skew: Duration::ZERO,
            replay_window: ReplayWindow {
                max_age: Duration::MAX,
                max_future: Duration::MAX,
            },
            jitter_ratio: f64::MAX,
            ..AckConfig::default()
        });
        huge.track(&env("a", WALL0), t0, WALL0).unwrap();
        assert!(huge.poll_timeout().unwrap() > t0);
        huge.handle_reconnect(t0);
        assert_eq!(drain(&mut huge).len(), 1);

        let mut tiny = AckTracker::new(AckConfig {
            ack_timeout: Duration::ZERO,
            max_wait: Duration::ZERO,
            max_pending: 0,
            ..AckConfig::default()
        });
        assert_eq!(tiny.config().ack_timeout, MIN_WAIT);
        tiny.track(&env("a", WALL0), t0, WALL0).unwrap();
        assert_eq!(tiny.poll_timeout(), Some(t0 + MIN_WAIT));
        assert_eq!(run_out(&mut tiny).len(), 4);
    }

    #[test]
    fn jitter_comes_from_the_seed() {
        let t0 = base();
        let config = AckConfig {
            jitter_ratio: 0.1,
            jitter_seed: 7,
            ..AckConfig::default()
        };
        let deadline = |config| {
            let mut t = AckTracker::new(config);
            t.track(&env("a", WALL0), t0, WALL0).unwrap();
            t.poll_timeout().unwrap() - t0
        };
        let d = deadline(config);
        assert!(
            d >= Duration::from_secs(30) && d <= Duration::from_secs(33),
            "{d:?}"
        );
        assert_eq!(deadline(config), d, "same seed, same schedule");
        assert_ne!(
            deadline(AckConfig {
                jitter_seed: 8,
                ..config
            }),
            d
        );
    }

    // ---------------------------------------------------------------- properties

    #[derive(Debug, Clone)]
    enum Op {
        Track { id: u8, age_s: u16 },
        Ack { id: u8, status: u8 },
        Advance { ms: u32 },
        Timeout,
        Reconnect,
        Close,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6, 0u16..400).prop_map(|(id, age_s)| Op::Track { id, age_s }),
            2 => (0u8..6, 0u8..3).prop_map(|(id, status)| Op::Ack { id, status }),
            3 => (0u32..120_000).prop_map(|ms| Op::Advance { ms }),
            3 => Just(Op::Timeout),
            1 => Just(Op::Reconnect),
            1 => Just(Op::Close),
        ]
    }

    proptest! {
        /// Every tracked envelope ends Acked or GaveUp exactly once; every
        /// event has a cause among the inputs just given; retransmissions are
        /// the tracked envelope, within the retry budget and the receiver's
        /// replay window; deadlines are later than `now`; memory is bounded.
        #[test]
        fn invariants(
            ops in proptest::collection::vec(op(), 1..100),
            await_processed: bool,
            max_retries in 0u32..4,
            max_pending in 1usize..5,
        ) {
            let t0 = base();
            let config = AckConfig { await_processed, max_retries, max_pending, ..AckConfig::default() };
            let mut t = AckTracker::new(config);
            let mut now = t0;
            let wall = |now: Instant| WALL0.saturating_add(now - t0);
            // id → (tracked envelope, timeout retransmissions seen)
            let mut live: HashMap<String, (Envelope, u32)> = HashMap::new();
            let mut ended: Vec<String> = Vec::new();
            let mut tracked = 0usize;
            for op in ops {
                let mut acked_id = None;
                match &op {
                    Op::Track { id, age_s } => {
                        let id = format!("e{id}");
                        let stamp = wall(now).saturating_sub(Duration::from_secs(u64::from(*age_s)));
                        let e = env(&id, stamp);
                        let expect_ok = !live.contains_key(&id) && live.len() < max_pending;
                        let res = t.track(&e, now, wall(now));
                        prop_assert_eq!(res.is_ok(), expect_ok, "{:?}", res);
                        if res.is_ok() {
                            live.insert(id, (e, 0));
                            tracked += 1;
                        }
                    }
                    Op::Ack { id, status } => {
                        let status = [AckStatus::Received, AckStatus::Processed, AckStatus::Rejected][usize::from(*status)];
                        let id = format!("e{id}");
                        let m = t.handle_ack(&ack(&id, status), now);
                        prop_assert_eq!(m == AckMatch::Unknown, !live.contains_key(&id));
                        acked_id = Some((id, status));
                    }
                    Op::Advance { ms } => now += Duration::from_millis(u64::from(*ms)),
                    Op::Timeout => {
                        t.handle_timeout(now);
                        if let Some(d) = t.poll_timeout() {
                            prop_assert!(d > now, "deadline {:?} not after now", d - t0);
                        }
                    }
                    Op::Reconnect => t.handle_reconnect(now),
                    Op::Close => t.handle_close(now),
                }
                let events = drain(&mut t);
                for ev in events {
                    match ev {
                        AckEvent::Retransmit { envelope, cause, .. } => {
                            let expected_cause = match op {
                                Op::Timeout => RetransmitCause::AckTimeout,
                                Op::Reconnect => RetransmitCause::Reconnect,
                                _ => { prop_assert!(false, "retransmit without cause: {:?}", op); unreachable!() }
                            };
                            prop_assert_eq!(cause, expected_cause);
                            let Some((e, retries)) = live.get_mut(&envelope.id) else {
                                prop_assert!(false, "retransmit of an ended envelope"); unreachable!()
                            };
                            prop_assert_eq!(&*envelope, &*e);
                            prop_assert!(envelope.requires_ack);
                            if cause == RetransmitCause::AckTimeout {
                                *retries += 1;
                                prop_assert!(*retries <= max_retries);
                            }
                            // A receiver 30 s ahead still accepts it.
                            let receiver_now = wall(now).saturating_add(Duration::from_secs(30));
                            prop_assert!(ReplayWindow::default().check(e, receiver_now).is_ok());
                        }
                        AckEvent::Acked { envelope_id, status, .. } => {
                            prop_assert_eq!(Some((envelope_id.clone(), status)), acked_id.clone());
                            prop_assert!(live.remove(&envelope_id).is_some());
                            ended.push(envelope_id);
                        }
                        AckEvent::GaveUp { envelope_id, reason, .. } => {
                            prop_assert!(matches!(op, Op::Timeout | Op::Reconnect | Op::Close), "give-up without cause: {:?}", op);
                            prop_assert_eq!(reason == AckGiveUp::Closed, matches!(op, Op::Close));
                            prop_assert!(live.remove(&envelope_id).is_some());
                            ended.push(envelope_id);
                        }
                    }
                }
                prop_assert_eq!(t.len(), live.len());
                prop_assert!(t.len() <= max_pending);
                prop_assert!(t.queue.is_empty());
                prop_assert_eq!(t.deadlines.len(), t.len());
            }
            // Left alone, everything ends: by its own deadlines within the window's bound.
            let mut guard = 0;
            while let Some(at) = t.poll_timeout() {
                // The test's clock may have run ahead of what the tracker was told.
                now = now.max(at);
                t.handle_timeout(now);
                prop_assert!(t.poll_timeout().is_none_or(|d| d > now));
                for ev in drain(&mut t) {
                    match ev {
                        AckEvent::Acked { .. } => prop_assert!(false, "ack without an ack"),
                        AckEvent::GaveUp { envelope_id, .. } => {
                            prop_assert!(live.remove(&envelope_id).is_some());
                            ended.push(envelope_id);
                        }
                        AckEvent::Retransmit { envelope, .. } => prop_assert!(live.contains_key(&envelope.id)),
                    }
                }
                guard += 1;
                prop_assert!(guard < 100, "no end in sight");
            }
            prop_assert!(live.is_empty());
            prop_assert_eq!(ended.len(), tracked, "exactly one outcome per tracked envelope");
        }
    }
}
