//! The store contracts, and what several replicas rely on, against a real
//! PostgreSQL: `ASAP_TEST_POSTGRES_URL` names a role that may create databases
//! (`.ci/postgres.sh start` makes a throwaway one). Unset, every test says so
//! and passes, unless `ASAP_REQUIRE_POSTGRES=1` (CI), where it fails.
//!
//! Each test gets its own database (dropped at its end) and each store
//! instance a fresh schema in it, named in the URL's `search_path`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use asap_blocking::store::GroupCommit;
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::server::Records;
use asap_proto::store::{
    contract, contract_webhook, ClaimOutcome, DedupClaim, DedupRecord, MeteringStore, NonceRecord,
    ReplayClaim, ReplayStore, SnapshotStore, StorageConfig, StoreError, UsageEvent, UsageMetrics,
    WebhookChange, WebhookStore,
};
use asap_proto::webhook::{DeadReason, OutboxRecord, RecordState};
use asap_tokio::postgres::{open_stores, OpenPgError, PgBackend, PgOptions};
use tokio_postgres::NoTls;

/// A database of its own for one test, dropped with it.
struct Pg {
    admin_url: String,
    db: String,
    db_url: String,
    schemas: AtomicUsize,
}

/// Runs `fut` to completion on a runtime of its own, on a thread of its own:
/// usable from plain and from async tests (no runtime inside a runtime).
fn block_on<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The test's database, or `None` (with one line said) when no server is configured.
fn pg() -> Option<Pg> {
    let admin_url = match std::env::var("ASAP_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => {
            if std::env::var("ASAP_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("ASAP_REQUIRE_POSTGRES=1 but ASAP_TEST_POSTGRES_URL is unset (start one: eval \"$(.ci/postgres.sh start)\")");
            }
            eprintln!("skipping: set ASAP_TEST_POSTGRES_URL (CI does: .ci/postgres.sh)");
            return None;
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let db = format!(
        "asap_t_{}_{}_{nanos}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let pg = Pg {
        db_url: with_database(&admin_url, &db),
        admin_url,
        db,
        schemas: AtomicUsize::new(0),
    };
    pg.sql(&pg.admin_url, &format!("CREATE DATABASE {}", pg.db));
    Some(pg)
}

/// `url` naming database `db` instead of its own.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{db}", &base[..path]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Pg {
    /// Runs `sql` (statements separated by `;`) on `url`.
    fn sql(&self, url: &str, sql: &str) {
        let (url, sql) = (url.to_owned(), sql.to_owned());
        block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
            let conn = tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            drop(client);
            let _ = conn.await;
        });
    }

    /// The first column of every row `sql` returns, as text.
    fn column(&self, url: &str, sql: &str) -> Vec<String> {
        let (url, sql) = (url.to_owned(), sql.to_owned());
        block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            let conn = tokio::spawn(conn);
            let rows = client.simple_query(&sql).await.unwrap();
            drop(client);
            let _ = conn.await;
            rows.iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect()
        })
    }

    /// A URL on a new, empty schema of the test's database.
    fn url(&self) -> String {
        let schema = format!("s{}", self.schemas.fetch_add(1, Ordering::Relaxed));
        self.sql(&self.db_url, &format!("CREATE SCHEMA {schema}"));
        format!("{}?options=-csearch_path%3D{schema}", self.db_url)
    }

    fn connect(url: &str, options: &PgOptions) -> PgBackend {
        PgBackend::connect(url, options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A backend on a new, empty schema.
    fn backend(&self) -> PgBackend {
        Self::connect(&self.url(), &PgOptions::default())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // FORCE (PostgreSQL 13+) closes connections a failed test left open.
        let (url, db) = (self.admin_url.clone(), self.db.clone());
        let _ = block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
            let conn = tokio::spawn(conn);
            let r = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .await;
            drop(client);
            let _ = conn.await;
            r
        });
    }
}

fn wall_clock() -> UnixTime {
    UnixTime::from_system_time(std::time::SystemTime::now())
}

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

fn event(task: &str, tokens_in: u64) -> UsageEvent {
    UsageEvent {
        task_id: task.into(),
        agent_id: "urn:asap:agent:a".into(),
        consumer_id: "urn:asap:agent:c".into(),
        metrics: UsageMetrics {
            tokens_in,
            ..UsageMetrics::default()
        },
        timestamp: "2026-01-01T00:00:00Z".parse().unwrap(),
    }
}

fn nonce(n: &str, expires: i64) -> NonceRecord {
    NonceRecord {
        sender: "urn:asap:agent:a".into(),
        nonce: n.into(),
        expires_at_unix_ms: expires,
    }
}

// ---- the contract suites, unchanged ----

#[test]
fn snapshot_store_passes_the_contract() {
    let Some(pg) = pg() else { return };
    contract::snapshot_store(|| pg.backend().snapshot_store());
}

#[test]
fn metering_store_passes_the_contract() {
    let Some(pg) = pg() else { return };
    contract::metering_store(|| pg.backend().metering_store());
}

#[test]
fn replay_store_passes_the_contract() {
    let Some(pg) = pg() else { return };
    contract::replay_store(|| pg.backend().replay_store());
}

#[test]
fn webhook_store_passes_the_contract() {
    let Some(pg) = pg() else { return };
    contract_webhook::webhook_store(|| pg.backend().webhook_store());
}

// ---- several replicas ----

/// Runs `claim` on `threads` threads at once, alternating between the two
/// replicas, and returns every outcome.
fn race(
    replicas: &[PgBackend; 2],
    threads: usize,
    claim: impl Fn(usize) -> ReplayClaim + Send + Sync + 'static,
) -> Vec<ClaimOutcome> {
    let barrier = Arc::new(Barrier::new(threads));
    let claim = Arc::new(claim);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let mut store = replicas[i % 2].replay_store();
            let (barrier, claim) = (Arc::clone(&barrier), Arc::clone(&claim));
            std::thread::spawn(move || {
                let c = claim(i);
                barrier.wait();
                store.claim(&c).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_replicas_racing_for_one_envelope_get_one_winner() {
    let Some(pg) = pg() else { return };
    let url = pg.url();
    let replicas = [
        Pg::connect(&url, &PgOptions::default()),
        Pg::connect(&url, &PgOptions::default()),
    ];
    let now = wall_clock().as_millis();
    let dedup = move |id: &str| DedupClaim {
        sender: "urn:asap:agent:a".into(),
        envelope_id: id.into(),
        lease_until_unix_ms: now + 60_000,
        expires_at_unix_ms: now + 600_000,
    };
    for round in 0..10 {
        let id = format!("env-{round}");
        // Same envelope, each copy with a fresh nonce.
        let envelope = dedup(&id);
        let outcomes = race(&replicas, 12, move |i| ReplayClaim {
            nonce: Some(nonce(&format!("n-{round}-{i}"), now + 600_000)),
            dedup: Some(envelope.clone()),
            now: UnixTime::from_millis(now),
        });
        let won = outcomes.iter().filter(|o| **o == ClaimOutcome::Won).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, ClaimOutcome::Won | ClaimOutcome::Running)),
            "{outcomes:?}"
        );
        // The winner answers: every later copy gets the answer, on either replica.
        replicas[round % 2]
            .replay_store()
            .record_dedup(&DedupRecord {
                sender: "urn:asap:agent:a".into(),
                envelope_id: id.clone(),
                response: format!("answer {round}").into_bytes(),
                expires_at_unix_ms: now + 600_000,
            })
            .unwrap();
        let envelope = dedup(&id);
        let outcomes = race(&replicas, 6, move |_| ReplayClaim {
            nonce: None,
            dedup: Some(envelope.clone()),
            now: UnixTime::from_millis(now),
        });
        let answer = ClaimOutcome::Answered(format!("answer {round}").into_bytes());
        assert!(outcomes.iter().all(|o| *o == answer), "{outcomes:?}");
        // One nonce on many envelopes: one gets through.
        let outcomes = race(&replicas, 12, move |i| ReplayClaim {
            nonce: Some(nonce(&format!("shared-{round}"), now + 600_000)),
            dedup: Some(dedup(&format!("other-{round}-{i}"))),
            now: UnixTime::from_millis(now),
        });
        let through: Vec<_> = outcomes
            .iter()
            .filter(|o| **o != ClaimOutcome::NonceReplayed)
            .collect();
        assert_eq!(through, [&ClaimOutcome::Won], "round {round}: {outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_inside_a_tokio_runtime() {
    let Some(pg) = pg() else { return };
    // Connecting and the sync store calls block this worker thread, not the backend's.
    let backend = pg.backend();
    let mut snapshots = backend.snapshot_store();
    snapshots.save(&snap("t", 1)).unwrap();
    assert_eq!(snapshots.list_versions("t").unwrap(), [1]);
    let now = wall_clock().as_millis();
    let claims = (0..20).map(|i| {
        let backend = backend.clone();
        tokio::spawn(async move {
            backend
                .claim_async(ReplayClaim {
                    nonce: Some(nonce(&format!("n{i}"), now + 60_000)),
                    dedup: Some(DedupClaim {
                        sender: "urn:asap:agent:a".into(),
                        envelope_id: "e".into(),
                        lease_until_unix_ms: now + 60_000,
                        expires_at_unix_ms: now + 60_000,
                    }),
                    now: UnixTime::from_millis(now),
                })
                .await
        })
    });
    let outcomes: Vec<ClaimOutcome> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == ClaimOutcome::Won).count(),
        1,
        "{outcomes:?}"
    );
    let bad = backend
        .claim_async(ReplayClaim {
            nonce: Some(nonce("", now)),
            dedup: None,
            now: UnixTime::from_millis(now),
        })
        .await;
    assert!(
        matches!(bad, Err(StoreError::InvalidInput { .. })),
        "{bad:?}"
    );
    // The last handle dropped inside a runtime: the backend's runtime shuts down without panicking.
    drop(snapshots);
    drop(backend);
}

#[tokio::test(flavor = "current_thread")]
async fn sync_calls_work_on_a_current_thread_runtime() {
    let Some(pg) = pg() else { return };
    let backend = pg.backend();
    let mut metering = backend.metering_store();
    metering.record(&event("t", 3)).unwrap();
    let at = "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap().unix();
    assert_eq!(metering.query("urn:asap:agent:a", at, at).unwrap().len(), 1);
}

// ---- group commit ----

#[test]
fn a_group_commits_everything_or_nothing() {
    let Some(pg) = pg() else { return };
    let backend = pg.backend();
    let mut group = backend.group_commit();
    let (snapshots, metering, mut replay) = (
        backend.snapshot_store(),
        backend.metering_store(),
        backend.replay_store(),
    );
    let now = wall_clock();
    let live = now.as_millis() + 60_000;
    // A claim, answered by the group's dedup record.
    let claim = ReplayClaim {
        nonce: None,
        dedup: Some(DedupClaim {
            sender: "urn:asap:agent:a".into(),
            envelope_id: "e1".into(),
            lease_until_unix_ms: live,
            expires_at_unix_ms: live,
        }),
        now,
    };
    assert_eq!(replay.claim(&claim).unwrap(), ClaimOutcome::Won);
    let answer = DedupRecord {
        sender: "urn:asap:agent:a".into(),
        envelope_id: "e1".into(),
        response: b"{\"ok\":true}".to_vec(),
        expires_at_unix_ms: live,
    };
    let mut replaced = snap("t", 2);
    replaced.id = "second write of v2".into();
    group
        .record_group(
            &[snap("t", 2), snap("t", 1), replaced.clone()],
            &[event("t", 5), event("t", 7)],
            &[nonce("n1", live), nonce("n1", live - 1), nonce("n2", live)],
            std::slice::from_ref(&answer),
            now,
        )
        .unwrap();
    assert_eq!(snapshots.list_versions("t").unwrap(), [1, 2]);
    assert_eq!(
        snapshots.get("t", 2).unwrap(),
        Some(replaced),
        "the later write of a key wins"
    );
    let at = "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap().unix();
    let tokens: Vec<u64> = metering
        .query("urn:asap:agent:a", at, at)
        .unwrap()
        .iter()
        .map(|e| e.metrics.tokens_in)
        .collect();
    assert_eq!(tokens, [5, 7]);
    assert_eq!(
        replay.load_nonces(now).unwrap(),
        [nonce("n1", live), nonce("n2", live)]
    );
    assert_eq!(
        replay.load_dedup(now).unwrap(),
        std::slice::from_ref(&answer)
    );
    assert_eq!(
        replay.claim(&claim).unwrap(),
        ClaimOutcome::Answered(answer.response.clone()),
        "the answer replaced the claim"
    );

    // One invalid record: nothing of the group is written.
    let err = group
        .record_group(
            &[snap("u", 1), snap("u", 0)],
            &[event("u", 1)],
            &[nonce("n3", live)],
            &[],
            now,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    let err = group
        .record_group(
            &[snap("u", 1)],
            &[event("u", 1)],
            &[nonce("", live)],
            &[],
            now,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    assert_eq!(snapshots.list_versions("u").unwrap(), Vec::<i64>::new());
    assert_eq!(metering.query("urn:asap:agent:a", at, at).unwrap().len(), 2);
    assert_eq!(replay.load_nonces(now).unwrap().len(), 2);
    // Task records only (no clock): fine, and no purge.
    group
        .record_group(&[snap("v", 1)], &[], &[], &[], UnixTime::EPOCH)
        .unwrap();
    assert_eq!(snapshots.list_versions("v").unwrap(), [1]);
}

#[test]
fn a_group_purges_expired_replay_rows_at_most_every_few_seconds() {
    let Some(pg) = pg() else { return };
    let backend = pg.backend();
    let mut group = backend.group_commit();
    let mut replay = backend.replay_store();
    let now = wall_clock();
    let live = now.as_millis() + 60_000;
    let all = |r: &asap_tokio::postgres::PgReplayStore| {
        let mut names: Vec<String> = r
            .load_nonces(UnixTime::EPOCH)
            .unwrap()
            .into_iter()
            .map(|n| n.nonce)
            .collect();
        names.sort();
        names
    };
    replay.record_nonce(&nonce("old-1", 1_000)).unwrap();
    group
        .record_group(&[], &[], &[nonce("a", live)], &[], now)
        .unwrap();
    assert_eq!(all(&replay), ["a"], "the first commit purges");
    replay.record_nonce(&nonce("old-2", 1_000)).unwrap();
    group
        .record_group(&[], &[], &[nonce("b", live)], &[], now)
        .unwrap();
    assert_eq!(
        all(&replay),
        ["a", "b", "old-2"],
        "not again within seconds"
    );
}

// ---- webhook leases ----

fn outbox_record(id: &str, seq: u64, state: RecordState) -> OutboxRecord {
    OutboxRecord {
        event_id: id.into(),
        task_id: "task_1".into(),
        url: "https://hooks.example.com/asap".into(),
        secret_ref: None,
        body: b"{}".to_vec(),
        seq,
        state,
        attempts: 0,
        next_attempt_at_ms: 0,
        created_at_ms: 0,
        last_failure: None,
        dead_reason: (state == RecordState::Dead).then_some(DeadReason::Rejected { status: 410 }),
    }
}

fn ids(records: &[OutboxRecord]) -> Vec<&str> {
    records.iter().map(|r| r.event_id.as_str()).collect()
}

#[test]
fn a_stopped_replicas_webhook_rows_pass_to_another_after_its_lease() {
    let Some(pg) = pg() else { return };
    let url = pg.url();
    let replica = |name: &str| {
        Pg::connect(
            &url,
            &PgOptions {
                webhook_lease: Duration::from_secs(1),
                replica_id: name.into(),
                ..PgOptions::default()
            },
        )
        .webhook_store()
    };
    let (mut a, mut b) = (replica("replica-a"), replica("replica-b"));
    // Two replicas number their events independently: equal seqs are fine.
    a.apply(&[
        WebhookChange::Put(outbox_record("a-2", 2, RecordState::Pending)),
        WebhookChange::Put(outbox_record("a-1", 1, RecordState::InFlight)),
        WebhookChange::Put(outbox_record("a-dead", 3, RecordState::Dead)),
    ])
    .unwrap();
    b.apply(&[WebhookChange::Put(outbox_record(
        "b-1",
        1,
        RecordState::Pending,
    ))])
    .unwrap();
    // While A renews, B takes nothing, for well past one lease.
    let renewing = Instant::now();
    while renewing.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(a.claim_orphans(10).unwrap(), [], "A holds none of B's");
        assert_eq!(ids(&b.claim_orphans(10).unwrap()), Vec::<&str>::new());
        std::thread::sleep(Duration::from_millis(200));
    }
    // A stops; B keeps renewing its own and, once A's lease ended, takes A's.
    let stopped = Instant::now();
    let taken = loop {
        let got = b.claim_orphans(10).unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "B never took A's rows"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        stopped.elapsed() >= Duration::from_millis(500),
        "taken too early"
    );
    assert_eq!(
        ids(&taken),
        ["a-1", "a-2"],
        "undelivered rows, in seq order"
    );
    assert_eq!(taken[0].state, RecordState::InFlight, "stored as written");
    // B holds them now: A's renewals and loads no longer return them.
    assert_eq!(a.claim_orphans(10).unwrap(), []);
    assert_eq!(ids(&a.load().unwrap()), ["a-dead"], "only the dead letters");
    assert_eq!(ids(&b.load().unwrap()), ["a-1", "b-1", "a-2", "a-dead"]);
    assert_eq!(ids(&b.dead_letters().unwrap()), ["a-dead"]);
    // A new replica starting now finds every row held (B renewed at its load).
    let mut c = replica("replica-c");
    assert_eq!(ids(&c.load().unwrap()), ["a-dead"]);
    assert_eq!(c.claim_orphans(0).unwrap(), []);
    // Delivered: the row goes, whoever holds it.
    a.apply(&[WebhookChange::Remove("a-1".into())]).unwrap();
    assert_eq!(ids(&b.load().unwrap()), ["b-1", "a-2", "a-dead"]);
}

// ---- schema ----

#[test]
fn migration_is_idempotent_and_replicas_may_start_together() {
    let Some(pg) = pg() else { return };
    let url = pg.url();
    let first = Pg::connect(&url, &PgOptions::default());
    let second = Pg::connect(&url, &PgOptions::default());
    drop((first, second));
    assert_eq!(
        pg.column(&url, "SELECT version FROM asap_schema_version"),
        ["1"]
    );

    let url = pg.url();
    let barrier = Arc::new(Barrier::new(4));
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PgBackend::connect(&url, &PgOptions::default()).map(drop)
            })
        })
        .collect();
    for s in starts {
        s.join().unwrap().unwrap();
    }
    assert_eq!(
        pg.column(&url, "SELECT version FROM asap_schema_version"),
        ["1"]
    );

    pg.sql(
        &url,
        "INSERT INTO asap_schema_version (version) VALUES (99)",
    );
    let err = PgBackend::connect(&url, &PgOptions::default()).unwrap_err();
    assert!(
        matches!(err, OpenPgError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade asap"), "{err}");
}

#[test]
fn tls_required_by_the_url_is_refused_with_what_to_do() {
    let Some(pg) = pg() else { return };
    let sep = if pg.admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}sslmode=require", pg.admin_url);
    let err = PgBackend::connect(&url, &PgOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("without TLS"), "{text}");
    assert!(!text.contains(&pg.admin_url), "{text}");
}

#[test]
fn a_wrong_password_is_named_without_it() {
    let Some(pg) = pg() else { return };
    // postgres://USER[:PASSWORD]@REST -> postgres://USER:not-the-password@REST
    let after_scheme = pg.admin_url.find("://").map_or(0, |i| i + 3);
    let Some(at) = pg.admin_url[after_scheme..]
        .find('@')
        .map(|i| after_scheme + i)
    else {
        return;
    };
    let userinfo = &pg.admin_url[after_scheme..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let url = format!(
        "{}{user}:not-the-password{}",
        &pg.admin_url[..after_scheme],
        &pg.admin_url[at..]
    );
    let err = match PgBackend::connect(&url, &PgOptions::default()) {
        Ok(_) => {
            eprintln!("skipping: the test server does not check passwords");
            return;
        }
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, OpenPgError::Connect { .. }), "{text}");
    assert!(text.contains("check the user and password"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}

// ---- the agent's stores ----

#[test]
fn open_stores_restores_replay_state_and_group_commits() {
    let Some(pg) = pg() else { return };
    let url = pg.url();
    let config = StorageConfig::postgres(&url).unwrap();
    let now = wall_clock();
    let live = nonce("live", now.as_millis() + 60_000);
    {
        let (mut stores, backend) = open_stores(&config, &PgOptions::default()).unwrap();
        assert_eq!(stores.take_restored_nonces(), []);
        stores
            .record(Records {
                task: None,
                nonce: Some(live.clone()),
                dedup: None,
                now,
            })
            .unwrap();
        stores
            .record_tasks(&[snap("t", 1)], &[event("t", 1)])
            .unwrap();
        backend
            .replay_store()
            .record_nonce(&nonce("expired", now.as_millis() - 1))
            .unwrap();
    }
    let (mut stores, _backend) = open_stores(&config, &PgOptions::default()).unwrap();
    assert_eq!(stores.take_restored_nonces(), [live], "expired ones purged");
    assert_eq!(stores.snapshots.list_versions("t").unwrap(), [1]);
    assert_eq!(
        pg.column(&url, "SELECT count(*) FROM asap_replay_nonces"),
        ["1"]
    );
}
