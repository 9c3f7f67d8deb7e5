use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use hookbus::{AttemptErrorKind, Bus, DeliveryOrder, DeliveryState, NewSubscription};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, consistent, dead_url, open, wait_until};

fn delivered(bus: &Bus, n: u64) -> impl FnMut() -> bool + '_ {
    move || bus.outbox().stats().unwrap().delivered >= n
}

fn hex_hmac<M: Mac + hmac::digest::KeyInit>(key: &[u8], body: &[u8]) -> String {
    let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

#[test]
fn the_request_has_exactly_the_documented_headers_and_a_correct_signature() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let signed = bus
        .subscribe(
            NewSubscription::new("My Webhook", rx.url("/api/incoming"))
                .events(["hello", "goodbye"])
                .secret("shh"),
        )
        .unwrap();
    let unsigned = bus
        .subscribe(NewSubscription::new("plain", rx.url("/plain")).events(["hello"]))
        .unwrap();
    let event = bus
        .publish("hello", &json!({"text": "I said hello"}))
        .unwrap();
    wait_until(LONG, "2 deliveries", delivered(&bus, 2));

    let reqs = rx.requests();
    // One event: the same event id at both subscriptions, each with its own
    // delivery id.
    for r in &reqs {
        assert_eq!(
            r.header("x-webhook-event-id"),
            Some(event.to_string().as_str())
        );
    }
    assert_ne!(reqs[0].delivery_id(), reqs[1].delivery_id());
    assert_eq!(reqs.len(), 2);
    let r = reqs.iter().find(|r| r.path == "/api/incoming").unwrap();
    let body = br#"{"text":"I said hello"}"#;
    assert_eq!(r.method, "POST");
    assert_eq!(r.body, body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(
        r.header("user-agent"),
        Some(format!("hookbus/{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(r.header("x-webhook-event"), Some("hello"));
    let id = r.delivery_id();
    assert_eq!(id.len(), 32);
    assert!(
        id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{id}"
    );
    let d = bus.outbox().get(id.parse().unwrap()).unwrap().unwrap();
    assert_eq!(d.subscription_id, signed.id);
    assert_eq!(d.state, DeliveryState::Delivered);
    // Recomputed here with the hmac crate, not with hookbus' signer.
    let sha1 = hex_hmac::<Hmac<sha1::Sha1>>(b"shh", body);
    let sha256 = hex_hmac::<Hmac<sha2::Sha256>>(b"shh", body);
    assert_eq!(
        r.header("x-hub-signature"),
        Some(format!("sha1={sha1}").as_str())
    );
    assert_eq!(
        r.header("x-hub-signature-256"),
        Some(format!("sha256={sha256}").as_str())
    );
    assert!(r.signed_with(b"shh", "x-hub-signature"));
    assert!(r.signed_with(b"shh", "x-hub-signature-256"));
    assert!(!r.signed_with(b"nope", "x-hub-signature-256"));

    let p = reqs.iter().find(|r| r.path == "/plain").unwrap();
    assert_eq!(p.header("x-hub-signature"), None);
    assert_eq!(p.header("x-hub-signature-256"), None);
    assert_eq!(
        bus.outbox()
            .get(p.delivery_id().parse().unwrap())
            .unwrap()
            .unwrap()
            .subscription_id,
        unsigned.id
    );
    let attempts = bus.outbox().attempts(d.id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, Some(204));
    assert!(attempts[0].succeeded());
    consistent(&bus);
}

#[test]
fn a_flaky_receiver_is_retried_with_the_same_delivery_id_until_it_succeeds() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let rx = TestReceiver::with(move |_| match c.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::status(500).body(b"boom"),
        1 => Reply::dropped(),
        _ => Reply::status(200),
    });
    let dir = crate::test_dir();
    let bus = open(dir.path());
    bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["hello"]))
        .unwrap();
    bus.publish("hello", &json!({"n": 1})).unwrap();
    wait_until(LONG, "delivered", delivered(&bus, 1));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3);
    let ids: HashSet<_> = reqs.iter().map(|r| r.delivery_id()).collect();
    assert_eq!(ids.len(), 1, "same delivery id on every attempt");
    let id = reqs[0].delivery_id().parse().unwrap();
    let d = bus.outbox().get(id).unwrap().unwrap();
    assert_eq!(
        (d.state, d.attempts, d.last_status),
        (DeliveryState::Delivered, 3, Some(200))
    );
    let a = bus.outbox().attempts(id).unwrap();
    assert_eq!(
        a.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(a[0].status, Some(500));
    assert_eq!(a[0].response_excerpt, b"boom");
    assert_eq!(a[1].status, None);
    assert!(
        a[1].error.is_some(),
        "a dropped connection is an error: {:?}",
        a[1]
    );
    assert_eq!(a[2].status, Some(200));
    assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
    consistent(&bus);
}

#[test]
fn a_spent_schedule_dead_letters_with_every_attempt_recorded_and_retry_revives() {
    let rx = TestReceiver::with(|_| Reply::status(503).body(&[b'x'; 5000]));
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_millis(5), Duration::from_millis(5)])
        .open()
        .unwrap();
    let sub = bus
        .subscribe(NewSubscription::new("s", rx.url("/")).events(["hello"]))
        .unwrap();
    bus.publish("hello", &json!({})).unwrap();
    wait_until(LONG, "dead", || bus.outbox().stats().unwrap().dead == 1);
    assert_eq!(rx.count(), 3, "1 + schedule.len() attempts");
    let dead: Vec<_> = bus.outbox().dead().collect::<Result<_, _>>().unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (d.attempts, d.last_status, d.next_attempt_at),
        (3, Some(503), None)
    );
    assert!(d.finished_at.is_some());
    assert!(
        d.last_error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{:?}",
        d.last_error
    );
    let attempts = bus.outbox().attempts(d.id).unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| a.status == Some(503) && a.response_excerpt.len() == 1024)
    );
    assert_eq!(bus.outbox().pending().count(), 0);

    // Retry by hand once the receiver is fixed.
    rx.respond(|_| Reply::ok());
    let err = bus
        .outbox()
        .retry(hookbus::DeliveryId::from(uuid_nil()))
        .unwrap_err();
    assert!(matches!(err, hookbus::Error::DeliveryNotFound(_)));
    let revived = bus.outbox().retry(d.id).unwrap();
    assert_eq!(revived.state, DeliveryState::Pending);
    wait_until(LONG, "redelivered", delivered(&bus, 1));
    assert!(matches!(
        bus.outbox().retry(d.id),
        Err(hookbus::Error::NotDead { .. })
    ));
    let after = bus.outbox().get(d.id).unwrap().unwrap();
    assert_eq!((after.state, after.attempts), (DeliveryState::Delivered, 4));
    assert_eq!(
        rx.requests().last().unwrap().delivery_id(),
        d.id.to_string()
    );

    // retry_all_dead, per subscription.
    rx.respond(|_| Reply::status(500));
    bus.publish("hello", &json!({"a": 1})).unwrap();
    bus.publish("hello", &json!({"a": 2})).unwrap();
    wait_until(LONG, "2 dead", || bus.outbox().stats().unwrap().dead == 2);
    rx.respond(|_| Reply::ok());
    assert_eq!(
        bus.outbox()
            .retry_all_dead(Some(hookbus::SubscriptionId::from(uuid_nil())))
            .unwrap(),
        0
    );
    assert_eq!(bus.outbox().retry_all_dead(Some(sub.id)).unwrap(), 2);
    wait_until(LONG, "all delivered", delivered(&bus, 3));
    let stats = consistent(&bus);
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 3, 0));
}

/// One failed attempt that both disables a subscription (failing for
/// longer than `auto_disable_after`) and dead-letters its delivery (the
/// schedule is spent) on a FIFO subscription that halts at dead letters:
/// two changes of the subscription in one round. The halt is made on the
/// disabled record, so both stand.
#[test]
fn a_failure_that_disables_and_halts_a_fifo_subscription_keeps_both() {
    let rx = TestReceiver::with(|_| Reply::status(500));
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .auto_disable_after(Some(Duration::from_secs(1)))
        // The last attempt fails over a second after the first: retry
        // delays get ±20 % jitter, so 1.5 s is at least 1.2 s.
        .retry_schedule(vec![
            Duration::from_millis(10),
            Duration::from_millis(1_500),
        ])
        .open()
        .unwrap();
    let sub = bus
        .subscribe(
            NewSubscription::new("flaky", rx.url("/"))
                .events(["hello"])
                .order(DeliveryOrder::FIFO_HALT),
        )
        .unwrap();
    bus.publish_durable("hello", &json!({})).unwrap();
    wait_until(LONG, "dead", || bus.outbox().stats().unwrap().dead == 1);
    let dead = bus.outbox().dead().next().unwrap().unwrap();
    wait_until(LONG, "halted", || {
        bus.subscriptions().get(sub.id).unwrap().unwrap().halted_at == Some(dead.id)
    });
    let now = bus.subscriptions().get(sub.id).unwrap().unwrap();
    assert!(!now.active, "the failure disabled it: {now:?}");
    assert_eq!(rx.count(), 3);
}

fn uuid_nil() -> uuid::Uuid {
    uuid::Uuid::nil()
}

#[test]
fn gone_deactivates_the_subscription_and_dead_letters_its_pending_deliveries() {
    let rx = TestReceiver::with(|_| Reply::status(410).delay(Duration::from_millis(50)));
    let other = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = builder(dir.path()).senders(1).open().unwrap();
    let gone = bus
        .subscribe(NewSubscription::new("gone", rx.url("/")).events(["hello"]))
        .unwrap();
    let fine = bus
        .subscribe(NewSubscription::new("fine", other.url("/")).events(["hello"]))
        .unwrap();
    for i in 0..5 {
        bus.publish("hello", &json!({ "i": i })).unwrap();
    }
    wait_until(LONG, "deactivated", || {
        !bus.subscriptions().get(gone.id).unwrap().unwrap().active
    });
    wait_until(LONG, "others delivered", delivered(&bus, 5));
    wait_until(LONG, "gone ones dead", || {
        bus.outbox().stats().unwrap().dead == 5
    });
    assert_eq!(rx.count(), 1, "one 410 is enough");
    let dead: Vec<_> = bus.outbox().dead().collect::<Result<_, _>>().unwrap();
    assert!(dead.iter().all(|d| d.subscription_id == gone.id));
    assert!(
        dead.iter()
            .all(|d| d.last_error.as_deref().unwrap().contains("410"))
    );
    assert_eq!(other.count(), 5);
    assert!(bus.subscriptions().get(fine.id).unwrap().unwrap().active);
    bus.publish_durable("hello", &json!({"after": true}))
        .unwrap();
    let stats = bus.outbox().stats().unwrap();
    assert_eq!(
        stats.pending + stats.delivered + stats.dead,
        11,
        "the inactive subscription gets nothing new"
    );
    wait_until(LONG, "the last one delivered", delivered(&bus, 6));
    consistent(&bus);
}

#[test]
fn retry_after_is_honoured() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let rx = TestReceiver::with(move |_| match c.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::status(503).header("Retry-After", "1"),
        _ => Reply::ok(),
    });
    let dir = crate::test_dir();
    let bus = open(dir.path()); // schedule: 10 ms
    bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["hello"]))
        .unwrap();
    bus.publish("hello", &json!({})).unwrap();
    wait_until(LONG, "delivered", delivered(&bus, 1));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "the retry came after {gap:?}, before Retry-After: 1"
    );
}

#[test]
fn redirects_are_not_followed() {
    let target = TestReceiver::start();
    let loc = target.url("/stolen");
    let rx = TestReceiver::with(move |_| Reply::status(302).header("Location", &loc));
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_millis(5)])
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["hello"]))
        .unwrap();
    bus.publish("hello", &json!({})).unwrap();
    wait_until(LONG, "dead", || bus.outbox().stats().unwrap().dead == 1);
    assert_eq!(target.count(), 0, "the redirect target got nothing");
    assert_eq!(rx.count(), 2);
    let d = bus.outbox().dead().next().unwrap().unwrap();
    assert!(
        bus.outbox()
            .attempts(d.id)
            .unwrap()
            .iter()
            .all(|a| a.status == Some(302))
    );
}

#[test]
fn a_hanging_receiver_does_not_stall_the_others() {
    let slow = TestReceiver::with(|_| Reply::ok().delay(Duration::from_secs(20)));
    let fast = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .request_timeout(Duration::from_millis(1500))
        .retry_schedule(vec![Duration::from_millis(10); 10])
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("slow", slow.url("/")).events(["hello"]))
        .unwrap();
    let fast_sub = bus
        .subscribe(NewSubscription::new("fast", fast.url("/")).events(["hello"]))
        .unwrap();
    for i in 0..40 {
        bus.publish("hello", &json!({ "i": i })).unwrap();
    }
    // While the slow one is stuck (it never answers within the timeout),
    // every fast delivery completes.
    wait_until(LONG, "40 fast deliveries", delivered(&bus, 40));
    assert_eq!(fast.count(), 40);
    let fast_done = bus
        .outbox()
        .delivered()
        .filter(|d| d.as_ref().unwrap().subscription_id == fast_sub.id)
        .count();
    assert_eq!(fast_done, 40);
    assert_eq!(
        bus.outbox().stats().unwrap().delivered,
        40,
        "the slow receiver has answered nothing"
    );
    assert_eq!(
        bus.outbox().stats().unwrap().pending,
        40,
        "the slow ones wait"
    );
    bus.shutdown(Duration::from_millis(100)).unwrap();
}

#[test]
fn shutdown_with_requests_in_flight_loses_nothing() {
    let rx = TestReceiver::with(|_| Reply::ok().delay(Duration::from_secs(3)));
    let dir = crate::test_dir();
    let first_ids: HashSet<String> = {
        let bus = open(dir.path());
        bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["hello"]))
            .unwrap();
        for i in 0..6 {
            bus.publish("hello", &json!({ "i": i })).unwrap();
        }
        bus.flush().unwrap();
        let seen = rx.wait_for(3, LONG);
        bus.shutdown(Duration::from_millis(50)).unwrap();
        seen.iter().map(|r| r.delivery_id()).collect()
    };
    rx.respond(|_| Reply::ok());
    let bus = open(dir.path());
    wait_until(LONG, "all 6 delivered", delivered(&bus, 6));
    let ids: HashSet<String> = rx.requests().iter().map(|r| r.delivery_id()).collect();
    assert_eq!(ids.len(), 6);
    assert!(
        first_ids.is_subset(&ids),
        "in-flight deliveries are resent with the same id"
    );
    let bodies: HashSet<i64> = rx
        .requests()
        .iter()
        .map(|r| r.json()["i"].as_i64().unwrap())
        .collect();
    assert_eq!(bodies, (0..6).collect());
    consistent(&bus);
}

#[test]
fn internal_targets_are_refused_at_delivery_time_without_a_request() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    {
        let bus = open(dir.path()); // allows loopback, so these subscribe
        for url in [
            rx.url("/literal"),
            format!("http://localhost:{}/name", rx.addr().port()),
        ] {
            bus.subscribe(NewSubscription::new("s", url).events(["hello"]))
                .unwrap();
        }
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    let bus = builder(dir.path())
        .allow_private_targets(false)
        .open()
        .unwrap();
    bus.publish("hello", &json!({})).unwrap();
    wait_until(LONG, "both dead", || {
        bus.outbox().stats().unwrap().dead == 2
    });
    assert_eq!(rx.count(), 0, "the receiver saw no request");
    for d in bus.outbox().dead() {
        let d = d.unwrap();
        let a = bus.outbox().attempts(d.id).unwrap();
        assert_eq!(a.len(), 1, "refused targets are not retried");
        let e = a[0].error.as_ref().unwrap();
        assert_eq!(e.kind, AttemptErrorKind::Blocked, "{e:?}");
        assert!(e.message.contains("non-public"), "{e}");
    }
}

/// `Outbox::get_with_attempts` never pairs a delivery with attempts from
/// another moment: read over and over from two threads while outcomes are
/// being recorded (200 deliveries, the receiver answers after 5 ms, every
/// third request with 500 first), every read has as many attempts as the
/// delivery counts, and a delivery with a successful attempt is delivered.
#[test]
fn a_delivery_read_with_its_attempts_is_one_moment() {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let rx = TestReceiver::with(move |_| {
        if count.fetch_add(1, Ordering::SeqCst).is_multiple_of(3) {
            Reply::status(500).delay(Duration::from_millis(5))
        } else {
            Reply::ok().delay(Duration::from_millis(5))
        }
    });
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_millis(20)])
        .open()
        .unwrap();
    let mut subs = Vec::new();
    for i in 0..4 {
        subs.push(
            bus.subscribe(
                NewSubscription::new(format!("s{i}"), rx.url(&format!("/moment/{i}")))
                    .events(["hello"]),
            )
            .unwrap(),
        );
    }
    for i in 0..50 {
        bus.publish("hello", &json!({ "i": i })).unwrap();
    }
    bus.flush().unwrap();
    let ids: Vec<_> = subs
        .iter()
        .flat_map(|s| bus.outbox().for_subscription(s.id, false))
        .map(|d| d.unwrap().id)
        .collect();
    assert_eq!(ids.len(), 200);
    let end = std::time::Instant::now() + LONG;
    let reads = AtomicUsize::new(0);
    let read_all = || {
        let mut settled = 0;
        while settled < ids.len() && std::time::Instant::now() < end {
            settled = 0;
            for id in &ids {
                let (d, attempts) = bus.outbox().get_with_attempts(*id).unwrap().unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
                assert_eq!(
                    d.attempts as usize,
                    attempts.len(),
                    "{d:?} beside {attempts:?}"
                );
                if attempts.iter().any(|a| a.succeeded()) {
                    assert_eq!(
                        d.state,
                        DeliveryState::Delivered,
                        "{d:?} beside {attempts:?}"
                    );
                }
                if d.state != DeliveryState::Pending {
                    settled += 1;
                }
            }
        }
        settled
    };
    let settled = std::thread::scope(|s| {
        let other = s.spawn(read_all);
        let mine = read_all();
        mine.min(other.join().unwrap())
    });
    assert_eq!(settled, ids.len(), "every delivery settled within {LONG:?}");
    assert!(
        reads.into_inner() > 2 * ids.len(),
        "read while outcomes were recorded"
    );
    let unknown: hookbus::DeliveryId = "01900000-0000-7000-8000-000000000000".parse().unwrap();
    assert_eq!(bus.outbox().get_with_attempts(unknown).unwrap(), None);
    consistent(&bus);
}

/// A receiver named by host name (`localhost`, from the system resolver)
/// gets every delivery: the task senders look the name up once and keep
/// the answer for the requests that follow.
#[test]
fn a_receiver_named_by_host_name_gets_every_delivery() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path()); // allows loopback
    bus.subscribe(
        NewSubscription::new(
            "named",
            format!("http://localhost:{}/named", rx.addr().port()),
        )
        .events(["hello"]),
    )
    .unwrap();
    for i in 0..20 {
        bus.publish("hello", &json!({ "i": i })).unwrap();
    }
    wait_until(LONG, "20 delivered", || {
        bus.outbox().stats().unwrap().delivered == 20
    });
    assert_eq!(rx.count(), 20);
    consistent(&bus);
}

/// Subscribes 12 subscriptions (event `old`) to paths of `hang` and gives
/// them a backlog of `events` events.
fn a_dozen_hanging(bus: &Bus, hang: &TestReceiver, events: usize) {
    for n in 0..12 {
        bus.subscribe(
            NewSubscription::new(format!("hang{n}"), hang.url(&format!("/{n}"))).events(["old"]),
        )
        .unwrap();
    }
    for i in 0..events {
        bus.publish("old", &json!({ "i": i })).unwrap();
    }
}

/// Issue 11, isolation: a dozen subscriptions whose receiver hangs, with an
/// older backlog than the healthy one's and more of them than request
/// slots, cannot starve the healthy one (round-robin, and failing ones
/// together hold at most a quarter of the slots), and the hanging ones
/// never hold every slot.
#[test]
fn a_dozen_hanging_subscriptions_do_not_starve_a_healthy_one() {
    let hang = TestReceiver::with(|_| Reply::ok().delay(Duration::from_secs(30)));
    let healthy = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .senders(8)
        .request_timeout(Duration::from_secs(3))
        .retry_schedule(vec![Duration::from_millis(10); 20])
        .open()
        .unwrap();
    a_dozen_hanging(&bus, &hang, 20);
    bus.flush().unwrap();
    // The hanging backlog is older; now the healthy subscription's events.
    bus.subscribe(NewSubscription::new("healthy", healthy.url("/")).events(["new"]))
        .unwrap();
    for i in 0..50 {
        bus.publish("new", &json!({ "i": i })).unwrap();
    }
    let got = healthy.wait_for(50, Duration::from_secs(20));
    assert_eq!(got.len(), 50);
    // Served oldest-first, the 240 older hanging deliveries (8 at a time,
    // 3 s each) would have held every slot for about 90 s.
    assert!(
        hang.count() >= 1,
        "the hanging subscriptions were tried too"
    );
    bus.shutdown(Duration::from_millis(100)).unwrap();
}

/// Issue 11, isolation with the default pool (256 request slots): before
/// any of them answers, a dozen receivers that hold every request take 4
/// slots each (slow start), not a fair share of the pool each (about 20,
/// so 240 of 256, held until the request timeout).
#[test]
fn receivers_that_never_answer_hold_a_few_requests_each_whatever_the_pool() {
    let hang = TestReceiver::with(|_| Reply::ok().delay(Duration::from_secs(60)));
    let healthy = TestReceiver::start();
    let dir = crate::test_dir();
    let b = builder(dir.path())
        .senders(256)
        .request_timeout(Duration::from_secs(60));
    // A claim outlasts the longest request.
    #[cfg(feature = "postgres")]
    let b = if crate::on_postgres() {
        b.claim_lease(Duration::from_secs(70))
    } else {
        b
    };
    let bus = b.open().unwrap();
    a_dozen_hanging(&bus, &hang, 30);
    bus.subscribe(NewSubscription::new("healthy", healthy.url("/")).events(["new"]))
        .unwrap();
    for i in 0..100 {
        bus.publish("new", &json!({ "i": i })).unwrap();
    }
    assert_eq!(healthy.wait_for(100, LONG).len(), 100);
    wait_until(LONG, "every hanging subscription tried", || {
        hang.count() >= 12
    });
    // Requests are recorded as they arrive, and none of these is answered
    // within the test: the count is what they hold at once.
    let held = hang.count();
    assert!(
        held <= 12 * 4,
        "receivers that never answer hold {held} requests"
    );
    bus.shutdown(Duration::from_millis(100)).unwrap();
}

/// Issue 11: after a run of connection failures a subscription's circuit
/// breaker opens: its backlog waits for the breaker's time, then one probe
/// goes out, and a failed probe doubles the wait. (An answer closing it:
/// `an_answer_closes_the_circuit_breaker`.)
#[test]
fn the_circuit_breaker_pauses_a_subscription_that_cannot_be_reached() {
    let dir = crate::test_dir();
    let url = dead_url();
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_millis(10); 4])
        .circuit_breaker(3, Duration::from_millis(600))
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("down", url).events(["e"]))
        .unwrap();
    bus.publish_durable("e", &json!({})).unwrap();
    wait_until(LONG, "dead after 5 attempts", || {
        bus.outbox().stats().unwrap().dead == 1
    });
    let d = bus.outbox().dead().next().unwrap().unwrap();
    let a = bus.outbox().attempts(d.id).unwrap();
    assert_eq!(a.len(), 5);
    let gap = |i: usize| a[i].at.as_millis() - a[i - 1].at.as_millis();
    // Attempts 1–3 follow the 10 ms schedule; the third failure opens the
    // breaker, so the fourth waits ~600 ms; the failed probe doubles it.
    assert!(
        gap(3) >= 550,
        "breaker wait after 3 failures: {} ms",
        gap(3)
    );
    assert!(
        gap(4) >= 1100,
        "doubled after a failed probe: {} ms",
        gap(4)
    );
    consistent(&bus);
}

/// Issue 11: an answer closes the circuit breaker again — afterwards the
/// subscription gets several requests at once, not one probe at a time.
#[test]
fn an_answer_closes_the_circuit_breaker() {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    let rx = TestReceiver::with(move |_| {
        if s.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
            Reply::dropped()
        } else {
            Reply::ok().delay(Duration::from_millis(300))
        }
    });
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::from_millis(10); 10])
        .circuit_breaker(3, Duration::from_millis(200))
        .open()
        .unwrap();
    bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["e"]))
        .unwrap();
    bus.publish("e", &json!({"first": true})).unwrap();
    wait_until(LONG, "the probe delivered", delivered(&bus, 1));
    let d = bus.outbox().delivered().next().unwrap().unwrap();
    let a = bus.outbox().attempts(d.id).unwrap();
    assert_eq!(
        a.len(),
        4,
        "three dropped connections, then the probe: {a:?}"
    );
    assert!(a[..3].iter().all(|a| a.status.is_none()), "{a:?}");
    // Closed again: the next ones overlap at the receiver (each is held
    // 300 ms; one probe at a time would space them ≥ 300 ms apart).
    for i in 0..6 {
        bus.publish("e", &json!({ "i": i })).unwrap();
    }
    let reqs = rx.wait_for(10, LONG);
    let mut later: Vec<_> = reqs[4..].iter().map(|r| r.at).collect();
    later.sort();
    let closest = later
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .min()
        .unwrap();
    assert!(
        closest < Duration::from_millis(150),
        "requests after the answer still came one at a time ({closest:?} apart)"
    );
    wait_until(LONG, "all delivered", delivered(&bus, 7));
    consistent(&bus);
}

/// Each attempt goes out once, and a retry no sooner than its schedule
/// says. A round of outcomes alone hands out the next jobs before it
/// stores those outcomes, while the store still shows the deliveries they
/// finish or reschedule as due: those must not be sent (or dropped from
/// the due index) then. Every fifth delivery fails its first attempt (a
/// retry 100 ms later), to a parallel subscription and a FIFO one, with 1
/// and with 4 senders: it arrives twice, 100 ms apart (±20 % jitter), every
/// other delivery once, the FIFO one's in publish order, and the counters
/// match the records.
#[test]
fn no_attempt_goes_out_twice_or_early_while_its_outcome_is_stored() {
    const N: i64 = 100;
    for senders in [1, 4] {
        let seen = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let s = seen.clone();
        let rx = TestReceiver::with(move |req| {
            if req.json()["n"].as_i64().unwrap() % 5 == 0
                && s.lock().unwrap().insert(req.delivery_id())
            {
                Reply::status(500)
            } else {
                Reply::ok()
            }
        });
        let dir = crate::test_dir();
        let bus = builder(dir.path())
            .senders(senders)
            .retry_schedule(vec![Duration::from_millis(100); 3])
            .open()
            .unwrap();
        bus.subscribe(NewSubscription::new("parallel", rx.url("/p")).event("e"))
            .unwrap();
        bus.subscribe(
            NewSubscription::new("fifo", rx.url("/f"))
                .event("e")
                .order(DeliveryOrder::FIFO),
        )
        .unwrap();
        for n in 0..N {
            bus.publish("e", &json!({ "n": n })).unwrap();
        }
        bus.flush().unwrap();
        wait_until(
            LONG,
            "every delivery delivered",
            delivered(&bus, 2 * N as u64),
        );
        let stats = consistent(&bus);
        assert_eq!((stats.pending, stats.dead), (0, 0));
        bus.shutdown(Duration::from_secs(5)).unwrap();
        let reqs = rx.requests();
        let mut sent: std::collections::HashMap<String, Vec<&crate::receiver::Request>> =
            Default::default();
        for r in &reqs {
            sent.entry(r.delivery_id()).or_default().push(r);
        }
        assert_eq!(sent.len(), 2 * N as usize, "{senders} sender(s)");
        for (id, tries) in &sent {
            let n = tries[0].json()["n"].as_i64().unwrap();
            let expected = if n % 5 == 0 { 2 } else { 1 };
            assert_eq!(
                tries.len(),
                expected,
                "{senders} sender(s), delivery {id} (n = {n})"
            );
            if let [first, second] = &tries[..] {
                let gap = second.at - first.at;
                assert!(
                    gap >= Duration::from_millis(70),
                    "{senders} sender(s), delivery {id}: retried after {gap:?}"
                );
            }
        }
        let fifo: Vec<i64> = reqs
            .iter()
            .filter(|r| r.path.starts_with("/f"))
            .map(|r| r.json()["n"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (0..N)
            .flat_map(|n| if n % 5 == 0 { vec![n, n] } else { vec![n] })
            .collect();
        assert_eq!(fifo, expected, "{senders} sender(s)");
    }
}
