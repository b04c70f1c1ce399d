//! The gateway: the listener and the request pipeline in front of the
//! sandbox, one module per stage.

mod admin;
mod admission;
mod audit;
pub mod correlation;
mod metrics;
mod pipeline;
pub mod problem;
mod router;
mod server;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bulkhead_manifest::{App, AppLimits};
use bulkhead_runtime::LoadedFunction;
use bulkhead_store::AuditLog;

use admission::Gate;
use metrics::Metrics;
use router::Router;

pub use admin::AdminAccess;

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
    metrics: Metrics,
    /// Serving and not draining: what `/readyz` reports.
    ready: AtomicBool,
}

pub(crate) struct FunctionSlot {
    function: LoadedFunction,
    gate: Arc<Gate>,
    /// The function's input rules, compiled once (T10).
    rules: validate::Rules,
}

impl Gateway {
    /// `functions` are the app's functions, loaded, in manifest order.
    pub fn new(app: &App, functions: Vec<LoadedFunction>, audit: AuditLog) -> Self {
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
                let rules = validate::Rules::new(&spec.input);
                FunctionSlot {
                    function,
                    gate,
                    rules,
                }
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                limits: app.limits.clone(),
                router,
                app_gate: Gate::new(
                    app.limits.max_concurrent_requests,
                    app.limits.max_outstanding_requests,
                ),
                functions,
                audit,
                metrics: Metrics::new(),
                ready: AtomicBool::new(false),
            }),
        }
    }
}
