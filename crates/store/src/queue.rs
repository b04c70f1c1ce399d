//! The embedded durable queue (issue 18; T01, T04, T14): messages in the
//! `queue_messages` table of the app's state database (WAL), behind
//! [`QueueBackend`] so that a PostgreSQL back end (`FOR UPDATE SKIP
//! LOCKED`) can take its place on a cluster.
//!
//! - Durable: its connection commits with `synchronous = FULL`, so an
//!   [`QueueBackend::enqueue`] that returned `Ok` is in the WAL on disk,
//!   surviving SIGKILL and power loss alike.
//! - At least once: [`QueueBackend::lease`] hides a message for the
//!   queue's visibility timeout and counts the delivery; not acknowledged
//!   in time, it is delivered again. A failure retries it after an
//!   exponential back-off; after `max_attempts` deliveries it moves to the
//!   queue's dead-letter queue with the reason (or, without one, is parked
//!   in its queue, undelivered, until its retention ends).
//! - Loops (T04): every message carries its causal depth; an enqueue
//!   deeper than `max_event_depth` is refused with [`QueueError::TooDeep`]
//!   for the caller to dead-letter ([`QueueBackend::dead_letter_refused`]),
//!   log and audit.
//! - Sealed at rest (T14) like key-value values: the payload under an
//!   app-wide data key, bound by associated data to its message id,
//!   correlation id, depth and enqueue time, so neither payloads nor a
//!   lowered depth can be swapped in; a message that fails to open is
//!   dead-lettered, never delivered.
//! - Order: first in, first out per queue, best effort: a message retried
//!   keeps its place but waits out its back-off, and parallel consumers
//!   finish in any order.
//! - Time comes from a [`Clock`], so visibility and back-off are tested
//!   without sleeping.
//!
//! The table is created by [`SqliteQueue::open`] (`IF NOT EXISTS`), not
//! by a numbered migration of `lib.rs`, while the store's back ends are
//! being split behind traits.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use zeroize::Zeroizing;

use crate::crypto::{Aad, CryptoError, DataKey, Keyring};
use crate::{Store, StoreError};

const OWNER: &str = "queue";
const KEY_NAME: &str = "messages";
/// Longest correlation id a message carries (the gateway's are shorter).
const MAX_CORRELATION_ID: usize = 128;
/// Longest dead-letter reason kept.
const MAX_REASON: usize = 256;

const SCHEMA: &str = r"
    CREATE TABLE IF NOT EXISTS queue_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        msg_id BLOB NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        payload_sealed BLOB NOT NULL,
        correlation_id TEXT NOT NULL,
        depth INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        enqueued_ms INTEGER NOT NULL,
        visible_ms INTEGER NOT NULL,
        lease_token BLOB,
        expires_ms INTEGER NOT NULL,
        parked INTEGER NOT NULL DEFAULT 0,
        dead_reason TEXT,
        origin_queue TEXT
    );
    CREATE INDEX IF NOT EXISTS queue_messages_ready ON queue_messages (queue, parked, visible_ms, seq);
    CREATE INDEX IF NOT EXISTS queue_messages_expiry ON queue_messages (expires_ms);
    CREATE TABLE IF NOT EXISTS queue_chains (
        chain BLOB PRIMARY KEY,
        sent INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS queue_chains_expiry ON queue_chains (expires_ms);
";

/// Milliseconds since the Unix epoch, from a source tests can drive.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::now_ms()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One declared queue's bounds (from the manifest's `[queue.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub name: String,
    pub retention_ms: i64,
    pub max_message_bytes: usize,
    pub max_attempts: u32,
    pub visibility_timeout_ms: i64,
    pub dead_letter: Option<String>,
}

/// App-wide bounds of every queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `[limits] max_event_depth` (T04).
    pub max_event_depth: u32,
    /// `[limits] max_event_messages` (T04): messages one chain sends in all.
    pub max_chain_messages: u32,
    /// The first retry waits this long; each next one twice as long.
    pub retry_base_ms: i64,
    /// No retry waits longer.
    pub retry_max_ms: i64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_event_depth: 16,
            max_chain_messages: 1_000,
            retry_base_ms: 1_000,
            retry_max_ms: 5 * 60 * 1_000,
        }
    }
}

/// A message to enqueue.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub payload: &'a [u8],
    /// The correlation id of the call that sent it: one trace across the hop.
    pub correlation_id: &'a str,
    /// Causal depth: 1 when sent by an HTTP call or a schedule, one more
    /// than the message being processed when sent while processing one.
    pub depth: u32,
    /// The causal chain: chosen by the host (never a client or a guest)
    /// for the HTTP call or schedule run that started it, and carried by
    /// every message it sets off; its sends are counted together (T04).
    pub chain: [u8; 16],
}

/// A message's id: random, so it reveals neither order nor volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub [u8; 16]);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The right to settle one delivery: stale once the message is
/// delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: MessageId,
    token: [u8; 16],
}

/// One delivered message.
#[derive(Debug)]
pub struct Delivery {
    pub lease: Lease,
    pub queue: String,
    pub payload: Zeroizing<Vec<u8>>,
    pub correlation_id: String,
    pub depth: u32,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub enqueued_ms: i64,
    /// Why it was dead-lettered, for a message delivered from a
    /// dead-letter queue.
    pub dead_reason: Option<String>,
    /// The chain it belongs to: what its consumer sends counts there too.
    pub chain: [u8; 16],
}

/// What [`QueueBackend::ack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    Deleted,
    /// The lease was no longer the message's (delivered again, purged or
    /// expired): nothing was changed.
    Stale,
}

/// What [`QueueBackend::fail`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// Delivered again from `at_ms`.
    Retry {
        at_ms: i64,
    },
    /// Moved to this dead-letter queue.
    DeadLettered {
        to: String,
    },
    /// Kept in its queue, undelivered: it has no dead-letter queue.
    Parked,
    Stale,
}

/// A message as an operator sees it (`bulkhead queue peek`).
#[derive(Debug)]
pub struct Peeked {
    pub id: MessageId,
    pub correlation_id: String,
    pub depth: u32,
    pub attempts: u32,
    pub enqueued_ms: i64,
    pub visible_ms: i64,
    pub leased: bool,
    pub parked: bool,
    pub dead_reason: Option<String>,
    /// The queue it was dead-lettered from.
    pub origin: Option<String>,
    /// `None` when it fails authentication at rest (T14).
    pub payload: Option<Zeroizing<Vec<u8>>>,
}

/// One queue's counts (`bulkhead queue list`, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub name: String,
    /// Deliverable now.
    pub ready: u64,
    /// Leased and not yet settled.
    pub in_flight: u64,
    /// Waiting out a retry back-off.
    pub delayed: u64,
    /// Dead, kept undelivered (no dead-letter queue).
    pub parked: u64,
    /// The oldest message's enqueue time.
    pub oldest_enqueued_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue `{0}` is not declared")]
    UnknownQueue(String),
    #[error("the message is {size} bytes; queue `{queue}` takes at most {max}")]
    TooLarge {
        queue: String,
        size: usize,
        max: usize,
    },
    /// T04: the chain of events is deeper than `max_event_depth`.
    #[error(
        "the message's causal depth {depth} is over max_event_depth {max}: a chain of events that keeps triggering itself is stopped"
    )]
    TooDeep { depth: u32, max: u32 },
    /// T04: the chain of events has sent `max_event_messages` already.
    #[error(
        "the chain of events has sent {max} messages, its max_event_messages: fan-out that multiplies itself is stopped"
    )]
    ChainExhausted { max: u32 },
    #[error("a correlation id must be 1 to 128 printable ASCII characters")]
    BadCorrelationId,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("queue database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// A queue back end: the embedded one is [`SqliteQueue`].
pub trait QueueBackend: Send + Sync {
    /// Store a message durably; `Ok` only once it is committed.
    fn enqueue(&self, queue: &str, message: NewMessage<'_>) -> Result<MessageId, QueueError>;
    /// Put a message refused at enqueue (too deep) straight into the
    /// queue's dead-letter queue, or parked in the queue, with `reason`.
    /// Returns where it went.
    fn dead_letter_refused(
        &self,
        queue: &str,
        message: NewMessage<'_>,
        reason: &str,
    ) -> Result<Failed, QueueError>;
    /// Up to `max` deliverable messages, oldest first, each hidden for
    /// the queue's visibility timeout.
    fn lease(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError>;
    /// Done: delete the message.
    fn ack(&self, lease: &Lease) -> Result<Acked, QueueError>;
    /// Not delivered after all (the host had no room to run it): back to
    /// the queue, visible again after `after_ms`, its delivery not counted
    /// as an attempt. False when the lease was stale.
    fn release(&self, lease: &Lease, after_ms: i64) -> Result<bool, QueueError>;
    /// Not done: retry after a back-off, or dead-letter after the last attempt.
    fn fail(&self, lease: &Lease, reason: &str) -> Result<Failed, QueueError>;
    /// Delete every message past its retention; returns how many.
    fn sweep(&self) -> Result<u64, QueueError>;
    /// Up to `limit` messages of `queue`, oldest first, without leasing them.
    fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Peeked>, QueueError>;
    /// Delete every message of `queue`; returns how many.
    fn purge(&self, queue: &str) -> Result<u64, QueueError>;
    /// Move `queue`'s dead messages (dead-lettered into it, or parked in
    /// it) back to `to`, else to where each came from, as new.
    fn redrive(&self, queue: &str, to: Option<&str>) -> Result<u64, QueueError>;
    /// Counts of every declared queue.
    fn stats(&self) -> Result<Vec<QueueStats>, QueueError>;
}

/// The embedded back end, in `state.db`.
pub struct SqliteQueue {
    conn: Mutex<Connection>,
    dek: DataKey,
    queues: Vec<QueueSettings>,
    limits: QueueLimits,
    clock: Arc<dyn Clock>,
}

impl SqliteQueue {
    pub fn open(
        store: &Store,
        keyring: &Keyring,
        queues: Vec<QueueSettings>,
        limits: QueueLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        let conn = store.connect()?;
        // Durable against power loss, not only SIGKILL: each commit syncs.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        // Tables made before chains were counted get the column; their
        // messages (sealed without a chain) then fail authentication and
        // are dead-lettered, never delivered.
        let has_chain: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('queue_messages') WHERE name = 'chain'",
            [],
            |r| r.get::<_, i64>(0),
        )? > 0;
        if !has_chain {
            conn.execute_batch("ALTER TABLE queue_messages ADD COLUMN chain BLOB")?;
        }
        let dek = keyring
            .data_key(OWNER, KEY_NAME, "", true)?
            .ok_or(CryptoError::Unwrap)?;
        Ok(Self {
            conn: Mutex::new(conn),
            dek,
            queues,
            limits,
            clock,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settings(&self, queue: &str) -> Result<&QueueSettings, QueueError> {
        self.queues
            .iter()
            .find(|q| q.name == queue)
            .ok_or_else(|| QueueError::UnknownQueue(queue.to_string()))
    }

    fn aad(id: &[u8], correlation_id: &str, depth: u32, enqueued_ms: i64, chain: &[u8]) -> Aad {
        Aad::new(&[
            b"queue-message",
            id,
            correlation_id.as_bytes(),
            &depth.to_be_bytes(),
            &enqueued_ms.to_be_bytes(),
            chain,
        ])
    }

    /// Count one more message of `chain`, or refuse it past
    /// `max_chain_messages` (T04); inside the enqueue's transaction.
    fn count_in_chain(&self, tx: &Transaction<'_>, chain: &[u8; 16]) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        // Kept as long as a message of the chain may still be delivered.
        let longest = self
            .queues
            .iter()
            .map(|q| q.retention_ms)
            .max()
            .unwrap_or(0);
        let sent: i64 = tx.query_row(
            "INSERT INTO queue_chains (chain, sent, expires_ms) VALUES (?1, 1, ?2)
             ON CONFLICT (chain) DO UPDATE SET sent = sent + 1, expires_ms = max(expires_ms, ?2)
             RETURNING sent",
            params![&chain[..], now.saturating_add(longest)],
            |r| r.get(0),
        )?;
        if sent > i64::from(self.limits.max_chain_messages) {
            return Err(QueueError::ChainExhausted {
                max: self.limits.max_chain_messages,
            });
        }
        Ok(())
    }

    /// The wait before delivery `attempts + 1`, after `attempts` failed.
    fn backoff_ms(&self, attempts: u32) -> i64 {
        let doublings = attempts.saturating_sub(1).min(30);
        self.limits
            .retry_base_ms
            .saturating_mul(1_i64 << doublings)
            .min(self.limits.retry_max_ms)
    }

    fn check(&self, queue: &str, message: &NewMessage<'_>) -> Result<(), QueueError> {
        let settings = self.settings(queue)?;
        if message.payload.len() > settings.max_message_bytes {
            return Err(QueueError::TooLarge {
                queue: queue.to_string(),
                size: message.payload.len(),
                max: settings.max_message_bytes,
            });
        }
        let id = message.correlation_id;
        if id.is_empty()
            || id.len() > MAX_CORRELATION_ID
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(QueueError::BadCorrelationId);
        }
        Ok(())
    }

    /// Insert a sealed message; `dead` puts it in as a dead letter.
    fn insert(
        &self,
        conn: &Connection,
        queue: &str,
        message: &NewMessage<'_>,
        dead: Option<(&str, bool, Option<&str>)>,
    ) -> Result<MessageId, QueueError> {
        let settings = self.settings(queue)?;
        let id = MessageId(crate::files::random_bytes::<16>().map_err(CryptoError::Random)?);
        let now = self.clock.now_ms();
        let aad = Self::aad(
            &id.0,
            message.correlation_id,
            message.depth,
            now,
            &message.chain,
        );
        let sealed = self.dek.seal(&aad, message.payload)?;
        let (reason, parked, origin) = match dead {
            Some((reason, parked, origin)) => (Some(reason), parked, origin),
            None => (None, false, None),
        };
        conn.execute(
            "INSERT INTO queue_messages (msg_id, queue, payload_sealed, correlation_id, depth, enqueued_ms, visible_ms, expires_ms, parked, dead_reason, origin_queue, chain)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                &id.0[..],
                queue,
                sealed,
                message.correlation_id,
                message.depth,
                now,
                now.saturating_add(settings.retention_ms),
                parked,
                reason,
                origin,
                &message.chain[..]
            ],
        )?;
        Ok(id)
    }

    /// Move message `seq` of `queue` to its dead-letter queue, or park it.
    fn bury(
        &self,
        tx: &Transaction<'_>,
        seq: i64,
        queue: &str,
        reason: &str,
    ) -> Result<Failed, QueueError> {
        let reason = bounded_reason(reason);
        let now = self.clock.now_ms();
        let settings = self.settings(queue)?;
        // A queue its own dead-letter queue would deliver the message
        // again: parked instead (the manifest refuses such a queue).
        match settings.dead_letter.as_ref().filter(|to| *to != queue) {
            Some(to) => {
                let retention = self.settings(to)?.retention_ms;
                tx.execute(
                    "UPDATE queue_messages SET queue = ?2, attempts = 0, visible_ms = ?3, lease_token = NULL, expires_ms = ?4, parked = 0, dead_reason = ?5, origin_queue = ?6 WHERE seq = ?1",
                    params![seq, to, now, now.saturating_add(retention), reason, queue],
                )?;
                Ok(Failed::DeadLettered { to: to.clone() })
            }
            None => {
                tx.execute(
                    "UPDATE queue_messages SET lease_token = NULL, parked = 1, dead_reason = ?2 WHERE seq = ?1",
                    params![seq, reason],
                )?;
                Ok(Failed::Parked)
            }
        }
    }

    /// Lease message `seq`, or bury it when it is spent or will not open.
    fn deliver(
        &self,
        tx: &Transaction<'_>,
        settings: &QueueSettings,
        row: Row,
    ) -> Result<Option<Delivery>, QueueError> {
        if row.attempts >= settings.max_attempts {
            let reason = format!(
                "not acknowledged within its visibility timeout after {} deliveries",
                row.attempts
            );
            self.bury(tx, row.seq, &settings.name, &reason)?;
            return Ok(None);
        }
        let aad = Self::aad(
            &row.id,
            &row.correlation_id,
            row.depth,
            row.enqueued_ms,
            &row.chain,
        );
        let Ok(payload) = self.dek.open(&aad, &row.sealed) else {
            // T14: tampered at rest (or its depth lowered): never delivered.
            self.bury(tx, row.seq, &settings.name, "failed authentication at rest")?;
            return Ok(None);
        };
        let token = crate::files::random_bytes::<16>().map_err(CryptoError::Random)?;
        let now = self.clock.now_ms();
        tx.execute(
            "UPDATE queue_messages SET attempts = attempts + 1, visible_ms = ?2, lease_token = ?3 WHERE seq = ?1",
            params![
                row.seq,
                now.saturating_add(settings.visibility_timeout_ms),
                &token[..]
            ],
        )?;
        Ok(Some(Delivery {
            lease: Lease {
                id: MessageId(row.id),
                token,
            },
            queue: settings.name.clone(),
            payload,
            correlation_id: row.correlation_id,
            depth: row.depth,
            attempt: row.attempts.saturating_add(1),
            enqueued_ms: row.enqueued_ms,
            dead_reason: row.dead_reason,
            chain: row.chain,
        }))
    }
}

/// One message row as read for delivery.
struct Row {
    seq: i64,
    id: [u8; 16],
    sealed: Vec<u8>,
    correlation_id: String,
    depth: u32,
    attempts: u32,
    enqueued_ms: i64,
    dead_reason: Option<String>,
    /// Zeros for a row made before chains (it then fails to open).
    chain: [u8; 16],
}

fn message_id(blob: Vec<u8>) -> [u8; 16] {
    <[u8; 16]>::try_from(blob.as_slice()).unwrap_or([0; 16])
}

/// A reason as kept: printable, bounded (T07: it reaches logs later).
fn bounded_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .take(MAX_REASON)
        .collect()
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl QueueBackend for SqliteQueue {
    fn enqueue(&self, queue: &str, message: NewMessage<'_>) -> Result<MessageId, QueueError> {
        self.check(queue, &message)?;
        if message.depth > self.limits.max_event_depth {
            return Err(QueueError::TooDeep {
                depth: message.depth,
                max: self.limits.max_event_depth,
            });
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        self.count_in_chain(&tx, &message.chain)?;
        let id = self.insert(&tx, queue, &message, None)?;
        tx.commit()?;
        Ok(id)
    }

    fn dead_letter_refused(
        &self,
        queue: &str,
        message: NewMessage<'_>,
        reason: &str,
    ) -> Result<Failed, QueueError> {
        self.check(queue, &message)?;
        let reason = bounded_reason(reason);
        let settings = self.settings(queue)?;
        let conn = self.conn();
        match &settings.dead_letter {
            Some(to) => {
                self.insert(&conn, to, &message, Some((&reason, false, Some(queue))))?;
                Ok(Failed::DeadLettered { to: to.clone() })
            }
            None => {
                self.insert(&conn, queue, &message, Some((&reason, true, None)))?;
                Ok(Failed::Parked)
            }
        }
    }

    fn lease(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let settings = self.settings(queue)?.clone();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        // Each pass leases or buries every row it reads: it ends.
        while out.len() < max {
            let want = i64::try_from(max - out.len()).unwrap_or(i64::MAX);
            let rows = {
                let mut statement = tx.prepare_cached(
                    "SELECT seq, msg_id, payload_sealed, correlation_id, depth, attempts, enqueued_ms, dead_reason, chain FROM queue_messages
                     WHERE queue = ?1 AND parked = 0 AND visible_ms <= ?2 AND expires_ms > ?2 ORDER BY seq LIMIT ?3",
                )?;
                statement
                    .query_map(params![queue, now, want], |r| {
                        Ok(Row {
                            seq: r.get(0)?,
                            id: message_id(r.get(1)?),
                            sealed: r.get(2)?,
                            correlation_id: r.get(3)?,
                            depth: r.get(4)?,
                            attempts: r.get(5)?,
                            enqueued_ms: r.get(6)?,
                            dead_reason: r.get(7)?,
                            chain: r.get::<_, Option<Vec<u8>>>(8)?.map_or([0; 16], message_id),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?
            };
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if let Some(delivery) = self.deliver(&tx, &settings, row)? {
                    out.push(delivery);
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn ack(&self, lease: &Lease) -> Result<Acked, QueueError> {
        let deleted = self.conn().execute(
            "DELETE FROM queue_messages WHERE msg_id = ?1 AND lease_token = ?2",
            params![&lease.id.0[..], &lease.token[..]],
        )?;
        Ok(if deleted == 1 {
            Acked::Deleted
        } else {
            Acked::Stale
        })
    }

    fn release(&self, lease: &Lease, after_ms: i64) -> Result<bool, QueueError> {
        let visible = self.clock.now_ms().saturating_add(after_ms.max(0));
        let released = self.conn().execute(
            "UPDATE queue_messages SET attempts = max(attempts - 1, 0), visible_ms = ?3, lease_token = NULL
             WHERE msg_id = ?1 AND lease_token = ?2",
            params![&lease.id.0[..], &lease.token[..], visible],
        )?;
        Ok(released == 1)
    }

    fn fail(&self, lease: &Lease, reason: &str) -> Result<Failed, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<(i64, String, u32)> = tx
            .query_row(
                "SELECT seq, queue, attempts FROM queue_messages WHERE msg_id = ?1 AND lease_token = ?2",
                params![&lease.id.0[..], &lease.token[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((seq, queue, attempts)) = found else {
            return Ok(Failed::Stale);
        };
        let settings = self.settings(&queue)?;
        let outcome = if attempts >= settings.max_attempts {
            let reason = format!("failed {attempts} deliveries; last: {reason}");
            self.bury(&tx, seq, &queue, &reason)?
        } else {
            let at_ms = self
                .clock
                .now_ms()
                .saturating_add(self.backoff_ms(attempts));
            tx.execute(
                "UPDATE queue_messages SET visible_ms = ?2, lease_token = NULL WHERE seq = ?1",
                params![seq, at_ms],
            )?;
            Failed::Retry { at_ms }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn sweep(&self) -> Result<u64, QueueError> {
        let conn = self.conn();
        let now = self.clock.now_ms();
        let deleted = conn.execute(
            "DELETE FROM queue_messages WHERE expires_ms <= ?1",
            params![now],
        )?;
        // A chain's count outlives every message it may still deliver.
        conn.execute(
            "DELETE FROM queue_chains WHERE expires_ms <= ?1",
            params![now],
        )?;
        Ok(count(deleted))
    }

    fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Peeked>, QueueError> {
        self.settings(queue)?;
        let now = self.clock.now_ms();
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT msg_id, payload_sealed, correlation_id, depth, attempts, enqueued_ms, visible_ms, lease_token IS NOT NULL AND visible_ms > ?2, parked, dead_reason, origin_queue, chain
             FROM queue_messages WHERE queue = ?1 AND expires_ms > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![queue, now, limit], |r| {
            Ok((
                message_id(r.get(0)?),
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, bool>(7)?,
                r.get::<_, bool>(8)?,
                r.get::<_, Option<String>>(9)?,
                r.get::<_, Option<String>>(10)?,
                r.get::<_, Option<Vec<u8>>>(11)?.map_or([0; 16], message_id),
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                sealed,
                correlation_id,
                depth,
                attempts,
                enqueued_ms,
                visible_ms,
                leased,
                parked,
                dead_reason,
                origin,
                chain,
            ) = row?;
            let payload = self
                .dek
                .open(
                    &Self::aad(&id, &correlation_id, depth, enqueued_ms, &chain),
                    &sealed,
                )
                .ok();
            out.push(Peeked {
                id: MessageId(id),
                correlation_id,
                depth,
                attempts,
                enqueued_ms,
                visible_ms,
                leased,
                parked,
                dead_reason,
                origin,
                payload,
            });
        }
        Ok(out)
    }

    fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        self.settings(queue)?;
        let deleted = self.conn().execute(
            "DELETE FROM queue_messages WHERE queue = ?1",
            params![queue],
        )?;
        Ok(count(deleted))
    }

    fn redrive(&self, queue: &str, to: Option<&str>) -> Result<u64, QueueError> {
        self.settings(queue)?;
        if let Some(to) = to {
            self.settings(to)?;
        }
        let now = self.clock.now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let dead: Vec<(i64, Option<String>)> = {
            let mut statement = tx.prepare(
                "SELECT seq, origin_queue FROM queue_messages WHERE queue = ?1 AND (parked = 1 OR dead_reason IS NOT NULL)
                 AND NOT (lease_token IS NOT NULL AND visible_ms > ?2) ORDER BY seq",
            )?;
            statement
                .query_map(params![queue, now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut moved = 0;
        for (seq, origin) in dead {
            let target = to
                .map(str::to_string)
                .or(origin)
                .unwrap_or_else(|| queue.to_string());
            // A queue no longer declared: the message stays where it is.
            let Ok(settings) = self.settings(&target) else {
                continue;
            };
            tx.execute(
                "UPDATE queue_messages SET queue = ?2, attempts = 0, visible_ms = ?3, lease_token = NULL, expires_ms = ?4, parked = 0, dead_reason = NULL, origin_queue = NULL WHERE seq = ?1",
                params![seq, target, now, now.saturating_add(settings.retention_ms)],
            )?;
            moved += 1;
        }
        tx.commit()?;
        Ok(moved)
    }

    fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let now = self.clock.now_ms();
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT
                coalesce(sum(parked = 0 AND visible_ms <= ?2), 0),
                coalesce(sum(parked = 0 AND lease_token IS NOT NULL AND visible_ms > ?2), 0),
                coalesce(sum(parked = 0 AND lease_token IS NULL AND visible_ms > ?2), 0),
                coalesce(sum(parked = 1), 0),
                min(enqueued_ms)
             FROM queue_messages WHERE queue = ?1 AND expires_ms > ?2",
        )?;
        let mut out = Vec::new();
        for q in &self.queues {
            let stats = statement.query_row(params![q.name, now], |r| {
                Ok(QueueStats {
                    name: q.name.clone(),
                    ready: unsigned(r.get(0)?),
                    in_flight: unsigned(r.get(1)?),
                    delayed: unsigned(r.get(2)?),
                    parked: unsigned(r.get(3)?),
                    oldest_enqueued_ms: r.get(4)?,
                })
            })?;
            out.push(stats);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "queue/tests.rs"]
mod tests;
