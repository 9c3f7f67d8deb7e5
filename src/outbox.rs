//! The outbox: deliveries by state, their attempts, and the dead letter
//! queue.

use std::sync::Arc;

use crate::delivery::{Delivery, DeliveryState};
use crate::engine::Engine;
use crate::engine::maintenance::Job;
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId, Timestamp};
use crate::notice::Notice;
use crate::record::{Attempt, Event, OutboxStats};
use crate::storage::{IndexEntry, Iter, Reader, SubscriptionRecord};

/// The longest span [`Outbox::replay_since`] replays at once (14 days, as
/// Svix).
pub const MAX_REPLAY_SPAN: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// The delivery outbox of a [`Bus`](crate::Bus): see
/// [`Bus::outbox`](crate::Bus::outbox).
///
/// Every listing is a lazy [`Deliveries`] iterator over the store: it holds
/// one record at a time, so a large outbox is never loaded into memory.
/// Take what you need (`.take(50)`) and resume after the last delivery of
/// a page by its id (`*_after(.., last.id)`): one kind of cursor for every
/// listing.
///
/// Its `Debug` shows nothing of the store: `Outbox { .. }`.
#[derive(Clone, Copy)]
pub struct Outbox<'a> {
    engine: &'a Engine,
}

impl std::fmt::Debug for Outbox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

/// A lazy listing of deliveries (see [`Outbox`] for the orders).
pub struct Deliveries {
    inner: Box<dyn Iterator<Item = Result<Delivery>> + Send>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries").finish_non_exhaustive()
    }
}

impl Iterator for Deliveries {
    type Item = Result<Delivery>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl Deliveries {
    fn new(inner: impl Iterator<Item = Result<Delivery>> + Send + 'static) -> Self {
        Deliveries {
            inner: Box::new(inner),
        }
    }

    fn failed(e: Error) -> Self {
        Deliveries::new(std::iter::once(Err(e)))
    }

    /// The deliveries an index lists that are (still) in `state`.
    fn of_index(reader: Arc<dyn Reader>, state: DeliveryState, entries: Iter<IndexEntry>) -> Self {
        Deliveries::new(entries.filter_map(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            match reader.delivery(entry.delivery) {
                // The index and the record are written in one batch; a
                // mismatch means it changed state since the listing began.
                Ok(Some(d)) if d.state == state => Some(Ok(d)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }
}

/// A recount walks the outbox at most this many times (see
/// [`Outbox::recount`]).
const RECOUNT_WALKS: u32 = 3;

/// One walk of [`Outbox::recount`].
fn recount_once(reader: &dyn Reader) -> Result<OutboxStats> {
    let mut counted = OutboxStats {
        quarantined: reader.stats()?.quarantined,
        ..OutboxStats::default()
    };
    let mut by_id = std::collections::HashMap::new();
    for d in reader.deliveries(None) {
        let d = d?;
        match d.state {
            DeliveryState::Pending => counted.pending += 1,
            DeliveryState::Delivered => counted.delivered += 1,
            DeliveryState::Dead => counted.dead += 1,
        }
        by_id.insert(d.id, IndexEntry::of(&d));
    }
    let mut seen = std::collections::HashSet::new();
    for state in [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Dead,
    ] {
        for entry in reader.index(state, None) {
            let entry = entry?;
            let fits = reader
                .delivery(entry.delivery)?
                .is_some_and(|d| d.state == state && IndexEntry::of(&d) == entry);
            if !fits || !seen.insert(entry.delivery) {
                return Err(Error::Inconsistent(format!(
                    "the {state} index lists delivery {} at {} but its record does not match (or it is listed twice)",
                    entry.delivery, entry.at
                )));
            }
        }
    }
    if let Some(id) = by_id.keys().find(|id| !seen.contains(*id)) {
        return Err(Error::Inconsistent(format!(
            "delivery {id} is in no state index"
        )));
    }
    Ok(counted)
}

impl<'a> Outbox<'a> {
    pub(crate) fn new(engine: &'a Engine) -> Self {
        Outbox { engine }
    }

    fn reader(&self) -> Result<Arc<dyn Reader>> {
        self.engine.reader()
    }

    /// Counts of deliveries by state, as of the dispatcher's last write.
    pub fn stats(&self) -> Result<OutboxStats> {
        self.reader()?.stats()
    }

    /// Counts deliveries by state from the records themselves, and checks
    /// each state index against them (every delivery has exactly one entry,
    /// in the index of its state). Walks the whole outbox: for audits and
    /// tests, not for dashboards ([`stats`](Outbox::stats) is cheap).
    /// `quarantined` is taken from the stored counters.
    ///
    /// Errors with [`Error::Inconsistent`] when an index disagrees with
    /// the records. The walk is not a snapshot: on a busy outbox a
    /// delivery the engine changes between reading its index entry and its
    /// record looks like a disagreement, so a disagreement is reported
    /// only if the walk, done again, meets one each time (three walks).
    pub fn recount(&self) -> Result<OutboxStats> {
        let reader = self.reader()?;
        let mut walks = 1;
        loop {
            match recount_once(&*reader) {
                Err(Error::Inconsistent(m)) if walks < RECOUNT_WALKS => {
                    tracing::debug!(disagreement = %m, "recount walks again");
                    walks += 1;
                }
                r => return r,
            }
        }
    }

    /// Pending deliveries, by subscription and then soonest due first.
    pub fn pending(&self) -> Deliveries {
        self.list(DeliveryState::Pending)
    }

    /// Dead deliveries (the dead letter queue), oldest first.
    pub fn dead(&self) -> Deliveries {
        self.list(DeliveryState::Dead)
    }

    /// Delivered deliveries, oldest first.
    pub fn delivered(&self) -> Deliveries {
        self.list(DeliveryState::Delivered)
    }

    /// Deliveries in `state`: pending by subscription and then due time,
    /// delivered and dead by finish time.
    pub fn list(&self, state: DeliveryState) -> Deliveries {
        match self.reader() {
            Ok(r) => {
                let entries = r.index(state, None);
                Deliveries::of_index(r, state, entries)
            }
            Err(e) => Deliveries::failed(e),
        }
    }

    /// Deliveries in `state` that come after delivery `cursor` (the last of
    /// the previous page) in [`list`](Outbox::list) order. If the cursor
    /// delivery has left `state` meanwhile, the listing yields one
    /// [`Error::DeliveryNotFound`]-style error: list again from the start.
    pub fn list_after(&self, state: DeliveryState, cursor: DeliveryId) -> Deliveries {
        let r = match self.reader() {
            Ok(r) => r,
            Err(e) => return Deliveries::failed(e),
        };
        match r.delivery(cursor) {
            Ok(Some(d)) if d.state == state => {
                let entries = r.index(state, Some(IndexEntry::of(&d)));
                Deliveries::of_index(r, state, entries)
            }
            Ok(Some(d)) => Deliveries::failed(Error::CursorMoved {
                id: cursor,
                state: d.state,
            }),
            Ok(None) => Deliveries::failed(Error::DeliveryNotFound(cursor)),
            Err(e) => Deliveries::failed(e),
        }
    }

    /// Every delivery, in creation order, whatever its state.
    pub fn all(&self) -> Deliveries {
        match self.reader() {
            Ok(r) => Deliveries::new(r.deliveries(None)),
            Err(e) => Deliveries::failed(e),
        }
    }

    /// Every delivery created after `cursor` (the last one of the previous
    /// page), in creation order: a seek, not a scan from the start.
    pub fn all_after(&self, cursor: DeliveryId) -> Deliveries {
        match self.reader() {
            Ok(r) => Deliveries::new(r.deliveries(Some(cursor))),
            Err(e) => Deliveries::failed(e),
        }
    }

    /// The deliveries of one subscription, in creation order or newest
    /// first.
    pub fn for_subscription(&self, subscription: SubscriptionId, newest_first: bool) -> Deliveries {
        let r = match self.reader() {
            Ok(r) => r,
            Err(e) => return Deliveries::failed(e),
        };
        let ids = r.deliveries_of(subscription, newest_first);
        Deliveries::new(ids.filter_map(move |id| match id {
            Ok(id) => r.delivery(id).transpose(),
            Err(e) => Some(Err(e)),
        }))
    }

    /// One page's worth of a subscription's deliveries, newest first:
    /// those created strictly before delivery `before` (the last one of
    /// the previous page; `None` to start from the newest). A seek in the
    /// store's index of the subscription's deliveries, then one record per
    /// delivery taken: take what a page needs (`.take(50)`), the work
    /// follows what is taken, not the subscription's backlog.
    ///
    /// The cursor need not exist any more (a purged delivery still marks
    /// its place).
    pub fn for_subscription_before(
        &self,
        subscription: SubscriptionId,
        before: Option<DeliveryId>,
    ) -> Deliveries {
        let r = match self.reader() {
            Ok(r) => r,
            Err(e) => return Deliveries::failed(e),
        };
        let ids = r.deliveries_of_before(subscription, before);
        Deliveries::new(ids.filter_map(move |id| match id {
            Ok(id) => r.delivery(id).transpose(),
            Err(e) => Some(Err(e)),
        }))
    }

    /// The deliveries of several subscriptions, newest first across them,
    /// strictly before `before` (a tenant's delivery log): on PostgreSQL a
    /// page of them per query, elsewhere each subscription's newest-first
    /// listing merged.
    pub fn for_subscriptions_before(
        &self,
        subscriptions: &[SubscriptionId],
        before: Option<DeliveryId>,
    ) -> Deliveries {
        /// Deliveries per query where the store reads several
        /// subscriptions at once.
        const BATCH: usize = 128;
        let r = match self.reader() {
            Ok(r) => r,
            Err(e) => return Deliveries::failed(e),
        };
        let subs = subscriptions.to_vec();
        match r.deliveries_of_many_before(&subs, before, BATCH) {
            Err(e) => Deliveries::failed(e),
            Ok(Some(first)) => {
                let mut page = first.into_iter();
                let mut done = page.len() < BATCH;
                let mut last = before;
                Deliveries::new(std::iter::from_fn(move || {
                    if let Some(d) = page.next() {
                        last = Some(d.id);
                        return Some(Ok(d));
                    }
                    if done {
                        return None;
                    }
                    match r.deliveries_of_many_before(&subs, last, BATCH) {
                        Ok(Some(next)) => {
                            done = next.len() < BATCH;
                            page = next.into_iter();
                            let d = page.next()?;
                            last = Some(d.id);
                            Some(Ok(d))
                        }
                        Ok(None) => None,
                        Err(e) => {
                            done = true;
                            Some(Err(e))
                        }
                    }
                }))
            }
            Ok(None) => {
                let mut streams: Vec<std::iter::Peekable<Deliveries>> = subs
                    .iter()
                    .map(|s| self.for_subscription_before(*s, before).peekable())
                    .collect();
                Deliveries::new(std::iter::from_fn(move || {
                    // The newest head among the streams (an error first).
                    let mut best: Option<(usize, Option<DeliveryId>)> = None;
                    for (i, st) in streams.iter_mut().enumerate() {
                        match st.peek() {
                            None => {}
                            Some(Err(_)) => {
                                best = Some((i, None));
                                break;
                            }
                            Some(Ok(d))
                                if best.is_none_or(|(_, b)| b.is_some_and(|b| d.id > b)) =>
                            {
                                best = Some((i, Some(d.id)));
                            }
                            Some(Ok(_)) => {}
                        }
                    }
                    streams[best?.0].next()
                }))
            }
        }
    }

    /// One delivery.
    pub fn get(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        self.reader()?.delivery(id)
    }

    /// The stored event (name and exact JSON body) of a delivery.
    pub fn event(&self, id: EventId) -> Result<Option<Event>> {
        self.reader()?.event(id)
    }

    /// Every attempt of a delivery, oldest first.
    pub fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>> {
        self.reader()?.attempts(id)
    }

    /// A delivery and its attempts as they were at one moment: never a
    /// delivery still pending beside the attempt that delivered it. The two
    /// are stored together but read apart, so the delivery is read again
    /// after its attempts, and both again if an outcome was recorded in
    /// between (a few times at most; a delivery changes once per attempt).
    /// `None` for an unknown id.
    pub fn get_with_attempts(&self, id: DeliveryId) -> Result<Option<(Delivery, Vec<Attempt>)>> {
        const TRIES: usize = 8;
        let reader = self.reader()?;
        let Some(mut before) = reader.delivery(id)? else {
            return Ok(None);
        };
        for _ in 0..TRIES {
            let attempts = reader.attempts(id)?;
            match reader.delivery(id)? {
                Some(after) if after == before => return Ok(Some((after, attempts))),
                Some(after) => before = after,
                // Removed meanwhile (retention).
                None => return Ok(None),
            }
        }
        // Still changing: the newest delivery with the attempts read after
        // it (they may include one more than it counts).
        let attempts = reader.attempts(id)?;
        Ok(Some((before, attempts)))
    }

    /// Makes a dead delivery due now, for one more attempt (if that fails
    /// too it returns to the dead letter queue). Errors with
    /// [`Error::NotDead`] for other states and
    /// [`Error::DeliveryNotFound`] for unknown ids.
    pub fn retry(&self, id: DeliveryId) -> Result<Delivery> {
        self.engine.write(move |s| {
            let old = s.delivery(id)?.ok_or(Error::DeliveryNotFound(id))?;
            if old.state != DeliveryState::Dead {
                return Err(Error::NotDead {
                    id,
                    state: old.state,
                });
            }
            Ok(s.revive(&old))
        })
    }

    /// Makes every dead delivery due now (of one subscription, or of all
    /// with `None`). Returns how many. Deliveries of a deleted
    /// subscription die again at once; those of an inactive one wait until
    /// it is enabled. Runs in chunks between the
    /// dispatcher's rounds, so publishing goes on meanwhile; a damaged
    /// record on the way is quarantined and skipped.
    pub fn retry_all_dead(&self, subscription: Option<SubscriptionId>) -> Result<u64> {
        self.engine.run_job(Job::retry_dead(subscription))
    }

    /// Removes delivered deliveries (and their attempts) that finished
    /// before `before`, and each event once its last delivery is gone.
    /// Returns how many deliveries. Runs in chunks like
    /// [`retry_all_dead`](Outbox::retry_all_dead).
    pub fn purge_delivered_before(&self, before: Timestamp) -> Result<u64> {
        self.engine
            .run_job(Job::purge_delivered(before.as_millis()))
    }

    /// Removes dead letters that died before `before` (with their attempts,
    /// and each event once its last delivery is gone), except one a FIFO
    /// subscription is halted at. Returns how many. Runs in chunks like
    /// [`retry_all_dead`](Outbox::retry_all_dead). (Retention does this by
    /// itself: [`Builder::keep_dead_for`](crate::Builder::keep_dead_for).)
    pub fn purge_dead_before(&self, before: Timestamp) -> Result<u64> {
        self.engine.run_job(Job::purge_dead(before.as_millis()))
    }

    /// Sends a stored event again, as new deliveries: to one subscription,
    /// or with `None` to every active subscription it reaches now (by
    /// event name and tenant, as when it was published). Returns the new
    /// deliveries' ids. They are pending like any other, with the
    /// subscription's next sequence numbers; the old ones are untouched.
    /// The receiver sees the same event id and body under a new delivery
    /// id (`X-Webhook-Delivery`), so it can tell a replay from a retry.
    ///
    /// An event is kept while one of its deliveries is (see
    /// [`Builder::keep_delivered_for`](crate::Builder::keep_delivered_for));
    /// one that reached no subscription was never stored.
    ///
    /// Errors: [`Error::EventNotFound`], [`Error::SubscriptionNotFound`],
    /// [`Error::InvalidReplay`] if the subscription does not take the event
    /// (another tenant's, or another event name) or the event was stored
    /// without its tenant (before record format 4).
    pub fn replay(
        &self,
        event: EventId,
        subscription: Option<SubscriptionId>,
    ) -> Result<Vec<DeliveryId>> {
        self.engine.write(move |s| {
            let app_events_to_tenants = s.config.tenants_receive_app_events;
            let e = s
                .reader()
                .event(event)?
                .ok_or(Error::EventNotFound(event))?;
            if e.scope_unknown {
                return Err(Error::InvalidReplay(format!(
                    "event {event} was stored before events kept their tenant; \
                     replay it per delivery with Outbox::replay_since"
                )));
            }
            // The fan-out rule; one subscription named on purpose may be
            // inactive (its replayed deliveries wait, as its others do).
            let takes = |r: &SubscriptionRecord| {
                r.names(&e.name) && r.reached_by(e.tenant.as_deref(), app_events_to_tenants)
            };
            let subs = match subscription {
                Some(id) => {
                    let r = s
                        .reader()
                        .subscription(id)?
                        .ok_or(Error::SubscriptionNotFound(id))?;
                    if !takes(&r) {
                        return Err(Error::InvalidReplay(format!(
                            "subscription {id} does not take event {event} (`{}`{})",
                            e.name,
                            e.tenant
                                .as_deref()
                                .map(|t| format!(", tenant `{t}`"))
                                .unwrap_or_default()
                        )));
                    }
                    vec![id]
                }
                None => {
                    let found = s.reader().subscribers_of(&e.name)?;
                    if !found.damaged.is_empty() {
                        s.quarantine(&found.damaged);
                    }
                    let mut subs = Vec::new();
                    for id in found.ids {
                        if let Some(r) = s.reader().subscription(id)?
                            && r.takes(&e.name, e.tenant.as_deref(), app_events_to_tenants)
                        {
                            subs.push(id);
                        }
                    }
                    subs
                }
            };
            s.replay(&e, &subs)
        })
    }

    /// Sends one delivery's event again to the same subscription, as a new
    /// pending delivery (numbered after the subscription's others); the old
    /// one is untouched. Unlike [`replay`](Self::replay) it does not ask
    /// whether the subscription's filter takes the event: it took it once
    /// (a test event, say). Returns the new delivery's id.
    ///
    /// Errors: [`Error::DeliveryNotFound`], [`Error::EventNotFound`] (its
    /// event is no longer kept), [`Error::SubscriptionNotFound`] (deleted
    /// since).
    pub fn resend(&self, delivery: DeliveryId) -> Result<DeliveryId> {
        self.engine.write(move |s| {
            let d = s
                .delivery(delivery)?
                .ok_or(Error::DeliveryNotFound(delivery))?;
            let e = s
                .reader()
                .event(d.event_id)?
                .ok_or(Error::EventNotFound(d.event_id))?;
            if s.subscription(d.subscription_id)?.is_none() {
                return Err(Error::SubscriptionNotFound(d.subscription_id));
            }
            let ids = s.replay(&e, &[d.subscription_id])?;
            ids.first()
                .copied()
                .ok_or(Error::SubscriptionNotFound(d.subscription_id))
        })
    }

    /// Sends again everything a subscription was sent or gave up on
    /// (delivered and dead deliveries) that was created from `from` until
    /// `until` — after a receiver lost data, say. Pending deliveries in the
    /// span are left alone: they are still to be sent. Returns how many
    /// new deliveries were made. Runs as a background job in chunks between
    /// the dispatcher's rounds (publishing goes on), oldest first; the
    /// call returns when it is done. `until` later than now counts as now.
    ///
    /// Errors: [`Error::InvalidReplay`] if `until` is not after `from` or
    /// the span is longer than [`MAX_REPLAY_SPAN`] (14 days, as Svix);
    /// [`Error::SubscriptionNotFound`].
    pub fn replay_since(
        &self,
        subscription: SubscriptionId,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<u64> {
        if until <= from {
            return Err(Error::InvalidReplay(format!(
                "the span is empty: until ({until}) is not after from ({from})"
            )));
        }
        if until.since(from) > MAX_REPLAY_SPAN {
            return Err(Error::InvalidReplay(format!(
                "the span from {from} until {until} is longer than {} days",
                MAX_REPLAY_SPAN.as_secs() / 86_400
            )));
        }
        if self.reader()?.subscription(subscription)?.is_none() {
            return Err(Error::SubscriptionNotFound(subscription));
        }
        let until = until.min(Timestamp::now());
        self.engine.run_job(Job::replay_since(
            subscription,
            from.as_millis(),
            until.as_millis(),
        ))
    }

    /// Records the dispatcher moved aside as damaged (see
    /// [`OutboxStats::quarantined`]): each one's original key in hex and its
    /// raw bytes, for inspection or hand repair. They are never delivered.
    pub fn quarantined(&self) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + use<> {
        let it: Iter<(Vec<u8>, Vec<u8>)> = match self.reader() {
            Ok(r) => r.quarantined(),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        it.map(|r| r.map(|(k, v)| (hex::encode(k), v)))
    }

    /// The store's size on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.reader()?.size_on_disk()
    }
}

/// The bus's operational notices, oldest first, from
/// [`Bus::notices`](crate::Bus::notices).
///
/// Read them with [`pending`](Self::pending), act, then
/// [`ack`](Self::ack) them (for example from a thread of the app that
/// looks every few seconds).
///
/// ```
/// # fn main() -> Result<(), hookbus::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let bus = hookbus::Bus::builder().path(dir.path()).open()?;
/// for notice in bus.notices().pending(100)? {
///     eprintln!("hookbus: {}", notice.kind);
///     bus.notices().ack(notice.id)?;
/// }
/// # Ok(()) }
/// ```
///
/// Its `Debug` shows nothing of the store: `Notices { .. }`.
#[derive(Clone, Copy)]
pub struct Notices<'a> {
    pub(crate) engine: &'a Engine,
}

impl std::fmt::Debug for Notices<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices").finish_non_exhaustive()
    }
}

impl Notices<'_> {
    /// Up to `limit` unacknowledged notices, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Notice>> {
        self.engine.reader()?.notices().take(limit).collect()
    }

    /// Acknowledges a notice: it is not handed out again. Acknowledging
    /// one that is gone is not an error.
    pub fn ack(&self, id: NoticeId) -> Result<()> {
        self.engine.write_quiet(move |w| {
            w.remove_notice(id);
            Ok(())
        })
    }
}
