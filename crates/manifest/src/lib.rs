//! `bulkhead.toml` -> a validated app model.
//!
//! The manifest is the whole deployment (T19): every function, its route and
//! its limits. Unknown keys and bad values are errors that name the file,
//! the line and what would be valid; [`load`] reports every problem at once.

mod accept;
mod audit;
pub mod auth;
pub mod cluster;
pub mod cost;
pub mod files;
pub mod grants;
pub mod hosts;
pub mod input;
mod lines;
pub mod lock;
pub mod login;
mod problem;
pub mod queues;
mod raw;
mod resolve;
pub mod route;
pub mod stores;
pub mod strict;
pub mod supply;
mod telemetry;
pub mod text;
pub mod tls;
pub mod traffic;
pub mod triggers;
pub mod trust;
pub mod units;

use std::path::{Path, PathBuf};

pub use accept::AcceptedRisk;
pub use auth::{Access, CredentialKind, JweSettings, JwtKeys, JwtSettings};
pub use cluster::{Backend, Cluster};
pub use cost::{Budget, Pricing};
pub use grants::{Grants, OutboundRule, SqlGrant, StoreAccess};
pub use input::{BodySchema, Input, Param, Pattern};
pub use lines::SourceLines;
pub use lock::{LOCK_FILE, Lock};
pub use problem::{Problem, Problems};
pub use queues::{QueueGrant, QueueSpec};
pub use route::RoutePattern;
pub use stores::{Scope, StoreKind, StoreSpec};
pub use tls::{Tls, TlsListener};
pub use traffic::{RateLimit, Throttle, TrustedProxies};
pub use triggers::{Overlap, Trigger, Triggered};
pub use trust::{Signed, Signers, TrustError};
pub use units::{ByteSize, Duration};

/// The manifest's file name inside an app directory.
pub const MANIFEST_FILE: &str = "bulkhead.toml";

/// The environment used when none is named.
pub const DEFAULT_ENV: &str = "dev";

/// Environments that exist without being declared in `[env.*]`.
pub const STANDARD_ENVS: &[&str] = &["dev", "staging", "prod"];

/// A validated app, for one environment.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub dir: PathBuf,
    pub manifest_path: PathBuf,
    pub env: String,
    pub limits: AppLimits,
    /// `[auth.jwt]`, when the app trusts a token issuer.
    pub jwt: Option<JwtSettings>,
    /// `[auth.login]`, when the gateway signs callers in (issue 15).
    pub login: Option<login::LoginSettings>,
    /// Failed authentications per client address per minute before back-off.
    pub failed_auth_per_minute: u32,
    /// One failed-authentication strike is forgiven per this much time (T03).
    pub auth_backoff_decay: Duration,
    /// The HTTP-routed functions: the only ones the gateway routes to.
    pub functions: Vec<Function>,
    /// Functions run by a schedule or a queue (issue 18), never routed.
    pub triggered: Vec<Triggered>,
    /// `[queue.NAME]` sections (issue 18).
    pub queues: Vec<QueueSpec>,
    /// Trace export, when `[telemetry]` names an endpoint.
    pub telemetry: Option<Telemetry>,
    /// Shedding under overload, unless `dynamic_throttle.enabled = false`.
    pub throttle: Option<Throttle>,
    /// What calls cost (`[pricing]`).
    pub pricing: Pricing,
    /// App-wide daily spend limits (`[limits] budget`).
    pub budget: Budget,
    /// `[store.NAME]` sections (T13/T14).
    pub stores: Vec<StoreSpec>,
    /// `[config]`: plain values a function reads through `wasi:config`
    /// when its grants name them.
    pub config: std::collections::BTreeMap<String, String>,
    /// `[app] strict_imports`: the default of every function's (T18).
    pub strict_imports: bool,
    /// `[app] hostnames`, canonical ([`hosts::canonical_host`]): the only
    /// hosts a request may name; `None` accepts any well-formed host (T10).
    pub hostnames: Option<Vec<String>>,
    /// `[audit] max_size`: past 80 % of it the audit writer warns, at 100 %
    /// it only counts events (T09).
    pub audit_max_size: ByteSize,
    /// `[tls]`: how the public listener is encrypted (T15); `None` for
    /// plain HTTP, which `serve` allows on loopback, or anywhere in `dev`.
    pub tls: Option<Tls>,
    /// `[[accept]]`: findings of the threat model accepted, with a reason.
    pub accepted: Vec<AcceptedRisk>,
    /// `[trust] signers`: the keys a component's signature must come
    /// from (T18); empty when not set.
    pub signers: Signers,
    /// `bulkhead.lock`, when the app has one (T18).
    pub lock: Option<Lock>,
    /// `[cluster]`: where shared state lives with several nodes (issue 16).
    pub cluster: Cluster,
    /// Where each setting is written, for reports (T21).
    pub lines: SourceLines,
}

impl App {
    /// Whether this is the development environment, where a few
    /// conveniences (an outbound `localhost` grant) are allowed.
    pub fn is_dev(&self) -> bool {
        self.env == DEFAULT_ENV
    }

    /// Every function, HTTP-routed then triggered: what is verified,
    /// pinned and compiled (T18) whichever way it is run.
    pub fn all_functions(&self) -> impl Iterator<Item = &Function> {
        self.functions
            .iter()
            .chain(self.triggered.iter().map(|t| &t.function))
    }

    /// [`App::all_functions`], to be changed (a digest filled in).
    pub fn all_functions_mut(&mut self) -> impl Iterator<Item = &mut Function> {
        self.functions
            .iter_mut()
            .chain(self.triggered.iter_mut().map(|t| &mut t.function))
    }

    /// The declared queue called `name`.
    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// The declared store called `name`.
    pub fn store(&self, name: &str) -> Option<&StoreSpec> {
        self.stores.iter().find(|s| s.name == name)
    }

    /// The component of `function`, relative to the app directory and
    /// `/`-separated: the name its lock entry and signature carry.
    pub fn component_name(&self, function: &Function) -> String {
        trust::app_relative(&self.dir, &function.component)
            .unwrap_or_else(|| function.component.display().to_string())
    }

    /// Where this app keeps state for its environment (compile cache, data).
    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.dir, &self.env)
    }
}

/// Where the app in `app_dir` keeps state for `env`: each environment has
/// its own data, keys and audit trail (T19).
pub fn state_dir(app_dir: &Path, env: &str) -> PathBuf {
    app_dir.join(".bulkhead").join(env)
}

/// Environment names are path components: lowercase letters, digits, `-`.
pub fn valid_env_name(env: &str) -> bool {
    !env.is_empty()
        && env.len() <= 32
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// App-wide bounds (T01).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLimits {
    /// Requests per caller across the app; `None` when `per_caller = "off"`.
    pub rate_limit: Option<RateLimit>,
    /// Proxies whose forwarding headers name the real client (T02).
    pub trusted_proxies: TrustedProxies,
    /// Every invocation is metered (and budgets enforced) unless `false`.
    pub metering: bool,
    /// Requests running at once across all functions.
    pub max_concurrent_requests: u32,
    /// Requests running or queued across all functions; beyond it: 429.
    pub max_outstanding_requests: u32,
    /// Of those, the most one caller may hold (T02); default a quarter.
    pub max_outstanding_per_caller: u32,
    /// Live WebAssembly instances at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Open client connections at once.
    pub max_connections: u32,
    /// Open connections at once from one client address (IPv6: one /64),
    /// so one address cannot take every connection (T01). Connections from
    /// a trusted proxy are not capped by it: they carry many clients.
    pub max_connections_per_address: u32,
    /// Time a client has to send a request's headers (slowloris); also how
    /// long an idle keep-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_read_timeout: Duration,
    /// Largest request head (request line plus headers).
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request.
    pub max_headers: u32,
    /// Hops of one causal chain of events (HTTP call → message → call →
    /// message …) before it is stopped and dead-lettered (issue 18, T04).
    pub max_event_depth: u32,
    /// Messages one causal chain (everything one HTTP call or schedule run
    /// sets off, through every hop) may send in all: depth bounds hops,
    /// this bounds width, so fan-out cannot multiply the bill (issue 18,
    /// T04).
    pub max_event_messages: u32,
}

/// Export of one span per request over OTLP/HTTP (T08).
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// The collector's OTLP/HTTP base URL, without a trailing `/`.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans: the app name unless set.
    pub service_name: String,
    /// Share of new traces recorded, 0.0 to 1.0; a continued trace follows
    /// its caller's sampled flag.
    pub sample_ratio: f64,
    /// Where the manifest sets `otlp_endpoint` (1-based line and column).
    pub location: Option<(usize, usize)>,
}

impl Telemetry {
    /// Where spans are posted: the endpoint's `/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.otlp_endpoint)
    }
}

/// One function: a component served on a route, sealed in its limits.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub component: PathBuf,
    /// Expected SHA-256 of the component, when the manifest pins one (T18).
    pub digest: Option<[u8; 32]>,
    /// The component's SHA-256 in `bulkhead.lock`, when listed there (T18).
    pub locked: Option<[u8; 32]>,
    pub route: RoutePattern,
    pub methods: Vec<String>,
    pub limits: FunctionLimits,
    pub grants: Grants,
    /// Who may call it (T11); authenticated unless `auth = "public"`.
    pub access: Access,
    /// `public_reason`: why a public route is public (required outside
    /// `dev`, T19).
    pub public_reason: Option<String>,
    /// What a well-formed request looks like (T10).
    pub input: Input,
    /// Daily spend limits of this function (T04).
    pub budget: Budget,
    /// Refuse the component if it imports a capability interface that its
    /// grants do not enable (T18); the function's value, else `[app]`'s.
    pub strict_imports: bool,
    /// `client_cert = "required"`: a caller without a certificate verified
    /// against `[tls] client_ca` is refused (401) before anything else (T15).
    pub client_cert_required: bool,
}

/// Per-call bounds of one function (T01, T05).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Wall-clock limit of one call; beyond it the guest is stopped (504).
    pub timeout: Duration,
    /// Linear memory one instance may use.
    pub memory: ByteSize,
    /// Calls of this function running at once.
    pub max_concurrent_requests: u32,
    /// Calls running or queued; beyond it: 429 at once.
    pub max_outstanding_requests: u32,
    /// Of those, the most one caller may hold (T02); default a quarter.
    pub max_outstanding_per_caller: u32,
    /// The body cap: `input.max_body` (or its alias `max_request_body`).
    pub max_request_body: ByteSize,
    pub max_response_body: ByteSize,
    /// Bytes one call may send and receive over outbound HTTP (T17, T04).
    pub max_outbound_bytes: ByteSize,
    /// Requests per caller to this function; `None` when not set.
    pub rate_limit: Option<RateLimit>,
}

/// Built-in defaults, used where neither `[limits]` nor the function says.
pub mod defaults {
    use super::{ByteSize, Duration};

    pub const MAX_CONCURRENT_REQUESTS: u32 = 64;
    pub const MAX_OUTSTANDING_REQUESTS: u32 = 256;
    /// A caller's default share of the outstanding places (T02): one
    /// caller can never hold more than this part of a gate.
    pub const CALLER_SHARE_DIVISOR: u32 = 4;
    pub const MAX_INSTANCES: u32 = 256;
    pub const MAX_CONNECTIONS: u32 = 1024;
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_HEADER_BYTES: ByteSize = ByteSize::kib(16);
    pub const MAX_HEADERS: u32 = 64;
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    pub const MEMORY: ByteSize = ByteSize::mib(128);
    pub const MAX_REQUEST_BODY: ByteSize = ByteSize::mib(1);
    pub const MAX_RESPONSE_BODY: ByteSize = ByteSize::mib(6);
    pub const MAX_OUTBOUND_BYTES: ByteSize = ByteSize::mib(16);
    pub const METHODS: &[&str] = &["GET"];

    /// Connections one client address may hold (T01): a sixteenth of
    /// `max_connections` (64 of the default 1024), at least 8. Enough for
    /// a NAT'd office of browsers (about 6 connections each) or a client's
    /// connection pool, yet one address alone holds at most 1/16 of the
    /// listener; it takes 16 addresses to fill it instead of one.
    pub const fn connections_per_address(max_connections: u32) -> u32 {
        let share = max_connections / 16;
        let floor = if share > 8 { share } else { 8 };
        if floor < max_connections {
            floor
        } else {
            max_connections
        }
    }
    /// The audit trail's size budget (`[audit] max_size`).
    pub const AUDIT_MAX_SIZE: ByteSize = ByteSize::mib(1024);
}

/// Read and validate `APP_DIR/bulkhead.toml` for environment `env`.
pub fn load(app_dir: &Path, env: &str) -> Result<App, Problems> {
    let manifest_path = app_dir.join(MANIFEST_FILE);
    // Bounded (T18, T05): a manifest that is /dev/zero or a FIFO is refused.
    let source = files::read_bounded_text(&manifest_path, files::MAX_TEXT_BYTES).map_err(|e| {
        Problems(vec![Problem {
            file: manifest_path.clone(),
            location: None,
            message: format!(
                "cannot read the manifest ({e}); an app directory holds a `{MANIFEST_FILE}`"
            ),
        }])
    })?;
    parse(app_dir, &manifest_path, &source, env)
}

/// Validate manifest text as if it were read from `manifest_path`.
pub fn parse(
    app_dir: &Path,
    manifest_path: &Path,
    source: &str,
    env: &str,
) -> Result<App, Problems> {
    let raw: raw::RawManifest = toml::from_str(source).map_err(|e| {
        let location = e
            .span()
            .map(|span| problem::line_and_column(source, span.start));
        Problems(vec![Problem {
            file: manifest_path.to_path_buf(),
            location,
            message: e.message().trim().to_string(),
        }])
    })?;
    let lines = lines::map(source, &raw, env);
    let mut app = resolve::resolve(app_dir, manifest_path, source, env, raw)?;
    app.lines = lines;
    Ok(app)
}
