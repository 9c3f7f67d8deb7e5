//! Publishing a [`Message`] (an event with options: a tenant, an
//! idempotency key, a trace context) and typed events ([`EventType`]),
//! and, on PostgreSQL, inside the caller's transaction.

use std::sync::{Arc, OnceLock};

use super::{Bus, completion};
use crate::engine::{Command, Done, KeyHolder, Keyed};
use crate::error::{Error, Result};
use crate::ids::EventId;
use crate::message::{EventType, Message};
use crate::record::Event;
#[cfg(feature = "postgres")]
use crate::storage;
use crate::subscription::validate::{validate_event_name, validate_tenant};

impl Bus {
    /// Publishes a typed event ([`EventType`]): `publish(E::NAME, event)`.
    pub fn emit<E: EventType>(&self, event: &E) -> Result<EventId> {
        self.publish(E::NAME, event)
    }

    /// Publishes a typed event for one tenant: `publish_to(tenant, E::NAME,
    /// event)`.
    pub fn emit_to<E: EventType>(&self, tenant: &str, event: &E) -> Result<EventId> {
        self.publish_to(tenant, E::NAME, event)
    }

    /// Publishes a [`Message`]: an event with options (a tenant, an
    /// idempotency key, a trace context).
    ///
    /// Without an idempotency key it returns at once, like
    /// [`publish`](Bus::publish). With one it returns once the event is
    /// stored (like [`publish_message_durable`](Bus::publish_message_durable)),
    /// because the id it returns is that of the event that holds the key:
    /// this one, or the first one published with the same key (and
    /// tenant) within the [`idempotency_window`](crate::Builder::idempotency_window),
    /// in which case nothing new is stored.
    ///
    /// Errors: those of [`publish`](Bus::publish) and
    /// [`publish_to`](Bus::publish_to), [`Error::InvalidIdempotencyKey`],
    /// [`Error::InvalidTraceparent`].
    pub fn publish_message(&self, message: Message) -> Result<EventId> {
        if message.key.is_some() {
            return self.publish_message_durable(message);
        }
        let (cmd, _, id) = self.command_of(message, None)?;
        self.send(cmd)?;
        Ok(id)
    }

    /// Publishes a [`Message`] and returns once it is on disk, with the id
    /// of the event that holds its idempotency key (see
    /// [`publish_message`](Bus::publish_message)).
    pub fn publish_message_durable(&self, message: Message) -> Result<EventId> {
        let (done, rx) = completion();
        let (cmd, holder, id) = self.command_of(message, Some(done))?;
        self.send(cmd)?;
        rx.recv().map_err(|_| Error::Closed)??;
        Ok(holder.and_then(|h| h.get().copied()).unwrap_or(id))
    }

    /// Publishes a [`Message`] inside your own PostgreSQL transaction
    /// (feature `postgres`, a bus opened with
    /// [`Builder::postgres`](crate::Builder::postgres)): the event and its
    /// deliveries are written in `tx`, so they exist exactly when your
    /// business change commits — a
    /// rollback sends nothing, a commit cannot lose the event (when the
    /// event has deliveries, `tx`'s commit is made synchronous, whatever
    /// your session's `synchronous_commit`). Every
    /// instance's senders find them within about a second of the commit.
    /// `tx` must be a transaction on the database (and schema) the bus
    /// uses. With an idempotency key, a key held within the window returns
    /// the first event's id and stores nothing (concurrent transactions
    /// with one key, and instances publishing with it, wait for each other
    /// on the key's advisory lock, held until `tx` ends: don't wait on the
    /// bus for the same key inside `tx`).
    ///
    /// Errors: those of [`publish_message`](Bus::publish_message), and
    /// [`Error::InvalidConfig`] if this bus does not use PostgreSQL; a
    /// database error leaves `tx` for you to roll back.
    #[cfg(feature = "postgres")]
    pub fn publish_in(
        &self,
        tx: &mut postgres::Transaction<'_>,
        message: Message,
    ) -> Result<EventId> {
        let (schema, sequencer) = self.transactional()?;
        let (event, tenant, key) = self.checked(message)?;
        let p = self.in_tx(schema, &event, tenant.as_deref(), key.as_deref());
        // The blocking client's statements run as they are called: the
        // future is ready when polled once.
        storage::postgres::now(storage::postgres::publish_in(tx, p, |subs| {
            std::future::ready(sequencer.reserve(&subs))
        }))
        .unwrap_or_else(|| {
            Err(Error::Store(crate::error::StoreError::message(
                "publish_in waited on a blocking transaction",
            )))
        })
    }

    /// [`publish_in`](Bus::publish_in) for async drivers: publishes a
    /// [`Message`] inside your own transaction of
    /// [`sqlx`](https://docs.rs/sqlx) (feature `sqlx`:
    /// `sqlx::Transaction<'_, sqlx::Postgres>`) or
    /// [`tokio-postgres`](https://docs.rs/tokio-postgres) (feature
    /// `tokio-postgres`: `tokio_postgres::Transaction<'_>`), on a bus opened
    /// with [`Builder::postgres`](crate::Builder::postgres). The same rows,
    /// rules and guarantees as `publish_in`: they exist exactly when `tx`
    /// commits, every instance's senders find them, and an idempotency key
    /// held within the window returns the first event's id. Safe on any
    /// tokio runtime: the one blocking step (numbering the deliveries,
    /// outside `tx`) runs on the runtime's blocking pool.
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlx")]
    /// # async fn order(bus: &hookbus::Bus, db: &sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = db.begin().await?;
    /// sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)")
    ///     .bind(42_i64)
    ///     .bind(1999_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// let message = hookbus::Message::new("order.created", &serde_json::json!({"id": 42}))
    ///     .idempotency_key("order-42");
    /// bus.publish_in_async(&mut tx, message).await?;
    /// tx.commit().await?; // now, and only now, it will be delivered
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors: those of `publish_in`.
    #[cfg(any(feature = "sqlx", feature = "tokio-postgres"))]
    pub async fn publish_in_async<T: AsyncTransaction>(
        &self,
        tx: &mut T,
        message: Message,
    ) -> Result<EventId> {
        let (schema, sequencer) = self.transactional()?;
        let (event, tenant, key) = self.checked(message)?;
        let p = self.in_tx(schema, &event, tenant.as_deref(), key.as_deref());
        let sequencer = sequencer.clone();
        storage::postgres::publish_in(tx, p, |subs| async move {
            tokio::task::spawn_blocking(move || sequencer.reserve(&subs))
                .await
                .map_err(|e| {
                    Error::Store(crate::error::StoreError::message(format!(
                        "numbering deliveries failed: {e}"
                    )))
                })?
        })
        .await
    }

    /// The schema and the sequencer of a PostgreSQL bus that is open.
    #[cfg(feature = "postgres")]
    fn transactional(&self) -> Result<(&str, &storage::postgres::Sequencer)> {
        let (Some(pg), Some(sequencer)) = (&self.inner.config.postgres, &self.inner.sequencer)
        else {
            return Err(Error::InvalidConfig(
                "publish_in needs a bus opened with Builder::postgres".into(),
            ));
        };
        // Closed: the store is released.
        self.inner.engine.reader()?;
        Ok((&pg.schema, sequencer))
    }

    /// What a transactional publish writes, with this bus's settings.
    #[cfg(feature = "postgres")]
    fn in_tx<'a>(
        &self,
        schema: &'a str,
        event: &'a Event,
        tenant: Option<&'a str>,
        key: Option<&'a str>,
    ) -> storage::postgres::InTx<'a> {
        let window =
            u64::try_from(self.inner.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        storage::postgres::InTx {
            schema,
            event,
            tenant,
            app_events_to_tenants: self.inner.config.tenants_receive_app_events,
            key: key.map(|k| (k, window)),
        }
    }

    /// Checks a message: its event, tenant and namespaced idempotency key
    /// (tenant, `0x00`, key).
    fn checked(&self, m: Message) -> Result<(Event, Option<String>, Option<String>)> {
        validate_event_name(&m.name, false)?;
        if let Some(t) = &m.tenant {
            validate_tenant(t)?;
        }
        if let Some(k) = &m.key {
            crate::message::validate_key(k)?;
        }
        if let Some(tp) = &m.traceparent {
            crate::message::validate_traceparent(tp)?;
        }
        let payload = m.payload.map_err(Error::Serialize)?;
        let mut event = self.event_of(&m.name, payload, m.traceparent)?;
        event.tenant.clone_from(&m.tenant);
        let key = m
            .key
            .map(|k| format!("{}\0{k}", m.tenant.as_deref().unwrap_or("")));
        Ok((event, m.tenant, key))
    }

    /// Checks a message and makes the command that publishes it (`done`
    /// makes it a barrier). Returns the command, where the id of the event
    /// that holds its idempotency key will be, and its own event id.
    pub(super) fn command_of(
        &self,
        m: Message,
        done: Option<Done>,
    ) -> Result<(Command, Option<KeyHolder>, EventId)> {
        let (event, tenant, key) = self.checked(m)?;
        let id = event.id;
        let holder = key.as_ref().map(|_| Arc::new(OnceLock::new()));
        let key = key.map(|key| Keyed {
            key,
            holder: holder.clone().unwrap_or_default(),
        });
        let cmd = Command::Publish {
            event,
            tenant,
            key,
            done,
        };
        Ok((cmd, holder, id))
    }
}

/// A transaction of an async PostgreSQL driver that
/// [`Bus::publish_in_async`] writes in: `sqlx::Transaction<'_,
/// sqlx::Postgres>` (feature `sqlx`) and `tokio_postgres::Transaction<'_>`
/// (feature `tokio-postgres`). Sealed: hookbus implements it for the
/// drivers it supports.
#[cfg(any(feature = "sqlx", feature = "tokio-postgres"))]
pub trait AsyncTransaction: storage::postgres::Tx {}

#[cfg(feature = "sqlx")]
impl AsyncTransaction for sqlx::Transaction<'_, sqlx::Postgres> {}

#[cfg(feature = "tokio-postgres")]
impl AsyncTransaction for tokio_postgres::Transaction<'_> {}
