//! Subscriptions' health on the engine thread: the round's attempts per
//! subscription, merged into the store once per subscription at commit
//! (by [`HealthRecord::merge`], the one merge rule every store uses), and
//! each subscription's health as this instance last knew it (its own
//! attempts included) for the auto-disable and recovery rules.

use std::collections::HashMap;

use crate::health::{HealthDelta, HealthRecord};
use crate::ids::{SubscriptionId, Timestamp};
use crate::record::Attempt;
use crate::storage::Reader;

/// The views are forgotten when they hold this many.
const VIEWS: usize = 4096;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct HealthLog {
    /// What happened to subscriptions' health in this round.
    round: HashMap<SubscriptionId, HealthDelta>,
    /// Subscriptions' health as this instance last knew it.
    views: HashMap<SubscriptionId, HealthRecord>,
}

impl HealthLog {
    /// A subscription's health as last known here (read once, then kept
    /// up to date with this instance's own attempts). An unreadable one
    /// counts as new.
    fn view(&mut self, r: &dyn Reader, sub: SubscriptionId) -> HealthRecord {
        if let Some(h) = self.views.get(&sub) {
            return h.clone();
        }
        let h = match r.health(sub) {
            Ok(h) => h.unwrap_or_default(),
            Err(e) => {
                tracing::error!(subscription = %sub, error = %e, "could not read a subscription's health");
                HealthRecord::default()
            }
        };
        if self.views.len() >= VIEWS {
            self.views.clear();
        }
        self.views.insert(sub, h.clone());
        h
    }

    /// Reads the views held afresh, all at once (other instances add
    /// attempts too): one query on a shared store, instead of a look per
    /// subscription when it is next met. Forgets them if that fails.
    pub(crate) fn refresh_views(&mut self, r: &dyn Reader) {
        if self.views.is_empty() {
            return;
        }
        let subs: Vec<SubscriptionId> = self.views.keys().copied().collect();
        match r.healths_of(&subs) {
            Ok(found) => {
                let mut found: HashMap<SubscriptionId, HealthRecord> = found.into_iter().collect();
                // None recorded (or a damaged one, which a look alone
                // reports): as a first look would find it.
                for sub in subs {
                    match found.remove(&sub) {
                        Some(h) => self.views.insert(sub, h),
                        None => self.views.remove(&sub),
                    };
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not read health views at once; they are read one by one");
                self.views.clear();
            }
        }
    }

    /// Adds an attempt to `sub`'s health; returns the health before and
    /// after it.
    pub(crate) fn attempt(
        &mut self,
        r: &dyn Reader,
        sub: SubscriptionId,
        a: &Attempt,
    ) -> (HealthRecord, HealthRecord) {
        let before = self.view(r, sub);
        let mut one = HealthDelta::default();
        one.record(a);
        let after = before.clone().merge(&one);
        self.views.insert(sub, after.clone());
        self.round.entry(sub).or_default().record(a);
        (before, after)
    }

    /// `sub` was disabled (`Some`: when and why) or enabled again (`None`).
    pub(crate) fn set_disabled(
        &mut self,
        sub: SubscriptionId,
        disabled: Option<(Timestamp, String)>,
    ) {
        let mut one = HealthDelta::default();
        one.set_disabled(disabled.clone());
        if let Some(view) = self.views.remove(&sub) {
            self.views.insert(sub, view.merge(&one));
        }
        self.round.entry(sub).or_default().set_disabled(disabled);
    }

    /// The round's deltas, in subscription order (on a shared store each
    /// merge locks the subscription's health row until the round commits,
    /// and two instances locking the same rows in different orders
    /// deadlock); empty ones left out.
    pub(crate) fn take_round(&mut self) -> Vec<(SubscriptionId, HealthDelta)> {
        let mut out: Vec<(SubscriptionId, HealthDelta)> =
            self.round.drain().filter(|(_, d)| !d.is_empty()).collect();
        out.sort_unstable_by_key(|(sub, _)| *sub);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::test_support;

    fn attempt(status: u16) -> Attempt {
        Attempt {
            number: 1,
            at: Timestamp::now(),
            duration_ms: 5,
            status: Some(status),
            error: None,
            response_excerpt: Vec::new(),
        }
    }

    #[test]
    fn a_refresh_reads_the_views_held_afresh_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_support::sled_session(dir.path(), Config::default());
        let sub = test_support::subscription(&["a"]);
        s.put_subscription(None, &sub);
        s.note_attempt(sub.id, &attempt(200));
        s.commit().unwrap();
        // This log stands for another instance's view of the same store.
        let mut log = HealthLog::default();
        assert_eq!(log.view(s.reader(), sub.id).attempts, 1);
        let never = test_support::subscription(&["b"]).id;
        assert_eq!(log.view(s.reader(), never).attempts, 0);
        s.note_attempt(sub.id, &attempt(500));
        s.commit().unwrap();
        assert_eq!(
            log.view(s.reader(), sub.id).attempts,
            1,
            "kept until refreshed"
        );
        log.refresh_views(s.reader());
        let h = log.views.get(&sub.id).expect("still held").clone();
        assert_eq!((h.attempts, h.failures), (2, 1));
        assert!(
            !log.views.contains_key(&never),
            "one with nothing recorded is read again when met"
        );
    }
}
