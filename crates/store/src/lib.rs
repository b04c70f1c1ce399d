//! Everything that must last, for one app and environment: the audit
//! chain and admin tokens, in one embedded SQLite database (WAL) beside the
//! keys that protect them.

pub mod audit;
mod audit_budget;
pub mod audit_chain;
mod audit_durable;
mod audit_quota;
mod audit_runs;
mod audit_spill;
mod audit_writer;
mod audited;
mod carried;
pub mod credentials;
pub mod crypto;
pub mod deploy_channel;
pub mod files;
pub mod kv;
pub mod ledger;
pub mod meter;
pub mod pg;
mod pg_bound;
pub mod pg_tls;
pub mod queue;
pub mod secrets;
pub mod sql;
pub mod state;
pub mod state_move;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

pub use audit::{AuditEvent, AuditQuery, AuditRecord, CHAIN_BROKEN, HeadFile, Verification};
pub use audit_durable::{CallTickets, Durability, Ticket};
pub use audit_runs::{UNCLEAN_STOP, UncleanStop};
pub use audit_writer::{AuditLog, AuditOpening, AuditStatus, DEFAULT_AUDIT_MAX_BYTES};
pub use meter::{MeterLog, Usage};
pub use state::{State, StateConfig};

const DB_FILE: &str = "state.db";
pub(crate) const AUDIT_KEY_FILE: &str = "audit.key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("key file: {0}")]
    Key(std::io::Error),
    #[error("audit head file: {0}")]
    HeadFile(std::io::Error),
    #[error("audit trail: {0}")]
    Writer(String),
    /// A backend other than the embedded one could not be opened (the
    /// message never holds its URL).
    #[error("state backend: {0}")]
    Backend(String),
}

/// The state directory of one app environment.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// Issue 17: the connection [`Store::open_held`] opened, lent to one-
    /// shot statements (see [`Store::lease`]) so that a server's start-up
    /// does not open a connection (a file open, the WAL index mapped, three
    /// pragmas) for each of them. Shared by every clone.
    spare: Option<Arc<Mutex<Connection>>>,
}

/// The connection [`Store::open_held`] opened, held open while it lives.
pub struct Held(#[allow(dead_code)] Arc<Mutex<Connection>>);

impl Held {
    /// Issue 17: at a clean shutdown, move the WAL into the database and
    /// truncate it. Without it the WAL outlives the process (the server's
    /// threads still hold connections when it exits, so none is the last to
    /// close and checkpoint it) and grows by every start's records; the next
    /// start's first connection then reads and checksums all of it to
    /// rebuild the WAL index. Best effort and bounded: a connection still
    /// reading makes it a partial checkpoint, which loses nothing.
    pub fn checkpoint(&self) {
        let Ok(conn) = self.0.lock() else {
            return;
        };
        let _ = conn.busy_timeout(std::time::Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::debug!(target: "bulkhead::store", error = %e, "no WAL checkpoint at shutdown");
        }
    }
}

/// Issue 17: SQLite's one-time set-up, on a thread of its own so that it
/// runs beside the caller's start-up instead of inside its first
/// connection. With SQLCipher it seeds OpenSSL's random generator (and
/// loads OpenSSL's configuration): a millisecond or more of CPU. Nothing is
/// opened but a database in memory, dropped at once; a connection opened
/// meanwhile waits for the set-up as it would have run it.
pub fn warm_up() {
    let _ = std::thread::Builder::new()
        .name("bulkhead-sqlite".into())
        .spawn(|| drop(Connection::open_in_memory()));
}

/// A connection for one statement or a few: the store's spare one when it
/// has one and no other thread is using it, else a new one.
pub(crate) enum Lease<'a> {
    Spare(MutexGuard<'a, Connection>),
    Own(Connection),
}

impl std::ops::Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            Lease::Spare(conn) => conn,
            Lease::Own(conn) => conn,
        }
    }
}

/// The schema version from which every store has a keyed audit head from
/// the moment it is created (migration 7 and [`Store::open`]): a store
/// below it is one of an older Bulkhead (T09).
pub(crate) const ANCHORED_SCHEMA: i64 = 7;

/// Schema versions, applied in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[
    r"
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        correlation_id TEXT,
        subject TEXT,
        function TEXT,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_by_correlation ON audit (correlation_id);
    CREATE INDEX audit_by_time ON audit (time_ms);
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        mac TEXT NOT NULL
    );
    CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
",
    r"
    CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('session', 'api-key')),
        hash TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        scopes TEXT NOT NULL,
        label TEXT,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
",
    // 3: the meter (T04).
    meter::MIGRATION,
    // 4: key-value records (T13/T14). The subject is its own column, never a
    // key prefix a guest could forge; keys and values are sealed, `key_id`
    // is a keyed hash of the key for lookups.
    r"
    CREATE TABLE kv (
        store TEXT NOT NULL,
        subject TEXT NOT NULL,
        key_id BLOB NOT NULL,
        key_sealed BLOB NOT NULL,
        value_sealed BLOB NOT NULL,
        updated_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        PRIMARY KEY (store, subject, key_id)
    ) WITHOUT ROWID;
    CREATE INDEX kv_by_expiry ON kv (expires_ms) WHERE expires_ms IS NOT NULL;
    CREATE INDEX kv_by_subject ON kv (subject);
",
    // 5: secrets (T15), sealed; only the newest version is kept.
    r"
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        sealed BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
",
    // 6: the audit trail's anchoring and size budget (T09). `anchored`
    // heads were written once the head file existed (their MAC says so);
    // `audit_meta` keeps the trail's approximate size, its budget, how
    // many breaks the writers recorded, and counts the durable commits
    // that precede each head file write.
    r"
    ALTER TABLE audit_head ADD COLUMN anchored INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE audit_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        size_bytes INTEGER NOT NULL,
        max_bytes INTEGER,
        breaks INTEGER NOT NULL DEFAULT 0,
        anchors INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO audit_meta (id, size_bytes)
    SELECT 1, coalesce(sum(
        length(CAST(kind AS BLOB)) + coalesce(length(CAST(correlation_id AS BLOB)), 0)
        + coalesce(length(CAST(subject AS BLOB)), 0) + coalesce(length(CAST(function AS BLOB)), 0)
        + length(CAST(detail AS BLOB)) + length(prev_hash) + length(hash) + 64
    ), 0) FROM audit;
",
    // 7: the count of recorded breaks moves into the keyed head, under its
    // MAC (T09): in `audit_meta` anyone could reset it. `audit_meta.breaks`
    // is read only while the head is still MAC'd the old way.
    r"
    ALTER TABLE audit_head ADD COLUMN breaks INTEGER NOT NULL DEFAULT 0;
",
];

impl Store {
    /// Open (creating and migrating if needed) the store in `dir`.
    /// A new store's audit trail is anchored at once (T09): its keyed head
    /// and head file name record 0, so that deleting them later is seen.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_held(dir).map(|(store, _)| store)
    }

    /// [`Store::open`], returning the connection it opened too. Issue 17:
    /// a server holds it while it runs, so no connection closed on the
    /// start path is the database's last one: SQLite checkpoints the WAL
    /// (three syncs) when its last connection closes, which a held
    /// connection leaves to the automatic checkpoints and the shutdown.
    pub fn open_held(dir: &Path) -> Result<(Self, Held), StoreError> {
        let dir_error = |source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        files::create_state_dir(dir).map_err(dir_error)?;
        let mut store = Self {
            dir: dir.to_path_buf(),
            spare: None,
        };
        // Owner-only before SQLite creates it: its -wal and -shm copy its
        // mode. An existing database is not opened (T09: SQLite's locks).
        files::create_private_file(&store.db_path()).map_err(dir_error)?;
        files::make_private(&dir.join(audit::HEAD_FILE)).map_err(dir_error)?;
        let mut conn = store.connect()?;
        store.migrate(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        store.spare = Some(conn.clone());
        Ok((store, Held(conn)))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    pub(crate) fn db_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.db_path(),
            source,
        }
    }

    /// A new connection; each thread that needs the database opens its own.
    pub fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(self.db_path()).map_err(|e| self.db_error(e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .and_then(|()| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
            .map_err(|e| self.db_error(e))?;
        Ok(conn)
    }

    /// A connection for a one-shot statement (issue 17): the spare one
    /// when this store has one and it is free, else a new one. Never for a
    /// transaction left open, nor one held across a call that may lease
    /// again (that one gets a new connection, as before).
    pub(crate) fn lease(&self) -> Result<Lease<'_>, StoreError> {
        if let Some(spare) = &self.spare
            && let Ok(conn) = spare.try_lock()
        {
            return Ok(Lease::Spare(conn));
        }
        self.connect().map(Lease::Own)
    }

    /// Run the migrations not yet applied, and anchor a new audit trail,
    /// under the write lock: two processes opening one new store at once
    /// take turns.
    fn migrate(&self, conn: &mut Connection) -> Result<(), StoreError> {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db_error(e))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.db_error(e))?;
        for (i, migration) in (0_i64..)
            .zip(MIGRATIONS)
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(migration).map_err(|e| self.db_error(e))?;
            tx.pragma_update(None, "user_version", i + 1)
                .map_err(|e| self.db_error(e))?;
        }
        self.anchor_new_trail(&tx, version)?;
        tx.commit().map_err(|e| self.db_error(e))
    }

    /// The audit trail's size budget (`[audit] max_size`), kept in the
    /// database so that every writer of the trail (the server, CLI
    /// commands) holds to the same one.
    /// Issue 17: a budget already in place is not written again, so a
    /// restart with the same one starts no write transaction.
    pub fn set_audit_max_size(&self, bytes: u64) -> Result<(), StoreError> {
        use rusqlite::OptionalExtension as _;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let conn = self.lease()?;
        let current: Option<Option<i64>> = conn
            .query_row("SELECT max_bytes FROM audit_meta WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db_error(e))?;
        if current == Some(Some(bytes)) {
            return Ok(());
        }
        conn.execute(
            "INSERT INTO audit_meta (id, size_bytes, max_bytes) VALUES (1, 0, ?1)
             ON CONFLICT (id) DO UPDATE SET max_bytes = excluded.max_bytes",
            [bytes],
        )
        .map(drop)
        .map_err(|e| self.db_error(e))
    }

    pub(crate) fn audit_key(&self) -> Result<[u8; 32], StoreError> {
        files::load_or_create_key(&self.dir.join(AUDIT_KEY_FILE)).map_err(StoreError::Key)
    }
}

/// `mutex`'s value, even if a thread panicked holding it (the state it
/// guards is a connection, left consistent by SQLite).
pub(crate) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
