//! What an attempt's outcome changes besides its subscription's flow (the
//! dispatcher's part): the delivery (delivered, retried later, or dead,
//! by [`crate::retry::decide`]), the subscription's health (a WARN at
//! most once a minute, a recovery notice, auto-disable after failing for
//! the whole window), and its lifecycle (410 Gone disables it and
//! dead-letters its backlog; a dead letter halts a FIFO queue that halts).

use std::collections::HashMap;

use super::directory::Policy;
use super::maintenance::Job;
use super::round::Round;
use super::session::Session;
use crate::delivery::reason;
use crate::error::Result;
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::notice::NoticeKind;
use crate::record::Attempt;
use crate::retry::{Decision, decide};
use crate::sender::Outcome;

/// A success after at least this many failed attempts in a row is a
/// recovery notice.
const RECOVERY_AFTER: u64 = 3;
/// A subscription's failed attempts are logged at WARN at most this often.
const WARN_EVERY_MS: u64 = 60_000;
/// The WARN clock forgets every subscription when it holds this many.
const WARNED_MAX: usize = 4096;

/// The outcome room's own state: when each subscription's failure was
/// last logged at WARN (ms), and how many were not logged since.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    warned: HashMap<SubscriptionId, (u64, u64)>,
}

impl Outcomes {
    /// Records `o` in the round being staged; `policy` is its
    /// subscription's. Returns how many writes it staged.
    pub(crate) fn record(
        &mut self,
        s: &mut Session,
        round: &mut Round,
        policy: Policy,
        o: &Outcome,
    ) -> usize {
        // A FIFO queue's outcomes are flushed in their round: one lost in a
        // crash would send an acknowledged delivery again after later ones
        // (out of order), not merely twice.
        if policy.order.is_fifo() {
            round.flush_needed();
        }
        self.note_health(s, o.subscription, &o.attempt);
        let decision = decide(
            &s.config.retry_schedule,
            &o.attempt,
            o.retry_after,
            fastrand::f64(),
        );
        let before = s.staged_writes();
        let recorded = s.record_attempt(o.delivery, &o.attempt, &decision);
        let attempt_writes = s.staged_writes().saturating_sub(before);
        match recorded {
            Ok(true) => {
                if let Err(e) = deactivate(s, round, o.subscription) {
                    tracing::error!(subscription = %o.subscription, error = %e, "could not deactivate");
                }
            }
            Ok(false) if matches!(decision, Decision::Dead(_)) => {
                halt(s, o.subscription, o.delivery, policy);
            }
            Ok(false) => {}
            // The delivery stays pending as stored: it is sent again.
            Err(e) => {
                tracing::error!(delivery = %o.delivery, error = %e, "could not record a delivery attempt")
            }
        }
        // Only the attempt's own writes count: a disable or a halt changes
        // a subscription, which no deferred commit waits with.
        attempt_writes
    }

    /// Adds an attempt to its subscription's health: a failure is logged
    /// at WARN (at most once a minute per subscription, with how many
    /// were not logged); a success after a run of failures is a recovery
    /// notice; failing for the whole auto-disable window disables the
    /// subscription (its pending deliveries wait).
    fn note_health(&mut self, s: &mut Session, sub: SubscriptionId, attempt: &Attempt) {
        let (before, after) = s.note_attempt(sub, attempt);
        let now = Timestamp::now();
        if attempt.succeeded() {
            if before.consecutive_failures >= RECOVERY_AFTER {
                tracing::info!(subscription = %sub, failures = before.consecutive_failures, "subscription answers again");
                s.notice(NoticeKind::SubscriptionRecovered {
                    subscription: sub,
                    failures: before.consecutive_failures,
                });
            }
            self.warned.remove(&sub);
            return;
        }
        let reason = crate::health::failure_reason(attempt);
        let w = self.warned.entry(sub).or_insert((0, 0));
        if now.as_millis().saturating_sub(w.0) >= WARN_EVERY_MS {
            tracing::warn!(subscription = %sub, attempt = attempt.number, %reason, failures = after.consecutive_failures, not_logged = w.1, "delivery attempt failed");
            *w = (now.as_millis(), 0);
        } else {
            w.1 += 1;
        }
        if self.warned.len() > WARNED_MAX {
            self.warned.clear();
        }
        let Some(window) = s.config.auto_disable_after else {
            return;
        };
        if !after.failing_for(window, now) {
            return;
        }
        let since = after.failing_since.unwrap_or(now);
        let why = format!(
            "every attempt failed since {since} ({} in a row; last: {reason})",
            after.consecutive_failures
        );
        if let Err(e) = disable(s, sub, why) {
            tracing::error!(subscription = %sub, error = %e, "could not disable a failing subscription");
        }
    }
}

/// Disables an active subscription (`why` goes to its health and a
/// notice): no new deliveries, its pending ones wait. Returns whether it
/// was active.
fn disable(s: &mut Session, id: SubscriptionId, why: String) -> Result<bool> {
    s.lock_subscriptions()?;
    let Some(old) = s.subscription(id)? else {
        return Ok(false);
    };
    let Some(new) = crate::lifecycle::disable(&old, Timestamp::now()) else {
        return Ok(false);
    };
    tracing::warn!(subscription = %id, url = %crate::redact::url(&new.url), reason = %why, "subscription disabled; its pending deliveries wait until it is enabled again");
    s.put_subscription(Some(&old), &new);
    s.set_disabled(id, Some((new.modified_at, why.clone())));
    s.notice(NoticeKind::SubscriptionDisabled {
        subscription: id,
        reason: why,
    });
    Ok(true)
}

/// 410 Gone: the subscription is deactivated and its pending deliveries
/// die (in chunks, once the disable is committed).
fn deactivate(s: &mut Session, round: &mut Round, id: SubscriptionId) -> Result<()> {
    if disable(s, id, reason::GONE.to_owned())? {
        round.after_commit(Job::dead_letter_pending(id, reason::GONE), None);
    }
    Ok(())
}

/// A FIFO subscription that halts at dead letters halts at `dead`.
fn halt(s: &mut Session, sub: SubscriptionId, dead: DeliveryId, policy: Policy) {
    if !crate::lifecycle::halts(policy.order) {
        return;
    }
    let r = s.lock_subscriptions().and_then(|()| s.subscription(sub));
    match r {
        Ok(Some(old)) => {
            if let Some(new) = crate::lifecycle::halt(&old, dead, Timestamp::now()) {
                tracing::warn!(subscription = %sub, delivery = %dead, "FIFO subscription halted at a dead letter; resume it to go on");
                s.put_subscription(Some(&old), &new);
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(subscription = %sub, error = %e, "could not halt a FIFO subscription")
        }
    }
}
