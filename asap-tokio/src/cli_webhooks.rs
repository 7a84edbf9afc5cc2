//! `asap serve --webhook ...` and `asap webhooks dead|replay|receive`.

use std::path::PathBuf;
use std::sync::Arc;

use asap_proto::server::ServerConfig;
use asap_proto::store::{StorageBackend, WebhookStore};
use asap_proto::webhook::{OutboxConfig, SigningKeys, UrlPolicy, WebhookDispatcher};
use asap_tokio::webhook::{parse_secret, SystemResolver, Webhooks};

/// Webhook subscribers of `asap serve`.
#[derive(clap::Args)]
pub struct WebhookArgs {
    /// Subscriber URL receiving every task event (`task.update`, `task.response`),
    /// repeatable; each needs a `--webhook-secret` (paired in order). Env
    /// `ASAP_WEBHOOK_URLS`: URLs separated by commas.
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "ASAP_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    urls: Vec<String>,
    /// Signing secret of the matching `--webhook` (`whsec_<base64>`, or any text
    /// whose bytes are the key, as the reference takes it). One secret for
    /// several URLs signs them all. Env `ASAP_WEBHOOK_SECRET` (commas separate several).
    #[arg(
        long = "webhook-secret",
        value_name = "SECRET",
        env = "ASAP_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    secrets: Vec<String>,
    /// Accept per-request callbacks (`TaskRequest.config.webhook = {"url": ...}`)
    /// and sign them with this secret (share it with your callers). Without it,
    /// a request naming a callback is refused (-32602). Env `ASAP_WEBHOOK_CALLBACK_SECRET`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "ASAP_WEBHOOK_CALLBACK_SECRET",
        hide_env_values = true
    )]
    callback_secret: Option<String>,
    /// Development only: allow `http://` and loopback subscriber URLs (a receiver on
    /// this machine). Every other private, link-local or reserved range stays blocked.
    #[arg(long, env = "ASAP_WEBHOOK_ALLOW_LOOPBACK")]
    webhook_allow_loopback: bool,
}

impl WebhookArgs {
    /// Whether anything needs an outbox.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty() || self.callback_secret.is_some()
    }

    /// Whether per-request callbacks are accepted.
    pub fn callback_enabled(&self) -> bool {
        self.callback_secret.is_some()
    }

    /// Subscribers into `config`; the signing keys for the outbox.
    pub fn apply(&self, config: &mut ServerConfig) -> Result<Vec<(String, SigningKeys)>, String> {
        let hooks = &mut config.webhooks;
        hooks.policy = self.policy();
        let secrets: Vec<_> = match (self.urls.len(), self.secrets.len()) {
            (_, 0) if !self.urls.is_empty() => {
                return Err("--webhook needs --webhook-secret: deliveries are always signed".into())
            }
            (n, 1) => vec![self.secrets[0].clone(); n],
            (n, m) if n == m => self.secrets.clone(),
            (n, m) => {
                return Err(format!(
                    "{n} --webhook URLs but {m} --webhook-secret values: give one secret for all, or one per URL in the same order"
                ))
            }
        };
        let mut keys = Vec::new();
        for (i, (url, secret)) in self.urls.iter().zip(secrets).enumerate() {
            let secret =
                parse_secret(&secret).map_err(|e| format!("--webhook-secret #{}: {e}", i + 1))?;
            let name = format!("webhook:{url}");
            hooks
                .subscribe(url, name.clone())
                .map_err(|e| format!("--webhook {url}: {e}"))?;
            keys.push((name, SigningKeys::new(secret)));
        }
        if let Some(secret) = &self.callback_secret {
            let secret = parse_secret(secret).map_err(|e| format!("--callback-secret: {e}"))?;
            hooks.callback_secret_ref = Some("callback".into());
            keys.push(("callback".into(), SigningKeys::new(secret)));
        }
        Ok(keys)
    }

    fn policy(&self) -> UrlPolicy {
        if self.webhook_allow_loopback {
            UrlPolicy::local_development()
        } else {
            UrlPolicy::PRODUCTION
        }
    }

    /// Starts the outbox on the SQLite file of the task state (or in memory).
    pub fn start(
        &self,
        storage: &asap_proto::store::StorageConfig,
        keys: Vec<(String, SigningKeys)>,
    ) -> Result<Webhooks, String> {
        let store: Box<dyn WebhookStore + Send> = match storage.backend {
            StorageBackend::Sqlite => Box::new(
                asap_blocking::store::SqliteWebhookStore::open(&storage.path)
                    .map_err(|e| e.to_string())?,
            ),
            StorageBackend::Memory => Box::new(asap_proto::store::MemoryWebhookStore::new()),
            StorageBackend::Postgres => asap_tokio::store::postgres_webhook_store(storage)?,
        };
        let config = OutboxConfig {
            jitter_seed: rand_seed(),
            ..OutboxConfig::default()
        };
        let hooks = Webhooks::start(config, self.policy(), store, Arc::new(SystemResolver), keys)
            .map_err(|e| format!("cannot restore the webhook outbox: {e}"))?;
        Ok(match storage.backend {
            // Replicas share the outbox: renew leases, take over stopped replicas' events.
            StorageBackend::Postgres => {
                hooks.with_orphan_claims(asap_tokio::store::WEBHOOK_LEASE_RENEWAL)
            }
            _ => hooks,
        })
    }
}

fn rand_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

/// How far ahead of the stored maximum a replayed row is numbered.
const REPLAY_SEQ_GAP: u64 = 1 << 40;

/// `asap webhooks ...`.
#[derive(clap::Args)]
pub struct WebhooksArgs {
    #[command(subcommand)]
    command: WebhooksCommand,
}

#[derive(clap::Subcommand)]
enum WebhooksCommand {
    /// List dead letters (JSON lines: id, task, URL, attempts, reason).
    Dead(DbArgs),
    /// Send a dead letter again (run while the agent is stopped, or restart it:
    /// a running agent picks the replayed row up at its next start).
    Replay {
        /// The event id (`webhook-id`) from `asap webhooks dead`.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Run a verifying receiver: prints one JSON line per accepted delivery.
    Receive {
        /// Port on 127.0.0.1 (0 picks one; the address is printed first).
        #[arg(long, default_value_t = 9900)]
        port: u16,
        /// The secret (`whsec_<base64>` or text) the sender signs with.
        #[arg(long, env = "ASAP_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
    },
}

#[derive(clap::Args)]
struct DbArgs {
    /// The agent's state database: a SQLite file or a `postgres://…` URL (default:
    /// `ASAP_STORAGE_URL`, `ASAP_STORAGE_PATH` or ./asap_state.db).
    #[arg(long, value_name = "PATH|URL")]
    db: Option<PathBuf>,
}

impl DbArgs {
    fn open(&self) -> Result<Box<dyn WebhookStore + Send>, String> {
        let storage = asap_blocking::store::storage_config_with_db(
            StorageBackend::Sqlite,
            self.db.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        match storage.backend {
            StorageBackend::Postgres => asap_tokio::store::postgres_webhook_store(&storage),
            StorageBackend::Memory => Err(
                "the memory backend keeps no outbox between processes: give --db PATH or a postgres:// URL"
                    .into(),
            ),
            StorageBackend::Sqlite => asap_blocking::store::SqliteWebhookStore::open(&storage.path)
                .map(|s| Box::new(s) as Box<dyn WebhookStore + Send>)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Runs `asap webhooks ...`.
pub fn run(args: WebhooksArgs) -> Result<(), String> {
    match args.command {
        WebhooksCommand::Dead(db) => {
            for r in db.open()?.dead_letters().map_err(|e| e.to_string())? {
                let line = serde_json::json!({
                    "id": r.event_id,
                    "task_id": r.task_id,
                    "url": r.url,
                    "attempts": r.attempts,
                    "reason": r.dead_reason.map(|d| d.to_string()),
                    "dead_since_ms": r.next_attempt_at_ms,
                });
                println!("{line}");
            }
            Ok(())
        }
        WebhooksCommand::Replay { id, db } => {
            let mut store = db.open()?;
            let now = asap_tokio::webhook::now();
            // Only the dead letters: loading the outbox would take over (on a
            // shared store) events a running replica is delivering.
            let records = store.dead_letters().map_err(|e| e.to_string())?;
            // The outbox's own replay decides the new row (fresh attempts, new order).
            let mut d = WebhookDispatcher::restore(
                OutboxConfig::default(),
                UrlPolicy::PRODUCTION,
                records,
                now,
            )
            .map_err(|e| e.to_string())?;
            d.replay(&id, now).map_err(|e| e.to_string())?;
            let mut changes = d.take_changes();
            for c in &mut changes {
                if let asap_proto::store::WebhookChange::Put(r) = c {
                    // A running agent numbers its new events from the same
                    // maximum; a wide gap keeps this row's number unique when
                    // both are restored together (restore refuses duplicates).
                    r.seq = r.seq.saturating_add(REPLAY_SEQ_GAP);
                }
            }
            store.apply(&changes).map_err(|e| e.to_string())?;
            println!("replayed {id}: pending again, delivered by the agent at its next start (on PostgreSQL: by a running replica within a minute)");
            Ok(())
        }
        WebhooksCommand::Receive { port, secret } => {
            let secret = parse_secret(&secret)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .map_err(|e| format!("cannot bind 127.0.0.1:{port}: {e}"))?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                println!(
                    "{}",
                    serde_json::json!({"listening": format!("http://{addr}/")})
                );
                let receiver = asap_tokio::webhook::receive::Receiver::new(secret, |r| {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", serde_json::to_string(&r).unwrap_or_default());
                    let _ = out.flush();
                });
                receiver
                    .serve(listener, async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await
                    .map_err(|e| e.to_string())
            })
        }
    }
}
