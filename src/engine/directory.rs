//! What the engine knows of subscriptions between rounds: their records,
//! who is indexed under an event name, and the delivery policy the
//! dispatcher gates on — read through the session's reader and cached
//! until the subscription changes here (the session's [`Changes`]); on a
//! shared store, where other instances change them too, each poll reads
//! the cached ones afresh at once ([`Directory::refresh`]). Also the
//! fan-out rule: which subscriptions an event goes to.
//!
//! [`Changes`]: super::changes::Changes

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::session::Session;
use crate::error::Result;
use crate::ids::SubscriptionId;
use crate::policy::{DeliveryOrder, RateLimit};
use crate::record::Event;
use crate::storage::SubscriptionRecord;

/// A cache is cleared when it holds this many.
pub(crate) const CACHE_SIZE: usize = 4096;

/// A poll of a shared store reads afresh the fan-out of event names
/// published this recently, and forgets the others (each is read again
/// when next published): the poll's read follows the names in use, not
/// every name ever published.
const FANOUT_KEPT_FOR: Duration = Duration::from_secs(10);

/// What the dispatcher needs to know of a subscription's policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) rate: Option<RateLimit>,
    pub(crate) order: DeliveryOrder,
    /// A FIFO subscription halted at a dead letter.
    pub(crate) halted: bool,
    /// Inactive (deactivated, disabled): its pending deliveries wait.
    pub(crate) inactive: bool,
}

impl Policy {
    /// No rate limit, not FIFO, active: its deliveries may go in any
    /// order, as soon as they are due.
    pub(crate) fn is_plain(&self) -> bool {
        self.rate.is_none() && !self.order.is_fifo() && !self.halted && !self.inactive
    }

    /// The policy a stored subscription record says.
    pub(crate) fn of(r: &SubscriptionRecord) -> Policy {
        Policy {
            rate: r.rate_limit,
            order: r.order,
            halted: r.halted_at.is_some() && r.order.is_fifo(),
            inactive: !r.active,
        }
    }
}

/// Who an event goes to: the subscriptions found, and a line for each one
/// whose record could not be read (moved aside as damaged).
#[derive(Debug, Default)]
pub(crate) struct Recipients {
    pub(crate) subs: Vec<SubscriptionId>,
    pub(crate) missed: Vec<String>,
}

/// The subscription caches (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// Subscriptions as last read.
    subs: HashMap<SubscriptionId, Arc<SubscriptionRecord>>,
    /// Who is indexed under an event name, as last read, and when the
    /// name was last published.
    fanout: HashMap<String, (Arc<[SubscriptionId]>, Instant)>,
    /// The delivery policy of subscriptions met lately.
    policies: HashMap<SubscriptionId, Policy>,
}

impl Directory {
    /// Forgets what is known of `sub` (it changed).
    pub(crate) fn forget(&mut self, sub: SubscriptionId) {
        self.subs.remove(&sub);
        self.policies.remove(&sub);
        self.fanout.clear();
    }

    /// Forgets `sub`'s policy only (it is read again at the next look).
    pub(crate) fn forget_policy(&mut self, sub: SubscriptionId) {
        self.policies.remove(&sub);
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.subs.clear();
        self.fanout.clear();
        self.policies.clear();
    }

    /// Reads the cached subscriptions afresh, all at once (other instances
    /// may have changed or deleted them): one query on a shared store,
    /// instead of a look per subscription when it is next met. One that is
    /// gone or damaged is forgotten (a look at it alone finds out).
    /// Everything is forgotten if the read fails. The fan-out index (others
    /// may have added subscriptions) is read afresh too, for the event
    /// names published lately, in one more query
    /// ([`refresh_fanout`](Self::refresh_fanout)).
    pub(crate) fn refresh(&mut self, s: &Session) {
        self.refresh_fanout(s);
        let mut ids: Vec<SubscriptionId> = self
            .subs
            .keys()
            .chain(self.policies.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        match s.reader().subscriptions_of(&ids) {
            Ok(found) => {
                self.subs.clear();
                self.policies.clear();
                for r in found {
                    self.policies.insert(r.id, Policy::of(&r));
                    self.subs.insert(r.id, Arc::new(r));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not read cached subscriptions at once; they are read one by one");
                self.clear();
            }
        }
    }

    /// Reads who is indexed under each event name published in the last
    /// [`FANOUT_KEPT_FOR`] afresh, in one read where the store has one
    /// ([`Reader::subscribers_of_each`]), and forgets the other names;
    /// else, or if the read fails, forgets them all (each is read again
    /// when its event is next published). Without this, an event name
    /// published less often than the poll would cost a round trip on the
    /// engine thread before every commit of it.
    ///
    /// [`Reader::subscribers_of_each`]: crate::storage::Reader::subscribers_of_each
    fn refresh_fanout(&mut self, s: &Session) {
        if self.fanout.is_empty() {
            return;
        }
        let now = Instant::now();
        let kept: Vec<(String, Instant)> = self
            .fanout
            .drain()
            .filter(|(_, (_, used))| now.saturating_duration_since(*used) <= FANOUT_KEPT_FOR)
            .map(|(name, (_, used))| (name, used))
            .collect();
        if kept.is_empty() {
            return;
        }
        let refs: Vec<&str> = kept.iter().map(|(name, _)| name.as_str()).collect();
        match s.reader().subscribers_of_each(&refs) {
            Ok(Some(lists)) if lists.len() == kept.len() => {
                self.fanout = kept
                    .into_iter()
                    .zip(lists)
                    .map(|((name, used), found)| (name, (found.ids.into(), used)))
                    .collect();
            }
            Ok(_) => self.fanout.clear(),
            Err(e) => {
                tracing::debug!(error = %e, "could not read the fan-out index at once; each event name is read again when next published");
                self.fanout.clear();
            }
        }
    }

    /// The cached policy of `sub`, if it was looked at since it changed.
    pub(crate) fn cached_policy(&self, sub: SubscriptionId) -> Option<Policy> {
        self.policies.get(&sub).copied()
    }

    /// Drops what the caches hold of subscriptions changed in the round
    /// being staged (so the very next publish sees them).
    fn sync(&mut self, s: &Session) {
        if s.changed_subscriptions().is_empty() {
            return;
        }
        self.fanout.clear();
        for id in s.changed_subscriptions() {
            self.subs.remove(id);
        }
    }

    /// The fan-out rule: the active subscriptions that take `event`
    /// published for `tenant` (see [`SubscriptionRecord::takes`]). A
    /// subscription whose record is damaged is moved aside and named in
    /// [`Recipients::missed`]. An error: the index could not be read.
    pub(crate) fn recipients(
        &mut self,
        s: &mut Session,
        event: &Event,
        tenant: Option<&str>,
    ) -> Result<Recipients> {
        let app_events_to_tenants = s.config.tenants_receive_app_events;
        let ids = self.subscribers_of(s, &event.name)?;
        // Those not cached, at once (one query on a shared store).
        let missing: Vec<SubscriptionId> = ids
            .iter()
            .filter(|id| !self.subs.contains_key(id))
            .copied()
            .collect();
        self.load(s, missing);
        let mut out = Recipients {
            subs: Vec::with_capacity(ids.len()),
            missed: Vec::new(),
        };
        for &id in ids.iter() {
            match self.subscription(s, id) {
                Ok(Some(r)) if r.takes(&event.name, tenant, app_events_to_tenants) => {
                    out.subs.push(id)
                }
                Ok(_) => {}
                Err(e) => {
                    s.quarantine_error(&e);
                    out.missed.push(format!("subscription {id}: {e}"));
                }
            }
        }
        Ok(out)
    }

    /// The subscriptions indexed under `event` or `*` (active or not).
    fn subscribers_of(&mut self, s: &mut Session, event: &str) -> Result<Arc<[SubscriptionId]>> {
        self.sync(s);
        if let Some((ids, used)) = self.fanout.get_mut(event) {
            *used = Instant::now();
            return Ok(ids.clone());
        }
        let found = s.reader().subscribers_of(event)?;
        if !found.damaged.is_empty() {
            s.quarantine(&found.damaged);
        }
        if self.fanout.len() >= CACHE_SIZE {
            self.fanout.clear();
        }
        let ids: Arc<[SubscriptionId]> = found.ids.into();
        self.fanout
            .insert(event.to_owned(), (ids.clone(), Instant::now()));
        Ok(ids)
    }

    /// Looks at every subscription of `ids` not cached at once (one query
    /// on a shared store), so that the
    /// looks one by one that follow find them. A failure is left to them.
    pub(crate) fn preload(&mut self, s: &Session, ids: &[SubscriptionId]) {
        self.sync(s);
        let missing: Vec<SubscriptionId> = ids
            .iter()
            .filter(|id| !self.subs.contains_key(id) || !self.policies.contains_key(id))
            .copied()
            .collect();
        self.load(s, missing);
    }

    /// Reads `missing` at once into the caches if there are several (a
    /// failure is left to the looks one by one that follow).
    fn load(&mut self, s: &Session, mut missing: Vec<SubscriptionId>) {
        missing.sort_unstable();
        missing.dedup();
        if missing.len() < 2 {
            return;
        }
        let Ok(found) = s.reader().subscriptions_of(&missing) else {
            return;
        };
        if self.subs.len() + found.len() > CACHE_SIZE {
            self.subs.clear();
            self.policies.clear();
        }
        for r in found {
            self.policies.insert(r.id, Policy::of(&r));
            self.subs.insert(r.id, Arc::new(r));
        }
    }

    /// A subscription as of this instance's last look.
    pub(crate) fn subscription(
        &mut self,
        s: &Session,
        id: SubscriptionId,
    ) -> Result<Option<Arc<SubscriptionRecord>>> {
        self.sync(s);
        if let Some(r) = self.subs.get(&id) {
            return Ok(Some(r.clone()));
        }
        let Some(r) = s.reader().subscription(id)? else {
            return Ok(None);
        };
        if self.subs.len() >= CACHE_SIZE {
            self.subs.clear();
        }
        let r = Arc::new(r);
        self.subs.insert(id, r.clone());
        Ok(Some(r))
    }

    /// The delivery policy of `sub`: `Ok(None)` if it is gone (its
    /// deliveries find out when they are prepared). Not cached on error.
    pub(crate) fn policy(&mut self, s: &Session, sub: SubscriptionId) -> Result<Option<Policy>> {
        if let Some(p) = self.policies.get(&sub) {
            return Ok(Some(*p));
        }
        let Some(r) = s.reader().subscription(sub)? else {
            return Ok(None);
        };
        let p = Policy::of(&r);
        if self.policies.len() >= CACHE_SIZE {
            self.policies.clear();
        }
        self.policies.insert(sub, p);
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::test_support;

    fn session(dir: &std::path::Path) -> Session {
        test_support::sled_session(dir, Config::default())
    }

    fn subscription(events: &[&str], tenant: Option<&str>, active: bool) -> SubscriptionRecord {
        let mut r = test_support::subscription(events);
        r.tenant = tenant.map(str::to_owned);
        r.active = active;
        r
    }

    fn event(name: &str) -> Event {
        test_support::event(name, "{}")
    }

    #[test]
    fn an_event_goes_to_the_active_subscriptions_that_name_it_in_its_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let named = subscription(&["order.paid"], None, true);
        let wildcard = subscription(&["*"], None, true);
        let other = subscription(&["order.shipped"], None, true);
        let inactive = subscription(&["order.paid"], None, false);
        let tenant = subscription(&["order.paid"], Some("acme"), true);
        for r in [&named, &wildcard, &other, &inactive, &tenant] {
            s.put_subscription(None, r);
        }
        s.commit().unwrap();
        let mut d = Directory::default();
        let mut to = d
            .recipients(&mut s, &event("order.paid"), None)
            .unwrap()
            .subs;
        to.sort_unstable();
        let mut want = vec![named.id, wildcard.id];
        want.sort_unstable();
        assert_eq!(to, want);
        let to = d
            .recipients(&mut s, &event("order.paid"), Some("acme"))
            .unwrap()
            .subs;
        assert_eq!(to, vec![tenant.id]);
    }

    #[test]
    fn a_change_in_the_round_is_seen_by_the_very_next_publish() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let mut d = Directory::default();
        assert!(
            d.recipients(&mut s, &event("a"), None)
                .unwrap()
                .subs
                .is_empty()
        );
        // Staged, not yet committed: the cache must not hide it.
        let r = subscription(&["a"], None, true);
        s.put_subscription(None, &r);
        s.commit().unwrap();
        assert_eq!(
            d.recipients(&mut s, &event("a"), None).unwrap().subs,
            vec![r.id]
        );
        // Disabled: cached record forgotten with the change.
        let mut off = r.clone();
        off.active = false;
        s.put_subscription(Some(&r), &off);
        s.commit().unwrap();
        assert!(
            d.recipients(&mut s, &event("a"), None)
                .unwrap()
                .subs
                .is_empty()
        );
    }

    #[test]
    fn a_refresh_reads_the_cached_subscriptions_afresh_and_forgets_gone_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let mut d = Directory::default();
        let kept = subscription(&["a"], None, true);
        let gone = subscription(&["a"], None, true);
        s.put_subscription(None, &kept);
        s.put_subscription(None, &gone);
        s.commit().unwrap();
        assert!(d.subscription(&s, kept.id).unwrap().unwrap().active);
        assert!(!d.policy(&s, kept.id).unwrap().unwrap().inactive);
        assert!(d.policy(&s, gone.id).unwrap().is_some());
        // Changed as another instance would (the session's own list of
        // changes also tells the record cache; the policies are not told).
        let mut off = kept.clone();
        off.active = false;
        s.put_subscription(Some(&kept), &off);
        s.remove_subscription(&gone);
        s.commit().unwrap();
        assert_eq!(d.cached_policy(kept.id).map(|p| p.inactive), Some(false));
        assert!(d.cached_policy(gone.id).is_some());
        d.refresh(&s);
        assert!(!d.subscription(&s, kept.id).unwrap().unwrap().active);
        assert_eq!(d.cached_policy(kept.id).map(|p| p.inactive), Some(true));
        assert_eq!(d.cached_policy(gone.id), None);
        assert_eq!(d.policy(&s, gone.id).unwrap(), None);
    }

    #[test]
    fn a_policy_is_cached_until_forgotten_and_a_gone_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let mut d = Directory::default();
        let mut r = subscription(&["a"], None, true);
        r.rate_limit = Some(RateLimit::per_second(3));
        s.put_subscription(None, &r);
        s.commit().unwrap();
        let p = d.policy(&s, r.id).unwrap().unwrap();
        assert_eq!(p.rate, Some(RateLimit::per_second(3)));
        assert!(!p.inactive && !p.halted);
        assert_eq!(d.cached_policy(r.id), Some(p));
        s.remove_subscription(&r);
        s.commit().unwrap();
        // Still cached: the loop forgets it when it takes the round's changes.
        assert_eq!(d.policy(&s, r.id).unwrap(), Some(p));
        d.forget(r.id);
        assert_eq!(d.policy(&s, r.id).unwrap(), None);
        assert_eq!(d.cached_policy(r.id), None);
    }
}
