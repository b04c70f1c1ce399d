//! Turn an app directory into loaded functions: the work `check` and
//! `serve` share. Every problem is collected, not just the first.

use std::time::Instant;

use anyhow::{Context as _, Result};
use std::sync::Arc;

use bulkhead_manifest::{App, StoreKind};
use bulkhead_runtime::imports::ImportKind;
use bulkhead_runtime::{
    CacheOutcome, CompileCache, EngineSettings, LoadedFunction, Runtime, SqlStores,
};
use bulkhead_store::AuditLog;
use bulkhead_store::sql::{SqlDatabase, SqlKey, read_migrations};

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
}

/// Load every function of `app`; on failure, every problem found.
pub fn deploy(
    app: App,
    audit: AuditLog,
    mode: Mode,
    progress: &dyn Fn(&str),
) -> Result<Deployment, Vec<String>> {
    let settings = EngineSettings {
        max_instances: app.limits.max_instances,
        max_memory: app
            .functions
            .iter()
            .map(|f| f.limits.memory.as_usize())
            .max()
            .unwrap_or(0),
    };
    let mut runtime = Runtime::new(&settings, audit).map_err(|e| vec![e.to_string()])?;
    runtime.set_sql_stores(open_sql_stores(&app, mode, progress)?);
    let cache = open_cache(&app, &runtime).map_err(|e| vec![format!("{e:#}")])?;
    let mut functions = Vec::new();
    let mut problems = Vec::new();
    for function in &app.functions {
        let started = Instant::now();
        match runtime.load(&cache, function) {
            Ok((loaded, outcome)) => {
                let how = match outcome {
                    CacheOutcome::Hit => "from the compile cache",
                    CacheOutcome::Miss => "compiled and cached",
                    CacheOutcome::Rejected => {
                        "compiled again: the cached copy failed its integrity check and was replaced"
                    }
                };
                progress(&format!(
                    "function `{}` ready ({how}, {} ms)",
                    function.name,
                    started.elapsed().as_millis()
                ));
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
    if problems.is_empty() {
        Ok(Deployment { app, functions })
    } else {
        Err(problems)
    }
}

/// Open every SQL store and bring its schema up to date (T06, T15). The
/// database is encrypted with the key in `STATE_DIR/sql.key` (0600) until
/// per-store data keys under the master key replace it.
fn open_sql_stores(
    app: &App,
    mode: Mode,
    progress: &dyn Fn(&str),
) -> Result<SqlStores, Vec<String>> {
    let mut stores = SqlStores::new();
    let mut problems = Vec::new();
    let state_dir = app.state_dir();
    let mut key: Option<Arc<SqlKey>> = None;
    for spec in &app.stores {
        let StoreKind::Sql { migrations, .. } = &spec.kind else {
            continue;
        };
        let migrations = match read_migrations(migrations) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("store `{}`: {e}", spec.name));
                continue;
            }
        };
        let key = match &key {
            Some(k) => k.clone(),
            None => match sql_key(&state_dir, mode) {
                Ok(k) => key.insert(Arc::new(k)).clone(),
                Err(e) => {
                    problems.push(format!(
                        "cannot read or create the SQL key in {}: {e}",
                        state_dir.display()
                    ));
                    break;
                }
            },
        };
        let outcome = match mode {
            Mode::Serve => {
                SqlDatabase::deploy(&state_dir, &spec.name, key, &migrations).map(|(db, report)| {
                    stores.insert(spec.name.clone(), Arc::new(db));
                    report
                })
            }
            Mode::Check => SqlDatabase::check(&state_dir, &spec.name, key, &migrations),
        };
        match outcome {
            Ok(report) => progress(&format!(
                "SQL store `{}`: {} migration(s) already applied, {} {}",
                spec.name,
                report.already.len(),
                report.applied.len(),
                match mode {
                    Mode::Serve => "applied now",
                    Mode::Check => "pending (checked, not applied)",
                }
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(stores)
    } else {
        Err(problems)
    }
}

/// `check` never creates the key: without one there is no database yet,
/// and a throwaway key checks the migrations in memory.
fn sql_key(state_dir: &std::path::Path, mode: Mode) -> std::io::Result<SqlKey> {
    let path = state_dir.join(bulkhead_store::sql::SQL_KEY_FILE);
    if mode == Mode::Check && !path.exists() {
        return bulkhead_store::files::random_bytes::<32>().map(SqlKey::new);
    }
    SqlKey::load_or_create(state_dir)
}

fn open_cache(app: &App, runtime: &Runtime) -> Result<CompileCache> {
    let dir = app.state_dir().join("compile-cache");
    CompileCache::open(&dir, runtime.engine())
        .with_context(|| format!("cannot use the compile cache in {}", dir.display()))
}
