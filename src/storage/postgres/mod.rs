//! The shared backend of the storage seam: PostgreSQL (feature `postgres`),
//! for apps with several instances on one database.
//!
//! # Schema
//!
//! Everything lives in one schema (default `hookbus`; one per app or test),
//! created and migrated on open under a transaction-scoped advisory lock,
//! so instances that start at once migrate once. Records are the same
//! codec bytes as in sled ([`crate::codec`]); the columns beside them are
//! what queries sort and filter on.
//!
//! | table | rows |
//! | --- | --- |
//! | `migrations` | applied schema versions |
//! | `subscriptions` | id, record, `seq` (the last sequence number given) |
//! | `subscription_events` | (event name or `*`, subscription id): the fan-out index |
//! | `events` | id, record |
//! | `deliveries` | id, subscription, event, state, `at` (due if pending, else finished, ms), record, `claim`, `claimed_until` |
//! | `attempts` | (delivery, number), record |
//! | `idempotency` | key, event, `at` |
//! | `quarantine` | key, raw bytes, reason |
//!
//! # Several instances
//!
//! Every instance runs its own dispatcher and senders. Due deliveries are
//! claimed ([`Reader::claim`]): `UPDATE … WHERE id IN (SELECT … FOR UPDATE
//! SKIP LOCKED LIMIT n)` sets the instance's token and a lease, and commits
//! at once; no transaction is open while a request is. A result is written
//! only if the delivery is not claimed by another instance whose lease is
//! running, so a stale result (a stalled or partitioned instance whose
//! lease ran out and whose delivery was claimed again) does not overwrite
//! newer state. Instances see each other's new deliveries by polling
//! ([`Reader::pending_subscriptions`]) every second.
//!
//! Counters are counted (`stats`), and an event's references are its
//! deliveries (an event row is deleted only when none refers to it), so
//! neither is a value one instance could overwrite with a stale one.

use std::sync::{Arc, Mutex};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Row};

use super::{
    Damaged, IndexEntry, Iter, PendingSubscriptions, Reader, Subscribers, SubscriptionRecord,
    Writer,
};
use crate::codec;
use crate::delivery::{Delivery, DeliveryState};
use crate::error::{Error, Result, StoreError};
use crate::event::ALL_EVENTS;
use crate::health::{HealthDelta, HealthRecord};
use crate::ids::{DeliveryId, EventId, NoticeId, SubscriptionId, Timestamp};
use crate::notice::Notice;
use crate::policy::RateLimit;
use crate::record::{Attempt, Event, OutboxStats};

/// The `NOTIFY` channel of a schema: short and fixed, whatever the
/// schema's length (FNV-1a of its name).
fn channel(schema: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("hookbus_{h:016x}")
}

/// Every statement of hookbus's own connections ends after this long.
const STATEMENT_TIMEOUT_MS: u64 = 60_000;
/// hookbus's own connections wait at most this long for a lock.
const LOCK_TIMEOUT_MS: u64 = 15_000;
/// The most connections the readers of one store hold open at once.
const MAX_READ_CONNECTIONS: usize = 16;
/// How long a read waits for a connection when all are in use.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects to `url` with hookbus's timeouts, so a stuck statement, lock
/// or network ends with an error instead of stalling the engine: a
/// statement and a lock timeout (unless the URL's `options` set their
/// own), a 10 s connect timeout (unless the URL sets one), TCP keepalives
/// and a TCP user timeout (a server that stops answering is noticed in
/// about a minute). A pooler such as PgBouncer must let the `options`
/// startup parameter through (`ignore_startup_parameters = options` drops
/// it, and with it the two server-side timeouts).
fn connect(url: &str) -> Result<Client> {
    let mut config: postgres::Config = url.parse()?;
    let mut options = config.get_options().unwrap_or("").to_owned();
    for (name, ms) in [
        ("statement_timeout", STATEMENT_TIMEOUT_MS),
        ("lock_timeout", LOCK_TIMEOUT_MS),
    ] {
        if !options.contains(name) {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={ms}"));
        }
    }
    config.options(&options);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(30))
        .tcp_user_timeout(std::time::Duration::from_secs(60));
    Ok(config.connect(NoTls)?)
}

/// A connection with its prepared statements: each distinct statement is
/// parsed once per connection and then only bound and run, so a query
/// costs one round trip to the server, not two.
struct Conn {
    client: Client,
    stmts: Stmts,
}

/// Prepared statements of one connection, by their text (cleared when it
/// holds [`Stmts::MAX`]).
#[derive(Default)]
struct Stmts(std::collections::HashMap<String, postgres::Statement>);

impl Stmts {
    const MAX: usize = 256;

    fn get(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
    ) -> Result<postgres::Statement> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql)?;
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

type Params<'a> = &'a [&'a (dyn postgres::types::ToSql + Sync)];

impl Conn {
    fn open(url: &str) -> Result<Conn> {
        Ok(Conn {
            client: connect(url)?,
            stmts: Stmts::default(),
        })
    }

    /// A connection for the writer: its commits are asynchronous (a
    /// round is visible at once; `flush` makes every commit so far
    /// durable with one synchronous commit).
    fn writer(url: &str) -> Result<Conn> {
        let mut c = Conn::open(url)?;
        c.client.batch_execute("SET synchronous_commit TO off")?;
        Ok(c)
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn transaction(&mut self) -> Result<Tx<'_>> {
        Ok(Tx {
            tx: self.client.transaction()?,
            stmts: &mut self.stmts,
        })
    }
}

/// Queries through a statement cache: a connection or a transaction on
/// it, with the connection's prepared statements.
trait Prepared {
    type Client: postgres::GenericClient;

    fn parts(&mut self) -> (&mut Self::Client, &mut Stmts);

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let (c, stmts) = self.parts();
        let st = stmts.get(c, sql)?;
        Ok(postgres::GenericClient::query(c, &st, params)?)
    }

    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row> {
        let (c, stmts) = self.parts();
        let st = stmts.get(c, sql)?;
        Ok(postgres::GenericClient::query_one(c, &st, params)?)
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64> {
        let (c, stmts) = self.parts();
        let st = stmts.get(c, sql)?;
        Ok(postgres::GenericClient::execute(c, &st, params)?)
    }
}

impl Prepared for Conn {
    type Client = Client;

    fn parts(&mut self) -> (&mut Client, &mut Stmts) {
        (&mut self.client, &mut self.stmts)
    }
}

impl<'a> Prepared for Tx<'a> {
    type Client = postgres::Transaction<'a>;

    fn parts(&mut self) -> (&mut postgres::Transaction<'a>, &mut Stmts) {
        (&mut self.tx, self.stmts)
    }
}

/// A transaction on a [`Conn`], using its prepared statements.
struct Tx<'a> {
    tx: postgres::Transaction<'a>,
    stmts: &'a mut Stmts,
}

impl Tx<'_> {
    fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
}

/// Listens for the notifications instances send when they commit new
/// deliveries, on a connection and thread of its own, and calls
/// `poke(true)` for each (the engine then looks at once instead of at its
/// next poll); `poke(false)` is called every second to ask whether to go
/// on. Ends when `poke` says `false` or the connection is lost (polling
/// still finds the work then).
pub(crate) fn spawn_listener(
    url: &str,
    schema: &str,
    me: String,
    poke: impl Fn(bool) -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    let mut client = connect(url)?;
    client.batch_execute(&format!("LISTEN {}", channel(schema)))?;
    std::thread::Builder::new()
        .name("hookbus-pg-listen".into())
        .spawn(move || {
            loop {
                let mut notifications = client.notifications();
                let next = notifications
                    .timeout_iter(LISTEN_TICK)
                    .next();
                let go_on = match next {
                    Ok(Some(first)) => {
                        // A burst of commits is one poke: what else has
                        // arrived meanwhile is taken with it. This
                        // instance's own commits (the payload is its claim
                        // token) tell it nothing new.
                        let mut news = first.payload() != me;
                        let mut more = notifications.iter();
                        while let Ok(Some(n)) = more.next() {
                            news |= n.payload() != me;
                        }
                        poke(news)
                    }
                    Ok(None) => poke(false),
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL notifications lost; polling goes on");
                        false
                    }
                };
                if !go_on {
                    break;
                }
            }
        })
        .map_err(|source| Error::Spawn {
            name: "hookbus-pg-listen".into(),
            source,
        })
}

/// How often the listener asks whether to go on when nothing arrives (so
/// a shutdown that joins it waits at most this long).
const LISTEN_TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// The database's clock in ms, for claims: one clock for every instance.
const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Rows fetched per page by listings.
const PAGE: i64 = 512;
/// The schema version this build migrates to.
const SCHEMA_VERSION: i32 = 3;

/// Checks a schema name: lowercase letters, digits and `_`, starting with a
/// letter or `_`, at most 63 bytes (it is spliced into SQL, so nothing
/// else is allowed).
pub(crate) fn validate_schema(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "postgres schema `{}` must be 1 to 63 lowercase letters, digits and `_`, not starting with a digit",
            crate::util::clip(name)
        )))
    }
}

/// The name of a schema's subscription lock (see
/// `Writer::lock_subscriptions`), hashed by the server into its key.
fn subscription_lock(schema: &str) -> String {
    format!("hookbus.subscriptions:{schema}")
}

/// The first half of an idempotency key's lock (the key's hash is the
/// second): the same in the engine (a session-level lock) and in
/// `publish_in` (a transaction-level one), so the two serialise.
fn key_lock(schema: &str) -> String {
    format!("hookbus.keys:{schema}")
}

fn store_error(m: impl Into<String>) -> Error {
    Error::Store(StoreError::message(m))
}

fn corrupt(what: &str, key: &[u8], reason: impl std::fmt::Display) -> Error {
    let mut k = what.as_bytes()[..1].to_vec();
    k.extend_from_slice(key);
    Error::Corrupt {
        key: hex::encode(k),
        reason: reason.to_string(),
    }
}

fn decode<T: codec::Record>(what: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| corrupt(what, key, e))
}

fn encode<T: codec::Record>(value: &T) -> Vec<u8> {
    codec::encode(value).expect("hookbus records always encode")
}

/// An event's record as this store keeps it: format 3 (which every build
/// that knows this schema reads, also an older one in a rolling deploy);
/// its tenant goes in the `tenant` and `scoped` columns.
fn encode_event(e: &Event) -> Vec<u8> {
    codec::encode_as(3, &super::EventV3::of(e)).expect("hookbus records always encode")
}

/// An event read from its record and its `tenant` and `scoped` columns
/// (`scoped` false: written by a build that did not keep the tenant).
fn event_of(id: &[u8], record: &[u8], tenant: Option<String>, scoped: bool) -> Result<Event> {
    let mut e: Event = decode("e", id, record)?;
    if scoped {
        e.tenant = tenant;
        e.scope_unknown = false;
    }
    Ok(e)
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn state_code(s: DeliveryState) -> i16 {
    match s {
        DeliveryState::Pending => 0,
        DeliveryState::Delivered => 1,
        DeliveryState::Dead => 2,
    }
}

fn id_of<T>(row: &Row, col: &str, parse: impl Fn(&[u8]) -> Option<T>) -> Result<T> {
    let b: Vec<u8> = row.try_get(col)?;
    parse(&b).ok_or_else(|| store_error(format!("malformed id in column {col}")))
}

fn entry_of(row: &Row) -> Result<IndexEntry> {
    Ok(IndexEntry {
        at: unms(row.try_get("at")?),
        delivery: id_of(row, "id", DeliveryId::from_slice)?,
        subscription: id_of(row, "sub", SubscriptionId::from_slice)?,
    })
}

/// A page of delivery ids, each its own cursor.
fn id_page(rows: &[Row]) -> Result<Vec<(Result<DeliveryId>, Vec<u8>)>> {
    rows.iter()
        .map(|row| {
            let id = id_of(row, "id", DeliveryId::from_slice)?;
            Ok((Ok(id), id.to_bytes().to_vec()))
        })
        .collect()
}

/// A page of index entries, each its own cursor.
fn entry_page(rows: &[Row]) -> Result<Vec<(Result<IndexEntry>, IndexEntry)>> {
    rows.iter()
        .map(|row| {
            let e = entry_of(row)?;
            Ok((Ok(e), e))
        })
        .collect()
}

/// Connections shared by the readers of one store (the handles', or the
/// engine's: each has its own): at most
/// [`MAX_READ_CONNECTIONS`] open at once (a read waits up to
/// [`POOL_WAIT`] for one), up to 8 kept idle.
struct Pool {
    url: String,
    schema: String,
    idle: Mutex<Vec<Conn>>,
    /// Connections handed out now.
    busy: Mutex<usize>,
    freed: std::sync::Condvar,
    /// This instance's claim token.
    token: [u8; 16],
    /// How long a claim holds, in ms.
    lease_ms: u64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("Pool")
            .field("schema", &self.schema)
            .field("token", &hex::encode(self.token))
            .finish()
    }
}

impl Pool {
    /// Runs `f` with a connection (one from the pool, or a new one); a
    /// connection that failed is not given back.
    fn with<R>(&self, f: impl FnOnce(&mut Conn) -> Result<R>) -> Result<R> {
        self.acquire()?;
        // Given back however `f` ends (a panic too).
        struct Slot<'a>(&'a Pool);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                self.0.freed.notify_one();
            }
        }
        let _slot = Slot(self);
        self.with_slot(f)
    }

    /// Takes one of the [`MAX_READ_CONNECTIONS`] slots, waiting up to
    /// [`POOL_WAIT`].
    fn acquire(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= MAX_READ_CONNECTIONS {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(store_error(format!(
                    "all {MAX_READ_CONNECTIONS} PostgreSQL read connections stayed busy for {POOL_WAIT:?}"
                )));
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy += 1;
        Ok(())
    }

    fn with_slot<R>(&self, f: impl FnOnce(&mut Conn) -> Result<R>) -> Result<R> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut client = match taken {
            Some(c) if !c.is_closed() => c,
            _ => Conn::open(&self.url)?,
        };
        let r = f(&mut client);
        if r.is_ok() && !client.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < 8 {
                idle.push(client);
            }
        }
        r
    }

    fn t(&self, table: &str) -> String {
        format!("\"{}\".{table}", self.schema)
    }
}

/// Opens the store in `schema` of the database at `url`, creating or
/// migrating the schema. `lease` is how long a claim holds.
pub(crate) fn open(
    url: &str,
    schema: &str,
    lease: std::time::Duration,
) -> Result<(PgReader, PgWriter)> {
    validate_schema(schema)?;
    let mut client = connect(url).map_err(|e| {
        store_error(format!(
            "cannot connect to PostgreSQL ({}): {e}",
            redact_url(url)
        ))
    })?;
    migrate(&mut client, schema)?;
    client.batch_execute("SET synchronous_commit TO off")?;
    let mut token = [0u8; 16];
    getrandom::fill(&mut token)
        .map_err(|e| store_error(format!("no randomness for a claim token: {e}")))?;
    let pool = || {
        Arc::new(Pool {
            url: url.to_owned(),
            schema: schema.to_owned(),
            idle: Mutex::new(Vec::new()),
            busy: Mutex::new(0),
            freed: std::sync::Condvar::new(),
            token,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        })
    };
    // The handles' reads (listings, the REST adapter, the CLI) and the
    // engine's (claims, fan-out, retention) have pools of their own, so
    // busy handles never make the dispatcher wait for a connection.
    let reader = PgReader {
        pool: pool(),
        claimed: Arc::default(),
    };
    let writer = PgWriter {
        reader: PgReader {
            pool: pool(),
            claimed: Arc::default(),
        },
        client: Conn {
            client,
            stmts: Stmts::default(),
        },
        ops: Vec::new(),
        unflushed: false,
        holding_locks: false,
    };
    Ok((reader, writer))
}

/// The connection string without secrets, for messages and `Debug`:
/// user, host, port and database of a URL (no password, no query, where
/// one may be given too); a `key=value` string is not shown at all.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}@{}{}{}",
            u.scheme(),
            u.username(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "[a key=value connection string, not shown]".into(),
    }
}

/// Creates the schema and applies missing migrations, once even when
/// several instances start at once (a transaction-scoped advisory lock
/// keyed by the schema name).
fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    let s = format!("\"{schema}\"");
    // Already at this version: nothing to create, so opening needs no
    // CREATE privilege (an app may run with a role that only reads and
    // writes the tables).
    if let Ok(row) = client.query_one(
        &format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"),
        &[],
    ) && row.try_get::<_, i32>(0).ok() == Some(SCHEMA_VERSION)
    {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('hookbus migrate ' || $1))",
        &[&schema],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"),
            &[],
        )?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(store_error(format!(
            "the PostgreSQL schema `{schema}` is at version {current}; this hookbus knows up to {SCHEMA_VERSION}"
        )));
    }
    if current < 1 {
        tx.batch_execute(&format!(
            "CREATE TABLE {s}.subscriptions (
                 id bytea PRIMARY KEY,
                 record bytea NOT NULL,
                 seq bigint NOT NULL DEFAULT 0);
             CREATE TABLE {s}.subscription_events (
                 event text NOT NULL,
                 sub bytea NOT NULL,
                 PRIMARY KEY (event, sub));
             CREATE TABLE {s}.events (
                 id bytea PRIMARY KEY,
                 record bytea NOT NULL);
             CREATE TABLE {s}.deliveries (
                 id bytea PRIMARY KEY,
                 sub bytea NOT NULL,
                 event_id bytea NOT NULL,
                 state smallint NOT NULL,
                 at bigint NOT NULL,
                 record bytea NOT NULL,
                 claim bytea,
                 claimed_until bigint NOT NULL DEFAULT 0);
             CREATE INDEX deliveries_due ON {s}.deliveries (sub, at, id) WHERE state = 0;
             CREATE INDEX deliveries_state ON {s}.deliveries (state, at, id);
             CREATE INDEX deliveries_by_sub ON {s}.deliveries (sub, id);
             CREATE INDEX deliveries_event ON {s}.deliveries (event_id);
             CREATE TABLE {s}.attempts (
                 delivery bytea NOT NULL,
                 n integer NOT NULL,
                 record bytea NOT NULL,
                 PRIMARY KEY (delivery, n));
             CREATE TABLE {s}.idempotency (
                 key bytea PRIMARY KEY,
                 event bytea NOT NULL,
                 at bigint NOT NULL);
             CREATE INDEX idempotency_at ON {s}.idempotency (at, key);
             CREATE TABLE {s}.quarantine (
                 key bytea PRIMARY KEY,
                 value bytea NOT NULL,
                 reason text NOT NULL);
             INSERT INTO {s}.migrations (version) VALUES (1);"
        ))?;
    }
    if current < 2 {
        tx.batch_execute(&format!(
            "CREATE TABLE {s}.health (
                 sub bytea PRIMARY KEY,
                 record bytea NOT NULL);
             CREATE TABLE {s}.notices (
                 id bytea PRIMARY KEY,
                 record bytea NOT NULL);
             INSERT INTO {s}.migrations (version) VALUES (2);"
        ))?;
    }
    if current < 3 {
        // A subscription's flow shared by every instance: its rate
        // limit's tokens and a receiver's "slow down" pause.
        tx.batch_execute(&format!(
            "CREATE TABLE {s}.flow (
                 sub bytea PRIMARY KEY,
                 tokens float8 NOT NULL,
                 at bigint NOT NULL,
                 paused_until bigint NOT NULL DEFAULT 0);
             ALTER TABLE {s}.events
                 ADD COLUMN tenant text,
                 ADD COLUMN scoped boolean NOT NULL DEFAULT false;
             INSERT INTO {s}.migrations (version) VALUES (3);"
        ))?;
    }
    tx.commit()?;
    Ok(())
}

/// Reads of the PostgreSQL store, through a small connection pool.
///
/// A clone shares the pool but not the claim cache: only the reader that
/// claims (the engine's) reads the records that came with its claims, so
/// a handle's read never takes one from it nor sees one as it was claimed.
#[derive(Debug)]
pub(crate) struct PgReader {
    pool: Arc<Pool>,
    /// What the last claim returned (the claimed deliveries and their
    /// events), so the dispatcher's reads right after it need no query.
    claimed: Arc<Mutex<Claimed>>,
}

impl Clone for PgReader {
    fn clone(&self) -> Self {
        PgReader {
            pool: self.pool.clone(),
            claimed: Arc::default(),
        }
    }
}

/// Records that came with a claim; each is handed out once.
#[derive(Debug, Default)]
struct Claimed {
    deliveries: std::collections::HashMap<DeliveryId, Delivery>,
    events: std::collections::HashMap<EventId, Event>,
    /// Claimed deliveries handed out (to be sent), kept for the one read
    /// of their outcome: while this instance's claim stands no other
    /// instance changes them, and this instance's own writes drop them
    /// here (`PgWriter::forget`). One older than the claim's lease is not
    /// used (the claim may have passed to another instance). At most
    /// [`Claimed::MAX_SENT`].
    sent: std::collections::HashMap<DeliveryId, (Delivery, std::time::Instant)>,
}

impl Claimed {
    const MAX_SENT: usize = 65_536;
}

/// Reads the page after a cursor: the rows, each with its own cursor; a
/// row whose record does not decode is an `Err` item, and the listing
/// goes on after it.
type PageFn<T, C> = Box<dyn FnMut(Option<&C>) -> Result<Vec<(Result<T>, C)>> + Send>;

/// A listing read a page at a time (keyset paging): `next_page` gets the
/// last row's cursor and returns the next rows.
struct Paged<T, C> {
    page: std::vec::IntoIter<Result<T>>,
    cursor: Option<C>,
    done: bool,
    next_page: PageFn<T, C>,
}

impl<T: Send + 'static, C: Send + 'static> Paged<T, C> {
    fn boxed(
        next_page: impl FnMut(Option<&C>) -> Result<Vec<(Result<T>, C)>> + Send + 'static,
    ) -> Iter<T> {
        Box::new(Paged {
            page: Vec::new().into_iter(),
            cursor: None,
            done: false,
            next_page: Box::new(next_page),
        })
    }
}

impl<T, C> Iterator for Paged<T, C> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if let Some(x) = self.page.next() {
            return Some(x);
        }
        if self.done {
            return None;
        }
        match (self.next_page)(self.cursor.as_ref()) {
            Ok(rows) => {
                if (rows.len() as i64) < PAGE {
                    self.done = true;
                }
                let mut items = Vec::with_capacity(rows.len());
                for (item, cursor) in rows {
                    self.cursor = Some(cursor);
                    items.push(item);
                }
                self.page = items.into_iter();
                self.page.next()
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl PgReader {
    /// This instance's claim token in hex: the payload of its
    /// notifications, so its own listener can tell them apart.
    pub(crate) fn token_hex(&self) -> String {
        hex::encode(self.pool.token)
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, Claimed> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps what a claim returned (the previous claim's leftovers go) and
    /// fetches the events of the claimed deliveries in one query.
    fn keep_claimed(&self, rows: &[Row]) -> Result<()> {
        let mut deliveries = std::collections::HashMap::new();
        let mut events: Vec<Vec<u8>> = Vec::new();
        for row in rows {
            let d = self.delivery_of(row)?;
            events.push(d.event_id.to_bytes().to_vec());
            deliveries.insert(d.id, d);
        }
        events.sort_unstable();
        events.dedup();
        let mut by_id = std::collections::HashMap::new();
        if !events.is_empty() {
            for row in self.query(
                &format!(
                    "SELECT id, record, tenant, scoped FROM {} WHERE id = ANY($1)",
                    self.t("events")
                ),
                &[&events],
            )? {
                let id: Vec<u8> = row.try_get(0)?;
                // A damaged one is read (and reported) the normal way.
                if let Ok(e) = event_of(
                    &id,
                    &row.try_get::<_, Vec<u8>>(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ) {
                    by_id.insert(e.id, e);
                }
            }
        }
        let mut claimed = self.claimed();
        claimed.deliveries = deliveries;
        claimed.events = by_id;
        Ok(())
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.pool.with(|c| c.query(sql, params))
    }

    fn t(&self, table: &str) -> String {
        self.pool.t(table)
    }

    fn delivery_of(&self, row: &Row) -> Result<Delivery> {
        let id: Vec<u8> = row.try_get("id")?;
        let record: Vec<u8> = row.try_get("record")?;
        decode("d", &id, &record)
    }
}

impl Reader for PgReader {
    fn stats(&self) -> Result<OutboxStats> {
        let mut stats = OutboxStats::default();
        for row in self.query(
            &format!(
                "SELECT state, count(*) FROM {} GROUP BY state",
                self.t("deliveries")
            ),
            &[],
        )? {
            let state: i16 = row.try_get(0)?;
            let n = unms(row.try_get(1)?);
            match state {
                0 => stats.pending = n,
                1 => stats.delivered = n,
                _ => stats.dead += n,
            }
        }
        let q: i64 = self
            .query(
                &format!("SELECT count(*) FROM {}", self.t("quarantine")),
                &[],
            )?
            .first()
            .map_or(Ok(0), |r| r.try_get(0))?;
        stats.quarantined = unms(q);
        Ok(stats)
    }

    fn subscription(&self, id: SubscriptionId) -> Result<Option<SubscriptionRecord>> {
        let rows = self.query(
            &format!(
                "SELECT record FROM {} WHERE id = $1",
                self.t("subscriptions")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        rows.first()
            .map(|r| decode("s", &id.to_bytes(), &r.try_get::<_, Vec<u8>>(0)?))
            .transpose()
    }

    fn subscriptions(&self) -> Iter<SubscriptionRecord> {
        let r = self.clone();
        Paged::boxed(move |after: Option<&Vec<u8>>| {
            let after = after.cloned().unwrap_or_default();
            let rows = r.query(
                &format!(
                    "SELECT id, record FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                    r.t("subscriptions")
                ),
                &[&after, &PAGE],
            )?;
            rows.iter()
                .map(|row| {
                    let id: Vec<u8> = row.try_get(0)?;
                    let rec = decode("s", &id, &row.try_get::<_, Vec<u8>>(1)?);
                    Ok((rec, id))
                })
                .collect()
        })
    }

    fn subscribers_of(&self, event: &str) -> Result<Subscribers> {
        let rows = self.query(
            &format!(
                "SELECT DISTINCT sub FROM {} WHERE event = $1 OR event = $2 ORDER BY sub",
                self.t("subscription_events")
            ),
            &[&event, &ALL_EVENTS],
        )?;
        let mut out = Subscribers::default();
        for row in rows {
            out.ids
                .push(id_of(&row, "sub", SubscriptionId::from_slice)?);
        }
        Ok(out)
    }

    fn event(&self, id: EventId) -> Result<Option<Event>> {
        let cached = self.claimed().events.remove(&id);
        if let Some(e) = cached {
            return Ok(Some(e));
        }
        let rows = self.query(
            &format!(
                "SELECT record, tenant, scoped FROM {} WHERE id = $1",
                self.t("events")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        rows.first()
            .map(|r| {
                event_of(
                    &id.to_bytes(),
                    &r.try_get::<_, Vec<u8>>(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                )
            })
            .transpose()
    }

    fn event_refs(&self, id: EventId) -> Result<Option<u32>> {
        let n: i64 = self
            .query(
                &format!(
                    "SELECT count(*) FROM {} WHERE event_id = $1",
                    self.t("deliveries")
                ),
                &[&&id.to_bytes()[..]],
            )?
            .first()
            .map_or(Ok(0), |r| r.try_get(0))?;
        Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
    }

    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        {
            let mut claimed = self.claimed();
            if let Some(d) = claimed.deliveries.remove(&id) {
                if claimed.sent.len() >= Claimed::MAX_SENT {
                    claimed.sent.clear();
                }
                claimed
                    .sent
                    .insert(id, (d.clone(), std::time::Instant::now()));
                return Ok(Some(d));
            }
            if let Some((d, at)) = claimed.sent.remove(&id)
                && at.elapsed().as_millis() < u128::from(self.pool.lease_ms)
            {
                return Ok(Some(d));
            }
        }
        let rows = self.query(
            &format!(
                "SELECT id, record FROM {} WHERE id = $1",
                self.t("deliveries")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        rows.first().map(|r| self.delivery_of(r)).transpose()
    }

    fn deliveries(&self, after: Option<DeliveryId>) -> Iter<Delivery> {
        let r = self.clone();
        let start = after.map(|a| a.to_bytes().to_vec()).unwrap_or_default();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let after = cursor.cloned().unwrap_or_else(|| start.clone());
            let rows = r.query(
                &format!(
                    "SELECT id, record FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                    r.t("deliveries")
                ),
                &[&after, &PAGE],
            )?;
            rows.iter()
                .map(|row| Ok((r.delivery_of(row), row.try_get::<_, Vec<u8>>(0)?)))
                .collect()
        })
    }

    fn deliveries_of(&self, sub: SubscriptionId, newest_first: bool) -> Iter<DeliveryId> {
        let r = self.clone();
        let s = sub.to_bytes().to_vec();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let (cmp, order) = if newest_first {
                ("<", "DESC")
            } else {
                (">", "ASC")
            };
            let first = if newest_first { vec![0xff; 17] } else { vec![] };
            let after = cursor.cloned().unwrap_or(first);
            let rows = r.query(
                &format!(
                    "SELECT id FROM {} WHERE sub = $1 AND id {cmp} $2 ORDER BY id {order} LIMIT $3",
                    r.t("deliveries")
                ),
                &[&s, &after, &PAGE],
            )?;
            id_page(&rows)
        })
    }

    fn deliveries_of_from(&self, sub: SubscriptionId, from: DeliveryId) -> Iter<DeliveryId> {
        let r = self.clone();
        let s = sub.to_bytes().to_vec();
        let start = from.to_bytes().to_vec();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let (cmp, after) = match cursor {
                Some(c) => (">", c.clone()),
                None => (">=", start.clone()),
            };
            let rows = r.query(
                &format!(
                    "SELECT id FROM {} WHERE sub = $1 AND id {cmp} $2 ORDER BY id LIMIT $3",
                    r.t("deliveries")
                ),
                &[&s, &after, &PAGE],
            )?;
            id_page(&rows)
        })
    }

    fn index(&self, state: DeliveryState, after: Option<IndexEntry>) -> Iter<IndexEntry> {
        let r = self.clone();
        let code = state_code(state);
        Paged::boxed(move |cursor: Option<&IndexEntry>| {
            let c = cursor.copied().or(after);
            let rows = match (state, c) {
                // Pending: by subscription, then due time (as sled's index).
                (DeliveryState::Pending, Some(c)) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = 0 AND (sub, at, id) > ($1, $2, $3)
                         ORDER BY sub, at, id LIMIT $4",
                        r.t("deliveries")
                    ),
                    &[
                        &&c.subscription.to_bytes()[..],
                        &ms(c.at),
                        &&c.delivery.to_bytes()[..],
                        &PAGE,
                    ],
                )?,
                (DeliveryState::Pending, None) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = 0 ORDER BY sub, at, id LIMIT $1",
                        r.t("deliveries")
                    ),
                    &[&PAGE],
                )?,
                (_, Some(c)) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = $1 AND (at, id) > ($2, $3)
                         ORDER BY at, id LIMIT $4",
                        r.t("deliveries")
                    ),
                    &[&code, &ms(c.at), &&c.delivery.to_bytes()[..], &PAGE],
                )?,
                (_, None) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE state = $1 ORDER BY at, id LIMIT $2",
                        r.t("deliveries")
                    ),
                    &[&code, &PAGE],
                )?,
            };
            entry_page(&rows)
        })
    }

    fn due(&self, sub: SubscriptionId) -> Iter<IndexEntry> {
        let r = self.clone();
        let s = sub.to_bytes().to_vec();
        Paged::boxed(move |cursor: Option<&IndexEntry>| {
            let rows = match cursor {
                Some(c) => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE sub = $1 AND state = 0 AND (at, id) > ($2, $3)
                         ORDER BY at, id LIMIT $4",
                        r.t("deliveries")
                    ),
                    &[&s, &ms(c.at), &&c.delivery.to_bytes()[..], &PAGE],
                )?,
                None => r.query(
                    &format!(
                        "SELECT id, sub, at FROM {} WHERE sub = $1 AND state = 0 ORDER BY at, id LIMIT $2",
                        r.t("deliveries")
                    ),
                    &[&s, &PAGE],
                )?,
            };
            entry_page(&rows)
        })
    }

    fn pending_subscriptions(&self) -> Result<PendingSubscriptions> {
        let rows = self.query(
            &format!(
                "SELECT sub, min(at) AS at FROM {} WHERE state = 0 GROUP BY sub",
                self.t("deliveries")
            ),
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push((
                id_of(&row, "sub", SubscriptionId::from_slice)?,
                unms(row.try_get("at")?),
            ));
        }
        Ok((out, Vec::new()))
    }

    fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>> {
        let rows = self.query(
            &format!(
                "SELECT n, record FROM {} WHERE delivery = $1 ORDER BY n",
                self.t("attempts")
            ),
            &[&&id.to_bytes()[..]],
        )?;
        rows.iter()
            .map(|r| decode("a", &id.to_bytes(), &r.try_get::<_, Vec<u8>>(1)?))
            .collect()
    }

    fn idempotency_key(&self, key: &str) -> Result<Option<(EventId, u64)>> {
        let rows = self.query(
            &format!(
                "SELECT event, at FROM {} WHERE key = $1",
                self.t("idempotency")
            ),
            &[&key.as_bytes()],
        )?;
        rows.first()
            .map(|r| {
                Ok((
                    id_of(r, "event", EventId::from_slice)?,
                    unms(r.try_get("at")?),
                ))
            })
            .transpose()
    }

    fn idempotency_keys_before(&self, before: u64) -> Iter<(String, u64)> {
        let r = self.clone();
        Paged::boxed(move |cursor: Option<&(i64, Vec<u8>)>| {
            let (at, key) = cursor.cloned().unwrap_or((-1, Vec::new()));
            let rows = r.query(
                &format!(
                    "SELECT key, at FROM {} WHERE at < $1 AND (at, key) > ($2, $3)
                     ORDER BY at, key LIMIT $4",
                    r.t("idempotency")
                ),
                &[&ms(before), &at, &key, &PAGE],
            )?;
            rows.iter()
                .map(|row| {
                    let key: Vec<u8> = row.try_get(0)?;
                    let at: i64 = row.try_get(1)?;
                    let text = String::from_utf8(key.clone())
                        .map_err(|_| corrupt("k", &key, "idempotency key is not UTF-8"))?;
                    Ok((Ok((text, unms(at))), (at, key)))
                })
                .collect()
        })
    }

    fn sequence(&self, sub: SubscriptionId) -> Result<u64> {
        let rows = self.query(
            &format!("SELECT seq FROM {} WHERE id = $1", self.t("subscriptions")),
            &[&&sub.to_bytes()[..]],
        )?;
        Ok(rows.first().map_or(Ok(0), |r| r.try_get(0)).map(unms)?)
    }

    fn health(&self, sub: SubscriptionId) -> Result<Option<HealthRecord>> {
        let id = sub.to_bytes();
        let rows = self.query(
            &format!("SELECT record FROM {} WHERE sub = $1", self.t("health")),
            &[&&id[..]],
        )?;
        rows.first()
            .map(|r| decode("h", &id, &r.try_get::<_, Vec<u8>>(0)?))
            .transpose()
    }

    fn backlog(&self, sub: SubscriptionId) -> Result<u64> {
        let rows = self.query(
            &format!(
                "SELECT count(*) FROM {} WHERE sub = $1 AND state = 0",
                self.t("deliveries")
            ),
            &[&&sub.to_bytes()[..]],
        )?;
        Ok(unms(rows.first().map_or(Ok(0), |r| r.try_get(0))?))
    }

    fn notices(&self) -> Iter<Notice> {
        let r = self.clone();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let after = cursor.cloned().unwrap_or_default();
            let rows = r.query(
                &format!(
                    "SELECT id, record FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                    r.t("notices")
                ),
                &[&after, &PAGE],
            )?;
            rows.iter()
                .map(|row| {
                    let k: Vec<u8> = row.try_get(0)?;
                    let n = decode::<Notice>("o", &k, &row.try_get::<_, Vec<u8>>(1)?);
                    Ok((n, k))
                })
                .collect()
        })
    }

    fn quarantined(&self) -> Iter<(Vec<u8>, Vec<u8>)> {
        let r = self.clone();
        Paged::boxed(move |cursor: Option<&Vec<u8>>| {
            let after = cursor.cloned().unwrap_or_default();
            let rows = r.query(
                &format!(
                    "SELECT key, value FROM {} WHERE key > $1 ORDER BY key LIMIT $2",
                    r.t("quarantine")
                ),
                &[&after, &PAGE],
            )?;
            rows.iter()
                .map(|row| {
                    let k: Vec<u8> = row.try_get(0)?;
                    let v: Vec<u8> = row.try_get(1)?;
                    Ok((Ok((k.clone(), v)), k))
                })
                .collect()
        })
    }

    fn size_on_disk(&self) -> Result<u64> {
        let rows = self.query(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&self.pool.schema],
        )?;
        Ok(unms(rows.first().map_or(Ok(0), |r| r.try_get(0))?))
    }

    fn shared(&self) -> bool {
        true
    }

    fn claim(
        &self,
        sub: SubscriptionId,
        n: usize,
        due_by: u64,
        _now: u64,
    ) -> Result<Vec<IndexEntry>> {
        // Timed by the database's clock (see `claim_one`); due times are
        // the instances' own.
        let rows = self.query(
            &format!(
                "UPDATE {d} SET claim = $1, claimed_until = {DB_NOW} + $2
                 WHERE id IN (
                     SELECT id FROM {d}
                     WHERE sub = $3 AND state = 0 AND at <= $4 AND claimed_until < {DB_NOW}
                     AND NOT EXISTS (SELECT 1 FROM {f} WHERE sub = $3 AND paused_until > {DB_NOW})
                     ORDER BY at, id LIMIT $5
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, sub, at, record",
                d = self.t("deliveries"),
                f = self.t("flow")
            ),
            &[
                &&self.pool.token[..],
                &ms(self.pool.lease_ms),
                &&sub.to_bytes()[..],
                &ms(due_by),
                &i64::try_from(n).unwrap_or(i64::MAX),
            ],
        )?;
        let mut out: Vec<IndexEntry> = rows.iter().map(entry_of).collect::<Result<_>>()?;
        out.sort_by_key(|e| (e.at, e.delivery));
        // A record that does not decode is left to the normal read (which
        // quarantines it).
        if let Err(e) = self.keep_claimed(&rows) {
            tracing::debug!(error = %e, "claimed records not kept; they are read one by one");
        }
        Ok(out)
    }

    fn claim_one(&self, id: DeliveryId, _now: u64) -> Result<Option<IndexEntry>> {
        // Claims are timed by the database's clock, which every instance
        // shares, not by the instances' own.
        let rows = self.query(
            &format!(
                "UPDATE {d} SET claim = $1, claimed_until = {DB_NOW} + $2
                 WHERE id = $3 AND state = 0 AND (claimed_until < {DB_NOW} OR claim = $1)
                 AND NOT EXISTS (SELECT 1 FROM {f} WHERE {f}.sub = {d}.sub AND paused_until > {DB_NOW})
                 RETURNING id, sub, at",
                d = self.t("deliveries"),
                f = self.t("flow")
            ),
            &[
                &&self.pool.token[..],
                &ms(self.pool.lease_ms),
                &&id.to_bytes()[..],
            ],
        )?;
        rows.first().map(entry_of).transpose()
    }

    fn take_tokens(
        &self,
        sub: SubscriptionId,
        want: usize,
        limit: RateLimit,
    ) -> Result<(usize, u64)> {
        let f = self.t("flow");
        let id = &sub.to_bytes()[..];
        let burst = f64::from(limit.burst.max(1));
        let rate = f64::from(limit.per_second.max(1));
        self.pool.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                &format!(
                    "INSERT INTO {f} (sub, tokens, at) VALUES ($1, $2, {DB_NOW})
                     ON CONFLICT (sub) DO NOTHING"
                ),
                &[&id, &burst],
            )?;
            let row = tx.query_one(
                &format!(
                    "SELECT tokens, at, paused_until, {DB_NOW} FROM {f} WHERE sub = $1 FOR UPDATE"
                ),
                &[&id],
            )?;
            let (tokens, at, paused, now): (f64, i64, i64, i64) = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            );
            if paused > now {
                tx.commit()?;
                return Ok((0, unms(paused - now)));
            }
            #[allow(clippy::cast_precision_loss)]
            let avail = (tokens + (now - at).max(0) as f64 * rate / 1000.0).min(burst);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let granted = (avail.floor().max(0.0) as usize).min(want);
            #[allow(clippy::cast_precision_loss)]
            let left = avail - granted as f64;
            tx.execute(
                &format!("UPDATE {f} SET tokens = $2, at = $3 WHERE sub = $1"),
                &[&id, &left, &now],
            )?;
            tx.commit()?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let wait = if granted == 0 {
                (((1.0 - left) * 1000.0 / rate).ceil().max(1.0)) as u64
            } else {
                0
            };
            Ok((granted, wait))
        })
    }

    fn return_tokens(&self, sub: SubscriptionId, n: usize, limit: RateLimit) -> Result<()> {
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        self.query(
            &format!(
                "UPDATE {} SET tokens = least($2, tokens + $3) WHERE sub = $1",
                self.t("flow")
            ),
            &[&&sub.to_bytes()[..], &f64::from(limit.burst.max(1)), &n],
        )?;
        Ok(())
    }

    fn pause(&self, sub: SubscriptionId, for_ms: u64) -> Result<()> {
        self.query(
            &format!(
                "INSERT INTO {f} (sub, tokens, at, paused_until) VALUES ($1, 0, {DB_NOW}, {DB_NOW} + $2)
                 ON CONFLICT (sub) DO UPDATE
                 SET paused_until = greatest({f}.paused_until, EXCLUDED.paused_until)",
                f = self.t("flow")
            ),
            &[&&sub.to_bytes()[..], &ms(for_ms)],
        )?;
        Ok(())
    }

    fn reserve_sequences(&self, subs: &[SubscriptionId]) -> Result<Vec<u64>> {
        let ids: Vec<Vec<u8>> = subs.iter().map(|s| s.to_bytes().to_vec()).collect();
        // Rows locked in id order, as the writer's numbering does.
        let rows = self.query(
            &format!(
                "WITH locked AS (
                     SELECT id FROM {s} WHERE id = ANY($1) ORDER BY id FOR UPDATE)
                 UPDATE {s} SET seq = {s}.seq + 1 FROM locked
                 WHERE {s}.id = locked.id RETURNING {s}.id, {s}.seq",
                s = self.t("subscriptions")
            ),
            &[&ids],
        )?;
        let mut got = std::collections::HashMap::new();
        for row in rows {
            got.insert(
                id_of(&row, "id", SubscriptionId::from_slice)?,
                unms(row.try_get("seq")?),
            );
        }
        // A subscription deleted meanwhile gets no number (0: not sent).
        Ok(subs
            .iter()
            .map(|s| got.get(s).copied().unwrap_or(0))
            .collect())
    }
}

/// A delivery's change: id, state, at, new record, the record it was made
/// from, and whether it is an attempt's outcome (written only under this
/// instance's own claim).
type Update = (Vec<u8>, i16, i64, Vec<u8>, Vec<u8>, bool);

/// Delivery changes and attempts of a round, sent as one statement each
/// (`unnest` arrays) instead of one per row.
#[derive(Default)]
struct Batch {
    updates: Vec<Update>,
    /// Where each delivery's change is in `updates`.
    at: std::collections::HashMap<DeliveryId, usize>,
    attempts: Vec<(Vec<u8>, i32, Vec<u8>)>,
}

impl Batch {
    /// A change of a delivery from the record `old`; a second change of
    /// the same delivery in the round replaces the first's outcome and
    /// keeps its starting record.
    fn update(&mut self, old: &[u8], outcome: bool, d: &Delivery) {
        let row = (
            d.id.to_bytes().to_vec(),
            state_code(d.state),
            ms(IndexEntry::of(d).at),
            encode(d),
            old.to_vec(),
            outcome,
        );
        match self.at.get(&d.id) {
            Some(&i) => {
                let first_old = std::mem::take(&mut self.updates[i].4);
                let outcome = self.updates[i].5 || outcome;
                self.updates[i] = (row.0, row.1, row.2, row.3, first_old, outcome);
            }
            None => {
                self.at.insert(d.id, self.updates.len());
                self.updates.push(row);
            }
        }
    }

    fn attempt(&mut self, id: DeliveryId, a: &Attempt) {
        self.attempts.push((
            id.to_bytes().to_vec(),
            i32::try_from(a.number).unwrap_or(i32::MAX),
            encode(a),
        ));
    }

    /// Sends what is batched (and empties it). A change is written only
    /// over the record it was made from (a result from a claim whose lease
    /// ran out, after another instance moved the delivery on, changes
    /// nothing) and not over a running claim of another instance (its
    /// result is the newer one).
    fn send(&mut self, tx: &mut Tx<'_>, schema: &str, me: &[u8]) -> Result<()> {
        if !self.updates.is_empty() {
            let rows = std::mem::take(&mut self.updates);
            self.at.clear();
            let n = rows.len();
            let mut ids = Vec::with_capacity(n);
            let mut states = Vec::with_capacity(n);
            let mut ats = Vec::with_capacity(n);
            let mut records = Vec::with_capacity(n);
            let mut olds = Vec::with_capacity(n);
            let mut outcomes = Vec::with_capacity(n);
            for (id, state, at, record, old, outcome) in rows {
                ids.push(id);
                states.push(state);
                ats.push(at);
                records.push(record);
                olds.push(old);
                outcomes.push(outcome);
            }
            let done = tx.query(
                &format!(
                    "UPDATE \"{schema}\".deliveries d
                     SET state = v.state, at = v.at, record = v.record, claim = NULL, claimed_until = 0
                     FROM unnest($1::bytea[], $2::int2[], $3::int8[], $4::bytea[], $5::bytea[], $6::bool[])
                          AS v(id, state, at, record, old, outcome)
                     WHERE d.id = v.id AND d.record = v.old
                     AND CASE WHEN v.outcome THEN d.claim = $7
                         ELSE (d.claim IS NULL OR d.claim = $7 OR d.claimed_until < {DB_NOW}) END
                     RETURNING d.id"
                ),
                &[&ids, &states, &ats, &records, &olds, &outcomes, &me],
            )?;
            let changed = done.len() as u64;
            // An attempt goes into the history only with the outcome it
            // belongs to: a result that was dropped (its claim ran out)
            // never happened as far as the delivery is concerned.
            let kept: std::collections::HashSet<Vec<u8>> = done
                .iter()
                .filter_map(|r| r.try_get::<_, Vec<u8>>(0).ok())
                .collect();
            let updated: std::collections::HashSet<&Vec<u8>> = ids.iter().collect();
            self.attempts
                .retain(|(id, _, _)| !updated.contains(id) || kept.contains(id));
            if changed < n as u64 {
                tracing::info!(
                    dropped = n as u64 - changed,
                    "changes of deliveries that another instance moved on are dropped"
                );
            }
        }
        if !self.attempts.is_empty() {
            let rows = std::mem::take(&mut self.attempts);
            let mut ids = Vec::with_capacity(rows.len());
            let mut ns = Vec::with_capacity(rows.len());
            let mut records = Vec::with_capacity(rows.len());
            for (id, n, record) in rows {
                ids.push(id);
                ns.push(n);
                records.push(record);
            }
            tx.execute(
                &format!(
                    "INSERT INTO \"{schema}\".attempts (delivery, n, record)
                     SELECT * FROM unnest($1::bytea[], $2::int4[], $3::bytea[])
                     ON CONFLICT (delivery, n) DO NOTHING"
                ),
                &[&ids, &ns, &records],
            )?;
        }
        Ok(())
    }
}

/// One staged write.
enum Op {
    PutSubscription(Option<Vec<String>>, SubscriptionRecord),
    RemoveSubscription(SubscriptionRecord),
    PutEvent(Event),
    RemoveEvent(EventId),
    /// Events created before this id that no delivery refers to.
    SweepOrphans(EventId),
    /// A new delivery (`None`), or a change of the one stored as `old`
    /// (its record's bytes), and whether the change is an attempt's
    /// outcome.
    PutDelivery(Option<(Vec<u8>, bool)>, Delivery),
    /// A finished delivery, as the record it was read as.
    RemoveDelivery(DeliveryId, Vec<u8>),
    PutAttempt(DeliveryId, Attempt),
    RemoveAttempt(DeliveryId, u32),
    /// A write that changes nothing but fails where writes fail (a
    /// read-only server): the health probe.
    Probe,
    QuarantineDelivery(DeliveryId),
    QuarantineRaw(Damaged),
    PutKey(String, EventId, u64),
    RemoveKey(String, u64),
    PutSequence(SubscriptionId, u64),
    MergeHealth(SubscriptionId, HealthDelta),
    PutNotice(Notice),
    RemoveNotice(NoticeId),
}

/// The one writer of an instance: stages writes, commits them as one
/// transaction on its own connection.
pub(crate) struct PgWriter {
    reader: PgReader,
    client: Conn,
    ops: Vec<Op>,
    /// Asynchronous commits were made that no synchronous one has covered
    /// yet (a synchronous commit waits for the WAL up to it, so for every
    /// commit before it).
    unflushed: bool,
    /// An advisory lock was taken on the connection since the last
    /// `release_locks`.
    holding_locks: bool,
}

impl std::fmt::Debug for PgWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWriter")
            .field("reader", &self.reader)
            .field("staged", &self.ops.len())
            .finish()
    }
}

impl PgWriter {
    /// Drops what the reader keeps of a delivery this writer changes: its
    /// next read must see the change.
    fn forget(&self, id: DeliveryId) {
        let mut claimed = self.reader.claimed();
        claimed.deliveries.remove(&id);
        claimed.sent.remove(&id);
    }

    /// A connection that was lost (a server restart, a failover, a proxy
    /// that cut it) is replaced before the next round, so one lost
    /// connection costs one round, not every round after it (unless the
    /// round holds a lock: it then fails).
    fn reconnect_if_closed(&mut self) -> Result<()> {
        if self.client.is_closed() {
            if self.holding_locks {
                // The locks went with the connection: what this round
                // read under them may be stale, so it must not commit.
                return Err(store_error(
                    "the PostgreSQL connection was lost while this round held a lock; the round is not committed",
                ));
            }
            tracing::warn!("PostgreSQL connection of the writer lost; reconnecting");
            self.forget_unconfirmed();
            self.replace_connection()?;
        }
        Ok(())
    }

    /// The connection was lost: its asynchronous commits that no
    /// synchronous one covered are unconfirmed. Only rounds of attempt
    /// outcomes commit asynchronously (see `commit`): if the server
    /// crashed, those deliveries are sent again (at least once); no event
    /// can be lost so.
    fn forget_unconfirmed(&mut self) {
        if std::mem::take(&mut self.unflushed) {
            tracing::warn!(
                "the writer's PostgreSQL connection was lost with attempt outcomes not yet confirmed durable; if the server crashed, those deliveries are sent again"
            );
        }
    }

    /// Drops the writer's connection for a new one (on an error the old
    /// one stays: the next round tries again).
    fn replace_connection(&mut self) -> Result<()> {
        self.client = Conn::writer(&self.reader.pool.url)?;
        Ok(())
    }

    fn apply(&mut self, durable: bool) -> Result<()> {
        self.reconnect_if_closed()?;
        let pool = self.reader.pool.clone();
        let t = |name: &str| pool.t(name);
        let me: &[u8] = &pool.token[..];
        let mut tx = self.client.transaction()?;
        if durable {
            tx.tx.batch_execute("SET LOCAL synchronous_commit TO on")?;
        }
        // Group commit: a round of outcomes alone is visible at once and
        // made durable by the next `flush` (the writer's connection commits
        // asynchronously: `Conn::writer`), which a crash can only make a
        // delivery be sent again for; a round that stores events or new
        // deliveries commits synchronously (`durable`, see `commit`).
        // Numbers for the round's new deliveries (the engine leaves them
        // 0 on a shared store): one statement, which locks the
        // subscriptions' rows in id order (as every numbering does, so two
        // instances never wait for each other's rows).
        let mut counts: std::collections::BTreeMap<SubscriptionId, i64> = Default::default();
        for op in &self.ops {
            if let Op::PutDelivery(None, d) = op
                && d.sequence == 0
            {
                *counts.entry(d.subscription_id).or_default() += 1;
            }
        }
        // A round that also changes subscriptions (the engine's
        // auto-disable or FIFO halt, an API change) locks every
        // subscription row it writes first, in the same order, so rounds
        // of two instances never hold one row each and wait for the other.
        let mut changed: std::collections::BTreeSet<SubscriptionId> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::PutSubscription(_, new) => Some(new.id),
                Op::RemoveSubscription(old) => Some(old.id),
                _ => None,
            })
            .collect();
        if !changed.is_empty() && (changed.len() > 1 || !counts.is_empty()) {
            changed.extend(counts.keys().copied());
            let ids: Vec<Vec<u8>> = changed.iter().map(|s| s.to_bytes().to_vec()).collect();
            tx.query(
                &format!(
                    "SELECT id FROM {} WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    t("subscriptions")
                ),
                &[&ids],
            )?;
        }
        if !counts.is_empty() {
            let ids: Vec<Vec<u8>> = counts.keys().map(|s| s.to_bytes().to_vec()).collect();
            let ns: Vec<i64> = counts.values().copied().collect();
            let rows = tx.query(
                &format!(
                    "WITH locked AS (
                         SELECT id FROM {s} WHERE id = ANY($1) ORDER BY id FOR UPDATE)
                     UPDATE {s} SET seq = {s}.seq + v.n
                     FROM unnest($1::bytea[], $2::int8[]) AS v(id, n), locked
                     WHERE {s}.id = v.id AND locked.id = v.id
                     RETURNING {s}.id, {s}.seq",
                    s = t("subscriptions")
                ),
                &[&ids, &ns],
            )?;
            let mut next = std::collections::HashMap::new();
            for row in rows {
                let sub = id_of(&row, "id", SubscriptionId::from_slice)?;
                let last = unms(row.try_get("seq")?);
                let n = counts.get(&sub).map_or(0, |&n| unms(n));
                next.insert(sub, last.saturating_sub(n).saturating_add(1));
            }
            // A subscription deleted meanwhile gives none (0: not sent).
            for op in &mut self.ops {
                if let Op::PutDelivery(None, d) = op
                    && d.sequence == 0
                    && let Some(n) = next.get_mut(&d.subscription_id)
                {
                    d.sequence = *n;
                    *n += 1;
                }
            }
        }
        // New deliveries go in one multi-row insert per round.
        let mut new_deliveries: Vec<&Delivery> = Vec::new();
        for op in &self.ops {
            if let Op::PutDelivery(None, d) = op {
                new_deliveries.push(d);
            }
        }
        // The round's events in one statement, before anything refers to
        // them.
        let events: Vec<&Event> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::PutEvent(e) => Some(e),
                _ => None,
            })
            .collect();
        if !events.is_empty() {
            let mut ids = Vec::with_capacity(events.len());
            let mut records = Vec::with_capacity(events.len());
            let mut tenants = Vec::with_capacity(events.len());
            for e in events {
                ids.push(e.id.to_bytes().to_vec());
                records.push(encode_event(e));
                tenants.push(e.tenant.clone());
            }
            tx.execute(
                &format!(
                    "INSERT INTO {} (id, record, tenant, scoped)
                     SELECT id, record, tenant, true
                     FROM unnest($1::bytea[], $2::bytea[], $3::text[]) AS v(id, record, tenant)
                     ON CONFLICT DO NOTHING",
                    t("events")
                ),
                &[&ids, &records, &tenants],
            )?;
        }
        let mut batch = Batch::default();
        for op in &self.ops {
            // Changes of deliveries and attempts are sent together; any
            // other write first sends what is batched, so the order holds.
            if !matches!(op, Op::PutDelivery(..) | Op::PutAttempt(..)) {
                batch.send(&mut tx, &pool.schema, me)?;
            }
            match op {
                Op::PutSubscription(old_events, new) => {
                    let id = &new.id.to_bytes()[..];
                    tx.execute(
                        &format!(
                            "INSERT INTO {} (id, record) VALUES ($1, $2)
                             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                            t("subscriptions")
                        ),
                        &[&id, &encode(new)],
                    )?;
                    // A changed subscription (a new URL, say) is not held
                    // to the old receiver's "slow down".
                    tx.execute(
                        &format!("UPDATE {} SET paused_until = 0 WHERE sub = $1", t("flow")),
                        &[&id],
                    )?;
                    if let Some(old) = old_events {
                        for e in old.iter().filter(|e| !new.events.contains(e)) {
                            tx.execute(
                                &format!(
                                    "DELETE FROM {} WHERE event = $1 AND sub = $2",
                                    t("subscription_events")
                                ),
                                &[e, &id],
                            )?;
                        }
                    }
                    for e in &new.events {
                        tx.execute(
                            &format!(
                                "INSERT INTO {} (event, sub) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                t("subscription_events")
                            ),
                            &[e, &id],
                        )?;
                    }
                }
                Op::RemoveSubscription(old) => {
                    let id = &old.id.to_bytes()[..];
                    tx.execute(
                        &format!("DELETE FROM {} WHERE sub = $1", t("subscription_events")),
                        &[&id],
                    )?;
                    tx.execute(
                        &format!("DELETE FROM {} WHERE id = $1", t("subscriptions")),
                        &[&id],
                    )?;
                    tx.execute(
                        &format!("DELETE FROM {} WHERE sub = $1", t("health")),
                        &[&id],
                    )?;
                    tx.execute(&format!("DELETE FROM {} WHERE sub = $1", t("flow")), &[&id])?;
                }
                // Written above.
                Op::PutEvent(_) => {}
                Op::SweepOrphans(before) => {
                    tx.execute(
                        &format!(
                            "DELETE FROM {e} WHERE id IN (
                                 SELECT ev.id FROM {e} ev WHERE ev.id < $1
                                 AND NOT EXISTS (SELECT 1 FROM {d} dl WHERE dl.event_id = ev.id)
                                 LIMIT 1000)",
                            e = t("events"),
                            d = t("deliveries")
                        ),
                        &[&&before.to_bytes()[..]],
                    )?;
                }
                Op::RemoveEvent(id) => {
                    let id = &id.to_bytes()[..];
                    tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE id = $1
                             AND NOT EXISTS (SELECT 1 FROM {} WHERE event_id = $1)",
                            t("events"),
                            t("deliveries")
                        ),
                        &[&id],
                    )?;
                }
                Op::PutDelivery(None, _) => {}
                Op::PutDelivery(Some((old, outcome)), d) => batch.update(old, *outcome, d),
                Op::RemoveDelivery(id, record) => {
                    // Only the record it was read as (not one another
                    // instance revived meanwhile), and its attempts with it.
                    let id = &id.to_bytes()[..];
                    let gone = tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE id = $1 AND record = $2",
                            t("deliveries")
                        ),
                        &[&id, record],
                    )?;
                    if gone > 0 {
                        tx.execute(
                            &format!("DELETE FROM {} WHERE delivery = $1", t("attempts")),
                            &[&id],
                        )?;
                    }
                }
                Op::PutAttempt(id, a) => batch.attempt(*id, a),
                Op::Probe => {
                    tx.execute(
                        &format!(
                            "UPDATE {} SET applied_at = applied_at WHERE version = -1",
                            t("migrations")
                        ),
                        &[],
                    )?;
                }
                Op::RemoveAttempt(id, n) => {
                    let n = i32::try_from(*n).unwrap_or(i32::MAX);
                    tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE delivery = $1 AND n = $2",
                            t("attempts")
                        ),
                        &[&&id.to_bytes()[..], &n],
                    )?;
                }
                Op::QuarantineDelivery(id) => {
                    let id = &id.to_bytes()[..];
                    let mut key = vec![b'd'];
                    key.extend_from_slice(id);
                    tx.execute(
                        &format!(
                            "INSERT INTO {} (key, value, reason)
                             SELECT $1, record, 'damaged delivery record' FROM {} WHERE id = $2
                             ON CONFLICT (key) DO NOTHING",
                            t("quarantine"),
                            t("deliveries")
                        ),
                        &[&key, &id],
                    )?;
                    tx.execute(
                        &format!("DELETE FROM {} WHERE id = $1", t("deliveries")),
                        &[&id],
                    )?;
                }
                Op::QuarantineRaw(d) => {
                    // Keys are a table letter and the row's id (see
                    // `corrupt`).
                    let Some((&kind, id)) = d.key.split_first() else {
                        continue;
                    };
                    let table = match kind {
                        b'd' => "deliveries",
                        b's' => "subscriptions",
                        b'e' => "events",
                        _ => continue,
                    };
                    tx.execute(
                        &format!(
                            "INSERT INTO {} (key, value, reason)
                             SELECT $1, record, $3 FROM {} WHERE id = $2
                             ON CONFLICT (key) DO NOTHING",
                            t("quarantine"),
                            t(table)
                        ),
                        &[&d.key, &id, &d.reason],
                    )?;
                    if kind == b's' {
                        tx.execute(
                            &format!("DELETE FROM {} WHERE sub = $1", t("subscription_events")),
                            &[&id],
                        )?;
                    }
                    tx.execute(&format!("DELETE FROM {} WHERE id = $1", t(table)), &[&id])?;
                }
                Op::PutKey(key, event, at) => {
                    tx.execute(
                        &format!(
                            "INSERT INTO {} (key, event, at) VALUES ($1, $2, $3)
                             ON CONFLICT (key) DO UPDATE SET event = EXCLUDED.event, at = EXCLUDED.at",
                            t("idempotency")
                        ),
                        &[&key.as_bytes(), &&event.to_bytes()[..], &ms(*at)],
                    )?;
                }
                Op::RemoveKey(key, at) => {
                    tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE key = $1 AND at = $2",
                            t("idempotency")
                        ),
                        &[&key.as_bytes(), &ms(*at)],
                    )?;
                }
                Op::PutSequence(sub, last) => {
                    tx.execute(
                        &format!(
                            "UPDATE {} SET seq = GREATEST(seq, $2) WHERE id = $1",
                            t("subscriptions")
                        ),
                        &[&&sub.to_bytes()[..], &ms(*last)],
                    )?;
                }
                Op::MergeHealth(sub, delta) => {
                    // Merged under the row's lock: instances add up.
                    let id = &sub.to_bytes()[..];
                    let lock = format!(
                        "SELECT record FROM {} WHERE sub = $1 FOR UPDATE",
                        t("health")
                    );
                    let mut rows = tx.query(&lock, &[&id])?;
                    if rows.is_empty() {
                        // The first report of this subscription (or of
                        // two instances at once: the row is then locked
                        // after the other's insert).
                        tx.execute(
                            &format!(
                                "INSERT INTO {} (sub, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                t("health")
                            ),
                            &[&id, &encode(&HealthRecord::default())],
                        )?;
                        rows = tx.query(&lock, &[&id])?;
                    }
                    let base: HealthRecord = match rows.first() {
                        Some(row) => {
                            decode("h", id, &row.try_get::<_, Vec<u8>>(0)?).unwrap_or_default()
                        }
                        None => HealthRecord::default(),
                    };
                    tx.execute(
                        &format!("UPDATE {} SET record = $2 WHERE sub = $1", t("health")),
                        &[&id, &encode(&base.merge(delta))],
                    )?;
                }
                Op::PutNotice(n) => {
                    tx.execute(
                        &format!(
                            "INSERT INTO {} (id, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            t("notices")
                        ),
                        &[&&n.id.to_bytes()[..], &encode(n)],
                    )?;
                }
                Op::RemoveNotice(id) => {
                    tx.execute(
                        &format!("DELETE FROM {} WHERE id = $1", t("notices")),
                        &[&&id.to_bytes()[..]],
                    )?;
                }
            }
        }
        batch.send(&mut tx, &pool.schema, me)?;
        let subscriptions_changed = self
            .ops
            .iter()
            .any(|op| matches!(op, Op::PutSubscription(..) | Op::RemoveSubscription(_)));
        if !new_deliveries.is_empty() || subscriptions_changed {
            // Delivered to listening instances when this commits: they look
            // for new work, and forget the subscriptions they cached.
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&channel(&pool.schema), &hex::encode(pool.token)],
            )?;
        }
        if !new_deliveries.is_empty() {
            // One statement (one text, so one prepared statement) whatever
            // the round's size.
            let n = new_deliveries.len();
            let (mut ids, mut subs, mut events) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut states, mut ats, mut records) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for d in new_deliveries {
                ids.push(d.id.to_bytes().to_vec());
                subs.push(d.subscription_id.to_bytes().to_vec());
                events.push(d.event_id.to_bytes().to_vec());
                states.push(state_code(d.state));
                ats.push(ms(IndexEntry::of(d).at));
                records.push(encode(d));
            }
            tx.execute(
                &format!(
                    "INSERT INTO {} (id, sub, event_id, state, at, record)
                     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[],
                                          $4::int2[], $5::int8[], $6::bytea[])
                     ON CONFLICT (id) DO NOTHING",
                    t("deliveries")
                ),
                &[&ids, &subs, &events, &states, &ats, &records],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Writer for PgWriter {
    fn reader(&self) -> &dyn Reader {
        &self.reader
    }

    fn put_subscription(&mut self, old: Option<&SubscriptionRecord>, new: &SubscriptionRecord) {
        self.ops.push(Op::PutSubscription(
            old.map(|o| o.events.clone()),
            new.clone(),
        ));
    }

    fn remove_subscription(&mut self, old: &SubscriptionRecord) {
        self.ops.push(Op::RemoveSubscription(old.clone()));
    }

    fn put_event(&mut self, event: &Event, _refs: u32) {
        self.ops.push(Op::PutEvent(event.clone()));
    }

    /// References are counted from the deliveries.
    fn set_event_refs(&mut self, _id: EventId, _refs: u32) {}

    fn remove_event(&mut self, id: EventId) {
        self.ops.push(Op::RemoveEvent(id));
    }

    fn sweep_orphan_events(&mut self, before_ms: u64) {
        self.ops
            .push(Op::SweepOrphans(EventId::first_at(before_ms)));
    }

    fn put_delivery(&mut self, old: Option<&Delivery>, new: &Delivery) {
        self.forget(new.id);
        let old = old.map(|o| (encode(o), false));
        self.ops.push(Op::PutDelivery(old, new.clone()));
    }

    /// Only while this instance's claim stands (see [`Batch::send`]).
    fn put_outcome(&mut self, old: &Delivery, new: &Delivery) {
        self.forget(new.id);
        self.ops
            .push(Op::PutDelivery(Some((encode(old), true)), new.clone()));
    }

    fn remove_delivery(&mut self, old: &Delivery) -> Result<()> {
        self.forget(old.id);
        self.ops.push(Op::RemoveDelivery(old.id, encode(old)));
        Ok(())
    }

    fn put_attempt(&mut self, id: DeliveryId, attempt: &Attempt) -> Result<()> {
        self.ops.push(Op::PutAttempt(id, attempt.clone()));
        Ok(())
    }

    fn remove_attempt(&mut self, id: DeliveryId, n: u32) {
        self.ops.push(Op::RemoveAttempt(id, n));
    }

    fn probe(&mut self) {
        self.ops.push(Op::Probe);
    }

    /// Counters are counted.
    fn put_stats(&mut self, _stats: &OutboxStats) {}

    fn merge_health(&mut self, sub: SubscriptionId, delta: &HealthDelta) -> Result<()> {
        self.ops.push(Op::MergeHealth(sub, delta.clone()));
        Ok(())
    }

    fn put_notice(&mut self, notice: &Notice) {
        self.ops.push(Op::PutNotice(notice.clone()));
    }

    fn remove_notice(&mut self, id: NoticeId) {
        self.ops.push(Op::RemoveNotice(id));
    }

    fn put_idempotency_key(&mut self, key: &str, event: EventId, at: u64, _old_at: Option<u64>) {
        self.ops.push(Op::PutKey(key.to_owned(), event, at));
    }

    /// The row is its own entry by age: it goes if it is still that use.
    fn remove_idempotency_key(&mut self, key: &str, at: u64, _record: bool) {
        self.ops.push(Op::RemoveKey(key.to_owned(), at));
    }

    fn put_sequence(&mut self, sub: SubscriptionId, last: u64) {
        self.ops.push(Op::PutSequence(sub, last));
    }

    fn quarantine_delivery(&mut self, _state: DeliveryState, entry: IndexEntry) -> Result<()> {
        self.forget(entry.delivery);
        self.ops.push(Op::QuarantineDelivery(entry.delivery));
        Ok(())
    }

    fn quarantine_raw(&mut self, damaged: &Damaged) -> Result<()> {
        self.ops.push(Op::QuarantineRaw(damaged.clone()));
        Ok(())
    }

    /// Rows carry their own state: there is no separate index entry.
    fn remove_index_entry(&mut self, _state: DeliveryState, _entry: IndexEntry) {}

    /// A session-level advisory lock, one per schema: every instance
    /// takes it before it reads a subscription it will change, and lets
    /// it go after the commit, so changes of subscriptions are serialised
    /// across instances (waits count against the lock timeout).
    fn lock_subscriptions(&mut self) -> Result<()> {
        self.reconnect_if_closed()?;
        self.client.execute(
            "SELECT pg_advisory_lock(hashtext($1))",
            &[&subscription_lock(&self.reader.pool.schema)],
        )?;
        self.holding_locks = true;
        Ok(())
    }

    fn try_lock_key(&mut self, key: &str) -> Result<bool> {
        self.reconnect_if_closed()?;
        let row = self.client.query_one(
            "SELECT pg_try_advisory_lock(hashtext($1), hashtext(encode($2, 'hex')))",
            &[&key_lock(&self.reader.pool.schema), &key.as_bytes()],
        )?;
        let took: bool = row.try_get(0)?;
        self.holding_locks |= took;
        Ok(took)
    }

    fn release_locks(&mut self) {
        if !std::mem::take(&mut self.holding_locks) {
            return;
        }
        // A lost connection has released them already.
        if self.client.is_closed() {
            return;
        }
        if let Err(e) = self.client.execute("SELECT pg_advisory_unlock_all()", &[]) {
            tracing::error!(error = %e, "could not release the store's locks; dropping the connection");
            // Closing the connection releases them.
            if let Err(e) = self.replace_connection() {
                tracing::warn!(error = %e, "could not reconnect the writer to PostgreSQL yet");
            }
        }
    }

    fn staged(&self) -> usize {
        self.ops.len()
    }

    fn commit(&mut self) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        // A round that stores events or new deliveries commits
        // synchronously: nothing is claimed or sent, here or by another
        // instance, before what created it is durable, and a sequence
        // number once sent is never given again. Rounds of outcomes alone
        // stay asynchronous (one lost in a crash only sends a delivery
        // again).
        let durable = self
            .ops
            .iter()
            .any(|op| matches!(op, Op::PutEvent(_) | Op::PutDelivery(None, _)));
        let r = self.apply(durable);
        self.ops.clear();
        match &r {
            // A synchronous commit covers every commit before it.
            Ok(()) => self.unflushed = !durable,
            // A statement the server no longer takes as prepared (a
            // schema changed under it) is prepared afresh next time.
            Err(_) => self.client.stmts = Stmts::default(),
        }
        r
    }

    /// Makes every commit so far durable: a transaction with an id commits
    /// synchronously, which waits for the WAL up to it — and so for every
    /// earlier (asynchronous) commit of the server — to reach the disk.
    fn flush(&mut self) -> Result<()> {
        if !self.unflushed {
            return Ok(());
        }
        if self.client.is_closed() {
            // A synchronous commit on a new connection would say nothing
            // of the old one's unconfirmed commits: this flush fails (a
            // change this barrier waits for may or may not be stored).
            // The next round reconnects if this cannot.
            self.forget_unconfirmed();
            let _ = self.replace_connection();
            return Err(store_error(
                "the PostgreSQL connection was lost before earlier commits were confirmed durable; they may be lost if the server crashed",
            ));
        }
        // One message, one round trip. A failure inside leaves the
        // transaction aborted until the ROLLBACK below.
        if let Err(e) = self.client.client.batch_execute(
            "BEGIN; SET LOCAL synchronous_commit TO on; SELECT txid_current(); COMMIT",
        ) {
            let _ = self.client.client.batch_execute("ROLLBACK");
            return Err(e.into());
        }
        self.unflushed = false;
        Ok(())
    }
}

/// Writes `event` and its deliveries inside the caller's transaction `tx`
/// (the fan-out rule of the engine: active subscriptions naming the event
/// or `*`, of `tenant` or app-wide). Visible to every instance's senders
/// once `tx` commits (they poll); nothing if it rolls back. With `key`, an
/// idempotency key held within `window_ms` returns its holder instead and
/// stores nothing; the key's advisory lock (the one the engines take)
/// serialises concurrent transactions and instances.
pub(crate) fn publish_in(
    tx: &mut postgres::Transaction<'_>,
    schema: &str,
    event: &Event,
    tenant: Option<&str>,
    app_events_to_tenants: bool,
    key: Option<(&str, u64)>,
    reserve_sequences: &dyn Fn(&[SubscriptionId]) -> Result<Vec<u64>>,
) -> Result<EventId> {
    let t = |name: &str| format!("\"{schema}\".{name}");
    let now = Timestamp::now().as_millis();
    if let Some((key, window_ms)) = key {
        // Serialised with the engines of every instance, which take the
        // same lock before they read the key (held until this transaction
        // ends).
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1), hashtext(encode($2, 'hex')))",
            &[&key_lock(schema), &key.as_bytes()],
        )?;
        // Take the key, or find who holds it (waits for a concurrent
        // transaction that took it first).
        let took = tx.query(
            &format!(
                "INSERT INTO {} (key, event, at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET event = EXCLUDED.event, at = EXCLUDED.at
                 WHERE {}.at < $4
                 RETURNING event",
                t("idempotency"),
                t("idempotency")
            ),
            &[
                &key.as_bytes(),
                &&event.id.to_bytes()[..],
                &ms(now),
                &ms(now.saturating_sub(window_ms)),
            ],
        )?;
        if took.is_empty() {
            let held = tx.query_one(
                &format!("SELECT event FROM {} WHERE key = $1", t("idempotency")),
                &[&key.as_bytes()],
            )?;
            let holder = id_of(&held, "event", EventId::from_slice)?;
            // The key binds the event, as in the engine (one purged cannot
            // be compared: the key holds).
            let stored = tx.query(
                &format!(
                    "SELECT record, tenant, scoped FROM {} WHERE id = $1",
                    t("events")
                ),
                &[&&holder.to_bytes()[..]],
            )?;
            if let Some(row) = stored.first() {
                let scoped: bool = row.try_get(2)?;
                let mut held = event_of(
                    &holder.to_bytes(),
                    &row.try_get::<_, Vec<u8>>(0)?,
                    row.try_get(1)?,
                    scoped,
                )?;
                // Written by a build that did not keep the tenant.
                held.scope_unknown |= !scoped;
                crate::message::key_binds(key, holder, &held, event, tenant)?;
            }
            return Ok(holder);
        }
    }
    let rows = tx.query(
        &format!(
            "SELECT DISTINCT s.id, s.record FROM {} e JOIN {} s ON s.id = e.sub
             WHERE e.event = $1 OR e.event = $2 ORDER BY s.id",
            t("subscription_events"),
            t("subscriptions")
        ),
        &[&event.name, &ALL_EVENTS],
    )?;
    let mut subs = Vec::new();
    for row in rows {
        let id: Vec<u8> = row.try_get(0)?;
        let rec: SubscriptionRecord = decode("s", &id, &row.try_get::<_, Vec<u8>>(1)?)?;
        if rec.takes(&event.name, tenant, app_events_to_tenants) {
            subs.push(rec.id);
        }
    }
    if subs.is_empty() {
        return Ok(event.id);
    }
    // Numbered outside the caller's transaction: holding the
    // subscriptions' rows until it commits would stall every instance that
    // publishes to them (and deadlock an app that waits on the bus inside
    // it). A rollback leaves a gap in the numbers, as a failed round does.
    let numbers = reserve_sequences(&subs)?;
    let seqs: std::collections::HashMap<SubscriptionId, u64> =
        subs.iter().copied().zip(numbers).collect();
    tx.execute(
        &format!(
            "INSERT INTO {} (id, record, tenant, scoped) VALUES ($1, $2, $3, true)
             ON CONFLICT DO NOTHING",
            t("events")
        ),
        &[
            &&event.id.to_bytes()[..],
            &encode_event(event),
            &event.tenant,
        ],
    )?;
    let at = Timestamp::from_millis(now);
    for sub in subs {
        let seq = seqs.get(&sub).copied().unwrap_or(0);
        let d = crate::delivery::created(event.id, &event.name, event.created_at, sub, seq, at);
        tx.execute(
            &format!(
                "INSERT INTO {} (id, sub, event_id, state, at, record) VALUES ($1, $2, $3, 0, $4, $5)",
                t("deliveries")
            ),
            &[
                &&d.id.to_bytes()[..],
                &&sub.to_bytes()[..],
                &&event.id.to_bytes()[..],
                &ms(now),
                &encode(&d),
            ],
        )?;
    }
    // Instances listening hear of it when the caller commits.
    tx.execute("SELECT pg_notify($1, '')", &[&channel(schema)])?;
    Ok(event.id)
}
