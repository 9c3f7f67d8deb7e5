//! `Bus::publish_in_async` in the transactions of the async drivers
//! (features `sqlx` and `tokio-postgres`) against the real server: a
//! commit delivers, a rollback never sends, an idempotency key is stored
//! once under concurrent transactions, while other instances run. The same
//! tests run once per driver; the sync driver's are in postgres.rs.

use std::time::Duration;

use hookbus::{Bus, EventId, Message, NewSubscription};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::postgres::{Schema, url};
use crate::receiver::TestReceiver;
use crate::{LONG, consistent, wait_until};

#[derive(Debug, Clone, Copy)]
enum Driver {
    #[cfg(feature = "sqlx")]
    Sqlx,
    #[cfg(feature = "tokio-postgres")]
    TokioPostgres,
}

/// A value of the test's URL (`host=… user=…`), for sqlx, which takes
/// options rather than that form.
fn setting(name: &str, default: &str) -> String {
    url()
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
        .unwrap_or_else(|| default.to_owned())
}

/// An app's connection through `driver`.
enum App {
    #[cfg(feature = "sqlx")]
    Sqlx(sqlx::PgConnection),
    #[cfg(feature = "tokio-postgres")]
    TokioPostgres(tokio_postgres::Client),
}

impl App {
    async fn connect(driver: Driver) -> App {
        match driver {
            #[cfg(feature = "sqlx")]
            Driver::Sqlx => {
                use sqlx::Connection;
                let options = sqlx::postgres::PgConnectOptions::new()
                    .host(&setting("host", "127.0.0.1"))
                    .port(crate::postgres::pg_addr().port())
                    .username(&setting("user", "postgres"))
                    .database(&setting("dbname", "test"));
                App::Sqlx(sqlx::PgConnection::connect_with(&options).await.unwrap())
            }
            #[cfg(feature = "tokio-postgres")]
            Driver::TokioPostgres => {
                let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                App::TokioPostgres(client)
            }
        }
    }

    /// In one transaction: inserts order `id` into `orders` (unless `None`),
    /// publishes `message`, waits `hold`, then commits (or rolls back).
    async fn order(
        &mut self,
        bus: &Bus,
        orders: &str,
        id: Option<i64>,
        message: Message,
        hold: Duration,
        commit: bool,
    ) -> hookbus::Result<EventId> {
        let insert = format!("INSERT INTO {orders} (id) VALUES ($1)");
        match self {
            #[cfg(feature = "sqlx")]
            App::Sqlx(conn) => {
                use sqlx::Connection;
                let mut tx = conn.begin().await.unwrap();
                if let Some(id) = id {
                    sqlx::query(&insert)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                let published = bus.publish_in_async(&mut tx, message).await;
                tokio::time::sleep(hold).await;
                if commit && published.is_ok() {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                published
            }
            #[cfg(feature = "tokio-postgres")]
            App::TokioPostgres(client) => {
                let mut tx = client.transaction().await.unwrap();
                if let Some(id) = id {
                    tx.execute(&insert, &[&id]).await.unwrap();
                }
                let published = bus.publish_in_async(&mut tx, message).await;
                tokio::time::sleep(hold).await;
                if commit && published.is_ok() {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                published
            }
        }
    }
}

fn drivers() -> Vec<Driver> {
    vec![
        #[cfg(feature = "sqlx")]
        Driver::Sqlx,
        #[cfg(feature = "tokio-postgres")]
        Driver::TokioPostgres,
    ]
}

fn orders_table(schema: &Schema) -> String {
    let orders = format!("{}.orders", schema.0);
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE TABLE {orders} (id bigint PRIMARY KEY)"))
        .unwrap();
    orders
}

fn count(table: &str) -> i64 {
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

/// A commit delivers the event with the app's row; a rollback stores and
/// sends nothing; a key holds across transactions and binds its event. On
/// a current-thread runtime: nothing in `publish_in_async` blocks it.
fn commit_and_rollback(driver: Driver, rt: Runtime) {
    let Some(schema) = Schema::new(&format!("txa_{driver:?}").to_lowercase()) else {
        return;
    };
    let rx = TestReceiver::start();
    let bus = schema.builder().open().unwrap();
    bus.subscribe(NewSubscription::new("s", rx.url("/orders")).event("order.created"))
        .unwrap();
    let orders = orders_table(&schema);
    let message = |n: i64| Message::new("order.created", &json!({ "order": n }));

    let mut app = rt.block_on(App::connect(driver));
    let none = Duration::ZERO;
    rt.block_on(app.order(&bus, &orders, Some(1), message(1), none, false))
        .unwrap();
    let id = rt
        .block_on(async {
            let keyed = message(2).idempotency_key("order-2");
            app.order(&bus, &orders, Some(2), keyed, none, true).await
        })
        .unwrap();
    wait_until(LONG, "the committed event delivered", || {
        bus.outbox().stats().unwrap().delivered == 1
    });
    // Well after the commit, still only the committed one arrived.
    std::thread::sleep(Duration::from_millis(1500));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "{driver:?}");
    assert_eq!(reqs[0].json()["order"], 2);
    assert_eq!(
        reqs[0].header("x-webhook-event-id"),
        Some(id.to_string().as_str())
    );
    // Numbered outside the app's transaction: the rolled-back event's
    // number is a gap.
    assert_eq!(reqs[0].header("x-webhook-sequence"), Some("2"));
    assert_eq!(count(&orders), 1);

    // The key holds in a later transaction, and binds its event.
    let again = rt.block_on(async {
        let keyed = message(2).idempotency_key("order-2");
        app.order(&bus, &orders, None, keyed, none, true).await
    });
    assert_eq!(again.unwrap(), id);
    let other = rt.block_on(async {
        let keyed = message(3).idempotency_key("order-2");
        app.order(&bus, &orders, None, keyed, none, true).await
    });
    assert!(
        matches!(other, Err(hookbus::Error::IdempotencyKeyReused { holder, .. }) if holder == id),
        "{driver:?}: {other:?}"
    );
    // A bus on sled has no transaction to publish in.
    let dir = crate::test_dir();
    let sled = Bus::open(dir.path()).unwrap();
    let refused = rt.block_on(app.order(&sled, &orders, None, message(4), none, true));
    assert!(
        matches!(refused, Err(hookbus::Error::InvalidConfig(_))),
        "{refused:?}"
    );
    let stats = consistent(&bus);
    assert_eq!((stats.pending, stats.delivered), (0, 1));
    bus.shutdown(Duration::from_secs(2)).unwrap();
}

/// Eight transactions at once with one key, each held open a while, on two
/// instances that deliver meanwhile (and publish on their own): one event
/// per key, one delivery of it, every caller told its id.
fn concurrent_keys(driver: Driver) {
    let Some(schema) = Schema::new(&format!("txk_{driver:?}").to_lowercase()) else {
        return;
    };
    let rx = TestReceiver::start();
    let a = schema.builder().open().unwrap();
    let b = schema.builder().open().unwrap();
    a.subscribe(NewSubscription::new("s", rx.url("/k")).event("e"))
        .unwrap();
    let orders = orders_table(&schema);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rounds: u32 = 3;
    let callers: u32 = 8;
    for round in 0..rounds {
        let ids = rt.block_on(async {
            let tasks: Vec<_> = (0..callers)
                .map(|n| {
                    let bus = if n % 2 == 0 { a.clone() } else { b.clone() };
                    let orders = orders.clone();
                    tokio::spawn(async move {
                        let mut app = App::connect(driver).await;
                        let m = Message::new("e", &json!({ "round": round }))
                            .idempotency_key(format!("k-{round}"));
                        let id = i64::from(round * 100 + n);
                        let hold = Duration::from_millis(50);
                        app.order(&bus, &orders, Some(id), m, hold, true).await
                    })
                })
                .collect();
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap().unwrap());
            }
            ids
        });
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "{driver:?} round {round}: one key answered different events {ids:?}"
        );
        // Meanwhile the instances publish on their own.
        b.publish("e", &json!({ "plain": round })).unwrap();
    }
    let want = usize::try_from(rounds * 2).unwrap();
    wait_until(LONG, "every event delivered", || {
        a.outbox().stats().unwrap().delivered == u64::try_from(want).unwrap()
    });
    std::thread::sleep(Duration::from_millis(1000));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), want, "{driver:?}: each event delivered once");
    for round in 0..rounds {
        let keyed = reqs.iter().filter(|r| r.json()["round"] == round).count();
        assert_eq!(keyed, 1, "{driver:?}: round {round}");
    }
    // Every caller's own row committed beside the one event.
    assert_eq!(count(&orders), i64::from(rounds * callers));
    consistent(&a);
    a.shutdown(Duration::from_secs(2)).unwrap();
    b.shutdown(Duration::from_secs(2)).unwrap();
}

#[test]
fn an_async_drivers_commit_delivers_and_its_rollback_sends_nothing() {
    for driver in drivers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        commit_and_rollback(driver, rt);
    }
}

#[test]
fn an_async_drivers_concurrent_keyed_transactions_store_one_event() {
    for driver in drivers() {
        concurrent_keys(driver);
    }
}
