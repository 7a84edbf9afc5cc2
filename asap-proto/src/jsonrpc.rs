//! JSON-RPC 2.0 binding of ASAP (`asap.send`, `asap.ack`) and the error taxonomy.
//!
//! [`decode_request`] applies the reference's JSON-RPC checks in its order
//! (spec 8.4 steps 5-8, 10) and turns every failure into the exact
//! [`ErrorResponse`] the spec prescribes.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::DecodeError;
use crate::model::{EnvelopeInput, JsonObject};

/// The only JSON-RPC method of `POST /asap`.
pub const METHOD_SEND: &str = "asap.send";
/// WebSocket notification carrying a `MessageAck`.
pub const METHOD_ACK: &str = "asap.ack";
/// The JSON-RPC version string.
pub const JSONRPC_VERSION: &str = "2.0";

/// Numeric JSON-RPC error codes used by ASAP.
pub mod codes {
    /// Invalid JSON or invalid UTF-8.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method or no handler for the payload type.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad params or envelope.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Handler or server failure.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// WebSocket per-connection rate limit.
    pub const WS_RATE_LIMITED: i64 = -32001;
    /// HTTP 429 body (the reference reuses the HTTP status as the code).
    pub const RATE_LIMITED: i64 = 429;

    /// The fixed `message` text for a code.
    #[must_use]
    pub fn message(code: i64) -> &'static str {
        match code {
            PARSE_ERROR => "Parse error",
            INVALID_REQUEST => "Invalid request",
            METHOD_NOT_FOUND => "Method not found",
            INVALID_PARAMS => "Invalid params",
            INTERNAL_ERROR => "Internal error",
            WS_RATE_LIMITED => "Rate limit exceeded; too many messages per second",
            RATE_LIMITED => "Rate limit exceeded",
            _ => "Server error",
        }
    }
}

/// ASAP string error codes (`ASAPError.to_dict()["code"]`).
pub mod asap_codes {
    /// Illegal task status transition.
    pub const INVALID_STATE: &str = "asap:protocol/invalid_state";
    /// Envelope could not be understood.
    pub const MALFORMED_ENVELOPE: &str = "asap:protocol/malformed_envelope";
    /// Unknown task.
    pub const TASK_NOT_FOUND: &str = "asap:task/not_found";
    /// Task already finished.
    pub const TASK_ALREADY_COMPLETED: &str = "asap:task/already_completed";
    /// Bounded executor full.
    pub const THREAD_POOL_EXHAUSTED: &str = "asap:transport/thread_pool_exhausted";
    /// Nonce store full (asap-rs, not in the reference): retry after `Retry-After`.
    pub const NONCE_STORE_FULL: &str = "asap:transport/nonce_store_full";
    /// Envelope outside the replay window.
    pub const INVALID_TIMESTAMP: &str = "asap:protocol/invalid_timestamp";
    /// Bad or replayed nonce.
    pub const INVALID_NONCE: &str = "asap:protocol/invalid_nonce";
    /// Circuit breaker open.
    pub const CIRCUIT_OPEN: &str = "asap:transport/circuit_open";
    /// Webhook URL refused by the SSRF policy.
    pub const WEBHOOK_URL_REJECTED: &str = "asap:transport/webhook_url_rejected";
    /// Manifest lists an unsupported auth scheme.
    pub const UNSUPPORTED_AUTH_SCHEME: &str = "asap:auth/unsupported_scheme";
    /// No handler for a payload type.
    pub const HANDLER_NOT_FOUND: &str = "asap:transport/handler_not_found";
}

/// An ASAP error in the reference's `{code, message, details}` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AsapError {
    /// `asap:<domain>/<name>`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Structured details.
    pub details: Value,
}

impl AsapError {
    /// Builds an error.
    pub fn new(code: &str, message: impl Into<String>, details: Value) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            details,
        }
    }
    /// `TaskNotFoundError`.
    #[must_use]
    pub fn task_not_found(task_id: &str) -> Self {
        Self::new(
            asap_codes::TASK_NOT_FOUND,
            format!("Task not found: {task_id}"),
            json!({"task_id": task_id}),
        )
    }
    /// `MalformedEnvelopeError`.
    #[must_use]
    pub fn malformed_envelope(reason: &str, details: Value) -> Self {
        Self::new(
            asap_codes::MALFORMED_ENVELOPE,
            format!("Malformed envelope: {reason}"),
            details,
        )
    }
    /// `TaskAlreadyCompletedError`.
    #[must_use]
    pub fn task_already_completed(task_id: &str, status: &str) -> Self {
        Self::new(
            asap_codes::TASK_ALREADY_COMPLETED,
            format!("Task already completed: {task_id} (status: {status})"),
            json!({"task_id": task_id, "current_status": status}),
        )
    }
    /// `HandlerNotFoundError`.
    #[must_use]
    pub fn handler_not_found(payload_type: &str) -> Self {
        Self::new(
            asap_codes::HANDLER_NOT_FOUND,
            format!("No handler registered for payload type: {payload_type}"),
            json!({"payload_type": payload_type}),
        )
    }
}

/// A JSON-RPC id: string or integer, echoed with its JSON type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    /// Integer id.
    Int(i64),
    /// String id.
    Str(String),
    /// Integer id outside `i64` (the reference's ids are Python ints of any
    /// size): its decimal digits, echoed verbatim as a JSON number.
    Big(String),
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(n) => s.serialize_i64(*n),
            Self::Str(v) => s.serialize_str(v),
            Self::Big(digits) => serde_json::value::RawValue::from_string(digits.clone())
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // serde_json hands integers outside i64/u64 (and `-0`) to visitors as
        // f64, losing their digits: read the literal so `Big` ids round-trip.
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get();
        if text.starts_with('"') {
            return serde_json::from_str(text)
                .map(RequestId::Str)
                .map_err(D::Error::custom);
        }
        RequestId::from_integer_literal(text).ok_or_else(|| {
            D::Error::invalid_type(
                serde::de::Unexpected::Other(text),
                &"a string or an integer",
            )
        })
    }
}

impl RequestId {
    /// An integer literal's id: `Int` when it fits `i64` (so `-0` is 0, as in
    /// Python), else `Big` with its digits. `None` for anything else.
    fn from_integer_literal(text: &str) -> Option<Self> {
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(
            text.parse::<i64>()
                .map_or_else(|_| Self::Big(text.to_owned()), Self::Int),
        )
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}
impl From<String> for RequestId {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}
impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl RequestId {
    /// The reference's lax coercion: strings, integers, `true`/`false` (→ 1/0) and
    /// integral floats (`1.0` → 1). Anything else is `None`.
    #[must_use]
    pub fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(Self::Str(s.clone())),
            Value::Bool(b) => Some(Self::Int(i64::from(*b))),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Some(Self::Int(i))
                } else if let Some(u) = n.as_u64() {
                    Some(Self::Big(u.to_string()))
                } else {
                    let f = n.as_f64()?;
                    (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(Self::Int(f as i64))
                }
            }
            _ => None,
        }
    }
}

/// A decoded `asap.send` request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonRpcRequest {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The method (`asap.send`).
    pub method: String,
    /// Params; `params.envelope` holds the envelope.
    pub params: JsonObject,
    /// Request id.
    pub id: RequestId,
}

impl JsonRpcRequest {
    /// An `asap.send` request for `envelope`.
    pub fn send(envelope: &crate::model::Envelope, id: RequestId) -> Self {
        let mut params = Map::new();
        params.insert(
            "envelope".into(),
            serde_json::to_value(envelope).unwrap_or(Value::Null),
        );
        Self {
            jsonrpc: JSONRPC_VERSION.into(),
            method: METHOD_SEND.into(),
            params,
            id,
        }
    }

    /// Extracts and decodes `params.envelope` (spec 8.4 step 10).
    pub fn take_envelope(&mut self) -> Result<EnvelopeInput, ErrorResponse> {
        let id = Some(self.id.clone());
        match self.params.remove("envelope") {
            None | Some(Value::Null) => Err(ErrorResponse::new(
                codes::INVALID_PARAMS,
                Some(json!({"error": "Missing 'envelope' in params"})),
                id,
            )),
            Some(Value::Object(obj)) => decode_envelope_object(obj).map_err(|errs| {
                ErrorResponse::new(
                    codes::INVALID_PARAMS,
                    Some(json!({
                        "error": "Invalid envelope structure",
                        "validation_errors": errs.iter().map(DecodeError::to_validation_item).collect::<Vec<_>>(),
                    })),
                    id,
                )
            }),
            Some(_) => Err(ErrorResponse::new(
                codes::INVALID_PARAMS,
                Some(json!({"error": "'envelope' must be a JSON object"})),
                id,
            )),
        }
    }
}

const ENVELOPE_REQUIRED: [&str; 5] = [
    "asap_version",
    "sender",
    "recipient",
    "payload_type",
    "payload",
];

const ENVELOPE_MEMBERS: [&str; 11] = [
    "id",
    "asap_version",
    "timestamp",
    "sender",
    "recipient",
    "payload_type",
    "payload",
    "correlation_id",
    "trace_id",
    "requires_ack",
    "extensions",
];

/// Decodes an envelope object, reporting every missing required member at once
/// (as pydantic does) before any other problem.
pub fn decode_envelope_object(obj: JsonObject) -> Result<EnvelopeInput, Vec<DecodeError>> {
    let mut missing: Vec<DecodeError> = ENVELOPE_REQUIRED
        .iter()
        .filter(|k| !obj.contains_key(**k))
        .map(|k| DecodeError::new(*k, crate::error::DecodeErrorKind::Missing, "Field required"))
        .collect();
    if !missing.is_empty() {
        // pydantic reports unknown members alongside the missing ones.
        missing.extend(
            obj.keys()
                .filter(|k| !ENVELOPE_MEMBERS.contains(&k.as_str()))
                .map(|k| {
                    DecodeError::new(
                        k.as_str(),
                        crate::error::DecodeErrorKind::UnknownField,
                        "Extra inputs are not permitted",
                    )
                }),
        );
        return Err(missing);
    }
    EnvelopeInput::from_value(Value::Object(obj)).map_err(|e| vec![e])
}

/// A successful `asap.send` response: `{"jsonrpc","result":{"envelope"},"id"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuccessResponse<E = crate::model::Envelope> {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// `{"envelope": ...}`.
    pub result: SendResult<E>,
    /// Echoed request id.
    pub id: RequestId,
}

/// The `result` member of an `asap.send` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendResult<E = crate::model::Envelope> {
    /// The response envelope.
    pub envelope: E,
}

impl<E: Serialize> SuccessResponse<E> {
    /// Wraps a response envelope.
    pub fn new(envelope: E, id: RequestId) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.into(),
            result: SendResult { envelope },
            id,
        }
    }
    /// Compact JSON bytes.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A JSON-RPC error object: `{"code","message","data"}` (`data` always present).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Numeric code ([`codes`]).
    pub code: i64,
    /// Fixed message for the code.
    pub message: String,
    /// Structured detail or `null`.
    pub data: Option<Value>,
}

/// A JSON-RPC error response: `{"jsonrpc","error","id"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("JSON-RPC error {}: {}", error.code, error.message)]
pub struct ErrorResponse {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The error.
    pub error: ErrorObject,
    /// Echoed id, or `null` when it could not be determined.
    pub id: Option<RequestId>,
}

impl ErrorResponse {
    /// An error with the standard message for `code`.
    #[must_use]
    pub fn new(code: i64, data: Option<Value>, id: Option<RequestId>) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.into(),
            error: ErrorObject {
                code,
                message: codes::message(code).to_owned(),
                data,
            },
            id,
        }
    }
    /// Compact JSON bytes.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    /// -32700 with `data.error = "Invalid JSON: ..."`.
    #[must_use]
    pub fn parse_error(detail: &str) -> Self {
        Self::new(
            codes::PARSE_ERROR,
            Some(json!({"error": format!("Invalid JSON: {detail}")})),
            None,
        )
    }
    /// -32700 with `data.error = "Invalid UTF-8 encoding: ..."`.
    #[must_use]
    pub fn invalid_utf8(detail: &str) -> Self {
        Self::new(
            codes::PARSE_ERROR,
            Some(json!({"error": format!("Invalid UTF-8 encoding: {detail}")})),
            None,
        )
    }
    /// -32601 for a method other than `asap.send`.
    #[must_use]
    pub fn method_not_found(method: &str, id: RequestId) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            Some(json!({"method": method})),
            Some(id),
        )
    }
    /// -32601 for a payload type without a handler.
    #[must_use]
    pub fn no_handler(payload_type: &str, id: Option<RequestId>) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            Some(json!({
                "payload_type": payload_type,
                "error": format!("No handler registered for payload type: {payload_type}"),
            })),
            id,
        )
    }
    /// -32602 for an envelope that decoded but broke a rule (field named in `error`).
    #[must_use]
    pub fn invalid_envelope(err: &DecodeError, id: Option<RequestId>) -> Self {
        Self::new(
            codes::INVALID_PARAMS,
            Some(
                json!({"error": "Invalid envelope structure", "validation_errors": [err.to_validation_item()]}),
            ),
            id,
        )
    }
    /// -32602 carrying an ASAP error (`invalid_timestamp`, `invalid_nonce`).
    #[must_use]
    pub fn invalid_params_asap(summary: &str, err: &AsapError, id: Option<RequestId>) -> Self {
        Self::new(
            codes::INVALID_PARAMS,
            Some(
                json!({"error": summary, "code": err.code, "message": err.message, "details": err.details}),
            ),
            id,
        )
    }
    /// -32603 `{"error": "Internal server error"}` (or a debug detail).
    #[must_use]
    pub fn internal(id: Option<RequestId>, debug_detail: Option<Value>) -> Self {
        Self::new(
            codes::INTERNAL_ERROR,
            Some(debug_detail.unwrap_or_else(|| json!({"error": "Internal server error"}))),
            id,
        )
    }
    /// The 429 body: `{"jsonrpc","id":null,"error":{code 429, data{retry_after, limit}}}`,
    /// member order as the reference writes it.
    #[must_use]
    pub fn rate_limited_body(retry_after_secs: u64, limit: &str) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), JSONRPC_VERSION.into());
        m.insert("id".into(), Value::Null);
        m.insert(
            "error".into(),
            json!({"code": codes::RATE_LIMITED, "message": codes::message(codes::RATE_LIMITED),
                   "data": {"retry_after": retry_after_secs, "limit": limit}}),
        );
        serde_json::to_vec(&m).unwrap_or_default()
    }
}

/// A `{"detail": "..."}` body, as the reference's HTTP-level errors (413, 415, 400, 404, 405).
#[must_use]
pub fn detail_body(detail: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "detail": detail })).unwrap_or_default()
}

/// Python's name for a JSON value's type (`received_type` in -32600 bodies).
#[must_use]
pub fn python_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn item(kind: &str, loc: &str, msg: &str) -> Value {
    json!({"type": kind, "loc": [loc], "msg": msg})
}

/// Decodes a parsed request body into an `asap.send` request, applying the
/// reference's checks in order (object → structure → method). The envelope
/// inside `params` is decoded separately with [`JsonRpcRequest::take_envelope`].
///
/// As in the reference, a missing `jsonrpc` member defaults to `"2.0"`.
///
/// Difference from the reference: an `id` of unusable type (float with a
/// fraction, object, array) is answered with -32602 naming `id`, not -32603.
pub fn decode_request(body: Value) -> Result<JsonRpcRequest, ErrorResponse> {
    decode_request_with_big_id(body, None)
}

/// [`decode_request`] for a body parsed from `raw`: an integer `id` too large
/// for `u64` (which the parsed value only holds as a float) is echoed with
/// its exact digits, as the reference (Python ints) does.
pub fn decode_request_raw(body: Value, raw: &[u8]) -> Result<JsonRpcRequest, ErrorResponse> {
    let big = match body.get("id") {
        Some(Value::Number(n)) if n.is_f64() => raw_integer_id(raw)
            .as_deref()
            .and_then(RequestId::from_integer_literal),
        _ => None,
    };
    decode_request_with_big_id(body, big)
}

/// The text of the top-level `id` member of `raw` when it is an integer literal.
fn raw_integer_id(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: &'a serde_json::value::RawValue,
    }
    let text = serde_json::from_slice::<IdOnly<'_>>(raw).ok()?.id.get();
    let digits = text.strip_prefix('-').unwrap_or(text);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| text.to_owned())
}

fn decode_request_with_big_id(
    body: Value,
    big_id: Option<RequestId>,
) -> Result<JsonRpcRequest, ErrorResponse> {
    let Value::Object(mut obj) = body else {
        return Err(ErrorResponse::new(
            codes::INVALID_REQUEST,
            Some(
                json!({"error": "JSON-RPC request must be an object", "received_type": python_type_name(&body)}),
            ),
            None,
        ));
    };
    let mut errors = Vec::new();
    let mut params_not_object = false;
    let mut bad_id = false;

    let jsonrpc = match obj.get("jsonrpc") {
        // The reference's model defaults the member to "2.0" (see
        // schemas_current/jsonrpc_request.json), so a request without it is accepted.
        None => Some(JSONRPC_VERSION.to_owned()),
        Some(Value::String(s)) if s == JSONRPC_VERSION => Some(s.clone()),
        Some(_) => {
            errors.push(item("literal_error", "jsonrpc", "Input should be '2.0'"));
            None
        }
    };
    let method = match obj.get("method") {
        None => {
            errors.push(item("missing", "method", "Field required"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(item(
                "string_type",
                "method",
                "Input should be a valid string",
            ));
            None
        }
    };
    match obj.get("params") {
        None => errors.push(item("missing", "params", "Field required")),
        Some(Value::Object(_)) => {}
        Some(_) => {
            params_not_object = true;
            errors.push(item(
                "dict_type",
                "params",
                "Input should be a valid dictionary",
            ));
        }
    }
    let id = match obj.get("id") {
        None => {
            errors.push(item("missing", "id", "Field required"));
            None
        }
        Some(Value::Null) => {
            // The reference's shape: one item per member of `str | int`.
            errors.push(json!({"type": "string_type", "loc": ["id", "str"],
                "msg": "Input should be a valid string"}));
            errors.push(json!({"type": "int_type", "loc": ["id", "int"],
                "msg": "Input should be a valid integer"}));
            None
        }
        Some(v) => match big_id.or_else(|| RequestId::from_json(v)) {
            Some(id) => Some(id),
            None => {
                bad_id = true;
                errors.push(item(
                    "int_type",
                    "id",
                    "Input should be a valid string or integer",
                ));
                None
            }
        },
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "jsonrpc" | "method" | "params" | "id") {
            errors.push(json!({"type": "extra_forbidden", "loc": [key], "msg": "Extra inputs are not permitted"}));
        }
    }
    if !errors.is_empty() {
        let (code, summary) = if params_not_object {
            (codes::INVALID_PARAMS, "JSON-RPC 'params' must be an object")
        } else if bad_id {
            // A fractional or structured id is a malformed request (-32600); the
            // reference crashes into -32603 with id "".
            (
                codes::INVALID_REQUEST,
                "JSON-RPC 'id' must be a string or an integer",
            )
        } else {
            (codes::INVALID_REQUEST, "Invalid JSON-RPC structure")
        };
        return Err(ErrorResponse::new(
            code,
            Some(json!({"error": summary, "validation_errors": errors})),
            id,
        ));
    }
    let (Some(jsonrpc), Some(method), Some(id)) = (jsonrpc, method, id) else {
        return Err(ErrorResponse::internal(None, None));
    };
    if method != METHOD_SEND {
        return Err(ErrorResponse::method_not_found(&method, id));
    }
    let params = match obj.remove("params") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    Ok(JsonRpcRequest {
        jsonrpc,
        method,
        params,
        id,
    })
}

/// One pass from the bytes of a well-formed `asap.send` request straight to
/// its id and envelope, with no intermediate JSON tree (the common case: about
/// a fifth of a request's work otherwise). `None` for anything the checked path
/// ([`parse_json`], [`decode_request_raw`], [`JsonRpcRequest::take_envelope`])
/// would refuse, coerce or disambiguate (a duplicate member, a `null`, a
/// non-integer id, a wrong method): the caller then takes that path, which
/// names the problem. Where both succeed they agree (tested over generated and
/// hostile requests).
pub(crate) fn decode_send(bytes: &[u8]) -> Option<(RequestId, EnvelopeInput)> {
    fn version() -> String {
        JSONRPC_VERSION.to_owned()
    }
    // Derived structs also accept a JSON array (members by position): the
    // nested objects are taken raw and must be objects before they are read.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Send<'a> {
        // Absent means "2.0" (the reference's default); `null` is refused.
        #[serde(default = "version")]
        jsonrpc: String,
        method: String,
        #[serde(borrow)]
        params: &'a serde_json::value::RawValue,
        id: RequestId,
    }
    // Members of `params` other than `envelope` are ignored, as on the checked path.
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        envelope: &'a serde_json::value::RawValue,
    }
    fn object(raw: &serde_json::value::RawValue) -> Option<&str> {
        let text = raw.get();
        text.starts_with('{').then_some(text)
    }
    let text = std::str::from_utf8(bytes).ok()?;
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return None;
    }
    let send: Send<'_> = serde_json::from_str(text).ok()?;
    if send.jsonrpc != JSONRPC_VERSION || send.method != METHOD_SEND {
        return None;
    }
    let params: Params<'_> = serde_json::from_str(object(send.params)?).ok()?;
    let envelope = serde_json::from_str(object(params.envelope)?).ok()?;
    Some((send.id, envelope))
}

/// Parses request bytes: UTF-8 and JSON checks (-32700), then [`decode_request`].
pub fn decode_request_bytes(bytes: &[u8]) -> Result<JsonRpcRequest, ErrorResponse> {
    let value = parse_json(bytes)?;
    decode_request_raw(value, bytes)
}

/// UTF-8 check then JSON parse, with the reference's -32700 bodies.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ErrorResponse> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ErrorResponse::invalid_utf8(&python_utf8_error(bytes, &e)))?;
    serde_json::from_str(text).map_err(|e| ErrorResponse::parse_error(&e.to_string()))
}

/// Python's `UnicodeDecodeError` text for `bytes.decode("utf-8")`, e.g.
/// `'utf-8' codec can't decode byte 0xff in position 7: invalid start byte`.
fn python_utf8_error(bytes: &[u8], e: &std::str::Utf8Error) -> String {
    let pos = e.valid_up_to();
    let first = bytes.get(pos).copied().unwrap_or(0);
    match e.error_len() {
        // Truncated sequence at the end of the input.
        None if bytes.len() - pos > 1 => format!(
            "'utf-8' codec can't decode bytes in position {pos}-{}: unexpected end of data",
            bytes.len() - 1
        ),
        None => format!(
            "'utf-8' codec can't decode byte 0x{first:02x} in position {pos}: unexpected end of data"
        ),
        Some(len) if len > 1 => format!(
            "'utf-8' codec can't decode bytes in position {pos}-{}: invalid continuation byte",
            pos + len - 1
        ),
        Some(_) => {
            // A byte that cannot start a sequence (continuation byte, 0xc0/0xc1, 0xf5..)
            // versus a valid start followed by a bad continuation.
            let reason = if matches!(first, 0x80..=0xc1 | 0xf5..=0xff) {
                "invalid start byte"
            } else {
                "invalid continuation byte"
            };
            format!("'utf-8' codec can't decode byte 0x{first:02x} in position {pos}: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_errors_read_like_python() {
        // Texts from CPython's `bytes.decode("utf-8")`.
        let cases: [(&[u8], &str); 9] = [
            (
                b"{\"a\": \"\xff\"}",
                "byte 0xff in position 7: invalid start byte",
            ),
            (
                b"ab\xe2\x82",
                "bytes in position 2-3: unexpected end of data",
            ),
            (b"\xe2", "byte 0xe2 in position 0: unexpected end of data"),
            (
                b"\xe2(\xa1",
                "byte 0xe2 in position 0: invalid continuation byte",
            ),
            (
                b"\xe2\x82(",
                "bytes in position 0-1: invalid continuation byte",
            ),
            (
                b"\xed\xa0\x80",
                "byte 0xed in position 0: invalid continuation byte",
            ),
            (
                b"\xf4\x90\x80\x80",
                "byte 0xf4 in position 0: invalid continuation byte",
            ),
            (b"\xc0\xaf", "byte 0xc0 in position 0: invalid start byte"),
            (
                b"\xf0\x9f\x98",
                "bytes in position 0-2: unexpected end of data",
            ),
        ];
        for (bytes, want) in cases {
            let err = parse_json(bytes).unwrap_err();
            let data = err.error.data.unwrap();
            assert_eq!(
                data["error"],
                format!("Invalid UTF-8 encoding: 'utf-8' codec can't decode {want}"),
                "{bytes:?}"
            );
        }
    }
}

/// The one-pass decoder agrees with the checked path wherever it answers.
#[cfg(test)]
mod one_pass {
    use super::*;
    use proptest::prelude::*;

    fn checked(bytes: &[u8]) -> Result<(RequestId, EnvelopeInput), ErrorResponse> {
        let mut request = decode_request_raw(parse_json(bytes)?, bytes)?;
        let envelope = request.take_envelope()?;
        Ok((request.id, envelope))
    }

    /// Asserts agreement; returns whether the one-pass decoder answered.
    fn agrees(bytes: &[u8]) -> bool {
        match decode_send(bytes) {
            Some(fast) => {
                let slow = checked(bytes).unwrap_or_else(|e| {
                    panic!(
                        "one pass accepted what the checked path refuses ({e:?}): {}",
                        String::from_utf8_lossy(bytes)
                    )
                });
                assert_eq!(fast, slow, "{}", String::from_utf8_lossy(bytes));
                true
            }
            None => false,
        }
    }

    const ENVELOPE: &str = r#"{"id":"e1","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:a","recipient":"urn:asap:agent:b","payload_type":"task.request","payload":{"conversation_id":"c","skill_id":"echo","input":{"n":1.5,"big":123456789012345678901234567890,"s":"\u00e9"}}}"#;

    fn request(id: &str, extra: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","method":"asap.send","params":{{"envelope":{ENVELOPE}}},"id":{id}{extra}}}"#
        )
    }

    #[test]
    fn well_formed_requests_take_one_pass_and_agree() {
        for id in [
            "1",
            "-0",
            "\"a\\u0041\"",
            "55555555555555555555555555555555555555555",
            "-9223372036854775808",
        ] {
            assert!(agrees(request(id, "").as_bytes()), "id {id}");
        }
        let no_version = format!(
            r#"{{"method":"asap.send","params":{{"envelope":{ENVELOPE},"other":[1]}},"id":7}}"#
        );
        assert!(agrees(no_version.as_bytes()));
    }

    #[test]
    fn everything_ambiguous_or_wrong_takes_the_checked_path() {
        let refused = [
            request("1.5", ""),
            request("true", ""),
            request("null", ""),
            request("[1]", ""),
            request("1e3", ""),
            request("1", r#","id":2"#),
            request("1", r#","extra":0"#),
            request("1", r#","jsonrpc":"2.0""#),
            request("1", "").replace(r#""jsonrpc":"2.0""#, r#""jsonrpc":null"#),
            request("1", "").replace(r#""jsonrpc":"2.0""#, r#""jsonrpc":"1.0""#),
            request("1", "").replace("asap.send", "asap.other"),
            request("1", "").replace(r#""id":"e1","#, r#""id":"e1","id":"e2","#),
            request("1", "").replace(r#""id":"e1","#, r#""colour":"red","#),
            request("1", "").replace(r#""sender":"urn:asap:agent:a""#, r#""sender":"nobody""#),
            request("1", "").replace("task.request", "task.response"),
            request("1", "").replace(r#""asap_version":"0.1","#, ""),
            request("1", "") + " x",
            "[]".to_owned(),
            "{\"a\":\"\u{1}\"".to_owned(),
            // Derived structs read arrays by position: never here.
            format!(r#"["2.0","asap.send",{{"envelope":{ENVELOPE}}},1]"#),
            format!(r#"{{"jsonrpc":"2.0","method":"asap.send","params":[{ENVELOPE}],"id":1}}"#),
            r#"{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":["e1","0.1","2026-01-01T00:00:00Z","urn:asap:agent:a","urn:asap:agent:b","x",{}]},"id":1}"#.to_owned(),
        ];
        for body in refused {
            assert!(!agrees(body.as_bytes()), "{body}");
        }
        assert!(decode_send(b"{\"id\":\"\xff\"}").is_none());
    }

    #[test]
    fn lax_members_agree() {
        for (from, to) in [
            (
                r#""timestamp":"2026-01-01T00:00:00Z""#,
                r#""timestamp":1767225600"#,
            ),
            (
                r#""timestamp":"2026-01-01T00:00:00Z""#,
                r#""timestamp":null"#,
            ),
            (r#""id":"e1","#, r#""id":null,"#),
            (r#""id":"e1","#, ""),
            (r#""id":"e1","#, r#""requires_ack":"yes","#),
            (
                r#""id":"e1","#,
                r#""requires_ack":1,"extensions":{"nonce":"n"},"#,
            ),
        ] {
            let body = request("1", "").replace(from, to);
            agrees(body.as_bytes());
        }
    }

    fn member() -> impl Strategy<Value = String> {
        // The request's members, the envelope's, and one nobody defined.
        let mut keys = vec!["jsonrpc", "method", "params", "id", "envelope", "x"];
        keys.extend(ENVELOPE_MEMBERS);
        let key = prop::sample::select(keys);
        let value = prop::sample::select(vec![
            "null",
            "true",
            "0",
            "1",
            "1.5",
            "-0",
            "1e2",
            "\"2.0\"",
            "\"asap.send\"",
            "\"urn:asap:agent:b\"",
            "\"task.request\"",
            "\"2026-01-01T00:00:00Z\"",
            "\"yes\"",
            "{}",
            "[]",
            "{\"skill_id\":\"echo\",\"conversation_id\":\"c\",\"input\":{}}",
            "99999999999999999999",
        ]);
        (key, value).prop_map(|(k, v)| format!("\"{k}\":{v}"))
    }

    proptest! {
        /// Requests built of valid and invalid members, duplicated, missing or
        /// extra: whenever the one-pass decoder answers, the checked path
        /// answers the same.
        #[test]
        fn one_pass_never_disagrees(
            top in prop::collection::vec(member(), 0..6),
            env in prop::collection::vec(member(), 0..12),
            keep_base in any::<bool>(),
        ) {
            let mut envelope: Vec<String> = if keep_base {
                ENVELOPE.trim_matches(|c| c == '{' || c == '}').split(",\"").map(|m| m.trim_start_matches('"').to_owned()).map(|m| format!("\"{m}")).collect()
            } else { Vec::new() };
            envelope.extend(env);
            let mut members = vec![
                r#""method":"asap.send""#.to_owned(),
                format!(r#""params":{{"envelope":{{{}}}}}"#, envelope.join(",")),
                r#""id":1"#.to_owned(),
            ];
            members.extend(top);
            agrees(format!("{{{}}}", members.join(",")).as_bytes());
        }
    }
}
