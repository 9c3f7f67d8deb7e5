//! The coordination seam: how the dispatcher takes due work, rate-limit
//! tokens and a receiver's pause, so that it has no store branch of its
//! own. [`Local`] is for a store this instance alone writes (sled): due
//! work is read from the pending index, and its rate limits and pauses are
//! the dispatcher's own. [`Shared`] is for a store several instances write
//! (PostgreSQL): due work is claimed for a lease, and rate-limit tokens and
//! pauses live in the store, for every instance together.

use super::session::Session;
use crate::delivery;
use crate::error::Result;
use crate::ids::{DeliveryId, SubscriptionId};
use crate::policy::RateLimit;
use crate::storage::{Coordinator, IndexEntry, Limited};

/// What the dispatcher asks of the instances sharing its store (see the
/// module docs).
pub(crate) trait Coordination: Send {
    /// Whether this instance writes the store alone: then it sees every
    /// change as it is made (a FIFO queue's head can be remembered), and
    /// may hand out work before a round of outcomes commits (nobody else
    /// can take it meanwhile). Otherwise other instances' work is found by
    /// polling, and subscriptions are read afresh at each poll.
    fn alone(&self) -> bool;

    /// How many of `want` requests of `sub` may start now under the part
    /// of its rate limit kept outside this instance: `Ok((n, wait_ms))`,
    /// with `wait_ms` until one may when `n` is 0.
    fn tokens(&self, sub: SubscriptionId, want: usize, limit: RateLimit) -> Result<(usize, u64)>;

    /// Gives back `n` tokens taken with [`tokens`](Self::tokens) but not
    /// used.
    fn give_back(&self, sub: SubscriptionId, n: usize, limit: RateLimit) -> Result<()>;

    /// Up to `room` due deliveries of `sub` for this instance to send,
    /// skipping those `busy` says it sends already.
    fn take_due(
        &self,
        s: &Session,
        sub: SubscriptionId,
        room: usize,
        now: u64,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Vec<IndexEntry>>;

    /// [`take_due`](Self::take_due) for several subscriptions at once (a
    /// shared store claims them in one statement): each `(sub, room)` of
    /// `wants` with what it got.
    fn take_due_many(
        &self,
        s: &Session,
        wants: &[(SubscriptionId, usize)],
        now: u64,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Vec<(SubscriptionId, Vec<IndexEntry>)>> {
        wants
            .iter()
            .map(|&(sub, room)| Ok((sub, self.take_due(s, sub, room, now, busy)?)))
            .collect()
    }

    /// [`take_due`](Self::take_due) within the part of `sub`'s rate limit
    /// kept outside this instance (`limit`): a shared store spends the
    /// tokens of what it claims in one step.
    fn take_due_limited(
        &self,
        s: &Session,
        sub: SubscriptionId,
        room: usize,
        now: u64,
        limit: RateLimit,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Limited>;

    /// `head` (a FIFO queue's head) for this instance to send; `None` if
    /// another instance sends it, or a receiver's pause holds it back.
    fn take_head(&self, head: IndexEntry, now: u64) -> Result<Option<IndexEntry>>;

    /// A receiver asked `sub` to slow down for `ms`: tell whoever else
    /// sends its deliveries.
    fn pause(&self, sub: SubscriptionId, ms: u64) -> Result<()>;

    /// Gives up what this instance claimed of these deliveries and will
    /// not send now (see [`Coordinator::release`]).
    fn release(&self, ids: &[DeliveryId]) -> Result<()>;
}

/// What [`take`] got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// These deliveries are this instance's to send now (maybe none).
    Entries(Vec<IndexEntry>),
    /// None may start before this instant (ms): a rate limit's tokens.
    WaitUntil(u64),
    /// The store could not be asked; look again soon.
    Failed,
}

/// Takes the work one subscription may send now: its FIFO `head` alone if
/// it has one, else up to `room` of its due deliveries not `busy`, within
/// the part of its rate limit (`rate`) kept outside this instance.
#[allow(clippy::too_many_arguments)]
pub(crate) fn take(
    c: &dyn Coordination,
    s: &Session,
    sub: SubscriptionId,
    rate: Option<RateLimit>,
    head: Option<IndexEntry>,
    room: usize,
    now: u64,
    busy: &dyn Fn(DeliveryId) -> bool,
) -> Take {
    let taken = match (head, rate) {
        (Some(head), rate) => take_head(c, sub, head, rate, now),
        (None, Some(limit)) => c.take_due_limited(s, sub, room, now, limit, busy),
        (None, None) => c.take_due(s, sub, room, now, busy).map(Limited::Claimed),
    };
    match taken {
        Ok(Limited::Claimed(batch)) => Take::Entries(batch),
        Ok(Limited::Wait(ms)) => Take::WaitUntil(now.saturating_add(ms)),
        Err(e) => {
            tracing::error!(subscription = %sub, error = %e, "could not take due deliveries; will try again");
            Take::Failed
        }
    }
}

/// A FIFO queue's head, within the rate limit: a token, then the head
/// (another instance may send it, or a receiver's pause hold every
/// instance back), the token back if it was not taken.
fn take_head(
    c: &dyn Coordination,
    sub: SubscriptionId,
    head: IndexEntry,
    rate: Option<RateLimit>,
    now: u64,
) -> Result<Limited> {
    if let Some(limit) = rate {
        let (granted, wait) = c.tokens(sub, 1, limit)?;
        if granted == 0 {
            return Ok(Limited::Wait(wait));
        }
    }
    let taken = c.take_head(head, now)?;
    if let Some(limit) = rate
        && taken.is_none()
        && let Err(e) = c.give_back(sub, 1, limit)
    {
        tracing::warn!(subscription = %sub, error = %e, "could not give back an unused rate-limit token");
    }
    Ok(Limited::Claimed(taken.into_iter().collect()))
}

/// The coordination a store needs (see the module docs): the store's
/// [`Coordinator`] if it has one, else this instance's own.
pub(crate) fn for_store(s: &Session) -> Box<dyn Coordination> {
    match s.coordinator() {
        Some(store) => Box::new(Shared { store }),
        None => Box::new(Local {
            horizon: delivery::due_horizon(&s.config.retry_schedule),
        }),
    }
}

/// One instance writes the store.
pub(crate) struct Local {
    /// How far ahead of its time a delivery counts as due.
    horizon: std::time::Duration,
}

impl Coordination for Local {
    fn alone(&self) -> bool {
        true
    }

    /// Nothing outside: the dispatcher's own bucket is the whole limit.
    fn tokens(&self, _: SubscriptionId, want: usize, _: RateLimit) -> Result<(usize, u64)> {
        Ok((want, 0))
    }

    fn give_back(&self, _: SubscriptionId, _: usize, _: RateLimit) -> Result<()> {
        Ok(())
    }

    /// Its due deliveries in due order, not already in flight: at most
    /// `busy` entries are skipped on the way. A damaged index entry ends
    /// the walk (the rest is read at the next pass).
    fn take_due(
        &self,
        s: &Session,
        sub: SubscriptionId,
        room: usize,
        now: u64,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Vec<IndexEntry>> {
        let mut batch = Vec::with_capacity(room.min(256));
        for entry in s.reader().due(sub) {
            match entry {
                Ok(e) if !delivery::is_due(e.at, now, self.horizon) => break,
                Ok(e) if busy(e.delivery) => {}
                Ok(e) => {
                    batch.push(e);
                    if batch.len() == room {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(subscription = %sub, error = %e, "damaged due-index entry");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// The dispatcher's own bucket is the whole limit.
    fn take_due_limited(
        &self,
        s: &Session,
        sub: SubscriptionId,
        room: usize,
        now: u64,
        _: RateLimit,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Limited> {
        self.take_due(s, sub, room, now, busy).map(Limited::Claimed)
    }

    fn take_head(&self, head: IndexEntry, _: u64) -> Result<Option<IndexEntry>> {
        Ok(Some(head))
    }

    /// The dispatcher's own flow holds the pause.
    fn pause(&self, _: SubscriptionId, _: u64) -> Result<()> {
        Ok(())
    }

    /// Nothing is claimed.
    fn release(&self, _: &[DeliveryId]) -> Result<()> {
        Ok(())
    }
}

/// Several instances write the store: claims, tokens and pauses are the
/// store's [`Coordinator`].
pub(crate) struct Shared {
    store: Box<dyn Coordinator>,
}

impl Coordination for Shared {
    fn alone(&self) -> bool {
        false
    }

    fn tokens(&self, sub: SubscriptionId, want: usize, limit: RateLimit) -> Result<(usize, u64)> {
        self.store.take_tokens(sub, want, limit)
    }

    fn give_back(&self, sub: SubscriptionId, n: usize, limit: RateLimit) -> Result<()> {
        self.store.return_tokens(sub, n, limit)
    }

    /// Claims what is due and nobody else holds; never a second request for
    /// one of its own in flight (a claim of its own that ran out).
    fn take_due(
        &self,
        _: &Session,
        sub: SubscriptionId,
        room: usize,
        now: u64,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Vec<IndexEntry>> {
        let mut batch = self.store.claim(sub, room, now)?;
        batch.retain(|e| !busy(e.delivery));
        Ok(batch)
    }

    /// One claim for them all; claims of its own in flight are dropped.
    fn take_due_many(
        &self,
        _: &Session,
        wants: &[(SubscriptionId, usize)],
        now: u64,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Vec<(SubscriptionId, Vec<IndexEntry>)>> {
        let mut by_sub: std::collections::HashMap<SubscriptionId, Vec<IndexEntry>> =
            wants.iter().map(|&(sub, _)| (sub, Vec::new())).collect();
        for e in self.store.claim_many(wants, now)? {
            if !busy(e.delivery)
                && let Some(batch) = by_sub.get_mut(&e.subscription)
            {
                batch.push(e);
            }
        }
        Ok(wants
            .iter()
            .map(|&(sub, _)| {
                let mut batch = by_sub.remove(&sub).unwrap_or_default();
                batch.sort_by_key(|e| (e.at, e.delivery));
                (sub, batch)
            })
            .collect())
    }

    /// Claims within the shared tokens (one statement on PostgreSQL); a
    /// claim of its own in flight is dropped and its token given back.
    fn take_due_limited(
        &self,
        _: &Session,
        sub: SubscriptionId,
        room: usize,
        now: u64,
        limit: RateLimit,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Limited> {
        let mut batch = match self.store.claim_limited(sub, room, now, limit)? {
            Limited::Claimed(batch) => batch,
            wait @ Limited::Wait(_) => return Ok(wait),
        };
        let claimed = batch.len();
        batch.retain(|e| !busy(e.delivery));
        if batch.len() < claimed {
            self.give_back(sub, claimed - batch.len(), limit)?;
        }
        Ok(Limited::Claimed(batch))
    }

    fn take_head(&self, head: IndexEntry, _: u64) -> Result<Option<IndexEntry>> {
        self.store.claim_one(head.delivery)
    }

    fn pause(&self, sub: SubscriptionId, ms: u64) -> Result<()> {
        self.store.pause(sub, ms)
    }

    fn release(&self, ids: &[DeliveryId]) -> Result<()> {
        self.store.release(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ids::Timestamp;
    use crate::test_support;

    /// A sled session with one subscription and `n` deliveries due for it.
    fn backlog(dir: &std::path::Path, n: usize) -> (Session, SubscriptionId) {
        let mut s = test_support::sled_session(dir, Config::default());
        let sub = test_support::subscription(&["a"]);
        s.put_subscription(None, &sub);
        for _ in 0..n {
            s.publish(&test_support::event("a", "{}"), &[sub.id])
                .unwrap();
        }
        s.commit().unwrap();
        (s, sub.id)
    }

    #[test]
    fn alone_due_work_is_taken_in_order_up_to_the_room_skipping_busy_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (s, sub) = backlog(dir.path(), 5);
        let local = for_store(&s);
        assert!(local.alone());
        let now = Timestamp::now().as_millis() + 1;
        let idle = |_: DeliveryId| false;
        let Take::Entries(all) = take(&*local, &s, sub, None, None, 10, now, &idle) else {
            panic!("entries expected")
        };
        assert_eq!(all.len(), 5);
        let Take::Entries(two) = take(&*local, &s, sub, None, None, 2, now, &idle) else {
            panic!("entries expected")
        };
        assert_eq!(two, all[..2]);
        let first = all[0].delivery;
        let busy = move |d: DeliveryId| d == first;
        let Take::Entries(two) = take(&*local, &s, sub, None, None, 2, now, &busy) else {
            panic!("entries expected")
        };
        assert_eq!(two, all[1..3], "a delivery in flight is not taken twice");
        // A rate limit is the dispatcher's own bucket: nothing outside.
        let rate = Some(RateLimit::per_second(1));
        let Take::Entries(head) = take(&*local, &s, sub, rate, Some(all[3]), 9, now, &idle) else {
            panic!("entries expected")
        };
        assert_eq!(head, [all[3]], "a FIFO head goes alone");
        // Nothing is due before its time.
        let before = now - 60_000;
        let Take::Entries(none) = take(&*local, &s, sub, None, None, 9, before, &idle) else {
            panic!("entries expected")
        };
        assert!(none.is_empty());
    }
}
