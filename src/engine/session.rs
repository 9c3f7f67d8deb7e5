//! The write session: domain operations on the one [`Writer`], with the
//! outbox counters kept in step. No raw write escapes it: callers say what
//! happened to a delivery or a subscription, the session stages the
//! records, index entries and counters together.
//!
//! Reads through the session see its own staged writes (a delivery changed
//! earlier in the same round is read as changed), so two changes to the
//! same delivery in one round never apply the second to a stale record.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

mod keys;

use super::changes::{Changes, JobRequest};
use super::health_log::HealthLog;
use super::sequences::Sequences;
use crate::config::Config;
use crate::delivery;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::{Error, Result, is_damage};
use crate::health::HealthRecord;
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::notice::{Notice, NoticeKind};
use crate::record::{Attempt, Event, OutboxStats};
use crate::retry::Decision;
use crate::storage::{Damaged, IndexEntry, Reader, SubscriptionRecord, Writer};
use crate::telemetry;

/// The write side of the store as the engine and the changes it runs see
/// it. Lives on the engine thread; not `Clone`.
#[derive(Debug)]
pub(crate) struct Session {
    w: Box<dyn Writer>,
    pub(crate) config: Arc<Config>,
    stats: OutboxStats,
    stats_dirty: bool,
    /// Writes were committed that no flush has covered yet.
    unflushed: bool,
    /// Deliveries staged since the last commit (`None`: removed).
    staged: HashMap<DeliveryId, Option<Delivery>>,
    /// Pending deliveries were added or moved earlier: plan again.
    rescan: bool,
    /// What the writes did that the dispatcher keeps caches of, handed
    /// over once a round (`take_changes`).
    changes: Changes,
    /// Maintenance the current change asked for (run in chunks later, by
    /// the dispatcher, once the change is committed).
    jobs: Vec<JobRequest>,
    /// `X-Webhook-Sequence` numbering.
    sequences: Sequences,
    /// The store drops events no delivery refers to (several instances
    /// remove deliveries); otherwise the engine counts references.
    store_drops_events: bool,
    /// Idempotency keys staged in this round.
    keys: HashMap<String, (EventId, u64)>,
    /// The events holding them (not readable from the store before the
    /// commit; a later publish with the key is compared with its event).
    keyed_events: HashMap<EventId, Event>,
    /// Subscriptions' health: this round's attempts (merged into the
    /// store at commit, one write per subscription) and as last known.
    health: HealthLog,
    /// Event reference counts changed in this round (replays add
    /// deliveries to stored events, purges remove them).
    event_refs: HashMap<EventId, Option<u32>>,
    /// Subscriptions written (`None`: removed) since the last commit.
    staged_subs: HashMap<SubscriptionId, Option<SubscriptionRecord>>,
    /// The store's subscription lock is held until the next commit.
    subscriptions_locked: bool,
}

impl Session {
    pub(crate) fn new(w: Box<dyn Writer>, config: Arc<Config>) -> Result<Self> {
        let (numbers, drops) = (w.numbers_deliveries(), w.drops_unreferenced_events());
        let stats = w.reader().stats()?;
        Ok(Session {
            w,
            config,
            stats,
            stats_dirty: false,
            unflushed: false,
            subscriptions_locked: false,
            staged_subs: HashMap::new(),
            staged: HashMap::new(),
            rescan: true,
            changes: Changes::default(),
            jobs: Vec::new(),
            sequences: Sequences::new(numbers),
            store_drops_events: drops,
            keys: HashMap::new(),
            keyed_events: HashMap::new(),
            health: HealthLog::default(),
            event_refs: HashMap::new(),
        })
    }

    /// Committed state (the session's own staged writes are not in it; use
    /// [`Session::delivery`] for deliveries).
    pub(crate) fn reader(&self) -> &dyn Reader {
        self.w.reader()
    }

    /// How this instance coordinates with the others sharing its store
    /// (`None`: it writes the store alone).
    pub(crate) fn coordinator(&self) -> Option<Box<dyn crate::storage::Coordinator>> {
        self.w.coordinator()
    }

    /// A delivery as the session sees it: staged, else committed.
    pub(crate) fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        match self.staged.get(&id) {
            Some(d) => Ok(d.clone()),
            None => self.w.reader().delivery(id),
        }
    }

    pub(crate) fn staged_writes(&self) -> usize {
        self.w.staged()
    }

    fn count(&mut self, state: DeliveryState, delta: i64) {
        let c = match state {
            DeliveryState::Pending => &mut self.stats.pending,
            DeliveryState::Delivered => &mut self.stats.delivered,
            DeliveryState::Dead => &mut self.stats.dead,
        };
        *c = c.saturating_add_signed(delta);
        self.stats_dirty = true;
    }

    /// Stages a delivery, replacing `old` (as this session reads it), and
    /// keeps the counters and the due bookkeeping in step.
    fn put_delivery(&mut self, old: Option<&Delivery>, new: Delivery) {
        self.stage_delivery(old, new, false);
    }

    /// [`put_delivery`](Self::put_delivery) for an attempt's outcome, which a
    /// shared store writes only under this instance's own claim.
    fn put_outcome(&mut self, old: &Delivery, new: Delivery) {
        self.stage_delivery(Some(old), new, true);
    }

    fn stage_delivery(&mut self, old: Option<&Delivery>, new: Delivery, outcome: bool) {
        match old {
            Some(o) if o.state == new.state => {}
            Some(o) => {
                self.count(o.state, -1);
                self.count(new.state, 1);
            }
            None => self.count(new.state, 1),
        }
        if new.state == DeliveryState::Pending {
            self.rescan = true;
        }
        self.changes.delivery(old, &new);
        match old {
            Some(old) if outcome => self.w.put_outcome(old, &new),
            _ => self.w.put_delivery(old, &new),
        }
        // A new delivery cannot be read back before the commit (changes
        // commit first, outcomes come after dispatch): only changed ones
        // are kept, which keeps fan-out free of a copy per delivery.
        if old.is_some() {
            self.staged.insert(new.id, Some(new));
        }
    }

    // ---- subscriptions ----

    /// A subscription as this round sees it (its own staged changes
    /// first).
    pub(crate) fn subscription(&self, id: SubscriptionId) -> Result<Option<SubscriptionRecord>> {
        match self.staged_subs.get(&id) {
            Some(staged) => Ok(staged.clone()),
            None => self.w.reader().subscription(id),
        }
    }

    pub(crate) fn put_subscription(
        &mut self,
        old: Option<&SubscriptionRecord>,
        new: &SubscriptionRecord,
    ) {
        self.staged_subs.insert(new.id, Some(new.clone()));
        self.w.put_subscription(old, new);
        self.changes.changed_subs.insert(new.id);
        self.rescan = true;
    }

    pub(crate) fn remove_subscription(&mut self, old: &SubscriptionRecord) {
        self.staged_subs.insert(old.id, None);
        self.w.remove_subscription(old);
        self.sequences.forget(old.id);
        self.changes.changed_subs.insert(old.id);
        self.rescan = true;
    }

    /// Dead-letters every pending delivery of `sub` with `reason`, in
    /// chunks after this change (the change's caller waits for it).
    pub(crate) fn dead_letter_pending(&mut self, sub: SubscriptionId, reason: &'static str) {
        self.jobs
            .push(JobRequest::DeadLetterPending { sub, reason });
    }

    // ---- events and deliveries ----

    /// Stores an event with one new pending delivery per subscription in
    /// `subs`; their ids, in `subs`' order. Nothing is stored when `subs`
    /// is empty.
    pub(crate) fn publish(
        &mut self,
        event: &Event,
        subs: &[SubscriptionId],
    ) -> Result<Vec<DeliveryId>> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.create_deliveries(event, subs)?;
        self.w
            .put_event(event, u32::try_from(subs.len()).unwrap_or(u32::MAX));
        telemetry::published(subs.len());
        Ok(ids)
    }

    /// Sends a stored event again: one new pending delivery per
    /// subscription in `subs` (numbered after the subscription's others).
    pub(crate) fn replay(
        &mut self,
        event: &Event,
        subs: &[SubscriptionId],
    ) -> Result<Vec<DeliveryId>> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        let refs = self.refs_of(event.id)?;
        let ids = self.create_deliveries(event, subs)?;
        let added = u32::try_from(subs.len()).unwrap_or(u32::MAX);
        if let Some(refs) = refs {
            let refs = refs.saturating_add(added);
            self.w.set_event_refs(event.id, refs);
            self.event_refs.insert(event.id, Some(refs));
        }
        Ok(ids)
    }

    /// An event's reference count as this round sees it.
    fn refs_of(&self, event: EventId) -> Result<Option<u32>> {
        match self.event_refs.get(&event) {
            Some(refs) => Ok(*refs),
            None => self.w.reader().event_refs(event),
        }
    }

    /// One new pending delivery of `event` per subscription in `subs`, each
    /// with the subscription's next sequence number.
    fn create_deliveries(
        &mut self,
        event: &Event,
        subs: &[SubscriptionId],
    ) -> Result<Vec<DeliveryId>> {
        // Sequence numbers first: a counter that cannot be read stores
        // nothing of the event.
        let mut damaged = Vec::new();
        let numbered = self.sequences.next(self.w.reader(), subs, &mut damaged);
        for e in &damaged {
            self.quarantine_error(e);
        }
        let numbered = numbered?;
        let now = Timestamp::now();
        let mut ids = Vec::with_capacity(numbered.len());
        for (sub, seq) in numbered {
            let d = delivery::created(event.id, &event.name, event.created_at, sub, seq, now);
            ids.push(d.id);
            self.put_delivery(None, d);
        }
        Ok(ids)
    }

    /// Applies an attempt's outcome to the delivery as it stands now.
    /// Returns whether the receiver answered 410 Gone for a delivery that
    /// was still pending.
    pub(crate) fn record_attempt(
        &mut self,
        id: DeliveryId,
        attempt: &Attempt,
        decision: &Decision,
    ) -> Result<bool> {
        let Some(current) = self.delivery(id)? else {
            return Ok(false); // purged meanwhile
        };
        self.w.put_attempt(id, attempt)?;
        let kept = self.config.attempts_kept;
        if attempt.number > kept {
            self.w.remove_attempt(id, attempt.number - kept);
        }
        let now = Timestamp::now();
        telemetry::attempt(attempt, current.state, now.since(current.created_at));
        let (new, gone) = delivery::attempted(&current, attempt, decision, now);
        if let Decision::Dead(reason) = decision
            && current.state == DeliveryState::Pending
        {
            telemetry::dead_lettered();
            tracing::warn!(delivery = %id, subscription = %current.subscription_id, %reason, "delivery dead-lettered");
            self.notice(NoticeKind::DeliveryDeadLettered {
                delivery: id,
                subscription: current.subscription_id,
                event: current.event_name.clone(),
                reason: reason.to_string(),
            });
        }
        // Always, after `put_attempt`: a store may keep the attempt with
        // the record (see `Writer::put_attempt`).
        self.put_outcome(&current, new);
        Ok(gone)
    }

    /// Dead-letters a pending delivery that cannot be sent.
    pub(crate) fn dead_letter(&mut self, d: &Delivery, reason: &str) {
        tracing::warn!(delivery = %d.id, subscription = %d.subscription_id, reason, "delivery dead-lettered");
        telemetry::dead_lettered();
        // The app's own deletions need no notice; a 410 has its own.
        if reason != delivery::reason::DELETED && reason != delivery::reason::GONE {
            self.notice(NoticeKind::DeliveryDeadLettered {
                delivery: d.id,
                subscription: d.subscription_id,
                event: d.event_name.clone(),
                reason: reason.to_owned(),
            });
        }
        let new = delivery::dead_lettered(d, Timestamp::now(), reason);
        self.put_delivery(Some(d), new);
    }

    /// Makes a dead delivery due now.
    pub(crate) fn revive(&mut self, d: &Delivery) -> Delivery {
        let new = delivery::revived(d, Timestamp::now());
        self.put_delivery(Some(d), new.clone());
        self.changes.revived_subs.insert(d.subscription_id);
        new
    }

    /// Removes a finished delivery with its attempts.
    pub(crate) fn remove_delivery(&mut self, old: &Delivery) -> Result<()> {
        self.w.remove_delivery(old)?;
        if old.state == DeliveryState::Pending {
            self.changes.touched.insert(old.subscription_id);
        }
        self.count(old.state, -1);
        self.staged.insert(old.id, None);
        Ok(())
    }

    /// `gone` deliveries of `event` were removed: drop the event with its
    /// last one.
    pub(crate) fn release_event(&mut self, event: EventId, gone: u32) -> Result<()> {
        if self.store_drops_events {
            // Other instances may be removing the event's other deliveries
            // at once: the store removes the event if none is left when
            // this round commits (and a periodic sweep catches a race).
            self.w.remove_event(event);
            return Ok(());
        }
        match self.refs_of(event)? {
            Some(refs) if refs <= gone => {
                self.w.remove_event(event);
                self.event_refs.insert(event, Some(0));
            }
            Some(refs) => {
                self.w.set_event_refs(event, refs - gone);
                self.event_refs.insert(event, Some(refs - gone));
            }
            None => {} // counted by no older store: keep it
        }
        Ok(())
    }

    /// Drops a state-index entry that leads to no delivery in that state.
    pub(crate) fn drop_entry(&mut self, state: DeliveryState, entry: IndexEntry) {
        self.w.remove_index_entry(state, entry);
        if state == DeliveryState::Pending {
            self.changes.touched.insert(entry.subscription);
        }
    }

    /// A read of `entry`'s delivery failed. A record that does not decode
    /// is moved aside (and no longer counted); any other error (I/O) is
    /// transient: the delivery stays as it is and is tried again later.
    /// Returns whether it was quarantined.
    pub(crate) fn on_read_error(
        &mut self,
        state: DeliveryState,
        entry: IndexEntry,
        err: &Error,
    ) -> bool {
        if !is_damage(err) {
            tracing::error!(delivery = %entry.delivery, error = %err, "could not read a delivery; will try again");
            return false;
        }
        tracing::error!(delivery = %entry.delivery, error = %err, "damaged delivery record quarantined");
        if let Err(e) = self.w.quarantine_delivery(state, entry) {
            tracing::error!(delivery = %entry.delivery, error = %e, "could not quarantine");
            return false;
        }
        if state == DeliveryState::Pending {
            self.changes.touched.insert(entry.subscription);
        }
        self.count(state, -1);
        self.stats.quarantined += 1;
        true
    }

    /// Moves the record named by an [`Error::Corrupt`] aside (other errors:
    /// nothing).
    pub(crate) fn quarantine_error(&mut self, e: &Error) {
        if let Error::Corrupt { key, reason } = e
            && let Ok(key) = hex::decode(key)
        {
            self.quarantine(&[Damaged {
                key,
                reason: reason.clone(),
            }]);
        }
    }

    /// Moves damaged index entries or records aside.
    pub(crate) fn quarantine(&mut self, damaged: &[Damaged]) {
        for d in damaged {
            tracing::error!(record = ?d, "damaged record quarantined");
            match self.w.quarantine_raw(d) {
                Ok(()) => {
                    self.stats.quarantined += 1;
                    self.stats_dirty = true;
                }
                Err(e) => tracing::error!(record = ?d, error = %e, "could not quarantine"),
            }
        }
    }

    // ---- health and notices ----

    /// Reads what this instance knew of subscriptions' health afresh, at
    /// once (other instances add attempts too).
    pub(crate) fn refresh_health_views(&mut self) {
        self.health.refresh_views(self.w.reader());
    }

    /// Adds an attempt to `sub`'s health; returns the health before and
    /// after it.
    pub(crate) fn note_attempt(
        &mut self,
        sub: SubscriptionId,
        a: &Attempt,
    ) -> (HealthRecord, HealthRecord) {
        self.health.attempt(self.w.reader(), sub, a)
    }

    /// Records that `sub` was disabled (`Some`: when and why) or enabled
    /// again (`None`).
    pub(crate) fn set_disabled(
        &mut self,
        sub: SubscriptionId,
        disabled: Option<(Timestamp, String)>,
    ) {
        self.health.set_disabled(sub, disabled);
    }

    /// Stores a notice with this round's writes.
    pub(crate) fn notice(&mut self, kind: NoticeKind) {
        self.w.put_notice(&Notice::new(kind));
    }

    /// Removes an acknowledged notice.
    pub(crate) fn remove_notice(&mut self, id: crate::ids::NoticeId) {
        self.w.remove_notice(id);
    }

    /// Removes events older than `before_ms` that no delivery refers to
    /// (shared stores; see [`Writer::sweep_orphan_events`]).
    pub(crate) fn sweep_orphan_events(&mut self, before_ms: u64) {
        self.w.sweep_orphan_events(before_ms);
    }

    /// Rewrites the outbox counters at the next commit (a write that
    /// proves the store takes writes: [`Engine::probe`](super::Engine::probe)).
    pub(crate) fn touch_stats(&mut self) {
        self.stats_dirty = true;
        self.w.probe();
    }

    /// What the writes since the last call did (see [`Changes`]).
    pub(crate) fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Subscriptions written or removed since the last `take_changes`.
    pub(crate) fn changed_subscriptions(&self) -> &HashSet<SubscriptionId> {
        &self.changes.changed_subs
    }

    /// Whether a subscription was written, removed or revived since the
    /// last `take_changes` (the dispatcher then plans only after the
    /// commit).
    pub(crate) fn subscriptions_changed(&self) -> bool {
        !self.changes.changed_subs.is_empty() || !self.changes.revived_subs.is_empty()
    }

    /// The maintenance changes asked for since the last call.
    pub(crate) fn take_job_requests(&mut self) -> Vec<JobRequest> {
        std::mem::take(&mut self.jobs)
    }

    /// Whether due work may have changed since the last plan.
    pub(crate) fn needs_rescan(&self) -> bool {
        self.rescan
    }

    /// Asks for a new plan (due work may have changed).
    pub(crate) fn rescan(&mut self) {
        self.rescan = true;
    }

    /// A plan is being made: the request for one is met.
    pub(crate) fn rescanned(&mut self) {
        self.rescan = false;
    }

    /// Pending deliveries, as counted.
    pub(crate) fn pending(&self) -> u64 {
        self.stats.pending
    }

    /// Takes the count of pending deliveries from the store, where other
    /// instances change it too (a shared store), unless this round has
    /// changed it already (the next call will catch up). Without this an
    /// idle instance's `hookbus_backlog` gauge kept the count of its own
    /// last round.
    pub(crate) fn follow_pending(&mut self) -> Result<()> {
        if !self.stats_dirty {
            self.stats.pending = self.w.reader().pending()?;
        }
        Ok(())
    }

    /// Lets a shared store claim, as it stores them, the new pending
    /// deliveries staged for the next commit that `choose` picks (see
    /// [`Writer::claim_new`]).
    pub(crate) fn claim_new(&mut self, choose: &mut dyn FnMut(&Delivery) -> bool) {
        self.w.claim_new(choose);
    }

    /// What the last commit stored claimed for this instance (see
    /// [`Writer::take_new_claims`]).
    pub(crate) fn take_new_claims(&mut self) -> Vec<IndexEntry> {
        self.w.take_new_claims()
    }

    /// Applies what is staged (visible at once, durable at the next flush).
    pub(crate) fn commit(&mut self) -> Result<()> {
        let r = self.commit_staged();
        self.subscriptions_locked = false;
        // The writer knows whether it holds any (a no-op otherwise).
        self.w.release_locks();
        r
    }

    /// Takes the store's subscription lock until this round commits (see
    /// [`Writer::lock_subscriptions`]). Every read-modify-write of a
    /// subscription record calls it before it reads.
    pub(crate) fn lock_subscriptions(&mut self) -> Result<()> {
        if !self.subscriptions_locked {
            self.w.lock_subscriptions()?;
            self.subscriptions_locked = true;
        }
        Ok(())
    }

    fn commit_staged(&mut self) -> Result<()> {
        self.keys.clear();
        self.keyed_events.clear();
        self.staged_subs.clear();
        self.event_refs.clear();
        for (sub, delta) in self.health.take_round() {
            if let Err(e) = self.w.merge_health(sub, &delta) {
                // Health is a report: a failed read costs this round's
                // counts, never the round.
                tracing::error!(subscription = %sub, error = %e, "could not record a subscription's health");
            }
        }
        for (sub, last) in self.sequences.take_dirty() {
            self.w.put_sequence(sub, last);
        }
        if self.stats_dirty {
            let stats = self.stats;
            self.w.put_stats(&stats);
            self.stats_dirty = false;
        }
        self.staged.clear();
        if self.w.staged() == 0 {
            return Ok(());
        }
        self.unflushed = true;
        if let Err(e) = self.w.commit() {
            // The batch is gone; the counters on disk are the truth again.
            self.stats = self.w.reader().stats().unwrap_or(self.stats);
            self.sequences.forget_all();
            return Err(e);
        }
        Ok(())
    }

    /// Makes what was committed durable.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.unflushed {
            self.w.flush()?;
            self.unflushed = false;
        }
        Ok(())
    }
}
