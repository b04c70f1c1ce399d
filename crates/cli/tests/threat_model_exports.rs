//! `bulkhead threat-model --format threat-dragon|sarif` (T21): the real
//! binary over real apps, each export checked against its format's own
//! schema (crates/report/tests/fixtures) and against the model it came
//! from: every threat there, on the right element or manifest line, with
//! ids that do not move between runs.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{TestApp, repo_root};

/// Callers, stores with and without personal data, SQL, a secret, outbound
/// hosts (one a wildcard), JWT and an accepted risk.
const RICH: &str = r#"[app]
name = "conference"

[auth.jwt]
issuer = "https://id.example.org"
audience = "conference"
keys = [{ kty = "OKP", crv = "Ed25519", x = "fznEfiUpPcsWRqrPZrfgx7R3Tflh6Zod5xf45j1rdFw", kid = "ed-1", alg = "EdDSA" }]
algorithms = ["EdDSA"]
max_token_lifetime = "15m"

[store.attendees]
kind = "kv"
scope = "subject"
retention = "48h"
personal_data = true

[store.signups]
kind = "kv"
personal_data = true

[store.ledger]
kind = "sql"
migrations = "migrations/ledger"

[[function]]
name = "register"
component = "kv.wasm"
route = "/register"
methods = ["POST"]
auth = "jwt"
scopes = ["conference:register"]
grants = { kv = { attendees = "read-write" }, secrets = ["stripe_key"] }

[[function]]
name = "signup"
component = "kv.wasm"
route = "/signup"
auth = "public"
grants = { kv = { signups = "read-write" } }

[[function]]
name = "notify"
component = "echo.wasm"
route = "/notify"
auth = "jwt"
grants = { outbound = ["https://*.example.com", "https://api.github.com"] }

[[function]]
name = "report"
component = "sqlguest.wasm"
route = "/report"
auth = "jwt"
grants = { sql = { ledger = "read" } }

[[accept]]
rule = "any-host"
target = "conference"
reason = "served behind a proxy that checks Host"
"#;

/// Deliberately weak: a public route writing a personal-data store that
/// keeps data for ever, a wildcard outbound grant, an unpinned component.
/// `fetcher`'s digest is filled in by `weak_app`.
const WEAK: &str = r#"[app]
name = "weak"

[store.people]
kind = "kv"
personal_data = true

[[function]]
name = "signup"
component = "kv.wasm"
route = "/signup"
auth = "public"
grants = { kv = { people = "read-write" } }

[[function]]
name = "fetcher"
component = "echo.wasm"
digest = "DIGEST"
route = "/fetch"
auth = "public"
grants = { outbound = ["https://*.example.com"] }
"#;

const ACCEPT_SIGNUP: &str = r#"
[[accept]]
rule = "public-route"
target = "signup"
reason = "sign-up is open to anyone by design"
"#;

fn fixture_schema(name: &str) -> Value {
    let path = repo_root().join("crates/report/tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).expect("schema fixture");
    serde_json::from_str(&text).expect("schema is JSON")
}

/// Every schema error, with where it is, or nothing.
fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

/// Threat Dragon checks models with Ajv's default draft (7); so do we.
fn threat_dragon_validator() -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(true)
        .build(&fixture_schema("threat-dragon-v2.schema.json"))
        .expect("the Threat Dragon schema compiles")
}

/// Threat Dragon's schema describes a cell's threats as a `threats` beside
/// its `data`, while Threat Dragon reads and writes them in `data.threats`
/// (its demo models do too); the schema alone would never look at them, so
/// they are checked against that definition on their own.
fn threats_validator() -> jsonschema::Validator {
    let schema = fixture_schema("threat-dragon-v2.schema.json");
    let threats = &schema["properties"]["detail"]["properties"]["diagrams"]["items"]["properties"]
        ["cells"]["items"]["properties"]["threats"];
    assert!(
        threats["items"]["required"].is_array(),
        "the schema defines threats"
    );
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(threats)
        .expect("the threats schema compiles")
}

/// The OASIS schema declares draft-04 and resolves only its own
/// `#/definitions`: nothing is fetched.
fn sarif_validator() -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&fixture_schema("sarif-2.1.0.schema.json"))
        .expect("the SARIF schema compiles")
}

/// `bulkhead threat-model ARG --format FORMAT`, run in `cwd`: its stdout.
fn export(cwd: &Path, arg: &Path, format: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .current_dir(cwd)
        .arg("threat-model")
        .arg(arg)
        .args(["--format", format])
        .output()
        .expect("bulkhead runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// An app run from its parent directory, so the manifest is named
/// relatively (`.tmpXXXX/bulkhead.toml`), as in a repository checkout.
fn relative(app: &TestApp) -> (PathBuf, PathBuf) {
    let path = app.path();
    let parent = path.parent().expect("a parent").to_path_buf();
    let name = PathBuf::from(path.file_name().expect("a name"));
    (parent, name)
}

fn weak_app(extra: &str) -> TestApp {
    let app = TestApp::new(WEAK, &["kv", "echo"]);
    let echo = std::fs::read(app.path().join("echo.wasm")).expect("echo.wasm");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&echo)));
    let manifest = format!("{}{extra}", WEAK.replace("DIGEST", &digest));
    std::fs::write(app.path().join("bulkhead.toml"), manifest).expect("write manifest");
    app
}

fn rich_app() -> TestApp {
    let app = TestApp::new(RICH, &["kv", "echo", "sqlguest"]);
    let migrations = app.path().join("migrations/ledger");
    std::fs::create_dir_all(&migrations).expect("migrations dir");
    std::fs::write(
        migrations.join("001_init.sql"),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);\n",
    )
    .expect("migration");
    app
}

/// 1-based line of the first line containing `needle` at or after the
/// line containing `after`.
fn line_of(text: &str, after: &str, needle: &str) -> u64 {
    let start = text
        .lines()
        .position(|l| l.contains(after))
        .unwrap_or_else(|| panic!("no `{after}` in the manifest"));
    let offset = text
        .lines()
        .skip(start)
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}` after `{after}`"));
    (start + offset + 1) as u64
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| {
            p.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

/// The checks every Threat Dragon export must pass against its model.
fn check_threat_dragon(td: &Value, model: &Value) {
    let errors = schema_errors(&threat_dragon_validator(), td);
    assert!(errors.is_empty(), "Threat Dragon schema: {errors:#?}");
    assert!(td["version"].as_str().is_some_and(|v| v.starts_with("2.")));
    let diagrams = td["detail"]["diagrams"].as_array().expect("diagrams");
    assert_eq!(diagrams.len(), 1);
    assert_eq!(diagrams[0]["diagramType"], "STRIDE");
    let cells = diagrams[0]["cells"].as_array().expect("cells");

    let ids: Vec<&str> = cells.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), cells.len(), "every cell has an id");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "cell ids are unique"
    );
    assert!(ids.iter().all(|id| is_uuid(id)), "{ids:?}");

    let shape = |c: &Value| c["shape"].as_str().unwrap_or_default().to_string();
    let nodes: BTreeMap<&str, &Value> = cells
        .iter()
        .filter(|c| matches!(shape(c).as_str(), "actor" | "process" | "store"))
        .map(|c| (c["id"].as_str().unwrap_or_default(), c))
        .collect();
    let elements = model["diagram"]["elements"].as_array().expect("elements");
    assert_eq!(nodes.len(), elements.len(), "one cell per element");

    // Flows join drawn elements, one per flow of the model.
    let flows: Vec<&Value> = cells.iter().filter(|c| shape(c) == "flow").collect();
    assert_eq!(
        flows.len(),
        model["diagram"]["flows"].as_array().map_or(0, Vec::len)
    );
    for f in &flows {
        for end in ["source", "target"] {
            let cell = f[end]["cell"].as_str().expect("flows join cells");
            assert!(
                nodes.contains_key(cell),
                "flow {} {end} {cell} is no element",
                f["id"]
            );
        }
    }

    // Every threat of the model, once, on its element, in Threat Dragon's words.
    let by_id: BTreeMap<&str, &Value> = model["threats"]
        .as_array()
        .expect("threats")
        .iter()
        .map(|t| (t["id"].as_str().unwrap_or_default(), t))
        .collect();
    let mut seen = Vec::new();
    let mut threat_ids = HashSet::new();
    let threats_schema = threats_validator();
    for node in nodes.values() {
        let errors = schema_errors(&threats_schema, &node["data"]["threats"]);
        assert!(
            errors.is_empty(),
            "threats of {}: {errors:#?}",
            node["data"]["name"]
        );
        let threats = node["data"]["threats"]
            .as_array()
            .expect("threats on every element");
        let mut open = false;
        for t in threats {
            let description = t["description"].as_str().unwrap_or_default();
            let ours = description
                .split('`')
                .nth(1)
                .unwrap_or_else(|| panic!("no finding id in {description}"));
            let m = by_id
                .get(ours)
                .unwrap_or_else(|| panic!("{ours} is not in the model"));
            seen.push(ours.to_string());
            assert!(threat_ids.insert(t["id"].as_str().unwrap_or_default().to_string()));
            assert!(is_uuid(t["id"].as_str().unwrap_or_default()));
            assert!(
                description.starts_with(m["threat_id"].as_str().unwrap_or("?")),
                "{description}"
            );
            let element = elements
                .iter()
                .find(|e| e["id"] == m["element"])
                .expect("the threat's element is drawn");
            assert_eq!(
                node["data"]["name"], element["name"],
                "{ours} sits on its element"
            );
            assert_eq!(t["title"], m["title"]);
            assert_eq!(t["type"], m["stride"]);
            assert_eq!(t["modelType"], "STRIDE");
            let severity = match m["severity"].as_str() {
                Some("high") => "High",
                Some("medium") => "Medium",
                _ => "Low",
            };
            assert_eq!(t["severity"], severity);
            let status = match m["status"].as_str() {
                Some("open") => "Open",
                Some("mitigated") => "Mitigated",
                _ => "NotApplicable",
            };
            assert_eq!(t["status"], status, "{ours}");
            let mitigation = t["mitigation"].as_str().unwrap_or_default();
            assert!(
                mitigation.contains(m["detail"].as_str().unwrap_or("?")),
                "{mitigation}"
            );
            open |= status == "Open";
        }
        assert_eq!(node["data"]["hasOpenThreats"], open);
    }
    let mut expected: Vec<String> = by_id.keys().map(|k| k.to_string()).collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "every threat of the model, once");
    assert_eq!(td["detail"]["threatTop"], by_id.len());

    // Each element is drawn inside the box of its trust zone, none on another.
    let zones = model["diagram"]["zones"].as_array().expect("zones");
    let rect = |c: &Value| {
        let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let (x, y) = (n(&c["position"]["x"]), n(&c["position"]["y"]));
        (
            x,
            y,
            x + n(&c["size"]["width"]),
            y + n(&c["size"]["height"]),
        )
    };
    for element in elements {
        let zone_name = zones
            .iter()
            .find(|z| z["id"] == element["zone"])
            .map_or(&element["zone"], |z| &z["name"]);
        let node = nodes
            .values()
            .find(|n| {
                n["data"]["name"] == element["name"]
                    && n["data"]["description"].as_str().is_some_and(|d| {
                        d.ends_with(element["description"].as_str().unwrap_or("?"))
                    })
            })
            .expect("the element's cell");
        let (x0, y0, x1, y1) = rect(node);
        let boxes: Vec<&Value> = cells
            .iter()
            .filter(|c| shape(c) == "trust-boundary-box")
            .filter(|b| {
                let (bx0, by0, bx1, by1) = rect(b);
                bx0 <= x0 && by0 <= y0 && x1 <= bx1 && y1 <= by1
            })
            .collect();
        assert_eq!(boxes.len(), 1, "{} is in one zone box", element["id"]);
        assert_eq!(
            boxes[0]["attrs"]["label"]["text"], *zone_name,
            "{}",
            element["id"]
        );
    }
    let rects: Vec<_> = nodes.values().map(|n| rect(n)).collect();
    for (i, a) in rects.iter().enumerate() {
        for b in &rects[i + 1..] {
            assert!(
                a.2 <= b.0 || b.2 <= a.0 || a.3 <= b.1 || b.3 <= a.1,
                "cells overlap: {a:?} {b:?}"
            );
        }
    }
}

#[test]
fn t21_threat_dragon_export_of_hello_is_valid_complete_and_stable() {
    let root = repo_root();
    let hello = Path::new("examples/hello");
    let first = export(&root, hello, "threat-dragon");
    let model = parse(&export(&root, hello, "json"));
    let td = parse(&first);
    check_threat_dragon(&td, &model);
    assert_eq!(td["summary"]["title"], "hello (dev)");
    // Same app, same file: ids are derived, not random.
    assert_eq!(first, export(&root, hello, "threat-dragon"));
}

#[test]
fn t21_threat_dragon_export_of_a_rich_app_draws_stores_secrets_and_outbound() {
    let app = rich_app();
    let (cwd, dir) = relative(&app);
    let first = export(&cwd, &dir, "threat-dragon");
    let model = parse(&export(&cwd, &dir, "json"));
    let td = parse(&first);
    check_threat_dragon(&td, &model);
    assert_eq!(first, export(&cwd, &dir, "threat-dragon"));

    let cells = td["detail"]["diagrams"][0]["cells"]
        .as_array()
        .expect("cells");
    let named = |name: &str| {
        cells
            .iter()
            .find(|c| c["data"]["name"] == name && c["shape"] != "flow")
            .unwrap_or_else(|| panic!("no cell `{name}`"))
    };
    // Personal data and secrets are flagged as Threat Dragon flags them.
    let signups = named("signups");
    assert_eq!(signups["shape"], "store");
    assert_eq!(signups["data"]["storesCredentials"], true);
    assert_eq!(signups["data"]["isEncrypted"], true);
    assert_eq!(
        signups["data"]["hasOpenThreats"], true,
        "no retention: open (T20)"
    );
    assert_eq!(named("ledger")["data"]["storesCredentials"], false);
    assert_eq!(named("Secret store")["data"]["storesCredentials"], true);
    // An outbound host is an external entity: Threat Dragon's actor.
    let wildcard = named("https://*.example.com:443");
    assert_eq!(wildcard["shape"], "actor");
    let threat = &wildcard["data"]["threats"][0];
    assert_eq!(threat["status"], "Open");
    assert_eq!(threat["severity"], "Medium");
    assert_eq!(threat["type"], "Elevation of privilege");
    assert!(
        threat["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("T17"))
    );

    // The accepted risk: not open, not claimed mitigated, reason kept.
    let gateway = named("Gateway");
    let any_host = gateway["data"]["threats"]
        .as_array()
        .expect("threats")
        .iter()
        .find(|t| {
            t["description"]
                .as_str()
                .is_some_and(|d| d.contains("`any-host:conference`"))
        })
        .expect("the accepted threat");
    assert_eq!(any_host["status"], "NotApplicable");
    assert!(
        any_host["mitigation"]
            .as_str()
            .is_some_and(|m| m.starts_with("accepted: served behind a proxy that checks Host")),
        "{any_host}"
    );

    // Flows that skip a column go round the zones between, not through.
    let gateway_id = gateway["id"].as_str().expect("id");
    let audit_id = named("Audit trail")["id"].as_str().expect("id");
    let to_audit = cells
        .iter()
        .find(|c| c["source"]["cell"] == gateway_id && c["target"]["cell"] == audit_id)
        .expect("gateway → audit flow");
    let over = to_audit["vertices"][0]["y"].as_f64().expect("a vertex");
    let top = cells
        .iter()
        .filter(|c| c["shape"] == "trust-boundary-box")
        .filter_map(|c| c["position"]["y"].as_f64())
        .fold(f64::INFINITY, f64::min);
    assert!(over < top, "routed above every zone: {over} vs {top}");
}

/// SARIF results keyed by our finding id.
fn results(sarif: &Value) -> BTreeMap<String, Value> {
    sarif["runs"][0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let id = r["properties"]["bulkheadId"].as_str().expect("bulkheadId");
            (id.to_string(), r.clone())
        })
        .collect()
}

fn start_line(result: &Value) -> u64 {
    result["locations"][0]["physicalLocation"]["region"]["startLine"]
        .as_u64()
        .expect("startLine")
}

fn fingerprint(result: &Value) -> String {
    result["partialFingerprints"]["bulkheadFinding/v1"]
        .as_str()
        .expect("fingerprint")
        .to_string()
}

#[test]
fn t21_sarif_flags_each_weakness_of_a_weak_app_on_its_manifest_line() {
    let app = weak_app("");
    let manifest = std::fs::read_to_string(app.path().join("bulkhead.toml")).expect("manifest");
    let (cwd, dir) = relative(&app);
    // Written with --output, as a CI step would.
    let out_dir = tempfile::tempdir().expect("temp dir");
    let file = out_dir.path().join("bulkhead.sarif");
    let status = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .current_dir(&cwd)
        .arg("threat-model")
        .arg(&dir)
        .args(["--format", "sarif", "--output"])
        .arg(&file)
        .status()
        .expect("bulkhead runs");
    assert!(status.success());
    let sarif = parse(&std::fs::read_to_string(&file).expect("the SARIF file"));
    let errors = schema_errors(&sarif_validator(), &sarif);
    assert!(errors.is_empty(), "SARIF schema: {errors:#?}");
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(
        sarif["$schema"],
        "https://json.schemastore.org/sarif-2.1.0.json"
    );

    // Every rule, in order, tagged with its T-ID and STRIDE category.
    let driver = &sarif["runs"][0]["tool"]["driver"];
    assert_eq!(driver["name"], "bulkhead");
    let rules = driver["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), bulkhead_report::RULES.len());
    for (rule, ours) in rules.iter().zip(bulkhead_report::RULES) {
        assert_eq!(rule["id"], ours.id);
        assert_eq!(rule["shortDescription"]["text"], ours.summary);
        let tags = &rule["properties"]["tags"];
        assert!(
            tags.as_array()
                .is_some_and(|t| t.contains(&ours.threat_id.into())),
            "{rule}"
        );
        assert!(
            tags.as_array()
                .is_some_and(|t| t.contains(&ours.stride.as_str().into())),
            "{rule}"
        );
        assert!(
            rule["help"]["text"]
                .as_str()
                .is_some_and(|h| h.contains(ours.id))
        );
    }

    let found = results(&sarif);
    let expect = |id: &str, level: &str, line: u64, tid: &str| {
        let r = found
            .get(id)
            .unwrap_or_else(|| panic!("no result {id}: {found:#?}"));
        assert_eq!(r["level"], level, "{id}");
        assert_eq!(start_line(r), line, "{id}");
        assert_eq!(r["properties"]["threat"], tid, "{id}");
        let index = r["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules[index]["id"], r["ruleId"], "{id}");
        let location = &r["locations"][0]["physicalLocation"]["artifactLocation"];
        assert_eq!(location["uri"], format!("{}/bulkhead.toml", dir.display()));
        assert_eq!(location["uriBaseId"], "%SRCROOT%");
        assert!(r.get("suppressions").is_none(), "{id} is open");
    };
    // T11: a public route that writes personal data is high.
    expect(
        "public-route:signup",
        "error",
        line_of(&manifest, "name = \"signup\"", "auth = \"public\""),
        "T11",
    );
    // ...one that reaches only the network, medium.
    expect(
        "public-route:fetcher",
        "warning",
        line_of(&manifest, "name = \"fetcher\"", "auth = \"public\""),
        "T11",
    );
    // T20: personal data kept for ever: the store's own line.
    expect(
        "personal-data-retention:people",
        "error",
        line_of(&manifest, "[store.people]", "[store.people]"),
        "T20",
    );
    // T17: every host under a domain.
    expect(
        "wide-outbound:fetcher:https://*.example.com:443",
        "warning",
        line_of(&manifest, "name = \"fetcher\"", "*.example.com"),
        "T17",
    );
    // T18: `signup` is not pinned; `fetcher` is, so it has no result.
    expect(
        "unpinned-component:signup",
        "warning",
        line_of(&manifest, "name = \"signup\"", "component ="),
        "T18",
    );
    assert!(!found.contains_key("unpinned-component:fetcher"));

    // Results are exactly the open and accepted threats: mitigated ones are not.
    let model = parse(&export(&cwd, &dir, "json"));
    let unmitigated: BTreeSet<String> = model["threats"]
        .as_array()
        .expect("threats")
        .iter()
        .filter(|t| t["status"] != "mitigated")
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(found.keys().cloned().collect::<BTreeSet<_>>(), unmitigated);
}

#[test]
fn t21_sarif_fingerprints_hold_across_runs_and_shifted_lines() {
    let app = weak_app("");
    let (cwd, dir) = relative(&app);
    let first = export(&cwd, &dir, "sarif");
    assert_eq!(first, export(&cwd, &dir, "sarif"), "two runs, one file");
    let before = results(&parse(&first));
    let prints: HashSet<String> = before.values().map(fingerprint).collect();
    assert_eq!(prints.len(), before.len(), "fingerprints are unique");

    // A comment above everything moves every finding down one line and
    // must not change which alert it is.
    let path = app.path().join("bulkhead.toml");
    let manifest = std::fs::read_to_string(&path).expect("manifest");
    std::fs::write(
        &path,
        format!("# reviewed by the platform team\n{manifest}"),
    )
    .expect("write");
    let after = results(&parse(&export(&cwd, &dir, "sarif")));
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (id, r) in &before {
        assert_eq!(fingerprint(&after[id]), fingerprint(r), "{id}");
        assert_eq!(start_line(&after[id]), start_line(r) + 1, "{id}");
    }
}

#[test]
fn t21_sarif_shows_an_accepted_finding_suppressed_with_its_reason() {
    let open = results(&parse(&{
        let app = weak_app("");
        let (cwd, dir) = relative(&app);
        export(&cwd, &dir, "sarif")
    }));
    let app = weak_app(ACCEPT_SIGNUP);
    let (cwd, dir) = relative(&app);
    let sarif = parse(&export(&cwd, &dir, "sarif"));
    let errors = schema_errors(&sarif_validator(), &sarif);
    assert!(errors.is_empty(), "SARIF schema: {errors:#?}");
    let found = results(&sarif);

    let accepted = &found["public-route:signup"];
    let suppressions = accepted["suppressions"].as_array().expect("suppressed");
    assert_eq!(suppressions.len(), 1);
    assert_eq!(suppressions[0]["kind"], "external");
    assert!(
        suppressions[0]["justification"]
            .as_str()
            .is_some_and(|j| j.starts_with("sign-up is open to anyone by design")),
        "{accepted}"
    );
    // Accepting does not make it a new alert, and covers only its target.
    assert_eq!(
        fingerprint(accepted),
        fingerprint(&open["public-route:signup"])
    );
    assert!(found["public-route:fetcher"].get("suppressions").is_none());
    assert_eq!(found.len(), open.len());
}

/// The schema checks above are live: a broken export fails them. Without
/// this, a fixture that compiled to an accept-all schema would pass all.
#[test]
fn t21_the_schemas_refuse_a_broken_export() {
    let root = repo_root();
    let hello = Path::new("examples/hello");
    let sarif = parse(&export(&root, hello, "sarif"));
    let validator = sarif_validator();
    assert!(schema_errors(&validator, &sarif).is_empty());
    let mut bad = sarif.clone();
    bad["runs"][0]["results"][0]["level"] = "fatal".into();
    assert!(
        !schema_errors(&validator, &bad).is_empty(),
        "an unknown level"
    );
    let mut bad = sarif.clone();
    bad["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] =
        0.into();
    assert!(!schema_errors(&validator, &bad).is_empty(), "line 0");
    let mut bad = sarif;
    bad["runs"][0]["results"][0]["suppressions"] = serde_json::json!([{ "kind": "maybe" }]);
    assert!(
        !schema_errors(&validator, &bad).is_empty(),
        "an unknown suppression kind"
    );

    let td = parse(&export(&root, hello, "threat-dragon"));
    let validator = threat_dragon_validator();
    assert!(schema_errors(&validator, &td).is_empty());
    let mut bad = td.clone();
    if let Some(cell) = bad["detail"]["diagrams"][0]["cells"][0].as_object_mut() {
        cell.remove("shape");
    }
    assert!(
        !schema_errors(&validator, &bad).is_empty(),
        "a cell without a shape"
    );
    let mut bad = td;
    let cells = bad["detail"]["diagrams"][0]["cells"]
        .as_array_mut()
        .expect("cells");
    let with_threat = cells
        .iter_mut()
        .find(|c| {
            c["data"]["threats"]
                .as_array()
                .is_some_and(|t| !t.is_empty())
        })
        .expect("a cell with threats");
    let threats = &mut with_threat["data"]["threats"];
    assert!(schema_errors(&threats_validator(), threats).is_empty());
    if let Some(threat) = threats[0].as_object_mut() {
        threat.remove("severity");
    }
    assert!(
        !schema_errors(&threats_validator(), threats).is_empty(),
        "a threat without a severity"
    );
}
