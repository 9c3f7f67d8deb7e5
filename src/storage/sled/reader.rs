//! [`SledReader`]: the reads of the seam's [`Reader`], each one lookup or
//! scan of the store's tree.

use super::keys::{
    ATT, BY_SUB, DLV, DUE_BY_SUB, EVT, EVT_REFS, HEALTH, IDEM_BY_TIME, IDX, META_STATS, NOTICE,
    QUARANTINE, SEQUENCE, SUB, UNCOUNTED, by_prefix, by_sub_key, corrupt, decode, entry_key,
    idem_key, idem_time_key, key16, parse_sub_due, parse_time_entry, state_prefix,
};
use crate::delivery::{Delivery, DeliveryState};
use crate::error::Result;
use crate::event::ALL_EVENTS;
use crate::health::HealthRecord;
use crate::ids::{DeliveryId, EventId, SubscriptionId};
use crate::notice::Notice;
use crate::record::{Attempt, Event, OutboxStats};
use crate::storage::{
    Damaged, DecodeCount, IndexEntry, Iter, PendingSubscriptions, Reader, StoredDelivery,
    Subscribers, SubscriptionRecord, SubscriptionsBy,
};

/// Reads of the sled store. Cloning shares the same database.
#[derive(Clone, Debug)]
pub(crate) struct SledReader {
    db: sled::Db,
    pub(super) tree: sled::Tree,
    /// Records decoded by this reader and its clones.
    decoded: DecodeCount,
}

impl SledReader {
    pub(super) fn new(db: sled::Db, tree: sled::Tree) -> SledReader {
        SledReader {
            db,
            tree,
            decoded: DecodeCount::default(),
        }
    }

    /// A reader of the same store with a count of decoded records of its
    /// own (the engine's, so the handles' count is theirs alone).
    pub(super) fn with_own_count(&self) -> SledReader {
        SledReader {
            db: self.db.clone(),
            tree: self.tree.clone(),
            decoded: DecodeCount::default(),
        }
    }

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

    pub(super) fn stored_delivery(&self, id: DeliveryId) -> Result<Option<StoredDelivery>> {
        let k = key16(DLV, id.to_bytes());
        self.tree.get(k)?.map(|v| self.dec(&k, &v)).transpose()
    }

    /// Decodes a record, counting it.
    fn dec<T: crate::codec::Record>(&self, key: &[u8], bytes: &[u8]) -> Result<T> {
        self.decoded.add(1);
        decode(key, bytes)
    }

    pub(super) fn attempt_keys(&self, id: DeliveryId) -> Result<Vec<Vec<u8>>> {
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
        self.tree.get(k)?.map(|v| self.dec(&k, &v)).transpose()
    }

    fn subscriptions(&self) -> Iter<SubscriptionRecord> {
        let count = self.decoded.clone();
        Box::new(self.tree.scan_prefix([SUB]).map(move |kv| {
            let (k, v) = kv?;
            count.add(1);
            decode(&k, &v)
        }))
    }

    /// A seek to the index's prefix (and past the cursor), then one record
    /// per entry until `limit` match.
    fn subscriptions_by(
        &self,
        by: SubscriptionsBy<'_>,
        after: Option<SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<SubscriptionRecord>> {
        use std::ops::Bound;
        let prefix = by_prefix(by);
        let start = match after {
            Some(id) => {
                let mut k = prefix.clone();
                k.extend_from_slice(&id.to_bytes());
                Bound::Excluded(k)
            }
            None => Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for k in self
            .tree
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .keys()
        {
            let k = k?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(id) = k
                .get(prefix.len()..)
                .filter(|rest| rest.len() == 16)
                .and_then(SubscriptionId::from_slice)
            else {
                continue; // a longer key of another tenant or owner
            };
            if let Some(rec) = self.subscription(id)?
                && by.matches(&rec)
            {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
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
        self.tree.get(k)?.map(|v| self.dec(&k, &v)).transpose()
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
        let count = self.decoded.clone();
        Box::new(self.tree.range(start..vec![DLV + 1]).map(move |kv| {
            let (k, v) = kv?;
            count.add(1);
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

    fn deliveries_of_before(
        &self,
        sub: SubscriptionId,
        before: Option<DeliveryId>,
    ) -> Iter<DeliveryId> {
        let Some(before) = before else {
            return self.deliveries_of(sub, true);
        };
        let start = key16(BY_SUB, sub.to_bytes()).to_vec();
        let end = by_sub_key(sub, before).to_vec();
        Box::new(self.tree.range(start..end).keys().rev().map(|k| {
            let k = k?;
            DeliveryId::from_slice(&k[17..])
                .ok_or_else(|| corrupt(&k, "malformed subscription index key"))
        }))
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
                self.dec::<Attempt>(&k, &v)
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
        self.tree.get(k)?.map(|v| self.dec(&k, &v)).transpose()
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

    fn records_decoded(&self) -> u64 {
        self.decoded.get()
    }
}
