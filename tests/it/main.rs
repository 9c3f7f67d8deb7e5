//! Integration tests: one binary, real sled stores in temp dirs, a real HTTP
//! receiver on 127.0.0.1, real child processes killed with SIGKILL.

#![allow(missing_docs, unreachable_pub, dead_code)]
mod admin;
mod api;
mod cli;
mod compat;
mod crash;
mod debug_output;
mod delivery;
mod engine;
mod faults;
mod flow_control;
mod hardening;
mod messages;
mod operations;
#[cfg(feature = "postgres")]
mod pg_faults;
#[cfg(feature = "postgres")]
mod postgres;
mod proxy;
mod publish;
mod receiver;
mod replay;
mod retention;
mod security;
mod store_faults;
mod subscriptions;
mod tenants;

use std::path::Path;
use std::time::{Duration, Instant};

use hookbus::{Builder, Bus};

/// A builder for tests: loopback allowed, 4 senders, a millisecond retry
/// schedule.
pub fn builder(dir: &Path) -> Builder {
    Bus::builder()
        .path(dir)
        .allow_private_targets(true)
        .senders(4)
        .retry_schedule(vec![Duration::from_millis(10); 3])
        .request_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(2))
        // Tests point many deliveries at dead ports: keep breaker waits short.
        .circuit_breaker(5, Duration::from_millis(100))
}

pub fn open(dir: &Path) -> Bus {
    builder(dir).open().expect("open bus")
}

/// A URL on loopback where nothing listens (connection refused).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/hook")
}

/// Polls `cond` every 5 ms; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub const LONG: Duration = Duration::from_secs(30);

/// Checks that the outbox counters equal a recount of the records and that
/// every delivery is listed exactly once, in the listing of its state.
/// Returns the counts. Call it on a quiet outbox (nothing in flight, no
/// retry about to fall due): it reads the store several times.
pub fn consistent(bus: &Bus) -> hookbus::OutboxStats {
    let stats = bus.outbox().stats().unwrap();
    let recount = bus.outbox().recount().unwrap();
    assert_eq!(stats, recount, "stored counters differ from a recount");
    let mut seen = std::collections::HashSet::new();
    for (listing, n) in [
        (bus.outbox().pending(), stats.pending),
        (bus.outbox().delivered(), stats.delivered),
        (bus.outbox().dead(), stats.dead),
    ] {
        let ids: Vec<_> = listing.map(|d| d.unwrap().id).collect();
        assert_eq!(ids.len() as u64, n, "listing length differs from the count");
        for id in ids {
            assert!(seen.insert(id), "delivery {id} is listed twice");
        }
    }
    stats
}
