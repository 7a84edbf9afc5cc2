//! `asap`: run an ASAP agent, or talk to one.

mod cli_auth;
mod cli_client;
mod cli_progress;
mod cli_webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;

use asap_proto::model::{AgentUrn, Endpoint, Manifest, Skill};
use asap_proto::reliability::rate_limit::RateLimitSpec;
use asap_proto::server::{NonceMode, ServerConfig, DEFAULT_MAX_NONCES, DEFAULT_RATE_LIMIT};
use asap_proto::store::StorageBackend;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "asap",
    version,
    about = "ASAP v1.1 agent-to-agent protocol: run an agent or talk to one",
    after_help = cli_client::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at startup
enum Command {
    /// Run an ASAP agent (echo skill by default) over HTTP.
    Serve(Box<ServeArgs>),
    /// Send a task.request to an agent and print its answer.
    Send(cli_client::SendArgs),
    /// Fetch and validate an agent's manifest.
    Discover(cli_client::DiscoverArgs),
    /// Check an agent's health endpoint (unhealthy exits 1).
    Health(cli_client::HealthArgs),
    /// List a Lite Registry's agents, or those offering --skill.
    Registry(cli_client::RegistryArgs),
    /// Webhook dead letters (list, replay) and a verifying receiver.
    Webhooks(cli_webhooks::WebhooksArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on: `HOST:PORT`, the host an IP address or a name
    /// (`localhost:8000`); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8000", value_parser = parse_bind)]
    bind: SocketAddr,
    /// Manifest JSON file (default: a built-in echo agent manifest).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// HTTP rate limit per client IP, reference syntax ("10/second;100/minute"), or "none".
    #[arg(long, env = "ASAP_RATE_LIMIT", default_value = DEFAULT_RATE_LIMIT)]
    rate_limit: String,
    /// Maximum request size in bytes (before and after decompression).
    #[arg(long, env = "ASAP_MAX_REQUEST_SIZE", default_value_t = asap_proto::server::DEFAULT_MAX_REQUEST_SIZE)]
    max_request_size: usize,
    /// SQLite state database (task snapshots, usage, accepted nonces): the same as
    /// `ASAP_STORAGE_BACKEND=sqlite ASAP_STORAGE_PATH=PATH`. Without it:
    /// `ASAP_STORAGE_BACKEND` (`sqlite`, `memory` or `postgres`, default `sqlite`),
    /// `ASAP_STORAGE_PATH` (default ./asap_state.db) and `ASAP_STORAGE_URL`. A
    /// `postgres://USER@HOST:5432/DB` URL here selects PostgreSQL, shared by every
    /// replica on it (build with `--features postgres`). Settings that are given must
    /// agree (e.g. `--db` with `ASAP_STORAGE_BACKEND=memory` is a startup error naming both).
    #[arg(long, value_name = "PATH|URL")]
    db: Option<PathBuf>,
    /// When an acknowledged task is durable: `normal` survives a crash of the agent
    /// (SQLite WAL, synced at checkpoints); `full` also survives power loss (fsync per
    /// group commit, so throughput follows the disk's sync rate).
    #[arg(long, value_enum, default_value_t = SyncMode::Normal)]
    sync: SyncMode,
    /// Delete task snapshots and usage events older than this many days (SQLite;
    /// default: keep everything, as the reference does).
    #[arg(long, env = "ASAP_RETENTION_DAYS", value_name = "DAYS")]
    retention_days: Option<f64>,
    /// Also rate-limit per envelope sender URN (same limits), besides per client IP.
    #[arg(long)]
    rate_limit_by_sender: bool,
    /// Replay protection by `extensions.nonce` (scoped per sender; each nonce is
    /// refused again for as long as its envelope passes the 300 s window, also
    /// after a restart with SQLite): `off` (the default), `when-present` (the
    /// reference's `require_nonce=True`: a nonce that is present must be new,
    /// envelopes without one pass), `required` (every envelope needs a new
    /// nonce; a missing one is -32602).
    #[arg(long, value_name = "MODE", value_parser = parse_nonce_mode, conflicts_with = "require_nonce")]
    nonce: Option<NonceMode>,
    /// The same as `--nonce required`: envelopes without a nonce are refused.
    #[arg(long)]
    require_nonce: bool,
    /// Most nonces remembered at once. When full, new envelopes with a nonce are
    /// refused (HTTP 503 with Retry-After) until the oldest leaves the replay
    /// window: old nonces are never forgotten early. The default sustains about
    /// 3,000 nonces per second (about 75 MB when full).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_NONCES)]
    max_nonces: usize,
    /// Accept envelopes without a timestamp (the reference's behaviour; opens a replay bypass).
    #[arg(long)]
    allow_missing_timestamp: bool,
    /// Request-serving threads: 1 runs everything on one thread (no cross-thread
    /// wake-ups: lowest latency); default: one per CPU core.
    #[arg(long, env = "ASAP_WORKERS")]
    workers: Option<usize>,
    /// Accept envelopes addressed to any agent (gateways and relays); by default a
    /// `recipient` other than this agent's id is refused with -32602.
    #[arg(long)]
    accept_any_recipient: bool,
    /// Include handler error details in -32603 responses.
    #[arg(long, env = "ASAP_DEBUG")]
    debug: bool,
    /// `/asap/ws` messages per second per connection (burst as large); 0 turns
    /// the limit off (spec 13.6: -32001, then close 1008).
    #[arg(long, env = "ASAP_WS_RATE_LIMIT", default_value_t = 10.0)]
    ws_rate_limit: f64,
    #[command(flatten)]
    hostile: HostileArgs,
    #[command(flatten)]
    auth: cli_auth::ServeAuthArgs,
    #[command(flatten)]
    webhooks: cli_webhooks::WebhookArgs,
}

/// Limits that hold under hostile load (docs/reliability.md).
#[derive(clap::Args)]
struct HostileArgs {
    /// Most open connections; beyond, new ones get 503 + Retry-After once no
    /// waiting connection can give way. Default: the descriptor limit (raised to
    /// its hard limit at startup) minus 64 minus an eighth.
    #[arg(long, env = "ASAP_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most open connections per client IP. Default: half the connection budget.
    #[arg(long, env = "ASAP_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Seconds a connection has to send a complete request head (408 / close).
    #[arg(long, env = "ASAP_HEADER_TIMEOUT", default_value_t = asap_proto::server::DEFAULT_HEADER_TIMEOUT.as_secs_f64())]
    header_timeout: f64,
    /// Longest silence, seconds, while a request body is read (408).
    #[arg(long, env = "ASAP_BODY_TIMEOUT", default_value_t = asap_proto::server::DEFAULT_BODY_TIMEOUT.as_secs_f64())]
    body_timeout: f64,
    /// Seconds a kept-alive connection may wait for its next request.
    #[arg(long, env = "ASAP_KEEP_ALIVE_TIMEOUT", default_value_t = asap_proto::server::DEFAULT_KEEP_ALIVE_TIMEOUT.as_secs_f64())]
    keep_alive_timeout: f64,
    /// Seconds from a request's head to the last byte of its body (408).
    #[arg(long, env = "ASAP_REQUEST_TIMEOUT", default_value_t = asap_proto::server::DEFAULT_REQUEST_TIMEOUT.as_secs_f64())]
    request_timeout: f64,
    /// Largest request head (request line and headers), bytes (431 beyond).
    #[arg(long, env = "ASAP_MAX_HEADER_SIZE", default_value_t = asap_proto::server::DEFAULT_MAX_HEADER_BYTES)]
    max_header_size: usize,
    /// Request-body bytes all requests together may hold at once (503 + Retry-After beyond).
    #[arg(long, env = "ASAP_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = asap_proto::server::DEFAULT_MAX_BODY_BYTES_IN_FLIGHT)]
    max_body_bytes_in_flight: usize,
}

impl HostileArgs {
    fn apply(&self, config: &mut ServerConfig) -> Result<(), String> {
        let secs = |name: &str, v: f64| {
            std::time::Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("--{name} {v}: give a positive number of seconds, e.g. 10"))
        };
        config.timeouts = asap_proto::server::Timeouts {
            header: secs("header-timeout", self.header_timeout)?,
            body: secs("body-timeout", self.body_timeout)?,
            keep_alive: secs("keep-alive-timeout", self.keep_alive_timeout)?,
            request: secs("request-timeout", self.request_timeout)?,
        };
        config.connections.max_connections = self.max_connections;
        config.connections.max_per_ip = self.max_connections_per_ip;
        config.max_header_bytes = self.max_header_size;
        if self.max_body_bytes_in_flight < config.max_request_size {
            return Err(format!(
                "--max-body-bytes-in-flight {} is below --max-request-size {}: the largest request could never pass",
                self.max_body_bytes_in_flight, config.max_request_size
            ));
        }
        config.max_body_bytes_in_flight = self.max_body_bytes_in_flight;
        Ok(())
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SyncMode {
    Normal,
    Full,
}

/// Ctrl-C, or SIGTERM (how service managers and containers stop a process).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn default_manifest(bind: SocketAddr) -> Manifest {
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:asap-rs-echo").expect("static URN is valid"),
        "asap-rs echo agent",
        env!("CARGO_PKG_VERSION"),
        "ASAP v1.1 agent in Rust (asap-rs) with the reference echo skill",
        format!("http://{bind}/asap"),
    );
    m.endpoints = Endpoint {
        asap: format!("http://{bind}/asap"),
        events: None,
    };
    m.capabilities
        .skills
        .push(Skill::new("echo", "Echo back the input"));
    m
}

// mimalloc (the `mimalloc` feature, on by default): allocation was ~15% of a request's CPU on glibc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ASAP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Send(args) => return cli_client::send(args),
        Command::Discover(args) => return cli_client::discover(args),
        Command::Health(args) => return cli_client::health(args),
        Command::Registry(args) => return cli_client::registry(args),
        Command::Webhooks(args) => cli_webhooks::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("asap: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn parse_nonce_mode(text: &str) -> Result<NonceMode, String> {
    text.parse()
}

/// `HOST:PORT` to the first address it resolves to, with an error that says what to write.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} has no port; write HOST:PORT, e.g. 127.0.0.1:8000 or localhost:8000"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "port {port:?} is not a number from 0 to 65535; write HOST:PORT, e.g. {host}:8000"
        ));
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| {
        format!("cannot resolve host {host:?} ({e}); use an IP address such as 127.0.0.1")
    })?;
    addrs.next().ok_or_else(|| {
        format!("host {host:?} resolves to no address; use an IP address such as 127.0.0.1")
    })
}

fn serve(args: ServeArgs) -> Result<(), String> {
    // Bind first, so the default manifest names the real address (also with port 0).
    let std_listener = std::net::TcpListener::bind(args.bind)
        .map_err(|e| format!("cannot bind {}: {e}", args.bind))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    let manifest = match &args.manifest {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read manifest {}: {e}", path.display()))?;
            asap_proto::error::from_slice::<Manifest>(&bytes)
                .map_err(|e| format!("invalid manifest {}: {e}", path.display()))?
        }
        None => default_manifest(addr),
    };
    let spec = RateLimitSpec::parse(&args.rate_limit)
        .map_err(|e| format!("invalid --rate-limit {:?}: {e}", args.rate_limit))?;
    let rate_limit = (!spec.is_unlimited()).then_some(spec);
    let mut config = ServerConfig {
        max_request_size: args.max_request_size,
        rate_limit,
        nonce: match (args.nonce, args.require_nonce) {
            (Some(mode), _) => mode,
            (None, true) => NonceMode::Required,
            (None, false) => NonceMode::Off,
        },
        max_nonces: args.max_nonces,
        rate_limit_by_sender: args.rate_limit_by_sender,
        require_timestamp: !args.allow_missing_timestamp,
        accept_any_recipient: args.accept_any_recipient,
        debug: args.debug,
        ..ServerConfig::default()
    };
    args.hostile.apply(&mut config)?;
    let webhook_keys = args.webhooks.apply(&mut config)?;
    let subscribers: Vec<String> = config
        .webhooks
        .subscribers()
        .iter()
        .map(|s| s.url.clone())
        .collect();
    // The connection budget follows the soft descriptor limit: take all we may.
    let fds = asap_tokio::connection::raise_descriptor_limit()
        .unwrap_or_else(|_| asap_tokio::connection::descriptor_limit());
    let (max_connections, max_per_ip) = config.connections.resolve(fds);
    let budget_line = format!(
        "connections: at most {max_connections} ({max_per_ip} per client IP), descriptor limit {}; bodies in flight: at most {} bytes",
        fds.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        config.max_body_bytes_in_flight
    );
    let nonces = match config.nonce {
        NonceMode::Off => "off".to_owned(),
        mode => format!("{mode} (at most {} remembered)", config.max_nonces),
    };
    let storage =
        asap_blocking::store::storage_config_with_db(StorageBackend::Sqlite, args.db.as_deref())
            .map_err(|e| e.to_string())?;
    let options = asap_blocking::store::SqliteOptions {
        synchronous: match args.sync {
            SyncMode::Normal => asap_blocking::store::Synchronous::Normal,
            SyncMode::Full => asap_blocking::store::Synchronous::Full,
        },
        retention: match args.retention_days {
            Some(d) if d.is_finite() && d > 0.0 => {
                Some(std::time::Duration::from_secs_f64(d * 86_400.0))
            }
            Some(d) => {
                return Err(format!(
                    "--retention-days {d}: give a positive number of days"
                ))
            }
            None => None,
        },
        ..Default::default()
    };
    let mut task_state = asap_tokio::store::TaskStateOptions::default();
    task_state.sqlite = options;
    let (recorder, shared) = asap_tokio::store::open_task_state(&storage, &task_state)?;
    if shared {
        // Several replicas on one database: the store decides replays and copies.
        config.shared_replay = Some(asap_proto::server::SharedReplay::default());
    }
    let state = match storage.backend {
        StorageBackend::Sqlite => format!(
            "SQLite {} (sync {})",
            storage.path.display(),
            match args.sync {
                SyncMode::Normal => "normal: survives agent crashes",
                SyncMode::Full => "full: survives power loss",
            }
        ),
        StorageBackend::Memory => "in memory (lost on exit)".to_owned(),
        StorageBackend::Postgres => format!(
            "PostgreSQL {} (shared by every replica on it)",
            asap_proto::store::redact_url(storage.url.as_deref().unwrap_or(""))
        ),
    };
    let mut manifest = manifest;
    if args.manifest.is_none() {
        // The built-in manifest tells the truth about where task state lives.
        manifest.capabilities.state_persistence = storage.backend != StorageBackend::Memory;
    }
    let auth_settings = args.auth.settings()?;
    if auth_settings.enabled() && manifest.auth.is_none() {
        // Tell clients a bearer token is needed, and where to get one.
        let mut oauth2 = serde_json::Map::new();
        if let Some(issuer) = &auth_settings.oidc_issuer {
            oauth2.insert("issuer".into(), issuer.clone().into());
        }
        let scope = auth_settings.required_scope.clone();
        oauth2.insert(
            "scopes".into(),
            vec![scope.unwrap_or_else(|| "asap:execute".into())].into(),
        );
        manifest.auth = Some(asap_proto::model::AuthScheme {
            schemes: vec!["bearer".into()],
            oauth2: Some(oauth2),
        });
    }
    let has_echo = manifest.has_skill("echo");
    let websocket = asap_proto::ws::SessionConfig {
        message_rate: (args.ws_rate_limit > 0.0).then_some(args.ws_rate_limit),
        message_burst: args.ws_rate_limit.max(1.0),
        ..Default::default()
    };
    let mut builder = asap_tokio::Agent::builder(manifest.clone())
        .config(config)
        .websocket(websocket)
        .stores(recorder);
    if has_echo {
        builder = builder.echo_skill("echo");
    }
    // Identity: keys fetched now, so a misconfigured IdP is a startup error.
    let auth_line = if auth_settings.enabled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let auth = rt
            .block_on(auth_settings.server_auth())
            .map_err(|e| format!("auth: {e}"))?;
        builder = builder.auth(auth);
        format!(
            "bearer tokens required on /asap, /asap/ws, /asap/metrics ({})",
            auth_settings
                .oidc_issuer
                .as_deref()
                .map(|i| format!("OIDC issuer {i}"))
                .or_else(|| auth_settings
                    .jwks_uri
                    .as_deref()
                    .map(|u| format!("JWKS {u}")))
                .unwrap_or_else(|| "local keys / introspection".to_owned())
        )
    } else {
        "off (no --oidc-issuer / --jwks-uri)".to_owned()
    };
    let mut rt = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt.enable_all().build().map_err(|e| e.to_string())?;
    let hooks_line = match (subscribers.is_empty(), config_callbacks(&args.webhooks)) {
        (true, false) => "webhooks: off".to_owned(),
        (_, callbacks) => format!(
            "webhooks: {} subscriber(s) {subscribers:?}, per-request callbacks {}; outbox with the task state",
            subscribers.len(),
            if callbacks { "on" } else { "off" }
        ),
    };
    if args.webhooks.enabled() {
        // The delivery worker runs on this runtime; the outbox shares the task-state file.
        let _guard = rt.enter();
        builder = builder.webhooks(args.webhooks.start(&storage, webhook_keys)?);
    }
    let agent = builder.build();
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
        println!("asap-rs agent {} listening on http://{addr}", manifest.id);
        println!("  base URL for clients: http://{addr}   (asap send http://{addr} --skill echo --input '{{}}')");
        println!("  POST http://{addr}/asap                          JSON-RPC asap.send");
        println!("  GET  http://{addr}/.well-known/asap/manifest.json manifest");
        println!("  GET  http://{addr}/.well-known/asap/health        health");
        println!("  task state: {state}");
        println!("  nonces: {nonces}");
        println!("  auth: {auth_line}");
        println!("  {hooks_line}");
        println!("  {budget_line}");
        println!("Press Ctrl-C to stop.");
        asap_tokio::serve(listener, agent, shutdown_signal())
            .await
            .map_err(|e| e.to_string())?;
        println!("asap-rs agent stopped");
        Ok(())
    })
}

fn config_callbacks(args: &cli_webhooks::WebhookArgs) -> bool {
    args.enabled() && args.callback_enabled()
}
