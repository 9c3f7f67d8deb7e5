//! Regression tests from a review of the tenant, flow-control and
//! idempotency work: each failed before its fix.

use std::time::Duration;

use hookbus::rest::{ApiResponse, Caller};
use hookbus::{Bus, DeliveryOrder, NewSubscription, SubscriptionPatch};
use serde_json::{Value, json};

use crate::receiver::TestReceiver;
use crate::store_faults::{key, raw_tree};
use crate::{builder, consistent, wait_until};

fn call(
    bus: &Bus,
    method: &str,
    path: &str,
    query: &str,
    caller: &Caller,
    body: Value,
) -> ApiResponse {
    let path = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    crate::api::call(bus, method, &path, Some(caller), body)
}

#[test]
fn a_rest_caller_of_a_tenant_cannot_take_over_an_app_wide_subscription() {
    let dir = crate::test_dir();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let app = bus
        .subscribe(
            NewSubscription::new("ops", "http://127.0.0.1:9/ops")
                .event("*")
                .owner("admin"),
        )
        .unwrap();
    assert_eq!(app.tenant, None);
    let evil = Caller::new("admin", Vec::<String>::new()).tenant("evil-corp");
    let path = format!("/webhooks/subscriptions/{}", app.id);
    let r = call(
        &bus,
        "PUT",
        &path,
        "",
        &evil,
        json!({"url": "http://127.0.0.1:9/evil"}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    for method in ["GET", "DELETE"] {
        assert_eq!(
            call(&bus, method, &path, "", &evil, Value::Null).status,
            404
        );
    }
    assert_eq!(
        bus.subscriptions().get(app.id).unwrap().unwrap().url,
        "http://127.0.0.1:9/ops"
    );
}

#[test]
fn a_user_id_cannot_pose_as_a_tenant_id() {
    let dir = crate::test_dir();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let user = Caller::new("globex", Vec::<String>::new());
    assert_eq!(user.tenant_id(), "user:globex");
    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        "",
        &user,
        json!({"name": "mine", "events": ["*"], "config": {"url": "http://127.0.0.1:9/u"}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["subscriptions"][0]["tenant"], "user:globex");
    let id: hookbus::SubscriptionId = r.body["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    bus.publish_durable_to("globex", "invoice.paid", &json!({"secret": 1}))
        .unwrap();
    assert_eq!(bus.outbox().for_subscription(id, false).count(), 0);
    bus.publish_durable_to(&user.tenant_id(), "invoice.paid", &json!({"mine": 1}))
        .unwrap();
    assert_eq!(bus.outbox().for_subscription(id, false).count(), 1);
    // The namespace is kept: an explicit tenant cannot use it.
    let err = bus
        .subscribe(
            NewSubscription::new("x", "http://127.0.0.1:9/x")
                .event("*")
                .tenant("user:globex"),
        )
        .unwrap_err();
    assert!(
        matches!(err, hookbus::Error::InvalidTenant { .. }),
        "{err:?}"
    );
    let posing = Caller::new("mallory", Vec::<String>::new()).tenant("user:globex");
    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        "",
        &posing,
        json!({"name": "x", "events": ["*"], "config": {"url": "http://127.0.0.1:9/x"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn the_relay_search_sees_only_what_its_tenant_reaches() {
    let dir = crate::test_dir();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    bus.subscribe(
        NewSubscription::new("g", "http://127.0.0.1:9/globex-private-token")
            .event("e")
            .tenant("globex"),
    )
    .unwrap();
    bus.subscribe(
        NewSubscription::new("a", "http://127.0.0.1:9/acme")
            .event("e")
            .tenant("acme"),
    )
    .unwrap();
    bus.subscribe(NewSubscription::new("app", "http://127.0.0.1:9/app").event("e"))
        .unwrap();
    let relay = Caller::new("relay-acme", ["relay"]).tenant("acme");
    let r = call(
        &bus,
        "GET",
        "/webhooks/subscriptions/search",
        "eventName=e",
        &relay,
        Value::Null,
    );
    assert_eq!(r.status, 200);
    let urls: Vec<&str> = r.body["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["config"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, ["http://127.0.0.1:9/acme"]);
    let app_relay = Caller::new("relay", ["relay"]);
    let r = call(
        &bus,
        "GET",
        "/webhooks/subscriptions/search",
        "eventName=e",
        &app_relay,
        Value::Null,
    );
    let urls: Vec<&str> = r.body["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["config"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, ["http://127.0.0.1:9/app"]);
}

#[test]
fn a_damaged_sequence_counter_is_rebuilt_not_a_reason_to_stop_publishing() {
    if crate::sled_only("a sequence counter damaged in sled") {
        return;
    }
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let a = {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        let a = bus
            .subscribe(NewSubscription::new("a", rx.url("/a")).event("e"))
            .unwrap();
        bus.subscribe(NewSubscription::new("b", rx.url("/b")).event("e"))
            .unwrap();
        bus.publish_durable("e", &json!({})).unwrap();
        bus.shutdown(Duration::from_secs(1)).unwrap();
        a
    };
    {
        let (db, t) = raw_tree(dir.path());
        t.insert(key(b'q', a.id.to_bytes()), &[1u8, 2, 3][..])
            .unwrap();
        db.flush().unwrap();
    }
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    bus.publish_durable("e", &json!({})).unwrap();
    bus.publish_durable("e", &json!({})).unwrap();
    let mut seqs: Vec<u64> = bus
        .outbox()
        .for_subscription(a.id, false)
        .map(|d| d.unwrap().sequence)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3], "counted on from the newest delivery");
    let stats = consistent(&bus);
    assert_eq!((stats.pending, stats.quarantined), (6, 1));
}

fn fifo_with_a_damaged_delivery(order: DeliveryOrder) {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let ds = {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        bus.subscribe(
            NewSubscription::new("f", rx.url("/f"))
                .event("e")
                .order(order),
        )
        .unwrap();
        for i in 0..3 {
            bus.publish("e", &json!({ "i": i })).unwrap();
        }
        bus.flush().unwrap();
        let mut ds = bus.outbox().all().collect::<Result<Vec<_>, _>>().unwrap();
        ds.sort_by_key(|d| d.id);
        bus.shutdown(Duration::from_secs(1)).unwrap();
        ds
    };
    {
        let (db, t) = raw_tree(dir.path());
        let k = key(b'd', ds[1].id.to_bytes());
        let mut v = t.get(&k).unwrap().unwrap().to_vec();
        v[0] = 99;
        t.insert(k, v).unwrap();
        db.flush().unwrap();
    }
    let bus = builder(dir.path()).open().unwrap();
    wait_until(
        Duration::from_secs(10),
        "deliveries 1 and 3 delivered",
        || bus.outbox().stats().unwrap().delivered == 2,
    );
    let got: Vec<i64> = rx
        .requests()
        .iter()
        .map(|r| r.json()["i"].as_i64().unwrap())
        .collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, 2]);
    if order.is_fifo() {
        assert_eq!(got, [0, 2]);
    }
    let stats = consistent(&bus);
    assert_eq!(
        (stats.pending, stats.delivered, stats.quarantined),
        (0, 2, 1)
    );
}

#[test]
fn a_damaged_delivery_does_not_stall_a_fifo_queue() {
    if crate::sled_only("a delivery record damaged in sled") {
        return;
    }
    fifo_with_a_damaged_delivery(DeliveryOrder::FIFO);
}

#[test]
fn a_damaged_delivery_does_not_stall_an_unordered_one_either() {
    if crate::sled_only("a delivery record damaged in sled") {
        return;
    }
    fifo_with_a_damaged_delivery(DeliveryOrder::Unordered);
}

#[test]
fn halting_follows_the_order_it_is_set_for() {
    let dir = crate::test_dir();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let s = bus
        .subscribe(
            NewSubscription::new("h", "http://127.0.0.1:9/h")
                .event("e")
                .order(DeliveryOrder::FIFO_HALT),
        )
        .unwrap();
    // Skip instead of halt: not halted (nothing to resume).
    let s2 = bus
        .subscriptions()
        .update(s.id, SubscriptionPatch::new().order(DeliveryOrder::FIFO))
        .unwrap();
    assert_eq!(s2.halted_at, None);
    assert_eq!(s2.order, DeliveryOrder::FIFO);
}
