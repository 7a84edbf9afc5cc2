//! The body of `POST /asap` before JSON: headers that decide how to read it
//! (size, content type, encoding), bounded decompression, and a nesting scan.

use std::borrow::Cow;

use std::time::Duration;

use http::{header, HeaderMap, Response, StatusCode};

use super::answer::{busy, detail, request_timeout};
use super::config::ServerConfig;

/// Content encodings accepted on `POST /asap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    /// No compression.
    Identity,
    /// gzip.
    Gzip,
    /// Brotli (what the reference client sends above 1 KiB).
    Brotli,
}

/// How to read a body: its encoding and the bound on raw and decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlan {
    /// How to decompress.
    pub encoding: ContentEncoding,
    /// Largest accepted body, raw and after decompression.
    pub max_body: usize,
}

/// Why a request body was refused before JSON parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// More bytes on the wire than allowed (413).
    #[error("request body of at least {0} bytes exceeds the maximum")]
    TooLarge(u64),
    /// More bytes after decompression than allowed (413).
    #[error("decompressed body of at least {0} bytes exceeds the maximum")]
    DecompressedTooLarge(u64),
    /// The body does not decode with its `Content-Encoding` (400).
    #[error("invalid compressed data: {0}")]
    InvalidCompressedData(String),
    /// The transport failed while the body was read (400); the text says how.
    #[error("could not read the request body: {0}")]
    Unreadable(String),
    /// The peer was too slow sending the body (408); the connection is closed.
    #[error("the request body {0}")]
    TimedOut(BodyTimeout),
    /// Bodies in flight already hold the server's budget (503 + `Retry-After`);
    /// the client's request is fine, the server is busy: retry later.
    #[error("request bodies in flight ({in_flight} bytes) leave no room for {wanted} more bytes within the budget of {budget} bytes")]
    OverBudget {
        /// Bytes held by other requests.
        in_flight: usize,
        /// Bytes this request needed.
        wanted: usize,
        /// The budget ([`ServerConfig::max_body_bytes_in_flight`]).
        budget: usize,
        /// Seconds to wait before retrying.
        retry_after_secs: u64,
    },
}

/// Which body timeout passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyTimeout {
    /// No byte arrived for this long ([`Timeouts::body`](super::Timeouts::body)).
    #[error("sent nothing for {} s (body timeout)", .0.as_secs_f64())]
    Silent(Duration),
    /// The body was not complete this long after the head
    /// ([`Timeouts::request`](super::Timeouts::request)).
    #[error("was not complete {} s after the request head (request timeout)", .0.as_secs_f64())]
    Deadline(Duration),
}

impl BodyError {
    /// The response of spec 9.3 for this failure.
    #[must_use]
    pub fn response(&self, max_request_size: usize) -> Response<Vec<u8>> {
        match self {
            Self::TooLarge(n) => detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Request size ({n} bytes) exceeds maximum ({max_request_size} bytes)"),
            ),
            Self::DecompressedTooLarge(n) => detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "Decompressed request size ({n} bytes) exceeds maximum ({max_request_size} bytes)"
                ),
            ),
            Self::InvalidCompressedData(msg) => detail(
                StatusCode::BAD_REQUEST,
                &format!("Invalid compressed data: {msg}"),
            ),
            Self::Unreadable(msg) => detail(
                StatusCode::BAD_REQUEST,
                &format!("Could not read request body: {msg}"),
            ),
            Self::TimedOut(t) => request_timeout(&format!("the request body {t}")),
            Self::OverBudget {
                budget,
                retry_after_secs,
                ..
            } => busy(
                *retry_after_secs,
                &format!("request bodies in flight fill the budget of {budget} bytes"),
            ),
        }
    }
}

/// `Content-Length` check of `POST /asap` (spec 8.4 step 2): 413 when it
/// announces more than `max`, 400 when it is not a number.
pub(super) fn check_content_length(
    headers: &HeaderMap,
    max: usize,
) -> Result<(), Response<Vec<u8>>> {
    let Some(len) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    match len.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()) {
        Some(n) if n > max as u64 => Err(BodyError::TooLarge(n).response(max)),
        Some(_) => Ok(()),
        None => Err(detail(
            StatusCode::BAD_REQUEST,
            "Invalid Content-Length header",
        )),
    }
}

/// How to read the body (spec 8.4 step 4): `Content-Type` and
/// `Content-Encoding` (415).
pub(super) fn plan_body(
    headers: &HeaderMap,
    config: &ServerConfig,
) -> Result<BodyPlan, Response<Vec<u8>>> {
    Ok(BodyPlan {
        encoding: content_encoding(headers, config)?,
        max_body: config.max_request_size,
    })
}

fn content_encoding(
    headers: &HeaderMap,
    config: &ServerConfig,
) -> Result<ContentEncoding, Response<Vec<u8>>> {
    if config.require_json_content_type {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let text = ct.to_str().unwrap_or("");
            let mime = text
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !(mime == "application/json" || mime.ends_with("+json")) {
                return Err(detail(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!("Unsupported Content-Type: {text}. Supported: application/json"),
                ));
            }
        }
    }
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => Ok(ContentEncoding::Identity),
        Some(e) if e.is_empty() || e == "identity" => Ok(ContentEncoding::Identity),
        Some(e) if e == "gzip" => Ok(ContentEncoding::Gzip),
        Some(e) if e == "br" => Ok(ContentEncoding::Brotli),
        Some(e) => Err(detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Unsupported Content-Encoding: {e}. Supported: br, gzip"),
        )),
    }
}

/// Decompresses a request body per `plan`, stopping at `plan.max_body + 1`
/// output bytes so a decompression bomb costs one bound's worth of work.
pub fn decode_body(raw: &[u8], plan: BodyPlan) -> Result<Cow<'_, [u8]>, BodyError> {
    use std::io::Read;
    if raw.len() > plan.max_body {
        return Err(BodyError::TooLarge(raw.len() as u64));
    }
    let reader: Box<dyn Read + '_> = match plan.encoding {
        ContentEncoding::Identity => return Ok(Cow::Borrowed(raw)),
        ContentEncoding::Gzip => {
            if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
                let head: String = raw.iter().take(2).map(|b| char::from(*b)).collect();
                return Err(BodyError::InvalidCompressedData(format!(
                    "Not a gzipped file (b'{head}')"
                )));
            }
            Box::new(flate2::read::MultiGzDecoder::new(raw))
        }
        ContentEncoding::Brotli => Box::new(brotli_decompressor::Decompressor::new(raw, 16 * 1024)),
    };
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(plan.max_body));
    reader
        .take(plan.max_body as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::InvalidCompressedData(e.to_string()))?;
    if out.len() > plan.max_body {
        return Err(BodyError::DecompressedTooLarge(out.len() as u64));
    }
    Ok(Cow::Owned(out))
}

/// Scans JSON text for nesting deeper than `max` without parsing it;
/// `Err(depth)` when exceeded. Strings (and escapes in them) are skipped.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}
