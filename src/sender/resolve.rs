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
//!   one blocking thread however many of its deliveries are due;
//! - **answers are kept** for [`FRESH`], and a host whose answer is older
//!   is connected to with the addresses it had while a new lookup runs in
//!   the background: once a host has resolved, its deliveries never wait
//!   for DNS again (a changed record is used from the first connection
//!   after the new lookup ends; a failed new lookup drops the old
//!   addresses);
//! - **failures are kept** for [`FAILED`], so a name that does not resolve
//!   is not looked up again for every delivery due to it.
//!
//! Every connection still passes the SSRF guard on the addresses it
//! connects to, cached or not ([`Guard::keep`](crate::ssrf::Guard::keep)).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a host's addresses are used without a new lookup.
pub(crate) const FRESH: Duration = Duration::from_secs(10);
/// How long a failed lookup is the answer for its host.
pub(crate) const FAILED: Duration = Duration::from_secs(2);
/// At most this many addresses of a host are kept.
const MAX_ADDRS: usize = 16;
/// Past this many hosts, answers older than they may be used are dropped
/// when a new host is looked up.
const SWEEP_ABOVE: usize = 4096;

/// What a lookup gives: the host's addresses, or why there are none.
type Answer = std::result::Result<Arc<[IpAddr]>, Arc<str>>;

/// The function that looks a host up (the system resolver, except in
/// tests), run on a blocking thread.
type LookupFn = dyn Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync;

#[derive(Default)]
struct Entry {
    /// The last answer and when it came.
    last: Option<(Answer, Instant)>,
    /// A lookup running now: its answer, when it comes.
    running: Option<watch::Receiver<Option<Answer>>>,
}

/// The task senders' lookups: one per host at a time, answers kept
/// (module docs).
#[derive(Clone)]
pub(crate) struct Lookups {
    hosts: Arc<Mutex<HashMap<String, Entry>>>,
    lookup: Arc<LookupFn>,
    fresh: Duration,
    failed: Duration,
}

impl fmt::Debug for Lookups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookups")
            .field("fresh", &self.fresh)
            .field("failed", &self.failed)
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
        Lookups::with(Arc::new(system_lookup), FRESH, FAILED)
    }

    fn with(lookup: Arc<LookupFn>, fresh: Duration, failed: Duration) -> Lookups {
        Lookups {
            hosts: Arc::default(),
            lookup,
            fresh,
            failed,
        }
    }

    /// The addresses of `host` (a normalized name, not an IP literal), or
    /// why it has none (`Err` holds the reason). Must run on a tokio
    /// runtime (the lookup runs on its blocking threads). Dropping the
    /// future does not stop a lookup it started: others wait for it.
    pub(crate) async fn resolve(&self, host: &str) -> std::result::Result<Arc<[IpAddr]>, Arc<str>> {
        let found = {
            let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
            if !hosts.contains_key(host) && hosts.len() >= SWEEP_ABOVE {
                let keep = self.fresh.max(self.failed);
                hosts.retain(|_, e| {
                    e.running.is_some()
                        || e.last.as_ref().is_some_and(|(_, at)| at.elapsed() < keep)
                });
            }
            let entry = hosts.entry(host.to_owned()).or_default();
            match (&entry.last, &entry.running) {
                (Some((Ok(addrs), at)), running) => {
                    if at.elapsed() >= self.fresh && running.is_none() {
                        entry.running = Some(self.start(host));
                    }
                    // Fresh, or stale while a new lookup runs.
                    Found::Now(Ok(addrs.clone()))
                }
                (Some((Err(why), at)), None) if at.elapsed() < self.failed => {
                    Found::Now(Err(why.clone()))
                }
                (_, Some(running)) => Found::Wait(running.clone()),
                (_, None) => {
                    let running = self.start(host);
                    entry.running = Some(running.clone());
                    Found::Wait(running)
                }
            }
        };
        match found {
            Found::Now(answer) => answer,
            Found::Wait(mut running) => match running.wait_for(Option::is_some).await {
                Ok(answer) => answer.clone().unwrap_or_else(|| Err("no answer".into())),
                // The lookup's thread ended without answering (it panicked).
                Err(_) => Err("the lookup ended without an answer".into()),
            },
        }
    }

    /// Starts looking `host` up on a blocking thread; the answer goes into
    /// the table and to everyone waiting.
    fn start(&self, host: &str) -> watch::Receiver<Option<Answer>> {
        let (tx, rx) = watch::channel(None);
        let (hosts, lookup, name) = (self.hosts.clone(), self.lookup.clone(), host.to_owned());
        tokio::task::spawn_blocking(move || {
            let answer: Answer = match lookup(&name) {
                Ok(addrs) if addrs.is_empty() => Err("no addresses".into()),
                Ok(mut addrs) => {
                    addrs.truncate(MAX_ADDRS);
                    Ok(addrs.into())
                }
                Err(e) => Err(e.to_string().into()),
            };
            {
                let mut hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = hosts.entry(name).or_default();
                entry.last = Some((answer.clone(), Instant::now()));
                entry.running = None;
            }
            let _ = tx.send(Some(answer));
        });
        rx
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
            let names = self.clone();
            Lookups::with(
                Arc::new(move |host: &str| names.lookup(host)),
                fresh,
                failed,
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
            tokio::time::sleep(Duration::from_millis(50)).await;
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
        let lookups = names.lookups(Duration::from_millis(100), FAILED);
        let rt = runtime();
        rt.block_on(async {
            assert_eq!(&lookups.resolve("a.test").await.unwrap()[..], &[ip(1)]);
            assert_eq!(&lookups.resolve("a.test").await.unwrap()[..], &[ip(1)]);
            assert_eq!(names.calls("a.test"), 1);
            tokio::time::sleep(Duration::from_millis(150)).await;
            // Stale: answered at once with the old addresses, renewed behind.
            assert_eq!(&lookups.resolve("a.test").await.unwrap()[..], &[ip(1)]);
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                let now = lookups.resolve("a.test").await.unwrap();
                if now[..] == [ip(2)] {
                    break;
                }
                assert!(Instant::now() < end, "the stale answer was never renewed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(names.calls("a.test"), 2);
        });
    }

    #[test]
    fn a_failure_is_the_answer_for_a_while_then_the_name_is_looked_up_again() {
        let names = Names::new();
        let lookups = names.lookups(FRESH, Duration::from_millis(100));
        let rt = runtime();
        rt.block_on(async {
            let why = lookups.resolve("gone.test").await.unwrap_err();
            assert!(why.contains("no such name"), "{why}");
            assert!(lookups.resolve("gone.test").await.is_err());
            assert_eq!(names.calls("gone.test"), 1);
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(lookups.resolve("gone.test").await.is_err());
            assert_eq!(names.calls("gone.test"), 2);
        });
    }

    #[test]
    fn the_table_of_hosts_stays_bounded() {
        let names = Names::new();
        let lookups = names.lookups(Duration::ZERO, Duration::ZERO);
        let rt = runtime();
        rt.block_on(async {
            for i in 0..(SWEEP_ABOVE + 100) {
                lookups.resolve(&format!("h{i}.test")).await.unwrap();
            }
        });
        let hosts = lookups.hosts.lock().unwrap().len();
        assert!(hosts <= SWEEP_ABOVE, "{hosts} hosts kept");
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
