//! `Bus::publish_in`: an event and its deliveries written inside the
//! caller's own transaction, so they exist exactly when what the caller
//! wrote beside them does.

use super::coordination::lock_key_until_commit;
use super::listener::channel;
use super::rows::{decode, encode, encode_event, event_of, id_of, ms};
use super::schema::table;
use crate::error::Result;
use crate::event::ALL_EVENTS;
use crate::ids::{EventId, SubscriptionId, Timestamp};
use crate::record::Event;
use crate::storage::SubscriptionRecord;

/// Writes `event` and its deliveries inside the caller's transaction `tx`
/// (the fan-out rule of the engine: active subscriptions naming the event
/// or `*`, of `tenant` or app-wide). Visible to every instance's senders
/// once `tx` commits (they poll); nothing if it rolls back. With `key`, an
/// idempotency key held within `window_ms` returns its holder instead and
/// stores nothing; the key's advisory lock (the one the engines take)
/// serialises concurrent transactions and instances.
pub(crate) fn publish_in(
    tx: &mut postgres::Transaction<'_>,
    schema: &str,
    event: &Event,
    tenant: Option<&str>,
    app_events_to_tenants: bool,
    key: Option<(&str, u64)>,
    reserve_sequences: &dyn Fn(&[SubscriptionId]) -> Result<Vec<u64>>,
) -> Result<EventId> {
    let t = |name: &str| table(schema, name);
    let now = Timestamp::now().as_millis();
    if let Some((key, window_ms)) = key {
        // Serialised with the engines of every instance, which take the
        // same lock before they read the key (held until this transaction
        // ends).
        lock_key_until_commit(tx, schema, key)?;
        // Take the key, or find who holds it (waits for a concurrent
        // transaction that took it first).
        let took = tx.query(
            &format!(
                "INSERT INTO {} (key, event, at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET event = EXCLUDED.event, at = EXCLUDED.at
                 WHERE {}.at < $4
                 RETURNING event",
                t("idempotency"),
                t("idempotency")
            ),
            &[
                &key.as_bytes(),
                &&event.id.to_bytes()[..],
                &ms(now),
                &ms(now.saturating_sub(window_ms)),
            ],
        )?;
        if took.is_empty() {
            let held = tx.query_one(
                &format!("SELECT event FROM {} WHERE key = $1", t("idempotency")),
                &[&key.as_bytes()],
            )?;
            let holder = id_of(&held, "event", EventId::from_slice)?;
            // The key binds the event, as in the engine (one purged cannot
            // be compared: the key holds).
            let stored = tx.query(
                &format!(
                    "SELECT record, tenant, scoped FROM {} WHERE id = $1",
                    t("events")
                ),
                &[&&holder.to_bytes()[..]],
            )?;
            if let Some(row) = stored.first() {
                let scoped: bool = row.try_get(2)?;
                let mut held = event_of(
                    &holder.to_bytes(),
                    &row.try_get::<_, Vec<u8>>(0)?,
                    row.try_get(1)?,
                    scoped,
                )?;
                // Written by a build that did not keep the tenant.
                held.scope_unknown |= !scoped;
                crate::message::key_binds(key, holder, &held, event, tenant)?;
            }
            return Ok(holder);
        }
    }
    let rows = tx.query(
        &format!(
            "SELECT DISTINCT s.id, s.record FROM {} e JOIN {} s ON s.id = e.sub
             WHERE e.event = $1 OR e.event = $2 ORDER BY s.id",
            t("subscription_events"),
            t("subscriptions")
        ),
        &[&event.name, &ALL_EVENTS],
    )?;
    let mut subs = Vec::new();
    for row in rows {
        let id: Vec<u8> = row.try_get(0)?;
        let rec: SubscriptionRecord = decode("s", &id, &row.try_get::<_, Vec<u8>>(1)?)?;
        if rec.takes(&event.name, tenant, app_events_to_tenants) {
            subs.push(rec.id);
        }
    }
    if subs.is_empty() {
        return Ok(event.id);
    }
    // Numbered outside the caller's transaction: holding the
    // subscriptions' rows until it commits would stall every instance that
    // publishes to them (and deadlock an app that waits on the bus inside
    // it). A rollback leaves a gap in the numbers, as a failed round does.
    let numbers = reserve_sequences(&subs)?;
    let seqs: std::collections::HashMap<SubscriptionId, u64> =
        subs.iter().copied().zip(numbers).collect();
    tx.execute(
        &format!(
            "INSERT INTO {} (id, record, tenant, scoped) VALUES ($1, $2, $3, true)
             ON CONFLICT DO NOTHING",
            t("events")
        ),
        &[
            &&event.id.to_bytes()[..],
            &encode_event(event),
            &event.tenant,
        ],
    )?;
    let at = Timestamp::from_millis(now);
    for sub in subs {
        let seq = seqs.get(&sub).copied().unwrap_or(0);
        let d = crate::delivery::created(event.id, &event.name, event.created_at, sub, seq, at);
        tx.execute(
            &format!(
                "INSERT INTO {} (id, sub, event_id, state, at, record) VALUES ($1, $2, $3, 0, $4, $5)",
                t("deliveries")
            ),
            &[
                &&d.id.to_bytes()[..],
                &&sub.to_bytes()[..],
                &&event.id.to_bytes()[..],
                &ms(now),
                &encode(&d),
            ],
        )?;
    }
    // Instances listening hear of it when the caller commits.
    tx.execute("SELECT pg_notify($1, '')", &[&channel(schema)])?;
    Ok(event.id)
}
