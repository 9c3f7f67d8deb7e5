//! A bounded soak: publishers, many subscriptions on several local
//! receivers, some of them flaky; reports what was published, delivered,
//! retried and dead, the peak memory, and checks that nothing was lost.
//!
//! ```text
//! cargo run --release --example soak -- --seconds 60
//! ```
//! Options: `--seconds N` (60), `--publishers N` (4), `--rate N` events per
//! second in all (200), `--keep N`: keep delivered history N seconds
//! (retention, `Builder::keep_delivered_for`; 0, the default, keeps it all).
//! It samples the stored deliveries and the size on disk as it goes: with
//! `--keep`, the stored deliveries level off instead of growing with the
//! run. With `SOAK_FILES=1` in the environment it also lists the store's
//! files and its keys by key space at the end. Only 127.0.0.1 is used.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};

#[path = "common/measure.rs"]
mod measure;
#[path = "common/receiver.rs"]
#[allow(dead_code)]
mod receiver;

const SUBSCRIPTIONS: usize = 50;
const RECEIVERS: usize = 5;
const EVENT_NAMES: usize = 5;

fn main() {
    if let Err(e) = run() {
        eprintln!("soak failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = measure::arg(&args, "--seconds", 60)?;
    let publishers = measure::arg(&args, "--publishers", 4)?.max(1);
    let rate = measure::arg(&args, "--rate", 200)?.max(1);
    let keep = measure::arg(&args, "--keep", 0)?;

    // Receivers: they record every delivery id; paths under /flaky fail
    // every other request.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let mut urls = Vec::new();
    for _ in 0..RECEIVERS {
        let (seen, requests) = (seen.clone(), requests.clone());
        urls.push(receiver::start(move |req| {
            let n = requests.fetch_add(1, Ordering::Relaxed);
            if req.path.starts_with("/flaky") && n % 2 == 0 {
                return 500;
            }
            seen.lock()
                .unwrap()
                .insert(req.header("x-webhook-delivery").to_owned());
            204
        })?);
    }

    let dir = tempfile::tempdir()?;
    let bus = Bus::builder()
        .path(dir.path())
        .keep_delivered_for((keep > 0).then(|| Duration::from_secs(keep as u64)))
        .allow_private_targets(true)
        .retry_schedule(
            [50, 100, 200, 400, 800, 1600]
                .map(Duration::from_millis)
                .to_vec(),
        )
        .open()?;
    // 10 % of the subscriptions are flaky.
    for i in 0..SUBSCRIPTIONS {
        let path = if i % 10 == 0 {
            format!("/flaky/{i}")
        } else {
            format!("/ok/{i}")
        };
        bus.subscribe(
            NewSubscription::new(format!("sub{i}"), format!("{}{path}", urls[i % RECEIVERS]))
                .event(format!("e{}", i % EVENT_NAMES)),
        )?;
    }

    println!(
        "soak: {seconds} s, {publishers} publishers, {rate} events/s, {SUBSCRIPTIONS} subscriptions on {RECEIVERS} receivers (10 % flaky), {}",
        if keep > 0 {
            format!("delivered history kept {keep} s")
        } else {
            "all history kept".to_owned()
        }
    );
    let published = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    // (elapsed s, deliveries stored, bytes on disk), sampled 12 times.
    let samples: Mutex<Vec<(f64, u64, u64)>> = Mutex::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            let every = Duration::from_secs(seconds.max(1) as u64).div_f64(12.0);
            while Instant::now() < end {
                std::thread::sleep(every);
                let (Ok(st), Ok(size)) = (bus.outbox().stats(), bus.outbox().size_on_disk()) else {
                    continue;
                };
                let stored = st.pending + st.delivered + st.dead;
                let t = start.elapsed().as_secs_f64();
                println!(
                    "  t={t:>5.1} s  stored deliveries {stored:>8}  on disk {:>6.1} MB",
                    size as f64 / 1e6
                );
                samples.lock().unwrap().push((t, stored, size));
            }
        });
        for p in 0..publishers {
            let (bus, published) = (bus.clone(), &published);
            s.spawn(move || {
                let interval = Duration::from_secs_f64(publishers as f64 / rate as f64);
                let mut next = Instant::now();
                let mut n = 0u64;
                while Instant::now() < end {
                    let name = format!("e{}", (p + n) % EVENT_NAMES as u64);
                    bus.publish(&name, &serde_json::json!({"publisher": p, "n": n}))
                        .expect("publish");
                    published.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            });
        }
    });
    bus.flush()?;
    let published = published.load(Ordering::Relaxed);
    let expected = published * (SUBSCRIPTIONS / EVENT_NAMES) as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while bus.outbox().stats()?.pending > 0 {
        if Instant::now() > drain_deadline {
            return Err(
                format!("outbox did not drain in 120 s: {:?}", bus.outbox().stats()?).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    let stats = bus.outbox().stats()?;
    let received = seen.lock().unwrap().len() as u64;
    let total_requests = requests.load(Ordering::Relaxed);
    let retried = total_requests.saturating_sub(received);
    bus.shutdown(Duration::from_secs(5))?;
    if std::env::var_os("SOAK_FILES").is_some() {
        for e in std::fs::read_dir(dir.path())? {
            let e = e?;
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut stack = vec![e.path()];
            while let Some(p) = stack.pop() {
                let m = std::fs::metadata(&p)?;
                if m.is_dir() {
                    stack.extend(std::fs::read_dir(&p)?.filter_map(|x| x.ok().map(|x| x.path())));
                } else {
                    n += 1;
                    bytes += m.len();
                }
            }
            println!(
                "  {:?}: {n} files, {:.1} MB",
                e.file_name(),
                bytes as f64 / 1e6
            );
        }
        let db = sled::open(dir.path())?;
        let t = db.open_tree("hookbus")?;
        let mut by: std::collections::BTreeMap<char, (u64, u64)> = Default::default();
        for kv in t.iter() {
            let (k, v) = kv?;
            let e = by.entry(k[0] as char).or_default();
            e.0 += 1;
            e.1 += (k.len() + v.len()) as u64;
        }
        println!("  keys by space: {by:?}");
    }
    let hwm = measure::peak_rss()?;
    // With retention, delivered ones leave the store: count them at the
    // receivers (each distinct delivery id answered 204 once).
    let delivered = if keep > 0 { received } else { stats.delivered };
    let lost = expected.saturating_sub(delivered + stats.dead);
    let samples = samples.into_inner().unwrap();
    let half = samples.len() / 2;
    let peak = |s: &[(f64, u64, u64)]| {
        s.iter()
            .fold((0, 0), |(a, b), &(_, n, d)| (a.max(n), b.max(d)))
    };
    let (early, late) = (peak(&samples[..half]), peak(&samples[half..]));
    println!(
        "published {published} events -> {expected} deliveries in {:.1} s",
        took.as_secs_f64()
    );
    println!(
        "delivered {} (distinct ids received: {received}), retried requests {retried}, dead {}, lost {lost}",
        stats.delivered, stats.dead
    );
    println!("peak RSS (VmHWM): {hwm}");
    println!(
        "stored deliveries at most {} in the first half, {} in the second; on disk at most {:.1} MB, then {:.1} MB",
        early.0,
        late.0,
        early.1 as f64 / 1e6,
        late.1 as f64 / 1e6
    );
    if lost > 0 || delivered != received || delivered + stats.dead != expected {
        return Err(format!(
            "lost deliveries: expected {expected}, delivered {}, dead {}, received {received}",
            stats.delivered, stats.dead
        )
        .into());
    }
    Ok(())
}
