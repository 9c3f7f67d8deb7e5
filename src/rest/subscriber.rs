//! The subscribers' routes under `/webhooks/subscriptions`: create,
//! list, get, update, delete, history, ping, and the relay's search.

use serde_json::{Value, json};

use super::dto::{CONTENT_TYPE_JSON, CreateDto, UpdateDto, attempt_dto, check_content_type, dto};
use super::reach::Denied;
use super::shared::{from_error, parse_body, query_param};
use super::types::{Access, ApiRequest, ApiResponse, Caller, MANAGE_ROLE, RELAY_ROLE};
use crate::bus::Bus;
use crate::error::Error;
use crate::ids::SubscriptionId;
use crate::subscription::{NewSubscription, Subscription, SubscriptionPatch};

const MAX_HISTORY: usize = 100;

/// Routes one subscriber request (`segments`: the path after
/// `/webhooks/subscriptions`) for an authenticated `caller`; `method` is
/// upper case.
pub(super) fn route(
    bus: &Bus,
    caller: &Caller,
    method: &str,
    segments: &[&str],
    req: ApiRequest<'_>,
) -> ApiResponse {
    match (method, segments) {
        ("POST", []) => create(bus, caller, req.body),
        ("GET", []) => list(bus, caller),
        ("GET", ["search"]) => search(bus, caller, req.query),
        ("GET", [id]) => with_owned(bus, caller, id, Access::Read, |s| get(bus, &s)),
        ("PUT", [id]) => with_owned(bus, caller, id, Access::Manage, |s| {
            update(bus, s.id, req.body)
        }),
        ("DELETE", [id]) => with_owned(bus, caller, id, Access::Manage, |s| {
            match bus.subscriptions().delete(s.id) {
                Ok(()) => ApiResponse::ok(204, Value::Null),
                Err(e) => from_error(&e, false),
            }
        }),
        ("GET", [id, "history"]) => with_owned(bus, caller, id, Access::Read, |s| {
            history(bus, &s, req.query)
        }),
        ("POST", [id, "ping"]) => with_owned(bus, caller, id, Access::Manage, |s| ping(bus, s.id)),
        (_, [] | ["search"] | [_] | [_, "history"] | [_, "ping"]) => ApiResponse::error(
            405,
            "MethodNotAllowed",
            format!("{} is not allowed on {}", req.method, req.path),
            None,
        ),
        _ => ApiResponse::error(404, "NotFound", format!("no route for {}", req.path), None),
    }
}

fn create(bus: &Bus, caller: &Caller, body: &[u8]) -> ApiResponse {
    if !caller.may_create() {
        return ApiResponse::error(
            403,
            "Forbidden",
            format!("creating subscriptions needs the `{MANAGE_ROLE}` role, or no role"),
            None,
        );
    }
    let dto_in: CreateDto = match parse_body(body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut new = NewSubscription::new(dto_in.name, dto_in.config.url)
        .events(dto_in.events)
        .owner(caller.id.clone());
    new = match &caller.tenant {
        Some(t) => new.tenant(t.clone()),
        None => new.user_tenant(caller.tenant_id()),
    };
    if let Some(s) = dto_in.config.secret {
        new = new.secret(s);
    }
    for (name, value) in dto_in.config.headers.unwrap_or_default() {
        new = new.header(name, value);
    }
    if let Some(limit) = dto_in.rate_limit {
        new = new.rate_limit(limit);
    }
    if let Some(order) = dto_in.order {
        new = new.order(order);
    }
    if let Err(r) = check_content_type(dto_in.config.content_type.as_deref(), true) {
        return r;
    }
    match bus.subscribe(new) {
        Ok(s) => ApiResponse::ok(201, json!({ "subscriptions": [dto(&s)] })),
        Err(e) => from_error(&e, true),
    }
}

/// The caller's subscriptions, read through the index by tenant: its
/// tenant's, and for a caller without a tenant also the ones without a
/// tenant it owns (see `Caller::owns`); then owned ones only, oldest first.
fn list(bus: &Bus, caller: &Caller) -> ApiResponse {
    const PAGE: usize = 100;
    let subs = bus.subscriptions();
    let mine = || -> Result<Vec<Subscription>, Error> {
        let tenant = caller.tenant_id();
        let mut out: Vec<Subscription> = Vec::new();
        loop {
            let page = subs.list_by_tenant(&tenant, out.last().map(|s| s.id), PAGE)?;
            let done = page.len() < PAGE;
            out.extend(page);
            if done {
                break;
            }
        }
        if caller.tenant.is_none() {
            // Made through the Rust API or before tenants: by owner.
            out.extend(
                subs.list_by_owner(&caller.id)?
                    .into_iter()
                    .filter(|s| s.tenant.is_none()),
            );
            out.sort_by_key(|s| s.id);
        }
        Ok(out)
    };
    match mine() {
        Ok(subs) => ApiResponse::ok(
            200,
            json!({ "subscriptions": subs
                .iter()
                .filter(|s| caller.owns(s))
                .map(dto)
                .collect::<Vec<_>>() }),
        ),
        Err(e) => from_error(&e, false),
    }
}

/// Runs `f` on the subscription `id` if `caller` has `need` on it; 404 if
/// it cannot see it, 403 if it may only read it.
fn with_owned(
    bus: &Bus,
    caller: &Caller,
    id: &str,
    need: Access,
    f: impl FnOnce(Subscription) -> ApiResponse,
) -> ApiResponse {
    match super::reach::reach(bus, caller, id, need) {
        Ok(s) => f(s),
        Err(Denied::NotFound) => ApiResponse::error(
            404,
            "NotFound",
            format!("no subscription with id {}", crate::util::clip(id)),
            None,
        ),
        Err(Denied::Forbidden) => ApiResponse::error(
            403,
            "Forbidden",
            format!("changing subscriptions needs the `{MANAGE_ROLE}` role"),
            None,
        ),
        Err(Denied::Failed(e)) => from_error(&e, false),
    }
}

/// The most deliveries [`latest_attempts`] looks at: a subscription's GET
/// costs the same whatever its backlog (a long run of deliveries never
/// attempted would otherwise be walked to its end looking for attempts).
const HISTORY_DELIVERIES: usize = 200;

/// The latest attempts of a subscription, newest first, at most `limit`,
/// from its newest [`HISTORY_DELIVERIES`] deliveries.
fn latest_attempts(bus: &Bus, s: &Subscription, limit: usize) -> Result<Vec<Value>, Error> {
    let outbox = bus.outbox();
    let mut out = Vec::new();
    for d in outbox
        .for_subscription_before(s.id, None)
        .take(HISTORY_DELIVERIES)
    {
        let d = d?;
        if d.attempts == 0 {
            continue; // none to read
        }
        let mut attempts = outbox.attempts(d.id)?;
        attempts.reverse();
        for a in attempts {
            out.push(attempt_dto(s.id, &d, &a));
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn get(bus: &Bus, s: &Subscription) -> ApiResponse {
    match latest_attempts(bus, s, MAX_HISTORY) {
        Ok(h) => ApiResponse::ok(200, json!({ "subscription": dto(s), "history": h })),
        Err(e) => from_error(&e, false),
    }
}

fn history(bus: &Bus, s: &Subscription, query: &str) -> ApiResponse {
    let limit = match query_param(query, "limit") {
        None => MAX_HISTORY,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY).contains(&n) => n,
            _ => {
                return ApiResponse::error(
                    400,
                    "InvalidLimit",
                    "limit must be a whole number from 1 to 100",
                    Some("limit"),
                );
            }
        },
    };
    let outbox = bus.outbox();
    let mut deliveries = Vec::new();
    for d in outbox.for_subscription(s.id, true).take(limit) {
        match d {
            Ok(d) => deliveries.push(json!({
                "id": d.id.to_string(),
                "eventId": d.event_id.to_string(),
                "eventName": d.event_name,
                "state": d.state.as_str(),
                "attempts": d.attempts,
                "createdDateUtc": d.created_at.to_string(),
                "nextAttemptDateUtc": d.next_attempt_at.map(|t| t.to_string()),
                "finishedDateUtc": d.finished_at.map(|t| t.to_string()),
                "lastStatusCode": d.last_status,
                "lastError": d.last_error,
            })),
            Err(e) => return from_error(&e, false),
        }
    }
    ApiResponse::ok(200, json!({ "deliveries": deliveries }))
}

fn update(bus: &Bus, id: SubscriptionId, body: &[u8]) -> ApiResponse {
    let u: UpdateDto = match parse_body(body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut patch = SubscriptionPatch::new();
    if let Some(v) = u.name {
        patch = patch.name(v);
    }
    if let Some(v) = u.events {
        patch = patch.events(v);
    }
    if let Some(v) = u.url {
        patch = patch.url(v);
    }
    if let Some(v) = u.secret {
        patch = if v.is_empty() {
            patch.clear_secret()
        } else {
            patch.secret(v)
        };
    }
    if let Err(r) = check_content_type(u.content_type.as_deref(), false) {
        return r;
    }
    if let Some(v) = u.is_active {
        patch = patch.active(v);
    }
    if let Some(h) = u.headers {
        patch = patch.headers(h);
    }
    if let Some(limit) = u.rate_limit {
        patch = patch.rate_limit(limit);
    }
    if let Some(order) = u.order {
        patch = patch.order(order);
    }
    if u.resume {
        patch = patch.resume();
    }
    match bus.subscriptions().update(id, patch) {
        Ok(s) => ApiResponse::ok(200, json!({ "subscription": dto(&s) })),
        Err(e) => from_error(&e, false),
    }
}

fn search(bus: &Bus, caller: &Caller, query: &str) -> ApiResponse {
    if !caller.has_role(RELAY_ROLE) {
        return ApiResponse::error(
            403,
            "Forbidden",
            format!("searching subscribers needs the `{RELAY_ROLE}` role"),
            None,
        );
    }
    let Some(event) = query_param(query, "eventName") else {
        return ApiResponse::error(
            400,
            "MissingEventName",
            "give the event as ?eventName=",
            Some("eventName"),
        );
    };
    // A relay with a tenant sees what that tenant's events reach; one
    // without, what app-wide events reach.
    let found = match &caller.tenant {
        Some(t) => bus.subscriptions().for_tenant_event(t, &event),
        None => bus.subscriptions().for_event(&event),
    };
    match found {
        Ok(subs) => ApiResponse::ok(
            200,
            json!({ "subscribers": subs.iter().map(|s| json!({
                "subscriptionId": s.id.to_string(),
                "config": { "url": s.url, "contentType": CONTENT_TYPE_JSON },
            })).collect::<Vec<_>>() }),
        ),
        Err(e) => from_error(&e, false),
    }
}

/// `POST {id}/ping`: a test request to the subscription now; the outcome.
fn ping(bus: &Bus, id: SubscriptionId) -> ApiResponse {
    match bus.subscriptions().ping(id) {
        Ok(a) => ApiResponse::ok(
            200,
            json!({
                "statusCode": a.status,
                "succeeded": a.succeeded(),
                "durationMs": a.duration_ms,
                "error": a.error.as_ref().map(ToString::to_string),
                "responseExcerpt": String::from_utf8_lossy(&a.response_excerpt)
                    .chars()
                    .take(200)
                    .collect::<String>(),
            }),
        ),
        Err(e) => from_error(&e, false),
    }
}
