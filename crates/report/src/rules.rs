//! STRIDE per element: each rule looks at one kind of element and says
//! whether the threat it names is mitigated (and by what line or built-in
//! control) or open (how bad, and the exact fix). `[[accept]]` then marks
//! open findings accepted. Every rule is tied to a threat of the catalogue.

use bulkhead_manifest::grants::{HostPattern, Scheme};
use bulkhead_manifest::triggers::{Overlap, Trigger, Triggered};
use bulkhead_manifest::{Access, App, Function, StoreSpec};
use bulkhead_runtime::egress::{self, Reach};
use bulkhead_runtime::imports::{self, Capability, ImportKind};

use crate::ComponentFacts;
use crate::derive::{budget_of, fn_id, origin_id, rate_limit_of, relative, store_id};
use crate::model::{Severity, Status, Stride, Threat};

/// One kind of finding: its stable id (SARIF `ruleId`, `[[accept]] rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub threat_id: &'static str,
    pub stride: Stride,
    /// One line: what the rule checks.
    pub summary: &'static str,
}

macro_rules! rules {
    ($($name:ident = $id:literal, $tid:literal, $stride:ident, $summary:literal;)*) => {
        $(const $name: Rule = Rule { id: $id, threat_id: $tid, stride: Stride::$stride, summary: $summary };)*
        /// Every rule, in report order.
        pub const RULES: &[Rule] = &[$($name),*];
    };
}

rules! {
    PLAIN_HTTP = "plain-http", "T15", InformationDisclosure, "Requests and responses cross the network in clear";
    ANY_HOST = "any-host", "T10", Spoofing, "Requests may name any host";
    THROTTLE_OFF = "throttle-off", "T02", DenialOfService, "No shedding when the host is overloaded";
    AUDIT = "audit-trail", "T09", Repudiation, "Security events can be denied or rewritten";
    CORRELATION = "correlation", "T08", Repudiation, "What happened cannot be followed across the system";
    TOKEN_LIFETIME = "token-lifetime", "T12", Spoofing, "Stolen tokens stay valid for long";
    ADMIN = "admin-listener", "T17", ElevationOfPrivilege, "The admin surface is reachable by callers";
    TELEMETRY_CLEAR = "telemetry-in-clear", "T15", InformationDisclosure, "Spans leave the host in clear";
    PUBLIC_ROUTE = "public-route", "T11", Spoofing, "Anyone may call the route";
    NO_SCOPES = "no-scopes", "T11", ElevationOfPrivilege, "Any authenticated caller may change data";
    RATE_LIMIT_OFF = "rate-limit-off", "T03", DenialOfService, "One caller may send without limit";
    NO_BUDGET = "no-budget", "T04", DenialOfService, "Calls can run up the bill without limit (Denial of Wallet)";
    ADMISSION = "admission", "T01", DenialOfService, "A flood of requests exhausts the function";
    INPUT = "input-validation", "T10", Tampering, "Malformed input reaches the function";
    RUNAWAY = "runaway-code", "T05", ElevationOfPrivilege, "Hostile or buggy code runs unbounded or escapes";
    UNPINNED = "unpinned-component", "T18", Tampering, "A swapped component would be served";
    LOOSE_IMPORTS = "loose-imports", "T18", ElevationOfPrivilege, "A component reaches for more than it is granted";
    UNUSED_GRANT = "unused-grant", "T16", ElevationOfPrivilege, "A grant the component cannot use";
    SQL_ANY = "sql-any-statement", "T06", Tampering, "Any SQL statement may be run";
    SECRETS = "secret-access", "T14", InformationDisclosure, "Secrets leak through the environment or logs";
    OUTBOUND = "wide-outbound", "T17", ElevationOfPrivilege, "A function reaches more of the network than it needs";
    RETENTION = "personal-data-retention", "T20", InformationDisclosure, "Personal data is kept for ever";
    SHARED_PERSONAL = "personal-data-shared", "T13", InformationDisclosure, "One caller may read another's personal data";
    AT_REST = "store-encryption", "T15", InformationDisclosure, "Stored data is readable on disk";
    EVENT_LOOP = "event-loop", "T04", DenialOfService, "A chain of events triggers itself and runs up the bill";
    STALE_ACCEPT = "stale-acceptance", "T21", Repudiation, "An accepted risk no longer matches a finding";
}

/// How a function is reached: by its route, or by a schedule or a queue
/// (issue 18), with no network path to it.
#[derive(Clone, Copy)]
enum Reached {
    Route,
    Trigger,
}

enum Outcome {
    /// The control, and where it is set.
    Mitigated(String),
    /// The finding, as a title, and the exact fix.
    Open(String, String),
}

struct Findings<'a> {
    app: &'a App,
    threats: Vec<Threat>,
}

impl Findings<'_> {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        rule: Rule,
        element: &str,
        target: &str,
        key: &str,
        severity: Severity,
        title: String,
        outcome: Outcome,
        line: Option<usize>,
    ) {
        let (status, title, detail) = match outcome {
            Outcome::Mitigated(control) => (Status::Mitigated, title, control),
            Outcome::Open(finding, fix) => (Status::Open, finding, fix),
        };
        let accept_as = if key.is_empty() {
            target.to_string()
        } else {
            format!("{target}:{key}")
        };
        let id = format!("{}:{accept_as}", rule.id);
        self.threats.push(Threat {
            id,
            rule: rule.id,
            threat_id: rule.threat_id,
            stride: rule.stride,
            element: element.into(),
            target: target.into(),
            accept_as,
            title,
            status,
            severity,
            detail,
            line: line.or_else(|| self.app.lines.get("app")),
        });
    }

    fn line(&self, keys: &[&str]) -> Option<usize> {
        self.app.lines.first(keys)
    }
}

/// At `line N` of the manifest, or `built in` when nothing is written.
fn at(line: Option<usize>) -> String {
    line.map_or("built in".into(), |l| format!("bulkhead.toml line {l}"))
}

pub(crate) fn threats(app: &App, components: &[ComponentFacts]) -> Vec<Threat> {
    let mut f = Findings {
        app,
        threats: Vec::new(),
    };
    app_wide(&mut f);
    for (function, facts) in app.functions.iter().zip(components) {
        per_function(&mut f, function, facts, Reached::Route);
    }
    // Triggered functions' facts follow the routed ones' (issue 18).
    let triggered_facts = components.get(app.functions.len()..).unwrap_or(&[]);
    for (triggered, facts) in app.triggered.iter().zip(triggered_facts) {
        per_function(&mut f, &triggered.function, facts, Reached::Trigger);
    }
    for triggered in &app.triggered {
        events(&mut f, triggered);
    }
    for store in &app.stores {
        per_store(&mut f, store);
    }
    accept(&mut f);
    f.threats
}

fn app_wide(f: &mut Findings<'_>) {
    let app = f.app;
    let name = app.name.as_str();
    let proxies = !app.limits.trusted_proxies.is_empty();
    let severity = if app.is_dev() {
        Severity::Low
    } else {
        Severity::Medium
    };
    let outcome = match &app.tls {
        Some(bulkhead_manifest::Tls::Listener(_)) => Outcome::Mitigated(format!(
            "the gateway terminates TLS 1.2/1.3 itself, with HSTS ({})",
            at(f.line(&["tls.cert"]))
        )),
        Some(bulkhead_manifest::Tls::TerminatedUpstream { .. }) => Outcome::Mitigated(format!(
            "a proxy on this host terminates TLS; outside `dev` the gateway listens on loopback only ({})",
            at(f.line(&["tls.terminated_upstream"]))
        )),
        None if proxies => Outcome::Mitigated(format!(
            "requests come through the trusted proxies, which terminate TLS ({})",
            at(f.line(&["limits.trusted_proxies"]))
        )),
        None => Outcome::Open(
            "the public listener speaks plain HTTP".into(),
            "add `[tls]` with `cert` and `key`, or put a TLS-terminating proxy in front, \
             list it in `[limits] trusted_proxies` and say so with `[tls] terminated_upstream`"
                .into(),
        ),
    };
    f.add(
        PLAIN_HTTP,
        "gateway",
        name,
        "",
        severity,
        "eavesdropping on requests and responses".into(),
        outcome,
        f.line(&[
            "tls.cert",
            "tls.terminated_upstream",
            "limits.trusted_proxies",
        ]),
    );

    let outcome = match &app.hostnames {
        Some(hosts) => Outcome::Mitigated(format!(
            "only {} may be named in `Host` ({})",
            hosts.join(", "),
            at(f.line(&["app.hostnames"]))
        )),
        None => Outcome::Open(
            "requests may name any `Host`".into(),
            "list the names the app is served under: `[app] hostnames = [\"api.example.com\"]`"
                .into(),
        ),
    };
    f.add(
        ANY_HOST,
        "gateway",
        name,
        "",
        Severity::Low,
        "requests naming a host the app does not serve".into(),
        outcome,
        f.line(&["app.hostnames", "app"]),
    );

    let outcome = match &app.throttle {
        Some(t) => Outcome::Mitigated(format!(
            "past cpu {:.0}%, memory {:.0}% or in-flight {:.0}% new work is shed, heaviest callers first (built in)",
            t.cpu * 100.0,
            t.memory * 100.0,
            t.in_flight * 100.0
        )),
        None => Outcome::Open(
            "no shedding when the host is overloaded (`dynamic_throttle` off)".into(),
            "remove the `dynamic_throttle = { enabled = false }` at this line (in `[limits]` or the environment's `[env.NAME.limits]`)".into(),
        ),
    };
    f.add(
        THROTTLE_OFF,
        "gateway",
        name,
        "",
        Severity::Medium,
        "overload of the host".into(),
        outcome,
        f.line(&["limits.dynamic_throttle"]),
    );

    f.add(
        AUDIT,
        "audit",
        name,
        "",
        Severity::High,
        "the record of security events".into(),
        Outcome::Mitigated(format!(
            "a hash-chained audit trail of refusals, grants used and administration, \
             checked by `bulkhead audit verify`; {} budget (built in)",
            app.audit_max_size
        )),
        None,
    );
    let export = match &app.telemetry {
        Some(t) => format!(", spans exported to {}", t.traces_url()),
        None => String::new(),
    };
    f.add(
        CORRELATION,
        "gateway",
        name,
        "",
        Severity::Medium,
        "following one request through the system".into(),
        Outcome::Mitigated(format!(
            "a W3C `traceparent` correlation ID on every request, passed to the function, its \
             outbound calls, every log line and audit record{export} (built in)"
        )),
        f.line(&["telemetry.otlp_endpoint"]),
    );
    if let Some(jwt) = &app.jwt {
        let lifetime = jwt.max_token_lifetime.get();
        let outcome = if lifetime <= std::time::Duration::from_secs(3600) {
            Outcome::Mitigated(format!(
                "JWTs live at most {} ({}), algorithms {}",
                jwt.max_token_lifetime,
                at(f.line(&["auth.jwt.max_token_lifetime", "auth.jwt"])),
                jwt.algorithms.join(", ")
            ))
        } else {
            Outcome::Open(
                format!("JWTs may live {}", jwt.max_token_lifetime),
                "set `[auth.jwt] max_token_lifetime = \"15m\"` (an hour at most)".into(),
            )
        };
        f.add(
            TOKEN_LIFETIME,
            "gateway",
            name,
            "",
            Severity::Low,
            "replay of a stolen token".into(),
            outcome,
            f.line(&["auth.jwt.max_token_lifetime", "auth.jwt"]),
        );
    }
    f.add(
        ADMIN,
        "operator",
        name,
        "",
        Severity::Medium,
        "the admin listener".into(),
        Outcome::Mitigated(
            "metrics and health are on a separate listener (loopback by default), never on the \
             public one; outside `dev` it needs an admin token (built in)"
                .into(),
        ),
        None,
    );
    if let Some(t) = &app.telemetry
        && let Some(rest) = strip_prefix_ignore_case(&t.otlp_endpoint, "http://")
    {
        let loopback = is_loopback_authority(rest);
        let outcome = if loopback {
            Outcome::Mitigated("the collector is on this machine's loopback".into())
        } else {
            Outcome::Open(
                "spans go to the collector in clear".into(),
                "send spans over HTTPS: `otlp_endpoint = \"https://…\"`".into(),
            )
        };
        f.add(
            TELEMETRY_CLEAR,
            "telemetry",
            name,
            "",
            Severity::Medium,
            "spans read on the way to the collector".into(),
            outcome,
            f.line(&["telemetry.otlp_endpoint"]),
        );
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Whether `host[:port][/path]` names this machine: `localhost` exactly or
/// a loopback address, not a name that merely starts like one
/// (`localhost.evil.example`, `127.0.0.1.nip.io`).
fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How bad a public route is: what the function can reach.
fn public_severity(app: &App, function: &Function) -> Severity {
    let g = &function.grants;
    let admin = function
        .route
        .as_str()
        .split('/')
        .any(|segment| segment.eq_ignore_ascii_case("admin"));
    let writes = g.stores().any(|(_, access)| access.can_write());
    let personal = g
        .stores()
        .any(|(s, _)| app.store(s).is_some_and(StoreSpec::personal_data));
    if admin || writes || personal || !g.secrets.is_empty() {
        Severity::High
    } else if g.kv.is_empty() && g.sql.is_empty() && g.outbound.is_empty() && g.config.is_empty() {
        Severity::Low
    } else {
        Severity::Medium
    }
}

/// What only a routed function faces: callers from the network (T11, T03).
fn callers(f: &mut Findings<'_>, function: &Function, element: &str, route: &str) {
    let app = f.app;
    let name = function.name.as_str();
    let element = element.to_string();
    let key = |k: &str| format!("function.{name}.{k}");

    // Spoofing (T11).
    let public = function.access.is_public();
    let severity = public_severity(app, function);
    let auth_line = f.line(&[&key("auth"), &key("route")]);
    let outcome = match &function.access {
        Access::Public => Outcome::Open(
            format!("route `{route}` is public"),
            format!(
                "require a credential: `auth = \"jwt\"` (or `\"session\"`, `\"api-key\"`) with `scopes`; \
             if anyone may call `{route}`, record why with `[[accept]] rule = \"public-route\", target = \"{name}\"`"
            ),
        ),
        Access::Authenticated { kinds, scopes } => Outcome::Mitigated(format!(
            "callers present {}{} ({})",
            kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            if scopes.is_empty() {
                String::new()
            } else {
                format!(" holding scopes {}", scopes.join(" "))
            },
            at(auth_line)
        )),
    };
    f.add(
        PUBLIC_ROUTE,
        &element,
        name,
        "",
        severity,
        format!("a caller of `{route}` posing as someone else"),
        outcome,
        auth_line,
    );

    if let Access::Authenticated { scopes, .. } = &function.access {
        let writes: Vec<&str> = function
            .grants
            .stores()
            .filter(|(_, access)| access.can_write())
            .map(|(store, _)| store)
            .collect();
        if !writes.is_empty() {
            let outcome = if scopes.is_empty() {
                Outcome::Open(
                    format!(
                        "any authenticated caller may write {} through `{route}`",
                        writes.join(", ")
                    ),
                    format!("add `scopes = [\"…\"]` to `{name}`"),
                )
            } else {
                Outcome::Mitigated(format!(
                    "callers need scopes {} ({})",
                    scopes.join(" "),
                    at(f.line(&[&key("scopes")]))
                ))
            };
            f.add(
                NO_SCOPES,
                &element,
                name,
                "",
                Severity::Low,
                format!("who may write through `{route}`"),
                outcome,
                f.line(&[&key("scopes"), &key("auth")]),
            );
        }
    }

    // Denial of service and of wallet (T01, T03, T04).
    // The line that sets the limit in force: the function's own, else
    // `[limits]` (also when the function's says "off").
    let rate_line = if function.limits.rate_limit.is_some() {
        f.line(&[&key("rate_limit"), "limits.rate_limit"])
    } else {
        f.line(&["limits.rate_limit", &key("rate_limit")])
    };
    let outcome = if function.limits.rate_limit.is_none() && app.limits.rate_limit.is_none() {
        Outcome::Open(
            format!("`{route}` has no per-caller rate limit"),
            format!(
                "`rate_limit = \"off\"` in `[limits]` and `{name}` sets none: give it `rate_limit = {{ per_caller = \"10/s\", burst = 20 }}`"
            ),
        )
    } else {
        Outcome::Mitigated(format!(
            "{} ({})",
            rate_limit_of(app, function),
            at(rate_line)
        ))
    };
    let severity = if public {
        Severity::High
    } else {
        Severity::Medium
    };
    f.add(
        RATE_LIMIT_OFF,
        &element,
        name,
        "",
        severity,
        format!("one caller flooding `{route}`"),
        outcome,
        rate_line,
    );
}

/// Events (issue 18, T04): a chain of events that triggers itself, and a
/// schedule's runs piling up. Both are bounded by the platform; the
/// finding says by what, and what one message can cost at most.
fn events(f: &mut Findings<'_>, triggered: &Triggered) {
    let app = f.app;
    let name = triggered.function.name.as_str();
    let element = fn_id(name);
    let line = f.line(&[
        &format!("function.{name}.trigger"),
        &format!("function.{name}"),
    ]);
    match &triggered.trigger {
        Trigger::Queue { queue } => {
            let depth = app.limits.max_event_depth;
            let worst = bulkhead_gateway::worst_case(&triggered.function.limits);
            let one_call = app
                .pricing
                .cost(1, worst.gb_seconds(), worst.egress_bytes());
            let bound = format!(
                "a chain stops after {depth} hops (`max_event_depth`, {}): the message is dead-lettered, \
                 logged, audited and counted, so one message costs at most {depth} calls \
                 (at most {:.6} {} if each is `{name}`'s worst case), each metered and held to the \
                 budgets as caller `trigger:{name}`",
                at(f.line(&["limits.max_event_depth"])),
                one_call * f64::from(depth),
                app.pricing.currency
            );
            let (severity, detail) = match event_cycle(app, queue) {
                Some(cycle) => (
                    Severity::Medium,
                    format!("{} can trigger itself; {bound}", cycle.join(" → ")),
                ),
                None => (
                    Severity::Low,
                    format!("no function reached from queue `{queue}` sends back into it; {bound}"),
                ),
            };
            f.add(
                EVENT_LOOP,
                &element,
                name,
                "",
                severity,
                format!("a chain of events through queue `{queue}` running up the bill"),
                Outcome::Mitigated(detail),
                line,
            );
        }
        Trigger::Schedule { overlap, .. } | Trigger::Every { overlap, .. } => {
            let control = match overlap {
                Overlap::Skip => {
                    "`overlap = \"skip\"`: a firing while the last run still runs is skipped and counted"
                }
                Overlap::Queue => {
                    "`overlap = \"queue\"`: a firing while the last run still runs waits, at most one"
                }
            };
            f.add(
                EVENT_LOOP,
                &element,
                name,
                "",
                Severity::Low,
                format!("runs of `{name}`'s schedule piling up"),
                Outcome::Mitigated(format!("{control} ({})", at(line))),
                line,
            );
        }
    }
}

/// The queues a message of `queue` can lead to: what its consumer may
/// send to, and its dead-letter queue.
fn next_queues<'a>(app: &'a App, queue: &str) -> Vec<&'a str> {
    let mut next: Vec<&str> = app
        .triggered
        .iter()
        .filter(|t| matches!(&t.trigger, Trigger::Queue { queue: q } if q == queue))
        .flat_map(|t| t.function.grants.queues.keys().map(String::as_str))
        .collect();
    if let Some(dead) = app.queue(queue).and_then(|q| q.dead_letter.as_deref()) {
        next.push(dead);
    }
    next
}

/// A path of queues from `start` back to itself (`` `a` → `b` → `a` ``),
/// if messages can go round (breadth first: the shortest).
fn event_cycle(app: &App, start: &str) -> Option<Vec<String>> {
    let mut came_from: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut next_frontier = Vec::new();
        for queue in frontier {
            for next in next_queues(app, queue) {
                if next == start {
                    // Walk back from `queue` to `start`, then close the loop.
                    let mut path = vec![format!("`{queue}`")];
                    let mut at_queue = queue;
                    while let Some(prev) = came_from.get(at_queue) {
                        path.push(format!("`{prev}`"));
                        at_queue = prev;
                    }
                    path.reverse();
                    path.push(format!("`{start}`"));
                    return Some(path);
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next, queue);
                    next_frontier.push(next);
                }
            }
        }
        frontier = next_frontier;
    }
    None
}

fn per_function(
    f: &mut Findings<'_>,
    function: &Function,
    facts: &ComponentFacts,
    reached: Reached,
) {
    let app = f.app;
    let name = function.name.as_str();
    let element = fn_id(name);
    let routed = matches!(reached, Reached::Route);
    // A triggered function has no route: findings name it by its caller.
    let caller_name;
    let route = if routed {
        function.route.as_str()
    } else {
        caller_name = format!("trigger:{name}");
        caller_name.as_str()
    };
    let key = |k: &str| format!("function.{name}.{k}");
    let fn_line = f.line(&[&key(if routed { "route" } else { "trigger" })]);
    let public = routed && function.access.is_public();
    if routed {
        callers(f, function, &element, route);
    }
    let severity = if public {
        Severity::High
    } else {
        Severity::Medium
    };

    let budget_line = f.line(&[&key("budget"), "limits.budget", "limits.metering"]);
    let outcome = if !app.limits.metering {
        Outcome::Open(
            format!("`{route}` has no budget: metering is off"),
            "remove `metering = false` from `[limits]`: without the meter no budget holds".into(),
        )
    } else if !binds(&function.budget, &app.pricing) && !binds(&app.budget, &app.pricing) {
        let why = if function.budget.is_unlimited() && app.budget.is_unlimited() {
            String::new()
        } else {
            ": its money limits never bind, every price in `[pricing]` is 0".into()
        };
        Outcome::Open(
            format!("`{route}` has no budget{why}"),
            format!(
                "give `{name}` `budget = {{ per_day = \"5 {}\" }}` or set `[limits] budget`",
                app.pricing.currency
            ),
        )
    } else {
        Outcome::Mitigated(format!(
            "{} ({})",
            budget_of(app, function),
            at(budget_line)
        ))
    };
    f.add(
        NO_BUDGET,
        &element,
        name,
        "",
        severity,
        format!("calls to `{route}` running up the bill"),
        outcome,
        budget_line,
    );

    let l = &function.limits;
    if routed {
        f.add(
            ADMISSION,
            &element,
            name,
            "",
            Severity::High,
            format!("a flood of requests to `{route}`"),
            Outcome::Mitigated(format!(
                "at most {} running and {} outstanding, {} per caller; the rest get 429 at once; \
                 connection, header and body limits on the listener",
                l.max_concurrent_requests, l.max_outstanding_requests, l.max_outstanding_per_caller
            )),
            fn_line,
        );

        // Tampering: input (T10).
        let input = &function.input;
        let mut gaps = Vec::new();
        let takes_body = function
            .methods
            .iter()
            .any(|m| matches!(m.as_str(), "POST" | "PUT" | "PATCH"));
        if takes_body && input.body_schema.is_none() {
            gaps.push(format!(
                "`{name}` takes {} bodies without `input.body_schema`: declare a JSON Schema and `input.content_types`",
                function.methods.join("/")
            ));
        }
        if input.allow_unknown_query {
            gaps.push(format!(
                "`{name}` lets undeclared query parameters through: remove `input.allow_unknown_query`"
            ));
        }
        let outcome = if gaps.is_empty() {
            Outcome::Mitigated(format!(
                "path and query allowlists ({} rule(s)), unknown parameters refused{}, body up to {}",
                input.path.len() + input.query.len(),
                if input.body_schema.is_some() {
                    ", body checked against its JSON Schema"
                } else {
                    ""
                },
                l.max_request_body
            ))
        } else {
            Outcome::Open(
                format!("`{route}` lets unchecked input through"),
                gaps.join("; "),
            )
        };
        f.add(
            INPUT,
            &element,
            name,
            "",
            Severity::Low,
            format!("malformed input to `{route}`"),
            outcome,
            f.line(&[&key("input.body_schema"), &key("methods"), &key("route")]),
        );
    }

    f.add(
        RUNAWAY,
        &element,
        name,
        "",
        Severity::High,
        format!("runaway or hostile code in `{name}`"),
        Outcome::Mitigated(format!(
            "a fresh WebAssembly sandbox per call with no ambient authority; stopped after {}, \
             memory capped at {}, response at {}",
            l.timeout, l.memory, l.max_response_body
        )),
        f.line(&[&key("timeout"), &key("memory"), &format!("function.{name}")]),
    );

    // Tampering: the supply chain (T18): a digest pin or the lock, and
    // signatures from the app's trusted keys when it names them.
    let component = relative(app, &function.component);
    let signed = if app.signers.is_empty() {
        String::new()
    } else {
        format!(
            "; signed by a key of `[trust] signers`, verified at every deploy ({})",
            at(f.line(&["trust.signers"]))
        )
    };
    let lock_fix = "or lock every component with `bulkhead lock APP_DIR`";
    let outcome = match (&function.digest, &function.locked, &facts.digest) {
        (Some(pin), _, _) => Outcome::Mitigated(format!(
            "pinned to sha256:{}…; a changed file is refused ({}){signed}",
            &hex::encode(pin)[..12],
            at(f.line(&[&key("digest")]))
        )),
        (None, Some(locked), _) => Outcome::Mitigated(format!(
            "locked in `{}` to sha256:{}…; a changed file is refused{signed}",
            bulkhead_manifest::LOCK_FILE,
            &hex::encode(locked)[..12],
        )),
        (None, None, Some(actual)) => Outcome::Open(
            format!("component `{component}` is not pinned by digest"),
            format!("pin it: `digest = \"{actual}\"` in `{name}`, {lock_fix}"),
        ),
        (None, None, None) => Outcome::Open(
            format!("component `{component}` is not pinned by digest"),
            format!("build `{component}`, then pin it with `digest = \"sha256:…\"`, {lock_fix}"),
        ),
    };
    f.add(
        UNPINNED,
        &element,
        name,
        "",
        Severity::Medium,
        format!("a swapped component for `{name}`"),
        outcome,
        f.line(&[&key("digest"), &key("component")]),
    );

    imports_findings(f, function, facts, &element);

    // SQL (T06).
    for (store, grant) in &function.grants.sql {
        let line = f.line(&[&key(&format!("grants.sql.{store}"))]);
        let outcome = match &grant.statements {
            Some(list) => Outcome::Mitigated(format!(
                "only {} declared statement(s), parameters bound, never spliced; {} enforced by the database",
                list.len(),
                grant.access.as_str()
            )),
            None => Outcome::Open(
                format!("`{name}` may run any statement on `{store}`"),
                format!(
                    "list what `{name}` runs: `sql = {{ {store} = {{ access = \"{}\", statements = [\"…\"] }} }}`",
                    grant.access.as_str()
                ),
            ),
        };
        let severity = if grant.access.can_write() {
            Severity::Medium
        } else {
            Severity::Low
        };
        f.add(
            SQL_ANY,
            &store_id(store),
            name,
            store,
            severity,
            format!("statements `{name}` runs on `{store}`"),
            outcome,
            line,
        );
    }

    if !function.grants.secrets.is_empty() {
        f.add(
            SECRETS,
            "secrets",
            name,
            "",
            Severity::High,
            format!("secrets read by `{name}`"),
            Outcome::Mitigated(format!(
                "{} read through `wasi:config` only (never the environment), each read audited, \
                 values redacted from logs and responses ({})",
                function.grants.secrets.join(", "),
                at(f.line(&[&key("grants.secrets")]))
            )),
            f.line(&[&key("grants.secrets")]),
        );
    }

    // Lateral movement (T17).
    for rule in &function.grants.outbound {
        let origin = rule.to_string();
        let line = f.line(&[
            &key(&format!("grants.outbound.{origin}")),
            &key("grants.outbound"),
        ]);
        let reach = egress::review(rule, app.is_dev());
        let (severity, outcome) = if let HostPattern::Subdomains(parent) = &rule.host {
            (
                Severity::Medium,
                Outcome::Open(
                    format!("function `{name}` may reach `{origin}`"),
                    format!("name the hosts `{name}` calls instead of every host under `{parent}`"),
                ),
            )
        } else if rule.scheme == Scheme::Http && !matches!(reach, Reach::DevLoopback) {
            (
                Severity::Medium,
                Outcome::Open(
                    format!("`{name}` talks to `{origin}` in clear"),
                    "use `https://`".into(),
                ),
            )
        } else {
            match reach {
                Reach::Public => (Severity::Medium, Outcome::Mitigated("this origin only; private, loopback and metadata addresses refused after DNS".into())),
                Reach::DevLoopback => (Severity::Low, Outcome::Mitigated("this machine's loopback on this port, in `dev` only".into())),
                Reach::Internal { .. } => (Severity::Medium, Outcome::Open(format!("`{name}` may reach the internal address `{origin}`"), "make sure that is meant; it is granted exactly".into())),
                Reach::Never(_) => (Severity::Low, Outcome::Open(format!("`{origin}` can never be reached"), "remove the grant".into())),
            }
        };
        f.add(
            OUTBOUND,
            &origin_id(&origin),
            name,
            &origin,
            severity,
            format!("calls from `{name}` to `{origin}`"),
            outcome,
            line,
        );
    }
}

/// Whether a budget can ever stop a call: a request or GB-second limit
/// always can, a money limit only when something has a price (T04).
fn binds(budget: &bulkhead_manifest::Budget, pricing: &bulkhead_manifest::Pricing) -> bool {
    let priced = pricing.per_million_requests > 0.0
        || pricing.per_gb_second > 0.0
        || pricing.per_gb_egress > 0.0;
    [&budget.total, &budget.per_caller]
        .iter()
        .any(|l| l.requests.is_some() || l.gb_seconds.is_some() || (priced && l.money.is_some()))
}

fn imports_findings(
    f: &mut Findings<'_>,
    function: &Function,
    facts: &ComponentFacts,
    element: &str,
) {
    let name = function.name.as_str();
    let key = |k: &str| format!("function.{name}.{k}");
    let names = match &facts.imports {
        Ok(names) => names,
        Err(why) => {
            f.add(
                LOOSE_IMPORTS,
                element,
                name,
                "",
                Severity::Medium,
                format!("what the component of `{name}` imports"),
                Outcome::Open(
                    format!("the component of `{name}` cannot be read"),
                    format!("{why}; build it, then run `bulkhead check`"),
                ),
                f.line(&[&key("component")]),
            );
            return;
        }
    };
    let classified = imports::classify_all(names, &function.grants);
    let ungranted: Vec<&str> = classified
        .iter()
        .filter(|i| matches!(i.kind, ImportKind::Capability { granted: false, .. }))
        .map(|i| i.name.as_str())
        .collect();
    let habit: Vec<&str> = classified
        .iter()
        .filter(|i| i.kind == ImportKind::DenyAll)
        .map(|i| i.name.as_str())
        .collect();
    let line = f.line(&[&key("component")]);
    let (severity, outcome) = if function.strict_imports {
        (
            Severity::Medium,
            Outcome::Mitigated(
                "`strict_imports`: a capability import without its grant refuses the component"
                    .into(),
            ),
        )
    } else if !ungranted.is_empty() {
        (
            Severity::Medium,
            Outcome::Open(
                format!(
                    "the component of `{name}` imports {} without a grant",
                    ungranted.join(", ")
                ),
                "every call of it is refused today, but a later grant would enable it: set \
                 `strict_imports = true`, or build the component without that import"
                    .into(),
            ),
        )
    } else if !habit.is_empty() {
        (
            Severity::Low,
            Outcome::Open(
                format!(
                    "`strict_imports` is off and the component of `{name}` imports {}",
                    summarise(&habit)
                ),
                "they are bound to deny-all, so nothing is reachable today; set \
                 `strict_imports = true` so that any capability import without its grant \
                 refuses the component"
                    .into(),
            ),
        )
    } else {
        (
            Severity::Medium,
            Outcome::Mitigated(
                "every capability import has its grant; nothing else is offered".into(),
            ),
        )
    };
    f.add(
        LOOSE_IMPORTS,
        element,
        name,
        "",
        severity,
        format!("what the component of `{name}` imports"),
        outcome,
        line,
    );

    // Least privilege (T16): a grant for a capability never imported.
    let imported = |c: Capability| {
        classified
            .iter()
            .any(|i| matches!(i.kind, ImportKind::Capability { capability, .. } if capability == c))
    };
    let g = &function.grants;
    let unused: Vec<(String, Capability)> =
        g.kv.keys()
            .map(|s| (format!("kv.{s}"), Capability::KeyValue))
            .chain(g.sql.keys().map(|s| (format!("sql.{s}"), Capability::Sql)))
            .chain(
                g.secrets
                    .iter()
                    .map(|s| (format!("secrets.{s}"), Capability::Config)),
            )
            .chain(
                g.config
                    .iter()
                    .map(|s| (format!("config.{s}"), Capability::Config)),
            )
            .chain(
                g.outbound
                    .iter()
                    .map(|o| (format!("outbound.{o}"), Capability::Outbound)),
            )
            .filter(|(_, c)| !imported(*c))
            .collect();
    for (grant, capability) in unused {
        f.add(
            UNUSED_GRANT,
            element,
            name,
            &grant,
            Severity::Low,
            format!("what `{name}` is granted"),
            Outcome::Open(
                format!(
                    "`{name}` is granted `{grant}` but its component imports no `{}` interface",
                    capability.grant_key()
                ),
                format!("remove `{grant}` from its grants"),
            ),
            f.line(&[&key(&format!("grants.{grant}"))]),
        );
    }
}

/// `a, b, c` or `a, b and N more`: import lists run long.
fn summarise(names: &[&str]) -> String {
    const SHOWN: usize = 3;
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    }
}

fn per_store(f: &mut Findings<'_>, store: &StoreSpec) {
    let name = store.name.as_str();
    let element = store_id(name);
    let key = |k: &str| format!("store.{name}.{k}");
    let section = f.line(&[&format!("store.{name}")]);
    if store.personal_data() {
        let line = f.line(&[&key("retention"), &format!("store.{name}")]);
        let outcome = match store.retention() {
            Some(r) => Outcome::Mitigated(format!(
                "records older than {r} are never returned and are swept ({})",
                at(line)
            )),
            None if store.is_kv() => Outcome::Open(
                format!("store `{name}` holds personal data and has no `retention`"),
                format!(
                    "add `retention = \"48h\"` (as long as the data is needed) to `[store.{name}]`"
                ),
            ),
            // A SQL store takes no `retention` (Bulkhead cannot know which
            // rows expire), so the fix must not tell the user to add one.
            None => Outcome::Open(
                format!(
                    "SQL store `{name}` holds personal data and keeps it until a statement deletes it"
                ),
                format!(
                    "delete expired rows with a declared `DELETE` statement and erase a subject's rows on request, then record that with `[[accept]] rule = \"personal-data-retention\"`, `target = \"{name}\"` and the reason"
                ),
            ),
        };
        f.add(
            RETENTION,
            &element,
            name,
            "",
            Severity::High,
            format!("how long `{name}` keeps personal data"),
            outcome,
            line,
        );

        let outcome = if store.per_subject() {
            Outcome::Mitigated(format!(
                "`scope = \"subject\"`: each caller sees only its own records; `bulkhead data erase` and `export` per subject ({})",
                at(f.line(&[&key("scope")]))
            ))
        } else if store.is_kv() {
            Outcome::Open(
                format!("personal data in `{name}` is shared by every caller"),
                format!("give `[store.{name}]` `scope = \"subject\"`"),
            )
        } else {
            Outcome::Open(
                format!("personal data in `{name}` is shared by every caller"),
                format!(
                    "SQL rows are app-wide: filter every statement on `{name}` by the caller's `bulkhead-subject`, and erase in your own code"
                ),
            )
        };
        f.add(
            SHARED_PERSONAL,
            &element,
            name,
            "",
            Severity::Medium,
            format!("one caller reading another's data in `{name}`"),
            outcome,
            f.line(&[&key("scope"), &format!("store.{name}")]),
        );
    }
    let sealed = if store.is_kv() {
        "values sealed with XChaCha20-Poly1305 under a per-store key wrapped by the master key"
    } else {
        "the database file encrypted by SQLCipher under a key wrapped by the master key"
    };
    f.add(
        AT_REST,
        &element,
        name,
        "",
        Severity::Medium,
        format!("the data of `{name}` on disk"),
        Outcome::Mitigated(format!("{sealed} (built in)")),
        section,
    );
}

/// Mark open findings `[[accept]]` covers; flag acceptances that cover
/// nothing, so a stale one cannot hide a future finding.
fn accept(f: &mut Findings<'_>) {
    let app = f.app;
    for risk in &app.accepted {
        let mut matched = false;
        for t in &mut f.threats {
            if t.status != Status::Mitigated
                && t.rule != STALE_ACCEPT.id
                && risk.covers(t.rule, &t.accept_as, t.severity == Severity::High)
            {
                matched = true;
                t.status = Status::Accepted;
                t.detail = format!(
                    "accepted: {} (bulkhead.toml line {})",
                    risk.reason, risk.line
                );
            }
        }
        if !matched {
            let target = risk.target.as_deref().unwrap_or("*");
            f.add(
                STALE_ACCEPT,
                "gateway",
                &format!("{}/{target}", risk.rule),
                "",
                Severity::Low,
                "accepted risks that still match a finding".into(),
                Outcome::Open(
                    format!(
                        "`[[accept]]` of `{}` for `{target}` matches no open finding",
                        risk.rule
                    ),
                    "remove it, or fix its `rule` and `target` (without a `target` it never \
                     covers a high finding: name the target as the report prints it after the rule)"
                        .into(),
                ),
                Some(risk.line),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t15_only_a_real_loopback_collector_counts_as_local() {
        for local in [
            "127.0.0.1:4318",
            "localhost:4318/v1",
            "[::1]:4318",
            "LOCALHOST",
        ] {
            assert!(is_loopback_authority(local), "{local}");
        }
        for remote in [
            "localhost.evil.example:4318",
            "127.0.0.1.nip.io:4318",
            "collector.example.com",
            "[2001:db8::1]:4318",
        ] {
            assert!(!is_loopback_authority(remote), "{remote}");
        }
        assert_eq!(strip_prefix_ignore_case("HTTP://x", "http://"), Some("x"));
        assert_eq!(strip_prefix_ignore_case("htt", "http://"), None);
    }
}
