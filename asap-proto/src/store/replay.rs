//! Replay state that must outlive the process: the nonces an agent has
//! accepted, and the receiver's envelope-id dedup window.
//!
//! Records are primitive (strings, bytes, an expiry in unix milliseconds) so
//! any backend stores them as they are. A record is *live* while
//! `now <= expires_at_unix_ms` (the millisecond of `now`, floored: a record is
//! never dropped before its expiry) and may be deleted once `now` is past it.
//!
//! ```
//! use asap_proto::model::UnixTime;
//! use asap_proto::store::{MemoryReplayStore, NonceRecord, ReplayStore};
//!
//! let mut store = MemoryReplayStore::new();
//! let record = NonceRecord { sender: "urn:asap:agent:a".into(), nonce: "n-1".into(), expires_at_unix_ms: 2_000 };
//! store.record_nonce(&record)?;
//! assert_eq!(store.load_nonces(UnixTime::from_millis(2_000))?, vec![record]);
//! assert_eq!(store.purge_expired(UnixTime::from_millis(2_001))?, 1);
//! assert!(store.load_nonces(UnixTime::from_millis(0))?.is_empty());
//! # Ok::<(), asap_proto::store::StoreError>(())
//! ```

use std::collections::BTreeMap;

use super::StoreError;
use crate::model::UnixTime;

/// A nonce an agent accepted from `sender`, refused again until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NonceRecord {
    /// The envelope's sender URN (nonces are scoped per sender).
    pub sender: String,
    /// The envelope's `extensions.nonce`.
    pub nonce: String,
    /// The last unix millisecond at which the envelope could still pass the
    /// replay window (its timestamp plus the maximum age, rounded up).
    pub expires_at_unix_ms: i64,
}

impl NonceRecord {
    /// Whether the record is still live at `now`.
    #[must_use]
    pub fn is_live(&self, now: UnixTime) -> bool {
        now.as_millis() <= self.expires_at_unix_ms
    }
}

/// The answer given to an envelope, kept so a duplicate of it (same sender,
/// same envelope id) gets the same answer instead of a second run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupRecord {
    /// The envelope's sender URN.
    pub sender: String,
    /// The envelope's id.
    pub envelope_id: String,
    /// The response body that was sent.
    pub response: Vec<u8>,
    /// The last unix millisecond the record is kept.
    pub expires_at_unix_ms: i64,
}

impl DedupRecord {
    /// Whether the record is still live at `now`.
    #[must_use]
    pub fn is_live(&self, now: UnixTime) -> bool {
        now.as_millis() <= self.expires_at_unix_ms
    }
}

/// Durable replay state (nonces, dedup window). Every backend passes
/// `store::contract::replay_store`.
///
/// * Keys are exact: `(sender, nonce)` and `(sender, envelope_id)`.
/// * Recording a nonce again keeps the later expiry; recording a dedup
///   record again replaces it (the window had forgotten it, so the newer
///   answer is the one given).
/// * Loads return live records only, by expiry, then key.
/// * Empty senders, nonces and envelope ids are refused with
///   [`StoreError::InvalidInput`], and nothing is written.
pub trait ReplayStore {
    /// Stores one accepted nonce.
    fn record_nonce(&mut self, record: &NonceRecord) -> Result<(), StoreError>;
    /// The nonces live at `now`.
    fn load_nonces(&self, now: UnixTime) -> Result<Vec<NonceRecord>, StoreError>;
    /// Stores one answer of the dedup window.
    fn record_dedup(&mut self, record: &DedupRecord) -> Result<(), StoreError>;
    /// The dedup records live at `now`.
    fn load_dedup(&self, now: UnixTime) -> Result<Vec<DedupRecord>, StoreError>;
    /// Deletes every record (both kinds) that has expired at `now`; returns how many.
    fn purge_expired(&mut self, now: UnixTime) -> Result<u64, StoreError>;

    /// Claims an envelope before it runs (several replicas on one store:
    /// [`ReplayClaim`] says what is decided, in which order). One transaction
    /// where the backend has them; two replicas claiming the same key at once
    /// get one [`ClaimOutcome::Won`].
    fn claim(&mut self, claim: &ReplayClaim) -> Result<ClaimOutcome, StoreError>;

    /// Stores several nonces (one transaction where the backend has them).
    fn record_nonces(&mut self, records: &[NonceRecord]) -> Result<(), StoreError> {
        records.iter().try_for_each(check_nonce_record)?;
        records.iter().try_for_each(|r| self.record_nonce(r))
    }
}

/// The claim a replica makes on shared replay state before it runs an
/// envelope ([`Step::Claim`](crate::server::Step::Claim)).
///
/// Decided in this order, against `now`:
/// 1. `nonce`: a live record with the same sender and nonce means
///    [`ClaimOutcome::NonceReplayed`] (nothing is written); otherwise it is stored.
/// 2. `dedup`: a live *answer* for the same sender and envelope id means
///    [`ClaimOutcome::Answered`]; a live *claim* whose lease has not ended
///    means [`ClaimOutcome::Running`] (another replica runs it); otherwise
///    (none, expired, or a lease that ended: its replica died) the claim is
///    stored and this replica runs the envelope.
/// 3. [`ClaimOutcome::Won`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayClaim {
    /// The envelope's nonce, when nonces are checked.
    pub nonce: Option<NonceRecord>,
    /// The envelope's dedup key, when the receiver dedup window is on.
    pub dedup: Option<DedupClaim>,
    /// The wall clock of the claiming replica.
    pub now: UnixTime,
}

/// A dedup-window claim: "this replica runs this envelope until `lease_until`".
/// [`ReplayStore::record_dedup`] later replaces it with the answer; a record
/// already expired releases it (the run failed: a copy may run it again).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupClaim {
    /// The envelope's sender.
    pub sender: String,
    /// The envelope's id.
    pub envelope_id: String,
    /// Past this instant (unix ms) the claimant is taken as dead and another
    /// replica may claim the envelope again.
    pub lease_until_unix_ms: i64,
    /// The claim (and the answer that replaces it) may be purged after this.
    pub expires_at_unix_ms: i64,
}

/// What a [`ReplayClaim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ClaimOutcome {
    /// This replica runs the envelope.
    Won,
    /// The nonce was already used (a replay): refuse the envelope.
    NonceReplayed,
    /// Already processed: this is the first answer (empty: processed, answer not kept).
    Answered(Vec<u8>),
    /// Another replica is running it now: ask again a moment later.
    Running,
}

/// Checks a claim's keys (the same rules as the records it stands for).
pub fn check_replay_claim(c: &ReplayClaim) -> Result<(), StoreError> {
    if let Some(n) = &c.nonce {
        check_nonce_record(n)?;
    }
    if let Some(d) = &c.dedup {
        non_empty("dedup claim", "sender", &d.sender)?;
        non_empty("dedup claim", "envelope_id", &d.envelope_id)?;
    }
    Ok(())
}

impl<T: ReplayStore + ?Sized> ReplayStore for Box<T> {
    fn record_nonce(&mut self, record: &NonceRecord) -> Result<(), StoreError> {
        (**self).record_nonce(record)
    }
    fn load_nonces(&self, now: UnixTime) -> Result<Vec<NonceRecord>, StoreError> {
        (**self).load_nonces(now)
    }
    fn record_dedup(&mut self, record: &DedupRecord) -> Result<(), StoreError> {
        (**self).record_dedup(record)
    }
    fn load_dedup(&self, now: UnixTime) -> Result<Vec<DedupRecord>, StoreError> {
        (**self).load_dedup(now)
    }
    fn purge_expired(&mut self, now: UnixTime) -> Result<u64, StoreError> {
        (**self).purge_expired(now)
    }
    fn record_nonces(&mut self, records: &[NonceRecord]) -> Result<(), StoreError> {
        (**self).record_nonces(records)
    }
    fn claim(&mut self, claim: &ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        (**self).claim(claim)
    }
}

fn non_empty(what: &'static str, field: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::InvalidInput {
            what,
            reason: format!("{field} is empty"),
        });
    }
    Ok(())
}

/// Refuses a nonce record a store cannot key (empty sender or nonce).
pub fn check_nonce_record(r: &NonceRecord) -> Result<(), StoreError> {
    non_empty("nonce record", "sender", &r.sender)?;
    non_empty("nonce record", "nonce", &r.nonce)
}

/// Refuses a dedup record a store cannot key (empty sender or envelope id).
pub fn check_dedup_record(r: &DedupRecord) -> Result<(), StoreError> {
    non_empty("dedup record", "sender", &r.sender)?;
    non_empty("dedup record", "envelope_id", &r.envelope_id)
}

/// Replay state in memory: for tests and embedders (it does not survive the
/// process, which is the point of the trait; an agent on the memory backend
/// keeps its nonces in the server's `NonceStore` alone). Every table keeps an
/// expiry index, so a purge costs what it removes, not what is held.
#[derive(Debug, Clone, Default)]
pub struct MemoryReplayStore {
    nonces: Expiring<()>,
    dedup: Expiring<Vec<u8>>,
    /// Unanswered dedup claims, valued by their lease end.
    claims: Expiring<i64>,
}

/// A (sender, id) key: a nonce, or an envelope id.
type ReplayKey = (String, String);

/// Records keyed per sender with an expiry (the last live millisecond),
/// indexed by that expiry too.
#[derive(Debug, Clone)]
struct Expiring<V> {
    records: BTreeMap<ReplayKey, (V, i64)>,
    by_expiry: std::collections::BTreeSet<(i64, ReplayKey)>,
}

impl<V> Default for Expiring<V> {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            by_expiry: std::collections::BTreeSet::new(),
        }
    }
}

impl<V> Expiring<V> {
    fn get(&self, key: &ReplayKey) -> Option<&(V, i64)> {
        self.records.get(key)
    }

    fn insert(&mut self, key: ReplayKey, value: V, expires_at_ms: i64) {
        if let Some((_, old)) = self.records.get(&key) {
            self.by_expiry.remove(&(*old, key.clone()));
        }
        self.by_expiry.insert((expires_at_ms, key.clone()));
        self.records.insert(key, (value, expires_at_ms));
    }

    fn remove(&mut self, key: &ReplayKey) {
        if let Some((_, at)) = self.records.remove(key) {
            self.by_expiry.remove(&(at, key.clone()));
        }
    }

    /// Drops every record that expired before `now_ms`; how many went.
    fn purge(&mut self, now_ms: i64) -> usize {
        let mut purged = 0;
        while let Some(first) = self.by_expiry.first() {
            if first.0 >= now_ms {
                break;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.records.remove(&key);
                purged += 1;
            }
        }
        purged
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    /// Live records in (expiry, key) order.
    fn live(&self, now_ms: i64) -> impl Iterator<Item = (&ReplayKey, &V, i64)> {
        self.by_expiry
            .range((now_ms, (String::new(), String::new()))..)
            .filter_map(|(at, key)| self.records.get(key).map(|(v, _)| (key, v, *at)))
    }
}

impl MemoryReplayStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records held, over nonces, answers and claims (expired ones until purged).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nonces.len() + self.dedup.len() + self.claims.len()
    }

    /// Whether the store holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReplayStore for MemoryReplayStore {
    fn record_nonce(&mut self, r: &NonceRecord) -> Result<(), StoreError> {
        check_nonce_record(r)?;
        let key = (r.sender.clone(), r.nonce.clone());
        let at = self
            .nonces
            .get(&key)
            .map_or(r.expires_at_unix_ms, |(_, at)| {
                (*at).max(r.expires_at_unix_ms)
            });
        self.nonces.insert(key, (), at);
        Ok(())
    }

    fn load_nonces(&self, now: UnixTime) -> Result<Vec<NonceRecord>, StoreError> {
        Ok(self
            .nonces
            .live(now.as_millis())
            .map(|((sender, nonce), (), at)| NonceRecord {
                sender: sender.clone(),
                nonce: nonce.clone(),
                expires_at_unix_ms: at,
            })
            .collect())
    }

    fn record_dedup(&mut self, r: &DedupRecord) -> Result<(), StoreError> {
        check_dedup_record(r)?;
        let key = (r.sender.clone(), r.envelope_id.clone());
        self.claims.remove(&key);
        self.dedup
            .insert(key, r.response.clone(), r.expires_at_unix_ms);
        Ok(())
    }

    fn load_dedup(&self, now: UnixTime) -> Result<Vec<DedupRecord>, StoreError> {
        Ok(self
            .dedup
            .live(now.as_millis())
            .map(|((sender, id), response, at)| DedupRecord {
                sender: sender.clone(),
                envelope_id: id.clone(),
                response: response.clone(),
                expires_at_unix_ms: at,
            })
            .collect())
    }

    fn purge_expired(&mut self, now: UnixTime) -> Result<u64, StoreError> {
        let now_ms = now.as_millis();
        let purged =
            self.nonces.purge(now_ms) + self.dedup.purge(now_ms) + self.claims.purge(now_ms);
        Ok(purged as u64)
    }

    fn claim(&mut self, c: &ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        check_replay_claim(c)?;
        let now_ms = c.now.as_millis();
        if let Some(n) = &c.nonce {
            let key = (n.sender.clone(), n.nonce.clone());
            if self.nonces.get(&key).is_some_and(|(_, at)| *at >= now_ms) {
                return Ok(ClaimOutcome::NonceReplayed);
            }
            self.nonces.insert(key, (), n.expires_at_unix_ms);
        }
        if let Some(d) = &c.dedup {
            let key = (d.sender.clone(), d.envelope_id.clone());
            match self.dedup.get(&key) {
                Some((response, at)) if *at >= now_ms => {
                    return Ok(ClaimOutcome::Answered(response.clone()))
                }
                _ => {}
            }
            if self
                .claims
                .get(&key)
                .is_some_and(|(lease, at)| *lease >= now_ms && *at >= now_ms)
            {
                return Ok(ClaimOutcome::Running);
            }
            self.dedup.remove(&key);
            self.claims
                .insert(key, d.lease_until_unix_ms, d.expires_at_unix_ms);
        }
        Ok(ClaimOutcome::Won)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A replica claims envelope `key` at time step `dt` later.
        Claim { key: u8, dt: u16 },
        /// The current winner of `key` answers it (or fails: releases it).
        Finish { key: u8, dt: u16, fail: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u16..400).prop_map(|(key, dt)| Op::Claim { key, dt }),
            (0u8..4, 0u16..400, any::<bool>()).prop_map(|(key, dt, fail)| Op::Finish {
                key,
                dt,
                fail
            }),
        ]
    }

    const LEASE: i64 = 1_000;
    const AGE: i64 = 5_000;

    proptest! {
        /// However claims and answers interleave, an envelope is won again only
        /// when nobody can still be running it (its lease ended, its run
        /// failed, or it expired), and once answered every claim gets that answer.
        #[test]
        fn a_key_has_one_live_winner_and_then_its_answer(ops in prop::collection::vec(op(), 1..120)) {
            let mut store = MemoryReplayStore::new();
            let mut now = 0i64;
            // key -> (winner's lease end, claimed at) while running; answered bodies.
            let mut running: BTreeMap<u8, (i64, i64)> = BTreeMap::new();
            let mut answered: BTreeMap<u8, (Vec<u8>, i64)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Claim { key, dt } => {
                        now += i64::from(dt);
                        let claim = ReplayClaim {
                            nonce: None,
                            dedup: Some(DedupClaim {
                                sender: "s".into(),
                                envelope_id: format!("e{key}"),
                                lease_until_unix_ms: now + LEASE,
                                expires_at_unix_ms: now + AGE,
                            }),
                            now: UnixTime::from_millis(now),
                        };
                        let got = store.claim(&claim).unwrap();
                        let live_answer = answered.get(&key).filter(|(_, exp)| *exp >= now);
                        let live_run = running
                            .get(&key)
                            .filter(|(lease, at)| *lease >= now && at + AGE >= now);
                        match (live_answer, live_run) {
                            (Some((body, _)), _) => prop_assert_eq!(got, ClaimOutcome::Answered(body.clone())),
                            (None, Some(_)) => prop_assert_eq!(got, ClaimOutcome::Running),
                            (None, None) => {
                                prop_assert_eq!(got, ClaimOutcome::Won);
                                answered.remove(&key);
                                running.insert(key, (now + LEASE, now));
                            }
                        }
                    }
                    Op::Finish { key, dt, fail } => {
                        now += i64::from(dt);
                        if running.remove(&key).is_none() {
                            continue;
                        }
                        let (body, expires) = if fail {
                            (Vec::new(), now - 1)
                        } else {
                            (format!("answer {key} at {now}").into_bytes(), now + AGE)
                        };
                        store
                            .record_dedup(&DedupRecord {
                                sender: "s".into(),
                                envelope_id: format!("e{key}"),
                                response: body.clone(),
                                expires_at_unix_ms: expires,
                            })
                            .unwrap();
                        if !fail {
                            answered.insert(key, (body, expires));
                        }
                    }
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Write {
        Nonce { key: u8, at: i64 },
        Dedup { key: u8, at: i64 },
        Claim { key: u8, lease: i64, at: i64 },
        Purge,
        Step { dt: i64 },
    }

    fn write() -> impl Strategy<Value = Write> {
        prop_oneof![
            (0u8..6, 0i64..60).prop_map(|(key, at)| Write::Nonce { key, at }),
            (0u8..6, 0i64..60).prop_map(|(key, at)| Write::Dedup { key, at }),
            (0u8..6, 0i64..30, 0i64..60).prop_map(|(key, lease, at)| Write::Claim {
                key,
                lease,
                at
            }),
            Just(Write::Purge),
            (0i64..20).prop_map(|dt| Write::Step { dt }),
        ]
    }

    proptest! {
        /// The expiry index never disagrees with a store that scans everything:
        /// the same live records in the same order, the same purge counts,
        /// whatever the writes, updates (a nonce keeps its later expiry) and purges.
        #[test]
        fn the_expiry_index_agrees_with_a_full_scan(writes in prop::collection::vec(write(), 1..150)) {
            let mut store = MemoryReplayStore::new();
            // The model: key -> expiry (and response / lease), purged by `retain`.
            let mut nonces: BTreeMap<String, i64> = BTreeMap::new();
            let mut dedup: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
            let mut claims: BTreeMap<String, (i64, i64)> = BTreeMap::new();
            let mut now = 0i64;
            for w in writes {
                match w {
                    Write::Nonce { key, at } => {
                        let (id, at) = (format!("n{key}"), now + at);
                        store.record_nonce(&NonceRecord { sender: "s".into(), nonce: id.clone(), expires_at_unix_ms: at }).unwrap();
                        let e = nonces.entry(id).or_insert(at);
                        *e = (*e).max(at);
                    }
                    Write::Dedup { key, at } => {
                        let (id, at) = (format!("e{key}"), now + at);
                        let response = format!("{id}@{at}").into_bytes();
                        store.record_dedup(&DedupRecord { sender: "s".into(), envelope_id: id.clone(), response: response.clone(), expires_at_unix_ms: at }).unwrap();
                        claims.remove(&id);
                        dedup.insert(id, (response, at));
                    }
                    Write::Claim { key, lease, at } => {
                        let id = format!("e{key}");
                        let claim = DedupClaim { sender: "s".into(), envelope_id: id.clone(), lease_until_unix_ms: now + lease, expires_at_unix_ms: now + at };
                        let got = store.claim(&ReplayClaim { nonce: None, dedup: Some(claim), now: UnixTime::from_millis(now) }).unwrap();
                        let want = match dedup.get(&id) {
                            Some((r, a)) if *a >= now => ClaimOutcome::Answered(r.clone()),
                            _ if claims.get(&id).is_some_and(|(l, a)| *l >= now && *a >= now) => ClaimOutcome::Running,
                            _ => {
                                dedup.remove(&id);
                                claims.insert(id, (now + lease, now + at));
                                ClaimOutcome::Won
                            }
                        };
                        prop_assert_eq!(got, want);
                    }
                    Write::Purge => {
                        let before = nonces.len() + dedup.len() + claims.len();
                        nonces.retain(|_, a| *a >= now);
                        dedup.retain(|_, (_, a)| *a >= now);
                        claims.retain(|_, (_, a)| *a >= now);
                        let want = before - (nonces.len() + dedup.len() + claims.len());
                        prop_assert_eq!(store.purge_expired(UnixTime::from_millis(now)).unwrap(), want as u64);
                        prop_assert_eq!(store.len(), nonces.len() + dedup.len() + claims.len());
                    }
                    Write::Step { dt } => now += dt,
                }
                let at = UnixTime::from_millis(now);
                let mut want_nonces: Vec<(i64, String)> = nonces.iter().filter(|(_, a)| **a >= now).map(|(k, a)| (*a, k.clone())).collect();
                want_nonces.sort();
                let got: Vec<(i64, String)> = store.load_nonces(at).unwrap().into_iter().map(|r| (r.expires_at_unix_ms, r.nonce)).collect();
                prop_assert_eq!(got, want_nonces);
                let mut want_dedup: Vec<(i64, String, Vec<u8>)> = dedup.iter().filter(|(_, (_, a))| *a >= now).map(|(k, (r, a))| (*a, k.clone(), r.clone())).collect();
                want_dedup.sort();
                let got: Vec<(i64, String, Vec<u8>)> = store.load_dedup(at).unwrap().into_iter().map(|r| (r.expires_at_unix_ms, r.envelope_id, r.response)).collect();
                prop_assert_eq!(got, want_dedup);
            }
        }
    }

    #[test]
    fn a_purge_removes_only_what_expired_and_a_later_expiry_survives_its_old_time() {
        let mut store = MemoryReplayStore::new();
        let nonce = |n: &str, at: i64| NonceRecord {
            sender: "s".into(),
            nonce: n.into(),
            expires_at_unix_ms: at,
        };
        store.record_nonce(&nonce("a", 10)).unwrap();
        store.record_nonce(&nonce("b", 20)).unwrap();
        // "a" again, later: the index must forget its old expiry.
        store.record_nonce(&nonce("a", 30)).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.purge_expired(UnixTime::from_millis(10)).unwrap(), 0);
        assert_eq!(store.purge_expired(UnixTime::from_millis(21)).unwrap(), 1);
        let left = store.load_nonces(UnixTime::EPOCH).unwrap();
        assert_eq!(left, vec![nonce("a", 30)]);
        assert_eq!(store.purge_expired(UnixTime::from_millis(31)).unwrap(), 1);
        assert!(store.is_empty());
    }
}
