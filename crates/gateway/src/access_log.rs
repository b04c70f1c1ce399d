//! The access log (T07, T08, T09, issue 17): one JSON line per request,
//! in the shape tracing's JSON formatter writes (`timestamp`, `level`,
//! `message`, the fields, `target` = `bulkhead::access`), serialised on the
//! request thread straight into a reused buffer (each value escaped once,
//! by serde_json as tracing's formatter does, so a client's bytes can never
//! forge a record, T07) and handed to the [`LogWriter`]'s queue: no tracing
//! dispatch, no allocation, no write on the request path. A full queue
//! drops the line and counts it; it never holds the request (T01).
//!
//! `BULKHEAD_LOG` still decides: [`install`] asks the tracing filter once
//! whether `bulkhead::access` lines at INFO (answered) and WARN (refused)
//! are wanted.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::log_writer::{self, Kind, LogWriter};

struct Installed {
    writer: LogWriter,
    info: bool,
    warn: bool,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Send access lines to `writer`. Call it once the tracing subscriber is
/// set: its filter is read now, once.
pub fn install(writer: LogWriter) {
    let info = tracing::enabled!(target: "bulkhead::access", tracing::Level::INFO);
    let warn = tracing::enabled!(target: "bulkhead::access", tracing::Level::WARN);
    let _ = INSTALLED.set(Installed { writer, info, warn });
}

/// Log lines lost since start (T09): the queue was full or the sink failed.
pub fn dropped() -> u64 {
    INSTALLED.get().map_or(0, |i| i.writer.dropped())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// An answered request.
    Info,
    /// A refused or failed one, or a response cut.
    Warn,
}

/// The fields of one line being written.
pub(crate) struct Line<'b> {
    buf: &'b mut Vec<u8>,
}

impl Line<'_> {
    fn key(&mut self, name: &'static str) {
        // Names are ours, plain ASCII: no escaping needed.
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A string field, JSON-escaped (T07).
    pub(crate) fn str(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.key(name);
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.buf, value);
        self
    }

    pub(crate) fn num(&mut self, name: &'static str, value: u64) -> &mut Self {
        self.key(name);
        let _ = write!(self.buf, "{value}");
        self
    }

    /// A float as serde_json writes it (shortest round trip; `null` if not
    /// finite), as tracing's formatter did.
    pub(crate) fn float(&mut self, name: &'static str, value: f64) -> &mut Self {
        self.key(name);
        let _ = serde_json::to_writer(&mut *self.buf, &value);
        self
    }

    /// An address as a string: its text is digits, hex, `.` and `:` only.
    pub(crate) fn ip(&mut self, name: &'static str, value: IpAddr) -> &mut Self {
        self.key(name);
        let _ = write!(self.buf, "\"{value}\"");
        self
    }
}

thread_local! {
    /// Each worker thread's line buffer, reused from request to request.
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// A buffer grown past this by one long line is given back.
const KEEP_CAPACITY: usize = 16 << 10;

/// Write one access line, stamped `at`, with `message` and the fields
/// `fields` adds, if `BULKHEAD_LOG` wants its level. Without an installed
/// writer (the gateway embedded without the CLI's logging), the line goes
/// to tracing as one event holding the record.
pub(crate) fn write(
    level: Level,
    message: &'static str,
    at: SystemTime,
    fields: impl FnOnce(&mut Line<'_>),
) {
    let Some(installed) = INSTALLED.get() else {
        let mut buf = Vec::new();
        serialise(&mut buf, level, message, at, fields);
        let record = String::from_utf8_lossy(&buf);
        let record = record.trim_end();
        match level {
            Level::Info => tracing::info!(target: "bulkhead::access", record, "{message}"),
            Level::Warn => tracing::warn!(target: "bulkhead::access", record, "{message}"),
        }
        return;
    };
    let wanted = match level {
        Level::Info => installed.info,
        Level::Warn => installed.warn,
    };
    if !wanted {
        return;
    }
    BUF.with(|cell| {
        // Nothing in here logs, so the buffer is never borrowed twice; if
        // it were, a fresh one would do.
        let mut own = Vec::new();
        let mut borrowed = cell.try_borrow_mut().ok();
        let buf: &mut Vec<u8> = borrowed.as_deref_mut().unwrap_or(&mut own);
        buf.clear();
        serialise(buf, level, message, at, fields);
        installed.writer.push(Kind::Access, buf);
        if buf.capacity() > KEEP_CAPACITY {
            buf.clear();
            buf.shrink_to(KEEP_CAPACITY);
        }
    });
}

fn serialise(
    buf: &mut Vec<u8>,
    level: Level,
    message: &'static str,
    at: SystemTime,
    fields: impl FnOnce(&mut Line<'_>),
) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    log_writer::timestamp(buf, at);
    buf.extend_from_slice(match level {
        Level::Info => b"\",\"level\":\"INFO\",\"message\":",
        Level::Warn => b"\",\"level\":\"WARN\",\"message\":",
    });
    let _ = serde_json::to_writer(&mut *buf, message);
    fields(&mut Line { buf: &mut *buf });
    buf.extend_from_slice(b",\"target\":\"bulkhead::access\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// T07: every value is escaped once; the line is one JSON object with
    /// the fields and types tracing's formatter gave it.
    #[test]
    fn a_line_is_one_json_object_whatever_the_client_wrote_t07() {
        let mut buf = Vec::new();
        let hostile = "/a\r\n{\"level\":\"ERROR\"}\u{1b}[31m\u{2028}\"\\\0";
        serialise(
            &mut buf,
            Level::Warn,
            "request refused",
            UNIX_EPOCH + Duration::new(1_796_310_144, 5_000),
            |line| {
                line.str("correlation_id", "abc")
                    .str("path", hostile)
                    .num("status", 404)
                    .float("duration_ms", 0.25)
                    .ip("peer", "::1".parse().unwrap());
            },
        );
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(buf.ends_with(b"}\n"));
        let record: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(record["timestamp"], "2026-12-03T15:02:24.000005Z");
        assert_eq!(record["level"], "WARN");
        assert_eq!(record["message"], "request refused");
        assert_eq!(record["path"], hostile);
        assert_eq!(record["status"], 404);
        assert_eq!(record["duration_ms"], 0.25);
        assert_eq!(record["peer"], "::1");
        assert_eq!(record["target"], "bulkhead::access");
        assert_eq!(record.as_object().unwrap().len(), 9);
    }
}
