//! Webhook subscriptions of a server: who hears about a skill run, and the
//! events (`task.update`, the final `task.response`) that reach them.
//!
//! Two kinds of subscriber:
//!
//! * operator subscribers ([`WebhookConfig::subscribe`], `asap serve --webhook`):
//!   every task event of every skill run;
//! * a per-request callback, an asap-rs extension: `TaskRequest.config.webhook =
//!   {"url": "https://..."}` ([`CALLBACK_MEMBER`]). It is checked with the
//!   server's [`UrlPolicy`] when the request arrives; a refused URL is -32602
//!   naming it, and the skill does not run. Callbacks are signed with the
//!   server-wide callback secret ([`WebhookConfig::callback_secret_ref`]); a
//!   server without one refuses callbacks (-32602) instead of sending unsigned.
//!
//! The exchange decides what to publish: [`Invocation::webhooks`](super::Invocation::webhooks)
//! turns a handler's pushes into events ([`TaskWebhooks::events`]), and
//! [`Reply::publish`](super::Reply::publish) carries the final `task.response`,
//! to hand to the outbox before the response is sent.
//!
//! ```
//! use asap_proto::server::WebhookConfig;
//! use asap_proto::webhook::UrlPolicy;
//!
//! let mut hooks = WebhookConfig::default();
//! hooks.policy = UrlPolicy::PRODUCTION;
//! hooks.subscribe("https://hooks.example.com/asap", "ops").unwrap();
//! assert!(hooks.subscribe("https://10.0.0.1/", "ops").is_err()); // private address
//! assert_eq!(hooks.subscribers()[0].url, "https://hooks.example.com/asap");
//! ```

use serde_json::Value;

use crate::jsonrpc::{ErrorResponse, RequestId};
use crate::model::{AgentUrn, Envelope, JsonObject, Payload, TaskRequest, Timestamp, UnixTime};
use crate::webhook::{UrlPolicy, UrlRejection, WebhookEvent};

/// The `TaskRequest.config` member naming a per-request callback: `{"url": "..."}`.
pub const CALLBACK_MEMBER: &str = "webhook";

/// One webhook subscriber: a checked URL and the name of its signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// The normalised URL ([`CallbackUrl::as_str`](crate::webhook::CallbackUrl::as_str)).
    pub url: String,
    /// Name of the [`SigningKeys`](crate::webhook::SigningKeys) that sign its events.
    pub secret_ref: String,
}

/// The server's webhook policy and subscribers. `Default`: no subscribers,
/// callbacks refused, the production [`UrlPolicy`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Which URLs may be called (development switches off by default).
    pub policy: UrlPolicy,
    /// Operator subscribers: every task event goes to each.
    subscribers: Vec<Subscriber>,
    /// Signing keys' name for per-request callbacks; `None` refuses callbacks.
    pub callback_secret_ref: Option<String>,
}

impl WebhookConfig {
    /// Adds an operator subscriber after checking `url` with [`Self::policy`]
    /// (set the policy first). The host's addresses are checked at each delivery.
    pub fn subscribe(
        &mut self,
        url: &str,
        secret_ref: impl Into<String>,
    ) -> Result<&Subscriber, UrlRejection> {
        let callback = self.policy.parse(url)?;
        self.subscribers.push(Subscriber {
            url: callback.as_str().to_owned(),
            secret_ref: secret_ref.into(),
        });
        Ok(&self.subscribers[self.subscribers.len() - 1])
    }

    /// The operator subscribers.
    #[must_use]
    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    /// The subscribers of one skill run: operators, plus the request's
    /// callback (checked here). Empty: nobody listens.
    pub(super) fn for_task(
        &self,
        request: &TaskRequest,
        request_id: &RequestId,
    ) -> Result<Vec<Subscriber>, Box<ErrorResponse>> {
        let mut targets = self.subscribers.clone();
        let Some(callback) = request.config.as_ref().and_then(|c| c.get(CALLBACK_MEMBER)) else {
            return Ok(targets);
        };
        let refuse = |why: String| {
            Box::new(ErrorResponse::new(
                crate::jsonrpc::codes::INVALID_PARAMS,
                Some(
                    serde_json::json!({ "error": why, "member": format!("config.{CALLBACK_MEMBER}.url") }),
                ),
                Some(request_id.clone()),
            ))
        };
        let url = callback.get("url").and_then(Value::as_str).ok_or_else(|| {
            refuse(format!(
                "config.{CALLBACK_MEMBER} must be an object with a string \"url\" member"
            ))
        })?;
        let checked = self
            .policy
            .parse(url)
            .map_err(|e| refuse(format!("callback URL {url:?} refused: {e}")))?;
        let secret_ref = self.callback_secret_ref.clone().ok_or_else(|| {
            refuse(format!(
                "callback URL {url:?} refused: this agent has no callback signing secret configured (operator: set --callback-secret)"
            ))
        })?;
        targets.push(Subscriber {
            url: checked.as_str().to_owned(),
            secret_ref,
        });
        Ok(targets)
    }
}

/// Who hears about one skill run, and how its events are addressed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWebhooks {
    task_id: String,
    agent: AgentUrn,
    /// The request envelope without its payload: events are replies to it.
    request: Envelope,
    targets: Vec<Subscriber>,
}

impl TaskWebhooks {
    pub(super) fn new(
        task_id: String,
        agent: AgentUrn,
        request: Envelope,
        targets: Vec<Subscriber>,
    ) -> Self {
        let mut request = request;
        request.payload = JsonObject::new();
        Self {
            task_id,
            agent,
            request,
            targets,
        }
    }

    /// The subscribers.
    #[must_use]
    pub fn targets(&self) -> &[Subscriber] {
        &self.targets
    }

    /// The task.
    #[must_use]
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// A pushed payload as events for every subscriber: one envelope (a reply
    /// to the request, id `envelope_id`, stamped `now`), one event per subscriber.
    #[must_use]
    pub fn events(
        &self,
        payload: Payload,
        envelope_id: String,
        now: UnixTime,
    ) -> Vec<WebhookEvent> {
        let envelope = self.request.reply(
            envelope_id,
            Timestamp::from_unix(now),
            self.agent.clone(),
            payload,
        );
        match serde_json::to_vec(&envelope) {
            Ok(body) => self.fan_out(&envelope.id, &body),
            Err(_) => Vec::new(),
        }
    }

    /// The final answer's envelope (the `result.envelope` of a JSON-RPC
    /// success body) as events; an error answer publishes nothing.
    pub(super) fn response_events(&self, answer: &[u8]) -> Vec<WebhookEvent> {
        let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(answer) else {
            return Vec::new();
        };
        let Some(envelope) = answer
            .get_mut("result")
            .and_then(|r| r.get_mut("envelope"))
            .map(Value::take)
        else {
            return Vec::new();
        };
        let id = envelope
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match serde_json::to_vec(&envelope) {
            Ok(body) if !id.is_empty() => self.fan_out(&id, &body),
            _ => Vec::new(),
        }
    }

    /// Event ids are `<envelope id>.<subscriber index>`: unique in the outbox,
    /// the same on every attempt (receivers dedup on `webhook-id`).
    fn fan_out(&self, envelope_id: &str, body: &[u8]) -> Vec<WebhookEvent> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                WebhookEvent::new(
                    format!("{envelope_id}.{i}"),
                    self.task_id.clone(),
                    t.url.clone(),
                    body.to_vec(),
                )
                .signed_with(t.secret_ref.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Manifest, Skill, TaskUpdate, UpdateType};
    use crate::server::{
        Exchange, HandlerOutcome, Now, RequestHead, Server, ServerConfig, SkillResult, Step,
        Transport,
    };
    use crate::task::TaskStatus;

    fn now() -> Now {
        Now {
            monotonic: crate::test_clock::base(),
            wall: UnixTime::from_secs(1_767_225_600),
        }
    }

    fn server(webhooks: WebhookConfig) -> Server {
        let mut m = Manifest::new(
            AgentUrn::new("urn:asap:agent:x").unwrap(),
            "x",
            "1.0.0",
            "x",
            "http://127.0.0.1/asap",
        );
        m.capabilities.skills.push(Skill::new("echo", "echo"));
        let config = ServerConfig {
            rate_limit: None,
            dedup: None,
            webhooks,
            ..ServerConfig::default()
        };
        let mut s = Server::new(m, config, now().monotonic, 5);
        s.routes_mut().add_skill("echo");
        s
    }

    fn body(config: &str) -> Vec<u8> {
        format!(
            r#"{{"jsonrpc":"2.0","method":"asap.send","id":7,"params":{{"envelope":{{"id":"01KDXZ0000REQUEST000000001","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:c","recipient":"urn:asap:agent:x","payload_type":"task.request","payload":{{"conversation_id":"c","skill_id":"echo","input":{{"k":1}}{config}}}}}}}}}"#
        )
        .into_bytes()
    }

    fn open(s: &mut Server, raw: &[u8]) -> Exchange {
        let headers = http::HeaderMap::new();
        let head = RequestHead {
            method: &http::Method::POST,
            path: "/asap",
            headers: &headers,
            peer: None,
            transport: Transport::Http,
        };
        let mut ex = s.handle_request(&head, now());
        assert!(matches!(ex.poll_step(), Step::ReadBody { .. }));
        ex.handle_body(raw, now().wall);
        ex
    }

    fn ops() -> WebhookConfig {
        let mut w = WebhookConfig::default();
        w.subscribe("https://ops.example.com/hook", "ops").unwrap();
        w
    }

    #[test]
    fn a_refused_callback_is_invalid_params_naming_it_before_the_skill_runs() {
        let mut w = ops();
        w.callback_secret_ref = Some("callback".into());
        let mut s = server(w);
        for url in [
            "http://10.0.0.1/x",
            "https://127.0.0.1/",
            "https://100.64.0.1/",
            "ftp://a.example/",
        ] {
            let raw = body(&format!(r#","config":{{"webhook":{{"url":"{url}"}}}}"#));
            let mut ex = open(&mut s, &raw);
            let Step::Respond(reply) = ex.poll_step() else {
                panic!("{url}: the skill must not run");
            };
            let v: serde_json::Value = serde_json::from_slice(reply.response.body()).unwrap();
            assert_eq!(v["error"]["code"], -32602, "{url}");
            assert_eq!(v["id"], 7);
            assert!(
                v["error"]["data"]["error"].as_str().unwrap().contains(url),
                "{v}"
            );
            assert!(reply.publish.is_empty());
        }
    }

    #[test]
    fn a_callback_without_a_server_secret_is_refused_and_a_shapeless_one_too() {
        let mut s = server(WebhookConfig::default());
        for config in [
            r#","config":{"webhook":{"url":"https://cb.example.com/"}}"#,
            r#","config":{"webhook":"https://cb.example.com/"}"#,
        ] {
            let mut ex = open(&mut s, &body(config));
            let Step::Respond(reply) = ex.poll_step() else {
                panic!("refused before the skill");
            };
            let v: serde_json::Value = serde_json::from_slice(reply.response.body()).unwrap();
            assert_eq!(v["error"]["code"], -32602, "{v}");
        }
    }

    #[test]
    fn subscribers_get_pushes_and_the_final_response_as_signed_events() {
        let mut w = ops();
        w.callback_secret_ref = Some("callback".into());
        let mut s = server(w);
        let raw = body(r#","config":{"webhook":{"url":"https://cb.example.com/in"}}"#);
        let mut ex = open(&mut s, &raw);
        let Step::Invoke(inv) = ex.poll_step() else {
            panic!("the skill runs")
        };
        let hooks = inv.webhooks.clone().expect("two subscribers");
        let urls: Vec<&str> = hooks.targets().iter().map(|t| t.url.as_str()).collect();
        assert_eq!(
            urls,
            ["https://ops.example.com/hook", "https://cb.example.com/in"]
        );
        let update = Payload::TaskUpdate(TaskUpdate {
            task_id: inv.task_id.clone().unwrap(),
            update_type: UpdateType::Progress,
            status: TaskStatus::Working,
            progress: None,
            input_request: None,
        });
        let pushed = hooks.events(update, "01KDXZ0000PUSH000000000001".into(), now().wall);
        assert_eq!(pushed.len(), 2);
        assert_eq!(pushed[0].event_id, "01KDXZ0000PUSH000000000001.0");
        assert_eq!(pushed[1].secret_ref.as_deref(), Some("callback"));
        let env: serde_json::Value = serde_json::from_slice(&pushed[0].body).unwrap();
        assert_eq!(env["payload_type"], "task.update");
        assert_eq!(env["correlation_id"], "01KDXZ0000REQUEST000000001");
        assert_eq!(env["recipient"], "urn:asap:agent:c");

        ex.handle_outcome(HandlerOutcome::Skill(SkillResult::echo(&inv)), now().wall);
        let Step::Respond(reply) = ex.poll_step() else {
            panic!("answered")
        };
        assert_eq!(reply.publish.len(), 2);
        let answer: serde_json::Value = serde_json::from_slice(reply.response.body()).unwrap();
        let event: serde_json::Value = serde_json::from_slice(&reply.publish[0].body).unwrap();
        assert_eq!(
            event, answer["result"]["envelope"],
            "the webhook carries the answer's envelope"
        );
        assert_eq!(reply.publish[0].task_id, inv.task_id.unwrap());
        assert_eq!(reply.publish[0].secret_ref.as_deref(), Some("ops"));
    }

    #[test]
    fn a_failed_run_publishes_nothing_and_no_subscriber_means_no_webhooks() {
        let mut s = server(ops());
        let mut ex = open(&mut s, &body(""));
        let Step::Invoke(inv) = ex.poll_step() else {
            panic!()
        };
        assert!(inv.webhooks.is_some());
        ex.handle_outcome(
            HandlerOutcome::Failed(crate::server::HandlerError::failed("boom")),
            now().wall,
        );
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        assert!(reply.publish.is_empty());

        let mut quiet = server(WebhookConfig::default());
        let mut ex = open(&mut quiet, &body(""));
        let Step::Invoke(inv) = ex.poll_step() else {
            panic!()
        };
        assert!(inv.webhooks.is_none());
    }
}
