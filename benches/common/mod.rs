//! Shared set-up for the benches: stores in temp dirs, a receiver on
//! 127.0.0.1 (fast, or answering after a delay), the event used everywhere.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hookbus::{Builder, Bus};
use serde::Serialize;

/// A ~200-byte event, as JSON.
#[derive(Serialize, Clone)]
pub struct Order {
    pub id: u64,
    pub customer: &'static str,
    pub email: &'static str,
    pub currency: &'static str,
    pub amount_cents: u64,
    pub items: [&'static str; 3],
    pub note: &'static str,
}

pub fn order(id: u64) -> Order {
    Order {
        id,
        customer: "cus_0123456789abcdef",
        email: "someone@example.com",
        currency: "EUR",
        amount_cents: 123_456,
        items: ["sku_000000000001", "sku_000000000002", "sku_000000000003"],
        note: "Leave the parcel with the neighbour if nobody is at home.",
    }
}

/// The instant publish stamps count from (one per process: the publisher
/// and the receiver share it).
pub fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since [`origin`], now.
pub fn stamp_now() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// A ~200-byte event that carries the instant it was published at
/// (`sent_ns`, see [`stamp_now`]): a timing receiver measures
/// publish-to-receipt latency from it.
#[derive(Serialize, Clone)]
pub struct Stamped {
    pub sent_ns: u64,
    #[serde(flatten)]
    pub order: Order,
}

/// What a timing receiver reads of a body.
#[derive(serde::Deserialize)]
struct Stamp {
    sent_ns: u64,
}

/// A builder for benches: loopback allowed, failed attempts retried at once.
pub fn builder(dir: &Path) -> Builder {
    Bus::builder()
        .path(dir)
        .allow_private_targets(true)
        .retry_schedule(vec![Duration::from_millis(1); 5])
}

/// A URL on loopback where nothing listens.
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}/hook")
}

/// How a bench receiver answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Behaviour {
    /// 204 to every request.
    Healthy,
    /// 500 to every other request, 204 to the rest.
    FailsHalf,
    /// Never answers (holds each request until the client gives up).
    Hangs,
}

/// A receiver (axum on its own current-thread runtime) answering 204,
/// counting requests answered and the most it held at once.
pub struct Receiver {
    pub addr: SocketAddr,
    pub count: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    /// Stamped bodies' `(sent_ns, publish-to-receipt ns)`, when timing.
    latencies: Arc<Mutex<Vec<(u64, u64)>>>,
}

/// Counts a request out of `in_flight` however its handler ends (a client
/// that hangs up drops the handler mid-sleep).
struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Receiver {
    /// A fast receiver: answers at once.
    pub fn start() -> Receiver {
        Receiver::start_with_delay(Duration::ZERO)
    }

    /// A receiver that answers each request `delay` after it arrived. The
    /// wait is a tokio sleep, so the one runtime thread holds any number of
    /// requests waiting at once; a request is counted when it is answered.
    pub fn start_with_delay(delay: Duration) -> Receiver {
        Receiver::start_behaving(delay, Behaviour::Healthy)
    }

    /// A receiver that answers after `delay` as `behaviour` says; it
    /// counts the requests it answers (a hanging one answers none).
    pub fn start_behaving(delay: Duration, behaviour: Behaviour) -> Receiver {
        Receiver::start_with(delay, behaviour, false)
    }

    /// A fast receiver that also records each request's publish-to-receipt
    /// latency from the [`Stamped`] body it carries (see
    /// [`take_timings`](Self::take_timings)).
    pub fn start_timing() -> Receiver {
        Receiver::start_with(Duration::ZERO, Behaviour::Healthy, true)
    }

    fn start_with(delay: Duration, behaviour: Behaviour, timing: bool) -> Receiver {
        origin();
        let count = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let lat = latencies.clone();
        let in_flight = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let (c, f, p) = (count.clone(), in_flight.clone(), peak.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Reads the body, as a real receiver does to check the
                // signature: one that answers without reading it makes
                // hyper close the connection whenever the body had not
                // arrived with the headers, and the clients reconnect.
                let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
                    let (c, f, p, lat) = (c.clone(), f.clone(), p.clone(), lat.clone());
                    async move {
                        if timing {
                            let now = stamp_now();
                            if let Ok(s) = serde_json::from_slice::<Stamp>(&body) {
                                lat.lock()
                                    .unwrap()
                                    .push((s.sent_ns, now.saturating_sub(s.sent_ns)));
                            }
                        }
                        std::hint::black_box(body);
                        if !delay.is_zero() {
                            p.fetch_max(f.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
                            let _guard = InFlight(f);
                            tokio::time::sleep(delay).await;
                        }
                        if behaviour == Behaviour::Hangs {
                            // Until the client gives up (its timeout).
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let n = c.fetch_add(1, Ordering::Relaxed);
                        if behaviour == Behaviour::FailsHalf && n % 2 == 0 {
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            axum::http::StatusCode::NO_CONTENT
                        }
                    }
                });
                // A listen backlog for thousands of connections opened at
                // once (tokio's `bind` asks for 1024; beyond it the kernel
                // drops SYNs and clients retry after a second).
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let listener = socket.listen(8192).unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        Receiver {
            addr,
            count,
            in_flight,
            peak,
            latencies,
        }
    }

    /// The `(sent_ns, latency ns)` of each request recorded since the last
    /// call (timing receivers): when it was stamped, and how long it took.
    pub fn take_timings(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.latencies.lock().unwrap())
    }

    /// The most requests held at once since the last call (only counted
    /// with a delay), and starts counting again from those held now.
    pub fn take_peak(&self) -> u64 {
        self.peak
            .swap(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Requests that arrived so far: answered or held (only counted with
    /// a delay).
    pub fn arrived(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) + self.count()
    }
}

/// Waits (bounded) until `cond` holds.
pub fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "bench timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `f` `total` times, spread over `threads` threads, and returns how
/// long that took.
pub fn spread(threads: usize, total: u64, f: impl Fn() + Sync) -> Duration {
    let per = total.div_ceil(threads as u64);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| (0..per).for_each(|_| f()));
        }
    });
    start.elapsed()
}

/// An idle thread that asks to sleep [`StallMeter::TICK`] at a time and
/// notes each wake-up more than [`StallMeter::LATE`] late (jHiccup's
/// idea): then a thread that was ready to run waited that long for a CPU,
/// whatever the code measured beside it was doing, because the machine
/// (the hypervisor, the kernel, other processes, or the two cores all
/// busy) did not run it. The steady rows that time requests print these
/// stalls beside their latencies, so a tail can be told from the
/// machine's. Its thread is named `stall-meter` (its own CPU is left out
/// of the rows' figures).
///
/// At each look it also reads the statistics of the block device holding
/// the temporary folder (where sled's stores are; PostgreSQL's data is on
/// the same device on this project's machines), `/sys/dev/block/M:m/stat`,
/// and notes every stretch of more than [`StallMeter::DISK_BUSY`] in which
/// the device had requests in flight and completed none: it was stuck, and
/// every `fsync` waited. Both kinds are told apart in
/// [`summary`](Self::summary).
pub struct StallMeter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    stalls: Arc<Mutex<Vec<Stall>>>,
    disk: Arc<Mutex<DiskWatch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A stall the [`StallMeter`] saw, in [`stamp_now`]'s clock: a late
/// wake-up of its thread (from when it should have woken, for how late
/// it was), or a stuck disk (from the first look that saw its requests in
/// flight, to the last look before one of them completed).
#[derive(Clone, Copy, Debug)]
pub struct Stall {
    pub from_ns: u64,
    pub late_ns: u64,
}

/// The [`StallMeter`]'s view of the disk.
struct DiskWatch {
    /// The device's statistics file, if the temporary folder is on one.
    stat: Option<std::path::PathBuf>,
    /// Since when (and at what count of completed requests) the device
    /// has had requests in flight and completed none.
    stuck_since: Option<(Instant, u64)>,
    /// The meter's last look.
    last_look: Instant,
    stalls: Vec<Stall>,
}

impl DiskWatch {
    /// Ends the stretch that began at `since`, as known at the last look,
    /// noting it if it was long enough.
    fn close(&mut self, since: Instant) {
        let took = self.last_look.saturating_duration_since(since);
        if took > StallMeter::DISK_BUSY {
            self.stalls.push(Stall {
                from_ns: since.duration_since(origin()).as_nanos() as u64,
                late_ns: took.as_nanos() as u64,
            });
        }
    }

    /// One look: the device's requests in flight and completed so far.
    fn look(&mut self, now: Instant, in_flight: u64, completed: u64) {
        match self.stuck_since {
            Some((since, before)) if in_flight == 0 || completed != before => {
                self.close(since);
                self.stuck_since = (in_flight > 0).then_some((now, completed));
            }
            None if in_flight > 0 => self.stuck_since = Some((now, completed)),
            _ => {}
        }
        self.last_look = now;
    }
}

/// `(in flight, completed)` from a block device's `stat` file: fields 9,
/// and 1 + 5 + 12 + 16 (reads, writes, discards, flushes; the later ones
/// only on newer kernels).
fn disk_counts(text: &str) -> Option<(u64, u64)> {
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i - 1).copied().unwrap_or(0);
    Some((*f.get(8)?, at(1) + at(5) + at(12) + at(16)))
}

impl StallMeter {
    /// How long the meter's thread sleeps at a time.
    pub const TICK: Duration = Duration::from_millis(1);
    /// How late a wake-up must be to count as a stall.
    pub const LATE: Duration = Duration::from_millis(1);
    /// How long the device must have requests in flight and complete none
    /// to count as a disk stall (a 4 KiB `fdatasync` takes 0.3-0.5 ms here).
    pub const DISK_BUSY: Duration = Duration::from_millis(5);
    /// How long after a stall [`summary`](Self::summary) also counts slow
    /// requests as possibly held up by what the stall left queued.
    pub const AFTER: Duration = Duration::from_millis(50);

    pub fn start() -> StallMeter {
        origin();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let disk = Arc::new(Mutex::new(DiskWatch {
            stat: device_stat_file(&std::env::temp_dir()),
            stuck_since: None,
            last_look: Instant::now(),
            stalls: Vec::new(),
        }));
        let (s, st, dk) = (stop.clone(), stalls.clone(), disk.clone());
        let thread = std::thread::Builder::new()
            .name("stall-meter".into())
            .spawn(move || {
                let stat = dk.lock().unwrap().stat.clone();
                let mut buf = String::new();
                while !s.load(Ordering::Relaxed) {
                    let asked = Instant::now() + StallMeter::TICK;
                    std::thread::sleep(StallMeter::TICK);
                    let now = Instant::now();
                    let late = now.saturating_duration_since(asked);
                    if late > StallMeter::LATE {
                        st.lock().unwrap().push(Stall {
                            from_ns: asked.duration_since(origin()).as_nanos() as u64,
                            late_ns: late.as_nanos() as u64,
                        });
                    }
                    let Some(path) = &stat else { continue };
                    buf.clear();
                    let read = std::fs::File::open(path)
                        .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut buf));
                    if let (Ok(_), Some((in_flight, completed))) = (read, disk_counts(&buf)) {
                        dk.lock().unwrap().look(now, in_flight, completed);
                    }
                }
            })
            .unwrap();
        StallMeter {
            stop,
            stalls,
            disk,
            thread: Some(thread),
        }
    }

    /// The stalls seen since the last call: the meter's thread's own, and
    /// the disk's (a disk stall still going on is cut at the last look and
    /// goes on from there).
    pub fn take(&self) -> Stalls {
        let cpu = std::mem::take(&mut *self.stalls.lock().unwrap());
        let mut disk = self.disk.lock().unwrap();
        if let Some((since, completed)) = disk.stuck_since {
            disk.close(since);
            disk.stuck_since = Some((disk.last_look, completed));
        }
        Stalls {
            cpu,
            disk: disk
                .stat
                .is_some()
                .then(|| std::mem::take(&mut disk.stalls)),
        }
    }

    /// One line on `timings` (`(start, latency)` pairs in [`stamp_now`]'s
    /// clock, from [`Receiver::take_timings`] or a floor's own) against
    /// `stalls` (from [`take`](Self::take), over the same stretch): how
    /// many requests took longer than `bound`, how many of those were on
    /// their way (between their start and their receipt) during a stall of
    /// each kind, and during one or [`AFTER`](Self::AFTER) past its end,
    /// and how many stalls and the longest.
    pub fn summary(stalls: &Stalls, timings: &[(u64, u64)], bound: Duration) -> String {
        let bound = bound.as_nanos() as u64;
        let slow: Vec<&(u64, u64)> = timings.iter().filter(|(_, l)| *l > bound).collect();
        // Requests on their way at some moment from a stall's start to
        // `after` past its end.
        let within = |kind: &[Stall], after: u64| {
            slow.iter()
                .filter(|(sent, lat)| {
                    kind.iter()
                        .any(|s| s.from_ns < sent + lat && *sent < s.from_ns + s.late_ns + after)
                })
                .count()
        };
        let during = |kind: &[Stall]| within(kind, 0);
        let longest =
            |kind: &[Stall]| kind.iter().map(|s| s.late_ns).max().unwrap_or(0) as f64 / 1e6;
        let cpu = format!(
            "{} of them on their way during a stall of the CPU (a sleeping thread woke over \
             {} ms late: {}, longest {:.1} ms)",
            during(&stalls.cpu),
            StallMeter::LATE.as_millis(),
            stalls.cpu.len(),
            longest(&stalls.cpu),
        );
        let disk = match &stalls.disk {
            None => "the disk's not measured (no block device under the temporary folder)".into(),
            Some(disk) => {
                let either: Vec<Stall> = stalls.cpu.iter().chain(disk).copied().collect();
                format!(
                    "{} during one of the disk (requests in flight and none completed for \
                     over {} ms: {}, longest {:.1} ms), {} during either, {} during either \
                     or in the {} ms after one (what a stall left queued)",
                    during(disk),
                    StallMeter::DISK_BUSY.as_millis(),
                    disk.len(),
                    longest(disk),
                    during(&either),
                    within(&either, StallMeter::AFTER.as_nanos() as u64),
                    StallMeter::AFTER.as_millis(),
                )
            }
        };
        format!(
            "{} requests over {:.0} us; {cpu}, {disk}",
            slow.len(),
            bound as f64 / 1e3
        )
    }
}

/// What a [`StallMeter`] saw over a stretch.
#[derive(Clone, Debug, Default)]
pub struct Stalls {
    /// Its thread's late wake-ups.
    pub cpu: Vec<Stall>,
    /// Stretches in which the disk had requests in flight and completed
    /// none; `None` when there was no disk to watch.
    pub disk: Option<Vec<Stall>>,
}

/// `/sys/dev/block/M:m/stat` of the block device holding `dir`, if it is
/// on one (Linux; not tmpfs or overlay, whose device numbers name no
/// block device).
fn device_stat_file(dir: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    // glibc's major() and minor().
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    let path = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    path.exists().then_some(path)
}

impl Drop for StallMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
