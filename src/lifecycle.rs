//! A subscription's lifecycle as pure transitions on its record, used by
//! the engine (auto-disable, 410 Gone, a FIFO halt) and by
//! [`Subscriptions::update`](crate::Subscriptions::update) (enable,
//! disable, resume, a new order).
//!
//! ```text
//!             disable (API, auto-disable, 410)
//!   Active ────────────────────────────────────▶ Disabled
//!     ▲  ◀──────────────────────────────────────    │
//!     │            enable (API)                     │
//!     │ resume, or an order that does not halt      │ dead letter in a
//!     │                                             │ FIFO queue that halts
//!   Halted ◀─────────────── dead letter ─────────── ┘ (active or not)
//! ```
//!
//! Active and disabled are `active`; halted is `halted_at` (a FIFO
//! subscription that halts at dead letters sends nothing while set). A
//! disabled subscription keeps its pending deliveries; they wait.

use crate::ids::{DeliveryId, Timestamp};
use crate::policy::DeliveryOrder;
use crate::storage::SubscriptionRecord;

/// `r` disabled at `now`, or `None` if it is not active.
pub(crate) fn disable(r: &SubscriptionRecord, now: Timestamp) -> Option<SubscriptionRecord> {
    if !r.active {
        return None;
    }
    let mut new = r.clone();
    new.active = false;
    new.modified_at = now;
    Some(new)
}

/// `r` halted at the dead letter `dead` at `now`, or `None` if it does not
/// halt at dead letters or is halted already.
pub(crate) fn halt(
    r: &SubscriptionRecord,
    dead: DeliveryId,
    now: Timestamp,
) -> Option<SubscriptionRecord> {
    if !halts(r.order) || r.halted_at.is_some() {
        return None;
    }
    let mut new = r.clone();
    new.halted_at = Some(dead);
    new.modified_at = now;
    Some(new)
}

/// Whether a subscription with this order halts at a dead letter.
pub(crate) fn halts(order: DeliveryOrder) -> bool {
    order == DeliveryOrder::FIFO_HALT
}

/// An update's lifecycle part: `active` (if given) enables or disables;
/// the halt is kept only while the order still halts and no `resume` was
/// asked for.
pub(crate) fn update(new: &mut SubscriptionRecord, active: Option<bool>, resume: bool) {
    if let Some(a) = active {
        new.active = a;
    }
    if resume || !halts(new.order) {
        new.halted_at = None;
    }
}

/// What a change from `old` to `new` does to the "disabled" note of the
/// subscription's health: `Some(true)` it was disabled, `Some(false)` it
/// was enabled, `None` neither.
pub(crate) fn disabled_change(old: &SubscriptionRecord, new: &SubscriptionRecord) -> Option<bool> {
    match (old.active, new.active) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OnDeadLetter;

    fn record(order: DeliveryOrder) -> SubscriptionRecord {
        let mut r = crate::test_support::subscription(&["*"]);
        r.order = order;
        r
    }

    #[test]
    fn only_an_active_subscription_is_disabled() {
        let r = record(DeliveryOrder::default());
        let now = Timestamp::from_millis(5);
        let off = disable(&r, now).expect("active");
        assert!(!off.active);
        assert_eq!(off.modified_at, now);
        assert_eq!(disabled_change(&r, &off), Some(true));
        assert!(disable(&off, now).is_none());
        let mut on = off.clone();
        update(&mut on, Some(true), false);
        assert_eq!(disabled_change(&off, &on), Some(false));
        assert_eq!(disabled_change(&on, &on), None);
    }

    #[test]
    fn only_a_fifo_queue_that_halts_halts_and_only_once() {
        let dead = DeliveryId::generate();
        let now = Timestamp::from_millis(7);
        assert!(halt(&record(DeliveryOrder::default()), dead, now).is_none());
        let skip = DeliveryOrder::Fifo {
            on_dead_letter: OnDeadLetter::Skip,
        };
        assert!(halt(&record(skip), dead, now).is_none());
        let r = record(DeliveryOrder::FIFO_HALT);
        let h = halt(&r, dead, now).expect("halts");
        assert_eq!(h.halted_at, Some(dead));
        assert!(halt(&h, DeliveryId::generate(), now).is_none());
        // A disabled one halts too: its queue is still ordered.
        let mut off = disable(&r, now).unwrap();
        assert!(halt(&off, dead, now).is_some());
        off.halted_at = Some(dead);
        // Enabling does not resume; resume does; so does a new order.
        let mut on = off.clone();
        update(&mut on, Some(true), false);
        assert_eq!(on.halted_at, Some(dead));
        update(&mut on, None, true);
        assert_eq!(on.halted_at, None);
        let mut other = h.clone();
        other.order = skip;
        update(&mut other, None, false);
        assert_eq!(other.halted_at, None);
    }
}
