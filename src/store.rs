//! All access to the embedded store. No other module names sled.
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
//! | `s` | subscription id (16) | [`SubscriptionRecord`] |
//! | `i` | event name, `0x00`, subscription id | empty |
//! | `e` | event id (16) | [`Event`] |
//! | `n` | event id (16) | how many deliveries still refer to the event (u32 BE) |
//! | `d` | delivery id (16) | [`Delivery`] |
//! | `y` | finished (u64 BE ms), delivery id | subscription id: delivered |
//! | `x` | finished (u64 BE ms), delivery id | subscription id: dead |
//! | `r` | subscription id, next attempt (u64 BE ms), delivery id | subscription id: pending, by subscription and due time |
//! | `b` | subscription id, delivery id | empty: deliveries by subscription |
//! | `a` | delivery id, attempt number (u32 BE) | [`Attempt`] |
//! | `z` | the damaged record's key | its raw bytes (quarantine) |
//!
//! Invariant: every delivery has exactly one state-index entry (`r`, `y` or
//! `x`), the one matching its state; [`WriteBatch::put_delivery`] is the only
//! code that writes deliveries, and it keeps this so. Pending deliveries are
//! indexed per subscription so the dispatcher can serve subscriptions in
//! turn without walking the whole backlog of one of them.
//!
//! Records go through [`crate::codec`]; keys that must sort are big-endian.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::record::{Attempt, Delivery, DeliveryState, Event, OutboxStats};

/// The store layout version, kept under `m format`.
pub(crate) const STORE_FORMAT: u8 = 1;
const TREE: &str = "hookbus";

const META_FORMAT: &[u8] = b"mformat";
const META_STATS: &[u8] = b"mstats";
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

/// A subscription as stored. Unlike [`crate::Subscription`] it serializes
/// its secrets, so it never leaves the crate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SubscriptionRecord {
    pub(crate) id: SubscriptionId,
    pub(crate) name: String,
    pub(crate) events: Vec<String>,
    pub(crate) url: String,
    pub(crate) secret: Option<String>,
    /// The secret being rotated out, and when it stops being used (ms).
    pub(crate) previous_secret: Option<(String, u64)>,
    pub(crate) content_type: String,
    pub(crate) active: bool,
    pub(crate) owner: Option<String>,
    pub(crate) standard_webhooks: bool,
    pub(crate) created_at: Timestamp,
    pub(crate) modified_at: Timestamp,
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
    let e = IndexEntry::of(d, d.state);
    entry_key(d.state, &e)
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

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| corrupt(key, e))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Every record type here is plain data that bincode can encode; a failure
    // would be a bug in this crate, not bad input.
    codec::encode(value).expect("hookbus records always encode")
}

/// An entry of a state index: when, which delivery, which subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) at: u64,
    pub(crate) delivery: DeliveryId,
    pub(crate) subscription: SubscriptionId,
}

impl IndexEntry {
    /// The entry of `d` in the index of `state`: its next attempt time for
    /// pending, its finish time otherwise.
    pub(crate) fn of(d: &Delivery, state: DeliveryState) -> Self {
        let at = match state {
            DeliveryState::Pending => d.next_attempt_at,
            _ => d.finished_at,
        };
        IndexEntry {
            at: at.map_or(0, |t| t.as_millis()),
            delivery: d.id,
            subscription: d.subscription_id,
        }
    }
    fn parse(key: &[u8], value: &[u8]) -> Result<Self> {
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
}

/// The store handle. Cloning shares the same database.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    db: sled::Db,
    tree: sled::Tree,
}

impl Store {
    /// Opens or creates the store at `config.path`.
    pub(crate) fn open(config: &Config) -> Result<Store> {
        let path = config.path.clone();
        check_is_store_or_empty(&path)?;
        let sled_config = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(Some(500));
        // A store closed a moment ago in this process can hold its file lock
        // until sled's I/O threads finish: wait for it, briefly.
        let deadline = std::time::Instant::now() + config.lock_timeout;
        let db = loop {
            match sled_config.open().map_err(|e| map_open_error(e, &path)) {
                Err(Error::StoreLocked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let recovered = db.was_recovered();
        let existed = db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == TREE.as_bytes());
        if recovered && !existed {
            return Err(Error::NotAStore {
                path,
                reason: "it is a sled database without hookbus data".into(),
            });
        }
        let tree = db.open_tree(TREE)?;
        match tree.get(META_FORMAT)? {
            Some(v) => {
                let found = v.first().copied().unwrap_or(0);
                if found == 0 || v.len() != 1 {
                    return Err(Error::NotAStore {
                        path,
                        reason: format!("its format marker is damaged ({})", hex::encode(&v)),
                    });
                }
                if found > STORE_FORMAT {
                    return Err(Error::UnsupportedFormat {
                        path,
                        found,
                        supported: STORE_FORMAT,
                    });
                }
            }
            None => {
                if !tree.is_empty() {
                    return Err(Error::NotAStore {
                        path,
                        reason: "its hookbus tree has data but no format marker".into(),
                    });
                }
                tree.insert(META_FORMAT, &[STORE_FORMAT])?;
                tree.flush()?;
            }
        }
        Ok(Store { db, tree })
    }

    /// Applies a batch atomically (visible to reads at once, durable after
    /// [`Store::flush`]).
    pub(crate) fn apply(&self, batch: WriteBatch) -> Result<()> {
        if batch.ops > 0 {
            self.tree.apply_batch(batch.batch)?;
        }
        Ok(())
    }

    /// Makes everything applied so far durable. On Linux, sled 0.34 ends a
    /// flush in `sync_file_range`; see the crate docs on durability.
    pub(crate) fn flush(&self) -> Result<()> {
        self.tree.flush()?;
        Ok(())
    }

    pub(crate) fn stats(&self) -> Result<OutboxStats> {
        match self.tree.get(META_STATS)? {
            Some(v) => decode(META_STATS, &v),
            None => Ok(OutboxStats::default()),
        }
    }

    pub(crate) fn subscription(&self, id: SubscriptionId) -> Result<Option<SubscriptionRecord>> {
        let k = key16(SUB, id.to_bytes());
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Every subscription, in id (= creation time) order.
    pub(crate) fn subscriptions(&self) -> impl Iterator<Item = Result<SubscriptionRecord>> + use<> {
        self.tree.scan_prefix([SUB]).map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        })
    }

    /// Ids of subscriptions indexed under exactly `event` (not `*`).
    pub(crate) fn indexed(&self, event: &str) -> Result<Vec<SubscriptionId>> {
        let mut prefix = Vec::with_capacity(event.len() + 2);
        prefix.push(IDX);
        prefix.extend_from_slice(event.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = SubscriptionId::from_slice(&k[prefix.len()..])
                .ok_or_else(|| corrupt(&k, "malformed event index key"))?;
            out.push(id);
        }
        Ok(out)
    }

    /// Ids of the subscriptions indexed under `event` or `*`, each once, in
    /// id order (active or not: the caller checks).
    pub(crate) fn subscribers_of(&self, event: &str) -> Result<Vec<SubscriptionId>> {
        let mut ids = self.indexed(event)?;
        ids.extend(self.indexed(crate::subscription::ALL_EVENTS)?);
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    pub(crate) fn event(&self, id: EventId) -> Result<Option<Event>> {
        let k = key16(EVT, id.to_bytes());
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// How many deliveries refer to an event (`None` for stores written
    /// before this count existed: keep the event).
    pub(crate) fn event_refs(&self, id: EventId) -> Result<Option<u32>> {
        let k = key16(EVT_REFS, id.to_bytes());
        match self.tree.get(k)? {
            None => Ok(None),
            Some(v) => <[u8; 4]>::try_from(&v[..])
                .map(|b| Some(u32::from_be_bytes(b)))
                .map_err(|_| corrupt(&k, "malformed reference count")),
        }
    }

    pub(crate) fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        let k = key16(DLV, id.to_bytes());
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The raw bytes of a delivery record, for quarantine.
    pub(crate) fn raw_delivery(&self, id: DeliveryId) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let k = key16(DLV, id.to_bytes());
        Ok(self.tree.get(k)?.map(|v| (k.to_vec(), v.to_vec())))
    }

    /// Every delivery in id (= creation time) order, starting after `after`.
    pub(crate) fn deliveries(
        &self,
        after: Option<DeliveryId>,
    ) -> impl Iterator<Item = Result<Delivery>> + use<> {
        let start = match after {
            Some(id) => {
                let mut k = key16(DLV, id.to_bytes()).to_vec();
                k.push(0);
                k
            }
            None => vec![DLV],
        };
        self.tree.range(start..vec![DLV + 1]).map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        })
    }

    /// The deliveries of one subscription, oldest first (or newest first
    /// with `newest_first`).
    pub(crate) fn deliveries_of(
        &self,
        sub: SubscriptionId,
        newest_first: bool,
    ) -> Box<dyn Iterator<Item = Result<DeliveryId>> + Send> {
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

    /// The pending deliveries of one subscription, soonest due first.
    pub(crate) fn due_of(
        &self,
        sub: SubscriptionId,
    ) -> impl Iterator<Item = Result<IndexEntry>> + use<> {
        self.tree
            .scan_prefix(key16(DUE_BY_SUB, sub.to_bytes()))
            .keys()
            .map(|k| parse_sub_due(&k?))
    }

    /// When the soonest pending delivery of `sub` is due, if it has any.
    pub(crate) fn earliest_due(&self, sub: SubscriptionId) -> Result<Option<u64>> {
        self.due_of(sub).next().transpose().map(|e| e.map(|e| e.at))
    }

    /// Every subscription with pending deliveries, and when its soonest is
    /// due: one seek per subscription, not one step per delivery.
    pub(crate) fn pending_subscriptions(&self) -> Result<Vec<(SubscriptionId, u64)>> {
        use std::ops::Bound;
        let mut out = Vec::new();
        let mut from = Bound::Included(vec![DUE_BY_SUB]);
        loop {
            let next = self
                .tree
                .range::<Vec<u8>, _>((from, Bound::Excluded(vec![DUE_BY_SUB + 1])))
                .keys()
                .next();
            let Some(k) = next else { break };
            let e = parse_sub_due(&k?)?;
            out.push((e.subscription, e.at));
            let mut last = key16(DUE_BY_SUB, e.subscription.to_bytes()).to_vec();
            last.extend_from_slice(&[0xff; 24]);
            from = Bound::Excluded(last);
        }
        Ok(out)
    }

    /// A state index: pending deliveries by subscription and due time,
    /// delivered and dead ones by finish time.
    pub(crate) fn index(
        &self,
        state: DeliveryState,
    ) -> impl Iterator<Item = Result<IndexEntry>> + use<> {
        let p = state_prefix(state);
        self.range_index(state, vec![p])
    }

    /// A state index from just after a given entry (for cursors).
    pub(crate) fn index_after(
        &self,
        state: DeliveryState,
        after: IndexEntry,
    ) -> impl Iterator<Item = Result<IndexEntry>> + use<> {
        let mut start = entry_key(state, &after);
        start.push(0);
        self.range_index(state, start)
    }

    fn range_index(
        &self,
        state: DeliveryState,
        start: Vec<u8>,
    ) -> impl Iterator<Item = Result<IndexEntry>> + use<> {
        let end = vec![state_prefix(state) + 1];
        self.tree.range(start..end).map(move |kv| {
            let (k, v) = kv?;
            match state {
                DeliveryState::Pending => parse_sub_due(&k),
                _ => IndexEntry::parse(&k, &v),
            }
        })
    }

    /// The attempts of a delivery, in order.
    pub(crate) fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>> {
        let prefix = key16(ATT, id.to_bytes());
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The keys of the attempt records of a delivery, without decoding them.
    pub(crate) fn attempt_keys(&self, id: DeliveryId) -> Result<Vec<Vec<u8>>> {
        let prefix = key16(ATT, id.to_bytes());
        self.tree
            .scan_prefix(prefix)
            .keys()
            .map(|k| Ok(k?.to_vec()))
            .collect()
    }

    /// Records moved aside as damaged: their original key and raw bytes.
    pub(crate) fn quarantined(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        self.tree.scan_prefix([QUARANTINE]).map(|kv| {
            let (k, v) = kv?;
            Ok((k[1..].to_vec(), v.to_vec()))
        })
    }

    /// The database's size on disk, in bytes.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

/// A set of writes applied atomically by [`Store::apply`].
#[derive(Default, Debug)]
pub(crate) struct WriteBatch {
    batch: sled::Batch,
    ops: usize,
}

impl WriteBatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.ops == 0
    }

    fn insert(&mut self, k: &[u8], v: &[u8]) {
        self.batch.insert(k, v);
        self.ops += 1;
    }

    fn remove(&mut self, k: &[u8]) {
        self.batch.remove(k);
        self.ops += 1;
    }

    pub(crate) fn put_stats(&mut self, stats: &OutboxStats) {
        self.insert(META_STATS, &encode(stats));
    }

    /// Writes a subscription and moves its event-index entries from `old`'s
    /// events to its own.
    pub(crate) fn put_subscription(
        &mut self,
        old: Option<&SubscriptionRecord>,
        new: &SubscriptionRecord,
    ) {
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

    pub(crate) fn remove_subscription(&mut self, old: &SubscriptionRecord) {
        for e in &old.events {
            self.remove(&index_key(e, old.id));
        }
        self.remove(&key16(SUB, old.id.to_bytes()));
    }

    /// Writes an event with the number of deliveries made for it.
    pub(crate) fn put_event(&mut self, event: &Event, deliveries: u32) {
        self.insert(&key16(EVT, event.id.to_bytes()), &encode(event));
        self.put_event_refs(event.id, deliveries);
    }

    pub(crate) fn put_event_refs(&mut self, id: EventId, refs: u32) {
        self.insert(&key16(EVT_REFS, id.to_bytes()), &refs.to_be_bytes());
    }

    /// Removes an event no delivery refers to any more.
    pub(crate) fn remove_event(&mut self, id: EventId) {
        self.remove(&key16(EVT, id.to_bytes()));
        self.remove(&key16(EVT_REFS, id.to_bytes()));
    }

    /// Writes a delivery and keeps its state-index entry in step: the entry
    /// of `old` (the record as stored before) goes, the entry of `new` comes.
    pub(crate) fn put_delivery(&mut self, old: Option<&Delivery>, new: &Delivery) {
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
        self.insert(&key16(DLV, new.id.to_bytes()), &encode(new));
    }

    /// Removes a delivery, its index entry and its attempts (whose keys the
    /// caller read with [`Store::attempt_keys`]).
    pub(crate) fn remove_delivery(&mut self, old: &Delivery, attempt_keys: &[Vec<u8>]) {
        self.remove(&state_key(old));
        self.remove(&by_sub_key(old.subscription_id, old.id));
        self.remove(&key16(DLV, old.id.to_bytes()));
        for k in attempt_keys {
            self.remove(k);
        }
    }

    /// Removes a state-index entry that points at no usable delivery.
    pub(crate) fn remove_index_entry(&mut self, state: DeliveryState, e: IndexEntry) {
        self.remove(&entry_key(state, &e));
    }

    pub(crate) fn put_attempt(&mut self, id: DeliveryId, attempt: &Attempt) {
        self.insert(&attempt_key(id, attempt.number), &encode(attempt));
    }

    /// Moves a damaged record aside: its bytes go under the quarantine
    /// prefix and the original key is removed.
    pub(crate) fn quarantine(&mut self, key: &[u8], value: &[u8]) {
        let mut q = Vec::with_capacity(key.len() + 1);
        q.push(QUARANTINE);
        q.extend_from_slice(key);
        self.insert(&q, value);
        self.remove(key);
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

/// Refuses to turn a folder that holds something else into a store.
fn check_is_store_or_empty(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.is_dir() {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "it is not a folder".into(),
        });
    }
    let mut entries = std::fs::read_dir(path)?;
    let empty = entries.next().is_none();
    if empty || path.join("conf").is_file() || path.join("db").is_file() {
        return Ok(());
    }
    Err(Error::NotAStore {
        path: path.to_path_buf(),
        reason: "the folder is not empty and holds no sled database; pick an empty or new folder"
            .into(),
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
