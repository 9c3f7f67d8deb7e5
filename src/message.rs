//! [`Message`]: an event to publish with options — for a tenant, with an
//! idempotency key, with the publisher's trace context.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::EventId;
use crate::record::Event;
use crate::util::clip;

const MAX_KEY_LEN: usize = 255;

/// An event type declared once in Rust: its name and its payload type
/// together, so publishing the wrong payload for a name does not compile.
///
/// ```
/// # fn main() -> Result<(), hookbus::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let bus = hookbus::Bus::builder().path(dir.path()).deliver(false).open()?;
/// #[derive(serde::Serialize)]
/// struct InvoicePaid {
///     invoice: u64,
///     amount_cents: u64,
/// }
///
/// impl hookbus::EventType for InvoicePaid {
///     const NAME: &'static str = "invoice.paid";
/// }
///
/// bus.emit(&InvoicePaid { invoice: 42, amount_cents: 1999 })?;
/// bus.emit_to("acme", &InvoicePaid { invoice: 43, amount_cents: 500 })?;
/// let with_options = hookbus::Message::of(&InvoicePaid { invoice: 44, amount_cents: 1 })
///     .idempotency_key("invoice-44-paid");
/// bus.publish_message(with_options)?;
/// # Ok(()) }
/// ```
///
/// A payload of another type for the same name is a type error:
///
/// ```compile_fail
/// # let bus: hookbus::Bus = unimplemented!();
/// #[derive(serde::Serialize)]
/// struct InvoicePaid { invoice: u64 }
/// impl hookbus::EventType for InvoicePaid { const NAME: &'static str = "invoice.paid"; }
/// bus.emit(&serde_json::json!({"invoice": "not a number"})); // no EventType: does not compile
/// ```
pub trait EventType: Serialize {
    /// The event name (`X-Webhook-Event`): 1 to 100 letters, digits, `_`,
    /// `-` and `.`; checked when published.
    const NAME: &'static str;
}

/// An event to publish with [`Bus::publish_message`](crate::Bus::publish_message)
/// or [`Bus::publish_message_durable`](crate::Bus::publish_message_durable),
/// when plain [`publish`](crate::Bus::publish) is not enough.
///
/// ```
/// # fn main() -> Result<(), hookbus::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let bus = hookbus::Bus::builder().path(dir.path()).deliver(false).open()?;
/// use hookbus::Message;
/// let order = serde_json::json!({"id": 42});
/// let message = || {
///     Message::new("order.paid", &order)
///         .tenant("acme")
///         .idempotency_key("order-42-paid")
///         .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
/// };
/// let first = bus.publish_message(message())?;
/// let again = bus.publish_message(message())?; // a retried request handler
/// assert_eq!(first, again); // stored once
/// # Ok(()) }
/// ```
///
/// Its `Debug` shows the payload's length, not its content.
#[must_use]
pub struct Message {
    pub(crate) name: String,
    /// The serialized body, or why it could not be serialized (reported
    /// when published).
    pub(crate) payload: std::result::Result<Vec<u8>, serde_json::Error>,
    pub(crate) tenant: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) traceparent: Option<String>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Message {
            name,
            payload,
            tenant,
            key,
            traceparent,
        } = self;
        let mut s = f.debug_struct("Message");
        s.field("name", name);
        match payload {
            Ok(bytes) => s.field("payload", &format_args!("[{} bytes]", bytes.len())),
            Err(e) => s.field("payload", &format_args!("[not serialized: {e}]")),
        };
        s.field("tenant", tenant)
            .field("key", key)
            .field("traceparent", traceparent)
            .finish()
    }
}

impl Message {
    /// Event `event` with `data` as its JSON body (serialized now; an error
    /// is reported when it is published, as [`Error::Serialize`]).
    pub fn new<T: Serialize + ?Sized>(event: &str, data: &T) -> Self {
        Message {
            name: event.to_owned(),
            payload: serde_json::to_vec(data),
            tenant: None,
            key: None,
            traceparent: None,
        }
    }

    /// A typed event (see [`EventType`]).
    pub fn of<E: EventType>(event: &E) -> Self {
        Message::new(E::NAME, event)
    }

    /// For this tenant only (see [`Bus::publish_to`](crate::Bus::publish_to)).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// An idempotency key (1 to 255 bytes of printable text): a second
    /// message with the same key (and tenant) within the bus's
    /// [`idempotency_window`](crate::Builder::idempotency_window) (default
    /// 24 h) stores nothing and returns the first one's event id — also
    /// after a restart. Use what identifies the business fact, such as
    /// `"invoice-42-paid"`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The publisher's W3C trace context (`traceparent` header value, such
    /// as `00-<32 hex trace id>-<16 hex span id>-01`): stored with the
    /// event and sent as `traceparent` with every attempt, so deliveries
    /// join the publishing request's trace.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
}

/// Checks an idempotency key.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidIdempotencyKey {
            // Escaped: a key with line breaks must not break a log line.
            key: clip(key).escape_debug().to_string(),
            reason,
        })
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return bad("must be 1 to 255 bytes");
    }
    if key.chars().any(char::is_control) {
        return bad("has control characters");
    }
    Ok(())
}

/// Checks a W3C `traceparent`: version `00`, a 32-hex trace id and a
/// 16-hex parent id that are not all zeros, 2 hex flags, lowercase.
pub(crate) fn validate_traceparent(tp: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidTraceparent {
            value: clip(tp).escape_debug().to_string(),
            reason,
        })
    };
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let [version, trace, parent, flags] = parts.as_slice() else {
        return bad("must be version-traceid-parentid-flags");
    };
    if *version != "00" {
        return bad("has a version other than 00");
    }
    if !hex(trace, 32) || trace.bytes().all(|b| b == b'0') {
        return bad("needs a trace id of 32 lowercase hex digits, not all zero");
    }
    if !hex(parent, 16) || parent.bytes().all(|b| b == b'0') {
        return bad("needs a parent id of 16 lowercase hex digits, not all zero");
    }
    if !hex(flags, 2) {
        return bad("needs flags of 2 lowercase hex digits");
    }
    Ok(())
}

/// Who holds an idempotency key, in the engine and in `publish_in`: the
/// event of `held` (its id, and when it took the key) if it took it less
/// than `window` ms before `now`; `None`: the key is free to take.
pub(crate) fn key_holder(held: Option<(EventId, u64)>, now: u64, window: u64) -> Option<EventId> {
    held.filter(|&(_, at)| now.saturating_sub(at) < window)
        .map(|(id, _)| id)
}

/// The idempotency key's binding, one rule for the engine and
/// `publish_in`: a key (`stored`: tenant, `0x00`, key) held by `holder`,
/// stored as `held`, answers a new publish with the holder only if it is
/// the same event: its name, its payload, and its tenant (where the held
/// event's tenant is known). Another event is
/// [`Error::IdempotencyKeyReused`].
pub(crate) fn key_binds(
    stored: &str,
    holder: EventId,
    held: &Event,
    event: &Event,
    tenant: Option<&str>,
) -> Result<()> {
    let same = held.name == event.name
        && held.payload == event.payload
        && (held.scope_unknown || held.tenant.as_deref() == tenant);
    if same {
        return Ok(());
    }
    let key = stored.rsplit('\0').next().unwrap_or_default();
    Err(Error::IdempotencyKeyReused {
        key: key.chars().take(64).collect(),
        holder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents() {
        validate_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nx: y",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
        ] {
            assert!(validate_traceparent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys() {
        validate_key("order-42-paid").unwrap();
        validate_key(&"k".repeat(255)).unwrap();
        for bad in [String::new(), "k".repeat(256), "a\nb".into()] {
            assert!(validate_key(&bad).is_err(), "{bad:?}");
        }
    }
}
