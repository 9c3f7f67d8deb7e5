//! What [`crate::Durability::PowerLoss`] adds to a flush: syncing the
//! files sled's own flush leaves to the OS. A leaf: it uses no other room
//! of the sled store.

use std::path::Path;

use crate::error::Result;

/// Syncs what sled's flush leaves to the OS: its log file (`db`, which sled
/// ends with `sync_file_range` on Linux) and the blob files sled writes for
/// large records without any sync, with their folder.
#[derive(Debug)]
pub(super) struct Syncer {
    log: std::fs::File,
    blobs: std::path::PathBuf,
    /// Blob files are named by increasing log sequence numbers: those up to
    /// this one are synced.
    synced_blob: u64,
}

impl Syncer {
    pub(super) fn new(path: &Path) -> Result<Syncer> {
        let log = std::fs::File::open(path.join("db"))?;
        // The folder's entries (db, conf, blobs/) once, now.
        std::fs::File::open(path)?.sync_all()?;
        Ok(Syncer {
            log,
            blobs: path.join("blobs"),
            synced_blob: 0,
        })
    }

    pub(super) fn sync(&mut self) -> Result<()> {
        self.log.sync_data()?;
        let Ok(entries) = std::fs::read_dir(&self.blobs) else {
            return Ok(());
        };
        let mut newest = self.synced_blob;
        let mut any = false;
        for e in entries {
            let e = e?;
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if id > self.synced_blob {
                match std::fs::File::open(e.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled dropped it meanwhile (superseded): nothing to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                newest = newest.max(id);
                any = true;
            }
        }
        if any {
            std::fs::File::open(&self.blobs)?.sync_all()?;
            self.synced_blob = newest;
        }
        Ok(())
    }
}
