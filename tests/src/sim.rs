//! Deterministic simulation of `/asap/ws` (quinn-proto's model): several
//! [`ClientSession`]s and one server ([`Server`] core plus a [`ServerSession`]
//! per connection) over a simulated network that drops, duplicates, reorders
//! and delays frames and cuts connections, with a simulated clock and a seeded
//! RNG. Every step is a deterministic function of the [`SimConfig`] and the
//! [`Op`] list, so a failure replays from its seed and proptest shrinks it.
//!
//! Invariants checked after every step ([`Network::apply`]): no envelope's
//! handler completes twice (sender + envelope id); every event has a cause (a
//! response names an open request and correlates to its envelope, an ack
//! outcome names an open ack-required envelope, each exactly once); the
//! machines' bookkeeping matches the ledger (pending requests and acks, the
//! connection's in-flight count, the dedup window's in-flight entries);
//! memory stays under the configured caps; a deadline reported after
//! `handle_timeout(t)` is later than `t`. After [`Network::quiesce`] (the
//! network heals, every client reconnects, time runs until every machine is
//! idle), [`Network::finish`] checks that every ack-required envelope ended
//! processed exactly once with a `processed` ack, or `GaveUp` at its sender.
//!
//! The server runs each exchange the way `asap-tokio` does: handlers take
//! simulated time (an envelope's copy arriving meanwhile parks on
//! `Step::AwaitFirst`), and a connection that ends drops its running
//! exchanges unanswered (`Exchange::abandon`, so their dedup entries go).
//!
//! ```
//! use asap_tests::sim::{run, Op, SimConfig, SimRng, Kind};
//! let config = SimConfig::from_rng(&mut SimRng::new(7));
//! let ops = [Op::Send { client: 0, kind: Kind::Request }, Op::AdvanceTime(5_000)];
//! let stats = run(&config, &ops).expect("no invariant broken");
//! assert_eq!(stats.ack_required, 1);
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use asap_proto::model::{
    AckStatus, AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::reliability::{AckConfig, AckGiveUp, DedupConfig};
use asap_proto::server::{
    Exchange, FirstAnswer, HandlerError, HandlerOutcome, HealthReport, Invocation, Metrics, Now,
    RequestHead, Server, ServerConfig, SkillResult, Step,
};
use asap_proto::store::StoreError;
use asap_proto::ws::{
    frame::{PING_TEXT, PONG_TEXT},
    ClientEvent, ClientOutput, ClientSession, ClientSessionConfig, Incoming, Output, RequestHandle,
    ServerSession, SessionConfig,
};

/// 2026-01-01T00:00:00Z: the simulated wall clock's start.
const WALL0: i64 = 1_767_225_600;
/// The server's agent id.
const SERVER_URN: &str = "urn:asap:agent:sim-server";
/// Steps one `advance` may take before the simulation calls it a busy loop.
const MAX_EVENTS_PER_ADVANCE: usize = 100_000;

/// A small xorshift64* generator: the simulation's only randomness.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed` (any value, 0 included).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        // SplitMix64 step, so nearby seeds give unrelated streams and 0 is not stuck.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// A direction on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A `task.request` for the echo skill: ack-required, tracked and retransmitted.
    Request,
    /// A `task.update`: a plain request, not ack-required.
    Update,
}

/// One simulation step. Client indexes are taken modulo the number of clients;
/// each client has at most one connection, so a client index names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The client's application sends a new envelope.
    Send {
        /// Which client.
        client: u8,
        /// What it sends.
        kind: Kind,
    },
    /// The next frame on that link arrives now (whatever its delay).
    Deliver {
        /// Which way.
        dir: Dir,
        /// Whose connection.
        client: u8,
    },
    /// The next frame on that link is lost.
    DropNext {
        /// Which way.
        dir: Dir,
        /// Whose connection.
        client: u8,
    },
    /// The next frame on that link arrives twice.
    DuplicateNext {
        /// Which way.
        dir: Dir,
        /// Whose connection.
        client: u8,
    },
    /// The next two frames on that link swap places.
    Reorder {
        /// Which way.
        dir: Dir,
        /// Whose connection.
        client: u8,
    },
    /// Simulated time moves on this many milliseconds; frames arrive, handlers
    /// finish and timers fire at their instants on the way.
    AdvanceTime(u32),
    /// The client's connection is lost: both sides see it at once.
    Cut(u8),
    /// The client connects again (nothing when it is connected).
    Reconnect(u8),
}

/// The simulated world's parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of clients (1 or more).
    pub clients: usize,
    /// Seed of the network's RNG (frame delays, handler run times).
    pub seed: u64,
    /// Largest one-way delay of a frame.
    pub max_delay: Duration,
    /// Largest handler run time (`0`: handlers answer at once). Half of the
    /// runs are instant, the others take up to this long.
    pub max_handler_time: Duration,
    /// How far the server's wall clock is ahead of the clients' (negative: behind).
    pub server_skew_ms: i64,
    /// Every client's policy.
    pub client: ClientSessionConfig,
    /// Every server connection's policy.
    pub session: SessionConfig,
    /// The server's receiver dedup window (`None`: off, as in the reference;
    /// then copies run again and the simulation must notice).
    pub dedup: Option<DedupConfig>,
}

impl SimConfig {
    /// A configuration drawn from `rng`: 1-3 clients, delays up to 3 s,
    /// handlers up to 5 s, a server clock up to 20 s off, sometimes a tight
    /// connection policy ([`SessionConfig`]), small client caps
    /// (12 pending requests and acks) so that refusals happen, acks awaited
    /// until `processed` (asap-rs peers send it), jitter on or off.
    #[must_use]
    pub fn from_rng(rng: &mut SimRng) -> Self {
        let clients = 1 + rng.below(3) as usize;
        let seed = rng.next_u64();
        let max_delay = Duration::from_millis(rng.below(3_001));
        let max_handler_time = if rng.chance(1, 4) {
            Duration::ZERO
        } else {
            Duration::from_millis(rng.below(5_001))
        };
        let server_skew_ms = rng.below(40_001) as i64 - 20_000;
        let jitter = rng.chance(1, 2);
        let ack = AckConfig {
            await_processed: true,
            max_pending: 12,
            jitter_ratio: if jitter { 0.1 } else { 0.0 },
            jitter_seed: rng.next_u64(),
            ..AckConfig::default()
        };
        Self {
            clients,
            seed,
            max_delay,
            max_handler_time,
            server_skew_ms,
            client: ClientSessionConfig {
                max_pending: 12,
                ack,
                ..ClientSessionConfig::default()
            },
            session: session_config(rng),
            dedup: Some(DedupConfig::default()),
        }
    }
}

/// The reference's connection policy, or (each in some runs) one that makes
/// the rarer paths common: few requests in flight (backpressure), a tight
/// message rate (-32001 and close 1008), a short idle timeout (close 1001).
fn session_config(rng: &mut SimRng) -> SessionConfig {
    let mut session = SessionConfig::default();
    if rng.chance(1, 3) {
        session.max_in_flight = 1 + rng.below(3) as usize;
    }
    if rng.chance(1, 4) {
        session.message_rate = Some(1.0);
        session.message_burst = 3.0;
    }
    if rng.chance(1, 4) {
        session.heartbeat_interval = Duration::from_secs(10);
        session.idle_timeout = Duration::from_secs(15);
    }
    session
}

/// An invariant that broke, at which step, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The step (index into the operations; later ones are the quiescence phase).
    pub step: usize,
    /// Simulated time since the start.
    pub at: Duration,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} at {:?}: {}", self.step, self.at, self.what)
    }
}

impl std::error::Error for Violation {}

/// What a run did (to see that the faults and the happy path both happened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Ack-required envelopes sent (`task.request`).
    pub ack_required: usize,
    /// ... that ended with a `processed` ack (handler ran exactly once).
    pub acked: usize,
    /// ... whose sender gave up with the handler never run.
    pub gave_up_unprocessed: usize,
    /// ... whose sender gave up although the handler ran (its acks were lost).
    pub gave_up_processed: usize,
    /// ... of those, the ones whose request had its response envelope.
    pub gave_up_answered: usize,
    /// Plain envelopes sent (`task.update`).
    pub plain: usize,
    /// Requests answered with a response envelope.
    pub responses_ok: usize,
    /// Requests that ended with an error (timeout, connection lost, refused).
    pub responses_err: usize,
    /// Handler runs that completed.
    pub handler_runs: usize,
    /// Frames that reached their peer.
    pub frames_delivered: usize,
    /// Frames the network lost (drops, and frames on a connection that ended).
    pub frames_lost: usize,
    /// Connections opened.
    pub connections: usize,
    /// Late answers reported as pushes (an answer to a request already settled).
    pub late_answers: usize,
    /// Copies that parked while their envelope's first copy ran.
    pub copies_parked: usize,
    /// Running handlers dropped with their connection.
    pub handlers_abandoned: usize,
    /// Sends the client refused (not connected, too many pending).
    pub sends_refused: usize,
    /// Connections the server closed for the message rate (1008).
    pub closed_rate_limited: usize,
    /// Connections the server closed otherwise (1001: idle).
    pub closed_other: usize,
}

impl SimStats {
    /// Adds `other`'s counts to these (totals over many runs).
    pub fn add(&mut self, other: &SimStats) {
        self.ack_required += other.ack_required;
        self.acked += other.acked;
        self.gave_up_unprocessed += other.gave_up_unprocessed;
        self.gave_up_processed += other.gave_up_processed;
        self.gave_up_answered += other.gave_up_answered;
        self.plain += other.plain;
        self.responses_ok += other.responses_ok;
        self.responses_err += other.responses_err;
        self.handler_runs += other.handler_runs;
        self.frames_delivered += other.frames_delivered;
        self.frames_lost += other.frames_lost;
        self.connections += other.connections;
        self.late_answers += other.late_answers;
        self.copies_parked += other.copies_parked;
        self.handlers_abandoned += other.handlers_abandoned;
        self.sends_refused += other.sends_refused;
        self.closed_rate_limited += other.closed_rate_limited;
        self.closed_other += other.closed_other;
    }
}

#[derive(Debug, Clone)]
struct Frame {
    /// `None`: the server's close frame (the last thing on its link).
    text: Option<String>,
    ready_at: Duration,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    session: ServerSession,
    up: VecDeque<Frame>,
    down: VecDeque<Frame>,
    /// The server sent its close frame: it reads nothing more.
    server_closed: bool,
}

impl Conn {
    fn link(&mut self, dir: Dir) -> &mut VecDeque<Frame> {
        match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
    }
}

#[derive(Debug)]
struct Sent {
    envelope_id: String,
    /// `None` until the one `Response` event; then whether it was `Ok`.
    response: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckEnd {
    Acked(AckStatus),
    GaveUp(AckGiveUp),
}

#[derive(Debug)]
struct Client {
    urn: AgentUrn,
    session: ClientSession,
    conn: Option<Conn>,
    next_envelope: u64,
    requests: HashMap<RequestHandle, Sent>,
    /// Ack-required envelopes sent, by id, and how their tracking ended.
    acks: BTreeMap<String, Option<AckEnd>>,
    /// Every envelope id sent (both kinds).
    sent_ids: HashMap<String, Kind>,
}

impl Client {
    fn open_requests(&self) -> usize {
        self.requests
            .values()
            .filter(|s| s.response.is_none())
            .count()
    }

    fn open_acks(&self) -> usize {
        self.acks.values().filter(|e| e.is_none()).count()
    }
}

#[derive(Debug)]
enum Wait {
    /// The handler runs until `done_at`.
    Handler {
        inv: Box<Invocation>,
        done_at: Duration,
    },
    /// A copy of a running envelope, parked until the first answers.
    Parked(u64),
}

#[derive(Debug)]
struct Running {
    client: usize,
    conn: u64,
    ex: Exchange,
    wait: Wait,
}

/// The simulated world: clients, the server, the links, the clock.
#[derive(Debug)]
pub struct Network {
    config: SimConfig,
    rng: SimRng,
    base: Instant,
    now: Duration,
    step: usize,
    server: Server,
    metrics: Metrics,
    headers: http::HeaderMap,
    clients: Vec<Client>,
    running: Vec<Running>,
    /// Completed handler runs per (sender, envelope id).
    processed: HashMap<(String, String), u32>,
    next_conn: u64,
    stats: SimStats,
    trace: bool,
}

/// Runs `ops`, then the quiescence phase, then the final checks.
pub fn run(config: &SimConfig, ops: &[Op]) -> Result<SimStats, Violation> {
    run_traced(config, ops, false)
}

/// [`run`], printing every operation and frame to stderr when `trace` is set.
pub fn run_traced(config: &SimConfig, ops: &[Op], trace: bool) -> Result<SimStats, Violation> {
    let mut net = Network::new(config.clone());
    net.trace = trace;
    net.start()?;
    for op in ops {
        net.apply(op)?;
    }
    net.quiesce()?;
    net.finish()
}

/// The configuration and operations of seed `seed` (what `SIM_SEED=<seed>` replays).
#[must_use]
pub fn scenario(seed: u64) -> (SimConfig, Vec<Op>) {
    let mut rng = SimRng::new(seed);
    let config = SimConfig::from_rng(&mut rng);
    let len = 10 + rng.below(111) as usize;
    let ops = (0..len).map(|_| random_op(&mut rng)).collect();
    (config, ops)
}

/// One operation drawn from `rng`, with the weights the proptest strategy uses.
pub fn random_op(rng: &mut SimRng) -> Op {
    let client = rng.below(3) as u8;
    let dir = if rng.chance(1, 2) { Dir::Up } else { Dir::Down };
    match rng.below(100) {
        0..=19 => Op::Send {
            client,
            kind: Kind::Request,
        },
        20..=26 => Op::Send {
            client,
            kind: Kind::Update,
        },
        27..=41 => Op::Deliver { dir, client },
        42..=49 => Op::DropNext { dir, client },
        50..=56 => Op::DuplicateNext { dir, client },
        57..=62 => Op::Reorder { dir, client },
        63..=87 => Op::AdvanceTime(if rng.chance(3, 4) {
            rng.below(3_000) as u32
        } else {
            rng.below(120_000) as u32
        }),
        88..=91 => Op::Cut(client),
        _ => Op::Reconnect(client),
    }
}

impl Network {
    /// A world at time 0 with every client disconnected.
    #[must_use]
    pub fn new(config: SimConfig) -> Self {
        let base = Instant::now();
        let mut manifest = Manifest::new(
            AgentUrn::new(SERVER_URN).expect("valid URN"),
            "Simulated echo",
            "1.0.0",
            "echo server of the simulation",
            "ws://127.0.0.1:8000/asap",
        );
        manifest
            .capabilities
            .skills
            .push(Skill::new("echo", "Echo"));
        let server_config = ServerConfig {
            dedup: config.dedup,
            ..ServerConfig::default()
        };
        let mut server = Server::new(manifest, server_config, base, config.seed ^ 0x5EED);
        server.routes_mut().add_skill("echo");
        server
            .routes_mut()
            .add_kind(asap_proto::model::PayloadKind::TaskUpdate);
        let clients = (0..config.clients.max(1))
            .map(|i| Client {
                urn: AgentUrn::new(format!("urn:asap:agent:client-{i}")).expect("valid URN"),
                session: ClientSession::new(config.client.clone()),
                conn: None,
                next_envelope: 0,
                requests: HashMap::new(),
                acks: BTreeMap::new(),
                sent_ids: HashMap::new(),
            })
            .collect();
        Self {
            rng: SimRng::new(config.seed),
            config,
            base,
            now: Duration::ZERO,
            step: 0,
            server,
            metrics: Metrics::default(),
            headers: http::HeaderMap::new(),
            clients,
            running: Vec::new(),
            processed: HashMap::new(),
            next_conn: 0,
            stats: SimStats::default(),
            trace: false,
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn client_wall(&self) -> UnixTime {
        UnixTime::from_secs(WALL0).saturating_add(self.now)
    }

    fn server_wall(&self) -> UnixTime {
        let wall = self.client_wall();
        let skew = Duration::from_millis(self.config.server_skew_ms.unsigned_abs());
        if self.config.server_skew_ms >= 0 {
            wall.saturating_add(skew)
        } else {
            wall.saturating_sub(skew)
        }
    }

    fn fail(&self, what: impl Into<String>) -> Violation {
        Violation {
            step: self.step,
            at: self.now,
            what: what.into(),
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!(
                "[{:>4} {:>10.3}s] {}",
                self.step,
                self.now.as_secs_f64(),
                what()
            );
        }
    }

    /// Connects every client (time 0).
    pub fn start(&mut self) -> Result<(), Violation> {
        for ci in 0..self.clients.len() {
            self.connect(ci);
        }
        self.settle()?;
        self.check()
    }

    /// Performs one operation, lets everything it caused happen, and checks
    /// the invariants.
    pub fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        let n = self.clients.len();
        let pick = |c: u8| usize::from(c) % n;
        self.log(|| format!("op {op:?} ({n} clients)"));
        match *op {
            Op::Send { client, kind } => self.send(pick(client), kind)?,
            Op::Deliver { dir, client } => self.deliver(pick(client), dir)?,
            Op::DropNext { dir, client } => {
                if let Some(conn) = self.clients[pick(client)].conn.as_mut() {
                    let link = conn.link(dir);
                    if link.front().is_some_and(|f| f.text.is_some()) {
                        link.pop_front();
                        self.stats.frames_lost += 1;
                    }
                }
            }
            Op::DuplicateNext { dir, client } => {
                if let Some(conn) = self.clients[pick(client)].conn.as_mut() {
                    let link = conn.link(dir);
                    if let Some(f) = link.front().filter(|f| f.text.is_some()).cloned() {
                        link.insert(1, f);
                    }
                }
            }
            Op::Reorder { dir, client } => {
                if let Some(conn) = self.clients[pick(client)].conn.as_mut() {
                    let link = conn.link(dir);
                    // Frames swap, their arrival slots stay; the close stays last.
                    if link.len() >= 2 && link[0].text.is_some() && link[1].text.is_some() {
                        let first = link[0].text.take();
                        link[0].text = link[1].text.take();
                        link[1].text = first;
                    }
                }
            }
            Op::AdvanceTime(ms) => self.advance(self.now + Duration::from_millis(u64::from(ms)))?,
            Op::Cut(client) => self.cut(pick(client))?,
            Op::Reconnect(client) => {
                let ci = pick(client);
                if self.clients[ci].conn.is_none() {
                    self.connect(ci);
                }
            }
        }
        self.settle()?;
        self.check()?;
        self.step += 1;
        Ok(())
    }

    fn connect(&mut self, ci: usize) {
        let now = self.instant();
        self.next_conn += 1;
        self.stats.connections += 1;
        let id = self.next_conn;
        self.log(|| format!("client {ci} connects (connection {id})"));
        let c = &mut self.clients[ci];
        c.conn = Some(Conn {
            id,
            session: ServerSession::new(self.config.session.clone(), now),
            up: VecDeque::new(),
            down: VecDeque::new(),
            server_closed: false,
        });
        c.session.handle_connected(now);
    }

    fn send(&mut self, ci: usize, kind: Kind) -> Result<(), Violation> {
        let (now, wall) = (self.instant(), self.client_wall());
        let c = &mut self.clients[ci];
        c.next_envelope += 1;
        // The same ids at every client: dedup must key on the sender too.
        let id = format!("sim-envelope-{:06}", c.next_envelope);
        let payload = match kind {
            Kind::Request => {
                let mut input = serde_json::Map::new();
                input.insert("n".into(), c.next_envelope.into());
                Payload::TaskRequest(TaskRequest::new("sim", "echo", input))
            }
            Kind::Update => Payload::decode(
                "task.update",
                serde_json::from_value(serde_json::json!({
                    "task_id": format!("task-{}", c.next_envelope),
                    "update_type": "progress",
                    "status": "working",
                }))
                .expect("an object"),
            )
            .expect("a valid task.update"),
        };
        let envelope = Envelope::new(
            id.clone(),
            Timestamp::from_unix(wall),
            c.urn.clone(),
            AgentUrn::new(SERVER_URN).expect("valid URN"),
            payload,
        );
        match c.session.send(envelope, now, wall) {
            Ok(handle) => {
                c.requests.insert(
                    handle,
                    Sent {
                        envelope_id: id.clone(),
                        response: None,
                    },
                );
                c.sent_ids.insert(id.clone(), kind);
                match kind {
                    Kind::Request => {
                        c.acks.insert(id.clone(), None);
                        self.stats.ack_required += 1;
                    }
                    Kind::Update => self.stats.plain += 1,
                }
                self.log(|| format!("client {ci} sends {id} ({kind:?}) as {handle:?}"));
            }
            Err(e) => {
                self.stats.sends_refused += 1;
                self.log(|| format!("client {ci} cannot send: {e}"));
            }
        }
        Ok(())
    }

    fn delay(&mut self) -> Duration {
        let max = u64::try_from(self.config.max_delay.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.below(max.saturating_add(1)))
    }

    fn handler_time(&mut self) -> Duration {
        let max = u64::try_from(self.config.max_handler_time.as_millis()).unwrap_or(u64::MAX);
        if max == 0 || self.rng.chance(1, 2) {
            Duration::ZERO
        } else {
            Duration::from_millis(1 + self.rng.below(max))
        }
    }

    /// Queues a frame on a link, arriving after a random delay but never
    /// before the frames queued ahead of it (a WebSocket is a byte stream).
    fn enqueue(&mut self, ci: usize, dir: Dir, text: Option<String>) {
        let delay = self.delay();
        let now = self.now;
        if let Some(conn) = self.clients[ci].conn.as_mut() {
            let link = conn.link(dir);
            let after = link.back().map_or(Duration::ZERO, |f| f.ready_at);
            link.push_back(Frame {
                text,
                ready_at: (now + delay).max(after),
            });
        }
    }

    /// Delivers the next frame on a link, if any (and if the server reads).
    fn deliver(&mut self, ci: usize, dir: Dir) -> Result<(), Violation> {
        let now = self.instant();
        let Some(conn) = self.clients[ci].conn.as_mut() else {
            return Ok(());
        };
        match dir {
            Dir::Up => {
                if conn.server_closed {
                    self.stats.frames_lost += conn.up.len();
                    conn.up.clear();
                    return Ok(());
                }
                // Backpressure: the adapter stops reading at max_in_flight.
                if !conn.session.wants_frames() {
                    return Ok(());
                }
                let Some(frame) = conn.up.pop_front() else {
                    return Ok(());
                };
                let Some(text) = frame.text else {
                    return Ok(());
                };
                let conn_id = conn.id;
                let verdict = conn.session.handle_frame(Incoming::Text(&text), now);
                self.stats.frames_delivered += 1;
                self.log(|| format!("server <- client {ci}: {}", short(&text)));
                if verdict == asap_proto::ws::FrameVerdict::Exchange {
                    let head = RequestHead::websocket(&self.headers, Some([127, 0, 0, 1].into()));
                    let ex = self.server.handle_request(
                        &head,
                        Now {
                            monotonic: now,
                            wall: self.server_wall(),
                        },
                    );
                    self.pump(ex, ci, conn_id, &text)?;
                }
            }
            Dir::Down => {
                let Some(frame) = conn.down.pop_front() else {
                    return Ok(());
                };
                self.stats.frames_delivered += 1;
                match frame.text {
                    Some(text) => {
                        self.log(|| format!("client {ci} <- server: {}", short(&text)));
                        self.clients[ci]
                            .session
                            .handle_frame(Incoming::Text(&text), now);
                    }
                    None => {
                        self.log(|| format!("client {ci} <- server: close"));
                        self.clients[ci].session.handle_frame(Incoming::Close, now);
                        self.drop_conn(ci)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn session_mut(&mut self, ci: usize, conn: u64) -> Option<&mut ServerSession> {
        self.clients
            .get_mut(ci)?
            .conn
            .as_mut()
            .filter(|c| c.id == conn)
            .map(|c| &mut c.session)
    }

    /// Drives an exchange until it answers, waits for its handler, or parks.
    fn pump(
        &mut self,
        mut ex: Exchange,
        ci: usize,
        conn: u64,
        body: &str,
    ) -> Result<(), Violation> {
        loop {
            let wall = self.server_wall();
            let now = Now {
                monotonic: self.instant(),
                wall,
            };
            match ex.poll_step() {
                Step::ReadBody { limit } => {
                    let raw = body.as_bytes();
                    ex.handle_body(&raw[..raw.len().min(limit + 1)], wall);
                }
                Step::Admit => self.server.handle_admission(&mut ex, now),
                Step::Invoke(inv) => {
                    let run = self.handler_time();
                    if run.is_zero() {
                        let outcome = self.complete(&inv)?;
                        ex.handle_outcome(outcome, wall);
                    } else {
                        let done_at = self.now + run;
                        self.running.push(Running {
                            client: ci,
                            conn,
                            ex,
                            wait: Wait::Handler {
                                inv: Box::new(inv),
                                done_at,
                            },
                        });
                        return Ok(());
                    }
                }
                Step::Persist(_) => ex.handle_persisted(
                    Err(StoreError::Backend(
                        "no task state in the simulation".into(),
                    )),
                    wall,
                ),
                Step::QueryState(_) => ex.handle_state(
                    Err(HandlerError::failed("no task state in the simulation")),
                    wall,
                ),
                Step::CheckHealth => ex.handle_health(HealthReport::default(), now.monotonic),
                Step::RenderMetrics => ex.handle_metrics(&self.metrics),
                // No authentication in the simulation: the core never asks.
                Step::Fetch(_) | Step::AwaitFetch => {
                    return Err(Violation {
                        step: self.step,
                        at: self.now,
                        what: "a server without authentication asked for an auth fetch".into(),
                    })
                }
                // One replica: replay state is not shared, the core never claims.
                Step::Claim(_) | Step::AwaitClaim { .. } => {
                    return Err(Violation {
                        step: self.step,
                        at: self.now,
                        what: "a server without shared replay state asked for a claim".into(),
                    })
                }
                Step::Notify(text) => {
                    if let Some(s) = self.session_mut(ci, conn) {
                        s.handle_notify(text);
                    }
                }
                Step::AwaitFirst { token } => {
                    self.log(|| format!("a copy parks (token {token})"));
                    self.stats.copies_parked += 1;
                    self.running.push(Running {
                        client: ci,
                        conn,
                        ex,
                        wait: Wait::Parked(token),
                    });
                    return Ok(());
                }
                Step::Respond(mut reply) => {
                    if let Some(answered) = reply.answered.take() {
                        let woken = self.server.handle_answered(answered, wall);
                        self.wake(woken)?;
                    }
                    if let Some(record) = &reply.record {
                        self.metrics.handle_record(record, now.monotonic);
                    }
                    let body = reply.response.into_body();
                    let at = self.instant();
                    if let Some(s) = self.session_mut(ci, conn) {
                        s.handle_reply(body, at);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Resumes parked copies with the first run's answer.
    fn wake(&mut self, woken: Vec<(u64, FirstAnswer)>) -> Result<(), Violation> {
        for (token, answer) in woken {
            let Some(i) = self
                .running
                .iter()
                .position(|r| matches!(r.wait, Wait::Parked(t) if t == token))
            else {
                continue; // its connection ended: dropped with it
            };
            let Running {
                client,
                conn,
                mut ex,
                ..
            } = self.running.remove(i);
            ex.handle_first_answer(answer.as_deref(), self.server_wall());
            self.pump(ex, client, conn, "")?;
        }
        Ok(())
    }

    /// The handler: counts the run, answers like the echo agent.
    fn complete(&mut self, inv: &Invocation) -> Result<HandlerOutcome, Violation> {
        let key = (inv.envelope.sender.to_string(), inv.envelope.id.clone());
        let count = self.processed.entry(key.clone()).or_insert(0);
        *count += 1;
        let count = *count;
        self.stats.handler_runs += 1;
        self.log(|| format!("handler ran {} of {} ({count}x)", key.1, key.0));
        if count > 1 {
            return Err(self.fail(format!(
                "envelope {} of {} processed {count} times",
                key.1, key.0
            )));
        }
        Ok(match &inv.payload {
            Payload::TaskRequest(_) => HandlerOutcome::Skill(SkillResult::echo(inv)),
            other => HandlerOutcome::Reply(other.clone()),
        })
    }

    /// The connection of `ci` ended (both sides know): its running exchanges
    /// are dropped unanswered, as a server adapter drops them with the socket.
    fn drop_conn(&mut self, ci: usize) -> Result<(), Violation> {
        let Some(conn) = self.clients[ci].conn.take() else {
            return Ok(());
        };
        self.stats.frames_lost += conn.up.len() + conn.down.len();
        self.abandon(conn.id)
    }

    fn abandon(&mut self, conn: u64) -> Result<(), Violation> {
        let (gone, keep): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| r.conn == conn);
        self.running = keep;
        for mut r in gone {
            if let Some(answered) = r.ex.abandon() {
                self.log(|| format!("connection {conn} ends: a running handler is abandoned"));
                self.stats.handlers_abandoned += 1;
                let woken = self.server.handle_answered(answered, self.server_wall());
                self.wake(woken)?;
            }
        }
        Ok(())
    }

    fn cut(&mut self, ci: usize) -> Result<(), Violation> {
        if self.clients[ci].conn.is_none() {
            return Ok(());
        }
        self.log(|| format!("client {ci}'s connection is cut"));
        let now = self.instant();
        self.clients[ci].session.handle_disconnect(now);
        self.drop_conn(ci)
    }

    /// Moves every machine's output where it goes until nothing moves.
    fn settle(&mut self) -> Result<(), Violation> {
        loop {
            let mut moved = false;
            for ci in 0..self.clients.len() {
                while let Some(out) = self.clients[ci].session.poll_output() {
                    moved = true;
                    match out {
                        ClientOutput::Transmit(text) => {
                            if self.clients[ci].conn.is_some() {
                                self.enqueue(ci, Dir::Up, Some(text));
                            } else {
                                self.stats.frames_lost += 1;
                            }
                        }
                        ClientOutput::Event(event) => self.record_event(ci, event)?,
                    }
                }
                let mut closed = false;
                let mut texts = Vec::new();
                if let Some(conn) = self.clients[ci].conn.as_mut() {
                    while let Some(out) = conn.session.poll_output() {
                        if conn.server_closed {
                            return Err(Violation {
                                step: self.step,
                                at: self.now,
                                what: format!("server session output after its close: {out:?}"),
                            });
                        }
                        match out {
                            Output::Transmit(text) => texts.push(Some(text)),
                            Output::Close(c) => {
                                if c.code == asap_proto::ws::CloseFrame::POLICY_VIOLATION {
                                    self.stats.closed_rate_limited += 1;
                                } else {
                                    self.stats.closed_other += 1;
                                }
                                self.stats.frames_lost += conn.up.len();
                                conn.up.clear();
                                conn.server_closed = true;
                                closed = true;
                                texts.push(None);
                                if self.trace {
                                    eprintln!(
                                        "        server closes connection {} ({} {:?})",
                                        conn.id, c.code, c.reason
                                    );
                                }
                            }
                        }
                    }
                }
                for text in texts {
                    moved = true;
                    self.enqueue(ci, Dir::Down, text);
                }
                if closed {
                    // The adapter's connection loop ends at the close: its exchanges go.
                    let id = self.clients[ci].conn.as_ref().map_or(0, |c| c.id);
                    self.abandon(id)?;
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn record_event(&mut self, ci: usize, event: ClientEvent) -> Result<(), Violation> {
        self.log(|| format!("client {ci} event: {}", short(&format!("{event:?}"))));
        let urn = self.clients[ci].urn.to_string();
        match event {
            ClientEvent::Response { request, result } => {
                let Some(sent) = self.clients[ci].requests.get(&request) else {
                    return Err(self.fail(format!(
                        "client {ci}: a response for {request:?}, never sent"
                    )));
                };
                if sent.response.is_some() {
                    return Err(
                        self.fail(format!("client {ci}: a second response for {request:?}"))
                    );
                }
                let id = sent.envelope_id.clone();
                let ok = match result {
                    Ok(env) => {
                        if env.correlation_id.as_deref() != Some(id.as_str())
                            || env.recipient.as_str() != urn
                        {
                            return Err(self.fail(format!(
                                "client {ci}: the response to {id} is someone else's: correlation {:?}, recipient {}",
                                env.correlation_id, env.recipient
                            )));
                        }
                        let runs = self.processed.get(&(urn.clone(), id.clone())).copied();
                        if runs != Some(1) {
                            return Err(self.fail(format!(
                                "client {ci}: a response envelope for {id}, processed {runs:?} times"
                            )));
                        }
                        self.stats.responses_ok += 1;
                        true
                    }
                    Err(_) => {
                        self.stats.responses_err += 1;
                        false
                    }
                };
                if let Some(sent) = self.clients[ci].requests.get_mut(&request) {
                    sent.response = Some(ok);
                }
            }
            ClientEvent::Acked {
                envelope_id,
                status,
                ..
            } => {
                self.ack_end(ci, &envelope_id, AckEnd::Acked(status))?;
                // With `await_processed` only `processed`/`rejected` end an entry;
                // the simulated handler never fails, so only `processed` can.
                let runs = self.processed.get(&(urn, envelope_id.clone())).copied();
                if status != AckStatus::Processed || runs != Some(1) {
                    return Err(self.fail(format!(
                        "client {ci}: {envelope_id} acked {status:?}, processed {runs:?} times"
                    )));
                }
            }
            ClientEvent::GaveUp {
                envelope_id,
                reason,
            } => self.ack_end(ci, &envelope_id, AckEnd::GaveUp(reason))?,
            ClientEvent::Push(env) => {
                // The server pushes nothing here: a "push" is a late answer to a
                // frame of a request already settled, which must still be ours.
                let ours = env
                    .correlation_id
                    .as_ref()
                    .is_some_and(|id| self.clients[ci].sent_ids.contains_key(id));
                if !ours || env.recipient.as_str() != urn {
                    return Err(self.fail(format!(
                        "client {ci}: an unexplained push {:?} to {}",
                        env.correlation_id, env.recipient
                    )));
                }
                self.stats.late_answers += 1;
            }
            other => return Err(self.fail(format!("client {ci}: unexpected event {other:?}"))),
        }
        Ok(())
    }

    fn ack_end(&mut self, ci: usize, envelope_id: &str, end: AckEnd) -> Result<(), Violation> {
        match self.clients[ci].acks.get_mut(envelope_id) {
            Some(slot @ None) => {
                *slot = Some(end);
                Ok(())
            }
            Some(Some(first)) => {
                let first = *first;
                Err(self.fail(format!(
                    "client {ci}: {envelope_id} ended twice: {first:?}, then {end:?}"
                )))
            }
            None => Err(self.fail(format!(
                "client {ci}: {end:?} for {envelope_id}, which it never sent as ack-required"
            ))),
        }
    }

    /// The earliest thing that will happen on its own.
    fn next_event(&self) -> Option<Duration> {
        let since = |t: Instant| t.saturating_duration_since(self.base);
        let mut next: Option<Duration> = None;
        let mut consider = |t: Duration| next = Some(next.map_or(t, |n: Duration| n.min(t)));
        for c in &self.clients {
            if let Some(t) = c.session.poll_timeout() {
                consider(since(t));
            }
            if let Some(conn) = &c.conn {
                if let Some(t) = conn.session.poll_timeout() {
                    consider(since(t));
                }
                if let Some(f) = conn.down.front() {
                    consider(f.ready_at);
                }
                if let Some(f) = conn.up.front() {
                    if conn.server_closed || conn.session.wants_frames() {
                        consider(f.ready_at);
                    }
                }
            }
        }
        for r in &self.running {
            if let Wait::Handler { done_at, .. } = r.wait {
                consider(done_at);
            }
        }
        next
    }

    /// Runs the world up to `target`: every event at its instant.
    fn advance(&mut self, target: Duration) -> Result<(), Violation> {
        let mut events = 0;
        while let Some(at) = self.next_event() {
            if at > target {
                break;
            }
            events += 1;
            if events > MAX_EVENTS_PER_ADVANCE {
                return Err(self.fail(format!(
                    "busy loop: {events} events without reaching {target:?}"
                )));
            }
            self.now = self.now.max(at);
            self.fire_due()?;
            self.settle()?;
        }
        self.now = self.now.max(target);
        Ok(())
    }

    /// Everything due at `now`: handlers finish, frames arrive, timers fire.
    fn fire_due(&mut self) -> Result<(), Violation> {
        let now = self.instant();
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if matches!(self.running[i].wait, Wait::Handler { done_at, .. } if done_at <= self.now)
            {
                finished.push(self.running.remove(i));
            } else {
                i += 1;
            }
        }
        // Stable: handlers due at the same instant finish in the order they started.
        finished.sort_by_key(|r| match r.wait {
            Wait::Handler { done_at, .. } => done_at,
            Wait::Parked(_) => Duration::ZERO,
        });
        for r in finished {
            let Running {
                client,
                conn,
                mut ex,
                wait,
            } = r;
            if let Wait::Handler { inv, .. } = wait {
                let outcome = self.complete(&inv)?;
                ex.handle_outcome(outcome, self.server_wall());
                self.pump(ex, client, conn, "")?;
            }
        }
        self.settle()?;
        for ci in 0..self.clients.len() {
            loop {
                let due = self.clients[ci]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.down.front().is_some_and(|f| f.ready_at <= self.now));
                if !due {
                    break;
                }
                self.deliver(ci, Dir::Down)?;
                self.settle()?;
            }
            loop {
                let due = self.clients[ci].conn.as_ref().is_some_and(|c| {
                    c.up.front().is_some_and(|f| f.ready_at <= self.now)
                        && (c.server_closed || c.session.wants_frames())
                });
                if !due {
                    break;
                }
                self.deliver(ci, Dir::Up)?;
                self.settle()?;
            }
        }
        for ci in 0..self.clients.len() {
            let c = &mut self.clients[ci];
            if c.session.poll_timeout().is_some_and(|t| t <= now) {
                c.session.handle_timeout(now);
                if let Some(t) = c.session.poll_timeout().filter(|t| *t <= now) {
                    return Err(self.fail(format!(
                        "client {ci}: deadline {:?} not after the now just handled",
                        t.saturating_duration_since(self.base)
                    )));
                }
            }
            if let Some(conn) = c.conn.as_mut() {
                if conn.session.poll_timeout().is_some_and(|t| t <= now) {
                    conn.session.handle_timeout(now);
                    if let Some(t) = conn.session.poll_timeout().filter(|t| *t <= now) {
                        return Err(self.fail(format!(
                            "server session of client {ci}: deadline {:?} not after the now just handled",
                            t.saturating_duration_since(self.base)
                        )));
                    }
                }
            }
            self.settle()?;
        }
        Ok(())
    }

    /// The invariants that hold between steps.
    fn check(&self) -> Result<(), Violation> {
        let caps = &self.config.client;
        for (ci, c) in self.clients.iter().enumerate() {
            if c.session.is_connected() != c.conn.is_some() {
                return Err(self.fail(format!(
                    "client {ci}: connected {} but the network has {}",
                    c.session.is_connected(),
                    if c.conn.is_some() {
                        "a connection"
                    } else {
                        "none"
                    }
                )));
            }
            let (pending, open) = (c.session.pending_requests(), c.open_requests());
            if pending != open || pending > caps.max_pending {
                return Err(self.fail(format!(
                    "client {ci}: {pending} requests pending, {open} unanswered, cap {}",
                    caps.max_pending
                )));
            }
            let (acks, open) = (c.session.pending_acks(), c.open_acks());
            if acks != open || acks > caps.ack.max_pending {
                return Err(self.fail(format!(
                    "client {ci}: {acks} acks pending, {open} without an outcome, cap {}",
                    caps.ack.max_pending
                )));
            }
            if let Some(conn) = &c.conn {
                let running = self.running.iter().filter(|r| r.conn == conn.id).count();
                let in_flight = conn.session.in_flight();
                if !conn.server_closed && in_flight != running {
                    return Err(self.fail(format!(
                        "connection of client {ci}: {in_flight} in flight, {running} exchanges running"
                    )));
                }
                if in_flight > self.config.session.max_in_flight {
                    return Err(self.fail(format!(
                        "connection of client {ci}: {in_flight} in flight over the cap"
                    )));
                }
            }
        }
        if let Some(dedup) = self.server.dedup() {
            let stats = dedup.stats();
            let handlers = self
                .running
                .iter()
                .filter(|r| matches!(r.wait, Wait::Handler { .. }))
                .count();
            let parked = self.running.len() - handlers;
            let sent: u64 = self.clients.iter().map(|c| c.next_envelope).sum();
            if stats.in_flight != handlers
                || stats.waiters < parked
                || stats.waiters > dedup.config().max_waiters
                || dedup.len() as u64 > sent
                || stats.held_bytes > dedup.config().max_bytes
            {
                return Err(self.fail(format!(
                    "dedup window {stats:?}, {} entries: {handlers} handlers running, {parked} copies parked, {sent} envelopes sent",
                    dedup.len()
                )));
            }
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.running.is_empty()
            && self.clients.iter().all(|c| {
                c.session.pending_requests() == 0
                    && c.session.pending_acks() == 0
                    && c.conn.as_ref().is_none_or(|conn| {
                        conn.up
                            .iter()
                            .chain(&conn.down)
                            .all(|f| matches!(f.text.as_deref(), Some(PING_TEXT | PONG_TEXT)))
                    })
            })
    }

    /// Heals the network (no more faults), keeps every client connected and
    /// lets time run in 5 s steps until every machine is idle (at most
    /// 2 000 s: every ack-required envelope ends within 330 s of its send or
    /// last reconnect resend, a request within 60 s of its last frame).
    pub fn quiesce(&mut self) -> Result<(), Violation> {
        self.log(|| "quiescence".to_owned());
        for _ in 0..400 {
            for ci in 0..self.clients.len() {
                if self.clients[ci].conn.is_none() {
                    self.connect(ci);
                }
            }
            self.settle()?;
            self.check()?;
            if self.idle() {
                return Ok(());
            }
            self.advance(self.now + Duration::from_secs(5))?;
            self.check()?;
            self.step += 1;
        }
        Err(self.fail("not quiescent after 2 000 s of a healed network"))
    }

    /// The end-of-run checks; the run's statistics.
    pub fn finish(&self) -> Result<SimStats, Violation> {
        let mut stats = self.stats;
        for (ci, c) in self.clients.iter().enumerate() {
            if let Some((handle, sent)) = c.requests.iter().find(|(_, s)| s.response.is_none()) {
                return Err(self.fail(format!(
                    "client {ci}: {handle:?} ({}) never answered",
                    sent.envelope_id
                )));
            }
            for (id, end) in &c.acks {
                let runs = self
                    .processed
                    .get(&(c.urn.to_string(), id.clone()))
                    .copied()
                    .unwrap_or(0);
                match end {
                    // Checked when it happened: `processed`, and exactly one run.
                    Some(AckEnd::Acked(_)) => stats.acked += 1,
                    // The sender stopped waiting: the handler ran 0 times (every
                    // copy lost, refused by the replay window or cut off with its
                    // connection) or once (the copy ran but the `processed` ack
                    // and the response were lost, or came after the give-up);
                    // never twice, which `complete` checks at every run.
                    Some(AckEnd::GaveUp(_)) if runs == 0 => stats.gave_up_unprocessed += 1,
                    Some(AckEnd::GaveUp(_)) => {
                        stats.gave_up_processed += 1;
                        // The response proved it processed, the lost `processed`
                        // ack still ends in a give-up (a peer failure).
                        if c.requests
                            .values()
                            .any(|s| s.envelope_id == *id && s.response == Some(true))
                        {
                            stats.gave_up_answered += 1;
                        }
                    }
                    None => {
                        return Err(
                            self.fail(format!("client {ci}: {id} neither acked nor given up"))
                        )
                    }
                }
            }
        }
        Ok(stats)
    }
}

fn short(text: &str) -> String {
    if text.len() <= 160 {
        text.to_owned()
    } else {
        let mut end = 160;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    }
}
