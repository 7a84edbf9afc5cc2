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

use asap_proto::client::{SendError, TransportErrorKind};
use asap_proto::discovery::{
    DiscoveryError, HealthVerdict, LiteRegistry, RegistryEntry, DEFAULT_REGISTRY_URL,
};
use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, TaskRequest, Timestamp, Ulid, UnixTime,
};
use asap_proto::task::TaskStatus;
use asap_tokio::client::{Client, ClientError, ClientOptions, Fault};
use serde_json::{json, Value};

use crate::cli_progress::Progress;

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
        Self::call(e, Peer::Agent)
    }
}

/// Who a client subcommand talks to, for messages that name it.
#[derive(Clone, Copy)]
enum Peer {
    Agent,
    Registry,
}

impl Peer {
    fn noun(self) -> &'static str {
        match self {
            Self::Agent => "the agent",
            Self::Registry => "the registry",
        }
    }
}

impl Failure {
    /// A client error as a failure whose message names the cause and the fix, once.
    fn call(e: ClientError, peer: Peer) -> Self {
        let (exit, kind) = match &e {
            ClientError::Transport { .. } => (TRANSPORT, "transport"),
            ClientError::Send(SendError::Transport(_)) => (TRANSPORT, "transport"),
            ClientError::Send(_) if e.is_circuit_open() => (REMOTE_NO, "circuit_open"),
            ClientError::Send(_) if e.remote_code().is_some() => (REMOTE_NO, "remote"),
            ClientError::Send(_) => (REMOTE_NO, "http"),
            ClientError::Discovery(_) => (REMOTE_NO, "discovery"),
            ClientError::ResponseTooLarge { .. } => (REMOTE_NO, "response_too_large"),
            _ => (LOCAL, "local"),
        };
        let fault = match e.fault() {
            Fault::Local => "local",
            Fault::Peer => "peer",
            Fault::Network => "network",
        };
        Self {
            exit,
            kind,
            fault,
            message: describe(&e, peer),
            code: e.remote_code(),
        }
    }

    /// A failed fetch of the agent's `doc` (its manifest or health document) from
    /// the base URL `base`: a 404 asks whether that is the agent's base URL.
    fn fetching(e: ClientError, base: &str, doc: &str) -> Self {
        let message = match &e {
            ClientError::Discovery(DiscoveryError::HttpStatus { status: 404, .. }) => Some(
                format!("{base} serves no ASAP {doc} (HTTP 404); is it the agent's base URL?"),
            ),
            ClientError::Discovery(DiscoveryError::HttpStatus { status, snippet }) => Some(
                format!("{base} answered HTTP {status} for its {doc}: {snippet}"),
            ),
            ClientError::Discovery(DiscoveryError::InvalidManifest(m)) => {
                Some(format!("the manifest of {base} is invalid: {m}"))
            }
            ClientError::Discovery(d) => Some(format!("the {doc} of {base} is unusable: {d}")),
            _ => None,
        };
        let f = Self::call(e, Peer::Agent);
        match message {
            Some(message) => Self { message, ..f },
            None => f,
        }
    }
}

/// What went wrong, in words: who refused or failed, and what to do about it.
fn describe(e: &ClientError, peer: Peer) -> String {
    let who = peer.noun();
    match e {
        ClientError::Config(asap_proto::client::ClientError::InsecureUrl { url }) => format!(
            "refusing plain http:// to a non-loopback host ({url}); use https:// or --allow-insecure-http"
        ),
        ClientError::Transport { kind, url, detail } => transport_text(*kind, url, detail, peer),
        ClientError::Send(SendError::Transport(t)) => match t.kind {
            TransportErrorKind::Timeout => {
                format!("{who} did not answer in time; give it longer with --timeout SECONDS")
            }
            _ => format!("the connection to {who} was lost: {}", root_cause(&t.detail)),
        },
        ClientError::Send(SendError::Remote {
            code,
            message,
            data,
        }) => {
            let data = data
                .as_ref()
                .filter(|d| !d.is_null())
                .map(|d| {
                    let text = d.to_string();
                    let short: String = text.chars().take(300).collect();
                    format!(" {short}")
                })
                .unwrap_or_default();
            if e.fault() == Fault::Local {
                format!("{who} refused the request: JSON-RPC {code} {message}{data}")
            } else {
                format!("{who} failed: JSON-RPC {code} {message}{data}")
            }
        }
        ClientError::Send(SendError::RateLimited { .. }) => {
            format!("{e}; wait a moment and try again")
        }
        ClientError::Send(SendError::CircuitOpen(_)) => e.to_string(),
        ClientError::Send(other @ SendError::ServerError { .. }) => format!("{who} failed: {other}"),
        ClientError::Send(other) => match e.fault() {
            Fault::Local => format!("{who} refused the request: {other}"),
            _ => format!("{who} sent an unusable answer: {other}"),
        },
        ClientError::Discovery(d) => format!("{who} sent an unusable answer: {d}"),
        other => other.to_string(),
    }
}

/// A transport failure with the URL once and a hint at the usual causes.
fn transport_text(kind: TransportErrorKind, url: &str, detail: &str, peer: Peer) -> String {
    let origin = origin(url);
    let cause = root_cause(detail);
    match kind {
        TransportErrorKind::Connect => {
            let port = origin
                .rsplit_once(':')
                .map(|(_, p)| p)
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()));
            let hint = match (peer, port) {
                (Peer::Agent, Some(port)) => {
                    format!("is the agent running, and listening on port {port}?")
                }
                (Peer::Agent, None) => "is the agent running, and is the URL right?".to_owned(),
                (Peer::Registry, _) => "is the registry URL right?".to_owned(),
            };
            format!("cannot connect to {origin}: {cause}; {hint}")
        }
        TransportErrorKind::Timeout => format!(
            "no answer from {origin} in time ({cause}); give it longer with --timeout SECONDS"
        ),
        _ => format!("the connection to {origin} was lost: {cause}"),
    }
}

/// `scheme://host:port` of a URL (the part a connection failure is about).
fn origin(url: &str) -> &str {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find('/').map_or(url.len(), |j| i + 3 + j);
            &url[..end]
        }
        None => url,
    }
}

/// The innermost cause of an HTTP library's `a: b: c` error chain.
fn root_cause(detail: &str) -> &str {
    detail.rsplit(": ").next().unwrap_or(detail).trim()
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
                eprintln!("asap: {}", f.message);
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
    let progress = Progress::start(
        format!("fetching the manifest of {}", args.url),
        args.opts.json,
    );
    let mut manifest = None;
    let recipient = match &args.recipient {
        Some(r) => AgentUrn::new(r.as_str())
            .map_err(|e| Failure::usage(format!("invalid --recipient: {e}")))?,
        None => {
            let m = client
                .discover(&args.url)
                .await
                .map_err(|e| Failure::fetching(e, &args.url, "manifest"))?;
            let id = m.id.clone();
            manifest = Some(m);
            id
        }
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
    progress.set(format!(
        "waiting for {} to run skill '{}'",
        envelope.recipient, args.skill
    ));
    let sent = if websocket {
        send_ws(&args, envelope, client.authorization().await?, &progress).await
    } else {
        client.send(&envelope).await.map_err(Failure::from)
    };
    let reply = match sent {
        Ok(reply) => reply,
        Err(f) if f.code == Some(asap_proto::jsonrpc::codes::METHOD_NOT_FOUND) => {
            // The agent has no such skill: name the ones its manifest offers.
            let manifest = match manifest {
                Some(m) => Some(m),
                None => client.discover(&args.url).await.ok(),
            };
            return Err(match manifest {
                Some(m) => no_such_skill(f, &m, &args.skill),
                None => f,
            });
        }
        Err(f) => return Err(f),
    };
    drop(progress);
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

/// A -32601 for `skill` restated with what the agent offers instead, when its
/// manifest does not list `skill` (else the agent's own answer stands).
fn no_such_skill(f: Failure, m: &Manifest, skill: &str) -> Failure {
    if m.has_skill(skill) {
        return f;
    }
    let offers: Vec<&str> = m
        .capabilities
        .skills
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    let offers = if offers.is_empty() {
        "it lists no skills".to_owned()
    } else {
        format!("it offers: {}", offers.join(", "))
    };
    Failure {
        message: format!("no skill '{skill}' at {}; {offers}", m.id),
        ..f
    }
}

/// `asap send` over `/asap/ws`, printing pushes with `--watch`.
async fn send_ws(
    args: &SendArgs,
    envelope: Envelope,
    authorization: Option<http::HeaderValue>,
    progress: &Progress,
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
            progress.eprintln(&serde_json::to_string(&update).unwrap_or_default());
        } else {
            progress.eprintln(&format!(
                "{} {}",
                update.payload_type,
                Value::Object(update.payload)
            ));
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
                let client = client(&args.opts, None, 1)?;
                let progress = Progress::start(
                    format!("fetching the manifest of {}", args.url),
                    args.opts.json,
                );
                let m = client
                    .discover(&args.url)
                    .await
                    .map_err(|e| Failure::fetching(e, &args.url, "manifest"))?;
                drop(progress);
                Ok((
                    serde_json::to_value(&*m).unwrap_or(Value::Null),
                    manifest_text(&m),
                    OK,
                ))
            })
        }),
    )
}

/// The manifest as people read it: who, what it offers, where, how to
/// authenticate, how long it may be cached (`--json` prints the document).
fn manifest_text(m: &Manifest) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut s = format!("{} {}  ({})\n", m.name, m.version, m.id);
    if !m.description.is_empty() {
        s.push_str(&format!("  {}\n", m.description));
    }
    let skills = &m.capabilities.skills;
    if skills.is_empty() {
        s.push_str("  skills: none\n");
    } else {
        s.push_str(&format!("  skills ({}):\n", skills.len()));
        let width = skills.iter().map(|k| k.id.len()).max().unwrap_or(0);
        for skill in skills {
            s.push_str(&format!("    {:width$}  {}\n", skill.id, skill.description));
        }
    }
    if !m.capabilities.mcp_tools.is_empty() {
        s.push_str(&format!(
            "  MCP tools: {}\n",
            m.capabilities.mcp_tools.join(", ")
        ));
    }
    s.push_str("  endpoints:\n");
    s.push_str(&format!("    asap       {}\n", m.endpoints.asap));
    if let Some(events) = &m.endpoints.events {
        s.push_str(&format!("    events     {events}\n"));
    }
    s.push_str(&format!("  auth:        {}\n", auth_text(m.auth.as_ref())));
    s.push_str(&format!("  cache TTL:   {} s\n", m.ttl_seconds));
    s.push_str(&format!(
        "  state kept:  {}   streaming: {}   envelope version: {}\n",
        yes_no(m.capabilities.state_persistence),
        yes_no(m.capabilities.streaming),
        m.capabilities.asap_version
    ));
    s
}

/// `none`, or the schemes with the OAuth2 details clients need.
fn auth_text(auth: Option<&asap_proto::model::AuthScheme>) -> String {
    let Some(auth) = auth else {
        return "none".to_owned();
    };
    let mut text = auth.schemes.join(", ");
    if let Some(oauth2) = &auth.oauth2 {
        let mut details = Vec::new();
        for (key, label) in [
            ("issuer", "issuer"),
            ("token_url", "token URL"),
            ("authorization_url", "authorization URL"),
        ] {
            if let Some(v) = oauth2.get(key).and_then(Value::as_str) {
                details.push(format!("{label} {v}"));
            }
        }
        if let Some(scopes) = oauth2.get("scopes") {
            let scopes = match scopes {
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(" "),
                Value::Object(o) => o.keys().cloned().collect::<Vec<_>>().join(" "),
                other => other.to_string(),
            };
            details.push(format!("scopes {scopes}"));
        }
        if !details.is_empty() {
            text.push_str(&format!(" (OAuth2: {})", details.join(", ")));
        }
    }
    text
}

/// `asap health URL`.
pub fn health(args: HealthArgs) -> ExitCode {
    let json = args.opts.json;
    finish(
        json,
        runtime().and_then(|rt| {
            rt.block_on(async {
                check_base_url(&args.url)?;
                let v = client(&args.opts, None, 1)?
                    .health_check(&args.url)
                    .await
                    .map_err(|e| Failure::fetching(e, &args.url, "health document"))?;
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
                let reg = client(&args.opts, None, 1)?
                    .registry(&args.url)
                    .await
                    .map_err(|e| Failure::call(e, Peer::Registry))?;
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
