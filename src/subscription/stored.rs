//! [`Subscription`]: a subscription as the API shows it, made from its
//! stored record; its `Debug` and serialization hide its secrets.

use std::fmt;

use serde::Serialize;

use super::secret::{Secret, Signing};
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::policy::{DeliveryOrder, RateLimit};
use crate::storage::SubscriptionRecord;

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
    /// until [`SubscriptionPatch::resume`](crate::SubscriptionPatch::resume).
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
