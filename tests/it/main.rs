//! Integration tests: one binary, real sled stores in temp dirs, a real HTTP
//! receiver on 127.0.0.1, real child processes killed with SIGKILL.

#![allow(missing_docs, unreachable_pub, dead_code)]
mod admin;
mod api;
mod api_v1;
#[cfg(feature = "axum")]
mod axum_example;
#[cfg(feature = "axum")]
mod axum_routes;
mod catalog;
#[cfg(feature = "cli")]
mod cli;
mod compat;
mod cost;
mod crash;
mod debug_output;
mod delivery;
mod durations;
mod engine;
mod faults;
mod first_open;
mod flow_control;
mod hardening;
mod inflight;
mod messages;
mod operations;
#[cfg(feature = "postgres")]
mod pg_faults;
#[cfg(feature = "axum")]
mod portal_browser;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_example;
mod proxy;
mod publish;
#[cfg(any(feature = "sqlx", feature = "tokio-postgres"))]
mod publish_in;
mod receiver;
mod replay;
mod retention;
mod security;
mod signing_paths;
mod store_faults;
mod subscriptions;
mod tenants;

use std::path::Path;
use std::time::{Duration, Instant};

use hookbus::{Builder, Bus};

/// The example `name`, built in this profile with the features this test
/// binary has (the same build of the library: nothing is built again).
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let features = [
        ("axum", cfg!(feature = "axum")),
        ("cli", cfg!(feature = "cli")),
        ("tokio", cfg!(feature = "tokio")),
        ("postgres", cfg!(feature = "postgres")),
        ("sqlx", cfg!(feature = "sqlx")),
        ("tokio-postgres", cfg!(feature = "tokio-postgres")),
        ("metrics", cfg!(feature = "metrics")),
        ("json-schema", cfg!(feature = "json-schema")),
        ("fuzzing", cfg!(feature = "fuzzing")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| *name)
    .collect::<Vec<_>>()
    .join(",");
    let mut args = vec![
        "build",
        "--quiet",
        "--example",
        name,
        "--features",
        &features,
    ];
    if !cfg!(debug_assertions) {
        args.push("--release");
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --example {name} failed");
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// Whether the behaviour tests run on PostgreSQL: `HOOKBUS_TEST_STORE=postgres`
/// (`.ci/run` runs this binary once on each store). Otherwise on sled.
pub fn on_postgres() -> bool {
    match std::env::var("HOOKBUS_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Err(_) => false,
        Ok(other) => panic!("HOOKBUS_TEST_STORE must be sled or postgres, not {other:?}"),
    }
}

/// The store of a test's folder: the folder itself on sled; on PostgreSQL
/// a schema of the folder's own (the same one each time the test, or a
/// child process it starts, reopens the folder; new, since every folder
/// is a new temporary one). A [`TestDir`] drops the schemas of its folder
/// and of the folders under it when it goes; `.ci/run` also drops every
/// `hbit_` schema after the run (what a killed test run left).
fn store(b: Builder, dir: &Path) -> Builder {
    if !on_postgres() {
        return b.path(dir);
    }
    #[cfg(feature = "postgres")]
    {
        b.postgres(postgres::url()).postgres_schema(pg_schema(dir))
    }
    #[cfg(not(feature = "postgres"))]
    panic!("HOOKBUS_TEST_STORE=postgres needs --features postgres")
}

/// The PostgreSQL schema of a test folder (see `store`). Noted for the
/// [`TestDir`] the folder is in, which drops it.
pub fn pg_schema(dir: &Path) -> String {
    // FNV-1a of the folder's path: one schema per folder.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    let schema = format!("hbit_{h:016x}");
    if on_postgres() {
        schemas_made()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.to_path_buf(), schema.clone());
    }
    schema
}

/// The schemas [`pg_schema`] gave out, by folder, not yet dropped.
fn schemas_made() -> &'static std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, String>>
{
    static MADE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, String>>,
    > = std::sync::OnceLock::new();
    MADE.get_or_init(Default::default)
}

/// A test's temporary folder. On PostgreSQL the schemas of the folder and
/// of every folder under it ([`pg_schema`]) are dropped with it, so a
/// test run leaves nothing behind in the database (a run that was killed
/// does: `.ci/run` drops every `hbit_` schema after the tests). Declare it
/// before the bus, so that the bus is closed first; a schema still locked
/// after 5 s (a child process's connection, say) is left in place.
#[derive(Debug)]
pub struct TestDir(tempfile::TempDir);

/// A new [`TestDir`].
pub fn test_dir() -> TestDir {
    TestDir(tempfile::tempdir().unwrap())
}

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let schemas: Vec<String> = {
            let mut made = schemas_made().lock().unwrap_or_else(|e| e.into_inner());
            let mine: Vec<std::path::PathBuf> = made
                .keys()
                .filter(|p| p.starts_with(self.0.path()))
                .cloned()
                .collect();
            mine.iter().filter_map(|p| made.remove(p)).collect()
        };
        // Without the feature no schema is ever made (`store` panics first).
        #[cfg(feature = "postgres")]
        if !schemas.is_empty()
            && let Ok(mut c) = ::postgres::Client::connect(&postgres::url(), ::postgres::NoTls)
        {
            let _ = c.batch_execute("SET lock_timeout = '5s'; SET client_min_messages = warning");
            for schema in schemas {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
        #[cfg(not(feature = "postgres"))]
        drop(schemas);
    }
}

/// The outbox CLI's arguments for a test folder's store.
pub fn cli_store_args(dir: &Path) -> Vec<std::ffi::OsString> {
    if on_postgres() {
        #[cfg(feature = "postgres")]
        return vec![
            "--postgres".into(),
            postgres::url().into(),
            "--schema".into(),
            pg_schema(dir).into(),
        ];
    }
    vec!["--data".into(), dir.into()]
}

/// A builder for tests: loopback allowed, 4 senders, a millisecond retry
/// schedule; on the store `on_postgres` picks.
pub fn builder(dir: &Path) -> Builder {
    let b = store(Bus::builder(), dir)
        .allow_private_targets(true)
        .senders(4)
        .retry_schedule(vec![Duration::from_millis(10); 3])
        .request_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(2))
        // Tests point many deliveries at dead ports: keep breaker waits short.
        .circuit_breaker(5, Duration::from_millis(100));
    if !on_postgres() {
        return b;
    }
    // A delivery in flight when an instance dies or shuts down is claimed
    // until its lease runs out (the default is the timeouts + 30 s): a
    // lease that tests waiting `LONG` outlast.
    #[cfg(feature = "postgres")]
    return b
        .connect_timeout(Duration::from_secs(2))
        .claim_lease(Duration::from_secs(8));
    #[allow(unreachable_code)]
    b
}

pub fn open(dir: &Path) -> Bus {
    builder(dir).open().expect("open bus")
}

/// A URL on loopback where nothing listens (connection refused).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/hook")
}

/// Polls `cond` every 5 ms; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub const LONG: Duration = Duration::from_secs(30);

/// Checks that the outbox counters equal a recount of the records and that
/// every delivery is listed exactly once, in the listing of its state.
/// Returns the counts. Call it on a quiet outbox (nothing in flight, no
/// retry about to fall due): it reads the store several times.
pub fn consistent(bus: &Bus) -> hookbus::OutboxStats {
    let stats = bus.outbox().stats().unwrap();
    let recount = bus.outbox().recount().unwrap();
    assert_eq!(stats, recount, "stored counters differ from a recount");
    let mut seen = std::collections::HashSet::new();
    for (listing, n) in [
        (bus.outbox().pending(), stats.pending),
        (bus.outbox().delivered(), stats.delivered),
        (bus.outbox().dead(), stats.dead),
    ] {
        let ids: Vec<_> = listing.map(|d| d.unwrap().id).collect();
        assert_eq!(ids.len() as u64, n, "listing length differs from the count");
        for id in ids {
            assert!(seen.insert(id), "delivery {id} is listed twice");
        }
    }
    stats
}

/// For a test about sled's own files or process lock (format fixtures,
/// records damaged in sled, sled's first open): `true` when the behaviour
/// tests run on PostgreSQL, after a notice; the test then returns. Such
/// behaviour of the PostgreSQL store is tested in `postgres.rs` and
/// `pg_faults.rs`.
pub fn sled_only(what: &str) -> bool {
    if on_postgres() {
        eprintln!("NOTICE: about sled's own files ({what}): not run on PostgreSQL");
    }
    on_postgres()
}
