//! How should asap-tokio run the blocking SQLite stores? Compares the two
//! ways that never block the runtime, on the real store:
//!
//! * `spawn_blocking`: each call moves `Arc<Mutex<store>>` to tokio's blocking pool;
//! * `worker`: one dedicated thread owns the store and serves calls sent over a
//!   bounded tokio channel, replying on a oneshot.
//!
//! `cargo bench -p asap-blocking --bench async_store -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use asap_blocking::store::{SqliteOptions, SqliteSnapshotStore, Synchronous};
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::SnapshotStore;
use criterion::{Criterion, Throughput};
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(&mut SqliteSnapshotStore) + Send>;

/// The dedicated-thread strategy, reduced to its core.
#[derive(Clone)]
struct Worker(mpsc::Sender<Job>);

impl Worker {
    fn spawn(mut store: SqliteSnapshotStore) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(256);
        std::thread::spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                job(&mut store);
            }
        });
        Self(tx)
    }
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SqliteSnapshotStore) -> R + Send + 'static,
    ) -> R {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = reply.send(f(s));
        });
        assert!(self.0.send(job).await.is_ok(), "worker stopped");
        rx.await.expect("worker replied")
    }
}

/// The spawn_blocking strategy.
#[derive(Clone)]
struct Pool(Arc<Mutex<SqliteSnapshotStore>>);

impl Pool {
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SqliteSnapshotStore) -> R + Send + 'static,
    ) -> R {
        let store = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || f(&mut store.lock().expect("not poisoned")))
            .await
            .expect("no panic")
    }
}

fn snapshot(task: &str, version: i64) -> StateSnapshot {
    let mut data = JsonObject::new();
    data.insert("notes".into(), "n".repeat(900).into());
    StateSnapshot {
        id: format!("snap_{version}"),
        task_id: task.to_owned(),
        version,
        data,
        checkpoint: false,
        created_at: Timestamp::from_unix(UnixTime::from_secs(1_767_225_600 + version)),
    }
}

fn open(path: &std::path::Path) -> SqliteSnapshotStore {
    let opts = SqliteOptions {
        synchronous: Synchronous::Normal,
        ..SqliteOptions::default()
    };
    SqliteSnapshotStore::open_with(path, &opts).unwrap()
}

const CONCURRENT: u64 = 64;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("async_store");
    for strategy in ["spawn_blocking", "worker"] {
        let path = dir.path().join(format!("{strategy}.db"));
        let mut store = open(&path);
        for t in 0..100 {
            store.save(&snapshot(&format!("task_{t}"), 1)).unwrap();
        }
        let (pool, worker) = if strategy == "worker" {
            (None, Some(Worker::spawn(store)))
        } else {
            (Some(Pool(Arc::new(Mutex::new(store)))), None)
        };
        // One caller: the latency a request handler sees.
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{strategy}/get_latest_1_caller"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let f = |s: &mut SqliteSnapshotStore| s.get_latest("task_7").unwrap();
                    let r = match (&pool, &worker) {
                        (Some(p), _) => p.call(f).await,
                        (_, Some(w)) => w.call(f).await,
                        _ => unreachable!(),
                    };
                    black_box(r)
                })
            });
        });
        let mut v = 1;
        g.bench_function(format!("{strategy}/save_sync_normal_1_caller"), |b| {
            b.iter(|| {
                v += 1;
                let s = snapshot("task_save", v);
                rt.block_on(async {
                    let f = move |st: &mut SqliteSnapshotStore| st.save(&s).unwrap();
                    match (&pool, &worker) {
                        (Some(p), _) => p.call(f).await,
                        (_, Some(w)) => w.call(f).await,
                        _ => unreachable!(),
                    }
                })
            });
        });
        // Many concurrent callers: throughput of a busy server.
        g.throughput(Throughput::Elements(CONCURRENT));
        g.bench_function(format!("{strategy}/get_latest_{CONCURRENT}_callers"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut handles = Vec::new();
                    for i in 0..CONCURRENT {
                        let (pool, worker) = (pool.clone(), worker.clone());
                        handles.push(tokio::spawn(async move {
                            let task = format!("task_{}", i % 100);
                            let f = move |s: &mut SqliteSnapshotStore| s.get_latest(&task).unwrap();
                            match (pool, worker) {
                                (Some(p), _) => p.call(f).await,
                                (_, Some(w)) => w.call(f).await,
                                _ => unreachable!(),
                            }
                        }));
                    }
                    for h in handles {
                        black_box(h.await.unwrap());
                    }
                })
            });
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
