//! The writer's staged writes ([`Op`]) and how a round applies them inside
//! its transaction: the steps that take the whole round at once (locking
//! and numbering, the events, the new deliveries, the notification) and one
//! function per kind of write. Delivery changes and attempts go through
//! `batch.rs` instead.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::delivery::Delivery;
use crate::error::Result;
use crate::health::{HealthDelta, HealthRecord};
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId};
use crate::notice::Notice;
use crate::record::{Attempt, Event};
use crate::storage::postgres::connection::Pool;
use crate::storage::postgres::coordination::DB_NOW;
use crate::storage::postgres::listener::channel;
use crate::storage::postgres::pipeline::{Owned, Ticket, WriterTx};
use crate::storage::postgres::rows::{
    decode, encode, encode_event, id_of, ms, sql_with_sequence, state_code, unms,
};
use crate::storage::postgres::schema::column_value;
use crate::storage::{Damaged, IndexEntry, SubscriptionRecord};

/// One staged write.
pub(super) enum Op {
    PutSubscription(Option<Vec<String>>, SubscriptionRecord),
    RemoveSubscription(SubscriptionRecord),
    PutEvent(Event),
    RemoveEvent(EventId),
    /// Events created before this id that no delivery refers to.
    SweepOrphans(EventId),
    /// A new delivery (`None`), or a change of the one stored as `old`
    /// (its record's bytes), and whether the change is an attempt's
    /// outcome.
    PutDelivery(Option<(Vec<u8>, bool)>, Delivery),
    /// A finished delivery, as the record it was read as.
    RemoveDelivery(DeliveryId, Vec<u8>),
    PutAttempt(DeliveryId, Attempt),
    RemoveAttempt(DeliveryId, u32),
    /// A write that changes nothing but fails where writes fail (a
    /// read-only server): the health probe.
    Probe,
    QuarantineDelivery(DeliveryId),
    QuarantineRaw(Damaged),
    PutKey(String, EventId, u64),
    RemoveKey(String, u64),
    PutSequence(SubscriptionId, u64),
    MergeHealth(SubscriptionId, HealthDelta),
    PutNotice(Notice),
    RemoveNotice(NoticeId),
}

// The whole round.

/// How many new deliveries the round makes per subscription that the
/// store is to number (the engine leaves them 0 on a shared store).
pub(super) fn new_per_subscription(ops: &[Op]) -> BTreeMap<SubscriptionId, i64> {
    let mut counts: BTreeMap<SubscriptionId, i64> = Default::default();
    for op in ops {
        if let Op::PutDelivery(None, d) = op
            && d.sequence == 0
        {
            *counts.entry(d.subscription_id).or_default() += 1;
        }
    }
    counts
}

/// A round that also changes subscriptions (the engine's auto-disable or
/// FIFO halt, an API change) locks every subscription row it writes
/// first, in the same order (id order, as [`number_new_deliveries`]
/// does), so rounds of two instances never hold one row each and wait for
/// the other. `counts`: the round's new deliveries per subscription
/// ([`new_per_subscription`]).
pub(super) fn lock_written_subscriptions(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    ops: &[Op],
    counts: &BTreeMap<SubscriptionId, i64>,
) -> Result<()> {
    let mut changed: BTreeSet<SubscriptionId> = ops
        .iter()
        .filter_map(|op| match op {
            Op::PutSubscription(_, new) => Some(new.id),
            Op::RemoveSubscription(old) => Some(old.id),
            _ => None,
        })
        .collect();
    if !changed.is_empty() && (changed.len() > 1 || !counts.is_empty()) {
        changed.extend(counts.keys().copied());
        let ids: Vec<Vec<u8>> = changed.iter().map(|s| s.to_bytes().to_vec()).collect();
        tx.query(
            &format!(
                "SELECT id FROM {} WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                pool.t("subscriptions")
            ),
            &[&ids],
        )?;
    }
    Ok(())
}

/// Numbers for the round's new deliveries (`counts` of them per
/// subscription): one statement, which locks the subscriptions' rows in
/// id order (as every numbering does, so two instances never wait for
/// each other's rows). Sent, not waited for: the new deliveries' insert
/// reads the numbers from the rows it updated ([`insert_new_deliveries`]),
/// and the round's own copies take them from the ticket's rows after the
/// commit ([`take_numbers`]).
pub(super) fn number_new_deliveries(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    counts: &BTreeMap<SubscriptionId, i64>,
) -> Result<Option<Ticket>> {
    if counts.is_empty() {
        return Ok(None);
    }
    let ids: Vec<Vec<u8>> = counts.keys().map(|s| s.to_bytes().to_vec()).collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    let ticket = tx.ask(
        &format!(
            // Every row locked in id order first (the count, a one-time
            // filter, runs the locking scan to its end before any update),
            // then each updated through the primary key: no join of the
            // two lists (the writer has no hash joins: `WRITER_SESSION`).
            "WITH locked AS (
                 SELECT id FROM {s} WHERE id = ANY($1) ORDER BY id FOR UPDATE)
             UPDATE {s} SET seq = {s}.seq + v.n
             FROM unnest($1::bytea[], $2::int8[]) AS v(id, n)
             WHERE {s}.id = v.id AND (SELECT count(*) FROM locked) > 0
             RETURNING {s}.id, {s}.seq",
            s = pool.t("subscriptions")
        ),
        vec![Box::new(ids), Box::new(ns)],
    )?;
    Ok(Some(ticket))
}

/// Gives the round's new deliveries the numbers the store gave them, from
/// the rows of [`number_new_deliveries`]' ticket (read after the commit),
/// as [`insert_new_deliveries`] computed them: the `k`-th (from 0) of a
/// subscription's `n` new ones is its updated `seq - n + 1 + k`. A
/// subscription deleted meanwhile gives none (0: not sent). Returns
/// whether the numbers read: if not, the copies still say 0, which is not
/// what was stored, so they must not be used.
pub(super) fn take_numbers(
    ops: &mut [Op],
    counts: &BTreeMap<SubscriptionId, i64>,
    rows: Option<Vec<postgres::Row>>,
) -> bool {
    let Some(rows) = rows else {
        tracing::error!("the new deliveries' sequence numbers were not answered");
        return false;
    };
    let mut next = HashMap::new();
    for row in rows {
        let read = id_of(&row, "id", SubscriptionId::from_slice)
            .and_then(|sub| Ok((sub, unms(row.try_get("seq")?))));
        match read {
            Ok((sub, last)) => {
                let n = counts.get(&sub).map_or(0, |&n| unms(n));
                next.insert(sub, last.saturating_sub(n).saturating_add(1));
            }
            Err(e) => {
                tracing::error!(error = %e, "a new delivery's sequence number did not read");
                return false;
            }
        }
    }
    // A subscription without a row was deleted meanwhile.
    for op in ops {
        if let Op::PutDelivery(None, d) = op
            && d.sequence == 0
            && let Some(n) = next.get_mut(&d.subscription_id)
        {
            d.sequence = *n;
            *n += 1;
        }
    }
    true
}

/// The round's events in one statement, before anything refers to them.
pub(super) fn insert_events(tx: &mut WriterTx<'_>, pool: &Pool, ops: &[Op]) -> Result<()> {
    let events: Vec<&Event> = ops
        .iter()
        .filter_map(|op| match op {
            Op::PutEvent(e) => Some(e),
            _ => None,
        })
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut records = Vec::with_capacity(events.len());
    let mut tenants = Vec::with_capacity(events.len());
    for e in events {
        ids.push(e.id.to_bytes().to_vec());
        records.push(encode_event(e));
        tenants.push(e.tenant.clone());
    }
    // Sent, not waited for: it goes with the round's next statement.
    tx.defer(
        &format!(
            "INSERT INTO {} (id, record, tenant, scoped)
             SELECT id, record, tenant, true
             FROM unnest($1::bytea[], $2::bytea[], $3::text[]) AS v(id, record, tenant)
             ON CONFLICT DO NOTHING",
            pool.t("events")
        ),
        vec![Box::new(ids), Box::new(records), Box::new(tenants)],
    )?;
    Ok(())
}

/// A round with new deliveries or changed subscriptions notifies the
/// schema's channel.
pub(super) fn notify(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    ops: &[Op],
    to_claim: &HashSet<DeliveryId>,
) -> Result<()> {
    // New deliveries this instance stores claimed are its own to send:
    // nobody else need look. (One it asked for but a receiver's pause
    // kept unclaimed waits for that pause, which holds every instance
    // back; this instance has it as due, and the others find it at their
    // next poll.)
    let new_deliveries = ops
        .iter()
        .any(|op| matches!(op, Op::PutDelivery(None, d) if !to_claim.contains(&d.id)));
    let subscriptions_changed = ops
        .iter()
        .any(|op| matches!(op, Op::PutSubscription(..) | Op::RemoveSubscription(_)));
    if new_deliveries || subscriptions_changed {
        // Delivered to listening instances when this commits: they look
        // for new work, and forget the subscriptions they cached.
        // Sent with the commit.
        tx.defer(
            "SELECT pg_notify($1, $2)",
            vec![
                Box::new(channel(&pool.schema)),
                Box::new(hex::encode(pool.token)),
            ],
        )?;
    }
    Ok(())
}

/// New deliveries go in one multi-row insert per round; those in
/// `to_claim` with this instance's claim (a lease from the database's
/// clock, as a claim's), unless a receiver's pause holds their
/// subscription back. Those the store numbers (`counts` per subscription)
/// get their number here, from their subscription's row as the round's
/// [`number_new_deliveries`] left it, written into their record by the
/// server ([`sql_with_sequence`]). Sent, not waited for: the ticket's
/// rows, answered with the commit, say which were stored claimed
/// ([`claimed_of`]).
pub(super) fn insert_new_deliveries(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    ops: &[Op],
    counts: &BTreeMap<SubscriptionId, i64>,
    to_claim: &HashSet<DeliveryId>,
) -> Result<Option<Ticket>> {
    let new_deliveries: Vec<&Delivery> = ops
        .iter()
        .filter_map(|op| match op {
            Op::PutDelivery(None, d) => Some(d),
            _ => None,
        })
        .collect();
    if new_deliveries.is_empty() {
        return Ok(None);
    }
    // One statement (one text, so one prepared statement) whatever
    // the round's size.
    let n = new_deliveries.len();
    let (mut ids, mut subs, mut events) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut states, mut ats, mut records) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut claims = Vec::with_capacity(n);
    // Each one the store numbers: its place `k` among its subscription's
    // new ones (the order `take_numbers` follows), and their count `n`.
    let (mut places, mut of) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut seen: HashMap<SubscriptionId, i64> = HashMap::new();
    for d in new_deliveries {
        match counts.get(&d.subscription_id) {
            Some(&count) if d.sequence == 0 => {
                let k = seen.entry(d.subscription_id).or_default();
                places.push(Some(*k));
                of.push(count);
                *k += 1;
            }
            _ => {
                places.push(None);
                of.push(0);
            }
        }
        ids.push(d.id.to_bytes().to_vec());
        subs.push(d.subscription_id.to_bytes().to_vec());
        events.push(d.event_id.to_bytes().to_vec());
        states.push(state_code(d.state));
        ats.push(ms(IndexEntry::of(d).at));
        records.push(encode(d));
        claims.push(to_claim.contains(&d.id));
    }
    let d = pool.t("deliveries");
    let mut params: Owned = vec![
        Box::new(ids),
        Box::new(subs),
        Box::new(events),
        Box::new(states),
        Box::new(ats),
        Box::new(records),
        Box::new(places),
        Box::new(of),
    ];
    // The delivery's number, when the store gives it one: NULL otherwise
    // (numbered already, or its subscription was deleted meanwhile).
    let numbered = format!(
        "LEFT JOIN {s} ON v.k IS NOT NULL AND {s}.id = v.sub
         CROSS JOIN LATERAL (SELECT {s}.seq - v.n + 1 + v.k AS n) q",
        s = pool.t("subscriptions")
    );
    let record = format!(
        "CASE WHEN q.n IS NULL THEN v.record ELSE {} END",
        sql_with_sequence("v.record", "q.n")
    );
    let columns = "$1::bytea[], $2::bytea[], $3::bytea[], $4::int2[], $5::int8[], $6::bytea[],
                   $7::int8[], $8::int8[]";
    if to_claim.is_empty() {
        tx.defer(
            &format!(
                "INSERT INTO {d} (id, sub, event_id, state, at, record)
                 SELECT v.id, v.sub, v.event_id, v.state, v.at, {record}
                 FROM unnest({columns}) AS v(id, sub, event_id, state, at, record, k, n)
                 {numbered}
                 ON CONFLICT (id) DO NOTHING"
            ),
            params,
        )?;
        return Ok(None);
    }
    params.push(Box::new(claims));
    params.push(Box::new(pool.token.to_vec()));
    params.push(Box::new(ms(pool.lease_ms)));
    let ticket = tx.ask(
        &format!(
            "WITH clock AS (SELECT {DB_NOW} AS t)
             INSERT INTO {d} (id, sub, event_id, state, at, record, claim, claimed_until)
             SELECT v.id, v.sub, v.event_id, v.state, v.at, {record},
                    CASE WHEN c.mine THEN $10::bytea END,
                    CASE WHEN c.mine THEN clock.t + $11 ELSE 0 END
             FROM unnest({columns}, $9::bool[])
                  AS v(id, sub, event_id, state, at, record, k, n, claim)
                  {numbered}
                  CROSS JOIN clock
                  CROSS JOIN LATERAL (SELECT v.claim AND NOT EXISTS (
                      SELECT 1 FROM {f} WHERE {f}.sub = v.sub AND paused_until > clock.t)
                      AS mine) c
             ON CONFLICT (id) DO NOTHING
             RETURNING id, claim IS NOT NULL",
            f = pool.t("flow")
        ),
        params,
    )?;
    Ok(Some(ticket))
}

/// The new deliveries stored claimed, from the rows of
/// [`insert_new_deliveries`]' ticket (read after the commit). A row that
/// does not read is left out: that delivery stays claimed until its lease
/// and is then sent by whichever instance claims it.
pub(super) fn claimed_of(rows: Option<Vec<postgres::Row>>) -> HashSet<DeliveryId> {
    let mut claimed = HashSet::new();
    let Some(rows) = rows else {
        tracing::error!("the claimed new deliveries were not answered; they wait for their lease");
        return claimed;
    };
    for row in rows {
        let read = row
            .try_get::<_, bool>(1)
            .map_err(crate::error::Error::from)
            .and_then(|mine| Ok((mine, id_of(&row, "id", DeliveryId::from_slice)?)));
        match read {
            Ok((true, id)) => {
                claimed.insert(id);
            }
            Ok((false, _)) => {}
            Err(e) => {
                tracing::error!(error = %e, "a claimed new delivery's row did not read; it waits for its lease");
            }
        }
    }
    claimed
}

// One write each.

pub(super) fn put_subscription(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    old_events: Option<&[String]>,
    new: &SubscriptionRecord,
) -> Result<()> {
    let id = &new.id.to_bytes()[..];
    tx.execute(
        &format!(
            "INSERT INTO {} (id, record, tenant, owner) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record,
                 tenant = EXCLUDED.tenant, owner = EXCLUDED.owner",
            pool.t("subscriptions")
        ),
        &[
            &id,
            &encode(new),
            &column_value(new.tenant.as_deref()),
            &column_value(new.owner.as_deref()),
        ],
    )?;
    // A changed subscription (a new URL, say) is not held
    // to the old receiver's "slow down".
    tx.execute(
        &format!(
            "UPDATE {} SET paused_until = 0 WHERE sub = $1",
            pool.t("flow")
        ),
        &[&id],
    )?;
    if let Some(old) = old_events {
        for e in old.iter().filter(|e| !new.events.contains(e)) {
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE event = $1 AND sub = $2",
                    pool.t("subscription_events")
                ),
                &[e, &id],
            )?;
        }
    }
    for e in &new.events {
        tx.execute(
            &format!(
                "INSERT INTO {} (event, sub) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                pool.t("subscription_events")
            ),
            &[e, &id],
        )?;
    }
    Ok(())
}

pub(super) fn remove_subscription(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    old: &SubscriptionRecord,
) -> Result<()> {
    let id = &old.id.to_bytes()[..];
    tx.execute(
        &format!(
            "DELETE FROM {} WHERE sub = $1",
            pool.t("subscription_events")
        ),
        &[&id],
    )?;
    tx.execute(
        &format!("DELETE FROM {} WHERE id = $1", pool.t("subscriptions")),
        &[&id],
    )?;
    tx.execute(
        &format!("DELETE FROM {} WHERE sub = $1", pool.t("health")),
        &[&id],
    )?;
    tx.execute(
        &format!("DELETE FROM {} WHERE sub = $1", pool.t("flow")),
        &[&id],
    )?;
    Ok(())
}

pub(super) fn sweep_orphans(tx: &mut WriterTx<'_>, pool: &Pool, before: EventId) -> Result<()> {
    // A range and a limit, whose best plan depends on `before`: planned
    // for its value (the writer otherwise keeps generic plans, made for
    // lookups by key: `WRITER_SESSION`), for the rest of this round.
    tx.defer("SET LOCAL plan_cache_mode TO auto", Vec::new())?;
    tx.execute(
        &format!(
            "DELETE FROM {e} WHERE id IN (
                 SELECT ev.id FROM {e} ev WHERE ev.id < $1
                 AND NOT EXISTS (SELECT 1 FROM {d} dl WHERE dl.event_id = ev.id)
                 LIMIT 1000)",
            e = pool.t("events"),
            d = pool.t("deliveries")
        ),
        &[&&before.to_bytes()[..]],
    )?;
    Ok(())
}

pub(super) fn remove_event(tx: &mut WriterTx<'_>, pool: &Pool, id: EventId) -> Result<()> {
    let id = &id.to_bytes()[..];
    tx.execute(
        &format!(
            "DELETE FROM {} WHERE id = $1
             AND NOT EXISTS (SELECT 1 FROM {} WHERE event_id = $1)",
            pool.t("events"),
            pool.t("deliveries")
        ),
        &[&id],
    )?;
    Ok(())
}

pub(super) fn remove_delivery(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    id: DeliveryId,
    record: &[u8],
) -> Result<()> {
    // Only the record it was read as (not one another
    // instance revived meanwhile), and its attempts with it.
    let id = &id.to_bytes()[..];
    let gone = tx.execute(
        &format!(
            "DELETE FROM {} WHERE id = $1 AND record = $2",
            pool.t("deliveries")
        ),
        &[&id, &record],
    )?;
    if gone > 0 {
        tx.execute(
            &format!("DELETE FROM {} WHERE delivery = $1", pool.t("attempts")),
            &[&id],
        )?;
    }
    Ok(())
}

pub(super) fn probe(tx: &mut WriterTx<'_>, pool: &Pool) -> Result<()> {
    tx.execute(
        &format!(
            "UPDATE {} SET applied_at = applied_at WHERE version = -1",
            pool.t("migrations")
        ),
        &[],
    )?;
    Ok(())
}

pub(super) fn remove_attempt(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    id: DeliveryId,
    n: u32,
) -> Result<()> {
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    tx.execute(
        &format!(
            "DELETE FROM {} WHERE delivery = $1 AND n = $2",
            pool.t("attempts")
        ),
        &[&&id.to_bytes()[..], &n],
    )?;
    Ok(())
}

pub(super) fn quarantine_delivery(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    id: DeliveryId,
) -> Result<()> {
    let id = &id.to_bytes()[..];
    let mut key = vec![b'd'];
    key.extend_from_slice(id);
    tx.execute(
        &format!(
            "INSERT INTO {} (key, value, reason)
             SELECT $1, record, 'damaged delivery record' FROM {} WHERE id = $2
             ON CONFLICT (key) DO NOTHING",
            pool.t("quarantine"),
            pool.t("deliveries")
        ),
        &[&key, &id],
    )?;
    tx.execute(
        &format!("DELETE FROM {} WHERE id = $1", pool.t("deliveries")),
        &[&id],
    )?;
    Ok(())
}

pub(super) fn quarantine_raw(tx: &mut WriterTx<'_>, pool: &Pool, d: &Damaged) -> Result<()> {
    // Keys are a table letter and the row's id (see
    // `corrupt`).
    let Some((&kind, id)) = d.key.split_first() else {
        return Ok(());
    };
    let table = match kind {
        b'd' => "deliveries",
        b's' => "subscriptions",
        b'e' => "events",
        _ => return Ok(()),
    };
    tx.execute(
        &format!(
            "INSERT INTO {} (key, value, reason)
             SELECT $1, record, $3 FROM {} WHERE id = $2
             ON CONFLICT (key) DO NOTHING",
            pool.t("quarantine"),
            pool.t(table)
        ),
        &[&d.key, &id, &d.reason],
    )?;
    if kind == b's' {
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE sub = $1",
                pool.t("subscription_events")
            ),
            &[&id],
        )?;
    }
    tx.execute(
        &format!("DELETE FROM {} WHERE id = $1", pool.t(table)),
        &[&id],
    )?;
    Ok(())
}

pub(super) fn put_key(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    key: &str,
    event: EventId,
    at: u64,
) -> Result<()> {
    // Sent, not waited for (nothing reads its count): a keyed publish's
    // round stays one round trip.
    tx.defer(
        &format!(
            "INSERT INTO {} (key, event, at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET event = EXCLUDED.event, at = EXCLUDED.at",
            pool.t("idempotency")
        ),
        vec![
            Box::new(key.as_bytes().to_vec()),
            Box::new(event.to_bytes().to_vec()),
            Box::new(ms(at)),
        ],
    )?;
    Ok(())
}

pub(super) fn remove_key(tx: &mut WriterTx<'_>, pool: &Pool, key: &str, at: u64) -> Result<()> {
    // Sent, not waited for, as `put_key`.
    tx.defer(
        &format!(
            "DELETE FROM {} WHERE key = $1 AND at = $2",
            pool.t("idempotency")
        ),
        vec![Box::new(key.as_bytes().to_vec()), Box::new(ms(at))],
    )?;
    Ok(())
}

pub(super) fn put_sequence(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    sub: SubscriptionId,
    last: u64,
) -> Result<()> {
    tx.execute(
        &format!(
            "UPDATE {} SET seq = GREATEST(seq, $2) WHERE id = $1",
            pool.t("subscriptions")
        ),
        &[&&sub.to_bytes()[..], &ms(last)],
    )?;
    Ok(())
}

pub(super) fn merge_health(
    tx: &mut WriterTx<'_>,
    pool: &Pool,
    deltas: &BTreeMap<SubscriptionId, Vec<&HealthDelta>>,
) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    // Merged under the rows' locks, taken in id order (as every round
    // takes them): instances add up, and two never wait for each other.
    let ids: Vec<Vec<u8>> = deltas.keys().map(|s| s.to_bytes().to_vec()).collect();
    let lock = format!(
        "SELECT sub, record FROM {} WHERE sub = ANY($1) ORDER BY sub FOR UPDATE",
        pool.t("health")
    );
    let mut rows = tx.query(&lock, &[&ids])?;
    if rows.len() < ids.len() {
        // The first report of some (or of two instances at once: the rows
        // are then locked after the other's insert).
        tx.execute(
            &format!(
                "INSERT INTO {} (sub, record)
                 SELECT s, $2 FROM unnest($1::bytea[]) AS s ORDER BY s
                 ON CONFLICT DO NOTHING",
                pool.t("health")
            ),
            &[&ids, &encode(&HealthRecord::default())],
        )?;
        rows = tx.query(&lock, &[&ids])?;
    }
    let mut base: BTreeMap<SubscriptionId, HealthRecord> = BTreeMap::new();
    for row in &rows {
        let id: Vec<u8> = row.try_get(0)?;
        let Some(sub) = SubscriptionId::from_slice(&id) else {
            continue;
        };
        let record = decode("h", &id, &row.try_get::<_, Vec<u8>>(1)?).unwrap_or_default();
        base.insert(sub, record);
    }
    let records: Vec<Vec<u8>> = deltas
        .iter()
        .map(|(sub, deltas)| {
            let merged = deltas
                .iter()
                .fold(base.remove(sub).unwrap_or_default(), |r, d| r.merge(d));
            encode(&merged)
        })
        .collect();
    // Sent, not waited for: it goes with the round's next statement.
    tx.defer(
        &format!(
            "UPDATE {h} SET record = v.record
             FROM unnest($1::bytea[], $2::bytea[]) AS v(sub, record)
             WHERE {h}.sub = v.sub",
            h = pool.t("health")
        ),
        vec![Box::new(ids), Box::new(records)],
    )?;
    Ok(())
}

pub(super) fn put_notice(tx: &mut WriterTx<'_>, pool: &Pool, n: &Notice) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT INTO {} (id, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            pool.t("notices")
        ),
        &[&&n.id.to_bytes()[..], &encode(n)],
    )?;
    Ok(())
}

pub(super) fn remove_notice(tx: &mut WriterTx<'_>, pool: &Pool, id: NoticeId) -> Result<()> {
    tx.execute(
        &format!("DELETE FROM {} WHERE id = $1", pool.t("notices")),
        &[&&id.to_bytes()[..]],
    )?;
    Ok(())
}
