//! Building answers: HTTP error bodies, JSON-RPC errors, and the reply
//! envelope of a handler's outcome.

use http::{header, Response, StatusCode};
use serde_json::{json, Value};

use super::config::ServerConfig;
use super::handler::{HandlerError, HandlerOutcome};
use crate::jsonrpc::{self, ErrorResponse, RequestId, SuccessResponse};
use crate::model::{
    AgentUrn, Envelope, JsonObject, Payload, TaskResponse, Timestamp, UlidGenerator, UnixTime,
};

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_default()
}

/// `{"detail": text}` with `status`.
pub(super) fn detail(status: StatusCode, text: &str) -> Response<Vec<u8>> {
    json_response(status, jsonrpc::detail_body(text))
}

/// A JSON-RPC error: HTTP 200, as every JSON-RPC error of spec 9.1.
pub(super) fn rpc_error(err: &ErrorResponse) -> Response<Vec<u8>> {
    json_response(StatusCode::OK, err.to_vec())
}

/// 503 with `Retry-After` and `Connection: close`: a budget (connections,
/// bytes of bodies in flight) is full; `what` says which, for the client's logs.
#[must_use]
pub fn busy(retry_after_secs: u64, what: &str) -> Response<Vec<u8>> {
    let mut r = detail(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("Server busy: {what}; retry after {retry_after_secs} s"),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        http::HeaderValue::from(retry_after_secs),
    );
    closing(r)
}

/// 408 with `Connection: close`: the peer was too slow; `what` names the limit.
#[must_use]
pub fn request_timeout(what: &str) -> Response<Vec<u8>> {
    closing(detail(
        StatusCode::REQUEST_TIMEOUT,
        &format!("Request timed out: {what}"),
    ))
}

/// 431: the request head is larger than `max` bytes.
#[must_use]
pub fn headers_too_large(size: usize, max: usize) -> Response<Vec<u8>> {
    closing(detail(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        &format!("Request headers ({size} bytes) exceed maximum ({max} bytes)"),
    ))
}

fn closing(mut r: Response<Vec<u8>>) -> Response<Vec<u8>> {
    r.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    r
}

/// The bytes of `response` as an HTTP/1.1 message with `Content-Length`, for
/// adapters that answer on a raw socket (a refused connection, a timed-out head).
#[must_use]
pub fn encode_http1(response: &Response<Vec<u8>>) -> Vec<u8> {
    let status = response.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        if name != header::CONTENT_LENGTH {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", response.body().len()).as_bytes());
    out.extend_from_slice(response.body());
    out
}

/// The reference's 429: JSON-RPC-shaped body with code 429 and `Retry-After`.
#[must_use]
pub fn rate_limited(retry_after_secs: u64, limit: &str) -> Response<Vec<u8>> {
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorResponse::rate_limited_body(retry_after_secs, limit),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        http::HeaderValue::from(retry_after_secs),
    );
    r
}

/// 503 for a full nonce store, shaped as the reference's other 503
/// (`thread_pool_exhausted`, spec 9.3), with `Retry-After`: the server is
/// busy, not the sender wrong, so clients retry (the nonce was not used).
#[must_use]
pub fn nonce_store_full(capacity: usize, retry_after_secs: u64) -> Response<Vec<u8>> {
    let body = json!({
        "error": "Service Temporarily Unavailable",
        "code": jsonrpc::asap_codes::NONCE_STORE_FULL,
        "message": format!(
            "Nonce store full: {capacity} nonces are inside the replay window. Service temporarily unavailable; retry in {retry_after_secs} s."
        ),
        "details": {"max_nonces": capacity, "retry_after_seconds": retry_after_secs},
    });
    let mut r = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        http::HeaderValue::from(retry_after_secs),
    );
    r
}

/// The error response for a handler failure: an ASAP protocol error
/// (`asap:task/not_found`, `asap:protocol/invalid_state`, ...) is -32602 with
/// the error object in `data`, as the protocol documentation maps it (the
/// reference answers -32603); anything else is -32603, details only in debug mode.
#[must_use]
pub fn handler_error(
    config: &ServerConfig,
    id: Option<RequestId>,
    err: &HandlerError,
) -> ErrorResponse {
    if let HandlerError::Asap(e) = err {
        if e.code.starts_with("asap:task/") || e.code.starts_with("asap:protocol/") {
            return ErrorResponse::invalid_params_asap(&e.message, e, id);
        }
    }
    let detail = config.debug.then(|| match err {
        HandlerError::Asap(e) => {
            json!({"error": e.message, "type": e.code, "details": e.details})
        }
        HandlerError::Failed { message, kind } => json!({"error": message, "type": kind}),
    });
    ErrorResponse::internal(id, detail)
}

/// Encodes a handler's outcome (spec 8.3 / 9): a reply envelope from `agent`
/// to the sender of `request` (whose JSON-RPC id was `request_id`), or the
/// error of [`handler_error`].
#[allow(clippy::too_many_arguments)]
pub(super) fn reply(
    config: &ServerConfig,
    agent: &AgentUrn,
    ids: &mut UlidGenerator,
    request_id: RequestId,
    request: &Envelope,
    task_id: Option<String>,
    outcome: HandlerOutcome,
    now: UnixTime,
) -> Response<Vec<u8>> {
    let payload = match outcome {
        HandlerOutcome::Skill(r) => Payload::TaskResponse(TaskResponse {
            task_id: task_id.unwrap_or_else(|| ids.next(now).prefixed("task_")),
            status: r.status,
            result: r.result,
            final_state: r.final_state,
            metrics: r.metrics,
        }),
        HandlerOutcome::Reply(p) => p,
        HandlerOutcome::Envelope(env) => {
            return json_response(
                StatusCode::OK,
                SuccessResponse::new(env, request_id).to_vec(),
            );
        }
        HandlerOutcome::Failed(err) => {
            return rpc_error(&handler_error(config, Some(request_id), &err))
        }
    };
    let id = ids.next_string(now);
    let mut trace_id = request.trace_id.as_deref().map(std::borrow::Cow::Borrowed);
    let mut extensions = None;
    if config.trace_extensions && !has_remote_trace_context(request) {
        let hex = |words: &[u64]| {
            let mut out = String::with_capacity(16 * words.len());
            for w in words {
                crate::model::push_lower_hex(&mut out, &w.to_be_bytes());
            }
            out
        };
        let trace = hex(&[ids.next_u64(), ids.next_u64()]);
        let span = hex(&[ids.next_u64()]);
        let mut ext = JsonObject::new();
        ext.insert("trace_id".into(), trace.clone().into());
        ext.insert("span_id".into(), span.into());
        extensions = Some(ext);
        trace_id.get_or_insert(std::borrow::Cow::Owned(trace));
    }
    // What `request.reply(..)` would build, written without building it.
    let reply = ReplyView {
        id: &id,
        asap_version: &request.asap_version,
        timestamp: Timestamp::from_unix(now),
        sender: agent,
        recipient: &request.sender,
        payload_type: payload.payload_type(),
        payload: PayloadObject(&payload),
        correlation_id: Some(&request.id),
        trace_id: trace_id.as_deref(),
        requires_ack: false,
        extensions: extensions.as_ref(),
    };
    json_response(
        StatusCode::OK,
        SuccessResponse::new(reply, request_id).to_vec(),
    )
}

/// A reply [`Envelope`] borrowed from its parts: the same members in the same
/// order, so the same bytes, without copying the request's strings or turning
/// the payload into a JSON object first.
#[derive(serde::Serialize)]
struct ReplyView<'a> {
    id: &'a str,
    asap_version: &'a str,
    timestamp: Timestamp,
    sender: &'a AgentUrn,
    recipient: &'a AgentUrn,
    payload_type: &'a str,
    payload: PayloadObject<'a>,
    correlation_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    requires_ack: bool,
    extensions: Option<&'a JsonObject>,
}

/// A typed payload written as the object [`Payload::to_object`] would build.
struct PayloadObject<'a>(&'a Payload);

impl serde::Serialize for PayloadObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_object(s)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Whether the envelope carries a W3C trace context (32-hex `trace_id` and
/// 16-hex `extensions.span_id`) that the reply continues without new extensions.
#[must_use]
pub fn has_remote_trace_context(env: &Envelope) -> bool {
    let span = env
        .extensions
        .as_ref()
        .and_then(|e| e.get("span_id"))
        .and_then(Value::as_str);
    matches!((env.trace_id.as_deref(), span), (Some(t), Some(s)) if is_lower_hex(t, 32) && is_lower_hex(s, 16))
}

/// The text a `rejected` MessageAck carries for an answer that is not a
/// result: the JSON-RPC error's message and `data.error`, or the `detail`
/// of an HTTP-level refusal.
pub(super) fn rejection_reason(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if let Some(err) = v.get("error") {
        let message = err
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("error");
        let code = err
            .get("code")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        return match err.pointer("/data/error").and_then(|d| d.as_str()) {
            Some(detail) => format!("{code} {message}: {detail}"),
            None => format!("{code} {message}"),
        };
    }
    v.get("detail")
        .and_then(|d| d.as_str())
        .unwrap_or("the request was not processed")
        .to_owned()
}

/// Whether a JSON-RPC answer body is an error object (a cheap look at its
/// members, not a parse of the result).
pub(super) fn is_error_body(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(body).map_or(true, |p| p.error.is_some())
}

/// A stored JSON-RPC answer re-addressed to another request id (a copy of
/// an envelope arriving with its own id, e.g. a WebSocket retransmission).
pub(super) fn readdress(body: &[u8], id: &RequestId) -> Response<Vec<u8>> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return json_response(StatusCode::OK, body.to_vec());
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("id".into(), serde_json::to_value(id).unwrap_or(Value::Null));
    }
    json_response(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed reply writes the bytes the built `Envelope` writes, for
    /// every payload shape and with or without trace members.
    #[test]
    fn reply_view_writes_the_envelope_bytes() {
        let request: Envelope = serde_json::from_value(json!({
            "id": "req-1", "asap_version": "0.1", "timestamp": "2026-01-01T00:00:00Z",
            "sender": "urn:asap:agent:a", "recipient": "urn:asap:agent:b",
            "payload_type": "task.request", "trace_id": "t-1",
            "payload": {"conversation_id": "c", "skill_id": "echo", "input": {}},
        }))
        .unwrap();
        let agent = AgentUrn::new("urn:asap:agent:b").unwrap();
        let payloads = [
            (
                "task.response",
                json!({"task_id": "task_1", "status": "completed",
                "result": {"x": [1, 2.5, "é"], "big": 1e300}, "metrics": {"ms": 3}}),
            ),
            (
                "task.response",
                json!({"task_id": "task_2", "status": "failed"}),
            ),
            (
                "task.update",
                json!({"task_id": "t", "update_type": "progress", "status": "working",
                "progress": {"percent": 50.5}}),
            ),
            (
                "MessageAck",
                json!({"original_envelope_id": "e", "status": "received"}),
            ),
            ("custom.kind", json!({"z": 1, "a": {"nested": null}})),
        ];
        for (kind, object) in payloads {
            let payload = Payload::decode(kind, object.as_object().unwrap().clone()).unwrap();
            for (trace_id, extensions) in [
                (Some("t-1"), None),
                (
                    None,
                    Some(
                        json!({"trace_id": "x", "span_id": "y"})
                            .as_object()
                            .unwrap()
                            .clone(),
                    ),
                ),
            ] {
                let ts = Timestamp::from_unix(UnixTime::from_secs(1_767_225_600));
                let mut built = request.reply("r-1".into(), ts, agent.clone(), payload.clone());
                built.trace_id = trace_id.map(str::to_owned);
                built.extensions.clone_from(&extensions);
                let view = ReplyView {
                    id: "r-1",
                    asap_version: &request.asap_version,
                    timestamp: ts,
                    sender: &agent,
                    recipient: &request.sender,
                    payload_type: payload.payload_type(),
                    payload: PayloadObject(&payload),
                    correlation_id: Some(&request.id),
                    trace_id,
                    requires_ack: false,
                    extensions: extensions.as_ref(),
                };
                assert_eq!(
                    SuccessResponse::new(view, RequestId::Int(1)).to_vec(),
                    SuccessResponse::new(built, RequestId::Int(1)).to_vec(),
                    "{kind}"
                );
            }
        }
    }
}
