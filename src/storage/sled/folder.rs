//! What a store's folder holds before sled opens it: nothing (a new
//! store), a sled database or the files sled makes before its first commit,
//! or something else (refused); and the torn files a crash leaves that sled
//! then refuses. A leaf: it uses no other room of the sled store.

use std::path::Path;

use crate::error::{Error, Result};

/// What [`check_is_store_or_empty`] found at a store's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Folder {
    /// Nothing, or an empty folder: a new store is made.
    New,
    /// A sled database, or only files sled makes before its first commit.
    Store,
}

/// Refuses to turn a folder that holds something else into a store.
pub(super) fn check_is_store_or_empty(path: &Path) -> Result<Folder> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Folder::New),
        Err(e) => return Err(e.into()),
    };
    if !meta.is_dir() {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "it is not a folder".into(),
        });
    }
    let mut entries = std::fs::read_dir(path)?.peekable();
    if entries.peek().is_none() {
        return Ok(Folder::New);
    }
    // The last test: a crash during sled's first start in place (it makes
    // `blobs/` before `conf` and `db`) leaves only sled's own files.
    if path.join("conf").is_file()
        || path.join("db").is_file()
        || entries.all(|e| e.is_ok_and(|e| is_sled_entry(&e)))
    {
        return Ok(Folder::Store);
    }
    Err(Error::NotAStore {
        path: path.to_path_buf(),
        reason: "the folder is not empty and holds no sled database; pick an empty or new folder"
            .into(),
    })
}

/// Whether a folder entry is one that sled 0.34 makes in its folder: `conf`,
/// `db`, `snap.*` files, and `blobs/` holding only blob files (named by
/// number; empty before sled's first commit).
pub(super) fn is_sled_entry(e: &std::fs::DirEntry) -> bool {
    let Ok(kind) = e.file_type() else {
        return false;
    };
    let name = e.file_name();
    match name.to_str() {
        Some("conf" | "db") => kind.is_file(),
        Some("blobs") => {
            kind.is_dir()
                && std::fs::read_dir(e.path()).is_ok_and(|mut blobs| {
                    blobs.all(|b| {
                        b.is_ok_and(|b| {
                            let n = b.file_name();
                            let n = n.as_encoded_bytes();
                            !n.is_empty() && n.iter().all(u8::is_ascii_digit)
                        })
                    })
                })
        }
        Some(n) => n.starts_with("snap.") && kind.is_file(),
        None => false,
    }
}

/// Removes what a crash while sled wrote a file leaves and sled then
/// refuses (as corrupt), where that holds no data; says whether it removed
/// anything. Called once sled has refused the folder.
///
/// - `snap.*.generating`: sled writes a snapshot under this name, syncs it
///   and renames it to `snap.*`; a crash before the rename leaves it torn or
///   whole. sled 0.34.7 reads it (its filter skips `.in___motion`, an older
///   name) and refuses a torn one, forever. Without it, sled rebuilds the
///   same snapshot from the one before (removed only after the rename) and
///   the log. Every open that finds the log grown writes a snapshot, the
///   first open too (in the folder, after the rename into place). sled
///   reads snapshots only once it holds the folder's lock, so its refusal
///   says no other process was writing this one.
/// - a torn `conf`: sled writes `conf` in two writes before it makes `db`;
///   a crash between them leaves one sled refuses. With no data in the
///   folder ([`holds_no_data`]), sled writes it again (the same text).
pub(super) fn remove_torn(path: &Path) -> Result<bool> {
    let mut removed = false;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let name = e.file_name();
        let name = name.as_encoded_bytes();
        if name.starts_with(b"snap.") && name.ends_with(b".generating") && e.file_type()?.is_file()
        {
            tracing::warn!(file = %e.path().display(), "removed an unfinished sled snapshot a crash left");
            std::fs::remove_file(e.path())?;
            removed = true;
        }
    }
    if path.join("conf").is_file() && holds_no_data(path) {
        tracing::warn!(path = %path.display(), "removed the torn sled conf of a crashed first open");
        std::fs::remove_file(path.join("conf"))?;
        removed = true;
    }
    Ok(removed)
}

/// Whether the folder holds sled's files and no data at all: no `db` or an
/// empty one, no snapshot, no blob.
fn holds_no_data(path: &Path) -> bool {
    let no_db = match std::fs::metadata(path.join("db")) {
        Ok(m) => m.is_file() && m.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    no_db
        && std::fs::read_dir(path).is_ok_and(|mut entries| {
            entries.all(|e| {
                e.is_ok_and(|e| {
                    is_sled_entry(&e)
                        && !e.file_name().as_encoded_bytes().starts_with(b"snap.")
                        && (e.file_name() != "blobs"
                            || std::fs::read_dir(e.path()).is_ok_and(|mut b| b.next().is_none()))
                })
            })
        })
}
