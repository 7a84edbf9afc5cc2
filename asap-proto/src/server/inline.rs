//! The whole driver loop on the calling thread, for tests, fuzzers and
//! single-threaded runtimes that hold the [`Server`] and the stores themselves.

use http::Response;

use super::{
    HandlerOutcome, HealthReport, Invocation, Metrics, Now, Records, RequestHead, Server, Step,
};
use crate::store::{MeteringStore, ReplayStore, SnapshotStore, StoreError};

/// The stores task state is persisted in.
pub struct TaskState<'a> {
    /// Snapshots (`state.query`/`state.restore`, one per skill run).
    pub snapshots: &'a mut dyn SnapshotStore,
    /// Usage events (one per skill run).
    pub metering: &'a mut dyn MeteringStore,
    /// Accepted nonces, kept answers and replica claims (`None`: they live in
    /// the server's memory only).
    pub replay: Option<&'a mut dyn ReplayStore>,
}

impl TaskState<'_> {
    /// Saves one [`Step::Persist`]'s records (not atomically: these are separate stores).
    pub fn persist(&mut self, records: Records) -> Result<(), StoreError> {
        if let Some(task) = records.task {
            // Moved, not cloned: the snapshot is as large as the task.
            self.snapshots.save_owned(task.snapshot)?;
            self.metering.record(&task.usage)?;
        }
        let Some(replay) = self.replay.as_mut() else {
            return Ok(());
        };
        if let Some(nonce) = &records.nonce {
            replay.record_nonce(nonce)?;
        }
        if let Some(dedup) = &records.dedup {
            replay.record_dedup(dedup)?;
        }
        if records.nonce.is_some() || records.dedup.is_some() {
            replay.purge_expired(records.now)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TaskState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskState").finish_non_exhaustive()
    }
}

/// Drives one request to its answer: `body` is the whole body as received,
/// `handler` runs every invocation, `state` (when task state is attached)
/// persists skill runs and answers `state.query`/`state.restore`, and
/// `metrics` records the exchange. Health is reported healthy.
pub fn drive_inline(
    server: &mut Server,
    head: &RequestHead<'_>,
    body: &[u8],
    now: Now,
    handler: impl FnMut(&Invocation) -> HandlerOutcome,
    state: Option<TaskState<'_>>,
    metrics: &mut Metrics,
) -> Response<Vec<u8>> {
    let mut ignore = |_: String| {};
    run(
        server,
        head,
        body,
        now,
        handler,
        state,
        metrics,
        &mut ignore,
    )
}

/// [`drive_inline`] for one `/asap/ws` text frame: every frame the server
/// sends for it, in order (MessageAcks, then the response).
#[allow(clippy::too_many_arguments)]
pub fn drive_inline_frame(
    server: &mut Server,
    headers: &http::HeaderMap,
    peer: Option<core::net::IpAddr>,
    text: &str,
    now: Now,
    handler: impl FnMut(&Invocation) -> HandlerOutcome,
    state: Option<TaskState<'_>>,
    metrics: &mut Metrics,
) -> Vec<String> {
    let head = RequestHead::websocket(headers, peer);
    let mut frames = Vec::new();
    let mut notify = |t: String| frames.push(t);
    let response = run(
        server,
        &head,
        text.as_bytes(),
        now,
        handler,
        state,
        metrics,
        &mut notify,
    );
    frames.push(String::from_utf8_lossy(response.body()).into_owned());
    frames
}

#[allow(clippy::too_many_arguments)]
fn run(
    server: &mut Server,
    head: &RequestHead<'_>,
    body: &[u8],
    now: Now,
    mut handler: impl FnMut(&Invocation) -> HandlerOutcome,
    mut state: Option<TaskState<'_>>,
    metrics: &mut Metrics,
    notify: &mut dyn FnMut(String),
) -> Response<Vec<u8>> {
    let mut ex = server.handle_request(head, now);
    let mut now = now;
    let reply = loop {
        match ex.poll_step() {
            Step::ReadBody { limit } => {
                ex.handle_body(&body[..body.len().min(limit + 1)], now.wall)
            }
            Step::Admit => server.handle_admission(&mut ex, now),
            Step::Invoke(inv) => {
                let outcome = handler(&inv);
                ex.handle_outcome(outcome, now.wall);
            }
            Step::Persist(records) => {
                let saved = match state.as_mut() {
                    Some(s) => s.persist(records),
                    None => Err(StoreError::Backend("no task-state store was given".into())),
                };
                ex.handle_persisted(saved, now.wall);
            }
            Step::QueryState(request) => {
                let result = match state.as_mut() {
                    Some(s) => request.run(&mut *s.snapshots),
                    None => Err(super::HandlerError::failed("no task-state store was given")),
                };
                ex.handle_state(result, now.wall);
            }
            Step::CheckHealth => ex.handle_health(HealthReport::default(), now.monotonic),
            Step::RenderMetrics => ex.handle_metrics(metrics),
            Step::Notify(text) => notify(text),
            // Inline runs are sequential: a first copy always answered before
            // the next request began, so nothing is ever running to wait for.
            Step::AwaitFirst { .. } => ex.handle_first_answer(None, now.wall),
            // No network here: static keys, HS256 or a custom validator
            // answer inline; a JWKS that is not cached yet answers 503.
            Step::Fetch(_) => {
                server.handle_fetched(&mut ex, Err("inline run: no network".into()), now)
            }
            Step::AwaitFetch => server.handle_fetch_waited(&mut ex, now),
            Step::Claim(claim) => {
                let decided = match state.as_mut().and_then(|s| s.replay.as_mut()) {
                    Some(replay) => replay.claim(&claim),
                    None => Ok(crate::store::ClaimOutcome::Won),
                };
                ex.handle_claim(decided, now);
            }
            // Time moves only here: to the deadline the exchange asked for.
            Step::AwaitClaim { until } => {
                let waited = until.saturating_duration_since(now.monotonic);
                now = Now {
                    monotonic: until,
                    wall: now.wall.saturating_add(waited),
                };
                ex.handle_claim_waited(now);
            }
            Step::Respond(reply) => break reply,
        }
    };
    let mut reply = reply;
    if let (Some(records), Some(s)) = (ex.abandon_claim(now.wall), state.as_mut()) {
        // Best effort, as an adapter's: an unreleased claim ends with its lease.
        let _ = s.persist(records);
    }
    if let Some(answered) = reply.answered.take() {
        let _woken = server.handle_answered(answered, now.wall);
    }
    if let Some(record) = &reply.record {
        metrics.handle_record(record, now.monotonic);
    }
    reply.response
}
