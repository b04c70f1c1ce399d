//! The data-flow diagram as SVG, drawn by Bulkhead itself (T21): one
//! standalone `<svg>` with no script, style sheet, font or link to fetch,
//! so the HTML report works offline and under a policy that allows nothing
//! external. Trust zones are dashed boxes in columns, elements are drawn by
//! DFD convention and flows are arrows labelled at their midpoints.
//!
//! Names come from the manifest (and accepted-risk text from its author):
//! every text is escaped, and long ones are cut with an ellipsis, the whole
//! text kept in a `<title>` for hover. The layout is integer arithmetic on
//! the model alone, so the same model gives the same bytes.

mod layout;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::fmt::Write;

use crate::model::{Diagram, Element, ElementKind};
use layout::{
    COL_GAP, ELEM_H, Layout, MARGIN, NAME_SIZE, Placed, Rect, Route, ZONE_SIZE, chars_in,
    text_width,
};

const SMALL_SIZE: i32 = 11;
const LABEL_SIZE: i32 = 11;
const LEGEND_H: i32 = 56;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif";

/// Text for XML (and HTML): markup characters as entities, characters XML
/// cannot carry (controls, U+FFFE, U+FFFF) as U+FFFD, line breaks as spaces.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters of `text`, cut with an ellipsis.
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub fn svg(diagram: &Diagram) -> String {
    let layout = layout::layout(diagram);
    let Layout {
        zones,
        rects,
        edges,
        right,
        bottom,
    } = &layout;
    let width = (*right).max(MARGIN + legend_width()) + MARGIN;
    let legend_y = bottom + 24;
    let height = legend_y + LEGEND_H + MARGIN;

    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" \
         width=\"{width}\" height=\"{height}\" role=\"img\" aria-labelledby=\"bh-dfd-title\" \
         font-family=\"{FONT}\" font-size=\"{SMALL_SIZE}\">\n\
         <title id=\"bh-dfd-title\">Data-flow diagram: {} element(s) in {} trust zone(s), {} flow(s)</title>\n",
        diagram.elements.len(),
        zones.len(),
        edges.len()
    );
    out.push_str(DEFS);
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    for z in zones {
        draw_zone(&mut out, z);
    }
    for (e, r) in diagram.elements.iter().zip(rects) {
        draw_element(&mut out, e, r);
    }
    // Arrows over the boxes, labels over the arrows.
    out.push_str("<g fill=\"none\" stroke-width=\"1.5\">\n");
    for e in edges {
        let flow = &diagram.flows[e.flow];
        let (stroke, marker, dash) = if flow.boundary.is_some() {
            ("#37474f", "bh-arrow", "")
        } else {
            ("#90a4ae", "bh-arrow-muted", " stroke-dasharray=\"5 4\"")
        };
        let crosses = flow
            .boundary
            .as_deref()
            .map_or(String::new(), |b| format!(", crosses {b}"));
        let _ = writeln!(
            out,
            "<g data-flow=\"{}\"><title>{} → {}: {}{}</title><path d=\"{}\" stroke=\"{stroke}\"{dash} marker-end=\"url(#{marker})\"/></g>",
            escape(&flow.id),
            escape(&diagram.elements[e.from].name),
            escape(&diagram.elements[e.to].name),
            escape(&flow.label),
            escape(&crosses),
            e.path()
        );
    }
    out.push_str("</g>\n");
    draw_labels(&mut out, diagram, &layout);
    legend(&mut out, legend_y);
    out.push_str("</svg>\n");
    out
}

fn draw_zone(out: &mut String, z: &Placed<'_>) {
    let r = &z.rect;
    let name = fit(z.name, chars_in(r.w - 20, ZONE_SIZE));
    let _ = writeln!(
        out,
        "<g data-zone=\"{}\"><title>Trust zone: {}</title>\
         <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"12\" fill=\"#fafafa\" stroke=\"#78909c\" stroke-width=\"1.5\" stroke-dasharray=\"7 5\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"{ZONE_SIZE}\" font-weight=\"700\" fill=\"#455a64\">{}</text></g>",
        escape(z.name),
        escape(z.name),
        r.x,
        r.y,
        r.w,
        r.h,
        r.x + 12,
        r.y + 19,
        escape(&name)
    );
}

fn kind_word(kind: ElementKind) -> &'static str {
    match kind {
        ElementKind::Actor => "actor",
        ElementKind::Process => "process",
        ElementKind::Store => "store",
        ElementKind::External => "external",
    }
}

fn draw_element(out: &mut String, e: &Element, r: &Rect) {
    let _ = write!(
        out,
        "<g data-element=\"{}\" data-kind=\"{}\"><title>{} ({}): {}</title>",
        escape(&e.id),
        kind_word(e.kind),
        escape(&e.name),
        crate::markdown::kind_name(e.kind),
        escape(&e.description)
    );
    let (x, y, w, h) = (r.x, r.y, r.w, r.h);
    // A stretched element (the gateway beside many functions) is named at
    // its top, where the eye starts.
    let mid = if h > 3 * ELEM_H {
        y + ELEM_H / 2
    } else {
        r.cy()
    };
    let mut text_x = r.cx();
    let mut room = w - 16;
    match e.kind {
        ElementKind::Actor => {
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"#fff8e1\" stroke=\"#8d6e00\" stroke-width=\"3\"/>\
                 <circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"#8d6e00\"/>\
                 <path d=\"M{},{} a9,8 0 0 1 18,0 z\" fill=\"#8d6e00\"/>",
                x + 18,
                mid - 6,
                x + 9,
                mid + 11
            );
            text_x += 14;
            room -= 28;
        }
        ElementKind::Process => {
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"{}\" fill=\"#e3f2fd\" stroke=\"#1565c0\" stroke-width=\"1.5\"/>",
                (h / 2).min(23)
            );
            room -= 12;
        }
        ElementKind::Store => {
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"#f1f8e9\"/>\
                 <path d=\"M{x},{y} h{w} M{x},{} h{w}\" stroke=\"#2e7d32\" stroke-width=\"2\"/>",
                y + h
            );
        }
        ElementKind::External => {
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"#f5f5f5\" stroke=\"#616161\" stroke-width=\"1\"/>"
            );
        }
    }
    let name = fit(&e.name, chars_in(room, NAME_SIZE));
    let detail = fit(&e.description, chars_in(room, SMALL_SIZE));
    let _ = writeln!(
        out,
        "<text x=\"{text_x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{NAME_SIZE}\" font-weight=\"600\" fill=\"#212121\">{}</text>\
         <text x=\"{text_x}\" y=\"{}\" text-anchor=\"middle\" fill=\"#616161\">{}</text></g>",
        mid - 2,
        escape(&name),
        mid + 13,
        escape(&detail)
    );
}

/// Each flow's label at the first spot along its arrow where it covers no
/// box and no label already placed (its middle, when nothing is in the
/// way); a white backing keeps it readable over other arrows.
fn draw_labels(out: &mut String, diagram: &Diagram, layout: &Layout<'_>) {
    let h = LABEL_SIZE + 4;
    let mut taken: Vec<Rect> = layout.rects.clone();
    let _ = writeln!(out, "<g font-size=\"{LABEL_SIZE}\" fill=\"#263238\">");
    for e in &layout.edges {
        let flow = &diagram.flows[e.flow];
        let room = match e.route {
            Route::Lane(_) => 2 * COL_GAP,
            _ => COL_GAP - 16,
        };
        let text = fit(&flow.label, chars_in(room, LABEL_SIZE));
        let w = text_width(text.chars().count(), LABEL_SIZE) + 4;
        let boxed = |x: i32, y: i32, centred: bool| Rect {
            x: if centred { x - w / 2 } else { x - 2 },
            y: y - h / 2,
            w,
            h,
        };
        let spots = e.spots();
        let chosen = spots
            .iter()
            .map(|s| (s, boxed(s.x, s.y, s.centred)))
            .find(|(_, b)| !taken.iter().any(|t| t.overlaps(b)))
            .or_else(|| spots.first().map(|s| (s, boxed(s.x, s.y, s.centred))));
        let Some((spot, backing)) = chosen else {
            continue;
        };
        taken.push(backing);
        let _ = writeln!(
            out,
            "<g data-label=\"{}\"><title>{}</title>\
             <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"3\" fill=\"#ffffff\" fill-opacity=\"0.88\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"{}\">{}</text></g>",
            escape(&flow.id),
            escape(&flow.label),
            backing.x,
            backing.y,
            backing.w,
            backing.h,
            spot.x,
            spot.y + LABEL_SIZE / 2 - 1,
            if spot.centred { "middle" } else { "start" },
            escape(&text)
        );
    }
    out.push_str("</g>\n");
}

const DEFS: &str = "<defs>\
<marker id=\"bh-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#37474f\"/></marker>\
<marker id=\"bh-arrow-muted\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#90a4ae\"/></marker>\
</defs>\n";

/// The legend: each shape's caption and its `<rect>` attributes (the
/// arrow has none).
const LEGEND: [(&str, &str); 6] = [
    (
        "actor",
        "width=\"40\" height=\"22\" fill=\"#fff8e1\" stroke=\"#8d6e00\" stroke-width=\"3\"/>",
    ),
    (
        "process",
        "width=\"40\" height=\"22\" rx=\"11\" fill=\"#e3f2fd\" stroke=\"#1565c0\" stroke-width=\"1.5\"/>",
    ),
    (
        "data store",
        "width=\"40\" height=\"22\" fill=\"#f1f8e9\"/>",
    ),
    (
        "external system",
        "width=\"40\" height=\"22\" fill=\"#f5f5f5\" stroke=\"#616161\"/>",
    ),
    (
        "trust zone",
        "width=\"40\" height=\"22\" rx=\"6\" fill=\"#fafafa\" stroke=\"#78909c\" stroke-width=\"1.5\" stroke-dasharray=\"7 5\"/>",
    ),
    ("data flow across a trust boundary", ""),
];

/// The legend's width: each item's shape, caption and gap.
fn legend_width() -> i32 {
    28 + LEGEND
        .iter()
        .map(|(label, _)| 46 + text_width(label.len(), LABEL_SIZE) + 24)
        .sum::<i32>()
}

/// What the shapes mean, in one row under the diagram.
fn legend(out: &mut String, y: i32) {
    let (sy, ty) = (y + 17, y + 32);
    let _ = write!(
        out,
        "<g data-legend=\"\" font-size=\"{LABEL_SIZE}\" fill=\"#424242\">\
         <rect x=\"{MARGIN}\" y=\"{y}\" width=\"{}\" height=\"{LEGEND_H}\" rx=\"6\" fill=\"#ffffff\" stroke=\"#e0e0e0\"/>",
        legend_width()
    );
    let mut x = MARGIN + 14;
    for (label, shape) in LEGEND {
        if shape.is_empty() {
            let _ = write!(
                out,
                "<path d=\"M{x},{} h36\" stroke=\"#37474f\" stroke-width=\"1.5\" marker-end=\"url(#bh-arrow)\"/>",
                sy + 11
            );
        } else {
            let _ = write!(out, "<rect x=\"{x}\" y=\"{sy}\" {shape}");
        }
        if label == "data store" {
            let _ = write!(
                out,
                "<path d=\"M{x},{sy} h40 M{x},{} h40\" stroke=\"#2e7d32\" stroke-width=\"2\"/>",
                sy + 22
            );
        }
        let _ = write!(out, "<text x=\"{}\" y=\"{ty}\">{label}</text>", x + 46);
        x += 46 + text_width(label.len(), LABEL_SIZE) + 24;
    }
    out.push_str("</g>\n");
}
