//! The queue back end of a cluster (issue 18; T01, T04, T14): the same
//! rules as the embedded one ([`super::rules`]), its rows in the
//! `queue_messages` and `queue_chains` tables of the app environment's
//! PostgreSQL schema, beside the key-value records, data keys, secrets
//! and credentials of issue 16, so every node delivers from one queue.
//!
//! - Several nodes lease one queue at once: each lease reads its rows
//!   with `SELECT … FOR UPDATE SKIP LOCKED` and marks them leased in the
//!   same transaction, so a row another node is leasing is skipped, and a
//!   row it leased and committed no longer matches (PostgreSQL re-checks
//!   the condition on the newest version of a row it locks): no message
//!   is delivered twice while its lease holds.
//! - A chain's count (T04) is one `INSERT … ON CONFLICT DO UPDATE …
//!   RETURNING` in the enqueue's transaction: concurrent enqueues of one
//!   chain on any node wait for each other on its row, and a refused one
//!   rolls back its count, so `max_event_messages` holds for the cluster.
//! - Sealed under the app-wide data key every node shares through the
//!   keyring ([`crate::pg::PostgresKeys`]), with the same associated data
//!   as on SQLite: a row changed in the database is buried, never
//!   delivered (T14).
//! - Durable: `Ok` once PostgreSQL committed (its WAL and replication
//!   are the operator's, as for every table of the schema).
//! - Every call runs on the connection's own runtime ([`Pg::call`]), so
//!   it may be made from any thread, the server's async workers included.

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::rules::{Burial, Judged, NewRow, QueueRules, Settle, StoredMessage, id16, unsigned};
use super::{
    Acked, Clock, Delivery, Failed, Lease, MessageId, NewMessage, Peeked, QueueBackend, QueueError,
    QueueLimits, QueueSettings, QueueStats,
};
use crate::crypto::Keyring;
use crate::pg::{Pg, PgError};

/// The queues' tables in `pg`'s schema, as a node creates them
/// (`migrate-state` moves messages into them).
pub(crate) fn create_tables(pg: &Pg) -> Result<(), PgError> {
    let migration = migration(pg.schema());
    pg.call(move |pool| async move {
        let client = pool.get().await.map_err(PgError::of)?;
        client.batch_execute(&migration).await.map_err(PgError::of)
    })
}

/// The tables, idempotent; one implicit transaction (one simple-query
/// batch) holding the schema's advisory lock, so nodes starting together
/// take turns.
fn migration(schema: &str) -> String {
    format!(
        r"
        {preamble}
        CREATE SCHEMA IF NOT EXISTS {schema};
        CREATE TABLE IF NOT EXISTS {schema}.queue_messages (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            msg_id BYTEA NOT NULL UNIQUE,
            queue TEXT NOT NULL,
            payload_sealed BYTEA NOT NULL,
            correlation_id TEXT NOT NULL,
            depth BIGINT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            enqueued_ms BIGINT NOT NULL,
            visible_ms BIGINT NOT NULL,
            lease_token BYTEA,
            expires_ms BIGINT NOT NULL,
            parked BOOLEAN NOT NULL DEFAULT FALSE,
            dead_reason TEXT,
            origin_queue TEXT,
            chain BYTEA NOT NULL
        );
        CREATE INDEX IF NOT EXISTS queue_messages_ready ON {schema}.queue_messages (queue, parked, visible_ms, seq);
        CREATE INDEX IF NOT EXISTS queue_messages_expiry ON {schema}.queue_messages (expires_ms);
        CREATE TABLE IF NOT EXISTS {schema}.queue_chains (
            chain BYTEA PRIMARY KEY,
            sent BIGINT NOT NULL,
            expires_ms BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS queue_chains_expiry ON {schema}.queue_chains (expires_ms);
        ",
        preamble = crate::pg::migration_preamble()
    )
}

/// The statements, with the schema spliced in once (validated at open).
struct Sql {
    count_chain: String,
    insert: String,
    lease: String,
    mark_leased: String,
    dead_letter: String,
    park: String,
    ack: String,
    release: String,
    find_leased: String,
    retry: String,
    sweep_messages: String,
    sweep_chains: String,
    peek: String,
    purge: String,
    find_dead: String,
    redrive: String,
    stats: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let m = format!("{schema}.queue_messages");
        let c = format!("{schema}.queue_chains");
        Self {
            count_chain: format!(
                "INSERT INTO {c} AS c (chain, sent, expires_ms) VALUES ($1, 1, $2)
                 ON CONFLICT (chain) DO UPDATE SET sent = c.sent + 1, expires_ms = GREATEST(c.expires_ms, $2)
                 RETURNING sent"
            ),
            insert: format!(
                "INSERT INTO {m} (msg_id, queue, payload_sealed, correlation_id, depth, enqueued_ms, visible_ms, expires_ms, parked, dead_reason, origin_queue, chain)
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11)"
            ),
            lease: format!(
                "SELECT seq, msg_id, payload_sealed, correlation_id, depth, attempts, enqueued_ms, dead_reason, chain FROM {m}
                 WHERE queue = $1 AND NOT parked AND visible_ms <= $2 AND expires_ms > $2 ORDER BY seq LIMIT $3
                 FOR UPDATE SKIP LOCKED"
            ),
            mark_leased: format!(
                "UPDATE {m} SET attempts = attempts + 1, visible_ms = $2, lease_token = $3 WHERE seq = $1"
            ),
            dead_letter: format!(
                "UPDATE {m} SET queue = $2, attempts = 0, visible_ms = $3, lease_token = NULL, expires_ms = $4, parked = FALSE, dead_reason = $5, origin_queue = $6 WHERE seq = $1"
            ),
            park: format!(
                "UPDATE {m} SET lease_token = NULL, parked = TRUE, dead_reason = $2 WHERE seq = $1"
            ),
            ack: format!("DELETE FROM {m} WHERE msg_id = $1 AND lease_token = $2"),
            release: format!(
                "UPDATE {m} SET attempts = GREATEST(attempts - 1, 0), visible_ms = $3, lease_token = NULL
                 WHERE msg_id = $1 AND lease_token = $2"
            ),
            find_leased: format!(
                "SELECT seq, queue, attempts FROM {m} WHERE msg_id = $1 AND lease_token = $2 FOR UPDATE"
            ),
            retry: format!("UPDATE {m} SET visible_ms = $2, lease_token = NULL WHERE seq = $1"),
            sweep_messages: format!("DELETE FROM {m} WHERE expires_ms <= $1"),
            sweep_chains: format!("DELETE FROM {c} WHERE expires_ms <= $1"),
            peek: format!(
                "SELECT msg_id, payload_sealed, correlation_id, depth, attempts, enqueued_ms, visible_ms, lease_token IS NOT NULL AND visible_ms > $2, parked, dead_reason, origin_queue, chain
                 FROM {m} WHERE queue = $1 AND expires_ms > $2 ORDER BY seq LIMIT $3"
            ),
            purge: format!("DELETE FROM {m} WHERE queue = $1"),
            find_dead: format!(
                "SELECT seq, origin_queue FROM {m} WHERE queue = $1 AND (parked OR dead_reason IS NOT NULL)
                 AND NOT (lease_token IS NOT NULL AND visible_ms > $2) ORDER BY seq FOR UPDATE SKIP LOCKED"
            ),
            redrive: format!(
                "UPDATE {m} SET queue = $2, attempts = 0, visible_ms = $3, lease_token = NULL, expires_ms = $4, parked = FALSE, dead_reason = NULL, origin_queue = NULL WHERE seq = $1"
            ),
            stats: format!(
                "SELECT
                    count(*) FILTER (WHERE NOT parked AND visible_ms <= $2),
                    count(*) FILTER (WHERE NOT parked AND lease_token IS NOT NULL AND visible_ms > $2),
                    count(*) FILTER (WHERE NOT parked AND lease_token IS NULL AND visible_ms > $2),
                    count(*) FILTER (WHERE parked),
                    min(enqueued_ms)
                 FROM {m} WHERE queue = $1 AND expires_ms > $2"
            ),
        }
    }
}

/// The PostgreSQL back end, in the app environment's schema.
pub struct PostgresQueue {
    pg: Arc<Pg>,
    shared: Arc<Shared>,
}

/// What each call's work takes onto the connection's runtime.
struct Shared {
    rules: QueueRules,
    sql: Sql,
}

fn pg_error(e: impl std::error::Error) -> QueueError {
    QueueError::Pg(PgError::of(e))
}

async fn query(
    client: &impl GenericClient,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, QueueError> {
    let prepared = client.prepare_cached(statement).await.map_err(pg_error)?;
    client.query(&prepared, params).await.map_err(pg_error)
}

async fn execute(
    client: &impl GenericClient,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, QueueError> {
    let prepared = client.prepare_cached(statement).await.map_err(pg_error)?;
    client.execute(&prepared, params).await.map_err(pg_error)
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, QueueError> {
    row.try_get(index).map_err(pg_error)
}

/// A stored count as `u32`: out of range (only by a change made in the
/// database) it is `u32::MAX`, which buries the message (spent, or
/// failing authentication), never delivers it.
fn small(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Message columns `at..at + 8`: msg_id, payload_sealed, correlation_id,
/// depth, attempts, enqueued_ms, then `reason` and `chain` where given.
fn stored(row: &Row, at: usize, reason: usize, chain: usize) -> Result<StoredMessage, QueueError> {
    Ok(StoredMessage {
        id: id16(&column::<Vec<u8>>(row, at)?),
        sealed: column(row, at + 1)?,
        correlation_id: column(row, at + 2)?,
        depth: small(column(row, at + 3)?),
        attempts: small(column(row, at + 4)?),
        enqueued_ms: column(row, at + 5)?,
        dead_reason: column(row, reason)?,
        chain: id16(&column::<Vec<u8>>(row, chain)?),
    })
}

async fn insert(client: &impl GenericClient, sql: &Sql, row: &NewRow) -> Result<(), QueueError> {
    execute(
        client,
        &sql.insert,
        &[
            &&row.id.0[..],
            &row.queue,
            &row.sealed,
            &row.correlation_id,
            &i64::from(row.depth),
            &row.now_ms,
            &row.expires_ms,
            &row.parked,
            &row.dead_reason,
            &row.origin,
            &&row.chain[..],
        ],
    )
    .await
    .map(drop)
}

/// Move message `seq` to its dead-letter queue, or park it.
async fn bury(
    client: &impl GenericClient,
    sql: &Sql,
    seq: i64,
    burial: &Burial,
) -> Result<Failed, QueueError> {
    match burial {
        Burial::DeadLetter {
            to,
            now_ms,
            expires_ms,
            reason,
            origin,
        } => {
            execute(
                client,
                &sql.dead_letter,
                &[&seq, to, now_ms, expires_ms, reason, origin],
            )
            .await?;
        }
        Burial::Park { reason } => {
            execute(client, &sql.park, &[&seq, reason]).await?;
        }
    }
    Ok(burial.outcome())
}

impl PostgresQueue {
    /// Create the tables if missing (under the schema's advisory lock)
    /// and take the app's queue data key from `keyring`, whose data keys
    /// every node shares.
    pub fn open(
        pg: Arc<Pg>,
        keyring: &Keyring,
        queues: Vec<QueueSettings>,
        limits: QueueLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        let ddl = migration(pg.schema());
        pg.call(move |pool| async move {
            let client = pool.get().await.map_err(PgError::of)?;
            client.batch_execute(&ddl).await.map_err(PgError::of)
        })?;
        let shared = Arc::new(Shared {
            rules: QueueRules::new(keyring, queues, limits, clock)?,
            sql: Sql::new(pg.schema()),
        });
        Ok(Self { pg, shared })
    }

    /// Run `work` on the connection's runtime with a pooled connection
    /// and wait for it.
    fn run<T, F>(
        &self,
        work: impl FnOnce(deadpool_postgres::Object, Arc<Shared>) -> F + Send + 'static,
    ) -> Result<T, QueueError>
    where
        F: Future<Output = Result<T, QueueError>> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        self.pg.call(move |pool: Pool| async move {
            let client = match pool.get().await {
                Ok(client) => client,
                Err(e) => return Ok(Err(pg_error(e))),
            };
            Ok(work(client, shared).await)
        })?
    }
}

impl QueueBackend for PostgresQueue {
    fn enqueue(&self, queue: &str, message: NewMessage<'_>) -> Result<MessageId, QueueError> {
        let rules = &self.shared.rules;
        rules.check(queue, &message)?;
        rules.check_depth(&message)?;
        let row = rules.new_row(queue, &message)?;
        let expires = rules.chain_expires_ms(rules.now_ms());
        self.run(move |mut client, shared| async move {
            let tx = client.transaction().await.map_err(pg_error)?;
            let counted = query(&tx, &shared.sql.count_chain, &[&&row.chain[..], &expires]).await?;
            let sent: i64 = match counted.first() {
                Some(r) => column(r, 0)?,
                None => i64::MAX,
            };
            // Refused: the transaction rolls back as it drops, the count
            // with it.
            shared.rules.check_chain(sent)?;
            insert(&tx, &shared.sql, &row).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(row.id)
        })
    }

    fn dead_letter_refused(
        &self,
        queue: &str,
        message: NewMessage<'_>,
        reason: &str,
    ) -> Result<Failed, QueueError> {
        let (row, outcome) = self.shared.rules.refused_row(queue, &message, reason)?;
        self.run(move |client, shared| async move {
            insert(&client, &shared.sql, &row).await?;
            Ok(outcome)
        })
    }

    fn lease(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let settings = self.shared.rules.settings(queue)?.clone();
        self.run(move |mut client, shared| async move {
            let (rules, sql) = (&shared.rules, &shared.sql);
            let tx = client.transaction().await.map_err(pg_error)?;
            let now = rules.now_ms();
            let mut out = Vec::new();
            // Each pass leases or buries every row it locks: it ends.
            while out.len() < max {
                let want = i64::try_from(max - out.len()).unwrap_or(i64::MAX);
                let rows = query(&tx, &sql.lease, &[&settings.name, &now, &want]).await?;
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    let seq: i64 = column(r, 0)?;
                    let row = stored(r, 1, 7, 8)?;
                    match rules.judge(&settings, &row) {
                        Judged::Bury(reason) => {
                            let burial = rules.burial(&settings.name, &reason)?;
                            bury(&tx, sql, seq, &burial).await?;
                        }
                        Judged::Deliver(payload) => {
                            let token = QueueRules::lease_token()?;
                            let until = rules.visible_until(&settings);
                            execute(&tx, &sql.mark_leased, &[&seq, &until, &&token[..]]).await?;
                            out.push(rules.delivery(&settings, row, token, payload));
                        }
                    }
                }
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(out)
        })
    }

    fn ack(&self, lease: &Lease) -> Result<Acked, QueueError> {
        let (id, token) = (lease.id.0, lease.token);
        self.run(move |client, shared| async move {
            let deleted = execute(&client, &shared.sql.ack, &[&&id[..], &&token[..]]).await?;
            Ok(if deleted == 1 {
                Acked::Deleted
            } else {
                Acked::Stale
            })
        })
    }

    fn release(&self, lease: &Lease, after_ms: i64) -> Result<bool, QueueError> {
        let (id, token) = (lease.id.0, lease.token);
        let visible = self.shared.rules.released_until(after_ms);
        self.run(move |client, shared| async move {
            let released = execute(
                &client,
                &shared.sql.release,
                &[&&id[..], &&token[..], &visible],
            )
            .await?;
            Ok(released == 1)
        })
    }

    fn fail(&self, lease: &Lease, reason: &str) -> Result<Failed, QueueError> {
        let (id, token) = (lease.id.0, lease.token);
        let reason = reason.to_string();
        self.run(move |mut client, shared| async move {
            let (rules, sql) = (&shared.rules, &shared.sql);
            let tx = client.transaction().await.map_err(pg_error)?;
            let found = query(&tx, &sql.find_leased, &[&&id[..], &&token[..]]).await?;
            let Some(r) = found.first() else {
                return Ok(Failed::Stale);
            };
            let seq: i64 = column(r, 0)?;
            let queue: String = column(r, 1)?;
            let attempts = small(column(r, 2)?);
            let outcome = match rules.failure(&queue, attempts, &reason)? {
                Settle::Bury(burial) => bury(&tx, sql, seq, &burial).await?,
                Settle::Retry { at_ms } => {
                    execute(&tx, &sql.retry, &[&seq, &at_ms]).await?;
                    Failed::Retry { at_ms }
                }
            };
            tx.commit().await.map_err(pg_error)?;
            Ok(outcome)
        })
    }

    fn sweep(&self) -> Result<u64, QueueError> {
        let now = self.shared.rules.now_ms();
        self.run(move |client, shared| async move {
            let deleted = execute(&client, &shared.sql.sweep_messages, &[&now]).await?;
            // A chain's count outlives every message it may still deliver.
            execute(&client, &shared.sql.sweep_chains, &[&now]).await?;
            Ok(deleted)
        })
    }

    fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Peeked>, QueueError> {
        self.shared.rules.settings(queue)?;
        let now = self.shared.rules.now_ms();
        let queue = queue.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |client, shared| async move {
            let rows = query(&client, &shared.sql.peek, &[&queue, &now, &limit]).await?;
            rows.iter()
                .map(|r| {
                    let row = stored(r, 0, 9, 11)?;
                    Ok(shared.rules.peeked(
                        row,
                        column(r, 6)?,
                        column(r, 7)?,
                        column(r, 8)?,
                        column(r, 10)?,
                    ))
                })
                .collect()
        })
    }

    fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        self.shared.rules.settings(queue)?;
        let queue = queue.to_string();
        self.run(move |client, shared| async move {
            execute(&client, &shared.sql.purge, &[&queue]).await
        })
    }

    fn redrive(&self, queue: &str, to: Option<&str>) -> Result<u64, QueueError> {
        let rules = &self.shared.rules;
        rules.settings(queue)?;
        if let Some(to) = to {
            rules.settings(to)?;
        }
        let now = rules.now_ms();
        let (queue, to) = (queue.to_string(), to.map(str::to_string));
        self.run(move |mut client, shared| async move {
            let (rules, sql) = (&shared.rules, &shared.sql);
            let tx = client.transaction().await.map_err(pg_error)?;
            let dead = query(&tx, &sql.find_dead, &[&queue, &now]).await?;
            let mut moved = 0;
            for r in &dead {
                let seq: i64 = column(r, 0)?;
                let origin: Option<String> = column(r, 1)?;
                let Some((target, expires)) =
                    rules.redrive_target(&queue, to.as_deref(), origin, now)
                else {
                    continue;
                };
                execute(&tx, &sql.redrive, &[&seq, &target, &now, &expires]).await?;
                moved += 1;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(moved)
        })
    }

    fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let now = self.shared.rules.now_ms();
        self.run(move |client, shared| async move {
            let mut out = Vec::new();
            for q in shared.rules.queues() {
                let rows = query(&client, &shared.sql.stats, &[&q.name, &now]).await?;
                let Some(r) = rows.first() else { continue };
                out.push(QueueStats {
                    name: q.name.clone(),
                    ready: unsigned(column(r, 0)?),
                    in_flight: unsigned(column(r, 1)?),
                    delayed: unsigned(column(r, 2)?),
                    parked: unsigned(column(r, 3)?),
                    oldest_enqueued_ms: column(r, 4)?,
                });
            }
            Ok(out)
        })
    }
}
