//! The `tokio` feature's `_async` variants of the calls that wait: opening,
//! the barriers and shutting down await without blocking the runtime
//! thread.

use std::time::Duration;

use super::Bus;
use crate::config::Builder;
use crate::engine::{Command, Done, Session};
use crate::error::{Error, Result};
use crate::ids::EventId;
use crate::message::Message;
use crate::record::Event;
use serde::Serialize;

/// Runs `f` on the runtime's blocking pool and awaits it (a panic in `f`
/// resumes here; a runtime shutting down meanwhile is [`Error::Closed`]).
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Closed),
    }
}

impl Builder {
    /// [`open`](Builder::open) for async callers: opens the store (on
    /// PostgreSQL: connects, migrates) on the runtime's blocking pool, so
    /// the runtime thread is not held meanwhile. Works on a multi-thread
    /// and a current-thread runtime; `open` works there too, but blocks
    /// the thread while it opens.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> hookbus::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let bus = hookbus::Bus::builder().path(dir.path()).open_async().await?;
    /// bus.publish_durable_async("hello", &serde_json::json!({"a": 1})).await?;
    /// bus.shutdown_async(std::time::Duration::from_secs(5)).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors: those of [`open`](Builder::open).
    pub async fn open_async(self) -> Result<Bus> {
        blocking(move || self.open()).await?
    }
}

impl Bus {
    /// [`shutdown`](Bus::shutdown) for async callers: stops intake, lets
    /// in-flight deliveries finish within `deadline`, flushes and releases
    /// the store, without blocking the runtime thread (for an axum app's
    /// graceful shutdown).
    ///
    /// Errors: those of [`shutdown`](Bus::shutdown).
    pub async fn shutdown_async(&self, deadline: Duration) -> Result<()> {
        let bus = self.clone();
        blocking(move || bus.shutdown(deadline)).await?
    }

    /// [`flush`](Bus::flush) for async callers: waits for the dispatcher
    /// without blocking the runtime thread. (Queueing the barrier blocks
    /// only if the publish queue is full, as [`publish`](Bus::publish) does.)
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
    pub async fn publish_durable_to_async<T: Serialize + ?Sized>(
        &self,
        tenant: &str,
        event: &str,
        data: &T,
    ) -> Result<EventId> {
        let (event, tenant) = self.prepare_for(tenant, event, data)?;
        self.publish_async(event, tenant).await
    }

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

    /// [`publish_message_durable`](Bus::publish_message_durable) for async
    /// callers: waits without blocking the runtime thread.
    pub async fn publish_message_durable_async(&self, message: Message) -> Result<EventId> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |flushed| drop(tx.send(flushed)));
        let (cmd, holder, id) = self.command_of(message, Some(done))?;
        self.send(cmd)?;
        rx.await.map_err(|_| Error::Closed)??;
        Ok(holder.and_then(|h| h.get().copied()).unwrap_or(id))
    }
}

#[cfg(all(test, feature = "tokio"))]
mod async_tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

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
