//! The threat model as one self-contained HTML page (T21): the sections of
//! the Markdown report, with the data-flow diagram as inline SVG drawn by
//! Bulkhead. No script, no CDN, no web font: a Content-Security-Policy
//! allows nothing but the page's own style sheet (by hash), so a page
//! opened from a CI artifact can fetch or run nothing.
//!
//! Every text of the model reaches the page through [`Html::text`], which
//! escapes it (route patterns, accepted-risk reasons and the like are
//! written by the app's author, not by us).

use std::fmt::Write;

use sha2::{Digest, Sha256};

use crate::markdown::kind_name;
use crate::model::*;
use crate::svg::escape;
use crate::tables::{self, Cell, Table};

/// A piece of markup: escaped text, or tags this module writes.
struct Html(String);

impl Html {
    /// `text` escaped; `code spans` in it (as the model writes them) become
    /// `<code>`, and an unmatched backtick stays a backtick.
    fn text(text: &str) -> Self {
        let mut parts: Vec<&str> = text.split('`').collect();
        let mut tail = String::new();
        if parts.len().is_multiple_of(2) {
            // An odd number of backticks: the last one opens nothing.
            let last = parts.pop().unwrap_or_default();
            let before = parts.pop().unwrap_or_default();
            tail = format!("{}`{}", escape(before), escape(last));
        }
        let mut out = String::new();
        for (i, part) in parts.iter().enumerate() {
            if i % 2 == 1 {
                let _ = write!(out, "<code>{}</code>", escape(part));
            } else {
                out.push_str(&escape(part));
            }
        }
        out.push_str(&tail);
        Self(out)
    }

    fn code(text: &str) -> Self {
        Self(format!("<code>{}</code>", escape(text)))
    }

    fn list(items: &[String]) -> Self {
        if items.is_empty() {
            Self("<span class=\"none\">none</span>".into())
        } else {
            Self(escape(&items.join(", ")))
        }
    }

    /// One item per line.
    fn lines(items: &[String]) -> Self {
        let items: Vec<String> = items.iter().map(|i| Html::text(i).0).collect();
        Self(items.join("<br/>"))
    }

    fn line(line: Option<usize>) -> Self {
        Self(line.map_or(String::new(), |l| format!("L{l}")))
    }

    fn severity(s: Severity) -> Self {
        Self(format!(
            "<span class=\"badge sev-{0}\">{0}</span>",
            s.as_str()
        ))
    }

    /// A threat's severity: filled while open, outlined once mitigated or
    /// accepted (how bad it would be, not how bad it is).
    fn severity_of(t: &Threat) -> Self {
        if t.status == Status::Open {
            return Self::severity(t.severity);
        }
        Self(format!(
            "<span class=\"badge soft sev-{0}\">{0}</span>",
            t.severity.as_str()
        ))
    }

    fn status(s: Status) -> Self {
        Self(format!(
            "<span class=\"badge st-{0}\">{0}</span>",
            s.as_str()
        ))
    }
}

fn table(out: &mut String, head: &[&str], rows: impl IntoIterator<Item = Vec<Html>>) {
    table_of(out, "", head, rows);
}

/// A table with a class (fixed column widths for tables that repeat).
fn table_of(
    out: &mut String,
    class: &str,
    head: &[&str],
    rows: impl IntoIterator<Item = Vec<Html>>,
) {
    if class.is_empty() {
        out.push_str("<div class=\"table-wrap\"><table>\n<thead><tr>");
    } else {
        let _ = write!(
            out,
            "<div class=\"table-wrap\"><table class=\"{}\">\n<thead><tr>",
            escape(class)
        );
    }
    for h in head {
        let _ = write!(out, "<th scope=\"col\">{}</th>", escape(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", cell.0);
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
}

/// A paragraph for an empty section.
fn none(out: &mut String, text: &str) {
    let _ = writeln!(out, "<p class=\"none\">{}</p>", Html::text(text).0);
}

pub fn html(model: &ThreatModel) -> String {
    let mut out = String::new();
    let title = format!("Threat model: {} (env {})", model.app, model.env);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'sha256-{}'; \
         img-src 'none'; base-uri 'none'; form-action 'none'\"/>\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n\
         <meta name=\"generator\" content=\"{}\"/>\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        base64(&Sha256::digest(CSS.as_bytes())),
        escape(&model.generator),
        escape(&title)
    );
    header(&mut out, model);
    out.push_str("<main>\n");
    brief(&mut out, model);
    findings(&mut out, model);
    diagram(&mut out, model);
    inventory(&mut out, model);
    personal_data(&mut out, model);
    stride(&mut out, model);
    accepted(&mut out, model);
    out.push_str("</main>\n");
    let _ = writeln!(
        out,
        "<footer>Derived by {} from {}. Run <code>bulkhead threat-model --format html</code> \
         again after every change rather than editing this page.</footer>\n</body>\n</html>",
        escape(&model.generator),
        Html::code(&model.manifest).0
    );
    out
}

fn header(out: &mut String, model: &ThreatModel) {
    let (open, mitigated, accepted) = model.counts();
    let _ = writeln!(
        out,
        "<header>\n<h1>Threat model: {} <span class=\"env\">env {}</span></h1>\n\
         <p class=\"lead\">Derived by {} from {} and the components it names.</p>",
        escape(&model.app),
        Html::code(&model.env).0,
        escape(&model.generator),
        Html::code(&model.manifest).0
    );
    // A severity with no open finding is outlined, not filled.
    let badge = |s: Severity| {
        let n = model.open_count(s);
        let soft = if n == 0 { " soft" } else { "" };
        format!(
            "<span class=\"badge{soft} sev-{0}\">{n} {0}</span>",
            s.as_str()
        )
    };
    let _ = writeln!(
        out,
        "<div class=\"counts\">\n\
         <div class=\"count open\"><b>{open}</b> open<span class=\"split\">{} {} {}</span></div>\n\
         <div class=\"count mitigated\"><b>{mitigated}</b> mitigated</div>\n\
         <div class=\"count accepted\"><b>{accepted}</b> accepted</div>\n</div>",
        badge(Severity::High),
        badge(Severity::Medium),
        badge(Severity::Low)
    );
    out.push_str(
        "<nav><a href=\"#brief\">In brief</a> <a href=\"#findings\">Open findings</a> \
         <a href=\"#diagram\">Diagram</a> <a href=\"#inventory\">Inventory</a> \
         <a href=\"#personal-data\">Personal data</a> <a href=\"#stride\">STRIDE</a> \
         <a href=\"#accepted\">Accepted risks</a></nav>\n</header>\n",
    );
}

/// The questions a hand-written model opens with, answered from the app.
fn brief(out: &mut String, model: &ThreatModel) {
    let inv = &model.inventory;
    let codes = |items: Vec<&String>| -> String {
        if items.is_empty() {
            "none".into()
        } else {
            items
                .into_iter()
                .map(|i| Html::code(i).0)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let public: Vec<&String> = inv
        .entry_points
        .iter()
        .filter(|e| e.auth.iter().any(|a| a == "public"))
        .map(|e| &e.route)
        .collect();
    let authenticated = inv.entry_points.len() - public.len();
    let personal: Vec<String> = model
        .personal_data
        .iter()
        .map(|p| {
            let kept = p
                .retention
                .as_ref()
                .map_or("kept for ever".to_string(), |r| format!("kept {r}"));
            format!("{} ({})", Html::code(&p.store).0, escape(&kept))
        })
        .collect();
    let personal = if personal.is_empty() {
        "none".into()
    } else {
        personal.join(", ")
    };
    let secrets: Vec<&String> = inv
        .secrets_and_config
        .iter()
        .filter(|n| n.kind == "secret")
        .map(|n| &n.name)
        .collect();
    let _ = writeln!(
        out,
        "<section id=\"brief\">\n<h2>The app in brief</h2>\n<ul class=\"brief\">\n\
         <li><b>Who calls it:</b> {} route(s); {} public ({}), {authenticated} need a credential.</li>\n\
         <li><b>What data it keeps:</b> {} store(s); personal data in {personal}.</li>\n\
         <li><b>Where it reaches:</b> {}.</li>\n\
         <li><b>Secrets it reads:</b> {}.</li>\n</ul>\n</section>",
        inv.entry_points.len(),
        public.len(),
        codes(public),
        inv.stores.len(),
        codes(inv.outbound.iter().map(|o| &o.origin).collect()),
        codes(secrets)
    );
}

fn findings(out: &mut String, model: &ThreatModel) {
    out.push_str("<section id=\"findings\">\n<h2>Open findings</h2>\n");
    let mut open: Vec<&Threat> = model
        .threats
        .iter()
        .filter(|t| t.status == Status::Open)
        .collect();
    open.sort_by_key(|t| std::cmp::Reverse(t.severity));
    if open.is_empty() {
        none(out, "None.");
    } else {
        table(
            out,
            &["Severity", "Threat", "Finding", "Fix", "Rule", "Line"],
            open.iter().map(|t| {
                vec![
                    Html::severity(t.severity),
                    Html::text(&format!("{} {}", t.threat_id, t.stride.as_str())),
                    Html::text(&t.title),
                    Html::text(&t.detail),
                    Html::text(&format!("`{}` for `{}`", t.rule, t.accept_as)),
                    Html::line(t.line),
                ]
            }),
        );
    }
    out.push_str("</section>\n");
}

fn diagram(out: &mut String, model: &ThreatModel) {
    out.push_str(
        "<section id=\"diagram\">\n<h2>Data-flow diagram</h2>\n\
         <p>Dashed boxes are trust zones; every arrow that leaves one crosses a trust boundary. \
         Hover over a box or an arrow for its full name and description.</p>\n\
         <figure class=\"diagram\">\n",
    );
    out.push_str(&crate::svg::svg(&model.diagram));
    out.push_str("</figure>\n</section>\n");
}

fn html_cell(cell: &Cell) -> Html {
    match cell {
        Cell::Text(text) => Html::text(text),
        Cell::Code(text) => Html::code(text),
        Cell::List(items) => Html::list(items),
        Cell::Lines(items) if items.is_empty() => Html::list(items),
        Cell::Lines(items) => Html::lines(items),
        Cell::Line(l) => Html::line(*l),
        Cell::Digest {
            digest: Some(d),
            pinned,
        } => Html(format!(
            "<code class=\"digest\">{}</code> {}",
            escape(d),
            if *pinned {
                "(pinned)"
            } else {
                "<span class=\"warn\">(not pinned)</span>"
            }
        )),
        Cell::Digest { digest: None, .. } => Html::text("unreadable"),
        Cell::Imports(names) => {
            let names: Vec<String> = names.iter().map(|n| Html::code(n).0).collect();
            Html(format!(
                "<span class=\"imports\">{}</span>",
                names.join(" ")
            ))
        }
        Cell::OrWarning(Some(value), _) => Html::text(value),
        Cell::OrWarning(None, warning) => {
            Html(format!("<span class=\"warn\">{}</span>", escape(warning)))
        }
    }
}

fn render(out: &mut String, table: &Table) {
    let _ = writeln!(out, "<h{0}>{1}</h{0}>", table.level, escape(table.heading));
    match table.empty {
        Some(empty) if table.rows.is_empty() => none(out, empty),
        _ => self::table(
            out,
            table.head,
            table
                .rows
                .iter()
                .map(|row| row.iter().map(html_cell).collect()),
        ),
    }
}

fn inventory(out: &mut String, model: &ThreatModel) {
    let inv = &model.inventory;
    out.push_str("<section id=\"inventory\">\n<h2>Inventory</h2>\n");
    for table in tables::inventory(model) {
        render(out, &table);
    }
    let _ = writeln!(
        out,
        "<h3>Admin listener</h3>\n<p>{}.</p>\n<h3>Telemetry export</h3>",
        Html::text(&inv.admin.summary).0
    );
    match &inv.telemetry {
        Some(t) => {
            let _ = writeln!(
                out,
                "<p>One span per request to {}, sample ratio {}.</p>",
                Html::code(&t.endpoint).0,
                t.sample_ratio
            );
        }
        None => none(out, "None: logs and the audit trail stay on this host."),
    }
    render(out, &tables::boundaries(model));
    out.push_str("</section>\n");
}

fn personal_data(out: &mut String, model: &ThreatModel) {
    out.push_str("<section id=\"personal-data\">\n");
    render(out, &tables::personal_data(model));
    out.push_str("</section>\n");
}

fn stride(out: &mut String, model: &ThreatModel) {
    out.push_str("<section id=\"stride\">\n<h2>Threats, element by element (STRIDE)</h2>\n");
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
            "<h3>{} <span class=\"kind\">{}</span></h3>\n<p class=\"desc\">{}</p>",
            escape(&element.name),
            kind_name(element.kind),
            Html::text(&element.description).0
        );
        table_of(
            out,
            "stride",
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
                    Html(format!(
                        "<abbr title=\"{}\">{}</abbr> {}",
                        t.stride.as_str(),
                        t.stride.letter(),
                        t.threat_id
                    )),
                    Html::text(&t.title),
                    Html::status(t.status),
                    Html::severity_of(t),
                    Html::text(&t.detail),
                    Html::line(t.line),
                ]
            }),
        );
    }
    out.push_str("</section>\n");
}

/// Risks the app's owner weighed and accepted with `[[accept]]`, with the
/// reason they recorded.
fn accepted(out: &mut String, model: &ThreatModel) {
    out.push_str("<section id=\"accepted\">\n<h2>Accepted risks</h2>\n");
    let accepted: Vec<&Threat> = model
        .threats
        .iter()
        .filter(|t| t.status == Status::Accepted)
        .collect();
    if accepted.is_empty() {
        none(
            out,
            "None: no `[[accept]]` in the manifest matches a finding.",
        );
    } else {
        table(
            out,
            &[
                "Severity", "Threat", "Element", "Finding", "Reason", "Rule", "Line",
            ],
            accepted.iter().map(|t| {
                let element = model
                    .element(&t.element)
                    .map_or(t.element.as_str(), |e| e.name.as_str());
                vec![
                    Html::severity_of(t),
                    Html::text(&format!("{} {}", t.threat_id, t.stride.as_str())),
                    Html::text(element),
                    Html::text(&t.title),
                    Html::text(&t.detail),
                    Html::code(t.rule),
                    Html::line(t.line),
                ]
            }),
        );
    }
    out.push_str("</section>\n");
}

/// Standard base64 (RFC 4648, padded): the style sheet's hash for the CSP.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The page's only style sheet, allowed by its hash in the CSP. It holds
/// no `<` or `&`, so the whole page also parses as XML (the tests check).
const CSS: &str = include_str!("html/report.css");

#[cfg(test)]
mod tests;
