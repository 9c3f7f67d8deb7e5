//! The tenant API v1 under `/webhooks/v1`: a conventional REST shape
//! (snake_case JSON, `201` with `Location`, `PATCH`, cursor pages, RFC 9457
//! problem+json errors, unknown fields refused) over the same operations
//! as the seed's ServiceStack routes, described by the OpenAPI 3.1
//! document [`OPENAPI`] that it serves at `/webhooks/v1/openapi.json`.
//!
//! Every route but the document needs a [`Caller`]; it reaches only its
//! own tenant's endpoints and their deliveries ([`Caller::tenant_id`]),
//! with the access that `MANAGE_ROLE` and
//! `READ_ROLE` give (see the `rest` module).

// Rooms:
//
// | file | job |
// | --- | --- |
// | `mod.rs` | the route table, who may call what, dispatch |
// | `problem.rs` | problem+json errors, bodies and query parameters in |
// | `shapes.rs` | the JSON shapes in and out |
// | `endpoints.rs` | endpoints: list, create, get, patch, delete, secret, test, health |
// | `deliveries.rs` | deliveries: the log, one with its attempts, resend, retry, replay |
// | `openapi.json` | the OpenAPI 3.1 document |

mod deliveries;
mod endpoints;
pub(crate) mod problem;
mod shapes;

use super::reach::Denied;
use super::types::{Access, ApiRequest, ApiResponse, Caller, MANAGE_ROLE};
use crate::bus::Bus;
use crate::ids::SubscriptionId;
use crate::subscription::Subscription;
use problem::{not_found, problem};

/// The path every v1 route starts with.
pub const BASE: &str = "/webhooks/v1";

/// The OpenAPI 3.1 document of the v1 routes (also served at
/// `/webhooks/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every v1 route: method and path template (`{id}` stands for an id), in
/// the document's form. Requests are dispatched from this table, and the
/// tests check the OpenAPI document against it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/webhooks/v1/openapi.json"),
    ("GET", "/webhooks/v1/event-types"),
    ("GET", "/webhooks/v1/endpoints"),
    ("POST", "/webhooks/v1/endpoints"),
    ("GET", "/webhooks/v1/endpoints/{id}"),
    ("PATCH", "/webhooks/v1/endpoints/{id}"),
    ("DELETE", "/webhooks/v1/endpoints/{id}"),
    ("POST", "/webhooks/v1/endpoints/{id}/rotate-secret"),
    ("POST", "/webhooks/v1/endpoints/{id}/test"),
    ("GET", "/webhooks/v1/endpoints/{id}/health"),
    ("POST", "/webhooks/v1/endpoints/{id}/retry-dead"),
    ("POST", "/webhooks/v1/endpoints/{id}/replay"),
    ("GET", "/webhooks/v1/deliveries"),
    ("GET", "/webhooks/v1/deliveries/{id}"),
    ("POST", "/webhooks/v1/deliveries/{id}/resend"),
];

/// Which entry of [`ROUTES`] a path is (its index) and the id in it; the
/// methods the path allows.
fn find(path: &str) -> Option<(Vec<&'static str>, Option<&str>, &'static str)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut methods = Vec::new();
    let mut found = None;
    for (method, template) in ROUTES {
        let parts: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut id = None;
        let fits = parts.iter().zip(&segments).all(|(p, s)| {
            if *p == "{id}" {
                id = Some(*s);
                true
            } else {
                p == s
            }
        });
        if fits {
            methods.push(*method);
            found = Some((id, *template));
        }
    }
    found.map(|(id, template)| (methods, id, template))
}

/// Whether `method` is a route on `path` (`false` for no route): the
/// frameworks' adapters answer other requests through [`handle`] (404,
/// 405) before asking for a JSON body.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn routes(path: &str, method: &str) -> bool {
    find(path.trim_end_matches('/'))
        .is_some_and(|(methods, _, _)| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
}

/// Answers one request whose path starts with [`BASE`].
pub(super) fn handle(bus: &Bus, req: ApiRequest<'_>) -> ApiResponse {
    let path = req.path.trim_end_matches('/');
    let method = req.method.to_ascii_uppercase();
    let Some((methods, id, template)) = find(path) else {
        return problem(
            404,
            "not_found",
            format!("no route for {}", crate::util::clip(req.path)),
            None,
        );
    };
    if !methods.contains(&method.as_str()) {
        return problem(
            405,
            "method_not_allowed",
            format!("{} is not allowed here", crate::util::clip(&method)),
            None,
        )
        .with_header("allow", methods.join(", "));
    }
    let route = template.trim_start_matches(BASE);
    if route == "/openapi.json" {
        return openapi();
    }
    let Some(caller) = req.caller else {
        return problem(401, "unauthorized", "authentication required", None);
    };
    let id = id.unwrap_or("");
    match (method.as_str(), route) {
        ("GET", "/event-types") => endpoints::event_types(bus),
        ("GET", "/endpoints") => endpoints::list(bus, caller, req.query),
        ("POST", "/endpoints") => endpoints::create(bus, caller, req.body),
        ("GET", "/endpoints/{id}") => {
            with_endpoint(bus, caller, id, Access::Read, |s| endpoints::get(&s))
        }
        ("PATCH", "/endpoints/{id}") => with_endpoint(bus, caller, id, Access::Manage, |s| {
            endpoints::patch(bus, &s, req.body)
        }),
        ("DELETE", "/endpoints/{id}") => with_endpoint(bus, caller, id, Access::Manage, |s| {
            endpoints::delete(bus, &s)
        }),
        ("POST", "/endpoints/{id}/rotate-secret") => {
            with_endpoint(bus, caller, id, Access::Manage, |s| {
                endpoints::rotate(bus, &s, req.body)
            })
        }
        ("POST", "/endpoints/{id}/test") => with_endpoint(bus, caller, id, Access::Manage, |s| {
            endpoints::test(bus, &s, req.body)
        }),
        ("GET", "/endpoints/{id}/health") => with_endpoint(bus, caller, id, Access::Read, |s| {
            endpoints::health(bus, &s)
        }),
        ("POST", "/endpoints/{id}/retry-dead") => {
            with_endpoint(bus, caller, id, Access::Manage, |s| {
                deliveries::retry_dead(bus, &s, req.body)
            })
        }
        ("POST", "/endpoints/{id}/replay") => with_endpoint(bus, caller, id, Access::Manage, |s| {
            deliveries::replay(bus, &s, req.body)
        }),
        ("GET", "/deliveries") => deliveries::list(bus, caller, req.query),
        ("GET", "/deliveries/{id}") => deliveries::get(bus, caller, id),
        ("POST", "/deliveries/{id}/resend") => deliveries::resend(bus, caller, id, req.body),
        _ => problem(404, "not_found", "no such route", None),
    }
}

fn openapi() -> ApiResponse {
    match serde_json::from_str(OPENAPI) {
        Ok(doc) => ApiResponse::ok(200, doc),
        Err(_) => problem(500, "internal", "the OpenAPI document is damaged", None),
    }
}

/// The subscription `id` if `caller` has `need` on it: 404 if it cannot
/// see it (another tenant's looks like none), 403 if it may only read it.
fn reachable(
    bus: &Bus,
    caller: &Caller,
    id: &str,
    need: Access,
) -> Result<Subscription, ApiResponse> {
    super::reach::reach(bus, caller, id, need).map_err(refusal)
}

/// [`reachable`] for an id already parsed.
fn reachable_id(
    bus: &Bus,
    caller: &Caller,
    id: SubscriptionId,
    need: Access,
) -> Result<Subscription, ApiResponse> {
    super::reach::reach_id(bus, caller, id, need).map_err(refusal)
}

fn refusal(d: Denied) -> ApiResponse {
    match d {
        Denied::NotFound => not_found("endpoint"),
        Denied::Forbidden => forbidden(),
        Denied::Failed(e) => problem::from_error(&e),
    }
}

fn forbidden() -> ApiResponse {
    problem(
        403,
        "forbidden",
        format!("changes need the `{MANAGE_ROLE}` role, or to be the endpoint's creator"),
        None,
    )
}

/// Runs `f` on the endpoint `id` if `caller` has `need` on it.
fn with_endpoint(
    bus: &Bus,
    caller: &Caller,
    id: &str,
    need: Access,
    f: impl FnOnce(Subscription) -> ApiResponse,
) -> ApiResponse {
    match reachable(bus, caller, id, need) {
        Ok(s) => f(s),
        Err(r) => r,
    }
}
