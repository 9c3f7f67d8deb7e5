//! Operational notices from a bus: the [`Notices`](crate::Notices)
//! handle, and [`NoticeListener`], the thread that pushes them to the
//! app's handler.

use std::sync::Arc;

use super::{Bus, Inner};
use crate::error::{Error, Result};

impl Bus {
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
    /// when the returned [`NoticeListener`] is
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
    pub fn on_notice<F>(&self, handler: F) -> Result<NoticeListener>
    where
        F: FnMut(&crate::notice::Notice) -> bool + Send + 'static,
    {
        NoticeListener::start(Arc::downgrade(&self.inner), handler)
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
        F: FnMut(&crate::notice::Notice) -> bool + Send + 'static,
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
