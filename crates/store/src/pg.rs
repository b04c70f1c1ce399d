//! The PostgreSQL state of one app environment beside its key-value
//! records (issue 16): the wrapped data keys, the sealed secrets and the
//! credential hashes, in tables of the environment's own schema, so that
//! every node of a deployment shares them (T12, T15, T20).
//!
//! - Data keys are stored only wrapped by the master key each node holds
//!   (AES key wrap, [`crate::crypto`]); a node without it reads nothing.
//!   Two nodes asking for a missing key at once both insert with
//!   `ON CONFLICT DO NOTHING` and then read the one that won, so every node
//!   seals under the same key.
//! - Secrets arrive sealed ([`crate::secrets::Secrets`]); credentials and
//!   admin tokens only as SHA-256 hashes ([`crate::credentials`]).
//! - The schema's tables are created at open, under an advisory lock so
//!   that nodes starting together take turns (DDL only here).
//! - Every call runs on a runtime of the connection's own and is waited
//!   for over a channel, so it may be made from any thread, a server's
//!   async workers included (they block for the round trip, as they do on
//!   SQLite).
//! - TLS to the database (T15): `sslmode=require` or `verify-full` in
//!   the URL encrypts and verifies the server's certificate and name
//!   against `sslrootcert` or the public roots ([`crate::pg_tls`]);
//!   `verify-ca` is refused as weaker; `prefer` and `disable` connect in
//!   the clear (a private network or a tunnel).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::kv::{PgConfig, valid_schema};

/// Most connections one node keeps for this state.
const POOL_SIZE: usize = 8;
/// How long a new connection may take (when the URL sets none).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a free or new connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock the schema's DDL runs under (any constant: advisory
/// locks are per database, and each test or deployment has its own).
pub(crate) const MIGRATION_LOCK: i64 = 0x6275_6c6b_6865_6164; // "bulkhead"

/// What went wrong talking to PostgreSQL. Never holds the URL.
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL: {0}")]
pub struct PgError(pub String);

impl PgError {
    /// `e` with what caused it: a driver's "db error" alone says nothing.
    pub(crate) fn of(e: impl std::error::Error) -> Self {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let more = c.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            cause = c.source();
        }
        Self(text)
    }
}

/// Connections to one app environment's schema, shared by the data keys,
/// secrets and credentials backends of a node.
pub struct Pg {
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    schema: String,
    /// For a connection of its own outside the pool (LISTEN, issue 16).
    config: tokio_postgres::Config,
    tls: Option<crate::pg_tls::MakeRustlsConnect>,
}

/// A database URL as the driver takes it, and its TLS when it asks for it.
pub(crate) type Parsed = (
    tokio_postgres::Config,
    Option<crate::pg_tls::MakeRustlsConnect>,
);

/// The parsed URL and, when it asks for TLS, the verifying connector;
/// refused when it asks for what this build cannot do. Never echoes the
/// URL (it may hold a password).
pub(crate) fn parse_url(config: &PgConfig) -> Result<Parsed, PgError> {
    use secrecy::ExposeSecret as _;
    if !valid_schema(&config.schema) {
        return Err(PgError(
            "a PostgreSQL schema name is 1 to 50 of a-z, 0-9 and _, starting with a letter".into(),
        ));
    }
    // `sslrootcert`, `sslcert`, `sslkey` and `verify-full` are libpq's,
    // not the driver's: taken out of the URL here (URL form only; a plain
    // path, not %-encoded).
    let url = config.url.expose_secret();
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root = None;
    let mut cert = None;
    let mut key = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.to_string()),
            Some(("sslrootcert", value)) => root = Some(std::path::PathBuf::from(value)),
            Some(("sslcert", value)) => cert = Some(std::path::PathBuf::from(value)),
            Some(("sslkey", value)) => key = Some(std::path::PathBuf::from(value)),
            _ => kept.push(pair),
        }
    }
    let client = match (&cert, &key) {
        (Some(cert), Some(key)) => Some(crate::pg_tls::ClientCert { cert, key }),
        (None, None) => None,
        _ => {
            return Err(PgError(
                "the PostgreSQL URL names one of sslcert and sslkey: a client certificate needs both (the certificate chain's PEM file and its private key's)".into(),
            ));
        }
    };
    let tls = match mode.as_deref() {
        None | Some("disable" | "prefer") => {
            if root.is_some() || client.is_some() {
                return Err(PgError(
                    "the PostgreSQL URL names sslrootcert, sslcert or sslkey without sslmode=verify-full: add it, or remove them".into(),
                ));
            }
            None
        }
        Some("require" | "verify-full") => Some(crate::pg_tls::MakeRustlsConnect::new(
            root.as_deref(),
            client,
        )?),
        Some("verify-ca") => {
            return Err(PgError(
                "sslmode=verify-ca checks the chain but not the database's name; use sslmode=verify-full".into(),
            ));
        }
        Some(_) => {
            return Err(PgError(
                "the PostgreSQL URL's sslmode must be disable, prefer, require or verify-full"
                    .into(),
            ));
        }
    };
    // What the driver is told: it only knows disable, prefer, require.
    if mode.is_some() {
        kept.push(match (&tls, mode.as_deref()) {
            (Some(_), _) => "sslmode=require",
            (None, Some("prefer")) => "sslmode=prefer",
            (None, _) => "sslmode=disable",
        });
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    // The parser's message may quote the URL, password included.
    let mut pg: tokio_postgres::Config = url.parse().map_err(|_| {
        PgError("the PostgreSQL URL is not valid (postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=verify-full&sslrootcert=/path/ca.pem&sslcert=/path/client.pem&sslkey=/path/client.key])".into())
    })?;
    // A Unix socket is never encrypted: TLS asked for, it would connect
    // in the clear, certificates unchecked (outside review of issue 16).
    #[cfg(unix)]
    if tls.is_some()
        && pg
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    {
        return Err(PgError(
            "the PostgreSQL URL asks for TLS (sslmode=require or verify-full) but names a Unix-socket host, which is never encrypted: connect over TCP, or drop sslmode for a local socket".into(),
        ));
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    // A node frozen or cut off inside a transaction (SIGSTOP, a network
    // that drops packets without closing) must not hold rows every other
    // node waits on: the server ends such a session after
    // IDLE_IN_TRANSACTION, no statement waits for a lock past
    // LOCK_TIMEOUT, and keepalives find a dead peer (outside review of
    // issue 16: one frozen node stalled the ledger everywhere, and could
    // not be reaped).
    pg.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
    let bound = format!(
        "-c idle_in_transaction_session_timeout={} -c lock_timeout={}",
        IDLE_IN_TRANSACTION.as_millis(),
        LOCK_TIMEOUT.as_millis()
    );
    let options = match pg.get_options() {
        Some(theirs) if !theirs.is_empty() => format!("{theirs} {bound}"),
        _ => bound,
    };
    pg.options(&options);
    Ok((pg, tls))
}

/// What a cancel-safe call does with a result nobody read.
type Undelivered<T> = Arc<std::sync::Mutex<Option<Box<dyn FnOnce(Result<T, PgError>) + Send>>>>;

fn hand_back<T>(undelivered: &Undelivered<T>, result: Result<T, PgError>) {
    let taken = crate::locked(undelivered).take();
    if let Some(undelivered) = taken {
        undelivered(result);
    }
}

/// The caller's end of [`Pg::call_async_or`]: dropped unread, it hands
/// a result already sent back to `undelivered`.
struct Waiting<T> {
    rx: tokio::sync::oneshot::Receiver<Result<T, PgError>>,
    undelivered: Undelivered<T>,
    read: bool,
}

impl<T> Drop for Waiting<T> {
    fn drop(&mut self) {
        if self.read {
            return;
        }
        self.rx.close();
        if let Ok(result) = self.rx.try_recv() {
            hand_back(&self.undelivered, result);
        }
    }
}

/// How long the server lets a session sit idle inside a transaction.
pub(crate) const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);
/// The longest any statement waits for a lock another session holds.
/// Migrations wait as long as it takes instead (a backup's lock on a
/// table must not stop a node from starting: outside review); each one
/// turns it off for its own transaction.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before TCP keepalives probe the server.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// A runtime of its own and a pool of up to `size` connections to the
/// database `config` names (nothing is connected yet): shared by every
/// PostgreSQL backend, so each refuses the same URLs the same way.
pub(crate) fn connect(
    config: &PgConfig,
    size: usize,
) -> Result<(tokio::runtime::Runtime, Pool), PgError> {
    connect_parsed(parse_url(config)?, size)
}

/// [`connect`] for a URL already parsed (its TLS already built).
fn connect_parsed(
    (pg, tls): Parsed,
    size: usize,
) -> Result<(tokio::runtime::Runtime, Pool), PgError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bulkhead-postgres")
        .enable_all()
        .build()
        .map_err(PgError::of)?;
    match build_pool(&runtime, pg, tls, size) {
        Ok(pool) => Ok((runtime, pool)),
        Err(e) => {
            runtime.shutdown_background();
            Err(e)
        }
    }
}

/// A pool of up to `size` connections as `config` says, on `runtime`.
fn build_pool(
    runtime: &tokio::runtime::Runtime,
    config: tokio_postgres::Config,
    tls: Option<crate::pg_tls::MakeRustlsConnect>,
    size: usize,
) -> Result<Pool, PgError> {
    // Connected as a SQL store's pools are (`pg_bound`): each host of the
    // URL in turn, each within the connect timeout from the socket to the
    // login (second outside review: the driver's own connect bounds only
    // the socket, so a host that took the connection and never answered
    // held the node's start until the pool gave up, the next host never
    // tried). Its messages are not bounded: they are the node's own.
    let timeout = create_timeout(&config);
    let connect = crate::pg_bound::BoundedConnect::node(tls, &config);
    let manager = deadpool_postgres::Manager::from_connect(config, connect, manager_config());
    pool_of(runtime, manager, size, timeout)
}

/// Connections go back to a pool as they are (their users clean them).
fn manager_config() -> deadpool_postgres::ManagerConfig {
    deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    }
}

/// How long a pool waits for a new connection to `config`: the connect
/// timeout for each of its hosts in turn (second outside review: one
/// host's whole timeout left the next none).
pub(crate) fn create_timeout(config: &tokio_postgres::Config) -> Duration {
    let hosts = config
        .get_hosts()
        .len()
        .max(config.get_hostaddrs().len())
        .max(1);
    crate::pg_bound::per_host_timeout(config)
        .saturating_mul(u32::try_from(hosts).unwrap_or(u32::MAX))
}

/// A pool of up to `size` connections `manager` makes, on `runtime`,
/// each made within `create_timeout`.
fn pool_of(
    runtime: &tokio::runtime::Runtime,
    manager: deadpool_postgres::Manager,
    size: usize,
    create_timeout: Duration,
) -> Result<Pool, PgError> {
    let _inside = runtime.enter();
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT.max(create_timeout)))
        .create_timeout(Some(create_timeout))
        .build()
        .map_err(PgError::of)
}

impl Pg {
    /// Connect, and create the schema's tables if they are missing. Fails
    /// (with what to do) when the database cannot be reached.
    pub fn open(config: &PgConfig) -> Result<Arc<Self>, PgError> {
        let (url, tls) = parse_url(config)?;
        let (runtime, pool) = connect_parsed((url.clone(), tls.clone()), POOL_SIZE)?;
        let pg = Arc::new(Self {
            runtime: Some(runtime),
            pool,
            schema: config.schema.clone(),
            config: url,
            tls,
        });
        let migration = migration(&config.schema);
        pg.call(move |pool| async move {
            let client = pool.get().await.map_err(|e| {
                PgError(format!(
                    "cannot reach the database ({}); check that PostgreSQL is running and that the URL in BULKHEAD_DATABASE_URL or `database_url_file` names it", PgError::of(e).0
                ))
            })?;
            client.batch_execute(&migration).await.map_err(|e| {
                let denied = e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
                let mut said = PgError::of(e);
                if denied {
                    // The likeliest cause since SQL stores took catalog
                    // functions from PUBLIC (second outside review).
                    said.0.push_str("; if a Bulkhead node with SQL stores ran on this database as a superuser, it took `set_config` and other catalog functions from PUBLIC: grant them back to this role with `GRANT bhs_<hash>_catalog TO <role>` (`\\du bhs_*catalog` in psql lists the role)");
                }
                said
            })
        })?;
        Ok(pg)
    }

    /// The schema's name (validated: safe to splice into statements).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The parsed URL and its TLS, for a connection outside the pool.
    pub(crate) fn config(
        &self,
    ) -> (
        &tokio_postgres::Config,
        Option<&crate::pg_tls::MakeRustlsConnect>,
    ) {
        (&self.config, self.tls.as_ref())
    }

    /// A pool of up to `size` connections to the same database logging
    /// in as `user` (an SQL store's grant role, issue 16); its user cleans
    /// each connection before giving it back. Each message a connection
    /// reads is at most `max_message` bytes (T05): one that was larger
    /// ends its connection; both it and large ones are told in `counts`.
    pub(crate) fn pool_as(
        &self,
        user: &str,
        password: &secrecy::SecretString,
        size: usize,
        max_message: u32,
        counts: Arc<crate::pg_bound::MessageCounts>,
    ) -> Result<Pool, PgError> {
        use secrecy::ExposeSecret as _;
        let Some(runtime) = &self.runtime else {
            return Err(PgError("the PostgreSQL connection is closed".into()));
        };
        let mut config = self.config.clone();
        config.user(user).password(password.expose_secret());
        let connect = crate::pg_bound::BoundedConnect {
            max_message,
            counts,
            ..crate::pg_bound::BoundedConnect::node(self.tls.clone(), &config)
        };
        let timeout = create_timeout(&config);
        let manager = deadpool_postgres::Manager::from_connect(config, connect, manager_config());
        pool_of(runtime, manager, size, timeout)
    }

    /// Run `work` on the connection's runtime and await its result
    /// without blocking the caller's thread (a gateway worker stays free
    /// for other requests while the database answers). Cancel-safe: when
    /// the caller stops waiting
    /// (its request dropped: a client gone, a timeout), the result is
    /// handed to `undelivered` instead of being lost, so what it holds
    /// can be given back (outside review of issue 16: a dropped admission
    /// kept its reservation for the node's life).
    pub(crate) async fn call_async_or<T, F>(
        &self,
        work: impl FnOnce(Pool) -> F,
        undelivered: impl FnOnce(Result<T, PgError>) + Send + 'static,
    ) -> Result<T, PgError>
    where
        F: Future<Output = Result<T, PgError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(PgError("the PostgreSQL connection is closed".into()));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Exactly one side runs it: the task, if the caller was gone before
        // the result was sent; else the caller's guard, if it is dropped
        // with the result unread.
        let undelivered: Undelivered<T> =
            Arc::new(std::sync::Mutex::new(Some(Box::new(undelivered))));
        let future = work(self.pool.clone());
        let on_task = undelivered.clone();
        runtime.spawn(async move {
            if let Err(result) = tx.send(future.await) {
                hand_back(&on_task, result);
            }
        });
        let mut waiting = Waiting {
            rx,
            undelivered,
            read: false,
        };
        let result = (&mut waiting.rx).await;
        waiting.read = true;
        result.unwrap_or_else(|_| Err(PgError("the PostgreSQL call was cut short".into())))
    }

    /// Run `work` on the connection's runtime and wait for its result.
    pub(crate) fn call<T, F>(&self, work: impl FnOnce(Pool) -> F) -> Result<T, PgError>
    where
        F: Future<Output = Result<T, PgError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(PgError("the PostgreSQL connection is closed".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = work(self.pool.clone());
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(PgError("the PostgreSQL call was cut short".into())))
    }
}

impl Drop for Pg {
    /// Without waiting: it may be dropped on an async thread.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `statement` with its parameters, prepared once per connection.
pub(crate) async fn query(
    pool: &Pool,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, PgError> {
    let client = pool.get().await.map_err(PgError::of)?;
    let prepared = client
        .prepare_cached(statement)
        .await
        .map_err(PgError::of)?;
    client.query(&prepared, params).await.map_err(PgError::of)
}

pub(crate) async fn execute(
    pool: &Pool,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, PgError> {
    let client = pool.get().await.map_err(PgError::of)?;
    let prepared = client
        .prepare_cached(statement)
        .await
        .map_err(PgError::of)?;
    client.execute(&prepared, params).await.map_err(PgError::of)
}

pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    index: usize,
) -> Result<T, PgError> {
    row.try_get(index).map_err(PgError::of)
}

/// The first statements of every migration batch (one implicit
/// transaction): wait for locks as long as it takes (a backup's lock on a
/// table must not stop a node from starting, outside review), then take
/// the schema's advisory lock, so nodes starting together take turns.
pub(crate) fn migration_preamble() -> String {
    format!(
        "SELECT set_config('lock_timeout', '0', true); SELECT pg_advisory_xact_lock({MIGRATION_LOCK});"
    )
}

/// The tables, idempotent; one implicit transaction (one simple-query
/// batch) holding the advisory lock, so two nodes never race the DDL.
fn migration(schema: &str) -> String {
    format!(
        r"
        {preamble}
        CREATE SCHEMA IF NOT EXISTS {schema};
        CREATE TABLE IF NOT EXISTS {schema}.data_keys (
            owner TEXT NOT NULL,
            store TEXT NOT NULL,
            subject TEXT NOT NULL,
            wrapped BYTEA NOT NULL,
            created_ms BIGINT NOT NULL,
            PRIMARY KEY (owner, store, subject)
        );
        CREATE TABLE IF NOT EXISTS {schema}.secrets (
            name TEXT PRIMARY KEY,
            version BIGINT NOT NULL,
            sealed BYTEA NOT NULL,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {schema}.credentials (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('session', 'api-key')),
            hash TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            scopes TEXT NOT NULL,
            label TEXT,
            created_ms BIGINT NOT NULL,
            expires_ms BIGINT NOT NULL,
            revoked_ms BIGINT
        );
        CREATE TABLE IF NOT EXISTS {schema}.admin_tokens (
            id TEXT PRIMARY KEY,
            hash TEXT NOT NULL,
            created_ms BIGINT NOT NULL
        );
        ",
        preamble = migration_preamble()
    )
}

/// The wrapped data keys every node shares (T15, T20): the `data_keys`
/// table. A key is created race-free: `INSERT … ON CONFLICT DO NOTHING`,
/// then the row that won is read back ([`crate::crypto::Keyring::data_key`]).
pub struct PostgresKeys {
    pg: Arc<Pg>,
}

impl PostgresKeys {
    pub fn new(pg: Arc<Pg>) -> Self {
        Self { pg }
    }

    fn table(&self) -> String {
        format!("{}.data_keys", self.pg.schema())
    }
}

fn crypto(e: PgError) -> crate::crypto::CryptoError {
    crate::crypto::CryptoError::Backend(e.0)
}

fn count_of(rows: &[tokio_postgres::Row]) -> Result<usize, PgError> {
    let n: i64 = match rows.first() {
        Some(row) => column(row, 0)?,
        None => 0,
    };
    Ok(usize::try_from(n).unwrap_or(0))
}

impl crate::crypto::DataKeyBackend for PostgresKeys {
    fn wrapped(
        &self,
        owner: &str,
        store: &str,
        subject: &str,
    ) -> Result<Option<Vec<u8>>, crate::crypto::CryptoError> {
        let sql = format!(
            "SELECT wrapped FROM {} WHERE owner = $1 AND store = $2 AND subject = $3",
            self.table()
        );
        let (owner, store, subject) = (owner.to_string(), store.to_string(), subject.to_string());
        self.pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[&owner, &store, &subject]).await?;
                rows.first().map(|row| column(row, 0)).transpose()
            })
            .map_err(crypto)
    }

    fn insert_if_absent(
        &self,
        owner: &str,
        store: &str,
        subject: &str,
        wrapped: &[u8],
        now_ms: i64,
    ) -> Result<(), crate::crypto::CryptoError> {
        let sql = format!(
            "INSERT INTO {} (owner, store, subject, wrapped, created_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (owner, store, subject) DO NOTHING",
            self.table()
        );
        let (owner, store, subject) = (owner.to_string(), store.to_string(), subject.to_string());
        let wrapped = wrapped.to_vec();
        self.pg
            .call(move |pool| async move {
                execute(&pool, &sql, &[&owner, &store, &subject, &wrapped, &now_ms])
                    .await
                    .map(drop)
            })
            .map_err(crypto)
    }

    /// The rows are deleted at once on every node; their old versions stay
    /// in the database's files until PostgreSQL vacuums them (and in its
    /// WAL and backups): `checkpointed` is false, so the operator is told.
    fn destroy_subject(
        &self,
        owner: &str,
        subject: &str,
    ) -> Result<crate::crypto::Destroyed, crate::crypto::CryptoError> {
        let sql = format!(
            "DELETE FROM {} WHERE owner = $1 AND subject = $2",
            self.table()
        );
        let (owner, subject) = (owner.to_string(), subject.to_string());
        let keys = self
            .pg
            .call(move |pool| async move { execute(&pool, &sql, &[&owner, &subject]).await })
            .map_err(crypto)?;
        Ok(crate::crypto::Destroyed {
            keys: usize::try_from(keys).unwrap_or(usize::MAX),
            checkpointed: false,
        })
    }

    fn count_subject(
        &self,
        owner: &str,
        subject: &str,
    ) -> Result<usize, crate::crypto::CryptoError> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE owner = $1 AND subject = $2",
            self.table()
        );
        let (owner, subject) = (owner.to_string(), subject.to_string());
        self.pg
            .call(move |pool| async move {
                count_of(&query(&pool, &sql, &[&owner, &subject]).await?)
            })
            .map_err(crypto)
    }

    fn subjects(
        &self,
        owner: &str,
        keep: &dyn Fn(&str) -> bool,
        limit: usize,
    ) -> Result<Vec<String>, crate::crypto::CryptoError> {
        let sql = format!(
            "SELECT DISTINCT subject FROM {} WHERE owner = $1 AND subject <> '' ORDER BY subject",
            self.table()
        );
        let owner = owner.to_string();
        let all: Vec<String> = self
            .pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[&owner]).await?;
                rows.iter().map(|row| column(row, 0)).collect()
            })
            .map_err(crypto)?;
        Ok(all.into_iter().filter(|s| keep(s)).take(limit).collect())
    }
}

/// The sealed secrets every node shares (T15): the `secrets` table,
/// newest version only.
pub struct PostgresSecrets {
    pg: Arc<Pg>,
}

impl PostgresSecrets {
    pub fn new(pg: Arc<Pg>) -> Self {
        Self { pg }
    }

    fn table(&self) -> String {
        format!("{}.secrets", self.pg.schema())
    }
}

fn secret_error(e: PgError) -> crate::secrets::SecretError {
    crate::secrets::SecretError::Backend(e.0)
}

fn secret_info(row: &tokio_postgres::Row) -> Result<crate::secrets::SecretInfo, PgError> {
    Ok(crate::secrets::SecretInfo {
        name: column(row, 0)?,
        version: column(row, 1)?,
        created_ms: column(row, 2)?,
        updated_ms: column(row, 3)?,
    })
}

impl crate::secrets::SecretBackend for PostgresSecrets {
    fn sealed(&self, name: &str) -> Result<Option<(i64, Vec<u8>)>, crate::secrets::SecretError> {
        let sql = format!(
            "SELECT version, sealed FROM {} WHERE name = $1",
            self.table()
        );
        let name = name.to_string();
        self.pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[&name]).await?;
                rows.first()
                    .map(|row| Ok((column(row, 0)?, column(row, 1)?)))
                    .transpose()
            })
            .map_err(secret_error)
    }

    fn info(
        &self,
        name: &str,
    ) -> Result<Option<crate::secrets::SecretInfo>, crate::secrets::SecretError> {
        let sql = format!(
            "SELECT name, version, created_ms, updated_ms FROM {} WHERE name = $1",
            self.table()
        );
        let name = name.to_string();
        self.pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[&name]).await?;
                rows.first().map(secret_info).transpose()
            })
            .map_err(secret_error)
    }

    fn list(&self) -> Result<Vec<crate::secrets::SecretInfo>, crate::secrets::SecretError> {
        let sql = format!(
            "SELECT name, version, created_ms, updated_ms FROM {} ORDER BY name",
            self.table()
        );
        self.pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[]).await?;
                rows.iter().map(secret_info).collect()
            })
            .map_err(secret_error)
    }

    fn write(
        &self,
        name: &str,
        version: i64,
        sealed: &[u8],
        now_ms: i64,
    ) -> Result<(), crate::secrets::SecretError> {
        let sql = format!(
            "INSERT INTO {} (name, version, sealed, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, sealed = excluded.sealed, updated_ms = excluded.updated_ms",
            self.table()
        );
        let (name, sealed) = (name.to_string(), sealed.to_vec());
        self.pg
            .call(move |pool| async move {
                execute(&pool, &sql, &[&name, &version, &sealed, &now_ms])
                    .await
                    .map(drop)
            })
            .map_err(secret_error)
    }

    fn remove(&self, name: &str) -> Result<bool, crate::secrets::SecretError> {
        let sql = format!("DELETE FROM {} WHERE name = $1", self.table());
        let name = name.to_string();
        self.pg
            .call(move |pool| async move { Ok(execute(&pool, &sql, &[&name]).await? > 0) })
            .map_err(secret_error)
    }
}

/// The credential hashes every node shares (T12, T19): the `credentials`
/// and `admin_tokens` tables. A credential revoked through one node is
/// refused by every node at its next check: nothing is cached.
pub struct PostgresCredentials {
    pg: Arc<Pg>,
}

impl PostgresCredentials {
    pub fn new(pg: Arc<Pg>) -> Self {
        Self { pg }
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.pg.schema())
    }
}

fn store_error(e: PgError) -> crate::StoreError {
    crate::StoreError::Backend(e.0)
}

impl crate::credentials::CredentialBackend for PostgresCredentials {
    fn insert(&self, c: &crate::credentials::NewCredential<'_>) -> Result<(), crate::StoreError> {
        let sql = format!(
            "INSERT INTO {} (id, kind, hash, subject, scopes, label, created_ms, expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self.table("credentials")
        );
        let (id, kind, hash, subject, scopes) = (
            c.id.to_string(),
            c.kind.as_str(),
            c.hash.to_string(),
            c.subject.to_string(),
            c.scopes.to_string(),
        );
        let label = c.label.map(str::to_string);
        let (created, expires) = (c.created_ms, c.expires_ms);
        self.pg
            .call(move |pool| async move {
                execute(
                    &pool,
                    &sql,
                    &[
                        &id, &kind, &hash, &subject, &scopes, &label, &created, &expires,
                    ],
                )
                .await
                .map(drop)
            })
            .map_err(store_error)
    }

    fn find(&self, hash: &str) -> Result<Option<crate::credentials::Found>, crate::StoreError> {
        let sql = format!(
            "SELECT id, kind, subject, scopes, expires_ms, revoked_ms FROM {} WHERE hash = $1",
            self.table("credentials")
        );
        let hash = hash.to_string();
        self.pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[&hash]).await?;
                rows.first()
                    .map(|r| {
                        Ok(crate::credentials::Found {
                            id: column(r, 0)?,
                            kind: column(r, 1)?,
                            subject: column(r, 2)?,
                            scopes: column(r, 3)?,
                            expires_ms: column(r, 4)?,
                            revoked_ms: column(r, 5)?,
                        })
                    })
                    .transpose()
            })
            .map_err(store_error)
    }

    fn revoke(
        &self,
        kind: crate::credentials::Kind,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, crate::StoreError> {
        let sql = format!(
            "UPDATE {} SET revoked_ms = $1 WHERE id = $2 AND kind = $3 AND revoked_ms IS NULL",
            self.table("credentials")
        );
        let (id, kind) = (id.to_string(), kind.as_str());
        self.pg
            .call(move |pool| async move {
                Ok(execute(&pool, &sql, &[&now_ms, &id, &kind]).await? > 0)
            })
            .map_err(store_error)
    }

    fn list(
        &self,
        kind: crate::credentials::Kind,
    ) -> Result<Vec<crate::credentials::Listed>, crate::StoreError> {
        let sql = format!(
            "SELECT id, subject, scopes, label, created_ms, expires_ms, revoked_ms
             FROM {} WHERE kind = $1 ORDER BY created_ms, id",
            self.table("credentials")
        );
        let name = kind.as_str();
        self.pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[&name]).await?;
                rows.iter()
                    .map(|r| {
                        let scopes: String = column(r, 2)?;
                        Ok(crate::credentials::Listed {
                            id: column(r, 0)?,
                            kind: name,
                            subject: column(r, 1)?,
                            scopes: scopes
                                .split(' ')
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect(),
                            label: column(r, 3)?,
                            created_ms: column(r, 4)?,
                            expires_ms: column(r, 5)?,
                            revoked_ms: column(r, 6)?,
                        })
                    })
                    .collect()
            })
            .map_err(store_error)
    }

    fn insert_admin_token(
        &self,
        id: &str,
        hash: &str,
        now_ms: i64,
    ) -> Result<(), crate::StoreError> {
        let sql = format!(
            "INSERT INTO {} (id, hash, created_ms) VALUES ($1, $2, $3)",
            self.table("admin_tokens")
        );
        let (id, hash) = (id.to_string(), hash.to_string());
        self.pg
            .call(move |pool| async move {
                execute(&pool, &sql, &[&id, &hash, &now_ms]).await.map(drop)
            })
            .map_err(store_error)
    }

    fn admin_token_hashes(&self) -> Result<Vec<String>, crate::StoreError> {
        let sql = format!("SELECT hash FROM {}", self.table("admin_tokens"));
        self.pg
            .call(move |pool| async move {
                let rows = query(&pool, &sql, &[]).await?;
                rows.iter().map(|row| column(row, 0)).collect()
            })
            .map_err(store_error)
    }

    fn revoke_admin_tokens(&self) -> Result<usize, crate::StoreError> {
        let sql = format!("DELETE FROM {}", self.table("admin_tokens"));
        self.pg
            .call(move |pool| async move {
                let n = execute(&pool, &sql, &[]).await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
            .map_err(store_error)
    }

    fn prune_expired_sessions(
        &self,
        before_ms: i64,
        max: usize,
    ) -> Result<usize, crate::StoreError> {
        let sql = format!(
            "DELETE FROM {t} WHERE id IN (
                 SELECT id FROM {t} WHERE kind = $1 AND expires_ms <= $2
                 AND substr(label, 1, 5) = 'login' LIMIT $3)",
            t = self.table("credentials")
        );
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let kind = crate::credentials::Kind::Session.as_str();
        self.pg
            .call(move |pool| async move {
                let n = execute(&pool, &sql, &[&kind, &before_ms, &max]).await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
            .map_err(store_error)
    }

    fn cap_sessions(
        &self,
        subject: &str,
        keep: usize,
        now_ms: i64,
    ) -> Result<usize, crate::StoreError> {
        let sql = format!(
            "UPDATE {t} SET revoked_ms = $1 WHERE id IN (
                 SELECT id FROM {t}
                 WHERE kind = $2 AND subject = $3 AND revoked_ms IS NULL AND expires_ms > $1
                 AND substr(label, 1, 5) = 'login'
                 ORDER BY created_ms DESC, id DESC OFFSET $4)",
            t = self.table("credentials")
        );
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let kind = crate::credentials::Kind::Session.as_str();
        let subject = subject.to_string();
        self.pg
            .call(move |pool| async move {
                let n = execute(&pool, &sql, &[&now_ms, &kind, &subject, &keep]).await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
            .map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T04, T01 (outside review of issue 16): every pooled session is
    /// bounded, so a node frozen inside a transaction (SIGSTOP, a network
    /// that drops packets) cannot hold rows other nodes wait on: the
    /// server ends its session once it sits idle in a transaction, and no
    /// statement waits for a lock for ever. Against the local PostgreSQL.
    #[test]
    fn a_session_idle_in_a_transaction_is_ended_by_the_server() {
        let config = crate::kv::PgConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres"
                .to_string()
                .into(),
            schema: "bh_unused".into(),
        };
        let (runtime, pool) = connect(&config, 1).unwrap();
        runtime.block_on(async {
            let client = pool.get().await.unwrap();
            for (setting, bound) in [
                ("idle_in_transaction_session_timeout", "5s"),
                ("lock_timeout", "5s"),
            ] {
                let row = client
                    .query_one(&format!("SHOW {setting}"), &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), bound, "{setting}");
            }
            client.batch_execute("BEGIN").await.unwrap();
            tokio::time::sleep(IDLE_IN_TRANSACTION + Duration::from_secs(1)).await;
            let after = client.batch_execute("SELECT 1").await;
            assert!(after.is_err(), "the idle transaction was not ended");
        });
    }
}
