//! The sender pool: blocking threads that POST due deliveries and report the
//! outcome to the dispatcher. Senders never touch the store.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, SubscriptionId, Timestamp};
use crate::record::{Attempt, AttemptError, AttemptErrorKind};
use crate::retry::parse_retry_after;
use crate::signing;
use crate::ssrf::{Blocked, GuardedResolver};
use crate::storage::SubscriptionRecord;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("hookbus/", env!("CARGO_PKG_VERSION"));

/// At most this much of a response body is read, so the connection can be
/// reused without letting a receiver stream forever.
const READ_CAP: u64 = 64 * 1024;
/// At most this much of it is kept with the attempt.
const EXCERPT: usize = 1024;
/// Each connection's input buffer (ureq 3.5's default is 128 KiB, written
/// in full when a connection first sends, so resident: 256 KiB a request
/// with the output buffer, 5/6 of a request's memory). It must hold the
/// response's status line and headers (their limit is set to the same);
/// the body is read through it in pieces, and only 1 KiB of it is kept.
const INPUT_BUFFER: usize = 16 * 1024;
/// Each connection's output buffer: the longest line hookbus writes must
/// fit (a URL is at most 2048 bytes, a custom header value 4096); the body
/// goes through it in pieces.
const OUTPUT_BUFFER: usize = 8 * 1024;

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

/// The HTTP agent every sender shares: keep-alive pool sized to the senders,
/// status codes handled by us, redirects never followed, no proxy, connect
/// and total timeouts, and the SSRF-guarding resolver.
pub(crate) fn build_agent(config: &Config) -> ureq::Agent {
    let cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(USER_AGENT)
        .accept("application/json")
        .timeout_connect(Some(config.connect_timeout))
        .timeout_global(Some(config.request_timeout))
        .max_idle_connections_per_host(config.per_host.min(config.senders))
        .max_idle_connections(config.senders.max(10))
        .input_buffer_size(INPUT_BUFFER)
        .max_response_header_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .https_only(config.https_only)
        // rustls with the webpki roots; certificate verification is never
        // turned off.
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::WebPki)
                .build(),
        )
        .build();
    let resolver = GuardedResolver::new(config.target_policy(), config.dns_overrides.clone());
    ureq::Agent::with_parts(
        cfg,
        ureq::unversioned::transport::DefaultConnector::default(),
        resolver,
    )
}

/// A sender thread with no work for this long stops.
const IDLE: Duration = Duration::from_secs(30);
/// Sender threads only block on I/O: a small stack is enough. Only the
/// pages touched are resident: 32 KiB per thread measured for a loopback
/// HTTP request (`examples/inflight.rs` reads it from `/proc/self/smaps`),
/// the same with 128 or 512 KiB reserved. 256 KiB keeps a wide margin for
/// what loopback does not exercise (a rustls handshake and certificate
/// check, a panic's unwinding, deep `tracing` subscribers) at no resident
/// cost, and halves the address space (and, under strict overcommit, the
/// commit charge) of the former 512 KiB with thousands of threads.
const STACK: usize = 256 * 1024;

/// The elastic pool of blocking sender threads. Threads are started on
/// demand, so that every job handed out has a thread, up to the configured
/// most, and stop after [`IDLE`] without work. Each holds a clone of the
/// outcome channel's sender: the channel reads as disconnected once all have
/// ended.
#[derive(Debug)]
pub(crate) struct Pool {
    agent: ureq::Agent,
    work: Option<Sender<Job>>,
    work_rx: Receiver<Job>,
    results: Option<Sender<Outcome>>,
    /// Threads alive (counted down by a thread before it stops).
    alive: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
    max: usize,
    started: u64,
}

impl Pool {
    /// A pool whose threads send through `agent` (the bus's one agent,
    /// [`build_agent`]; test requests share it).
    pub(crate) fn new(agent: ureq::Agent, config: &Config, results: Sender<Outcome>) -> Pool {
        let (work, work_rx) = crossbeam_channel::unbounded();
        Pool {
            agent,
            work: Some(work),
            work_rx,
            results: Some(results),
            alive: Arc::new(AtomicUsize::new(0)),
            threads: Vec::new(),
            max: config.senders,
            started: 0,
        }
    }

    /// How many sender threads are alive.
    pub(crate) fn alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Hands out a job; `in_flight` is how many jobs are out, this one
    /// included. Starts a thread when fewer are alive.
    pub(crate) fn submit(&mut self, job: Job, in_flight: usize) -> Result<()> {
        let Some(work) = &self.work else {
            return Err(Error::Closed);
        };
        work.send(job).map_err(|_| Error::Closed)?;
        // After the send: a thread that is stopping checks the queue once
        // more after counting itself out, so no job is left without one.
        while self.alive.load(Ordering::SeqCst) < in_flight.min(self.max) {
            self.spawn()?;
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        self.threads.retain(|h| !h.is_finished());
        let Some(results) = &self.results else {
            return Err(Error::Closed);
        };
        let name = format!("hookbus-sender-{}", self.started);
        self.started += 1;
        let (agent, work, results, alive) = (
            self.agent.clone(),
            self.work_rx.clone(),
            results.clone(),
            self.alive.clone(),
        );
        alive.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .stack_size(STACK)
            .spawn(move || sender_loop(&agent, &work, &results, &alive));
        match spawned {
            Ok(h) => {
                self.threads.push(h);
                Ok(())
            }
            Err(source) => {
                self.alive.fetch_sub(1, Ordering::SeqCst);
                Err(Error::Spawn { name, source })
            }
        }
    }

    /// No more jobs: threads end after their current one, and the outcome
    /// channel disconnects when the last has ended.
    pub(crate) fn close(&mut self) {
        self.work = None;
        self.results = None;
    }

    /// Joins the threads (call once the outcome channel is disconnected,
    /// i.e. all have ended).
    pub(crate) fn join(&mut self) {
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                tracing::error!("a hookbus sender thread panicked");
            }
        }
    }
}

fn sender_loop(
    agent: &ureq::Agent,
    work: &Receiver<Job>,
    results: &Sender<Outcome>,
    alive: &AtomicUsize,
) {
    loop {
        match work.recv_timeout(IDLE) {
            Ok(job) => {
                if results.send(perform_guarded(agent, job)).is_err() {
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                alive.fetch_sub(1, Ordering::SeqCst);
                // A job sent while this thread was counting itself out.
                match work.try_recv() {
                    Ok(job) => {
                        alive.fetch_add(1, Ordering::SeqCst);
                        if results.send(perform_guarded(agent, job)).is_err() {
                            break;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
    }
    alive.fetch_sub(1, Ordering::SeqCst);
}

/// Makes one attempt; a panic inside it (a bug in a dependency or here)
/// becomes a failed attempt, so the delivery is retried and the sender
/// thread goes on with the next job instead of dying.
fn perform_guarded(agent: &ureq::Agent, job: Job) -> Outcome {
    let (delivery, subscription, number) = (job.delivery, job.subscription, job.attempt);
    let at = Timestamp::now();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| perform(agent, job)));
    caught.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
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
    })
}

/// Makes one attempt.
pub(crate) fn perform(agent: &ureq::Agent, job: Job) -> Outcome {
    let span = tracing::info_span!(
        "hookbus.attempt",
        delivery = %job.delivery,
        subscription = %job.subscription,
        event = %job.event_name,
        attempt = job.attempt,
        status = tracing::field::Empty,
        error = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let _enter = span.enter();
    let at = Timestamp::now();
    let started = Instant::now();
    #[cfg(test)]
    if job.url.ends_with(tests::PANIC_PATH) {
        panic!("injected by a test");
    }

    let id = job.delivery.to_string();
    let mut req = agent.post(&job.url);
    // Custom headers first: the names were checked not to be any of ours.
    for (name, value) in &job.headers {
        req = req.header(name, value);
    }
    let mut req = req
        .header("Content-Type", &job.content_type)
        .header("X-Webhook-Delivery", &id)
        .header("X-Webhook-Event", &job.event_name)
        .header("X-Webhook-Event-Id", job.event.to_string());
    if job.sequence > 0 {
        req = req.header("X-Webhook-Sequence", job.sequence.to_string());
    }
    if let Some(tp) = &job.traceparent {
        req = req.header("traceparent", &**tp);
    }
    if job.standard_webhooks {
        let ts = at.as_millis() / 1000;
        let sigs: Vec<String> = job
            .secrets
            .iter()
            .filter_map(|s| signing::decode_standard_secret(s).ok())
            .map(|key| signing::sign_standard(&key, &id, ts, &job.payload))
            .collect();
        req = req
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sigs.join(" "));
    } else if let Some(secret) = job.secrets.first() {
        req = req
            .header(
                "X-Hub-Signature",
                signing::sign_sha1(secret.as_bytes(), &job.payload),
            )
            .header(
                "X-Hub-Signature-256",
                signing::sign_sha256(secret.as_bytes(), &job.payload),
            );
    }

    let (status, error, excerpt, retry_after) = match req.send(&job.payload[..]) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut body = Vec::new();
            let read = resp
                .body_mut()
                .as_reader()
                .take(READ_CAP)
                .read_to_end(&mut body);
            body.truncate(EXCERPT);
            // A body that breaks off is the receiver's problem only if we
            // would otherwise call this a success.
            match read {
                Err(e) if (200..300).contains(&status) => {
                    (None, Some(classify_io(&e)), body, retry_after)
                }
                _ => (Some(status), None, body, retry_after),
            }
        }
        Err(e) => (None, Some(classify(&e)), Vec::new(), None),
    };
    let duration = started.elapsed();
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    span.record("duration_ms", duration_ms);
    match (&status, &error) {
        (Some(s), _) => {
            span.record("status", s);
            tracing::debug!(status = s, "attempt answered");
        }
        (None, Some(e)) => {
            span.record("error", tracing::field::display(e));
            tracing::debug!(error = %e, "attempt failed");
        }
        _ => {}
    }
    Outcome {
        delivery: job.delivery,
        subscription: job.subscription,
        attempt: Attempt {
            number: job.attempt,
            at,
            duration_ms,
            status,
            error,
            response_excerpt: excerpt,
        },
        retry_after,
    }
}

fn classify(e: &ureq::Error) -> AttemptError {
    let kind = match e {
        ureq::Error::Timeout(_) => AttemptErrorKind::Timeout,
        ureq::Error::Io(io) => return classify_io(io),
        ureq::Error::HostNotFound => AttemptErrorKind::Dns,
        ureq::Error::ConnectionFailed => AttemptErrorKind::Connect,
        ureq::Error::Tls(_) => AttemptErrorKind::Tls,
        ureq::Error::Protocol(_) => AttemptErrorKind::Protocol,
        _ => AttemptErrorKind::Other,
    };
    AttemptError {
        kind,
        message: e.to_string(),
    }
}

fn classify_io(e: &std::io::Error) -> AttemptError {
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
                .is_some_and(|e| e.message.contains("sender panicked"))),
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
