//! The session's idempotency keys: what this round staged, else what is
//! committed; their locks between instances and their expiry.

use super::Session;
use crate::error::{Result, is_damage};
use crate::ids::EventId;
use crate::record::Event;

impl Session {
    /// The event that holds an idempotency key, and since when (ms): as
    /// staged in this round, else as committed.
    pub(crate) fn idempotency_key(&self, key: &str) -> Result<Option<(EventId, u64)>> {
        match self.keys.get(key) {
            Some(held) => Ok(Some(*held)),
            None => self.w.reader().idempotency_key(key),
        }
    }

    /// `key` is held by `event` from `at` (ms) on, replacing a use at
    /// `old_at`.
    pub(crate) fn put_idempotency_key(
        &mut self,
        key: &str,
        event: &Event,
        at: u64,
        old_at: Option<u64>,
    ) {
        self.w.put_idempotency_key(key, event.id, at, old_at);
        self.keys.insert(key.to_owned(), (event.id, at));
        self.keyed_events.insert(event.id, event.clone());
    }

    /// The event holding an idempotency key: as staged in this round, else
    /// as stored.
    pub(crate) fn keyed_event(&self, id: EventId) -> Result<Option<Event>> {
        match self.keyed_events.get(&id) {
            Some(e) => Ok(Some(e.clone())),
            None => self.w.reader().event(id),
        }
    }

    /// Forgets `key` if it is still the use at `at`.
    pub(crate) fn expire_idempotency_key(&mut self, key: &str, at: u64) -> Result<()> {
        let current = match self.idempotency_key(key) {
            Ok(held) => held.map(|(_, at)| at),
            // A damaged record goes; so does its time entry below.
            Err(e) if is_damage(&e) => {
                self.quarantine_error(&e);
                None
            }
            Err(e) => return Err(e),
        };
        // The time entry always goes (a renewed key has a newer one); the
        // key itself only if this is still its use.
        self.w.remove_idempotency_key(key, at, current == Some(at));
        if current == Some(at) {
            self.keys.remove(key);
        }
        Ok(())
    }

    /// Takes the lock of an idempotency key until this round commits, if
    /// no other instance holds it (see `Writer::try_lock_key`).
    pub(crate) fn try_lock_key(&mut self, key: &str) -> Result<bool> {
        self.w.try_lock_key(key)
    }
}
