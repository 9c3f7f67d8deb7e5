//! The tenant API v1 (`/webhooks/v1`) through `hookbus::rest::handle`,
//! against a real store and a real receiver: the REST shape (201 with
//! `Location`, PATCH, cursor pages, problem+json, unknown fields refused),
//! tenant-wide access by role, test events, the delivery log, resend,
//! retry and replay, and the OpenAPI document checked against the routes.

use std::collections::BTreeSet;

use hookbus::rest::v1::{OPENAPI, ROUTES};
use hookbus::rest::{ApiResponse, Caller, MANAGE_ROLE, READ_ROLE};
use hookbus::signing::{DEFAULT_TOLERANCE, verify_standard};
use hookbus::{Bus, NewSubscription};
use serde_json::{Value, json};

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, dead_url, open, wait_until};

const V1: &str = "/webhooks/v1";

fn call(bus: &Bus, method: &str, path: &str, caller: &Caller, body: Value) -> ApiResponse {
    crate::api::call(bus, method, path, Some(caller), body)
}

fn user(id: &str, tenant: &str, roles: &[&str]) -> Caller {
    Caller::new(id, roles.iter().copied()).tenant(tenant)
}

/// Asserts a problem+json answer with `status` and `code`; returns it.
fn problem(r: &ApiResponse, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.body);
    for f in ["type", "title", "status", "detail", "code"] {
        assert!(r.body.get(f).is_some(), "problem without {f}: {}", r.body);
    }
    assert_eq!(r.body["status"], status);
    assert_eq!(r.body["code"], code, "{}", r.body);
    r.body.clone()
}

/// Creates an endpoint; returns the answer's body (with its one-time
/// secret).
fn create(bus: &Bus, caller: &Caller, body: Value) -> Value {
    let r = call(bus, "POST", &format!("{V1}/endpoints"), caller, body);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap();
    let location = r.headers.iter().find(|(n, _)| *n == "location").unwrap();
    assert_eq!(location.1, format!("{V1}/endpoints/{id}"));
    r.body
}

fn endpoint_ids(bus: &Bus, caller: &Caller) -> Vec<String> {
    let r = call(
        bus,
        "GET",
        &format!("{V1}/endpoints?limit=100"),
        caller,
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["next_cursor"].is_null());
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn endpoints_have_a_conventional_shape() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let alice = user("alice", "acme", &[]);
    let e = create(
        &bus,
        &alice,
        json!({"name": "orders", "url": dead_url(), "events": ["order.created"]}),
    );
    let id = e["id"].as_str().unwrap().to_owned();
    // Standard Webhooks by default, with a generated secret shown once.
    assert_eq!(e["signing"], "standard_webhooks");
    assert!(e["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(e["has_secret"], true);
    assert_eq!(e["enabled"], true);
    assert_eq!(e["owner"], "alice");
    let one = format!("{V1}/endpoints/{id}");
    let got = call(&bus, "GET", &one, &alice, Value::Null);
    assert_eq!(got.status, 200);
    assert!(got.body.get("secret").is_none(), "{}", got.body);
    assert!(!got.body.to_string().contains("whsec_"));

    // An unknown field is refused, naming it, and changes nothing.
    let r = call(
        &bus,
        "PATCH",
        &one,
        &alice,
        json!({"secrett": "x", "enabled": false}),
    );
    let p = problem(&r, 400, "unknown_field");
    assert_eq!(p["errors"][0]["field"], "secrett");
    assert_eq!(
        call(&bus, "GET", &one, &alice, Value::Null).body["enabled"],
        true
    );
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints"),
        &alice,
        json!({"name": "x", "url": dead_url(), "events": ["a"], "contentType": "x"}),
    );
    assert_eq!(
        problem(&r, 400, "unknown_field")["errors"][0]["field"],
        "contentType"
    );
    // A missing or bad field names it.
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints"),
        &alice,
        json!({"name": "x", "events": ["a"]}),
    );
    assert_eq!(problem(&r, 400, "validation")["errors"][0]["field"], "url");
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints"),
        &alice,
        json!({"name": "x", "url": "ftp://example.com", "events": ["a"]}),
    );
    assert_eq!(problem(&r, 400, "validation")["errors"][0]["field"], "url");
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints"),
        &alice,
        json!([1, 2]),
    );
    problem(&r, 400, "invalid_body");

    // PATCH changes only what it names; null removes the rate limit.
    let r = call(
        &bus,
        "PATCH",
        &one,
        &alice,
        json!({"enabled": false, "rate_limit": {"per_second": 5, "burst": 2}, "order": "fifo", "on_dead_letter": "halt"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["enabled"], false);
    assert_eq!(r.body["rate_limit"], json!({"per_second": 5, "burst": 2}));
    assert_eq!(r.body["order"], "fifo");
    assert_eq!(r.body["on_dead_letter"], "halt");
    assert_eq!(r.body["name"], "orders");
    let r = call(
        &bus,
        "PATCH",
        &one,
        &alice,
        json!({"rate_limit": null, "order": "unordered"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["rate_limit"].is_null());
    assert!(r.body["on_dead_letter"].is_null());
    // PUT is not a v1 method: 405 with Allow.
    let r = call(&bus, "PUT", &one, &alice, json!({}));
    problem(&r, 405, "method_not_allowed");
    let allow = &r.headers.iter().find(|(n, _)| *n == "allow").unwrap().1;
    assert!(
        allow.contains("PATCH") && allow.contains("DELETE"),
        "{allow}"
    );

    // Rotation: a new secret shown once, the old one valid for the grace.
    let r = call(
        &bus,
        "POST",
        &format!("{one}/rotate-secret"),
        &alice,
        json!({"grace_period_seconds": 3600}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(r.body["secret"], e["secret"]);
    assert!(r.body["previous_valid_until"].is_string());
    let r = call(
        &bus,
        "POST",
        &format!("{one}/rotate-secret"),
        &alice,
        json!({"grace_period_seconds": 8 * 86400}),
    );
    assert_eq!(
        problem(&r, 400, "validation")["errors"][0]["field"],
        "grace_period_seconds"
    );

    let r = call(&bus, "DELETE", &one, &alice, Value::Null);
    assert_eq!(r.status, 204);
    problem(
        &call(&bus, "GET", &one, &alice, Value::Null),
        404,
        "not_found",
    );
    problem(
        &call(
            &bus,
            "GET",
            &format!("{V1}/endpoints/not-an-id"),
            &alice,
            Value::Null,
        ),
        404,
        "not_found",
    );
    problem(
        &crate::api::call(&bus, "GET", &one, None, Value::Null),
        401,
        "unauthorized",
    );
    problem(
        &call(&bus, "GET", &format!("{V1}/nothing"), &alice, Value::Null),
        404,
        "not_found",
    );
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn a_tenant_manages_its_endpoints_by_role() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let alice = user("alice", "acme", &[]);
    let bob = user("bob", "acme", &[]);
    let reader = user("carol", "acme", &[READ_ROLE]);
    let manager = user("dave", "acme", &[MANAGE_ROLE]);
    let outsider = user("eve", "globex", &[MANAGE_ROLE]);
    let body = |name: &str| json!({"name": name, "url": dead_url(), "events": ["*"]});
    let a = create(&bus, &alice, body("alice's"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = create(&bus, &manager, body("dave's"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = |id: &str| format!("{V1}/endpoints/{id}");

    // Per-user ownership: bob sees none of them, alice only hers.
    assert!(endpoint_ids(&bus, &bob).is_empty());
    problem(
        &call(&bus, "GET", &one(&a), &bob, Value::Null),
        404,
        "not_found",
    );
    assert_eq!(endpoint_ids(&bus, &alice), vec![a.clone()]);
    // The tenant's reader sees both, changes neither.
    assert_eq!(endpoint_ids(&bus, &reader), vec![a.clone(), d.clone()]);
    assert_eq!(
        call(&bus, "GET", &one(&a), &reader, Value::Null).status,
        200
    );
    problem(
        &call(&bus, "PATCH", &one(&a), &reader, json!({"name": "x"})),
        403,
        "forbidden",
    );
    problem(
        &call(&bus, "POST", &format!("{V1}/endpoints"), &reader, body("r")),
        403,
        "forbidden",
    );
    problem(
        &call(
            &bus,
            "POST",
            &format!("{}/test", one(&a)),
            &reader,
            json!({}),
        ),
        403,
        "forbidden",
    );
    // The tenant's manager changes a colleague's (a departed employee's).
    let r = call(
        &bus,
        "PATCH",
        &one(&a),
        &manager,
        json!({"name": "kept by dave"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Another tenant's manager sees nothing and reaches nothing.
    assert!(endpoint_ids(&bus, &outsider).is_empty());
    for (m, p) in [
        ("GET", one(&a)),
        ("PATCH", one(&a)),
        ("DELETE", one(&a)),
        ("GET", format!("{}/health", one(&a))),
        ("POST", format!("{}/test", one(&a))),
        ("POST", format!("{}/rotate-secret", one(&a))),
        ("POST", format!("{}/retry-dead", one(&a))),
    ] {
        let r = call(&bus, m, &p, &outsider, json!({}));
        problem(&r, 404, "not_found");
    }
    let r = call(
        &bus,
        "GET",
        &format!("{V1}/deliveries?endpoint_id={a}"),
        &outsider,
        Value::Null,
    );
    problem(&r, 404, "not_found");
    // The seed routes follow the same rule: the manager sees alice's.
    let r = crate::api::call(
        &bus,
        "GET",
        "/webhooks/subscriptions",
        Some(&manager),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = crate::api::call(
        &bus,
        "GET",
        &format!("/webhooks/subscriptions/{a}"),
        Some(&manager),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = crate::api::call(
        &bus,
        "GET",
        &format!("/webhooks/subscriptions/{a}"),
        Some(&bob),
        Value::Null,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = crate::api::call(
        &bus,
        "PUT",
        &format!("/webhooks/subscriptions/{a}"),
        Some(&reader),
        json!({"name": "x"}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        call(&bus, "DELETE", &one(&a), &manager, Value::Null).status,
        204
    );
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn endpoint_lists_are_cursor_pages() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let m = user("m", "acme", &[MANAGE_ROLE]);
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(
            create(
                &bus,
                &m,
                json!({"name": format!("e{i}"), "url": dead_url(), "events": ["a"]}),
            )["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Another tenant's endpoints are never in the pages.
    create(
        &bus,
        &user("x", "globex", &[]),
        json!({"name": "other", "url": dead_url(), "events": ["a"]}),
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let r = call(
            &bus,
            "GET",
            &format!("{V1}/endpoints?limit=2{q}"),
            &m,
            Value::Null,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let data = r.body["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, made);
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=nope",
        "colour=red",
    ] {
        let r = call(
            &bus,
            "GET",
            &format!("{V1}/endpoints?{bad}"),
            &m,
            Value::Null,
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.content_type, "application/problem+json");
    }
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn test_events_are_logged_and_resent() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let rx = TestReceiver::start();
    let m = user("m", "acme", &[MANAGE_ROLE]);
    let e = create(
        &bus,
        &m,
        json!({"name": "hooks", "url": rx.url("/in"), "events": ["order.created"]}),
    );
    let id = e["id"].as_str().unwrap().to_owned();
    let secret = e["secret"].as_str().unwrap().to_owned();
    // A test event for this endpoint alone, though its filter names another event.
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints/{id}/test"),
        &m,
        json!({}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["event_type"], "webhook.test");
    let delivery = r.body["id"].as_str().unwrap().to_owned();
    let got = rx.wait_for(1, LONG);
    let req = &got[0];
    verify_standard(&secret, req.header_pairs(), &req.body, DEFAULT_TOLERANCE)
        .expect("signed with the secret shown at create");
    assert_eq!(req.json()["test"], true);

    // It is in the log with its attempt.
    let one = format!("{V1}/deliveries/{delivery}");
    wait_until(LONG, "the test delivery delivered", || {
        call(&bus, "GET", &one, &m, Value::Null).body["state"] == "delivered"
    });
    let d = call(&bus, "GET", &one, &m, Value::Null);
    assert_eq!(d.body["attempt_log"][0]["status_code"], 204, "{}", d.body);
    assert_eq!(d.body["attempt_log"][0]["succeeded"], true);
    assert_eq!(d.body["payload"]["test"], true);
    let log = call(&bus, "GET", &format!("{V1}/deliveries"), &m, Value::Null);
    assert_eq!(log.body["data"][0]["id"], delivery.as_str(), "{}", log.body);

    // Resend: a new delivery of the same event, received again.
    let r = call(&bus, "POST", &format!("{one}/resend"), &m, Value::Null);
    problem(&r, 400, "invalid_body");
    let r = call(&bus, "POST", &format!("{one}/resend"), &m, json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_ne!(r.body["id"], delivery.as_str());
    assert_eq!(r.body["event_id"], d.body["event_id"]);
    let got = rx.wait_for(2, LONG);
    assert_eq!(got[1].json(), got[0].json());
    // Test events are limited per endpoint: the burst, then 429.
    let mut limited = None;
    for _ in 0..=hookbus::TEST_REQUEST_BURST {
        let r = call(
            &bus,
            "POST",
            &format!("{V1}/endpoints/{id}/test"),
            &m,
            json!({}),
        );
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let r = limited.expect("a 429 within the burst and one more");
    problem(&r, 429, "rate_limited");
    assert!(r.headers.iter().any(|(n, _)| *n == "retry-after"));
    // Another tenant cannot read or resend it.
    let outsider = user("x", "globex", &[MANAGE_ROLE]);
    problem(
        &call(&bus, "GET", &one, &outsider, Value::Null),
        404,
        "not_found",
    );
    problem(
        &call(&bus, "POST", &format!("{one}/resend"), &outsider, json!({})),
        404,
        "not_found",
    );
    let theirs = call(
        &bus,
        "GET",
        &format!("{V1}/deliveries"),
        &outsider,
        Value::Null,
    );
    assert_eq!(theirs.body["data"], json!([]));
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn the_delivery_log_filters_and_pages() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let rx = TestReceiver::with(|r| {
        if r.path == "/bad" {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let m = user("m", "acme", &[MANAGE_ROLE]);
    let good = create(
        &bus,
        &m,
        json!({"name": "good", "url": rx.url("/good"), "events": ["*"]}),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bad = create(
        &bus,
        &m,
        json!({"name": "bad", "url": rx.url("/bad"), "events": ["*"]}),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..6 {
        let name = if i % 2 == 0 {
            "order.created"
        } else {
            "order.paid"
        };
        bus.publish_to("acme", name, &json!({"n": i})).unwrap();
    }
    bus.flush().unwrap();
    wait_until(LONG, "6 delivered and 6 dead", || {
        let s = bus.outbox().stats().unwrap();
        s.delivered == 6 && s.dead == 6
    });
    let get = |q: &str| {
        let r = call(
            &bus,
            "GET",
            &format!("{V1}/deliveries?{q}"),
            &m,
            Value::Null,
        );
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.body
    };
    let all = get("limit=100");
    let ids: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 12);
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    assert_eq!(
        get(&format!("endpoint_id={bad}&limit=100"))["data"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    let dead = get("state=dead&limit=100");
    assert!(
        dead["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["endpoint_id"] == bad.as_str() && d["state"] == "dead")
    );
    assert_eq!(dead["data"].as_array().unwrap().len(), 6);
    let paid = get(&format!("event_type=order.paid&endpoint_id={good}"));
    assert_eq!(paid["data"].as_array().unwrap().len(), 3);
    assert_eq!(get("since=2999-01-01T00:00:00Z")["data"], json!([]));
    assert_eq!(get("until=2000-01-01T00:00:00Z")["data"], json!([]));
    // Pages of 5 give all 12, each once.
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let page = get(&format!("limit=5{cursor}"));
        for d in page["data"].as_array().unwrap() {
            assert!(seen.insert(d["id"].as_str().unwrap().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12);
    for bad_q in [
        "state=lost",
        "since=yesterday",
        "endpoint_id=x",
        "limit=1000",
        "sort=asc",
    ] {
        let r = call(
            &bus,
            "GET",
            &format!("{V1}/deliveries?{bad_q}"),
            &m,
            Value::Null,
        );
        assert_eq!(r.status, 400, "{bad_q}: {}", r.body);
    }

    // The failing endpoint's health shows its errors; its dead letters
    // can be retried, and its past replayed.
    let h = call(
        &bus,
        "GET",
        &format!("{V1}/endpoints/{bad}/health"),
        &m,
        Value::Null,
    );
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["success_rate"], 0.0);
    assert_eq!(h.body["last_errors"][0]["status_code"], 500, "{}", h.body);
    rx.respond(|_| Reply::ok());
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints/{bad}/retry-dead"),
        &m,
        json!({}),
    );
    assert_eq!(r.body, json!({"retried": 6}));
    wait_until(LONG, "the retried ones delivered", || {
        bus.outbox().stats().unwrap().delivered == 12
    });
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints/{good}/replay"),
        &m,
        json!({"since": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 400, "a span over 14 days: {}", r.body);
    let since = hookbus::Timestamp::from_millis(hookbus::Timestamp::now().as_millis() - 3_600_000);
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints/{good}/replay"),
        &m,
        json!({"since": since.to_string()}),
    );
    assert_eq!(r.body, json!({"replayed": 6}), "{}", r.body);
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn the_openapi_document_matches_the_routes() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if method != "parameters" {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, routed,
        "every route documented, every documented route routed"
    );
    // Every $ref resolves (walking the document, however it is laid out).
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 10, "{found:?}");
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a local schema");
        assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
    }

    // Every documented route answers (not 404 for the route, nor 405),
    // with ids of real objects.
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let rx = TestReceiver::start();
    let m = user("m", "acme", &[MANAGE_ROLE]);
    let e = create(
        &bus,
        &m,
        json!({"name": "e", "url": rx.url("/"), "events": ["*"]}),
    );
    let eid = e["id"].as_str().unwrap().to_owned();
    bus.publish_to("acme", "a", &json!({})).unwrap();
    bus.flush().unwrap();
    rx.wait_for(1, LONG);
    let did = bus
        .outbox()
        .for_subscription(eid.parse().unwrap(), true)
        .next()
        .unwrap()
        .unwrap()
        .id
        .to_string();
    for (method, path) in ROUTES {
        if *method == "DELETE" {
            continue; // last, below
        }
        let id = if path.contains("/deliveries/") {
            &did
        } else {
            &eid
        };
        let body = match path.rsplit('/').next().unwrap() {
            "endpoints" if *method == "POST" => {
                json!({"name": "n", "url": rx.url("/"), "events": ["a"]})
            }
            "replay" => {
                json!({"since": hookbus::Timestamp::from_millis(hookbus::Timestamp::now().as_millis() - 60_000).to_string()})
            }
            _ if *method == "PATCH" => json!({"name": "renamed"}),
            _ if *method == "POST" => json!({}),
            _ => Value::Null,
        };
        let r = call(&bus, method, &path.replace("{id}", id), &m, body);
        assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    }
    let r = call(
        &bus,
        "DELETE",
        &format!("{V1}/endpoints/{eid}"),
        &m,
        Value::Null,
    );
    assert_eq!(r.status, 204);
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn endpoints_made_in_rust_without_a_tenant_stay_out_of_tenants() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let s = bus
        .subscribe(
            NewSubscription::new("app-wide", dead_url())
                .event("a")
                .owner("m"),
        )
        .unwrap();
    let m = user("m", "acme", &[MANAGE_ROLE]);
    assert!(endpoint_ids(&bus, &m).is_empty());
    problem(
        &call(
            &bus,
            "GET",
            &format!("{V1}/endpoints/{}", s.id),
            &m,
            Value::Null,
        ),
        404,
        "not_found",
    );
    // Its owner without a tenant reaches it, as with the seed routes.
    let own = Caller::new("m", Vec::<String>::new());
    assert_eq!(
        call(
            &bus,
            "GET",
            &format!("{V1}/endpoints/{}", s.id),
            &own,
            Value::Null
        )
        .status,
        200
    );
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn the_event_catalog_is_listed_enforced_and_its_examples_sent() {
    use hookbus::catalog::EventType;
    let dir = crate::test_dir();
    let bus = crate::builder(dir.path())
        .event_type(
            EventType::new("order.created", "An order was placed.")
                .example(json!({"id": 42, "total_cents": 1999})),
        )
        .event_type(EventType::new("order.paid", "An order was paid."))
        .open()
        .unwrap();
    let rx = TestReceiver::start();
    let m = user("m", "acme", &[MANAGE_ROLE]);
    let r = call(&bus, "GET", &format!("{V1}/event-types"), &m, Value::Null);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"][0]["name"], "order.created");
    assert_eq!(r.body["data"][0]["description"], "An order was placed.");
    assert_eq!(r.body["data"][0]["example"]["id"], 42);
    assert_eq!(r.body["data"][1]["name"], "order.paid");
    // Subscribing to a type outside the catalog is refused, naming the field.
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints"),
        &m,
        json!({"name": "x", "url": rx.url("/"), "events": ["order.shipped"]}),
    );
    let p = problem(&r, 400, "validation");
    assert_eq!(p["errors"][0]["field"], "events");
    assert!(
        p["detail"].as_str().unwrap().contains("order.shipped"),
        "{p}"
    );
    let e = create(
        &bus,
        &m,
        json!({"name": "x", "url": rx.url("/"), "events": ["order.paid"]}),
    );
    // A test event of a catalog type carries its example.
    let id = e["id"].as_str().unwrap();
    let r = call(
        &bus,
        "POST",
        &format!("{V1}/endpoints/{id}/test"),
        &m,
        json!({"event_type": "order.created"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let got = rx.wait_for(1, LONG);
    assert_eq!(got[0].json(), json!({"id": 42, "total_cents": 1999}));
    assert_eq!(got[0].header("x-webhook-event"), Some("order.created"));
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn the_delivery_log_pages_through_many_deliveries_of_several_endpoints() {
    let dir = crate::test_dir();
    // Nothing is sent: every delivery stays pending, in the log.
    let bus = crate::builder(dir.path()).deliver(false).open().unwrap();
    let m = user("m", "acme", &[MANAGE_ROLE]);
    for name in ["a", "b"] {
        create(
            &bus,
            &m,
            json!({"name": name, "url": dead_url(), "events": ["*"]}),
        );
    }
    for i in 0..150 {
        bus.publish_to("acme", "tick", &json!({ "i": i })).unwrap();
    }
    bus.flush().unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = String::new();
    for _ in 0..20 {
        let r = call(
            &bus,
            "GET",
            &format!("{V1}/deliveries?limit=100{cursor}"),
            &m,
            Value::Null,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        seen.extend(
            r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 300);
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted, "newest first, each once");
    bus.shutdown(std::time::Duration::from_secs(5)).unwrap();
}
