//! The store's format: its version, the marker that records it, the check
//! of that marker on open, and the upgrade of a store of an older format.

use std::path::Path;

use super::keys::{
    ATT, EVT, EVT_REFS, META_FORMAT, META_LEGACY_ATTEMPTS, SUB, UNCOUNTED, by_keys, decode,
};
use crate::codec;
use crate::error::{Error, Result};
use crate::storage::SubscriptionRecord;

/// The store layout version, kept under `m format`: the record format
/// ([`codec::RECORD_VERSION`]) it may hold. A store of an older version is
/// marked as this one when opened (its records are read as they are and
/// rewritten in the new format when they change), so an older build that
/// cannot read the new records refuses the store instead of meeting them.
pub(super) const STORE_FORMAT: u8 = codec::RECORD_VERSION;
/// The format that keeps a delivery's newest attempt in its record and
/// leaves an event's count of 1 implicit.
pub(super) const FOLDED_FORMAT: u8 = 5;
/// The format that indexes subscriptions by tenant and by owner (key
/// spaces `u` and `w`).
pub(super) const BY_TENANT_FORMAT: u8 = 6;

/// Builds the tenant and owner index of a store of a format before 6: one
/// entry per subscription record that reads (a damaged one is reported
/// when it is read, as before). Written in chunks before the format
/// marker, so a crash halfway leaves a store this runs on again (writing
/// an entry twice changes nothing). Old builds refuse a format-6 store, so
/// none can change a subscription without its entries.
pub(super) fn index_upgrade(tree: &sled::Tree) -> Result<()> {
    const CHUNK: usize = 1024;
    let mut batch = sled::Batch::default();
    let mut staged = 0;
    for kv in tree.scan_prefix([SUB]) {
        let (k, v) = kv?;
        let Ok(rec) = decode::<SubscriptionRecord>(&k, &v) else {
            continue;
        };
        for key in by_keys(&rec) {
            batch.insert(key, &[]);
            staged += 1;
        }
        if staged >= CHUNK {
            tree.apply_batch(std::mem::take(&mut batch))?;
            staged = 0;
        }
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Prepares a store of a format before 5 for format 5's implicit counts
/// and attempts in records: every event without a count (format 1: never
/// counted, kept for good) gets [`UNCOUNTED`], since a missing count now
/// means 1; and if any delivery has attempts under attempt keys, the
/// `legacy-attempts` marker says a one-attempt delivery may have one.
/// Written in chunks (a big batch piles up garbage in sled) before the
/// format marker, so a crash halfway leaves a store this runs on again.
pub(super) fn fold_upgrade(tree: &sled::Tree) -> Result<()> {
    const CHUNK: usize = 1024;
    let mut batch = sled::Batch::default();
    let mut staged = 0;
    for k in tree.scan_prefix([EVT]).keys() {
        let mut k = k?.to_vec();
        if k.len() != 17 {
            continue; // damaged: quarantined when read
        }
        k[0] = EVT_REFS;
        if tree.get(&k)?.is_none() {
            batch.insert(k, &UNCOUNTED.to_be_bytes());
            staged += 1;
        }
        if staged == CHUNK {
            tree.apply_batch(std::mem::take(&mut batch))?;
            staged = 0;
        }
    }
    if tree.scan_prefix([ATT]).next().is_some() {
        batch.insert(META_LEGACY_ATTEMPTS, &[]);
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Checks the store's format marker; returns the format.
pub(super) fn check_format(tree: &sled::Tree, path: &Path) -> Result<u8> {
    let Some(v) = tree.get(META_FORMAT)? else {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "its hookbus tree has no format marker".into(),
        });
    };
    let found = v.first().copied().unwrap_or(0);
    if found == 0 || v.len() != 1 {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: format!("its format marker is damaged ({})", hex::encode(&v)),
        });
    }
    if found > STORE_FORMAT {
        return Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found,
            supported: STORE_FORMAT,
        });
    }
    Ok(found)
}
