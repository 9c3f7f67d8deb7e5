//! Dispatch: which due deliveries go to the senders now. It owns what is
//! in flight, each subscription's [`Flow`] and rate-limit [`Bucket`], the
//! FIFO heads, the destination hosts, the payload cache and when the next
//! delivery falls due; it takes work through the [`Coordination`] seam and
//! hears outcomes back ([`Dispatch::heard`]). The share rules are the pure
//! [`scheduler::plan`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::changes::Changes;
use super::coordination::{self, Coordination, Take};
use super::directory::{Directory, Policy};
use super::fifo::Heads;
use super::flow::{Breaker, Bucket, Flow, INITIAL_WINDOW};
use super::own_claims::OwnClaims;
use super::prepare::{self, Payloads, Prepared};
use super::round::Round;
use super::scheduler::{self, Hosts, Limits};
use super::session::Session;
use crate::delivery;
use crate::error::Result;
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::sender::{self, Outcome};
use crate::storage::IndexEntry;

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

/// The dispatcher's state (see the module docs).
pub(crate) struct Dispatch {
    coord: Box<dyn Coordination>,
    /// The sender threads (`None` when the bus does not deliver).
    pool: Option<sender::Pool>,
    hosts: Hosts,
    /// The last subscription served: the next pass starts after it.
    rr_cursor: Option<SubscriptionId>,
    in_flight: HashSet<DeliveryId>,
    /// Deliveries whose outcome is staged, not yet committed: the store
    /// still shows them as they were before the request, so a dispatch
    /// before the commit must not send them again.
    settling: HashSet<DeliveryId>,
    /// Their subscriptions (a FIFO queue's next head waits for the commit).
    settling_subs: HashSet<SubscriptionId>,
    flows: HashMap<SubscriptionId, Flow>,
    /// The windows (see `Flow::window`) subscriptions earned, kept while
    /// they are idle (their flows are dropped then), so a healthy one does
    /// not start slowly again after a quiet spell; forgotten when the
    /// subscription changes.
    windows: HashMap<SubscriptionId, usize>,
    /// When the next pending delivery falls due (`None`: nothing scheduled,
    /// or due work waits for a sender and an outcome will wake the loop).
    next_due: Option<u64>,
    /// Every subscription with pending deliveries, and when its soonest is
    /// due (kept in step with the store at the end of every round).
    due_subs: HashMap<SubscriptionId, u64>,
    /// The token buckets of rate-limited subscriptions.
    buckets: HashMap<SubscriptionId, Bucket>,
    heads: Heads,
    payloads: Payloads,
    horizon: Duration,
    /// A read failed in this pass for a reason that may pass.
    read_failed: bool,
    /// When to poll a shared store for other instances' work next (ms).
    next_poll: u64,
    /// Deliveries claimed as they were stored, not sent yet (a shared
    /// store; see [`offer_claims`](Self::offer_claims)).
    own: OwnClaims,
    /// How long one of those may wait for a sender: half of what its lease
    /// leaves beyond the longest request.
    own_max_age: Duration,
    /// Subscriptions with a new due delivery left unclaimed in a commit
    /// since the last [`apply`](Self::apply) (none of theirs is claimed
    /// as stored until then).
    passed_over: HashSet<SubscriptionId>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("alone", &self.coord.alone())
            .field("in_flight", &self.in_flight.len())
            .field("settling", &self.settling.len())
            .field("due_subscriptions", &self.due_subs.len())
            .field("next_due", &self.next_due)
            .field("own_claims", &self.own.len())
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// `due`: the subscriptions with pending deliveries as the store was
    /// opened, and when each one's soonest is due.
    pub(crate) fn new(
        s: &Session,
        pool: Option<sender::Pool>,
        due: impl IntoIterator<Item = (SubscriptionId, u64)>,
    ) -> Dispatch {
        Dispatch {
            coord: coordination::for_store(s),
            pool,
            hosts: Hosts::default(),
            rr_cursor: None,
            in_flight: HashSet::new(),
            settling: HashSet::new(),
            settling_subs: HashSet::new(),
            flows: HashMap::new(),
            windows: HashMap::new(),
            next_due: None,
            due_subs: due.into_iter().collect(),
            buckets: HashMap::new(),
            heads: Heads::default(),
            payloads: Payloads::default(),
            horizon: delivery::due_horizon(&s.config.retry_schedule),
            read_failed: false,
            next_poll: 0,
            own: OwnClaims::default(),
            own_max_age: shared::own_max_age(&s.config),
            passed_over: HashSet::new(),
        }
    }

    /// Whether this instance writes its store alone (see
    /// [`Coordination::alone`]).
    pub(crate) fn alone(&self) -> bool {
        self.coord.alone()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Outcomes heard whose writes are not committed yet.
    pub(crate) fn settling(&self) -> usize {
        self.settling.len()
    }

    /// How many sender threads are alive.
    pub(crate) fn senders_alive(&self) -> usize {
        self.pool.as_ref().map_or(0, sender::Pool::alive)
    }

    /// How long the loop may sleep before dispatch has work.
    pub(crate) fn wait(&self, s: &Session) -> Duration {
        let sender_free = self.in_flight.len() < s.config.senders;
        if s.needs_rescan() && sender_free && s.config.deliver {
            // Due work changed and a sender is free: plan again at once.
            return Duration::ZERO;
        }
        match self.next_due {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
            None => Duration::MAX,
        }
    }

    /// Another instance added work (a notification): poll at once.
    pub(crate) fn poll_now(&mut self) {
        self.next_poll = 0;
    }

    /// The round's staged outcomes were committed (or failed: then the
    /// store still shows them pending and they are sent again, at least
    /// once). Plans again on the store as it now is.
    pub(crate) fn settled(&mut self, s: &mut Session) {
        if !self.settling.is_empty() {
            s.rescan();
        }
        self.settling.clear();
        self.settling_subs.clear();
    }

    /// Takes in what a committed round did: new and changed due work, and
    /// changed subscriptions (whose policy, bucket, window, FIFO head and
    /// pause are forgotten).
    pub(crate) fn apply(&mut self, s: &Session, dir: &mut Directory, changes: Changes) {
        let fresh = self.own.take_fresh();
        // Those left unclaimed are in `due_subs` now.
        self.passed_over.clear();
        for (sub, at) in changes.added {
            // Every one of them claimed as stored, and nothing else pending:
            // they are this instance's to send (`own`), nothing to claim.
            let claimed = fresh.get(&sub).copied().unwrap_or(0);
            if claimed > 0
                && claimed >= changes.added_n.get(&sub).copied().unwrap_or(usize::MAX)
                && !self.due_subs.contains_key(&sub)
            {
                continue;
            }
            let e = self.due_subs.entry(sub).or_insert(at);
            *e = (*e).min(at);
        }
        // A changed subscription's policy is read again before anything
        // more of it is sent.
        let mut dropped = Vec::new();
        for sub in &changes.changed_subs {
            dropped.extend(self.own.remove(*sub));
        }
        self.give_up_own(dropped);
        for sub in changes.changed_subs {
            dir.forget(sub);
            self.heads.forget(sub);
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
            self.heads.forget(sub);
        }
        let touched: Vec<SubscriptionId> = changes.touched.into_iter().collect();
        if touched.is_empty() {
            return;
        }
        // All at once (one query on PostgreSQL); one by one if that fails,
        // so that a damaged entry costs only its own subscription.
        if let Ok(next) = s.reader().next_due(&touched) {
            let next: HashMap<SubscriptionId, u64> = next.into_iter().collect();
            for sub in touched {
                match next.get(&sub) {
                    Some(&at) => self.due_subs.insert(sub, at),
                    None => self.due_subs.remove(&sub),
                };
            }
            return;
        }
        for sub in touched {
            match s.reader().due(sub).next().transpose() {
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
    }

    /// Hears an outcome: its delivery leaves the flight (and settles until
    /// the commit), its subscription's flow changes (breaker, window, a
    /// receiver's pause, shared with the other instances). Returns the
    /// subscription's policy.
    pub(crate) fn heard(&mut self, s: &mut Session, dir: &mut Directory, o: &Outcome) -> Policy {
        self.in_flight.remove(&o.delivery);
        self.settling.insert(o.delivery);
        self.settling_subs.insert(o.subscription);
        let now = now_ms();
        let flow = self.flows.entry(o.subscription).or_default();
        let heard = flow.heard(
            now,
            o.attempt.error.as_ref().map(|e| e.kind),
            o.attempt.status,
            o.retry_after,
            s.config.circuit_breaker(),
            s.config.per_subscription,
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
            // sooner). Every instance of a shared store holds back too.
            tracing::info!(subscription = %o.subscription, status = o.attempt.status, pause_ms = pause, "receiver asked to slow down: subscription paused");
            if let Err(e) = self.coord.pause(o.subscription, pause) {
                tracing::warn!(subscription = %o.subscription, error = %e, "could not share a receiver's pause with the other instances");
            }
        }
        // Idle and well: its flow goes, the window it earned stays.
        if self.flows.get(&o.subscription).is_some_and(|f| f.idle(now))
            && let Some(flow) = self.flows.remove(&o.subscription)
            && flow.window > INITIAL_WINDOW
        {
            self.windows.insert(o.subscription, flow.window);
        }
        s.rescan();
        self.policy(s, dir, o.subscription)
    }

    /// The delivery policy of `sub` (default if it cannot be read: the
    /// delivery itself then finds out why).
    pub(crate) fn policy(
        &mut self,
        s: &Session,
        dir: &mut Directory,
        sub: SubscriptionId,
    ) -> Policy {
        match dir.policy(s, sub) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                tracing::error!(subscription = %sub, error = %e, "could not read a subscription's policy; will try again");
                self.retry_soon();
                Policy::default()
            }
        }
    }

    /// Whether delivery `d` is in flight, or its outcome is settling: it
    /// must not be sent again, nor its claim given up.
    fn busy(&self, d: DeliveryId) -> bool {
        self.in_flight.contains(&d) || self.settling.contains(&d)
    }

    /// Hands due deliveries to free senders, fairly between subscriptions.
    pub(crate) fn dispatch(&mut self, s: &mut Session, round: &mut Round, dir: &mut Directory) {
        if !s.config.deliver {
            return;
        }
        let config = &s.config;
        let limits = Limits {
            total: config.senders,
            per_subscription: config.per_subscription,
            per_host: config.per_host,
        };
        let free = limits.total.saturating_sub(self.in_flight.len());
        let now = now_ms();
        let due_now = self.next_due.is_some_and(|at| at <= now);
        if !(s.needs_rescan() || due_now) {
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
        if round.unflushed_publishes() && flush(s, round).is_err() {
            // Try again in a while (a full pass then), not in a busy loop.
            s.rescanned();
            self.next_due = Some(now.saturating_add(100));
            return;
        }
        s.rescanned();
        self.read_failed = false;
        let mut next: Option<u64> = None;
        let candidates = self.candidates(now, &mut next);
        if !self.coord.alone() {
            dir.preload(s, &candidates);
        }
        let (mut ready, starts, heads) = self.gates(s, dir, candidates, now, &mut next);
        self.next_due = match (self.next_due, next) {
            // A read to try again soon, set while looking at heads.
            (Some(soon), Some(n)) if self.read_failed => Some(soon.min(n)),
            (Some(soon), None) if self.read_failed => Some(soon),
            (_, n) => n,
        };
        if ready.is_empty() {
            return;
        }
        round_robin(&mut ready, self.rr_cursor);
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
        let mut host_in_flight = self.host_in_flight();
        let hosts = &self.hosts.of;
        let host = |s: SubscriptionId| hosts.get(&s).copied();
        let own = |s: SubscriptionId| starts.get(&s).copied().unwrap_or(usize::MAX);
        let (plan, capped) = scheduler::plan_noting_caps(
            limits,
            free,
            &ready,
            &self.flows,
            &host,
            &mut host_in_flight,
            &own,
        );
        let mut claimed = self.take_many(s, dir, &plan, &heads, now);
        let planned: usize = plan.iter().map(|p| p.1).sum();
        let before = self.in_flight.len();
        let in_plan: HashSet<SubscriptionId> = plan.iter().map(|p| p.0).collect();
        for (sub, room) in plan {
            self.rr_cursor = Some(sub);
            let sent = match claimed.remove(&sub) {
                Some(batch) => self.send(s, dir, sub, batch),
                None => {
                    let head = heads.get(&sub).copied();
                    self.take_and_send(s, dir, sub, head, room, now)
                }
            };
            if !sent {
                return;
            }
        }
        // The plan gives each subscription its whole room, however few of
        // its deliveries are due (those in flight stay in the due index),
        // so the host's or the total cap may have left some out while
        // room went unused: that room goes to them now, in turn, within
        // the caps as they really stand.
        let sent = self.in_flight.len().saturating_sub(before);
        if capped && sent < planned {
            self.leftover(s, dir, &limits, &ready, &in_plan, &heads, &own, now);
        }
    }

    /// Requests in flight per destination host (indexes of `hosts`).
    fn host_in_flight(&self) -> Vec<usize> {
        let mut per_host = vec![0usize; self.hosts.index.len()];
        for (sub, flow) in &self.flows {
            if let Some(h) = self.hosts.of.get(sub) {
                per_host[*h] += flow.in_flight;
            }
        }
        per_host
    }

    /// Sends for ready subscriptions the plan left out, within the total,
    /// their host's cap (counted from what is really in flight), their
    /// window and own limits; healthy ones only.
    #[allow(clippy::too_many_arguments)]
    fn leftover(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        limits: &Limits,
        ready: &[SubscriptionId],
        in_plan: &HashSet<SubscriptionId>,
        heads: &HashMap<SubscriptionId, IndexEntry>,
        own: &dyn Fn(SubscriptionId) -> usize,
        now: u64,
    ) {
        let mut host_in_flight = self.host_in_flight();
        for &sub in ready {
            let free = limits.total.saturating_sub(self.in_flight.len());
            if free == 0 {
                return;
            }
            if in_plan.contains(&sub) {
                continue;
            }
            let flow = self.flows.get(&sub).copied().unwrap_or_default();
            if flow.failing() || flow.tripped || flow.breaker != Breaker::Closed {
                continue;
            }
            let h = self.hosts.of.get(&sub).copied();
            let host_room = h.map_or(usize::MAX, |h| {
                limits.per_host.saturating_sub(host_in_flight[h])
            });
            let room = limits
                .per_subscription
                .min(flow.window())
                .saturating_sub(flow.in_flight)
                .min(own(sub))
                .min(host_room)
                .min(free);
            if room == 0 {
                continue;
            }
            let b = self.in_flight.len();
            self.rr_cursor = Some(sub);
            let head = heads.get(&sub).copied();
            if !self.take_and_send(s, dir, sub, head, room, now) {
                return;
            }
            if let Some(h) = h {
                host_in_flight[h] += self.in_flight.len().saturating_sub(b);
            }
        }
    }

    /// On a shared store, the due work of every planned subscription
    /// without a FIFO head or a rate limit, claimed at once (one statement
    /// on PostgreSQL instead of one per subscription); the others are
    /// taken one by one. Empty when alone: reading the local index costs
    /// no round trip.
    fn take_many(
        &mut self,
        s: &Session,
        dir: &mut Directory,
        plan: &[(SubscriptionId, usize)],
        heads: &HashMap<SubscriptionId, IndexEntry>,
        now: u64,
    ) -> HashMap<SubscriptionId, Vec<IndexEntry>> {
        if self.coord.alone() {
            return HashMap::new();
        }
        let plain: Vec<(SubscriptionId, usize)> = plan
            .iter()
            .filter(|(sub, _)| {
                !heads.contains_key(sub)
                    && dir.cached_policy(*sub).and_then(|p| p.rate).is_none()
                    && self.own.held(*sub) == 0
            })
            .copied()
            .collect();
        if plain.len() < 2 {
            return HashMap::new();
        }
        let busy = |d: DeliveryId| self.busy(d);
        match self.coord.take_due_many(s, &plain, now, &busy) {
            Ok(got) => got.into_iter().collect(),
            Err(e) => {
                // One by one instead.
                tracing::error!(error = %e, "could not claim due deliveries at once; will take them one by one");
                HashMap::new()
            }
        }
    }

    /// Subscriptions with due work whose flow lets them send now; `next`
    /// learns when the next one falls due (or a breaker half-opens, or a
    /// pause ends).
    fn candidates(&mut self, now: u64, next: &mut Option<u64>) -> Vec<SubscriptionId> {
        let mut out = Vec::new();
        // What this instance claimed as it stored it is due now (its
        // subscription may have nothing else due).
        let own_only: Vec<SubscriptionId> = self
            .own
            .subs()
            .filter(|sub| !self.due_subs.contains_key(sub))
            .collect();
        let due = self
            .due_subs
            .iter()
            .map(|(sub, at)| (*sub, *at))
            .chain(own_only.into_iter().map(|sub| (sub, 0)));
        for (sub, at) in due {
            if !delivery::is_due(at, now, self.horizon) && self.own.held(sub) == 0 {
                wake(next, at);
                continue;
            }
            if let Some(flow) = self.flows.get_mut(&sub)
                && let Err(until) = flow.gate(now)
            {
                wake(next, until);
                continue;
            }
            out.push(sub);
        }
        out
    }

    /// The candidates' own policies: a halted FIFO queue waits for a
    /// person; a rate limit lets as many start as it has tokens; a FIFO
    /// queue sends its head alone, once it is due. Returns the ready ones,
    /// how many each may start (when limited), and FIFO heads.
    #[allow(clippy::type_complexity)]
    fn gates(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        candidates: Vec<SubscriptionId>,
        now: u64,
        next: &mut Option<u64>,
    ) -> (
        Vec<SubscriptionId>,
        HashMap<SubscriptionId, usize>,
        HashMap<SubscriptionId, IndexEntry>,
    ) {
        let mut ready = Vec::with_capacity(candidates.len());
        let mut starts = HashMap::new();
        let mut heads = HashMap::new();
        for sub in candidates {
            let policy = self.policy(s, dir, sub);
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
                    wake(next, bucket.ready_at(limit));
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
                let head = match self.heads.head(s, sub, self.coord.alone()) {
                    Ok(Some(head)) => head,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(subscription = %sub, error = %e, "could not find the head of a FIFO queue; will try again");
                        self.retry_soon();
                        continue;
                    }
                };
                if !delivery::is_due(head.at, now, self.horizon) {
                    wake(next, head.at);
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
        (ready, starts, heads)
    }

    /// Takes up to `room` due deliveries of `sub` (its FIFO `head` only,
    /// if it has one) through the coordination seam and sends them.
    /// Returns `false` when the senders took no more.
    fn take_and_send(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        sub: SubscriptionId,
        head: Option<IndexEntry>,
        room: usize,
        now: u64,
    ) -> bool {
        if head.is_none()
            && let Some(sent) = self.send_own(s, dir, sub, room)
        {
            return sent;
        }
        let rate = dir.cached_policy(sub).and_then(|p| p.rate);
        let busy = |d: DeliveryId| self.busy(d);
        match coordination::take(&*self.coord, s, sub, rate, head, room, now, &busy) {
            Take::Entries(batch) => self.send(s, dir, sub, batch),
            Take::WaitUntil(at) => {
                self.wake_at(at);
                true
            }
            Take::Failed => {
                self.retry_soon();
                true
            }
        }
    }

    /// Hands these due deliveries of `sub` to the senders. Returns `false`
    /// when the senders took no more.
    fn send(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        sub: SubscriptionId,
        batch: Vec<IndexEntry>,
    ) -> bool {
        for e in batch {
            let Some(job) = self.prepare(s, dir, e) else {
                // Finished instead of sent: the room it would have taken
                // goes to the next due one. (A read that failed for a
                // passing reason is looked at again in a second instead.)
                if !self.read_failed {
                    s.rescan();
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
            self.flows.entry(sub).or_default().started(now_ms());
            if dir.cached_policy(sub).is_some_and(|p| p.rate.is_some())
                && let Some(bucket) = self.buckets.get_mut(&sub)
            {
                bucket.take();
            }
        }
        true
    }

    /// Loads what a due delivery needs (see [`prepare::job`]), noting its
    /// destination host; `None`: finished instead (or, after a read that
    /// may pass, looked at again soon).
    fn prepare(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        entry: IndexEntry,
    ) -> Option<sender::Job> {
        match prepare::job(s, dir, &mut self.payloads, entry) {
            Prepared::Send(job) => {
                self.hosts.note(job.subscription, &job.url);
                Some(job)
            }
            Prepared::Finished => None,
            Prepared::Later => {
                self.retry_soon();
                None
            }
        }
    }

    /// A read failed for a reason that may pass: look again in a second.
    fn retry_soon(&mut self) {
        self.read_failed = true;
        self.wake_at(now_ms().saturating_add(1000));
    }

    /// Wakes the loop by `at` (ms) at the latest.
    fn wake_at(&mut self, at: u64) {
        wake(&mut self.next_due, at);
    }

    /// Tells the senders to stop (they finish what they hold).
    pub(crate) fn close_senders(&mut self) {
        if let Some(pool) = &mut self.pool {
            pool.close();
        }
    }

    /// Waits for the sender threads to end (after every one reported).
    pub(crate) fn join_senders(&mut self) {
        if let Some(pool) = &mut self.pool {
            pool.join();
        }
    }

    /// Whether there are sender threads (a bus that delivers).
    pub(crate) fn has_senders(&self) -> bool {
        self.pool.is_some()
    }
}

/// Flushes what is committed (see [`Round::flushed`]).
pub(crate) fn flush(s: &mut Session, round: &mut Round) -> Result<()> {
    let r = s.flush();
    round.flushed(&r);
    r
}

/// `next` becomes `at` if that is sooner.
fn wake(next: &mut Option<u64>, at: u64) {
    *next = Some(next.map_or(at, |n| n.min(at)));
}

/// Round-robin: `ready` in id order, starting after the last one served.
fn round_robin(ready: &mut [SubscriptionId], cursor: Option<SubscriptionId>) {
    ready.sort_unstable();
    if let Some(c) = cursor {
        let split = ready.partition_point(|s| *s <= c);
        ready.rotate_left(split);
    }
}

#[path = "dispatch_shared.rs"]
mod shared;

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
