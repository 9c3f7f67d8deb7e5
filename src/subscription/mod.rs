//! Subscriptions: who receives which events, where, signed with what.
//!
//! # Rooms
//!
//! | file | job |
//! | --- | --- |
//! | `secret.rs` | [`Secret`] (never shown) and [`Signing`] (a leaf) |
//! | `test_rate.rs` | the limit on test requests per subscription: a token bucket each, in memory (a leaf) |
//! | `validate.rs` | the rules of a subscription's fields; the conflict rule and a tenant's cap, against the store |
//! | `stored.rs` | [`Subscription`]: a stored subscription as the API shows it |
//! | `new.rs` | [`NewSubscription`] and the record it is stored as |
//! | `patch.rs` | [`SubscriptionPatch`], its checks, the record it makes of the stored one |
//! | `ping.rs` | the test request of [`Subscriptions::ping`] |
//! | `mod.rs` | the [`Subscriptions`] handle: creates, reads, changes, deletes through the engine |
//!
//! Each room uses only rooms listed above it; none uses `mod.rs`.

mod new;
mod patch;
mod ping;
mod secret;
mod stored;
mod test_event;
pub(crate) mod test_rate;
pub(crate) mod validate;

use std::fmt;

use crate::config::Config;
use crate::delivery::reason;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::SubscriptionId;
use crate::storage::{Reader, SubscriptionRecord, SubscriptionsBy};
use validate::{check_conflict, check_tenant_cap};
pub(crate) use validate::{validate_event_name, validate_tenant};

pub use new::{NewSubscription, USER_TENANT_PREFIX};
pub use patch::SubscriptionPatch;
pub use ping::PING_EVENT;
pub use secret::{Secret, Signing};
pub use stored::Subscription;
pub use test_event::TEST_EVENT;
pub use test_rate::{TEST_REQUEST_BURST, TEST_REQUEST_REFILL};

/// Subscriptions read per page when a listing reads all of a tenant's or
/// an owner's.
const PAGE: usize = 256;

/// Every subscription `by` lists, oldest first, a page at a time.
fn all_by(store: &dyn Reader, by: SubscriptionsBy<'_>) -> Result<Vec<SubscriptionRecord>> {
    let mut out: Vec<SubscriptionRecord> = Vec::new();
    loop {
        let page = store.subscriptions_by(by, out.last().map(|r| r.id), PAGE)?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
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
    /// [`Error::NoEvents`], [`Error::InvalidEventName`] (also for a name
    /// that is not in the app's event catalog, when it has one: see
    /// [`Builder::event_type`](crate::Builder::event_type)),
    /// [`Error::InvalidSecret`],
    /// [`Error::InvalidOwner`], [`Error::Conflict`], [`Error::Closed`].
    pub fn create(&self, new: NewSubscription) -> Result<Subscription> {
        let rec = new.into_record(self.config)?;
        let cap = self.config.max_subscriptions_per_tenant;
        self.engine.write(move |w| {
            w.lock_subscriptions()?;
            check_conflict(w.reader(), &rec)?;
            check_tenant_cap(w.reader(), rec.tenant.as_deref(), cap)?;
            w.put_subscription(None, &rec);
            if !rec.active {
                w.set_disabled(rec.id, Some((rec.created_at, "created inactive".into())));
            }
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
        let wanted = new.into_record(self.config)?;
        let cap = self.config.max_subscriptions_per_tenant;
        self.engine.write(move |w| {
            w.lock_subscriptions()?;
            // Among the owner's (or, without one, the tenant's) alone.
            let by = match &wanted.owner {
                Some(o) => SubscriptionsBy::Owner(o),
                None => SubscriptionsBy::Tenant(wanted.tenant.as_deref()),
            };
            let existing = all_by(w.reader(), by)?.into_iter().find(|r| {
                r.tenant == wanted.tenant && r.owner == wanted.owner && r.name == wanted.name
            });
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
    /// The request goes through the bus's own HTTP client, the one its
    /// senders share (the same connection pool and internal-address
    /// guard); the calling thread waits for the answer. Test requests are limited per subscription: at most
    /// [`TEST_REQUEST_BURST`] at once, then one every
    /// [`TEST_REQUEST_REFILL`] (in memory, per `Bus`).
    ///
    /// Errors: [`Error::SubscriptionNotFound`],
    /// [`Error::TooManyRequests`] (nothing was sent), store errors.
    pub fn ping(&self, id: SubscriptionId) -> Result<crate::record::Attempt> {
        let sub = self
            .engine
            .reader()?
            .subscription(id)?
            .ok_or(Error::SubscriptionNotFound(id))?;
        self.check_test_rate(id)?;
        ping::send(&sub, self.engine.transport())
    }

    /// Takes one test request of subscription `id` from its rate limit
    /// (see [`ping`](Self::ping)); [`Error::TooManyRequests`] when none
    /// is left, with how long until one is. Call it before sending any
    /// test request to a subscription. Does not look the subscription up.
    pub(crate) fn check_test_rate(&self, id: SubscriptionId) -> Result<()> {
        self.engine.test_rate().take(id, std::time::Instant::now())
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

    /// The subscriptions of one owner, in any tenant, oldest first. Read
    /// through the store's index by owner: the work follows the owner's
    /// subscriptions, not every tenant's.
    pub fn list_by_owner(&self, owner: &str) -> Result<Vec<Subscription>> {
        let store = self.engine.reader()?;
        Ok(all_by(&*store, SubscriptionsBy::Owner(owner))?
            .into_iter()
            .map(Subscription::from)
            .collect())
    }

    /// One page of a tenant's subscriptions, oldest first: at most `limit`,
    /// those created after the subscription `after` (the last one of the
    /// previous page; `None` for the first page). Fewer than `limit` means
    /// there are no more. Read through the store's index by tenant: the
    /// work follows this tenant's subscriptions, not every tenant's.
    ///
    /// ```
    /// # fn main() -> Result<(), hookbus::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let bus = hookbus::Bus::builder().path(dir.path()).allow_private_targets(true).open()?;
    /// use hookbus::NewSubscription;
    /// for name in ["a", "b", "c"] {
    ///     bus.subscribe(
    ///         NewSubscription::new(name, format!("http://127.0.0.1:9/{name}"))
    ///             .events(["order.created"])
    ///             .tenant("acme"),
    ///     )?;
    /// }
    /// let subs = bus.subscriptions();
    /// let first = subs.list_by_tenant("acme", None, 2)?;
    /// assert_eq!(first.len(), 2);
    /// let rest = subs.list_by_tenant("acme", Some(first[1].id), 2)?;
    /// assert_eq!(rest.len(), 1);
    /// assert!(subs.list_by_tenant("globex", None, 10)?.is_empty());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTenant`] if `tenant` is not a valid tenant id
    /// (empty, over 200 bytes, control characters);
    /// [`Error::Corrupt`] if one of its records does not decode;
    /// [`Error::Closed`] after shutdown; other store errors.
    pub fn list_by_tenant(
        &self,
        tenant: &str,
        after: Option<SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<Subscription>> {
        validate_tenant(tenant)?;
        Ok(self
            .engine
            .reader()?
            .tenant_subscriptions(tenant, after, limit)?
            .into_iter()
            .map(Subscription::from)
            .collect())
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
        let patch = patch.check(self.config)?;
        self.engine.write(move |w| {
            w.lock_subscriptions()?;
            let old = w
                .reader()
                .subscription(id)?
                .ok_or(Error::SubscriptionNotFound(id))?;
            let new = patch.apply(&old)?;
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
    pub fn health(&self, id: SubscriptionId) -> Result<crate::health::EndpointHealth> {
        let store = self.engine.reader()?;
        let sub = store
            .subscription(id)?
            .ok_or(Error::SubscriptionNotFound(id))?;
        health_of(&*store, &sub)
    }

    /// The health of every subscription, those that need a person first:
    /// failing ones (longest run of failures first), then disabled ones,
    /// then the rest.
    pub fn health_all(&self) -> Result<Vec<crate::health::EndpointHealth>> {
        let store = self.engine.reader()?;
        let mut out = Vec::new();
        for sub in store.subscriptions() {
            out.push(health_of(&*store, &sub?)?);
        }
        crate::health::EndpointHealth::triage(&mut out);
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
) -> Result<crate::health::EndpointHealth> {
    Ok(crate::health::EndpointHealth::new(
        (sub.id, &sub.name, &sub.url, sub.active),
        store.health(sub.id)?.unwrap_or_default(),
        store.backlog(sub.id)?,
    ))
}
