//! The one lookup both route sets make before touching a subscription: it
//! exists, and the caller has the access the route needs (see
//! `Caller::access`). Each route set says the refusal its own way.

use super::types::{Access, Caller};
use crate::bus::Bus;
use crate::error::Error;
use crate::ids::SubscriptionId;
use crate::subscription::Subscription;

/// Why a caller may not have a subscription.
pub(crate) enum Denied {
    /// No such subscription, or one the caller may not see (another
    /// tenant's looks like none).
    NotFound,
    /// The caller may read it but the route changes it.
    Forbidden,
    /// The store failed.
    Failed(Error),
}

/// The subscription `id` (as the path gave it) if `caller` has `need` on it.
pub(crate) fn reach(
    bus: &Bus,
    caller: &Caller,
    id: &str,
    need: Access,
) -> Result<Subscription, Denied> {
    let id = id.parse::<SubscriptionId>().map_err(|_| Denied::NotFound)?;
    reach_id(bus, caller, id, need)
}

/// The subscription `id` if `caller` has `need` on it.
pub(crate) fn reach_id(
    bus: &Bus,
    caller: &Caller,
    id: SubscriptionId,
    need: Access,
) -> Result<Subscription, Denied> {
    match bus.subscriptions().get(id) {
        Ok(Some(s)) => match caller.access(&s) {
            Access::None => Err(Denied::NotFound),
            a if a < need => Err(Denied::Forbidden),
            _ => Ok(s),
        },
        Ok(None) => Err(Denied::NotFound),
        Err(e) => Err(Denied::Failed(e)),
    }
}
