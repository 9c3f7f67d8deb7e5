//! The storage seam: what the engine needs from a store, as two traits.
//!
//! * [`Reader`] — cloneable (`Arc<dyn Reader>`), used by every handle for
//!   subscriptions and outbox queries, and by the engine for lookups.
//! * [`Writer`] — the one writer, not `Clone`, created once by a backend's
//!   `open` and moved onto the engine thread: writing from anywhere else
//!   does not type-check. Writes are staged and become visible together at
//!   [`Writer::commit`] (one atomic round), durable at [`Writer::flush`].
//!
//! The traits speak in domain terms (a delivery moves from one state to
//! another, an event with its reference count, a damaged record moved
//! aside), never in keys: a backend keeps its own indexes in step. Orders
//! are semantic (soonest due first, finish time, creation time), not a key
//! order, and nothing assumes one process.
//! * [`Coordinator`] — what the instances sharing a store coordinate
//!   through (claims on due work, a rate limit's tokens, a receiver's
//!   pause), from [`Writer::coordinator`]. A store one instance writes has
//!   none: the engine then coordinates with itself. Readers never write.
//!
//! [`sled`] is the embedded backend, in-process.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod records;
pub(crate) mod sled;

use std::fmt;

use crate::delivery::{Delivery, DeliveryState};
use crate::error::Result;
use crate::health::{HealthDelta, HealthRecord};
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId};
use crate::notice::Notice;
use crate::policy::RateLimit;
use crate::record::{Attempt, Event, OutboxStats};

#[cfg(feature = "postgres")]
pub(crate) use records::EventV3;
pub(crate) use records::{
    Damaged, IndexEntry, StoredDelivery, StoredDeliveryRef, Subscribers, SubscriptionRecord,
};

/// A boxed, sendable iterator of fallible items.
pub(crate) type Iter<T> = Box<dyn Iterator<Item = Result<T>> + Send>;

/// Every subscription with pending deliveries and when its soonest is due
/// (ms), plus index entries found damaged on the way.
pub(crate) type PendingSubscriptions = (Vec<(SubscriptionId, u64)>, Vec<Damaged>);

/// Reads. Every handle holds one; they see what the writer committed.
pub(crate) trait Reader: Send + Sync + fmt::Debug {
    /// Counters by state, as of the last commit.
    fn stats(&self) -> Result<OutboxStats>;
    /// Pending deliveries, as of the last commit (what other instances of
    /// a shared store did included): `stats().pending`, or a cheaper count.
    fn pending(&self) -> Result<u64> {
        Ok(self.stats()?.pending)
    }
    fn subscription(&self, id: SubscriptionId) -> Result<Option<SubscriptionRecord>>;
    /// The subscriptions of `ids` that exist and read well, in no set
    /// order (one whose record is damaged is left out: a look at it alone
    /// reports it). By default one look each; a store with round trips
    /// reads them all at once.
    fn subscriptions_of(&self, ids: &[SubscriptionId]) -> Result<Vec<SubscriptionRecord>> {
        Ok(ids
            .iter()
            .filter_map(|&id| self.subscription(id).ok().flatten())
            .collect())
    }
    /// Every subscription, in id (= creation time) order.
    fn subscriptions(&self) -> Iter<SubscriptionRecord>;
    /// The subscriptions of one tenant or owner ([`SubscriptionsBy`]), in
    /// id order, after `after`, at most `limit`: read through an index, so
    /// the work follows what is listed, not how many subscriptions the
    /// store holds. An index entry whose record is gone or no longer
    /// matches is skipped; a record that does not decode is an error.
    fn subscriptions_by(
        &self,
        by: SubscriptionsBy<'_>,
        after: Option<SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<SubscriptionRecord>>;
    /// One tenant's subscriptions in id order, after `after`, at most
    /// `limit` ([`subscriptions_by`](Self::subscriptions_by)).
    fn tenant_subscriptions(
        &self,
        tenant: &str,
        after: Option<SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<SubscriptionRecord>> {
        self.subscriptions_by(SubscriptionsBy::Tenant(Some(tenant)), after, limit)
    }
    /// The subscriptions indexed under `event` or `*`, each once, in id
    /// order (active or not: the caller checks).
    fn subscribers_of(&self, event: &str) -> Result<Subscribers>;
    /// [`subscribers_of`](Self::subscribers_of) for each of `events`, in
    /// their order, all in one read; `None` where the store has no such
    /// read (a look each is then as cheap). A shared store's engine reads
    /// its whole fan-out cache afresh with it at each poll, instead of one
    /// round trip per event name at the next publish of each.
    fn subscribers_of_each(&self, _events: &[&str]) -> Result<Option<Vec<Subscribers>>> {
        Ok(None)
    }
    fn event(&self, id: EventId) -> Result<Option<Event>>;
    /// How many deliveries refer to an event (`None`: not counted, keep it).
    fn event_refs(&self, id: EventId) -> Result<Option<u32>>;
    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>>;
    /// Every delivery in creation order, starting after `after`.
    fn deliveries(&self, after: Option<DeliveryId>) -> Iter<Delivery>;
    /// The ids of one subscription's deliveries, oldest or newest first.
    fn deliveries_of(&self, sub: SubscriptionId, newest_first: bool) -> Iter<DeliveryId>;
    /// The ids of one subscription's deliveries strictly before `before`
    /// (all of them with `None`), newest first.
    fn deliveries_of_before(
        &self,
        sub: SubscriptionId,
        before: Option<DeliveryId>,
    ) -> Iter<DeliveryId>;
    /// Up to `limit` deliveries of any of `subs`, newest first, strictly
    /// before `before`, in one read where the store can; `None` where it
    /// cannot (the caller then merges each subscription's
    /// [`deliveries_of_before`](Reader::deliveries_of_before)).
    fn deliveries_of_many_before(
        &self,
        _subs: &[SubscriptionId],
        _before: Option<DeliveryId>,
        _limit: usize,
    ) -> Result<Option<Vec<Delivery>>> {
        Ok(None)
    }
    /// The ids of one subscription's deliveries from `from` on (itself
    /// included, if it exists), oldest first.
    fn deliveries_of_from(&self, sub: SubscriptionId, from: DeliveryId) -> Iter<DeliveryId>;
    /// A state index (pending: by subscription, then due time; delivered and
    /// dead: by finish time), starting after `after`.
    fn index(&self, state: DeliveryState, after: Option<IndexEntry>) -> Iter<IndexEntry>;
    /// The pending deliveries of one subscription, soonest due first.
    fn due(&self, sub: SubscriptionId) -> Iter<IndexEntry>;
    /// When the soonest pending delivery of each of `subs` is due (ms);
    /// one without any is left out. By default a look at [`due`](Self::due)
    /// each; a store with round trips reads them all at once. A shared
    /// store leaves out what this instance holds a claim on (it is being
    /// sent; its outcome is a change of its own).
    fn next_due(&self, subs: &[SubscriptionId]) -> Result<Vec<(SubscriptionId, u64)>> {
        let mut out = Vec::new();
        for &sub in subs {
            if let Some(e) = self.due(sub).next().transpose()? {
                out.push((sub, e.at));
            }
        }
        Ok(out)
    }
    /// Every subscription with pending deliveries and when its soonest is
    /// due, plus entries found damaged on the way.
    fn pending_subscriptions(&self) -> Result<PendingSubscriptions>;
    /// The attempts of a delivery, in order.
    fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>>;
    /// The event an idempotency key was first used for, and when (ms).
    fn idempotency_key(&self, key: &str) -> Result<Option<(EventId, u64)>>;
    /// Idempotency keys used before `before` (ms), oldest first: the key
    /// and when it was used.
    fn idempotency_keys_before(&self, before: u64) -> Iter<(String, u64)>;
    /// The last sequence number given to a delivery of `sub` (0: none).
    fn sequence(&self, sub: SubscriptionId) -> Result<u64>;
    /// Records moved aside as damaged: their original key and raw bytes.
    fn quarantined(&self) -> Iter<(Vec<u8>, Vec<u8>)>;
    /// The store's size on disk, in bytes.
    fn size_on_disk(&self) -> Result<u64>;
    /// A subscription's health, if anything was recorded.
    fn health(&self, sub: SubscriptionId) -> Result<Option<HealthRecord>>;
    /// The health of each of `subs` that has any recorded (one whose
    /// record is damaged is left out: a look at it alone reports it). By
    /// default one look each; a store with round trips reads them all at
    /// once.
    fn healths_of(&self, subs: &[SubscriptionId]) -> Result<Vec<(SubscriptionId, HealthRecord)>> {
        let mut out = Vec::with_capacity(subs.len());
        for &sub in subs {
            if let Ok(Some(h)) = self.health(sub) {
                out.push((sub, h));
            }
        }
        Ok(out)
    }
    /// How many pending deliveries a subscription has.
    fn backlog(&self, sub: SubscriptionId) -> Result<u64> {
        let mut n = 0u64;
        for e in self.due(sub) {
            e?;
            n += 1;
        }
        Ok(n)
    }
    /// Unacknowledged notices, oldest first.
    fn notices(&self) -> Iter<Notice>;
    /// How many records (subscriptions, deliveries, attempts, events) this
    /// reader and its clones decoded so far: a measure of work for tests
    /// that show a read is bounded. The engine's own reads are not
    /// counted here (its reader has a count of its own).
    fn records_decoded(&self) -> u64;
}

/// Which subscriptions [`Reader::subscriptions_by`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscriptionsBy<'a> {
    /// A tenant's (`None`: the app-wide ones, without a tenant).
    Tenant(Option<&'a str>),
    /// An owner's, in any tenant.
    Owner(&'a str),
}

impl SubscriptionsBy<'_> {
    /// Whether `rec` is one of those listed.
    pub(crate) fn matches(&self, rec: &SubscriptionRecord) -> bool {
        match *self {
            SubscriptionsBy::Tenant(t) => rec.tenant.as_deref() == t,
            SubscriptionsBy::Owner(o) => rec.owner.as_deref() == Some(o),
        }
    }
}

/// A count of decoded records, shared by a reader and its clones.
#[derive(Debug, Default, Clone)]
pub(crate) struct DecodeCount(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl DecodeCount {
    /// Counts `n` more.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The count so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the instances sharing a store coordinate through. Due work is
/// claimed: a claimed delivery is this instance's until its lease runs out
/// or its result is written. Timed by the store's clock, which every
/// instance shares.
pub(crate) trait Coordinator: Send {
    /// Claims for this instance up to `n` pending deliveries of `sub` due
    /// by `due_by` (ms) that nobody holds a claim on.
    fn claim(&self, sub: SubscriptionId, n: usize, due_by: u64) -> Result<Vec<IndexEntry>>;

    /// [`claim`](Self::claim) for several subscriptions at once: up to `n`
    /// of each `(sub, n)` in `wants`, in one statement where the store can
    /// (by default one claim per subscription).
    fn claim_many(
        &self,
        wants: &[(SubscriptionId, usize)],
        due_by: u64,
    ) -> Result<Vec<IndexEntry>> {
        let mut out = Vec::new();
        for &(sub, n) in wants {
            out.extend(self.claim(sub, n, due_by)?);
        }
        Ok(out)
    }

    /// Claims one pending delivery (a FIFO queue's head); `None` if it is
    /// not pending, held by another instance, or a receiver's pause holds
    /// its subscription back.
    fn claim_one(&self, id: DeliveryId) -> Result<Option<IndexEntry>>;

    /// Takes up to `want` request tokens of `sub`'s rate limit, shared by
    /// every instance, unless a receiver's pause holds it: how many were
    /// granted, and when none, how many ms until one may be.
    fn take_tokens(
        &self,
        sub: SubscriptionId,
        want: usize,
        limit: RateLimit,
    ) -> Result<(usize, u64)>;

    /// Gives back tokens taken but not used (fewer deliveries were due).
    fn return_tokens(&self, sub: SubscriptionId, n: usize, limit: RateLimit) -> Result<()>;

    /// Pauses `sub` for every instance for `for_ms` (a receiver said
    /// "slow down"): claims take none of its deliveries meanwhile.
    fn pause(&self, sub: SubscriptionId, for_ms: u64) -> Result<()>;

    /// Gives up this instance's claims on these deliveries, which it took
    /// but will not send (they are due for every instance again at once).
    /// Only for deliveries not handed to a sender: a result written later
    /// under a claim given up is dropped.
    fn release(&self, ids: &[DeliveryId]) -> Result<()>;

    /// [`claim`](Self::claim) within `sub`'s rate limit, shared by every
    /// instance: the tokens of what it claimed are spent, none for what it
    /// did not. In one statement where the store can; by default tokens,
    /// then a claim, then the unused tokens back.
    fn claim_limited(
        &self,
        sub: SubscriptionId,
        n: usize,
        due_by: u64,
        limit: RateLimit,
    ) -> Result<Limited> {
        let (granted, wait) = self.take_tokens(sub, n, limit)?;
        if granted == 0 {
            return Ok(Limited::Wait(wait));
        }
        let claimed = self.claim(sub, granted, due_by)?;
        let unused = granted.saturating_sub(claimed.len());
        if unused > 0 {
            self.return_tokens(sub, unused, limit)?;
        }
        Ok(Limited::Claimed(claimed))
    }
}

/// What a claim within a rate limit got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Limited {
    /// These deliveries are this instance's to send (maybe none: nothing
    /// was due).
    Claimed(Vec<IndexEntry>),
    /// No token is left, or a receiver's pause holds the subscription:
    /// none may start for this many ms.
    Wait(u64),
}

/// The one writer: stages writes, commits them as one atomic round.
///
/// Reads through [`Writer::reader`] see committed state only; the engine's
/// write session keeps track of what it staged itself.
pub(crate) trait Writer: Send + fmt::Debug {
    fn reader(&self) -> &dyn Reader;
    /// How this instance coordinates with the others sharing the store
    /// (`None`: it writes the store alone).
    fn coordinator(&self) -> Option<Box<dyn Coordinator>> {
        None
    }
    /// Whether the store numbers new deliveries itself when it commits
    /// them (several instances number: a new delivery is staged with
    /// sequence number 0); otherwise the engine numbers them.
    fn numbers_deliveries(&self) -> bool {
        false
    }
    /// Whether the store drops an event once no delivery refers to it
    /// (several instances remove deliveries at once); otherwise the engine
    /// counts each event's references.
    fn drops_unreferenced_events(&self) -> bool {
        false
    }
    /// Writes a subscription with its event-index entries (those of `old`
    /// that `new` no longer names go).
    fn put_subscription(&mut self, old: Option<&SubscriptionRecord>, new: &SubscriptionRecord);
    /// Removes a subscription, its index entries and its sequence counter.
    fn remove_subscription(&mut self, old: &SubscriptionRecord);
    /// Writes an event with the number of deliveries that refer to it.
    fn put_event(&mut self, event: &Event, refs: u32);
    fn set_event_refs(&mut self, id: EventId, refs: u32);
    fn remove_event(&mut self, id: EventId);
    /// Removes events created before `before_ms` that no delivery refers
    /// to (a shared store's purges can leave some when instances remove an
    /// event's deliveries at once). A no-op where references are counted
    /// exactly (sled).
    fn sweep_orphan_events(&mut self, _before_ms: u64) {}
    /// Writes a delivery; `old` is the record as committed (or staged)
    /// before, so its state-index entry can be replaced. A shared store
    /// numbers a new delivery with sequence number 0 when it commits it,
    /// in the order the round made them.
    fn put_delivery(&mut self, old: Option<&Delivery>, new: &Delivery);
    /// Writes an attempt's outcome. A shared store writes it only while
    /// this instance's claim on the delivery stands (a late result from a
    /// claim another instance took over changes nothing).
    fn put_outcome(&mut self, old: &Delivery, new: &Delivery) {
        self.put_delivery(Some(old), new);
    }
    /// Removes a finished delivery, its index entries and its attempts.
    fn remove_delivery(&mut self, old: &Delivery) -> Result<()>;
    /// Writes an attempt of a delivery. The engine always writes the
    /// delivery (its outcome) next, in the same round, so a store may keep
    /// the attempt with that record (sled since format 5: the newest
    /// attempt, staged until the record is written).
    /// Fails only if a stored record had to be read and could not be.
    fn put_attempt(&mut self, id: DeliveryId, attempt: &Attempt) -> Result<()>;
    /// Removes attempt number `n` of a delivery (kept attempts are
    /// bounded), if it is there; never the newest.
    fn remove_attempt(&mut self, id: DeliveryId, n: u32);
    /// Merges what happened to a subscription's health into its stored
    /// record (at most once per subscription per commit).
    fn merge_health(&mut self, sub: SubscriptionId, delta: &HealthDelta) -> Result<()>;
    fn put_notice(&mut self, notice: &Notice);
    fn remove_notice(&mut self, id: NoticeId);
    fn put_stats(&mut self, stats: &OutboxStats);
    /// Stages a write that proves the store takes writes (a health probe);
    /// by default the counters rewritten with it are that write.
    fn probe(&mut self) {}
    /// Records that `key` was used for `event` at `at` (ms), replacing an
    /// older use `old_at` of the same key.
    fn put_idempotency_key(&mut self, key: &str, event: EventId, at: u64, old_at: Option<u64>);
    /// Forgets the use of `key` at `at` (its entry by age), and with
    /// `record` the key itself.
    fn remove_idempotency_key(&mut self, key: &str, at: u64, record: bool);
    /// Records the last sequence number given to a delivery of `sub`.
    fn put_sequence(&mut self, sub: SubscriptionId, last: u64);
    /// Moves a delivery record that fails to decode aside and drops the
    /// index entry that led to it.
    fn quarantine_delivery(&mut self, state: DeliveryState, entry: IndexEntry) -> Result<()>;
    /// Moves a damaged record or index entry aside.
    fn quarantine_raw(&mut self, damaged: &Damaged) -> Result<()>;
    /// Drops a state-index entry that leads to no usable delivery.
    fn remove_index_entry(&mut self, state: DeliveryState, entry: IndexEntry);
    /// Holds the store's subscription lock until
    /// [`release_locks`](Writer::release_locks): on a shared store every
    /// instance's changes of subscriptions then run one at a time, each
    /// reading what the one before committed (no lost update, no two
    /// instances creating the same subscription). A no-op where this
    /// writer is the only one (sled). The engine takes it at most once per
    /// commit and releases it after the commit.
    fn lock_subscriptions(&mut self) -> Result<()> {
        Ok(())
    }
    /// Takes the lock of idempotency key `key` if no other writer holds
    /// it, without waiting; held until [`release_locks`]. Always `true`
    /// where this writer is the only one.
    ///
    /// [`release_locks`]: Writer::release_locks
    fn try_lock_key(&mut self, _key: &str) -> Result<bool> {
        Ok(true)
    }
    /// Releases every lock taken since the last commit (after the commit
    /// that holds the changes, or after a failed one); called after every
    /// commit, so a writer that holds none returns at once.
    fn release_locks(&mut self) {}
    /// On a store several instances share: claims for this instance, as
    /// they are stored, the new pending deliveries staged for this commit
    /// that `choose` picks (asked once for each, in the order they were
    /// staged), so the dispatcher sends them without claiming them again.
    /// What was claimed comes from [`take_new_claims`] after the commit. A
    /// no-op where this writer is the only one.
    ///
    /// [`take_new_claims`]: Writer::take_new_claims
    fn claim_new(&mut self, _choose: &mut dyn FnMut(&Delivery) -> bool) {}
    /// The new deliveries the last commit stored claimed for this
    /// instance (see [`claim_new`](Writer::claim_new)): none after a
    /// failed commit, and none of a subscription a receiver's pause holds
    /// back. Their records are kept for the dispatcher's next read.
    fn take_new_claims(&mut self) -> Vec<IndexEntry> {
        Vec::new()
    }
    /// How many writes are staged.
    fn staged(&self) -> usize;
    /// Applies what is staged, atomically. On error nothing of it applies.
    fn commit(&mut self) -> Result<()>;
    /// Makes everything committed so far durable.
    fn flush(&mut self) -> Result<()>;
}
