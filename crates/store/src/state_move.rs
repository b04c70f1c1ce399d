//! `bulkhead migrate-state` (issue 16): an embedded app environment's
//! shared state moved into PostgreSQL, so the app can grow to several
//! nodes without losing its records, secrets or credentials.
//!
//! - What moves: key-value records, wrapped data keys, secrets, sessions
//!   and API keys, admin tokens, the hourly meter (usage, from which
//!   today's budgets start) and the queues (messages, sealed, in the
//!   order they were sent; event-chain counts), and the SQL stores' rows
//!   ([`SqlCopy`]: each into its store's schema, made by its migrations
//!   first): the state every node must share. A message leased by the embedded server when it stopped is
//!   delivered again once its lease runs out (at least once, as ever). Rows
//!   are copied as they are stored (records and secrets stay sealed, the
//!   credentials stay hashes); only the data keys are unwrapped from the
//!   embedded master key and wrapped again under the nodes' master key
//!   (T15), never written anywhere unwrapped.
//! - One PostgreSQL transaction: a failure leaves the target as it was.
//!   The target must hold none of these rows yet (no merging), and every
//!   table's count is compared after the commit.
//! - What stays: the audit trail (each node's, shipped into the
//!   deployment's chain by its server) remains in the state directory.
//!   The embedded copy is not deleted (remove it once the nodes serve).

use std::path::Path;

use rusqlite::Connection;

use crate::crypto::{CryptoError, KEYS_DB_FILE, MasterKey};
use crate::kv::{PgConfig, PostgresKv};
use crate::pg::{Pg, PgError};
use crate::sql::{DumpedTable, SqlValue};

/// One table's rows, moved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub table: String,
    pub rows: usize,
}

/// An embedded SQL store's tables ([`crate::sql::SqlDatabase::dump`]), to
/// go into the store's PostgreSQL schema (already made by its migrations,
/// [`crate::sql::postgres::PgSqlStore::prepare`]) in the same transaction
/// as the rest of the state.
#[derive(Debug, Clone)]
pub struct SqlCopy {
    pub store: String,
    pub schema: String,
    pub tables: Vec<DumpedTable>,
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
        table: String,
        rows: i64,
    },
    #[error(
        "after the move, {table} has {target} rows in PostgreSQL but {source_rows} in the embedded state"
    )]
    Mismatch {
        table: String,
        source_rows: usize,
        target: i64,
    },
    #[error("SQL store `{store}`, table `{table}`: {problem}")]
    SqlTable {
        store: String,
        table: String,
        problem: String,
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
/// data keys wrapped by `to`, and the rows of `sql`'s stores into their
/// schemas. `progress` hears one line per table.
pub fn move_to_postgres(
    state_dir: &Path,
    from: &MasterKey,
    to: &MasterKey,
    target: &PgConfig,
    sql: &[SqlCopy],
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
    let mut plan: Vec<Insert> = read
        .iter()
        .map(|(table, columns, rows)| {
            let width = columns.split(',').count();
            let params: Vec<String> = (1..=width).map(|i| format!("${i}")).collect();
            Insert {
                label: (*table).to_string(),
                table: format!("{schema}.{table}"),
                statement: format!(
                    "INSERT INTO {schema}.{table} ({columns}) VALUES ({})",
                    params.join(", ")
                ),
                rows: rows.iter().map(|row| row.to_vec()).collect(),
                sequences: Vec::new(),
            }
        })
        .collect();
    for copy in sql {
        for table in in_reference_order(&pg, copy)? {
            plan.push(plan_sql_table(&pg, copy, table)?);
        }
    }
    for insert in &plan {
        let rows = count(&pg, &insert.table)?;
        if rows > 0 {
            return Err(MoveError::NotEmpty {
                schema,
                table: insert.label.clone(),
                rows,
            });
        }
    }
    let statements = plan.clone();
    pg.call(move |pool| async move {
        let mut client = pool.get().await.map_err(PgError::of)?;
        let tx = client.transaction().await.map_err(PgError::of)?;
        for Insert {
            label,
            statement,
            rows,
            sequences,
            ..
        } in &statements
        {
            let statement = tx
                .prepare(statement)
                .await
                .map_err(|e| refused_row(label, &e))?;
            for row in rows {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                tx.execute(&statement, &params)
                    .await
                    .map_err(|e| refused_row(label, &e))?;
            }
            // A serial or identity column's sequence goes on from the
            // largest value moved, as it would have in SQLite.
            for (sequence, advance) in sequences {
                tx.execute(advance.as_str(), &[sequence])
                    .await
                    .map_err(|e| refused_row(label, &e))?;
            }
        }
        // Deferred constraints are checked here: their DETAIL quotes rows.
        tx.commit()
            .await
            .map_err(|e| refused_row("the moved rows, at commit", &e))
    })?;
    let mut moved = Vec::new();
    for insert in &plan {
        let target_rows = count(&pg, &insert.table)?;
        let rows = insert.rows.len();
        if usize::try_from(target_rows).ok() != Some(rows) {
            return Err(MoveError::Mismatch {
                table: insert.label.clone(),
                source_rows: rows,
                target: target_rows,
            });
        }
        progress(&format!("{}: {rows} rows moved and counted", insert.label));
        moved.push(Moved {
            table: insert.label.clone(),
            rows,
        });
    }
    Ok(moved)
}

/// PostgreSQL's refusal of a moved row, without the row: its message and
/// DETAIL quote the value (outside reviews of issue 16: at the row, and
/// at commit for a deferred constraint), so only what kind of refusal
/// and which column or constraint are said.
fn refused_row(label: &str, e: &tokio_postgres::Error) -> PgError {
    let Some(db) = e.as_db_error() else {
        return PgError::of(e);
    };
    let mut said = format!(
        "PostgreSQL refused a row of {label} (SQLSTATE {}",
        db.code().code()
    );
    if let Some(column) = db.column() {
        said.push_str(&format!(", column {column}"));
    }
    if let Some(constraint) = db.constraint() {
        said.push_str(&format!(", constraint {constraint}"));
    }
    said.push_str(
        "): the value does not fit the PostgreSQL column's type or a constraint; fix the row in the embedded store, or the store's PostgreSQL migration, and run migrate-state again",
    );
    PgError(said)
}

/// One table's rows and how they go in.
#[derive(Clone)]
struct Insert {
    /// How the table is named to the user.
    label: String,
    /// Qualified, quoted where it needs to be.
    table: String,
    statement: String,
    /// As bound: a SQL store's values as text (cast by PostgreSQL to the
    /// column's type) or, for a `bytea` column, bytes.
    rows: Vec<Vec<Value>>,
    /// (sequence, statement advancing it past the rows moved).
    sequences: Vec<(String, String)>,
}

/// `copy`'s tables, each after the tables its foreign keys on PostgreSQL
/// refer to (outside review: a child table created first failed the
/// move), otherwise in the order they were created; tables in a cycle
/// keep that order (only deferrable keys let them in).
fn in_reference_order<'c>(pg: &Pg, copy: &'c SqlCopy) -> Result<Vec<&'c DumpedTable>, MoveError> {
    let schema = copy.schema.clone();
    let refers: Vec<(String, String)> = pg.call(move |pool| async move {
        let rows = crate::pg::query(
            &pool,
            "SELECT child.relname::text, parent.relname::text FROM pg_constraint c \
             JOIN pg_class child ON child.oid = c.conrelid JOIN pg_class parent ON parent.oid = c.confrelid \
             WHERE c.contype = 'f' AND c.connamespace = $1::text::regnamespace AND c.conrelid <> c.confrelid",
            &[&schema],
        )
        .await?;
        rows.iter()
            .map(|r| Ok((crate::pg::column(r, 0)?, crate::pg::column(r, 1)?)))
            .collect()
    })?;
    let mut left: Vec<&DumpedTable> = copy.tables.iter().collect();
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        // The first table none of whose parents is still to come.
        let ready = left
            .iter()
            .position(|t| {
                !refers.iter().any(|(child, parent)| {
                    *child == t.name && left.iter().any(|other| other.name == *parent)
                })
            })
            .unwrap_or(0);
        ordered.push(left.remove(ready));
    }
    Ok(ordered)
}

/// `name` quoted as a PostgreSQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How table `table` of `copy`'s store goes into its schema: its columns
/// found there by name (a generated column is left to PostgreSQL), each
/// value bound as text and cast to the column's type (`bytea`: as bytes).
fn plan_sql_table(pg: &Pg, copy: &SqlCopy, table: &DumpedTable) -> Result<Insert, MoveError> {
    let problem = |problem: String| MoveError::SqlTable {
        store: copy.store.clone(),
        table: table.name.clone(),
        problem,
    };
    let (schema, name) = (copy.schema.clone(), table.name.clone());
    // (name, type, generated, sequence)
    let columns: Vec<(String, String, bool, Option<String>)> = pg.call(move |pool| async move {
        let rows = crate::pg::query(
            &pool,
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', \
                    pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
               AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&schema, &name],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    crate::pg::column(r, 0)?,
                    crate::pg::column(r, 1)?,
                    crate::pg::column(r, 2)?,
                    crate::pg::column(r, 3)?,
                ))
            })
            .collect()
    })?;
    if columns.is_empty() {
        return Err(problem(
            "no such table in the store's PostgreSQL schema: its migrations (or those in the store's `postgres/` directory) must create every table the embedded database has".into(),
        ));
    }
    let qualified = format!("{}.{}", copy.schema, quoted(&table.name));
    // Per dumped column: where it goes (None: generated there, skipped).
    let mut targets = Vec::new();
    for column in &table.columns {
        let Some((_, ty, generated, _)) = columns.iter().find(|(n, ..)| n == column) else {
            return Err(problem(format!(
                "column `{column}` is not in PostgreSQL's table"
            )));
        };
        targets.push((!generated).then(|| (column.clone(), ty.clone())));
    }
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (name, ty) in targets.iter().flatten() {
        names.push(quoted(name));
        values.push(if ty == "bytea" {
            format!("${}", values.len() + 1)
        } else {
            format!("CAST(${}::text AS {ty})", values.len() + 1)
        });
    }
    let mut rows = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let mut params = Vec::with_capacity(names.len());
        for (value, target) in row.iter().zip(&targets) {
            let Some((column, ty)) = target else {
                continue;
            };
            let param = match (value, ty.as_str()) {
                (SqlValue::Null, _) => Value::Null,
                (SqlValue::Blob(b), "bytea") => Value::Blob(b.clone()),
                (SqlValue::Text(t), "bytea") => Value::Blob(t.as_bytes().to_vec()),
                (SqlValue::Integer(n), ty) if ty != "bytea" => Value::Text(n.to_string()),
                (SqlValue::Real(f), ty) if ty != "bytea" => Value::Text(f.to_string()),
                (SqlValue::Text(t), _) => Value::Text(t.clone()),
                (SqlValue::Integer(_) | SqlValue::Real(_), _) | (SqlValue::Blob(_), _) => {
                    return Err(problem(format!(
                        "column `{column}` holds {} but PostgreSQL's column is `{ty}`",
                        value.kind()
                    )));
                }
            };
            params.push(param);
        }
        rows.push(params);
    }
    let sequences = columns
        .iter()
        .filter_map(|(name, _, _, sequence)| {
            sequence.as_ref().map(|sequence| {
                (
                    sequence.clone(),
                    format!(
                        "SELECT setval($1::text::regclass, m) FROM (SELECT max({})::bigint AS m FROM {qualified}) x WHERE m IS NOT NULL",
                        quoted(name)
                    ),
                )
            })
        })
        .collect();
    Ok(Insert {
        label: format!("SQL store {} table {}", copy.store, table.name),
        statement: format!(
            "INSERT INTO {qualified} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
            names.join(", "),
            values.join(", ")
        ),
        table: qualified,
        rows,
        sequences,
    })
}

fn count(pg: &Pg, table: &str) -> Result<i64, PgError> {
    let statement = format!("SELECT count(*) FROM {table}");
    pg.call(move |pool| async move {
        let rows = crate::pg::query(&pool, &statement, &[]).await?;
        rows.first()
            .map_or(Ok(0), |row| crate::pg::column::<i64>(row, 0))
    })
}
