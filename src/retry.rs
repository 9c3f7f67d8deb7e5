//! The retry policy, in one place: what an attempt's outcome means for its
//! delivery, and how long to wait before the next attempt.

use std::time::Duration;

use crate::record::{Attempt, AttemptErrorKind};

/// A `Retry-After` longer than this is cut to it, so a receiver cannot park
/// a delivery for days.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// 2xx: done.
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Give up: the schedule is spent or the failure is final.
    Dead(String),
    /// 410 Gone: the subscriber wants no more; deactivate the subscription.
    Gone,
}

/// Decides the fate of a delivery after attempt number `attempt.number`
/// (1-based), given the retry schedule. `jitter` is uniform in `[0, 1)`.
///
/// * 2xx → delivered.
/// * 410 → gone (the subscription is deactivated, its pending deliveries die).
/// * a refused (internal) target → dead at once: retrying cannot help.
/// * anything else (3xx, 4xx, 5xx, timeout, connection error) → retry after
///   `schedule[number - 1]` ±20 %, or after `Retry-After` (429/503 only,
///   capped at [`MAX_RETRY_AFTER`]) when that is longer; once the schedule is
///   spent → dead.
pub(crate) fn decide(
    schedule: &[Duration],
    attempt: &Attempt,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Decision {
    match attempt.status {
        Some(200..=299) => return Decision::Delivered,
        Some(410) => return Decision::Gone,
        _ => {}
    }
    if let Some(e) = &attempt.error
        && e.kind == AttemptErrorKind::Blocked
    {
        return Decision::Dead(format!("target refused: {}", e.message));
    }
    let index = attempt.number.saturating_sub(1) as usize;
    let Some(base) = schedule.get(index) else {
        let last = match (&attempt.status, &attempt.error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.to_string(),
            (None, None) => "no response".to_owned(),
        };
        return Decision::Dead(format!(
            "gave up after {} attempts; last: {last}",
            attempt.number
        ));
    };
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    // What `mul_f64` computes, without its panic on overflow.
    let mut delay = Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(*base);
    if matches!(attempt.status, Some(429 | 503))
        && let Some(ra) = retry_after
    {
        delay = delay.max(ra.min(MAX_RETRY_AFTER));
    }
    Decision::Retry(delay)
}

/// Parses a `Retry-After` value: seconds (`120`), or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, or its obsolete RFC 850 and asctime
/// forms), read as the time from now until then (zero once it has passed).
/// `None` when it is neither.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Timestamp;
    use crate::record::AttemptError;

    fn attempt(number: u32, status: Option<u16>, error: Option<AttemptErrorKind>) -> Attempt {
        Attempt {
            number,
            at: Timestamp::from_millis(0),
            duration_ms: 1,
            status,
            error: error.map(|kind| AttemptError {
                kind,
                message: "x".into(),
            }),
            response_excerpt: vec![],
        }
    }

    #[test]
    fn schedule_jitter_and_exhaustion() {
        let s = [Duration::from_secs(10), Duration::from_secs(100)];
        assert_eq!(
            decide(&s, &attempt(1, Some(204), None), None, 0.5),
            Decision::Delivered
        );
        assert_eq!(
            decide(&s, &attempt(1, Some(500), None), None, 0.5),
            Decision::Retry(Duration::from_secs(10))
        );
        assert_eq!(
            decide(&s, &attempt(1, Some(500), None), None, 0.0),
            Decision::Retry(Duration::from_secs(8))
        );
        assert_eq!(
            decide(&s, &attempt(2, Some(302), None), None, 1.0),
            Decision::Retry(Duration::from_secs(120))
        );
        assert!(
            matches!(decide(&s, &attempt(3, Some(500), None), None, 0.5), Decision::Dead(m) if m.contains("3 attempts"))
        );
        assert!(matches!(
            decide(
                &[],
                &attempt(1, None, Some(AttemptErrorKind::Timeout)),
                None,
                0.5
            ),
            Decision::Dead(_)
        ));
    }

    #[test]
    fn extreme_delays_do_not_panic() {
        let s = [Duration::MAX, Duration::ZERO];
        assert_eq!(
            decide(&s, &attempt(1, Some(500), None), None, 1.0),
            Decision::Retry(Duration::MAX)
        );
        assert_eq!(
            decide(&s, &attempt(2, Some(500), None), None, 1.0),
            Decision::Retry(Duration::ZERO)
        );
    }

    #[test]
    fn gone_blocked_and_retry_after() {
        let s = [Duration::from_millis(10)];
        assert_eq!(
            decide(&s, &attempt(1, Some(410), None), None, 0.5),
            Decision::Gone
        );
        assert!(matches!(
            decide(
                &s,
                &attempt(1, None, Some(AttemptErrorKind::Blocked)),
                None,
                0.5
            ),
            Decision::Dead(_)
        ));
        let ra = Some(Duration::from_secs(2));
        assert_eq!(
            decide(&s, &attempt(1, Some(503), None), ra, 0.5),
            Decision::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            decide(
                &s,
                &attempt(1, Some(429), None),
                Some(Duration::from_secs(999_999)),
                0.5
            ),
            Decision::Retry(MAX_RETRY_AFTER)
        );
        // Retry-After on other statuses is not honoured.
        assert_eq!(
            decide(&s, &attempt(1, Some(500), None), ra, 0.5),
            Decision::Retry(Duration::from_millis(10))
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
    }

    /// `Retry-After` in its HTTP-date form (RFC 9110 §10.2.3): the time
    /// until that date; a date already past means no wait. Before, only
    /// seconds were read and a date was ignored.
    #[test]
    fn retry_after_reads_an_http_date() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let far = parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT").unwrap();
        assert!(far > Duration::from_secs(60 * 365 * 86_400), "{far:?}");
        // The obsolete forms RFC 9110 says a recipient must accept.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let asctime = parse_retry_after("Fri Jan  1 00:00:00 2100").unwrap();
        assert!(
            asctime.abs_diff(far) < Duration::from_secs(2),
            "{asctime:?}"
        );
        for bad in ["", "soon", "-5", "1.5", "Fri, 32 Jan 2100 00:00:00 GMT"] {
            assert_eq!(parse_retry_after(bad), None, "{bad}");
        }
    }
}
