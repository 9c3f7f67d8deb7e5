//! A transactional outbox on PostgreSQL: an order and its
//! `order.created` event are written in ONE transaction of the app's own, so
//! the event exists exactly when the order does. A rolled-back order sends
//! nothing.
//!
//! ```text
//! cargo run --example postgres_outbox --features postgres [-- "host=127.0.0.1 user=postgres dbname=test"]
//! ```
//!
//! It uses the schema `hookbus_example` (dropped at the start) and a
//! receiver of its own on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use hookbus::{Bus, Message, NewSubscription};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "host=127.0.0.1 user=postgres dbname=test".into());
    let mut app = postgres::Client::connect(&url, postgres::NoTls)?;
    app.batch_execute(
        "DROP SCHEMA IF EXISTS hookbus_example CASCADE;
         CREATE SCHEMA hookbus_example;
         CREATE TABLE hookbus_example.orders (id bigint PRIMARY KEY, total_cents bigint NOT NULL);",
    )?;

    // A receiver that prints what arrives.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let hook = format!("http://{}/hooks", listener.local_addr()?);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut len = 0;
            let mut event = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-webhook-event:") {
                    event = line.trim_end().to_owned();
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            println!("received: {event}  {}", String::from_utf8_lossy(&body));
            let mut conn = conn;
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        }
    });

    let bus = Bus::builder()
        .postgres(&url)
        .postgres_schema("hookbus_example")
        .allow_private_targets(true) // the receiver is on loopback
        .open()?;
    bus.subscribe(NewSubscription::new("orders", hook).event("order.created"))?;

    for (id, total, commit) in [(1i64, 1999i64, true), (2, 500, false), (3, 4200, true)] {
        let mut tx = app.transaction()?;
        tx.execute(
            "INSERT INTO hookbus_example.orders (id, total_cents) VALUES ($1, $2)",
            &[&id, &total],
        )?;
        let event = Message::new(
            "order.created",
            &serde_json::json!({"order": id, "total_cents": total}),
        )
        .idempotency_key(format!("order-{id}-created"));
        bus.publish_in(&mut tx, event)?;
        if commit {
            tx.commit()?;
            println!("order {id}: committed");
        } else {
            tx.rollback()?;
            println!("order {id}: rolled back (its event goes with it)");
        }
    }

    // Instances find committed events by polling, about once a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bus.outbox().stats()?.delivered < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = bus.outbox().stats()?;
    println!(
        "outbox: {} delivered, {} pending, {} dead",
        stats.delivered, stats.pending, stats.dead
    );
    bus.shutdown(Duration::from_secs(2))?;
    app.batch_execute("DROP SCHEMA hookbus_example CASCADE")?;
    Ok(())
}
