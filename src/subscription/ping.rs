//! The test request of [`Subscriptions::ping`](crate::Subscriptions::ping):
//! a delivery's request to one subscription, sent now on the calling
//! thread, stored nowhere.

use crate::error::{Error, Result};
use crate::record::Attempt;
use crate::sender::Transport;
use crate::storage::SubscriptionRecord;

/// The event name of [`Subscriptions::ping`](crate::Subscriptions::ping)'s
/// test request.
pub const PING_EVENT: &str = "hookbus.ping";

/// Sends the test request to `sub` through `transport` (the bus's
/// senders') and returns its attempt.
pub(super) fn send(sub: &SubscriptionRecord, transport: &Transport) -> Result<Attempt> {
    let id = sub.id;
    let payload = serde_json::to_vec(&serde_json::json!({
        "ping": true,
        "subscription": id.to_string(),
    }))
    .map_err(Error::Serialize)?;
    let job = crate::sender::Job::to(
        sub,
        crate::ids::DeliveryId::generate(),
        crate::ids::EventId::generate(),
        PING_EVENT.to_owned(),
        1,
        crate::sender::Body {
            payload: payload.into(),
            traceparent: None,
        },
    );
    Ok(transport.perform_blocking(job)?.attempt)
}
