//! HTTP/1.1 on a blocking `TcpStream`: request heads (httparse), bounded
//! bodies (`Content-Length` or chunked, `Expect: 100-continue`), keep-alive,
//! and the hand-over of `/asap/ws` upgrades to the WebSocket connection loop.
//!
//! The socket stays ours (not a library's): an upgraded connection must be
//! read on one thread while another writes, which the boxed stream of
//! tiny_http's `Request::upgrade` cannot do.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use super::Listener;
use asap_proto::model::UnixTime;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 128;
/// A kept-alive connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the next bytes of a request under way.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A refused body is read and discarded for at most this long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Unread body bytes discarded to keep a connection when the exchange
/// named no bound (it read what it wanted).
const DRAIN_DEFAULT: usize = 64 * 1024;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: Method,
    /// The path, without the query.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    minor: u8,
}

#[derive(Debug)]
enum HeadError {
    /// The peer closed (or went quiet) between requests.
    Closed,
    TooLarge,
    Malformed(String),
}

/// Serves requests on `stream` until the peer closes, a request asks to
/// close, the connection is upgraded, or the server stops.
pub(super) fn connection(
    listener: &Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    idle: &AtomicBool,
) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        idle.store(true, Ordering::SeqCst);
        if listener.stopping() {
            return;
        }
        let _ = reader.get_ref().set_read_timeout(Some(IDLE_TIMEOUT));
        let head = read_head(&mut reader);
        idle.store(false, Ordering::SeqCst);
        let head = match head {
            Ok(h) => h,
            Err(HeadError::Closed) => return,
            Err(HeadError::TooLarge) => {
                let text = "Request header fields too large";
                return refuse(&reader, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, text);
            }
            Err(HeadError::Malformed(why)) => {
                return refuse(&reader, StatusCode::BAD_REQUEST, &why);
            }
        };
        let _ = reader.get_ref().set_read_timeout(Some(READ_TIMEOUT));
        if head.path == asap_proto::client::WEBSOCKET_PATH {
            return crate::ws::server::upgrade(listener, head, reader, peer);
        }
        if !request(listener, &head, &mut reader, peer) {
            return;
        }
    }
}

/// One request and its response; `false` when the connection is to close.
fn request(
    listener: &Listener,
    head: &Head,
    reader: &mut BufReader<TcpStream>,
    peer: SocketAddr,
) -> bool {
    let framing = match framing(head) {
        Ok(f) => f,
        Err((status, why)) => {
            refuse(reader, status, why);
            return false;
        }
    };
    let expects_continue = head
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = Body {
        state: framing,
        inner: reader,
        send_continue: expects_continue && head.minor >= 1,
    };
    let reply = listener.permits.run(|| {
        listener.agent.exchange_http(
            &head.method,
            &head.path,
            &head.headers,
            Some(peer.ip()),
            &mut body,
        )
    });
    let mut keep = head.minor >= 1 && !has_token(&head.headers, header::CONNECTION, "close");
    if !body.finished() {
        // Unread body bytes would be taken for the next request: discard a
        // bounded amount, or close (the client, still uploading, then reads
        // our answer rather than a reset).
        let budget = reply
            .drain_body
            .map_or(DRAIN_DEFAULT, |l| l.saturating_mul(2));
        let _ = body.inner.get_ref().set_read_timeout(Some(DRAIN_TIMEOUT));
        let drained = io::copy(&mut (&mut body).take(budget as u64), &mut io::sink());
        keep &= drained.is_ok() && body.finished();
    }
    keep &= !listener.stopping();
    let head_only = head.method == Method::HEAD;
    write_response(body.inner.get_ref(), &reply.response, head_only, !keep).is_ok() && keep
}

/// Answers a request we will not read and closes.
fn refuse(reader: &BufReader<TcpStream>, status: StatusCode, why: &str) {
    let _ = write_response(reader.get_ref(), &detail(status, why), false, true);
}

/// `{"detail": why}` with `status`, as the core's HTTP-level errors.
pub(crate) fn detail(status: StatusCode, why: &str) -> Response<Vec<u8>> {
    let mut r = Response::new(asap_proto::jsonrpc::detail_body(why));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Head, HeadError> {
    // A request line starts with a method (a token) or empty lines; anything
    // else (a TLS ClientHello, say) is refused now rather than at a timeout.
    match reader.fill_buf() {
        Ok([]) | Err(_) => return Err(HeadError::Closed),
        Ok([b, ..]) if !(b.is_ascii_alphabetic() || *b == b'\r' || *b == b'\n') => {
            return Err(HeadError::Malformed(
                "not an HTTP/1.1 request (TLS to a plain-HTTP port?)".into(),
            ))
        }
        Ok(_) => {}
    }
    let mut raw = Vec::with_capacity(1024);
    loop {
        let room = (MAX_HEAD + 1).saturating_sub(raw.len()) as u64;
        let n = match reader.by_ref().take(room).read_until(b'\n', &mut raw) {
            Ok(n) => n,
            Err(_) if raw.is_empty() => return Err(HeadError::Closed),
            Err(e) => {
                return Err(HeadError::Malformed(format!(
                    "request head unreadable: {e}"
                )))
            }
        };
        if n == 0 {
            return Err(if raw.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("connection closed inside the request head".into())
            });
        }
        if raw.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        // Empty lines before a request line are ignored (RFC 9112 section 2.2).
        if raw == b"\r\n" || raw == b"\n" {
            raw.clear();
            continue;
        }
        if raw.ends_with(b"\n\r\n") || raw.ends_with(b"\n\n") {
            break;
        }
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Malformed("incomplete request head".into()))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(format!("malformed request head: {e}"))),
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method".into()))?;
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed(format!("invalid header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HeadError::Malformed(format!("invalid value of header {:?}", h.name)))?;
        headers.append(name, value);
    }
    Ok(Head {
        method,
        path,
        headers,
        minor: req.version.unwrap_or(1),
    })
}

/// Whether `name`'s comma-separated values include `token` (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// How the request body is delimited (RFC 9112 section 6.3).
#[derive(Debug)]
enum Framing {
    /// Bytes left of a `Content-Length` body (0: none or done).
    Length(u64),
    /// Bytes left of the current chunk; at 0 the next size line follows.
    Chunked(u64),
    /// The last chunk and the trailers were read.
    Done,
}

fn framing(head: &Head) -> Result<Framing, (StatusCode, &'static str)> {
    let te = &head.headers.get_all(header::TRANSFER_ENCODING);
    if te.iter().next().is_some() {
        if head.headers.contains_key(header::CONTENT_LENGTH) {
            return Err((
                StatusCode::BAD_REQUEST,
                "Content-Length and Transfer-Encoding together: send one",
            ));
        }
        let codings: Vec<String> = te
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        if codings.as_slice() != ["chunked"] {
            return Err((
                StatusCode::NOT_IMPLEMENTED,
                "Transfer-Encoding other than chunked is not implemented: use Content-Encoding for compression",
            ));
        }
        return Ok(Framing::Chunked(0));
    }
    let mut lengths = head.headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(Framing::Length(0));
    };
    let parse = |v: &HeaderValue| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
    match parse(first) {
        Some(n) if lengths.all(|v| parse(v) == Some(n)) => Ok(Framing::Length(n)),
        _ => Err((StatusCode::BAD_REQUEST, "invalid Content-Length")),
    }
}

/// A request body as its framing delimits it.
struct Body<'a> {
    state: Framing,
    inner: &'a mut BufReader<TcpStream>,
    /// `Expect: 100-continue`: say so before the first read.
    send_continue: bool,
}

impl Body<'_> {
    fn finished(&self) -> bool {
        matches!(self.state, Framing::Length(0) | Framing::Done)
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.inner
            .by_ref()
            .take(4096)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunked body: line missing or too long",
            ));
        }
        Ok(line)
    }

    fn next_chunk(&mut self) -> io::Result<u64> {
        let line = self.line()?;
        let text = std::str::from_utf8(&line).unwrap_or("");
        let size = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "chunked body: invalid chunk size",
            )
        })?;
        if size == 0 {
            // Trailer fields, up to the empty line; ignored.
            while !matches!(self.line()?.as_slice(), b"\r\n" | b"\n") {}
        }
        Ok(size)
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.send_continue {
            self.send_continue = false;
            if !self.finished() {
                self.inner
                    .get_ref()
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
        }
        let left = match self.state {
            Framing::Done | Framing::Length(0) => return Ok(0),
            Framing::Length(n) => n,
            Framing::Chunked(0) => match self.next_chunk()? {
                0 => {
                    self.state = Framing::Done;
                    return Ok(0);
                }
                n => n,
            },
            Framing::Chunked(n) => n,
        };
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 && max > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection before the end of the body",
            ));
        }
        let left = left - n as u64;
        self.state = match self.state {
            Framing::Length(_) => Framing::Length(left),
            _ => {
                if left == 0 && !matches!(self.line()?.as_slice(), b"\r\n" | b"\n") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunked body: chunk longer than its size",
                    ));
                }
                Framing::Chunked(left)
            }
        };
        Ok(n)
    }
}

/// Writes `response` (headers as given, plus `Content-Length`, `Date` and
/// `Connection: close` when closing); no body for `HEAD`.
pub(crate) fn write_response(
    mut out: &TcpStream,
    response: &Response<Vec<u8>>,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let status = response.status();
    let body = response.body();
    let mut buf = Vec::with_capacity(256 + body.len());
    let reason = status.canonical_reason().unwrap_or("");
    write!(buf, "HTTP/1.1 {} {reason}\r\n", status.as_u16())?;
    for (name, value) in response.headers() {
        // Framing is ours to say: the length below, and whether we close.
        if (close && name == header::CONNECTION) || name == header::TRANSFER_ENCODING {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if !response.headers().contains_key(header::CONTENT_LENGTH)
        && status != StatusCode::SWITCHING_PROTOCOLS
    {
        write!(buf, "content-length: {}\r\n", body.len())?;
    }
    write!(buf, "date: {}\r\n", http_date(crate::server::wall_now()))?;
    if close {
        buf.extend_from_slice(b"connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    if !head_only {
        buf.extend_from_slice(body);
    }
    out.write_all(&buf)?;
    out.flush()
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 section 5.6.7).
fn http_date(t: UnixTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.as_secs();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(
            http_date(UnixTime::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            http_date(UnixTime::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UnixTime::from_secs(0)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }

    #[test]
    fn tokens_are_found_case_insensitively_in_lists() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
    }
}
