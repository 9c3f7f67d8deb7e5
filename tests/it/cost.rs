//! Cost that follows the tenant's own data (issue 28): a subscription's
//! GET with a large backlog, a tenant's list among many other tenants'
//! subscriptions, newest-first delivery pages, and the limit on test
//! requests. Work is shown by counting the records the handles' reads
//! decoded (`Bus::__internal_records_decoded`), never by timing: each test
//! bounds the count well below the data's size, and shows the count does
//! grow when a read walks the data (so the check can fail).
//!
//! Runs on the store `HOOKBUS_TEST_STORE` picks (sled by default).

use std::time::Duration;

use hookbus::rest::Caller;
use hookbus::{Bus, Error, NewSubscription, SubscriptionId, TEST_REQUEST_BURST};
use serde_json::{Value, json};

use crate::api::call;
use crate::receiver::TestReceiver;
use crate::{LONG, builder, dead_url, wait_until};

/// Records decoded by the handles' reads of `bus` during `f`.
fn decoded_during<R>(bus: &Bus, f: impl FnOnce() -> R) -> (R, u64) {
    let before = bus.__internal_records_decoded();
    let r = f();
    (r, bus.__internal_records_decoded() - before)
}

/// Creates `n` subscriptions, each of a tenant of its own (`other-{i}`),
/// from several threads at once: their changes share the engine's rounds
/// (one commit and flush for many).
fn other_tenants(bus: &Bus, n: usize) {
    const THREADS: usize = 16;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for i in (t..n).step_by(THREADS) {
                    bus.subscribe(
                        NewSubscription::new(format!("s{i}"), format!("http://127.0.0.1:9/{i}"))
                            .event(format!("e{i}"))
                            .owner(format!("owner-{i}"))
                            .tenant(format!("other-{i}")),
                    )
                    .unwrap();
                }
            });
        }
    });
}

#[test]
fn a_subscriptions_get_examines_a_bounded_number_of_deliveries_whatever_its_backlog() {
    const BACKLOG: usize = 20_000;
    let dir = crate::test_dir();
    // Nothing is sent: the backlog stays undelivered, never attempted.
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let alice = Caller::new("alice", Vec::<String>::new()).tenant("acme");
    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        Some(&alice),
        json!({"name": "orders", "events": ["order.created"],
               "config": {"url": dead_url()}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id: SubscriptionId = r.body["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..BACKLOG {
        bus.publish_to("acme", "order.created", &json!({ "n": i }))
            .unwrap();
    }
    bus.flush().unwrap();
    assert_eq!(bus.outbox().stats().unwrap().pending, BACKLOG as u64);

    let path = format!("/webhooks/subscriptions/{id}");
    let (r, work) = decoded_during(&bus, || call(&bus, "GET", &path, Some(&alice), Value::Null));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subscription"]["id"], id.to_string());
    assert_eq!(r.body["history"], json!([]), "nothing was attempted");
    // The newest 200 deliveries and the subscription, not the backlog.
    eprintln!("cost: a GET with a backlog of {BACKLOG} read {work} records");
    assert!(work >= 200, "it read the newest deliveries: {work}");
    assert!(work <= 250, "bounded whatever the backlog: {work} records");

    // A newest-first page costs its page.
    let (page, work) = decoded_during(&bus, || {
        bus.outbox()
            .for_subscription_before(id, None)
            .take(50)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    });
    assert_eq!(page.len(), 50);
    assert!(work <= 60, "a page of 50 read {work} records");
    let (next, work) = decoded_during(&bus, || {
        bus.outbox()
            .for_subscription_before(id, Some(page[49].id))
            .take(50)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    });
    assert!(work <= 60, "the next page of 50 read {work} records");
    assert!(next[0].id < page[49].id, "strictly before the cursor");

    // The counter does count work: walking the whole backlog reads it all.
    let (n, work) = decoded_during(&bus, || bus.outbox().for_subscription(id, true).count());
    assert_eq!(n, BACKLOG);
    eprintln!("cost: walking the backlog read {work} records");
    assert!(work >= BACKLOG as u64, "a full walk read {work} records");
}

#[test]
fn newest_first_pages_follow_the_subscriptions_own_index() {
    let dir = crate::test_dir();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let mine = bus
        .subscribe(NewSubscription::new("mine", dead_url()).event("a"))
        .unwrap();
    let other = bus
        .subscribe(NewSubscription::new("other", dead_url()).event("a"))
        .unwrap();
    for i in 0..10 {
        bus.publish("a", &json!({ "i": i })).unwrap();
    }
    bus.flush().unwrap();
    let all: Vec<_> = bus
        .outbox()
        .for_subscription(mine.id, true)
        .map(|d| d.unwrap().id)
        .collect();
    assert_eq!(all.len(), 10);
    // Pages of 3 by cursor give the same, newest first, none twice.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page: Vec<_> = bus
            .outbox()
            .for_subscription_before(mine.id, cursor)
            .take(3)
            .map(|d| d.unwrap())
            .collect();
        assert!(page.iter().all(|d| d.subscription_id == mine.id));
        let Some(last) = page.last() else { break };
        cursor = Some(last.id);
        paged.extend(page.iter().map(|d| d.id));
    }
    assert_eq!(paged, all);
    // The oldest has nothing before it; a cursor of another subscription's
    // delivery marks a place in time just the same.
    let oldest = *all.last().unwrap();
    assert_eq!(
        bus.outbox()
            .for_subscription_before(mine.id, Some(oldest))
            .count(),
        0
    );
    let theirs: Vec<_> = bus
        .outbox()
        .for_subscription(other.id, true)
        .map(|d| d.unwrap().id)
        .collect();
    let before_theirs = bus
        .outbox()
        .for_subscription_before(mine.id, Some(theirs[0]))
        .map(|d| d.unwrap().id)
        .collect::<Vec<_>>();
    assert!(before_theirs.iter().all(|id| *id < theirs[0]));
    // An unknown subscription has none.
    assert_eq!(
        bus.outbox()
            .for_subscription_before(
                "01900000-0000-7000-8000-000000000007"
                    .parse::<SubscriptionId>()
                    .unwrap(),
                None
            )
            .count(),
        0
    );
}

#[test]
fn a_tenants_list_costs_its_own_subscriptions_not_every_tenants() {
    const OTHERS: usize = 10_000;
    let dir = crate::test_dir();
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    other_tenants(&bus, OTHERS);
    // Tenant `acme`: alice's three, bob's one; tenants whose names start
    // alike; alice without a tenant (`user:alice`) and app-wide ones she
    // owns, made through the Rust API.
    let alice = Caller::new("alice", Vec::<String>::new()).tenant("acme");
    let bob = Caller::new("bob", Vec::<String>::new()).tenant("acme");
    let create = |caller: &Caller, name: &str| {
        let r = call(
            &bus,
            "POST",
            "/webhooks/subscriptions",
            Some(caller),
            json!({"name": name, "events": [name], "config": {"url": dead_url()}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["subscriptions"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut alices = vec![
        create(&alice, "a1"),
        create(&alice, "a2"),
        create(&alice, "a3"),
    ];
    create(&bob, "b1");
    for t in ["acm", "acme ", "acmex"] {
        bus.subscribe(
            NewSubscription::new("lookalike", dead_url())
                .event("x")
                .owner("alice")
                .tenant(t),
        )
        .unwrap();
    }
    let solo = Caller::new("alice", Vec::<String>::new());
    let mut solos = vec![create(&solo, "s1")];
    let app_wide = bus
        .subscribe(
            NewSubscription::new("app-wide", dead_url())
                .event("y")
                .owner("alice"),
        )
        .unwrap();
    solos.push(app_wide.id.to_string());

    let list = |caller: &Caller| {
        let r = call(
            &bus,
            "GET",
            "/webhooks/subscriptions",
            Some(caller),
            Value::Null,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (ids, work) = decoded_during(&bus, || list(&alice));
    eprintln!("cost: a tenant's list among {OTHERS} others read {work} records");
    alices.sort();
    assert_eq!(ids, alices, "alice's own in acme, oldest first");
    assert!(
        work <= 20,
        "the list read {work} records among {OTHERS} other tenants' subscriptions"
    );
    let (ids, work) = decoded_during(&bus, || list(&solo));
    solos.sort();
    assert_eq!(ids, solos, "user:alice's and the app-wide one she owns");
    assert!(work <= 20, "the list read {work} records");

    // The Rust API: a tenant's pages, and an owner's subscriptions.
    let subs = bus.subscriptions();
    let (page, work) = decoded_during(&bus, || subs.list_by_tenant("acme", None, 2).unwrap());
    assert_eq!(page.len(), 2);
    assert!(work <= 4, "a page of 2 read {work} records");
    let rest = subs.list_by_tenant("acme", Some(page[1].id), 10).unwrap();
    let names: Vec<_> = page.iter().chain(&rest).map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a1", "a2", "a3", "b1"]);
    assert_eq!(subs.list_by_tenant("acmex", None, 10).unwrap().len(), 1);
    assert!(subs.list_by_tenant("nobody", None, 10).unwrap().is_empty());
    assert!(subs.list_by_tenant("acme", None, 0).unwrap().is_empty());
    for bad in ["", "a\u{0}b", &"x".repeat(201)] {
        assert!(
            matches!(
                subs.list_by_tenant(bad, None, 10),
                Err(Error::InvalidTenant { .. })
            ),
            "{bad:?}"
        );
    }
    let (owned, work) = decoded_during(&bus, || subs.list_by_owner("alice").unwrap());
    assert_eq!(owned.len(), 3 + 3 + 2, "in every tenant");
    assert!(owned.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    assert!(work <= 20, "list_by_owner read {work} records");
    assert_eq!(subs.list_by_owner("owner-77").unwrap().len(), 1);

    // Deleting takes a subscription out of its tenant's and owner's list.
    subs.delete(page[0].id).unwrap();
    let names: Vec<_> = subs
        .list_by_tenant("acme", None, 10)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a2", "a3", "b1"]);
    assert_eq!(subs.list_by_owner("alice").unwrap().len(), 7);

    // The counter does count work: every subscription, read.
    let (all, work) = decoded_during(&bus, || subs.list().unwrap());
    assert!(all.len() > OTHERS);
    eprintln!("cost: listing every subscription read {work} records");
    assert!(work >= OTHERS as u64, "a full list read {work} records");
}

#[test]
fn a_tenants_list_survives_a_reopen() {
    let dir = crate::test_dir();
    let ids: Vec<_> = {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        (0..3)
            .map(|i| {
                bus.subscribe(
                    NewSubscription::new(format!("s{i}"), dead_url())
                        .event("e")
                        .tenant("acme"),
                )
                .unwrap()
                .id
            })
            .collect()
    };
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let listed: Vec<_> = bus
        .subscriptions()
        .list_by_tenant("acme", None, 10)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ids);
}

/// Retry-after of a refused test request.
fn retry_after(r: Result<hookbus::Attempt, Error>) -> Duration {
    match r {
        Err(Error::TooManyRequests { retry_after }) => retry_after,
        other => panic!("expected TooManyRequests, got {other:?}"),
    }
}

#[test]
fn test_requests_are_limited_per_subscription_and_share_the_senders_agent() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    let sub = bus
        .subscribe(NewSubscription::new("s", rx.url("/hook")).event("e"))
        .unwrap();
    // A delivery first, through the sender pool.
    bus.publish("e", &json!({})).unwrap();
    rx.wait_for(1, LONG);
    wait_until(LONG, "delivered", || {
        bus.outbox().stats().unwrap().delivered == 1
    });
    for _ in 0..TEST_REQUEST_BURST {
        let a = bus.subscriptions().ping(sub.id).unwrap();
        assert!(a.succeeded(), "{a:?}");
    }
    let wait = retry_after(bus.subscriptions().ping(sub.id));
    assert!(
        wait > Duration::ZERO && wait <= hookbus::TEST_REQUEST_REFILL,
        "{wait:?}"
    );
    assert_eq!(rx.count(), 1 + TEST_REQUEST_BURST as usize, "nothing sent");
    let e = bus.subscriptions().ping(sub.id).unwrap_err();
    assert!(e.to_string().contains("too many test requests"), "{e}");
    // The delivery and every test request went over one kept-alive
    // connection: the senders' agent and its pool, not one per ping.
    assert_eq!(rx.connections(), 1);
    // An unknown subscription is not found, whatever the limit.
    let unknown: SubscriptionId = "01900000-0000-7000-8000-000000000009".parse().unwrap();
    assert!(matches!(
        bus.subscriptions().ping(unknown),
        Err(Error::SubscriptionNotFound(_))
    ));

    // Through the REST route: the N+1th is 429; another subscription has
    // a bucket of its own.
    let alice = Caller::new("alice", Vec::<String>::new());
    let r = call(
        &bus,
        "POST",
        "/webhooks/subscriptions",
        Some(&alice),
        json!({"name": "mine", "events": ["e"], "config": {"url": rx.url("/mine")}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/webhooks/subscriptions/{id}/ping");
    for _ in 0..TEST_REQUEST_BURST {
        let r = call(&bus, "POST", &path, Some(&alice), Value::Null);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["succeeded"], true, "{}", r.body);
    }
    let r = call(&bus, "POST", &path, Some(&alice), Value::Null);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["responseStatus"]["errorCode"], "TooManyRequests");
    assert_eq!(rx.count(), 1 + 2 * TEST_REQUEST_BURST as usize);
}

/// Rows an instance of an older build wrote during a rolling deploy have
/// no `tenant` and `owner` columns (NULL): listings still find them, and
/// the next open fills them in.
#[cfg(feature = "postgres")]
#[test]
fn rows_without_the_tenant_column_are_found_and_filled_in() {
    if !crate::on_postgres() {
        return;
    }
    let dir = crate::test_dir();
    let schema = crate::pg_schema(dir.path());
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    for i in 0..3 {
        bus.subscribe(
            NewSubscription::new(format!("s{i}"), dead_url())
                .event("e")
                .owner("alice")
                .tenant("acme"),
        )
        .unwrap();
    }
    bus.subscribe(NewSubscription::new("app", dead_url()).event("e"))
        .unwrap();
    let mut c = ::postgres::Client::connect(&crate::postgres::url(), ::postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "UPDATE {schema}.subscriptions SET tenant = NULL, owner = NULL"
    ))
    .unwrap();
    let subs = bus.subscriptions();
    assert_eq!(subs.list_by_tenant("acme", None, 10).unwrap().len(), 3);
    assert_eq!(subs.list_by_tenant("acme", None, 2).unwrap().len(), 2);
    assert!(subs.list_by_tenant("other", None, 10).unwrap().is_empty());
    assert_eq!(subs.list_by_owner("alice").unwrap().len(), 3);
    drop(bus);
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    let unfilled: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {schema}.subscriptions WHERE tenant IS NULL OR owner IS NULL"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unfilled, 0, "filled in at open");
    let acme: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {schema}.subscriptions WHERE tenant = 'acme' AND owner = 'alice'"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(acme, 3);
    assert_eq!(
        bus.subscriptions()
            .list_by_tenant("acme", None, 10)
            .unwrap()
            .len(),
        3
    );
}
