//! What the storage seam carries: the record formats a store keeps
//! (subscriptions, deliveries, events, each with the older formats it still
//! reads) and the small values the traits pass (index entries, damaged
//! records, an event's subscribers). Data only; the seam itself, the
//! [`Reader`](super::Reader) and [`Writer`](super::Writer) traits, is in
//! `storage/mod.rs`, which re-exports everything here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::delivery::{Delivery, DeliveryState};
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::policy::{DeliveryOrder, RateLimit};
use crate::record::{Attempt, Event, OutboxStats};

/// A subscription as stored (record format 2 and later). Unlike
/// [`crate::Subscription`] it serializes its secrets and header values, so
/// it never leaves the crate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SubscriptionRecord {
    pub(crate) id: SubscriptionId,
    pub(crate) name: String,
    pub(crate) events: Vec<String>,
    pub(crate) url: String,
    pub(crate) secret: Option<String>,
    /// The secret being rotated out, and when it stops being used (ms).
    pub(crate) previous_secret: Option<(String, u64)>,
    pub(crate) content_type: String,
    pub(crate) active: bool,
    pub(crate) owner: Option<String>,
    pub(crate) standard_webhooks: bool,
    pub(crate) created_at: Timestamp,
    pub(crate) modified_at: Timestamp,
    // Since format 2:
    /// The tenant whose events it receives (`None`: app-wide events only).
    pub(crate) tenant: Option<String>,
    /// Extra request headers (validated names, secret values).
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) order: DeliveryOrder,
    /// A FIFO subscription that halts at dead letters: the dead letter it
    /// halted at. Nothing is sent while set.
    pub(crate) halted_at: Option<DeliveryId>,
}

impl SubscriptionRecord {
    /// The fan-out rule, the one place it is written: whether an event
    /// named `event`, published for `tenant` (`None`: app-wide), makes a
    /// delivery for this subscription: it is active, names the event (or
    /// `*`), and the tenant reaches it. Publishing (the engine's fan-out
    /// and `publish_in`), replay and `Subscriptions::for_event` use it.
    pub(crate) fn takes(
        &self,
        event: &str,
        tenant: Option<&str>,
        app_events_to_tenants: bool,
    ) -> bool {
        self.active && self.names(event) && self.reached_by(tenant, app_events_to_tenants)
    }

    /// Whether it names `event` or `*`.
    pub(crate) fn names(&self, event: &str) -> bool {
        self.events
            .iter()
            .any(|n| n == event || n == crate::event::ALL_EVENTS)
    }

    /// Whether an event published for `tenant` (`None`: app-wide) reaches
    /// this subscription (the fan-out rule; activity and event names
    /// aside).
    pub(crate) fn reached_by(&self, tenant: Option<&str>, app_events_to_tenants: bool) -> bool {
        match tenant {
            Some(t) => self.tenant.as_deref() == Some(t),
            None => self.tenant.is_none() || app_events_to_tenants,
        }
    }
}

/// The subscription record of format 1.
#[derive(Deserialize)]
struct SubscriptionRecordV1 {
    id: SubscriptionId,
    name: String,
    events: Vec<String>,
    url: String,
    secret: Option<String>,
    previous_secret: Option<(String, u64)>,
    content_type: String,
    active: bool,
    owner: Option<String>,
    standard_webhooks: bool,
    created_at: Timestamp,
    modified_at: Timestamp,
}

impl codec::Record for SubscriptionRecord {
    fn decode_old(version: u8, body: &[u8]) -> std::result::Result<Self, codec::DecodeError> {
        if version >= 2 {
            // Unchanged since format 2.
            return codec::decode_body(body);
        }
        let v1: SubscriptionRecordV1 = codec::decode_body(body)?;
        Ok(SubscriptionRecord {
            id: v1.id,
            name: v1.name,
            events: v1.events,
            url: v1.url,
            secret: v1.secret,
            previous_secret: v1.previous_secret,
            content_type: v1.content_type,
            active: v1.active,
            owner: v1.owner,
            standard_webhooks: v1.standard_webhooks,
            created_at: v1.created_at,
            modified_at: v1.modified_at,
            tenant: None,
            headers: Vec::new(),
            rate_limit: None,
            order: DeliveryOrder::Unordered,
            halted_at: None,
        })
    }
}

/// The delivery record of formats 1 and 2 (no sequence number).
#[derive(Deserialize)]
struct DeliveryV1 {
    id: DeliveryId,
    event_id: EventId,
    event_name: String,
    subscription_id: SubscriptionId,
    state: DeliveryState,
    attempts: u32,
    created_at: Timestamp,
    next_attempt_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    last_status: Option<u16>,
    last_error: Option<String>,
}

impl codec::Record for Delivery {
    fn decode_old(version: u8, body: &[u8]) -> std::result::Result<Self, codec::DecodeError> {
        if version >= 3 {
            // Unchanged since format 3.
            return codec::decode_body(body);
        }
        let v1: DeliveryV1 = codec::decode_body(body)?;
        Ok(Delivery {
            id: v1.id,
            event_id: v1.event_id,
            event_name: v1.event_name,
            subscription_id: v1.subscription_id,
            state: v1.state,
            attempts: v1.attempts,
            created_at: v1.created_at,
            next_attempt_at: v1.next_attempt_at,
            finished_at: v1.finished_at,
            last_status: v1.last_status,
            last_error: v1.last_error,
            sequence: 0,
        })
    }
}

/// A delivery as the sled store keeps it since format 5: the delivery with
/// its newest attempt, so an attempt that ends a delivery costs no write
/// of its own (older attempts move to attempt keys when a newer one
/// comes). Records of formats 1 to 4 read as the delivery without an
/// attempt (theirs are all under attempt keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredDelivery {
    pub(crate) delivery: Delivery,
    pub(crate) last_attempt: Option<Attempt>,
}

/// [`StoredDelivery`]'s layout over borrowed parts, for writing without
/// copies.
#[derive(Serialize)]
pub(crate) struct StoredDeliveryRef<'a> {
    pub(crate) delivery: &'a Delivery,
    pub(crate) last_attempt: Option<&'a Attempt>,
}

impl StoredDeliveryRef<'_> {
    /// The record's bytes, in format 5.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Plain data that bincode always encodes (see `codec::encode`).
        codec::encode_as(<StoredDelivery as codec::Record>::WRITE_VERSION, self)
            .expect("hookbus records always encode")
    }
}

impl codec::Record for StoredDelivery {
    const WRITE_VERSION: u8 = 5;

    fn decode_old(version: u8, body: &[u8]) -> std::result::Result<Self, codec::DecodeError> {
        let delivery = if version >= Delivery::WRITE_VERSION {
            codec::decode_body(body)?
        } else {
            Delivery::decode_old(version, body)?
        };
        Ok(StoredDelivery {
            delivery,
            last_attempt: None,
        })
    }
}

/// The event record of formats 1 and 2 (no trace context).
#[derive(Deserialize)]
struct EventV1 {
    id: EventId,
    name: String,
    #[serde(with = "crate::serde_views::json_payload")]
    payload: Vec<u8>,
    created_at: Timestamp,
}

/// The event record of format 3 (no tenant). The PostgreSQL store still
/// writes events in it (the tenant in columns of their own), so instances
/// of an older build running beside newer ones can read them.
#[derive(Serialize, Deserialize)]
pub(crate) struct EventV3 {
    id: EventId,
    name: String,
    #[serde(with = "crate::serde_views::json_payload")]
    payload: Vec<u8>,
    created_at: Timestamp,
    traceparent: Option<String>,
}

impl EventV3 {
    /// The format-3 form of an event (without its tenant).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn of(e: &Event) -> EventV3 {
        EventV3 {
            id: e.id,
            name: e.name.clone(),
            payload: e.payload.clone(),
            created_at: e.created_at,
            traceparent: e.traceparent.clone(),
        }
    }
}

impl codec::Record for Event {
    const WRITE_VERSION: u8 = 4;

    fn decode_old(version: u8, body: &[u8]) -> std::result::Result<Self, codec::DecodeError> {
        let v3 = if version >= 3 {
            codec::decode_body::<EventV3>(body)?
        } else {
            // 1 and 2: the same layout, without trace context.
            let v1: EventV1 = codec::decode_body(body)?;
            EventV3 {
                id: v1.id,
                name: v1.name,
                payload: v1.payload,
                created_at: v1.created_at,
                traceparent: None,
            }
        };
        Ok(Event {
            id: v3.id,
            name: v3.name,
            payload: v3.payload,
            created_at: v3.created_at,
            traceparent: v3.traceparent,
            tenant: None,
            scope_unknown: true,
        })
    }
}
impl codec::Record for Attempt {}
impl codec::Record for OutboxStats {}

/// An entry of a state index: when (due time for pending deliveries, finish
/// time otherwise, in ms), which delivery, which subscription. Also the
/// cursor of outbox listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) at: u64,
    pub(crate) delivery: DeliveryId,
    pub(crate) subscription: SubscriptionId,
}

impl IndexEntry {
    /// The entry of `d` in the index of its state.
    pub(crate) fn of(d: &Delivery) -> Self {
        let at = match d.state {
            DeliveryState::Pending => d.next_attempt_at,
            _ => d.finished_at,
        };
        IndexEntry {
            at: at.map_or(0, |t| t.as_millis()),
            delivery: d.id,
            subscription: d.subscription_id,
        }
    }
}

/// An index entry or record that could not be parsed, as the backend found
/// it: opaque to the engine, which hands it back to
/// [`Writer::quarantine_raw`](super::Writer::quarantine_raw) so it is
/// moved aside and not met again.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Damaged {
    pub(crate) key: Vec<u8>,
    pub(crate) reason: String,
}

impl fmt::Debug for Damaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Damaged({}: {})", hex::encode(&self.key), self.reason)
    }
}

/// The subscriptions an event fans out to, and index entries found damaged
/// on the way (skipped, for the writer to quarantine).
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    pub(crate) ids: Vec<SubscriptionId>,
    pub(crate) damaged: Vec<Damaged>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stored_delivery_of_format_5_carries_its_newest_attempt_and_older_ones_read_without() {
        use crate::codec::{decode, encode};
        use crate::ids::{SubscriptionId, Timestamp};
        use crate::record::Attempt;
        use crate::storage::{StoredDelivery, StoredDeliveryRef};
        let d = crate::delivery::created(
            crate::ids::EventId::generate(),
            "e",
            Timestamp::now(),
            SubscriptionId::generate(),
            7,
            Timestamp::now(),
        );
        let attempt = Attempt {
            number: 1,
            at: Timestamp::now(),
            duration_ms: 12,
            status: Some(204),
            error: None,
            response_excerpt: b"ok".to_vec(),
        };
        let bytes = StoredDeliveryRef {
            delivery: &d,
            last_attempt: Some(&attempt),
        }
        .encode();
        assert_eq!(bytes[0], 5);
        let back: StoredDelivery = decode(&bytes).unwrap();
        assert_eq!(back.delivery, d);
        assert_eq!(back.last_attempt, Some(attempt));
        // A plain delivery record is not one: the attempt follows it.
        assert!(decode::<crate::delivery::Delivery>(&bytes).is_err());
        // Formats 3 and 4 (and older, see storage) read without an attempt.
        for v in [3, 4] {
            let mut old = encode(&d).unwrap();
            old[0] = v;
            let back: StoredDelivery = decode(&old).unwrap();
            assert_eq!((back.delivery, back.last_attempt), (d.clone(), None));
        }
        // A cut record is an error, not a panic.
        for cut in 1..bytes.len() {
            assert!(decode::<StoredDelivery>(&bytes[..cut]).is_err(), "{cut}");
        }
    }
}
