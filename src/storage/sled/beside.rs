//! The first open of a new store: it is made in a folder beside its path
//! and renamed into place once it holds its format marker, so a crash
//! leaves the path as it was; a later open removes the folders such a crash
//! left beside it.

use std::path::Path;

use super::database::sled_config;
use super::folder::is_sled_entry;
use super::format::STORE_FORMAT;
use super::keys::{META_FORMAT, TREE};
use crate::error::Result;

/// What the folder a new store is made in is called: the store's name,
/// this, and 16 hex digits.
const BESIDE: &str = ".hookbus-new-";

/// The parent folder of `path` and the name of a folder beside it that
/// ends in `BESIDE` and `suffix`; `None` for a path without a last name
/// (`/`, `..`).
fn beside<'a>(path: &'a Path, suffix: &str) -> Option<(&'a Path, std::ffi::OsString)> {
    let name = path.file_name()?;
    let mut beside = name.to_os_string();
    beside.push(BESIDE);
    beside.push(suffix);
    Some((path.parent().unwrap_or(Path::new("")), beside))
}

/// Makes a new store for `path` (missing or an empty folder) in a folder
/// beside it, and renames that into place once the store holds its format
/// marker and its files are synced: a crash before the rename leaves `path`
/// untouched (and a folder that [`remove_stale_beside`] removes), one after
/// it a store. Renaming replaces an empty folder (Linux, macOS) and takes
/// over its permissions. Returns false, having removed its folder, where
/// this cannot be done (the rename fails onto a mount point or across file
/// systems, the parent is not writable, `path` is a symlink): then sled makes
/// the store in place.
pub(super) fn create_beside(path: &Path, cache_capacity: u64) -> bool {
    // Renaming over a symlink would replace the link, not its target.
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return false;
    }
    let Some((parent, name)) = beside(path, &format!("{:016x}", fastrand::u64(..))) else {
        return false;
    };
    let new = parent.join(name);
    let made = (|| -> Result<()> {
        std::fs::create_dir_all(parent)?;
        std::fs::create_dir(&new)?;
        {
            let db = sled_config(&new, cache_capacity).open()?;
            let tree = db.open_tree(TREE)?;
            tree.insert(META_FORMAT, &[STORE_FORMAT])?;
            tree.flush()?;
        }
        // For a power loss: the files, then the folder, before the rename.
        for file in ["db", "conf"] {
            let f = std::fs::OpenOptions::new().write(true).open(new.join(file));
            f?.sync_all()?;
        }
        sync_folder(&new);
        if let Ok(m) = std::fs::metadata(path) {
            std::fs::set_permissions(&new, m.permissions())?;
        }
        std::fs::rename(&new, path)?;
        sync_folder(parent);
        Ok(())
    })();
    match made {
        Ok(()) => true,
        Err(e) => {
            if let Err(e) = std::fs::remove_dir_all(&new)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(folder = %new.display(), error = %e, "could not remove a new store's folder");
            }
            tracing::debug!(path = %path.display(), error = %e, "new store made in place, not beside");
            false
        }
    }
}

/// Syncs a folder's entries to the disk, where the platform can (not on
/// Windows): best effort.
fn sync_folder(path: &Path) {
    let dir = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removes the folders that [`create_beside`] left beside `path` when a
/// crash stopped it before its rename: those named like it that hold only
/// sled's files. A folder with anything else in it is left alone. Another
/// process making the same new store at the same moment may lose its
/// folder: its open then fails or makes the store in place, and one of the
/// two gets [`Error::StoreLocked`](crate::error::Error::StoreLocked); no
/// data is in such a folder.
pub(super) fn remove_stale_beside(path: &Path) {
    let Some((parent, prefix)) = beside(path, "") else {
        return;
    };
    let dir = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .as_encoded_bytes()
            .strip_prefix(prefix.as_encoded_bytes())
        else {
            continue;
        };
        if rest.len() != 16 || !rest.iter().all(u8::is_ascii_hexdigit) {
            continue;
        }
        let folder = e.path();
        let only_sled = std::fs::read_dir(&folder)
            .is_ok_and(|mut rd| rd.all(|f| f.is_ok_and(|f| is_sled_entry(&f))));
        if !only_sled {
            tracing::warn!(folder = %folder.display(), "left alone: named like a new store's folder, but holds other files");
            continue;
        }
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => {
                tracing::info!(folder = %folder.display(), "removed the folder of a new store a crash left")
            }
            Err(e) => {
                tracing::warn!(folder = %folder.display(), error = %e, "could not remove the folder of a new store a crash left")
            }
        }
    }
}
