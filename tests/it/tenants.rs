//! Tenants, the per-tenant cap and custom headers (record format 2), through
//! the API and the REST adapter, against a real store and a real receiver.
//!
//! "Nothing else arrives" is checked the same way everywhere: after a
//! `flush` every fan-out is stored, so the outbox total is exact at once;
//! then the test waits until that many are delivered, and the receiver must
//! have exactly that many requests (204 answers: no retries).

use std::time::Duration;

use hookbus::rest::{ApiResponse, Caller};
use hookbus::{Bus, DeliveryOrder, Error, EventId, NewSubscription, RateLimit, SubscriptionPatch};
use serde_json::{Value, json};

use crate::receiver::{Request, TestReceiver};
use crate::{LONG, builder, consistent, open, wait_until};

fn call(bus: &Bus, method: &str, path: &str, caller: &Caller, body: Value) -> ApiResponse {
    crate::api::call(bus, method, path, Some(caller), body)
}

const BASE: &str = "/webhooks/subscriptions";

fn one(id: &str) -> String {
    format!("{BASE}/{id}")
}

/// POSTs a subscription and returns the created one (asserting 201).
fn create(bus: &Bus, caller: &Caller, body: Value) -> Value {
    let r = call(bus, "POST", BASE, caller, body);
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["subscriptions"][0].clone()
}

fn list_ids(bus: &Bus, caller: &Caller) -> Vec<String> {
    let r = call(bus, "GET", BASE, caller, Value::Null);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every stored delivery, pending, delivered or dead.
fn total(bus: &Bus) -> u64 {
    let s = bus.outbox().stats().unwrap();
    s.pending + s.delivered + s.dead
}

/// Waits until `n` deliveries in all are delivered, then checks that the
/// outbox holds exactly those (nothing pending or dead) and that the
/// receiver got exactly `n` requests (plus `pings`, requests that are not
/// deliveries). Returns the requests after the first `before`, as (path,
/// body) sorted.
fn settle(bus: &Bus, rx: &TestReceiver, n: u64, pings: u64, before: usize) -> Vec<(String, Value)> {
    wait_until(LONG, &format!("{n} deliveries delivered"), || {
        bus.outbox().stats().unwrap().delivered >= n
    });
    let stats = consistent(bus);
    assert_eq!(
        (stats.pending, stats.delivered, stats.dead),
        (0, n, 0),
        "outbox after settling"
    );
    let reqs = rx.requests();
    assert_eq!(reqs.len() as u64, n + pings, "requests: {:?}", paths(&reqs));
    let mut got: Vec<_> = reqs[before..]
        .iter()
        .map(|r| (r.path.clone(), r.json()))
        .collect();
    got.sort_by_key(|(p, b)| (p.clone(), b.to_string()));
    got
}

fn paths(reqs: &[Request]) -> Vec<&str> {
    reqs.iter().map(|r| r.path.as_str()).collect()
}

fn is_invalid_tenant<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::InvalidTenant { .. }))
}

#[test]
fn tenant_events_reach_only_that_tenant_and_app_events_only_app_wide() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    assert!(!bus.config().tenants_receive_app_events(), "off by default");
    let acme = bus
        .subscribe(
            NewSubscription::new("acme hooks", rx.url("/acme"))
                .event("*")
                .tenant("acme"),
        )
        .unwrap();
    let globex = bus
        .subscribe(
            NewSubscription::new("globex hooks", rx.url("/globex"))
                .event("*")
                .tenant("globex"),
        )
        .unwrap();
    let app = bus
        .subscribe(NewSubscription::new("app hooks", rx.url("/app")).event("*"))
        .unwrap();
    assert_eq!(acme.tenant.as_deref(), Some("acme"));
    assert_eq!(app.tenant, None);
    let stored = bus.subscriptions().get(globex.id).unwrap().unwrap();
    assert_eq!(stored.tenant.as_deref(), Some("globex"));

    let e_acme = bus
        .publish_to("acme", "invoice.paid", &json!({"to": "acme", "n": 1}))
        .unwrap();
    let e_globex = bus
        .publish_to("globex", "invoice.paid", &json!({"to": "globex", "n": 2}))
        .unwrap();
    let e_app = bus
        .publish("app.notice", &json!({"to": "app", "n": 3}))
        .unwrap();
    // A tenant without subscriptions: stored event, no delivery.
    bus.publish_to("initech", "invoice.paid", &json!({"to": "initech", "n": 0}))
        .unwrap();
    bus.flush().unwrap();
    assert_eq!(total(&bus), 3, "one delivery per event, none for initech");
    let events_of = |id| -> Vec<EventId> {
        bus.outbox()
            .for_subscription(id, false)
            .map(|d| d.unwrap().event_id)
            .collect()
    };
    assert_eq!(events_of(acme.id), [e_acme]);
    assert_eq!(events_of(globex.id), [e_globex]);
    assert_eq!(events_of(app.id), [e_app]);

    let got = settle(&bus, &rx, 3, 0, 0);
    assert_eq!(
        got,
        [
            ("/acme".into(), json!({"to": "acme", "n": 1})),
            ("/app".into(), json!({"to": "app", "n": 3})),
            ("/globex".into(), json!({"to": "globex", "n": 2})),
        ]
    );
    for r in rx.requests() {
        let want = match r.path.as_str() {
            "/acme" => e_acme,
            "/globex" => e_globex,
            _ => e_app,
        };
        assert_eq!(r.header("x-webhook-event-id"), Some(&*want.to_string()));
    }

    // The durable variants: on disk when they return.
    bus.publish_durable_to("globex", "invoice.sent", &json!({"to": "globex", "n": 4}))
        .unwrap();
    assert_eq!(bus.outbox().for_subscription(globex.id, false).count(), 2);
    #[cfg_attr(not(feature = "tokio"), allow(unused_mut))]
    let mut expected = vec![("/globex".to_owned(), json!({"to": "globex", "n": 4}))];
    #[cfg_attr(not(feature = "tokio"), allow(unused_mut))]
    let mut n = 4;
    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(bus.publish_durable_to_async(
            "acme",
            "invoice.sent",
            &json!({"to": "acme", "n": 5}),
        ))
        .unwrap();
        assert_eq!(bus.outbox().for_subscription(acme.id, false).count(), 2);
        expected.insert(0, ("/acme".to_owned(), json!({"to": "acme", "n": 5})));
        n += 1;
        assert!(is_invalid_tenant(
            rt.block_on(bus.publish_durable_to_async("", "x", &1))
        ));
    }
    assert_eq!(total(&bus), n);
    assert_eq!(settle(&bus, &rx, n, 0, 3), expected);

    // An inactive tenant subscription gets nothing.
    bus.subscriptions()
        .update(acme.id, SubscriptionPatch::new().active(false))
        .unwrap();
    bus.publish_to("acme", "invoice.paid", &json!({"n": 99}))
        .unwrap();
    bus.flush().unwrap();
    assert_eq!(total(&bus), n);
    bus.subscriptions()
        .update(acme.id, SubscriptionPatch::new().active(true))
        .unwrap();

    // Bad tenant ids are refused, and nothing is published or stored.
    let long = "t".repeat(201);
    for bad in ["", "a\u{7}b", "line\nbreak", long.as_str()] {
        assert!(is_invalid_tenant(bus.publish_to(bad, "x", &1)), "{bad:?}");
        assert!(is_invalid_tenant(bus.publish_durable_to(bad, "x", &1)));
        assert!(is_invalid_tenant(
            bus.subscribe(
                NewSubscription::new("bad", rx.url("/bad"))
                    .event("*")
                    .tenant(bad)
            )
        ));
    }
    // 200 bytes is allowed.
    bus.publish_to(&"t".repeat(200), "x", &1).unwrap();
    bus.flush().unwrap();
    assert_eq!(total(&bus), n);
    assert_eq!(bus.subscriptions().list().unwrap().len(), 3);
    bus.shutdown(Duration::from_secs(2)).unwrap();
    drop(bus);

    // The same store, with tenants receiving app-wide events.
    let bus = builder(dir.path())
        .tenants_receive_app_events(true)
        .open()
        .unwrap();
    assert!(bus.config().tenants_receive_app_events());
    let before = rx.count();
    bus.publish("app.notice", &json!({"to": "all", "n": 6}))
        .unwrap();
    // Tenant events still reach their tenant only.
    bus.publish_to("acme", "invoice.paid", &json!({"to": "acme", "n": 7}))
        .unwrap();
    bus.flush().unwrap();
    assert_eq!(total(&bus), n + 4);
    let got = settle(&bus, &rx, n + 4, 0, before);
    assert_eq!(
        got,
        [
            ("/acme".into(), json!({"to": "all", "n": 6})),
            ("/acme".into(), json!({"to": "acme", "n": 7})),
            ("/app".into(), json!({"to": "all", "n": 6})),
            ("/globex".into(), json!({"to": "all", "n": 6})),
        ]
    );
}

#[test]
fn rest_callers_create_in_their_tenant_and_see_only_their_own() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let alice = Caller::new("alice", ["user"]).tenant("acme");
    let bob = Caller::new("bob", ["user"]).tenant("globex");
    // No tenant: a tenant of her own, named by her id.
    let carol = Caller::new("carol", ["user"]);
    // Same user id as alice, another tenant; another user of alice's tenant.
    let alice_at_globex = Caller::new("alice", ["user"]).tenant("globex");
    let dave = Caller::new("dave", ["user"]).tenant("acme");

    let sub = |path: &str| json!({"name": "all", "events": ["*"], "config": {"url": rx.url(path)}});
    let a = create(&bus, &alice, sub("/alice"));
    let b = create(&bus, &bob, sub("/bob"));
    let c = create(&bus, &carol, sub("/carol"));
    let ag = create(&bus, &alice_at_globex, sub("/alice-at-globex"));
    for (s, tenant, owner) in [
        (&a, "acme", "alice"),
        (&b, "globex", "bob"),
        (&c, "user:carol", "carol"),
        (&ag, "globex", "alice"),
    ] {
        assert_eq!(s["tenant"], tenant, "{s}");
        assert_eq!(s["createdById"], owner, "{s}");
        let id: hookbus::SubscriptionId = s["id"].as_str().unwrap().parse().unwrap();
        let stored = bus.subscriptions().get(id).unwrap().unwrap();
        assert_eq!(stored.tenant.as_deref(), Some(tenant));
        assert_eq!(stored.owner.as_deref(), Some(owner));
    }
    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();

    bus.publish_to("acme", "order.created", &json!({"n": 1}))
        .unwrap();
    bus.publish_to("globex", "order.created", &json!({"n": 2}))
        .unwrap();
    bus.publish_to("user:carol", "order.created", &json!({"n": 3}))
        .unwrap();
    // App-wide: every REST subscription has a tenant, so none gets it.
    bus.publish("order.created", &json!({"n": 4})).unwrap();
    bus.flush().unwrap();
    assert_eq!(total(&bus), 4);
    let got = settle(&bus, &rx, 4, 0, 0);
    assert_eq!(
        got,
        [
            ("/alice".into(), json!({"n": 1})),
            ("/alice-at-globex".into(), json!({"n": 2})),
            ("/bob".into(), json!({"n": 2})),
            ("/carol".into(), json!({"n": 3})),
        ]
    );

    // Lists: own subscriptions in the caller's tenant only.
    assert_eq!(list_ids(&bus, &alice), [id(&a)]);
    assert_eq!(list_ids(&bus, &bob), [id(&b)]);
    assert_eq!(list_ids(&bus, &carol), [id(&c)]);
    assert_eq!(list_ids(&bus, &alice_at_globex), [id(&ag)]);
    assert_eq!(list_ids(&bus, &dave), Vec::<String>::new());

    // Nobody else reads, changes or deletes alice's.
    let alices = one(&id(&a));
    for other in [&bob, &dave, &alice_at_globex, &carol] {
        for method in ["GET", "PUT", "DELETE"] {
            let r = call(
                &bus,
                method,
                &alices,
                other,
                json!({"isActive": false, "url": rx.url("/stolen")}),
            );
            assert_eq!(r.status, 404, "{method} by {other:?}: {}", r.body);
            assert!(!r.body.to_string().contains("/alice"), "{}", r.body);
        }
        let r = call(
            &bus,
            "GET",
            &format!("{alices}/history"),
            other,
            Value::Null,
        );
        assert_eq!(r.status, 404, "history by {other:?}");
    }
    let r = call(&bus, "GET", &alices, &alice, Value::Null);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subscription"]["isActive"], true);
    assert_eq!(r.body["subscription"]["config"]["url"], rx.url("/alice"));
    assert_eq!(r.body["subscription"]["tenant"], "acme");
    assert_eq!(bus.subscriptions().list().unwrap().len(), 4);

    // A subscription without a tenant (made through the Rust API, or stored
    // before tenants) is reachable only by its owner calling without a
    // tenant; the same user id in a tenant gets 404.
    let legacy = bus
        .subscribe(
            NewSubscription::new("legacy", rx.url("/legacy"))
                .event("x")
                .owner("carol"),
        )
        .unwrap();
    assert_eq!(list_ids(&bus, &carol), [id(&c), legacy.id.to_string()]);
    let r = call(
        &bus,
        "GET",
        &one(&legacy.id.to_string()),
        &carol,
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subscription"]["tenant"], Value::Null);
    let carol_in_acme = Caller::new("carol", ["user"]).tenant("acme");
    for who in [&alice, &carol_in_acme] {
        let r = call(&bus, "GET", &one(&legacy.id.to_string()), who, Value::Null);
        assert_eq!(r.status, 404);
    }

    // The owner's own PUT and DELETE work.
    let r = call(&bus, "PUT", &alices, &alice, json!({"isActive": false}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subscription"]["tenant"], "acme", "tenant kept");
    assert_eq!(
        call(&bus, "DELETE", &alices, &alice, Value::Null).status,
        204
    );
    assert_eq!(list_ids(&bus, &alice), Vec::<String>::new());

    // A bad tenant from authentication: 400 on the tenant field.
    let long = "t".repeat(201);
    for bad in ["", "a\tb", long.as_str()] {
        let eve = Caller::new("eve", ["user"]).tenant(bad);
        let r = call(&bus, "POST", BASE, &eve, sub("/eve"));
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert_eq!(r.body["responseStatus"]["errorCode"], "InvalidTenant");
        assert_eq!(r.body["responseStatus"]["errors"][0]["fieldName"], "tenant");
    }
    assert_eq!(bus.subscriptions().list().unwrap().len(), 4);
}

#[test]
fn rest_rate_limit_and_order_round_trip() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let alice = Caller::new("alice", ["user"]).tenant("acme");
    let s = create(
        &bus,
        &alice,
        json!({"name": "policy", "events": ["a"], "config": {"url": rx.url("/p")},
            "rateLimit": {"perSecond": 5, "burst": 2},
            "order": {"fifo": {"onDeadLetter": "halt"}}}),
    );
    assert_eq!(s["rateLimit"], json!({"perSecond": 5, "burst": 2}));
    assert_eq!(s["order"], json!({"fifo": {"onDeadLetter": "halt"}}));
    assert_eq!(s["haltedAt"], Value::Null);
    let id: hookbus::SubscriptionId = s["id"].as_str().unwrap().parse().unwrap();
    let stored = bus.subscriptions().get(id).unwrap().unwrap();
    assert_eq!(stored.rate_limit, Some(RateLimit::per_second(5).burst(2)));
    assert_eq!(stored.order, DeliveryOrder::FIFO_HALT);

    let path = one(&id.to_string());
    let r = call(
        &bus,
        "PUT",
        &path,
        &alice,
        json!({"rateLimit": null, "order": "unordered"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subscription"]["rateLimit"], Value::Null);
    assert_eq!(r.body["subscription"]["order"], "unordered");
    let stored = bus.subscriptions().get(id).unwrap().unwrap();
    assert_eq!(
        (stored.rate_limit, stored.order),
        (None, DeliveryOrder::Unordered)
    );

    let r = call(
        &bus,
        "PUT",
        &path,
        &alice,
        json!({"rateLimit": {"perSecond": 0, "burst": 1}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["responseStatus"]["errorCode"], "InvalidPolicy");
}

#[test]
fn the_per_tenant_cap_refuses_one_more_in_that_tenant_only() {
    let dir = crate::test_dir();
    assert!(matches!(
        builder(dir.path()).max_subscriptions_per_tenant(0).open(),
        Err(Error::InvalidConfig(_))
    ));
    let bus = builder(dir.path())
        .max_subscriptions_per_tenant(2)
        .deliver(false)
        .open()
        .unwrap();
    assert_eq!(bus.config().max_subscriptions_per_tenant(), 2);
    let url = |p: &str| format!("http://127.0.0.1:9/{p}");
    let new = |name: &str, tenant: &str| {
        NewSubscription::new(name, url(name))
            .event("e")
            .tenant(tenant)
    };
    let a1 = bus.subscribe(new("a1", "acme")).unwrap();
    let a2 = bus.subscribe(new("a2", "acme")).unwrap();
    let full = |r: Result<hookbus::Subscription, Error>| match r {
        Err(Error::TenantFull { tenant, max }) => {
            assert_eq!((tenant.as_str(), max), ("acme", 2));
        }
        other => panic!("expected TenantFull, got {other:?}"),
    };
    full(bus.subscribe(new("a3", "acme")));
    full(bus.subscriptions().ensure(new("a3", "acme")));
    // An inactive one still counts.
    bus.subscriptions()
        .update(a2.id, SubscriptionPatch::new().active(false))
        .unwrap();
    full(bus.subscribe(new("a3", "acme")));
    // ensure of one that exists is not one more (unchanged, or changed).
    assert_eq!(
        bus.subscriptions().ensure(new("a1", "acme")).unwrap().id,
        a1.id
    );
    let changed = bus
        .subscriptions()
        .ensure(
            NewSubscription::new("a1", url("a1-moved"))
                .event("e")
                .tenant("acme"),
        )
        .unwrap();
    assert_eq!(
        (changed.id, changed.url.as_str()),
        (a1.id, &*url("a1-moved"))
    );
    // Other tenants, and subscriptions without one, are not limited by it.
    bus.subscribe(new("g1", "globex")).unwrap();
    bus.subscribe(new("g2", "globex")).unwrap();
    for i in 0..3 {
        bus.subscribe(NewSubscription::new(format!("app{i}"), url(&format!("app{i}"))).event("e"))
            .unwrap();
    }
    let subs = bus.subscriptions().list().unwrap();
    let count = |t: Option<&str>| subs.iter().filter(|s| s.tenant.as_deref() == t).count();
    assert_eq!(
        (
            count(Some("acme")),
            count(Some("globex")),
            count(None),
            subs.len()
        ),
        (2, 2, 3, 7)
    );
    assert!(!subs.iter().any(|s| s.name == "a3"));

    // Through REST: 409 TenantFull, nothing stored.
    let alice = Caller::new("alice", ["user"]).tenant("acme");
    let body = json!({"name": "rest", "events": ["e"], "config": {"url": url("rest")}});
    let r = call(&bus, "POST", BASE, &alice, body.clone());
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["responseStatus"]["errorCode"], "TenantFull");
    assert!(
        r.body["responseStatus"]["message"]
            .as_str()
            .unwrap()
            .contains("acme"),
        "{}",
        r.body
    );
    let bob = Caller::new("bob", ["user"]).tenant("initech");
    assert_eq!(call(&bus, "POST", BASE, &bob, body.clone()).status, 201);
    let body2 = json!({"name": "rest2", "events": ["e"], "config": {"url": url("rest2")}});
    assert_eq!(call(&bus, "POST", BASE, &bob, body2).status, 201);
    let body3 = json!({"name": "rest3", "events": ["e"], "config": {"url": url("rest3")}});
    let r = call(&bus, "POST", BASE, &bob, body3);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["responseStatus"]["errorCode"], "TenantFull");
    assert_eq!(bus.subscriptions().list().unwrap().len(), 9);

    // Room again after a delete.
    bus.subscriptions().delete(a2.id).unwrap();
    bus.subscribe(new("a3", "acme")).unwrap();
    full(bus.subscribe(new("a4", "acme")));

    // Racing creates: the cap holds (one writer decides).
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                bus.subscribe(
                    NewSubscription::new(format!("race{i}"), format!("http://127.0.0.1:9/r{i}"))
                        .event("e")
                        .tenant("race"),
                )
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(Error::TenantFull { .. })))
    );
    let subs = bus.subscriptions().list().unwrap();
    assert_eq!(
        subs.iter()
            .filter(|s| s.tenant.as_deref() == Some("race"))
            .count(),
        2
    );
}

/// The invalid header sets, each with what it checks.
fn invalid_headers() -> Vec<(&'static str, Vec<(String, String)>)> {
    let h = |n: &str, v: &str| vec![(n.to_owned(), v.to_owned())];
    vec![
        ("reserved Content-Type", h("Content-Type", "text/plain")),
        ("reserved, other case", h("content-TYPE", "text/plain")),
        ("reserved User-Agent", h("User-Agent", "me")),
        ("reserved Host", h("Host", "example.com")),
        ("reserved traceparent", h("traceparent", "00-1-2-01")),
        ("x-webhook- prefix", h("x-webhook-delivery", "forged")),
        ("X-Hub- prefix", h("X-Hub-Signature", "sha1=forged")),
        ("webhook- prefix", h("Webhook-Signature", "v1,forged")),
        ("name with a space", h("X Custom", "1")),
        ("name with a colon", h("X-Custom:", "1")),
        ("empty name", h("", "1")),
        ("non-ASCII name", h("X-Café", "1")),
        ("name too long", h(&"X".repeat(101), "1")),
        ("CRLF in value", h("X-Custom", "1\r\nX-Injected: yes")),
        ("LF in value", h("X-Custom", "1\nX-Injected: yes")),
        ("NUL in value", h("X-Custom", "a\0b")),
        ("leading space", h("X-Custom", " 1")),
        ("value too long", h("X-Custom", &"v".repeat(4097))),
        (
            "21 headers",
            (0..21)
                .map(|i| (format!("X-H{i}"), "v".to_owned()))
                .collect(),
        ),
        (
            "duplicate differing in case",
            vec![
                ("X-Custom".into(), "1".into()),
                ("x-custom".into(), "2".into()),
            ],
        ),
    ]
}

#[test]
fn custom_headers_are_sent_redacted_validated_and_replaced() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let sub = bus
        .subscribe(
            NewSubscription::new("with headers", rx.url("/h"))
                .event("hello")
                .secret("hub-secret-value")
                .header("Authorization", "Bearer xyz")
                .header("X-Custom", "1"),
        )
        .unwrap();
    let names = |s: &hookbus::Subscription| -> Vec<String> {
        s.headers.iter().map(|(n, _)| n.clone()).collect()
    };
    assert_eq!(names(&sub), ["Authorization", "X-Custom"]);
    let stored = bus.subscriptions().get(sub.id).unwrap().unwrap();
    assert_eq!(stored.headers[0].1.expose(), "Bearer xyz");
    assert_eq!(stored.headers[1].1.expose(), "1");

    // Redacted in Debug and in serialization.
    for s in [&sub, &stored] {
        let debug = format!("{s:?}");
        assert!(!debug.contains("xyz"), "{debug}");
        assert!(debug.contains("Authorization") && debug.contains("[redacted]"));
        let json = serde_json::to_string(s).unwrap();
        assert!(!json.contains("xyz"), "{json}");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["headers"], json!(["Authorization", "X-Custom"]));
    }
    let listed = format!("{:?}", bus.subscriptions().list().unwrap());
    assert!(!listed.contains("xyz"));
    let new = NewSubscription::new("n", rx.url("/n")).header("Authorization", "Bearer xyz");
    assert!(!format!("{new:?}").contains("xyz"));
    let patch = SubscriptionPatch::new().headers([("Authorization", "Bearer xyz")]);
    assert!(!format!("{patch:?}").contains("xyz"));

    // Sent on every delivery, beside hookbus' own headers.
    bus.publish("hello", &json!({"n": 1})).unwrap();
    bus.flush().unwrap();
    settle(&bus, &rx, 1, 0, 0);
    let r = &rx.requests()[0];
    assert_eq!(r.header("authorization"), Some("Bearer xyz"));
    assert_eq!(r.header("x-custom"), Some("1"));
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n == "authorization")
            .count(),
        1
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-webhook-event"), Some("hello"));
    assert!(r.signed_with(b"hub-secret-value", "x-hub-signature-256"));

    // And on a ping.
    let attempt = bus.subscriptions().ping(sub.id).unwrap();
    assert_eq!(attempt.status, Some(204), "{attempt:?}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("x-webhook-event"), Some("hookbus.ping"));
    assert_eq!(reqs[1].header("authorization"), Some("Bearer xyz"));
    assert_eq!(reqs[1].header("x-custom"), Some("1"));

    // Invalid sets are refused, on create and on update, and nothing changes.
    let before = bus.subscriptions().list().unwrap();
    for (what, headers) in invalid_headers() {
        let mut new = NewSubscription::new("bad headers", rx.url("/bad")).event("hello");
        for (n, v) in &headers {
            new = new.header(n, v);
        }
        match bus.subscribe(new) {
            Err(e @ Error::InvalidHeader { .. }) => {
                let msg = e.to_string();
                assert!(
                    !msg.contains("Injected") && !msg.contains("forged"),
                    "{msg}"
                );
            }
            other => panic!("{what}: expected InvalidHeader, got {other:?}"),
        }
        let r = bus
            .subscriptions()
            .update(sub.id, SubscriptionPatch::new().headers(headers.clone()));
        assert!(
            matches!(r, Err(Error::InvalidHeader { .. })),
            "{what}: update gave {r:?}"
        );
    }
    assert_eq!(
        bus.subscriptions().list().unwrap(),
        before,
        "nothing stored"
    );

    // The limits themselves are allowed: 20 headers, a 4096-byte value, a tab.
    let mut edge = NewSubscription::new("edge", rx.url("/edge")).event("edge");
    for i in 0..19 {
        edge = edge.header(format!("X-H{i}"), "v");
    }
    edge = edge.header("X-Long", format!("a\tb{}", "v".repeat(4093)));
    let edge = bus.subscribe(edge).unwrap();
    assert_eq!(edge.headers.len(), 20);
    bus.subscriptions().delete(edge.id).unwrap();

    // Replacing them: the next delivery carries the new set.
    let updated = bus
        .subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().headers([("Authorization", "Bearer abc")]),
        )
        .unwrap();
    assert_eq!(names(&updated), ["Authorization"]);
    // (Not "abc" alone: the random ids in the output can hold it.)
    assert!(!format!("{updated:?}").contains("Bearer abc"));
    bus.publish("hello", &json!({"n": 2})).unwrap();
    bus.flush().unwrap();
    settle(&bus, &rx, 2, 1, 0);
    let r = rx.requests().pop().unwrap();
    assert_eq!(r.json(), json!({"n": 2}));
    assert_eq!(r.header("authorization"), Some("Bearer abc"));
    assert_eq!(r.header("x-custom"), None);
    // An empty list removes them all.
    let updated = bus
        .subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().headers(Vec::<(String, String)>::new()),
        )
        .unwrap();
    assert!(updated.headers.is_empty());
    bus.publish("hello", &json!({"n": 3})).unwrap();
    bus.flush().unwrap();
    settle(&bus, &rx, 3, 1, 0);
    let r = rx.requests().pop().unwrap();
    assert_eq!(r.json(), json!({"n": 3}));
    assert_eq!(r.header("authorization"), None);
    // Other changes keep them.
    bus.subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().headers([("Authorization", "Bearer xyz")]),
        )
        .unwrap();
    let renamed = bus
        .subscriptions()
        .update(sub.id, SubscriptionPatch::new().name("renamed"))
        .unwrap();
    assert_eq!(renamed.headers[0].1.expose(), "Bearer xyz");
}

#[test]
fn rest_custom_headers_names_only_and_validated() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let alice = Caller::new("alice", ["user"]).tenant("acme");
    let r = call(
        &bus,
        "POST",
        BASE,
        &alice,
        json!({"name": "h", "events": ["hello"], "config": {"url": rx.url("/rest"),
            "headers": {"X-Trace": "t1", "Authorization": "Bearer xyz-rest"}}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(!r.body.to_string().contains("xyz"), "{}", r.body);
    let s = &r.body["subscriptions"][0];
    let mut names: Vec<_> = s["config"]["headerNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["Authorization", "X-Trace"]);
    let id = s["id"].as_str().unwrap().to_owned();
    let path = one(&id);
    let r = call(&bus, "GET", &path, &alice, Value::Null);
    assert_eq!(r.status, 200);
    assert!(!r.body.to_string().contains("xyz"), "{}", r.body);
    let r = call(&bus, "GET", BASE, &alice, Value::Null);
    assert!(!r.body.to_string().contains("xyz"), "{}", r.body);

    bus.publish_to("acme", "hello", &json!({"n": 1})).unwrap();
    bus.flush().unwrap();
    settle(&bus, &rx, 1, 0, 0);
    let req = &rx.requests()[0];
    assert_eq!(req.header("authorization"), Some("Bearer xyz-rest"));
    assert_eq!(req.header("x-trace"), Some("t1"));

    // PUT replaces them; the value is not echoed.
    let r = call(
        &bus,
        "PUT",
        &path,
        &alice,
        json!({"headers": {"Authorization": "Bearer xyz-put"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.to_string().contains("xyz"), "{}", r.body);
    assert_eq!(
        r.body["subscription"]["config"]["headerNames"],
        json!(["Authorization"])
    );
    bus.publish_to("acme", "hello", &json!({"n": 2})).unwrap();
    bus.flush().unwrap();
    settle(&bus, &rx, 2, 0, 0);
    let req = rx.requests().pop().unwrap();
    assert_eq!(req.header("authorization"), Some("Bearer xyz-put"));
    assert_eq!(req.header("x-trace"), None);

    // Invalid: 400 InvalidHeader on the field, no value in the answer.
    let count = bus.subscriptions().list().unwrap().len();
    for (what, headers) in invalid_headers() {
        let map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(n, v)| (n.clone(), Value::from(v.as_str())))
            .collect();
        let r = call(
            &bus,
            "POST",
            BASE,
            &alice,
            json!({"name": "bad", "events": ["hello"], "config": {"url": rx.url("/bad"), "headers": map}}),
        );
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(
            r.body["responseStatus"]["errorCode"], "InvalidHeader",
            "{what}"
        );
        assert_eq!(
            r.body["responseStatus"]["errors"][0]["fieldName"], "config.headers",
            "{what}"
        );
        let text = r.body.to_string();
        assert!(
            !text.contains("Injected") && !text.contains("forged"),
            "{text}"
        );
        let r = call(&bus, "PUT", &path, &alice, json!({"headers": map}));
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(
            r.body["responseStatus"]["errors"][0]["fieldName"],
            "headers"
        );
    }
    assert_eq!(bus.subscriptions().list().unwrap().len(), count);
    let id: hookbus::SubscriptionId = id.parse().unwrap();
    let stored = bus.subscriptions().get(id).unwrap().unwrap();
    assert_eq!(stored.headers.len(), 1);
    assert_eq!(stored.headers[0].1.expose(), "Bearer xyz-put");
}

#[cfg(feature = "cli")]
#[test]
fn the_outbox_cli_shows_header_names_never_values() {
    let dir = crate::test_dir();
    let d = dir.path();
    {
        let bus = builder(d).deliver(false).open().unwrap();
        bus.subscribe(
            NewSubscription::new("with headers", "http://127.0.0.1:9/h")
                .event("hello")
                .tenant("acme")
                .header("Authorization", "Bearer xyz"),
        )
        .unwrap();
        bus.shutdown(Duration::from_secs(2)).unwrap();
    }
    let text = crate::cli::ok(d, &["subscriptions"]);
    assert!(text.contains("with headers"), "{text}");
    assert!(!text.contains("xyz"), "{text}");
    let j = crate::cli::ok_json(d, &["subscriptions"]);
    assert!(!j.to_string().contains("xyz"), "{j}");
    assert_eq!(j[0]["headers"], json!(["Authorization"]));
    assert_eq!(j[0]["tenant"], "acme");
}

#[test]
fn every_header_the_rules_allow_is_sent() {
    // Any token character in a name; a value with a tab, non-ASCII text
    // and an empty value: all allowed, so all must reach the receiver
    // (a header the HTTP client refused would fail every attempt).
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let name = "X-a1!#$%&'*+.^_`|~";
    let sub = bus
        .subscribe(
            NewSubscription::new("odd", rx.url("/odd"))
                .event("e")
                .header(name, "v")
                .header("X-Tab", "a\tb")
                .header("X-Text", "café ünïcode")
                .header("X-Empty", ""),
        )
        .unwrap();
    assert_eq!(sub.headers.len(), 4);
    bus.publish("e", &json!({"n": 1})).unwrap();
    bus.flush().unwrap();
    settle(&bus, &rx, 1, 0, 0);
    let r = &rx.requests()[0];
    assert_eq!(r.header(name), Some("v"));
    assert_eq!(r.header("x-tab"), Some("a\tb"));
    assert_eq!(r.header("x-text"), Some("café ünïcode"));
    assert_eq!(r.header("x-empty"), Some(""));
}
