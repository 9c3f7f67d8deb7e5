//! The sled database itself: its configuration (the flusher's interval),
//! opening it (waiting briefly for a lock this process still holds), what
//! its errors on open mean, and whether it holds nothing. A leaf: it uses
//! no other room of the sled store.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Whether a sled database holds nothing at all: no data in its default
/// tree and no other tree.
pub(super) fn is_empty_db(db: &sled::Db) -> Result<bool> {
    let names = db.tree_names();
    Ok(db.is_empty() && names.iter().all(|n| n.as_ref() == b"__sled__default"))
}

/// How often sled's background flusher runs (ms). It is also what drives
/// sled 0.34's segment cleaner: each run relocates the live pages of at most
/// ONE drained segment (`SegmentCleaner::pop` answers `None` once that
/// segment's page list is used up, which ends the run), besides the one page
/// relocated per page consolidation on the write path. hookbus keeps records
/// that are never written again (unacknowledged notices, dead letters with
/// their delivery, attempts, event and index entries) next to fast-churning
/// delivery records; the cleaner moves such cold pages into the segment being
/// written, so nearly every segment holds one and none frees by itself. At
/// sled's usual 500 ms the cleaner then frees about 1 MB/s while a busy bus
/// writes several MB/s of log, and the file grew without bound (soak, 200
/// events/s × 10 deliveries, 10 s retention: +1.6 MB/s, 194 MB after 120 s);
/// at 20 ms it stays at ~12 MB (~21 MB at 400 events/s). The flusher also
/// `fsync`s the log on each run, so this also bounds what a power loss can
/// take of flushed writes (see [`crate::Durability`]).
const FLUSH_EVERY_MS: u64 = 20;

pub(super) fn sled_config(path: &Path, cache_capacity: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .flush_every_ms(Some(FLUSH_EVERY_MS))
}

pub(super) fn open_db(path: &Path, cache_capacity: u64, deadline: Instant) -> Result<sled::Db> {
    let config = sled_config(path, cache_capacity);
    // A store closed a moment ago in this process can hold its file lock
    // until sled's I/O threads finish: wait for it, briefly.
    loop {
        match config.open().map_err(|e| map_open_error(e, path)) {
            Err(Error::StoreLocked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn map_open_error(e: sled::Error, path: &Path) -> Error {
    match &e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            Error::StoreLocked {
                path: path.to_path_buf(),
            }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => Error::NotAStore {
            path: path.to_path_buf(),
            reason: format!("sled could not open it: {e}"),
        },
        _ => Error::from(e),
    }
}
