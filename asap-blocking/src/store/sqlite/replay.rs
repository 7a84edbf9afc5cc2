//! [`SqliteReplayStore`]: the `replay_nonces` and `replay_dedup` tables (ours,
//! not the reference's), beside the task state in the same file.

use std::path::{Path, PathBuf};

use asap_proto::model::UnixTime;
use asap_proto::store::{
    check_dedup_record, check_nonce_record, check_replay_claim, ClaimOutcome, DedupRecord,
    NonceRecord, ReplayClaim, ReplayStore, StoreError,
};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{open_connection, open_memory_connection, sql_err, SharedConnection, SqliteOptions};

/// Accepted nonces, keyed per sender; `expires_at_ms` is the last live millisecond.
pub const REPLAY_NONCES_DDL: &str = "CREATE TABLE IF NOT EXISTS replay_nonces (
                sender TEXT NOT NULL,
                nonce TEXT NOT NULL,
                expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (sender, nonce)
            ) WITHOUT ROWID";

/// Purges and loads walk the nonces by expiry.
pub const REPLAY_NONCES_INDEX_DDL: &str =
    "CREATE INDEX IF NOT EXISTS idx_replay_nonces_expiry ON replay_nonces (expires_at_ms)";

/// The dedup window's answers, keyed per sender and envelope id.
pub const REPLAY_DEDUP_DDL: &str = "CREATE TABLE IF NOT EXISTS replay_dedup (
                sender TEXT NOT NULL,
                envelope_id TEXT NOT NULL,
                response BLOB NOT NULL,
                expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (sender, envelope_id)
            )";

/// Purges and loads walk the dedup records by expiry.
pub const REPLAY_DEDUP_INDEX_DDL: &str =
    "CREATE INDEX IF NOT EXISTS idx_replay_dedup_expiry ON replay_dedup (expires_at_ms)";

/// Dedup claims not yet answered (`ReplayStore::claim`): who runs what until when.
pub const REPLAY_CLAIMS_DDL: &str = "CREATE TABLE IF NOT EXISTS replay_claims (
                sender TEXT NOT NULL,
                envelope_id TEXT NOT NULL,
                lease_until_ms INTEGER NOT NULL,
                expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (sender, envelope_id)
            ) WITHOUT ROWID";

/// Every statement creating the replay tables, in order.
pub(crate) const DDL: [&str; 5] = [
    REPLAY_NONCES_DDL,
    REPLAY_NONCES_INDEX_DDL,
    REPLAY_DEDUP_DDL,
    REPLAY_DEDUP_INDEX_DDL,
    REPLAY_CLAIMS_DDL,
];

/// A nonce recorded twice keeps its later expiry.
pub(crate) const INSERT_NONCE: &str =
    "INSERT INTO replay_nonces (sender, nonce, expires_at_ms) VALUES (?1, ?2, ?3) \
     ON CONFLICT (sender, nonce) DO UPDATE SET expires_at_ms = max(expires_at_ms, excluded.expires_at_ms)";
pub(crate) const INSERT_DEDUP: &str = "INSERT OR REPLACE INTO replay_dedup \
     (sender, envelope_id, response, expires_at_ms) VALUES (?1, ?2, ?3, ?4)";
const SELECT_NONCES: &str = "SELECT sender, nonce, expires_at_ms FROM replay_nonces \
     WHERE expires_at_ms >= ?1 ORDER BY expires_at_ms, sender, nonce";
const SELECT_DEDUP: &str = "SELECT sender, envelope_id, response, expires_at_ms FROM replay_dedup \
     WHERE expires_at_ms >= ?1 ORDER BY expires_at_ms, sender, envelope_id";
pub(crate) const PURGE_NONCES: &str = "DELETE FROM replay_nonces WHERE expires_at_ms < ?1";
pub(crate) const PURGE_DEDUP: &str = "DELETE FROM replay_dedup WHERE expires_at_ms < ?1";
const PURGE_CLAIMS: &str = "DELETE FROM replay_claims WHERE expires_at_ms < ?1";
const LIVE_NONCE: &str =
    "SELECT 1 FROM replay_nonces WHERE sender = ?1 AND nonce = ?2 AND expires_at_ms >= ?3";
const PUT_NONCE: &str = "INSERT OR REPLACE INTO replay_nonces (sender, nonce, expires_at_ms) \
     VALUES (?1, ?2, ?3)";
const LIVE_ANSWER: &str = "SELECT response FROM replay_dedup \
     WHERE sender = ?1 AND envelope_id = ?2 AND expires_at_ms >= ?3";
/// A dedup row for the key (any expiry) replaced the claim: `record_dedup`.
const LIVE_CLAIM: &str = "SELECT 1 FROM replay_claims c \
     WHERE c.sender = ?1 AND c.envelope_id = ?2 AND c.lease_until_ms >= ?3 AND c.expires_at_ms >= ?3 \
     AND NOT EXISTS (SELECT 1 FROM replay_dedup d WHERE d.sender = ?1 AND d.envelope_id = ?2)";
const DROP_ANSWER: &str = "DELETE FROM replay_dedup WHERE sender = ?1 AND envelope_id = ?2";
const PUT_CLAIM: &str = "INSERT OR REPLACE INTO replay_claims \
     (sender, envelope_id, lease_until_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)";

/// A [`ReplayStore`] in a SQLite file: survives restarts, so a replayed
/// envelope stays refused after the agent comes back.
///
/// ```
/// use asap_blocking::store::SqliteReplayStore;
/// use asap_proto::model::UnixTime;
/// use asap_proto::store::{NonceRecord, ReplayStore};
/// let dir = std::env::temp_dir().join(format!("asap-doc-replay-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let record = NonceRecord { sender: "urn:asap:agent:a".into(), nonce: "n".into(), expires_at_unix_ms: 5 };
/// SqliteReplayStore::open(dir.join("state.db"))?.record_nonce(&record)?;
/// let reopened = SqliteReplayStore::open(dir.join("state.db"))?;
/// assert_eq!(reopened.load_nonces(UnixTime::EPOCH)?, vec![record]);
/// # drop(reopened); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), asap_proto::store::StoreError>(())
/// ```
#[derive(Debug)]
pub struct SqliteReplayStore {
    conn: SharedConnection,
    path: Option<PathBuf>,
}

impl SqliteReplayStore {
    /// Opens (creating if needed) the database at `path` with default [`SqliteOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path`.
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

    /// A store on a connection shared with the task-state stores of the same file.
    pub(crate) fn with_connection(conn: SharedConnection, path: Option<PathBuf>) -> Self {
        Self { conn, path }
    }

    /// The database file (`None` for an in-memory database).
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

pub(crate) fn insert_nonce(
    stmt: &mut rusqlite::CachedStatement<'_>,
    r: &NonceRecord,
) -> Result<(), StoreError> {
    stmt.execute(params![r.sender, r.nonce, r.expires_at_unix_ms])
        .map_err(sql_err)?;
    Ok(())
}

pub(crate) fn insert_dedup(
    stmt: &mut rusqlite::CachedStatement<'_>,
    r: &DedupRecord,
) -> Result<(), StoreError> {
    stmt.execute(params![
        r.sender,
        r.envelope_id,
        r.response,
        r.expires_at_unix_ms
    ])
    .map_err(sql_err)?;
    Ok(())
}

fn corrupt(table: &'static str, e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..) => {
            StoreError::Corrupt {
                table,
                key: "(a row)".into(),
                reason: e.to_string(),
            }
        }
        e => sql_err(e),
    }
}

impl ReplayStore for SqliteReplayStore {
    fn record_nonce(&mut self, record: &NonceRecord) -> Result<(), StoreError> {
        check_nonce_record(record)?;
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(INSERT_NONCE).map_err(sql_err)?;
        insert_nonce(&mut stmt, record)
    }

    fn record_nonces(&mut self, records: &[NonceRecord]) -> Result<(), StoreError> {
        records.iter().try_for_each(check_nonce_record)?;
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        {
            let mut stmt = tx.prepare_cached(INSERT_NONCE).map_err(sql_err)?;
            for r in records {
                insert_nonce(&mut stmt, r)?;
            }
        }
        tx.commit().map_err(sql_err)
    }

    fn load_nonces(&self, now: UnixTime) -> Result<Vec<NonceRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(SELECT_NONCES).map_err(sql_err)?;
        let rows = stmt
            .query_map(params![now.as_millis()], |r| {
                Ok(NonceRecord {
                    sender: r.get(0)?,
                    nonce: r.get(1)?,
                    expires_at_unix_ms: r.get(2)?,
                })
            })
            .map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt("replay_nonces", e))
    }

    fn record_dedup(&mut self, record: &DedupRecord) -> Result<(), StoreError> {
        check_dedup_record(record)?;
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(INSERT_DEDUP).map_err(sql_err)?;
        insert_dedup(&mut stmt, record)
    }

    fn load_dedup(&self, now: UnixTime) -> Result<Vec<DedupRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(SELECT_DEDUP).map_err(sql_err)?;
        let rows = stmt
            .query_map(params![now.as_millis()], |r| {
                Ok(DedupRecord {
                    sender: r.get(0)?,
                    envelope_id: r.get(1)?,
                    response: r.get(2)?,
                    expires_at_unix_ms: r.get(3)?,
                })
            })
            .map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt("replay_dedup", e))
    }

    fn purge_expired(&mut self, now: UnixTime) -> Result<u64, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let n = tx
            .prepare_cached(PURGE_NONCES)
            .and_then(|mut s| s.execute(params![now.as_millis()]))
            .map_err(sql_err)?
            + tx.prepare_cached(PURGE_DEDUP)
                .and_then(|mut s| s.execute(params![now.as_millis()]))
                .map_err(sql_err)?
            + tx.prepare_cached(PURGE_CLAIMS)
                .and_then(|mut s| s.execute(params![now.as_millis()]))
                .map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        Ok(n as u64)
    }

    fn claim(&mut self, c: &ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        check_replay_claim(c)?;
        let now = c.now.as_millis();
        let mut conn = self.conn.lock();
        // IMMEDIATE: the check and the write are one decision (one writer at a time).
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        if let Some(n) = &c.nonce {
            let live = tx
                .prepare_cached(LIVE_NONCE)
                .and_then(|mut s| s.exists(params![n.sender, n.nonce, now]))
                .map_err(sql_err)?;
            if live {
                return Ok(ClaimOutcome::NonceReplayed);
            }
            tx.prepare_cached(PUT_NONCE)
                .and_then(|mut s| s.execute(params![n.sender, n.nonce, n.expires_at_unix_ms]))
                .map_err(sql_err)?;
        }
        if let Some(d) = &c.dedup {
            let answer: Option<Vec<u8>> = tx
                .prepare_cached(LIVE_ANSWER)
                .and_then(|mut s| {
                    s.query_row(params![d.sender, d.envelope_id, now], |r| r.get(0))
                        .optional()
                })
                .map_err(|e| corrupt("replay_dedup", e))?;
            if let Some(answer) = answer {
                tx.commit().map_err(sql_err)?;
                return Ok(ClaimOutcome::Answered(answer));
            }
            let running = tx
                .prepare_cached(LIVE_CLAIM)
                .and_then(|mut s| s.exists(params![d.sender, d.envelope_id, now]))
                .map_err(sql_err)?;
            if running {
                tx.commit().map_err(sql_err)?;
                return Ok(ClaimOutcome::Running);
            }
            // An expired answer (or a released claim) left behind is not this run's.
            tx.prepare_cached(DROP_ANSWER)
                .and_then(|mut s| s.execute(params![d.sender, d.envelope_id]))
                .map_err(sql_err)?;
            tx.prepare_cached(PUT_CLAIM)
                .and_then(|mut s| {
                    s.execute(params![
                        d.sender,
                        d.envelope_id,
                        d.lease_until_unix_ms,
                        d.expires_at_unix_ms
                    ])
                })
                .map_err(sql_err)?;
        }
        tx.commit().map_err(sql_err)?;
        Ok(ClaimOutcome::Won)
    }
}
