//! Subscriptions: who receives which events, where, signed with what.

use std::fmt;

use serde::Serialize;

use crate::config::Config;
use crate::delivery::reason;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::policy::{DeliveryOrder, RateLimit};
use crate::ssrf::TargetPolicy;
use crate::storage::{Reader, SubscriptionRecord};
use crate::util::clip;

/// The content type every delivery is sent with (kept in the stored record).
const CONTENT_TYPE_JSON: &str = "application/json";
pub(crate) use crate::event::ALL_EVENTS;

/// The event name of [`Subscriptions::ping`]'s test request.
pub const PING_EVENT: &str = "hookbus.ping";
const MAX_URL_LEN: usize = 2048;
const MAX_SECRET_LEN: usize = 1024;
const MAX_OWNER_LEN: usize = 200;
const MAX_EVENTS: usize = 100;
const MAX_HEADERS: usize = 20;
/// The tenant namespace of REST callers without a tenant: `user:<id>`.
/// Explicit tenant ids may not start with it.
pub const USER_TENANT_PREFIX: &str = "user:";
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

/// A subscription secret. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for signing or verifying.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How a subscription's requests are signed (when it has a secret).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Signing {
    /// `X-Hub-Signature: sha1=…` and `X-Hub-Signature-256: sha256=…`, HMACs
    /// of the body keyed with the secret's bytes (GitHub's and
    /// ServiceStack.Webhooks' headers); receivers check them with
    /// [`signing::verify_signature`](crate::signing::verify_signature).
    /// Requests are unsigned when the subscription has no secret.
    #[default]
    Hub,
    /// [Standard Webhooks](https://www.standardwebhooks.com/): `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature`; receivers check them
    /// with [`signing::verify_standard`](crate::signing::verify_standard).
    /// Needs a `whsec_` secret (see [`NewSubscription::generate_secret`]).
    StandardWebhooks,
}

impl Signing {
    /// The stored form is a flag (`SubscriptionRecord::standard_webhooks`).
    fn from_flag(standard_webhooks: bool) -> Self {
        if standard_webhooks {
            Signing::StandardWebhooks
        } else {
            Signing::Hub
        }
    }

    fn is_standard(self) -> bool {
        self == Signing::StandardWebhooks
    }
}

/// A stored subscription.
///
/// It serializes (for listings and APIs) without its secret. Its `Debug`
/// shows neither the secret nor header values, and of the URL only its
/// scheme, host and port (chat services' webhook URLs carry their secret
/// in the path or query).
#[derive(Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Subscription {
    /// Its id (uuid v7).
    pub id: SubscriptionId,
    /// A name for people.
    pub name: String,
    /// The events it receives; `*` means all.
    pub events: Vec<String>,
    /// Where requests go (normalised by the URL parser).
    pub url: String,
    /// The signing secret, if any.
    #[serde(skip)]
    pub secret: Option<Secret>,
    /// Inactive subscriptions get no new deliveries, and their pending
    /// ones wait until they are active again.
    pub active: bool,
    /// Who owns it, if the application tracks that.
    pub owner: Option<String>,
    /// How requests are signed.
    pub signing: Signing,
    /// While a secret rotation is under way: when the previous secret stops
    /// being used.
    pub previous_secret_until: Option<Timestamp>,
    /// The tenant whose events it receives (see
    /// [`Bus::publish_to`](crate::Bus::publish_to)); `None`: app-wide events.
    pub tenant: Option<String>,
    /// Extra headers sent with every request. Values are secrets: `Debug`
    /// and serialization show the names only.
    #[serde(serialize_with = "header_names")]
    pub headers: Vec<(String, Secret)>,
    /// Its rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// In which order its deliveries are sent.
    pub order: DeliveryOrder,
    /// A FIFO subscription halted at this dead letter
    /// ([`OnDeadLetter::Halt`](crate::OnDeadLetter::Halt)): nothing is sent
    /// until [`SubscriptionPatch::resume`].
    pub halted_at: Option<DeliveryId>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub modified_at: Timestamp,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field is a compile error here.
        let Subscription {
            id,
            name,
            events,
            url,
            secret,
            active,
            owner,
            signing,
            previous_secret_until,
            tenant,
            headers,
            rate_limit,
            order,
            halted_at,
            created_at,
            modified_at,
        } = self;
        f.debug_struct("Subscription")
            .field("id", id)
            .field("name", name)
            .field("events", events)
            .field("url", &crate::redact::url(url))
            .field("secret", secret)
            .field("active", active)
            .field("owner", owner)
            .field("signing", signing)
            .field("previous_secret_until", previous_secret_until)
            .field("tenant", tenant)
            .field("headers", headers)
            .field("rate_limit", rate_limit)
            .field("order", order)
            .field("halted_at", halted_at)
            .field("created_at", created_at)
            .field("modified_at", modified_at)
            .finish()
    }
}

fn header_names<S: serde::Serializer>(
    headers: &[(String, Secret)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(headers.iter().map(|(n, _)| n))
}

impl From<SubscriptionRecord> for Subscription {
    fn from(r: SubscriptionRecord) -> Self {
        Subscription {
            id: r.id,
            name: r.name,
            events: r.events,
            url: r.url,
            secret: r.secret.map(Secret),
            active: r.active,
            owner: r.owner,
            signing: Signing::from_flag(r.standard_webhooks),
            previous_secret_until: r
                .previous_secret
                .map(|(_, until)| Timestamp::from_millis(until)),
            tenant: r.tenant,
            headers: r.headers.into_iter().map(|(n, v)| (n, Secret(v))).collect(),
            rate_limit: r.rate_limit,
            order: r.order,
            halted_at: r.halted_at,
            created_at: r.created_at,
            modified_at: r.modified_at,
        }
    }
}

/// A subscription to create with [`Subscriptions::create`] or
/// [`Bus::subscribe`](crate::Bus::subscribe).
///
/// ```
/// let new = hookbus::NewSubscription::new("My Webhook", "https://example.com/hooks")
///     .events(["hello", "goodbye"])
///     .secret("shh");
/// ```
///
/// Its `Debug` hides what [`Subscription`]'s does.
#[derive(Clone)]
#[must_use]
pub struct NewSubscription {
    name: String,
    url: String,
    events: Vec<String>,
    secret: Option<Secret>,
    owner: Option<String>,
    signing: Signing,
    tenant: Option<String>,
    headers: Vec<(String, Secret)>,
    rate_limit: Option<RateLimit>,
    order: DeliveryOrder,
    /// The tenant is a REST caller's own (`user:<id>`).
    user_tenant: bool,
}

impl fmt::Debug for NewSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let NewSubscription {
            name,
            url,
            events,
            secret,
            owner,
            signing,
            tenant,
            headers,
            rate_limit,
            order,
            user_tenant,
        } = self;
        f.debug_struct("NewSubscription")
            .field("name", name)
            .field("url", &crate::redact::url(url))
            .field("events", events)
            .field("secret", secret)
            .field("owner", owner)
            .field("signing", signing)
            .field("tenant", tenant)
            .field("headers", headers)
            .field("rate_limit", rate_limit)
            .field("order", order)
            .field("user_tenant", user_tenant)
            .finish()
    }
}

impl NewSubscription {
    /// A subscription named `name` that posts to `url`. Name at least one
    /// event with [`events`](Self::events) or [`event`](Self::event).
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        NewSubscription {
            name: name.into(),
            url: url.into(),
            events: Vec::new(),
            secret: None,
            owner: None,
            signing: Signing::Hub,
            tenant: None,
            headers: Vec::new(),
            rate_limit: None,
            order: DeliveryOrder::Unordered,
            user_tenant: false,
        }
    }

    /// Adds these event names (`*` for every event).
    pub fn events<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events.extend(events.into_iter().map(Into::into));
        self
    }

    /// Adds one event name.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.events.push(event.into());
        self
    }

    /// Signs requests with this secret (1 to 1024 bytes).
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(Secret(secret.into()));
        self
    }

    /// Signs requests with a new random secret
    /// ([`signing::generate_secret`](crate::signing::generate_secret):
    /// `whsec_` and 32 random bytes in base64), which suits both [`Signing`]
    /// modes. Read it back from the returned [`Subscription::secret`] and
    /// hand it to the subscriber.
    pub fn generate_secret(mut self) -> Self {
        self.secret = Some(Secret(crate::signing::generate_secret()));
        self
    }

    /// How requests are signed. [`Signing::StandardWebhooks`] needs a
    /// `whsec_` secret (see [`generate_secret`](Self::generate_secret)).
    ///
    /// Defaults to [`Signing::Hub`].
    pub fn signing(mut self, signing: Signing) -> Self {
        self.signing = signing;
        self
    }

    /// The owner (a user id of the application): who may see and change it
    /// through the REST adapter.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// The tenant it belongs to: it receives the events published for this
    /// tenant ([`Bus::publish_to`](crate::Bus::publish_to)), and app-wide
    /// events ([`Bus::publish`](crate::Bus::publish)) only if the bus is
    /// built with
    /// [`tenants_receive_app_events`](crate::Builder::tenants_receive_app_events).
    /// Without a tenant it receives app-wide events only. Fixed once
    /// created. Tenant ids starting with `user:` are kept for REST callers
    /// without a tenant ([`Error::InvalidTenant`]).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The tenant of a REST caller without one (`user:<id>`).
    pub(crate) fn user_tenant(mut self, tenant: String) -> Self {
        self.tenant = Some(tenant);
        self.user_tenant = true;
        self
    }

    /// Sends this header with every request (for example `Authorization`).
    /// The value is kept like a secret. Names are HTTP tokens and may not
    /// be one hookbus sets (`Content-Type`, `User-Agent`, `X-Webhook-*`,
    /// `X-Hub-*`, `Webhook-*`, `traceparent`, …); at most 20 headers.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), Secret(value.into())));
        self
    }

    /// Limits how fast requests are sent to it (see [`RateLimit`]).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// In which order its deliveries are sent (default
    /// [`DeliveryOrder::Unordered`]).
    pub fn order(mut self, order: DeliveryOrder) -> Self {
        self.order = order;
        self
    }
}

/// Changes to a subscription, for [`Subscriptions::update`]. Fields left
/// unset keep their value. Its `Debug` hides what [`Subscription`]'s does.
#[derive(Clone, Default)]
#[must_use]
pub struct SubscriptionPatch {
    name: Option<String>,
    url: Option<String>,
    events: Option<Vec<String>>,
    secret: Option<Option<Secret>>,
    rotate: Option<(Secret, std::time::Duration)>,
    active: Option<bool>,
    signing: Option<Signing>,
    headers: Option<Vec<(String, Secret)>>,
    rate_limit: Option<Option<RateLimit>>,
    order: Option<DeliveryOrder>,
    resume: bool,
}

impl fmt::Debug for SubscriptionPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SubscriptionPatch {
            name,
            url,
            events,
            secret,
            rotate,
            active,
            signing,
            headers,
            rate_limit,
            order,
            resume,
        } = self;
        f.debug_struct("SubscriptionPatch")
            .field("name", name)
            .field("url", &url.as_deref().map(crate::redact::url))
            .field("events", events)
            .field("secret", secret)
            .field("rotate", rotate)
            .field("active", active)
            .field("signing", signing)
            .field("headers", headers)
            .field("rate_limit", rate_limit)
            .field("order", order)
            .field("resume", resume)
            .finish()
    }
}

impl SubscriptionPatch {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }
    /// A new name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// A new URL.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }
    /// Replaces the event names.
    pub fn events<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events = Some(events.into_iter().map(Into::into).collect());
        self
    }
    /// A new secret.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(Some(Secret(secret.into())));
        self
    }
    /// Rotates the secret: `new` becomes the current secret, and the one it
    /// replaces stays valid for `keep_old_for`. With
    /// [`Signing::StandardWebhooks`] requests carry a signature with each
    /// (receivers accept either); with [`Signing::Hub`] they are signed with
    /// the new one. A zero `keep_old_for` drops the old one at once; one too
    /// long to represent (`Duration::MAX`) keeps it until the next change of
    /// the secret.
    pub fn rotate_secret(
        mut self,
        new: impl Into<String>,
        keep_old_for: std::time::Duration,
    ) -> Self {
        self.rotate = Some((Secret(new.into()), keep_old_for));
        self
    }
    /// A new signing mode ([`Signing::StandardWebhooks`] needs a `whsec_`
    /// secret).
    pub fn signing(mut self, signing: Signing) -> Self {
        self.signing = Some(signing);
        self
    }
    /// Removes the secret: requests are sent unsigned.
    pub fn clear_secret(mut self) -> Self {
        self.secret = Some(None);
        self
    }
    /// Activates or deactivates. Deactivating pauses the subscription:
    /// it gets no new deliveries and its pending ones wait (they are not
    /// dead-lettered); activating it again resumes them.
    pub fn active(mut self, active: bool) -> Self {
        self.active = Some(active);
        self
    }
    /// Replaces the custom headers (an empty list removes them all); rules
    /// as [`NewSubscription::header`].
    pub fn headers<I, N, V>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        self.headers = Some(
            headers
                .into_iter()
                .map(|(n, v)| (n.into(), Secret(v.into())))
                .collect(),
        );
        self
    }
    /// Sets (`Some`) or removes (`None`) the rate limit.
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.rate_limit = Some(limit);
        self
    }
    /// Changes the delivery order. Turning FIFO on applies to what is sent
    /// from then on: requests already in flight finish first.
    pub fn order(mut self, order: DeliveryOrder) -> Self {
        self.order = Some(order);
        self
    }
    /// Resumes a FIFO subscription halted at a dead letter
    /// ([`Subscription::halted_at`]): the oldest pending delivery is sent
    /// next (a dead letter retried before resuming is that one).
    pub fn resume(mut self) -> Self {
        self.resume = true;
        self
    }
}

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

fn validate_name(name: &str) -> Result<()> {
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

fn validate_secret(s: &Secret) -> Result<()> {
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
fn validate_mode(signing: Signing, secret: Option<&str>) -> Result<()> {
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

fn validate_owner(o: &str) -> Result<()> {
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
pub(crate) fn validate_headers(headers: &[(String, Secret)]) -> Result<()> {
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

fn normalise_events(events: &[String]) -> Result<Vec<String>> {
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
fn check_conflict(store: &dyn Reader, rec: &SubscriptionRecord) -> Result<()> {
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
/// subscriptions. (A scan of every subscription: creating one is rare.)
fn check_tenant_cap(store: &dyn Reader, tenant: Option<&str>, cap: usize) -> Result<()> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    let mut n = 0;
    for r in store.subscriptions() {
        if r?.tenant.as_deref() == Some(tenant) {
            n += 1;
        }
    }
    if n >= cap {
        return Err(Error::TenantFull {
            tenant: clip(tenant),
            max: cap,
        });
    }
    Ok(())
}

/// The subscriptions of a [`Bus`](crate::Bus): see
/// [`Bus::subscriptions`](crate::Bus::subscriptions).
///
/// Changes are made by the dispatcher thread (the store's one writer) and are
/// on disk when the call returns; the very next publish sees them.
///
/// Its `Debug` shows nothing of the store: `Subscriptions { .. }`.
#[derive(Clone, Copy)]
pub struct Subscriptions<'a> {
    engine: &'a Engine,
    config: &'a Config,
}

impl fmt::Debug for Subscriptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriptions").finish_non_exhaustive()
    }
}

impl<'a> Subscriptions<'a> {
    pub(crate) fn new(engine: &'a Engine, config: &'a Config) -> Self {
        Subscriptions { engine, config }
    }

    /// Validates and stores a new subscription, atomically with its event
    /// index entries.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::InvalidUrl`],
    /// [`Error::NoEvents`], [`Error::InvalidEventName`],
    /// [`Error::InvalidSecret`],
    /// [`Error::InvalidOwner`], [`Error::Conflict`], [`Error::Closed`].
    pub fn create(&self, new: NewSubscription) -> Result<Subscription> {
        let rec = self.record_of(new)?;
        let cap = self.config.max_subscriptions_per_tenant;
        self.engine.write(move |w| {
            w.lock_subscriptions()?;
            check_conflict(w.reader(), &rec)?;
            check_tenant_cap(w.reader(), rec.tenant.as_deref(), cap)?;
            w.put_subscription(None, &rec);
            Ok(Subscription::from(rec))
        })
    }

    /// Makes sure a subscription exists as described, keyed by its owner
    /// and name — for start-up code that runs on every start:
    ///
    /// * none with this owner and name: it is created;
    /// * one with the same URL, events, secret and signing: it is returned
    ///   unchanged;
    /// * one that differs: it is updated to the description (keeping its
    ///   id, its history and whether it is active; a changed secret
    ///   replaces the old one at once).
    ///
    /// Give it a fixed secret: [`NewSubscription::generate_secret`] makes a
    /// new one every time, which would rotate the secret on every start.
    /// Errors as [`create`](Self::create).
    ///
    /// ```
    /// # fn main() -> Result<(), hookbus::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let bus = hookbus::Bus::builder().path(dir.path()).allow_private_targets(true).open()?;
    /// use hookbus::NewSubscription;
    /// let describe = || {
    ///     NewSubscription::new("orders", "http://127.0.0.1:9/hook")
    ///         .events(["order.created"])
    ///         .secret("shh")
    /// };
    /// let first = bus.subscriptions().ensure(describe())?;
    /// let again = bus.subscriptions().ensure(describe())?; // the next start
    /// assert_eq!(first.id, again.id);
    /// assert_eq!(bus.subscriptions().list()?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn ensure(&self, new: NewSubscription) -> Result<Subscription> {
        let wanted = self.record_of(new)?;
        let cap = self.config.max_subscriptions_per_tenant;
        self.engine.write(move |w| {
            w.lock_subscriptions()?;
            let mut existing = None;
            for r in w.reader().subscriptions() {
                let r = r?;
                if r.tenant == wanted.tenant && r.owner == wanted.owner && r.name == wanted.name {
                    existing = Some(r);
                    break;
                }
            }
            let Some(old) = existing else {
                check_conflict(w.reader(), &wanted)?;
                check_tenant_cap(w.reader(), wanted.tenant.as_deref(), cap)?;
                w.put_subscription(None, &wanted);
                return Ok(Subscription::from(wanted));
            };
            let same = old.url == wanted.url
                && old.events == wanted.events
                && old.secret == wanted.secret
                && old.standard_webhooks == wanted.standard_webhooks
                && old.headers == wanted.headers
                && old.rate_limit == wanted.rate_limit
                && old.order == wanted.order;
            if same {
                return Ok(Subscription::from(old));
            }
            let new = SubscriptionRecord {
                id: old.id,
                created_at: old.created_at,
                active: old.active,
                previous_secret: None,
                halted_at: old
                    .halted_at
                    .filter(|_| crate::lifecycle::halts(wanted.order)),
                ..wanted
            };
            check_conflict(w.reader(), &new)?;
            w.put_subscription(Some(&old), &new);
            Ok(Subscription::from(new))
        })
    }

    /// Sends a test event to one subscription now, on the calling thread,
    /// and returns the attempt: status (or why there was none), how long it
    /// took, the start of the response. The request is exactly what a
    /// delivery looks like — signed, through the same internal-address
    /// guard — with event name [`PING_EVENT`], body
    /// `{"ping":true,"subscription":"<id>"}` and fresh delivery and event
    /// ids. Nothing is stored and nothing is retried; inactive
    /// subscriptions can be pinged too. Blocks for up to the request
    /// timeout.
    ///
    /// Errors: [`Error::SubscriptionNotFound`], store errors.
    pub fn ping(&self, id: SubscriptionId) -> Result<crate::record::Attempt> {
        let sub = self
            .engine
            .reader()?
            .subscription(id)?
            .ok_or(Error::SubscriptionNotFound(id))?;
        let payload = serde_json::to_vec(&serde_json::json!({
            "ping": true,
            "subscription": id.to_string(),
        }))
        .map_err(Error::Serialize)?;
        let job = crate::sender::Job::to(
            &sub,
            crate::ids::DeliveryId::generate(),
            crate::ids::EventId::generate(),
            PING_EVENT.to_owned(),
            1,
            crate::sender::Body {
                payload: payload.into(),
                traceparent: None,
            },
        );
        let agent = crate::sender::build_agent(self.config);
        Ok(crate::sender::perform(&agent, job).attempt)
    }

    /// Validates a description and makes the record it would be stored as.
    fn record_of(&self, new: NewSubscription) -> Result<SubscriptionRecord> {
        let config = self.config;
        validate_name(&new.name)?;
        let url = validate_url(&new.url, &config.target_policy(), config.https_only)?;
        let events = normalise_events(&new.events)?;
        if let Some(s) = &new.secret {
            validate_secret(s)?;
        }
        if let Some(o) = &new.owner {
            validate_owner(o)?;
        }
        validate_mode(new.signing, new.secret.as_ref().map(Secret::expose))?;
        if let Some(t) = &new.tenant {
            validate_tenant(t)?;
            if t.starts_with(USER_TENANT_PREFIX) && !new.user_tenant {
                return Err(Error::InvalidTenant {
                    reason: "starts with `user:`, which is kept for REST callers without a tenant",
                });
            }
        }
        validate_headers(&new.headers)?;
        if let Some(limit) = &new.rate_limit {
            limit.validate()?;
        }
        let now = Timestamp::now();
        Ok(SubscriptionRecord {
            id: SubscriptionId::generate(),
            name: new.name,
            events,
            url,
            secret: new.secret.map(|s| s.0),
            previous_secret: None,
            content_type: CONTENT_TYPE_JSON.to_owned(),
            active: true,
            owner: new.owner,
            standard_webhooks: new.signing.is_standard(),
            created_at: now,
            modified_at: now,
            tenant: new.tenant,
            headers: new.headers.into_iter().map(|(n, v)| (n, v.0)).collect(),
            rate_limit: new.rate_limit,
            order: new.order,
            halted_at: None,
        })
    }

    /// The subscription with this id, if any.
    pub fn get(&self, id: SubscriptionId) -> Result<Option<Subscription>> {
        Ok(self
            .engine
            .reader()?
            .subscription(id)?
            .map(Subscription::from))
    }

    /// Every subscription, oldest first.
    pub fn list(&self) -> Result<Vec<Subscription>> {
        self.engine
            .reader()?
            .subscriptions()
            .map(|r| r.map(Subscription::from))
            .collect()
    }

    /// The subscriptions of one owner, oldest first.
    pub fn list_by_owner(&self, owner: &str) -> Result<Vec<Subscription>> {
        let mut out = Vec::new();
        for r in self.engine.reader()?.subscriptions() {
            let r = r?;
            if r.owner.as_deref() == Some(owner) {
                out.push(Subscription::from(r));
            }
        }
        Ok(out)
    }

    /// The active subscriptions an app-wide [`publish`](crate::Bus::publish)
    /// of `event` reaches (by name or `*`): those without a tenant, and
    /// tenants' ones only if the bus was built with
    /// [`tenants_receive_app_events`](crate::Builder::tenants_receive_app_events).
    pub fn for_event(&self, event: &str) -> Result<Vec<Subscription>> {
        self.reached_by(event, None)
    }

    /// The active subscriptions [`publish_to`](crate::Bus::publish_to)
    /// `tenant` of `event` reaches.
    pub fn for_tenant_event(&self, tenant: &str, event: &str) -> Result<Vec<Subscription>> {
        validate_tenant(tenant)?;
        self.reached_by(event, Some(tenant))
    }

    fn reached_by(&self, event: &str, tenant: Option<&str>) -> Result<Vec<Subscription>> {
        validate_event_name(event, false)?;
        let store = self.engine.reader()?;
        let ids = store.subscribers_of(event)?.ids;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = store.subscription(id)?
                && r.takes(event, tenant, self.config.tenants_receive_app_events)
            {
                out.push(Subscription::from(r));
            }
        }
        Ok(out)
    }

    /// Applies `patch` to a subscription. Validation and the conflict rule are
    /// the same as for [`create`](Self::create). Deactivating it pauses its
    /// pending deliveries (they wait, they are not dead-lettered);
    /// activating it again resumes them.
    pub fn update(&self, id: SubscriptionId, patch: SubscriptionPatch) -> Result<Subscription> {
        let config = self.config;
        if let Some(n) = &patch.name {
            validate_name(n)?;
        }
        let url = match &patch.url {
            Some(u) => Some(validate_url(u, &config.target_policy(), config.https_only)?),
            None => None,
        };
        let events = patch.events.as_deref().map(normalise_events).transpose()?;
        if let Some(Some(s)) = &patch.secret {
            validate_secret(s)?;
        }
        if let Some((s, _)) = &patch.rotate {
            validate_secret(s)?;
        }
        if let Some(h) = &patch.headers {
            validate_headers(h)?;
        }
        if let Some(Some(limit)) = &patch.rate_limit {
            limit.validate()?;
        }
        self.engine.write(move |w| {
            w.lock_subscriptions()?;
            let old = w
                .reader()
                .subscription(id)?
                .ok_or(Error::SubscriptionNotFound(id))?;
            let mut new = old.clone();
            if let Some(n) = patch.name {
                new.name = n;
            }
            if let Some(u) = url {
                new.url = u;
            }
            if let Some(e) = events {
                new.events = e;
            }
            if let Some(s) = patch.secret {
                new.secret = s.map(|s| s.0);
                new.previous_secret = None;
            }
            if let Some((s, keep)) = patch.rotate {
                let until = Timestamp::now().saturating_add(keep).as_millis();
                new.previous_secret = old.secret.clone().map(|old| (old, until));
                new.secret = Some(s.0);
            }
            if let Some(signing) = patch.signing {
                new.standard_webhooks = signing.is_standard();
            }
            validate_mode(
                Signing::from_flag(new.standard_webhooks),
                new.secret.as_deref(),
            )?;
            if let Some(h) = patch.headers {
                new.headers = h.into_iter().map(|(n, v)| (n, v.0)).collect();
            }
            if let Some(limit) = patch.rate_limit {
                new.rate_limit = limit;
            }
            if let Some(order) = patch.order {
                new.order = order;
            }
            crate::lifecycle::update(&mut new, patch.active, patch.resume);
            new.modified_at = Timestamp::now();
            check_conflict(w.reader(), &new)?;
            w.put_subscription(Some(&old), &new);
            match crate::lifecycle::disabled_change(&old, &new) {
                Some(true) => w.set_disabled(
                    id,
                    Some((new.modified_at, "deactivated through the API".into())),
                ),
                Some(false) => w.set_disabled(id, None),
                None => {}
            }
            Ok(Subscription::from(new))
        })
    }

    /// How one subscription's receiver is doing: attempts, failures, the
    /// current run of failures, last success and failure, latency
    /// percentiles, backlog, and why it is disabled if it is.
    ///
    /// Errors: [`Error::SubscriptionNotFound`], store errors.
    pub fn health(&self, id: SubscriptionId) -> Result<crate::EndpointHealth> {
        let store = self.engine.reader()?;
        let sub = store
            .subscription(id)?
            .ok_or(Error::SubscriptionNotFound(id))?;
        health_of(&*store, &sub)
    }

    /// The health of every subscription, those that need a person first:
    /// failing ones (longest run of failures first), then disabled ones,
    /// then the rest.
    pub fn health_all(&self) -> Result<Vec<crate::EndpointHealth>> {
        let store = self.engine.reader()?;
        let mut out = Vec::new();
        for sub in store.subscriptions() {
            out.push(health_of(&*store, &sub?)?);
        }
        crate::EndpointHealth::triage(&mut out);
        Ok(out)
    }

    /// Deletes a subscription. Its pending deliveries are dead-lettered;
    /// past deliveries and their attempts stay in the outbox.
    pub fn delete(&self, id: SubscriptionId) -> Result<()> {
        self.engine.write(move |w| {
            w.lock_subscriptions()?;
            let old = w
                .reader()
                .subscription(id)?
                .ok_or(Error::SubscriptionNotFound(id))?;
            w.remove_subscription(&old);
            w.dead_letter_pending(id, reason::DELETED);
            Ok(())
        })
    }
}

/// A subscription's health as stored, with its backlog.
fn health_of(
    store: &dyn crate::storage::Reader,
    sub: &SubscriptionRecord,
) -> Result<crate::EndpointHealth> {
    Ok(crate::EndpointHealth::new(
        (sub.id, &sub.name, &sub.url, sub.active),
        store.health(sub.id)?.unwrap_or_default(),
        store.backlog(sub.id)?,
    ))
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

    #[test]
    fn secrets_are_redacted() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        let n = NewSubscription::new("n", "http://x/").secret("hunter2");
        assert!(!format!("{n:?}").contains("hunter2"));
    }
}
