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
//!   in 3.
//!
//! Each stored type is a [`Record`]: it says how to read the bodies of
//! older versions (by default: the same layout).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The record format this build writes. It reads this version and every
/// older one it knows.
pub(crate) const RECORD_VERSION: u8 = 4;

/// A type stored through the codec.
pub(crate) trait Record: Serialize + DeserializeOwned {
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
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![RECORD_VERSION];
    let body = bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a record written by [`encode`] (this version or an older one),
/// checking the version byte and that nothing follows the record.
pub(crate) fn decode<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    match version {
        RECORD_VERSION => decode_body(body),
        1..RECORD_VERSION => T::decode_old(version, body),
        _ => Err(DecodeError::UnknownVersion(version)),
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
        assert_eq!(bytes[0], RECORD_VERSION);
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
}
