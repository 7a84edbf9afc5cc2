//! A small verifying webhook receiver (`asap webhooks receive`): checks
//! `X-ASAP-Signature` and the Standard Webhooks headers (whichever are
//! present; at least one must be, and every one present must verify),
//! deduplicates by `webhook-id`, and reports each accepted delivery.
//!
//! Answers: 200 to a verified delivery (also a duplicate: the sender can
//! stop), 401 to a missing or bad signature or a stale timestamp, 413 over
//! the body cap, 405 to anything but POST.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use asap_proto::webhook::{
    StandardVerifier, WebhookSecret, ASAP_SIGNATURE_HEADER, WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
};
use axum::body::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::server::lock;

/// Largest body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// `webhook-id`s remembered for dedup (oldest forgotten first).
pub const DEDUP_CAPACITY: usize = 100_000;

/// One verified delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Received {
    /// `webhook-id`, when sent (the reference's sender sends none).
    pub webhook_id: Option<String>,
    /// Seen before (a retry that had arrived): not new.
    pub duplicate: bool,
    /// Which signatures verified: `"asap"`, `"standard"`.
    pub verified: Vec<&'static str>,
    /// The body's `payload_type`, when it is an envelope.
    pub payload_type: Option<String>,
    /// The body's `payload.task_id`, when present.
    pub task_id: Option<String>,
    /// The body's `payload.status`, when present.
    pub status: Option<String>,
    /// The path it was posted to.
    pub path: String,
}

/// The receiver's state: the secret and the ids seen.
#[derive(Clone)]
pub struct Receiver {
    secret: WebhookSecret,
    verifier: Arc<StandardVerifier>,
    seen: Arc<Mutex<(HashSet<String>, VecDeque<String>)>>,
    report: Arc<dyn Fn(Received) + Send + Sync>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver verifying with `secret`, calling `report` for each accepted delivery.
    pub fn new(secret: WebhookSecret, report: impl Fn(Received) + Send + Sync + 'static) -> Self {
        Self {
            verifier: Arc::new(StandardVerifier::new(vec![secret.clone()])),
            secret,
            seen: Arc::default(),
            report: Arc::new(report),
        }
    }

    /// The axum router (any path).
    pub fn router(self) -> axum::Router {
        axum::Router::new().fallback(
            move |method: Method, uri: http::Uri, headers: HeaderMap, body: Bytes| {
                let me = self.clone();
                async move { me.handle(&method, uri.path(), &headers, &body) }
            },
        )
    }

    /// Checks one request; the status to answer.
    pub fn handle(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> StatusCode {
        if method != Method::POST {
            return StatusCode::METHOD_NOT_ALLOWED;
        }
        if body.len() > MAX_BODY_BYTES {
            return StatusCode::PAYLOAD_TOO_LARGE;
        }
        let mut verified = Vec::new();
        if let Some(sig) = headers.get(ASAP_SIGNATURE_HEADER) {
            let ok = sig
                .to_str()
                .ok()
                .is_some_and(|s| self.secret.verify_asap_signature(body, s).is_ok());
            if !ok {
                return StatusCode::UNAUTHORIZED;
            }
            verified.push("asap");
        }
        if headers.contains_key(WEBHOOK_SIGNATURE_HEADER) {
            if self
                .verifier
                .verify_headers(headers, body, crate::server::wall_now())
                .is_err()
            {
                return StatusCode::UNAUTHORIZED;
            }
            verified.push("standard");
        }
        if verified.is_empty() {
            return StatusCode::UNAUTHORIZED;
        }
        let webhook_id = headers
            .get(WEBHOOK_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let duplicate = webhook_id.as_ref().is_some_and(|id| {
            let mut seen = lock(&self.seen);
            if seen.0.contains(id) {
                return true;
            }
            seen.0.insert(id.clone());
            seen.1.push_back(id.clone());
            if seen.1.len() > DEDUP_CAPACITY {
                if let Some(old) = seen.1.pop_front() {
                    seen.0.remove(&old);
                }
            }
            false
        });
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_str()).map(str::to_owned);
        (self.report)(Received {
            webhook_id,
            duplicate,
            verified,
            payload_type: text(v.get("payload_type")),
            task_id: text(v.pointer("/payload/task_id")),
            status: text(v.pointer("/payload/status")),
            path: path.to_owned(),
        });
        StatusCode::OK
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}
