//! The senders: they POST due deliveries and report each outcome to the
//! dispatcher over a channel. Senders never touch the store.
//!
//! Two transports share the request (headers, signatures) and the reading
//! of its answer:
//! - [`tasks`], the default: requests are tasks on a small tokio runtime
//!   with a hyper client, so a request in flight costs a few KiB and
//!   thousands can wait on slow receivers;
//! - [`threads`]: blocking ureq senders, one thread per request in flight
//!   (`Builder::blocking_senders`).
//!
//! Test requests (`Subscriptions::ping`) go through the bus's transport,
//! whichever it is ([`Transport::perform_blocking`]).
//!
//! | file | job |
//! | --- | --- |
//! | `mod.rs` | the request (headers, signatures), reading its answer, `Transport`, `Pool` |
//! | `resolve.rs` | host name lookups for tasks: one per host at a time, answers kept |
//! | `connect.rs` | tasks' connections: the SSRF guard on resolved addresses, TCP, TLS |
//! | `tasks.rs` | requests as tasks: the runtime, the hyper client, one attempt |
//! | `threads.rs` | blocking senders: the elastic thread pool, the ureq agent |

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::error::Result;
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::record::{Attempt, AttemptError, AttemptErrorKind};
use crate::signing;
use crate::ssrf::Blocked;
use crate::storage::SubscriptionRecord;

mod connect;
mod resolve;
mod tasks;
mod threads;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("hookbus/", env!("CARGO_PKG_VERSION"));

/// At most this much of a response body is read, so the connection can be
/// reused without letting a receiver stream forever.
const READ_CAP: u64 = 64 * 1024;
/// At most this much of it is kept with the attempt.
const EXCERPT: usize = 1024;
/// One request to make. Its `Debug` leaves out the secrets, header values,
/// payload, and the URL's path and query.
pub(crate) struct Job {
    pub(crate) delivery: DeliveryId,
    /// The event, sent as `X-Webhook-Event-Id` (the same for every
    /// subscription it reached).
    pub(crate) event: crate::ids::EventId,
    pub(crate) subscription: SubscriptionId,
    pub(crate) event_name: String,
    pub(crate) attempt: u32,
    pub(crate) url: String,
    /// The current secret first, then one being rotated out, if any.
    pub(crate) secrets: Vec<String>,
    pub(crate) content_type: String,
    pub(crate) standard_webhooks: bool,
    /// The subscription's custom headers (validated when stored).
    pub(crate) headers: Vec<(String, String)>,
    /// The delivery's place in its subscription (`X-Webhook-Sequence`;
    /// 0: not sent).
    pub(crate) sequence: u64,
    pub(crate) payload: Arc<[u8]>,
    /// The publisher's trace context, sent as `traceparent`.
    pub(crate) traceparent: Option<Arc<str>>,
}

/// What is sent of an event: its body and trace context.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) payload: Arc<[u8]>,
    pub(crate) traceparent: Option<Arc<str>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("delivery", &self.delivery)
            .field("event", &self.event)
            .field("subscription", &self.subscription)
            .field("event_name", &self.event_name)
            .field("attempt", &self.attempt)
            .field("url", &crate::redact::url(&self.url))
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("sequence", &self.sequence)
            .field("payload", &format_args!("[{} bytes]", self.payload.len()))
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

impl Job {
    /// Attempt number `attempt` of delivery `delivery` (of `event`) to
    /// `sub`, signed with its current secret and, while it is still valid,
    /// the one being rotated out.
    pub(crate) fn to(
        sub: &SubscriptionRecord,
        delivery: DeliveryId,
        event: crate::ids::EventId,
        event_name: String,
        attempt: u32,
        body: Body,
    ) -> Job {
        let mut secrets: Vec<String> = sub.secret.iter().cloned().collect();
        if let Some((old, until)) = &sub.previous_secret
            && *until > Timestamp::now().as_millis()
        {
            secrets.push(old.clone());
        }
        Job {
            delivery,
            event,
            subscription: sub.id,
            event_name,
            attempt,
            url: sub.url.clone(),
            secrets,
            content_type: sub.content_type.clone(),
            standard_webhooks: sub.standard_webhooks,
            headers: sub.headers.clone(),
            sequence: 0,
            payload: body.payload,
            traceparent: body.traceparent,
        }
    }
}

/// What came of a job.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) delivery: DeliveryId,
    pub(crate) subscription: SubscriptionId,
    pub(crate) attempt: Attempt,
    pub(crate) retry_after: Option<Duration>,
}

/// The headers of an attempt, in the order they are sent: the
/// subscription's custom headers first (their names were checked not to
/// be any of ours), then ours. `id` is the delivery id as text, `at` the
/// attempt's time (the Standard Webhooks timestamp).
pub(crate) fn headers<'a>(job: &'a Job, id: &str, at: Timestamp) -> Vec<(&'a str, String)> {
    let mut h: Vec<(&str, String)> = Vec::with_capacity(job.headers.len() + 9);
    for (name, value) in &job.headers {
        h.push((name, value.clone()));
    }
    h.push(("Content-Type", job.content_type.clone()));
    h.push(("X-Webhook-Delivery", id.to_owned()));
    h.push(("X-Webhook-Event", job.event_name.clone()));
    h.push(("X-Webhook-Event-Id", job.event.to_string()));
    if job.sequence > 0 {
        h.push(("X-Webhook-Sequence", job.sequence.to_string()));
    }
    if let Some(tp) = &job.traceparent {
        h.push(("traceparent", tp.to_string()));
    }
    if job.standard_webhooks {
        let ts = at.as_millis() / 1000;
        let sigs: Vec<String> = job
            .secrets
            .iter()
            .filter_map(|s| signing::decode_standard_secret(s).ok())
            .map(|key| signing::sign_standard(&key, id, ts, &job.payload))
            .collect();
        h.push(("webhook-id", id.to_owned()));
        h.push(("webhook-timestamp", ts.to_string()));
        h.push(("webhook-signature", sigs.join(" ")));
    } else if let Some(secret) = job.secrets.first() {
        h.push((
            "X-Hub-Signature",
            signing::sign_sha1(secret.as_bytes(), &job.payload),
        ));
        h.push((
            "X-Hub-Signature-256",
            signing::sign_sha256(secret.as_bytes(), &job.payload),
        ));
    }
    h
}

/// What an attempt came to before it is recorded: the status (if the
/// receiver answered in full), the error (if not), up to [`EXCERPT`] bytes
/// of the answer and its `Retry-After`.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<AttemptError>,
    pub(crate) excerpt: Vec<u8>,
    pub(crate) retry_after: Option<Duration>,
}

impl Answer {
    fn failed(error: AttemptError) -> Answer {
        Answer {
            error: Some(error),
            ..Answer::default()
        }
    }

    /// A response: `status` and its headers, what was read of its body and
    /// how that read ended (`broken`). A body that breaks off is the
    /// receiver's problem only if the status would otherwise be a success.
    fn response(
        status: u16,
        headers: &hyper::HeaderMap,
        excerpt: Vec<u8>,
        broken: Option<AttemptError>,
    ) -> Answer {
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::retry::parse_retry_after);
        match broken {
            Some(e) if (200..300).contains(&status) => Answer {
                error: Some(e),
                excerpt,
                retry_after,
                ..Answer::default()
            },
            _ => Answer {
                status: Some(status),
                excerpt,
                retry_after,
                ..Answer::default()
            },
        }
    }
}

/// The span of one attempt (the same fields on both transports).
fn attempt_span(job: &Job) -> tracing::Span {
    tracing::info_span!(
        "hookbus.attempt",
        delivery = %job.delivery,
        subscription = %job.subscription,
        event = %job.event_name,
        attempt = job.attempt,
        status = tracing::field::Empty,
        error = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    )
}

/// Records the answer on the attempt's span and makes the outcome.
fn finish(job: &Job, at: Timestamp, started: Instant, span: &tracing::Span, a: Answer) -> Outcome {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    span.record("duration_ms", duration_ms);
    match (&a.status, &a.error) {
        (Some(s), _) => {
            span.record("status", s);
            tracing::debug!(parent: span, status = s, "attempt answered");
        }
        (None, Some(e)) => {
            span.record("error", tracing::field::display(e));
            tracing::debug!(parent: span, error = %e, "attempt failed");
        }
        _ => {}
    }
    let mut excerpt = a.excerpt;
    excerpt.truncate(EXCERPT);
    Outcome {
        delivery: job.delivery,
        subscription: job.subscription,
        attempt: Attempt {
            number: job.attempt,
            at,
            duration_ms,
            status: a.status,
            error: a.error,
            response_excerpt: excerpt,
        },
        retry_after: a.retry_after,
    }
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The outcome of an attempt that panicked (a bug in a dependency or
/// here): a failed attempt, so the delivery is retried.
fn panicked(job: (DeliveryId, SubscriptionId, u32), at: Timestamp, msg: &str) -> Outcome {
    let (delivery, subscription, number) = job;
    tracing::error!(%delivery, %subscription, panic = %msg, "a sender panicked during an attempt; the delivery will be retried");
    Outcome {
        delivery,
        subscription,
        attempt: Attempt {
            number,
            at,
            duration_ms: 0,
            status: None,
            error: Some(AttemptError {
                kind: AttemptErrorKind::Other,
                message: format!("sender panicked: {msg}"),
            }),
            response_excerpt: Vec::new(),
        },
        retry_after: None,
    }
}

/// How a bus sends: the transport its configuration chose, shared by its
/// senders and its test requests (one connection pool, one address
/// guard).
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// Requests as tasks on the bus's tokio runtime (the default).
    Tasks(Arc<tasks::Shared>),
    /// Blocking requests through one ureq agent.
    Threads(ureq::Agent),
}

impl Transport {
    /// The transport for `config` (starting the runtime of the task one).
    pub(crate) fn new(config: &Config) -> Result<Transport> {
        if config.blocking_senders {
            Ok(Transport::Threads(threads::build_agent(config)))
        } else {
            Ok(Transport::Tasks(Arc::new(tasks::Shared::new(config)?)))
        }
    }

    /// Makes one attempt and waits for it (on the calling thread, which
    /// blocks, whichever the transport).
    pub(crate) fn perform_blocking(&self, job: Job) -> Result<Outcome> {
        match self {
            Transport::Tasks(shared) => shared.perform_blocking(job),
            Transport::Threads(agent) => Ok(threads::perform(agent, job)),
        }
    }
}

/// The senders of a bus, on its transport.
#[derive(Debug)]
pub(crate) enum Pool {
    /// Requests as tasks on a tokio runtime (the default).
    Tasks(tasks::Pool),
    /// One blocking ureq thread per request in flight.
    Threads(threads::Pool),
}

impl Pool {
    /// The senders of `transport`, reporting to `results`.
    pub(crate) fn new(transport: &Transport, config: &Config, results: Sender<Outcome>) -> Pool {
        match transport {
            Transport::Tasks(shared) => Pool::Tasks(tasks::Pool::new(shared.clone(), results)),
            Transport::Threads(agent) => {
                Pool::Threads(threads::Pool::new(agent.clone(), config, results))
            }
        }
    }

    /// How many senders are alive: sender threads, or the runtime's.
    pub(crate) fn alive(&self) -> usize {
        match self {
            Pool::Tasks(p) => p.alive(),
            Pool::Threads(p) => p.alive(),
        }
    }

    /// Hands out a job; `in_flight` is how many jobs are out, this one
    /// included.
    pub(crate) fn submit(&mut self, job: Job, in_flight: usize) -> Result<()> {
        match self {
            Pool::Tasks(p) => p.submit(job),
            Pool::Threads(p) => p.submit(job, in_flight),
        }
    }

    /// No more jobs: the outcome channel disconnects once every job handed
    /// out has reported.
    pub(crate) fn close(&mut self) {
        match self {
            Pool::Tasks(p) => p.close(),
            Pool::Threads(p) => p.close(),
        }
    }

    /// Releases the senders (call once the outcome channel is
    /// disconnected).
    pub(crate) fn join(&mut self) {
        match self {
            Pool::Tasks(_) => {}
            Pool::Threads(p) => p.join(),
        }
    }
}

pub(crate) fn classify_io(e: &std::io::Error) -> AttemptError {
    use std::io::ErrorKind as K;
    if let Some(b) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Blocked>())
    {
        return AttemptError {
            kind: AttemptErrorKind::Blocked,
            message: b.to_string(),
        };
    }
    if e.get_ref()
        .is_some_and(|inner| inner.is::<connect::NotFound>())
    {
        return AttemptError {
            kind: AttemptErrorKind::Dns,
            message: e.to_string(),
        };
    }
    if e.get_ref()
        .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>())
    {
        return AttemptError {
            kind: AttemptErrorKind::Tls,
            message: e.to_string(),
        };
    }
    let kind = match e.kind() {
        K::TimedOut | K::WouldBlock => AttemptErrorKind::Timeout,
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::AddrNotAvailable
        | K::HostUnreachable
        | K::NetworkUnreachable => AttemptErrorKind::Connect,
        K::UnexpectedEof | K::BrokenPipe | K::InvalidData => AttemptErrorKind::Protocol,
        _ => AttemptErrorKind::Other,
    };
    AttemptError {
        kind,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use crate::{Bus, DeliveryState, NewSubscription};

    /// A URL ending in this makes `perform` panic (tests only).
    pub(super) const PANIC_PATH: &str = "/hookbus-test-panic";

    /// A sender that panics is noticed: the attempt is recorded as failed,
    /// the delivery retried (and dead-lettered when the schedule is spent),
    /// and the same sender thread goes on to deliver other work.
    #[test]
    fn a_panicking_attempt_is_retried_and_the_sender_survives() {
        // A receiver that answers 204 and counts what reaches it.
        let served = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = served.clone();
        let app = axum::Router::new().fallback(move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { axum::http::StatusCode::NO_CONTENT }
        });
        std::thread::spawn(move || rt.block_on(async { axum::serve(listener, app).await }));
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::builder()
            .path(dir.path())
            .allow_private_targets(true)
            .senders(1)
            .retry_schedule(vec![Duration::from_millis(10)])
            .open()
            .unwrap();
        let bad = bus
            .subscribe(
                NewSubscription::new("bad", format!("http://127.0.0.1:{port}{PANIC_PATH}"))
                    .events(["e"]),
            )
            .unwrap();
        bus.subscribe(
            NewSubscription::new("good", format!("http://127.0.0.1:{port}/ok")).events(["e"]),
        )
        .unwrap();
        bus.publish_durable("e", &serde_json::json!({"n": 1}))
            .unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        let (dead, delivered) = loop {
            let s = bus.outbox().stats().unwrap();
            if s.dead == 1 && s.delivered == 1 || Instant::now() > end {
                break (s.dead, s.delivered);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!((dead, delivered), (1, 1));
        let d = bus
            .outbox()
            .for_subscription(bad.id, false)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(d.state, DeliveryState::Dead);
        let attempts = bus.outbox().attempts(d.id).unwrap();
        assert_eq!(attempts.len(), 2, "first try and one retry");
        assert!(
            attempts.iter().all(|a| a
                .error
                .as_ref()
                .is_some_and(|e| e.message.contains("sender panicked: injected by a test"))),
            "{attempts:?}"
        );
        assert_eq!(
            served.load(Ordering::SeqCst),
            1,
            "only the good one was sent"
        );
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
}
