//! Maintenance that touches many records — dead-lettering a subscription's
//! backlog, reviving the dead letter queue, purging delivered history —
//! runs in bounded chunks between rounds, so it never stalls publishing.
//! A damaged record on the way is quarantined and skipped, never the end of
//! the job.

use std::collections::HashMap;

use crate::delivery::DeliveryState;
use crate::error::Result;
use crate::ids::{EventId, SubscriptionId};
use crate::storage::IndexEntry;

use super::session::Session;

/// At most this many records are looked at per chunk.
pub(crate) const CHUNK: usize = 256;

/// A maintenance job and how far it got.
#[derive(Debug)]
pub(crate) struct Job {
    kind: Kind,
    /// The last index entry handled (entries before it were handled).
    after: Option<IndexEntry>,
    /// How many records it changed so far.
    pub(crate) count: u64,
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
}

impl Job {
    pub(crate) fn dead_letter_pending(sub: SubscriptionId, reason: &'static str) -> Job {
        Job::new(Kind::DeadLetterPending { sub, reason })
    }

    pub(crate) fn retry_dead(sub: Option<SubscriptionId>) -> Job {
        Job::new(Kind::RetryDead { sub })
    }

    pub(crate) fn purge_delivered(before_ms: u64) -> Job {
        Job::new(Kind::PurgeDelivered { before_ms })
    }

    fn new(kind: Kind) -> Job {
        Job {
            kind,
            after: None,
            count: 0,
        }
    }

    /// Does one chunk of the job. Returns `true` when the job is done.
    /// The caller commits after each chunk.
    pub(crate) fn step(&mut self, s: &mut Session) -> Result<bool> {
        let (state, sub) = match self.kind {
            Kind::DeadLetterPending { sub, .. } => (DeliveryState::Pending, Some(sub)),
            Kind::RetryDead { sub } => (DeliveryState::Dead, sub),
            Kind::PurgeDelivered { .. } => (DeliveryState::Delivered, None),
        };
        let entries: Vec<Result<IndexEntry>> = match (state, sub) {
            (DeliveryState::Pending, Some(sub)) => s.reader().due(sub).take(CHUNK + 1).collect(),
            _ => s
                .reader()
                .index(state, self.after)
                .take(CHUNK + 1)
                .collect(),
        };
        let more = entries.len() > CHUNK;
        let mut released: HashMap<EventId, u32> = HashMap::new();
        for entry in entries.into_iter().take(CHUNK) {
            let entry = entry?;
            self.after = Some(entry);
            if let Kind::PurgeDelivered { before_ms } = self.kind
                && entry.at >= before_ms
            {
                self.finish_chunk(s, released)?;
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
                Kind::PurgeDelivered { .. } => {
                    s.remove_delivery(&d)?;
                    *released.entry(d.event_id).or_default() += 1;
                }
            }
            self.count += 1;
        }
        self.finish_chunk(s, released)?;
        Ok(!more)
    }

    fn finish_chunk(&self, s: &mut Session, released: HashMap<EventId, u32>) -> Result<()> {
        // An event goes with its last delivery.
        for (event, gone) in released {
            s.release_event(event, gone)?;
        }
        Ok(())
    }
}
