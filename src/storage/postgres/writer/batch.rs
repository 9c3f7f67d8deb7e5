//! A round's delivery changes and attempts, sent as one statement each
//! (`unnest` arrays) and written only where this instance may still write
//! them (its claim stands, the record is the one it changed).

use std::collections::{HashMap, HashSet};

use crate::delivery::Delivery;
use crate::error::Result;
use crate::ids::DeliveryId;
use crate::record::Attempt;
use crate::storage::IndexEntry;
use crate::storage::postgres::coordination::DB_NOW;
use crate::storage::postgres::pipeline::{Ticket, WriterTx};
use crate::storage::postgres::rows::{encode, ms, state_code};

/// Changes sent by [`Batch::start`], to be finished.
pub(super) struct Started {
    ticket: Ticket,
    /// The deliveries it changes.
    updated: HashSet<Vec<u8>>,
}

/// A delivery's change: id, state, at, new record, the record it was made
/// from, and whether it is an attempt's outcome (written only under this
/// instance's own claim).
type Update = (Vec<u8>, i16, i64, Vec<u8>, Vec<u8>, bool);

/// Delivery changes and attempts of a round, sent as one statement each
/// (`unnest` arrays) instead of one per row.
#[derive(Default)]
pub(super) struct Batch {
    updates: Vec<Update>,
    /// Where each delivery's change is in `updates`.
    at: HashMap<DeliveryId, usize>,
    attempts: Vec<(Vec<u8>, i32, Vec<u8>)>,
}

impl Batch {
    /// A change of a delivery from the record `old`; a second change of
    /// the same delivery in the round replaces the first's outcome and
    /// keeps its starting record.
    pub(super) fn update(&mut self, old: &[u8], outcome: bool, d: &Delivery) {
        let row = (
            d.id.to_bytes().to_vec(),
            state_code(d.state),
            ms(IndexEntry::of(d).at),
            encode(d),
            old.to_vec(),
            outcome,
        );
        match self.at.get(&d.id) {
            Some(&i) => {
                let first_old = std::mem::take(&mut self.updates[i].4);
                let outcome = self.updates[i].5 || outcome;
                self.updates[i] = (row.0, row.1, row.2, row.3, first_old, outcome);
            }
            None => {
                self.at.insert(d.id, self.updates.len());
                self.updates.push(row);
            }
        }
    }

    pub(super) fn attempt(&mut self, id: DeliveryId, a: &Attempt) {
        self.attempts.push((
            id.to_bytes().to_vec(),
            i32::try_from(a.number).unwrap_or(i32::MAX),
            encode(a),
        ));
    }

    /// Sends what is batched (and empties it). A change is written only
    /// over the record it was made from (a result from a claim whose lease
    /// ran out, after another instance moved the delivery on, changes
    /// nothing) and not over a running claim of another instance (its
    /// result is the newer one).
    pub(super) fn send(&mut self, tx: &mut WriterTx<'_>, schema: &str, me: &[u8]) -> Result<()> {
        let started = self.start(tx, schema, me)?;
        self.finish(tx, schema, started)
    }

    /// Sends the changes of deliveries, not waiting for their answer:
    /// [`finish`](Self::finish) takes it and sends the attempts, so the
    /// round can send another statement in between.
    pub(super) fn start(
        &mut self,
        tx: &mut WriterTx<'_>,
        schema: &str,
        me: &[u8],
    ) -> Result<Option<Started>> {
        if self.updates.is_empty() {
            return Ok(None);
        }
        let rows = std::mem::take(&mut self.updates);
        self.at.clear();
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut ats = Vec::with_capacity(n);
        let mut records = Vec::with_capacity(n);
        let mut olds = Vec::with_capacity(n);
        let mut outcomes = Vec::with_capacity(n);
        for (id, state, at, record, old, outcome) in rows {
            ids.push(id);
            states.push(state);
            ats.push(at);
            records.push(record);
            olds.push(old);
            outcomes.push(outcome);
        }
        let updated: HashSet<Vec<u8>> = ids.iter().cloned().collect();
        let ticket = tx.ask(
            &format!(
                "UPDATE \"{schema}\".deliveries d
                 SET state = v.state, at = v.at, record = v.record, claim = NULL, claimed_until = 0
                 FROM unnest($1::bytea[], $2::int2[], $3::int8[], $4::bytea[], $5::bytea[], $6::bool[])
                      AS v(id, state, at, record, old, outcome)
                 WHERE d.id = v.id AND d.record = v.old
                 AND CASE WHEN v.outcome THEN d.claim = $7
                     ELSE (d.claim IS NULL OR d.claim = $7 OR d.claimed_until < {DB_NOW}) END
                 RETURNING d.id"
            ),
            vec![
                Box::new(ids),
                Box::new(states),
                Box::new(ats),
                Box::new(records),
                Box::new(olds),
                Box::new(outcomes),
                Box::new(me.to_vec()),
            ],
        )?;
        Ok(Some(Started { ticket, updated }))
    }

    /// Takes the answer of [`start`](Self::start)'s changes and sends the
    /// attempts (those of changes that were dropped are dropped too).
    pub(super) fn finish(
        &mut self,
        tx: &mut WriterTx<'_>,
        schema: &str,
        started: Option<Started>,
    ) -> Result<()> {
        if let Some(Started { ticket, updated }) = started {
            let done = tx.rows(ticket)?;
            let changed = done.len();
            // An attempt goes into the history only with the outcome it
            // belongs to: a result that was dropped (its claim ran out)
            // never happened as far as the delivery is concerned.
            let kept: HashSet<Vec<u8>> = done
                .iter()
                .filter_map(|r| r.try_get::<_, Vec<u8>>(0).ok())
                .collect();
            self.attempts
                .retain(|(id, _, _)| !updated.contains(id) || kept.contains(id));
            if changed < updated.len() {
                tracing::info!(
                    dropped = updated.len() - changed,
                    "changes of deliveries that another instance moved on are dropped"
                );
            }
        }
        if !self.attempts.is_empty() {
            let rows = std::mem::take(&mut self.attempts);
            let mut ids = Vec::with_capacity(rows.len());
            let mut ns = Vec::with_capacity(rows.len());
            let mut records = Vec::with_capacity(rows.len());
            for (id, n, record) in rows {
                ids.push(id);
                ns.push(n);
                records.push(record);
            }
            // Nothing waits for it: answered with the round's next
            // statement waited for, or its commit.
            tx.defer(
                &format!(
                    "INSERT INTO \"{schema}\".attempts (delivery, n, record)
                     SELECT * FROM unnest($1::bytea[], $2::int4[], $3::bytea[])
                     ON CONFLICT (delivery, n) DO NOTHING"
                ),
                vec![Box::new(ids), Box::new(ns), Box::new(records)],
            )?;
        }
        Ok(())
    }
}
