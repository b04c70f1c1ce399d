//! `bulkhead queue`: an operator's view of an app's queues (issue 18).
//! `list` shows each declared queue's counts and its oldest message's age;
//! `peek` shows messages without leasing them (payloads only on request,
//! since they may hold personal data, T20); `purge` deletes a queue's
//! messages; `redrive` sends dead messages back to be processed again.
//! Every command that reads payloads or changes a queue is audited (T08),
//! and nothing a message holds is printed raw (T08: no terminal escapes).

use std::process::ExitCode;

use anyhow::{Result, bail};
use bulkhead_manifest::App;
use bulkhead_store::AuditEvent;
use bulkhead_store::queue::{Peeked, QueueStats, SharedQueue};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::Target;

/// Most messages one `peek` shows.
const PEEK_CEILING: usize = 1_000;
/// Most bytes of one payload `peek --payload` prints.
const PAYLOAD_SHOWN: usize = 4_096;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Each declared queue: messages ready, in flight, delayed, parked, and
    /// the age of the oldest.
    #[command(
        long_about = "List every queue the manifest declares ([queue.NAME]) with its counts: \
                      `ready` (deliverable now), `in_flight` (leased by a consumer and not yet \
                      settled), `delayed` (waiting out a retry back-off), `parked` (dead and kept, \
                      never delivered by itself: the queue has no dead_letter queue, or the message \
                      was stopped by max_event_depth or max_event_messages), and the age of its oldest message. \
                      Reads the state directly: works while the app is served.",
        after_help = "Examples:\n  bulkhead queue list examples/waste-bins\n  bulkhead queue list my-app --env prod --format json"
    )]
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show a queue's oldest messages without taking them.
    #[command(
        long_about = "Show up to --limit of queue NAME's messages, oldest first, without leasing \
                      them: id, correlation id (the trace of the call that sent it), causal depth, \
                      attempts, age, state, and for a dead message why it died and where it came \
                      from. Payloads are shown only with --payload (they may hold personal data): \
                      decrypted with the environment's master key, as JSON strings when UTF-8, \
                      else as hex, cut at 4 KiB. A payload that fails authentication at rest is \
                      shown as `tampered`. --payload is audited as `queue.peeked`.",
        after_help = "Examples:\n  bulkhead queue peek my-app telemetry\n  bulkhead queue peek my-app telemetry-dead --payload --limit 5 --env prod"
    )]
    Peek {
        #[command(flatten)]
        target: Target,
        /// The queue, as declared in [queue.NAME].
        name: String,
        /// How many messages, 1 to 1000.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Also print each payload (audited).
        #[arg(long)]
        payload: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Delete every message of a queue (needs --yes).
    #[command(
        long_about = "Delete every message of queue NAME: ready, in flight, delayed and dead. \
                      Messages a consumer is processing now are deleted too: its acknowledgement \
                      then changes nothing. Cannot be undone, so it asks for --yes. Audited as \
                      `queue.purged` with the count.",
        after_help = "Example:\n  bulkhead queue purge my-app telemetry-dead --yes --env prod"
    )]
    Purge {
        #[command(flatten)]
        target: Target,
        /// The queue, as declared in [queue.NAME].
        name: String,
        /// Confirm: the messages are gone for good.
        #[arg(long)]
        yes: bool,
    },
    /// Send a queue's dead messages back to be processed again.
    #[command(
        long_about = "Move the dead messages of queue NAME back to be delivered again as new \
                      (attempts reset): for a dead-letter queue, each message returns to the queue \
                      it died in, or to --to; for a queue without a dead-letter queue, its parked \
                      messages become ready again. Fix the consumer first, or they die again. \
                      Their causal depth is kept, so a loop stopped at max_event_depth is not \
                      restarted by a redrive: a redriven message runs once more and whatever it \
                      sends is stopped again (T04). Audited as `queue.redriven` with the count.",
        after_help = "Examples:\n  bulkhead queue redrive my-app telemetry-dead\n  bulkhead queue redrive my-app telemetry-dead --to telemetry --env prod"
    )]
    Redrive {
        #[command(flatten)]
        target: Target,
        /// The queue holding the dead messages.
        name: String,
        /// Where to send them instead of where each came from.
        #[arg(long, value_name = "QUEUE")]
        to: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn run(command: QueueCommand) -> Result<ExitCode> {
    match command {
        QueueCommand::List { target, format } => list(&target, format),
        QueueCommand::Peek {
            target,
            name,
            limit,
            payload,
            format,
        } => peek(&target, &name, limit, payload, format),
        QueueCommand::Purge { target, name, yes } => purge(&target, &name, yes),
        QueueCommand::Redrive { target, name, to } => redrive(&target, &name, to.as_deref()),
    }
}

/// The app, its state and its queues, or the problems to report.
struct Opened {
    app: App,
    store: bulkhead_store::Store,
    queues: SharedQueue,
}

fn open(target: &Target) -> Result<Result<Opened, ExitCode>> {
    let app = match crate::load_app(target) {
        Ok(app) => app,
        Err(problems) => return Ok(Err(crate::report(&problems))),
    };
    if app.queues.is_empty() {
        bail!(
            "{} declares no queue; declare one with a [queue.NAME] section",
            target.app_dir.join("bulkhead.toml").display()
        );
    }
    let state = target.state(false)?;
    let keyring = state.keyring(&target.env)?;
    let queues = bulkhead_runtime::data::open_queue(&app, &state, &keyring)?;
    Ok(Ok(Opened {
        app,
        store: state.store().clone(),
        queues,
    }))
}

/// Refuse a queue the manifest does not declare, naming those it does; the
/// name is printed escaped, never raw.
fn declared(app: &App, name: &str) -> Result<()> {
    if app.queue(name).is_some() {
        return Ok(());
    }
    let names: Vec<String> = app.queues.iter().map(|q| format!("`{}`", q.name)).collect();
    bail!(
        "queue {} is not declared; the manifest declares {}",
        shown(name),
        names.join(", ")
    )
}

/// `name` quoted and escaped, for a message that must not print input raw.
fn shown(name: &str) -> String {
    let mut out = String::from("`");
    out.extend(name.chars().take(64).flat_map(char::escape_default));
    if name.chars().count() > 64 {
        out.push('…');
    }
    out.push('`');
    out
}

fn list(target: &Target, format: Format) -> Result<ExitCode> {
    let opened = match open(target)? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let now = bulkhead_store::now_ms();
    let stats = opened.queues.stats()?;
    match format {
        Format::Json => {
            let rows: Vec<_> = stats.iter().map(|s| stats_json(s, now)).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Format::Text => {
            println!(
                "{:<32} {:>9} {:>9} {:>9} {:>9} {:>12}",
                "QUEUE", "READY", "IN_FLIGHT", "DELAYED", "PARKED", "OLDEST"
            );
            for s in &stats {
                let oldest = s
                    .oldest_enqueued_ms
                    .map_or_else(|| "-".to_owned(), |at| age(now - at));
                println!(
                    "{:<32} {:>9} {:>9} {:>9} {:>9} {:>12}",
                    s.name, s.ready, s.in_flight, s.delayed, s.parked, oldest
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats_json(s: &QueueStats, now: i64) -> serde_json::Value {
    json!({
        "queue": s.name,
        "ready": s.ready,
        "in_flight": s.in_flight,
        "delayed": s.delayed,
        "parked": s.parked,
        "oldest_age_seconds": s.oldest_enqueued_ms.map(|at| (now - at).max(0) / 1000),
    })
}

/// A duration in ms as `3d4h`, `5m12s`, `40s`.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn peek(
    target: &Target,
    name: &str,
    limit: usize,
    payload: bool,
    format: Format,
) -> Result<ExitCode> {
    if !(1..=PEEK_CEILING).contains(&limit) {
        bail!("--limit must be between 1 and {PEEK_CEILING}");
    }
    let opened = match open(target)? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    declared(&opened.app, name)?;
    let messages = opened.queues.peek(name, limit)?;
    if payload {
        // Before anything is shown: a run killed in between over-reports,
        // never hides, a read of payloads (T08, T20).
        opened.store.record_first(
            AuditEvent::new("queue.peeked")
                .detail("queue", name)
                .detail("messages", messages.len()),
        )?;
    }
    let now = bulkhead_store::now_ms();
    let rows: Vec<_> = messages
        .iter()
        .map(|m| peeked_json(m, now, payload))
        .collect();
    match format {
        Format::Json => println!(
            "{}",
            crate::terminal::safe(&serde_json::to_string_pretty(&rows)?)
        ),
        Format::Text => {
            if rows.is_empty() {
                eprintln!("queue `{name}` holds no message");
            }
            for row in &rows {
                // One line of JSON per message: every string escaped.
                println!("{}", crate::terminal::safe(&serde_json::to_string(row)?));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn peeked_json(m: &Peeked, now: i64, payload: bool) -> serde_json::Value {
    let state = if m.parked || m.dead_reason.is_some() {
        "dead"
    } else if m.leased {
        "in_flight"
    } else if m.visible_ms > now {
        "delayed"
    } else {
        "ready"
    };
    let mut row = json!({
        "id": m.id.to_string(),
        "correlation_id": m.correlation_id,
        "depth": m.depth,
        "attempts": m.attempts,
        "age_seconds": (now - m.enqueued_ms).max(0) / 1000,
        "state": state,
    });
    if let Some(reason) = &m.dead_reason {
        row["dead_reason"] = json!(reason);
    }
    if let Some(origin) = &m.origin {
        row["from"] = json!(origin);
    }
    if payload {
        match &m.payload {
            None => row["payload"] = json!("tampered"),
            Some(bytes) => {
                let cut = &bytes[..bytes.len().min(PAYLOAD_SHOWN)];
                match std::str::from_utf8(cut) {
                    Ok(text) => row["payload"] = json!(text),
                    Err(_) => row["payload_hex"] = json!(hex::encode(cut)),
                }
                if bytes.len() > PAYLOAD_SHOWN {
                    row["payload_bytes"] = json!(bytes.len());
                }
            }
        }
    }
    row
}

fn purge(target: &Target, name: &str, yes: bool) -> Result<ExitCode> {
    let opened = match open(target)? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    declared(&opened.app, name)?;
    if !yes {
        bail!(
            "purging deletes every message of queue `{name}` for good; run again with --yes to confirm"
        );
    }
    opened
        .store
        .record_first(AuditEvent::new("queue.purge_started").detail("queue", name))?;
    let deleted = opened.queues.purge(name)?;
    opened.store.record_first(
        AuditEvent::new("queue.purged")
            .detail("queue", name)
            .detail("messages", deleted),
    )?;
    eprintln!("queue `{name}`: {deleted} message(s) deleted");
    Ok(ExitCode::SUCCESS)
}

fn redrive(target: &Target, name: &str, to: Option<&str>) -> Result<ExitCode> {
    let opened = match open(target)? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    declared(&opened.app, name)?;
    if let Some(to) = to {
        declared(&opened.app, to)?;
    }
    opened.store.record_first(
        AuditEvent::new("queue.redrive_started")
            .detail("queue", name)
            .detail("to", to.unwrap_or("origin")),
    )?;
    let moved = opened.queues.redrive(name, to)?;
    opened.store.record_first(
        AuditEvent::new("queue.redriven")
            .detail("queue", name)
            .detail("to", to.unwrap_or("origin"))
            .detail("messages", moved),
    )?;
    eprintln!(
        "queue `{name}`: {moved} dead message(s) sent back to {}",
        to.map_or_else(|| "where each came from".to_owned(), |to| format!("`{to}`"))
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_units() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(61_000), "1m1s");
        assert_eq!(age(3_720_000), "1h2m");
        assert_eq!(age(90_000_000), "1d1h");
    }

    #[test]
    fn names_are_escaped_and_cut() {
        assert_eq!(shown("a\u{1b}[2J"), "`a\\u{1b}[2J`");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 64 + 3);
    }
}
