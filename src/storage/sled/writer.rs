//! [`SledWriter`]: the seam's [`Writer`] for sled. It stages a round's
//! writes in one sled batch (atomic, also across a crash), counts them,
//! keeps a delivery's newest attempt in its record (format 5), moves
//! damaged records aside, commits and flushes.

use std::collections::HashMap;

use super::keys::{
    DLV, EVT, EVT_REFS, HEALTH, META_STATS, NOTICE, QUARANTINE, SEQUENCE, SUB, attempt_key,
    by_keys, by_sub_key, encode, entry_key, idem_key, idem_time_key, index_key, key16, state_key,
};
use super::reader::SledReader;
use super::syncer::Syncer;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::{Error, Result};
use crate::health::{HealthDelta, HealthRecord};
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId};
use crate::notice::Notice;
use crate::record::{Attempt, Event, OutboxStats};
use crate::storage::{Damaged, IndexEntry, Reader, StoredDeliveryRef, SubscriptionRecord, Writer};

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

impl SledWriter {
    pub(super) fn new(
        reader: SledReader,
        syncer: Option<Syncer>,
        legacy_attempts: bool,
    ) -> SledWriter {
        SledWriter {
            reader,
            batch: sled::Batch::default(),
            ops: 0,
            syncer,
            newest: HashMap::new(),
            legacy_attempts,
            failed: None,
        }
    }

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
        let by_new = by_keys(new);
        if let Some(old) = old {
            for e in &old.events {
                if !new.events.contains(e) {
                    self.remove(&index_key(e, old.id));
                }
            }
            for k in by_keys(old) {
                if !by_new.contains(&k) {
                    self.remove(&k);
                }
            }
        }
        for e in &new.events {
            self.insert(&index_key(e, new.id), &[]);
        }
        for k in &by_new {
            self.insert(k, &[]);
        }
        self.insert(&key16(SUB, new.id.to_bytes()), &encode(new));
    }

    fn remove_subscription(&mut self, old: &SubscriptionRecord) {
        for e in &old.events {
            self.remove(&index_key(e, old.id));
        }
        for k in by_keys(old) {
            self.remove(&k);
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
