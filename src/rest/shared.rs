//! What both route sets share: request bodies and query parameters in,
//! hookbus errors out as responses naming the field at fault.

use super::types::ApiResponse;
use crate::error::Error;

/// Maps a hookbus error to a response, naming the request field at fault.
pub(super) fn from_error(e: &Error, in_config: bool) -> ApiResponse {
    let f = |name: &'static str, nested: &'static str| Some(if in_config { nested } else { name });
    let (status, code, field) = match e {
        Error::InvalidUrl { .. } => (400, "InvalidUrl", f("url", "config.url")),
        // Also an event the app's catalog does not have.
        Error::InvalidEventName { .. } => (400, "InvalidEventName", Some("events")),
        Error::PayloadInvalid { .. } => (400, "PayloadInvalid", Some("payload")),
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
        Error::TooManyRequests { .. } => (429, "TooManyRequests", None),
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

pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    serde_json::from_slice(body).map_err(|e| {
        ApiResponse::error(
            400,
            "InvalidBody",
            format!("request body is not valid JSON for this route: {e}"),
            Some("body"),
        )
    })
}

pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
