//! The task transport (the default): each request in flight is a task on
//! the bus's own small tokio runtime, sent by one hyper client (a shared
//! keep-alive pool, redirects never followed, no proxy). A request waiting
//! on a slow receiver holds its future, its connection's buffers and a
//! socket: a few KiB, not a thread, so requests in flight follow demand up
//! to the memory budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::Instrument;

use super::connect::Connector;
use super::{Answer, Job, Outcome, READ_CAP, USER_AGENT, classify_io};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::record::{AttemptError, AttemptErrorKind};

/// The client every request shares.
type HttpClient = Client<Connector, Full<Bytes>>;

/// Each connection's read buffer at most (hyper's floor is 8 KiB): it must
/// hold the response's status line and headers; the body is read through
/// it in pieces.
const READ_BUFFER: usize = 16 * 1024;
/// An idle pooled connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);
/// The runtime's threads only poll sockets and sign: small stacks.
const STACK: usize = 256 * 1024;

/// The runtime and the client, shared by a bus's senders and its test
/// requests. Dropping the last handle stops the runtime without waiting
/// (allowed inside another runtime, where a bus may be dropped); by then
/// every request has reported.
#[derive(Debug)]
pub(crate) struct Shared {
    rt: Option<tokio::runtime::Runtime>,
    client: HttpClient,
    request_timeout: Duration,
    workers: usize,
}

impl Shared {
    /// Starts the runtime ([`Builder::sender_threads`](crate::Builder::sender_threads)
    /// worker threads) and the client.
    pub(crate) fn new(config: &Config) -> Result<Shared> {
        let name = "hookbus-sender";
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.sender_threads)
            .thread_name(name)
            .thread_stack_size(STACK)
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| Error::Spawn {
                name: name.into(),
                source,
            })?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE)
            .pool_max_idle_per_host(config.per_host)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http1_max_buf_size(READ_BUFFER)
            .build(Connector::new(config)?);
        Ok(Shared {
            rt: Some(rt),
            client,
            request_timeout: config.request_timeout,
            workers: config.sender_threads,
        })
    }

    fn handle(&self) -> Result<&tokio::runtime::Handle> {
        self.rt.as_ref().map(|rt| rt.handle()).ok_or(Error::Closed)
    }

    /// Makes one attempt on the runtime and waits for it on this thread.
    pub(crate) fn perform_blocking(&self, job: Job) -> Result<Outcome> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (client, timeout) = (self.client.clone(), self.request_timeout);
        self.handle()?.spawn(async move {
            let _ = tx.send(perform(&client, job, timeout).await);
        });
        // A panic in the attempt drops `tx` without a send.
        rx.recv().map_err(|_| Error::Closed)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The senders as tasks.
#[derive(Debug)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
    results: Option<Sender<Outcome>>,
    /// Requests running (counted down when each has reported).
    running: Arc<AtomicUsize>,
}

impl Pool {
    pub(crate) fn new(shared: Arc<Shared>, results: Sender<Outcome>) -> Pool {
        Pool {
            shared,
            results: Some(results),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The runtime's threads while it can take requests.
    pub(crate) fn alive(&self) -> usize {
        if self.results.is_some() {
            self.shared.workers
        } else {
            self.running
                .load(Ordering::Relaxed)
                .min(self.shared.workers)
        }
    }

    /// Starts the job's request.
    pub(crate) fn submit(&mut self, job: Job) -> Result<()> {
        let Some(results) = &self.results else {
            return Err(Error::Closed);
        };
        let handle = self.shared.handle()?;
        self.running.fetch_add(1, Ordering::Relaxed);
        let report = Report {
            key: Some((job.delivery, job.subscription, job.attempt)),
            at: Timestamp::now(),
            results: results.clone(),
            running: self.running.clone(),
        };
        let (client, timeout) = (self.shared.client.clone(), self.shared.request_timeout);
        handle.spawn(async move {
            let mut report = report;
            let mut attempt = std::pin::pin!(perform(&client, job, timeout));
            // A panic inside the attempt (a bug in a dependency or here)
            // becomes a failed attempt that says what it was.
            let caught = std::future::poll_fn(|cx| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| attempt.as_mut().poll(cx)))
                    .map_or_else(|panic| Poll::Ready(Err(panic)), |poll| poll.map(Ok))
            })
            .await;
            match caught {
                Ok(outcome) => report.send(outcome),
                Err(panic) => report.fail(&super::panic_message(&*panic)),
            }
        });
        Ok(())
    }

    /// No more jobs: the outcome channel disconnects when every task has
    /// reported (each holds a sender of it).
    pub(crate) fn close(&mut self) {
        self.results = None;
    }
}

/// Reports a task's outcome exactly once: the attempt's, or, if the task
/// ends without one (a panic while it ran, or the runtime dropping it), a
/// failed attempt, so the delivery is retried and never left in flight.
struct Report {
    key: Option<(DeliveryId, SubscriptionId, u32)>,
    at: Timestamp,
    results: Sender<Outcome>,
    running: Arc<AtomicUsize>,
}

impl Report {
    fn send(&mut self, outcome: Outcome) {
        self.key = None;
        self.running.fetch_sub(1, Ordering::Relaxed);
        // The dispatcher gone: nobody to report to.
        let _ = self.results.send(outcome);
    }

    /// Reports a failed attempt saying `why`, unless one was reported.
    fn fail(&mut self, why: &str) {
        if let Some(key) = self.key.take() {
            self.running.fetch_sub(1, Ordering::Relaxed);
            let _ = self.results.send(super::panicked(key, self.at, why));
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.fail("the request's task ended without an outcome (it was dropped)");
    }
}

/// Makes one attempt, within the request timeout (connecting, sending and
/// reading the answer).
async fn perform(client: &HttpClient, job: Job, timeout: Duration) -> Outcome {
    let span = super::attempt_span(&job);
    let at = Timestamp::now();
    let started = Instant::now();
    #[cfg(test)]
    if job.url.ends_with(super::tests::PANIC_PATH) {
        panic!("injected by a test");
    }
    let answer = send(client, &job, at, timeout)
        .instrument(span.clone())
        .await;
    super::finish(&job, at, started, &span, answer)
}

/// Sends the request and reads the answer, all within `timeout`: a
/// status that arrived stays recorded if its body then runs out of time
/// (unless it is a success, which needs the whole answer).
async fn send(client: &HttpClient, job: &Job, at: Timestamp, timeout: Duration) -> Answer {
    let deadline = tokio::time::Instant::now() + timeout;
    let out_of_time = || AttemptError {
        kind: AttemptErrorKind::Timeout,
        message: format!("no answer within {timeout:?}"),
    };
    let other = |message: String| {
        Answer::failed(AttemptError {
            kind: AttemptErrorKind::Other,
            message,
        })
    };
    let uri: hyper::Uri = match job.url.parse() {
        Ok(uri) => uri,
        Err(e) => return other(format!("the URL does not parse: {e}")),
    };
    let id = job.delivery.to_string();
    let mut req = hyper::Request::post(uri)
        .header("User-Agent", USER_AGENT)
        .header("Accept", "application/json");
    for (name, value) in super::headers(job, &id, at) {
        req = req.header(name, value);
    }
    let req = match req.body(Full::new(Bytes::from_owner(job.payload.clone()))) {
        Ok(req) => req,
        Err(e) => return other(format!("the request cannot be made: {e}")),
    };
    let resp = match tokio::time::timeout_at(deadline, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Answer::failed(classify(&e)),
        Err(_) => return Answer::failed(out_of_time()),
    };
    // Read up to READ_CAP (so the connection can be reused), keep the
    // excerpt.
    let (parts, mut body) = resp.into_parts();
    let mut excerpt = Vec::new();
    let mut read = 0u64;
    let mut broken = None;
    while read < READ_CAP {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read += data.len() as u64;
                    let room = super::EXCERPT.saturating_sub(excerpt.len());
                    excerpt.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Ok(Some(Err(e))) => {
                broken = Some(classify(&e));
                break;
            }
            Err(_) => {
                broken = Some(out_of_time());
                break;
            }
        }
    }
    Answer::response(parts.status.as_u16(), &parts.headers, excerpt, broken)
}

/// An attempt's error from the client's: the first I/O error in the chain
/// decides (the guard's refusal, DNS, TLS, refused or reset connections),
/// else hyper's own kind. The message is the whole chain.
fn classify(e: &(dyn std::error::Error + 'static)) -> AttemptError {
    let mut message = String::new();
    let mut found = None;
    let mut kind = AttemptErrorKind::Other;
    let mut current = Some(e);
    while let Some(err) = current {
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&err.to_string());
        if found.is_none()
            && let Some(io) = err.downcast_ref::<std::io::Error>()
        {
            found = Some(classify_io(io));
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                kind = AttemptErrorKind::Timeout;
            } else if h.is_parse() || h.is_incomplete_message() || h.is_body_write_aborted() {
                kind = AttemptErrorKind::Protocol;
            }
        }
        current = err.source();
    }
    match found {
        Some(mut io) if io.kind != AttemptErrorKind::Other || kind == AttemptErrorKind::Other => {
            io.message = message;
            io
        }
        _ => AttemptError { kind, message },
    }
}
