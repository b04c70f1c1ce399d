//! The gateway: the listener and the request pipeline in front of the
//! sandbox, one module per stage.

mod admin;
mod admission;
mod audit;
pub mod authn;
pub mod correlation;
mod metrics;
mod pipeline;
pub mod problem;
mod router;
mod server;
pub mod spans;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bulkhead_manifest::{App, AppLimits};
use bulkhead_runtime::LoadedFunction;
use bulkhead_store::{AuditLog, Store};

use admission::Gate;
use metrics::Metrics;
use router::Router;

pub use admin::AdminAccess;
pub use spans::{RequestSpan, SpanExport};

/// An app ready to serve: its functions loaded, its gates set.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    limits: AppLimits,
    router: Router,
    app_gate: Arc<Gate>,
    functions: Vec<FunctionSlot>,
    audit: AuditLog,
    authenticator: authn::Authenticator,
    metrics: Metrics,
    /// Where request spans go, when trace export is on (T08).
    spans: Option<Arc<dyn SpanExport>>,
    /// Serving and not draining: what `/readyz` reports.
    ready: AtomicBool,
}

pub(crate) struct FunctionSlot {
    function: LoadedFunction,
    /// The route as the manifest writes it, like `/users/{id}`.
    route: String,
    gate: Arc<Gate>,
    access: bulkhead_manifest::Access,
    /// The function's input rules, compiled once (T10).
    rules: validate::Rules,
}

impl Gateway {
    /// `functions` are the app's functions, loaded, in manifest order;
    /// `spans`, where request spans are exported, if anywhere. Fails if
    /// the app's authentication keys are unusable.
    pub fn new(
        app: &App,
        functions: Vec<LoadedFunction>,
        audit: AuditLog,
        store: Store,
        spans: Option<Arc<dyn SpanExport>>,
    ) -> Result<Self, String> {
        let authenticator = authn::Authenticator::new(app, store)?;
        let router = Router::new(
            app.functions
                .iter()
                .map(|f| (f.route.clone(), f.methods.clone())),
        );
        let functions = functions
            .into_iter()
            .zip(&app.functions)
            .map(|(function, spec)| {
                let limits = function.limits();
                let gate = Gate::new(
                    limits.max_concurrent_requests,
                    limits.max_outstanding_requests,
                );
                let route = spec.route.to_string();
                let rules = validate::Rules::new(&spec.input);
                FunctionSlot {
                    function,
                    route,
                    gate,
                    access: spec.access.clone(),
                    rules,
                }
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                limits: app.limits.clone(),
                router,
                app_gate: Gate::new(
                    app.limits.max_concurrent_requests,
                    app.limits.max_outstanding_requests,
                ),
                functions,
                audit,
                authenticator,
                metrics: Metrics::new(),
                spans,
                ready: AtomicBool::new(false),
            }),
        })
    }
}
