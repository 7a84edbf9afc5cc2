//! `/asap/ws` on tokio: the connection loop that moves frames between the
//! socket and [`asap_proto::ws::ServerSession`], and runs each frame's
//! exchange with the same driver as `POST /asap`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use asap_proto::auth::Identity;
use asap_proto::model::{Envelope, Payload, UnixTime};
use asap_proto::server::{Invocation, PushReplies, PushSink, RequestHead, Transport};
use asap_proto::ws::{FrameVerdict, Incoming, Output, PushError, ServerSession, Violation};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::IntoResponse;
use futures_util::sink::SinkExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, Request};
use tokio::sync::mpsc;

use crate::server::{drive, lock, now, record, wall_now, Agent, BodySource};

/// What a frame's exchange reports to its connection.
enum Report {
    Notify(String),
    Reply(Vec<u8>),
    Push(Box<Envelope>),
}

/// The connection's report channel, handed to each frame's exchange.
#[derive(Clone)]
pub(crate) struct Reports(mpsc::UnboundedSender<Report>);

impl Reports {
    pub(crate) fn notify(&self, text: String) {
        let _ = self.0.send(Report::Notify(text));
    }

    /// A push channel for the skill of `inv`: its payloads go to this
    /// connection as replies to the request envelope.
    pub(crate) fn push_sink(&self, inv: &Invocation, agent: &Agent) -> Arc<dyn PushSink> {
        let id = lock(&agent.inner.core).manifest().id.clone();
        Arc::new(ConnectionPush {
            reports: self.clone(),
            replies: std::sync::Mutex::new(PushReplies::new(inv.envelope.clone(), id, rand_seed())),
        })
    }
}

fn rand_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

struct ConnectionPush {
    reports: Reports,
    replies: std::sync::Mutex<PushReplies>,
}

impl PushSink for ConnectionPush {
    fn push(&self, payload: Payload) -> Result<(), PushError> {
        let envelope = lock(&self.replies).reply(payload, wall_now());
        self.reports
            .0
            .send(Report::Push(Box::new(envelope)))
            .map_err(|_| PushError::Closed)
    }
}

/// Bytes read per socket read: frames of JSON-RPC messages are small, and
/// the library clears this much before each read (128 KiB by default).
pub(crate) const READ_BUFFER: usize = 4 * 1024;

/// `GET /asap/ws`: the upgrade, then [`connection`].
pub(crate) async fn upgrade(
    axum::extract::State(agent): axum::extract::State<Agent>,
    req: Request<axum::body::Body>,
) -> axum::response::Response {
    let (mut parts, _) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // The core decides whether the upgrade may go on (the token, when auth
    // is on: 401/403/503 before upgrading); 101 carries the caller's identity.
    let head = RequestHead {
        method: &parts.method,
        path: "/asap/ws",
        headers: &parts.headers,
        peer,
        transport: Transport::Http,
    };
    let opened = now();
    let ex = lock(&agent.inner.core).handle_request(&head, opened);
    let mut empty = BodySource::Http(axum::body::Body::empty());
    let reply = drive(&agent, ex, &mut empty, None, opened).await;
    if reply.response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return reply.response.map(axum::body::Body::from).into_response();
    }
    let expires_at = reply
        .response
        .extensions()
        .get::<Identity>()
        .and_then(|i| i.expires_at);
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    // Frames a little over the request limit still get the exchange's 413
    // answer; far larger ones end the connection in the library.
    let max = lock(&agent.inner.core)
        .config()
        .max_request_size
        .saturating_add(64 * 1024);
    let headers = Arc::new(parts.headers);
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite zero-fills its read buffer up to this size on every read.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| connection(agent, socket, headers, peer, expires_at))
}

async fn connection(
    agent: Agent,
    mut socket: WebSocket,
    headers: Arc<HeaderMap>,
    peer: Option<std::net::IpAddr>,
    expires_at: Option<UnixTime>,
) {
    let mut session = ServerSession::new(agent.inner.websocket.clone(), Instant::now());
    if let Some(at) = expires_at {
        session.set_token_expiry(at, now());
    }
    let mut shutdown = agent.inner.shutdown.subscribe();
    if *shutdown.borrow_and_update() {
        session.handle_shutdown();
    }
    let (tx, mut reports) = mpsc::unbounded_channel();
    let reports_tx = Reports(tx);
    let mut running = FuturesUnordered::new();
    loop {
        while let Some(out) = session.poll_output() {
            let msg = match out {
                Output::Transmit(text) => Message::Text(text.into()),
                Output::Close(c) => Message::Close(Some(CloseFrame {
                    code: c.code,
                    reason: c.reason.into(),
                })),
            };
            if socket.send(msg).await.is_err() {
                return;
            }
        }
        if session.is_closed() {
            // Flushes the library's answer to the peer's close frame (RFC 6455
            // 5.5.1: a close is answered with a close), bounded for a peer that stalls.
            let _ = tokio::time::timeout(CLOSE_FLUSH, socket.close()).await;
            return;
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            frame = socket.recv(), if session.wants_frames() => {
                let now = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if session.handle_frame(Incoming::Text(text.as_str()), now) == FrameVerdict::Exchange {
                            running.push(run_frame(agent.clone(), Arc::clone(&headers), peer, text, reports_tx.clone()));
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        let _ = session.handle_frame(Incoming::Binary(&b), now);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        let _ = session.handle_frame(Incoming::Control, now);
                    }
                    Some(Err(e)) => {
                        let _ = session.handle_frame(unreadable(e), now);
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        let _ = session.handle_frame(Incoming::Close, now);
                    }
                }
            }
            Some(()) = running.next(), if !running.is_empty() => {}
            Some(report) = reports.recv() => match report {
                Report::Notify(text) => session.handle_notify(text),
                Report::Reply(body) => session.handle_reply(body, Instant::now()),
                Report::Push(envelope) => {
                    if let Err(e) = session.push(&envelope) {
                        tracing::warn!(error = %e, envelope_id = %envelope.id, "asap.ws.push_dropped");
                    }
                }
            },
            () = sleep_until(deadline) => session.handle_timeout(Instant::now()),
            _ = shutdown.changed() => session.handle_shutdown(),
        }
    }
}

/// Longest wait for the closing handshake's last frame to leave.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// What a read error means to the session: a violation of the framing rules
/// (answered with its close code) or a connection that is simply gone.
fn unreadable(e: axum::Error) -> Incoming<'static> {
    use tokio_tungstenite::tungstenite::Error;
    match e.into_inner().downcast_ref::<Error>() {
        Some(Error::Protocol(_) | Error::AttackAttempt) => Incoming::Violation(Violation::Protocol),
        Some(Error::Utf8(_)) => Incoming::Violation(Violation::InvalidUtf8),
        Some(Error::Capacity(_)) => Incoming::Violation(Violation::TooLarge),
        _ => Incoming::Close,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn run_frame(
    agent: Agent,
    headers: Arc<HeaderMap>,
    peer: Option<std::net::IpAddr>,
    text: Utf8Bytes,
    reports: Reports,
) {
    let head = RequestHead::websocket(&headers, peer);
    let opened = now();
    let ex = lock(&agent.inner.core).handle_request(&head, opened);
    let reply = drive(
        &agent,
        ex,
        &mut BodySource::Frame(text),
        Some(&reports),
        opened,
    )
    .await;
    record(&agent, &reply);
    let _ = reports.0.send(Report::Reply(reply.response.into_body()));
}

/// Waits (at most `limit`) until every `/asap/ws` connection has ended.
pub(crate) async fn wait_closed(agent: &Agent, limit: Duration) {
    let _ = tokio::time::timeout(limit, agent.inner.shutdown.closed()).await;
}
