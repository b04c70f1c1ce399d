//! Durable queues (issue 18; T01, T04, T14) behind [`QueueBackend`], with
//! two back ends that keep the same rules ([`rules`]):
//!
//! - [`SqliteQueue`], embedded: the `queue_messages` table of the app's
//!   state database (WAL, `synchronous = FULL`), for one node.
//! - [`PostgresQueue`], on a cluster (`[cluster] backend = "postgres"`):
//!   the same tables in the app environment's PostgreSQL schema; nodes
//!   lease with `SELECT … FOR UPDATE SKIP LOCKED`, so several lease one
//!   queue at once and never the same message.
//!
//! What both guarantee:
//!
//! - Durable: [`QueueBackend::enqueue`] returns `Ok` only once the
//!   message is committed (SQLite: in the WAL on disk; PostgreSQL: by the
//!   server's commit), surviving SIGKILL of the node.
//! - At least once: [`QueueBackend::lease`] hides a message for the
//!   queue's visibility timeout and counts the delivery; not acknowledged
//!   in time, it is delivered again. A failure retries it after an
//!   exponential back-off; after `max_attempts` deliveries it moves to the
//!   queue's dead-letter queue with the reason (or, without one, is parked
//!   in its queue, undelivered, until its retention ends).
//! - Loops (T04): every message carries its causal depth; an enqueue
//!   deeper than `max_event_depth` is refused with [`QueueError::TooDeep`]
//!   for the caller to dead-letter, parked ([`QueueBackend::dead_letter_refused`]),
//!   log and audit. Every message also counts in its causal chain
//!   (`queue_chains`, in the enqueue's transaction), which stops at
//!   `max_event_messages` ([`QueueError::ChainExhausted`]).
//! - Sealed at rest (T14) like key-value values: the payload under an
//!   app-wide data key, bound by associated data to its message id,
//!   correlation id, depth, enqueue time and chain, so neither payloads
//!   nor a lowered depth can be swapped in; a message that fails to open
//!   is dead-lettered, never delivered.
//! - Order: first in, first out per queue, best effort: a message retried
//!   keeps its place but waits out its back-off, and parallel consumers
//!   (on one node or several) finish in any order.
//! - Time comes from a [`Clock`], so visibility and back-off are tested
//!   without sleeping.
//!
//! The tables are created by each back end's `open` (`IF NOT EXISTS`;
//! on PostgreSQL under the schema's advisory lock), not by a numbered
//! migration of `lib.rs`.

pub(crate) mod postgres;
mod rules;
mod sqlite;

use std::sync::atomic::{AtomicI64, Ordering};

use zeroize::Zeroizing;

use crate::StoreError;
use crate::crypto::CryptoError;
use crate::pg::PgError;

pub use postgres::PostgresQueue;
pub use sqlite::SqliteQueue;

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
    /// The PostgreSQL back end; never holds the database URL.
    #[error("queue database: {0}")]
    Pg(#[from] PgError),
}

/// A queue back end shared by the server's threads.
pub type SharedQueue = std::sync::Arc<dyn QueueBackend>;

/// A queue back end: [`SqliteQueue`] embedded, [`PostgresQueue`] on a
/// cluster.
pub trait QueueBackend: Send + Sync {
    /// Store a message durably; `Ok` only once it is committed.
    fn enqueue(&self, queue: &str, message: NewMessage<'_>) -> Result<MessageId, QueueError>;
    /// Put a message refused at enqueue (too deep, or its chain spent)
    /// into the queue's dead-letter queue, else into the queue itself,
    /// parked either way, with `reason`: kept for `peek` and `redrive`,
    /// never delivered by itself (T04). Returns where it went.
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

#[cfg(test)]
mod tests;
