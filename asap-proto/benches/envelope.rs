//! Envelope decode/validate and encode, on the reference's `task.request` vector.
//!
//! `cargo bench -p asap-proto --bench envelope -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use asap_proto::jsonrpc::{self, JsonRpcRequest, RequestId};
use asap_proto::model::{Envelope, Payload, Timestamp, UnixTime};
use criterion::{Criterion, Throughput};

/// Copy of `tests/vectors/envelopes/task.request_dotted.json`.
const VECTOR: &str = include_str!("data/task.request_dotted.json");

fn envelope_bytes() -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(VECTOR).expect("vector is JSON");
    serde_json::to_vec(&v["envelope"]).expect("compact JSON")
}

fn bench(c: &mut Criterion) {
    let bytes = envelope_bytes();
    let env = Envelope::from_slice(&bytes).expect("vector decodes");
    let request = JsonRpcRequest::send(&env, RequestId::from("req-1"));
    let request_bytes = serde_json::to_vec(&request).expect("request encodes");

    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("decode_validate", |b| {
        b.iter(|| {
            let env = Envelope::from_slice(black_box(&bytes)).unwrap();
            let payload = env.payload().unwrap();
            assert!(matches!(payload, Payload::TaskRequest(_)));
            black_box((env, payload))
        });
    });
    g.bench_function("encode", |b| b.iter(|| black_box(black_box(&env).to_vec())));
    g.throughput(Throughput::Bytes(request_bytes.len() as u64));
    g.bench_function("jsonrpc_request_decode_validate", |b| {
        let now = Timestamp::from_unix(UnixTime::from_secs(1_767_225_600));
        b.iter(|| {
            let mut req = jsonrpc::decode_request_bytes(black_box(&request_bytes)).unwrap();
            let env = req.take_envelope().unwrap().materialize(now, String::new);
            let payload = env.payload().unwrap();
            black_box((req, env, payload))
        });
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
