//! Endpoints (subscriptions) in the v1 routes: list, create, get, patch,
//! delete, rotate the secret, send a test event, health; and the event
//! catalog.

use std::time::Duration;

use serde_json::{Value, json};

use super::problem::{Query, body, from_error, page, problem};
use super::shapes::{self, EndpointCreate, EndpointPatch, RotateIn, TestIn};
use crate::bus::Bus;
use crate::ids::SubscriptionId;
use crate::rest::types::{Access, ApiResponse, Caller};
use crate::subscription::{NewSubscription, Signing, Subscription, SubscriptionPatch};

/// How long the old secret stays valid after a rotation when the request
/// does not say: one day.
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The longest grace period a rotation takes: 7 days.
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How many of an endpoint's newest deliveries its health looks at for
/// failed attempts.
const HEALTH_SCAN: usize = 200;
/// How many failed attempts its health shows.
const LAST_ERRORS: usize = 10;

/// `GET /event-types`: the app's event catalog.
pub(super) fn event_types(bus: &Bus) -> ApiResponse {
    ApiResponse::ok(200, json!({ "data": bus.event_types() }))
}

/// One page of the caller's tenant's endpoints (only its own without a
/// tenant role), oldest first.
pub(super) fn list(bus: &Bus, caller: &Caller, query: &str) -> ApiResponse {
    let q = match Query::parse(query, &["limit", "cursor"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (limit, after) = match (q.limit(), q.parsed::<SubscriptionId>("cursor")) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let tenant = caller.tenant_id();
    let mut out: Vec<Subscription> = Vec::new();
    let mut cursor = after;
    // Batches of the tenant's index: a caller that sees only its own
    // endpoints may need several to fill a page (a tenant has at most
    // `max_subscriptions_per_tenant`).
    loop {
        let batch = match bus
            .subscriptions()
            .list_by_tenant(&tenant, cursor, limit + 1)
        {
            Ok(b) => b,
            Err(e) => return from_error(&e),
        };
        let exhausted = batch.len() <= limit;
        for s in batch {
            cursor = Some(s.id);
            if caller.access(&s) != Access::None {
                out.push(s);
                if out.len() > limit {
                    break;
                }
            }
        }
        if out.len() > limit || exhausted {
            break;
        }
    }
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|s| s.id.to_string())
    } else {
        None
    };
    page(out.iter().map(shapes::endpoint).collect(), next)
}

/// `POST /endpoints`: 201 with `Location`, the endpoint and its secret
/// (shown this once).
pub(super) fn create(bus: &Bus, caller: &Caller, bytes: &[u8]) -> ApiResponse {
    if !caller.may_create() {
        return super::forbidden();
    }
    let b: EndpointCreate = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let signing: Signing = b.signing.map_or(Signing::StandardWebhooks, Into::into);
    let mut new = NewSubscription::new(b.name, b.url)
        .events(b.events)
        .owner(caller.id.clone())
        .signing(signing)
        .active(b.enabled.unwrap_or(true));
    new = match &caller.tenant {
        Some(t) => new.tenant(t.clone()),
        None => new.user_tenant(caller.tenant_id()),
    };
    // Always generated: the secret is shown once, in this answer (a
    // secret of the caller's own goes through the Rust API).
    new = new.generate_secret();
    for (name, value) in b.headers.unwrap_or_default() {
        new = new.header(name, value);
    }
    if let Some(r) = b.rate_limit {
        new = new.rate_limit(r.into());
    }
    if let Some(order) = shapes::order_of(b.order, b.on_dead_letter, Default::default()) {
        new = new.order(order);
    }
    match bus.subscribe(new) {
        Ok(s) => {
            let mut v = shapes::endpoint(&s);
            if let (Some(o), Some(secret)) = (v.as_object_mut(), &s.secret) {
                o.insert("secret".into(), Value::String(secret.expose().to_owned()));
            }
            ApiResponse::ok(201, v)
                .with_header("location", format!("{}/endpoints/{}", super::BASE, s.id))
        }
        Err(e) => from_error(&e),
    }
}

/// `GET /endpoints/{id}`: the endpoint alone (its deliveries are pages of
/// their own), so the work does not grow with its backlog.
pub(super) fn get(s: &Subscription) -> ApiResponse {
    ApiResponse::ok(200, shapes::endpoint(s))
}

/// `PATCH /endpoints/{id}`.
pub(super) fn patch(bus: &Bus, s: &Subscription, bytes: &[u8]) -> ApiResponse {
    let b: EndpointPatch = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut p = SubscriptionPatch::new();
    if let Some(v) = b.name {
        p = p.name(v);
    }
    if let Some(v) = b.url {
        p = p.url(v);
    }
    if let Some(v) = b.events {
        p = p.events(v);
    }
    if let Some(v) = b.enabled {
        p = p.active(v);
    }
    if let Some(v) = b.signing {
        p = p.signing(v.into());
    }
    if let Some(h) = b.headers {
        p = p.headers(h);
    }
    if let Some(r) = b.rate_limit {
        p = p.rate_limit(r.map(Into::into));
    }
    if let Some(order) = shapes::order_of(b.order, b.on_dead_letter, s.order) {
        p = p.order(order);
    }
    if b.resume == Some(true) {
        p = p.resume();
    }
    match bus.subscriptions().update(s.id, p) {
        Ok(s) => ApiResponse::ok(200, shapes::endpoint(&s)),
        Err(e) => from_error(&e),
    }
}

/// `DELETE /endpoints/{id}`.
pub(super) fn delete(bus: &Bus, s: &Subscription) -> ApiResponse {
    match bus.subscriptions().delete(s.id) {
        Ok(()) => ApiResponse::ok(204, Value::Null),
        Err(e) => from_error(&e),
    }
}

/// `POST /endpoints/{id}/rotate-secret`: a new generated secret, shown
/// this once; the old one stays valid for the grace period.
pub(super) fn rotate(bus: &Bus, s: &Subscription, bytes: &[u8]) -> ApiResponse {
    let b: RotateIn = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let grace = b
        .grace_period_seconds
        .map_or(DEFAULT_GRACE, Duration::from_secs);
    if grace > MAX_GRACE {
        return problem(
            400,
            "validation",
            format!(
                "grace_period_seconds must be at most {} (7 days)",
                MAX_GRACE.as_secs()
            ),
            Some("grace_period_seconds"),
        );
    }
    let secret = crate::signing::generate_secret();
    let p = SubscriptionPatch::new().rotate_secret(secret.clone(), grace);
    match bus.subscriptions().update(s.id, p) {
        Ok(s) => ApiResponse::ok(
            200,
            json!({
                "secret": secret,
                "previous_valid_until": s.previous_secret_until.map(|t| t.to_string()),
                "endpoint": shapes::endpoint(&s),
            }),
        ),
        Err(e) => from_error(&e),
    }
}

/// `POST /endpoints/{id}/test`: a stored test event for this endpoint
/// alone (the catalog's example payload when the type has one); 202 with
/// the new delivery, to follow in the log.
pub(super) fn test(bus: &Bus, s: &Subscription, bytes: &[u8]) -> ApiResponse {
    let b: TestIn = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let subs = bus.subscriptions();
    if let Err(e) = bus.subscriptions().check_test_rate(s.id) {
        return from_error(&e);
    }
    // A catalog type sends its example (an empty object without one).
    let example: Option<Value> = b.event_type.as_deref().and_then(|t| {
        bus.event_types()
            .iter()
            .find(|e| e.name == t)
            .map(|e| e.example.clone().unwrap_or_else(|| json!({})))
    });
    let sent = subs.send_test_event(s.id, b.event_type.as_deref(), example.as_ref());
    let id = match sent {
        Ok(id) => id,
        Err(crate::Error::InvalidEventName { .. }) => {
            return problem(
                400,
                "validation",
                "event_type must be 1 to 100 letters, digits, `_`, `-` and `.`",
                Some("event_type"),
            );
        }
        Err(e) => return from_error(&e),
    };
    match bus.outbox().get(id) {
        Ok(Some(d)) => ApiResponse::ok(202, shapes::delivery(&d))
            .with_header("location", format!("{}/deliveries/{id}", super::BASE)),
        Ok(None) => ApiResponse::ok(202, json!({ "id": id.to_string() })),
        Err(e) => from_error(&e),
    }
}

/// `GET /endpoints/{id}/health`: its counters and its latest failed
/// attempts (among its newest deliveries).
pub(super) fn health(bus: &Bus, s: &Subscription) -> ApiResponse {
    let h = match bus.subscriptions().health(s.id) {
        Ok(h) => h,
        Err(e) => return from_error(&e),
    };
    let outbox = bus.outbox();
    let mut errors = Vec::new();
    for d in bus
        .outbox()
        .for_subscription_before(s.id, None)
        .take(HEALTH_SCAN)
    {
        let d = match d {
            Ok(d) => d,
            Err(e) => return from_error(&e),
        };
        if d.attempts == 0 {
            continue;
        }
        let attempts = match outbox.attempts(d.id) {
            Ok(a) => a,
            Err(e) => return from_error(&e),
        };
        for a in attempts.iter().rev().filter(|a| !a.succeeded()) {
            let mut v = shapes::attempt(a);
            if let Some(o) = v.as_object_mut() {
                o.insert("delivery_id".into(), Value::String(d.id.to_string()));
                o.insert("event_type".into(), Value::String(d.event_name.clone()));
            }
            errors.push(v);
        }
        if errors.len() >= LAST_ERRORS {
            break;
        }
    }
    errors.truncate(LAST_ERRORS);
    ApiResponse::ok(200, shapes::health(&h, errors))
}
