//! The diagram against hostile names and large apps (T21): well-formed,
//! nothing injected, nothing lost, nothing fetched, nothing overlapping.

use super::testing::{HOSTILE, Node, diagram, parse, read_back as shown};
use super::{escape, fit, layout, svg};

/// The tags and attributes the renderer writes; anything else in the
/// output came from a name.
const TAGS: &[&str] = &[
    "svg", "title", "defs", "marker", "path", "rect", "circle", "text", "g",
];
const ATTRS: &[&str] = &[
    "xmlns",
    "viewBox",
    "width",
    "height",
    "role",
    "aria-labelledby",
    "font-family",
    "font-size",
    "id",
    "refX",
    "refY",
    "markerWidth",
    "markerHeight",
    "orient",
    "d",
    "fill",
    "x",
    "y",
    "rx",
    "stroke",
    "stroke-width",
    "stroke-dasharray",
    "cx",
    "cy",
    "r",
    "font-weight",
    "text-anchor",
    "marker-end",
    "fill-opacity",
    "data-zone",
    "data-element",
    "data-kind",
    "data-flow",
    "data-label",
    "data-legend",
];

fn nodes(text: &str) -> Vec<Node> {
    parse(text).unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{text}"))
}

/// The `<title>` directly inside the group whose `attr` is `value`.
fn title_of<'a>(nodes: &'a [Node], attr: &str, value: &str) -> Option<&'a str> {
    let value = shown(value);
    let at = nodes
        .iter()
        .position(|n| n.attr(attr) == Some(value.as_str()))?;
    nodes[at + 1..]
        .iter()
        .take_while(|n| n.depth > nodes[at].depth)
        .find(|n| n.name == "title")
        .map(|n| n.text.as_str())
}

#[test]
fn t21_hostile_names_leave_the_svg_well_formed_with_nothing_injected() {
    let d = diagram(3, 2);
    let text = svg(&d);
    let nodes = nodes(&text);
    assert_eq!(nodes[0].name, "svg");
    for n in &nodes {
        assert!(TAGS.contains(&n.name.as_str()), "tag <{}> injected", n.name);
        for (a, _) in &n.attrs {
            assert!(
                ATTRS.contains(&a.as_str()),
                "attribute {a} injected on <{}>",
                n.name
            );
        }
    }
    // The raw text never appears; its escaped form does, whole, in hover
    // titles (control characters and the non-character replaced).
    assert!(!text.contains("<script"), "{text}");
    let hostile_fn = &d.elements[8];
    let title = title_of(&nodes, "data-element", &hostile_fn.id).expect("the element is drawn");
    assert!(
        title.starts_with(&format!("fn-{}", shown(HOSTILE))),
        "{title}"
    );
    let hostile_flow = &d.flows[4];
    assert!(hostile_flow.label.contains(HOSTILE));
    let title = title_of(&nodes, "data-label", &hostile_flow.id).expect("the label is drawn");
    assert_eq!(title, shown(&hostile_flow.label));
}

#[test]
fn t21_every_element_and_flow_is_drawn_and_labelled() {
    let d = diagram(12, 5);
    let nodes = nodes(&svg(&d));
    let with = |attr: &str, value: &str| {
        let value = shown(value);
        nodes
            .iter()
            .filter(|n| n.attr(attr) == Some(value.as_str()))
            .count()
    };
    for e in &d.elements {
        assert_eq!(with("data-element", &e.id), 1, "element {}", e.id);
        let title = title_of(&nodes, "data-element", &e.id).unwrap_or_default();
        assert!(title.starts_with(&shown(&e.name)), "{title} / {}", e.name);
    }
    for f in &d.flows {
        assert_eq!(with("data-flow", &f.id), 1, "flow {}", f.id);
        assert_eq!(with("data-label", &f.id), 1, "label of {}", f.id);
    }
    // Every arrow has a head; zones drawn are the ones holding elements.
    let arrows = nodes
        .iter()
        .filter(|n| n.name == "path" && n.attr("marker-end").is_some())
        .count();
    assert_eq!(arrows, d.flows.len() + 1, "one per flow and the legend's");
    let zones: Vec<&str> = nodes.iter().filter_map(|n| n.attr("data-zone")).collect();
    assert_eq!(zones.len(), 7, "{zones:?}");
}

#[test]
fn t21_only_zones_holding_elements_are_drawn_and_dangling_flows_are_skipped() {
    let mut d = diagram(2, 1);
    d.elements
        .retain(|e| e.zone != "collector" && e.zone != "outside");
    d.flows.retain(|f| f.to != "telemetry");
    // A flow to nothing (a model bug) is left out, not a panic.
    d.flows.push(d.flows[0].clone());
    let dangling = d.flows.len() - 1;
    d.flows[dangling].to = "nowhere".into();
    d.flows[dangling].id = "flow:dangling".into();
    let nodes = nodes(&svg(&d));
    let zones: Vec<&str> = nodes.iter().filter_map(|n| n.attr("data-zone")).collect();
    assert!(
        !zones
            .iter()
            .any(|z| z.contains("Telemetry") || z.contains("Outbound")),
        "{zones:?}"
    );
    assert_eq!(zones.len(), 5, "{zones:?}");
    assert!(
        !nodes
            .iter()
            .any(|n| n.attr("data-flow") == Some("flow:dangling"))
    );
    // The flows to the dropped origin still name it: they are skipped too.
    assert!(
        nodes
            .iter()
            .filter_map(|n| n.attr("data-flow"))
            .all(|f| !f.contains("out:")),
    );
}

#[test]
fn t21_long_names_are_cut_with_an_ellipsis_and_kept_whole_in_the_title() {
    let mut d = diagram(2, 1);
    let long = format!("a-function-with-a-very-long-name-{}", "x".repeat(60));
    let fn_id = d.elements[8].id.clone();
    d.elements[8].name = long.clone();
    let label = format!("GET /{}", "segment/".repeat(20));
    d.flows[5].label = label.clone();
    let nodes = nodes(&svg(&d));
    let at = nodes
        .iter()
        .position(|n| n.attr("data-element") == Some(fn_id.as_str()))
        .expect("drawn");
    let cut = nodes[at..]
        .iter()
        .find(|n| n.name == "text")
        .map(|n| n.text.clone())
        .unwrap_or_default();
    assert!(
        cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')),
        "{cut}"
    );
    assert!(cut.chars().count() < long.chars().count());
    assert!(
        title_of(&nodes, "data-element", &fn_id)
            .unwrap_or_default()
            .contains(&long)
    );
    let flow = &d.flows[5].id;
    let at = nodes
        .iter()
        .position(|n| n.attr("data-label") == Some(shown(flow).as_str()))
        .expect("labelled");
    let text = nodes[at..]
        .iter()
        .find(|n| n.name == "text")
        .map(|n| n.text.clone())
        .unwrap_or_default();
    assert!(text.ends_with('…'), "{text}");
    assert_eq!(title_of(&nodes, "data-label", flow), Some(label.as_str()));
}

#[test]
fn t21_the_svg_fetches_nothing() {
    let text = svg(&diagram(3, 2));
    for banned in [
        "href",
        "<image",
        "<script",
        "<foreignObject",
        "<style",
        "@import",
        "javascript:",
    ] {
        assert!(!text.contains(banned), "{banned}");
    }
    // Markers are the only references, and they point inside the document.
    for (at, _) in text.match_indices("url(") {
        assert!(
            text[at..].starts_with("url(#bh-arrow"),
            "{}",
            &text[at..at + 30]
        );
    }
}

#[test]
fn t21_same_model_same_bytes() {
    let d = diagram(20, 6);
    let first = svg(&d);
    assert_eq!(first, svg(&d.clone()));
    // And the output depends on the model: another name, other bytes.
    let mut other = d.clone();
    other.elements[9].name = "renamed".into();
    assert_ne!(first, svg(&other));
}

/// An app with 50 functions and 20 stores: the canvas grows to hold it,
/// no box overlaps another, each sits inside its zone and zones stay apart.
#[test]
fn t21_a_large_app_is_laid_out_without_overlaps() {
    let d = diagram(50, 20);
    let l = layout::layout(&d);
    let text = svg(&d);
    let root = &nodes(&text)[0];
    let size = |a: &str| {
        root.attr(a)
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let (width, height) = (size("width"), size("height"));
    assert_eq!(
        root.attr("viewBox"),
        Some(format!("0 0 {width} {height}").as_str())
    );
    assert!(height > 50 * 46, "{height}");
    for (i, a) in l.rects.iter().enumerate() {
        assert!(a.x >= 0 && a.y >= 0 && a.x + a.w <= width && a.y + a.h <= height);
        for b in &l.rects[i + 1..] {
            assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
        }
        let zone = l
            .zones
            .iter()
            .find(|z| z.rect.overlaps(a))
            .expect("inside a zone");
        let z = zone.rect;
        assert!(z.x < a.x && z.y < a.y && a.x + a.w < z.x + z.w && a.y + a.h < z.y + z.h);
    }
    for (i, a) in l.zones.iter().enumerate() {
        for b in &l.zones[i + 1..] {
            assert!(!a.rect.overlaps(&b.rect), "{} overlaps {}", a.name, b.name);
        }
    }
    // Every arrow starts and ends on the boxes it joins.
    for e in &l.edges {
        for ((x, y), r) in [(e.start, l.rects[e.from]), (e.end, l.rects[e.to])] {
            assert!(
                x >= r.x && x <= r.x + r.w && y >= r.y && y <= r.y + r.h,
                "{x},{y} {r:?}"
            );
        }
    }
}

/// The gateway facing many functions stretches along them: its arrows to
/// them run flat, so their labels sit apart.
#[test]
fn t21_the_gateway_meets_many_functions_head_on() {
    let d = diagram(30, 3);
    let l = layout::layout(&d);
    let to_functions: Vec<_> = l
        .edges
        .iter()
        .filter(|e| d.elements[e.from].id == "gateway" && d.elements[e.to].id.starts_with("fn:"))
        .collect();
    assert_eq!(to_functions.len(), 30);
    for e in to_functions {
        assert_eq!(e.start.1, e.end.1, "{:?} -> {:?}", e.start, e.end);
    }
}

#[test]
fn escape_and_fit() {
    assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
    assert_eq!(escape("x\ny\u{0}\u{FFFE}"), "x y\u{FFFD}\u{FFFD}");
    assert_eq!(fit("short", 10), "short");
    assert_eq!(fit("ééééé-long", 5), "éééé…");
}

/// The test reader itself refuses what it must, or the tests above could
/// not fail.
#[test]
fn the_xml_reader_refuses_broken_documents() {
    for bad in [
        "<a><b></a></b>",
        "<a>x & y</a>",
        "<a>x < y</a>",
        "<a b=1></a>",
        "<a b=\"1\" b=\"2\"></a>",
        "<a b=\"<\"></a>",
        "<a>&bogus;</a>",
        "<a></a><b></b>",
        "<a>",
        "<a>\u{1}</a>",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    let ok =
        parse("<!DOCTYPE html>\n<a x=\"&lt;&#39;\"><b/>t&amp;u<c>v</c></a>").expect("well-formed");
    assert_eq!(ok[0].attr("x"), Some("<'"));
    assert_eq!(ok[0].text, "t&u");
    assert_eq!(ok.len(), 3);
}
