//! One version of the app (T19): what a live deploy replaces (functions,
//! routes, input rules, authentication, per-function limits, budgets),
//! apart from what lives as long as the process ([`crate::Shared`]).
//!
//! A new version takes over the state a caller has built up, by function
//! name, when its settings are unchanged: outstanding places (so a deploy
//! never doubles a function's concurrency), per-caller rate limits and
//! failed-authentication strikes (T03), and today's budget ledger (T04).
//! A deploy is therefore never a way to reset a caller's limits.

use std::sync::Arc;

use bulkhead_manifest::App;
use bulkhead_runtime::LoadedFunction;
use bulkhead_store::State;

use crate::admission::Gate;
use crate::authn::Authenticator;
use crate::budget::Meter;
use crate::ratelimit::Limiter;
use crate::router::Router;
use crate::validate;

pub(crate) struct Version {
    /// `[app] hostnames`, canonical; `None` for any host (T10).
    pub(crate) hostnames: Option<Vec<String>>,
    pub(crate) router: Router,
    pub(crate) functions: Vec<FunctionSlot>,
    pub(crate) authenticator: Authenticator,
    /// `[auth.login]`: sign-in at the gateway (issue 15), if configured.
    pub(crate) login: Option<Arc<crate::login::Login>>,
    /// Meters every call and enforces budgets (T04); `None` if metering is off.
    pub(crate) meter: Option<Arc<Meter>>,
}

pub(crate) struct FunctionSlot {
    /// Position in the manifest (and in the meter's ledger).
    pub(crate) index: usize,
    pub(crate) function: LoadedFunction,
    /// The route as the manifest writes it, like `/users/{id}`.
    pub(crate) route: String,
    pub(crate) gate: Arc<Gate>,
    pub(crate) limiter: Option<Arc<Limiter>>,
    pub(crate) access: bulkhead_manifest::Access,
    /// The function's input rules, compiled once (T10).
    pub(crate) rules: validate::Rules,
    /// Only callers with a verified client certificate reach it (T15).
    pub(crate) client_cert_required: bool,
}

impl Version {
    /// `functions` are `app`'s, loaded, in manifest order; `previous`, the
    /// version this one follows, whose state carries over.
    pub(crate) fn new(
        app: &App,
        functions: Vec<LoadedFunction>,
        state: &State,
        previous: Option<&Version>,
        cluster: Option<&Arc<crate::cluster::ClusterLimits>>,
    ) -> Result<Self, String> {
        let authenticator = Authenticator::after(
            app,
            state.credentials().clone(),
            previous.map(|p| &p.authenticator),
            cluster,
        )?;
        let login =
            crate::login::Login::new(app, state, previous.and_then(|p| p.login.as_deref()))?;
        let router = Router::new(
            app.functions
                .iter()
                .map(|f| (f.route.clone(), f.methods.clone())),
        );
        let meter = if app.limits.metering {
            // Issue 18: triggered functions are metered too, after the
            // routed ones (their limits are the manifest's, as loaded).
            let limits: Vec<_> = functions
                .iter()
                .map(|f| f.limits())
                .chain(app.triggered.iter().map(|t| &t.function.limits))
                .collect();
            match previous.and_then(|p| p.meter.as_ref()) {
                Some(meter) => Some(meter.successor(app, &limits)),
                None => Some(
                    Meter::new(app, &limits, state)
                        .map_err(|e| format!("cannot open the meter: {e}"))?,
                ),
            }
        } else {
            None
        };
        let functions = functions
            .into_iter()
            .zip(&app.functions)
            .enumerate()
            .map(|(index, (function, spec))| {
                let before = previous.and_then(|p| p.slot(function.name()));
                let limits = function.limits();
                let bounds = (
                    limits.max_concurrent_requests,
                    limits.max_outstanding_requests,
                    limits.max_outstanding_per_caller,
                );
                let gate = match before {
                    Some(slot) if slot.bounds() == bounds => slot.gate.clone(),
                    _ => Gate::new(bounds.0, bounds.1, bounds.2),
                };
                let limiter = match (before, &limits.rate_limit) {
                    (Some(slot), Some(rate))
                        if slot.function.limits().rate_limit.as_ref() == Some(rate) =>
                    {
                        slot.limiter.clone()
                    }
                    (_, rate) => rate.as_ref().map(|r| {
                        let scope = format!("fn:{}", function.name());
                        Arc::new(Limiter::new(r, &scope, cluster))
                    }),
                };
                FunctionSlot {
                    index,
                    route: spec.route.to_string(),
                    rules: validate::Rules::new(&spec.input),
                    access: spec.access.clone(),
                    client_cert_required: spec.client_cert_required,
                    gate,
                    limiter,
                    function,
                }
            })
            .collect();
        Ok(Self {
            hostnames: app.hostnames.clone(),
            router,
            functions,
            authenticator,
            login,
            meter,
        })
    }

    fn slot(&self, name: &str) -> Option<&FunctionSlot> {
        self.functions.iter().find(|s| s.function.name() == name)
    }
}

impl FunctionSlot {
    fn bounds(&self) -> (u32, u32, u32) {
        let limits = self.function.limits();
        (
            limits.max_concurrent_requests,
            limits.max_outstanding_requests,
            limits.max_outstanding_per_caller,
        )
    }
}

/// The settings a live deploy may not change (T19): they shape the
/// listener, the process-wide gates and state every version shares. A
/// bundle changing one is refused whole, naming each, never half-applied.
pub(crate) struct Fixed {
    settings: Vec<(&'static str, String)>,
}

impl Fixed {
    pub(crate) fn of(app: &App) -> Self {
        let stores: Vec<String> = app
            .stores
            .iter()
            .map(|s| match &s.kind {
                bulkhead_manifest::StoreKind::Kv {
                    scope,
                    retention,
                    personal_data,
                } => format!("{} kv {scope:?} {retention:?} {personal_data}", s.name),
                bulkhead_manifest::StoreKind::Sql {
                    retention,
                    personal_data,
                    ..
                } => format!("{} sql {retention:?} {personal_data}", s.name),
            })
            .collect();
        // Files by their path in the app: a version's files live elsewhere.
        let here = app.manifest_path.parent().unwrap_or(&app.dir);
        let rel = |path: &std::path::Path| {
            path.strip_prefix(here)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        let tls = match &app.tls {
            None => "none".to_string(),
            Some(bulkhead_manifest::Tls::TerminatedUpstream { reason }) => {
                format!("terminated upstream: {reason}")
            }
            Some(bulkhead_manifest::Tls::Listener(listener)) => format!(
                "cert {} key {} client_ca {:?} hsts {:?}",
                rel(&listener.cert),
                rel(&listener.key),
                listener.client_ca.as_deref().map(rel),
                listener.hsts
            ),
        };
        Self {
            settings: vec![
                ("[app] name", app.name.clone()),
                ("[tls] (the listener's TLS)", tls),
                ("the environment", app.env.clone()),
                (
                    "[limits] (listener, connections, app-wide gates)",
                    format!("{:?}", app.limits),
                ),
                ("[limits] dynamic_throttle", format!("{:?}", app.throttle)),
                (
                    "failed-authentication back-off",
                    format!(
                        "{} {:?}",
                        app.failed_auth_per_minute, app.auth_backoff_decay
                    ),
                ),
                ("[telemetry]", format!("{:?}", app.telemetry)),
                // Where `backend` is written is no setting (outside review:
                // a line added above `[cluster]` refused every deploy).
                ("[cluster]", {
                    let mut cluster = app.cluster.clone();
                    cluster.backend_location = None;
                    format!("{cluster:?}")
                }),
                ("[audit] max_size", format!("{:?}", app.audit_max_size)),
                (
                    "the declared stores (names, kinds, scope, retention; migrations may change)",
                    stores.join(", "),
                ),
                // Issue 18: the runner runs the triggered functions the
                // server started with; a live deploy cannot switch them.
                (
                    "triggered functions and queues (issue 18: triggers, their functions and [queue.*])",
                    format!(
                        "{:?} {:?}",
                        app.triggered
                            .iter()
                            .map(|t| (
                                &t.function.name,
                                t.trigger.describe(),
                                rel(&t.function.component),
                                t.function.digest,
                                format!("{:?} {:?}", t.function.limits, t.function.grants),
                            ))
                            .collect::<Vec<_>>(),
                        app.queues
                    ),
                ),
            ],
        }
    }

    /// Each restart-only setting `app` changes, as a problem with its fix.
    pub(crate) fn changes(&self, app: &App) -> Vec<String> {
        let next = Self::of(app);
        self.settings
            .iter()
            .zip(&next.settings)
            .filter(|(now, then)| now.1 != then.1)
            .map(|(now, _)| {
                format!(
                    "{} differs from the running version's: it can only change with a restart (`bulkhead serve`), not a live deploy; deploy without that change, or restart the server on the new app",
                    now.0
                )
            })
            .collect()
    }
}
