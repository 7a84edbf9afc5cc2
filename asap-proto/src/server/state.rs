//! Task state of an agent: what is persisted around a skill run, and the
//! built-in `state.query` / `state.restore` handlers, over any [`SnapshotStore`].
//!
//! The adapter calls [`task_records`] after a skill returns and saves both
//! records *before* answering, so an acknowledged task is on disk. State
//! handlers are plain functions over the store traits, so the same code runs
//! on the in-memory stores, on SQLite in a thread, or on SQLite behind
//! `spawn_blocking`.

use serde_json::{json, Value};

use super::{HandlerError, SkillResult};
use crate::jsonrpc::{asap_codes, AsapError};
use crate::model::{
    Envelope, JsonObject, Payload, StateQuery, StateRestore, StateSnapshot, Task, TaskRequest,
    TaskResponse, Timestamp, UnixTime,
};
use crate::store::{SnapshotStore, StoreError, UsageEvent, UsageMetrics};
use crate::task::TaskStatus;

/// What to persist for one finished skill run.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecords {
    /// The task as it ended (status moved through the transition table).
    pub task: Task,
    /// Snapshot version 1 of the task: request, status history, outcome.
    pub snapshot: StateSnapshot,
    /// Usage of this run.
    pub usage: UsageEvent,
}

fn metric(metrics: Option<&JsonObject>, key: &str) -> u64 {
    metrics
        .and_then(|m| m.get(key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Builds the records of a skill run: the task walks `submitted → working →
/// <result status>` through the transition table (an illegal final status,
/// e.g. `submitted`, is recorded as reached, with the refused step noted), a
/// snapshot of it, and a usage event with the duration and any token counts
/// the skill reported in `metrics` (`tokens_in`, `tokens_out`, `api_calls`).
#[must_use]
pub fn task_records(
    task_id: &str,
    snapshot_id: String,
    envelope: &Envelope,
    request: TaskRequest,
    result: &SkillResult,
    started: UnixTime,
    now: UnixTime,
) -> TaskRecords {
    let TaskRequest {
        conversation_id,
        parent_task_id: parent,
        skill_id,
        input,
        ..
    } = request;
    let created = Timestamp::from_unix(started);
    let mut task = Task {
        id: task_id.to_owned(),
        conversation_id,
        parent_task_id: parent,
        status: TaskStatus::Submitted,
        depth: 0,
        progress: None,
        created_at: created,
        updated_at: created,
    };
    let mut history = vec![Value::from(task.status.as_str())];
    let mut refused = Value::Null;
    for step in [TaskStatus::Working, result.status] {
        if step == task.status {
            continue;
        }
        match task.transition(step, Timestamp::from_unix(now)) {
            Ok(()) => history.push(step.as_str().into()),
            Err(e) => refused = e.to_asap_error().details,
        }
    }
    let mut data = JsonObject::new();
    data.insert(
        "task".into(),
        serde_json::to_value(&task).unwrap_or(Value::Null),
    );
    data.insert("skill_id".into(), skill_id.into());
    data.insert("input".into(), Value::Object(input));
    data.insert("status_history".into(), Value::Array(history));
    if !refused.is_null() {
        data.insert("refused_transition".into(), refused);
    }
    data.insert(
        "result".into(),
        result.result.clone().map_or(Value::Null, Value::Object),
    );
    data.insert(
        "final_state".into(),
        result
            .final_state
            .clone()
            .map_or(Value::Null, Value::Object),
    );
    data.insert("envelope_id".into(), envelope.id.clone().into());
    let snapshot = StateSnapshot {
        id: snapshot_id,
        task_id: task_id.to_owned(),
        version: 1,
        data,
        checkpoint: task.status.is_terminal(),
        created_at: Timestamp::from_unix(now),
    };
    let m = result.metrics.as_ref();
    let duration_ms = u64::try_from(now.micros_since(started).max(0) / 1000).unwrap_or(0);
    let usage = UsageEvent {
        task_id: task_id.to_owned(),
        agent_id: envelope.recipient.to_string(),
        consumer_id: envelope.sender.to_string(),
        metrics: UsageMetrics {
            tokens_in: metric(m, "tokens_in"),
            tokens_out: metric(m, "tokens_out"),
            duration_ms: metric(m, "duration_ms").max(duration_ms),
            api_calls: metric(m, "api_calls"),
        },
        timestamp: Timestamp::from_unix(now),
    };
    TaskRecords {
        task,
        snapshot,
        usage,
    }
}

fn store_failure(e: &StoreError) -> HandlerError {
    HandlerError::failed(format!("state store failed: {e}"))
}

fn snapshot_reply(snapshot: &StateSnapshot) -> Payload {
    let status = snapshot
        .data
        .get("task")
        .and_then(|t| t.get("status"))
        .and_then(Value::as_str)
        .and_then(TaskStatus::parse)
        .unwrap_or(TaskStatus::Completed);
    let mut result = JsonObject::new();
    result.insert(
        "snapshot".into(),
        serde_json::to_value(snapshot).unwrap_or(Value::Null),
    );
    Payload::TaskResponse(TaskResponse {
        task_id: snapshot.task_id.clone(),
        status,
        result: Some(result),
        final_state: Some(snapshot.data.clone()),
        metrics: None,
    })
}

/// `state.query`: the requested (or latest) snapshot, as a `task.response`
/// whose `result.snapshot` is the snapshot and `final_state` its data.
pub fn answer_state_query(
    store: &dyn SnapshotStore,
    q: &StateQuery,
) -> Result<Payload, HandlerError> {
    let found = match q.version {
        Some(v) => store.get(&q.task_id, v),
        None => store.get_latest(&q.task_id),
    }
    .map_err(|e| store_failure(&e))?;
    match found {
        Some(s) => Ok(snapshot_reply(&s)),
        None if q.version.is_some()
            && !store
                .list_versions(&q.task_id)
                .map_err(|e| store_failure(&e))?
                .is_empty() =>
        {
            Err(HandlerError::Asap(AsapError::new(
                asap_codes::TASK_NOT_FOUND,
                format!(
                    "Snapshot version {} not found for task {}",
                    q.version.unwrap_or(0),
                    q.task_id
                ),
                json!({"task_id": q.task_id, "version": q.version}),
            )))
        }
        None => Err(HandlerError::Asap(AsapError::task_not_found(&q.task_id))),
    }
}

/// `state.restore`: finds snapshot `snapshot_id` of the task and saves its data
/// as a new latest version (a checkpoint), so the task resumes from it; replies
/// like [`answer_state_query`] with the new snapshot.
pub fn apply_state_restore(
    store: &mut dyn SnapshotStore,
    r: &StateRestore,
    new_snapshot_id: String,
    now: UnixTime,
) -> Result<Payload, HandlerError> {
    let versions = store
        .list_versions(&r.task_id)
        .map_err(|e| store_failure(&e))?;
    if versions.is_empty() {
        return Err(HandlerError::Asap(AsapError::task_not_found(&r.task_id)));
    }
    let mut source = None;
    for v in &versions {
        if let Some(s) = store.get(&r.task_id, *v).map_err(|e| store_failure(&e))? {
            if s.id == r.snapshot_id {
                source = Some(s);
                break;
            }
        }
    }
    let Some(source) = source else {
        return Err(HandlerError::Asap(AsapError::new(
            asap_codes::TASK_NOT_FOUND,
            format!("Snapshot not found: {} (task {})", r.snapshot_id, r.task_id),
            json!({"task_id": r.task_id, "snapshot_id": r.snapshot_id}),
        )));
    };
    let mut data = source.data.clone();
    data.insert(
        "restored_from".into(),
        json!({"snapshot_id": source.id, "version": source.version}),
    );
    let restored = StateSnapshot {
        id: new_snapshot_id,
        task_id: r.task_id.clone(),
        version: versions.iter().max().copied().unwrap_or(0) + 1,
        data,
        checkpoint: true,
        created_at: Timestamp::from_unix(now),
    };
    store.save(&restored).map_err(|e| store_failure(&e))?;
    Ok(snapshot_reply(&restored))
}

/// Saves imported snapshots (e.g. from another agent during failover) verbatim.
pub fn import_snapshots(
    store: &mut dyn SnapshotStore,
    snapshots: &[StateSnapshot],
) -> Result<(), StoreError> {
    snapshots.iter().try_for_each(|s| store.save(s))
}
