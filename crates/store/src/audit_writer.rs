//! Appends audit events from any thread without blocking the request path:
//! events go through a bounded channel to one writer thread, which chains
//! and commits them in batches. If the channel is full (a flood), events are
//! counted, and the count is written as an `audit.dropped` record: the gap
//! is itself on the record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tracing::error;

use crate::audit::{AuditEvent, GENESIS, head_mac, record_hash};
use crate::{Store, StoreError, now_ms};

const CHANNEL_CAPACITY: usize = 16_384;
const BATCH: usize = 1024;

enum Message {
    /// Boxed: the channel allocates and touches every slot up front, and
    /// small slots keep that off the start-up time.
    Event(Box<AuditEvent>, i64),
    Flush(SyncSender<()>),
}

/// A handle to the audit trail; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct AuditLog {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl AuditLog {
    /// Start the writer for `store`.
    pub fn start(store: &Store) -> Result<Self, StoreError> {
        let conn = store.connect()?;
        let key = store.audit_key()?;
        let (sender, receiver) = sync_channel(CHANNEL_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            conn,
            key,
            dropped: dropped.clone(),
            seq: 0,
            prev_hash: GENESIS.to_string(),
        };
        writer.reload_head();
        let thread = std::thread::Builder::new()
            .name("bulkhead-audit".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Dir {
                dir: store.dir().to_path_buf(),
                source: e,
            })?;
        Ok(Self {
            sender,
            dropped,
            writer: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Append `event`; never blocks.
    pub fn record(&self, event: AuditEvent) {
        match self
            .sender
            .try_send(Message::Event(Box::new(event), now_ms()))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wait until everything recorded so far is committed (bounded).
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Commit what is pending and stop the writer (other handles then
    /// record nothing more).
    pub fn close(self) {
        self.flush();
        let thread = self.writer.lock().ok().and_then(|mut w| w.take());
        drop(self.sender);
        if let Some(thread) = thread {
            // The writer ends once every sender is gone; handles still held
            // elsewhere keep it alive, so do not wait on it here.
            drop(thread);
        }
    }
}

struct Writer {
    conn: Connection,
    key: [u8; 32],
    dropped: Arc<AtomicU64>,
    seq: i64,
    prev_hash: String,
}

impl Writer {
    fn reload_head(&mut self) {
        let last: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .unwrap_or(None);
        (self.seq, self.prev_hash) = last.unwrap_or((0, GENESIS.to_string()));
    }

    fn run(mut self, receiver: Receiver<Message>) {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match receiver.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let mut events = Vec::with_capacity(batch.len() + 1);
            let mut flushes = Vec::new();
            for message in batch {
                match message {
                    Message::Event(event, time) => events.push((*event, time)),
                    Message::Flush(done) => flushes.push(done),
                }
            }
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                events.push((
                    AuditEvent::new("audit.dropped").detail("events", dropped),
                    now_ms(),
                ));
            }
            if !events.is_empty()
                && let Err(e) = self.append(&events)
            {
                error!(target: "bulkhead::audit", error = %e, lost = events.len(), "cannot write audit records");
                self.reload_head();
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    fn append(&mut self, events: &[(AuditEvent, i64)]) -> rusqlite::Result<()> {
        // Another process (a CLI command such as `secrets set` or `keys
        // create` while the server runs) may have appended since: take the
        // write lock first, then continue the chain from its real head.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let (mut seq, mut prev_hash) = last.unwrap_or((0, GENESIS.to_string()));
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (seq, time_ms, kind, correlation_id, subject, function, detail, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (event, time_ms) in events {
                seq += 1;
                let detail = serde_json::Value::Object(event.detail.clone()).to_string();
                let hash = record_hash(
                    seq,
                    *time_ms,
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
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
            params![seq, prev_hash, head_mac(&self.key, seq, &prev_hash)],
        )?;
        tx.commit()?;
        self.seq = seq;
        self.prev_hash = prev_hash;
        Ok(())
    }
}
