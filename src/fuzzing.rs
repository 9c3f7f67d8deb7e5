//! Entry points for the `cargo fuzz` targets in `fuzz/` (feature
//! `fuzzing`). Not part of the supported API.

use crate::codec;
use crate::delivery::Delivery;
use crate::record::{Attempt, Event, OutboxStats};
use crate::ssrf::TargetPolicy;
use crate::storage::SubscriptionRecord;

/// Decodes `data` as every record type; must never panic, and what decodes
/// must decode again from what it encodes to (an older version's record
/// encodes in the current one).
pub fn decode_records(data: &[u8]) {
    fn check<T>(data: &[u8])
    where
        T: codec::Record + PartialEq + std::fmt::Debug,
    {
        if let Ok(v) = codec::decode::<T>(data) {
            let again = codec::encode(&v).expect("decoded records encode");
            assert_eq!(codec::decode::<T>(&again).ok(), Some(v));
        }
    }
    check::<Delivery>(data);
    check::<Event>(data);
    check::<Attempt>(data);
    check::<SubscriptionRecord>(data);
    check::<OutboxStats>(data);
}

/// Runs the subscription validators on arbitrary text.
pub fn validate(text: &str) {
    let _ = crate::subscription::validate::validate_event_name(text, true);
    for policy in [
        TargetPolicy::default(),
        TargetPolicy {
            allow_private: true,
            allowed: vec![],
        },
    ] {
        if let Ok(url) = crate::subscription::validate::validate_url(text, &policy, false) {
            // What is accepted parses again to itself.
            assert_eq!(
                crate::subscription::validate::validate_url(&url, &policy, false)
                    .ok()
                    .as_deref(),
                Some(url.as_str())
            );
        }
    }
}

/// The SSRF check of arbitrary addresses and URL hosts.
pub fn ssrf(data: &[u8]) {
    if data.len() >= 16 {
        let b: [u8; 16] = data[..16].try_into().expect("16 bytes");
        let v6 = std::net::Ipv6Addr::from(b);
        let _ = crate::ssrf::is_global(v6.into());
        if let Some(v4) = v6.to_ipv4_mapped() {
            assert_eq!(
                crate::ssrf::is_global(v4.into()),
                crate::ssrf::is_global(v6.into())
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(u) = url::Url::parse(&format!("http://{text}/"))
        && let Some(h) = u.host()
    {
        let _ = TargetPolicy::default().literal_host_blocked(&h);
    }
}

/// Signature verification of arbitrary headers and bodies.
pub fn verify(data: &[u8]) {
    let (header, body) = data.split_at(data.len().min(100));
    let header = String::from_utf8_lossy(header);
    let _ = crate::signing::verify_signature(b"secret", body, &header);
    let mut parts = header.splitn(3, '\n');
    let (id, ts, sig) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let _ = crate::signing::verify_standard_at(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        [
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ],
        body,
        crate::signing::DEFAULT_TOLERANCE,
        1_700_000_000,
    );
}
