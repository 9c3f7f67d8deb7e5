//! Format compatibility: a store written by format version 1 (the fixture
//! `tests/fixtures/store-v1`, made by `examples/make_fixture.rs`) opens and
//! delivers. A format change that breaks old stores fails here.

use std::path::Path;
use std::time::Duration;

use hookbus::DEFAULT_TOLERANCE;
use hookbus::{DeliveryState, SubscriptionPatch};
use serde_json::json;

use crate::receiver::TestReceiver;
use crate::{LONG, builder, wait_until};

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
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture, &store);

    let rx = TestReceiver::start();
    {
        let bus = builder(&store).deliver(false).open().unwrap();
        let subs = bus.subscriptions().list().unwrap();
        let names: Vec<_> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Hub", "Standard"]);
        assert_eq!(subs[0].events, ["hello", "goodbye"]);
        assert_eq!(subs[0].owner.as_deref(), Some("alice"));
        assert_eq!(subs[1].signing, hookbus::Signing::StandardWebhooks);
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
            hookbus::verify_standard(
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
