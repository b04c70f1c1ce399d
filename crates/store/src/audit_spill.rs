//! Spill files (T09): audit records a closing writer could not commit (the
//! database's write lock held by another process past the last try) are
//! written beside the database, MAC'd under the audit key, instead of
//! being lost with the process. The next writer to start (the server or
//! any CLI command) appends them to the chain, each marked `"recovered":
//! true` after one `audit.recovered` record, and deletes the file only
//! after that commit.
//!
//! Each spill has its own name (`audit.spill-<id>`), so a spill never
//! replaces another one not yet recovered. The MAC covers the whole body,
//! id included, so nobody without the key can inject records through a
//! spill; a file whose MAC fails, or one larger than [`MAX_SPILL_BYTES`],
//! is not appended but set aside (`….rejected`) and recorded as
//! `audit.spill_rejected`. A copy of a spill already recovered, put back,
//! is refused the same way: its id is on the chain.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::audit::{AuditEvent, mac_of, mac_valid};
use crate::audit_budget::Pending;
use crate::{Store, files, now_ms};

/// The names of spill files: this, then the spill's id (32 hex digits).
const SPILL_PREFIX: &str = "audit.spill-";

/// What a rejected spill is renamed to: its name and this.
const REJECTED_SUFFIX: &str = ".rejected";

/// A spill larger than this is not read (T09: a bound on what a planted
/// file can cost), but set aside and recorded.
pub(crate) const MAX_SPILL_BYTES: u64 = 8 * 1024 * 1024;

/// What a writer puts in one spill at most; events past it are counted in
/// an `audit.dropped` record instead (well under [`MAX_SPILL_BYTES`]).
const WRITE_BUDGET: usize = 6 * 1024 * 1024;

/// Spill files taken in by one start at most; the rest wait for the next.
pub(crate) const MAX_SPILLS_PER_START: usize = 4;

/// The kind of the record before a spill's records on the chain.
pub(crate) const RECOVERED: &str = "audit.recovered";

/// The kind of the record of a spill file that was not appended.
pub(crate) const SPILL_REJECTED: &str = "audit.spill_rejected";

#[derive(Serialize, Deserialize)]
struct SpilledEvent {
    kind: String,
    correlation_id: Option<String>,
    subject: Option<String>,
    function: Option<String>,
    detail: Map<String, Value>,
    time_ms: i64,
    traffic: bool,
}

#[derive(Serialize, Deserialize)]
struct Body {
    version: u32,
    id: String,
    spilled_ms: i64,
    events: Vec<SpilledEvent>,
}

/// The MAC's input: its own domain, so no other keyed value of the trail
/// can pass for a spill.
fn mac_input(body: &str) -> String {
    format!("bulkhead audit.spill v1:{body}")
}

/// A spill file read and verified.
pub(crate) struct Spill {
    pub path: PathBuf,
    pub bytes: u64,
    pub id: String,
    /// Its `audit.recovered` record, then its events, each marked.
    pub events: Vec<Pending>,
}

/// A spill file set aside: its record.
pub(crate) fn rejected_record(bytes: u64, reason: &str, kept_as: &Path) -> Pending {
    Pending::system(
        AuditEvent::new(SPILL_REJECTED)
            .detail("bytes", bytes)
            .detail("reason", reason)
            .detail("kept_as", kept_as.display().to_string()),
        now_ms(),
    )
}

/// Write `events` to a new spill file in `dir`, MAC'd under `key`, owner
/// only and whole. Returns its path and how many events did not fit (they
/// are counted in an `audit.dropped` record in the file).
pub(crate) fn write(
    dir: &Path,
    key: &[u8; 32],
    events: Vec<Pending>,
) -> std::io::Result<(PathBuf, usize)> {
    let mut kept = Vec::with_capacity(events.len());
    let mut size = 0_usize;
    let mut cut = 0_usize;
    for Pending {
        event,
        time_ms,
        traffic,
    } in events
    {
        let spilled = SpilledEvent {
            kind: event.kind,
            correlation_id: event.correlation_id,
            subject: event.subject,
            function: event.function,
            detail: event.detail,
            time_ms,
            traffic,
        };
        let len = serde_json::to_string(&spilled)
            .map_err(std::io::Error::other)?
            .len();
        if cut > 0 || size.saturating_add(len) > WRITE_BUDGET {
            cut += 1;
            continue;
        }
        size = size.saturating_add(len + 1);
        kept.push(spilled);
    }
    let now = now_ms();
    if cut > 0 {
        kept.push(SpilledEvent {
            kind: "audit.dropped".into(),
            correlation_id: None,
            subject: None,
            function: None,
            detail: AuditEvent::new("audit.dropped")
                .detail("events", cut)
                .detail("reason", "the spill file was full")
                .detail,
            time_ms: now,
            traffic: false,
        });
    }
    let id = hex::encode(files::random_bytes::<16>()?);
    let body = serde_json::to_string(&Body {
        version: 1,
        id: id.clone(),
        spilled_ms: now,
        events: kept,
    })
    .map_err(std::io::Error::other)?;
    let mac = hex::encode(mac_of(key, &mac_input(&body)));
    let path = dir.join(format!("{SPILL_PREFIX}{id}"));
    files::write_private(&path, &[body.as_bytes(), b"\n", mac.as_bytes(), b"\n"])?;
    Ok((path, cut))
}

/// The spill files in `dir` (not those set aside, nor temp files), oldest
/// name first.
fn spill_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name
            .strip_prefix(SPILL_PREFIX)
            .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Read and verify the spill files in `dir` (at most
/// [`MAX_SPILLS_PER_START`]): those that hold, and the records of those
/// set aside.
pub(crate) fn read_all(dir: &Path, key: &[u8; 32]) -> (Vec<Spill>, Vec<Pending>) {
    let mut spills = Vec::new();
    let mut rejected = Vec::new();
    let paths = match spill_files(dir) {
        Ok(paths) => paths,
        Err(e) => {
            tracing::error!(target: "bulkhead::audit", error = %e, dir = %dir.display(), "cannot look for audit spill files");
            return (spills, rejected);
        }
    };
    if paths.len() > MAX_SPILLS_PER_START {
        tracing::warn!(target: "bulkhead::audit", files = paths.len(), "more audit spill files than one start takes in: the rest wait for the next start");
    }
    for path in paths.into_iter().take(MAX_SPILLS_PER_START) {
        match read_one(&path, key) {
            Ok(spill) => spills.push(spill),
            Err((bytes, reason)) => rejected.push(set_aside(&path, bytes, &reason)),
        }
    }
    (spills, rejected)
}

/// Rename a spill file that is not appended aside, for evidence, and make
/// its record (T09).
pub(crate) fn set_aside(path: &Path, bytes: u64, reason: &str) -> Pending {
    let aside = aside_path(path);
    tracing::error!(target: "bulkhead::audit", path = %path.display(), bytes, reason, "an audit spill file was rejected: its records are not appended; it is kept for evidence");
    if let Err(e) = std::fs::rename(path, &aside)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(target: "bulkhead::audit", error = %e, path = %path.display(), "cannot set the rejected audit spill file aside");
    }
    rejected_record(bytes, reason, &aside)
}

/// Where a rejected spill file is kept.
pub(crate) fn aside_path(path: &Path) -> PathBuf {
    let mut aside = path.as_os_str().to_owned();
    aside.push(REJECTED_SUFFIX);
    PathBuf::from(aside)
}

/// One spill file, verified; or its size and why it is rejected.
fn read_one(path: &Path, key: &[u8; 32]) -> Result<Spill, (u64, String)> {
    // Never opened unless a regular file: a FIFO or device planted under
    // the name would hold the start up.
    let meta = std::fs::symlink_metadata(path).map_err(|e| (0, format!("cannot read it: {e}")))?;
    if !meta.file_type().is_file() {
        return Err((0, "it is not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| (0, format!("cannot open it: {e}")))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    if bytes > MAX_SPILL_BYTES {
        return Err((
            bytes,
            format!("it is larger than {MAX_SPILL_BYTES} bytes, more than a writer spills"),
        ));
    }
    let mut raw = Vec::new();
    // Bounded even if the file grows after the check.
    file.take(MAX_SPILL_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| (bytes, format!("cannot read it: {e}")))?;
    let bytes = u64::try_from(raw.len()).unwrap_or(u64::MAX);
    if bytes > MAX_SPILL_BYTES {
        return Err((bytes, "it grew past the bound while being read".into()));
    }
    let forged = || {
        (
            bytes,
            "its MAC does not hold (forged or edited)".to_string(),
        )
    };
    let text = std::str::from_utf8(&raw).map_err(|_| forged())?;
    let (body, mac) = text
        .strip_suffix('\n')
        .and_then(|t| t.rsplit_once('\n'))
        .ok_or_else(forged)?;
    if !mac_valid(key, &mac_input(body), mac) {
        return Err(forged());
    }
    let body: Body =
        serde_json::from_str(body).map_err(|e| (bytes, format!("it is not a spill file: {e}")))?;
    // The name is not covered by the MAC: a spill renamed is not one.
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(SPILL_PREFIX));
    if body.version != 1 || named != Some(body.id.as_str()) {
        return Err((bytes, "its name or version does not match its body".into()));
    }
    let mut events = Vec::with_capacity(body.events.len() + 1);
    events.push(Pending::system(
        AuditEvent::new(RECOVERED)
            .detail("events", body.events.len())
            .detail("spilled_ms", body.spilled_ms)
            .detail("spill", body.id.as_str()),
        now_ms(),
    ));
    for e in body.events {
        let mut event = AuditEvent::new(e.kind);
        event.correlation_id = e.correlation_id;
        event.subject = e.subject;
        event.function = e.function;
        // The event's own detail, and the mark last (it wins).
        let mut detail = e.detail;
        detail.insert("recovered".into(), Value::Bool(true));
        event.detail = detail;
        events.push(Pending {
            event,
            time_ms: e.time_ms,
            traffic: e.traffic,
        });
    }
    Ok(Spill {
        path: path.to_path_buf(),
        bytes,
        id: body.id,
        events,
    })
}

impl Store {
    /// Whether audit records spilled by a writer that could not commit
    /// them wait beside the database (the next writer appends them).
    pub fn audit_spill_pending(&self) -> bool {
        spill_files(self.dir()).is_ok_and(|files| !files.is_empty())
    }
}
