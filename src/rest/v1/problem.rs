//! RFC 9457 problem details for the v1 routes, hookbus errors mapped to
//! them (naming the snake_case field at fault), and what the routes read
//! from a request: JSON bodies that refuse unknown fields, query
//! parameters, page limits and cursors.

use serde_json::{Value, json};

use crate::error::Error;
use crate::ids::Timestamp;
use crate::rest::types::ApiResponse;

/// The media type of every v1 error.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// The most items one page holds.
pub(super) const MAX_LIMIT: usize = 100;
/// Items per page when `limit` is not given.
pub(super) const DEFAULT_LIMIT: usize = 20;

/// The HTTP reason phrase, the problem's `title` (with `type`
/// `about:blank`, RFC 9457 §4.2.1).
fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// A problem response: `code` is a stable snake_case word for programs,
/// `detail` a sentence for people; `field` names the request field at
/// fault.
pub(crate) fn problem(
    status: u16,
    code: &str,
    detail: impl Into<String>,
    field: Option<&str>,
) -> ApiResponse {
    let detail = detail.into();
    let mut body = json!({
        "type": "about:blank",
        "title": title(status),
        "status": status,
        "detail": detail,
        "code": code,
    });
    if let (Some(f), Some(o)) = (field, body.as_object_mut()) {
        o.insert(
            "errors".into(),
            json!([{ "field": f, "message": detail.clone() }]),
        );
    }
    let mut r = ApiResponse::ok(status, body);
    r.content_type = PROBLEM_JSON;
    r
}

pub(super) fn not_found(what: &str) -> ApiResponse {
    problem(404, "not_found", format!("no {what} with this id"), None)
}

/// Maps a hookbus error to a problem naming the v1 field at fault.
pub(super) fn from_error(e: &Error) -> ApiResponse {
    let (status, code, field) = match e {
        Error::InvalidUrl { .. } => (400, "validation", Some("url")),
        Error::InvalidEventName { .. } | Error::NoEvents => (400, "validation", Some("events")),
        Error::InvalidName { .. } => (400, "validation", Some("name")),
        Error::InvalidSecret { .. } => (400, "validation", Some("secret")),
        Error::InvalidHeader { .. } => (400, "validation", Some("headers")),
        Error::InvalidPolicy { .. } => (400, "validation", Some("rate_limit")),
        Error::InvalidTenant { .. } | Error::InvalidOwner { .. } => (400, "validation", None),
        Error::TenantFull { .. } => (409, "tenant_full", None),
        Error::Conflict { .. } => (409, "conflict", Some("events")),
        Error::SubscriptionNotFound(_) | Error::DeliveryNotFound(_) | Error::EventNotFound(_) => {
            (404, "not_found", None)
        }
        Error::NotDead { .. } => (409, "not_dead", None),
        Error::InvalidReplay(_) => (400, "validation", None),
        Error::TooManyRequests { .. } => (429, "rate_limited", None),
        Error::PayloadTooLarge { .. } => (413, "payload_too_large", None),
        Error::Closed => (503, "unavailable", None),
        _ => (500, "internal", None),
    };
    let detail = if status == 500 {
        tracing::error!(error = %e, "hookbus v1 request failed");
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    let r = problem(status, code, detail, field);
    match e {
        Error::TooManyRequests { retry_after } => {
            r.with_header("retry-after", retry_after.as_secs().max(1).to_string())
        }
        _ => r,
    }
}

/// Parses a JSON body into `T`: a body is required (`{}` when it has
/// nothing to say). An unknown field is a 400 `unknown_field` naming it.
pub(super) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiResponse> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(problem(
            400,
            "invalid_body",
            "this route takes a JSON object as its body (`{}` when it has nothing to say)",
            None,
        ));
    }
    // serde reads a struct from an array too (by position): only an
    // object is a body here.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(problem(
            400,
            "invalid_body",
            "the body must be a JSON object",
            None,
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        if let Some(rest) = text.strip_prefix("unknown field `")
            && let Some(name) = rest.split('`').next()
        {
            let name = crate::util::clip(name);
            return problem(
                400,
                "unknown_field",
                format!("unknown field `{name}`: this route does not take it"),
                Some(&name),
            );
        }
        if let Some(rest) = text.strip_prefix("missing field `")
            && let Some(name) = rest.split('`').next()
        {
            return problem(
                400,
                "validation",
                format!("missing field `{name}`"),
                Some(name),
            );
        }
        problem(
            400,
            "invalid_body",
            format!("the body is not valid JSON for this route: {text}"),
            None,
        )
    })
}

/// The query's parameters; an unknown one is a 400 naming it (a typo in
/// a filter must not silently widen a listing).
pub(super) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(super) fn parse(query: &str, allowed: &[&str]) -> Result<Query, ApiResponse> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            let k = crate::util::clip(k);
            return Err(problem(
                400,
                "unknown_field",
                format!("unknown query parameter `{k}`"),
                Some(&k),
            ));
        }
        Ok(Query { pairs })
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`, 1 to [`MAX_LIMIT`].
    pub(super) fn limit(&self) -> Result<usize, ApiResponse> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(problem(
                    400,
                    "validation",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                    Some("limit"),
                )),
            },
        }
    }

    /// A parameter parsed as `T` (an id or a cursor), 400 naming it if it
    /// is not one.
    pub(super) fn parsed<T: std::str::FromStr>(
        &self,
        name: &str,
    ) -> Result<Option<T>, ApiResponse> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<T>().map(Some).map_err(|_| {
                problem(
                    400,
                    "validation",
                    format!("`{name}` is not valid here"),
                    Some(name),
                )
            }),
        }
    }

    /// A time parameter (RFC 3339).
    pub(super) fn time(&self, name: &str) -> Result<Option<Timestamp>, ApiResponse> {
        time(self.get(name), name)
    }
}

/// An RFC 3339 time from a field or parameter named `name`.
pub(super) fn time(v: Option<&str>, name: &str) -> Result<Option<Timestamp>, ApiResponse> {
    match v {
        None => Ok(None),
        Some(v) => v.parse::<Timestamp>().map(Some).map_err(|_| {
            problem(
                400,
                "validation",
                format!("`{name}` must be an RFC 3339 time such as 2026-01-31T12:00:00Z"),
                Some(name),
            )
        }),
    }
}

/// A page of items: `{"data": [...], "next_cursor": ...}`.
pub(super) fn page(data: Vec<Value>, next_cursor: Option<String>) -> ApiResponse {
    ApiResponse::ok(200, json!({ "data": data, "next_cursor": next_cursor }))
}
