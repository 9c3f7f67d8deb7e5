//! How values sit in the store's rows and are read back: records as codec
//! bytes, times as `bigint` ms, states as small codes, ids as `bytea`; and
//! the errors a row that does not read gives. A leaf: it uses no other
//! room of the PostgreSQL store.

use postgres::Row;

use crate::codec;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::{Error, Result, StoreError};
use crate::ids::{DeliveryId, SubscriptionId};
use crate::record::Event;
use crate::storage::{EventV3, IndexEntry};

pub(super) fn store_error(m: impl Into<String>) -> Error {
    Error::Store(StoreError::message(m))
}

pub(super) fn corrupt(what: &str, key: &[u8], reason: impl std::fmt::Display) -> Error {
    let mut k = what.as_bytes()[..1].to_vec();
    k.extend_from_slice(key);
    Error::Corrupt {
        key: hex::encode(k),
        reason: reason.to_string(),
    }
}

pub(super) fn decode<T: codec::Record>(what: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| corrupt(what, key, e))
}

pub(super) fn encode<T: codec::Record>(value: &T) -> Vec<u8> {
    codec::encode(value).expect("hookbus records always encode")
}

/// An event's record as this store keeps it: format 3 (which every build
/// that knows this schema reads, also an older one in a rolling deploy);
/// its tenant goes in the `tenant` and `scoped` columns.
pub(super) fn encode_event(e: &Event) -> Vec<u8> {
    codec::encode_as(3, &EventV3::of(e)).expect("hookbus records always encode")
}

/// An event read from its record and its `tenant` and `scoped` columns
/// (`scoped` false: written by a build that did not keep the tenant).
pub(super) fn event_of(
    id: &[u8],
    record: &[u8],
    tenant: Option<String>,
    scoped: bool,
) -> Result<Event> {
    let mut e: Event = decode("e", id, record)?;
    if scoped {
        e.tenant = tenant;
        e.scope_unknown = false;
    }
    Ok(e)
}

/// A delivery read from a row's `id` and `record` columns.
pub(super) fn delivery_of(row: &Row) -> Result<Delivery> {
    let id: Vec<u8> = row.try_get("id")?;
    let record: Vec<u8> = row.try_get("record")?;
    decode("d", &id, &record)
}

/// A SQL expression: the record `record` (a delivery's, made with
/// sequence number 0) with sequence number `seq` (an `int8` expression,
/// at least 1) instead, byte for byte as [`encode`] makes it, so that the
/// store can number a delivery inside the statement that inserts it.
///
/// A delivery's sequence number is the last field of its record, a
/// bincode varint: 0 is the one byte `0x00`; below 251 one byte; then a
/// marker (`0xfb`, `0xfc`, `0xfd`) and 2, 4 or 8 bytes little-endian.
/// The unit test below holds this to the codec.
pub(super) fn sql_with_sequence(record: &str, seq: &str) -> String {
    // The little-endian bytes after `marker`: `set_byte` on zeros.
    let le = |marker: &str, n: usize| {
        // `decode`, not a `'\x…'` literal: that reads as bytes only
        // with `standard_conforming_strings` on.
        let mut e = format!("decode('{marker}{}', 'hex')", "00".repeat(n));
        for i in 0..n {
            e = format!(
                "set_byte({e}, {}, (({seq} >> {}) & 255)::int4)",
                i + 1,
                8 * i
            );
        }
        e
    };
    format!(
        "(substring({record} FROM 1 FOR length({record}) - 1) || CASE \
           WHEN {seq} < 251 THEN set_byte(decode('00', 'hex'), 0, {seq}::int4) \
           WHEN {seq} < 65536 THEN {} \
           WHEN {seq} < 4294967296 THEN {} \
           ELSE {} END)",
        le("fb", 2),
        le("fc", 4),
        le("fd", 8),
    )
}

pub(super) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn state_code(s: DeliveryState) -> i16 {
    match s {
        DeliveryState::Pending => 0,
        DeliveryState::Delivered => 1,
        DeliveryState::Dead => 2,
    }
}

pub(super) fn id_of<T>(row: &Row, col: &str, parse: impl Fn(&[u8]) -> Option<T>) -> Result<T> {
    let b: Vec<u8> = row.try_get(col)?;
    parse(&b).ok_or_else(|| store_error(format!("malformed id in column {col}")))
}

pub(super) fn entry_of(row: &Row) -> Result<IndexEntry> {
    Ok(IndexEntry {
        at: unms(row.try_get("at")?),
        delivery: id_of(row, "id", DeliveryId::from_slice)?,
        subscription: id_of(row, "sub", SubscriptionId::from_slice)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventId, Timestamp};

    /// bincode 2's varint of `v` (its "standard" configuration).
    fn varint(v: u64) -> Vec<u8> {
        match v {
            0..=250 => vec![u8::try_from(v).unwrap()],
            251..=0xffff => [&[0xfb][..], &u16::try_from(v).unwrap().to_le_bytes()].concat(),
            0x1_0000..=0xffff_ffff => {
                [&[0xfc][..], &u32::try_from(v).unwrap().to_le_bytes()].concat()
            }
            _ => [&[0xfd][..], &v.to_le_bytes()].concat(),
        }
    }

    /// What `sql_with_sequence` relies on: a delivery's record ends with
    /// its sequence number as a varint, so the record with number 0 minus
    /// its last byte, plus the varint of `n`, is the record with number
    /// `n`. (The SQL itself is held to this on a real server by the
    /// integration test of sequence numbers across the varint's sizes.)
    #[test]
    fn a_deliverys_record_ends_with_its_sequence_number_as_a_varint() {
        let at = Timestamp::from_millis(1_700_000_000_000);
        let mut d = crate::delivery::created(
            EventId::generate(),
            "order.created",
            at,
            SubscriptionId::generate(),
            0,
            at,
        );
        d.last_error = Some("a string field before it".into());
        let zero = encode(&d);
        assert_eq!(zero.last(), Some(&0));
        let stem = &zero[..zero.len() - 1];
        for n in [
            1,
            250,
            251,
            255,
            256,
            65_535,
            65_536,
            0xffff_ffff,
            1 << 32,
            i64::MAX as u64,
        ] {
            d.sequence = n;
            assert_eq!(encode(&d), [stem, &varint(n)].concat(), "sequence {n}");
        }
    }
}
