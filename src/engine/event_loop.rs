//! The dispatcher thread: the one writer's event loop.
//!
//! It takes commands (published events, changes, barriers) from the command
//! channel and outcomes from the senders, applies them through the write
//! [`Session`] in rounds, flushes once per round a barrier waits in (group
//! commit), completes the waiters of the round — each with its own result
//! — runs maintenance in chunks, and hands due deliveries to the senders
//! (a round of outcomes alone hands them out before it commits, and may
//! wait to commit with the next ones). Data flows one way: publish →
//! dispatcher → store → senders → outcomes → dispatcher.
//!
//! Errors are per command and sticky: a command that fails gets its own
//! error; a published event without a waiter that could not be stored (or
//! could not reach a subscription) is reported to the next barrier
//! (`flush`, `publish_durable`, a change), so a loss is never silent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, select};

use super::maintenance::Job;
use super::round::Round;
use super::scheduler::{self, Breaker, Bucket, Flow, INITIAL_WINDOW, Limits};
use super::session::Session;
use super::{Command, Done, JobDone, Keyed};
use crate::config::Config;
use crate::delivery::DeliveryState;
use crate::delivery::{self, reason};
use crate::error::{Error, Result, StoreError};
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::notice::NoticeKind;
use crate::policy::{DeliveryOrder, OnDeadLetter, RateLimit};
use crate::record::Event;
use crate::retry::decide;
use crate::sender::{self, Outcome};
use crate::storage::{IndexEntry, SubscriptionRecord, Writer};
use crate::telemetry;

/// At most this many commands are taken into one round.
///
/// Kept small on purpose: sled 0.34 copies a leaf node for every write in a
/// batch and frees the old copies only when the batch's epoch ends, so a
/// round's garbage grows with its size. Rounds of 4096 commands (32 Ki
/// writes) made the 100 000-event memory example peak at 1.15 GB; rounds of
/// 256 (2 Ki writes) peak at about 155 MB and deliver faster, while a
/// barrier still covers every round before it (group commit is unchanged:
/// flushes are per barrier, not per round).
const MAX_ROUND: usize = 256;
/// A round stops taking commands once this many writes are staged (see
/// [`MAX_ROUND`]).
const MAX_ROUND_WRITES: usize = 2048;
/// The payload cache is cleared when it holds more than this many bytes.
const PAYLOAD_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// The longest the loop sleeps without a reason to wake.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Outcomes alone wait, staged, at most this long for a commit (see
/// [`Dispatcher::defer_commit`]).
const DEFER_FOR: Duration = Duration::from_millis(1);
/// ... and at most this many of them.
const DEFER_MAX: usize = 64;

/// Starts the sender pool and the dispatcher; returns the command channel
/// and the dispatcher's handle.
pub(crate) fn start(
    writer: Box<dyn Writer>,
    config: Arc<Config>,
    vitals: Arc<super::Vitals>,
    queued: Arc<super::QueuedBytes>,
) -> Result<(Sender<Command>, JoinHandle<Result<()>>)> {
    let (tx, rx) = crossbeam_channel::bounded(config.channel_capacity);
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let mut session = Session::new(writer, config.clone())?;
    let (due, damaged) = session.reader().pending_subscriptions()?;
    if !damaged.is_empty() {
        session.quarantine(&damaged);
        session.commit()?;
    }
    let (pool, outcomes) = if config.deliver {
        (Some(sender::Pool::new(&config, out_tx)), out_rx)
    } else {
        (None, crossbeam_channel::never())
    };
    let d = Dispatcher {
        horizon: delivery::due_horizon(&config.retry_schedule),
        vitals,
        queued,
        s: session,
        commands: rx,
        outcomes,
        pool,
        hosts: HashMap::new(),
        host_index: HashMap::new(),
        rr_cursor: None,
        in_flight: HashSet::new(),
        settling: HashSet::new(),
        settling_subs: HashSet::new(),
        round_took_commands: false,
        deferred_since: None,
        outcome_writes: 0,
        flows: HashMap::new(),
        windows: HashMap::new(),
        parked: Vec::new(),
        round: Round::default(),
        next_due: None,
        due_subs: due.into_iter().collect(),
        closing: None,
        payloads: PayloadCache::default(),
        jobs: VecDeque::new(),
        read_failed: false,
        policies: HashMap::new(),
        buckets: HashMap::new(),
        fifo_heads: HashMap::new(),
        next_key_sweep: 0,
        next_retention: 0,
        next_poll: 0,
        subs: HashMap::new(),
        fanout: HashMap::new(),
        warned: HashMap::new(),
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

fn store_error(m: &str) -> Error {
    Error::Store(StoreError::message(m.to_owned()))
}

/// What was sent of recent events, capped by bytes.
#[derive(Default)]
struct PayloadCache {
    map: HashMap<EventId, sender::Body>,
    bytes: usize,
}

struct Dispatcher {
    s: Session,
    commands: Receiver<Command>,
    outcomes: Receiver<Outcome>,
    /// The sender threads (`None` when the bus does not deliver).
    pool: Option<sender::Pool>,
    /// Each subscription's destination host, as an index of `host_index`.
    hosts: HashMap<SubscriptionId, usize>,
    host_index: HashMap<String, usize>,
    /// The last subscription served: the next pass starts after it.
    rr_cursor: Option<SubscriptionId>,
    in_flight: HashSet<DeliveryId>,
    /// Deliveries whose outcome is staged, not yet committed: the store
    /// still shows them as they were before the request, so a dispatch
    /// before the commit (`dispatch_early`) must not send them again.
    settling: HashSet<DeliveryId>,
    /// Their subscriptions (a FIFO queue's next head waits for the commit).
    settling_subs: HashSet<SubscriptionId>,
    /// This round took a command (not only outcomes).
    round_took_commands: bool,
    /// Since when outcomes wait, staged, for a commit (see
    /// [`Dispatcher::defer_commit`]).
    deferred_since: Option<Instant>,
    /// How many of the staged writes outcomes made (a commit can wait only
    /// while they are all there is).
    outcome_writes: usize,
    flows: HashMap<SubscriptionId, Flow>,
    /// Keyed publishes waiting for their key's lock (see
    /// `on_publish_command`).
    parked: Vec<Parked>,
    /// The windows (see `Flow::window`) subscriptions earned, kept while
    /// they are idle (their flows are dropped then), so a healthy one does
    /// not start slowly again after a quiet spell; forgotten when the
    /// subscription changes.
    windows: HashMap<SubscriptionId, usize>,
    /// This round's waiters, loss report and what it must flush.
    round: Round,
    /// When the next pending delivery falls due (`None`: nothing scheduled,
    /// or due work waits for a sender and an outcome will wake the loop).
    next_due: Option<u64>,
    /// Every subscription with pending deliveries, and when its soonest is
    /// due (kept in step with the store at the end of every round).
    due_subs: HashMap<SubscriptionId, u64>,
    closing: Option<Instant>,
    payloads: PayloadCache,
    jobs: VecDeque<(Job, Option<JobDone>)>,
    horizon: Duration,
    /// A read failed in this dispatch pass for a reason that may pass.
    read_failed: bool,
    /// The delivery policy of subscriptions met lately (dropped when the
    /// subscription changes).
    policies: HashMap<SubscriptionId, Policy>,
    /// The token buckets of rate-limited subscriptions.
    buckets: HashMap<SubscriptionId, Bucket>,
    /// FIFO subscriptions: the oldest delivery not known to be finished.
    /// Every older one is; the queue's head is found from here on.
    fifo_heads: HashMap<SubscriptionId, DeliveryId>,
    /// When to look for expired idempotency keys next (ms).
    next_key_sweep: u64,
    /// When to start the retention jobs next (ms).
    next_retention: u64,
    /// What `Bus::health` reads of this thread.
    vitals: Arc<super::Vitals>,
    /// The bytes of published payloads queued for this thread.
    queued: Arc<super::QueuedBytes>,
    /// When to poll a shared store for other instances' work next (ms).
    next_poll: u64,
    /// Subscriptions as last read (see [`Dispatcher::subscription`]).
    subs: HashMap<SubscriptionId, Arc<SubscriptionRecord>>,
    /// Who is indexed under an event name, as last read.
    fanout: HashMap<String, Arc<[SubscriptionId]>>,
    /// When a subscription's failure was last logged at WARN (ms), and how
    /// many were not logged since.
    warned: HashMap<SubscriptionId, (u64, u64)>,
}

/// A keyed publish whose key another writer holds, waiting.
struct Parked {
    event: Event,
    tenant: Option<String>,
    key: Keyed,
    done: Option<Done>,
    until: Instant,
}

/// How long a keyed publish waits for its key's lock (as long as the
/// store's lock timeout).
const KEY_WAIT: Duration = Duration::from_secs(15);
/// How often parked keyed publishes try again.
const PARK_TICK: Duration = Duration::from_millis(5);

/// The subscription cache is cleared when it holds this many.
const SUBSCRIPTION_CACHE: usize = 4096;

/// What the dispatcher needs to know of a subscription's policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Policy {
    rate: Option<RateLimit>,
    order: DeliveryOrder,
    /// A FIFO subscription halted at a dead letter.
    halted: bool,
    /// Inactive (deactivated, disabled): its pending deliveries wait.
    inactive: bool,
}

/// A success after at least this many failed attempts in a row is a
/// recovery notice.
const RECOVERY_AFTER: u64 = 3;
/// A subscription's failed attempts are logged at WARN at most this often.
const WARN_EVERY_MS: u64 = 60_000;

/// Retention runs at least this often.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

impl Dispatcher {
    fn run(mut self) -> Result<()> {
        // What was pending when the store was opened is due at once.
        self.poll_shared(now_ms());
        self.dispatch();
        self.finish_round();
        loop {
            self.wait_and_take();
            self.dispatch_early();
            self.retry_parked();
            self.finish_round();
            if !self.jobs.is_empty() {
                self.run_job_chunk();
                self.finish_round();
            }
            if self.closing.is_none() {
                self.poll_shared(now_ms());
                self.dispatch();
                self.sweep_keys();
                self.retention();
                self.finish_round();
            }
            if let Some(deadline) = self.closing
                && self.jobs.is_empty()
                && self.parked.is_empty()
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
        self.round_took_commands = false;
        let timeout = self.wait_time();
        let commands = self.commands.clone();
        select! {
            recv(commands) -> m => match m {
                Ok(c) => self.handle(c),
                Err(_) => self.begin_close(Instant::now()),
            },
            recv(self.outcomes) -> o => if let Ok(o) = o { self.on_outcome(o) },
            default(timeout) => {}
        }
        let mut taken = 0;
        while taken < MAX_ROUND && self.s.staged_writes() < MAX_ROUND_WRITES {
            match self.commands.try_recv() {
                Ok(c) => self.handle(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.begin_close(Instant::now());
                    break;
                }
            }
            taken += 1;
        }
        while let Ok(o) = self.outcomes.try_recv() {
            self.on_outcome(o);
        }
    }

    fn wait_time(&self) -> Duration {
        let wait = self.wait_for_work();
        match self.deferred_since {
            Some(since) => wait.min(DEFER_FOR.saturating_sub(since.elapsed())),
            None => wait,
        }
    }

    fn wait_for_work(&self) -> Duration {
        if !self.jobs.is_empty() {
            return Duration::ZERO;
        }
        if !self.parked.is_empty() {
            return PARK_TICK;
        }
        if let Some(deadline) = self.closing {
            return deadline.saturating_duration_since(Instant::now());
        }
        let sender_free = self.in_flight.len() < self.s.config.senders;
        if self.s.needs_rescan() && sender_free && self.s.config.deliver {
            // Due work changed and a sender is free: plan again at once.
            return Duration::ZERO;
        }
        match self.next_due {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_TICK),
            None => IDLE_TICK,
        }
    }

    fn begin_close(&mut self, deadline: Instant) {
        self.commands = crossbeam_channel::never();
        // Retention is the engine's own: it goes on after the next open.
        self.jobs.retain(|(j, _)| !j.background);
        if self.closing.is_none() {
            self.closing = Some(deadline);
        }
    }

    fn handle(&mut self, cmd: Command) {
        self.round_took_commands = true;
        if let Command::Poll = cmd {
            // Nothing to write: no flush for it.
            self.next_poll = 0;
            self.s.rescan();
            return;
        }
        // A publish without a waiter is no barrier: it is durable once a
        // barrier's round (or sled's own flusher, every few ms) flushes it,
        // so a stream of publishes costs one flush per barrier, not one per
        // round.
        if !matches!(cmd, Command::Publish { done: None, .. }) {
            self.round.flush_needed();
        }
        match cmd {
            Command::Poll => {}
            Command::Publish {
                event,
                tenant,
                key,
                done,
            } => {
                self.queued.give(event.payload.len());
                self.on_publish_command(event, tenant, key, done, None)
            }
            Command::Write(f) => self.on_write(f, true),
            Command::Quiet(f) => self.on_write(f, false),
            // Not a barrier: maintenance reports its own result only.
            Command::Job(job, done) => self.queue_job(job, Some(done)),
            Command::Shutdown(deadline) => self.begin_close(deadline),
        }
    }

    /// Stores a published event (see `Command::Publish`). One with an
    /// idempotency key another instance (or an app's `publish_in`
    /// transaction) holds the lock of now is parked instead: the engine
    /// never waits for another's lock. Parked ones are tried again every
    /// few ms (`retry_parked`) until `until` (first parked: now +
    /// [`KEY_WAIT`]), then fail.
    fn on_publish_command(
        &mut self,
        event: Event,
        tenant: Option<String>,
        key: Option<Keyed>,
        done: Option<Done>,
        until: Option<Instant>,
    ) {
        let locked = match &key {
            Some(k) => self.s.try_lock_key(&k.key),
            None => Ok(true),
        };
        let result = match locked {
            Ok(true) => match &key {
                Some(k) => self.on_keyed_publish(&event, tenant.as_deref(), k),
                None => self.on_publish(&event, tenant.as_deref()),
            },
            Ok(false) => {
                let until = until.unwrap_or_else(|| Instant::now() + KEY_WAIT);
                if Instant::now() < until
                    && self.closing.is_none()
                    && let Some(key) = key
                {
                    self.parked.push(Parked {
                        event,
                        tenant,
                        key,
                        done,
                        until,
                    });
                    return;
                }
                Err(store_error(&format!(
                    "the idempotency key of event {} is held by another writer (an instance publishing with it, or a publish_in transaction not yet ended) for over {KEY_WAIT:?}, or the bus is shutting down",
                    event.id
                )))
            }
            Err(e) => Err(e),
        };
        self.round.published(done.is_some());
        match done {
            Some(done) => {
                let r = self.round.take_loss().and(result);
                self.round.wait(done, r, true);
            }
            None => {
                if let Err(e) = result {
                    self.round
                        .note_loss(format!("event {} ({}): {e}", event.id, event.name));
                }
            }
        }
    }

    /// Tries the parked keyed publishes again (see
    /// [`on_publish_command`](Self::on_publish_command)).
    fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        self.round.flush_needed();
        for p in std::mem::take(&mut self.parked) {
            self.on_publish_command(p.event, p.tenant, Some(p.key), p.done, Some(p.until));
        }
    }

    /// Runs a change. A barrier (`report_loss`) also reports events lost
    /// since the last barrier; a quiet one (a health probe, acknowledging
    /// a notice) leaves that report for the app's next barrier.
    fn on_write(&mut self, f: super::WriteFn, report_loss: bool) {
        // The change must see every earlier one.
        self.commit();
        let lost = if report_loss {
            self.round.take_loss()
        } else {
            Ok(())
        };
        let done = f(&mut self.s);
        let mut jobs: Vec<Job> = self
            .s
            .take_job_requests()
            .into_iter()
            .map(Job::requested)
            .collect();
        let last = jobs.pop();
        for job in jobs {
            self.round.after_commit(job, None);
        }
        match (lost, last) {
            (Err(e), last) => {
                if let Some(job) = last {
                    self.round.after_commit(job, None);
                }
                self.round.wait(done, Err(e), false);
            }
            (Ok(()), None) => self.round.wait(done, Ok(()), true),
            // Completes when its maintenance is done, which starts only
            // once the change is committed (`commit`).
            (Ok(()), Some(job)) => {
                self.round
                    .after_commit(job, Some(Box::new(move |r| done(r.map(|_| ())))));
            }
        }
        self.commit();
    }

    /// Runs a maintenance job on this thread, in chunks; `done` gets how
    /// many records it changed. The engine's own background jobs
    /// (retention) go last; every other job goes before them, so a caller
    /// never waits behind a long purge (a background job started resumes
    /// where it was).
    fn queue_job(&mut self, job: Job, done: Option<JobDone>) {
        if job.background {
            self.jobs.push_back((job, done));
        } else {
            let at = self
                .jobs
                .iter()
                .position(|(j, _)| j.background)
                .unwrap_or(self.jobs.len());
            self.jobs.insert(at, (job, done));
        }
    }

    /// An event with an idempotency key: stored unless the key was used
    /// within the window; `key.holder` gets the id of the event holding it.
    /// The key's lock is held (on a shared store, instances publishing
    /// with one key take turns: each reads what the one before stored).
    fn on_keyed_publish(&mut self, event: &Event, tenant: Option<&str>, key: &Keyed) -> Result<()> {
        let now = now_ms();
        let window =
            u64::try_from(self.s.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        let held = match self.s.idempotency_key(&key.key) {
            Ok(held) => held,
            Err(e) if crate::engine::session::is_damage(&e) => {
                // A damaged key record is moved aside; the event is new.
                self.s.quarantine_error(&e);
                None
            }
            Err(e) => return Err(e),
        };
        if let Some((first, at)) = held
            && now.saturating_sub(at) < window
        {
            // The key binds the event: a retry sends the same one. (One
            // purged by retention, or unreadable, cannot be compared: the
            // key holds as it is.)
            if let Ok(Some(held)) = self.s.reader().event(first) {
                crate::message::key_binds(&key.key, first, &held, event, tenant)?;
            }
            let _ = key.holder.set(first);
            return Ok(());
        }
        // The key is recorded once the event is stored, even if some
        // subscription's damaged record was missed (reported below): a
        // retry with the key must not store it a second time.
        let (stored, result) = self.fan_out(event, tenant);
        if stored {
            self.s
                .put_idempotency_key(&key.key, event.id, now, held.map(|(_, at)| at));
            let _ = key.holder.set(event.id);
        }
        result
    }

    /// Forgets idempotency keys older than the window, a chunk at a time
    /// (at most every 10 minutes once none are left).
    fn sweep_keys(&mut self) {
        let now = now_ms();
        if now < self.next_key_sweep {
            return;
        }
        let window =
            u64::try_from(self.s.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(window);
        let found: Vec<Result<(String, u64)>> = self
            .s
            .reader()
            .idempotency_keys_before(cutoff)
            .take(super::maintenance::CHUNK)
            .collect();
        let full = found.len() == super::maintenance::CHUNK;
        for r in found {
            let r = r.and_then(|(key, at)| self.s.expire_idempotency_key(&key, at));
            if let Err(e) = r {
                tracing::error!(error = %e, "could not expire an idempotency key");
                self.s.quarantine_error(&e);
            }
        }
        self.next_key_sweep = if full {
            now
        } else {
            now.saturating_add(600_000)
        };
    }

    /// Starts the retention jobs (purge delivered history and dead letters
    /// past their windows, trim notices) when they are due and none is
    /// still running. They run in chunks like any maintenance.
    fn retention(&mut self) {
        let now = now_ms();
        if now < self.next_retention || self.jobs.iter().any(|(j, _)| j.background) {
            return;
        }
        let c = &self.s.config;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut jobs = Vec::new();
        if let Some(keep) = c.keep_delivered {
            jobs.push(Job::purge_delivered(now.saturating_sub(ms(keep))));
        }
        if let Some(keep) = c.keep_dead {
            jobs.push(Job::purge_dead(now.saturating_sub(ms(keep))));
        }
        jobs.push(Job::trim_notices());
        if self.s.reader().shared() {
            // Events created over 10 minutes ago with no delivery left.
            jobs.push(Job::sweep_orphans(now.saturating_sub(600_000)));
        }
        // Every quarter of the shortest window, at most once a minute and
        // at least every 250 ms apart.
        let shortest = [c.keep_delivered, c.keep_dead]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(RETENTION_EVERY);
        let every = (shortest / 4).clamp(Duration::from_millis(250), RETENTION_EVERY);
        self.next_retention = now.saturating_add(ms(every));
        for job in jobs {
            self.queue_job(job.in_background(), None);
        }
    }

    /// Fans an event out: to the active subscriptions of `tenant` that
    /// name it, or (no tenant) to the app-wide ones (and to tenants' ones
    /// if the configuration says so).
    fn on_publish(&mut self, event: &Event, tenant: Option<&str>) -> Result<()> {
        self.fan_out(event, tenant).1
    }

    /// [`on_publish`](Self::on_publish), also saying whether the event was
    /// stored (to every subscription found, or to none of them: `false`).
    fn fan_out(&mut self, event: &Event, tenant: Option<&str>) -> (bool, Result<()>) {
        let app_events_to_tenants = self.s.config.tenants_receive_app_events;
        let ids = match self.subscribers_of(&event.name) {
            Ok(ids) => ids,
            Err(e) => return (false, Err(e)),
        };
        let mut subs = Vec::with_capacity(ids.len());
        let mut missed = Vec::new();
        for &id in ids.iter() {
            match self.subscription(id) {
                Ok(Some(s)) if s.takes(&event.name, tenant, app_events_to_tenants) => subs.push(id),
                Ok(_) => {}
                Err(e) => {
                    self.s.quarantine_error(&e);
                    missed.push(format!("subscription {id}: {e}"));
                }
            }
        }
        if let Err(e) = self.s.publish(event, &subs) {
            return (false, Err(e));
        }
        tracing::trace!(event = %event.name, id = %event.id, deliveries = subs.len(), "event published");
        if missed.is_empty() {
            (true, Ok(()))
        } else {
            (
                true,
                Err(store_error(&format!(
                    "not delivered to {} subscription(s) whose record is damaged (moved aside): {}",
                    missed.len(),
                    missed.join(", ")
                ))),
            )
        }
    }

    /// Commits what is staged; if that fails, the waiters whose writes were
    /// in it fail, and events without a waiter count as lost.
    fn commit(&mut self) {
        // Committed (or failed, and then the store still shows them
        // pending: sent again, at least once). Plan again on the store as
        // it now is.
        if !self.settling.is_empty() {
            self.s.rescan();
        }
        self.settling.clear();
        self.settling_subs.clear();
        self.deferred_since = None;
        self.outcome_writes = 0;
        let r = self.s.commit();
        for (job, done) in self.round.committed(r) {
            self.queue_job(job, done);
        }
    }

    /// Flushes what is committed (see [`Round::flushed`]).
    fn flush(&mut self) -> Result<()> {
        let r = self.s.flush();
        self.round.flushed(&r);
        r
    }

    /// Commits and flushes what this round wrote, then completes its waiters.
    fn finish_round(&mut self) {
        if self.defer_commit() {
            return;
        }
        self.commit();
        let changes = self.s.take_changes();
        for (sub, at) in changes.added {
            let e = self.due_subs.entry(sub).or_insert(at);
            *e = (*e).min(at);
        }
        if !changes.changed_subs.is_empty() {
            self.fanout.clear();
        }
        for sub in changes.changed_subs {
            self.subs.remove(&sub);
            self.policies.remove(&sub);
            self.fifo_heads.remove(&sub);
            self.buckets.remove(&sub);
            // A new URL starts slowly again.
            self.windows.remove(&sub);
            // A changed subscription (a new URL, say) is not held to the
            // old receiver's "slow down".
            if let Some(flow) = self.flows.get_mut(&sub) {
                flow.paused_until = 0;
            }
        }
        for sub in changes.revived_subs {
            self.fifo_heads.remove(&sub);
        }
        for sub in changes.touched {
            match self.s.reader().due(sub).next().transpose() {
                Ok(Some(e)) => {
                    self.due_subs.insert(sub, e.at);
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
        if self.round.wants_flush() {
            self.round.flush_started();
            let _ = self.flush();
        }
        self.round.finish();
        let senders = self.pool.as_ref().map_or(0, sender::Pool::alive);
        self.vitals
            .in_flight
            .store(self.in_flight.len(), std::sync::atomic::Ordering::Relaxed);
        self.vitals
            .senders_alive
            .store(senders, std::sync::atomic::Ordering::Relaxed);
        telemetry::round(self.in_flight.len(), self.s.pending());
    }

    fn run_job_chunk(&mut self) {
        let Some((job, _)) = self.jobs.front_mut() else {
            return;
        };
        let step = job.step(&mut self.s);
        if let Err(e) = &step
            && job.background
        {
            // No caller hears of it: retention tries again at its next turn.
            tracing::error!(error = %e, job = ?job, "retention job stopped early");
        }
        let finished = match step {
            Ok(true) => true,
            Ok(false) => false,
            Err(_) => true,
        };
        // A chunk is one atomic round of its own.
        if let Err(e) = self.s.commit() {
            tracing::error!(error = %e, "maintenance chunk could not be written");
            if let Some((_, Some(done))) = self.jobs.pop_front() {
                self.round
                    .wait(Box::new(move |_| done(Err(e))), Ok(()), false);
            }
            return;
        }
        self.round.flush_needed();
        if finished && let Some((job, done)) = self.jobs.pop_front() {
            let count = job.count;
            let result = step.map(|_| count);
            if let Some(done) = done {
                self.round.wait(
                    Box::new(move |flushed| done(flushed.and(result))),
                    Ok(()),
                    false,
                );
            }
        }
    }

    fn on_outcome(&mut self, o: Outcome) {
        self.in_flight.remove(&o.delivery);
        self.settling.insert(o.delivery);
        self.settling_subs.insert(o.subscription);
        let flow = self.flows.entry(o.subscription).or_default();
        let heard = flow.heard(
            now_ms(),
            o.attempt.error.as_ref().map(|e| e.kind),
            o.attempt.status,
            o.retry_after,
            self.s.config.circuit_breaker(),
            self.s.config.per_subscription,
        );
        if let Some(wait_ms) = heard.opened {
            tracing::warn!(subscription = %o.subscription, failures = flow.failures, wait_ms, "circuit breaker open: the subscription's backlog waits");
        }
        if heard.closed {
            tracing::info!(subscription = %o.subscription, "circuit breaker closed: the receiver answers again");
        }
        if let Some(pause) = heard.paused {
            // "Too many requests": the whole subscription waits, not only
            // this delivery (which is retried on its own schedule, no
            // sooner).
            tracing::info!(subscription = %o.subscription, status = o.attempt.status, pause_ms = pause, "receiver asked to slow down: subscription paused");
            // Every instance of a shared store holds back too.
            if self.s.reader().shared()
                && let Err(e) = self.s.reader().pause(o.subscription, pause)
            {
                tracing::warn!(subscription = %o.subscription, error = %e, "could not share a receiver's pause with the other instances");
            }
        }
        // Idle and well: its flow goes, the window it earned stays.
        if flow.in_flight == 0
            && !flow.failing()
            && flow.paused_until <= now_ms()
            && let Some(flow) = self.flows.remove(&o.subscription)
            && flow.window > INITIAL_WINDOW
        {
            self.windows.insert(o.subscription, flow.window);
        }
        self.s.rescan();
        // A FIFO queue's outcomes are flushed in their round: one lost in a
        // crash would send an acknowledged delivery again after later ones
        // (out of order), not merely twice.
        if self.policy(o.subscription).order.is_fifo() {
            self.round.flush_needed();
        }
        self.note_health(o.subscription, &o.attempt);
        let decision = decide(
            &self.s.config.retry_schedule,
            &o.attempt,
            o.retry_after,
            fastrand::f64(),
        );
        let staged = self.s.staged_writes();
        let recorded = self.s.record_attempt(o.delivery, &o.attempt, &decision);
        self.outcome_writes += self.s.staged_writes().saturating_sub(staged);
        match recorded {
            Ok(true) => {
                if let Err(e) = self.deactivate(o.subscription) {
                    tracing::error!(subscription = %o.subscription, error = %e, "could not deactivate");
                }
            }
            Ok(false) if matches!(decision, crate::retry::Decision::Dead(_)) => {
                self.halt_if_fifo(o.subscription, o.delivery);
            }
            Ok(false) => {}
            // The delivery stays pending as stored: it is sent again.
            Err(e) => {
                tracing::error!(delivery = %o.delivery, error = %e, "could not record a delivery attempt")
            }
        }
    }

    /// Adds an attempt to its subscription's health: a failure is logged
    /// at WARN (at most once a minute per subscription, with how many
    /// were not logged); a success after a run of failures is a recovery
    /// notice; failing for the whole auto-disable window disables the
    /// subscription (its pending deliveries wait).
    fn note_health(&mut self, sub: SubscriptionId, attempt: &crate::record::Attempt) {
        let (before, after) = self.s.note_attempt(sub, attempt);
        let now = Timestamp::now();
        if attempt.succeeded() {
            if before.consecutive_failures >= RECOVERY_AFTER {
                tracing::info!(subscription = %sub, failures = before.consecutive_failures, "subscription answers again");
                self.s.notice(NoticeKind::SubscriptionRecovered {
                    subscription: sub,
                    failures: before.consecutive_failures,
                });
            }
            self.warned.remove(&sub);
            return;
        }
        let reason = crate::health::failure_reason(attempt);
        let w = self.warned.entry(sub).or_insert((0, 0));
        if now.as_millis().saturating_sub(w.0) >= WARN_EVERY_MS {
            tracing::warn!(subscription = %sub, attempt = attempt.number, %reason, failures = after.consecutive_failures, not_logged = w.1, "delivery attempt failed");
            *w = (now.as_millis(), 0);
        } else {
            w.1 += 1;
        }
        if self.warned.len() > SUBSCRIPTION_CACHE {
            self.warned.clear();
        }
        let Some(window) = self.s.config.auto_disable_after else {
            return;
        };
        if !after.failing_for(window, now) {
            return;
        }
        let since = after.failing_since.unwrap_or(now);
        let why = format!(
            "every attempt failed since {since} ({} in a row; last: {reason})",
            after.consecutive_failures
        );
        if let Err(e) = self.disable(sub, why) {
            tracing::error!(subscription = %sub, error = %e, "could not disable a failing subscription");
        }
    }

    /// Disables an active subscription (`why` goes to its health and a
    /// notice): no new deliveries, its pending ones wait. Returns whether
    /// it was active.
    fn disable(&mut self, id: SubscriptionId, why: String) -> Result<bool> {
        self.s.lock_subscriptions()?;
        let Some(mut s) = self.s.subscription(id)?.filter(|s| s.active) else {
            return Ok(false);
        };
        tracing::warn!(subscription = %id, url = %crate::redact::url(&s.url), reason = %why, "subscription disabled; its pending deliveries wait until it is enabled again");
        let old = s.clone();
        s.active = false;
        s.modified_at = Timestamp::now();
        self.s.put_subscription(Some(&old), &s);
        self.s.set_disabled(id, Some((s.modified_at, why.clone())));
        self.s.notice(NoticeKind::SubscriptionDisabled {
            subscription: id,
            reason: why,
        });
        Ok(true)
    }

    /// A FIFO subscription that halts at dead letters halts at `dead`.
    fn halt_if_fifo(&mut self, sub: SubscriptionId, dead: DeliveryId) {
        let halts = matches!(
            self.policy(sub).order,
            DeliveryOrder::Fifo {
                on_dead_letter: OnDeadLetter::Halt
            }
        );
        if !halts {
            return;
        }
        if let Err(e) = self.s.lock_subscriptions() {
            tracing::error!(subscription = %sub, error = %e, "could not halt a FIFO subscription");
            return;
        }
        match self.s.subscription(sub) {
            Ok(Some(mut s)) if s.halted_at.is_none() => {
                tracing::warn!(subscription = %sub, delivery = %dead, "FIFO subscription halted at a dead letter; resume it to go on");
                let old = s.clone();
                s.halted_at = Some(dead);
                s.modified_at = Timestamp::now();
                self.s.put_subscription(Some(&old), &s);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(subscription = %sub, error = %e, "could not halt a FIFO subscription")
            }
        }
    }

    /// The delivery policy of `sub` (default if it cannot be read: the
    /// delivery itself then finds out why).
    fn policy(&mut self, sub: SubscriptionId) -> Policy {
        if let Some(p) = self.policies.get(&sub) {
            return *p;
        }
        match self.s.reader().subscription(sub) {
            Ok(Some(r)) => {
                let p = Policy {
                    rate: r.rate_limit,
                    order: r.order,
                    halted: r.halted_at.is_some() && r.order.is_fifo(),
                    inactive: !r.active,
                };
                self.policies.insert(sub, p);
                p
            }
            // Gone: nothing to keep (its deliveries find out in `prepare`).
            Ok(None) => Policy::default(),
            // Not cached: read again soon.
            Err(e) => {
                tracing::error!(subscription = %sub, error = %e, "could not read a subscription's policy; will try again");
                self.retry_soon();
                Policy::default()
            }
        }
    }

    /// The head of a FIFO subscription's queue: its oldest pending
    /// delivery. `None` if it has none, or it could not be read (then it
    /// is looked at again soon).
    fn fifo_head(&mut self, sub: SubscriptionId) -> Option<IndexEntry> {
        // With other instances, ids do not come in commit order (each
        // instance's clock, a late commit): the head is looked up afresh.
        let cursor = if self.s.reader().shared() {
            None
        } else {
            self.fifo_heads.get(&sub).copied()
        };
        let found = match cursor {
            // Walk on from the last head: every older one is finished.
            Some(from) => self.fifo_walk(sub, from),
            // Not known (first look, or a dead letter was revived): the
            // oldest of its pending deliveries.
            None => {
                let mut min: Option<IndexEntry> = None;
                let mut failed = None;
                for e in self.s.reader().due(sub) {
                    match e {
                        Ok(e) => {
                            if min.is_none_or(|m| e.delivery < m.delivery) {
                                min = Some(e);
                            }
                        }
                        // A damaged index entry is moved aside, not met again.
                        Err(e) if crate::engine::session::is_damage(&e) => {
                            self.s.quarantine_error(&e);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    Some(e) => Err(e),
                    None => Ok(min),
                }
            }
        };
        match found {
            Ok(Some(e)) => {
                self.fifo_heads.insert(sub, e.delivery);
                Some(e)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(subscription = %sub, error = %e, "could not find the head of a FIFO queue; will try again");
                self.retry_soon();
                None
            }
        }
    }

    /// The oldest pending delivery of `sub` from `from` on. A delivery
    /// record that does not decode is quarantined on the way (if it is
    /// pending) and skipped, so it cannot stall the queue.
    fn fifo_walk(&mut self, sub: SubscriptionId, from: DeliveryId) -> Result<Option<IndexEntry>> {
        let ids: Vec<Result<DeliveryId>> = self.s.reader().deliveries_of_from(sub, from).collect();
        for id in ids {
            let id = match id {
                Ok(id) => id,
                Err(e) if crate::engine::session::is_damage(&e) => {
                    self.s.quarantine_error(&e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.s.delivery(id) {
                Ok(Some(d)) if d.state == DeliveryState::Pending => {
                    return Ok(Some(IndexEntry::of(&d)));
                }
                Ok(_) => {}
                Err(e) if crate::engine::session::is_damage(&e) => {
                    // Its pending-index entry, if it is pending: quarantined
                    // with it, so the counters stay right.
                    let entry = self
                        .s
                        .reader()
                        .due(sub)
                        .filter_map(Result::ok)
                        .find(|x| x.delivery == id);
                    if let Some(entry) = entry {
                        self.s.on_read_error(DeliveryState::Pending, entry, &e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// 410 Gone: the subscription is deactivated and its pending deliveries
    /// die (in chunks, after this round).
    fn deactivate(&mut self, id: SubscriptionId) -> Result<()> {
        if self.disable(id, reason::GONE.to_owned())? {
            // Once the disable is committed (see `commit`).
            self.round
                .after_commit(Job::dead_letter_pending(id, reason::GONE), None);
        }
        Ok(())
    }

    /// A round of outcomes alone hands out the next jobs before it commits,
    /// so senders work while the store writes (the commit is most of a
    /// round's time with few senders). Safe then: the store differs from
    /// what it shows only in the settling deliveries, which are skipped.
    /// Not in a round that took commands or changed a subscription (an
    /// auto-disable, a FIFO halt, a revival), nor for a shared store
    /// (claims), nor while closing.
    fn dispatch_early(&mut self) {
        if self.settling.is_empty()
            || self.round_took_commands
            || self.closing.is_some()
            || self.s.subscriptions_changed()
            || self.s.reader().shared()
        {
            return;
        }
        self.dispatch();
    }

    /// Whether this round's commit can wait: a round of outcomes alone
    /// (under the conditions of [`dispatch_early`](Self::dispatch_early),
    /// no waiter, nothing to flush, no maintenance) is committed together
    /// with the next ones, up to [`DEFER_MAX`] outcomes or [`DEFER_FOR`]
    /// after the first. Each sled commit costs about as much as a
    /// request to a local receiver (it hands its log buffer to sled's I/O
    /// threads twice), so with few senders one per outcome halves their
    /// rate. What waits is only outcomes: until committed they are lost in
    /// a crash as unflushed ones are (the deliveries are sent again), the
    /// dispatcher skips their deliveries (`settling`), and the outbox's
    /// listings and counters show them up to [`DEFER_FOR`] late.
    fn defer_commit(&mut self) -> bool {
        let eligible = !self.settling.is_empty()
            && !self.round.has_waiters()
            && !self.round.must_flush()
            && !self.round_took_commands
            && self.parked.is_empty()
            && self.jobs.is_empty()
            && self.closing.is_none()
            && !self.s.subscriptions_changed()
            // Only outcomes' writes: anything else staged (a delivery the
            // dispatcher quarantined or finished instead of sending, an
            // expired key) would be met again, as the store still shows it,
            // by the next pass before the commit.
            && self.s.staged_writes() == self.outcome_writes
            && self.outcome_writes < MAX_ROUND_WRITES
            && self.settling.len() < DEFER_MAX
            && !self.s.reader().shared();
        if !eligible {
            return false;
        }
        let since = *self.deferred_since.get_or_insert_with(Instant::now);
        since.elapsed() < DEFER_FOR
    }

    /// Hands due deliveries to free senders, fairly between subscriptions.
    fn dispatch(&mut self) {
        if !self.s.config.deliver {
            return;
        }
        let config = &self.s.config;
        let limits = Limits {
            total: config.senders,
            per_subscription: config.per_subscription,
            per_host: config.per_host,
        };
        let free = limits.total.saturating_sub(self.in_flight.len());
        let now = now_ms();
        let due_now = self.next_due.is_some_and(|at| at <= now);
        if !(self.s.needs_rescan() || due_now) {
            return;
        }
        if free == 0 {
            // Every slot is busy: an outcome wakes the loop, not the clock.
            self.next_due = None;
            return;
        }
        // Nothing leaves before the round that created it is durable: a
        // receiver must never see a delivery (or a sequence number) that a
        // crash could take back. Under load this is the round's group
        // commit; a failed flush holds everything back until one succeeds.
        if self.round.unflushed_publishes() && self.flush().is_err() {
            // Try again in a while (a full pass then), not in a busy loop.
            self.s.rescanned();
            self.next_due = Some(now.saturating_add(100));
            return;
        }
        self.s.rescanned();
        self.read_failed = false;
        // Subscriptions with due work whose breaker lets them send, and
        // when the next one falls due (or a breaker half-opens).
        let mut candidates: Vec<SubscriptionId> = Vec::new();
        let mut next: Option<u64> = None;
        fn wake(next: &mut Option<u64>, at: u64) {
            *next = Some(next.map_or(at, |n| n.min(at)));
        }
        for (sub, at) in &self.due_subs {
            if !delivery::is_due(*at, now, self.horizon) {
                wake(&mut next, *at);
                continue;
            }
            if let Some(flow) = self.flows.get_mut(sub) {
                if let Some(until) = flow.open_until() {
                    if until > now {
                        wake(&mut next, until);
                        continue;
                    }
                    flow.breaker = Breaker::HalfOpen;
                }
                if flow.paused_until > now {
                    wake(&mut next, flow.paused_until);
                    continue;
                }
            }
            candidates.push(*sub);
        }
        // Their own policies: a halted FIFO queue waits for a person; a
        // rate limit lets as many start as it has tokens; a FIFO queue
        // sends its head alone, once it is due.
        let mut ready: Vec<SubscriptionId> = Vec::with_capacity(candidates.len());
        let mut starts: HashMap<SubscriptionId, usize> = HashMap::new();
        let mut heads: HashMap<SubscriptionId, IndexEntry> = HashMap::new();
        for sub in candidates {
            let policy = self.policy(sub);
            if policy.halted || policy.inactive {
                continue;
            }
            let mut n = usize::MAX;
            if let Some(limit) = policy.rate {
                let bucket = self
                    .buckets
                    .entry(sub)
                    .or_insert_with(|| Bucket::full(limit, now));
                bucket.refill(limit, now);
                n = bucket.available();
                if n == 0 {
                    wake(&mut next, bucket.ready_at(limit));
                    continue;
                }
            }
            if policy.order.is_fifo() {
                // One in flight: its outcome wakes the loop. The next head
                // waits until that outcome is committed too: sent before,
                // a crash in between would send the acknowledged one again
                // after it (out of order).
                if self.flows.get(&sub).is_some_and(|f| f.in_flight > 0)
                    || self.settling_subs.contains(&sub)
                {
                    continue;
                }
                let Some(head) = self.fifo_head(sub) else {
                    continue;
                };
                if !delivery::is_due(head.at, now, self.horizon) {
                    wake(&mut next, head.at);
                    continue;
                }
                heads.insert(sub, head);
                n = 1;
            }
            if n != usize::MAX {
                starts.insert(sub, n);
            }
            ready.push(sub);
        }
        self.next_due = match (self.next_due, next) {
            // A read to try again soon, set while looking at heads.
            (Some(soon), Some(n)) if self.read_failed => Some(soon.min(n)),
            (Some(soon), None) if self.read_failed => Some(soon),
            (_, n) => n,
        };
        if ready.is_empty() {
            return;
        }
        // Round-robin: in id order, starting after the last one served.
        ready.sort_unstable();
        if let Some(c) = self.rr_cursor {
            let split = ready.partition_point(|s| *s <= c);
            ready.rotate_left(split);
        }
        // Ready ones that are idle start from the window they earned.
        for sub in &ready {
            if let Some(&window) = self.windows.get(sub) {
                self.flows.entry(*sub).or_insert(Flow {
                    window,
                    ..Flow::default()
                });
            }
        }
        for flow in self.flows.values_mut() {
            flow.check_stall(now);
        }
        let mut host_in_flight = vec![0usize; self.host_index.len()];
        for (sub, flow) in &self.flows {
            if let Some(h) = self.hosts.get(sub) {
                host_in_flight[*h] += flow.in_flight;
            }
        }
        let hosts = &self.hosts;
        let host = |s: SubscriptionId| hosts.get(&s).copied();
        let own = |s: SubscriptionId| starts.get(&s).copied().unwrap_or(usize::MAX);
        let plan = scheduler::plan(
            limits,
            free,
            &ready,
            &self.flows,
            &host,
            &mut host_in_flight,
            &own,
        );
        for (sub, room) in plan {
            self.rr_cursor = Some(sub);
            let sent = match heads.get(&sub) {
                Some(head) if self.s.reader().shared() => {
                    let Some((rate, _)) = self.take_shared_tokens(sub, 1, now) else {
                        continue;
                    };
                    match self.s.reader().claim_one(head.delivery, now) {
                        Ok(Some(e)) => self.send(sub, vec![e]),
                        // Another instance sends it (or a receiver's pause
                        // holds every instance back).
                        Ok(None) => {
                            self.give_back_tokens(sub, rate, 1);
                            true
                        }
                        Err(e) => {
                            tracing::error!(subscription = %sub, error = %e, "could not claim a FIFO head; will try again");
                            self.retry_soon();
                            true
                        }
                    }
                }
                Some(head) => self.send(sub, vec![*head]),
                None => self.send_due(sub, room, now),
            };
            if !sent {
                return;
            }
        }
    }

    /// In a shared store other instances add deliveries this one does not
    /// see: look at what is pending there every `Config::shared_poll` (and
    /// when a notification says so: [`Command::Poll`]).
    fn poll_shared(&mut self, now: u64) {
        if !self.s.reader().shared() || now < self.next_poll {
            return;
        }
        let every = u64::try_from(self.s.config.shared_poll.as_millis()).unwrap_or(u64::MAX);
        self.next_poll = now.saturating_add(every);
        // Other instances may have changed subscriptions.
        self.subs.clear();
        self.fanout.clear();
        self.policies.clear();
        self.fifo_heads.clear();
        self.s.forget_health_views();
        if !self.s.config.deliver {
            return;
        }
        match self.s.reader().pending_subscriptions() {
            Ok((due, _)) => {
                self.due_subs = due.into_iter().collect();
                self.s.rescan();
            }
            Err(e) => tracing::error!(error = %e, "could not poll the shared store"),
        }
        // Wake for the next poll.
        self.wake_at(self.next_poll);
    }

    /// Sends up to `room` due deliveries of `sub`. Returns `false` when the
    /// senders took no more.
    fn send_due(&mut self, sub: SubscriptionId, room: usize, now: u64) -> bool {
        if self.s.reader().shared() {
            // A rate limit holds for every instance together: its tokens
            // come from the store first (a receiver's pause counts too).
            let Some((rate, room)) = self.take_shared_tokens(sub, room, now) else {
                return true;
            };
            // Other instances send too: take only what this one claims.
            return match self.s.reader().claim(sub, room, now, now) {
                Ok(mut batch) => {
                    // Never a second request for one of its own in flight
                    // (a claim of its own that ran out).
                    batch.retain(|e| !self.in_flight.contains(&e.delivery));
                    self.give_back_tokens(sub, rate, room - batch.len());
                    self.send(sub, batch)
                }
                Err(e) => {
                    tracing::error!(subscription = %sub, error = %e, "could not claim due deliveries; will try again");
                    self.retry_soon();
                    true
                }
            };
        }
        // Its due deliveries not already in flight: at most `in_flight`
        // entries are skipped on the way.
        let mut batch = Vec::with_capacity(room);
        for entry in self.s.reader().due(sub) {
            match entry {
                Ok(e) if !delivery::is_due(e.at, now, self.horizon) => break,
                Ok(e)
                    if self.in_flight.contains(&e.delivery)
                        || self.settling.contains(&e.delivery) => {}
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
        self.send(sub, batch)
    }

    /// Hands these due deliveries of `sub` to the senders. Returns `false`
    /// when the senders took no more.
    fn send(&mut self, sub: SubscriptionId, batch: Vec<IndexEntry>) -> bool {
        for e in batch {
            let Some(job) = self.prepare(e) else {
                // Finished instead of sent: the room it would have taken
                // goes to the next due one. (A read that failed for a
                // passing reason is looked at again in a second instead.)
                if !self.read_failed {
                    self.s.rescan();
                }
                continue;
            };
            let in_flight = self.in_flight.len() + 1;
            let Some(pool) = &mut self.pool else {
                return false;
            };
            if let Err(err) = pool.submit(job, in_flight) {
                tracing::error!(error = %err, "could not hand a delivery to a sender");
                return false;
            }
            self.in_flight.insert(e.delivery);
            let flow = self.flows.entry(sub).or_default();
            if flow.in_flight == 0 {
                flow.heard_at = now_ms();
            }
            flow.in_flight += 1;
            if self.policies.get(&sub).is_some_and(|p| p.rate.is_some())
                && let Some(bucket) = self.buckets.get_mut(&sub)
            {
                bucket.take();
            }
        }
        true
    }

    /// Loads what a due delivery needs. Deliveries that cannot be sent (their
    /// subscription is gone or inactive, their event is missing, their
    /// record is damaged) are finished here instead.
    fn prepare(&mut self, entry: IndexEntry) -> Option<sender::Job> {
        let d = match self.s.delivery(entry.delivery) {
            Ok(Some(d)) if d.state == DeliveryState::Pending => d,
            Ok(_) => {
                self.s.drop_entry(DeliveryState::Pending, entry);
                return None;
            }
            Err(e) => {
                if !self.s.on_read_error(DeliveryState::Pending, entry, &e) {
                    self.retry_soon();
                }
                return None;
            }
        };
        let sub = match self.subscription(d.subscription_id) {
            Ok(Some(s)) if s.active => s,
            // Paused while inactive: the next pass skips it by its policy.
            Ok(Some(_)) => {
                self.policies.remove(&d.subscription_id);
                return None;
            }
            Ok(None) => return self.dead_letter(&d, reason::DELETED),
            Err(e) => return self.unreadable(&d, "subscription", &e),
        };
        // Its host, as of its current URL.
        let key = host_key(&sub.url);
        let next = self.host_index.len();
        let i = *self.host_index.entry(key).or_insert(next);
        self.hosts.insert(d.subscription_id, i);
        let payload = match self.payload(d.event_id) {
            Ok(Some(p)) => p,
            Ok(None) => return self.dead_letter(&d, reason::EVENT_MISSING),
            Err(e) => return self.unreadable(&d, "event", &e),
        };
        let attempt = delivery::next_attempt_number(&d);
        let mut job = sender::Job::to(&sub, d.id, d.event_id, d.event_name, attempt, payload);
        job.sequence = d.sequence;
        Some(job)
    }

    /// Drops what the caches hold of subscriptions changed in this round
    /// (they are seen by the very next publish).
    fn sync_caches(&mut self) {
        if self.s.changed_subscriptions().is_empty() {
            return;
        }
        self.fanout.clear();
        for id in self.s.changed_subscriptions() {
            self.subs.remove(id);
        }
    }

    /// The subscriptions indexed under `event` or `*` (active or not), as
    /// of this instance's last look (see [`Dispatcher::subscription`]).
    fn subscribers_of(&mut self, event: &str) -> Result<Arc<[SubscriptionId]>> {
        self.sync_caches();
        if let Some(ids) = self.fanout.get(event) {
            return Ok(ids.clone());
        }
        let found = self.s.reader().subscribers_of(event)?;
        if !found.damaged.is_empty() {
            self.s.quarantine(&found.damaged);
        }
        if self.fanout.len() >= SUBSCRIPTION_CACHE {
            self.fanout.clear();
        }
        let ids: Arc<[SubscriptionId]> = found.ids.into();
        self.fanout.insert(event.to_owned(), ids.clone());
        Ok(ids)
    }

    /// A subscription as of this instance's last look: cached until it
    /// changes here, and (a shared store, where other instances change
    /// subscriptions too) until the next poll.
    fn subscription(&mut self, id: SubscriptionId) -> Result<Option<Arc<SubscriptionRecord>>> {
        self.sync_caches();
        if let Some(r) = self.subs.get(&id) {
            return Ok(Some(r.clone()));
        }
        let Some(r) = self.s.reader().subscription(id)? else {
            return Ok(None);
        };
        if self.subs.len() >= SUBSCRIPTION_CACHE {
            self.subs.clear();
        }
        let r = Arc::new(r);
        self.subs.insert(id, r.clone());
        Ok(Some(r))
    }

    /// A record a delivery needs could not be read: a damaged one
    /// dead-letters the delivery; any other error may pass, so it is looked
    /// at again in a second.
    fn unreadable(
        &mut self,
        d: &crate::delivery::Delivery,
        what: &str,
        e: &Error,
    ) -> Option<sender::Job> {
        if crate::engine::session::is_damage(e) {
            return self.dead_letter(d, &format!("{what} record is damaged: {e}"));
        }
        tracing::error!(delivery = %d.id, error = %e, what, "could not read a record; will try again");
        self.retry_soon();
        None
    }

    /// A read failed for a reason that may pass: look again in a second.
    fn retry_soon(&mut self) {
        self.read_failed = true;
        self.wake_at(now_ms().saturating_add(1000));
    }

    /// Wakes the loop by `at` (ms) at the latest.
    fn wake_at(&mut self, at: u64) {
        self.next_due = Some(self.next_due.map_or(at, |n| n.min(at)));
    }

    /// A shared store: how many of `want` requests `sub` may start now
    /// under its rate limit, which holds for every instance together (its
    /// tokens come from the store, and a receiver's pause counts too), with
    /// the limit to give unused tokens back to. `None`: none may start; the
    /// loop wakes when one may (or soon, after a failed read).
    fn take_shared_tokens(
        &mut self,
        sub: SubscriptionId,
        want: usize,
        now: u64,
    ) -> Option<(Option<RateLimit>, usize)> {
        let Some(limit) = self.policies.get(&sub).and_then(|p| p.rate) else {
            return Some((None, want));
        };
        match self.s.reader().take_tokens(sub, want, limit) {
            Ok((0, wait)) => {
                self.wake_at(now.saturating_add(wait));
                None
            }
            Ok((granted, _)) => Some((Some(limit), granted)),
            Err(e) => {
                tracing::error!(subscription = %sub, error = %e, "could not take rate-limit tokens; will try again");
                self.retry_soon();
                None
            }
        }
    }

    /// Gives `unused` tokens of `sub`'s shared rate limit back.
    fn give_back_tokens(&self, sub: SubscriptionId, rate: Option<RateLimit>, unused: usize) {
        if let Some(limit) = rate
            && unused > 0
            && let Err(e) = self.s.reader().return_tokens(sub, unused, limit)
        {
            tracing::warn!(subscription = %sub, error = %e, "could not give back unused rate-limit tokens");
        }
    }

    fn dead_letter(&mut self, d: &crate::delivery::Delivery, why: &str) -> Option<sender::Job> {
        self.s.dead_letter(d, why);
        None
    }

    fn payload(&mut self, id: EventId) -> Result<Option<sender::Body>> {
        if let Some(p) = self.payloads.map.get(&id) {
            return Ok(Some(p.clone()));
        }
        let Some(event) = self.s.reader().event(id)? else {
            return Ok(None);
        };
        if self.payloads.bytes + event.payload.len() > PAYLOAD_CACHE_BYTES {
            self.payloads.map.clear();
            self.payloads.bytes = 0;
        }
        let p = sender::Body {
            payload: event.payload.into(),
            traceparent: event.traceparent.map(Into::into),
        };
        self.payloads.bytes += p.payload.len();
        self.payloads.map.insert(id, p.clone());
        Ok(Some(p))
    }

    /// Final flush; the senders are told to stop, and their outcomes are
    /// recorded until they have all ended or the deadline passes (a sender
    /// still inside a request then is left to end on its own: its delivery
    /// stays pending and is sent after the next open).
    fn stop(mut self) -> Result<()> {
        self.finish_round();
        if let Some(pool) = &mut self.pool {
            pool.close();
        }
        let deadline = self.closing.unwrap_or_else(Instant::now);
        // Each sender holds the outcome channel until it ends: it reads as
        // disconnected once all have.
        let all_ended = self.pool.is_none()
            || loop {
                match self.outcomes.recv_deadline(deadline) {
                    Ok(o) => self.on_outcome(o),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break true,
                    Err(RecvTimeoutError::Timeout) => break false,
                }
            };
        if all_ended {
            if let Some(pool) = &mut self.pool {
                pool.join();
            }
        } else {
            tracing::warn!(
                in_flight = self.in_flight.len(),
                "shutdown deadline passed with requests in flight; they stay pending and are sent after the next open"
            );
        }
        while !self.jobs.is_empty() {
            self.run_job_chunk();
        }
        self.round.flush_needed();
        self.finish_round();
        self.s.commit()?;
        self.s.flush()?;
        // Shutdown is a barrier: a loss no barrier reported is its result.
        self.round.take_loss()
    }
}

/// A destination host as the per-host cap counts it: host and port.
fn host_key(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_owned(),
    }
}
