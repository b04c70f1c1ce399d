//! `bulkhead threat-model` (T21, T20, T16): the model is derived from the
//! manifest and the components, never written by hand. Change the manifest
//! and the model changes; a CI gate fails on an open finding at or above a
//! severity; an accepted risk stays listed with its reason; every example
//! in the repository comes out with no open high finding, and the weak one
//! is flagged.

mod support;

use std::fs;

use serde_json::Value;
use support::{TestApp, repo_root};

/// A careful app: every route authenticated with scopes, personal data
/// subject-scoped with a retention, one exact outbound origin, host names
/// declared. The comments keep line numbers honest: tests look lines up.
const CAREFUL: &str = r#"
[app]
name = "careful"
hostnames = ["api.example.com"]

[store.attendees]
kind = "kv"
scope = "subject"
retention = "48h"
personal_data = true

[[function]]
name = "register"
component = "kv.wasm"
route = "/register/{handle}"
methods = ["GET"]
auth = "api-key"
scopes = ["conference:register"]
strict_imports = true
grants = { kv = { attendees = "read-write" } }

[[function]]
name = "profile"
component = "hello.wasm"
route = "/profile"
auth = "api-key"
scopes = ["conference:read"]
"#;

fn threat_model(app: &TestApp, extra: &[&str]) -> (Value, std::process::Output) {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let out = app.run_with(&["threat-model"], &args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "threat-model --format json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, out)
}

fn threats(model: &Value) -> &Vec<Value> {
    model["threats"].as_array().expect("threats")
}

/// The open findings, as (rule, target, severity, line).
fn open(model: &Value) -> Vec<(String, String, String, u64)> {
    threats(model)
        .iter()
        .filter(|t| t["status"] == "open")
        .map(|t| {
            (
                t["rule"].as_str().unwrap_or_default().to_string(),
                t["target"].as_str().unwrap_or_default().to_string(),
                t["severity"].as_str().unwrap_or_default().to_string(),
                t["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn open_of<'a>(
    findings: &'a [(String, String, String, u64)],
    rule: &str,
) -> Vec<&'a (String, String, String, u64)> {
    findings.iter().filter(|f| f.0 == rule).collect()
}

/// The 1-based line of the first line of `manifest` containing `text`.
fn line_of(manifest: &str, text: &str) -> u64 {
    manifest
        .lines()
        .position(|l| l.contains(text))
        .map(|i| i as u64 + 1)
        .unwrap_or_else(|| panic!("`{text}` is not in the manifest"))
}

fn rewrite(app: &TestApp, manifest: &str) {
    fs::write(app.path().join("bulkhead.toml"), manifest).expect("write manifest");
}

#[test]
fn t21_a_careful_app_has_no_open_high_or_medium_finding() {
    let app = TestApp::new(CAREFUL, &["kv", "hello"]);
    // T18: unpinned components are the only medium findings, and the
    // fix the report gives (the digest line) closes them.
    let (model, _) = threat_model(&app, &[]);
    let medium: Vec<_> = open(&model).into_iter().filter(|f| f.2 != "low").collect();
    assert!(
        medium.iter().all(|f| f.0 == "unpinned-component") && medium.len() == 2,
        "{medium:#?}"
    );
    let mut manifest = CAREFUL.to_string();
    for (function, component) in [("register", "kv.wasm"), ("profile", "hello.wasm")] {
        let digest = threats(&model)
            .iter()
            .find(|t| t["rule"] == "unpinned-component" && t["target"] == function)
            .and_then(|t| t["detail"].as_str())
            .and_then(|d| d.split('"').nth(1))
            .expect("the fix names the digest")
            .to_string();
        assert!(digest.starts_with("sha256:"), "{digest}");
        manifest = manifest.replace(
            &format!("component = \"{component}\"\n"),
            &format!("component = \"{component}\"\ndigest = \"{digest}\"\n"),
        );
    }
    rewrite(&app, &manifest);
    let (model, out) = threat_model(&app, &["--fail-on", "medium"]);
    assert!(
        out.status.success(),
        "{}\n{:#?}",
        String::from_utf8_lossy(&out.stderr),
        open(&model)
    );
    // Every route and grant is in the inventory.
    let entry_points = model["inventory"]["entry_points"].as_array().unwrap();
    let routes: Vec<&str> = entry_points
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["/register/{handle}", "/profile"]);
    assert_eq!(entry_points[0]["auth"][0], "api-key");
    assert_eq!(entry_points[0]["scopes"][0], "conference:register");
    let functions = model["inventory"]["functions"].as_array().unwrap();
    assert_eq!(functions[0]["grants"][0], "kv attendees read-write");
    // T18: the component's imports are read, each beside its grant.
    let imports = functions[0]["imports"].as_array().unwrap();
    assert!(
        imports.iter().any(
            |i| i["name"].as_str().unwrap().starts_with("wasi:keyvalue/")
                && i["behind"].as_str().unwrap().contains("(granted)")
        ),
        "{imports:#?}"
    );
    assert!(
        functions[0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    // T20: the personal-data inventory names the store, its retention,
    // erasure and who reads and writes it.
    let personal = &model["personal_data"][0];
    assert_eq!(personal["store"], "attendees");
    assert_eq!(personal["retention"], "2days");
    assert!(
        personal["erasure"]
            .as_str()
            .unwrap()
            .contains("bulkhead data erase")
    );
    assert_eq!(personal["writers"][0], "register");
    // Mitigated threats name the line that mitigates them.
    let retention = threats(&model)
        .iter()
        .find(|t| t["rule"] == "personal-data-retention")
        .expect("a retention threat");
    assert_eq!(retention["status"], "mitigated");
    assert_eq!(retention["threat_id"], "T20");
    assert_eq!(retention["line"], line_of(CAREFUL, "retention = "));
}

#[test]
fn t21_each_change_that_opens_a_hole_is_a_new_open_finding_at_its_line() {
    let app = TestApp::new(CAREFUL, &["kv", "hello"]);
    let (before, _) = threat_model(&app, &[]);
    let before = open(&before);
    for rule in [
        "public-route",
        "personal-data-retention",
        "wide-outbound",
        "rate-limit-off",
    ] {
        assert!(open_of(&before, rule).is_empty(), "{rule}: {before:#?}");
    }

    // A public route that writes personal data: high, at its `auth` line.
    let manifest = format!(
        "{CAREFUL}
[[function]]
name = \"signup\"
component = \"kv.wasm\"
route = \"/signup\"
auth = \"public\"
grants = {{ kv = {{ attendees = \"read-write\" }} }}
"
    );
    rewrite(&app, &manifest);
    let (after, out) = threat_model(&app, &["--fail-on", "high"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a new high finding fails the gate"
    );
    let after = open(&after);
    let public = open_of(&after, "public-route");
    assert_eq!(public.len(), 1, "{after:#?}");
    assert_eq!(public[0].1, "signup");
    assert_eq!(public[0].2, "high");
    assert_eq!(public[0].3, line_of(&manifest, "auth = \"public\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("route `/signup` is public"), "{stderr}");

    // Dropping the retention of personal data: high, at the store.
    let manifest = CAREFUL.replace("retention = \"48h\"\n", "");
    rewrite(&app, &manifest);
    let (after, _) = threat_model(&app, &[]);
    let after = open(&after);
    let retention = open_of(&after, "personal-data-retention");
    assert_eq!(retention.len(), 1, "{after:#?}");
    assert_eq!(retention[0].2, "high");
    assert_eq!(retention[0].3, line_of(&manifest, "[store.attendees]"));

    // Widening an outbound grant to a wildcard: medium, at the grant.
    let manifest = CAREFUL.replace(
        "scopes = [\"conference:read\"]",
        "scopes = [\"conference:read\"]\ngrants = { outbound = [\"https://*.example.com\"] }",
    );
    rewrite(&app, &manifest);
    let (after, _) = threat_model(&app, &[]);
    let wide = open_of(&open(&after), "wide-outbound")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(wide.len(), 1, "{wide:#?}");
    assert_eq!(wide[0].1, "profile");
    assert_eq!(wide[0].2, "medium");
    assert_eq!(wide[0].3, line_of(&manifest, "*.example.com"));
    let title = threats(&after)
        .iter()
        .find(|t| t["rule"] == "wide-outbound")
        .and_then(|t| t["title"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        title.contains("`profile` may reach `https://*.example.com:443`"),
        "{title}"
    );

    // Turning the rate limit off: each route is open (medium: they need
    // a credential), at the `[limits]` line.
    let manifest = CAREFUL.replace(
        "[store.attendees]",
        "[limits]\nrate_limit = { per_caller = \"off\" }\n\n[store.attendees]",
    );
    rewrite(&app, &manifest);
    let (after, _) = threat_model(&app, &[]);
    let after = open(&after);
    let off = open_of(&after, "rate-limit-off");
    assert_eq!(off.len(), 2, "{after:#?}");
    assert!(
        off.iter().all(|f| f.2 == "medium"
            && f.3 == line_of(&manifest, "rate_limit = { per_caller = \"off\" }"))
    );
}

#[test]
fn t21_an_accepted_risk_stays_listed_with_its_reason_and_passes_the_gate() {
    let manifest = format!(
        "{CAREFUL}
[[function]]
name = \"hello\"
component = \"hello.wasm\"
route = \"/hello\"
auth = \"public\"

[[accept]]
rule = \"public-route\"
target = \"hello\"
reason = \"a greeting for anyone; it holds and reaches nothing\"

[[accept]]
rule = \"no-budget\"
target = \"nobody\"
reason = \"left behind by a function that is gone\"
"
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let (model, out) = threat_model(&app, &["--fail-on", "high"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = threats(&model)
        .iter()
        .find(|t| t["rule"] == "public-route" && t["target"] == "hello")
        .expect("the public route is still listed");
    assert_eq!(public["status"], "accepted");
    let detail = public["detail"].as_str().unwrap();
    assert!(detail.contains("a greeting for anyone"), "{detail}");
    assert!(
        detail.contains(&format!(
            "line {}",
            line_of(&manifest, "rule = \"public-route\"")
        )),
        "{detail}"
    );
    // An acceptance matching nothing is itself a finding, so a stale one
    // cannot silently cover a future hole.
    let stale = open_of(&open(&model), "stale-acceptance")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert_eq!(stale[0].3, line_of(&manifest, "rule = \"no-budget\""));

    // The Markdown lists it too, accepted.
    let out = app.run(&["threat-model"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| accepted |"), "{text}");
}

#[test]
fn t21_an_accepted_risk_needs_a_reason() {
    let manifest = format!("{CAREFUL}\n[[accept]]\nrule = \"public-route\"\nreason = \"  \"\n");
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let out = app.run(&["threat-model"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "bulkhead.toml:{}:",
            line_of(&manifest, "reason = \"  \"")
        )) && stderr.contains("`reason` must say"),
        "{stderr}"
    );
}

#[test]
fn t21_fail_on_gates_by_severity_and_only_when_asked() {
    // hello: public routes (low), unpinned components (medium), no high.
    let hello = TestApp::existing(&repo_root().join("examples/hello"));
    assert!(hello.run(&["threat-model"]).status.success());
    let out = hello.run_with(&["threat-model"], &["--fail-on", "high"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hello.run_with(&["threat-model"], &["--fail-on", "medium"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("open finding(s) at or above medium") && stderr.contains("[[accept]]"),
        "{stderr}"
    );
    // Without --fail-on it is a report: exit 0 even for the weak app.
    let weak = TestApp::existing(&repo_root().join("examples/weak"));
    assert!(weak.run(&["threat-model"]).status.success());
}

#[test]
fn t21_every_example_has_no_open_high_finding_and_the_weak_one_is_flagged() {
    let examples = repo_root().join("examples");
    let mut checked = 0;
    for entry in fs::read_dir(&examples).expect("examples/") {
        let dir = entry.expect("entry").path();
        if !dir.join("bulkhead.toml").is_file() || dir.ends_with("weak") {
            continue;
        }
        let app = TestApp::existing(&dir);
        let out = app.run_with(&["threat-model"], &["--fail-on", "high"]);
        assert!(
            out.status.success(),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1, "no example app found");

    let weak = TestApp::existing(&examples.join("weak"));
    let (model, out) = threat_model(&weak, &["--fail-on", "high"]);
    assert_eq!(out.status.code(), Some(1));
    let findings = open(&model);
    let high: Vec<(&str, &str)> = findings
        .iter()
        .filter(|f| f.2 == "high")
        .map(|f| (f.0.as_str(), f.1.as_str()))
        .collect();
    for expected in [
        ("public-route", "register"),
        ("public-route", "admin"),
        ("personal-data-retention", "attendees"),
        ("rate-limit-off", "register"),
    ] {
        assert!(high.contains(&expected), "{expected:?} in {high:#?}");
    }
    for rule in [
        "wide-outbound",
        "sql-any-statement",
        "personal-data-shared",
        "throttle-off",
        "unpinned-component",
        "unused-grant",
        "no-scopes",
    ] {
        assert!(
            !open_of(&findings, rule).is_empty(),
            "{rule}: {findings:#?}"
        );
    }
}

#[test]
fn t21_the_markdown_reads_like_a_threat_model_and_output_files_are_whole() {
    let app = TestApp::new(CAREFUL, &["kv", "hello"]);
    let target = app.path().join("model.md");
    let out = app.run_with(
        &["threat-model"],
        &["--output", target.to_str().expect("utf-8 path")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "--output writes nothing to stdout");
    let text = fs::read_to_string(&target).expect("the report file");
    for section in [
        "# Threat model: careful (env `dev`)",
        "## The app in brief",
        "## Open findings",
        "```mermaid\nflowchart LR",
        "### Entry points",
        "#### Imports and the grant behind each",
        "### Trust boundaries",
        "## Personal data (GDPR)",
        "## Threats, element by element (STRIDE)",
        "| `/register/{handle}` |",
    ] {
        assert!(text.contains(section), "{section}:\n{text}");
    }
    // Every trust boundary the issue names is drawn or tabled.
    for boundary in [
        "internet → gateway",
        "gateway → sandbox",
        "sandbox → stores",
        "operator → admin listener",
    ] {
        assert!(text.contains(boundary), "{boundary}");
    }
    // No temporary file is left beside it.
    let leftovers: Vec<_> = fs::read_dir(app.path())
        .expect("app dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("threat model of `careful` (env dev):"),
        "{stderr}"
    );
}

#[test]
fn t21_a_component_that_is_not_one_is_a_finding_not_a_crash() {
    let app = TestApp::new(CAREFUL, &["kv", "hello"]);
    // Hostile bytes where a component should be: the model still comes
    // out, and says the component cannot be read.
    fs::write(
        app.path().join("hello.wasm"),
        b"\0asm\x0d\0\x01\0\xff\xff\xff\xff\xff",
    )
    .expect("write");
    let (model, out) = threat_model(&app, &[]);
    assert!(out.status.success());
    let loose = threats(&model)
        .iter()
        .find(|t| t["rule"] == "loose-imports" && t["target"] == "profile")
        .expect("an imports threat for profile");
    assert_eq!(loose["status"], "open");
    assert!(
        loose["title"].as_str().unwrap().contains("cannot be read"),
        "{loose}"
    );
    // A core module is not a component either.
    fs::write(app.path().join("hello.wasm"), b"\0asm\x01\0\0\0").expect("write");
    let (model, _) = threat_model(&app, &[]);
    let loose = threats(&model)
        .iter()
        .find(|t| t["rule"] == "loose-imports" && t["target"] == "profile")
        .expect("an imports threat for profile");
    assert!(
        loose["detail"]
            .as_str()
            .unwrap()
            .contains("not a component"),
        "{loose}"
    );
}

#[test]
fn t21_the_model_is_the_same_on_every_run() {
    let app = TestApp::new(CAREFUL, &["kv", "hello"]);
    let first = app.run_with(&["threat-model"], &["--format", "json"]);
    let second = app.run_with(&["threat-model"], &["--format", "json"]);
    assert!(first.status.success());
    assert_eq!(first.stdout, second.stdout);
}

// Outside attack on issue 13: what a review found, each failing before
// its fix.

#[test]
fn t21_output_replaces_only_a_regular_file_and_never_follows_a_planted_link() {
    let app = TestApp::new(CAREFUL, &["kv", "hello"]);
    let dir = app.path();
    let victim = dir.join("victim.txt");
    fs::write(&victim, "precious").expect("write");
    // A symlink as the target: refused, the link and its target untouched.
    std::os::unix::fs::symlink(&victim, dir.join("link.md")).expect("symlink");
    let out = app.run_with(
        &["threat-model"],
        &["-o", dir.join("link.md").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::symlink_metadata(dir.join("link.md"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A symlink planted where a fixed temporary name would have been: not
    // followed, the report lands in a regular file.
    std::os::unix::fs::symlink(&victim, dir.join(".model.md.tmp")).expect("symlink");
    let out = app.run_with(
        &["threat-model"],
        &["-o", dir.join("model.md").to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::symlink_metadata(dir.join("model.md"))
            .unwrap()
            .is_file()
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    // A directory or a device: refused with the fix, nothing replaced.
    for target in [dir.to_str().unwrap(), "/dev/null"] {
        let out = app.run_with(&["threat-model"], &["-o", target]);
        assert_eq!(out.status.code(), Some(1), "{target}");
    }
    assert!(
        fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device_like()
    );
}

trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevice for fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

#[test]
fn t21_a_blanket_acceptance_never_covers_a_high_finding_nor_the_stale_guard() {
    // hello accepts `public-route` without a target; a new public admin
    // route writing personal data must still be open and high.
    let manifest = format!(
        "{CAREFUL}
[[function]]
name = \"greet\"
component = \"hello.wasm\"
route = \"/greet\"
auth = \"public\"

[[function]]
name = \"admin\"
component = \"kv.wasm\"
route = \"/admin/{{*rest}}\"
auth = \"public\"
grants = {{ kv = {{ attendees = \"read-write\" }} }}

[[accept]]
rule = \"public-route\"
reason = \"greetings for anyone\"
"
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let (model, out) = threat_model(&app, &["--fail-on", "high"]);
    assert_eq!(out.status.code(), Some(1));
    let status = |target: &str| {
        threats(&model)
            .iter()
            .find(|t| t["rule"] == "public-route" && t["target"] == target)
            .map(|t| t["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(status("greet").as_deref(), Some("accepted"));
    assert_eq!(status("admin").as_deref(), Some("open"));
    // The guard itself cannot be accepted.
    let manifest =
        format!("{CAREFUL}\n[[accept]]\nrule = \"stale-acceptance\"\nreason = \"quiet\"\n");
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let out = app.run(&["threat-model"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be accepted"));
}

#[test]
fn t04_a_money_budget_at_zero_prices_is_no_budget() {
    let manifest = format!(
        "{}\n[pricing]\nper_million_requests = \"0 USD\"\nper_gb_second = \"0 USD\"\nper_gb_egress = \"0 USD\"\n",
        CAREFUL
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let (model, _) = threat_model(&app, &[]);
    let budget = open_of(&open(&model), "no-budget")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(budget.len(), 2, "{budget:#?}");
}

#[test]
fn t21_manifest_text_cannot_inject_into_the_markdown_or_the_terminal() {
    let manifest = CAREFUL.replace(
        "scopes = [\"conference:read\"]",
        "scopes = [\"conference:read\"]\ninput.query.q = \"<img src=x onerror=alert(1)>|a\\u001b\\\\[31mred|b\\u202egnp\"",
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let out = app.run_with(&["threat-model"], &["--fail-on", "low"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("conference:register"), "{text}");
    for raw in ["<img", "\u{1b}", "\u{202e}"] {
        assert!(!text.contains(raw), "{raw:?} reached the Markdown");
    }
    assert!(text.contains("&lt;img"), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{202e}'),
        "{stderr}"
    );
    // Manifest problems quote the manifest: not its escape sequences.
    let app = TestApp::new(
        &CAREFUL.replace(
            "auth = \"api-key\"\nscopes = [\"conference:read\"]",
            "auth = \"\\u001b[2Jx\\u202e\"\nscopes = [\"conference:read\"]",
        ),
        &["kv", "hello"],
    );
    let out = app.run(&["threat-model"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains('\u{fffd}'), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{202e}'),
        "{stderr}"
    );
    // An accepted risk's target is a name, not markup.
    let manifest = format!(
        "{CAREFUL}\n[[accept]]\nrule = \"public-route\"\ntarget = \"x`<b>\"\nreason = \"r\"\n"
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let out = app.run(&["threat-model"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`target` must name"));
}

#[test]
fn t21_one_origin_granted_twice_is_refused_not_two_findings_with_one_identity() {
    let manifest = CAREFUL.replace(
        "scopes = [\"conference:read\"]",
        "scopes = [\"conference:read\"]\ngrants = { outbound = [\"https://api.example.com\", \"https://api.example.com:443\"] }",
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let out = app.run(&["threat-model"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("grants `https://api.example.com:443` again"),
        "{stderr}"
    );
}

#[test]
fn t03_a_mitigated_rate_limit_cites_the_line_that_sets_it() {
    // The function says "off"; the app-wide limit still holds, and that is
    // the line to cite, not the "off".
    let manifest = CAREFUL
        .replace(
            "[store.attendees]",
            "[limits]\nrate_limit = { per_caller = \"5/s\" }\n\n[store.attendees]",
        )
        .replace(
            "scopes = [\"conference:read\"]",
            "scopes = [\"conference:read\"]\nrate_limit = { per_caller = \"off\" }",
        );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let (model, _) = threat_model(&app, &[]);
    let rate = threats(&model)
        .iter()
        .find(|t| t["rule"] == "rate-limit-off" && t["target"] == "profile")
        .expect("a rate-limit threat for profile");
    assert_eq!(rate["status"], "mitigated");
    assert_eq!(rate["line"], line_of(&manifest, "per_caller = \"5/s\""));
}

#[test]
fn t21_accepting_one_grant_of_a_function_never_covers_its_other_grants() {
    // Second outside attack: an acceptance of `wide-outbound` for the
    // function covered every origin added to it later.
    let manifest = format!(
        "{}\n[[accept]]\nrule = \"wide-outbound\"\ntarget = \"profile:https://*.example.com:443\"\nreason = \"regional hosts vary\"\n",
        CAREFUL.replace(
            "scopes = [\"conference:read\"]",
            "scopes = [\"conference:read\"]\ngrants = { outbound = [\"https://*.example.com\", \"http://10.0.0.5:8080\"] }",
        )
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let (model, _) = threat_model(&app, &[]);
    let status = |origin: &str| {
        threats(&model)
            .iter()
            .find(|t| t["rule"] == "wide-outbound" && t["accept_as"] == format!("profile:{origin}"))
            .map(|t| t["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        status("https://*.example.com:443").as_deref(),
        Some("accepted")
    );
    assert_eq!(status("http://10.0.0.5:8080").as_deref(), Some("open"));
    // Naming only the function accepts none of its grants: it is stale.
    let manifest = manifest.replace(
        "target = \"profile:https://*.example.com:443\"",
        "target = \"profile\"",
    );
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let (model, _) = threat_model(&app, &[]);
    assert!(!open_of(&open(&model), "stale-acceptance").is_empty());
    // The Markdown says what to name.
    let text = String::from_utf8_lossy(&app.run(&["threat-model"]).stdout).into_owned();
    assert!(
        text.contains("`wide-outbound` for `profile:http://10.0.0.5:8080`"),
        "{text}"
    );
}

/// T18: a locked, signed app has no unpinned component: the threat model
/// reports each mitigated by the lock and the trusted keys, with the line
/// of `[trust] signers`, and the lock alone closes the finding.
#[test]
fn t18_a_locked_and_signed_app_is_reported_mitigated() {
    let manifest = format!("{CAREFUL}\n[trust]\nsigners = [\"keys/release.pub\"]\n");
    let app = TestApp::new(&manifest, &["kv", "hello"]);
    let key = support::prod::keygen(&app, "release");
    support::prod::lock_and_sign(&app, &key);
    let (model, out) = threat_model(&app, &["--fail-on", "medium"]);
    assert!(
        out.status.success(),
        "{}\n{:#?}",
        String::from_utf8_lossy(&out.stderr),
        open(&model)
    );
    for function in ["register", "profile"] {
        let finding = threats(&model)
            .iter()
            .find(|t| t["rule"] == "unpinned-component" && t["target"] == function)
            .expect("the supply-chain finding is listed");
        assert_eq!(finding["status"], "mitigated", "{finding}");
        let detail = finding.to_string();
        assert!(
            detail.contains("locked in `bulkhead.lock` to sha256:"),
            "{detail}"
        );
        assert!(
            detail.contains(&format!(
                "signed by a key of `[trust] signers`, verified at every deploy (bulkhead.toml line {})",
                line_of(&manifest, "signers =")
            )),
            "{detail}"
        );
    }
}

/// Issue 18: schedules and queues. Two queues feed each other through
/// their consumers, and a third consumer sends to its own queue.
const EVENTS: &str = r#"
[app]
name = "bins"

[queue.readings]
dead_letter = "readings-dead"

[queue.readings-dead]

[queue.alerts]

[queue.echo]

[[function]]
name = "bridge"
component = "hello.wasm"
route = "/telemetry"
methods = ["POST"]
auth = "api-key"
scopes = ["bins:send"]
grants = { queues = { readings = "send" } }

[[function]]
name = "process"
component = "hello.wasm"
trigger = { queue = "readings" }
grants = { queues = { alerts = "send" } }

[[function]]
name = "alert"
component = "hello.wasm"
trigger = { queue = "alerts" }
grants = { queues = { readings = "send" } }

[[function]]
name = "echo"
component = "hello.wasm"
trigger = { queue = "echo" }
grants = { queues = { echo = "send" } }

[[function]]
name = "graveyard"
component = "hello.wasm"
trigger = { queue = "readings-dead" }

[[function]]
name = "summary"
component = "hello.wasm"
trigger = { schedule = "0 0 6 * * *" }
"#;

fn finding<'a>(model: &'a Value, rule: &str, target: &str) -> &'a Value {
    threats(model)
        .iter()
        .find(|t| t["rule"] == rule && t["target"] == target)
        .unwrap_or_else(|| panic!("no {rule} finding for {target}"))
}

#[test]
fn t04_triggered_functions_are_entry_points_and_event_loops_are_bounded() {
    let app = TestApp::new(EVENTS, &["hello"]);
    let (model, out) = threat_model(&app, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Entry points: the route and every trigger, with no network path.
    let entries = model["inventory"]["entry_points"]
        .as_array()
        .expect("entry points");
    let of = |function: &str| {
        entries
            .iter()
            .find(|e| e["function"] == function)
            .unwrap_or_else(|| panic!("{function} is not an entry point: {entries:#?}"))
    };
    assert_eq!(of("process")["route"], "queue `readings`");
    assert_eq!(of("process")["auth"][0], "internal: no network path");
    assert_eq!(of("process")["rate_limit"], "caller `trigger:process`");
    assert!(
        of("summary")["route"]
            .as_str()
            .is_some_and(|r| r.starts_with("schedule `0 0 6 * * *`")),
        "{entries:#?}"
    );
    let functions = model["inventory"]["functions"]
        .as_array()
        .expect("functions");
    assert_eq!(functions.len(), 6, "{functions:#?}");

    // A triggered function has no route: none of the route findings.
    for rule in [
        "public-route",
        "rate-limit-off",
        "input-validation",
        "admission",
    ] {
        assert!(
            !threats(&model)
                .iter()
                .any(|t| t["rule"] == rule && t["target"] == "process"),
            "{rule} for a triggered function"
        );
    }
    // Its code is still held to the sandbox, supply-chain and budget rules.
    for rule in ["runaway-code", "unpinned-component", "no-budget"] {
        finding(&model, rule, "process");
    }

    // T04: loops are found, named and bounded by max_event_depth.
    let cycle = finding(&model, "event-loop", "process");
    assert_eq!(cycle["status"], "mitigated", "{cycle:#?}");
    assert_eq!(cycle["severity"], "medium", "{cycle:#?}");
    let detail = cycle["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("`readings` → `alerts` → `readings` can trigger itself"),
        "{detail}"
    );
    assert!(detail.contains("stops after 16 hops"), "{detail}");
    let own = finding(&model, "event-loop", "echo");
    assert!(
        own["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("`echo` → `echo` can trigger itself")),
        "{own:#?}"
    );
    // A dead-letter queue whose consumer sends nothing closes no loop.
    let grave = finding(&model, "event-loop", "graveyard");
    assert_eq!(grave["severity"], "low", "{grave:#?}");
    let schedule = finding(&model, "event-loop", "summary");
    assert!(
        schedule["detail"]
            .as_str()
            .is_some_and(|d| d.contains("overlap = \"skip\"")),
        "{schedule:#?}"
    );

    // The diagram: queues are stores, messages flow into their consumers.
    let flows = model["diagram"]["flows"].as_array().expect("flows");
    let flow = |from: &str, to: &str| flows.iter().any(|f| f["from"] == from && f["to"] == to);
    assert!(flow("fn:bridge", "queue:readings"), "{flows:#?}");
    assert!(flow("queue:readings", "fn:process"), "{flows:#?}");
    assert!(flow("queue:readings", "queue:readings-dead"), "{flows:#?}");
    assert!(flow("gateway", "fn:summary"), "{flows:#?}");
    assert!(!flow("gateway", "fn:process"), "{flows:#?}");

    // A lower max_event_depth is what the finding then states.
    rewrite(
        &app,
        &EVENTS.replace(
            "[app]\nname = \"bins\"\n",
            "[app]\nname = \"bins\"\n\n[limits]\nmax_event_depth = 3\n",
        ),
    );
    let (model, _) = threat_model(&app, &[]);
    let detail = finding(&model, "event-loop", "echo")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("stops after 3 hops"), "{detail}");
}
