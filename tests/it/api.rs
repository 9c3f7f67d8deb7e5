use hookbus::rest::{ApiRequest, ApiResponse, Caller, handle};
use serde_json::{Value, json};

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, open, wait_until};

/// One request to the REST adapter (`path` may carry `?query`); a `Null`
/// body is none.
pub(crate) fn call(
    bus: &hookbus::Bus,
    method: &str,
    path: &str,
    caller: Option<&Caller>,
    body: Value,
) -> ApiResponse {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    handle(
        bus,
        ApiRequest {
            method,
            path,
            query,
            caller,
            body: &body,
        },
    )
}

fn field(r: &ApiResponse) -> &str {
    r.body["responseStatus"]["errors"][0]["fieldName"]
        .as_str()
        .unwrap_or("")
}

#[test]
fn every_route_role_and_status() {
    let rx = TestReceiver::with(|_| Reply::status(500));
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let alice = Caller::new("alice", Vec::<String>::new());
    let bob = Caller::new("bob", ["user"]);
    let relay = Caller::new("relay-svc", ["relay"]);
    let a = Some(&alice);

    // POST creates, secret never echoed.
    let create = json!({"name": "My Webhook", "events": ["hello", "goodbye"],
        "config": {"url": rx.url("/in"), "secret": "top-secret-value", "content_type": "application/json"}});
    let r = call(&bus, "POST", "/webhooks/subscriptions", a, create.clone());
    assert_eq!(r.status, 201, "{}", r.body);
    let sub = &r.body["subscriptions"][0];
    let id = sub["id"].as_str().unwrap().to_owned();
    let one = format!("/webhooks/subscriptions/{id}");
    assert_eq!(sub["name"], "My Webhook");
    assert_eq!(sub["events"], json!(["hello", "goodbye"]));
    assert_eq!(sub["config"]["url"], rx.url("/in"));
    assert_eq!(sub["config"]["contentType"], "application/json");
    assert_eq!(sub["isActive"], true);
    assert_eq!(sub["hasSecret"], true);
    assert_eq!(sub["createdById"], "alice");
    assert!(!r.body.to_string().contains("top-secret-value"));

    // Conflict: same owner, url and event.
    let r = call(&bus, "POST", "/webhooks/subscriptions", a, create.clone());
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["responseStatus"]["message"]
            .as_str()
            .unwrap()
            .contains("hello")
    );
    // Another owner may.
    assert_eq!(
        call(&bus, "POST", "/webhooks/subscriptions", Some(&bob), create).status,
        201
    );

    // Validation: 400 with the field and the rule.
    for (body, f, rule) in [
        (
            json!({"name": "n", "events": ["a"], "config": {"url": "ftp://x"}}),
            "config.url",
            "http or https",
        ),
        (
            json!({"name": "n", "events": [], "config": {"url": rx.url("/")}}),
            "events",
            "at least one event",
        ),
        (
            json!({"name": "n", "events": ["bad name"], "config": {"url": rx.url("/")}}),
            "events",
            "letters, digits",
        ),
        (
            json!({"name": "", "events": ["a"], "config": {"url": rx.url("/")}}),
            "name",
            "empty",
        ),
        (
            json!({"name": "n", "events": ["a"], "config": {"url": rx.url("/"), "contentType": "text/xml"}}),
            "config.contentType",
            "application/json",
        ),
        (
            json!({"name": "n", "events": ["a"], "config": {"url": rx.url("/"), "secret": ""}}),
            "config.secret",
            "empty",
        ),
        (json!({"name": "n"}), "body", "not valid JSON"),
    ] {
        let r = call(&bus, "POST", "/webhooks/subscriptions", a, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(field(&r), f, "{body}: {}", r.body);
        assert!(
            r.body["responseStatus"]["message"]
                .as_str()
                .unwrap()
                .contains(rule),
            "{body}: {}",
            r.body
        );
    }
    let raw = handle(
        &bus,
        ApiRequest {
            method: "POST",
            path: "/webhooks/subscriptions",
            query: "",
            caller: a,
            body: b"{not json",
        },
    );
    assert_eq!((raw.status, field(&raw)), (400, "body"));

    // GET list: only the caller's own.
    let r = call(&bus, "GET", "/webhooks/subscriptions", a, Value::Null);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["subscriptions"].as_array().unwrap().len(), 1);
    let r = call(
        &bus,
        "GET",
        "/webhooks/subscriptions/",
        Some(&relay),
        Value::Null,
    );
    assert_eq!(r.body["subscriptions"], json!([]));

    // A delivery and its failed attempts show in the history. (Alice is a
    // tenant of her own: her subscription receives her tenant's events.)
    bus.publish_to("user:alice", "hello", &json!({"x": 1}))
        .unwrap();
    wait_until(LONG, "an attempt", || rx.count() >= 2);
    // The receiver always fails: wait for two attempts to check their order.
    wait_until(LONG, "two attempts recorded", || {
        call(&bus, "GET", &one, a, Value::Null).body["history"]
            .as_array()
            .is_some_and(|h| h.len() >= 2)
    });
    let r = call(&bus, "GET", &one, a, Value::Null);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["subscription"]["id"], id.as_str());
    let h = r.body["history"].as_array().unwrap();
    assert_eq!(h[0]["statusCode"], 500);
    assert_eq!(h[0]["eventName"], "hello");
    assert!(
        h[0]["attempt"].as_u64() > h[1]["attempt"].as_u64(),
        "newest first"
    );
    let r = call(
        &bus,
        "GET",
        &format!("/webhooks/subscriptions/{id}/history?limit=5"),
        a,
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["deliveries"][0]["eventName"], "hello");
    assert_eq!(
        call(
            &bus,
            "GET",
            &format!("/webhooks/subscriptions/{id}/history?limit=0"),
            a,
            Value::Null
        )
        .status,
        400
    );

    // The owner check: another caller gets 404, not the record.
    for method in ["GET", "PUT", "DELETE"] {
        let r = call(&bus, method, &one, Some(&bob), json!({"isActive": false}));
        assert_eq!(r.status, 404, "{method}");
        assert!(!r.body.to_string().contains("My Webhook"));
    }
    assert_eq!(
        call(
            &bus,
            "GET",
            &format!("/webhooks/subscriptions/{id}/history"),
            Some(&bob),
            Value::Null
        )
        .status,
        404
    );

    // PUT by the owner.
    let r = call(
        &bus,
        "PUT",
        &one,
        a,
        json!({"url": rx.url("/v2"), "secret": "new-secret", "isActive": false}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subscription"]["config"]["url"], rx.url("/v2"));
    assert_eq!(r.body["subscription"]["isActive"], false);
    assert!(!r.body.to_string().contains("new-secret"));
    let r = call(&bus, "PUT", &one, a, json!({"url": "nope"}));
    assert_eq!((r.status, field(&r)), (400, "url"));
    let r = call(&bus, "PUT", &one, a, json!({"isActive": "yes"}));
    assert_eq!((r.status, field(&r)), (400, "body"));

    // Search: relay role only.
    let r = call(
        &bus,
        "GET",
        "/webhooks/subscriptions/search?eventName=hello",
        a,
        Value::Null,
    );
    assert_eq!(r.status, 403);
    let r = call(
        &bus,
        "GET",
        "/webhooks/subscriptions/search?eventName=hello",
        Some(&relay),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A relay without a tenant sees what app-wide events reach: REST
    // subscriptions belong to their callers' tenants, so none.
    assert_eq!(r.body["subscribers"], json!([]));
    // A relay of bob's tenant sees bob's.
    let bobs_relay = Caller::new("relay-svc", ["relay"]).tenant(bob.tenant_id());
    let r = call(
        &bus,
        "GET",
        "/webhooks/subscriptions/search?eventName=hello",
        Some(&bobs_relay),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let subs = r.body["subscribers"].as_array().unwrap();
    assert_eq!(
        subs.len(),
        1,
        "alice's is inactive now; bob's remains: {}",
        r.body
    );
    assert!(subs[0]["config"].get("secret").is_none());
    assert_eq!(
        call(
            &bus,
            "GET",
            "/webhooks/subscriptions/search",
            Some(&relay),
            Value::Null
        )
        .status,
        400
    );
    assert_eq!(
        call(
            &bus,
            "GET",
            "/webhooks/subscriptions/search?eventName=bad%20name",
            Some(&relay),
            Value::Null
        )
        .status,
        400
    );

    // DELETE by the owner, then 404.
    assert_eq!(call(&bus, "DELETE", &one, a, Value::Null).status, 204);
    assert_eq!(call(&bus, "GET", &one, a, Value::Null).status, 404);
    assert_eq!(call(&bus, "DELETE", &one, a, Value::Null).status, 404);

    // 401, 404 routes and bad ids, 405.
    for (method, path, caller, status) in [
        ("GET", "/webhooks/subscriptions", None, 401),
        ("GET", "/webhooks/other", a, 404),
        ("GET", "/webhooks/subscriptions/not-an-id", a, 404),
        ("GET", "/webhooks/subscriptions/a/b/c", a, 404),
        ("PATCH", "/webhooks/subscriptions", a, 405),
        ("POST", one.as_str(), a, 405),
    ] {
        assert_eq!(
            call(&bus, method, path, caller, Value::Null).status,
            status,
            "{method} {path}"
        );
    }

    // Closed bus: 503 for writes.
    bus.shutdown(std::time::Duration::from_secs(1)).unwrap();
    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        a,
        json!({"name": "n", "events": ["a"], "config": {"url": rx.url("/z")}}),
    );
    assert_eq!(r.status, 503);
}

/// Issue 10: the "target refused" reason named the internal addresses the
/// subscription's host resolved to, and the REST routes showed it to the
/// subscription's owner (an internal-DNS oracle). Tenants get a generic
/// reason; the addresses stay in the operator's logs.
#[test]
fn refused_targets_do_not_reveal_internal_addresses() {
    let dir = crate::test_dir();
    let bus = crate::builder(dir.path())
        .allow_private_targets(false)
        .dns_override(
            "hooks.internal.test",
            [std::net::IpAddr::from([10, 20, 30, 40])],
        )
        .open()
        .unwrap();
    let alice = Caller::new("alice", Vec::<String>::new());
    let create = json!({"name": "n", "events": ["a"],
        "config": {"url": "http://hooks.internal.test:9/in"}});
    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        Some(&alice),
        create,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    bus.publish_to("user:alice", "a", &json!(1)).unwrap();
    wait_until(LONG, "dead", || bus.outbox().stats().unwrap().dead == 1);

    let one = call(
        &bus,
        "GET",
        &format!("/webhooks/subscriptions/{id}"),
        Some(&alice),
        Value::Null,
    );
    let history = call(
        &bus,
        "GET",
        &format!("/webhooks/subscriptions/{id}/history"),
        Some(&alice),
        Value::Null,
    );
    assert_eq!((one.status, history.status), (200, 200));
    let described = one.body["history"][0]["statusDescription"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(described.contains("not allowed"), "{described}");
    for body in [one.body.to_string(), history.body.to_string()] {
        assert!(!body.contains("10.20.30.40"), "{body}");
    }
    let d = bus.outbox().dead().next().unwrap().unwrap();
    let attempt = &bus.outbox().attempts(d.id).unwrap()[0];
    let stored = attempt.error.as_ref().unwrap().message.clone();
    assert!(!stored.contains("10.20.30.40"), "{stored}");
    assert!(!d.last_error.unwrap_or_default().contains("10.20.30.40"));
}

/// Issue 10: `ApiRequest`'s derived `Debug` printed the body, secrets and
/// all.
#[test]
fn request_debug_redacts_the_body() {
    let caller = Caller::new("alice", ["user"]);
    let body =
        br#"{"name":"n","events":["a"],"config":{"url":"https://x/","secret":"top-secret-value"}}"#;
    let req = ApiRequest {
        method: "POST",
        path: "/webhooks/subscriptions",
        query: "",
        caller: Some(&caller),
        body,
    };
    let shown = format!("{req:?}");
    assert!(!shown.contains("top-secret-value"), "{shown}");
    // Nor as a list of byte values.
    assert!(!shown.contains("116, 111, 112"), "{shown}");
    assert!(
        shown.contains("POST") && shown.contains("/webhooks/subscriptions"),
        "{shown}"
    );
    assert!(shown.contains(&body.len().to_string()), "{shown}");
}

/// Issue 13: ping sends a signed test request now and returns the outcome;
/// nothing is stored. Through the API and the REST route (owner only).
#[test]
fn ping_sends_a_signed_test_request_and_stores_nothing() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let sub = bus
        .subscribe(
            hookbus::NewSubscription::new("s", rx.url("/hook"))
                .events(["e"])
                .secret("shh")
                .owner("alice"),
        )
        .unwrap();
    let a = bus.subscriptions().ping(sub.id).unwrap();
    assert_eq!(a.status, Some(204));
    assert!(a.succeeded());
    let reqs = rx.wait_for(1, LONG);
    assert_eq!(reqs[0].header("x-webhook-event"), Some(hookbus::PING_EVENT));
    assert!(reqs[0].signed_with(b"shh", "x-hub-signature-256"));
    assert_eq!(reqs[0].json()["ping"], json!(true));
    let stats = bus.outbox().stats().unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 0, 0));

    // A receiver that is not there: the error, not a panic or an Err.
    let down = bus
        .subscribe(hookbus::NewSubscription::new("down", crate::dead_url()).events(["e"]))
        .unwrap();
    let a = bus.subscriptions().ping(down.id).unwrap();
    assert_eq!(a.status, None);
    assert!(a.error.is_some());

    // REST: the owner may ping; anyone else gets 404.
    let alice = Caller::new("alice", Vec::<String>::new());
    let bob = Caller::new("bob", Vec::<String>::new());
    let path = format!("/webhooks/subscriptions/{}/ping", sub.id);
    let r = call(&bus, "POST", &path, Some(&alice), Value::Null);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["statusCode"], json!(204));
    assert_eq!(r.body["succeeded"], json!(true));
    assert_eq!(rx.wait_for(2, LONG).len(), 2);
    let r = call(&bus, "POST", &path, Some(&bob), Value::Null);
    assert_eq!(r.status, 404);
    let r = call(&bus, "GET", &path, Some(&alice), Value::Null);
    assert_eq!(r.status, 405);
}
