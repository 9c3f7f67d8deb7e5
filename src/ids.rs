//! Identifiers and timestamps.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::util::clip;

thread_local! {
    /// The last millisecond this thread made an id in, and its sequence.
    static V7_STATE: std::cell::Cell<(u64, u16)> = const { std::cell::Cell::new((0, 0)) };
}

/// A uuid v7 from a per-thread generator: the 48-bit millisecond time, a
/// 12-bit sequence that makes ids of one thread strictly increasing (it
/// starts at a random value below 1024 each millisecond and borrows the next
/// millisecond when it runs out), then 62 random bits. Unlike
/// `Uuid::now_v7`, it takes no global lock and makes no system call for
/// randomness, which keeps `publish` cheap from many threads.
fn next_v7() -> Uuid {
    let now = Timestamp::now().as_millis();
    let (ms, seq) = V7_STATE.with(|state| {
        let (last, seq) = state.get();
        let next = if now > last {
            (now, fastrand::u16(..0x400))
        } else if seq < 0xfff {
            (last, seq + 1)
        } else {
            (last + 1, 0)
        };
        state.set(next);
        next
    });
    let mut bytes = [0u8; 10];
    bytes[..2].copy_from_slice(&seq.to_be_bytes());
    bytes[2..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid()
}

/// A string that is not an id: what `FromStr` of [`EventId`],
/// [`SubscriptionId`] and [`DeliveryId`] fails with. It converts into
/// [`Error::InvalidId`](crate::Error::InvalidId).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid id: expected 32 hex digits or a hyphenated uuid")]
pub struct ParseIdError {
    input: String,
}

impl ParseIdError {
    /// The input that is not an id (cut to 200 bytes).
    pub fn input(&self) -> &str {
        &self.input
    }
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        ///
        /// A uuid v7 (time-ordered). `Display` gives 32 lowercase hex digits;
        /// `FromStr` accepts that form or the hyphenated one.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        /// 32 lowercase hex digits in human-readable formats (JSON), the 16
        /// bytes in binary ones.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    Uuid::deserialize(d).map(Self)
                }
            }
        }

        impl $name {
            pub(crate) fn generate() -> Self {
                Self(next_v7())
            }

            /// The id as a uuid.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The id's 16 bytes, as stored in keys.
            pub fn to_bytes(&self) -> [u8; 16] {
                *self.0.as_bytes()
            }

            /// The smallest id made at `ms` (unix ms) or later: a range
            /// bound for ids, which sort by creation time.
            #[allow(dead_code)]
            pub(crate) fn first_at(ms: u64) -> Self {
                let mut b = [0u8; 16];
                b[..6].copy_from_slice(&ms.min(0xFFFF_FFFF_FFFF).to_be_bytes()[2..]);
                Self(Uuid::from_bytes(b))
            }

            #[allow(dead_code)]
            pub(crate) fn from_bytes(b: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(b))
            }

            #[allow(dead_code)]
            pub(crate) fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; 16]>::try_from(b).ok().map(Self::from_bytes)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.0.simple().encode_lower(&mut Uuid::encode_buffer()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.simple())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                let s = s.trim();
                let bad = || ParseIdError { input: clip(s) };
                if s.len() != 32 && s.len() != 36 {
                    return Err(bad());
                }
                Uuid::try_parse(s).map(Self).map_err(|_| bad())
            }
        }
    };
}

id_type!(
    /// Identifies a published event.
    EventId
);
id_type!(
    /// Identifies a subscription.
    SubscriptionId
);
id_type!(
    /// Identifies an operational [`Notice`](crate::Notice).
    NoticeId
);
id_type!(
    /// Identifies one delivery: one event to one subscription. It is sent as
    /// `X-Webhook-Delivery` and stays the same on every attempt and across
    /// restarts, so receivers can de-duplicate on it.
    DeliveryId
);

/// A point in time, in whole milliseconds since the Unix epoch (UTC).
///
/// `Display` gives RFC 3339 (`2026-11-28T09:34:55.123Z`) and `FromStr`
/// reads it (any offset; digits past milliseconds are dropped). In
/// human-readable formats such as JSON it is that string; in binary ones
/// (the store) the millisecond count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(u64);

/// The stored (binary) form of a [`Timestamp`]: exactly what
/// `#[derive(Serialize, Deserialize)]` on `Timestamp(u64)` produced, so the
/// on-disk format does not change.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Timestamp")]
struct StoredTimestamp(u64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            StoredTimestamp(self.0).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Human;
        impl serde::de::Visitor<'_> for Human {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or milliseconds since the Unix epoch")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                u64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom("a timestamp cannot be before 1970"))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(Human)
        } else {
            StoredTimestamp::deserialize(d).map(|t| Timestamp(t.0))
        }
    }
}

/// A string that is not an RFC 3339 timestamp at or after the Unix epoch:
/// what `Timestamp`'s `FromStr` fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not an RFC 3339 timestamp such as 2026-11-28T09:34:55.123Z (at or after 1970)"
)]
pub struct ParseTimestampError {
    input: String,
}

impl FromStr for Timestamp {
    type Err = ParseTimestampError;
    fn from_str(s: &str) -> Result<Self, ParseTimestampError> {
        parse_rfc3339(s.trim()).ok_or_else(|| ParseTimestampError { input: clip(s) })
    }
}

// Why hand-written and not `jiff` or `time` (issue 27, item 8, measured):
// a `Timestamp` holds any `u64` of milliseconds (up to the year
// 584 556 019), and its text must read back for every value (JSON, the
// proptest `timestamps_round_trip_through_text_and_json`), while both
// crates stop at the year 9999 (`time`'s `large-dates`: 999 999). The
// civil-date arithmetic would stay for the rest, so a crate adds a second
// path instead of removing one, and it costs every build of the library
// 4 s (`time`, 5 crates) to 7 s (`jiff`, 2 crates) of compile time.

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, with years of four or more
/// digits (so that every `Display` output reads back). `None` when it is
/// not that, is not a real date, or is before the epoch or past `u64` ms.
fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    fn num(s: &str) -> Option<u64> {
        (!s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    }
    let (date, rest) = s.split_at_checked(s.find(['T', 't', ' '])?)?;
    let rest = &rest[1..];
    let mut date_parts = date.rsplitn(3, '-');
    let (d, m, y) = (date_parts.next()?, date_parts.next()?, date_parts.next()?);
    if y.len() < 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d == 0 || d > month_days[(m - 1) as usize] {
        return None;
    }
    // The offset: `Z`, or `+HH:MM` / `-HH:MM` after the time.
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(at);
        let (sign, off) = off.split_at(1);
        let (oh, om) = off.split_once(':')?;
        if oh.len() != 2 || om.len() != 2 {
            return None;
        }
        let (oh, om) = (num(oh)?, num(om)?);
        if oh > 23 || om > 59 {
            return None;
        }
        let secs = i64::try_from(oh * 3600 + om * 60).ok()?;
        (t, if sign == "-" { -secs } else { secs })
    };
    let (hms, frac) = match time.split_once('.') {
        Some((hms, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (hms, f),
        Some(_) => return None,
        None => (time, ""),
    };
    let mut hms_parts = hms.split(':');
    let (hh, mm, ss) = (hms_parts.next()?, hms_parts.next()?, hms_parts.next()?);
    if hms_parts.next().is_some() || hh.len() != 2 || mm.len() != 2 || ss.len() != 2 {
        return None;
    }
    let (hh, mm, ss) = (num(hh)?, num(mm)?, num(ss)?);
    // 60 is a leap second; it counts as the last second of its minute.
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms: u64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let days = days_from_civil(i128::from(y), m, d);
    let secs =
        days * 86_400 + i128::from(hh * 3600 + mm * 60 + ss.min(59)) - i128::from(offset_secs);
    let total = secs.checked_mul(1000)? + i128::from(ms);
    u64::try_from(total).ok().map(Timestamp)
}

/// A proleptic Gregorian date to days since 1970-01-01 (H. Hinnant's
/// algorithm, the inverse of `civil_from_days`).
fn days_from_civil(y: i128, m: u64, d: u64) -> i128 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i128::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i128::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Timestamp {
    /// Now, by the system clock.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(&self) -> u64 {
        self.0
    }

    /// From a `SystemTime` (times before 1970 become the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// As a `SystemTime`.
    pub fn to_system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// This time plus `d`, saturating.
    pub fn saturating_add(&self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(&self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_formats_as_rfc3339() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        // 2026-11-28T09:34:55.123Z
        assert_eq!(
            Timestamp(1_795_858_495_123).to_string(),
            "2026-11-28T09:34:55.123Z"
        );
        assert_eq!(
            Timestamp(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn timestamps_parse_rfc3339() {
        let t = |s: &str| s.parse::<Timestamp>().map(|t| t.as_millis());
        assert_eq!(t("2026-11-28T09:34:55.123Z"), Ok(1_795_858_495_123));
        assert_eq!(t("2026-11-28T10:34:55.123+01:00"), Ok(1_795_858_495_123));
        assert_eq!(t("2026-11-28t09:34:55.1234567z"), Ok(1_795_858_495_123));
        assert_eq!(t("2026-11-28 08:04:55-01:30"), Ok(1_795_858_495_000));
        assert_eq!(t("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(t("2000-02-29T00:00:00.000Z"), Ok(951_782_400_000));
        for bad in [
            "",
            "yesterday",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+00:01",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T09:34:55",
            "2026-11-28T09:34:55.Z",
            "26-11-28T09:34:55Z",
            "2026-11-28T9:34:55Z",
            "2026-11-28T09:34:55+1:00",
            "+2026-11-28T09:34:55Z",
            "99999999999999-01-01T00:00:00Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        assert_eq!(
            Timestamp(u64::MAX).to_string().parse::<Timestamp>(),
            Ok(Timestamp(u64::MAX))
        );
    }

    #[test]
    fn timestamps_are_strings_in_json_and_millis_in_the_store() {
        let t = Timestamp(1_795_858_495_123);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#""2026-11-28T09:34:55.123Z""#
        );
        assert_eq!(
            serde_json::from_str::<Timestamp>(r#""2026-11-28T09:34:55.123Z""#).unwrap(),
            t
        );
        assert_eq!(
            serde_json::from_str::<Timestamp>("1795858495123").unwrap(),
            t
        );
        assert!(serde_json::from_str::<Timestamp>("-1").is_err());
        // The stored form is bincode's varint of the u64, as before.
        let cfg = bincode::config::standard();
        let stored = bincode::serde::encode_to_vec(t, cfg).unwrap();
        assert_eq!(
            stored,
            bincode::serde::encode_to_vec(1_795_858_495_123u64, cfg).unwrap()
        );
        let (back, _): (Timestamp, usize) =
            bincode::serde::decode_from_slice(&stored, cfg).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn generated_ids_are_v7_and_increase_within_a_thread() {
        let ids: Vec<EventId> = (0..20_000).map(|_| EventId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert!(ids.iter().all(|i| i.as_uuid().get_version_num() == 7));
        assert!(
            ids.iter()
                .all(|i| i.as_uuid().get_variant() == uuid::Variant::RFC4122)
        );
        let ms = ids[0].as_uuid().get_timestamp().unwrap().to_unix();
        let now = Timestamp::now().as_millis() / 1000;
        assert!(now.abs_diff(ms.0) <= 2);
        let other = std::thread::spawn(EventId::generate).join().unwrap();
        assert!(!ids.contains(&other));
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = DeliveryId::generate();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(s.parse::<DeliveryId>().unwrap(), id);
        assert_eq!(
            id.as_uuid()
                .hyphenated()
                .to_string()
                .parse::<DeliveryId>()
                .unwrap(),
            id
        );
        let e = "nope".parse::<DeliveryId>().unwrap_err();
        assert_eq!(e.input(), "nope");
    }
}
