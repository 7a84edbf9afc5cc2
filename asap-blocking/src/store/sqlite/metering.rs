//! [`SqliteMeteringStore`]: the `usage_events` table.

use std::path::{Path, PathBuf};

use asap_proto::model::{Timestamp, UnixTime};
use asap_proto::store::{
    AggregatePeriod, MeteringStore, StoreError, UsageAggregate, UsageEvent, UsageMetrics,
};
use rusqlite::{params, TransactionBehavior};

use super::{
    open_connection, open_memory_connection, sql_err, SharedConnection, SqliteOptions,
    USAGE_EVENTS_DDL, USAGE_EVENTS_INDEX_DDL,
};

pub(crate) const INSERT: &str = "INSERT INTO usage_events \
     (id, task_id, agent_id, consumer_id, metrics, timestamp) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
// `rowid` breaks timestamp ties in recording order; the index (agent_id,
// timestamp) carries rowid, so this is still an index range scan.
const QUERY: &str = "SELECT id, task_id, agent_id, consumer_id, metrics, timestamp \
     FROM usage_events WHERE agent_id = ?1 AND timestamp >= ?2 AND timestamp <= ?3 \
     ORDER BY timestamp, rowid";
const SUMS: &str = "SELECT COUNT(*), \
     COALESCE(SUM(COALESCE(json_extract(metrics, '$.tokens_in'), 0) \
                + COALESCE(json_extract(metrics, '$.tokens_out'), 0)), 0), \
     COALESCE(SUM(COALESCE(json_extract(metrics, '$.duration_ms'), 0)), 0), \
     COALESCE(SUM(COALESCE(json_extract(metrics, '$.api_calls'), 0)), 0) \
     FROM usage_events";
const AGGREGATE_RANGE_WHERE: &str = " WHERE agent_id = ?1 AND timestamp >= ?2 AND timestamp < ?3";
const AGGREGATE_TOTAL_WHERE: &str = " WHERE agent_id = ?1";

/// A [`MeteringStore`] in a SQLite file, readable and writable by the Python reference.
///
/// Timestamps are written as UTC `isoformat()` strings (`…+00:00`), the form
/// the reference writes for UTC datetimes; the reference compares them as
/// strings, and so do the indexed range queries here, which is exact for that
/// form. Aggregation runs in SQL over the `(agent_id, timestamp)` index.
#[derive(Debug)]
pub struct SqliteMeteringStore {
    conn: SharedConnection,
    path: Option<PathBuf>,
    aggregate_range: String,
    aggregate_total: String,
}

impl SqliteMeteringStore {
    /// Opens (creating if needed) the database at `path` with default [`SqliteOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path`.
    pub fn open_with(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let conn = open_connection(path, options, &[USAGE_EVENTS_DDL, USAGE_EVENTS_INDEX_DDL])?;
        Ok(Self::with_connection(
            SharedConnection::new(conn),
            Some(path.to_owned()),
        ))
    }

    /// A private in-memory database, gone when the store is dropped.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = open_memory_connection(
            &SqliteOptions::default(),
            &[USAGE_EVENTS_DDL, USAGE_EVENTS_INDEX_DDL],
        )?;
        Ok(Self::with_connection(SharedConnection::new(conn), None))
    }

    /// A store on a connection shared with the snapshot store of the same file.
    pub(crate) fn with_connection(conn: SharedConnection, path: Option<PathBuf>) -> Self {
        Self {
            conn,
            path,
            aggregate_range: format!("{SUMS}{AGGREGATE_RANGE_WHERE}"),
            aggregate_total: format!("{SUMS}{AGGREGATE_TOTAL_WHERE}"),
        }
    }

    /// The database file (`None` for an in-memory database).
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Records several events in one transaction: all are stored or none.
    pub fn record_batch(&mut self, events: &[UsageEvent]) -> Result<(), StoreError> {
        let events = events
            .iter()
            .map(UsageEvent::normalized)
            .collect::<Result<Vec<_>, _>>()?;
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        {
            let mut stmt = tx.prepare_cached(INSERT).map_err(sql_err)?;
            for e in &events {
                insert(&mut stmt, e)?;
            }
        }
        tx.commit().map_err(sql_err)
    }
}

/// `evt_` + a UUID in hex, as the reference names events. Version 7 (the
/// event's millisecond first, then random bits) where the reference uses
/// version 4: the primary-key index then grows at its end instead of at a
/// random leaf per insert, which is what the commit and checkpoint pay for.
fn event_id(at: UnixTime) -> Result<String, StoreError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b[6..])
        .map_err(|e| StoreError::Backend(format!("no OS randomness for an event id: {e}")))?;
    let millis = u64::try_from(at.as_micros().div_euclid(1000)).unwrap_or(0);
    b[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut id = String::with_capacity(36);
    id.push_str("evt_");
    for byte in b {
        id.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        id.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    Ok(id)
}

/// The stored text of an instant: Python `isoformat()` of a UTC datetime.
pub(crate) fn iso(t: UnixTime) -> String {
    // Clamp to Python's datetime range so string comparison stays chronological.
    const MIN: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let t = UnixTime::from_micros(t.as_micros().clamp(MIN, MAX));
    Timestamp::from_unix(t).to_python_isoformat()
}

pub(crate) fn insert(
    stmt: &mut rusqlite::CachedStatement<'_>,
    e: &UsageEvent,
) -> Result<(), StoreError> {
    let metrics = serde_json::to_string(&e.metrics)
        .map_err(|err| StoreError::Backend(format!("cannot encode metrics: {err}")))?;
    stmt.execute(params![
        event_id(e.timestamp.unix())?,
        e.task_id,
        e.agent_id,
        e.consumer_id,
        metrics,
        iso(e.timestamp.unix()),
    ])
    .map_err(sql_err)?;
    Ok(())
}

type Row = (String, String, String, String, String, String);

fn decode(
    (id, task_id, agent_id, consumer_id, metrics, ts): Row,
) -> Result<UsageEvent, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "usage_events",
        key: id.clone(),
        reason,
    };
    let metrics: UsageMetrics =
        serde_json::from_str(&metrics).map_err(|e| corrupt(format!("metrics {metrics:?}: {e}")))?;
    let timestamp: Timestamp = ts
        .parse()
        .map_err(|e| corrupt(format!("timestamp {ts:?}: {e}")))?;
    Ok(UsageEvent {
        task_id,
        agent_id,
        consumer_id,
        metrics,
        timestamp,
    })
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        table: "usage_events",
        key: what.to_owned(),
        reason: format!("negative total {v}"),
    })
}

impl MeteringStore for SqliteMeteringStore {
    fn record_batch(&mut self, events: &[UsageEvent]) -> Result<(), StoreError> {
        // The inherent method: one `BEGIN IMMEDIATE` transaction.
        SqliteMeteringStore::record_batch(self, events)
    }

    fn record(&mut self, event: &UsageEvent) -> Result<(), StoreError> {
        let event = event.normalized()?;
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(INSERT).map_err(sql_err)?;
        insert(&mut stmt, &event)
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
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(QUERY).map_err(sql_err)?;
        let rows = stmt
            .query_map(params![agent_id, iso(start), iso(end)], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(sql_err)?;
        let mut out = Vec::new();
        for row in rows {
            let row: Row = row.map_err(|e| StoreError::Corrupt {
                table: "usage_events",
                key: format!("agent {agent_id:?}"),
                reason: e.to_string(),
            })?;
            out.push(decode(row)?);
        }
        Ok(out)
    }

    fn aggregate(
        &self,
        agent_id: &str,
        period: AggregatePeriod,
        at: UnixTime,
    ) -> Result<UsageAggregate, StoreError> {
        let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, i64, i64, i64)> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        };
        let conn = self.conn.lock();
        let (count, tokens, duration, calls) = match period.bounds(at) {
            Some((start, end)) => conn
                .prepare_cached(&self.aggregate_range)
                .and_then(|mut s| s.query_row(params![agent_id, iso(start), iso(end)], read)),
            None => conn
                .prepare_cached(&self.aggregate_total)
                .and_then(|mut s| s.query_row(params![agent_id], read)),
        }
        .map_err(sql_err)?;
        Ok(UsageAggregate {
            agent_id: agent_id.to_owned(),
            period: period.as_str().to_owned(),
            total_tokens: to_u64(tokens, "total_tokens")?,
            total_duration: to_u64(duration, "total_duration")?,
            total_tasks: to_u64(count, "count")?,
            total_api_calls: to_u64(calls, "total_api_calls")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_look_like_the_reference() {
        let at = UnixTime::from_secs(1_767_225_600);
        let id = event_id(at).unwrap();
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("evt_"));
        assert_eq!(&id[16..17], "7", "uuid version nibble");
        assert!(matches!(&id[20..21], "8" | "9" | "a" | "b"), "uuid variant");
        assert!(id[4..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(event_id(at).unwrap(), id);
        // Later events sort after earlier ones: the index grows at its end.
        let later = event_id(UnixTime::from_secs(1_767_225_601)).unwrap();
        assert!(later > id);
    }

    #[test]
    fn iso_matches_python_isoformat() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap().unix();
        assert_eq!(iso(t("2026-01-01T00:00:00Z")), "2026-01-01T00:00:00+00:00");
        assert_eq!(
            iso(t("2026-01-01T02:00:00.5+02:00")),
            "2026-01-01T00:00:00.500000+00:00"
        );
        assert_eq!(
            iso(UnixTime::from_micros(i64::MIN)),
            "0001-01-01T00:00:00+00:00"
        );
        assert_eq!(
            iso(UnixTime::from_micros(i64::MAX)),
            "9999-12-31T23:59:59.999999+00:00"
        );
    }
}
