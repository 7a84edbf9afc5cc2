//! Bytes → JSON-RPC request → envelope, as `POST /asap` sees them. Nothing
//! panics; every refusal is a well-formed JSON-RPC error with a known code.

#![no_main]

use asap_proto::jsonrpc::{self, codes, ErrorResponse, JsonRpcRequest};
use asap_proto::model::{Envelope, Timestamp, UnixTime};
use libfuzzer_sys::fuzz_target;

fn check_error(resp: &ErrorResponse, allowed: &[i64]) {
    assert!(
        allowed.contains(&resp.error.code),
        "unexpected code {resp:?}"
    );
    assert_eq!(resp.error.message, codes::message(resp.error.code));
    let bytes = resp.to_vec();
    let back: ErrorResponse = serde_json::from_slice(&bytes).expect("error body is JSON");
    assert_eq!(&back, resp);
}

fuzz_target!(|data: &[u8]| {
    let result = jsonrpc::decode_request_bytes(data);
    // The two-step entry point agrees with the bytes one.
    let two_step = jsonrpc::parse_json(data).and_then(|v| jsonrpc::decode_request_raw(v, data));
    assert_eq!(result, two_step);

    let mut req = match result {
        Ok(req) => req,
        Err(resp) => {
            check_error(
                &resp,
                &[
                    codes::PARSE_ERROR,
                    codes::INVALID_REQUEST,
                    codes::METHOD_NOT_FOUND,
                    codes::INVALID_PARAMS,
                ],
            );
            return;
        }
    };
    assert_eq!(req.method, jsonrpc::METHOD_SEND);
    match req.take_envelope() {
        Ok(input) => {
            let now = Timestamp::from_unix(UnixTime::from_secs(1_767_225_600));
            let env = input.materialize(now, || "generated".into());
            let _ = env.payload();
            // Re-sent as a request, the envelope comes back unchanged.
            let resend = JsonRpcRequest::send(&env, req.id.clone());
            let bytes = serde_json::to_vec(&resend).expect("request encodes");
            let mut again = jsonrpc::decode_request_bytes(&bytes).expect("our request decodes");
            assert_eq!(again.id, req.id);
            let back = again.take_envelope().expect("our envelope decodes");
            let back: Envelope = back.materialize(now, || unreachable!("id present"));
            assert_eq!(back, env);
        }
        Err(resp) => {
            check_error(&resp, &[codes::INVALID_PARAMS]);
            assert_eq!(resp.id.as_ref(), Some(&req.id));
        }
    }
});
