//! Deliveries this instance claimed as it stored them (a shared store:
//! [`Writer::claim_new`](crate::storage::Writer::claim_new)), held until a
//! sender takes them: the dispatcher sends these without claiming them
//! again (no claim statement, no read of their records). Pure
//! bookkeeping: which subscription holds how many, oldest first, and
//! which have waited too long (their lease must outlast the request).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ids::SubscriptionId;
use crate::storage::IndexEntry;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct OwnClaims {
    by_sub: HashMap<SubscriptionId, VecDeque<(IndexEntry, Instant)>>,
    len: usize,
    /// How many each subscription got since [`take_fresh`](Self::take_fresh).
    fresh: HashMap<SubscriptionId, usize>,
}

impl OwnClaims {
    /// Keeps what a commit claimed, claimed at `at`.
    pub(crate) fn add(&mut self, entries: Vec<IndexEntry>, at: Instant) {
        for e in entries {
            *self.fresh.entry(e.subscription).or_default() += 1;
            self.by_sub
                .entry(e.subscription)
                .or_default()
                .push_back((e, at));
            self.len += 1;
        }
    }

    /// How many are held in all.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How many `sub` holds.
    pub(crate) fn held(&self, sub: SubscriptionId) -> usize {
        self.by_sub.get(&sub).map_or(0, VecDeque::len)
    }

    /// The subscriptions holding some.
    pub(crate) fn subs(&self) -> impl Iterator<Item = SubscriptionId> + '_ {
        self.by_sub.keys().copied()
    }

    /// How many each subscription got since the last call.
    pub(crate) fn take_fresh(&mut self) -> HashMap<SubscriptionId, usize> {
        std::mem::take(&mut self.fresh)
    }

    /// Up to `n` of `sub`'s, oldest first, to send now; and those that
    /// waited longer than `max_age` by `now` (not to be sent: their claim
    /// is to be given up).
    pub(crate) fn take(
        &mut self,
        sub: SubscriptionId,
        n: usize,
        max_age: Duration,
        now: Instant,
    ) -> (Vec<IndexEntry>, Vec<IndexEntry>) {
        let (mut send, mut stale) = (Vec::new(), Vec::new());
        let Some(q) = self.by_sub.get_mut(&sub) else {
            return (send, stale);
        };
        while send.len() < n {
            let Some((e, at)) = q.pop_front() else { break };
            if now.saturating_duration_since(at) > max_age {
                stale.push(e);
            } else {
                send.push(e);
            }
        }
        self.len -= send.len() + stale.len();
        if q.is_empty() {
            self.by_sub.remove(&sub);
        }
        (send, stale)
    }

    /// Everything `sub` holds (its subscription changed).
    pub(crate) fn remove(&mut self, sub: SubscriptionId) -> Vec<IndexEntry> {
        let out: Vec<IndexEntry> = self
            .by_sub
            .remove(&sub)
            .into_iter()
            .flatten()
            .map(|(e, _)| e)
            .collect();
        self.len -= out.len();
        out
    }

    /// Everything that waited longer than `max_age` by `now`.
    pub(crate) fn remove_stale(&mut self, max_age: Duration, now: Instant) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        self.by_sub.retain(|_, q| {
            while q
                .front()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) > max_age)
            {
                if let Some((e, _)) = q.pop_front() {
                    out.push(e);
                }
            }
            !q.is_empty()
        });
        self.len -= out.len();
        out
    }

    /// Everything held.
    pub(crate) fn remove_all(&mut self) -> Vec<IndexEntry> {
        self.len = 0;
        self.fresh.clear();
        self.by_sub
            .drain()
            .flat_map(|(_, q)| q.into_iter().map(|(e, _)| e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DeliveryId;

    fn entry(sub: SubscriptionId, at: u64) -> IndexEntry {
        IndexEntry {
            subscription: sub,
            at,
            delivery: DeliveryId::generate(),
        }
    }

    #[test]
    fn entries_go_out_oldest_first_and_stale_ones_are_set_apart() {
        let (a, b) = (SubscriptionId::generate(), SubscriptionId::generate());
        let mut own = OwnClaims::default();
        let t0 = Instant::now();
        let first: Vec<IndexEntry> = (0..3).map(|i| entry(a, i)).collect();
        own.add(first.clone(), t0);
        let later = t0 + Duration::from_secs(10);
        let second = vec![entry(a, 9), entry(b, 1)];
        own.add(second.clone(), later);
        assert_eq!((own.len(), own.held(a), own.held(b)), (5, 4, 1));
        assert_eq!(own.take_fresh(), HashMap::from([(a, 4), (b, 1)]));
        assert!(own.take_fresh().is_empty(), "fresh counts are taken once");

        // Two asked for, 11 s on: the first three waited more than 5 s.
        let (send, stale) = own.take(a, 2, Duration::from_secs(5), t0 + Duration::from_secs(11));
        assert_eq!(send, [second[0]], "only the one that waited 1 s goes");
        assert_eq!(stale, first, "the stale ones are set apart, oldest first");
        assert_eq!((own.len(), own.held(a)), (1, 0));
        assert_eq!(own.subs().collect::<Vec<_>>(), [b]);

        // Nothing held: nothing comes.
        let (send, stale) = own.take(a, 9, Duration::from_secs(5), later);
        assert!(send.is_empty() && stale.is_empty());
    }

    #[test]
    fn a_subscription_or_the_stale_or_everything_can_be_taken_back() {
        let (a, b) = (SubscriptionId::generate(), SubscriptionId::generate());
        let mut own = OwnClaims::default();
        let t0 = Instant::now();
        own.add(vec![entry(a, 1), entry(a, 2)], t0);
        own.add(vec![entry(b, 1)], t0 + Duration::from_secs(3));
        assert_eq!(own.remove(a).len(), 2);
        assert_eq!(own.len(), 1);
        let age = Duration::from_secs(2);
        assert!(
            own.remove_stale(age, t0 + Duration::from_secs(4))
                .is_empty()
        );
        assert_eq!(own.remove_stale(age, t0 + Duration::from_secs(6)).len(), 1);
        assert_eq!(own.len(), 0);
        own.add(vec![entry(a, 1), entry(b, 2)], t0);
        assert_eq!(own.remove_all().len(), 2);
        assert_eq!((own.len(), own.subs().count()), (0, 0));
        assert!(own.take_fresh().is_empty());
    }
}
