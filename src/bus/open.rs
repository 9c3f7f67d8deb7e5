//! Opening a bus: the sled store, or a PostgreSQL store with its
//! listener thread for other instances' notifications.

use std::sync::Arc;

use super::{Bus, Inner};
use crate::config::{Builder, Config};
#[cfg(feature = "postgres")]
use crate::engine::Command;
use crate::engine::Engine;
use crate::error::Result;
use crate::storage;

impl Bus {
    /// Opens (or creates) the store in folder `path` with default settings
    /// and starts the background threads.
    ///
    /// Errors: [`Error::StoreLocked`](crate::Error::StoreLocked) if another
    /// process (or another open `Bus`) holds the store,
    /// [`Error::NotAStore`](crate::Error::NotAStore) if the folder holds
    /// something else,
    /// [`Error::UnsupportedFormat`](crate::Error::UnsupportedFormat) if a
    /// newer hookbus wrote it.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Bus> {
        Builder::new().path(path).open()
    }

    /// A [`Builder`] for non-default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Opens the store with settings made by [`Builder::build`] and starts
    /// the background threads. Errors as [`Bus::open`].
    pub fn open_with(config: Config) -> Result<Bus> {
        let config = Arc::new(config);
        #[cfg(feature = "postgres")]
        if let Some(pg) = &config.postgres {
            // A claim outlives the longest request by a margin.
            let lease = config.claim_lease().unwrap_or_default();
            let (reader, writer) = storage::postgres::open(&pg.url, &pg.schema, lease)?;
            let me = reader.token_hex();
            let sequencer = Some(reader.sequencer());
            let engine = Engine::start(Arc::new(reader), Box::new(writer), config.clone())?;
            let bus = Bus {
                inner: Arc::new(Inner {
                    config: config.clone(),
                    engine,
                    sequencer,
                }),
            };
            // Woken by other instances' commits; it holds no handle, so
            // it never keeps the bus open.
            let weak = Arc::downgrade(&bus.inner);
            let listening =
                storage::postgres::spawn_listener(&pg.url, &pg.schema, me, move |wake| match weak
                    .upgrade()
                {
                    Some(inner) if inner.engine.is_open() => {
                        !wake || inner.engine.send(Command::Poll).is_ok()
                    }
                    _ => false,
                });
            match listening {
                // Joined at shutdown.
                Ok(thread) => bus.inner.engine.adopt(thread),
                Err(e) => {
                    tracing::warn!(error = %e, "no PostgreSQL notifications; instances poll every second")
                }
            }
            return Ok(bus);
        }
        let (reader, writer) = storage::sled::open(
            &config.path,
            config.cache_capacity,
            config.lock_timeout,
            config.durability == crate::config::Durability::PowerLoss,
        )?;
        let engine = Engine::start(Arc::new(reader), Box::new(writer), config.clone())?;
        Ok(Bus {
            inner: Arc::new(Inner {
                config,
                engine,
                #[cfg(feature = "postgres")]
                sequencer: None,
            }),
        })
    }
}

impl Builder {
    /// Opens the store (creating it if needed) and starts the dispatcher and
    /// sender threads. See [`Bus::open`].
    pub fn open(self) -> Result<Bus> {
        Bus::open_with(self.build()?)
    }
}
