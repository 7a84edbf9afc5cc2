//! Webhook signing (1 KiB body) and one outbox delivery: enqueue, signed
//! request out, 2xx reported.
//!
//! `cargo bench -p asap-proto --bench webhook -- --warm-up-time 1 --measurement-time 3`
//!
//! The reference signs a 1 KiB body about 361 000 times a second.

use std::hint::black_box;

use asap_proto::model::UnixTime;
use asap_proto::webhook::{
    DeliveryOutcome, OutboxConfig, SigningKeys, WebhookEvent, WebhookOutbox, WebhookSecret,
};
use criterion::{Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let body: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let secret = WebhookSecret::from_bytes(b"test-secret");

    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Elements(1));
    g.bench_function("asap_signature_1k", |b| {
        b.iter(|| black_box(secret.asap_signature(black_box(&body))));
    });
    g.bench_function("standard_signature_1k", |b| {
        b.iter(|| black_box(secret.standard_signature("msg_1", 1_767_225_600, black_box(&body))));
    });
    g.bench_function("delivery_sign_and_build_1k", |b| {
        let config = OutboxConfig {
            rate_per_second: 0,
            ..OutboxConfig::default()
        };
        let mut outbox = WebhookOutbox::new(config);
        outbox.set_signing_keys("sub", SigningKeys::new(secret.clone()));
        let now = UnixTime::from_secs(1_767_225_600);
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let ev = WebhookEvent::new(
                format!("msg_{n}"),
                "task-1",
                "https://93.184.216.34/hooks",
                body.clone(),
            )
            .signed_with("sub");
            outbox.enqueue(ev, now).unwrap();
            let d = outbox.poll_transmit(now).unwrap();
            let id = d.id;
            black_box(d);
            outbox
                .handle_result(id, DeliveryOutcome::status(200), now)
                .unwrap();
            black_box(outbox.poll_event());
        });
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
