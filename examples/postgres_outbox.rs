//! A transactional outbox on PostgreSQL, one app instance of several: each
//! order and its `order.created` event are written in ONE transaction of
//! the app's own, so the event exists exactly when the order does (every
//! third order is rolled back: its event is never sent). Instances started
//! on one schema share the subscription and the outbox; each delivery is
//! sent by one of them.
//!
//! ```text
//! cargo run --example postgres_outbox --features postgres
//! ```
//!
//! Alone, it starts a receiver of its own on 127.0.0.1 that prints what
//! arrives. Two instances on one schema, in three terminals (a receiver,
//! then two instances placing 20 orders each, one every half second):
//!
//! ```text
//! cargo run --example postgres_outbox --features postgres -- receive 127.0.0.1:9000
//! cargo run --example postgres_outbox --features postgres -- --instance a --receiver http://127.0.0.1:9000/hooks --orders 20 --every-ms 500
//! cargo run --example postgres_outbox --features postgres -- --instance b --receiver http://127.0.0.1:9000/hooks --orders 20 --every-ms 500
//! ```
//!
//! The database is `HOOKBUS_DATABASE_URL` (default
//! `host=127.0.0.1 user=postgres dbname=test`), the schema
//! `HOOKBUS_SCHEMA` (default `hookbus_example`): hookbus's tables and the
//! example's `orders` table are made there when missing. Nothing is
//! dropped unless you pass `--reset` (which drops the whole schema first:
//! don't, while another instance runs on it).

#[path = "common/receiver.rs"]
#[allow(dead_code)]
mod receiver;

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hookbus::{Bus, EventId, Message, NewSubscription};

#[derive(Parser)]
#[command(
    name = "postgres_outbox",
    about = "One app instance publishing orders in its own transactions"
)]
struct Args {
    /// This instance's name (it goes into its orders).
    #[arg(long, default_value = "a")]
    instance: String,
    /// How many orders to place; every third is rolled back.
    #[arg(long, default_value_t = 3)]
    orders: u32,
    /// Milliseconds between two orders.
    #[arg(long, default_value_t = 0)]
    every_ms: u64,
    /// Deliver to this URL (shared by every instance); without it, a
    /// receiver of this process's own on 127.0.0.1.
    #[arg(long, value_name = "URL")]
    receiver: Option<String>,
    /// Drop the schema (hookbus's tables and the orders) first.
    #[arg(long)]
    reset: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Only a receiver: print every request that arrives, until Ctrl-C.
    Receive {
        /// The address to listen on.
        #[arg(default_value = "127.0.0.1:9000")]
        addr: String,
    },
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(Cmd::Receive { addr }) = args.command {
        let listener = TcpListener::bind(&addr)?;
        println!("receiving on http://{}/hooks", listener.local_addr()?);
        receive(listener)?;
        // Until the process is stopped (Ctrl-C).
        loop {
            std::thread::park();
        }
    }
    let url = std::env::var("HOOKBUS_DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into());
    let schema = std::env::var("HOOKBUS_SCHEMA").unwrap_or_else(|_| "hookbus_example".into());
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if schema.is_empty()
        || !schema.chars().all(plain)
        || schema.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(
            format!("HOOKBUS_SCHEMA {schema:?}: use lowercase letters, digits and _").into(),
        );
    }

    let mut app = postgres::Client::connect(&url, postgres::NoTls)?;
    if args.reset {
        app.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
        println!("schema {schema} dropped (--reset)");
    }
    let hook = match args.receiver {
        Some(url) => url,
        None => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let hook = format!("http://{}/hooks", listener.local_addr()?);
            receive(listener)?;
            hook
        }
    };

    // Opening creates hookbus's tables, safely when instances start at once.
    let bus = Bus::builder()
        .postgres(&url)
        .postgres_schema(&schema)
        .allow_private_targets(true) // the receiver is on loopback
        .open()?;
    // The app's own table, beside them (the lock: instances starting at once).
    let mut tx = app.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.orders (
             id bigserial PRIMARY KEY, instance text NOT NULL, total_cents bigint NOT NULL)"
    ))?;
    tx.commit()?;
    // Every instance makes sure of the same subscription: one is stored.
    bus.subscriptions().ensure(
        NewSubscription::new("orders", hook)
            .event("order.created")
            .secret("example-secret"),
    )?;

    let mut mine: HashSet<EventId> = HashSet::new();
    for n in 0..args.orders {
        if n > 0 {
            std::thread::sleep(Duration::from_millis(args.every_ms));
        }
        let total = 100 + i64::from(n) * 250;
        let mut tx = app.transaction()?;
        let id: i64 = tx
            .query_one(
                &format!(
                    "INSERT INTO {schema}.orders (instance, total_cents) VALUES ($1, $2) RETURNING id"
                ),
                &[&args.instance, &total],
            )?
            .get(0);
        let event = Message::new(
            "order.created",
            &serde_json::json!({"order": id, "instance": args.instance, "total_cents": total}),
        )
        .idempotency_key(format!("order-{id}-created"));
        let event_id = bus.publish_in(&mut tx, event)?;
        if n % 3 == 1 {
            tx.rollback()?;
            println!("order {id} ({}): rolled back", args.instance);
        } else {
            tx.commit()?;
            mine.insert(event_id);
            println!("order {id} ({}): committed", args.instance);
        }
    }

    // Any instance may send any delivery; wait until this one's events have
    // all been delivered (by whichever instance claimed them).
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivered = || -> Result<usize, hookbus::Error> {
        let mut n = 0;
        for d in bus.outbox().delivered() {
            n += usize::from(mine.contains(&d?.event_id));
        }
        Ok(n)
    };
    while delivered()? < mine.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivered = delivered()?;
    let stats = bus.outbox().stats()?;
    println!(
        "instance {}: {} of its {} events delivered; the schema's outbox: {} delivered, {} pending, {} dead",
        args.instance,
        delivered,
        mine.len(),
        stats.delivered,
        stats.pending,
        stats.dead
    );
    bus.shutdown(Duration::from_secs(5))?;
    if delivered < mine.len() {
        return Err(format!(
            "{} events not delivered within 120 s",
            mine.len() - delivered
        )
        .into());
    }
    Ok(())
}

/// Answers every request 204 and prints its event and body (an axum
/// server on a thread of its own).
fn receive(listener: TcpListener) -> std::io::Result<()> {
    receiver::start_on(listener, |r| {
        println!(
            "received: x-webhook-event: {}  {}",
            r.header("x-webhook-event"),
            String::from_utf8_lossy(&r.body)
        );
        204
    })?;
    Ok(())
}
