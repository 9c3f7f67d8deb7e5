//! What the v1 routes read through the stores' indexes: one tenant's
//! subscriptions a page at a time, a subscription's deliveries newest
//! first, and the test-request limit.

use crate::bus::Bus;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::ids::{DeliveryId, SubscriptionId};
use crate::subscription::Subscription;

/// Up to `n` subscriptions of `tenant` after `after`, in id order (the
/// stores' tenant index).
pub(super) fn tenant_subscriptions(
    bus: &Bus,
    tenant: &str,
    after: Option<SubscriptionId>,
    n: usize,
) -> Result<Vec<Subscription>> {
    bus.subscriptions().list_by_tenant(tenant, after, n)
}

/// A subscription's deliveries, newest first, strictly before `before`.
pub(super) fn newest_deliveries(
    bus: &Bus,
    sub: SubscriptionId,
    before: Option<DeliveryId>,
) -> impl Iterator<Item = Result<Delivery>> {
    bus.outbox().for_subscription_before(sub, before)
}

/// Whether another test request to `sub` may go now
/// ([`Error::TooManyRequests`](crate::Error::TooManyRequests) if not).
pub(super) fn check_test_rate(bus: &Bus, sub: SubscriptionId) -> Result<()> {
    bus.subscriptions().check_test_rate(sub)
}
