//! The sandbox: wasmtime with the component model, one fresh instance per
//! call, nothing granted, hard limits on time, memory and output (T05).
//!
//! [`Runtime`] owns the engine and the linker; [`Runtime::load`] turns a
//! manifest function into a [`LoadedFunction`] (digest checked, compiled or
//! taken from the [`CompileCache`], imports linked); [`LoadedFunction::invoke`]
//! runs one request through it.

mod cache;
mod call;
mod config;
pub mod data;
pub mod egress;
mod engine;
mod host;
pub mod imports;
mod invoke;
mod kv;
mod net;
mod outbound;
mod output;
mod queue;
mod response;
mod sockets;
mod sql;

use std::sync::Arc;

use bulkhead_manifest::{Function, FunctionLimits};
use bulkhead_store::AuditLog;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use cache::{CacheOutcome, CompileCache};
pub use data::DataPlane;
pub use engine::{EPOCH_TICK, EngineSettings};
pub use invoke::{Invocation, InvokeError, RequestTrailers};
pub use outbound::tls_connector;
pub use response::ResponseBody;
pub use sql::SqlStores;

use engine::EpochTicker;
use host::HostState;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("compile cache: {0}")]
    Cache(String),
    #[error("cannot compile the component: {0}")]
    Compile(String),
    #[error("cannot link the host interfaces: {0}")]
    Link(String),
}

/// Why a function could not be made ready to serve.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "component `{path}` has SHA-256 {actual}, but the manifest pins {expected}; the artifact changed since it was pinned: rebuild it from trusted source or update `digest`"
    )]
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error(
        "`{path}` is not a WebAssembly component that wasmtime accepts ({detail}); build it as a wasi:http component (for Rust: `cargo build --target wasm32-wasip2`)"
    )]
    NotAComponent { path: String, detail: String },
    #[error(
        "component `{path}` imports an interface Bulkhead does not offer: `{interface}`; Bulkhead offers wasi:http, bulkhead:sql, bulkhead:queue, wasi:keyvalue, wasi:config and WASI 0.2 (filesystem, environment, sockets and the like, with nothing granted)"
    )]
    UnsupportedImport { path: String, interface: String },
    #[error("component `{path}` cannot be linked: {detail}")]
    Link { path: String, detail: String },
    #[error(
        "component `{path}` imports `{import}`, which needs grant `{grant}`, but the function is not granted it and `strict_imports` is on (T18); add {example} to the function, or rebuild the component without that import"
    )]
    UngrantedImport {
        path: String,
        import: String,
        grant: &'static str,
        example: &'static str,
    },
    #[error(
        "component `{path}` does not export `wasi:http/incoming-handler` ({detail}); a function must be a wasi:http proxy component"
    )]
    NoHandler { path: String, detail: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The engine, the epoch ticker and the linker every function shares.
pub struct Runtime {
    engine: Engine,
    audit: AuditLog,
    linker: Linker<HostState>,
    /// Shared with every loaded function: timeouts work while any lives.
    ticker: Arc<EpochTicker>,
    /// The deployment's open SQL stores (T06); grants bind to these.
    sql_stores: SqlStores,
    /// Key-value, secrets and config backends (T13-T16).
    data: Arc<DataPlane>,
}

/// The engine, its epoch ticker and the linker, built before the rest of
/// a [`Runtime`] (issue 17: `serve` builds them on a thread while the
/// state and the audit trail open). Nothing runs in it until a function,
/// verified and loaded, is served through a [`Runtime`].
pub struct Prepared {
    settings: EngineSettings,
    engine: Engine,
    linker: Linker<HostState>,
    ticker: EpochTicker,
}

impl Prepared {
    /// Whether this engine was built with `settings` (part of the compile
    /// cache key, and the pool's size).
    pub fn fits(&self, settings: &EngineSettings) -> bool {
        self.settings == *settings
    }
}

impl Runtime {
    /// `audit` receives the sandbox's security events (capability denials).
    pub fn new(settings: &EngineSettings, audit: AuditLog) -> Result<Self, RuntimeError> {
        Ok(Self::from_prepared(Self::prepare(settings)?, audit))
    }

    /// The runtime of an engine built by [`Runtime::prepare`].
    pub fn from_prepared(prepared: Prepared, audit: AuditLog) -> Self {
        Self {
            engine: prepared.engine,
            audit,
            linker: prepared.linker,
            ticker: Arc::new(prepared.ticker),
            sql_stores: SqlStores::new(),
            data: Arc::new(DataPlane::empty()),
        }
    }

    /// Build the engine, start its epoch ticker and link the host
    /// interfaces: the part of [`Runtime::new`] that needs no state.
    pub fn prepare(settings: &EngineSettings) -> Result<Prepared, RuntimeError> {
        let engine = engine::build_engine(settings)?;
        let mut linker = Linker::new(&engine);
        // Full WASI 0.2 (each part with nothing granted, see `HostState`)
        // plus wasi:http; a proxy-only linker would refuse components built
        // by language toolchains that import filesystem or sockets by habit.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        // Capabilities: linked always, usable only as the grants say.
        kv::add_to_linker(&mut linker).map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        config::add_to_linker(&mut linker).map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        queue::add_to_linker(&mut linker).map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        sockets::shadow_create(&mut linker).map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        sql::add_to_linker(&mut linker, |state: &mut HostState| &mut state.sql)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        let ticker = EpochTicker::start(&engine)?;
        Ok(Prepared {
            settings: settings.clone(),
            engine,
            linker,
            ticker,
        })
    }

    /// The SQL stores functions loaded from now on may be granted.
    pub fn set_sql_stores(&mut self, stores: SqlStores) {
        self.sql_stores = stores;
    }

    /// Serve functions with these data backends (default: none).
    pub fn with_data(mut self, data: Arc<DataPlane>) -> Self {
        self.data = data;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Read, verify, compile (or take from `cache`) and link one function.
    pub fn load(
        &self,
        cache: &CompileCache,
        function: &Function,
    ) -> Result<(LoadedFunction, CacheOutcome), LoadError> {
        let path = function.component.display().to_string();
        // Bounded (T18, T05): a component that is /dev/zero or a FIFO is refused.
        let wasm = bulkhead_manifest::files::read_bounded(
            &function.component,
            bulkhead_manifest::files::MAX_COMPONENT_BYTES,
        )
        .map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let sha256: [u8; 32] = Sha256::digest(&wasm).into();
        if let Some(expected) = function.digest
            && expected != sha256
        {
            return Err(LoadError::DigestMismatch {
                path,
                expected: format!("sha256:{}", hex::encode(expected)),
                actual: format!("sha256:{}", hex::encode(sha256)),
            });
        }
        let (component, outcome) = cache
            .load_or_compile(&self.engine, &wasm, &sha256)
            .map_err(|e| match e {
                RuntimeError::Compile(detail) => LoadError::NotAComponent {
                    path: path.clone(),
                    detail,
                },
                other => LoadError::Runtime(other),
            })?;
        let imports =
            imports::classify_all(&imports_of(&self.engine, &component), &function.grants);
        check_imports(&path, &imports, function.strict_imports)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                path: path.clone(),
                detail: format!("{e:#}"),
            })?;
        let pre = ProxyPre::new(pre).map_err(|e| LoadError::NoHandler {
            path,
            detail: format!("{e:#}"),
        })?;
        Ok((
            LoadedFunction {
                inner: Arc::new(invoke::Sealed {
                    name: function.name.clone(),
                    limits: function.limits.clone(),
                    pre,
                    outbound: function.grants.outbound.clone().into(),
                    sql: Arc::new(sql::bind(&function.grants.sql, &self.sql_stores)),
                    grants: Arc::new(function.grants.clone()),
                    data: self.data.clone(),
                    audit: self.audit.clone(),
                    _ticker: self.ticker.clone(),
                }),
                sha256,
                imports,
            },
            outcome,
        ))
    }
}

/// T18: refuse what Bulkhead does not offer, and under `strict_imports`
/// every capability import the function was not granted.
fn check_imports(path: &str, imports: &[imports::Import], strict: bool) -> Result<(), LoadError> {
    for import in imports {
        match import.kind {
            imports::ImportKind::Unsupported => {
                return Err(LoadError::UnsupportedImport {
                    path: path.to_string(),
                    interface: import.name.clone(),
                });
            }
            imports::ImportKind::Capability {
                capability,
                granted: false,
            } if strict => {
                return Err(LoadError::UngrantedImport {
                    path: path.to_string(),
                    import: import.name.clone(),
                    grant: capability.grant_key(),
                    example: capability.example_grant(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn imports_of(engine: &Engine, component: &Component) -> Vec<String> {
    let mut names: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    names.sort();
    names
}

/// A function ready to serve: cheap to clone, each call a fresh instance.
#[derive(Clone)]
pub struct LoadedFunction {
    inner: Arc<invoke::Sealed>,
    sha256: [u8; 32],
    imports: Vec<imports::Import>,
}

impl LoadedFunction {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn limits(&self) -> &FunctionLimits {
        &self.inner.limits
    }

    /// `sha256:…` of the component as loaded.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.sha256))
    }

    /// Component instances alive right now, across the whole engine.
    pub fn live_instances(&self) -> u64 {
        self.inner
            .pre
            .engine()
            .pooling_allocator_metrics()
            .map_or(0, |m| m.component_instances())
    }

    /// The interfaces the component imports, sorted, each classified
    /// against the function's grants (T18).
    pub fn imports(&self) -> &[imports::Import] {
        &self.imports
    }

    /// Run one request in a fresh, limited instance.
    pub async fn invoke(
        &self,
        request: http::Request<bytes::Bytes>,
        invocation: &Invocation,
    ) -> Result<http::Response<ResponseBody>, InvokeError> {
        invoke::invoke(self.inner.clone(), request, invocation).await
    }
}
