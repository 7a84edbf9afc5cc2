//! The `/asap/ws` frame decoders on arbitrary input: `ws::frame::classify`
//! against a full JSON parse, `ws::decode_ack_frame`, and both sessions fed
//! the frame (the client with one request in flight, so correlation and acks
//! are reachable). No panic; every answer has a cause.
#![no_main]

use std::time::Instant;

use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
use asap_proto::ws::frame::{classify, PONG_TEXT};
use asap_proto::ws::{
    decode_ack_frame, ClientEvent, ClientOutput, ClientSession, ClientSessionConfig, FrameVerdict,
    Incoming, Output, ServerSession, SessionConfig, TextKind,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ENVELOPE_ID: &str = "01KDXZ0000ENVREQ0000000001";

fn request() -> Envelope {
    Envelope::new(
        ENVELOPE_ID.into(),
        Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
        AgentUrn::new("urn:asap:agent:client").unwrap(),
        AgentUrn::new("urn:asap:agent:srv").unwrap(),
        Payload::TaskRequest(TaskRequest::new("c", "echo", serde_json::Map::new())),
    )
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut server = ServerSession::new(SessionConfig::default(), t0);
    let Ok(text) = std::str::from_utf8(data) else {
        // Not text: as a binary frame it is answered and the connection stays.
        assert_eq!(
            server.handle_frame(Incoming::Binary(data), t0),
            FrameVerdict::Handled
        );
        assert!(matches!(server.poll_output(), Some(Output::Transmit(_))));
        assert!(server.poll_output().is_none() && !server.is_closed());
        return;
    };

    // classify agrees with a full parse.
    let kind = classify(text);
    // Numbers out of f64's range (1e999) are JSON text but serde's Value refuses
    // them: such a frame may be classified either way, as long as "invalid"
    // means the exchange's parser refuses it too (-32700) and "JSON" means it is
    // JSON text. Members are checked where Value parses.
    let valid = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    let json = serde_json::from_str::<Value>(text);
    assert!(json.is_err() || valid, "{text:?}");
    match &kind {
        TextKind::InvalidJson => assert!(json.is_err(), "valid JSON classified invalid: {text:?}"),
        TextKind::Pong | TextKind::Ping => {
            let v = json.as_ref().expect("a heartbeat is JSON");
            let want = if kind == TextKind::Pong {
                "pong"
            } else {
                "ping"
            };
            assert_eq!(
                v.get("type").and_then(Value::as_str),
                Some(want),
                "{text:?}"
            );
            assert!(v.get("method").is_none_or(Value::is_null), "{text:?}");
        }
        TextKind::Json { id, has_method } => {
            assert!(valid, "classified JSON but is not: {text:?}");
            if let Ok(v) = json.as_ref() {
                if *has_method {
                    assert!(v.get("method").is_some(), "{text:?}");
                }
                if id.is_some() {
                    assert!(v.get("id").is_some(), "{text:?}");
                }
            }
        }
    }

    // An ack decodes only from an asap.ack frame, and names what the frame says.
    if let Some(ack) = decode_ack_frame(text) {
        let v = json.as_ref().expect("an ack frame is JSON");
        assert_eq!(v["method"], "asap.ack");
        assert_eq!(
            v["params"]["envelope"]["payload"]["original_envelope_id"].as_str(),
            Some(ack.original_envelope_id.as_str())
        );
    }

    // The server session: a pong is ignored, everything else goes to an exchange
    // (the bucket starts full), and its reply comes out as sent.
    let verdict = server.handle_frame(Incoming::Text(text), t0);
    let expected = if kind == TextKind::Pong {
        FrameVerdict::Handled
    } else {
        FrameVerdict::Exchange
    };
    assert_eq!(verdict, expected, "{text:?}");
    if verdict == FrameVerdict::Exchange {
        assert_eq!(server.in_flight(), 1);
        server.handle_reply(text.as_bytes().to_vec(), t0);
        // An empty reply (a notification's) sends nothing.
        if !text.is_empty() {
            assert_eq!(
                server.poll_output(),
                Some(Output::Transmit(text.to_owned()))
            );
        }
    }
    assert!(server.poll_output().is_none() && !server.is_closed());
    assert!(server.poll_timeout().is_some_and(|t| t > t0));

    // The client session with one ack-required request in flight (ws-req-1).
    let mut client = ClientSession::new(ClientSessionConfig::default());
    client.handle_connected(t0);
    let handle = client
        .send(request(), t0, UnixTime::from_secs(1_767_225_600))
        .unwrap();
    assert!(matches!(
        client.poll_output(),
        Some(ClientOutput::Transmit(_))
    ));
    client.handle_frame(Incoming::Text(text), t0);
    let object = json.as_ref().ok().and_then(Value::as_object);
    let mut outputs = 0;
    while let Some(out) = client.poll_output() {
        outputs += 1;
        match out {
            ClientOutput::Transmit(t) => {
                assert_eq!(t, PONG_TEXT);
                let o = object.expect("a pong answers an object");
                assert_eq!(o.get("type").and_then(Value::as_str), Some("ping"));
                assert!(!o.contains_key("method"));
            }
            ClientOutput::Event(ClientEvent::Response { request, .. }) => {
                assert_eq!(request, handle);
                assert_eq!(
                    object.and_then(|o| o.get("id")),
                    Some(&Value::from("ws-req-1"))
                );
            }
            ClientOutput::Event(ClientEvent::Acked { envelope_id, .. }) => {
                assert_eq!(envelope_id, ENVELOPE_ID);
                assert!(
                    decode_ack_frame(text).is_some(),
                    "acked by a frame that is no ack: {text:?}"
                );
            }
            ClientOutput::Event(ClientEvent::Push(_)) => {}
            ClientOutput::Event(other) => panic!("{other:?} from one frame: {text:?}"),
        }
    }
    assert!(outputs <= 1, "{outputs} outputs from one frame: {text:?}");
    assert!(client.pending_requests() <= 1 && client.pending_acks() <= 1);
    assert!(client.poll_timeout().is_some_and(|t| t > t0) || client.pending_acks() == 0);
});
