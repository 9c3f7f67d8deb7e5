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
