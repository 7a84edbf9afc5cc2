//! WAL checkpoints off the commit path. SQLite's automatic checkpoint runs
//! inside the commit that crosses 1000 WAL pages, and that request waits for
//! the checkpoint's fsyncs (milliseconds: the p99 of single-task commits).
//! Here a thread with its own connection copies committed frames into the
//! database while the writer keeps committing; when the WAL has grown, it
//! holds the writer back only for the last few frames, so the next commit
//! restarts the log from its beginning and the file stays small.

use std::path::Path;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use asap_proto::store::StoreError;
use rusqlite::Connection;

use super::{open_connection, SharedConnection, SqliteOptions};

/// How often the checkpointer copies frames.
const INTERVAL: Duration = Duration::from_millis(50);
/// WAL pages past which the log is caught up completely, so it restarts
/// (SQLite's own trigger: 1000 pages, ~4 MiB).
const RESTART_PAGES: i64 = 1_000;

/// How often retention deletes what aged out (when a retention is set).
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Rows deleted per statement, so the writer waits milliseconds at most.
const RETENTION_BATCH: i64 = 2_000;

/// Starts the checkpointer of `path`; it ends when `writer` is dropped.
pub(super) fn spawn(
    path: &Path,
    options: &SqliteOptions,
    writer: &SharedConnection,
) -> Result<(), StoreError> {
    let conn = open_connection(path, options, &[])?;
    let writer = writer.downgrade();
    let retention = options.retention;
    std::thread::Builder::new()
        .name("asap-wal-checkpoint".to_owned())
        .spawn(move || run(&conn, &writer, retention))
        .map_err(|e| StoreError::Backend(format!("cannot start the WAL checkpoint thread: {e}")))?;
    Ok(())
}

fn run(conn: &Connection, writer: &Weak<Mutex<Connection>>, retention: Option<Duration>) {
    let mut next_purge = std::time::Instant::now();
    loop {
        std::thread::sleep(INTERVAL);
        if let Some(keep) = retention {
            if std::time::Instant::now() >= next_purge {
                let cutoff =
                    asap_proto::model::UnixTime::from_system_time(std::time::SystemTime::now())
                        .saturating_sub(keep);
                let _ = purge_older_than(conn, cutoff);
                next_purge = std::time::Instant::now() + RETENTION_EVERY;
            }
        }
        // Copy what is committed, concurrently with the writer (fsyncs here).
        let Some(log_pages) = passive(conn) else {
            continue;
        };
        let Some(writer) = writer.upgrade() else {
            return;
        };
        if log_pages >= RESTART_PAGES {
            // The writer waits for the frames committed since the pass above only.
            let _paused = writer.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = passive(conn);
        }
    }
}

/// One passive checkpoint; the WAL's size in pages (`None` if SQLite refused,
/// e.g. busy: the next round retries).
fn passive(conn: &Connection) -> Option<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
        .ok()
}

/// Deletes task snapshots and usage events recorded before `cutoff`, a batch
/// at a time; returns how many rows went.
pub(crate) fn purge_older_than(
    conn: &Connection,
    cutoff: asap_proto::model::UnixTime,
) -> Result<usize, rusqlite::Error> {
    // Both columns hold ISO 8601 text written by one formatter each, so
    // text order is time order.
    let snapshot_cut = asap_proto::model::Timestamp::from_unix(cutoff).to_python_isoformat();
    let event_cut = super::metering::iso(cutoff);
    let mut total = 0;
    for (sql, cut) in [
        (
            "DELETE FROM snapshots WHERE rowid IN \
             (SELECT rowid FROM snapshots WHERE created_at < ?1 LIMIT ?2)",
            &snapshot_cut,
        ),
        (
            "DELETE FROM usage_events WHERE rowid IN \
             (SELECT rowid FROM usage_events WHERE timestamp < ?1 LIMIT ?2)",
            &event_cut,
        ),
    ] {
        loop {
            let n = conn.execute(sql, rusqlite::params![cut, RETENTION_BATCH])?;
            total += n;
            if (n as i64) < RETENTION_BATCH {
                break;
            }
        }
    }
    Ok(total)
}
