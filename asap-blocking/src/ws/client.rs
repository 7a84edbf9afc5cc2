//! [`WsClient`]: an agent's `/asap/ws`, kept open and reconnected, driving
//! [`asap_proto::ws::ClientSession`] on a background thread.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap_proto::client::{BaseUrl, CallError, SendError, TransportError, TransportErrorKind};
use asap_proto::model::Envelope;
pub use asap_proto::ws::WsClientConfig;
use asap_proto::ws::{CallOutput, ClientCalls, Incoming};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::wire::Wire;
use crate::server::{seed, wall_now};

/// A writer stuck this long on a peer that does not read ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

type Answer = SyncSender<Result<Envelope, SendError>>;

/// What reaches the client's thread.
enum Event {
    /// A chunk of connection `n`'s socket (`None`: it closed).
    Bytes(u64, Option<Vec<u8>>),
    Send(Box<Envelope>, Answer),
    Close,
}

/// A connection to an agent's `/asap/ws` that survives disconnects: `send`
/// blocks for the correlated response; acks, retransmission, heartbeat
/// answers and reconnects happen on its thread. Cheap to clone; the thread
/// ends when the last clone is dropped or [`close`](Self::close) is called.
///
/// `ws://` and `wss://` (rustls with ring, webpki roots) are both served.
///
/// ```no_run
/// # fn demo(envelope: asap_proto::model::Envelope) -> Result<(), Box<dyn std::error::Error>> {
/// use asap_blocking::ws::{WsClient, WsClientConfig};
/// let client = WsClient::connect("ws://127.0.0.1:8000", WsClientConfig::default())?;
/// let pushes = client.pushes().expect("taken once");
/// let response = client.send(envelope)?;
/// for update in pushes.try_iter() { println!("{}", update.payload_type); }
/// # let _ = response; Ok(()) }
/// ```
#[derive(Clone)]
pub struct WsClient {
    inner: Arc<Handle>,
}

struct Handle {
    events: Sender<Event>,
    pushes: Mutex<Option<Receiver<Envelope>>>,
    url: String,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Close);
    }
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl WsClient {
    /// Connects to the agent at `base_url` (`ws://host:port`, `wss://…`, or
    /// `http(s)://…`, spec 13.1: `/asap/ws` is appended). The first connect
    /// must succeed; later losses reconnect in the background.
    pub fn connect(base_url: &str, config: WsClientConfig) -> Result<Self, CallError> {
        let url = BaseUrl::parse(base_url, config.http_policy)?.websocket_url();
        let (events, inbox) = mpsc::channel();
        let link = Link::open(&url, &config, 0, &events).map_err(|e| CallError::Transport {
            kind: e.kind,
            url: url.clone(),
            detail: e.detail,
        })?;
        let (push_tx, push_rx) = mpsc::sync_channel(config.push_buffer.max(1));
        let driver = Driver {
            calls: ClientCalls::new(&config, seed()),
            pushes: push_tx,
            url: url.clone(),
            events: events.clone(),
            config,
        };
        std::thread::Builder::new()
            .name("asap-ws-client".into())
            .spawn(move || driver.run(link, &inbox))
            .map_err(|e| CallError::Transport {
                kind: TransportErrorKind::Other,
                url: url.clone(),
                detail: format!("could not start the client thread: {e}"),
            })?;
        Ok(Self {
            inner: Arc::new(Handle {
                events,
                pushes: Mutex::new(Some(push_rx)),
                url,
            }),
        })
    }

    /// The WebSocket endpoint in use.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Sends `envelope` and waits for its response envelope.
    pub fn send(&self, envelope: Envelope) -> Result<Envelope, SendError> {
        let closed = || {
            let e =
                TransportError::new(TransportErrorKind::Other, "the WebSocket client is closed");
            SendError::Transport(e)
        };
        let (tx, rx) = mpsc::sync_channel(1);
        self.inner
            .events
            .send(Event::Send(Box::new(envelope), tx))
            .map_err(|_| closed())?;
        rx.recv().unwrap_or_else(|_| Err(closed()))
    }

    /// The pushed envelopes (once: the first call takes the receiver).
    #[must_use]
    pub fn pushes(&self) -> Option<Receiver<Envelope>> {
        self.inner.pushes.lock().ok()?.take()
    }

    /// Closes the connection (1000); pending requests fail.
    pub fn close(&self) {
        let _ = self.inner.events.send(Event::Close);
    }
}

/// Why a connection could not be opened.
struct OpenError {
    kind: TransportErrorKind,
    detail: String,
}

impl OpenError {
    fn connect(detail: impl Into<String>) -> Self {
        Self {
            kind: TransportErrorKind::Connect,
            detail: detail.into(),
        }
    }
}

/// One connection: the socket, and its number (chunks of older ones are stale).
struct Link {
    ws: WebSocket<MaybeTlsStream<Wire>>,
    n: u64,
}

impl Link {
    fn open(
        url: &str,
        config: &WsClientConfig,
        n: u64,
        events: &Sender<Event>,
    ) -> Result<Self, OpenError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| OpenError::connect(format!("{url}: {e}")))?;
        let tls = uri.scheme_str() == Some("wss");
        let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| OpenError::connect(format!("{url}: cannot resolve {host}: {e}")))?;
        let mut last = io::Error::other("no address");
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, config.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| OpenError::connect(format!("{url}: {last}")))?;
        let setup = |tcp: &TcpStream| {
            tcp.set_nodelay(true)?;
            tcp.set_read_timeout(Some(config.connect_timeout))?;
            tcp.set_write_timeout(Some(WRITE_TIMEOUT))
        };
        setup(&tcp).map_err(|e| OpenError::connect(format!("{url}: {e}")))?;
        let (mut ws, _) = tungstenite::client_tls_with_config(url, Wire::direct(tcp), None, None)
            .map_err(|e| {
            let detail = match e {
                tungstenite::HandshakeError::Failure(e) => e.to_string(),
                tungstenite::HandshakeError::Interrupted(_) => "handshake timed out".into(),
            };
            OpenError::connect(format!("{url}: WebSocket handshake failed: {detail}"))
        })?;
        let wire = match ws.get_mut() {
            MaybeTlsStream::Plain(wire) => wire,
            MaybeTlsStream::Rustls(tls) => &mut tls.sock,
            _ => {
                return Err(OpenError::connect(format!(
                    "{url}: unexpected TLS stream kind"
                )))
            }
        };
        let bytes = events.clone();
        wire.start_reader(move |chunk| bytes.send(Event::Bytes(n, chunk)).is_ok())
            .map_err(|e| OpenError::connect(format!("{url}: {e}")))?;
        Ok(Self { ws, n })
    }

    fn wire(&mut self) -> &mut Wire {
        match self.ws.get_mut() {
            MaybeTlsStream::Rustls(tls) => &mut tls.sock,
            MaybeTlsStream::Plain(wire) => wire,
            // Only the two kinds `open` builds exist.
            _ => unreachable!("no other TLS stream kind is enabled"),
        }
    }

    fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        self.wire().close();
    }
}

struct Driver {
    calls: ClientCalls<Answer>,
    pushes: SyncSender<Envelope>,
    url: String,
    events: Sender<Event>,
    config: WsClientConfig,
}

impl Driver {
    /// The connection loop: frames in, frames and answers out, timers; then
    /// reconnects until told to close or the handles are gone.
    fn run(mut self, first: Link, inbox: &Receiver<Event>) {
        let mut link = Some(first);
        let mut n = 0u64;
        loop {
            let Some(mut current) = link.take() else {
                if !self.config.reconnect {
                    return self.close("the WebSocket connection is closed");
                }
                let delay = self.calls.reconnect_delay();
                if self.idle_for(delay, inbox).is_err() {
                    return self.close("the WebSocket client was closed");
                }
                n += 1;
                link = Link::open(&self.url, &self.config, n, &self.events).ok();
                continue;
            };
            self.calls.handle_connected(Instant::now());
            let ended = self.connected(&mut current, inbox);
            self.calls.handle_disconnect(Instant::now());
            self.deliver();
            current.close();
            if ended {
                return self.close("the WebSocket client was closed");
            }
        }
    }

    /// Waits `delay` before a reconnect; sends meanwhile are answered at once.
    fn idle_for(&mut self, delay: Duration, inbox: &Receiver<Event>) -> Result<(), ()> {
        let until = Instant::now() + delay;
        loop {
            match inbox.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Ok(Event::Send(envelope, tx)) => {
                    self.calls.send(*envelope, tx, Instant::now(), wall_now());
                    self.deliver();
                }
                Ok(Event::Bytes(..)) => {}
                Ok(Event::Close) | Err(RecvTimeoutError::Disconnected) => return Err(()),
            }
        }
    }

    /// Runs one connection; `true` when the client is to stop.
    fn connected(&mut self, link: &mut Link, inbox: &Receiver<Event>) -> bool {
        loop {
            if !self.read_frames(link) {
                return false;
            }
            while let Some(out) = self.calls.poll_output() {
                if let CallOutput::Transmit(text) = out {
                    if link.ws.send(Message::text(text)).is_err() {
                        return false;
                    }
                } else {
                    self.output(out);
                }
            }
            match link.ws.flush() {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
            let wait = self
                .calls
                .poll_timeout()
                .map(|at| at.saturating_duration_since(Instant::now()));
            let event = match wait {
                Some(d) => inbox.recv_timeout(d),
                None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Err(RecvTimeoutError::Timeout) => self.calls.handle_timeout(Instant::now()),
                Ok(Event::Bytes(n, chunk)) if n == link.n => link.wire().feed(chunk),
                Ok(Event::Bytes(..)) => {}
                Ok(Event::Send(envelope, tx)) => {
                    self.calls.send(*envelope, tx, Instant::now(), wall_now());
                }
                Ok(Event::Close) | Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    /// Feeds the frames received so far to the session; `false` when the
    /// connection is over.
    fn read_frames(&mut self, link: &mut Link) -> bool {
        loop {
            let now = Instant::now();
            match link.ws.read() {
                Ok(Message::Text(t)) => self.calls.handle_frame(Incoming::Text(&t), now),
                Ok(Message::Binary(b)) => self.calls.handle_frame(Incoming::Binary(&b), now),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => return false,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    link.wire().want_more();
                    return true;
                }
                Err(_) => return false,
            }
        }
    }

    fn output(&self, out: CallOutput<Answer>) {
        match out {
            CallOutput::Answer { waiter, result } => drop(waiter.send(result)),
            // A full buffer drops the newest: the reader is not keeping up.
            CallOutput::Push(envelope) => drop(self.pushes.try_send(*envelope)),
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
