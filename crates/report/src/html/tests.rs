//! The HTML page against a model whose every text is hostile (T21): the
//! page stays well-formed with nothing injected, allows nothing external,
//! and holds every section of the Markdown report.

use sha2::{Digest, Sha256};

use super::{Html, base64, html};
use crate::model::Status;
use crate::svg::testing::{HOSTILE, Node, model, parse, read_back};

/// Tags and attributes the renderers write; anything else came from text.
const TAGS: &[&str] = &[
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "h4", "span",
    "p", "code", "div", "b", "nav", "a", "main", "section", "ul", "li", "table", "thead", "tbody",
    "tr", "th", "td", "br", "figure", "abbr", "footer", // the diagram:
    "svg", "defs", "marker", "path", "rect", "circle", "text", "g",
];
const HTML_ATTRS: &[&str] = &[
    "lang",
    "charset",
    "http-equiv",
    "content",
    "name",
    "class",
    "href",
    "id",
    "scope",
    "title",
];

fn nodes(page: &str) -> Vec<Node> {
    parse(page).unwrap_or_else(|e| panic!("the page is not well-formed ({e})"))
}

/// The nodes inside the `<section id=ID>`.
fn section<'a>(nodes: &'a [Node], id: &str) -> &'a [Node] {
    let at = nodes
        .iter()
        .position(|n| n.name == "section" && n.attr("id") == Some(id))
        .unwrap_or_else(|| panic!("no section {id}"));
    let depth = nodes[at].depth;
    let len = nodes[at + 1..]
        .iter()
        .take_while(|n| n.depth > depth)
        .count();
    &nodes[at + 1..=at + len]
}

fn texts(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.text.as_str())
        .collect::<Vec<_>>()
        .join("|")
}

#[test]
fn t21_hostile_model_text_cannot_inject_markup_into_the_page() {
    let page = html(&model());
    let nodes = nodes(&page);
    assert_eq!(nodes[0].name, "html");
    for n in &nodes {
        assert!(TAGS.contains(&n.name.as_str()), "tag <{}> injected", n.name);
        for (a, _) in &n.attrs {
            let svg = a.starts_with("data-") || n.depth > 3;
            assert!(
                HTML_ATTRS.contains(&a.as_str()) || svg,
                "attribute {a} injected on <{}>",
                n.name
            );
        }
    }
    // No `<b a='1'>` from the hostile text: every <b> is one of ours.
    assert!(
        nodes
            .iter()
            .filter(|n| n.name == "b")
            .all(|n| n.attrs.is_empty())
    );
    assert!(!page.contains("<script"));
    // The text arrives whole, as text, in the table cells it belongs in.
    let findings = texts(section(&nodes, "findings"));
    assert!(
        findings.contains("</text><script>alert(\"x\")</script>&amp;<b a='1'>"),
        "{findings}"
    );
}

#[test]
fn t21_the_page_fetches_and_runs_nothing() {
    let page = html(&model());
    let nodes = nodes(&page);
    let csp = nodes
        .iter()
        .find(|n| n.attr("http-equiv") == Some("Content-Security-Policy"))
        .and_then(|n| n.attr("content"))
        .expect("a CSP meta");
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    // The one style sheet is allowed by its exact hash, nothing else.
    let style = nodes
        .iter()
        .find(|n| n.name == "style")
        .map(|n| n.text.clone())
        .expect("a style sheet");
    let hash = base64(&Sha256::digest(style.as_bytes()));
    assert!(
        csp.contains(&format!("style-src 'sha256-{hash}';")),
        "{csp}"
    );
    for n in &nodes {
        assert!(
            n.attr("src").is_none() && n.attr("style").is_none(),
            "<{}>",
            n.name
        );
        if let Some(href) = n.attr("href") {
            assert!(href.starts_with('#'), "{href}");
        }
    }
    for banned in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "@import",
        "@font-face",
        "javascript:",
    ] {
        assert!(!page.contains(banned), "{banned}");
    }
    for (at, _) in page.match_indices("url(") {
        assert!(page[at..].starts_with("url(#bh-arrow"));
    }
}

/// Every heading of the Markdown report is a heading of the page.
#[test]
fn t21_the_page_has_every_section_of_the_markdown() {
    let m = model();
    let nodes = nodes(&html(&m));
    let headings = |tag: &str| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n.name == tag)
            .map(|n| n.text.trim().to_string())
            .collect()
    };
    let markdown = crate::markdown(&m);
    // Up to the STRIDE part, headings match word for word; there, each
    // element with threats has its heading (name, then kind apart).
    let stride = markdown
        .find("## Threats, element by element")
        .unwrap_or(markdown.len());
    for (prefix, tag) in [("## ", "h2"), ("### ", "h3"), ("#### ", "h4")] {
        let found = headings(tag);
        for line in markdown[..stride]
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
        {
            assert!(
                found.iter().any(|h| h == line),
                "{prefix}{line} missing from {found:?}"
            );
        }
    }
    assert!(headings("h2").contains(&"Threats, element by element (STRIDE)".to_string()));
    let h3 = headings("h3");
    for e in &m.diagram.elements {
        let has_threats = m.threats.iter().any(|t| t.element == e.id);
        let name = read_back(&e.name);
        assert_eq!(h3.contains(&name), has_threats, "{}", e.name);
    }
    let ids: Vec<&str> = nodes
        .iter()
        .filter(|n| n.name == "section")
        .filter_map(|n| n.attr("id"))
        .collect();
    assert_eq!(
        ids,
        [
            "brief",
            "findings",
            "diagram",
            "inventory",
            "personal-data",
            "stride",
            "accepted"
        ]
    );
}

#[test]
fn t21_open_findings_come_worst_first_and_only_open_ones() {
    let nodes = nodes(&html(&model()));
    let findings = section(&nodes, "findings");
    let badges: Vec<&str> = findings
        .iter()
        .filter(|n| n.attr("class").is_some_and(|c| c.starts_with("badge")))
        .map(|n| n.text.as_str())
        .collect();
    assert_eq!(badges, ["high", "medium", "low"]);
    let text = texts(findings);
    for (n, listed) in [(1, true), (2, true), (3, false), (4, false), (5, true)] {
        assert_eq!(text.contains(&format!("title-{n} ")), listed, "title-{n}");
    }
}

#[test]
fn t21_accepted_risks_carry_their_reason() {
    let m = model();
    let nodes = nodes(&html(&m));
    let accepted = texts(section(&nodes, "accepted"));
    let risk = m
        .threats
        .iter()
        .find(|t| t.status == Status::Accepted)
        .expect("one accepted");
    assert!(
        accepted.contains("title-4 ") && accepted.contains("detail-4 "),
        "{accepted}"
    );
    assert!(!accepted.contains("title-2 "));
    // Its badge is outlined: accepted, not open.
    let badge = section(&nodes, "accepted")
        .iter()
        .find(|n| n.text == risk.severity.as_str())
        .and_then(|n| n.attr("class"));
    assert_eq!(badge, Some("badge soft sev-medium"));
}

#[test]
fn t21_the_header_counts_and_the_inline_diagram() {
    let m = model();
    let page = html(&m);
    let nodes = nodes(&page);
    let bold: Vec<&str> = nodes
        .iter()
        .filter(|n| n.name == "b")
        .map(|n| n.text.as_str())
        .collect();
    assert_eq!(&bold[..3], ["3", "1", "1"], "open, mitigated, accepted");
    let diagram = section(&nodes, "diagram");
    assert_eq!(diagram.iter().filter(|n| n.name == "svg").count(), 1);
    assert_eq!(nodes.iter().filter(|n| n.name == "svg").count(), 1);
    assert!(page.contains(&crate::svg::svg(&m.diagram)));
    // Same model, same bytes.
    assert_eq!(page, html(&m.clone()));
}

#[test]
fn t21_empty_sections_say_so() {
    let mut m = model();
    m.inventory.stores.clear();
    m.inventory.secrets_and_config.clear();
    m.inventory.outbound.clear();
    m.inventory.telemetry = None;
    m.personal_data.clear();
    m.threats.retain(|t| t.status == Status::Mitigated);
    let nodes = nodes(&html(&m));
    let text = texts(&nodes);
    for expected in [
        "None: the app keeps no data of its own.",
        "None: no function may make an outbound call.",
        "None: logs and the audit trail stay on this host.",
        "None.",
        "No store is declared ",
        "None: no ",
    ] {
        assert!(text.contains(expected), "{expected}");
    }
}

#[test]
fn code_spans_are_escaped_and_an_unmatched_backtick_stays() {
    assert_eq!(
        Html::text("a `b<&>` c").0,
        "a <code>b&lt;&amp;&gt;</code> c"
    );
    assert_eq!(Html::text("x `y` z ` w<").0, "x <code>y</code> z ` w&lt;");
    assert_eq!(Html::text("`").0, "`");
    assert_eq!(Html::text(HOSTILE).0.matches("<code>").count(), 0);
}

#[test]
fn base64_matches_rfc_4648() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), expected);
    }
}
