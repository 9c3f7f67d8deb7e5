//! The record codec: one leading format-version byte, then bincode 2 (through
//! serde). Every record on disk goes through here, so the encoding can change
//! with a new version byte without breaking stores already written.
//!
//! Versions:
//! * 1 — the first format.
//! * 2 — a subscription record carries its tenant, custom headers, rate
//!   limit, ordering and FIFO halt. Every other record as in 1.
//! * 3 — a delivery carries its sequence number, an event its trace
//!   context. Every other record as in 2.
//! * 4 — an event carries its tenant (for replay). Every other record as
//!   in 3, and still written as 3 (so a build that reads up to 3 can read
//!   every record but events: instances of a shared store in a rolling
//!   deploy; the PostgreSQL store writes events as 3 too, with the tenant
//!   in columns of their own).
//! * 5 — the sled store's delivery record carries the delivery's newest
//!   attempt (`StoredDelivery` in the storage module; older ones read without
//!   one). Every other record as in 4, written as before (the PostgreSQL
//!   store writes no format-5 record).
//! * 6 — no record changes layout: the sled store indexes subscriptions by
//!   tenant and by owner (the upgrade builds the index, and a build that
//!   reads up to 5 refuses the store rather than change a subscription
//!   without its index entries). Every record written as before.
//!
//! Each stored type is a [`Record`]: it says how to read the bodies of
//! older versions (by default: the same layout).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The newest record format this build reads (and writes, for the types
/// whose layout it changed). It reads every older one it knows.
pub(crate) const RECORD_VERSION: u8 = 6;

/// A type stored through the codec.
pub(crate) trait Record: Serialize + DeserializeOwned {
    /// The version its records are written with: the format of its last
    /// layout change (3 unless a type says otherwise). Versions from this
    /// one up to [`RECORD_VERSION`] share its layout.
    const WRITE_VERSION: u8 = 3;

    /// Decodes the body of a record written with an older `version`
    /// (`1 ..< RECORD_VERSION`). By default the layout did not change.
    fn decode_old(version: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let _ = version;
        decode_body(body)
    }
}

/// Decoding never allocates more than this for one record, whatever length
/// prefixes a damaged record claims.
const DECODE_LIMIT: usize = 32 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Why a record could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Empty,
    UnknownVersion(u8),
    Malformed(String),
    TrailingBytes(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty record"),
            DecodeError::UnknownVersion(v) => write!(
                f,
                "record format version {v} is unknown (this build reads up to {RECORD_VERSION})"
            ),
            DecodeError::Malformed(e) => write!(f, "malformed record: {e}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the record"),
        }
    }
}

/// Encodes a record. Only fails for types serde cannot describe to bincode,
/// which no record type of this crate is; the error is kept regardless.
pub(crate) fn encode<T: Record>(value: &T) -> Result<Vec<u8>, String> {
    encode_as(T::WRITE_VERSION, value)
}

/// Encodes a value with an explicit version byte (an older layout written
/// on purpose, such as the PostgreSQL store's format-3 events).
pub(crate) fn encode_as<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![version];
    let body = bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a record written by [`encode`] (this version or an older one),
/// checking the version byte and that nothing follows the record.
pub(crate) fn decode<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    match version {
        0 => Err(DecodeError::UnknownVersion(version)),
        v if v > RECORD_VERSION => Err(DecodeError::UnknownVersion(version)),
        v if v >= T::WRITE_VERSION => decode_body(body),
        _ => T::decode_old(version, body),
    }
}

/// Decodes a bincode body as `T`, checking that nothing follows it.
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        n: u64,
    }

    impl Record for Rec {}

    #[test]
    fn round_trip_and_damage() {
        let r = Rec {
            name: "hello".into(),
            payload: b"{\"a\":1}".to_vec(),
            n: 7,
        };
        let bytes = encode(&r).unwrap();
        assert_eq!(bytes[0], Rec::WRITE_VERSION);
        assert_eq!(decode::<Rec>(&bytes).unwrap(), r);

        assert_eq!(decode::<Rec>(&[]), Err(DecodeError::Empty));
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert_eq!(decode::<Rec>(&bad), Err(DecodeError::UnknownVersion(99)));
        bad[0] = 0;
        assert_eq!(decode::<Rec>(&bad), Err(DecodeError::UnknownVersion(0)));
        // An unchanged layout reads from version 1 as well.
        let mut v1 = bytes.clone();
        v1[0] = 1;
        assert_eq!(decode::<Rec>(&v1).unwrap(), r);
        for cut in 1..bytes.len() {
            assert!(
                decode::<Rec>(&bytes[..cut]).is_err(),
                "truncated at {cut} decoded"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode::<Rec>(&long), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // version, then a string length claiming ~2^64 bytes.
        let evil = [RECORD_VERSION, 253, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(decode::<Rec>(&evil).is_err());
    }

    #[test]
    fn only_events_are_written_in_format_4_and_plain_deliveries_in_3() {
        use crate::ids::{EventId, SubscriptionId, Timestamp};
        let e = crate::record::Event {
            id: EventId::generate(),
            name: "e".into(),
            payload: b"{}".to_vec(),
            created_at: Timestamp::now(),
            traceparent: None,
            tenant: Some("t".into()),
            scope_unknown: false,
        };
        let bytes = encode(&e).unwrap();
        assert_eq!(bytes[0], 4);
        assert_eq!(decode::<crate::record::Event>(&bytes).unwrap(), e);
        let d = crate::delivery::created(
            e.id,
            "e",
            e.created_at,
            SubscriptionId::generate(),
            1,
            Timestamp::now(),
        );
        let bytes = encode(&d).unwrap();
        assert_eq!(bytes[0], 3, "a build that reads up to 3 reads it");
        assert_eq!(decode::<crate::delivery::Delivery>(&bytes).unwrap(), d);
        // Version 4 of a type whose layout did not change reads the same.
        let mut v4 = bytes.clone();
        v4[0] = 4;
        assert_eq!(decode::<crate::delivery::Delivery>(&v4).unwrap(), d);
        let newer = RECORD_VERSION + 1;
        assert!(matches!(
            decode::<crate::delivery::Delivery>(&[newer, 0]),
            Err(DecodeError::UnknownVersion(v)) if v == newer
        ));
    }
}
