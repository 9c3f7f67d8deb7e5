//! The hookbus demo: a local receiver, a subscription, signed deliveries, a
//! failing receiver that ends in the dead letter queue, and the outbox.
//!
//! ```text
//! cargo run --example demo              # store in a temp dir
//! cargo run --example demo -- --data ./hookbus-data
//! ```

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hookbus::{Bus, DeliveryState, NewSubscription};
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

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (_tmp, data) = match args.iter().position(|a| a == "--data") {
        Some(i) => {
            let dir = args.get(i + 1).ok_or("--data needs a folder")?;
            (None, std::path::PathBuf::from(dir))
        }
        None => {
            let tmp = tempfile::tempdir()?;
            let path = tmp.path().join("store");
            (Some(tmp), path)
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
    println!("store opened at {}\n", data.display());

    let sub = bus.subscribe(
        NewSubscription::new("My Webhook", format!("{receiver_url}/api/incoming"))
            .events(["hello", "goodbye"])
            .secret(SECRET),
    )?;
    println!(
        "subscribed `{}` ({}) to {:?} -> {}",
        sub.name, sub.id, sub.events, sub.url
    );

    println!("\n-- publishing 3 events --");
    bus.publish(
        "hello",
        &HelloEvent {
            text: "I said hello".into(),
        },
    )?;
    bus.publish(
        "hello",
        &HelloEvent {
            text: "hello again".into(),
        },
    )?;
    bus.publish(
        "goodbye",
        &HelloEvent {
            text: "and goodbye".into(),
        },
    )?;
    bus.flush()?;
    for _ in 0..3 {
        let a = arrivals
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "no delivery arrived in 10 s")?;
        print_arrival(&a);
        if !a.verified {
            return Err("a delivery arrived with a bad signature".into());
        }
    }

    println!("\n-- a receiver that keeps failing --");
    let flaky = bus.subscribe(
        NewSubscription::new("Flaky Webhook", format!("{receiver_url}/fail"))
            .event("hello")
            .secret(SECRET),
    )?;
    bus.publish(
        "hello",
        &HelloEvent {
            text: "will this arrive?".into(),
        },
    )?;
    // The working subscription gets this one too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while let Ok(a) = arrivals.try_recv() {
            print_arrival(&a);
        }
        if bus.outbox().stats()?.dead >= 1 {
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
    for d in bus.outbox().dead() {
        let d = d?;
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
        assert_eq!(d.subscription_id, flaky.id);
    }

    println!("\n-- the outbox --");
    println!(
        "{:<34} {:<9} {:<10} {:>8}  subscription",
        "delivery", "event", "state", "attempts"
    );
    for d in bus.outbox().all() {
        let d = d?;
        let name = bus
            .subscriptions()
            .get(d.subscription_id)?
            .map_or("?".into(), |s| s.name);
        println!(
            "{:<34} {:<9} {:<10} {:>8}  {name}",
            d.id, d.event_name, d.state, d.attempts
        );
    }
    let stats = bus.outbox().stats()?;
    println!(
        "\nstats: {} pending, {} delivered, {} dead",
        stats.pending, stats.delivered, stats.dead
    );
    let delivered = bus.outbox().delivered().count();
    if stats.delivered != 4 || stats.dead != 1 || delivered != 4 {
        return Err(format!("expected 4 delivered and 1 dead, got {stats:?}").into());
    }
    assert!(
        bus.outbox()
            .pending()
            .all(|d| d.is_ok_and(|d| d.state == DeliveryState::Pending))
    );

    bus.shutdown(Duration::from_secs(2))?;
    println!(
        "\nshut down cleanly. Retry the dead letter with `cargo run --example outbox -- --data DIR retry --all-dead`."
    );
    Ok(())
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
/// `hookbus::verify_signature` and reports what arrived.
fn start_receiver() -> std::io::Result<(String, mpsc::Receiver<Arrival>)> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let url = receiver::start(move |req| {
        let signature = req.header("x-hub-signature-256").to_owned();
        let verified = hookbus::verify_signature(SECRET.as_bytes(), &req.body, &signature);
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
