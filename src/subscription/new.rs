//! [`NewSubscription`]: the description of a subscription to create, and
//! the record it is stored as once its fields pass validation.

use std::fmt;

use super::secret::{Secret, Signing};
use super::validate::{
    normalise_events, validate_headers, validate_mode, validate_name, validate_owner,
    validate_secret, validate_tenant, validate_url,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::{SubscriptionId, Timestamp};
use crate::policy::{DeliveryOrder, RateLimit};
use crate::storage::SubscriptionRecord;

/// The content type every delivery is sent with (kept in the stored record).
const CONTENT_TYPE_JSON: &str = "application/json";
/// The tenant namespace of REST callers without a tenant: `user:<id>`.
/// Explicit tenant ids may not start with it.
pub const USER_TENANT_PREFIX: &str = "user:";

/// A subscription to create with
/// [`Subscriptions::create`](crate::Subscriptions::create) or
/// [`Bus::subscribe`](crate::Bus::subscribe).
///
/// ```
/// let new = hookbus::NewSubscription::new("My Webhook", "https://example.com/hooks")
///     .events(["hello", "goodbye"])
///     .secret("shh");
/// ```
///
/// Its `Debug` hides what [`Subscription`](crate::Subscription)'s does.
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
    /// Created active (the default) or paused.
    active: bool,
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
            active,
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
            .field("active", active)
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
            active: true,
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
    /// modes. Read it back from the returned
    /// [`Subscription::secret`](crate::Subscription::secret) and
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

    /// Creates it inactive (`false`): it gets no deliveries until it is
    /// activated with [`SubscriptionPatch::active`](crate::SubscriptionPatch::active).
    /// Defaults to active.
    pub fn active(mut self, active: bool) -> Self {
        self.active = active;
        self
    }

    /// Validates a description and makes the record it would be stored as.
    pub(super) fn into_record(self, config: &Config) -> Result<SubscriptionRecord> {
        let new = self;
        validate_name(&new.name)?;
        let url = validate_url(&new.url, &config.target_policy(), config.https_only)?;
        let events = normalise_events(&new.events)?;
        config.catalog.check_subscribed(&events)?;
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
            active: new.active,
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
}
