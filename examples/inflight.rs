//! What a request in flight costs in resident memory (issue 29): holds N
//! requests at once against a receiver on 127.0.0.1 that answers after a
//! delay (default 500 ms) and prints the process's resident memory (VmRSS
//! while they are held, VmHWM at the end) and, from `/proc/self/smaps`, how
//! much of the sender threads' stacks was touched.
//!
//! The receiver runs in a child process (this program started again with
//! `--receiver`), so the figures are the sender side's only.
//!
//! * `cargo run --release --example inflight -- --bus 2000`: a bus in its
//!   default configuration, N/4 subscriptions x 4 events (a new
//!   subscription's window is 4), so N requests go out at once.
//! * `cargo run --release --example inflight -- --raw 2000 --stack-kib 512
//!   --input-kib 128 --output-kib 128`: N plain threads (that stack) each
//!   making one blocking ureq POST through one shared agent (those buffer
//!   sizes; ureq 3.5's defaults are 128 KiB each). Without `--raw`/`--bus`:
//!   N = 0 (the process alone).
//!
//! * `... --bus 2000 --blocking`: the same with `Builder::blocking_senders`.
//! * `... --bus 2000 --payload-kib 64`: with bodies of about 64 KiB.
//!
//! `--delay-ms D` sets the receiver's delay.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};

#[path = "common/measure.rs"]
#[allow(dead_code)]
mod measure;

fn main() {
    if let Err(e) = run() {
        eprintln!("inflight example failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let delay = measure::arg(&args, "--delay-ms", 500)?;
    if args.iter().any(|a| a == "--receiver") {
        return receiver(Duration::from_millis(delay));
    }
    // The receiver, in a child process: it prints its address, then serves.
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--receiver", "--delay-ms", &delay.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let base = format!("http://{}", line.trim());
    let result = if args.iter().any(|a| a == "--bus") {
        bus(&base, measure::arg(&args, "--bus", 2000)?, delay)
    } else {
        raw(
            &base,
            measure::arg(&args, "--raw", 0)?,
            measure::arg(&args, "--stack-kib", 512)?,
            measure::arg(&args, "--input-kib", 128)?,
            measure::arg(&args, "--output-kib", 128)?,
            delay,
        )
    };
    // The receiver's peak of requests held at once.
    let peak = ureq::get(format!("{base}/peak"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    println!("receiver: peak requests held at once {peak}");
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `VmRSS` and `VmHWM` in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Anonymous mappings of `size_kib` (thread stacks of that size): how many,
/// and their resident KiB in all.
fn stacks(size_kib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (mut count, mut rss, mut current) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Size:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            // glibc adds a guard page (4 KiB) to the stack's mapping.
            current = kib == size_kib || kib == size_kib + 4;
            if current {
                count += 1;
            }
        } else if let Some(kib) = line.strip_prefix("Rss:")
            && current
        {
            rss += kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    (count, rss)
}

fn report(what: &str, n: u64, before: (u64, u64), held: (u64, u64), stack_kib: u64) {
    let (threads, stack_rss) = stacks(stack_kib);
    let end = rss();
    let per = if n > 0 {
        (held.0.saturating_sub(before.0)) as f64 / n as f64
    } else {
        0.0
    };
    println!(
        "{what}: {n} in flight: VmRSS before {} KiB, while held {} KiB ({per:.1} KiB per request), \
         VmHWM {} KiB; {threads} stacks of {stack_kib} KiB, {stack_rss} KiB resident ({:.1} KiB each)",
        before.0,
        held.0,
        end.1,
        if threads > 0 {
            stack_rss as f64 / threads as f64
        } else {
            0.0
        }
    );
}

/// N plain threads, one blocking POST each, through one agent.
fn raw(
    base: &str,
    n: u64,
    stack_kib: u64,
    input_kib: u64,
    output_kib: u64,
    delay: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(n as usize + 10)
        .max_idle_connections(n as usize + 10)
        .input_buffer_size(input_kib as usize * 1024)
        .output_buffer_size(output_kib as usize * 1024)
        .build()
        .into();
    let body = Arc::<[u8]>::from(vec![b'x'; 200]);
    // One request first: the agent's and the allocator's one-time costs.
    agent.post(format!("{base}/warm")).send(&body[..])?;
    let before = rss();
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (agent, body, done, url) = (
                agent.clone(),
                body.clone(),
                done.clone(),
                format!("{base}/{i}"),
            );
            std::thread::Builder::new()
                .stack_size(stack_kib as usize * 1024)
                .spawn(move || {
                    if let Ok(mut r) = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(&body[..])
                    {
                        let _ = r.body_mut().read_to_vec();
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    // Held until all have answered, so the stacks can be read.
                    std::thread::sleep(Duration::from_millis(delay * 2 + 1000));
                })
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(delay / 2));
    let held = rss();
    let start = Instant::now();
    while done.load(Ordering::Relaxed) < n && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    report(
        &format!("raw ureq threads (stack {stack_kib} KiB, buffers {input_kib}+{output_kib} KiB)"),
        n,
        before,
        held,
        stack_kib,
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A bus in its default configuration with N requests in flight.
fn bus(base: &str, n: u64, delay: u64) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let blocking = std::env::args().any(|a| a == "--blocking");
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .blocking_senders(blocking)
        .open()?;
    let subs = n.div_ceil(4);
    for i in 0..subs {
        bus.subscribe(
            NewSubscription::new(format!("s{i}"), format!("{base}/{i}"))
                .events(["order.created"])
                .secret("s"),
        )?;
    }
    let before = rss();
    let start = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let bus = Arc::new(bus);
    {
        let (samples, bus) = (samples.clone(), bus.clone());
        std::thread::spawn(move || {
            while start.elapsed() < Duration::from_secs(5) {
                let delivered = bus.outbox().stats().map(|s| s.delivered).unwrap_or(0);
                let in_flight = bus.health(Duration::from_secs(1)).in_flight;
                samples.lock().unwrap().push((
                    start.elapsed().as_millis(),
                    rss().0,
                    delivered,
                    in_flight,
                ));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    let pad = "x".repeat(payload_kib() as usize * 1024);
    for i in 0..4 {
        bus.publish(
            "order.created",
            &serde_json::json!({"id": i, "customer": "cus_0123456789abcdef", "pad": pad}),
        )?;
    }
    std::thread::sleep(Duration::from_millis(delay / 2));
    let held = rss();
    let in_flight = bus.health(Duration::from_secs(2)).in_flight;
    while bus.outbox().stats()?.delivered < subs * 4 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err("not delivered within 2 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    if std::env::var_os("INFLIGHT_TRACE").is_some() {
        for (at, rss, delivered, in_flight) in samples.lock().unwrap().iter() {
            println!("  {at:>5} ms: VmRSS {rss} KiB, delivered {delivered}, in flight {in_flight}");
        }
    }
    println!(
        "bus: {} deliveries in {took:.2?} ({:.0}/s), {in_flight} in flight halfway through the first wave",
        subs * 4,
        (subs * 4) as f64 / took.as_secs_f64()
    );
    report(
        if blocking {
            "bus (blocking senders)"
        } else {
            "bus (default configuration: task senders)"
        },
        subs * 4,
        before,
        held,
        hookbus_stack_kib(),
    );
    std::thread::sleep(Duration::from_millis(5100).saturating_sub(start.elapsed()));
    let bus = Arc::into_inner(bus).ok_or("bus still shared")?;
    bus.shutdown(Duration::from_secs(5))?;
    Ok(())
}

/// `--payload-kib N`: each event's body is padded to about N KiB (0: a
/// small order).
fn payload_kib() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    measure::arg(&args, "--payload-kib", 0).unwrap_or(0)
}

/// The sender threads' stack size (`HOOKBUS_STACK_KIB` to match another).
fn hookbus_stack_kib() -> u64 {
    std::env::var("HOOKBUS_STACK_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The receiver: answers 204 after `delay`, counts the most requests held
/// at once (`GET /peak` returns it).
fn receiver(delay: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let held = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = axum::Router::new()
            .route(
                "/peak",
                axum::routing::get({
                    let peak = peak.clone();
                    move || async move { peak.load(Ordering::Relaxed).to_string() }
                }),
            )
            .fallback(move |body: axum::body::Bytes| {
                let (held, peak) = (held.clone(), peak.clone());
                async move {
                    std::hint::black_box(body);
                    peak.fetch_max(held.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    held.fetch_sub(1, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        axum::serve(listener, app).await
    })?;
    Ok(())
}
