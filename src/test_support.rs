//! What the crate's unit tests build over and over: a write session on a
//! real sled store in a temp dir, a subscription record, an event.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::engine::Session;
use crate::ids::{EventId, SubscriptionId, Timestamp};
use crate::policy::DeliveryOrder;
use crate::record::Event;
use crate::storage::SubscriptionRecord;

/// A write session on a new sled store under `dir`.
pub(crate) fn sled_session(dir: &Path, config: Config) -> Session {
    let (_, w) =
        crate::storage::sled::open(&dir.join("store"), 8 << 20, Duration::from_secs(5), false)
            .expect("open a sled store");
    Session::new(Box::new(w), Arc::new(config)).expect("a session")
}

/// An active app-wide subscription to `events`, delivering to a local
/// port nothing listens on, in the default order.
pub(crate) fn subscription(events: &[&str]) -> SubscriptionRecord {
    let now = Timestamp::now();
    SubscriptionRecord {
        id: SubscriptionId::generate(),
        name: "test".into(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: None,
        previous_secret: None,
        content_type: "application/json".into(),
        active: true,
        owner: None,
        standard_webhooks: false,
        created_at: now,
        modified_at: now,
        tenant: None,
        headers: Vec::new(),
        rate_limit: None,
        order: DeliveryOrder::default(),
        halted_at: None,
    }
}

/// An app-wide event named `name` with `payload`, published now.
pub(crate) fn event(name: &str, payload: &str) -> Event {
    Event {
        id: EventId::generate(),
        name: name.to_owned(),
        payload: payload.as_bytes().to_vec(),
        created_at: Timestamp::now(),
        traceparent: None,
        tenant: None,
        scope_unknown: false,
    }
}
