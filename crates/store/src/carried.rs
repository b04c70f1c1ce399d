//! What a node could not hand to the shared database before it stopped
//! (issue 16, T04, T09): usage admitted on its share while the budget
//! ledger was unreachable, and meter rows the database did not take. Kept
//! in the node's state directory (owner-only, written atomically: names
//! callers, T20) and applied at its next start, so a stop during an
//! outage never lets the deployment spend a budget twice (outside review:
//! 44 calls of a 30-request budget). While the database is away it is
//! also written as it grows (the ledger's every beat, the meter's at most
//! once a second), so a node killed then loses only what came since. The
//! file goes once what it holds was
//! applied; a start that applies it and then dies before removing it
//! counts that usage twice: the safe side.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{error, warn};

/// The most a carried file may hold: past it the file is not read (and
/// is left for an operator), never a node's memory filled by it.
const MAX_BYTES: u64 = 64 << 20;

/// Write `items` to `path` for the next start; an empty list removes it.
/// `at_stop`: said in the log (while the node runs, it is kept quietly,
/// so a node killed during an outage loses only what came since).
pub(crate) fn save<T: Serialize>(path: &Path, items: &[T], at_stop: bool) {
    if items.is_empty() {
        remove(path);
        return;
    }
    let written = serde_json::to_vec(items)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::files::write_private(path, &[&bytes]));
    match written {
        Ok(()) if !at_stop => {}
        Ok(()) => {
            warn!(target: "bulkhead::cluster", path = %path.display(), items = items.len(), "the shared database did not take everything before the stop; kept for the next start")
        }
        Err(e) => {
            error!(target: "bulkhead::cluster", path = %path.display(), error = %e, "cannot keep what the shared database did not take; it is lost with this stop")
        }
    }
}

/// What a previous run left in `path` (nothing if there is no file).
/// A file that cannot be read or parsed (or is over 64 MiB) is moved
/// aside (`.unreadable`) and logged.
pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> Vec<T> {
    let read = std::fs::metadata(path).and_then(|meta| {
        if meta.len() > MAX_BYTES {
            Err(std::io::Error::other("larger than 64 MiB"))
        } else {
            std::fs::read(path)
        }
    });
    let parsed = match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => Err(e.to_string()),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
    };
    parsed.unwrap_or_else(|e| {
        // Moved aside, so this run's stop does not write over it (second
        // outside review: a file "left in place" was removed at the stop).
        let aside = path.with_extension("unreadable");
        let _ = std::fs::rename(path, &aside);
        error!(target: "bulkhead::cluster", path = %aside.display(), error = %e, "what the last run left for the shared database cannot be read; moved aside for an operator");
        Vec::new()
    })
}

/// Remove `path` once what it held was applied.
pub(crate) fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            error!(target: "bulkhead::cluster", path = %path.display(), error = %e, "cannot remove what the last run left, though it was applied; remove it, or it is counted again at the next start")
        }
    }
}

/// Whether a carried name (a function's or a caller's) is one the shared
/// database can take: no NUL (PostgreSQL text cannot hold it), at most
/// 1 KiB. A row that fails is dropped at load, so one planted row never
/// blocks every commit after it (second outside review).
pub(crate) fn sound_name(name: &str) -> bool {
    name.len() <= 1024 && !name.contains('\0')
}
