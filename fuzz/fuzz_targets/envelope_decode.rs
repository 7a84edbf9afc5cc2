//! Bytes → `EnvelopeInput` / `Envelope`. Nothing panics, and whatever decodes
//! re-encodes to bytes that decode to the same value (and the same bytes).

#![no_main]

use asap_proto::model::{Envelope, EnvelopeInput, Payload, PayloadKind, Timestamp, UnixTime};
use asap_proto::canonical_json::{self, JsonStyle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = EnvelopeInput::from_slice(data) {
        let bytes = serde_json::to_vec(&input).expect("an accepted envelope encodes");
        let again = EnvelopeInput::from_slice(&bytes).expect("re-encoded envelope decodes");
        assert_eq!(again, input);
        let env = input.materialize(Timestamp::from_unix(UnixTime::EPOCH), || "generated".into());
        check_envelope(&env);
    }
    if let Ok(env) = Envelope::from_slice(data) {
        check_envelope(&env);
    }
});

fn check_envelope(env: &Envelope) {
    let bytes = env.to_vec();
    let again = Envelope::from_slice(&bytes).expect("re-encoded envelope decodes");
    assert_eq!(&again, env);
    assert_eq!(again.to_vec(), bytes, "encoding is stable");

    // Python-style text carries the same envelope.
    let value = serde_json::to_value(env).expect("encodes to a value");
    let py = canonical_json::to_string(&value, JsonStyle::default());
    assert_eq!(
        &Envelope::from_slice(py.as_bytes()).expect("python text decodes"),
        env
    );

    // A typed payload re-encodes to an object that decodes to the same payload.
    if let Ok(payload) = env.payload() {
        assert_eq!(
            payload.kind(),
            PayloadKind::from_payload_type(&env.payload_type)
        );
        let object = payload.to_object();
        let back = Payload::decode(&env.payload_type, object).expect("typed payload re-decodes");
        assert_eq!(back, payload);
    }
}
