//! Replay (issue 14): one stored event to one or all of its subscriptions
//! (never across tenants), and everything a subscription was sent in a
//! span, as a background job, across a reopen — against a real receiver
//! and a real sled store.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hookbus::{Error, EventId, NewSubscription, Timestamp};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, consistent, wait_until};

/// The `n` of each request's body that went to `path`, in arrival order.
fn numbers_at(rx: &TestReceiver, path: &str) -> Vec<i64> {
    rx.requests()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.json()["n"].as_i64().unwrap())
        .collect()
}

/// A moment strictly between what was done before and what comes after.
fn mark() -> Timestamp {
    std::thread::sleep(Duration::from_millis(15));
    let t = Timestamp::now();
    std::thread::sleep(Duration::from_millis(15));
    t
}

#[test]
fn replay_since_resends_what_a_subscription_was_sent_in_the_span_across_a_reopen() {
    // `/a` fails event 5 while `failing` is set, so the span holds a dead
    // letter as well as delivered ones.
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let rx = TestReceiver::with(move |r| {
        if r.path == "/a" && r.json()["n"] == 5 && f.load(Ordering::SeqCst) {
            Reply::status(500)
        } else {
            Reply::status(204)
        }
    });
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    let a = bus
        .subscribe(NewSubscription::new("a", rx.url("/a")).events(["e"]))
        .unwrap();
    bus.subscribe(NewSubscription::new("b", rx.url("/b")).events(["e"]))
        .unwrap();
    let settle = |delivered: u64, dead: u64| {
        wait_until(LONG, "deliveries finished", || {
            let s = bus.outbox().stats().unwrap();
            s.delivered == delivered && s.dead == dead && s.pending == 0
        })
    };
    for n in 0..3 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    settle(6, 0);
    let from = mark();
    for n in 3..7 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    settle(13, 1);
    let until = mark();
    for n in 7..9 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    settle(17, 1);
    bus.shutdown(Duration::from_secs(2)).unwrap();
    drop(bus);
    failing.store(false, Ordering::SeqCst);
    let before = rx.requests();
    let old_ids: HashSet<String> = before.iter().map(|r| r.delivery_id()).collect();

    let bus = builder(dir.path()).open().unwrap();
    assert_eq!(
        bus.outbox().replay_since(a.id, from, until).unwrap(),
        4,
        "3 delivered and 1 dead in the span"
    );
    let all = rx.wait_for(before.len() + 4, LONG);
    let again = &all[before.len()..];
    let mut ns: Vec<i64> = again
        .iter()
        .map(|r| r.json()["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, [3, 4, 5, 6], "the span, and only it");
    for r in again {
        assert_eq!(r.path, "/a", "only the subscription asked for");
        assert!(!old_ids.contains(&r.delivery_id()), "a new delivery id");
    }
    // The replayed requests carry the original events' ids.
    let event_of =
        |r: &crate::receiver::Request| r.header("x-webhook-event-id").unwrap().to_owned();
    let originals: HashSet<String> = before
        .iter()
        .filter(|r| r.path == "/a" && (3..7).contains(&r.json()["n"].as_i64().unwrap()))
        .map(event_of)
        .collect();
    let replayed: HashSet<String> = again.iter().map(event_of).collect();
    assert_eq!(replayed, originals);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.count(), before.len() + 4, "nothing else is sent");
    let stats = consistent(&bus);
    assert_eq!((stats.delivered, stats.dead, stats.pending), (21, 1, 0));
    assert_eq!(numbers_at(&rx, "/b").len(), 9);

    // Bad spans are refused with a clear error; nothing is made.
    let t = Timestamp::now();
    assert!(matches!(
        bus.outbox().replay_since(a.id, t, t),
        Err(Error::InvalidReplay(_))
    ));
    let long_ago = Timestamp::from_millis(t.as_millis() - 15 * 24 * 3600 * 1000);
    let e = bus.outbox().replay_since(a.id, long_ago, t).unwrap_err();
    assert!(e.to_string().contains("longer than 14 days"), "{e}");
    let gone = hookbus::SubscriptionId::from(uuid::Uuid::now_v7());
    assert!(matches!(
        bus.outbox().replay_since(gone, from, until),
        Err(Error::SubscriptionNotFound(_))
    ));
    assert_eq!(consistent(&bus).delivered, 21);
}

#[test]
fn an_event_is_replayed_to_one_or_all_of_its_subscriptions_never_across_tenants() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    let sub = |name: &str, event: &str, tenant: Option<&str>| {
        let mut n = NewSubscription::new(name, rx.url(&format!("/{name}"))).events([event]);
        if let Some(t) = tenant {
            n = n.tenant(t);
        }
        bus.subscribe(n).unwrap()
    };
    let app = sub("app", "e", None);
    let _all = sub("all", "*", None);
    let other_event = sub("other", "f", None);
    let t1 = sub("t1", "e", Some("t1"));
    let t2 = sub("t2", "e", Some("t2"));

    let app_event = bus.publish("e", &json!({ "n": 1 })).unwrap();
    let t1_event = bus.publish_to("t1", "e", &json!({ "n": 2 })).unwrap();
    rx.wait_for(3, LONG);
    wait_until(LONG, "delivered", || {
        bus.outbox().stats().unwrap().delivered == 3
    });
    assert_eq!(
        bus.outbox()
            .event(t1_event)
            .unwrap()
            .unwrap()
            .tenant
            .as_deref(),
        Some("t1"),
        "an event keeps its tenant"
    );

    // To all: the app-wide subscriptions that take `e`, now.
    assert_eq!(bus.outbox().replay(app_event, None).unwrap().len(), 2);
    // A tenant's event goes to that tenant's subscription only.
    let ids = bus.outbox().replay(t1_event, None).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        bus.outbox().get(ids[0]).unwrap().unwrap().subscription_id,
        t1.id
    );
    // To one.
    assert_eq!(
        bus.outbox().replay(app_event, Some(app.id)).unwrap().len(),
        1
    );
    let got = rx.wait_for(7, LONG);
    let paths: Vec<&str> = got[3..].iter().map(|r| r.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["/all", "/app", "/app", "/t1"], "{paths:?}");

    // Refused: another tenant, another event name, unknown ids.
    for (event, target) in [
        (t1_event, t2.id),
        (app_event, t1.id),
        (app_event, other_event.id),
    ] {
        let e = bus.outbox().replay(event, Some(target)).unwrap_err();
        assert!(matches!(e, Error::InvalidReplay(_)), "{e}");
        assert!(e.to_string().contains("does not take"), "{e}");
    }
    let unknown = EventId::from(uuid::Uuid::now_v7());
    assert!(matches!(
        bus.outbox().replay(unknown, None),
        Err(Error::EventNotFound(_))
    ));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.count(), 7, "refusals send nothing");
    let stats = consistent(&bus);
    assert_eq!((stats.delivered, stats.pending, stats.dead), (7, 0, 0));
}
