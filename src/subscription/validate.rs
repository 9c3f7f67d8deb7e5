//! What a subscription may hold: the rules of its fields (name, URL,
//! events, secret and signing mode, owner, tenant, custom headers), and,
//! against the store, the conflict rule and a tenant's cap.

use super::secret::{Secret, Signing};
use crate::error::{Error, Result};
use crate::event::ALL_EVENTS;
use crate::ssrf::TargetPolicy;
use crate::storage::{Reader, SubscriptionRecord};
use crate::util::clip;

const MAX_URL_LEN: usize = 2048;
const MAX_SECRET_LEN: usize = 1024;
const MAX_OWNER_LEN: usize = 200;
const MAX_EVENTS: usize = 100;
const MAX_HEADERS: usize = 20;
const MAX_HEADER_NAME_LEN: usize = 100;
const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Headers hookbus sets itself (or that HTTP owns): custom headers may not
/// name them. Compared case-insensitively; names starting with
/// `x-webhook-`, `x-hub-` or `webhook-` are refused too.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "expect",
    "host",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "traceparent",
    "tracestate",
];
const RESERVED_PREFIXES: &[&str] = &["x-webhook-", "x-hub-", "webhook-"];

/// Checks an event name. In a subscription (`wildcard`), `*` is allowed too.
pub(crate) fn validate_event_name(name: &str, wildcard: bool) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidEventName {
            name: clip(name),
            reason,
        })
    };
    if wildcard && name == ALL_EVENTS {
        return Ok(());
    }
    if name.is_empty() {
        return bad("is empty; event names are 1 to 100 characters");
    }
    if name.len() > 100 {
        return bad("is longer than 100 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad(if wildcard {
            "may only have letters, digits, `_`, `-` and `.`, or be exactly `*`"
        } else {
            "may only have letters, digits, `_`, `-` and `.`"
        });
    }
    Ok(())
}

pub(super) fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidName { reason });
    if name.trim().is_empty() {
        return bad("is empty; give 1 to 100 printable characters");
    }
    if name.chars().count() > 100 {
        return bad("is longer than 100 characters");
    }
    if name.chars().any(char::is_control) {
        return bad("has control characters; only printable characters are allowed");
    }
    Ok(())
}

pub(super) fn validate_secret(s: &Secret) -> Result<()> {
    if s.0.is_empty() {
        return Err(Error::InvalidSecret {
            reason: "is empty; give 1 to 1024 bytes, or no secret",
        });
    }
    if s.0.len() > MAX_SECRET_LEN {
        return Err(Error::InvalidSecret {
            reason: "is longer than 1024 bytes",
        });
    }
    Ok(())
}

/// A subscription signed the Standard Webhooks way needs a `whsec_` secret.
pub(super) fn validate_mode(signing: Signing, secret: Option<&str>) -> Result<()> {
    if !signing.is_standard() {
        return Ok(());
    }
    match secret {
        None => Err(Error::InvalidSecret {
            reason: "is missing; Standard Webhooks mode signs every request, so give a `whsec_` secret",
        }),
        Some(s) if crate::signing::decode_standard_secret(s).is_err() => {
            Err(Error::InvalidSecret {
                reason: "is not a Standard Webhooks secret: give `whsec_` and the base64 of 24 to 64 bytes \
                     (NewSubscription::generate_secret makes one)",
            })
        }
        Some(_) => Ok(()),
    }
}

pub(super) fn validate_owner(o: &str) -> Result<()> {
    if o.is_empty() {
        return Err(Error::InvalidOwner {
            reason: "is empty; give 1 to 200 printable characters, or no owner",
        });
    }
    if o.len() > MAX_OWNER_LEN {
        return Err(Error::InvalidOwner {
            reason: "is longer than 200 bytes",
        });
    }
    if o.chars().any(char::is_control) {
        return Err(Error::InvalidOwner {
            reason: "has control characters",
        });
    }
    Ok(())
}

pub(crate) fn validate_tenant(t: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidTenant { reason });
    if t.is_empty() {
        return bad("is empty; give 1 to 200 printable characters");
    }
    if t.len() > MAX_OWNER_LEN {
        return bad("is longer than 200 bytes");
    }
    if t.chars().any(char::is_control) {
        return bad("has control characters");
    }
    Ok(())
}

/// Checks custom headers: HTTP token names that hookbus does not set
/// itself, each once, values without control characters.
pub(super) fn validate_headers(headers: &[(String, Secret)]) -> Result<()> {
    if headers.len() > MAX_HEADERS {
        return Err(Error::InvalidHeader {
            name: format!("({} headers)", headers.len()),
            reason: "list is too long; a subscription may have at most 20 headers",
        });
    }
    for (i, (name, value)) in headers.iter().enumerate() {
        let bad = |reason| {
            Err(Error::InvalidHeader {
                name: clip(name),
                reason,
            })
        };
        if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN {
            return bad("name must be 1 to 100 characters");
        }
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !name.bytes().all(token) {
            return bad("name may only have letters, digits and !#$%&'*+-.^_`|~");
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str())
            || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
        {
            return bad("is set by hookbus (or by HTTP) and cannot be overridden");
        }
        if headers[..i]
            .iter()
            .any(|(other, _)| other.eq_ignore_ascii_case(name))
        {
            return bad("is given twice");
        }
        let v = value.expose();
        if v.len() > MAX_HEADER_VALUE_LEN {
            return bad("value is longer than 4096 bytes");
        }
        if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return bad("value has control characters (line breaks are not allowed)");
        }
        if v.starts_with([' ', '\t']) || v.ends_with([' ', '\t']) {
            return bad("value has leading or trailing white space");
        }
    }
    Ok(())
}

/// Checks a subscription URL and returns its normalised form.
pub(crate) fn validate_url(url: &str, policy: &TargetPolicy, https_only: bool) -> Result<String> {
    let bad = |reason: String| {
        Err(Error::InvalidUrl {
            url: clip(url),
            reason,
        })
    };
    if url.len() > MAX_URL_LEN {
        return bad(format!("is longer than {MAX_URL_LEN} bytes"));
    }
    let parsed = match url::Url::parse(url.trim()) {
        Ok(u) => u,
        Err(e) => {
            return bad(format!(
                "is not an absolute URL ({e}); give one like https://example.com/hooks"
            ));
        }
    };
    match parsed.scheme() {
        "https" => {}
        "http" if https_only => return bad("must use https (Builder::https_only is on)".into()),
        "http" => {}
        other => return bad(format!("must use http or https, not `{other}`")),
    }
    let Some(host) = parsed.host() else {
        return bad("has no host".into());
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad(
            "must not carry a user name or password; use the secret to authenticate".into(),
        );
    }
    if let Some(reason) = policy.literal_host_blocked(&host) {
        return bad(format!(
            "points at an internal address: {reason} (allowed only with Builder::allow_private_targets)"
        ));
    }
    Ok(parsed.to_string())
}

pub(super) fn normalise_events(events: &[String]) -> Result<Vec<String>> {
    if events.is_empty() {
        return Err(Error::NoEvents);
    }
    if events.len() > MAX_EVENTS {
        return Err(Error::InvalidEventName {
            name: format!("({} names)", events.len()),
            reason: "list is too long; a subscription may name at most 100 events",
        });
    }
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        validate_event_name(e, true)?;
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// Fails with [`Error::Conflict`] if another subscription of the same owner
/// and tenant sends one of `rec`'s events to `rec`'s URL.
pub(super) fn check_conflict(store: &dyn Reader, rec: &SubscriptionRecord) -> Result<()> {
    for event in &rec.events {
        for id in store.subscribers_of(event)?.ids {
            if id == rec.id {
                continue;
            }
            let Some(other) = store.subscription(id)? else {
                continue;
            };
            if other.owner == rec.owner
                && other.tenant == rec.tenant
                && other.url == rec.url
                && other.events.contains(event)
            {
                return Err(Error::Conflict {
                    event: event.clone(),
                    url: rec.url.clone(),
                    existing: id,
                });
            }
        }
    }
    Ok(())
}

/// Fails with [`Error::TenantFull`] if `tenant` already has `cap`
/// subscriptions. (Reads at most `cap` of the tenant's, by its index.)
pub(super) fn check_tenant_cap(store: &dyn Reader, tenant: Option<&str>, cap: usize) -> Result<()> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    let n = store.tenant_subscriptions(tenant, None, cap)?.len();
    if n >= cap {
        return Err(Error::TenantFull {
            tenant: clip(tenant),
            max: cap,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        for ok in ["hello", "invoice.paid", "a", "A-b_c.9", &"x".repeat(100)] {
            validate_event_name(ok, false).unwrap();
        }
        validate_event_name("*", true).unwrap();
        for bad in ["", "*", "he llo", "a/b", "é", "a\0b", &"x".repeat(101)] {
            assert!(validate_event_name(bad, false).is_err(), "{bad:?}");
        }
    }

    fn strict() -> TargetPolicy {
        TargetPolicy::default()
    }

    fn open() -> TargetPolicy {
        TargetPolicy {
            allow_private: true,
            allowed: vec![],
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            validate_url("http://Example.com", &strict(), false).unwrap(),
            "http://example.com/"
        );
        for bad in [
            "ftp://x/",
            "/relative",
            "http://",
            "mailto:a@b.c",
            "http://u:p@example.com/",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(
                    validate_url(bad, &strict(), false),
                    Err(Error::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(validate_url("http://127.0.0.1:9/", &strict(), false).is_err());
        assert!(validate_url("http://127.0.0.1:9/", &open(), false).is_ok());
        assert!(validate_url("http://example.com/", &strict(), true).is_err());
        assert!(
            validate_url(
                &format!("https://example.com/{}", "a".repeat(3000)),
                &strict(),
                false
            )
            .is_err()
        );
        let e = validate_url("ftp://x", &strict(), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must use http or https"), "{e}");
    }
}
