//! The dispatcher thread: the one writer.
//!
//! It takes commands (published events, subscription and outbox changes,
//! flush barriers) from the publish channel and outcomes from the senders,
//! applies them to the store in batches, flushes once per round (group
//! commit), completes the waiters of that round, and then hands due
//! deliveries to the senders. Data flows one way: publish → dispatcher →
//! store → senders → outcomes → dispatcher.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, select};

use crate::config::Config;
use crate::error::{Error, Result, StoreError};
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::record::{AttemptErrorKind, Delivery, DeliveryState, Event, OutboxStats};
use crate::retry::{Decision, decide};
use crate::sender::{self, Job, Outcome};
use crate::store::{IndexEntry, Store, SubscriptionRecord, WriteBatch};

/// Called once the writes of its command are flushed (or failed to be).
pub(crate) type Done = Box<dyn FnOnce(Result<()>) + Send>;
/// A change run on the dispatcher thread; returns what to call after flush.
pub(crate) type WriteFn = Box<dyn FnOnce(&mut Writer) -> Done + Send>;

/// What publishers and handles send to the dispatcher.
pub(crate) enum Command {
    Publish {
        event: Event,
        done: Option<Done>,
    },
    Write(WriteFn),
    /// The last command: stop, giving requests in flight until the instant.
    Shutdown(Instant),
}

/// At most this many commands are taken into one round.
const MAX_ROUND: usize = 4096;

/// The write side of the store, as the dispatcher and the changes it runs
/// see it. Reads through `store()` see everything committed so far.
#[derive(Debug)]
pub(crate) struct Writer {
    store: Store,
    config: Arc<Config>,
    batch: WriteBatch,
    stats: OutboxStats,
    stats_dirty: bool,
    unflushed: bool,
    /// Pending deliveries were added or moved earlier: scan the due index.
    pub(crate) rescan: bool,
    /// Subscriptions whose pending deliveries changed since the last round.
    touched: HashSet<SubscriptionId>,
    /// Subscriptions that gained pending deliveries, with the soonest due.
    added: HashMap<SubscriptionId, u64>,
}

impl Writer {
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn batch(&mut self) -> &mut WriteBatch {
        &mut self.batch
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

    /// Writes a delivery (see [`WriteBatch::put_delivery`]) and keeps the
    /// counters in step.
    pub(crate) fn put_delivery(&mut self, old: Option<&Delivery>, new: &Delivery) {
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
        if old.is_some_and(|o| o.state == DeliveryState::Pending) {
            // It may have been the soonest: look again after the commit.
            self.touched.insert(new.subscription_id);
        } else if new.state == DeliveryState::Pending {
            // A new pending delivery can only make the soonest sooner.
            let at = new.next_attempt_at.map_or(0, |t| t.as_millis());
            let e = self.added.entry(new.subscription_id).or_insert(at);
            *e = (*e).min(at);
        }
        self.batch.put_delivery(old, new);
    }

    /// Removes a finished delivery with its attempts.
    pub(crate) fn remove_delivery(&mut self, old: &Delivery) -> Result<()> {
        let keys = self.store.attempt_keys(old.id)?;
        if old.state == DeliveryState::Pending {
            self.touched.insert(old.subscription_id);
        }
        self.count(old.state, -1);
        self.batch.remove_delivery(old, &keys);
        Ok(())
    }

    /// Moves a damaged delivery record aside and drops its index entry.
    pub(crate) fn quarantine_delivery(
        &mut self,
        state: DeliveryState,
        entry: IndexEntry,
        why: &Error,
    ) {
        tracing::error!(delivery = %entry.delivery, error = %why, "damaged delivery record quarantined");
        if let Ok(Some((k, v))) = self.store.raw_delivery(entry.delivery) {
            self.batch.quarantine(&k, &v);
        }
        self.batch.remove_index_entry(state, entry);
        self.touched.insert(entry.subscription);
        self.count(state, -1);
        self.stats.quarantined += 1;
    }

    /// Marks every pending delivery of `sub` dead, with `reason`. Returns how
    /// many. Commits first, so it sees every earlier change.
    pub(crate) fn kill_pending(&mut self, sub: SubscriptionId, reason: &str) -> Result<u64> {
        self.commit()?;
        let now = Timestamp::now();
        let mut n = 0;
        for entry in self.store.due_of(sub) {
            let entry = entry?;
            match self.store.delivery(entry.delivery) {
                Ok(Some(old)) if old.state == DeliveryState::Pending => {
                    let mut new = old.clone();
                    new.state = DeliveryState::Dead;
                    new.next_attempt_at = None;
                    new.finished_at = Some(now);
                    new.last_error = Some(reason.to_owned());
                    self.put_delivery(Some(&old), &new);
                    n += 1;
                }
                Ok(_) => {
                    self.batch.remove_index_entry(DeliveryState::Pending, entry);
                    self.touched.insert(sub);
                }
                Err(e) => self.quarantine_delivery(DeliveryState::Pending, entry, &e),
            }
        }
        if n > 0 {
            tracing::warn!(subscription = %sub, count = n, reason, "pending deliveries dead-lettered");
        }
        Ok(n)
    }

    /// Applies what is batched (visible at once, durable at the next flush).
    pub(crate) fn commit(&mut self) -> Result<()> {
        if self.stats_dirty {
            let stats = self.stats;
            self.batch.put_stats(&stats);
            self.stats_dirty = false;
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.unflushed = true;
        if let Err(e) = self.store.apply(batch) {
            // The batch is gone; the counters on disk are the truth again.
            self.stats = self.store.stats().unwrap_or(self.stats);
            return Err(e);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Flow {
    in_flight: usize,
    /// Its last request timed out: one request at a time until it answers.
    tripped: bool,
}

struct Dispatcher {
    w: Writer,
    commands: Option<Receiver<Command>>,
    outcomes: Receiver<Outcome>,
    _idle_outcomes: Option<Sender<Outcome>>,
    work: Option<Sender<Job>>,
    senders: Vec<JoinHandle<()>>,
    in_flight: HashSet<DeliveryId>,
    flows: HashMap<SubscriptionId, Flow>,
    done: Vec<Done>,
    /// The first error of this round; every waiter of the round gets it.
    round_error: Option<String>,
    /// This round took events or changes: flush it.
    must_flush: bool,
    next_due: Option<u64>,
    /// Every subscription with pending deliveries, and when its soonest is
    /// due (kept in step with the store at the end of every round).
    due_subs: HashMap<SubscriptionId, u64>,
    closing: Option<Instant>,
    payloads: HashMap<EventId, Arc<[u8]>>,
}

/// Starts the sender pool and the dispatcher; returns the command channel
/// and the dispatcher's handle.
pub(crate) fn start(
    store: Store,
    config: Arc<Config>,
) -> Result<(Sender<Command>, JoinHandle<Result<()>>)> {
    let (tx, rx) = crossbeam_channel::bounded(config.channel_capacity);
    let (work_tx, work_rx) = crossbeam_channel::bounded(config.senders);
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let stats = store.stats()?;
    let due_subs = store.pending_subscriptions()?.into_iter().collect();
    // Without delivery, keep a sender of the outcome channel so it never
    // reads as disconnected.
    let (senders, idle_outcomes) = if config.deliver {
        (sender::spawn(&config, work_rx, out_tx)?, None)
    } else {
        (Vec::new(), Some(out_tx))
    };
    let d = Dispatcher {
        w: Writer {
            store,
            config,
            batch: WriteBatch::default(),
            stats,
            stats_dirty: false,
            unflushed: false,
            rescan: true,
            touched: HashSet::new(),
            added: HashMap::new(),
        },
        commands: Some(rx),
        outcomes: out_rx,
        _idle_outcomes: idle_outcomes,
        work: Some(work_tx),
        senders,
        in_flight: HashSet::new(),
        flows: HashMap::new(),
        done: Vec::new(),
        round_error: None,
        must_flush: false,
        next_due: None,
        due_subs,
        closing: None,
        payloads: HashMap::new(),
    };
    let handle = std::thread::Builder::new()
        .name("hookbus-dispatcher".into())
        .spawn(move || d.run())
        .map_err(|source| Error::Spawn {
            name: "hookbus-dispatcher".into(),
            source,
        })?;
    Ok((tx, handle))
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

impl Dispatcher {
    fn run(mut self) -> Result<()> {
        // What was pending when the store was opened is due at once.
        self.dispatch();
        self.finish_round();
        loop {
            self.wait_and_take();
            self.finish_round();
            if self.closing.is_none() {
                self.dispatch();
                self.finish_round();
            }
            if let Some(deadline) = self.closing
                && (self.in_flight.is_empty() || Instant::now() >= deadline)
            {
                break;
            }
        }
        self.stop()
    }

    /// Blocks until there is something to do (or the next delivery is due),
    /// then takes everything available, up to a round's worth.
    fn wait_and_take(&mut self) {
        let timeout = self.wait_time();
        match &self.commands {
            Some(rx) => {
                let rx = rx.clone();
                select! {
                    recv(rx) -> m => match m {
                        Ok(c) => self.handle(c),
                        Err(_) => self.begin_close(Instant::now()),
                    },
                    recv(self.outcomes) -> o => if let Ok(o) = o { self.on_outcome(o) },
                    default(timeout) => {}
                }
            }
            None => match self.outcomes.recv_timeout(timeout) {
                Ok(o) => self.on_outcome(o),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            },
        }
        for _ in 0..MAX_ROUND {
            let Some(rx) = &self.commands else { break };
            match rx.try_recv() {
                Ok(c) => self.handle(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.begin_close(Instant::now()),
            }
        }
        while let Ok(o) = self.outcomes.try_recv() {
            self.on_outcome(o);
        }
    }

    fn wait_time(&self) -> Duration {
        if let Some(deadline) = self.closing {
            return deadline.saturating_duration_since(Instant::now());
        }
        let cap = Duration::from_secs(1);
        match self.next_due {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(cap),
            None => cap,
        }
    }

    fn begin_close(&mut self, deadline: Instant) {
        self.commands = None;
        if self.closing.is_none() {
            self.closing = Some(deadline);
        }
    }

    fn handle(&mut self, cmd: Command) {
        self.must_flush = true;
        match cmd {
            Command::Publish { event, done } => {
                if let Err(e) = self.on_publish(event) {
                    tracing::error!(error = %e, "could not store a published event");
                    self.round_error.get_or_insert(e.to_string());
                }
                if let Some(done) = done {
                    self.done.push(done);
                }
            }
            Command::Write(f) => {
                // The change must see every earlier one.
                if let Err(e) = self.w.commit() {
                    self.round_error.get_or_insert(e.to_string());
                }
                let done = f(&mut self.w);
                if let Err(e) = self.w.commit() {
                    self.round_error.get_or_insert(e.to_string());
                }
                self.done.push(done);
            }
            Command::Shutdown(deadline) => self.begin_close(deadline),
        }
    }

    fn on_publish(&mut self, event: Event) -> Result<()> {
        let subs = self.w.store().subscribers_of(&event.name)?;
        let now = Timestamp::now();
        let mut matched = 0usize;
        for id in subs {
            match self.w.store().subscription(id) {
                Ok(Some(s)) if s.active => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(subscription = %id, error = %e, "damaged subscription skipped");
                    continue;
                }
            }
            let d = Delivery {
                id: DeliveryId::generate(),
                event_id: event.id,
                event_name: event.name.clone(),
                subscription_id: id,
                state: DeliveryState::Pending,
                attempts: 0,
                created_at: event.created_at,
                next_attempt_at: Some(now),
                finished_at: None,
                last_status: None,
                last_error: None,
            };
            self.w.put_delivery(None, &d);
            matched += 1;
        }
        if matched > 0 {
            self.w
                .batch()
                .put_event(&event, u32::try_from(matched).unwrap_or(u32::MAX));
        }
        tracing::trace!(event = %event.name, id = %event.id, deliveries = matched, "event published");
        Ok(())
    }

    /// Commits and flushes what this round wrote, then completes its waiters.
    fn finish_round(&mut self) {
        if let Err(e) = self.w.commit() {
            self.round_error.get_or_insert(e.to_string());
        }
        for (sub, at) in self.w.added.drain() {
            let e = self.due_subs.entry(sub).or_insert(at);
            *e = (*e).min(at);
        }
        let touched: Vec<SubscriptionId> = self.w.touched.drain().collect();
        for sub in touched {
            match self.w.store.earliest_due(sub) {
                Ok(Some(at)) => {
                    self.due_subs.insert(sub, at);
                }
                Ok(None) => {
                    self.due_subs.remove(&sub);
                }
                Err(e) => {
                    tracing::error!(subscription = %sub, error = %e, "damaged due-index entry")
                }
            }
        }
        // Published events and changes are flushed in the round that wrote
        // them (group commit). Attempt outcomes alone are not: losing one in
        // a crash can only make a delivery be sent again, and sled's own
        // flusher, or the next round that flushes, covers them soon.
        let wanted = self.must_flush || !self.done.is_empty();
        if self.w.unflushed && wanted {
            self.must_flush = false;
            match self.w.store.flush() {
                Ok(()) => self.w.unflushed = false,
                Err(e) => {
                    tracing::error!(error = %e, "store flush failed");
                    self.round_error.get_or_insert(e.to_string());
                }
            }
        }
        let error = self.round_error.take();
        for done in self.done.drain(..) {
            done(match &error {
                None => Ok(()),
                Some(m) => Err(Error::Store(StoreError::message(m.clone()))),
            });
        }
    }

    fn on_outcome(&mut self, o: Outcome) {
        self.in_flight.remove(&o.delivery);
        let flow = self.flows.entry(o.subscription).or_default();
        flow.in_flight = flow.in_flight.saturating_sub(1);
        flow.tripped = o
            .attempt
            .error
            .as_ref()
            .is_some_and(|e| e.kind == AttemptErrorKind::Timeout);
        if flow.in_flight == 0 && !flow.tripped {
            self.flows.remove(&o.subscription);
        }
        self.w.rescan = true;
        if let Err(e) = self.record_outcome(o) {
            tracing::error!(error = %e, "could not record a delivery attempt");
            self.round_error.get_or_insert(e.to_string());
        }
    }

    fn record_outcome(&mut self, o: Outcome) -> Result<()> {
        let old = match self.w.store().delivery(o.delivery) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(()), // purged meanwhile
            Err(e) => {
                tracing::error!(delivery = %o.delivery, error = %e, "damaged delivery record");
                return Ok(());
            }
        };
        self.w.batch().put_attempt(o.delivery, &o.attempt);
        let now = Timestamp::now();
        let mut new = old.clone();
        new.attempts = new.attempts.max(o.attempt.number);
        new.last_status = o.attempt.status;
        new.last_error = o.attempt.error.as_ref().map(ToString::to_string);
        let decision = decide(
            &self.w.config.retry_schedule,
            &o.attempt,
            o.retry_after,
            fastrand::f64(),
        );
        if old.state != DeliveryState::Pending {
            // Finished while in flight (its subscription was deleted or
            // deactivated): keep the attempt and why it died; a success
            // still counts.
            if decision == Decision::Delivered && old.state == DeliveryState::Dead {
                new.state = DeliveryState::Delivered;
                new.finished_at = Some(now);
            } else {
                new.last_status = old.last_status;
                new.last_error = old.last_error.clone();
            }
            self.w.put_delivery(Some(&old), &new);
            return Ok(());
        }
        match decision {
            Decision::Delivered => {
                new.state = DeliveryState::Delivered;
                new.next_attempt_at = None;
                new.finished_at = Some(now);
            }
            Decision::Retry(delay) => {
                new.next_attempt_at = Some(now.saturating_add(delay));
            }
            Decision::Dead(reason) => {
                tracing::warn!(delivery = %o.delivery, subscription = %o.subscription, %reason, "delivery dead-lettered");
                new.state = DeliveryState::Dead;
                new.next_attempt_at = None;
                new.finished_at = Some(now);
                new.last_error = Some(reason);
            }
            Decision::Gone => {
                new.state = DeliveryState::Dead;
                new.next_attempt_at = None;
                new.finished_at = Some(now);
                new.last_error = Some("410 Gone: subscription deactivated".into());
                self.w.put_delivery(Some(&old), &new);
                return self.deactivate(o.subscription);
            }
        }
        self.w.put_delivery(Some(&old), &new);
        Ok(())
    }

    /// 410 Gone: the subscription is deactivated and its pending deliveries
    /// die.
    fn deactivate(&mut self, id: SubscriptionId) -> Result<()> {
        if let Some(mut s) = self.w.store().subscription(id)?
            && s.active
        {
            tracing::warn!(subscription = %id, url = %s.url, "receiver answered 410 Gone; subscription deactivated");
            let old = s.clone();
            s.active = false;
            s.modified_at = Timestamp::now();
            self.w.batch().put_subscription(Some(&old), &s);
        }
        self.w
            .kill_pending(id, "410 Gone: subscription deactivated")?;
        Ok(())
    }

    /// Hands due deliveries to free senders, fairly between subscriptions.
    fn dispatch(&mut self) {
        if !self.w.config.deliver {
            return;
        }
        let senders = self.w.config.senders;
        let mut free = senders.saturating_sub(self.in_flight.len());
        let now = now_ms();
        let due_now = self.next_due.is_some_and(|at| at <= now);
        if free == 0 || !(self.w.rescan || due_now) {
            return;
        }
        self.w.rescan = false;
        // Subscriptions with due work, the one waiting longest first; and
        // when the next one falls due.
        let mut ready: Vec<(u64, SubscriptionId)> = Vec::new();
        let mut next: Option<u64> = None;
        for (sub, at) in &self.due_subs {
            if *at <= now {
                ready.push((*at, *sub));
            } else {
                next = Some(next.map_or(*at, |n| n.min(*at)));
            }
        }
        self.next_due = next;
        if ready.is_empty() {
            return;
        }
        ready.sort_unstable();
        // Fair share: with k subscriptions wanting senders, each may hold
        // senders / k (at least one); a lone one may hold all but one, and a
        // tripped one only one.
        let mut wanting: HashSet<SubscriptionId> = ready.iter().map(|(_, s)| *s).collect();
        wanting.extend(
            self.flows
                .iter()
                .filter(|(_, f)| f.in_flight > 0)
                .map(|(id, _)| *id),
        );
        let most = senders.saturating_sub(1).max(1);
        let share = if wanting.len() <= 1 {
            most
        } else {
            (senders / wanting.len()).clamp(1, most)
        };
        for (_, sub) in ready {
            if free == 0 {
                break;
            }
            let flow = self.flows.entry(sub).or_default();
            let cap = if flow.tripped { 1 } else { share };
            let room = cap.saturating_sub(flow.in_flight).min(free);
            if room == 0 {
                continue;
            }
            // Its due deliveries not already in flight: at most `in_flight`
            // entries are skipped on the way.
            let mut batch = Vec::with_capacity(room);
            for entry in self.w.store().due_of(sub) {
                match entry {
                    Ok(e) if e.at > now => break,
                    Ok(e) if self.in_flight.contains(&e.delivery) => {}
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
            for e in batch {
                match self.prepare(e) {
                    Ok(Some(job)) => {
                        let Some(work) = &self.work else { return };
                        if work.try_send(job).is_err() {
                            return;
                        }
                        self.in_flight.insert(e.delivery);
                        self.flows.entry(sub).or_default().in_flight += 1;
                        free -= 1;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::error!(delivery = %e.delivery, error = %err, "could not prepare a delivery");
                    }
                }
            }
        }
    }

    /// Loads what a due delivery needs. Deliveries that cannot be sent (their
    /// subscription is gone or inactive, their event is missing, their
    /// record is damaged) are finished here instead.
    fn prepare(&mut self, entry: IndexEntry) -> Result<Option<Job>> {
        let d = match self.w.store().delivery(entry.delivery) {
            Ok(Some(d)) if d.state == DeliveryState::Pending => d,
            Ok(_) => {
                self.w
                    .batch()
                    .remove_index_entry(DeliveryState::Pending, entry);
                return Ok(None);
            }
            Err(e) => {
                self.w
                    .quarantine_delivery(DeliveryState::Pending, entry, &e);
                return Ok(None);
            }
        };
        let sub = match self.w.store().subscription(d.subscription_id) {
            Ok(Some(s)) if s.active => s,
            Ok(Some(_)) => return self.bury(d, "subscription is inactive"),
            Ok(None) => return self.bury(d, "subscription was deleted"),
            Err(e) => return self.bury(d, &format!("subscription record is damaged: {e}")),
        };
        let payload = match self.payload(d.event_id) {
            Ok(Some(p)) => p,
            Ok(None) => return self.bury(d, "event record is missing"),
            Err(e) => return self.bury(d, &format!("event record is damaged: {e}")),
        };
        Ok(Some(Job {
            delivery: d.id,
            subscription: d.subscription_id,
            event_name: d.event_name,
            attempt: d.attempts + 1,
            url: sub.url.clone(),
            secrets: secrets_of(&sub),
            content_type: sub.content_type.clone(),
            standard_webhooks: sub.standard_webhooks,
            payload,
        }))
    }

    fn bury(&mut self, old: Delivery, reason: &str) -> Result<Option<Job>> {
        tracing::warn!(delivery = %old.id, subscription = %old.subscription_id, reason, "delivery dead-lettered");
        let mut new = old.clone();
        new.state = DeliveryState::Dead;
        new.next_attempt_at = None;
        new.finished_at = Some(Timestamp::now());
        new.last_error = Some(reason.to_owned());
        self.w.put_delivery(Some(&old), &new);
        Ok(None)
    }

    fn payload(&mut self, id: EventId) -> Result<Option<Arc<[u8]>>> {
        if let Some(p) = self.payloads.get(&id) {
            return Ok(Some(p.clone()));
        }
        let Some(event) = self.w.store().event(id)? else {
            return Ok(None);
        };
        if self.payloads.len() >= 256 {
            self.payloads.clear();
        }
        let p: Arc<[u8]> = event.payload.into();
        self.payloads.insert(id, p.clone());
        Ok(Some(p))
    }

    /// Final flush, then the senders are told to stop and joined if they
    /// finish in time; a sender still inside a request is left to end on its
    /// own (its delivery stays pending and is sent after the next open).
    fn stop(mut self) -> Result<()> {
        self.finish_round();
        self.work = None;
        let deadline = self.closing.unwrap_or_else(Instant::now);
        let mut busy = 0;
        for h in self.senders.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                if h.join().is_err() {
                    tracing::error!("a hookbus sender thread panicked");
                }
            } else {
                busy += 1;
            }
        }
        if busy > 0 {
            tracing::warn!(
                senders = busy,
                in_flight = self.in_flight.len(),
                "shutdown deadline passed with requests in flight; they stay pending and are sent after the next open"
            );
        }
        let w = &mut self.w;
        w.commit()?;
        if w.unflushed {
            w.store.flush()?;
        }
        Ok(())
    }
}

/// The secrets a request is signed with: the current one, then one being
/// rotated out while it has not expired.
pub(crate) fn secrets_of(sub: &SubscriptionRecord) -> Vec<String> {
    let mut v: Vec<String> = sub.secret.iter().cloned().collect();
    if let Some((old, until)) = &sub.previous_secret
        && *until > now_ms()
    {
        v.push(old.clone());
    }
    v
}
