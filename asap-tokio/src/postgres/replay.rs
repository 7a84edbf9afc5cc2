//! [`PgReplayStore`]: the `asap_replay_nonces` and `asap_replay_dedup` tables.
//!
//! One dedup row per `(sender, envelope_id)`: either an answer (`response`,
//! what [`ReplayStore::record_dedup`] writes) or an unanswered claim
//! (`lease_until_ms`, what [`ReplayStore::claim`] writes), as SQLite keeps in
//! two tables. One row lets a claim be one `INSERT … ON CONFLICT`, whose row
//! lock decides between replicas.

use std::sync::Arc;

use asap_proto::model::UnixTime;
use asap_proto::store::{
    check_dedup_record, check_nonce_record, check_replay_claim, ClaimOutcome, DedupClaim,
    DedupRecord, NonceRecord, ReplayClaim, ReplayStore, StoreError,
};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{get, pg_err, text, PgBackend, Shared};

const NONCES: &str = "asap_replay_nonces";
const DEDUP: &str = "asap_replay_dedup";

/// Several nonces in one statement (distinct keys, each with its latest expiry).
const UPSERT_NONCES: &str = "INSERT INTO asap_replay_nonces (sender, nonce, expires_at_ms) \
     SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[]) ON CONFLICT (sender, nonce) \
     DO UPDATE SET expires_at_ms = GREATEST(asap_replay_nonces.expires_at_ms, EXCLUDED.expires_at_ms)";
/// Several answers in one statement (distinct keys: the caller keeps the last).
const UPSERT_ANSWERS: &str = "INSERT INTO asap_replay_dedup \
     (sender, envelope_id, response, lease_until_ms, expires_at_ms) \
     SELECT s, e, r, NULL, x FROM UNNEST($1::bytea[], $2::bytea[], $3::bytea[], $4::int8[]) AS u(s, e, r, x) \
     ON CONFLICT (sender, envelope_id) DO UPDATE SET response = EXCLUDED.response, \
     lease_until_ms = NULL, expires_at_ms = EXCLUDED.expires_at_ms";
const SELECT_NONCES: &str = "SELECT sender, nonce, expires_at_ms FROM asap_replay_nonces \
     WHERE expires_at_ms >= $1 ORDER BY expires_at_ms, sender, nonce";
const SELECT_ANSWERS: &str = "SELECT sender, envelope_id, response, expires_at_ms \
     FROM asap_replay_dedup WHERE response IS NOT NULL AND expires_at_ms >= $1 \
     ORDER BY expires_at_ms, sender, envelope_id";
pub(crate) const PURGE_NONCES: &str = "DELETE FROM asap_replay_nonces WHERE expires_at_ms < $1";
pub(crate) const PURGE_DEDUP: &str = "DELETE FROM asap_replay_dedup WHERE expires_at_ms < $1";
/// Stores the nonce unless a live one holds the key: no row back = a replay.
const CLAIM_NONCE: &str = "INSERT INTO asap_replay_nonces (sender, nonce, expires_at_ms) \
     VALUES ($1, $2, $3) ON CONFLICT (sender, nonce) DO UPDATE SET \
     expires_at_ms = EXCLUDED.expires_at_ms WHERE asap_replay_nonces.expires_at_ms < $4 \
     RETURNING 1";
/// Stores the claim unless a live answer, or a live claim whose lease has not
/// ended, holds the key: no row back = look at what holds it (the conflicting
/// row stays locked by this transaction either way).
const CLAIM_DEDUP: &str = "INSERT INTO asap_replay_dedup \
     (sender, envelope_id, response, lease_until_ms, expires_at_ms) VALUES ($1, $2, NULL, $3, $4) \
     ON CONFLICT (sender, envelope_id) DO UPDATE SET response = NULL, \
     lease_until_ms = EXCLUDED.lease_until_ms, expires_at_ms = EXCLUDED.expires_at_ms \
     WHERE asap_replay_dedup.expires_at_ms < $5 \
        OR (asap_replay_dedup.response IS NULL AND asap_replay_dedup.lease_until_ms < $5) \
     RETURNING 1";
const HELD_BY: &str =
    "SELECT response FROM asap_replay_dedup WHERE sender = $1 AND envelope_id = $2";

/// Nonce columns.
pub(crate) struct NonceRow {
    sender: Vec<u8>,
    nonce: Vec<u8>,
    expires_at_ms: i64,
}

impl NonceRow {
    /// Checks and encodes `r`.
    pub(crate) fn encode(r: &NonceRecord) -> Result<Self, StoreError> {
        check_nonce_record(r)?;
        Ok(Self {
            sender: r.sender.as_bytes().to_vec(),
            nonce: r.nonce.as_bytes().to_vec(),
            expires_at_ms: r.expires_at_unix_ms,
        })
    }

    /// The key, for one lock order between concurrent writers.
    pub(crate) fn key(&self) -> (&[u8], &[u8]) {
        (&self.sender, &self.nonce)
    }
}

/// Dedup answer columns.
pub(crate) struct AnswerRow {
    sender: Vec<u8>,
    envelope_id: Vec<u8>,
    response: Vec<u8>,
    expires_at_ms: i64,
}

impl AnswerRow {
    /// Checks and encodes `r`.
    pub(crate) fn encode(r: &DedupRecord) -> Result<Self, StoreError> {
        check_dedup_record(r)?;
        Ok(Self {
            sender: r.sender.as_bytes().to_vec(),
            envelope_id: r.envelope_id.as_bytes().to_vec(),
            response: r.response.clone(),
            expires_at_ms: r.expires_at_unix_ms,
        })
    }

    /// The key, for one lock order between concurrent writers.
    pub(crate) fn key(&self) -> (&[u8], &[u8]) {
        (&self.sender, &self.envelope_id)
    }
}

/// Upserts nonces (later expiry kept), pipelined.
pub(crate) async fn upsert_nonces(
    client: &impl GenericClient,
    rows: &[NonceRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // One row per key, with the latest expiry among the batch's copies.
    let mut latest: std::collections::BTreeMap<(&[u8], &[u8]), i64> = Default::default();
    for r in rows {
        let at = latest.entry(r.key()).or_insert(r.expires_at_ms);
        *at = (*at).max(r.expires_at_ms);
    }
    let senders: Vec<&[u8]> = latest.keys().map(|k| k.0).collect();
    let nonces: Vec<&[u8]> = latest.keys().map(|k| k.1).collect();
    let expiries: Vec<i64> = latest.values().copied().collect();
    let stmt = client.prepare_cached(UPSERT_NONCES).await.map_err(pg_err)?;
    client
        .execute(&stmt, &[&senders, &nonces, &expiries])
        .await
        .map_err(pg_err)?;
    Ok(())
}

/// Upserts answers (replacing claims and older answers) in one statement.
pub(crate) async fn upsert_answers(
    client: &impl GenericClient,
    rows: &[AnswerRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows = super::last_per_key(rows, AnswerRow::key);
    let senders: Vec<&[u8]> = rows.iter().map(|r| r.sender.as_slice()).collect();
    let ids: Vec<&[u8]> = rows.iter().map(|r| r.envelope_id.as_slice()).collect();
    let responses: Vec<&[u8]> = rows.iter().map(|r| r.response.as_slice()).collect();
    let expiries: Vec<i64> = rows.iter().map(|r| r.expires_at_ms).collect();
    let stmt = client
        .prepare_cached(UPSERT_ANSWERS)
        .await
        .map_err(pg_err)?;
    client
        .execute(&stmt, &[&senders, &ids, &responses, &expiries])
        .await
        .map_err(pg_err)?;
    Ok(())
}

/// Deletes both kinds of records expired at `now_ms`; how many.
pub(crate) async fn purge(client: &impl GenericClient, now_ms: i64) -> Result<u64, StoreError> {
    let nonces = client.prepare_cached(PURGE_NONCES).await.map_err(pg_err)?;
    let dedup = client.prepare_cached(PURGE_DEDUP).await.map_err(pg_err)?;
    let (a, b) = futures_util::future::try_join(
        client.execute(&nonces, &[&now_ms]),
        client.execute(&dedup, &[&now_ms]),
    )
    .await
    .map_err(pg_err)?;
    Ok(a + b)
}

/// The dedup half of a claim, on `client` (a connection, or the claim's
/// transaction): stores the claim, or says what holds the key.
async fn claim_dedup(
    client: &impl GenericClient,
    d: &DedupClaim,
    now: i64,
) -> Result<ClaimOutcome, StoreError> {
    let key: [&(dyn ToSql + Sync); 2] = [&d.sender.as_bytes(), &d.envelope_id.as_bytes()];
    let stmt = client.prepare_cached(CLAIM_DEDUP).await.map_err(pg_err)?;
    let params = [
        key[0],
        key[1],
        &d.lease_until_unix_ms,
        &d.expires_at_unix_ms,
        &now,
    ];
    if client
        .query_opt(&stmt, &params)
        .await
        .map_err(pg_err)?
        .is_some()
    {
        return Ok(ClaimOutcome::Won);
    }
    let stmt = client.prepare_cached(HELD_BY).await.map_err(pg_err)?;
    // Gone between the two statements (purged outside a transaction): ask
    // again at the next poll.
    let Some(row) = client.query_opt(&stmt, &key).await.map_err(pg_err)? else {
        return Ok(ClaimOutcome::Running);
    };
    let response: Option<Vec<u8>> = get(&row, DEDUP, 0)?;
    Ok(response.map_or(ClaimOutcome::Running, ClaimOutcome::Answered))
}

/// [`ReplayStore::claim`], on the backend's runtime (the claim is checked).
pub(crate) async fn claim(
    shared: &Arc<Shared>,
    c: &ReplayClaim,
) -> Result<ClaimOutcome, StoreError> {
    if c.nonce.is_none() && c.dedup.is_none() {
        return Ok(ClaimOutcome::Won);
    }
    let now = c.now.as_millis();
    let mut client = shared.conn().await?;
    if let (None, Some(d)) = (&c.nonce, &c.dedup) {
        // One statement is atomic alone: one round trip instead of three.
        return claim_dedup(&client, d, now).await;
    }
    let tx = client.transaction().await.map_err(pg_err)?;
    if let Some(n) = &c.nonce {
        let stmt = tx.prepare_cached(CLAIM_NONCE).await.map_err(pg_err)?;
        let stored = tx
            .query_opt(
                &stmt,
                &[
                    &n.sender.as_bytes(),
                    &n.nonce.as_bytes(),
                    &n.expires_at_unix_ms,
                    &now,
                ],
            )
            .await
            .map_err(pg_err)?;
        if stored.is_none() {
            // A refused claim writes nothing.
            tx.rollback().await.map_err(pg_err)?;
            return Ok(ClaimOutcome::NonceReplayed);
        }
    }
    let outcome = match &c.dedup {
        Some(d) => claim_dedup(&tx, d, now).await?,
        None => ClaimOutcome::Won,
    };
    // The nonce is kept whatever the dedup key said, as every backend does.
    tx.commit().await.map_err(pg_err)?;
    Ok(outcome)
}

/// A [`ReplayStore`] on PostgreSQL shared by every replica: accepted nonces
/// and the dedup window, with [`claim`](ReplayStore::claim) deciding which
/// replica runs an envelope.
#[derive(Debug, Clone)]
pub struct PgReplayStore {
    backend: PgBackend,
}

impl PgReplayStore {
    pub(crate) fn new(backend: PgBackend) -> Self {
        Self { backend }
    }
}

impl ReplayStore for PgReplayStore {
    fn record_nonce(&mut self, record: &NonceRecord) -> Result<(), StoreError> {
        self.record_nonces(std::slice::from_ref(record))
    }

    fn record_nonces(&mut self, records: &[NonceRecord]) -> Result<(), StoreError> {
        let mut rows = records
            .iter()
            .map(NonceRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        // One lock order (GREATEST makes the order of duplicates irrelevant).
        rows.sort_by(|a, b| a.key().cmp(&b.key()));
        self.backend.run(move |shared| async move {
            // One statement (UNNEST): atomic without a transaction around it.
            let client = shared.conn().await?;
            upsert_nonces(&client, &rows).await
        })
    }

    fn load_nonces(&self, now: UnixTime) -> Result<Vec<NonceRecord>, StoreError> {
        let now = now.as_millis();
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            let stmt = client.prepare_cached(SELECT_NONCES).await.map_err(pg_err)?;
            let rows = client.query(&stmt, &[&now]).await.map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    Ok(NonceRecord {
                        sender: text(NONCES, "sender", get(r, NONCES, 0)?)?,
                        nonce: text(NONCES, "nonce", get(r, NONCES, 1)?)?,
                        expires_at_unix_ms: get(r, NONCES, 2)?,
                    })
                })
                .collect()
        })
    }

    fn record_dedup(&mut self, record: &DedupRecord) -> Result<(), StoreError> {
        let row = AnswerRow::encode(record)?;
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            upsert_answers(&client, std::slice::from_ref(&row)).await
        })
    }

    fn load_dedup(&self, now: UnixTime) -> Result<Vec<DedupRecord>, StoreError> {
        let now = now.as_millis();
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            let stmt = client
                .prepare_cached(SELECT_ANSWERS)
                .await
                .map_err(pg_err)?;
            let rows = client.query(&stmt, &[&now]).await.map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    Ok(DedupRecord {
                        sender: text(DEDUP, "sender", get(r, DEDUP, 0)?)?,
                        envelope_id: text(DEDUP, "envelope_id", get(r, DEDUP, 1)?)?,
                        response: get(r, DEDUP, 2)?,
                        expires_at_unix_ms: get(r, DEDUP, 3)?,
                    })
                })
                .collect()
        })
    }

    fn purge_expired(&mut self, now: UnixTime) -> Result<u64, StoreError> {
        let now = now.as_millis();
        self.backend.run(move |shared| async move {
            let mut client = shared.conn().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let n = purge(&tx, now).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(n)
        })
    }

    fn claim(&mut self, c: &ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        check_replay_claim(c)?;
        let c = c.clone();
        self.backend
            .run(move |shared| async move { claim(&shared, &c).await })
    }
}
