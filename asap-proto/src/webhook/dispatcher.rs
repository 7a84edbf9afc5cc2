//! [`WebhookDispatcher`]: the outbox, the URL policy and the store's write
//! queue together, so every adapter's delivery worker is the same thin loop
//! (resolve, connect to the approved address, report) and none decides
//! anything itself.

use core::net::IpAddr;

use super::outbox::{
    Delivery, DeliveryId, DeliveryOutcome, EnqueueError, OutboxConfig, OutboxError, OutboxEvent,
    OutboxOutput, OutboxRecord, RestoreError, WebhookEvent, WebhookOutbox,
};
use super::policy::{ApprovedTarget, UrlPolicy, UrlRejection};
use super::signature::SigningKeys;
use crate::model::UnixTime;
use crate::store::WebhookChange;

/// What a delivery worker does next ([`WebhookDispatcher::poll_output`]).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // handed straight to the worker
pub enum DispatchOutput {
    /// Resolve [`WebhookDispatcher::host_to_resolve`], check with
    /// [`WebhookDispatcher::approve`], send to the approved address only,
    /// then [`WebhookDispatcher::handle_result`].
    Transmit(Delivery),
    /// An event happened (already queued for the store): log or count it.
    Event(OutboxEvent),
    /// Nothing due before this time: sleep until it (or until a publish), then poll again.
    Timeout(UnixTime),
}

/// The webhook outbox as its delivery worker drives it.
///
/// Call order: [`publish`](Self::publish) events (then write
/// [`take_changes`](Self::take_changes) to the store before acknowledging,
/// e.g. before the HTTP response goes out); in the worker, loop on
/// [`poll_output`](Self::poll_output), write `take_changes` after each batch,
/// and for each `Transmit` resolve, [`approve`](Self::approve), send, and
/// [`handle_result`](Self::handle_result). Changes are taken in the order the
/// outbox made them; writing them under one store lock keeps the rows right.
///
/// ```
/// use asap_proto::model::UnixTime;
/// use asap_proto::store::{MemoryWebhookStore, WebhookStore};
/// use asap_proto::webhook::{DeliveryOutcome, DispatchOutput, OutboxConfig, UrlPolicy, WebhookDispatcher, WebhookEvent};
///
/// let now = UnixTime::from_secs(1_767_225_600);
/// let mut store = MemoryWebhookStore::new();
/// let mut hooks = WebhookDispatcher::new(OutboxConfig::default(), UrlPolicy::PRODUCTION);
/// let event = WebhookEvent::new("e1", "task_1", "https://hooks.example.com/in", b"{}".to_vec());
/// assert!(hooks.publish(vec![event], now).is_empty());
/// store.apply(&hooks.take_changes())?; // durable before the publisher goes on
/// while let Some(out) = hooks.poll_output(now) {
///     match out {
///         DispatchOutput::Transmit(d) => {
///             assert_eq!(hooks.host_to_resolve(&d), Some(("hooks.example.com".into(), 443)));
///             let resolved = ["93.184.216.34".parse().unwrap()]; // the worker's DNS answer
///             let outcome = match hooks.approve(&d, &resolved) {
///                 Ok(_target) => DeliveryOutcome::status(204), // connect to _target.socket_addrs() only
///                 Err(refused) => DeliveryOutcome::UrlRefused(refused),
///             };
///             hooks.handle_result(d.id, outcome, now).unwrap();
///         }
///         DispatchOutput::Event(_) => {}
///         DispatchOutput::Timeout(_) => break,
///     }
/// }
/// store.apply(&hooks.take_changes())?;
/// assert!(store.load()?.is_empty()); // delivered: the row is gone
/// # Ok::<(), asap_proto::store::StoreError>(())
/// ```
#[derive(Debug)]
pub struct WebhookDispatcher {
    outbox: WebhookOutbox,
    policy: UrlPolicy,
    changes: Vec<WebhookChange>,
    max_in_flight: usize,
}

/// Attempts handed out at once by default ([`WebhookDispatcher::with_max_in_flight`]).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

impl WebhookDispatcher {
    /// An empty dispatcher.
    #[must_use]
    pub fn new(config: OutboxConfig, policy: UrlPolicy) -> Self {
        Self {
            outbox: WebhookOutbox::new(config),
            policy,
            changes: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// A dispatcher resuming the stored records (in-flight ones are sent again).
    pub fn restore(
        config: OutboxConfig,
        policy: UrlPolicy,
        records: impl IntoIterator<Item = OutboxRecord>,
        now: UnixTime,
    ) -> Result<Self, RestoreError> {
        Ok(Self {
            outbox: WebhookOutbox::restore(config, records, now)?,
            policy,
            changes: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        })
    }

    /// A dispatcher resuming what `store` holds, with `keys` registered
    /// before anything is polled (a restored event whose keys are missing
    /// would be dead-lettered at its first poll). What adapters call at start.
    pub fn resume(
        config: OutboxConfig,
        policy: UrlPolicy,
        store: &dyn crate::store::WebhookStore,
        keys: impl IntoIterator<Item = (String, SigningKeys)>,
        now: UnixTime,
    ) -> Result<Self, crate::store::StoreError> {
        let records = store.load()?;
        let mut d = Self::restore(config, policy, records, now).map_err(|e| {
            crate::store::StoreError::Corrupt {
                table: "webhook_outbox",
                key: "(restore)".into(),
                reason: e.to_string(),
            }
        })?;
        for (name, k) in keys {
            d.set_signing_keys(name, k);
        }
        Ok(d)
    }

    /// Hands out at most `n` attempts at once (at least 1): a burst of
    /// thousands of due events becomes a steady stream over kept-alive
    /// connections instead of thousands of sockets.
    #[must_use]
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// The outbox (records, dead letters, counts).
    #[must_use]
    pub fn outbox(&self) -> &WebhookOutbox {
        &self.outbox
    }

    /// Registers the keys that sign events naming `secret_ref`.
    pub fn set_signing_keys(&mut self, secret_ref: impl Into<String>, keys: SigningKeys) {
        self.outbox.set_signing_keys(secret_ref, keys);
    }

    /// Enqueues events, queueing their rows for the store; returns the ones
    /// refused (with why), the others are accepted.
    pub fn publish(
        &mut self,
        events: Vec<WebhookEvent>,
        now: UnixTime,
    ) -> Vec<(String, EnqueueError)> {
        let mut refused = Vec::new();
        for e in events {
            let id = e.event_id.clone();
            match self.outbox.enqueue(e, now) {
                Ok(()) => self
                    .changes
                    .extend(WebhookChange::of_enqueued(&self.outbox, [id.as_str()])),
                Err(err) => refused.push((id, err)),
            }
        }
        refused
    }

    /// Sends a dead letter again (its row is queued for the store).
    pub fn replay(&mut self, event_id: &str, now: UnixTime) -> Result<(), OutboxError> {
        self.outbox.replay(event_id, now)?;
        self.changes
            .extend(WebhookChange::of_enqueued(&self.outbox, [event_id]));
        Ok(())
    }

    /// Takes over events of a stopped replica ([`WebhookOutbox::adopt`]);
    /// their rows are already this replica's, so no store write is queued.
    pub fn adopt(
        &mut self,
        records: Vec<crate::webhook::OutboxRecord>,
        now: UnixTime,
    ) -> Result<usize, RestoreError> {
        self.outbox.adopt(records, now)
    }

    /// The store writes made since the last call, in order.
    #[must_use]
    pub fn take_changes(&mut self) -> Vec<WebhookChange> {
        std::mem::take(&mut self.changes)
    }

    /// The next thing to do (handles expired leases itself). With
    /// [`max_in_flight`](Self::with_max_in_flight) attempts out, only events
    /// come, then `None`: wait for a [`handle_result`](Self::handle_result).
    #[must_use]
    pub fn poll_output(&mut self, now: UnixTime) -> Option<DispatchOutput> {
        if self.outbox.poll_timeout().is_some_and(|t| t <= now) {
            self.outbox.handle_timeout(now);
        }
        if self.outbox.in_flight() >= self.max_in_flight {
            let e = self.outbox.poll_event()?;
            self.changes
                .extend(WebhookChange::of_event(&self.outbox, &e));
            return Some(DispatchOutput::Event(e));
        }
        match self.outbox.poll_output(now)? {
            OutboxOutput::Event(e) => {
                self.changes
                    .extend(WebhookChange::of_event(&self.outbox, &e));
                Some(DispatchOutput::Event(e))
            }
            OutboxOutput::Transmit(d) => Some(DispatchOutput::Transmit(d)),
            OutboxOutput::Timeout(t) => Some(DispatchOutput::Timeout(t)),
        }
    }

    /// The host name to resolve for `delivery` and its port (`None`: the URL names an IP).
    #[must_use]
    pub fn host_to_resolve(&self, delivery: &Delivery) -> Option<(String, u16)> {
        let url = delivery.request.uri().to_string();
        let callback = self.policy.parse(&url).ok()?;
        let port = callback.port();
        callback.host_to_resolve().map(|h| (h.to_owned(), port))
    }

    /// The delivery-time check: `resolved` are the addresses the host has
    /// *now*; the connection must go to [`ApprovedTarget::socket_addrs`] only.
    pub fn approve(
        &self,
        delivery: &Delivery,
        resolved: &[IpAddr],
    ) -> Result<ApprovedTarget, UrlRejection> {
        self.policy
            .check(&delivery.request.uri().to_string(), resolved)
    }

    /// Reports an attempt's outcome.
    pub fn handle_result(
        &mut self,
        delivery: DeliveryId,
        outcome: DeliveryOutcome,
        now: UnixTime,
    ) -> Result<(), OutboxError> {
        self.outbox.handle_result(delivery, outcome, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(ms: i64) -> UnixTime {
        UnixTime::from_millis(1_767_225_600_000 + ms)
    }

    fn event(id: &str) -> WebhookEvent {
        WebhookEvent::new(id, "task_1", "https://hooks.example.com/in", b"{}".to_vec())
    }

    /// Drives until a Transmit or a Timeout; returns it.
    fn next(d: &mut WebhookDispatcher, now: UnixTime) -> Option<DispatchOutput> {
        loop {
            match d.poll_output(now)? {
                DispatchOutput::Event(_) => continue,
                other => return Some(other),
            }
        }
    }

    #[test]
    fn retries_follow_1_2_4_8_16_seconds_then_dead_letter_with_explicit_time() {
        let config = OutboxConfig {
            backoff: crate::reliability::Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(16),
                jitter_ratio: 0.0,
            },
            ..OutboxConfig::default()
        };
        let mut d = WebhookDispatcher::new(config, UrlPolicy::PRODUCTION);
        d.publish(vec![event("e")], t(0));
        let mut now = t(0);
        let mut waits = Vec::new();
        loop {
            match next(&mut d, now) {
                Some(DispatchOutput::Transmit(x)) => {
                    d.handle_result(x.id, DeliveryOutcome::status(503), now)
                        .unwrap();
                }
                Some(DispatchOutput::Timeout(at)) => {
                    assert!(at > now, "a deadline is always later than now");
                    waits.push(at.as_millis() - now.as_millis());
                    now = at;
                }
                Some(DispatchOutput::Event(_)) => unreachable!(),
                None => break,
            }
        }
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000]);
        let dead: Vec<_> = d.outbox().dead_letters().collect();
        assert_eq!(dead.len(), 1);
        let rows = d.take_changes();
        assert!(matches!(rows.last(), Some(WebhookChange::Put(r)) if r.dead_reason.is_some()));
        // Replay: pending again, written as such.
        d.replay("e", now).unwrap();
        assert!(matches!(d.take_changes().as_slice(), [WebhookChange::Put(r)] if r.attempts == 0));
        assert!(matches!(
            next(&mut d, now),
            Some(DispatchOutput::Transmit(_))
        ));
    }

    #[test]
    fn an_address_that_turned_private_is_refused_and_dead_lettered() {
        let mut d = WebhookDispatcher::new(OutboxConfig::default(), UrlPolicy::PRODUCTION);
        d.publish(vec![event("e")], t(0));
        let Some(DispatchOutput::Transmit(x)) = next(&mut d, t(0)) else {
            panic!()
        };
        assert!(d.approve(&x, &["93.184.216.34".parse().unwrap()]).is_ok());
        let refused = d.approve(&x, &["10.0.0.7".parse().unwrap()]).unwrap_err();
        d.handle_result(x.id, DeliveryOutcome::UrlRefused(refused), t(1))
            .unwrap();
        assert!(next(&mut d, t(1)).is_none());
        assert_eq!(d.outbox().dead_letters().count(), 1);
    }

    #[test]
    fn no_more_than_max_in_flight_attempts_are_handed_out() {
        let mut d = WebhookDispatcher::new(
            OutboxConfig {
                rate_per_second: 0,
                ..OutboxConfig::default()
            },
            UrlPolicy::PRODUCTION,
        )
        .with_max_in_flight(2);
        let events = (0..5)
            .map(|i| {
                WebhookEvent::new(
                    format!("e{i}"),
                    format!("t{i}"),
                    "https://h.example.com/",
                    b"{}".to_vec(),
                )
            })
            .collect();
        d.publish(events, t(0));
        let mut out = Vec::new();
        while let Some(DispatchOutput::Transmit(x)) = next(&mut d, t(0)) {
            out.push(x);
        }
        assert_eq!(out.len(), 2);
        d.handle_result(out[0].id, DeliveryOutcome::status(200), t(1))
            .unwrap();
        assert!(matches!(
            next(&mut d, t(1)),
            Some(DispatchOutput::Transmit(_))
        ));
        assert!(next(&mut d, t(1)).is_none(), "at the limit again");
    }

    #[test]
    fn a_full_outbox_refuses_with_the_event_named_and_writes_nothing_for_it() {
        let config = OutboxConfig {
            capacity: 1,
            ..OutboxConfig::default()
        };
        let mut d = WebhookDispatcher::new(config, UrlPolicy::PRODUCTION);
        let refused = d.publish(vec![event("a"), event("b")], t(0));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "b");
        assert!(matches!(refused[0].1, EnqueueError::Full { .. }));
        assert_eq!(d.take_changes().len(), 1);
    }
}
