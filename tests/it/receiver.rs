//! A real HTTP/1.1 receiver on 127.0.0.1 for tests: it records every
//! request (headers and body) and answers as the test tells it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One received request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn delivery_id(&self) -> String {
        self.header("x-webhook-delivery")
            .unwrap_or_default()
            .to_owned()
    }
    /// The headers as `(name, value)` pairs, as `verify_standard` takes them.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
    /// Whether the signature in `header` verifies the body with `secret`.
    pub fn signed_with(&self, secret: &[u8], header: &str) -> bool {
        hookbus::signing::verify_signature(
            secret,
            &self.body,
            self.header(header).unwrap_or_default(),
        )
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Close the connection without answering.
    pub drop: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
            drop: false,
        }
    }
    pub fn ok() -> Reply {
        Reply::status(204)
    }
    pub fn header(mut self, n: &str, v: &str) -> Reply {
        self.headers.push((n.into(), v.into()));
        self
    }
    pub fn body(mut self, b: &[u8]) -> Reply {
        self.body = b.to_vec();
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn dropped() -> Reply {
        Reply {
            drop: true,
            ..Reply::status(0)
        }
    }
}

type Responder = Box<dyn FnMut(&Request) -> Reply + Send>;

struct Shared {
    requests: Mutex<Vec<Request>>,
    responder: Mutex<Responder>,
    stop: AtomicBool,
}

/// The receiver; it stops when dropped.
pub struct TestReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TestReceiver {
    /// A receiver that answers 204 to everything.
    pub fn start() -> TestReceiver {
        Self::with(|_| Reply::ok())
    }

    /// A receiver that answers `failure` to requests whose path starts
    /// with `prefix`, and 204 to the rest.
    pub fn failing_under(prefix: &'static str, failure: Reply) -> TestReceiver {
        Self::with(move |r| {
            if r.path.starts_with(prefix) {
                failure.clone()
            } else {
                Reply::ok()
            }
        })
    }

    /// A receiver that answers with `f`.
    pub fn with(f: impl FnMut(&Request) -> Reply + Send + 'static) -> TestReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder: Mutex::new(Box::new(f)),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                thread::spawn(move || serve(conn, s));
            }
        });
        TestReceiver { addr, shared }
    }

    /// Changes how later requests are answered.
    pub fn respond(&self, f: impl FnMut(&Request) -> Reply + Send + 'static) {
        *self.shared.responder.lock().unwrap() = Box::new(f);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let end = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if reqs.len() >= n {
                return reqs;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {n} requests; got {}",
                reqs.len()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, s: Arc<Shared>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    // Keep-alive: serve requests until the client closes or we stop.
    while !s.stop.load(Ordering::SeqCst) {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        s.requests.lock().unwrap().push(req.clone());
        let reply = (s.responder.lock().unwrap())(&req);
        if !reply.delay.is_zero() {
            // Sleep in slices so a dropped receiver ends this thread soon.
            let end = Instant::now() + reply.delay;
            while Instant::now() < end && !s.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
            }
        }
        if reply.drop {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        let mut out = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (n, v) in &reply.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&reply.body);
        if conn.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body); `None`
/// when the connection closes or the request is malformed.
pub fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    })
}
