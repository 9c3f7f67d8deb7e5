//! Issue 25, defect 5: every public parameter of type `Duration` takes
//! `Duration::ZERO` and `Duration::MAX` without panicking. The call works,
//! or (a builder setting) `open` refuses it with an `Error::InvalidConfig`
//! that names the setting and the value given.

use std::time::{Duration, Instant};

use hookbus::signing;
use hookbus::{
    Builder, DeliveryState, Error, NewSubscription, Signing, SubscriptionPatch, Timestamp,
};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, dead_url, open, wait_until};

const EXTREMES: [Duration; 2] = [Duration::ZERO, Duration::MAX];

/// How long a call with nothing to wait for may take, at most.
const PROMPT: Duration = Duration::from_secs(10);

/// `b` (with `setting` at `d`) is refused at open, with a message that
/// names the setting and the value; else what went wrong, in `wrong`.
fn refused(wrong: &mut Vec<String>, b: Builder, setting: &str, d: Duration) {
    match b.open() {
        Err(Error::InvalidConfig(m)) => {
            if !m.contains(setting) || !m.contains(&format!("{d:?}")) {
                wrong.push(format!("{setting} = {d:?}: vague message: {m}"));
            }
        }
        Err(e) => wrong.push(format!("{setting} = {d:?}: not InvalidConfig: {e:?}")),
        Ok(_) => wrong.push(format!("{setting} = {d:?} was accepted")),
    }
}

/// `b` (given a fresh folder) opens, delivers an event, is ready, and
/// closes promptly (by drop, which waits `shutdown_timeout` at most for
/// nothing in flight).
fn works(b: impl FnOnce(&std::path::Path) -> Builder, what: &str) {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = b(dir.path())
        .open()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["e"]))
        .unwrap();
    bus.publish("e", &json!({ "what": what })).unwrap();
    rx.wait_for(1, LONG);
    wait_until(LONG, "the delivery recorded", || {
        bus.outbox().stats().unwrap().delivered == 1
    });
    let h = bus.health(Duration::from_secs(5));
    assert!(h.ready, "{what}: {:?}", h.problems);
    let t = Instant::now();
    drop(bus);
    assert!(t.elapsed() < PROMPT, "{what}: drop took {:?}", t.elapsed());
}

#[test]
fn health_takes_any_timeout() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let t = Instant::now();
    let h = bus.health(Duration::MAX);
    assert!(h.ready, "{:?}", h.problems);
    // A zero timeout does not wait for the probe: ready if it was
    // answered at once, else late, and the problem says so.
    let h = bus.health(Duration::ZERO);
    assert!(
        h.ready
            || h.problems
                .iter()
                .any(|p| p.contains("did not answer within 0ns")),
        "{:?}",
        h.problems
    );
    assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
    // The bus is none the worse for it.
    bus.publish_durable("e", &json!(1)).unwrap();
    assert!(bus.health(Duration::from_secs(5)).ready);
    bus.shutdown(Duration::from_secs(5)).unwrap();
    for d in EXTREMES {
        let t = Instant::now();
        let h = bus.health(d);
        assert!(!h.ready && !h.dispatcher_alive, "{d:?}: {h:?}");
        assert!(t.elapsed() < PROMPT, "{d:?}: took {:?}", t.elapsed());
    }
}

#[test]
fn shutdown_takes_any_deadline_and_returns_promptly_when_idle() {
    let dir = crate::test_dir();
    for d in EXTREMES {
        let bus = open(dir.path());
        bus.publish_durable("e", &json!(1)).unwrap();
        let t = Instant::now();
        bus.shutdown(d).unwrap();
        assert!(t.elapsed() < PROMPT, "{d:?}: took {:?}", t.elapsed());
        // Again, with the other extreme: the first shutdown's result.
        for again in EXTREMES {
            bus.shutdown(again).unwrap();
        }
        assert!(matches!(bus.publish("e", &json!(2)), Err(Error::Closed)));
    }
}

/// A shutdown with no deadline still ends: a request in flight is bounded
/// by the request timeout. One with a zero deadline leaves it pending.
#[test]
fn shutdown_with_a_request_in_flight_is_bounded_by_the_request_timeout() {
    let rx = TestReceiver::with(|_| Reply::ok().delay(Duration::from_secs(30)));
    for d in EXTREMES {
        let dir = crate::test_dir();
        let bus = builder(dir.path())
            .request_timeout(Duration::from_secs(1))
            .open()
            .unwrap();
        bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["e"]))
            .unwrap();
        let before = rx.count();
        bus.publish_durable("e", &json!(1)).unwrap();
        wait_until(LONG, "the request in flight", || rx.count() > before);
        let t = Instant::now();
        bus.shutdown(d).unwrap();
        assert!(t.elapsed() < PROMPT, "{d:?}: took {:?}", t.elapsed());
        drop(bus);
        let again = builder(dir.path()).deliver(false).open().unwrap();
        let stats = again.outbox().stats().unwrap();
        assert_eq!((stats.pending, stats.delivered), (1, 0), "{d:?}");
    }
}

#[test]
fn builder_durations_out_of_range_are_refused_at_open_naming_the_setting() {
    let dir = crate::test_dir();
    let b = || builder(dir.path());
    let mut wrong = Vec::new();
    let w = &mut wrong;
    for d in EXTREMES {
        refused(w, b().idempotency_window(d), "idempotency_window", d);
        refused(w, b().auto_disable_after(Some(d)), "auto_disable_after", d);
        refused(w, b().keep_delivered_for(Some(d)), "keep_delivered_for", d);
        refused(w, b().keep_dead_for(Some(d)), "keep_dead_for", d);
        refused(w, b().connect_timeout(d), "connect_timeout", d);
        refused(w, b().request_timeout(d), "request_timeout", d);
    }
    let d = Duration::MAX;
    refused(w, b().circuit_breaker(5, d), "circuit_breaker", d);
    let schedule = vec![Duration::from_secs(1), d];
    refused(w, b().retry_schedule(schedule), "retry_schedule", d);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused config creates nothing"
    );
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_durations_out_of_range_are_refused_at_open_naming_the_setting() {
    // Refused by validation, before any connection is made.
    let dir = crate::test_dir();
    let url = "host=127.0.0.1 port=5432 user=postgres dbname=test";
    let mut wrong = Vec::new();
    for d in EXTREMES {
        let b = builder(dir.path()).poll_interval(d);
        refused(&mut wrong, b, "poll_interval", d);
        let b = hookbus::Bus::builder().postgres(url).claim_lease(d);
        refused(&mut wrong, b, "claim_lease", d);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn builder_durations_in_range_work() {
    for d in EXTREMES {
        works(
            |p| builder(p).shutdown_timeout(d),
            &format!("shutdown_timeout {d:?}"),
        );
        works(
            |p| builder(p).lock_timeout(d),
            &format!("lock_timeout {d:?}"),
        );
    }
    works(
        |p| builder(p).circuit_breaker(1, Duration::ZERO),
        "circuit_breaker 0ns",
    );
    works(
        |p| builder(p).retry_schedule(vec![Duration::ZERO; 3]),
        "retry_schedule [0ns; 3]",
    );
}

/// A zero lock timeout tries once: a held store fails at once.
#[test]
fn a_zero_lock_timeout_fails_at_once_on_a_held_store() {
    if crate::sled_only("the store's process lock") {
        return;
    }
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let t = Instant::now();
    let err = builder(dir.path())
        .lock_timeout(Duration::ZERO)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::StoreLocked { .. }), "{err:?}");
    assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
    drop(bus);
}

/// Zero retry delays retry at once and a zero breaker wait only limits a
/// failing subscription to one request at a time: failing deliveries end
/// in the dead letter queue after their attempts, in bounded time.
#[test]
fn zero_retry_delays_and_breaker_wait_end_failing_deliveries() {
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .retry_schedule(vec![Duration::ZERO; 3])
        .circuit_breaker(1, Duration::ZERO)
        .open()
        .unwrap();
    let sub = bus
        .subscribe(NewSubscription::new("dead", dead_url()).events(["e"]))
        .unwrap();
    for i in 0..5 {
        bus.publish("e", &json!(i)).unwrap();
    }
    wait_until(LONG, "5 dead letters", || {
        bus.outbox().stats().unwrap().dead == 5
    });
    for d in bus.outbox().list(DeliveryState::Dead) {
        let d = d.unwrap();
        assert_eq!(d.subscription_id, sub.id);
        assert_eq!(bus.outbox().attempts(d.id).unwrap().len(), 4);
    }
    assert!(bus.health(Duration::from_secs(5)).ready);
    bus.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn rotate_secret_takes_any_keep_window() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let sub = bus
        .subscribe(
            NewSubscription::new("std", rx.url("/"))
                .events(["e"])
                .generate_secret()
                .signing(Signing::StandardWebhooks),
        )
        .unwrap();
    // MAX: the old secret stays valid until the next rotation.
    let new = signing::generate_secret();
    let s = bus
        .subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().rotate_secret(&new, Duration::MAX),
        )
        .unwrap();
    let until = s.previous_secret_until.expect("an old secret kept");
    assert!(until > Timestamp::now().saturating_add(Duration::from_secs(1000 * 365 * 86_400)));
    let _ = format!("{until} {s:?}");
    bus.publish("e", &json!(1)).unwrap();
    let r = rx.wait_for(1, LONG).remove(0);
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 2);
    // ZERO: the old one is not used at all.
    bus.subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().rotate_secret(signing::generate_secret(), Duration::ZERO),
        )
        .unwrap();
    bus.publish("e", &json!(2)).unwrap();
    let r = rx.wait_for(2, LONG).remove(1);
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 1);
    bus.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn verify_takes_any_tolerance() {
    let secret = signing::generate_secret();
    let key = signing::decode_standard_secret(&secret).unwrap();
    let now = 1_800_000_000;
    let ts = 1_000_000_000u64;
    let sig = signing::sign_standard(&key, "msg_1", ts, b"{}");
    let ts_s = ts.to_string();
    let headers = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts_s.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    // MAX: any age passes.
    signing::verify_standard_at(&secret, headers, b"{}", Duration::MAX, now).unwrap();
    signing::verify_standard(&secret, headers, b"{}", Duration::MAX).unwrap();
    // ZERO: only the same second.
    signing::verify_standard_at(&secret, headers, b"{}", Duration::ZERO, ts).unwrap();
    assert_eq!(
        signing::verify_standard_at(&secret, headers, b"{}", Duration::ZERO, ts + 1),
        Err(signing::VerifyError::Stale)
    );
}

#[test]
fn timestamps_add_any_duration() {
    let t = Timestamp::from_millis(5);
    assert_eq!(t.saturating_add(Duration::ZERO), t);
    let far = t.saturating_add(Duration::MAX);
    assert_eq!(far, Timestamp::from_millis(u64::MAX));
    assert_eq!(far.saturating_add(Duration::MAX), far);
    let shown = far.to_string();
    assert_eq!(shown.parse::<Timestamp>().unwrap(), far);
}
