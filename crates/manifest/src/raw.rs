//! The manifest exactly as written: serde structs that refuse unknown keys.
//! `crate::resolve` turns them into the validated [`crate::App`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::cost::{RawBudget, RawPricing};
use crate::traffic::{RawRateLimit, RawThrottle};
use crate::units::{ByteSize, Duration};

/// `Section::overlaid(&self, overlay)`: the section with every key that
/// `overlay` sets replaced, for a section whose keys are all optional.
macro_rules! overlaid {
    ($section:ident { $($key:ident),* $(,)? }) => {
        impl $section {
            pub fn overlaid(&self, overlay: &$section) -> $section {
                $section {
                    $($key: overlay.$key.clone().or_else(|| self.$key.clone()),)*
                }
            }
        }
    };
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub app: RawApp,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// `[audit]`: the audit trail's size budget (T09).
    #[serde(default)]
    pub audit: RawAudit,
    /// `[tls]`: encryption on the public listener (T15).
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub function: Vec<Spanned<RawFunction>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<RawEnv>>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub pricing: RawPricing,
    /// `[store.NAME]`: key-value and SQL stores (T13/T14).
    #[serde(default)]
    pub store: BTreeMap<Spanned<String>, Spanned<RawStore>>,
    /// `[config]`: plain app-wide values read through `wasi:config`.
    #[serde(default)]
    pub config: BTreeMap<Spanned<String>, Spanned<String>>,
    /// `[[accept]]`: risks the threat model reports as accepted (T21).
    #[serde(default)]
    pub accept: Vec<Spanned<RawAccept>>,
    /// `[trust]`: the keys whose signatures components need (T18).
    #[serde(default)]
    pub trust: RawTrust,
    /// `[cluster]`: shared state for several nodes (issue 16).
    #[serde(default)]
    pub cluster: RawCluster,
    /// `[queue.NAME]`: queues functions send to and are triggered by (issue 18).
    #[serde(default)]
    pub queue: BTreeMap<Spanned<String>, Spanned<crate::queues::RawQueue>>,
}

/// `[cluster]` as written (issue 16). `database_url` is read only to be
/// refused with a clear problem: it never belongs in the manifest.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub backend: Option<Spanned<String>>,
    pub redis_url: Option<Spanned<String>>,
    pub redis_url_file: Option<Spanned<String>>,
    pub database_url: Option<Spanned<toml::Value>>,
    pub database_url_file: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub fallback_nodes: Option<Spanned<u32>>,
    pub check_timeout: Option<Spanned<Duration>>,
}

overlaid!(RawCluster {
    backend,
    redis_url,
    redis_url_file,
    database_url,
    database_url_file,
    key_prefix,
    fallback_nodes,
    check_timeout,
});

/// `[trust]` as written: minisign public key files, relative to the app.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrust {
    pub signers: Option<Spanned<Vec<Spanned<String>>>>,
}

overlaid!(RawTrust { signers });

/// `[[accept]]` as written: a finding of the threat model, its target and
/// why it is accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccept {
    pub rule: Spanned<String>,
    pub target: Option<Spanned<String>>,
    pub reason: Spanned<String>,
}

/// `[store.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub kind: Spanned<String>,
    pub scope: Option<Spanned<String>>,
    pub retention: Option<Spanned<Duration>>,
    pub personal_data: Option<bool>,
    pub migrations: Option<Spanned<String>>,
}

/// `sql = { NAME = "read" }` or `sql = { NAME = { access = "read", statements = [..] } }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSqlGrant {
    Access(String),
    Table(RawSqlGrantTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSqlGrantTable {
    pub access: String,
    pub statements: Option<Vec<String>>,
}

/// `[auth]`: how callers authenticate (T11).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub jwt: Option<Spanned<RawJwt>>,
    /// `[auth.login]`: sign-in at the gateway (issue 15).
    pub login: Option<Spanned<crate::login::RawLogin>>,
    pub failed_attempts_per_minute: Option<Spanned<u32>>,
    /// One back-off strike is forgiven per this much time (T03).
    pub backoff_decay: Option<Spanned<Duration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    pub issuer: Spanned<String>,
    pub audience: Spanned<String>,
    pub jwks: Option<Spanned<String>>,
    /// Inline public keys (JWKs as TOML tables), instead of a JWKS file.
    pub keys: Option<Spanned<Vec<toml::Value>>>,
    pub algorithms: Spanned<Vec<String>>,
    pub leeway: Option<Spanned<Duration>>,
    pub max_token_lifetime: Option<Spanned<Duration>>,
    pub decryption_key: Option<Spanned<String>>,
    pub decryption_algorithm: Option<Spanned<String>>,
}

/// `auth = "public"`, `auth = "jwt"` or `auth = ["jwt", "session"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawAccess {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub name: Spanned<String>,
    /// Refuse components importing a capability they were not granted (T18).
    pub strict_imports: Option<bool>,
    /// The host names requests may name in `Host` (T10); any when unset.
    pub hostnames: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[limits]`: app-wide bounds and the defaults every function inherits.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    // App-wide admission (T01).
    pub max_concurrent_requests: Option<Spanned<u32>>,
    pub max_outstanding_requests: Option<Spanned<u32>>,
    /// Places one caller may hold of `max_outstanding_requests` (T02).
    pub max_outstanding_per_caller: Option<Spanned<u32>>,
    pub max_instances: Option<Spanned<u32>>,
    // Listener hygiene (T01: slowloris, oversized requests).
    pub max_connections: Option<Spanned<u32>>,
    pub max_connections_per_address: Option<Spanned<u32>>,
    pub header_read_timeout: Option<Duration>,
    pub body_read_timeout: Option<Duration>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    pub max_headers: Option<Spanned<u32>>,
    // Per-function defaults (T05).
    pub timeout: Option<Spanned<Duration>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub max_request_body: Option<Spanned<ByteSize>>,
    pub max_response_body: Option<Spanned<ByteSize>>,
    pub max_outbound_bytes: Option<Spanned<ByteSize>>,
    // Floods and the bill (T01-T04).
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub forwarded_header: Option<Spanned<String>>,
    pub dynamic_throttle: Option<Spanned<RawThrottle>>,
    pub metering: Option<Spanned<bool>>,
    pub budget: Option<Spanned<RawBudget>>,
    /// Hops of one causal chain of events before it is stopped (issue 18, T04).
    pub max_event_depth: Option<Spanned<u32>>,
    /// Messages one causal chain of events may send in all (issue 18, T04).
    pub max_event_messages: Option<Spanned<u32>>,
}

overlaid!(RawLimits {
    max_concurrent_requests,
    max_outstanding_requests,
    max_outstanding_per_caller,
    max_instances,
    max_connections,
    max_connections_per_address,
    header_read_timeout,
    body_read_timeout,
    max_header_bytes,
    max_headers,
    timeout,
    memory,
    max_request_body,
    max_response_body,
    max_outbound_bytes,
    rate_limit,
    trusted_proxies,
    forwarded_header,
    dynamic_throttle,
    metering,
    budget,
    max_event_depth,
    max_event_messages,
});

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFunction {
    pub name: Spanned<String>,
    pub component: Spanned<String>,
    pub digest: Option<Spanned<String>>,
    /// Required unless the function has a `trigger` (then refused).
    pub route: Option<Spanned<String>>,
    /// `trigger = { schedule | every | queue = ... }` (issue 18).
    pub trigger: Option<Spanned<crate::triggers::RawTrigger>>,
    pub methods: Option<Spanned<Vec<String>>>,
    pub timeout: Option<Spanned<Duration>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub max_concurrent_requests: Option<Spanned<u32>>,
    pub max_outstanding_requests: Option<Spanned<u32>>,
    pub max_outstanding_per_caller: Option<Spanned<u32>>,
    pub max_request_body: Option<Spanned<ByteSize>>,
    pub max_response_body: Option<Spanned<ByteSize>>,
    pub max_outbound_bytes: Option<Spanned<ByteSize>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub budget: Option<Spanned<RawBudget>>,
    #[serde(default)]
    pub grants: RawGrants,
    pub auth: Option<Spanned<RawAccess>>,
    /// Why a public route is public; required outside `dev` (T19).
    pub public_reason: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub input: RawInput,
    pub strict_imports: Option<bool>,
    /// `client_cert = "required"`: only callers with a verified client
    /// certificate (mTLS, `[tls] client_ca`) reach it (T11, T15).
    pub client_cert: Option<Spanned<String>>,
}

/// `input.*`: what a well-formed request to this function looks like (T10).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    #[serde(default)]
    pub path: BTreeMap<String, Spanned<RawParam>>,
    #[serde(default)]
    pub query: BTreeMap<String, Spanned<RawParam>>,
    pub allow_unknown_query: Option<bool>,
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    pub content_types: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_body: Option<Spanned<ByteSize>>,
    pub body_schema: Option<Spanned<String>>,
}

/// `input.query.NAME = "PATTERN"`, or `= true` for the default pattern.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawParam {
    Pattern(String),
    Declared(bool),
}

/// `grants = { ... }`: capabilities, none unless named (T16).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrants {
    #[serde(default)]
    pub outbound: Vec<Spanned<String>>,
    #[serde(default)]
    pub kv: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub sql: BTreeMap<Spanned<String>, Spanned<RawSqlGrant>>,
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub config: Vec<Spanned<String>>,
    /// `queues = { NAME = "send" }` (issue 18): read by hand for errors
    /// that name the valid keys.
    #[serde(default)]
    pub queues: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

/// `[telemetry]`: optional export of one span per request over OTLP (T08).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    pub otlp_endpoint: Option<Spanned<String>>,
    pub service_name: Option<Spanned<String>>,
    pub sample_ratio: Option<Spanned<f64>>,
}

overlaid!(RawTelemetry {
    otlp_endpoint,
    service_name,
    sample_ratio,
});

/// `[audit]`: the audit trail's size budget (T09).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub max_size: Option<Spanned<ByteSize>>,
}

overlaid!(RawAudit { max_size });

/// `[tls]`: the public listener's certificate, key and client CA (T15).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub client_ca: Option<Spanned<String>>,
    pub hsts: Option<Spanned<String>>,
    pub terminated_upstream: Option<Spanned<String>>,
}

overlaid!(RawTls {
    cert,
    key,
    client_ca,
    hsts,
    terminated_upstream,
});

/// `[env.NAME]`: what changes in one environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnv {
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub trust: RawTrust,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub cluster: RawCluster,
}
