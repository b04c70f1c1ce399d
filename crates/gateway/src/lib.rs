//! The gateway: the listener and the request pipeline in front of the
//! sandbox, one module per stage.

pub mod access_log;
mod admin;
mod admission;
mod audit;
pub mod authn;
mod budget;
mod caller;
/// Per-caller limits shared through Redis (issue 16).
pub mod cluster;
mod connection;
pub mod correlation;
mod deploys;
/// Schedules and queue consumers (issue 18).
mod events;
pub mod log_writer;
/// Sign-in at the gateway, `[auth.login]` (issue 15).
mod login;
mod metrics;
mod pipeline;
pub mod problem;
mod ratelimit;
mod refusal;
mod respond;
mod router;
mod send_timeout;
mod server;
pub mod spans;
mod stages;
mod throttle;
mod tls;
pub mod validate;
mod version;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use bulkhead_manifest::{App, AppLimits};
use bulkhead_runtime::LoadedFunction;
use bulkhead_store::{AuditLog, State};

use admission::Gate;
use metrics::Metrics;
use ratelimit::Limiter;
use throttle::Shedder;
pub(crate) use version::FunctionSlot;
use version::Version;

pub use admin::AdminAccess;
pub use budget::worst_case;
pub use deploys::{DeployError, DeployOutcome, Deployer, Who};
pub use events::Triggers;
pub use spans::{RequestSpan, SpanExport};
pub use tls::TlsError;

/// An app ready to serve: its functions loaded, its gates set.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

/// What lives as long as the process: the listener's bounds, the app-wide
/// gates and limiters, the audit trail, metrics. A deploy never replaces
/// these, so it can neither reset a caller's limits nor drop a connection
/// (T19, T03).
pub(crate) struct Shared {
    limits: AppLimits,
    app_gate: Arc<Gate>,
    /// Per-caller rate limit across the app (T02, T03).
    app_limiter: Option<Limiter>,
    /// Limits shared with the other nodes through Redis (issue 16).
    cluster: Option<Arc<cluster::ClusterLimits>>,
    /// Sheds new work while the process is overloaded (T01).
    shedder: Option<Arc<Shedder>>,
    audit: AuditLog,
    /// Audits refusals, folding a flood's repeats (T09).
    refusals: audit::Refusals,
    metrics: Metrics,
    /// Where request spans go, when trace export is on (T08).
    spans: Option<Arc<dyn SpanExport>>,
    /// Serving and not draining: what `/readyz` reports.
    ready: AtomicBool,
    state: State,
    /// The app version new requests get (T19). Each request reads it once
    /// and keeps it to its end, so a switch never changes a request under
    /// way; the lock is held only to clone or replace the pointer.
    version: RwLock<Arc<Version>>,
    /// The settings only a restart changes, as the running app has them.
    fixed: version::Fixed,
    /// Live deploys, rollbacks and versions, when the server takes them
    /// (T19): set by the CLI, which knows how to load an app.
    deployer: RwLock<Option<Arc<dyn Deployer>>>,
    /// `[tls]` when the gateway terminates TLS (T15): restart-only.
    tls: Option<Arc<tls::Tls>>,
    /// The digest of each triggered function the runner runs (issue 18):
    /// a live deploy may not change them (T19).
    trigger_digests: std::sync::OnceLock<Vec<(String, String)>>,
}

impl Shared {
    /// The version serving new requests.
    pub(crate) fn current(&self) -> Arc<Version> {
        self.version
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Gateway {
    /// `functions` are the app's functions, loaded, in manifest order;
    /// `spans`, where request spans are exported, if anywhere. Fails if
    /// the app's authentication keys are unusable.
    pub fn new(
        app: &App,
        functions: Vec<LoadedFunction>,
        audit: AuditLog,
        state: State,
        spans: Option<Arc<dyn SpanExport>>,
    ) -> Result<Self, String> {
        Self::in_cluster(app, functions, audit, state, spans, None)
    }

    /// [`Gateway::new`], its per-caller rate limits shared with the other
    /// nodes through `cluster` (issue 16) when given.
    pub fn in_cluster(
        app: &App,
        functions: Vec<LoadedFunction>,
        audit: AuditLog,
        state: State,
        spans: Option<Arc<dyn SpanExport>>,
        cluster: Option<Arc<cluster::ClusterLimits>>,
    ) -> Result<Self, String> {
        let version = Version::new(app, functions, &state, None, cluster.as_ref())?;
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
        Ok(Self {
            shared: Arc::new(Shared {
                limits: app.limits.clone(),
                app_gate: Gate::new(
                    app.limits.max_concurrent_requests,
                    app.limits.max_outstanding_requests,
                    app.limits.max_outstanding_per_caller,
                ),
                app_limiter: app
                    .limits
                    .rate_limit
                    .as_ref()
                    .map(|rate| Limiter::new(rate, "app", cluster.as_ref())),
                shedder: app.throttle.map(Shedder::new),
                audit,
                refusals: audit::Refusals::default(),
                metrics: Metrics::new(cluster.as_ref().map(|c| &c.metrics)),
                cluster,
                spans,
                ready: AtomicBool::new(false),
                state,
                version: RwLock::new(Arc::new(version)),
                fixed: version::Fixed::of(app),
                deployer: RwLock::new(None),
                tls,
                trigger_digests: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Switch new requests to `app` (T19): requests under way finish on
    /// the version they started with. Refused, with every reason and
    /// nothing changed, when `app` changes what only a restart may.
    /// Per-function gates, rate limiters and the budget ledger carry over
    /// by function name, so a deploy resets no caller's limits (T03, T04).
    pub fn switch(&self, app: &App, functions: Vec<LoadedFunction>) -> Result<(), Vec<String>> {
        let changed = self.shared.fixed.changes(app);
        if !changed.is_empty() {
            return Err(changed);
        }
        let previous = self.shared.current();
        let next = Version::new(
            app,
            functions,
            &self.shared.state,
            Some(&*previous),
            self.shared.cluster.as_ref(),
        )
        .map_err(|e| vec![e])?;
        *self
            .shared
            .version
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Issue 18 (T19): each triggered function of a new version whose
    /// code differs from what the runner runs, as a problem; a live deploy
    /// may not change them (the runner keeps the code it started with).
    pub fn trigger_code_changes(&self, triggered: &[LoadedFunction]) -> Vec<String> {
        let running = self.shared.trigger_digests.get();
        triggered
            .iter()
            .filter(|f| {
                running.is_some_and(|r| {
                    !r.iter()
                        .any(|(name, digest)| name == f.name() && *digest == f.digest())
                })
            })
            .map(|f| {
                format!(
                    "the component of triggered function `{}` differs from the running one's: triggered functions change only with a restart (`bulkhead serve`), not a live deploy",
                    f.name()
                )
            })
            .collect()
    }

    /// The restart-only settings `app` would change; empty when it can be
    /// switched in live.
    pub fn restart_only_changes(&self, app: &App) -> Vec<String> {
        self.shared.fixed.changes(app)
    }

    /// Let the admin listener take deploys (`/deploys`) through `deployer`.
    pub fn set_deployer(&self, deployer: Arc<dyn Deployer>) {
        *self
            .shared
            .deployer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(deployer);
    }
}
