//! `bulkhead migrate-state` (issue 16): an embedded app environment's
//! shared state moved into PostgreSQL, so the app can grow to several
//! nodes without losing its records, secrets or credentials.
//!
//! - What moves: key-value records, wrapped data keys, secrets, sessions
//!   and API keys, admin tokens, the hourly meter (usage, from which
//!   today's budgets start) and the queues (messages, sealed, in the
//!   order they were sent; event-chain counts): the state every node must
//!   share. A message leased by the embedded server when it stopped is
//!   delivered again once its lease runs out (at least once, as ever). Rows
//!   are copied as they are stored (records and secrets stay sealed, the
//!   credentials stay hashes); only the data keys are unwrapped from the
//!   embedded master key and wrapped again under the nodes' master key
//!   (T15), never written anywhere unwrapped.
//! - One PostgreSQL transaction: a failure leaves the target as it was.
//!   The target must hold none of these rows yet (no merging), and every
//!   table's count is compared after the commit.
//! - What stays: the audit trail (each node's, shipped into the
//!   deployment's chain by its server) remains in the state directory; an
//!   app whose SQL stores hold rows is refused by the command before this
//!   runs. The embedded copy is not deleted (remove it once the nodes
//!   serve).

use std::path::Path;

use rusqlite::Connection;

use crate::crypto::{CryptoError, KEYS_DB_FILE, MasterKey};
use crate::kv::{PgConfig, PostgresKv};
use crate::pg::{Pg, PgError};

/// One table's rows, moved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub table: &'static str,
    pub rows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("reading the embedded state: {0}")]
    Source(#[from] rusqlite::Error),
    #[error("{0}")]
    Target(#[from] PgError),
    #[error("the data keys: {0}")]
    Keys(#[from] CryptoError),
    #[error(
        "the PostgreSQL schema `{schema}` already holds state ({table}: {rows} rows); migrate-state moves into an empty schema only, never merges"
    )]
    NotEmpty {
        schema: String,
        table: &'static str,
        rows: i64,
    },
    #[error(
        "after the move, {table} has {target} rows in PostgreSQL but {source_rows} in the embedded state"
    )]
    Mismatch {
        table: &'static str,
        source_rows: usize,
        target: i64,
    },
}

/// The tables moved, in order, with their columns (the same names in
/// both databases).
const TABLES: [(&str, &str); 8] = [
    ("data_keys", "owner, store, subject, wrapped, created_ms"),
    (
        "kv",
        "store, subject, key_id, key_sealed, value_sealed, updated_ms, expires_ms",
    ),
    ("secrets", "name, version, sealed, created_ms, updated_ms"),
    (
        "credentials",
        "id, kind, hash, subject, scopes, label, created_ms, expires_ms, revoked_ms",
    ),
    ("admin_tokens", "id, hash, created_ms"),
    (
        "meters",
        "hour, function, caller, requests, wall_us, mib_us, request_bytes, response_bytes, outbound_bytes",
    ),
    // Read in `seq` order, so PostgreSQL numbers them as they were sent.
    (
        "queue_messages",
        "msg_id, queue, payload_sealed, correlation_id, depth, attempts, enqueued_ms, visible_ms, lease_token, expires_ms, parked, dead_reason, origin_queue, chain",
    ),
    ("queue_chains", "chain, sent, expires_ms"),
];

/// A row as read from SQLite, column by column.
type Row = Vec<Value>;

#[derive(Debug, Clone)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(tokio_postgres::types::IsNull::Yes),
            // SQLite keeps booleans (a message's `parked`) as integers.
            Value::Int(n) if *ty == tokio_postgres::types::Type::BOOL => (*n != 0).to_sql(ty, out),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Text(t) => t.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn read_table(conn: &Connection, table: &str, columns: &str) -> Result<Vec<Row>, rusqlite::Error> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let width = columns.split(',').count();
    let order = if table == "queue_messages" {
        " ORDER BY seq"
    } else {
        ""
    };
    let mut statement = conn.prepare(&format!("SELECT {columns} FROM {table}{order}"))?;
    let rows = statement.query_map([], |r| {
        (0..width)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => Value::Int(n),
                    rusqlite::types::ValueRef::Real(f) => Value::Text(f.to_string()),
                    rusqlite::types::ValueRef::Text(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                })
            })
            .collect::<Result<Row, rusqlite::Error>>()
    })?;
    rows.collect()
}

/// Move the shared state of the embedded environment in `state_dir`
/// (its data keys wrapped by `from`) into the schema `target` names, its
/// data keys wrapped by `to`. `progress` hears one line per table.
pub fn move_to_postgres(
    state_dir: &Path,
    from: &MasterKey,
    to: &MasterKey,
    target: &PgConfig,
    progress: &dyn Fn(&str),
) -> Result<Vec<Moved>, MoveError> {
    let state = Connection::open_with_flags(
        state_dir.join(crate::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let keys_path = state_dir.join(KEYS_DB_FILE);
    let keys = keys_path
        .exists()
        .then(|| {
            Connection::open_with_flags(&keys_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        })
        .transpose()?;
    let mut read = Vec::new();
    for (table, columns) in TABLES {
        let conn = if table == "data_keys" {
            match &keys {
                Some(keys) => keys,
                None => {
                    read.push((table, columns, Vec::new()));
                    continue;
                }
            }
        } else {
            &state
        };
        let mut rows = read_table(conn, table, columns)?;
        if table == "data_keys" {
            // Column 3 is `wrapped`: under the nodes' key from here on.
            for row in &mut rows {
                if let Some(Value::Blob(wrapped)) = row.get(3) {
                    let rewrapped = from.rewrap(wrapped, to)?;
                    row[3] = Value::Blob(rewrapped);
                }
            }
        }
        read.push((table, columns, rows));
    }
    // The schema and its tables, as a node creates them.
    let pg = Pg::open(target)?;
    PostgresKv::open(target).map_err(|e| PgError(e.to_string()))?;
    crate::meter::create_shared(&pg).map_err(|e| PgError(e.to_string()))?;
    crate::queue::postgres::create_tables(&pg)?;
    let schema = target.schema.clone();
    for (table, _, _) in &read {
        let rows = count(&pg, &schema, table)?;
        if rows > 0 {
            return Err(MoveError::NotEmpty {
                schema,
                table,
                rows,
            });
        }
    }
    let plan: Vec<(String, usize, Vec<Row>)> = read
        .iter()
        .map(|(table, columns, rows)| {
            let width = columns.split(',').count();
            let params: Vec<String> = (1..=width).map(|i| format!("${i}")).collect();
            (
                format!(
                    "INSERT INTO {schema}.{table} ({columns}) VALUES ({})",
                    params.join(", ")
                ),
                width,
                rows.clone(),
            )
        })
        .collect();
    pg.call(move |pool| async move {
        let mut client = pool.get().await.map_err(PgError::of)?;
        let tx = client.transaction().await.map_err(PgError::of)?;
        for (insert, _, rows) in &plan {
            let statement = tx.prepare(insert).await.map_err(PgError::of)?;
            for row in rows {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                tx.execute(&statement, &params).await.map_err(PgError::of)?;
            }
        }
        tx.commit().await.map_err(PgError::of)
    })?;
    let mut moved = Vec::new();
    for (table, _, rows) in &read {
        let target_rows = count(&pg, &schema, table)?;
        if usize::try_from(target_rows).ok() != Some(rows.len()) {
            return Err(MoveError::Mismatch {
                table,
                source_rows: rows.len(),
                target: target_rows,
            });
        }
        progress(&format!("{table}: {} rows moved and counted", rows.len()));
        moved.push(Moved {
            table,
            rows: rows.len(),
        });
    }
    Ok(moved)
}

fn count(pg: &Pg, schema: &str, table: &str) -> Result<i64, PgError> {
    let statement = format!("SELECT count(*) FROM {schema}.{table}");
    pg.call(move |pool| async move {
        let rows = crate::pg::query(&pool, &statement, &[]).await?;
        rows.first()
            .map_or(Ok(0), |row| crate::pg::column::<i64>(row, 0))
    })
}
