//! Writes the store fixtures that `tests/it/compat.rs` opens, so that a
//! change of the on-disk format that breaks existing stores fails CI.
//!
//! ```text
//! cargo run --example make_fixture -- tests/fixtures/store-v3
//! ```
//!
//! Run it only when introducing a new format version (into a new folder,
//! keeping the old fixtures): the old ones must keep opening.
//!
//! The fixtures so far:
//!
//! * `tests/fixtures/store-v1` — written by this example as it was at
//!   record format 1 (before tenants): the subscriptions "Hub" (owner
//!   `alice`, events `hello` and `goodbye`, a secret) and "Standard" (`*`,
//!   Standard Webhooks signing); "Gone", deleted after the publishes, so
//!   its delivery is dead; events `hello` (n 1), `goodbye` (n 2) and
//!   `other` (n 3): 5 pending deliveries, 1 dead.
//! * `tests/fixtures/store-v2` — record format 2: all of the above, plus
//!   "Tenant" (owner `bob`, tenant `acme`, events `hello` and
//!   `invoice.paid`, a secret, an `Authorization` header, a rate limit of 5
//!   per second in bursts of 2, FIFO order) with two events published for
//!   `acme` (`invoice.paid` n 4, then `hello` n 5; the app-wide `hello`
//!   does not reach it): 7 pending deliveries, 1 dead.
//! * `tests/fixtures/store-v3` — record format 3: all of the above (every
//!   delivery now numbered per subscription: Hub 1, 2; Standard 1, 2, 3;
//!   Tenant 1, 2, 3 with the following), plus `invoice.paid` n 6 for `acme` published as a
//!   `Message` with idempotency key `invoice-6` and traceparent
//!   `00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01`, twice (the
//!   second stores nothing): 8 pending deliveries, 1 dead.

use std::time::Duration;

use hookbus::{Bus, NewSubscription};

/// The trace context of the format-3 event.
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The secrets and payloads the compatibility test checks against.
const HUB_SECRET: &str = "fixture-secret";
const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TENANT_SECRET: &str = "fixture-tenant-secret";
const TENANT_AUTH: &str = "Bearer fixture-token";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: make_fixture DIR (a new, empty folder)")?;
    if std::path::Path::new(&dir).exists() {
        return Err(format!("{dir} exists; give a new folder").into());
    }
    let bus = Bus::builder()
        .path(&dir)
        .allow_private_targets(true)
        .deliver(false)
        .open()?;
    bus.subscribe(
        NewSubscription::new("Hub", "http://127.0.0.1:9/hub")
            .events(["hello", "goodbye"])
            .secret(HUB_SECRET)
            .owner("alice"),
    )?;
    bus.subscribe(
        NewSubscription::new("Standard", "http://127.0.0.1:9/std")
            .events(["*"])
            .secret(STD_SECRET)
            .signing(hookbus::Signing::StandardWebhooks),
    )?;
    let gone =
        bus.subscribe(NewSubscription::new("Gone", "http://127.0.0.1:9/gone").events(["hello"]))?;
    // Since format 2: a tenant's subscription with every new field set.
    bus.subscribe(
        NewSubscription::new("Tenant", "http://127.0.0.1:9/tenant")
            .events(["hello", "invoice.paid"])
            .secret(TENANT_SECRET)
            .owner("bob")
            .tenant("acme")
            .header("Authorization", TENANT_AUTH)
            .rate_limit(hookbus::RateLimit::per_second(5).burst(2))
            .order(hookbus::DeliveryOrder::FIFO),
    )?;
    bus.publish(
        "hello",
        &serde_json::json!({"text": "I said hello", "n": 1}),
    )?;
    bus.publish("goodbye", &serde_json::json!({"text": "bye", "n": 2}))?;
    bus.publish("other", &serde_json::json!({"n": 3}))?;
    bus.publish_to(
        "acme",
        "invoice.paid",
        &serde_json::json!({"text": "paid", "n": 4}),
    )?;
    bus.publish_to("acme", "hello", &serde_json::json!({"n": 5}))?;
    // Since format 3: a trace context with the event, an idempotency key.
    let message = || {
        hookbus::Message::new("invoice.paid", &serde_json::json!({"n": 6}))
            .tenant("acme")
            .idempotency_key("invoice-6")
            .traceparent(TRACEPARENT)
    };
    let first = bus.publish_message(message())?;
    assert_eq!(bus.publish_message(message())?, first);
    bus.flush()?;
    // Its pending delivery becomes a dead one.
    bus.subscriptions().delete(gone.id)?;
    let stats = bus.outbox().stats()?;
    bus.shutdown(Duration::from_secs(5))?;
    println!(
        "wrote {dir}: {} pending, {} dead",
        stats.pending, stats.dead
    );
    Ok(())
}
