//! How byte fields of records look in human-readable formats (JSON), for
//! `#[serde(with = ...)]`. Binary formats (the bincode store) keep
//! `serde_bytes`' encoding, so the on-disk format is unchanged; bincode's
//! serde adapters report `is_human_readable() == false`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON payload: the JSON value itself in human-readable formats (text, if
/// the bytes are not JSON), bytes in binary ones. Reading it back from JSON
/// re-serializes the value, which keeps its meaning but not its spacing or
/// key order.
pub(crate) mod json_payload {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return serde_bytes::serialize(bytes, s);
        }
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => v.serialize(s),
            Err(_) => s.serialize_str(&String::from_utf8_lossy(bytes)),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if !d.is_human_readable() {
            return serde_bytes::deserialize(d);
        }
        let v = serde_json::Value::deserialize(d)?;
        serde_json::to_vec(&v).map_err(serde::de::Error::custom)
    }
}

/// Bytes that are usually text (a response excerpt): a string in
/// human-readable formats (invalid UTF-8 replaced by U+FFFD), bytes in
/// binary ones.
pub(crate) mod text {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&String::from_utf8_lossy(bytes))
        } else {
            serde_bytes::serialize(bytes, s)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            String::deserialize(d).map(String::into_bytes)
        } else {
            serde_bytes::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Old {
        #[serde(with = "serde_bytes")]
        a: Vec<u8>,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct New {
        #[serde(with = "super::json_payload")]
        a: Vec<u8>,
        #[serde(with = "super::text")]
        b: Vec<u8>,
    }

    #[test]
    fn binary_form_is_serde_bytes_and_json_is_readable() {
        let cfg = bincode::config::standard();
        let (a, b) = (br#"{"x":[1,2]}"#.to_vec(), b"nope \xff".to_vec());
        let old = bincode::serde::encode_to_vec(
            Old {
                a: a.clone(),
                b: b.clone(),
            },
            cfg,
        )
        .unwrap();
        let new = New { a, b };
        assert_eq!(bincode::serde::encode_to_vec(&new, cfg).unwrap(), old);
        let (back, _): (New, usize) = bincode::serde::decode_from_slice(&old, cfg).unwrap();
        assert_eq!(back, new);
        let j = serde_json::to_string(&new).unwrap();
        assert_eq!(j, r#"{"a":{"x":[1,2]},"b":"nope �"}"#);
        let not_json = New {
            a: b"plain".to_vec(),
            b: vec![],
        };
        assert_eq!(serde_json::to_value(&not_json).unwrap()["a"], "plain");
    }
}
