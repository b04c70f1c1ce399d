//! Turn an app directory into loaded functions: the work `check` and
//! `serve` share. Every problem is collected, not just the first.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use bulkhead_manifest::App;
use bulkhead_runtime::{
    CacheOutcome, CompileCache, DataPlane, EngineSettings, LoadedFunction, Runtime,
};
use bulkhead_store::{AuditLog, Store};

pub struct Deployment {
    pub app: App,
    pub functions: Vec<LoadedFunction>,
    /// Key-value, secrets and config backends (T13-T16).
    pub data: Arc<DataPlane>,
}

/// Load every function of `app`; on failure, every problem found.
pub fn deploy(
    app: App,
    audit: AuditLog,
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
    let data = open_data(&app).map_err(|e| vec![format!("{e:#}")])?;
    let runtime = Runtime::new(&settings, audit)
        .map_err(|e| vec![e.to_string()])?
        .with_data(data.clone());
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
                functions.push(loaded);
            }
            Err(e) => problems.push(format!("function `{}`: {e}", function.name)),
        }
    }
    if problems.is_empty() {
        Ok(Deployment {
            app,
            functions,
            data,
        })
    } else {
        Err(problems)
    }
}

/// The data backends: the master key is needed only if the app declares a
/// key-value store or grants a secret (T14/T15).
fn open_data(app: &App) -> Result<Arc<DataPlane>> {
    let store = Store::open(&app.state_dir())?;
    Ok(Arc::new(DataPlane::open(app, &store)?))
}

fn open_cache(app: &App, runtime: &Runtime) -> Result<CompileCache> {
    let dir = app.state_dir().join("compile-cache");
    CompileCache::open(&dir, runtime.engine())
        .with_context(|| format!("cannot use the compile cache in {}", dir.display()))
}
