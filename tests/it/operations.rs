//! Operating the bus (issue 14): endpoint health, auto-disable that pauses
//! instead of dead-lettering, deactivation by hand that pauses, and
//! operational notices kept until acknowledged — against a real receiver
//! and a real sled store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hookbus::{HealthStatus, NewSubscription, NoticeKind, SubscriptionPatch};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, consistent, wait_until};

/// A receiver that answers 500 while `failing` is set, else 204.
fn switchable() -> (TestReceiver, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let rx = TestReceiver::with(move |_| {
        if f.load(Ordering::SeqCst) {
            Reply::status(500)
        } else {
            Reply::status(204)
        }
    });
    (rx, failing)
}

#[test]
fn a_subscription_failing_for_the_window_is_disabled_its_backlog_waits_and_resumes() {
    let (rx, failing) = switchable();
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .auto_disable_after(Some(Duration::from_secs(1)))
        .open()
        .unwrap();
    let sub = bus
        .subscribe(NewSubscription::new("flaky", rx.url("/")).events(["e"]))
        .unwrap();
    // The first event fails all its attempts (1 + 3 retries) and dies.
    bus.publish("e", &json!({"n": 1})).unwrap();
    wait_until(LONG, "first dead", || {
        bus.outbox().stats().unwrap().dead == 1
    });
    let h = bus.subscriptions().health(sub.id).unwrap();
    assert_eq!(h.status, HealthStatus::Failing);
    assert_eq!((h.attempts, h.failures, h.successes), (4, 4, 0));
    assert_eq!(h.consecutive_failures, 4);
    assert_eq!(h.last_failure_reason.as_deref(), Some("HTTP 500"));
    assert!(h.failing_since.is_some() && h.latency_p50_ms.is_some());
    assert!(bus.subscriptions().get(sub.id).unwrap().unwrap().active);

    // More than the window later, the next failure disables it; its
    // delivery is not dead-lettered but waits.
    std::thread::sleep(Duration::from_millis(1100));
    bus.publish("e", &json!({"n": 2})).unwrap();
    wait_until(LONG, "disabled", || {
        !bus.subscriptions().get(sub.id).unwrap().unwrap().active
    });
    let sent = rx.count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), sent, "nothing is sent while it is disabled");
    let stats = consistent(&bus);
    assert_eq!((stats.pending, stats.dead), (1, 1), "paused, not dead");
    let h = bus.subscriptions().health(sub.id).unwrap();
    assert_eq!(h.status, HealthStatus::Disabled);
    assert_eq!(h.backlog, 1);
    let why = h.disabled_reason.unwrap();
    assert!(why.contains("every attempt failed since"), "{why}");

    // The app heard of the dead letter and of the disabling, in order.
    let notices = bus.notices().pending(100).unwrap();
    let kinds: Vec<_> = notices.iter().map(|n| &n.kind).collect();
    assert!(
        matches!(kinds.as_slice(), [
            NoticeKind::DeliveryDeadLettered { subscription: a, .. },
            NoticeKind::SubscriptionDisabled { subscription: b, .. },
        ] if *a == sub.id && *b == sub.id),
        "{kinds:?}"
    );

    // Enabled again (and the receiver fixed): the waiting delivery goes.
    failing.store(false, Ordering::SeqCst);
    bus.subscriptions()
        .update(sub.id, SubscriptionPatch::new().active(true))
        .unwrap();
    wait_until(LONG, "resumed delivery", || {
        bus.outbox().stats().unwrap().delivered == 1
    });
    let delivered = rx.requests().pop().unwrap();
    assert_eq!(delivered.json(), json!({"n": 2}));
    let h = bus.subscriptions().health(sub.id).unwrap();
    assert_eq!(h.status, HealthStatus::Healthy);
    assert_eq!((h.consecutive_failures, h.failing_since), (0, None));
    assert_eq!(h.disabled_reason, None);

    // Acknowledged notices are not handed out again.
    for n in &notices {
        bus.notices().ack(n.id).unwrap();
    }
    assert!(bus.notices().pending(100).unwrap().is_empty());
    consistent(&bus);
}

#[test]
fn deactivating_by_hand_pauses_the_backlog_across_a_reopen() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let sub = {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        let sub = bus
            .subscribe(NewSubscription::new("s", rx.url("/")).events(["e"]))
            .unwrap();
        for n in 0..3 {
            bus.publish("e", &json!({ "n": n })).unwrap();
        }
        bus.subscriptions()
            .update(sub.id, SubscriptionPatch::new().active(false))
            .unwrap();
        let stats = consistent(&bus);
        assert_eq!((stats.pending, stats.dead), (3, 0), "paused, not dead");
        bus.shutdown(Duration::from_secs(1)).unwrap();
        sub
    };
    let bus = builder(dir.path()).open().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), 0, "an inactive subscription's backlog waits");
    let h = bus.subscriptions().health(sub.id).unwrap();
    assert_eq!((h.status, h.backlog), (HealthStatus::Disabled, 3));
    assert_eq!(
        h.disabled_reason.as_deref(),
        Some("deactivated through the API")
    );
    // A hand-made change is no notice.
    assert!(bus.notices().pending(10).unwrap().is_empty());
    bus.subscriptions()
        .update(sub.id, SubscriptionPatch::new().active(true))
        .unwrap();
    rx.wait_for(3, LONG);
    wait_until(LONG, "delivered", || {
        bus.outbox().stats().unwrap().delivered == 3
    });
    consistent(&bus);
}

#[test]
fn health_counts_survive_a_reopen_and_failing_subscriptions_come_first() {
    let ok = TestReceiver::start();
    let (bad, _failing) = switchable();
    let dir = crate::test_dir();
    let (good_id, bad_id) = {
        let bus = builder(dir.path()).open().unwrap();
        let good = bus
            .subscribe(NewSubscription::new("good", ok.url("/")).events(["e"]))
            .unwrap();
        let badsub = bus
            .subscribe(NewSubscription::new("bad", bad.url("/")).events(["e"]))
            .unwrap();
        for n in 0..5 {
            bus.publish("e", &json!({ "n": n })).unwrap();
        }
        wait_until(LONG, "all finished", || {
            let s = bus.outbox().stats().unwrap();
            s.delivered == 5 && s.dead == 5
        });
        bus.shutdown(Duration::from_secs(2)).unwrap();
        (good.id, badsub.id)
    };
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let all = bus.subscriptions().health_all().unwrap();
    let order: Vec<_> = all.iter().map(|h| h.subscription).collect();
    assert_eq!(order, [bad_id, good_id], "failing first");
    let (b, g) = (&all[0], &all[1]);
    assert_eq!(
        (b.status, b.attempts, b.failures),
        (HealthStatus::Failing, 20, 20)
    );
    assert_eq!(b.consecutive_failures, 20);
    assert_eq!(
        (g.status, g.attempts, g.successes),
        (HealthStatus::Healthy, 5, 5)
    );
    assert!(g.last_success_at.is_some() && g.last_failure_at.is_none());
    assert!(g.latency_p50_ms <= g.latency_p99_ms);
    // Five dead letters, five notices, one per delivery.
    let notices = bus.notices().pending(100).unwrap();
    assert_eq!(notices.len(), 5);
    assert!(notices.iter().all(|n| matches!(
        &n.kind,
        NoticeKind::DeliveryDeadLettered { subscription, reason, .. }
            if *subscription == bad_id && reason.contains("500")
    )));
}

#[test]
fn bus_health_reports_readiness_backlog_and_how_long_work_has_been_due() {
    let dir = crate::test_dir();
    // Nothing is sent: what is published stays due.
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let h = bus.health(Duration::from_secs(5));
    assert!(h.ready && h.dispatcher_alive && h.store_writable, "{h:?}");
    assert!(h.problems.is_empty());
    assert_eq!((h.backlog, h.in_flight, h.oldest_due_age), (0, 0, None));

    bus.subscribe(NewSubscription::new("s", "http://127.0.0.1:9/").events(["e"]))
        .unwrap();
    for n in 0..3 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    bus.flush().unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let h = bus.health(Duration::from_secs(5));
    assert!(h.ready, "{h:?}");
    assert_eq!(h.backlog, 3);
    let age = h.oldest_due_age.expect("due work");
    assert!(age >= Duration::from_millis(100), "{age:?}");
    assert_eq!(h.senders_alive, 0, "no senders without delivery");

    // After a shutdown it is not ready, and says why.
    bus.shutdown(Duration::from_secs(1)).unwrap();
    let h = bus.health(Duration::from_secs(1));
    assert!(
        !h.ready && !h.dispatcher_alive && !h.store_writable,
        "{h:?}"
    );
    assert!(
        h.problems
            .iter()
            .any(|p| p.contains("dispatcher thread is not running")),
        "{:?}",
        h.problems
    );
}

#[test]
fn bus_health_counts_the_senders_that_deliver() {
    let (rx, failing) = switchable();
    failing.store(false, Ordering::SeqCst);
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["e"]))
        .unwrap();
    for n in 0..8 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    rx.wait_for(8, LONG);
    wait_until(LONG, "delivered", || {
        bus.outbox().stats().unwrap().delivered == 8
    });
    let h = bus.health(Duration::from_secs(5));
    assert!(h.ready, "{h:?}");
    assert_eq!((h.backlog, h.oldest_due_age), (0, None));
    assert!((1..=4).contains(&h.senders_alive), "{h:?}");
}

#[test]
fn notices_reach_a_handler_at_least_once_and_are_acknowledged_when_handled() {
    let (rx, _failing) = switchable();
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    bus.subscribe(NewSubscription::new("flaky", rx.url("/")).events(["e"]))
        .unwrap();
    // The handler declines the first offer, then takes every notice.
    let (tx, got) = crossbeam_channel::unbounded();
    let offers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let o = offers.clone();
    let listener = bus
        .on_notice(move |n| {
            let first = o.fetch_add(1, Ordering::SeqCst) == 0;
            if !first {
                tx.send(n.clone()).unwrap();
            }
            !first
        })
        .unwrap();
    bus.publish("e", &json!({ "n": 1 })).unwrap();
    let n = got.recv_timeout(LONG).expect("a notice");
    assert!(
        matches!(n.kind, NoticeKind::DeliveryDeadLettered { .. }),
        "{n:?}"
    );
    assert!(
        offers.load(Ordering::SeqCst) >= 2,
        "offered again after a no"
    );
    wait_until(LONG, "acknowledged", || {
        bus.notices().pending(10).unwrap().is_empty()
    });
    listener.stop();

    // After stop, notices wait for the next handler (or a pull).
    bus.publish("e", &json!({ "n": 2 })).unwrap();
    wait_until(LONG, "second dead letter", || {
        bus.notices().pending(10).unwrap().len() == 1
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(got.try_recv().is_err(), "a stopped listener calls nothing");
    assert_eq!(bus.notices().pending(10).unwrap().len(), 1);
    // A listener does not keep the bus open: dropping the bus releases the
    // store although one still runs.
    let _running = bus.on_notice(|_| false).unwrap();
    drop(bus);
    wait_until(LONG, "the store released", || {
        builder(dir.path()).open().is_ok()
    });
}
