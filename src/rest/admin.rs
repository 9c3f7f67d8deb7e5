//! The operator's routes, under `/webhooks/admin`, for callers with the
//! [`ADMIN_ROLE`](super::ADMIN_ROLE): the outbox tool's operations, usable
//! while the app runs (the sled store's lock keeps the CLI out then).
//!
//! Bodies are the serde forms of the Rust types ([`EndpointHealth`],
//! [`Notice`](crate::Notice), [`Delivery`], [`Attempt`]: snake_case), with
//! camelCase wrappers like the subscriber routes.

use serde_json::{Value, json};

use super::shared::{from_error, parse_body, query_param};
use super::types::ApiResponse;
use crate::bus::Bus;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::Error;
use crate::health::EndpointHealth;
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId, Timestamp};
use crate::record::Attempt;

/// The most items one admin listing returns.
const MAX_PAGE: usize = 500;

/// Routes one admin request (`segments`: the path after
/// `/webhooks/admin`). The caller's role is checked by the caller.
pub(super) fn route(
    bus: &Bus,
    method: &str,
    segments: &[&str],
    query: &str,
    body: &[u8],
) -> ApiResponse {
    match (method, segments) {
        ("GET", ["health"]) => health(bus),
        ("GET", ["subscriptions"]) => endpoint_health(bus),
        ("GET", ["subscriptions", id]) => with_id(id, |id| subscription(bus, id, query)),
        ("POST", ["subscriptions", id, "retry-dead"]) => {
            with_id(id, |id| match bus.outbox().retry_all_dead(Some(id)) {
                Ok(n) => ApiResponse::ok(200, json!({ "retried": n })),
                Err(e) => from_error(&e, false),
            })
        }
        ("POST", ["subscriptions", id, "replay"]) => with_id(id, |id| replay_since(bus, id, body)),
        ("POST", ["events", id, "replay"]) => with_id(id, |id| replay_event(bus, id, body)),
        ("GET", ["deliveries"]) => deliveries(bus, query),
        ("GET", ["deliveries", id]) => with_id(id, |id| delivery(bus, id)),
        ("POST", ["deliveries", id, "retry"]) => {
            with_id(id, |id: DeliveryId| match bus.outbox().retry(id) {
                Ok(d) => ApiResponse::ok(200, json!({ "delivery": delivery_json(&d) })),
                Err(e) => from_error(&e, false),
            })
        }
        ("GET", ["notices"]) => notices(bus, query),
        ("DELETE", ["notices", id]) => with_id(id, |id: NoticeId| match bus.notices().ack(id) {
            Ok(()) => ApiResponse::ok(204, Value::Null),
            Err(e) => from_error(&e, false),
        }),
        (
            _,
            ["health"]
            | ["subscriptions"]
            | ["subscriptions", _]
            | ["subscriptions", _, "retry-dead" | "replay"]
            | ["events", _, "replay"]
            | ["deliveries"]
            | ["deliveries", _]
            | ["deliveries", _, "retry"]
            | ["notices"]
            | ["notices", _],
        ) => ApiResponse::error(
            405,
            "MethodNotAllowed",
            format!("{method} is not allowed here"),
            None,
        ),
        _ => ApiResponse::error(404, "NotFound", "no such admin route", None),
    }
}

/// Parses an id from the path; 404 if it is not one.
fn with_id<T: std::str::FromStr>(id: &str, f: impl FnOnce(T) -> ApiResponse) -> ApiResponse {
    match id.parse::<T>() {
        Ok(id) => f(id),
        Err(_) => ApiResponse::error(
            404,
            "NotFound",
            format!("`{}` is not an id", crate::util::clip(id)),
            None,
        ),
    }
}

/// A `?limit=` from 1 to [`MAX_PAGE`] (`default` when absent).
fn limit(query: &str, default: usize) -> Result<usize, ApiResponse> {
    match query_param(query, "limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiResponse::error(
                400,
                "InvalidLimit",
                format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                Some("limit"),
            )),
        },
    }
}

fn health(bus: &Bus) -> ApiResponse {
    let h = bus.health(std::time::Duration::from_secs(2));
    let body = json!({
        "ready": h.ready,
        "dispatcherAlive": h.dispatcher_alive,
        "storeWritable": h.store_writable,
        "sendersAlive": h.senders_alive,
        "inFlight": h.in_flight,
        "backlog": h.backlog,
        "oldestDueAgeMs": h.oldest_due_age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "problems": h.problems,
    });
    ApiResponse::ok(if h.ready { 200 } else { 503 }, body)
}

fn health_json(h: &EndpointHealth) -> Value {
    serde_json::to_value(h).unwrap_or(Value::Null)
}

fn delivery_json(d: &Delivery) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}

fn attempt_json(a: &Attempt) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    // The response excerpt as text, not a byte array.
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "response_excerpt".into(),
            Value::String(String::from_utf8_lossy(&a.response_excerpt).into_owned()),
        );
    }
    v
}

/// Every subscription's health, failing ones first.
fn endpoint_health(bus: &Bus) -> ApiResponse {
    match bus.subscriptions().health_all() {
        Ok(all) => ApiResponse::ok(
            200,
            json!({ "subscriptions": all.iter().map(health_json).collect::<Vec<_>>() }),
        ),
        Err(e) => from_error(&e, false),
    }
}

/// One subscription's health, with its latest failed attempts.
fn subscription(bus: &Bus, id: SubscriptionId, query: &str) -> ApiResponse {
    let n = match limit(query, 20) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let h = match bus.subscriptions().health(id) {
        Ok(h) => h,
        Err(e) => return from_error(&e, false),
    };
    let outbox = bus.outbox();
    let mut errors = Vec::new();
    // The newest deliveries first, at most 10 × the limit looked at.
    for d in outbox.for_subscription(id, true).take(n.saturating_mul(10)) {
        let d = match d {
            Ok(d) => d,
            Err(e) => return from_error(&e, false),
        };
        let attempts = match outbox.attempts(d.id) {
            Ok(a) => a,
            Err(e) => return from_error(&e, false),
        };
        for a in attempts.iter().rev().filter(|a| !a.succeeded()) {
            let mut v = attempt_json(a);
            if let Some(o) = v.as_object_mut() {
                o.insert("delivery".into(), Value::String(d.id.to_string()));
                o.insert("event".into(), Value::String(d.event_name.clone()));
            }
            errors.push(v);
        }
        if errors.len() >= n {
            break;
        }
    }
    errors.truncate(n);
    ApiResponse::ok(
        200,
        json!({ "health": health_json(&h), "lastErrors": errors }),
    )
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpanDto {
    from: String,
    #[serde(default)]
    until: Option<String>,
}

fn timestamp(field: &str, v: &str) -> Result<Timestamp, ApiResponse> {
    v.parse::<Timestamp>()
        .map_err(|e| ApiResponse::error(400, "InvalidTime", format!("{field}: {e}"), Some(field)))
}

/// `{from, until?}` (RFC 3339; until defaults to now): replays the span.
fn replay_since(bus: &Bus, id: SubscriptionId, body: &[u8]) -> ApiResponse {
    let span: SpanDto = match parse_body(body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let from = match timestamp("from", &span.from) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let until = match span
        .until
        .as_deref()
        .map(|u| timestamp("until", u))
        .transpose()
    {
        Ok(t) => t.unwrap_or_else(Timestamp::now),
        Err(r) => return r,
    };
    match bus.outbox().replay_since(id, from, until) {
        Ok(n) => ApiResponse::ok(200, json!({ "replayed": n })),
        Err(e) => replay_error(&e),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReplayEventDto {
    #[serde(default)]
    subscription_id: Option<String>,
}

/// `{subscriptionId?}`: sends a stored event again.
fn replay_event(bus: &Bus, id: EventId, body: &[u8]) -> ApiResponse {
    let dto: ReplayEventDto = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayEventDto::default()
    } else {
        match parse_body(body) {
            Ok(d) => d,
            Err(r) => return r,
        }
    };
    let sub = match dto
        .subscription_id
        .as_deref()
        .map(str::parse::<SubscriptionId>)
    {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            return ApiResponse::error(400, "InvalidId", e.to_string(), Some("subscriptionId"));
        }
    };
    match bus.outbox().replay(id, sub) {
        Ok(ids) => ApiResponse::ok(
            200,
            json!({ "deliveries": ids.iter().map(ToString::to_string).collect::<Vec<_>>() }),
        ),
        Err(e) => replay_error(&e),
    }
}

fn replay_error(e: &Error) -> ApiResponse {
    match e {
        Error::InvalidReplay(_) => ApiResponse::error(400, "InvalidReplay", e.to_string(), None),
        Error::EventNotFound(_) => ApiResponse::error(404, "NotFound", e.to_string(), None),
        _ => from_error(e, false),
    }
}

/// Deliveries as they finish: `?state=delivered|dead` (default
/// delivered), `?after=` the last one seen, `?limit=`. Poll it to follow
/// (the CLI's `tail`).
fn deliveries(bus: &Bus, query: &str) -> ApiResponse {
    let n = match limit(query, 100) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let state = match query_param(query, "state")
        .as_deref()
        .map(str::parse::<DeliveryState>)
    {
        None => DeliveryState::Delivered,
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            return ApiResponse::error(400, "InvalidState", e.to_string(), Some("state"));
        }
    };
    let after = match query_param(query, "after")
        .as_deref()
        .map(str::parse::<DeliveryId>)
    {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => return ApiResponse::error(400, "InvalidId", e.to_string(), Some("after")),
    };
    let listing = match after {
        Some(a) => bus.outbox().list_after(state, a),
        None => bus.outbox().list(state),
    };
    let mut page: Vec<Delivery> = Vec::new();
    // Records that do not decode are counted and stepped over (the
    // dispatcher moves them aside), not the end of the listing.
    let mut damaged = 0u64;
    for item in listing.take(n) {
        match item {
            Ok(d) => page.push(d),
            Err(Error::Corrupt { .. }) => damaged += 1,
            // The cursor's delivery left the listing (retried, purged).
            Err(e @ (Error::CursorMoved { .. } | Error::DeliveryNotFound(_))) => {
                return ApiResponse::error(
                    409,
                    "CursorMoved",
                    format!("{e}; list again from the start"),
                    Some("after"),
                );
            }
            Err(e) => return from_error(&e, false),
        }
    }
    let next = page.last().map(|d| d.id.to_string());
    ApiResponse::ok(
        200,
        json!({
            "deliveries": page.iter().map(delivery_json).collect::<Vec<_>>(),
            "next": next,
            "damaged": damaged,
        }),
    )
}

/// One delivery with its attempts (response excerpts as text).
fn delivery(bus: &Bus, id: DeliveryId) -> ApiResponse {
    match bus.outbox().get_with_attempts(id) {
        Ok(Some((d, attempts))) => ApiResponse::ok(
            200,
            json!({
                "delivery": delivery_json(&d),
                "attempts": attempts.iter().map(attempt_json).collect::<Vec<_>>(),
            }),
        ),
        Ok(None) => ApiResponse::error(404, "NotFound", format!("no delivery with id {id}"), None),
        Err(e) => from_error(&e, false),
    }
}

fn notices(bus: &Bus, query: &str) -> ApiResponse {
    let n = match limit(query, 100) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match bus.notices().pending(n) {
        Ok(all) => ApiResponse::ok(
            200,
            json!({ "notices": all.iter().map(|n| serde_json::to_value(n).unwrap_or(Value::Null)).collect::<Vec<_>>() }),
        ),
        Err(e) => from_error(&e, false),
    }
}
