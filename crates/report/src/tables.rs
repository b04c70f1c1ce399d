//! The inventory and personal-data tables, once: which columns, which rows
//! and what kind of value each cell holds. The Markdown and HTML renderers
//! only decide how a kind of cell looks.

use crate::model::ThreatModel;

/// One cell, by what it holds.
pub(crate) enum Cell {
    /// Prose; `code spans` in it are kept.
    Text(String),
    /// A route, path, origin or name, shown as code.
    Code(String),
    /// Names joined by commas, or `none`.
    List(Vec<String>),
    /// One item per line (Markdown: `; `), or `none`.
    Lines(Vec<String>),
    /// A manifest line, `L12`, or nothing.
    Line(Option<usize>),
    /// A component's digest and whether the manifest pins it.
    Digest {
        digest: Option<String>,
        pinned: bool,
    },
    /// Interface names, each as code.
    Imports(Vec<String>),
    /// A value that is a finding when missing: shown as a warning.
    OrWarning(Option<String>, &'static str),
}

/// One table: its heading, columns and rows; `empty` is said instead of
/// a table without rows.
pub(crate) struct Table {
    pub heading: &'static str,
    /// 3 for `###`, 4 for `####`.
    pub level: u8,
    pub head: &'static [&'static str],
    pub rows: Vec<Vec<Cell>>,
    pub empty: Option<&'static str>,
}

fn yes_no(flag: bool) -> Cell {
    Cell::Text(if flag { "yes" } else { "no" }.into())
}

/// The inventory before the admin listener and telemetry paragraphs.
pub(crate) fn inventory(model: &ThreatModel) -> Vec<Table> {
    let inv = &model.inventory;
    let entry_points = Table {
        heading: "Entry points",
        level: 3,
        head: &[
            "Route",
            "Methods",
            "Function",
            "Auth",
            "Scopes",
            "Input",
            "Limits",
            "Rate limit",
            "Budget",
            "Line",
        ],
        rows: inv
            .entry_points
            .iter()
            .map(|e| {
                vec![
                    Cell::Code(e.route.clone()),
                    Cell::Text(e.methods.join(", ")),
                    Cell::Text(e.function.clone()),
                    Cell::Text(e.auth.join(", ")),
                    Cell::List(e.scopes.clone()),
                    Cell::Lines(e.input.clone()),
                    Cell::Text(e.limits.clone()),
                    Cell::Text(e.rate_limit.clone()),
                    Cell::Text(e.budget.clone()),
                    Cell::Line(e.line),
                ]
            })
            .collect(),
        empty: None,
    };
    let functions = Table {
        heading: "Functions",
        level: 3,
        head: &[
            "Function",
            "Component",
            "Digest",
            "Grants",
            "Limits",
            "Worst case per call",
            "Line",
        ],
        rows: inv
            .functions
            .iter()
            .map(|f| {
                vec![
                    Cell::Text(f.name.clone()),
                    Cell::Code(f.component.clone()),
                    Cell::Digest {
                        digest: f.digest.clone(),
                        pinned: f.pinned,
                    },
                    Cell::Lines(f.grants.clone()),
                    Cell::Text(f.limits.clone()),
                    Cell::Text(f.worst_case.clone()),
                    Cell::Line(f.line),
                ]
            })
            .collect(),
        empty: None,
    };
    // One row per function and kind of import: the list stays readable for
    // components that link fifty interfaces.
    let imports = Table {
        heading: "Imports and the grant behind each",
        level: 4,
        head: &["Function", "Behind it", "Imports"],
        rows: inv
            .functions
            .iter()
            .flat_map(|f| {
                let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
                for i in &f.imports {
                    match groups.iter_mut().find(|(b, _)| *b == i.behind) {
                        Some((_, names)) => names.push(i.name.clone()),
                        None => groups.push((&i.behind, vec![i.name.clone()])),
                    }
                }
                groups.into_iter().map(|(behind, names)| {
                    vec![
                        Cell::Text(f.name.clone()),
                        Cell::Text(behind.into()),
                        Cell::Imports(names),
                    ]
                })
            })
            .collect(),
        empty: None,
    };
    let stores = Table {
        heading: "Stores",
        level: 3,
        head: &[
            "Store",
            "Kind",
            "Scope",
            "Retention",
            "Personal data",
            "Encryption",
            "Read by",
            "Written by",
            "Line",
        ],
        rows: inv
            .stores
            .iter()
            .map(|s| {
                vec![
                    Cell::Text(s.name.clone()),
                    Cell::Text(s.kind.clone()),
                    Cell::Text(s.scope.clone()),
                    Cell::Text(s.retention.clone().unwrap_or_else(|| "none".into())),
                    yes_no(s.personal_data),
                    Cell::Text(s.encryption.clone()),
                    Cell::List(s.readers.clone()),
                    Cell::List(s.writers.clone()),
                    Cell::Line(s.line),
                ]
            })
            .collect(),
        empty: Some("None: the app keeps no data of its own."),
    };
    let secrets = Table {
        heading: "Secrets and config",
        level: 3,
        head: &["Name", "Kind", "Read by"],
        rows: inv
            .secrets_and_config
            .iter()
            .map(|n| {
                vec![
                    Cell::Code(n.name.clone()),
                    Cell::Text(n.kind.clone()),
                    Cell::List(n.functions.clone()),
                ]
            })
            .collect(),
        empty: Some("None."),
    };
    let outbound = Table {
        heading: "Outbound destinations",
        level: 3,
        head: &["Origin", "Wildcard", "Functions"],
        rows: inv
            .outbound
            .iter()
            .map(|o| {
                vec![
                    Cell::Code(o.origin.clone()),
                    yes_no(o.wildcard),
                    Cell::List(o.functions.clone()),
                ]
            })
            .collect(),
        empty: Some("None: no function may make an outbound call."),
    };
    vec![entry_points, functions, imports, stores, secrets, outbound]
}

/// The trust boundaries, after the admin listener and telemetry.
pub(crate) fn boundaries(model: &ThreatModel) -> Table {
    Table {
        heading: "Trust boundaries",
        level: 3,
        head: &["Boundary", "What crosses it", "Controls"],
        rows: model
            .inventory
            .boundaries
            .iter()
            .map(|b| {
                vec![
                    Cell::Text(b.name.clone()),
                    Cell::Text(b.crossing.clone()),
                    Cell::Text(b.controls.clone()),
                ]
            })
            .collect(),
        empty: None,
    }
}

/// Stores holding personal data (T20).
pub(crate) fn personal_data(model: &ThreatModel) -> Table {
    Table {
        heading: "Personal data (GDPR)",
        level: 2,
        head: &[
            "Store",
            "Kind",
            "Retention",
            "Erasure",
            "Export",
            "Read by",
            "Written by",
            "Line",
        ],
        rows: model
            .personal_data
            .iter()
            .map(|p| {
                vec![
                    Cell::Text(p.store.clone()),
                    Cell::Text(p.kind.clone()),
                    Cell::OrWarning(p.retention.clone(), "none: kept for ever"),
                    Cell::Text(p.erasure.clone()),
                    Cell::Text(p.export.clone()),
                    Cell::List(p.readers.clone()),
                    Cell::List(p.writers.clone()),
                    Cell::Line(p.line),
                ]
            })
            .collect(),
        empty: Some(
            "No store is declared `personal_data = true`. If a function keeps anything about a \
             person, declare it so that retention and erasure are checked.",
        ),
    }
}
