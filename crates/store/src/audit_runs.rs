//! Unclean stops (T09, issue 19). Every audit writer (the server's, a CLI
//! command's) leaves a marker file (`audit.run.*`) beside the database for
//! as long as it runs, and holds an exclusive lock (`flock`) on it; a clean
//! close deletes it. The kernel drops the lock when the process dies, so a
//! marker that can be locked belongs to a writer that stopped without
//! closing (SIGKILL, a crash, a power cut). The next writer to start takes
//! it over and appends one chained `audit.unclean_stop` record naming the
//! record the trail ended at: records of kinds written without waiting
//! (README: Audit trail) of events after that record's time may be missing.
//! Until a writer starts, `audit verify` reports the stopped writer from its
//! marker; afterwards, from the record.
//!
//! The marker is created as a temp file, locked, and only then renamed into
//! place, so another writer never sees a marker that is not yet locked.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tracing::{error, warn};

use crate::audit::{AuditEvent, AuditQuery};
use crate::{Store, StoreError, files, now_ms};

/// The markers' names, beside the database: `audit.run.PID-ID`, and
/// `audit.run-tmp.PID-ID` while one is made.
const MARKER: &str = "audit.run.";
const MARKER_TMP: &str = "audit.run-tmp.";

/// The record a writer appends for each writer it finds stopped uncleanly.
pub const UNCLEAN_STOP: &str = "audit.unclean_stop";

/// What the window of a stop holds, for the record and for `audit verify`.
const WINDOW: &str = "records written without waiting (folded counts, drop counts, a stream's end, answers sent past the wait's bound)";

/// This writer's marker; the lock lasts as long as the file is open.
pub(crate) struct Run {
    _file: File,
    path: PathBuf,
}

/// A writer that stopped without closing: its marker, locked by us.
pub(crate) struct Stopped {
    _file: File,
    path: PathBuf,
    pid: Option<u64>,
    started_ms: Option<i64>,
}

/// Create and lock this writer's marker.
pub(crate) fn begin(dir: &Path) -> std::io::Result<Run> {
    let id = hex::encode(files::random_bytes::<8>()?);
    let pid = std::process::id();
    let path = dir.join(format!("{MARKER}{pid}-{id}"));
    let tmp = dir.join(format!("{MARKER_TMP}{pid}-{id}"));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    let made = (|| {
        file.lock()?;
        file.write_all(
            json!({"pid": pid, "started_ms": now_ms()})
                .to_string()
                .as_bytes(),
        )?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Run { _file: file, path })
}

impl Run {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A clean close: the marker goes.
    pub fn end(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            error!(target: "bulkhead::audit", error = %e, path = %self.path.display(), "cannot remove the audit writer's run marker: the next start will report an unclean stop");
        } else if let Some(dir) = self.path.parent()
            && let Err(e) = File::open(dir).and_then(|d| d.sync_all())
        {
            warn!(target: "bulkhead::audit", error = %e, "cannot sync the audit run markers' directory");
        }
    }
}

/// The markers of writers that stopped without closing, locked so that no
/// other writer takes them too; `own` is skipped.
pub(crate) fn stopped(dir: &Path, own: Option<&Path>) -> Vec<Stopped> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // The temp file of a writer starting now, or of one that died
        // starting (it had written nothing yet).
        if name.starts_with(MARKER_TMP) && own.is_some() {
            remove_dead_temp(&path);
        }
        if !name.starts_with(MARKER) || Some(path.as_path()) == own {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => {
                warn!(target: "bulkhead::audit", error = %e, path = %path.display(), "cannot check an audit run marker");
                continue;
            }
        }
        // Taken over and deleted by another writer since we listed it.
        if !still_linked(&file) {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap_or_default();
        let about: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        found.push(Stopped {
            _file: file,
            path,
            pid: about["pid"].as_u64(),
            started_ms: about["started_ms"].as_i64(),
        });
    }
    found
}

/// A temp marker older than this is one whose writer died starting; a
/// younger one may be a writer between creating and locking it.
const TEMP_STALE: std::time::Duration = std::time::Duration::from_secs(60);

fn remove_dead_temp(path: &Path) {
    let stale = fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > TEMP_STALE));
    if stale
        && let Ok(file) = File::open(path)
        && file.try_lock().is_ok()
    {
        let _ = fs::remove_file(path);
    }
}

#[cfg(unix)]
fn still_linked(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    file.metadata().is_ok_and(|m| m.nlink() > 0)
}

#[cfg(not(unix))]
fn still_linked(_: &File) -> bool {
    true
}

impl Stopped {
    /// The `audit.unclean_stop` record: the trail ended at record `seq`
    /// (written at `time_ms`) when this writer stopped, or later.
    pub fn record(&self, end: Option<(i64, i64)>) -> AuditEvent {
        let (seq, time_ms) = end.unwrap_or((0, 0));
        let mut event = AuditEvent::new(UNCLEAN_STOP)
            .detail("after_record", seq)
            .detail("after_time_ms", time_ms)
            .detail("may_be_missing", WINDOW);
        if let Some(pid) = self.pid {
            event = event.detail("pid", pid);
        }
        if let Some(started) = self.started_ms {
            event = event.detail("writer_started_ms", started);
        }
        event
    }

    /// Recorded: the marker goes.
    pub fn settle(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            warn!(target: "bulkhead::audit", error = %e, path = %self.path.display(), "cannot remove a stopped writer's run marker");
        }
    }
}

/// One unclean stop, as `audit verify` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncleanStop {
    /// The trail ended at this record (or later) when the writer stopped.
    pub after_record: i64,
    /// That record's time: events after it may be missing (0: unknown).
    pub after_time_ms: i64,
    /// The `audit.unclean_stop` record, or `None` when no writer has
    /// started since (only the marker tells).
    pub recorded_at: Option<i64>,
    pub pid: Option<u64>,
    /// When the stopped writer started: its last durable commit is not
    /// known, only that it came after this (other writers, CLI commands or
    /// a second server, may have appended since it died).
    pub started_ms: Option<i64>,
}

impl UncleanStop {
    /// One line for `audit verify`.
    pub fn describe(&self) -> String {
        // The window opens at the writer's start: where its own durable
        // trail ended is not known (records written after its death by
        // CLI commands or another server say nothing about it).
        let when = match self.started_ms {
            Some(started) if started > 0 => format!("its start at {}", format_time(started)),
            _ if self.after_time_ms > 0 => format_time(self.after_time_ms),
            _ => "its start".to_string(),
        };
        let pid = self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let recorded = match self.recorded_at {
            Some(seq) => format!("recorded at record {seq} ({UNCLEAN_STOP})"),
            None => "not recorded on the trail yet (no server has started since)".to_string(),
        };
        format!(
            "a writer{pid} stopped uncleanly; records of events after {when} that were not waited for may be missing ({WINDOW}); the trail held record {} when this was noticed; {recorded}",
            self.after_record
        )
    }
}

impl Store {
    /// Every unclean stop of an audit writer: those recorded on the trail
    /// (`audit.unclean_stop`), and those of writers that stopped since
    /// without a writer starting after them (T09).
    pub fn audit_unclean_stops(&self) -> Result<Vec<UncleanStop>, StoreError> {
        let recorded = self.query_audit(&AuditQuery {
            kind: Some(UNCLEAN_STOP.into()),
            ..AuditQuery::default()
        })?;
        let mut stops: Vec<UncleanStop> = recorded
            .into_iter()
            .map(|r| UncleanStop {
                after_record: r.detail["after_record"].as_i64().unwrap_or(0),
                after_time_ms: r.detail["after_time_ms"].as_i64().unwrap_or(0),
                recorded_at: Some(r.seq),
                pid: r.detail["pid"].as_u64(),
                started_ms: r.detail["writer_started_ms"].as_i64(),
            })
            .collect();
        let waiting = stopped(self.dir(), None);
        if !waiting.is_empty() {
            let end = self.audit_end()?;
            let (seq, time_ms) = end.unwrap_or((0, 0));
            stops.extend(waiting.into_iter().map(|s| UncleanStop {
                after_record: seq,
                after_time_ms: time_ms,
                recorded_at: None,
                pid: s.pid,
                started_ms: s.started_ms,
            }));
        }
        Ok(stops)
    }

    /// The trail's last record: its number and time.
    pub(crate) fn audit_end(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let conn = self.lease()?;
        last_end(&conn).map_err(|e| self.db_error(e))
    }
}

/// RFC 3339 time, to the millisecond.
fn format_time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

pub(crate) fn last_end(conn: &rusqlite::Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    use rusqlite::OptionalExtension as _;
    conn.query_row(
        "SELECT seq, time_ms FROM audit ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}
