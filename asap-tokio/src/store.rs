//! Async access to the blocking stores without blocking the runtime.
//!
//! A [`StoreWorker`] owns one store (any [`SnapshotStore`] or [`MeteringStore`]:
//! the SQLite stores of `asap-blocking`, the in-memory ones, your own) on a
//! dedicated OS thread. Async callers send it closures over a bounded channel
//! and await the reply; the runtime's worker threads never touch SQLite.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use asap_tokio::store::open_stores;
//! use asap_proto::store::{StorageBackend, StorageConfig};
//! use asap_tokio::store::AsyncStores;
//!
//! let config = StorageConfig::from_values_or(StorageBackend::Sqlite, None, None)?;
//! let stores = AsyncStores::spawn(open_stores(&config)?)?;
//! let latest = stores.snapshots.get_latest("task_1").await?;
//! # let _ = latest; Ok(()) }
//! ```
//!
//! # Why a dedicated thread rather than `spawn_blocking`
//!
//! Both keep blocking work off the runtime. `benches/async_store.rs` in
//! `asap-blocking` measures them on the real SQLite store (`synchronous=NORMAL`,
//! 1 KiB snapshots; ranges over four runs on a shared 2-core machine, load
//! average 2 to 6, so read them as ratios):
//!
//! | | `spawn_blocking` + `Mutex` | dedicated thread |
//! |---|---|---|
//! | `get_latest`, 1 caller | 15–34 µs | 9–24 µs |
//! | `save`, 1 caller | 42–68 µs | 62–83 µs |
//! | `get_latest`, 64 concurrent callers | 34–65 k/s | 112–134 k/s |
//!
//! Under concurrency the thread wins by 2 to 4×: `spawn_blocking` wakes many
//! pool threads that then queue on the one connection's mutex, while the
//! worker thread serves its queue back to back. A lone cheap
//! read is also faster (one hop to a thread that is already running). A lone
//! `save` is a draw: its cost is SQLite's, and the difference flips with the
//! order the bench runs the strategies in (disk state), so it is noise. The
//! thread also keeps one connection with a warm prepared-statement cache,
//! serialises writes as SQLite does anyway (one writer at a time), gives
//! callers async backpressure through its bounded queue, and leaves tokio's
//! blocking pool to other work.
//!
//! # Call protocol
//!
//! * Operations run in the order they were sent, one at a time.
//! * A call returns once the store has finished it: a `save` that returned
//!   `Ok` is committed (and, with the SQLite defaults, durable).
//! * A caller dropped while waiting does not cancel its operation: a
//!   cancelled `save` may still be applied.
//! * The thread exits when the last handle is dropped, after finishing the
//!   operations already queued. [`StoreWorker::flush`] waits for them.
//! * A panic inside an operation fails that call with [`StoreError::Closed`];
//!   the worker keeps serving the next ones.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use asap_proto::model::{StateSnapshot, UnixTime};
use asap_proto::server::Records;
use asap_proto::store::Stores;
use asap_proto::store::{
    AggregatePeriod, MeteringStore, SnapshotStore, StoreError, UsageAggregate, UsageEvent,
};
use asap_proto::store::{ClaimOutcome, NonceRecord, ReplayClaim};
use tokio::sync::{mpsc, oneshot};

/// Operations queued per worker before senders wait (async backpressure).
pub const DEFAULT_QUEUE: usize = 256;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A store running on its own thread, driven from async code. Cheap to clone;
/// all clones share the one thread and store.
pub struct StoreWorker<S> {
    tx: mpsc::Sender<Job<S>>,
}

impl<S> Clone for StoreWorker<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<S> std::fmt::Debug for StoreWorker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWorker")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

/// An async [`SnapshotStore`] over any boxed snapshot store.
pub type AsyncSnapshotStore = StoreWorker<Box<dyn SnapshotStore + Send>>;
/// An async [`MeteringStore`] over any boxed metering store.
pub type AsyncMeteringStore = StoreWorker<Box<dyn MeteringStore + Send>>;

fn closed() -> StoreError {
    StoreError::Closed("the store worker thread stopped or the operation panicked".into())
}

impl<S: Send + 'static> StoreWorker<S> {
    /// Moves `store` to a new thread named `name` with a [`DEFAULT_QUEUE`]-deep queue.
    pub fn spawn(name: &str, store: S) -> io::Result<Self> {
        Self::spawn_with_queue(name, store, DEFAULT_QUEUE)
    }

    /// As [`spawn`](Self::spawn) with a queue of `queue` operations (at least 1).
    pub fn spawn_with_queue(name: &str, mut store: S, queue: usize) -> io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job<S>>(queue.max(1));
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    // A panicking operation drops its reply (the caller gets
                    // `Closed`); the store stays in service.
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&mut store)));
                }
            })?;
        Ok(Self { tx })
    }

    /// Runs `f` on the store's thread and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: Job<S> = Box::new(move |store| {
            let _ = reply.send(f(store));
        });
        self.tx.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())
    }

    /// Waits until every operation sent before this call has finished.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(|_| ()).await
    }
}

impl<S: SnapshotStore + Send + 'static> StoreWorker<S> {
    /// [`SnapshotStore::save`].
    pub async fn save(&self, snapshot: StateSnapshot) -> Result<(), StoreError> {
        self.call(move |s| s.save(&snapshot)).await?
    }

    /// [`SnapshotStore::get`].
    pub async fn get(
        &self,
        task_id: impl Into<String>,
        version: i64,
    ) -> Result<Option<StateSnapshot>, StoreError> {
        let task_id = task_id.into();
        self.call(move |s| s.get(&task_id, version)).await?
    }

    /// [`SnapshotStore::get_latest`].
    pub async fn get_latest(
        &self,
        task_id: impl Into<String>,
    ) -> Result<Option<StateSnapshot>, StoreError> {
        let task_id = task_id.into();
        self.call(move |s| s.get_latest(&task_id)).await?
    }

    /// [`SnapshotStore::list_versions`].
    pub async fn list_versions(&self, task_id: impl Into<String>) -> Result<Vec<i64>, StoreError> {
        let task_id = task_id.into();
        self.call(move |s| s.list_versions(&task_id)).await?
    }

    /// [`SnapshotStore::delete`].
    pub async fn delete(
        &self,
        task_id: impl Into<String>,
        version: i64,
    ) -> Result<bool, StoreError> {
        let task_id = task_id.into();
        self.call(move |s| s.delete(&task_id, version)).await?
    }

    /// [`SnapshotStore::delete_all`].
    pub async fn delete_all(&self, task_id: impl Into<String>) -> Result<bool, StoreError> {
        let task_id = task_id.into();
        self.call(move |s| s.delete_all(&task_id)).await?
    }
}

impl<S: MeteringStore + Send + 'static> StoreWorker<S> {
    /// [`MeteringStore::record`].
    pub async fn record(&self, event: UsageEvent) -> Result<(), StoreError> {
        self.call(move |s| s.record(&event)).await?
    }

    /// [`MeteringStore::query`].
    pub async fn query(
        &self,
        agent_id: impl Into<String>,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let agent_id = agent_id.into();
        self.call(move |s| s.query(&agent_id, start, end)).await?
    }

    /// [`MeteringStore::aggregate`].
    pub async fn aggregate(
        &self,
        agent_id: impl Into<String>,
        period: AggregatePeriod,
        at: UnixTime,
    ) -> Result<UsageAggregate, StoreError> {
        let agent_id = agent_id.into();
        self.call(move |s| s.aggregate(&agent_id, period, at))
            .await?
    }
}

/// The configured stores, each on its own worker thread.
#[derive(Debug, Clone)]
pub struct AsyncStores {
    /// Versioned task state.
    pub snapshots: AsyncSnapshotStore,
    /// Usage events.
    pub metering: AsyncMeteringStore,
}

impl AsyncStores {
    /// Moves stores opened by `asap_blocking::store::open_stores` onto worker
    /// threads (`asap-snapshots`, `asap-metering`).
    pub fn spawn(stores: Stores) -> io::Result<Self> {
        Ok(Self {
            snapshots: StoreWorker::spawn("asap-snapshots", stores.snapshots)?,
            metering: StoreWorker::spawn("asap-metering", stores.metering)?,
        })
    }
}

/// Decides replay claims for a [`TaskRecorder`] from async code.
pub trait ClaimStore: Send + Sync + 'static {
    /// [`ReplayStore::claim`](asap_proto::store::ReplayStore::claim), awaited.
    fn claim(
        &self,
        claim: ReplayClaim,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ClaimOutcome, StoreError>> + Send + 'static>,
    >;
}

/// Most task records committed together by a [`TaskRecorder`].
pub const MAX_GROUP_COMMIT: usize = 256;

enum RecorderJob {
    Record(Box<Records>, oneshot::Sender<Result<(), StoreError>>),
    Run(Box<dyn FnOnce(&mut Stores) + Send>),
}

/// The agent's task-state writer: one thread owning both stores that
/// **group-commits** the records of concurrent skill runs.
///
/// Each finished run must be durable before it is answered; with
/// `synchronous=FULL` every SQLite commit is an fsync, so one commit per task
/// caps an agent at the disk's sync rate (hundreds per second here). The
/// recorder takes every record waiting in its queue (up to
/// [`MAX_GROUP_COMMIT`]), writes them with one `save_batch` and one
/// `record_batch` ([`Stores::record_tasks`]: one transaction on SQLite), and only then answers each
/// caller: the same durability, at a cost shared by everyone who waited.
/// Other operations ([`call`](Self::call)) run between groups, in order.
#[derive(Clone)]
pub struct TaskRecorder {
    inner: Recorder,
    /// Decides [`Step::Claim`](asap_proto::server::Step::Claim)s off the
    /// writer thread (a PostgreSQL pool answers many at once); `None`: the
    /// stores' own [`Stores::claim`], in order with the commits.
    claims: Option<std::sync::Arc<dyn ClaimStore>>,
    /// Nonces live when the stores were opened, for the agent's core.
    restored_nonces: Vec<NonceRecord>,
    /// Dedup answers live when the stores were opened, and when that was.
    restored_dedup: (Vec<asap_proto::store::DedupRecord>, UnixTime),
}

#[derive(Clone)]
enum Recorder {
    /// SQLite: a writer thread with group commit.
    Thread(mpsc::Sender<RecorderJob>),
    /// In-memory stores: microsecond operations, done in place under a lock
    /// (a thread hop would double an echo request's latency for nothing).
    Inline(std::sync::Arc<std::sync::Mutex<Stores>>),
}

impl std::fmt::Debug for TaskRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRecorder").finish_non_exhaustive()
    }
}

impl TaskRecorder {
    /// Moves `stores` to a new thread `asap-task-state` (in-memory stores are
    /// used in place instead: they never block).
    pub fn spawn(mut stores: Stores) -> io::Result<Self> {
        let restored_nonces = stores.take_restored_nonces();
        let restored_dedup = stores.take_restored_dedup();
        if stores.config.backend == asap_proto::store::StorageBackend::Memory {
            return Ok(Self {
                inner: Recorder::Inline(std::sync::Arc::new(std::sync::Mutex::new(stores))),
                claims: None,
                restored_nonces,
                restored_dedup,
            });
        }
        let (tx, mut rx) = mpsc::channel::<RecorderJob>(DEFAULT_QUEUE);
        std::thread::Builder::new()
            .name("asap-task-state".to_owned())
            .spawn(move || {
                let mut pending: Option<RecorderJob> = None;
                loop {
                    let Some(job) = pending.take().or_else(|| rx.blocking_recv()) else {
                        break;
                    };
                    match job {
                        RecorderJob::Run(f) => {
                            let _ = catch_unwind(AssertUnwindSafe(|| f(&mut stores)));
                        }
                        RecorderJob::Record(first, reply) => {
                            let mut group = vec![(first, reply)];
                            while group.len() < MAX_GROUP_COMMIT {
                                match rx.try_recv() {
                                    Ok(RecorderJob::Record(r, reply)) => group.push((r, reply)),
                                    Ok(other) => {
                                        pending = Some(other);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            let mut snapshots: Vec<StateSnapshot> = Vec::with_capacity(group.len());
                            let mut events: Vec<UsageEvent> = Vec::with_capacity(group.len());
                            let mut nonces: Vec<NonceRecord> = Vec::new();
                            let mut dedup = Vec::new();
                            let mut now = UnixTime::EPOCH;
                            let mut replies = Vec::with_capacity(group.len());
                            for (r, reply) in group {
                                let Records {
                                    task,
                                    nonce,
                                    dedup: kept,
                                    now: at,
                                } = *r;
                                dedup.extend(kept);
                                if let Some(task) = task {
                                    snapshots.push(task.snapshot);
                                    events.push(task.usage);
                                }
                                nonces.extend(nonce);
                                now = now.max(at);
                                replies.push(reply);
                            }
                            let result = catch_unwind(AssertUnwindSafe(|| {
                                stores.record_group(&snapshots, &events, &nonces, &dedup, now)
                            }))
                            .unwrap_or_else(|_| Err(closed()));
                            for reply in replies {
                                let _ = reply.send(result.clone());
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            inner: Recorder::Thread(tx),
            claims: None,
            restored_nonces,
            restored_dedup,
        })
    }

    /// Decides claims through `claims` instead of the writer thread.
    #[must_use]
    pub fn with_claims(mut self, claims: std::sync::Arc<dyn ClaimStore>) -> Self {
        self.claims = Some(claims);
        self
    }

    /// Performs one [`Step::Claim`](asap_proto::server::Step::Claim).
    pub async fn claim(&self, claim: ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        match &self.claims {
            Some(c) => c.claim(claim).await,
            None => self.call(move |s| s.claim(&claim)).await?,
        }
    }

    /// The nonces that were live when the stores were opened (once; then empty).
    pub fn take_restored_nonces(&mut self) -> Vec<NonceRecord> {
        std::mem::take(&mut self.restored_nonces)
    }

    /// The receiver-dedup answers that were live when the stores were opened,
    /// and when (once; then empty).
    pub fn take_restored_dedup(&mut self) -> (Vec<asap_proto::store::DedupRecord>, UnixTime) {
        std::mem::replace(&mut self.restored_dedup, (Vec::new(), UnixTime::EPOCH))
    }

    /// Persists one [`Step::Persist`](asap_proto::server::Step::Persist) (a
    /// run's snapshot and usage event, an accepted nonce); returns once committed.
    pub async fn record(&self, records: Records) -> Result<(), StoreError> {
        let tx = match &self.inner {
            Recorder::Thread(tx) => tx,
            Recorder::Inline(stores) => {
                let mut s = stores
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                return s.record(records);
            }
        };
        let (reply, answer) = oneshot::channel();
        tx.send(RecorderJob::Record(Box::new(records), reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs `f` on the stores' thread (queries, restores) and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Stores) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let tx = match &self.inner {
            Recorder::Thread(tx) => tx,
            Recorder::Inline(stores) => {
                let mut s = stores
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                return Ok(f(&mut s));
            }
        };
        let (reply, answer) = oneshot::channel();
        let job = RecorderJob::Run(Box::new(move |s| {
            let _ = reply.send(f(s));
        }));
        tx.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())
    }
}

/// How often a replica renews its webhook leases on a shared store (a third
/// of the default 30 s lease).
pub const WEBHOOK_LEASE_RENEWAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How each backend is opened by [`open_task_state`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TaskStateOptions {
    /// SQLite durability and retention (the `sqlite` feature).
    #[cfg(feature = "sqlite")]
    pub sqlite: SqliteOptions,
    /// PostgreSQL pool and leases (the `postgres` feature).
    #[cfg(feature = "postgres")]
    pub postgres: crate::postgres::PgOptions,
}

/// Opens the task state `storage` names and its writer: memory, SQLite (the
/// `sqlite` feature, on by default), or PostgreSQL (the `postgres` feature;
/// claims decided on its pool, off the writer thread). A backend this build
/// lacks is an error naming the feature. The flag says whether replay state
/// is shared with other replicas: then set
/// [`ServerConfig::shared_replay`](asap_proto::server::ServerConfig::shared_replay).
pub fn open_task_state(
    storage: &asap_proto::store::StorageConfig,
    options: &TaskStateOptions,
) -> Result<(TaskRecorder, bool), String> {
    use asap_proto::store::StorageBackend;
    let _ = options;
    let spawn = |stores| {
        TaskRecorder::spawn(stores).map_err(|e| format!("cannot start the task-state thread: {e}"))
    };
    match storage.backend {
        StorageBackend::Memory => Ok((spawn(Stores::memory(storage.clone()))?, false)),
        #[cfg(feature = "sqlite")]
        StorageBackend::Sqlite => {
            let stores = open_stores_with(storage, &options.sqlite).map_err(|e| e.to_string())?;
            Ok((spawn(stores)?, false))
        }
        #[cfg(not(feature = "sqlite"))]
        StorageBackend::Sqlite => Err(NO_SQLITE.to_owned()),
        #[cfg(feature = "postgres")]
        StorageBackend::Postgres => {
            let (stores, backend) = crate::postgres::open_stores(storage, &options.postgres)
                .map_err(|e| e.to_string())?;
            Ok((
                spawn(stores)?.with_claims(std::sync::Arc::new(backend)),
                true,
            ))
        }
        #[cfg(not(feature = "postgres"))]
        StorageBackend::Postgres => Err(NO_POSTGRES.to_owned()),
    }
}

/// Why a build without the `sqlite` feature refuses a SQLite file.
#[cfg(not(feature = "sqlite"))]
pub const NO_SQLITE: &str =
    "this build has no SQLite support: enable asap-tokio's `sqlite` feature (on by default)";

/// The SQLite stores (the `sqlite` feature), so a tokio app persists without importing `asap-blocking`.
#[cfg(feature = "sqlite")]
pub use asap_blocking::store::{
    open_stores, open_stores_with, storage_config_from_env, storage_config_with_db,
    OpenStoresError, SqliteMeteringStore, SqliteOptions, SqliteReplayStore, SqliteSnapshotStore,
    SqliteWebhookStore, Synchronous,
};

#[cfg(feature = "postgres")]
impl ClaimStore for crate::postgres::PgBackend {
    fn claim(
        &self,
        claim: ReplayClaim,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ClaimOutcome, StoreError>> + Send + 'static>,
    > {
        let backend = self.clone();
        Box::pin(async move { backend.claim_async(claim).await })
    }
}

/// The webhook outbox on the PostgreSQL database `storage` names (the
/// `postgres` feature); without the feature, an error that says how to get it.
pub fn postgres_webhook_store(
    storage: &asap_proto::store::StorageConfig,
) -> Result<Box<dyn asap_proto::store::WebhookStore + Send>, String> {
    #[cfg(feature = "postgres")]
    {
        crate::postgres::open_webhook_store(storage).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = storage;
        Err(NO_POSTGRES.to_owned())
    }
}

/// Why a build without the `postgres` feature refuses a PostgreSQL URL.
#[cfg(not(feature = "postgres"))]
pub const NO_POSTGRES: &str = "this build has no PostgreSQL support: rebuild with `--features postgres` (cargo install --path asap-tokio --features postgres)";

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use asap_blocking::store::{open_stores, SqliteSnapshotStore};
    use asap_proto::model::{JsonObject, Timestamp};
    use asap_proto::store::{
        MemoryMeteringStore, MemorySnapshotStore, StorageConfig, UsageMetrics,
    };

    fn snap(task: &str, version: i64) -> StateSnapshot {
        StateSnapshot {
            id: format!("snap_{version}"),
            task_id: task.into(),
            version,
            data: JsonObject::new(),
            checkpoint: false,
            created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    async fn exercise_snapshots(store: AsyncSnapshotStore) {
        assert_eq!(store.get_latest("t").await.unwrap(), None);
        for v in [3, 1, 2] {
            store.save(snap("t", v)).await.unwrap();
        }
        store.save(snap("t", 2)).await.unwrap();
        assert_eq!(store.list_versions("t").await.unwrap(), vec![1, 2, 3]);
        assert_eq!(store.get_latest("t").await.unwrap(), Some(snap("t", 3)));
        assert_eq!(store.get("t", 2).await.unwrap(), Some(snap("t", 2)));
        assert!(store.delete("t", 3).await.unwrap());
        assert!(!store.delete("t", 3).await.unwrap());
        assert_eq!(
            store.get_latest("t").await.unwrap().map(|s| s.version),
            Some(2)
        );
        assert!(matches!(
            store.save(snap("t", 0)).await,
            Err(StoreError::InvalidInput { .. })
        ));
        assert!(store.delete_all("t").await.unwrap());
        assert_eq!(store.list_versions("t").await.unwrap(), Vec::<i64>::new());
    }

    #[tokio::test]
    async fn memory_snapshots_through_the_worker() {
        let store = StoreWorker::spawn("test", Box::new(MemorySnapshotStore::new()) as _).unwrap();
        exercise_snapshots(store).await;
    }

    #[tokio::test]
    async fn sqlite_stores_from_config_through_workers() {
        let dir = std::env::temp_dir().join(format!(
            "asap-tokio-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        let config =
            StorageConfig::from_values(Some("sqlite"), Some(path.to_str().unwrap())).unwrap();
        let stores = AsyncStores::spawn(open_stores(&config).unwrap()).unwrap();
        exercise_snapshots(stores.snapshots.clone()).await;
        let t: Timestamp = "2026-01-01T00:30:00Z".parse().unwrap();
        let event = UsageEvent {
            task_id: "t".into(),
            agent_id: "a".into(),
            consumer_id: "c".into(),
            metrics: UsageMetrics {
                tokens_in: 3,
                ..UsageMetrics::default()
            },
            timestamp: t,
        };
        stores.metering.record(event.clone()).await.unwrap();
        assert_eq!(
            stores
                .metering
                .query("a", t.unix(), t.unix())
                .await
                .unwrap(),
            vec![event]
        );
        let agg = stores
            .metering
            .aggregate("a", AggregatePeriod::Hour, t.unix())
            .await
            .unwrap();
        assert_eq!(agg.total_tokens, 3);
        drop(stores);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn concurrent_callers_are_all_served_in_order() {
        let store = StoreWorker::spawn_with_queue("test", MemorySnapshotStore::new(), 2).unwrap();
        let mut handles = Vec::new();
        for v in 1..=200 {
            let store = store.clone();
            handles.push(tokio::spawn(async move { store.save(snap("t", v)).await }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        store.flush().await.unwrap();
        let versions = store.list_versions("t").await.unwrap();
        assert_eq!(versions, (1..=200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panicking_operation_fails_alone() {
        let store = StoreWorker::spawn("test", MemoryMeteringStore::new()).unwrap();
        let err = store.call(|_| -> () { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, StoreError::Closed(_)), "{err}");
        // Still serving.
        let agg = store
            .aggregate("a", AggregatePeriod::Total, UnixTime::EPOCH)
            .await
            .unwrap();
        assert_eq!(agg.total_tasks, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn works_on_a_current_thread_runtime() {
        let store =
            StoreWorker::spawn("test", SqliteSnapshotStore::open_in_memory().unwrap()).unwrap();
        for v in 1..=50 {
            store.save(snap("t", v)).await.unwrap();
        }
        assert_eq!(store.list_versions("t").await.unwrap().len(), 50);
    }

    /// The whole `asap_proto::store::contract` suite through the workers: a
    /// synchronous facade drives each async call on a multi-thread runtime.
    mod contract_suite {
        use std::sync::Arc;

        use asap_blocking::store::{SqliteMeteringStore, SqliteSnapshotStore};
        use asap_proto::model::{StateSnapshot, UnixTime};
        use asap_proto::store::{
            contract, AggregatePeriod, MemoryMeteringStore, MemorySnapshotStore, MeteringStore,
            SnapshotStore, StoreError, UsageAggregate, UsageEvent,
        };
        use tokio::runtime::Runtime;

        use super::super::StoreWorker;

        struct Facade<S> {
            rt: Arc<Runtime>,
            worker: StoreWorker<S>,
        }

        impl<S: SnapshotStore + Send + 'static> SnapshotStore for Facade<S> {
            fn save(&mut self, s: &StateSnapshot) -> Result<(), StoreError> {
                self.rt.block_on(self.worker.save(s.clone()))
            }
            fn get(
                &self,
                task_id: &str,
                version: i64,
            ) -> Result<Option<StateSnapshot>, StoreError> {
                self.rt.block_on(self.worker.get(task_id, version))
            }
            fn get_latest(&self, task_id: &str) -> Result<Option<StateSnapshot>, StoreError> {
                self.rt.block_on(self.worker.get_latest(task_id))
            }
            fn list_versions(&self, task_id: &str) -> Result<Vec<i64>, StoreError> {
                self.rt.block_on(self.worker.list_versions(task_id))
            }
            fn delete(&mut self, task_id: &str, version: i64) -> Result<bool, StoreError> {
                self.rt.block_on(self.worker.delete(task_id, version))
            }
            fn delete_all(&mut self, task_id: &str) -> Result<bool, StoreError> {
                self.rt.block_on(self.worker.delete_all(task_id))
            }
        }

        impl<S: MeteringStore + Send + 'static> MeteringStore for Facade<S> {
            fn record(&mut self, e: &UsageEvent) -> Result<(), StoreError> {
                self.rt.block_on(self.worker.record(e.clone()))
            }
            fn query(
                &self,
                agent: &str,
                start: UnixTime,
                end: UnixTime,
            ) -> Result<Vec<UsageEvent>, StoreError> {
                self.rt.block_on(self.worker.query(agent, start, end))
            }
            fn aggregate(
                &self,
                agent: &str,
                period: AggregatePeriod,
                at: UnixTime,
            ) -> Result<UsageAggregate, StoreError> {
                self.rt.block_on(self.worker.aggregate(agent, period, at))
            }
        }

        fn runtime() -> Arc<Runtime> {
            Arc::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .build()
                    .unwrap(),
            )
        }

        fn facade<S: Send + 'static>(rt: &Arc<Runtime>, store: S) -> Facade<S> {
            Facade {
                rt: Arc::clone(rt),
                worker: StoreWorker::spawn("contract", store).unwrap(),
            }
        }

        #[test]
        fn async_memory_stores_pass_the_contract() {
            let rt = runtime();
            contract::snapshot_store(|| facade(&rt, MemorySnapshotStore::new()));
            contract::metering_store(|| facade(&rt, MemoryMeteringStore::new()));
        }

        #[test]
        fn async_sqlite_stores_pass_the_contract() {
            let rt = runtime();
            let dir =
                std::env::temp_dir().join(format!("asap-tokio-contract-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut n = 0;
            contract::snapshot_store(|| {
                n += 1;
                facade(
                    &rt,
                    SqliteSnapshotStore::open(dir.join(format!("s{n}.db"))).unwrap(),
                )
            });
            contract::metering_store(|| {
                n += 1;
                facade(
                    &rt,
                    SqliteMeteringStore::open(dir.join(format!("m{n}.db"))).unwrap(),
                )
            });
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}
