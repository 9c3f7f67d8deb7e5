//! Format compatibility: stores written by earlier format versions (the
//! fixtures `tests/fixtures/store-v1` to `store-v5`, made by
//! `examples/make_fixture.rs`, whose docs list what each holds) open, read
//! back every field and deliver. A format change that breaks old stores
//! fails here.
//!
//! * v1: records of format 1 read with the format-2 defaults (no tenant, no
//!   headers, no rate limit, unordered); the store's marker is upgraded to
//!   the newest format on open.
//! * v2: a tenant's subscription with custom headers, a rate limit and FIFO
//!   order.
//! * v3: sequence numbers, a trace context, an idempotency key.
//! * v4: attempted deliveries, every attempt under an attempt key; opened
//!   by format 5, they keep their attempts and counts and purge cleanly.
//! * v5: the newest attempt in the delivery record, counts of 1 implicit.
//! * v6: subscriptions indexed by tenant and owner (opening a v5 store
//!   builds the index).

use std::path::Path;
use std::time::Duration;

use hookbus::signing::DEFAULT_TOLERANCE;
use hookbus::{DeliveryOrder, DeliveryState, RateLimit, Subscription, SubscriptionPatch};
use serde_json::json;

use crate::receiver::{Reply, TestReceiver};
use crate::store_faults::raw_tree;
use crate::{LONG, builder, consistent, wait_until};

/// The store format marker (`m format`) of a closed store.
fn format_marker(store: &Path) -> Vec<u8> {
    let (_db, tree) = raw_tree(store);
    tree.get(b"mformat").unwrap().unwrap().to_vec()
}

/// What a subscription of record format 1 reads as.
fn assert_v1_defaults(s: &Subscription) {
    assert_eq!(s.tenant, None, "{}", s.name);
    assert!(s.headers.is_empty(), "{}", s.name);
    assert_eq!(s.rate_limit, None, "{}", s.name);
    assert_eq!(s.order, DeliveryOrder::Unordered, "{}", s.name);
    assert_eq!(s.halted_at, None, "{}", s.name);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_version_1_store_opens_and_delivers() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture, &store);
    assert_eq!(format_marker(&store), [1], "the fixture is a v1 store");

    let rx = TestReceiver::start();
    {
        let bus = builder(&store).deliver(false).open().unwrap();
        let subs = bus.subscriptions().list().unwrap();
        let names: Vec<_> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Hub", "Standard"]);
        assert_eq!(subs[0].events, ["hello", "goodbye"]);
        assert_eq!(subs[0].owner.as_deref(), Some("alice"));
        assert_eq!(subs[1].signing, hookbus::Signing::StandardWebhooks);
        subs.iter().for_each(assert_v1_defaults);
        let stats = bus.outbox().stats().unwrap();
        assert_eq!((stats.pending, stats.delivered, stats.dead), (5, 0, 1));
        let dead = bus.outbox().dead().next().unwrap().unwrap();
        assert_eq!(dead.last_error.as_deref(), Some("subscription was deleted"));
        // Point them at this test's receiver (the fixture names port 9).
        for s in &subs {
            let path = if s.signing == hookbus::Signing::StandardWebhooks {
                "/std"
            } else {
                "/hub"
            };
            bus.subscriptions()
                .update(s.id, SubscriptionPatch::new().url(rx.url(path)))
                .unwrap();
        }
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    assert_eq!(format_marker(&store), [6], "the marker is upgraded on open");
    let bus = builder(&store).open().unwrap();
    wait_until(LONG, "5 deliveries", || {
        bus.outbox().stats().unwrap().delivered == 5
    });
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 5);
    let mut seen = Vec::new();
    for r in &reqs {
        let body = r.json();
        seen.push((r.path.clone(), body["n"].as_i64().unwrap()));
        if r.path == "/hub" {
            assert!(r.signed_with(b"fixture-secret", "x-hub-signature-256"));
        } else {
            hookbus::signing::verify_standard(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                r.header_pairs(),
                &r.body,
                DEFAULT_TOLERANCE,
            )
            .unwrap();
        }
        if body["n"] == 1 {
            assert_eq!(body, json!({"text": "I said hello", "n": 1}));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/hub".into(), 1),
            ("/hub".into(), 2),
            ("/std".into(), 1),
            ("/std".into(), 2),
            ("/std".into(), 3)
        ]
    );
    assert!(
        bus.outbox()
            .delivered()
            .all(|d| d.unwrap().state == DeliveryState::Delivered)
    );
    // Version 1 stores have no event reference counts: purging keeps their
    // events rather than guess.
    let events: Vec<_> = bus
        .outbox()
        .delivered()
        .map(|d| d.unwrap().event_id)
        .collect();
    let far = hookbus::Timestamp::now().saturating_add(Duration::from_secs(60));
    assert_eq!(bus.outbox().purge_delivered_before(far).unwrap(), 5);
    assert!(
        events
            .iter()
            .all(|e| bus.outbox().event(*e).unwrap().is_some())
    );
}

/// The v2 fixture's secrets and header value (see `examples/make_fixture.rs`).
const TENANT_SECRET: &[u8] = b"fixture-tenant-secret";
const TENANT_AUTH: &str = "Bearer fixture-token";

#[test]
fn a_version_1_store_reopens_after_its_upgrade() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture, &store);
    // Open and close without changing anything, twice: the records stay
    // format 1 on disk, the marker says 3, and both read the same.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let bus = builder(&store).deliver(false).open().unwrap();
        let subs = bus.subscriptions().list().unwrap();
        subs.iter().for_each(assert_v1_defaults);
        let stats = consistent(&bus);
        assert_eq!((stats.pending, stats.delivered, stats.dead), (5, 0, 1));
        seen.push(subs);
        bus.shutdown(Duration::from_secs(1)).unwrap();
        drop(bus);
        assert_eq!(format_marker(&store), [6]);
    }
    assert_eq!(seen[0], seen[1]);
    // A v1 record rewritten as v2 (by an update) reads back with its new
    // fields.
    let hub = seen[0][0].id;
    {
        let bus = builder(&store).deliver(false).open().unwrap();
        bus.subscriptions()
            .update(
                hub,
                SubscriptionPatch::new()
                    .headers([("X-Upgraded", "yes")])
                    .rate_limit(Some(RateLimit::per_second(3))),
            )
            .unwrap();
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    let bus = builder(&store).deliver(false).open().unwrap();
    let s = bus.subscriptions().get(hub).unwrap().unwrap();
    assert_eq!(s.headers.len(), 1);
    assert_eq!(
        (s.headers[0].0.as_str(), s.headers[0].1.expose()),
        ("X-Upgraded", "yes")
    );
    assert_eq!(s.rate_limit, Some(RateLimit::per_second(3)));
    assert_eq!((s.tenant, s.order), (None, DeliveryOrder::Unordered));
    assert_eq!(s.owner.as_deref(), Some("alice"));
    assert_eq!(s.secret.as_ref().unwrap().expose(), "fixture-secret");
}

#[test]
fn a_version_2_store_opens_and_delivers() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture, &store);
    assert_eq!(format_marker(&store), [2]);

    let check = |subs: &[Subscription], urls_moved: bool| {
        let names: Vec<_> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Hub", "Standard", "Tenant"]);
        let (hub, std, tenant) = (&subs[0], &subs[1], &subs[2]);
        assert_eq!(hub.events, ["hello", "goodbye"]);
        assert_eq!(hub.owner.as_deref(), Some("alice"));
        assert_eq!(hub.signing, hookbus::Signing::Hub);
        assert_eq!(hub.secret.as_ref().unwrap().expose(), "fixture-secret");
        assert_v1_defaults(hub);
        assert_eq!(std.events, ["*"]);
        assert_eq!(std.owner, None);
        assert_eq!(std.signing, hookbus::Signing::StandardWebhooks);
        assert_eq!(
            std.secret.as_ref().unwrap().expose(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
        assert_v1_defaults(std);

        assert_eq!(tenant.events, ["hello", "invoice.paid"]);
        assert_eq!(tenant.owner.as_deref(), Some("bob"));
        assert_eq!(tenant.tenant.as_deref(), Some("acme"));
        assert_eq!(tenant.signing, hookbus::Signing::Hub);
        assert_eq!(
            tenant.secret.as_ref().unwrap().expose().as_bytes(),
            TENANT_SECRET
        );
        assert_eq!(tenant.headers.len(), 1);
        assert_eq!(tenant.headers[0].0, "Authorization");
        assert_eq!(tenant.headers[0].1.expose(), TENANT_AUTH);
        assert_eq!(tenant.rate_limit, Some(RateLimit::per_second(5).burst(2)));
        assert_eq!(
            tenant.rate_limit.map(|r| (r.per_second, r.burst)),
            Some((5, 2))
        );
        assert_eq!(tenant.order, DeliveryOrder::FIFO);
        assert_eq!(tenant.halted_at, None);
        for s in subs {
            assert!(s.active, "{}", s.name);
            assert_eq!(s.previous_secret_until, None);
            assert!(s.created_at <= s.modified_at);
            assert_eq!(s.url.starts_with("http://127.0.0.1:9/"), !urls_moved);
        }
    };

    let rx = TestReceiver::start();
    let tenant_id;
    {
        let bus = builder(&store).deliver(false).open().unwrap();
        let subs = bus.subscriptions().list().unwrap();
        check(&subs, false);
        tenant_id = subs[2].id;
        let stats = consistent(&bus);
        assert_eq!((stats.pending, stats.delivered, stats.dead), (7, 0, 1));
        let dead = bus.outbox().dead().next().unwrap().unwrap();
        assert_eq!(dead.last_error.as_deref(), Some("subscription was deleted"));
        let tenant_events: Vec<_> = bus
            .outbox()
            .for_subscription(tenant_id, false)
            .map(|d| d.unwrap().event_name)
            .collect();
        assert_eq!(tenant_events, ["invoice.paid", "hello"]);
        for s in &subs {
            let path = match s.name.as_str() {
                "Hub" => "/hub",
                "Standard" => "/std",
                _ => "/tenant",
            };
            bus.subscriptions()
                .update(s.id, SubscriptionPatch::new().url(rx.url(path)))
                .unwrap();
        }
        // An update keeps every other field.
        check(&bus.subscriptions().list().unwrap(), true);
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    assert_eq!(format_marker(&store), [6]);

    let bus = builder(&store).open().unwrap();
    check(&bus.subscriptions().list().unwrap(), true);
    wait_until(LONG, "7 deliveries", || {
        bus.outbox().stats().unwrap().delivered == 7
    });
    let stats = consistent(&bus);
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 7, 1));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 7);
    let mut seen = Vec::new();
    for r in &reqs {
        let body = r.json();
        seen.push((r.path.clone(), body["n"].as_i64().unwrap()));
        match r.path.as_str() {
            "/hub" => assert!(r.signed_with(b"fixture-secret", "x-hub-signature-256")),
            "/std" => hookbus::signing::verify_standard(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                r.header_pairs(),
                &r.body,
                DEFAULT_TOLERANCE,
            )
            .unwrap(),
            _ => {
                assert!(r.signed_with(TENANT_SECRET, "x-hub-signature-256"));
                assert_eq!(r.header("authorization"), Some(TENANT_AUTH));
            }
        }
        if r.path != "/tenant" {
            assert_eq!(r.header("authorization"), None);
        }
        if body["n"] == 4 {
            assert_eq!(body, json!({"text": "paid", "n": 4}));
        }
    }
    // FIFO: the tenant's two arrive in publish order.
    let tenant_order: Vec<_> = seen
        .iter()
        .filter(|(p, _)| p == "/tenant")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(tenant_order, [4, 5]);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/hub".into(), 1),
            ("/hub".into(), 2),
            ("/std".into(), 1),
            ("/std".into(), 2),
            ("/std".into(), 3),
            ("/tenant".into(), 4),
            ("/tenant".into(), 5),
        ]
    );
    assert_eq!(
        bus.outbox().for_subscription(tenant_id, false).count(),
        2,
        "the tenant's deliveries"
    );
}

#[test]
fn a_version_3_store_opens_remembers_its_keys_and_delivers_numbered() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v3");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture, &store);
    assert_eq!(format_marker(&store), [3]);
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    let rx = TestReceiver::start();
    let keyed;
    {
        // The fixture's key was used when the fixture was made (2026-11):
        // a window of a year keeps it held (the default 24 h made this test
        // fail a day after the fixture was written).
        let bus = builder(&store)
            .deliver(false)
            .idempotency_window(Duration::from_secs(365 * 24 * 3600))
            .open()
            .unwrap();
        let stats = consistent(&bus);
        assert_eq!((stats.pending, stats.delivered, stats.dead), (8, 0, 1));
        let subs = bus.subscriptions().list().unwrap();
        let names: Vec<_> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Hub", "Standard", "Tenant"]);
        // Numbered per subscription, in publish order.
        for (s, n) in [(&subs[0], 2), (&subs[1], 3), (&subs[2], 3)] {
            let seqs: Vec<u64> = bus
                .outbox()
                .for_subscription(s.id, false)
                .map(|d| d.unwrap().sequence)
                .collect();
            assert_eq!(seqs, (1..=n).collect::<Vec<u64>>(), "{}", s.name);
        }
        // The keyed event, with its trace context; its key still holds
        // after the reopen: publishing it again stores nothing.
        let last = bus
            .outbox()
            .for_subscription(subs[2].id, true)
            .next()
            .unwrap()
            .unwrap();
        let event = bus.outbox().event(last.event_id).unwrap().unwrap();
        assert_eq!(event.traceparent.as_deref(), Some(tp));
        assert_eq!(event.payload, br#"{"n":6}"#);
        keyed = event.id;
        let again = bus
            .publish_message(
                hookbus::Message::new("invoice.paid", &json!({"n": 6}))
                    .tenant("acme")
                    .idempotency_key("invoice-6"),
            )
            .unwrap();
        assert_eq!(again, keyed);
        assert_eq!(bus.outbox().stats().unwrap().pending, 8);
        // A format-3 event does not say whether it had a tenant: it is not
        // fanned out again (it could reach another tenant), and the error
        // says what to do instead.
        assert_eq!(event.tenant, None);
        let e = bus.outbox().replay(keyed, None).unwrap_err();
        assert!(matches!(e, hookbus::Error::InvalidReplay(_)), "{e}");
        assert!(e.to_string().contains("replay_since"), "{e}");
        for s in &subs {
            bus.subscriptions()
                .update(
                    s.id,
                    SubscriptionPatch::new().url(rx.url(&format!("/{}", s.name))),
                )
                .unwrap();
        }
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    let bus = builder(&store).open().unwrap();
    wait_until(LONG, "8 deliveries", || {
        bus.outbox().stats().unwrap().delivered == 8
    });
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 8);
    let mut tenant_seqs = Vec::new();
    for r in &reqs {
        assert!(r.header("x-webhook-sequence").is_some(), "{r:?}");
        if r.path == "/Tenant" {
            tenant_seqs.push(r.header("x-webhook-sequence").unwrap().to_owned());
        }
        let is_keyed = r.header("x-webhook-event-id") == Some(keyed.to_string().as_str());
        assert_eq!(r.header("traceparent"), is_keyed.then_some(tp), "{r:?}");
    }
    // FIFO: in order.
    assert_eq!(tenant_seqs, ["1", "2", "3"]);

    // Per delivery, the fixture's events replay (a span from the fixture's
    // first delivery on: not tied to today's date).
    let tenant = bus.subscriptions().list().unwrap()[2].clone();
    let first = bus
        .outbox()
        .for_subscription(tenant.id, false)
        .next()
        .unwrap()
        .unwrap();
    let from = hookbus::Timestamp::from_millis(first.created_at.as_millis() - 1);
    let until = from.saturating_add(Duration::from_secs(3600));
    assert_eq!(
        bus.outbox().replay_since(tenant.id, from, until).unwrap(),
        3
    );
    let again = rx.wait_for(11, LONG);
    let seqs: Vec<&str> = again[8..]
        .iter()
        .map(|r| {
            assert_eq!(r.path, "/Tenant");
            r.header("x-webhook-sequence").unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        ["4", "5", "6"],
        "replays are numbered after the others"
    );
    bus.shutdown(Duration::from_secs(1)).unwrap();
    drop(bus);
    assert_eq!(format_marker(&store), [6], "the marker is upgraded on open");
}

/// How many keys of the closed store at `store` start with `prefix`.
fn keys_under(store: &Path, prefix: &[u8]) -> usize {
    let (_db, tree) = raw_tree(store);
    tree.scan_prefix(prefix).count()
}

/// A copy of the fixture `store-v{version}` in a temp dir: the dir and the
/// store's path in it.
fn fixture_copy(version: u8) -> (tempfile::TempDir, std::path::PathBuf) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/store-v{version}"));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture, &store);
    assert_eq!(format_marker(&store), [version]);
    (dir, store)
}

/// Each attempt of a delivery as (number, status).
fn attempt_statuses(bus: &hookbus::Bus, id: hookbus::DeliveryId) -> Vec<(u32, Option<u16>)> {
    let attempts = bus.outbox().attempts(id).unwrap();
    attempts.iter().map(|a| (a.number, a.status)).collect()
}

/// The attempted deliveries of fixtures v4 and v5 (see
/// `examples/make_fixture.rs`), checked: Flaky's delivered one and Down's
/// dead one, two attempts each.
fn flaky_and_down(bus: &hookbus::Bus) -> (hookbus::Delivery, hookbus::Delivery) {
    let stats = consistent(bus);
    assert_eq!((stats.pending, stats.delivered, stats.dead), (8, 1, 2));
    let flaky = bus.outbox().delivered().next().unwrap().unwrap();
    assert_eq!(flaky.event_name, "flaky.thing");
    assert_eq!(
        attempt_statuses(bus, flaky.id),
        [(1, Some(503)), (2, Some(200))]
    );
    let down = bus
        .outbox()
        .dead()
        .map(|d| d.unwrap())
        .find(|d| d.event_name == "down.thing")
        .unwrap();
    assert_eq!(
        attempt_statuses(bus, down.id),
        [(1, Some(503)), (2, Some(503))]
    );
    (flaky, down)
}

#[test]
fn a_version_4_store_keeps_its_attempts_and_counts_through_format_5() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let (_dir, store) = fixture_copy(4);
    assert_eq!(
        keys_under(&store, b"a"),
        4,
        "format 4 keeps every attempt under a key"
    );

    let rx = TestReceiver::start();
    let (flaky, down, events);
    {
        let bus = builder(&store).deliver(false).open().unwrap();
        (flaky, down) = flaky_and_down(&bus);
        events = [flaky.event_id, down.event_id];
        // The fixture's other subscriptions are paused: their pending
        // deliveries wait, so the outbox is quiet for the checks below (a
        // recount walks the store while the engine writes it).
        for sub in bus.subscriptions().list().unwrap() {
            let patch = if sub.name == "Down" {
                SubscriptionPatch::new().url(rx.url("/down"))
            } else {
                SubscriptionPatch::new().active(false)
            };
            bus.subscriptions().update(sub.id, patch).unwrap();
        }
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    assert_eq!(format_marker(&store), [6], "the marker is upgraded on open");

    // A third attempt of the dead letter: the two under attempt keys stay
    // listed beside the newest, which its record keeps.
    let bus = builder(&store).open().unwrap();
    bus.outbox().retry(down.id).unwrap();
    wait_until(LONG, "the revived delivery delivered", || {
        bus.outbox().get(down.id).unwrap().unwrap().state == DeliveryState::Delivered
    });
    assert_eq!(
        attempt_statuses(&bus, down.id),
        [(1, Some(503)), (2, Some(503)), (3, Some(204))]
    );
    // Purging removes both deliveries with all their attempts, and their
    // events (counted 1 each by format 4).
    let far = hookbus::Timestamp::now().saturating_add(Duration::from_secs(60));
    assert_eq!(bus.outbox().purge_delivered_before(far).unwrap(), 2);
    for e in events {
        assert!(bus.outbox().event(e).unwrap().is_none(), "event {e} kept");
    }
    consistent(&bus);
    bus.shutdown(Duration::from_secs(1)).unwrap();
    drop(bus);
    for d in [flaky.id, down.id] {
        let mut prefix = b"a".to_vec();
        prefix.extend_from_slice(&d.to_bytes());
        assert_eq!(keys_under(&store, &prefix), 0, "attempts of {d} left");
    }
}

#[test]
fn format_5_keeps_the_newest_attempt_in_the_delivery_and_counts_of_one_implicit() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let rx = TestReceiver::with(move |r| {
        if r.path == "/flaky" && failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 4 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (flaky, ok);
    {
        let bus = builder(dir.path())
            .retry_schedule(vec![Duration::from_millis(10); 5])
            .attempts_kept(2)
            .open()
            .unwrap();
        for (name, event) in [("flaky", "f"), ("ok", "o")] {
            bus.subscribe(
                hookbus::NewSubscription::new(name, rx.url(&format!("/{name}"))).events([event]),
            )
            .unwrap();
        }
        let f = bus.publish("f", &json!({"n": 1})).unwrap();
        let o = bus.publish("o", &json!({"n": 2})).unwrap();
        wait_until(LONG, "both delivered", || {
            bus.outbox().stats().unwrap().delivered == 2
        });
        consistent(&bus);
        let find = |event| {
            bus.outbox()
                .delivered()
                .map(|d| d.unwrap())
                .find(|d| d.event_id == event)
                .unwrap()
        };
        (flaky, ok) = (find(f), find(o));
        assert_eq!(flaky.attempts, 5);
        assert_eq!(
            attempt_statuses(&bus, flaky.id),
            [(4, Some(500)), (5, Some(204))],
            "the newest 2"
        );
        assert_eq!(attempt_statuses(&bus, ok.id), [(1, Some(204))]);
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    // Stored: one attempt key (flaky's 4th; the 5th and ok's only one are
    // in their records), no reference count (each event has one delivery).
    assert_eq!(keys_under(dir.path(), b"a"), 1);
    assert_eq!(keys_under(dir.path(), b"n"), 0);
    assert_eq!(
        keys_under(dir.path(), b"mlegacy"),
        0,
        "a new store has no legacy attempts"
    );

    let bus = builder(dir.path()).open().unwrap();
    let far = hookbus::Timestamp::now().saturating_add(Duration::from_secs(60));
    assert_eq!(bus.outbox().purge_delivered_before(far).unwrap(), 2);
    assert!(bus.outbox().attempts(flaky.id).unwrap().is_empty());
    assert!(bus.outbox().event(ok.event_id).unwrap().is_none());
    consistent(&bus);
    bus.shutdown(Duration::from_secs(1)).unwrap();
    drop(bus);
    for prefix in [b"a", b"n", b"e", b"d", b"b", b"y", b"r"] {
        assert_eq!(keys_under(dir.path(), prefix), 0, "{}", prefix[0] as char);
    }
}

#[test]
fn a_version_5_store_opens_with_its_attempts() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let (_dir, store) = fixture_copy(5);
    assert_eq!(
        keys_under(&store, b"a"),
        2,
        "only the first attempts of Flaky and Down are under attempt keys"
    );
    let bus = builder(&store).deliver(false).open().unwrap();
    flaky_and_down(&bus);
    let subs = bus.subscriptions().list().unwrap();
    let names: Vec<_> = subs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Flaky", "Down", "Hub", "Standard", "Tenant"]);
    // Format 6 indexes subscriptions by tenant and owner: the upgrade
    // built the index of the subscriptions already there.
    let by_tenant = bus
        .subscriptions()
        .list_by_tenant("acme", None, 10)
        .unwrap();
    let names: Vec<_> = by_tenant.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Tenant"]);
    let by_owner = bus.subscriptions().list_by_owner("alice").unwrap();
    let names: Vec<_> = by_owner.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Hub"]);
    assert_eq!(
        bus.subscriptions().list_by_owner("bob").unwrap().len(),
        1,
        "Tenant's owner"
    );
    bus.shutdown(Duration::from_secs(1)).unwrap();
    drop(bus);
    assert_eq!(format_marker(&store), [6]);
    assert_eq!(keys_under(&store, b"u"), 5, "one tenant entry each");
}

#[test]
fn a_version_6_store_opens_with_its_tenant_and_owner_index() {
    if crate::sled_only("sled format fixtures") {
        return;
    }
    let (_dir, store) = fixture_copy(6);
    assert_eq!(keys_under(&store, b"u"), 5, "written with the index");
    assert_eq!(
        keys_under(&store, b"w"),
        2,
        "Hub's (alice) and Tenant's (bob)"
    );
    let bus = builder(&store).deliver(false).open().unwrap();
    flaky_and_down(&bus);
    let subs = bus.subscriptions();
    let names = |v: Vec<Subscription>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(
        names(subs.list_by_tenant("acme", None, 10).unwrap()),
        ["Tenant"]
    );
    assert_eq!(names(subs.list_by_owner("alice").unwrap()), ["Hub"]);
    let stats = consistent(&bus);
    assert_eq!((stats.pending, stats.delivered, stats.dead), (8, 1, 2));
    bus.shutdown(Duration::from_secs(1)).unwrap();
    drop(bus);
    assert_eq!(format_marker(&store), [6]);
}
