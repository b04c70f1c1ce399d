//! Settings in words, shared by `check` and the reports.

use bulkhead_manifest::{Access, Budget, RateLimit};

/// `PUBLIC (anyone may call)` or `authenticated (jwt, session), scopes …`.
pub fn access(access: &Access) -> String {
    match access {
        Access::Public => "PUBLIC (anyone may call)".into(),
        Access::Authenticated { kinds, scopes } => {
            let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            if scopes.is_empty() {
                format!("authenticated ({})", kinds.join(", "))
            } else {
                format!(
                    "authenticated ({}), scopes {}",
                    kinds.join(", "),
                    scopes.join(" ")
                )
            }
        }
    }
}

/// `10 per 1s per caller, burst 20`, or `none`.
pub fn rate(rate: Option<&RateLimit>) -> String {
    match rate {
        Some(r) => format!(
            "{} per {} per caller, burst {}",
            r.count,
            humantime::format_duration(r.period),
            r.burst
        ),
        None => "none".into(),
    }
}

/// `10 USD/day, 1 USD/day per caller`, or `none`.
pub fn budget(budget: &Budget, currency: &str) -> String {
    let mut parts = Vec::new();
    for (who, limits) in [("", &budget.total), (" per caller", &budget.per_caller)] {
        if let Some(money) = limits.money {
            parts.push(format!("{money} {currency}/day{who}"));
        }
        if let Some(requests) = limits.requests {
            parts.push(format!("{requests} requests/day{who}"));
        }
        if let Some(gb) = limits.gb_seconds {
            parts.push(format!("{gb} GB-s/day{who}"));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}
