//! A framework-agnostic REST handler for subscriptions: the tenant API
//! [`v1`] (under `/webhooks/v1`, described by an OpenAPI 3.1 document;
//! see `docs/TENANT_API.md`), the portal page (`/webhooks/portal`, see
//! `hookbus::portal`), and the routes of ServiceStack.Webhooks
//! below, for the endpoints your own subscribers call.
//!
//! **Who may do what** is the same on both route sets: a caller reaches
//! only its tenant's subscriptions; inside it, [`MANAGE_ROLE`]
//! (`webhooks:manage`) reads and changes all of them, [`READ_ROLE`]
//! (`webhooks:read`) reads all of them, and a caller with neither reads and
//! changes the ones it created.
//!
//! Give [`handle`] the method, path, query, the caller (as your
//! authentication established it) and the body; it returns a status and a
//! JSON body to send back. Wire it into any web framework in a few lines
//! (see `examples/axum_server.rs`).
//!
//! | route | who | does |
//! | --- | --- | --- |
//! | `POST /webhooks/subscriptions` | any caller | create `{name, events, config: {url, secret, contentType}}` |
//! | `GET /webhooks/subscriptions` | any caller | the caller's own subscriptions (read by its tenant: other tenants' cost nothing) |
//! | `GET /webhooks/subscriptions/{id}` | its owner | one, with its latest ≤ 100 attempts, newest first, from its newest 200 deliveries (bounded work whatever its backlog; older deliveries: `history`) |
//! | `PUT /webhooks/subscriptions/{id}` | its owner | change `url`, `secret`, `contentType`, `isActive`, `name`, `events` |
//! | `DELETE /webhooks/subscriptions/{id}` | its owner | delete |
//! | `GET /webhooks/subscriptions/{id}/history` | its owner | its latest deliveries (`?limit=`, ≤ 100) |
//! | `POST /webhooks/subscriptions/{id}/ping` | its owner | a test request now ([`Subscriptions::ping`](crate::Subscriptions::ping)): its status, time, excerpt; 429 `TooManyRequests` beyond the test-request limit ([`TEST_REQUEST_BURST`](crate::TEST_REQUEST_BURST)) |
//! | `GET /webhooks/subscriptions/search?eventName=` | role `relay` | the active subscribers an event reaches: the caller's tenant's, or (a caller without tenant) the app-wide ones |
//!
//! **Operator routes**, for callers with the [`ADMIN_ROLE`] (`admin`) and
//! no tenant (they see every tenant's subscriptions and deliveries, so a
//! tenant's caller gets 403 whatever its roles): what the outbox CLI does,
//! usable while the app runs (bodies are the
//! Rust types' serde forms, snake_case, in camelCase wrappers):
//!
//! | route | does |
//! | --- | --- |
//! | `GET /webhooks/admin/health` | [`Bus::health`](crate::Bus::health): 200 ready, 503 not, with the problems |
//! | `GET /webhooks/admin/subscriptions` | every subscription's [`EndpointHealth`](crate::EndpointHealth), failing first |
//! | `GET /webhooks/admin/subscriptions/{id}` | one's health and its latest failed attempts (`?limit=`, 20) |
//! | `POST /webhooks/admin/subscriptions/{id}/retry-dead` | its dead letters due again: `{"retried": n}` |
//! | `POST /webhooks/admin/subscriptions/{id}/replay` | `{"from": RFC 3339, "until"?: RFC 3339}`: [`Outbox::replay_since`](crate::Outbox::replay_since) |
//! | `POST /webhooks/admin/events/{id}/replay` | `{"subscriptionId"?: id}` or no body: [`Outbox::replay`](crate::Outbox::replay) |
//! | `GET /webhooks/admin/deliveries?state=&after=&limit=` | finished deliveries in finish order (`delivered`, or `dead`), after a cursor: poll it to follow |
//! | `GET /webhooks/admin/deliveries/{id}` | one delivery and its attempts, response excerpts as text |
//! | `POST /webhooks/admin/deliveries/{id}/retry` | a dead letter due again |
//! | `GET /webhooks/admin/notices?limit=` | unacknowledged [`Notice`](crate::Notice)s, oldest first |
//! | `DELETE /webhooks/admin/notices/{id}` | acknowledge one |
//!
//! Unlike the seed plugin, reads and changes of one subscription are
//! checked against the caller's tenant and roles: a caller who may not see
//! it gets 404, not the record; one who may only read it gets 403 on a
//! change.
//!
//! **Tenants.** What a caller creates belongs to its tenant
//! ([`Caller::tenant`], or `user:<id>` when it has none: see
//! [`Caller::tenant_id`]): it receives
//! the events published for that tenant with
//! [`Bus::publish_to`](crate::Bus::publish_to), never another tenant's, and
//! app-wide events ([`Bus::publish`](crate::Bus::publish)) only if the
//! operator built the bus with
//! [`tenants_receive_app_events`](crate::Builder::tenants_receive_app_events).
//! A tenant may have at most
//! [`max_subscriptions_per_tenant`](crate::Builder::max_subscriptions_per_tenant)
//! subscriptions (409 `TenantFull` beyond).
//!
//! Beyond ServiceStack's shape, create and update take
//! `config.headers` (`{"Authorization": "Bearer …"}`; responses show
//! `config.headerNames` only), `rateLimit` (`{"perSecond": 5, "burst": 10}`,
//! `null` on update removes it), `order` (`"unordered"`, or
//! `{"fifo": {"onDeadLetter": "skip"}}` / `"halt"`), and update takes
//! `"resume": true` for a FIFO subscription halted at a dead letter.
//! Secrets are never returned, nor the addresses a refused target resolved
//! to (the attempt says only that they are not allowed; the operator's logs
//! have them). `contentType` is there for ServiceStack's shape: it is always
//! `application/json`, and any other value is a 400. Times are RFC 3339
//! strings. Errors carry a ServiceStack-style
//! `responseStatus` with the field and the rule: 400 validation, 401 no
//! caller, 403 missing role, 404 unknown, 405 wrong method, 409 conflict.

// Rooms (a plain comment: `rest` is public, and its files are not part of
// its documentation):
//
// | file | job |
// | --- | --- |
// | `types.rs` | the values `handle` takes and returns: `Caller` and its roles, `ApiRequest`, `ApiResponse` |
// | `reach.rs` | the lookup both route sets make: the subscription, and the caller's access to it |
// | `shared.rs` | what both route sets share: bodies and queries in, errors out as responses |
// | `dto.rs` | the JSON shapes of the subscribers' routes |
// | `subscriber.rs` | the subscribers' routes |
// | `admin.rs` | the operators' routes |
// | `mod.rs` | `handle`: which route set a request goes to, and who may call it |

mod admin;
mod dto;
pub(crate) mod page;
mod reach;
mod shared;
mod subscriber;
mod types;
pub mod v1;

use crate::bus::Bus;

pub use crate::subscription::USER_TENANT_PREFIX;
pub use types::{ADMIN_ROLE, ApiRequest, ApiResponse, Caller, MANAGE_ROLE, READ_ROLE, RELAY_ROLE};

const BASE: &str = "/webhooks/subscriptions";
const ADMIN_BASE: &str = "/webhooks/admin";

/// Handles one request. Never panics; every failure is a status and a
/// `responseStatus` body.
pub fn handle(bus: &Bus, req: ApiRequest<'_>) -> ApiResponse {
    let path = req.path.trim_end_matches('/');
    if path == v1::BASE || path.starts_with("/webhooks/v1/") {
        return v1::handle(bus, req);
    }
    if path == page::PAGE_PATH {
        // The page itself holds no data: whoever opens it needs a portal
        // link or the app's authentication for the v1 routes it calls.
        return if req.method.eq_ignore_ascii_case("GET") {
            page::page(None)
        } else {
            v1::problem::problem(
                405,
                "method_not_allowed",
                "the portal page is read with GET",
                None,
            )
            .with_header("allow", "GET")
        };
    }
    if let Some(rest) = path
        .strip_prefix(ADMIN_BASE)
        .filter(|r| r.is_empty() || r.starts_with('/'))
    {
        let Some(caller) = req.caller else {
            return ApiResponse::error(401, "Unauthorized", "authentication required", None);
        };
        if !caller.has_role(ADMIN_ROLE) {
            return ApiResponse::error(
                403,
                "Forbidden",
                format!("the admin routes need the `{ADMIN_ROLE}` role"),
                None,
            );
        }
        // They see every tenant's subscriptions and deliveries: for the
        // app's own operators, never a tenant's administrators.
        if caller.tenant.is_some() {
            return ApiResponse::error(
                403,
                "Forbidden",
                "the admin routes are for the app's operators, not for a tenant's callers",
                None,
            );
        }
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method.to_ascii_uppercase();
        return admin::route(bus, &method, &segments, req.query, req.body);
    }
    let Some(rest) = path.strip_prefix(BASE) else {
        return ApiResponse::error(404, "NotFound", format!("no route for {}", req.path), None);
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some(caller) = req.caller else {
        return ApiResponse::error(401, "Unauthorized", "authentication required", None);
    };
    let method = req.method.to_ascii_uppercase();
    subscriber::route(bus, caller, &method, &segments, req)
}
