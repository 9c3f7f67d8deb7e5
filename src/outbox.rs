//! The outbox: deliveries by state, their attempts, and the dead letter
//! queue.

use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::record::{Attempt, Delivery, DeliveryState, Event, OutboxStats};
use crate::store::{IndexEntry, Store};

/// The delivery outbox of a [`Bus`]: see [`Bus::outbox`].
///
/// Listings are lazy iterators over the store: they hold one record at a
/// time, so a large outbox is never loaded into memory. Take what you need
/// (`.take(50)`) and resume from a cursor with
/// [`list_after`](Outbox::list_after).
#[derive(Debug, Clone, Copy)]
pub struct Outbox<'a> {
    bus: &'a Bus,
}

/// A lazy listing of deliveries, in the order of their state index:
/// pending by subscription and then next attempt time, delivered and dead by
/// finish time.
pub struct Deliveries {
    store: Store,
    state: DeliveryState,
    entries: Box<dyn Iterator<Item = Result<IndexEntry>> + Send>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Iterator for Deliveries {
    type Item = Result<Delivery>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.entries.next()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            match self.store.delivery(entry.delivery) {
                // The index and the record are written in one batch; a
                // mismatch means it changed state since the listing began.
                Ok(Some(d)) if d.state == self.state => return Some(Ok(d)),
                Ok(_) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl<'a> Outbox<'a> {
    pub(crate) fn new(bus: &'a Bus) -> Self {
        Outbox { bus }
    }

    /// Counts of deliveries by state, as of the dispatcher's last write.
    pub fn stats(&self) -> Result<OutboxStats> {
        self.bus.store().stats()
    }

    /// Pending deliveries, by subscription and then soonest due first.
    pub fn pending(&self) -> Deliveries {
        self.list(DeliveryState::Pending)
    }

    /// Dead deliveries (the dead letter queue), oldest first.
    pub fn dead(&self) -> Deliveries {
        self.list(DeliveryState::Dead)
    }

    /// Delivered deliveries, oldest first.
    pub fn delivered(&self) -> Deliveries {
        self.list(DeliveryState::Delivered)
    }

    /// Deliveries in `state`, in index order.
    pub fn list(&self, state: DeliveryState) -> Deliveries {
        let store = self.bus.store().clone();
        let entries = Box::new(store.index(state));
        Deliveries {
            store,
            state,
            entries,
        }
    }

    /// Deliveries in `state` that come after `cursor` (the last delivery of
    /// the previous page) in index order.
    pub fn list_after(&self, state: DeliveryState, cursor: &Delivery) -> Deliveries {
        let store = self.bus.store().clone();
        let entries = Box::new(store.index_after(state, IndexEntry::of(cursor, state)));
        Deliveries {
            store,
            state,
            entries,
        }
    }

    /// Every delivery, in creation order, whatever its state.
    pub fn all(&self) -> impl Iterator<Item = Result<Delivery>> + use<> {
        self.bus.store().deliveries(None)
    }

    /// Every delivery created after `cursor` (the last one of the previous
    /// page), in creation order: a seek, not a scan from the start.
    pub fn all_after(&self, cursor: DeliveryId) -> impl Iterator<Item = Result<Delivery>> + use<> {
        self.bus.store().deliveries(Some(cursor))
    }

    /// The deliveries of one subscription, in creation order or newest
    /// first.
    pub fn for_subscription(
        &self,
        subscription: SubscriptionId,
        newest_first: bool,
    ) -> impl Iterator<Item = Result<Delivery>> + use<> {
        let store = self.bus.store().clone();
        store
            .deliveries_of(subscription, newest_first)
            .filter_map(move |id| match id {
                Ok(id) => store.delivery(id).transpose(),
                Err(e) => Some(Err(e)),
            })
    }

    /// One delivery.
    pub fn get(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        self.bus.store().delivery(id)
    }

    /// The stored event (name and exact JSON body) of a delivery.
    pub fn event(&self, id: EventId) -> Result<Option<Event>> {
        self.bus.store().event(id)
    }

    /// Every attempt of a delivery, oldest first.
    pub fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>> {
        self.bus.store().attempts(id)
    }

    /// Makes a dead delivery due now, for one more attempt (if that fails
    /// too it returns to the dead letter queue). Errors with
    /// [`Error::NotDead`] for other states and
    /// [`Error::DeliveryNotFound`] for unknown ids.
    pub fn retry(&self, id: DeliveryId) -> Result<Delivery> {
        self.bus.write(move |w| {
            let old = w.store().delivery(id)?.ok_or(Error::DeliveryNotFound(id))?;
            if old.state != DeliveryState::Dead {
                return Err(Error::NotDead {
                    id,
                    state: old.state,
                });
            }
            let new = revive(&old);
            w.put_delivery(Some(&old), &new);
            Ok(new)
        })
    }

    /// Makes every dead delivery due now (of one subscription, or of all
    /// with `None`). Returns how many. Deliveries of a deleted or inactive
    /// subscription die again at once.
    pub fn retry_all_dead(&self, subscription: Option<SubscriptionId>) -> Result<u64> {
        self.bus.write(move |w| {
            let mut n = 0;
            for entry in w.store().index(DeliveryState::Dead) {
                let entry = entry?;
                if subscription.is_some_and(|s| s != entry.subscription) {
                    continue;
                }
                let Some(old) = w.store().delivery(entry.delivery)? else {
                    continue;
                };
                if old.state == DeliveryState::Dead {
                    w.put_delivery(Some(&old), &revive(&old));
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Removes delivered deliveries (and their attempts) that finished
    /// before `before`, and each event once its last delivery is gone.
    /// Returns how many deliveries.
    pub fn purge_delivered_before(&self, before: Timestamp) -> Result<u64> {
        self.bus.write(move |w| {
            let mut n = 0;
            let mut released: std::collections::HashMap<EventId, u32> = Default::default();
            for entry in w.store().index(DeliveryState::Delivered) {
                let entry = entry?;
                if entry.at >= before.as_millis() {
                    break;
                }
                let Some(old) = w.store().delivery(entry.delivery)? else {
                    continue;
                };
                if old.state == DeliveryState::Delivered {
                    w.remove_delivery(&old)?;
                    *released.entry(old.event_id).or_default() += 1;
                    n += 1;
                }
            }
            // An event goes with its last delivery.
            for (event, gone) in released {
                match w.store().event_refs(event)? {
                    Some(refs) if refs <= gone => w.batch().remove_event(event),
                    Some(refs) => w.batch().put_event_refs(event, refs - gone),
                    None => {} // counted by no older store: keep it
                }
            }
            Ok(n)
        })
    }

    /// Records the dispatcher moved aside as damaged (see
    /// [`OutboxStats::quarantined`]): each one's original key in hex and its
    /// raw bytes, for inspection or hand repair. They are never delivered.
    pub fn quarantined(&self) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + use<> {
        self.bus
            .store()
            .quarantined()
            .map(|r| r.map(|(k, v)| (hex::encode(k), v)))
    }

    /// The store's size on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.bus.store().size_on_disk()
    }
}

fn revive(old: &Delivery) -> Delivery {
    let mut new = old.clone();
    new.state = DeliveryState::Pending;
    new.next_attempt_at = Some(Timestamp::now());
    new.finished_at = None;
    new
}
