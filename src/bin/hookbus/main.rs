//! `hookbus`: inspect and repair a hookbus outbox from the command line.
//!
//! Installed with `cargo install hookbus --features cli` (from a checkout:
//! `cargo run --features cli --bin hookbus -- ARGS`).
//!
//! ```text
//! hookbus --data DIR stats
//! hookbus --data DIR subscriptions
//! hookbus --data DIR list --state dead --limit 20
//! hookbus --data DIR show DELIVERY_ID
//! hookbus --data DIR retry --all-dead
//! hookbus --data DIR purge --delivered-before 7d
//! hookbus --data DIR health
//! hookbus --data DIR replay --subscription ID --since 2h
//! hookbus --data DIR replay --event ID
//! hookbus --data DIR tail --for 1m
//! ```
//!
//! Every read command takes `--json` for scripts. sled lets one process hold
//! a store: while your application runs, this tool says so and exits 1; use
//! the same operations in-process (`bus.outbox()`,
//! `bus.subscriptions().health_all()`, `bus.notices()`) or through the REST
//! adapter's operator routes (`/webhooks/admin/...`, role `admin`: see
//! `hookbus::rest`) instead. What this tool changes (retries, replays) is
//! sent by the application when it runs.
//!
//! A PostgreSQL store can be inspected and repaired while the
//! application's instances run. The connection string and schema come from
//! `--postgres URL --schema NAME`, or from `HOOKBUS_DATABASE_URL` and
//! `HOOKBUS_SCHEMA` (the schema defaults to `hookbus`, as the library's
//! does):
//!
//! ```text
//! hookbus --postgres "host=127.0.0.1 user=postgres dbname=app" --schema hookbus stats
//! HOOKBUS_DATABASE_URL=postgres://app@db/app HOOKBUS_SCHEMA=hookbus hookbus health
//! ```

mod report;
mod tail;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hookbus::{Bus, DeliveryId, DeliveryState, SubscriptionId, Timestamp};
use serde_json::json;

/// The PostgreSQL connection string when neither `--data` nor `--postgres`
/// is given.
const DATABASE_URL_ENV: &str = "HOOKBUS_DATABASE_URL";
/// The PostgreSQL schema when `--schema` is not given.
const SCHEMA_ENV: &str = "HOOKBUS_SCHEMA";

/// The command line.
#[derive(Parser)]
#[command(
    name = "hookbus",
    version,
    about = "Inspect and repair a hookbus outbox (sled or PostgreSQL)",
    after_help = "The store: --data DIR (sled, while the application is stopped), or \
                  --postgres URL (while it runs), or HOOKBUS_DATABASE_URL when neither is given. \
                  The PostgreSQL schema: --schema, or HOOKBUS_SCHEMA, or `hookbus`."
)]
struct Cli {
    /// The store folder of a sled store (only while the application is
    /// stopped: sled lets one process hold it).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// A PostgreSQL store's connection string (default:
    /// $HOOKBUS_DATABASE_URL, when --data is not given).
    #[arg(long, value_name = "URL", conflicts_with = "data")]
    postgres: Option<String>,
    /// The PostgreSQL store's schema (default: $HOOKBUS_SCHEMA, else
    /// `hookbus`).
    #[arg(long, value_name = "NAME", conflicts_with = "data")]
    schema: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

/// What to do.
#[derive(Subcommand)]
enum Cmd {
    /// Delivery counts by state, and the store size.
    Stats,
    /// Every subscription.
    Subscriptions,
    /// Deliveries, a page at a time.
    List {
        /// pending, delivered or dead.
        #[arg(long)]
        state: Option<DeliveryState>,
        /// Only this subscription's deliveries.
        #[arg(long, value_name = "ID")]
        subscription: Option<SubscriptionId>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this delivery (the last one of the previous page).
        #[arg(long, value_name = "DELIVERY_ID")]
        after: Option<DeliveryId>,
    },
    /// Records moved aside as damaged: original key and size.
    Quarantined,
    /// One delivery with its event payload and every attempt.
    Show {
        /// The delivery id.
        id: DeliveryId,
    },
    /// Make dead deliveries due again.
    Retry {
        /// One delivery.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<DeliveryId>,
        /// Every dead delivery.
        #[arg(long)]
        all_dead: bool,
        /// With --all-dead: only this subscription's.
        #[arg(long, value_name = "ID", requires = "all_dead")]
        subscription: Option<SubscriptionId>,
    },
    /// Remove finished deliveries (and their attempts) older than this.
    Purge {
        /// Delivered ones older than this age, such as 30m, 24h, 7d (or 0s
        /// for all).
        #[arg(long, value_name = "DURATION", value_parser = parse_age, required_unless_present = "dead_before")]
        delivered_before: Option<Duration>,
        /// Dead letters older than this age.
        #[arg(long, value_name = "DURATION", value_parser = parse_age)]
        dead_before: Option<Duration>,
    },
    /// Every subscription's endpoint health, failing ones first.
    Health,
    /// Send again: one stored event, or what a subscription was sent in a
    /// span (at most 14 days).
    Replay {
        /// The event to send again (to --subscription, or to every active
        /// subscription it reaches).
        #[arg(long, value_name = "ID", required_unless_present = "since")]
        event: Option<hookbus::EventId>,
        /// The subscription.
        #[arg(long, value_name = "ID", required_unless_present = "event")]
        subscription: Option<SubscriptionId>,
        /// The span's start: an age (2h, 1d) or a time (RFC 3339).
        #[arg(long, value_name = "AGE|TIME", value_parser = parse_when, conflicts_with = "event", requires = "subscription")]
        since: Option<Timestamp>,
        /// The span's end (default: now).
        #[arg(long, value_name = "AGE|TIME", value_parser = parse_when, requires = "since")]
        until: Option<Timestamp>,
    },
    /// Print deliveries as they finish (delivered and dead), oldest first.
    Tail {
        /// Stop after this long (default: run until interrupted).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_age)]
        run_for: Option<Duration>,
        /// Start with deliveries that finished within this age (default:
        /// only new ones).
        #[arg(long, value_name = "DURATION", value_parser = parse_age)]
        since: Option<Duration>,
    },
}

/// An age before now (`2h`) or a time (`2026-12-04T09:00:00Z`).
fn parse_when(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let age = parse_age(s).map_err(|_| {
        format!("`{s}` is neither an age such as 2h or 7d nor a time such as 2026-12-04T09:00:00Z")
    })?;
    Ok(Timestamp::from_millis(
        Timestamp::now()
            .as_millis()
            .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
    ))
}

/// A duration such as `30m`, `24h`, `7d`, `2w` or `1h 30m` (humantime's
/// units: s, m, h, d, w and their long names).
fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as 30m, 24h or 7d ({e})"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read the output went away (`hookbus tail | head`):
        // nothing more to say, and nothing went wrong.
        Err(e) if is_broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the store is: a sled folder, or a PostgreSQL schema.
#[derive(Debug, PartialEq)]
enum Store {
    Sled(PathBuf),
    Postgres { url: String, schema: String },
}

/// The store the flags name, with the environment's PostgreSQL settings
/// where a flag is missing (`env` reads a variable). `--data` wins over
/// `HOOKBUS_DATABASE_URL`.
fn store(cli: &Cli, env: impl Fn(&str) -> Option<String>) -> Result<Store, String> {
    if let Some(dir) = &cli.data {
        return Ok(Store::Sled(dir.clone()));
    }
    let url = cli
        .postgres
        .clone()
        .or_else(|| env(DATABASE_URL_ENV))
        .ok_or("give --data DIR (a sled store) or --postgres URL (or set HOOKBUS_DATABASE_URL)")?;
    let schema = cli
        .schema
        .clone()
        .or_else(|| env(SCHEMA_ENV))
        .unwrap_or_else(|| "hookbus".into());
    Ok(Store::Postgres { url, schema })
}

/// Opens the store without sending anything (inspection only) and without
/// retention (the application's windows may be longer than the defaults:
/// this tool removes nothing unless told to).
fn open(cli: &Cli) -> Result<Bus, Box<dyn std::error::Error>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let builder = match store(cli, env)? {
        Store::Postgres { url, schema } => Bus::builder().postgres(url).postgres_schema(schema),
        Store::Sled(dir) => {
            if !dir.exists() {
                return Err(format!("no store at {}", dir.display()).into());
            }
            Bus::builder().path(dir)
        }
    };
    Ok(builder
        .deliver(false)
        .keep_delivered_for(None)
        .keep_dead_for(None)
        .open()?)
}

/// Runs one command and prints its result.
fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let bus = open(&cli)?;
    let out = match cli.command {
        Cmd::Stats => report::stats(&bus, cli.json)?,
        Cmd::Subscriptions => report::subscriptions(&bus, cli.json)?,
        Cmd::List {
            state,
            subscription,
            limit,
            after,
        } => report::list(&bus, cli.json, state, subscription, limit, after)?,
        Cmd::Show { id } => report::show(&bus, cli.json, id)?,
        Cmd::Quarantined => report::quarantined(&bus, cli.json)?,
        Cmd::Retry { id: Some(id), .. } => {
            bus.outbox().retry(id)?;
            format!("delivery {id} is due again; the application sends it when it runs")
        }
        Cmd::Retry {
            all_dead: true,
            subscription,
            ..
        } => {
            let n = bus.outbox().retry_all_dead(subscription)?;
            format!("{n} dead deliveries are due again; the application sends them when it runs")
        }
        Cmd::Retry { .. } => return Err("give a delivery id or --all-dead".into()),
        Cmd::Purge {
            delivered_before,
            dead_before,
        } => {
            let cutoff = |age: Duration| {
                Timestamp::from_system_time(
                    std::time::SystemTime::now()
                        .checked_sub(age)
                        .unwrap_or(std::time::UNIX_EPOCH),
                )
            };
            let mut lines = Vec::new();
            if let Some(age) = delivered_before {
                let at = cutoff(age);
                let n = bus.outbox().purge_delivered_before(at)?;
                lines.push(format!(
                    "purged {n} delivered deliveries finished before {at}"
                ));
            }
            if let Some(age) = dead_before {
                let at = cutoff(age);
                let n = bus.outbox().purge_dead_before(at)?;
                lines.push(format!("purged {n} dead letters that died before {at}"));
            }
            lines.join("\n")
        }
        Cmd::Health => report::health(&bus, cli.json)?,
        Cmd::Replay {
            event: Some(event),
            subscription,
            ..
        } => {
            let ids = bus.outbox().replay(event, subscription)?;
            if cli.json {
                json!({ "deliveries": ids.iter().map(ToString::to_string).collect::<Vec<_>>() })
                    .to_string()
            } else {
                format!(
                    "event {event}: {} new deliveries; the application sends them when it runs",
                    ids.len()
                )
            }
        }
        Cmd::Replay {
            subscription: Some(sub),
            since: Some(from),
            until,
            ..
        } => {
            let until = until.unwrap_or_else(Timestamp::now);
            let n = bus.outbox().replay_since(sub, from, until)?;
            if cli.json {
                json!({ "replayed": n }).to_string()
            } else {
                format!(
                    "{n} deliveries from {from} until {until} made again; the application sends them when it runs"
                )
            }
        }
        Cmd::Replay { .. } => {
            return Err("give --event ID, or --subscription ID --since AGE".into());
        }
        Cmd::Tail { run_for, since } => {
            tail::tail(&bus, cli.json, run_for, since)?;
            String::new()
        }
    };
    bus.shutdown(Duration::from_secs(5))?;
    if !out.is_empty() {
        // Not `println!`, which panics when the reader has gone.
        writeln!(std::io::stdout().lock(), "{out}")?;
    }
    Ok(())
}

/// Whether `e` is a write to a pipe nobody reads any more.
fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(["hookbus"].iter().chain(args)).unwrap()
    }

    #[test]
    fn the_store_comes_from_flags_then_the_environment() {
        let none = |_: &str| None;
        let env = |name: &str| match name {
            DATABASE_URL_ENV => Some("host=db".to_owned()),
            SCHEMA_ENV => Some("app".to_owned()),
            _ => None,
        };
        let pg = |url: &str, schema: &str| Store::Postgres {
            url: url.into(),
            schema: schema.into(),
        };
        assert_eq!(
            store(&cli(&["--data", "d", "stats"]), env),
            Ok(Store::Sled("d".into()))
        );
        assert_eq!(store(&cli(&["stats"]), env), Ok(pg("host=db", "app")));
        assert_eq!(
            store(&cli(&["--postgres", "host=x", "stats"]), none),
            Ok(pg("host=x", "hookbus"))
        );
        assert_eq!(
            store(
                &cli(&["--postgres", "host=x", "--schema", "s", "stats"]),
                env
            ),
            Ok(pg("host=x", "s"))
        );
        assert!(
            store(&cli(&["stats"]), none)
                .unwrap_err()
                .contains("--data DIR")
        );
        assert!(Cli::try_parse_from(["hookbus", "--data", "d", "--schema", "s", "stats"]).is_err());
    }

    #[test]
    fn ages_read_humantime_units() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age("1w"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["soon", "", "7", "-1h", "99999999999999999999d"] {
            let e = parse_age(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
        let t = parse_when("2026-12-04T09:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2026-12-04T09:00:00.000Z");
        let ago = Timestamp::now().as_millis() - parse_when("1h").unwrap().as_millis();
        assert!((3_600_000..3_610_000).contains(&ago), "{ago}");
        assert!(parse_when("soon").unwrap_err().contains("neither an age"));
    }
}
