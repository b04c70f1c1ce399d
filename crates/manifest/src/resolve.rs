//! From the manifest as written to a validated [`App`]: defaults applied,
//! environment overlaid, every value checked, every problem collected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component as PathPart, Path, PathBuf};

use toml::Spanned;

use crate::grants::{Grants, OutboundRule};
use crate::input;
use crate::problem::{Collector, Problems};
use crate::raw::{RawFunction, RawLimits, RawManifest, RawStore};
use crate::route::{RoutePattern, Shape};
use crate::stores::StoreSpec;
use crate::units::{ByteSize, Duration};
use crate::{App, AppLimits, Function, FunctionLimits, STANDARD_ENVS, defaults};

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const MIN_MEMORY: ByteSize = ByteSize::mib(1);
const MAX_MEMORY: ByteSize = ByteSize::mib(4096);
const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// hyper cannot read a request head into a smaller buffer than this.
const MIN_HEADER_BYTES: ByteSize = ByteSize::kib(8);

pub(crate) fn resolve(
    app_dir: &Path,
    manifest_path: &Path,
    source: &str,
    env: &str,
    raw: RawManifest,
) -> Result<App, Problems> {
    let mut out = Collector::new(manifest_path, source);

    check_name(&mut out, "app name", &raw.app.name);
    for (name, section) in &raw.env {
        if !crate::valid_env_name(name) {
            out.at(
                Some(section.span()),
                format!("environment name `{name}` must be lowercase letters, digits or `-`, like `staging`"),
            );
        }
    }

    let overlay = raw.env.get(env).map(Spanned::get_ref);
    let limits = match overlay {
        Some(overlay) => raw.limits.overlaid(&overlay.limits),
        None if STANDARD_ENVS.contains(&env) => raw.limits.clone(),
        None => {
            let mut known: Vec<&str> = STANDARD_ENVS.to_vec();
            known.extend(raw.env.keys().map(String::as_str));
            out.at(
                None,
                format!(
                    "environment `{env}` is not declared; use one of {} or add an `[env.{env}]` section",
                    known.join(", ")
                ),
            );
            raw.limits.clone()
        }
    };
    let app_limits = app_limits(&mut out, &limits);
    let pricing = crate::cost::resolve_pricing(&mut out, &raw.pricing);
    let throttle = crate::traffic::resolve_throttle(&mut out, limits.dynamic_throttle.as_ref());
    let mut budget = match &limits.budget {
        Some(raw) => crate::cost::resolve_budget(
            &mut out,
            "`[limits]`",
            raw.get_ref(),
            &pricing,
            Some(crate::cost::defaults::APP_PER_CALLER_SHARE),
        ),
        None => {
            let mut budget = crate::cost::Budget {
                total: crate::cost::Limits {
                    money: Some(crate::cost::defaults::APP_PER_DAY),
                    ..Default::default()
                },
                ..Default::default()
            };
            budget.share_per_caller(crate::cost::defaults::APP_PER_CALLER_SHARE);
            budget
        }
    };
    let jwt = raw
        .auth
        .jwt
        .as_ref()
        .and_then(|jwt| crate::auth::resolve_jwt(&mut out, app_dir, jwt));
    let jwt_configured = raw.auth.jwt.is_some();
    let login = raw
        .auth
        .login
        .as_ref()
        .and_then(|login| crate::login::resolve(&mut out, login));
    let failed_auth_per_minute = positive(
        &mut out,
        "failed_attempts_per_minute",
        raw.auth.failed_attempts_per_minute.as_ref(),
        crate::auth::defaults::FAILED_ATTEMPTS_PER_MINUTE,
    );
    let auth_backoff_decay = raw
        .auth
        .backoff_decay
        .as_ref()
        .map_or(crate::auth::defaults::BACKOFF_DECAY, |d| *d.get_ref());
    let telemetry = match overlay {
        Some(overlay) => raw.telemetry.overlaid(&overlay.telemetry),
        None => raw.telemetry.clone(),
    };
    let telemetry = crate::telemetry::resolve(&mut out, raw.app.name.get_ref(), &telemetry);
    let audit = match overlay {
        Some(overlay) => raw.audit.overlaid(&overlay.audit),
        None => raw.audit.clone(),
    };
    let audit_max_size = crate::audit::resolve(&mut out, &audit);
    let tls = match overlay {
        Some(overlay) => raw.tls.overlaid(&overlay.tls),
        None => raw.tls.clone(),
    };
    let dev = env == crate::DEFAULT_ENV;
    let tls = crate::tls::resolve(&mut out, app_dir, &tls, dev);
    let client_ca = tls
        .as_ref()
        .and_then(|t| t.listener())
        .is_some_and(|l| l.client_ca.is_some());

    let cluster = match overlay {
        Some(overlay) => raw.cluster.overlaid(&overlay.cluster),
        None => raw.cluster.clone(),
    };
    let cluster = crate::cluster::resolve(&mut out, &cluster);

    let hostnames = raw
        .app
        .hostnames
        .as_ref()
        .map(|list| hostnames(&mut out, list));

    let stores = crate::stores::resolve_stores(&mut out, app_dir, &raw.store);
    let queues = crate::queues::resolve(&mut out, &raw.queue);
    let config = crate::stores::resolve_config(&mut out, &raw.config);
    let accepted = crate::accept::resolve(&mut out, &raw.accept);
    let trust = match overlay {
        Some(overlay) => raw.trust.overlaid(&overlay.trust),
        None => raw.trust.clone(),
    };
    let signers = crate::trust::resolve(&mut out, app_dir, trust.signers.as_ref());
    let lock = match crate::Lock::read(app_dir) {
        Ok(lock) => lock,
        Err(message) => {
            let file = app_dir.join(crate::LOCK_FILE);
            out.in_file(&file, None, format!("`{}` {message}", crate::LOCK_FILE));
            None
        }
    };
    let shared = Shared {
        lock: lock.as_ref(),
        stores: &stores,
        raw_stores: &raw.store,
        queues: &queues,
        config: &config,
        strict_imports: raw.app.strict_imports.unwrap_or(false),
        pricing: &pricing,
        dev,
        client_ca,
    };

    let mut functions = Vec::new();
    let mut triggered = Vec::new();
    let mut names = HashSet::new();
    for spanned in &raw.function {
        let f = spanned.get_ref();
        if !names.insert(f.name.get_ref().clone()) {
            out.at(
                Some(f.name.span()),
                format!(
                    "function name `{}` is used twice; names must be unique",
                    f.name.get_ref()
                ),
            );
        }
        // Issue 18: HTTP-routed or triggered, never both.
        let trigger = f.trigger.as_ref().map(|t| {
            crate::triggers::check_not_routed(&mut out, f, t.span());
            crate::triggers::resolve(&mut out, f.name.get_ref(), t, &queues)
        });
        if let Some(function) = function(
            &mut out,
            app_dir,
            &limits,
            &app_limits,
            jwt_configured,
            &shared,
            f,
        ) {
            match trigger {
                None => functions.push((spanned.span(), function)),
                Some(Some(trigger)) => {
                    triggered.push((spanned.span(), crate::Triggered { function, trigger }));
                }
                Some(None) => {}
            }
        }
    }
    crate::triggers::finish(&mut out, &mut triggered, &queues);
    if raw.function.is_empty() {
        out.at(
            None,
            "the app has no functions; add a `[[function]]` with `name`, `component` and `route`",
        );
    }
    check_route_conflicts(&mut out, &functions);
    if !app_limits.metering {
        // Budgets are kept by the meter: without it, none can hold (T04).
        let budgeted = limits.budget.as_ref().map(Spanned::span).or_else(|| {
            raw.function
                .iter()
                .find_map(|f| f.get_ref().budget.as_ref().map(Spanned::span))
        });
        if let Some(span) = budgeted {
            out.at(
                Some(span),
                "a `budget` needs metering; remove `metering = false` from `[limits]` or the budget",
            );
        }
        budget = crate::cost::Budget::default();
    }

    // Sign-in at the gateway (issue 15, T12): the session, in the cookie or
    // as a bearer token (`mode=token`), is the gateway's credential; no
    // function may be handed it to replay (outside review: `authorization`
    // was let through).
    if login.is_some() {
        for (span, function) in &functions {
            for header in ["cookie", "authorization"] {
                if function.input.headers.iter().any(|h| h == header) {
                    out.at(
                        Some(span.clone()),
                        format!(
                            "function `{}`: with [auth.login] the `{header}` header carries the sign-in session; it cannot be let through to a function",
                            function.name
                        ),
                    );
                }
            }
        }
    }
    if !out.problems.is_empty() {
        return Err(Problems(out.problems));
    }
    Ok(App {
        name: raw.app.name.into_inner(),
        dir: app_dir.to_path_buf(),
        manifest_path: manifest_path.to_path_buf(),
        env: env.to_string(),
        limits: app_limits,
        jwt,
        login,
        failed_auth_per_minute,
        auth_backoff_decay,
        functions: functions.into_iter().map(|(_, f)| f).collect(),
        triggered: triggered.into_iter().map(|(_, t)| t).collect(),
        queues,
        telemetry,
        throttle,
        pricing,
        budget,
        stores,
        config,
        strict_imports: raw.app.strict_imports.unwrap_or(false),
        hostnames,
        audit_max_size,
        tls,
        accepted,
        signers,
        lock,
        cluster,
        lines: crate::SourceLines::default(),
    })
}

/// `[app] hostnames`: host names or IP addresses as a client writes them
/// in `Host`, without port; kept in canonical form (T10).
fn hostnames(out: &mut Collector<'_>, list: &Spanned<Vec<Spanned<String>>>) -> Vec<String> {
    if list.get_ref().is_empty() {
        out.at(
            Some(list.span()),
            "`hostnames` is empty, so no request could be served; list the names clients use, like [\"api.example.com\"], or remove the key to accept any",
        );
    }
    let mut names = Vec::new();
    for entry in list.get_ref() {
        match crate::hosts::canonical_host(entry.get_ref()) {
            Some(name) if !names.contains(&name) => names.push(name),
            Some(_) => {}
            None => out.at(
                Some(entry.span()),
                format!(
                    "`{}` is not a host name; write a name like `api.example.com`, an IPv4 address or an IPv6 address in brackets like `[::1]`, without port, scheme or trailing dot",
                    entry.get_ref()
                ),
            ),
        }
    }
    names
}

fn check_name(out: &mut Collector<'_>, what: &str, name: &Spanned<String>) {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        out.at(
            Some(name.span()),
            format!("{what} must be 1 to 63 lowercase letters, digits or `-`, like `hello-world`"),
        );
    }
}

fn positive(out: &mut Collector<'_>, key: &str, value: Option<&Spanned<u32>>, default: u32) -> u32 {
    match value {
        Some(v) if *v.get_ref() == 0 => {
            out.at(Some(v.span()), format!("`{key}` must be at least 1"));
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    }
}

/// `max_outstanding_per_caller`: at least 1, at most the gate's bound.
fn caller_share(
    out: &mut Collector<'_>,
    key: &str,
    value: Option<&Spanned<u32>>,
    max_outstanding: u32,
    default: u32,
) -> u32 {
    let share = positive(out, key, value, default.max(1));
    if share > max_outstanding {
        out.at(
            value.map(Spanned::span),
            format!("`{key}` ({share}) is a share of `max_outstanding_requests` ({max_outstanding}), so it cannot be above it"),
        );
    }
    share.min(max_outstanding)
}

fn app_limits(out: &mut Collector<'_>, raw: &RawLimits) -> AppLimits {
    let max_concurrent_requests = positive(
        out,
        "max_concurrent_requests",
        raw.max_concurrent_requests.as_ref(),
        defaults::MAX_CONCURRENT_REQUESTS,
    );
    let max_outstanding_requests = positive(
        out,
        "max_outstanding_requests",
        raw.max_outstanding_requests.as_ref(),
        defaults::MAX_OUTSTANDING_REQUESTS,
    );
    if max_outstanding_requests < max_concurrent_requests {
        let span = raw.max_outstanding_requests.as_ref().map(Spanned::span);
        out.at(
            span,
            format!(
                "`max_outstanding_requests` ({max_outstanding_requests}) counts running and queued requests, so it cannot be below `max_concurrent_requests` ({max_concurrent_requests})"
            ),
        );
    }
    // One caller's share of the outstanding places (T02): a quarter unless set.
    let max_outstanding_per_caller = caller_share(
        out,
        "max_outstanding_per_caller",
        raw.max_outstanding_per_caller.as_ref(),
        max_outstanding_requests,
        max_outstanding_requests.div_ceil(defaults::CALLER_SHARE_DIVISOR),
    );
    let max_header_bytes = raw
        .max_header_bytes
        .as_ref()
        .map_or(defaults::MAX_HEADER_BYTES, |v| *v.get_ref());
    if max_header_bytes < MIN_HEADER_BYTES {
        let span = raw.max_header_bytes.as_ref().map(Spanned::span);
        out.at(
            span,
            format!("`max_header_bytes` must be at least {MIN_HEADER_BYTES}"),
        );
    }
    let max_connections = positive(
        out,
        "max_connections",
        raw.max_connections.as_ref(),
        defaults::MAX_CONNECTIONS,
    );
    let rate_limit = match &raw.rate_limit {
        Some(r) => crate::traffic::resolve_rate_limit(out, "`[limits] rate_limit`", r.get_ref()),
        None => Some(crate::traffic::defaults::RATE_LIMIT),
    };
    AppLimits {
        rate_limit,
        trusted_proxies: crate::traffic::resolve_proxies(
            out,
            raw.trusted_proxies.as_ref(),
            raw.forwarded_header.as_ref(),
        ),
        metering: raw.metering.as_ref().is_none_or(|m| *m.get_ref()),
        max_concurrent_requests,
        max_outstanding_requests,
        max_outstanding_per_caller,
        max_instances: positive(
            out,
            "max_instances",
            raw.max_instances.as_ref(),
            defaults::MAX_INSTANCES,
        ),
        max_connections,
        max_connections_per_address: per_address(out, raw, max_connections),
        header_read_timeout: raw
            .header_read_timeout
            .unwrap_or(defaults::HEADER_READ_TIMEOUT),
        body_read_timeout: raw.body_read_timeout.unwrap_or(defaults::BODY_READ_TIMEOUT),
        max_header_bytes: max_header_bytes.max(MIN_HEADER_BYTES),
        max_headers: positive(
            out,
            "max_headers",
            raw.max_headers.as_ref(),
            defaults::MAX_HEADERS,
        ),
        max_event_depth: crate::queues::resolve_depth(out, raw.max_event_depth.as_ref()),
        max_event_messages: crate::queues::resolve_chain_messages(
            out,
            raw.max_event_messages.as_ref(),
        ),
    }
}

/// `max_connections_per_address`, at most `max_connections`; by default a
/// small share of it (T01): see [`defaults::connections_per_address`].
fn per_address(out: &mut Collector<'_>, raw: &RawLimits, max_connections: u32) -> u32 {
    let default = defaults::connections_per_address(max_connections);
    let value = positive(
        out,
        "max_connections_per_address",
        raw.max_connections_per_address.as_ref(),
        default,
    );
    if value > max_connections {
        let span = raw.max_connections_per_address.as_ref().map(Spanned::span);
        out.at(
            span,
            format!(
                "`max_connections_per_address` ({value}) cannot be above `max_connections` ({max_connections})"
            ),
        );
        return default;
    }
    value
}

/// A function's value, else the app-wide `[limits]` default, else the built-in one.
fn pick<T: Copy>(
    own: &Option<Spanned<T>>,
    app: &Option<Spanned<T>>,
    builtin: T,
) -> (T, Option<std::ops::Range<usize>>) {
    match (own, app) {
        (Some(v), _) | (None, Some(v)) => (*v.get_ref(), Some(v.span())),
        (None, None) => (builtin, None),
    }
}

/// App-wide sections a function's grants refer to.
struct Shared<'a> {
    /// `bulkhead.lock`, whose entry a `digest =` must agree with (T18).
    lock: Option<&'a crate::Lock>,
    stores: &'a [StoreSpec],
    raw_stores: &'a BTreeMap<Spanned<String>, Spanned<RawStore>>,
    /// `[queue.*]`, which `grants.queues` and queue triggers name.
    queues: &'a [crate::QueueSpec],
    config: &'a BTreeMap<String, String>,
    strict_imports: bool,
    pricing: &'a crate::cost::Pricing,
    /// The environment is `dev`: only there may a grant name `localhost`.
    dev: bool,
    /// `[tls] client_ca` is set, so a route may require a client certificate.
    client_ca: bool,
}

fn function(
    out: &mut Collector<'_>,
    app_dir: &Path,
    app: &RawLimits,
    app_limits: &AppLimits,
    jwt_configured: bool,
    shared: &Shared<'_>,
    f: &RawFunction,
) -> Option<Function> {
    let name = f.name.get_ref();
    check_name(out, "function name", &f.name);
    let before = out.problems.len();

    let component = app_file(
        out,
        app_dir,
        &f.component,
        &format!("function `{name}`: component"),
        "build it first or fix the path",
    );

    let digest = f.digest.as_ref().and_then(|d| match parse_digest(d.get_ref()) {
        Some(bytes) => Some(bytes),
        None => {
            out.at(
                Some(d.span()),
                format!("function `{name}`: `digest` must be `sha256:` followed by 64 hex digits (run `sha256sum` on the component)"),
            );
            None
        }
    });

    // T18: the lock and a `digest =` pin must say the same.
    let locked = component
        .as_ref()
        .and_then(|path| crate::trust::app_relative(app_dir, path))
        .and_then(|file| Some((shared.lock?.get(&file).copied()?, file)));
    if let (Some(pin), Some((lock, file)), Some(d)) = (digest, &locked, &f.digest)
        && pin != *lock
    {
        out.at(
            Some(d.span()),
            format!(
                "function `{name}`: `digest` says sha256:{} but `{}` pins `{file}` to sha256:{}; after review, fix the `digest` line or run `bulkhead lock APP_DIR`",
                hex::encode(pin),
                crate::LOCK_FILE,
                hex::encode(lock)
            ),
        );
    }

    // A triggered function is posted its events on an internal route
    // that no router holds (issue 18).
    let route = match (&f.route, &f.trigger) {
        (Some(route), _) => RoutePattern::parse(route.get_ref())
            .map_err(|e| out.at(Some(route.span()), format!("function `{name}`: {e}")))
            .ok(),
        (None, Some(_)) => RoutePattern::parse(crate::triggers::INTERNAL_ROUTE).ok(),
        (None, None) => {
            out.at(
                Some(f.name.span()),
                format!("function `{name}` has no `route`; add `route = \"/path\"` to serve it over HTTP, or a `trigger` (`{{ schedule = \"0 */5 * * * *\" }}`, `{{ every = \"30s\" }}` or `{{ queue = \"NAME\" }}`) to run it on events"),
            );
            None
        }
    };

    let input = input::resolve(out, app_dir, name, route.as_ref(), &f.input);

    let methods = match &f.methods {
        None if f.trigger.is_some() => vec!["POST".to_string()],
        None => defaults::METHODS.iter().map(|m| m.to_string()).collect(),
        Some(list) => {
            let mut seen = Vec::new();
            for m in list.get_ref() {
                let upper = m.to_ascii_uppercase();
                if !METHODS.contains(&upper.as_str()) {
                    out.at(
                        Some(list.span()),
                        format!(
                            "function `{name}`: method `{m}` is not one of {}",
                            METHODS.join(", ")
                        ),
                    );
                } else if !seen.contains(&upper) {
                    seen.push(upper);
                }
            }
            if list.get_ref().is_empty() {
                out.at(
                    Some(list.span()),
                    format!(
                        "function `{name}`: `methods` is empty; list at least one, like [\"GET\"]"
                    ),
                );
            }
            seen
        }
    };

    let (timeout, timeout_span) = pick(&f.timeout, &app.timeout, defaults::TIMEOUT);
    if timeout > MAX_TIMEOUT {
        out.at(
            timeout_span,
            format!("function `{name}`: `timeout` may be at most {MAX_TIMEOUT}"),
        );
    }
    let (memory, memory_span) = pick(&f.memory, &app.memory, defaults::MEMORY);
    if memory < MIN_MEMORY || memory > MAX_MEMORY {
        out.at(
            memory_span,
            format!("function `{name}`: `memory` must be between {MIN_MEMORY} and {MAX_MEMORY}"),
        );
    }
    // `input.max_body` is the body cap; `max_request_body` its older alias.
    let own_max_body = input::max_body(out, name, &f.input.max_body, &f.max_request_body)
        .map(|(value, span)| Spanned::new(span, value));
    let (max_request_body, _) = pick(
        &own_max_body,
        &app.max_request_body,
        defaults::MAX_REQUEST_BODY,
    );
    let (max_response_body, _) = pick(
        &f.max_response_body,
        &app.max_response_body,
        defaults::MAX_RESPONSE_BODY,
    );
    let (max_outbound_bytes, _) = pick(
        &f.max_outbound_bytes,
        &app.max_outbound_bytes,
        defaults::MAX_OUTBOUND_BYTES,
    );
    let what = format!("function `{name}`");
    let rate_limit = f
        .rate_limit
        .as_ref()
        .and_then(|r| crate::traffic::resolve_rate_limit(out, &what, r.get_ref()));
    let budget = f
        .budget
        .as_ref()
        .map(|b| crate::cost::resolve_budget(out, &what, b.get_ref(), shared.pricing, None))
        .unwrap_or_default();

    // A function's admission bounds default to, and may not exceed, the app's.
    let max_concurrent_requests = positive(
        out,
        "max_concurrent_requests",
        f.max_concurrent_requests.as_ref(),
        app_limits.max_concurrent_requests,
    );
    let max_outstanding_requests = positive(
        out,
        "max_outstanding_requests",
        f.max_outstanding_requests.as_ref(),
        app_limits
            .max_outstanding_requests
            .max(max_concurrent_requests),
    );
    if max_outstanding_requests < max_concurrent_requests {
        let span = f.max_outstanding_requests.as_ref().map(Spanned::span);
        out.at(
            span,
            format!("function `{name}`: `max_outstanding_requests` ({max_outstanding_requests}) cannot be below `max_concurrent_requests` ({max_concurrent_requests})"),
        );
    }

    // A function's own bound gets its own quarter; an inherited one, the
    // app's per-caller share (T02).
    let default_share = if f.max_outstanding_requests.is_some() {
        max_outstanding_requests.div_ceil(defaults::CALLER_SHARE_DIVISOR)
    } else {
        app_limits.max_outstanding_per_caller
    };
    let max_outstanding_per_caller = caller_share(
        out,
        "max_outstanding_per_caller",
        f.max_outstanding_per_caller.as_ref(),
        max_outstanding_requests,
        default_share.min(max_outstanding_requests),
    );

    let access = crate::auth::resolve_access(
        out,
        name,
        f.auth.as_ref(),
        f.scopes.as_ref(),
        jwt_configured,
    );

    let public_reason = resolve_public_reason(out, name, &access, f.public_reason.as_ref());

    let mut outbound = Vec::new();
    for entry in &f.grants.outbound {
        match OutboundRule::parse(entry.get_ref()) {
            // T17/T19: `localhost` means this machine's loopback, which only
            // a developer's own machine should reach by name.
            Ok(rule) if rule.host.is_localhost() && !shared.dev => out.at(
                Some(entry.span()),
                format!(
                    "function `{name}`: outbound entry `{}` names `localhost`, which means this machine's loopback and is allowed only in `dev`; grant the real host the function calls in this environment (e.g. `https://api.example.com`), or run in `dev`",
                    entry.get_ref()
                ),
            ),
            // Twice the same origin (`https://h` and `https://h:443`) would
            // be two findings with one identity in every report (T21).
            Ok(rule) if outbound.contains(&rule) => out.at(
                Some(entry.span()),
                format!(
                    "function `{name}`: outbound entry `{}` grants `{rule}` again; list each origin once",
                    entry.get_ref()
                ),
            ),
            Ok(rule) => outbound.push(rule),
            Err(e) => out.at(Some(entry.span()), format!("function `{name}`: {e}")),
        }
    }

    let client_cert_required =
        crate::tls::client_cert(out, name, f.client_cert.as_ref(), shared.client_ca);

    let stored = crate::stores::resolve_grants(
        out,
        name,
        &f.grants,
        shared.stores,
        shared.raw_stores,
        shared.config,
    );

    let queues = crate::queues::resolve_grants(out, name, &f.grants.queues, shared.queues);

    if out.problems.len() > before {
        return None;
    }
    Some(Function {
        name: name.clone(),
        component: component?,
        digest,
        locked: locked.map(|(digest, _)| digest),
        route: route?,
        methods,
        limits: FunctionLimits {
            timeout,
            memory,
            max_concurrent_requests,
            max_outstanding_requests,
            max_outstanding_per_caller,
            max_request_body,
            max_response_body,
            max_outbound_bytes,
            rate_limit,
        },
        grants: Grants {
            outbound,
            kv: stored.kv,
            sql: stored.sql,
            secrets: stored.secrets,
            config: stored.config,
            queues,
        },
        access,
        public_reason,
        input: input?,
        budget,
        strict_imports: f.strict_imports.unwrap_or(shared.strict_imports),
        client_cert_required,
    })
}

/// `public_reason = "…"`: plain text saying why anyone may call the
/// route, and only on a public route (T19).
fn resolve_public_reason(
    out: &mut Collector<'_>,
    name: &str,
    access: &crate::Access,
    reason: Option<&Spanned<String>>,
) -> Option<String> {
    let reason = reason?;
    let text = reason.get_ref().trim();
    if !access.is_public() {
        out.at(
            Some(reason.span()),
            format!("function `{name}`: `public_reason` explains a public route, but this one requires a credential; remove `public_reason` or set `auth = \"public\"`"),
        );
    } else if text.is_empty() || text.len() > 500 || text.chars().any(crate::text::is_hidden) {
        out.at(
            Some(reason.span()),
            format!("function `{name}`: `public_reason` must say in plain text (1 to 500 characters, no control characters) why anyone may call this route"),
        );
    }
    Some(text.to_string())
}

/// A file named in the manifest: inside the app directory, existing.
pub(crate) fn app_file(
    out: &mut Collector<'_>,
    app_dir: &Path,
    value: &Spanned<String>,
    what: &str,
    fix: &str,
) -> Option<PathBuf> {
    let text = value.get_ref();
    let relative = Path::new(text);
    if relative.is_absolute()
        || relative
            .components()
            .any(|p| matches!(p, PathPart::ParentDir))
    {
        out.at(
            Some(value.span()),
            format!("{what} `{text}` must be a path inside the app directory, without `..`"),
        );
        return None;
    }
    let path = app_dir.join(relative);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Some(path),
        // T18, T05: a device, FIFO or socket planted where a file belongs.
        Ok(_) => {
            out.at(
                Some(value.span()),
                format!("{what} file `{text}` is not a regular file (a device, FIFO, socket or directory); {fix}"),
            );
            None
        }
        Err(_) => {
            out.at(
                Some(value.span()),
                format!("{what} file `{text}` does not exist; {fix}"),
            );
            None
        }
    }
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let hex_digits = text.strip_prefix("sha256:")?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
    Some(bytes)
}

/// Two functions whose routes match the same paths with a common method
/// would make routing depend on file order: refuse it.
fn check_route_conflicts(
    out: &mut Collector<'_>,
    functions: &[(std::ops::Range<usize>, Function)],
) {
    let mut seen: HashMap<Vec<Shape<'_>>, Vec<&Function>> = HashMap::new();
    for (span, f) in functions {
        let shape = f.route.shape();
        let others = seen.entry(shape).or_default();
        for other in others.iter() {
            if let Some(method) = f.methods.iter().find(|m| other.methods.contains(m)) {
                out.at(
                    Some(span.clone()),
                    format!(
                        "functions `{}` and `{}` both serve {method} on routes that match the same paths (`{}`, `{}`); change one route or split the methods",
                        other.name, f.name, other.route, f.route
                    ),
                );
            }
        }
        others.push(f);
    }
}
