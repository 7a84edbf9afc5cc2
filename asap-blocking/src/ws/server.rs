//! `/asap/ws` on threads: the upgrade, then the connection loop that moves
//! frames between the socket and [`asap_proto::ws::ServerSession`] and runs
//! each frame's exchange with the same driver as `POST /asap`.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use asap_proto::model::{Envelope, Payload};
use asap_proto::server::{Invocation, PushReplies, PushSink, RequestHead};
use asap_proto::ws::{FrameVerdict, Incoming, Output, PushError, ServerSession, Violation};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, WebSocket};

use super::wire::Wire;
use crate::server::http1::{detail, has_token, write_response, Head};
use crate::server::{lock, now, seed, wall_now, Agent, BodySource, Listener};

/// How long a closed connection waits for the peer's close frame before
/// dropping the socket (so our close frame is read, not reset).
const LINGER: Duration = Duration::from_secs(2);

/// What reaches a connection's thread.
pub(crate) enum Event {
    /// A chunk of the socket (`None`: the peer closed).
    Bytes(Option<Vec<u8>>),
    /// A `Step::Notify` frame (MessageAck) of one of its exchanges.
    Notify(String),
    /// The reply body of one of its exchanges.
    Reply(Vec<u8>),
    /// An envelope a running handler pushed.
    Push(Box<Envelope>),
    /// The server is going away.
    Shutdown,
}

/// The connection's report channel, handed to each frame's exchange.
#[derive(Clone)]
pub(crate) struct Reports(Sender<Event>);

impl Reports {
    pub(crate) fn notify(&self, text: String) {
        let _ = self.0.send(Event::Notify(text));
    }

    /// A push channel for the skill of `inv`: its payloads go to this
    /// connection as replies to the request envelope.
    pub(crate) fn push_sink(&self, inv: &Invocation, agent: &Agent) -> Arc<dyn PushSink> {
        let id = lock(&agent.inner.core).manifest().id.clone();
        Arc::new(ConnectionPush {
            reports: self.clone(),
            replies: Mutex::new(PushReplies::new(inv.envelope.clone(), id, seed())),
        })
    }
}

struct ConnectionPush {
    reports: Reports,
    replies: Mutex<PushReplies>,
}

impl PushSink for ConnectionPush {
    fn push(&self, payload: Payload) -> Result<(), PushError> {
        let envelope = lock(&self.replies).reply(payload, wall_now());
        self.reports
            .0
            .send(Event::Push(Box::new(envelope)))
            .map_err(|_| PushError::Closed)
    }
}

/// The open `/asap/ws` connections of one server: how many (bounded), and
/// their channels, to close them on shutdown.
#[derive(Debug)]
pub(crate) struct Connections {
    max: usize,
    open: Mutex<Registry>,
    closed: Condvar,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    channels: HashMap<u64, Sender<Event>>,
    shutting_down: bool,
}

/// A connection's place among the open ones, given back when dropped.
struct Slot<'a> {
    connections: &'a Connections,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.connections.open).channels.remove(&self.id);
        self.connections.closed.notify_all();
    }
}

impl Connections {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::default(),
            closed: Condvar::new(),
        }
    }

    /// Registers a connection; `None` when `max` are open. The flag says
    /// the server is already shutting down.
    fn admit(&self, events: Sender<Event>) -> Option<(Slot<'_>, bool)> {
        let mut open = lock(&self.open);
        if open.channels.len() >= self.max {
            return None;
        }
        open.next += 1;
        let id = open.next;
        open.channels.insert(id, events);
        let closing = open.shutting_down;
        Some((
            Slot {
                connections: self,
                id,
            },
            closing,
        ))
    }

    /// Tells every open connection (and later ones) to close with 1001.
    pub(crate) fn shutdown(&self) {
        let mut open = lock(&self.open);
        open.shutting_down = true;
        for events in open.channels.values() {
            let _ = events.send(Event::Shutdown);
        }
    }

    /// Waits (at most `limit`) until every connection has ended.
    pub(crate) fn wait_closed(&self, limit: Duration) {
        let open = lock(&self.open);
        let _ = self
            .closed
            .wait_timeout_while(open, limit, |o| !o.channels.is_empty());
    }
}

/// Why an upgrade request is refused (RFC 6455 section 4.2.1), or `None`.
fn refusal(head: &Head) -> Option<Response<Vec<u8>>> {
    let h = &head.headers;
    if head.method != Method::GET {
        let mut r = detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Some(r);
    }
    if !has_token(h, header::UPGRADE, "websocket") {
        let mut r = detail(
            StatusCode::UPGRADE_REQUIRED,
            "/asap/ws is a WebSocket endpoint: send `Upgrade: websocket` and `Connection: Upgrade`",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return Some(r);
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return Some(detail(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade without `Connection: Upgrade`",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut r = detail(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: send `Sec-WebSocket-Version: 13`",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Some(r);
    }
    if h.get(header::SEC_WEBSOCKET_KEY)
        .is_none_or(HeaderValue::is_empty)
    {
        return Some(detail(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade without `Sec-WebSocket-Key`",
        ));
    }
    None
}

/// `GET /asap/ws`: the handshake, then [`Connection::run`] on this thread.
pub(crate) fn upgrade(
    listener: &Arc<Listener>,
    head: Head,
    reader: BufReader<TcpStream>,
    peer: SocketAddr,
) {
    if let Some(r) = refusal(&head) {
        let _ = write_response(reader.get_ref(), &r, false, true);
        return;
    }
    // The core decides whether the upgrade may go on (the token, when auth is
    // on: 401/403/503 before upgrading); its 101 carries the caller's identity.
    let core_head = RequestHead {
        method: &head.method,
        path: "/asap/ws",
        headers: &head.headers,
        peer: Some(peer.ip()),
        transport: asap_proto::server::Transport::Http,
    };
    let agent = &listener.agent;
    let ex = lock(&agent.inner.core).handle_request(&core_head, now());
    let reply = agent.drive(
        ex,
        BodySource::Http(&mut std::io::empty(), &head.headers),
        None,
    );
    if reply.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let _ = write_response(reader.get_ref(), &reply.response, false, true);
        return;
    }
    let expires_at = reply
        .response
        .extensions()
        .get::<asap_proto::auth::Identity>()
        .and_then(|i| i.expires_at);
    let (events, inbox) = mpsc::channel();
    let Some((_slot, closing)) = listener.websockets.admit(events.clone()) else {
        let mut r = detail(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} WebSocket connections are open, the most this server keeps: retry later or use POST /asap",
                listener.websockets.max
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        let _ = write_response(reader.get_ref(), &r, false, true);
        return;
    };
    let key = head
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map_or(&[][..], HeaderValue::as_bytes);
    let accept = tungstenite::handshake::derive_accept_key(key);
    let mut switch = Response::new(Vec::new());
    *switch.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = switch.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if write_response(reader.get_ref(), &switch, false, false).is_err() {
        return;
    }
    // Frames sent right behind the request head are in the reader's buffer.
    let buffered = reader.buffer().to_vec();
    let mut wire = Wire::new(reader.into_inner(), buffered);
    let bytes = events.clone();
    if wire
        .start_reader(move |chunk| bytes.send(Event::Bytes(chunk)).is_ok())
        .is_err()
    {
        return wire.close();
    }
    // Frames a little over the request limit still get the exchange's 413
    // answer; far larger ones end the connection in the library.
    let max = lock(&listener.agent.inner.core)
        .config()
        .max_request_size
        .saturating_add(64 * 1024);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut session = ServerSession::new(listener.agent.inner.websocket.clone(), Instant::now());
    if let Some(at) = expires_at {
        session.set_token_expiry(at, now());
    }
    if closing {
        session.handle_shutdown();
    }
    let connection = Connection {
        listener: Arc::clone(listener),
        headers: Arc::new(head.headers),
        peer: peer.ip(),
        reports: Reports(events),
        session,
        ws: WebSocket::from_raw_socket(wire, Role::Server, Some(config)),
    };
    connection.run(&inbox);
}

struct Connection {
    listener: Arc<Listener>,
    headers: Arc<HeaderMap>,
    peer: IpAddr,
    reports: Reports,
    session: ServerSession,
    ws: WebSocket<Wire>,
}

impl Connection {
    /// The connection loop (see `asap_proto::ws`): frames in, exchanges
    /// out, reports and pushes back, timers, shutdown.
    fn run(mut self, inbox: &Receiver<Event>) {
        loop {
            if self
                .session
                .poll_timeout()
                .is_some_and(|at| at <= Instant::now())
            {
                self.session.handle_timeout(Instant::now());
            }
            self.read_frames();
            if !self.write_outputs() || self.session.is_closed() {
                break;
            }
            let event = match self.session.poll_timeout() {
                Some(at) => {
                    match inbox.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(event) => Some(event),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => inbox.recv().ok(),
            };
            match event {
                None => self.session.handle_timeout(Instant::now()),
                Some(Event::Bytes(chunk)) => self.ws.get_mut().feed(chunk),
                Some(Event::Notify(text)) => self.session.handle_notify(text),
                Some(Event::Reply(body)) => self.session.handle_reply(body, Instant::now()),
                Some(Event::Push(envelope)) => {
                    // A refused push (closed, peer too slow) is the handler's `Err`
                    // only when it is synchronous; here the frame is dropped.
                    let _ = self.session.push(&envelope);
                }
                Some(Event::Shutdown) => self.session.handle_shutdown(),
            }
        }
        self.linger(inbox);
        self.ws.get_ref().close();
    }

    /// Feeds the frames received so far to the session, while it wants them.
    fn read_frames(&mut self) {
        while self.session.wants_frames() {
            let now = Instant::now();
            let frame = match self.ws.read() {
                Ok(frame) => frame,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ws.get_mut().want_more();
                    return;
                }
                Err(e) => {
                    let _ = self.session.handle_frame(unreadable(&e), now);
                    return;
                }
            };
            let verdict = match &frame {
                Message::Text(text) => self.session.handle_frame(Incoming::Text(text), now),
                Message::Binary(b) => self.session.handle_frame(Incoming::Binary(b), now),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                    self.session.handle_frame(Incoming::Control, now)
                }
                Message::Close(_) => self.session.handle_frame(Incoming::Close, now),
            };
            if let (FrameVerdict::Exchange, Message::Text(text)) = (verdict, frame) {
                self.start_exchange(text);
            }
        }
    }

    /// Runs a frame's exchange on its own thread (several may be in flight).
    fn start_exchange(&self, text: Utf8Bytes) {
        let job = (
            Arc::clone(&self.listener),
            Arc::clone(&self.headers),
            self.reports.clone(),
            text.clone(),
        );
        let peer = self.peer;
        let spawned = std::thread::Builder::new()
            .name("asap-ws-frame".into())
            .spawn(move || {
                let (listener, headers, reports, text) = job;
                run_frame(&listener, &headers, peer, &text, &reports);
            });
        if spawned.is_err() {
            // No thread to be had: answer it here, late rather than never.
            run_frame(&self.listener, &self.headers, peer, &text, &self.reports);
        }
    }

    /// Writes what the session has to send; `false` when the socket failed.
    fn write_outputs(&mut self) -> bool {
        while let Some(out) = self.session.poll_output() {
            let sent = match out {
                Output::Transmit(text) => self.ws.send(Message::text(text)),
                Output::Close(c) => self.ws.close(Some(CloseFrame {
                    code: CloseCode::from(c.code),
                    reason: c.reason.into(),
                })),
            };
            if sent.is_err() {
                return false;
            }
        }
        // Pongs and close replies the library queued while reading.
        match self.ws.flush() {
            Ok(()) => true,
            Err(tungstenite::Error::Io(e)) => e.kind() == io::ErrorKind::WouldBlock,
            Err(_) => !self.session.is_closed(),
        }
    }

    /// After our close frame: read until the peer's (or its end of stream),
    /// at most [`LINGER`].
    fn linger(&mut self, inbox: &Receiver<Event>) {
        let _ = self.ws.flush();
        let until = Instant::now() + LINGER;
        loop {
            match self.ws.read() {
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ws.get_mut().want_more();
                }
                Ok(_) => continue,
                Err(_) => return,
            }
            loop {
                match inbox.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(Event::Bytes(chunk)) => {
                        self.ws.get_mut().feed(chunk);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// One frame's exchange, driven like `POST /asap` with the frame as the body.
fn run_frame(
    listener: &Listener,
    headers: &HeaderMap,
    peer: IpAddr,
    text: &Utf8Bytes,
    reports: &Reports,
) {
    let agent = &listener.agent;
    let reply = listener.permits.run(|| {
        let head = RequestHead::websocket(headers, Some(peer));
        let ex = lock(&agent.inner.core).handle_request(&head, now());
        agent.drive(ex, BodySource::Frame(text.as_bytes()), Some(reports))
    });
    let _ = reports.0.send(Event::Reply(reply.response.into_body()));
}

/// What a read error means to the session: a violation of the framing rules
/// (answered with its close code) or a connection that is simply gone.
fn unreadable(e: &tungstenite::Error) -> Incoming<'static> {
    use tungstenite::Error;
    match e {
        Error::Protocol(_) | Error::AttackAttempt => Incoming::Violation(Violation::Protocol),
        Error::Utf8(_) => Incoming::Violation(Violation::InvalidUtf8),
        Error::Capacity(_) => Incoming::Violation(Violation::TooLarge),
        _ => Incoming::Close,
    }
}
