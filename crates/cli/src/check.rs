//! `bulkhead check`: everything `serve` would do before listening.

use std::process::ExitCode;

use anyhow::Result;
use bulkhead_gateway::authn::Authenticator;
use bulkhead_report::describe;
use bulkhead_runtime::egress::{self, Reach};

use crate::{Target, deploy, load_verified, report};

pub fn run(target: &Target) -> Result<ExitCode> {
    let (app, evidence) = match load_verified(target, &crate::strict_host(target)) {
        Ok(loaded) => loaded,
        Err(problems) => return Ok(report(&problems)),
    };
    let state = target.state(true)?;
    let audit = bulkhead_store::AuditLog::start(state.store())?;
    let deployment =
        match deploy::deploy(app, audit, deploy::Mode::Check, &|line| eprintln!("{line}")) {
            Ok(deployment) => deployment,
            Err(problems) => return Ok(report(&problems)),
        };
    let app = &deployment.app;
    // The authenticator, as `serve` builds it: a bad JWKS or JWE key is a
    // problem now. (Not the whole gateway: a dry run has no use for the
    // meter's writer and its retention sweep.)
    if let Err(problem) = Authenticator::new(app, state.credentials().clone()) {
        return Ok(report(&[problem]));
    }
    println!(
        "app `{}` (env {}): {} function(s), all OK",
        app.name,
        app.env,
        app.functions.len() + app.triggered.len()
    );
    print_flood_controls(app);
    for (spec, loaded) in app.functions.iter().zip(&deployment.functions) {
        let l = &spec.limits;
        println!(
            "\n{} {} -> {}",
            spec.methods.join(","),
            spec.route,
            spec.name
        );
        println!("  access     {}", describe::access(&spec.access));
        println!(
            "  component  {} ({})",
            spec.component.display(),
            loaded.digest()
        );
        // T18: who vouches for it, and whether the lock pins it.
        if let Some(proof) = evidence.iter().find(|e| e.file == app.component_name(spec)) {
            let signed = match &proof.signed {
                Some(s) => format!("signed by key {}", s.key_id),
                None => "unsigned".into(),
            };
            let pinned = match (
                spec.locked.is_some(),
                app.lines.get(&format!("function.{}.digest", spec.name)),
            ) {
                (true, _) => "locked in bulkhead.lock",
                (false, Some(_)) => "pinned by `digest =`",
                (false, None) => "not pinned",
            };
            println!("  trust      {signed}; {pinned}");
        }
        println!(
            "  limits     timeout {}, memory {}, request body {}, response body {}, {} running / {} outstanding, {} per caller",
            l.timeout,
            l.memory,
            l.max_request_body,
            l.max_response_body,
            l.max_concurrent_requests,
            l.max_outstanding_requests,
            l.max_outstanding_per_caller
        );
        // What one call reserves of its budgets while it runs (T04).
        let worst = bulkhead_gateway::worst_case(l);
        println!(
            "  traffic    rate limit {}; budget {}; a call reserves up to {:.6} GB-s, {:.6} {}",
            describe::rate(spec.limits.rate_limit.as_ref()),
            describe::budget(&spec.budget, &app.pricing.currency),
            worst.gb_seconds(),
            app.pricing
                .cost(1, worst.gb_seconds(), worst.egress_bytes()),
            app.pricing.currency
        );
        // T18: every import beside the grant that would enable it.
        for (i, import) in loaded.imports().iter().enumerate() {
            let label = if i == 0 { "imports" } else { "" };
            println!("  {label:<10} {import}");
        }
        print_outbound(spec, app.is_dev());
        if !spec.grants.sql.is_empty() {
            let grants: Vec<String> = spec
                .grants
                .sql
                .iter()
                .map(|(store, grant)| {
                    let access = match grant.access {
                        bulkhead_manifest::grants::StoreAccess::Read => "read",
                        bulkhead_manifest::grants::StoreAccess::ReadWrite => "read-write",
                    };
                    match &grant.statements {
                        None => format!("{store} ({access}, any statement)"),
                        Some(list) => {
                            format!("{store} ({access}, {} declared statement(s))", list.len())
                        }
                    }
                })
                .collect();
            println!("  sql        {}", grants.join(", "));
        }
        if spec.strict_imports {
            println!("  strict     yes: a capability import without its grant is refused");
        }
        print_input(&spec.input);
        print_data_grants(spec);
    }
    print_events(app);
    let public: Vec<&str> = app
        .functions
        .iter()
        .filter(|f| f.access.is_public())
        .map(|f| f.route.as_str())
        .collect();
    if public.is_empty() {
        println!("\nno public routes: every route requires a credential");
    } else {
        println!(
            "\npublic routes (no credential required): {}",
            public.join(", ")
        );
    }
    print_stores(app);
    if let Some(t) = &app.telemetry {
        println!(
            "\ntelemetry  one span per request to {} (OTLP/HTTP), service `{}`, sample_ratio {:?}",
            t.traces_url(),
            t.service_name,
            t.sample_ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// T17: each outbound destination, what it reaches, and a warning for one
/// that reaches this machine's loopback outside `dev` or a metadata
/// service, or that the egress rules refuse at every call.
fn print_outbound(spec: &bulkhead_manifest::Function, dev: bool) {
    if spec.grants.outbound.is_empty() {
        println!("  outbound   none");
        return;
    }
    let mut warnings = Vec::new();
    for (i, rule) in spec.grants.outbound.iter().enumerate() {
        let label = if i == 0 { "outbound" } else { "" };
        let reach = egress::review(rule, dev);
        warnings.extend(reach.warning(rule));
        let note = match reach {
            Reach::Public => String::new(),
            Reach::DevLoopback => format!(
                " (dev: this machine's loopback, port {} only, never resolved)",
                rule.port
            ),
            Reach::Internal { .. } => " (an internal address, granted exactly)".into(),
            Reach::Never(_) => " (never reached)".into(),
        };
        println!("  {label:<10} {rule}{note}");
    }
    for warning in warnings {
        println!("  {:<10} {warning}", "warning");
    }
}

/// The function's input allowlist (T10), as `check` shows it.
fn print_input(input: &bulkhead_manifest::Input) {
    let params = |params: &[bulkhead_manifest::Param]| {
        if params.is_empty() {
            return "none".to_string();
        }
        params
            .iter()
            .map(|p| format!("{} ^(?:{})$", p.name, p.pattern.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  path       {}", params(&input.path));
    println!(
        "  query      {}{}",
        params(&input.query),
        if input.allow_unknown_query {
            " (undeclared allowed)"
        } else {
            " (undeclared refused)"
        }
    );
    println!("  headers    {}", input.headers.join(", "));
    let body = match (&input.content_types, &input.body_schema) {
        (None, _) => "any media type".to_string(),
        (Some(types), None) => types.join(", "),
        (Some(types), Some(schema)) => {
            format!("{}, schema {}", types.join(", "), schema.path.display())
        }
    };
    println!("  body       {body}");
}

/// App-wide flood and cost controls (T01-T04), as `check` reports them.
fn print_flood_controls(app: &bulkhead_manifest::App) {
    let limits = &app.limits;
    println!(
        "  app-wide   rate limit {}; budget {}; {} running / {} outstanding, {} per caller",
        describe::rate(limits.rate_limit.as_ref()),
        describe::budget(&app.budget, &app.pricing.currency),
        limits.max_concurrent_requests,
        limits.max_outstanding_requests,
        limits.max_outstanding_per_caller
    );
    match &app.throttle {
        Some(t) => println!(
            "  throttle   past cpu {:.0}%, memory {:.0}% or in-flight {:.0}%, limit active requests and shed the excess, heaviest callers first; sampled every {}",
            t.cpu * 100.0,
            t.memory * 100.0,
            t.in_flight * 100.0,
            t.interval
        ),
        None => println!("  throttle   off (`dynamic_throttle.enabled = false`)"),
    }
    if !limits.trusted_proxies.is_empty() {
        println!("  proxies    forwarding headers are believed from the trusted proxies only");
    }
    let p = &app.pricing;
    println!(
        "  pricing    {} {} per million requests, {} per GB-second, {} per GB out{}",
        p.per_million_requests,
        p.currency,
        p.per_gb_second,
        p.per_gb_egress,
        if limits.metering {
            ""
        } else {
            " (metering off: no usage is kept)"
        }
    );
}

/// The function's key-value, secret and config grants (T16): what a
/// privilege review reads.
fn print_data_grants(spec: &bulkhead_manifest::Function) {
    let grants = &spec.grants;
    if !grants.kv.is_empty() {
        let kv: Vec<String> = grants
            .kv
            .iter()
            .map(|(store, access)| format!("{store} ({})", access.as_str()))
            .collect();
        println!("  kv         {}", kv.join(", "));
    }
    if !grants.secrets.is_empty() {
        println!("  secrets    {}", grants.secrets.join(", "));
    }
    if !grants.config.is_empty() {
        println!("  config     {}", grants.config.join(", "));
    }
    if !grants.queues.is_empty() {
        let queues: Vec<String> = grants
            .queues
            .iter()
            .map(|(queue, cap)| {
                format!(
                    "{queue} (send, at most {} message(s) and {} per call)",
                    cap.max_messages_per_call, cap.max_bytes_per_call
                )
            })
            .collect();
        println!("  queues     {}", queues.join(", "));
    }
}

/// Issue 18: triggered functions and queues.
fn print_events(app: &bulkhead_manifest::App) {
    for triggered in &app.triggered {
        let f = &triggered.function;
        let l = &f.limits;
        println!(
            "
{} -> {} (run by `serve`, never routed: POST / in-process)",
            triggered.trigger.describe(),
            f.name
        );
        println!("  component  {}", f.component.display());
        println!(
            "  caller     {} (meters, budgets and audit records)",
            triggered.trigger.caller(&f.name)
        );
        println!(
            "  limits     timeout {}, memory {}, event body {}, {} running at once",
            l.timeout, l.memory, l.max_request_body, l.max_concurrent_requests
        );
        print_data_grants(f);
    }
    if app.queues.is_empty() {
        return;
    }
    println!(
        "
queues (at least once; a chain of events deeper than {} is stopped)",
        app.limits.max_event_depth
    );
    for q in &app.queues {
        let dead = q
            .dead_letter
            .as_deref()
            .map_or("kept undelivered (no dead_letter)".to_string(), |d| {
                format!("dead letters to `{d}`")
            });
        println!(
            "  {:<16} retention {}, messages up to {}, {} attempt(s), visibility {}, {dead}",
            q.name, q.retention, q.max_message_bytes, q.max_attempts, q.visibility_timeout
        );
    }
}

/// The app's declared stores (T13, T20).
fn print_stores(app: &bulkhead_manifest::App) {
    if app.stores.is_empty() {
        return;
    }
    println!("\nstores");
    for store in &app.stores {
        let mut facts = vec![store.kind_name().to_string()];
        if store.is_kv() {
            facts.push(if store.per_subject() {
                "one key space per subject".into()
            } else {
                "app-wide".into()
            });
        }
        if let Some(retention) = store.retention() {
            facts.push(format!("retention {retention}"));
        }
        if store.personal_data() {
            facts.push("personal data".into());
        }
        println!("  {:<16} {}", store.name, facts.join(", "));
    }
}
