//! What a round's writes did that the engine keeps caches of (due work,
//! subscriptions, FIFO heads), and the maintenance a change asked for:
//! values the session hands over once a round, not fields anyone reaches
//! into.

use std::collections::{HashMap, HashSet};

use crate::delivery::{Delivery, DeliveryState};
use crate::ids::SubscriptionId;

/// What a round's writes did (taken once a round:
/// `Session::take_changes`).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Subscriptions whose pending deliveries changed.
    pub(crate) touched: HashSet<SubscriptionId>,
    /// Subscriptions that gained pending deliveries, with the soonest due.
    pub(crate) added: HashMap<SubscriptionId, u64>,
    /// How many pending deliveries each of `added` gained.
    pub(crate) added_n: HashMap<SubscriptionId, usize>,
    /// Subscriptions written or removed: the dispatcher drops what it
    /// keeps about their policy.
    pub(crate) changed_subs: HashSet<SubscriptionId>,
    /// Subscriptions with a dead delivery made pending again (it may be
    /// older than a FIFO queue's head).
    pub(crate) revived_subs: HashSet<SubscriptionId>,
}

/// Maintenance a change asks for: the dispatcher makes it a job
/// (`maintenance::Job`) and runs it in chunks after the change's commit.
/// (A request, not the job itself: the session knows nothing of jobs,
/// which run on the session.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobRequest {
    /// Dead-letter every pending delivery of `sub` with `reason`.
    DeadLetterPending {
        sub: SubscriptionId,
        reason: &'static str,
    },
}

impl Changes {
    /// A delivery was staged, replacing `old`.
    pub(crate) fn delivery(&mut self, old: Option<&Delivery>, new: &Delivery) {
        if old.is_some_and(|o| o.state == DeliveryState::Pending) {
            // It may have been the soonest: look again after the commit.
            self.touched.insert(new.subscription_id);
        } else if new.state == DeliveryState::Pending {
            // A new pending delivery can only make the soonest sooner.
            let at = new.next_attempt_at.map_or(0, |t| t.as_millis());
            let e = self.added.entry(new.subscription_id).or_insert(at);
            *e = (*e).min(at);
            *self.added_n.entry(new.subscription_id).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventId, Timestamp};

    fn pending(sub: SubscriptionId, at_ms: u64) -> Delivery {
        let at = Timestamp::from_millis(at_ms);
        let mut d = crate::delivery::created(EventId::generate(), "e", at, sub, 1, at);
        d.next_attempt_at = Some(at);
        d
    }

    #[test]
    fn new_pending_deliveries_keep_the_soonest_and_changed_ones_are_looked_at_again() {
        let sub = SubscriptionId::generate();
        let mut c = Changes::default();
        c.delivery(None, &pending(sub, 50));
        c.delivery(None, &pending(sub, 20));
        c.delivery(None, &pending(sub, 90));
        assert_eq!(c.added[&sub], 20);
        assert_eq!(c.added_n[&sub], 3);
        assert!(c.touched.is_empty());
        let was = pending(sub, 20);
        let mut delivered = was.clone();
        delivered.state = DeliveryState::Delivered;
        c.delivery(Some(&was), &delivered);
        assert!(c.touched.contains(&sub), "its soonest may have gone");
        let other = SubscriptionId::generate();
        let mut dead = pending(other, 5);
        dead.state = DeliveryState::Dead;
        c.delivery(Some(&dead), &pending(other, 5));
        assert_eq!(c.added[&other], 5, "a revived delivery is new due work");
    }
}
