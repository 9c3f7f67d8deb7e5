//! Host name lookups for the task senders, so that one host's slow DNS
//! cannot hold up deliveries to other hosts.
//!
//! The system resolver (`getaddrinfo`) blocks a thread for as long as a
//! lookup takes (seconds when a name server does not answer), and the
//! runtime's blocking threads are shared by every host. So:
//!
//! - **one lookup per host at a time**: requests to a host whose lookup is
//!   running wait for that lookup (as a task, holding no thread) instead of
//!   starting their own, so a host whose name server hangs holds at most
//!   one blocking thread however many of its deliveries are due (each
//!   request still gives up at its connection's setup timeout);
//! - **answers are kept** for [`FRESH`]; a host whose answer is older is
//!   connected to with the addresses it had while a new lookup runs in the
//!   background, so once a host has resolved, its deliveries do not wait
//!   for DNS again (a changed record is used from the first connection
//!   after the new lookup ends);
//! - **a failed new lookup keeps the last good addresses** (for up to
//!   [`MAX_STALE`] after they were looked up; it is tried again after
//!   [`FAILED`]): one bad answer from a name server does not fail a busy,
//!   healthy host's requests (and open its circuit breaker);
//! - **a host with no usable addresses keeps its failure** for [`FAILED`],
//!   so a name that does not resolve is not looked up again for every
//!   delivery due to it.
//!
//! Every connection still passes the SSRF guard on the addresses it
//! connects to, kept or not ([`Guard::keep`](crate::ssrf::Guard::keep)).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a host's addresses are used without a new lookup.
pub(crate) const FRESH: Duration = Duration::from_secs(10);
/// How long a failed lookup stands before the host is looked up again.
pub(crate) const FAILED: Duration = Duration::from_secs(2);
/// How long after they were looked up a host's addresses may still be used
/// while new lookups fail.
pub(crate) const MAX_STALE: Duration = Duration::from_secs(300);
/// At most this many addresses of a host are kept.
const MAX_ADDRS: usize = 16;
/// The table of hosts is first swept of entries that can no longer be
/// used when it holds this many (then when it has doubled since).
const SWEEP_ABOVE: usize = 4096;

/// What a lookup gives: the host's addresses, or why there are none.
type Answer = std::result::Result<Arc<[IpAddr]>, Arc<str>>;

/// The function that looks a host up (the system resolver, except in
/// tests), run on a blocking thread.
type LookupFn = dyn Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync;

/// What is known of one host.
#[derive(Default)]
struct Entry {
    /// The last addresses found and when.
    good: Option<(Arc<[IpAddr]>, Instant)>,
    /// The last lookup's failure and when, if it failed.
    failure: Option<(Arc<str>, Instant)>,
    /// A lookup running now: its answer, when it comes.
    running: Option<watch::Receiver<Option<Answer>>>,
}

#[derive(Default)]
struct Table {
    hosts: HashMap<String, Entry>,
    /// Sweep when `hosts` holds this many.
    sweep_at: usize,
}

/// The task senders' lookups: one per host at a time, answers kept
/// (module docs).
#[derive(Clone)]
pub(crate) struct Lookups {
    table: Arc<Mutex<Table>>,
    lookup: Arc<LookupFn>,
    fresh: Duration,
    failed: Duration,
    max_stale: Duration,
}

impl fmt::Debug for Lookups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookups")
            .field("fresh", &self.fresh)
            .field("failed", &self.failed)
            .field("max_stale", &self.max_stale)
            .finish_non_exhaustive()
    }
}

/// What [`Lookups::resolve`] found in the table.
enum Found {
    Now(Answer),
    Wait(watch::Receiver<Option<Answer>>),
}

impl Lookups {
    /// Lookups by the system resolver.
    pub(crate) fn system() -> Lookups {
        Lookups::with(Arc::new(system_lookup), FRESH, FAILED, MAX_STALE)
    }

    fn with(
        lookup: Arc<LookupFn>,
        fresh: Duration,
        failed: Duration,
        max_stale: Duration,
    ) -> Lookups {
        Lookups {
            table: Arc::new(Mutex::new(Table {
                hosts: HashMap::new(),
                sweep_at: SWEEP_ABOVE,
            })),
            lookup,
            fresh,
            failed,
            max_stale: max_stale.max(fresh),
        }
    }

    /// The addresses of `host` (a normalized name, not an IP literal), or
    /// why it has none (`Err` holds the reason). Must run on a tokio
    /// runtime (the lookup runs on its blocking threads). Dropping the
    /// future does not stop a lookup it started: others wait for it.
    pub(crate) async fn resolve(&self, host: &str) -> Answer {
        let (found, start) = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            if table.hosts.len() >= table.sweep_at && !table.hosts.contains_key(host) {
                self.sweep(&mut table);
            }
            let entry = table.hosts.entry(host.to_owned()).or_default();
            let failed_lately = entry
                .failure
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < self.failed);
            let usable = entry
                .good
                .as_ref()
                .filter(|(_, at)| at.elapsed() < self.max_stale)
                .map(|(addrs, at)| (addrs.clone(), at.elapsed() >= self.fresh));
            if let Some((addrs, stale)) = usable {
                // Fresh, or stale while a new lookup runs (or failed lately).
                let renew = stale && entry.running.is_none() && !failed_lately;
                (Found::Now(Ok(addrs)), renew.then(|| begin(entry)))
            } else if let Some(running) = &entry.running {
                (Found::Wait(running.clone()), None)
            } else if let Some((why, _)) = entry.failure.as_ref().filter(|_| failed_lately) {
                (Found::Now(Err(why.clone())), None)
            } else {
                let tx = begin(entry);
                (Found::Wait(tx.subscribe()), Some(tx))
            }
        };
        // Started outside the table's lock (it may start a thread).
        if let Some(tx) = start {
            self.start(host, tx);
        }
        match found {
            Found::Now(answer) => answer,
            Found::Wait(mut running) => match running.wait_for(Option::is_some).await {
                Ok(answer) => answer.clone().unwrap_or_else(|| Err("no answer".into())),
                Err(_) => Err("the lookup ended without an answer".into()),
            },
        }
    }

    /// Drops the entries that can no longer be used (no lookup running,
    /// addresses and failure too old), and sweeps next when the table has
    /// doubled.
    fn sweep(&self, table: &mut Table) {
        let (max_stale, failed) = (self.max_stale, self.failed);
        table.hosts.retain(|_, e| {
            e.running.is_some()
                || e.good
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() < max_stale)
                || e.failure
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() < failed)
        });
        table.sweep_at = SWEEP_ABOVE.max(table.hosts.len() * 2);
    }

    /// Looks `host` up on a blocking thread; the answer goes into the
    /// table and to everyone waiting, however the lookup ends.
    fn start(&self, host: &str, tx: watch::Sender<Option<Answer>>) {
        let done = Done {
            table: self.table.clone(),
            host: host.to_owned(),
            tx: Some(tx),
        };
        let lookup = self.lookup.clone();
        tokio::task::spawn_blocking(move || {
            let mut done = done;
            let answer: Answer = match lookup(&done.host) {
                Ok(addrs) if addrs.is_empty() => Err("no addresses".into()),
                Ok(mut addrs) => {
                    addrs.truncate(MAX_ADDRS);
                    Ok(addrs.into())
                }
                Err(e) => Err(e.to_string().into()),
            };
            done.answer(answer);
        });
    }
}

/// Marks a lookup as running in `entry`: the sender of its answer.
fn begin(entry: &mut Entry) -> watch::Sender<Option<Answer>> {
    let (tx, rx) = watch::channel(None);
    entry.running = Some(rx);
    tx
}

/// Ends a lookup exactly once: with its answer, or, if it ends without
/// one (a panic in the resolver, or the runtime dropping it unstarted),
/// with a failure, so its host is never left waiting on it.
struct Done {
    table: Arc<Mutex<Table>>,
    host: String,
    tx: Option<watch::Sender<Option<Answer>>>,
}

impl Done {
    fn answer(&mut self, answer: Answer) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = table.hosts.entry(self.host.clone()).or_default();
            let now = Instant::now();
            match &answer {
                Ok(addrs) => {
                    entry.good = Some((addrs.clone(), now));
                    entry.failure = None;
                }
                // The last good addresses stay (module docs).
                Err(why) => entry.failure = Some((why.clone(), now)),
            }
            entry.running = None;
        }
        let _ = tx.send(Some(answer));
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.answer(Err("the lookup ended without an answer".into()));
    }
}

/// `getaddrinfo`, without duplicates, in its order.
fn system_lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in (host, 0).to_socket_addrs()? {
        if !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A name server the test controls: `slow.test` answers only when the
    /// test opens its gate, `gone.test` does not exist, any other name
    /// resolves to 192.0.2.<how many lookups of it so far>. Every call is
    /// counted per name.
    struct Names {
        calls: Mutex<HashMap<String, usize>>,
        gate: Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Names {
        fn new() -> Arc<Names> {
            Arc::new(Names {
                calls: Mutex::default(),
                gate: Mutex::new(false),
                opened: std::sync::Condvar::new(),
            })
        }

        fn lookups(self: &Arc<Self>, fresh: Duration, failed: Duration) -> Lookups {
            self.lookups_kept(fresh, failed, MAX_STALE)
        }

        fn lookups_kept(
            self: &Arc<Self>,
            fresh: Duration,
            failed: Duration,
            max_stale: Duration,
        ) -> Lookups {
            let names = self.clone();
            Lookups::with(
                Arc::new(move |host: &str| names.lookup(host)),
                fresh,
                failed,
                max_stale,
            )
        }

        fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                let n = calls.entry(host.to_owned()).or_default();
                *n += 1;
                *n
            };
            match host {
                "slow.test" => {
                    let open = self.gate.lock().unwrap();
                    let _open = self.opened.wait_while(open, |open| !*open).unwrap();
                    Ok(vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))])
                }
                "gone.test" => Err(io::Error::other("no such name")),
                "flaky.test" if n > 1 => Err(io::Error::other("server failure")),
                "panic.test" => panic!("injected by a test"),
                _ => Ok(vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, n as u8))]),
            }
        }

        fn open(&self) {
            *self.gate.lock().unwrap() = true;
            self.opened.notify_all();
        }

        fn calls(&self, host: &str) -> usize {
            self.calls.lock().unwrap().get(host).copied().unwrap_or(0)
        }
    }

    /// Opens the gate when dropped, so a failed test does not leave a
    /// lookup hanging (a runtime waits for its blocking threads when it
    /// is dropped). Declare it after the runtime: it is dropped first.
    struct OpenOnDrop(Arc<Names>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn a_hanging_lookup_is_made_once_and_holds_up_no_other_host() {
        let names = Names::new();
        let lookups = names.lookups(FRESH, FAILED);
        let rt = runtime();
        let _open = OpenOnDrop(names.clone());
        rt.block_on(async {
            // Many requests to the slow host at once: one lookup.
            let waiting: Vec<_> = (0..50)
                .map(|_| {
                    let lookups = lookups.clone();
                    tokio::spawn(async move { lookups.resolve("slow.test").await })
                })
                .collect();
            // Until the slow host's one lookup hangs on its thread.
            let end = Instant::now() + Duration::from_secs(10);
            while names.calls("slow.test") == 0 {
                assert!(Instant::now() < end, "the slow lookup never started");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Another host resolves while the slow one hangs.
            let other = tokio::time::timeout(Duration::from_secs(10), lookups.resolve("fast.test"))
                .await
                .expect("another host's lookup waited for the hanging one");
            assert_eq!(&other.unwrap()[..], &[ip(1)]);
            assert_eq!(names.calls("slow.test"), 1);
            assert!(waiting.iter().all(|t| !t.is_finished()));
            names.open();
            for t in waiting {
                assert_eq!(&t.await.unwrap().unwrap()[..], &[ip(99)]);
            }
            assert_eq!(names.calls("slow.test"), 1);
        });
    }

    #[test]
    fn a_request_that_gives_up_leaves_the_lookup_running_for_the_next() {
        let names = Names::new();
        let lookups = names.lookups(FRESH, FAILED);
        let rt = runtime();
        let _open = OpenOnDrop(names.clone());
        rt.block_on(async {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(20), lookups.resolve("slow.test")).await;
            assert!(gave_up.is_err());
            let next = tokio::spawn({
                let lookups = lookups.clone();
                async move { lookups.resolve("slow.test").await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            names.open();
            assert_eq!(&next.await.unwrap().unwrap()[..], &[ip(99)]);
            assert_eq!(names.calls("slow.test"), 1);
        });
    }

    #[test]
    fn a_fresh_answer_is_kept_and_a_stale_one_used_while_it_is_renewed() {
        let names = Names::new();
        let lookups = names.lookups(Duration::from_millis(500), FAILED);
        let rt = runtime();
        rt.block_on(async {
            assert_eq!(&lookups.resolve("a.test").await.unwrap()[..], &[ip(1)]);
            assert_eq!(&lookups.resolve("a.test").await.unwrap()[..], &[ip(1)]);
            assert_eq!(names.calls("a.test"), 1);
            tokio::time::sleep(Duration::from_millis(600)).await;
            // Stale: answered at once with the old addresses, renewed behind.
            assert_eq!(&lookups.resolve("a.test").await.unwrap()[..], &[ip(1)]);
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                let now = lookups.resolve("a.test").await.unwrap();
                if now[..] != [ip(1)] {
                    break;
                }
                assert!(Instant::now() < end, "the stale answer was never renewed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(names.calls("a.test") >= 2);
        });
    }

    #[test]
    fn a_failed_renewal_keeps_the_last_good_addresses_for_a_while() {
        let names = Names::new();
        // Renewed at every use; a failure stands for an hour.
        let kept = names.lookups_kept(
            Duration::ZERO,
            Duration::from_secs(3600),
            Duration::from_millis(300),
        );
        let rt = runtime();
        rt.block_on(async {
            assert_eq!(&kept.resolve("flaky.test").await.unwrap()[..], &[ip(1)]);
            // The renewal fails; the good addresses are still used.
            let end = Instant::now() + Duration::from_secs(10);
            while names.calls("flaky.test") < 2
                || kept.table.lock().unwrap().hosts["flaky.test"]
                    .running
                    .is_some()
            {
                assert_eq!(&kept.resolve("flaky.test").await.unwrap()[..], &[ip(1)]);
                assert!(Instant::now() < end, "never renewed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for _ in 0..10 {
                assert_eq!(&kept.resolve("flaky.test").await.unwrap()[..], &[ip(1)]);
            }
            // Not looked up again while the failure stands.
            assert_eq!(names.calls("flaky.test"), 2);
            // Too old to use: the failure is the answer.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let why = kept.resolve("flaky.test").await.unwrap_err();
            assert!(why.contains("server failure"), "{why}");
        });
    }

    #[test]
    fn a_failure_is_the_answer_for_a_while_then_the_name_is_looked_up_again() {
        let names = Names::new();
        let lookups = names.lookups(FRESH, Duration::from_millis(500));
        let rt = runtime();
        rt.block_on(async {
            let why = lookups.resolve("gone.test").await.unwrap_err();
            assert!(why.contains("no such name"), "{why}");
            assert!(lookups.resolve("gone.test").await.is_err());
            assert_eq!(names.calls("gone.test"), 1);
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert!(lookups.resolve("gone.test").await.is_err());
            assert_eq!(names.calls("gone.test"), 2);
        });
    }

    #[test]
    fn a_lookup_that_panics_fails_its_host_and_is_tried_again_later() {
        let names = Names::new();
        let lookups = names.lookups(FRESH, Duration::from_millis(200));
        let rt = runtime();
        rt.block_on(async {
            let why = lookups.resolve("panic.test").await.unwrap_err();
            assert!(why.contains("without an answer"), "{why}");
            assert!(
                lookups.table.lock().unwrap().hosts["panic.test"]
                    .running
                    .is_none()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(lookups.resolve("panic.test").await.is_err());
            assert_eq!(names.calls("panic.test"), 2);
        });
    }

    #[test]
    fn the_table_of_hosts_stays_bounded() {
        let names = Names::new();
        let lookups = names.lookups_kept(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let rt = runtime();
        rt.block_on(async {
            for i in 0..(SWEEP_ABOVE + 100) {
                lookups.resolve(&format!("h{i}.test")).await.unwrap();
            }
        });
        let hosts = lookups.table.lock().unwrap().hosts.len();
        assert!(hosts <= SWEEP_ABOVE, "{hosts} hosts kept");
    }

    #[test]
    fn usable_answers_are_not_swept() {
        let names = Names::new();
        let lookups = names.lookups(FRESH, FAILED);
        let rt = runtime();
        rt.block_on(async {
            for i in 0..(SWEEP_ABOVE + 10) {
                lookups.resolve(&format!("h{i}.test")).await.unwrap();
            }
        });
        let table = lookups.table.lock().unwrap();
        assert_eq!(table.hosts.len(), SWEEP_ABOVE + 10);
        assert_eq!(
            table.sweep_at,
            2 * SWEEP_ABOVE,
            "the next sweep waits for the table to double"
        );
    }

    #[test]
    fn the_system_resolver_answers_for_localhost() {
        let lookups = Lookups::system();
        let rt = runtime();
        let addrs = rt.block_on(lookups.resolve("localhost")).unwrap();
        assert!(addrs.iter().all(|ip| ip.is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }
}
