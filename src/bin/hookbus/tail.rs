//! `tail`: deliveries as they finish.

use std::time::Duration;

use hookbus::{Bus, DeliveryId, DeliveryState, Timestamp};

/// Prints deliveries as they finish, polling the finished listings from a
/// cursor each; bounded by `run_for` when given.
pub(crate) fn tail(
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
                writeln!(out, "{}", crate::report::delivery_json(d))?;
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
