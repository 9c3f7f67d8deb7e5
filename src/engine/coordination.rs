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
use crate::storage::IndexEntry;

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
    fn tokens(
        &self,
        s: &Session,
        sub: SubscriptionId,
        want: usize,
        limit: RateLimit,
    ) -> Result<(usize, u64)>;

    /// Gives back `n` tokens taken with [`tokens`](Self::tokens) but not
    /// used.
    fn give_back(&self, s: &Session, sub: SubscriptionId, n: usize, limit: RateLimit)
    -> Result<()>;

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

    /// `head` (a FIFO queue's head) for this instance to send; `None` if
    /// another instance sends it, or a receiver's pause holds it back.
    fn take_head(&self, s: &Session, head: IndexEntry, now: u64) -> Result<Option<IndexEntry>>;

    /// A receiver asked `sub` to slow down for `ms`: tell whoever else
    /// sends its deliveries.
    fn pause(&self, s: &Session, sub: SubscriptionId, ms: u64) -> Result<()>;
}

/// The coordination a store needs (see the module docs).
pub(crate) fn for_store(s: &Session) -> Box<dyn Coordination> {
    if s.reader().shared() {
        Box::new(Shared)
    } else {
        Box::new(Local {
            horizon: delivery::due_horizon(&s.config.retry_schedule),
        })
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
    fn tokens(
        &self,
        _: &Session,
        _: SubscriptionId,
        want: usize,
        _: RateLimit,
    ) -> Result<(usize, u64)> {
        Ok((want, 0))
    }

    fn give_back(&self, _: &Session, _: SubscriptionId, _: usize, _: RateLimit) -> Result<()> {
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

    fn take_head(&self, _: &Session, head: IndexEntry, _: u64) -> Result<Option<IndexEntry>> {
        Ok(Some(head))
    }

    /// The dispatcher's own flow holds the pause.
    fn pause(&self, _: &Session, _: SubscriptionId, _: u64) -> Result<()> {
        Ok(())
    }
}

/// Several instances write the store: claims, tokens and pauses are the
/// store's.
pub(crate) struct Shared;

impl Coordination for Shared {
    fn alone(&self) -> bool {
        false
    }

    fn tokens(
        &self,
        s: &Session,
        sub: SubscriptionId,
        want: usize,
        limit: RateLimit,
    ) -> Result<(usize, u64)> {
        s.reader().take_tokens(sub, want, limit)
    }

    fn give_back(
        &self,
        s: &Session,
        sub: SubscriptionId,
        n: usize,
        limit: RateLimit,
    ) -> Result<()> {
        s.reader().return_tokens(sub, n, limit)
    }

    /// Claims what is due and nobody else holds; never a second request for
    /// one of its own in flight (a claim of its own that ran out).
    fn take_due(
        &self,
        s: &Session,
        sub: SubscriptionId,
        room: usize,
        now: u64,
        busy: &dyn Fn(DeliveryId) -> bool,
    ) -> Result<Vec<IndexEntry>> {
        let mut batch = s.reader().claim(sub, room, now, now)?;
        batch.retain(|e| !busy(e.delivery));
        Ok(batch)
    }

    fn take_head(&self, s: &Session, head: IndexEntry, now: u64) -> Result<Option<IndexEntry>> {
        s.reader().claim_one(head.delivery, now)
    }

    fn pause(&self, s: &Session, sub: SubscriptionId, ms: u64) -> Result<()> {
        s.reader().pause(sub, ms)
    }
}
