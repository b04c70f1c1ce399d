//! Appends audit events from any thread without blocking the request path:
//! events go through a bounded channel to one writer thread, which chains
//! and commits them in batches. If the channel is full (a flood), events are
//! counted, and the count is written as an `audit.dropped` record: the gap
//! is itself on the record.
//!
//! Events a request or a guest causes are recorded with their source, the
//! caller ([`AuditLog::record_from`]); admin, CLI and system events have
//! none ([`AuditLog::record`]). One source may hold only a sixteenth of
//! the queue and all sources together three quarters of it (T09, see
//! `audit_quota`): a flooding caller loses its own excess, counted under
//! its name in `audit.dropped`, never another caller's or the operator's
//! records.
//!
//! Before each batch the writer checks the chain's end against both keyed
//! heads: the one in the database and the head file beside it (T09). If
//! they disagree (records deleted from the end, edited and re-hashed, or an
//! older copy of the database restored) it does not extend that chain: it
//! logs an error, counts the break for `/metrics`, and starts a new segment
//! whose first record, `audit.chain_broken`, says what it expected and what
//! it found. That record is chained and covered by the new head, so
//! `audit verify` reports the break for ever. Serving never stops for it.
//!
//! A trail with no keyed head at all (a wipe) is such a break as well, and
//! the count of breaks (for `/metrics`) is kept in the keyed head, so it
//! cannot be reset without breaking the head's MAC.
//!
//! The head file (`audit.head`, MAC'd under the audit key) is brought up to
//! date after a durable commit, at most every [`HEAD_FILE_EVERY`] while
//! events keep coming, at once on a flush (every CLI command, shutdown) or
//! a break, and by itself when the writer goes idle.
//!
//! Every batch is committed with `synchronous = FULL`, so that a committed
//! batch survives a crash or a power cut; each event gets a ticket, and a
//! response waits for the batch holding its call's last ticket before it
//! is sent (group commit, issue 19: see `audit_durable`). A batch closes as
//! soon as the queue is empty: what comes while one commits is the next.
//! A batch that cannot be written (a full disk, a file-size limit, an I/O
//! error) is counted, with the error, in the next `audit.dropped` record
//! (`write_failed`, `write_error`); counts a lost batch carried are kept
//! for the next one.
//!
//! A writer that stops without closing (SIGKILL, a crash) is found by the
//! next one to start, which records it (`audit.unclean_stop`, see
//! `audit_runs`).
//!
//! Once the head file is written for a head that did not say so yet (a
//! new segment, a store of an older Bulkhead), the keyed head is marked
//! anchored: from then on a deleted head file is a break.
//!
//! Every batch is held to the trail's size budget (`[audit] max_size`, see
//! `audit_budget`): traffic stops at 90 % so that the rest is kept for
//! admin, security and system events, everything at 100 %, breaks never.
//!
//! A batch that meets the database's write lock held by another process
//! past SQLite's busy timeout is kept and tried again. On close (or once
//! every handle is gone) the writer takes what is still queued, gets one
//! last, short try, and spills what it still cannot write, drop counts
//! included, to a MAC'd file beside the database that the next writer to
//! start appends (T09, see `audit_spill`). `close` waits for that, bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use tracing::{error, warn};

use crate::audit::{
    AuditEvent, Break, CHAIN_BROKEN, GENESIS, HEAD_FILE, HeadFile, SEGMENT_END, check_head,
    head_mac, read_db_head, read_head_file, record_hash, write_head_file,
};
use crate::audit_budget::{Budget, Meta, Pending, traffic_max};
use crate::audit_durable::{Durability, Durable, Ticket};
use crate::audit_quota::{CHANNEL_CAPACITY, Dropped, Quota};
use crate::audit_runs::{self, Run, Stopped};
use crate::audit_spill::{self, RECOVERED, Spill, aside_path, rejected_record};
use crate::{Store, StoreError, now_ms};

const BATCH: usize = 1024;

/// The audit trail's size budget unless `[audit] max_size` says otherwise.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// How often, at most, the head file is brought up to date while events
/// keep coming (and this long after the last batch when they stop). Each
/// update costs a durable commit and two fsyncs; between updates the file
/// lags, which only narrows what a rollback check sees. A flush (every CLI
/// command, shutdown) and a break update it at once.
const HEAD_FILE_EVERY: Duration = Duration::from_millis(200);
const HEAD_FILE_EVERY_MS: i64 = 200;

/// How soon a batch kept after a failed append is tried again (each try
/// waits up to SQLite's busy timeout for the lock).
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// The busy timeout of a closing writer's last try: short, since a
/// shutdown must finish; what it cannot write is spilled (T09).
const LAST_TRY: Duration = Duration::from_secs(2);

/// How long `close` waits for the writer: a try under way (the 5 s busy
/// timeout), the last try, a head file update and the spill.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

enum Message {
    /// Boxed: the channel allocates and touches every slot up front, and
    /// small slots keep that off the start-up time.
    Event(Box<Queued>),
    Flush(SyncSender<()>),
    /// Wakes the writer to close; who waits is in `Shared::closers`, so
    /// that a full channel cannot keep a close from being seen.
    Close,
}

/// An event on its way to the writer.
struct Queued {
    event: AuditEvent,
    time_ms: i64,
    /// Who caused it (a caller key), or `None` for admin, CLI and system
    /// events.
    source: Option<Arc<str>>,
}

/// The trail's state for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStatus {
    /// The last record this writer committed or found at the head.
    pub head_seq: i64,
    /// Breaks recorded in this trail (`audit.chain_broken` segments).
    pub chain_breaks: u64,
    /// Events dropped by this process because the channel was full or
    /// their source held its share of it.
    pub dropped: u64,
    /// The trail's approximate size, and its budget.
    pub size_bytes: u64,
    pub max_size_bytes: u64,
    /// At or past the budget: events are counted, not written.
    pub full: bool,
    /// At or past the traffic share of the budget: sourced (request and
    /// guest) events are counted, not written.
    pub traffic_full: bool,
    /// Answers sent before their call's records were durable: the wait's
    /// bound passed, or the batch could not be written (issue 19).
    pub not_durable: u64,
}

#[derive(Default)]
struct Shared {
    /// Unsourced events dropped and not yet on the record.
    dropped: AtomicU64,
    /// Sourced events: places held in the queue, and drops (T09).
    quota: Quota,
    dropped_total: AtomicU64,
    head_seq: AtomicI64,
    breaks: AtomicU64,
    size_bytes: AtomicU64,
    max_bytes: AtomicU64,
    full: AtomicBool,
    traffic_full: AtomicBool,
    /// Handles waiting in `close` for the writer to finish.
    closers: Mutex<Vec<SyncSender<()>>>,
    /// Events queued so far: the last ticket given. Held while an event is
    /// sent, so that the writer's n-th event is ticket n.
    submitted: Mutex<u64>,
    /// How far the writer has committed (group commit).
    durable: Durable,
}

/// A handle to the audit trail; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct AuditLog {
    sender: SyncSender<Message>,
    shared: Arc<Shared>,
}

/// A writer opening on its own thread ([`AuditLog::start_opening`]).
#[must_use = "wait for the writer to open before relying on the trail"]
pub struct AuditOpening(Receiver<Result<(), StoreError>>);

impl AuditOpening {
    /// Wait until the writer has opened and checked the chain's end (or
    /// could not: its error).
    pub fn wait(self) -> Result<(), StoreError> {
        match self.0.recv() {
            Ok(opened) => opened,
            // The thread ended without a word: it panicked.
            Err(_) => Err(StoreError::Writer(
                "the audit writer stopped while it opened".into(),
            )),
        }
    }
}

impl AuditLog {
    /// Start the writer for `store`. The chain's end is checked against
    /// its heads at once: a broken or rolled-back trail is logged and
    /// recorded before anything else is written.
    pub fn start(store: &Store) -> Result<Self, StoreError> {
        let (audit, opening) = Self::start_opening(store)?;
        opening.wait()?;
        Ok(audit)
    }

    /// [`AuditLog::start`] without waiting for the writer to open (issue
    /// 17): its thread connects, creates and syncs its run marker, takes
    /// over the markers of writers that stopped uncleanly, reads the spill
    /// files and checks the chain's end against both heads, while the
    /// caller goes on with its own start-up. Events recorded meanwhile wait
    /// in the queue and are written after that check, as before. The caller
    /// must [`AuditOpening::wait`] before it relies on the trail (a server:
    /// before it listens), and refuse to go on if the writer could not
    /// open (T09: nothing is served without a working trail).
    pub fn start_opening(store: &Store) -> Result<(Self, AuditOpening), StoreError> {
        let (sender, receiver) = sync_channel(CHANNEL_CAPACITY);
        let shared = Arc::new(Shared::default());
        let (opened, opening) = sync_channel(1);
        let dir_error = |source| StoreError::Dir {
            dir: store.dir().to_path_buf(),
            source,
        };
        let store = store.clone();
        let writer_shared = shared.clone();
        // Never joined: `close` waits for the writer's reply, bounded, so a
        // writer whose disk hangs cannot hold a shutdown up.
        std::thread::Builder::new()
            .name("bulkhead-audit".into())
            .spawn(move || match Writer::open_checked(&store, writer_shared) {
                Ok(writer) => {
                    let _ = opened.send(Ok(()));
                    writer.run(receiver);
                }
                // The queue goes with the receiver: later sends fail and
                // are counted as dropped; the caller refuses to go on.
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })
            .map_err(dir_error)?;
        Ok((Self { sender, shared }, AuditOpening(opening)))
    }

    /// Append an admin, CLI or system `event` (one no request or guest
    /// caused); never blocks. Its ticket, unless it was dropped (counted).
    pub fn record(&self, event: AuditEvent) -> Option<Ticket> {
        self.enqueue(event, None)
    }

    /// Append `event`, caused by `source`: the caller key of the request
    /// or call (`sub:…`, `ip:…`). Never blocks. Past the source's share of
    /// the queue, or all sources' share, the event is dropped and counted
    /// under `source` (T09). Its ticket, unless it was dropped.
    pub fn record_from(&self, source: impl Into<Arc<str>>, event: AuditEvent) -> Option<Ticket> {
        let source = source.into();
        if !self.shared.quota.take(&source) {
            self.shared.quota.dropped(&source);
            self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.enqueue(event, Some(source))
    }

    fn enqueue(&self, event: AuditEvent, source: Option<Arc<str>>) -> Option<Ticket> {
        let queued = Box::new(Queued {
            event,
            time_ms: now_ms(),
            source,
        });
        let refused = {
            // The ticket and the place in the queue in one step (issue 19).
            let mut submitted = self
                .shared
                .submitted
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match self.sender.try_send(Message::Event(queued)) {
                Ok(()) => {
                    *submitted += 1;
                    return Some(Ticket(*submitted));
                }
                Err(refused) => refused,
            }
        };
        self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
        let (TrySendError::Full(message) | TrySendError::Disconnected(message)) = refused;
        match message {
            Message::Event(queued) => match &queued.source {
                Some(source) => {
                    self.shared.quota.give_back(source, 1);
                    self.shared.quota.dropped(source);
                }
                None => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
            Message::Flush(_) | Message::Close => {}
        }
        None
    }

    /// Wait, at most `bound`, until the batch holding `ticket` is committed
    /// and synced (group commit, issue 19); `None` returns at once. Holds
    /// no thread. An answer that goes out without it is counted
    /// ([`AuditStatus::not_durable`]) and logged.
    pub async fn wait_durable(&self, ticket: Option<Ticket>, bound: Duration) -> Durability {
        self.shared.durable.wait(ticket, bound).await
    }

    /// Wait until everything recorded so far is committed (bounded).
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }

    /// The trail's state as of the writer's last batch.
    pub fn status(&self) -> AuditStatus {
        let s = &self.shared;
        AuditStatus {
            head_seq: s.head_seq.load(Ordering::Relaxed),
            chain_breaks: s.breaks.load(Ordering::Relaxed),
            dropped: s.dropped_total.load(Ordering::Relaxed),
            size_bytes: s.size_bytes.load(Ordering::Relaxed),
            max_size_bytes: s.max_bytes.load(Ordering::Relaxed),
            full: s.full.load(Ordering::Relaxed),
            traffic_full: s.traffic_full.load(Ordering::Relaxed),
            not_durable: s.durable.late(),
        }
    }

    /// Commit what is pending and stop the writer (other handles then
    /// record nothing more). Bounded: what the writer cannot commit in its
    /// last try (the database locked by another process) it spills for the
    /// next start to append (T09).
    pub fn close(self) {
        let (done, wait) = sync_channel(1);
        if let Ok(mut closers) = self.shared.closers.lock() {
            closers.push(done);
        }
        // Never blocks: with the channel full the writer is busy, and sees
        // the request after its current batch.
        if !matches!(
            self.sender.try_send(Message::Close),
            Err(TrySendError::Disconnected(_))
        ) {
            let _ = wait.recv_timeout(CLOSE_WAIT);
        }
        drop(self.sender);
    }
}

struct Writer {
    conn: Connection,
    key: [u8; 32],
    /// The store's directory (spill files).
    dir: PathBuf,
    head_file: PathBuf,
    shared: Arc<Shared>,
    budget: Budget,
    /// The head this writer last committed or found intact.
    last: (i64, String),
    /// Whether that head, in the database, says the head file vouches for
    /// it; and the breaks it counts.
    head_anchored: bool,
    breaks: u64,
    /// The head file is behind `last`.
    file_stale: bool,
    /// A batch that could not be written because the database was locked
    /// past SQLite's busy timeout (another process's long transaction):
    /// kept and tried again, never thrown away (T09). At most one batch.
    retry: Vec<Pending>,
    /// Spill files read at start, appended with the next batch that
    /// commits; each file is deleted only after that commit (T09).
    recovered: Vec<Spill>,
    /// When the head file was last written.
    file_written_ms: i64,
    /// Markers of writers that stopped without closing: recorded with the
    /// next batch that commits, each deleted after that commit (T09).
    stopped: Vec<Stopped>,
    /// This writer's run marker, deleted on a clean close.
    run: Option<Run>,
    /// Events taken from the queue so far: the last ticket taken.
    received: u64,
    /// The counts the `audit.dropped` records of the batch under way
    /// carry: put back if that batch cannot be written.
    taken: Vec<Taken>,
    /// Events lost because a batch could not be written, not yet on the
    /// record, and the last error (item 4 of issue 19).
    lost: u64,
    lost_error: String,
}

/// What one `audit.dropped` record carries.
#[derive(Default)]
struct Taken {
    unsourced: u64,
    sourced: Dropped,
    lost: u64,
}

/// The longest write error an `audit.dropped` record keeps.
const MAX_ERROR_TEXT: usize = 200;

/// The chain's last record, whole, so that its hash can be recomputed.
struct Last {
    seq: i64,
    time_ms: i64,
    hash: String,
    intact: bool,
}

impl Writer {
    /// A writer for `store`, and the records of the spill files it set
    /// aside, to be appended first.
    /// A writer for `store`. With `runs`, it holds a run marker while it
    /// lives and records the writers that stopped without closing (the
    /// server and `AuditLog` users); a one-shot writer (`append_once`)
    /// leaves both to them.
    fn open(
        store: &Store,
        shared: Arc<Shared>,
        runs: bool,
    ) -> Result<(Self, Vec<Pending>), StoreError> {
        let conn = store.connect()?;
        // Every batch synced: group commit (issue 19).
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| store.db_error(e))?;
        let key = store.audit_key()?;
        let dir_error = |source| StoreError::Dir {
            dir: store.dir().to_path_buf(),
            source,
        };
        // T09: this writer's run marker, then those of writers that
        // stopped without closing (recorded with the first batch).
        let (run, stopped) = if runs {
            let run = audit_runs::begin(store.dir()).map_err(dir_error)?;
            let stopped = audit_runs::stopped(store.dir(), Some(run.path()));
            (Some(run), stopped)
        } else {
            (None, Vec::new())
        };
        // T09: records a writer spilled at its close, verified; spills
        // that are not appended are set aside and recorded.
        let (recovered, first) = audit_spill::read_all(store.dir(), &key);
        let writer = Writer {
            conn,
            key,
            dir: store.dir().to_path_buf(),
            head_file: store.dir().join(HEAD_FILE),
            shared,
            budget: Budget::default(),
            last: (0, GENESIS.to_string()),
            head_anchored: false,
            breaks: 0,
            file_stale: false,
            file_written_ms: 0,
            retry: Vec::new(),
            recovered,
            stopped,
            run,
            received: 0,
            taken: Vec::new(),
            lost: 0,
            lost_error: String::new(),
        };
        Ok((writer, first))
    }
}

impl Writer {
    /// [`Writer::open`] with a run marker, then the start check: the
    /// chain's end against its heads, the spills and the writers that
    /// stopped uncleanly appended (what [`AuditLog::start`] does before
    /// the writer takes any event).
    fn open_checked(store: &Store, shared: Arc<Shared>) -> Result<Self, StoreError> {
        let (mut writer, mut first) = Writer::open(store, shared, true)?;
        let pending = first.len();
        if let Err(e) = writer.append(&mut first, true) {
            error!(target: "bulkhead::audit", error = %e, "cannot check the audit trail's head");
            writer.keep_or_count(first, pending, &e);
        }
        // Issue 17: the head file was just checked (or written) and is up
        // to date, so the next batch's file write waits its turn (at most
        // HEAD_FILE_EVERY, or at once when idle) like any other batch's:
        // the first record after a start is committed and synced without
        // the file write on its path (T09: a lagging file only narrows what
        // the rollback check sees, as under steady traffic).
        if !writer.file_stale {
            writer.file_written_ms = now_ms();
        }
        Ok(writer)
    }
}

/// Issue 19 (T09): run `change` and append the records it returns in one
/// transaction, with the same checks as every batch (a break is recorded
/// first, in the same transaction), then bring the head file up to date.
/// A writer of its own, no thread: used by the CLI commands whose change
/// lives in `state.db` beside the trail (see `Store::change_audited`).
/// `Err(Ok(e))`: the writer could not start; `Err(Err(e))`: the change or
/// the append failed, and nothing was committed.
pub(crate) fn append_once<E: From<rusqlite::Error>>(
    store: &Store,
    change: impl FnOnce(&Connection) -> Result<Vec<AuditEvent>, E>,
) -> Result<(), Result<StoreError, E>> {
    let (mut writer, mut first) =
        Writer::open(store, Arc::new(Shared::default()), false).map_err(Ok)?;
    writer.append_with(&mut first, true, change).map_err(Err)
}

impl Writer {
    fn run(mut self, receiver: Receiver<Message>) {
        let (events, flushes) = loop {
            // A kept batch, or spills read at start, are tried again even
            // when nothing comes.
            let waiting =
                !self.retry.is_empty() || !self.recovered.is_empty() || !self.stopped.is_empty();
            let wait = if waiting {
                Some(RETRY_EVERY)
            } else if self.file_stale {
                Some(HEAD_FILE_EVERY)
            } else {
                None
            };
            let first = match wait {
                Some(wait) => match receiver.recv_timeout(wait) {
                    Ok(message) => Some(message),
                    Err(RecvTimeoutError::Timeout) if waiting => None,
                    Err(RecvTimeoutError::Timeout) => {
                        self.anchor();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        break (std::mem::take(&mut self.retry), Vec::new());
                    }
                },
                None => match receiver.recv() {
                    Ok(message) => Some(message),
                    Err(_) => break (std::mem::take(&mut self.retry), Vec::new()),
                },
            };
            let mut batch: Vec<Message> = first.into_iter().collect();
            // A kept batch takes its places in this one: what waits stays
            // bounded, and what does not fit waits in the channel (whose
            // overflow is counted).
            while batch.len() + self.retry.len() < BATCH {
                match receiver.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let retrying = !self.retry.is_empty();
            let mut events = std::mem::take(&mut self.retry);
            events.reserve(batch.len() + 1);
            let mut flushes = Vec::new();
            let closing = self.take_messages(batch, &mut events, &mut flushes);
            if closing || self.close_requested() {
                // T09: what is still queued goes into the last try (or the
                // spill), not down with the process.
                let rest: Vec<Message> = receiver.try_iter().collect();
                self.take_messages(rest, &mut events, &mut flushes);
                break (events, flushes);
            }
            // One drop count per written batch, not one per retry.
            if !retrying {
                events.extend(self.dropped_record());
            }
            let pending = events.len();
            let attempted = pending > 0
                || !flushes.is_empty()
                || !self.recovered.is_empty()
                || !self.stopped.is_empty();
            let written = !attempted || {
                let result = self.append(&mut events, !flushes.is_empty());
                match result {
                    Ok(()) => true,
                    Err(e) => {
                        self.keep_or_count(events, pending, &e);
                        false
                    }
                }
            };
            // Group commit: what waits for these tickets may go (a kept
            // batch is tried again first).
            if self.retry.is_empty() {
                self.shared.durable.settle(self.received, written);
            }
            for done in flushes {
                let _ = done.send(());
            }
        };
        // From here on a sender sees the writer gone (a late `close` does
        // not wait for it).
        drop(receiver);
        self.finish(events);
        let closers = self
            .shared
            .closers
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        for done in flushes.into_iter().chain(closers) {
            let _ = done.send(());
        }
    }

    /// Unpack `batch` into `events` and `flushes`, giving back the places
    /// its sourced events held; whether it asks the writer to close.
    fn take_messages(
        &mut self,
        batch: Vec<Message>,
        events: &mut Vec<Pending>,
        flushes: &mut Vec<SyncSender<()>>,
    ) -> bool {
        let mut closing = false;
        // Places given back once per source and batch, not per event.
        let mut taken: HashMap<Arc<str>, u32> = HashMap::new();
        for message in batch {
            match message {
                Message::Event(queued) => {
                    let Queued {
                        event,
                        time_ms,
                        source,
                    } = *queued;
                    let traffic = source.is_some();
                    self.received += 1;
                    if let Some(source) = source {
                        *taken.entry(source).or_insert(0) += 1;
                    }
                    events.push(Pending {
                        event,
                        time_ms,
                        traffic,
                    });
                }
                Message::Flush(done) => flushes.push(done),
                Message::Close => closing = true,
            }
        }
        for (source, n) in &taken {
            self.shared.quota.give_back(source, *n);
        }
        closing
    }

    fn close_requested(&self) -> bool {
        self.shared.closers.lock().is_ok_and(|c| !c.is_empty())
    }

    /// The writer's end (closed, or every handle gone): put `events`, what
    /// was dropped and what a full trail counted on the record in one last,
    /// short try; spill what cannot be written (T09).
    fn finish(&mut self, mut events: Vec<Pending>) {
        events.extend(self.dropped_record());
        if let Err(e) = self.conn.busy_timeout(LAST_TRY) {
            warn!(target: "bulkhead::audit", error = %e, "cannot shorten the busy timeout for the last audit batch");
        }
        let pending = events.len();
        let mut written = true;
        if (pending > 0
            || !self.recovered.is_empty()
            || !self.stopped.is_empty()
            || self.budget.has_counts())
            && let Err(e) = self.append(&mut events, true)
        {
            written = false;
            if events.is_empty() && pending > 0 {
                // Failed while being written: gone, but counted, and the
                // count is spilled.
                self.lose(pending, &e);
                events.extend(self.dropped_record());
            }
            error!(target: "bulkhead::audit", error = %e, pending, "cannot write the last audit records and counts");
            if !self.recovered.is_empty() {
                warn!(target: "bulkhead::audit", files = self.recovered.len(), "audit spill files not appended yet: they stay for the next start");
            }
            if !events.is_empty() {
                self.spill(events);
            }
        }
        if self.file_stale {
            self.anchor();
        }
        self.shared.durable.settle(self.received, written);
        // A clean close: no unclean stop to report (T09).
        if let Some(run) = self.run.take() {
            run.end();
        }
    }

    /// Write `events` to a spill file for the next writer to append.
    fn spill(&mut self, events: Vec<Pending>) {
        let count = events.len();
        match audit_spill::write(&self.dir, &self.key, events) {
            Ok((path, cut)) => {
                error!(target: "bulkhead::audit", path = %path.display(), events = count, cut, "audit records could not be written before the writer stopped (database locked): spilled beside it; the next start appends them");
            }
            Err(e) => {
                let lost = u64::try_from(count).unwrap_or(u64::MAX);
                self.shared.dropped_total.fetch_add(lost, Ordering::Relaxed);
                error!(target: "bulkhead::audit", error = %e, lost, "cannot spill the audit records that could not be written: they are lost");
            }
        }
    }

    /// After a failed append: a batch the writer could not start on (the
    /// database locked past the busy timeout) is kept for the next try; one
    /// that failed while being written is gone, and counted as dropped so
    /// that the next `audit.dropped` record says so (T09). Spills read at
    /// start are never taken by a failed append.
    fn keep_or_count(&mut self, events: Vec<Pending>, pending: usize, e: &rusqlite::Error) {
        if pending == 0 {
            warn!(target: "bulkhead::audit", error = %e, "cannot write to the audit trail yet: trying again");
        } else if events.is_empty() {
            self.lose(pending, e);
            error!(target: "bulkhead::audit", error = %e, lost = pending, "cannot write audit records: counted as dropped");
        } else {
            warn!(target: "bulkhead::audit", error = %e, pending, "cannot write audit records yet: kept, trying again");
            self.retry = events;
        }
    }

    /// A batch of `n` events was lost while being written (a full disk,
    /// a file-size limit, an I/O error): count them with the error, and
    /// put back the counts its `audit.dropped` record carried, so that the
    /// next `audit.dropped` record says all of it (T09, issue 19).
    fn lose(&mut self, n: usize, e: &rusqlite::Error) {
        let taken = std::mem::take(&mut self.taken);
        // The `audit.dropped` records themselves are not events lost.
        let new = u64::try_from(n.saturating_sub(taken.len())).unwrap_or(u64::MAX);
        self.shared.dropped_total.fetch_add(new, Ordering::Relaxed);
        self.lost = self.lost.saturating_add(new);
        for carried in taken {
            self.lost = self.lost.saturating_add(carried.lost);
            self.shared
                .dropped
                .fetch_add(carried.unsourced, Ordering::Relaxed);
            self.shared.quota.restore(carried.sourced);
        }
        let mut text = e.to_string();
        if text.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        self.lost_error = text;
    }

    /// One `audit.dropped` record for the events dropped since the last
    /// one, if any: how many, and by which source (T09). A record of
    /// traffic drops alone counts as traffic for the size budget, so a
    /// flood cannot spend the admin reserve through its drops.
    fn dropped_record(&mut self) -> Option<Pending> {
        let unsourced = self.shared.dropped.swap(0, Ordering::Relaxed);
        let sourced = self.shared.quota.take_dropped();
        let lost = std::mem::take(&mut self.lost);
        let total = unsourced
            .saturating_add(sourced.total())
            .saturating_add(lost);
        if total == 0 {
            return None;
        }
        let mut event = AuditEvent::new("audit.dropped").detail("events", total);
        if lost > 0 {
            event = event
                .detail("write_failed", lost)
                .detail("write_error", self.lost_error.as_str());
        }
        if unsourced > 0 {
            event = event.detail("unsourced", unsourced);
        }
        if !sourced.by_source.is_empty() {
            event = event.detail("sources", Value::Object(sourced.sources_detail()));
        }
        if sourced.other_sources > 0 {
            event = event.detail("other_sources", sourced.other_sources);
        }
        self.taken.push(Taken {
            unsourced,
            sourced,
            lost,
        });
        Some(Pending {
            event,
            time_ms: now_ms(),
            traffic: unsourced == 0 && lost == 0,
        })
    }

    /// Bring the head file up to `last`. First one durable commit
    /// (synchronous FULL syncs the WAL, and with it every commit before),
    /// so that the file is never ahead of what survives a power cut, which
    /// would look like a rollback; then the file, written whole.
    fn anchor(&mut self) {
        // Every commit of this connection is synchronous (FULL); this one
        // also syncs what other connections committed NORMAL before it.
        let durable = self.conn.execute(
            "INSERT INTO audit_meta (id, size_bytes, anchors) VALUES (1, 0, 1)
                 ON CONFLICT (id) DO UPDATE SET anchors = anchors + 1",
            [],
        );
        match durable {
            Ok(_) => self.write_file(),
            Err(e) => {
                error!(target: "bulkhead::audit", error = %e, path = %self.head_file.display(), "cannot write the audit head file");
            }
        }
    }

    /// The second half of [`Writer::anchor`]: the head file for `last`,
    /// once a durable commit of this connection (which synced the WAL up to
    /// `last`) has counted it in `anchors`.
    fn write_file(&mut self) {
        let (seq, hash) = &self.last;
        match write_head_file(&self.head_file, &self.key, *seq, hash) {
            Ok(()) => {
                self.file_stale = false;
                self.file_written_ms = now_ms();
                if !self.head_anchored
                    && let Err(e) = self.mark_anchored()
                {
                    error!(target: "bulkhead::audit", error = %e, "cannot mark the audit head as anchored");
                }
            }
            // The database is committed; a lagging head file only narrows
            // what a rollback check can see, so keep serving (and retry
            // after the next batch).
            Err(e) => {
                error!(target: "bulkhead::audit", error = %e, path = %self.head_file.display(), "cannot write the audit head file");
            }
        }
    }

    /// The head file now vouches for the head: say so in the keyed head,
    /// so that deleting the file from now on is a break (T09). Only if
    /// the head is still the one this writer wrote or found; a writer that
    /// moved on since wrote its own.
    fn mark_anchored(&mut self) -> rusqlite::Result<()> {
        let (seq, hash) = &self.last;
        let breaks = i64::try_from(self.breaks).unwrap_or(i64::MAX);
        self.conn.execute(
            "UPDATE audit_head SET anchored = 1, mac = ?1
             WHERE id = 1 AND seq = ?2 AND hash = ?3 AND breaks = ?4 AND anchored = 0",
            params![
                head_mac(&self.key, *seq, hash, true, self.breaks),
                seq,
                hash,
                breaks
            ],
        )?;
        self.head_anchored = true;
        Ok(())
    }

    /// Check the chain's end, then chain and commit `events` (one
    /// transaction: one batch), then write the head file. `flush`: also
    /// write the count of suppressed events now.
    ///
    /// `events` is left untouched when the append fails before it could
    /// check the chain (the write lock not granted): the caller keeps it.
    /// From the checks on, it is taken.
    fn append(&mut self, events: &mut Vec<Pending>, flush: bool) -> rusqlite::Result<()> {
        self.append_with(events, flush, |_| Ok(Vec::new()))
    }

    /// [`Writer::append`], with `change` run first in the same
    /// transaction and the records it returns appended after `events`
    /// (issue 19: one change, one transaction).
    fn append_with<E: From<rusqlite::Error>>(
        &mut self,
        events: &mut Vec<Pending>,
        flush: bool,
        change: impl FnOnce(&Connection) -> Result<Vec<AuditEvent>, E>,
    ) -> Result<(), E> {
        // Another process (a CLI command such as `secrets set` or `keys
        // create` while the server runs) may have appended since: take the
        // write lock first, then check and continue from the real head.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let changed = change(&tx)?;
        let time_ms = now_ms();
        events.extend(changed.into_iter().map(|e| Pending::system(e, time_ms)));
        let last = last_record(&tx)?;
        let mut meta = read_meta(&tx)?;
        // Read under the write lock: no writer can commit (and then write
        // the file) until this transaction ends.
        let file = read_head_file(&self.head_file, &self.key);
        let file_valid = matches!(file, HeadFile::Valid { .. });
        let checked = check_head(
            &tx,
            &self.key,
            &self.head_file,
            file,
            last.as_ref().map(|l| (l.seq, l.hash.as_str())),
        )?;
        let own_gone = own_record_gone(&tx, &self.last)?;
        let checked = match (checked, &last) {
            (Ok(_), Some(l)) if !l.intact => Err(Break {
                seq: l.seq,
                reason: format!("record {} was changed after it was written (edited)", l.seq),
                expected: json!({"source": "record hash", "record": l.seq, "hash": l.hash}),
                found: json!({"last_record": l.seq}),
                high_water: l.seq,
            }),
            // The record this writer committed last is gone or changed: the
            // trail was rolled back while it ran, heads and file with it,
            // whether or not another writer has appended since.
            (Ok(_), end) if own_gone => {
                let found = end.as_ref().map_or(0, |l| l.seq);
                Err(Break {
                    seq: found.min(self.last.0),
                    reason: format!(
                        "record {} that this writer committed is gone or changed (rolled back while it ran); the trail now ends at record {found}",
                        self.last.0
                    ),
                    expected: json!({"source": "this writer", "record": self.last.0, "hash": self.last.1}),
                    found: json!({"last_record": found}),
                    high_water: found.max(self.last.0),
                })
            }
            (checked, _) => checked,
        };
        // Spills read at start (T09) go first, once: one whose id is on the
        // chain already is a copy put back (a replay), or one another
        // writer took in since it was read.
        let mut replayed = Vec::with_capacity(self.recovered.len());
        for spill in &self.recovered {
            let on_chain: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM audit WHERE kind = ?1 AND instr(detail, ?2) > 0)",
                params![RECOVERED, format!("\"spill\":\"{}\"", spill.id)],
                |r| r.get(0),
            )?;
            replayed.push(on_chain);
        }
        let mut events = {
            let mut all = Vec::new();
            for (spill, &replayed) in self.recovered.iter().zip(&replayed) {
                if !replayed {
                    all.extend(spill.events.iter().cloned());
                } else if spill.path.exists() {
                    all.push(rejected_record(
                        spill.bytes,
                        "it was recovered already (a copy put back)",
                        &aside_path(&spill.path),
                    ));
                }
            }
            // T09: writers that stopped without closing, and where the
            // trail ended then (this writer has appended nothing yet).
            let end = last.as_ref().map(|l| (l.seq, l.time_ms));
            all.extend(
                self.stopped
                    .iter()
                    .map(|stopped| Pending::system(stopped.record(end), now_ms())),
            );
            all.append(events);
            all
        };
        let now = now_ms();
        let broke = checked.is_err();
        let (mut seq, mut prev_hash, anchored, rewrite_head) = match checked {
            Ok(checked) => {
                // A head MAC'd the way of an older Bulkhead does not cover
                // the count: take the old one and MAC it anew at once.
                if let Some(breaks) = checked.breaks {
                    meta.breaks = breaks;
                }
                self.head_anchored = checked.head_anchored;
                let (seq, hash) = last.map_or((0, GENESIS.to_string()), |l| (l.seq, l.hash));
                (seq, hash, checked.file_valid, checked.breaks.is_none())
            }
            Err(brk) => {
                // T09: never launder a broken chain by extending it.
                error!(
                    target: "bulkhead::audit",
                    broken_at = brk.seq,
                    reason = %brk.reason,
                    "the audit trail was tampered with or rolled back: starting a new segment that records the break"
                );
                meta.breaks = breaks_so_far(&tx, meta.breaks)?.saturating_add(1);
                // The chain's end as found, number and stored hash: it ties
                // every record before the break to the new segment, which
                // the keyed head covers, so `verify` sees them deleted or
                // rewritten later (null: no record was left).
                let segment_end = last
                    .as_ref()
                    .map_or(Value::Null, |l| json!({"seq": l.seq, "hash": l.hash}));
                events.insert(
                    0,
                    Pending::system(
                        AuditEvent::new(CHAIN_BROKEN)
                            .detail("broken_at", brk.seq)
                            .detail("reason", brk.reason)
                            .detail("expected", brk.expected)
                            .detail("found", brk.found)
                            .detail(SEGMENT_END, segment_end),
                        now,
                    ),
                );
                (brk.high_water, GENESIS.to_string(), file_valid, true)
            }
        };
        let events = self.budget.apply(events, &mut meta, flush, now);
        let written = !events.is_empty();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (seq, time_ms, kind, correlation_id, subject, function, detail, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (event, time_ms) in events {
                seq = seq.saturating_add(1);
                let detail = Value::Object(event.detail).to_string();
                let hash = record_hash(
                    seq,
                    time_ms,
                    &event.kind,
                    event.correlation_id.as_deref(),
                    event.subject.as_deref(),
                    event.function.as_deref(),
                    &detail,
                    &prev_hash,
                );
                insert.execute(params![
                    seq,
                    time_ms,
                    event.kind,
                    event.correlation_id,
                    event.subject,
                    event.function,
                    detail,
                    prev_hash,
                    hash
                ])?;
                prev_hash = hash;
            }
        }
        if written || rewrite_head {
            tx.execute(
                "INSERT INTO audit_head (id, seq, hash, mac, anchored, breaks) VALUES (1, ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
                     mac = excluded.mac, anchored = excluded.anchored, breaks = excluded.breaks",
                params![
                    seq,
                    prev_hash,
                    head_mac(&self.key, seq, &prev_hash, anchored, meta.breaks),
                    anchored,
                    i64::try_from(meta.breaks).unwrap_or(i64::MAX)
                ],
            )?;
        }
        if written {
            tx.execute(
                "INSERT INTO audit_meta (id, size_bytes) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET size_bytes = excluded.size_bytes",
                [i64::try_from(meta.size_bytes).unwrap_or(i64::MAX)],
            )?;
        }
        // Whether the head file is brought up to date right after this
        // commit (see below). Issue 17: if so, the durable commit that must
        // precede the file (T09, `anchor`) is this batch's own: the count
        // goes into its transaction, which makes it a write committed with
        // `synchronous = FULL` (the WAL synced up to this head), instead of
        // a second commit and sync of its own before the file.
        let head_anchored = if written || rewrite_head {
            anchored
        } else {
            self.head_anchored
        };
        let file_stale = self.file_stale || written || !head_anchored;
        let anchor_now =
            file_stale && (broke || flush || now - self.file_written_ms >= HEAD_FILE_EVERY_MS);
        if anchor_now {
            tx.execute(
                "INSERT INTO audit_meta (id, size_bytes, anchors) VALUES (1, 0, 1)
                 ON CONFLICT (id) DO UPDATE SET anchors = anchors + 1",
                [],
            )?;
        }
        tx.commit()?;
        for (spill, replayed) in std::mem::take(&mut self.recovered)
            .into_iter()
            .zip(replayed)
        {
            settle_spill(&spill.path, replayed);
        }
        for stopped in std::mem::take(&mut self.stopped) {
            stopped.settle();
        }
        self.taken.clear();
        self.last = (seq, prev_hash);
        self.breaks = meta.breaks;
        // Bring the file up to date, and anchor a head that is not yet
        // (one written by an older version, or a new segment's first):
        // after a break at once (the old head file names records that the
        // new segment does not hold), on a flush, or when the last write is
        // HEAD_FILE_EVERY old.
        self.head_anchored = head_anchored;
        self.file_stale = file_stale;
        if anchor_now {
            self.write_file();
        }
        let s = &self.shared;
        s.head_seq.store(seq, Ordering::Relaxed);
        s.breaks.store(meta.breaks, Ordering::Relaxed);
        s.size_bytes.store(meta.size_bytes, Ordering::Relaxed);
        s.max_bytes.store(meta.max_bytes, Ordering::Relaxed);
        s.full
            .store(meta.size_bytes >= meta.max_bytes, Ordering::Relaxed);
        s.traffic_full.store(
            meta.size_bytes >= traffic_max(meta.max_bytes),
            Ordering::Relaxed,
        );
        Ok(())
    }
}

/// After the commit that took a spill in: delete the file, or set aside a
/// copy of one recovered already, for evidence (T09).
fn settle_spill(path: &Path, replayed: bool) {
    let done = if replayed {
        std::fs::rename(path, aside_path(path))
    } else {
        std::fs::remove_file(path)
    };
    match done {
        Ok(()) if !replayed => {
            warn!(target: "bulkhead::audit", path = %path.display(), "audit records spilled at an earlier shutdown were appended to the trail");
        }
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Its id is on the chain: the next start sets it aside.
        Err(e) => {
            error!(target: "bulkhead::audit", error = %e, path = %path.display(), "cannot remove an audit spill file that was appended");
        }
    }
}

/// Whether `committed`, the record a writer committed last, is no longer
/// in the chain as it wrote it. Writers only ever add records, so that is
/// a rollback (T09), even when other writers have appended since.
fn own_record_gone(conn: &Connection, committed: &(i64, String)) -> rusqlite::Result<bool> {
    let (seq, hash) = committed;
    if *seq == 0 {
        return Ok(false);
    }
    let stored: Option<String> = conn
        .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(stored.as_deref() != Some(hash.as_str()))
}

fn last_record(conn: &Connection) -> rusqlite::Result<Option<Last>> {
    conn.query_row(
        "SELECT seq, time_ms, kind, correlation_id, subject, function, detail, prev_hash, hash
         FROM audit ORDER BY seq DESC LIMIT 1",
        [],
        |row| {
            let seq: i64 = row.get(0)?;
            let hash: String = row.get(8)?;
            let correlation_id: Option<String> = row.get(3)?;
            let subject: Option<String> = row.get(4)?;
            let function: Option<String> = row.get(5)?;
            let recomputed = record_hash(
                seq,
                row.get(1)?,
                &row.get::<_, String>(2)?,
                correlation_id.as_deref(),
                subject.as_deref(),
                function.as_deref(),
                &row.get::<_, String>(6)?,
                &row.get::<_, String>(7)?,
            );
            Ok(Last {
                seq,
                time_ms: row.get(1)?,
                intact: recomputed == hash,
                hash,
            })
        },
    )
    .optional()
}

/// The breaks recorded so far, when the keyed head that counts them cannot
/// be trusted: the most that any source says (the head's count as stored,
/// the count an older Bulkhead kept in `audit_meta`, the segments in the
/// chain), so that resetting the count hides no break from `/metrics`.
fn breaks_so_far(conn: &Connection, legacy: u64) -> rusqlite::Result<u64> {
    let stored = read_db_head(conn)?.map_or(0, |h| h.breaks);
    let segments: i64 = conn.query_row(
        "SELECT count(*) FROM audit WHERE kind = ?1 AND prev_hash = ?2",
        params![CHAIN_BROKEN, GENESIS],
        |r| r.get(0),
    )?;
    Ok(stored.max(legacy).max(u64::try_from(segments).unwrap_or(0)))
}

/// `audit_meta`: the size and budget, and the break count of a store whose
/// keyed head is still MAC'd the old way (ignored once it is not).
fn read_meta(conn: &Connection) -> rusqlite::Result<Meta> {
    let row: Option<(i64, Option<i64>, i64)> = conn
        .query_row(
            "SELECT size_bytes, max_bytes, breaks FROM audit_meta WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let (size, max, breaks) = row.unwrap_or((0, None, 0));
    let positive = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Meta {
        size_bytes: positive(size),
        max_bytes: max
            .map(positive)
            .filter(|&m| m > 0)
            .unwrap_or(DEFAULT_AUDIT_MAX_BYTES),
        breaks: positive(breaks),
    })
}
