//! The [`Bus`] handle: publishing, durability barriers and shutdown.
//!
//! # Rooms
//!
//! | file | job |
//! | --- | --- |
//! | `mod.rs` | [`Bus`]: the handle, publishing events, barriers, handles to subscriptions and the outbox, shutdown |
//! | `open.rs` | opening: the sled store, or PostgreSQL with its listener thread |
//! | `message.rs` | publishing a [`Message`](crate::Message) or a typed event, and inside a PostgreSQL transaction |
//! | `async_api.rs` | the `tokio` feature's `_async` barriers |
//! | `health.rs` | [`Bus::health`], the readiness probe |
//! | `notices.rs` | [`Bus::notices`], [`Bus::on_notice`] and its [`NoticeListener`] thread |
//!
//! The other rooms add methods to [`Bus`] and use its private parts from
//! here; this file uses none of them (it re-exports [`NoticeListener`]).

#[cfg(feature = "tokio")]
mod async_api;
mod health;
mod message;
mod notices;
mod open;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::engine::{Command, Done, Engine, Session};
use crate::error::{Error, Result};
use crate::ids::{EventId, Timestamp};
use crate::outbox::Outbox;
use crate::record::Event;
use crate::subscription::validate::{validate_event_name, validate_tenant};
use crate::subscription::{NewSubscription, Subscription, Subscriptions};

#[cfg(any(feature = "sqlx", feature = "tokio-postgres"))]
pub use message::AsyncTransaction;
pub use notices::NoticeListener;

/// The handle to an open hookbus store and its background threads.
///
/// # About threads and cloning
///
/// `Bus` is a cheap handle (`Clone + Send + Sync`, one `Arc` inside): clones
/// share the same store, publish channel, dispatcher thread and sender pool,
/// so clone it into every thread or request handler that publishes. The
/// threads stop when [`Bus::shutdown`] is called or when the last clone is
/// dropped (which waits up to
/// [`Builder::shutdown_timeout`](crate::Builder::shutdown_timeout) for
/// requests in flight). After a shutdown the store is released — it can
/// be opened again at once, also in the same process — and every clone
/// answers [`Error::Closed`].
///
/// # What blocks
///
/// * [`publish`](Bus::publish) never touches the network or the disk. It
///   serializes the event and queues it; it blocks only when the queue is
///   full ([`Builder::channel_capacity`](crate::Builder::channel_capacity)),
///   until the dispatcher catches up. It is fine to call from async code.
/// * [`flush`](Bus::flush), [`publish_durable`](Bus::publish_durable) and
///   every subscription change wait for the dispatcher to write and flush:
///   typically a millisecond or a few. From async code use the `tokio`
///   feature's `_async` variants or `spawn_blocking`.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    engine: Engine,
    /// Reserves `X-Webhook-Sequence` numbers for `publish_in` (PostgreSQL).
    #[cfg(feature = "postgres")]
    sequencer: Option<crate::storage::postgres::Sequencer>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("path", &self.inner.config.path)
            .field("open", &self.is_open())
            .finish()
    }
}

impl Bus {
    /// The settings this bus was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// How many records (subscriptions, deliveries, attempts, events) the
    /// handles' reads of this bus decoded so far; not the dispatcher's own
    /// reads. For tests that show a read's work is bounded; not a stable
    /// API. 0 after shutdown.
    #[doc(hidden)]
    pub fn __internal_records_decoded(&self) -> u64 {
        self.inner
            .engine
            .reader()
            .map_or(0, |r| r.records_decoded())
    }

    /// The app's event catalog: the types registered with
    /// [`Builder::event_type`](crate::Builder::event_type), in
    /// registration order (empty if none were). A borrowed slice: the
    /// catalog is fixed when the bus opens.
    pub fn event_types(&self) -> &[crate::catalog::EventType] {
        self.inner.config.event_types()
    }

    /// Whether the bus still accepts events (it has not been shut down).
    pub fn is_open(&self) -> bool {
        self.inner.engine.is_open()
    }

    /// Publishes `data` as event `event`: every active subscription that
    /// names the event (or `*`) gets a delivery.
    ///
    /// The data is serialized to JSON now; those exact bytes are the body of
    /// every request. The event is queued for the dispatcher thread and is
    /// durable once a later [`flush`](Bus::flush) returns. (Sooner in
    /// practice: the dispatcher commits it within a round, and sled's
    /// background flusher makes that durable within 20 ms; a round of
    /// publishes with no barrier waiting is not flushed on its own, so a
    /// stream of them costs one flush per barrier, not one per round.)
    /// An event that no subscription names is accepted and dropped.
    ///
    /// Errors: [`Error::InvalidEventName`], [`Error::Serialize`],
    /// [`Error::PayloadTooLarge`], [`Error::PayloadInvalid`] (only with
    /// [`Builder::validate_payloads`](crate::Builder::validate_payloads)),
    /// [`Error::Closed`]. Nothing is stored when it fails.
    pub fn publish<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<EventId> {
        let event = self.prepare(event, data)?;
        self.queue(event, None)
    }

    /// Publishes `data` as event `event` for one tenant: only the active
    /// subscriptions of `tenant` ([`NewSubscription::tenant`]) that name
    /// the event (or `*`) get a delivery — never another tenant's, and
    /// never the app-wide ones. Otherwise as [`publish`](Bus::publish).
    ///
    /// Plain [`publish`](Bus::publish) is app-wide: it reaches the
    /// subscriptions without a tenant, and tenants' subscriptions only if
    /// the bus was built with
    /// [`tenants_receive_app_events`](crate::Builder::tenants_receive_app_events).
    ///
    /// Errors: those of `publish`, and [`Error::InvalidTenant`].
    ///
    /// ```
    /// # fn main() -> Result<(), hookbus::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let bus = hookbus::Bus::builder().path(dir.path()).allow_private_targets(true).deliver(false).open()?;
    /// use hookbus::NewSubscription;
    /// let acme = bus.subscribe(
    ///     NewSubscription::new("acme's", "http://127.0.0.1:9/a").event("*").tenant("acme"),
    /// )?;
    /// let other = bus.subscribe(
    ///     NewSubscription::new("globex's", "http://127.0.0.1:9/g").event("*").tenant("globex"),
    /// )?;
    /// bus.publish_durable_to("acme", "invoice.paid", &serde_json::json!({"amount": 10}))?;
    /// assert_eq!(bus.outbox().for_subscription(acme.id, false).count(), 1);
    /// assert_eq!(bus.outbox().for_subscription(other.id, false).count(), 0);
    /// # Ok(()) }
    /// ```
    pub fn publish_to<T: Serialize + ?Sized>(
        &self,
        tenant: &str,
        event: &str,
        data: &T,
    ) -> Result<EventId> {
        let (event, tenant) = self.prepare_for(tenant, event, data)?;
        self.queue(event, tenant)
    }

    /// Like [`publish_to`](Bus::publish_to), but returns only once the
    /// event and its deliveries are on disk.
    pub fn publish_durable_to<T: Serialize + ?Sized>(
        &self,
        tenant: &str,
        event: &str,
        data: &T,
    ) -> Result<EventId> {
        let (event, tenant) = self.prepare_for(tenant, event, data)?;
        self.queue_durable(event, tenant)
    }

    /// Like [`publish`](Bus::publish), but returns only once the event and its
    /// deliveries are on disk.
    pub fn publish_durable<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<EventId> {
        let event = self.prepare(event, data)?;
        self.queue_durable(event, None)
    }

    /// A durability barrier: returns once everything published (by any
    /// thread) before this call is on disk.
    ///
    /// Errors are sticky until reported: if an event published (without a
    /// waiter) since the previous barrier could not be stored in full, this
    /// barrier — `flush`, [`publish_durable`](Bus::publish_durable) or a
    /// subscription change — returns the error, once.
    pub fn flush(&self) -> Result<()> {
        self.write(|_| Ok(()))
    }

    /// The subscriptions of this bus.
    pub fn subscriptions(&self) -> Subscriptions<'_> {
        Subscriptions::new(&self.inner.engine, &self.inner.config)
    }

    /// Creates a subscription; the same as `bus.subscriptions().create(new)`.
    pub fn subscribe(&self, new: NewSubscription) -> Result<Subscription> {
        self.subscriptions().create(new)
    }

    /// The delivery outbox: stats, pending and dead deliveries, attempts.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(&self.inner.engine)
    }

    /// Stops the bus: no more events are accepted; everything already
    /// published is written and flushed; requests in flight get until
    /// `deadline` to finish; then the threads are joined. Deliveries not
    /// finished by then stay pending and are sent after the next open.
    ///
    /// Calling it again, or from another clone (also at the same time),
    /// returns only once the first shutdown is over, with its result.
    /// Afterwards the store is released (it can be opened again at once)
    /// and every call on any clone — publishing, reads through
    /// [`subscriptions`](Bus::subscriptions) and [`outbox`](Bus::outbox) —
    /// returns [`Error::Closed`]. A deadline too large to represent
    /// (`Duration::MAX`) counts as "no deadline": requests in flight are
    /// waited for, which the connect and request timeouts bound; with
    /// `Duration::ZERO` they are not waited for (they stay pending). With
    /// nothing in flight it returns as soon as everything is flushed.
    pub fn shutdown(&self, deadline: Duration) -> Result<()> {
        self.inner.engine.shutdown(deadline)
    }

    fn prepare<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<Event> {
        validate_event_name(event, false)?;
        let payload = serde_json::to_vec(data).map_err(Error::Serialize)?;
        self.event_of(event, payload, None)
    }

    /// [`prepare`](Self::prepare) for a tenant's event.
    fn prepare_for<T: Serialize + ?Sized>(
        &self,
        tenant: &str,
        event: &str,
        data: &T,
    ) -> Result<(Event, Option<String>)> {
        validate_tenant(tenant)?;
        let mut e = self.prepare(event, data)?;
        e.tenant = Some(tenant.to_owned());
        Ok((e, Some(tenant.to_owned())))
    }

    /// The event every way of publishing stores (`publish*`, messages,
    /// `publish_in`): its payload checked against the size limit and, if
    /// payloads are validated, its type's schema.
    fn event_of(
        &self,
        event: &str,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<Event> {
        let max = self.inner.config.max_payload_bytes;
        if payload.len() > max {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                max,
            });
        }
        self.inner.config.catalog.check_payload(event, &payload)?;
        Ok(Event {
            id: EventId::generate(),
            name: event.to_owned(),
            payload,
            created_at: Timestamp::now(),
            traceparent,
            tenant: None,
            scope_unknown: false,
        })
    }

    /// Queues a prepared event for the dispatcher.
    fn queue(&self, event: Event, tenant: Option<String>) -> Result<EventId> {
        let id = event.id;
        self.send(Command::Publish {
            event,
            tenant,
            key: None,
            done: None,
        })?;
        Ok(id)
    }

    /// Queues a prepared event and waits until it is on disk.
    fn queue_durable(&self, event: Event, tenant: Option<String>) -> Result<EventId> {
        let id = event.id;
        let (done, rx) = completion();
        self.send(Command::Publish {
            event,
            tenant,
            key: None,
            done: Some(done),
        })?;
        rx.recv().map_err(|_| Error::Closed)??;
        Ok(id)
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.inner.engine.send(cmd)
    }

    /// Runs `f` on the dispatcher thread (the one writer), after everything
    /// queued before it, and returns its result once its writes are flushed.
    pub(crate) fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Session) -> Result<R> + Send + 'static,
    {
        self.inner.engine.write(f)
    }
}

fn completion() -> (Done, crossbeam_channel::Receiver<Result<()>>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    (Box::new(move |r| drop(tx.send(r))), rx)
}
