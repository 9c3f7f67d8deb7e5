//! The scheduler: which subscriptions get how many of the free senders.
//! A pure function of what is due and what is in flight, so it is tested
//! without threads, clocks or a store.
//!
//! Rules:
//! * with `k` subscriptions wanting senders (due work or requests in
//!   flight), each may hold `senders / k`, and the remainder goes one each
//!   to the longest-waiting ones, so no sender idles while work is due;
//! * a subscription never holds every sender while others may need one: at
//!   most `senders - 1` (unless there is only one sender);
//! * a subscription whose last request timed out (tripped) holds one at a
//!   time until it answers again.

use std::collections::HashMap;

use crate::ids::SubscriptionId;

/// What a subscription has in flight.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) in_flight: usize,
    /// Its last request timed out: one request at a time until it answers.
    pub(crate) tripped: bool,
}

/// How many requests to start per subscription. `ready` lists the
/// subscriptions with due work, longest waiting first; `free` is how many
/// senders are idle.
pub(crate) fn plan(
    senders: usize,
    free: usize,
    ready: &[SubscriptionId],
    flows: &HashMap<SubscriptionId, Flow>,
) -> Vec<(SubscriptionId, usize)> {
    let mut out = Vec::new();
    if free == 0 || ready.is_empty() {
        return out;
    }
    let busy_elsewhere = flows
        .iter()
        .filter(|(id, f)| f.in_flight > 0 && !ready.contains(id))
        .count();
    let wanting = ready.len() + busy_elsewhere;
    let most = senders.saturating_sub(1).max(1);
    let base = (senders / wanting).clamp(1, most);
    // The remainder, one each to the first ones.
    let mut extra = if senders / wanting >= most {
        0
    } else {
        senders % wanting
    };
    let mut free = free;
    for &sub in ready {
        if free == 0 {
            break;
        }
        let flow = flows.get(&sub).copied().unwrap_or_default();
        let share = if flow.tripped {
            1
        } else if wanting == 1 {
            most
        } else if extra > 0 {
            extra -= 1;
            (base + 1).min(most)
        } else {
            base
        };
        let n = share.saturating_sub(flow.in_flight).min(free);
        if n > 0 {
            out.push((sub, n));
            free -= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(n: usize) -> Vec<SubscriptionId> {
        (0..n).map(|_| SubscriptionId::generate()).collect()
    }

    fn total(p: &[(SubscriptionId, usize)]) -> usize {
        p.iter().map(|(_, n)| n).sum()
    }

    #[test]
    fn one_subscription_gets_all_but_one() {
        let s = subs(1);
        let p = plan(8, 8, &s, &HashMap::new());
        assert_eq!(p, vec![(s[0], 7)]);
        // With a single sender it may use it.
        assert_eq!(plan(1, 1, &s, &HashMap::new()), vec![(s[0], 1)]);
    }

    #[test]
    fn no_sender_idles_while_work_is_due() {
        // 8 senders, 5 busy subscriptions: floor(8/5) = 1 each left 3 idle.
        let s = subs(5);
        let p = plan(8, 8, &s, &HashMap::new());
        assert_eq!(total(&p), 8, "{p:?}");
        assert!(p.iter().all(|(_, n)| (1..=2).contains(n)), "{p:?}");
        // The longest waiting get the extra ones.
        assert_eq!(p[0].1, 2);
        assert_eq!(p[4].1, 1);
    }

    #[test]
    fn shares_count_requests_in_flight() {
        let s = subs(2);
        let mut flows = HashMap::new();
        flows.insert(
            s[0],
            Flow {
                in_flight: 4,
                tripped: false,
            },
        );
        // 8 senders, 2 wanting: 4 each; s[0] already holds 4.
        let p = plan(8, 4, &s, &flows);
        assert_eq!(p, vec![(s[1], 4)]);
    }

    #[test]
    fn busy_subscriptions_without_due_work_still_count() {
        let s = subs(1);
        let mut flows = HashMap::new();
        flows.insert(
            SubscriptionId::generate(),
            Flow {
                in_flight: 3,
                tripped: false,
            },
        );
        let p = plan(8, 5, &s, &flows);
        assert_eq!(p, vec![(s[0], 4)]);
    }

    #[test]
    fn a_tripped_subscription_gets_one_at_a_time() {
        let s = subs(2);
        let mut flows = HashMap::new();
        flows.insert(
            s[0],
            Flow {
                in_flight: 1,
                tripped: true,
            },
        );
        let p = plan(8, 7, &s, &flows);
        assert_eq!(p, vec![(s[1], 4)]);
        flows.get_mut(&s[0]).unwrap().in_flight = 0;
        let p = plan(8, 8, &s, &flows);
        assert_eq!(p[0], (s[0], 1));
    }

    #[test]
    fn never_more_than_free() {
        let s = subs(3);
        for free in 0..=8 {
            let p = plan(8, free, &s, &HashMap::new());
            assert!(total(&p) <= free, "{free}: {p:?}");
        }
    }
}
