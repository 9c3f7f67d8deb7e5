//! Deliveries in the v1 routes: the tenant's delivery log (filtered,
//! newest first, in cursor pages of bounded work), one delivery with its
//! attempts and payload, resend; an endpoint's dead letters retried and
//! its past replayed.

use serde_json::{Value, json};

use super::problem::{self, Query, body, from_error, not_found, page, problem};
use super::reachable_id;
use super::shapes::{self, Empty, ReplayIn};
use crate::bus::Bus;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::Result;
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::rest::types::{Access, ApiResponse, Caller};
use crate::subscription::Subscription;

/// The most deliveries one page of the log looks at, whatever its filters
/// keep: a page may come back short with a `next_cursor` to go on from.
const SCAN_BUDGET: usize = 2_000;

/// The endpoints a log request covers: the one named, or every endpoint
/// of the caller's tenant it may read.
fn endpoints_of(
    bus: &Bus,
    caller: &Caller,
    only: Option<SubscriptionId>,
) -> Result<Vec<Subscription>, ApiResponse> {
    if let Some(id) = only {
        return reachable_id(bus, caller, id, Access::Read).map(|s| vec![s]);
    }
    let tenant = caller.tenant_id();
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let batch = bus
            .subscriptions()
            .list_by_tenant(&tenant, cursor, 500)
            .map_err(|e| from_error(&e))?;
        let done = batch.len() < 500;
        for s in batch {
            cursor = Some(s.id);
            if caller.access(&s) != Access::None {
                out.push(s);
            }
        }
        if done {
            return Ok(out);
        }
    }
}

/// `GET /deliveries`: newest first across the endpoints covered.
pub(super) fn list(bus: &Bus, caller: &Caller, query: &str) -> ApiResponse {
    let q = match Query::parse(
        query,
        &[
            "limit",
            "cursor",
            "endpoint_id",
            "state",
            "event_type",
            "since",
            "until",
        ],
    ) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let parsed = (|| {
        Ok::<_, ApiResponse>((
            q.limit()?,
            q.parsed::<DeliveryId>("cursor")?,
            q.parsed::<SubscriptionId>("endpoint_id")?,
            q.parsed::<DeliveryState>("state")?,
            q.time("since")?,
            q.time("until")?,
        ))
    })();
    let (limit, cursor, endpoint, state, since, until) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let event_type = q.get("event_type");
    if let Some(t) = event_type
        && crate::subscription::validate_event_name(t, false).is_err()
    {
        return problem(
            400,
            "validation",
            "event_type must be 1 to 100 letters, digits, `_`, `-` and `.`",
            Some("event_type"),
        );
    }
    let subs = match endpoints_of(bus, caller, endpoint) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let ids: Vec<SubscriptionId> = subs.iter().map(|s| s.id).collect();
    let mut log = bus
        .outbox()
        .for_subscriptions_before(&ids, cursor)
        .peekable();
    let keep = |d: &Delivery| {
        state.is_none_or(|s| d.state == s)
            && event_type.is_none_or(|t| d.event_name == t)
            && until.is_none_or(|u| d.created_at <= u)
    };
    let mut out = Vec::new();
    let mut last_seen: Option<DeliveryId> = None;
    let mut more = false;
    for _ in 0..SCAN_BUDGET {
        let d = match log.next() {
            None => break,
            Some(Err(e)) => return from_error(&e),
            Some(Ok(d)) => d,
        };
        // Newest first: once older than `since`, all the rest are too.
        if since.is_some_and(|s| d.created_at < s) {
            break;
        }
        if out.len() == limit {
            more = true;
            break;
        }
        last_seen = Some(d.id);
        if keep(&d) {
            out.push(d);
        }
    }
    if !more && out.len() < limit && last_seen.is_some() {
        // Out of budget with more to look at: go on below the last one
        // looked at (if it is not older than `since`).
        more = match log.peek() {
            Some(Ok(d)) => since.is_none_or(|s| d.created_at >= s),
            Some(Err(_)) => true,
            None => false,
        };
    }
    let next = if more {
        last_seen.map(|d| d.to_string())
    } else {
        None
    };
    page(out.iter().map(shapes::delivery).collect(), next)
}

/// The delivery `id` and its endpoint, if `caller` has `need` on it.
fn reachable_delivery(
    bus: &Bus,
    caller: &Caller,
    id: &str,
    need: Access,
) -> Result<(Delivery, Subscription), ApiResponse> {
    let Ok(id) = id.parse::<DeliveryId>() else {
        return Err(not_found("delivery"));
    };
    let d = match bus.outbox().get(id) {
        Ok(Some(d)) => d,
        Ok(None) => return Err(not_found("delivery")),
        Err(e) => return Err(from_error(&e)),
    };
    // Another tenant's delivery looks like none.
    match reachable_id(bus, caller, d.subscription_id, need) {
        Ok(s) => Ok((d, s)),
        Err(r) if r.status == 404 => Err(not_found("delivery")),
        Err(r) => Err(r),
    }
}

/// `GET /deliveries/{id}`: the delivery, its attempts (oldest first) and
/// its event's payload.
pub(super) fn get(bus: &Bus, caller: &Caller, id: &str) -> ApiResponse {
    let (d, _) = match reachable_delivery(bus, caller, id, Access::Read) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let outbox = bus.outbox();
    // Read again with its attempts, as of one moment.
    let (d, attempts) = match outbox.get_with_attempts(d.id) {
        Ok(Some(x)) => x,
        Ok(None) => return not_found("delivery"),
        Err(e) => return from_error(&e),
    };
    let payload = match outbox.event(d.event_id) {
        Ok(Some(e)) => serde_json::from_slice::<Value>(&e.payload)
            .unwrap_or_else(|_| Value::String(shapes::excerpt(&e.payload))),
        Ok(None) => Value::Null,
        Err(e) => return from_error(&e),
    };
    let mut v = shapes::delivery(&d);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "attempt_log".into(),
            Value::Array(attempts.iter().map(shapes::attempt).collect()),
        );
        o.insert("payload".into(), payload);
    }
    ApiResponse::ok(200, v)
}

/// `POST /deliveries/{id}/resend`: its event again, to the same endpoint,
/// as a new delivery: 202 with it.
pub(super) fn resend(bus: &Bus, caller: &Caller, id: &str, bytes: &[u8]) -> ApiResponse {
    if let Err(r) = body::<Empty>(bytes) {
        return r;
    }
    let (d, _) = match reachable_delivery(bus, caller, id, Access::Manage) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // A resend is traffic to the endpoint like a test event: the same
    // limit per endpoint.
    if let Err(e) = bus.subscriptions().check_test_rate(d.subscription_id) {
        return from_error(&e);
    }
    let new = match bus.outbox().resend(d.id) {
        Ok(id) => id,
        Err(e) => return from_error(&e),
    };
    match bus.outbox().get(new) {
        Ok(Some(n)) => ApiResponse::ok(202, shapes::delivery(&n))
            .with_header("location", format!("{}/deliveries/{new}", super::BASE)),
        Ok(None) => not_found("delivery"),
        Err(e) => from_error(&e),
    }
}

/// `POST /endpoints/{id}/retry-dead`: its dead letters due again.
pub(super) fn retry_dead(bus: &Bus, s: &Subscription, bytes: &[u8]) -> ApiResponse {
    if let Err(r) = body::<Empty>(bytes) {
        return r;
    }
    match bus.outbox().retry_all_dead(Some(s.id)) {
        Ok(n) => ApiResponse::ok(200, json!({ "retried": n })),
        Err(e) => from_error(&e),
    }
}

/// `POST /endpoints/{id}/replay`: what it was sent or gave up on from
/// `since` (until `until`, or now) sent again.
pub(super) fn replay(bus: &Bus, s: &Subscription, bytes: &[u8]) -> ApiResponse {
    let b: ReplayIn = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let since = match problem::time(Some(&b.since), "since") {
        Ok(Some(t)) => t,
        Ok(None) => return problem(400, "validation", "`since` is required", Some("since")),
        Err(r) => return r,
    };
    let until = match problem::time(b.until.as_deref(), "until") {
        Ok(t) => t.unwrap_or_else(Timestamp::now),
        Err(r) => return r,
    };
    match bus.outbox().replay_since(s.id, since, until) {
        Ok(n) => ApiResponse::ok(200, json!({ "replayed": n })),
        Err(e) => from_error(&e),
    }
}
