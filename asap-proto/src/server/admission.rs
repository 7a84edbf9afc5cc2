//! What is admitted: the body decoded into an envelope and routed (pure, no
//! lock), then the checks on state shared by every request (nonce, per-sender
//! rate limit) in [`Server::handle_admission`](super::Server::handle_admission).

use http::Response;
use serde_json::json;

use super::answer::rpc_error;
use super::body::check_depth;
use super::replay::ReplayWindow;
use super::routes::Route;
use super::Shared;
use crate::jsonrpc::{self, codes, ErrorResponse, RequestId};
use crate::model::{Envelope, Payload, PayloadKind, Timestamp, UlidGenerator, UnixTime};

/// Where a routed envelope goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// The user's handler.
    Handler(Route),
    /// The core's own `state.query`/`state.restore` (task state attached).
    TaskState,
}

/// A decoded envelope waiting for the shared-state checks. Routing is decided
/// already, but its error is answered only after the nonce check, in the
/// reference's order (spec 8.4: nonce, step 13, before dispatch, step 14).
#[derive(Debug)]
pub(super) struct Pending {
    pub request_id: RequestId,
    pub envelope: Envelope,
    pub routed: Result<(Payload, Target), Response<Vec<u8>>>,
}

/// Spec 8.4 steps 5-12 and the routing of step 14: JSON, JSON-RPC, envelope,
/// recipient, timestamp window; `now` is the wall clock.
pub(super) fn decode(
    shared: &Shared,
    ids: &mut UlidGenerator,
    body: &[u8],
    now: UnixTime,
) -> Result<Pending, Response<Vec<u8>>> {
    let config = &shared.config;
    if let Err(depth) = check_depth(body, config.max_json_depth) {
        return Err(rpc_error(&ErrorResponse::parse_error(&format!(
            "nesting depth exceeds the maximum of {} (found at least {depth}); send flatter JSON",
            config.max_json_depth
        ))));
    }
    let (request_id, input) = match jsonrpc::decode_send(body) {
        Some(decoded) => decoded,
        None => {
            // The checked path: slower, and it names whatever is wrong.
            let value = jsonrpc::parse_json(body).map_err(|e| rpc_error(&e))?;
            let mut request =
                jsonrpc::decode_request_raw(value, body).map_err(|e| rpc_error(&e))?;
            let input = request.take_envelope().map_err(|e| rpc_error(&e))?;
            (request.id, input)
        }
    };
    let id = Some(request_id.clone());
    let missing_timestamp = input.timestamp.is_none();
    let envelope = input.materialize(Timestamp::from_unix(now), || ids.next_string(now));
    let agent = &shared.manifest.manifest().id;
    if !config.accept_any_recipient && envelope.recipient != *agent {
        return Err(rpc_error(&ErrorResponse::new(
            codes::INVALID_PARAMS,
            Some(json!({
                "error": "Envelope recipient is not this agent",
                "recipient": envelope.recipient,
                "expected": agent,
                "validation_errors": [{
                    "type": "value_error",
                    "loc": ["recipient"],
                    "msg": format!("recipient must be this agent's id {agent}"),
                    "input": envelope.recipient,
                }],
            })),
            id,
        )));
    }
    if missing_timestamp && config.require_timestamp {
        let err = ReplayWindow::missing_timestamp(&envelope.id);
        return Err(rpc_error(&ErrorResponse::invalid_params_asap(
            "Invalid envelope timestamp",
            &err,
            id,
        )));
    }
    config.replay_window.check(&envelope, now).map_err(|e| {
        rpc_error(&ErrorResponse::invalid_params_asap(
            "Invalid envelope timestamp",
            &e,
            id.clone(),
        ))
    })?;
    let routed = route(shared, &envelope, id);
    Ok(Pending {
        request_id,
        envelope,
        routed,
    })
}

fn route(
    shared: &Shared,
    envelope: &Envelope,
    id: Option<RequestId>,
) -> Result<(Payload, Target), Response<Vec<u8>>> {
    let routes = &shared.routes;
    let payload = envelope.payload().map_err(|e| {
        rpc_error(&ErrorResponse::new(
            codes::INVALID_PARAMS,
            Some(json!({
                "error": format!("Invalid {} payload", envelope.kind().map_or("", PayloadKind::model_name)),
                "validation_errors": [e.to_validation_item()],
            })),
            id.clone(),
        ))
    })?;
    let kind = envelope.kind();
    let target = match (&payload, kind) {
        (Payload::TaskRequest(req), _) if routes.skills.contains(&req.skill_id) => {
            Target::Handler(Route::Skill(req.skill_id.clone()))
        }
        (_, Some(kind)) if routes.kinds.contains(&kind) => Target::Handler(Route::Kind(kind)),
        (_, Some(PayloadKind::StateQuery | PayloadKind::StateRestore)) if routes.task_state => {
            Target::TaskState
        }
        (Payload::TaskRequest(req), _) if !routes.skills.is_empty() => {
            return Err(rpc_error(&ErrorResponse::new(
                codes::METHOD_NOT_FOUND,
                Some(json!({
                    "payload_type": envelope.payload_type,
                    "skill_id": req.skill_id,
                    "error": format!("No skill registered with id: {}", req.skill_id),
                })),
                id,
            )));
        }
        _ if routes.custom.contains(&envelope.payload_type) => {
            Target::Handler(Route::Custom(envelope.payload_type.clone()))
        }
        _ => {
            return Err(rpc_error(&ErrorResponse::no_handler(
                &envelope.payload_type,
                id,
            )))
        }
    };
    Ok((payload, target))
}
