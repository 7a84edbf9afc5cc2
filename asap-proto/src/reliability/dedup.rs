//! Receiver-side deduplication: an envelope (sender + envelope id) runs its
//! handler at most once while it is inside the window; duplicates get the
//! first response, and a duplicate of one still running waits for it.
//!
//! The reference runs a retransmitted envelope again (spec 13.4, "no
//! receiver-side deduplication"; over HTTP the idempotency key is ignored,
//! spec 14), so the same `task.request` sent twice starts the skill twice and
//! answers with two task ids. [`DedupWindow`] closes that on every transport.
//!
//! # Where it sits
//!
//! After the replay window and the nonce check, before the handler:
//! `ReplayWindow::check` → `NonceStore::check` → [`DedupWindow::check`] →
//! handler. The order matters: the window only has to remember an envelope for
//! as long as the replay window would still let a copy of it in. A copy
//! arriving at `t` passed the future check, so its timestamp is at most
//! `t + 30 s`; any later copy is refused once it is more than `300 s` older
//! than that, i.e. after `t + 330 s`. Hence the default age,
//! [`DEFAULT_DEDUP_MAX_AGE`] = `max_age + max_future` of
//! [`ReplayWindow`]
//! ([`DedupConfig::for_replay_window`] derives it from another window). An
//! envelope *without* a timestamp always passes the replay window (spec 10.1
//! \[QUIRK\]); its copies are deduplicated only while it is in this window,
//! so servers that care require timestamps.
//!
//! # Call protocol
//!
//! 1. [`check(key, waiter, now)`](DedupWindow::check) for each admitted envelope:
//!    * [`Admission::New`] — run the handler; the entry is now in flight.
//!      Finish with [`handle_completed(ticket, response, now)`](DedupWindow::handle_completed)
//!      (the handler answered, including with an error response), or
//!      [`handle_abandoned(ticket)`](DedupWindow::handle_abandoned) (it produced
//!      no answer: panicked, was cancelled). Both hand back the waiters.
//!    * [`Admission::Duplicate`] — answer with the stored response without
//!      running anything (over WebSocket, with a fresh `MessageAck` first).
//!    * [`Admission::InProgress`] — the first copy is still running; `waiter`
//!      was registered and comes back from `handle_completed`/`handle_abandoned`.
//!    * `Err(DedupError)` — the window cannot take it without forgetting an
//!      envelope in flight: answer "busy" (the sender may retry). Fail closed.
//! 2. Persist: after `handle_completed`, [`record(key)`](DedupWindow::record)
//!    is the row to store; at start-up [`restore(records, now)`](DedupWindow::restore).
//!    Only completed entries are persisted: an envelope in flight when the
//!    process died never answered, so running it again is the right thing.
//! 3. Expiry is lazy (every call first drops what expired); an idle window may
//!    also sleep until [`poll_timeout()`](DedupWindow::poll_timeout) and call
//!    [`handle_timeout(now)`](DedupWindow::handle_timeout). Times are wall clock
//!    ([`UnixTime`]) so records stay meaningful across a restart.
//!
//! The stored response is opaque bytes. Store what rebuilds the answer for a
//! *different* request: a WebSocket retransmission carries a new JSON-RPC id
//! (`ws-req-2`), so keep the response envelope (or status and body) and wrap
//! it with the duplicate's own request id.
//!
//! ```
//! use asap_proto::model::{AgentUrn, UnixTime};
//! use asap_proto::reliability::{Admission, DedupKey, DedupWindow};
//!
//! let mut window: DedupWindow<u64> = DedupWindow::default(); // one per server
//! let now = UnixTime::from_secs(1_767_225_600);              // the adapter's wall clock
//! let key = DedupKey::new(AgentUrn::new("urn:asap:agent:client").unwrap(), "01KDXZ0000ENVREQ0000000001");
//!
//! // The first copy runs the handler.
//! let Ok(Admission::New(ticket)) = window.check(key.clone(), 1, now) else { panic!() };
//! // A copy arriving while it runs waits (request 2 is the caller's token for it).
//! assert!(matches!(window.check(key.clone(), 2, now), Ok(Admission::InProgress)));
//! let response = br#"{"envelope":"..."}"#.to_vec();                // what the handler produced
//! let waiters = window.handle_completed(&ticket, response.clone(), now).unwrap();
//! assert_eq!(waiters, vec![2]);                                     // answer request 2 with `response` too
//! let row = window.record(&key).unwrap();                           // persist it (SQLite, ...)
//!
//! // A later copy gets the same response; nothing runs.
//! match window.check(key.clone(), 3, now).unwrap() {
//!     Admission::Duplicate(done) => assert_eq!(done.response.as_deref(), Some(&response[..])),
//!     _ => unreachable!(),
//! }
//!
//! // After a restart the persisted rows come back.
//! let mut restarted: DedupWindow<u64> = DedupWindow::default();
//! assert_eq!(restarted.restore([row], now), 1);
//! assert!(matches!(restarted.check(key, 4, now), Ok(Admission::Duplicate(_))));
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{AgentUrn, Envelope, UnixTime};
use crate::server::{ReplayWindow, MAX_ENVELOPE_AGE, MAX_FUTURE_TOLERANCE};

/// Default age of a dedup entry: the replay window's 300 s plus its 30 s
/// future tolerance; any later copy is refused by the replay window anyway.
pub const DEFAULT_DEDUP_MAX_AGE: Duration =
    Duration::from_secs(MAX_ENVELOPE_AGE.as_secs() + MAX_FUTURE_TOLERANCE.as_secs());

/// Bounds of a [`DedupWindow`]. Every cap of `0` acts as `1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// How long an entry is remembered after its first copy arrived. Default 330 s.
    pub max_age: Duration,
    /// Completed entries held; the oldest is forgotten beyond this. Default 10 000
    /// (size it above the envelope rate × `max_age`).
    pub max_completed: usize,
    /// Entries whose handler is running; beyond this new envelopes are refused
    /// ([`DedupError::InFlightFull`]) rather than anything forgotten. Default 1 024.
    pub max_in_flight: usize,
    /// Duplicates waiting for a running handler, over all entries. Default 1 024.
    pub max_waiters: usize,
    /// Bytes of keys and stored responses held. Responses are dropped first
    /// (oldest first; their keys stay, so nothing runs twice), then the oldest
    /// completed entries. Default 32 MiB.
    pub max_bytes: usize,
    /// Largest answer kept for copies (bytes); a larger one is remembered as
    /// processed without its bytes (copies are told so, nothing runs twice).
    /// Default 1 MiB.
    pub max_answer_bytes: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_DEDUP_MAX_AGE,
            max_completed: 10_000,
            max_in_flight: 1_024,
            max_waiters: 1_024,
            max_bytes: 32 * 1024 * 1024,
            max_answer_bytes: 1024 * 1024,
        }
    }
}

impl DedupConfig {
    /// The default bounds with `max_age` matched to a server's replay window
    /// (`max_age + max_future`, saturating).
    #[must_use]
    pub fn for_replay_window(window: &ReplayWindow) -> Self {
        Self {
            max_age: window.max_age.saturating_add(window.max_future),
            ..Self::default()
        }
    }
}

/// What identifies an envelope for deduplication: its sender and its id (ids
/// are only unique per sender; two agents may well pick the same one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DedupKey {
    /// The envelope's `sender`.
    pub sender: AgentUrn,
    /// The envelope's `id`.
    pub envelope_id: String,
}

impl DedupKey {
    /// A key from its parts.
    #[must_use]
    pub fn new(sender: AgentUrn, envelope_id: impl Into<String>) -> Self {
        Self {
            sender,
            envelope_id: envelope_id.into(),
        }
    }

    /// The key of a (materialized) envelope.
    #[must_use]
    pub fn of(envelope: &Envelope) -> Self {
        Self::new(envelope.sender.clone(), envelope.id.clone())
    }

    /// Bytes an entry for this key holds once completed: the key is kept twice
    /// (the lookup map and the expiry order).
    fn held_bytes(&self) -> usize {
        self.sender
            .as_str()
            .len()
            .saturating_add(self.envelope_id.len())
            .saturating_mul(2)
    }
}

/// Proof that [`DedupWindow::check`] admitted an envelope as new; finish it with
/// [`DedupWindow::handle_completed`] or [`DedupWindow::handle_abandoned`].
///
/// A ticket names one admission: after an abandon, a retransmission is admitted
/// with a new ticket and the old one is refused ([`DedupError::StaleTicket`]),
/// so a late answer from the abandoned run cannot overwrite the new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupTicket {
    key: DedupKey,
    generation: u64,
}

impl DedupTicket {
    /// The admitted envelope's key.
    #[must_use]
    pub fn key(&self) -> &DedupKey {
        &self.key
    }
}

/// The first copy's outcome, handed to a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Completed {
    /// The stored response; `None` when it was too large for the byte budget
    /// or dropped under byte pressure. The envelope was processed: answer the
    /// duplicate with an error saying so, never by running it again.
    pub response: Option<Arc<[u8]>>,
}

/// The verdict of [`DedupWindow::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Admission {
    /// First copy in the window: run the handler, then report with the ticket.
    New(DedupTicket),
    /// Already processed: answer with this, run nothing.
    Duplicate(Completed),
    /// The first copy is still running; the waiter was registered and comes
    /// back from `handle_completed` / `handle_abandoned`.
    InProgress,
}

/// Why the window refused an input. Capacity errors are this server's limits
/// (answer "busy"; the sender may retry); a stale ticket is a caller bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DedupError {
    /// As many handlers are running as `max_in_flight` allows.
    #[error("local capacity: {limit} envelopes are already being processed; answer busy and let the sender retry")]
    InFlightFull {
        /// The configured cap.
        limit: usize,
    },
    /// As many duplicates are waiting as `max_waiters` allows.
    #[error("local capacity: {limit} duplicates already wait for running handlers; answer busy and let the sender retry")]
    WaitersFull {
        /// The configured cap.
        limit: usize,
    },
    /// Keys of running handlers fill the byte budget (very long envelope ids).
    #[error("local capacity: keys of envelopes being processed fill the {limit}-byte dedup budget; answer busy and let the sender retry")]
    BytesFull {
        /// The configured cap.
        limit: usize,
    },
    /// The ticket is not the live admission of its key (finished already, or
    /// abandoned and admitted again): local misuse, nothing changed.
    #[error("caller bug: the dedup ticket for envelope {envelope_id:?} is not in flight (already finished or superseded)")]
    StaleTicket {
        /// The ticket's envelope id.
        envelope_id: String,
    },
}

/// A completed entry as persisted (SQLite, PostgreSQL, a file): one row per envelope.
///
/// `response` is base64 text in serde formats (the bytes are the caller's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    /// The envelope's sender.
    pub sender: AgentUrn,
    /// The envelope's id.
    pub envelope_id: String,
    /// The stored response (`None`: processed, response not kept).
    #[serde(with = "base64_bytes")]
    pub response: Option<Vec<u8>>,
    /// Unix milliseconds after which the entry is gone (rounded up).
    pub expires_at_unix_ms: i64,
}

mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DedupStats {
    /// Completed entries held.
    pub completed: usize,
    /// Entries whose handler is running.
    pub in_flight: usize,
    /// Registered waiters.
    pub waiters: usize,
    /// Bytes of keys and responses held (see [`DedupConfig::max_bytes`]).
    pub held_bytes: usize,
    /// Completed entries forgotten before expiry (count or byte pressure).
    pub evicted: u64,
    /// Responses dropped (too large, or byte pressure) with their keys kept.
    pub responses_dropped: u64,
}

#[derive(Debug, Clone)]
enum Entry<W> {
    InFlight {
        generation: u64,
        expires_at: UnixTime,
        waiters: Vec<W>,
    },
    Completed {
        expires_at: UnixTime,
        response: Option<Arc<[u8]>>,
    },
}

/// The receiver's dedup window; see the [module docs](self) for the call protocol.
///
/// `W` is the caller's waiter token (a request number, a channel sender):
/// kept only when [`check`](Self::check) answers [`Admission::InProgress`],
/// dropped otherwise.
#[derive(Debug, Clone)]
pub struct DedupWindow<W = u64> {
    config: DedupConfig,
    entries: HashMap<DedupKey, Entry<W>>,
    /// Completed entries by (expiry, seq): expiry and eviction order.
    completed: BTreeMap<(UnixTime, u64), DedupKey>,
    /// The subset of `completed` still holding a response: byte-pressure order.
    with_response: BTreeSet<(UnixTime, u64)>,
    in_flight: usize,
    waiters: usize,
    key_bytes: usize,
    response_bytes: usize,
    next_generation: u64,
    evicted: u64,
    responses_dropped: u64,
}

impl<W> Default for DedupWindow<W> {
    fn default() -> Self {
        Self::new(DedupConfig::default())
    }
}

impl<W> DedupWindow<W> {
    /// An empty window.
    #[must_use]
    pub fn new(config: DedupConfig) -> Self {
        Self {
            config: DedupConfig {
                max_completed: config.max_completed.max(1),
                max_in_flight: config.max_in_flight.max(1),
                max_waiters: config.max_waiters.max(1),
                max_bytes: config.max_bytes.max(1),
                ..config
            },
            entries: HashMap::new(),
            completed: BTreeMap::new(),
            with_response: BTreeSet::new(),
            in_flight: 0,
            waiters: 0,
            key_bytes: 0,
            response_bytes: 0,
            next_generation: 0,
            evicted: 0,
            responses_dropped: 0,
        }
    }

    /// The configuration (caps of `0` already raised to `1`).
    #[must_use]
    pub fn config(&self) -> &DedupConfig {
        &self.config
    }

    /// Entries held (completed and in flight).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Current counters.
    #[must_use]
    pub fn stats(&self) -> DedupStats {
        DedupStats {
            completed: self.completed.len(),
            in_flight: self.in_flight,
            waiters: self.waiters,
            held_bytes: self.held_bytes(),
            evicted: self.evicted,
            responses_dropped: self.responses_dropped,
        }
    }

    fn held_bytes(&self) -> usize {
        self.key_bytes.saturating_add(self.response_bytes)
    }

    /// Admits an envelope: new (run it), duplicate (answer with the first
    /// response) or in progress (`waiter` registered). Expired entries are
    /// dropped first.
    pub fn check(
        &mut self,
        key: DedupKey,
        waiter: W,
        now: UnixTime,
    ) -> Result<Admission, DedupError> {
        self.handle_timeout(now);
        match self.entries.get_mut(&key) {
            Some(Entry::InFlight { waiters, .. }) => {
                if self.waiters >= self.config.max_waiters {
                    return Err(DedupError::WaitersFull {
                        limit: self.config.max_waiters,
                    });
                }
                waiters.push(waiter);
                self.waiters += 1;
                Ok(Admission::InProgress)
            }
            Some(Entry::Completed { response, .. }) => Ok(Admission::Duplicate(Completed {
                response: response.clone(),
            })),
            None => {
                if self.in_flight >= self.config.max_in_flight {
                    return Err(DedupError::InFlightFull {
                        limit: self.config.max_in_flight,
                    });
                }
                // Reserve the key's completed-entry cost now, so that completing
                // it never needs room that might not be there.
                let need = key.held_bytes();
                if !self.make_room_for_key(need) {
                    return Err(DedupError::BytesFull {
                        limit: self.config.max_bytes,
                    });
                }
                let generation = self.next_generation;
                self.next_generation = self.next_generation.wrapping_add(1);
                self.key_bytes += need;
                self.in_flight += 1;
                self.entries.insert(
                    key.clone(),
                    Entry::InFlight {
                        generation,
                        expires_at: now.saturating_add(self.config.max_age),
                        waiters: Vec::new(),
                    },
                );
                Ok(Admission::New(DedupTicket { key, generation }))
            }
        }
    }

    /// Removes the in-flight entry `ticket` names; its expiry and waiters.
    fn take_in_flight(&mut self, ticket: &DedupTicket) -> Result<(UnixTime, Vec<W>), DedupError> {
        let stale = || DedupError::StaleTicket {
            envelope_id: ticket.key.envelope_id.clone(),
        };
        match self.entries.get(&ticket.key) {
            Some(Entry::InFlight { generation, .. }) if *generation == ticket.generation => {}
            _ => return Err(stale()),
        }
        let Some(Entry::InFlight {
            expires_at,
            waiters,
            ..
        }) = self.entries.remove(&ticket.key)
        else {
            return Err(stale());
        };
        self.in_flight -= 1;
        self.waiters -= waiters.len();
        Ok((expires_at, waiters))
    }

    /// The handler answered: `response` is stored for later copies and the
    /// waiters are handed back, to be answered with the same response.
    ///
    /// A response larger than the byte budget allows is not stored (the key is:
    /// duplicates learn it was processed, see [`Completed::response`]).
    pub fn handle_completed(
        &mut self,
        ticket: &DedupTicket,
        response: impl Into<Arc<[u8]>>,
        now: UnixTime,
    ) -> Result<Vec<W>, DedupError> {
        let (expires_at, waiters) = self.take_in_flight(ticket)?;
        let key_bytes = ticket.key.held_bytes();
        if expires_at < now {
            // Every later copy is refused by the replay window already.
            self.key_bytes -= key_bytes;
            self.handle_timeout(now);
            return Ok(waiters);
        }
        while self.completed.len() >= self.config.max_completed {
            self.evict_oldest();
        }
        let seq = ticket.generation;
        let response = self.admit_response(response.into());
        if response.is_some() {
            self.with_response.insert((expires_at, seq));
        }
        self.completed.insert((expires_at, seq), ticket.key.clone());
        self.entries.insert(
            ticket.key.clone(),
            Entry::Completed {
                expires_at,
                response,
            },
        );
        self.handle_timeout(now);
        Ok(waiters)
    }

    /// The handler produced no answer (panicked, was cancelled, its adapter
    /// went away): the entry is removed so that a retransmission runs the
    /// envelope again, and the waiters are handed back to be told it failed.
    ///
    /// Removal is what keeps "processed exactly once, or its sender is told
    /// that it failed": remembering the key without an answer would make every
    /// retransmission fail for the rest of the window, although nothing was
    /// processed. A handler that *returned* an error has answered: report it
    /// with [`handle_completed`](Self::handle_completed), so every duplicate
    /// gets that same error instead of a second run.
    pub fn handle_abandoned(&mut self, ticket: &DedupTicket) -> Result<Vec<W>, DedupError> {
        let (_, waiters) = self.take_in_flight(ticket)?;
        self.key_bytes -= ticket.key.held_bytes();
        Ok(waiters)
    }

    /// Keeps `response` if the byte budget allows, dropping older responses
    /// (never keys) to make room.
    fn admit_response(&mut self, response: Arc<[u8]>) -> Option<Arc<[u8]>> {
        let len = response.len();
        if len > self.config.max_bytes.saturating_sub(self.key_bytes) {
            self.responses_dropped += 1;
            return None;
        }
        while self.held_bytes() + len > self.config.max_bytes {
            if !self.drop_oldest_response() {
                break;
            }
        }
        self.response_bytes += len;
        Some(response)
    }

    /// Frees room for `need` more key bytes: oldest responses first, then the
    /// oldest completed entries. `false` when in-flight keys alone fill the budget.
    fn make_room_for_key(&mut self, need: usize) -> bool {
        while self.held_bytes().saturating_add(need) > self.config.max_bytes {
            if !self.drop_oldest_response() && !self.evict_oldest() {
                return false;
            }
        }
        true
    }

    fn drop_oldest_response(&mut self) -> bool {
        let Some(slot) = self.with_response.pop_first() else {
            return false;
        };
        if let Some(key) = self.completed.get(&slot) {
            if let Some(Entry::Completed { response, .. }) = self.entries.get_mut(key) {
                if let Some(r) = response.take() {
                    self.response_bytes -= r.len();
                }
            }
        }
        self.responses_dropped += 1;
        true
    }

    fn evict_oldest(&mut self) -> bool {
        if self.remove_oldest_completed() {
            self.evicted += 1;
            true
        } else {
            false
        }
    }

    fn remove_oldest_completed(&mut self) -> bool {
        let Some((slot, key)) = self.completed.pop_first() else {
            return false;
        };
        self.with_response.remove(&slot);
        self.key_bytes -= key.held_bytes();
        if let Some(Entry::Completed {
            response: Some(r), ..
        }) = self.entries.remove(&key)
        {
            self.response_bytes -= r.len();
        }
        true
    }

    /// Drops completed entries that expired before `now` (an entry still
    /// covers the instant it expires at). Harmless to call at any time.
    pub fn handle_timeout(&mut self, now: UnixTime) {
        while let Some((&(expires_at, _), _)) = self.completed.first_key_value() {
            if expires_at >= now {
                break;
            }
            self.remove_oldest_completed();
        }
    }

    /// When the next completed entry expires (the first instant it is gone):
    /// always after the `now` of the last call.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        self.completed
            .first_key_value()
            .map(|(&(expires_at, _), _)| expires_at.saturating_add(Duration::from_micros(1)))
    }

    /// The persistable row of a completed entry (`None` while in flight or unknown).
    #[must_use]
    pub fn record(&self, key: &DedupKey) -> Option<DedupRecord> {
        match self.entries.get(key)? {
            Entry::Completed {
                expires_at,
                response,
                ..
            } => Some(record_of(key, *expires_at, response.as_deref())),
            Entry::InFlight { .. } => None,
        }
    }

    /// Every completed entry as a row, oldest first (in-flight ones are not persisted).
    #[must_use]
    pub fn records(&self) -> Vec<DedupRecord> {
        self.completed
            .values()
            .filter_map(|key| self.record(key))
            .collect()
    }

    /// Loads persisted rows (after a restart); returns how many were taken.
    ///
    /// Expired rows and keys already held are skipped; an expiry further than
    /// `max_age` ahead (another configuration, a clock that stepped back) is
    /// shortened to `now + max_age`. The caps hold: beyond them the oldest go.
    pub fn restore(
        &mut self,
        records: impl IntoIterator<Item = DedupRecord>,
        now: UnixTime,
    ) -> usize {
        self.handle_timeout(now);
        let latest = now.saturating_add(self.config.max_age);
        let mut rows: Vec<(UnixTime, DedupRecord)> = records
            .into_iter()
            .map(|r| (UnixTime::from_millis(r.expires_at_unix_ms).min(latest), r))
            .filter(|(expires_at, _)| *expires_at >= now)
            .collect();
        // Oldest first, so that when the caps bite it is the oldest that go.
        rows.sort_by_key(|(expires_at, _)| *expires_at);
        let mut taken = 0;
        for (expires_at, row) in rows {
            let key = DedupKey::new(row.sender, row.envelope_id);
            if self.entries.contains_key(&key) {
                continue;
            }
            let need = key.held_bytes();
            if !self.make_room_for_key(need) {
                continue;
            }
            while self.completed.len() >= self.config.max_completed {
                self.evict_oldest();
            }
            self.key_bytes += need;
            let seq = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1);
            let response = row.response.and_then(|r| self.admit_response(r.into()));
            if response.is_some() {
                self.with_response.insert((expires_at, seq));
            }
            self.completed.insert((expires_at, seq), key.clone());
            self.entries.insert(
                key,
                Entry::Completed {
                    expires_at,
                    response,
                },
            );
            taken += 1;
        }
        taken
    }
}

fn record_of(key: &DedupKey, expires_at: UnixTime, response: Option<&[u8]>) -> DedupRecord {
    // Rounded up: a restored entry must not expire before the original would have.
    let ms = expires_at.as_micros().saturating_add(999).div_euclid(1000);
    DedupRecord {
        sender: key.sender.clone(),
        envelope_id: key.envelope_id.clone(),
        response: response.map(<[u8]>::to_vec),
        expires_at_unix_ms: ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Payload, TaskRequest, Timestamp};
    use proptest::prelude::*;

    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn at(ms: i64) -> UnixTime {
        UnixTime::from_millis(T0 * 1000 + ms)
    }

    fn urn(name: &str) -> AgentUrn {
        AgentUrn::new(format!("urn:asap:agent:{name}")).unwrap()
    }

    fn key(sender: &str, id: &str) -> DedupKey {
        DedupKey::new(urn(sender), id)
    }

    fn new_ticket(w: &mut DedupWindow<u64>, k: &DedupKey, now: UnixTime) -> DedupTicket {
        match w.check(k.clone(), 0, now) {
            Ok(Admission::New(t)) => t,
            other => panic!("expected New, got {other:?}"),
        }
    }

    fn duplicate(w: &mut DedupWindow<u64>, k: &DedupKey, now: UnixTime) -> Option<Vec<u8>> {
        match w.check(k.clone(), 0, now) {
            Ok(Admission::Duplicate(c)) => c.response.map(|r| r.to_vec()),
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }

    #[test]
    fn the_same_envelope_twice_runs_once_and_gets_the_first_response() {
        // The HTTP bug of issue 9 item 3: two POSTs of one envelope, two task ids.
        let env = Envelope::new(
            "01KDXZ0000ENVREQ0000000001".into(),
            Timestamp::from_unix(at(0)),
            urn("client"),
            urn("echo-server"),
            Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
        );
        let mut w = DedupWindow::default();
        let k = DedupKey::of(&env);
        assert_eq!(k, key("client", "01KDXZ0000ENVREQ0000000001"));
        let t = new_ticket(&mut w, &k, at(0));
        assert_eq!(t.key(), &k);
        assert_eq!(
            w.handle_completed(&t, b"task_1".to_vec(), at(5)),
            Ok(vec![])
        );
        assert_eq!(duplicate(&mut w, &k, at(10)), Some(b"task_1".to_vec()));
        assert_eq!(duplicate(&mut w, &k, at(20)), Some(b"task_1".to_vec()));
        assert_eq!(w.stats().completed, 1);
    }

    #[test]
    fn senders_are_separate_namespaces() {
        let mut w = DedupWindow::default();
        new_ticket(&mut w, &key("a", "1"), at(0));
        new_ticket(&mut w, &key("b", "1"), at(0));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_running_envelope_is_not_started_twice_and_waiters_come_back_once() {
        let mut w = DedupWindow::default();
        let k = key("client", "e1");
        let t = new_ticket(&mut w, &k, at(0));
        assert_eq!(w.check(k.clone(), 7, at(1)), Ok(Admission::InProgress));
        assert_eq!(w.check(k.clone(), 8, at(2)), Ok(Admission::InProgress));
        assert_eq!(w.stats().waiters, 2);
        assert_eq!(w.handle_completed(&t, b"r".to_vec(), at(3)), Ok(vec![7, 8]));
        assert_eq!(w.stats().waiters, 0);
        // The ticket is spent: a second report is refused and changes nothing.
        assert_eq!(
            w.handle_completed(&t, b"other".to_vec(), at(4)),
            Err(DedupError::StaleTicket {
                envelope_id: "e1".into()
            })
        );
        assert!(w.handle_abandoned(&t).is_err());
        assert_eq!(duplicate(&mut w, &k, at(5)), Some(b"r".to_vec()));
    }

    #[test]
    fn an_abandoned_run_may_run_again_and_its_late_answer_is_refused() {
        let mut w = DedupWindow::default();
        let k = key("client", "e1");
        let first = new_ticket(&mut w, &k, at(0));
        assert_eq!(w.check(k.clone(), 5, at(1)), Ok(Admission::InProgress));
        // The waiters learn it failed; the retransmission runs it.
        assert_eq!(w.handle_abandoned(&first), Ok(vec![5]));
        assert_eq!(w.stats(), DedupStats::default());
        let second = new_ticket(&mut w, &k, at(2));
        assert_ne!(first, second);
        assert!(matches!(
            w.handle_completed(&first, b"late".to_vec(), at(3)),
            Err(DedupError::StaleTicket { .. })
        ));
        assert_eq!(
            w.handle_completed(&second, b"b".to_vec(), at(4)),
            Ok(vec![])
        );
        assert_eq!(duplicate(&mut w, &k, at(5)), Some(b"b".to_vec()));
    }

    #[test]
    fn entries_live_exactly_max_age_from_the_first_copy() {
        let mut w = DedupWindow::default();
        let k = key("client", "e1");
        let t = new_ticket(&mut w, &k, at(0));
        w.handle_completed(&t, b"r".to_vec(), at(100_000)).unwrap();
        let expires = at(330_000);
        assert_eq!(
            w.poll_timeout(),
            Some(expires.saturating_add(Duration::from_micros(1)))
        );
        w.handle_timeout(expires);
        assert!(w.poll_timeout().is_some_and(|d| d > expires));
        // Still covered at the instant it expires, gone one microsecond later.
        assert_eq!(duplicate(&mut w, &k, expires), Some(b"r".to_vec()));
        new_ticket(&mut w, &k, expires.saturating_add(Duration::from_micros(1)));
    }

    #[test]
    fn completing_at_the_expiry_instant_keeps_the_entry_and_a_late_one_evicts_nothing() {
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_completed: 1,
            ..Default::default()
        });
        assert!(w.is_empty());
        let (late, edge, kept) = (key("c", "late"), key("c", "edge"), key("c", "kept"));
        let t_late = new_ticket(&mut w, &late, at(0)); // expires at 330 000 ms
        assert!(!w.is_empty());
        assert_eq!(w.len(), 1);
        let t_edge = new_ticket(&mut w, &edge, at(5)); // 330 005
        let t_kept = new_ticket(&mut w, &kept, at(10)); // 330 010
        w.handle_completed(&t_kept, b"k".to_vec(), at(330_001))
            .unwrap();
        // Finished after its expiry: nothing is stored, so nothing (not the one
        // completed entry the cap allows) makes room for it.
        assert_eq!(
            w.handle_completed(&t_late, b"l".to_vec(), at(330_002)),
            Ok(vec![])
        );
        assert_eq!((w.stats().evicted, w.stats().completed), (0, 1));
        assert_eq!(duplicate(&mut w, &kept, at(330_003)), Some(b"k".to_vec()));
        new_ticket(&mut w, &late, at(330_003));
        // Finished at the very instant it expires: still covered, so kept.
        w.handle_completed(&t_edge, b"e".to_vec(), at(330_005))
            .unwrap();
        assert_eq!(duplicate(&mut w, &edge, at(330_005)), Some(b"e".to_vec()));
        assert_eq!(w.stats().evicted, 1, "kept made room for edge");
    }

    #[test]
    fn a_response_filling_the_budget_exactly_is_kept() {
        let kb = key("s", "a").held_bytes();
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_bytes: kb + 10,
            ..Default::default()
        });
        let a = new_ticket(&mut w, &key("s", "a"), at(0));
        w.handle_completed(&a, vec![7; 10], at(0)).unwrap();
        assert_eq!(duplicate(&mut w, &key("s", "a"), at(1)), Some(vec![7; 10]));
        assert_eq!(w.stats().held_bytes, kb + 10);
        assert_eq!(w.stats().responses_dropped, 0);
    }

    #[test]
    fn responses_give_way_oldest_first_exactly_as_far_as_needed() {
        let kb = key("s", "a").held_bytes(); // every key here is as long
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_bytes: 3 * kb + 10,
            ..Default::default()
        });
        let a = new_ticket(&mut w, &key("s", "a"), at(0));
        w.handle_completed(&a, vec![1; 4], at(0)).unwrap();
        let b = new_ticket(&mut w, &key("s", "b"), at(1));
        let c = new_ticket(&mut w, &key("s", "c"), at(1));
        // b's response fills the budget to the byte (c's key is reserved): a's stays.
        w.handle_completed(&b, vec![2; 6], at(2)).unwrap();
        assert_eq!(w.stats().held_bytes, 3 * kb + 10);
        assert_eq!(w.stats().responses_dropped, 0);
        assert_eq!(duplicate(&mut w, &key("s", "a"), at(2)), Some(vec![1; 4]));
        // c's 10 bytes need both older responses gone, not only the oldest.
        w.handle_completed(&c, vec![3; 10], at(3)).unwrap();
        assert_eq!(w.stats().held_bytes, 3 * kb + 10);
        assert_eq!(w.stats().responses_dropped, 2);
        assert_eq!(duplicate(&mut w, &key("s", "a"), at(4)), None);
        assert_eq!(duplicate(&mut w, &key("s", "b"), at(4)), None);
        assert_eq!(duplicate(&mut w, &key("s", "c"), at(4)), Some(vec![3; 10]));
        assert_eq!(w.stats().evicted, 0);
    }

    #[test]
    fn in_flight_entries_never_expire() {
        let mut w = DedupWindow::default();
        let k = key("client", "slow");
        let t = new_ticket(&mut w, &k, at(0));
        assert_eq!(w.poll_timeout(), None);
        let much_later = at(3_600_000);
        w.handle_timeout(much_later);
        assert_eq!(w.check(k.clone(), 1, much_later), Ok(Admission::InProgress));
        // Finished after its age: nothing to keep (the replay window refuses every copy now).
        assert_eq!(
            w.handle_completed(&t, b"r".to_vec(), much_later),
            Ok(vec![1])
        );
        assert!(w.is_empty());
        assert_eq!(w.stats().held_bytes, 0);
    }

    #[test]
    fn the_default_age_outlives_every_copy_the_replay_window_admits() {
        // A copy first arrives at `first`; whatever its timestamp (as old as the
        // window allows, current, or as far ahead), every copy arriving after the
        // dedup entry expired is refused by the replay window.
        let replay = ReplayWindow::default();
        assert_eq!(DedupConfig::default().max_age, Duration::from_secs(330));
        assert_eq!(
            DedupConfig::for_replay_window(&replay),
            DedupConfig::default()
        );
        let first = at(0);
        let expiry_passed = first
            .saturating_add(DEFAULT_DEDUP_MAX_AGE)
            .saturating_add(Duration::from_micros(1));
        for stamp_ms in [-300_000, 0, 30_000] {
            let env = Envelope::new(
                "e".into(),
                Timestamp::from_unix(at(stamp_ms)),
                urn("client"),
                urn("server"),
                Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
            );
            assert!(replay.check(&env, first).is_ok(), "first copy {stamp_ms}");
            assert!(
                replay.check(&env, expiry_passed).is_err(),
                "late copy {stamp_ms}"
            );
        }
        let custom = ReplayWindow {
            max_age: Duration::from_secs(60),
            max_future: Duration::from_secs(5),
        };
        assert_eq!(
            DedupConfig::for_replay_window(&custom).max_age,
            Duration::from_secs(65)
        );
    }

    #[test]
    fn full_of_in_flight_entries_it_fails_closed() {
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_in_flight: 2,
            ..Default::default()
        });
        let a = new_ticket(&mut w, &key("c", "a"), at(0));
        new_ticket(&mut w, &key("c", "b"), at(0));
        assert_eq!(
            w.check(key("c", "x"), 0, at(1)),
            Err(DedupError::InFlightFull { limit: 2 })
        );
        // Nothing was forgotten: both are still running.
        assert_eq!(w.check(key("c", "a"), 1, at(1)), Ok(Admission::InProgress));
        assert_eq!(w.check(key("c", "b"), 2, at(1)), Ok(Admission::InProgress));
        w.handle_completed(&a, b"r".to_vec(), at(2)).unwrap();
        new_ticket(&mut w, &key("c", "x"), at(3));
        let msg = DedupError::InFlightFull { limit: 2 }.to_string();
        assert!(msg.starts_with("local capacity"), "{msg}");
    }

    #[test]
    fn waiters_are_capped() {
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_waiters: 1,
            ..Default::default()
        });
        let k = key("c", "a");
        let t = new_ticket(&mut w, &k, at(0));
        assert_eq!(w.check(k.clone(), 1, at(0)), Ok(Admission::InProgress));
        assert_eq!(
            w.check(k.clone(), 2, at(0)),
            Err(DedupError::WaitersFull { limit: 1 })
        );
        assert_eq!(w.handle_completed(&t, b"r".to_vec(), at(1)), Ok(vec![1]));
    }

    #[test]
    fn the_oldest_completed_entry_goes_beyond_the_count() {
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_completed: 2,
            ..Default::default()
        });
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let t = new_ticket(&mut w, &key("s", id), at(i as i64));
            w.handle_completed(&t, id.as_bytes().to_vec(), at(i as i64))
                .unwrap();
        }
        assert_eq!(w.stats().completed, 2);
        assert_eq!(w.stats().evicted, 1);
        assert_eq!(
            duplicate(&mut w, &key("s", "b"), at(5)),
            Some(b"b".to_vec())
        );
        assert_eq!(
            duplicate(&mut w, &key("s", "c"), at(5)),
            Some(b"c".to_vec())
        );
        new_ticket(&mut w, &key("s", "a"), at(5));
    }

    #[test]
    fn byte_pressure_drops_responses_before_keys() {
        let kb = key("s", "a").held_bytes(); // every key here is as long
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_bytes: 2 * kb + 10,
            ..Default::default()
        });
        let a = new_ticket(&mut w, &key("s", "a"), at(0));
        w.handle_completed(&a, vec![1; 8], at(0)).unwrap();
        let b = new_ticket(&mut w, &key("s", "b"), at(1));
        // Room for b's response only by dropping a's; a's key stays.
        w.handle_completed(&b, vec![2; 6], at(1)).unwrap();
        assert_eq!(duplicate(&mut w, &key("s", "a"), at(2)), None);
        assert_eq!(duplicate(&mut w, &key("s", "b"), at(2)), Some(vec![2; 6]));
        assert_eq!(w.stats().responses_dropped, 1);
        assert_eq!(w.stats().held_bytes, 2 * kb + 6);
        // A third key: b's response goes, then the oldest key (a) is forgotten.
        let c = new_ticket(&mut w, &key("s", "c"), at(3));
        assert_eq!((w.stats().responses_dropped, w.stats().evicted), (2, 1));
        assert_eq!(duplicate(&mut w, &key("s", "b"), at(3)), None);
        // Too large for what the keys leave: c's key is kept, its response is not.
        w.handle_completed(&c, vec![3; 11], at(4)).unwrap();
        assert_eq!(duplicate(&mut w, &key("s", "c"), at(4)), None);
        assert_eq!(w.stats().responses_dropped, 3);
        assert_eq!(w.stats().held_bytes, 2 * kb);
        // a was forgotten, so it is new again (and b, the oldest now, gives way).
        new_ticket(&mut w, &key("s", "a"), at(5));
        assert_eq!(w.stats().evicted, 2);
        assert!(w.stats().held_bytes <= w.config().max_bytes);
    }

    #[test]
    fn keys_of_running_handlers_never_give_way() {
        let k_bytes = key("s", "a").held_bytes();
        let mut w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_bytes: k_bytes,
            ..Default::default()
        });
        new_ticket(&mut w, &key("s", "a"), at(0));
        assert_eq!(
            w.check(key("s", "b"), 0, at(0)),
            Err(DedupError::BytesFull { limit: k_bytes })
        );
        assert_eq!(w.check(key("s", "a"), 1, at(0)), Ok(Admission::InProgress));
    }

    #[test]
    fn zero_caps_act_as_one() {
        let w: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_completed: 0,
            max_in_flight: 0,
            max_waiters: 0,
            max_bytes: 0,
            ..Default::default()
        });
        let c = w.config();
        assert_eq!(
            (c.max_completed, c.max_in_flight, c.max_waiters, c.max_bytes),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn records_round_trip_through_serde_and_restore() {
        let mut w = DedupWindow::default();
        let done = new_ticket(&mut w, &key("client", "done"), at(0));
        w.handle_completed(&done, b"{\"r\":1}".to_vec(), at(1))
            .unwrap();
        let _running = new_ticket(&mut w, &key("client", "running"), at(2));
        let rows = w.records();
        assert_eq!(rows.len(), 1, "only completed entries are persisted");
        assert_eq!(w.record(&key("client", "running")), None);
        assert_eq!(w.record(&key("client", "nope")), None);
        let row = &rows[0];
        assert_eq!(row.expires_at_unix_ms, (T0 * 1000) + 330_000);
        let text = serde_json::to_string(row).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"sender":"urn:asap:agent:client","envelope_id":"done","response":"eyJyIjoxfQ==","expires_at_unix_ms":{}}}"#,
                row.expires_at_unix_ms
            )
        );
        let back: DedupRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, row);

        let mut restarted: DedupWindow<u64> = DedupWindow::default();
        assert_eq!(restarted.restore(rows.clone(), at(10)), 1);
        assert_eq!(
            duplicate(&mut restarted, &key("client", "done"), at(11)),
            Some(b"{\"r\":1}".to_vec())
        );
        // Restoring again adds nothing; the one running at the crash runs again.
        assert_eq!(restarted.restore(rows.clone(), at(12)), 0);
        new_ticket(&mut restarted, &key("client", "running"), at(13));
        // An expired row is skipped.
        let mut late: DedupWindow<u64> = DedupWindow::default();
        assert_eq!(late.restore(rows, at(330_001)), 0);
    }

    #[test]
    fn restore_rounds_up_clamps_and_keeps_the_caps() {
        let mut w = DedupWindow::default();
        let t = new_ticket(&mut w, &key("c", "x"), UnixTime::from_micros(1_500));
        w.handle_completed(&t, Vec::new(), UnixTime::from_micros(1_500))
            .unwrap();
        // 1.5 ms + 330 s, rounded up to whole milliseconds.
        assert_eq!(w.records()[0].expires_at_unix_ms, 330_002);

        let row = |id: &str, expires_ms: i64, response: Option<&[u8]>| DedupRecord {
            sender: urn("c"),
            envelope_id: id.into(),
            response: response.map(<[u8]>::to_vec),
            expires_at_unix_ms: expires_ms,
        };
        let mut small: DedupWindow<u64> = DedupWindow::new(DedupConfig {
            max_completed: 2,
            ..Default::default()
        });
        let base = T0 * 1000;
        let taken = small.restore(
            [
                row("far", i64::MAX, Some(b"f")),
                row("old", base + 1_000, None),
                row("mid", base + 2_000, Some(b"m")),
            ],
            at(0),
        );
        assert_eq!(taken, 3);
        // The newest two stay; "far" was clamped to now + 330 s.
        assert_eq!(small.stats().completed, 2);
        assert_eq!(
            duplicate(&mut small, &key("c", "mid"), at(0)),
            Some(b"m".to_vec())
        );
        assert_eq!(
            duplicate(&mut small, &key("c", "far"), at(0)),
            Some(b"f".to_vec())
        );
        assert_eq!(
            small.record(&key("c", "far")).unwrap().expires_at_unix_ms,
            base + 330_000
        );
        assert_eq!(
            duplicate(&mut small, &key("c", "far"), at(330_000)),
            Some(b"f".to_vec())
        );
        new_ticket(&mut small, &key("c", "old"), at(0));
    }

    // ---------------------------------------------------------------- properties

    #[derive(Debug, Clone)]
    enum Op {
        Check { key: u8, sender: bool },
        Complete { ticket: u8, len: u8 },
        Abandon { ticket: u8 },
        Advance { ms: u32 },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..8, any::<bool>()).prop_map(|(key, sender)| Op::Check { key, sender }),
            2 => (any::<u8>(), any::<u8>()).prop_map(|(ticket, len)| Op::Complete { ticket, len }),
            1 => any::<u8>().prop_map(|ticket| Op::Abandon { ticket }),
            2 => (0u32..200_000).prop_map(|ms| Op::Advance { ms }),
            1 => Just(Op::Restart),
        ]
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Model {
        InFlight {
            waiters: Vec<u64>,
        },
        Completed {
            expires_at: UnixTime,
            response: Vec<u8>,
        },
    }

    fn k(key: u8, sender: bool) -> DedupKey {
        DedupKey::new(urn(if sender { "a" } else { "b" }), format!("e{key}"))
    }

    proptest! {
        /// With room to spare (no eviction), the window answers exactly as a
        /// model of "run once per window, waiters answered once" does.
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(op(), 1..80)) {
            let mut w: DedupWindow<u64> = DedupWindow::default();
            let mut model: HashMap<DedupKey, Model> = HashMap::new();
            let mut tickets: Vec<DedupTicket> = Vec::new();
            let mut now = at(0);
            let mut next_waiter = 0u64;
            let mut handed_back: Vec<u64> = Vec::new();
            let mut registered: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Check { key, sender } => {
                        let key = k(key, sender);
                        next_waiter += 1;
                        let got = w.check(key.clone(), next_waiter, now).unwrap();
                        let live = match model.get(&key) {
                            Some(Model::Completed { expires_at, .. }) if *expires_at < now => None,
                            other => other.cloned(),
                        };
                        match (live, got) {
                            (None, Admission::New(t)) => {
                                model.insert(key, Model::InFlight { waiters: vec![] });
                                tickets.push(t);
                            }
                            (Some(Model::InFlight { .. }), Admission::InProgress) => {
                                registered.push(next_waiter);
                                if let Some(Model::InFlight { waiters }) = model.get_mut(&key) {
                                    waiters.push(next_waiter);
                                }
                            }
                            (Some(Model::Completed { response, .. }), Admission::Duplicate(c)) => {
                                prop_assert_eq!(c.response.as_deref(), Some(&response[..]));
                            }
                            (expected, got) => prop_assert!(false, "model {:?}, window {:?}", expected, got),
                        }
                    }
                    Op::Complete { ticket, len } if !tickets.is_empty() => {
                        let t = tickets.swap_remove(usize::from(ticket) % tickets.len());
                        let response = vec![len; usize::from(len)];
                        let waiters = w.handle_completed(&t, response.clone(), now).unwrap();
                        let Some(Model::InFlight { waiters: expected }) = model.remove(t.key()) else {
                            panic!("ticket without in-flight model entry");
                        };
                        prop_assert_eq!(&waiters, &expected);
                        handed_back.extend(waiters);
                        if let Some(r) = w.record(t.key()) {
                            model.insert(t.key().clone(), Model::Completed {
                                expires_at: UnixTime::from_millis(r.expires_at_unix_ms),
                                response,
                            });
                        }
                    }
                    Op::Abandon { ticket } if !tickets.is_empty() => {
                        let t = tickets.swap_remove(usize::from(ticket) % tickets.len());
                        let waiters = w.handle_abandoned(&t).unwrap();
                        let Some(Model::InFlight { waiters: expected }) = model.remove(t.key()) else {
                            panic!("ticket without in-flight model entry");
                        };
                        prop_assert_eq!(&waiters, &expected);
                        handed_back.extend(waiters);
                    }
                    Op::Complete { .. } | Op::Abandon { .. } => {}
                    Op::Advance { ms } => {
                        now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                        w.handle_timeout(now);
                        if let Some(d) = w.poll_timeout() {
                            prop_assert!(d > now);
                        }
                    }
                    Op::Restart => {
                        // A crash: running handlers and their waiters are lost.
                        let rows = w.records();
                        w = DedupWindow::default();
                        w.restore(rows, now);
                        for t in tickets.drain(..) {
                            if let Some(Model::InFlight { waiters }) = model.remove(t.key()) {
                                registered.retain(|r| !waiters.contains(r));
                            }
                        }
                    }
                }
                let s = w.stats();
                prop_assert_eq!(s.in_flight, tickets.len());
                prop_assert_eq!(s.evicted, 0);
            }
            for t in tickets.drain(..) {
                handed_back.extend(w.handle_completed(&t, Vec::new(), now).unwrap());
            }
            handed_back.sort_unstable();
            registered.sort_unstable();
            prop_assert_eq!(handed_back, registered, "every waiter comes back exactly once");
            prop_assert_eq!(w.stats().waiters, 0);
        }

        /// Under tiny caps every bound holds after every operation, and an
        /// envelope in flight is never admitted as new again.
        #[test]
        fn bounds_hold_and_in_flight_is_never_forgotten(
            ops in proptest::collection::vec(op(), 1..120),
            max_completed in 1usize..4,
            max_in_flight in 1usize..4,
            max_waiters in 1usize..4,
            max_bytes in 0usize..200,
        ) {
            let config = DedupConfig { max_completed, max_in_flight, max_waiters, max_bytes, ..Default::default() };
            let mut w: DedupWindow<u64> = DedupWindow::new(config);
            let mut tickets: Vec<DedupTicket> = Vec::new();
            let mut now = at(0);
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Check { key, sender } => {
                        let key = k(key, sender);
                        let running = tickets.iter().any(|t| t.key() == &key);
                        match w.check(key, n as u64, now) {
                            Ok(Admission::New(t)) => {
                                prop_assert!(!running, "a running envelope admitted twice");
                                tickets.push(t);
                            }
                            Ok(Admission::InProgress) => prop_assert!(running),
                            Ok(Admission::Duplicate(_)) => prop_assert!(!running),
                            Err(DedupError::WaitersFull { .. }) => prop_assert!(running),
                            Err(_) => prop_assert!(!running),
                        }
                    }
                    Op::Complete { ticket, len } if !tickets.is_empty() => {
                        let t = tickets.swap_remove(usize::from(ticket) % tickets.len());
                        prop_assert!(w.handle_completed(&t, vec![0; usize::from(len)], now).is_ok());
                    }
                    Op::Abandon { ticket } if !tickets.is_empty() => {
                        let t = tickets.swap_remove(usize::from(ticket) % tickets.len());
                        prop_assert!(w.handle_abandoned(&t).is_ok());
                    }
                    Op::Complete { .. } | Op::Abandon { .. } => {}
                    Op::Advance { ms } => {
                        now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                        w.handle_timeout(now);
                    }
                    Op::Restart => {
                        let rows = w.records();
                        w = DedupWindow::new(config);
                        w.restore(rows, now);
                        tickets.clear();
                    }
                }
                let s = w.stats();
                let c = w.config();
                prop_assert!(s.completed <= c.max_completed);
                prop_assert!(s.in_flight <= c.max_in_flight);
                prop_assert!(s.waiters <= c.max_waiters);
                prop_assert!(s.held_bytes <= c.max_bytes, "{} > {}", s.held_bytes, c.max_bytes);
                prop_assert_eq!(s.completed + s.in_flight, w.len());
            }
        }
    }
}
