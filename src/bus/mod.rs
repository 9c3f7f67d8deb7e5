//! The [`Bus`] handle: publishing, durability barriers and shutdown.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Builder, Config};
use crate::engine::{Command, Done, Engine, KeyHolder, Keyed, Probe, Session};
use crate::error::{Error, Result};
use crate::ids::{EventId, Timestamp};
use crate::message::{EventType, Message};
use crate::outbox::Outbox;
use crate::record::Event;
use crate::storage;
use crate::subscription::validate::{validate_event_name, validate_tenant};
use crate::subscription::{NewSubscription, Subscription, Subscriptions};

/// The handle to an open hookbus store and its background threads.
///
/// # About threads and cloning
///
/// `Bus` is a cheap handle (`Clone + Send + Sync`, one `Arc` inside): clones
/// share the same store, publish channel, dispatcher thread and sender pool,
/// so clone it into every thread or request handler that publishes. The
/// threads stop when [`Bus::shutdown`] is called or when the last clone is
/// dropped (which waits up to [`Builder::shutdown_timeout`] for requests in
/// flight). After a shutdown the store is released — it can be opened
/// again at once, also in the same process — and every clone answers
/// [`Error::Closed`].
///
/// # What blocks
///
/// * [`publish`](Bus::publish) never touches the network or the disk. It
///   serializes the event and queues it; it blocks only when the queue is
///   full ([`Builder::channel_capacity`]), until the dispatcher catches up.
///   It is fine to call from async code.
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
    /// Opens (or creates) the store in folder `path` with default settings
    /// and starts the background threads.
    ///
    /// Errors: [`Error::StoreLocked`] if another process (or another open
    /// `Bus`) holds the store, [`Error::NotAStore`] if the folder holds
    /// something else, [`Error::UnsupportedFormat`] if a newer hookbus wrote
    /// it.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Bus> {
        Builder::new().path(path).open()
    }

    /// A [`Builder`] for non-default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Opens the store with settings made by [`Builder::build`] and starts
    /// the background threads. Errors as [`Bus::open`].
    pub fn open_with(config: Config) -> Result<Bus> {
        let config = Arc::new(config);
        #[cfg(feature = "postgres")]
        if let Some(pg) = &config.postgres {
            // A claim outlives the longest request by a margin.
            let lease = pg.lease.unwrap_or_else(|| {
                config
                    .request_timeout
                    .saturating_add(config.connect_timeout)
                    .saturating_add(Duration::from_secs(30))
            });
            let (reader, writer) = storage::postgres::open(&pg.url, &pg.schema, lease)?;
            let me = reader.token_hex();
            let engine = Engine::start(Arc::new(reader), Box::new(writer), config.clone())?;
            let bus = Bus {
                inner: Arc::new(Inner {
                    config: config.clone(),
                    engine,
                }),
            };
            // Woken by other instances' commits; it holds no handle, so
            // it never keeps the bus open.
            let weak = Arc::downgrade(&bus.inner);
            let listening =
                storage::postgres::spawn_listener(&pg.url, &pg.schema, me, move |wake| match weak
                    .upgrade()
                {
                    Some(inner) if inner.engine.is_open() => {
                        !wake || inner.engine.send(Command::Poll).is_ok()
                    }
                    _ => false,
                });
            match listening {
                // Joined at shutdown.
                Ok(thread) => bus.inner.engine.adopt(thread),
                Err(e) => {
                    tracing::warn!(error = %e, "no PostgreSQL notifications; instances poll every second")
                }
            }
            return Ok(bus);
        }
        let (reader, writer) = storage::sled::open(
            &config.path,
            config.cache_capacity,
            config.lock_timeout,
            config.durability == crate::config::Durability::PowerLoss,
        )?;
        let engine = Engine::start(Arc::new(reader), Box::new(writer), config.clone())?;
        Ok(Bus {
            inner: Arc::new(Inner { config, engine }),
        })
    }

    /// The settings this bus was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
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
    /// [`Error::PayloadTooLarge`], [`Error::Closed`]. Nothing is stored when
    /// it fails.
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
    /// [`tenants_receive_app_events`](Builder::tenants_receive_app_events).
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

    /// [`flush`](Bus::flush) for async callers: waits for the dispatcher
    /// without blocking the runtime thread. (Queueing the barrier blocks
    /// only if the publish queue is full, as [`publish`](Bus::publish) does.)
    #[cfg(feature = "tokio")]
    pub async fn flush_async(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Write(Box::new(move |_: &mut Session| {
            let done: Done = Box::new(move |flushed| drop(tx.send(flushed)));
            done
        })))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// [`publish_durable`](Bus::publish_durable) for async callers: returns
    /// once the event is on disk, without blocking the runtime thread.
    #[cfg(feature = "tokio")]
    pub async fn publish_durable_async<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<EventId> {
        let event = self.prepare(event, data)?;
        self.publish_async(event, None).await
    }

    /// [`publish_durable_to`](Bus::publish_durable_to) for async callers:
    /// returns once the tenant's event is on disk, without blocking the
    /// runtime thread.
    #[cfg(feature = "tokio")]
    pub async fn publish_durable_to_async<T: Serialize + ?Sized>(
        &self,
        tenant: &str,
        event: &str,
        data: &T,
    ) -> Result<EventId> {
        let (event, tenant) = self.prepare_for(tenant, event, data)?;
        self.publish_async(event, tenant).await
    }

    #[cfg(feature = "tokio")]
    async fn publish_async(&self, event: Event, tenant: Option<String>) -> Result<EventId> {
        let id = event.id;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |flushed| drop(tx.send(flushed)));
        self.send(Command::Publish {
            event,
            tenant,
            key: None,
            done: Some(done),
        })?;
        rx.await.map_err(|_| Error::Closed)??;
        Ok(id)
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

    /// Operational notices — a subscription disabled or recovered, a
    /// delivery dead-lettered — kept until acknowledged, so none is lost
    /// to a restart. See [`Notices`](crate::Notices).
    pub fn notices(&self) -> crate::outbox::Notices<'_> {
        crate::outbox::Notices {
            engine: &self.inner.engine,
        }
    }

    /// Calls `handler` for each operational notice, oldest first, on a
    /// thread of its own that looks for new ones every quarter second —
    /// the push form of [`notices`](Bus::notices). A notice is
    /// acknowledged when `handler` returns `true`; on `false` (or a panic,
    /// which is logged) it stays and is offered again at the next look
    /// (newer ones are offered meanwhile), so every notice reaches the
    /// handler at least once, across restarts too (call `on_notice` again
    /// after opening) — unless more than [`MAX_NOTICES`](crate::MAX_NOTICES)
    /// pile up unacknowledged, when the oldest are dropped. The thread ends
    /// when the returned [`NoticeListener`](crate::NoticeListener) is
    /// stopped or dropped, or when the bus shuts down. It holds the bus
    /// only while it reads or acknowledges, so it does not keep the bus
    /// open — unless `handler` owns a `Bus` clone: use a channel to reach
    /// code that has one.
    ///
    /// ```
    /// # fn main() -> Result<(), hookbus::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let bus = hookbus::Bus::builder().path(dir.path()).open()?;
    /// let listener = bus.on_notice(|notice| {
    ///     eprintln!("hookbus needs a human: {}", notice.kind);
    ///     true // handled: acknowledge it
    /// })?;
    /// # listener.stop();
    /// # Ok(()) }
    /// ```
    pub fn on_notice<F>(&self, handler: F) -> Result<crate::NoticeListener>
    where
        F: FnMut(&crate::Notice) -> bool + Send + 'static,
    {
        NoticeListener::start(Arc::downgrade(&self.inner), handler)
    }

    /// The bus's own health, for a readiness probe: the dispatcher thread
    /// answers and the store takes a write (a probe that rewrites the
    /// outbox counters, committed and flushed — it waits behind what is
    /// queued), and how far behind delivery is (backlog, the age of the
    /// oldest due delivery, requests in flight). It never fails: what is
    /// wrong is in [`BusHealth::problems`](crate::BusHealth::problems), and
    /// `ready` is `false`. Waits at most `timeout` for the probe: a
    /// timeout too large to represent (`Duration::MAX`) waits as long as
    /// the probe takes; `Duration::ZERO` does not wait, so unless the probe
    /// was answered at once the dispatcher is reported late (`ready` is
    /// `false` and a problem says "did not answer within 0ns").
    ///
    /// With the `metrics` feature, the same figures and the delivery
    /// counters also go to the app's `metrics` recorder (see the README's
    /// "Operating hookbus").
    ///
    /// ```
    /// # fn main() -> Result<(), hookbus::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let bus = hookbus::Bus::builder().path(dir.path()).open()?;
    /// let health = bus.health(std::time::Duration::from_secs(2));
    /// assert!(health.ready, "{:?}", health.problems);
    /// assert_eq!(health.backlog, 0);
    /// # Ok(()) }
    /// ```
    pub fn health(&self, timeout: Duration) -> crate::health::BusHealth {
        let engine = &self.inner.engine;
        let mut problems = Vec::new();
        let running = engine.dispatcher_running();
        if !running {
            problems.push(
                "the dispatcher thread is not running (shut down or shutting down, or it ended)"
                    .into(),
            );
        }
        let probe = if running {
            engine.probe(timeout)
        } else {
            Probe::Failed(Error::Closed)
        };
        let (dispatcher_alive, mut store_writable) = match probe {
            Probe::Ok => (true, true),
            Probe::Late => {
                problems.push(format!(
                    "the dispatcher did not answer within {timeout:?} (stalled, or a long queue)"
                ));
                (false, false)
            }
            Probe::Failed(e) => {
                if running {
                    problems.push(format!("the store did not take a write: {e}"));
                }
                (running, false)
            }
        };
        let mut backlog = 0;
        let mut oldest_due_age = None;
        match engine.reader() {
            Ok(r) => {
                match r.stats() {
                    Ok(s) => backlog = s.pending,
                    Err(e) => {
                        store_writable = false;
                        problems.push(format!("the outbox counters could not be read: {e}"));
                    }
                }
                match r.pending_subscriptions() {
                    Ok((due, _)) => {
                        // The oldest due work of a subscription that may
                        // send (a disabled or halted one waits on purpose).
                        let now = Timestamp::now().as_millis();
                        let mut due: Vec<(u64, crate::ids::SubscriptionId)> = due
                            .iter()
                            .filter(|(_, at)| *at <= now)
                            .map(|(s, at)| (*at, *s))
                            .collect();
                        due.sort_unstable();
                        oldest_due_age = due
                            .iter()
                            .take(100)
                            .find(|(_, s)| {
                                r.subscription(*s)
                                    .ok()
                                    .flatten()
                                    .is_some_and(|rec| rec.active && rec.halted_at.is_none())
                            })
                            .map(|(at, _)| Duration::from_millis(now - at));
                    }
                    Err(e) => problems.push(format!("the due index could not be read: {e}")),
                }
            }
            Err(e) => problems.push(format!("the store is not open: {e}")),
        }
        let vitals = engine.vitals();
        crate::health::BusHealth {
            ready: dispatcher_alive && store_writable && problems.is_empty(),
            dispatcher_alive,
            store_writable,
            senders_alive: vitals
                .senders_alive
                .load(std::sync::atomic::Ordering::Relaxed),
            in_flight: vitals.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            backlog,
            oldest_due_age,
            problems,
        }
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
    fn command_of(
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

    /// Publishes a [`Message`] inside your own PostgreSQL transaction
    /// (feature `postgres`, a bus opened with
    /// [`Builder::postgres`]): the event and its deliveries are written in
    /// `tx`, so they exist exactly when your business change commits — a
    /// rollback sends nothing, a commit cannot lose the event. Every
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
        let Some(pg) = &self.inner.config.postgres else {
            return Err(Error::InvalidConfig(
                "publish_in needs a bus opened with Builder::postgres".into(),
            ));
        };
        let (event, tenant, key) = self.checked(message)?;
        let window =
            u64::try_from(self.inner.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        let reader = self.inner.engine.reader()?;
        storage::postgres::publish_in(
            tx,
            &pg.schema,
            &event,
            tenant.as_deref(),
            self.inner.config.tenants_receive_app_events,
            key.as_deref().map(|k| (k, window)),
            &|subs| reader.reserve_sequences(subs),
        )
    }

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
    /// tenant) within the [`idempotency_window`](Builder::idempotency_window),
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

    /// [`publish_message_durable`](Bus::publish_message_durable) for async
    /// callers: waits without blocking the runtime thread.
    #[cfg(feature = "tokio")]
    pub async fn publish_message_durable_async(&self, message: Message) -> Result<EventId> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |flushed| drop(tx.send(flushed)));
        let (cmd, holder, id) = self.command_of(message, Some(done))?;
        self.send(cmd)?;
        rx.await.map_err(|_| Error::Closed)??;
        Ok(holder.and_then(|h| h.get().copied()).unwrap_or(id))
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

impl Builder {
    /// Opens the store (creating it if needed) and starts the dispatcher and
    /// sender threads. See [`Bus::open`].
    pub fn open(self) -> Result<Bus> {
        Bus::open_with(self.build()?)
    }
}

fn completion() -> (Done, crossbeam_channel::Receiver<Result<()>>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    (Box::new(move |r| drop(tx.send(r))), rx)
}

#[cfg(all(test, feature = "tokio"))]
mod async_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// While the dispatcher is held busy, `flush_async` is pending and other
    /// tasks on the same current-thread runtime keep running; the flush
    /// completes once the dispatcher is released.
    #[test]
    fn async_durability_does_not_stall_a_current_thread_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::open(dir.path()).unwrap();
        // Occupy the dispatcher until `release` fires (or 10 s pass).
        let (release, hold) = crossbeam_channel::bounded::<()>(1);
        let (entered_tx, entered) = crossbeam_channel::bounded::<()>(1);
        let holder = bus.clone();
        let busy = std::thread::spawn(move || {
            holder
                .write(move |_| {
                    entered_tx.send(()).unwrap();
                    let _ = hold.recv_timeout(Duration::from_secs(10));
                    Ok(())
                })
                .unwrap()
        });
        entered.recv_timeout(Duration::from_secs(10)).unwrap();

        let other_ran = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let order = rt.block_on(async {
            let flag = other_ran.clone();
            let other = tokio::spawn(async move {
                // Runs only if the flush below yields the thread.
                flag.store(true, Ordering::SeqCst);
                release.send(()).unwrap();
            });
            let id = bus
                .publish_durable_async("hello", &serde_json::json!({"a": 1}))
                .await
                .unwrap();
            let ran_before_done = other_ran.load(Ordering::SeqCst);
            bus.flush_async().await.unwrap();
            other.await.unwrap();
            (id, ran_before_done)
        });
        busy.join().unwrap();
        assert!(
            order.1,
            "the other task ran while the durable publish was pending"
        );
        bus.shutdown(Duration::from_secs(1)).unwrap();
        assert!(matches!(rt.block_on(bus.flush_async()), Err(Error::Closed)));
    }
}

/// The thread of [`Bus::on_notice`](crate::Bus::on_notice): stop it with
/// [`stop`](Self::stop) (which waits for it) or by dropping it (which
/// does not).
#[derive(Debug)]
pub struct NoticeListener {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often a [`NoticeListener`] looks for new notices.
const NOTICE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl NoticeListener {
    fn start<F>(bus: std::sync::Weak<Inner>, mut handler: F) -> Result<Self>
    where
        F: FnMut(&crate::Notice) -> bool + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hookbus-notices".into())
            .spawn(move || {
                while !stopped.load(Ordering::SeqCst) {
                    // A strong handle only while reading or acknowledging,
                    // never while the handler runs: the listener does not
                    // keep the bus open.
                    let pending = match bus.upgrade() {
                        Some(inner) => crate::outbox::Notices {
                            engine: &inner.engine,
                        }
                        .pending(100),
                        None => return,
                    };
                    match pending {
                        Ok(list) => {
                            for n in list {
                                if stopped.load(Ordering::SeqCst) {
                                    return;
                                }
                                let handled = std::panic::catch_unwind(
                                    std::panic::AssertUnwindSafe(|| handler(&n)),
                                );
                                match handled {
                                    Ok(true) => {
                                        let Some(inner) = bus.upgrade() else { return };
                                        let acked = crate::outbox::Notices {
                                            engine: &inner.engine,
                                        }
                                        .ack(n.id);
                                        match acked {
                                            Ok(()) => {}
                                            Err(Error::Closed) => return,
                                            Err(e) => {
                                                tracing::error!(notice = %n.id, error = %e, "could not acknowledge a notice");
                                            }
                                        }
                                    }
                                    // Offered again at the next look; the
                                    // newer ones are offered meanwhile.
                                    Ok(false) => {}
                                    Err(_) => {
                                        tracing::error!(notice = %n.id, "the notice handler panicked; the notice is offered again");
                                    }
                                }
                            }
                        }
                        Err(Error::Closed) => return,
                        Err(e) => tracing::error!(error = %e, "could not read notices"),
                    }
                    std::thread::sleep(NOTICE_POLL);
                }
            })
            .map_err(|source| Error::Spawn {
                name: "hookbus-notices".into(),
                source,
            })?;
        Ok(NoticeListener {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (for the handler call in
    /// progress, if any).
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NoticeListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
