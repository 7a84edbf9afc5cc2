//! [`PgWebhookStore`]: the `asap_webhook_outbox` table, each row leased to
//! the replica delivering it.
//!
//! Lease ends are computed and compared on the database's clock
//! (`now()`), so the replicas' own clocks never meet.

use asap_proto::store::{check_outbox_record, StoreError, WebhookChange, WebhookStore};
use asap_proto::webhook::{OutboxRecord, RecordState};
use deadpool_postgres::GenericClient;
use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;

use super::{corrupt, get, pg_err, text, PgBackend};

const TABLE: &str = "asap_webhook_outbox";
/// A write makes the row this replica's, with a fresh lease.
const PUT: &str = "INSERT INTO asap_webhook_outbox \
     (event_id, seq, state, lease_owner, lease_until, record) \
     VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8), $6) \
     ON CONFLICT (event_id) DO UPDATE SET seq = EXCLUDED.seq, state = EXCLUDED.state, \
     lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until, \
     record = EXCLUDED.record";
const REMOVE: &str = "DELETE FROM asap_webhook_outbox WHERE event_id = $1";
/// At startup: this replica's rows, and every undelivered row whose lease ended.
const TAKE_OVER: &str = "UPDATE asap_webhook_outbox SET lease_owner = $1, \
     lease_until = now() + make_interval(secs => $2::float8) \
     WHERE state <> 'dead' AND (lease_owner = $1 OR lease_until < now())";
const SELECT_LOADED: &str = "SELECT event_id, record FROM asap_webhook_outbox \
     WHERE state = 'dead' OR lease_owner = $1 ORDER BY seq, event_id";
const SELECT_DEAD: &str = "SELECT event_id, record FROM asap_webhook_outbox \
     WHERE state = 'dead' ORDER BY seq, event_id";
const RENEW: &str = "UPDATE asap_webhook_outbox \
     SET lease_until = now() + make_interval(secs => $2::float8) \
     WHERE lease_owner = $1 AND state <> 'dead'";
/// Rows locked by another replica's claim are skipped, not waited for.
const CLAIM_ORPHANS: &str = "WITH orphans AS ( \
         SELECT event_id FROM asap_webhook_outbox \
         WHERE state <> 'dead' AND lease_until < now() \
         ORDER BY seq, event_id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE asap_webhook_outbox AS o SET lease_owner = $1, \
         lease_until = now() + make_interval(secs => $2::float8) \
     FROM orphans WHERE o.event_id = orphans.event_id \
     RETURNING o.seq, o.event_id, o.record";

fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Pending => "pending",
        RecordState::InFlight => "in_flight",
        RecordState::Dead => "dead",
    }
}

/// One change as its columns.
enum Row {
    Put {
        event_id: Vec<u8>,
        seq: i64,
        state: &'static str,
        record: String,
    },
    Remove(Vec<u8>),
}

fn decode(event_id: Vec<u8>, record: &str) -> Result<OutboxRecord, StoreError> {
    let key = text(TABLE, "event_id", event_id)?;
    serde_json::from_str(record).map_err(|e| corrupt(TABLE, key, e))
}

fn decode_rows(
    rows: &[tokio_postgres::Row],
    first: usize,
) -> Result<Vec<OutboxRecord>, StoreError> {
    rows.iter()
        .map(|r| {
            let record: String = get(r, TABLE, first + 1)?;
            decode(get(r, TABLE, first)?, &record)
        })
        .collect()
}

/// A [`WebhookStore`] on PostgreSQL for several replicas: a row belongs to
/// the replica that last wrote or renewed it, until its lease ends.
#[derive(Debug, Clone)]
pub struct PgWebhookStore {
    backend: PgBackend,
}

impl PgWebhookStore {
    pub(crate) fn new(backend: PgBackend) -> Self {
        Self { backend }
    }

    fn select(&self, sql: &'static str, with_owner: bool) -> Result<Vec<OutboxRecord>, StoreError> {
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
            let rows = if with_owner {
                client.query(&stmt, &[&shared.replica()]).await
            } else {
                client.query(&stmt, &[]).await
            }
            .map_err(pg_err)?;
            decode_rows(&rows, 0)
        })
    }
}

impl WebhookStore for PgWebhookStore {
    fn apply(&mut self, changes: &[WebhookChange]) -> Result<(), StoreError> {
        // Every record is checked before anything is sent: all or nothing.
        let rows = changes
            .iter()
            .map(|c| match c {
                WebhookChange::Put(r) => {
                    check_outbox_record(r)?;
                    let record =
                        serde_json::to_string(r).map_err(|e| StoreError::InvalidInput {
                            what: "outbox record",
                            reason: e.to_string(),
                        })?;
                    Ok(Row::Put {
                        event_id: r.event_id.as_bytes().to_vec(),
                        seq: i64::try_from(r.seq).unwrap_or(i64::MAX),
                        state: state_name(r.state),
                        record,
                    })
                }
                WebhookChange::Remove(id) => Ok(Row::Remove(id.as_bytes().to_vec())),
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.backend.run(move |shared| async move {
            let mut client = shared.conn().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let put = tx.prepare_cached(PUT).await.map_err(pg_err)?;
            let remove = tx.prepare_cached(REMOVE).await.map_err(pg_err)?;
            let lease = shared.lease_secs();
            let owner = shared.replica();
            try_join_all(rows.iter().map(|row| match row {
                Row::Put {
                    event_id,
                    seq,
                    state,
                    record,
                } => {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        vec![event_id, seq, state, &owner, &lease, record];
                    tx.execute_raw(&put, params)
                }
                Row::Remove(event_id) => {
                    let params: Vec<&(dyn ToSql + Sync)> = vec![event_id];
                    tx.execute_raw(&remove, params)
                }
            }))
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)
        })
    }

    /// Takes over this replica's rows and every undelivered row whose lease
    /// ended, and returns them with every dead letter, in `(seq, event_id)` order.
    fn load(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.backend.run(move |shared| async move {
            let mut client = shared.conn().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let owner = shared.replica();
            let take = tx.prepare_cached(TAKE_OVER).await.map_err(pg_err)?;
            tx.execute(&take, &[&owner, &shared.lease_secs()])
                .await
                .map_err(pg_err)?;
            let select = tx.prepare_cached(SELECT_LOADED).await.map_err(pg_err)?;
            let rows = tx.query(&select, &[&owner]).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            decode_rows(&rows, 0)
        })
    }

    fn dead_letters(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.select(SELECT_DEAD, false)
    }

    /// Renews this replica's leases, then takes up to `limit` undelivered rows
    /// whose lease ended, in `(seq, event_id)` order.
    fn claim_orphans(&mut self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.backend.run(move |shared| async move {
            let mut client = shared.conn().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let owner = shared.replica();
            let lease = shared.lease_secs();
            let renew = tx.prepare_cached(RENEW).await.map_err(pg_err)?;
            tx.execute(&renew, &[&owner, &lease])
                .await
                .map_err(pg_err)?;
            let mut rows = Vec::new();
            if limit > 0 {
                let claim = tx.prepare_cached(CLAIM_ORPHANS).await.map_err(pg_err)?;
                rows = tx
                    .query(&claim, &[&owner, &lease, &limit])
                    .await
                    .map_err(pg_err)?;
            }
            tx.commit().await.map_err(pg_err)?;
            let mut keyed = rows
                .iter()
                .map(|r| {
                    let seq: i64 = get(r, TABLE, 0)?;
                    let event_id: Vec<u8> = get(r, TABLE, 1)?;
                    Ok((seq, event_id, r))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            // UPDATE … RETURNING has no order of its own.
            keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            keyed
                .into_iter()
                .map(|(_, event_id, r)| {
                    let record: String = get(r, TABLE, 2)?;
                    decode(event_id, &record)
                })
                .collect()
        })
    }
}
