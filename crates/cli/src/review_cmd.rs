//! `bulkhead review`: the app set against what it did. `privileges` lists
//! the grants its functions never exercised over a window, from the audit
//! trail and the meter, with the manifest line and the smaller grant to
//! write (T16). A report, not a gate: it exits 0 whatever it finds.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use bulkhead_report::privileges::{Evidence, MIN_WINDOW_MS, Review, Window};
use bulkhead_store::meter::hour_of;
use bulkhead_store::{AuditQuery, now_ms};
use clap::{Subcommand, ValueEnum};

use crate::Target;
use crate::audit_cmd::take_in_spills;

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Grants never used over a window, and the smaller grant to write.
    #[command(
        long_about = "Review the grants of the app in APP_DIR against what its functions did \
                      over the last --since (1h or more: the meter counts calls per hour): \
                      the audit trail records each use of a grant (a \
                      store opened, queried or written, a secret or config key read, an \
                      outbound origin called) and each refused attempt; the meter counts calls \
                      per function per hour.\n\n\
                      Listed, each with its line in bulkhead.toml and a smaller grant: stores \
                      never opened, read-write stores never written (grant \"read\"), secrets \
                      and config keys never read, outbound origins never called (for a \
                      wildcard, the hosts that were called, to grant exactly), and functions \
                      never invoked. Grants used are listed with their last use.\n\n\
                      The header says what the records cannot show: a trail that starts after \
                      the window does, events dropped or counted but not written, and what was \
                      inferred (uses known from folded counts, grants only tried and refused, \
                      grants of a function whose calls may predate the window: uncertain, \
                      never suggested for removal). \
                      `--format diff` prints the grant lines to change as a unified diff of \
                      bulkhead.toml (apply it with `patch -p1` or `git apply --unidiff-zero`). \
                      Exits 0 whatever it finds; it is a report, not a gate.",
        after_help = "Examples:\n  bulkhead review privileges my-app\n  bulkhead review privileges my-app --env prod --since 90d\n  bulkhead review privileges my-app --env prod --format diff | patch -p1 -d my-app\n  bulkhead review privileges my-app --format json | jq '.grants[] | select(.status != \"used\")'"
    )]
    Privileges {
        #[command(flatten)]
        target: Target,
        /// How far back to look, like 30d, 7d or 12h; at least 1h (the
        /// meter's grain).
        #[arg(long, default_value = "30d", value_name = "DURATION")]
        since: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned tables: unused or wider grants, idle functions, used grants.
    Table,
    /// One JSON document with every grant and function.
    Json,
    /// A unified diff of bulkhead.toml with the smaller grants.
    Diff,
}

pub fn run(command: ReviewCommand) -> Result<ExitCode> {
    match command {
        ReviewCommand::Privileges {
            target,
            since,
            format,
        } => privileges(&target, &since, format),
    }
}

fn privileges(target: &Target, since: &str, format: Format) -> Result<ExitCode> {
    let span = humantime::parse_duration(since).with_context(|| {
        format!("`--since {since}` is not a duration; write one like 30d, 7d or 12h")
    })?;
    // T16: the meter counts calls per hour, so a shorter window cannot
    // tell a grant unused from one whose function ran minutes before it.
    let min = u128::try_from(MIN_WINDOW_MS).unwrap_or(u128::MAX);
    if span.as_millis() < min {
        bail!(
            "`--since {since}` is shorter than an hour: the meter counts calls per hour, so a shorter window cannot tell an unused grant from one used just before it; write 1h or more, like 30d, 7d or 12h"
        );
    }
    let app = match crate::load_manifest(target) {
        Ok(app) => app,
        Err(problems) => return Ok(crate::report(&problems)),
    };
    let source = bulkhead_manifest::files::read_bounded_text(
        &app.manifest_path,
        bulkhead_manifest::files::MAX_TEXT_BYTES,
    )
    .with_context(|| format!("cannot read {}", app.manifest_path.display()))?;
    let store = target.store(false)?;
    let waiting = take_in_spills(&store)?;
    let until_ms = now_ms();
    let since_ms = until_ms.saturating_sub(i64::try_from(span.as_millis()).unwrap_or(i64::MAX));
    let mut evidence = Evidence::new(&app, Window { since_ms, until_ms });

    let mut served = false;
    store.visit_audit(
        &AuditQuery {
            kind: Some("deploy".into()),
            ..AuditQuery::default()
        },
        |record| {
            served = true;
            evidence.add_deploy(&record);
        },
    )?;
    if !served {
        bail!(
            "`{}` was never served in `{}`, so nothing is recorded to review; serve it there first (`bulkhead serve {} --env {}`)",
            app.name,
            app.env,
            target.app_dir.display(),
            app.env
        );
    }
    store.visit_audit(
        &AuditQuery {
            limit: Some(1),
            ..AuditQuery::default()
        },
        |record| evidence.trail_starts(record.time_ms),
    )?;
    store.visit_audit(
        &AuditQuery {
            since_ms: Some(since_ms),
            ..AuditQuery::default()
        },
        |record| evidence.add(&record),
    )?;
    if app.limits.metering {
        // The deployment's usage on PostgreSQL (issue 16).
        evidence.add_usage(&target.state(false)?.usage_since(hour_of(since_ms))?);
    }
    if waiting {
        eprintln!(
            "warning: audit records spilled at a shutdown are not on the trail yet (the database may be locked); run the review again when it is free"
        );
    }

    let review = Review::new(&app, &source, &evidence);
    match format {
        Format::Table => print!("{}", review.table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&review)?),
        Format::Diff => print!("{}", review.diff()),
    }
    Ok(ExitCode::SUCCESS)
}
