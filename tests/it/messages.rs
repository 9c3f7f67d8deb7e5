//! What receivers need to trust a stream, and publishing with options:
//! idempotency keys (across a reopen, per tenant, within the window, under
//! concurrency), sequence numbers per subscription, the publisher's trace
//! context on every attempt.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hookbus::{Error, EventId, Message, NewSubscription};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, consistent, wait_until};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn an_idempotency_key_stores_once_within_the_window_across_a_reopen() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let paid =
        |n: i64| Message::new("invoice.paid", &json!({ "n": n })).idempotency_key("invoice-1-paid");
    let first;
    {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        bus.subscribe(NewSubscription::new("s", rx.url("/s")).event("invoice.paid"))
            .unwrap();
        first = bus.publish_message(paid(1)).unwrap();
        // A retried handler: the first one holds.
        assert_eq!(bus.publish_message(paid(1)).unwrap(), first);
        assert_eq!(bus.publish_message_durable(paid(1)).unwrap(), first);
        // The key binds the event: another payload, name or tenant with it
        // is refused, and nothing is stored.
        for other in [
            paid(2),
            Message::new("invoice.voided", &json!({ "n": 1 })).idempotency_key("invoice-1-paid"),
        ] {
            match bus.publish_message(other) {
                Err(hookbus::Error::IdempotencyKeyReused { key, holder }) => {
                    assert_eq!((key.as_str(), holder), ("invoice-1-paid", first));
                }
                r => panic!("a reused key with another event: {r:?}"),
            }
        }
        assert_eq!(bus.outbox().stats().unwrap().pending, 1);
        // Another key is another event.
        let other = bus
            .publish_message(Message::new("invoice.paid", &json!({"n": 4})).idempotency_key("x"))
            .unwrap();
        assert_ne!(other, first);
        // The same key for a tenant is another key.
        let tenant = bus.publish_message(paid(5).tenant("acme")).unwrap();
        assert_ne!(tenant, first);
        assert_eq!(bus.publish_message(paid(5).tenant("acme")).unwrap(), tenant);
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    // After a restart the key still holds, and still binds the event.
    let bus = builder(dir.path()).open().unwrap();
    assert_eq!(bus.publish_message(paid(1)).unwrap(), first);
    assert!(bus.publish_message(paid(7)).is_err());
    wait_until(LONG, "2 delivered", || {
        bus.outbox().stats().unwrap().delivered == 2
    });
    let stats = consistent(&bus);
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 2, 0));
    let bodies: HashSet<i64> = rx
        .requests()
        .iter()
        .map(|r| r.json()["n"].as_i64().unwrap())
        .collect();
    assert_eq!(bodies, HashSet::from([1, 4]));
}

#[test]
fn a_key_is_forgotten_after_its_window_and_concurrent_uses_store_once() {
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .deliver(false)
        .idempotency_window(Duration::from_secs(1))
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("s", "http://127.0.0.1:9/s").event("e"))
        .unwrap();
    let msg = || Message::new("e", &json!(1)).idempotency_key("k");
    let first = bus.publish_message(msg()).unwrap();
    assert_eq!(bus.publish_message(msg()).unwrap(), first);
    std::thread::sleep(Duration::from_millis(1100));
    let second = bus.publish_message(msg()).unwrap();
    assert_ne!(second, first, "the window passed: a new event");
    assert_eq!(bus.outbox().stats().unwrap().pending, 2);

    // Eight threads race with one new key: exactly one event is stored and
    // every caller gets its id.
    let ids: Vec<EventId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let bus = bus.clone();
                s.spawn(move || {
                    bus.publish_message(Message::new("e", &json!(2)).idempotency_key("race"))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_eq!(bus.outbox().stats().unwrap().pending, 3);
}

#[test]
fn bad_messages_get_clear_errors_and_store_nothing() {
    let dir = crate::test_dir();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    bus.subscribe(NewSubscription::new("s", "http://127.0.0.1:9/s").event("e"))
        .unwrap();
    let base = || Message::new("e", &json!(1));
    for (m, what) in [
        (base().idempotency_key(""), "empty key"),
        (base().idempotency_key("k".repeat(256)), "long key"),
        (base().idempotency_key("a\nb"), "control character"),
    ] {
        let err = bus.publish_message(m).unwrap_err();
        assert!(
            matches!(err, Error::InvalidIdempotencyKey { .. }),
            "{what}: {err:?}"
        );
    }
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-evil: 1",
    ] {
        let err = bus.publish_message(base().traceparent(bad)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidTraceparent { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(!err.to_string().contains('\n'));
    }
    let err = bus.publish_message(base().tenant("")).unwrap_err();
    assert!(matches!(err, Error::InvalidTenant { .. }), "{err:?}");
    let err = bus
        .publish_message(Message::new("bad name", &json!(1)))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEventName { .. }), "{err:?}");
    let err = bus
        .publish_message(Message::new(
            "e",
            &std::collections::HashMap::from([((1, 2), 3)]),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");
    bus.flush().unwrap();
    assert_eq!(bus.outbox().stats().unwrap().pending, 0);
    // A window out of range is refused when the bus is built.
    let other = crate::test_dir();
    for w in [Duration::ZERO, Duration::from_secs(366 * 24 * 3600)] {
        let r = builder(other.path()).idempotency_window(w).open();
        assert!(matches!(r, Err(Error::InvalidConfig(_))), "{w:?}");
    }
}

#[test]
fn sequence_numbers_count_per_subscription_and_the_trace_context_rides_every_attempt() {
    // /a fails its first request, so one delivery is attempted twice.
    let failed = Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    let rx = TestReceiver::with(move |req| {
        if req.path == "/a" && f.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    bus.subscribe(NewSubscription::new("a", rx.url("/a")).events(["x", "y"]))
        .unwrap();
    bus.subscribe(NewSubscription::new("b", rx.url("/b")).event("y"))
        .unwrap();
    bus.publish("x", &json!({"n": 1})).unwrap();
    bus.publish_message(Message::new("y", &json!({"n": 2})).traceparent(TP))
        .unwrap();
    bus.publish("x", &json!({"n": 3})).unwrap();
    bus.flush().unwrap();
    wait_until(LONG, "4 delivered", || {
        bus.outbox().stats().unwrap().delivered == 4
    });
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 5, "4 deliveries, one of them twice");
    let mut a = Vec::new();
    for r in &reqs {
        let n = r.json()["n"].as_i64().unwrap();
        let seq: u64 = r.header("x-webhook-sequence").unwrap().parse().unwrap();
        match r.path.as_str() {
            "/a" => a.push((n, seq)),
            _ => assert_eq!((n, seq), (2, 1), "b got only y, as its first"),
        }
        // The trace context of the event that had one, on every attempt.
        let expected = (n == 2).then_some(TP);
        assert_eq!(r.header("traceparent"), expected, "{r:?}");
    }
    a.sort_unstable();
    a.dedup();
    // a counts its own deliveries 1, 2, 3 in publish order (a retry keeps
    // its number).
    assert_eq!(a, [(1, 1), (2, 2), (3, 3)]);
    let seqs: Vec<u64> = bus.outbox().all().map(|d| d.unwrap().sequence).collect();
    assert_eq!(seqs.iter().filter(|s| **s == 1).count(), 2);
    // Numbers go on after a restart, and stop at none for a deleted one.
    bus.shutdown(Duration::from_secs(1)).unwrap();
    drop(bus);
    let bus = builder(dir.path()).open().unwrap();
    bus.publish("x", &json!({"n": 4})).unwrap();
    wait_until(LONG, "5 delivered", || {
        bus.outbox().stats().unwrap().delivered == 5
    });
    let last = rx.requests().pop().unwrap();
    assert_eq!(last.json()["n"], 4);
    assert_eq!(last.header("x-webhook-sequence"), Some("4"));
}
