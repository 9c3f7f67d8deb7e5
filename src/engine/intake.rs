//! Intake: published events become stored events and deliveries. Keyed
//! publishes follow the idempotency-key protocol — the key's lock, then
//! the key's record: a key used within the window binds the event (same
//! name, payload and tenant) and stores nothing; otherwise the event is
//! stored and the key recorded. A publish whose key another writer holds
//! is parked and tried again until [`KEY_WAIT`] passes: the engine never
//! waits for another's lock. Expired keys are swept here too.

use std::time::{Duration, Instant};

use super::directory::Directory;
use super::round::Round;
use super::session::Session;
use super::{Done, Keyed};
use crate::error::is_damage;
use crate::error::{Error, Result, StoreError};
use crate::record::Event;

/// How long a keyed publish waits for its key's lock (as long as the
/// store's lock timeout).
pub(crate) const KEY_WAIT: Duration = Duration::from_secs(15);
/// How often parked keyed publishes try again.
pub(crate) const PARK_TICK: Duration = Duration::from_millis(5);

/// A keyed publish whose key another writer holds, waiting.
struct Parked {
    event: Event,
    tenant: Option<String>,
    key: Keyed,
    done: Option<Done>,
    until: Instant,
}

/// One published event, as the intake takes it.
pub(crate) struct Publish {
    pub(crate) event: Event,
    pub(crate) tenant: Option<String>,
    pub(crate) key: Option<Keyed>,
    pub(crate) done: Option<Done>,
}

/// The intake's own state: parked publishes and the key sweep's clock.
#[derive(Default)]
pub(crate) struct Intake {
    parked: Vec<Parked>,
    /// When to look for expired idempotency keys next (ms).
    next_key_sweep: u64,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("parked", &self.parked.len())
            .field("next_key_sweep", &self.next_key_sweep)
            .finish()
    }
}

fn store_error(m: String) -> Error {
    Error::Store(StoreError::message(m))
}

impl Intake {
    /// Whether keyed publishes wait for their key.
    pub(crate) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Stores a published event in the round being staged; its waiter (or,
    /// without one, the loss report) hears the result through `round`.
    /// `closing`: a publish whose key is held fails at once.
    pub(crate) fn publish(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        round: &mut Round,
        p: Publish,
        closing: bool,
    ) {
        self.publish_until(s, dir, round, p, None, closing);
    }

    /// Tries the parked keyed publishes again.
    pub(crate) fn retry_parked(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        round: &mut Round,
        closing: bool,
    ) {
        if self.parked.is_empty() {
            return;
        }
        round.flush_needed();
        for p in std::mem::take(&mut self.parked) {
            let publish = Publish {
                event: p.event,
                tenant: p.tenant,
                key: Some(p.key),
                done: p.done,
            };
            self.publish_until(s, dir, round, publish, Some(p.until), closing);
        }
    }

    fn publish_until(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        round: &mut Round,
        p: Publish,
        until: Option<Instant>,
        closing: bool,
    ) {
        let Publish {
            event,
            tenant,
            key,
            done,
        } = p;
        let locked = match &key {
            Some(k) => s.try_lock_key(&k.key),
            None => Ok(true),
        };
        let result = match locked {
            Ok(true) => match &key {
                Some(k) => keyed(s, dir, &event, tenant.as_deref(), k),
                None => fan_out(s, dir, &event, tenant.as_deref()).1,
            },
            Ok(false) => {
                let until = until.unwrap_or_else(|| Instant::now() + KEY_WAIT);
                if Instant::now() < until
                    && !closing
                    && let Some(key) = key
                {
                    self.parked.push(Parked {
                        event,
                        tenant,
                        key,
                        done,
                        until,
                    });
                    return;
                }
                Err(store_error(format!(
                    "the idempotency key of event {} is held by another writer (an instance publishing with it, or a publish_in transaction not yet ended) for over {KEY_WAIT:?}, or the bus is shutting down",
                    event.id
                )))
            }
            Err(e) => Err(e),
        };
        round.published(done.is_some());
        match done {
            Some(done) => {
                let r = round.take_loss().and(result);
                round.wait(done, r, true);
            }
            None => {
                if let Err(e) = result {
                    round.note_loss(format!("event {} ({}): {e}", event.id, event.name));
                }
            }
        }
    }

    /// Forgets idempotency keys older than the window, a chunk at a time
    /// (at most every 10 minutes once none are left).
    pub(crate) fn sweep_keys(&mut self, s: &mut Session, now: u64) {
        if now < self.next_key_sweep {
            return;
        }
        let window = u64::try_from(s.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(window);
        let chunk = super::maintenance::CHUNK;
        let found: Vec<Result<(String, u64)>> = s
            .reader()
            .idempotency_keys_before(cutoff)
            .take(chunk)
            .collect();
        let full = found.len() == chunk;
        for r in found {
            let r = r.and_then(|(key, at)| s.expire_idempotency_key(&key, at));
            if let Err(e) = r {
                tracing::error!(error = %e, "could not expire an idempotency key");
                s.quarantine_error(&e);
            }
        }
        self.next_key_sweep = if full {
            now
        } else {
            now.saturating_add(600_000)
        };
    }
}

/// An event with an idempotency key, its lock held: stored unless the key
/// was used within the window; `key.holder` gets the id of the event
/// holding it.
fn keyed(
    s: &mut Session,
    dir: &mut Directory,
    event: &Event,
    tenant: Option<&str>,
    key: &Keyed,
) -> Result<()> {
    let now = crate::ids::Timestamp::now().as_millis();
    let window = u64::try_from(s.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
    let held = match s.idempotency_key(&key.key) {
        Ok(held) => held,
        Err(e) if is_damage(&e) => {
            // A damaged key record is moved aside; the event is new.
            s.quarantine_error(&e);
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(first) = crate::message::key_holder(held, now, window) {
        // The key binds the event: a retry sends the same one. (One purged
        // by retention, or unreadable, cannot be compared: the key holds as
        // it is.)
        if let Ok(Some(held)) = s.keyed_event(first) {
            crate::message::key_binds(&key.key, first, &held, event, tenant)?;
        }
        let _ = key.holder.set(first);
        return Ok(());
    }
    // The key is recorded once the event is stored, even if some
    // subscription's damaged record was missed (reported below): a retry
    // with the key must not store it a second time.
    let (stored, result) = fan_out(s, dir, event, tenant);
    if stored {
        s.put_idempotency_key(&key.key, event, now, held.map(|(_, at)| at));
        let _ = key.holder.set(event.id);
    }
    result
}

/// Stores `event` with a delivery for each of its recipients (the fan-out
/// rule: [`Directory::recipients`]), also saying whether it was stored (to
/// every subscription found, or to none of them: `false`).
fn fan_out(
    s: &mut Session,
    dir: &mut Directory,
    event: &Event,
    tenant: Option<&str>,
) -> (bool, Result<()>) {
    let to = match dir.recipients(s, event, tenant) {
        Ok(to) => to,
        Err(e) => return (false, Err(e)),
    };
    if let Err(e) = s.publish(event, &to.subs) {
        return (false, Err(e));
    }
    tracing::trace!(event = %event.name, id = %event.id, deliveries = to.subs.len(), "event published");
    if to.missed.is_empty() {
        return (true, Ok(()));
    }
    (
        true,
        Err(store_error(format!(
            "not delivered to {} subscription(s) whose record is damaged (moved aside): {}",
            to.missed.len(),
            to.missed.join(", ")
        ))),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::Config;
    use crate::ids::EventId;
    use crate::test_support::{self, event};

    type Heard = Arc<Mutex<Vec<Result<()>>>>;

    fn session(dir: &std::path::Path) -> Session {
        test_support::sled_session(dir, Config::default())
    }

    fn subscribed(s: &mut Session, event: &str) {
        s.put_subscription(None, &test_support::subscription(&[event]));
        s.commit().unwrap();
    }

    /// Publishes `e` with `key` in a round of its own, as the loop does;
    /// returns what its waiter heard and the key's holder.
    fn publish(
        s: &mut Session,
        intake: &mut Intake,
        e: Event,
        key: &str,
    ) -> (Result<()>, Option<EventId>) {
        let heard: Heard = Arc::default();
        let told = heard.clone();
        let keyed = Keyed {
            key: format!("\0{key}"),
            holder: Arc::default(),
        };
        let holder = keyed.holder.clone();
        let mut round = Round::default();
        let mut dir = Directory::default();
        let p = Publish {
            event: e,
            tenant: None,
            key: Some(keyed),
            done: Some(Box::new(move |r| told.lock().unwrap().push(r))),
        };
        intake.publish(s, &mut dir, &mut round, p, false);
        let committed = s.commit();
        assert!(round.committed(committed).is_empty());
        round.flushed(&s.flush());
        round.finish();
        let r = heard.lock().unwrap().pop().expect("the waiter was told");
        (r, holder.get().copied())
    }

    #[test]
    fn a_key_stores_its_event_once_and_binds_name_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        subscribed(&mut s, "order.paid");
        let mut intake = Intake::default();
        let first = event("order.paid", r#"{"id":1}"#);
        let (r, holder) = publish(&mut s, &mut intake, first.clone(), "k1");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(holder, Some(first.id));
        assert_eq!(s.pending(), 1);
        // A retry (new id, same event): nothing stored, the first holds.
        let (r, holder) = publish(
            &mut s,
            &mut intake,
            event("order.paid", r#"{"id":1}"#),
            "k1",
        );
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(holder, Some(first.id));
        assert_eq!(s.pending(), 1);
        // Another payload under the key: refused, nothing stored.
        let (r, _) = publish(
            &mut s,
            &mut intake,
            event("order.paid", r#"{"id":2}"#),
            "k1",
        );
        assert!(
            matches!(r, Err(Error::IdempotencyKeyReused { .. })),
            "{r:?}"
        );
        assert_eq!(s.pending(), 1);
        // Another key: a second event.
        let second = event("order.paid", r#"{"id":2}"#);
        let (r, holder) = publish(&mut s, &mut intake, second.clone(), "k2");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(holder, Some(second.id));
        assert_eq!(s.pending(), 2);
        assert!(!intake.has_parked());
    }

    #[test]
    fn a_publish_without_a_waiter_that_fails_is_reported_to_the_next_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        subscribed(&mut s, "a");
        let mut intake = Intake::default();
        let mut round = Round::default();
        let mut dir = Directory::default();
        let first = event("a", "{}");
        let keyed = |k: &str| Keyed {
            key: format!("\0{k}"),
            holder: Arc::default(),
        };
        let p = |e: Event, k| Publish {
            event: e,
            tenant: None,
            key: Some(keyed(k)),
            done: None,
        };
        intake.publish(&mut s, &mut dir, &mut round, p(first, "k"), false);
        let committed = s.commit();
        round.committed(committed);
        assert!(round.take_loss().is_ok());
        // Same key, other payload, in a later round, nobody waiting.
        intake.publish(
            &mut s,
            &mut dir,
            &mut round,
            p(event("a", "[1]"), "k"),
            false,
        );
        let committed = s.commit();
        round.committed(committed);
        let lost = round.take_loss();
        assert!(lost.is_err(), "the second publish's failure is reported");
        assert!(round.take_loss().is_ok(), "once");
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn a_key_binds_its_event_within_the_round_that_stores_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        subscribed(&mut s, "a");
        let mut intake = Intake::default();
        let mut round = Round::default();
        let mut dir = Directory::default();
        let heard: Heard = Arc::default();
        let keyed = |holder: &crate::engine::KeyHolder| Keyed {
            key: "\0k".into(),
            holder: holder.clone(),
        };
        let first = event("a", "{}");
        let holders: Vec<crate::engine::KeyHolder> = (0..3).map(|_| Arc::default()).collect();
        // One round: the event, a retry of it, and another payload.
        for (e, holder) in [
            (first.clone(), &holders[0]),
            (event("a", "{}"), &holders[1]),
            (event("a", "[2]"), &holders[2]),
        ] {
            let told = heard.clone();
            let p = Publish {
                event: e,
                tenant: None,
                key: Some(keyed(holder)),
                done: Some(Box::new(move |r| told.lock().unwrap().push(r))),
            };
            intake.publish(&mut s, &mut dir, &mut round, p, false);
        }
        let committed = s.commit();
        round.committed(committed);
        round.flushed(&s.flush());
        round.finish();
        let heard = heard.lock().unwrap();
        assert!(heard[0].is_ok() && heard[1].is_ok(), "{heard:?}");
        assert!(
            matches!(heard[2], Err(Error::IdempotencyKeyReused { .. })),
            "compared with the event staged in the same round: {heard:?}"
        );
        assert_eq!(holders[0].get(), Some(&first.id));
        assert_eq!(holders[1].get(), Some(&first.id));
        assert_eq!(s.pending(), 1);
    }
}
