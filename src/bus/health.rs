//! [`Bus::health`]: the readiness probe (the dispatcher answers, the store
//! takes a write) and how far behind delivery is.

use std::time::Duration;

use super::Bus;
use crate::engine::Probe;
use crate::error::Error;
use crate::ids::Timestamp;

impl Bus {
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
    /// counters also go to the app's `metrics` recorder (names in
    /// `docs/OPERATING.md`).
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
}
