//! The engine's maintenance queue: jobs callers asked for (retry dead
//! letters, replay, purges, a deleted subscription's backlog) and the
//! engine's own background retention, run one chunk per loop turn on the
//! engine thread, each chunk an atomic round of its own.

use std::collections::VecDeque;
use std::time::Duration;

use super::JobDone;
use super::maintenance::Job;
use super::round::Round;
use super::session::Session;

/// Retention runs at least this often.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The queue (see the module docs).
#[derive(Default)]
pub(crate) struct Jobs {
    queue: VecDeque<(Job, Option<JobDone>)>,
    /// When to start the retention jobs next (ms).
    next_retention: u64,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("queued", &self.queue.len())
            .field("next_retention", &self.next_retention)
            .finish()
    }
}

impl Jobs {
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a job; `done` gets how many records it changed. The
    /// engine's own background jobs (retention) go last; every other job
    /// goes before them, so a caller never waits behind a long purge (a
    /// background job started resumes where it was).
    pub(crate) fn push(&mut self, job: Job, done: Option<JobDone>) {
        if job.background {
            self.queue.push_back((job, done));
        } else {
            let at = self
                .queue
                .iter()
                .position(|(j, _)| j.background)
                .unwrap_or(self.queue.len());
            self.queue.insert(at, (job, done));
        }
    }

    /// Closing: background jobs go (retention goes on after the next
    /// open); callers' jobs stay and are finished.
    pub(crate) fn drop_background(&mut self) {
        self.queue.retain(|(j, _)| !j.background);
    }

    /// Queues the retention jobs (purge delivered history and dead letters
    /// past their windows, trim notices, and with other instances on the
    /// store (`alone` false) events no delivery refers to) when they are
    /// due and none is still running.
    pub(crate) fn retention(&mut self, s: &Session, now: u64, alone: bool) {
        if now < self.next_retention || self.queue.iter().any(|(j, _)| j.background) {
            return;
        }
        let c = &s.config;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut jobs = Vec::new();
        if let Some(keep) = c.keep_delivered {
            jobs.push(Job::purge_delivered(now.saturating_sub(ms(keep))));
        }
        if let Some(keep) = c.keep_dead {
            jobs.push(Job::purge_dead(now.saturating_sub(ms(keep))));
        }
        jobs.push(Job::trim_notices());
        if !alone {
            // Events created over 10 minutes ago with no delivery left
            // (instances purging one event's deliveries at once can leave
            // it behind).
            jobs.push(Job::sweep_orphans(now.saturating_sub(600_000)));
        }
        self.next_retention =
            now.saturating_add(ms(retention_every(c.keep_delivered, c.keep_dead)));
        for job in jobs {
            self.push(job.in_background(), None);
        }
    }

    /// Runs one chunk of the first job and commits it; a finished job's
    /// caller is told once the round flushes (through `round`).
    pub(crate) fn run_chunk(&mut self, s: &mut Session, round: &mut Round) {
        let Some((job, _)) = self.queue.front_mut() else {
            return;
        };
        let step = job.step(s);
        if let Err(e) = &step
            && job.background
        {
            // No caller hears of it: retention tries again at its next turn.
            tracing::error!(error = %e, job = ?job, "retention job stopped early");
        }
        let finished = !matches!(step, Ok(false));
        // A chunk is one atomic round of its own.
        if let Err(e) = s.commit() {
            tracing::error!(error = %e, "maintenance chunk could not be written");
            if let Some((_, Some(done))) = self.queue.pop_front() {
                round.wait(Box::new(move |_| done(Err(e))), Ok(()), false);
            }
            return;
        }
        round.flush_needed();
        if finished && let Some((job, done)) = self.queue.pop_front() {
            let count = job.count;
            let result = step.map(|_| count);
            if let Some(done) = done {
                round.wait(
                    Box::new(move |flushed| done(flushed.and(result))),
                    Ok(()),
                    false,
                );
            }
        }
    }
}

/// How often retention runs: every quarter of the shortest window (of a
/// minute without one), at least every [`RETENTION_EVERY`] and at most
/// every 250 ms.
fn retention_every(keep_delivered: Option<Duration>, keep_dead: Option<Duration>) -> Duration {
    let shortest = [keep_delivered, keep_dead]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(RETENTION_EVERY);
    (shortest / 4).clamp(Duration::from_millis(250), RETENTION_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SubscriptionId;

    #[test]
    fn callers_jobs_go_before_background_ones_in_their_order() {
        let mut jobs = Jobs::default();
        jobs.push(Job::trim_notices().in_background(), None);
        jobs.push(Job::purge_dead(1).in_background(), None);
        let a = SubscriptionId::generate();
        let b = SubscriptionId::generate();
        jobs.push(Job::retry_dead(Some(a)), None);
        jobs.push(Job::retry_dead(Some(b)), None);
        let order: Vec<bool> = jobs.queue.iter().map(|(j, _)| j.background).collect();
        assert_eq!(order, [false, false, true, true]);
        let first = format!("{:?}", jobs.queue[0].0);
        assert!(first.contains(&a.to_string()), "{first}");
        jobs.drop_background();
        assert_eq!(jobs.queue.len(), 2);
        assert!(jobs.queue.iter().all(|(j, _)| !j.background));
    }

    #[test]
    fn retention_runs_every_quarter_of_the_shortest_window_within_bounds() {
        let s = Duration::from_secs;
        // No window: notices are still trimmed, every quarter minute.
        assert_eq!(retention_every(None, None), s(15));
        assert_eq!(retention_every(Some(s(3600)), None), RETENTION_EVERY);
        assert_eq!(retention_every(Some(s(3600)), Some(s(8))), s(2));
        assert_eq!(
            retention_every(Some(Duration::from_millis(1)), None),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn retention_is_queued_once_until_its_jobs_are_done_and_its_time_comes() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            keep_delivered: Some(Duration::from_secs(8)),
            keep_dead: None,
            ..crate::config::Config::default()
        };
        let mut s = crate::test_support::sled_session(dir.path(), config);
        let mut jobs = Jobs::default();
        jobs.retention(&s, 10_000, true);
        // Purge delivered, trim notices (alone: no orphan sweep).
        assert_eq!(jobs.queue.len(), 2);
        jobs.retention(&s, 20_000, true);
        assert_eq!(jobs.queue.len(), 2, "not again while its jobs run");
        let mut round = Round::default();
        for _ in 0..10 {
            jobs.run_chunk(&mut s, &mut round);
        }
        assert!(jobs.is_empty(), "an empty store's retention ends at once");
        jobs.retention(&s, 11_000, true);
        assert!(jobs.is_empty(), "not before a quarter of 8 s");
        jobs.retention(&s, 12_000, false);
        assert_eq!(jobs.queue.len(), 3, "and the orphan sweep with others");
    }
}
