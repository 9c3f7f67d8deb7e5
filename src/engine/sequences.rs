//! `X-Webhook-Sequence` numbers: each subscription's deliveries are
//! numbered 1, 2, 3, … in the order they are created. Alone on its store
//! the engine numbers them (a counter per subscription, written once per
//! round); on a store that numbers deliveries itself (several instances
//! number) a new delivery is staged with 0 and gets its number when the
//! store commits it.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result, is_damage};
use crate::ids::SubscriptionId;
use crate::storage::Reader;

/// The engine's numbering (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Sequences {
    /// The store numbers new deliveries at commit.
    by_store: bool,
    /// The last number given per subscription, as far as known.
    last: HashMap<SubscriptionId, u64>,
    /// Those not written yet.
    dirty: HashSet<SubscriptionId>,
}

impl Sequences {
    pub(crate) fn new(by_store: bool) -> Sequences {
        Sequences {
            by_store,
            ..Sequences::default()
        }
    }

    /// The numbers of one new delivery for each subscription in `subs`.
    /// A counter that cannot be read numbers nothing (and so stores
    /// nothing of the event); a damaged one is counted again from the
    /// subscription's newest deliveries, and its error is pushed to
    /// `damaged` (for the caller to move the record aside).
    pub(crate) fn next(
        &mut self,
        r: &dyn Reader,
        subs: &[SubscriptionId],
        damaged: &mut Vec<Error>,
    ) -> Result<Vec<(SubscriptionId, u64)>> {
        if self.by_store {
            return Ok(subs.iter().map(|&sub| (sub, 0)).collect());
        }
        let mut numbered = Vec::with_capacity(subs.len());
        for &sub in subs {
            let last = match self.last.get(&sub) {
                Some(n) => *n,
                None => match r.sequence(sub) {
                    Ok(n) => n,
                    Err(e) if is_damage(&e) => {
                        damaged.push(e);
                        last_sequence_of(r, sub)?
                    }
                    Err(e) => return Err(e),
                },
            };
            numbered.push((sub, last.saturating_add(1)));
        }
        for &(sub, next) in &numbered {
            self.last.insert(sub, next);
            self.dirty.insert(sub);
        }
        Ok(numbered)
    }

    /// `sub` was removed (its counter goes with it).
    pub(crate) fn forget(&mut self, sub: SubscriptionId) {
        self.last.remove(&sub);
        self.dirty.remove(&sub);
    }

    /// The counters to write with this round.
    pub(crate) fn take_dirty(&mut self) -> Vec<(SubscriptionId, u64)> {
        let dirty: Vec<SubscriptionId> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|sub| self.last.get(&sub).map(|&n| (sub, n)))
            .collect()
    }

    /// The round was not written: the counters in the store are the truth.
    pub(crate) fn forget_all(&mut self) {
        self.last.clear();
    }
}

/// The highest sequence number among the newest deliveries of `sub` (a
/// counter rebuilt after damage; purged history may hide higher ones,
/// which only the newest can have).
fn last_sequence_of(r: &dyn Reader, sub: SubscriptionId) -> Result<u64> {
    let mut last = 0;
    for id in r.deliveries_of(sub, true).take(64) {
        if let Ok(Some(d)) = r.delivery(id?) {
            last = last.max(d.sequence);
        }
    }
    tracing::warn!(subscription = %sub, last, "damaged sequence counter rebuilt");
    Ok(last)
}
