//! The model as an OWASP Threat Dragon v2 file (T21), so a team that keeps
//! its threat models in Threat Dragon can open the derived one there: one
//! STRIDE diagram whose boxes are the trust zones, whose actors, processes
//! and stores are the model's elements (each carrying its threats) and
//! whose edges are the data flows. Every id is a UUID hashed from the
//! model's stable ids, so two runs on the same app write the same file and
//! a diff shows only what changed.
//!
//! Checked against the schema of Threat Dragon 2.6.2 (the latest release;
//! `tests/fixtures/threat-dragon-v2.schema.json`).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::derive::store_id;
use crate::model::*;
use crate::rules::RULES;

/// The Threat Dragon release the file is written for.
const TD_VERSION: &str = "2.6.2";

/// Geometry, in Threat Dragon's pixels.
/// Wide enough for an origin such as `https://api.github.com:443`.
const SLOT_W: i64 = 200;
const PAD_X: i64 = 40;
const ZONE_W: i64 = SLOT_W + 2 * PAD_X;
/// Room for the zone's label above its first element.
const PAD_TOP: i64 = 50;
const PAD_BOTTOM: i64 = 30;
const ELEMENT_GAP: i64 = 40;
const ZONE_GAP: i64 = 60;
const COLUMN_GAP: i64 = 110;
const LEFT: i64 = 40;
/// Room above the boxes for flows routed over them, one lane each.
const TOP: i64 = 100;
const LANE: i64 = 15;

pub fn threat_dragon(model: &ThreatModel) -> String {
    let cells = cells(model, &mut Ids::new(&model.app));
    let (open, mitigated, accepted) = model.counts();
    let doc = json!({
        "version": TD_VERSION,
        "summary": {
            "title": format!("{} ({})", model.app, model.env),
            "owner": model.generator,
            "description": format!(
                "Derived by {} from {} and the components it names: STRIDE per element, each \
                 threat tied to an entry (T01-T21) of Bulkhead's threat catalogue. {open} open, \
                 {mitigated} mitigated, {accepted} accepted (shown as Not applicable, with the \
                 reason as mitigation). Run `bulkhead threat-model --format threat-dragon` again \
                 after every change rather than editing this file.",
                model.generator, model.manifest
            ),
            "id": 0
        },
        "detail": {
            "contributors": [],
            "reviewer": "",
            "diagramTop": 1,
            "threatTop": model.threats.len(),
            "diagrams": [{
                "id": 0,
                "title": format!("{}: data flow (env {})", model.app, model.env),
                "description": "Dashed boxes are trust zones: a flow that leaves one crosses a \
                                trust boundary. Outbound hosts and the telemetry collector are \
                                drawn as actors (external entities).",
                "diagramType": "STRIDE",
                "placeholder": "",
                "thumbnail": "./public/content/images/thumbnail.stride.jpg",
                "version": TD_VERSION,
                "cells": cells
            }]
        }
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The zones, then the elements with their threats, then the flows.
fn cells(model: &ThreatModel, ids: &mut Ids<'_>) -> Vec<Value> {
    let layout = Layout::of(&model.diagram);
    let threats = threats_by_element(model, ids);
    let mut cells = Vec::new();
    for zone in &layout.zones {
        cells.push(zone_cell(zone, &ids.get("zone", &zone.id)));
    }
    let mut cell_ids = BTreeMap::new();
    // Flows routed round the zones, over and under: each gets its own lane.
    let mut lanes = [0i64; 2];
    for (z, element) in model.diagram.elements.iter().enumerate() {
        let Some(place) = layout.nodes.get(&element.id) else {
            continue;
        };
        let id = ids.get("element", &element.id);
        cell_ids.insert(element.id.as_str(), id.clone());
        let list = threats
            .get(element.id.as_str())
            .cloned()
            .unwrap_or_default();
        cells.push(node_cell(model, element, place, &id, list, z as i64 + 1));
    }
    for flow in &model.diagram.flows {
        // A flow whose ends are not drawn would dangle in the editor.
        let (Some(source), Some(target)) = (
            cell_ids.get(flow.from.as_str()),
            cell_ids.get(flow.to.as_str()),
        ) else {
            continue;
        };
        let into_state = model.element(&flow.to).is_some_and(|e| e.zone == "state");
        let vertices = layout.route(&flow.from, &flow.to, into_state, &mut lanes);
        let id = ids.get("flow", &flow.id);
        cells.push(flow_cell(model, flow, &id, source, target, vertices));
    }
    cells
}

/// UUIDs derived from the model's stable ids: the same app gives the same
/// file. Ids the model repeats (two identical `[[accept]]`) get a counter,
/// so no two cells or threats share one.
struct Ids<'a> {
    app: &'a str,
    issued: HashSet<String>,
}

impl<'a> Ids<'a> {
    fn new(app: &'a str) -> Self {
        Self {
            app,
            issued: HashSet::new(),
        }
    }

    fn get(&mut self, kind: &str, id: &str) -> String {
        let mut n = 0u32;
        loop {
            let name = format!("bulkhead threat-dragon\n{}\n{kind}\n{id}\n{n}", self.app);
            let uuid = uuid_from(&name);
            if self.issued.insert(uuid.clone()) {
                return uuid;
            }
            n += 1;
        }
    }
}

/// An RFC 9562 version 8 (name-based, custom hash) UUID: SHA-256 of `name`.
fn uuid_from(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Each element's threats as Threat Dragon writes them, numbered in the
/// model's order. A threat about an element the diagram does not draw
/// goes to the gateway, so none is lost.
fn threats_by_element<'m>(
    model: &'m ThreatModel,
    ids: &mut Ids<'_>,
) -> BTreeMap<&'m str, Vec<Value>> {
    let fallback = model
        .element("gateway")
        .or_else(|| model.diagram.elements.first())
        .map(|e| e.id.as_str());
    let mut by: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (n, t) in model.threats.iter().enumerate() {
        let Some(element) = model
            .element(&t.element)
            .map(|e| e.id.as_str())
            .or(fallback)
        else {
            continue;
        };
        by.entry(element)
            .or_default()
            .push(threat(model, t, n + 1, &ids.get("threat", &t.id)));
    }
    by
}

fn threat(model: &ThreatModel, t: &Threat, number: usize, id: &str) -> Value {
    // Threat Dragon 2.6 knows NotApplicable, Open and Mitigated. An accepted
    // risk is not mitigated (no control), so it is NotApplicable: out of the
    // open count, listed apart from the mitigated ones in Threat Dragon's
    // report, with "accepted: REASON" as its mitigation. Threat Dragon's
    // development branch adds `Accepted`; switch once a release has it.
    let (status, mitigation) = match t.status {
        Status::Mitigated => ("Mitigated", t.detail.clone()),
        Status::Open => ("Open", format!("Not mitigated. Fix: {}", t.detail)),
        Status::Accepted => ("NotApplicable", t.detail.clone()),
    };
    let severity = match t.severity {
        Severity::High => "High",
        Severity::Medium => "Medium",
        Severity::Low => "Low",
    };
    let summary = RULES
        .iter()
        .find(|r| r.id == t.rule)
        .map_or(String::new(), |r| format!(": {}", r.summary));
    let line = t
        .line
        .map_or(String::new(), |l| format!(", {} line {l}", model.manifest));
    json!({
        "id": id,
        "number": number,
        "title": t.title,
        "status": status,
        "severity": severity,
        "type": t.stride.as_str(),
        "modelType": "STRIDE",
        "description": format!(
            "{} {}{summary}. Bulkhead finding `{}` (rule `{}`{line}).",
            t.threat_id,
            t.stride.as_str(),
            t.id,
            t.rule
        ),
        "mitigation": mitigation,
        "score": "",
        "new": false
    })
}

fn zone_cell(zone: &PlacedZone, id: &str) -> Value {
    json!({
        "id": id,
        "shape": "trust-boundary-box",
        "zIndex": -1,
        "visible": true,
        "position": { "x": zone.place.x, "y": zone.place.y },
        "size": { "width": zone.place.w, "height": zone.place.h },
        "attrs": { "label": { "text": zone.name } },
        "data": {
            "type": "tm.BoundaryBox",
            "name": zone.name,
            "description": format!("trust zone `{}`", zone.id),
            "isTrustBoundary": true,
            "hasOpenThreats": false
        }
    })
}

fn node_cell(
    model: &ThreatModel,
    e: &Element,
    place: &Place,
    id: &str,
    threats: Vec<Value>,
    z: i64,
) -> Value {
    let open = threats.iter().any(|t| t["status"] == "Open");
    // Threat Dragon's own look: red and thicker while a threat is open.
    let (stroke, width) = if open { ("red", 2.5) } else { ("#333333", 1.5) };
    let line = json!({ "stroke": stroke, "strokeWidth": width, "strokeDasharray": "" });
    let mut data = Map::new();
    let mut set = |k: &str, v: Value| {
        data.insert(k.into(), v);
    };
    set("name", json!(e.name));
    set("isTrustBoundary", json!(false));
    set("outOfScope", json!(false));
    set("reasonOutOfScope", json!(""));
    set("hasOpenThreats", json!(open));
    set("threats", Value::Array(threats));
    let (shape, kind, attrs) = match e.kind {
        ElementKind::Actor | ElementKind::External => {
            set("providesAuthentication", json!(false));
            (
                "actor",
                "tm.Actor",
                json!({ "text": { "text": e.name }, "body": line }),
            )
        }
        ElementKind::Process => {
            set("handlesCardPayment", json!(false));
            set("handlesGoodsOrServices", json!(false));
            set("isWebApplication", json!(e.id == "gateway"));
            set("privilegeLevel", json!(""));
            (
                "process",
                "tm.Process",
                json!({ "text": { "text": e.name }, "body": line }),
            )
        }
        ElementKind::Store => {
            let personal = model
                .inventory
                .stores
                .iter()
                .any(|s| s.personal_data && store_id(&s.name) == e.id);
            let sealed = e.id == "secrets" || e.id.starts_with("store:");
            set("isALog", json!(e.id == "audit"));
            set("isEncrypted", json!(sealed));
            set("isSigned", json!(false));
            set("storesCredentials", json!(e.id == "secrets" || personal));
            set("storesInventory", json!(false));
            let attrs = json!({ "text": { "text": e.name }, "topLine": line, "bottomLine": line });
            ("store", "tm.Store", attrs)
        }
    };
    let description = match e.kind {
        ElementKind::External => format!("outside Bulkhead's control: {}", e.description),
        _ => e.description.clone(),
    };
    data.insert("type".into(), json!(kind));
    data.insert("description".into(), json!(description));
    json!({
        "id": id,
        "shape": shape,
        "zIndex": z,
        "visible": true,
        "position": { "x": place.x, "y": place.y },
        "size": { "width": place.w, "height": place.h },
        "attrs": attrs,
        "data": data
    })
}

fn flow_cell(
    model: &ThreatModel,
    flow: &Flow,
    id: &str,
    source: &str,
    target: &str,
    vertices: Vec<Value>,
) -> Value {
    let zone = |id: &str| model.element(id).map(|e| e.zone.as_str());
    let description = match &flow.boundary {
        Some(b) => format!("crosses the trust boundary {b}"),
        None => "inside one trust zone".into(),
    };
    json!({
        "id": id,
        "shape": "flow",
        "zIndex": 10,
        "connector": "smooth",
        "source": { "cell": source },
        "target": { "cell": target },
        "vertices": vertices,
        "attrs": {
            "line": {
                "stroke": "#333333",
                "strokeWidth": 1.5,
                "strokeDasharray": "",
                "targetMarker": { "name": "block" },
                "sourceMarker": { "name": "" }
            }
        },
        "labels": [{
            "markup": [
                { "tagName": "ellipse", "selector": "labelBody" },
                { "tagName": "text", "selector": "labelText" }
            ],
            "attrs": {
                "labelText": { "text": flow.label, "textAnchor": "middle", "textVerticalAnchor": "middle" },
                "labelBody": { "ref": "labelText", "refRx": "50%", "refRy": "60%", "fill": "#fff", "strokeWidth": 0 }
            },
            "position": { "distance": 0.5, "args": { "keepGradient": true, "ensureLegibility": true } }
        }],
        "data": {
            "type": "tm.Flow",
            "name": flow.label,
            "description": description,
            "outOfScope": false,
            "reasonOutOfScope": "",
            "hasOpenThreats": false,
            "isBidirectional": false,
            "isEncrypted": false,
            "isPublicNetwork": zone(&flow.from) == Some("internet"),
            "protocol": "",
            "isTrustBoundary": false,
            "threats": []
        }
    })
}

#[derive(Debug, Clone, Copy)]
struct Place {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

struct PlacedZone {
    id: String,
    name: String,
    place: Place,
}

/// Zones as columns, left to right in the order a request travels:
/// callers and the operator, the gateway, the sandboxes, the state, then
/// what lies outside. Elements stack inside their zone; each column is
/// centred on the tallest.
struct Layout {
    zones: Vec<PlacedZone>,
    nodes: BTreeMap<String, Place>,
    /// Element id → its column (after empty columns are dropped).
    column: BTreeMap<String, usize>,
    top: i64,
    bottom: i64,
}

fn column_of(zone: &str) -> usize {
    match zone {
        "internet" | "operator" => 0,
        "gateway" => 1,
        "sandbox" => 2,
        "state" => 3,
        _ => 4,
    }
}

fn size_of(kind: ElementKind) -> (i64, i64) {
    match kind {
        ElementKind::Process => (120, 120),
        ElementKind::Actor | ElementKind::External | ElementKind::Store => (SLOT_W, 80),
    }
}

impl Layout {
    fn of(diagram: &Diagram) -> Self {
        // Zones in the model's order, then any an element names that the
        // model does not list; only those with elements are drawn.
        let mut zones: Vec<(String, String)> = diagram
            .zones
            .iter()
            .map(|z| (z.id.clone(), z.name.clone()))
            .collect();
        for e in &diagram.elements {
            if !zones.iter().any(|(id, _)| *id == e.zone) {
                zones.push((e.zone.clone(), e.zone.clone()));
            }
        }
        let mut columns: Vec<Vec<(String, String, Vec<&Element>)>> = vec![Vec::new(); 5];
        for (id, name) in zones {
            let members: Vec<&Element> = diagram.elements.iter().filter(|e| e.zone == id).collect();
            if !members.is_empty() {
                columns[column_of(&id)].push((id, name, members));
            }
        }
        columns.retain(|c| !c.is_empty());
        let zone_h = |members: &[&Element]| {
            let inner: i64 = members.iter().map(|e| size_of(e.kind).1).sum();
            PAD_TOP + inner + ELEMENT_GAP * (members.len() as i64 - 1) + PAD_BOTTOM
        };
        let column_h = |zones: &[(String, String, Vec<&Element>)]| {
            zones.iter().map(|(_, _, m)| zone_h(m)).sum::<i64>()
                + ZONE_GAP * (zones.len() as i64 - 1)
        };
        let tallest = columns.iter().map(|c| column_h(c)).max().unwrap_or(0);
        let mut layout = Layout {
            zones: Vec::new(),
            nodes: BTreeMap::new(),
            column: BTreeMap::new(),
            top: TOP,
            bottom: TOP + tallest,
        };
        for (c, zones) in columns.iter().enumerate() {
            let x = LEFT + c as i64 * (ZONE_W + COLUMN_GAP);
            let mut y = TOP + (tallest - column_h(zones)) / 2;
            for (id, name, members) in zones {
                let h = zone_h(members);
                layout.zones.push(PlacedZone {
                    id: id.clone(),
                    name: name.clone(),
                    place: Place { x, y, w: ZONE_W, h },
                });
                let mut ey = y + PAD_TOP;
                for e in members {
                    let (w, eh) = size_of(e.kind);
                    let place = Place {
                        x: x + PAD_X + (SLOT_W - w) / 2,
                        y: ey,
                        w,
                        h: eh,
                    };
                    layout.nodes.insert(e.id.clone(), place);
                    layout.column.insert(e.id.clone(), c);
                    ey += eh + ELEMENT_GAP;
                }
                y += h + ZONE_GAP;
            }
        }
        layout
    }

    /// A flow that skips a column goes round it, not through the zones in
    /// between: `over` the top (into the state), or under the bottom, each
    /// in the next free lane so two such flows do not draw as one.
    fn route(&self, from: &str, to: &str, over: bool, lanes: &mut [i64; 2]) -> Vec<Value> {
        let (Some(a), Some(b), Some(pa), Some(pb)) = (
            self.column.get(from),
            self.column.get(to),
            self.nodes.get(from),
            self.nodes.get(to),
        ) else {
            return Vec::new();
        };
        if a.abs_diff(*b) < 2 {
            return Vec::new();
        }
        let x = (pa.x + pa.w / 2 + pb.x + pb.w / 2) / 2;
        let lane = &mut lanes[usize::from(!over)];
        let y = if over {
            self.top - 40 - LANE * *lane
        } else {
            self.bottom + 40 + LANE * *lane
        };
        *lane += 1;
        vec![json!({ "x": x, "y": y })]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_rfc_9562_version_8() {
        let a = uuid_from("bulkhead");
        assert_eq!(a, uuid_from("bulkhead"));
        assert_ne!(a, uuid_from("bulkhead "));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!(
            matches!(&a[19..20], "8" | "9" | "a" | "b"),
            "variant 10: {a}"
        );
    }

    #[test]
    fn an_id_the_model_repeats_still_gets_its_own_uuid() {
        let mut ids = Ids::new("app");
        let first = ids.get("threat", "stale-acceptance:x/*");
        let second = ids.get("threat", "stale-acceptance:x/*");
        assert_ne!(first, second);
        // ...and the same ones on the next run.
        let mut again = Ids::new("app");
        assert_eq!(again.get("threat", "stale-acceptance:x/*"), first);
        assert_eq!(again.get("threat", "stale-acceptance:x/*"), second);
    }
}
