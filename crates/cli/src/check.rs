//! `bulkhead check`: everything `serve` would do before listening.

use std::process::ExitCode;

use anyhow::Result;

use crate::{Target, deploy, load_app, report};

pub fn run(target: &Target) -> Result<ExitCode> {
    let app = match load_app(target) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    let store = target.store(true)?;
    let audit = bulkhead_store::AuditLog::start(&store)?;
    let deployment = match deploy::deploy(app, audit, &|line| eprintln!("{line}")) {
        Ok(deployment) => deployment,
        Err(problems) => return Ok(report(&problems)),
    };
    let app = &deployment.app;
    println!(
        "app `{}` (env {}): {} function(s), all OK",
        app.name,
        app.env,
        app.functions.len()
    );
    for (spec, loaded) in app.functions.iter().zip(&deployment.functions) {
        let l = &spec.limits;
        println!(
            "\n{} {} -> {}",
            spec.methods.join(","),
            spec.route,
            spec.name
        );
        println!(
            "  component  {} ({})",
            spec.component.display(),
            loaded.digest()
        );
        println!(
            "  limits     timeout {}, memory {}, request body {}, response body {}, {} running / {} outstanding",
            l.timeout,
            l.memory,
            l.max_request_body,
            l.max_response_body,
            l.max_concurrent_requests,
            l.max_outstanding_requests
        );
        println!("  imports    {}", loaded.imports().join(", "));
        print_input(&spec.input);
    }
    Ok(ExitCode::SUCCESS)
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
