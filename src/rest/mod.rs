//! A framework-agnostic REST handler for subscriptions, with the routes of
//! ServiceStack.Webhooks, for the endpoints your own subscribers call.
//!
//! Give [`handle`] the method, path, query, the caller (as your
//! authentication established it) and the body; it returns a status and a
//! JSON body to send back. Wire it into any web framework in a few lines
//! (see `examples/axum_server.rs`).
//!
//! | route | who | does |
//! | --- | --- | --- |
//! | `POST /webhooks/subscriptions` | any caller | create `{name, events, config: {url, secret, contentType}}` |
//! | `GET /webhooks/subscriptions` | any caller | the caller's own subscriptions |
//! | `GET /webhooks/subscriptions/{id}` | its owner | one, with its latest ≤ 100 attempts, newest first |
//! | `PUT /webhooks/subscriptions/{id}` | its owner | change `url`, `secret`, `contentType`, `isActive`, `name`, `events` |
//! | `DELETE /webhooks/subscriptions/{id}` | its owner | delete |
//! | `GET /webhooks/subscriptions/{id}/history` | its owner | its latest deliveries (`?limit=`, ≤ 100) |
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
//! checked against its owner: another caller gets 404, not the record.
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

mod admin;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bus::Bus;
use crate::error::Error;
use crate::ids::SubscriptionId;
use crate::policy::{DeliveryOrder, RateLimit};
use crate::record::Attempt;
use crate::subscription::{NewSubscription, Subscription, SubscriptionPatch};

pub use crate::subscription::USER_TENANT_PREFIX;

/// The role that may search subscribers (the seed's relay role).
pub const RELAY_ROLE: &str = "relay";
/// The role of operators: the `/webhooks/admin` routes (every
/// subscription's health, replay, retries, notices).
pub const ADMIN_ROLE: &str = "admin";
const BASE: &str = "/webhooks/subscriptions";
const ADMIN_BASE: &str = "/webhooks/admin";
/// The one `contentType` the routes accept and show (ServiceStack's
/// subscription shape has the field; hookbus always sends JSON).
const CONTENT_TYPE_JSON: &str = "application/json";
const MAX_HISTORY: usize = 100;

/// Who is calling, as the application's authentication says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's user id; it becomes the owner of what it creates.
    pub id: String,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// The caller's tenant (customer, organisation); `None` means the
    /// caller is a tenant of its own, with its `id` as tenant id. What a
    /// caller creates belongs to this tenant: it receives the events
    /// published for it ([`Bus::publish_to`]) and never another tenant's.
    pub tenant: Option<String>,
}

impl Caller {
    /// A caller with an id and roles.
    pub fn new<I, S>(id: impl Into<String>, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Caller {
            id: id.into(),
            roles: roles.into_iter().map(Into::into).collect(),
            tenant: None,
        }
    }

    /// The caller belongs to this tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The tenant whose subscriptions this caller sees and creates: its
    /// [`tenant`](Caller::tenant), or `user:<id>` when it has none (a
    /// tenant of its own, in a namespace explicit tenants cannot use). Publish
    /// for it with [`Bus::publish_to`](crate::Bus::publish_to) and this id.
    pub fn tenant_id(&self) -> String {
        match &self.tenant {
            Some(t) => t.clone(),
            None => format!("{USER_TENANT_PREFIX}{}", self.id),
        }
    }

    /// Whether the caller may see and change `s`: it created it, in its
    /// tenant. A subscription without a tenant (made through the Rust API,
    /// or stored before tenants existed) is reachable only by a caller
    /// without a tenant and with the same owner id.
    fn owns(&self, s: &Subscription) -> bool {
        if s.owner.as_deref() != Some(self.id.as_str()) {
            return false;
        }
        match (&s.tenant, &self.tenant) {
            (Some(t), _) => *t == self.tenant_id(),
            (None, None) => true,
            (None, Some(_)) => false,
        }
    }

    fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// One HTTP request, as the web framework received it.
///
/// Its `Debug` shows the body's length only: a body can carry a
/// subscription secret.
#[derive(Clone, Copy)]
pub struct ApiRequest<'a> {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: &'a str,
    /// The path, such as `/webhooks/subscriptions/0192…`.
    pub path: &'a str,
    /// The query string without `?` (may be empty).
    pub query: &'a str,
    /// The authenticated caller, or `None`.
    pub caller: Option<&'a Caller>,
    /// The request body (JSON for POST and PUT).
    pub body: &'a [u8],
}

impl std::fmt::Debug for ApiRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("caller", &self.caller)
            .field(
                "body",
                &format_args!("[{} bytes, redacted]", self.body.len()),
            )
            .finish()
    }
}

/// What to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body; `Value::Null` means no body (204).
    pub body: Value,
}

impl ApiResponse {
    fn ok(status: u16, body: Value) -> Self {
        ApiResponse { status, body }
    }

    fn error(status: u16, code: &str, message: impl Into<String>, field: Option<&str>) -> Self {
        let message = message.into();
        let errors = match field {
            Some(f) => json!([{ "fieldName": f, "errorCode": code, "message": message }]),
            None => json!([]),
        };
        ApiResponse {
            status,
            body: json!({ "responseStatus": { "errorCode": code, "message": message, "errors": errors } }),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDto {
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default, alias = "content_type")]
    content_type: Option<String>,
    /// Custom headers, name to value.
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateDto {
    name: String,
    events: Vec<String>,
    config: ConfigDto,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    order: Option<DeliveryOrder>,
}

/// A field that may be absent (keep), `null` (remove) or a value.
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateDto {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default, alias = "content_type")]
    content_type: Option<String>,
    #[serde(default, alias = "is_active")]
    is_active: Option<bool>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "double_option")]
    rate_limit: Option<Option<RateLimit>>,
    #[serde(default)]
    order: Option<DeliveryOrder>,
    /// `true` resumes a FIFO subscription halted at a dead letter.
    #[serde(default)]
    resume: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionDto<'a> {
    id: String,
    name: &'a str,
    events: &'a [String],
    config: ConfigOut<'a>,
    is_active: bool,
    has_secret: bool,
    created_by_id: Option<&'a str>,
    tenant: Option<&'a str>,
    rate_limit: Option<RateLimit>,
    order: DeliveryOrder,
    halted_at: Option<String>,
    created_date_utc: String,
    last_modified_date_utc: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigOut<'a> {
    url: &'a str,
    content_type: &'a str,
    /// Header names only: values are secrets.
    header_names: Vec<&'a str>,
}

fn dto(s: &Subscription) -> Value {
    serde_json::to_value(SubscriptionDto {
        id: s.id.to_string(),
        name: &s.name,
        events: &s.events,
        config: ConfigOut {
            url: &s.url,
            content_type: CONTENT_TYPE_JSON,
            header_names: s.headers.iter().map(|(n, _)| n.as_str()).collect(),
        },
        is_active: s.active,
        has_secret: s.secret.is_some(),
        created_by_id: s.owner.as_deref(),
        tenant: s.tenant.as_deref(),
        rate_limit: s.rate_limit,
        order: s.order,
        halted_at: s.halted_at.map(|d| d.to_string()),
        created_date_utc: s.created_at.to_string(),
        last_modified_date_utc: s.modified_at.to_string(),
    })
    .unwrap_or(Value::Null)
}

fn attempt_dto(s: SubscriptionId, d: &crate::delivery::Delivery, a: &Attempt) -> Value {
    let description = match (&a.status, &a.error) {
        (Some(_), _) => String::from_utf8_lossy(&a.response_excerpt)
            .chars()
            .take(200)
            .collect(),
        (None, Some(e)) => e.to_string(),
        (None, None) => String::new(),
    };
    json!({
        "id": format!("{}-{}", d.id, a.number),
        "deliveryId": d.id.to_string(),
        "attempt": a.number,
        "attemptedDateUtc": a.at.to_string(),
        "statusCode": a.status,
        "statusDescription": description,
        "durationMs": a.duration_ms,
        "subscriptionId": s.to_string(),
        "eventId": d.event_id.to_string(),
        "eventName": d.event_name,
    })
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

/// Maps a hookbus error to a response, naming the request field at fault.
fn from_error(e: &Error, in_config: bool) -> ApiResponse {
    let f = |name: &'static str, nested: &'static str| Some(if in_config { nested } else { name });
    let (status, code, field) = match e {
        Error::InvalidUrl { .. } => (400, "InvalidUrl", f("url", "config.url")),
        Error::InvalidEventName { .. } => (400, "InvalidEventName", Some("events")),
        Error::NoEvents => (400, "NoEvents", Some("events")),
        Error::InvalidName { .. } => (400, "InvalidName", Some("name")),
        Error::InvalidSecret { .. } => (400, "InvalidSecret", f("secret", "config.secret")),
        Error::InvalidOwner { .. } => (400, "InvalidOwner", Some("createdById")),
        Error::InvalidTenant { .. } => (400, "InvalidTenant", Some("tenant")),
        Error::InvalidHeader { .. } => (400, "InvalidHeader", f("headers", "config.headers")),
        Error::InvalidPolicy { .. } => (400, "InvalidPolicy", Some("rateLimit")),
        Error::TenantFull { .. } => (409, "TenantFull", None),
        Error::Conflict { .. } => (409, "Conflict", Some("events")),
        Error::IdempotencyKeyReused { .. } => (409, "Conflict", None),
        Error::SubscriptionNotFound(_) | Error::DeliveryNotFound(_) | Error::EventNotFound(_) => {
            (404, "NotFound", None)
        }
        Error::NotDead { .. } => (409, "NotDead", None),
        Error::InvalidReplay(_) => (400, "InvalidReplay", None),
        Error::Closed => (503, "Unavailable", None),
        _ => (500, "InternalError", None),
    };
    let message = if status == 500 {
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    if status == 500 {
        tracing::error!(error = %e, "hookbus REST request failed");
    }
    ApiResponse::error(status, code, message, field)
}

/// Handles one request. Never panics; every failure is a status and a
/// `responseStatus` body.
pub fn handle(bus: &Bus, req: ApiRequest<'_>) -> ApiResponse {
    let path = req.path.trim_end_matches('/');
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
    match (method.as_str(), segments.as_slice()) {
        ("POST", []) => create(bus, caller, req.body),
        ("GET", []) => list(bus, caller),
        ("GET", ["search"]) => search(bus, caller, req.query),
        ("GET", [id]) => with_owned(bus, caller, id, |s| get(bus, &s)),
        ("PUT", [id]) => with_owned(bus, caller, id, |s| update(bus, s.id, req.body)),
        ("DELETE", [id]) => with_owned(bus, caller, id, |s| {
            match bus.subscriptions().delete(s.id) {
                Ok(()) => ApiResponse::ok(204, Value::Null),
                Err(e) => from_error(&e, false),
            }
        }),
        ("GET", [id, "history"]) => with_owned(bus, caller, id, |s| history(bus, &s, req.query)),
        ("POST", [id, "ping"]) => with_owned(bus, caller, id, |s| ping(bus, s.id)),
        (_, [] | ["search"] | [_] | [_, "history"] | [_, "ping"]) => ApiResponse::error(
            405,
            "MethodNotAllowed",
            format!("{} is not allowed on {}", req.method, req.path),
            None,
        ),
        _ => ApiResponse::error(404, "NotFound", format!("no route for {}", req.path), None),
    }
}

/// A `contentType` other than `application/json` gets a 400 naming the
/// field.
fn check_content_type(ct: Option<&str>, in_config: bool) -> Result<(), ApiResponse> {
    match ct {
        Some(ct) if !ct.trim().eq_ignore_ascii_case(CONTENT_TYPE_JSON) => Err(ApiResponse::error(
            400,
            "InvalidContentType",
            format!(
                "content type `{}` is not supported; the only one allowed is `{CONTENT_TYPE_JSON}`",
                crate::util::clip(ct)
            ),
            Some(if in_config {
                "config.contentType"
            } else {
                "contentType"
            }),
        )),
        _ => Ok(()),
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    serde_json::from_slice(body).map_err(|e| {
        ApiResponse::error(
            400,
            "InvalidBody",
            format!("request body is not valid JSON for this route: {e}"),
            Some("body"),
        )
    })
}

fn create(bus: &Bus, caller: &Caller, body: &[u8]) -> ApiResponse {
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

fn list(bus: &Bus, caller: &Caller) -> ApiResponse {
    match bus.subscriptions().list_by_owner(&caller.id) {
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

/// Runs `f` on the subscription `id` if `caller` owns it; 404 otherwise.
fn with_owned(
    bus: &Bus,
    caller: &Caller,
    id: &str,
    f: impl FnOnce(Subscription) -> ApiResponse,
) -> ApiResponse {
    let not_found = || {
        ApiResponse::error(
            404,
            "NotFound",
            format!("no subscription with id {id}"),
            None,
        )
    };
    let Ok(id) = id.parse::<SubscriptionId>() else {
        return not_found();
    };
    match bus.subscriptions().get(id) {
        Ok(Some(s)) if caller.owns(&s) => f(s),
        Ok(_) => not_found(),
        Err(e) => from_error(&e, false),
    }
}

/// The latest attempts of a subscription, newest first, at most `limit`.
fn latest_attempts(bus: &Bus, s: &Subscription, limit: usize) -> Result<Vec<Value>, Error> {
    let outbox = bus.outbox();
    let mut out = Vec::new();
    for d in outbox.for_subscription(s.id, true) {
        let d = d?;
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

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
