//! The scheduler: which subscriptions get how many of the free request
//! slots. A pure function of what is due and what is in flight, so it is
//! tested without threads, clocks or a store.
//!
//! Rules:
//! * subscriptions are served round-robin (the caller rotates `ready`), not
//!   oldest-first, so an old backlog cannot take every slot;
//! * with `k` subscriptions wanting slots (due work or requests in flight),
//!   each may hold `total / k`, the remainder going one each to the first
//!   ones, so no slot idles while work is due; never more than
//!   `per_subscription`, and never every slot (unless there is only one);
//! * a destination host never has more than `per_host` in flight;
//! * a subscription whose breaker is open gets nothing; half-open, or whose
//!   last request timed out, one at a time (a probe);
//! * subscriptions that are failing (connection errors or timeouts in a
//!   row, or requests in flight and no answer for [`STALL_AFTER_MS`])
//!   together hold at most a quarter of the slots while healthy ones have
//!   due work;
//! * a subscription has at most its window in flight: [`INITIAL_WINDOW`]
//!   until its receiver answers, one more per answer (slow start), so
//!   receivers that hang cannot take the pool before anything is known
//!   of them;
//! * a subscription never starts more than its own `starts` allows now
//!   (the tokens of its rate limit; one for a FIFO subscription).
//!
//! [`Bucket`] is the token bucket of a subscription's rate limit.

use std::collections::HashMap;

use std::time::Duration;

use crate::ids::SubscriptionId;
use crate::policy::RateLimit;
use crate::record::AttemptErrorKind;

/// A token bucket: `burst` tokens at most, refilled at `per_second`; each
/// request takes one. Times in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    tokens: f64,
    at: u64,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(limit: RateLimit, now: u64) -> Self {
        Bucket {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    /// Adds the tokens earned since it was last refilled, up to the burst.
    pub(crate) fn refill(&mut self, limit: RateLimit, now: u64) {
        let elapsed = now.saturating_sub(self.at) as f64;
        self.tokens = (self.tokens + elapsed * f64::from(limit.per_second) / 1000.0)
            .min(f64::from(limit.burst));
        self.at = self.at.max(now);
    }

    /// How many requests may start now.
    pub(crate) fn available(&self) -> usize {
        // At most the burst (≤ 100 000): the cast cannot truncate.
        self.tokens.max(0.0).floor() as usize
    }

    pub(crate) fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// When the next whole token is there.
    pub(crate) fn ready_at(&self, limit: RateLimit) -> u64 {
        if self.tokens >= 1.0 {
            return self.at;
        }
        let ms = ((1.0 - self.tokens) * 1000.0 / f64::from(limit.per_second)).ceil();
        self.at.saturating_add(ms as u64)
    }
}

/// What a subscription has in flight, and its circuit breaker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) in_flight: usize,
    /// Its last request timed out: one request at a time until it answers.
    pub(crate) tripped: bool,
    /// Connection failures or timeouts in a row.
    pub(crate) failures: u32,
    pub(crate) breaker: Breaker,
    /// The receiver asked for a pause (429 with `Retry-After`): nothing is
    /// started before this instant (ms; 0: no pause).
    pub(crate) paused_until: u64,
    /// When the receiver last answered, or (if it had nothing in flight)
    /// when its first request in flight started (ms).
    pub(crate) heard_at: u64,
    /// Requests in flight and nothing heard for [`STALL_AFTER_MS`]: the
    /// receiver may hang. It counts as failing until it answers, so a
    /// receiver that holds every request cannot take the slots a timeout
    /// would only give back much later.
    pub(crate) stalled: bool,
    /// How many requests it may have in flight, earned by answers (slow
    /// start): [`INITIAL_WINDOW`] at first (0 stands for it), one more per
    /// answer, back to the start after a connection failure or timeout.
    pub(crate) window: usize,
}

/// A subscription's requests in flight before its receiver has answered
/// any (see [`Flow::window`]): a dozen receivers that hang take 48 slots
/// at most before their timeouts, not the whole pool.
pub(crate) const INITIAL_WINDOW: usize = 4;

/// How long a subscription with requests in flight may go without an
/// answer before it counts as failing (see [`Flow::stalled`]).
pub(crate) const STALL_AFTER_MS: u64 = 2_000;

/// The longest a circuit breaker stays open (ms).
pub(crate) const MAX_BREAKER_WAIT_MS: u64 = 600_000;

/// How long a 429 without `Retry-After` pauses a subscription (ms).
pub(crate) const DEFAULT_429_PAUSE_MS: u64 = 5_000;

/// What one outcome changed in a subscription's flow (see
/// [`Flow::heard`]), for the logs and the other instances.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heard {
    /// The breaker opened (it was not open), for this many ms.
    pub(crate) opened: Option<u64>,
    /// The breaker closed (it was open or half open).
    pub(crate) closed: bool,
    /// The receiver asked for a pause of this many ms.
    pub(crate) paused: Option<u64>,
}

/// A subscription's circuit breaker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breaker {
    /// Requests flow.
    #[default]
    Closed,
    /// Its backlog waits until the instant (ms).
    Open { until: u64 },
    /// One probe at a time tests the receiver.
    HalfOpen,
}

impl Flow {
    /// Whether it counts as failing (its share is bounded).
    pub(crate) fn failing(&self) -> bool {
        self.failures > 0 || self.tripped || self.stalled || self.breaker != Breaker::Closed
    }

    /// How many requests it may have in flight now (see
    /// [`Flow::window`]).
    pub(crate) fn window(&self) -> usize {
        self.window.max(INITIAL_WINDOW)
    }

    /// Its receiver answered: one more request in flight allowed (so the
    /// window doubles per round trip), up to `cap`.
    pub(crate) fn answered(&mut self, cap: usize) {
        self.window = (self.window() + 1).min(cap.max(INITIAL_WINDOW));
    }

    /// The transition for one outcome of a request: `kind` is how it
    /// failed without an answer (`None`: the receiver answered `status`,
    /// or the request was not sent), `retry_after` what the receiver asked
    /// for, `breaker` the circuit breaker's setting (failures in a row,
    /// first wait), `cap` the most requests in flight it may earn.
    ///
    /// - A timeout trips it: one request at a time until it answers.
    /// - No answer at all (timeout, connection, DNS, TLS, protocol): the
    ///   window starts over, and after `breaker.0` such failures in a row
    ///   the breaker opens for `breaker.1`, doubled for each further
    ///   failure (the probes), at most [`MAX_BREAKER_WAIT_MS`].
    /// - Any answer: the window grows by one, the failures are forgotten
    ///   and the breaker closes.
    /// - 429, or 503 with `Retry-After`: it pauses for `Retry-After`
    ///   (capped) or [`DEFAULT_429_PAUSE_MS`].
    pub(crate) fn heard(
        &mut self,
        now: u64,
        kind: Option<AttemptErrorKind>,
        status: Option<u16>,
        retry_after: Option<Duration>,
        breaker: (u32, Duration),
        cap: usize,
    ) -> Heard {
        let mut heard = Heard::default();
        self.in_flight = self.in_flight.saturating_sub(1);
        self.heard_at = now;
        self.stalled = false;
        self.tripped = kind == Some(AttemptErrorKind::Timeout);
        let unreachable = matches!(
            kind,
            Some(
                AttemptErrorKind::Timeout
                    | AttemptErrorKind::Connect
                    | AttemptErrorKind::Dns
                    | AttemptErrorKind::Tls
                    | AttemptErrorKind::Protocol
            )
        );
        if unreachable {
            self.window = 0;
            self.failures = self.failures.saturating_add(1);
            let (after, wait) = breaker;
            let after = after.max(1);
            if self.failures >= after {
                // Open (again): each failed probe after it opened doubles
                // the wait.
                let runs = (self.failures - after + 1).min(6);
                let wait = u64::try_from(wait.as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_mul(1 << (runs - 1))
                    .min(MAX_BREAKER_WAIT_MS);
                if !matches!(self.breaker, Breaker::Open { .. }) {
                    heard.opened = Some(wait);
                }
                self.breaker = Breaker::Open {
                    until: now.saturating_add(wait),
                };
            }
        } else if status.is_some() {
            self.answered(cap);
            heard.closed = self.breaker != Breaker::Closed;
            self.failures = 0;
            self.breaker = Breaker::Closed;
        }
        if status == Some(429) || (status == Some(503) && retry_after.is_some()) {
            let pause = retry_after.map_or(DEFAULT_429_PAUSE_MS, |d| {
                u64::try_from(d.min(crate::retry::MAX_RETRY_AFTER).as_millis()).unwrap_or(u64::MAX)
            });
            self.paused_until = now.saturating_add(pause);
            heard.paused = Some(pause);
        }
        heard
    }

    /// Marks it stalled if it has requests in flight and nothing was
    /// heard for [`STALL_AFTER_MS`] by `now` (ms).
    pub(crate) fn check_stall(&mut self, now: u64) {
        self.stalled = self.in_flight > 0 && now.saturating_sub(self.heard_at) > STALL_AFTER_MS;
    }

    /// Whether it may have a request started now.
    pub(crate) fn open_until(&self) -> Option<u64> {
        match self.breaker {
            Breaker::Open { until } => Some(until),
            _ => None,
        }
    }
}

/// The caps the plan keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) total: usize,
    pub(crate) per_subscription: usize,
    pub(crate) per_host: usize,
}

/// How many requests to start per subscription. `ready` lists the
/// subscriptions with due work in the order to serve them (rotated by the
/// caller for round-robin); `free` is how many slots are idle; `host` maps
/// a subscription to its destination host's index in `host_in_flight`
/// (unknown: no host cap); `starts` says how many requests a subscription
/// may start now, whatever the caps allow (its rate limit's tokens).
pub(crate) fn plan(
    limits: Limits,
    free: usize,
    ready: &[SubscriptionId],
    flows: &HashMap<SubscriptionId, Flow>,
    host: &dyn Fn(SubscriptionId) -> Option<usize>,
    host_in_flight: &mut [usize],
    starts: &dyn Fn(SubscriptionId) -> usize,
) -> Vec<(SubscriptionId, usize)> {
    let mut out = Vec::new();
    if free == 0 || ready.is_empty() {
        return out;
    }
    let flow_of = |s: &SubscriptionId| flows.get(s).copied().unwrap_or_default();
    let busy_elsewhere = flows
        .iter()
        .filter(|(id, f)| f.in_flight > 0 && !ready.contains(id))
        .count();
    let wanting = ready.len() + busy_elsewhere;
    let most = limits
        .total
        .saturating_sub(1)
        .max(1)
        .min(limits.per_subscription);
    let base = (limits.total / wanting).clamp(1, most);
    let mut extra = if base >= most {
        0
    } else {
        limits.total % wanting
    };
    // Failing subscriptions share a quarter while healthy ones wait.
    let healthy_waiting = ready.iter().any(|s| !flow_of(s).failing());
    let failing_cap = if healthy_waiting {
        (limits.total / 4).max(1)
    } else {
        limits.total
    };
    let mut failing_used: usize = flows
        .values()
        .filter(|f| f.failing())
        .map(|f| f.in_flight)
        .sum();
    let mut free = free;
    for &sub in ready {
        if free == 0 {
            break;
        }
        let flow = flow_of(&sub);
        let share = match flow.breaker {
            Breaker::Open { .. } => 0,
            Breaker::HalfOpen => 1,
            Breaker::Closed if flow.tripped => 1,
            Breaker::Closed if wanting == 1 => most,
            Breaker::Closed if extra > 0 => {
                extra -= 1;
                (base + 1).min(most)
            }
            Breaker::Closed => base,
        };
        let mut n = share
            .min(flow.window())
            .saturating_sub(flow.in_flight)
            .min(free)
            .min(starts(sub));
        if flow.failing() {
            n = n.min(failing_cap.saturating_sub(failing_used));
        }
        let h = host(sub);
        if let Some(h) = h {
            n = n.min(limits.per_host.saturating_sub(host_in_flight[h]));
        }
        if n > 0 {
            out.push((sub, n));
            free -= n;
            if flow.failing() {
                failing_used += n;
            }
            if let Some(h) = h {
                host_in_flight[h] += n;
            }
        }
    }
    // Slots the caps left over go to healthy subscriptions, up to their
    // own cap, so none idles while one of them has due work.
    for &sub in ready {
        if free == 0 {
            break;
        }
        let flow = flow_of(&sub);
        if flow.failing() {
            continue;
        }
        let given = out.iter().find(|(s, _)| *s == sub).map_or(0, |(_, n)| *n);
        let mut n = most
            .min(flow.window())
            .saturating_sub(flow.in_flight + given)
            .min(free)
            .min(starts(sub).saturating_sub(given));
        let h = host(sub);
        if let Some(h) = h {
            n = n.min(limits.per_host.saturating_sub(host_in_flight[h]));
        }
        if n > 0 {
            match out.iter_mut().find(|(s, _)| *s == sub) {
                Some((_, m)) => *m += n,
                None => out.push((sub, n)),
            }
            free -= n;
            if let Some(h) = h {
                host_in_flight[h] += n;
            }
        }
    }
    out
}

#[cfg(test)]
mod flow_tests {
    use super::*;

    const BREAKER: (u32, Duration) = (3, Duration::from_millis(100));

    fn fail(f: &mut Flow, now: u64, kind: AttemptErrorKind) -> Heard {
        f.in_flight += 1;
        f.heard(now, Some(kind), None, None, BREAKER, 64)
    }

    fn answer(f: &mut Flow, now: u64, status: u16, retry_after: Option<Duration>) -> Heard {
        f.in_flight += 1;
        f.heard(now, None, Some(status), retry_after, BREAKER, 64)
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_doubles_per_probe() {
        let mut f = Flow::default();
        assert_eq!(fail(&mut f, 0, AttemptErrorKind::Connect), Heard::default());
        assert_eq!(fail(&mut f, 0, AttemptErrorKind::Dns), Heard::default());
        assert_eq!(f.breaker, Breaker::Closed);
        assert!(f.failing(), "failures count before the breaker opens");
        let h = fail(&mut f, 10, AttemptErrorKind::Connect);
        assert_eq!(h.opened, Some(100));
        assert_eq!(f.breaker, Breaker::Open { until: 110 });
        // A failed probe: open again, twice as long, not reported as new.
        let h = fail(&mut f, 200, AttemptErrorKind::Tls);
        assert_eq!(h.opened, None);
        assert_eq!(f.breaker, Breaker::Open { until: 400 });
        for _ in 0..20 {
            fail(&mut f, 1_000, AttemptErrorKind::Protocol);
        }
        // Doubling stops at 2^5 times the wait.
        assert_eq!(
            f.breaker,
            Breaker::Open {
                until: 1_000 + 3_200
            }
        );
        assert_eq!(f.in_flight, 0);
    }

    #[test]
    fn a_long_wait_is_capped_at_ten_minutes() {
        let mut f = Flow::default();
        for _ in 0..10 {
            f.in_flight += 1;
            f.heard(
                0,
                Some(AttemptErrorKind::Connect),
                None,
                None,
                (1, Duration::MAX),
                64,
            );
        }
        assert_eq!(
            f.breaker,
            Breaker::Open {
                until: MAX_BREAKER_WAIT_MS
            }
        );
    }

    #[test]
    fn any_answer_closes_the_breaker_and_grows_the_window() {
        let mut f = Flow::default();
        for _ in 0..3 {
            fail(&mut f, 0, AttemptErrorKind::Connect);
        }
        assert!(matches!(f.breaker, Breaker::Open { .. }));
        assert_eq!(f.window(), INITIAL_WINDOW);
        // Even a 500 is an answer: the receiver is reachable.
        let h = answer(&mut f, 50, 500, None);
        assert!(h.closed);
        assert_eq!((f.failures, f.breaker), (0, Breaker::Closed));
        assert_eq!(f.window(), INITIAL_WINDOW + 1);
        assert!(!answer(&mut f, 60, 204, None).closed, "closed already");
        assert!(!f.failing());
    }

    #[test]
    fn a_timeout_trips_and_restarts_the_window_until_an_answer() {
        let mut f = Flow::default();
        for _ in 0..10 {
            answer(&mut f, 0, 204, None);
        }
        assert_eq!(f.window(), 14);
        fail(&mut f, 5, AttemptErrorKind::Timeout);
        assert!(f.tripped && f.failing());
        assert_eq!(f.window(), INITIAL_WINDOW);
        answer(&mut f, 6, 204, None);
        assert!(!f.tripped);
        // The window is capped.
        for _ in 0..100 {
            answer(&mut f, 7, 204, None);
        }
        assert_eq!(f.window(), 64);
    }

    #[test]
    fn too_many_requests_pauses_for_what_the_receiver_asked_within_bounds() {
        let mut f = Flow::default();
        assert_eq!(
            answer(&mut f, 0, 429, None).paused,
            Some(DEFAULT_429_PAUSE_MS)
        );
        assert_eq!(f.paused_until, DEFAULT_429_PAUSE_MS);
        let h = answer(&mut f, 100, 429, Some(Duration::from_secs(2)));
        assert_eq!((h.paused, f.paused_until), (Some(2_000), 2_100));
        // 503 pauses only with Retry-After; other statuses never.
        assert_eq!(answer(&mut f, 0, 503, None).paused, None);
        assert_eq!(
            answer(&mut f, 0, 503, Some(Duration::from_secs(1))).paused,
            Some(1_000)
        );
        assert_eq!(
            answer(&mut f, 0, 500, Some(Duration::from_secs(1))).paused,
            None
        );
        // A Retry-After of a year is capped.
        let cap = u64::try_from(crate::retry::MAX_RETRY_AFTER.as_millis()).unwrap();
        assert_eq!(
            answer(&mut f, 0, 429, Some(Duration::from_secs(365 * 86_400))).paused,
            Some(cap)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(n: usize) -> Vec<SubscriptionId> {
        (0..n).map(|_| SubscriptionId::generate()).collect()
    }

    fn total(p: &[(SubscriptionId, usize)]) -> usize {
        p.iter().map(|(_, n)| n).sum()
    }

    fn limits(total: usize) -> Limits {
        Limits {
            total,
            per_subscription: usize::MAX,
            per_host: usize::MAX,
        }
    }

    fn no_host(_: SubscriptionId) -> Option<usize> {
        None
    }

    /// `flows` with every subscription in `ready` (and in `flows`) past
    /// slow start: the share rules alone decide.
    fn earned(
        ready: &[SubscriptionId],
        flows: &HashMap<SubscriptionId, Flow>,
    ) -> HashMap<SubscriptionId, Flow> {
        let mut out = flows.clone();
        for id in ready {
            out.entry(*id).or_default();
        }
        for f in out.values_mut() {
            f.window = f.window.max(1_000);
        }
        out
    }

    /// The plan for subscriptions past slow start, without host caps or
    /// own limits.
    fn simple(
        total: usize,
        free: usize,
        ready: &[SubscriptionId],
        flows: &HashMap<SubscriptionId, Flow>,
    ) -> Vec<(SubscriptionId, usize)> {
        unearned(total, free, ready, &earned(ready, flows))
    }

    /// The plan for `flows` as they are (windows included), without host
    /// caps or own limits.
    fn unearned(
        total: usize,
        free: usize,
        ready: &[SubscriptionId],
        flows: &HashMap<SubscriptionId, Flow>,
    ) -> Vec<(SubscriptionId, usize)> {
        plan(
            limits(total),
            free,
            ready,
            flows,
            &no_host,
            &mut [],
            &|_| usize::MAX,
        )
    }

    fn busy(in_flight: usize) -> Flow {
        Flow {
            in_flight,
            ..Flow::default()
        }
    }

    #[test]
    fn one_subscription_gets_all_but_one() {
        let s = subs(1);
        assert_eq!(simple(8, 8, &s, &HashMap::new()), vec![(s[0], 7)]);
        // With a single slot it may use it.
        assert_eq!(simple(1, 1, &s, &HashMap::new()), vec![(s[0], 1)]);
    }

    #[test]
    fn no_slot_idles_while_work_is_due() {
        // 8 slots, 5 busy subscriptions: floor(8/5) = 1 each left 3 idle.
        let s = subs(5);
        let p = simple(8, 8, &s, &HashMap::new());
        assert_eq!(total(&p), 8, "{p:?}");
        assert!(p.iter().all(|(_, n)| (1..=2).contains(n)), "{p:?}");
        assert_eq!(p[0].1, 2);
        assert_eq!(p[4].1, 1);
    }

    #[test]
    fn shares_count_requests_in_flight() {
        let s = subs(2);
        let flows = HashMap::from([(s[0], busy(4))]);
        assert_eq!(simple(8, 4, &s, &flows), vec![(s[1], 4)]);
    }

    #[test]
    fn busy_subscriptions_without_due_work_still_count() {
        let s = subs(1);
        let flows = HashMap::from([(SubscriptionId::generate(), busy(3))]);
        // Its share is 4; the one slot left over is not left idle.
        assert_eq!(simple(8, 5, &s, &flows), vec![(s[0], 5)]);
    }

    #[test]
    fn a_tripped_or_half_open_subscription_gets_one_probe() {
        let s = subs(3);
        let flows = HashMap::from([
            (
                s[0],
                Flow {
                    tripped: true,
                    ..Flow::default()
                },
            ),
            (
                s[1],
                Flow {
                    breaker: Breaker::HalfOpen,
                    failures: 5,
                    ..Flow::default()
                },
            ),
        ]);
        let p = simple(30, 30, &s, &flows);
        assert_eq!(p[0], (s[0], 1));
        assert_eq!(p[1], (s[1], 1));
        // Its share is 10; what the probes leave goes to it too.
        assert_eq!(p[2], (s[2], 28));
    }

    #[test]
    fn an_open_breaker_gets_nothing() {
        let s = subs(2);
        let flows = HashMap::from([(
            s[0],
            Flow {
                breaker: Breaker::Open { until: 99 },
                failures: 5,
                ..Flow::default()
            },
        )]);
        let p = simple(8, 8, &s, &flows);
        assert_eq!(p, vec![(s[1], 7)]);
    }

    #[test]
    fn failing_subscriptions_share_a_quarter_while_healthy_ones_wait() {
        // A dozen failing subscriptions first in line, one healthy last.
        let s = subs(13);
        let flows: HashMap<_, _> = s[..12]
            .iter()
            .map(|id| {
                (
                    *id,
                    Flow {
                        failures: 2,
                        ..Flow::default()
                    },
                )
            })
            .collect();
        let p = simple(16, 16, &s, &flows);
        let failing: usize = p
            .iter()
            .filter(|(id, _)| *id != s[12])
            .map(|(_, n)| n)
            .sum();
        assert!(failing <= 4, "{p:?}");
        // The healthy one gets what the failing ones may not use.
        assert_eq!(total(&p), 16, "{p:?}");
        assert!(p.iter().any(|(id, n)| *id == s[12] && *n >= 12), "{p:?}");
        // With no healthy one waiting, failing ones may use the slots.
        let p = simple(16, 16, &s[..12], &flows);
        assert_eq!(total(&p), 16);
    }

    #[test]
    fn a_subscription_earns_its_requests_in_flight_by_answers() {
        let s = subs(1);
        let cap = 64;
        let plan_for = |flow: Flow| unearned(256, 256, &s, &HashMap::from([(s[0], flow)]));
        // Nothing known of it (no flow at all, or a new one): 4.
        let none = unearned(256, 256, &s, &HashMap::new());
        assert_eq!(none, vec![(s[0], INITIAL_WINDOW)]);
        let mut flow = Flow {
            in_flight: 4,
            ..Flow::default()
        };
        assert_eq!(plan_for(flow), vec![]);
        // Each answer frees a slot and adds one: 4 answers, 8 in flight.
        for _ in 0..4 {
            flow.in_flight -= 1;
            flow.answered(cap);
        }
        assert_eq!(plan_for(flow), vec![(s[0], 8)]);
        // Never past the per-subscription cap.
        for _ in 0..1_000 {
            flow.answered(cap);
        }
        assert_eq!(flow.window(), cap);
        // A connection failure or timeout starts it over (the event loop
        // sets the window to 0).
        flow.window = 0;
        assert_eq!(flow.window(), INITIAL_WINDOW);
    }

    #[test]
    fn receivers_that_hold_requests_without_answering_count_as_failing() {
        // A dozen subscriptions with requests out since t=0, one healthy.
        let s = subs(13);
        let mut flows: HashMap<_, _> = s[..12]
            .iter()
            .map(|id| {
                (
                    *id,
                    Flow {
                        in_flight: 1,
                        heard_at: 0,
                        ..Flow::default()
                    },
                )
            })
            .collect();
        // Within the stall time they are healthy and take their shares.
        for f in flows.values_mut() {
            f.check_stall(STALL_AFTER_MS);
        }
        assert!(flows.values().all(|f| !f.failing()));
        let early = simple(64, 52, &s, &flows);
        let held: usize = early
            .iter()
            .filter(|(id, _)| *id != s[12])
            .map(|(_, n)| n)
            .sum();
        assert!(held > 16, "{early:?}");
        // Past it with no answer: together at most a quarter (12 are in
        // flight already, so 4 more), and the healthy one gets the rest.
        for f in flows.values_mut() {
            f.check_stall(STALL_AFTER_MS + 1);
        }
        assert!(flows.values().all(|f| f.stalled && f.failing()));
        let late = simple(64, 52, &s, &flows);
        let held: usize = late
            .iter()
            .filter(|(id, _)| *id != s[12])
            .map(|(_, n)| n)
            .sum();
        assert!(held <= 4, "{late:?}");
        assert!(
            late.iter().any(|(id, n)| *id == s[12] && *n >= 40),
            "{late:?}"
        );
        // Nothing in flight: not stalled, however long ago it was heard.
        let mut idle = Flow::default();
        idle.check_stall(u64::MAX);
        assert!(!idle.stalled);
    }

    #[test]
    fn caps_per_subscription_and_per_host_hold() {
        let s = subs(3);
        let l = Limits {
            total: 100,
            per_subscription: 10,
            per_host: 15,
        };
        // s[0] and s[1] share host 0; s[2] is on host 1.
        let host = |id: SubscriptionId| Some(if id == s[2] { 1 } else { 0 });
        let mut hosts = vec![0, 0];
        let any = |_| usize::MAX;
        let p = plan(
            l,
            100,
            &s,
            &earned(&s, &HashMap::new()),
            &host,
            &mut hosts,
            &any,
        );
        assert_eq!(p, vec![(s[0], 10), (s[1], 5), (s[2], 10)]);
        assert_eq!(hosts, vec![15, 10]);
    }

    #[test]
    fn own_starts_cap_each_subscription_and_free_slots_go_elsewhere() {
        let s = subs(3);
        // s[0] may start 2 (its rate limit's tokens), s[1] one (FIFO).
        let starts = |id: SubscriptionId| {
            if id == s[0] {
                2
            } else if id == s[1] {
                1
            } else {
                usize::MAX
            }
        };
        let p = plan(
            limits(30),
            30,
            &s,
            &earned(&s, &HashMap::new()),
            &no_host,
            &mut [],
            &starts,
        );
        assert_eq!(p, vec![(s[0], 2), (s[1], 1), (s[2], 27)]);
    }

    #[test]
    fn token_bucket_spaces_requests_and_bursts_up_to_its_size() {
        let limit = RateLimit::per_second(5).burst(2);
        let mut b = Bucket::full(limit, 1_000);
        assert_eq!(b.available(), 2);
        b.take();
        b.take();
        assert_eq!(b.available(), 0);
        // One token every 200 ms.
        assert_eq!(b.ready_at(limit), 1_200);
        b.refill(limit, 1_199);
        assert_eq!(b.available(), 0);
        b.refill(limit, 1_200);
        assert_eq!(b.available(), 1);
        // A long quiet spell fills it to the burst, no more.
        b.refill(limit, 60_000);
        assert_eq!(b.available(), 2);
        // A clock that goes back earns nothing.
        b.take();
        b.refill(limit, 10);
        assert_eq!(b.available(), 1);
        let slow = RateLimit::per_second(1);
        let mut b = Bucket::full(slow, 0);
        b.take();
        assert_eq!(b.ready_at(slow), 1_000);
    }

    #[test]
    fn never_more_than_free() {
        let s = subs(3);
        for free in 0..=8 {
            let p = simple(8, free, &s, &HashMap::new());
            assert!(total(&p) <= free, "{free}: {p:?}");
        }
    }
}
