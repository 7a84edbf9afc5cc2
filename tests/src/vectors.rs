//! Access to the reference implementation's golden vectors and the register of
//! which test consumes each vector file.
//!
//! The vectors directory is `$ASAP_VECTORS_DIR` when set, otherwise the
//! repository's copy, `tests/vectors` (synced from the shared kit with
//! `scripts/sync-shared.sh`; see CONTRIBUTING.md). Every test crate finds them
//! through [`dir`].

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Who reads a vector file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Read and checked by the named test (`file::test_fn`) in this crate.
    Test(&'static str),
    /// Belongs to a later issue that builds the feature it describes; that
    /// issue's tests must move the entry to [`Owner::Test`].
    LaterIssue(&'static str),
}

/// Every vector file (or directory, when the pattern ends in `/`) and who reads it.
///
/// The inventory test fails when a file on disk or in `INDEX.json` matches no
/// entry, so a new vector file cannot be silently ignored.
pub const OWNERS: &[(&str, Owner)] = &[
    (
        "INDEX.json",
        Owner::Test("vectors_inventory::every_vector_file_has_an_owner"),
    ),
    (
        "constants.json",
        Owner::Test("vectors_model::constants_match_the_core"),
    ),
    (
        "entities.json",
        Owner::Test("vectors_model::entities_round_trip"),
    ),
    (
        "error_taxonomy.json",
        Owner::Test("vectors_model::error_taxonomy"),
    ),
    ("parts.json", Owner::Test("vectors_model::parts_round_trip")),
    (
        "rejected_inputs.json",
        Owner::Test("vectors_model::rejected_inputs"),
    ),
    (
        "state_machine.json",
        Owner::Test("vectors_model::state_machine_table"),
    ),
    (
        "timestamp_formats.json",
        Owner::Test("vectors_model::timestamp_formats"),
    ),
    (
        "envelopes/",
        Owner::Test("vectors_model::envelopes_* (every file in the folder)"),
    ),
    (
        "jsonrpc/errors.json",
        Owner::Test("vectors_jsonrpc::error_cases"),
    ),
    (
        "jsonrpc/client_task_request_exchange.json",
        Owner::Test("vectors_jsonrpc::python_client_request_body_bytes"),
    ),
    (
        "jsonrpc/client_compressed_request.json",
        Owner::LaterIssue("HTTP client (compression)"),
    ),
    (
        "jsonrpc/handler_asap_error.json",
        Owner::Test(
            "server_pipeline::handler_failures_are_sanitised_and_asap_errors_name_themselves",
        ),
    ),
    (
        "jsonrpc/nonce_replay.json",
        Owner::Test("server_pipeline::nonce_replay_is_byte_identical"),
    ),
    (
        "jsonrpc/rate_limit_429.json",
        Owner::Test("discovery_client_vectors::rate_limit_429_from_the_limiter"),
    ),
    (
        "jsonrpc/size_limit_413.json",
        Owner::Test("server_pipeline::rate_limit_and_size_limit_bodies_match"),
    ),
    (
        "jsonrpc/success_int_id.json",
        Owner::Test("server_pipeline::success_with_integer_id_matches_the_reference_shape"),
    ),
    (
        "jsonrpc/trace_context.json",
        Owner::Test("server_pipeline::trace_context_is_continued_or_started_like_the_reference"),
    ),
    (
        "schemas_current/_index.json",
        Owner::Test("vectors_schemas::schema_index_is_complete"),
    ),
    (
        "schemas_current/agent.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/artifact.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/artifact_notify.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/conversation.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/data_part.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/envelope.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/file_part.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/manifest.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/mcp_resource_data.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/mcp_resource_fetch.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/mcp_tool_call.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/mcp_tool_result.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/message.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/message_ack.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/message_send.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/resource_part.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/state_query.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/state_restore.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/state_snapshot.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/task.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/task_cancel.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/task_request.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/task_response.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/task_update.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/template_part.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/text_part.json",
        Owner::Test("vectors_schemas::model_schemas"),
    ),
    (
        "schemas_current/jsonrpc_request.json",
        Owner::Test("vectors_schemas::jsonrpc_schemas"),
    ),
    (
        "schemas_current/jsonrpc_response.json",
        Owner::Test("vectors_schemas::jsonrpc_schemas"),
    ),
    (
        "schemas_current/jsonrpc_error_response.json",
        Owner::Test("vectors_schemas::jsonrpc_schemas"),
    ),
    (
        "schemas_current/health_status.json",
        Owner::Test("discovery_client_vectors::discovery_schemas"),
    ),
    (
        "schemas_current/introspection_token_info.json",
        Owner::LaterIssue("auth (introspection)"),
    ),
    (
        "schemas_current/lite_registry.json",
        Owner::Test("discovery_client_vectors::discovery_schemas"),
    ),
    (
        "schemas_current/oauth2_token.json",
        Owner::LaterIssue("auth (client credentials)"),
    ),
    (
        "schemas_current/oidc_config.json",
        Owner::LaterIssue("auth (OIDC discovery)"),
    ),
    (
        "schemas_current/registry_entry.json",
        Owner::Test("discovery_client_vectors::discovery_schemas"),
    ),
    (
        "schemas_current/usage_aggregate.json",
        Owner::Test("asap-blocking/tests/sqlite_vectors::models_follow_the_reference_schemas"),
    ),
    (
        "schemas_current/usage_event.json",
        Owner::Test("asap-blocking/tests/sqlite_vectors::models_follow_the_reference_schemas"),
    ),
    (
        "auth/",
        Owner::LaterIssue("auth (bearer, OAuth2/JWKS, OIDC, introspection)"),
    ),
    (
        "client/",
        Owner::Test("discovery_client_vectors::{circuit_breaker_trace, retry_behaviour}"),
    ),
    (
        "discovery/",
        Owner::Test("discovery_client_vectors::* (every file in the folder but k8s_probes.json)"),
    ),
    (
        "discovery/k8s_probes.json",
        Owner::Test("server_pipeline::health_and_probe_documents_match"),
    ),
    (
        "storage/",
        Owner::Test(
            "asap-blocking/tests/sqlite_vectors (schema, reads/writes the reference's rows)",
        ),
    ),
    (
        "webhook/url_validation.json",
        Owner::Test("vectors_webhook::url_validation_table"),
    ),
    (
        "webhook/delivery.json",
        Owner::Test("vectors_webhook::delivery_signature_and_headers"),
    ),
    (
        "webhook/retry.json",
        Owner::Test("vectors_webhook::retry_schedules_and_dead_letters"),
    ),
    (
        "websocket/heartbeat.json",
        Owner::Test("vectors_websocket::heartbeat_frames_are_the_reference_bytes"),
    ),
    (
        "websocket/rate_limit.json",
        Owner::Test("vectors_websocket::rate_limit_frame_is_the_reference_bytes"),
    ),
    (
        "websocket/message_ack.json",
        Owner::Test("vectors_websocket::message_ack_frames_are_the_reference_bytes"),
    ),
    (
        "websocket/ack_retransmission.json",
        Owner::Test(
            "vectors_websocket::ack_retransmission_resends_the_same_envelope_as_the_reference",
        ),
    ),
    (
        "websocket/client_task_request_exchange.json",
        Owner::Test("vectors_websocket::the_reference_clients_request_frame_is_ours"),
    ),
    ("websocket/server_frames.json", Owner::LaterIssue("WebSocket binding: reference frame replies (quirks we answer differently, README items 24-26)")),
];

/// The owner entry for a vector path (exact entries win over folder entries).
#[must_use]
pub fn owner_of(rel: &str) -> Option<(&'static str, Owner)> {
    OWNERS
        .iter()
        .find(|(p, _)| *p == rel)
        .or_else(|| {
            OWNERS
                .iter()
                .filter(|(p, _)| p.ends_with('/') && rel.starts_with(p))
                .max_by_key(|(p, _)| p.len())
        })
        .copied()
}

/// The vectors directory: `$ASAP_VECTORS_DIR`, else the in-repo copy `tests/vectors`.
#[must_use]
pub fn dir() -> PathBuf {
    match std::env::var_os("ASAP_VECTORS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors"),
    }
}

/// Reads and parses one vector file (path relative to [`dir`], `/`-separated).
///
/// # Panics
///
/// When the file is missing or not JSON: a vector test cannot run without it.
#[must_use]
pub fn load(rel: &str) -> Value {
    let path = dir().join(rel);
    let text = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read vector {}: {e}", path.display()));
    serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("vector {} is not JSON: {e}", path.display()))
}

/// The raw bytes of one vector file.
///
/// # Panics
///
/// When the file is missing.
#[must_use]
pub fn load_bytes(rel: &str) -> Vec<u8> {
    let path = dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read vector {}: {e}", path.display()))
}

/// Every file under [`dir`], as sorted `/`-separated relative paths.
///
/// # Panics
///
/// When the directory cannot be read.
#[must_use]
pub fn walk() -> Vec<String> {
    fn go(base: &Path, d: &Path, out: &mut Vec<String>) {
        let entries =
            std::fs::read_dir(d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            if path.is_dir() {
                go(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                let parts: Vec<_> = rel
                    .iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    let base = dir();
    let mut out = Vec::new();
    go(&base, &base, &mut out);
    out.sort();
    out
}

/// The files directly inside a vector folder (e.g. `"envelopes"`), sorted.
#[must_use]
pub fn files_in(folder: &str) -> Vec<String> {
    let prefix = format!("{folder}/");
    walk()
        .into_iter()
        .filter(|p| {
            p.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/'))
        })
        .collect()
}

/// Object members of a vector that are data, not generator annotations (`_`-prefixed).
#[must_use]
pub fn data_keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().filter(|k| !k.starts_with('_')).cloned().collect())
        .unwrap_or_default()
}

/// String `request_body`s the generator sent as raw bytes (`raw=True` in
/// gen_vectors.py); their characters are the bytes, Latin-1 decoded
/// (`"\u00ff"` is the invalid UTF-8 byte 0xff). The vector itself cannot tell
/// a raw body from a JSON string body, so every string case is classified here.
const RAW_TEXT_BODIES: &[&str] = &[
    "parse_error",
    "parse_error_bad_utf8",
    "invalid_request_float_id_becomes_internal_error",
    "bool_id_coerced_to_int",
    "invalid_params_params_null",
    "bad_gzip_body",
];
/// String `request_body`s sent as a JSON string value.
const JSON_STRING_BODIES: &[&str] = &["invalid_request_not_object"];

/// The request body bytes of a `jsonrpc/errors.json` case.
pub fn request_body_bytes(name: &str, body: &Value) -> Vec<u8> {
    match body {
        Value::String(s) if RAW_TEXT_BODIES.contains(&name) => s
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("Latin-1 text"))
            .collect(),
        Value::String(_) => {
            assert!(
                JSON_STRING_BODIES.contains(&name),
                "string body of {name}: add it to RAW_TEXT_BODIES or JSON_STRING_BODIES"
            );
            serde_json::to_vec(body).unwrap()
        }
        other => serde_json::to_vec(other).unwrap(),
    }
}
