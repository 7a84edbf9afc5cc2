//! Interpreting `asap.send` HTTP responses into a typed result or error.

use std::time::Duration;

use serde_json::Value;

use super::{Fault, TransportError, TransportErrorKind};
use crate::error::DecodeError;
use crate::jsonrpc::codes;
use crate::model::Envelope;
use crate::reliability::{retry_after_delay, AttemptOutcome, CircuitOpen};

/// How many characters of an unexpected body an error keeps.
const SNIPPET_CHARS: usize = 200;

/// Why an `asap.send` did not produce a response envelope.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The agent answered with a JSON-RPC error object (HTTP 200).
    #[error("remote error {code}: {message}")]
    Remote {
        /// `error.code` (`-32603` when absent).
        code: i64,
        /// `error.message` (`"Unknown error"` when absent).
        message: String,
        /// `error.data`.
        data: Option<Value>,
    },
    /// HTTP 429: the agent's rate limit refused the request.
    #[error("rate limited by the agent{}", limit.as_deref().map(|l| format!(" ({l})")).unwrap_or_default())]
    RateLimited {
        /// The `Retry-After` delay, when the header was usable.
        retry_after: Option<Duration>,
        /// `error.data.limit` from the body (`"10 per 1 second"`), when present.
        limit: Option<String>,
    },
    /// HTTP 413: the request body is larger than the agent accepts.
    #[error("request too large for the agent{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    PayloadTooLarge {
        /// The body's `detail`, when present.
        detail: Option<String>,
    },
    /// HTTP status ≥ 500.
    #[error("HTTP server error {status}: {snippet}")]
    ServerError {
        /// The status.
        status: u16,
        /// The start of the body.
        snippet: String,
    },
    /// HTTP 4xx other than 413 and 429 (authentication, wrong URL, ...).
    #[error("HTTP client error {status}: {snippet}")]
    ClientError {
        /// The status.
        status: u16,
        /// The start of the body.
        snippet: String,
    },
    /// A 1xx/3xx status where a JSON-RPC answer was expected.
    #[error("unexpected HTTP status {status}")]
    UnexpectedStatus {
        /// The status.
        status: u16,
    },
    /// The response is compressed with an encoding this core does not decode.
    #[error("unsupported response Content-Encoding {0:?}")]
    UnsupportedContentEncoding(String),
    /// The 2xx body is not JSON, or not a JSON object.
    #[error("invalid JSON response: {0}")]
    InvalidJson(String),
    /// The JSON-RPC result has no `result.envelope`.
    #[error("missing envelope in response")]
    MissingEnvelope,
    /// `result.envelope` is not a valid envelope.
    #[error("invalid envelope in response: {0}")]
    InvalidEnvelope(DecodeError),
    /// The adapter could not complete the exchange.
    #[error("transport failure ({0})")]
    Transport(TransportError),
    /// The circuit breaker for this agent is open; nothing was sent.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
}

impl SendError {
    /// Whose fault the failure is.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self {
            // The agent judged our request unacceptable.
            Self::Remote { code, .. }
                if matches!(
                    *code,
                    codes::PARSE_ERROR
                        | codes::INVALID_REQUEST
                        | codes::METHOD_NOT_FOUND
                        | codes::INVALID_PARAMS
                ) =>
            {
                Fault::Local
            }
            Self::PayloadTooLarge { .. } | Self::ClientError { .. } => Fault::Local,
            Self::Transport(e) => e.fault(),
            _ => Fault::Peer,
        }
    }

    /// How the retry policy sees this failure.
    #[must_use]
    pub fn attempt_outcome(&self) -> AttemptOutcome {
        match self {
            // The agent answered; retrying would get the same answer.
            Self::Remote { .. } => AttemptOutcome::Success,
            Self::RateLimited { retry_after, .. } => AttemptOutcome::RateLimited {
                retry_after: *retry_after,
            },
            Self::ServerError { status, .. } => AttemptOutcome::ServerError { status: *status },
            Self::Transport(e) => match e.kind {
                TransportErrorKind::Connect => AttemptOutcome::ConnectFailed,
                TransportErrorKind::Timeout => AttemptOutcome::TimedOut,
                TransportErrorKind::Other => AttemptOutcome::TransportFailed,
                // The agent answered; asking again gets the same oversized answer.
                TransportErrorKind::ResponseTooLarge { .. } => AttemptOutcome::Rejected,
            },
            _ => AttemptOutcome::Rejected,
        }
    }

    /// The JSON-RPC code the reference's `ASAPRemoteError` would carry for a
    /// malformed answer (`-32700` bad JSON, `-32603` missing envelope), or the
    /// remote code itself.
    #[must_use]
    pub fn remote_code(&self) -> Option<i64> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            Self::InvalidJson(_) => Some(codes::PARSE_ERROR),
            Self::MissingEnvelope => Some(codes::INTERNAL_ERROR),
            _ => None,
        }
    }
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(SNIPPET_CHARS)
        .collect()
}

fn header<B>(resp: &http::Response<B>, name: http::header::HeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Turns an `asap.send` HTTP response into the response envelope or a
/// [`SendError`], following the reference client (spec 14):
/// 2xx JSON object with `error` → [`SendError::Remote`]; `result.envelope`
/// validated as an [`Envelope`]; 429 → [`SendError::RateLimited`] with the
/// `Retry-After` delay (seconds or HTTP-date against the response's `Date`);
/// 413, other 4xx, 5xx → typed HTTP errors.
///
/// The response's JSON-RPC `id` and the envelope's `correlation_id` are not
/// checked against the request (the reference does not either).
///
/// ```
/// use asap_proto::client::{interpret_send_response, SendError};
/// let resp = http::Response::builder().status(200)
///     .body(br#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params","data":null},"id":"req-1"}"#.to_vec())
///     .unwrap();
/// assert!(matches!(interpret_send_response(&resp), Err(SendError::Remote { code: -32602, .. })));
/// ```
pub fn interpret_send_response(resp: &http::Response<Vec<u8>>) -> Result<Envelope, SendError> {
    let status = resp.status().as_u16();
    let body = resp.body();
    match status {
        429 => {
            let retry_after = header(resp, http::header::RETRY_AFTER)
                .and_then(|v| retry_after_delay(v, header(resp, http::header::DATE)));
            let limit = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                v.pointer("/error/data/limit")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            return Err(SendError::RateLimited { retry_after, limit });
        }
        413 => {
            let detail = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned));
            return Err(SendError::PayloadTooLarge { detail });
        }
        500.. => {
            return Err(SendError::ServerError {
                status,
                snippet: snippet(body),
            })
        }
        400.. => {
            return Err(SendError::ClientError {
                status,
                snippet: snippet(body),
            })
        }
        200..=299 => {}
        _ => return Err(SendError::UnexpectedStatus { status }),
    }
    if let Some(enc) = header(resp, http::header::CONTENT_ENCODING) {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(SendError::UnsupportedContentEncoding(enc.to_owned()));
        }
    }
    decode_send_result(body)
}

/// Decodes a JSON-RPC response body (the part of [`interpret_send_response`]
/// after the status checks; also usable for WebSocket responses).
pub fn decode_send_result(body: &[u8]) -> Result<Envelope, SendError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| SendError::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(SendError::InvalidJson(format!(
            "expected a JSON object, got {}",
            crate::jsonrpc::python_type_name(&value)
        )));
    };
    if let Some(err) = obj.remove("error") {
        let Value::Object(mut e) = err else {
            return Err(SendError::InvalidJson(
                "`error` is not a JSON object".to_owned(),
            ));
        };
        let code = e
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or(codes::INTERNAL_ERROR);
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("Unknown error")
            .to_owned();
        let data = e.remove("data").filter(|d| !d.is_null());
        return Err(SendError::Remote {
            code,
            message,
            data,
        });
    }
    let envelope = match obj.remove("result") {
        Some(Value::Object(mut r)) => r.remove("envelope"),
        _ => None,
    };
    match envelope {
        None | Some(Value::Null) => Err(SendError::MissingEnvelope),
        Some(Value::Object(o)) if o.is_empty() => Err(SendError::MissingEnvelope),
        Some(v) => Envelope::from_value(v)
            .map_err(|e| SendError::InvalidEnvelope(e.within("result.envelope"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(body.as_bytes().to_vec()).unwrap()
    }

    const ENVELOPE: &str = r#"{"id":"e1","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:s","recipient":"urn:asap:agent:c","payload_type":"task.response","payload":{"task_id":"t","status":"completed","result":null,"final_state":null,"metrics":null},"correlation_id":"r1","trace_id":null,"requires_ack":false,"extensions":null}"#;

    #[test]
    fn success_and_remote_errors() {
        let ok = resp(
            200,
            &[],
            &format!(r#"{{"jsonrpc":"2.0","result":{{"envelope":{ENVELOPE}}},"id":"req-1"}}"#),
        );
        let env = interpret_send_response(&ok).unwrap();
        assert_eq!(env.id, "e1");
        let e = interpret_send_response(&resp(200, &[], r#"{"error":{}}"#)).unwrap_err();
        assert_eq!(
            e,
            SendError::Remote {
                code: -32603,
                message: "Unknown error".into(),
                data: None
            }
        );
        assert_eq!(e.fault(), Fault::Peer);
        assert_eq!(e.attempt_outcome(), AttemptOutcome::Success);
        let e = interpret_send_response(&resp(
            200,
            &[],
            r#"{"error":{"code":-32602,"message":"Invalid params","data":{"error":"x"}}}"#,
        ))
        .unwrap_err();
        assert_eq!(e.fault(), Fault::Local);
        assert_eq!(e.remote_code(), Some(-32602));
    }

    #[test]
    fn transport_failures_keep_their_kind_and_remote_data_is_kept() {
        let kinds = [
            (
                TransportErrorKind::Connect,
                AttemptOutcome::ConnectFailed,
                Fault::Network,
            ),
            (
                TransportErrorKind::Timeout,
                AttemptOutcome::TimedOut,
                Fault::Network,
            ),
            (
                TransportErrorKind::Other,
                AttemptOutcome::TransportFailed,
                Fault::Network,
            ),
            (
                TransportErrorKind::ResponseTooLarge { limit: 10 },
                AttemptOutcome::Rejected,
                Fault::Peer,
            ),
        ];
        for (kind, outcome, fault) in kinds {
            let e = SendError::Transport(TransportError::new(kind, "x"));
            assert_eq!(
                (e.attempt_outcome(), e.fault(), e.remote_code()),
                (outcome, fault, None),
                "{kind:?}"
            );
        }
        let e = interpret_send_response(&resp(
            200,
            &[],
            r#"{"error":{"code":-32001,"message":"busy","data":{"retry":true}}}"#,
        ))
        .unwrap_err();
        assert_eq!(
            e,
            SendError::Remote {
                code: -32001,
                message: "busy".into(),
                data: Some(serde_json::json!({"retry": true}))
            }
        );
        let e = interpret_send_response(&resp(
            200,
            &[],
            r#"{"error":{"code":1,"message":"m","data":null}}"#,
        ))
        .unwrap_err();
        assert!(matches!(e, SendError::Remote { data: None, .. }), "{e:?}");
    }

    #[test]
    fn malformed_bodies() {
        let cases = [
            ("not json", "InvalidJson"),
            ("[1]", "InvalidJson"),
            (r#"{"error":"x"}"#, "InvalidJson"),
            (r#"{"result":{}}"#, "MissingEnvelope"),
            (r#"{"result":{"envelope":{}}}"#, "MissingEnvelope"),
            (r#"{"result":{"envelope":null}}"#, "MissingEnvelope"),
            (r#"{"result":5}"#, "MissingEnvelope"),
            (r#"{"result":{"envelope":{"id":"x"}}}"#, "InvalidEnvelope"),
        ];
        for (body, want) in cases {
            let e = interpret_send_response(&resp(200, &[], body)).unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{body}: {e:?}");
            assert_eq!(e.fault(), Fault::Peer);
            assert_eq!(e.attempt_outcome(), AttemptOutcome::Rejected);
        }
        assert_eq!(
            SendError::InvalidJson(String::new()).remote_code(),
            Some(-32700)
        );
        assert_eq!(SendError::MissingEnvelope.remote_code(), Some(-32603));
        let e =
            interpret_send_response(&resp(200, &[("content-encoding", "br")], "x")).unwrap_err();
        assert_eq!(e, SendError::UnsupportedContentEncoding("br".into()));
        let e = interpret_send_response(&resp(302, &[], "")).unwrap_err();
        assert_eq!(e, SendError::UnexpectedStatus { status: 302 });
    }

    #[test]
    fn http_statuses() {
        let body429 = r#"{"jsonrpc":"2.0","id":null,"error":{"code":429,"message":"Rate limit exceeded","data":{"retry_after":59,"limit":"2 per 1 minute"}}}"#;
        let e = interpret_send_response(&resp(429, &[("retry-after", "59")], body429)).unwrap_err();
        assert_eq!(
            e,
            SendError::RateLimited {
                retry_after: Some(Duration::from_secs(59)),
                limit: Some("2 per 1 minute".into())
            }
        );
        assert_eq!(e.to_string(), "rate limited by the agent (2 per 1 minute)");
        assert_eq!(
            e.attempt_outcome(),
            AttemptOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(59))
            }
        );
        let e = interpret_send_response(&resp(429, &[("retry-after", "soon")], "")).unwrap_err();
        assert_eq!(
            e,
            SendError::RateLimited {
                retry_after: None,
                limit: None
            }
        );
        let e = interpret_send_response(&resp(
            429,
            &[
                ("retry-after", "Wed, 21 Oct 2015 07:28:10 GMT"),
                ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ],
            "",
        ))
        .unwrap_err();
        assert_eq!(
            e.attempt_outcome(),
            AttemptOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(10))
            }
        );
        let e = interpret_send_response(&resp(
            413,
            &[],
            r#"{"detail":"Request size (2325 bytes) exceeds maximum (1024 bytes)"}"#,
        ))
        .unwrap_err();
        assert_eq!(e.fault(), Fault::Local);
        assert!(e.to_string().ends_with("exceeds maximum (1024 bytes)"));
        let long = "x".repeat(500);
        let e = interpret_send_response(&resp(503, &[], &long)).unwrap_err();
        assert!(
            matches!(&e, SendError::ServerError { status: 503, snippet } if snippet.len() == 200)
        );
        assert_eq!(
            e.attempt_outcome(),
            AttemptOutcome::ServerError { status: 503 }
        );
        let e = interpret_send_response(&resp(401, &[], r#"{"detail":"Authentication required"}"#))
            .unwrap_err();
        assert!(matches!(e, SendError::ClientError { status: 401, .. }));
        assert_eq!(e.attempt_outcome(), AttemptOutcome::Rejected);
    }
}
