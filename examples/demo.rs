//! The hookbus demo: a local receiver, a subscription, signed deliveries, a
//! failing receiver that ends in the dead letter queue, and the outbox.
//!
//! ```text
//! cargo run --example demo              # store in a temp dir, deleted at the end
//! cargo run --example demo -- --data ./hookbus-data   # store kept; run it again on the same folder
//! ```
//!
//! Run again on a kept store, the demo reuses its two subscriptions (pointing
//! them at this run's receiver) and checks only the deliveries of the events
//! it published in this run; earlier runs' deliveries stay in the outbox.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hookbus::{
    Bus, Delivery, DeliveryId, DeliveryState, EventId, NewSubscription, Subscription,
    SubscriptionPatch,
};
use serde::Serialize;

#[path = "common/receiver.rs"]
mod receiver;

const SECRET: &str = "shh-its-a-secret";

#[derive(Serialize)]
struct HelloEvent {
    text: String,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        let mut source = std::error::Error::source(&*e);
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

/// The events this run published, and a way to tell their deliveries from
/// those of earlier runs on the same store.
struct ThisRun {
    events: HashSet<EventId>,
}

impl ThisRun {
    fn publish(&mut self, bus: &Bus, event: &str, text: &str) -> hookbus::Result<()> {
        let id = bus.publish(event, &HelloEvent { text: text.into() })?;
        self.events.insert(id);
        Ok(())
    }

    fn owns(&self, d: &Delivery) -> bool {
        self.events.contains(&d.event_id)
    }

    /// Whether an arrival is a delivery of this run's events.
    fn owns_arrival(&self, bus: &Bus, a: &Arrival) -> hookbus::Result<bool> {
        let Ok(id) = a.delivery.parse::<DeliveryId>() else {
            return Ok(false);
        };
        Ok(bus.outbox().get(id)?.is_some_and(|d| self.owns(&d)))
    }

    /// This run's deliveries, oldest first.
    fn deliveries(&self, bus: &Bus) -> hookbus::Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for d in bus.outbox().all() {
            let d = d?;
            if self.owns(&d) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `_tmp` deletes the temporary store when `run` returns.
    let (_tmp, data, kept) = match args.iter().position(|a| a == "--data") {
        Some(i) => {
            let dir = args.get(i + 1).ok_or("--data needs a folder")?;
            (None, PathBuf::from(dir), true)
        }
        None => {
            let tmp = tempfile::tempdir()?;
            let path = tmp.path().join("store");
            (Some(tmp), path, false)
        }
    };

    println!("== hookbus demo ==\n");
    let (receiver_url, arrivals) = start_receiver()?;
    println!("receiver listening at {receiver_url} (paths under /fail answer 503)");

    let bus = Bus::builder()
        .path(&data)
        .allow_private_targets(true) // the receiver is on 127.0.0.1
        .retry_schedule(vec![Duration::from_millis(200), Duration::from_millis(400)])
        .open()?;
    let earlier = bus.outbox().all().count();
    println!(
        "store opened at {}{}\n",
        data.display(),
        if earlier > 0 {
            format!(" ({earlier} deliveries from earlier runs)")
        } else {
            String::new()
        }
    );

    // On a store from an earlier run the failing subscription already exists
    // and also wants `hello`: pause it until its part of the demo, so that
    // the first three events go to the working receiver only, as on a first
    // run.
    if let Some(flaky) = find_subscription(&bus, "Flaky Webhook")? {
        bus.subscriptions()
            .update(flaky.id, SubscriptionPatch::new().active(false))?;
        println!("paused subscription `Flaky Webhook` from an earlier run until it is needed");
    }
    let sub = ensure_subscription(
        &bus,
        "My Webhook",
        &format!("{receiver_url}/api/incoming"),
        &["hello", "goodbye"],
    )?;
    let mut this_run = ThisRun {
        events: HashSet::new(),
    };

    println!("\n-- publishing 3 events --");
    this_run.publish(&bus, "hello", "I said hello")?;
    this_run.publish(&bus, "hello", "hello again")?;
    this_run.publish(&bus, "goodbye", "and goodbye")?;
    bus.flush()?;
    let mut received = 0;
    while received < 3 {
        let a = arrivals
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "no delivery arrived in 10 s")?;
        if !this_run.owns_arrival(&bus, &a)? {
            print!("(from an earlier run) ");
            print_arrival(&a);
            continue;
        }
        print_arrival(&a);
        if !a.verified {
            return Err("a delivery arrived with a bad signature".into());
        }
        received += 1;
    }

    println!("\n-- a receiver that keeps failing --");
    let flaky = ensure_subscription(
        &bus,
        "Flaky Webhook",
        &format!("{receiver_url}/fail"),
        &["hello"],
    )?;
    this_run.publish(&bus, "hello", "will this arrive?")?;
    // The working subscription gets this one too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while let Ok(a) = arrivals.try_recv() {
            print_arrival(&a);
        }
        let dead = this_run
            .deliveries(&bus)?
            .iter()
            .any(|d| d.state == DeliveryState::Dead);
        if dead {
            break;
        }
        if Instant::now() > deadline {
            return Err("the failing delivery did not reach the dead letter queue in 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    while let Ok(a) = arrivals.recv_timeout(Duration::from_millis(300)) {
        print_arrival(&a);
    }
    for d in this_run.deliveries(&bus)? {
        if d.state != DeliveryState::Dead {
            continue;
        }
        println!(
            "dead letter {} ({} attempts, {}):",
            d.id,
            d.attempts,
            d.last_error.as_deref().unwrap_or("-")
        );
        for a in bus.outbox().attempts(d.id)? {
            let outcome = match (a.status, &a.error) {
                (Some(s), _) => format!("HTTP {s}"),
                (None, Some(e)) => e.to_string(),
                _ => "-".into(),
            };
            println!(
                "  attempt {} at {}: {outcome} in {} ms",
                a.number, a.at, a.duration_ms
            );
        }
        if d.subscription_id != flaky.id {
            return Err(format!("dead letter {} is not the flaky subscription's", d.id).into());
        }
    }

    println!("\n-- the outbox (this run) --");
    println!(
        "{:<34} {:<9} {:<10} {:>8}  subscription",
        "delivery", "event", "state", "attempts"
    );
    let mine = this_run.deliveries(&bus)?;
    for d in &mine {
        let name = bus
            .subscriptions()
            .get(d.subscription_id)?
            .map_or("?".into(), |s| s.name);
        println!(
            "{:<34} {:<9} {:<10} {:>8}  {name}",
            d.id, d.event_name, d.state, d.attempts
        );
    }
    let count = |state| mine.iter().filter(|d| d.state == state).count();
    let (delivered, dead, pending) = (
        count(DeliveryState::Delivered),
        count(DeliveryState::Dead),
        count(DeliveryState::Pending),
    );
    println!("\nthis run: {pending} pending, {delivered} delivered, {dead} dead");
    let stats = bus.outbox().stats()?;
    println!(
        "whole store: {} pending, {} delivered, {} dead",
        stats.pending, stats.delivered, stats.dead
    );
    if delivered != 4 || dead != 1 || mine.len() != 5 {
        return Err(format!(
            "expected 4 delivered and 1 dead in this run, got {delivered} delivered, \
             {dead} dead of {} deliveries",
            mine.len()
        )
        .into());
    }
    if sub.id == flaky.id {
        return Err("the two subscriptions are one".into());
    }

    bus.shutdown(Duration::from_secs(2))?;
    println!("\nshut down cleanly.");
    print_hint(kept.then_some(data.as_path()));
    Ok(())
}

/// The subscription with this name, pointed at `url` (the receiver's port
/// changes on every run), or a new one on the first run on this store.
fn ensure_subscription(
    bus: &Bus,
    name: &str,
    url: &str,
    events: &[&str],
) -> hookbus::Result<Subscription> {
    let sub = match find_subscription(bus, name)? {
        Some(s) => {
            let sub = bus.subscriptions().update(
                s.id,
                SubscriptionPatch::new()
                    .url(url)
                    .events(events.iter().copied())
                    .secret(SECRET)
                    .active(true),
            )?;
            print!("reused ");
            sub
        }
        None => {
            let sub = bus.subscribe(
                NewSubscription::new(name, url)
                    .events(events.iter().copied())
                    .secret(SECRET),
            )?;
            print!("created ");
            sub
        }
    };
    println!(
        "subscription `{}` ({}) to {:?} -> {}",
        sub.name, sub.id, sub.events, sub.url
    );
    Ok(sub)
}

/// The subscription with this name, if an earlier run made it.
fn find_subscription(bus: &Bus, name: &str) -> hookbus::Result<Option<Subscription>> {
    Ok(bus
        .subscriptions()
        .list()?
        .into_iter()
        .find(|s| s.name == name))
}

/// What to do next: the `hookbus` CLI needs a store that is still there.
fn print_hint(kept: Option<&Path>) {
    match kept {
        Some(dir) => {
            let dir = dir.display();
            println!("The store is kept in {dir}. Inspect it, or retry the dead letter, with the");
            println!("hookbus CLI (cargo install hookbus --features cli; in this checkout,");
            println!("cargo run --features cli --bin hookbus -- ARGS):");
            println!("  hookbus --data {dir} list --state dead");
            println!("  hookbus --data {dir} retry --all-dead");
            println!("or run the demo on it again.");
        }
        None => {
            println!("The store was in a temporary folder, deleted as the demo exits. To keep it");
            println!("and inspect it with the hookbus CLI afterwards, run");
            println!("  cargo run --example demo -- --data ./hookbus-data");
        }
    }
}

struct Arrival {
    path: String,
    event: String,
    delivery: String,
    signature: String,
    body: String,
    verified: bool,
}

fn print_arrival(a: &Arrival) {
    if a.path.starts_with("/fail") {
        println!(
            "<- {} {} delivery {} (answered 503)",
            a.path, a.event, a.delivery
        );
        return;
    }
    println!(
        "<- {} event={} delivery={}\n   X-Hub-Signature-256: {} ({})\n   body: {}",
        a.path,
        a.event,
        a.delivery,
        a.signature,
        if a.verified {
            "verified"
        } else {
            "BAD SIGNATURE"
        },
        a.body
    );
}

/// The local receiver: checks each signature with
/// `hookbus::signing::verify_signature` and reports what arrived.
fn start_receiver() -> std::io::Result<(String, mpsc::Receiver<Arrival>)> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let url = receiver::start(move |req| {
        let signature = req.header("x-hub-signature-256").to_owned();
        let verified = hookbus::signing::verify_signature(SECRET.as_bytes(), &req.body, &signature);
        let status = if req.path.starts_with("/fail") {
            503
        } else {
            204
        };
        let _ = tx.lock().unwrap().send(Arrival {
            event: req.header("x-webhook-event").to_owned(),
            delivery: req.header("x-webhook-delivery").to_owned(),
            signature,
            body: String::from_utf8_lossy(&req.body).into_owned(),
            verified,
            path: req.path,
        });
        status
    })?;
    Ok((url, rx))
}
