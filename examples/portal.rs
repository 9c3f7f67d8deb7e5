//! The customer portal, end to end: an app that mounts hookbus's routes in
//! axum, makes a short-lived portal link for one customer (tenant), and a
//! receiver on the same server to point endpoints at. Open the printed
//! link in a browser, add an endpoint with the receiver's URL, send a test
//! event, publish orders, and read the delivery log.
//!
//! ```text
//! cargo run --example portal --features axum -- [--addr 127.0.0.1:3000] [--data DIR] [--tenant acme]
//! ```
//!
//! Printed at start:
//!
//! ```text
//! portal: http://127.0.0.1:3000/webhooks/portal#token=hbp_…
//! receiver: http://127.0.0.1:3000/demo/receiver
//! token: hbp_…
//! ```
//!
//! `POST /demo/orders` publishes an `order.created` event for the tenant;
//! the receiver prints what it gets. In your app, the link comes from a
//! route behind your own login (`PortalKey::link(customer's tenant, ttl)`),
//! and the key from your secret store, the same on every instance.
//!
//! `--no-deliver` keeps every delivery pending (nothing is sent): what the
//! CI's API fuzzing runs against, so that fuzzed endpoint URLs are never
//! called. `--allow-private` is on in this demo so that the receiver on
//! 127.0.0.1 can be reached; keep it off in production. Stops on Ctrl-C or
//! SIGTERM.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use hookbus::Bus;
use hookbus::catalog::EventType;
use hookbus::portal::PortalKey;

/// `--name value` from the command line.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = flag(&args, "--addr").unwrap_or_else(|| "127.0.0.1:3000".into());
    let tenant = flag(&args, "--tenant").unwrap_or_else(|| "acme".into());
    let deliver = !args.iter().any(|a| a == "--no-deliver");
    let temp = tempfile::tempdir()?;
    let data = flag(&args, "--data").map_or_else(|| temp.path().join("store"), Into::into);

    // The app's event catalog: what customers can subscribe to.
    let bus = Bus::builder()
        .event_type(
            EventType::new("order.created", "A customer placed an order.")
                .example(serde_json::json!({ "id": 1042, "total_cents": 4200 })),
        )
        .event_type(
            EventType::new("order.paid", "An order was paid in full.")
                .example(serde_json::json!({ "id": 1042, "paid_cents": 4200 })),
        )
        .event_type(EventType::new(
            "customer.deleted",
            "A customer's account was closed.",
        ))
        .path(&data)
        .allow_private_targets(true)
        .deliver(deliver)
        .open_async()
        .await?;
    // A fresh key per run; yours comes from your secret store.
    let key = PortalKey::new(hookbus::signing::generate_secret())?;
    let token = key.link(&tenant, Duration::from_secs(3600))?;

    // The app's own users are not part of this demo: only portal links
    // get in (the closure answers "nobody" for everything else).
    let routes = hookbus::axum::Routes::new(bus.clone(), |_| None).portal_key(key);
    let orders_bus = bus.clone();
    let orders_tenant = tenant.clone();
    let app: Router = Router::new()
        .merge(routes.router())
        .route(
            "/demo/orders",
            post(move || {
                let bus = orders_bus.clone();
                let tenant = orders_tenant.clone();
                async move {
                    let order = serde_json::json!({ "id": fastrand_id(), "total_cents": 4200 });
                    match bus.publish_to(&tenant, "order.created", &order) {
                        Ok(id) => format!("published {id}\n"),
                        Err(e) => format!("not published: {e}\n"),
                    }
                }
            }),
        )
        .route("/demo/receiver", post(receive));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("portal: http://{local}/webhooks/portal#token={token}");
    println!("receiver: http://{local}/demo/receiver");
    println!("token: {token}");
    println!("store: {}", data.display());
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await?;
    bus.shutdown_async(Duration::from_secs(5)).await?;
    Ok(())
}

/// A number for the demo's orders.
fn fastrand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis() % 100_000).unwrap_or(0))
}

/// The demo receiver: prints each delivery's event and id.
async fn receive(headers: HeaderMap, body: Bytes) -> &'static str {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    println!(
        "received {} {} ({} bytes)",
        h("x-webhook-event"),
        h("webhook-id"),
        body.len()
    );
    "ok"
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
