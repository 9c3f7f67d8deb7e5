//! A real HTTP/1.1 receiver on 127.0.0.1 for tests (hyper, on a
//! current-thread tokio runtime of its own): it records every request
//! (headers and body) and answers as the test tells it. The servers that
//! misbehave at the byte level (`faults.rs`) and the TCP proxy
//! (`proxy.rs`) stay raw on purpose.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

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
    /// TCP connections accepted.
    connections: std::sync::atomic::AtomicUsize,
}

/// The receiver; it stops when dropped (the listener closes and every
/// open connection with it, as a receiver that went down).
pub struct TestReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<thread::JoinHandle<()>>,
}

/// A request answered by closing the connection (`Reply::dropped`).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer")
    }
}

impl std::error::Error for Dropped {}

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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder: Mutex::new(Box::new(f)),
            connections: std::sync::atomic::AtomicUsize::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let server = thread::Builder::new()
            .name("test-receiver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                // Ends when the receiver is dropped; dropping the runtime
                // then closes the listener and every connection.
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = stopped => {}
                        () = accept(listener, s) => {}
                    }
                });
            })
            .unwrap();
        TestReceiver {
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        }
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

    /// How many TCP connections it accepted (keep-alive: one serves many
    /// requests).
    pub fn connections(&self) -> usize {
        self.shared
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Joined, so the port refuses connections once the drop returns.
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// Serves every connection (keep-alive HTTP/1.1), one task each.
async fn accept(listener: tokio::net::TcpListener, s: Arc<Shared>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        s.connections
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let s = s.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, s.clone()));
            // An error here is the connection's end (a dropped reply, or
            // the client went away): nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

/// Records one request and answers it as the responder says; an `Err`
/// makes hyper close the connection without an answer.
async fn answer(
    req: hyper::Request<Incoming>,
    s: Arc<Shared>,
) -> Result<hyper::Response<Body>, Dropped> {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(Body::new(body), usize::MAX).await else {
        return Err(Dropped);
    };
    let req = Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    };
    s.requests.lock().unwrap().push(req.clone());
    let reply = (s.responder.lock().unwrap())(&req);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.drop {
        return Err(Dropped);
    }
    let mut resp = hyper::Response::new(Body::from(Bytes::from(reply.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).map_err(|_| Dropped)?;
    for (n, v) in &reply.headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(n.as_bytes()).expect("a header name"),
            hyper::header::HeaderValue::from_str(v).expect("a header value"),
        );
    }
    Ok::<_, Dropped>(resp)
}
