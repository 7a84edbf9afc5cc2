//! [`PgSnapshotStore`]: the `asap_snapshots` table.

use asap_proto::model::{JsonObject, StateSnapshot, Timestamp};
use asap_proto::store::{check_snapshot, SnapshotStore, StoreError};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{corrupt, get, pg_err, text, PgBackend};

const TABLE: &str = "asap_snapshots";
const UPSERT: &str =
    "INSERT INTO asap_snapshots (task_id, version, id, data, checkpoint, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (task_id, version) DO UPDATE SET \
     id = EXCLUDED.id, data = EXCLUDED.data, checkpoint = EXCLUDED.checkpoint, \
     created_at = EXCLUDED.created_at";
/// A group's rows in one statement (arrays unnested: one parse, one plan, one
/// round trip, however many rows); keys are distinct (the caller keeps the last).
const UPSERT_MANY: &str =
    "INSERT INTO asap_snapshots (task_id, version, id, data, checkpoint, created_at) \
     SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::bytea[], $4::text[], $5::bool[], $6::text[]) \
     ON CONFLICT (task_id, version) DO UPDATE SET \
     id = EXCLUDED.id, data = EXCLUDED.data, checkpoint = EXCLUDED.checkpoint, \
     created_at = EXCLUDED.created_at";
const SELECT_VERSION: &str = "SELECT task_id, version, id, data, checkpoint, created_at \
     FROM asap_snapshots WHERE task_id = $1 AND version = $2";
const SELECT_LATEST: &str = "SELECT task_id, version, id, data, checkpoint, created_at \
     FROM asap_snapshots WHERE task_id = $1 ORDER BY version DESC LIMIT 1";
const SELECT_VERSIONS: &str =
    "SELECT version FROM asap_snapshots WHERE task_id = $1 ORDER BY version";
const DELETE_VERSION: &str = "DELETE FROM asap_snapshots WHERE task_id = $1 AND version = $2";
const DELETE_TASK: &str = "DELETE FROM asap_snapshots WHERE task_id = $1";

/// A snapshot as its columns, encoded on the caller's thread (the JSON text is
/// made once, and the operation owns what it sends).
pub(crate) struct SnapshotRow {
    task_id: Vec<u8>,
    version: i64,
    id: Vec<u8>,
    data: String,
    checkpoint: bool,
    created_at: String,
}

impl SnapshotRow {
    /// Checks and encodes `s` (version ≥ 1, as every backend requires).
    pub(crate) fn encode(s: &StateSnapshot) -> Result<Self, StoreError> {
        check_snapshot(s)?;
        let data = serde_json::to_string(&s.data).map_err(|e| StoreError::InvalidInput {
            what: "snapshot data",
            reason: e.to_string(),
        })?;
        Ok(Self {
            task_id: s.task_id.as_bytes().to_vec(),
            version: s.version,
            id: s.id.as_bytes().to_vec(),
            data,
            checkpoint: s.checkpoint,
            created_at: s.created_at.to_python_isoformat(),
        })
    }

    /// The sort key that gives concurrent writers one lock order.
    pub(crate) fn key(&self) -> (&[u8], i64) {
        (&self.task_id, self.version)
    }
}

/// Upserts `rows` in order, pipelined (one round trip for the lot).
pub(crate) async fn upsert(
    client: &impl GenericClient,
    rows: &[SnapshotRow],
) -> Result<(), StoreError> {
    match rows {
        [] => return Ok(()),
        [r] => {
            let stmt = client.prepare_cached(UPSERT).await.map_err(pg_err)?;
            let params: [&(dyn ToSql + Sync); 6] = [
                &r.task_id,
                &r.version,
                &r.id,
                &r.data,
                &r.checkpoint,
                &r.created_at,
            ];
            client.execute(&stmt, &params).await.map_err(pg_err)?;
            return Ok(());
        }
        _ => {}
    }
    let rows = super::last_per_key(rows, SnapshotRow::key);
    let stmt = client.prepare_cached(UPSERT_MANY).await.map_err(pg_err)?;
    let task_ids: Vec<&[u8]> = rows.iter().map(|r| r.task_id.as_slice()).collect();
    let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let ids: Vec<&[u8]> = rows.iter().map(|r| r.id.as_slice()).collect();
    let data: Vec<&str> = rows.iter().map(|r| r.data.as_str()).collect();
    let checkpoints: Vec<bool> = rows.iter().map(|r| r.checkpoint).collect();
    let created: Vec<&str> = rows.iter().map(|r| r.created_at.as_str()).collect();
    client
        .execute(
            &stmt,
            &[&task_ids, &versions, &ids, &data, &checkpoints, &created],
        )
        .await
        .map_err(pg_err)?;
    Ok(())
}

fn decode(row: &tokio_postgres::Row) -> Result<StateSnapshot, StoreError> {
    let task_id = text(TABLE, "task_id", get(row, TABLE, 0)?)?;
    let version: i64 = get(row, TABLE, 1)?;
    let key = || format!("task {task_id:?} version {version}");
    let id = text(TABLE, "id", get(row, TABLE, 2)?)?;
    let data: String = get(row, TABLE, 3)?;
    let data: JsonObject = serde_json::from_str(&data)
        .map_err(|e| corrupt(TABLE, key(), format!("data is not a JSON object: {e}")))?;
    let checkpoint: bool = get(row, TABLE, 4)?;
    let created_at: String = get(row, TABLE, 5)?;
    let created_at: Timestamp = created_at
        .parse()
        .map_err(|e| corrupt(TABLE, key(), format!("created_at {created_at:?}: {e}")))?;
    Ok(StateSnapshot {
        id,
        task_id,
        version,
        data,
        checkpoint,
        created_at,
    })
}

/// A [`SnapshotStore`] on PostgreSQL: `save` upserts by `(task_id, version)`,
/// `save_batch` is one transaction.
#[derive(Debug, Clone)]
pub struct PgSnapshotStore {
    backend: PgBackend,
}

impl PgSnapshotStore {
    pub(crate) fn new(backend: PgBackend) -> Self {
        Self { backend }
    }

    fn select_one(
        &self,
        sql: &'static str,
        task_id: &str,
        version: Option<i64>,
    ) -> Result<Option<StateSnapshot>, StoreError> {
        let task = task_id.as_bytes().to_vec();
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
            let row = match version {
                Some(v) => client.query_opt(&stmt, &[&task, &v]).await,
                None => client.query_opt(&stmt, &[&task]).await,
            }
            .map_err(pg_err)?;
            row.as_ref().map(decode).transpose()
        })
    }

    fn delete_where(
        &self,
        sql: &'static str,
        task_id: &str,
        version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let task = task_id.as_bytes().to_vec();
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
            let n = match version {
                Some(v) => client.execute(&stmt, &[&task, &v]).await,
                None => client.execute(&stmt, &[&task]).await,
            }
            .map_err(pg_err)?;
            Ok(n > 0)
        })
    }
}

impl SnapshotStore for PgSnapshotStore {
    fn save(&mut self, snapshot: &StateSnapshot) -> Result<(), StoreError> {
        let row = SnapshotRow::encode(snapshot)?;
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            upsert(&client, std::slice::from_ref(&row)).await
        })
    }

    fn get(&self, task_id: &str, version: i64) -> Result<Option<StateSnapshot>, StoreError> {
        self.select_one(SELECT_VERSION, task_id, Some(version))
    }

    fn get_latest(&self, task_id: &str) -> Result<Option<StateSnapshot>, StoreError> {
        self.select_one(SELECT_LATEST, task_id, None)
    }

    fn list_versions(&self, task_id: &str) -> Result<Vec<i64>, StoreError> {
        let task = task_id.as_bytes().to_vec();
        self.backend.run(move |shared| async move {
            let client = shared.conn().await?;
            let stmt = client
                .prepare_cached(SELECT_VERSIONS)
                .await
                .map_err(pg_err)?;
            let rows = client.query(&stmt, &[&task]).await.map_err(pg_err)?;
            rows.iter().map(|r| get(r, TABLE, 0)).collect()
        })
    }

    fn delete(&mut self, task_id: &str, version: i64) -> Result<bool, StoreError> {
        self.delete_where(DELETE_VERSION, task_id, Some(version))
    }

    fn delete_all(&mut self, task_id: &str) -> Result<bool, StoreError> {
        self.delete_where(DELETE_TASK, task_id, None)
    }

    fn save_batch(&mut self, snapshots: &[StateSnapshot]) -> Result<(), StoreError> {
        let mut rows = snapshots
            .iter()
            .map(SnapshotRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        // Stable: of two saves of one version, the later still wins.
        rows.sort_by(|a, b| a.key().cmp(&b.key()));
        self.backend.run(move |shared| async move {
            // One statement (UNNEST): atomic without a transaction around it.
            let client = shared.conn().await?;
            upsert(&client, &rows).await
        })
    }
}
