//! Connections to the server: [`connect`] with hookbus's timeouts, a
//! connection with its prepared statements ([`Conn`], [`Stmts`]), queries
//! through them ([`Prepared`], [`Tx`]), and the readers' [`Pool`].

use std::sync::Mutex;

use postgres::{Client, NoTls, Row};

use super::rows::store_error;
use super::schema::table;
use crate::error::Result;

/// Every statement of hookbus's own connections ends after this long.
const STATEMENT_TIMEOUT_MS: u64 = 60_000;
/// hookbus's own connections wait at most this long for a lock.
const LOCK_TIMEOUT_MS: u64 = 15_000;
/// The most connections the readers of one store hold open at once.
const MAX_READ_CONNECTIONS: usize = 16;
/// How long a read waits for a connection when all are in use.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `f` where the blocking client may block: at once on a thread
/// that drives no async runtime, else on a scoped thread of its own. The
/// blocking `postgres` client drives a runtime of its own, and tokio
/// panics ("Cannot start a runtime from within a runtime") when that
/// happens on a thread of the app's runtime — an axum handler, a
/// `#[tokio::main]` — so every entry point that talks to the server from
/// the caller's thread goes through here.
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Connects to `url` with hookbus's timeouts, so a stuck statement, lock
/// or network ends with an error instead of stalling the engine: a
/// statement and a lock timeout (unless the URL's `options` set their
/// own), a 10 s connect timeout (unless the URL sets one), TCP keepalives
/// and a TCP user timeout (a server that stops answering is noticed in
/// about a minute). A pooler such as PgBouncer must let the `options`
/// startup parameter through (`ignore_startup_parameters = options` drops
/// it, and with it the two server-side timeouts).
pub(super) fn connect(url: &str) -> Result<Client> {
    Ok(postgres::Config::from(tokio_config(url)?).connect(NoTls)?)
}

/// `url` with hookbus's timeouts (see [`connect`]), for a connection of
/// `tokio-postgres` (the writer's) or of the blocking client.
pub(super) fn tokio_config(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse()?;
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
    Ok(config)
}

/// How the pools' connections (claims, the handles' reads) are set: their
/// commits do not wait for the WAL flush (a transaction says `SET LOCAL
/// synchronous_commit TO on` where one must).
pub(super) const POOL_SESSION: &str = "SET synchronous_commit TO off";

/// How the writer's connection is set: as the pools' ([`POOL_SESSION`]),
/// and with no hash or merge joins. Every join the writer makes is a
/// round's batch (`unnest` arrays) against a table indexed on the join
/// key. Its statements are prepared once per connection, and the server
/// keeps a generic plan made from the table's size at the time: made
/// while a new store's tables were nearly empty, the outcome update hashed
/// the whole `deliveries` table for every round until the next `ANALYZE`
/// (613 µs a round instead of 75 at a steady 300/s, 3,000 rows in, by
/// `pg_stat_statements`; test
/// `postgres::the_engines_plans_stay_index_lookups_as_a_new_store_grows`).
/// With these off, such plans are index lookups at any size. (No writer
/// statement may join two relations without an index between them: that
/// would be a nested loop over both.)
///
/// And always that generic plan: left to choose, the server planned the
/// round's statements afresh at every run (their `unnest` batches make
/// the generic plan look dearer than a custom one), and planning was most
/// of their server time: 0.4–0.9 ms per run for the new deliveries'
/// insert against 0.05 ms to reuse the generic plan, by `EXPLAIN ANALYZE`
/// (BENCHMARKS.md has the rounds on the wire). Every writer statement is a lookup by
/// key, which a generic plan serves as well as a custom one, but the
/// orphan sweep (a range and a limit), which asks for plans made for its
/// values (`writer/ops.rs`, `sweep_orphans`).
pub(super) const WRITER_SESSION: &str = "SET synchronous_commit TO off; SET enable_hashjoin TO off; \
     SET enable_mergejoin TO off; SET plan_cache_mode TO force_generic_plan";

/// A connection with its prepared statements: each distinct statement is
/// parsed once per connection and then only bound and run, so a query
/// costs one round trip to the server, not two.
pub(super) struct Conn {
    client: Client,
    stmts: Stmts,
}

/// Prepared statements of one connection, by their text (cleared when it
/// holds [`Stmts::MAX`]).
#[derive(Default)]
pub(super) struct Stmts(std::collections::HashMap<String, postgres::Statement>);

impl Stmts {
    const MAX: usize = 256;

    fn get(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
    ) -> Result<postgres::Statement> {
        self.get_with(sql, || Ok(c.prepare(sql)?))
    }

    /// Whether `sql` is prepared.
    pub(super) fn has(&self, sql: &str) -> bool {
        self.0.contains_key(sql)
    }

    /// `sql`'s statement, prepared with `prepare` if new.
    pub(super) fn get_with(
        &mut self,
        sql: &str,
        prepare: impl FnOnce() -> Result<postgres::Statement>,
    ) -> Result<postgres::Statement> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = prepare()?;
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

pub(super) type Params<'a> = &'a [&'a (dyn postgres::types::ToSql + Sync)];

impl Conn {
    fn open(url: &str) -> Result<Conn> {
        Ok(Conn::new(connect(url)?))
    }

    /// A connection made already (with [`connect`]), with no statement
    /// prepared yet.
    pub(super) fn new(client: Client) -> Conn {
        Conn {
            client,
            stmts: Stmts::default(),
        }
    }

    /// A connection for the readers' pool, which also writes what the
    /// instances coordinate through (claims, rate-limit tokens, pauses,
    /// reserved sequence numbers): its commits are asynchronous, so a
    /// claim costs no WAL flush on the way to its request. None of these
    /// is a promise to anyone: a claim the server loses in its own crash
    /// is claimed again (the delivery may be sent twice, as after an
    /// expired lease), a reserved sequence number is durable with the
    /// commit of the event that uses it (`publish_in` makes the caller's
    /// commit synchronous; the WAL is flushed in order), or unused, and
    /// rate-limit tokens lost in such a crash are given once more. A
    /// receiver's pause commits synchronously (`coordination::pause`).
    pub(super) fn coordinating(url: &str) -> Result<Conn> {
        Conn::set_up(url, POOL_SESSION)
    }

    /// A connection with these session settings.
    fn set_up(url: &str, settings: &str) -> Result<Conn> {
        let mut c = Conn::open(url)?;
        c.client.batch_execute(settings)?;
        Ok(c)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub(super) fn transaction(&mut self) -> Result<Tx<'_>> {
        Ok(Tx {
            tx: self.client.transaction()?,
            stmts: &mut self.stmts,
        })
    }
}

/// Queries through a statement cache: a connection or a transaction on
/// it, with the connection's prepared statements.
pub(super) trait Prepared {
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
pub(super) struct Tx<'a> {
    tx: postgres::Transaction<'a>,
    stmts: &'a mut Stmts,
}

impl Tx<'_> {
    pub(super) fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }

    /// Runs statements as one message, unprepared and without parameters.
    pub(super) fn batch_execute(&mut self, sql: &str) -> Result<()> {
        Ok(self.tx.batch_execute(sql)?)
    }
}

/// Connections shared by the readers of one store (the handles', or the
/// engine's: each has its own): at most
/// [`MAX_READ_CONNECTIONS`] open at once (a read waits up to
/// [`POOL_WAIT`] for one), up to 8 kept idle.
pub(super) struct Pool {
    pub(super) url: String,
    pub(super) schema: String,
    idle: Mutex<Vec<Conn>>,
    /// Connections handed out now.
    busy: Mutex<usize>,
    freed: std::sync::Condvar,
    /// This instance's claim token.
    pub(super) token: [u8; 16],
    /// How long a claim holds, in ms.
    pub(super) lease_ms: u64,
}

impl Drop for Pool {
    /// Closing a connection blocks on the client's runtime too: idle ones
    /// are closed off the app's runtime (see [`off_runtime`]).
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !idle.is_empty() {
            off_runtime(move || drop(idle));
        }
    }
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
    /// A pool with no connection open yet, for the store `schema` of the
    /// database at `url`; `token` is this instance's claim token, and a
    /// claim holds `lease_ms`.
    pub(super) fn new(url: &str, schema: &str, token: [u8; 16], lease_ms: u64) -> Pool {
        Pool {
            url: url.to_owned(),
            schema: schema.to_owned(),
            idle: Mutex::new(Vec::new()),
            busy: Mutex::new(0),
            freed: std::sync::Condvar::new(),
            token,
            lease_ms,
        }
    }

    /// Runs `f` with a connection (one from the pool, or a new one); a
    /// connection that failed is not given back.
    pub(super) fn with<R: Send>(&self, f: impl FnOnce(&mut Conn) -> Result<R> + Send) -> Result<R> {
        off_runtime(|| self.with_here(f))
    }

    /// [`with`](Self::with) on the calling thread.
    fn with_here<R>(&self, f: impl FnOnce(&mut Conn) -> Result<R>) -> Result<R> {
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
            _ => Conn::coordinating(&self.url)?,
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

    /// Runs one query on a connection of the pool.
    pub(super) fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        self.with(|c| c.query(sql, params))
    }

    pub(super) fn t(&self, name: &str) -> String {
        table(&self.schema, name)
    }
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
