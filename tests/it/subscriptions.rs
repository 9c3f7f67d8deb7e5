use hookbus::{Error, NewSubscription, SubscriptionPatch};

use crate::open;

#[test]
fn crud_round_trip() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let subs = bus.subscriptions();
    let a = bus
        .subscribe(
            NewSubscription::new("My Webhook", "http://127.0.0.1:1/api/incoming")
                .events(["hello", "goodbye", "hello"])
                .secret("shh")
                .owner("alice"),
        )
        .unwrap();
    assert_eq!(a.name, "My Webhook");
    assert_eq!(a.events, vec!["hello", "goodbye"], "duplicates are dropped");
    assert_eq!(a.url, "http://127.0.0.1:1/api/incoming");
    assert_eq!(a.secret.as_ref().unwrap().expose(), "shh");
    assert_eq!(a.signing, hookbus::Signing::Hub);
    assert!(a.active);
    assert_eq!(a.owner.as_deref(), Some("alice"));
    assert_eq!(a.id.as_uuid().get_version_num(), 7);

    let b = bus
        .subscribe(
            NewSubscription::new("all", "http://127.0.0.1:2/")
                .event("*")
                .owner("bob"),
        )
        .unwrap();
    assert_eq!(subs.get(a.id).unwrap().unwrap(), a);
    assert_eq!(subs.list().unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(subs.list_by_owner("alice").unwrap(), vec![a.clone()]);
    assert_eq!(subs.list_by_owner("nobody").unwrap(), vec![]);
    let ids = |v: Vec<hookbus::Subscription>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(subs.for_event("hello").unwrap()), vec![a.id, b.id]);
    assert_eq!(
        ids(subs.for_event("other").unwrap()),
        vec![b.id],
        "`*` receives everything"
    );

    let a2 = subs
        .update(
            a.id,
            SubscriptionPatch::new()
                .url("http://127.0.0.1:3/new")
                .events(["invoice.paid"])
                .clear_secret()
                .name("Renamed"),
        )
        .unwrap();
    assert_eq!(a2.url, "http://127.0.0.1:3/new");
    assert_eq!(a2.events, vec!["invoice.paid"]);
    assert!(a2.secret.is_none());
    assert_eq!(a2.name, "Renamed");
    assert!(a2.modified_at >= a.modified_at);
    assert_eq!(
        ids(subs.for_event("hello").unwrap()),
        vec![b.id],
        "old index entries are gone"
    );
    assert_eq!(
        ids(subs.for_event("invoice.paid").unwrap()),
        vec![a.id, b.id]
    );

    let a3 = subs
        .update(a.id, SubscriptionPatch::new().active(false))
        .unwrap();
    assert!(!a3.active);
    assert_eq!(
        ids(subs.for_event("invoice.paid").unwrap()),
        vec![b.id],
        "inactive ones receive nothing"
    );

    subs.delete(a.id).unwrap();
    assert!(subs.get(a.id).unwrap().is_none());
    assert!(matches!(subs.delete(a.id), Err(Error::SubscriptionNotFound(id)) if id == a.id));
    assert!(matches!(
        subs.update(a.id, SubscriptionPatch::new().active(true)),
        Err(Error::SubscriptionNotFound(_))
    ));

    // Everything survives a reopen.
    drop(bus);
    let bus = open(dir.path());
    assert_eq!(bus.subscriptions().list().unwrap(), vec![b]);
}

#[test]
fn every_validation_rule_has_a_clear_error_and_stores_nothing() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let existing = bus
        .subscribe(
            NewSubscription::new("keep", "http://127.0.0.1:1/x")
                .events(["hello"])
                .owner("o"),
        )
        .unwrap();
    let ok = || NewSubscription::new("name", "http://127.0.0.1:1/y").events(["hello"]);

    type Case = (NewSubscription, fn(&Error) -> bool, &'static str);
    let cases: Vec<Case> = vec![
        (
            NewSubscription::new("n", "ftp://x/").events(["a"]),
            |e| matches!(e, Error::InvalidUrl { .. }),
            "must use http or https",
        ),
        (
            NewSubscription::new("n", "/relative").events(["a"]),
            |e| matches!(e, Error::InvalidUrl { .. }),
            "not an absolute URL",
        ),
        (
            NewSubscription::new("n", "http://u:p@example.com/").events(["a"]),
            |e| matches!(e, Error::InvalidUrl { .. }),
            "user name or password",
        ),
        (
            NewSubscription::new("n", "http://").events(["a"]),
            |e| matches!(e, Error::InvalidUrl { .. }),
            "subscription url",
        ),
        (
            NewSubscription::new("n", format!("https://example.com/{}", "a".repeat(3000)))
                .events(["a"]),
            |e| matches!(e, Error::InvalidUrl { .. }),
            "longer than 2048",
        ),
        (
            ok().events(["bad name"]),
            |e| matches!(e, Error::InvalidEventName { .. }),
            "letters, digits",
        ),
        (
            ok().events([""]),
            |e| matches!(e, Error::InvalidEventName { .. }),
            "is empty",
        ),
        (
            ok().events(["x".repeat(101)]),
            |e| matches!(e, Error::InvalidEventName { .. }),
            "longer than 100",
        ),
        (
            NewSubscription::new("n", "http://127.0.0.1:1/"),
            |e| matches!(e, Error::NoEvents),
            "at least one event",
        ),
        (
            NewSubscription::new("", "http://127.0.0.1:1/").events(["a"]),
            |e| matches!(e, Error::InvalidName { .. }),
            "is empty",
        ),
        (
            NewSubscription::new("x".repeat(101), "http://127.0.0.1:1/").events(["a"]),
            |e| matches!(e, Error::InvalidName { .. }),
            "longer than 100",
        ),
        (
            NewSubscription::new("a\nb", "http://127.0.0.1:1/").events(["a"]),
            |e| matches!(e, Error::InvalidName { .. }),
            "control characters",
        ),
        (
            ok().secret(""),
            |e| matches!(e, Error::InvalidSecret { .. }),
            "empty",
        ),
        (
            ok().secret("s".repeat(2000)),
            |e| matches!(e, Error::InvalidSecret { .. }),
            "1024",
        ),
        (
            ok().owner(""),
            |e| matches!(e, Error::InvalidOwner { .. }),
            "empty",
        ),
        (
            NewSubscription::new("dup", "http://127.0.0.1:1/x")
                .events(["other", "hello"])
                .owner("o"),
            |e| matches!(e, Error::Conflict { event, .. } if event == "hello"),
            "event `hello`",
        ),
    ];
    for (new, is_right, text) in cases {
        let debug = format!("{new:?}");
        let err = bus.subscribe(new).expect_err(&debug);
        assert!(is_right(&err), "{debug}: wrong error {err:?}");
        assert!(
            err.to_string().contains(text),
            "{debug}: message `{err}` lacks `{text}`"
        );
        assert_eq!(
            bus.subscriptions().list().unwrap(),
            vec![existing.clone()],
            "{debug} changed the store"
        );
    }

    // The same url and event for another owner, or another url, is fine.
    bus.subscribe(
        NewSubscription::new("other owner", "http://127.0.0.1:1/x")
            .events(["hello"])
            .owner("p"),
    )
    .unwrap();
    bus.subscribe(
        NewSubscription::new("other url", "http://127.0.0.1:1/z")
            .events(["hello"])
            .owner("o"),
    )
    .unwrap();

    // Updates are validated the same way, and a failed one changes nothing.
    let other = bus
        .subscribe(
            NewSubscription::new("third", "http://127.0.0.1:1/w")
                .events(["bye"])
                .owner("o"),
        )
        .unwrap();
    let before = bus.subscriptions().list().unwrap();
    let subs = bus.subscriptions();
    assert!(matches!(
        subs.update(other.id, SubscriptionPatch::new().url("nope")),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        subs.update(
            other.id,
            SubscriptionPatch::new().events(Vec::<String>::new())
        ),
        Err(Error::NoEvents)
    ));
    assert!(matches!(
        subs.update(
            other.id,
            SubscriptionPatch::new()
                .url("http://127.0.0.1:1/x")
                .events(["hello"])
        ),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(bus.subscriptions().list().unwrap(), before);
}

#[test]
fn internal_targets_are_refused_at_subscribe_unless_allowed() {
    let dir = crate::test_dir();
    let bus = hookbus::Bus::open(dir.path()).unwrap();
    for url in [
        "http://127.0.0.1/",
        "http://localhost:8080/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::ffff:192.168.0.1]/",
    ] {
        let err = bus
            .subscribe(NewSubscription::new("n", url).events(["a"]))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        assert!(err.to_string().contains("internal address"), "{err}");
    }
    assert!(bus.subscriptions().list().unwrap().is_empty());
    bus.subscribe(NewSubscription::new("n", "https://example.com/hook").events(["a"]))
        .unwrap();
}

/// Issue 10: every `FromStr` error of the public API is a
/// `std::error::Error`, so it works with `?` into `Box<dyn Error>`, clap,
/// anyhow and the like.
#[test]
fn from_str_errors_are_std_errors() {
    fn reason<T>(bad: &str) -> String
    where
        T: std::str::FromStr + std::fmt::Debug,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(bad.parse::<T>().unwrap_err());
        e.to_string()
    }
    assert!(reason::<hookbus::DeliveryId>("nope").contains("`nope` is not a valid id"));
    assert!(reason::<hookbus::EventId>("nope").contains("32 hex digits"));
    assert!(reason::<hookbus::SubscriptionId>("").contains("not a valid id"));
    assert!(reason::<hookbus::DeliveryState>("gone").contains("pending, delivered or dead"));
    assert!(reason::<hookbus::Timestamp>("yesterday").contains("RFC 3339"));
    // An id error still converts into the crate's error.
    let e: hookbus::Error = "nope".parse::<hookbus::DeliveryId>().unwrap_err().into();
    assert!(matches!(e, hookbus::Error::InvalidId { .. }));
}

/// Issue 10: in JSON, an event's payload is the JSON it was published as,
/// an attempt's response excerpt is text and times are RFC 3339 strings
/// (the store keeps its binary form).
#[test]
fn records_serialize_to_readable_json() {
    let rx = crate::receiver::TestReceiver::with(|_| {
        crate::receiver::Reply::status(500).body(b"busy, try later")
    });
    let dir = crate::test_dir();
    let bus = open(dir.path());
    bus.subscribe(NewSubscription::new("n", rx.url("/in")).events(["a"]))
        .unwrap();
    let payload = serde_json::json!({"text": "I said hello", "n": [1, 2]});
    let event_id = bus.publish("a", &payload).unwrap();
    crate::wait_until(crate::LONG, "an attempt", || {
        bus.outbox()
            .pending()
            .next()
            .is_some_and(|d| d.unwrap().attempts > 0)
    });
    let event = bus.outbox().event(event_id).unwrap().unwrap();
    let j = serde_json::to_value(&event).unwrap();
    assert_eq!(j["payload"], payload, "{j}");
    assert!(j["created_at"].is_string(), "{j}");
    let back: hookbus::Event = serde_json::from_value(j).unwrap();
    assert_eq!(back, event);

    let d = bus.outbox().pending().next().unwrap().unwrap();
    let attempt = bus.outbox().attempts(d.id).unwrap().remove(0);
    let j = serde_json::to_value(&attempt).unwrap();
    assert_eq!(j["response_excerpt"], "busy, try later", "{j}");
    assert!(j["at"].as_str().unwrap().ends_with('Z'), "{j}");
    let back: hookbus::Attempt = serde_json::from_value(j).unwrap();
    assert_eq!(back, attempt);
    let j = serde_json::to_value(&d).unwrap();
    assert!(
        j["created_at"].is_string() && j["next_attempt_at"].is_string(),
        "{j}"
    );
}

/// Issue 13: idempotent set-up. `ensure` creates once, returns the same
/// subscription on the next start (where `create` answers Conflict),
/// updates it in place when the description changes, and keys by owner and
/// name.
#[test]
fn ensure_creates_once_returns_the_same_and_updates_in_place() {
    let dir = crate::test_dir();
    let bus = crate::open(dir.path());
    let url_a = crate::dead_url();
    let describe = |url: &str, events: &[&str]| {
        hookbus::NewSubscription::new("orders", url)
            .events(events.iter().copied())
            .secret("shh")
    };
    let first = bus
        .subscriptions()
        .ensure(describe(&url_a, &["order.created"]))
        .unwrap();
    // What a second start used to do.
    let err = bus
        .subscriptions()
        .create(describe(&url_a, &["order.created"]))
        .unwrap_err();
    assert!(matches!(err, hookbus::Error::Conflict { .. }), "{err:?}");
    let again = bus
        .subscriptions()
        .ensure(describe(&url_a, &["order.created"]))
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.modified_at, first.modified_at, "unchanged");
    // A changed description updates the same subscription.
    let url_b = crate::dead_url();
    let changed = bus
        .subscriptions()
        .ensure(describe(&url_b, &["order.created", "order.paid"]))
        .unwrap();
    assert_eq!(changed.id, first.id);
    assert_eq!(changed.url, url_b);
    assert_eq!(changed.events.len(), 2);
    assert_eq!(bus.subscriptions().list().unwrap().len(), 1);
    // Another owner's subscription of the same name is its own.
    let theirs = bus
        .subscriptions()
        .ensure(describe(&url_b, &["order.created"]).owner("tenant-b"))
        .unwrap();
    assert_ne!(theirs.id, first.id);
    assert_eq!(bus.subscriptions().list().unwrap().len(), 2);
    // Survives a reopen as the same one.
    drop(bus);
    let bus = crate::open(dir.path());
    let after = bus
        .subscriptions()
        .ensure(describe(&url_b, &["order.created", "order.paid"]))
        .unwrap();
    assert_eq!(after.id, first.id);
}
