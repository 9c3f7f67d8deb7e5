//! The `hookbus_backlog` gauge of an instance that shares a PostgreSQL
//! store follows what other instances do: another process delivers the
//! backlog, and this idle instance's gauge falls to 0 (it stayed at the
//! old count while the outbox had nothing pending). A binary of its own:
//! the metrics recorder is global to a process, and the other instance
//! runs in a child process so that only this one's gauge is read.

#![cfg(all(feature = "metrics", feature = "postgres"))]
#![allow(missing_docs, unreachable_pub, dead_code)]

#[path = "it/receiver.rs"]
mod receiver;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use receiver::TestReceiver;
use serde_json::json;

/// A recorder that keeps each gauge's last value (metrics-util's debugging
/// recorder resets a gauge to 0 when it is read, which a test that reads
/// it repeatedly cannot tell from a gauge set to 0).
#[derive(Debug, Default)]
struct Gauges(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Gauges {
    fn get(&self, name: &str) -> Option<f64> {
        let gauges = self.0.lock().unwrap();
        gauges
            .get(name)
            .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }
}

impl Recorder for Gauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut gauges = self.0.lock().unwrap();
        Gauge::from_arc(gauges.entry(key.name().to_owned()).or_default().clone())
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn url() -> String {
    std::env::var("HOOKBUS_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test connect_timeout=5".into())
}

fn builder(schema: &str) -> hookbus::Builder {
    Bus::builder()
        .postgres(url())
        .postgres_schema(schema)
        .allow_private_targets(true)
        .shutdown_timeout(Duration::from_secs(2))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The other instance: delivers what is pending in the schema, then exits.
#[test]
#[ignore = "child process of an_idle_instances_backlog_gauge_follows_other_instances; run by it"]
fn backlog_child() {
    let Ok(schema) = std::env::var("HOOKBUS_BACKLOG_SCHEMA") else {
        return;
    };
    let bus = builder(&schema).open().unwrap();
    wait_for("the backlog delivered by the child", || {
        bus.outbox().stats().unwrap().pending == 0
    });
    bus.shutdown(Duration::from_secs(2)).unwrap();
}

#[test]
fn an_idle_instances_backlog_gauge_follows_other_instances() {
    let schema = format!("hb_backlog_{:08x}", fastrand::u32(..));
    let mut admin = match postgres::Client::connect(&url(), postgres::NoTls) {
        Ok(c) => c,
        Err(e) if std::env::var_os("HOOKBUS_REQUIRE_POSTGRES").is_some() => {
            panic!("HOOKBUS_REQUIRE_POSTGRES is set but PostgreSQL does not answer: {e}")
        }
        Err(e) => {
            eprintln!("NOTICE: skipped: no PostgreSQL at {} ({e})", url());
            return;
        }
    };
    let gauges: &'static Gauges = Box::leak(Box::default());
    metrics::set_global_recorder(gauges).expect("the only recorder of this binary");

    let rx = TestReceiver::start();
    let target = rx.url("/hook");

    // This instance publishes only: the backlog stays until another
    // instance delivers it.
    let bus = builder(&schema).deliver(false).open().unwrap();
    bus.subscribe(NewSubscription::new("s", target).event("e"))
        .unwrap();
    for n in 0..4 {
        bus.publish_durable("e", &json!({ "n": n })).unwrap();
    }
    bus.flush().unwrap();
    assert_eq!(gauges.get("hookbus_backlog"), Some(4.0));

    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "backlog_child", "--nocapture"])
        .env("HOOKBUS_BACKLOG_SCHEMA", &schema)
        .status()
        .unwrap();
    assert!(status.success(), "the other instance failed: {status}");
    assert_eq!(bus.outbox().stats().unwrap().pending, 0);
    assert_eq!(rx.count(), 4, "the other instance delivered the backlog");
    // This instance did nothing meanwhile; its gauge follows the store
    // within a poll or two (1 s each).
    wait_for("the idle instance's backlog gauge at 0", || {
        gauges.get("hookbus_backlog") == Some(0.0)
    });
    bus.shutdown(Duration::from_secs(2)).unwrap();
    let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
}
