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
//! * `tests/fixtures/store-v4` — record format 4, written by the last build
//!   of that format: first, with delivery on (a receiver of its own, retry
//!   schedule one retry after 50 ms), "Flaky" (`flaky.thing`, answered 503
//!   then 200) and "Down" (`down.thing`, always 503), one event each
//!   (`flaky.thing` n 7, `down.thing` n 8): one delivery delivered and one
//!   dead, each after 2 attempts (stored under attempt keys, as formats up to
//!   4 keep them); then all of the above: 8 pending deliveries, 1 delivered,
//!   2 dead.
//! * `tests/fixtures/store-v5` — record format 5, the same content: each
//!   delivery's newest attempt is in its record (only the first attempts of
//!   "Flaky" and "Down" are under attempt keys), and events with one
//!   delivery have no reference count.
//! * `tests/fixtures/store-v6` — record format 6, the same content: every
//!   subscription also under the tenant index (`u`) and, with an owner,
//!   the owner index (`w`).

use std::time::Duration;

use hookbus::{Bus, NewSubscription};

#[path = "common/receiver.rs"]
#[allow(dead_code)]
mod receiver;

/// The trace context of the format-3 event.
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The secrets and payloads the compatibility test checks against.
const HUB_SECRET: &str = "fixture-secret";
const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TENANT_SECRET: &str = "fixture-tenant-secret";
const TENANT_AUTH: &str = "Bearer fixture-token";

/// Since format 4: deliveries that were attempted (twice each), one
/// delivered and one dead.
fn with_attempts(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let url = receiver::start(move |req| {
        if req.path == "/flaky" && !seen.lock().unwrap().insert(req.path.clone()) {
            200
        } else {
            503
        }
    })?;
    let bus = Bus::builder()
        .path(dir)
        .allow_private_targets(true)
        .retry_schedule(vec![Duration::from_millis(50)])
        .open()?;
    bus.subscribe(NewSubscription::new("Flaky", format!("{url}/flaky")).events(["flaky.thing"]))?;
    bus.subscribe(NewSubscription::new("Down", format!("{url}/down")).events(["down.thing"]))?;
    bus.publish("flaky.thing", &serde_json::json!({"n": 7}))?;
    bus.publish("down.thing", &serde_json::json!({"n": 8}))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = bus.outbox().stats()?;
        if s.delivered == 1 && s.dead == 1 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("the attempted deliveries did not finish: {s:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bus.shutdown(Duration::from_secs(5))?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: make_fixture DIR (a new, empty folder)")?;
    if std::path::Path::new(&dir).exists() {
        return Err(format!("{dir} exists; give a new folder").into());
    }
    with_attempts(&dir)?;
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
