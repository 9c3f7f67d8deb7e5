//! The engine thread's loop: the one writer. It takes commands (published
//! events, changes, barriers, maintenance) from the command channel and
//! outcomes from the senders, and passes the write [`Session`] to the
//! rooms that own the engine's state, one round at a time:
//!
//! * [`Round`]: the round's waiters, loss report and what it must flush;
//! * [`Intake`]: published events, idempotency keys, parked keyed ones;
//! * [`Jobs`]: maintenance and retention, in chunks;
//! * [`Dispatch`]: due work, flows, claims, FIFO heads, the senders;
//! * [`Outcomes`]: what an attempt changes (delivery, health, lifecycle);
//! * [`Directory`]: what is known of subscriptions, and the fan-out rule.
//!
//! A round commits what it staged, flushes once if a barrier waits in it
//! (group commit), and completes its waiters, each with its own result.
//! Data flows one way: publish → engine → store → senders → outcomes →
//! engine.
//!
//! Errors are per command and sticky: a command that fails gets its own
//! error; a published event without a waiter that could not be stored (or
//! could not reach a subscription) is reported to the next barrier
//! (`flush`, `publish_durable`, a change), so a loss is never silent.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, select};

use super::directory::Directory;
use super::dispatch::{self, Dispatch};
use super::intake::{Intake, PARK_TICK, Publish};
use super::jobs::Jobs;
use super::maintenance::Job;
use super::outcomes::Outcomes;
use super::round::Round;
use super::session::Session;
use super::{Command, JobDone};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::Timestamp;
use crate::sender::{self, Outcome};
use crate::storage::Writer;
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
/// The longest the loop sleeps without a reason to wake.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Outcomes alone wait, staged, at most this long for a commit (see
/// [`Loop::defer_commit`]) when the commit window is zero ...
const DEFER_FOR: Duration = Duration::from_millis(1);
/// ... and this long with a commit window, so that at everyday rates an
/// outcome shares the next publish's commit instead of making its own.
/// Half sled's flush interval: a crash could already lose that much of
/// unflushed outcomes (their deliveries are sent again).
const DEFER_WITH_WINDOW: Duration = Duration::from_millis(10);
/// ... and at most this many of them.
const DEFER_MAX: usize = 64;

/// The commit window opens while the mean gap between publishes is at
/// most this many windows (see [`Loop::gather`]): another publish then
/// comes within the window about once in this many rounds or more often,
/// and each that does saves a commit and a flush (about 300 µs of CPU on
/// sled) for one window of latency.
const WINDOW_GAPS: u32 = 10;

/// Starts the sender pool and the engine thread; returns the command
/// channel and the thread's handle.
pub(crate) fn start(
    writer: Box<dyn Writer>,
    transport: &sender::Transport,
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
        (Some(sender::Pool::new(transport, &config, out_tx)), out_rx)
    } else {
        (None, crossbeam_channel::never())
    };
    let l = Loop {
        dispatch: Dispatch::new(&session, pool, due),
        s: session,
        vitals,
        queued,
        commands: rx,
        outcomes,
        round: Round::default(),
        intake: Intake::default(),
        jobs: Jobs::default(),
        results: Outcomes::default(),
        dir: Directory::default(),
        took_commands: false,
        deferred_since: None,
        last_publish: None,
        publish_gap: None,
        outcome_writes: 0,
        closing: None,
    };
    let handle = std::thread::Builder::new()
        .name("hookbus-dispatcher".into())
        .spawn(move || l.run())
        .map_err(|source| Error::Spawn {
            name: "hookbus-dispatcher".into(),
            source,
        })?;
    Ok((tx, handle))
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

/// The loop and the rooms it holds (see the module docs).
struct Loop {
    s: Session,
    commands: Receiver<Command>,
    outcomes: Receiver<Outcome>,
    round: Round,
    intake: Intake,
    jobs: Jobs,
    dispatch: Dispatch,
    results: Outcomes,
    dir: Directory,
    /// This round took a command (not only outcomes).
    took_commands: bool,
    /// Since when outcomes wait, staged, for a commit (see
    /// [`Loop::defer_commit`]).
    deferred_since: Option<Instant>,
    /// When the last publish was taken.
    last_publish: Option<Instant>,
    /// The mean gap between publishes (a moving average).
    publish_gap: Option<Duration>,
    /// How many of the staged writes outcomes made (a commit can wait only
    /// while they are all there is).
    outcome_writes: usize,
    closing: Option<Instant>,
    /// What `Bus::health` reads of this thread.
    vitals: Arc<super::Vitals>,
    /// The bytes of published payloads queued for this thread.
    queued: Arc<super::QueuedBytes>,
}

impl Loop {
    fn run(mut self) -> Result<()> {
        // What was pending when the store was opened is due at once.
        self.dispatch.poll(&mut self.s, &mut self.dir, now_ms());
        self.dispatch
            .dispatch(&mut self.s, &mut self.round, &mut self.dir);
        self.finish_round();
        loop {
            self.wait_and_take();
            self.dispatch_early();
            let closing = self.closing.is_some();
            self.intake
                .retry_parked(&mut self.s, &mut self.dir, &mut self.round, closing);
            self.finish_round();
            if !self.jobs.is_empty() {
                self.jobs.run_chunk(&mut self.s, &mut self.round);
                self.finish_round();
            }
            if self.closing.is_none() {
                let now = now_ms();
                self.dispatch.poll(&mut self.s, &mut self.dir, now);
                self.dispatch
                    .dispatch(&mut self.s, &mut self.round, &mut self.dir);
                self.intake.sweep_keys(&mut self.s, now);
                self.jobs.retention(&self.s, now, self.dispatch.alone());
                self.finish_round();
            }
            if let Some(deadline) = self.closing
                && self.jobs.is_empty()
                && !self.intake.has_parked()
                && (self.dispatch.in_flight() == 0 || Instant::now() >= deadline)
            {
                break;
            }
        }
        self.stop()
    }

    /// Blocks until there is something to do (or the next delivery is due),
    /// then takes everything available, up to a round's worth.
    fn wait_and_take(&mut self) {
        self.took_commands = false;
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
        self.take_outcomes();
        self.gather(taken);
    }

    /// The commit window: a round of published events that nobody waits
    /// for, taken while traffic is light, goes on taking commands and
    /// outcomes for up to [`commit_window`](crate::Builder::commit_window)
    /// before it is committed, so that events and outcomes arriving close
    /// together share one commit (and one flush). It closes at once when
    /// the round gets a waiter (a barrier, a durable publish), must be
    /// flushed, starts maintenance, changes a subscription, or is full;
    /// the round is then the one that would have been taken had all its
    /// commands come at once.
    ///
    /// It opens only while publishes come close enough together that
    /// another one is likely within the window (their mean gap at most
    /// [`WINDOW_GAPS`] windows): at a slow, steady pace it would only
    /// delay every event.
    fn gather(&mut self, mut taken: usize) {
        let window = self.s.config.commit_window;
        if window.is_zero()
            || !self.took_commands
            || self
                .publish_gap
                .is_none_or(|gap| gap > window * WINDOW_GAPS)
        {
            return;
        }
        let until = Instant::now() + window;
        while taken < MAX_ROUND && self.window_open() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let commands = self.commands.clone();
            select! {
                recv(commands) -> m => {
                    match m {
                        Ok(c) => self.handle(c),
                        Err(_) => self.begin_close(Instant::now()),
                    }
                    taken += 1;
                }
                recv(self.outcomes) -> o => if let Ok(o) = o { self.on_outcome(o) },
                default(left) => break,
            }
        }
    }

    /// Whether the round being taken may wait for more (see
    /// [`gather`](Self::gather)).
    fn window_open(&self) -> bool {
        !self.round.has_waiters()
            && !self.round.must_flush()
            && self.closing.is_none()
            && self.jobs.is_empty()
            && !self.intake.has_parked()
            && !self.s.subscriptions_changed()
            && self.s.staged_writes() < MAX_ROUND_WRITES
            && self.dispatch.settling() < DEFER_MAX
    }

    /// Takes every outcome that has arrived.
    fn take_outcomes(&mut self) {
        let outcomes: Vec<Outcome> = self.outcomes.try_iter().collect();
        if outcomes.len() > 1 && !self.dispatch.alone() {
            // Their subscriptions at once (those a shared store's poll
            // dropped, or not cached yet), not one query each.
            let subs: Vec<_> = outcomes.iter().map(|o| o.subscription).collect();
            self.dir.preload(&self.s, &subs);
        }
        for o in outcomes {
            self.on_outcome(o);
        }
    }

    fn wait_time(&self) -> Duration {
        let wait = self.wait_for_work();
        match self.deferred_since {
            Some(since) => wait.min(self.defer_for().saturating_sub(since.elapsed())),
            None => wait,
        }
    }

    fn wait_for_work(&self) -> Duration {
        if !self.jobs.is_empty() {
            return Duration::ZERO;
        }
        if self.intake.has_parked() {
            return PARK_TICK;
        }
        if let Some(deadline) = self.closing {
            return deadline.saturating_duration_since(Instant::now());
        }
        self.dispatch.wait(&self.s).min(IDLE_TICK)
    }

    fn begin_close(&mut self, deadline: Instant) {
        self.commands = crossbeam_channel::never();
        // Nothing more is sent: what was claimed as stored goes back now.
        self.dispatch.give_up_all_own();
        // Retention is the engine's own: it goes on after the next open.
        self.jobs.drop_background();
        if self.closing.is_none() {
            self.closing = Some(deadline);
        }
    }

    fn handle(&mut self, cmd: Command) {
        self.took_commands = true;
        if let Command::Poll = cmd {
            // Nothing to write: no flush for it.
            self.dispatch.poll_now();
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
                self.publish_taken();
                let p = Publish {
                    event,
                    tenant,
                    key,
                    done,
                };
                let closing = self.closing.is_some();
                self.intake
                    .publish(&mut self.s, &mut self.dir, &mut self.round, p, closing);
            }
            Command::Write(f) => self.on_write(f, true),
            Command::Quiet(f) => self.on_write(f, false),
            // Not a barrier: maintenance reports its own result only.
            Command::Job(job, done) => self.jobs.push(job, Some(done)),
            Command::Shutdown(deadline) => self.begin_close(deadline),
        }
    }

    /// Follows the mean gap between publishes (for the commit window).
    fn publish_taken(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last_publish.replace(now) {
            let gap = now.saturating_duration_since(last);
            self.publish_gap = Some(match self.publish_gap {
                Some(mean) => (mean * 7 + gap) / 8,
                None => gap,
            });
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
                let done: JobDone = Box::new(move |r| done(r.map(|_| ())));
                self.round.after_commit(job, Some(done));
            }
        }
        self.commit();
    }

    /// An attempt's outcome: the dispatcher hears it (flow control), then
    /// it is recorded (delivery, health, lifecycle).
    fn on_outcome(&mut self, o: Outcome) {
        let policy = self.dispatch.heard(&mut self.s, &mut self.dir, &o);
        self.outcome_writes += self
            .results
            .record(&mut self.s, &mut self.round, policy, &o);
    }

    /// Commits what is staged; if that fails, the waiters whose writes were
    /// in it fail, and events without a waiter count as lost. Maintenance
    /// the round's changes asked for is queued once they are committed.
    fn commit(&mut self) {
        self.dispatch.settled(&mut self.s);
        self.deferred_since = None;
        self.outcome_writes = 0;
        // A shared store claims for this instance, as it stores them, the
        // new deliveries it can send at once (not while closing: nothing
        // more is sent then).
        if self.closing.is_none() {
            self.dispatch.offer_claims(&mut self.s, &self.dir);
        }
        let r = self.s.commit();
        self.dispatch.claimed_new(&mut self.s);
        for (job, done) in self.round.committed(r) {
            self.jobs.push(job, done);
        }
    }

    /// Commits and flushes what this round wrote, then completes its waiters.
    fn finish_round(&mut self) {
        if self.defer_commit() {
            return;
        }
        self.commit();
        let changes = self.s.take_changes();
        self.dispatch.apply(&self.s, &mut self.dir, changes);
        // Published events and changes are flushed in the round that wrote
        // them (group commit). Attempt outcomes alone are not: losing one in
        // a crash can only make a delivery be sent again, and sled's own
        // flusher, or the next round that flushes, covers them soon.
        if self.round.wants_flush() {
            self.round.flush_started();
            let _ = dispatch::flush(&mut self.s, &mut self.round);
        }
        self.round.finish();
        let in_flight = self.dispatch.in_flight();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.vitals.in_flight.store(in_flight, relaxed);
        self.vitals
            .senders_alive
            .store(self.dispatch.senders_alive(), relaxed);
        telemetry::round(in_flight, self.s.pending());
    }

    /// A round of outcomes alone hands out the next jobs before it commits,
    /// so senders work while the store writes (the commit is most of a
    /// round's time with few senders). Safe then: the store differs from
    /// what it shows only in the settling deliveries, which are skipped.
    /// Not in a round that took commands or changed a subscription (an
    /// auto-disable, a FIFO halt, a revival), nor with other instances
    /// (claims), nor while closing.
    fn dispatch_early(&mut self) {
        if self.dispatch.settling() == 0
            || self.took_commands
            || self.closing.is_some()
            || self.s.subscriptions_changed()
            || !self.dispatch.alone()
        {
            return;
        }
        self.dispatch
            .dispatch(&mut self.s, &mut self.round, &mut self.dir);
    }

    /// Whether this round's commit can wait: a round of outcomes alone
    /// (under the conditions of [`dispatch_early`](Self::dispatch_early),
    /// no waiter, nothing to flush, no maintenance) is committed together
    /// with the next ones, up to [`DEFER_MAX`] outcomes or [`defer_for`](Self::defer_for)
    /// after the first. Each sled commit costs about as much as a
    /// request to a local receiver (it hands its log buffer to sled's I/O
    /// threads twice), so with few senders one per outcome halves their
    /// rate. What waits is only outcomes: until committed they are lost in
    /// a crash as unflushed ones are (the deliveries are sent again), the
    /// dispatcher skips their deliveries (settling), and the outbox's
    /// listings and counters show them up to that long late.
    fn defer_commit(&mut self) -> bool {
        let eligible = self.dispatch.settling() > 0
            && !self.round.has_waiters()
            && !self.round.must_flush()
            && !self.took_commands
            && !self.intake.has_parked()
            && self.jobs.is_empty()
            && self.closing.is_none()
            && !self.s.subscriptions_changed()
            // Only outcomes' writes: anything else staged (a delivery the
            // dispatcher quarantined or finished instead of sending, an
            // expired key) would be met again, as the store still shows it,
            // by the next pass before the commit.
            && self.s.staged_writes() == self.outcome_writes
            && self.outcome_writes < MAX_ROUND_WRITES
            && self.dispatch.settling() < DEFER_MAX
            && self.dispatch.alone();
        if !eligible {
            return false;
        }
        let since = *self.deferred_since.get_or_insert_with(Instant::now);
        since.elapsed() < self.defer_for()
    }

    /// How long outcomes alone may wait for a commit (see
    /// [`defer_commit`](Self::defer_commit)).
    fn defer_for(&self) -> Duration {
        if self.s.config.commit_window.is_zero() {
            DEFER_FOR
        } else {
            DEFER_WITH_WINDOW
        }
    }

    /// Final flush; the senders are told to stop, and their outcomes are
    /// recorded until they have all ended or the deadline passes (a sender
    /// still inside a request then is left to end on its own: its delivery
    /// stays pending and is sent after the next open).
    fn stop(mut self) -> Result<()> {
        self.finish_round();
        self.dispatch.close_senders();
        let deadline = self.closing.unwrap_or_else(Instant::now);
        // Each sender holds the outcome channel until it ends: it reads as
        // disconnected once all have.
        let all_ended = !self.dispatch.has_senders()
            || loop {
                match self.outcomes.recv_deadline(deadline) {
                    Ok(o) => self.on_outcome(o),
                    Err(RecvTimeoutError::Disconnected) => break true,
                    Err(RecvTimeoutError::Timeout) => break false,
                }
            };
        if all_ended {
            self.dispatch.join_senders();
        } else {
            tracing::warn!(
                in_flight = self.dispatch.in_flight(),
                "shutdown deadline passed with requests in flight; they stay pending and are sent after the next open"
            );
        }
        while !self.jobs.is_empty() {
            self.jobs.run_chunk(&mut self.s, &mut self.round);
        }
        self.round.flush_needed();
        self.finish_round();
        // Claimed as stored and not sent (none, as a rule: `begin_close`):
        // for another instance at once, not after their lease.
        self.dispatch.give_up_all_own();
        self.s.commit()?;
        self.s.flush()?;
        // Shutdown is a barrier: a loss no barrier reported is its result.
        self.round.take_loss()
    }
}
