//! `examples/postgres_outbox.rs`, run as two processes on one schema (a
//! fresh one per run): two app instances publishing in their own
//! transactions to one receiver. Every committed order arrives exactly
//! once, from whichever instance claimed it; no rolled-back one arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::{Schema, url};
use crate::receiver::TestReceiver;

/// Waits for `child` (killing it after `deadline`); its stdout.
fn finish(mut child: Child, name: &str, deadline: Instant) -> String {
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("instance {name} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "instance {name}: {status:?}\n{out}\n{err}"
    );
    out
}

/// The order ids an instance printed as `order N (x): <what>`.
fn orders(out: &str, what: &str) -> BTreeSet<i64> {
    out.lines()
        .filter(|l| l.ends_with(what))
        .filter_map(|l| l.strip_prefix("order ")?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn two_instances_of_the_example_on_one_schema_deliver_every_committed_order_once() {
    let Some(schema) = Schema::new("example") else {
        return;
    };
    let rx = TestReceiver::start();
    let bin = crate::example_bin("postgres_outbox");
    let start = |name: &str| {
        Command::new(&bin)
            .args(["--instance", name, "--orders", "12", "--every-ms", "30"])
            .args(["--receiver", &rx.url("/hooks")])
            .env("HOOKBUS_DATABASE_URL", url())
            .env("HOOKBUS_SCHEMA", &schema.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both at once: both create the schema, the table and the subscription.
    let (a, b) = (start("a"), start("b"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let out_a = finish(a, "a", deadline);
    let out_b = finish(b, "b", deadline);

    let committed: BTreeSet<i64> = orders(&out_a, ": committed")
        .union(&orders(&out_b, ": committed"))
        .copied()
        .collect();
    let rolled_back: BTreeSet<i64> = orders(&out_a, ": rolled back")
        .union(&orders(&out_b, ": rolled back"))
        .copied()
        .collect();
    assert_eq!(committed.len(), 16, "8 committed each:\n{out_a}\n{out_b}");
    assert_eq!(
        rolled_back.len(),
        8,
        "4 rolled back each:\n{out_a}\n{out_b}"
    );

    // Each instance waited until its own events were delivered.
    let mut received: BTreeMap<i64, usize> = BTreeMap::new();
    let mut instances = BTreeSet::new();
    for r in rx.requests() {
        assert_eq!(r.header("x-webhook-event"), Some("order.created"));
        assert!(
            r.signed_with(b"example-secret", "x-hub-signature-256"),
            "{r:?}"
        );
        let body = r.json();
        *received.entry(body["order"].as_i64().unwrap()).or_default() += 1;
        instances.insert(body["instance"].as_str().unwrap().to_owned());
    }
    let once: BTreeSet<i64> = received.keys().copied().collect();
    assert_eq!(
        once, committed,
        "every committed order arrives, nothing else"
    );
    assert!(
        received.values().all(|&n| n == 1),
        "each exactly once: {received:?}"
    );
    assert_eq!(instances.len(), 2, "both instances' orders: {instances:?}");

    // One subscription, made by whichever instance came first.
    let bus = schema.builder().deliver(false).open().unwrap();
    assert_eq!(bus.subscriptions().list().unwrap().len(), 1);
    let stats = bus.outbox().stats().unwrap();
    assert_eq!((stats.delivered, stats.pending, stats.dead), (16, 0, 0));
}
