//! Crash safety: a child process saves snapshots and prints each acknowledged
//! save; the test SIGKILLs it mid-stream (20 times, on one database file),
//! reopens the file, and finds every acknowledged snapshot intact, every batch
//! all-or-nothing, and no torn or half-written row.
//!
//! The child is this test binary re-executed with `ASAP_CRASH_CHILD_DB` set
//! (see [`crash_child`]); without that variable the child test does nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use asap_blocking::store::{SqliteOptions, SqliteSnapshotStore, Synchronous};
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::SnapshotStore;
use serde_json::json;

const CHILD_DB: &str = "ASAP_CRASH_CHILD_DB";
const CHILD_TASK: &str = "ASAP_CRASH_CHILD_TASK";
const CHILD_SYNC: &str = "ASAP_CRASH_CHILD_SYNC";
/// Every fifth write is a batch of this many versions.
const BATCH: i64 = 3;
const ROUNDS: usize = 20;
/// How long the parent waits for the next line before declaring the child stuck.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// The snapshot the child writes for `(task, version)`; the parent rebuilds it to compare.
/// Sizes vary from a few bytes to ~48 KiB so rows span several pages.
fn expected(task: &str, version: i64) -> StateSnapshot {
    let len = usize::try_from((version * 7919) % 48_000).unwrap_or(0);
    let fill = char::from(b'a' + u8::try_from(version % 26).unwrap_or(0));
    let mut data = JsonObject::new();
    data.insert("task".into(), json!(task));
    data.insert("version".into(), json!(version));
    data.insert("payload".into(), json!(fill.to_string().repeat(len)));
    data.insert("tail".into(), json!(format!("end-{version}-ü")));
    StateSnapshot {
        id: format!("snap_{version}"),
        task_id: task.to_owned(),
        version,
        data,
        checkpoint: version % 2 == 0,
        created_at: Timestamp::from_unix(UnixTime::from_secs(1_767_225_600 + version)),
    }
}

/// Child entry point: saves versions 1, 2, ... of one task until killed,
/// printing `ACK v...` after each save returned `Ok`.
#[test]
fn crash_child() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let task = std::env::var(CHILD_TASK).expect("task id");
    let synchronous = match std::env::var(CHILD_SYNC).as_deref() {
        Ok("normal") => Synchronous::Normal,
        _ => Synchronous::Full,
    };
    let options = SqliteOptions {
        synchronous,
        ..SqliteOptions::default()
    };
    let mut store = SqliteSnapshotStore::open_with(db, &options).expect("open");
    let mut out = std::io::stdout().lock();
    let mut version = 1;
    for step in 0..1_000_000u64 {
        let line = if step % 5 == 4 {
            let batch: Vec<_> = (version..version + BATCH)
                .map(|v| expected(&task, v))
                .collect();
            store.save_batch(&batch).expect("save batch");
            let vs: Vec<String> = (version..version + BATCH).map(|v| v.to_string()).collect();
            version += BATCH;
            format!("ACK {}", vs.join(" "))
        } else {
            store.save(&expected(&task, version)).expect("save");
            version += 1;
            format!("ACK {}", version - 1)
        };
        // The parent closed the pipe: stop.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

/// Runs the child for one round; returns the versions it acknowledged.
fn crash_round(db: &std::path::Path, task: &str, kill_after: usize, normal: bool) -> Vec<i64> {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "crash_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DB, db)
        .env(CHILD_TASK, task)
        .env(CHILD_SYNC, if normal { "normal" } else { "full" })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let parse = |line: &str| -> Vec<i64> {
        line.strip_prefix("ACK ")
            .map(|rest| {
                rest.split(' ')
                    .map(|v| v.parse().expect("version"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut acked = Vec::new();
    let mut ack_lines = 0;
    while ack_lines < kill_after {
        match rx.recv_timeout(STALL_LIMIT) {
            Ok(line) => {
                let vs = parse(&line);
                if !vs.is_empty() {
                    ack_lines += 1;
                    acked.extend(vs);
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("child stalled or died before {kill_after} acks ({e}); got {ack_lines}");
            }
        }
    }
    // SIGKILL mid-stream: the child is busy writing the next snapshot.
    child.kill().expect("kill child");
    let status = child.wait().expect("reap child");
    assert!(!status.success(), "child was killed, not finished");
    // Lines already in the pipe were acknowledged before the kill: count them too.
    reader.join().expect("reader thread");
    for line in rx.try_iter() {
        acked.extend(parse(&line));
    }
    acked
}

fn verify(store: &SqliteSnapshotStore, task: &str, acked: &[i64]) {
    let versions = store.list_versions(task).expect("list versions");
    let max_acked = acked.iter().copied().max().unwrap_or(0);
    let max_stored = versions.last().copied().unwrap_or(0);
    // Saves are sequential: what is stored is exactly 1..=n, n ≥ every ack
    // (a save may have committed after its ack was lost to the kill).
    assert_eq!(
        versions,
        (1..=max_stored).collect::<Vec<_>>(),
        "task {task}: holes in the stored versions"
    );
    assert!(
        max_stored >= max_acked,
        "task {task}: acknowledged v{max_acked} lost; stored up to v{max_stored}"
    );
    // Batches are all or nothing: n ends on a write boundary. Steps are
    // single, single, single, single, batch(3), repeating: 7 versions per cycle.
    let in_cycle = max_stored % 7;
    assert!(
        matches!(in_cycle, 0..=4),
        "task {task}: stored up to v{max_stored}, which splits a batch"
    );
    for v in versions {
        let got = store.get(task, v).expect("get").expect("listed version");
        assert!(
            got == expected(task, v),
            "task {task}: v{v} damaged after crash"
        );
    }
}

#[test]
fn acknowledged_snapshots_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let task = format!("crash-{round}");
        // Kill points vary from the first ack to a few dozen in.
        let kill_after = 1 + (round * 7) % 37;
        let acked = crash_round(&db, &task, kill_after, round % 2 == 1);
        assert!(acked.len() >= kill_after, "round {round}");
        // Reopening runs WAL recovery; everything acknowledged must be there.
        let store = SqliteSnapshotStore::open(&db).expect("reopen after crash");
        verify(&store, &task, &acked);
        rounds.push((task, acked));
    }
    // Later crashes did not damage earlier rounds.
    let store = SqliteSnapshotStore::open(&db).expect("reopen");
    for (task, acked) in &rounds {
        verify(&store, task, acked);
    }
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
