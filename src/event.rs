//! Event names: the `*` wildcard.

/// The event name a subscription uses to receive every event.
pub const ALL_EVENTS: &str = "*";
