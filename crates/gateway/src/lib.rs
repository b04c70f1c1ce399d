//! The gateway: the listener and the request pipeline in front of the
//! sandbox, one module per stage.

mod admin;
mod admission;
mod audit;
pub mod authn;
mod budget;
mod caller;
mod connection;
pub mod correlation;
mod metrics;
mod pipeline;
pub mod problem;
mod ratelimit;
mod respond;
mod router;
mod send_timeout;
mod server;
pub mod spans;
mod throttle;
mod tls;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bulkhead_manifest::{App, AppLimits};
use bulkhead_runtime::LoadedFunction;
use bulkhead_store::{AuditLog, Store};

use admission::Gate;
use budget::Meter;
use metrics::Metrics;
use ratelimit::CallerLimiter;
use router::Router;
use throttle::Shedder;

pub use admin::AdminAccess;
pub use budget::worst_case;
pub use spans::{RequestSpan, SpanExport};
pub use tls::TlsError;

/// An app ready to serve: its functions loaded, its gates set.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    limits: AppLimits,
    /// `[app] hostnames`, canonical; `None` for any host (T10).
    hostnames: Option<Vec<String>>,
    router: Router,
    app_gate: Arc<Gate>,
    /// Per-caller rate limit across the app (T02, T03).
    app_limiter: Option<CallerLimiter>,
    /// Sheds new work while the process is overloaded (T01).
    shedder: Option<Arc<Shedder>>,
    /// Meters every call and enforces budgets (T04); `None` if metering is off.
    meter: Option<Arc<Meter>>,
    functions: Vec<FunctionSlot>,
    audit: AuditLog,
    /// Audits refusals, folding a flood's repeats (T09).
    refusals: audit::Refusals,
    authenticator: authn::Authenticator,
    metrics: Metrics,
    /// Where request spans go, when trace export is on (T08).
    spans: Option<Arc<dyn SpanExport>>,
    /// Serving and not draining: what `/readyz` reports.
    ready: AtomicBool,
    /// `[tls]` when the gateway terminates TLS (T15).
    tls: Option<Arc<tls::Tls>>,
}

pub(crate) struct FunctionSlot {
    /// Position in the manifest (and in the meter's ledger).
    index: usize,
    function: LoadedFunction,
    /// The route as the manifest writes it, like `/users/{id}`.
    route: String,
    gate: Arc<Gate>,
    limiter: Option<CallerLimiter>,
    access: bulkhead_manifest::Access,
    /// The function's input rules, compiled once (T10).
    rules: validate::Rules,
    /// Only callers with a verified client certificate reach it (T15).
    client_cert_required: bool,
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
        let authenticator = authn::Authenticator::new(app, store.clone())?;
        // The certificate is loaded now: a server never starts with a pair
        // it cannot serve (T15).
        let tls = app
            .tls
            .as_ref()
            .and_then(|t| t.listener())
            .map(tls::Tls::new)
            .transpose()
            .map_err(|e| format!("[tls]: {e}"))?
            .map(Arc::new);
        let router = Router::new(
            app.functions
                .iter()
                .map(|f| (f.route.clone(), f.methods.clone())),
        );
        let meter = if app.limits.metering {
            let limits: Vec<_> = functions.iter().map(|f| f.limits()).collect();
            Some(
                Meter::new(app, &limits, &store)
                    .map_err(|e| format!("cannot open the meter: {e}"))?,
            )
        } else {
            None
        };
        let functions = functions
            .into_iter()
            .zip(&app.functions)
            .enumerate()
            .map(|(index, (function, spec))| {
                let limits = function.limits();
                let gate = Gate::new(
                    limits.max_concurrent_requests,
                    limits.max_outstanding_requests,
                    limits.max_outstanding_per_caller,
                );
                let route = spec.route.to_string();
                let rules = validate::Rules::new(&spec.input);
                FunctionSlot {
                    index,
                    limiter: limits.rate_limit.as_ref().map(CallerLimiter::new),
                    function,
                    route,
                    gate,
                    access: spec.access.clone(),
                    rules,
                    client_cert_required: spec.client_cert_required,
                }
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                limits: app.limits.clone(),
                hostnames: app.hostnames.clone(),
                router,
                app_gate: Gate::new(
                    app.limits.max_concurrent_requests,
                    app.limits.max_outstanding_requests,
                    app.limits.max_outstanding_per_caller,
                ),
                app_limiter: app.limits.rate_limit.as_ref().map(CallerLimiter::new),
                shedder: app.throttle.map(Shedder::new),
                meter,
                functions,
                audit,
                refusals: audit::Refusals::default(),
                authenticator,
                metrics: Metrics::new(),
                spans,
                ready: AtomicBool::new(false),
                tls,
            }),
        })
    }
}
