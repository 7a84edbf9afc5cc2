//! Golden vectors of the WebSocket binding (`vectors/websocket/`): the exact
//! frames the reference sends and expects, against `asap_proto::ws`.
//! Time is explicit: nothing sleeps.

use std::time::{Duration, Instant};

use asap_proto::model::{AckStatus, AgentUrn, Envelope, Timestamp, UnixTime};
use asap_proto::reliability::AckConfig;
use asap_proto::ws::frame::{rate_limited_text, PING_TEXT, PONG_TEXT};
use asap_proto::ws::{AckTarget, ClientOutput, ClientSession, ClientSessionConfig};
use asap_tests::vectors;
use serde_json::Value;

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing"))
        .to_owned()
}

#[test]
fn heartbeat_frames_are_the_reference_bytes() {
    let v = vectors::load("websocket/heartbeat.json");
    assert_eq!(text(&v, "server_ping_frame_text"), PING_TEXT);
    assert_eq!(text(&v, "client_pong_frame_text"), PONG_TEXT);
}

#[test]
fn rate_limit_frame_is_the_reference_bytes() {
    let v = vectors::load("websocket/rate_limit.json");
    let frames = v["frames_received_text"].as_array().unwrap();
    let last = frames.last().unwrap().as_str().unwrap();
    let id = asap_proto::jsonrpc::RequestId::Str(format!("f-{}", frames.len() - 1));
    assert_eq!(rate_limited_text(Some(&id)), last);
    assert_eq!(v["close"]["code"], 1008);
}

fn vector_envelope(frame: &str) -> Envelope {
    let v: Value = serde_json::from_str(frame).unwrap();
    Envelope::from_value(v["params"]["envelope"].clone()).unwrap()
}

#[test]
fn message_ack_frames_are_the_reference_bytes() {
    let v = vectors::load("websocket/message_ack.json");
    let received: Value = serde_json::from_str(&text(&v, "ack_received_frame_text")).unwrap();
    let env = &received["params"]["envelope"];
    let target = AckTarget {
        envelope_id: env["payload"]["original_envelope_id"]
            .as_str()
            .unwrap()
            .into(),
        sender: AgentUrn::new(env["recipient"].as_str().unwrap()).unwrap(),
        agent: AgentUrn::new(env["sender"].as_str().unwrap()).unwrap(),
        asap_version: env["asap_version"].as_str().unwrap().into(),
    };
    let ts: Timestamp = env["timestamp"].as_str().unwrap().parse().unwrap();
    let ours = target.frame(
        env["id"].as_str().unwrap().into(),
        ts,
        AckStatus::Received,
        None,
    );
    assert_eq!(ours, text(&v, "ack_received_frame_text"));
    let rejected = &v["ack_rejected_frame_json"];
    let renv = &rejected["params"]["envelope"];
    let ts: Timestamp = renv["timestamp"].as_str().unwrap().parse().unwrap();
    let ours = target.frame(
        renv["id"].as_str().unwrap().into(),
        ts,
        AckStatus::Rejected,
        Some("boom".into()),
    );
    assert_eq!(serde_json::from_str::<Value>(&ours).unwrap(), *rejected);

    // The client's frames, sent in this order on one connection (ws-req-1,
    // ws-req-2): requires_ack set for TaskCancel, left as is for TaskUpdate.
    let wall = UnixTime::from_secs(1_767_225_600);
    let mut s = ClientSession::new(ClientSessionConfig::default());
    let t0 = Instant::now();
    s.handle_connected(t0);
    for (key, pending_acks) in [
        ("client_frame_TaskCancel_text", 1),
        ("client_frame_TaskUpdate_text_no_ack", 1),
    ] {
        let expected = text(&v, key);
        let mut env = vector_envelope(&expected);
        env.requires_ack = false; // the client sets it, as the reference does
        s.send(env, t0, wall).unwrap();
        let Some(ClientOutput::Transmit(frame)) = s.poll_output() else {
            panic!("no frame")
        };
        assert_eq!(frame, expected, "{key}");
        assert_eq!(s.pending_acks(), pending_acks);
    }
}

#[test]
fn ack_retransmission_resends_the_same_envelope_as_the_reference() {
    let v = vectors::load("websocket/ack_retransmission.json");
    let expected: Vec<String> = v["frames_received_by_peer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    // The capture's settings: ack timeout 0.3 s, 2 retries, no backoff.
    let config = ClientSessionConfig {
        ack: AckConfig {
            ack_timeout: Duration::from_millis(300),
            max_retries: 2,
            max_wait: Duration::from_millis(300),
            await_processed: false,
            ..AckConfig::default()
        },
        ..ClientSessionConfig::default()
    };
    let mut env = vector_envelope(&expected[0]);
    env.requires_ack = false;
    let wall = env.timestamp.unix();
    let mut s = ClientSession::new(config);
    let t0 = Instant::now();
    s.handle_connected(t0);
    s.send(env, t0, wall).unwrap();
    let mut frames = Vec::new();
    let mut gave_up = false;
    let mut now = t0;
    for _ in 0..20 {
        while let Some(out) = s.poll_output() {
            match out {
                ClientOutput::Transmit(f) => frames.push(f),
                ClientOutput::Event(asap_proto::ws::ClientEvent::GaveUp { .. }) => gave_up = true,
                ClientOutput::Event(_) => {}
            }
        }
        let Some(at) = s.poll_timeout() else { break };
        now = at.max(now);
        s.handle_timeout(now);
    }
    assert_eq!(frames, expected);
    assert!(gave_up, "the sender is told after the last retry");
    assert_eq!(s.pending_acks(), 0);
    assert_eq!(v["pending_acks_after"], serde_json::json!([]));
}

#[test]
fn the_reference_clients_request_frame_is_ours() {
    let v = vectors::load("websocket/client_task_request_exchange.json");
    let view = &v["server_side_view"][0];
    let sent = view["in"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| m["text"].as_str())
        .unwrap()
        .to_owned();
    let mut env = vector_envelope(&sent);
    env.requires_ack = false;
    let mut s = ClientSession::new(ClientSessionConfig::default());
    let t0 = Instant::now();
    s.handle_connected(t0);
    s.send(env, t0, UnixTime::from_secs(1_767_225_600)).unwrap();
    let Some(ClientOutput::Transmit(frame)) = s.poll_output() else {
        panic!("no frame")
    };
    assert_eq!(frame, sent);
}
