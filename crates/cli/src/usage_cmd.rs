//! `bulkhead usage`: what the app's functions used and what that costs at
//! the manifest's `[pricing]` (T04).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use bulkhead_manifest::Pricing;
use bulkhead_store::meter::{Usage, hour_of};
use bulkhead_store::now_ms;
use clap::ValueEnum;

use crate::Target;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// One line per function.
    Function,
    /// One line per caller (`sub:SUBJECT` or `ip:ADDRESS`).
    Caller,
    /// One line per hour (UTC).
    Hour,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns with a total.
    Table,
    /// One JSON document.
    Json,
}

pub fn run(target: &Target, by: GroupBy, since: &str, format: Format) -> Result<ExitCode> {
    let since = humantime::parse_duration(since).with_context(|| {
        format!("`--since {since}` is not a duration; write one like 24h, 7d or 30m")
    })?;
    let pricing = match bulkhead_manifest::load(&target.app_dir, &target.env) {
        Ok(app) => app.pricing,
        Err(problems) => {
            eprintln!(
                "warning: the manifest has problems, so default prices are used:\n{problems}"
            );
            Pricing::default()
        }
    };
    // On PostgreSQL (issue 16): the deployment's usage, every node's.
    let state = target.state(false)?;
    let since_ms = now_ms().saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
    let rows = state.usage_since(hour_of(since_ms))?;

    let mut groups: BTreeMap<String, Usage> = BTreeMap::new();
    let mut total = Usage::default();
    for row in &rows {
        let key = match by {
            GroupBy::Function => row.function.clone(),
            GroupBy::Caller => row.caller.clone(),
            GroupBy::Hour => hour_label(row.hour),
        };
        groups.entry(key).or_default().add(&row.usage);
        total.add(&row.usage);
    }
    let cost = |u: &Usage| pricing.cost(u.requests, u.gb_seconds(), u.egress_bytes());
    match format {
        Format::Json => {
            let line = |key: &str, u: &Usage| {
                serde_json::json!({
                    "key": key,
                    "requests": u.requests,
                    "wall_seconds": u.wall_us as f64 / 1e6,
                    "gb_seconds": u.gb_seconds(),
                    "request_bytes": u.request_bytes,
                    "response_bytes": u.response_bytes,
                    "outbound_bytes": u.outbound_bytes,
                    "cost": cost(u),
                })
            };
            let document = serde_json::json!({
                "by": match by { GroupBy::Function => "function", GroupBy::Caller => "caller", GroupBy::Hour => "hour" },
                "since_hour": hour_label(hour_of(since_ms)),
                "currency": pricing.currency,
                "rows": groups.iter().map(|(k, u)| line(k, u)).collect::<Vec<_>>(),
                "total": line("total", &total),
            });
            println!("{document}");
        }
        Format::Table => {
            let header = match by {
                GroupBy::Function => "FUNCTION",
                GroupBy::Caller => "CALLER",
                GroupBy::Hour => "HOUR (UTC)",
            };
            let width = groups
                .keys()
                .map(String::len)
                .chain([header.len(), 5])
                .max()
                .unwrap_or(8);
            println!(
                "{header:<width$}  {:>10}  {:>10}  {:>12}  {:>12}  {:>12}  {:>12}",
                "REQUESTS",
                "WALL s",
                "GB-s",
                "IN bytes",
                "OUT bytes",
                format!("COST {}", pricing.currency)
            );
            let print = |key: &str, u: &Usage| {
                println!(
                    "{key:<width$}  {:>10}  {:>10.3}  {:>12.6}  {:>12}  {:>12}  {:>12.6}",
                    u.requests,
                    u.wall_us as f64 / 1e6,
                    u.gb_seconds(),
                    u.request_bytes,
                    u.egress_bytes(),
                    cost(u)
                );
            };
            for (key, usage) in &groups {
                print(key, usage);
            }
            print("TOTAL", &total);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-29T14:00Z` for an hour since the epoch.
fn hour_label(hour: i64) -> String {
    let seconds = u64::try_from(hour.max(0)).unwrap_or(0) * 3600;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    // `2026-11-29T14:00:00Z` -> `2026-11-29T14:00Z`
    format!("{}Z", &text[..text.len().min(16)])
}
