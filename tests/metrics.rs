//! Delivery metrics through the `metrics` facade (feature `metrics`), read
//! by a real recorder (metrics-util's debugging recorder, installed
//! globally: this test binary holds this one test, so the counts are
//! exact). Real receiver on 127.0.0.1, real sled store.

#![cfg(feature = "metrics")]
#![allow(missing_docs, unreachable_pub, dead_code)]

#[path = "it/receiver.rs"]
mod receiver;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use receiver::{Reply, TestReceiver};
use serde_json::json;

#[test]
fn deliveries_failures_and_dead_letters_are_counted_and_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");

    let rx = TestReceiver::with(|r| {
        if r.path == "/bad" {
            Reply::status(503)
        } else {
            Reply::status(204)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .retry_schedule(vec![Duration::from_millis(10); 3])
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("ok", rx.url("/ok")).events(["e"]))
        .unwrap();
    bus.subscribe(NewSubscription::new("bad", rx.url("/bad")).events(["f"]))
        .unwrap();
    for n in 0..3 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    bus.publish("f", &json!({})).unwrap();
    bus.publish("nobody", &json!({})).unwrap(); // reaches no subscription
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = bus.outbox().stats().unwrap();
        if s.delivered == 3 && s.dead == 1 {
            break;
        }
        assert!(Instant::now() < end, "deliveries did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A round after the last outcome sets the gauges.
    bus.flush().unwrap();

    let mut counters = HashMap::new();
    let mut histograms = HashMap::new();
    let mut gauges = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut name = key.name().to_owned();
        for l in key.labels() {
            name.push_str(&format!("{{{}={}}}", l.key(), l.value()));
        }
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(v) => {
                histograms.insert(name, v.len());
            }
            DebugValue::Gauge(g) => {
                gauges.insert(name, g.into_inner());
            }
        }
    }
    let c = |n: &str| counters.get(n).copied().unwrap_or(0);
    assert_eq!(c("hookbus_events_published_total"), 4, "{counters:?}");
    assert_eq!(c("hookbus_deliveries_created_total"), 4);
    assert_eq!(c("hookbus_deliveries_delivered_total"), 3);
    assert_eq!(c("hookbus_attempts_failed_total{class=http_5xx}"), 4);
    assert_eq!(c("hookbus_deliveries_dead_total"), 1);
    assert_eq!(histograms.get("hookbus_attempt_duration_seconds"), Some(&7));
    assert_eq!(histograms.get("hookbus_delivery_latency_seconds"), Some(&3));
    assert_eq!(gauges.get("hookbus_backlog"), Some(&0.0), "{gauges:?}");
    assert_eq!(gauges.get("hookbus_in_flight"), Some(&0.0));
    assert_eq!(rx.count(), 7);
}
