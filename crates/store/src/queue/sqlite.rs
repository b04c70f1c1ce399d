//! The embedded queue back end (issue 18): the `queue_messages` and
//! `queue_chains` tables of the app's state database, for one node.
//! Durable against power loss, not only SIGKILL: its connection commits
//! with `synchronous = FULL`. Every transaction that reads and then
//! writes is `IMMEDIATE`, so two threads never lease one message.

use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use super::rules::{
    Burial, Judged, NewRow, QueueRules, Settle, StoredMessage, count, id16, unsigned,
};
use super::{
    Acked, Clock, Delivery, Failed, Lease, MessageId, NewMessage, Peeked, QueueBackend, QueueError,
    QueueLimits, QueueSettings, QueueStats,
};
use crate::Store;
use crate::crypto::Keyring;

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

/// The embedded back end, in `state.db`.
pub struct SqliteQueue {
    conn: Mutex<Connection>,
    pub(super) rules: QueueRules,
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
        Ok(Self {
            conn: Mutex::new(conn),
            rules: QueueRules::new(keyring, queues, limits, clock)?,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count one more message of `chain`, or refuse it past
    /// `max_chain_messages` (T04); inside the enqueue's transaction.
    fn count_in_chain(&self, tx: &Transaction<'_>, chain: &[u8; 16]) -> Result<(), QueueError> {
        let expires = self.rules.chain_expires_ms(self.rules.now_ms());
        let sent: i64 = tx.query_row(
            "INSERT INTO queue_chains (chain, sent, expires_ms) VALUES (?1, 1, ?2)
             ON CONFLICT (chain) DO UPDATE SET sent = sent + 1, expires_ms = max(expires_ms, ?2)
             RETURNING sent",
            params![&chain[..], expires],
            |r| r.get(0),
        )?;
        self.rules.check_chain(sent)
    }

    fn insert(conn: &Connection, row: &NewRow) -> Result<MessageId, QueueError> {
        conn.execute(
            "INSERT INTO queue_messages (msg_id, queue, payload_sealed, correlation_id, depth, enqueued_ms, visible_ms, expires_ms, parked, dead_reason, origin_queue, chain)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                &row.id.0[..],
                row.queue,
                row.sealed,
                row.correlation_id,
                row.depth,
                row.now_ms,
                row.expires_ms,
                row.parked,
                row.dead_reason,
                row.origin,
                &row.chain[..]
            ],
        )?;
        Ok(row.id)
    }

    /// Move message `seq` to its dead-letter queue, or park it.
    fn bury(tx: &Transaction<'_>, seq: i64, burial: &Burial) -> Result<Failed, QueueError> {
        match burial {
            Burial::DeadLetter {
                to,
                now_ms,
                expires_ms,
                reason,
                origin,
            } => {
                tx.execute(
                    "UPDATE queue_messages SET queue = ?2, attempts = 0, visible_ms = ?3, lease_token = NULL, expires_ms = ?4, parked = 0, dead_reason = ?5, origin_queue = ?6 WHERE seq = ?1",
                    params![seq, to, now_ms, expires_ms, reason, origin],
                )?;
            }
            Burial::Park { reason } => {
                tx.execute(
                    "UPDATE queue_messages SET lease_token = NULL, parked = 1, dead_reason = ?2 WHERE seq = ?1",
                    params![seq, reason],
                )?;
            }
        }
        Ok(burial.outcome())
    }

    /// Lease message `seq`, or bury it when it is spent or will not open.
    fn deliver(
        &self,
        tx: &Transaction<'_>,
        settings: &QueueSettings,
        seq: i64,
        row: StoredMessage,
    ) -> Result<Option<Delivery>, QueueError> {
        let payload = match self.rules.judge(settings, &row) {
            Judged::Bury(reason) => {
                Self::bury(tx, seq, &self.rules.burial(&settings.name, &reason)?)?;
                return Ok(None);
            }
            Judged::Deliver(payload) => payload,
        };
        let token = QueueRules::lease_token()?;
        tx.execute(
            "UPDATE queue_messages SET attempts = attempts + 1, visible_ms = ?2, lease_token = ?3 WHERE seq = ?1",
            params![seq, self.rules.visible_until(settings), &token[..]],
        )?;
        Ok(Some(self.rules.delivery(settings, row, token, payload)))
    }
}

impl QueueBackend for SqliteQueue {
    fn enqueue(&self, queue: &str, message: NewMessage<'_>) -> Result<MessageId, QueueError> {
        self.rules.check(queue, &message)?;
        self.rules.check_depth(&message)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        self.count_in_chain(&tx, &message.chain)?;
        let id = Self::insert(&tx, &self.rules.new_row(queue, &message)?)?;
        tx.commit()?;
        Ok(id)
    }

    fn dead_letter_refused(
        &self,
        queue: &str,
        message: NewMessage<'_>,
        reason: &str,
    ) -> Result<Failed, QueueError> {
        let (row, outcome) = self.rules.refused_row(queue, &message, reason)?;
        Self::insert(&self.conn(), &row)?;
        Ok(outcome)
    }

    fn lease(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let settings = self.rules.settings(queue)?.clone();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = self.rules.now_ms();
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
                        Ok((
                            r.get::<_, i64>(0)?,
                            StoredMessage {
                                id: id16(&r.get::<_, Vec<u8>>(1)?),
                                sealed: r.get(2)?,
                                correlation_id: r.get(3)?,
                                depth: r.get(4)?,
                                attempts: r.get(5)?,
                                enqueued_ms: r.get(6)?,
                                dead_reason: r.get(7)?,
                                chain: r
                                    .get::<_, Option<Vec<u8>>>(8)?
                                    .map_or([0; 16], |c| id16(&c)),
                            },
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?
            };
            if rows.is_empty() {
                break;
            }
            for (seq, row) in rows {
                if let Some(delivery) = self.deliver(&tx, &settings, seq, row)? {
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
        let visible = self.rules.released_until(after_ms);
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
        let outcome = match self.rules.failure(&queue, attempts, reason)? {
            Settle::Bury(burial) => Self::bury(&tx, seq, &burial)?,
            Settle::Retry { at_ms } => {
                tx.execute(
                    "UPDATE queue_messages SET visible_ms = ?2, lease_token = NULL WHERE seq = ?1",
                    params![seq, at_ms],
                )?;
                Failed::Retry { at_ms }
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn sweep(&self) -> Result<u64, QueueError> {
        let conn = self.conn();
        let now = self.rules.now_ms();
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
        self.rules.settings(queue)?;
        let now = self.rules.now_ms();
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT msg_id, payload_sealed, correlation_id, depth, attempts, enqueued_ms, visible_ms, lease_token IS NOT NULL AND visible_ms > ?2, parked, dead_reason, origin_queue, chain
             FROM queue_messages WHERE queue = ?1 AND expires_ms > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![queue, now, limit], |r| {
            let row = StoredMessage {
                id: id16(&r.get::<_, Vec<u8>>(0)?),
                sealed: r.get(1)?,
                correlation_id: r.get(2)?,
                depth: r.get(3)?,
                attempts: r.get(4)?,
                enqueued_ms: r.get(5)?,
                dead_reason: r.get(9)?,
                chain: r
                    .get::<_, Option<Vec<u8>>>(11)?
                    .map_or([0; 16], |c| id16(&c)),
            };
            Ok((
                row,
                r.get::<_, i64>(6)?,
                r.get::<_, bool>(7)?,
                r.get::<_, bool>(8)?,
                r.get::<_, Option<String>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (row, visible_ms, leased, parked, origin) = row?;
            out.push(self.rules.peeked(row, visible_ms, leased, parked, origin));
        }
        Ok(out)
    }

    fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        self.rules.settings(queue)?;
        let deleted = self.conn().execute(
            "DELETE FROM queue_messages WHERE queue = ?1",
            params![queue],
        )?;
        Ok(count(deleted))
    }

    fn redrive(&self, queue: &str, to: Option<&str>) -> Result<u64, QueueError> {
        self.rules.settings(queue)?;
        if let Some(to) = to {
            self.rules.settings(to)?;
        }
        let now = self.rules.now_ms();
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
            let Some((target, expires)) = self.rules.redrive_target(queue, to, origin, now) else {
                continue;
            };
            tx.execute(
                "UPDATE queue_messages SET queue = ?2, attempts = 0, visible_ms = ?3, lease_token = NULL, expires_ms = ?4, parked = 0, dead_reason = NULL, origin_queue = NULL WHERE seq = ?1",
                params![seq, target, now, expires],
            )?;
            moved += 1;
        }
        tx.commit()?;
        Ok(moved)
    }

    fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let now = self.rules.now_ms();
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
        for q in self.rules.queues() {
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
