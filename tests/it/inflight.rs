//! Requests in flight follow demand up to the memory budget (issue 29):
//! more than the former fixed 256 at once with the default configuration,
//! and the per-host cap still holds. Counted at a receiver that holds every
//! request until as many as expected are held at once (or a deadline
//! passes), so nothing depends on how fast the machine is; no time is
//! asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hookbus::{Bus, NewSubscription};
use serde_json::json;

use crate::{LONG, wait_until};

/// A receiver on 127.0.0.1 that counts the requests it holds at once and
/// the most it held. It holds each until `release` are held together
/// (from then on it answers at once) or, failing that, for `deadline`.
struct Gate {
    url: String,
    held: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl Gate {
    fn start(release: usize, deadline: Duration) -> Gate {
        let held = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let (h, p, a) = (held.clone(), peak.clone(), answered.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
                    let (held, peak, answered, open) =
                        (h.clone(), p.clone(), a.clone(), open.clone());
                    async move {
                        std::hint::black_box(body);
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        if now >= release {
                            open.store(true, Ordering::SeqCst);
                        }
                        let end = tokio::time::Instant::now() + deadline;
                        while !open.load(Ordering::SeqCst) && tokio::time::Instant::now() < end {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        held.fetch_sub(1, Ordering::SeqCst);
                        answered.fetch_add(1, Ordering::SeqCst);
                        axum::http::StatusCode::NO_CONTENT
                    }
                });
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Gate {
            url,
            held,
            peak,
            answered,
        }
    }
}

/// `subs` subscriptions to `gate`, 4 events each (a new subscription's
/// slow-start window is 4, so all of them may go out at once), on the
/// test's store with the default configuration but for `tune`.
fn flood(
    gate: &Gate,
    subs: usize,
    tune: impl FnOnce(hookbus::Builder) -> hookbus::Builder,
) -> usize {
    let dir = crate::test_dir();
    let b = crate::store(Bus::builder(), dir.path())
        .allow_private_targets(true)
        .request_timeout(Duration::from_secs(60));
    #[cfg(feature = "postgres")]
    let b = if crate::on_postgres() {
        b.claim_lease(Duration::from_secs(90))
    } else {
        b
    };
    let bus = tune(b).open().unwrap();
    for i in 0..subs {
        bus.subscribe(
            NewSubscription::new(format!("s{i}"), format!("{}/{i}", gate.url)).event("e"),
        )
        .unwrap();
    }
    for n in 0..4 {
        bus.publish("e", &json!({ "n": n })).unwrap();
    }
    let total = subs * 4;
    wait_until(LONG * 4, "every request answered", || {
        gate.answered.load(Ordering::SeqCst) >= total
    });
    wait_until(LONG, "every outcome recorded", || {
        bus.outbox().stats().unwrap().delivered >= total as u64
    });
    assert_eq!(gate.held.load(Ordering::SeqCst), 0);
    bus.shutdown(Duration::from_secs(5)).unwrap();
    gate.peak.load(Ordering::SeqCst)
}

/// The default configuration has no fixed 256 ceiling: 400 requests to one
/// slow receiver are all in flight at once.
#[test]
fn more_than_256_requests_are_in_flight_at_once_by_default() {
    let gate = Gate::start(400, Duration::from_secs(30));
    let peak = flood(&gate, 100, |b| b);
    assert_eq!(peak, 400, "requests held at once by the receiver");
}

/// The per-host cap still holds: with 300 per host, 400 due requests to
/// one host never have more than 300 in flight (and reach it).
#[test]
fn the_per_host_cap_holds_with_the_default_budget() {
    let gate = Gate::start(300, Duration::from_secs(3));
    let peak = flood(&gate, 100, |b| b.max_in_flight_per_host(300));
    assert_eq!(peak, 300, "requests held at once by the receiver");
}

/// The blocking transport (one ureq thread per request) holds the same
/// caps: 400 due requests, 300 per host, exactly 300 at once.
#[test]
fn blocking_senders_hold_the_per_host_cap_too() {
    let gate = Gate::start(300, Duration::from_secs(3));
    let peak = flood(&gate, 100, |b| {
        b.blocking_senders(true).max_in_flight_per_host(300)
    });
    assert_eq!(peak, 300, "requests held at once by the receiver");
}

/// How the budget, `senders` and the per-host default combine.
#[test]
fn the_memory_budget_sets_the_ceiling_and_senders_caps_it() {
    let open = |tune: fn(hookbus::Builder) -> hookbus::Builder| {
        let dir = crate::test_dir();
        let bus = tune(Bus::builder().path(dir.path())).open().unwrap();
        let c = bus.config();
        let got = (
            c.senders(),
            c.max_in_flight_per_host(),
            c.sender_memory_budget(),
        );
        bus.shutdown(Duration::from_secs(1)).unwrap();
        got
    };
    // 160 MiB at 32 KiB a request (tasks); a host may hold half.
    assert_eq!(open(|b| b), (5120, 2560, 160 << 20));
    assert_eq!(
        open(|b| b.sender_memory_budget(8 << 20)),
        (256, 128, 8 << 20)
    );
    // Blocking senders: 80 KiB a request (a thread each).
    assert_eq!(open(|b| b.blocking_senders(true)), (2048, 1024, 160 << 20));
    assert_eq!(
        open(|b| b.blocking_senders(true).sender_memory_budget(8 << 20)),
        (102, 51, 8 << 20)
    );
    assert_eq!(open(|b| b.senders(100)).0, 100);
    assert_eq!(open(|b| b.senders(100)).1, 50);
    assert_eq!(
        open(|b| b.senders(100).sender_memory_budget(2 << 20)).0,
        64,
        "the smaller of the two"
    );
    assert_eq!(open(|b| b.max_in_flight_per_host(7)).1, 7);
    let dir = crate::test_dir();
    assert!(matches!(
        Bus::builder()
            .path(dir.path())
            .sender_memory_budget(1024)
            .open(),
        Err(hookbus::Error::InvalidConfig(_))
    ));
}
