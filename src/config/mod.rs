//! Configuration: a [`Builder`] that produces an immutable [`Config`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ssrf::{IpNet, TargetPolicy};

/// The largest payload the codec will ever decode; `max_payload_bytes` may
/// not be set above it.
pub(crate) const PAYLOAD_HARD_LIMIT: usize = 16 * 1024 * 1024;
/// The largest accepted `channel_capacity` (the queue's slots, about 100
/// bytes each, are allocated up front: 10 M is about 1 GB).
const MAX_CHANNEL_CAPACITY: usize = 10_000_000;
/// The default most requests in flight (sender threads, started on demand).
const DEFAULT_SENDERS: usize = 256;
/// The largest accepted `senders`.
const MAX_SENDERS: usize = 4096;
/// How long finished deliveries are kept by default.
const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest accepted retention window.
const MAX_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);
/// The longest accepted connect or request timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The settings of an open [`Bus`](crate::Bus). Made by [`Builder`]; read it back with
/// [`Bus::config`](crate::Bus::config).
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) path: PathBuf,
    pub(crate) cache_capacity: u64,
    pub(crate) channel_capacity: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) senders: usize,
    pub(crate) per_subscription: usize,
    pub(crate) per_host: usize,
    pub(crate) breaker_after: u32,
    pub(crate) durability: Durability,
    pub(crate) breaker_wait: Duration,
    pub(crate) retry_schedule: Vec<Duration>,
    pub(crate) allow_private_targets: bool,
    pub(crate) allowed_networks: Vec<IpNet>,
    pub(crate) dns_overrides: HashMap<String, Vec<IpAddr>>,
    pub(crate) https_only: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_payload_bytes: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) deliver: bool,
    pub(crate) lock_timeout: Duration,
    pub(crate) max_subscriptions_per_tenant: usize,
    pub(crate) tenants_receive_app_events: bool,
    pub(crate) idempotency_window: Duration,
    pub(crate) auto_disable_after: Option<Duration>,
    pub(crate) keep_delivered: Option<Duration>,
    pub(crate) keep_dead: Option<Duration>,
    pub(crate) attempts_kept: u32,
    /// How often an instance of a shared store looks for work the others
    /// added (a backstop to their notifications).
    pub(crate) shared_poll: Duration,
    /// The PostgreSQL store instead of sled: its URL and schema.
    #[cfg(feature = "postgres")]
    pub(crate) postgres: Option<Postgres>,
}

/// Where a PostgreSQL store is. Its `Debug` hides the URL's password.
#[cfg(feature = "postgres")]
#[derive(Clone)]
pub(crate) struct Postgres {
    pub(crate) url: String,
    pub(crate) schema: String,
    /// How long a claim holds (`None`: the request timeouts + 30 s).
    pub(crate) lease: Option<Duration>,
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = crate::storage::postgres::redact_url(&self.url);
        f.debug_struct("Postgres")
            .field("url", &url)
            .field("schema", &self.schema)
            .field("lease", &self.lease)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: PathBuf::new(),
            cache_capacity: 64 * 1024 * 1024,
            channel_capacity: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            senders: DEFAULT_SENDERS,
            per_subscription: 64,
            per_host: 256,
            breaker_after: 5,
            durability: Durability::Crash,
            breaker_wait: Duration::from_secs(30),
            retry_schedule: default_retry_schedule(),
            allow_private_targets: false,
            allowed_networks: Vec::new(),
            dns_overrides: HashMap::new(),
            https_only: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_payload_bytes: 256 * 1024,
            shutdown_timeout: Duration::from_secs(5),
            deliver: true,
            lock_timeout: Duration::from_secs(2),
            max_subscriptions_per_tenant: 100,
            tenants_receive_app_events: false,
            idempotency_window: Duration::from_secs(24 * 3600),
            auto_disable_after: Some(Duration::from_secs(5 * 24 * 3600)),
            keep_delivered: Some(DEFAULT_RETENTION),
            keep_dead: Some(DEFAULT_RETENTION),
            attempts_kept: 20,
            shared_poll: Duration::from_secs(1),
            #[cfg(feature = "postgres")]
            postgres: None,
        }
    }
}

/// What a durability barrier ([`Bus::flush`](crate::Bus::flush),
/// [`Bus::publish_durable`](crate::Bus::publish_durable), a subscription
/// change) waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// sled's flush: the store's log is written to the operating system
    /// (on Linux sled ends with `sync_file_range`, not `fsync`), and sled's
    /// background flusher `fsync`s every 20 ms. What a barrier confirmed
    /// survives a crash or `kill -9` of the process; a power loss or kernel
    /// crash can lose the last ≤ 20 ms of it.
    #[default]
    Crash,
    /// As [`Crash`](Durability::Crash), and each barrier round also
    /// `fdatasync`s the store's log file and `fsync`s blob files written
    /// since the last round and their folder (one sync per round, shared by
    /// every waiter of the round): what a barrier confirmed survives a power
    /// loss too, on a disk that honours flushes.
    PowerLoss,
}

/// The default delays before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
/// 10 h (as Svix), so a delivery gets 8 attempts over about 27.6 hours.
pub fn default_retry_schedule() -> Vec<Duration> {
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    [
        5,
        5 * MIN,
        30 * MIN,
        2 * HOUR,
        5 * HOUR,
        10 * HOUR,
        10 * HOUR,
    ]
    .into_iter()
    .map(Duration::from_secs)
    .collect()
}

impl Config {
    /// The store's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// sled's page cache size in bytes.
    pub fn cache_capacity(&self) -> u64 {
        self.cache_capacity
    }
    /// How many published events may wait for the dispatcher.
    pub fn channel_capacity(&self) -> usize {
        self.channel_capacity
    }
    /// How many bytes of published payloads may wait for the dispatcher.
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }
    /// The number of sender threads.
    pub fn senders(&self) -> usize {
        self.senders
    }
    /// The most requests one subscription may have in flight.
    pub fn max_in_flight_per_subscription(&self) -> usize {
        self.per_subscription
    }
    /// The most requests one destination host may have in flight.
    pub fn max_in_flight_per_host(&self) -> usize {
        self.per_host
    }
    /// The most subscriptions one tenant may have.
    pub fn max_subscriptions_per_tenant(&self) -> usize {
        self.max_subscriptions_per_tenant
    }
    /// Whether tenants' subscriptions also receive app-wide events.
    pub fn tenants_receive_app_events(&self) -> bool {
        self.tenants_receive_app_events
    }
    /// How long an idempotency key is remembered.
    pub fn idempotency_window(&self) -> Duration {
        self.idempotency_window
    }
    /// After how long of failing continuously a subscription is disabled
    /// (`None`: never).
    pub fn auto_disable_after(&self) -> Option<Duration> {
        self.auto_disable_after
    }
    /// How long delivered deliveries (and their events and attempts) are
    /// kept after they finished (`None`: until purged by hand).
    pub fn keep_delivered_for(&self) -> Option<Duration> {
        self.keep_delivered
    }
    /// How long dead letters are kept after they died (`None`: until
    /// purged by hand).
    pub fn keep_dead_for(&self) -> Option<Duration> {
        self.keep_dead
    }
    /// How many attempts are kept per delivery (the newest).
    pub fn attempts_kept(&self) -> u32 {
        self.attempts_kept
    }
    /// What a durability barrier waits for.
    pub fn durability(&self) -> Durability {
        self.durability
    }
    /// After how many connection failures or timeouts in a row a
    /// subscription's circuit breaker opens, and for how long at first.
    pub fn circuit_breaker(&self) -> (u32, Duration) {
        (self.breaker_after, self.breaker_wait)
    }
    /// The delay before each retry.
    pub fn retry_schedule(&self) -> &[Duration] {
        &self.retry_schedule
    }
    /// Whether deliveries to loopback, private and other internal addresses
    /// are allowed.
    pub fn allow_private_targets(&self) -> bool {
        self.allow_private_targets
    }
    /// Internal networks that deliveries may go to all the same, in CIDR
    /// notation (an IPv4-mapped network such as `::ffff:10.0.0.0/104` is
    /// shown as the IPv4 network it names, `10.0.0.0/8`).
    pub fn allowed_networks(&self) -> Vec<String> {
        self.allowed_networks
            .iter()
            .map(ToString::to_string)
            .collect()
    }
    pub(crate) fn target_policy(&self) -> TargetPolicy {
        TargetPolicy {
            allow_private: self.allow_private_targets,
            allowed: self.allowed_networks.clone(),
        }
    }
    /// Whether subscription URLs must use `https`.
    pub fn https_only(&self) -> bool {
        self.https_only
    }
    /// The TCP connect timeout of one attempt.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// The total timeout of one attempt.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Whether the bus sends deliveries (see [`Builder::deliver`]).
    pub fn deliver(&self) -> bool {
        self.deliver
    }
    /// The largest accepted payload, in bytes of JSON.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }
    /// How long dropping the last [`Bus`](crate::Bus) handle waits for in-flight work.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }
}

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
/// | `senders` | 256 in flight (threads started on demand) |
/// | `max_in_flight_per_subscription` | 64 |
/// | `max_in_flight_per_host` | 256 |
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
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Builder {
    config: Config,
    networks: Vec<String>,
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
    /// ([`Error::InvalidConfig`] above that).
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

    /// The most requests in flight at once, which is also the most sender
    /// threads. Senders are blocking threads started on demand (with small
    /// stacks) and stopped after 30 s without work, so an idle bus holds
    /// none and a dead or slow receiver costs a sleeping thread, not
    /// throughput: deliveries per second are about this number divided by
    /// the receivers' latency. One subscription never holds all of them
    /// (see [`max_in_flight_per_subscription`](Self::max_in_flight_per_subscription)).
    /// At most 4096.
    ///
    /// Defaults to 256.
    pub fn senders(mut self, n: usize) -> Self {
        self.config.senders = n;
        self
    }

    /// The most requests one subscription may have in flight (it also never
    /// holds more than its fair share while others have due work).
    ///
    /// Defaults to 64.
    pub fn max_in_flight_per_subscription(mut self, n: usize) -> Self {
        self.config.per_subscription = n;
        self
    }

    /// The most subscriptions one tenant may have
    /// ([`NewSubscription::tenant`](crate::NewSubscription::tenant));
    /// creating one more fails with [`Error::TenantFull`]. Subscriptions
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
    /// Defaults to 256.
    pub fn max_in_flight_per_host(mut self, n: usize) -> Self {
        self.config.per_host = n;
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
    /// ([`Error::InvalidConfig`] otherwise). A zero `wait` never holds the
    /// backlog back: the breaker then only limits a failing subscription to
    /// one request at a time until one is answered.
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
    /// most 100 delays of at most 30 days each ([`Error::InvalidConfig`]
    /// otherwise); a zero delay retries at once.
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
    /// [`open`](Self::open) fail with [`Error::InvalidConfig`] on a value
    /// that is not a network.
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
    /// at most 1 hour ([`Error::InvalidConfig`] otherwise).
    ///
    /// Defaults to 5 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// The total time one delivery attempt may take, from resolving the host
    /// to reading the response. A receiver slower than this counts as a
    /// timeout and is retried later. More than zero and at most 1 hour
    /// ([`Error::InvalidConfig`] otherwise).
    ///
    /// Defaults to 15 s.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }

    /// The largest payload [`Bus::publish`](crate::Bus::publish) accepts, in bytes of serialized
    /// JSON; larger ones get [`Error::PayloadTooLarge`] and nothing is
    /// stored. At most 16 MiB.
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
    /// changes but starts no sender threads and sends nothing: for
    /// inspection and maintenance tools such as `examples/outbox.rs`.
    /// Pending deliveries are sent by the next bus opened with `true`.
    ///
    /// Defaults to `true`.
    pub fn deliver(mut self, on: bool) -> Self {
        self.config.deliver = on;
        self
    }

    /// How long [`open`](Self::open) waits for a store held by someone else
    /// before it fails with [`Error::StoreLocked`]. (sled releases a store's
    /// lock a moment after its last handle is dropped.) Any value is
    /// accepted: zero does not wait for a store held by someone else; one
    /// too large to represent (`Duration::MAX`) waits without limit.
    ///
    /// Defaults to 2 s.
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.config.lock_timeout = d;
        self
    }

    /// Checks the settings and returns them without opening anything.
    pub fn build(self) -> Result<Config> {
        let mut c = self.config;
        let bad = |m: String| Err(Error::InvalidConfig(m));
        for n in &self.networks {
            match n.parse::<IpNet>() {
                Ok(net) => c.allowed_networks.push(net),
                Err(e) => return bad(e),
            }
        }
        if let Some((h, _)) = c
            .dns_overrides
            .iter()
            .find(|(h, a)| h.is_empty() || a.is_empty())
        {
            return bad(format!(
                "dns_override for `{h}` needs a host name and at least one address"
            ));
        }
        #[cfg(feature = "postgres")]
        let shared = match &c.postgres {
            Some(p) => {
                if p.url.is_empty() {
                    return bad(
                        "postgres_schema or claim_lease without postgres(url): give the database URL"
                            .into(),
                    );
                }
                if let Some(l) = p.lease
                    && (l < Duration::from_secs(1) || l > Duration::from_secs(24 * 3600))
                {
                    return bad(format!("claim_lease must be 1 s to 1 day, got {l:?}"));
                }
                if let Some(l) = p.lease {
                    // A claim that runs out while its request may still be
                    // under way lets another instance send the delivery at
                    // the same time.
                    let longest = c.connect_timeout.saturating_add(c.request_timeout);
                    if l <= longest {
                        return bad(format!(
                            "claim_lease ({l:?}) must be longer than connect_timeout + request_timeout ({longest:?}): a claim that runs out while its request is still under way lets another instance send the same delivery at once; raise claim_lease or lower the timeouts"
                        ));
                    }
                }
                crate::storage::postgres::validate_schema(&p.schema)?;
                true
            }
            None => false,
        };
        #[cfg(not(feature = "postgres"))]
        let shared = false;
        if c.path.as_os_str().is_empty() && !shared {
            return bad("no store path: call Builder::path(dir)".into());
        }
        if c.senders == 0 || c.senders > MAX_SENDERS {
            return bad(format!(
                "senders must be 1..={MAX_SENDERS}, got {}",
                c.senders
            ));
        }
        if c.breaker_after == 0 || c.breaker_wait > MAX_TIMEOUT {
            return bad(format!(
                "circuit_breaker needs at least 1 failure and a wait of at most 1 hour, got {} and {:?}",
                c.breaker_after, c.breaker_wait
            ));
        }
        if c.idempotency_window < Duration::from_secs(1)
            || c.idempotency_window > Duration::from_secs(365 * 24 * 3600)
        {
            return bad(format!(
                "idempotency_window must be 1 s to 365 days, got {:?}",
                c.idempotency_window
            ));
        }
        if let Some(w) = c.auto_disable_after
            && (w < Duration::from_secs(1) || w > Duration::from_secs(365 * 24 * 3600))
        {
            return bad(format!(
                "auto_disable_after must be 1 s to 365 days (or None), got {w:?}"
            ));
        }
        for (name, w) in [
            ("keep_delivered_for", c.keep_delivered),
            ("keep_dead_for", c.keep_dead),
        ] {
            if let Some(w) = w
                && (w < Duration::from_secs(1) || w > MAX_RETENTION)
            {
                return bad(format!(
                    "{name} must be 1 s to 10 years (or None), got {w:?}"
                ));
            }
        }
        if !(1..=10_000).contains(&c.attempts_kept) {
            return bad(format!(
                "attempts_kept must be 1 to 10 000, got {}",
                c.attempts_kept
            ));
        }
        if c.shared_poll < Duration::from_millis(100) || c.shared_poll > MAX_TIMEOUT {
            return bad(format!(
                "poll_interval must be 100 ms to 1 hour, got {:?}",
                c.shared_poll
            ));
        }
        if c.max_subscriptions_per_tenant == 0 {
            return bad("max_subscriptions_per_tenant must be at least 1".into());
        }
        if c.per_subscription == 0 || c.per_host == 0 {
            return bad(
                "max_in_flight_per_subscription and max_in_flight_per_host must be at least 1"
                    .into(),
            );
        }
        if c.max_queued_bytes == 0 {
            return bad("max_queued_bytes must be at least 1".into());
        }
        if c.channel_capacity == 0 || c.channel_capacity > MAX_CHANNEL_CAPACITY {
            return bad(format!(
                "channel_capacity must be 1..={MAX_CHANNEL_CAPACITY}, got {}",
                c.channel_capacity
            ));
        }
        for (name, d) in [
            ("connect_timeout", c.connect_timeout),
            ("request_timeout", c.request_timeout),
        ] {
            // Zero would time every attempt out before it starts.
            if d.is_zero() || d > MAX_TIMEOUT {
                return bad(format!(
                    "{name} must be more than 0 and at most 1 hour, got {d:?}"
                ));
            }
        }
        if c.retry_schedule.len() > 100 {
            return bad(format!(
                "retry_schedule may have at most 100 entries, got {}",
                c.retry_schedule.len()
            ));
        }
        if let Some(d) = c
            .retry_schedule
            .iter()
            .find(|d| **d > Duration::from_secs(30 * 86_400))
        {
            return bad(format!(
                "retry_schedule delays may be at most 30 days, got {d:?}"
            ));
        }
        if c.max_payload_bytes == 0 || c.max_payload_bytes > PAYLOAD_HARD_LIMIT {
            return bad(format!(
                "max_payload_bytes must be 1..={PAYLOAD_HARD_LIMIT}, got {}",
                c.max_payload_bytes
            ));
        }
        if c.cache_capacity < 1024 * 1024 {
            return bad(format!(
                "cache_capacity must be at least 1 MiB, got {}",
                c.cache_capacity
            ));
        }
        Ok(c)
    }
}
