//! Creating and migrating the tables: versioned in `asap_schema_version`, one
//! transaction under an advisory lock so replicas starting together agree.

/// The newest schema version this build creates.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Any value unique to this purpose: the advisory lock of the migration.
/// (Advisory locks are per database; replicas on one database share it.)
const MIGRATION_LOCK: i64 = 0x6173_6170_5f73_6368; // "asap_sch"

/// Version 1: every store's table.
const V1: &str = "
CREATE TABLE asap_snapshots (
    task_id BYTEA NOT NULL,
    version BIGINT NOT NULL CHECK (version >= 1),
    id BYTEA NOT NULL,
    data TEXT NOT NULL,
    checkpoint BOOLEAN NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, version)
);
CREATE TABLE asap_usage_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id BYTEA NOT NULL,
    task_id BYTEA NOT NULL,
    consumer_id BYTEA NOT NULL,
    at_us BIGINT NOT NULL,
    tokens_in BIGINT NOT NULL CHECK (tokens_in >= 0),
    tokens_out BIGINT NOT NULL CHECK (tokens_out >= 0),
    duration_ms BIGINT NOT NULL CHECK (duration_ms >= 0),
    api_calls BIGINT NOT NULL CHECK (api_calls >= 0)
);
CREATE INDEX asap_usage_events_agent_at ON asap_usage_events (agent_id, at_us, seq);
CREATE TABLE asap_replay_nonces (
    sender BYTEA NOT NULL,
    nonce BYTEA NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (sender, nonce)
);
CREATE INDEX asap_replay_nonces_expiry ON asap_replay_nonces (expires_at_ms);
CREATE TABLE asap_replay_dedup (
    sender BYTEA NOT NULL,
    envelope_id BYTEA NOT NULL,
    response BYTEA,
    lease_until_ms BIGINT,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (sender, envelope_id),
    -- An answer, or a claim running until its lease ends: never both.
    CHECK ((response IS NULL) <> (lease_until_ms IS NULL))
);
CREATE INDEX asap_replay_dedup_expiry ON asap_replay_dedup (expires_at_ms);
CREATE TABLE asap_webhook_outbox (
    event_id BYTEA PRIMARY KEY,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'dead')),
    lease_owner TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX asap_webhook_outbox_owner ON asap_webhook_outbox (lease_owner);
CREATE INDEX asap_webhook_outbox_orphans ON asap_webhook_outbox (lease_until) WHERE state <> 'dead';
CREATE INDEX asap_webhook_outbox_order ON asap_webhook_outbox (seq, event_id);
";

/// Every migration, oldest first: `(version it brings the schema to, SQL)`.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1)];

/// Why the schema could not be brought to [`SCHEMA_VERSION`].
pub(crate) enum MigrateError {
    /// The server refused a statement.
    Sql(tokio_postgres::Error),
    /// The database is at this newer version.
    Newer(i32),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Sql(e)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`]; a no-op when it is there already.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), MigrateError> {
    let tx = client.transaction().await?;
    // Held to the end of the transaction: a second replica waits here and
    // then finds the tables made (CREATE ... IF NOT EXISTS alone races).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS asap_schema_version (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM asap_schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
    if current > SCHEMA_VERSION {
        return Err(MigrateError::Newer(current));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO asap_schema_version (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
