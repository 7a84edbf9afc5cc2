//! Webhooks: the SSRF [`UrlPolicy`], signatures ([`WebhookSecret`],
//! [`SigningKeys`], [`StandardVerifier`]) and the [`WebhookOutbox`] delivery
//! scheduler (spec 16).
//!
//! | piece | decides |
//! |---|---|
//! | [`UrlPolicy`] | whether a callback URL and the addresses its host resolved to may be called, and which addresses to pin the connection to |
//! | [`WebhookSecret`] / [`SigningKeys`] | `X-ASAP-Signature: sha256=<hex>` (the reference's) and Standard Webhooks `webhook-signature: v1,<base64>` (several during key rotation) |
//! | [`StandardVerifier`] | a receiver's constant-time check with a timestamp tolerance (5 minutes) around the caller's `now` |
//! | [`WebhookDispatcher`] | the outbox as a delivery worker drives it: the store's writes in order, the delivery-time address check |
//! | [`WebhookOutbox`] | which signed request goes out when: bounded queue, per-URL 10/s, retries 1-2-4-8-16 s, per-task order, dead letters, restore after restart |
//!
//! # Driver loop
//!
//! The adapter owns the clock, DNS, sockets and the store. Call order:
//!
//! 1. At subscription time: [`UrlPolicy::parse`], resolve
//!    [`CallbackUrl::host_to_resolve`], [`UrlPolicy::approve`]; store
//!    [`CallbackUrl::as_str`] as the subscriber URL.
//! 2. Register signing keys with [`WebhookOutbox::set_signing_keys`]; for each
//!    `task.update`/`task.response` to announce: [`WebhookOutbox::enqueue`]
//!    (persist [`WebhookOutbox::record`] for the event).
//! 3. Loop on [`WebhookOutbox::poll_output`] with the wall clock's `now`:
//!    * `Event` → persist (delete the row on `Delivered`, else upsert `record(id)`),
//!      notify observers;
//!    * `Transmit(delivery)` → resolve the host again, [`UrlPolicy::approve`]
//!      the addresses, connect only to [`ApprovedTarget::socket_addrs`], send
//!      the request without following redirects within [`Delivery::timeout`],
//!      then [`WebhookOutbox::handle_result`];
//!    * `Timeout(t)` → sleep until `t` (or until a new event is enqueued), then
//!      [`WebhookOutbox::handle_timeout`] with the real `now`;
//!    * `None` → nothing held: wait for an enqueue.
//! 4. After a restart: [`WebhookOutbox::restore`] from the stored records,
//!    register the keys again, and continue at 3.
//!
//! ```
//! use core::net::IpAddr;
//! use asap_proto::model::UnixTime;
//! use asap_proto::webhook::{
//!     DeliveryOutcome, OutboxConfig, OutboxEvent, OutboxOutput, SigningKeys, UrlPolicy,
//!     WebhookEvent, WebhookOutbox, WebhookSecret,
//! };
//!
//! let policy = UrlPolicy::default();
//! let resolve = |_host: &str| -> Vec<IpAddr> { vec!["93.184.216.34".parse().unwrap()] }; // the adapter's DNS
//!
//! // 1. Subscription: check the URL once and keep its normalised form.
//! let callback = policy.parse("https://hooks.example.com/asap").unwrap();
//! let resolved = callback.host_to_resolve().map(resolve).unwrap_or_default();
//! policy.approve(&callback, &resolved).unwrap();
//!
//! // 2. Keys and an event.
//! let mut now = UnixTime::from_secs(1_767_225_600); // the adapter's wall clock
//! let mut outbox = WebhookOutbox::new(OutboxConfig::default());
//! outbox.set_signing_keys("sub-1", SigningKeys::new(WebhookSecret::from_bytes(b"test-secret")));
//! let body = br#"{"id":"01KDXZ0000ENVUPD0000000001","payload_type":"task.update"}"#.to_vec();
//! let event = WebhookEvent::new("01KDXZ0000ENVUPD0000000001", "task-1", callback.as_str(), body)
//!     .signed_with("sub-1");
//! outbox.enqueue(event, now).unwrap();
//!
//! // 3. The loop; this fake receiver fails once with 503, then accepts.
//! let mut statuses = vec![200, 503];
//! let delivered = loop {
//!     match outbox.poll_output(now) {
//!         Some(OutboxOutput::Event(OutboxEvent::Delivered { attempts, .. })) => break attempts,
//!         Some(OutboxOutput::Event(_other)) => {} // persist outbox.record(id)
//!         Some(OutboxOutput::Transmit(delivery)) => {
//!             let host = delivery.request.uri().host().unwrap().to_owned();
//!             let outcome = match policy.check(&delivery.request.uri().to_string(), &resolve(&host)) {
//!                 // connect to target.socket_addrs() only; send delivery.request
//!                 Ok(_target) => DeliveryOutcome::status(statuses.pop().unwrap()),
//!                 Err(refused) => DeliveryOutcome::UrlRefused(refused),
//!             };
//!             outbox.handle_result(delivery.id, outcome, now).unwrap();
//!         }
//!         Some(OutboxOutput::Timeout(t)) => {
//!             now = t; // the adapter sleeps until t, then reads its clock
//!             outbox.handle_timeout(now);
//!         }
//!         None => unreachable!("the event is still held"),
//!     }
//! };
//! assert_eq!(delivered, 2);
//! assert!(outbox.is_empty());
//! ```

mod dispatcher;
mod outbox;
mod policy;
mod signature;

pub use dispatcher::{DispatchOutput, WebhookDispatcher, DEFAULT_MAX_IN_FLIGHT};
pub use outbox::{
    DeadReason, Delivery, DeliveryId, DeliveryOutcome, EnqueueError, Failure, OutboxConfig,
    OutboxError, OutboxEvent, OutboxOutput, OutboxRecord, RecordState, RestoreError, WebhookEvent,
    WebhookOutbox, MAX_EVENT_ID_LEN,
};
pub use policy::{
    blocked_range, ApprovedTarget, BlockedRange, CallbackHost, CallbackUrl, UrlPolicy,
    UrlRejection, MAX_URL_LEN,
};
pub use signature::{
    SecretError, SignatureError, SigningKeys, StandardVerifier, WebhookSecret,
    ASAP_SIGNATURE_HEADER, DEFAULT_TOLERANCE, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER, WHSEC_PREFIX,
};
