//! Unit tests of the dispatcher's rules, on a real sled session in a
//! temp dir and without senders.

use super::*;

#[test]
fn round_robin_starts_after_the_last_one_served() {
    let mut ids: Vec<SubscriptionId> = (0..5).map(|_| SubscriptionId::generate()).collect();
    ids.sort_unstable();
    let mut ready = ids.clone();
    ready.reverse();
    round_robin(&mut ready, None);
    assert_eq!(ready, ids);
    round_robin(&mut ready, Some(ids[2]));
    assert_eq!(ready, [ids[3], ids[4], ids[0], ids[1], ids[2]]);
    // A cursor past every id (it was deleted) starts at the first.
    let mut ready = ids[..2].to_vec();
    round_robin(&mut ready, Some(ids[4]));
    assert_eq!(ready, ids[..2]);
}

#[test]
fn the_soonest_wake_wins() {
    let mut next = None;
    wake(&mut next, 50);
    wake(&mut next, 70);
    assert_eq!(next, Some(50));
    wake(&mut next, 10);
    assert_eq!(next, Some(10));
}

/// A real sled session (temp dir) holding `subs`, and a dispatcher
/// without senders that knows each one has work due at `at`.
fn with(
    dir: &std::path::Path,
    subs: &[crate::storage::SubscriptionRecord],
    at: u64,
) -> (Session, Dispatch) {
    let mut s = crate::test_support::sled_session(dir, crate::config::Config::default());
    for r in subs {
        s.put_subscription(None, r);
    }
    s.commit().unwrap();
    let d = Dispatch::new(&s, None, subs.iter().map(|r| (r.id, at)));
    (s, d)
}

fn record(order: crate::policy::DeliveryOrder) -> crate::storage::SubscriptionRecord {
    let mut r = crate::test_support::subscription(&["*"]);
    r.order = order;
    r
}

#[test]
fn candidates_are_due_subscriptions_whose_flow_lets_them_send() {
    let dir = tempfile::tempdir().unwrap();
    let subs: Vec<_> = (0..4).map(|_| record(Default::default())).collect();
    let now = 1_000_000;
    let (_s, mut d) = with(dir.path(), &subs, now);
    // 0: due, no flow. 1: breaker open until later. 2: paused by its
    // receiver. 3: due in a while.
    d.flows.insert(
        subs[1].id,
        Flow {
            breaker: super::super::flow::Breaker::Open { until: now + 500 },
            ..Flow::default()
        },
    );
    d.flows.insert(
        subs[2].id,
        Flow {
            paused_until: now + 300,
            ..Flow::default()
        },
    );
    d.due_subs.insert(subs[3].id, now + 200);
    let mut next = None;
    let ready = d.candidates(now, &mut next);
    assert_eq!(ready, vec![subs[0].id]);
    assert_eq!(next, Some(now + 200), "woken by the soonest reason");
    // Later: the breaker half-opens, the pause is over.
    let mut next = None;
    let mut ready = d.candidates(now + 500, &mut next);
    ready.sort_unstable();
    let mut all: Vec<_> = subs.iter().map(|r| r.id).collect();
    all.sort_unstable();
    assert_eq!(ready, all);
    assert_eq!(
        d.flows[&subs[1].id].breaker,
        super::super::flow::Breaker::HalfOpen
    );
}

#[test]
fn policies_gate_halted_inactive_rate_limited_and_busy_fifo_subscriptions() {
    use crate::policy::{DeliveryOrder, RateLimit};
    let dir = tempfile::tempdir().unwrap();
    let plain = record(DeliveryOrder::default());
    let mut halted = record(DeliveryOrder::FIFO_HALT);
    halted.halted_at = Some(DeliveryId::generate());
    let mut off = record(DeliveryOrder::default());
    off.active = false;
    let mut limited = record(DeliveryOrder::default());
    limited.rate_limit = Some(RateLimit::per_second(2).burst(2));
    let fifo = record(DeliveryOrder::FIFO_HALT);
    let subs = [plain.clone(), halted, off, limited.clone(), fifo.clone()];
    let now = Timestamp::now().as_millis();
    let (mut s, mut d) = with(dir.path(), &subs, now);
    let mut dir_cache = Directory::default();
    let ids: Vec<_> = subs.iter().map(|r| r.id).collect();
    // The FIFO queue has nothing pending: no head, so it waits too.
    let mut next = None;
    let (mut ready, starts, heads) = d.gates(&mut s, &mut dir_cache, ids.clone(), now, &mut next);
    ready.sort_unstable();
    let mut want = vec![plain.id, limited.id];
    want.sort_unstable();
    assert_eq!(ready, want);
    assert_eq!(starts.get(&limited.id), Some(&2), "a full bucket's tokens");
    assert!(!starts.contains_key(&plain.id), "no limit of its own");
    assert!(heads.is_empty());
    // Its two tokens spent: it waits for the next one.
    d.buckets.get_mut(&limited.id).unwrap().take();
    d.buckets.get_mut(&limited.id).unwrap().take();
    let mut next = None;
    let (ready, _, _) = d.gates(&mut s, &mut dir_cache, vec![limited.id], now, &mut next);
    assert!(ready.is_empty());
    assert!(
        next.is_some_and(|at| at > now && at <= now + 500),
        "{next:?}"
    );
    // A FIFO queue with one in flight waits for its outcome.
    d.flows.insert(
        fifo.id,
        Flow {
            in_flight: 1,
            ..Flow::default()
        },
    );
    let mut next = None;
    let (ready, _, _) = d.gates(&mut s, &mut dir_cache, vec![fifo.id], now, &mut next);
    assert!(ready.is_empty());
}
