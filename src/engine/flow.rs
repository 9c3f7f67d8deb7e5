//! Flow control of one subscription, as pure state machines: the token
//! [`Bucket`] of its rate limit, and its [`Flow`] — the circuit
//! [`Breaker`] (closed, open for a while after failures in a row,
//! half-open for one probe), the slow-start window (how many requests it
//! may have in flight, grown by answers), and a receiver's "429 Too Many
//! Requests" pause. Each transition is a method taking the time as a
//! value, so they are tested without threads, clocks or a store.
//!
//! ```text
//!   Closed ──(N unreachable in a row)──▶ Open{until}
//!   Open ──(until passed: Flow::gate)──▶ HalfOpen (one probe)
//!   HalfOpen ──(probe unreachable: the wait doubles)──▶ Open{until}
//!   any ──(any HTTP answer)──▶ Closed
//! ```

use std::time::Duration;

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

    /// Until when an open breaker holds it back.
    pub(crate) fn open_until(&self) -> Option<u64> {
        match self.breaker {
            Breaker::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Whether a request may start at `now` (ms): `Err(at)` while an open
    /// breaker or a receiver's pause holds it back until `at`. An open
    /// breaker whose wait is over half-opens here (one probe).
    pub(crate) fn gate(&mut self, now: u64) -> Result<(), u64> {
        if let Some(until) = self.open_until() {
            if until > now {
                return Err(until);
            }
            self.breaker = Breaker::HalfOpen;
        }
        if self.paused_until > now {
            return Err(self.paused_until);
        }
        Ok(())
    }

    /// A request was handed to a sender at `now` (ms).
    pub(crate) fn started(&mut self, now: u64) {
        if self.in_flight == 0 {
            self.heard_at = now;
        }
        self.in_flight += 1;
    }

    /// Nothing in flight, not failing and not paused at `now`: the flow
    /// can be dropped (keeping only the window it earned).
    pub(crate) fn idle(&self, now: u64) -> bool {
        self.in_flight == 0 && !self.failing() && self.paused_until <= now
    }
}

#[cfg(test)]
mod tests {
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
    fn the_gate_half_opens_an_open_breaker_once_its_wait_is_over_and_holds_a_pause() {
        let mut f = Flow {
            breaker: Breaker::Open { until: 1_000 },
            ..Flow::default()
        };
        assert_eq!(f.gate(999), Err(1_000));
        assert_eq!(f.breaker, Breaker::Open { until: 1_000 });
        assert_eq!(f.gate(1_000), Ok(()));
        assert_eq!(f.breaker, Breaker::HalfOpen);
        f.paused_until = 2_000;
        assert_eq!(f.gate(1_500), Err(2_000));
        assert_eq!(f.gate(2_000), Ok(()));
    }

    #[test]
    fn a_flow_is_idle_when_nothing_is_in_flight_failing_or_paused() {
        let mut f = Flow::default();
        assert!(f.idle(0));
        f.started(10);
        assert_eq!((f.in_flight, f.heard_at), (1, 10));
        f.started(20);
        assert_eq!(
            (f.in_flight, f.heard_at),
            (2, 10),
            "heard_at is the first start"
        );
        assert!(!f.idle(20));
        let mut paused = Flow {
            paused_until: 50,
            ..Flow::default()
        };
        assert!(!paused.idle(49));
        assert!(paused.idle(50));
        paused.failures = 1;
        paused.tripped = true;
        assert!(!paused.idle(50));
    }
}
