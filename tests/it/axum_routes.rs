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

use crate::axum_example::{http, http_head};

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

/// The routes nested under `/api` behind the authentication middleware,
/// served on 127.0.0.1 by a runtime of their own until `stop`.
struct Server {
    rt: tokio::runtime::Runtime,
    addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn start(routes: hookbus::axum::Routes) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app: Router = Router::new()
            .nest("/api", routes.router())
            .layer(middleware::from_fn(authenticate));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = rt.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Server {
            rt,
            addr,
            stop,
            served,
        }
    }

    /// Stops gracefully; panics if serving failed.
    fn stop(self) {
        self.stop.send(()).unwrap();
        self.rt.block_on(self.served).unwrap().unwrap();
    }
}

#[test]
fn the_axum_routes_take_the_callers_identity_json_and_a_body_limit() {
    let dir = crate::test_dir();
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .open()
        .unwrap();
    let routes = hookbus::axum::Routes::new(bus.clone(), caller).body_limit(1024);
    let server = Server::start(routes);
    let addr = server.addr.clone();

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

    server.stop();
    bus.shutdown(Duration::from_secs(2)).unwrap();
}

#[test]
fn the_v1_routes_take_portal_links_and_serve_the_portal_page() {
    let dir = crate::test_dir();
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .open()
        .unwrap();
    let key = hookbus::portal::PortalKey::new(vec![42u8; 32]).unwrap();
    let routes = hookbus::axum::Routes::new(bus.clone(), caller)
        .portal_key(key.clone())
        .portal_frame_ancestors("https://app.example.com");
    let server = Server::start(routes);
    let addr = server.addr.clone();

    let json = ("content-type", "application/json");
    let token = key.link("globex", Duration::from_secs(600)).unwrap();
    let bearer = format!("Bearer {token}");
    let portal = ("authorization", bearer.as_str());
    let endpoints = "/api/webhooks/v1/endpoints";
    let create = r#"{"name":"theirs","url":"http://127.0.0.1:9/hook","events":["*"]}"#;
    let (status, head, body) = http_head(&addr, "POST", endpoints, &[portal, json], create);
    assert_eq!(status, 201, "{body}");
    // Nested under /api: the Location says so.
    assert!(
        head.contains("location: /api/webhooks/v1/endpoints/"),
        "{head}"
    );
    assert!(head.contains("content-type: application/json"), "{head}");
    let subs = bus.subscriptions().list().unwrap();
    assert_eq!(subs[0].tenant.as_deref(), Some("globex"));
    // The app's own callers (tenant acme) do not see it.
    let (status, _, body) = http_head(
        &addr,
        "GET",
        endpoints,
        &[("authorization", "Bearer alice")],
        "",
    );
    assert_eq!(status, 200);
    assert!(body.contains(r#""data":[]"#), "{body}");
    let (_, _, body) = http_head(&addr, "GET", endpoints, &[portal], "");
    assert!(body.contains("theirs"), "{body}");
    // A changed token, another key's, or an expired one: 401 problem+json.
    let tampered = format!(
        "Bearer {}",
        token.replacen("hbp_e", "hbp_f", 1).replace(".", ".A")
    );
    let other = hookbus::portal::PortalKey::new(vec![7u8; 32]).unwrap();
    let foreign = format!(
        "Bearer {}",
        other.link("globex", Duration::from_secs(600)).unwrap()
    );
    let short = format!(
        "Bearer {}",
        key.link("globex", Duration::from_secs(1)).unwrap()
    );
    std::thread::sleep(Duration::from_millis(2100));
    for bad in [&tampered, &foreign, &short] {
        let (status, head, body) = http_head(
            &addr,
            "GET",
            endpoints,
            &[("authorization", bad.as_str())],
            "",
        );
        assert_eq!(status, 401, "{body}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
        assert!(body.contains("portal link refused"), "{body}");
    }
    // v1 errors are problems, also the framework-level ones.
    let (status, head, _) = http_head(&addr, "POST", endpoints, &[portal], create);
    assert_eq!(status, 415);
    assert!(head.contains("application/problem+json"), "{head}");
    // The document needs no caller.
    let (status, _, body) = http_head(&addr, "GET", "/api/webhooks/v1/openapi.json", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("\"openapi\":\"3.1.0\""), "{body}");
    // The page: HTML, its own script only, framed by the app's origin.
    let (status, head, body) = http_head(&addr, "GET", "/api/webhooks/portal", &[], "");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("frame-ancestors https://app.example.com"),
        "{head}"
    );
    assert!(head.contains("script-src 'sha256-"), "{head}");
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");
    assert!(body.starts_with("<!doctype html>"), "{body}");

    server.stop();
    bus.shutdown(Duration::from_secs(2)).unwrap();
}
