//! What the v1 routes read beyond the public Rust API (to be replaced by
//! the stores' tenant index and newest-first delivery pages).

use crate::bus::Bus;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::ids::{DeliveryId, SubscriptionId};
use crate::subscription::Subscription;

/// Up to `n` subscriptions of `tenant` after `after`, in id order.
pub(super) fn tenant_subscriptions(
    bus: &Bus,
    tenant: &str,
    after: Option<SubscriptionId>,
    n: usize,
) -> Result<Vec<Subscription>> {
    let mut all: Vec<Subscription> = bus
        .subscriptions()
        .list()?
        .into_iter()
        .filter(|s| s.tenant.as_deref() == Some(tenant) && after.is_none_or(|a| s.id > a))
        .collect();
    all.sort_by_key(|s| s.id);
    all.truncate(n);
    Ok(all)
}

/// A subscription's deliveries, newest first, strictly before `before`.
pub(super) fn newest_deliveries(
    bus: &Bus,
    sub: SubscriptionId,
    before: Option<DeliveryId>,
) -> impl Iterator<Item = Result<Delivery>> {
    bus.outbox()
        .for_subscription(sub, true)
        .filter(move |d| match (d, before) {
            (Ok(d), Some(b)) => d.id < b,
            _ => true,
        })
}

/// Whether another test request to `sub` may go now.
pub(super) fn check_test_rate(_bus: &Bus, _sub: SubscriptionId) -> Result<()> {
    Ok(())
}
