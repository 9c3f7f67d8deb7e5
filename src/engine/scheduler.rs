//! The scheduler: which subscriptions get how many of the free request
//! slots. A pure function of what is due and what is in flight, so it is
//! tested without threads, clocks or a store.
//!
//! Rules:
//! * subscriptions are served round-robin (the caller rotates `ready`), not
//!   oldest-first, so an old backlog cannot take every slot;
//! * with `k` subscriptions wanting slots (due work or requests in flight),
//!   each may hold `total / k`, the remainder going one each to the first
//!   ones, so no slot idles while work is due; never more than
//!   `per_subscription`, and never every slot (unless there is only one);
//! * a destination host never has more than `per_host` in flight;
//! * a subscription whose breaker is open gets nothing; half-open, or whose
//!   last request timed out, one at a time (a probe);
//! * subscriptions that are failing (connection errors or timeouts in a
//!   row, or requests in flight and no answer for
//!   [`STALL_AFTER_MS`](super::flow::STALL_AFTER_MS))
//!   together hold at most a quarter of the slots while healthy ones have
//!   due work;
//! * a subscription has at most its window in flight:
//!   [`INITIAL_WINDOW`](super::flow::INITIAL_WINDOW)
//!   until its receiver answers, one more per answer (slow start), so
//!   receivers that hang cannot take the pool before anything is known
//!   of them;
//! * a subscription never starts more than its own `starts` allows now
//!   (the tokens of its rate limit; one for a FIFO subscription).
//!
//! The state each subscription's flow is in (breaker, window, pause, rate
//! limit bucket) and its transitions are in [`super::flow`].

use std::collections::HashMap;

use super::flow::{Breaker, Flow};
use crate::ids::SubscriptionId;

/// The caps the plan keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) total: usize,
    pub(crate) per_subscription: usize,
    pub(crate) per_host: usize,
}

/// How many requests to start per subscription. `ready` lists the
/// subscriptions with due work in the order to serve them (rotated by the
/// caller for round-robin); `free` is how many slots are idle; `host` maps
/// a subscription to its destination host's index in `host_in_flight`
/// (unknown: no host cap); `starts` says how many requests a subscription
/// may start now, whatever the caps allow (its rate limit's tokens).
#[cfg(test)]
pub(crate) fn plan(
    limits: Limits,
    free: usize,
    ready: &[SubscriptionId],
    flows: &HashMap<SubscriptionId, Flow>,
    host: &dyn Fn(SubscriptionId) -> Option<usize>,
    host_in_flight: &mut [usize],
    starts: &dyn Fn(SubscriptionId) -> usize,
) -> Vec<(SubscriptionId, usize)> {
    plan_noting_caps(limits, free, ready, flows, host, host_in_flight, starts).0
}

/// [`plan`], and whether the free slots or a host's cap held a
/// subscription below what its share and window allowed (then room that
/// others leave unused, having fewer due than their room, is worth a
/// second plan).
pub(crate) fn plan_noting_caps(
    limits: Limits,
    free: usize,
    ready: &[SubscriptionId],
    flows: &HashMap<SubscriptionId, Flow>,
    host: &dyn Fn(SubscriptionId) -> Option<usize>,
    host_in_flight: &mut [usize],
    starts: &dyn Fn(SubscriptionId) -> usize,
) -> (Vec<(SubscriptionId, usize)>, bool) {
    let mut capped = false;
    let mut out = Vec::new();
    if free == 0 || ready.is_empty() {
        return (out, !ready.is_empty());
    }
    let flow_of = |s: &SubscriptionId| flows.get(s).copied().unwrap_or_default();
    let busy_elsewhere = flows
        .iter()
        .filter(|(id, f)| f.in_flight > 0 && !ready.contains(id))
        .count();
    let wanting = ready.len() + busy_elsewhere;
    let most = limits
        .total
        .saturating_sub(1)
        .max(1)
        .min(limits.per_subscription);
    let base = (limits.total / wanting).clamp(1, most);
    let mut extra = if base >= most {
        0
    } else {
        limits.total % wanting
    };
    // Failing subscriptions share a quarter while healthy ones wait.
    let healthy_waiting = ready.iter().any(|s| !flow_of(s).failing());
    let failing_cap = if healthy_waiting {
        (limits.total / 4).max(1)
    } else {
        limits.total
    };
    let mut failing_used: usize = flows
        .values()
        .filter(|f| f.failing())
        .map(|f| f.in_flight)
        .sum();
    let mut free = free;
    for &sub in ready {
        if free == 0 {
            capped = true;
            break;
        }
        let flow = flow_of(&sub);
        let share = match flow.breaker {
            Breaker::Open { .. } => 0,
            Breaker::HalfOpen => 1,
            Breaker::Closed if flow.tripped => 1,
            Breaker::Closed if wanting == 1 => most,
            Breaker::Closed if extra > 0 => {
                extra -= 1;
                (base + 1).min(most)
            }
            Breaker::Closed => base,
        };
        let wanted = share
            .min(flow.window())
            .saturating_sub(flow.in_flight)
            .min(starts(sub));
        let mut n = wanted.min(free);
        if flow.failing() {
            n = n.min(failing_cap.saturating_sub(failing_used));
        }
        let h = host(sub);
        if let Some(h) = h {
            n = n.min(limits.per_host.saturating_sub(host_in_flight[h]));
        }
        if n < wanted && !flow.failing() {
            capped = true;
        }
        if n > 0 {
            out.push((sub, n));
            free -= n;
            if flow.failing() {
                failing_used += n;
            }
            if let Some(h) = h {
                host_in_flight[h] += n;
            }
        }
    }
    // Slots the caps left over go to healthy subscriptions, up to their
    // own cap, so none idles while one of them has due work.
    for &sub in ready {
        if free == 0 {
            break;
        }
        let flow = flow_of(&sub);
        if flow.failing() {
            continue;
        }
        let given = out.iter().find(|(s, _)| *s == sub).map_or(0, |(_, n)| *n);
        let mut n = most
            .min(flow.window())
            .saturating_sub(flow.in_flight + given)
            .min(free)
            .min(starts(sub).saturating_sub(given));
        let h = host(sub);
        if let Some(h) = h {
            n = n.min(limits.per_host.saturating_sub(host_in_flight[h]));
        }
        if n > 0 {
            match out.iter_mut().find(|(s, _)| *s == sub) {
                Some((_, m)) => *m += n,
                None => out.push((sub, n)),
            }
            free -= n;
            if let Some(h) = h {
                host_in_flight[h] += n;
            }
        }
    }
    (out, capped)
}

/// Destination hosts as the per-host cap counts them.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    /// Each subscription's destination host, as an index of `index`.
    pub(crate) of: HashMap<SubscriptionId, usize>,
    pub(crate) index: HashMap<String, usize>,
}

impl Hosts {
    /// Notes `sub`'s host as of its current URL.
    pub(crate) fn note(&mut self, sub: SubscriptionId, url: &str) {
        let next = self.index.len();
        let i = *self.index.entry(host_key(url)).or_insert(next);
        self.of.insert(sub, i);
    }
}

/// A destination host as the per-host cap counts it: host and port.
fn host_key(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::flow::{INITIAL_WINDOW, STALL_AFTER_MS};
    use super::*;

    fn subs(n: usize) -> Vec<SubscriptionId> {
        (0..n).map(|_| SubscriptionId::generate()).collect()
    }

    fn total(p: &[(SubscriptionId, usize)]) -> usize {
        p.iter().map(|(_, n)| n).sum()
    }

    fn limits(total: usize) -> Limits {
        Limits {
            total,
            per_subscription: usize::MAX,
            per_host: usize::MAX,
        }
    }

    fn no_host(_: SubscriptionId) -> Option<usize> {
        None
    }

    /// `flows` with every subscription in `ready` (and in `flows`) past
    /// slow start: the share rules alone decide.
    fn earned(
        ready: &[SubscriptionId],
        flows: &HashMap<SubscriptionId, Flow>,
    ) -> HashMap<SubscriptionId, Flow> {
        let mut out = flows.clone();
        for id in ready {
            out.entry(*id).or_default();
        }
        for f in out.values_mut() {
            f.window = f.window.max(1_000);
        }
        out
    }

    /// The plan for subscriptions past slow start, without host caps or
    /// own limits.
    fn simple(
        total: usize,
        free: usize,
        ready: &[SubscriptionId],
        flows: &HashMap<SubscriptionId, Flow>,
    ) -> Vec<(SubscriptionId, usize)> {
        unearned(total, free, ready, &earned(ready, flows))
    }

    /// The plan for `flows` as they are (windows included), without host
    /// caps or own limits.
    fn unearned(
        total: usize,
        free: usize,
        ready: &[SubscriptionId],
        flows: &HashMap<SubscriptionId, Flow>,
    ) -> Vec<(SubscriptionId, usize)> {
        plan(
            limits(total),
            free,
            ready,
            flows,
            &no_host,
            &mut [],
            &|_| usize::MAX,
        )
    }

    fn busy(in_flight: usize) -> Flow {
        Flow {
            in_flight,
            ..Flow::default()
        }
    }

    #[test]
    fn one_subscription_gets_all_but_one() {
        let s = subs(1);
        assert_eq!(simple(8, 8, &s, &HashMap::new()), vec![(s[0], 7)]);
        // With a single slot it may use it.
        assert_eq!(simple(1, 1, &s, &HashMap::new()), vec![(s[0], 1)]);
    }

    #[test]
    fn no_slot_idles_while_work_is_due() {
        // 8 slots, 5 busy subscriptions: floor(8/5) = 1 each left 3 idle.
        let s = subs(5);
        let p = simple(8, 8, &s, &HashMap::new());
        assert_eq!(total(&p), 8, "{p:?}");
        assert!(p.iter().all(|(_, n)| (1..=2).contains(n)), "{p:?}");
        assert_eq!(p[0].1, 2);
        assert_eq!(p[4].1, 1);
    }

    #[test]
    fn shares_count_requests_in_flight() {
        let s = subs(2);
        let flows = HashMap::from([(s[0], busy(4))]);
        assert_eq!(simple(8, 4, &s, &flows), vec![(s[1], 4)]);
    }

    #[test]
    fn busy_subscriptions_without_due_work_still_count() {
        let s = subs(1);
        let flows = HashMap::from([(SubscriptionId::generate(), busy(3))]);
        // Its share is 4; the one slot left over is not left idle.
        assert_eq!(simple(8, 5, &s, &flows), vec![(s[0], 5)]);
    }

    #[test]
    fn a_tripped_or_half_open_subscription_gets_one_probe() {
        let s = subs(3);
        let flows = HashMap::from([
            (
                s[0],
                Flow {
                    tripped: true,
                    ..Flow::default()
                },
            ),
            (
                s[1],
                Flow {
                    breaker: Breaker::HalfOpen,
                    failures: 5,
                    ..Flow::default()
                },
            ),
        ]);
        let p = simple(30, 30, &s, &flows);
        assert_eq!(p[0], (s[0], 1));
        assert_eq!(p[1], (s[1], 1));
        // Its share is 10; what the probes leave goes to it too.
        assert_eq!(p[2], (s[2], 28));
    }

    #[test]
    fn an_open_breaker_gets_nothing() {
        let s = subs(2);
        let flows = HashMap::from([(
            s[0],
            Flow {
                breaker: Breaker::Open { until: 99 },
                failures: 5,
                ..Flow::default()
            },
        )]);
        let p = simple(8, 8, &s, &flows);
        assert_eq!(p, vec![(s[1], 7)]);
    }

    #[test]
    fn failing_subscriptions_share_a_quarter_while_healthy_ones_wait() {
        // A dozen failing subscriptions first in line, one healthy last.
        let s = subs(13);
        let flows: HashMap<_, _> = s[..12]
            .iter()
            .map(|id| {
                (
                    *id,
                    Flow {
                        failures: 2,
                        ..Flow::default()
                    },
                )
            })
            .collect();
        let p = simple(16, 16, &s, &flows);
        let failing: usize = p
            .iter()
            .filter(|(id, _)| *id != s[12])
            .map(|(_, n)| n)
            .sum();
        assert!(failing <= 4, "{p:?}");
        // The healthy one gets what the failing ones may not use.
        assert_eq!(total(&p), 16, "{p:?}");
        assert!(p.iter().any(|(id, n)| *id == s[12] && *n >= 12), "{p:?}");
        // With no healthy one waiting, failing ones may use the slots.
        let p = simple(16, 16, &s[..12], &flows);
        assert_eq!(total(&p), 16);
    }

    #[test]
    fn a_subscription_earns_its_requests_in_flight_by_answers() {
        let s = subs(1);
        let cap = 64;
        let plan_for = |flow: Flow| unearned(256, 256, &s, &HashMap::from([(s[0], flow)]));
        // Nothing known of it (no flow at all, or a new one): 4.
        let none = unearned(256, 256, &s, &HashMap::new());
        assert_eq!(none, vec![(s[0], INITIAL_WINDOW)]);
        let mut flow = Flow {
            in_flight: 4,
            ..Flow::default()
        };
        assert_eq!(plan_for(flow), vec![]);
        // Each answer frees a slot and adds one: 4 answers, 8 in flight.
        for _ in 0..4 {
            flow.in_flight -= 1;
            flow.answered(cap);
        }
        assert_eq!(plan_for(flow), vec![(s[0], 8)]);
        // Never past the per-subscription cap.
        for _ in 0..1_000 {
            flow.answered(cap);
        }
        assert_eq!(flow.window(), cap);
        // A connection failure or timeout starts it over (the event loop
        // sets the window to 0).
        flow.window = 0;
        assert_eq!(flow.window(), INITIAL_WINDOW);
    }

    #[test]
    fn receivers_that_hold_requests_without_answering_count_as_failing() {
        // A dozen subscriptions with requests out since t=0, one healthy.
        let s = subs(13);
        let mut flows: HashMap<_, _> = s[..12]
            .iter()
            .map(|id| {
                (
                    *id,
                    Flow {
                        in_flight: 1,
                        heard_at: 0,
                        ..Flow::default()
                    },
                )
            })
            .collect();
        // Within the stall time they are healthy and take their shares.
        for f in flows.values_mut() {
            f.check_stall(STALL_AFTER_MS);
        }
        assert!(flows.values().all(|f| !f.failing()));
        let early = simple(64, 52, &s, &flows);
        let held: usize = early
            .iter()
            .filter(|(id, _)| *id != s[12])
            .map(|(_, n)| n)
            .sum();
        assert!(held > 16, "{early:?}");
        // Past it with no answer: together at most a quarter (12 are in
        // flight already, so 4 more), and the healthy one gets the rest.
        for f in flows.values_mut() {
            f.check_stall(STALL_AFTER_MS + 1);
        }
        assert!(flows.values().all(|f| f.stalled && f.failing()));
        let late = simple(64, 52, &s, &flows);
        let held: usize = late
            .iter()
            .filter(|(id, _)| *id != s[12])
            .map(|(_, n)| n)
            .sum();
        assert!(held <= 4, "{late:?}");
        assert!(
            late.iter().any(|(id, n)| *id == s[12] && *n >= 40),
            "{late:?}"
        );
        // Nothing in flight: not stalled, however long ago it was heard.
        let mut idle = Flow::default();
        idle.check_stall(u64::MAX);
        assert!(!idle.stalled);
    }

    #[test]
    fn caps_per_subscription_and_per_host_hold() {
        let s = subs(3);
        let l = Limits {
            total: 100,
            per_subscription: 10,
            per_host: 15,
        };
        // s[0] and s[1] share host 0; s[2] is on host 1.
        let host = |id: SubscriptionId| Some(if id == s[2] { 1 } else { 0 });
        let mut hosts = vec![0, 0];
        let any = |_| usize::MAX;
        let p = plan(
            l,
            100,
            &s,
            &earned(&s, &HashMap::new()),
            &host,
            &mut hosts,
            &any,
        );
        assert_eq!(p, vec![(s[0], 10), (s[1], 5), (s[2], 10)]);
        assert_eq!(hosts, vec![15, 10]);
    }

    #[test]
    fn own_starts_cap_each_subscription_and_free_slots_go_elsewhere() {
        let s = subs(3);
        // s[0] may start 2 (its rate limit's tokens), s[1] one (FIFO).
        let starts = |id: SubscriptionId| {
            if id == s[0] {
                2
            } else if id == s[1] {
                1
            } else {
                usize::MAX
            }
        };
        let p = plan(
            limits(30),
            30,
            &s,
            &earned(&s, &HashMap::new()),
            &no_host,
            &mut [],
            &starts,
        );
        assert_eq!(p, vec![(s[0], 2), (s[1], 1), (s[2], 27)]);
    }

    #[test]
    fn never_more_than_free() {
        let s = subs(3);
        for free in 0..=8 {
            let p = simple(8, free, &s, &HashMap::new());
            assert!(total(&p) <= free, "{free}: {p:?}");
        }
    }

    #[test]
    fn hosts_count_by_host_and_port() {
        assert_eq!(host_key("https://example.com/a"), "example.com:443");
        assert_eq!(host_key("http://example.com/b"), "example.com:80");
        assert_eq!(host_key("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
        let mut hosts = Hosts::default();
        let (a, b, c) = (
            SubscriptionId::generate(),
            SubscriptionId::generate(),
            SubscriptionId::generate(),
        );
        hosts.note(a, "https://example.com/a");
        hosts.note(b, "https://example.com:443/b");
        hosts.note(c, "https://other.example/");
        assert_eq!(hosts.of[&a], hosts.of[&b]);
        assert_ne!(hosts.of[&a], hosts.of[&c]);
        // A new URL moves the subscription to its new host.
        hosts.note(a, "https://other.example/x");
        assert_eq!(hosts.of[&a], hosts.of[&c]);
    }
}
