//! Open and accepted findings as SARIF 2.1.0 (T21), for code scanning: a
//! pull request that opens a public route or drops a store's retention
//! shows an alert on the manifest line that did it.
//!
//! - Every rule of [`RULES`] is described, tagged with its T-ID and STRIDE
//!   category; a result carries its own level (high: error, medium:
//!   warning, low: note), since how bad a finding is depends on the app.
//! - Mitigated threats are not results. Accepted ones are, suppressed
//!   (`external`, with the recorded reason), so code scanning shows them
//!   dismissed rather than missing.
//! - `partialFingerprints` hash the finding's stable id, not its line, so
//!   an edit above it does not turn one alert into a closed and a new one.
//!
//! Checked against the OASIS SARIF 2.1.0 (errata 01) schema
//! (`tests/fixtures/sarif-2.1.0.schema.json`).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::{Severity, Status, Threat, ThreatModel};
use crate::rules::{RULES, Rule};

const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the tool is described: the package's repository once it names one,
/// else the project's URI namespace (as problem types use).
const INFORMATION_URI: &str = if env!("CARGO_PKG_REPOSITORY").is_empty() {
    "https://bulkhead.dev/"
} else {
    env!("CARGO_PKG_REPOSITORY")
};
/// The `partialFingerprints` key: bump the suffix if the hashed text changes.
const FINGERPRINT: &str = "bulkheadFinding/v1";

pub fn sarif(model: &ThreatModel) -> String {
    let driver = json!({
        "name": "bulkhead",
        "fullName": format!("Bulkhead threat model ({})", model.generator),
        "version": VERSION,
        "semanticVersion": VERSION,
        "informationUri": INFORMATION_URI,
        "rules": RULES.iter().map(rule).collect::<Vec<_>>(),
    });
    let results: Vec<Value> = model
        .threats
        .iter()
        .filter(|t| t.status != Status::Mitigated)
        .map(|t| result(model, t))
        .collect();
    let doc = json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": driver },
            // One category per app and environment: uploading prod's model
            // does not close dev's alerts.
            "automationDetails": {
                "id": format!("bulkhead/threat-model/{}/{}/", model.app, model.env)
            },
            "columnKind": "unicodeCodePoints",
            "results": results,
        }]
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn rule(r: &Rule) -> Value {
    let stride = r.stride.as_str();
    let help = format!(
        "Bulkhead derives this finding from the manifest and the components it names \
         (threat {tid} of its catalogue, STRIDE: {stride}). Each result names the exact fix \
         for the app. To accept the risk instead, record why in bulkhead.toml: \
         [[accept]] rule = \"{id}\", target = \"NAME\", reason = \"...\"; the finding is then \
         reported as accepted, and shown here as suppressed.",
        tid = r.threat_id,
        id = r.id,
    );
    json!({
        "id": r.id,
        "name": pascal(r.id),
        "shortDescription": { "text": r.summary },
        "fullDescription": { "text": format!("{} ({}, STRIDE: {stride}).", r.summary, r.threat_id) },
        "help": { "text": help },
        // Results set their own level; this is the level of one without.
        "defaultConfiguration": { "level": "warning" },
        "properties": {
            "tags": ["security", "threat-model", r.threat_id, stride],
            // Read from the configuration, not guessed from code.
            "precision": "very-high"
        }
    })
}

fn result(model: &ThreatModel, t: &Threat) -> Value {
    let level = match t.severity {
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    };
    let title = capitalised(&t.title);
    let text = match t.status {
        Status::Accepted => format!(
            "{title} ({} {}). {}",
            t.threat_id,
            t.stride.as_str(),
            capitalised(&t.detail)
        ),
        _ => format!(
            "{title} ({} {}). Fix: {}",
            t.threat_id,
            t.stride.as_str(),
            t.detail
        ),
    };
    let mut result = json!({
        "ruleId": t.rule,
        "level": level,
        "kind": "fail",
        "message": { "text": text },
        "locations": [{
            "physicalLocation": {
                "artifactLocation": artifact(&model.manifest),
                "region": { "startLine": t.line.unwrap_or(1).max(1) }
            }
        }],
        "partialFingerprints": { FINGERPRINT: fingerprint(model, t) },
        "properties": {
            "bulkheadId": t.id,
            "threat": t.threat_id,
            "stride": t.stride.as_str(),
            "severity": t.severity.as_str(),
            "target": t.target
        }
    });
    if let Some(index) = RULES.iter().position(|r| r.id == t.rule) {
        result["ruleIndex"] = json!(index);
    }
    if t.status == Status::Accepted {
        let reason = t.detail.strip_prefix("accepted: ").unwrap_or(&t.detail);
        result["suppressions"] = json!([{
            "kind": "external",
            "status": "accepted",
            "justification": reason
        }]);
    }
    result
}

/// Stable across runs and edits: the app and the finding's id (`RULE:TARGET[:KEY]`),
/// never its line or wording.
fn fingerprint(model: &ThreatModel, t: &Threat) -> String {
    hex::encode(Sha256::digest(
        format!("{}\n{}", model.app, t.id).as_bytes(),
    ))
}

/// The manifest as an artifact location: relative to the source root as the
/// user named it, or a `file:` URI when they gave an absolute path.
fn artifact(path: &str) -> Value {
    let bytes = path.as_bytes();
    // `C:/…`: Windows, with `\` already written `/`.
    let drive =
        bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'/';
    if drive {
        json!({ "uri": format!("file:///{}:{}", &path[..1], encode(&path[2..])) })
    } else if path.starts_with('/') {
        json!({ "uri": format!("file://{}", encode(path)) })
    } else {
        json!({ "uri": encode(path), "uriBaseId": "%SRCROOT%" })
    }
}

/// Percent-encode all but unreserved characters and `/` (RFC 3986).
fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `public-route` → `PublicRoute`: SARIF's readable rule name.
fn pascal(id: &str) -> String {
    id.split('-').map(capitalised).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_uri_references() {
        assert_eq!(
            artifact("examples/hello/bulkhead.toml"),
            json!({ "uri": "examples/hello/bulkhead.toml", "uriBaseId": "%SRCROOT%" })
        );
        assert_eq!(
            artifact("my app/bulkhead.toml")["uri"],
            "my%20app/bulkhead.toml"
        );
        assert_eq!(
            artifact("/tmp/a b/x.toml"),
            json!({ "uri": "file:///tmp/a%20b/x.toml" })
        );
        assert_eq!(
            artifact("C:/apps/x.toml"),
            json!({ "uri": "file:///C:/apps/x.toml" })
        );
        // A `:` in a relative path must not read as a scheme; `#` and `?`
        // must not end the path.
        assert_eq!(artifact("a:b/c#d?e")["uri"], "a%3Ab/c%23d%3Fe");
        assert_eq!(artifact("é/x")["uri"], "%C3%A9/x");
    }

    #[test]
    fn rule_names_are_pascal_case() {
        assert_eq!(pascal("public-route"), "PublicRoute");
        assert_eq!(pascal("personal-data-retention"), "PersonalDataRetention");
    }
}
