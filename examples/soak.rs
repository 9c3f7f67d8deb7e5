//! A bounded soak: publishers, many subscriptions on several local
//! receivers, some of them flaky; reports what was published, delivered,
//! retried and dead, the peak memory, and checks that nothing was lost.
//!
//! ```text
//! cargo run --release --example soak -- --seconds 60
//! ```
//! Options: `--seconds N` (60), `--publishers N` (4), `--rate N` events per
//! second in all (200). Only 127.0.0.1 is used.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};

#[path = "common/measure.rs"]
mod measure;
#[path = "common/receiver.rs"]
#[allow(dead_code)]
mod receiver;

const SUBSCRIPTIONS: usize = 50;
const RECEIVERS: usize = 5;
const EVENT_NAMES: usize = 5;

fn main() {
    if let Err(e) = run() {
        eprintln!("soak failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = measure::arg(&args, "--seconds", 60)?;
    let publishers = measure::arg(&args, "--publishers", 4)?.max(1);
    let rate = measure::arg(&args, "--rate", 200)?.max(1);

    // Receivers: they record every delivery id; paths under /flaky fail
    // every other request.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let mut urls = Vec::new();
    for _ in 0..RECEIVERS {
        let (seen, requests) = (seen.clone(), requests.clone());
        urls.push(receiver::start(move |req| {
            let n = requests.fetch_add(1, Ordering::Relaxed);
            if req.path.starts_with("/flaky") && n % 2 == 0 {
                return 500;
            }
            seen.lock()
                .unwrap()
                .insert(req.header("x-webhook-delivery").to_owned());
            204
        })?);
    }

    let dir = tempfile::tempdir()?;
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .retry_schedule(
            [50, 100, 200, 400, 800, 1600]
                .map(Duration::from_millis)
                .to_vec(),
        )
        .open()?;
    // 10 % of the subscriptions are flaky.
    for i in 0..SUBSCRIPTIONS {
        let path = if i % 10 == 0 {
            format!("/flaky/{i}")
        } else {
            format!("/ok/{i}")
        };
        bus.subscribe(
            NewSubscription::new(format!("sub{i}"), format!("{}{path}", urls[i % RECEIVERS]))
                .event(format!("e{}", i % EVENT_NAMES)),
        )?;
    }

    println!(
        "soak: {seconds} s, {publishers} publishers, {rate} events/s, {SUBSCRIPTIONS} subscriptions on {RECEIVERS} receivers (10 % flaky)"
    );
    let published = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    std::thread::scope(|s| {
        for p in 0..publishers {
            let (bus, published) = (bus.clone(), &published);
            s.spawn(move || {
                let interval = Duration::from_secs_f64(publishers as f64 / rate as f64);
                let mut next = Instant::now();
                let mut n = 0u64;
                while Instant::now() < end {
                    let name = format!("e{}", (p + n) % EVENT_NAMES as u64);
                    bus.publish(&name, &serde_json::json!({"publisher": p, "n": n}))
                        .expect("publish");
                    published.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            });
        }
    });
    bus.flush()?;
    let published = published.load(Ordering::Relaxed);
    let expected = published * (SUBSCRIPTIONS / EVENT_NAMES) as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while bus.outbox().stats()?.pending > 0 {
        if Instant::now() > drain_deadline {
            return Err(
                format!("outbox did not drain in 120 s: {:?}", bus.outbox().stats()?).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    let stats = bus.outbox().stats()?;
    let received = seen.lock().unwrap().len() as u64;
    let total_requests = requests.load(Ordering::Relaxed);
    let retried = total_requests.saturating_sub(received);
    bus.shutdown(Duration::from_secs(5))?;
    let hwm = measure::peak_rss()?;
    let lost = expected.saturating_sub(stats.delivered + stats.dead);
    println!(
        "published {published} events -> {expected} deliveries in {:.1} s",
        took.as_secs_f64()
    );
    println!(
        "delivered {} (distinct ids received: {received}), retried requests {retried}, dead {}, lost {lost}",
        stats.delivered, stats.dead
    );
    println!("peak RSS (VmHWM): {hwm}");
    if lost > 0 || stats.delivered != received || stats.delivered + stats.dead != expected {
        return Err(format!(
            "lost deliveries: expected {expected}, delivered {}, dead {}, received {received}",
            stats.delivered, stats.dead
        )
        .into());
    }
    Ok(())
}
