//! Inspect and repair a hookbus outbox from the command line.
//!
//! ```text
//! cargo run --example outbox -- --data DIR stats
//! cargo run --example outbox -- --data DIR subscriptions
//! cargo run --example outbox -- --data DIR list --state dead --limit 20
//! cargo run --example outbox -- --data DIR show DELIVERY_ID
//! cargo run --example outbox -- --data DIR retry --all-dead
//! cargo run --example outbox -- --data DIR purge --delivered-before 7d
//! cargo run --example outbox -- --data DIR health
//! cargo run --example outbox -- --data DIR replay --subscription ID --since 2h
//! cargo run --example outbox -- --data DIR replay --event ID
//! cargo run --example outbox -- --data DIR tail --for 1m
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
//! A PostgreSQL store (built with `--features postgres`) can be inspected
//! and repaired while the application's instances run:
//!
//! ```text
//! cargo run --features postgres --example outbox -- --postgres "host=127.0.0.1 user=postgres dbname=app" --schema hookbus stats
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hookbus::{Bus, Delivery, DeliveryId, DeliveryState, SubscriptionId, Timestamp};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "outbox", about = "Inspect and repair a hookbus outbox")]
struct Cli {
    /// The store folder (a sled store).
    #[arg(long, value_name = "DIR", required_unless_present = "postgres")]
    data: Option<PathBuf>,
    /// A PostgreSQL store's connection string (feature `postgres`).
    #[arg(long, value_name = "URL", conflicts_with = "data")]
    postgres: Option<String>,
    /// The PostgreSQL store's schema.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "hookbus",
        requires = "postgres"
    )]
    schema: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

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
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, required_unless_present = "dead_before")]
        delivered_before: Option<Duration>,
        /// Dead letters older than this age.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
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
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        run_for: Option<Duration>,
        /// Start with deliveries that finished within this age (default:
        /// only new ones).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<Duration>,
    },
}

/// An age before now (`2h`) or a time (`2026-12-04T09:00:00Z`).
fn parse_when(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let age = parse_duration(s).map_err(|_| {
        format!("`{s}` is neither an age such as 2h or 7d nor a time such as 2026-12-04T09:00:00Z")
    })?;
    Ok(Timestamp::from_millis(
        Timestamp::now()
            .as_millis()
            .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
    ))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h, d or w")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read the output went away (`outbox tail | head`):
        // nothing more to say, and nothing went wrong.
        Err(e) if is_broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store without sending anything (inspection only) and without
/// retention (the application's windows may be longer than the defaults:
/// this tool removes nothing unless told to).
fn open(cli: &Cli) -> Result<Bus, Box<dyn std::error::Error>> {
    if let Some(url) = &cli.postgres {
        #[cfg(feature = "postgres")]
        return Ok(Bus::builder()
            .postgres(url)
            .postgres_schema(&cli.schema)
            .deliver(false)
            .keep_delivered_for(None)
            .keep_dead_for(None)
            .open()?);
        #[cfg(not(feature = "postgres"))]
        return Err(format!(
            "--postgres {url}: this build has no PostgreSQL support (build with --features postgres)"
        )
        .into());
    }
    let data = cli
        .data
        .as_ref()
        .ok_or("give --data DIR or --postgres URL")?;
    if !data.exists() {
        return Err(format!("no store at {}", data.display()).into());
    }
    Ok(Bus::builder()
        .path(data)
        .deliver(false)
        .keep_delivered_for(None)
        .keep_dead_for(None)
        .open()?)
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let bus = open(&cli)?;
    let out = match cli.command {
        Cmd::Stats => stats(&bus, cli.json)?,
        Cmd::Subscriptions => subscriptions(&bus, cli.json)?,
        Cmd::List {
            state,
            subscription,
            limit,
            after,
        } => list(&bus, cli.json, state, subscription, limit, after)?,
        Cmd::Show { id } => show(&bus, cli.json, id)?,
        Cmd::Quarantined => quarantined(&bus, cli.json)?,
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
        Cmd::Health => health(&bus, cli.json)?,
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
            tail(&bus, cli.json, run_for, since)?;
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

fn ms(t: Option<u64>) -> String {
    t.map(|v| format!("{v} ms")).unwrap_or_default()
}

fn health(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
    let all = bus.subscriptions().health_all()?;
    if as_json {
        return Ok(serde_json::to_string(&all).unwrap_or_default());
    }
    let rows = all
        .iter()
        .map(|h| {
            vec![
                format!("{:?}", h.status).to_lowercase(),
                h.name.clone(),
                h.subscription.to_string(),
                h.consecutive_failures.to_string(),
                h.failing_since.map(|t| t.to_string()).unwrap_or_default(),
                h.last_failure_reason.clone().unwrap_or_default(),
                format!("{}/{}", h.successes, h.attempts),
                ms(h.latency_p50_ms),
                ms(h.latency_p99_ms),
                h.backlog.to_string(),
                h.disabled_reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "status",
            "name",
            "subscription",
            "failing",
            "since",
            "last failure",
            "ok/all",
            "p50",
            "p99",
            "backlog",
            "disabled because",
        ],
        rows,
    ))
}

/// Prints deliveries as they finish, polling the finished listings from a
/// cursor each; bounded by `run_for` when given.
fn tail(
    bus: &Bus,
    as_json: bool,
    run_for: Option<Duration>,
    since: Option<Duration>,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    const PAGE: usize = 1000;
    let start = std::time::Instant::now();
    let horizon = Timestamp::from_system_time(
        std::time::SystemTime::now()
            .checked_sub(since.unwrap_or(Duration::ZERO))
            .unwrap_or(std::time::UNIX_EPOCH),
    );
    let outbox = bus.outbox();
    // Per finished state: the last delivery printed (the cursor), and the
    // finish time of the last ones printed with their ids, so a listing
    // started again (the cursor was retried or purged) prints nothing twice.
    struct Follow {
        state: DeliveryState,
        cursor: Option<DeliveryId>,
        last_at: Timestamp,
        at_last: std::collections::HashSet<DeliveryId>,
    }
    let mut follows: Vec<Follow> = [DeliveryState::Delivered, DeliveryState::Dead]
        .into_iter()
        .map(|state| Follow {
            state,
            cursor: None,
            last_at: horizon,
            at_last: Default::default(),
        })
        .collect();
    let stdout = std::io::stdout();
    loop {
        let mut batch = Vec::new();
        let mut full = false;
        for f in &mut follows {
            let listing = match f.cursor {
                Some(c) => outbox.list_after(f.state, c),
                None => outbox.list(f.state),
            };
            let mut n = 0;
            for d in listing.take(PAGE) {
                n += 1;
                let d = match d {
                    Ok(d) => d,
                    Err(
                        hookbus::Error::CursorMoved { .. } | hookbus::Error::DeliveryNotFound(_),
                    ) => {
                        f.cursor = None;
                        break;
                    }
                    // A damaged record: said, and stepped over.
                    Err(e @ hookbus::Error::Corrupt { .. }) => {
                        eprintln!("skipped a damaged record: {e}");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                f.cursor = Some(d.id);
                let Some(at) = d.finished_at else { continue };
                if at < f.last_at || (at == f.last_at && f.at_last.contains(&d.id)) {
                    continue;
                }
                if at > f.last_at {
                    f.last_at = at;
                    f.at_last.clear();
                }
                f.at_last.insert(d.id);
                batch.push(d);
            }
            full |= n == PAGE;
        }
        batch.sort_by_key(|d| d.finished_at);
        let mut out = stdout.lock();
        for d in &batch {
            if as_json {
                writeln!(out, "{}", delivery_json(d))?;
            } else {
                writeln!(
                    out,
                    "{}  {:<9}  {}  {}  attempts={}  {}",
                    d.finished_at.map(|t| t.to_string()).unwrap_or_default(),
                    d.state.to_string(),
                    d.id,
                    d.event_name,
                    d.attempts,
                    d.last_status
                        .map(|s| format!("HTTP {s}"))
                        .or_else(|| d.last_error.clone())
                        .unwrap_or_default()
                )?;
            }
        }
        out.flush()?;
        drop(out);
        if run_for.is_some_and(|r| start.elapsed() >= r) {
            return Ok(());
        }
        // Catching up on a long history: no pause between full pages.
        if !full {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn stats(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
    let s = bus.outbox().stats()?;
    let size = bus.outbox().size_on_disk()?;
    Ok(if as_json {
        json!({"pending": s.pending, "delivered": s.delivered, "dead": s.dead, "quarantined": s.quarantined, "sizeOnDisk": size}).to_string()
    } else {
        table(
            &["state", "count"],
            vec![
                vec!["pending".into(), s.pending.to_string()],
                vec!["delivered".into(), s.delivered.to_string()],
                vec!["dead".into(), s.dead.to_string()],
                vec!["quarantined".into(), s.quarantined.to_string()],
                vec!["(bytes on disk)".into(), size.to_string()],
            ],
        )
    })
}

fn subscriptions(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
    let subs = bus.subscriptions().list()?;
    Ok(if as_json {
        serde_json::to_string(&subs).unwrap_or_default()
    } else {
        let rows = subs
            .iter()
            .map(|s| {
                vec![
                    s.id.to_string(),
                    s.name.clone(),
                    if s.active { "yes".into() } else { "no".into() },
                    s.events.join(","),
                    s.url.clone(),
                    s.tenant.clone().unwrap_or_default(),
                    s.owner.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &["id", "name", "active", "events", "url", "tenant", "owner"],
            rows,
        )
    })
}

fn quarantined(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
    let items: Vec<(String, Vec<u8>)> = bus.outbox().quarantined().collect::<Result<_, _>>()?;
    Ok(if as_json {
        json!(
            items
                .iter()
                .map(|(k, v)| json!({"key": k, "bytes": v.len(), "hex": hex::encode(v)}))
                .collect::<Vec<_>>()
        )
        .to_string()
    } else {
        table(
            &["key", "bytes"],
            items
                .iter()
                .map(|(k, v)| vec![k.clone(), v.len().to_string()])
                .collect(),
        )
    })
}

fn delivery_json(d: &Delivery) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}

fn list(
    bus: &Bus,
    as_json: bool,
    state: Option<DeliveryState>,
    subscription: Option<SubscriptionId>,
    limit: usize,
    after: Option<DeliveryId>,
) -> Result<String, Box<dyn std::error::Error>> {
    let outbox = bus.outbox();
    // One more than a page tells whether there is a next page.
    let items: Box<dyn Iterator<Item = hookbus::Result<Delivery>>> = match (subscription, state) {
        (Some(sub), state) => {
            let all = outbox
                .for_subscription(sub, false)
                .filter(move |d| state.is_none_or(|s| d.as_ref().is_ok_and(|d| d.state == s)));
            // A subscription's deliveries are few enough to skip to the cursor.
            match after {
                Some(a) => Box::new(
                    all.skip_while(move |d| d.as_ref().is_ok_and(|d| d.id != a))
                        .skip(1),
                ),
                None => Box::new(all),
            }
        }
        (None, Some(state)) => match after {
            Some(a) => Box::new(outbox.list_after(state, a)),
            None => Box::new(outbox.list(state)),
        },
        (None, None) => match after {
            Some(a) => Box::new(outbox.all_after(a)),
            None => Box::new(outbox.all()),
        },
    };
    let mut page: Vec<Delivery> = items
        .take(limit.saturating_add(1))
        .collect::<Result<_, _>>()?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more
        .then(|| page.last().map(|d| d.id.to_string()))
        .flatten();
    if as_json {
        return Ok(
            json!({"deliveries": page.iter().map(delivery_json).collect::<Vec<_>>(), "next": next})
                .to_string(),
        );
    }
    let rows = page
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                d.event_name.clone(),
                d.state.to_string(),
                d.attempts.to_string(),
                d.subscription_id.to_string(),
                d.next_attempt_at
                    .or(d.finished_at)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                d.last_status
                    .map(|s| s.to_string())
                    .or_else(|| d.last_error.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "delivery",
            "event",
            "state",
            "attempts",
            "subscription",
            "due/finished",
            "last",
        ],
        rows,
    );
    if let Some(n) = next {
        out.push_str(&format!("\n-- more: add --after {n}"));
    }
    Ok(out)
}

fn show(bus: &Bus, as_json: bool, id: DeliveryId) -> Result<String, Box<dyn std::error::Error>> {
    let outbox = bus.outbox();
    let d = outbox.get(id)?.ok_or_else(|| format!("no delivery {id}"))?;
    let event = outbox.event(d.event_id)?;
    let attempts = outbox.attempts(id)?;
    let payload = event
        .as_ref()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned());
    if as_json {
        let payload: Value = payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(Value::Null);
        return Ok(json!({
            "delivery": delivery_json(&d),
            "payload": payload,
            "attempts": attempts.iter().map(|a| serde_json::to_value(a).unwrap_or(Value::Null)).collect::<Vec<_>>(),
        })
        .to_string());
    }
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
    field(&mut out, "delivery", d.id.to_string());
    field(&mut out, "state", d.state.to_string());
    field(
        &mut out,
        "event",
        format!("{} ({})", d.event_name, d.event_id),
    );
    field(&mut out, "subscription", d.subscription_id.to_string());
    field(&mut out, "created", d.created_at.to_string());
    if let Some(t) = d.next_attempt_at {
        field(&mut out, "next attempt", t.to_string());
    }
    if let Some(t) = d.finished_at {
        field(&mut out, "finished", t.to_string());
    }
    if let Some(e) = &d.last_error {
        field(&mut out, "last error", e.clone());
    }
    field(
        &mut out,
        "payload",
        payload.unwrap_or_else(|| "(event record missing)".into()),
    );
    out.push('\n');
    let rows = attempts
        .iter()
        .map(|a| {
            vec![
                a.number.to_string(),
                a.at.to_string(),
                format!("{} ms", a.duration_ms),
                a.status.map(|s| s.to_string()).unwrap_or_default(),
                a.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                String::from_utf8_lossy(&a.response_excerpt)
                    .chars()
                    .take(60)
                    .collect::<String>()
                    .replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    out.push_str(&table(
        &["#", "at", "took", "status", "error", "response"],
        rows,
    ));
    Ok(out)
}

/// An aligned text table.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for r in &rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("\n(none)");
    }
    out
}
