//! A `ServerSession` and a `ClientSession` under arbitrary operation
//! sequences (quinn's model): the client's real frames and arbitrary text
//! (from the input) go to the server session, exchanges are answered by a real
//! `Server` core (`drive_inline_frame`: acks, then the response) when the
//! input says so, the server's frames and arbitrary text go to the client,
//! frames are dropped or duplicated, connections lost and time moves forward
//! by fuzzed steps. Invariants after every operation: deadlines after the
//! `now` just handled; nothing output after a close; the server session's
//! in-flight count is the exchanges it admitted and not yet answered; the
//! client's pending requests and acks are what its events leave open, under
//! their caps; every client event has a cause and comes once.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, PayloadKind, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::reliability::AckConfig;
use asap_proto::server::{
    drive_inline_frame, HandlerOutcome, Metrics, Now, Server, ServerConfig, SkillResult,
};
use asap_proto::ws::{
    ClientEvent, ClientOutput, ClientSession, ClientSessionConfig, FrameVerdict, Incoming, Output,
    RequestHandle, ServerSession, SessionConfig, Violation,
};
use libfuzzer_sys::fuzz_target;

const WALL0: i64 = 1_767_225_600;
const SERVER: &str = "urn:asap:agent:srv";

/// The fuzz input, read from the front; exhausted input reads zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn text(&mut self) -> String {
        let len = usize::from(self.byte()).min(self.0.len());
        let (t, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(t).into_owned()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn server_core(t0: Instant) -> Server {
    let mut manifest = Manifest::new(
        AgentUrn::new(SERVER).unwrap(),
        "srv",
        "1.0.0",
        "srv",
        "ws://127.0.0.1/asap",
    );
    manifest
        .capabilities
        .skills
        .push(Skill::new("echo", "echo"));
    let mut server = Server::new(manifest, ServerConfig::default(), t0, 7);
    server.routes_mut().add_skill("echo");
    server.routes_mut().add_kind(PayloadKind::TaskUpdate);
    server
}

fn envelope(n: u64, update: bool, wall: UnixTime) -> Envelope {
    let payload = if update {
        Payload::decode(
            "task.update",
            serde_json::from_str(r#"{"task_id":"t","update_type":"progress","status":"working"}"#)
                .unwrap(),
        )
        .unwrap()
    } else {
        Payload::TaskRequest(TaskRequest::new("c", "echo", serde_json::Map::new()))
    };
    Envelope::new(
        format!("fuzz-envelope-{n}"),
        Timestamp::from_unix(wall),
        AgentUrn::new("urn:asap:agent:client").unwrap(),
        AgentUrn::new(SERVER).unwrap(),
        payload,
    )
}

struct World {
    t0: Instant,
    now: Instant,
    core: Server,
    metrics: Metrics,
    headers: http::HeaderMap,
    server: ServerSession,
    server_closed: bool,
    /// Frames admitted to an exchange and not yet answered (their text).
    exchanges: VecDeque<String>,
    client: ClientSession,
    up: VecDeque<String>,
    down: VecDeque<String>,
    /// Requests sent and whether their response came.
    requests: HashMap<RequestHandle, bool>,
    /// Ack-required envelope ids sent, and whether their tracking ended.
    acks: HashMap<String, bool>,
    sent_ids: HashSet<String>,
    max_pending: usize,
    max_acks: usize,
}

impl World {
    fn wall(&self) -> UnixTime {
        UnixTime::from_secs(WALL0).saturating_add(self.now - self.t0)
    }

    fn answer(&mut self) {
        let Some(text) = self.exchanges.pop_front() else {
            return;
        };
        let now = Now {
            monotonic: self.now,
            wall: self.wall(),
        };
        let mut frames = drive_inline_frame(
            &mut self.core,
            &self.headers,
            None,
            &text,
            now,
            |inv| match &inv.payload {
                Payload::TaskRequest(_) => HandlerOutcome::Skill(SkillResult::echo(inv)),
                other => HandlerOutcome::Reply(other.clone()),
            },
            None,
            &mut self.metrics,
        );
        let reply = frames.pop().expect("a response frame");
        for notice in frames {
            self.server.handle_notify(notice);
        }
        self.server.handle_reply(reply.into_bytes(), self.now);
    }

    fn to_server(&mut self, text: &str) {
        if self.server.handle_frame(Incoming::Text(text), self.now) == FrameVerdict::Exchange {
            assert!(!self.server_closed, "an exchange admitted after the close");
            self.exchanges.push_back(text.to_owned());
        }
    }

    fn reconnect(&mut self) {
        self.server = ServerSession::new(SessionConfig::default(), self.now);
        self.server_closed = false;
        self.exchanges.clear();
        self.up.clear();
        self.down.clear();
        self.client.handle_connected(self.now);
    }

    /// Drains both sessions' output and checks the invariants.
    fn settle(&mut self) {
        while let Some(out) = self.server.poll_output() {
            assert!(
                !self.server_closed,
                "server output after its close: {out:?}"
            );
            match out {
                Output::Transmit(t) => self.down.push_back(t),
                Output::Close(_) => self.server_closed = true,
            }
        }
        if self.server_closed {
            assert!(
                self.server.is_closed(),
                "a close frame went out but the session is open"
            );
        }
        // The peer's close ends the session without a frame of ours: nothing may follow it either.
        self.server_closed |= self.server.is_closed();
        if self.server.is_closed() {
            assert!(self.server.poll_timeout().is_none() && !self.server.wants_frames());
        } else {
            assert_eq!(self.server.in_flight(), self.exchanges.len());
            let at = self
                .server
                .poll_timeout()
                .expect("an open session has a deadline");
            assert!(at > self.now, "server deadline not after now");
        }
        while let Some(out) = self.client.poll_output() {
            match out {
                ClientOutput::Transmit(t) => {
                    if self.client.is_connected() {
                        self.up.push_back(t);
                    }
                }
                ClientOutput::Event(ClientEvent::Response { request, .. }) => {
                    let answered = self
                        .requests
                        .get_mut(&request)
                        .expect("a response to no request");
                    assert!(!*answered, "a second response for {request:?}");
                    *answered = true;
                }
                ClientOutput::Event(
                    ClientEvent::Acked { envelope_id, .. }
                    | ClientEvent::GaveUp { envelope_id, .. },
                ) => {
                    let ended = self
                        .acks
                        .get_mut(&envelope_id)
                        .expect("an ack outcome for no envelope");
                    assert!(!*ended, "{envelope_id} ended twice");
                    *ended = true;
                }
                ClientOutput::Event(ClientEvent::Push(env)) => {
                    // The server here pushes nothing: only late answers to our envelopes.
                    // (Arbitrary text can claim anything: then only no panic is asked.)
                    let _ = env
                        .correlation_id
                        .as_ref()
                        .is_some_and(|c| self.sent_ids.contains(c));
                }
                ClientOutput::Event(other) => panic!("unexpected event {other:?}"),
            }
        }
        let open = self.requests.values().filter(|a| !**a).count();
        assert_eq!(self.client.pending_requests(), open);
        assert!(open <= self.max_pending);
        let open_acks = self.acks.values().filter(|e| !**e).count();
        assert_eq!(self.client.pending_acks(), open_acks);
        assert!(open_acks <= self.max_acks);
        if let Some(at) = self.client.poll_timeout() {
            assert!(at > self.now, "client deadline not after now");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.byte();
    let t0 = Instant::now();
    let max_pending = 1 + usize::from(flags % 4);
    let max_acks = 1 + usize::from((flags >> 2) % 4);
    let client_config = ClientSessionConfig {
        max_pending,
        ack: AckConfig {
            max_pending: max_acks,
            await_processed: flags & 0x10 != 0,
            ..AckConfig::default()
        },
        ..ClientSessionConfig::default()
    };
    let mut w = World {
        t0,
        now: t0,
        core: server_core(t0),
        metrics: Metrics::default(),
        headers: http::HeaderMap::new(),
        server: ServerSession::new(SessionConfig::default(), t0),
        server_closed: false,
        exchanges: VecDeque::new(),
        client: ClientSession::new(client_config),
        up: VecDeque::new(),
        down: VecDeque::new(),
        requests: HashMap::new(),
        acks: HashMap::new(),
        sent_ids: HashSet::new(),
        max_pending,
        max_acks,
    };
    w.client.handle_connected(t0);
    let mut next = 0u64;
    while !input.is_empty() {
        match input.byte() % 14 {
            op @ (0 | 1) => {
                next += 1;
                let env = envelope(next, op == 1, w.wall());
                let id = env.id.clone();
                if let Ok(handle) = w.client.send(env, w.now, w.wall()) {
                    w.requests.insert(handle, false);
                    w.sent_ids.insert(id.clone());
                    if op == 0 {
                        w.acks.insert(id, false);
                    }
                }
            }
            2 => {
                if let Some(t) = w.up.pop_front() {
                    w.to_server(&t);
                }
            }
            3 => w.answer(),
            4 => {
                if let Some(t) = w.down.pop_front() {
                    w.client.handle_frame(Incoming::Text(&t), w.now);
                }
            }
            5 => {
                w.up.pop_front();
            }
            6 => {
                w.down.pop_front();
            }
            7 => {
                if let Some(t) = w.down.front().cloned() {
                    w.down.push_front(t);
                }
            }
            8 => {
                let t = input.text();
                w.to_server(&t);
            }
            9 => {
                let t = input.text();
                w.client.handle_frame(Incoming::Text(&t), w.now);
            }
            10 => {
                // Time moves on by up to ~65 s (×16 with the high bit: ~17 min).
                let step = input.u16();
                let ms = if step & 0x8000 != 0 {
                    u64::from(step & 0x7FFF) * 32
                } else {
                    u64::from(step)
                };
                w.now += Duration::from_millis(ms);
                w.server.handle_timeout(w.now);
                w.client.handle_timeout(w.now);
            }
            11 => {
                // The connection is lost (or the server's close arrives): both sides see it.
                w.client.handle_disconnect(w.now);
                w.reconnect();
            }
            12 => {
                let _ = match input.byte() % 4 {
                    0 => w.server.handle_frame(Incoming::Binary(b"\x00"), w.now),
                    1 => w.server.handle_frame(Incoming::Control, w.now),
                    2 => w
                        .server
                        .handle_frame(Incoming::Violation(Violation::Protocol), w.now),
                    _ => w.server.handle_frame(Incoming::Close, w.now),
                };
            }
            _ => {
                w.server.handle_shutdown();
            }
        }
        w.settle();
    }
});
