//! The webhook outbox's persistent form: [`WebhookStore`] holds one
//! [`OutboxRecord`] per event not yet delivered (pending and dead letters), so
//! a restart resumes pending deliveries ([`WebhookOutbox::restore`]).
//!
//! Drivers turn each outbox event into a [`WebhookChange`] with
//! [`WebhookChange::of_event`] (the one place that decides what to write), and
//! write a new event's record after [`WebhookOutbox::enqueue`] with
//! [`WebhookChange::of_enqueued`].
//!
//! ```
//! use asap_proto::model::UnixTime;
//! use asap_proto::store::{MemoryWebhookStore, WebhookChange, WebhookStore};
//! use asap_proto::webhook::{OutboxConfig, WebhookEvent, WebhookOutbox};
//!
//! let now = UnixTime::from_secs(1_767_225_600);
//! let mut store = MemoryWebhookStore::new();
//! let mut outbox = WebhookOutbox::new(OutboxConfig::default());
//! outbox.enqueue(WebhookEvent::new("e1", "task_1", "https://hooks.example.com/", b"{}".to_vec()), now).unwrap();
//! store.apply(&WebhookChange::of_enqueued(&outbox, ["e1"]))?;
//! // ... a restart:
//! let outbox = WebhookOutbox::restore(OutboxConfig::default(), store.load()?, now).unwrap();
//! assert_eq!(outbox.len(), 1);
//! # Ok::<(), asap_proto::store::StoreError>(())
//! ```

use std::collections::BTreeMap;

use super::StoreError;
use crate::webhook::{OutboxEvent, OutboxRecord, RecordState, WebhookOutbox};

/// One write to a [`WebhookStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookChange {
    /// Insert or replace the record of its event.
    Put(OutboxRecord),
    /// The event is done (delivered, or a dead letter discarded): delete its row.
    Remove(String),
}

impl WebhookChange {
    /// What to write for an outbox event: a delivered event's row goes, any
    /// other change replaces the row with the outbox's current record.
    #[must_use]
    pub fn of_event(outbox: &WebhookOutbox, event: &OutboxEvent) -> Option<Self> {
        let id = match event {
            OutboxEvent::Delivered { event_id, .. } => return Some(Self::Remove(event_id.clone())),
            OutboxEvent::RetryScheduled { event_id, .. }
            | OutboxEvent::DeadLettered { event_id, .. } => event_id,
        };
        outbox.record(id).cloned().map(Self::Put)
    }

    /// The records of events just enqueued (or replayed), to write before the
    /// enqueue is acknowledged.
    #[must_use]
    pub fn of_enqueued<'a>(
        outbox: &WebhookOutbox,
        event_ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Self> {
        event_ids
            .into_iter()
            .filter_map(|id| outbox.record(id).cloned().map(Self::Put))
            .collect()
    }
}

/// Where the outbox's records live between restarts. Records are stored as
/// given; an in-flight record is kept as it is (restore makes it pending).
pub trait WebhookStore {
    /// Applies `changes` in order, all or nothing where the backend has transactions.
    fn apply(&mut self, changes: &[WebhookChange]) -> Result<(), StoreError>;
    /// Every stored record, in `seq` order.
    fn load(&self) -> Result<Vec<OutboxRecord>, StoreError>;

    /// Several replicas on one store: renews the leases of the events this
    /// store's replica holds and takes up to `limit` undelivered events whose
    /// lease ended (their replica stopped), which this replica now holds
    /// ([`WebhookOutbox::adopt`](crate::webhook::WebhookOutbox::adopt)). Called every few seconds by the delivery
    /// worker. A store of one process holds every event already: none (the default).
    fn claim_orphans(&mut self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// The dead letters, in `seq` order.
    fn dead_letters(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(self
            .load()?
            .into_iter()
            .filter(|r| r.state == RecordState::Dead)
            .collect())
    }
}

impl<T: WebhookStore + ?Sized> WebhookStore for Box<T> {
    fn apply(&mut self, changes: &[WebhookChange]) -> Result<(), StoreError> {
        (**self).apply(changes)
    }
    fn load(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        (**self).load()
    }
    fn claim_orphans(&mut self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        (**self).claim_orphans(limit)
    }
}

/// Checks a record before it is stored: a key, and a dead reason exactly when dead.
pub fn check_outbox_record(record: &OutboxRecord) -> Result<(), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidInput {
        what: "outbox record",
        reason: format!("event {:?}: {reason}", record.event_id),
    };
    if record.event_id.is_empty() {
        return Err(invalid("the event id is empty"));
    }
    if (record.state == RecordState::Dead) != record.dead_reason.is_some() {
        return Err(invalid(
            "dead_reason must be present exactly when state is dead",
        ));
    }
    Ok(())
}

/// A [`WebhookStore`] in memory (tests, and agents that accept losing
/// pending deliveries on a restart).
#[derive(Debug, Clone, Default)]
pub struct MemoryWebhookStore {
    records: BTreeMap<String, OutboxRecord>,
}

impl MemoryWebhookStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl WebhookStore for MemoryWebhookStore {
    fn apply(&mut self, changes: &[WebhookChange]) -> Result<(), StoreError> {
        for c in changes {
            if let WebhookChange::Put(r) = c {
                check_outbox_record(r)?;
            }
        }
        for c in changes {
            match c {
                WebhookChange::Put(r) => {
                    self.records.insert(r.event_id.clone(), r.clone());
                }
                WebhookChange::Remove(id) => {
                    self.records.remove(id);
                }
            }
        }
        Ok(())
    }

    fn load(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut all: Vec<OutboxRecord> = self.records.values().cloned().collect();
        all.sort_by_key(|r| r.seq);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_passes_the_contract() {
        super::super::contract_webhook::webhook_store(super::MemoryWebhookStore::new);
    }
}
