//! [`WsClient`]: an agent's `/asap/ws`, kept open and reconnected, driving
//! [`asap_proto::ws::ClientSession`] on a tokio task.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use asap_proto::client::{
    BaseUrl, CallError, HttpPolicy, SendError, TransportError, TransportErrorKind,
};
use asap_proto::model::{Envelope, UnixTime};
use asap_proto::reliability::{CircuitBreaker, CircuitBreakerConfig, JitterSource};
use asap_proto::ws::{
    ClientEvent, ClientOutput, ClientSession, ClientSessionConfig, Incoming, RequestHandle,
    RECONNECT_BACKOFF,
};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Settings of a [`WsClient`].
#[derive(Debug, Clone)]
pub struct WsClientConfig {
    /// Request timeout and ack policy.
    pub session: ClientSessionConfig,
    /// Whether plain `ws://` is allowed for hosts other than loopback.
    pub http_policy: HttpPolicy,
    /// Reconnect after a lost connection (1, 2, 4 … 30 s, jittered). Default on.
    pub reconnect: bool,
    /// Circuit breaker fed by ack give-ups (`None`: no breaker).
    pub breaker: Option<CircuitBreakerConfig>,
    /// Pushed envelopes buffered for [`WsClient::pushes`] before the oldest are dropped.
    pub push_buffer: usize,
    /// `Authorization` value sent on the upgrade request (and on reconnects):
    /// the server checks the token there and binds every frame to it.
    /// [`Client::authorization`](crate::client::Client::authorization) gives one.
    pub authorization: Option<http::HeaderValue>,
}

impl Default for WsClientConfig {
    fn default() -> Self {
        Self {
            session: ClientSessionConfig::default(),
            http_policy: HttpPolicy::LoopbackOnly,
            reconnect: true,
            breaker: Some(CircuitBreakerConfig::default()),
            push_buffer: 256,
            authorization: None,
        }
    }
}

enum Command {
    Send(Box<Envelope>, oneshot::Sender<Result<Envelope, SendError>>),
    Close,
}

/// A connection to an agent's `/asap/ws` that survives disconnects: `send`
/// awaits the correlated response; acks, retransmission, heartbeat answers
/// and reconnects happen on its task. Cheap to clone.
///
/// ```no_run
/// # async fn demo(envelope: asap_proto::model::Envelope) -> Result<(), Box<dyn std::error::Error>> {
/// use asap_tokio::ws::{WsClient, WsClientConfig};
/// use futures_util::StreamExt;
/// let client = WsClient::connect("ws://127.0.0.1:8000", WsClientConfig::default()).await?;
/// let mut pushes = client.pushes().expect("taken once");
/// let response = client.send(envelope).await?;
/// while let Some(update) = pushes.next().await { println!("{}", update.payload_type); }
/// # let _ = response; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WsClient {
    commands: mpsc::UnboundedSender<Command>,
    pushes: std::sync::Arc<std::sync::Mutex<Option<Pushes>>>,
    url: String,
}

/// The envelopes an agent pushed (task updates, late responses), as a [`Stream`].
#[derive(Debug)]
pub struct Pushes(mpsc::Receiver<Envelope>);

impl Stream for Pushes {
    type Item = Envelope;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope>> {
        self.0.poll_recv(cx)
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn wall_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

fn transport(kind: TransportErrorKind, detail: impl Into<String>) -> SendError {
    SendError::Transport(TransportError::new(kind, detail))
}

impl WsClient {
    /// Connects to the agent at `base_url` (`ws://host:port`, `wss://…`, or
    /// `http(s)://…`, spec 13.1: `/asap/ws` is appended). The first connect
    /// must succeed; later losses reconnect in the background.
    pub async fn connect(base_url: &str, config: WsClientConfig) -> Result<Self, CallError> {
        let url = BaseUrl::parse(base_url, config.http_policy)?.websocket_url();
        let socket = match tokio_tungstenite::connect_async(upgrade_request(
            &url,
            config.authorization.as_ref(),
        )?)
        .await
        {
            Ok((socket, _)) => socket,
            Err(e) => {
                return Err(CallError::Transport {
                    kind: TransportErrorKind::Connect,
                    url,
                    detail: e.to_string(),
                })
            }
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let (push_tx, push_rx) = mpsc::channel(config.push_buffer.max(1));
        let driver = Driver {
            session: ClientSession::new(config.session.clone()),
            breaker: config.breaker.map(CircuitBreaker::new),
            waiting: HashMap::new(),
            pushes: push_tx,
            url: url.clone(),
            reconnect: config.reconnect,
            jitter: JitterSource::new(seed()),
            authorization: config.authorization.clone(),
        };
        tokio::spawn(driver.run(socket, rx));
        Ok(Self {
            commands,
            pushes: std::sync::Arc::new(std::sync::Mutex::new(Some(Pushes(push_rx)))),
            url,
        })
    }

    /// The WebSocket endpoint in use.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `envelope` and waits for its response envelope.
    pub async fn send(&self, envelope: Envelope) -> Result<Envelope, SendError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Send(Box::new(envelope), tx))
            .map_err(|_| transport(TransportErrorKind::Other, "the WebSocket client is closed"))?;
        rx.await.unwrap_or_else(|_| {
            Err(transport(
                TransportErrorKind::Other,
                "the WebSocket client is closed",
            ))
        })
    }

    /// The pushed envelopes (once: the first call takes the stream).
    #[must_use]
    pub fn pushes(&self) -> Option<Pushes> {
        self.pushes.lock().ok()?.take()
    }

    /// Closes the connection (1000); pending requests fail.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

fn seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

/// The upgrade request for `url`, with the bearer token when given.
fn upgrade_request(
    url: &str,
    authorization: Option<&http::HeaderValue>,
) -> Result<http::Request<()>, CallError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = url
        .into_client_request()
        .map_err(|e| CallError::Transport {
            kind: TransportErrorKind::Connect,
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
    if let Some(v) = authorization {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, v.clone());
    }
    Ok(req)
}

async fn open(url: &str, authorization: Option<&http::HeaderValue>) -> Result<Socket, SendError> {
    let req = upgrade_request(url, authorization)
        .map_err(|e| transport(TransportErrorKind::Connect, e.to_string()))?;
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, _)) => Ok(socket),
        Err(e) => Err(transport(
            TransportErrorKind::Connect,
            format!("{url}: {e}"),
        )),
    }
}

struct Driver {
    session: ClientSession,
    breaker: Option<CircuitBreaker>,
    waiting: HashMap<RequestHandle, oneshot::Sender<Result<Envelope, SendError>>>,
    pushes: mpsc::Sender<Envelope>,
    url: String,
    reconnect: bool,
    jitter: JitterSource,
    authorization: Option<http::HeaderValue>,
}

impl Driver {
    /// The connection loop: frames in, frames and events out, timers; then
    /// reconnects until told to close or the handles are gone.
    async fn run(mut self, socket: Socket, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut socket = Some(socket);
        let mut attempt = 0u32;
        loop {
            let Some(mut ws) = socket.take() else {
                if !self.reconnect {
                    self.fail_all("the WebSocket connection is closed");
                    return;
                }
                let delay = RECONNECT_BACKOFF.delay(attempt, self.jitter.next_unit());
                attempt = attempt.saturating_add(1);
                if self.idle_for(delay, &mut commands).await.is_err() {
                    return;
                }
                socket = open(&self.url, self.authorization.as_ref()).await.ok();
                continue;
            };
            attempt = 0;
            self.session.handle_connected(Instant::now());
            let ended = self.connected(&mut ws, &mut commands).await;
            self.session.handle_disconnect(Instant::now());
            self.deliver();
            if ended {
                let _ = ws.close(None).await;
                self.fail_all("the WebSocket client was closed");
                return;
            }
        }
    }

    /// Waits `delay` before a reconnect while answering sends with an error.
    async fn idle_for(
        &mut self,
        delay: std::time::Duration,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), ()> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ok(()),
                cmd = commands.recv() => match cmd {
                    Some(Command::Send(_, tx)) => {
                        let _ = tx.send(Err(transport(TransportErrorKind::Connect, "reconnecting to the agent's /asap/ws; retry shortly")));
                    }
                    Some(Command::Close) | None => return Err(()),
                },
            }
        }
    }

    /// Runs one connection; `true` when the client is to stop.
    async fn connected(
        &mut self,
        ws: &mut Socket,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        loop {
            while let Some(out) = self.session.poll_output() {
                match out {
                    ClientOutput::Transmit(text) => {
                        if ws.send(Message::Text(text.into())).await.is_err() {
                            return false;
                        }
                    }
                    ClientOutput::Event(e) => self.event(e),
                }
            }
            let deadline = self.session.poll_timeout();
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => self.session.handle_frame(Incoming::Text(t.as_str()), Instant::now()),
                    Some(Ok(Message::Binary(b))) => self.session.handle_frame(Incoming::Binary(&b), Instant::now()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Send(envelope, tx)) => self.send(*envelope, tx),
                    Some(Command::Close) | None => return true,
                },
                () = sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
            }
        }
    }

    fn send(&mut self, envelope: Envelope, tx: oneshot::Sender<Result<Envelope, SendError>>) {
        let now = Instant::now();
        if let Some(b) = &mut self.breaker {
            if let Err(open) = b.try_acquire(now) {
                let _ = tx.send(Err(SendError::CircuitOpen(open)));
                return;
            }
        }
        match self.session.send(envelope, now, wall_now()) {
            Ok(handle) => {
                self.waiting.insert(handle, tx);
            }
            Err(e) => {
                let _ = tx.send(Err(transport(TransportErrorKind::Other, e.to_string())));
            }
        }
    }

    fn event(&mut self, event: ClientEvent) {
        let now = Instant::now();
        match event {
            ClientEvent::Response { request, result } => {
                if let (Some(b), Ok(_)) = (&mut self.breaker, &result) {
                    b.record_success(now);
                }
                if let Some(tx) = self.waiting.remove(&request) {
                    let _ = tx.send(result);
                }
            }
            ClientEvent::Push(envelope) => {
                let dropped = self.pushes.try_send(*envelope).is_err();
                if dropped {
                    tracing::warn!("asap.ws.push_buffer_full: a pushed envelope was dropped");
                }
            }
            ClientEvent::Acked {
                envelope_id,
                status,
                ..
            } => {
                tracing::debug!(%envelope_id, status = ?status, "asap.ws.acked");
            }
            ClientEvent::GaveUp {
                envelope_id,
                reason,
            } => {
                tracing::warn!(%envelope_id, reason = ?reason, "asap.ws.ack_gave_up");
                if let (Some(b), true) = (&mut self.breaker, reason.is_peer_failure()) {
                    b.record_failure(now);
                }
            }
            _ => {}
        }
    }

    fn deliver(&mut self) {
        while let Some(out) = self.session.poll_output() {
            if let ClientOutput::Event(e) = out {
                self.event(e);
            }
        }
    }

    fn fail_all(&mut self, why: &str) {
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Err(transport(TransportErrorKind::Other, why)));
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
