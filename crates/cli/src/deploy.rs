//! Turn an app directory into loaded functions: the work `check` and
//! `serve` share. Every problem is collected, not just the first.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use bulkhead_manifest::{App, StoreKind};
use bulkhead_runtime::imports::ImportKind;
use bulkhead_runtime::{
    CacheOutcome, CompileCache, DataPlane, EngineSettings, LoadedFunction, Prepared, Runtime,
    SqlStores,
};
use bulkhead_store::crypto::{DataKey, Keyring};
use bulkhead_store::sql::postgres::PgSqlStore;
use bulkhead_store::sql::{Migration, MigrationReport, SqlDatabase, SqlKey, read_migrations};
use bulkhead_store::{AuditEvent, AuditLog, State, StateConfig};
use tracing::warn;

/// `serve` applies migrations; `check` runs them in a transaction it rolls
/// back and creates no database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Check,
}

pub struct Deployment {
    pub app: App,
    pub functions: Vec<LoadedFunction>,
    /// Issue 18: the triggered functions, in the order of `app.triggered`.
    pub triggered: Vec<LoadedFunction>,
    /// Key-value, secrets and config backends (T13-T16).
    pub data: Arc<DataPlane>,
}

/// The engine settings `app` needs.
pub fn engine_settings(app: &App) -> EngineSettings {
    EngineSettings {
        max_instances: app.limits.max_instances,
        max_memory: app
            .all_functions()
            .map(|f| f.limits.memory.as_usize())
            .max()
            .unwrap_or(0),
    }
}

/// Load every function of `app`; on failure, every problem found.
pub fn deploy(
    app: App,
    audit: AuditLog,
    mode: Mode,
    progress: &dyn Fn(&str),
) -> Result<Deployment, Vec<String>> {
    deploy_on(app, audit, mode, progress, Opened::default())
}

/// What `serve` opened beforehand (issue 17): the engine, built on a
/// thread during start-up, used when its settings fit the app; the
/// app's state, whose held connection the data plane's set-up borrows.
#[derive(Default)]
pub struct Opened {
    pub prepared: Option<Prepared>,
    pub state: Option<State>,
}

/// [`deploy`] with what was opened beforehand (see [`Opened`]).
pub fn deploy_on(
    app: App,
    audit: AuditLog,
    mode: Mode,
    progress: &dyn Fn(&str),
    opened: Opened,
) -> Result<Deployment, Vec<String>> {
    let settings = engine_settings(&app);
    let state = match opened.state {
        Some(state) => state,
        None => state_config(&app, app.state_dir())
            .and_then(|config| Ok(State::open(&config)?))
            .map_err(|e| vec![format!("{e:#}")])?,
    };
    let sql_stores = open_sql_stores(&app, &state, mode, progress)?;
    let data = open_data(&app, Some(state)).map_err(|e| vec![format!("{e:#}")])?;
    let prepared = match opened.prepared {
        Some(prepared) if prepared.fits(&settings) => prepared,
        _ => Runtime::prepare(&settings).map_err(|e| vec![e.to_string()])?,
    };
    let mut runtime = Runtime::from_prepared(prepared, audit.clone()).with_data(data.clone());
    runtime.set_sql_stores(sql_stores);
    let cache = open_cache(&app, &runtime).map_err(|e| vec![format!("{e:#}")])?;
    let mut functions = Vec::new();
    let mut problems = Vec::new();
    let mut rejected = false;
    for function in &app.functions {
        let started = Instant::now();
        match runtime.load(&cache, function) {
            Ok((loaded, outcome)) => {
                let how = match outcome {
                    CacheOutcome::Hit => "from the compile cache",
                    CacheOutcome::Miss => "compiled and cached",
                    CacheOutcome::Rejected => {
                        cache_entry_rejected(&audit, &function.name, &loaded.digest());
                        rejected = true;
                        "compiled again: the cached copy failed its integrity check and was replaced"
                    }
                };
                progress(&format!(
                    "function `{}` ready ({how}, {} ms)",
                    function.name,
                    started.elapsed().as_millis()
                ));
                // T17: a grant reaching this machine or the metadata
                // service, or never reached, is not served silently.
                if mode == Mode::Serve {
                    let dev = app.is_dev();
                    for rule in &function.grants.outbound {
                        if let Some(warning) = bulkhead_runtime::egress::warning(rule, dev) {
                            warn!(target: "bulkhead::deploy", function = %function.name, "{warning}");
                        }
                    }
                }
                // T18: each capability import beside its grant.
                if mode == Mode::Serve {
                    for import in loaded.imports() {
                        if matches!(import.kind, ImportKind::Capability { .. }) {
                            progress(&format!("function `{}`: {import}", function.name));
                        }
                    }
                }
                functions.push(loaded);
            }
            Err(e) => problems.push(format!("function `{}`: {e}", function.name)),
        }
    }
    // Issue 18: triggered functions are loaded like routed ones (T18:
    // their imports against their grants); the runner calls them.
    let mut triggered = Vec::new();
    for t in &app.triggered {
        let function = &t.function;
        match runtime.load(&cache, function) {
            Ok((loaded, _)) => {
                if mode == Mode::Serve {
                    for import in loaded.imports() {
                        if matches!(import.kind, ImportKind::Capability { .. }) {
                            progress(&format!("function `{}`: {import}", function.name));
                        }
                    }
                }
                triggered.push(loaded);
            }
            Err(e) => problems.push(format!("function `{}`: {e}", function.name)),
        }
    }
    if rejected {
        // `check` exits right after: the record must be committed first.
        audit.flush();
    }
    // T18: a deploy keeps only its own entries, so an older build (or one
    // of other engine settings) cannot be copied back into place later.
    // A failed deploy prunes nothing: what is serving still has its own.
    if problems.is_empty() && mode == Mode::Serve {
        match cache.prune() {
            Ok(0) => {}
            Ok(n) => progress(&format!(
                "compile cache: {n} entry(ies) no function of this deploy uses were deleted"
            )),
            Err(e) => {
                warn!(target: "bulkhead::deploy", error = %e, "could not prune the compile cache")
            }
        }
    }
    if problems.is_empty() {
        Ok(Deployment {
            app,
            functions,
            triggered,
            data,
        })
    } else {
        Err(problems)
    }
}

/// T18: a cache entry that failed its check (tampered, or another
/// component's entry copied over this one's name) was not loaded; say so
/// in the log and the audit trail.
fn cache_entry_rejected(audit: &AuditLog, function: &str, digest: &str) {
    warn!(
        target: "bulkhead::deploy",
        function,
        digest,
        reason = "cache-entry-rejected",
        "the compile cache entry failed its integrity check: not loaded, compiled again"
    );
    audit.record(
        AuditEvent::new("cache.rejected")
            .function(function)
            .detail("reason", "integrity-check-failed")
            .detail("digest", digest),
    );
}

/// Open every SQL store and bring its schema up to date (T06, T15): on
/// the embedded backend, each database is encrypted under its own key,
/// derived from the store's data key, which is kept only wrapped by the
/// master key (envelope encryption); on PostgreSQL (issue 16), each store
/// is a schema with a database role per grant.
fn open_sql_stores(
    app: &App,
    state: &State,
    mode: Mode,
    progress: &dyn Fn(&str),
) -> Result<SqlStores, Vec<String>> {
    let mut stores = SqlStores::new();
    let mut problems = Vec::new();
    let mut keys: Option<SqlKeys> = None;
    for spec in &app.stores {
        let StoreKind::Sql {
            migrations,
            retention,
            ..
        } = &spec.kind
        else {
            continue;
        };
        // T20: a retention Bulkhead cannot enforce is refused, not ignored.
        if retention.is_some() {
            problems.push(format!(
                "SQL store `{}`: `retention` is not supported on SQL stores (Bulkhead cannot know which rows expire); delete expired rows with a declared statement, or remove `retention`",
                spec.name
            ));
            continue;
        }
        let migrations = match store_migrations(migrations, state.postgres().is_some()) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("store `{}`: {e}", spec.name));
                continue;
            }
        };
        let outcome = match state.postgres() {
            Some(pg) => open_postgres_store(
                app,
                state,
                pg,
                &spec.name,
                &migrations,
                mode,
                &mut keys,
                &mut stores,
            ),
            None => open_embedded_store(
                app,
                state,
                &spec.name,
                &migrations,
                mode,
                &mut keys,
                &mut stores,
            ),
        };
        match outcome {
            Ok((report, place)) => progress(&format!(
                "SQL store `{}`{place}: {} migration(s) already applied, {} {}",
                spec.name,
                report.already.len(),
                report.applied.len(),
                match mode {
                    Mode::Serve => "applied now",
                    Mode::Check => "pending (checked, not applied)",
                }
            )),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(stores)
    } else {
        Err(problems)
    }
}

/// A SQL store's migrations in `dir`: on PostgreSQL those of its
/// `postgres/` directory where it has one (where the two dialects differ).
pub(crate) fn store_migrations(
    dir: &std::path::Path,
    on_postgres: bool,
) -> Result<Vec<Migration>, bulkhead_store::sql::SqlStoreError> {
    let postgres = dir.join("postgres");
    read_migrations(if on_postgres && postgres.is_dir() {
        &postgres
    } else {
        dir
    })
}

/// One SQL store as a SQLCipher file in the state directory.
fn open_embedded_store(
    app: &App,
    state: &State,
    name: &str,
    migrations: &[Migration],
    mode: Mode,
    keys: &mut Option<SqlKeys>,
    stores: &mut SqlStores,
) -> Result<(MigrationReport, String), String> {
    let state_dir = &app.state_dir();
    let exists = bulkhead_store::sql::database_path(state_dir, name).exists();
    // `check` of a store not yet created: a throwaway key, in memory.
    let key = if mode == Mode::Check && !exists {
        bulkhead_store::files::random_bytes::<32>()
            .map(SqlKey::new)
            .map_err(|e| format!("randomness: {e}"))
    } else {
        sql_keys(keys, app, state).and_then(|k| k.key(name, mode == Mode::Serve))
    };
    let key = Arc::new(key.map_err(|e| format!("SQL store `{name}`: {e}"))?);
    let report = match mode {
        Mode::Serve => SqlDatabase::deploy(state_dir, name, key, migrations).map(|(db, report)| {
            stores.insert(name.to_string(), Arc::new(db));
            report
        }),
        Mode::Check => SqlDatabase::check(state_dir, name, key, migrations),
    };
    report
        .map(|r| (r, String::new()))
        .map_err(|e| e.to_string())
}

/// One SQL store as a PostgreSQL schema with a role per grant (issue 16).
#[allow(clippy::too_many_arguments)]
fn open_postgres_store(
    app: &App,
    state: &State,
    pg: &Arc<bulkhead_store::pg::Pg>,
    name: &str,
    migrations: &[Migration],
    mode: Mode,
    keys: &mut Option<SqlKeys>,
    stores: &mut SqlStores,
) -> Result<(MigrationReport, String), String> {
    if mode == Mode::Check {
        return PgSqlStore::check(pg, name, migrations)
            .map(|r| (r, " on PostgreSQL".to_string()))
            .map_err(|e| e.to_string());
    }
    // A database from before the app moved to PostgreSQL is not served:
    // say so rather than let its rows vanish silently.
    let leftover = bulkhead_store::sql::database_path(&app.state_dir(), name);
    if leftover.is_file() {
        warn!(
            target: "bulkhead::deploy",
            store = name,
            path = %leftover.display(),
            "this SQL store is served from PostgreSQL; the embedded database left in the state directory is not read"
        );
    }
    let dek = sql_keys(keys, app, state)
        .and_then(|k| k.data_key(name, true))
        .map_err(|e| format!("SQL store `{name}`: {e}"))?;
    let (store, report, names) =
        PgSqlStore::deploy(pg.clone(), name, &dek, migrations).map_err(|e| e.to_string())?;
    stores.insert(name.to_string(), Arc::new(store));
    Ok((
        report,
        format!(
            " on PostgreSQL (schema {}; role {} for read grants, {} for read-write)",
            names.schema, names.read_role, names.write_role
        ),
    ))
}

/// The environment's keyring (master key and wrapped data keys), opened
/// once per deploy.
struct SqlKeys {
    keyring: Keyring,
}

impl SqlKeys {
    /// The state's keyring: the state directory's, or (issue 16) the data
    /// keys in PostgreSQL under the nodes' master key.
    fn open(app: &App, state: &State) -> Result<Self, String> {
        let keyring = state.keyring(&app.env).map_err(|e| e.to_string())?;
        Ok(Self { keyring })
    }

    /// The store's data key; created with the store by `serve` only.
    fn data_key(&self, store: &str, create: bool) -> Result<DataKey, String> {
        match self
            .keyring
            .data_key(bulkhead_store::sql::KEY_OWNER, store, "", create)
        {
            Ok(Some(dek)) => Ok(dek),
            Ok(None) => Err(
                "the database exists but its data key is gone; restore the state directory from backup".into(),
            ),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The store's SQLCipher key, derived from its data key.
    fn key(&self, store: &str, create: bool) -> Result<SqlKey, String> {
        let dek = self.data_key(store, create)?;
        SqlKey::from_data_key(&dek, store).map_err(|e| e.to_string())
    }
}

/// The keyring of `state`, opened at first use and kept for every store.
fn sql_keys<'k>(
    keys: &'k mut Option<SqlKeys>,
    app: &App,
    state: &State,
) -> Result<&'k SqlKeys, String> {
    match keys {
        Some(k) => Ok(&*k),
        None => SqlKeys::open(app, state).map(|k| &*keys.insert(k)),
    }
}

/// The data backends: the master key is needed only if the app declares a
/// key-value store or grants a secret (T14/T15). `state`: the app's
/// state when the caller has it open already (issue 17: `serve`, so that
/// start-up does not open and migrate it a second time).
fn open_data(app: &App, state: Option<State>) -> Result<Arc<DataPlane>> {
    let state = match state {
        Some(state) => state,
        None => State::open(&state_config(app, app.state_dir())?)?,
    };
    Ok(Arc::new(DataPlane::open(app, &state)?))
}

/// Where the state of `app` lives (issue 16): the state directory `dir`,
/// or PostgreSQL when `[cluster] backend = "postgres"`, at the URL from
/// `database_url_file` or `BULKHEAD_DATABASE_URL` (never printed). What
/// PostgreSQL does not hold yet stays in `dir` either way.
pub(crate) fn state_config(app: &App, dir: std::path::PathBuf) -> Result<StateConfig> {
    use bulkhead_manifest::cluster::DATABASE_URL_ENV;
    if app.cluster.backend != bulkhead_manifest::Backend::Postgres {
        return Ok(StateConfig::Embedded { dir });
    }
    let from_env = std::env::var(DATABASE_URL_ENV).ok();
    let Some(url) = app.cluster.database_url(&app.dir, from_env)? else {
        anyhow::bail!(
            "`[cluster] backend = \"postgres\"` needs the database URL: set {DATABASE_URL_ENV} in the server's environment, or write it in a file only the server can read and name that file with `database_url_file`"
        );
    };
    Ok(StateConfig::postgres(
        dir,
        url.expose().to_string(),
        &app.name,
        &app.env,
    ))
}

/// [`state_config`] of the app in `app_dir` for a command that has not
/// loaded its manifest. A manifest that never names `postgres` is embedded
/// without a full load; one that does must load, or the command is refused
/// (never served from, or written to, the embedded state instead).
pub(crate) fn state_config_of(
    app_dir: &std::path::Path,
    env: &str,
    dir: std::path::PathBuf,
) -> Result<StateConfig> {
    let manifest = app_dir.join(bulkhead_manifest::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).unwrap_or_default();
    if !text.contains("postgres") {
        return Ok(StateConfig::Embedded { dir });
    }
    match bulkhead_manifest::load(app_dir, env) {
        Ok(app) => state_config(&app, dir),
        Err(problems) => anyhow::bail!(
            "the manifest names where the state lives, and it has problems; `bulkhead check {}` lists them:\n  {}",
            app_dir.display(),
            problems
                .0
                .iter()
                .map(|p| bulkhead_manifest::text::visible(&p.to_string()))
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    }
}

fn open_cache(app: &App, runtime: &Runtime) -> Result<CompileCache> {
    let dir = app.state_dir().join("compile-cache");
    CompileCache::open(&dir, runtime.engine())
        .with_context(|| format!("cannot use the compile cache in {}", dir.display()))
}
