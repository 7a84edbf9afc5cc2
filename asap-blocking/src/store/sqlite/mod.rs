//! SQLite stores with the reference's schema (spec §17.3).
//!
//! A database file is interchangeable with the Python reference's
//! `SQLiteSnapshotStore` / `SQLiteMeteringStore`: same tables, same
//! `CREATE` text, same column encodings (`data` as Python `json.dumps`,
//! timestamps as Python `isoformat()`, `checkpoint` 0/1, metrics as compact
//! JSON, event ids `evt_` + uuid4 hex). Both stores can share one file.
//!
//! Every connection is opened in WAL mode (readers never block the writer),
//! with a busy timeout (writers queue instead of failing at once) and
//! `synchronous=FULL` by default, so a save that returned `Ok` survives a
//! process crash *and* a power cut; [`Synchronous::Normal`] keeps process-crash
//! safety and trades the power-cut guarantee for speed. Statements are
//! prepared once per connection and cached; multi-row writes
//! ([`SqliteSnapshotStore::save_batch`], [`SqliteMeteringStore::record_batch`])
//! run in one `BEGIN IMMEDIATE` transaction, all or nothing.
//!
//! A store owns one connection and is `Send` but not `Sync`: give each thread
//! its own store on the same file (SQLite serialises writers), or put one
//! behind a lock.

mod checkpoint;
mod metering;
mod replay;
mod snapshot;
mod webhook;

use std::path::Path;
use std::time::Duration;

use asap_proto::store::StoreError;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

pub use metering::SqliteMeteringStore;
pub use replay::{
    SqliteReplayStore, REPLAY_DEDUP_DDL, REPLAY_DEDUP_INDEX_DDL, REPLAY_NONCES_DDL,
    REPLAY_NONCES_INDEX_DDL,
};
pub use snapshot::SqliteSnapshotStore;
pub use webhook::{SqliteWebhookStore, WEBHOOK_OUTBOX_DDL};

/// The reference's `snapshots` table, byte for byte as it appears in `sqlite_master`
/// (SQLite drops the `IF NOT EXISTS` when it records the statement).
pub const SNAPSHOTS_DDL: &str = "CREATE TABLE IF NOT EXISTS snapshots (
                task_id TEXT NOT NULL,
                id TEXT NOT NULL,
                version INTEGER NOT NULL,
                data TEXT NOT NULL,
                checkpoint INTEGER NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (task_id, version)
            )";

/// The reference's `usage_events` table.
pub const USAGE_EVENTS_DDL: &str = "CREATE TABLE IF NOT EXISTS usage_events (
                id TEXT PRIMARY KEY,
                task_id TEXT NOT NULL,
                agent_id TEXT NOT NULL,
                consumer_id TEXT NOT NULL,
                metrics TEXT NOT NULL,
                timestamp TEXT NOT NULL
            )";

/// The reference's index serving metering queries by agent and time.
pub const USAGE_EVENTS_INDEX_DDL: &str = "CREATE INDEX IF NOT EXISTS idx_usage_agent_timestamp
            ON usage_events (agent_id, timestamp)
            ";

/// SQLite's `synchronous` setting in WAL mode: what an acknowledged write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Synchronous {
    /// Survives a process crash; the last commits may be lost on a power cut.
    Normal,
    /// Survives a process crash and a power cut (the WAL is synced at every commit).
    #[default]
    Full,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How a SQLite store opens its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long a write waits for another connection's lock before [`StoreError::Busy`].
    pub busy_timeout: Duration,
    /// Durability of acknowledged writes.
    pub synchronous: Synchronous,
    /// Prepared statements kept per connection.
    pub statement_cache_capacity: usize,
    /// Task snapshots and usage events older than this are deleted (by the
    /// checkpoint thread, in small batches). `None`, the default, keeps them
    /// forever, as the reference does.
    pub retention: Option<Duration>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Full,
            statement_cache_capacity: 16,
            retention: None,
        }
    }
}

/// Bytes a WAL file is truncated to when it restarts.
pub const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// One SQLite connection shared by the snapshot and metering stores of a file.
///
/// Sharing matters for speed: in WAL mode every commit through one connection
/// invalidates the page cache of every other connection to the file, so two
/// stores on two connections re-read each other's pages after each write. A
/// shared connection keeps one warm cache and lets [`crate::store::Stores::record_tasks`]
/// commit snapshots and usage events in one transaction.
#[derive(Debug, Clone)]
pub struct SharedConnection(std::sync::Arc<std::sync::Mutex<Connection>>);

impl SharedConnection {
    /// A handle that does not keep the connection open (the checkpointer's).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<std::sync::Mutex<Connection>> {
        std::sync::Arc::downgrade(&self.0)
    }

    /// Wraps an open connection.
    pub(crate) fn new(conn: Connection) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(conn)))
    }

    /// The connection, exclusively for the caller's statement or transaction.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // rusqlite leaves the connection usable after a panic in a caller.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The stores of one file on one [`SharedConnection`].
pub(crate) struct SharedStores {
    pub snapshots: SqliteSnapshotStore,
    pub metering: SqliteMeteringStore,
    pub replay: SqliteReplayStore,
    pub conn: SharedConnection,
}

/// Opens the snapshot, metering and replay stores of `path` on one [`SharedConnection`].
pub(crate) fn open_shared(
    path: &Path,
    options: &SqliteOptions,
) -> Result<SharedStores, StoreError> {
    let mut ddl = vec![SNAPSHOTS_DDL, USAGE_EVENTS_DDL, USAGE_EVENTS_INDEX_DDL];
    ddl.extend(replay::DDL);
    let writer = open_connection(path, options, &ddl)?;
    // Checkpoints move to their own thread (see `checkpoint`): SQLite's
    // automatic one runs inside a commit and that request waits for its fsyncs.
    writer
        .pragma_update(None, "wal_autocheckpoint", 0i64)
        .map_err(sql_err)?;
    let conn = SharedConnection::new(writer);
    checkpoint::spawn(path, options, &conn)?;
    Ok(SharedStores {
        snapshots: SqliteSnapshotStore::with_connection(conn.clone(), Some(path.to_owned())),
        metering: SqliteMeteringStore::with_connection(conn.clone(), Some(path.to_owned())),
        replay: SqliteReplayStore::with_connection(conn.clone(), Some(path.to_owned())),
        conn,
    })
}

/// Writes snapshots, usage events and accepted nonces in one `BEGIN IMMEDIATE`
/// transaction (one commit, one sync): all are stored or none. With nonces,
/// the nonces expired at `now` are purged in the same transaction (an index
/// seek; each row is deleted once), so the table holds about one replay
/// window of traffic.
pub(crate) fn record_tasks(
    conn: &SharedConnection,
    snapshots: &[asap_proto::model::StateSnapshot],
    events: &[asap_proto::store::UsageEvent],
    nonces: &[asap_proto::store::NonceRecord],
    dedup: &[asap_proto::store::DedupRecord],
    now: asap_proto::model::UnixTime,
) -> Result<(), StoreError> {
    snapshots
        .iter()
        .try_for_each(asap_proto::store::check_snapshot)?;
    nonces
        .iter()
        .try_for_each(asap_proto::store::check_nonce_record)?;
    let events = events
        .iter()
        .map(asap_proto::store::UsageEvent::normalized)
        .collect::<Result<Vec<_>, _>>()?;
    let mut conn = conn.lock();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    {
        let mut stmt = tx.prepare_cached(snapshot::INSERT).map_err(sql_err)?;
        for s in snapshots {
            snapshot::insert(&mut stmt, s)?;
        }
        let mut stmt = tx.prepare_cached(metering::INSERT).map_err(sql_err)?;
        for e in &events {
            metering::insert(&mut stmt, e)?;
        }
        if !nonces.is_empty() {
            let mut stmt = tx.prepare_cached(replay::INSERT_NONCE).map_err(sql_err)?;
            for n in nonces {
                replay::insert_nonce(&mut stmt, n)?;
            }
            tx.prepare_cached(replay::PURGE_NONCES)
                .and_then(|mut s| s.execute([now.as_millis()]))
                .map_err(sql_err)?;
        }
        if !dedup.is_empty() {
            let mut stmt = tx.prepare_cached(replay::INSERT_DEDUP).map_err(sql_err)?;
            for d in dedup {
                asap_proto::store::check_dedup_record(d)?;
                replay::insert_dedup(&mut stmt, d)?;
            }
            tx.prepare_cached(replay::PURGE_DEDUP)
                .and_then(|mut s| s.execute([now.as_millis()]))
                .map_err(sql_err)?;
        }
    }
    tx.commit().map_err(sql_err)
}

/// Maps a rusqlite error to the store's error, telling lock contention from failure.
pub(crate) fn sql_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            StoreError::Busy(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Opens `path` (creating it), applies the options, and creates `ddl` if missing.
pub(crate) fn open_connection(
    path: &Path,
    options: &SqliteOptions,
    ddl: &[&str],
) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        StoreError::Backend(format!(
            "cannot open SQLite database {}: {e}",
            path.display()
        ))
    })?;
    configure(conn, options, ddl)
}

/// A private in-memory database (one per connection), for tests.
pub(crate) fn open_memory_connection(
    options: &SqliteOptions,
    ddl: &[&str],
) -> Result<Connection, StoreError> {
    configure(Connection::open_in_memory().map_err(sql_err)?, options, ddl)
}

fn configure(
    mut conn: Connection,
    options: &SqliteOptions,
    ddl: &[&str],
) -> Result<Connection, StoreError> {
    conn.busy_timeout(options.busy_timeout).map_err(sql_err)?;
    // Returns the mode in force: "wal", or "memory" for in-memory databases.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(sql_err)?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(StoreError::Backend(format!(
            "SQLite refused WAL journal mode (got {mode:?}); is the file on a network filesystem?"
        )));
    }
    conn.pragma_update(None, "synchronous", options.synchronous.pragma_value())
        .map_err(sql_err)?;
    conn.set_prepared_statement_cache_capacity(options.statement_cache_capacity);
    // Reads through a memory map instead of a read() per page, and a larger page
    // cache: both cut syscalls on the agent's hot path (inserts touch index pages).
    conn.pragma_update(None, "mmap_size", 256i64 * 1024 * 1024)
        .map_err(sql_err)?;
    conn.pragma_update(None, "cache_size", -16_384i64)
        .map_err(sql_err)?;
    // A WAL file is cut back to this size when it restarts, so a burst does
    // not leave hundreds of megabytes behind.
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(sql_err)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    for stmt in ddl {
        tx.execute_batch(stmt).map_err(sql_err)?;
    }
    tx.commit().map_err(sql_err)?;
    Ok(conn)
}
