//! `asap send | discover | health | registry`: talking to agents from a shell.
//!
//! Exit codes (also in `asap --help`):
//! 0 ok · 1 the agent or registry said no (JSON-RPC error, HTTP error status,
//! invalid answer, task failed, unhealthy, circuit open, no registry match) ·
//! 2 usage or local error (bad URL, plain http:// off loopback, bad --input) ·
//! 3 transport failure (connection refused, timeout, DNS, TLS).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use asap_proto::discovery::{HealthVerdict, LiteRegistry, RegistryEntry, DEFAULT_REGISTRY_URL};
use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, TaskRequest, Timestamp, Ulid, UnixTime,
};
use asap_proto::task::TaskStatus;
use asap_tokio::client::{Client, ClientError, ClientOptions, Fault};
use serde_json::{json, Value};

/// The exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes (send, discover, health, registry):
  0  ok
  1  the agent or registry said no: JSON-RPC error, HTTP error status, invalid answer,
     task failed, agent unhealthy, circuit open, no registry entry with --skill
  2  usage or local error: bad arguments, bad URL, plain http:// to a non-loopback host
     without --allow-insecure-http, --input not a JSON object
  3  transport failure: connection refused, timeout, DNS, TLS
With --json, results go to stdout as one JSON document; failures too, as
{\"error\": {\"kind\", \"fault\", \"message\", \"code\"}}.";

const OK: u8 = 0;
const REMOTE_NO: u8 = 1;
const LOCAL: u8 = 2;
const TRANSPORT: u8 = 3;

/// Options every client subcommand takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// Print one JSON document on stdout (for scripts).
    #[arg(long)]
    json: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Allow plain http:// to hosts other than localhost/127.0.0.1/::1.
    #[arg(long)]
    allow_insecure_http: bool,
}

/// `asap send`.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// Agent base URL (POST {URL}/asap); `ws://`/`wss://` sends over {URL}/asap/ws.
    url: String,
    /// Print the envelopes the agent pushes while the task runs (task.update
    /// progress), as they arrive; implies the WebSocket transport.
    #[arg(long)]
    watch: bool,
    /// Skill to run (TaskRequest.skill_id).
    #[arg(long)]
    skill: String,
    /// Skill input, a JSON object.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Sender URN.
    #[arg(long, default_value = "urn:asap:agent:asap-cli")]
    sender: String,
    /// Recipient URN (default: the id in the agent's manifest, discovered first).
    #[arg(long)]
    recipient: Option<String>,
    /// Conversation id (default: a new ULID).
    #[arg(long)]
    conversation: Option<String>,
    /// Total attempts on 5xx/429/connect errors/timeouts (1 = no retries).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    #[command(flatten)]
    auth: crate::cli_auth::SendAuthArgs,
    #[command(flatten)]
    opts: ClientOpts,
}

/// `asap discover`.
#[derive(clap::Args, Debug)]
pub struct DiscoverArgs {
    /// Agent base URL (GET {URL}/.well-known/asap/manifest.json).
    url: String,
    #[command(flatten)]
    opts: ClientOpts,
}

/// `asap health`.
#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// Agent base URL (GET {URL}/.well-known/asap/health).
    url: String,
    #[command(flatten)]
    opts: ClientOpts,
}

/// `asap registry`.
#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// Lite Registry JSON URL.
    #[arg(long, default_value = DEFAULT_REGISTRY_URL)]
    url: String,
    /// Only agents offering this skill (exact match); none found exits 1.
    #[arg(long)]
    skill: Option<String>,
    #[command(flatten)]
    opts: ClientOpts,
}

/// A failure to report: exit code, JSON kind, fault, message, JSON-RPC code.
struct Failure {
    exit: u8,
    kind: &'static str,
    fault: &'static str,
    message: String,
    code: Option<i64>,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: LOCAL,
            kind: "usage",
            fault: "local",
            message: message.into(),
            code: None,
        }
    }

    fn remote(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            exit: REMOTE_NO,
            kind,
            fault: "peer",
            message: message.into(),
            code: None,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let (exit, kind) = match &e {
            ClientError::Transport { .. } => (TRANSPORT, "transport"),
            ClientError::Send(_) if e.is_circuit_open() => (REMOTE_NO, "circuit_open"),
            ClientError::Send(_) if e.remote_code().is_some() => (REMOTE_NO, "remote"),
            ClientError::Send(_) => (REMOTE_NO, "http"),
            ClientError::Discovery(_) => (REMOTE_NO, "discovery"),
            ClientError::ResponseTooLarge { .. } => (REMOTE_NO, "response_too_large"),
            _ => (LOCAL, "local"),
        };
        let message = match &e {
            ClientError::Config(asap_proto::client::ClientError::InsecureUrl { url }) => format!(
                "refusing plain http:// to a non-loopback host ({url}); use https:// or --allow-insecure-http"
            ),
            other => other.to_string(),
        };
        Self {
            exit,
            kind,
            fault: match e.fault() {
                Fault::Local => "local",
                Fault::Peer => "peer",
                Fault::Network => "network",
            },
            message,
            code: e.remote_code(),
        }
    }
}

/// Refuses an endpoint URL where the agent's base URL belongs, naming the fix:
/// the banner of `asap serve` prints the endpoint, and clients add `/asap` themselves.
fn check_base_url(url: &str) -> Result<(), Failure> {
    let trimmed = url.trim_end_matches('/');
    for endpoint in [
        "/asap",
        "/.well-known/asap/manifest.json",
        "/.well-known/asap/health",
    ] {
        if let Some(base) = trimmed.strip_suffix(endpoint) {
            if base.contains("://") && !base.ends_with(':') && !base.ends_with('/') {
                return Err(Failure::usage(format!(
                    "{url} is an endpoint of the agent; pass the agent's base URL {base}"
                )));
            }
        }
    }
    Ok(())
}

fn client(opts: &ClientOpts, base: Option<&str>, attempts: u32) -> Result<Client, Failure> {
    let timeout = Duration::try_from_secs_f64(opts.timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Failure::usage(format!("invalid --timeout {}", opts.timeout)))?;
    let mut options = ClientOptions::default()
        .timeout(timeout)
        .allow_insecure_http(opts.allow_insecure_http)
        .retry_policy(asap_proto::reliability::RetryPolicy {
            max_attempts: attempts.max(1),
            ..Default::default()
        });
    if let Some(url) = base {
        options = options.base_url(url);
    }
    Ok(Client::new(options)?)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            exit: LOCAL,
            kind: "local",
            fault: "local",
            message: format!("cannot start the async runtime: {e}"),
            code: None,
        })
}

/// Prints the result or the failure and returns the exit code.
fn finish(json: bool, result: Result<(Value, String, u8), Failure>) -> ExitCode {
    match result {
        Ok((doc, text, code)) => {
            if json {
                println!("{doc}");
            } else {
                print!("{text}");
            }
            ExitCode::from(code)
        }
        Err(f) => {
            if json {
                println!(
                    "{}",
                    json!({"error": {"kind": f.kind, "fault": f.fault, "message": f.message, "code": f.code}})
                );
            } else {
                eprintln!("asap: {} error ({}): {}", f.kind, f.fault, f.message);
            }
            ExitCode::from(f.exit)
        }
    }
}

fn random_u128() -> u128 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut b);
    u128::from_le_bytes(b)
}

/// `asap send URL --skill S --input JSON`.
pub fn send(args: SendArgs) -> ExitCode {
    let json = args.opts.json;
    finish(json, runtime().and_then(|rt| rt.block_on(run_send(args))))
}

async fn run_send(args: SendArgs) -> Result<(Value, String, u8), Failure> {
    let input = match serde_json::from_str::<Value>(&args.input) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(Failure::usage("--input must be a JSON object")),
        Err(e) => return Err(Failure::usage(format!("--input is not JSON: {e}"))),
    };
    let sender = AgentUrn::new(args.sender.as_str())
        .map_err(|e| Failure::usage(format!("invalid --sender: {e}")))?;
    check_base_url(&args.url)?;
    let client = args
        .auth
        .apply(client(&args.opts, Some(&args.url), args.attempts)?)
        .map_err(Failure::usage)?;
    let recipient = match &args.recipient {
        Some(r) => AgentUrn::new(r.as_str())
            .map_err(|e| Failure::usage(format!("invalid --recipient: {e}")))?,
        None => client.discover(&args.url).await?.id.clone(),
    };
    let now = UnixTime::from_system_time(SystemTime::now());
    let conversation = args
        .conversation
        .clone()
        .unwrap_or_else(|| Ulid::new(now, random_u128()).to_string());
    let envelope = Envelope::new(
        Ulid::new(now, random_u128()).to_string(),
        Timestamp::from_unix(now),
        sender,
        recipient,
        Payload::TaskRequest(TaskRequest::new(conversation, args.skill.as_str(), input)),
    );
    let websocket = args.watch || args.url.starts_with("ws://") || args.url.starts_with("wss://");
    let reply = if websocket {
        send_ws(&args, envelope, client.authorization().await?).await?
    } else {
        client.send(&envelope).await?
    };
    let doc = serde_json::to_value(&reply).unwrap_or(Value::Null);
    let mut text = format!(
        "{} from {} (id {}, correlation {})\n",
        reply.payload_type,
        reply.sender,
        reply.id,
        reply.correlation_id.as_deref().unwrap_or("-")
    );
    let mut code = OK;
    match reply.payload() {
        Ok(Payload::TaskResponse(r)) => {
            text.push_str(&format!("task {}: {}\n", r.task_id, r.status.as_str()));
            if r.status == TaskStatus::Failed {
                code = REMOTE_NO;
            }
            if let Some(result) = &r.result {
                text.push_str(&pretty(&Value::Object(result.clone())));
            }
        }
        _ => text.push_str(&pretty(&Value::Object(reply.payload.clone()))),
    }
    Ok((doc, text, code))
}

/// `asap send` over `/asap/ws`, printing pushes with `--watch`.
async fn send_ws(
    args: &SendArgs,
    envelope: Envelope,
    authorization: Option<http::HeaderValue>,
) -> Result<Envelope, Failure> {
    use asap_tokio::ws::{WsClient, WsClientConfig};
    use futures_util::StreamExt as _;
    let mut config = WsClientConfig {
        reconnect: false,
        authorization,
        ..WsClientConfig::default()
    };
    if args.opts.allow_insecure_http {
        config.http_policy = asap_proto::client::HttpPolicy::AllowInsecure;
    }
    if let Ok(t) = Duration::try_from_secs_f64(args.opts.timeout) {
        config.session.request_timeout = t;
    }
    let ws = WsClient::connect(&args.url, config).await?;
    let mut pushes = if args.watch { ws.pushes() } else { None };
    let json = args.opts.json;
    let show = |update: Envelope| {
        if json {
            eprintln!("{}", serde_json::to_string(&update).unwrap_or_default());
        } else {
            eprintln!("{} {}", update.payload_type, Value::Object(update.payload));
        }
    };
    let send = ws.send(envelope);
    tokio::pin!(send);
    let reply = loop {
        tokio::select! {
            // Pushes already received print before the response that follows them.
            biased;
            Some(update) = async {
                match pushes.as_mut() {
                    Some(p) => p.next().await,
                    None => std::future::pending().await,
                }
            } => show(update),
            r = &mut send => break r,
        }
    };
    if let Some(p) = pushes.as_mut() {
        while let Some(Some(update)) = futures_util::FutureExt::now_or_never(p.next()) {
            show(update);
        }
    }
    ws.close();
    let reply = reply.map_err(ClientError::Send);
    Ok(reply?)
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// `asap discover URL`.
pub fn discover(args: DiscoverArgs) -> ExitCode {
    let json = args.opts.json;
    finish(
        json,
        runtime().and_then(|rt| {
            rt.block_on(async {
                check_base_url(&args.url)?;
                let m = client(&args.opts, None, 1)?.discover(&args.url).await?;
                Ok((
                    serde_json::to_value(&*m).unwrap_or(Value::Null),
                    manifest_text(&m),
                    OK,
                ))
            })
        }),
    )
}

fn manifest_text(m: &Manifest) -> String {
    let mut s = format!(
        "{}  {} {} (ASAP {})\n  {}\n  endpoint: {}\n",
        m.id, m.name, m.version, m.capabilities.asap_version, m.description, m.endpoints.asap
    );
    if let Some(events) = &m.endpoints.events {
        s.push_str(&format!("  events:   {events}\n"));
    }
    s.push_str("  skills:\n");
    for skill in &m.capabilities.skills {
        s.push_str(&format!("    {}  {}\n", skill.id, skill.description));
    }
    s.push_str(&format!(
        "  auth: {}  ttl: {} s\n",
        if m.auth.is_some() { "required" } else { "none" },
        m.ttl_seconds
    ));
    s
}

/// `asap health URL`.
pub fn health(args: HealthArgs) -> ExitCode {
    let json = args.opts.json;
    finish(
        json,
        runtime().and_then(|rt| {
            rt.block_on(async {
                check_base_url(&args.url)?;
                let v = client(&args.opts, None, 1)?.health_check(&args.url).await?;
                Ok(health_output(&v))
            })
        }),
    )
}

fn health_output(v: &Arc<HealthVerdict>) -> (Value, String, u8) {
    let doc = json!({
        "healthy": v.is_healthy(),
        "health": v.status().map(|s| serde_json::to_value(s).unwrap_or(Value::Null)),
    });
    let mut text = if v.is_healthy() {
        "healthy".to_owned()
    } else {
        "UNHEALTHY".to_owned()
    };
    if let Some(s) = v.status() {
        text.push_str(&format!(
            "  {} {} (ASAP {}), up {:.2} s",
            s.agent_id, s.version, s.asap_version, s.uptime_seconds
        ));
        if let Some(load) = &s.load {
            text.push_str(&format!(
                ", {} active tasks, queue {}",
                load.active_tasks, load.queue_depth
            ));
        }
    }
    text.push('\n');
    (doc, text, if v.is_healthy() { OK } else { REMOTE_NO })
}

/// `asap registry [--url U] [--skill S]`.
pub fn registry(args: RegistryArgs) -> ExitCode {
    let json = args.opts.json;
    finish(
        json,
        runtime().and_then(|rt| {
            rt.block_on(async {
                let reg = client(&args.opts, None, 1)?.registry(&args.url).await?;
                registry_output(&reg, args.skill.as_deref())
            })
        }),
    )
}

fn registry_output(
    reg: &LiteRegistry,
    skill: Option<&str>,
) -> Result<(Value, String, u8), Failure> {
    let entries: Vec<&RegistryEntry> = match skill {
        Some(s) => reg.find_by_skill(s),
        None => reg.agents.iter().collect(),
    };
    if let Some(s) = skill {
        if entries.is_empty() {
            return Err(Failure::remote(
                "not_found",
                format!("no agent in the registry offers skill {s:?}"),
            ));
        }
    }
    let doc = match skill {
        Some(_) => serde_json::to_value(&entries).unwrap_or(Value::Null),
        None => serde_json::to_value(reg).unwrap_or(Value::Null),
    };
    let mut text = format!(
        "registry {} (updated {}): {} of {} agents\n",
        reg.version,
        reg.updated_at,
        entries.len(),
        reg.agents.len()
    );
    for e in entries {
        let endpoint = e
            .endpoints
            .get("http")
            .or_else(|| e.endpoints.iter().next().map(|(_, v)| v))
            .unwrap_or("-");
        text.push_str(&format!(
            "{}  {}  [{}]  {}\n",
            e.id,
            e.name,
            e.skills.join(", "),
            endpoint
        ));
    }
    Ok((doc, text, OK))
}
