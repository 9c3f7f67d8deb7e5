//! Endpoint health: what the attempts to one subscription's receiver have
//! looked like lately — counts, the current run of failures and since
//! when, the last success and failure, recent latencies — and whether the
//! subscription was disabled, when and why.
//!
//! The dispatcher gathers what happened in a round as a [`HealthDelta`] per
//! subscription and the store merges it into the stored [`HealthRecord`]
//! ([`HealthRecord::merge`], pure): one write per subscription per round,
//! not one per attempt, and exact when several instances share a store
//! (each merges its own deltas under the row's lock).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{SubscriptionId, Timestamp};
use crate::record::Attempt;

/// How many recent attempt durations are kept for the percentiles.
pub(crate) const LATENCY_WINDOW: usize = 100;

/// A subscription's health as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HealthRecord {
    pub(crate) attempts: u64,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    /// Failed attempts since the last success.
    pub(crate) consecutive_failures: u64,
    /// When the current run of failures began (`None`: not failing).
    pub(crate) failing_since: Option<Timestamp>,
    pub(crate) last_success_at: Option<Timestamp>,
    pub(crate) last_failure: Option<(Timestamp, String)>,
    /// The durations (ms) of the most recent attempts, oldest first.
    pub(crate) latencies_ms: Vec<u32>,
    /// Why and when the subscription was disabled, while it is.
    pub(crate) disabled: Option<(Timestamp, String)>,
}

impl crate::codec::Record for HealthRecord {}

/// What happened to a subscription's health since the last write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HealthDelta {
    pub(crate) attempts: u64,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    /// A success (or a reset) ended the stored run of failures.
    pub(crate) run_broken: bool,
    /// Failures after the last success (or reset) in this delta, and when
    /// the first of them happened.
    pub(crate) trailing_failures: u64,
    pub(crate) trailing_since: Option<Timestamp>,
    pub(crate) last_success_at: Option<Timestamp>,
    pub(crate) last_failure: Option<(Timestamp, String)>,
    pub(crate) latencies_ms: Vec<u32>,
    /// `Some(Some(..))`: disabled now; `Some(None)`: enabled again.
    pub(crate) disabled: Option<Option<(Timestamp, String)>>,
}

impl HealthDelta {
    /// Adds one attempt.
    pub(crate) fn record(&mut self, a: &Attempt) {
        self.attempts += 1;
        let at = a.at.saturating_add(Duration::from_millis(a.duration_ms));
        if a.succeeded() {
            self.successes += 1;
            self.run_broken = true;
            self.trailing_failures = 0;
            self.trailing_since = None;
            self.last_success_at = Some(at);
        } else {
            self.failures += 1;
            self.trailing_failures += 1;
            self.trailing_since.get_or_insert(a.at);
            self.last_failure = Some((at, failure_reason(a)));
        }
        if self.latencies_ms.len() == LATENCY_WINDOW {
            self.latencies_ms.remove(0);
        }
        self.latencies_ms
            .push(u32::try_from(a.duration_ms).unwrap_or(u32::MAX));
    }

    /// The subscription was disabled (`Some`) or enabled again (`None`);
    /// enabling starts a fresh run.
    pub(crate) fn set_disabled(&mut self, disabled: Option<(Timestamp, String)>) {
        if disabled.is_none() {
            self.run_broken = true;
            self.trailing_failures = 0;
            self.trailing_since = None;
        }
        self.disabled = Some(disabled);
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == HealthDelta::default()
    }
}

/// How a failed attempt is described: the status or why none came.
pub(crate) fn failure_reason(a: &Attempt) -> String {
    let s = match (&a.error, a.status) {
        (Some(e), _) => e.to_string(),
        (None, Some(status)) => format!("HTTP {status}"),
        (None, None) => "no response".to_owned(),
    };
    crate::util::clip(&s)
}

impl HealthRecord {
    /// The record after `delta` (pure).
    pub(crate) fn merge(mut self, d: &HealthDelta) -> HealthRecord {
        self.attempts = self.attempts.saturating_add(d.attempts);
        self.successes = self.successes.saturating_add(d.successes);
        self.failures = self.failures.saturating_add(d.failures);
        if d.run_broken {
            self.consecutive_failures = d.trailing_failures;
            self.failing_since = d.trailing_since;
        } else {
            self.consecutive_failures = self
                .consecutive_failures
                .saturating_add(d.trailing_failures);
            self.failing_since = self.failing_since.or(d.trailing_since);
        }
        if d.last_success_at > self.last_success_at {
            self.last_success_at = d.last_success_at;
        }
        if d.last_failure.as_ref().map(|f| f.0) > self.last_failure.as_ref().map(|f| f.0) {
            self.last_failure = d.last_failure.clone();
        }
        self.latencies_ms.extend_from_slice(&d.latencies_ms);
        let over = self.latencies_ms.len().saturating_sub(LATENCY_WINDOW);
        self.latencies_ms.drain(..over);
        if let Some(disabled) = &d.disabled {
            self.disabled = disabled.clone();
        }
        self
    }

    /// Whether the subscription has been failing for at least `window` at
    /// `now` (every attempt since `failing_since` failed).
    pub(crate) fn failing_for(&self, window: Duration, now: Timestamp) -> bool {
        self.consecutive_failures > 0
            && self
                .failing_since
                .is_some_and(|since| now.since(since) >= window)
    }
}

/// Whether a subscription's receiver is working, as [`EndpointHealth::status`]
/// judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// Inactive: deactivated by hand, disabled automatically after failing
    /// for too long, or after a 410 Gone. Its pending deliveries wait.
    Disabled,
    /// The most recent attempt failed.
    Failing,
    /// The most recent attempt succeeded.
    Healthy,
    /// No attempt yet.
    Unknown,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthStatus::Disabled => "disabled",
            HealthStatus::Failing => "failing",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unknown => "unknown",
        })
    }
}

/// How one subscription's receiver is doing: from
/// [`Subscriptions::health`](crate::Subscriptions::health) and
/// [`Subscriptions::health_all`](crate::Subscriptions::health_all).
///
/// Counts cover every attempt since the subscription was created (written
/// once per dispatcher round: a crash may lose the last round's counts);
/// latencies cover the last 100 attempts.
///
/// Its `Debug` shows of the URL only its scheme, host and port (as
/// [`Subscription`](crate::Subscription)'s does).
#[derive(Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EndpointHealth {
    /// Which subscription.
    pub subscription: SubscriptionId,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Whether it is active (inactive ones get no new deliveries and their
    /// pending ones wait).
    pub active: bool,
    /// Disabled, failing, healthy or unknown.
    pub status: HealthStatus,
    /// HTTP attempts made.
    pub attempts: u64,
    /// Attempts answered 2xx.
    pub successes: u64,
    /// Attempts that failed (any other status, or no response).
    pub failures: u64,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// When the current run of failures began.
    pub failing_since: Option<Timestamp>,
    /// When an attempt last succeeded.
    pub last_success_at: Option<Timestamp>,
    /// When an attempt last failed.
    pub last_failure_at: Option<Timestamp>,
    /// Why it failed (`HTTP 500`, `timeout: ...`).
    pub last_failure_reason: Option<String>,
    /// Median duration of the last 100 attempts, in ms.
    pub latency_p50_ms: Option<u64>,
    /// 90th percentile of the same, in ms.
    pub latency_p90_ms: Option<u64>,
    /// 99th percentile of the same, in ms.
    pub latency_p99_ms: Option<u64>,
    /// Deliveries pending (due, waiting for a retry, or paused).
    pub backlog: u64,
    /// When it was disabled (automatically, by a 410, or by hand), while
    /// it is inactive.
    pub disabled_at: Option<Timestamp>,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for EndpointHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so that a new field is a compile error here.
        let EndpointHealth {
            subscription,
            name,
            url,
            active,
            status,
            attempts,
            successes,
            failures,
            consecutive_failures,
            failing_since,
            last_success_at,
            last_failure_at,
            last_failure_reason,
            latency_p50_ms,
            latency_p90_ms,
            latency_p99_ms,
            backlog,
            disabled_at,
            disabled_reason,
        } = self;
        f.debug_struct("EndpointHealth")
            .field("subscription", subscription)
            .field("name", name)
            .field("url", &crate::redact::url(url))
            .field("active", active)
            .field("status", status)
            .field("attempts", attempts)
            .field("successes", successes)
            .field("failures", failures)
            .field("consecutive_failures", consecutive_failures)
            .field("failing_since", failing_since)
            .field("last_success_at", last_success_at)
            .field("last_failure_at", last_failure_at)
            .field("last_failure_reason", last_failure_reason)
            .field("latency_p50_ms", latency_p50_ms)
            .field("latency_p90_ms", latency_p90_ms)
            .field("latency_p99_ms", latency_p99_ms)
            .field("backlog", backlog)
            .field("disabled_at", disabled_at)
            .field("disabled_reason", disabled_reason)
            .finish()
    }
}

impl EndpointHealth {
    /// The health of subscription `id` (`name`, `url`, `active`) from its
    /// stored record and backlog.
    pub(crate) fn new(
        (id, name, url, active): (SubscriptionId, &str, &str, bool),
        h: HealthRecord,
        backlog: u64,
    ) -> EndpointHealth {
        let status = if !active {
            HealthStatus::Disabled
        } else if h.attempts == 0 {
            HealthStatus::Unknown
        } else if h.consecutive_failures > 0 {
            HealthStatus::Failing
        } else {
            HealthStatus::Healthy
        };
        let mut sorted = h.latencies_ms.clone();
        sorted.sort_unstable();
        let (disabled_at, disabled_reason) = match h.disabled.filter(|_| !active) {
            Some((at, why)) => (Some(at), Some(why)),
            None => (None, None),
        };
        let (last_failure_at, last_failure_reason) = match h.last_failure {
            Some((at, why)) => (Some(at), Some(why)),
            None => (None, None),
        };
        EndpointHealth {
            subscription: id,
            name: name.to_owned(),
            url: url.to_owned(),
            active,
            status,
            attempts: h.attempts,
            successes: h.successes,
            failures: h.failures,
            consecutive_failures: h.consecutive_failures,
            failing_since: h.failing_since,
            last_success_at: h.last_success_at,
            last_failure_at,
            last_failure_reason,
            latency_p50_ms: percentile(&sorted, 50),
            latency_p90_ms: percentile(&sorted, 90),
            latency_p99_ms: percentile(&sorted, 99),
            backlog,
            disabled_at,
            disabled_reason,
        }
    }

    /// Orders a listing so the ones that need a person come first: failing
    /// (longest run first), then disabled, then the rest (by id).
    pub(crate) fn triage(list: &mut [EndpointHealth]) {
        list.sort_by(|a, b| {
            let rank = |h: &EndpointHealth| match h.status {
                HealthStatus::Failing => 0,
                HealthStatus::Disabled => 1,
                _ => 2,
            };
            rank(a)
                .cmp(&rank(b))
                .then(b.consecutive_failures.cmp(&a.consecutive_failures))
                .then(a.subscription.cmp(&b.subscription))
        });
    }
}

/// The `p`th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[u32], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(u64::from(sorted[rank - 1]))
}

/// The bus's own health, for readiness and liveness probes: from
/// [`Bus::health`](crate::Bus::health).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusHealth {
    /// The dispatcher answered and the store took a write in time, and no
    /// problem below stops delivery: serve traffic.
    pub ready: bool,
    /// The dispatcher thread runs and answered the probe in time.
    pub dispatcher_alive: bool,
    /// The probe's write was committed and flushed (sled: the outbox
    /// counters were rewritten; PostgreSQL: the round committed and the
    /// counters were read back).
    pub store_writable: bool,
    /// Senders alive: the task senders' runtime threads (see
    /// [`Builder::sender_threads`](crate::Builder::sender_threads)), or with
    /// [`Builder::blocking_senders`](crate::Builder::blocking_senders) the
    /// sender threads (started on demand, up to
    /// [`Builder::senders`](crate::Builder::senders); a thread that ended is
    /// started again with the next request).
    pub senders_alive: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Pending deliveries.
    pub backlog: u64,
    /// How long the longest-waiting due delivery of a subscription that
    /// may send (active, not halted) has been due (`None`: nothing is
    /// due). Growing under a steady load means the senders do not keep
    /// up, or receivers are failing.
    pub oldest_due_age: Option<Duration>,
    /// What is wrong, as sentences (empty when healthy).
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AttemptError, AttemptErrorKind};

    fn attempt(at: u64, status: Option<u16>, ms: u64) -> Attempt {
        Attempt {
            number: 1,
            at: Timestamp::from_millis(at),
            duration_ms: ms,
            status,
            error: status.is_none().then(|| AttemptError {
                kind: AttemptErrorKind::Timeout,
                message: "timed out".into(),
            }),
            response_excerpt: Vec::new(),
        }
    }

    #[test]
    fn a_run_of_failures_is_counted_across_deltas_and_ended_by_a_success() {
        let mut d1 = HealthDelta::default();
        d1.record(&attempt(1_000, Some(500), 10));
        d1.record(&attempt(2_000, None, 20));
        let h = HealthRecord::default().merge(&d1);
        assert_eq!((h.attempts, h.failures, h.consecutive_failures), (2, 2, 2));
        assert_eq!(h.failing_since, Some(Timestamp::from_millis(1_000)));
        assert_eq!(
            h.last_failure.as_ref().unwrap().1,
            "timeout: timed out",
            "the newest reason"
        );
        // A second delta of failures continues the run from its start.
        let mut d2 = HealthDelta::default();
        d2.record(&attempt(5_000, Some(503), 5));
        let h = h.merge(&d2);
        assert_eq!(h.consecutive_failures, 3);
        assert_eq!(h.failing_since, Some(Timestamp::from_millis(1_000)));
        assert!(h.failing_for(Duration::from_secs(4), Timestamp::from_millis(5_000)));
        assert!(!h.failing_for(Duration::from_secs(5), Timestamp::from_millis(5_000)));
        // A success then one failure: the run is the one failure.
        let mut d3 = HealthDelta::default();
        d3.record(&attempt(6_000, Some(200), 7));
        d3.record(&attempt(7_000, Some(500), 8));
        let h = h.merge(&d3);
        assert_eq!((h.attempts, h.successes, h.failures), (5, 1, 4));
        assert_eq!(h.consecutive_failures, 1);
        assert_eq!(h.failing_since, Some(Timestamp::from_millis(7_000)));
        assert_eq!(h.last_success_at, Some(Timestamp::from_millis(6_007)));
        // Enabling again starts afresh and clears the reason.
        let mut d4 = HealthDelta::default();
        d4.set_disabled(Some((Timestamp::from_millis(8_000), "x".into())));
        let h = h.merge(&d4);
        assert!(h.disabled.is_some());
        let mut d5 = HealthDelta::default();
        d5.set_disabled(None);
        let h = h.merge(&d5);
        assert_eq!((h.consecutive_failures, h.failing_since), (0, None));
        assert!(h.disabled.is_none());
        assert!(!h.failing_for(Duration::ZERO, Timestamp::from_millis(9_000)));
    }

    #[test]
    fn latencies_keep_the_last_window_and_give_nearest_rank_percentiles() {
        let mut d = HealthDelta::default();
        for ms in 1..=250u64 {
            d.record(&attempt(ms, Some(200), ms));
        }
        assert_eq!(d.latencies_ms.len(), LATENCY_WINDOW);
        let h = HealthRecord::default().merge(&d).merge(&d);
        assert_eq!(h.latencies_ms.len(), LATENCY_WINDOW);
        assert_eq!(h.latencies_ms[0], 151);
        let mut sorted = h.latencies_ms.clone();
        sorted.sort_unstable();
        assert_eq!(percentile(&sorted, 50), Some(200));
        assert_eq!(percentile(&sorted, 99), Some(249));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 99), Some(7));
    }
}
