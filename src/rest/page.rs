//! The portal page (`/webhooks/portal`): one HTML document with its styles
//! and script inline, compiled in (no build step, nothing fetched from
//! elsewhere), and the response that serves it. Re-exported as
//! `hookbus::portal::{PAGE, PAGE_PATH, page}`.

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::types::ApiResponse;

/// The portal page, as served by [`page`].
pub const PAGE: &str = include_str!("page.html");
/// Where the page is served.
pub const PAGE_PATH: &str = "/webhooks/portal";

/// The portal page as a response, with headers that keep it to itself: a
/// content security policy that runs only its own inline script (by
/// hash), connects only to its own origin and may be framed by
/// `frame_ancestors` (a CSP source list such as `'self'` or
/// `https://app.example.com`; `'self'` when `None`), no referrer, no
/// caching.
pub fn page(frame_ancestors: Option<&str>) -> ApiResponse {
    let script = PAGE
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(s, _)| s);
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
    let ancestors = frame_ancestors
        .filter(|a| !a.is_empty() && !a.contains([';', '\r', '\n']))
        .unwrap_or("'self'");
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors {ancestors}"
    );
    let mut r = ApiResponse::ok(200, serde_json::Value::String(PAGE.to_owned()));
    r.content_type = "text/html; charset=utf-8";
    r.with_header("content-security-policy", csp)
        .with_header("referrer-policy", "no-referrer")
        .with_header("x-content-type-options", "nosniff")
        .with_header("cache-control", "no-store")
}
