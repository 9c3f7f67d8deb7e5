//! Retention (issue 14): delivered history, dead letters and their events
//! go after their windows, in the background; attempts per delivery are
//! bounded; under a steady load the store holds a bounded number of
//! records — against a real receiver and a real sled store.

use std::time::{Duration, Instant};

use hookbus::{DeliveryOrder, NewSubscription};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, consistent, wait_until};

fn ok_and_failing() -> TestReceiver {
    TestReceiver::failing_under("/bad", Reply::status(500))
}

#[test]
fn delivered_and_dead_deliveries_go_after_their_windows_and_their_events_with_the_last() {
    let rx = ok_and_failing();
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .keep_delivered_for(Some(Duration::from_secs(1)))
        .keep_dead_for(Some(Duration::from_secs(4)))
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("ok", rx.url("/ok")).events(["e"]))
        .unwrap();
    let bad = bus
        .subscribe(NewSubscription::new("bad", rx.url("/bad")).events(["e"]))
        .unwrap();
    let events: Vec<_> = (0..5)
        .map(|n| bus.publish("e", &json!({ "n": n })).unwrap())
        .collect();
    wait_until(LONG, "5 delivered, 5 dead", || {
        let s = bus.outbox().stats().unwrap();
        (s.delivered, s.dead, s.pending) == (5, 5, 0)
    });
    let dead: Vec<_> = bus.outbox().dead().map(|d| d.unwrap()).collect();
    assert!(dead.iter().all(|d| d.subscription_id == bad.id));
    assert_eq!(bus.outbox().attempts(dead[0].id).unwrap().len(), 4);

    // About a second later the delivered ones are gone; the dead ones (4 s)
    // and so every event (each has a dead delivery) are still there.
    wait_until(LONG, "delivered history purged", || {
        bus.outbox().stats().unwrap().delivered == 0
    });
    let s = consistent(&bus);
    assert_eq!(
        (s.delivered, s.dead),
        (0, 5),
        "dead letters are kept longer"
    );
    for id in &events {
        assert!(
            bus.outbox().event(*id).unwrap().is_some(),
            "event {id} kept"
        );
    }

    // Then the dead letters go, with their attempts and the events.
    wait_until(LONG, "dead letters purged", || {
        bus.outbox().stats().unwrap().dead == 0
    });
    consistent(&bus);
    for id in &events {
        assert!(
            bus.outbox().event(*id).unwrap().is_none(),
            "event {id} gone"
        );
    }
    assert!(bus.outbox().attempts(dead[0].id).unwrap().is_empty());
    // The subscriptions themselves stay.
    assert_eq!(bus.subscriptions().list().unwrap().len(), 2);
}

#[test]
fn a_dead_letter_a_fifo_subscription_is_halted_at_is_kept() {
    let rx = ok_and_failing();
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .keep_dead_for(Some(Duration::from_secs(1)))
        .open()
        .unwrap();
    let fifo = bus
        .subscribe(
            NewSubscription::new("fifo", rx.url("/bad-fifo"))
                .events(["e"])
                .order(DeliveryOrder::FIFO_HALT),
        )
        .unwrap();
    bus.subscribe(NewSubscription::new("plain", rx.url("/bad-plain")).events(["e"]))
        .unwrap();
    bus.publish("e", &json!({ "n": 1 })).unwrap();
    bus.publish("e", &json!({ "n": 2 })).unwrap();
    // The FIFO one halts at its first dead letter (the second waits); the
    // plain one's two die.
    wait_until(LONG, "3 dead", || bus.outbox().stats().unwrap().dead == 3);
    let halted_at = bus
        .outbox()
        .dead()
        .map(|d| d.unwrap())
        .find(|d| d.subscription_id == fifo.id);
    let halted_at = halted_at.unwrap().id;
    wait_until(LONG, "the plain subscription's dead letters purged", || {
        bus.outbox().stats().unwrap().dead == 1
    });
    // Well past the window, the halting one is still there.
    std::thread::sleep(Duration::from_millis(1500));
    let left: Vec<_> = bus.outbox().dead().map(|d| d.unwrap().id).collect();
    assert_eq!(left, [halted_at]);
    let s = consistent(&bus);
    assert_eq!((s.dead, s.pending), (1, 1));
}

#[test]
fn attempts_beyond_the_count_kept_are_trimmed_oldest_first() {
    let rx = ok_and_failing();
    let dir = crate::test_dir();
    // 1 + 3 retries = 4 attempts, of which 2 are kept.
    let bus = builder(dir.path()).attempts_kept(2).open().unwrap();
    bus.subscribe(NewSubscription::new("bad", rx.url("/bad")).events(["e"]))
        .unwrap();
    bus.publish("e", &json!({})).unwrap();
    wait_until(LONG, "dead", || bus.outbox().stats().unwrap().dead == 1);
    let d = bus.outbox().dead().next().unwrap().unwrap();
    assert_eq!(d.attempts, 4, "the delivery still counts every attempt");
    let kept: Vec<u32> = bus
        .outbox()
        .attempts(d.id)
        .unwrap()
        .iter()
        .map(|a| a.number)
        .collect();
    assert_eq!(kept, [3, 4]);
    assert!(matches!(
        hookbus::Bus::builder()
            .path(dir.path())
            .attempts_kept(0)
            .build(),
        Err(hookbus::Error::InvalidConfig(_))
    ));
}

/// A bounded soak: a steady stream of events for 4 s with a 1 s window.
/// The number of stored deliveries levels off (what is purged keeps up
/// with what is added) instead of growing with the run.
#[test]
fn under_a_steady_load_the_stored_history_stays_bounded() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .keep_delivered_for(Some(Duration::from_secs(1)))
        .open()
        .unwrap();
    for i in 0..4 {
        bus.subscribe(
            NewSubscription::new(format!("s{i}"), rx.url(&format!("/{i}"))).events(["e"]),
        )
        .unwrap();
    }
    let start = Instant::now();
    let mut published = 0u64;
    let mut peak_late = 0u64;
    let mut peak_early = 0u64;
    // 4 s at about 200 events/s (800 deliveries/s); bounded in count too.
    while start.elapsed() < Duration::from_secs(4) && published < 2_000 {
        for _ in 0..10 {
            bus.publish("e", &json!({ "n": published })).unwrap();
            published += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
        let held = bus.outbox().stats().unwrap().delivered;
        if start.elapsed() < Duration::from_secs(2) {
            peak_early = peak_early.max(held);
        } else {
            peak_late = peak_late.max(held);
        }
    }
    let sent = published * 4;
    eprintln!(
        "published {published} events ({sent} deliveries); held at most {peak_early} in the first 2 s, {peak_late} after"
    );
    wait_until(LONG, "all delivered", || rx.count() as u64 >= sent);
    // Without retention the store would hold every delivery made; with a
    // 1 s window it holds about a second and a half of them.
    assert!(
        peak_late < sent / 2,
        "held {peak_late} of {sent} deliveries at once late in the run"
    );
    assert!(
        peak_late <= peak_early * 2,
        "the history kept growing: {peak_early} in the first 2 s, {peak_late} after"
    );
    wait_until(LONG, "everything purged", || {
        bus.outbox().stats().unwrap().delivered == 0
    });
    let s = consistent(&bus);
    assert_eq!((s.pending, s.delivered, s.dead), (0, 0, 0));
}
