//! What of a secret-bearing value may be shown in logs and `Debug`.
//!
//! Webhook URLs of chat services (Slack, Microsoft Teams, Discord) carry
//! their secret in the path or query, so a subscription URL is shown as
//! its scheme, host and port only.

/// Stands for the path and query a redacted URL leaves out.
const HIDDEN: &str = "…";

/// `url` as it may be shown: scheme, host and port, with the path and query
/// replaced by `…` and any user info dropped
/// (`https://hooks.slack.com/services/T0/B0/XXXX?token=y` becomes
/// `https://hooks.slack.com/…`). A URL with nothing after its host is
/// shown whole; one that does not parse is not shown at all.
pub(crate) fn url(url: &str) -> String {
    let Ok(u) = url::Url::parse(url.trim()) else {
        return "[unparsable URL, not shown]".to_owned();
    };
    let Some(host) = u.host_str() else {
        return format!("{}:{HIDDEN}", u.scheme());
    };
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    let bare = u.path() == "/" && u.query().is_none() && u.fragment().is_none();
    let rest = if bare { "" } else { HIDDEN };
    format!("{}://{host}{port}/{rest}", u.scheme())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_keeps_scheme_host_and_port_only() {
        for (given, shown) in [
            (
                "https://hooks.slack.com/services/T0/B0/XXXX?token=y",
                "https://hooks.slack.com/…",
            ),
            (
                "https://discord.com/api/webhooks/123/SECRET",
                "https://discord.com/…",
            ),
            (
                "https://acme.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d",
                "https://acme.webhook.office.com/…",
            ),
            ("http://example.com:8080/hook", "http://example.com:8080/…"),
            ("https://example.com:443/hook", "https://example.com/…"),
            ("https://example.com/?token=QUERY", "https://example.com/…"),
            ("https://example.com/#frag", "https://example.com/…"),
            ("https://user:PASSWORD@example.com/", "https://example.com/"),
            ("https://example.com", "https://example.com/"),
            ("http://[::1]:9/in", "http://[::1]:9/…"),
            ("http://127.0.0.1:9/services/x", "http://127.0.0.1:9/…"),
            (" https://example.com/trimmed ", "https://example.com/…"),
            ("mailto:SECRET@example.com", "mailto:…"),
            ("not a url SECRET", "[unparsable URL, not shown]"),
            ("", "[unparsable URL, not shown]"),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }
}
