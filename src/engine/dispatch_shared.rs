//! What dispatch does only on a store several instances share: polling
//! for the others' work, and deliveries claimed as they are stored (which
//! new deliveries to offer before a commit, taking in what the commit
//! claimed, sending those first, giving back what will not be sent; the
//! entries themselves are `OwnClaims`).

use std::collections::HashMap;
use std::time::Duration;

use super::{Dispatch, now_ms};
use crate::delivery::{Delivery, DeliveryState};
use crate::engine::directory::Directory;
use crate::engine::flow::Flow;
use crate::engine::session::Session;
use crate::ids::{DeliveryId, SubscriptionId};
use crate::storage::IndexEntry;

impl Dispatch {
    /// In a shared store other instances add deliveries this one does not
    /// see: look at what is pending there every `Config::shared_poll` (and
    /// when a notification says so: [`poll_now`](Self::poll_now)).
    pub(crate) fn poll(&mut self, s: &mut Session, dir: &mut Directory, now: u64) {
        if self.coord.alone() || now < self.next_poll {
            return;
        }
        let every = u64::try_from(s.config.shared_poll.as_millis()).unwrap_or(u64::MAX);
        self.next_poll = now.saturating_add(every);
        // Claimed as stored and never sent (a policy that changed
        // elsewhere, a host kept busy): given up before their lease ends.
        let stale = self
            .own
            .remove_stale(self.own_max_age, std::time::Instant::now());
        self.give_up_own(stale);
        // Other instances may have changed subscriptions, and the backlog.
        if let Err(e) = s.follow_pending() {
            tracing::warn!(error = %e, "could not count the shared store's pending deliveries");
        }
        dir.refresh(s);
        self.heads.clear();
        // A subscription another instance changed (a rate limit, FIFO,
        // deactivated): what this one claimed of it as stored goes back.
        let changed: Vec<SubscriptionId> = self
            .own
            .subs()
            .filter(|sub| !dir.cached_policy(*sub).is_some_and(|p| p.is_plain()))
            .collect();
        let mut dropped = Vec::new();
        for sub in changed {
            dropped.extend(self.own.remove(sub));
        }
        self.give_up_own(dropped);
        s.refresh_health_views();
        if !s.config.deliver {
            return;
        }
        match s.reader().pending_subscriptions() {
            Ok((due, _)) => {
                self.due_subs = due.into_iter().collect();
                s.rescan();
            }
            Err(e) => tracing::error!(error = %e, "could not poll the shared store"),
        }
        // Wake for the next poll.
        self.wake_at(self.next_poll);
    }

    /// Before a commit on a shared store: which of its new pending
    /// deliveries this instance claims as they are stored, to send them
    /// without a claim statement (and without reading them back). Only
    /// what it could send at once: due now, of a subscription with nothing
    /// else pending (an older delivery, a retry, is never overtaken), whose
    /// policy it knows to be plain (no rate limit, not FIFO, active),
    /// healthy and not paused, within the room its window leaves, and
    /// within the free senders.
    pub(crate) fn offer_claims(&mut self, s: &mut Session, dir: &Directory) {
        // A lease with little margin over the longest request would give
        // them up as soon as taken.
        if self.coord.alone()
            || !s.config.deliver
            || self.pool.is_none()
            || self.own_max_age < MIN_OWN_AGE
        {
            return;
        }
        let mut free = s
            .config
            .senders
            .saturating_sub(self.in_flight.len() + self.own.len());
        let now = now_ms();
        let per_subscription = s.config.per_subscription;
        let mut rooms: HashMap<SubscriptionId, usize> = HashMap::new();
        // A subscription with a due delivery left unclaimed stays so until
        // the next plan knows it (`apply`): a newer one must not overtake.
        let mut passed = std::mem::take(&mut self.passed_over);
        let this = &*self;
        s.claim_new(&mut |d: &Delivery| {
            if d.state != DeliveryState::Pending || IndexEntry::of(d).at > now {
                return false;
            }
            let sub = d.subscription_id;
            let room = rooms.entry(sub).or_insert_with(|| {
                if passed.contains(&sub) {
                    0
                } else {
                    this.claim_room(dir, sub, now, per_subscription)
                }
            });
            if *room == 0 || free == 0 {
                *room = 0;
                passed.insert(sub);
                return false;
            }
            *room -= 1;
            free -= 1;
            true
        });
        self.passed_over = passed;
    }

    /// How many new deliveries of `sub` this instance may claim as it
    /// stores them (see [`offer_claims`](Self::offer_claims)).
    fn claim_room(
        &self,
        dir: &Directory,
        sub: SubscriptionId,
        now: u64,
        per_subscription: usize,
    ) -> usize {
        if self.due_subs.contains_key(&sub) {
            return 0;
        }
        if !dir.cached_policy(sub).is_some_and(|p| p.is_plain()) {
            return 0;
        }
        let flow = self.flows.get(&sub).copied().unwrap_or_else(|| Flow {
            window: self.windows.get(&sub).copied().unwrap_or(0),
            ..Flow::default()
        });
        if flow.failing() || flow.paused_until > now {
            return 0;
        }
        per_subscription
            .min(flow.window())
            .saturating_sub(flow.in_flight)
            .saturating_sub(self.own.held(sub))
    }

    /// After a commit: what it stored claimed for this instance (see
    /// [`offer_claims`](Self::offer_claims)).
    pub(crate) fn claimed_new(&mut self, s: &mut Session) {
        let entries = s.take_new_claims();
        if !entries.is_empty() {
            self.own.add(entries, std::time::Instant::now());
        }
    }

    /// Gives up claims taken as deliveries were stored that will not be
    /// sent now: they are due again for every instance, this one too.
    pub(super) fn give_up_own(&mut self, mut entries: Vec<IndexEntry>) {
        // One sent meanwhile by another path (a FIFO head) keeps its
        // claim: its request runs under it.
        entries.retain(|e| !self.busy(e.delivery));
        if entries.is_empty() {
            return;
        }
        let ids: Vec<DeliveryId> = entries.iter().map(|e| e.delivery).collect();
        if let Err(e) = self.coord.release(&ids) {
            // They are claimed until their lease runs out, then due again.
            tracing::warn!(error = %e, "could not give up claims on deliveries not sent; they wait for their lease");
        }
        for e in entries {
            let at = self.due_subs.entry(e.subscription).or_insert(e.at);
            *at = (*at).min(e.at);
        }
        // Planned again soon, not at the next poll.
        self.wake_at(now_ms());
    }

    /// Gives up every claim taken as deliveries were stored and not sent
    /// (the bus closes).
    pub(crate) fn give_up_all_own(&mut self) {
        let all = self.own.remove_all();
        self.give_up_own(all);
    }

    /// Sends up to `room` of what this instance claimed of `sub` as it
    /// stored it (giving up those that waited too long). `None` if it holds
    /// none: its due work is to be claimed.
    pub(super) fn send_own(
        &mut self,
        s: &mut Session,
        dir: &mut Directory,
        sub: SubscriptionId,
        room: usize,
    ) -> Option<bool> {
        if self.own.held(sub) == 0 {
            return None;
        }
        let (mut batch, stale) =
            self.own
                .take(sub, room, self.own_max_age, std::time::Instant::now());
        self.give_up_own(stale);
        // Never a second request for one in flight (taken meanwhile as a
        // FIFO queue's head, say).
        batch.retain(|e| !self.busy(e.delivery));
        if batch.is_empty() {
            return None;
        }
        Some(self.send(s, dir, sub, batch))
    }
}

/// Below this [`own_max_age`], nothing is claimed as it is stored.
const MIN_OWN_AGE: Duration = Duration::from_millis(250);

/// How long a delivery claimed as it was stored may wait for a sender:
/// half of what its lease leaves beyond the longest request (a claim must
/// outlast the request it is for).
pub(super) fn own_max_age(config: &crate::config::Config) -> Duration {
    let longest = config
        .connect_timeout
        .saturating_add(config.request_timeout);
    config
        .claim_lease()
        .map_or(Duration::ZERO, |lease| lease.saturating_sub(longest) / 2)
}
