//! [`PgReader`]: the reads of the seam's [`Reader`], each one query through
//! the reader's pool, listings a page at a time ([`Paged`]). What instances
//! coordinate through (claims, flow, sequence numbers) is in
//! `coordination.rs`; the `Reader` methods for it delegate there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postgres::Row;

use super::connection::{Params, Pool};
use super::coordination::{self, Claimed, DB_NOW};
use super::paged::{PAGE, Paged, entry_page, id_page};
use super::rows::{corrupt, decode, delivery_of, event_of, id_of, ms, state_code, unms};
use super::schema::column_value;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::Result;
use crate::event::ALL_EVENTS;
use crate::health::HealthRecord;
use crate::ids::{DeliveryId, EventId, SubscriptionId};
use crate::notice::Notice;
use crate::record::{Attempt, Event, OutboxStats};
use crate::storage::{
    DecodeCount, IndexEntry, Iter, PendingSubscriptions, Reader, Subscribers, SubscriptionRecord,
    SubscriptionsBy,
};

/// Reads of the PostgreSQL store, through a small connection pool.
///
/// A clone shares the pool but not the claim cache: only the reader that
/// claims (the engine's) reads the records that came with its claims, so
/// a handle's read never takes one from it nor sees one as it was claimed.
#[derive(Debug)]
pub(crate) struct PgReader {
    pool: Arc<Pool>,
    /// What the last claim returned (the claimed deliveries and their
    /// events), so the dispatcher's reads right after it need no query.
    claimed: Arc<Mutex<Claimed>>,
    /// Records decoded by this reader and its clones.
    decoded: DecodeCount,
}

impl Clone for PgReader {
    fn clone(&self) -> Self {
        PgReader {
            pool: self.pool.clone(),
            claimed: Arc::default(),
            decoded: self.decoded.clone(),
        }
    }
}

impl PgReader {
    /// A reader on `pool`, with a claim cache of its own.
    pub(super) fn new(pool: Arc<Pool>) -> PgReader {
        PgReader {
            pool,
            claimed: Arc::default(),
            decoded: DecodeCount::default(),
        }
    }

    /// Counts `n` decoded records.
    fn count(&self, n: usize) {
        self.decoded.add(n as u64);
    }

    /// This instance's claim token in hex: the payload of its
    /// notifications, so its own listener can tell them apart.
    pub(crate) fn token_hex(&self) -> String {
        hex::encode(self.pool.token)
    }

    /// The pool it reads through.
    pub(super) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// What reserves sequence numbers for `publish_in`, through this
    /// reader's pool.
    pub(crate) fn sequencer(&self) -> coordination::Sequencer {
        coordination::Sequencer::new(self.pool.clone())
    }

    /// Its coordinator: claims fill this reader's claim cache, so the
    /// engine's reads right after a claim need no query.
    pub(super) fn coordinator(&self) -> coordination::PgCoordinator {
        coordination::PgCoordinator::new(self.pool.clone(), self.claimed.clone())
    }

    /// Its claim cache (the writer drops from it what it changes).
    pub(super) fn claimed(&self) -> std::sync::MutexGuard<'_, Claimed> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        self.pool.query(sql, params)
    }

    fn t(&self, table: &str) -> String {
        self.pool.t(table)
    }

    /// The rows of [`Reader::next_due`] for several subscriptions in one
    /// query.
    fn next_due_of_many(&self, subs: &[SubscriptionId]) -> Result<Vec<Row>> {
        let ids: Vec<Vec<u8>> = subs.iter().map(|s| s.to_bytes().to_vec()).collect();
        self.query(
            &format!(
                "WITH clock AS (SELECT {DB_NOW} AS t)
                 SELECT w.sub, d.at FROM unnest($1::bytea[]) AS w(sub)
                 CROSS JOIN LATERAL (
                     SELECT at FROM {} WHERE sub = w.sub AND state = 0
                       AND (claim IS DISTINCT FROM $2 OR claimed_until < (SELECT t FROM clock))
                     ORDER BY at, id LIMIT 1) d",
                self.t("deliveries")
            ),
            &[&ids, &&self.pool.token[..]],
        )
    }
}

impl Reader for PgReader {
    /// Read from the index of pending deliveries alone.
    fn pending(&self) -> Result<u64> {
        let rows = self.query(
            &format!(
                "SELECT count(*) FROM {} WHERE state = 0",
                self.t("deliveries")
            ),
            &[],
        )?;
        match rows.first() {
            Some(row) => Ok(unms(row.try_get(0)?)),
            None => Ok(0),
        }
    }

    fn stats(&self) -> Result<OutboxStats> {
        let mut stats = OutboxStats::default();
        for row in self.query(
            &format!(
                "SELECT state, count(*) FROM {} GROUP BY state",
                self.t("deliveries")
            ),
            &[],
        )? {
            let state: i16 = row.try_get(0)?;
            let n = unms(row.try_get(1)?);
            match state {
                0 => stats.pending = n,
                1 => stats.delivered = n,
                _ => stats.dead += n,
            }
        }
        let q: i64 = self
            .query(
                &format!("SELECT count(*) FROM {}", self.t("quarantine")),
                &[],
            )?
            .first()
            .map_or(Ok(0), |r| r.try_get(0))?;
        stats.quarantined = unms(q);
        Ok(stats)
    }

    fn subscription(&self, id: SubscriptionId) -> Result<Option<SubscriptionRecord>> {
        let rows = self.query(
            &format!(
                "SELECT record FROM {} WHERE id = $1",
                self.t("subscriptions")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        self.count(rows.len());
        rows.first()
            .map(|r| decode("s", &id.to_bytes(), &r.try_get::<_, Vec<u8>>(0)?))
            .transpose()
    }

    /// One query.
    fn subscriptions_of(&self, ids: &[SubscriptionId]) -> Result<Vec<SubscriptionRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u8>> = ids.iter().map(|s| s.to_bytes().to_vec()).collect();
        let rows = self.query(
            &format!(
                "SELECT id, record FROM {} WHERE id = ANY($1)",
                self.t("subscriptions")
            ),
            &[&ids],
        )?;
        self.count(rows.len());
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id: Vec<u8> = r.try_get(0).ok()?;
                decode("s", &id, &r.try_get::<_, Vec<u8>>(1).ok()?).ok()
            })
            .collect())
    }

    fn subscriptions(&self) -> Iter<SubscriptionRecord> {
        let r = self.clone();
        Paged::boxed(move |after: Option<&Vec<u8>>| {
            let after = after.cloned().unwrap_or_default();
            let rows = r.query(
                &format!(
                    "SELECT id, record FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                    r.t("subscriptions")
                ),
                &[&after, &PAGE],
            )?;
            r.count(rows.len());
            rows.iter()
                .map(|row| {
                    let id: Vec<u8> = row.try_get(0)?;
                    let rec = decode("s", &id, &row.try_get::<_, Vec<u8>>(1)?);
                    Ok((rec, id))
                })
                .collect()
        })
    }

    /// Pages of the index on `tenant` or `owner` (with the id), rows not
    /// filled in yet (NULL: see `schema::fill_columns`) included and
    /// checked, until `limit` match.
    fn subscriptions_by(
        &self,
        by: SubscriptionsBy<'_>,
        after: Option<SubscriptionId>,
        limit: usize,
    ) -> Result<Vec<SubscriptionRecord>> {
        let (column, value) = match by {
            SubscriptionsBy::Tenant(t) => ("tenant", column_value(t)),
            SubscriptionsBy::Owner(o) => ("owner", o),
        };
        let mut out = Vec::new();
        let mut after = after.map(|a| a.to_bytes().to_vec()).unwrap_or_default();
        let page = i64::try_from(limit).unwrap_or(i64::MAX).min(PAGE);
        while out.len() < limit {
            let t = self.t("subscriptions");
            let rows = self.query(
                &format!(
                    "(SELECT id, record FROM {t} WHERE {column} = $1 AND id > $2 ORDER BY id LIMIT $3)
                     UNION ALL
                     (SELECT id, record FROM {t} WHERE {column} IS NULL AND id > $2 ORDER BY id LIMIT $3)
                     ORDER BY id LIMIT $3"
                ),
                &[&value, &after, &page],
            )?;
            self.count(rows.len());
            for row in &rows {
                let id: Vec<u8> = row.try_get(0)?;
                let rec: SubscriptionRecord = decode("s", &id, &row.try_get::<_, Vec<u8>>(1)?)?;
                if by.matches(&rec) && out.len() < limit {
                    out.push(rec);
                }
                after = id;
            }
            if (rows.len() as i64) < page {
                break;
            }
        }
        Ok(out)
    }

    fn subscribers_of(&self, event: &str) -> Result<Subscribers> {
        let rows = self.query(
            &format!(
                "SELECT DISTINCT sub FROM {} WHERE event = $1 OR event = $2 ORDER BY sub",
                self.t("subscription_events")
            ),
            &[&event, &ALL_EVENTS],
        )?;
        let mut out = Subscribers::default();
        for row in rows {
            out.ids
                .push(id_of(&row, "sub", SubscriptionId::from_slice)?);
        }
        Ok(out)
    }

    fn subscribers_of_each(&self, events: &[&str]) -> Result<Option<Vec<Subscribers>>> {
        let mut names: Vec<&str> = Vec::with_capacity(events.len() + 1);
        names.extend_from_slice(events);
        names.push(ALL_EVENTS);
        let rows = self.query(
            &format!(
                "SELECT event, sub FROM {} WHERE event = ANY($1)",
                self.t("subscription_events")
            ),
            &[&names],
        )?;
        let mut by: HashMap<String, Vec<SubscriptionId>> = HashMap::new();
        for row in rows {
            let event: String = row.try_get(0)?;
            let sub = id_of(&row, "sub", SubscriptionId::from_slice)?;
            by.entry(event).or_default().push(sub);
        }
        let all = by.remove(ALL_EVENTS).unwrap_or_default();
        Ok(Some(
            events
                .iter()
                .map(|event| {
                    let mut ids = by.get(*event).cloned().unwrap_or_default();
                    ids.extend_from_slice(&all);
                    ids.sort_unstable();
                    ids.dedup();
                    Subscribers {
                        ids,
                        damaged: Vec::new(),
                    }
                })
                .collect(),
        ))
    }

    fn event(&self, id: EventId) -> Result<Option<Event>> {
        let cached = self.claimed().event(id);
        if let Some(e) = cached {
            return Ok(Some(e));
        }
        let rows = self.query(
            &format!(
                "SELECT record, tenant, scoped FROM {} WHERE id = $1",
                self.t("events")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        self.count(rows.len());
        rows.first()
            .map(|r| {
                event_of(
                    &id.to_bytes(),
                    &r.try_get::<_, Vec<u8>>(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                )
            })
            .transpose()
    }

    fn event_refs(&self, id: EventId) -> Result<Option<u32>> {
        let n: i64 = self
            .query(
                &format!(
                    "SELECT count(*) FROM {} WHERE event_id = $1",
                    self.t("deliveries")
                ),
                &[&&id.to_bytes()[..]],
            )?
            .first()
            .map_or(Ok(0), |r| r.try_get(0))?;
        Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
    }

    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        let cached = self.claimed().delivery(id, self.pool.lease_ms);
        if let Some(d) = cached {
            return Ok(Some(d));
        }
        let rows = self.query(
            &format!(
                "SELECT id, record FROM {} WHERE id = $1",
                self.t("deliveries")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        self.count(rows.len());
        rows.first().map(delivery_of).transpose()
    }

    fn deliveries(&self, after: Option<DeliveryId>) -> Iter<Delivery> {
        let r = self.clone();
        let start = after.map(|a| a.to_bytes().to_vec()).unwrap_or_default();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let after = cursor.cloned().unwrap_or_else(|| start.clone());
            let rows = r.query(
                &format!(
                    "SELECT id, record FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                    r.t("deliveries")
                ),
                &[&after, &PAGE],
            )?;
            r.count(rows.len());
            rows.iter()
                .map(|row| Ok((delivery_of(row), row.try_get::<_, Vec<u8>>(0)?)))
                .collect()
        })
    }

    fn deliveries_of(&self, sub: SubscriptionId, newest_first: bool) -> Iter<DeliveryId> {
        if newest_first {
            return self.deliveries_of_before(sub, None);
        }
        let r = self.clone();
        let s = sub.to_bytes().to_vec();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let after = cursor.cloned().unwrap_or_default();
            let rows = r.query(
                &format!(
                    "SELECT id FROM {} WHERE sub = $1 AND id > $2 ORDER BY id LIMIT $3",
                    r.t("deliveries")
                ),
                &[&s, &after, &PAGE],
            )?;
            id_page(&rows)
        })
    }

    /// Pages of the index on `(sub, id)`, read backwards.
    fn deliveries_of_before(
        &self,
        sub: SubscriptionId,
        before: Option<DeliveryId>,
    ) -> Iter<DeliveryId> {
        let r = self.clone();
        let s = sub.to_bytes().to_vec();
        // Above every 16-byte id.
        let first = before.map_or_else(|| vec![0xff; 17], |b| b.to_bytes().to_vec());
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let before = cursor.cloned().unwrap_or_else(|| first.clone());
            let rows = r.query(
                &format!(
                    "SELECT id FROM {} WHERE sub = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                    r.t("deliveries")
                ),
                &[&s, &before, &PAGE],
            )?;
            id_page(&rows)
        })
    }

    fn deliveries_of_many_before(
        &self,
        subs: &[SubscriptionId],
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Option<Vec<Delivery>>> {
        let subs: Vec<Vec<u8>> = subs.iter().map(|s| s.to_bytes().to_vec()).collect();
        // Above every 16-byte id.
        let before = before.map_or_else(|| vec![0xff; 17], |b| b.to_bytes().to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Each subscription's newest `limit` through its (sub, id) index,
        // then the newest `limit` of those: the work follows the
        // subscriptions' own deliveries, not the table's.
        let rows = self.query(
            &format!(
                "SELECT x.id, x.record FROM unnest($1::bytea[]) AS s(sub) \
                 CROSS JOIN LATERAL (SELECT d.id, d.record FROM {} d \
                 WHERE d.sub = s.sub AND d.id < $2 ORDER BY d.id DESC LIMIT $3) x \
                 ORDER BY x.id DESC LIMIT $3",
                self.t("deliveries")
            ),
            &[&subs, &before, &limit],
        )?;
        self.count(rows.len());
        rows.iter()
            .map(delivery_of)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn deliveries_of_from(&self, sub: SubscriptionId, from: DeliveryId) -> Iter<DeliveryId> {
        let r = self.clone();
        let s = sub.to_bytes().to_vec();
        let start = from.to_bytes().to_vec();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let (cmp, after) = match cursor {
                Some(c) => (">", c.clone()),
                None => (">=", start.clone()),
            };
            let rows = r.query(
                &format!(
                    "SELECT id FROM {} WHERE sub = $1 AND id {cmp} $2 ORDER BY id LIMIT $3",
                    r.t("deliveries")
                ),
                &[&s, &after, &PAGE],
            )?;
            id_page(&rows)
        })
    }

    fn index(&self, state: DeliveryState, after: Option<IndexEntry>) -> Iter<IndexEntry> {
        let r = self.clone();
        let code = state_code(state);
        Paged::boxed(move |cursor: Option<&IndexEntry>| {
            let c = cursor.copied().or(after);
            let rows = match (state, c) {
                // Pending: by subscription, then due time (as sled's index).
                (DeliveryState::Pending, Some(c)) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = 0 AND (sub, at, id) > ($1, $2, $3)
                         ORDER BY sub, at, id LIMIT $4",
                        r.t("deliveries")
                    ),
                    &[
                        &&c.subscription.to_bytes()[..],
                        &ms(c.at),
                        &&c.delivery.to_bytes()[..],
                        &PAGE,
                    ],
                )?,
                (DeliveryState::Pending, None) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = 0 ORDER BY sub, at, id LIMIT $1",
                        r.t("deliveries")
                    ),
                    &[&PAGE],
                )?,
                (_, Some(c)) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = $1 AND (at, id) > ($2, $3)
                         ORDER BY at, id LIMIT $4",
                        r.t("deliveries")
                    ),
                    &[&code, &ms(c.at), &&c.delivery.to_bytes()[..], &PAGE],
                )?,
                (_, None) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = $1 ORDER BY at, id LIMIT $2",
                        r.t("deliveries")
                    ),
                    &[&code, &PAGE],
                )?,
            };
            entry_page(&rows)
        })
    }

    /// One query over the index of pending deliveries: the soonest of each
    /// subscription by its own index scan. (`sub = ANY($1)` with `DISTINCT
    /// ON` got a bitmap scan as a prepared statement, which never marks the
    /// index entries of finished deliveries dead, so every call visited all
    /// of them again: 136 µs a call at a steady 300/s, the most server time
    /// of any statement; one index scan per subscription skips them once
    /// seen.) Deliveries this instance holds a claim on are left out:
    /// it sends them already, and their outcome brings the subscription
    /// back if anything of it stays due.
    fn next_due(&self, subs: &[SubscriptionId]) -> Result<Vec<(SubscriptionId, u64)>> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        let rows = if let [sub] = subs {
            // One subscription (most rounds at everyday rates): a plain
            // statement, cheap to plan (bind 38 µs median in the server's
            // log at 300/s). The array's form stays a custom plan, made
            // afresh at every call: 207 µs median, twelve times its run.
            self.query(
                &format!(
                    "SELECT sub, at FROM {} WHERE sub = $1 AND state = 0
                       AND (claim IS DISTINCT FROM $2 OR claimed_until < {DB_NOW})
                     ORDER BY at, id LIMIT 1",
                    self.t("deliveries")
                ),
                &[&&sub.to_bytes()[..], &&self.pool.token[..]],
            )?
        } else {
            self.next_due_of_many(subs)?
        };
        rows.iter()
            .map(|row| {
                Ok((
                    id_of(row, "sub", SubscriptionId::from_slice)?,
                    unms(row.try_get("at")?),
                ))
            })
            .collect()
    }

    fn due(&self, sub: SubscriptionId) -> Iter<IndexEntry> {
        let r = self.clone();
        let s = sub.to_bytes().to_vec();
        Paged::boxed(move |cursor: Option<&IndexEntry>| {
            let rows = match cursor {
                Some(c) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE sub = $1 AND state = 0 AND (at, id) > ($2, $3)
                         ORDER BY at, id LIMIT $4",
                        r.t("deliveries")
                    ),
                    &[&s, &ms(c.at), &&c.delivery.to_bytes()[..], &PAGE],
                )?,
                None => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE sub = $1 AND state = 0 ORDER BY at, id LIMIT $2",
                        r.t("deliveries")
                    ),
                    &[&s, &PAGE],
                )?,
            };
            entry_page(&rows)
        })
    }

    fn pending_subscriptions(&self) -> Result<PendingSubscriptions> {
        let rows = self.query(
            &format!(
                "SELECT sub, min(at) AS at FROM {} WHERE state = 0 GROUP BY sub",
                self.t("deliveries")
            ),
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push((
                id_of(&row, "sub", SubscriptionId::from_slice)?,
                unms(row.try_get("at")?),
            ));
        }
        Ok((out, Vec::new()))
    }

    fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>> {
        let rows = self.query(
            &format!(
                "SELECT n, record FROM {} WHERE delivery = $1 ORDER BY n",
                self.t("attempts")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        self.count(rows.len());
        rows.iter()
            .map(|r| decode("a", &id.to_bytes(), &r.try_get::<_, Vec<u8>>(1)?))
            .collect()
    }

    fn idempotency_key(&self, key: &str) -> Result<Option<(EventId, u64)>> {
        let rows = self.query(
            &format!(
                "SELECT event, at FROM {} WHERE key = $1",
                self.t("idempotency")
            ),
            &[&key.as_bytes()],
        )?;
        rows.first()
            .map(|r| {
                Ok((
                    id_of(r, "event", EventId::from_slice)?,
                    unms(r.try_get("at")?),
                ))
            })
            .transpose()
    }

    fn idempotency_keys_before(&self, before: u64) -> Iter<(String, u64)> {
        let r = self.clone();
        Paged::boxed(move |cursor: Option<&(i64, Vec<u8>)>| {
            let (at, key) = cursor.cloned().unwrap_or((-1, Vec::new()));
            let rows = r.query(
                &format!(
                    "SELECT key, at FROM {} WHERE at < $1 AND (at, key) > ($2, $3)
                     ORDER BY at, key LIMIT $4",
                    r.t("idempotency")
                ),
                &[&ms(before), &at, &key, &PAGE],
            )?;
            rows.iter()
                .map(|row| {
                    let key: Vec<u8> = row.try_get(0)?;
                    let at: i64 = row.try_get(1)?;
                    let text = String::from_utf8(key.clone())
                        .map_err(|_| corrupt("k", &key, "idempotency key is not UTF-8"))?;
                    Ok((Ok((text, unms(at))), (at, key)))
                })
                .collect()
        })
    }

    fn sequence(&self, sub: SubscriptionId) -> Result<u64> {
        let rows = self.query(
            &format!("SELECT seq FROM {} WHERE id = $1", self.t("subscriptions")),
            &[&&sub.to_bytes()[..]],
        )?;
        Ok(rows.first().map_or(Ok(0), |r| r.try_get(0)).map(unms)?)
    }

    fn health(&self, sub: SubscriptionId) -> Result<Option<HealthRecord>> {
        let id = sub.to_bytes();
        let rows = self.query(
            &format!("SELECT record FROM {} WHERE sub = $1", self.t("health")),
            &[&&id[..]],
        )?;
        rows.first()
            .map(|r| decode("h", &id, &r.try_get::<_, Vec<u8>>(0)?))
            .transpose()
    }

    /// One query for them all.
    fn healths_of(&self, subs: &[SubscriptionId]) -> Result<Vec<(SubscriptionId, HealthRecord)>> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u8>> = subs.iter().map(|s| s.to_bytes().to_vec()).collect();
        let rows = self.query(
            &format!(
                "SELECT sub, record FROM {} WHERE sub = ANY($1)",
                self.t("health")
            ),
            &[&ids],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id: Vec<u8> = r.try_get(0).ok()?;
                let sub = SubscriptionId::from_slice(&id)?;
                let h = decode("h", &id, &r.try_get::<_, Vec<u8>>(1).ok()?).ok()?;
                Some((sub, h))
            })
            .collect())
    }

    fn backlog(&self, sub: SubscriptionId) -> Result<u64> {
        let rows = self.query(
            &format!(
                "SELECT count(*) FROM {} WHERE sub = $1 AND state = 0",
                self.t("deliveries")
            ),
            &[&&sub.to_bytes()[..]],
        )?;
        Ok(unms(rows.first().map_or(Ok(0), |r| r.try_get(0))?))
    }

    fn notices(&self) -> Iter<Notice> {
        let r = self.clone();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let after = cursor.cloned().unwrap_or_default();
            let rows = r.query(
                &format!(
                    "SELECT id, record FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                    r.t("notices")
                ),
                &[&after, &PAGE],
            )?;
            rows.iter()
                .map(|row| {
                    let k: Vec<u8> = row.try_get(0)?;
                    let n = decode::<Notice>("o", &k, &row.try_get::<_, Vec<u8>>(1)?);
                    Ok((n, k))
                })
                .collect()
        })
    }

    fn quarantined(&self) -> Iter<(Vec<u8>, Vec<u8>)> {
        let r = self.clone();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let after = cursor.cloned().unwrap_or_default();
            let rows = r.query(
                &format!(
                    "SELECT key, value FROM {} WHERE key > $1 ORDER BY key LIMIT $2",
                    r.t("quarantine")
                ),
                &[&after, &PAGE],
            )?;
            rows.iter()
                .map(|row| {
                    let k: Vec<u8> = row.try_get(0)?;
                    let v: Vec<u8> = row.try_get(1)?;
                    Ok((Ok((k.clone(), v)), k))
                })
                .collect()
        })
    }

    fn records_decoded(&self) -> u64 {
        self.decoded.get()
    }

    fn size_on_disk(&self) -> Result<u64> {
        let rows = self.query(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&self.pool.schema],
        )?;
        Ok(unms(rows.first().map_or(Ok(0), |r| r.try_get(0))?))
    }
}
