//! SQL stores on PostgreSQL (issue 16; T06, T16, T15, T05): one schema per
//! store, its tables from the store's migrations, and two database roles
//! per store, one per grant: the read role holds SELECT only, the
//! read-write role SELECT, INSERT, UPDATE and DELETE, neither any DDL.
//! Guest statements run on connections that log in *as* the grant's role,
//! so it is PostgreSQL that refuses a write under a read grant, or a
//! table of another store; a `SET ROLE` could be undone by the guest's own
//! `RESET ROLE`, a login cannot.
//!
//! - Role names are cluster-wide in PostgreSQL, so they carry a hash of the
//!   database, the app's schema and the store ([`role_names`]); their
//!   passwords are derived from the store's data key (wrapped by the
//!   master key, as ever), so every node computes the same one and none is
//!   stored; the server is given only a SCRAM verifier, so no statement
//!   log holds the password.
//! - Migrations run as the connecting role (the owner) in one transaction
//!   under the deployment's advisory lock, recorded with their SHA-256 in
//!   the app schema's `sql_migrations`, out of every guest role's reach;
//!   grants are renewed after them, so a new table is reachable at once.
//! - Before PostgreSQL sees a guest statement: the grant's declared
//!   statements, a data statement only ([`super::dialect`]), `?NNN`
//!   written as `$NNN`. While it runs: the call's deadline (the query is
//!   cancelled on the server), the row and byte limits (cancelled too),
//!   and a role-wide `statement_timeout` as the server's own backstop.
//!   Every connection is cleaned (`RESET ALL`, advisory locks released,
//!   temporary tables dropped) as soon as its statement ends, or closed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::Pool;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::dialect::{
    StatementKind, leading_word, refused_text, statement_kind, to_postgres_placeholders,
};
use super::{
    Access, Migration, MigrationReport, QueryError, QueryLimits, QueryResult, SqlStore,
    SqlStoreError, SqlValue, statement_allowed,
};
use crate::crypto::DataKey;
use crate::pg::{Pg, PgError};
use crate::pg_bound::MessageCounts;

/// Connections per role per node.
const POOL_SIZE: usize = 4;
/// Statements each connection keeps prepared.
const MAX_CACHED_STATEMENTS: usize = 64;
/// Sessions one role may hold across the deployment.
const CONNECTION_LIMIT: u32 = 64;
/// The server's own bound on one guest statement, whatever the node does.
const ROLE_STATEMENT_TIMEOUT: &str = "60s";
/// The temporary files one session of a grant role may write (sorts,
/// hashes spilling to disk): a read grant's query could otherwise fill the
/// database server's disk before its deadline (outside review of issue
/// 16: 1.4 GB in one call). Set only by a superuser; the node warns when
/// it could not.
pub const ROLE_TEMP_FILE_LIMIT: &str = "1GB";
/// How long a measured store size is trusted before a write measures
/// again (T05: the 1 GiB bound, checked at most this often per node).
const QUOTA_RECHECK: Duration = Duration::from_secs(1);
/// How long a measure that scanned every row is trusted (the allocated
/// space reached the bound; see [`Quota`]).
const QUOTA_RESCAN: Duration = Duration::from_secs(30);
/// The longest a count of a store's rows may run on the server.
const QUOTA_SCAN_LIMIT: Duration = Duration::from_secs(10);
/// How long a cancel request may take before the node gives up on it.
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// What a connection is cleaned with as soon as a guest statement ends
/// (deadpool's `Clean` without `SET SESSION AUTHORIZATION`, which a login
/// role that is not a superuser may not run): nothing of one call (a
/// setting, a lock, a temporary table) is left while it waits in the pool,
/// or seen by the next (outside review of issue 16). A connection that
/// cannot be cleaned is closed instead.
const CLEAN: &str = "CLOSE ALL; RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;";

/// One SQL store's schema and its two roles' connections.
pub struct PgSqlStore {
    name: String,
    pg: Arc<Pg>,
    read: Pool,
    write: Pool,
    quota: Quota,
    /// What either pool's connections read past the message bound
    /// ([`MAX_MESSAGE_BYTES`]) or past a large message.
    counts: Arc<MessageCounts>,
}

/// Most bytes of one message a store's connection reads (T05): twice the
/// result bound, so a row within the bound always fits, while a value
/// computed far past it is refused before the node holds it.
const MAX_MESSAGE_BYTES: u32 = 2 * super::MAX_RESULT_BYTES as u32;

/// The store's size bound on PostgreSQL (T05), as on the embedded
/// backend (1 GiB), measured by the node's own role at most every
/// `recheck`: first the space the database gave the schema's tables
/// (with indexes and TOAST; cheap, from the catalog); only when that
/// reaches `bytes`, the rows themselves (`pg_column_size` of each live
/// row: a scan), since PostgreSQL keeps a deleted row's space until it
/// vacuums and never gives a file's space back by itself; and twice
/// `bytes` allocated is full whatever the rows (dead row versions are
/// disk too). While full, INSERT, UPDATE and MERGE are refused ("the
/// store is full"); DELETE and reads still run, so a guest can make room.
/// A statement admitted before the bound writes until its deadline.
struct Quota {
    schema: String,
    bytes: i64,
    recheck: Duration,
    /// How long a measure that scanned every row is trusted.
    rescan: Duration,
    /// Whether the last measure found the store full, and when the next is
    /// due (ms since the epoch; 0: at once; `i64::MAX` while one runs).
    full: std::sync::atomic::AtomicBool,
    measured_ms: std::sync::atomic::AtomicI64,
    /// The last count of the rows (bytes), the allocated space then, and
    /// when it was taken (ms since the epoch; 0: never).
    scanned_live: std::sync::atomic::AtomicI64,
    scanned_allocated: std::sync::atomic::AtomicI64,
    scanned_ms: std::sync::atomic::AtomicI64,
}

impl Quota {
    /// Whether the store is full, measuring again once the last measure
    /// is due. The cheap measure (allocated space) first: under the bound,
    /// not full. At or over it, the store counts as full *while* its rows
    /// are scanned (third outside review: every write got in during a
    /// long scan), and the scan is bounded by [`QUOTA_SCAN_LIMIT`] on the
    /// server; a scan that fails or runs out keeps it full until the next
    /// one, 30 s on. A cheap measure that fails lets writes through (the
    /// database refuses them anyway if it is down) and is tried again a
    /// second later, not at the next write.
    fn full(&self, pg: &Pg) -> bool {
        use std::sync::atomic::Ordering;
        let now = crate::now_ms();
        let due = self.measured_ms.load(Ordering::Acquire);
        // One caller measures; the others go on the last measure.
        if now >= due
            && self
                .measured_ms
                .compare_exchange(due, i64::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let schema = self.schema.clone();
            match pg.call(move |pool| async move { allocated(&pool, &schema).await }) {
                Ok(allocated) if allocated < self.bytes => {
                    self.full.store(false, Ordering::Release)
                }
                // Dead row versions are not live rows, but they are disk:
                // twice the bound allocated is full whatever the rows
                // (second outside review: updates under a held snapshot
                // grew a store without end).
                Ok(allocated) if allocated >= self.bytes.saturating_mul(2) => {
                    self.full.store(true, Ordering::Release);
                }
                Ok(allocated) => self.judge_rows(pg, now, allocated),
                Err(e) => {
                    tracing::warn!(target: "bulkhead::sql", schema = %self.schema, error = %e, "cannot measure the SQL store's size; writes are let through");
                }
            }
            let next_ms = i64::try_from(self.recheck.as_millis()).unwrap_or(i64::MAX);
            self.measured_ms
                .store(now.saturating_add(next_ms), Ordering::Release);
        }
        self.full.load(Ordering::Acquire)
    }

    /// Between the bound and twice it allocated: judged by the rows. They
    /// are scanned at most every `rescan` (second outside review: a
    /// bloated store paid a scan per node per second); in between, the
    /// last count plus what the allocated space grew since stands for
    /// them, still checked every second (fourth outside review: a count
    /// trusted 30 s let every write in after a DELETE). The store counts
    /// as full while its rows are scanned, and after a scan that failed.
    fn judge_rows(&self, pg: &Pg, now: i64, allocated: i64) {
        use std::sync::atomic::Ordering;
        let rescan_ms = i64::try_from(self.rescan.as_millis()).unwrap_or(i64::MAX);
        let scanned_ms = self.scanned_ms.load(Ordering::Acquire);
        if scanned_ms != 0 && now.saturating_sub(scanned_ms) < rescan_ms {
            let grown = allocated.saturating_sub(self.scanned_allocated.load(Ordering::Acquire));
            let rows = self
                .scanned_live
                .load(Ordering::Acquire)
                .saturating_add(grown.max(0));
            self.full.store(rows >= self.bytes, Ordering::Release);
            return;
        }
        self.full.store(true, Ordering::Release);
        let schema = self.schema.clone();
        let live = match pg.call(move |pool| async move { live(&pool, &schema).await }) {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(target: "bulkhead::sql", schema = %self.schema, error = %e, "cannot count the SQL store's rows; it stays full until the next count");
                self.bytes
            }
        };
        self.scanned_live.store(live, Ordering::Release);
        self.scanned_allocated.store(allocated, Ordering::Release);
        self.scanned_ms.store(now.max(1), Ordering::Release);
        self.full.store(live >= self.bytes, Ordering::Release);
    }
}

/// Where a store lives and who may touch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSqlNames {
    pub schema: String,
    pub read_role: String,
    pub write_role: String,
}

/// The schema of store `store` of the app whose schema is `app_schema`,
/// and its roles, in database `database`: `a-z0-9_`, at most 63 bytes.
/// Schemas start `bs_`, which no app's schema (`bh_…`) does, and end in a
/// 96-bit hash of the app's schema and the store, so no store's schema
/// is another app's or another store's, whatever the names (outside
/// review of issue 16: a store named after another app's hashed schema
/// reached its tables). Role names are cluster-wide in PostgreSQL: theirs
/// hash the database too.
pub fn role_names(database: &str, app_schema: &str, store: &str) -> PgSqlNames {
    let hash = |parts: &[&str]| hex::encode(&Sha256::digest(parts.join("\0").as_bytes())[..12]);
    let clean: String = store
        .chars()
        .take(20)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let role = format!(
        "{}{}",
        role_prefix(database),
        hash(&[database, app_schema, store])
    );
    PgSqlNames {
        schema: format!("bs_{clean}_{}", hash(&[app_schema, store])),
        read_role: format!("{role}_read"),
        write_role: format!("{role}_write"),
    }
}

/// The start every SQL-store role of database `database` shares:
/// `bhs_` and a hash of the database's name (tests drop theirs by it).
pub fn role_prefix(database: &str) -> String {
    format!(
        "bhs_{}_",
        hex::encode(&Sha256::digest(database.as_bytes())[..4])
    )
}

/// The statement that drops every role made for database `database`'s SQL
/// stores (its grant roles and [`catalog_role`]): for an operator (or a
/// test) removing a deployment, run after the database is dropped.
pub fn drop_roles_statement(database: &str) -> String {
    let prefix = role_prefix(database);
    format!(
        "DO $$ DECLARE r text; BEGIN FOR r IN SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{prefix}') LOOP EXECUTE format('DROP ROLE %I', r); END LOOP; END $$"
    )
}

/// The role's password: derived from the store's data key, so no node
/// stores it and every node computes the same.
fn role_password(dek: &DataKey, role: &str) -> SecretString {
    let derived =
        zeroize::Zeroizing::new(dek.lookup_id(b"bulkhead postgres role v1", role.as_bytes()));
    SecretString::from(hex::encode(derived.as_slice()))
}

impl PgSqlStore {
    /// Create (if needed) the store's schema and roles, apply pending
    /// migrations, renew the grants, and open the roles' connections:
    /// what `serve` does at deploy.
    pub fn deploy(
        pg: Arc<Pg>,
        name: &str,
        dek: &DataKey,
        migrations: &[Migration],
    ) -> Result<(Self, MigrationReport, PgSqlNames), SqlStoreError> {
        let (report, names) = migrate(&pg, name, Some(dek), migrations, true)?;
        let fail = |e: PgError| SqlStoreError::Postgres {
            store: name.to_string(),
            message: e.0,
        };
        warn_unhardened(&pg, name, &names.read_role).map_err(fail)?;
        let counts = Arc::new(MessageCounts::default());
        let pool_as = |role: &str| {
            pg.pool_as(
                role,
                &role_password(dek, role),
                POOL_SIZE,
                MAX_MESSAGE_BYTES,
                counts.clone(),
            )
            .map_err(fail)
        };
        let read = pool_as(&names.read_role)?;
        let write = pool_as(&names.write_role)?;
        // Each role logs in now, not at a guest's first call (outside
        // review: under `cert` authentication they could not, and every
        // call failed while the node looked healthy).
        for (pool, role) in [(&read, &names.read_role), (&write, &names.write_role)] {
            let pool = pool.clone();
            pg.call(move |_| async move { pool.get().await.map(drop).map_err(PgError::of) })
                .map_err(|e| SqlStoreError::Postgres {
                    store: name.to_string(),
                    message: format!(
                        "its grant role {role} cannot log in ({e}). If the server refused the login: the node logs in as each SQL store's roles with a password, so the server's pg_hba.conf must let them use scram-sha-256 (with client certificates, `scram-sha-256 clientcert=verify-ca`: `cert` authentication would need a certificate naming each role); if it timed out, check that every host in the URL answers within its connect_timeout"
                    ),
                })?;
        }
        let store = Self {
            name: name.to_string(),
            pg,
            read,
            write,
            quota: Quota {
                schema: names.schema.clone(),
                bytes: super::MAX_DB_BYTES,
                recheck: QUOTA_RECHECK,
                rescan: QUOTA_RESCAN,
                full: Default::default(),
                scanned_live: Default::default(),
                scanned_allocated: Default::default(),
                scanned_ms: Default::default(),
                measured_ms: Default::default(),
            },
            counts,
        };
        Ok((store, report, names))
    }

    /// The same store bounded at `bytes`, measured before every write,
    /// its rows counted at most every `rescan`: for tests that cannot
    /// fill 1 GiB.
    #[doc(hidden)]
    pub fn with_quota(mut self, bytes: i64, rescan: Duration) -> Self {
        self.quota.bytes = bytes;
        self.quota.recheck = Duration::ZERO;
        self.quota.rescan = rescan;
        self
    }

    /// The store's schema, roles and migrations, without opening the
    /// roles' connections: what `migrate-state` needs before it copies an
    /// embedded store's rows in.
    pub fn prepare(
        pg: &Arc<Pg>,
        name: &str,
        dek: &DataKey,
        migrations: &[Migration],
    ) -> Result<PgSqlNames, SqlStoreError> {
        migrate(pg, name, Some(dek), migrations, true).map(|(_, names)| names)
    }

    /// The dry run of `bulkhead check`: everything `deploy` would do, in a
    /// transaction rolled back.
    pub fn check(
        pg: &Arc<Pg>,
        name: &str,
        migrations: &[Migration],
    ) -> Result<MigrationReport, SqlStoreError> {
        migrate(pg, name, None, migrations, false).map(|(report, _)| report)
    }
}

/// Warn about what `setup_statements` could not do as the node's role:
/// bound a grant role's temporary files, take PUBLIC's volatile functions
/// and TEMPORARY privilege away ([`harden_database`]).
fn warn_unhardened(pg: &Arc<Pg>, store: &str, role: &str) -> Result<(), PgError> {
    let role = role.to_string();
    let (bounded, functions, temporary): (bool, bool, bool) = pg.call(move |pool| async move {
        let client = pool.get().await.map_err(PgError::of)?;
        let row = client
            .query_one(
                "SELECT coalesce((SELECT $2 = ANY(rolconfig) FROM pg_roles WHERE rolname = $1), false), \
                        has_function_privilege('public', 'pg_catalog.lo_creat(integer)', 'EXECUTE'), \
                        has_database_privilege('public', current_database(), 'TEMPORARY')",
                &[&role, &format!("temp_file_limit={ROLE_TEMP_FILE_LIMIT}")],
            )
            .await
            .map_err(PgError::of)?;
        Ok((
            row.try_get(0).map_err(PgError::of)?,
            row.try_get(1).map_err(PgError::of)?,
            row.try_get(2).map_err(PgError::of)?,
        ))
    })?;
    if !bounded {
        tracing::warn!(
            target: "bulkhead::sql",
            store,
            "the SQL store's roles have no temp_file_limit (setting it needs a superuser): a guest's query can write temporary files until its deadline; set temp_file_limit in postgresql.conf"
        );
    }
    if functions {
        tracing::warn!(
            target: "bulkhead::sql",
            store,
            "PUBLIC may still execute the database's volatile functions (large objects, advisory locks, NOTIFY, set_config): only the statement check keeps a guest from them; deploy once as a superuser so the node revokes them"
        );
    }
    if temporary {
        tracing::warn!(
            target: "bulkhead::sql",
            store,
            "PUBLIC may still create temporary tables in the database: only the statement check keeps a guest from them; deploy once as a superuser so the node revokes it"
        );
    }
    Ok(())
}

/// The space the database gave the store `schema`'s tables, their
/// indexes and TOAST (from the catalog: cheap).
async fn allocated(pool: &Pool, schema: &str) -> Result<i64, PgError> {
    let rows = crate::pg::query(
        pool,
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
         WHERE c.relnamespace = $1::text::regnamespace AND c.relkind IN ('r', 'm')",
        &[&schema],
    )
    .await?;
    rows.first()
        .map_or(Ok(0), |row| crate::pg::column::<i64>(row, 0))
}

/// The bytes of the store `schema`'s live rows (`pg_column_size` of each:
/// a scan), in one transaction the server ends after
/// [`QUOTA_SCAN_LIMIT`].
async fn live(pool: &Pool, schema: &str) -> Result<i64, PgError> {
    let mut client = pool.get().await.map_err(PgError::of)?;
    let tx = client.transaction().await.map_err(PgError::of)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        QUOTA_SCAN_LIMIT.as_millis()
    ))
    .await
    .map_err(PgError::of)?;
    let tables = tx
        .query(
            "SELECT quote_ident(relname) FROM pg_class WHERE relnamespace = $1::text::regnamespace AND relkind IN ('r', 'm')",
            &[&schema],
        )
        .await
        .map_err(PgError::of)?;
    let mut live = 0i64;
    for table in &tables {
        let table: String = crate::pg::column(table, 0)?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM {schema}.{table} t"
                ),
                &[],
            )
            .await
            .map_err(PgError::of)?;
        live = live.saturating_add(crate::pg::column::<i64>(&row, 0)?);
    }
    tx.rollback().await.map_err(PgError::of)?;
    Ok(live)
}

/// The migration of one store in one transaction. `dek` absent (a dry
/// run): the roles' passwords are left as they are.
fn migrate(
    pg: &Arc<Pg>,
    store: &str,
    dek: Option<&DataKey>,
    migrations: &[Migration],
    commit: bool,
) -> Result<(MigrationReport, PgSqlNames), SqlStoreError> {
    let app_schema = pg.schema().to_string();
    let store_name = store.to_string();
    let migrations = migrations.to_vec();
    // Verifiers, not passwords, reach the server (its statement log).
    let verifiers = dek.map(|dek| {
        move |role: &str| {
            postgres_protocol::password::scram_sha_256(
                role_password(dek, role).expose_secret().as_bytes(),
            )
        }
    });
    let failed = |message: String| SqlStoreError::Postgres {
        store: store.to_string(),
        message,
    };
    // The database's name first: the roles are named after it.
    let database: String = pg
        .call(|pool| async move {
            let client = pool.get().await.map_err(PgError::of)?;
            let row = client
                .query_one("SELECT current_database()", &[])
                .await
                .map_err(PgError::of)?;
            row.try_get(0).map_err(PgError::of)
        })
        .map_err(|e| failed(e.0))?;
    let names = role_names(&database, &app_schema, store);
    let passwords = verifiers.map(|v| (v(&names.read_role), v(&names.write_role)));
    let setup = setup_statements(&app_schema, &names, store, &database, passwords.as_ref());
    let grants = grant_statements(&names);
    let schema = names.schema.clone();
    let outcome = pg
        .call(move |pool| async move {
            Ok(migrate_in(
                pool,
                &app_schema,
                &store_name,
                &schema,
                &setup,
                &grants,
                &migrations,
                commit,
            )
            .await)
        })
        .map_err(|e| failed(e.0))?;
    match outcome {
        Ok(report) => Ok((report, names)),
        Err(Step::Db(e)) => Err(failed(e.0)),
        Err(Step::Plan(e)) => Err(e),
        Err(Step::Migration(name, e)) => Err(SqlStoreError::MigrationFailed {
            store: store.to_string(),
            name,
            source: e.0.into(),
        }),
    }
}

/// Why a migration transaction stopped.
enum Step {
    Db(PgError),
    Plan(SqlStoreError),
    Migration(String, PgError),
}

/// A database error of the migration transaction itself.
fn db(e: impl std::error::Error) -> Step {
    Step::Db(PgError::of(e))
}

/// The migration transaction of store `store`: `setup`, the pending
/// migrations (unqualified names in the store's `schema`), each recorded
/// in the app schema's `sql_migrations`, then `grants`; committed, or
/// rolled back for a dry run.
#[allow(clippy::too_many_arguments)]
async fn migrate_in(
    pool: Pool,
    app_schema: &str,
    store: &str,
    schema: &str,
    setup: &str,
    grants: &str,
    migrations: &[Migration],
    commit: bool,
) -> Result<MigrationReport, Step> {
    let mut client = pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(setup).await.map_err(db)?;
    let applied: Vec<(String, String)> = tx
        .query(
            &format!(
                "SELECT name, sha256 FROM {app_schema}.sql_migrations WHERE store = $1 ORDER BY name"
            ),
            &[&store],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db)?;
    let plan = super::migrate::plan(store, &applied, migrations).map_err(Step::Plan)?;
    // Unqualified names in a migration are the store's own.
    tx.batch_execute(&format!("SET LOCAL search_path = {schema}"))
        .await
        .map_err(db)?;
    let record = format!(
        "INSERT INTO {app_schema}.sql_migrations (store, name, sha256, applied_ms) VALUES ($1, $2, $3, $4)"
    );
    for migration in &plan.pending {
        tx.batch_execute(&migration.sql)
            .await
            .map_err(|e| Step::Migration(migration.name.clone(), PgError::of(e)))?;
        tx.execute(
            &record,
            &[
                &store,
                &migration.name,
                &migration.sha256(),
                &crate::now_ms(),
            ],
        )
        .await
        .map_err(db)?;
    }
    tx.batch_execute(grants).await.map_err(db)?;
    if commit {
        tx.commit().await.map_err(db)?;
    } else {
        tx.rollback().await.map_err(db)?;
    }
    Ok(plan.report)
}

/// The schema, the migrations table, the roles and what they may never
/// do; idempotent. Names are generated (`a-z0-9_`), safe to splice.
fn setup_statements(
    app_schema: &str,
    names: &PgSqlNames,
    store: &str,
    database: &str,
    verifiers: Option<&(String, String)>,
) -> String {
    let PgSqlNames {
        schema,
        read_role,
        write_role,
    } = names;
    let mut sql = format!(
        r"
        {preamble}
        CREATE SCHEMA IF NOT EXISTS {schema};
        REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
        CREATE TABLE IF NOT EXISTS {app_schema}.sql_migrations (
            store TEXT NOT NULL,
            name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            applied_ms BIGINT NOT NULL,
            PRIMARY KEY (store, name)
        );
        ",
        preamble = crate::pg::migration_preamble()
    );
    sql.push_str(&harden_database(database));
    let idle = crate::pg::IDLE_IN_TRANSACTION.as_millis();
    // A database's name is the operator's: quoted as a literal.
    let quoted_database = database.replace('\'', "''");
    for (role, grant) in [(read_role, "read"), (write_role, "read-write")] {
        // The comment says what the role is to an operator listing roles;
        // store names are `a-z0-9_-`, nothing to escape.
        sql.push_str(&format!(
            r"
            DO $$ BEGIN
                CREATE ROLE {role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
            EXCEPTION WHEN duplicate_object THEN NULL;
            END $$;
            DO $$ BEGIN
                IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                    ALTER ROLE {role} WITH NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
                END IF;
            END $$;
            ALTER ROLE {role} WITH CONNECTION LIMIT {CONNECTION_LIMIT};
            ALTER ROLE {role} SET search_path = {schema};
            ALTER ROLE {role} SET statement_timeout = '{ROLE_STATEMENT_TIMEOUT}';
            ALTER ROLE {role} SET idle_in_transaction_session_timeout = '{idle}ms';
            DO $$ BEGIN
                ALTER ROLE {role} SET temp_file_limit = '{ROLE_TEMP_FILE_LIMIT}';
            EXCEPTION WHEN insufficient_privilege THEN NULL;
            END $$;
            COMMENT ON ROLE {role} IS 'Bulkhead: the {grant} grant of SQL store {store} (schema {schema}, database {quoted_database})';
            "
        ));
    }
    if let Some((read, write)) = verifiers {
        // SCRAM verifiers: `SCRAM-SHA-256$…` of base64 and `$:`, no quote.
        sql.push_str(&format!(
            "ALTER ROLE {read_role} WITH LOGIN PASSWORD '{read}'; ALTER ROLE {write_role} WITH LOGIN PASSWORD '{write}';"
        ));
    }
    sql
}

/// The volatile `pg_catalog` functions a guest's ordinary SQL needs, left
/// to PUBLIC: sequences (a `serial` column's default calls `nextval`; the
/// sequence's own privileges still decide), random values and the clock;
/// and `pg_advisory_unlock_all`, which [`CLEAN`] runs as the guest's role
/// (harmless: no guest can take an advisory lock).
const GUEST_VOLATILE_FUNCTIONS: &str = "'nextval', 'currval', 'lastval', 'setval', 'random', 'random_normal', 'gen_random_uuid', 'clock_timestamp', 'timeofday', 'pg_advisory_unlock_all'";

/// The `pg_catalog` relations beside the statistics views (`pg_stat…`)
/// that tell about the rest of the server, not the store: its sessions,
/// settings, roles, databases, tablespaces, locks and prepared
/// transactions. Taken from PUBLIC with the functions behind them, so a
/// store role's password, leaked, does not map the server (outside review
/// of issue 16: only the text scanner stopped `pg_stat_activity`).
/// With them (second outside review), the catalogs that map the database
/// beyond the store's tables: every relation and its privileges
/// (`pg_class`, `pg_tables`, …), dependencies on roles (`pg_shdepend`
/// names every role of the server), comments and row-security policies.
/// A driver reading a statement's types needs only `pg_type`,
/// `pg_namespace`, `pg_range`, `pg_enum` and `pg_attribute`, left.
const SERVER_RELATIONS: &str = "'pg_settings', 'pg_file_settings', 'pg_roles', 'pg_user', 'pg_group', 'pg_auth_members', 'pg_database', 'pg_db_role_setting', 'pg_shdescription', 'pg_tablespace', 'pg_locks', 'pg_prepared_xacts', 'pg_replication_slots', 'pg_replication_origin_status', 'pg_class', 'pg_tables', 'pg_views', 'pg_matviews', 'pg_indexes', 'pg_sequences', 'pg_shdepend', 'pg_depend', 'pg_description', 'pg_policy', 'pg_policies', 'pg_default_acl', 'pg_init_privs'";

/// Functions of any volatility that tell about the server rather than
/// the store (second outside review): its settings (`current_setting`:
/// certificate paths, listen addresses), which databases exist
/// (`has_database_privilege` answers a guessed name), its and the
/// client's addresses, the databases in a tablespace, and other
/// sessions' transaction ids.
const SERVER_FUNCTIONS: &str = "'current_setting', 'has_database_privilege', 'inet_server_addr', 'inet_server_port', 'inet_client_addr', 'inet_client_port', 'pg_tablespace_databases', 'pg_current_snapshot'";

/// The role that keeps, in database `database`, what [`harden_database`]
/// takes from PUBLIC: every role there but the SQL stores' is a member.
/// Named with the stores' roles' prefix ([`role_prefix`]).
pub fn catalog_role(database: &str) -> String {
    format!("{}catalog", role_prefix(database))
}

/// What no SQL-store role may do in the whole database, enforced by
/// PostgreSQL's own privileges rather than by reading the statement (T16,
/// T05; five outside reviews of issue 16 each got one function past the
/// text scanner in `dialect.rs`, which stays as a second reading): PUBLIC
/// loses EXECUTE on every volatile `pg_catalog` function but
/// [`GUEST_VOLATILE_FUNCTIONS`] (large objects, advisory locks, NOTIFY,
/// `set_config`, `setseed`, WAL messages, signalling other sessions, …),
/// on the stable ones that assign a transaction id (`txid_current`,
/// `pg_current_xact_id`: a WAL write), the `…_to_xml…` family and those
/// behind the statistics views and `pg_settings`, and
/// [`SERVER_FUNCTIONS`]; SELECT on the statistics views and
/// [`SERVER_RELATIONS`]; and the database's TEMPORARY privilege. [`catalog_role`] is granted them back,
/// and every other role of the cluster (the node's, the owner's, an
/// operator's, the key-value call roles) is made its member, at every
/// deploy: so only the stores' roles, and roles created since, lose them.
/// Revoking from PUBLIC needs a superuser (the functions are the
/// bootstrap superuser's): for any other role nothing is done and the
/// node warns at deploy ([`PgSqlStore::deploy`]). Trigger, handler and
/// `internal` functions are not called by name and keep their privileges.
fn harden_database(database: &str) -> String {
    let catalog = catalog_role(database);
    format!(
        r"
    DO $$
    DECLARE
        f regprocedure;
        r regclass;
        member name;
    BEGIN
        IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            RETURN;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{catalog}') THEN
            CREATE ROLE {catalog} NOLOGIN;
            COMMENT ON ROLE {catalog} IS 'Bulkhead: keeps the catalog functions and TEMPORARY privilege taken from PUBLIC so that SQL stores'' roles lack them; GRANT it to a role that needs them';
        END IF;
        FOR member IN
            SELECT r.rolname FROM pg_roles r
            WHERE r.rolname NOT LIKE 'bhs\_%' AND r.rolname NOT LIKE 'pg\_%' AND NOT r.rolsuper
              AND NOT pg_has_role(r.rolname, '{catalog}', 'MEMBER')
        LOOP
            EXECUTE format('GRANT {catalog} TO %I', member);
        END LOOP;
        FOR f IN
            SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = 'pg_catalog'::regnamespace
              AND (p.provolatile = 'v' OR p.proname IN ({SERVER_FUNCTIONS})
                   OR (p.provolatile = 's' AND (p.proname LIKE 'txid\_%'
                       OR p.proname LIKE 'pg\_current\_xact\_id%' OR p.proname LIKE '%\_to\_xml%'
                       OR p.proname LIKE 'pg\_stat\_get\_%' OR p.proname = 'pg_show_all_settings')))
              AND p.prokind IN ('f', 'p')
              AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype,
                  'internal'::regtype, 'language_handler'::regtype, 'fdw_handler'::regtype,
                  'index_am_handler'::regtype, 'tsm_handler'::regtype, 'table_am_handler'::regtype)
              AND p.proname NOT IN ({GUEST_VOLATILE_FUNCTIONS})
              AND has_function_privilege('public', p.oid, 'EXECUTE')
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO {catalog}', f);
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        END LOOP;
        FOR r IN
            SELECT c.oid::regclass FROM pg_class c
            WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind IN ('r', 'v')
              AND (c.relname LIKE 'pg\_stat%' OR c.relname IN ({SERVER_RELATIONS}))
              AND has_table_privilege('public', c.oid, 'SELECT')
        LOOP
            EXECUTE format('GRANT SELECT ON %s TO {catalog}', r);
            EXECUTE format('REVOKE SELECT ON %s FROM PUBLIC', r);
        END LOOP;
        IF has_database_privilege('public', current_database(), 'TEMPORARY') THEN
            EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO {catalog}', current_database());
            EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
        END IF;
    END $$;
    "
    )
}

/// What each role may do on the store's tables and sequences, renewed
/// after every migration (T16: SELECT only for a read grant).
fn grant_statements(names: &PgSqlNames) -> String {
    let PgSqlNames {
        schema,
        read_role,
        write_role,
    } = names;
    format!(
        r"
        GRANT USAGE ON SCHEMA {schema} TO {read_role}, {write_role};
        REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {read_role}, {write_role};
        GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {read_role};
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {write_role};
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {read_role}, {write_role};
        GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {read_role};
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {write_role};
        "
    )
}

impl SqlStore for PgSqlStore {
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
        let kind = statement_kind(statement).map_err(QueryError::Denied)?;
        let text = to_postgres_placeholders(statement)
            .map_err(|why| QueryError::Invalid(why.to_string()))?;
        // Checked as PostgreSQL will read it: after the rewrite.
        if let Some(why) = refused_text(&text) {
            return Err(QueryError::Denied(why));
        }
        if access == Access::ReadWrite
            && kind == StatementKind::Write
            // A DELETE frees room: allowed in a full store.
            && leading_word(statement) != "DELETE"
            && self.quota.full(&self.pg)
        {
            return Err(QueryError::Limit("the store is full".into()));
        }
        let pool = match access {
            Access::Read => self.read.clone(),
            Access::ReadWrite => self.write.clone(),
        };
        let params = params.to_vec();
        let limits = limits.clone();
        let (config, tls) = self.pg.config();
        let reach = Reach {
            config: config.clone(),
            tls: tls.cloned(),
            counts: self.counts.clone(),
        };
        let store = self.name.clone();
        let outcome = self.pg.call(move |_| async move {
            Ok(run(&pool, &reach, &store, access, kind, &text, params, &limits).await)
        });
        match outcome {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(target: "bulkhead::sql", store = %self.name, error = %e, "SQL store on PostgreSQL failed");
                Err(QueryError::Internal)
            }
        }
    }
}

/// What a call needs of the database beside its pool: where to send a
/// cancel, and what the store's connections read past the message bound
/// or a large message.
struct Reach {
    config: tokio_postgres::Config,
    tls: Option<crate::pg_tls::MakeRustlsConnect>,
    counts: Arc<MessageCounts>,
}

/// One guest statement on a connection of the grant's role.
#[allow(clippy::too_many_arguments)]
async fn run(
    pool: &Pool,
    reach: &Reach,
    store: &str,
    access: Access,
    kind: StatementKind,
    text: &str,
    params: Vec<SqlValue>,
    limits: &QueryLimits,
) -> Result<QueryResult, QueryError> {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(target: "bulkhead::sql", store, error = %PgError::of(e), "cannot reach the SQL store's database");
            return Err(QueryError::Unavailable);
        }
    };
    let cancel = client.cancel_token();
    let (over, large) = (
        reach.counts.over.load(Ordering::Relaxed),
        reach.counts.large.load(Ordering::Relaxed),
    );
    // The connection was lost because this statement's answer was over
    // the message bound (not the database failing).
    let overflowed = || reach.counts.over.load(Ordering::Relaxed) != over;
    let fail = |e: &tokio_postgres::Error| classify(store, access, kind, e, overflowed());
    let deadline = tokio::time::Instant::from_std(limits.deadline);
    let work = async {
        // Prepared once per connection (a round trip saved on every later
        // call); the cache is emptied past a bound, so a guest sending ever
        // new statements cannot grow it.
        if client.statement_cache.size() >= MAX_CACHED_STATEMENTS {
            client.statement_cache.clear();
        }
        let prepared = client.prepare_cached(text).await.map_err(|e| fail(&e))?;
        for column in prepared.columns() {
            if !readable(column.type_()) {
                return Err(QueryError::Invalid(format!(
                    "column `{}` is of type {}, which Bulkhead does not pass to guests; cast it in the statement (::text, ::bigint, ::float8)",
                    column.name(),
                    column.type_().name()
                )));
            }
        }
        let types = prepared.params();
        if types.len() != params.len() {
            return Err(QueryError::Invalid(format!(
                "the statement takes {} parameter(s), the call gave {}",
                types.len(),
                params.len()
            )));
        }
        for (i, (value, ty)) in params.iter().zip(types).enumerate() {
            if matches!(value, SqlValue::Text(text) if text.contains('\0')) {
                return Err(QueryError::Invalid(format!(
                    "parameter {} holds a NUL byte, which PostgreSQL text cannot",
                    i + 1
                )));
            }
            if !binds(value, ty) {
                return Err(QueryError::Invalid(format!(
                    "parameter {} cannot be {} (the statement wants {})",
                    i + 1,
                    value.kind(),
                    ty.name()
                )));
            }
        }
        let bound: Vec<Param<'_>> = params.iter().map(Param).collect();
        let rows = client
            .query_raw(&prepared, bound.iter())
            .await
            .map_err(|e| fail(&e))?;
        let mut out = QueryResult {
            columns: prepared
                .columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
            rows: Vec::new(),
            changes: 0,
            write: kind == StatementKind::Write,
        };
        let mut bytes = 0usize;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows)
            .await
            .map_err(|e| fail(&e))?
        {
            limits.room_for_row(&out)?;
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let value = value_of(&row, i).map_err(|e| fail(&e))?;
                bytes = bytes.saturating_add(value.size());
                values.push(value);
            }
            limits.within_bytes(bytes)?;
            out.rows.push(values);
        }
        if kind == StatementKind::Write {
            out.changes = rows.rows_affected().unwrap_or(0);
        }
        Ok(out)
    };
    let result = match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(QueryError::Limit("the call's deadline passed".into())),
    };
    // A statement cut short (deadline, a limit) may still run on the
    // server: stop it there too (T05).
    let cut_short = matches!(result, Err(QueryError::Limit(_)));
    // A connection already closed (the node ended it at a message over the
    // bound) needs no cancel: the server's session ends failing to send.
    if cut_short && !client.is_closed() {
        let cancelled = tokio::time::timeout(
            CANCEL_WAIT,
            crate::pg_bound::cancel(&cancel, &reach.config, reach.tls.as_ref()),
        )
        .await;
        if !matches!(cancelled, Ok(Ok(()))) {
            tracing::warn!(target: "bulkhead::sql", store, "could not cancel a guest statement cut short; the role's statement_timeout ends it");
        }
    }
    // Cleaned before it goes back to the pool, or closed: its session's
    // locks and temporary tables go with it, and so does the read buffer
    // a large answer grew (outside review: each pooled connection kept
    // up to 8 MiB). The answer does not wait.
    let grew = reach.counts.large.load(Ordering::Relaxed) != large;
    if cut_short || grew || matches!(result, Err(QueryError::Unavailable)) {
        drop(deadpool_postgres::Object::take(client));
    } else {
        tokio::spawn(async move {
            if client.batch_execute(CLEAN).await.is_err() {
                drop(deadpool_postgres::Object::take(client));
            }
        });
    }
    result
}

/// Why PostgreSQL refused or failed a guest statement. The guest gets the
/// server's message (its own statement's fault), never its detail, which
/// can quote row values; failures of the database itself go to the log.
fn classify(
    store: &str,
    access: Access,
    kind: StatementKind,
    e: &tokio_postgres::Error,
    overflowed: bool,
) -> QueryError {
    if overflowed && e.as_db_error().is_none() {
        // The node ended the connection: no failure of the database to
        // log (outside review: each overflow logged one, at a guest's
        // will). Another call's overflow at the same moment reads the same
        // way: both are refusals.
        return QueryError::Limit(format!(
            "a result message over {MAX_MESSAGE_BYTES} bytes (a value far past the result bound)"
        ));
    }
    let Some(db) = e.as_db_error() else {
        tracing::error!(target: "bulkhead::sql", store, error = %PgError::of(e), "SQL store on PostgreSQL failed");
        return QueryError::Unavailable;
    };
    let code = db.code();
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return QueryError::Denied(if access == Access::Read && kind == StatementKind::Write {
            "a write under a read grant (the database refused it)"
        } else {
            "the database refused it (a table outside the store, or an operation the grant's role may not do)"
        });
    }
    if *code == SqlState::QUERY_CANCELED {
        return QueryError::Limit("the call's deadline passed".into());
    }
    // The role's temp_file_limit: the statement's bound, not the
    // database failing (fifth outside review: an ERROR log and "the
    // store is unavailable" at a guest's will).
    if *code == SqlState::CONFIGURATION_LIMIT_EXCEEDED {
        return QueryError::Limit("the statement's temporary files reached their bound".into());
    }
    if *code == SqlState::PROGRAM_LIMIT_EXCEEDED || *code == SqlState::DISK_FULL {
        return QueryError::Limit("the store is full or a value is too big".into());
    }
    // Class 08 (connection), 53 (resources), 57 (operator), 58 (system), XX.
    let class = &code.code()[..2.min(code.code().len())];
    if matches!(class, "08" | "53" | "57" | "58" | "XX") {
        tracing::error!(target: "bulkhead::sql", store, sqlstate = code.code(), error = %db.message(), "SQL store on PostgreSQL failed");
        return QueryError::Unavailable;
    }
    // A wrong object type names the object: a relation's number given
    // to `currval`/`nextval`/`setval` (which guests keep) came back as
    // `"secrets" is not a sequence` (fifth outside review).
    if *code == SqlState::WRONG_OBJECT_TYPE {
        return QueryError::Invalid(
            "an object of the wrong type for this statement (name the store's own sequences and tables)".into(),
        );
    }
    // The server's message may quote a value the statement computed
    // (`invalid input syntax for type integer: "…"`): cut to a bound.
    let message = db.message();
    let cut = &message[..message.floor_char_boundary(MAX_ERROR_MESSAGE)];
    if cut.len() < message.len() {
        return QueryError::Invalid(format!("{cut}… (cut at {MAX_ERROR_MESSAGE} bytes)"));
    }
    QueryError::Invalid(message.to_string())
}

/// The longest server message a guest gets whole.
const MAX_ERROR_MESSAGE: usize = 1024;

/// Types a result column may have: what maps onto the guest's values.
fn readable(ty: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::BOOL,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
        Type::BYTEA,
    ]
    .contains(ty)
}

fn value_of(row: &tokio_postgres::Row, i: usize) -> Result<SqlValue, tokio_postgres::Error> {
    let ty = row.columns()[i].type_().clone();
    let value = match ty {
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(SqlValue::Integer),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|v| SqlValue::Real(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(SqlValue::Real),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(SqlValue::Blob),
        _ => row.try_get::<_, Option<String>>(i)?.map(SqlValue::Text),
    };
    Ok(value.unwrap_or(SqlValue::Null))
}

/// Whether a guest value can bind to a parameter PostgreSQL typed `ty`.
fn binds(value: &SqlValue, ty: &Type) -> bool {
    match value {
        SqlValue::Null => true,
        SqlValue::Integer(v) => match *ty {
            Type::INT8 | Type::FLOAT8 | Type::FLOAT4 | Type::BOOL => true,
            Type::INT4 => i32::try_from(*v).is_ok(),
            Type::INT2 => i16::try_from(*v).is_ok(),
            _ => false,
        },
        SqlValue::Real(_) => matches!(*ty, Type::FLOAT8 | Type::FLOAT4),
        SqlValue::Text(_) => matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        ),
        SqlValue::Blob(_) => *ty == Type::BYTEA,
    }
}

/// A guest value bound to a parameter already checked by [`binds`].
#[derive(Debug)]
struct Param<'a>(&'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Integer(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                // Guest integers as reals: what SQLite would do.
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Real(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Text(v) => v.as_str().to_sql(ty, out),
            SqlValue::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
