//! The one writer of the process's log lines (T09, issue 17): every JSON
//! line, the access log's and tracing's, goes into one bounded in-memory
//! queue, and a dedicated thread writes what has gathered with one write
//! per batch to stderr or `--log-file`. A request never waits on the
//! terminal, the disk or a pipe nobody reads: when the queue is full a line
//! is dropped and counted (`bulkhead_log_dropped_total`), and once the
//! writer catches up it writes one summary line saying how many were lost.
//! The audit trail, not this log, is the record that cannot be dropped.
//!
//! Access lines may fill [`QUEUE_BYTES`]; other lines (start-up, warnings,
//! guest output) have [`RESERVE_BYTES`] more, so a flood of access lines
//! cannot crowd out the warning that explains it. A request thread takes
//! the queue's lock only to copy its line in: the writer swaps the whole
//! queue out and writes it without the lock.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Access-log bytes queued at most: about 14,000 lines, half a second of
/// this machine's busiest hello load, before lines are dropped.
pub const QUEUE_BYTES: usize = 4 << 20;
/// Room above [`QUEUE_BYTES`] kept for other lines.
pub const RESERVE_BYTES: usize = 1 << 20;
/// After a batch the writer waits this long before the next, so a busy
/// server's lines gather into few writes and a request never has to wake
/// the writer; an idle writer is woken by the first line.
const BATCH_PAUSE: Duration = Duration::from_millis(10);
/// How long a stopping process waits for queued lines to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// A batch buffer grown past this by a flood is given back afterwards.
const KEEP_CAPACITY: usize = 256 << 10;

/// Which budget of the queue a line may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A per-request access line: dropped first.
    Access,
    /// Any other line: may use the reserve too.
    Other,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Dropped since the last summary line.
    dropped_access: u64,
    dropped_other: u64,
    /// The writer sleeps until woken: the next line must wake it.
    writer_waiting: bool,
    closed: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Set by the writer thread when it has written everything and ends.
    finished: Mutex<bool>,
    finished_cv: Condvar,
    /// Every line lost since start: queue overflow and failed writes.
    dropped_total: AtomicU64,
    limit_access: usize,
    limit_other: usize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle that queues lines for the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    inner: Arc<Inner>,
}

/// Stops the writer when dropped, after it has written what is queued
/// (bounded by [`CLOSE_WAIT`]: a sink that takes nothing cannot hold the
/// process forever).
pub struct LogGuard {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Start the writer thread over `sink`, with the default bounds.
    pub fn start(sink: Box<dyn Write + Send>) -> io::Result<(Self, LogGuard)> {
        Self::start_with(sink, QUEUE_BYTES, QUEUE_BYTES + RESERVE_BYTES)
    }

    fn start_with(
        sink: Box<dyn Write + Send>,
        limit_access: usize,
        limit_other: usize,
    ) -> io::Result<(Self, LogGuard)> {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
            dropped_total: AtomicU64::new(0),
            limit_access,
            limit_other,
        });
        let thread = std::thread::Builder::new()
            .name("bulkhead-log".into())
            .spawn({
                let inner = inner.clone();
                move || write_batches(&inner, sink)
            })?;
        let guard = LogGuard {
            inner: inner.clone(),
            thread: Some(thread),
        };
        Ok((Self { inner }, guard))
    }

    /// Queue one or more whole lines; false if they were dropped because
    /// the queue is full. Never blocks on the sink.
    pub fn push(&self, kind: Kind, line: &[u8]) -> bool {
        let limit = match kind {
            Kind::Access => self.inner.limit_access,
            Kind::Other => self.inner.limit_other,
        };
        let wake = {
            let mut pending = self.inner.lock();
            if pending.lines.len() + line.len() > limit {
                match kind {
                    Kind::Access => pending.dropped_access += 1,
                    Kind::Other => pending.dropped_other += 1,
                }
                drop(pending);
                self.inner.dropped_total.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            pending.lines.extend_from_slice(line);
            std::mem::take(&mut pending.writer_waiting)
        };
        if wake {
            self.inner.wake.notify_one();
        }
        true
    }

    /// Lines lost since start (queue full, or a write that failed).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped_total.load(Ordering::Relaxed)
    }
}

/// What tracing's formatter writes: each event arrives as one whole line
/// in one `write_all`.
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(Kind::Other, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.wake.notify_one();
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut finished = self
            .inner
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while !*finished {
            let now = Instant::now();
            if now >= deadline {
                // The sink takes nothing: leave the thread blocked in it.
                return;
            }
            finished = self
                .inner
                .finished_cv
                .wait_timeout(finished, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(finished);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: swap the queue out, write it in one go, pause, again;
/// sleep while there is nothing; on close, write the rest and end.
fn write_batches(inner: &Inner, mut sink: Box<dyn Write + Send>) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let (dropped_access, dropped_other, closed) = {
            let mut pending = inner.lock();
            while pending.lines.is_empty()
                && pending.dropped_access == 0
                && pending.dropped_other == 0
                && !pending.closed
            {
                pending.writer_waiting = true;
                pending = inner.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            pending.writer_waiting = false;
            std::mem::swap(&mut pending.lines, &mut batch);
            (
                std::mem::take(&mut pending.dropped_access),
                std::mem::take(&mut pending.dropped_other),
                pending.closed,
            )
        };
        if dropped_access + dropped_other > 0 {
            summary_line(&mut batch, dropped_access, dropped_other);
        }
        if !batch.is_empty() {
            let written = sink.write_all(&batch).and_then(|()| sink.flush());
            if written.is_err() {
                // Nowhere left to say it: counted on /metrics.
                let lost = batch.iter().filter(|&&b| b == b'\n').count() as u64;
                inner.dropped_total.fetch_add(lost, Ordering::Relaxed);
            }
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch.shrink_to(KEEP_CAPACITY);
            }
        }
        if closed && inner.lock().lines.is_empty() {
            break;
        }
        if !closed {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
    *inner.finished.lock().unwrap_or_else(|p| p.into_inner()) = true;
    inner.finished_cv.notify_all();
}

/// The line saying how many lines the queue could not take (T09).
fn summary_line(out: &mut Vec<u8>, access: u64, other: u64) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, SystemTime::now());
    let _ = writeln!(
        out,
        "\",\"level\":\"WARN\",\"message\":\"log lines dropped: the log sink could not keep up\",\
         \"dropped\":{},\"access_lines\":{access},\"other_lines\":{other},\
         \"target\":\"bulkhead::log\"}}",
        access + other
    );
}

/// `at` as tracing's JSON timestamps write it: RFC 3339 in UTC with
/// microseconds, `2026-12-03T15:02:24.123456Z`.
pub fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    // humantime, as the audit trail and the CLI format their times; a time
    // before the epoch (a clock set back) is written as the epoch.
    let _ = write!(
        out,
        "{}",
        humantime::format_rfc3339_micros(at.max(UNIX_EPOCH))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test reads, that can be made to take nothing.
    #[derive(Clone, Default)]
    struct Held {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
        stuck: Arc<Mutex<()>>,
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _wait = self.stuck.lock().unwrap();
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(sink: &Held) -> Vec<String> {
        String::from_utf8(sink.bytes.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn timestamps_match_tracing() {
        let at = UNIX_EPOCH + Duration::new(1_796_310_144, 123_456_789);
        let mut out = Vec::new();
        timestamp(&mut out, at);
        assert_eq!(out, b"2026-12-03T15:02:24.123456Z");
        let mut out = Vec::new();
        timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(out, b"2000-02-29T00:00:00.000000Z");
        let mut out = Vec::new();
        timestamp(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
    }

    /// T09: a sink that takes nothing never blocks a line's writer; past
    /// the bound lines are dropped and counted, access lines first, and
    /// the writer reports the loss once it catches up. Closing writes
    /// everything queued.
    #[test]
    fn a_stuck_sink_drops_and_counts_and_never_blocks_t09() {
        let sink = Held::default();
        let stuck = sink.stuck.lock().unwrap();
        let (writer, guard) = LogWriter::start_with(Box::new(sink.clone()), 100, 150).unwrap();
        // The writer takes the first line and blocks in the sink with it.
        assert!(writer.push(Kind::Access, b"{\"n\":0}\n"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !writer.inner.lock().lines.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let line = b"{\"n\":\"0123456789\"}\n"; // 20 bytes
        let pushed = (0..10).filter(|_| writer.push(Kind::Access, line)).count();
        assert_eq!(pushed, 5, "access lines stop at their bound");
        assert!(writer.push(Kind::Other, line), "other lines have a reserve");
        assert_eq!(writer.dropped(), 5);
        drop(stuck);
        drop(guard);
        let lines = lines(&sink);
        assert_eq!(lines.len(), 1 + 5 + 1 + 1, "{lines:?}");
        let summary: serde_json::Value = serde_json::from_str(&lines[7]).unwrap();
        assert_eq!(summary["dropped"], 5);
        assert_eq!(summary["access_lines"], 5);
        assert_eq!(summary["target"], "bulkhead::log");
        assert_eq!(summary["level"], "WARN");
    }

    /// Lines pushed while the writer pauses go out in one write.
    #[test]
    fn a_batch_is_one_write() {
        let sink = Held::default();
        let stuck = sink.stuck.lock().unwrap();
        let (writer, guard) =
            LogWriter::start_with(Box::new(sink.clone()), 1 << 20, 2 << 20).unwrap();
        writer.push(Kind::Access, b"{}\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !writer.inner.lock().lines.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..100 {
            writer.push(Kind::Access, b"{}\n");
        }
        drop(stuck);
        drop(guard);
        assert_eq!(lines(&sink).len(), 101);
        assert_eq!(sink.writes.load(Ordering::Relaxed), 2);
    }
}
