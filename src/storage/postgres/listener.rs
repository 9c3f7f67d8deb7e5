//! Instances wake each other: a commit of new deliveries (or of changed
//! subscriptions) notifies the schema's [`channel`], and every instance's
//! listener thread pokes its engine.

use postgres::fallible_iterator::FallibleIterator;

use super::connection::connect;
use crate::error::{Error, Result};

/// The `NOTIFY` channel of a schema: short and fixed, whatever the
/// schema's length (FNV-1a of its name).
pub(super) fn channel(schema: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("hookbus_{h:016x}")
}

/// Listens for the notifications instances send when they commit new
/// deliveries, on a connection and thread of its own, and calls
/// `poke(true)` for each (the engine then looks at once instead of at its
/// next poll); `poke(false)` is called every second to ask whether to go
/// on. Ends when `poke` says `false` or the connection is lost (polling
/// still finds the work then).
pub(crate) fn spawn_listener(
    url: &str,
    schema: &str,
    me: String,
    poke: impl Fn(bool) -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    let mut client = super::connection::off_runtime(|| -> Result<_> {
        let mut client = connect(url)?;
        client.batch_execute(&format!("LISTEN {}", channel(schema)))?;
        Ok(client)
    })?;
    std::thread::Builder::new()
        .name("hookbus-pg-listen".into())
        .spawn(move || {
            loop {
                let mut notifications = client.notifications();
                let next = notifications
                    .timeout_iter(LISTEN_TICK)
                    .next();
                let go_on = match next {
                    Ok(Some(first)) => {
                        // A burst of commits is one poke: what else has
                        // arrived meanwhile is taken with it. This
                        // instance's own commits (the payload is its claim
                        // token) tell it nothing new.
                        let mut news = first.payload() != me;
                        let mut more = notifications.iter();
                        while let Ok(Some(n)) = more.next() {
                            news |= n.payload() != me;
                        }
                        poke(news)
                    }
                    Ok(None) => poke(false),
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL notifications lost; polling goes on");
                        false
                    }
                };
                if !go_on {
                    break;
                }
            }
        })
        .map_err(|source| Error::Spawn {
            name: "hookbus-pg-listen".into(),
            source,
        })
}

/// How often the listener asks whether to go on when nothing arrives (so
/// a shutdown that joins it waits at most this long).
const LISTEN_TICK: std::time::Duration = std::time::Duration::from_millis(200);
