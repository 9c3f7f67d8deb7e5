//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): the app's own recorder (a Prometheus or OpenTelemetry
//! exporter) picks them up. Without the feature every function here is
//! empty and compiles away.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `hookbus_events_published_total` | counter | | events stored (that reached at least one subscription) |
//! | `hookbus_deliveries_created_total` | counter | | deliveries made by publishing |
//! | `hookbus_deliveries_delivered_total` | counter | | deliveries a receiver accepted (2xx) |
//! | `hookbus_attempts_failed_total` | counter | `class`: `http_4xx`, `http_5xx`, `http_other`, `timeout`, `connect`, `dns`, `tls`, `blocked`, `protocol`, `other` | failed attempts |
//! | `hookbus_deliveries_dead_total` | counter | | deliveries dead-lettered |
//! | `hookbus_in_flight` | gauge | | requests in flight |
//! | `hookbus_backlog` | gauge | | pending deliveries |
//! | `hookbus_attempt_duration_seconds` | histogram | | time of one attempt |
//! | `hookbus_delivery_latency_seconds` | histogram | | from a delivery's creation (its event's publishing) to its acceptance |
//!
//! Counters count what this process did; with a shared store, sum them over
//! the instances. The gauges are this process's view.

use std::time::Duration;

use crate::delivery::DeliveryState;
use crate::record::Attempt;

/// The class of a failed attempt, the `class` label.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn failure_class(attempt: &Attempt) -> &'static str {
    match (attempt.status, &attempt.error) {
        (Some(400..=499), _) => "http_4xx",
        (Some(500..=599), _) => "http_5xx",
        (Some(_), _) => "http_other",
        (None, Some(e)) => match e.kind {
            crate::record::AttemptErrorKind::Timeout => "timeout",
            crate::record::AttemptErrorKind::Connect => "connect",
            crate::record::AttemptErrorKind::Dns => "dns",
            crate::record::AttemptErrorKind::Tls => "tls",
            crate::record::AttemptErrorKind::Blocked => "blocked",
            crate::record::AttemptErrorKind::Protocol => "protocol",
            crate::record::AttemptErrorKind::Other => "other",
        },
        (None, None) => "other",
    }
}

/// An event was stored with `deliveries` deliveries.
pub(crate) fn published(deliveries: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("hookbus_events_published_total").increment(1);
        metrics::counter!("hookbus_deliveries_created_total")
            .increment(u64::try_from(deliveries).unwrap_or(u64::MAX));
    }
    #[cfg(not(feature = "metrics"))]
    let _ = deliveries;
}

/// An attempt ended; the delivery was in `state` and was created `age` ago.
pub(crate) fn attempt(attempt: &Attempt, state: DeliveryState, age: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!("hookbus_attempt_duration_seconds")
            .record(Duration::from_millis(attempt.duration_ms).as_secs_f64());
        if attempt.succeeded() {
            if state == DeliveryState::Pending {
                metrics::counter!("hookbus_deliveries_delivered_total").increment(1);
                metrics::histogram!("hookbus_delivery_latency_seconds").record(age.as_secs_f64());
            }
        } else {
            metrics::counter!("hookbus_attempts_failed_total", "class" => failure_class(attempt))
                .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (attempt, state, age);
}

/// A delivery was dead-lettered.
pub(crate) fn dead_lettered() {
    #[cfg(feature = "metrics")]
    metrics::counter!("hookbus_deliveries_dead_total").increment(1);
}

/// The end of a dispatcher round: requests in flight and pending
/// deliveries.
pub(crate) fn round(in_flight: usize, backlog: u64) {
    #[cfg(feature = "metrics")]
    {
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!("hookbus_in_flight").set(in_flight as f64);
            metrics::gauge!("hookbus_backlog").set(backlog as f64);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (in_flight, backlog);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Timestamp;
    use crate::record::{AttemptError, AttemptErrorKind};

    fn attempt(status: Option<u16>, kind: Option<AttemptErrorKind>) -> Attempt {
        Attempt {
            number: 1,
            at: Timestamp::now(),
            duration_ms: 1,
            status,
            error: kind.map(|kind| AttemptError {
                kind,
                message: String::new(),
            }),
            response_excerpt: Vec::new(),
        }
    }

    #[test]
    fn failures_are_classed_by_status_then_by_error() {
        assert_eq!(failure_class(&attempt(Some(404), None)), "http_4xx");
        assert_eq!(failure_class(&attempt(Some(503), None)), "http_5xx");
        assert_eq!(failure_class(&attempt(Some(302), None)), "http_other");
        assert_eq!(
            failure_class(&attempt(None, Some(AttemptErrorKind::Timeout))),
            "timeout"
        );
        assert_eq!(
            failure_class(&attempt(None, Some(AttemptErrorKind::Connect))),
            "connect"
        );
        assert_eq!(failure_class(&attempt(None, None)), "other");
    }
}
