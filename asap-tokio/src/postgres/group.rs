//! [`PgGroupCommit`]: a group's snapshots, usage events, nonces and dedup
//! answers in one transaction.

use std::time::{Duration, Instant};

use asap_proto::model::{StateSnapshot, UnixTime};
use asap_proto::store::GroupCommit;
use asap_proto::store::{DedupRecord, NonceRecord, StoreError, UsageEvent};

use super::metering::{self, EventRow};
use super::replay::{self, AnswerRow, NonceRow};
use super::snapshot::{self, SnapshotRow};
use super::{pg_err, PgBackend};

/// Expired replay rows are purged at most this often: a purge is a scan of the
/// expiry indexes, not worth a round trip on every commit.
pub(crate) const PURGE_INTERVAL: Duration = Duration::from_secs(10);

/// The [`GroupCommit`] of [`Stores`](asap_proto::store::Stores) on
/// PostgreSQL: one transaction (one commit) per group, all or nothing.
#[derive(Debug)]
pub struct PgGroupCommit {
    backend: PgBackend,
    last_purge: Option<Instant>,
}

impl PgGroupCommit {
    pub(crate) fn new(backend: PgBackend) -> Self {
        Self {
            backend,
            last_purge: None,
        }
    }

    fn purge_due(&mut self) -> bool {
        let due = self
            .last_purge
            .is_none_or(|at| at.elapsed() >= PURGE_INTERVAL);
        if due {
            self.last_purge = Some(Instant::now());
        }
        due
    }
}

impl GroupCommit for PgGroupCommit {
    fn record_group(
        &mut self,
        snapshots: &[StateSnapshot],
        events: &[UsageEvent],
        nonces: &[NonceRecord],
        dedup: &[DedupRecord],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        // Everything is checked and encoded before the transaction begins.
        let mut snapshots = snapshots
            .iter()
            .map(SnapshotRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let events = events
            .iter()
            .map(EventRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let mut nonces = nonces
            .iter()
            .map(NonceRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let mut answers = dedup
            .iter()
            .map(AnswerRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        if snapshots.is_empty() && events.is_empty() && nonces.is_empty() && answers.is_empty() {
            return Ok(());
        }
        // Keys in one order: two replicas' groups never wait on each other in a
        // cycle. Stable sorts keep the later of two writes of one key last.
        snapshots.sort_by(|a, b| a.key().cmp(&b.key()));
        nonces.sort_by(|a, b| a.key().cmp(&b.key()));
        answers.sort_by(|a, b| a.key().cmp(&b.key()));
        // `now` is EPOCH when the caller has no clock for replay state (task records only).
        let purge_at = (now != UnixTime::EPOCH && self.purge_due()).then(|| now.as_millis());
        self.backend.run(move |shared| async move {
            let mut client = shared.conn().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // Each kind is pipelined; the kinds follow one another.
            snapshot::upsert(&tx, &snapshots).await?;
            metering::insert(&tx, &events).await?;
            replay::upsert_nonces(&tx, &nonces).await?;
            replay::upsert_answers(&tx, &answers).await?;
            tx.commit().await.map_err(pg_err)?;
            if let Some(now_ms) = purge_at {
                // After the commit: a failed purge must not fail records that are stored.
                if let Err(e) = replay::purge(&client, now_ms).await {
                    tracing::warn!(error = %e, "purging expired replay state failed; retried later");
                }
            }
            Ok(())
        })
    }
}
