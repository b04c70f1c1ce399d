//! SQL stores (T06, T15, T16, T05), behind one trait, [`SqlStore`]: on the
//! embedded backend (this module), one SQLCipher database per
//! `[store.NAME] kind = "sql"`, at `STATE_DIR/sql/NAME.db`, encrypted at
//! rest with a 256-bit raw key (no passphrase derivation), its schema from
//! migration files applied at deploy. Guests reach it one statement at a
//! time, values only as bound parameters, through connections that the
//! authorizer in [`policy`] confines: read grants get a read-only
//! connection, nobody gets DDL, ATTACH, PRAGMA or transactions, and every
//! query has limits and the call's deadline. On PostgreSQL
//! ([`postgres`], issue 16), one schema per store and one database role
//! per grant, so the database itself refuses what the grant does not give.

mod dialect;
mod migrate;
pub mod policy;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::types::{Value as SqliteValue, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::crypto::DataKey;

pub use migrate::{Migration, MigrationReport, read_migrations};
pub use policy::{normalize_statement, statement_allowed};

/// Directory under the state dir that holds the SQL databases.
pub const SQL_DIR: &str = "sql";
/// The owner of SQL stores' data keys in the key table.
pub const KEY_OWNER: &str = "sql";

/// Largest database a store may grow to (SQLITE_FULL past it).
pub(crate) const MAX_DB_BYTES: i64 = 1 << 30;
/// Most result bytes (sum of values) one call may return (T05).
pub const MAX_RESULT_BYTES: usize = 4 << 20;
const PAGE_SIZE: i64 = 4096;
/// SQLite VM steps between deadline checks.
const PROGRESS_STEPS: i32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SqlStoreError {
    #[error("SQL store `{store}`: cannot use {path}: {source}")]
    Io {
        store: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SQL store `{store}`: {source}")]
    Sql {
        store: String,
        source: rusqlite::Error,
    },
    #[error(
        "SQL store `{store}`: {path} cannot be decrypted with the store's key (wrong key, or not a Bulkhead SQL database)"
    )]
    WrongKey { store: String, path: PathBuf },
    #[error(
        "SQL store `{store}`: this build has no SQLCipher, so the database would not be encrypted; refusing"
    )]
    NoCipher { store: String },
    #[error("SQL store `{store}`: cannot derive the database key")]
    KeyDerivation { store: String },
    #[error("cannot read migrations in {dir}: {source}")]
    Migrations {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("migration `{name}` is over 1 MiB")]
    MigrationTooLarge { name: String },
    #[error(
        "SQL store `{store}`: migration `{name}` was already applied but its file has changed since; applied migrations are immutable: restore the file and add a new migration instead"
    )]
    MigrationChanged { store: String, name: String },
    #[error(
        "SQL store `{store}`: migration `{name}` was applied but its file is gone; restore it (applied migrations are immutable)"
    )]
    MigrationMissing { store: String, name: String },
    #[error(
        "SQL store `{store}`: new migration `{name}` sorts before `{last}`, which is already applied; name new migrations so they sort last"
    )]
    MigrationOutOfOrder {
        store: String,
        name: String,
        last: String,
    },
    #[error("SQL store `{store}`: migration `{name}` failed: {source}")]
    MigrationFailed {
        store: String,
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("SQL store `{store}` on PostgreSQL: {message}")]
    Postgres { store: String, message: String },
    #[error(
        "SQL store `{store}`: column `{column}` of table `{table}` holds text that is not UTF-8, which PostgreSQL's text cannot hold; fix those rows (or keep such values as BLOBs) before moving the store"
    )]
    NotUtf8 {
        store: String,
        table: String,
        column: String,
    },
}

/// One SQL store, whichever database holds it: what the `bulkhead:sql`
/// capability calls. A new backend is one more implementation (see the
/// README's architecture section).
pub trait SqlStore: Send + Sync {
    fn name(&self) -> &str;

    /// Run one guest statement under a grant of `access`, when `allowed`
    /// (the grant's declared statements, if it lists them) holds it.
    /// Blocking: call from a blocking thread.
    fn query(
        &self,
        access: Access,
        allowed: Option<&[String]>,
        statement: &str,
        params: &[SqlValue],
        limits: &QueryLimits,
    ) -> Result<QueryResult, QueryError>;
}

/// A 256-bit raw SQLCipher key.
pub struct SqlKey(SecretBox<[u8; 32]>);

impl SqlKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// The SQLCipher key of store `store`: derived (HMAC-SHA256, its own
    /// context) from the store's data key, which exists only wrapped by the
    /// master key. Destroying that data key makes the database unreadable.
    pub fn from_data_key(dek: &DataKey, store: &str) -> Result<Self, SqlStoreError> {
        let derived = Zeroizing::new(dek.lookup_id(b"bulkhead sqlcipher key v1", store.as_bytes()));
        let bytes: [u8; 32] =
            derived
                .as_slice()
                .try_into()
                .map_err(|_| SqlStoreError::KeyDerivation {
                    store: store.to_string(),
                })?;
        Ok(Self::new(bytes))
    }

    fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        // `x'…'`: a raw key, so SQLCipher skips its passphrase KDF.
        let text = Zeroizing::new(format!("x'{}'", hex::encode(self.0.expose_secret())));
        conn.key(Some("main"), text.as_bytes(), false)
    }
}

/// One table of an embedded SQL store, read whole ([`SqlDatabase::dump`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DumpedTable {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A value crossing the guest boundary.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for SqlValue {
    fn from(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(v) => SqlValue::Integer(v),
            ValueRef::Real(v) => SqlValue::Real(v),
            ValueRef::Text(v) => SqlValue::Text(String::from_utf8_lossy(v).into_owned()),
            ValueRef::Blob(v) => SqlValue::Blob(v.to_vec()),
        }
    }
}

impl SqlValue {
    /// What kind of value it is, for an error that must not show it.
    pub fn kind(&self) -> &'static str {
        match self {
            SqlValue::Null => "null",
            SqlValue::Integer(_) => "an integer",
            SqlValue::Real(_) => "a real",
            SqlValue::Text(_) => "text",
            SqlValue::Blob(_) => "a blob",
        }
    }

    fn size(&self) -> usize {
        match self {
            SqlValue::Text(s) => s.len(),
            SqlValue::Blob(b) => b.len(),
            _ => 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    pub changes: u64,
    /// The statement is a write (not read-only), whatever it changed: it
    /// needed a read-write grant. The privilege review counts these (T16).
    pub write: bool,
}

/// Per-query limits (T05).
#[derive(Debug, Clone)]
pub struct QueryLimits {
    pub max_rows: usize,
    /// Sum of value sizes in the result.
    pub max_bytes: usize,
    /// When the call must end; the statement is interrupted then.
    pub deadline: Instant,
}

impl QueryLimits {
    /// Whether `out` may take one more row (T05).
    pub(crate) fn room_for_row(&self, out: &QueryResult) -> Result<(), QueryError> {
        if out.rows.len() >= self.max_rows {
            return Err(QueryError::Limit(format!(
                "more than {} rows",
                self.max_rows
            )));
        }
        Ok(())
    }

    /// Whether a result of `bytes` (values summed) is within the bound.
    pub(crate) fn within_bytes(&self, bytes: usize) -> Result<(), QueryError> {
        if bytes > self.max_bytes {
            return Err(QueryError::Limit(format!(
                "result over {} bytes",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

/// Why a guest's statement was refused. Messages name categories, never
/// the statement's parameter values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("the grant is read-only")]
    ReadOnly,
    #[error("the statement is not among the grant's declared statements")]
    StatementNotAllowed,
    #[error("denied by the SQL policy: {0}")]
    Denied(&'static str),
    #[error("invalid statement: {0}")]
    Invalid(String),
    #[error("limit: {0}")]
    Limit(String),
    #[error("the store failed")]
    Internal,
    /// The store's database cannot be reached now (issue 16): a retry may
    /// succeed.
    #[error("the store is unavailable")]
    Unavailable,
}

/// One SQL store's database and its pooled guest connections.
pub struct SqlDatabase {
    name: String,
    path: PathBuf,
    key: Arc<SqlKey>,
    read: Mutex<Vec<GuestConn>>,
    write: Mutex<Vec<GuestConn>>,
}

/// A guest connection and the slot its authorizer writes denials into.
struct GuestConn {
    conn: Connection,
    denial: Arc<Mutex<Option<&'static str>>>,
}

/// `STATE_DIR/sql/NAME.db`.
pub fn database_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(SQL_DIR).join(format!("{name}.db"))
}

impl SqlDatabase {
    /// Open (creating if needed) the database and apply pending migrations:
    /// what `serve` does at deploy.
    pub fn deploy(
        state_dir: &Path,
        name: &str,
        key: Arc<SqlKey>,
        migrations: &[Migration],
    ) -> Result<(Self, MigrationReport), SqlStoreError> {
        let dir = state_dir.join(SQL_DIR);
        crate::files::create_private_dir(&dir).map_err(|source| SqlStoreError::Io {
            store: name.to_string(),
            path: dir.clone(),
            source,
        })?;
        let db = Self::at(state_dir, name, key);
        // Owner-only before SQLite creates it: its -wal and -shm copy its mode.
        crate::files::create_private_file(&db.path).map_err(|source| SqlStoreError::Io {
            store: name.to_string(),
            path: db.path.clone(),
            source,
        })?;
        let mut conn = db.open_admin(&db.path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db.sql(e))?;
        let report = migrate::apply(&mut conn, name, migrations, true)?;
        Ok((db, report))
    }

    /// The dry run of `bulkhead check`: verifies the key and the applied
    /// migrations, runs pending ones and rolls them back. Creates nothing.
    pub fn check(
        state_dir: &Path,
        name: &str,
        key: Arc<SqlKey>,
        migrations: &[Migration],
    ) -> Result<MigrationReport, SqlStoreError> {
        let db = Self::at(state_dir, name, key);
        let mut conn = if db.path.exists() {
            db.open_admin(&db.path)?
        } else {
            Connection::open_in_memory().map_err(|e| db.sql(e))?
        };
        migrate::apply(&mut conn, name, migrations, false)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store `name`'s database in `state_dir`, not opened yet.
    fn at(state_dir: &Path, name: &str, key: Arc<SqlKey>) -> Self {
        Self {
            name: name.to_string(),
            path: database_path(state_dir, name),
            key,
            read: Mutex::new(Vec::new()),
            write: Mutex::new(Vec::new()),
        }
    }

    /// Every table of store `name`'s database in `state_dir` with its
    /// rows, tables in the order they were created, rows in rowid order
    /// (`migrate-state`, issue 16). SQLite's own tables and the migrations'
    /// record are left out.
    pub fn dump(
        state_dir: &Path,
        name: &str,
        key: Arc<SqlKey>,
    ) -> Result<Vec<DumpedTable>, SqlStoreError> {
        let db = Self::at(state_dir, name, key);
        let conn = db.open_admin(&db.path)?;
        let sql = |e| db.sql(e);
        let tables: Vec<(String, bool)> = conn
            .prepare(
                "SELECT name, sql LIKE '%WITHOUT ROWID%' COLLATE NOCASE FROM sqlite_schema \
                 WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> ?1 \
                 ORDER BY rowid",
            )
            .and_then(|mut s| {
                s.query_map([migrate::TRACKING_TABLE], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql)?;
        let mut dumped = Vec::new();
        for (table, without_rowid) in tables {
            let quoted = format!("\"{}\"", table.replace('"', "\"\""));
            let order = if without_rowid { "" } else { " ORDER BY rowid" };
            let mut statement = conn
                .prepare(&format!("SELECT * FROM {quoted}{order}"))
                .map_err(sql)?;
            let columns: Vec<String> = statement.column_names().map(str::to_string).collect();
            let width = columns.len();
            // Text that is not UTF-8 stops the dump (outside review: it
            // was replaced, silently, by U+FFFD).
            let rows = statement
                .query_map([], |r| {
                    (0..width)
                        .map(|i| match r.get_ref(i)? {
                            ValueRef::Text(t) if std::str::from_utf8(t).is_err() => {
                                Err(rusqlite::Error::InvalidColumnType(
                                    i,
                                    String::new(),
                                    rusqlite::types::Type::Text,
                                ))
                            }
                            value => Ok(SqlValue::from(value)),
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| match e {
                    rusqlite::Error::InvalidColumnType(i, _, rusqlite::types::Type::Text) => {
                        SqlStoreError::NotUtf8 {
                            store: name.to_string(),
                            table: table.clone(),
                            column: columns.get(i).cloned().unwrap_or_default(),
                        }
                    }
                    e => sql(e),
                })?;
            dumped.push(DumpedTable {
                name: table,
                columns,
                rows,
            });
        }
        Ok(dumped)
    }

    fn sql(&self, source: rusqlite::Error) -> SqlStoreError {
        SqlStoreError::Sql {
            store: self.name.clone(),
            source,
        }
    }

    /// Keyed connection, no authorizer: migrations only.
    fn open_admin(&self, path: &Path) -> Result<Connection, SqlStoreError> {
        let conn = Connection::open(path).map_err(|e| self.sql(e))?;
        quiet_cipher_log(&conn);
        self.unlock(&conn)?;
        harden(&conn).map_err(|e| self.sql(e))?;
        Ok(conn)
    }

    /// Key the connection and prove the key opens the database.
    fn unlock(&self, conn: &Connection) -> Result<(), SqlStoreError> {
        self.key.apply(conn).map_err(|e| self.sql(e))?;
        let cipher: Option<String> = conn
            .query_row("PRAGMA cipher_version", [], |r| r.get(0))
            .ok();
        if cipher.is_none_or(|v| v.is_empty()) {
            return Err(SqlStoreError::NoCipher {
                store: self.name.clone(),
            });
        }
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(drop)
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => SqlStoreError::WrongKey {
                store: self.name.clone(),
                path: self.path.clone(),
            },
            _ => self.sql(e),
        })
    }

    /// A fresh guest connection: read-only flags for a read grant, the
    /// authorizer, defensive mode and limits (T06, T05).
    fn open_guest(&self, access: Access) -> Result<GuestConn, SqlStoreError> {
        let flags = match access {
            Access::Read => OpenFlags::SQLITE_OPEN_READ_ONLY,
            Access::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // No SQLITE_OPEN_URI: a store path is never a URI with options.
        let mut conn = Connection::open_with_flags(&self.path, flags).map_err(|e| self.sql(e))?;
        quiet_cipher_log(&conn);
        self.unlock(&conn)?;
        harden(&conn).map_err(|e| self.sql(e))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(|e| self.sql(e))?;
        if access == Access::ReadWrite {
            conn.pragma_update(None, "max_page_count", MAX_DB_BYTES / PAGE_SIZE)
                .map_err(|e| self.sql(e))?;
        }
        for (limit, value) in GUEST_LIMITS {
            conn.set_limit(*limit, *value).map_err(|e| self.sql(e))?;
        }
        let denial = Arc::new(Mutex::new(None));
        let slot = denial.clone();
        conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
            let decision = policy::authorize(access, &ctx);
            if let Err(reason) = decision
                && let Ok(mut slot) = slot.lock()
            {
                *slot = Some(slot.map_or(reason, |old| policy::more_telling(old, reason)));
            }
            policy::to_authorization(decision)
        }))
        .map_err(|e| self.sql(e))?;
        Ok(GuestConn { conn, denial })
    }

    fn pool(&self, access: Access) -> &Mutex<Vec<GuestConn>> {
        match access {
            Access::Read => &self.read,
            Access::ReadWrite => &self.write,
        }
    }
}

impl SqlStore for SqlDatabase {
    fn name(&self) -> &str {
        &self.name
    }

    fn query(
        &self,
        access: Access,
        allowed: Option<&[String]>,
        statement: &str,
        params: &[SqlValue],
        limits: &QueryLimits,
    ) -> Result<QueryResult, QueryError> {
        // T16: a grant that lists statements allows only those.
        if !statement_allowed(allowed, statement) {
            return Err(QueryError::StatementNotAllowed);
        }
        let pooled = self.pool(access).lock().ok().and_then(|mut p| p.pop());
        let mut guest = match pooled {
            Some(c) => c,
            None => self.open_guest(access).map_err(|e| {
                tracing::error!(target: "bulkhead::sql", store = %self.name, error = %e, "cannot open SQL store");
                QueryError::Internal
            })?,
        };
        let result = run(&mut guest, access, statement, params, limits);
        // Only a clean connection goes back: never one left in a transaction.
        if guest.conn.is_autocommit()
            && let Ok(mut pool) = self.pool(access).lock()
            && pool.len() < MAX_POOLED
        {
            pool.push(guest);
        }
        result
    }
}

const MAX_POOLED: usize = 8;

const GUEST_LIMITS: &[(Limit, i32)] = &[
    (Limit::SQLITE_LIMIT_LENGTH, 1 << 20),
    (Limit::SQLITE_LIMIT_SQL_LENGTH, 64 << 10),
    (Limit::SQLITE_LIMIT_COLUMN, 200),
    (Limit::SQLITE_LIMIT_EXPR_DEPTH, 100),
    (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 20),
    (Limit::SQLITE_LIMIT_VDBE_OP, 250_000),
    (Limit::SQLITE_LIMIT_FUNCTION_ARG, 16),
    (Limit::SQLITE_LIMIT_ATTACHED, 0),
    (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000),
    (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 100),
    (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 10),
];

/// SQLCipher writes its own errors (a wrong key) to stderr, outside the
/// structured log; we report those errors ourselves.
fn quiet_cipher_log(conn: &Connection) {
    let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE");
}

/// Settings every connection gets, migrations included.
fn harden(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn run(
    guest: &mut GuestConn,
    access: Access,
    statement: &str,
    params: &[SqlValue],
    limits: &QueryLimits,
) -> Result<QueryResult, QueryError> {
    if let Ok(mut slot) = guest.denial.lock() {
        *slot = None;
    }
    let deadline = limits.deadline;
    guest
        .conn
        .progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline))
        .map_err(|_| QueryError::Internal)?;
    let denial = guest.denial.clone();
    let fail = |e: rusqlite::Error| classify(e, &denial);
    let result = (|| {
        let mut stmt = guest.conn.prepare(statement).map_err(fail)?;
        if access == Access::Read && !stmt.readonly() {
            return Err(QueryError::ReadOnly);
        }
        let expected = stmt.parameter_count();
        if expected != params.len() {
            return Err(QueryError::Invalid(format!(
                "the statement takes {expected} parameter(s), {} given",
                params.len()
            )));
        }
        for (i, value) in params.iter().enumerate() {
            let value = match value {
                SqlValue::Null => SqliteValue::Null,
                SqlValue::Integer(v) => SqliteValue::Integer(*v),
                SqlValue::Real(v) => SqliteValue::Real(*v),
                SqlValue::Text(v) => SqliteValue::Text(v.clone()),
                SqlValue::Blob(v) => SqliteValue::Blob(v.clone()),
            };
            stmt.raw_bind_parameter(i + 1, value).map_err(fail)?;
        }
        let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
        let readonly = stmt.readonly();
        let mut out = QueryResult {
            columns,
            write: !readonly,
            ..QueryResult::default()
        };
        let width = stmt.column_count();
        let mut bytes = 0usize;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(fail)? {
            limits.room_for_row(&out)?;
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                let value = SqlValue::from(row.get_ref(i).map_err(fail)?);
                bytes = bytes.saturating_add(value.size());
                values.push(value);
            }
            limits.within_bytes(bytes)?;
            out.rows.push(values);
        }
        drop(rows);
        if !readonly {
            out.changes = guest.conn.changes();
        }
        Ok(out)
    })();
    let _ = guest.conn.progress_handler(0, None::<fn() -> bool>);
    result
}

fn classify(e: rusqlite::Error, denial: &Mutex<Option<&'static str>>) -> QueryError {
    let denied = denial.lock().ok().and_then(|mut d| d.take());
    if let Some(reason) = denied {
        return QueryError::Denied(reason);
    }
    match &e {
        rusqlite::Error::MultipleStatement => {
            return QueryError::Invalid("one statement per call".into());
        }
        rusqlite::Error::Empty => return QueryError::Invalid("empty statement".into()),
        _ => {}
    }
    match e.sqlite_error_code() {
        Some(ErrorCode::AuthorizationForStatementDenied) => QueryError::Denied("not authorized"),
        Some(ErrorCode::ReadOnly) => QueryError::ReadOnly,
        Some(ErrorCode::OperationInterrupted) => {
            QueryError::Limit("the call's deadline passed".into())
        }
        Some(ErrorCode::TooBig) => QueryError::Limit("a value or statement is too big".into()),
        Some(ErrorCode::DiskFull) => QueryError::Limit("the store is full".into()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            QueryError::Limit("the store is busy".into())
        }
        Some(
            ErrorCode::DatabaseCorrupt
            | ErrorCode::NotADatabase
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory,
        ) => {
            tracing::error!(target: "bulkhead::sql", error = %e, "SQL store failure");
            QueryError::Internal
        }
        // Syntax errors, constraint violations, type errors: the guest's
        // own statement, so the message may go back to it.
        _ => QueryError::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
