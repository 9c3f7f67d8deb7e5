//! Operational notices: what happened in the bus that a person may need to
//! act on — a subscription disabled, a delivery dead-lettered, a failing
//! subscription answering again. They are stored in the same atomic write
//! as the change they describe and stay until the app acknowledges them
//! ([`Notices::ack`](crate::Notices::ack)), so none is lost to a crash or restart (at least
//! once: one handled but not yet acknowledged comes again).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DeliveryId, NoticeId, SubscriptionId, Timestamp};

/// At most this many unacknowledged notices are kept; beyond it the oldest
/// are dropped (with a warning in the log).
pub const MAX_NOTICES: usize = 10_000;

/// Something a person may need to act on. See [`Notices`](crate::Notices).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Notice {
    /// Its id (time-ordered).
    pub id: NoticeId,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: NoticeKind,
}

/// What a [`Notice`] is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NoticeKind {
    /// A subscription was disabled by the bus: it failed continuously for
    /// the auto-disable window, or its receiver answered 410 Gone. Its
    /// pending deliveries wait (after a 410: are dead-lettered) until it
    /// is enabled again.
    SubscriptionDisabled {
        /// Which subscription.
        subscription: SubscriptionId,
        /// Why.
        reason: String,
    },
    /// A subscription whose attempts had been failing got a 2xx again.
    SubscriptionRecovered {
        /// Which subscription.
        subscription: SubscriptionId,
        /// How many attempts in a row had failed.
        failures: u64,
    },
    /// A delivery was moved to the dead letter queue.
    DeliveryDeadLettered {
        /// Which delivery.
        delivery: DeliveryId,
        /// Its subscription.
        subscription: SubscriptionId,
        /// Its event's name.
        event: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoticeKind::SubscriptionDisabled {
                subscription,
                reason,
            } => write!(f, "subscription {subscription} disabled: {reason}"),
            NoticeKind::SubscriptionRecovered {
                subscription,
                failures,
            } => write!(
                f,
                "subscription {subscription} recovered after {failures} failed attempts"
            ),
            NoticeKind::DeliveryDeadLettered {
                delivery,
                subscription,
                event,
                reason,
            } => write!(
                f,
                "delivery {delivery} ({event}) to subscription {subscription} dead-lettered: {reason}"
            ),
        }
    }
}

impl crate::codec::Record for Notice {}

impl Notice {
    pub(crate) fn new(kind: NoticeKind) -> Notice {
        Notice {
            id: NoticeId::generate(),
            at: Timestamp::now(),
            kind,
        }
    }
}
