//! The JSON shapes of the subscribers' routes: bodies in (ServiceStack's
//! subscription shape and hookbus's additions, and the one `contentType`
//! they accept), subscriptions and attempts out.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::types::ApiResponse;
use crate::ids::SubscriptionId;
use crate::policy::{DeliveryOrder, RateLimit};
use crate::record::Attempt;
use crate::subscription::Subscription;

/// The one `contentType` the routes accept and show (ServiceStack's
/// subscription shape has the field; hookbus always sends JSON).
pub(super) const CONTENT_TYPE_JSON: &str = "application/json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConfigDto {
    pub(super) url: String,
    #[serde(default)]
    pub(super) secret: Option<String>,
    #[serde(default, alias = "content_type")]
    pub(super) content_type: Option<String>,
    /// Custom headers, name to value.
    #[serde(default)]
    pub(super) headers: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateDto {
    pub(super) name: String,
    pub(super) events: Vec<String>,
    pub(super) config: ConfigDto,
    #[serde(default)]
    pub(super) rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub(super) order: Option<DeliveryOrder>,
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
pub(super) struct UpdateDto {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) events: Option<Vec<String>>,
    #[serde(default)]
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) secret: Option<String>,
    #[serde(default, alias = "content_type")]
    pub(super) content_type: Option<String>,
    #[serde(default, alias = "is_active")]
    pub(super) is_active: Option<bool>,
    #[serde(default)]
    pub(super) headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(super) rate_limit: Option<Option<RateLimit>>,
    #[serde(default)]
    pub(super) order: Option<DeliveryOrder>,
    /// `true` resumes a FIFO subscription halted at a dead letter.
    #[serde(default)]
    pub(super) resume: bool,
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

pub(super) fn dto(s: &Subscription) -> Value {
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

pub(super) fn attempt_dto(s: SubscriptionId, d: &crate::delivery::Delivery, a: &Attempt) -> Value {
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

/// A `contentType` other than `application/json` gets a 400 naming the
/// field.
pub(super) fn check_content_type(ct: Option<&str>, in_config: bool) -> Result<(), ApiResponse> {
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
