//! Test events: a stored event sent to one subscription only, whatever its
//! event filter, delivered, retried and logged like any other.

use super::Subscriptions;
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::record::Event;

/// The event name of a test event when none is given.
pub const TEST_EVENT: &str = "webhook.test";

impl Subscriptions<'_> {
    /// Sends a test event to one subscription: an event named `event`
    /// ([`TEST_EVENT`] if `None`) with `payload` (JSON; `None`:
    /// `{"type":"webhook.test","subscription":"<id>","test":true}`) is
    /// stored for this subscription alone (even if its event filter would
    /// not take the name, and even when it is inactive: the delivery then
    /// waits) and delivered like any other event: signed, retried, in the
    /// delivery log. Returns the new delivery's id.
    ///
    /// Unlike [`ping`](Self::ping), nothing waits for the receiver, and
    /// the outcome is read from the outbox later.
    ///
    /// Errors: [`Error::SubscriptionNotFound`], [`Error::InvalidEventName`],
    /// [`Error::PayloadTooLarge`], store errors.
    pub fn send_test_event(
        &self,
        id: SubscriptionId,
        event: Option<&str>,
        payload: Option<&serde_json::Value>,
    ) -> Result<DeliveryId> {
        let name = event.unwrap_or(TEST_EVENT).to_owned();
        super::validate::validate_event_name(&name, false)?;
        let payload = match payload {
            Some(p) => serde_json::to_vec(p),
            None => serde_json::to_vec(&serde_json::json!({
                "type": name,
                "subscription": id.to_string(),
                "test": true,
            })),
        }
        .map_err(Error::Serialize)?;
        let max = self.config.max_payload_bytes;
        if payload.len() > max {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                max,
            });
        }
        self.engine.write(move |s| {
            let sub = s.subscription(id)?.ok_or(Error::SubscriptionNotFound(id))?;
            let event = Event {
                id: EventId::generate(),
                name,
                payload,
                created_at: Timestamp::now(),
                traceparent: None,
                tenant: sub.tenant.clone(),
                scope_unknown: false,
            };
            let ids = s.publish(&event, &[id])?;
            ids.first().copied().ok_or(Error::SubscriptionNotFound(id))
        })
    }
}
