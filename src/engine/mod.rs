//! The engine: the one writer of a store and the threads around it.
//!
//! * [`event_loop`] — the dispatcher thread: takes commands and outcomes,
//!   applies them through the write session, group-commits, hands due work
//!   to the senders;
//! * [`session`] — the write session: domain operations and counters on the
//!   storage [`Writer`](crate::storage::Writer);
//! * [`scheduler`] — which subscriptions get the free senders (pure);
//! * [`maintenance`] — bulk changes, run in chunks between rounds;
//! * this module — the thread lifecycle: [`Engine`] owns the dispatcher
//!   (which owns the senders), and its `shutdown` and `Drop` are the one
//!   place threads are stopped and joined.

pub(crate) mod changes;
pub(crate) mod coordination;
pub(crate) mod directory;
pub(crate) mod dispatch;
pub(crate) mod event_loop;
pub(crate) mod fifo;
pub(crate) mod flow;
pub(crate) mod health_log;
pub(crate) mod intake;
pub(crate) mod jobs;
pub(crate) mod maintenance;
pub(crate) mod outcomes;
pub(crate) mod own_claims;
pub(crate) mod prepare;
pub(crate) mod round;
pub(crate) mod scheduler;
pub(crate) mod sequences;
pub(crate) mod session;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::error::{Error, Result, StoreError};
use crate::record::Event;
use crate::storage::{Reader, Writer};
use crate::subscription::test_rate::TestRate;

pub(crate) use session::Session;

/// Called once the writes of its command are flushed (or failed to be).
pub(crate) type Done = Box<dyn FnOnce(Result<()>) + Send>;
/// A change run on the engine thread; returns what to call after flush.
pub(crate) type WriteFn = Box<dyn FnOnce(&mut Session) -> Done + Send>;
/// Called once a maintenance job is done and flushed, with its count.
pub(crate) type JobDone = Box<dyn FnOnce(Result<u64>) + Send>;

/// An idempotency key of a published event, and where the engine puts the
/// id of the event that holds it (this one, or the first with the key).
#[derive(Debug)]
pub(crate) struct Keyed {
    /// Tenant, `0x00`, key.
    pub(crate) key: String,
    pub(crate) holder: KeyHolder,
}

/// Where the engine puts the id of the event that holds a key.
pub(crate) type KeyHolder = Arc<std::sync::OnceLock<crate::ids::EventId>>;

/// What handles send to the engine thread.
pub(crate) enum Command {
    /// A published event, for a tenant's subscriptions or (no tenant)
    /// app-wide; `done` makes it a barrier (`publish_durable`).
    Publish {
        event: Event,
        tenant: Option<String>,
        key: Option<Keyed>,
        done: Option<Done>,
    },
    /// A change (or a plain barrier: `flush`).
    Write(WriteFn),
    /// A change that is not a barrier: it does not take the report of
    /// events lost since the last barrier (a health probe, an ack).
    Quiet(WriteFn),
    /// Maintenance to run in chunks; `done` gets how many records changed.
    Job(maintenance::Job, JobDone),
    /// Another instance of a shared store added work: look now.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Poll,
    /// The last command: stop, giving requests in flight until the instant.
    Shutdown(std::time::Instant),
}

/// The bytes of published payloads queued for the dispatcher, bounded by
/// `max_queued_bytes`: a publish takes its payload's share before it is
/// queued (waiting while the queue is full), the dispatcher gives it back
/// as it takes the event.
#[derive(Debug)]
pub(crate) struct QueuedBytes {
    used: Mutex<usize>,
    freed: std::sync::Condvar,
    max: usize,
}

impl QueuedBytes {
    pub(crate) fn new(max: usize) -> QueuedBytes {
        QueuedBytes {
            used: Mutex::new(0),
            freed: std::sync::Condvar::new(),
            max: max.max(1),
        }
    }

    /// Takes `n` bytes (one event larger than the bound alone), waiting
    /// while they are not free; `Err` once `open` says the bus closed.
    fn take(&self, n: usize, open: impl Fn() -> bool) -> Result<()> {
        let n = n.min(self.max);
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while *used != 0 && *used + n > self.max {
            if !open() {
                return Err(Error::Closed);
            }
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *used += n;
        Ok(())
    }

    /// Gives back what a queued event of `n` payload bytes took.
    pub(crate) fn give(&self, n: usize) {
        let n = n.min(self.max);
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// What the dispatcher reports of itself at the end of every round, for
/// [`Bus::health`](crate::Bus::health).
#[derive(Debug, Default)]
pub(crate) struct Vitals {
    /// Requests in flight.
    pub(crate) in_flight: AtomicUsize,
    /// Sender threads alive.
    pub(crate) senders_alive: AtomicUsize,
}

/// How [`Engine::probe`] went.
#[derive(Debug)]
pub(crate) enum Probe {
    /// Answered; the write was committed and flushed.
    Ok,
    /// No answer in time.
    Late,
    /// Answered with an error (or the engine is closed).
    Failed(Error),
}

/// The running engine of one store: the command channel in, the reader
/// out, and the dispatcher thread. Shared by every clone of a `Bus`.
///
/// Its `Debug` shows cheap facts only: never the reader, whose store's
/// `Debug` walks every record (secrets and payloads included).
pub(crate) struct Engine {
    tx: RwLock<Option<Sender<Command>>>,
    reader: RwLock<Option<Arc<dyn Reader>>>,
    life: Mutex<Life>,
    shutdown_timeout: Duration,
    vitals: Arc<Vitals>,
    queued: Arc<QueuedBytes>,
    /// How the senders send; test requests go through it too (one
    /// connection pool, one internal-address guard).
    transport: crate::sender::Transport,
    /// Test requests' rate limit, per subscription.
    test_rate: TestRate,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `try_read`: formatting never waits for (or deadlocks on) a lock.
        let open = self.tx.try_read().ok().map(|tx| tx.is_some());
        f.debug_struct("Engine")
            .field("open", &open)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("vitals", &self.vitals)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Life {
    thread: Option<JoinHandle<Result<()>>>,
    /// Threads of the bus's own that end once the engine is closed (the
    /// PostgreSQL listener): joined by the shutdown, after the dispatcher.
    helpers: Vec<JoinHandle<()>>,
    /// How the shutdown ended, for callers that come after it.
    ended: Option<std::result::Result<(), String>>,
}

impl Engine {
    /// Starts the dispatcher (and through it the senders) on `writer`.
    pub(crate) fn start(
        reader: Arc<dyn Reader>,
        writer: Box<dyn Writer>,
        config: Arc<Config>,
    ) -> Result<Engine> {
        let shutdown_timeout = config.shutdown_timeout;
        let vitals = Arc::new(Vitals::default());
        let queued = Arc::new(QueuedBytes::new(config.max_queued_bytes));
        let transport = crate::sender::Transport::new(&config)?;
        let (tx, thread) =
            event_loop::start(writer, &transport, config, vitals.clone(), queued.clone())?;
        Ok(Engine {
            tx: RwLock::new(Some(tx)),
            reader: RwLock::new(Some(reader)),
            life: Mutex::new(Life {
                thread: Some(thread),
                helpers: Vec::new(),
                ended: None,
            }),
            shutdown_timeout,
            vitals,
            queued,
            transport,
            test_rate: TestRate::default(),
        })
    }

    /// How the senders send.
    pub(crate) fn transport(&self) -> &crate::sender::Transport {
        &self.transport
    }

    /// Test requests' rate limit, per subscription.
    pub(crate) fn test_rate(&self) -> &TestRate {
        &self.test_rate
    }

    /// Takes a thread of the bus's own that ends by itself once the engine
    /// is closed; the shutdown joins it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn adopt(&self, thread: JoinHandle<()>) {
        self.life
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .helpers
            .push(thread);
    }

    /// The store's reader; [`Error::Closed`] after shutdown (which releases
    /// the store).
    pub(crate) fn reader(&self) -> Result<Arc<dyn Reader>> {
        self.reader
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::Closed)
    }

    /// Whether the dispatcher thread is running (it was started and has
    /// not ended). `false` while a shutdown is in progress (it holds the
    /// lifecycle lock): this never waits for one.
    pub(crate) fn dispatcher_running(&self) -> bool {
        match self.life.try_lock() {
            Ok(life) => life.thread.as_ref().is_some_and(|t| !t.is_finished()),
            Err(std::sync::TryLockError::Poisoned(p)) => p
                .into_inner()
                .thread
                .as_ref()
                .is_some_and(|t| !t.is_finished()),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.tx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn send(&self, cmd: Command) -> Result<()> {
        // A published payload's bytes first (the queue's bound in bytes);
        // the dispatcher gives them back as it takes the event.
        let bytes = match &cmd {
            Command::Publish { event, .. } => Some(event.payload.len()),
            _ => None,
        };
        if let Some(n) = bytes {
            self.queued.take(n, || self.is_open())?;
        }
        let guard = self.tx.read().unwrap_or_else(PoisonError::into_inner);
        let sent = match guard.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| Error::Closed),
            None => Err(Error::Closed),
        };
        if sent.is_err()
            && let Some(n) = bytes
        {
            self.queued.give(n);
        }
        sent
    }

    /// Runs `f` on the engine thread (the one writer), after everything
    /// queued before it, and returns its result once its writes — and any
    /// maintenance it started — are done and flushed.
    pub(crate) fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Session) -> Result<R> + Send + 'static,
    {
        self.write_as(f, true)
    }

    /// [`write`](Self::write) that is not a barrier: events lost since the
    /// last barrier stay to be reported to the app's next one.
    pub(crate) fn write_quiet<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Session) -> Result<R> + Send + 'static,
    {
        self.write_as(f, false)
    }

    fn write_as<R, F>(&self, f: F, barrier: bool) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Session) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded::<Result<R>>(1);
        let f: WriteFn = Box::new(move |s: &mut Session| {
            let r = f(s);
            let done: Done = Box::new(move |flushed: Result<()>| {
                let _ = tx.send(flushed.and(r));
            });
            done
        });
        self.send(if barrier {
            Command::Write(f)
        } else {
            Command::Quiet(f)
        })?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Checks that the engine thread answers and the store takes a write:
    /// a change that rewrites the outbox counters, committed and flushed,
    /// within `timeout` (the command queue included). A timeout too large
    /// to represent (`Duration::MAX`) counts as "no limit".
    pub(crate) fn probe(&self, timeout: Duration) -> Probe {
        let deadline = crate::clock::deadline_after(timeout);
        let (tx, rx) = crossbeam_channel::bounded::<Result<()>>(1);
        let cmd = Command::Quiet(Box::new(move |s: &mut Session| {
            s.touch_stats();
            let done: Done = Box::new(move |flushed: Result<()>| {
                let _ = tx.send(flushed);
            });
            done
        }));
        {
            let guard = self.tx.read().unwrap_or_else(PoisonError::into_inner);
            let Some(sender) = guard.as_ref() else {
                return Probe::Failed(Error::Closed);
            };
            match sender.send_deadline(cmd, deadline) {
                Ok(()) => {}
                Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => return Probe::Late,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                    return Probe::Failed(Error::Closed);
                }
            }
        }
        match rx.recv_deadline(deadline) {
            Ok(Ok(())) => Probe::Ok,
            Ok(Err(e)) => Probe::Failed(e),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Probe::Late,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Probe::Failed(Error::Closed),
        }
    }

    /// What the dispatcher last reported of itself.
    pub(crate) fn vitals(&self) -> &Vitals {
        &self.vitals
    }

    /// Runs a maintenance job in chunks between rounds; returns how many
    /// records it changed, once that is flushed.
    pub(crate) fn run_job(&self, job: maintenance::Job) -> Result<u64> {
        let (tx, rx) = crossbeam_channel::bounded::<Result<u64>>(1);
        self.send(Command::Job(
            job,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        ))?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Stops the engine: no more commands; what is queued is written and
    /// flushed; requests in flight get until `deadline`; the threads are
    /// joined and the store is released. Every caller — also one that
    /// comes while another clone's shutdown is running — returns only when
    /// it is over, with its result.
    pub(crate) fn shutdown(&self, deadline: Duration) -> Result<()> {
        let mut life = self.life.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ended) = &life.ended {
            return ended
                .clone()
                .map_err(|m| Error::Store(StoreError::message(m)));
        }
        let tx = self
            .tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            // The dispatcher drains everything queued before this message.
            let _ = tx.send(Command::Shutdown(crate::clock::deadline_after(deadline)));
        }
        let result = match life.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Store(StoreError::message(
                "the dispatcher thread panicked; unflushed events were not written",
            ))),
            None => Ok(()),
        };
        // The last reader goes with the handles: the store is released.
        self.reader
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Helper threads see the engine closed and end (one may be the
        // thread running this, if it held the last handle: not joined).
        let me = std::thread::current().id();
        for helper in std::mem::take(&mut life.helpers) {
            if helper.thread().id() != me && helper.join().is_err() {
                tracing::error!("a hookbus helper thread panicked");
            }
        }
        life.ended = Some(result.as_ref().map(|_| ()).map_err(ToString::to_string));
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Do not wait while unwinding: closing the channel lets the
            // dispatcher drain, flush and stop on its own.
            self.tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            return;
        }
        if let Err(e) = self.shutdown(self.shutdown_timeout) {
            tracing::error!(error = %e, "hookbus shutdown on drop failed");
        }
    }
}
