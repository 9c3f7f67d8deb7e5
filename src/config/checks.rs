//! The checks of [`Builder::build`](crate::Builder::build): every
//! setting within its limits, the allowed networks parsed, a store named.

use std::time::Duration;

use std::sync::Arc;

use super::{BYTES_PER_REQUEST, BYTES_PER_TASK, Config, MAX_SENDERS};
use crate::catalog::{Catalog, EventType};
use crate::error::{Error, Result};
use crate::ssrf::IpNet;

/// The largest payload the codec will ever decode; `max_payload_bytes` may
/// not be set above it.
const PAYLOAD_HARD_LIMIT: usize = 16 * 1024 * 1024;
/// The largest accepted `channel_capacity` (the queue's slots, about 100
/// bytes each, are allocated up front: 10 M is about 1 GB).
const MAX_CHANNEL_CAPACITY: usize = 10_000_000;
/// The longest accepted retention window.
const MAX_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);
/// The longest accepted connect or request timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Checks the settings a builder collected, parses its allowed
/// `networks` into them, checks and compiles its event catalog
/// (`event_types`), and returns them.
pub(super) fn checked(
    mut c: Config,
    networks: &[String],
    event_types: Vec<EventType>,
) -> Result<Config> {
    let bad = |m: String| Err(Error::InvalidConfig(m));
    for n in networks {
        match n.parse::<IpNet>() {
            Ok(net) => c.allowed_networks.push(net),
            Err(e) => return bad(e),
        }
    }
    if let Some((h, _)) = c
        .dns_overrides
        .iter()
        .find(|(h, a)| h.is_empty() || a.is_empty())
    {
        return bad(format!(
            "dns_override for `{h}` needs a host name and at least one address"
        ));
    }
    #[cfg(feature = "postgres")]
    let shared = match &c.postgres {
        Some(p) => {
            if p.url.is_empty() {
                return bad(
                    "postgres_schema or claim_lease without postgres(url): give the database URL"
                        .into(),
                );
            }
            if let Some(l) = p.lease
                && (l < Duration::from_secs(1) || l > Duration::from_secs(24 * 3600))
            {
                return bad(format!("claim_lease must be 1 s to 1 day, got {l:?}"));
            }
            if let Some(l) = p.lease {
                // A claim that runs out while its request may still be
                // under way lets another instance send the delivery at
                // the same time.
                let longest = c.connect_timeout.saturating_add(c.request_timeout);
                if l <= longest {
                    return bad(format!(
                        "claim_lease ({l:?}) must be longer than connect_timeout + request_timeout ({longest:?}): a claim that runs out while its request is still under way lets another instance send the same delivery at once; raise claim_lease or lower the timeouts"
                    ));
                }
            }
            crate::storage::postgres::validate_schema(&p.schema)?;
            true
        }
        None => false,
    };
    #[cfg(not(feature = "postgres"))]
    let shared = false;
    if c.path.as_os_str().is_empty() && !shared {
        return bad("no store path: call Builder::path(dir)".into());
    }
    if let Some(n) = c.senders_cap
        && (n == 0 || n > MAX_SENDERS)
    {
        return bad(format!("senders must be 1..={MAX_SENDERS}, got {n}"));
    }
    if !(1..=64).contains(&c.sender_threads) {
        return bad(format!(
            "sender_threads must be 1..=64, got {}",
            c.sender_threads
        ));
    }
    let per_request = if c.blocking_senders {
        BYTES_PER_REQUEST
    } else {
        BYTES_PER_TASK
    };
    if c.sender_memory_budget < per_request {
        return bad(format!(
            "sender_memory_budget must be at least {per_request} bytes (one request in flight), got {}",
            c.sender_memory_budget
        ));
    }
    // The ceiling of requests in flight: what the budget pays for, within
    // the explicit cap; a host may hold half of it unless told otherwise.
    c.senders = (c.sender_memory_budget / per_request)
        .min(MAX_SENDERS)
        .min(c.senders_cap.unwrap_or(MAX_SENDERS));
    c.per_host = c.per_host_cap.unwrap_or((c.senders / 2).max(1));
    if c.breaker_after == 0 || c.breaker_wait > MAX_TIMEOUT {
        return bad(format!(
            "circuit_breaker needs at least 1 failure and a wait of at most 1 hour, got {} and {:?}",
            c.breaker_after, c.breaker_wait
        ));
    }
    if c.idempotency_window < Duration::from_secs(1)
        || c.idempotency_window > Duration::from_secs(365 * 24 * 3600)
    {
        return bad(format!(
            "idempotency_window must be 1 s to 365 days, got {:?}",
            c.idempotency_window
        ));
    }
    if let Some(w) = c.auto_disable_after
        && (w < Duration::from_secs(1) || w > Duration::from_secs(365 * 24 * 3600))
    {
        return bad(format!(
            "auto_disable_after must be 1 s to 365 days (or None), got {w:?}"
        ));
    }
    for (name, w) in [
        ("keep_delivered_for", c.keep_delivered),
        ("keep_dead_for", c.keep_dead),
    ] {
        if let Some(w) = w
            && (w < Duration::from_secs(1) || w > MAX_RETENTION)
        {
            return bad(format!(
                "{name} must be 1 s to 10 years (or None), got {w:?}"
            ));
        }
    }
    if !(1..=10_000).contains(&c.attempts_kept) {
        return bad(format!(
            "attempts_kept must be 1 to 10 000, got {}",
            c.attempts_kept
        ));
    }
    if c.shared_poll < Duration::from_millis(100) || c.shared_poll > MAX_TIMEOUT {
        return bad(format!(
            "poll_interval must be 100 ms to 1 hour, got {:?}",
            c.shared_poll
        ));
    }
    if c.commit_window > Duration::from_millis(100) {
        return bad(format!(
            "commit_window must be at most 100 ms (it delays events), got {:?}",
            c.commit_window
        ));
    }
    if c.max_subscriptions_per_tenant == 0 {
        return bad("max_subscriptions_per_tenant must be at least 1".into());
    }
    if c.per_subscription == 0 || c.per_host_cap == Some(0) {
        return bad(
            "max_in_flight_per_subscription and max_in_flight_per_host must be at least 1".into(),
        );
    }
    if c.max_queued_bytes == 0 {
        return bad("max_queued_bytes must be at least 1".into());
    }
    if c.channel_capacity == 0 || c.channel_capacity > MAX_CHANNEL_CAPACITY {
        return bad(format!(
            "channel_capacity must be 1..={MAX_CHANNEL_CAPACITY}, got {}",
            c.channel_capacity
        ));
    }
    for (name, d) in [
        ("connect_timeout", c.connect_timeout),
        ("request_timeout", c.request_timeout),
    ] {
        // Zero would time every attempt out before it starts.
        if d.is_zero() || d > MAX_TIMEOUT {
            return bad(format!(
                "{name} must be more than 0 and at most 1 hour, got {d:?}"
            ));
        }
    }
    if c.retry_schedule.len() > 100 {
        return bad(format!(
            "retry_schedule may have at most 100 entries, got {}",
            c.retry_schedule.len()
        ));
    }
    if let Some(d) = c
        .retry_schedule
        .iter()
        .find(|d| **d > Duration::from_secs(30 * 86_400))
    {
        return bad(format!(
            "retry_schedule delays may be at most 30 days, got {d:?}"
        ));
    }
    if c.max_payload_bytes == 0 || c.max_payload_bytes > PAYLOAD_HARD_LIMIT {
        return bad(format!(
            "max_payload_bytes must be 1..={PAYLOAD_HARD_LIMIT}, got {}",
            c.max_payload_bytes
        ));
    }
    if c.cache_capacity < 1024 * 1024 {
        return bad(format!(
            "cache_capacity must be at least 1 MiB, got {}",
            c.cache_capacity
        ));
    }
    c.catalog = Arc::new(Catalog::compile(event_types, c.validate_payloads)?);
    Ok(c)
}
