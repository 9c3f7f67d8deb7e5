//! # hookbus
//!
//! Webhooks for any Rust application, without a broker: an embedded,
//! in-process event bus that keeps your users' subscriptions and delivers
//! each published event to every matching subscriber as a signed HTTP POST,
//! at least once, across crashes and restarts, with retries, backoff and a
//! dead letter queue.
//!
//! * **One instance**: the store is an embedded [sled] database in a folder
//!   ([`Builder::path`]). No server.
//! * **Several instances** (replicas behind a load balancer): the store is
//!   PostgreSQL (feature `postgres`, `Builder::postgres`). The instances
//!   share the subscriptions and the outbox, each delivery is claimed by one
//!   of them at a time, and `Bus::publish_in` writes an event in your own
//!   transaction, so it exists exactly when your business change commits.
//! * **Signed** with `X-Hub-Signature-256` (HMAC-SHA256, and the seed's
//!   `X-Hub-Signature` SHA-1) or, per subscription, with
//!   [Standard Webhooks](https://www.standardwebhooks.com/)
//!   ([`Signing::StandardWebhooks`]); receivers check both with [`signing`].
//! * **For SaaS apps**: tenants (one customer's events never reach
//!   another), REST routes for your customers' endpoints ([`rest`]), SSRF
//!   protection, rate limits, endpoint health and auto-disable, idempotency
//!   keys ([`Message`]), an event catalog that subscriptions (and,
//!   optionally, payloads) are checked against ([`catalog::EventType`]).
//!
//! The README is the guide: the quick start, a SaaS on axum + PostgreSQL
//! (tokio, publishing in your transaction, the routes, two instances), and
//! links to the guarantees, configuration, operating, security and
//! benchmark documents. The example below runs on sled.
//!
//! ```
//! use std::time::Duration;
//! use hookbus::{Bus, NewSubscription};
//!
//! #[derive(serde::Serialize)]
//! struct Hello { text: String }
//!
//! # fn main() -> Result<(), hookbus::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let bus = Bus::builder()
//!     .path(dir.path())
//!     .allow_private_targets(true) // this example's receiver is on loopback
//!     .open()?;
//!
//! // Subscribe: which events, where to, signed with which secret.
//! let sub = bus.subscribe(
//!     NewSubscription::new("My Webhook", "http://127.0.0.1:9/api/incoming")
//!         .events(["hello", "goodbye"])
//!         .secret("shh"),
//! )?;
//! assert_eq!(bus.subscriptions().for_event("hello")?[0].id, sub.id);
//!
//! // Publish: returns at once; the event is durable after `flush`.
//! bus.publish("hello", &Hello { text: "I said hello".into() })?;
//! bus.flush()?;
//!
//! // One delivery is now in the outbox (nobody listens on port 9, so it
//! // stays pending and is retried on the schedule).
//! let stats = bus.outbox().stats()?;
//! assert_eq!(stats.pending + stats.delivered + stats.dead, 1);
//!
//! bus.shutdown(Duration::from_secs(1))?;
//! assert!(bus.publish("hello", &Hello { text: "late".into() }).is_err());
//! # Ok(()) }
//! ```
//!
//! ## The flow
//!
//! [`Bus::publish`] serializes the event to JSON and queues it on a bounded
//! channel; it never touches the network or the disk. A dispatcher thread,
//! the store's only writer, takes queued events in batches, writes each
//! event with one delivery per matching active subscription in one atomic
//! batch, and flushes once for every barrier waiting in it (group commit).
//! A pool of sender
//! threads POSTs due deliveries and reports each outcome back to the
//! dispatcher, which records it.
//!
//! ## The request a subscriber receives
//!
//! ```text
//! POST <subscription url>
//! Content-Type: application/json
//! Accept: application/json
//! User-Agent: hookbus/<version>
//! X-Webhook-Delivery: <delivery id, 32 lowercase hex>
//! X-Webhook-Event: hello
//! X-Webhook-Event-Id: <event id, 32 lowercase hex: one event, every subscription>
//! X-Webhook-Sequence: <1, 2, 3, … per subscription, in publish order>
//! traceparent: <the publisher's W3C trace context, if it gave one>
//! X-Hub-Signature: sha1=<hex HMAC-SHA1 of the body, keyed with the secret>
//! X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>
//!
//! {"text":"I said hello"}
//! ```
//!
//! Signature headers are sent only when the subscription has a secret
//! (Standard Webhooks subscriptions get `webhook-id`, `webhook-timestamp`
//! and `webhook-signature` instead, see [`Signing`]). Receivers written in
//! Rust check them with [`signing::verify_signature`] and
//! [`signing::verify_standard`]; the [`signing`] module describes the
//! formats.
//!
//! ## A multi-tenant app
//!
//! Each customer's subscriptions carry its tenant, and its events are
//! published for that tenant only; subscriptions made through the REST
//! adapter ([`rest`]) belong to the caller's tenant. `examples/axum_server.rs`
//! is such an axum app.
//!
//! ```
//! # fn main() -> Result<(), hookbus::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! use hookbus::rest::{ApiRequest, Caller, handle};
//! let bus = hookbus::Bus::builder().path(dir.path()).deliver(false).open()?;
//! // Alice of customer "acme" registers an endpoint through the REST routes.
//! let alice = Caller::new("alice", ["user"]).tenant("acme");
//! let body = br#"{"name": "mine", "events": ["*"], "config": {"url": "https://acme.example/hooks"}}"#;
//! let created = handle(&bus, ApiRequest {
//!     method: "POST", path: "/webhooks/subscriptions", query: "", caller: Some(&alice), body,
//! });
//! assert_eq!(created.status, 201);
//! // The app publishes for acme: acme's endpoints get it, nobody else's.
//! bus.publish_durable_to("acme", "invoice.paid", &serde_json::json!({"invoice": 42}))?;
//! bus.publish_durable_to("globex", "invoice.paid", &serde_json::json!({"invoice": 7}))?;
//! assert_eq!(bus.outbox().stats()?.pending, 1);
//! # Ok(()) }
//! ```
//!
//! ## Delivery policy
//!
//! * A 2xx response delivers. Anything else — 3xx (redirects are never
//!   followed), 4xx, 5xx, timeout, connection error — is recorded as an
//!   attempt and retried after the next delay of
//!   [`Builder::retry_schedule`] (default 5 s, 5 min, 30 min, 2 h, 5 h,
//!   10 h, 10 h), each jittered by ±20 %. A `Retry-After` (seconds or an
//!   HTTP date) on a 429 or 503 is honoured when longer, up to one hour.
//! * When the schedule is spent the delivery is **dead**: it stays in the
//!   dead letter queue with every attempt recorded, until
//!   [`Outbox::retry`] or [`Outbox::retry_all_dead`] gives it another try.
//! * `410 Gone` deactivates the subscription and dead-letters its pending
//!   deliveries. A subscription deactivated by hand, or disabled after
//!   failing for [`Builder::auto_disable_after`], keeps its pending
//!   deliveries waiting until it is active again; [`Bus::notices`] tells
//!   the app (see [`Notices`]).
//! * A target that resolves only to internal addresses is refused without
//!   a request and dead-lettered at once (see [`Builder::allow_private_targets`]).
//! * Throughput and isolation: up to [`Builder::senders`] requests are in
//!   flight at once (as many as demand asks, up to
//!   [`Builder::sender_memory_budget`]: 5120 by default, 2560 to one host;
//!   each a task on the bus's own small tokio runtime, or a blocking thread
//!   with [`Builder::blocking_senders`]), so a receiver that answers in
//!   500 ms still gets thousands of deliveries a second. Subscriptions are served round-robin; one never
//!   holds more than its share while others have due work, nor more than
//!   [`Builder::max_in_flight_per_subscription`]; a host never more than
//!   [`Builder::max_in_flight_per_host`]. Subscriptions whose requests fail
//!   to connect or time out share at most a quarter of the slots while
//!   healthy ones wait, and after a run of such failures a subscription's
//!   circuit breaker opens ([`Builder::circuit_breaker`]): its backlog waits
//!   and one probe at a time tests the receiver. A slow or dead receiver
//!   therefore cannot stall the others.
//!
//! ## Guarantees and durability
//!
//! * **At-least-once.** An event covered by a [`Bus::flush`] (or published
//!   with [`Bus::publish_durable`], or committed with `Bus::publish_in`) reaches every subscription it matched,
//!   across crashes (`kill -9`) and restarts, or ends in the dead letter
//!   queue with every attempt recorded. A delivery keeps its id on every
//!   attempt and after restarts: receivers de-duplicate on
//!   `X-Webhook-Delivery`.
//! * **On open**, every unfinished delivery is due again on its schedule; a
//!   request that was in flight when the process died is sent again.
//! * **What "on disk" means** (sled). sled 0.34's `flush` writes the log and ends,
//!   on Linux, in `sync_file_range`, not `fsync`; sled's background flusher
//!   does `fsync` every 20 ms. So a flushed event survives a crash of the
//!   process; after a power loss or kernel crash, the last ≤ 20 ms of
//!   flushed writes may be lost. [`Durability::PowerLoss`] closes that gap:
//!   each barrier round also `fdatasync`s the store.
//! * **On PostgreSQL** a barrier's round commits synchronously, and rounds
//!   that store events or new deliveries do so before anything of them is
//!   sent. A claim on a delivery held by an instance that stalls or dies
//!   runs out after `Builder::claim_lease`, and another instance sends the
//!   delivery again, under the same id.
//! * Attempt outcomes are written at once but not flushed on their own: a
//!   crash within sled's 20 ms flush interval can make a delivery that was
//!   already answered be sent again (still at-least-once), never lost.
//! * On sled, one process per store: sled locks the folder, and a second
//!   open gets [`Error::StoreLocked`]. On PostgreSQL any number of
//!   instances share one schema.
//!
//! ## Events that match no subscription
//!
//! They are accepted and dropped: nothing is stored for them (so they
//! cannot be replayed).
//!
//! ## Operating it
//!
//! * **Health per endpoint**: [`Subscriptions::health_all`], failing ones
//!   first; subscriptions failing for [`Builder::auto_disable_after`] are
//!   disabled, their backlog paused until re-enabled.
//! * **What needs a human**: [`Bus::notices`], kept until acknowledged.
//! * **Replay**: [`Outbox::replay`] (one event) and
//!   [`Outbox::replay_since`] (a subscription's span, up to
//!   [`MAX_REPLAY_SPAN`]).
//! * **Retention**: [`Builder::keep_delivered_for`],
//!   [`Builder::keep_dead_for`] (30 days each by default),
//!   [`Builder::attempts_kept`].
//! * **Readiness**: [`Bus::health`]. With the feature `metrics`, counters,
//!   gauges and histograms go to the app's [`metrics`](https://docs.rs/metrics)
//!   recorder (names in `docs/OPERATING.md`).
//!
//! ## Features
//!
//! `postgres` (a store several instances share, and `Bus::publish_in` with
//! the `postgres` crate's transactions), `tokio` (async barriers:
//! `Bus::flush_async`, `Bus::publish_durable_async`, …), `metrics`
//! (delivery metrics); none is on by default.
//!
//! [sled]: https://docs.rs/sled/0.34
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[cfg(feature = "axum")]
pub mod axum;
mod bus;
pub mod catalog;
mod clock;
mod codec;
mod config;
mod delivery;
mod deprecated;
mod engine;
mod error;
mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod ids;
mod lifecycle;
mod message;
mod notice;
mod outbox;
mod policy;
pub mod portal;
#[cfg(test)]
mod proptests;
mod record;
mod redact;
pub mod rest;
mod retry;
mod sender;
mod serde_views;
pub mod signing;
mod ssrf;
mod storage;
mod subscription;
mod telemetry;
#[cfg(test)]
mod test_support;
mod util;

#[cfg(any(feature = "sqlx", feature = "tokio-postgres"))]
pub use bus::AsyncTransaction;
pub use bus::{Bus, NoticeListener};
pub use config::{Builder, Config, Durability, default_retry_schedule};
pub use delivery::{Delivery, DeliveryState, ParseDeliveryStateError};
pub use error::{Error, Result, StoreError};
pub use event::ALL_EVENTS;
pub use health::{BusHealth, EndpointHealth, HealthStatus};
pub use ids::{
    DeliveryId, EventId, NoticeId, ParseIdError, ParseTimestampError, SubscriptionId, Timestamp,
};
pub use message::{EventType, Message};
pub use notice::{MAX_NOTICES, Notice, NoticeKind};
pub use outbox::{Deliveries, MAX_REPLAY_SPAN, Notices, Outbox};
pub use policy::{DeliveryOrder, MAX_RATE_PER_SECOND, OnDeadLetter, RateLimit};
pub use record::{Attempt, AttemptError, AttemptErrorKind, Event, OutboxStats};
pub use sender::USER_AGENT;
pub use subscription::{
    NewSubscription, PING_EVENT, Secret, Signing, Subscription, SubscriptionPatch, Subscriptions,
    TEST_EVENT, TEST_REQUEST_BURST, TEST_REQUEST_REFILL,
};

// The signing items' old root paths, deprecated and hidden (issue 26);
// they live in `signing` now.
#[doc(hidden)]
#[allow(deprecated)]
pub use deprecated::{
    DEFAULT_TOLERANCE, VerifyError, decode_standard_secret, generate_secret, sign_sha1,
    sign_sha256, sign_standard, verify_signature, verify_standard, verify_standard_at,
};

/// The README's code blocks, compiled (and, unless marked `no_run`, run) as
/// doc tests so that the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// `docs/DELIVERY.md`'s code blocks, as doc tests (as the README's).
#[cfg(doctest)]
#[doc = include_str!("../docs/DELIVERY.md")]
pub struct DeliveryDoctests;

/// `docs/OPERATING.md`'s code blocks, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/OPERATING.md")]
pub struct OperatingDoctests;

/// `docs/CONFIGURATION.md`'s code blocks, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/CONFIGURATION.md")]
pub struct ConfigurationDoctests;

/// `docs/GUARANTEES.md`'s code blocks, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/GUARANTEES.md")]
pub struct GuaranteesDoctests;

/// `docs/SECURITY.md`'s code blocks, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/SECURITY.md")]
pub struct SecurityDoctests;

/// `docs/TENANT_API.md`'s code blocks, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/TENANT_API.md")]
pub struct TenantApiDoctests;

/// `docs/POSTGRES.md`'s code blocks, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/POSTGRES.md")]
pub struct PostgresDoctests;

/// `BENCHMARKS.md`'s code blocks, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../BENCHMARKS.md")]
pub struct BenchmarksDoctests;
