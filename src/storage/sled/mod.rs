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
//! | `m` | `stats` | [`OutboxStats`] |
//! | `m` | `legacy-attempts` | empty: the store was upgraded from a format before 5, so a delivery with one attempt may have it under an attempt key |
//! | `s` | subscription id (16) | [`SubscriptionRecord`] |
//! | `i` | event name, `0x00`, subscription id | empty |
//! | `e` | event id (16) | [`Event`] |
//! | `n` | event id (16) | how many deliveries still refer to the event (u32 BE); since format 5 absent for exactly 1, and `u32::MAX` for an event of format 1 that was never counted (kept) |
//! | `d` | delivery id (16) | [`StoredDelivery`]: the [`Delivery`] and, since format 5, its newest attempt |
//! | `y` | finished (u64 BE ms), delivery id | subscription id: delivered |
//! | `x` | finished (u64 BE ms), delivery id | subscription id: dead |
//! | `r` | subscription id, next attempt (u64 BE ms), delivery id | subscription id: pending, by subscription and due time |
//! | `b` | subscription id, delivery id | empty: deliveries by subscription |
//! | `a` | delivery id, attempt number (u32 BE) | [`Attempt`]: every attempt but the newest (since format 5; all of them before) |
//! | `k` | idempotency key (tenant, `0x00`, key) | event id (16), used at (u64 BE ms) |
//! | `t` | used at (u64 BE ms), idempotency key | empty: keys by age, for expiry |
//! | `q` | subscription id (16) | the last sequence number given to one of its deliveries (u64 BE) |
//! | `h` | subscription id (16) | its [`HealthRecord`] (since 0.1 unreleased; older builds ignore it) |
//! | `o` | notice id (16) | an unacknowledged [`Notice`] (likewise) |
//! | `z` | the damaged record's key | its raw bytes (quarantine) |
//!
//! Invariant: every delivery has exactly one state-index entry (`r`, `y` or
//! `x`), the one matching its state; [`SledWriter::put_delivery`] is the only
//! code that writes deliveries, and it keeps this so. Pending deliveries are
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

use std::path::Path;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use super::{
    Damaged, IndexEntry, Iter, PendingSubscriptions, Reader, StoredDelivery, StoredDeliveryRef,
    Subscribers, SubscriptionRecord, Writer,
};
use crate::codec;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::{Error, Result};
use crate::event::ALL_EVENTS;
use crate::health::{HealthDelta, HealthRecord};
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId};
use crate::notice::Notice;
use crate::record::{Attempt, Event, OutboxStats};

/// The store layout version, kept under `m format`: the record format
/// ([`codec::RECORD_VERSION`]) it may hold. A store of an older version is
/// marked as this one when opened (its records are read as they are and
/// rewritten in the new format when they change), so an older build that
/// cannot read the new records refuses the store instead of meeting them.
pub(crate) const STORE_FORMAT: u8 = codec::RECORD_VERSION;
const TREE: &str = "hookbus";

const META_FORMAT: &[u8] = b"mformat";
const META_STATS: &[u8] = b"mstats";
const META_LEGACY_ATTEMPTS: &[u8] = b"mlegacy-attempts";
/// The `n` value of an event nobody counted (format 1): kept for good.
const UNCOUNTED: u32 = u32::MAX;
/// The format that keeps a delivery's newest attempt in its record and
/// leaves an event's count of 1 implicit.
const FOLDED_FORMAT: u8 = 5;
const SUB: u8 = b's';
const IDX: u8 = b'i';
const EVT: u8 = b'e';
const EVT_REFS: u8 = b'n';
const DLV: u8 = b'd';
const DELIVERED: u8 = b'y';
const DEAD: u8 = b'x';
const ATT: u8 = b'a';
const BY_SUB: u8 = b'b';
const DUE_BY_SUB: u8 = b'r';
const QUARANTINE: u8 = b'z';
const SEQUENCE: u8 = b'q';
const IDEM: u8 = b'k';
const IDEM_BY_TIME: u8 = b't';
const HEALTH: u8 = b'h';
const NOTICE: u8 = b'o';

fn idem_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(IDEM);
    k.extend_from_slice(key.as_bytes());
    k
}

fn idem_time_key(at: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 9);
    k.push(IDEM_BY_TIME);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn key16(prefix: u8, id: [u8; 16]) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..].copy_from_slice(&id);
    k
}

fn index_key(event: &str, sub: SubscriptionId) -> Vec<u8> {
    let mut k = Vec::with_capacity(event.len() + 18);
    k.push(IDX);
    k.extend_from_slice(event.as_bytes());
    k.push(0);
    k.extend_from_slice(&sub.to_bytes());
    k
}

fn state_prefix(state: DeliveryState) -> u8 {
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
fn entry_key(state: DeliveryState, e: &IndexEntry) -> Vec<u8> {
    match state {
        DeliveryState::Pending => sub_due_key(e.subscription, e.at, e.delivery).to_vec(),
        _ => time_key(state_prefix(state), e.at, e.delivery).to_vec(),
    }
}

/// The state-index key of a delivery (see the module docs).
fn state_key(d: &Delivery) -> Vec<u8> {
    entry_key(d.state, &IndexEntry::of(d))
}

fn by_sub_key(sub: SubscriptionId, id: DeliveryId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = BY_SUB;
    k[1..17].copy_from_slice(&sub.to_bytes());
    k[17..].copy_from_slice(&id.to_bytes());
    k
}

fn parse_sub_due(k: &[u8]) -> Result<IndexEntry> {
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

fn attempt_key(id: DeliveryId, n: u32) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[0] = ATT;
    k[1..17].copy_from_slice(&id.to_bytes());
    k[17..].copy_from_slice(&n.to_be_bytes());
    k
}

fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        key: hex::encode(key),
        reason: reason.to_string(),
    }
}

fn decode<T: codec::Record>(key: &[u8], bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| corrupt(key, e))
}

fn encode<T: codec::Record>(value: &T) -> Vec<u8> {
    // Every record type here is plain data that bincode can encode; a failure
    // would be a bug in this crate, not bad input.
    codec::encode(value).expect("hookbus records always encode")
}

fn parse_time_entry(key: &[u8], value: &[u8]) -> Result<IndexEntry> {
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
/// With `sync`, every [`Writer::flush`] also syncs the store's files to the
/// disk (see [`crate::Durability::PowerLoss`]).
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
        tree.insert(META_FORMAT, &[STORE_FORMAT])?;
        tree.flush()?;
        tracing::info!(path = %path.display(), format = STORE_FORMAT, "store format upgraded");
    }
    let syncer = if sync { Some(Syncer::new(path)?) } else { None };
    let legacy_attempts = tree.get(META_LEGACY_ATTEMPTS)?.is_some();
    let reader = SledReader { db, tree };
    let writer = SledWriter {
        reader: reader.clone(),
        batch: sled::Batch::default(),
        ops: 0,
        syncer,
        newest: HashMap::new(),
        legacy_attempts,
        failed: None,
    };
    Ok((reader, writer))
}

/// Whether a sled database holds nothing at all: no data in its default
/// tree and no other tree.
fn is_empty_db(db: &sled::Db) -> Result<bool> {
    let names = db.tree_names();
    Ok(db.is_empty() && names.iter().all(|n| n.as_ref() == b"__sled__default"))
}

/// How often sled's background flusher runs (ms). It is also what drives
/// sled 0.34's segment cleaner: each run relocates the live pages of at most
/// ONE drained segment (`SegmentCleaner::pop` answers `None` once that
/// segment's page list is used up, which ends the run), besides the one page
/// relocated per page consolidation on the write path. hookbus keeps records
/// that are never written again (unacknowledged notices, dead letters with
/// their delivery, attempts, event and index entries) next to fast-churning
/// delivery records; the cleaner moves such cold pages into the segment being
/// written, so nearly every segment holds one and none frees by itself. At
/// sled's usual 500 ms the cleaner then frees about 1 MB/s while a busy bus
/// writes several MB/s of log, and the file grew without bound (soak, 200
/// events/s × 10 deliveries, 10 s retention: +1.6 MB/s, 194 MB after 120 s);
/// at 20 ms it stays at ~12 MB (~21 MB at 400 events/s). The flusher also
/// `fsync`s the log on each run, so this also bounds what a power loss can
/// take of flushed writes (see [`crate::Durability`]).
pub(crate) const FLUSH_EVERY_MS: u64 = 20;

fn sled_config(path: &Path, cache_capacity: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .flush_every_ms(Some(FLUSH_EVERY_MS))
}

fn open_db(path: &Path, cache_capacity: u64, deadline: Instant) -> Result<sled::Db> {
    let config = sled_config(path, cache_capacity);
    // A store closed a moment ago in this process can hold its file lock
    // until sled's I/O threads finish: wait for it, briefly.
    loop {
        match config.open().map_err(|e| map_open_error(e, path)) {
            Err(Error::StoreLocked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Prepares a store of a format before 5 for format 5's implicit counts
/// and attempts in records: every event without a count (format 1: never
/// counted, kept for good) gets [`UNCOUNTED`], since a missing count now
/// means 1; and if any delivery has attempts under attempt keys, the
/// `legacy-attempts` marker says a one-attempt delivery may have one.
/// Written in chunks (a big batch piles up garbage in sled) before the
/// format marker, so a crash halfway leaves a store this runs on again.
fn fold_upgrade(tree: &sled::Tree) -> Result<()> {
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
fn check_format(tree: &sled::Tree, path: &Path) -> Result<u8> {
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

/// Reads of the sled store. Cloning shares the same database.
#[derive(Clone, Debug)]
pub(crate) struct SledReader {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledReader {
    /// Ids of subscriptions indexed under exactly `event` (not `*`);
    /// malformed keys are skipped and reported.
    fn indexed(&self, event: &str, out: &mut Subscribers) -> Result<()> {
        let mut prefix = Vec::with_capacity(event.len() + 2);
        prefix.push(IDX);
        prefix.extend_from_slice(event.as_bytes());
        prefix.push(0);
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, _) = kv?;
            match SubscriptionId::from_slice(&k[prefix.len()..]) {
                Some(id) => out.ids.push(id),
                None => out.damaged.push(Damaged {
                    key: k.to_vec(),
                    reason: "malformed event index key".into(),
                }),
            }
        }
        Ok(())
    }

    fn stored_delivery(&self, id: DeliveryId) -> Result<Option<StoredDelivery>> {
        let k = key16(DLV, id.to_bytes());
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn attempt_keys(&self, id: DeliveryId) -> Result<Vec<Vec<u8>>> {
        let prefix = key16(ATT, id.to_bytes());
        self.tree
            .scan_prefix(prefix)
            .keys()
            .map(|k| Ok(k?.to_vec()))
            .collect()
    }

    fn range_index(&self, state: DeliveryState, start: Vec<u8>) -> Iter<IndexEntry> {
        let end = vec![state_prefix(state) + 1];
        Box::new(self.tree.range(start..end).map(move |kv| {
            let (k, v) = kv?;
            match state {
                DeliveryState::Pending => parse_sub_due(&k),
                _ => parse_time_entry(&k, &v),
            }
        }))
    }
}

impl Reader for SledReader {
    fn stats(&self) -> Result<OutboxStats> {
        match self.tree.get(META_STATS)? {
            Some(v) => decode(META_STATS, &v),
            None => Ok(OutboxStats::default()),
        }
    }

    fn subscription(&self, id: SubscriptionId) -> Result<Option<SubscriptionRecord>> {
        let k = key16(SUB, id.to_bytes());
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn subscriptions(&self) -> Iter<SubscriptionRecord> {
        Box::new(self.tree.scan_prefix([SUB]).map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        }))
    }

    fn subscribers_of(&self, event: &str) -> Result<Subscribers> {
        let mut out = Subscribers::default();
        self.indexed(event, &mut out)?;
        self.indexed(ALL_EVENTS, &mut out)?;
        out.ids.sort_unstable();
        out.ids.dedup();
        Ok(out)
    }

    fn event(&self, id: EventId) -> Result<Option<Event>> {
        let k = key16(EVT, id.to_bytes());
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// No count stored means 1 (format 5; older stores are given
    /// [`UNCOUNTED`] where they had none, which reads as `None`).
    fn event_refs(&self, id: EventId) -> Result<Option<u32>> {
        let k = key16(EVT_REFS, id.to_bytes());
        match self.tree.get(k)? {
            None => Ok(Some(1)),
            Some(v) => <[u8; 4]>::try_from(&v[..])
                .map(|b| Some(u32::from_be_bytes(b)).filter(|n| *n != UNCOUNTED))
                .map_err(|_| corrupt(&k, "malformed reference count")),
        }
    }

    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        Ok(self.stored_delivery(id)?.map(|s| s.delivery))
    }

    fn deliveries(&self, after: Option<DeliveryId>) -> Iter<Delivery> {
        let start = match after {
            Some(id) => {
                let mut k = key16(DLV, id.to_bytes()).to_vec();
                k.push(0);
                k
            }
            None => vec![DLV],
        };
        Box::new(self.tree.range(start..vec![DLV + 1]).map(|kv| {
            let (k, v) = kv?;
            decode::<StoredDelivery>(&k, &v).map(|s| s.delivery)
        }))
    }

    fn deliveries_of(&self, sub: SubscriptionId, newest_first: bool) -> Iter<DeliveryId> {
        let prefix = key16(BY_SUB, sub.to_bytes());
        let iter = self.tree.scan_prefix(prefix);
        let parse = |kv: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, _) = kv?;
            DeliveryId::from_slice(&k[17..])
                .ok_or_else(|| corrupt(&k, "malformed subscription index key"))
        };
        if newest_first {
            Box::new(iter.rev().map(parse))
        } else {
            Box::new(iter.map(parse))
        }
    }

    fn deliveries_of_from(&self, sub: SubscriptionId, from: DeliveryId) -> Iter<DeliveryId> {
        let start = by_sub_key(sub, from).to_vec();
        let prefix = key16(BY_SUB, sub.to_bytes());
        Box::new(
            self.tree
                .range(start..)
                .take_while(move |kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
                .map(|kv| {
                    let (k, _) = kv?;
                    DeliveryId::from_slice(&k[17..])
                        .ok_or_else(|| corrupt(&k, "malformed subscription index key"))
                }),
        )
    }

    fn index(&self, state: DeliveryState, after: Option<IndexEntry>) -> Iter<IndexEntry> {
        let start = match after {
            Some(e) => {
                let mut k = entry_key(state, &e);
                k.push(0);
                k
            }
            None => vec![state_prefix(state)],
        };
        self.range_index(state, start)
    }

    fn due(&self, sub: SubscriptionId) -> Iter<IndexEntry> {
        Box::new(
            self.tree
                .scan_prefix(key16(DUE_BY_SUB, sub.to_bytes()))
                .keys()
                .map(|k| parse_sub_due(&k?)),
        )
    }

    /// One seek per subscription, not one step per delivery.
    fn pending_subscriptions(&self) -> Result<PendingSubscriptions> {
        use std::ops::Bound;
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        let mut from = Bound::Included(vec![DUE_BY_SUB]);
        loop {
            let next = self
                .tree
                .range::<Vec<u8>, _>((from, Bound::Excluded(vec![DUE_BY_SUB + 1])))
                .keys()
                .next();
            let Some(k) = next else { break };
            let k = k?;
            match parse_sub_due(&k) {
                Ok(e) => {
                    out.push((e.subscription, e.at));
                    let mut last = key16(DUE_BY_SUB, e.subscription.to_bytes()).to_vec();
                    last.extend_from_slice(&[0xff; 24]);
                    from = Bound::Excluded(last);
                }
                Err(e) => {
                    damaged.push(Damaged {
                        key: k.to_vec(),
                        reason: e.to_string(),
                    });
                    from = Bound::Excluded(k.to_vec());
                }
            }
        }
        Ok((out, damaged))
    }

    /// The attempts under attempt keys and the newest one, kept in the
    /// delivery's record (format 5).
    fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>> {
        let prefix = key16(ATT, id.to_bytes());
        let mut all = self
            .tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode::<Attempt>(&k, &v)
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(newest) = self.stored_delivery(id)?.and_then(|s| s.last_attempt) {
            all.retain(|a| a.number != newest.number);
            all.push(newest);
        }
        all.sort_by_key(|a| a.number);
        Ok(all)
    }

    fn idempotency_key(&self, key: &str) -> Result<Option<(EventId, u64)>> {
        let k = idem_key(key);
        let Some(v) = self.tree.get(&k)? else {
            return Ok(None);
        };
        match (v.get(..16).and_then(EventId::from_slice), v.get(16..)) {
            (Some(id), Some(at)) if at.len() == 8 => {
                let at = u64::from_be_bytes(at.try_into().unwrap_or([0; 8]));
                Ok(Some((id, at)))
            }
            _ => Err(corrupt(&k, "malformed idempotency key record")),
        }
    }

    fn idempotency_keys_before(&self, before: u64) -> Iter<(String, u64)> {
        let start = vec![IDEM_BY_TIME];
        let end = idem_time_key(before, "");
        Box::new(self.tree.range(start..end).map(|kv| {
            let (k, _) = kv?;
            let at = k
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            match (at, std::str::from_utf8(&k[9.min(k.len())..])) {
                (Some(at), Ok(key)) => Ok((key.to_owned(), at)),
                _ => Err(corrupt(&k, "malformed idempotency time index key")),
            }
        }))
    }

    fn sequence(&self, sub: SubscriptionId) -> Result<u64> {
        let k = key16(SEQUENCE, sub.to_bytes());
        match self.tree.get(k)? {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(&k, "malformed sequence counter")),
        }
    }

    fn health(&self, sub: SubscriptionId) -> Result<Option<HealthRecord>> {
        let k = key16(HEALTH, sub.to_bytes());
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn notices(&self) -> Iter<Notice> {
        Box::new(self.tree.scan_prefix([NOTICE]).map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        }))
    }

    fn quarantined(&self) -> Iter<(Vec<u8>, Vec<u8>)> {
        Box::new(self.tree.scan_prefix([QUARANTINE]).map(|kv| {
            let (k, v) = kv?;
            Ok((k[1..].to_vec(), v.to_vec()))
        }))
    }

    fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

/// The one writer of the sled store: writes are staged in one sled batch
/// (atomic, also across a crash, because everything is in one tree).
/// Deliberately not `Clone`.
#[derive(Debug)]
pub(crate) struct SledWriter {
    reader: SledReader,
    batch: sled::Batch,
    ops: usize,
    /// Set in [`crate::Durability::PowerLoss`] mode.
    syncer: Option<Syncer>,
    /// The newest attempt of each delivery whose record or attempt this
    /// batch writes, as its record is to hold it. Cleared at commit.
    newest: HashMap<DeliveryId, Option<Attempt>>,
    /// The store was upgraded from a format before 5 (see the layout).
    legacy_attempts: bool,
    /// A read that a staged write needed failed: the batch is not applied.
    failed: Option<Error>,
}

/// Syncs what sled's flush leaves to the OS: its log file (`db`, which sled
/// ends with `sync_file_range` on Linux) and the blob files sled writes for
/// large records without any sync, with their folder.
#[derive(Debug)]
struct Syncer {
    log: std::fs::File,
    blobs: std::path::PathBuf,
    /// Blob files are named by increasing log sequence numbers: those up to
    /// this one are synced.
    synced_blob: u64,
}

impl Syncer {
    fn new(path: &Path) -> Result<Syncer> {
        let log = std::fs::File::open(path.join("db"))?;
        // The folder's entries (db, conf, blobs/) once, now.
        std::fs::File::open(path)?.sync_all()?;
        Ok(Syncer {
            log,
            blobs: path.join("blobs"),
            synced_blob: 0,
        })
    }

    fn sync(&mut self) -> Result<()> {
        self.log.sync_data()?;
        let Ok(entries) = std::fs::read_dir(&self.blobs) else {
            return Ok(());
        };
        let mut newest = self.synced_blob;
        let mut any = false;
        for e in entries {
            let e = e?;
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if id > self.synced_blob {
                match std::fs::File::open(e.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled dropped it meanwhile (superseded): nothing to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                newest = newest.max(id);
                any = true;
            }
        }
        if any {
            std::fs::File::open(&self.blobs)?.sync_all()?;
            self.synced_blob = newest;
        }
        Ok(())
    }
}

impl SledWriter {
    fn insert(&mut self, k: &[u8], v: &[u8]) {
        self.batch.insert(k, v);
        self.ops += 1;
    }

    fn remove(&mut self, k: &[u8]) {
        self.batch.remove(k);
        self.ops += 1;
    }

    /// The newest attempt a delivery's record holds: as this batch stages
    /// it, else as committed.
    fn newest_attempt(&self, id: DeliveryId) -> Result<Option<Attempt>> {
        match self.newest.get(&id) {
            Some(a) => Ok(a.clone()),
            None => Ok(self
                .reader
                .stored_delivery(id)?
                .and_then(|s| s.last_attempt)),
        }
    }

    /// Writes a delivery's record with the newest attempt this batch knows
    /// of for it (its committed one if none was staged).
    fn put_record(&mut self, d: &Delivery, fresh: bool) {
        if (fresh || d.attempts == 0) && !self.newest.contains_key(&d.id) {
            // Never attempted: nothing to carry (the common case, kept cheap).
            let bytes = StoredDeliveryRef {
                delivery: d,
                last_attempt: None,
            }
            .encode();
            self.insert(&key16(DLV, d.id.to_bytes()), &bytes);
            return;
        }
        if !self.newest.contains_key(&d.id) {
            let last = match self.newest_attempt(d.id) {
                Ok(last) => last,
                // The record is replaced either way: a damaged one loses
                // only its newest attempt.
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!(delivery = %d.id, error = %e, "newest attempt unreadable; rewritten without it");
                    None
                }
                // The store could not be read: the round fails at commit
                // rather than drop the attempt.
                Err(e) => {
                    self.failed.get_or_insert(e);
                    None
                }
            };
            self.newest.insert(d.id, last);
        }
        let bytes = StoredDeliveryRef {
            delivery: d,
            last_attempt: self.newest.get(&d.id).and_then(Option::as_ref),
        }
        .encode();
        self.insert(&key16(DLV, d.id.to_bytes()), &bytes);
    }

    /// Moves a raw record aside under the quarantine prefix.
    fn quarantine(&mut self, key: &[u8], value: &[u8]) {
        let mut q = Vec::with_capacity(key.len() + 1);
        q.push(QUARANTINE);
        q.extend_from_slice(key);
        self.insert(&q, value);
        self.remove(key);
    }
}

impl Writer for SledWriter {
    fn reader(&self) -> &dyn Reader {
        &self.reader
    }

    fn put_subscription(&mut self, old: Option<&SubscriptionRecord>, new: &SubscriptionRecord) {
        if let Some(old) = old {
            for e in &old.events {
                if !new.events.contains(e) {
                    self.remove(&index_key(e, old.id));
                }
            }
        }
        for e in &new.events {
            self.insert(&index_key(e, new.id), &[]);
        }
        self.insert(&key16(SUB, new.id.to_bytes()), &encode(new));
    }

    fn remove_subscription(&mut self, old: &SubscriptionRecord) {
        for e in &old.events {
            self.remove(&index_key(e, old.id));
        }
        self.remove(&key16(SUB, old.id.to_bytes()));
        self.remove(&key16(SEQUENCE, old.id.to_bytes()));
        self.remove(&key16(HEALTH, old.id.to_bytes()));
    }

    /// A new event; a count of 1 is not stored (see the layout).
    fn put_event(&mut self, event: &Event, refs: u32) {
        self.insert(&key16(EVT, event.id.to_bytes()), &encode(event));
        if refs != 1 {
            self.insert(&key16(EVT_REFS, event.id.to_bytes()), &refs.to_be_bytes());
        }
    }

    fn set_event_refs(&mut self, id: EventId, refs: u32) {
        let k = key16(EVT_REFS, id.to_bytes());
        if refs == 1 {
            self.remove(&k);
        } else {
            self.insert(&k, &refs.to_be_bytes());
        }
    }

    fn remove_event(&mut self, id: EventId) {
        self.remove(&key16(EVT, id.to_bytes()));
        self.remove(&key16(EVT_REFS, id.to_bytes()));
    }

    fn put_delivery(&mut self, old: Option<&Delivery>, new: &Delivery) {
        let key = state_key(new);
        match old {
            Some(old) => {
                let ok = state_key(old);
                if ok != key {
                    self.remove(&ok);
                }
            }
            None => self.insert(&by_sub_key(new.subscription_id, new.id), &[]),
        }
        self.insert(&key, &new.subscription_id.to_bytes());
        self.put_record(new, old.is_none());
    }

    /// Attempt keys are looked for only where there can be some: a
    /// delivery attempted more than once, or any in a store upgraded from
    /// a format before 5.
    fn remove_delivery(&mut self, old: &Delivery) -> Result<()> {
        if old.attempts >= 2 || self.legacy_attempts {
            for k in self.reader.attempt_keys(old.id)? {
                self.remove(&k);
            }
        }
        self.remove(&state_key(old));
        self.remove(&by_sub_key(old.subscription_id, old.id));
        self.remove(&key16(DLV, old.id.to_bytes()));
        self.newest.remove(&old.id);
        Ok(())
    }

    /// The attempt goes into the delivery's record, which the engine writes
    /// next in the same batch (the trait's contract: `Session::record_attempt`
    /// always stages the outcome); the one it held before moves to its
    /// attempt key.
    fn put_attempt(&mut self, id: DeliveryId, attempt: &Attempt) -> Result<()> {
        let previous = if attempt.number <= 1 && !self.newest.contains_key(&id) {
            None
        } else {
            self.newest_attempt(id)?
        };
        if let Some(p) = previous.filter(|p| p.number != attempt.number) {
            self.insert(&attempt_key(id, p.number), &encode(&p));
        }
        self.newest.insert(id, Some(attempt.clone()));
        Ok(())
    }

    fn remove_attempt(&mut self, id: DeliveryId, n: u32) {
        self.remove(&attempt_key(id, n));
    }

    fn merge_health(&mut self, sub: SubscriptionId, delta: &HealthDelta) -> Result<()> {
        // One merge per subscription per commit (the session gathers the
        // round's attempts), so the committed record is the one to merge
        // into. A damaged one is replaced.
        let base = match self.reader.health(sub) {
            Ok(h) => h.unwrap_or_default(),
            Err(Error::Corrupt { .. }) => HealthRecord::default(),
            Err(e) => return Err(e),
        };
        let merged = base.merge(delta);
        self.insert(&key16(HEALTH, sub.to_bytes()), &encode(&merged));
        Ok(())
    }

    fn put_notice(&mut self, notice: &Notice) {
        self.insert(&key16(NOTICE, notice.id.to_bytes()), &encode(notice));
    }

    fn remove_notice(&mut self, id: NoticeId) {
        self.remove(&key16(NOTICE, id.to_bytes()));
    }

    fn put_stats(&mut self, stats: &OutboxStats) {
        self.insert(META_STATS, &encode(stats));
    }

    fn put_idempotency_key(&mut self, key: &str, event: EventId, at: u64, old_at: Option<u64>) {
        if let Some(old) = old_at {
            self.remove(&idem_time_key(old, key));
        }
        let mut v = event.to_bytes().to_vec();
        v.extend_from_slice(&at.to_be_bytes());
        self.insert(&idem_key(key), &v);
        self.insert(&idem_time_key(at, key), &[]);
    }

    fn remove_idempotency_key(&mut self, key: &str, at: u64, record: bool) {
        if record {
            self.remove(&idem_key(key));
        }
        self.remove(&idem_time_key(at, key));
    }

    fn put_sequence(&mut self, sub: SubscriptionId, last: u64) {
        self.insert(&key16(SEQUENCE, sub.to_bytes()), &last.to_be_bytes());
    }

    fn quarantine_delivery(&mut self, state: DeliveryState, entry: IndexEntry) -> Result<()> {
        let k = key16(DLV, entry.delivery.to_bytes());
        if let Some(v) = self.reader.tree.get(k)? {
            self.quarantine(&k, &v);
        }
        self.newest.remove(&entry.delivery);
        self.remove_index_entry(state, entry);
        Ok(())
    }

    fn quarantine_raw(&mut self, damaged: &Damaged) -> Result<()> {
        if let Some(v) = self.reader.tree.get(&damaged.key)? {
            self.quarantine(&damaged.key, &v);
        }
        Ok(())
    }

    fn remove_index_entry(&mut self, state: DeliveryState, e: IndexEntry) {
        self.remove(&entry_key(state, &e));
    }

    fn staged(&self) -> usize {
        self.ops
    }

    fn commit(&mut self) -> Result<()> {
        self.newest.clear();
        if let Some(e) = self.failed.take() {
            self.batch = sled::Batch::default();
            self.ops = 0;
            return Err(e);
        }
        if self.ops == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.ops = 0;
        self.reader.tree.apply_batch(batch)?;
        Ok(())
    }

    /// On Linux, sled 0.34 ends a flush in `sync_file_range`; see the crate
    /// docs on durability.
    fn flush(&mut self) -> Result<()> {
        self.reader.tree.flush()?;
        if let Some(s) = &mut self.syncer {
            s.sync()?;
        }
        Ok(())
    }
}

fn map_open_error(e: sled::Error, path: &Path) -> Error {
    match &e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            Error::StoreLocked {
                path: path.to_path_buf(),
            }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => Error::NotAStore {
            path: path.to_path_buf(),
            reason: format!("sled could not open it: {e}"),
        },
        _ => Error::from(e),
    }
}

/// What [`check_is_store_or_empty`] found at a store's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Folder {
    /// Nothing, or an empty folder: a new store is made.
    New,
    /// A sled database, or only files sled makes before its first commit.
    Store,
}

/// Refuses to turn a folder that holds something else into a store.
fn check_is_store_or_empty(path: &Path) -> Result<Folder> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Folder::New),
        Err(e) => return Err(e.into()),
    };
    if !meta.is_dir() {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "it is not a folder".into(),
        });
    }
    let mut entries = std::fs::read_dir(path)?.peekable();
    if entries.peek().is_none() {
        return Ok(Folder::New);
    }
    // The last test: a crash during sled's first start in place (it makes
    // `blobs/` before `conf` and `db`) leaves only sled's own files.
    if path.join("conf").is_file()
        || path.join("db").is_file()
        || entries.all(|e| e.is_ok_and(|e| is_sled_entry(&e)))
    {
        return Ok(Folder::Store);
    }
    Err(Error::NotAStore {
        path: path.to_path_buf(),
        reason: "the folder is not empty and holds no sled database; pick an empty or new folder"
            .into(),
    })
}

/// Whether a folder entry is one that sled 0.34 makes in its folder: `conf`,
/// `db`, `snap.*` files, and `blobs/` holding only blob files (named by
/// number; empty before sled's first commit).
fn is_sled_entry(e: &std::fs::DirEntry) -> bool {
    let Ok(kind) = e.file_type() else {
        return false;
    };
    let name = e.file_name();
    match name.to_str() {
        Some("conf" | "db") => kind.is_file(),
        Some("blobs") => {
            kind.is_dir()
                && std::fs::read_dir(e.path()).is_ok_and(|mut blobs| {
                    blobs.all(|b| {
                        b.is_ok_and(|b| {
                            let n = b.file_name();
                            let n = n.as_encoded_bytes();
                            !n.is_empty() && n.iter().all(u8::is_ascii_digit)
                        })
                    })
                })
        }
        Some(n) => n.starts_with("snap.") && kind.is_file(),
        None => false,
    }
}

/// Removes what a crash while sled wrote a file leaves and sled then
/// refuses (as corrupt), where that holds no data; says whether it removed
/// anything. Called once sled has refused the folder.
///
/// - `snap.*.generating`: sled writes a snapshot under this name, syncs it
///   and renames it to `snap.*`; a crash before the rename leaves it torn or
///   whole. sled 0.34.7 reads it (its filter skips `.in___motion`, an older
///   name) and refuses a torn one, forever. Without it, sled rebuilds the
///   same snapshot from the one before (removed only after the rename) and
///   the log. Every open that finds the log grown writes a snapshot, the
///   first open too (in the folder, after the rename into place). sled
///   reads snapshots only once it holds the folder's lock, so its refusal
///   says no other process was writing this one.
/// - a torn `conf`: sled writes `conf` in two writes before it makes `db`;
///   a crash between them leaves one sled refuses. With no data in the
///   folder ([`holds_no_data`]), sled writes it again (the same text).
fn remove_torn(path: &Path) -> Result<bool> {
    let mut removed = false;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let name = e.file_name();
        let name = name.as_encoded_bytes();
        if name.starts_with(b"snap.") && name.ends_with(b".generating") && e.file_type()?.is_file()
        {
            tracing::warn!(file = %e.path().display(), "removed an unfinished sled snapshot a crash left");
            std::fs::remove_file(e.path())?;
            removed = true;
        }
    }
    if path.join("conf").is_file() && holds_no_data(path) {
        tracing::warn!(path = %path.display(), "removed the torn sled conf of a crashed first open");
        std::fs::remove_file(path.join("conf"))?;
        removed = true;
    }
    Ok(removed)
}

/// Whether the folder holds sled's files and no data at all: no `db` or an
/// empty one, no snapshot, no blob.
fn holds_no_data(path: &Path) -> bool {
    let no_db = match std::fs::metadata(path.join("db")) {
        Ok(m) => m.is_file() && m.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    no_db
        && std::fs::read_dir(path).is_ok_and(|mut entries| {
            entries.all(|e| {
                e.is_ok_and(|e| {
                    is_sled_entry(&e)
                        && !e.file_name().as_encoded_bytes().starts_with(b"snap.")
                        && (e.file_name() != "blobs"
                            || std::fs::read_dir(e.path()).is_ok_and(|mut b| b.next().is_none()))
                })
            })
        })
}

/// What the folder a new store is made in is called: the store's name,
/// this, and 16 hex digits.
const BESIDE: &str = ".hookbus-new-";

/// The parent folder of `path` and the name of a folder beside it that
/// ends in `BESIDE` and `suffix`; `None` for a path without a last name
/// (`/`, `..`).
fn beside<'a>(path: &'a Path, suffix: &str) -> Option<(&'a Path, std::ffi::OsString)> {
    let name = path.file_name()?;
    let mut beside = name.to_os_string();
    beside.push(BESIDE);
    beside.push(suffix);
    Some((path.parent().unwrap_or(Path::new("")), beside))
}

/// Makes a new store for `path` (missing or an empty folder) in a folder
/// beside it, and renames that into place once the store holds its format
/// marker and its files are synced: a crash before the rename leaves `path`
/// untouched (and a folder that [`remove_stale_beside`] removes), one after
/// it a store. Renaming replaces an empty folder (Linux, macOS) and takes
/// over its permissions. Returns false, having removed its folder, where
/// this cannot be done (the rename fails onto a mount point or across file
/// systems, the parent is not writable, `path` is a symlink): then sled makes
/// the store in place.
fn create_beside(path: &Path, cache_capacity: u64) -> bool {
    // Renaming over a symlink would replace the link, not its target.
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return false;
    }
    let Some((parent, name)) = beside(path, &format!("{:016x}", fastrand::u64(..))) else {
        return false;
    };
    let new = parent.join(name);
    let made = (|| -> Result<()> {
        std::fs::create_dir_all(parent)?;
        std::fs::create_dir(&new)?;
        {
            let db = sled_config(&new, cache_capacity).open()?;
            let tree = db.open_tree(TREE)?;
            tree.insert(META_FORMAT, &[STORE_FORMAT])?;
            tree.flush()?;
        }
        // For a power loss: the files, then the folder, before the rename.
        for file in ["db", "conf"] {
            let f = std::fs::OpenOptions::new().write(true).open(new.join(file));
            f?.sync_all()?;
        }
        sync_folder(&new);
        if let Ok(m) = std::fs::metadata(path) {
            std::fs::set_permissions(&new, m.permissions())?;
        }
        std::fs::rename(&new, path)?;
        sync_folder(parent);
        Ok(())
    })();
    match made {
        Ok(()) => true,
        Err(e) => {
            if let Err(e) = std::fs::remove_dir_all(&new)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(folder = %new.display(), error = %e, "could not remove a new store's folder");
            }
            tracing::debug!(path = %path.display(), error = %e, "new store made in place, not beside");
            false
        }
    }
}

/// Syncs a folder's entries to the disk, where the platform can (not on
/// Windows): best effort.
fn sync_folder(path: &Path) {
    let dir = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removes the folders that [`create_beside`] left beside `path` when a
/// crash stopped it before its rename: those named like it that hold only
/// sled's files. A folder with anything else in it is left alone. Another
/// process making the same new store at the same moment may lose its
/// folder: its open then fails or makes the store in place, and one of the
/// two gets [`Error::StoreLocked`]; no data is in such a folder.
fn remove_stale_beside(path: &Path) {
    let Some((parent, prefix)) = beside(path, "") else {
        return;
    };
    let dir = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .as_encoded_bytes()
            .strip_prefix(prefix.as_encoded_bytes())
        else {
            continue;
        };
        if rest.len() != 16 || !rest.iter().all(u8::is_ascii_hexdigit) {
            continue;
        }
        let folder = e.path();
        let only_sled = std::fs::read_dir(&folder)
            .is_ok_and(|mut rd| rd.all(|f| f.is_ok_and(|f| is_sled_entry(&f))));
        if !only_sled {
            tracing::warn!(folder = %folder.display(), "left alone: named like a new store's folder, but holds other files");
            continue;
        }
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => {
                tracing::info!(folder = %folder.display(), "removed the folder of a new store a crash left")
            }
            Err(e) => {
                tracing::warn!(folder = %folder.display(), error = %e, "could not remove the folder of a new store a crash left")
            }
        }
    }
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

    #[test]
    fn a_stored_delivery_of_format_5_carries_its_newest_attempt_and_older_ones_read_without() {
        use crate::codec::{decode, encode};
        use crate::ids::{SubscriptionId, Timestamp};
        use crate::record::Attempt;
        use crate::storage::{StoredDelivery, StoredDeliveryRef};
        let d = crate::delivery::created(
            crate::ids::EventId::generate(),
            "e",
            Timestamp::now(),
            SubscriptionId::generate(),
            7,
            Timestamp::now(),
        );
        let attempt = Attempt {
            number: 1,
            at: Timestamp::now(),
            duration_ms: 12,
            status: Some(204),
            error: None,
            response_excerpt: b"ok".to_vec(),
        };
        let bytes = StoredDeliveryRef {
            delivery: &d,
            last_attempt: Some(&attempt),
        }
        .encode();
        assert_eq!(bytes[0], 5);
        let back: StoredDelivery = decode(&bytes).unwrap();
        assert_eq!(back.delivery, d);
        assert_eq!(back.last_attempt, Some(attempt));
        // A plain delivery record is not one: the attempt follows it.
        assert!(decode::<crate::delivery::Delivery>(&bytes).is_err());
        // Formats 3 and 4 (and older, see storage) read without an attempt.
        for v in [3, 4] {
            let mut old = encode(&d).unwrap();
            old[0] = v;
            let back: StoredDelivery = decode(&old).unwrap();
            assert_eq!((back.delivery, back.last_attempt), (d.clone(), None));
        }
        // A cut record is an error, not a panic.
        for cut in 1..bytes.len() {
            assert!(decode::<StoredDelivery>(&bytes[..cut]).is_err(), "{cut}");
        }
    }
}
