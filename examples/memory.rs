//! Delivers 100,000 events to a local receiver and prints the peak resident
//! memory (VmHWM) of the process: `cargo run --release --example memory`.
//! Takes `--events N` to change the count.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use hookbus::{Bus, NewSubscription};

fn main() {
    if let Err(e) = run() {
        eprintln!("memory example failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = match args.iter().position(|a| a == "--events") {
        Some(i) => args.get(i + 1).ok_or("--events needs a number")?.parse()?,
        None => 100_000,
    };
    let url = start_receiver()?;
    let dir = tempfile::tempdir()?;
    let bus = Bus::builder()
        .path(dir.path())
        .allow_private_targets(true)
        .open()?;
    bus.subscribe(
        NewSubscription::new("memory", url)
            .events(["order.created"])
            .secret("s"),
    )?;
    let start = Instant::now();
    for i in 0..events {
        bus.publish(
            "order.created",
            &serde_json::json!({"id": i, "customer": "cus_0123456789abcdef", "amount": 1234}),
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while bus.outbox().stats()?.delivered < events {
        if Instant::now() > deadline {
            return Err("not all events were delivered within 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    bus.shutdown(Duration::from_secs(5))?;
    let hwm = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!(
        "delivered {events} events in {:.1} s ({:.0}/s); peak RSS (VmHWM): {hwm}",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// A keep-alive HTTP/1.1 receiver on 127.0.0.1 answering 204.
fn start_receiver() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(clone) = conn.try_clone() else { return };
                let mut r = BufReader::new(clone);
                let mut w = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = l.split_once(':')
                            && n.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err()
                        || w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}
