//! The heads of FIFO queues: a FIFO subscription sends its oldest pending
//! delivery alone, and the next only once that one's outcome is committed.
//! Alone on its store, the engine remembers each queue's last head (every
//! older delivery is finished) and walks on from it; with other instances
//! ids do not come in commit order, so the head is looked up afresh.

use std::collections::HashMap;

use super::session::Session;
use crate::delivery::DeliveryState;
use crate::error::Result;
use crate::error::is_damage;
use crate::ids::{DeliveryId, SubscriptionId};
use crate::storage::IndexEntry;

/// FIFO subscriptions' oldest delivery not known to be finished.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    heads: HashMap<SubscriptionId, DeliveryId>,
}

impl Heads {
    /// Forgets `sub`'s head (it changed, or a dead letter was revived and
    /// may be older).
    pub(crate) fn forget(&mut self, sub: SubscriptionId) {
        self.heads.remove(&sub);
    }

    pub(crate) fn clear(&mut self) {
        self.heads.clear();
    }

    /// The head of `sub`'s queue: its oldest pending delivery, `None` if
    /// it has none. `remember`: walk on from the last head (the engine
    /// writes the store alone).
    pub(crate) fn head(
        &mut self,
        s: &mut Session,
        sub: SubscriptionId,
        remember: bool,
    ) -> Result<Option<IndexEntry>> {
        let found = match self.heads.get(&sub).copied().filter(|_| remember) {
            Some(from) => walk(s, sub, from)?,
            None => oldest(s, sub)?,
        };
        if let Some(e) = found {
            self.heads.insert(sub, e.delivery);
        }
        Ok(found)
    }
}

/// The oldest of `sub`'s pending deliveries. A damaged index entry is moved
/// aside, not met again.
fn oldest(s: &mut Session, sub: SubscriptionId) -> Result<Option<IndexEntry>> {
    let mut min: Option<IndexEntry> = None;
    let entries = s.reader().due(sub);
    for e in entries {
        match e {
            Ok(e) => {
                if min.is_none_or(|m| e.delivery < m.delivery) {
                    min = Some(e);
                }
            }
            Err(e) if is_damage(&e) => s.quarantine_error(&e),
            Err(e) => return Err(e),
        }
    }
    Ok(min)
}

/// The oldest pending delivery of `sub` from `from` on. A delivery record
/// that does not decode is quarantined on the way (if it is pending) and
/// skipped, so it cannot stall the queue.
fn walk(s: &mut Session, sub: SubscriptionId, from: DeliveryId) -> Result<Option<IndexEntry>> {
    let ids: Vec<Result<DeliveryId>> = s.reader().deliveries_of_from(sub, from).collect();
    for id in ids {
        let id = match id {
            Ok(id) => id,
            Err(e) if is_damage(&e) => {
                s.quarantine_error(&e);
                continue;
            }
            Err(e) => return Err(e),
        };
        match s.delivery(id) {
            Ok(Some(d)) if d.state == DeliveryState::Pending => {
                return Ok(Some(IndexEntry::of(&d)));
            }
            Ok(_) => {}
            Err(e) if is_damage(&e) => {
                // Its pending-index entry, if it is pending: quarantined
                // with it, so the counters stay right.
                let entry = s
                    .reader()
                    .due(sub)
                    .filter_map(Result::ok)
                    .find(|x| x.delivery == id);
                if let Some(entry) = entry {
                    s.on_read_error(DeliveryState::Pending, entry, &e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}
