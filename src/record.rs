//! Records that are stored and also handed to callers: events, attempts and
//! the outbox counters. (Deliveries live with their state machine in
//! `delivery`; subscriptions have a private stored form, because they carry
//! secrets: `storage::SubscriptionRecord`.)

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{EventId, Timestamp};

/// A published event as stored: its name and the exact JSON bytes that are
/// sent as the request body.
///
/// Its `Debug` shows the payload's length, not its content (a payload may
/// hold personal data or secrets); read [`payload`](Self::payload) for it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// The event's id.
    pub id: EventId,
    /// The event name (`X-Webhook-Event`).
    pub name: String,
    /// The serialized JSON body. (In JSON and other human-readable formats
    /// it is the JSON value itself.)
    #[serde(with = "crate::serde_views::json_payload")]
    pub payload: Vec<u8>,
    /// When it was published.
    pub created_at: Timestamp,
    /// The W3C trace context of the code that published it, sent as
    /// `traceparent` with every attempt, so deliveries join that trace.
    pub traceparent: Option<String>,
    /// The tenant it was published for (`None`: app-wide). Since record
    /// format 4; an event stored by an older build reads as `None`.
    pub tenant: Option<String>,
    /// Stored before format 4, so whether it had a tenant is not known:
    /// such an event is replayed only per delivery
    /// ([`Outbox::replay_since`](crate::Outbox::replay_since)), never
    /// fanned out again, so it cannot reach another tenant.
    #[serde(skip)]
    pub(crate) scope_unknown: bool,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("payload", &format_args!("[{} bytes]", self.payload.len()))
            .field("created_at", &self.created_at)
            .field("traceparent", &self.traceparent)
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// The kind of failure of an attempt that got no HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AttemptErrorKind {
    /// The attempt took longer than the connect or request timeout.
    Timeout,
    /// The TCP connection failed (refused, reset, unreachable).
    Connect,
    /// The host name did not resolve.
    Dns,
    /// TLS failed.
    Tls,
    /// The target resolved only to addresses that are not allowed (loopback,
    /// private, link-local, ...): never sent, never retried.
    Blocked,
    /// The receiver broke the HTTP protocol, or the connection dropped
    /// mid-response.
    Protocol,
    /// Anything else.
    Other,
}

impl fmt::Display for AttemptErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttemptErrorKind::Timeout => "timeout",
            AttemptErrorKind::Connect => "connect",
            AttemptErrorKind::Dns => "dns",
            AttemptErrorKind::Tls => "tls",
            AttemptErrorKind::Blocked => "blocked",
            AttemptErrorKind::Protocol => "protocol",
            AttemptErrorKind::Other => "other",
        })
    }
}

/// Why an attempt got no HTTP response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttemptError {
    /// What kind of failure.
    pub kind: AttemptErrorKind,
    /// The error message.
    pub message: String,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// One HTTP attempt of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Attempt {
    /// 1 for the first attempt, counting up across retries.
    pub number: u32,
    /// When the attempt started.
    pub at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The response status, if a response came.
    pub status: Option<u16>,
    /// Why no response came.
    pub error: Option<AttemptError>,
    /// The first bytes (at most 1 KiB) of the response body. (In JSON and
    /// other human-readable formats it is text.)
    #[serde(with = "crate::serde_views::text")]
    pub response_excerpt: Vec<u8>,
}

impl Attempt {
    /// Whether the attempt got a 2xx response.
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

/// Counts of deliveries by state. Kept up to date by the dispatcher in the
/// same atomic batch as the deliveries themselves, so reading them is cheap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Deliveries not finished (due now, scheduled for a retry, or in flight).
    pub pending: u64,
    /// Deliveries that got a 2xx response.
    pub delivered: u64,
    /// Deliveries in the dead letter queue.
    pub dead: u64,
    /// Records found damaged and moved aside (never delivered).
    pub quarantined: u64,
}
