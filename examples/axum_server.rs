//! A Rust web app adopting hookbus: the subscription REST routes from
//! `hookbus::rest`, mounted in axum, and a route that publishes an event.
//!
//! ```text
//! cargo run --example axum_server --features tokio
//! curl -X POST localhost:3000/webhooks/subscriptions -H 'x-user-id: alice' \
//!      -d '{"name":"mine","events":["order.created"],"config":{"url":"https://example.com/hook","secret":"shh"}}'
//! curl -X POST localhost:3000/orders -d '{"id":1}'
//! curl localhost:3000/webhooks/subscriptions -H 'x-user-id: alice'
//! ```
//!
//! The identity comes from an `x-user-id` header (and `x-roles`, comma
//! separated) — a stand-in for your real authentication.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use hookbus::Bus;
use hookbus::rest::{ApiRequest, Caller};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./hookbus-data".into());
    let bus = Bus::open(&dir)?;
    let app = Router::new()
        .route("/webhooks/subscriptions", any(subscriptions))
        .route("/webhooks/subscriptions/{*rest}", any(subscriptions))
        .route("/orders", post(create_order))
        .with_state(bus.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://{} with the store in {dir}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    bus.shutdown(std::time::Duration::from_secs(5))?;
    Ok(())
}

/// Every subscription route, handed to the framework-agnostic handler.
async fn subscriptions(
    State(bus): State<Bus>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let caller = header("x-user-id")
        .map(|id| Caller::new(id, header("x-roles").unwrap_or_default().split(',')));
    // Changes wait for the store's writer: keep them off the async threads.
    let res = tokio::task::spawn_blocking(move || {
        let req = ApiRequest {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            caller: caller.as_ref(),
            body: &body,
        };
        hookbus::rest::handle(&bus, req)
    })
    .await;
    match res {
        Ok(r) if r.body.is_null() => StatusCode::from_u16(r.status)
            .unwrap_or(StatusCode::OK)
            .into_response(),
        Ok(r) => (
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(r.body),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The application's own route: it publishes, and answers once the event is
/// durable, without blocking the runtime.
async fn create_order(State(bus): State<Bus>, Json(order): Json<serde_json::Value>) -> Response {
    match bus.publish_durable_async("order.created", &order).await {
        Ok(id) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "eventId": id })),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
