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
/// keeps its nonces in the server's `NonceStore` alone). Purging scans every record.
#[derive(Debug, Clone, Default)]
pub struct MemoryReplayStore {
    nonces: BTreeMap<(String, String), i64>,
    dedup: BTreeMap<(String, String), (Vec<u8>, i64)>,
    /// Unanswered dedup claims: (lease end, expiry).
    claims: BTreeMap<(String, String), (i64, i64)>,
}

impl MemoryReplayStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn record_nonce(&mut self, r: &NonceRecord) -> Result<(), StoreError> {
        check_nonce_record(r)?;
        let at = self
            .nonces
            .entry((r.sender.clone(), r.nonce.clone()))
            .or_insert(r.expires_at_unix_ms);
        *at = (*at).max(r.expires_at_unix_ms);
        Ok(())
    }

    fn load_nonces(&self, now: UnixTime) -> Result<Vec<NonceRecord>, StoreError> {
        let mut out: Vec<NonceRecord> = self
            .nonces
            .iter()
            .map(|((sender, nonce), at)| NonceRecord {
                sender: sender.clone(),
                nonce: nonce.clone(),
                expires_at_unix_ms: *at,
            })
            .filter(|r| r.is_live(now))
            .collect();
        // The map is in key order; a stable sort by expiry gives (expiry, key).
        out.sort_by_key(|r| r.expires_at_unix_ms);
        Ok(out)
    }

    fn record_dedup(&mut self, r: &DedupRecord) -> Result<(), StoreError> {
        check_dedup_record(r)?;
        self.claims
            .remove(&(r.sender.clone(), r.envelope_id.clone()));
        self.dedup.insert(
            (r.sender.clone(), r.envelope_id.clone()),
            (r.response.clone(), r.expires_at_unix_ms),
        );
        Ok(())
    }

    fn load_dedup(&self, now: UnixTime) -> Result<Vec<DedupRecord>, StoreError> {
        let mut out: Vec<DedupRecord> = self
            .dedup
            .iter()
            .map(|((sender, id), (response, at))| DedupRecord {
                sender: sender.clone(),
                envelope_id: id.clone(),
                response: response.clone(),
                expires_at_unix_ms: *at,
            })
            .filter(|r| r.is_live(now))
            .collect();
        out.sort_by_key(|r| r.expires_at_unix_ms);
        Ok(out)
    }

    fn purge_expired(&mut self, now: UnixTime) -> Result<u64, StoreError> {
        let now_ms = now.as_millis();
        let count = |s: &Self| s.nonces.len() + s.dedup.len() + s.claims.len();
        let before = count(self);
        self.nonces.retain(|_, at| *at >= now_ms);
        self.dedup.retain(|_, (_, at)| *at >= now_ms);
        self.claims.retain(|_, (_, at)| *at >= now_ms);
        Ok((before - count(self)) as u64)
    }

    fn claim(&mut self, c: &ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        check_replay_claim(c)?;
        let now_ms = c.now.as_millis();
        if let Some(n) = &c.nonce {
            let key = (n.sender.clone(), n.nonce.clone());
            if self.nonces.get(&key).is_some_and(|at| *at >= now_ms) {
                return Ok(ClaimOutcome::NonceReplayed);
            }
            self.nonces.insert(key, n.expires_at_unix_ms);
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
                .insert(key, (d.lease_until_unix_ms, d.expires_at_unix_ms));
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
}
