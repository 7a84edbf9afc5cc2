//! [`SqliteWebhookStore`]: the `webhook_outbox` table (ours, not the
//! reference's: its outbox lives in memory), beside the task state in the same file.

use std::path::{Path, PathBuf};

use asap_proto::store::{check_outbox_record, StoreError, WebhookChange, WebhookStore};
use asap_proto::webhook::{OutboxRecord, RecordState};
use rusqlite::{params, TransactionBehavior};

use super::{open_connection, open_memory_connection, sql_err, SharedConnection, SqliteOptions};

/// One row per event not yet delivered: the whole [`OutboxRecord`] as JSON
/// (`record`), with its key, order and state as columns for listing.
pub const WEBHOOK_OUTBOX_DDL: &str = "CREATE TABLE IF NOT EXISTS webhook_outbox (
                event_id TEXT PRIMARY KEY,
                seq INTEGER NOT NULL,
                state TEXT NOT NULL,
                record TEXT NOT NULL
            )";

const DDL: [&str; 1] = [WEBHOOK_OUTBOX_DDL];
const UPSERT: &str = "INSERT OR REPLACE INTO webhook_outbox (event_id, seq, state, record) \
     VALUES (?1, ?2, ?3, ?4)";
const DELETE: &str = "DELETE FROM webhook_outbox WHERE event_id = ?1";
const SELECT: &str = "SELECT event_id, record FROM webhook_outbox ORDER BY seq";
const SELECT_DEAD: &str =
    "SELECT event_id, record FROM webhook_outbox WHERE state = 'dead' ORDER BY seq";

/// A [`WebhookStore`] in a SQLite file: a restart resumes pending deliveries,
/// and dead letters can be listed and replayed from the command line.
///
/// ```
/// use asap_blocking::store::SqliteWebhookStore;
/// use asap_proto::store::{WebhookChange, WebhookStore};
/// use asap_proto::webhook::{OutboxConfig, WebhookEvent, WebhookOutbox};
/// use asap_proto::model::UnixTime;
/// let dir = tempfile::tempdir().unwrap();
/// let now = UnixTime::from_secs(1_767_225_600);
/// let mut outbox = WebhookOutbox::new(OutboxConfig::default());
/// outbox.enqueue(WebhookEvent::new("e1", "task_1", "https://h.example.com/", b"{}".to_vec()), now).unwrap();
/// SqliteWebhookStore::open(dir.path().join("state.db"))?.apply(&WebhookChange::of_enqueued(&outbox, ["e1"]))?;
/// let reopened = SqliteWebhookStore::open(dir.path().join("state.db"))?;
/// assert_eq!(reopened.load()?[0].event_id, "e1");
/// # Ok::<(), asap_proto::store::StoreError>(())
/// ```
#[derive(Debug)]
pub struct SqliteWebhookStore {
    conn: SharedConnection,
    path: Option<PathBuf>,
}

impl SqliteWebhookStore {
    /// Opens (creating if needed) the database at `path` with default [`SqliteOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path`: its own connection,
    /// so the delivery worker never waits behind task-state commits.
    pub fn open_with(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        Ok(Self {
            conn: SharedConnection::new(open_connection(path, options, &DDL)?),
            path: Some(path.to_owned()),
        })
    }

    /// A private in-memory database, gone when the store is dropped.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            conn: SharedConnection::new(open_memory_connection(&SqliteOptions::default(), &DDL)?),
            path: None,
        })
    }

    /// The database file (`None` for an in-memory database).
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn select(&self, sql: &str) -> Result<Vec<OutboxRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(sql).map_err(sql_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, json) = row.map_err(sql_err)?;
            let record = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                table: "webhook_outbox",
                key,
                reason: e.to_string(),
            })?;
            out.push(record);
        }
        Ok(out)
    }
}

fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Pending => "pending",
        RecordState::InFlight => "in_flight",
        RecordState::Dead => "dead",
    }
}

impl WebhookStore for SqliteWebhookStore {
    fn apply(&mut self, changes: &[WebhookChange]) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(changes.len());
        for c in changes {
            if let WebhookChange::Put(r) = c {
                check_outbox_record(r)?;
                let json = serde_json::to_string(r).map_err(|e| StoreError::InvalidInput {
                    what: "outbox record",
                    reason: e.to_string(),
                })?;
                rows.push(Some(json));
            } else {
                rows.push(None);
            }
        }
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(sql_err)?;
            let mut delete = tx.prepare_cached(DELETE).map_err(sql_err)?;
            for (c, json) in changes.iter().zip(rows) {
                match (c, json) {
                    (WebhookChange::Put(r), Some(json)) => upsert.execute(params![
                        r.event_id,
                        i64::try_from(r.seq).unwrap_or(i64::MAX),
                        state_name(r.state),
                        json
                    ]),
                    (WebhookChange::Remove(id), _) => delete.execute(params![id]),
                    (WebhookChange::Put(_), None) => Ok(0),
                }
                .map_err(sql_err)?;
            }
        }
        tx.commit().map_err(sql_err)
    }

    fn load(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.select(SELECT)
    }

    fn dead_letters(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.select(SELECT_DEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_contract_in_memory_and_on_a_file() {
        asap_proto::store::contract_webhook::webhook_store(|| {
            SqliteWebhookStore::open_in_memory().unwrap()
        });
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        asap_proto::store::contract_webhook::webhook_store(|| {
            n += 1;
            SqliteWebhookStore::open(dir.path().join(format!("w{n}.db"))).unwrap()
        });
    }

    #[test]
    fn shares_the_file_with_the_task_state_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let _tasks = crate::store::SqliteSnapshotStore::open(&path).unwrap();
        let mut store = SqliteWebhookStore::open(&path).unwrap();
        let now = asap_proto::model::UnixTime::from_secs(1_767_225_600);
        let mut outbox = asap_proto::webhook::WebhookOutbox::new(Default::default());
        let e = asap_proto::webhook::WebhookEvent::new("e", "t", "https://h.example.com/", vec![1]);
        outbox.enqueue(e, now).unwrap();
        store
            .apply(&WebhookChange::of_enqueued(&outbox, ["e"]))
            .unwrap();
        drop(store);
        let again = SqliteWebhookStore::open(&path).unwrap();
        assert_eq!(
            again.load().unwrap(),
            outbox.records().cloned().collect::<Vec<_>>()
        );
    }
}
