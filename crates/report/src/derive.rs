//! The inventory and the data-flow diagram, derived from the manifest and
//! the components (T21): nothing here is written by hand.

use std::collections::BTreeMap;

use bulkhead_manifest::grants::HostPattern;
use bulkhead_manifest::triggers::Trigger;
use bulkhead_manifest::{Access, App, Function, StoreKind};
use bulkhead_runtime::imports::{self, ImportKind};

use crate::ComponentFacts;
use crate::describe;
use crate::model::*;

/// Zones, in drawing order (left to right).
pub(crate) const ZONES: &[(&str, &str)] = &[
    ("internet", "Internet"),
    ("gateway", "Bulkhead gateway"),
    ("sandbox", "Function sandboxes"),
    ("state", "Bulkhead state (this host)"),
    ("outside", "Outbound destinations"),
    ("collector", "Telemetry collector"),
    ("operator", "Operator"),
];

pub(crate) fn boundary_id(from_zone: &str, to_zone: &str) -> String {
    format!("{from_zone}->{to_zone}")
}

pub(crate) fn fn_id(name: &str) -> String {
    format!("fn:{name}")
}

pub(crate) fn store_id(name: &str) -> String {
    format!("store:{name}")
}

pub(crate) fn queue_id(name: &str) -> String {
    format!("queue:{name}")
}

pub(crate) fn origin_id(origin: &str) -> String {
    format!("out:{origin}")
}

/// The grants of `f` as the manifest writes them, one per line.
pub(crate) fn grant_lines(f: &Function) -> Vec<String> {
    let g = &f.grants;
    let mut lines = Vec::new();
    lines.extend(g.kv.iter().map(|(s, a)| format!("kv {s} {}", a.as_str())));
    lines.extend(g.sql.iter().map(|(s, grant)| {
        let statements = match &grant.statements {
            Some(list) => format!(", {} declared statement(s)", list.len()),
            None => ", any statement".into(),
        };
        format!("sql {s} {}{statements}", grant.access.as_str())
    }));
    lines.extend(g.secrets.iter().map(|s| format!("secret {s}")));
    lines.extend(g.config.iter().map(|c| format!("config {c}")));
    lines.extend(g.outbound.iter().map(|o| format!("outbound {o}")));
    lines
}

fn auth_kinds(access: &Access) -> (Vec<String>, Vec<String>) {
    match access {
        Access::Public => (vec!["public".into()], Vec::new()),
        Access::Authenticated { kinds, scopes } => (
            kinds.iter().map(|k| k.as_str().to_string()).collect(),
            scopes.clone(),
        ),
    }
}

fn input_rules(app: &App, f: &Function) -> Vec<String> {
    let input = &f.input;
    let mut rules = Vec::new();
    for p in &input.path {
        rules.push(format!("path {} ^(?:{})$", p.name, p.pattern.as_str()));
    }
    for p in &input.query {
        rules.push(format!("query {} ^(?:{})$", p.name, p.pattern.as_str()));
    }
    rules.push(if input.allow_unknown_query {
        "undeclared query allowed".into()
    } else {
        "undeclared query refused".into()
    });
    if let Some(types) = &input.content_types {
        rules.push(format!("content types {}", types.join(", ")));
    }
    if let Some(schema) = &input.body_schema {
        rules.push(format!("body schema {}", relative(app, &schema.path)));
    }
    rules
}

/// Paths are shown relative to the app: the report travels.
pub(crate) fn relative(app: &App, path: &std::path::Path) -> String {
    path.strip_prefix(&app.dir)
        .unwrap_or(path)
        .display()
        .to_string()
}

pub(crate) fn rate_limit_of(app: &App, f: &Function) -> String {
    match (&f.limits.rate_limit, &app.limits.rate_limit) {
        (Some(own), _) => describe::rate(Some(own)),
        (None, Some(app_wide)) => format!("{} (app-wide)", describe::rate(Some(app_wide))),
        (None, None) => "off".into(),
    }
}

pub(crate) fn budget_of(app: &App, f: &Function) -> String {
    if !app.limits.metering {
        return "none (metering off)".into();
    }
    let own = describe::budget(&f.budget, &app.pricing.currency);
    let app_wide = describe::budget(&app.budget, &app.pricing.currency);
    match (f.budget.is_unlimited(), app.budget.is_unlimited()) {
        (false, _) => own,
        (true, false) => format!("{app_wide} (app-wide)"),
        (true, true) => "none".into(),
    }
}

pub(crate) fn inventory(app: &App, components: &[ComponentFacts]) -> Inventory {
    let mut entry_points = Vec::new();
    let mut functions = Vec::new();
    for (f, facts) in app.functions.iter().zip(components) {
        let l = &f.limits;
        let (auth, scopes) = auth_kinds(&f.access);
        entry_points.push(EntryPoint {
            route: f.route.as_str().to_string(),
            methods: f.methods.clone(),
            function: f.name.clone(),
            auth,
            scopes,
            input: input_rules(app, f),
            limits: format!(
                "request body {}, response body {}, timeout {}",
                l.max_request_body, l.max_response_body, l.timeout
            ),
            rate_limit: rate_limit_of(app, f),
            budget: budget_of(app, f),
            line: app.lines.first(&[&format!("function.{}.route", f.name)]),
        });
        functions.push(function_entry(app, f, facts));
    }

    // Functions run by a schedule or a queue (issue 18): an entry point
    // with no network path; their facts follow the routed ones'.
    let triggered_facts = components.get(app.functions.len()..).unwrap_or(&[]);
    for (t, facts) in app.triggered.iter().zip(triggered_facts) {
        let f = &t.function;
        let l = &f.limits;
        entry_points.push(EntryPoint {
            route: t.trigger.describe(),
            methods: vec!["event".into()],
            function: f.name.clone(),
            auth: vec!["internal: no network path".into()],
            scopes: Vec::new(),
            input: match &t.trigger {
                Trigger::Queue { queue } => vec![format!(
                    "messages of queue `{queue}` sent by functions granted `send`, sealed at rest"
                )],
                Trigger::Schedule { .. } | Trigger::Every { .. } => {
                    vec!["an empty body at each firing".into()]
                }
            },
            limits: format!(
                "event body {}, response body {}, timeout {}",
                l.max_request_body, l.max_response_body, l.timeout
            ),
            rate_limit: format!("caller `{}`", t.trigger.caller(&f.name)),
            budget: budget_of(app, f),
            line: app.lines.first(&[&format!("function.{}.trigger", f.name)]),
        });
        functions.push(function_entry(app, f, facts));
    }

    let stores = app
        .stores
        .iter()
        .map(|s| {
            let (readers, writers) = store_users(app, &s.name);
            StoreEntry {
                name: s.name.clone(),
                kind: s.kind_name().into(),
                scope: store_scope(&s.kind).into(),
                retention: s.retention().map(|r| r.to_string()),
                personal_data: s.personal_data(),
                encryption: encryption(&s.kind).into(),
                readers,
                writers,
                line: app.lines.get(&format!("store.{}", s.name)),
            }
        })
        .collect();

    let mut named: BTreeMap<(String, &str), Vec<String>> = BTreeMap::new();
    for f in app.all_functions() {
        for s in &f.grants.secrets {
            named
                .entry((s.clone(), "secret"))
                .or_default()
                .push(f.name.clone());
        }
        for c in &f.grants.config {
            named
                .entry((c.clone(), "config"))
                .or_default()
                .push(f.name.clone());
        }
    }
    for key in app.config.keys() {
        named.entry((key.clone(), "config")).or_default();
    }
    let secrets_and_config = named
        .into_iter()
        .map(|((name, kind), functions)| NamedValue {
            name,
            kind: kind.into(),
            functions,
        })
        .collect();

    let mut origins: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    for f in app.all_functions() {
        for rule in &f.grants.outbound {
            let entry = origins
                .entry(rule.to_string())
                .or_insert((matches!(rule.host, HostPattern::Subdomains(_)), Vec::new()));
            entry.1.push(f.name.clone());
        }
    }
    let outbound = origins
        .into_iter()
        .map(|(origin, (wildcard, functions))| OutboundEntry {
            origin,
            functions,
            wildcard,
        })
        .collect();

    let telemetry = app.telemetry.as_ref().map(|t| TelemetryEntry {
        endpoint: t.traces_url(),
        sample_ratio: t.sample_ratio,
    });
    Inventory {
        entry_points,
        functions,
        stores,
        secrets_and_config,
        outbound,
        admin: AdminEntry {
            summary: "a separate listener (`serve --admin-listen`, 127.0.0.1:9901 by default) \
                      for /metrics, /healthz and /readyz; outside `dev` it needs an admin token"
                .into(),
        },
        telemetry,
        boundaries: boundaries(app),
    }
}

/// One function's row: its component, imports, grants and bounds.
fn function_entry(app: &App, f: &Function, facts: &ComponentFacts) -> FunctionEntry {
    let l = &f.limits;
    let worst = bulkhead_gateway::worst_case(l);
    let imports = match &facts.imports {
        Ok(names) => imports::classify_all(names, &f.grants)
            .into_iter()
            .map(|i| ImportEntry {
                behind: import_behind(i.kind),
                name: i.name,
            })
            .collect(),
        Err(e) => vec![ImportEntry {
            name: "(unreadable)".into(),
            behind: e.clone(),
        }],
    };
    FunctionEntry {
        name: f.name.clone(),
        component: relative(app, &f.component),
        digest: facts.digest.clone(),
        pinned: f.digest.is_some() || f.locked.is_some(),
        imports,
        grants: grant_lines(f),
        strict_imports: f.strict_imports,
        limits: format!(
            "timeout {}, memory {}, {} running / {} outstanding, {} per caller, outbound {}",
            l.timeout,
            l.memory,
            l.max_concurrent_requests,
            l.max_outstanding_requests,
            l.max_outstanding_per_caller,
            l.max_outbound_bytes
        ),
        worst_case: format!(
            "{:.6} GB-s, {:.6} {}",
            worst.gb_seconds(),
            app.pricing
                .cost(1, worst.gb_seconds(), worst.egress_bytes()),
            app.pricing.currency
        ),
        line: app.lines.get(&format!("function.{}", f.name)),
    }
}

fn import_behind(kind: ImportKind) -> String {
    match kind {
        ImportKind::Capability {
            capability,
            granted: true,
        } => format!("grant `{}` (granted)", capability.grant_key()),
        ImportKind::Capability {
            capability,
            granted: false,
        } => format!("grant `{}` (not granted: refused)", capability.grant_key()),
        ImportKind::Plumbing => "WASI basics (nothing to grant)".into(),
        ImportKind::DenyAll => "bound to deny-all".into(),
        ImportKind::Unsupported => "not offered (the component is refused)".into(),
    }
}

fn store_scope(kind: &StoreKind) -> &'static str {
    match kind {
        StoreKind::Kv {
            scope: bulkhead_manifest::Scope::Subject,
            ..
        } => "subject",
        StoreKind::Kv { .. } => "app",
        StoreKind::Sql { .. } => "app (SQL)",
    }
}

fn encryption(kind: &StoreKind) -> &'static str {
    match kind {
        StoreKind::Kv { .. } => {
            "values sealed (XChaCha20-Poly1305, per-store keys wrapped by the master key)"
        }
        StoreKind::Sql { .. } => {
            "database file encrypted (SQLCipher, key wrapped by the master key)"
        }
    }
}

/// Functions that may read and that may write the store `name`.
pub(crate) fn store_users(app: &App, name: &str) -> (Vec<String>, Vec<String>) {
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for f in app.all_functions() {
        if let Some((_, access)) = f.grants.stores().find(|(store, _)| *store == name) {
            readers.push(f.name.clone());
            if access.can_write() {
                writers.push(f.name.clone());
            }
        }
    }
    (readers, writers)
}

fn boundaries(app: &App) -> Vec<BoundaryEntry> {
    let public = app
        .functions
        .iter()
        .filter(|f| f.access.is_public())
        .count();
    let stores = app.stores.len();
    let origins: usize = app.all_functions().map(|f| f.grants.outbound.len()).sum();
    let mut list = vec![
        BoundaryEntry {
            id: boundary_id("internet", "gateway"),
            name: "internet → gateway".into(),
            crossing: format!(
                "HTTP requests to {} route(s), {public} of them public",
                app.functions.len()
            ),
            controls: "connection and header limits, host check, input allowlist, \
                       authentication, rate limits, fair admission, budgets (T01–T04, T10, T11)"
                .into(),
        },
        BoundaryEntry {
            id: boundary_id("gateway", "sandbox"),
            name: "gateway → sandbox".into(),
            crossing: "validated requests, with the verified subject in `bulkhead-subject`".into(),
            controls: "a fresh WebAssembly instance per call, timeout, memory cap, response cap, \
                       nothing granted by default (T05, T16)"
                .into(),
        },
        BoundaryEntry {
            id: boundary_id("sandbox", "state"),
            name: "sandbox → stores".into(),
            crossing: format!(
                "key-value, SQL, secret and config reads and writes ({stores} store(s))"
            ),
            controls: "per-function grants, subject scoping, encryption at rest, \
                       every use audited (T06, T13, T14, T15)"
                .into(),
        },
    ];
    if origins > 0 {
        list.push(BoundaryEntry {
            id: boundary_id("sandbox", "outside"),
            name: "sandbox → outbound".into(),
            crossing: format!("outbound HTTP to {origins} granted origin(s)"),
            controls: "per-function origin allowlist, private and metadata addresses refused \
                       after DNS, byte cap (T17)"
                .into(),
        });
    }
    if app.telemetry.is_some() {
        list.push(BoundaryEntry {
            id: boundary_id("gateway", "collector"),
            name: "host → telemetry".into(),
            crossing: "one span per request (OTLP/HTTP)".into(),
            controls: "no request bodies, headers or secrets in spans (T08)".into(),
        });
    }
    list.push(BoundaryEntry {
        id: boundary_id("operator", "gateway"),
        name: "operator → admin listener".into(),
        crossing: "metrics, health and readiness".into(),
        controls: "a separate listener; an admin token outside `dev` (T17)".into(),
    });
    list
}

pub(crate) fn diagram(app: &App) -> Diagram {
    let zones = ZONES
        .iter()
        .map(|(id, name)| Zone {
            id: (*id).into(),
            name: (*name).into(),
        })
        .collect();
    let mut elements = vec![
        element(
            "clients",
            ElementKind::Actor,
            "Callers",
            "internet",
            "anyone who can reach the listener",
        ),
        element(
            "gateway",
            ElementKind::Process,
            "Gateway",
            "gateway",
            "Bulkhead's HTTP gateway: every control before a function runs",
        ),
        element(
            "audit",
            ElementKind::Store,
            "Audit trail",
            "state",
            "hash-chained security events (T09)",
        ),
        element(
            "operator",
            ElementKind::Actor,
            "Operator",
            "operator",
            "runs the CLI and reads the admin listener",
        ),
    ];
    let mut flows = Vec::new();
    let mut flow = |from: &str, to: &str, label: String| {
        let id = format!("flow:{from}->{to}");
        flows.push((id, from.to_string(), to.to_string(), label));
    };
    flow("clients", "gateway", "HTTP requests".into());
    flow("gateway", "audit", "security events".into());
    flow("operator", "gateway", "admin: metrics, health".into());
    if app.limits.metering {
        elements.push(element(
            "meter",
            ElementKind::Store,
            "Meter",
            "state",
            "usage per function and caller; budgets (T04)",
        ));
        flow("gateway", "meter", "usage".into());
    }
    let any_secret = app.all_functions().any(|f| !f.grants.secrets.is_empty());
    if any_secret {
        elements.push(element(
            "secrets",
            ElementKind::Store,
            "Secret store",
            "state",
            "secrets sealed at rest, read through grants (T14)",
        ));
    }
    for s in &app.stores {
        let mut facts = vec![
            s.kind_name().to_string(),
            format!("scope {}", store_scope(&s.kind)),
        ];
        if s.personal_data() {
            facts.push("personal data".into());
        }
        if let Some(r) = s.retention() {
            facts.push(format!("retention {r}"));
        }
        elements.push(element(
            &store_id(&s.name),
            ElementKind::Store,
            &s.name,
            "state",
            &facts.join(", "),
        ));
    }
    for q in &app.queues {
        let mut facts = vec![
            "queue, sealed at rest".to_string(),
            format!("retention {}", q.retention),
        ];
        if let Some(dead) = &q.dead_letter {
            facts.push(format!("dead letters to {dead}"));
        }
        elements.push(element(
            &queue_id(&q.name),
            ElementKind::Store,
            &q.name,
            "state",
            &facts.join(", "),
        ));
        if let Some(dead) = &q.dead_letter {
            flow(&queue_id(&q.name), &queue_id(dead), "dead letters".into());
        }
    }
    let mut origins = Vec::new();
    let routed = app.functions.iter().map(|f| (f, None));
    let triggered = app
        .triggered
        .iter()
        .map(|t| (&t.function, Some(&t.trigger)));
    for (f, trigger) in routed.chain(triggered) {
        let runs = match trigger {
            None => format!("{} {}", f.methods.join(","), f.route),
            Some(trigger) => trigger.describe(),
        };
        elements.push(element(
            &fn_id(&f.name),
            ElementKind::Process,
            &f.name,
            "sandbox",
            &runs,
        ));
        match trigger {
            Some(Trigger::Queue { queue }) => {
                flow(&queue_id(queue), &fn_id(&f.name), "messages".into());
            }
            // The host's scheduler, inside the gateway process, calls it.
            _ => flow("gateway", &fn_id(&f.name), runs),
        }
        for queue in f.grants.queues.keys() {
            flow(&fn_id(&f.name), &queue_id(queue), "sends".into());
        }
        for (store, access) in f.grants.stores() {
            flow(&fn_id(&f.name), &store_id(store), access.as_str().into());
        }
        if !f.grants.secrets.is_empty() {
            flow(
                &fn_id(&f.name),
                "secrets",
                format!("reads {}", f.grants.secrets.join(", ")),
            );
        }
        for rule in &f.grants.outbound {
            let origin = rule.to_string();
            if !origins.contains(&origin) {
                elements.push(element(
                    &origin_id(&origin),
                    ElementKind::External,
                    &origin,
                    "outside",
                    "granted outbound origin",
                ));
                origins.push(origin.clone());
            }
            flow(&fn_id(&f.name), &origin_id(&origin), "HTTP requests".into());
        }
    }
    if let Some(t) = &app.telemetry {
        elements.push(element(
            "telemetry",
            ElementKind::External,
            "Collector",
            "collector",
            &t.traces_url(),
        ));
        flow("gateway", "telemetry", "spans (OTLP/HTTP)".into());
    }
    let zone_of = |id: &str| {
        elements
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.zone.clone())
            .unwrap_or_default()
    };
    let flows = flows
        .into_iter()
        .map(|(id, from, to, label)| {
            let (a, b) = (zone_of(&from), zone_of(&to));
            Flow {
                boundary: (a != b).then(|| boundary_id(&a, &b)),
                id,
                from,
                to,
                label,
            }
        })
        .collect();
    Diagram {
        zones,
        elements,
        flows,
    }
}

fn element(id: &str, kind: ElementKind, name: &str, zone: &str, description: &str) -> Element {
    debug_assert!(ZONES.iter().any(|(z, _)| *z == zone), "unknown zone {zone}");
    Element {
        id: id.into(),
        kind,
        name: name.into(),
        zone: zone.into(),
        description: description.into(),
    }
}

pub(crate) fn personal_data(app: &App) -> Vec<PersonalData> {
    app.stores
        .iter()
        .filter(|s| s.personal_data())
        .map(|s| {
            let (readers, writers) = store_users(app, &s.name);
            let (erasure, export) = if s.per_subject() {
                (
                    "`bulkhead data erase --subject S`: the subject's keys are destroyed \
                     (crypto-shredding), then its records deleted"
                        .to_string(),
                    "`bulkhead data export --subject S` (JSON)".to_string(),
                )
            } else {
                (
                    "not per subject: the store is app-wide; erase in the app's own code, \
                     or make it `scope = \"subject\"`"
                        .to_string(),
                    "not per subject".to_string(),
                )
            };
            PersonalData {
                store: s.name.clone(),
                kind: s.kind_name().into(),
                retention: s.retention().map(|r| r.to_string()),
                erasure,
                export,
                readers,
                writers,
                line: app.lines.get(&format!("store.{}", s.name)),
            }
        })
        .collect()
}
