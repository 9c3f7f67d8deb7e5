//! Delivers 100,000 events to a local receiver and prints the peak resident
//! memory (VmHWM) of the process: `cargo run --release --example memory`.
//! Takes `--events N` to change the count and `--cache-mb N` for sled's
//! page cache (default 64, the library's default). `--baseline` instead
//! writes the same number of records (event, delivery, two index keys, one
//! batch per event) straight into sled and prints its peak: run both, as two
//! processes, and compare.

use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};

#[path = "common/measure.rs"]
mod measure;
#[path = "common/receiver.rs"]
#[allow(dead_code)]
mod receiver;

fn main() {
    if let Err(e) = run() {
        eprintln!("memory example failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let events = measure::arg(&args, "--events", 100_000)?;
    let cache_mb = measure::arg(&args, "--cache-mb", 64)?;
    if args.iter().any(|a| a == "--baseline") {
        return baseline(events, cache_mb);
    }
    let url = format!("{}/hook", receiver::start(|_| 204)?);
    let dir = tempfile::tempdir()?;
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .cache_capacity(cache_mb << 20)
        .open()?;
    bus.subscribe(
        NewSubscription::new("memory", url)
            .events(["order.created"])
            .secret("s"),
    )?;
    let start = Instant::now();
    for i in 0..events {
        bus.publish(
            "order.created",
            &serde_json::json!({"id": i, "customer": "cus_0123456789abcdef", "amount": 1234}),
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while bus.outbox().stats()?.delivered < events {
        if Instant::now() > deadline {
            return Err("not all events were delivered within 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    bus.shutdown(Duration::from_secs(5))?;
    let hwm = measure::peak_rss()?;
    println!(
        "delivered {events} events in {:.1} s ({:.0}/s); peak RSS (VmHWM): {hwm}",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// The same number of records written by sled alone.
fn baseline(events: u64, cache_mb: u64) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(cache_mb << 20)
        .open()?;
    let tree = db.open_tree("baseline")?;
    let record = [b'x'; 100];
    for i in 0..events {
        let mut batch = sled::Batch::default();
        for prefix in [b'e', b'd', b'r', b'b'] {
            let mut key = vec![prefix];
            key.extend_from_slice(&i.to_be_bytes());
            batch.insert(key, &record[..]);
        }
        tree.apply_batch(batch)?;
    }
    db.flush()?;
    println!(
        "baseline: sled alone wrote {events} × 4 records; peak RSS (VmHWM): {}",
        measure::peak_rss()?
    );
    Ok(())
}
