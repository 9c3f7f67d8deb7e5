//! A delivery's life, in one place: every state change a delivery can go
//! through is a pure function here, and every other module goes through them.
//!
//! ```text
//!                 created (fan-out)
//!                        │
//!                        ▼
//!        ┌──────────► PENDING ◄──────────────┐
//!        │   retry_at    │  │                 │ revived
//!        └───────────────┘  │                 │ (Outbox::retry, retry_all_dead)
//!                 delivered │ dead_lettered   │
//!                (2xx)      │ (schedule spent, refused target,
//!                           │  410, subscription gone/inactive,
//!                           │  event missing)
//!               ┌───────────┴──────┐          │
//!               ▼                  ▼          │
//!           DELIVERED            DEAD ────────┘
//!               │                  │
//!               └─── purged ───────┘ (removed with its attempts)
//!
//!   any record that fails to decode ──► quarantined (moved aside, never sent)
//! ```
//!
//! Invariants the transitions keep:
//! * a delivery is pending exactly when it has a due time
//!   (`next_attempt_at.is_some() == (state == Pending)`), and finished
//!   exactly when it has `finished_at`;
//! * every stored delivery has exactly one state-index entry, the one of its
//!   state (the storage layer keeps that);
//! * the attempt count only grows, and saturates instead of overflowing;
//! * an outcome that arrives for a delivery that already finished (it was
//!   dead-lettered while its request was in flight) never makes it pending
//!   again: a success still counts as delivered, anything else keeps the
//!   reason it died.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::record::Attempt;
use crate::retry::Decision;

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DeliveryState {
    /// Not finished: due now or at `next_attempt_at` (this includes requests
    /// in flight).
    Pending,
    /// A 2xx response was received.
    Delivered,
    /// Every attempt failed, or the subscription is gone or inactive; kept in
    /// the dead letter queue until retried or purged.
    Dead,
}

impl DeliveryState {
    /// `pending`, `delivered` or `dead`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A string that is not a [`DeliveryState`]: what its `FromStr` fails
/// with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{input}`: expected pending, delivered or dead")]
pub struct ParseDeliveryStateError {
    input: String,
}

impl std::str::FromStr for DeliveryState {
    type Err = ParseDeliveryStateError;
    fn from_str(s: &str) -> Result<Self, ParseDeliveryStateError> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "dead" => Ok(DeliveryState::Dead),
            _ => Err(ParseDeliveryStateError {
                input: crate::util::clip(s),
            }),
        }
    }
}

/// One event on its way to one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delivery {
    /// The delivery id, sent as `X-Webhook-Delivery`.
    pub id: DeliveryId,
    /// The event being delivered.
    pub event_id: EventId,
    /// The event's name.
    pub event_name: String,
    /// The subscription it goes to.
    pub subscription_id: SubscriptionId,
    /// Where it stands.
    pub state: DeliveryState,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was created (when its event was published).
    pub created_at: Timestamp,
    /// When it is due next; `Some` exactly when it is pending.
    pub next_attempt_at: Option<Timestamp>,
    /// When it was delivered or died.
    pub finished_at: Option<Timestamp>,
    /// The status code of the last response, if any.
    pub last_status: Option<u16>,
    /// The last error, or why it died without an attempt.
    pub last_error: Option<String>,
    /// Its place among the deliveries of its subscription: 1, 2, 3, … in
    /// publish order, sent as `X-Webhook-Sequence` (0: made before
    /// sequence numbers existed, and not sent).
    pub sequence: u64,
}

/// Why a delivery was dead-lettered without (another) attempt.
pub(crate) mod reason {
    pub(crate) const GONE: &str = "410 Gone: subscription deactivated";
    pub(crate) const DELETED: &str = "subscription was deleted";
    pub(crate) const EVENT_MISSING: &str = "event record is missing";
}

/// A new pending delivery of `event` to `subscription`, due at `now`,
/// number `sequence` of the subscription.
pub(crate) fn created(
    event: EventId,
    event_name: &str,
    event_created_at: Timestamp,
    subscription: SubscriptionId,
    sequence: u64,
    now: Timestamp,
) -> Delivery {
    Delivery {
        id: DeliveryId::generate(),
        event_id: event,
        event_name: event_name.to_owned(),
        subscription_id: subscription,
        state: DeliveryState::Pending,
        attempts: 0,
        created_at: event_created_at,
        next_attempt_at: Some(now),
        finished_at: None,
        last_status: None,
        last_error: None,
        sequence,
    }
}

/// The number of the next attempt of `d` (saturating: a record that claims
/// `u32::MAX` attempts cannot overflow; the retry policy then gives up).
pub(crate) fn next_attempt_number(d: &Delivery) -> u32 {
    d.attempts.saturating_add(1)
}

/// `d` is due again at `at` (a retry after a failed attempt).
pub(crate) fn retry_at(d: &Delivery, at: Timestamp) -> Delivery {
    let mut new = d.clone();
    new.state = DeliveryState::Pending;
    new.next_attempt_at = Some(at);
    new.finished_at = None;
    new
}

/// `d` got a 2xx response.
pub(crate) fn delivered(d: &Delivery, now: Timestamp) -> Delivery {
    let mut new = d.clone();
    new.state = DeliveryState::Delivered;
    new.next_attempt_at = None;
    new.finished_at = Some(now);
    new
}

/// `d` goes to the dead letter queue, with `reason` as its last error.
pub(crate) fn dead_lettered(d: &Delivery, now: Timestamp, reason: &str) -> Delivery {
    let mut new = d.clone();
    new.state = DeliveryState::Dead;
    new.next_attempt_at = None;
    new.finished_at = Some(now);
    new.last_error = Some(reason.to_owned());
    new
}

/// A dead delivery is due again now, for one more attempt.
pub(crate) fn revived(d: &Delivery, now: Timestamp) -> Delivery {
    retry_at(d, now)
}

/// What an attempt's outcome does to `current` (the record as it stands
/// now, which may have changed while the request was in flight).
///
/// Returns the new record and, for a 410, that the subscription is gone.
pub(crate) fn attempted(
    current: &Delivery,
    attempt: &Attempt,
    decision: &Decision,
    now: Timestamp,
) -> (Delivery, bool) {
    let mut base = current.clone();
    base.attempts = base.attempts.max(attempt.number);
    if current.state != DeliveryState::Pending {
        // Finished while in flight: a success still counts; otherwise it
        // keeps why it died.
        if *decision == Decision::Delivered && current.state == DeliveryState::Dead {
            let mut d = delivered(&base, now);
            d.last_status = attempt.status;
            d.last_error = None;
            return (d, false);
        }
        return (base, false);
    }
    base.last_status = attempt.status;
    base.last_error = attempt.error.as_ref().map(ToString::to_string);
    match decision {
        Decision::Delivered => (delivered(&base, now), false),
        Decision::Retry(delay) => (retry_at(&base, now.saturating_add(*delay)), false),
        Decision::Dead(why) => (dead_lettered(&base, now, why), false),
        Decision::Gone => (dead_lettered(&base, now, reason::GONE), true),
    }
}

/// How far in the future a due time may lie, given the retry schedule: the
/// longest delay with its jitter, or a capped `Retry-After`, plus a margin.
/// A due time beyond `now + horizon` can only come from a wall clock that
/// stepped backwards (or was ahead when it was scheduled); such a delivery
/// is treated as due now instead of waiting for the clock to catch up.
pub(crate) fn due_horizon(schedule: &[Duration]) -> Duration {
    let longest = schedule.iter().max().copied().unwrap_or_default();
    // +20 %, saturating (`mul_f64` panics on overflow).
    longest
        .saturating_add(longest / 5)
        .max(crate::retry::MAX_RETRY_AFTER)
        .saturating_add(Duration::from_secs(60))
}

/// Whether a delivery due at `at` (ms) should be sent at `now` (ms).
pub(crate) fn is_due(at: u64, now: u64, horizon: Duration) -> bool {
    let horizon = u64::try_from(horizon.as_millis()).unwrap_or(u64::MAX);
    at <= now || at > now.saturating_add(horizon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AttemptError, AttemptErrorKind};

    fn pending() -> Delivery {
        created(
            EventId::generate(),
            "hello",
            Timestamp::from_millis(1_000),
            SubscriptionId::generate(),
            1,
            Timestamp::from_millis(1_000),
        )
    }

    fn attempt(number: u32, status: Option<u16>) -> Attempt {
        Attempt {
            number,
            at: Timestamp::from_millis(2_000),
            duration_ms: 3,
            status,
            error: status.is_none().then(|| AttemptError {
                kind: AttemptErrorKind::Connect,
                message: "refused".into(),
            }),
            response_excerpt: vec![],
        }
    }

    /// The invariant every transition keeps.
    fn consistent(d: &Delivery) {
        assert_eq!(
            d.next_attempt_at.is_some(),
            d.state == DeliveryState::Pending,
            "{d:?}"
        );
        assert_eq!(
            d.finished_at.is_some(),
            d.state != DeliveryState::Pending,
            "{d:?}"
        );
    }

    #[test]
    fn created_is_pending_and_due_now() {
        let d = pending();
        consistent(&d);
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.next_attempt_at, Some(Timestamp::from_millis(1_000)));
    }

    #[test]
    fn delivered_retry_dead_and_revived() {
        let d = pending();
        let now = Timestamp::from_millis(5_000);
        let ok = delivered(&d, now);
        consistent(&ok);
        assert_eq!(ok.finished_at, Some(now));

        let later = retry_at(&d, Timestamp::from_millis(9_000));
        consistent(&later);
        assert_eq!(later.next_attempt_at, Some(Timestamp::from_millis(9_000)));

        let dead = dead_lettered(&d, now, "gave up");
        consistent(&dead);
        assert_eq!(dead.last_error.as_deref(), Some("gave up"));

        let again = revived(&dead, now);
        consistent(&again);
        assert_eq!(again.state, DeliveryState::Pending);
        assert_eq!(again.next_attempt_at, Some(now));
        assert_eq!(again.id, d.id, "a delivery keeps its id for life");
    }

    #[test]
    fn attempted_applies_the_decision() {
        let d = pending();
        let now = Timestamp::from_millis(3_000);
        let (ok, gone) = attempted(&d, &attempt(1, Some(204)), &Decision::Delivered, now);
        assert!(!gone);
        consistent(&ok);
        assert_eq!(
            (ok.state, ok.attempts, ok.last_status),
            (DeliveryState::Delivered, 1, Some(204))
        );

        let (retry, _) = attempted(
            &d,
            &attempt(1, Some(500)),
            &Decision::Retry(Duration::from_secs(5)),
            now,
        );
        consistent(&retry);
        assert_eq!(retry.next_attempt_at, Some(Timestamp::from_millis(8_000)));
        assert_eq!(retry.last_status, Some(500));

        let (dead, _) = attempted(&d, &attempt(3, None), &Decision::Dead("spent".into()), now);
        consistent(&dead);
        assert_eq!(dead.last_error.as_deref(), Some("spent"));
        assert_eq!(dead.attempts, 3);

        let (gone, is_gone) = attempted(&d, &attempt(1, Some(410)), &Decision::Gone, now);
        assert!(is_gone);
        consistent(&gone);
        assert_eq!(gone.last_error.as_deref(), Some(reason::GONE));
    }

    #[test]
    fn an_outcome_for_a_finished_delivery_never_revives_it() {
        let now = Timestamp::from_millis(3_000);
        let dead = dead_lettered(&pending(), now, reason::DELETED);
        // A failure keeps the reason it died and stays dead.
        let (after, _) = attempted(
            &dead,
            &attempt(1, Some(500)),
            &Decision::Retry(Duration::from_secs(1)),
            now,
        );
        consistent(&after);
        assert_eq!(after.state, DeliveryState::Dead);
        assert_eq!(after.last_error.as_deref(), Some(reason::DELETED));
        assert_eq!(after.attempts, 1, "the attempt is still counted");
        // A success still counts.
        let (ok, _) = attempted(&dead, &attempt(1, Some(200)), &Decision::Delivered, now);
        consistent(&ok);
        assert_eq!(ok.state, DeliveryState::Delivered);
        // A second outcome for a delivered one changes nothing but the count.
        let (same, gone) = attempted(&ok, &attempt(2, Some(410)), &Decision::Gone, now);
        assert!(!gone);
        assert_eq!(same.state, DeliveryState::Delivered);
    }

    #[test]
    fn attempt_numbers_saturate() {
        let mut d = pending();
        d.attempts = u32::MAX;
        assert_eq!(next_attempt_number(&d), u32::MAX);
        let schedule = [Duration::from_secs(1)];
        let a = attempt(next_attempt_number(&d), Some(500));
        let decision = crate::retry::decide(&schedule, &a, None, 0.5);
        assert!(matches!(decision, Decision::Dead(_)), "{decision:?}");
    }

    #[test]
    fn due_times_beyond_the_horizon_are_due_now() {
        let h = due_horizon(&[Duration::from_secs(10)]);
        assert!(h >= crate::retry::MAX_RETRY_AFTER);
        let now = 1_000_000;
        assert!(is_due(now, now, h));
        assert!(is_due(now - 1, now, h));
        assert!(!is_due(now + 5_000, now, h));
        // Ten years ahead: the clock stepped back (or was ahead).
        assert!(is_due(now + 10 * 365 * 86_400_000, now, h));
        assert!(!is_due(u64::MAX, u64::MAX - 1, Duration::MAX));
        // Extreme schedules saturate instead of panicking.
        assert_eq!(due_horizon(&[Duration::MAX]), Duration::MAX);
        assert_eq!(
            due_horizon(&[Duration::ZERO]),
            crate::retry::MAX_RETRY_AFTER + Duration::from_secs(60)
        );
    }
}
