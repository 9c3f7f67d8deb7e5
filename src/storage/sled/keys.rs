//! How the store's keys are laid out: the tree's name, the markers' keys,
//! one prefix byte per key space, and the keys built from ids and
//! big-endian times (the table is in `mod.rs`); and how records
//! become values and back, with the error a value that does not read
//! gives. A leaf: it uses no other room of the sled store.

use crate::codec;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, SubscriptionId};
use crate::storage::{IndexEntry, SubscriptionRecord, SubscriptionsBy};

pub(super) const TREE: &str = "hookbus";

pub(super) const META_FORMAT: &[u8] = b"mformat";
pub(super) const META_STATS: &[u8] = b"mstats";
pub(super) const META_LEGACY_ATTEMPTS: &[u8] = b"mlegacy-attempts";
/// The `n` value of an event nobody counted (format 1): kept for good.
pub(super) const UNCOUNTED: u32 = u32::MAX;
pub(super) const SUB: u8 = b's';
pub(super) const IDX: u8 = b'i';
pub(super) const EVT: u8 = b'e';
pub(super) const EVT_REFS: u8 = b'n';
pub(super) const DLV: u8 = b'd';
const DELIVERED: u8 = b'y';
const DEAD: u8 = b'x';
pub(super) const ATT: u8 = b'a';
pub(super) const BY_SUB: u8 = b'b';
pub(super) const DUE_BY_SUB: u8 = b'r';
pub(super) const QUARANTINE: u8 = b'z';
pub(super) const SEQUENCE: u8 = b'q';
const IDEM: u8 = b'k';
pub(super) const IDEM_BY_TIME: u8 = b't';
pub(super) const HEALTH: u8 = b'h';
pub(super) const NOTICE: u8 = b'o';
pub(super) const BY_TENANT: u8 = b'u';
pub(super) const BY_OWNER: u8 = b'w';

/// The prefix of the subscriptions a [`SubscriptionsBy`] lists: `u`, then
/// `0x00` for the app-wide ones or `0x01`, the tenant and `0x00`; `w`, the
/// owner and `0x00`. Tenants and owners have no control characters, so no
/// prefix is the start of another's key (and a key's length is checked).
pub(super) fn by_prefix(by: SubscriptionsBy<'_>) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    match by {
        SubscriptionsBy::Tenant(None) => k.extend_from_slice(&[BY_TENANT, 0]),
        SubscriptionsBy::Tenant(Some(t)) => {
            k.extend_from_slice(&[BY_TENANT, 1]);
            k.extend_from_slice(t.as_bytes());
            k.push(0);
        }
        SubscriptionsBy::Owner(o) => {
            k.push(BY_OWNER);
            k.extend_from_slice(o.as_bytes());
            k.push(0);
        }
    }
    k
}

/// The tenant and owner index keys of a subscription (an owner's only if
/// it has one).
pub(super) fn by_keys(rec: &SubscriptionRecord) -> Vec<Vec<u8>> {
    let mut keys = vec![by_prefix(SubscriptionsBy::Tenant(rec.tenant.as_deref()))];
    if let Some(o) = &rec.owner {
        keys.push(by_prefix(SubscriptionsBy::Owner(o)));
    }
    for k in &mut keys {
        k.extend_from_slice(&rec.id.to_bytes());
    }
    keys
}

pub(super) fn idem_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(IDEM);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn idem_time_key(at: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 9);
    k.push(IDEM_BY_TIME);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn key16(prefix: u8, id: [u8; 16]) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..].copy_from_slice(&id);
    k
}

pub(super) fn index_key(event: &str, sub: SubscriptionId) -> Vec<u8> {
    let mut k = Vec::with_capacity(event.len() + 18);
    k.push(IDX);
    k.extend_from_slice(event.as_bytes());
    k.push(0);
    k.extend_from_slice(&sub.to_bytes());
    k
}

pub(super) fn state_prefix(state: DeliveryState) -> u8 {
    match state {
        DeliveryState::Pending => DUE_BY_SUB,
        DeliveryState::Delivered => DELIVERED,
        DeliveryState::Dead => DEAD,
    }
}

fn time_key(prefix: u8, at: u64, id: DeliveryId) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = prefix;
    k[1..9].copy_from_slice(&at.to_be_bytes());
    k[9..].copy_from_slice(&id.to_bytes());
    k
}

fn sub_due_key(sub: SubscriptionId, at: u64, id: DeliveryId) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[0] = DUE_BY_SUB;
    k[1..17].copy_from_slice(&sub.to_bytes());
    k[17..25].copy_from_slice(&at.to_be_bytes());
    k[25..].copy_from_slice(&id.to_bytes());
    k
}

/// The state-index key of an entry: `r` + subscription + due time + id for
/// pending ones, `y`/`x` + finish time + id for the others.
pub(super) fn entry_key(state: DeliveryState, e: &IndexEntry) -> Vec<u8> {
    match state {
        DeliveryState::Pending => sub_due_key(e.subscription, e.at, e.delivery).to_vec(),
        _ => time_key(state_prefix(state), e.at, e.delivery).to_vec(),
    }
}

/// The state-index key of a delivery (see the module docs).
pub(super) fn state_key(d: &Delivery) -> Vec<u8> {
    entry_key(d.state, &IndexEntry::of(d))
}

pub(super) fn by_sub_key(sub: SubscriptionId, id: DeliveryId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = BY_SUB;
    k[1..17].copy_from_slice(&sub.to_bytes());
    k[17..].copy_from_slice(&id.to_bytes());
    k
}

pub(super) fn parse_sub_due(k: &[u8]) -> Result<IndexEntry> {
    let bad = || corrupt(k, "malformed subscription due key");
    if k.len() != 41 {
        return Err(bad());
    }
    Ok(IndexEntry {
        subscription: SubscriptionId::from_slice(&k[1..17]).ok_or_else(bad)?,
        at: u64::from_be_bytes(k[17..25].try_into().map_err(|_| bad())?),
        delivery: DeliveryId::from_slice(&k[25..]).ok_or_else(bad)?,
    })
}

pub(super) fn attempt_key(id: DeliveryId, n: u32) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[0] = ATT;
    k[1..17].copy_from_slice(&id.to_bytes());
    k[17..].copy_from_slice(&n.to_be_bytes());
    k
}

pub(super) fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        key: hex::encode(key),
        reason: reason.to_string(),
    }
}

pub(super) fn decode<T: codec::Record>(key: &[u8], bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| corrupt(key, e))
}

pub(super) fn encode<T: codec::Record>(value: &T) -> Vec<u8> {
    // Every record type here is plain data that bincode can encode; a failure
    // would be a bug in this crate, not bad input.
    codec::encode(value).expect("hookbus records always encode")
}

pub(super) fn parse_time_entry(key: &[u8], value: &[u8]) -> Result<IndexEntry> {
    let bad = || corrupt(key, "malformed index entry");
    if key.len() != 25 {
        return Err(bad());
    }
    let at = u64::from_be_bytes(key[1..9].try_into().map_err(|_| bad())?);
    let delivery = DeliveryId::from_slice(&key[9..]).ok_or_else(bad)?;
    let subscription = SubscriptionId::from_slice(value).ok_or_else(bad)?;
    Ok(IndexEntry {
        at,
        delivery,
        subscription,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_sort_by_time() {
        let a = DeliveryId::generate();
        let k1 = time_key(DEAD, 1, a);
        let k2 = time_key(DEAD, 256, a);
        let k3 = time_key(DEAD, u64::MAX, a);
        assert!(k1 < k2 && k2 < k3);
    }
}
