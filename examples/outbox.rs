//! Inspect and repair a hookbus outbox from the command line.
//!
//! ```text
//! cargo run --example outbox -- --data DIR stats
//! cargo run --example outbox -- --data DIR subscriptions
//! cargo run --example outbox -- --data DIR list --state dead --limit 20
//! cargo run --example outbox -- --data DIR show DELIVERY_ID
//! cargo run --example outbox -- --data DIR retry --all-dead
//! cargo run --example outbox -- --data DIR purge --delivered-before 7d
//! ```
//!
//! Every read command takes `--json` for scripts. sled lets one process hold
//! a store: while your application runs, this tool says so and exits 1; use
//! the same calls in-process through `bus.outbox()` instead.
//!
//! A PostgreSQL store (built with `--features postgres`) can be inspected
//! and repaired while the application's instances run:
//!
//! ```text
//! cargo run --features postgres --example outbox -- --postgres "host=127.0.0.1 user=postgres dbname=app" --schema hookbus stats
//! ```

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
    /// Remove delivered deliveries (and their attempts) older than this.
    Purge {
        /// An age such as 30m, 24h, 7d (or 0s for all).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        delivered_before: Duration,
    },
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
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store without sending anything (inspection only).
fn open(cli: &Cli) -> Result<Bus, Box<dyn std::error::Error>> {
    if let Some(url) = &cli.postgres {
        #[cfg(feature = "postgres")]
        return Ok(Bus::builder()
            .postgres(url)
            .postgres_schema(&cli.schema)
            .deliver(false)
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
    Ok(Bus::builder().path(data).deliver(false).open()?)
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
        Cmd::Purge { delivered_before } => {
            let cutoff =
                Timestamp::from_system_time(std::time::SystemTime::now() - delivered_before);
            let n = bus.outbox().purge_delivered_before(cutoff)?;
            format!("purged {n} delivered deliveries finished before {cutoff}")
        }
    };
    bus.shutdown(Duration::from_secs(5))?;
    println!("{out}");
    Ok(())
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
                    s.owner.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(&["id", "name", "active", "events", "url", "owner"], rows)
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
