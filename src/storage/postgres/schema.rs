//! The store's schema: its name (checked, as it is spliced into SQL), the
//! qualified names of its tables, and the migrations that create it. The
//! tables are listed in the module documentation of `postgres`.

use postgres::Client;

use super::rows::{decode, store_error};
use crate::error::{Error, Result};
use crate::storage::SubscriptionRecord;

/// The schema version this build migrates to.
const SCHEMA_VERSION: i32 = 4;

/// Checks a schema name: lowercase letters, digits and `_`, starting with a
/// letter or `_`, at most 63 bytes (it is spliced into SQL, so nothing
/// else is allowed).
pub(crate) fn validate_schema(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "postgres schema `{}` must be 1 to 63 lowercase letters, digits and `_`, not starting with a digit",
            crate::util::clip(name)
        )))
    }
}

/// A table of `schema`, qualified and quoted as every statement names it.
pub(super) fn table(schema: &str, name: &str) -> String {
    format!("\"{schema}\".{name}")
}

/// Creates the schema and applies missing migrations, once even when
/// several instances start at once (a transaction-scoped advisory lock
/// keyed by the schema name).
pub(super) fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    let s = format!("\"{schema}\"");
    // Already at this version: nothing to create, so opening needs no
    // CREATE privilege (an app may run with a role that only reads and
    // writes the tables).
    if let Ok(row) = client.query_one(
        &format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"),
        &[],
    ) && row.try_get::<_, i32>(0).ok() == Some(SCHEMA_VERSION)
    {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('hookbus migrate ' || $1))",
        &[&schema],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"),
            &[],
        )?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(store_error(format!(
            "the PostgreSQL schema `{schema}` is at version {current}; this hookbus knows up to {SCHEMA_VERSION}"
        )));
    }
    if current < 1 {
        tx.batch_execute(&format!(
            "CREATE TABLE {s}.subscriptions (
                 id bytea PRIMARY KEY,
                 record bytea NOT NULL,
                 seq bigint NOT NULL DEFAULT 0);
             CREATE TABLE {s}.subscription_events (
                 event text NOT NULL,
                 sub bytea NOT NULL,
                 PRIMARY KEY (event, sub));
             CREATE TABLE {s}.events (
                 id bytea PRIMARY KEY,
                 record bytea NOT NULL);
             CREATE TABLE {s}.deliveries (
                 id bytea PRIMARY KEY,
                 sub bytea NOT NULL,
                 event_id bytea NOT NULL,
                 state smallint NOT NULL,
                 at bigint NOT NULL,
                 record bytea NOT NULL,
                 claim bytea,
                 claimed_until bigint NOT NULL DEFAULT 0);
             CREATE INDEX deliveries_due ON {s}.deliveries (sub, at, id) WHERE state = 0;
             CREATE INDEX deliveries_state ON {s}.deliveries (state, at, id);
             CREATE INDEX deliveries_by_sub ON {s}.deliveries (sub, id);
             CREATE INDEX deliveries_event ON {s}.deliveries (event_id);
             CREATE TABLE {s}.attempts (
                 delivery bytea NOT NULL,
                 n integer NOT NULL,
                 record bytea NOT NULL,
                 PRIMARY KEY (delivery, n));
             CREATE TABLE {s}.idempotency (
                 key bytea PRIMARY KEY,
                 event bytea NOT NULL,
                 at bigint NOT NULL);
             CREATE INDEX idempotency_at ON {s}.idempotency (at, key);
             CREATE TABLE {s}.quarantine (
                 key bytea PRIMARY KEY,
                 value bytea NOT NULL,
                 reason text NOT NULL);
             INSERT INTO {s}.migrations (version) VALUES (1);"
        ))?;
    }
    if current < 2 {
        tx.batch_execute(&format!(
            "CREATE TABLE {s}.health (
                 sub bytea PRIMARY KEY,
                 record bytea NOT NULL);
             CREATE TABLE {s}.notices (
                 id bytea PRIMARY KEY,
                 record bytea NOT NULL);
             INSERT INTO {s}.migrations (version) VALUES (2);"
        ))?;
    }
    if current < 3 {
        // A subscription's flow shared by every instance: its rate
        // limit's tokens and a receiver's "slow down" pause.
        tx.batch_execute(&format!(
            "CREATE TABLE {s}.flow (
                 sub bytea PRIMARY KEY,
                 tokens float8 NOT NULL,
                 at bigint NOT NULL,
                 paused_until bigint NOT NULL DEFAULT 0);
             ALTER TABLE {s}.events
                 ADD COLUMN tenant text,
                 ADD COLUMN scoped boolean NOT NULL DEFAULT false;
             INSERT INTO {s}.migrations (version) VALUES (3);"
        ))?;
    }
    if current < 4 {
        // Subscriptions by tenant and by owner: columns beside the record
        // ('' for none; NULL: not filled in yet, see `fill_columns`),
        // each indexed with the id, so a tenant's page is an index range.
        tx.batch_execute(&format!(
            "ALTER TABLE {s}.subscriptions
                 ADD COLUMN tenant text,
                 ADD COLUMN owner text;
             CREATE INDEX subscriptions_tenant ON {s}.subscriptions (tenant, id);
             CREATE INDEX subscriptions_owner ON {s}.subscriptions (owner, id);
             INSERT INTO {s}.migrations (version) VALUES (4);"
        ))?;
        fill_columns(&mut tx, schema)?;
    }
    tx.commit()?;
    Ok(())
}

/// The `tenant` or `owner` column's value for a subscription's: `''` for
/// none (neither is ever empty).
pub(super) fn column_value(v: Option<&str>) -> &str {
    v.unwrap_or("")
}

/// Fills in the `tenant` and `owner` columns of subscriptions that lack
/// them: every one when the columns are added, and afterwards those an
/// instance of an older build created during a rolling deploy (it does not
/// know the columns). Reads use the index on them for NULL too, so a row
/// not filled in yet is still found. A record that does not decode is left
/// as it is (reading it reports it).
pub(super) fn fill_columns(client: &mut impl postgres::GenericClient, schema: &str) -> Result<()> {
    let t = table(schema, "subscriptions");
    let rows = client.query(
        &format!("SELECT id, record FROM {t} WHERE tenant IS NULL OR owner IS NULL"),
        &[],
    )?;
    for row in rows {
        let id: Vec<u8> = row.try_get(0)?;
        let Ok(rec) = decode::<SubscriptionRecord>("s", &id, &row.try_get::<_, Vec<u8>>(1)?) else {
            continue;
        };
        client.execute(
            &format!("UPDATE {t} SET tenant = $2, owner = $3 WHERE id = $1"),
            &[
                &id,
                &column_value(rec.tenant.as_deref()),
                &column_value(rec.owner.as_deref()),
            ],
        )?;
    }
    Ok(())
}
