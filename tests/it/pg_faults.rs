//! Real faults between the bus and PostgreSQL: connections cut, stalled
//! or refused by a TCP proxy (`crate::proxy`), backends terminated with
//! `pg_terminate_backend`, and a failing commit. The server's own crash
//! (its cluster stopped in immediate mode) is in `tests/pg_crash.rs`,
//! which runs alone.
//!
//! What each test holds to: nothing a barrier confirmed is lost, no barrier
//! reports Ok for something that may be lost, and the bus recovers by
//! itself when the server is back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};
use serde_json::json;

use crate::postgres::{Schema, pg_addr, proxied, url};
use crate::proxy::Proxy;
use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, dead_url, wait_until};

/// A direct connection, to look at the store beside the bus.
fn direct() -> postgres::Client {
    postgres::Client::connect(&url(), postgres::NoTls).expect("connect to PostgreSQL")
}

fn count(schema: &Schema, table: &str) -> i64 {
    direct()
        .query_one(&format!("SELECT count(*) FROM {}.{table}", schema.0), &[])
        .unwrap()
        .get(0)
}

/// A 2 s claim lease (and timeouts short enough for it): a delivery whose
/// outcome write was cut, or could not be made while the server was away,
/// stays claimed until its lease runs out, and is then sent again; the
/// default lease (the timeouts + 30 s) outlasts a test's wait.
fn short_lease(b: hookbus::Builder) -> hookbus::Builder {
    b.connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(1))
        .claim_lease(Duration::from_secs(2))
}

/// A bus whose store connections go through a fault proxy, with a short
/// lease, and one subscription to `e` at a receiver that answers 204.
fn behind_a_proxy(schema: &Schema) -> (Proxy, TestReceiver, Bus) {
    let proxy = Proxy::start(pg_addr());
    let rx = TestReceiver::start();
    let bus = short_lease(schema.builder_at(proxied(&proxy)))
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("s", rx.url("/s")).event("e"))
        .unwrap();
    (proxy, rx, bus)
}

/// Retries `f` every 100 ms until it is Ok (or `LONG` passes: panics).
fn until_ok<T>(what: &str, mut f: impl FnMut() -> hookbus::Result<T>) -> T {
    let end = Instant::now() + LONG;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < end, "{what} never recovered: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_delete_whose_commit_fails_reports_the_error_and_changes_nothing() {
    let Some(schema) = Schema::new("del_fail") else {
        return;
    };
    let bus = schema
        .builder()
        .retry_schedule(vec![Duration::from_secs(3600)])
        .open()
        .unwrap();
    let sub = bus
        .subscribe(NewSubscription::new("s", dead_url()).event("e"))
        .unwrap();
    for n in 0..5 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    bus.flush().unwrap();
    wait_until(LONG, "each tried once", || {
        bus.outbox()
            .pending()
            .all(|d| d.is_ok_and(|d| d.attempts == 1))
    });
    // Any failure of the commit: here a trigger refuses the DELETE.
    direct()
        .batch_execute(&format!(
            "CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
             CREATE TRIGGER refuse BEFORE DELETE ON {s}.subscriptions
               FOR EACH ROW EXECUTE FUNCTION {s}.refuse();",
            s = schema.0
        ))
        .unwrap();
    let r = bus.subscriptions().delete(sub.id);
    assert!(r.is_err(), "a delete whose commit failed reported {r:?}");
    let still = bus.subscriptions().get(sub.id).unwrap();
    assert!(
        still.is_some_and(|s| s.active),
        "the subscription is still stored and active"
    );
    let stats = bus.outbox().stats().unwrap();
    assert_eq!(
        (stats.pending, stats.dead),
        (5, 0),
        "its deliveries were not dead-lettered"
    );
}

#[test]
fn a_claim_lease_shorter_than_a_request_is_refused() {
    let Some(schema) = Schema::new("lease_check") else {
        return;
    };
    let e = schema
        .builder()
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(15))
        .claim_lease(Duration::from_secs(10))
        .open()
        .unwrap_err();
    assert!(matches!(e, hookbus::Error::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("claim_lease"), "{e}");
    // Longer than both timeouts: fine.
    schema
        .builder()
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2))
        .claim_lease(Duration::from_secs(4))
        .open()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .unwrap();
}

/// Publishes in batches of 20 with a flush after each, from another
/// thread, while `fault` runs; returns the confirmed `n`s and how many
/// barriers failed.
fn publish_through(bus: &Bus, batches: u64, fault: impl FnOnce()) -> (HashSet<u64>, usize) {
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let publisher = {
        let (bus, confirmed, failed) = (bus.clone(), confirmed.clone(), failed.clone());
        std::thread::spawn(move || {
            for b in 0..batches {
                let ns: Vec<u64> = (b * 20..b * 20 + 20).collect();
                let published: Vec<u64> = ns
                    .into_iter()
                    .filter(|n| bus.publish("e", &json!({ "n": n })).is_ok())
                    .collect();
                match bus.flush() {
                    Ok(()) => confirmed.lock().unwrap().extend(published),
                    Err(_) => *failed.lock().unwrap() += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    fault();
    publisher.join().unwrap();
    let c = confirmed.lock().unwrap().clone();
    let f = *failed.lock().unwrap();
    (c, f)
}

/// Every confirmed `n` reaches the receiver (the bus recovered).
fn all_arrive(rx: &TestReceiver, confirmed: &HashSet<u64>) {
    wait_until(LONG, "every confirmed event delivered", || {
        let got: HashSet<u64> = rx
            .requests()
            .iter()
            .filter_map(|r| r.json()["n"].as_u64())
            .collect();
        confirmed.is_subset(&got)
    });
}

#[test]
fn connections_cut_while_publishing_lose_nothing_a_barrier_confirmed() {
    let Some(schema) = Schema::new("cut") else {
        return;
    };
    let (proxy, rx, bus) = behind_a_proxy(&schema);
    let (confirmed, failed) = publish_through(&bus, 40, || {
        // Cuts during rounds of publishes, barriers, claims and outcome
        // writes (all of them run all the time here).
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(70));
            proxy.cut();
        }
    });
    assert!(!confirmed.is_empty(), "some barriers succeeded");
    eprintln!(
        "cut: {} events confirmed, {failed} barriers failed",
        confirmed.len()
    );
    // Back to normal by itself: a barrier succeeds again, and everything
    // confirmed arrives.
    until_ok("a barrier", || bus.flush());
    all_arrive(&rx, &confirmed);
    // Nothing confirmed is missing from the store's deliveries either.
    let stored: i64 = count(&schema, "deliveries");
    assert!(stored as usize >= confirmed.len());
}

#[test]
fn terminated_backends_and_a_probe_never_make_a_barrier_hide_a_loss() {
    let Some(schema) = Schema::new("terminate") else {
        return;
    };
    let proxy = Proxy::start(pg_addr());
    let bus = schema
        .builder_at(proxied(&proxy))
        .retry_schedule(vec![Duration::from_secs(3600)])
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("s", dead_url()).event("e"))
        .unwrap();
    for n in 0..10 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    // Let the publishes be committed (no barrier), then kill every backend
    // of the bus from the server's side.
    wait_until(LONG, "10 deliveries visible", || {
        count(&schema, "deliveries") == 10
    });
    let ports: Vec<i32> = proxy.upstream_ports().into_iter().map(i32::from).collect();
    let killed: i64 = direct()
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE client_port = ANY($1) AND pid <> pg_backend_pid()) t",
            &[&ports],
        )
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the bus's backends were terminated");
    // A readiness probe first: it must not take anything a barrier reports.
    let _ = bus.health(Duration::from_secs(10));
    // Each barrier either fails or is right that the 10 are stored.
    for _ in 0..3 {
        if bus.flush().is_ok() {
            assert_eq!(count(&schema, "deliveries"), 10);
        }
    }
    until_ok("a barrier", || bus.flush());
    assert_eq!(count(&schema, "deliveries"), 10);
    // And it goes on by itself.
    until_ok("a durable publish", || {
        bus.publish_durable("e", &json!({ "n": 10 }))
    });
    assert_eq!(count(&schema, "deliveries"), 11);
}

#[test]
fn a_server_unreachable_for_10_s_is_reported_and_then_recovered_from() {
    let Some(schema) = Schema::new("outage") else {
        return;
    };
    let (proxy, rx, bus) = behind_a_proxy(&schema);
    bus.publish_durable("e", &json!({ "n": 0 })).unwrap();
    // The server goes away: open connections cut, new ones refused.
    proxy.refuse(true);
    proxy.cut();
    let down = Instant::now();
    let mut during: Vec<u64> = Vec::new();
    let mut barrier_ok_during = 0;
    let mut n = 1;
    while down.elapsed() < Duration::from_secs(10) {
        if bus.publish("e", &json!({ "n": n })).is_ok() {
            during.push(n);
        }
        n += 1;
        if bus.flush().is_ok() {
            barrier_ok_during += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        barrier_ok_during, 0,
        "no barrier can succeed while the server is unreachable"
    );
    assert!(
        !bus.health(Duration::from_secs(5)).ready,
        "not ready while down"
    );
    // Back: the bus recovers without help.
    proxy.refuse(false);
    until_ok("a durable publish after the outage", || {
        bus.publish_durable("e", &json!({ "n": 1000 }))
    });
    let mut expected: HashSet<u64> = [0, 1000].into();
    // Events published without a barrier during the outage: a barrier
    // after it succeeding means they are all stored and sent.
    if bus.flush().is_ok() {
        let stored: HashSet<u64> = bus
            .outbox()
            .all()
            .filter_map(|d| d.ok())
            .filter_map(|d| {
                bus.outbox()
                    .event(d.event_id)
                    .ok()
                    .flatten()
                    .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).ok())
                    .and_then(|v| v["n"].as_u64())
            })
            .collect();
        expected.extend(stored);
    }
    all_arrive(&rx, &expected);
    assert!(bus.health(Duration::from_secs(5)).ready);
}

#[test]
fn a_connection_stalled_past_the_lease_never_sends_a_delivery_twice_at_once() {
    let Some(schema) = Schema::new("stall") else {
        return;
    };
    // Requests take 300 ms; two for one delivery that overlap would be sent
    // twice at once.
    let overlaps = Arc::new(Mutex::new(Vec::new()));
    let open: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let rx = {
        let (overlaps, open) = (overlaps.clone(), open.clone());
        TestReceiver::with(move |r| {
            let id = r.delivery_id();
            let mut open = open.lock().unwrap();
            if let Some(at) = open.get(&id)
                && at.elapsed() < Duration::from_millis(300)
            {
                overlaps.lock().unwrap().push(id.clone());
            }
            open.insert(id, Instant::now());
            Reply::ok().delay(Duration::from_millis(300))
        })
    };
    let proxy = Proxy::start(pg_addr());
    let quick = |b: hookbus::Builder| {
        b.connect_timeout(Duration::from_millis(200))
            .request_timeout(Duration::from_millis(700))
            .claim_lease(Duration::from_secs(1))
    };
    let a = quick(schema.builder_at(proxied(&proxy))).open().unwrap();
    let b = quick(schema.builder()).open().unwrap();
    a.subscribe(NewSubscription::new("s", rx.url("/s")).event("e"))
        .unwrap();
    for n in 0..40 {
        a.publish("e", &json!({ "n": n })).unwrap();
    }
    a.flush().unwrap();
    // A's store connection stalls for 3 s (three leases) as it works.
    rx.wait_for(1, LONG);
    proxy.stall(true);
    std::thread::sleep(Duration::from_secs(3));
    proxy.stall(false);
    wait_until(LONG, "all 40 delivered", || {
        b.outbox().stats().is_ok_and(|s| s.delivered == 40)
    });
    let got: HashSet<u64> = rx
        .requests()
        .iter()
        .filter_map(|r| r.json()["n"].as_u64())
        .collect();
    assert_eq!(got, (0..40).collect());
    assert!(
        overlaps.lock().unwrap().is_empty(),
        "deliveries sent twice at once: {:?}",
        overlaps.lock().unwrap()
    );
    // A recovers by itself too.
    until_ok("A's barrier", || a.flush());
}

#[test]
fn a_dropped_late_result_leaves_no_attempt_in_the_history() {
    let Some(schema) = Schema::new("late_attempt") else {
        return;
    };
    // Request 1 (instance A) fails, and A's store connection stalls as it
    // is answered, past A's lease; request 2 (instance B, after the lease)
    // ends the stall and answers 204 only 700 ms later, so A's late result
    // reaches the store while B's request runs: it must be dropped whole,
    // its attempt too (the history would show a 500 the delivery never
    // had, and B's own attempt number would then be taken).
    let proxy = Arc::new(Proxy::start(pg_addr()));
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rx = {
        let (proxy, seen) = (proxy.clone(), seen.clone());
        TestReceiver::with(move |_| {
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                proxy.stall(true);
                Reply::status(500)
            } else {
                proxy.stall(false);
                Reply::ok().delay(Duration::from_millis(700))
            }
        })
    };
    let quick = |b: hookbus::Builder| {
        b.connect_timeout(Duration::from_millis(200))
            .request_timeout(Duration::from_millis(1500))
            .claim_lease(Duration::from_secs(2))
    };
    let a = quick(schema.builder_at(proxied(&proxy)))
        .poll_interval(Duration::from_secs(3600))
        .open()
        .unwrap();
    a.subscribe(NewSubscription::new("s", rx.url("/s")).event("e"))
        .unwrap();
    a.publish_durable("e", &json!({ "n": 1 })).unwrap();
    rx.wait_for(1, LONG);
    let b = quick(schema.builder())
        .poll_interval(Duration::from_millis(100))
        .open()
        .unwrap();
    wait_until(LONG, "delivered by B", || {
        b.outbox().stats().is_ok_and(|s| s.delivered == 1)
    });
    // A's late result has long been written (or dropped) by now.
    until_ok("A's barrier", || a.flush());
    let d = b.outbox().delivered().next().unwrap().unwrap();
    assert_eq!(rx.count(), 2);
    let history = b.outbox().attempts(d.id).unwrap();
    let statuses: Vec<Option<u16>> = history.iter().map(|h| h.status).collect();
    assert_eq!(
        statuses,
        vec![Some(204)],
        "the history shows only the attempt whose outcome was recorded"
    );
}

#[test]
fn queued_publishes_are_bounded_by_bytes_while_the_store_stalls() {
    let Some(schema) = Schema::new("queue_bytes") else {
        return;
    };
    let proxy = Proxy::start(pg_addr());
    let bus = schema
        .builder_at(proxied(&proxy))
        .deliver(false)
        .max_queued_bytes(1024 * 1024)
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("s", dead_url()).event("e"))
        .unwrap();
    // The dispatcher is held in a store round while the connection stalls.
    proxy.stall(true);
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (bus, published) = (bus.clone(), published.clone());
        std::thread::spawn(move || {
            let big = "x".repeat(100 * 1024);
            for n in 0..30 {
                bus.publish("e", &json!({ "n": n, "pad": big })).unwrap();
                published.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let first = bus.publish("e", &json!({ "n": -1 }));
    assert!(first.is_ok());
    // Not a wait for a condition: whatever the publisher managed in this
    // time must stay within the bound (1 MiB / 100 KiB: 10 queued, plus
    // the one the dispatcher holds, plus one round it took before).
    std::thread::sleep(Duration::from_secs(1));
    let queued = published.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        queued <= 12,
        "{queued} payloads of 100 KiB got past a 1 MiB queue"
    );
    proxy.stall(false);
    publisher.join().unwrap();
    until_ok("a barrier", || bus.flush());
    assert_eq!(count(&schema, "deliveries"), 31);
}

#[test]
fn connections_cut_around_publish_in_never_send_what_was_not_committed() {
    let Some(schema) = Schema::new("cut_tx") else {
        return;
    };
    let (proxy, rx, bus) = behind_a_proxy(&schema);
    let mut app = direct();
    let (mut committed, mut refused) = (HashSet::new(), 0);
    for n in 0..20u64 {
        // The bus's connections are cut just before (even n) or while
        // (odd n, from another thread) the app publishes in its own
        // transaction: publish_in numbers the deliveries on the bus's
        // connection.
        if n % 2 == 0 {
            proxy.cut();
        }
        let mut tx = app.transaction().unwrap();
        let r = std::thread::scope(|s| {
            if n % 2 == 1 {
                s.spawn(|| {
                    std::thread::sleep(Duration::from_micros(500));
                    proxy.cut();
                });
            }
            bus.publish_in(&mut tx, hookbus::Message::new("e", &json!({ "n": n })))
        });
        match r {
            Ok(_) => {
                tx.commit().unwrap();
                committed.insert(n);
            }
            Err(_) => {
                tx.rollback().unwrap();
                refused += 1;
            }
        }
    }
    eprintln!(
        "publish_in with cuts: {} committed, {refused} refused",
        committed.len()
    );
    assert!(!committed.is_empty(), "the bus reconnects for publish_in");
    // What the app committed arrives; what it rolled back never does.
    all_arrive(&rx, &committed);
    // Not a wait for a condition: a rolled-back event would have no
    // delivery row at all, so none can arrive late; the pause only gives a
    // wrongly stored one the time to show.
    std::thread::sleep(Duration::from_millis(300));
    let got: HashSet<u64> = rx
        .requests()
        .iter()
        .filter_map(|r| r.json()["n"].as_u64())
        .collect();
    assert_eq!(got, committed, "only committed events are sent");
}

/// Threads of this process whose name starts with `prefix` (Linux: the
/// kernel keeps 15 bytes of a thread's name).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// The child side of `shutdown_joins_the_listener_thread` (a process of its
/// own, so no other test's bus is counted).
#[test]
#[ignore = "child process of shutdown_joins_the_listener_thread; run by it"]
fn listener_child() {
    let Ok(schema) = std::env::var("HOOKBUS_LISTENER_SCHEMA") else {
        return;
    };
    let bus = Bus::builder()
        .postgres(url())
        .postgres_schema(&schema)
        .open()
        .unwrap();
    // A new thread takes its name as it starts: wait for it (bounded).
    let end = Instant::now() + Duration::from_secs(5);
    while threads_named("hookbus-pg-li") == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("\nBEFORE {}", threads_named("hookbus-pg-li"));
    bus.shutdown(Duration::from_secs(5)).unwrap();
    println!("\nAFTER {}", threads_named("hookbus-pg-li"));
}

#[test]
fn shutdown_joins_the_listener_thread() {
    let Some(schema) = Schema::new("listener") else {
        return;
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "pg_faults::listener_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOOKBUS_LISTENER_SCHEMA", &schema.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |what: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix(what))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("the child said no {what}: {text}"))
    };
    assert_eq!(
        count("BEFORE "),
        1,
        "the listener runs while the bus is open"
    );
    assert_eq!(count("AFTER "), 0, "shutdown left the listener running");
}
