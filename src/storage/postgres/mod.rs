//! The shared backend of the storage seam: PostgreSQL (feature `postgres`),
//! for apps with several instances on one database.
//!
//! # Schema
//!
//! Everything lives in one schema (default `hookbus`; one per app or test),
//! created and migrated on open under a transaction-scoped advisory lock,
//! so instances that start at once migrate once. Records are the same
//! codec bytes as in sled ([`crate::codec`]); the columns beside them are
//! what queries sort and filter on.
//!
//! | table | rows |
//! | --- | --- |
//! | `migrations` | applied schema versions |
//! | `subscriptions` | id, record, `seq` (the last sequence number given), `tenant` and `owner` (`''` for none; indexed with the id: a tenant's or owner's subscriptions, since schema 4) |
//! | `subscription_events` | (event name or `*`, subscription id): the fan-out index |
//! | `events` | id, record |
//! | `deliveries` | id, subscription, event, state, `at` (due if pending, else finished, ms), record, `claim`, `claimed_until` |
//! | `attempts` | (delivery, number), record |
//! | `idempotency` | key, event, `at` |
//! | `quarantine` | key, raw bytes, reason |
//!
//! # Several instances
//!
//! Every instance runs its own dispatcher and senders. Due deliveries are
//! claimed ([`Reader::claim`](crate::storage::Reader::claim)): `UPDATE … WHERE id IN (SELECT … FOR UPDATE
//! SKIP LOCKED LIMIT n)` sets the instance's token and a lease, and commits
//! at once; no transaction is open while a request is. A result is written
//! only if the delivery is not claimed by another instance whose lease is
//! running, so a stale result (a stalled or partitioned instance whose
//! lease ran out and whose delivery was claimed again) does not overwrite
//! newer state. Instances see each other's new deliveries by polling
//! ([`Reader::pending_subscriptions`](crate::storage::Reader::pending_subscriptions))
//! every second.
//!
//! Counters are counted (`stats`), and an event's references are its
//! deliveries (an event row is deleted only when none refers to it), so
//! neither is a value one instance could overwrite with a stale one.
//!
//! # Rooms
//!
//! | file | job |
//! | --- | --- |
//! | `rows.rs` | values in rows: codec records, times, states, ids (a leaf) |
//! | `schema.rs` | the schema's name, its tables' names, migrations |
//! | `connection.rs` | connections with hookbus's timeouts, prepared statements, the readers' pool |
//! | `pipeline.rs` | the writer's connection: a round's statements pipelined |
//! | `listener.rs` | the `NOTIFY` channel and the thread that listens on it |
//! | `paged.rs` | listings a page at a time |
//! | `coordination.rs` | what instances coordinate through: claims and their cache, the `flow` table, sequence numbers, advisory locks |
//! | `reader.rs` | [`PgReader`]: the seam's reads |
//! | `writer/batch.rs` | a round's delivery changes and attempts, batched |
//! | `writer/ops.rs` | a round's other writes, one function each |
//! | `writer.rs` | [`PgWriter`]: staging, commits, flushes, reconnecting |
//! | `publish_in.rs` | events published inside the caller's transaction |
//! | `mod.rs` | [`open`], and what the rest of the crate uses from here |
//!
//! Each room uses only rooms listed above it; none uses `mod.rs`.

mod connection;
mod coordination;
mod drivers;
mod listener;
mod paged;
mod pipeline;
mod publish_in;
mod reader;
mod rows;
mod schema;
mod writer;

use std::sync::Arc;

pub(crate) use connection::redact_url;
pub(crate) use coordination::Sequencer;
pub(crate) use listener::spawn_listener;
// The sealed supertrait of `AsyncTransaction`.
#[cfg(any(feature = "sqlx", feature = "tokio-postgres"))]
#[allow(unreachable_pub)]
pub use drivers::Tx;
pub(crate) use drivers::now;
use pipeline::WriterConn;
pub(crate) use publish_in::{InTx, publish_in};
pub(crate) use reader::PgReader;
pub(crate) use schema::validate_schema;
pub(crate) use writer::PgWriter;

use crate::error::Result;
use connection::{Pool, connect, off_runtime};
use rows::store_error;
use schema::{fill_columns, migrate};

/// Opens the store in `schema` of the database at `url`, creating or
/// migrating the schema. `lease` is how long a claim holds.
pub(crate) fn open(
    url: &str,
    schema: &str,
    lease: std::time::Duration,
) -> Result<(PgReader, PgWriter)> {
    validate_schema(schema)?;
    // On the caller's thread, which may be an async runtime's.
    let client = off_runtime(|| -> Result<_> {
        let mut client = connect(url).map_err(|e| {
            store_error(format!(
                "cannot connect to PostgreSQL ({}): {e}",
                redact_url(url)
            ))
        })?;
        migrate(&mut client, schema)?;
        // Rows an older build created during a rolling deploy.
        fill_columns(&mut client, schema)?;
        drop(client);
        // The writer's own connection, which pipelines a round's
        // statements (`pipeline.rs`).
        WriterConn::open(url, connection::WRITER_SESSION).map_err(|e| {
            store_error(format!(
                "cannot connect the writer to PostgreSQL ({}): {e}",
                redact_url(url)
            ))
        })
    })?;
    let mut token = [0u8; 16];
    getrandom::fill(&mut token)
        .map_err(|e| store_error(format!("no randomness for a claim token: {e}")))?;
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let pool = || Arc::new(Pool::new(url, schema, token, lease_ms));
    // The handles' reads (listings, the REST adapter, the CLI) and the
    // engine's (claims, fan-out, retention) have pools of their own, so
    // busy handles never make the dispatcher wait for a connection.
    let reader = PgReader::new(pool());
    let writer = PgWriter::new(PgReader::new(pool()), client);
    Ok((reader, writer))
}
