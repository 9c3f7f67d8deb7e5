//! [`SubscriptionPatch`]: changes to a subscription, their validation,
//! and the record they make of the stored one.

use std::fmt;

use super::secret::{Secret, Signing};
use super::validate::{
    normalise_events, validate_headers, validate_mode, validate_name, validate_secret, validate_url,
};
use crate::config::Config;
use crate::error::Result;
use crate::ids::Timestamp;
use crate::policy::{DeliveryOrder, RateLimit};
use crate::storage::SubscriptionRecord;

/// Changes to a subscription, for
/// [`Subscriptions::update`](crate::Subscriptions::update). Fields left
/// unset keep their value. Its `Debug` hides what
/// [`Subscription`](crate::Subscription)'s does.
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
    /// as [`NewSubscription::header`](crate::NewSubscription::header).
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
    /// ([`Subscription::halted_at`](crate::Subscription::halted_at)): the
    /// oldest pending delivery is sent next (a dead letter retried before
    /// resuming is that one).
    pub fn resume(mut self) -> Self {
        self.resume = true;
        self
    }

    /// Checks the fields the patch sets (validation as for
    /// [`create`](crate::Subscriptions::create)) and normalises its URL and
    /// events. The signing mode and the conflict rule need the stored
    /// subscription: [`apply`](Self::apply) and the caller check those.
    pub(super) fn check(mut self, config: &Config) -> Result<Self> {
        let patch = &self;
        if let Some(n) = &patch.name {
            validate_name(n)?;
        }
        let url = match &patch.url {
            Some(u) => Some(validate_url(u, &config.target_policy(), config.https_only)?),
            None => None,
        };
        let events = patch.events.as_deref().map(normalise_events).transpose()?;
        if let Some(events) = &events {
            config.catalog.check_subscribed(events)?;
        }
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
        self.url = url;
        self.events = events;
        Ok(self)
    }

    /// The stored subscription `old` with this patch (one that passed
    /// [`check`](Self::check)) applied, and its signing mode checked.
    pub(super) fn apply(self, old: &SubscriptionRecord) -> Result<SubscriptionRecord> {
        let patch = self;
        let mut new = old.clone();
        if let Some(n) = patch.name {
            new.name = n;
        }
        if let Some(u) = patch.url {
            new.url = u;
        }
        if let Some(e) = patch.events {
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
        Ok(new)
    }
}
