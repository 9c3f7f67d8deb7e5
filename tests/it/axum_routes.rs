//! `hookbus::axum::Routes` (feature `axum`) in a real axum server on
//! 127.0.0.1: nested under a prefix, the caller taken from what an
//! authentication middleware put in the request's extensions, JSON bodies
//! required (415), a body limit (413), 401 without a caller, and the
//! operators' routes closed to others (403).

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::Response;
use hookbus::Bus;
use hookbus::rest::Caller;

use crate::axum_example::http;

/// What the app's authentication found.
#[derive(Clone)]
struct User(String);

/// The app's authentication: a bearer token names the user.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|u| User(u.to_owned()));
    if let Some(user) = user {
        request.extensions_mut().insert(user);
    }
    next.run(request).await
}

fn caller(parts: &Parts) -> Option<Caller> {
    let User(name) = parts.extensions.get::<User>()?;
    Some(Caller::new(name.clone(), std::iter::empty::<&str>()).tenant("acme"))
}

#[test]
fn the_axum_routes_take_the_callers_identity_json_and_a_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .open()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let routes = hookbus::axum::Routes::new(bus.clone(), caller).body_limit(1024);
    let app: Router = Router::new()
        .nest("/api", routes.router())
        .layer(middleware::from_fn(authenticate));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let alice = ("authorization", "Bearer alice");
    let json = ("content-type", "application/json");
    let create = r#"{"name":"mine","events":["order.created"],"config":{"url":"http://127.0.0.1:9/hook","secret":"shh"}}"#;
    let path = "/api/webhooks/subscriptions";
    // Without a caller: 401.
    let (status, _) = http(&addr, "POST", path, &[json], create);
    assert_eq!(status, 401);
    // A body that does not say it is JSON: 415, nothing created.
    let (status, body) = http(&addr, "POST", path, &[alice], create);
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("UnsupportedMediaType"), "{body}");
    let text = ("content-type", "text/plain");
    let (status, _) = http(&addr, "POST", path, &[alice, text], create);
    assert_eq!(status, 415);
    // Larger than the limit: 413.
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2048));
    let (status, body) = http(&addr, "POST", path, &[alice, json], &big);
    assert_eq!(status, 413, "{body}");
    assert_eq!(bus.subscriptions().list().unwrap().len(), 0);
    // JSON, with a caller: created in the caller's tenant.
    let charset = ("content-type", "application/json; charset=utf-8");
    let (status, body) = http(&addr, "POST", path, &[alice, charset], create);
    assert_eq!(status, 201, "{body}");
    let subs = bus.subscriptions().list().unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].tenant.as_deref(), Some("acme"));
    assert_eq!(subs[0].owner.as_deref(), Some("alice"));
    let (status, body) = http(&addr, "GET", path, &[alice], "");
    assert_eq!(status, 200);
    assert!(body.contains("\"mine\""), "{body}");
    // A POST without a body must say JSON too (a cross-site form or
    // no-cors fetch sends an empty one without a preflight).
    let id = subs[0].id.to_string();
    let ping = format!("{path}/{id}/ping");
    let (status, body) = http(&addr, "POST", &ping, &[alice], "");
    assert_eq!(status, 415, "{body}");
    // The operators' routes: not for a tenant's caller.
    let (status, _) = http(&addr, "GET", "/api/webhooks/admin/health", &[alice], "");
    assert_eq!(status, 403);

    stop.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    bus.shutdown(Duration::from_secs(2)).unwrap();
}
