//! PostgreSQL backends of every store contract, for several replicas of one
//! agent sharing their state (the `postgres` cargo feature).
//!
//! [`open_stores`] gives the [`Stores`] an agent runs on (snapshots, usage
//! events, replay state with [`PgReplayStore::claim`] deciding between
//! replicas, and one-transaction group commits); [`open_webhook_store`] gives
//! the webhook outbox's store, whose rows are leased to the replica that holds
//! them so a stopped replica's deliveries are taken over by the others.
//!
//! ```no_run
//! use asap_proto::store::{SnapshotStore, StorageConfig};
//! use asap_tokio::postgres::{open_stores, PgOptions};
//!
//! let config = StorageConfig::postgres("postgres://asap:secret@127.0.0.1:5432/asap")?;
//! let (stores, backend) = open_stores(&config, &PgOptions::default())?;
//! assert_eq!(stores.snapshots.list_versions("task_1")?, Vec::<i64>::new());
//! println!("this replica is {}", backend.replica_id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How calls run
//!
//! The store traits are synchronous; the client is async. A [`PgBackend`] owns
//! a small tokio runtime (one worker thread, `asap-postgres`) and a connection
//! pool. Every operation is spawned on that runtime and the caller waits for its
//! answer on a channel, so a store method works from any thread, including a
//! worker thread of another tokio runtime (it blocks that thread for the
//! round trip, as a SQLite call would; never `block_on` inside a runtime).
//! [`PgBackend::claim_async`] is the async form for the server's request path.
//! A caller that stops waiting does not cancel its operation.
//!
//! Connections are plain TCP or a Unix socket (no TLS: a loopback or private
//! network; `sslmode=require` is refused when connecting).
//!
//! # Schema
//!
//! Created (or migrated) at [`PgBackend::connect`], in one transaction under a
//! transaction-level advisory lock, so replicas starting together migrate once.
//! `asap_schema_version` holds one row per applied version (this build: 1). The
//! tables go to the first schema of the connection's `search_path` (choose one
//! with `?options=-csearch_path%3Dmyschema` in the URL).
//!
//! | table | key | holds |
//! |---|---|---|
//! | `asap_snapshots` | `task_id, version` | `id`, `data` (the JSON text as written, member order and numbers exact), `checkpoint`, `created_at` (as written: offset or naive kept) |
//! | `asap_usage_events` | `seq` (identity: recording order) | `agent_id`, `task_id`, `consumer_id`, `at_us` (unix µs, UTC), the four metrics; indexed by `agent_id, at_us, seq` |
//! | `asap_replay_nonces` | `sender, nonce` | `expires_at_ms` (last live unix ms) |
//! | `asap_replay_dedup` | `sender, envelope_id` | an answer (`response`) or an unanswered claim (`lease_until_ms`), `expires_at_ms` |
//! | `asap_webhook_outbox` | `event_id` | `seq`, `state`, `lease_owner`, `lease_until` (database clock), `record` (the outbox record as JSON) |
//!
//! Identifiers (task, agent, sender, nonce, event ids) are stored as their
//! UTF-8 bytes (`BYTEA`): PostgreSQL text cannot hold U+0000, which the wire
//! allows, and bytes compare exactly, with no collation (read them with
//! `convert_from(task_id, 'UTF8')`).
//!
//! # Several replicas
//!
//! * Replay: [`PgReplayStore::claim`] is one transaction of `INSERT … ON
//!   CONFLICT` statements; the row lock they take makes two replicas claiming
//!   the same nonce or envelope at once get one winner.
//! * Webhooks: each row is leased to a replica ([`PgOptions::replica_id`]) until
//!   `lease_until`, on the database's clock, so replicas' clock skew does not
//!   matter. A write leases its row to the writing replica, and
//!   [`WebhookStore::claim_orphans`] (called every few seconds) renews all of
//!   the replica's leases; a row whose lease ended (its replica stopped) is
//!   taken by the next replica that loads or claims orphans. Delivery is at least once: a replica
//!   too slow to renew may see its events delivered by another as well. Give a
//!   replica a stable `replica_id` to resume its own rows at once after a
//!   restart (a fresh random id waits for the old leases to end).
//!
//! [`open_stores`]: crate::postgres::open_stores
//! [`open_webhook_store`]: crate::postgres::open_webhook_store
//! [`Stores`]: asap_proto::store::Stores
//! [`PgReplayStore::claim`]: asap_proto::store::ReplayStore::claim
//! [`PgBackend`]: crate::postgres::PgBackend
//! [`PgBackend::connect`]: crate::postgres::PgBackend::connect
//! [`PgBackend::claim_async`]: crate::postgres::PgBackend::claim_async
//! [`PgOptions::replica_id`]: crate::postgres::PgOptions::replica_id
//! [`WebhookStore::claim_orphans`]: asap_proto::store::WebhookStore::claim_orphans

mod group;
mod metering;
mod replay;
mod schema;
mod snapshot;
mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use asap_proto::model::UnixTime;
use asap_proto::store::Stores;
use asap_proto::store::{
    redact_url, ClaimOutcome, ReplayClaim, StorageConfig, StoreError, WebhookStore,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

pub use group::PgGroupCommit;
pub use metering::PgMeteringStore;
pub use replay::PgReplayStore;
pub use snapshot::PgSnapshotStore;
pub use webhook::PgWebhookStore;

/// How long an operation waits for a free pooled connection before [`StoreError::Busy`].
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How a [`PgBackend`] connects and how its replica holds webhook rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections the pool opens (at least 1).
    pub pool_size: usize,
    /// How long connecting (at startup, and each new pooled connection) may take.
    pub connect_timeout: Duration,
    /// How long a webhook row stays this replica's after its last write or renewal.
    pub webhook_lease: Duration,
    /// This replica's name in `asap_webhook_outbox.lease_owner` (unique per running replica).
    pub replica_id: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            webhook_lease: Duration::from_secs(30),
            replica_id: random_replica_id(),
        }
    }
}

/// `replica-` and 16 random hex digits (OS randomness; the process id and
/// the clock if the OS has none, which still differs between replicas).
fn random_replica_id() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (nanos ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("replica-{hex}")
}

/// Why PostgreSQL could not be opened at startup. Messages name the server and
/// the URL (password shown as `***`) and say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenPgError {
    /// The configuration chose PostgreSQL without a URL.
    #[error("the postgres storage backend needs ASAP_STORAGE_URL (or --db postgres://...): set it to postgres://USER[:PASSWORD]@HOST[:PORT]/DB")]
    MissingUrl,
    /// The URL does not parse.
    #[error("ASAP_STORAGE_URL={url} is not a valid PostgreSQL URL: {reason}; write postgres://USER[:PASSWORD]@HOST[:PORT]/DB")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot connect to PostgreSQL at {target} ({url}): {reason}; {hint}")]
    Connect {
        /// `host:port` (every host of the URL).
        target: String,
        /// The URL, password redacted.
        url: String,
        /// What failed.
        reason: String,
        /// What to check.
        hint: &'static str,
    },
    /// Connected, but the schema could not be created or migrated.
    #[error("cannot create the asap tables in PostgreSQL at {target} ({url}): {reason}; does the user own the database or have CREATE on its schema?")]
    Schema {
        /// `host:port`.
        target: String,
        /// The URL, password redacted.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// The database was migrated by a newer build.
    #[error("the database at {target} ({url}) has asap schema version {found}, newer than this build's {supported}; upgrade asap on this replica")]
    NewerSchema {
        /// `host:port`.
        target: String,
        /// The URL, password redacted.
        url: String,
        /// The version in `asap_schema_version`.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// The backend's worker runtime could not start (threads exhausted).
    #[error("cannot start the PostgreSQL worker thread: {0}")]
    Runtime(String),
    /// Connected, but reading the replay state at startup failed.
    #[error("cannot load the replay state from PostgreSQL at {target}: {source}")]
    Load {
        /// `host:port`.
        target: String,
        /// What failed.
        source: StoreError,
    },
}

/// What every operation of a backend shares: the pool, and what to name in messages.
pub(crate) struct Shared {
    pool: Pool,
    options: PgOptions,
    /// `host:port` of the server, for messages.
    target: String,
}

impl Shared {
    /// A pooled connection, with a failure to get one said in store terms.
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| self.pool_err(e))
    }

    fn pool_err(&self, e: PoolError) -> StoreError {
        let target = &self.target;
        match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => StoreError::Busy(format!(
                "all {} connections to PostgreSQL at {target} stayed busy for {}s; lower the load or raise the pool size",
                self.options.pool_size,
                POOL_WAIT.as_secs()
            )),
            PoolError::Timeout(_) => StoreError::Backend(format!(
                "PostgreSQL at {target} did not answer a new connection within {}s; is the server up and reachable?",
                self.options.connect_timeout.as_secs_f64()
            )),
            PoolError::Backend(e) => {
                let (reason, hint) = describe_connect_error(&e, self.options.connect_timeout);
                StoreError::Backend(format!(
                    "cannot connect to PostgreSQL at {target}: {reason}; {hint}"
                ))
            }
            PoolError::Closed => StoreError::Closed("the PostgreSQL pool was closed".into()),
            other => StoreError::Backend(format!("PostgreSQL pool at {target}: {other}")),
        }
    }

    /// The lease as seconds, for `make_interval(secs => …)`.
    pub(crate) fn lease_secs(&self) -> f64 {
        self.options.webhook_lease.as_secs_f64()
    }

    /// This replica's id.
    pub(crate) fn replica(&self) -> &str {
        &self.options.replica_id
    }
}

/// The backend's runtime, shut down without waiting when dropped: allowed
/// inside another runtime, where dropping a runtime panics (a failed
/// `connect` or the last store dropped in async code).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    _runtime: OwnRuntime,
}

/// A connection pool to one PostgreSQL database and the thread it runs on;
/// the stores of one agent share it. Cheap to clone (an `Arc` inside); the
/// thread stops when the last clone and the last store are dropped.
#[derive(Clone)]
pub struct PgBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("target", &self.inner.shared.target)
            .field("replica_id", &self.inner.shared.options.replica_id)
            .finish_non_exhaustive()
    }
}

/// How the first connection of [`PgBackend::connect`] went.
enum Started {
    /// No connection: what failed, and what to check.
    Unreachable((String, &'static str)),
    /// Connected; the migration's outcome.
    Migrated(Result<(), schema::MigrateError>),
}

fn closed() -> StoreError {
    StoreError::Closed("the PostgreSQL worker thread stopped or the operation panicked".into())
}

impl PgBackend {
    /// Connects to `url` (within [`PgOptions::connect_timeout`]) and creates or
    /// migrates the schema. Callable from any thread, inside a runtime or not.
    pub fn connect(url: &str, options: &PgOptions) -> Result<PgBackend, OpenPgError> {
        let shown = redact_url(url);
        let mut config: tokio_postgres::Config =
            url.trim().parse().map_err(|e: tokio_postgres::Error| {
                // "invalid connection string: invalid value for option `port`". The
                // parser names options, not values; the URL is scrubbed anyway.
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason = format!("{reason}: {s}");
                    source = s.source();
                }
                let reason = reason.replace(url, &shown);
                OpenPgError::BadUrl {
                    url: shown.clone(),
                    reason,
                }
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("asap");
        }
        let target = target_of(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("asap-postgres")
            .enable_all()
            .build()
            .map_err(|e| OpenPgError::Runtime(e.to_string()))?;
        let handle = runtime.handle().clone();
        let runtime = OwnRuntime(Some(runtime));
        let connect_error = |reason: String, hint| OpenPgError::Connect {
            target: target.clone(),
            url: shown.clone(),
            reason,
            hint,
        };
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A closed connection is dropped on its way out of the pool;
                // one broken without notice fails its operation and is then dropped.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| connect_error(e.to_string(), "report this as a bug"))?;
        let timeout = options.connect_timeout;
        let first = pool.clone();
        let started = run_on(&handle, async move {
            let no_answer = || {
                (
                    format!("no answer within {}s", timeout.as_secs_f64()),
                    "is the host reachable and is the URL right?",
                )
            };
            let mut client = match tokio::time::timeout(timeout, first.get()).await {
                Err(_) | Ok(Err(PoolError::Timeout(_))) => return Started::Unreachable(no_answer()),
                Ok(Err(PoolError::Backend(e))) => {
                    return Started::Unreachable(describe_connect_error(&e, timeout))
                }
                Ok(Err(e)) => {
                    return Started::Unreachable((
                        e.to_string(),
                        "is the server running and is the URL right?",
                    ))
                }
                Ok(Ok(client)) => client,
            };
            Started::Migrated(schema::migrate(&mut client).await)
        })
        .map_err(|e| OpenPgError::Runtime(e.to_string()))?;
        match started {
            Started::Unreachable((reason, hint)) => return Err(connect_error(reason, hint)),
            Started::Migrated(Err(schema::MigrateError::Newer(found))) => {
                return Err(OpenPgError::NewerSchema {
                    target,
                    url: shown,
                    found,
                    supported: schema::SCHEMA_VERSION,
                })
            }
            Started::Migrated(Err(schema::MigrateError::Sql(e))) => {
                return Err(OpenPgError::Schema {
                    target,
                    url: shown,
                    reason: db_message(&e),
                })
            }
            Started::Migrated(Ok(())) => {}
        }
        Ok(PgBackend {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    pool,
                    options: options.clone(),
                    target,
                }),
                handle,
                _runtime: runtime,
            }),
        })
    }

    /// This replica's id (the owner of its webhook rows).
    #[must_use]
    pub fn replica_id(&self) -> &str {
        &self.inner.shared.options.replica_id
    }

    /// `host:port` of the server.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.inner.shared.target
    }

    /// A snapshot store on this backend.
    #[must_use]
    pub fn snapshot_store(&self) -> PgSnapshotStore {
        PgSnapshotStore::new(self.clone())
    }

    /// A metering store on this backend.
    #[must_use]
    pub fn metering_store(&self) -> PgMeteringStore {
        PgMeteringStore::new(self.clone())
    }

    /// A replay store on this backend.
    #[must_use]
    pub fn replay_store(&self) -> PgReplayStore {
        PgReplayStore::new(self.clone())
    }

    /// A webhook store whose rows this backend's replica holds.
    #[must_use]
    pub fn webhook_store(&self) -> PgWebhookStore {
        PgWebhookStore::new(self.clone())
    }

    /// The group commit of [`Stores::with_group_commit`] on this backend.
    #[must_use]
    pub fn group_commit(&self) -> PgGroupCommit {
        PgGroupCommit::new(self.clone())
    }

    /// [`ReplayStore::claim`](asap_proto::store::ReplayStore::claim) for async
    /// callers on any runtime: runs on the backend's thread and awaits the
    /// answer. Dropping the future does not cancel the claim.
    pub async fn claim_async(&self, claim: ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        asap_proto::store::check_replay_claim(&claim)?;
        let shared = Arc::clone(&self.inner.shared);
        self.inner
            .handle
            .spawn(async move { replay::claim(&shared, &claim).await })
            .await
            .unwrap_or_else(|_| Err(closed()))
    }

    /// Runs `f` on the backend's runtime and waits for its result (blocking
    /// this thread, whatever it is, but never a runtime's `block_on`).
    pub(crate) fn run<T, Fut>(&self, f: impl FnOnce(Arc<Shared>) -> Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        run_on(&self.inner.handle, f(Arc::clone(&self.inner.shared))).unwrap_or_else(Err)
    }
}

/// Spawns `fut` on `handle` and waits on a channel for its output.
fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    // A task that panics, or a runtime that shut down, drops `tx`: `Closed`.
    drop(handle.spawn(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv().map_err(|_| closed())
}

/// `host:port` for every host of `config` (a Unix socket shows its directory).
fn target_of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| match ports {
        [] => 5432,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(5432),
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{}", port(i)),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(dir) => {
                format!("{}/.s.PGSQL.{}", dir.display(), port(i))
            }
        })
        .collect();
    if hosts.is_empty() {
        "(no host in the URL)".to_owned()
    } else {
        hosts.join(",")
    }
}

/// A connection failure in words (`connection refused`), and what to check.
fn describe_connect_error(e: &tokio_postgres::Error, timeout: Duration) -> (String, &'static str) {
    const RUNNING: &str = "is the server running and is the URL right?";
    if let Some(db) = e.as_db_error() {
        let hint = match *db.code() {
            SqlState::INVALID_PASSWORD | SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                "check the user and password in the URL (and pg_hba.conf)"
            }
            SqlState::INVALID_CATALOG_NAME => "create the database, or fix its name in the URL",
            SqlState::TOO_MANY_CONNECTIONS => {
                "the server is at max_connections: raise it, or lower the pool size of the replicas"
            }
            SqlState::CANNOT_CONNECT_NOW => "the server is starting or stopping; retry shortly",
            _ => RUNNING,
        };
        return (db.message().to_owned(), hint);
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => ("connection refused".into(), RUNNING),
                std::io::ErrorKind::TimedOut => (
                    format!("no answer within {}s", timeout.as_secs_f64()),
                    "is the host reachable and is the URL right?",
                ),
                std::io::ErrorKind::NotFound => ("no server socket there".into(), RUNNING),
                _ => (io.to_string(), RUNNING),
            };
        }
        source = s.source();
    }
    let text = e.to_string();
    if text.contains("password missing") {
        return (
            "the server asks for a password".into(),
            "put it in the URL: postgres://USER:PASSWORD@HOST/DB",
        );
    }
    if text.contains("TLS") || text.contains("tls") {
        return (
            text,
            "this build connects without TLS: use sslmode=disable or prefer (loopback or a private network)",
        );
    }
    (text, RUNNING)
}

/// The server's message for an SQL error (with its SQLSTATE), else the client's text.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Maps a client error to the store's: lock conflicts are `Busy` (retry), a
/// lost connection is `Backend` with what to check, the rest `Backend`.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let busy = [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::TOO_MANY_CONNECTIONS,
        ];
        if busy.contains(code) {
            return StoreError::Busy(format!("PostgreSQL: {}", db_message(&e)));
        }
        if code.code().starts_with("08") || code.code().starts_with("57P") {
            return StoreError::Backend(format!(
                "the PostgreSQL connection failed: {}; is the server up? (the next operation reconnects)",
                db_message(&e)
            ));
        }
        return StoreError::Backend(format!("PostgreSQL: {}", db_message(&e)));
    }
    if e.is_closed() {
        return StoreError::Backend(format!(
            "the PostgreSQL connection closed: {e}; is the server up? (the next operation reconnects)"
        ));
    }
    StoreError::Backend(format!("PostgreSQL: {e}"))
}

/// A stored row that does not decode: `Corrupt`, naming the table and key.
pub(crate) fn corrupt(
    table: &'static str,
    key: impl Into<String>,
    reason: impl ToString,
) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.into(),
        reason: reason.to_string(),
    }
}

/// A `BYTEA` identifier column back to its string.
pub(crate) fn text(
    table: &'static str,
    column: &str,
    bytes: Vec<u8>,
) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| {
        corrupt(
            table,
            format!("(a row's {column})"),
            format!("{column} is not UTF-8: {e}"),
        )
    })
}

/// Reads column `i` of `row`, a type mismatch being corruption.
pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    table: &'static str,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| corrupt(table, "(a row)", format!("column {i}: {e}")))
}

/// Opens the stores an agent runs on from `config` (PostgreSQL at
/// `config.url`), with replay state and group commit on the same pool. The
/// backend is returned too: for [`PgBackend::claim_async`] and the webhook store.
pub fn open_stores(
    config: &StorageConfig,
    options: &PgOptions,
) -> Result<(Stores, PgBackend), OpenPgError> {
    let url = config.url.as_deref().ok_or(OpenPgError::MissingUrl)?;
    let backend = PgBackend::connect(url, options)?;
    // Replay state is judged against the wall clock, like the window itself.
    let now = UnixTime::from_system_time(std::time::SystemTime::now());
    let stores = Stores::new(
        Box::new(backend.snapshot_store()),
        Box::new(backend.metering_store()),
        config.clone(),
    )
    .with_replay(Box::new(backend.replay_store()), now)
    .map_err(|source| OpenPgError::Load {
        target: backend.target().to_owned(),
        source,
    })?
    .with_group_commit(Box::new(backend.group_commit()));
    Ok((stores, backend))
}

/// The webhook outbox's store on the database `config.url` names, with default
/// [`PgOptions`] (a random replica id; a 30 s lease).
pub fn open_webhook_store(
    config: &StorageConfig,
) -> Result<Box<dyn WebhookStore + Send>, OpenPgError> {
    let url = config.url.as_deref().ok_or(OpenPgError::MissingUrl)?;
    let backend = PgBackend::connect(url, &PgOptions::default())?;
    Ok(Box::new(backend.webhook_store()))
}

/// The rows of `rows` with distinct keys, each the last written for its key,
/// in first-seen order of the survivors (one multi-row `ON CONFLICT`
/// statement may not touch a key twice).
pub(crate) fn last_per_key<'a, T, K: Ord + 'a>(
    rows: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out: Vec<&T> = rows.iter().rev().filter(|r| seen.insert(key(r))).collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let err = PgBackend::connect(
            "postgres://asap:secret@127.0.0.1:notaport/asap",
            &PgOptions::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, OpenPgError::BadUrl { .. }), "{text}");
        assert!(
            text.starts_with("ASAP_STORAGE_URL=postgres://asap:***@127.0.0.1:notaport/asap is not a valid PostgreSQL URL: "),
            "{text}"
        );
        assert!(text.contains("invalid value for option `port`"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn an_unreachable_server_is_named_with_what_to_check() {
        // A port that was just free on loopback: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let url = format!("postgres://asap:secret@127.0.0.1:{port}/asap");
        let options = PgOptions {
            connect_timeout: Duration::from_secs(2),
            ..PgOptions::default()
        };
        let err = PgBackend::connect(&url, &options).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to PostgreSQL at 127.0.0.1:{port} (postgres://asap:***@127.0.0.1:{port}/asap): connection refused; is the server running and is the URL right?"
            )
        );
    }

    #[tokio::test]
    async fn a_failed_connect_inside_a_runtime_does_not_panic() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let url = format!("postgres://asap@127.0.0.1:{port}/asap");
        let err = PgBackend::connect(&url, &PgOptions::default()).unwrap_err();
        assert!(matches!(err, OpenPgError::Connect { .. }), "{err}");
    }

    #[test]
    fn a_missing_url_says_which_setting() {
        let config = StorageConfig {
            url: None,
            ..StorageConfig::postgres("postgres://h/d").unwrap()
        };
        let err = open_stores(&config, &PgOptions::default()).unwrap_err();
        assert_eq!(err, OpenPgError::MissingUrl);
        assert!(err.to_string().contains("ASAP_STORAGE_URL"), "{err}");
        assert!(open_webhook_store(&config).is_err());
    }

    #[test]
    fn replica_ids_are_random_and_targets_list_every_host() {
        let a = PgOptions::default().replica_id;
        assert!(a.starts_with("replica-") && a.len() == 24, "{a}");
        assert_ne!(a, PgOptions::default().replica_id);
        let config: tokio_postgres::Config = "postgres://u@db1:6000,db2/x".parse().unwrap();
        assert_eq!(target_of(&config), "db1:6000,db2:5432");
    }
}
