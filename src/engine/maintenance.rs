//! Maintenance that touches many records — dead-lettering a subscription's
//! backlog, reviving the dead letter queue, purging delivered history and
//! dead letters, trimming notices, replaying a subscription's past —
//! runs in bounded chunks between rounds, so it never stalls publishing.
//! A damaged record on the way is quarantined and skipped, never the end of
//! the job.

use std::collections::HashMap;

use crate::delivery::DeliveryState;
use crate::error::Result;
use crate::ids::{DeliveryId, EventId, SubscriptionId};
use crate::notice::MAX_NOTICES;
use crate::storage::IndexEntry;

use super::changes::JobRequest;
use super::session::Session;
use crate::error::is_damage;

/// At most this many records are looked at per chunk.
pub(crate) const CHUNK: usize = 256;

/// A maintenance job and how far it got.
#[derive(Debug)]
pub(crate) struct Job {
    kind: Kind,
    /// The last index entry handled (entries before it were handled).
    after: Option<IndexEntry>,
    /// One subscription's dead letters: the last of its deliveries looked
    /// at (its own index, not every subscription's dead letters).
    after_delivery: Option<DeliveryId>,
    /// How many records it changed so far.
    pub(crate) count: u64,
    /// Started by the engine itself (retention), not by a caller.
    pub(crate) background: bool,
}

#[derive(Debug)]
enum Kind {
    DeadLetterPending {
        sub: SubscriptionId,
        reason: &'static str,
    },
    RetryDead {
        sub: Option<SubscriptionId>,
    },
    PurgeDelivered {
        before_ms: u64,
    },
    PurgeDead {
        before_ms: u64,
    },
    /// Drops the oldest unacknowledged notices beyond [`MAX_NOTICES`].
    TrimNotices,
    /// Removes events older than this that no delivery refers to (shared
    /// stores).
    SweepOrphans {
        before_ms: u64,
    },
    /// New deliveries of what `sub` was sent (or dead-lettered) from
    /// `next` (a delivery id, itself included unless `skip_next`) until
    /// `until_ms` (creation time).
    ReplaySince {
        sub: SubscriptionId,
        next: DeliveryId,
        skip_next: bool,
        until_ms: u64,
    },
}

impl Job {
    /// The job a change asked for.
    pub(crate) fn requested(r: JobRequest) -> Job {
        match r {
            JobRequest::DeadLetterPending { sub, reason } => Job::dead_letter_pending(sub, reason),
        }
    }

    pub(crate) fn dead_letter_pending(sub: SubscriptionId, reason: &'static str) -> Job {
        Job::new(Kind::DeadLetterPending { sub, reason })
    }

    pub(crate) fn retry_dead(sub: Option<SubscriptionId>) -> Job {
        Job::new(Kind::RetryDead { sub })
    }

    pub(crate) fn purge_delivered(before_ms: u64) -> Job {
        Job::new(Kind::PurgeDelivered { before_ms })
    }

    pub(crate) fn purge_dead(before_ms: u64) -> Job {
        Job::new(Kind::PurgeDead { before_ms })
    }

    pub(crate) fn trim_notices() -> Job {
        Job::new(Kind::TrimNotices)
    }

    pub(crate) fn sweep_orphans(before_ms: u64) -> Job {
        Job::new(Kind::SweepOrphans { before_ms })
    }

    /// Replays what `sub` was sent from `from_ms` until `until_ms`
    /// (delivery creation times).
    pub(crate) fn replay_since(sub: SubscriptionId, from_ms: u64, until_ms: u64) -> Job {
        Job::new(Kind::ReplaySince {
            sub,
            next: DeliveryId::first_at(from_ms),
            skip_next: false,
            until_ms,
        })
    }

    /// Marks the job as the engine's own (no caller waits for it).
    pub(crate) fn in_background(mut self) -> Job {
        self.background = true;
        self
    }

    fn new(kind: Kind) -> Job {
        Job {
            kind,
            after: None,
            after_delivery: None,
            count: 0,
            background: false,
        }
    }

    /// Does one chunk of the job. Returns `true` when the job is done.
    /// The caller commits after each chunk — also after an error, so what
    /// the chunk did before it is kept, with the events of the deliveries
    /// it removed released.
    pub(crate) fn step(&mut self, s: &mut Session) -> Result<bool> {
        let mut released: HashMap<EventId, u32> = HashMap::new();
        let r = self.step_records(s, &mut released);
        let finished = self.finish_chunk(s, released);
        let done = r?;
        finished?;
        Ok(done)
    }

    fn step_records(
        &mut self,
        s: &mut Session,
        released: &mut HashMap<EventId, u32>,
    ) -> Result<bool> {
        let (state, sub) = match self.kind {
            Kind::DeadLetterPending { sub, .. } => (DeliveryState::Pending, Some(sub)),
            Kind::RetryDead { sub: Some(sub) } => return self.retry_dead_of(s, sub),
            Kind::RetryDead { sub } => (DeliveryState::Dead, sub),
            Kind::PurgeDelivered { .. } => (DeliveryState::Delivered, None),
            Kind::PurgeDead { .. } => (DeliveryState::Dead, None),
            Kind::TrimNotices => return self.trim_notices_step(s),
            Kind::SweepOrphans { before_ms } => {
                s.sweep_orphan_events(before_ms);
                return Ok(true);
            }
            Kind::ReplaySince { .. } => return self.replay_step(s),
        };
        let mut halted: HashMap<SubscriptionId, Option<DeliveryId>> = HashMap::new();
        let entries: Vec<Result<IndexEntry>> = match (state, sub) {
            (DeliveryState::Pending, Some(sub)) => s.reader().due(sub).take(CHUNK + 1).collect(),
            _ => s
                .reader()
                .index(state, self.after)
                .take(CHUNK + 1)
                .collect(),
        };
        let more = entries.len() > CHUNK;
        for entry in entries.into_iter().take(CHUNK) {
            let entry = entry?;
            self.after = Some(entry);
            if let Kind::PurgeDelivered { before_ms } | Kind::PurgeDead { before_ms } = self.kind
                && entry.at >= before_ms
            {
                return Ok(true);
            }
            if sub.is_some_and(|want| want != entry.subscription) {
                continue;
            }
            let d = match s.delivery(entry.delivery) {
                Ok(Some(d)) if d.state == state => d,
                Ok(_) => {
                    s.drop_entry(state, entry);
                    continue;
                }
                Err(e) => {
                    if !s.on_read_error(state, entry, &e) {
                        return Err(e);
                    }
                    continue;
                }
            };
            match self.kind {
                Kind::DeadLetterPending { reason, .. } => s.dead_letter(&d, reason),
                Kind::RetryDead { .. } => {
                    s.revive(&d);
                }
                Kind::PurgeDead { .. } => {
                    // A FIFO subscription halted at this dead letter keeps
                    // it: it is what a human has to look at.
                    let at = match halted.get(&d.subscription_id) {
                        Some(at) => *at,
                        None => {
                            // A subscription that cannot be read may be
                            // halted here: keep the dead letter (`Some`
                            // of its own id) until it can be.
                            let at = match s.reader().subscription(d.subscription_id) {
                                Ok(r) => r.and_then(|r| r.halted_at),
                                Err(_) => Some(d.id),
                            };
                            halted.insert(d.subscription_id, at);
                            at
                        }
                    };
                    if at == Some(d.id) {
                        continue;
                    }
                    s.remove_delivery(&d)?;
                    *released.entry(d.event_id).or_default() += 1;
                }
                Kind::PurgeDelivered { .. } => {
                    s.remove_delivery(&d)?;
                    *released.entry(d.event_id).or_default() += 1;
                }
                Kind::TrimNotices | Kind::SweepOrphans { .. } | Kind::ReplaySince { .. } => {
                    unreachable!("handled above")
                }
            }
            self.count += 1;
        }
        Ok(!more)
    }

    /// One subscription's dead letters due again, a chunk of its
    /// deliveries at a time, read through its own index: the work follows
    /// that subscription's deliveries, not every subscription's dead
    /// letters (a tenant's call must not walk other tenants' data).
    fn retry_dead_of(&mut self, s: &mut Session, sub: SubscriptionId) -> Result<bool> {
        let ids: Vec<Result<DeliveryId>> = match self.after_delivery {
            None => s
                .reader()
                .deliveries_of(sub, false)
                .take(CHUNK + 1)
                .collect(),
            Some(after) => s
                .reader()
                .deliveries_of_from(sub, after)
                .filter(move |id| !matches!(id, Ok(i) if *i == after))
                .take(CHUNK + 1)
                .collect(),
        };
        let more = ids.len() > CHUNK;
        for id in ids.into_iter().take(CHUNK) {
            let id = id?;
            self.after_delivery = Some(id);
            if let Some(d) = s.delivery(id)?
                && d.state == DeliveryState::Dead
            {
                s.revive(&d);
                self.count += 1;
            }
        }
        Ok(!more)
    }

    /// Drops up to a chunk of the oldest notices beyond [`MAX_NOTICES`].
    fn trim_notices_step(&mut self, s: &mut Session) -> Result<bool> {
        let mut held = 0usize;
        for n in s.reader().notices().take(MAX_NOTICES + CHUNK + 1) {
            n?;
            held += 1;
        }
        let excess = held.saturating_sub(MAX_NOTICES);
        if excess == 0 {
            return Ok(true);
        }
        let oldest: Vec<_> = s
            .reader()
            .notices()
            .take(excess.min(CHUNK))
            .collect::<Result<_>>()?;
        tracing::warn!(
            dropped = oldest.len(),
            max = MAX_NOTICES,
            "too many unacknowledged notices: the oldest are dropped"
        );
        for n in oldest {
            s.remove_notice(n.id);
            self.count += 1;
        }
        Ok(excess <= CHUNK)
    }

    /// One chunk of a replay: a new delivery for each delivered or dead
    /// delivery of the subscription in the span (pending ones are still to
    /// be sent anyway).
    fn replay_step(&mut self, s: &mut Session) -> Result<bool> {
        let Kind::ReplaySince {
            sub,
            next,
            skip_next,
            until_ms,
        } = self.kind
        else {
            return Ok(true);
        };
        if s.reader().subscription(sub)?.is_none() {
            return Ok(true); // deleted meanwhile
        }
        let ids: Vec<Result<DeliveryId>> = s
            .reader()
            .deliveries_of_from(sub, next)
            .take(CHUNK + 1)
            .collect();
        let more = ids.len() > CHUNK;
        let mut last = None;
        for id in ids.into_iter().take(CHUNK) {
            let id = id?;
            if skip_next && id == next {
                continue;
            }
            last = Some(id);
            let d = match s.delivery(id) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                // Left to the listings and the dispatcher, which move it
                // aside with its index entry and counters.
                Err(e) if is_damage(&e) => continue,
                Err(e) => return Err(e),
            };
            if d.created_at.as_millis() >= until_ms {
                return Ok(true);
            }
            if d.state == DeliveryState::Pending {
                continue;
            }
            let Some(event) = s.reader().event(d.event_id)? else {
                continue; // purged with its deliveries
            };
            s.replay(&event, &[sub])?;
            self.count += 1;
        }
        match last {
            Some(id) => {
                self.kind = Kind::ReplaySince {
                    sub,
                    next: id,
                    skip_next: true,
                    until_ms,
                };
                Ok(!more)
            }
            None => Ok(true),
        }
    }

    fn finish_chunk(&self, s: &mut Session, released: HashMap<EventId, u32>) -> Result<()> {
        // (Released events of one chunk are counted together: one
        // reference update per event.)
        // An event goes with its last delivery.
        for (event, gone) in released {
            s.release_event(event, gone)?;
        }
        Ok(())
    }
}
