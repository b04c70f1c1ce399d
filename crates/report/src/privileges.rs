//! `bulkhead review privileges`: grants never exercised (T16).
//!
//! Least privilege is not only granting little at first; grants outlive
//! the code that needed them. This review reads what Bulkhead recorded over
//! a window (the audit trail's `capability.used`, `capability.denied` and
//! `capability.folded` records, and the meter's calls per function per
//! hour) and sets it against the manifest's grants:
//!
//! - a store never opened or queried, a secret or config key never read,
//!   an outbound origin never called: remove the grant;
//! - a read-write store never written: grant `read`;
//! - a wildcard origin under which only a few hosts were called: grant
//!   those origins exactly;
//! - a function never invoked: remove it, or check its route;
//!
//! each with the manifest line that grants it, and the grants that were
//! used with their last use. What the records cannot show is said, not
//! hidden: a trail that starts after the window does, events dropped or
//! only counted, uses known only from a folded count or a refused attempt.

mod edit;
mod evidence;
mod notes;
mod render;

use std::collections::BTreeMap;

use bulkhead_manifest::{App, StoreAccess};
use serde::Serialize;

use edit::Edit;
pub use evidence::Evidence;
use evidence::{Capability, FunctionUse, Grant, GrantUse, MAX_HOSTS};

/// Wildcard grants under which at most this many hosts were called get
/// the exact origins suggested instead.
const MAX_SUGGESTED_ORIGINS: usize = 8;

/// The time a review covers, in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since_ms: i64,
    pub until_ms: i64,
}

/// The shortest window a review can judge: the meter's grain. The CLI
/// refuses shorter ones; given one, the review suggests nothing.
pub const MIN_WINDOW_MS: i64 = evidence::HOUR_MS;

impl Window {
    /// Shorter than the meter's hour: whether a function ran in it cannot
    /// be told from the meter, so "unused" would mean only "not in these
    /// few minutes" (T16).
    pub fn is_short(&self) -> bool {
        self.until_ms.saturating_sub(self.since_ms) < MIN_WINDOW_MS
    }
}

/// How long the meter keeps its rows (`bulkhead_store::meter`).
pub const METER_DAYS: i64 = bulkhead_store::meter::RETENTION_DAYS;

/// The review of one app over one window.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub app: String,
    pub env: String,
    pub window: WindowReport,
    /// What the records cannot show, and what was inferred.
    pub notes: Vec<String>,
    /// Every grant, in manifest order.
    pub grants: Vec<GrantReport>,
    pub functions: Vec<FunctionReport>,
    pub summary: Summary,
    #[serde(skip)]
    diff: render::Diff,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub since: String,
    pub until: String,
    pub since_ms: i64,
    pub until_ms: i64,
    /// The oldest record of the audit trail, if it has any.
    pub trail_starts: Option<String>,
}

/// One grant of one function and what the window shows of it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantReport {
    pub function: String,
    /// `kv`, `sql`, `secret`, `config` or `outbound`.
    pub capability: &'static str,
    /// The store, secret, config key, or the origin as written.
    pub name: String,
    /// Stores: `read` or `read-write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<&'static str>,
    /// The manifest line that grants it.
    pub line: Option<usize>,
    pub status: Status,
    /// Recorded uses (one per call and kind for SQL, config and writes).
    pub uses: u64,
    pub last_use: Option<String>,
    /// Stores: recorded writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<u64>,
    /// Refused attempts on the granted resource.
    pub refused: u64,
    pub last_refusal: Option<String>,
    /// Writes refused under this `read` grant.
    pub refused_writes: u64,
    /// Outbound: the origins called under this grant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostReport>,
    /// What the window shows, in words.
    pub finding: String,
    pub suggestion: Option<Suggestion>,
    /// What was inferred rather than read from a record of the use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inferred: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Used in the window.
    Used,
    /// Used, but less than granted: a read-write store never written, a
    /// wildcard under which only a few hosts were called.
    Wider,
    /// Not used; only refused attempts to use it.
    RefusedOnly,
    /// Neither used nor tried.
    Unused,
    /// No use recorded, but the window cannot tell: it is shorter than the
    /// meter's hour, or the function's only calls fall in the hour the
    /// window starts in. Nothing is suggested.
    Uncertain,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub origin: String,
    pub uses: u64,
    pub last_use: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    /// `remove`, `read` or `origins`.
    pub change: &'static str,
    /// The smaller grant, in words.
    pub text: String,
    /// The manifest line as it is, and as this change alone makes it
    /// (`""`: the line goes; `null`: change it by hand).
    pub manifest_line: Option<String>,
    pub suggested_line: Option<String>,
}

/// One function and whether it ran in the window.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionReport {
    pub name: String,
    pub route: String,
    pub line: Option<usize>,
    pub invoked: Invoked,
    /// Metered calls in the hours the window covers.
    pub calls: u64,
    /// The start of the last metered hour with calls.
    pub last_called_hour: Option<String>,
    /// When a `deploy` record first listed it.
    pub first_served: Option<String>,
    pub suggestion: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invoked {
    Yes,
    Never,
    /// Calls only in the hour the window starts in: the meter counts per
    /// hour, so they may be from before the window.
    PerhapsBeforeWindow,
    /// Metering is off and no capability record shows it ran.
    Unknown,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub grants: usize,
    pub used: usize,
    pub wider: usize,
    pub refused_only: usize,
    pub unused: usize,
    pub uncertain: usize,
    pub functions: usize,
    pub functions_never_invoked: usize,
}

impl Review {
    /// Review `app` (whose manifest text is `source`) against `evidence`.
    pub fn new(app: &App, source: &str, evidence: &Evidence) -> Self {
        let lines: Vec<&str> = source.lines().collect();
        let text_of = |line: Option<usize>| {
            line.and_then(|n| lines.get(n.checked_sub(1)?))
                .map(|s| (*s).to_string())
        };
        let mut grants = Vec::new();
        let mut functions = Vec::new();
        let mut edits: BTreeMap<usize, Vec<(Edit, String)>> = BTreeMap::new();
        let short = evidence.window.is_short();
        for function in app.all_functions() {
            let Some(tally) = evidence.functions.get(&function.name) else {
                continue;
            };
            let line = app.lines.get(&format!("function.{}", function.name));
            let report = function_report(function, line, tally, evidence);
            // T16: a grant is only called unused when the window can tell
            // (see `Status::Uncertain`).
            let uncertain = short || report.invoked == Invoked::PerhapsBeforeWindow;
            functions.push(report);
            for (grant, used) in &tally.grants {
                let line = app.lines.get(&grant.line_key(&function.name));
                let (mut report, edit) = grant_report(&function.name, grant, used, line, uncertain);
                if let (Some(suggestion), Some(edit)) = (report.suggestion.as_mut(), edit) {
                    let now = text_of(line);
                    suggestion.suggested_line = now.as_deref().and_then(|l| edit::apply(l, &edit));
                    suggestion.manifest_line = now;
                    if let Some(line) = line {
                        let why = format!(
                            "function `{}`: {} `{}`: {}",
                            function.name,
                            grant.capability.label(),
                            grant.name,
                            suggestion.text
                        );
                        edits.entry(line).or_default().push((edit, why));
                    }
                }
                grants.push(report);
            }
        }
        let said = [notes::window(app, evidence), notes::inferences(&grants)].concat();
        let summary = summarise(&grants, &functions);
        let never: Vec<(usize, String)> = functions
            .iter()
            .filter(|f| f.invoked == Invoked::Never && f.suggestion.is_some())
            .map(|f| {
                (
                    f.line.unwrap_or(0),
                    format!(
                        "function `{}` (route `{}`) was never invoked in the window: remove it, or check its route",
                        f.name, f.route
                    ),
                )
            })
            .collect();
        let diff = render::Diff::build(&lines, edits, never);
        Self {
            app: app.name.clone(),
            env: app.env.clone(),
            window: WindowReport {
                since: time(evidence.window.since_ms),
                until: time(evidence.window.until_ms),
                since_ms: evidence.window.since_ms,
                until_ms: evidence.window.until_ms,
                trail_starts: evidence.trail_start_ms.map(time),
            },
            notes: said,
            grants,
            functions,
            summary,
            diff,
        }
    }

    /// Aligned tables for a reader.
    pub fn table(&self) -> String {
        render::table(self)
    }

    /// The manifest lines to change, as a unified diff of `bulkhead.toml`.
    pub fn diff(&self) -> String {
        self.diff.text(&self.app, &self.window)
    }
}

/// RFC 3339, to the second.
fn time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn function_report(
    function: &bulkhead_manifest::Function,
    line: Option<usize>,
    tally: &FunctionUse,
    evidence: &Evidence,
) -> FunctionReport {
    let invoked = if tally.calls > 0 || tally.ran.any() {
        Invoked::Yes
    } else if !evidence.metered {
        Invoked::Unknown
    } else if tally.calls_first_hour > 0 {
        Invoked::PerhapsBeforeWindow
    } else {
        Invoked::Never
    };
    let suggestion = match invoked {
        Invoked::Never if !evidence.window.is_short() => Some(format!(
            "remove it, or check its route `{}`",
            function.route.as_str()
        )),
        _ => None,
    };
    FunctionReport {
        name: function.name.clone(),
        route: function.route.as_str().to_string(),
        line,
        invoked,
        calls: tally.calls.saturating_add(tally.calls_first_hour),
        last_called_hour: tally.last_hour_ms.map(time),
        first_served: tally.first_served_ms.map(time),
        suggestion,
    }
}

/// A smaller grant: its kind (`remove`, `read`, `origins`), in words, and
/// the edit that writes it.
type Smaller = (&'static str, String, Edit);

/// What the window shows of a grant, in words, and the smaller grant.
fn judge(grant: &Grant, used: &GrantUse, uncertain: bool) -> (Status, String, Option<Smaller>) {
    let field = grant.capability.field();
    let name = grant.name.clone();
    if used.exercised() {
        let uses = used.used.count.max(used.writes.count);
        if grant.access == Some(StoreAccess::ReadWrite) && !used.writes.any() && used.failed.any() {
            // A failed INSERT needed the write it did not make: not
            // narrowed on what failing statements were (T16).
            let finding = format!(
                "used {uses} time(s), never written; {} failed statement(s), perhaps writes",
                used.failed.count
            );
            return (Status::Used, finding, None);
        }
        if grant.access == Some(StoreAccess::ReadWrite) && !used.writes.any() {
            let edit = Edit::ReadOnly { field, store: name };
            let text = "grant \"read\": nothing was written".to_string();
            let finding = format!("used {uses} time(s), never written");
            return (Status::Wider, finding, Some(("read", text, edit)));
        }
        if let Some(origins) = called_origins(grant, used) {
            let list = origins.join(", ");
            let finding = format!(
                "only {} host(s) called under the wildcard: {list}",
                origins.len()
            );
            let text = format!("grant exactly {list}");
            let edit = Edit::ReplaceItem {
                field,
                item: name,
                with: origins,
            };
            return (Status::Wider, finding, Some(("origins", text, edit)));
        }
        return (Status::Used, format!("used {uses} time(s)"), None);
    }
    if used.refused.any() {
        let finding = format!(
            "never used; refused {} time(s) (last: {})",
            used.refused.count,
            used.last_reason.as_deref().unwrap_or("no reason recorded")
        );
        return (Status::RefusedOnly, finding, None);
    }
    if uncertain {
        let finding = "no use recorded, but the window cannot tell whether the function ran in it"
            .to_string();
        return (Status::Uncertain, finding, None);
    }
    let (never, edit) = match grant.capability {
        Capability::Kv => ("never opened", Edit::RemoveKey { field, key: name }),
        Capability::Sql => ("no statement ran", Edit::RemoveKey { field, key: name }),
        Capability::Secret | Capability::Config => {
            ("never read", Edit::RemoveItem { field, item: name })
        }
        Capability::Outbound => ("never called", Edit::RemoveItem { field, item: name }),
    };
    let remove = ("remove", "remove the grant".to_string(), edit);
    (Status::Unused, never.to_string(), Some(remove))
}

/// The grant's report, and the edit of its suggestion.
fn grant_report(
    function: &str,
    grant: &Grant,
    used: &GrantUse,
    line: Option<usize>,
    uncertain: bool,
) -> (GrantReport, Option<Edit>) {
    let (status, finding, smaller) = judge(grant, used, uncertain);
    let (suggestion, edit) = match smaller {
        Some((change, text, edit)) => (
            Some(Suggestion {
                change,
                text,
                manifest_line: None,
                suggested_line: None,
            }),
            Some(edit),
        ),
        None => (None, None),
    };
    let mut inferred = Vec::new();
    let folded = used.used.folded.saturating_add(used.writes.folded);
    if folded > 0 {
        inferred.push(format!(
            "{folded} use(s) known only from folded counts (a call's events past its first 16 of a kind): each timed at its call's end"
        ));
    }
    if status == Status::RefusedOnly {
        inferred.push(
            "the function tried to use it, so the grant is not suggested for removal: check why it was refused"
                .to_string(),
        );
    }
    if used.failed.any() {
        inferred.push(format!(
            "{} use(s) were statements that reached the database and failed there: counted as uses",
            used.failed.count
        ));
    }
    if used.more_hosts > 0 {
        inferred.push(format!(
            "{} call(s) to hosts past the first {MAX_HOSTS} named are only counted",
            used.more_hosts
        ));
    }
    let report = GrantReport {
        function: function.to_string(),
        capability: grant.capability.label(),
        name: grant.name.clone(),
        access: grant.access.map(StoreAccess::as_str),
        line,
        status,
        uses: used.used.count.max(used.writes.count),
        last_use: used.last_use_ms().map(time),
        writes: grant.access.map(|_| used.writes.count),
        refused: used.refused.count,
        last_refusal: used.last_reason.clone(),
        refused_writes: used.refused_writes.count,
        hosts: used
            .hosts
            .iter()
            .map(|(origin, seen)| HostReport {
                origin: origin.clone(),
                uses: seen.count,
                last_use: seen.last_ms.map(time),
            })
            .collect(),
        finding,
        suggestion,
        inferred,
    };
    (report, edit)
}

/// The exact origins to grant instead of a wildcard, when all the hosts
/// called under it are known and few.
fn called_origins(grant: &Grant, used: &GrantUse) -> Option<Vec<String>> {
    let few =
        !used.hosts.is_empty() && used.hosts.len() <= MAX_SUGGESTED_ORIGINS && used.more_hosts == 0;
    (grant.is_wildcard() && few).then(|| used.hosts.keys().cloned().collect())
}

fn summarise(grants: &[GrantReport], functions: &[FunctionReport]) -> Summary {
    let status = |s: Status| grants.iter().filter(|g| g.status == s).count();
    Summary {
        grants: grants.len(),
        used: status(Status::Used),
        wider: status(Status::Wider),
        refused_only: status(Status::RefusedOnly),
        unused: status(Status::Unused),
        uncertain: status(Status::Uncertain),
        functions: functions.len(),
        functions_never_invoked: functions
            .iter()
            .filter(|f| f.invoked == Invoked::Never)
            .count(),
    }
}

#[cfg(test)]
mod tests;
