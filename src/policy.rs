//! Per-subscription delivery policy: a rate limit and the ordering of its
//! deliveries. Set on [`NewSubscription`](crate::NewSubscription) and
//! [`SubscriptionPatch`](crate::SubscriptionPatch); the dispatcher enforces
//! both.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest rate a [`RateLimit`] may name, per second.
pub const MAX_RATE_PER_SECOND: u32 = 100_000;

/// A token bucket: at most `per_second` requests per second on average, with
/// bursts of up to `burst` requests after a quiet spell.
///
/// Requests that would exceed it wait (they are not failed and use no
/// retry); other subscriptions are not slowed. A receiver's `429 Too Many
/// Requests` with `Retry-After` pauses the whole subscription for that long,
/// with or without a rate limit.
///
/// ```
/// let limit = hookbus::RateLimit::per_second(5).burst(10);
/// let new = hookbus::NewSubscription::new("slow", "https://example.com/hooks")
///     .event("hello")
///     .rate_limit(limit);
/// # let _ = new;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second, on average (1 to [`MAX_RATE_PER_SECOND`]).
    pub per_second: u32,
    /// How many requests may start at once after a quiet spell (at least
    /// 1; defaults to 1, which spaces requests evenly).
    pub burst: u32,
}

impl RateLimit {
    /// `n` requests per second, in bursts of 1 (evenly spaced).
    pub fn per_second(n: u32) -> Self {
        RateLimit {
            per_second: n,
            burst: 1,
        }
    }

    /// Allows bursts of up to `n` requests.
    #[must_use]
    pub fn burst(mut self, n: u32) -> Self {
        self.burst = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.per_second == 0 || self.per_second > MAX_RATE_PER_SECOND {
            return Err(Error::InvalidPolicy {
                reason: "rate limit must be 1 to 100000 requests per second",
            });
        }
        if self.burst == 0 || self.burst > MAX_RATE_PER_SECOND {
            return Err(Error::InvalidPolicy {
                reason: "rate limit burst must be 1 to 100000 requests",
            });
        }
        Ok(())
    }
}

/// In which order a subscription's deliveries are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
#[non_exhaustive]
pub enum DeliveryOrder {
    /// As fast as the caps allow: many requests in flight at once, and a
    /// failed delivery's retry waits while later ones go ahead. Receivers
    /// reorder by the event id's time or the `X-Webhook-Sequence` header.
    #[default]
    Unordered,
    /// First in, first out: one request in flight, in publish order; the
    /// next is sent only once the one before it is delivered or
    /// dead-lettered. The order holds across crashes and restarts. What a
    /// dead letter does to the queue behind it is `on_dead_letter`'s
    /// choice.
    Fifo {
        /// What happens when a delivery is dead-lettered.
        on_dead_letter: OnDeadLetter,
    },
}

impl DeliveryOrder {
    /// FIFO, skipping dead letters.
    pub const FIFO: DeliveryOrder = DeliveryOrder::Fifo {
        on_dead_letter: OnDeadLetter::Skip,
    };
    /// FIFO, halting at a dead letter.
    pub const FIFO_HALT: DeliveryOrder = DeliveryOrder::Fifo {
        on_dead_letter: OnDeadLetter::Halt,
    };

    /// Whether this is [`DeliveryOrder::Fifo`].
    pub fn is_fifo(&self) -> bool {
        matches!(self, DeliveryOrder::Fifo { .. })
    }
}

/// What a dead letter does to the deliveries queued behind it in a
/// [`DeliveryOrder::Fifo`] subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum OnDeadLetter {
    /// The next delivery is sent: the receiver sees a gap (which the
    /// `X-Webhook-Sequence` header shows), the dead letter can be retried
    /// later (out of order).
    #[default]
    Skip,
    /// The subscription halts: nothing more is sent until it is resumed
    /// with [`SubscriptionPatch::resume`](crate::SubscriptionPatch::resume).
    /// Retry the dead letter first (`Outbox::retry`) to have it sent
    /// before the rest, in order; resume alone skips it.
    Halt,
}
