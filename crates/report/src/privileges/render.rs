//! The review as text: aligned tables for a reader, and a unified diff of
//! `bulkhead.toml` with the smaller grants, one line per hunk and no
//! context (`patch -p1` and `git apply --unidiff-zero` apply it; the lines
//! before `---` are comments they skip).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::edit::{self, Edit};
use super::{GrantReport, Invoked, Review, Status, WindowReport};

/// Columns padded to their widest cell, two spaces apart.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            let pad = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<pad$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn grant_label(g: &GrantReport) -> String {
    match g.access {
        Some(access) => format!("{} {} ({access})", g.capability, g.name),
        None => format!("{} {}", g.capability, g.name),
    }
}

fn line_label(line: Option<usize>) -> String {
    line.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// One titled table, or `none`.
fn section(out: &mut String, title: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "\n{title} ({}):", rows.len());
    if rows.is_empty() {
        out.push_str("  none\n");
    } else {
        out.push_str(&columns(header, rows));
    }
}

fn or_dash(text: Option<String>) -> String {
    text.unwrap_or_else(|| "-".to_string())
}

pub(super) fn table(review: &Review) -> String {
    let mut out = String::new();
    let w = &review.window;
    let _ = writeln!(
        out,
        "Privilege review of `{}` in `{}`, {} to {}",
        review.app, review.env, w.since, w.until
    );
    out.push_str(
        "From the audit trail (each grant's uses and refusals) and the meter (calls per function per hour).\n",
    );
    if !review.notes.is_empty() {
        out.push_str("Notes:\n");
        for note in &review.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }

    let narrower: Vec<Vec<String>> = review
        .grants
        .iter()
        .filter(|g| g.status != Status::Used)
        .map(|g| {
            let suggestion = g.suggestion.as_ref().map(|s| s.text.clone());
            vec![
                g.function.clone(),
                grant_label(g),
                line_label(g.line),
                g.finding.clone(),
                or_dash(suggestion),
            ]
        })
        .collect();
    section(
        &mut out,
        "Grants unused or wider than their use",
        &["FUNCTION", "GRANT", "LINE", "FINDING", "SUGGESTION"],
        &narrower,
    );

    let idle: Vec<Vec<String>> = review
        .functions
        .iter()
        .filter(|f| f.invoked != Invoked::Yes)
        .map(|f| {
            let finding = match f.invoked {
                Invoked::PerhapsBeforeWindow => format!(
                    "{} call(s), all in the hour the window starts in: perhaps before it",
                    f.calls
                ),
                Invoked::Unknown => "not known (metering is off)".to_string(),
                Invoked::Never | Invoked::Yes => "never invoked".to_string(),
            };
            vec![
                f.name.clone(),
                f.route.clone(),
                line_label(f.line),
                finding,
                or_dash(f.suggestion.clone()),
            ]
        })
        .collect();
    section(
        &mut out,
        "Functions not invoked in the window",
        &["FUNCTION", "ROUTE", "LINE", "FINDING", "SUGGESTION"],
        &idle,
    );

    let used: Vec<Vec<String>> = review
        .grants
        .iter()
        .filter(|g| matches!(g.status, Status::Used | Status::Wider))
        .map(|g| {
            vec![
                g.function.clone(),
                grant_label(g),
                line_label(g.line),
                g.uses.to_string(),
                or_dash(g.writes.map(|n| n.to_string())),
                or_dash(g.last_use.clone()),
            ]
        })
        .collect();
    section(
        &mut out,
        "Grants used",
        &["FUNCTION", "GRANT", "LINE", "USES", "WRITES", "LAST USE"],
        &used,
    );

    let inferred: Vec<String> = review
        .grants
        .iter()
        .flat_map(|g| {
            g.inferred
                .iter()
                .map(move |why| format!("  - {} {}: {why}", g.function, grant_label(g)))
        })
        .collect();
    if !inferred.is_empty() {
        let _ = writeln!(out, "\nInferred:\n{}", inferred.join("\n"));
    }

    let s = &review.summary;
    let _ = writeln!(
        out,
        "\n{} grant(s) in {} function(s): {} used as granted, {} wider than their use, {} unused, {} uncertain, {} only refused; {} function(s) never invoked.",
        s.grants,
        s.functions,
        s.used,
        s.wider,
        s.unused,
        s.uncertain,
        s.refused_only,
        s.functions_never_invoked
    );
    if s.wider + s.unused > 0 {
        out.push_str("`--format diff` shows the manifest lines to change.\n");
    }
    out
}

/// One manifest line and what it becomes.
#[derive(Debug, Clone)]
struct Change {
    line: usize,
    before: String,
    /// `None`: the line goes.
    after: Option<String>,
    why: Vec<String>,
}

/// The diff's changes and what must be done by hand.
#[derive(Debug, Clone, Default)]
pub(super) struct Diff {
    changes: Vec<Change>,
    /// (line, what to do) the diff cannot write.
    by_hand: Vec<(usize, String)>,
}

impl Diff {
    /// Apply each line's edits in turn; an edit its line does not fit is
    /// left to do by hand. `notes` are said beside the diff.
    pub fn build(
        lines: &[&str],
        edits: BTreeMap<usize, Vec<(Edit, String)>>,
        notes: Vec<(usize, String)>,
    ) -> Self {
        let mut diff = Self {
            by_hand: notes,
            ..Self::default()
        };
        for (line, edits) in edits {
            let Some(before) = line.checked_sub(1).and_then(|i| lines.get(i)) else {
                continue;
            };
            let mut text = (*before).to_string();
            let mut why = Vec::new();
            for (edit, reason) in edits {
                match edit::apply(&text, &edit) {
                    Some(after) => {
                        text = after;
                        why.push(reason);
                    }
                    None => diff
                        .by_hand
                        .push((line, format!("{reason} (change it by hand)"))),
                }
            }
            if why.is_empty() {
                continue;
            }
            diff.changes.push(Change {
                line,
                before: (*before).to_string(),
                after: (!text.is_empty()).then_some(text),
                why,
            });
        }
        diff.by_hand.sort();
        diff
    }

    /// The unified diff, with comments for what it cannot say.
    pub fn text(&self, app: &str, window: &WindowReport) -> String {
        let mut out = format!(
            "# bulkhead review privileges: `{app}`, {} to {}\n",
            window.since, window.until
        );
        for (line, what) in &self.by_hand {
            let _ = writeln!(out, "# line {line}: {what}");
        }
        if self.changes.is_empty() {
            out.push_str("# no grant line to change: every grant was used as granted\n");
            return out;
        }
        out.push_str("--- a/bulkhead.toml\n+++ b/bulkhead.toml\n");
        // Lines removed above shift the new file's numbers.
        let mut shift: i64 = 0;
        for change in &self.changes {
            let old = i64::try_from(change.line).unwrap_or(i64::MAX);
            let new = old + shift;
            let header = match change.after {
                Some(_) => format!("@@ -{old} +{new} @@"),
                None => format!("@@ -{old} +{},0 @@", new - 1),
            };
            let _ = writeln!(out, "{header} {}", change.why.join("; "));
            let _ = writeln!(out, "-{}", change.before);
            match &change.after {
                Some(after) => {
                    let _ = writeln!(out, "+{after}");
                }
                None => shift -= 1,
            }
        }
        out
    }
}
