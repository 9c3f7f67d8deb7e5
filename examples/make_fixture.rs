//! Writes the store fixture that `tests/it/compat.rs` opens, so that a
//! change of the on-disk format that breaks existing stores fails CI.
//!
//! ```text
//! cargo run --example make_fixture -- tests/fixtures/store-v1
//! ```
//!
//! Run it only when introducing a new format version (into a new folder,
//! keeping the old fixtures): the old ones must keep opening.

use std::time::Duration;

use hookbus::{Bus, NewSubscription};

/// The secrets and payloads the compatibility test checks against.
const HUB_SECRET: &str = "fixture-secret";
const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

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
    bus.publish(
        "hello",
        &serde_json::json!({"text": "I said hello", "n": 1}),
    )?;
    bus.publish("goodbye", &serde_json::json!({"text": "bye", "n": 2}))?;
    bus.publish("other", &serde_json::json!({"n": 3}))?;
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
