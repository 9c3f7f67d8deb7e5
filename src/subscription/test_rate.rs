//! The limit on test requests to a subscription
//! ([`Subscriptions::ping`](crate::Subscriptions::ping), and a stored test
//! event): a token bucket per subscription, kept in memory by each
//! [`Bus`](crate::Bus) (not shared between instances, not kept across a
//! restart). A leaf: it uses no other room.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ids::SubscriptionId;

/// How many test requests a subscription may have at once after a quiet
/// spell (the bucket's size).
pub const TEST_REQUEST_BURST: u32 = 5;

/// How often a subscription earns one more test request, up to
/// [`TEST_REQUEST_BURST`]: one every 2 s, so a steady 30 a minute at most.
pub const TEST_REQUEST_REFILL: Duration = Duration::from_secs(2);

/// Buckets are dropped once full again, when there are more than this
/// many (memory follows the subscriptions tested lately).
const PRUNE_ABOVE: usize = 1024;

/// A subscription's bucket: tokens as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Its tokens at `now` (never more than the burst; a clock that went
    /// back earns nothing).
    fn refilled(self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64()
            / TEST_REQUEST_REFILL.as_secs_f64();
        (self.tokens + earned).min(f64::from(TEST_REQUEST_BURST))
    }
}

/// Test-request buckets of every subscription tested lately.
#[derive(Debug, Default)]
pub(crate) struct TestRate {
    buckets: Mutex<HashMap<SubscriptionId, Bucket>>,
}

impl TestRate {
    /// Takes one test request of `id` at `now`, or says how long until
    /// one is allowed ([`Error::TooManyRequests`]).
    pub(crate) fn take(&self, id: SubscriptionId, now: Instant) -> Result<()> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > PRUNE_ABOVE {
            let full = f64::from(TEST_REQUEST_BURST);
            buckets.retain(|_, b| b.refilled(now) < full);
        }
        let bucket = buckets.entry(id).or_insert(Bucket {
            tokens: f64::from(TEST_REQUEST_BURST),
            at: now,
        });
        let tokens = bucket.refilled(now);
        bucket.at = bucket.at.max(now);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            return Ok(());
        }
        bucket.tokens = tokens;
        let wait = TEST_REQUEST_REFILL.mul_f64(1.0 - tokens);
        // Whole milliseconds, rounded up: never "try again in 0 ms".
        let ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        Err(Error::TooManyRequests {
            retry_after: Duration::from_millis(ms.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(r: Result<()>) -> Duration {
        match r {
            Err(Error::TooManyRequests { retry_after }) => retry_after,
            other => panic!("expected TooManyRequests, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_then_one_per_refill() {
        let rate = TestRate::default();
        let (a, b) = (SubscriptionId::generate(), SubscriptionId::generate());
        let t0 = Instant::now();
        for _ in 0..TEST_REQUEST_BURST {
            rate.take(a, t0).unwrap();
        }
        let wait = retry_after(rate.take(a, t0));
        assert_eq!(wait, TEST_REQUEST_REFILL);
        // Another subscription has its own bucket.
        rate.take(b, t0).unwrap();
        // Half a refill later: still none, half as long to wait.
        let half = t0 + TEST_REQUEST_REFILL / 2;
        assert_eq!(retry_after(rate.take(a, half)), TEST_REQUEST_REFILL / 2);
        // One refill later: exactly one more.
        let one = t0 + TEST_REQUEST_REFILL;
        rate.take(a, one).unwrap();
        assert!(rate.take(a, one).is_err());
        // A long quiet spell fills it to the burst, no more.
        let later = one + TEST_REQUEST_REFILL * 100;
        for _ in 0..TEST_REQUEST_BURST {
            rate.take(a, later).unwrap();
        }
        assert!(rate.take(a, later).is_err());
        // A clock that goes back earns nothing and does not panic.
        assert!(rate.take(a, t0).is_err());
    }

    #[test]
    fn full_buckets_are_dropped_when_there_are_many() {
        let rate = TestRate::default();
        let t0 = Instant::now();
        for _ in 0..=PRUNE_ABOVE {
            rate.take(SubscriptionId::generate(), t0).unwrap();
        }
        let later = t0 + TEST_REQUEST_REFILL * 10;
        rate.take(SubscriptionId::generate(), later).unwrap();
        assert_eq!(rate.buckets.lock().unwrap().len(), 1);
    }
}
