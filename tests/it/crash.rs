//! Crash tests: a child process (this test binary, re-run on the ignored
//! `crash_child` test) is killed with SIGKILL and the store reopened.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hookbus::{DeliveryState, EventId, NewSubscription};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, dead_url, open, wait_until};

const MODE: &str = "HOOKBUS_CRASH_CHILD";

fn spawn_child(dir: &std::path::Path, mode: &str, url: &str) -> Child {
    spawn_child_with(dir, mode, url, &[])
}

/// Re-runs this test binary on the ignored `crash_child` test, in `mode`.
fn spawn_child_with(dir: &std::path::Path, mode: &str, url: &str, env: &[(&str, String)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args([
            "--ignored",
            "--exact",
            "crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE, mode)
        .env("HOOKBUS_CRASH_DIR", dir)
        .env("HOOKBUS_CRASH_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// Reads the child's stdout until `stop` says enough (or 30 s pass).
fn read_lines(child: &mut Child, mut stop: impl FnMut(&str) -> bool) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + LONG;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let done = stop(&line);
        lines.push(line);
        if done {
            return lines;
        }
    }
    panic!("child said nothing useful: {lines:?}");
}

fn kill9(mut child: Child) {
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
}

/// The child side. Does nothing unless the crash tests start it.
#[test]
#[ignore = "child process of the crash tests; run by them"]
fn crash_child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var("HOOKBUS_CRASH_DIR").unwrap());
    let url = std::env::var("HOOKBUS_CRASH_URL").unwrap();
    if mode == "chaos" {
        return chaos_child(&dir, &url);
    }
    if mode == "one" {
        return one_event_child(&dir);
    }
    let mut b = builder(&dir).retry_schedule(vec![Duration::from_secs(3600)]);
    if mode == "durable_window" {
        b = b.commit_window(Duration::from_millis(50));
    }
    let bus = b.open().unwrap();
    bus.subscribe(NewSubscription::new("s", url).events(["hello"]))
        .unwrap();
    match mode.as_str() {
        // Under a long commit window: events without a waiter, then a
        // durable one; after each durable one returns, report its id.
        // Never stop.
        "durable_window" => {
            for batch in 0.. {
                for i in 0..10 {
                    bus.publish("hello", &json!({"batch": batch, "i": i}))
                        .unwrap();
                }
                let id = bus
                    .publish_durable("hello", &json!({"batch": batch, "durable": true}))
                    .unwrap();
                println!("\nDURABLE {id}");
            }
        }
        // Publish in batches; after each flush, report the batch's ids. Never stop.
        "publish" => {
            for batch in 0.. {
                let ids: Vec<String> = (0..50)
                    .map(|i| {
                        bus.publish("hello", &json!({"batch": batch, "i": i}))
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                bus.flush().unwrap();
                println!("\nFLUSHED {}", ids.join(" "));
            }
        }
        // Publish 20 events, flush, report, then wait to be killed while the
        // senders are stuck in requests.
        "deliver" => {
            for i in 0..20 {
                bus.publish("hello", &json!({ "i": i })).unwrap();
            }
            bus.flush().unwrap();
            println!("\nFLUSHED");
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown mode {other}"),
    }
}

#[test]
fn sigkill_right_after_flush_loses_nothing() {
    let dir = crate::test_dir();
    let mut child = spawn_child(dir.path(), "publish", &dead_url());
    let mut confirmed: HashSet<EventId> = HashSet::new();
    let mut batches = 0;
    read_lines(&mut child, |line| {
        if let Some(ids) = line.strip_prefix("FLUSHED ") {
            confirmed.extend(ids.split(' ').map(|s| s.parse::<EventId>().unwrap()));
            batches += 1;
        }
        batches >= 3
    });
    // Killed while it publishes its next batches.
    kill9(child);
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_secs(3600)])
        .open()
        .unwrap();
    let stored: HashSet<EventId> = bus.outbox().all().map(|d| d.unwrap().event_id).collect();
    let lost: Vec<_> = confirmed.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} flushed events lost: {lost:?}",
        lost.len()
    );
    assert!(confirmed.len() >= 150);
    for id in confirmed.iter().take(10) {
        assert!(bus.outbox().event(*id).unwrap().is_some());
    }
    let stats = bus.outbox().stats().unwrap();
    assert_eq!(
        stats.pending as usize,
        stored.len(),
        "counters match the records after the crash"
    );
}

/// Issue 29 item 3: a commit window gathers events that nobody waits for,
/// but a durable publish still returns only once its event is on disk.
#[test]
fn sigkill_after_publish_durable_under_a_commit_window_loses_nothing() {
    let dir = crate::test_dir();
    let mut child = spawn_child(dir.path(), "durable_window", &dead_url());
    let mut confirmed: Vec<EventId> = Vec::new();
    read_lines(&mut child, |line| {
        if let Some(id) = line.strip_prefix("DURABLE ") {
            confirmed.push(id.parse().unwrap());
        }
        confirmed.len() >= 20
    });
    // Killed while it publishes its next events.
    kill9(child);
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_secs(3600)])
        .open()
        .unwrap();
    for id in &confirmed {
        assert!(
            bus.outbox().event(*id).unwrap().is_some(),
            "durable event {id} lost"
        );
    }
}

#[test]
fn sigkill_mid_delivery_redelivers_everything_with_the_same_ids() {
    // The receiver holds every request, so the child dies with requests in flight.
    let rx = TestReceiver::with(|_| Reply::ok().delay(Duration::from_secs(30)));
    let dir = crate::test_dir();
    let mut child = spawn_child(dir.path(), "deliver", &rx.url("/hook"));
    read_lines(&mut child, |line| line == "FLUSHED");
    let before = rx.wait_for(2, LONG);
    kill9(child);
    let in_flight: HashSet<String> = before.iter().map(|r| r.delivery_id()).collect();

    rx.respond(|_| Reply::ok());
    let bus = open(dir.path());
    wait_until(LONG, "20 delivered", || {
        bus.outbox().stats().unwrap().delivered == 20
    });
    let after: Vec<_> = rx.requests().into_iter().skip(before.len()).collect();
    let ids: HashSet<String> = after.iter().map(|r| r.delivery_id()).collect();
    assert_eq!(ids.len(), 20, "one delivery per event");
    assert!(
        in_flight.is_subset(&ids),
        "requests in flight at the kill are resent with the same delivery id"
    );
    let bodies: HashSet<i64> = after
        .iter()
        .map(|r| r.json()["i"].as_i64().unwrap())
        .collect();
    assert_eq!(bodies, (0..20).collect());
    assert!(
        bus.outbox()
            .all()
            .all(|d| d.unwrap().state == DeliveryState::Delivered)
    );
}

const CHAOS_ROUNDS: u64 = 20;
const CHAOS_MAX_PER_ROUND: u64 = 2000;

/// One life of the chaos child: (re)open, subscribe once, publish and flush
/// in batches, report what each flush confirmed, until killed.
fn chaos_child(dir: &std::path::Path, url: &str) {
    let round: u64 = std::env::var("HOOKBUS_CHAOS_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let bus = builder(dir)
        .retry_schedule(vec![Duration::from_millis(10); 20])
        .request_timeout(Duration::from_secs(2))
        .open()
        .unwrap();
    if bus.subscriptions().list().unwrap().is_empty() {
        bus.subscribe(NewSubscription::new("chaos", url).events(["tick"]))
            .unwrap();
    }
    let mut i = 0;
    while i < CHAOS_MAX_PER_ROUND {
        for _ in 0..20 {
            bus.publish("tick", &json!({ "round": round, "i": i }))
                .unwrap();
            i += 1;
        }
        bus.flush().unwrap();
        println!("\nFLUSHED {round} {}", i - 1);
    }
    std::thread::sleep(Duration::from_secs(30));
}

/// Kill -9 at random moments, many times; at the end every event a flush
/// confirmed has arrived, duplicates carry the same delivery id, and
/// nothing arrived that was never published.
#[test]
fn chaos_sigkill_at_random_moments_loses_nothing() {
    let seed: u64 = std::env::var("HOOKBUS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("chaos seed: {seed} (rerun with HOOKBUS_CHAOS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let fail_seed = rng.u64(..);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = calls.clone();
    // About one request in ten fails, so retries happen across the kills.
    let rx = TestReceiver::with(move |_| {
        let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if fastrand::Rng::with_seed(fail_seed ^ n).u8(..10) == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let dir = crate::test_dir();
    let started = Instant::now();
    let mut confirmed: std::collections::BTreeMap<u64, u64> = Default::default();
    for round in 0..CHAOS_ROUNDS {
        let mut child = spawn_child_with(
            dir.path(),
            "chaos",
            &rx.url("/chaos"),
            &[("HOOKBUS_CHAOS_ROUND", round.to_string())],
        );
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let rest = l.split("FLUSHED ").nth(1)?.to_owned();
                    let (r, i) = rest.split_once(' ')?;
                    Some((r.parse::<u64>().ok()?, i.trim().parse::<u64>().ok()?))
                })
                .last()
        });
        std::thread::sleep(Duration::from_millis(rng.u64(30..600)));
        kill9(child);
        if let Some((r, i)) = reader.join().unwrap() {
            assert_eq!(r, round);
            confirmed.insert(r, i);
        }
        assert!(
            started.elapsed() < Duration::from_secs(100),
            "chaos rounds take too long"
        );
    }
    assert!(
        confirmed.len() >= CHAOS_ROUNDS as usize / 2,
        "most rounds confirmed something: {confirmed:?}"
    );

    // Restart once more and let everything drain.
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_millis(10); 20])
        .open()
        .unwrap();
    // On PostgreSQL one subscription's ~15,000 deliveries take longer
    // (a debug build's round trips per claim batch).
    let drain = if crate::on_postgres() { LONG * 4 } else { LONG };
    let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(drain, "the outbox to drain", || {
            bus.outbox().stats().unwrap().pending == 0
        })
    }));
    if drained.is_err() {
        let left: Vec<_> = bus.outbox().pending().take(5).collect();
        panic!(
            "the outbox did not drain: {:?}; first pending: {left:?}",
            bus.outbox().stats()
        );
    }
    let stats = bus.outbox().stats().unwrap();
    assert_eq!(stats.dead, 0, "{stats:?}");

    let mut ids_by_event: std::collections::HashMap<(u64, u64), HashSet<String>> =
        Default::default();
    let mut event_by_id: std::collections::HashMap<String, (u64, u64)> = Default::default();
    for r in rx.requests() {
        let v = r.json();
        let key = (v["round"].as_u64().unwrap(), v["i"].as_u64().unwrap());
        assert!(
            key.0 < CHAOS_ROUNDS && key.1 < CHAOS_MAX_PER_ROUND,
            "unexpected event {v}"
        );
        ids_by_event.entry(key).or_default().insert(r.delivery_id());
        let prev = event_by_id.insert(r.delivery_id(), key);
        assert!(
            prev.is_none_or(|p| p == key),
            "delivery id {} carried two events",
            r.delivery_id()
        );
    }
    for (round, last) in &confirmed {
        for i in 0..=*last {
            assert!(
                ids_by_event.contains_key(&(*round, i)),
                "confirmed event {round}/{i} lost (seed {seed})"
            );
        }
    }
    assert!(
        ids_by_event.values().all(|ids| ids.len() == 1),
        "duplicates carry the same delivery id"
    );
    let total: u64 = confirmed.values().map(|i| i + 1).sum();
    println!(
        "chaos: {CHAOS_ROUNDS} kills, {total} confirmed events, {} requests, {} distinct events received, {:?}",
        rx.count(),
        ids_by_event.len(),
        started.elapsed()
    );
}

/// One life of the "one" child: reopen the store (its subscription is
/// stored), publish one event without a barrier, say so, and wait to be
/// killed.
fn one_event_child(dir: &std::path::Path) {
    let life: u64 = std::env::var("HOOKBUS_LIFE").unwrap().parse().unwrap();
    let bus = builder(dir).open().unwrap();
    bus.publish("hello", &json!({ "life": life })).unwrap();
    println!("\nPUBLISHED");
    std::thread::sleep(Duration::from_secs(60));
}

/// A publish without a barrier must not reach a receiver before the round
/// that stored it is durable: a child is killed the moment the receiver
/// gets its one event, and the reopened store must hold that delivery, and
/// no sequence number may be given to two deliveries across the crashes.
#[test]
fn sigkill_the_moment_a_delivery_arrives_finds_it_stored_and_numbers_unique() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    const LIVES: u64 = 8;
    let dir = crate::test_dir();
    let life = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let victim: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
    let rx = {
        let (life, victim) = (life.clone(), victim.clone());
        TestReceiver::with(move |r| {
            let this = r.json()["life"].as_u64();
            if this == Some(life.load(std::sync::atomic::Ordering::SeqCst))
                && let Some(child) = victim.lock().unwrap().as_mut()
            {
                // Before the answer: the child dies with the request open.
                let _ = child.kill();
            }
            Reply::ok()
        })
    };
    {
        let bus = builder(dir.path()).open().unwrap();
        bus.subscribe(NewSubscription::new("s", rx.url("/hook")).events(["hello"]))
            .unwrap();
        bus.shutdown(Duration::from_secs(5)).unwrap();
    }
    for n in 0..LIVES {
        life.store(n, std::sync::atomic::Ordering::SeqCst);
        let mut child = spawn_child_with(dir.path(), "one", "", &[("HOOKBUS_LIFE", n.to_string())]);
        let out = child.stdout.take();
        *victim.lock().unwrap() = Some(child);
        let end = Instant::now() + LONG;
        loop {
            let exited = victim
                .lock()
                .unwrap()
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
                .is_some();
            if exited {
                break;
            }
            assert!(Instant::now() < end, "life {n}: its event never arrived");
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(out);
        victim.lock().unwrap().take();
    }
    let received = rx.requests();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let mut by_sequence: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &received {
        let id = r.delivery_id();
        let stored = bus.outbox().get(id.parse().unwrap()).unwrap();
        assert!(
            stored.is_some(),
            "delivery {id} (life {:?}) reached the receiver but is not in the reopened store",
            r.json()["life"]
        );
        let seq = r.header("X-Webhook-Sequence").unwrap().to_owned();
        by_sequence.entry(seq).or_default().insert(id);
    }
    let lives: HashSet<u64> = received
        .iter()
        .filter_map(|r| r.json()["life"].as_u64())
        .collect();
    assert_eq!(lives.len() as u64, LIVES, "every life's event arrived");
    for (seq, ids) in &by_sequence {
        assert_eq!(
            ids.len(),
            1,
            "sequence number {seq} sent under several deliveries: {ids:?}"
        );
    }
}
