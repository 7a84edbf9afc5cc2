//! [`PgMeteringStore`]: the `asap_usage_events` table.

use asap_proto::model::{Timestamp, UnixTime};
use asap_proto::store::{
    AggregatePeriod, MeteringStore, StoreError, UsageAggregate, UsageEvent, UsageMetrics,
};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{corrupt, get, pg_err, text, PgBackend};

const TABLE: &str = "asap_usage_events";
const INSERT: &str = "INSERT INTO asap_usage_events \
     (agent_id, task_id, consumer_id, at_us, tokens_in, tokens_out, duration_ms, api_calls) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// A group's events in one statement, in recording order (the identity is
/// assigned in the order of the ordinality).
const INSERT_MANY: &str = "INSERT INTO asap_usage_events \
     (agent_id, task_id, consumer_id, at_us, tokens_in, tokens_out, duration_ms, api_calls) \
     SELECT a, t, c, at, ti, tout, d, ac FROM UNNEST($1::bytea[], $2::bytea[], $3::bytea[], \
     $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[]) WITH ORDINALITY \
     AS u(a, t, c, at, ti, tout, d, ac, ord) ORDER BY ord";
// `seq` (the identity) breaks timestamp ties in recording order; the index
// (agent_id, at_us, seq) serves the range and the order.
const QUERY: &str = "SELECT task_id, agent_id, consumer_id, at_us, \
     tokens_in, tokens_out, duration_ms, api_calls FROM asap_usage_events \
     WHERE agent_id = $1 AND at_us >= $2 AND at_us <= $3 ORDER BY at_us, seq";
// Sums as numeric (no bigint overflow), sent as text and saturated to u64 here.
const SUMS: &str = "SELECT count(*), \
     COALESCE(sum(tokens_in::numeric + tokens_out), 0)::text, \
     COALESCE(sum(duration_ms::numeric), 0)::text, \
     COALESCE(sum(api_calls::numeric), 0)::text \
     FROM asap_usage_events WHERE agent_id = $1";
const RANGE: &str = " AND at_us >= $2 AND at_us < $3";

/// An event as its columns (checked, timestamp as UTC microseconds).
pub(crate) struct EventRow {
    agent_id: Vec<u8>,
    task_id: Vec<u8>,
    consumer_id: Vec<u8>,
    at_us: i64,
    metrics: [i64; 4],
}

impl EventRow {
    /// Checks `e` (metric bounds) and encodes it.
    pub(crate) fn encode(e: &UsageEvent) -> Result<Self, StoreError> {
        let e = e.normalized()?;
        let m = e.metrics;
        // normalized() bounds every metric by MAX_METRIC_VALUE = i64::MAX.
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Ok(Self {
            agent_id: e.agent_id.into_bytes(),
            task_id: e.task_id.into_bytes(),
            consumer_id: e.consumer_id.into_bytes(),
            at_us: e.timestamp.unix().as_micros(),
            metrics: [
                int(m.tokens_in),
                int(m.tokens_out),
                int(m.duration_ms),
                int(m.api_calls),
            ],
        })
    }
}

/// Inserts `rows` in order, pipelined.
pub(crate) async fn insert(
    client: &impl GenericClient,
    rows: &[EventRow],
) -> Result<(), StoreError> {
    match rows {
        [] => return Ok(()),
        [r] => {
            let stmt = client.prepare_cached(INSERT).await.map_err(pg_err)?;
            let params: [&(dyn ToSql + Sync); 8] = [
                &r.agent_id,
                &r.task_id,
                &r.consumer_id,
                &r.at_us,
                &r.metrics[0],
                &r.metrics[1],
                &r.metrics[2],
                &r.metrics[3],
            ];
            client.execute(&stmt, &params).await.map_err(pg_err)?;
            return Ok(());
        }
        _ => {}
    }
    let stmt = client.prepare_cached(INSERT_MANY).await.map_err(pg_err)?;
    let bytes = |f: fn(&EventRow) -> &[u8]| rows.iter().map(f).collect::<Vec<&[u8]>>();
    let (agents, tasks, consumers) = (
        bytes(|r| &r.agent_id),
        bytes(|r| &r.task_id),
        bytes(|r| &r.consumer_id),
    );
    let at: Vec<i64> = rows.iter().map(|r| r.at_us).collect();
    let metric = |i: usize| rows.iter().map(|r| r.metrics[i]).collect::<Vec<i64>>();
    let (m0, m1, m2, m3) = (metric(0), metric(1), metric(2), metric(3));
    client
        .execute(
            &stmt,
            &[&agents, &tasks, &consumers, &at, &m0, &m1, &m2, &m3],
        )
        .await
        .map_err(pg_err)?;
    Ok(())
}

fn decode(row: &tokio_postgres::Row) -> Result<UsageEvent, StoreError> {
    let task_id = text(TABLE, "task_id", get(row, TABLE, 0)?)?;
    let agent_id = text(TABLE, "agent_id", get(row, TABLE, 1)?)?;
    let consumer_id = text(TABLE, "consumer_id", get(row, TABLE, 2)?)?;
    let at_us: i64 = get(row, TABLE, 3)?;
    let metric = |i: usize, name: &str| -> Result<u64, StoreError> {
        let v: i64 = get(row, TABLE, i)?;
        u64::try_from(v).map_err(|_| {
            corrupt(
                TABLE,
                format!("task {task_id:?}"),
                format!("{name} is negative ({v})"),
            )
        })
    };
    Ok(UsageEvent {
        metrics: UsageMetrics {
            tokens_in: metric(4, "tokens_in")?,
            tokens_out: metric(5, "tokens_out")?,
            duration_ms: metric(6, "duration_ms")?,
            api_calls: metric(7, "api_calls")?,
        },
        task_id,
        agent_id,
        consumer_id,
        timestamp: Timestamp::from_unix(UnixTime::from_micros(at_us)),
    })
}

/// A numeric sum sent as text, saturated to `u64` as [`UsageAggregate::add`] does.
fn total(row: &tokio_postgres::Row, i: usize, what: &str) -> Result<u64, StoreError> {
    let s: String = get(row, TABLE, i)?;
    s.parse::<u128>()
        .map(|v| u64::try_from(v).unwrap_or(u64::MAX))
        .map_err(|e| corrupt(TABLE, what.to_owned(), format!("total {s:?}: {e}")))
}

/// A [`MeteringStore`] on PostgreSQL; aggregation runs in SQL over the
/// `(agent_id, at_us)` index, with the bucket bounds of [`AggregatePeriod::bounds`].
#[derive(Debug, Clone)]
pub struct PgMeteringStore {
    backend: PgBackend,
}

impl PgMeteringStore {
    pub(crate) fn new(backend: PgBackend) -> Self {
        Self { backend }
    }
}

impl MeteringStore for PgMeteringStore {
    fn record(&mut self, event: &UsageEvent) -> Result<(), StoreError> {
        let row = EventRow::encode(event)?;
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            insert(&client, std::slice::from_ref(&row)).await
        })
    }

    fn record_batch(&mut self, events: &[UsageEvent]) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(EventRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.backend.run(move |shared| async move {
            // One statement (UNNEST): atomic without a transaction around it.
            let client = shared.conn().await?;
            insert(&client, &rows).await
        })
    }

    fn query(
        &self,
        agent_id: &str,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        if start > end {
            return Ok(Vec::new());
        }
        let agent = agent_id.as_bytes().to_vec();
        let (start, end) = (start.as_micros(), end.as_micros());
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            let stmt = client.prepare_cached(QUERY).await.map_err(pg_err)?;
            let rows = client
                .query(&stmt, &[&agent, &start, &end])
                .await
                .map_err(pg_err)?;
            rows.iter().map(decode).collect()
        })
    }

    fn aggregate(
        &self,
        agent_id: &str,
        period: AggregatePeriod,
        at: UnixTime,
    ) -> Result<UsageAggregate, StoreError> {
        let agent = agent_id.as_bytes().to_vec();
        let bounds = period
            .bounds(at)
            .map(|(s, e)| (s.as_micros(), e.as_micros()));
        let row = self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            match bounds {
                Some((start, end)) => {
                    let stmt = client
                        .prepare_cached(&format!("{SUMS}{RANGE}"))
                        .await
                        .map_err(pg_err)?;
                    client.query_one(&stmt, &[&agent, &start, &end]).await
                }
                None => {
                    let stmt = client.prepare_cached(SUMS).await.map_err(pg_err)?;
                    client.query_one(&stmt, &[&agent]).await
                }
            }
            .map_err(pg_err)
        })?;
        let count: i64 = get(&row, TABLE, 0)?;
        Ok(UsageAggregate {
            agent_id: agent_id.to_owned(),
            period: period.as_str().to_owned(),
            total_tokens: total(&row, 1, "total_tokens")?,
            total_duration: total(&row, 2, "total_duration")?,
            total_tasks: u64::try_from(count).unwrap_or(0),
            total_api_calls: total(&row, 3, "total_api_calls")?,
        })
    }
}
