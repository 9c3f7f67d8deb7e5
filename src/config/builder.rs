//! [`Builder`]: the settings of a bus, one setter each, with their
//! defaults and limits documented; [`build`](Builder::build) checks them.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

#[cfg(feature = "postgres")]
use super::Postgres;
use super::checks::checked;
use super::{Config, Durability};
use crate::catalog::EventType;
use crate::error::Result;

/// Builds a [`Bus`](crate::Bus) with non-default settings.
///
/// ```no_run
/// use std::time::Duration;
/// let bus = hookbus::Bus::builder()
///     .path("./hookbus-data")
///     .senders(8)
///     .retry_schedule(vec![Duration::from_secs(5), Duration::from_secs(300)])
///     .open()?;
/// # Ok::<(), hookbus::Error>(())
/// ```
///
/// # Defaults
///
/// | setting | default |
/// | --- | --- |
/// | `cache_capacity` | 64 MiB |
/// | `channel_capacity` | 10 000 events |
/// | `max_queued_bytes` | 64 MiB |
/// | `sender_memory_budget` | 160 MiB: 5120 requests in flight (tasks; 2048 with `blocking_senders`) |
/// | `senders` | none (the budget decides) |
/// | `blocking_senders` | `false`: requests are tasks on the bus's own tokio runtime |
/// | `sender_threads` | one per four cores, 1 to 4 |
/// | `max_in_flight_per_subscription` | 64 |
/// | `max_in_flight_per_host` | half the requests in flight (2560 with the default budget) |
/// | `circuit_breaker` | 5 failures, 30 s |
/// | `durability` | `Durability::Crash` |
/// | `retry_schedule` | 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h |
/// | `allow_private_targets` | `false` |
/// | `allowed_networks` | none |
/// | `dns_override` | none |
/// | `https_only` | `false` |
/// | `connect_timeout` | 5 s |
/// | `request_timeout` | 15 s |
/// | `max_payload_bytes` | 256 KiB |
/// | `shutdown_timeout` | 5 s |
/// | `deliver` | `true` |
/// | `lock_timeout` | 2 s |
/// | `max_subscriptions_per_tenant` | 100 |
/// | `tenants_receive_app_events` | `false` |
/// | `idempotency_window` | 24 h |
/// | `auto_disable_after` | 5 days |
/// | `keep_delivered_for` | 30 days |
/// | `keep_dead_for` | 30 days |
/// | `attempts_kept` | 20 per delivery |
/// | `commit_window` | 100 µs |
/// | `event_type` | none (an empty catalog: any event name) |
/// | `validate_payloads` | `false` |
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Builder {
    config: Config,
    networks: Vec<String>,
    event_types: Vec<EventType>,
}

impl Builder {
    /// A builder with every setting at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// The folder of the store; created if missing. Required.
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.config.path = path.as_ref().to_path_buf();
        self
    }

    /// Keeps the store in PostgreSQL instead of a sled folder (feature
    /// `postgres`): `url` is a libpq-style connection string
    /// (`postgres://user:password@host:5432/database` or
    /// `host=… user=… dbname=…`); the tables live in the schema
    /// [`postgres_schema`](Self::postgres_schema) (default `hookbus`),
    /// created and migrated on open. Several instances of an app may open
    /// the same database and schema: they share subscriptions and the
    /// outbox, and each delivery is claimed by one instance at a time.
    /// [`path`](Self::path) is then not needed.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        let old = self.config.postgres.take();
        self.config.postgres = Some(Postgres {
            url: url.into(),
            schema: old
                .as_ref()
                .map_or_else(|| "hookbus".to_owned(), |p| p.schema.clone()),
            lease: old.and_then(|p| p.lease),
        });
        self
    }

    /// How often an instance looks for deliveries other instances added
    /// (PostgreSQL only; 100 ms to 1 hour). Instances also notify each other
    /// when they commit (`LISTEN/NOTIFY`), so this is the backstop for a
    /// lost notification.
    ///
    /// Defaults to 1 s.
    #[cfg(feature = "postgres")]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config.shared_poll = every;
        self
    }

    /// How long an instance's claim on a delivery holds before another
    /// instance may take it over (PostgreSQL only; 1 s to 1 day). A claim
    /// ends early when its result is written; one whose instance stalled or
    /// died runs out, and the delivery is sent again by another. It must
    /// be longer than `connect_timeout + request_timeout` (the longest a
    /// request can take): `open` refuses a shorter one with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    ///
    /// Defaults to the connect and request timeouts plus 30 s.
    #[cfg(feature = "postgres")]
    pub fn claim_lease(mut self, lease: Duration) -> Self {
        let old = self.config.postgres.take();
        self.config.postgres = Some(Postgres {
            url: old.as_ref().map(|p| p.url.clone()).unwrap_or_default(),
            schema: old
                .as_ref()
                .map_or_else(|| "hookbus".to_owned(), |p| p.schema.clone()),
            lease: Some(lease),
        });
        self
    }

    /// The PostgreSQL schema of the store (lowercase letters, digits and
    /// `_`; default `hookbus`): several apps, or tests, can share one
    /// database with a schema each. Only with [`postgres`](Self::postgres).
    #[cfg(feature = "postgres")]
    pub fn postgres_schema(mut self, schema: impl Into<String>) -> Self {
        let old = self.config.postgres.take();
        self.config.postgres = Some(Postgres {
            url: old.as_ref().map(|p| p.url.clone()).unwrap_or_default(),
            schema: schema.into(),
            lease: old.and_then(|p| p.lease),
        });
        self
    }

    /// sled's page cache in bytes (sled's own default is 1 GiB, too much for
    /// an embedded library).
    ///
    /// Defaults to 64 MiB.
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.config.cache_capacity = bytes;
        self
    }

    /// How many published events may wait for the dispatcher thread before
    /// [`Bus::publish`](crate::Bus::publish) blocks (back-pressure). Memory held by the queue is at
    /// most this many serialized payloads; its slots (about 100 bytes each)
    /// are allocated when the bus opens. At most 10 000 000
    /// ([`Error::InvalidConfig`](crate::Error::InvalidConfig) above that).
    ///
    /// Defaults to 10 000.
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.config.channel_capacity = n;
        self
    }

    /// How many bytes of published payloads may wait for the dispatcher
    /// thread before a publish blocks (back-pressure), whatever
    /// `channel_capacity` allows: without it, 10 000 events of 256 KiB
    /// could hold 2.5 GiB. One event larger than this still goes through
    /// alone. At least 1.
    ///
    /// Defaults to 64 MiB.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.config.max_queued_bytes = bytes;
        self
    }

    /// A hard cap on the requests in flight at once (with
    /// [`blocking_senders`](Self::blocking_senders), also the most sender
    /// threads). A request waiting on a slow or dead receiver holds a task
    /// (or a sleeping thread), not throughput: deliveries per second are
    /// about the requests in flight divided by the receivers' latency. One subscription never holds all of them
    /// (see [`max_in_flight_per_subscription`](Self::max_in_flight_per_subscription)),
    /// nor one host (see [`max_in_flight_per_host`](Self::max_in_flight_per_host)).
    ///
    /// Without it the [`sender_memory_budget`](Self::sender_memory_budget)
    /// alone sets the ceiling; with it, the ceiling is the smaller of the
    /// two ([`Config::senders`](crate::Config::senders) reads it back).
    /// 1 to 16 384.
    ///
    /// Not set by default: the default budget allows 5120 (2048 with
    /// blocking senders).
    pub fn senders(mut self, n: usize) -> Self {
        self.config.senders_cap = Some(n);
        self
    }

    /// The resident memory the requests in flight may take, in bytes: the
    /// ceiling of requests in flight is this divided by the measured cost
    /// of one (`examples/inflight.rs`, BENCHMARKS.md), at most 16 384:
    /// 32 KiB as a task (its future, its connection's hyper buffers, the
    /// rest: 26 KiB per request measured at peak with 2000 held at once to
    /// a 500 ms receiver on 127.0.0.1), 80 KiB with
    /// [`blocking_senders`](Self::blocking_senders) (a thread's touched
    /// stack, ureq's buffers: 76 KiB measured the same way).
    /// Requests in flight follow demand (about deliveries per second times
    /// the receivers' latency) up to that ceiling; nothing is allocated
    /// before it is used. [`senders`](Self::senders), if set, caps the
    /// ceiling further.
    ///
    /// Each connection also takes kernel memory outside the process's
    /// resident set (socket buffers; a 16 KiB kernel stack per blocking
    /// sender thread) and a file descriptor: raise `ulimit -n` above the
    /// ceiling. HTTPS connections take more than the loopback HTTP ones
    /// measured (rustls's own record buffers).
    ///
    /// At least one request's cost. Defaults to 160 MiB: 5120 requests,
    /// 2560 of them to one host (the per-host default is half), so a slow
    /// host gets 2560 at once with as many left for other hosts; 2000 at
    /// once were measured at 65 MB peak RSS for the whole process (105 MB
    /// with blocking senders). See BENCHMARKS.md for throughput at 0, 100
    /// and 500 ms receivers.
    pub fn sender_memory_budget(mut self, bytes: usize) -> Self {
        self.config.sender_memory_budget = bytes;
        self
    }

    /// Sends with one blocking ureq thread per request in flight instead of
    /// tasks on the bus's own small tokio runtime (the default).
    ///
    /// The task transport holds a request waiting on a slow receiver as a
    /// future and a socket (32 KiB charged against
    /// [`sender_memory_budget`](Self::sender_memory_budget), measured with
    /// small payloads), the blocking one as a thread (80 KiB charged, and a
    /// context switch per request): see BENCHMARKS.md for both at 0, 100
    /// and 500 ms receivers. Both sign, guard addresses and time out the
    /// same way. Test requests take the same transport.
    ///
    /// Defaults to `false`.
    pub fn blocking_senders(mut self, yes: bool) -> Self {
        self.config.blocking_senders = yes;
        self
    }

    /// The task transport's runtime threads: they poll the sockets of the
    /// requests in flight and sign them. 1 to 64.
    ///
    /// Defaults to one per four cores, at least 1, at most 4 (requests
    /// mostly wait; the dispatcher and the store need the other cores; on
    /// 2 cores one thread cost less CPU per delivery than two for the same
    /// throughput, BENCHMARKS.md). Ignored with
    /// [`blocking_senders`](Self::blocking_senders).
    pub fn sender_threads(mut self, n: usize) -> Self {
        self.config.sender_threads = n;
        self
    }

    /// The most requests one subscription may have in flight (it also never
    /// holds more than its fair share while others have due work).
    ///
    /// Defaults to 64: the `slow_receivers` bench's workloads need at most
    /// 20 per subscription at once (20 events each), so 64 leaves three
    /// times that; at 500 ms it is 128 deliveries/s for one subscription,
    /// and the isolation bench's healthy subscription (100 ms) reaches
    /// 600/s of its 640/s ceiling beside 12 hanging ones (BENCHMARKS.md).
    pub fn max_in_flight_per_subscription(mut self, n: usize) -> Self {
        self.config.per_subscription = n;
        self
    }

    /// The most subscriptions one tenant may have
    /// ([`NewSubscription::tenant`](crate::NewSubscription::tenant));
    /// creating one more fails with
    /// [`Error::TenantFull`](crate::Error::TenantFull). Subscriptions
    /// without a tenant are not counted.
    ///
    /// Defaults to 100.
    pub fn max_subscriptions_per_tenant(mut self, n: usize) -> Self {
        self.config.max_subscriptions_per_tenant = n;
        self
    }

    /// Whether the subscriptions of tenants also receive app-wide events
    /// (those published with [`Bus::publish`](crate::Bus::publish), without
    /// a tenant). Off by default: a tenant's subscription receives its own
    /// tenant's events only, so one customer never sees what the app
    /// publishes for everyone unless the operator says so.
    pub fn tenants_receive_app_events(mut self, yes: bool) -> Self {
        self.config.tenants_receive_app_events = yes;
        self
    }

    /// How long an idempotency key
    /// ([`Message::idempotency_key`](crate::Message::idempotency_key)) is
    /// remembered: a message with a key used less than this long ago stores
    /// nothing and returns the first event's id. 1 s to 365 days; keys
    /// older than this are forgotten in the background.
    ///
    /// Defaults to 24 hours.
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.config.idempotency_window = window;
        self
    }

    /// Disables a subscription whose attempts have all failed for this
    /// long (`None`: never). A disabled subscription is inactive: it gets
    /// no new deliveries, and its pending ones wait — they are not
    /// dead-lettered — until it is enabled again
    /// ([`SubscriptionPatch::active`](crate::SubscriptionPatch::active)`(true)`),
    /// which resumes them. The app hears of it as a
    /// [`NoticeKind::SubscriptionDisabled`](crate::NoticeKind::SubscriptionDisabled)
    /// notice, and [`EndpointHealth`](crate::EndpointHealth) says when and
    /// why. The check runs at each failed attempt. 1 s to 365 days.
    ///
    /// Defaults to 5 days (like Svix).
    pub fn auto_disable_after(mut self, window: Option<Duration>) -> Self {
        self.config.auto_disable_after = window;
        self
    }

    /// Keeps delivered deliveries — with their attempts, and their events
    /// while any delivery refers to one — for this long after they
    /// finished (`None`: until
    /// [`Outbox::purge_delivered_before`](crate::Outbox::purge_delivered_before)).
    /// Older ones are removed in
    /// the background, in bounded chunks between rounds, so a steady load
    /// keeps the store's size flat. Events stay replayable
    /// ([`Outbox::replay`](crate::Outbox::replay)) for as long as one of
    /// their deliveries is kept. 1 s to 10 years.
    ///
    /// Every bus that opens the store purges by its own settings: give
    /// every instance of a shared store the same windows, and open tools
    /// that only inspect with `None` (the outbox CLI does).
    ///
    /// Defaults to 30 days.
    pub fn keep_delivered_for(mut self, window: Option<Duration>) -> Self {
        self.config.keep_delivered = window;
        self
    }

    /// Keeps dead letters for this long after they died (`None`: until
    /// [`Outbox::purge_dead_before`](crate::Outbox::purge_dead_before)),
    /// as [`keep_delivered_for`](Builder::keep_delivered_for) does for
    /// delivered ones. A dead letter a FIFO subscription is halted at is
    /// kept while it halts there. 1 s to 10 years.
    ///
    /// Defaults to 30 days.
    pub fn keep_dead_for(mut self, window: Option<Duration>) -> Self {
        self.config.keep_dead = window;
        self
    }

    /// How many attempts are kept per delivery: when an attempt beyond
    /// this count is recorded, the oldest kept one is removed (a delivery
    /// retried by hand again and again stays bounded). 1 to 10 000.
    ///
    /// Defaults to 20 (the default retry schedule makes 8).
    pub fn attempts_kept(mut self, n: u32) -> Self {
        self.config.attempts_kept = n;
        self
    }

    /// The most requests one destination host (name and port) may have in
    /// flight, over all subscriptions that point at it.
    ///
    /// Defaults to half the requests in flight the bus allows (its
    /// [`Config::senders`](crate::Config::senders), at least 1): 2560 with the default
    /// [`sender_memory_budget`](Self::sender_memory_budget), so one host
    /// never takes every slot, yet 200 subscriptions x 10 events to one
    /// 500 ms receiver (2000 requests) go out at once: the
    /// `slow_receivers` bench measured 3,263/s there with all 2000 in
    /// flight (491/s with the former 256 per host, 1,749/s with blocking
    /// senders' 1024; BENCHMARKS.md).
    pub fn max_in_flight_per_host(mut self, n: usize) -> Self {
        self.config.per_host_cap = Some(n);
        self
    }

    /// How long a round of published events waits for more before the
    /// engine commits it, and whether attempt outcomes wait for the next
    /// commit.
    ///
    /// Every commit costs the store a fixed amount (on sled about 300 µs
    /// of CPU for a batch and its flush, mostly in sled's I/O threads,
    /// whatever its size), and at everyday rates each event would
    /// otherwise be a round of its own. With a window:
    ///
    /// - events published without a waiter, while they come close together
    ///   (their mean gap at most ten windows), gather for up to the window
    ///   and share one commit and one flush; at a slow, steady pace the
    ///   window stays closed and adds no latency. A barrier
    ///   ([`Bus::flush`](crate::Bus::flush), a
    ///   [`publish_durable`](crate::Bus::publish_durable), a change) closes
    ///   it at once, and still returns only once its round is durable;
    /// - on a store the bus writes alone, attempt outcomes wait, staged, up
    ///   to 10 ms for the next commit (usually the next event's) instead
    ///   of 1 ms: a crash loses at most that much more of them (their
    ///   deliveries are sent again, at least once), and the outbox's
    ///   counters and listings show them up to 10 ms late. FIFO
    ///   subscriptions' outcomes never wait.
    ///
    /// Zero turns both off (each event is committed as soon as the engine
    /// takes it, outcomes alone wait at most 1 ms). At most 100 ms.
    ///
    /// Defaults to 100 µs: a tenth of a millisecond is what a p99 goal of
    /// 1 ms can spare, and only while events come at most 1 ms apart (a
    /// one-off run at 2,000 random events/s took a quarter off sled's I/O
    /// threads' CPU with it; at 1,000/s no gain showed through the noise).
    /// The `steady_rate` bench (300 events/s over
    /// 100 subscriptions; BENCHMARKS.md) measured, over six runs on a
    /// busy machine, 554–769 µs of CPU per delivery with the default
    /// (median 673) and 742–920 µs with zero (median 822), 0.75–0.91 of
    /// it in each run: the outcomes' commits and their share of sled's
    /// I/O threads (about 120 µs a delivery) are gone; at that pace the
    /// publish window stays closed and adds no latency.
    pub fn commit_window(mut self, window: Duration) -> Self {
        self.config.commit_window = window;
        self
    }

    /// A subscription's circuit breaker: after `failures` connection
    /// failures or timeouts in a row (a response of any status resets the
    /// count), its backlog waits for `wait`; then one request at a time
    /// probes the receiver. An answer closes the breaker; another failure
    /// opens it again for twice as long, up to 10 minutes. The deliveries'
    /// own retry schedule goes on meanwhile (a delivery whose time came
    /// while the breaker was open is sent when it closes).
    ///
    /// `failures` must be at least 1 and `wait` at most 1 hour
    /// ([`Error::InvalidConfig`](crate::Error::InvalidConfig) otherwise). A
    /// zero `wait` never holds the backlog back: the breaker then only
    /// limits a failing subscription to one request at a time until one is
    /// answered.
    ///
    /// Defaults to 5 failures, 30 s.
    pub fn circuit_breaker(mut self, failures: u32, wait: Duration) -> Self {
        self.config.breaker_after = failures;
        self.config.breaker_wait = wait;
        self
    }

    /// What a durability barrier waits for: see [`Durability`].
    /// [`Durability::PowerLoss`] adds one `fdatasync` per barrier round.
    ///
    /// Defaults to [`Durability::Crash`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// The delay before each retry; a delivery gets `1 + schedule.len()`
    /// attempts, then is dead (kept in the dead letter queue). Each delay is
    /// jittered by ±20 %. An empty schedule means one attempt only. At
    /// most 100 delays of at most 30 days each
    /// ([`Error::InvalidConfig`](crate::Error::InvalidConfig) otherwise); a
    /// zero delay retries at once.
    ///
    /// Defaults to 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub fn retry_schedule(mut self, schedule: Vec<Duration>) -> Self {
        self.config.retry_schedule = schedule;
        self
    }

    /// Allow subscription URLs and deliveries to loopback, private,
    /// link-local and other non-global addresses. Leave it off in production:
    /// it is what stops a subscriber from pointing the sender at your
    /// internal network (SSRF). Tests and local demos turn it on.
    ///
    /// Defaults to `false`.
    pub fn allow_private_targets(mut self, allow: bool) -> Self {
        self.config.allow_private_targets = allow;
        self
    }

    /// Internal networks (CIDR, such as `10.1.0.0/16` or `fd00:1::/32`) that
    /// deliveries may go to even though
    /// [`allow_private_targets`](Self::allow_private_targets) is off: for
    /// subscribers inside your own network. Everything else internal stays
    /// refused. A bare address is a network of that one address. An
    /// IPv4-mapped network counts as the IPv4 network it names
    /// (`::ffff:10.0.0.0/104` is `10.0.0.0/8`); one with a prefix shorter
    /// than `/96` is refused. [`build`](Self::build) and
    /// [`open`](Self::open) fail with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) on a value that
    /// is not a network.
    ///
    /// Defaults to none.
    pub fn allowed_networks<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.networks
            .extend(networks.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Resolves `host` to `addrs` instead of asking DNS (like curl's
    /// `--resolve`). The addresses still pass the internal-address check.
    ///
    /// Defaults to none.
    pub fn dns_override(mut self, host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.config
            .dns_overrides
            .insert(host, addrs.into_iter().collect());
        self
    }

    /// Refuse subscription URLs that do not use `https`.
    ///
    /// Defaults to `false`.
    pub fn https_only(mut self, on: bool) -> Self {
        self.config.https_only = on;
        self
    }

    /// The TCP connect timeout of one delivery attempt: more than zero and
    /// at most 1 hour ([`Error::InvalidConfig`](crate::Error::InvalidConfig)
    /// otherwise).
    ///
    /// Defaults to 5 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// The total time one delivery attempt may take, from resolving the host
    /// to reading the response. A receiver slower than this counts as a
    /// timeout and is retried later. More than zero and at most 1 hour
    /// ([`Error::InvalidConfig`](crate::Error::InvalidConfig) otherwise).
    ///
    /// Defaults to 15 s.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }

    /// The largest payload [`Bus::publish`](crate::Bus::publish) accepts, in bytes of serialized
    /// JSON; larger ones get
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) and nothing
    /// is stored. At most 16 MiB.
    ///
    /// Defaults to 256 KiB.
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.config.max_payload_bytes = bytes;
        self
    }

    /// How long dropping the last [`Bus`](crate::Bus) handle waits for requests in
    /// flight before it stops anyway (what is unfinished is delivered after
    /// the next open). [`Bus::shutdown`](crate::Bus::shutdown) takes its own deadline.
    /// Any value is accepted: zero does not wait for requests in flight; one
    /// too large to represent (`Duration::MAX`) waits until they end, which
    /// the connect and request timeouts bound.
    ///
    /// Defaults to 5 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.config.shutdown_timeout = d;
        self
    }

    /// Whether to send deliveries. With `false` the bus stores publishes and
    /// changes but hands nothing to its senders and sends no delivery
    /// (test requests still go out, through the senders' one runtime
    /// thread, or ureq with blocking senders): for
    /// inspection and maintenance tools such as the `hookbus` CLI (feature
    /// `cli`).
    /// Pending deliveries are sent by the next bus opened with `true`.
    ///
    /// Defaults to `true`.
    pub fn deliver(mut self, on: bool) -> Self {
        self.config.deliver = on;
        self
    }

    /// How long [`open`](Self::open) waits for a store held by someone else
    /// before it fails with [`Error::StoreLocked`](crate::Error::StoreLocked).
    /// (sled releases a store's lock a moment after its last handle is
    /// dropped.) Any value is
    /// accepted: zero does not wait for a store held by someone else; one
    /// too large to represent (`Duration::MAX`) waits without limit.
    ///
    /// Defaults to 2 s.
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.config.lock_timeout = d;
        self
    }

    /// Registers an event type in the app's event catalog (call it once
    /// per type; [`Bus::event_types`](crate::Bus::event_types) lists them
    /// in this order). [`build`](Self::build) and [`open`](Self::open)
    /// check the catalog and fail with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig), naming the
    /// type, on a name that breaks the event-name rules of
    /// [`Bus::publish`](crate::Bus::publish) (or is `*`), a name
    /// registered twice, a schema that does not compile (or a schema at
    /// all without the `json-schema` feature), or an example that does
    /// not satisfy its schema. Schemas are compiled once, there.
    ///
    /// **Catalog enforcement.** With at least one type registered, a
    /// subscription (created, updated or ensured through
    /// [`Subscriptions`](crate::Subscriptions) or the REST routes) may
    /// only name registered types, or `*`: another name is refused with
    /// [`Error::InvalidEventName`](crate::Error::InvalidEventName), which
    /// names it. Subscriptions already stored are left as they are.
    /// Publishing is not restricted to the catalog's names.
    ///
    /// With no type registered (the default) the catalog is empty and any
    /// valid event name may be subscribed to, as before catalogs existed.
    ///
    /// See [`EventType`] for an example.
    pub fn event_type(mut self, event_type: EventType) -> Self {
        self.event_types.push(event_type);
        self
    }

    /// Checks every published payload of an event type that has a schema
    /// in the catalog against that schema (feature `json-schema`; without
    /// it no type can have a schema, so nothing is checked). A payload
    /// that fails is refused with
    /// [`Error::PayloadInvalid`](crate::Error::PayloadInvalid), naming the
    /// JSON pointer of the first failing value, and nothing is stored.
    /// Every way of publishing is checked: `publish`, `publish_to`,
    /// `publish_durable`, the messages, the `_async` calls and
    /// `publish_in`. Events whose type has no schema, or that are not in
    /// the catalog, are not checked. It costs one parse of the payload per
    /// checked publish; with `false` publishing does no more than before.
    ///
    /// Defaults to `false`.
    pub fn validate_payloads(mut self, on: bool) -> Self {
        self.config.validate_payloads = on;
        self
    }

    /// Checks the settings and returns them without opening anything.
    pub fn build(self) -> Result<Config> {
        checked(self.config, &self.networks, self.event_types)
    }
}
