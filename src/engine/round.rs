//! A round's bookkeeping: who waits for it and with what result, what it
//! staged (events with and without a waiter), the maintenance its changes
//! asked for, whether it must be flushed, and the report of events lost
//! since the last barrier.
//!
//! Pure: the dispatcher commits and flushes the store and hands the
//! results here ([`Round::committed`], [`Round::flushed`]); this type says
//! what follows from them. The rules:
//!
//! - A waiter whose writes were in a failed commit fails with the
//!   commit's error; events without a waiter in it are a loss, reported
//!   to the next barrier (once), never to a quiet waiter (a health probe).
//! - Maintenance a change asked for starts only once the change is
//!   committed; a failed commit drops it, and its waiter gets the error.
//! - Rounds that stored published events leave `unflushed_publishes` set
//!   until a flush succeeds: nothing is dispatched before that.
//! - A failed flush fails every waiter of the round.

use super::maintenance::Job;
use super::{Done, JobDone};
use crate::error::{Error, Result, StoreError};

/// A caller waiting for its round: how it is told, and its result so far.
struct Waiter {
    done: Done,
    result: Result<()>,
}

/// The report of a loss is kept to this many bytes (the first losses).
const MAX_LOSS_REPORT: usize = 4096;

/// See the module docs.
#[derive(Default)]
pub(crate) struct Round {
    /// The waiters of this round, each with its own result so far.
    waiters: Vec<Waiter>,
    /// Waiters (indexes into `waiters`) whose writes are staged.
    staged: Vec<usize>,
    /// Events without a waiter are staged, not committed.
    unwaited_staged: bool,
    /// Published events (with a waiter or not) are staged.
    publish_staged: bool,
    /// Rounds that stored published events were committed and no flush
    /// has covered them yet.
    unflushed_publishes: bool,
    /// Maintenance staged changes asked for, to start once committed.
    after_commit: Vec<(Job, Option<JobDone>)>,
    /// A loss no barrier has reported yet.
    lost: Option<String>,
    /// This round took events or changes: flush it.
    must_flush: bool,
}

impl std::fmt::Debug for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Round")
            .field("waiters", &self.waiters.len())
            .field("staged", &self.staged.len())
            .field("unflushed_publishes", &self.unflushed_publishes)
            .field("lost", &self.lost.is_some())
            .field("must_flush", &self.must_flush)
            .finish_non_exhaustive()
    }
}

fn store_error(m: &str) -> Error {
    Error::Store(StoreError::message(m))
}

impl Round {
    /// Takes the loss no barrier has reported yet, as a barrier's result.
    pub(crate) fn take_loss(&mut self) -> Result<()> {
        match self.lost.take() {
            None => Ok(()),
            Some(m) => Err(store_error(&format!(
                "published events were lost since the last barrier: {m}"
            ))),
        }
    }

    /// Adds to the report for the next barrier.
    pub(crate) fn note_loss(&mut self, m: String) {
        tracing::error!(error = %m, "a published event could not be stored in full");
        match &mut self.lost {
            Some(first) if first.len() < MAX_LOSS_REPORT => {
                first.push_str("; ");
                first.push_str(&m);
            }
            Some(_) => {}
            None => self.lost = Some(m),
        }
    }

    /// A published event was staged; `waited`: a caller waits for it.
    pub(crate) fn published(&mut self, waited: bool) {
        self.publish_staged = true;
        if !waited {
            self.unwaited_staged = true;
        }
    }

    /// A caller waits for this round with `result` so far; `staged`: its
    /// writes are staged, so a failed commit fails it.
    pub(crate) fn wait(&mut self, done: Done, result: Result<()>, staged: bool) {
        if staged {
            self.staged.push(self.waiters.len());
        }
        self.waiters.push(Waiter { done, result });
    }

    /// Maintenance to start once what is staged is committed.
    pub(crate) fn after_commit(&mut self, job: Job, done: Option<JobDone>) {
        self.after_commit.push((job, done));
    }

    /// The round must be flushed.
    pub(crate) fn flush_needed(&mut self) {
        self.must_flush = true;
    }

    /// Whether this round must be flushed (it took events or changes, or
    /// someone waits for it).
    pub(crate) fn wants_flush(&self) -> bool {
        self.must_flush || !self.waiters.is_empty()
    }

    /// The round's flush is under way: it asks for none of its own any
    /// more (whatever the flush's result).
    pub(crate) fn flush_started(&mut self) {
        self.must_flush = false;
    }

    /// Whether anyone waits for this round.
    pub(crate) fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Whether this round asked for a flush of its own.
    pub(crate) fn must_flush(&self) -> bool {
        self.must_flush
    }

    /// Whether committed publishes wait for a flush (nothing is
    /// dispatched until one succeeds).
    pub(crate) fn unflushed_publishes(&self) -> bool {
        self.unflushed_publishes
    }

    /// What the commit of the staged writes did; returns the maintenance
    /// to start now (in order).
    pub(crate) fn committed(&mut self, r: Result<()>) -> Vec<(Job, Option<JobDone>)> {
        let mut start = Vec::new();
        match r {
            Ok(()) => {
                if self.publish_staged {
                    self.unflushed_publishes = true;
                }
                start = std::mem::take(&mut self.after_commit);
            }
            Err(e) => {
                let m = e.to_string();
                tracing::error!(error = %m, "store commit failed");
                for i in self.staged.drain(..) {
                    if self.waiters[i].result.is_ok() {
                        self.waiters[i].result = Err(store_error(&m));
                    }
                }
                // Maintenance a change started goes with the change; a
                // caller waiting for it hears why.
                for (_, done) in std::mem::take(&mut self.after_commit) {
                    if let Some(done) = done {
                        let m = m.clone();
                        self.waiters.push(Waiter {
                            done: Box::new(move |_| done(Err(store_error(&m)))),
                            result: Ok(()),
                        });
                    }
                }
                if self.unwaited_staged {
                    self.note_loss(m);
                }
            }
        }
        self.staged.clear();
        self.unwaited_staged = false;
        self.publish_staged = false;
        start
    }

    /// What a flush of everything committed did. On failure every waiter
    /// of the round fails; published events stay unflushed (so they are
    /// not dispatched, and the next barrier's flush must succeed first).
    pub(crate) fn flushed(&mut self, r: &Result<()>) {
        match r {
            Ok(()) => self.unflushed_publishes = false,
            Err(e) => {
                let m = e.to_string();
                tracing::error!(error = %m, "store flush failed");
                for w in &mut self.waiters {
                    if w.result.is_ok() {
                        w.result = Err(store_error(&m));
                    }
                }
            }
        }
    }

    /// Tells every waiter its result; the round starts over.
    pub(crate) fn finish(&mut self) {
        for w in self.waiters.drain(..) {
            (w.done)(w.result);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::ids::SubscriptionId;

    type Told = Arc<Mutex<Vec<(&'static str, std::result::Result<(), String>)>>>;

    fn waiter(told: &Told, name: &'static str) -> Done {
        let told = told.clone();
        Box::new(move |r| {
            told.lock()
                .unwrap()
                .push((name, r.map_err(|e| e.to_string())));
        })
    }

    fn failed() -> Result<()> {
        Err(store_error("disk full"))
    }

    #[test]
    fn a_failed_commit_fails_its_staged_waiters_and_reports_unwaited_events_once() {
        let told = Told::default();
        let mut r = Round::default();
        // A quiet waiter (a probe) whose writes are not staged, a barrier
        // whose writes are, and an event without a waiter.
        r.wait(waiter(&told, "probe"), Ok(()), false);
        r.published(true);
        r.wait(waiter(&told, "durable"), Ok(()), true);
        r.published(false);
        assert!(r.committed(failed()).is_empty());
        assert!(!r.unflushed_publishes(), "nothing was committed");
        r.finish();
        let got = told.lock().unwrap().clone();
        assert_eq!(got[0], ("probe", Ok(())));
        assert_eq!(got[1].0, "durable");
        assert!(got[1].1.as_ref().unwrap_err().contains("disk full"));
        // The loss goes to the next barrier, once.
        let e = r.take_loss().unwrap_err().to_string();
        assert!(e.contains("lost") && e.contains("disk full"), "{e}");
        assert!(r.take_loss().is_ok());
    }

    #[test]
    fn maintenance_starts_only_after_a_successful_commit() {
        let told = Told::default();
        let mut r = Round::default();
        let sub = SubscriptionId::generate();
        let job_done = |name: &'static str| -> JobDone {
            let told = told.clone();
            Box::new(move |res: Result<u64>| {
                told.lock()
                    .unwrap()
                    .push((name, res.map(|_| ()).map_err(|e| e.to_string())));
            })
        };
        r.after_commit(
            Job::dead_letter_pending(sub, "deleted"),
            Some(job_done("delete")),
        );
        assert!(
            r.committed(failed()).is_empty(),
            "no job after a failed commit"
        );
        r.finish();
        let got = told.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert!(got[0].1.as_ref().unwrap_err().contains("disk full"));
        // Committed: the job is handed out, with its waiter.
        r.after_commit(
            Job::dead_letter_pending(sub, "deleted"),
            Some(job_done("again")),
        );
        let start = r.committed(Ok(()));
        assert_eq!(start.len(), 1);
        assert!(start[0].1.is_some());
        r.finish();
        assert_eq!(
            told.lock().unwrap().len(),
            1,
            "its waiter waits for the job"
        );
    }

    #[test]
    fn committed_publishes_wait_for_a_successful_flush() {
        let told = Told::default();
        let mut r = Round::default();
        r.published(false);
        assert!(r.committed(Ok(())).is_empty());
        assert!(r.unflushed_publishes());
        assert!(
            !r.wants_flush(),
            "no barrier and no change: no flush of its own"
        );
        // A failed flush keeps them unflushed and fails the round's waiters.
        r.wait(waiter(&told, "flush"), Ok(()), false);
        assert!(r.wants_flush());
        r.flushed(&failed());
        assert!(r.unflushed_publishes());
        r.finish();
        assert!(told.lock().unwrap()[0].1.is_err());
        r.flush_started();
        r.flushed(&Ok(()));
        assert!(!r.unflushed_publishes());
        // A round without publishes leaves nothing unflushed.
        r.flush_needed();
        assert!(r.committed(Ok(())).is_empty());
        assert!(!r.unflushed_publishes() && r.must_flush());
    }

    #[test]
    fn the_loss_report_is_bounded() {
        let mut r = Round::default();
        for n in 0..10_000 {
            r.note_loss(format!("event {n} could not be stored"));
        }
        let e = r.take_loss().unwrap_err().to_string();
        assert!(e.len() < MAX_LOSS_REPORT + 200, "{}", e.len());
        assert!(e.contains("event 0 "));
    }
}
