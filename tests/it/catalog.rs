//! The event catalog (issue 28 item 3): `Builder::event_type`, checked at
//! open; `Bus::event_types` in registration order; subscriptions limited to
//! the catalog's names (Rust API and the seed REST routes); and, with
//! `Builder::validate_payloads` (feature `json-schema`), payloads checked
//! against their type's schema at every publish entry. On the store
//! `HOOKBUS_TEST_STORE` picks.

use hookbus::catalog::EventType;
use hookbus::rest::{ApiResponse, Caller};
use hookbus::{Builder, Bus, Error, NewSubscription, SubscriptionPatch};
use serde_json::{Value, json};

use crate::api::call;
use crate::{builder, dead_url, open};

fn orders() -> Vec<EventType> {
    vec![
        EventType::new("order.created", "An order was placed.")
            .example(json!({"id": 1, "total_cents": 1999})),
        EventType::new("order.paid", "An order was paid."),
        EventType::new("invoice.sent", "An invoice was sent."),
    ]
}

fn with_catalog(b: Builder, types: Vec<EventType>) -> Builder {
    types.into_iter().fold(b, Builder::event_type)
}

fn config_error(r: Result<Bus, Error>) -> String {
    match r {
        Err(Error::InvalidConfig(m)) => m,
        Err(e) => panic!("expected InvalidConfig, got {e}"),
        Ok(_) => panic!("expected InvalidConfig, the bus opened"),
    }
}

fn unknown_event(r: Result<hookbus::Subscription, Error>, name: &str) {
    match r {
        Err(e @ Error::InvalidEventName { .. }) => {
            let m = e.to_string();
            assert!(m.contains(name) && m.contains("catalog"), "{m}");
        }
        Err(e) => panic!("expected InvalidEventName for {name}, got {e}"),
        Ok(s) => panic!("expected InvalidEventName for {name}, created {}", s.id),
    }
}

fn field(r: &ApiResponse) -> &str {
    r.body["responseStatus"]["errors"][0]["fieldName"]
        .as_str()
        .unwrap_or("")
}

#[test]
fn lists_the_catalog_in_registration_order() {
    let dir = crate::test_dir();
    let bus = with_catalog(builder(dir.path()), orders()).open().unwrap();
    let names: Vec<&str> = bus.event_types().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["order.created", "order.paid", "invoice.sent"]);
    assert_eq!(bus.event_types(), orders().as_slice());
    assert_eq!(bus.config().event_types(), orders().as_slice());
    assert_eq!(
        serde_json::to_value(&bus.event_types()[0]).unwrap(),
        json!({"name": "order.created", "description": "An order was placed.",
               "schema": null, "example": {"id": 1, "total_cents": 1999}})
    );
    drop(bus);

    // None registered: an empty catalog.
    let other = crate::test_dir();
    assert!(open(other.path()).event_types().is_empty());
}

#[test]
fn subscriptions_name_registered_types_or_the_wildcard() {
    let dir = crate::test_dir();
    let bus = with_catalog(builder(dir.path()), orders()).open().unwrap();
    let subs = bus.subscriptions();
    let url = dead_url();

    // create
    let ok = subs
        .create(NewSubscription::new("orders", &url).events(["order.created", "order.paid"]))
        .unwrap();
    subs.create(NewSubscription::new("all", format!("{url}/all")).event("*"))
        .unwrap();
    unknown_event(
        subs.create(
            NewSubscription::new("typo", format!("{url}/t")).events(["order.paid", "order.payed"]),
        ),
        "order.payed",
    );
    // update
    let refused = subs.update(ok.id, SubscriptionPatch::new().events(["nope"]));
    unknown_event(refused, "nope");
    let moved = subs
        .update(
            ok.id,
            SubscriptionPatch::new().events(["invoice.sent", "*"]),
        )
        .unwrap();
    assert_eq!(moved.events, ["invoice.sent", "*"]);
    // A patch that does not touch the events is not checked against them.
    subs.update(ok.id, SubscriptionPatch::new().name("renamed"))
        .unwrap();
    // ensure
    unknown_event(
        subs.ensure(NewSubscription::new("boot", format!("{url}/b")).event("order.shipped")),
        "order.shipped",
    );
    subs.ensure(NewSubscription::new("boot", format!("{url}/b")).event("order.paid"))
        .unwrap();
    // Nothing refused was stored.
    let names: Vec<String> = subs.list().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["renamed", "all", "boot"]);
}

#[test]
fn the_seed_rest_routes_refuse_unknown_types_with_the_events_field() {
    let dir = crate::test_dir();
    let bus = with_catalog(builder(dir.path()), orders()).open().unwrap();
    let alice = Caller::new("alice", Vec::<String>::new());
    let a = Some(&alice);
    let url = dead_url();
    let create = |events: Value| json!({"name": "hook", "events": events, "config": {"url": url, "content_type": "application/json"}});

    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        a,
        create(json!(["order.refunded"])),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(field(&r), "events", "{}", r.body);
    assert_eq!(
        r.body["responseStatus"]["errorCode"], "InvalidEventName",
        "{}",
        r.body
    );
    let message = r.body["responseStatus"]["message"].as_str().unwrap();
    assert!(
        message.contains("order.refunded") && message.contains("catalog"),
        "{message}"
    );
    assert!(bus.subscriptions().list().unwrap().is_empty());

    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        a,
        create(json!(["order.created"])),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        &bus,
        "PUT",
        &format!("/webhooks/subscriptions/{id}"),
        a,
        json!({"events": ["order.created", "order.voided"]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(field(&r), "events", "{}", r.body);
    assert!(r.body.to_string().contains("order.voided"), "{}", r.body);
    let r = call(
        &bus,
        "PUT",
        &format!("/webhooks/subscriptions/{id}"),
        a,
        json!({"events": ["*"]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn an_empty_catalog_accepts_any_event_name() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let url = dead_url();
    let s = bus
        .subscribe(NewSubscription::new("any", &url).events(["whatever.happens", "x"]))
        .unwrap();
    bus.subscriptions()
        .update(s.id, SubscriptionPatch::new().events(["something.else"]))
        .unwrap();
    let alice = Caller::new("alice", Vec::<String>::new());
    let body =
        json!({"name": "rest", "events": ["made.up"], "config": {"url": format!("{url}/r")}});
    let r = call(&bus, "POST", "/webhooks/subscriptions", Some(&alice), body);
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn open_refuses_a_bad_catalog() {
    let dir = crate::test_dir();
    let b = || builder(dir.path());

    let m = config_error(b().event_type(EventType::new("order created", "x")).open());
    assert!(m.contains("order created") && m.contains("letters"), "{m}");
    let m = config_error(b().event_type(EventType::new("*", "x")).open());
    assert!(m.contains("event name `*`"), "{m}");
    let m = config_error(
        b().event_type(EventType::new("a", "x"))
            .event_type(EventType::new("b", "y"))
            .event_type(EventType::new("a", "z"))
            .open(),
    );
    assert!(m.contains("`a`") && m.contains("twice"), "{m}");
    // build checks the same, without opening anything.
    assert!(matches!(
        b().event_type(EventType::new("", "x")).build(),
        Err(Error::InvalidConfig(_))
    ));

    let schema =
        json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]});
    if cfg!(feature = "json-schema") {
        let m = config_error(
            b().event_type(EventType::new("a", "x").schema(json!({"type": "no-such-type"})))
                .open(),
        );
        assert!(
            m.contains("`a`") && m.contains("schema does not compile"),
            "{m}"
        );
        let m = config_error(
            b().event_type(
                EventType::new("a", "x")
                    .schema(schema.clone())
                    .example(json!({"id": "one"})),
            )
            .open(),
        );
        assert!(
            m.contains("example does not satisfy") && m.contains("/id"),
            "{m}"
        );
        // Never fetched: a reference outside the schema does not compile.
        let m = config_error(
            b().event_type(
                EventType::new("a", "x").schema(json!({"$ref": "http://127.0.0.1:9/schema.json"})),
            )
            .open(),
        );
        assert!(m.contains("schema does not compile"), "{m}");
        // A good one opens.
        b().event_type(
            EventType::new("a", "x")
                .schema(schema)
                .example(json!({"id": 1})),
        )
        .open()
        .unwrap();
    } else {
        // Without the feature a schema is refused, never ignored.
        let m = config_error(
            b().event_type(EventType::new("a", "x").schema(schema))
                .open(),
        );
        assert!(m.contains("json-schema"), "{m}");
    }
}

#[cfg(feature = "json-schema")]
mod validation {
    use std::time::Duration;

    use hookbus::Message;

    use super::*;
    use crate::LONG;
    use crate::receiver::TestReceiver;

    fn typed() -> Vec<EventType> {
        vec![
            EventType::new("order.created", "An order was placed.").schema(json!({
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
                },
                "required": ["id"]
            })),
            EventType::new("order.paid", "An order was paid; no schema."),
        ]
    }

    fn invalid(r: Result<hookbus::EventId, Error>, pointer: &str) {
        match r {
            Err(e @ Error::PayloadInvalid { .. }) => {
                let Error::PayloadInvalid {
                    event, pointer: at, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(event, "order.created");
                assert_eq!(at, pointer, "{e}");
                assert!(e.to_string().contains(pointer), "{e}");
            }
            Err(e) => panic!("expected PayloadInvalid at {pointer}, got {e}"),
            Ok(id) => panic!("expected PayloadInvalid at {pointer}, published {id}"),
        }
    }

    #[test]
    fn an_invalid_payload_is_refused_and_nothing_is_stored() {
        let rx = TestReceiver::start();
        let dir = crate::test_dir();
        let bus = with_catalog(builder(dir.path()), typed())
            .validate_payloads(true)
            .open()
            .unwrap();
        assert!(bus.config().validate_payloads());
        bus.subscribe(NewSubscription::new("all", rx.url("/in")).event("*"))
            .unwrap();
        bus.subscribe(
            NewSubscription::new("acme", rx.url("/acme"))
                .event("*")
                .tenant("acme"),
        )
        .unwrap();

        let bad = json!({"id": "42"});
        invalid(bus.publish("order.created", &bad), "/id");
        invalid(bus.publish_durable("order.created", &bad), "/id");
        invalid(bus.publish_to("acme", "order.created", &bad), "/id");
        invalid(bus.publish_durable_to("acme", "order.created", &bad), "/id");
        invalid(
            bus.publish_message(Message::new("order.created", &json!({"lines": []}))),
            "/",
        );
        invalid(
            bus.publish_message(
                Message::new(
                    "order.created",
                    &json!({"id": 1, "lines": [{"sku": "a"}, {}]}),
                )
                .idempotency_key("k-1"),
            ),
            "/lines/1",
        );
        invalid(
            bus.publish_message_durable(Message::new("order.created", &json!([1, 2]))),
            "/",
        );
        #[cfg(feature = "tokio")]
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                invalid(
                    bus.publish_durable_async("order.created", &bad).await,
                    "/id",
                );
                invalid(
                    bus.publish_durable_to_async("acme", "order.created", &bad)
                        .await,
                    "/id",
                );
                invalid(
                    bus.publish_message_durable_async(Message::new("order.created", &bad))
                        .await,
                    "/id",
                );
            });
        }
        bus.flush().unwrap();
        let stats = crate::consistent(&bus);
        assert_eq!(
            (stats.pending, stats.delivered, stats.dead),
            (0, 0, 0),
            "nothing refused was stored"
        );
        // The idempotency key of a refused message was not taken.
        bus.publish_message(
            Message::new("order.created", &json!({"id": 1, "lines": [{"sku": "a"}]}))
                .idempotency_key("k-1"),
        )
        .unwrap();

        // Valid ones, a type without a schema and a name outside the
        // catalog go through, and are delivered.
        bus.publish("order.created", &json!({"id": 7})).unwrap();
        bus.publish_to("acme", "order.created", &json!({"id": 8}))
            .unwrap();
        bus.publish("order.paid", &json!("anything")).unwrap();
        bus.publish("not.in.catalog", &json!(null)).unwrap();
        let got = rx.wait_for(5, LONG);
        let mut bodies: Vec<Value> = got.iter().map(|r| r.json()).collect();
        bodies.sort_by_key(Value::to_string);
        assert_eq!(
            bodies,
            [
                json!("anything"),
                json!(null),
                json!({"id": 1, "lines": [{"sku": "a"}]}),
                json!({"id": 7}),
                json!({"id": 8}),
            ]
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(rx.count(), 5, "nothing else was sent");
        crate::wait_until(LONG, "every delivery recorded", || {
            bus.outbox().stats().unwrap().delivered == 5
        });
        let stats = crate::consistent(&bus);
        assert_eq!((stats.pending, stats.dead), (0, 0));
    }

    #[test]
    fn without_validation_an_invalid_payload_is_accepted() {
        let rx = TestReceiver::start();
        let dir = crate::test_dir();
        let bus = with_catalog(builder(dir.path()), typed()).open().unwrap();
        assert!(!bus.config().validate_payloads());
        bus.subscribe(NewSubscription::new("orders", rx.url("/in")).event("order.created"))
            .unwrap();
        bus.publish_durable("order.created", &json!({"id": "not a number"}))
            .unwrap();
        let got = rx.wait_for(1, LONG);
        assert_eq!(got[0].json(), json!({"id": "not a number"}));
    }

    /// `publish_in` (PostgreSQL) checks the payload before it writes in
    /// the caller's transaction: the transaction stays usable, and
    /// nothing is stored.
    #[cfg(feature = "postgres")]
    #[test]
    fn publish_in_checks_the_payload() {
        if !crate::on_postgres() {
            eprintln!("NOTICE: publish_in needs PostgreSQL: run with HOOKBUS_TEST_STORE=postgres");
            return;
        }
        let rx = TestReceiver::start();
        let dir = crate::test_dir();
        let bus = with_catalog(builder(dir.path()), typed())
            .validate_payloads(true)
            .open()
            .unwrap();
        bus.subscribe(NewSubscription::new("orders", rx.url("/in")).event("order.created"))
            .unwrap();
        let mut app = postgres::Client::connect(&crate::postgres::url(), postgres::NoTls).unwrap();
        let mut tx = app.transaction().unwrap();
        invalid(
            bus.publish_in(&mut tx, Message::new("order.created", &json!({"id": []}))),
            "/id",
        );
        bus.publish_in(&mut tx, Message::new("order.created", &json!({"id": 3})))
            .unwrap();
        tx.commit().unwrap();
        let got = rx.wait_for(1, LONG);
        assert_eq!(got[0].json(), json!({"id": 3}));
        crate::wait_until(LONG, "the delivery recorded", || {
            bus.outbox().stats().unwrap().delivered == 1
        });
        let stats = crate::consistent(&bus);
        assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 1, 0));
    }
}
