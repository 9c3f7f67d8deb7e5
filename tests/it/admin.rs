//! The operator's REST routes (`/webhooks/admin`, role `admin`): health,
//! endpoint health failing first, last errors, retrying a subscription's
//! dead letters, replay, following finished deliveries, attempts as text,
//! notices — on a running bus, against a real receiver and sled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hookbus::NewSubscription;
use hookbus::rest::{ADMIN_ROLE, Caller};
use serde_json::{Value, json};

use crate::api::call;
use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, wait_until};

#[test]
fn operators_see_health_retry_replay_and_follow_deliveries_while_the_bus_runs() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let rx = TestReceiver::with(move |r| {
        if r.path == "/bad" && f.load(Ordering::SeqCst) {
            Reply::status(500).body(b"upstream exploded")
        } else {
            Reply::status(204)
        }
    });
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    let good = bus
        .subscribe(NewSubscription::new("good", rx.url("/good")).events(["e"]))
        .unwrap();
    let bad = bus
        .subscribe(NewSubscription::new("bad", rx.url("/bad")).events(["e"]))
        .unwrap();
    let admin = Caller::new("ops", [ADMIN_ROLE]);
    let user = Caller::new("u1", ["user"]);

    // Not for everyone.
    let r = call(
        &bus,
        "GET",
        "/webhooks/admin/health",
        Some(&user),
        Value::Null,
    );
    assert_eq!(r.status, 403);
    assert!(r.body.to_string().contains("`admin` role"), "{}", r.body);
    let r = call(&bus, "GET", "/webhooks/admin/health", None, Value::Null);
    assert_eq!(r.status, 401);
    // A tenant's admin is not the app's operator.
    let tenant_admin = Caller::new("boss", [ADMIN_ROLE]).tenant("acme");
    let r = call(
        &bus,
        "GET",
        "/webhooks/admin/subscriptions",
        Some(&tenant_admin),
        Value::Null,
    );
    assert_eq!(r.status, 403);
    assert!(
        r.body.to_string().contains("not for a tenant"),
        "{}",
        r.body
    );

    let r = call(
        &bus,
        "GET",
        "/webhooks/admin/health",
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["ready"], true);

    let events: Vec<_> = (0..2)
        .map(|n| bus.publish("e", &json!({ "n": n })).unwrap())
        .collect();
    wait_until(LONG, "2 delivered, 2 dead", || {
        let s = bus.outbox().stats().unwrap();
        (s.delivered, s.dead, s.pending) == (2, 2, 0)
    });

    // Endpoint health, failing first.
    let r = call(
        &bus,
        "GET",
        "/webhooks/admin/subscriptions",
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 200);
    let subs = r.body["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[0]["name"], "bad");
    assert_eq!(subs[0]["status"], "failing");
    assert_eq!(subs[0]["failures"], 8);
    assert_eq!(subs[1]["name"], "good");
    assert_eq!(subs[1]["successes"], 2);

    // One subscription: its last errors, with the response as text.
    let r = call(
        &bus,
        "GET",
        &format!("/webhooks/admin/subscriptions/{}?limit=3", bad.id),
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let errors = r.body["lastErrors"].as_array().unwrap();
    assert_eq!(errors.len(), 3);
    assert_eq!(errors[0]["status"], 500);
    assert_eq!(errors[0]["response_excerpt"], "upstream exploded");
    assert_eq!(r.body["health"]["backlog"], 0);

    // Follow the dead letters as they come: one page, then the cursor.
    let r = call(
        &bus,
        "GET",
        "/webhooks/admin/deliveries?state=dead&limit=1",
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.body["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let next = r.body["next"].as_str().unwrap().to_owned();
    let r = call(
        &bus,
        "GET",
        &format!("/webhooks/admin/deliveries?state=dead&after={next}"),
        Some(&admin),
        Value::Null,
    );
    let rest: Vec<&str> = r.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0], first);

    // A delivery's attempts as text.
    let r = call(
        &bus,
        "GET",
        &format!("/webhooks/admin/deliveries/{first}"),
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body["attempts"].as_array().unwrap().len(), 4);
    assert_eq!(
        r.body["attempts"][3]["response_excerpt"],
        "upstream exploded"
    );

    // Fixed receiver: retry the subscription's dead letters.
    failing.store(false, Ordering::SeqCst);
    let r = call(
        &bus,
        "POST",
        &format!("/webhooks/admin/subscriptions/{}/retry-dead", bad.id),
        Some(&admin),
        Value::Null,
    );
    assert_eq!((r.status, &r.body), (200, &json!({ "retried": 2 })));
    wait_until(LONG, "retried ones delivered", || {
        bus.outbox().stats().unwrap().delivered == 4
    });

    // Replay: one event to one subscription, then the good one's span.
    let r = call(
        &bus,
        "POST",
        &format!("/webhooks/admin/events/{}/replay", events[0]),
        Some(&admin),
        json!({ "subscriptionId": good.id.to_string() }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["deliveries"].as_array().unwrap().len(), 1);
    let first_event = bus.outbox().event(events[0]).unwrap().unwrap();
    let from = hookbus::Timestamp::from_millis(first_event.created_at.as_millis() - 1);
    let r = call(
        &bus,
        "POST",
        &format!("/webhooks/admin/subscriptions/{}/replay", good.id),
        Some(&admin),
        json!({ "from": from.to_string() }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["replayed"].as_u64().unwrap() >= 2, "{}", r.body);
    let replayed = r.body["replayed"].as_u64().unwrap();
    wait_until(LONG, "replays delivered", || {
        bus.outbox().stats().unwrap().delivered == 5 + replayed
    });
    // Bad input: clear 400s and 404s.
    let r = call(
        &bus,
        "POST",
        &format!("/webhooks/admin/subscriptions/{}/replay", good.id),
        Some(&admin),
        json!({ "from": "yesterday" }),
    );
    assert_eq!(
        (r.status, r.body["responseStatus"]["errorCode"].as_str()),
        (400, Some("InvalidTime"))
    );
    let r = call(
        &bus,
        "POST",
        &format!("/webhooks/admin/subscriptions/{}/replay", good.id),
        Some(&admin),
        json!({ "from": "2020-01-01T00:00:00Z" }),
    );
    assert_eq!(
        (r.status, r.body["responseStatus"]["errorCode"].as_str()),
        (400, Some("InvalidReplay"))
    );
    let r = call(
        &bus,
        "GET",
        "/webhooks/admin/deliveries/nope",
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 404);
    let r = call(
        &bus,
        "PUT",
        "/webhooks/admin/health",
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 405);

    // Notices: the two dead letters and the recovery; acknowledge one.
    let r = call(
        &bus,
        "GET",
        "/webhooks/admin/notices",
        Some(&admin),
        Value::Null,
    );
    let notices = r.body["notices"].as_array().unwrap().clone();
    assert_eq!(notices.len(), 3, "{}", r.body);
    assert!(notices[2]["kind"]["subscription_recovered"].is_object());
    let id = notices[0]["id"].as_str().unwrap();
    let r = call(
        &bus,
        "DELETE",
        &format!("/webhooks/admin/notices/{id}"),
        Some(&admin),
        Value::Null,
    );
    assert_eq!(r.status, 204);
    assert_eq!(bus.notices().pending(10).unwrap().len(), 2);
}
