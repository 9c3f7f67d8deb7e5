//! Configuration: a [`Builder`] that produces an immutable [`Config`].
//!
//! # Rooms
//!
//! | file | job |
//! | --- | --- |
//! | `mod.rs` | [`Config`] (the settings, their defaults, read-only accessors), [`Durability`], [`default_retry_schedule`] |
//! | `checks.rs` | the checks of [`Builder::build`]: limits, networks, a store named |
//! | `builder.rs` | [`Builder`]: one setter per setting, with its default and limits |
//!
//! `checks.rs` and `builder.rs` use [`Config`] from here; this file uses
//! neither (it re-exports [`Builder`]).

mod builder;
mod checks;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use crate::catalog::{Catalog, EventType};
use crate::ssrf::{IpNet, TargetPolicy};

pub use builder::Builder;

/// What one request in flight is charged against
/// [`Builder::sender_memory_budget`](crate::Builder::sender_memory_budget),
/// with blocking senders, measured by `examples/inflight.rs`
/// (BENCHMARKS.md): its sender thread's touched stack (36 KiB), its
/// connection's ureq buffers (16 KiB in, 8 KiB out, see
/// `sender/threads.rs`) and the rest (the request's own allocations,
/// the allocator's share): 76 KiB of resident memory per request with
/// about 2000 held at once by a bus, rounded up.
pub(crate) const BYTES_PER_REQUEST: usize = 80 * 1024;
/// What one request in flight is charged on the task transport (the
/// default), measured by `examples/inflight.rs` (BENCHMARKS.md): its
/// task, its connection's hyper buffers (16 KiB read at most), what the
/// process keeps per connection: 26 KiB of peak resident memory per
/// request with 2000 held at once by a bus (21 KiB while held), rounded
/// up.
pub(crate) const BYTES_PER_TASK: usize = 32 * 1024;
/// The default memory budget of the requests in flight: 160 MiB, so 5120
/// requests as tasks, 2560 to one host (2000 at once measured at 65 MB
/// peak RSS for the whole process, the store included; 8000 due at once,
/// 5120 of them in flight, at 170 MB). With blocking senders: 2048, 1024
/// to one host (172 MB with 2000 at once).
const DEFAULT_SENDER_MEMORY_BUDGET: usize = 160 << 20;
/// The task transport's runtime threads by default: one per four cores,
/// at least one, at most four. The requests mostly wait; the engine
/// thread and the store need the other cores. On 2 cores one thread
/// measured 0.7-0.8x the CPU per delivery of two at 300 events/s with a
/// lower p99, and the same throughput at 0, 100 and 500 ms receivers
/// (`steady_rate` and `slow_receivers`, BENCHMARKS.md).
fn default_sender_threads() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 4).clamp(1, 4)
}

/// The most requests in flight (and sender threads) any setting allows.
pub(crate) const MAX_SENDERS: usize = 16_384;
/// The default of `Builder::commit_window`.
const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_micros(100);
/// How long finished deliveries are kept by default.
const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The settings of an open [`Bus`](crate::Bus). Made by [`Builder`]; read it back with
/// [`Bus::config`](crate::Bus::config).
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) path: PathBuf,
    pub(crate) cache_capacity: u64,
    pub(crate) channel_capacity: usize,
    pub(crate) max_queued_bytes: usize,
    /// The most requests in flight, as the budget and `senders_cap` make
    /// it (set by the checks at open).
    pub(crate) senders: usize,
    /// `Builder::senders`, if it was called.
    pub(crate) senders_cap: Option<usize>,
    pub(crate) sender_memory_budget: usize,
    /// `Builder::blocking_senders`: one ureq thread per request in flight
    /// instead of tasks.
    pub(crate) blocking_senders: bool,
    /// The task transport's runtime threads.
    pub(crate) sender_threads: usize,
    pub(crate) per_subscription: usize,
    /// The per-host cap in effect (set by the checks at open).
    pub(crate) per_host: usize,
    /// `Builder::max_in_flight_per_host`, if it was called.
    pub(crate) per_host_cap: Option<usize>,
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
    /// `Builder::commit_window`.
    pub(crate) commit_window: Duration,
    /// How often an instance of a shared store looks for work the others
    /// added (a backstop to their notifications).
    pub(crate) shared_poll: Duration,
    /// The event catalog, checked and compiled by `Builder::build`.
    pub(crate) catalog: Arc<Catalog>,
    /// Whether published payloads are checked against their type's schema.
    pub(crate) validate_payloads: bool,
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
            senders: DEFAULT_SENDER_MEMORY_BUDGET / BYTES_PER_TASK,
            senders_cap: None,
            sender_memory_budget: DEFAULT_SENDER_MEMORY_BUDGET,
            blocking_senders: false,
            sender_threads: default_sender_threads(),
            per_subscription: 64,
            per_host: DEFAULT_SENDER_MEMORY_BUDGET / BYTES_PER_TASK / 2,
            per_host_cap: None,
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
            commit_window: DEFAULT_COMMIT_WINDOW,
            shared_poll: Duration::from_secs(1),
            catalog: Arc::default(),
            validate_payloads: false,
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
    /// The most requests in flight at once (and sender threads): the
    /// smaller of [`Builder::senders`](crate::Builder::senders), if set,
    /// and what [`sender_memory_budget`](Self::sender_memory_budget) pays for.
    pub fn senders(&self) -> usize {
        self.senders
    }
    /// The memory budget of the requests in flight, in bytes.
    pub fn sender_memory_budget(&self) -> usize {
        self.sender_memory_budget
    }
    /// How long a claim on a delivery holds (a PostgreSQL store):
    /// [`Builder::claim_lease`](crate::Builder::claim_lease), by default the
    /// connect and request timeouts plus 30 s. `None` for a store this
    /// instance writes alone.
    pub(crate) fn claim_lease(&self) -> Option<Duration> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.postgres {
            return Some(pg.lease.unwrap_or_else(|| {
                self.request_timeout
                    .saturating_add(self.connect_timeout)
                    .saturating_add(Duration::from_secs(30))
            }));
        }
        None
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
    /// The app's event catalog ([`Builder::event_type`]), in registration
    /// order; empty if it registered none.
    pub fn event_types(&self) -> &[EventType] {
        self.catalog.types()
    }
    /// Whether published payloads are checked against their event type's
    /// schema (see [`Builder::validate_payloads`]).
    pub fn validate_payloads(&self) -> bool {
        self.validate_payloads
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
