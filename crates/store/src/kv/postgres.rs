//! The PostgreSQL key-value backend (issue 16; T13, T15, T20): the sealed
//! records of one app environment in the table `kv` of its own schema, so
//! that every node of a deployment reads and writes the same records.
//!
//! - Values and keys arrive sealed by [`super::Kv`] with the node's data
//!   keys: the database never holds a plaintext key or value.
//! - The subject is part of every key, fixed by the host (T13), and is
//!   enforced twice. Every query names it; and every operation on behalf of
//!   a call runs, inside its own transaction, as the schema's *call role*
//!   with the subject set as a transaction-local setting
//!   (`bulkhead.subject`). Row-level security lets that role see and write
//!   only rows whose subject is the setting's, so a query that lost its
//!   subject predicate (a bug here, not the guest: every value is a bound
//!   parameter) still returns nothing of another subject's; the database
//!   itself refuses. The setting holds `s:` + subject: once any
//!   transaction of a session has set it, PostgreSQL returns `''` for it
//!   (not NULL) outside one, and `''` is the app-wide stores' subject; the
//!   prefix makes "not set" match no row at all.
//! - The operator's cross-subject work (sweep, erase, export, counts) runs
//!   as the connecting role, which owns the table and so is not subject to
//!   the policies (they are not FORCEd). That role also creates the schema,
//!   table and call role (DDL only here, at open).
//! - Expiry: reads filter on `expires_ms`; [`KvBackend::sweep`] deletes.
//! - The trait is blocking (the runtime calls it off its async threads):
//!   the backend drives its connections on a runtime of its own, one
//!   worker thread, and each call waits for its result there.

use deadpool_postgres::{GenericClient, Pool, Transaction};
use tokio_postgres::types::ToSql;

use super::{Change, KeyPage, KvBackend, KvError, RecordKey, Sealed, StoredRecord};

/// Attempts of one [`KvBackend::update`] that lost the race to create
/// its record (another node inserted it first).
const UPDATE_ATTEMPTS: usize = 8;

/// Longest schema name (PostgreSQL's identifiers are at most 63 bytes;
/// the call role's name adds `_kv_call`).
const MAX_SCHEMA: usize = 50;

/// Most connections one node keeps to the database for key-value work.
const POOL_SIZE: usize = 16;

/// Where a PostgreSQL backend keeps an app environment's state.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://…`; may carry a password, so it is never printed.
    pub url: secrecy::SecretString,
    /// The app environment's schema: lowercase letters, digits and `_`,
    /// starting with a letter.
    pub schema: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &"[REDACTED]")
            .field("schema", &self.schema)
            .finish()
    }
}

/// The schema name is spliced into DDL and queries (identifiers cannot be
/// bound parameters): only a closed alphabet is accepted.
pub fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= MAX_SCHEMA
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn backend_error(e: impl std::error::Error + Send + Sync + 'static) -> KvError {
    KvError::Backend(Box::new(e))
}

/// The key-value records of one app environment in PostgreSQL.
pub struct PostgresKv {
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// Statements with the schema and role names in place.
    sql: Statements,
}

struct Statements {
    /// `SET LOCAL ROLE` to the call role (a role name is no parameter: it
    /// is built from the validated schema name).
    set_role: String,
    get: String,
    put: String,
    delete: String,
    list: String,
    lock: String,
    insert_new: String,
    records: String,
    sweep: String,
    subject_rows: String,
    subject_stores: String,
    subjects: String,
    delete_subject: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let t = format!("{schema}.kv");
        Self {
            set_role: format!("SET LOCAL ROLE {schema}_kv_call"),
            get: format!(
                "SELECT value_sealed FROM {t} WHERE store = $1 AND subject = $2 AND key_id = $3 AND (expires_ms IS NULL OR expires_ms > $4)"
            ),
            put: format!(
                "INSERT INTO {t} (store, subject, key_id, key_sealed, value_sealed, updated_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (store, subject, key_id) DO UPDATE SET key_sealed = excluded.key_sealed, value_sealed = excluded.value_sealed, updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms"
            ),
            delete: format!("DELETE FROM {t} WHERE store = $1 AND subject = $2 AND key_id = $3"),
            list: format!(
                "SELECT key_id, key_sealed FROM {t} WHERE store = $1 AND subject = $2 AND (expires_ms IS NULL OR expires_ms > $3)
                 ORDER BY key_id LIMIT $4 OFFSET $5"
            ),
            lock: format!(
                "SELECT value_sealed, expires_ms FROM {t} WHERE store = $1 AND subject = $2 AND key_id = $3 FOR UPDATE"
            ),
            insert_new: format!(
                "INSERT INTO {t} (store, subject, key_id, key_sealed, value_sealed, updated_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (store, subject, key_id) DO NOTHING"
            ),
            records: format!(
                "SELECT key_id, key_sealed, value_sealed, updated_ms, expires_ms FROM {t}
                 WHERE store = $1 AND subject = $2 AND (expires_ms IS NULL OR expires_ms > $3) ORDER BY key_id"
            ),
            sweep: format!("DELETE FROM {t} WHERE expires_ms IS NOT NULL AND expires_ms <= $1"),
            subject_rows: format!("SELECT count(*) FROM {t} WHERE subject = $1"),
            subject_stores: format!(
                "SELECT DISTINCT store FROM {t} WHERE subject = $1 ORDER BY store"
            ),
            subjects: format!("SELECT DISTINCT subject FROM {t} WHERE subject <> ''"),
            delete_subject: format!("DELETE FROM {t} WHERE subject = $1"),
        }
    }

    /// The schema, table, call role and its policy; idempotent. Run by
    /// the connecting role, which owns them.
    fn migration(schema: &str) -> String {
        let role = format!("{schema}_kv_call");
        // One implicit transaction holding the advisory lock: nodes that
        // start together take turns instead of racing the DDL.
        let preamble = crate::pg::migration_preamble();
        format!(
            r"
            {preamble}
            CREATE SCHEMA IF NOT EXISTS {schema};
            CREATE TABLE IF NOT EXISTS {schema}.kv (
                store TEXT NOT NULL,
                subject TEXT NOT NULL,
                key_id BYTEA NOT NULL,
                key_sealed BYTEA NOT NULL,
                value_sealed BYTEA NOT NULL,
                updated_ms BIGINT NOT NULL,
                expires_ms BIGINT,
                PRIMARY KEY (store, subject, key_id)
            );
            CREATE INDEX IF NOT EXISTS kv_by_expiry ON {schema}.kv (expires_ms) WHERE expires_ms IS NOT NULL;
            CREATE INDEX IF NOT EXISTS kv_by_subject ON {schema}.kv (subject);
            DO $$ BEGIN
                CREATE ROLE {role} NOLOGIN;
            EXCEPTION WHEN duplicate_object THEN NULL;
            END $$;
            GRANT {role} TO CURRENT_USER;
            GRANT USAGE ON SCHEMA {schema} TO {role};
            GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.kv TO {role};
            ALTER TABLE {schema}.kv ENABLE ROW LEVEL SECURITY;
            DROP POLICY IF EXISTS by_subject ON {schema}.kv;
            CREATE POLICY by_subject ON {schema}.kv TO {role}
                USING ('s:' || subject = current_setting('bulkhead.subject', true))
                WITH CHECK ('s:' || subject = current_setting('bulkhead.subject', true));
            "
        )
    }
}

impl PostgresKv {
    /// Connect, and create the schema, table, call role and policy if
    /// they are missing.
    pub fn open(config: &PgConfig) -> Result<Self, KvError> {
        let (runtime, pool) =
            crate::pg::connect(config, POOL_SIZE).map_err(|e| KvError::Backend(e.0.into()))?;
        let backend = Self {
            runtime: Some(runtime),
            pool,
            sql: Statements::new(&config.schema),
        };
        let migration = Statements::migration(&config.schema);
        let call_role = format!("{}_kv_call", config.schema);
        backend.run(async |pool: &Pool| {
            let client = pool.get().await.map_err(backend_error)?;
            client
                .batch_execute(&migration)
                .await
                .map_err(backend_error)?;
            // The policy reads the subject with `current_setting`, which
            // a database hardened for SQL stores keeps for its catalog
            // role's members: a call role made after that joins them
            // (a second app's, first started after the hardening). A node
            // that may not grant it leaves it to the next SQL-store deploy.
            let database: String = client
                .query_one("SELECT current_database()", &[])
                .await
                .map_err(backend_error)?
                .get(0);
            let catalog = crate::sql::postgres::catalog_role(&database);
            client
                .batch_execute(&format!(
                    "DO $$ BEGIN
                        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{catalog}')
                           AND NOT pg_has_role('{call_role}', '{catalog}', 'MEMBER') THEN
                            GRANT {catalog} TO {call_role};
                        END IF;
                    EXCEPTION WHEN insufficient_privilege THEN NULL;
                    END $$;"
                ))
                .await
                .map_err(backend_error)
        })?;
        Ok(backend)
    }

    /// Run `work` on the backend's runtime and wait for it.
    fn run<T>(&self, work: impl AsyncFnOnce(&Pool) -> Result<T, KvError>) -> Result<T, KvError> {
        let Some(runtime) = &self.runtime else {
            return Err(KvError::Backend("the PostgreSQL backend is closed".into()));
        };
        runtime.handle().block_on(work(&self.pool))
    }

    /// Run `work` in a transaction as the call role, confined to `subject`
    /// by row-level security.
    fn as_subject<T>(
        &self,
        subject: &str,
        work: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let role = &self.sql.set_role;
        self.run(async |pool| {
            let mut client = pool.get().await.map_err(backend_error)?;
            let tx = client.transaction().await.map_err(backend_error)?;
            confine(&tx, role, subject).await?;
            let out = work(&tx).await?;
            tx.commit().await.map_err(backend_error)?;
            Ok(out)
        })
    }

    /// One statement as the connecting role (the operator's work).
    fn as_owner<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.run(async |pool| {
            let client = pool.get().await.map_err(backend_error)?;
            work(&client).await
        })
    }
}

/// Become the call role for the rest of the transaction, seeing only
/// `subject`'s rows.
async fn confine(tx: &Transaction<'_>, set_role: &str, subject: &str) -> Result<(), KvError> {
    let scope = format!("s:{subject}");
    let params: [&(dyn ToSql + Sync); 1] = [&scope];
    let set_config = tx
        .prepare_cached("SELECT set_config('bulkhead.subject', $1, true)")
        .await
        .map_err(backend_error)?;
    // Sent together (pipelined): one round trip for both. The subject
    // first, while still the node's role: on a database whose SQL stores
    // took `set_config` from PUBLIC (`sql::postgres`), the call role may
    // not call it (`join!` polls, and so sends, in order).
    let (set_subject, set_role) =
        tokio::join!(tx.execute(&set_config, &params), tx.batch_execute(set_role));
    set_subject.map_err(backend_error)?;
    set_role.map_err(backend_error)?;
    Ok(())
}

/// `statement`, prepared once per connection (a round trip saved on
/// every later use).
async fn query<C: GenericClient>(
    client: &C,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, KvError> {
    let prepared = client
        .prepare_cached(statement)
        .await
        .map_err(backend_error)?;
    client.query(&prepared, params).await.map_err(backend_error)
}

async fn execute<C: GenericClient>(
    client: &C,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, KvError> {
    let prepared = client
        .prepare_cached(statement)
        .await
        .map_err(backend_error)?;
    client
        .execute(&prepared, params)
        .await
        .map_err(backend_error)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    index: usize,
) -> Result<T, KvError> {
    row.try_get(index).map_err(backend_error)
}

fn i64_of(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn put_params<'a>(key: &'a RecordKey<'a>, record: &'a Sealed) -> [&'a (dyn ToSql + Sync); 7] {
    [
        &key.store,
        &key.subject,
        &key.key_id,
        &record.key_sealed,
        &record.value_sealed,
        &record.updated_ms,
        &record.expires_ms,
    ]
}

impl KvBackend for PostgresKv {
    fn get(&self, key: &RecordKey<'_>, now_ms: i64) -> Result<Option<Vec<u8>>, KvError> {
        let statement = &self.sql.get;
        self.as_subject(key.subject, async |tx| {
            let rows = query(
                tx,
                statement,
                &[&key.store, &key.subject, &key.key_id, &now_ms],
            )
            .await?;
            rows.first().map(|row| get(row, 0)).transpose()
        })
    }

    fn put(&self, key: &RecordKey<'_>, record: &Sealed) -> Result<(), KvError> {
        let statement = &self.sql.put;
        self.as_subject(key.subject, async |tx| {
            execute(tx, statement, &put_params(key, record))
                .await
                .map(drop)
        })
    }

    fn delete(&self, key: &RecordKey<'_>) -> Result<(), KvError> {
        let statement = &self.sql.delete;
        self.as_subject(key.subject, async |tx| {
            execute(tx, statement, &[&key.store, &key.subject, &key.key_id])
                .await
                .map(drop)
        })
    }

    fn list(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
        limit: usize,
        offset: u64,
    ) -> Result<KeyPage, KvError> {
        let statement = &self.sql.list;
        let (limit, offset) = (i64_of(limit), i64_of(offset));
        self.as_subject(subject, async |tx| {
            let rows = query(tx, statement, &[&store, &subject, &now_ms, &limit, &offset]).await?;
            rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
        })
    }

    fn update(
        &self,
        key: &RecordKey<'_>,
        now_ms: i64,
        change: &mut Change<'_>,
    ) -> Result<(), KvError> {
        // An existing row (live or expired) is locked FOR UPDATE, so
        // writers on every node take turns. A missing one cannot be
        // locked: the insert says whether another writer created it in
        // the meantime, and then the whole step runs again on its value.
        for _ in 0..UPDATE_ATTEMPTS {
            let done = self.as_subject(key.subject, async |tx| {
                let rows =
                    query(tx, &self.sql.lock, &[&key.store, &key.subject, &key.key_id]).await?;
                let existing = rows.first();
                let live = match existing {
                    Some(row) => {
                        let expires: Option<i64> = get(row, 1)?;
                        match expires {
                            Some(at) if at <= now_ms => None,
                            _ => Some(get::<Vec<u8>>(row, 0)?),
                        }
                    }
                    None => None,
                };
                let record = change(live.as_deref())?;
                let statement = match existing {
                    Some(_) => &self.sql.put,
                    None => &self.sql.insert_new,
                };
                Ok(execute(tx, statement, &put_params(key, &record)).await? == 1)
            })?;
            if done {
                return Ok(());
            }
        }
        Err(KvError::Backend(
            "a counter kept changing under this update; try again".into(),
        ))
    }

    fn records(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Vec<StoredRecord>, KvError> {
        let statement = &self.sql.records;
        self.as_owner(async |client| {
            let rows = query(client, statement, &[&store, &subject, &now_ms]).await?;
            rows.iter()
                .map(|r| {
                    Ok(StoredRecord {
                        key_id: get(r, 0)?,
                        record: Sealed {
                            key_sealed: get(r, 1)?,
                            value_sealed: get(r, 2)?,
                            updated_ms: get(r, 3)?,
                            expires_ms: get(r, 4)?,
                        },
                    })
                })
                .collect()
        })
    }

    fn sweep(&self, now_ms: i64) -> Result<usize, KvError> {
        let statement = &self.sql.sweep;
        self.as_owner(async |client| {
            let n = execute(client, statement, &[&now_ms]).await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn subject_rows(&self, subject: &str) -> Result<usize, KvError> {
        let statement = &self.sql.subject_rows;
        self.as_owner(async |client| {
            let rows = query(client, statement, &[&subject]).await?;
            let n: i64 = match rows.first() {
                Some(row) => get(row, 0)?,
                None => 0,
            };
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn subject_stores(&self, subject: &str) -> Result<Vec<String>, KvError> {
        let statement = &self.sql.subject_stores;
        self.as_owner(async |client| {
            let rows = query(client, statement, &[&subject]).await?;
            rows.iter().map(|r| get(r, 0)).collect()
        })
    }

    fn subjects(&self, keep: &dyn Fn(&str) -> bool, limit: usize) -> Result<Vec<String>, KvError> {
        let statement = &self.sql.subjects;
        self.as_owner(async |client| {
            let rows = query(client, statement, &[]).await?;
            let mut found = Vec::new();
            for row in &rows {
                if found.len() >= limit {
                    break;
                }
                let subject: String = get(row, 0)?;
                if keep(&subject) {
                    found.push(subject);
                }
            }
            Ok(found)
        })
    }

    fn delete_subject(&self, subject: &str) -> Result<usize, KvError> {
        let statement = &self.sql.delete_subject;
        self.as_owner(async |client| {
            let n = execute(client, statement, &[&subject]).await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }
}

impl Drop for PostgresKv {
    /// Without waiting: a backend may be dropped on an async thread (an
    /// app version replaced), where a runtime's blocking shutdown panics.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
