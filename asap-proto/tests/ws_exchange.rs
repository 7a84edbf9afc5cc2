//! `/asap/ws` frames through the server exchange: byte-identical answers to
//! `POST /asap`, and MessageAcks (`received` on admission, then `processed`
//! or `rejected` just before the response).
#![allow(clippy::disallowed_methods)] // A base `Instant` for the test; the code under test never reads the clock.

use std::time::Instant;

use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
use asap_proto::server::{
    drive_inline, drive_inline_frame, HandlerError, HandlerOutcome, Invocation, Metrics, Now,
    RequestHead, Server, ServerConfig, SkillResult, Transport,
};
use serde_json::Value;

fn now() -> Now {
    Now {
        monotonic: Instant::now(),
        wall: UnixTime::from_secs(1_767_225_600),
    }
}

fn server() -> Server {
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:srv").unwrap(),
        "srv",
        "1.0.0",
        "srv",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let mut s = Server::new(m, ServerConfig::default(), now().monotonic, 7);
    s.routes_mut().add_skill("echo");
    s
}

fn frame(payload_type: &str, payload: &str, requires_ack: bool, id: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"asap.send","id":"{id}","params":{{"envelope":{{"id":"01KDXZ0000WSACK00000000001","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:cli","recipient":"urn:asap:agent:srv","payload_type":"{payload_type}","payload":{payload},"requires_ack":{requires_ack}}}}}}}"#
    )
}

const TASK: &str = r#"{"conversation_id":"c","skill_id":"echo","input":{"m":1}}"#;

fn echo(inv: &Invocation) -> HandlerOutcome {
    HandlerOutcome::Skill(SkillResult::echo(inv))
}

fn ws(
    s: &mut Server,
    text: &str,
    handler: impl FnMut(&Invocation) -> HandlerOutcome,
) -> Vec<Value> {
    let headers = http::HeaderMap::new();
    drive_inline_frame(
        s,
        &headers,
        None,
        text,
        now(),
        handler,
        None,
        &mut Metrics::default(),
    )
    .iter()
    .map(|f| serde_json::from_str(f).unwrap_or(Value::Null))
    .collect()
}

fn ack_status(v: &Value) -> (&str, &str) {
    let env = &v["params"]["envelope"];
    assert_eq!(v["method"], "asap.ack");
    assert!(v.get("id").is_none(), "an ack is a notification");
    assert_eq!(env["payload_type"], "MessageAck");
    assert_eq!(env["sender"], "urn:asap:agent:srv");
    assert_eq!(env["recipient"], "urn:asap:agent:cli");
    assert_eq!(
        env["payload"]["original_envelope_id"],
        "01KDXZ0000WSACK00000000001"
    );
    (
        env["payload"]["status"].as_str().unwrap(),
        env["payload"]["error"].as_str().unwrap_or(""),
    )
}

#[test]
fn requires_ack_gets_received_then_processed_then_the_response() {
    let mut s = server();
    let frames = ws(&mut s, &frame("task.request", TASK, true, "ws-1"), echo);
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(ack_status(&frames[0]).0, "received");
    assert_eq!(ack_status(&frames[1]).0, "processed");
    assert_eq!(frames[2]["id"], "ws-1");
    assert_eq!(
        frames[2]["result"]["envelope"]["payload"]["result"]["echoed"]["m"],
        1
    );
}

#[test]
fn no_ack_without_requires_ack() {
    let mut s = server();
    let frames = ws(&mut s, &frame("task.request", TASK, false, "ws-2"), echo);
    assert_eq!(frames.len(), 1);
    assert!(frames[0].get("result").is_some());
}

#[test]
fn a_failing_handler_is_rejected_with_its_reason() {
    let mut s = server();
    let fail = |_: &Invocation| HandlerOutcome::Failed(HandlerError::failed("disk on fire"));
    let frames = ws(&mut s, &frame("task.request", TASK, true, "ws-3"), fail);
    assert_eq!(ack_status(&frames[0]).0, "received");
    let (status, why) = ack_status(&frames[1]);
    assert_eq!(status, "rejected");
    assert!(why.contains("-32603"), "{why}");
    assert!(frames[2].get("error").is_some());
}

#[test]
fn no_handler_is_received_then_rejected() {
    let mut s = server();
    let frames = ws(&mut s, &frame("Custom", "{}", true, "raw-3"), echo);
    assert_eq!(ack_status(&frames[0]).0, "received");
    let (status, why) = ack_status(&frames[1]);
    assert_eq!(status, "rejected");
    assert!(
        why.contains("No handler registered for payload type: Custom"),
        "{why}"
    );
    assert_eq!(frames[2]["error"]["code"], -32601);
}

#[test]
fn an_invalid_envelope_gets_no_ack() {
    let mut s = server();
    // sender is not a URN: validation fails before admission.
    let text = frame("task.request", TASK, true, "ws-4").replace("urn:asap:agent:cli", "nope");
    let frames = ws(&mut s, &text, echo);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["error"]["code"], -32602);
}

#[test]
fn answers_are_byte_identical_to_post_asap() {
    let bodies = [
        frame(
            "task.update",
            r#"{"task_id":"t","update_type":"progress","status":"working"}"#,
            false,
            "raw-1",
        ),
        r#"{"type": "ping"}"#.to_owned(),
        "not json".to_owned(),
        "[1,2,3]".to_owned(),
        r#"{"jsonrpc":"2.0","method":"asap.nope","params":{},"id":"x"}"#.to_owned(),
        "x".repeat(11 * 1024 * 1024),
    ];
    for body in bodies {
        let mut a = server();
        let mut b = server();
        let headers = http::HeaderMap::new();
        let ws = drive_inline_frame(
            &mut a,
            &headers,
            None,
            &body,
            now(),
            echo,
            None,
            &mut Metrics::default(),
        );
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let head = RequestHead {
            method: &http::Method::POST,
            path: "/asap",
            headers: &h,
            peer: None,
            transport: Transport::Http,
        };
        let http = drive_inline(
            &mut b,
            &head,
            body.as_bytes(),
            now(),
            echo,
            None,
            &mut Metrics::default(),
        );
        assert_eq!(ws.len(), 1);
        let http_text = String::from_utf8(http.body().clone()).unwrap();
        if body.len() > 1024 * 1024 {
            // The size limit still answers: the same 413 detail as a text frame.
            assert!(ws[0].contains("detail"), "{}", &ws[0]);
            continue;
        }
        assert_eq!(ws[0], http_text, "for {body:.60}");
    }
}
