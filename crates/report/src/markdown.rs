//! The threat model as a Markdown document a person can hand to a
//! reviewer, laid out like a hand-written model: who calls the app, what
//! data it keeps, how an attacker gets in and the control for each way in.
//! The diagram is Mermaid, which code hosts render in place.

use std::fmt::Write;

use bulkhead_manifest::text::is_hidden;

use crate::model::*;
use crate::tables::{self, Cell, Table};

/// Text from the manifest as Markdown shows it: `<` cannot open raw HTML
/// (renderers pass it through), and control characters, bidirectional
/// overrides and invisible formatting become U+FFFD, so nothing in a name
/// or pattern can reorder, hide or colour what a reviewer reads (T21).
pub fn plain(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '\n' => "\n".to_string(),
            c if is_hidden(c) => '\u{fffd}'.to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A table cell: no line breaks, no column separators, code spans kept.
fn cell(text: &str) -> String {
    plain(text)
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('\n', " ")
}

fn line(line: Option<usize>) -> String {
    line.map_or(String::new(), |l| format!("L{l}"))
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn table(out: &mut String, head: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

pub fn markdown(model: &ThreatModel) -> String {
    let mut out = String::new();
    let (open, mitigated, accepted) = model.counts();
    let by = |s: Severity| model.open_count(s);
    let _ = writeln!(out, "# Threat model: {} (env `{}`)\n", model.app, model.env);
    let _ = writeln!(
        out,
        "Derived by {} from `{}` and the components it names: run \
         `bulkhead threat-model` again after every change rather than editing this file.\n",
        model.generator, model.manifest
    );
    let _ = writeln!(
        out,
        "**{open} open** ({} high, {} medium, {} low), {mitigated} mitigated, {accepted} accepted.\n",
        by(Severity::High),
        by(Severity::Medium),
        by(Severity::Low)
    );

    let mut brief = String::new();
    overview(&mut brief, model);
    out.push_str(&plain(&brief));

    out.push_str("## Open findings\n\n");
    let mut open: Vec<&Threat> = model
        .threats
        .iter()
        .filter(|t| t.status == Status::Open)
        .collect();
    open.sort_by_key(|t| std::cmp::Reverse(t.severity));
    if open.is_empty() {
        out.push_str("None.\n\n");
    } else {
        table(
            &mut out,
            &["Severity", "Threat", "Finding", "Fix", "Rule", "Line"],
            open.iter().map(|t| {
                vec![
                    t.severity.as_str().into(),
                    format!("{} {}", t.threat_id, t.stride.as_str()),
                    t.title.clone(),
                    t.detail.clone(),
                    format!("`{}` for `{}`", t.rule, t.accept_as),
                    line(t.line),
                ]
            }),
        );
    }

    out.push_str("## Data-flow diagram\n\n");
    out.push_str("Dashed boxes are trust boundaries; every arrow that leaves one crosses it.\n\n");
    out.push_str("```mermaid\n");
    out.push_str(&mermaid(&model.diagram));
    out.push_str("```\n\n");

    inventory(&mut out, model);
    personal_data(&mut out, model);
    stride(&mut out, model);
    out
}

/// The questions a hand-written model opens with, answered from the app.
fn overview(out: &mut String, model: &ThreatModel) {
    let inv = &model.inventory;
    let public: Vec<String> = inv
        .entry_points
        .iter()
        .filter(|e| e.auth.iter().any(|a| a == "public"))
        .map(|e| format!("`{}`", e.route))
        .collect();
    let authenticated = inv.entry_points.len() - public.len();
    out.push_str("## The app in brief\n\n");
    let _ = writeln!(
        out,
        "- **Who calls it:** {} route(s); {} public ({}), {authenticated} need a credential.",
        inv.entry_points.len(),
        public.len(),
        list(&public)
    );
    let personal: Vec<String> = model
        .personal_data
        .iter()
        .map(|p| {
            format!(
                "`{}` ({})",
                p.store,
                p.retention
                    .as_ref()
                    .map_or("kept for ever".to_string(), |r| format!("kept {r}"))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "- **What data it keeps:** {} store(s); personal data in {}.",
        inv.stores.len(),
        list(&personal)
    );
    let outbound: Vec<String> = inv
        .outbound
        .iter()
        .map(|o| format!("`{}`", o.origin))
        .collect();
    let _ = writeln!(out, "- **Where it reaches:** {}.", list(&outbound));
    let secrets: Vec<String> = inv
        .secrets_and_config
        .iter()
        .filter(|n| n.kind == "secret")
        .map(|n| format!("`{}`", n.name))
        .collect();
    let _ = writeln!(out, "- **Secrets it reads:** {}.\n", list(&secrets));
}

fn md_cell(cell: &Cell) -> String {
    match cell {
        Cell::Text(text) => text.clone(),
        Cell::Code(text) => format!("`{text}`"),
        Cell::List(items) => list(items),
        Cell::Lines(items) if items.is_empty() => "none".into(),
        Cell::Lines(items) => items.join("; "),
        Cell::Line(l) => line(*l),
        Cell::Digest {
            digest: Some(d),
            pinned,
        } => format!("`{d}` ({})", if *pinned { "pinned" } else { "not pinned" }),
        Cell::Digest { digest: None, .. } => "unreadable".into(),
        Cell::Imports(names) => names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(" "),
        Cell::OrWarning(value, warning) => value.clone().unwrap_or_else(|| (*warning).into()),
    }
}

fn render(out: &mut String, table: &Table) {
    let _ = writeln!(
        out,
        "{} {}\n",
        "#".repeat(table.level.into()),
        table.heading
    );
    match table.empty {
        Some(empty) if table.rows.is_empty() => {
            let _ = writeln!(out, "{empty}\n");
        }
        _ => self::table(
            out,
            table.head,
            table
                .rows
                .iter()
                .map(|row| row.iter().map(md_cell).collect()),
        ),
    }
}

fn inventory(out: &mut String, model: &ThreatModel) {
    let inv = &model.inventory;
    out.push_str("## Inventory\n\n");
    for table in tables::inventory(model) {
        render(out, &table);
    }
    let _ = writeln!(out, "### Admin listener\n\n{}.\n", inv.admin.summary);
    out.push_str("### Telemetry export\n\n");
    match &inv.telemetry {
        Some(t) => {
            let _ = writeln!(
                out,
                "One span per request to `{}`, sample ratio {}.\n",
                t.endpoint, t.sample_ratio
            );
        }
        None => out.push_str("None: logs and the audit trail stay on this host.\n\n"),
    }
    render(out, &tables::boundaries(model));
}

fn personal_data(out: &mut String, model: &ThreatModel) {
    render(out, &tables::personal_data(model));
}

fn stride(out: &mut String, model: &ThreatModel) {
    out.push_str("## Threats, element by element (STRIDE)\n\n");
    for element in &model.diagram.elements {
        let threats: Vec<&Threat> = model
            .threats
            .iter()
            .filter(|t| t.element == element.id)
            .collect();
        if threats.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "### {} ({})\n",
            plain(&element.name),
            kind_name(element.kind)
        );
        table(
            out,
            &[
                "STRIDE",
                "Threat",
                "Status",
                "Severity",
                "Mitigation, fix or reason",
                "Line",
            ],
            threats.iter().map(|t| {
                vec![
                    format!("{} {}", t.stride.letter(), t.threat_id),
                    t.title.clone(),
                    t.status.as_str().into(),
                    t.severity.as_str().into(),
                    t.detail.clone(),
                    line(t.line),
                ]
            }),
        );
    }
}

pub(crate) fn kind_name(kind: ElementKind) -> &'static str {
    match kind {
        ElementKind::Actor => "actor",
        ElementKind::Process => "process",
        ElementKind::Store => "data store",
        ElementKind::External => "external system",
    }
}

/// A Mermaid label: quotes and markup characters as entities.
fn label(text: &str) -> String {
    plain(text)
        .replace("&lt;", "#lt;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
        .replace(['\n', '\r'], " ")
}

/// A Mermaid flowchart: one subgraph per trust zone that holds anything.
pub(crate) fn mermaid(diagram: &Diagram) -> String {
    let mut out = String::from("flowchart LR\n");
    let node = |id: &str| {
        diagram
            .elements
            .iter()
            .position(|e| e.id == id)
            .map_or("missing".to_string(), |i| format!("n{i}"))
    };
    for (zi, zone) in diagram.zones.iter().enumerate() {
        let members: Vec<(usize, &Element)> = diagram
            .elements
            .iter()
            .enumerate()
            .filter(|(_, e)| e.zone == zone.id)
            .collect();
        if members.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  subgraph z{zi}[\"{}\"]", label(&zone.name));
        for (i, e) in members {
            let name = label(&e.name);
            let shape = match e.kind {
                ElementKind::Actor => format!("n{i}([\"{name}\"])"),
                ElementKind::Process => format!("n{i}[\"{name}\"]"),
                ElementKind::Store => format!("n{i}[(\"{name}\")]"),
                ElementKind::External => format!("n{i}[/\"{name}\"/]"),
            };
            let _ = writeln!(out, "    {shape}");
        }
        out.push_str("  end\n");
        let _ = writeln!(out, "  style z{zi} stroke-dasharray: 5 5");
    }
    for flow in &diagram.flows {
        let _ = writeln!(
            out,
            "  {} -->|\"{}\"| {}",
            node(&flow.from),
            label(&flow.label),
            node(&flow.to)
        );
    }
    out
}
