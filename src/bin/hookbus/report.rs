//! What the read commands print: tables for people, JSON for scripts.

use hookbus::{Bus, Delivery, DeliveryId, DeliveryState, SubscriptionId};
use serde_json::{Value, json};

fn ms(t: Option<u64>) -> String {
    t.map(|v| format!("{v} ms")).unwrap_or_default()
}

pub(crate) fn health(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
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

pub(crate) fn stats(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
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

pub(crate) fn subscriptions(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
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

pub(crate) fn quarantined(bus: &Bus, as_json: bool) -> Result<String, hookbus::Error> {
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

pub(crate) fn delivery_json(d: &Delivery) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}

pub(crate) fn list(
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

pub(crate) fn show(
    bus: &Bus,
    as_json: bool,
    id: DeliveryId,
) -> Result<String, Box<dyn std::error::Error>> {
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

/// An aligned text table: a header, a line of dashes under it, columns two
/// spaces apart, no trailing spaces; `(none)` under the header when there
/// are no rows.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let empty = rows.is_empty();
    let mut t = comfy_table::Table::new();
    // Only the line under the header (position 5 of comfy-table's preset).
    t.load_preset("     -             ")
        .set_header(headers.iter().copied())
        .add_rows(rows);
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    let mut out = t.trim_fmt();
    if empty {
        out.push_str("\n(none)");
    }
    out
}
