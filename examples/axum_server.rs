//! A multi-tenant Rust web app adopting hookbus: the subscription REST routes
//! from `hookbus::rest`, mounted in axum, and a route that publishes an event
//! for one customer (tenant) — only that customer's subscriptions get it.
//!
//! ```text
//! cargo run --example axum_server --features axum -- [DATA_DIR] [--allow-private]
//! cargo run --example axum_server --features axum,postgres -- --postgres 'host=127.0.0.1 user=postgres dbname=test' [--allow-private]
//! curl -X POST localhost:3000/webhooks/subscriptions -H 'content-type: application/json' \
//!      -H 'x-user-id: alice' -H 'x-tenant-id: acme' \
//!      -d '{"name":"mine","events":["order.created"],"config":{"url":"https://example.com/hook","secret":"shh"}}'
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' -H 'x-tenant-id: acme' -d '{"id":1}'
//! curl localhost:3000/webhooks/subscriptions -H 'x-user-id: alice' -H 'x-tenant-id: acme'
//! curl localhost:3000/webhooks/admin/health -H 'x-user-id: ops' -H 'x-roles: admin'
//! ```
//!
//! The routes come from `hookbus::axum::Routes` (feature `axum`). The
//! identity comes from `x-user-id`, `x-tenant-id` and `x-roles` (comma
//! separated) headers — a stand-in for your real authentication. The
//! operators' routes (`/webhooks/admin`, role `admin`, no tenant) are
//! mounted beside the subscribers' ones. `--allow-private` lets it deliver
//! to receivers on this machine or your network (refused by default: a
//! subscriber could otherwise make your server call internal addresses).
//! The store is sled in `DATA_DIR` (default `./hookbus-data`), or with
//! `--postgres URL` (feature `postgres`) the schema `HOOKBUS_SCHEMA`
//! (default `hookbus`) of that database, which several copies of the app
//! can share. It listens on `HOOKBUS_EXAMPLE_ADDR` (default `127.0.0.1:3000`) and
//! stops gracefully on Ctrl-C or SIGTERM: requests in flight finish, then
//! the bus shuts down (deliveries in flight get 5 s).

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hookbus::Bus;
use hookbus::rest::Caller;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let allow_private = args.iter().any(|a| a == "--allow-private");
    let postgres = args
        .iter()
        .position(|a| a == "--postgres")
        .map(|i| args.get(i + 1).cloned().ok_or("--postgres needs a URL"))
        .transpose()?;
    let dir = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--postgres"))
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| "./hookbus-data".into());
    let builder = Bus::builder().allow_private_targets(allow_private);
    let (builder, store) = match postgres {
        #[cfg(feature = "postgres")]
        Some(url) => {
            let schema = std::env::var("HOOKBUS_SCHEMA").unwrap_or_else(|_| "hookbus".into());
            let store = format!("PostgreSQL schema {schema}");
            (builder.postgres(url).postgres_schema(schema), store)
        }
        #[cfg(not(feature = "postgres"))]
        Some(_) => {
            return Err("--postgres needs the example built with --features postgres".into());
        }
        None => (builder.path(&dir), format!("the store in {dir}")),
    };
    let bus = builder.open_async().await?;
    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(bus.clone())
        .merge(hookbus::axum::Routes::new(bus.clone(), caller).router());
    let addr = std::env::var("HOOKBUS_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "listening on http://{} with {store}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await?;
    // Deliveries in flight get 5 s; the store is flushed and released.
    bus.shutdown_async(std::time::Duration::from_secs(5))
        .await?;
    println!("stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM (what a container runtime or systemd sends).
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Who calls: your authentication decides who calls and for which tenant
/// (customer); here, trusted headers stand in for it. (With a middleware
/// that authenticates, read what it put in `parts.extensions`.)
fn caller(parts: &Parts) -> Option<Caller> {
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let caller = Caller::new(
        header("x-user-id")?,
        header("x-roles").unwrap_or("").split(','),
    );
    Some(match header("x-tenant-id") {
        Some(t) => caller.tenant(t),
        None => caller,
    })
}

/// The application's own route: it publishes for the customer whose order it
/// is — only that tenant's subscriptions receive it — and answers once the
/// event is durable, without blocking the runtime.
async fn create_order(
    State(bus): State<Bus>,
    headers: HeaderMap,
    Json(order): Json<serde_json::Value>,
) -> Response {
    let Some(tenant) = headers.get("x-tenant-id").and_then(|v| v.to_str().ok()) else {
        return (StatusCode::UNAUTHORIZED, "x-tenant-id missing").into_response();
    };
    match bus
        .publish_durable_to_async(tenant, "order.created", &order)
        .await
    {
        Ok(id) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "eventId": id })),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
