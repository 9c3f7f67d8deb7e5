//! The blocking transport: an elastic pool of ureq sender threads, one per
//! request in flight (`Builder::blocking_senders`), sharing one agent.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{Answer, Job, Outcome, READ_CAP, USER_AGENT, classify_io};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::Timestamp;
use crate::record::{AttemptError, AttemptErrorKind};
use crate::ssrf::{Guard, GuardedResolver};

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
    let resolver = GuardedResolver::new(Arc::new(Guard::new(
        config.target_policy(),
        config.dns_overrides.clone(),
    )));
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
    let key = (job.delivery, job.subscription, job.attempt);
    let at = Timestamp::now();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| perform(agent, job)));
    caught.unwrap_or_else(|panic| super::panicked(key, at, &super::panic_message(&*panic)))
}

/// Makes one attempt through `agent` (blocking).
pub(crate) fn perform(agent: &ureq::Agent, job: Job) -> Outcome {
    let span = super::attempt_span(&job);
    let _enter = span.enter();
    let at = Timestamp::now();
    let started = Instant::now();
    #[cfg(test)]
    if job.url.ends_with(super::tests::PANIC_PATH) {
        panic!("injected by a test");
    }

    let id = job.delivery.to_string();
    let mut req = agent.post(&job.url);
    for (name, value) in super::headers(&job, &id, at) {
        req = req.header(name, value);
    }
    let answer = match req.send(&job.payload[..]) {
        Ok(mut resp) => {
            let mut body = Vec::new();
            let read = resp
                .body_mut()
                .as_reader()
                .take(READ_CAP)
                .read_to_end(&mut body);
            let broken = read.err().map(|e| classify_io(&e));
            Answer::response(resp.status().as_u16(), resp.headers(), body, broken)
        }
        Err(e) => Answer::failed(classify(&e)),
    };
    super::finish(&job, at, started, &span, answer)
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
