//! What every queue back end shares (issue 18; T04, T14): the declared
//! queues and limits, the checks at enqueue, sealing and opening under
//! the app-wide data key, and each decision a back end then carries out
//! in its own SQL: deliver or bury a leased row, retry or dead-letter a
//! failure, where a redriven message goes. A back end only moves rows;
//! what a row means is decided here, once.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{
    Clock, Delivery, Failed, Lease, MessageId, NewMessage, Peeked, QueueError, QueueLimits,
    QueueSettings,
};
use crate::crypto::{Aad, CryptoError, DataKey, Keyring};

/// The data key's owner and name in the keyring: one key per app
/// environment, shared by every node on PostgreSQL (T14).
const OWNER: &str = "queue";
const KEY_NAME: &str = "messages";
/// Longest correlation id a message carries (the gateway's are shorter).
const MAX_CORRELATION_ID: usize = 128;
/// Longest dead-letter reason kept.
const MAX_REASON: usize = 256;

/// The queues' bounds, their data key and their clock.
pub(super) struct QueueRules {
    dek: DataKey,
    queues: Vec<QueueSettings>,
    limits: QueueLimits,
    clock: Arc<dyn Clock>,
}

/// A message ready to insert: sealed, with where and how it goes in.
pub(super) struct NewRow {
    pub id: MessageId,
    pub queue: String,
    pub sealed: Vec<u8>,
    pub correlation_id: String,
    pub depth: u32,
    /// Its enqueue time, and when it is first visible.
    pub now_ms: i64,
    pub expires_ms: i64,
    pub parked: bool,
    pub dead_reason: Option<String>,
    pub origin: Option<String>,
    pub chain: [u8; 16],
}

/// A message row as read back for delivery or for a peek.
pub(super) struct StoredMessage {
    pub id: [u8; 16],
    pub sealed: Vec<u8>,
    pub correlation_id: String,
    pub depth: u32,
    pub attempts: u32,
    pub enqueued_ms: i64,
    pub dead_reason: Option<String>,
    /// Zeros for a row made before chains (it then fails to open).
    pub chain: [u8; 16],
}

/// What to do with a row found deliverable.
pub(super) enum Judged {
    /// Spent or failing authentication: dead-letter or park it, with why.
    Bury(String),
    Deliver(Zeroizing<Vec<u8>>),
}

/// Where a buried message goes.
pub(super) enum Burial {
    /// Into `to`, as new there, remembering where it came from.
    DeadLetter {
        to: String,
        now_ms: i64,
        expires_ms: i64,
        reason: String,
        origin: String,
    },
    /// Kept in its queue, undelivered.
    Park { reason: String },
}

impl Burial {
    pub fn outcome(&self) -> Failed {
        match self {
            Self::DeadLetter { to, .. } => Failed::DeadLettered { to: to.clone() },
            Self::Park { .. } => Failed::Parked,
        }
    }
}

/// What a failed delivery comes to.
pub(super) enum Settle {
    Retry { at_ms: i64 },
    Bury(Burial),
}

impl QueueRules {
    pub fn new(
        keyring: &Keyring,
        queues: Vec<QueueSettings>,
        limits: QueueLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        let dek = keyring
            .data_key(OWNER, KEY_NAME, "", true)?
            .ok_or(CryptoError::Unwrap)?;
        Ok(Self {
            dek,
            queues,
            limits,
            clock,
        })
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn queues(&self) -> &[QueueSettings] {
        &self.queues
    }

    pub fn settings(&self, queue: &str) -> Result<&QueueSettings, QueueError> {
        self.queues
            .iter()
            .find(|q| q.name == queue)
            .ok_or_else(|| QueueError::UnknownQueue(queue.to_string()))
    }

    /// The queue exists, the message fits it, its correlation id is sane.
    pub fn check(&self, queue: &str, message: &NewMessage<'_>) -> Result<(), QueueError> {
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

    /// T04: a chain of events deeper than `max_event_depth` stops here.
    pub fn check_depth(&self, message: &NewMessage<'_>) -> Result<(), QueueError> {
        if message.depth > self.limits.max_event_depth {
            return Err(QueueError::TooDeep {
                depth: message.depth,
                max: self.limits.max_event_depth,
            });
        }
        Ok(())
    }

    /// Until when a chain's count is kept: as long as a message of the
    /// chain may still be delivered.
    pub fn chain_expires_ms(&self, now_ms: i64) -> i64 {
        let longest = self
            .queues
            .iter()
            .map(|q| q.retention_ms)
            .max()
            .unwrap_or(0);
        now_ms.saturating_add(longest)
    }

    /// T04: refuse the message that brought its chain's count to `sent`
    /// when that is past `max_chain_messages` (its transaction then rolls
    /// back, so the refused message is not counted).
    pub fn check_chain(&self, sent: i64) -> Result<(), QueueError> {
        if sent > i64::from(self.limits.max_chain_messages) {
            return Err(QueueError::ChainExhausted {
                max: self.limits.max_chain_messages,
            });
        }
        Ok(())
    }

    /// The wait before delivery `attempts + 1`, after `attempts` failed.
    pub fn backoff_ms(&self, attempts: u32) -> i64 {
        let doublings = attempts.saturating_sub(1).min(30);
        self.limits
            .retry_base_ms
            .saturating_mul(1_i64 << doublings)
            .min(self.limits.retry_max_ms)
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

    /// `message` sealed for `queue` under a new random id.
    pub fn new_row(&self, queue: &str, message: &NewMessage<'_>) -> Result<NewRow, QueueError> {
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
        Ok(NewRow {
            id,
            queue: queue.to_string(),
            sealed,
            correlation_id: message.correlation_id.to_string(),
            depth: message.depth,
            now_ms: now,
            expires_ms: now.saturating_add(settings.retention_ms),
            parked: false,
            dead_reason: None,
            origin: None,
            chain: message.chain,
        })
    }

    /// A message refused at enqueue (T04), sealed for `queue`'s
    /// dead-letter queue, or parked in `queue` when it has none.
    pub fn refused_row(
        &self,
        queue: &str,
        message: &NewMessage<'_>,
        reason: &str,
    ) -> Result<(NewRow, Failed), QueueError> {
        self.check(queue, message)?;
        let reason = bounded_reason(reason);
        let settings = self.settings(queue)?;
        Ok(match &settings.dead_letter {
            // Parked there too, never delivered by itself: a dead-letter
            // consumer that sends it on would meet the same limit, be
            // dead-lettered again and run again, for ever (T04; outside
            // review of issue 18, high). `redrive` is the operator's way out.
            Some(to) => {
                let mut row = self.new_row(to, message)?;
                row.dead_reason = Some(reason);
                row.origin = Some(queue.to_string());
                row.parked = true;
                (row, Failed::DeadLettered { to: to.clone() })
            }
            None => {
                let mut row = self.new_row(queue, message)?;
                row.dead_reason = Some(reason);
                row.parked = true;
                (row, Failed::Parked)
            }
        })
    }

    /// The payload, or `None` when the row fails authentication (T14).
    pub fn open(&self, row: &StoredMessage) -> Option<Zeroizing<Vec<u8>>> {
        let aad = Self::aad(
            &row.id,
            &row.correlation_id,
            row.depth,
            row.enqueued_ms,
            &row.chain,
        );
        self.dek.open(&aad, &row.sealed).ok()
    }

    /// Deliver a deliverable row, or bury it when it is spent or will
    /// not open.
    pub fn judge(&self, settings: &QueueSettings, row: &StoredMessage) -> Judged {
        if row.attempts >= settings.max_attempts {
            return Judged::Bury(format!(
                "not acknowledged within its visibility timeout after {} deliveries",
                row.attempts
            ));
        }
        match self.open(row) {
            Some(payload) => Judged::Deliver(payload),
            // T14: tampered at rest (or its depth lowered): never delivered.
            None => Judged::Bury("failed authentication at rest".into()),
        }
    }

    /// A fresh lease token.
    pub fn lease_token() -> Result<[u8; 16], QueueError> {
        Ok(crate::files::random_bytes::<16>().map_err(CryptoError::Random)?)
    }

    /// Until when a delivery made now is hidden.
    pub fn visible_until(&self, settings: &QueueSettings) -> i64 {
        self.clock
            .now_ms()
            .saturating_add(settings.visibility_timeout_ms)
    }

    /// When a released delivery is visible again.
    pub fn released_until(&self, after_ms: i64) -> i64 {
        self.clock.now_ms().saturating_add(after_ms.max(0))
    }

    /// The delivery of `row`, leased under `token`.
    pub fn delivery(
        &self,
        settings: &QueueSettings,
        row: StoredMessage,
        token: [u8; 16],
        payload: Zeroizing<Vec<u8>>,
    ) -> Delivery {
        Delivery {
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
        }
    }

    /// Where a message of `queue` buried for `reason` goes.
    pub fn burial(&self, queue: &str, reason: &str) -> Result<Burial, QueueError> {
        let reason = bounded_reason(reason);
        let now = self.clock.now_ms();
        let settings = self.settings(queue)?;
        // A queue its own dead-letter queue would deliver the message
        // again: parked instead (the manifest refuses such a queue).
        Ok(
            match settings.dead_letter.as_ref().filter(|to| *to != queue) {
                Some(to) => Burial::DeadLetter {
                    to: to.clone(),
                    now_ms: now,
                    expires_ms: now.saturating_add(self.settings(to)?.retention_ms),
                    reason,
                    origin: queue.to_string(),
                },
                None => Burial::Park { reason },
            },
        )
    }

    /// A delivery of `queue` failed after `attempts`: retry or bury.
    pub fn failure(&self, queue: &str, attempts: u32, reason: &str) -> Result<Settle, QueueError> {
        let settings = self.settings(queue)?;
        if attempts >= settings.max_attempts {
            let reason = format!("failed {attempts} deliveries; last: {reason}");
            return Ok(Settle::Bury(self.burial(queue, &reason)?));
        }
        Ok(Settle::Retry {
            at_ms: self
                .clock
                .now_ms()
                .saturating_add(self.backoff_ms(attempts)),
        })
    }

    /// Where a dead message of `queue` is redriven (`to`, else where it
    /// came from, else its queue) and its new expiry; `None` when that
    /// queue is no longer declared (the message stays where it is).
    pub fn redrive_target(
        &self,
        queue: &str,
        to: Option<&str>,
        origin: Option<String>,
        now_ms: i64,
    ) -> Option<(String, i64)> {
        let target = to
            .map(str::to_string)
            .or(origin)
            .unwrap_or_else(|| queue.to_string());
        let settings = self.settings(&target).ok()?;
        let expires = now_ms.saturating_add(settings.retention_ms);
        Some((target, expires))
    }

    /// A row as an operator sees it; its payload `None` when it fails
    /// authentication (T14).
    pub fn peeked(
        &self,
        row: StoredMessage,
        visible_ms: i64,
        leased: bool,
        parked: bool,
        origin: Option<String>,
    ) -> Peeked {
        let payload = self.open(&row);
        Peeked {
            id: MessageId(row.id),
            correlation_id: row.correlation_id,
            depth: row.depth,
            attempts: row.attempts,
            enqueued_ms: row.enqueued_ms,
            visible_ms,
            leased,
            parked,
            dead_reason: row.dead_reason,
            origin,
            payload,
        }
    }
}

/// A message id or chain read back; zeros when not 16 bytes (the row then
/// fails authentication).
pub(super) fn id16(blob: &[u8]) -> [u8; 16] {
    <[u8; 16]>::try_from(blob).unwrap_or([0; 16])
}

/// A reason as kept: printable, bounded (T07: it reaches logs later).
fn bounded_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .take(MAX_REASON)
        .collect()
}

pub(super) fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
