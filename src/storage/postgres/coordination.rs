//! What the instances sharing one store coordinate through: claims on due
//! deliveries (and the [`Claimed`] cache of what came with them), a
//! subscription's flow in the `flow` table (rate-limit tokens, a receiver's
//! pause), sequence numbers reserved for `publish_in`, and the advisory
//! locks on subscriptions and idempotency keys. Everything here is timed
//! by the database's clock ([`DB_NOW`]), which every instance shares.
//!
//! [`PgCoordinator`] is the store's `Coordinator`; the `Writer` impl and
//! `publish_in` call the lock and sequence functions; nothing here knows
//! those types.

use std::sync::{Arc, Mutex};

use postgres::Row;

use super::connection::{Pool, Prepared};
use super::pipeline::WriterConn;
use super::rows::{delivery_of, entry_of, event_of, id_of, ms, unms};
use crate::delivery::Delivery;
use crate::error::Result;
use crate::ids::{DeliveryId, EventId, SubscriptionId};
use crate::policy::RateLimit;
use crate::record::Event;
use crate::storage::{IndexEntry, Limited};

/// The engine's `Coordinator` on PostgreSQL: claims (which fill the
/// engine reader's claim cache), tokens and pauses in the `flow` table.
pub(crate) struct PgCoordinator {
    pool: Arc<Pool>,
    claimed: Arc<Mutex<Claimed>>,
}

impl PgCoordinator {
    pub(super) fn new(pool: Arc<Pool>, claimed: Arc<Mutex<Claimed>>) -> PgCoordinator {
        PgCoordinator { pool, claimed }
    }
}

impl crate::storage::Coordinator for PgCoordinator {
    /// One subscription's claim is the claim of several with one.
    fn claim(&self, sub: SubscriptionId, n: usize, due_by: u64) -> Result<Vec<IndexEntry>> {
        claim_many(&self.pool, &self.claimed, &[(sub, n)], due_by)
    }

    fn claim_many(
        &self,
        wants: &[(SubscriptionId, usize)],
        due_by: u64,
    ) -> Result<Vec<IndexEntry>> {
        claim_many(&self.pool, &self.claimed, wants, due_by)
    }

    fn claim_one(&self, id: DeliveryId) -> Result<Option<IndexEntry>> {
        claim_one(&self.pool, id)
    }

    fn take_tokens(
        &self,
        sub: SubscriptionId,
        want: usize,
        limit: RateLimit,
    ) -> Result<(usize, u64)> {
        take_tokens(&self.pool, sub, want, limit)
    }

    fn return_tokens(&self, sub: SubscriptionId, n: usize, limit: RateLimit) -> Result<()> {
        return_tokens(&self.pool, sub, n, limit)
    }

    fn pause(&self, sub: SubscriptionId, for_ms: u64) -> Result<()> {
        pause(&self.pool, sub, for_ms)
    }

    fn claim_limited(
        &self,
        sub: SubscriptionId,
        n: usize,
        due_by: u64,
        limit: RateLimit,
    ) -> Result<Limited> {
        claim_limited(&self.pool, &self.claimed, sub, n, due_by, limit)
    }

    fn release(&self, ids: &[DeliveryId]) -> Result<()> {
        release(&self.pool, &self.claimed, ids)
    }
}

/// Reserves `X-Webhook-Sequence` numbers for `publish_in`, at once and for
/// every instance, outside the caller's transaction.
#[derive(Clone)]
pub(crate) struct Sequencer {
    pool: Arc<Pool>,
}

impl Sequencer {
    pub(super) fn new(pool: Arc<Pool>) -> Sequencer {
        Sequencer { pool }
    }

    /// The next sequence number of each subscription in `subs` (0 for one
    /// that no longer exists).
    pub(crate) fn reserve(&self, subs: &[SubscriptionId]) -> Result<Vec<u64>> {
        reserve_sequences(&self.pool, subs)
    }
}

/// The database's clock in ms, for claims: one clock for every instance.
pub(super) const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The name of a schema's subscription lock (see
/// `Writer::lock_subscriptions`), hashed by the server into its key.
fn subscription_lock(schema: &str) -> String {
    format!("hookbus.subscriptions:{schema}")
}

/// The first half of an idempotency key's lock (the key's hash is the
/// second): the same in the engine (a session-level lock) and in
/// `publish_in` (a transaction-level one), so the two serialise.
pub(super) fn key_lock(schema: &str) -> String {
    format!("hookbus.keys:{schema}")
}

/// Takes the subscription lock of `schema` on `conn`, waiting for it (a
/// session-level lock: held until [`unlock_all`] or the connection ends).
pub(super) fn lock_subscriptions(conn: &mut WriterConn, schema: &str) -> Result<()> {
    conn.execute(
        "SELECT pg_advisory_lock(hashtext($1))",
        &[&subscription_lock(schema)],
    )?;
    Ok(())
}

/// Takes the lock of idempotency key `key` on `conn` if no one holds it,
/// without waiting (a session-level lock): whether it was taken.
pub(super) fn try_lock_key(conn: &mut WriterConn, schema: &str, key: &str) -> Result<bool> {
    let row = conn.query_one(
        "SELECT pg_try_advisory_lock(hashtext($1), hashtext(encode($2, 'hex')))",
        &[&key_lock(schema), &key.as_bytes()],
    )?;
    Ok(row.try_get(0)?)
}

/// Releases every session-level advisory lock `conn` holds.
pub(super) fn unlock_all(conn: &mut WriterConn) -> Result<()> {
    conn.execute("SELECT pg_advisory_unlock_all()", &[])?;
    Ok(())
}

/// Takes the lock of an idempotency key until the transaction ends,
/// waiting for it (the one the engines take with [`try_lock_key`]):
/// arguments [`key_lock`] and the key's bytes.
pub(super) const KEY_LOCK_UNTIL_COMMIT: &str =
    "SELECT pg_advisory_xact_lock(hashtext($1), hashtext(encode($2, 'hex')))";

/// Records that came with a claim; each is handed out once.
#[derive(Debug, Default)]
pub(super) struct Claimed {
    deliveries: std::collections::HashMap<DeliveryId, Delivery>,
    events: std::collections::HashMap<EventId, Event>,
    /// Claimed deliveries handed out (to be sent), kept for the one read
    /// of their outcome: while this instance's claim stands no other
    /// instance changes them, and this instance's own writes drop them
    /// here (`PgWriter::forget`). One older than the claim's lease is not
    /// used (the claim may have passed to another instance). At most
    /// [`Claimed::MAX_SENT`].
    sent: std::collections::HashMap<DeliveryId, (Delivery, std::time::Instant)>,
}

impl Claimed {
    const MAX_SENT: usize = 65_536;
    /// At most this many claimed records wait to be handed out.
    const MAX_KEPT: usize = 16_384;

    /// The record of delivery `id` if it came with a claim (it is then
    /// kept for the one read of its outcome), or was handed out so less
    /// than `lease_ms` ago.
    pub(super) fn delivery(&mut self, id: DeliveryId, lease_ms: u64) -> Option<Delivery> {
        if let Some(d) = self.deliveries.remove(&id) {
            if self.sent.len() >= Claimed::MAX_SENT {
                self.sent.clear();
            }
            self.sent.insert(id, (d.clone(), std::time::Instant::now()));
            return Some(d);
        }
        if let Some((d, at)) = self.sent.remove(&id)
            && at.elapsed().as_millis() < u128::from(lease_ms)
        {
            return Some(d);
        }
        None
    }

    /// The event `id` if it came with a claim (once).
    pub(super) fn event(&mut self, id: EventId) -> Option<Event> {
        self.events.remove(&id)
    }

    /// Drops what is kept of delivery `id`.
    pub(super) fn forget(&mut self, id: DeliveryId) {
        self.deliveries.remove(&id);
        self.sent.remove(&id);
    }

    /// Keeps the records of deliveries claimed as they were stored
    /// (`PgWriter::claim_new`) and of their events, within the same bound
    /// as a claim's.
    pub(super) fn keep_new(&mut self, deliveries: Vec<Delivery>, events: Vec<Event>) {
        if self.deliveries.len() + deliveries.len() > Claimed::MAX_KEPT
            || self.events.len() + events.len() > Claimed::MAX_KEPT
        {
            self.deliveries.clear();
            self.events.clear();
        }
        self.deliveries
            .extend(deliveries.into_iter().map(|d| (d.id, d)));
        self.events.extend(events.into_iter().map(|e| (e.id, e)));
    }
}

/// Keeps what a claim returned (the previous claim's leftovers go) and
/// fetches the events of the claimed deliveries in one query.
fn keep_claimed(pool: &Pool, claimed: &Mutex<Claimed>, rows: &[Row]) -> Result<()> {
    let mut deliveries = std::collections::HashMap::new();
    let mut events: Vec<Vec<u8>> = Vec::new();
    for row in rows {
        let d = delivery_of(row)?;
        events.push(d.event_id.to_bytes().to_vec());
        deliveries.insert(d.id, d);
    }
    events.sort_unstable();
    events.dedup();
    let mut by_id = std::collections::HashMap::new();
    if !events.is_empty() {
        for row in pool.query(
            &format!(
                "SELECT id, record, tenant, scoped FROM {} WHERE id = ANY($1)",
                pool.t("events")
            ),
            &[&events],
        )? {
            let id: Vec<u8> = row.try_get(0)?;
            // A damaged one is read (and reported) the normal way.
            if let Ok(e) = event_of(
                &id,
                &row.try_get::<_, Vec<u8>>(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ) {
                by_id.insert(e.id, e);
            }
        }
    }
    // Added to what earlier claims of the pass brought and is not handed
    // out yet (a pass claims plain subscriptions at once, then limited
    // ones one by one), within a bound.
    let mut claimed = claimed.lock().unwrap_or_else(|e| e.into_inner());
    // (Events are bounded too: one fetched here may be read from the
    // payload cache instead, and so never taken out.)
    if claimed.deliveries.len() + deliveries.len() > Claimed::MAX_KEPT
        || claimed.events.len() + by_id.len() > Claimed::MAX_KEPT
    {
        claimed.deliveries.clear();
        claimed.events.clear();
    }
    claimed.deliveries.extend(deliveries);
    claimed.events.extend(by_id);
    Ok(())
}

/// `Coordinator::claim_many` (and `claim`, with one): claims up to `n`
/// pending deliveries due by `due_by` of each `(sub, n)` of `wants` that
/// nobody holds and no receiver's pause holds back, in one statement (a
/// lateral claim per subscription, timed by the database's clock); the
/// events of what came are kept in `claimed`, read with one more query.
fn claim_many(
    pool: &Pool,
    claimed: &Mutex<Claimed>,
    wants: &[(SubscriptionId, usize)],
    due_by: u64,
) -> Result<Vec<IndexEntry>> {
    let subs: Vec<Vec<u8>> = wants.iter().map(|(s, _)| s.to_bytes().to_vec()).collect();
    let ns: Vec<i64> = wants
        .iter()
        .map(|&(_, n)| i64::try_from(n).unwrap_or(i64::MAX))
        .collect();
    let rows = pool.query(
        &format!(
            "WITH clock AS (SELECT {DB_NOW} AS t)
             UPDATE {d} SET claim = $1, claimed_until = (SELECT t FROM clock) + $2
             WHERE id IN (
                 SELECT c.id FROM unnest($3::bytea[], $4::int8[]) AS w(sub, n)
                 CROSS JOIN LATERAL (
                     SELECT id FROM {d}
                     WHERE sub = w.sub AND state = 0 AND at <= $5
                       AND claimed_until < (SELECT t FROM clock)
                       AND NOT EXISTS (SELECT 1 FROM {f}
                           WHERE {f}.sub = w.sub AND paused_until > (SELECT t FROM clock))
                     ORDER BY at, id LIMIT w.n
                     FOR UPDATE SKIP LOCKED) c)
             RETURNING id, sub, at, record",
            d = pool.t("deliveries"),
            f = pool.t("flow")
        ),
        &[
            &&pool.token[..],
            &ms(pool.lease_ms),
            &subs,
            &ns,
            &ms(due_by),
        ],
    )?;
    let mut out: Vec<IndexEntry> = rows.iter().map(entry_of).collect::<Result<_>>()?;
    out.sort_by_key(|e| (e.subscription, e.at, e.delivery));
    if let Err(e) = keep_claimed(pool, claimed, &rows) {
        tracing::debug!(error = %e, "claimed records not kept; they are read one by one");
    }
    Ok(out)
}

/// `Coordinator::claim_limited` in one statement: the subscription's
/// `flow` row is locked, its tokens refilled by the time passed, up to
/// that many due deliveries claimed, and exactly their tokens spent (a
/// receiver's pause claims none). The statement's last row is the flow's
/// state (`avail`, `paused_until`, `t`, `n` granted); the others are the
/// claimed deliveries. A subscription without a `flow` row yet gets one
/// (a full bucket) and is asked again.
fn claim_limited(
    pool: &Pool,
    claimed: &Mutex<Claimed>,
    sub: SubscriptionId,
    n: usize,
    due_by: u64,
    limit: RateLimit,
) -> Result<Limited> {
    let (d, f) = (pool.t("deliveries"), pool.t("flow"));
    let id = &sub.to_bytes()[..];
    let burst = f64::from(limit.burst.max(1));
    let rate = f64::from(limit.per_second.max(1));
    let sql = format!(
        "WITH clock AS (SELECT {DB_NOW} AS t),
         fl AS (SELECT tokens, at, paused_until FROM {f} WHERE sub = $3 FOR UPDATE),
         room AS (
             SELECT greatest(clock.t, fl.at) AS t, fl.paused_until,
                    least($6::float8, fl.tokens
                        + greatest(clock.t - fl.at, 0)::float8 * $7::float8 / 1000.0) AS avail
             FROM fl, clock),
         allowed AS (
             SELECT CASE WHEN paused_until > t THEN 0
                         ELSE least($5::int8, floor(avail)::int8) END AS n
             FROM room),
         claimed AS (
             UPDATE {d} SET claim = $1, claimed_until = (SELECT t FROM clock) + $2
             WHERE id IN (
                 SELECT id FROM {d}
                 WHERE sub = $3 AND state = 0 AND at <= $4
                   AND claimed_until < (SELECT t FROM clock)
                 ORDER BY at, id
                 LIMIT coalesce((SELECT n FROM allowed), 0)
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, sub, at, record),
         spent AS (
             UPDATE {f} SET tokens = room.avail - (SELECT count(*) FROM claimed), at = room.t
             FROM room WHERE {f}.sub = $3 AND room.paused_until <= room.t
             RETURNING 1)
         SELECT id, sub, at, record, NULL::float8 AS avail, NULL::int8 AS paused_until,
                NULL::int8 AS t, NULL::int8 AS n
         FROM claimed
         UNION ALL
         SELECT NULL, NULL, NULL, NULL, room.avail, room.paused_until, room.t,
                (SELECT n FROM allowed)
         FROM room"
    );
    let want = i64::try_from(n).unwrap_or(i64::MAX);
    for _ in 0..2 {
        let rows = pool.query(
            &sql,
            &[
                &&pool.token[..],
                &ms(pool.lease_ms),
                &id,
                &ms(due_by),
                &want,
                &burst,
                &rate,
            ],
        )?;
        let (state, claims): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| {
            r.try_get::<_, Option<f64>>("avail")
                .ok()
                .flatten()
                .is_some()
        });
        let Some(state) = state.first() else {
            // No flow row yet: a full bucket, then ask again.
            pool.query(
                &format!(
                    "INSERT INTO {f} (sub, tokens, at) VALUES ($1, $2, {DB_NOW})
                     ON CONFLICT (sub) DO NOTHING"
                ),
                &[&id, &burst],
            )?;
            continue;
        };
        let granted: i64 = state.try_get("n")?;
        if granted == 0 {
            let (avail, paused, t): (f64, i64, i64) = (
                state.try_get("avail")?,
                state.try_get("paused_until")?,
                state.try_get("t")?,
            );
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let wait = if paused > t {
                unms(paused - t)
            } else {
                (((1.0 - avail) * 1000.0 / rate).ceil().max(1.0)) as u64
            };
            return Ok(Limited::Wait(wait));
        }
        let mut out: Vec<IndexEntry> = claims.iter().map(entry_of).collect::<Result<_>>()?;
        out.sort_by_key(|e| (e.at, e.delivery));
        if let Err(e) = keep_claimed(pool, claimed, &claims) {
            tracing::debug!(error = %e, "claimed records not kept; they are read one by one");
        }
        return Ok(Limited::Claimed(out));
    }
    Err(super::rows::store_error(format!(
        "no flow row for subscription {sub} after creating it"
    )))
}

/// `Coordinator::release`: this instance's claims on `ids` (pending, not
/// sent) end now; what is kept of them goes.
fn release(pool: &Pool, claimed: &Mutex<Claimed>, ids: &[DeliveryId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    {
        let mut claimed = claimed.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            claimed.forget(*id);
        }
    }
    let ids: Vec<Vec<u8>> = ids.iter().map(|d| d.to_bytes().to_vec()).collect();
    pool.query(
        &format!(
            "UPDATE {} SET claim = NULL, claimed_until = 0
             WHERE id = ANY($1) AND claim = $2 AND state = 0",
            pool.t("deliveries")
        ),
        &[&ids, &&pool.token[..]],
    )?;
    Ok(())
}

/// `Coordinator::claim_one`: claims delivery `id` if it is pending and nobody
/// else holds it.
fn claim_one(pool: &Pool, id: DeliveryId) -> Result<Option<IndexEntry>> {
    // Claims are timed by the database's clock, which every instance
    // shares, not by the instances' own.
    let rows = pool.query(
        &format!(
            "UPDATE {d} SET claim = $1, claimed_until = {DB_NOW} + $2
             WHERE id = $3 AND state = 0 AND (claimed_until < {DB_NOW} OR claim = $1)
             AND NOT EXISTS (SELECT 1 FROM {f} WHERE {f}.sub = {d}.sub AND paused_until > {DB_NOW})
             RETURNING id, sub, at",
            d = pool.t("deliveries"),
            f = pool.t("flow")
        ),
        &[&&pool.token[..], &ms(pool.lease_ms), &&id.to_bytes()[..]],
    )?;
    rows.first().map(entry_of).transpose()
}

/// `Coordinator::take_tokens`: takes up to `want` of `sub`'s shared request
/// tokens.
fn take_tokens(
    pool: &Pool,
    sub: SubscriptionId,
    want: usize,
    limit: RateLimit,
) -> Result<(usize, u64)> {
    let f = pool.t("flow");
    let id = &sub.to_bytes()[..];
    let burst = f64::from(limit.burst.max(1));
    let rate = f64::from(limit.per_second.max(1));
    pool.with(|c| {
        let mut tx = c.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO {f} (sub, tokens, at) VALUES ($1, $2, {DB_NOW})
                 ON CONFLICT (sub) DO NOTHING"
            ),
            &[&id, &burst],
        )?;
        let row = tx.query_one(
            &format!(
                "SELECT tokens, at, paused_until, {DB_NOW} FROM {f} WHERE sub = $1 FOR UPDATE"
            ),
            &[&id],
        )?;
        let (tokens, at, paused, now): (f64, i64, i64, i64) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        if paused > now {
            tx.commit()?;
            return Ok((0, unms(paused - now)));
        }
        #[allow(clippy::cast_precision_loss)]
        let avail = (tokens + (now - at).max(0) as f64 * rate / 1000.0).min(burst);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let granted = (avail.floor().max(0.0) as usize).min(want);
        #[allow(clippy::cast_precision_loss)]
        let left = avail - granted as f64;
        tx.execute(
            &format!("UPDATE {f} SET tokens = $2, at = $3 WHERE sub = $1"),
            &[&id, &left, &now],
        )?;
        tx.commit()?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let wait = if granted == 0 {
            (((1.0 - left) * 1000.0 / rate).ceil().max(1.0)) as u64
        } else {
            0
        };
        Ok((granted, wait))
    })
}

/// `Coordinator::return_tokens`: gives back `n` tokens of `sub` taken but not
/// used.
fn return_tokens(pool: &Pool, sub: SubscriptionId, n: usize, limit: RateLimit) -> Result<()> {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    pool.query(
        &format!(
            "UPDATE {} SET tokens = least($2, tokens + $3) WHERE sub = $1",
            pool.t("flow")
        ),
        &[&&sub.to_bytes()[..], &f64::from(limit.burst.max(1)), &n],
    )?;
    Ok(())
}

/// `Coordinator::pause`: pauses `sub` for every instance for `for_ms`.
fn pause(pool: &Pool, sub: SubscriptionId, for_ms: u64) -> Result<()> {
    let sql = format!(
        "INSERT INTO {f} (sub, tokens, at, paused_until) VALUES ($1, 0, {DB_NOW}, {DB_NOW} + $2)
         ON CONFLICT (sub) DO UPDATE
         SET paused_until = greatest({f}.paused_until, EXCLUDED.paused_until)",
        f = pool.t("flow")
    );
    pool.with(|c| {
        // A receiver's `Retry-After` is kept through a crash of the server
        // (the pool's other writes need not be: `Conn::coordinating`).
        let mut tx = c.transaction()?;
        tx.batch_execute("SET LOCAL synchronous_commit TO on")?;
        tx.execute(&sql, &[&&sub.to_bytes()[..], &ms(for_ms)])?;
        tx.commit()
    })
}

/// `Sequencer::reserve`: the next sequence number of each of
/// `subs`, taken at once for every instance.
fn reserve_sequences(pool: &Pool, subs: &[SubscriptionId]) -> Result<Vec<u64>> {
    let ids: Vec<Vec<u8>> = subs.iter().map(|s| s.to_bytes().to_vec()).collect();
    // Rows locked in id order, as the writer's numbering does.
    let rows = pool.query(
        &format!(
            "WITH locked AS (
                 SELECT id FROM {s} WHERE id = ANY($1) ORDER BY id FOR UPDATE)
             UPDATE {s} SET seq = {s}.seq + 1 FROM locked
             WHERE {s}.id = locked.id RETURNING {s}.id, {s}.seq",
            s = pool.t("subscriptions")
        ),
        &[&ids],
    )?;
    let mut got = std::collections::HashMap::new();
    for row in rows {
        got.insert(
            id_of(&row, "id", SubscriptionId::from_slice)?,
            unms(row.try_get("seq")?),
        );
    }
    // A subscription deleted meanwhile gets no number (0: not sent).
    Ok(subs
        .iter()
        .map(|s| got.get(s).copied().unwrap_or(0))
        .collect())
}
