//! The [`Bus`] handle: publishing, durability barriers and shutdown.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::Serialize;

use crate::config::{Builder, Config};
use crate::dispatcher::{self, Command, Done, Writer};
use crate::error::{Error, Result};
use crate::ids::{EventId, Timestamp};
use crate::outbox::Outbox;
use crate::record::Event;
use crate::store::Store;
use crate::subscription::{Subscriptions, validate_event_name};

/// The handle to an open hookbus store and its background threads.
///
/// # About threads and cloning
///
/// `Bus` is a cheap handle (`Clone + Send + Sync`, one `Arc` inside): clones
/// share the same store, publish channel, dispatcher thread and sender pool,
/// so clone it into every thread or request handler that publishes. The
/// threads stop when [`Bus::shutdown`] is called or when the last clone is
/// dropped (which waits up to [`Builder::shutdown_timeout`] for requests in
/// flight).
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
    store: Store,
    tx: RwLock<Option<Sender<Command>>>,
    dispatcher: Mutex<Option<JoinHandle<Result<()>>>>,
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

    pub(crate) fn open_config(config: Config) -> Result<Bus> {
        let config = Arc::new(config);
        let store = Store::open(&config)?;
        let (tx, handle) = dispatcher::start(store.clone(), config.clone())?;
        Ok(Bus {
            inner: Arc::new(Inner {
                config,
                store,
                tx: RwLock::new(Some(tx)),
                dispatcher: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The settings this bus was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the bus still accepts events (it has not been shut down).
    pub fn is_open(&self) -> bool {
        self.inner
            .tx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Publishes `data` as event `event`: every active subscription that
    /// names the event (or `*`) gets a delivery.
    ///
    /// The data is serialized to JSON now; those exact bytes are the body of
    /// every request. The event is queued for the dispatcher thread and is
    /// durable once a later [`flush`](Bus::flush) returns (or the
    /// dispatcher's next group commit, usually within a millisecond).
    /// An event that no subscription names is accepted and dropped.
    ///
    /// Errors: [`Error::InvalidEventName`], [`Error::Serialize`],
    /// [`Error::PayloadTooLarge`], [`Error::Closed`]. Nothing is stored when
    /// it fails.
    pub fn publish<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<EventId> {
        let event = self.prepare(event, data)?;
        let id = event.id;
        self.send(Command::Publish { event, done: None })?;
        Ok(id)
    }

    /// Like [`publish`](Bus::publish), but returns only once the event and its
    /// deliveries are on disk.
    pub fn publish_durable<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<EventId> {
        let event = self.prepare(event, data)?;
        let id = event.id;
        let (done, rx) = completion();
        self.send(Command::Publish {
            event,
            done: Some(done),
        })?;
        rx.recv().map_err(|_| Error::Closed)??;
        Ok(id)
    }

    /// A durability barrier: returns once everything published (by any
    /// thread) before this call is on disk.
    pub fn flush(&self) -> Result<()> {
        self.write(|_| Ok(()))
    }

    /// [`flush`](Bus::flush) for async callers: waits for the dispatcher
    /// without blocking the runtime thread. (Queueing the barrier blocks
    /// only if the publish queue is full, as [`publish`](Bus::publish) does.)
    #[cfg(feature = "tokio")]
    pub async fn flush_async(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Write(Box::new(move |_: &mut Writer| {
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
        let id = event.id;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |flushed| drop(tx.send(flushed)));
        self.send(Command::Publish {
            event,
            done: Some(done),
        })?;
        rx.await.map_err(|_| Error::Closed)??;
        Ok(id)
    }

    /// The subscriptions of this bus.
    pub fn subscriptions(&self) -> Subscriptions<'_> {
        Subscriptions::new(self)
    }

    /// The delivery outbox: stats, pending and dead deliveries, attempts.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(self)
    }

    /// Stops the bus: no more events are accepted; everything already
    /// published is written and flushed; requests in flight get until
    /// `deadline` to finish; then the threads are joined. Deliveries not
    /// finished by then stay pending and are sent after the next open.
    ///
    /// Calling it again, or from another clone, is a no-op. Afterwards
    /// [`publish`](Bus::publish) returns [`Error::Closed`], while reads
    /// ([`subscriptions`](Bus::subscriptions), [`outbox`](Bus::outbox)) keep
    /// working until the last handle is dropped.
    pub fn shutdown(&self, deadline: Duration) -> Result<()> {
        self.inner.shutdown(deadline)
    }

    fn prepare<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<Event> {
        validate_event_name(event, false)?;
        let payload = serde_json::to_vec(data).map_err(Error::Serialize)?;
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
        })
    }

    fn send(&self, cmd: Command) -> Result<()> {
        let guard = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| Error::Closed),
            None => Err(Error::Closed),
        }
    }

    /// Runs `f` on the dispatcher thread (the one writer), after everything
    /// queued before it, and returns its result once its writes are flushed.
    pub(crate) fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded::<Result<R>>(1);
        self.send(Command::Write(Box::new(move |w: &mut Writer| {
            let r = f(w);
            let done: Done = Box::new(move |flushed: Result<()>| {
                let _ = tx.send(flushed.and(r));
            });
            done
        })))?;
        rx.recv().map_err(|_| Error::Closed)?
    }
}

fn completion() -> (Done, crossbeam_channel::Receiver<Result<()>>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    (Box::new(move |r| drop(tx.send(r))), rx)
}

impl Inner {
    fn shutdown(&self, deadline: Duration) -> Result<()> {
        let tx = self
            .tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(tx) = tx else { return Ok(()) };
        // The dispatcher drains everything queued before this message.
        let _ = tx.send(Command::Shutdown(Instant::now() + deadline));
        drop(tx);
        let handle = self
            .dispatcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match handle.map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Store(crate::error::StoreError::message(
                "the dispatcher thread panicked; unflushed events were not written",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Do not wait while unwinding: dropping the channel lets the
            // dispatcher drain, flush and stop on its own.
            self.tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            return;
        }
        if let Err(e) = self.shutdown(self.config.shutdown_timeout) {
            tracing::error!(error = %e, "hookbus shutdown on drop failed");
        }
    }
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
