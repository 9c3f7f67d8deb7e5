//! Loading a due delivery for a sender: its record, its subscription (as
//! the [`Directory`] knows it) and its event's payload (from a cache of
//! recent payloads). A delivery that cannot be sent — its subscription is
//! gone, its event is missing, a record it needs is damaged — is finished
//! here instead (dead-lettered, or its stale index entry dropped).

use std::collections::HashMap;

use super::directory::Directory;
use super::session::Session;
use crate::delivery::{self, Delivery, DeliveryState, reason};
use crate::error::is_damage;
use crate::error::{Error, Result};
use crate::ids::EventId;
use crate::sender;
use crate::storage::IndexEntry;

/// The payload cache is cleared when it holds more than this many bytes.
const PAYLOAD_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// What was sent of recent events, capped by bytes.
#[derive(Default)]
pub(crate) struct Payloads {
    map: HashMap<EventId, sender::Body>,
    bytes: usize,
}

impl Payloads {
    /// The payload of event `id` (`None`: the event is gone).
    fn get(&mut self, s: &Session, id: EventId) -> Result<Option<sender::Body>> {
        if let Some(p) = self.map.get(&id) {
            return Ok(Some(p.clone()));
        }
        let Some(event) = s.reader().event(id)? else {
            return Ok(None);
        };
        if self.bytes + event.payload.len() > PAYLOAD_CACHE_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        let p = sender::Body {
            payload: event.payload.into(),
            traceparent: event.traceparent.map(Into::into),
        };
        self.bytes += p.payload.len();
        self.map.insert(id, p.clone());
        Ok(Some(p))
    }
}

/// What became of a due delivery. (Returned by value and moved once, into
/// the sender's queue: boxing the job would cost an allocation per
/// delivery for nothing.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prepared {
    /// Ready for a sender.
    Send(sender::Job),
    /// Finished instead of sent (or its subscription is inactive: the next
    /// pass skips it by its policy).
    Finished,
    /// A read failed for a reason that may pass: look again soon.
    Later,
}

/// Loads what the due delivery `entry` needs (see the module docs).
pub(crate) fn job(
    s: &mut Session,
    dir: &mut Directory,
    payloads: &mut Payloads,
    entry: IndexEntry,
) -> Prepared {
    let d = match s.delivery(entry.delivery) {
        Ok(Some(d)) if d.state == DeliveryState::Pending => d,
        Ok(_) => {
            s.drop_entry(DeliveryState::Pending, entry);
            return Prepared::Finished;
        }
        Err(e) if s.on_read_error(DeliveryState::Pending, entry, &e) => return Prepared::Finished,
        Err(_) => return Prepared::Later,
    };
    let sub = match dir.subscription(s, d.subscription_id) {
        Ok(Some(r)) if r.active => r,
        // Paused while inactive: the next pass skips it by its policy.
        Ok(Some(_)) => {
            dir.forget_policy(d.subscription_id);
            return Prepared::Finished;
        }
        Ok(None) => return dead_letter(s, &d, reason::DELETED),
        Err(e) => return unreadable(s, &d, "subscription", &e),
    };
    let payload = match payloads.get(s, d.event_id) {
        Ok(Some(p)) => p,
        Ok(None) => return dead_letter(s, &d, reason::EVENT_MISSING),
        Err(e) => return unreadable(s, &d, "event", &e),
    };
    let attempt = delivery::next_attempt_number(&d);
    let mut job = sender::Job::to(&sub, d.id, d.event_id, d.event_name, attempt, payload);
    job.sequence = d.sequence;
    Prepared::Send(job)
}

fn dead_letter(s: &mut Session, d: &Delivery, why: &str) -> Prepared {
    s.dead_letter(d, why);
    Prepared::Finished
}

/// A record a delivery needs could not be read: a damaged one
/// dead-letters the delivery; any other error may pass, so it is looked at
/// again soon.
fn unreadable(s: &mut Session, d: &Delivery, what: &str, e: &Error) -> Prepared {
    if is_damage(e) {
        return dead_letter(s, d, &format!("{what} record is damaged: {e}"));
    }
    tracing::error!(delivery = %d.id, error = %e, what, "could not read a record; will try again");
    Prepared::Later
}
