//! Shared set-up for the benches: stores in temp dirs, a fast receiver on
//! 127.0.0.1, the event used everywhere.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// A fast receiver (axum on its own current-thread runtime) answering 204,
/// counting requests.
pub struct Receiver {
    pub addr: SocketAddr,
    pub count: Arc<AtomicU64>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().fallback(move || {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::Relaxed);
                        axum::http::StatusCode::NO_CONTENT
                    }
                });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        Receiver { addr, count }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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
