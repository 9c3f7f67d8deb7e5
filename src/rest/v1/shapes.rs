//! The JSON shapes of the v1 routes, snake_case: bodies in (which refuse
//! unknown fields) and objects out.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::delivery::Delivery;
use crate::health::EndpointHealth;
use crate::policy::{DeliveryOrder, OnDeadLetter, RateLimit};
use crate::record::Attempt;
use crate::subscription::{Signing, Subscription};

/// How many bytes of a response excerpt the routes show.
const EXCERPT_CHARS: usize = 1024;

/// `rate_limit` in and out.
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitIn {
    pub(super) per_second: u32,
    #[serde(default = "one")]
    pub(super) burst: u32,
}

fn one() -> u32 {
    1
}

impl From<RateLimitIn> for RateLimit {
    fn from(r: RateLimitIn) -> Self {
        RateLimit::per_second(r.per_second).burst(r.burst)
    }
}

/// `signing` in.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum SigningIn {
    StandardWebhooks,
    Hub,
}

impl From<SigningIn> for Signing {
    fn from(s: SigningIn) -> Self {
        match s {
            SigningIn::StandardWebhooks => Signing::StandardWebhooks,
            SigningIn::Hub => Signing::Hub,
        }
    }
}

/// `order` in.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum OrderIn {
    Unordered,
    Fifo,
}

/// `on_dead_letter` in.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum OnDeadLetterIn {
    Skip,
    Halt,
}

/// The delivery order that `order` and `on_dead_letter` ask for; `None`
/// when neither is given.
pub(super) fn order_of(
    order: Option<OrderIn>,
    on_dead_letter: Option<OnDeadLetterIn>,
    current: DeliveryOrder,
) -> Option<DeliveryOrder> {
    if order.is_none() && on_dead_letter.is_none() {
        return None;
    }
    let fifo = match order {
        Some(o) => o == OrderIn::Fifo,
        None => current.is_fifo(),
    };
    if !fifo {
        return Some(DeliveryOrder::Unordered);
    }
    let current_dl = match current {
        DeliveryOrder::Fifo { on_dead_letter } => on_dead_letter,
        _ => OnDeadLetter::Skip,
    };
    let dl = match on_dead_letter {
        Some(OnDeadLetterIn::Halt) => OnDeadLetter::Halt,
        Some(OnDeadLetterIn::Skip) => OnDeadLetter::Skip,
        None => current_dl,
    };
    Some(DeliveryOrder::Fifo { on_dead_letter: dl })
}

/// `POST /endpoints`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointCreate {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) events: Vec<String>,
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) signing: Option<SigningIn>,
    #[serde(default)]
    pub(super) headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) rate_limit: Option<RateLimitIn>,
    #[serde(default)]
    pub(super) order: Option<OrderIn>,
    #[serde(default)]
    pub(super) on_dead_letter: Option<OnDeadLetterIn>,
}

/// A field that may be absent (keep), `null` (remove) or a value.
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /endpoints/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointPatch {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) events: Option<Vec<String>>,
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) signing: Option<SigningIn>,
    #[serde(default)]
    pub(super) headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(super) rate_limit: Option<Option<RateLimitIn>>,
    #[serde(default)]
    pub(super) order: Option<OrderIn>,
    #[serde(default)]
    pub(super) on_dead_letter: Option<OnDeadLetterIn>,
    #[serde(default)]
    pub(super) resume: Option<bool>,
}

/// `POST /endpoints/{id}/rotate-secret`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateIn {
    #[serde(default)]
    pub(super) grace_period_seconds: Option<u64>,
}

/// `POST /endpoints/{id}/test`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TestIn {
    #[serde(default)]
    pub(super) event_type: Option<String>,
}

/// `POST /endpoints/{id}/replay`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayIn {
    pub(super) since: String,
    #[serde(default)]
    pub(super) until: Option<String>,
}

/// An empty JSON object, for the routes that take none (`{}` or no body).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

/// An endpoint (a subscription) as the v1 routes show it: never its
/// secret, its headers' names only.
pub(super) fn endpoint(s: &Subscription) -> Value {
    let (order, on_dead_letter) = match s.order {
        DeliveryOrder::Fifo { on_dead_letter } => (
            "fifo",
            Some(match on_dead_letter {
                OnDeadLetter::Halt => "halt",
                _ => "skip",
            }),
        ),
        _ => ("unordered", None),
    };
    json!({
        "id": s.id.to_string(),
        "name": s.name,
        "url": s.url,
        "events": s.events,
        "enabled": s.active,
        "signing": match s.signing {
            Signing::StandardWebhooks => "standard_webhooks",
            _ => "hub",
        },
        "has_secret": s.secret.is_some(),
        "previous_secret_valid_until": s.previous_secret_until.map(|t| t.to_string()),
        "header_names": s.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        "rate_limit": s.rate_limit.map(|r| json!({ "per_second": r.per_second, "burst": r.burst })),
        "order": order,
        "on_dead_letter": on_dead_letter,
        "halted_at": s.halted_at.map(|d| d.to_string()),
        "owner": s.owner,
        "created_at": s.created_at.to_string(),
        "updated_at": s.modified_at.to_string(),
    })
}

/// A delivery, without its attempts.
pub(super) fn delivery(d: &Delivery) -> Value {
    json!({
        "id": d.id.to_string(),
        "endpoint_id": d.subscription_id.to_string(),
        "event_id": d.event_id.to_string(),
        "event_type": d.event_name,
        "state": d.state.as_str(),
        "attempts": d.attempts,
        "created_at": d.created_at.to_string(),
        "next_attempt_at": d.next_attempt_at.map(|t| t.to_string()),
        "finished_at": d.finished_at.map(|t| t.to_string()),
        "last_status_code": d.last_status,
        "last_error": d.last_error,
    })
}

/// The start of a response body, as text.
pub(super) fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(EXCERPT_CHARS)
        .collect()
}

/// One attempt.
pub(super) fn attempt(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "at": a.at.to_string(),
        "duration_ms": a.duration_ms,
        "status_code": a.status,
        "succeeded": a.succeeded(),
        "error": a.error.as_ref().map(ToString::to_string),
        "response_excerpt": excerpt(&a.response_excerpt),
    })
}

/// An endpoint's health, with its latest failed attempts.
pub(super) fn health(h: &EndpointHealth, last_errors: Vec<Value>) -> Value {
    let success_rate = if h.attempts == 0 {
        None
    } else {
        #[allow(clippy::cast_precision_loss)]
        Some(h.successes as f64 / h.attempts as f64)
    };
    json!({
        "endpoint_id": h.subscription.to_string(),
        "status": h.status,
        "attempts": h.attempts,
        "successes": h.successes,
        "failures": h.failures,
        "success_rate": success_rate,
        "consecutive_failures": h.consecutive_failures,
        "last_success_at": h.last_success_at.map(|t| t.to_string()),
        "last_failure_at": h.last_failure_at.map(|t| t.to_string()),
        "last_failure_reason": h.last_failure_reason,
        "latency_p50_ms": h.latency_p50_ms,
        "latency_p99_ms": h.latency_p99_ms,
        "backlog": h.backlog,
        "disabled_reason": h.disabled_reason,
        "last_errors": last_errors,
    })
}
