//! [`PgWriter`]: the seam's [`Writer`] for PostgreSQL. It stages writes
//! ([`Op`]) and commits a round as one transaction on its own connection:
//! [`PgWriter::apply`] runs the round's steps and hands each write to its
//! function in `writer/ops.rs`, delivery changes and attempts to the
//! round's [`Batch`].

mod batch;
mod ops;

use std::collections::HashSet;

use batch::Batch;
use ops::Op;

use super::connection::WRITER_SESSION;
use super::coordination;
use super::pipeline::WriterConn;
use super::reader::PgReader;
use super::rows::{encode, store_error};
use crate::delivery::{Delivery, DeliveryState};
use crate::error::Result;
use crate::health::HealthDelta;
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId};
use crate::notice::Notice;
use crate::record::{Attempt, Event, OutboxStats};
use crate::storage::{Damaged, IndexEntry, Reader, SubscriptionRecord, Writer};

/// The one writer of an instance: stages writes, commits them as one
/// transaction on its own connection.
pub(crate) struct PgWriter {
    reader: PgReader,
    client: WriterConn,
    ops: Vec<Op>,
    /// Asynchronous commits were made that no synchronous one has covered
    /// yet (a synchronous commit waits for the WAL up to it, so for every
    /// commit before it).
    unflushed: bool,
    /// An advisory lock was taken on the connection since the last
    /// `release_locks`.
    holding_locks: bool,
    /// New deliveries of the staged round to store claimed (`claim_new`).
    to_claim: HashSet<DeliveryId>,
    /// What the last commit stored claimed (`take_new_claims`).
    new_claims: Vec<IndexEntry>,
}

impl std::fmt::Debug for PgWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWriter")
            .field("reader", &self.reader)
            .field("staged", &self.ops.len())
            .finish()
    }
}

impl PgWriter {
    /// The writer of an instance: `reader` is the engine's (the one that
    /// claims), `client` the writer's own connection.
    pub(super) fn new(reader: PgReader, client: WriterConn) -> PgWriter {
        PgWriter {
            reader,
            client,
            ops: Vec::new(),
            unflushed: false,
            holding_locks: false,
            to_claim: HashSet::new(),
            new_claims: Vec::new(),
        }
    }

    /// Drops what the reader keeps of a delivery this writer changes: its
    /// next read must see the change.
    fn forget(&self, id: DeliveryId) {
        self.reader.claimed().forget(id);
    }

    /// A connection that was lost (a server restart, a failover, a proxy
    /// that cut it) is replaced before the next round, so one lost
    /// connection costs one round, not every round after it (unless the
    /// round holds a lock: it then fails).
    fn reconnect_if_closed(&mut self) -> Result<()> {
        if self.client.is_closed() {
            if self.holding_locks {
                // The locks went with the connection: what this round
                // read under them may be stale, so it must not commit.
                return Err(store_error(
                    "the PostgreSQL connection was lost while this round held a lock; the round is not committed",
                ));
            }
            tracing::warn!("PostgreSQL connection of the writer lost; reconnecting");
            self.forget_unconfirmed();
            self.replace_connection()?;
        }
        Ok(())
    }

    /// The connection was lost: its asynchronous commits that no
    /// synchronous one covered are unconfirmed. Only rounds of attempt
    /// outcomes commit asynchronously (see `commit`): if the server
    /// crashed, those deliveries are sent again (at least once); no event
    /// can be lost so.
    fn forget_unconfirmed(&mut self) {
        if std::mem::take(&mut self.unflushed) {
            tracing::warn!(
                "the writer's PostgreSQL connection was lost with attempt outcomes not yet confirmed durable; if the server crashed, those deliveries are sent again"
            );
        }
    }

    /// Drops the writer's connection for a new one (on an error the old
    /// one stays: the next round tries again).
    fn replace_connection(&mut self) -> Result<()> {
        self.client = WriterConn::open(&self.reader.pool().url, WRITER_SESSION)?;
        Ok(())
    }

    /// Runs the staged round as one transaction; returns the new
    /// deliveries it stored claimed.
    fn apply(&mut self, durable: bool) -> Result<HashSet<DeliveryId>> {
        self.reconnect_if_closed()?;
        let pool = self.reader.pool().clone();
        let mut tx = self.client.transaction(durable)?;
        // Group commit: a round of outcomes alone is visible at once and
        // made durable by the next `flush` (the writer's connection commits
        // asynchronously: `WRITER_SESSION`), which a crash can only make a
        // delivery be sent again for; a round that stores events or new
        // deliveries commits synchronously (`durable`, see `commit`).
        let counts = ops::new_per_subscription(&self.ops);
        ops::lock_written_subscriptions(&mut tx, &pool, &self.ops, &counts)?;
        // The numbers, the events and the new deliveries go out at once,
        // nothing waited for: the insert reads the numbers from the rows
        // the numbering updated, with nothing between the two (no other
        // statement of the round can change a subscription's counter).
        let numbers = ops::number_new_deliveries(&mut tx, &pool, &counts)?;
        ops::insert_events(&mut tx, &pool, &self.ops)?;
        let claims =
            ops::insert_new_deliveries(&mut tx, &pool, &self.ops, &counts, &self.to_claim)?;
        let mut batch = Batch::default();
        for op in &self.ops {
            // Changes of deliveries and attempts are sent together; any
            // other write first sends what is batched, so the order holds.
            if !matches!(op, Op::PutDelivery(..) | Op::PutAttempt(..)) {
                batch.send(&mut tx, &pool.schema, &pool.token)?;
            }
            match op {
                Op::PutSubscription(old, new) => {
                    ops::put_subscription(&mut tx, &pool, old.as_deref(), new)?;
                }
                Op::RemoveSubscription(old) => ops::remove_subscription(&mut tx, &pool, old)?,
                // Written above.
                Op::PutEvent(_) => {}
                Op::SweepOrphans(before) => ops::sweep_orphans(&mut tx, &pool, *before)?,
                Op::RemoveEvent(id) => ops::remove_event(&mut tx, &pool, *id)?,
                // Written above.
                Op::PutDelivery(None, _) => {}
                Op::PutDelivery(Some((old, outcome)), d) => batch.update(old, *outcome, d),
                Op::RemoveDelivery(id, record) => {
                    ops::remove_delivery(&mut tx, &pool, *id, record)?;
                }
                Op::PutAttempt(id, a) => batch.attempt(*id, a),
                Op::Probe => ops::probe(&mut tx, &pool)?,
                Op::RemoveAttempt(id, n) => ops::remove_attempt(&mut tx, &pool, *id, *n)?,
                Op::QuarantineDelivery(id) => ops::quarantine_delivery(&mut tx, &pool, *id)?,
                Op::QuarantineRaw(d) => ops::quarantine_raw(&mut tx, &pool, d)?,
                Op::PutKey(key, event, at) => ops::put_key(&mut tx, &pool, key, *event, *at)?,
                Op::RemoveKey(key, at) => ops::remove_key(&mut tx, &pool, key, *at)?,
                Op::PutSequence(sub, last) => ops::put_sequence(&mut tx, &pool, *sub, *last)?,
                // Merged below, all at once.
                Op::MergeHealth(..) => {}
                Op::PutNotice(n) => ops::put_notice(&mut tx, &pool, n)?,
                Op::RemoveNotice(id) => ops::remove_notice(&mut tx, &pool, *id)?,
            }
        }
        // The last changes go out with the health rows' read; their
        // attempts once both are answered.
        let started = batch.start(&mut tx, &pool.schema, &pool.token)?;
        let mut health: std::collections::BTreeMap<SubscriptionId, Vec<&HealthDelta>> =
            std::collections::BTreeMap::new();
        for op in &self.ops {
            if let Op::MergeHealth(sub, delta) = op {
                health.entry(*sub).or_default().push(delta);
            }
        }
        ops::merge_health(&mut tx, &pool, &health)?;
        batch.finish(&mut tx, &pool.schema, started)?;
        ops::notify(&mut tx, &pool, &self.ops, &self.to_claim)?;
        let mut answers = tx.commit()?;
        // Committed: a row that does not read is logged, never the
        // round's error (its callers would take it as not stored).
        let numbered =
            numbers.is_none_or(|t| ops::take_numbers(&mut self.ops, &counts, answers.take(t)));
        let mut claimed = claims.map_or_else(HashSet::new, |t| ops::claimed_of(answers.take(t)));
        if !numbered {
            // The copies of the new deliveries the store numbered still
            // say 0: none is handed out as this round made it, each waits
            // for its lease.
            for op in &self.ops {
                if let Op::PutDelivery(None, d) = op
                    && d.sequence == 0
                {
                    claimed.remove(&d.id);
                }
            }
        }
        Ok(claimed)
    }

    /// After a failed commit: if it was in fact applied (the connection
    /// was lost during `COMMIT`), the deliveries it claimed are held by
    /// this instance, which does not know it: given up at once (on the
    /// pools' connection), not left for their lease.
    fn release_unknown(&self) {
        if self.to_claim.is_empty() {
            return;
        }
        let ids: Vec<DeliveryId> = self.to_claim.iter().copied().collect();
        if let Err(e) = crate::storage::Coordinator::release(&self.reader.coordinator(), &ids) {
            tracing::warn!(error = %e, "could not give up claims of a commit that failed; if it was applied, they wait for their lease");
        }
    }

    /// After a commit that stored `claimed` claimed: their entries for the
    /// dispatcher, their records (and their events') for its next read.
    fn keep_new_claims(&mut self, claimed: &HashSet<DeliveryId>) {
        if claimed.is_empty() {
            return;
        }
        let mut deliveries = Vec::with_capacity(claimed.len());
        let mut event_ids = HashSet::new();
        for op in &self.ops {
            if let Op::PutDelivery(None, d) = op
                && claimed.contains(&d.id)
            {
                self.new_claims.push(IndexEntry::of(d));
                event_ids.insert(d.event_id);
                deliveries.push(d.clone());
            }
        }
        let events: Vec<Event> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::PutEvent(e) if event_ids.contains(&e.id) => Some(e.clone()),
                _ => None,
            })
            .collect();
        self.reader.claimed().keep_new(deliveries, events);
    }
}

impl Writer for PgWriter {
    fn coordinator(&self) -> Option<Box<dyn crate::storage::Coordinator>> {
        Some(Box::new(self.reader.coordinator()))
    }

    fn numbers_deliveries(&self) -> bool {
        true
    }

    fn drops_unreferenced_events(&self) -> bool {
        true
    }

    fn reader(&self) -> &dyn Reader {
        &self.reader
    }

    fn put_subscription(&mut self, old: Option<&SubscriptionRecord>, new: &SubscriptionRecord) {
        self.ops.push(Op::PutSubscription(
            old.map(|o| o.events.clone()),
            new.clone(),
        ));
    }

    fn remove_subscription(&mut self, old: &SubscriptionRecord) {
        self.ops.push(Op::RemoveSubscription(old.clone()));
    }

    fn put_event(&mut self, event: &Event, _refs: u32) {
        self.ops.push(Op::PutEvent(event.clone()));
    }

    /// References are counted from the deliveries.
    fn set_event_refs(&mut self, _id: EventId, _refs: u32) {}

    fn remove_event(&mut self, id: EventId) {
        self.ops.push(Op::RemoveEvent(id));
    }

    fn sweep_orphan_events(&mut self, before_ms: u64) {
        self.ops
            .push(Op::SweepOrphans(EventId::first_at(before_ms)));
    }

    fn put_delivery(&mut self, old: Option<&Delivery>, new: &Delivery) {
        self.forget(new.id);
        let old = old.map(|o| (encode(o), false));
        self.ops.push(Op::PutDelivery(old, new.clone()));
    }

    /// Only while this instance's claim stands (see [`Batch::send`]).
    fn put_outcome(&mut self, old: &Delivery, new: &Delivery) {
        self.forget(new.id);
        self.ops
            .push(Op::PutDelivery(Some((encode(old), true)), new.clone()));
    }

    fn remove_delivery(&mut self, old: &Delivery) -> Result<()> {
        self.forget(old.id);
        self.ops.push(Op::RemoveDelivery(old.id, encode(old)));
        Ok(())
    }

    fn put_attempt(&mut self, id: DeliveryId, attempt: &Attempt) -> Result<()> {
        self.ops.push(Op::PutAttempt(id, attempt.clone()));
        Ok(())
    }

    fn remove_attempt(&mut self, id: DeliveryId, n: u32) {
        self.ops.push(Op::RemoveAttempt(id, n));
    }

    fn probe(&mut self) {
        self.ops.push(Op::Probe);
    }

    /// Counters are counted.
    fn put_stats(&mut self, _stats: &OutboxStats) {}

    fn merge_health(&mut self, sub: SubscriptionId, delta: &HealthDelta) -> Result<()> {
        self.ops.push(Op::MergeHealth(sub, delta.clone()));
        Ok(())
    }

    fn put_notice(&mut self, notice: &Notice) {
        self.ops.push(Op::PutNotice(notice.clone()));
    }

    fn remove_notice(&mut self, id: NoticeId) {
        self.ops.push(Op::RemoveNotice(id));
    }

    fn put_idempotency_key(&mut self, key: &str, event: EventId, at: u64, _old_at: Option<u64>) {
        self.ops.push(Op::PutKey(key.to_owned(), event, at));
    }

    /// The row is its own entry by age: it goes if it is still that use.
    fn remove_idempotency_key(&mut self, key: &str, at: u64, _record: bool) {
        self.ops.push(Op::RemoveKey(key.to_owned(), at));
    }

    fn put_sequence(&mut self, sub: SubscriptionId, last: u64) {
        self.ops.push(Op::PutSequence(sub, last));
    }

    fn quarantine_delivery(&mut self, _state: DeliveryState, entry: IndexEntry) -> Result<()> {
        self.forget(entry.delivery);
        self.ops.push(Op::QuarantineDelivery(entry.delivery));
        Ok(())
    }

    fn quarantine_raw(&mut self, damaged: &Damaged) -> Result<()> {
        self.ops.push(Op::QuarantineRaw(damaged.clone()));
        Ok(())
    }

    /// Rows carry their own state: there is no separate index entry.
    fn remove_index_entry(&mut self, _state: DeliveryState, _entry: IndexEntry) {}

    /// A session-level advisory lock, one per schema: every instance
    /// takes it before it reads a subscription it will change, and lets
    /// it go after the commit, so changes of subscriptions are serialised
    /// across instances (waits count against the lock timeout).
    fn lock_subscriptions(&mut self) -> Result<()> {
        self.reconnect_if_closed()?;
        coordination::lock_subscriptions(&mut self.client, &self.reader.pool().schema)?;
        self.holding_locks = true;
        Ok(())
    }

    fn try_lock_key(&mut self, key: &str) -> Result<bool> {
        self.reconnect_if_closed()?;
        let took = coordination::try_lock_key(&mut self.client, &self.reader.pool().schema, key)?;
        self.holding_locks |= took;
        Ok(took)
    }

    fn release_locks(&mut self) {
        if !std::mem::take(&mut self.holding_locks) {
            return;
        }
        // A lost connection has released them already.
        if self.client.is_closed() {
            return;
        }
        if let Err(e) = coordination::unlock_all(&mut self.client) {
            tracing::error!(error = %e, "could not release the store's locks; dropping the connection");
            // Closing the connection releases them.
            if let Err(e) = self.replace_connection() {
                tracing::warn!(error = %e, "could not reconnect the writer to PostgreSQL yet");
            }
        }
    }

    fn staged(&self) -> usize {
        self.ops.len()
    }

    fn commit(&mut self) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        // A round that stores events or new deliveries commits
        // synchronously: nothing is claimed or sent, here or by another
        // instance, before what created it is durable, and a sequence
        // number once sent is never given again. Rounds of outcomes alone
        // stay asynchronous (one lost in a crash only sends a delivery
        // again).
        let durable = self
            .ops
            .iter()
            .any(|op| matches!(op, Op::PutEvent(_) | Op::PutDelivery(None, _)));
        self.new_claims.clear();
        let r = self.apply(durable);
        let r = match r {
            Ok(claimed) => {
                self.keep_new_claims(&claimed);
                // A synchronous commit covers every commit before it.
                self.unflushed = !durable;
                Ok(())
            }
            Err(e) => {
                // A statement the server no longer takes as prepared (a
                // schema changed under it) is prepared afresh next time.
                self.client.forget_statements();
                self.release_unknown();
                Err(e)
            }
        };
        self.ops.clear();
        self.to_claim.clear();
        r
    }

    /// Marks the staged new pending deliveries `choose` picks; they are
    /// stored with this instance's claim (unless a receiver's pause holds
    /// their subscription back: `ops::insert_new_deliveries`).
    fn claim_new(&mut self, choose: &mut dyn FnMut(&Delivery) -> bool) {
        for op in &self.ops {
            if let Op::PutDelivery(None, d) = op
                && d.state == DeliveryState::Pending
                && !self.to_claim.contains(&d.id)
                && choose(d)
            {
                self.to_claim.insert(d.id);
            }
        }
    }

    fn take_new_claims(&mut self) -> Vec<IndexEntry> {
        std::mem::take(&mut self.new_claims)
    }

    /// Makes every commit so far durable: a transaction with an id commits
    /// synchronously, which waits for the WAL up to it — and so for every
    /// earlier (asynchronous) commit of the server — to reach the disk.
    fn flush(&mut self) -> Result<()> {
        if !self.unflushed {
            return Ok(());
        }
        if self.client.is_closed() {
            // A synchronous commit on a new connection would say nothing
            // of the old one's unconfirmed commits: this flush fails (a
            // change this barrier waits for may or may not be stored).
            // The next round reconnects if this cannot.
            self.forget_unconfirmed();
            let _ = self.replace_connection();
            return Err(store_error(
                "the PostgreSQL connection was lost before earlier commits were confirmed durable; they may be lost if the server crashed",
            ));
        }
        // One message, one round trip. A failure inside leaves the
        // transaction aborted until the ROLLBACK below.
        if let Err(e) = self.client.batch_execute(
            "BEGIN; SET LOCAL synchronous_commit TO on; SELECT txid_current(); COMMIT",
        ) {
            let _ = self.client.batch_execute("ROLLBACK");
            return Err(e);
        }
        self.unflushed = false;
        Ok(())
    }
}
