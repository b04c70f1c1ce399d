//! Test support for the SVG and HTML renderers: a strict little XML reader
//! (no dependency; it refuses what a browser's XML parser refuses: unclosed
//! or crossed tags, bare `<` or `&`, unquoted or repeated attributes,
//! characters XML cannot carry) and diagrams and models full of hostile
//! names.

use crate::model::*;

/// One start tag, with its attributes unescaped, and the text directly in
/// it (unescaped, children's text left out).
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub depth: usize,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(';')
            .ok_or_else(|| format!("bare `&` in {raw:?}"))?;
        let entity = &rest[at + 1..at + end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity `&{entity};`"))?
            }
        };
        out.push(c);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

/// Read `doc` as XML: every start tag in document order, or why it is not
/// well-formed. A leading `<!DOCTYPE …>` (an HTML page) is skipped.
pub fn parse(doc: &str) -> Result<Vec<Node>, String> {
    if let Some(bad) = doc.chars().find(|&c| {
        (c.is_control() && !matches!(c, '\n' | '\r' | '\t')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    }) {
        return Err(format!("character {bad:?} is not allowed in XML"));
    }
    let mut rest = doc.trim_start();
    if let Some(after) = rest.strip_prefix("<!DOCTYPE") {
        let end = after.find('>').ok_or("unclosed doctype")?;
        rest = &after[end + 1..];
    }
    let mut nodes: Vec<Node> = Vec::new();
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut roots = 0;
    loop {
        let (text, tag) = match rest.find('<') {
            Some(at) => (&rest[..at], Some(&rest[at..])),
            None => (rest, None),
        };
        if text.contains('>') && text.contains("]]>") {
            return Err("`]]>` in text".into());
        }
        let text = unescape(text)?;
        match open.last() {
            Some(&(_, node)) => nodes[node].text.push_str(&text),
            None if !text.trim().is_empty() => {
                return Err(format!("text outside the root: {text:?}"));
            }
            None => {}
        }
        let Some(tag) = tag else { break };
        if let Some(comment) = tag.strip_prefix("<!--") {
            let end = comment.find("-->").ok_or("unclosed comment")?;
            rest = &comment[end + 3..];
            continue;
        }
        let end = tag.find('>').ok_or("unclosed tag")?;
        let inner = &tag[1..end];
        rest = &tag[end + 1..];
        if let Some(name) = inner.strip_prefix('/') {
            match open.pop() {
                Some((open_name, _)) if open_name == name.trim_end() => continue,
                other => return Err(format!("`</{name}>` closes {other:?}")),
            }
        }
        let (inner, empty) = match inner.strip_suffix('/') {
            Some(i) => (i, true),
            None => (inner, false),
        };
        let name_end = inner
            .find(|c: char| c.is_whitespace())
            .unwrap_or(inner.len());
        let name = &inner[..name_end];
        if !is_name(name) {
            return Err(format!("bad tag name {name:?}"));
        }
        let mut attrs: Vec<(String, String)> = Vec::new();
        let mut a = inner[name_end..].trim_start();
        while !a.is_empty() {
            let eq = a
                .find('=')
                .ok_or_else(|| format!("attribute without value in <{name}>"))?;
            let key = a[..eq].trim_end();
            if !is_name(key) {
                return Err(format!("bad attribute name {key:?} in <{name}>"));
            }
            let after = a[eq + 1..].trim_start();
            let quote = after
                .chars()
                .next()
                .filter(|q| matches!(q, '"' | '\''))
                .ok_or_else(|| format!("unquoted attribute {key} in <{name}>"))?;
            let close = after[1..]
                .find(quote)
                .ok_or_else(|| format!("unclosed attribute {key} in <{name}>"))?;
            let raw = &after[1..=close];
            if raw.contains('<') {
                return Err(format!("`<` in attribute {key} of <{name}>"));
            }
            if attrs.iter().any(|(k, _)| k == key) {
                return Err(format!("attribute {key} twice in <{name}>"));
            }
            attrs.push((key.to_string(), unescape(raw)?));
            let next = &after[close + 2..];
            if !next.is_empty() && !next.starts_with(char::is_whitespace) {
                return Err(format!("no space between attributes in <{name}>"));
            }
            a = next.trim_start();
        }
        if open.is_empty() {
            roots += 1;
        }
        nodes.push(Node {
            name: name.to_string(),
            attrs,
            text: String::new(),
            depth: open.len(),
        });
        if !empty {
            open.push((name.to_string(), nodes.len() - 1));
        }
    }
    if let Some((name, _)) = open.last() {
        return Err(format!("<{name}> is never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(nodes)
}

/// What a model text reads as once escaped and read back: line breaks as
/// spaces, characters XML cannot carry as U+FFFD.
pub fn read_back(text: &str) -> String {
    text.replace('\n', " ")
        .replace(['\u{7}', '\u{FFFF}'], "\u{FFFD}")
}

/// Names a manifest cannot hold, but a renderer must survive: markup,
/// quotes of both kinds, an entity, control characters and a line break.
pub const HOSTILE: &str = "</text><script>alert(\"x\")</script>&amp;<b a='1'>\u{7}\u{FFFF}\nend";

fn element(id: &str, kind: ElementKind, name: &str, zone: &str, description: &str) -> Element {
    Element {
        id: id.into(),
        kind,
        name: name.into(),
        zone: zone.into(),
        description: description.into(),
    }
}

fn flow(from: &str, to: &str, label: &str, boundary: Option<&str>) -> Flow {
    Flow {
        id: format!("flow:{from}->{to}"),
        from: from.into(),
        to: to.into(),
        label: label.into(),
        boundary: boundary.map(Into::into),
    }
}

/// Every zone, every kind of element, `functions` functions and `stores`
/// stores with flows between them, one outbound origin, a collector; the
/// first function and store carry hostile names and labels.
pub fn diagram(functions: usize, stores: usize) -> Diagram {
    let zones = crate::derive::ZONES
        .iter()
        .map(|(id, name)| Zone {
            id: (*id).into(),
            name: (*name).into(),
        })
        .collect();
    let mut elements = vec![
        element(
            "clients",
            ElementKind::Actor,
            "Callers",
            "internet",
            "anyone",
        ),
        element(
            "gateway",
            ElementKind::Process,
            "Gateway",
            "gateway",
            "controls",
        ),
        element(
            "audit",
            ElementKind::Store,
            "Audit trail",
            "state",
            "chained",
        ),
        element(
            "operator",
            ElementKind::Actor,
            "Operator",
            "operator",
            "CLI",
        ),
        element(
            "telemetry",
            ElementKind::External,
            "Collector",
            "collector",
            "https://otel.example/v1/traces",
        ),
        element(
            "out:https://api.example.com",
            ElementKind::External,
            "https://api.example.com",
            "outside",
            "granted",
        ),
    ];
    let mut flows = vec![
        flow(
            "clients",
            "gateway",
            "HTTP requests",
            Some("internet->gateway"),
        ),
        flow(
            "gateway",
            "audit",
            "security events",
            Some("gateway->state"),
        ),
        flow("operator", "gateway", "admin", Some("operator->gateway")),
        flow("gateway", "telemetry", "spans", Some("gateway->collector")),
    ];
    for s in 0..stores {
        let name = if s == 0 {
            format!("store-{HOSTILE}")
        } else {
            format!("store-{s}")
        };
        elements.push(element(
            &format!("store:{name}"),
            ElementKind::Store,
            &name,
            "state",
            "kv",
        ));
    }
    for f in 0..functions {
        let name = if f == 0 {
            format!("fn-{HOSTILE}")
        } else {
            format!("function-{f}")
        };
        let id = format!("fn:{name}");
        elements.push(element(
            &id,
            ElementKind::Process,
            &name,
            "sandbox",
            "GET /x/{id}",
        ));
        let label = if f == 0 {
            format!("GET /a/{{id}}?q=\"{HOSTILE}\"")
        } else {
            format!("GET /f/{f}/{{id}}")
        };
        flows.push(flow("gateway", &id, &label, Some("gateway->sandbox")));
        if stores > 0 {
            let store = &elements[6 + f % stores].id.clone();
            flows.push(flow(&id, store, "read-write", Some("sandbox->state")));
        }
        if f % 10 == 0 {
            flows.push(flow(
                &id,
                "out:https://api.example.com",
                "HTTP requests",
                Some("sandbox->outside"),
            ));
        }
    }
    Diagram {
        zones,
        elements,
        flows,
    }
}

/// A whole threat model whose every text is hostile: open, mitigated and
/// accepted threats of each severity, every inventory table filled.
pub fn model() -> ThreatModel {
    let h = |what: &str| format!("{what} {HOSTILE} `code {HOSTILE}` tail`");
    let diagram = diagram(3, 2);
    let threat = |n: usize, status: Status, severity: Severity, element: &str| Threat {
        id: format!("rule-{n}:{HOSTILE}"),
        rule: "public-route",
        threat_id: "T11",
        stride: Stride::Spoofing,
        element: element.into(),
        target: h("target"),
        accept_as: h("target"),
        title: h(&format!("title-{n}")),
        status,
        severity,
        detail: h(&format!("detail-{n}")),
        line: Some(n),
    };
    let hostile_fn = diagram.elements[8].id.clone();
    let threats = vec![
        threat(1, Status::Open, Severity::Low, "gateway"),
        threat(2, Status::Open, Severity::High, &hostile_fn),
        threat(3, Status::Mitigated, Severity::High, &hostile_fn),
        threat(4, Status::Accepted, Severity::Medium, &hostile_fn),
        threat(5, Status::Open, Severity::Medium, "clients"),
    ];
    ThreatModel {
        app: h("app"),
        env: h("env"),
        manifest: h("manifest"),
        generator: h("generator"),
        inventory: Inventory {
            entry_points: vec![EntryPoint {
                route: h("/route"),
                methods: vec![h("GET")],
                function: h("function"),
                auth: vec!["public".into()],
                scopes: vec![h("scope")],
                input: vec![h("input-a"), h("input-b")],
                limits: h("limits"),
                rate_limit: h("rate"),
                budget: h("budget"),
                line: Some(3),
            }],
            functions: vec![FunctionEntry {
                name: h("function"),
                component: h("component.wasm"),
                digest: Some(h("sha256")),
                pinned: false,
                imports: vec![
                    ImportEntry {
                        name: h("wasi:a"),
                        behind: h("behind-1"),
                    },
                    ImportEntry {
                        name: h("wasi:b"),
                        behind: h("behind-1"),
                    },
                    ImportEntry {
                        name: h("wasi:c"),
                        behind: h("behind-2"),
                    },
                ],
                grants: vec![h("grant-a"), h("grant-b")],
                strict_imports: false,
                limits: h("limits"),
                worst_case: h("worst"),
                line: Some(4),
            }],
            stores: vec![StoreEntry {
                name: h("store"),
                kind: "kv".into(),
                scope: "subject".into(),
                retention: Some(h("48h")),
                personal_data: true,
                encryption: h("sealed"),
                readers: vec![h("reader")],
                writers: vec![h("writer")],
                line: Some(5),
            }],
            secrets_and_config: vec![NamedValue {
                name: h("secret"),
                kind: "secret".into(),
                functions: vec![h("function")],
            }],
            outbound: vec![OutboundEntry {
                origin: h("https://origin"),
                functions: vec![h("function")],
                wildcard: true,
            }],
            admin: AdminEntry {
                summary: h("admin"),
            },
            telemetry: Some(TelemetryEntry {
                endpoint: h("https://collector"),
                sample_ratio: 0.5,
            }),
            boundaries: vec![BoundaryEntry {
                id: h("boundary-id"),
                name: h("boundary"),
                crossing: h("crossing"),
                controls: h("controls"),
            }],
        },
        diagram,
        threats,
        personal_data: vec![PersonalData {
            store: h("store"),
            kind: "kv".into(),
            retention: None,
            erasure: h("erasure"),
            export: h("export"),
            readers: vec![h("reader")],
            writers: vec![],
            line: Some(6),
        }],
    }
}
