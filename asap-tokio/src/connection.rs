//! The accept loop behind [`serve`](crate::server::serve): every connection is
//! admitted, timed and closed by the core's
//! [`ConnectionBudget`]; this module only
//! enforces what it says with sockets, hyper and tokio timers.
//!
//! * hyper caps the request head at [`ServerConfig::max_header_bytes`] (431);
//! * the budget's verdict on each accepted socket: serve it, or write the 503
//!   it rendered (`Retry-After`) and close;
//! * a reaper task sleeps until the budget's `poll_timeout()` and closes what
//!   `handle_timeout` expired: silent or slow heads (408 when part of a head
//!   came), idle keep-alives;
//! * when the budget is full, the oldest waiting connection gives way; when
//!   accepting fails for lack of descriptors, too.
//!
//! A connection reports its life to the budget: its first byte of a head
//! (from the socket wrapper), a complete head and the answer (from the service
//! wrapper), its close (when the socket is dropped, also after a WebSocket
//! upgrade carried it away: an upgraded connection stays counted and busy).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use asap_proto::server::{encode_http1, Admission, ConnectionBudget, ConnectionId, ServerConfig};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tower_service::Service;

/// How long a refusal or a timeout answer may take to write.
const ANSWER_WRITE: Duration = Duration::from_secs(1);
/// How long a refused connection is read (and discarded) after its 503, so the
/// client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_millis(500);
/// Refused connections lingering at once (each holds a descriptor).
const MAX_LINGERING: usize = 64;
/// How long a connection closed without an answer may flush what it was writing.
const FLUSH_GRACE: Duration = Duration::from_millis(100);

/// The soft limit on open file descriptors (`None`: unknown or unlimited).
#[must_use]
pub fn descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft descriptor limit to the hard one (what `asap serve` does at
/// startup: the connection budget follows the soft limit); the new soft limit.
pub fn raise_descriptor_limit() -> io::Result<Option<u64>> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: limit.maximum,
                    maximum: limit.maximum,
                },
            )?;
        }
        Ok(getrlimit(Resource::Nofile).current)
    }
    #[cfg(not(unix))]
    {
        Ok(None)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The budget is consistent between calls; a poisoned lock only means a panic elsewhere.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Connections {
    budget: ConnectionBudget,
    /// How to tell each served connection to close (with an answer to write first).
    closers: HashMap<ConnectionId, oneshot::Sender<Option<Vec<u8>>>>,
    /// The deadline the reaper sleeps until.
    armed: Option<Instant>,
}

struct Shared {
    state: Mutex<Connections>,
    reaper: Notify,
}

impl Shared {
    /// Feeds one input to the budget, then performs its closes and re-arms the reaper.
    fn with<R>(&self, input: impl FnOnce(&mut ConnectionBudget) -> R) -> R {
        let mut c = lock(&self.state);
        let r = input(&mut c.budget);
        while let Some(close) = c.budget.poll_close() {
            if let Some(tx) = c.closers.remove(&close.id) {
                let _ = tx.send(close.answer.as_ref().map(encode_http1));
            }
        }
        let next = c.budget.poll_timeout();
        if next.is_some() && c.armed.is_none_or(|armed| next < Some(armed)) {
            c.armed = next;
            self.reaper.notify_one();
        }
        r
    }
}

/// A connection's socket, reporting the first byte of each head and its close.
struct Tracked {
    stream: TcpStream,
    id: ConnectionId,
    shared: Arc<Shared>,
    /// Set while the connection waits for a head and no byte of it came yet.
    awaiting_head: Arc<AtomicBool>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.with(|b| b.handle_closed(id));
        lock(&self.shared.state).closers.remove(&id);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && self.awaiting_head.swap(false, Ordering::Relaxed) {
            let id = self.id;
            self.shared
                .with(|b| b.handle_head_started(id, Instant::now()));
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `app` on `listener` within the connection budget of `config` until
/// `shutdown` completes, then lets open requests finish.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    shutdown: S,
) -> io::Result<()>
where
    S: Future<Output = ()> + Send + 'static,
{
    let fds = descriptor_limit();
    let budget = ConnectionBudget::new(&config.connections, &config.timeouts, fds);
    tracing::info!(
        max_connections = budget.max_connections(),
        max_per_ip = budget.max_per_ip(),
        descriptor_limit = fds,
        "connection budget"
    );
    let shared = Arc::new(Shared {
        state: Mutex::new(Connections {
            budget,
            closers: HashMap::new(),
            armed: None,
        }),
        reaper: Notify::new(),
    });
    let mut builder = http1::Builder::new();
    // Heads and keep-alives are timed by the budget (hyper's own header timer
    // also runs while a connection idles, and closes without an answer).
    builder
        .max_header_size(config.max_header_bytes)
        .header_read_timeout(None)
        // A client may shut down its write side once the request is sent
        // (`nc -N`, some scripts): the request was accepted, so it is answered.
        .half_close(true);
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    tokio::spawn(reap(Arc::clone(&shared), stop_rx.clone()));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_descriptor_exhaustion(&e) => {
                tracing::warn!("accept: {e}; closing the oldest waiting connection");
                shared.with(|b| b.handle_descriptors_exhausted(Instant::now()));
                // Let the closed connections' tasks run before trying again.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            // Aborted handshakes and the like concern one peer only.
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let (close_tx, close_rx) = oneshot::channel();
        let admission = {
            let now = Instant::now();
            let mut c = lock(&shared.state);
            let admission = c.budget.handle_open(peer.ip(), now);
            if let Admission::Accepted(id) = &admission {
                c.closers.insert(*id, close_tx);
            }
            drop(c);
            // Performs the closes of connections that gave way, re-arms the reaper.
            shared.with(|_| ());
            admission
        };
        match admission {
            Admission::Accepted(id) => {
                let io = Tracked {
                    stream,
                    id,
                    shared: Arc::clone(&shared),
                    awaiting_head: Arc::new(AtomicBool::new(true)),
                };
                tokio::spawn(drive(
                    Arc::clone(&builder),
                    io,
                    peer,
                    app.clone(),
                    close_rx,
                    stop_rx.clone(),
                    done_tx.clone(),
                ));
            }
            Admission::Refused(response) => {
                let permit = Arc::clone(&lingering).try_acquire_owned().ok();
                tokio::spawn(async move {
                    refuse(stream, encode_http1(&response), permit.is_some()).await;
                    drop(permit);
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

fn is_descriptor_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        let code = e.raw_os_error();
        code == Some(rustix::io::Errno::MFILE.raw_os_error())
            || code == Some(rustix::io::Errno::NFILE.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Sleeps until the budget's next deadline and feeds it `handle_timeout`.
async fn reap(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let next = {
            let mut c = lock(&shared.state);
            c.armed = c.budget.poll_timeout();
            c.armed
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => shared.with(|b| b.handle_timeout(Instant::now())),
            () = shared.reaper.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Writes a refusal and closes; with `linger`, reads what the client still
/// sends for a moment so that it reads the 503 rather than a reset.
async fn refuse(mut stream: TcpStream, answer: Vec<u8>, linger: bool) {
    if tokio::time::timeout(ANSWER_WRITE, stream.write_all(&answer))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    if linger {
        let mut sink = [0u8; 4096];
        let drain = async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// Serves one connection until it ends, the budget closes it, or shutdown.
async fn drive(
    builder: Arc<http1::Builder>,
    io: Tracked,
    peer: SocketAddr,
    app: Router,
    mut close_rx: oneshot::Receiver<Option<Vec<u8>>>,
    mut stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) {
    let id = io.id;
    let shared = Arc::clone(&io.shared);
    let awaiting_head = Arc::clone(&io.awaiting_head);
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        shared.with(|b| b.handle_request(id, Instant::now()));
        let mut app = app.clone();
        let shared = Arc::clone(&shared);
        let awaiting_head = Arc::clone(&awaiting_head);
        async move {
            let response = match app.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            // An upgraded connection stays busy until its socket is dropped.
            if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                awaiting_head.store(true, Ordering::Relaxed);
                shared.with(|b| b.handle_response(id, Instant::now()));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            close = &mut close_rx => {
                match close {
                    Ok(Some(answer)) => {
                        // Part of a head came and nothing was answered: the
                        // socket is ours to write the budget's answer on.
                        if let Some(parts) = conn.into_parts() {
                            let mut io = parts.io.into_inner();
                            let _ = tokio::time::timeout(ANSWER_WRITE, io.stream.write_all(&answer)).await;
                        }
                    }
                    Ok(None) | Err(_) => {
                        // Idle: close, after flushing an answer still being written.
                        Pin::new(&mut conn).graceful_shutdown();
                        let _ = tokio::time::timeout(FLUSH_GRACE, &mut conn).await;
                    }
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
}
