//! The manifest exactly as written: serde structs that refuse unknown keys.
//! `crate::resolve` turns them into the validated [`crate::App`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::units::{ByteSize, Duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub app: RawApp,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub function: Vec<Spanned<RawFunction>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<RawEnv>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub name: Spanned<String>,
}

/// `[limits]`: app-wide bounds and the defaults every function inherits.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    // App-wide admission (T01).
    pub max_concurrent_requests: Option<Spanned<u32>>,
    pub max_outstanding_requests: Option<Spanned<u32>>,
    pub max_instances: Option<Spanned<u32>>,
    // Listener hygiene (T01: slowloris, oversized requests).
    pub max_connections: Option<Spanned<u32>>,
    pub header_read_timeout: Option<Duration>,
    pub body_read_timeout: Option<Duration>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    pub max_headers: Option<Spanned<u32>>,
    // Per-function defaults (T05).
    pub timeout: Option<Spanned<Duration>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub max_request_body: Option<Spanned<ByteSize>>,
    pub max_response_body: Option<Spanned<ByteSize>>,
}

impl RawLimits {
    /// `self` with every key that `overlay` sets replaced.
    pub fn overlaid(&self, overlay: &RawLimits) -> RawLimits {
        let o = overlay.clone();
        let b = self.clone();
        RawLimits {
            max_concurrent_requests: o.max_concurrent_requests.or(b.max_concurrent_requests),
            max_outstanding_requests: o.max_outstanding_requests.or(b.max_outstanding_requests),
            max_instances: o.max_instances.or(b.max_instances),
            max_connections: o.max_connections.or(b.max_connections),
            header_read_timeout: o.header_read_timeout.or(b.header_read_timeout),
            body_read_timeout: o.body_read_timeout.or(b.body_read_timeout),
            max_header_bytes: o.max_header_bytes.or(b.max_header_bytes),
            max_headers: o.max_headers.or(b.max_headers),
            timeout: o.timeout.or(b.timeout),
            memory: o.memory.or(b.memory),
            max_request_body: o.max_request_body.or(b.max_request_body),
            max_response_body: o.max_response_body.or(b.max_response_body),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFunction {
    pub name: Spanned<String>,
    pub component: Spanned<String>,
    pub digest: Option<Spanned<String>>,
    pub route: Spanned<String>,
    pub methods: Option<Spanned<Vec<String>>>,
    pub timeout: Option<Spanned<Duration>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub max_concurrent_requests: Option<Spanned<u32>>,
    pub max_outstanding_requests: Option<Spanned<u32>>,
    pub max_request_body: Option<Spanned<ByteSize>>,
    pub max_response_body: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub grants: RawGrants,
    #[serde(default)]
    pub input: RawInput,
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
}

/// `[env.NAME]`: what changes in one environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnv {
    #[serde(default)]
    pub limits: RawLimits,
}
