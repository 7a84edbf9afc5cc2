//! [`WsClient`]: an agent's `/asap/ws`, kept open and reconnected, driving
//! [`asap_proto::ws::ClientSession`] on a tokio task.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use asap_proto::client::{BaseUrl, CallError, SendError, TransportError, TransportErrorKind};
use asap_proto::model::{Envelope, UnixTime};
pub use asap_proto::ws::WsClientConfig;
use asap_proto::ws::{CallOutput, ClientCalls, ClientEvent, Incoming};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

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
        let socket = match open(&url, config.connect_timeout, config.authorization.as_ref()).await {
            Ok(socket) => socket,
            Err(detail) => {
                return Err(CallError::Transport {
                    kind: TransportErrorKind::Connect,
                    url,
                    detail,
                })
            }
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let (push_tx, push_rx) = mpsc::channel(config.push_buffer.max(1));
        let driver = Driver {
            calls: ClientCalls::new(&config, seed()),
            pushes: push_tx,
            url: url.clone(),
            reconnect: config.reconnect,
            connect_timeout: config.connect_timeout,
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
) -> Result<http::Request<()>, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(v) = authorization {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, v.clone());
    }
    Ok(req)
}

async fn open(
    url: &str,
    limit: std::time::Duration,
    authorization: Option<&http::HeaderValue>,
) -> Result<Socket, String> {
    let req = upgrade_request(url, authorization)?;
    // tungstenite zero-fills its read buffer (128 KiB by default) before every read.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(super::server::READ_BUFFER);
    let connect = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
    match tokio::time::timeout(limit, connect).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no WebSocket handshake within {limit:?}")),
    }
}

type Answer = oneshot::Sender<Result<Envelope, SendError>>;

struct Driver {
    calls: ClientCalls<Answer>,
    pushes: mpsc::Sender<Envelope>,
    url: String,
    reconnect: bool,
    connect_timeout: std::time::Duration,
    authorization: Option<http::HeaderValue>,
}

impl Driver {
    /// The connection loop: frames in, frames and answers out, timers; then
    /// reconnects until told to close or the handles are gone.
    async fn run(mut self, socket: Socket, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut socket = Some(socket);
        loop {
            let Some(mut ws) = socket.take() else {
                if !self.reconnect {
                    return self.close("the WebSocket connection is closed");
                }
                let delay = self.calls.reconnect_delay();
                if self.idle_for(delay, &mut commands).await.is_err() {
                    return self.close("the WebSocket client was closed");
                }
                socket = open(&self.url, self.connect_timeout, self.authorization.as_ref())
                    .await
                    .ok();
                continue;
            };
            self.calls.handle_connected(Instant::now());
            let ended = self.connected(&mut ws, &mut commands).await;
            self.calls.handle_disconnect(Instant::now());
            self.deliver();
            if ended {
                let _ = ws.close(None).await;
                return self.close("the WebSocket client was closed");
            }
        }
    }

    /// Waits `delay` before a reconnect; sends meanwhile are answered at once.
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
                    Some(Command::Send(envelope, tx)) => {
                        self.calls.send(*envelope, tx, Instant::now(), wall_now());
                        self.deliver();
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
            while let Some(out) = self.calls.poll_output() {
                if let CallOutput::Transmit(text) = out {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        return false;
                    }
                } else {
                    self.output(out);
                }
            }
            let deadline = self.calls.poll_timeout();
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => self.calls.handle_frame(Incoming::Text(t.as_str()), Instant::now()),
                    Some(Ok(Message::Binary(b))) => self.calls.handle_frame(Incoming::Binary(&b), Instant::now()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Send(envelope, tx)) => self.calls.send(*envelope, tx, Instant::now(), wall_now()),
                    Some(Command::Close) | None => return true,
                },
                () = sleep_until(deadline) => self.calls.handle_timeout(Instant::now()),
            }
        }
    }

    fn output(&self, out: CallOutput<Answer>) {
        match out {
            CallOutput::Answer { waiter, result } => drop(waiter.send(result)),
            CallOutput::Push(envelope) => {
                if self.pushes.try_send(*envelope).is_err() {
                    tracing::warn!("asap.ws.push_buffer_full: a pushed envelope was dropped");
                }
            }
            CallOutput::Event(ClientEvent::Acked {
                envelope_id,
                status,
                ..
            }) => tracing::debug!(%envelope_id, status = ?status, "asap.ws.acked"),
            CallOutput::Event(ClientEvent::GaveUp {
                envelope_id,
                reason,
            }) => tracing::warn!(%envelope_id, reason = ?reason, "asap.ws.ack_gave_up"),
            // Frames while disconnected: pending acks are resent on reconnect.
            CallOutput::Transmit(_) | CallOutput::Event(_) => {}
        }
    }

    /// Hands out what the session has for callers (no socket to write to).
    fn deliver(&mut self) {
        while let Some(out) = self.calls.poll_output() {
            self.output(out);
        }
    }

    fn close(&mut self, why: &str) {
        self.calls.handle_close(why);
        self.deliver();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A pool of [`WsClient`] connections to one agent (spec 13.7: at most 10,
/// idle ones older than 60 s closed on checkout, callers wait when all are
/// taken), deciding with [`asap_proto::ws::Pool`]. One `WsClient` already
/// carries many concurrent requests; a pool spreads load over connections.
#[derive(Debug, Clone)]
pub struct WsPool {
    url: String,
    config: WsClientConfig,
    pool: std::sync::Arc<std::sync::Mutex<asap_proto::ws::Pool<WsClient>>>,
    freed: std::sync::Arc<tokio::sync::Notify>,
}

/// A connection taken from a [`WsPool`]; back in the pool when dropped.
#[derive(Debug)]
pub struct Pooled {
    client: Option<WsClient>,
    pool: WsPool,
}

impl std::ops::Deref for Pooled {
    type Target = WsClient;
    fn deref(&self) -> &WsClient {
        self.client.as_ref().expect("held until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if let Ok(mut p) = self.pool.pool.lock() {
                p.checkin(c, Instant::now());
            }
            self.pool.freed.notify_one();
        }
    }
}

impl WsPool {
    /// A pool of connections to `base_url`, each made with `config`.
    #[must_use]
    pub fn new(base_url: &str, config: WsClientConfig, pool: asap_proto::ws::PoolConfig) -> Self {
        Self {
            url: base_url.to_owned(),
            config,
            pool: std::sync::Arc::new(std::sync::Mutex::new(asap_proto::ws::Pool::new(pool))),
            freed: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// A connection: an idle one, a new one, or the next one given back.
    pub async fn acquire(&self) -> Result<Pooled, CallError> {
        use asap_proto::ws::Checkout;
        loop {
            let freed = self.freed.notified();
            let (decision, stale) = match self.pool.lock() {
                Ok(mut p) => p.checkout(Instant::now()),
                Err(_) => (Checkout::Open, Vec::new()),
            };
            for c in stale {
                c.close();
            }
            match decision {
                Checkout::Reuse(client) => {
                    return Ok(Pooled {
                        client: Some(client),
                        pool: self.clone(),
                    })
                }
                Checkout::Open => {
                    return match WsClient::connect(&self.url, self.config.clone()).await {
                        Ok(client) => Ok(Pooled {
                            client: Some(client),
                            pool: self.clone(),
                        }),
                        Err(e) => {
                            if let Ok(mut p) = self.pool.lock() {
                                p.handle_lost();
                            }
                            self.freed.notify_one();
                            Err(e)
                        }
                    };
                }
                Checkout::Wait => freed.await,
            }
        }
    }
}
