//! The one error type of the crate.

use std::path::PathBuf;

use crate::ids::{DeliveryId, ParseIdError, SubscriptionId};

/// A `Result` whose error is [`hookbus::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in hookbus.
///
/// Messages say what was wrong and what is allowed, so they can be shown to
/// the person who made the mistake (for example, returned from a REST
/// endpoint that creates subscriptions). Sources are kept, so callers can
/// walk the chain with [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A subscription URL is not an absolute `http`/`https` URL with a host,
    /// is too long, carries credentials, or names an internal address while
    /// [`Builder::allow_private_targets`](crate::Builder::allow_private_targets)
    /// is off.
    #[error("subscription url `{url}` {reason}")]
    InvalidUrl {
        /// The URL as given (truncated to 200 characters).
        url: String,
        /// What is wrong with it and what is allowed.
        reason: String,
    },

    /// An event name is empty, too long, or has characters other than
    /// letters, digits, `_`, `-` and `.` (or, in a subscription, is not
    /// exactly `*`).
    #[error("event name `{name}` {reason}")]
    InvalidEventName {
        /// The name as given (truncated to 200 characters).
        name: String,
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// A subscription names no events.
    #[error("a subscription needs at least one event name; use `*` to receive every event")]
    NoEvents,

    /// A subscription name is empty, longer than 100 characters, or has
    /// control characters.
    #[error("subscription name {reason}")]
    InvalidName {
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// A secret is empty or too long.
    #[error("secret {reason}")]
    InvalidSecret {
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// An owner is empty, too long or has control characters.
    #[error("owner {reason}")]
    InvalidOwner {
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// A tenant id is empty, too long or has control characters.
    #[error("tenant {reason}")]
    InvalidTenant {
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// A rate limit or ordering setting is out of range.
    #[error("{reason}")]
    InvalidPolicy {
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// A tenant has as many subscriptions as
    /// [`Builder::max_subscriptions_per_tenant`](crate::Builder::max_subscriptions_per_tenant)
    /// allows.
    #[error("tenant `{tenant}` already has {max} subscriptions, the most allowed")]
    TenantFull {
        /// The tenant (shortened if long).
        tenant: String,
        /// The cap.
        max: usize,
    },

    /// Too many test requests to one subscription
    /// ([`Subscriptions::ping`](crate::Subscriptions::ping)) in a short
    /// time: each subscription may have a few in a burst, then one every
    /// two seconds (see [`TEST_REQUEST_BURST`](crate::TEST_REQUEST_BURST)).
    /// Nothing was sent; try again after `retry_after`.
    #[error(
        "too many test requests to this subscription; try again in {} ms",
        retry_after.as_millis()
    )]
    TooManyRequests {
        /// How long until the next test request is allowed.
        retry_after: std::time::Duration,
    },

    /// An idempotency key was used within the idempotency window for
    /// another event: another name, payload or tenant. A retry must send
    /// the same event; a different event needs a new key (Stripe answers
    /// such a request with an error too). Nothing was stored.
    #[error(
        "idempotency key `{key}` was used within the idempotency window for event {holder}, \
         which has another name, payload or tenant; a retry must send the same event, \
         a different event needs a new key"
    )]
    IdempotencyKeyReused {
        /// The key (shortened if long).
        key: String,
        /// The event that holds the key.
        holder: crate::ids::EventId,
    },

    /// An idempotency key is empty, too long or has control characters.
    #[error("idempotency key `{key}` {reason}")]
    InvalidIdempotencyKey {
        /// The key (shortened if long).
        key: String,
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// A `traceparent` is not a W3C trace context.
    #[error("traceparent `{value}` {reason}")]
    InvalidTraceparent {
        /// The value (shortened if long).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A custom header's name or value is not allowed.
    #[error("header `{name}` {reason}")]
    InvalidHeader {
        /// The header name (shortened if long); never the value.
        name: String,
        /// What is wrong with it and what is allowed.
        reason: &'static str,
    },

    /// The same owner already has a subscription for this URL that receives
    /// this event.
    #[error(
        "subscription {existing} of the same owner already sends event `{event}` to `{url}`; \
         update that subscription instead"
    )]
    Conflict {
        /// The event both subscriptions name.
        event: String,
        /// The URL both subscriptions name.
        url: String,
        /// The subscription that already has it.
        existing: SubscriptionId,
    },

    /// A published payload is larger than
    /// [`Builder::max_payload_bytes`](crate::Builder::max_payload_bytes).
    #[error(
        "event payload is {size} bytes of JSON; the limit is {max} bytes (Builder::max_payload_bytes)"
    )]
    PayloadTooLarge {
        /// The size of the serialized payload.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// A published payload does not satisfy the JSON Schema of its event
    /// type in the catalog (with
    /// [`Builder::validate_payloads`](crate::Builder::validate_payloads)
    /// and the `json-schema` feature). Nothing is stored.
    #[error("event `{event}` payload does not satisfy its schema at {pointer}: {message}")]
    PayloadInvalid {
        /// The event name.
        event: String,
        /// The JSON pointer of the first failing value (`/` for the whole
        /// payload).
        pointer: String,
        /// The rule it breaks (the value itself is not repeated, so no
        /// payload content reaches logs).
        message: String,
    },

    /// The published value could not be serialized to JSON.
    #[error("event payload could not be serialized to JSON")]
    Serialize(#[source] serde_json::Error),

    /// No subscription has this id.
    #[error("no subscription with id {0}")]
    SubscriptionNotFound(SubscriptionId),

    /// No delivery has this id.
    #[error("no delivery with id {0}")]
    DeliveryNotFound(DeliveryId),

    /// Only dead deliveries can be retried by hand.
    #[error("delivery {id} is {state}; only dead deliveries can be retried")]
    NotDead {
        /// The delivery.
        id: DeliveryId,
        /// Its current state.
        state: crate::delivery::DeliveryState,
    },

    /// No stored event has this id (never stored: it reached no
    /// subscription; or removed with its last delivery).
    #[error("no stored event with id {0}")]
    EventNotFound(crate::ids::EventId),

    /// A replay that cannot be made as asked: the span is empty or longer
    /// than [`MAX_REPLAY_SPAN`](crate::MAX_REPLAY_SPAN), the subscription
    /// does not take the event (another tenant, another event name), or
    /// the event was stored before its tenant was (record format 3 or
    /// older: replay it per delivery with
    /// [`Outbox::replay_since`](crate::Outbox::replay_since)).
    #[error("cannot replay: {0}")]
    InvalidReplay(String),

    /// A string is not an id.
    #[error("`{input}` is not a valid id: expected 32 hex digits or a hyphenated uuid")]
    InvalidId {
        /// The input (truncated to 200 characters).
        input: String,
    },

    /// Another process (or another open `Bus` in this process) holds the
    /// store. sled allows one process per store.
    #[error(
        "store at {} is in use by another process; stop it, or use the in-process API (Bus::outbox, Subscriptions::health_all, Bus::notices) or the REST adapter's /webhooks/admin routes of the process that holds it",
        path.display()
    )]
    StoreLocked {
        /// The store's folder.
        path: PathBuf,
    },

    /// The path exists but is not a hookbus store.
    #[error("{} is not a hookbus store: {reason}", path.display())]
    NotAStore {
        /// The path that was opened.
        path: PathBuf,
        /// Why it is not a store.
        reason: String,
    },

    /// The store was written by a newer hookbus with a format this version
    /// cannot read.
    #[error(
        "store at {} has format version {found}; this hookbus reads format versions up to {supported}; \
         upgrade hookbus",
        path.display()
    )]
    UnsupportedFormat {
        /// The store's folder.
        path: PathBuf,
        /// The format version found on disk.
        found: u8,
        /// The newest format this build reads.
        supported: u8,
    },

    /// A record on disk could not be decoded. The record is left in place
    /// (or quarantined by the dispatcher) and the rest of the store is
    /// unaffected.
    #[error("corrupt record at key {key}: {reason}")]
    Corrupt {
        /// The record's key, in hex.
        key: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The embedded store failed (I/O error, disk full, ...).
    #[error("store error: {0}")]
    Store(#[source] StoreError),

    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A portal link's token is malformed, was signed with another key, or
    /// has expired (see `hookbus::portal::PortalKey`).
    #[error("portal link refused: {reason}; ask for a new link")]
    InvalidPortalLink {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The bus is shut down (or its dispatcher thread died); nothing more
    /// can be published or changed.
    #[error("the bus is shut down; open it again to publish or change subscriptions")]
    Closed,

    /// [`Outbox::recount`](crate::Outbox::recount) found an index that
    /// disagrees with the delivery records.
    #[error("outbox is inconsistent: {0}")]
    Inconsistent(String),

    /// A listing cursor names a delivery that has left the listed state
    /// since the previous page: list again from the start.
    #[error("cursor delivery {id} is {state} now; list again from the start")]
    CursorMoved {
        /// The cursor.
        id: DeliveryId,
        /// Its state now.
        state: crate::delivery::DeliveryState,
    },

    /// A background thread could not be started.
    #[error("could not start hookbus thread `{name}`")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// An error from the embedded store, kept opaque so the storage engine can
/// change without breaking the public API.
#[derive(Debug)]
pub struct StoreError(StoreErrorKind);

#[derive(Debug)]
enum StoreErrorKind {
    Sled(sled::Error),
    Io(std::io::Error),
    Message(String),
    #[cfg(feature = "postgres")]
    Postgres(postgres::Error),
    #[cfg(feature = "sqlx")]
    Sqlx(sqlx::Error),
}

impl StoreError {
    pub(crate) fn message(msg: impl Into<String>) -> Self {
        StoreError(StoreErrorKind::Message(msg.into()))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            StoreErrorKind::Sled(e) => write!(f, "{e}"),
            StoreErrorKind::Io(e) => write!(f, "{e}"),
            StoreErrorKind::Message(m) => f.write_str(m),
            #[cfg(feature = "postgres")]
            StoreErrorKind::Postgres(e) => match e.as_db_error() {
                Some(db) => write!(f, "postgres: {}: {}", db.code().code(), db.message()),
                None => write!(f, "postgres: {e}"),
            },
            #[cfg(feature = "sqlx")]
            StoreErrorKind::Sqlx(e) => match e.as_database_error() {
                Some(db) => match db.code() {
                    Some(code) => write!(f, "postgres: {code}: {}", db.message()),
                    None => write!(f, "postgres: {}", db.message()),
                },
                None => write!(f, "postgres: {e}"),
            },
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            StoreErrorKind::Sled(e) => Some(e),
            StoreErrorKind::Io(e) => Some(e),
            StoreErrorKind::Message(_) => None,
            #[cfg(feature = "postgres")]
            StoreErrorKind::Postgres(e) => Some(e),
            #[cfg(feature = "sqlx")]
            StoreErrorKind::Sqlx(e) => Some(e),
        }
    }
}

#[cfg(feature = "postgres")]
impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Store(StoreError(StoreErrorKind::Postgres(e)))
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(StoreError(StoreErrorKind::Sqlx(e)))
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Store(StoreError(StoreErrorKind::Sled(e)))
    }
}

impl From<ParseIdError> for Error {
    fn from(e: ParseIdError) -> Self {
        Error::InvalidId {
            input: e.input().to_owned(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Store(StoreError(StoreErrorKind::Io(e)))
    }
}

/// Whether a read error means the record itself is damaged (it will never
/// decode), as opposed to a failure of the store that may pass.
pub(crate) fn is_damage(err: &Error) -> bool {
    matches!(err, Error::Corrupt { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_that_fail_to_decode_count_as_damage() {
        assert!(is_damage(&Error::Corrupt {
            key: "64ff".into(),
            reason: "truncated".into(),
        }));
        assert!(!is_damage(&Error::Store(StoreError::message("I/O error"))));
        assert!(!is_damage(&Error::from(std::io::Error::other("disk"))));
    }

    #[test]
    fn a_malformed_id_is_an_invalid_id_error() {
        let e = "nope".parse::<crate::ids::DeliveryId>().unwrap_err();
        assert!(matches!(Error::from(e), Error::InvalidId { .. }));
    }
}
