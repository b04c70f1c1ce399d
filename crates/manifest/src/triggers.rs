//! `trigger = { ... }` on a `[[function]]` (issue 18; T04, T05, T16):
//! a function run by a schedule (`schedule`, cron with seconds, UTC, or
//! `every`) or by the messages of a declared queue, instead of by HTTP.
//!
//! - A function is either HTTP-routed or triggered, never both: a
//!   triggered function has no route, so the gateway has nothing to expose
//!   (its HTTP keys are refused, each with the key to remove).
//! - Cron text is parsed by the `cron` crate, never by hand.
//! - A schedule whose runs overlap does not pile up: `overlap = "skip"`
//!   (the default) drops a run while the previous one still runs;
//!   `"queue"` keeps at most one run waiting.
//! - One queue has one consuming function, and its `visibility_timeout`
//!   covers that function's `timeout`, else a message would be delivered
//!   again while its first delivery still runs.
//!
//! A triggered function keeps every limit, grant and budget of an HTTP
//! one; its `route` is [`INTERNAL_ROUTE`], never served: the runtime will
//! POST each event to it.

use std::ops::Range;
use std::str::FromStr as _;

use serde::Deserialize;
use toml::Spanned;

use crate::Function;
use crate::problem::Collector;
use crate::queues::QueueSpec;
use crate::raw::RawFunction;
use crate::units::Duration;

/// The path a triggered function's event is posted to, inside the host
/// only: it is in no router.
pub const INTERNAL_ROUTE: &str = "/";

/// The shortest `every`.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// A function run by a trigger instead of by HTTP.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// Its limits, grants and budget as for an HTTP function; `route` is
    /// [`INTERNAL_ROUTE`], `methods` is `POST`, and the body cap is the
    /// queue's `max_message_bytes` for a queue trigger.
    pub function: Function,
    pub trigger: Trigger,
}

/// What runs a triggered function.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// `schedule = "0 */5 * * * *"`: cron with seconds, in UTC.
    Schedule {
        schedule: Box<Schedule>,
        overlap: Overlap,
    },
    /// `every = "30s"`.
    Every { period: Duration, overlap: Overlap },
    /// `queue = "NAME"`: each message of the declared queue.
    Queue { queue: String },
}

impl Trigger {
    /// The caller name of its calls in meters, budgets and audit records.
    pub fn caller(&self, function: &str) -> String {
        format!("trigger:{function}")
    }

    /// How the trigger is written, for reports.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Schedule { schedule, overlap } => {
                format!(
                    "schedule `{}` (UTC), overlap {}",
                    schedule.as_str(),
                    overlap.as_str()
                )
            }
            Trigger::Every { period, overlap } => {
                format!("every {period}, overlap {}", overlap.as_str())
            }
            Trigger::Queue { queue } => format!("queue `{queue}`"),
        }
    }
}

/// A parsed cron schedule with seconds (`sec min hour day month weekday
/// [year]`), in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    parsed: cron::Schedule,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed = cron::Schedule::from_str(text.trim()).map_err(|_| {
            "is not a cron schedule with seconds; write six fields `second minute hour day-of-month month day-of-week`, like `0 */5 * * * *` (every five minutes) or `0 0 6 * * Mon-Fri`".to_string()
        })?;
        let schedule = Self {
            text: text.trim().to_string(),
            parsed,
        };
        if schedule.next_after_ms(now_ms()).is_none() {
            return Err("never fires again (a date that does not exist or is past); check the day, month and year fields".into());
        }
        Ok(schedule)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first firing strictly after `unix_ms`, in ms since the epoch.
    pub fn next_after_ms(&self, unix_ms: i64) -> Option<i64> {
        let after = chrono::DateTime::from_timestamp_millis(unix_ms)?;
        self.parsed
            .after(&after)
            .next()
            .map(|at| at.timestamp_millis())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a schedule does when its previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Drop this run (the default): runs never pile up.
    Skip,
    /// Keep this run waiting, at most one.
    Queue,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        }
    }
}

/// `trigger = { ... }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    pub schedule: Option<Spanned<String>>,
    pub every: Option<Spanned<String>>,
    pub queue: Option<Spanned<String>>,
    pub overlap: Option<Spanned<String>>,
}

/// A triggered function must not carry the keys of an HTTP one: each is
/// refused with the key to remove.
pub(crate) fn check_not_routed(out: &mut Collector<'_>, f: &RawFunction, trigger: Range<usize>) {
    let name = f.name.get_ref();
    let spans = [
        ("route", f.route.as_ref().map(Spanned::span)),
        ("methods", f.methods.as_ref().map(Spanned::span)),
        ("auth", f.auth.as_ref().map(Spanned::span)),
        ("scopes", f.scopes.as_ref().map(Spanned::span)),
        ("public_reason", f.public_reason.as_ref().map(Spanned::span)),
        ("client_cert", f.client_cert.as_ref().map(Spanned::span)),
        ("rate_limit", f.rate_limit.as_ref().map(Spanned::span)),
        (
            "max_request_body",
            f.max_request_body.as_ref().map(Spanned::span),
        ),
        ("input", input_written(f).then(|| trigger.clone())),
    ];
    for (key, span) in spans {
        if let Some(span) = span {
            out.at(
                Some(span),
                format!("function `{name}` has both `trigger` and `{key}`: a function is either HTTP-routed or triggered, not both; remove `{key}` to run it only on its trigger, or remove `trigger` to serve it over HTTP"),
            );
        }
    }
}

fn input_written(f: &RawFunction) -> bool {
    let i = &f.input;
    !i.path.is_empty()
        || !i.query.is_empty()
        || i.allow_unknown_query.is_some()
        || !i.headers.is_empty()
        || i.content_types.is_some()
        || i.max_body.is_some()
        || i.body_schema.is_some()
}

/// Resolve one `trigger`: exactly one of `schedule`, `every`, `queue`.
pub(crate) fn resolve(
    out: &mut Collector<'_>,
    function: &str,
    raw: &Spanned<RawTrigger>,
    queues: &[QueueSpec],
) -> Option<Trigger> {
    let t = raw.get_ref();
    let count = [t.schedule.is_some(), t.every.is_some(), t.queue.is_some()]
        .iter()
        .filter(|set| **set)
        .count();
    if count != 1 {
        out.at(
            Some(raw.span()),
            format!("function `{function}`: `trigger` needs exactly one of `schedule = \"0 */5 * * * *\"` (cron with seconds, UTC), `every = \"30s\"` or `queue = \"NAME\"`"),
        );
        return None;
    }
    let overlap = match &t.overlap {
        None => Overlap::Skip,
        Some(o) if t.queue.is_some() => {
            out.at(
                Some(o.span()),
                format!("function `{function}`: `overlap` applies to schedules; a queue trigger's parallel runs are bounded by `max_concurrent_requests`; remove `overlap`"),
            );
            return None;
        }
        Some(o) => match o.get_ref().as_str() {
            "skip" => Overlap::Skip,
            "queue" => Overlap::Queue,
            _ => {
                out.at(
                    Some(o.span()),
                    format!("function `{function}`: `overlap` must be \"skip\" (drop a run while the last one runs, the default) or \"queue\" (keep one run waiting)"),
                );
                return None;
            }
        },
    };
    if let Some(text) = &t.schedule {
        return match Schedule::parse(text.get_ref()) {
            Ok(schedule) => Some(Trigger::Schedule {
                schedule: Box::new(schedule),
                overlap,
            }),
            Err(why) => {
                out.at(
                    Some(text.span()),
                    format!("function `{function}`: `schedule` {why}"),
                );
                None
            }
        };
    }
    if let Some(text) = &t.every {
        return match text.get_ref().parse::<Duration>() {
            Ok(period) if period >= MIN_EVERY => Some(Trigger::Every { period, overlap }),
            Ok(_) => {
                out.at(
                    Some(text.span()),
                    format!("function `{function}`: `every` must be at least {MIN_EVERY}"),
                );
                None
            }
            Err(why) => {
                out.at(
                    Some(text.span()),
                    format!("function `{function}`: `every`: {why}"),
                );
                None
            }
        };
    }
    let queue = t.queue.as_ref()?;
    if !queues.iter().any(|q| &q.name == queue.get_ref()) {
        out.at(
            Some(queue.span()),
            format!("function `{function}`: its trigger's queue is not declared; add a `[queue.NAME]` section for it"),
        );
        return None;
    }
    Some(Trigger::Queue {
        queue: queue.get_ref().clone(),
    })
}

/// The app-wide checks of queue triggers, and each queue-triggered
/// function's body cap set to its queue's message size.
pub(crate) fn finish(
    out: &mut Collector<'_>,
    triggered: &mut [(Range<usize>, Triggered)],
    queues: &[QueueSpec],
) {
    let mut consumers: Vec<(String, String)> = Vec::new();
    for (span, t) in triggered.iter_mut() {
        let Trigger::Queue { queue: name } = &t.trigger else {
            continue;
        };
        let f = &mut t.function;
        if let Some((_, other)) = consumers.iter().find(|(q, _)| q == name) {
            out.at(
                Some(span.clone()),
                format!("queue `{name}` triggers both `{other}` and `{}`; each message goes to one function, so give each its own queue", f.name),
            );
        }
        let Some(queue) = queues.iter().find(|q| &q.name == name) else {
            continue;
        };
        if queue.visibility_timeout < f.limits.timeout {
            out.at(
                Some(span.clone()),
                format!("queue `{name}`: its `visibility_timeout` ({}) is shorter than the `timeout` of `{}` ({}), so a message would be delivered again while it still runs; raise `visibility_timeout` to at least {} or lower the function's `timeout`", queue.visibility_timeout, f.name, f.limits.timeout, f.limits.timeout),
            );
        }
        f.limits.max_request_body = queue.max_message_bytes;
        consumers.push((name.clone(), f.name.clone()));
    }
}

#[cfg(test)]
#[path = "triggers/tests.rs"]
mod tests;
