//! hookbus's REST routes as an axum [`Router`] (feature `axum`): the
//! subscribers' routes under `/webhooks/subscriptions` and the operators'
//! under `/webhooks/admin` (the [`rest`](crate::rest) module says what each
//! does), answered by [`rest::handle`](crate::rest::handle) on the
//! runtime's blocking pool. Your authentication decides who calls: a
//! closure turns the request's parts (headers, and the extensions your
//! middleware filled) into a [`Caller`], or `None` (401).
//!
//! ```no_run
//! use axum::Router;
//! use axum::http::request::Parts;
//! use hookbus::rest::Caller;
//!
//! /// Who calls: your authentication middleware put the user in the
//! /// request's extensions (trusted headers stand in for it here).
//! fn caller(parts: &Parts) -> Option<Caller> {
//!     let header = |name: &str| parts.headers.get(name)?.to_str().ok();
//!     let caller = Caller::new(header("x-user-id")?, header("x-roles").unwrap_or("").split(','));
//!     Some(match header("x-tenant-id") {
//!         Some(tenant) => caller.tenant(tenant),
//!         None => caller, // an operator (role `admin`) has no tenant
//!     })
//! }
//!
//! # async fn serve(bus: hookbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! let app: Router = Router::new()
//!     .merge(hookbus::axum::Routes::new(bus.clone(), caller).router())
//!     .route("/orders", axum::routing::post(|| async { "your routes" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Bodies are JSON: a request with a body, and every `POST` even without
//! one, must say `content-type: application/json` (415 otherwise; this also
//! keeps a cross-site HTML form or `no-cors` fetch, which cannot send that
//! type without a CORS preflight, from changing subscriptions or retrying
//! deliveries with a user's cookies), and a body larger than
//! [`body_limit`](Routes::body_limit) is refused with 413 before it is read
//! whole.

use std::fmt;
use std::sync::Arc;

use ::axum::Router;
use ::axum::extract::{Request, State};
use ::axum::http::request::Parts;
use ::axum::http::{StatusCode, header};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::any;

use crate::bus::Bus;
use crate::portal::{PortalKey, TOKEN_PREFIX};
use crate::rest::{ApiRequest, ApiResponse, Caller};

/// The default [`Routes::body_limit`]: 64 KiB, far more than a
/// subscription's JSON takes.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

type CallerFn = dyn Fn(&Parts) -> Option<Caller> + Send + Sync;

/// hookbus's routes for an axum app; see the [module](self) docs.
#[derive(Clone)]
pub struct Routes {
    bus: Bus,
    caller: Arc<CallerFn>,
    body_limit: usize,
    portal: Option<PortalKey>,
    frame_ancestors: Option<String>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes")
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl Routes {
    /// The routes of `bus`, with `caller` telling who makes each request
    /// (`None`: nobody authenticated, answered 401).
    pub fn new(
        bus: Bus,
        caller: impl Fn(&Parts) -> Option<Caller> + Send + Sync + 'static,
    ) -> Routes {
        Routes {
            bus,
            caller: Arc::new(caller),
            body_limit: DEFAULT_BODY_LIMIT,
            portal: None,
            frame_ancestors: None,
        }
    }

    /// Who may show the portal page (`/webhooks/portal`) in a frame: a
    /// CSP `frame-ancestors` source list, such as
    /// `"https://app.example.com"` for your app's pages on another origin.
    /// Defaults to `'self'` (your own origin only).
    #[must_use]
    pub fn portal_frame_ancestors(mut self, sources: impl Into<String>) -> Routes {
        self.frame_ancestors = Some(sources.into());
        self
    }

    /// Takes portal links signed with `key`: a request with
    /// `Authorization: Bearer hbp_…` is the caller that
    /// [`PortalKey::caller`] makes of it (its tenant, with the
    /// [`MANAGE_ROLE`](crate::rest::MANAGE_ROLE)), on the v1 routes only; an
    /// expired or forged token is answered 401, whatever your caller
    /// closure would say. Other requests go to your closure as before.
    #[must_use]
    pub fn portal_key(mut self, key: PortalKey) -> Routes {
        self.portal = Some(key);
        self
    }

    /// The largest request body taken, in bytes (default
    /// [`DEFAULT_BODY_LIMIT`]); a larger one is answered 413.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Routes {
        self.body_limit = bytes;
        self
    }

    /// The router: `/webhooks/subscriptions`, `/webhooks/admin`,
    /// `/webhooks/v1` and every path under them, any method, and the
    /// portal page at `/webhooks/portal` (GET). Merge it into
    /// your app's router (or nest it under a prefix: the routes see the
    /// path without it).
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new()
            .route(crate::portal::PAGE_PATH, ::axum::routing::get(portal_page))
            .route("/webhooks/v1", any(serve))
            .route("/webhooks/v1/{*rest}", any(serve))
            .route("/webhooks/subscriptions", any(serve))
            .route("/webhooks/subscriptions/{*rest}", any(serve))
            .route("/webhooks/admin", any(serve))
            .route("/webhooks/admin/{*rest}", any(serve))
            .with_state(Arc::new(self))
    }
}

/// Whether the request says its body is JSON (`application/json`, with
/// parameters such as a charset, or a `+json` type).
fn says_json(parts: &Parts) -> bool {
    let Some(value) = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn portal_page(State(routes): State<Arc<Routes>>) -> Response {
    answer(&crate::portal::page(routes.frame_ancestors.as_deref()))
}

/// A portal token in `Authorization: Bearer`, if there is one.
fn portal_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(TOKEN_PREFIX)).then_some(token)
}

async fn serve(State(routes): State<Arc<Routes>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let v1 = parts.uri.path().starts_with(crate::rest::v1::BASE);
    let refuse = |status: u16, code: &str, v1_code: &str, message: String| {
        if v1 {
            crate::rest::v1::problem::problem(status, v1_code, message, None)
        } else {
            ApiResponse::error(status, code, message, None)
        }
    };
    let Ok(body) = ::axum::body::to_bytes(body, routes.body_limit).await else {
        return answer(&refuse(
            413,
            "PayloadTooLarge",
            "payload_too_large",
            format!("the body is larger than {} bytes", routes.body_limit),
        ));
    };
    // A POST without a body too: a cross-site form or `no-cors` fetch can
    // send an empty one with the user's cookies and no preflight.
    let simple = parts.method == ::axum::http::Method::POST;
    // A v1 request for no route, or a method the route does not take, is
    // answered 404 or 405 whatever its body.
    let routed = !v1 || crate::rest::v1::routes(parts.uri.path(), parts.method.as_str());
    if routed && (simple || !body.is_empty()) && !says_json(&parts) {
        return answer(&refuse(
            415,
            "UnsupportedMediaType",
            "unsupported_media_type",
            "a POST, and any body, must be JSON, sent with content-type: application/json".into(),
        ));
    }
    // Nested under a prefix (`/api`), the routes see the path without it:
    // their `Location`s get it back.
    let prefix = parts
        .extensions
        .get::<::axum::extract::OriginalUri>()
        .and_then(|o| o.path().strip_suffix(parts.uri.path()))
        .map(str::to_owned)
        .unwrap_or_default();
    let caller = match (&routes.portal, portal_token(&parts)) {
        (Some(key), Some(token)) if v1 => match key.caller(token) {
            Ok(c) => Some(c),
            Err(e) => {
                return answer(&crate::rest::v1::problem::problem(
                    401,
                    "unauthorized",
                    e.to_string(),
                    None,
                ));
            }
        },
        _ => (routes.caller)(&parts),
    };
    // Changes wait for the store's writer: off the async threads.
    let answered = tokio::task::spawn_blocking(move || {
        let request = ApiRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            caller: caller.as_ref(),
            body: &body,
        };
        crate::rest::handle(&routes.bus, request)
    })
    .await;
    match answered {
        Ok(mut a) => {
            for (name, value) in &mut a.headers {
                if *name == "location" && value.starts_with('/') {
                    value.insert_str(0, &prefix);
                }
            }
            answer(&a)
        }
        Err(_) => answer(&ApiResponse::error(
            500,
            "InternalServerError",
            "the request's handler stopped",
            None,
        )),
    }
}

fn answer(a: &ApiResponse) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if a.body.is_null() {
        status.into_response()
    } else {
        (
            status,
            [(header::CONTENT_TYPE, a.content_type)],
            a.body_bytes(),
        )
            .into_response()
    };
    for (name, value) in &a.headers {
        if let (Ok(n), Ok(v)) = (
            ::axum::http::HeaderName::from_bytes(name.as_bytes()),
            ::axum::http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}
