//! The embedded backend of the storage seam: one sled database in a folder.
//! No other module names sled.
//!
//! # Layout
//!
//! Everything lives in ONE sled tree, split into key spaces by a leading
//! byte. sled applies a `Batch` atomically (also across a crash) but only
//! within one tree, so one tree is what lets the dispatcher write an event,
//! its deliveries, their index entries and the counters as one atomic batch.
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `m` | `format` | store format version (1 raw byte) |
//! | `m` | `stats` | [`OutboxStats`](crate::record::OutboxStats) |
//! | `m` | `legacy-attempts` | empty: the store was upgraded from a format before 5, so a delivery with one attempt may have it under an attempt key |
//! | `s` | subscription id (16) | [`SubscriptionRecord`](crate::storage::SubscriptionRecord) |
//! | `i` | event name, `0x00`, subscription id | empty |
//! | `e` | event id (16) | [`Event`](crate::record::Event) |
//! | `n` | event id (16) | how many deliveries still refer to the event (u32 BE); since format 5 absent for exactly 1, and `u32::MAX` for an event of format 1 that was never counted (kept) |
//! | `d` | delivery id (16) | [`StoredDelivery`](crate::storage::StoredDelivery): the [`Delivery`](crate::delivery::Delivery) and, since format 5, its newest attempt |
//! | `y` | finished (u64 BE ms), delivery id | subscription id: delivered |
//! | `x` | finished (u64 BE ms), delivery id | subscription id: dead |
//! | `r` | subscription id, next attempt (u64 BE ms), delivery id | subscription id: pending, by subscription and due time |
//! | `b` | subscription id, delivery id | empty: deliveries by subscription |
//! | `u` | `0x00`, subscription id (app-wide); or `0x01`, tenant, `0x00`, subscription id | empty: subscriptions by tenant (since format 6) |
//! | `w` | owner, `0x00`, subscription id | empty: subscriptions by owner (since format 6) |
//! | `a` | delivery id, attempt number (u32 BE) | [`Attempt`](crate::record::Attempt): every attempt but the newest (since format 5; all of them before) |
//! | `k` | idempotency key (tenant, `0x00`, key) | event id (16), used at (u64 BE ms) |
//! | `t` | used at (u64 BE ms), idempotency key | empty: keys by age, for expiry |
//! | `q` | subscription id (16) | the last sequence number given to one of its deliveries (u64 BE) |
//! | `h` | subscription id (16) | its [`HealthRecord`](crate::health::HealthRecord) (since 0.1 unreleased; older builds ignore it) |
//! | `o` | notice id (16) | an unacknowledged [`Notice`](crate::notice::Notice) (likewise) |
//! | `z` | the damaged record's key | its raw bytes (quarantine) |
//!
//! Invariant: every delivery has exactly one state-index entry (`r`, `y` or
//! `x`), the one matching its state;
//! [`SledWriter::put_delivery`](crate::storage::Writer::put_delivery) is the
//! only code that writes deliveries, and it keeps this so. Pending deliveries are
//! indexed per subscription so the dispatcher can serve subscriptions in
//! turn without walking the whole backlog of one of them.
//!
//! Records go through [`crate::codec`]; keys that must sort are big-endian.
//!
//! # Writes per delivery (format 5)
//!
//! The writer's batch is the engine's bottleneck on loopback, and its cost
//! is per key, so format 5 folds two of them away: a delivery that is
//! delivered at its first attempt costs `d`, `r`, `b` when made and `d`,
//! `y` (and the `r` removal) when delivered; its attempt rides in its
//! record, and an event with one delivery has no `n` key. Before format 5
//! the attempt and the count were one key each more (measured with the
//! `memory` example: about 17 % more deliveries per second without both).
//!
//! # Rooms
//!
//! | file | job |
//! | --- | --- |
//! | `keys.rs` | the key layout: tree name, markers, prefixes, keys from ids and times; records to values and back (a leaf) |
//! | `format.rs` | the format version, the check of its marker, the upgrade of an older store |
//! | `folder.rs` | what a store's folder holds before sled opens it; the torn files a crash leaves (a leaf) |
//! | `database.rs` | the sled database: its configuration, opening it, its errors on open (a leaf) |
//! | `beside.rs` | a new store made beside its path and renamed into place; what a crash left beside |
//! | `syncer.rs` | syncing the files sled's flush leaves to the OS, for [`crate::Durability::PowerLoss`] (a leaf) |
//! | `reader.rs` | [`SledReader`]: the seam's reads |
//! | `writer.rs` | [`SledWriter`]: one batch per round, the newest attempt in its delivery's record, commit, flush |
//! | `mod.rs` | [`open`], and what the rest of the crate uses from here |
//!
//! Each room uses only rooms listed above it; none uses `mod.rs`.

mod beside;
mod database;
mod folder;
mod format;
mod keys;
mod reader;
mod syncer;
mod writer;

use std::path::Path;
use std::time::Duration;

pub(crate) use reader::SledReader;
pub(crate) use writer::SledWriter;

use crate::error::{Error, Result};
use beside::{create_beside, remove_stale_beside};
use database::{is_empty_db, open_db};
use folder::{Folder, check_is_store_or_empty, remove_torn};
use format::{
    BY_TENANT_FORMAT, FOLDED_FORMAT, STORE_FORMAT, check_format, fold_upgrade, index_upgrade,
};
use keys::{META_FORMAT, META_LEGACY_ATTEMPTS, TREE};
use syncer::Syncer;

/// Opens (or creates) the store at `path`: the cloneable reader and the one
/// writer.
///
/// A new store (`path` missing or an empty folder) is made in a folder
/// beside it and renamed into place once it holds its flushed format
/// marker ([`create_beside`]), so a crash during the very first open leaves
/// `path` as it was; the next open removes what it left beside it. Where
/// that cannot be done (no rename onto a mount point or a symlink, a parent
/// folder that is not writable), sled makes the store in place, and a crash
/// can leave what sled writes before its first commit: an empty `blobs/`, a
/// torn `conf` without `db` data, an empty sled database. Such a folder is
/// taken up as a new store; one that holds anything else is refused as
/// [`Error::NotAStore`].
/// With `sync`, every [`Writer::flush`](crate::storage::Writer::flush) also
/// syncs the store's files to the disk (see [`crate::Durability::PowerLoss`]).
pub(crate) fn open(
    path: &Path,
    cache_capacity: u64,
    lock_timeout: Duration,
    sync: bool,
) -> Result<(SledReader, SledWriter)> {
    let mut lock_timeout = lock_timeout;
    if check_is_store_or_empty(path)? == Folder::New {
        remove_stale_beside(path);
        if create_beside(path, cache_capacity) {
            // The database was closed a moment ago in this process: sled's
            // I/O threads can hold its lock a little longer.
            lock_timeout = lock_timeout.max(Duration::from_secs(2));
        }
        // Made beside, made meanwhile by someone else, or still new.
        check_is_store_or_empty(path)?;
    }
    let deadline = crate::clock::deadline_after(lock_timeout);
    let db = match open_db(path, cache_capacity, deadline) {
        Err(Error::NotAStore { .. }) if remove_torn(path)? => {
            open_db(path, cache_capacity, deadline)?
        }
        other => other?,
    };
    let existed = db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == TREE.as_bytes());
    if db.was_recovered() && !existed && !is_empty_db(&db)? {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "it is a sled database without hookbus data".into(),
        });
    }
    let tree = db.open_tree(TREE)?;
    if tree.get(META_FORMAT)?.is_none() {
        if !tree.is_empty() {
            return Err(Error::NotAStore {
                path: path.to_path_buf(),
                reason: "its hookbus tree has data but no format marker".into(),
            });
        }
        tree.insert(META_FORMAT, &[STORE_FORMAT])?;
        tree.flush()?;
    }
    let found = check_format(&tree, path)?;
    if found != STORE_FORMAT {
        if found < FOLDED_FORMAT {
            fold_upgrade(&tree)?;
        }
        if found < BY_TENANT_FORMAT {
            index_upgrade(&tree)?;
        }
        tree.insert(META_FORMAT, &[STORE_FORMAT])?;
        tree.flush()?;
        tracing::info!(path = %path.display(), format = STORE_FORMAT, "store format upgraded");
    }
    let syncer = if sync { Some(Syncer::new(path)?) } else { None };
    let legacy_attempts = tree.get(META_LEGACY_ATTEMPTS)?.is_some();
    let reader = SledReader::new(db, tree);
    let writer = SledWriter::new(reader.with_own_count(), syncer, legacy_attempts);
    Ok((reader, writer))
}
