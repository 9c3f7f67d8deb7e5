//! Identifiers and timestamps.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, clip};

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
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                let s = s.trim();
                if s.len() != 32 && s.len() != 36 {
                    return Err(Error::InvalidId { input: clip(s) });
                }
                Uuid::try_parse(s)
                    .map(Self)
                    .map_err(|_| Error::InvalidId { input: clip(s) })
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
    /// Identifies one delivery: one event to one subscription. It is sent as
    /// `X-Webhook-Delivery` and stays the same on every attempt and across
    /// restarts, so receivers can de-duplicate on it.
    DeliveryId
);

/// A point in time, in whole milliseconds since the Unix epoch (UTC).
///
/// `Display` gives RFC 3339 (`2026-11-28T09:34:55.123Z`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp(u64);

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
        assert!(matches!(
            "nope".parse::<DeliveryId>(),
            Err(Error::InvalidId { .. })
        ));
    }
}
