//! [`SqliteSnapshotStore`]: the `snapshots` table.

use std::path::{Path, PathBuf};

use asap_proto::canonical_json::{self, JsonStyle};
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp};
use asap_proto::store::{check_snapshot, SnapshotStore, StoreError};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{
    open_connection, open_memory_connection, sql_err, SharedConnection, SqliteOptions,
    SNAPSHOTS_DDL,
};

pub(crate) const INSERT: &str = "INSERT OR REPLACE INTO snapshots \
     (task_id, id, version, data, checkpoint, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SELECT_VERSION: &str = "SELECT task_id, id, version, data, checkpoint, created_at \
     FROM snapshots WHERE task_id = ?1 AND version = ?2";
const SELECT_LATEST: &str = "SELECT task_id, id, version, data, checkpoint, created_at \
     FROM snapshots WHERE task_id = ?1 ORDER BY version DESC LIMIT 1";
const SELECT_VERSIONS: &str = "SELECT version FROM snapshots WHERE task_id = ?1 ORDER BY version";
const DELETE_VERSION: &str = "DELETE FROM snapshots WHERE task_id = ?1 AND version = ?2";
const DELETE_TASK: &str = "DELETE FROM snapshots WHERE task_id = ?1";

/// A [`SnapshotStore`] in a SQLite file, readable and writable by the Python reference.
///
/// ```
/// use asap_blocking::store::SqliteSnapshotStore;
/// use asap_proto::store::SnapshotStore;
/// let dir = std::env::temp_dir().join(format!("asap-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = SqliteSnapshotStore::open(dir.join("state.db"))?;
/// assert_eq!(store.list_versions("task_1")?, Vec::<i64>::new());
/// # drop(store); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), asap_proto::store::StoreError>(())
/// ```
#[derive(Debug)]
pub struct SqliteSnapshotStore {
    conn: SharedConnection,
    path: Option<PathBuf>,
}

/// A row as stored: `(task_id, id, version, data, checkpoint, created_at)`.
type Row = (String, String, i64, String, i64, String);

impl SqliteSnapshotStore {
    /// Opens (creating if needed) the database at `path` with default [`SqliteOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path`.
    pub fn open_with(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        Ok(Self {
            conn: SharedConnection::new(open_connection(path, options, &[SNAPSHOTS_DDL])?),
            path: Some(path.to_owned()),
        })
    }

    /// A private in-memory database, gone when the store is dropped.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            conn: SharedConnection::new(open_memory_connection(
                &SqliteOptions::default(),
                &[SNAPSHOTS_DDL],
            )?),
            path: None,
        })
    }

    /// A store on a connection shared with the metering store of the same file.
    pub(crate) fn with_connection(conn: SharedConnection, path: Option<PathBuf>) -> Self {
        Self { conn, path }
    }

    /// The database file (`None` for an in-memory database).
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Saves several snapshots in one transaction: all are stored or none.
    pub fn save_batch(&mut self, snapshots: &[StateSnapshot]) -> Result<(), StoreError> {
        for s in snapshots {
            check_snapshot(s)?;
        }
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        {
            let mut stmt = tx.prepare_cached(INSERT).map_err(sql_err)?;
            for s in snapshots {
                insert(&mut stmt, s)?;
            }
        }
        tx.commit().map_err(sql_err)
    }

    fn select_one(
        &self,
        sql: &str,
        task_id: &str,
        version: Option<i64>,
    ) -> Result<Option<StateSnapshot>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(sql).map_err(sql_err)?;
        let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        };
        let row = match version {
            Some(v) => stmt.query_row(params![task_id, v], read),
            None => stmt.query_row(params![task_id], read),
        }
        .optional()
        .map_err(|e| row_err(e, task_id))?;
        row.map(decode).transpose()
    }
}

pub(crate) fn insert(
    stmt: &mut rusqlite::CachedStatement<'_>,
    s: &StateSnapshot,
) -> Result<(), StoreError> {
    let data = canonical_json::to_string(
        &serde_json::Value::Object(s.data.clone()),
        JsonStyle::default(),
    );
    stmt.execute(params![
        s.task_id,
        s.id,
        s.version,
        data,
        i64::from(s.checkpoint),
        s.created_at.to_python_isoformat(),
    ])
    .map_err(sql_err)?;
    Ok(())
}

/// A column holding the wrong SQLite type is corruption, not a backend failure.
fn row_err(e: rusqlite::Error, task_id: &str) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..) => {
            StoreError::Corrupt {
                table: "snapshots",
                key: format!("task {task_id:?}"),
                reason: e.to_string(),
            }
        }
        e => sql_err(e),
    }
}

fn decode(
    (task_id, id, version, data, checkpoint, created_at): Row,
) -> Result<StateSnapshot, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "snapshots",
        key: format!("task {task_id:?} version {version}"),
        reason,
    };
    let data: JsonObject = serde_json::from_str(&data)
        .map_err(|e| corrupt(format!("data is not a JSON object: {e}")))?;
    let created_at: Timestamp = created_at
        .parse()
        .map_err(|e| corrupt(format!("created_at {created_at:?}: {e}")))?;
    Ok(StateSnapshot {
        id,
        task_id,
        version,
        data,
        checkpoint: checkpoint != 0,
        created_at,
    })
}

impl SnapshotStore for SqliteSnapshotStore {
    fn save_batch(&mut self, snapshots: &[StateSnapshot]) -> Result<(), StoreError> {
        // The inherent method: one `BEGIN IMMEDIATE` transaction.
        SqliteSnapshotStore::save_batch(self, snapshots)
    }

    fn save(&mut self, snapshot: &StateSnapshot) -> Result<(), StoreError> {
        check_snapshot(snapshot)?;
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(INSERT).map_err(sql_err)?;
        insert(&mut stmt, snapshot)
    }

    fn get(&self, task_id: &str, version: i64) -> Result<Option<StateSnapshot>, StoreError> {
        self.select_one(SELECT_VERSION, task_id, Some(version))
    }

    fn get_latest(&self, task_id: &str) -> Result<Option<StateSnapshot>, StoreError> {
        self.select_one(SELECT_LATEST, task_id, None)
    }

    fn list_versions(&self, task_id: &str) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(SELECT_VERSIONS).map_err(sql_err)?;
        let rows = stmt
            .query_map(params![task_id], |r| r.get::<_, i64>(0))
            .map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| row_err(e, task_id))
    }

    fn delete(&mut self, task_id: &str, version: i64) -> Result<bool, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(DELETE_VERSION).map_err(sql_err)?;
        Ok(stmt.execute(params![task_id, version]).map_err(sql_err)? > 0)
    }

    fn delete_all(&mut self, task_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(DELETE_TASK).map_err(sql_err)?;
        Ok(stmt.execute(params![task_id]).map_err(sql_err)? > 0)
    }
}
