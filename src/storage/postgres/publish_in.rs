//! `Bus::publish_in` and `Bus::publish_in_async`: an event and its
//! deliveries written inside the caller's own transaction, so they exist
//! exactly when what the caller wrote beside them does. Written once, over
//! the drivers' seam ([`Tx`]): the blocking client, tokio-postgres and sqlx
//! all write the same rows through this file.

use std::future::Future;

use super::coordination::KEY_LOCK_UNTIL_COMMIT;
use super::drivers::{Arg, Col, Tx, Value};
use super::listener::channel;
use super::rows::{decode, encode, encode_event, event_of, ms, store_error};
use super::schema::table;
use crate::error::Result;
use crate::event::ALL_EVENTS;
use crate::ids::{EventId, SubscriptionId, Timestamp};
use crate::record::Event;
use crate::storage::SubscriptionRecord;

/// What to publish, and how (the bus's settings).
#[derive(Debug)]
pub(crate) struct InTx<'a> {
    /// The bus's schema.
    pub schema: &'a str,
    pub event: &'a Event,
    pub tenant: Option<&'a str>,
    pub app_events_to_tenants: bool,
    /// The namespaced idempotency key and the window it holds for (ms).
    pub key: Option<(&'a str, u64)>,
}

/// Writes the event and its deliveries inside the caller's transaction
/// `tx` (the fan-out rule of the engine: `SubscriptionRecord::takes`).
/// Visible to every instance's senders once `tx` commits (they poll, and
/// hear a notification); nothing if it rolls back. With a key, the engine's
/// protocol: the key's lock (the one the engines take, held here until `tx`
/// ends), then `message::key_holder` decides and `message::key_binds`
/// checks a held key's event; the key is recorded with the event.
/// `reserve` numbers the deliveries outside `tx`.
pub(crate) async fn publish_in<T, F>(
    tx: &mut T,
    p: InTx<'_>,
    reserve: impl FnOnce(Vec<SubscriptionId>) -> F,
) -> Result<EventId>
where
    T: Tx + ?Sized,
    F: Future<Output = Result<Vec<u64>>>,
{
    let t = |name: &str| table(p.schema, name);
    let event = p.event;
    let now = Timestamp::now().as_millis();
    if let Some((key, window_ms)) = p.key {
        // Serialised with the engines of every instance, which take the
        // same lock before they read the key, and with other transactions.
        let lock = super::coordination::key_lock(p.schema);
        tx.run(
            KEY_LOCK_UNTIL_COMMIT,
            &[Arg::Text(&lock), Arg::Bytes(key.as_bytes())],
        )
        .await?;
        let held = tx
            .rows(
                &format!("SELECT event, at FROM {} WHERE key = $1", t("idempotency")),
                &[Arg::Bytes(key.as_bytes())],
                &[Col::Bytes, Col::Int],
            )
            .await?;
        let held = match held.into_iter().next() {
            Some(row) => {
                let mut row = row.into_iter();
                let id = bytes(row.next())?;
                let id = EventId::from_slice(&id)
                    .ok_or_else(|| store_error("malformed id in column event"))?;
                Some((id, u64::try_from(int(row.next())?).unwrap_or(0)))
            }
            None => None,
        };
        if let Some(holder) = crate::message::key_holder(held, now, window_ms) {
            // The key binds the event (one purged cannot be compared: the
            // key holds).
            if let Some(stored) = stored_event(tx, p.schema, holder).await? {
                crate::message::key_binds(key, holder, &stored, event, p.tenant)?;
            }
            return Ok(holder);
        }
        tx.run(
            &format!(
                "INSERT INTO {} (key, event, at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET event = EXCLUDED.event, at = EXCLUDED.at",
                t("idempotency")
            ),
            &[
                Arg::Bytes(key.as_bytes()),
                Arg::Bytes(&event.id.to_bytes()),
                Arg::Int(ms(now)),
            ],
        )
        .await?;
    }
    let rows = tx
        .rows(
            &format!(
                "SELECT DISTINCT s.id, s.record FROM {} e JOIN {} s ON s.id = e.sub
                 WHERE e.event = $1 OR e.event = $2 ORDER BY s.id",
                t("subscription_events"),
                t("subscriptions")
            ),
            &[Arg::Text(&event.name), Arg::Text(ALL_EVENTS)],
            &[Col::Bytes, Col::Bytes],
        )
        .await?;
    let mut subs = Vec::new();
    for row in rows {
        let mut row = row.into_iter();
        let (id, record) = (bytes(row.next())?, bytes(row.next())?);
        let rec: SubscriptionRecord = decode("s", &id, &record)?;
        if rec.takes(&event.name, p.tenant, p.app_events_to_tenants) {
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
    let numbers = reserve(subs.clone()).await?;
    // The caller's commit is synchronous whatever its session says: once
    // it returns, instances may send these deliveries, and the numbers
    // reserved above (an asynchronous commit, `Conn::coordinating`) are
    // durable with it (the WAL is flushed in order).
    tx.run("SELECT set_config('synchronous_commit', 'on', true)", &[])
        .await?;
    tx.run(
        &format!(
            "INSERT INTO {} (id, record, tenant, scoped) VALUES ($1, $2, $3, true)
             ON CONFLICT DO NOTHING",
            t("events")
        ),
        &[
            Arg::Bytes(&event.id.to_bytes()),
            Arg::Bytes(&encode_event(event)),
            Arg::OptText(event.tenant.as_deref()),
        ],
    )
    .await?;
    let at = Timestamp::from_millis(now);
    let insert = format!(
        "INSERT INTO {} (id, sub, event_id, state, at, record) VALUES ($1, $2, $3, 0, $4, $5)",
        t("deliveries")
    );
    for (i, sub) in subs.into_iter().enumerate() {
        let seq = numbers.get(i).copied().unwrap_or(0);
        let d = crate::delivery::created(event.id, &event.name, event.created_at, sub, seq, at);
        tx.run(
            &insert,
            &[
                Arg::Bytes(&d.id.to_bytes()),
                Arg::Bytes(&sub.to_bytes()),
                Arg::Bytes(&event.id.to_bytes()),
                Arg::Int(ms(now)),
                Arg::Bytes(&encode(&d)),
            ],
        )
        .await?;
    }
    // Instances listening hear of it when the caller commits.
    let channel = channel(p.schema);
    tx.run("SELECT pg_notify($1, '')", &[Arg::Text(&channel)])
        .await?;
    Ok(event.id)
}

/// The stored event `id`, if retention has not purged it.
async fn stored_event<T: Tx + ?Sized>(
    tx: &mut T,
    schema: &str,
    id: EventId,
) -> Result<Option<Event>> {
    let rows = tx
        .rows(
            &format!(
                "SELECT record, tenant, scoped FROM {} WHERE id = $1",
                table(schema, "events")
            ),
            &[Arg::Bytes(&id.to_bytes())],
            &[Col::Bytes, Col::OptText, Col::Bool],
        )
        .await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let mut row = row.into_iter();
    let record = bytes(row.next())?;
    let tenant = match row.next() {
        Some(Value::OptText(t)) => t,
        other => return Err(unexpected(other)),
    };
    let scoped = match row.next() {
        Some(Value::Bool(b)) => b,
        other => return Err(unexpected(other)),
    };
    let mut held = event_of(&id.to_bytes(), &record, tenant, scoped)?;
    // Written by a build that did not keep the tenant.
    held.scope_unknown |= !scoped;
    Ok(Some(held))
}

fn bytes(v: Option<Value>) -> Result<Vec<u8>> {
    match v {
        Some(Value::Bytes(b)) => Ok(b),
        other => Err(unexpected(other)),
    }
}

fn int(v: Option<Value>) -> Result<i64> {
    match v {
        Some(Value::Int(i)) => Ok(i),
        other => Err(unexpected(other)),
    }
}

fn unexpected(v: Option<Value>) -> crate::error::Error {
    store_error(format!(
        "a transactional publish read an unexpected column: {v:?}"
    ))
}
